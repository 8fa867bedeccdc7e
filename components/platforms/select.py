"""Pick the platform named by settings, once."""

from __future__ import annotations

from components.platforms import Platform, PlatformArgs
from components.settings import Settings
from components.spec import AppSpec


def deploy(settings: Settings, app: AppSpec) -> Platform:
    """Deploy ``app`` on the platform the settings name."""
    args = PlatformArgs(settings, app)
    if settings.platform == "kubernetes":
        from components.platforms.kubernetes import KubernetesApp

        return KubernetesApp(settings.prefix, args)
    from components.platforms.docker import DockerApp

    return DockerApp(settings.prefix, args)
