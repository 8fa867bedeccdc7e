"""Kubernetes benchmark: prints (never asserts) what the cluster path costs on this machine.

- the cluster toolchain's build time: the seconds each component's cached build took, as recorded
  by tools/k8s-toolchain.sh (``--cold-build`` builds it again into an empty cache and an empty
  GOCACHE and times that: 40-60 minutes on two cores);
- the control plane's start (tools/cluster.sh start, until a kwok node is Ready);
- ``pulumi up`` of the prod stack from empty, a no-op ``pulumi up``, and ``destroy``.

Run it through ``make bench-k8s`` (toolchain, PATH and the Pulumi CLI set up).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.k8s_stack import Cluster, Stack, kubernetes_config, secret_values  # noqa: E402


def recorded_build_seconds() -> dict[str, str]:
    """Seconds per component from the cache's stamps ('-' when not built)."""
    out = subprocess.run(
        [str(ROOT / "tools" / "k8s-toolchain.sh"), "seconds"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def cold_build(tmp: Path) -> float:
    """Build the whole toolchain into an empty cache with an empty GOCACHE; seconds taken."""
    env = dict(os.environ, APPSTACK_CACHE=str(tmp / "cache"), GOCACHE=str(tmp / "gocache"))
    env["PULUMI_HOME"] = str(tmp / "pulumi-home")  # the plugin link goes there, not to yours
    t0 = time.monotonic()
    subprocess.run([str(ROOT / "tools" / "k8s-toolchain.sh"), "ensure", "all"], env=env, check=True)
    return time.monotonic() - t0


def main() -> int:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold-build", action="store_true", help="time a cold toolchain build")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cpus, {platform.platform()}")
    with tempfile.TemporaryDirectory(prefix="bench-k8s-") as tmp_name:
        tmp = Path(tmp_name)
        if args.cold_build:
            seconds = cold_build(tmp)
            print(f"cluster toolchain cold build (empty cache and GOCACHE): {seconds:.0f} s")
        recorded = recorded_build_seconds()
        total = sum(int(v) for v in recorded.values() if v.isdigit())
        parts = ", ".join(f"{k} {v} s" for k, v in recorded.items())
        print(f"cluster toolchain build as recorded in the cache: {total} s ({parts})")

        cluster = Cluster.start(tmp / "cluster")
        try:
            print(f"control plane start (etcd .. kwok node Ready): {cluster.start_seconds:.1f} s")
            config = kubernetes_config("prod", skipClusterTasks=True)
            secrets = secret_values("haven")
            stack = Stack.create(tmp / "prod", "prod", cluster, "prod", config, secrets)
            up = stack.up()
            print(f"pulumi up prod from empty: {up.seconds:.1f} s")
            noop = stack.up("--expect-no-changes")
            print(f"pulumi up prod, no changes: {noop.seconds:.1f} s")
            down = stack.destroy("--exclude-protected")
            print(f"pulumi destroy --exclude-protected: {down.seconds:.1f} s")
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
