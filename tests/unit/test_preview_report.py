"""The PR comment's formatter on event streams captured from real previews with the pack.

tests/unit/data/preview-k8s-update.jsonl: ``PULUMI_ENABLE_STREAMING_JSON_PREVIEW=1 pulumi preview
--json --diff --policy-pack policy`` of tests/e2e/policy_app on a prod-named stack on Kubernetes
(render mode), after an ``up``, with a secret variable turned into a literal: two updates, one
mandatory and one advisory violation, the preview failed (exit 1).
tests/unit/data/preview-docker-advisory.jsonl: the same program on Docker, new stack, compliant
but for tags without digests on prod: two advisory violations, the preview passed (exit 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.ops.preview_report import MARKER, main, parse_events, render_comment

DATA = Path(__file__).parent / "data"
K8S = DATA / "preview-k8s-update.jsonl"
DOCKER = DATA / "preview-docker-advisory.jsonl"


def _report(path: Path):  # type: ignore[no-untyped-def]
    return parse_events(path.read_text().splitlines())


def test_failed_preview_with_a_mandatory_violation() -> None:
    report = _report(K8S)
    assert report.failed and report.result == "failed"
    assert [(s.op, s.type, s.name) for s in report.steps] == [
        ("update", "kubernetes:apps/v1:Deployment", "api")
    ]
    assert report.steps[0].diffs == (
        "spec.template.spec.containers[0].env[1].value (add)",
        "spec.template.spec.containers[0].env[1].valueFrom (delete)",
    )
    assert report.unchanged == 6
    levels = sorted((v.level, v.policy, v.resource) for v in report.violations)
    assert levels == [
        ("advisory", "prod-images-by-digest", "kubernetes:apps/v1:Deployment: api"),
        ("mandatory", "no-plain-secret-env", "kubernetes:apps/v1:Deployment: api"),
    ]
    assert report.packs == {"appstack": "1.0.0"}
    assert report.changes == {"update": 1, "same": 6}
    assert report.errors == ["preview failed"]


def test_passing_preview_with_advisories_only() -> None:
    report = _report(DOCKER)
    assert not report.failed and report.result == "succeeded"
    assert {v.level for v in report.violations} == {"advisory"}
    assert sorted(v.resource for v in report.violations) == [
        "pulumi-python:dynamic/docker:Container: api",
        "pulumi-python:dynamic/docker:Container: edge",
    ]
    assert [s.op for s in report.steps] == ["create"] * 4


def test_comment_has_one_section_per_stack_and_the_verdict() -> None:
    comment = render_comment([("prod", _report(K8S)), ("staging", _report(DOCKER))])
    assert comment.startswith(MARKER + "\n")
    assert "**1 stack(s) refused:** `prod`" in comment
    assert "### ❌ `prod`" in comment and "### ✅ `staging`" in comment
    assert "**Changes:** 1 to update (6 unchanged)" in comment
    assert "1 mandatory, 1 advisory violation(s)" in comment
    assert "| mandatory | `no-plain-secret-env` | kubernetes:apps/v1:Deployment: api |" in comment
    assert "~ kubernetes:apps/v1:Deployment api (update)\n    spec.template" in comment
    assert "+ pulumi-python:dynamic/docker:Container edge (create)" in comment
    # a message's lines stay inside its table cell
    row = next(line for line in comment.splitlines() if "no-plain-secret-env" in line)
    assert "API_TOKEN is a literal value" in row and "<br>" in row


def test_all_passing_comment() -> None:
    comment = render_comment([("staging", _report(DOCKER))])
    assert "**Every stack passes its mandatory policies.**" in comment


def test_cli_exit_code_says_whether_a_stack_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "comment.md"
    assert main(["--out", str(out), f"staging={DOCKER}"]) == 0
    assert out.read_text().startswith(MARKER)
    assert main(["--out", str(out), f"staging={DOCKER}", f"prod={K8S}"]) == 1
    assert "`prod`" in out.read_text()


def test_cli_refuses_a_missing_event_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([f"prod={tmp_path / 'none.jsonl'}"])
    assert "prod: no event file" in capsys.readouterr().err


def test_a_stream_without_a_summary_is_a_failure() -> None:
    lines = K8S.read_text().splitlines()
    cut = [line for line in lines if "summaryEvent" not in line and "policyEvent" not in line]
    report = parse_events(cut)
    assert report.failed and report.result == ""
