"""The operator CLI's pure parts: entry selection and stale-lock detection."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from components.ops.stack import (
    SMOKE_TYPE,
    Entry,
    OpsError,
    attach_releases,
    parse_history,
    pick,
    read_events,
    stale_locks,
)


def _entry(number: int, result: str = "succeeded", kind: str = "update") -> Entry:
    return Entry(number, kind, result, number, number, "", {}, {})


ENTRIES = [_entry(1), _entry(2, "failed"), _entry(3), _entry(4, kind="refresh"), _entry(5)]


def test_pick_previous_is_the_last_good_update_before_the_newest() -> None:
    assert pick(ENTRIES, "previous").number == 3
    assert pick(ENTRIES, "1").number == 1


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("0", "out of range"),
        ("6", "out of range"),
        ("2", "entry 2 failed"),
        ("4", "is a refresh"),
        ("latest", "neither an entry number"),
    ],
)
def test_pick_refuses_bad_targets_with_exit_code_2(to: str, message: str) -> None:
    with pytest.raises(OpsError) as err:
        pick(ENTRIES, to)
    assert err.value.code == 2 and message in str(err.value)


def test_stale_locks_finds_only_dead_local_pids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{tmp_path}")
    folder = tmp_path / ".pulumi" / "locks" / "organization" / "appstack" / "dev"
    folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    locks = {
        "dead": {"pid": dead.pid, "hostname": host},
        "alive": {"pid": os.getpid(), "hostname": host},
        "elsewhere": {"pid": dead.pid, "hostname": host + "-other"},
    }
    for name, lock in locks.items():
        (folder / f"{name}.json").write_text(json.dumps(lock))
    assert stale_locks("appstack", "dev") == [dead.pid]
    assert stale_locks("appstack", "prod") == []

    monkeypatch.setenv("PULUMI_BACKEND_URL", "s3://state?endpoint=127.0.0.1:9000")
    assert stale_locks("appstack", "dev") == []  # only a file backend's locks can be read


def _update(start: str, end: str, result: str, gateway: str) -> dict[str, object]:
    images = {"gateway": {"registry": "r", "repository": "haven-gateway", "tag": gateway}}
    return {
        "version": 0,
        "kind": "update",
        "startTime": start,
        "endTime": end,
        "result": result,
        "config": {"appstack:images": {"value": json.dumps(images), "objectValue": images}},
    }


HISTORY = [  # as `pulumi stack history --json` prints it: newest first
    _update("2026-01-01T10:02:00.000Z", "2026-01-01T10:02:30.000Z", "failed", "3"),
    _update("2026-01-01T10:01:00.000Z", "2026-01-01T10:01:30.000Z", "succeeded", "2"),
    _update("2026-01-01T10:00:00.000Z", "2026-01-01T10:00:30.000Z", "succeeded", "1"),
]
RELEASES = [
    {"ran_at": "2026-01-01T10:00:10Z", "backup_id": "", "applied": ["init.sql"],
     "ledger": ["init.sql"]},
    {"ran_at": "2026-01-01T10:01:10Z", "backup_id": "b-2", "applied": ["m/2.sql"],
     "ledger": ["init.sql", "m/2.sql"], "revision": "r2"},
]  # fmt: skip


def test_history_is_numbered_oldest_first_with_each_updates_own_release_record() -> None:
    entries = parse_history(HISTORY)
    attach_releases(entries, RELEASES)
    assert [(e.number, e.result, e.images["gateway"]) for e in entries] == [
        (1, "succeeded", "r/haven-gateway:1"),
        (2, "succeeded", "r/haven-gateway:2"),
        (3, "failed", "r/haven-gateway:3"),
    ]
    assert entries[0].migration["applied"] == ["init.sql"]
    assert entries[1].migration == {
        "ledger": ["init.sql", "m/2.sql"],
        "applied": ["m/2.sql"],
        "backup_id": "b-2",
        "ran_at": "2026-01-01T10:01:10Z",
        "revision": "r2",
    }
    assert entries[0].migration["revision"] == "", "the first record has no revision"
    # No migration ran in the third update: no backup of its own, the ledger as it stood.
    assert entries[2].migration["backup_id"] == ""
    assert entries[2].migration["ledger"] == ["init.sql", "m/2.sql"]
    assert entries[0].end - entries[0].start == 30


def _event(kind: str, **body: object) -> str:
    return json.dumps({"sequence": 1, "timestamp": 1, kind: body})


SMOKE_URN = f"urn:pulumi:stg::appstack::appstack:platform:DockerApp${SMOKE_TYPE}::stg-haven-smoke"
CATALOG_URN = "urn:pulumi:stg::appstack::pulumi-python:dynamic/docker:Container::stg-catalog"


def test_deploy_reads_the_smoke_outcome_from_engine_events(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    meta = {"type": SMOKE_TYPE, "urn": SMOKE_URN, "op": "update"}
    log.write_text(
        "\n".join(
            [
                _event("resourcePreEvent", metadata=meta),
                _event("diagnosticEvent", urn=SMOKE_URN, severity="error", message="search 500"),
                _event("resOpFailedEvent", metadata=meta, status=1, steps=1),
            ]
        )
    )
    outcome = read_events(log)
    assert outcome.smoke_ran and outcome.smoke_failed
    assert outcome.errors == ("search 500",)
    # A failure elsewhere whose text merely says "smoke" is not a smoke failure.
    log.write_text(
        _event("diagnosticEvent", urn=CATALOG_URN, severity="error", message="smoke SmokeTest")
    )
    other = read_events(log)
    assert not other.smoke_ran and not other.smoke_failed
    assert other.errors == ("smoke SmokeTest",)


def test_a_revision_tracked_schema_plans_a_downgrade_to_the_targets_revision() -> None:
    from components.ops.cli import _describe, _plan

    entries = parse_history(HISTORY)
    attach_releases(entries, RELEASES)
    target = entries[1]  # revision r2
    plan = _plan({"gateway": "x:3"}, target, [], "r3")
    assert plan["revision"] == {"from": "r3", "to": "r2"}
    assert "revision r3 -> r2 (downgrade, backup first)" in _describe(plan)
    assert _plan({}, target, [], "r2")["revision"] is None, "same revision: nothing to take back"
    assert _plan({}, entries[0], [], "r3")["revision"] is None, "no revision recorded then"


def test_logs_since_takes_durations_and_times_and_names_a_bad_value() -> None:
    from datetime import UTC, datetime, timedelta

    from components.ops.logs import since_time

    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert since_time("10m", now) == now - timedelta(minutes=10)
    assert since_time("2h", now) == now - timedelta(hours=2)
    assert since_time("2026-11-25T11:00:00Z") == datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
    assert since_time(None) is None
    with pytest.raises(OpsError, match="--since 'yesterday'"):
        since_time("yesterday")


def test_logs_redact_every_secret_the_state_holds() -> None:
    from components.ops.logs import SECRET_SIG, prefixed, secret_values

    export = {
        "deployment": {
            "resources": [
                {"outputs": {"value": {SECRET_SIG: "1", "plaintext": json.dumps("s3cr3t-token")}}},
                {"inputs": {"env": {SECRET_SIG: "1", "plaintext": json.dumps(
                    {"DATABASE_URL": "postgresql://u:pw-long@db/x", "PORT": "80",
                     "ENGRAMIA_STORAGE": "postgres"})}}},
                {"outputs": {"name": "not-a-secret"}},
            ]
        }
    }  # fmt: skip
    found = secret_values(export)
    # A whole environment is marked secret: only its secret-named values are secrets.
    assert set(found) == {"s3cr3t-token", "postgresql://u:pw-long@db/x"}
    text = "token=s3cr3t-token\nurl postgresql://u:pw-long@db/x port 80\n"
    out = prefixed("api", text, found, 5)
    assert out == "api   | token=***\napi   | url *** port 80\n"


def test_logs_on_kubernetes_read_every_pod_of_the_workload() -> None:
    from datetime import UTC, datetime

    from components.ops.logs import kubectl_logs_args

    args = kubectl_logs_args("Deployment", "gateway", 50, datetime(2026, 1, 2, 3, 4, tzinfo=UTC))
    assert args[:2] == ["logs", "deployment/gateway"]
    assert {"--all-pods=true", "--all-containers=true", "--prefix=true", "--tail=50"} <= set(args)
    assert "--since-time=2026-01-02T03:04:00Z" in args
    assert not [a for a in kubectl_logs_args("StatefulSet", "pg", None, None) if "tail" in a]


def test_docker_status_rows_and_firing_alerts() -> None:
    from components.ops.docker_status import container_row, parse_alerts

    attrs = {
        "RestartCount": 3,
        "State": {
            "Status": "running",
            "StartedAt": "2026-11-25T10:00:00Z",
            "Health": {"Status": "unhealthy", "Log": [{"ExitCode": 1, "Output": "refused\n"}]},
        },
    }
    row = container_row("dev-haven-gateway", "x:1", attrs)
    assert (row["health"], row["restarts"], row["last_probe"]) == ("unhealthy", 3, "refused")
    healthy = {"State": {"Status": "running", "Health": {"Status": "healthy", "Log": [
        {"ExitCode": 0, "Output": "ok"}]}}}  # fmt: skip
    assert "last_probe" not in container_row("n", "i", healthy)
    out = json.dumps([{"metric": {"__name__": "ALERTS", "alertname": "EdgeHigh5xxRate",
                                  "alertstate": "firing", "severity": "page", "service": "gateway"},
                       "value": [1, "1"]}])  # fmt: skip
    assert parse_alerts(out) == [
        {"alert": "EdgeHigh5xxRate", "severity": "page", "labels": "service=gateway"}
    ]
    assert parse_alerts("") == []


def test_deploy_steps_come_from_the_event_log_as_it_is_written(tmp_path: Path) -> None:
    from components.ops.stack import StepFollower

    log = tmp_path / "events.jsonl"
    follower = StepFollower(log)
    assert follower.new() == [], "no log yet"
    urn = "urn:pulumi:dev::appstack::pulumi-python:dynamic/ops:Migration::dev-haven-migration"
    meta = {"op": "update", "urn": urn, "type": "pulumi-python:dynamic/ops:Migration"}
    same = {**meta, "op": "same", "urn": urn + "x"}
    pre = json.dumps({"resourcePreEvent": {"metadata": meta}})
    log.write_text(json.dumps({"resourcePreEvent": {"metadata": same}}) + "\n" + pre + '\n{"res')
    assert follower.new() == ["updating Migration dev-haven-migration ..."]
    with log.open("a") as f:  # the half-written line completes, then the step ends
        f.write(
            'OutputsEvent": {}}\n' + json.dumps({"resOpFailedEvent": {"metadata": meta}}) + "\n"
        )
    (failed,) = follower.new()
    assert failed.startswith("Migration dev-haven-migration: FAILED (")


def test_a_stopped_container_reports_its_state_not_its_last_health() -> None:
    from components.ops.docker_status import container_row

    attrs = {"State": {"Status": "exited", "Health": {"Status": "healthy", "Log": []}}}
    assert container_row("n", "i", attrs)["health"] == "exited"
