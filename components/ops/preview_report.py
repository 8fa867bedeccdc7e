"""The pull request's preview comment: per stack, what would change and what the policies say.

Input: the engine's event stream of one ``pulumi preview`` per stack, as
``PULUMI_ENABLE_STREAMING_JSON_PREVIEW=1 pulumi preview --json --diff --policy-pack policy``
prints it (one JSON engine event per line). The plain ``--json`` summary of this CLI (3.259) has
no policy results; the stream has them (``policyEvent``), with every planned step
(``resourcePreEvent``), the diagnostics and the result (``summaryEvent``).

    python -m components.ops.preview_report --out comment.md STACK=events.jsonl [STACK=...]

writes one Markdown comment for every stack (the workflow posts it, replacing its previous one)
and exits 1 when a stack has a mandatory violation or its preview failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "<!-- appstack-preview -->"
"""The first line of the comment: the workflow finds its previous comment by it."""
OP_SYMBOLS = {
    "create": "+",
    "update": "~",
    "delete": "-",
    "replace": "+-",
    "create-replacement": "++",
    "delete-replaced": "--",
    "read": ">",
    "refresh": "~",
    "import": "=>",
}
SHOWN_OPS = tuple(OP_SYMBOLS)
"""Steps the comment lists; ``same`` steps are only counted."""
MAX_STEPS = 200
STACK_TYPE = "pulumi:pulumi:Stack"
"""A stack policy's violations come with the stack's own URN."""


@dataclass(frozen=True)
class Step:
    """One planned change of a resource."""

    op: str
    urn: str
    type: str
    diffs: tuple[str, ...] = ()
    """The properties that change, ``path (kind)`` (from the engine's detailed diff)."""

    @property
    def name(self) -> str:
        """The resource's logical name."""
        return self.urn.rsplit("::", 1)[-1]


@dataclass(frozen=True)
class Violation:
    """One policy violation reported by a policy pack."""

    policy: str
    pack: str
    level: str
    urn: str
    message: str

    @property
    def mandatory(self) -> bool:
        """A mandatory violation fails the preview (and the check)."""
        return self.level == "mandatory"

    @property
    def resource(self) -> str:
        """``type: name`` of the resource at fault, or ``the stack``."""
        parts = self.urn.split("::")
        if not self.urn or (len(parts) >= 4 and parts[-2] == STACK_TYPE):
            return "the stack"
        return f"{parts[-2]}: {parts[-1]}" if len(parts) >= 4 else self.urn


@dataclass
class PreviewReport:
    """What one stack's preview said."""

    steps: list[Step] = field(default_factory=list)
    unchanged: int = 0
    violations: list[Violation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    packs: dict[str, str] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)
    result: str = ""

    @property
    def failed(self) -> bool:
        """A mandatory violation, an error, or a preview that did not end well."""
        mandatory = any(v.mandatory for v in self.violations)
        return mandatory or bool(self.errors) or self.result != "succeeded"


def parse_events(lines: Iterable[str]) -> PreviewReport:
    """A report from the engine's event stream (lines that are not JSON events are skipped)."""
    report = PreviewReport()
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        _take(report, event)
    return report


def _take(report: PreviewReport, event: dict[str, Any]) -> None:
    if "resourcePreEvent" in event:
        meta = event["resourcePreEvent"].get("metadata") or {}
        op = str(meta.get("op", ""))
        if op in SHOWN_OPS:
            detailed = meta.get("detailedDiff") or {}
            diffs = tuple(
                f"{path} ({(d or {}).get('diffKind', 'update')})" for path, d in detailed.items()
            ) or tuple(str(d) for d in (meta.get("diffs") or ()))
            report.steps.append(
                Step(op, str(meta.get("urn", "")), str(meta.get("type", "")), diffs)
            )
        elif op == "same":
            report.unchanged += 1
    elif "policyEvent" in event:
        p = event["policyEvent"]
        report.violations.append(
            Violation(
                policy=str(p.get("policyName", "")),
                pack=f"{p.get('policyPackName', '')}@v{p.get('policyPackVersion', '')}",
                level=str(p.get("enforcementLevel", "")),
                urn=str(p.get("resourceUrn") or ""),
                message=str(p.get("message", "")).strip(),
            )
        )
    elif "diagnosticEvent" in event:
        d = event["diagnosticEvent"]
        if d.get("severity") == "error" and not d.get("ephemeral"):
            report.errors.append(str(d.get("message", "")).strip())
    elif "summaryEvent" in event:
        s = event["summaryEvent"]
        report.changes = {str(k): int(v) for k, v in (s.get("resourceChanges") or {}).items()}
        report.result = str(s.get("result") or "")
        for key, version in (s.get("PolicyPacks") or s.get("policyPacks") or {}).items():
            report.packs[str(key).split("|", 1)[0]] = str(version)


def _cell(text: str) -> str:
    """Text for one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_stack(stack: str, report: PreviewReport) -> str:
    """The comment's section for one stack."""
    icon = "❌" if report.failed else "✅"
    changes = ", ".join(f"{n} to {op}" for op, n in sorted(report.changes.items()) if op != "same")
    lines = [f"### {icon} `{stack}`", ""]
    lines.append(f"**Changes:** {changes or 'none'}" + (
        f" ({report.unchanged} unchanged)" if report.unchanged else ""))  # fmt: skip
    packs = ", ".join(f"{name}@v{version}" for name, version in sorted(report.packs.items()))
    mandatory = sum(v.mandatory for v in report.violations)
    advisory = len(report.violations) - mandatory
    lines.append("")
    lines.append(
        f"**Policies:** {packs or 'no policy pack ran'}: "
        f"{mandatory} mandatory, {advisory} advisory violation(s)"
    )
    lines.append("")
    if report.violations:
        lines += ["| level | policy | resource | message |", "| --- | --- | --- | --- |"]
        ordered = sorted(report.violations, key=lambda v: (not v.mandatory, v.policy, v.urn))
        for v in ordered:
            lines.append(f"| {v.level} | `{v.policy}` | {_cell(v.resource)} | {_cell(v.message)} |")
        lines.append("")
    for error in report.errors:
        lines.append(f"> **error:** {_cell(error)}")
    if report.errors:
        lines.append("")
    lines += ["<details><summary>Diff</summary>", "", "```diff"]
    for step in report.steps[:MAX_STEPS]:
        lines.append(f"{OP_SYMBOLS[step.op]} {step.type} {step.name} ({step.op})")
        lines += [f"    {diff}" for diff in step.diffs]
    if len(report.steps) > MAX_STEPS:
        lines.append(f"... and {len(report.steps) - MAX_STEPS} more")
    if not report.steps:
        lines.append("  (no change)")
    lines += ["```", "", "</details>", ""]
    return "\n".join(lines)


def render_comment(sections: Sequence[tuple[str, PreviewReport]]) -> str:
    """The whole comment: a heading, then one section per stack."""
    failed = [stack for stack, report in sections if report.failed]
    verdict = (
        f"**{len(failed)} stack(s) refused:** {', '.join(f'`{s}`' for s in failed)}"
        if failed
        else "**Every stack passes its mandatory policies.**"
    )
    body = [MARKER, "## Pulumi preview and policies", "", verdict, ""]
    body += [render_stack(stack, report) for stack, report in sections]
    return "\n".join(body)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the comment for ``STACK=events.jsonl`` arguments; 1 when any stack is refused."""
    parser = argparse.ArgumentParser(prog="preview_report", description=__doc__.splitlines()[0])
    parser.add_argument("stacks", nargs="+", metavar="STACK=EVENTS")
    parser.add_argument("--out", type=Path, help="write the comment here (default: stdout)")
    args = parser.parse_args(argv)
    sections = []
    for item in args.stacks:
        stack, sep, path = item.partition("=")
        if not sep or not stack or not path:
            parser.error(f"{item!r}: expected STACK=EVENTS_FILE")
        file = Path(path)
        if not file.is_file():
            parser.error(f"{stack}: no event file {path!r} (did its preview run?)")
        sections.append((stack, parse_events(file.read_text(encoding="utf-8").splitlines())))
    comment = render_comment(sections)
    if args.out:
        args.out.write_text(comment, encoding="utf-8")
    else:
        sys.stdout.write(comment)
    return 1 if any(report.failed for _, report in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
