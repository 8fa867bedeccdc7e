"""Entry point the language host runs (``python policy/``): serve appstack's policy pack."""

import os
import sys

# The pack is the package `policy` of the repository (its rules are unit-tested from there).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from policy.pack import main

main()
