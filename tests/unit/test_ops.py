"""The operator CLI's pure parts: entry selection and stale-lock detection."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from components.ops.stack import Entry, OpsError, pick, stale_locks


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
