"""The alert rules shipped in components/monitoring/rules/: valid, and tested with promtool.

Each rule file has a promtool test file in tests/unit/alert_rules/ (series in, alerts expected to
fire or stay silent). promtool comes from Debian's ``prometheus`` package (tools/system-deps.sh).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.monitoring import config

TESTS = Path(__file__).parent / "alert_rules"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: run tools/system-deps.sh (Debian's prometheus package)")
    return found


def _run(*args: str, cwd: Path = TESTS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _alerts(rule_file: Path) -> set[str]:
    doc = yaml.safe_load(rule_file.read_text())
    return {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_every_rule_file_passes_promtool_check() -> None:
    files = sorted(config.RULES_DIR.glob("*.yml"))
    assert files, f"no rule files in {config.RULES_DIR}"
    result = _run("check", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", sorted(p.name for p in TESTS.glob("*.test.yml")))
def test_promtool_unit_tests_pass(test_file: str) -> None:
    result = _run("test", "rules", test_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases: dict[str, set[bool]] = {}
    for test_file in TESTS.glob("*.test.yml"):
        doc: dict[str, Any] = yaml.safe_load(test_file.read_text())
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    alerts = set().union(*(_alerts(p) for p in config.RULES_DIR.glob("*.yml")))
    lacking = {a: sorted(cases.get(a, set())) for a in alerts if cases.get(a) != {True, False}}
    assert not lacking, f"alerts without both a firing and a silent promtool case: {lacking}"


def test_promtool_tests_catch_a_weakened_rule(tmp_path: Path) -> None:
    """The tests can fail: the 5xx alert with a threshold nobody reaches makes them fail."""
    rules = tmp_path / "components" / "monitoring" / "rules"
    rules.mkdir(parents=True)
    edge = (config.RULES_DIR / "edge.yml").read_text()
    assert "> 0.05" in edge
    (rules / "edge.yml").write_text(edge.replace("> 0.05", "> 0.95"))
    tests = tmp_path / "tests" / "unit" / "alert_rules"
    tests.mkdir(parents=True)
    shutil.copy(TESTS / "edge.test.yml", tests / "edge.test.yml")
    result = _run("test", "rules", "edge.test.yml", cwd=tests)
    assert result.returncode != 0, result.stdout
    assert "EdgeHigh5xxRate" in result.stdout + result.stderr


def test_rendered_rules_take_the_configured_stall_window() -> None:
    rendered = yaml.safe_load(config.rule_files("haven", stalled_after="3m")["haven.yml"])
    stalled = [
        r for g in rendered["groups"] for r in g["rules"] if r.get("alert") == "HavenChunksStalled"
    ]
    assert [r["for"] for r in stalled] == ["3m"]
