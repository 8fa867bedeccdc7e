"""Each app's topology as backend-neutral specs."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pulumi

from components.apps import engramia, haven
from components.settings import Settings
from components.spec import AppSpec

BUILDERS: dict[str, Callable[[Settings, Mapping[str, pulumi.Output[str]]], AppSpec]] = {
    "haven": haven.build,
    "engramia": engramia.build,
}


def build(settings: Settings, secrets: Mapping[str, pulumi.Output[str]]) -> AppSpec:
    """The topology of the app the settings name."""
    return BUILDERS[settings.app](settings, secrets)
