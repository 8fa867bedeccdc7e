"""Cluster tests: a real kube-apiserver, controller-manager and scheduler with kwok nodes, and the
real pulumi-kubernetes plugin (tools/k8s-toolchain.sh, tools/cluster.sh).

`make test-k8s` builds the cluster toolchain and runs these. `make test` runs them only when the
toolchain is already cached (it never builds it: a cold build takes longer than CI allows). When
the toolchain is not cached every test here is skipped, saying so loudly; that is the only skip.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.k8s_stack import Cluster, toolchain_ready

READY, STATUS = toolchain_ready()
NOT_CACHED = (
    "THE CLUSTER TOOLCHAIN IS NOT CACHED, so no test of tests/k8s ran: build it and run them with "
    "`make test-k8s` (tools/k8s-toolchain.sh status:\n" + STATUS + ")"
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker of this directory."""
    config.addinivalue_line(
        "markers", "k8s: real control plane with kwok nodes + real kubernetes plugin"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test here `k8s`; skip them all, loudly, when the toolchain is not cached."""
    del config
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.k8s)
            if not READY:
                item.add_marker(pytest.mark.skip(reason=NOT_CACHED))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat the reason at the end of the run, where nobody misses it."""
    if not READY and any(
        "tests/k8s" in str(r.nodeid) for r in terminalreporter.stats.get("skipped", [])
    ):
        terminalreporter.write_sep("!", NOT_CACHED.splitlines()[0], red=True, bold=True)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A control plane of its own for the session, stopped at the end (only what it started)."""
    if shutil.which("pulumi") is None:
        pytest.fail("tests/k8s need `pulumi` on PATH: run them through `make test-k8s`")
    started = Cluster.start(tmp_path_factory.mktemp("cluster"))
    try:
        yield started
    finally:
        started.stop()
