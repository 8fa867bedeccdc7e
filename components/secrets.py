"""The app's secrets: from config (`--secret`), or generated once and kept encrypted in state."""

from __future__ import annotations

import pulumi

from components.providers.secrets import GeneratedSecret, GeneratedSecretArgs
from components.settings import Settings

# Generated values are alphanumeric so they can sit inside URLs (DATABASE_URL) unescaped.
GENERATED_LENGTH = 32


def resolve(settings: Settings) -> dict[str, pulumi.Output[str]]:
    """Every secret the app needs, as secret Outputs; missing ones are generated if allowed."""
    values = dict(settings.secrets)
    for key in settings.missing_secrets:
        generated = GeneratedSecret(
            f"{settings.prefix}-{key}",
            GeneratedSecretArgs(length=GENERATED_LENGTH),
            # A generated password unlocks the data in the volumes: kept exactly as long as they.
            opts=pulumi.ResourceOptions(protect=settings.protect_volumes),
        )
        values[key] = pulumi.Output.secret(generated.value)
    return values
