"""Test-wide settings: Outputs must never be formatted into strings by accident."""

import os

os.environ["PULUMI_ERROR_OUTPUT_STRING"] = "true"
