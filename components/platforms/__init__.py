"""Platforms turn an ``AppSpec`` into resources; ``__main__`` picks one from settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import pulumi

from components.settings import Settings
from components.spec import AppSpec, ServiceSpec


@dataclass(frozen=True)
class PlatformArgs:
    """What every platform deploys: validated settings and the app's topology."""

    settings: Settings
    app: AppSpec


class Platform(Protocol):
    """A deployed app as the program exports it."""

    public_url: pulumi.Output[str]
    images: pulumi.Output[Mapping[str, str]]
    networks: pulumi.Output[Mapping[str, str]]
    edge_ca: pulumi.Output[str]
    """The root certificate clients trust when the edge runs its own CA (else empty)."""
    secret_outputs: dict[str, pulumi.Output[str]]
    """Secrets the platform produced (Docker: the owner key its bootstrap issued)."""


def rollout_order(app: AppSpec) -> list[ServiceSpec]:
    """Services in dependency order (data stores first); raises on a dependency cycle."""
    done: list[ServiceSpec] = []
    seen: set[str] = set()
    visiting: set[str] = set()

    def visit(svc: ServiceSpec) -> None:
        if svc.name in seen:
            return
        if svc.name in visiting:
            msg = f"dependency cycle through service {svc.name!r}"
            raise ValueError(msg)
        visiting.add(svc.name)
        for dep in svc.depends_on:
            visit(app.service(dep))
        visiting.discard(svc.name)
        seen.add(svc.name)
        done.append(svc)

    for svc in app.services:
        visit(svc)
    return done
