"""Old release images pruned after a release passed its smoke test, keeping the previous one.

The runbook's last step (Engramia's step 8): once the new release is live and smoke-tested, the
images of older releases go, except the previous release's, which a rollback needs. Only images
of the stack's own repositories are touched, and never one a container (running or stopped) still
uses: another stack on the same engine may run an older tag of the same repository.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.providers.engine_base import client, not_found


@dataclass(frozen=True)
class Stored:
    """One image on the engine: its id and the tags it carries in the repository."""

    image_id: str
    tags: tuple[str, ...]


def repository(ref: str) -> str:
    """``registry/repo`` of a reference (tag or digest cut off; a port stays)."""
    base = ref.split("@", 1)[0]
    last = base.rsplit("/", 1)[-1]
    return base.rsplit(":", 1)[0] if ":" in last else base


def to_prune(stored: Iterable[Stored], keep: Iterable[str], in_use: Iterable[str]) -> list[Stored]:
    """The stored images that are neither kept (current, previous) nor used by a container."""
    spare = set(keep) | set(in_use)
    return [image for image in stored if image.image_id not in spare]


def previous_release(
    current: Mapping[str, str], released: Mapping[str, str], previous: Mapping[str, str]
) -> dict[str, str]:
    """Per service, the image of the release before the current one.

    ``released``: what the last smoke-tested release ran; ``previous``: the one kept then. A
    release that changed nothing for a service keeps that service's earlier previous image.
    """
    out = {}
    for service, image_id in current.items():
        before = released.get(service)
        kept = before if before and before != image_id else previous.get(service)
        if kept:
            out[service] = kept
    return out


def prune(
    docker_host: str | None,
    refs: Mapping[str, str],
    released: Mapping[str, str],
    previous: Mapping[str, str],
) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Remove older images of ``refs``' repositories, keeping the current and previous release's.

    Returns the current image ids, the previous release's (by service) and the removed tags.
    """
    removed: list[str] = []
    current: dict[str, str] = {}
    with client(docker_host) as docker_client:
        for service, ref in refs.items():
            try:
                current[service] = docker_client.images.get(ref).id
            except Exception as exc:
                if not_found(exc):
                    continue
                raise
        used = {c.attrs.get("Image", "") for c in docker_client.containers.list(all=True)}
        kept = previous_release(current, released, previous)
        keep = set(current.values()) | set(kept.values())
        for repo in sorted({repository(ref) for ref in refs.values()}):
            stored = [
                Stored(image.id, tuple(t for t in image.tags if repository(t) == repo))
                for image in docker_client.images.list(name=repo)
            ]
            for image in to_prune(stored, keep, used):
                removed += _remove(docker_client, image)
    if removed:
        pulumi.log.info(f"pruned older release images (the previous kept): {', '.join(removed)}")
    return current, kept, removed


def _remove(docker_client: Any, image: Stored) -> list[str]:
    """Untag each of the image's tags in the repository (the engine drops it with its last)."""
    gone = []
    for tag in image.tags:
        try:
            docker_client.images.remove(tag, noprune=False)
            gone.append(tag)
        except Exception as exc:  # in use meanwhile, or already gone: leave it
            if not not_found(exc):
                pulumi.log.warn(f"could not prune {tag}: {exc}")
    return gone
