"""The monitoring component's cost, printed (never asserted): the same dev Haven stack deployed
cold with monitoring off and on, in this process, one after the other.

- seconds of a cold ``pulumi up`` (from empty) of each, and their ratio;
- memory at rest of the monitoring containers (``docker stats``, after a settle time), next to
  the memory of the app's own containers.

Run it through ``make bench`` (Pulumi toolchain, Docker engine and local images set up).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import cleanup  # noqa: E402
from tests.e2e.stack import Stack, docker, start_ollama  # noqa: E402

MONITORING = {"prometheus", "alertmanager", "postgres-exporter"}
_AMOUNT = re.compile(r"([\d.]+)\s*([KMG]i?B|B)")
_SCALE = {"B": 1 / 2**20, "KiB": 1 / 1024, "KB": 1 / 1024, "MiB": 1.0, "MB": 1.0, "GiB": 1024.0,
          "GB": 1024.0}  # fmt: skip
PORT = 18919


def memory_mib(stack: Stack) -> dict[str, float]:
    """Each running container's memory use, MiB, by service (``docker stats --no-stream``)."""
    ids = {c["Id"][:12]: name for name, c in stack.containers().items()}
    out = docker("stats", "--no-stream", "--format", "{{.ID}} {{.MemUsage}}", *ids)
    used = {}
    for line in out.splitlines():
        cid, usage = line.split(" ", 1)
        match = _AMOUNT.match(usage.strip())
        if match:
            used[ids[cid[:12]]] = float(match.group(1)) * _SCALE[match.group(2)]
    return used


def cold_up(
    tmp: Path, name: str, monitoring: bool, settle_s: float
) -> tuple[float, dict[str, float]]:
    """Seconds of a cold ``pulumi up`` of a fresh stack, and its memory at rest."""
    # The local Qdrant stand-in serves no /metrics (Pulumi.dev.yaml says so too).
    config = {"appstack:monitoring": {"enabled": monitoring, "qdrantMetrics": False}}
    stack = Stack.create(tmp / name, name, PORT, config)
    ollama = f"appstack-{name}-ollama"
    start_ollama(stack.ollama_network, ollama)
    try:
        t0 = time.monotonic()
        stack.up()
        seconds = time.monotonic() - t0
        time.sleep(settle_s)
        return seconds, memory_mib(stack)
    finally:
        cleanup(stack, ollama)


def main() -> int:
    """Deploy off, then on; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=30.0, help="seconds before docker stats")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cpus, {platform.platform()}")
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as tmp_name:
        tmp = Path(tmp_name)
        off_s, off_mem = cold_up(tmp, "bmoff", False, args.settle)
        on_s, on_mem = cold_up(tmp, "bmon", True, args.settle)
    app = sum(v for k, v in on_mem.items() if k not in MONITORING)
    extra = {k: round(v, 1) for k, v in on_mem.items() if k in MONITORING}
    print(f"cold pulumi up, monitoring off: {off_s:.1f} s; on: {on_s:.1f} s "
          f"(ratio on/off {on_s / off_s:.2f}, +{on_s - off_s:.1f} s)")  # fmt: skip
    print(f"memory at rest: the app's containers {app:.0f} MiB (off: "
          f"{sum(off_mem.values()):.0f} MiB); monitoring {sum(extra.values()):.0f} MiB "
          f"({extra})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
