"""How Docker engine objects change, asked of the providers directly (no engine, no Pulumi).

A container release is always create-before-delete: anything that decides the container replaces
it under a new physical name while the old one keeps running; what only steers the rollout is an
update in place; a container that stopped is drift and gets replaced. Networks and volumes are
relabelled in place, never replaced for a label.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from components.providers.container import (
    CONTAINER_KEYS,
    OPTIONAL_KEYS,
    TUNING_KEYS,
    ContainerProvider,
    physical_name,
)
from components.providers.edge import EdgeRouteProvider
from components.providers.engine import NetworkProvider, VolumeProvider

LABELS = {"appstack.stack": "dev", "appstack.app": "haven", "appstack.service": "gateway"}
NEWS: dict[str, Any] = {
    "name": "dev-haven-gateway",
    "image": "appstack.local/haven-gateway:0.1.0",
    "image_id": "sha256:" + "1" * 64,
    "command": [],
    "env": {"CATALOG_URL": "http://catalog:8081"},
    "user": None,
    "networks": [
        {"name": "dev-haven-internal", "aliases": ["gateway"]},
        {"name": "dev-haven-edge", "aliases": []},
    ],
    "ports": [],
    "healthcheck": {"test": ["CMD", "true"], "interval_s": 5, "timeout_s": 3, "retries": 20,
                    "start_period_s": 2},
    "restart": "unless-stopped",
    "memory_mb": 256,
    "cpus": 0.5,
    "read_only": True,
    "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m"},
    "security_opt": ["no-new-privileges:true"],
    "cap_add": [],
    "mounts": [],
    "labels": LABELS,
    "extra_hosts": {},
    "stop_timeout_s": 30,
    "docker_host": None,
    "rollout": "start-first",
    "wait_timeout_s": 180,
    "grace_s": 10,
    "retired_by_edge": False,
}  # fmt: skip


def olds(**changes: Any) -> dict[str, Any]:
    """The recorded outputs of the running release (inputs plus what the engine reported)."""
    recorded = copy.deepcopy(NEWS)
    recorded.update(
        container_id="c0ffee",
        container_name=physical_name(NEWS),
        state="running",
        health="healthy",
    )
    recorded.update(changes)
    return recorded


def news(**changes: Any) -> dict[str, Any]:
    wanted = copy.deepcopy(NEWS)
    wanted.update(changes)
    return wanted


def diff(old: dict[str, Any], new: dict[str, Any]) -> Any:
    return ContainerProvider().diff("c0ffee", old, new)


def test_the_fixture_sets_every_input_a_container_has() -> None:
    assert set(CONTAINER_KEYS) | set(TUNING_KEYS) == set(NEWS) | set(OPTIONAL_KEYS)


def test_the_same_inputs_are_no_change() -> None:
    result = diff(olds(), news())
    assert not result.changes and not result.replaces


def test_numbers_pulumi_hands_back_as_floats_are_no_change() -> None:
    floats = olds(memory_mb=256.0, stop_timeout_s=30.0, grace_s=10.0, wait_timeout_s=180.0)
    floats["healthcheck"] = {**NEWS["healthcheck"], "interval_s": 5.0, "retries": 20.0}
    result = diff(floats, news())
    assert not result.changes and not result.replaces


def test_a_new_image_replaces_create_before_delete() -> None:
    new_release = news(image="appstack.local/haven-gateway:0.2.0", image_id="sha256:" + "2" * 64)
    result = diff(olds(), new_release)
    assert result.changes is True
    assert result.replaces == ["image", "image_id"]
    assert result.delete_before_replace is False


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("name", "dev-haven-gateway2"),
        ("env", {"CATALOG_URL": "http://catalog:9999"}),
        ("ports", [{"internal": 8080, "external": 18080, "ip": "127.0.0.1"}]),
        ("mounts", [{"source": "dev-haven-gateway-data", "target": "/data"}]),
        ("networks", [{"name": "dev-haven-internal", "aliases": ["gateway"]}]),
        ("labels", {**LABELS, "appstack.service": "gw"}),
        ("memory_mb", 512),
        ("secret_files", {"postgres_password": "a-new-password"}),
    ],
)
def test_every_deciding_input_replaces_without_deleting_first(key: str, value: Any) -> None:
    result = diff(olds(), news(**{key: value}))
    assert result.changes is True
    assert result.replaces == [key]
    assert result.delete_before_replace is False


@pytest.mark.parametrize(
    ("key", "value"),
    [("rollout", "stop-first"), ("grace_s", 30), ("wait_timeout_s", 20), ("retired_by_edge", True)],
)
def test_rollout_tuning_is_an_update_in_place(key: str, value: Any) -> None:
    result = diff(olds(), news(**{key: value}))
    assert result.changes is True
    assert result.replaces == []


@pytest.mark.parametrize("state", ["exited", "dead", "restarting"])
def test_a_container_that_is_not_running_is_drift_and_is_replaced(state: str) -> None:
    result = diff(olds(state=state), news())
    assert result.changes is True
    assert result.replaces == ["state"]
    assert result.delete_before_replace is False


def test_tuning_changes_keep_the_running_container() -> None:
    old = olds()
    result = ContainerProvider().update("c0ffee", old, news(rollout="stop-first", grace_s=30))
    assert result.outs is not None
    assert result.outs["rollout"] == "stop-first" and result.outs["grace_s"] == 30
    for key in ("container_id", "container_name", "state", "health"):
        assert result.outs[key] == old[key], key


def test_check_refuses_an_unknown_rollout() -> None:
    provider = ContainerProvider()
    for rollout in ("start-first", "stop-first"):
        assert provider.check({}, news(rollout=rollout)).inputs["rollout"] == rollout
    with pytest.raises(ValueError, match="blue-green"):
        provider.check({}, news(rollout="blue-green"))


def test_each_release_has_a_physical_name_of_its_own() -> None:
    name = physical_name(NEWS)
    assert re.fullmatch(r"dev-haven-gateway-[0-9a-f]{8}", name)
    assert physical_name(news()) == name, "the same inputs adopt the same name (a retry)"
    assert physical_name(news(image_id="sha256:" + "2" * 64)) != name
    assert physical_name(news(env={"CATALOG_URL": "http://catalog:1"})) != name
    # Tuning and the engine's address do not make a new release.
    assert physical_name(news(rollout="stop-first", grace_s=1, wait_timeout_s=5)) == name
    assert physical_name(news(docker_host="ssh://deploy@host")) == name


def test_secret_files_make_a_release_only_when_there_are_some() -> None:
    name = physical_name(NEWS)
    assert physical_name(news(secret_files={})) == name, "releases made before them keep theirs"
    with_files = physical_name(news(secret_files={"postgres_password": "one-password"}))
    assert with_files != name
    rotated = physical_name(news(secret_files={"postgres_password": "another-password"}))
    assert rotated not in (name, with_files), "a rotated secret is a new release"
    assert not diff(olds(), news(secret_files={})).replaces


# -- volumes and networks -------------------------------------------------------------------------

VOLUME_NAME = "dev-haven-postgres-pgdata"
VOLUME: dict[str, Any] = {"name": VOLUME_NAME, "labels": LABELS, "docker_host": None}
NETWORK: dict[str, Any] = {
    "name": "dev-haven-internal",
    "internal": True,
    "labels": LABELS,
    "docker_host": None,
}


def test_a_volume_relabel_is_an_update_never_a_replacement() -> None:
    relabelled = {**VOLUME, "labels": {**LABELS, "appstack.stack": "dev2"}}
    result = VolumeProvider().diff(VOLUME_NAME, dict(VOLUME), relabelled)
    assert result.changes is True
    assert not result.replaces
    update = VolumeProvider().update(VOLUME_NAME, dict(VOLUME), relabelled)
    assert update.outs == relabelled


def test_a_volume_with_the_same_inputs_is_no_change() -> None:
    result = VolumeProvider().diff(VOLUME_NAME, dict(VOLUME), dict(VOLUME))
    assert not result.changes and not result.replaces


def test_a_renamed_volume_is_a_new_volume() -> None:
    result = VolumeProvider().diff(VOLUME_NAME, dict(VOLUME), {**VOLUME, "name": "other"})
    assert result.changes is True
    assert result.replaces == ["name"]


def test_a_network_relabel_is_an_update_that_keeps_the_network() -> None:
    old = {**NETWORK, "network_id": "n3t"}
    relabelled = {**NETWORK, "labels": {}}
    result = NetworkProvider().diff("n3t", old, relabelled)
    assert result.changes is True
    assert not result.replaces
    update = NetworkProvider().update("n3t", old, relabelled)
    assert update.outs == {**relabelled, "network_id": "n3t"}


@pytest.mark.parametrize(("key", "value"), [("name", "dev-haven-internal2"), ("internal", False)])
def test_a_new_network_name_or_kind_replaces(key: str, value: Any) -> None:
    old = {**NETWORK, "network_id": "n3t"}
    result = NetworkProvider().diff("n3t", old, {**NETWORK, key: value})
    assert result.changes is True
    assert result.replaces == [key]


# -- the edge's route -------------------------------------------------------------------------------

ROUTE: dict[str, Any] = {
    "docker_host": None,
    "container_id": "caddy-1",
    "upstream": "dev-haven-gateway-11111111:8080",
    "health_path": "/v1/healthz",
    "health_status": 200,
    "caddyfile": "http://:8080 {\n}\n",
    "files": {},
    "internal_ca": False,
}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("upstream", "dev-haven-gateway-22222222:8080"),
        ("container_id", "caddy-2"),
        ("caddyfile", "http://:8080 {\n\trespond 503\n}\n"),
    ],
)
def test_a_new_release_or_config_is_a_reload_of_the_same_edge(key: str, value: Any) -> None:
    provider = EdgeRouteProvider()
    assert not provider.diff("edge", dict(ROUTE), dict(ROUTE)).changes
    result = provider.diff("edge", dict(ROUTE), {**ROUTE, key: value})
    assert result.changes is True
    assert result.replaces == []
