#!/usr/bin/env python3
"""Render a stack's Kubernetes resources as YAML manifests, offline, from the real program.

Usage: ``tools/render_manifests.py STACK OUTDIR``. Runs ``__main__.py`` under Pulumi mocks
(``tests/unit/harness.py``, with its placeholder secrets), and writes every registered
``kubernetes:<group>/<version>:<Kind>`` resource as one manifest (``NNN-kind-name.yaml``).
Secret values are replaced by placeholders: the output never holds one. Pulumi's own plugin
renders the same objects with ``appstack:kubernetes.renderManifestsTo``; this tool exists because
that plugin cannot be installed everywhere (docs/kubernetes.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.unit.harness import SECRET_SIG, SECRET_VALUES, Program, run  # noqa: E402

REDACTED = "<redacted>"
# Apply order (what `kubectl apply -f OUTDIR` reads first comes first); unknown kinds go last.
KIND_ORDER = (
    "Namespace", "NetworkPolicy", "Secret", "ConfigMap", "PersistentVolumeClaim", "Service",
    "StatefulSet", "Job", "Deployment", "PodDisruptionBudget", "Ingress",
)  # fmt: skip


def api_version_kind(type_token: str) -> tuple[str, str] | None:
    """``(apiVersion, kind)`` of a pulumi-kubernetes type token; None for other resources."""
    package, _, rest = type_token.partition(":")
    if package != "kubernetes" or rest.count(":") != 1:
        return None
    module, kind = rest.split(":")
    group, _, version = module.partition("/")
    return (version if group == "core" else f"{group}/{version}"), kind


def _redact(value: Any) -> Any:
    """The same shape with every leaf replaced by a placeholder."""
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return REDACTED


def clean(value: Any) -> Any:
    """Plain YAML data: secrets redacted, integral floats as ints, no nulls, no unknowns."""
    if isinstance(value, dict):
        if SECRET_SIG in value:
            return _redact(clean(value.get("value")))
        return {k: clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    msg = f"value {value!r} is not known under mocks: cannot render it"
    raise ValueError(msg)


def manifests(program: Program) -> list[dict[str, Any]]:
    """Every Kubernetes resource of a program run, as a manifest, in apply order."""
    out = []
    for res in program.resources:
        found = api_version_kind(res.type)
        if found is None:
            continue
        api_version, kind = found
        body = clean(res.inputs)
        for key, want in (("apiVersion", api_version), ("kind", kind)):
            if body.get(key, want) != want:
                msg = f"{res.name}: {key} {body[key]!r} disagrees with type token {res.type}"
                raise ValueError(msg)
        metadata = body.pop("metadata", {})
        out.append({"apiVersion": api_version, "kind": kind, "metadata": metadata, **body})

    def order(m: dict[str, Any]) -> tuple[int, str]:
        rank = KIND_ORDER.index(m["kind"]) if m["kind"] in KIND_ORDER else len(KIND_ORDER)
        return rank, str(m["metadata"].get("name", ""))

    return sorted(out, key=order)


def render(stack: str, outdir: Path) -> list[Path]:
    """Run ``stack`` under mocks and write its manifests into ``outdir``; return the files."""
    program = run(stack, secrets=SECRET_VALUES)
    outdir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, manifest in enumerate(manifests(program)):
        name = manifest.get("metadata", {}).get("name", "unnamed")
        path = outdir / f"{i:03d}-{manifest['kind'].lower()}-{name}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
        files.append(path)
    return files


def main(argv: list[str]) -> int:
    """CLI entry point."""
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    files = render(argv[0], Path(argv[1]))
    print(f"wrote {len(files)} manifests to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
