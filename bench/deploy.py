"""Deploy benchmark: ``pulumi up`` against ``docker compose up --wait`` on the same images.

    tools/env.sh .venv/bin/python bench/deploy.py [--rounds N] [--json PATH] [--keep-compose PATH]
    (``make bench`` runs it with the defaults)

Both sides deploy Haven's dev topology from empty on the same Docker engine, side by side in one
run: the compose file is generated from the very specs the Pulumi program registers
(``bench/composegen.py``, the program under mocks), the Pulumi side is the real program in a scratch
copy with its own file backend (``tests/e2e/stack.py``). The only published port on either side is
the edge proxy (Caddy) in front of the gateway. Each round measures, per side:

1. deploy from empty, gateway 0.1.0: ``docker compose up -d --wait`` (project ``bench-compose``,
   edge on 18291) / ``pulumi up`` (stack ``bench``, edge on 18290);
2. the same command again: the no-op (Pulumi's smoke test runs on every ``up``; compose has none);
3. a gateway tag change 0.1.0 -> 0.2.0: ``docker compose up -d --wait`` of the file generated with
   the new tag / ``pulumi config set --path appstack:images.gateway.tag 0.2.0`` (untimed) then
   ``pulumi up``. Meanwhile a thread sends ``GET /v1/healthz`` to the published port every 50 ms
   (one request at a time, 5 s timeout), from its first success before the command until 1 s after
   it, and records the failed requests (not 200, or no answer) and the longest time between two
   successful answers;

and tears each side down in between (``compose down -v``; ``pulumi destroy``), so the two never
run at the same time. After every timed step, and outside the timing, the deployment must answer
``GET /v1/healthz`` through its published port (compose also gets the smoke test's search checks)
and run the same long-running containers, after the change with the gateway on the new image.
Ollama is outside both stacks: a stand-in container on a network of its own per side, as in
tests/e2e. Rounds alternate which side goes first.

The output is a table of wall times and the ratios pulumi/compose, then what the clients saw during
the tag change. No figure is asserted: times on a shared machine vary, the figures measured side by
side are what to read.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench import composegen  # noqa: E402
from tests.e2e.stack import OLLAMA_IMAGE  # noqa: E402

STACK = "bench"
PROJECT = "bench-compose"
PULUMI_PORT = 18290
COMPOSE_PORT = 18291
GATEWAY_FROM = "0.1.0"
GATEWAY_TO = "0.2.0"
GATEWAY_IMAGE = "appstack.local/haven-gateway"
STEP_TIMEOUT_S = 900
PROBE_EVERY_S = 0.05
PROBE_TIMEOUT_S = 5.0
PROBE_TAIL_S = 1.0


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def docker(*args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    """The docker CLI against the engine of ``DOCKER_HOST``; stdout."""
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=STEP_TIMEOUT_S, env=env
    )
    if check and proc.returncode != 0:
        msg = f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}"
        raise RuntimeError(msg)
    return proc.stdout.strip()


@dataclass
class Timed:
    """One timed command."""

    seconds: float
    code: int
    output: str


def timed(argv: Sequence[str], logfile: Path, **kwargs: Any) -> Timed:
    """Run ``argv``, wall-clock it, keep its output in ``logfile``."""
    start = time.monotonic()
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
        **kwargs,
    )
    seconds = time.monotonic() - start
    output = proc.stdout + proc.stderr
    logfile.write_text(f"$ {shlex.join(argv)}\n# exit {proc.returncode}, {seconds:.2f}s\n{output}")
    if proc.returncode != 0:
        msg = f"{shlex.join(argv)} failed ({proc.returncode}), log {logfile}:\n{output[-4000:]}"
        raise RuntimeError(msg)
    return Timed(seconds, proc.returncode, output)


# -- set-up ---------------------------------------------------------------------------------------


def ensure_compose() -> dict[str, str]:
    """``tools/compose.sh ensure`` (builds once, then instant); the environment it exports."""
    proc = subprocess.run(
        [str(ROOT / "tools" / "compose.sh"), "ensure"],
        stdout=subprocess.PIPE,
        text=True,
        timeout=3600,
        check=True,
    )
    lines = proc.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("export "):
        msg = f"tools/compose.sh ensure printed no export line: {proc.stdout!r}"
        raise RuntimeError(msg)
    env = dict(os.environ)
    for word in shlex.split(lines[-1])[1:]:
        key, _, value = word.partition("=")
        env[key] = value
    version = docker("compose", "version", "--short", env=env)
    log(f"docker compose {version}")
    return env


def stop_ollama(network: str, name: str) -> None:
    """Remove the stand-in and its network."""
    docker("rm", "-f", name, check=False)
    docker("network", "rm", network, check=False)


def clear_pulumi_leftovers(prefix: str) -> None:
    """Whatever an interrupted earlier run of the stack left on the engine (its state is gone)."""
    ids = docker("ps", "-aq", "--filter", f"label=appstack.stack={STACK}", check=False).split()
    if ids:
        docker("rm", "-f", *ids, check=False)
    for kind in ("volume", "network"):
        for obj in docker(kind, "ls", "-q", "--filter", f"name={prefix}-", check=False).split():
            docker(kind, "rm", obj, check=False)


# -- verification (never timed) -------------------------------------------------------------------


def check_serving(port: int, token: str | None = None, deadline_s: float = 30) -> str:
    """The deployment answers through its published port; a short description of what passed."""
    base = f"http://127.0.0.1:{port}"
    end = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < end:
        try:
            resp = httpx.get(f"{base}/v1/healthz", timeout=5)
            if resp.status_code == 200 and resp.json().get("status") == "ok":
                break
            last = resp
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
        time.sleep(0.5)
    else:
        msg = f"{base}/v1/healthz did not answer 200 {{'status': 'ok'}}: {last!r}"
        raise RuntimeError(msg)
    done = "healthz 200"
    if token:
        ok = httpx.get(f"{base}/v1/search?q=hello", timeout=10,
                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        anon = httpx.get(f"{base}/v1/search?q=hello", timeout=10)
        if ok.status_code != 200 or anon.status_code != 401:
            msg = (
                f"search checks: authorized {ok.status_code} (want 200), "
                f"anonymous {anon.status_code} (want 401)"
            )
            raise RuntimeError(msg)
        done += ", search 200/401"
    return done


def running_services(label: str) -> list[str]:
    """Services (appstack.service label) of running containers with ``label``."""
    out = docker("ps", "--filter", f"label={label}", "--filter", "status=running",
                 "--format", '{{.Label "appstack.service"}}')  # fmt: skip
    return sorted(out.split())


def check_gateway_image(label: str, ref: str) -> None:
    """Exactly one gateway container runs, and on the image ``ref`` (compared by image id)."""
    ids = docker("ps", "-q", "--filter", f"label={label}", "--filter", "status=running",
                 "--filter", "label=appstack.service=gateway").split()  # fmt: skip
    want = docker("image", "inspect", "-f", "{{.Id}}", ref)
    got = [docker("inspect", "-f", "{{.Image}}", i) for i in ids]
    if got != [want]:
        msg = f"{label}: running gateway image(s) {got}, want one on {ref} ({want})"
        raise RuntimeError(msg)


# -- what clients see during a change (never part of the timing) ----------------------------------


@dataclass
class Probe:
    """What a client polling ``/v1/healthz`` saw while one command ran."""

    sent: int = 0
    failed: int = 0
    longest_gap_s: float = 0.0
    """Longest time between two successful answers (end to end, so a slow answer counts)."""
    slowest_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)


class Prober(threading.Thread):
    """``GET /v1/healthz`` every ``PROBE_EVERY_S``, one request at a time, until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(name=f"probe-{port}", daemon=True)
        self.url = f"http://127.0.0.1:{port}/v1/healthz"
        self.probe = Probe()
        self.first_ok = threading.Event()
        self.stop = threading.Event()
        self._last_ok: float | None = None

    def run(self) -> None:
        """Poll on a fixed 50 ms schedule; ticks missed by a slow request are skipped."""
        # A fresh connection per request, as separate clients would open them.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=PROBE_TIMEOUT_S, limits=limits) as http:
            tick = time.monotonic()
            while not self.stop.is_set():
                self._once(http)
                now = time.monotonic()
                tick += PROBE_EVERY_S * max(1, int((now - tick) / PROBE_EVERY_S) + 1)
                self.stop.wait(max(0.0, tick - now))
        if self._last_ok is not None:  # an outage still open at the end counts too
            gap = time.monotonic() - self._last_ok
            self.probe.longest_gap_s = max(self.probe.longest_gap_s, gap)

    def _once(self, http: httpx.Client) -> None:
        start = time.monotonic()
        try:
            status = http.get(self.url).status_code
            what = str(status)
        except httpx.HTTPError as exc:
            status, what = 0, type(exc).__name__
        end = time.monotonic()
        if not self.first_ok.is_set():  # before the change starts: not counted
            if status == 200:
                self._last_ok = end
                self.first_ok.set()
            return
        p = self.probe
        p.sent += 1
        p.slowest_s = max(p.slowest_s, end - start)
        if status != 200:
            p.failed += 1
            p.errors[what] += 1
            return
        if self._last_ok is not None:
            p.longest_gap_s = max(p.longest_gap_s, end - self._last_ok)
        self._last_ok = end


@contextmanager
def probing(port: int) -> Iterator[Probe]:
    """Poll the published port around the block: from a first success to ``PROBE_TAIL_S`` after."""
    prober = Prober(port)
    prober.start()
    try:
        if not prober.first_ok.wait(30):
            msg = f"{prober.url} never answered 200 before the change"
            raise RuntimeError(msg)
        yield prober.probe
        time.sleep(PROBE_TAIL_S)
    finally:
        prober.stop.set()
        prober.join(PROBE_TIMEOUT_S + 5)


def describe(probe: Probe) -> str:
    """One line for the log."""
    errors = ", ".join(f"{k} x{v}" for k, v in probe.errors.most_common()) or "none"
    return (
        f"{probe.failed}/{probe.sent} failed ({errors}), longest gap {probe.longest_gap_s:.2f}s, "
        f"slowest {probe.slowest_s:.2f}s"
    )


# -- the two sides --------------------------------------------------------------------------------


@dataclass
class Side:
    """Timings of one side, per round."""

    cold: list[float] = field(default_factory=list)
    noop: list[float] = field(default_factory=list)
    change: list[float] = field(default_factory=list)
    down: list[float] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def compose_up(file: Path) -> list[str]:
    """``docker compose up -d --wait`` of ``file`` (plain progress: its log says what it did)."""
    base = ["docker", "compose", "--progress", "plain", "-p", PROJECT, "-f", str(file)]
    return [*base, "up", "-d", "--wait", "--wait-timeout", "600"]


def recreates(output: str) -> set[str]:
    """Containers compose's plain progress says it recreated (``Container X  Recreate``)."""
    found = set()
    for line in output.splitlines():
        words = line.split()
        if "Recreate" in words[1:]:
            found.add(words[words.index("Recreate") - 1])
    return found


def run_compose(files: tuple[Path, Path], env: dict[str, str], logs: Path, rnd: int, token: str,
                expect: list[str], side: Side) -> None:  # fmt: skip
    """Compose from empty, again (no-op), the gateway tag change, then down -v."""
    file, changed = files
    base = ["docker", "compose", "--progress", "plain", "-p", PROJECT, "-f", str(changed)]
    up = compose_up(file)
    log(f"round {rnd}: docker compose up --wait (from empty)")
    first = timed(up, logs / f"compose-up-{rnd}.log", env=env)
    what = check_serving(COMPOSE_PORT, token)
    got = running_services(f"appstack.bench={PROJECT}")
    if got != expect:
        msg = f"compose runs {got}, the Pulumi program deploys {expect}"
        raise RuntimeError(msg)
    log(f"round {rnd}: compose {first.seconds:.1f}s, {len(got)} services running, {what}")
    log(f"round {rnd}: docker compose up --wait (no-op)")
    again = timed(up, logs / f"compose-noop-{rnd}.log", env=env)
    check_serving(COMPOSE_PORT, token)
    migrate_log = docker("logs", f"{PROJECT}-migrate-1", check=False)
    if "schema present" not in migrate_log:
        msg = f"compose no-op: migrate did not find its ledger: {migrate_log[-500:]!r}"
        raise RuntimeError(msg)
    if recreated := sorted(recreates(again.output)):
        side.notes.append(f"round {rnd}: compose no-op recreated: {recreated}")
    label = f"appstack.bench={PROJECT}"
    check_gateway_image(label, f"{GATEWAY_IMAGE}:{GATEWAY_FROM}")
    log(f"round {rnd}: docker compose up --wait (gateway {GATEWAY_FROM} -> {GATEWAY_TO})")
    with probing(COMPOSE_PORT) as probe:
        change = timed(compose_up(changed), logs / f"compose-change-{rnd}.log", env=env)
    check_serving(COMPOSE_PORT, token)
    check_gateway_image(label, f"{GATEWAY_IMAGE}:{GATEWAY_TO}")
    if (got := running_services(label)) != expect:
        msg = f"compose runs {got} after the tag change, want {expect}"
        raise RuntimeError(msg)
    recreated = sorted(recreates(change.output))
    side.notes.append(f"round {rnd}: compose tag change recreated {recreated}")
    log(f"round {rnd}: compose change {change.seconds:.1f}s, clients: {describe(probe)}")
    log(f"round {rnd}: docker compose down -v")
    down = timed([*base, "down", "-v", "--remove-orphans"], logs / f"compose-down-{rnd}.log",
                 env=env)  # fmt: skip
    side.cold.append(first.seconds)
    side.noop.append(again.seconds)
    side.change.append(change.seconds)
    side.probes.append(probe)
    side.down.append(down.seconds)


def resources_summary(text: str) -> str:
    """The ``Resources:`` block of pulumi's output, on one line."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Resources:")
    except StopIteration:
        return "?"
    out = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        out.append(line.strip())
    return ", ".join(out)


def run_pulumi(stack: Any, logs: Path, rnd: int, expect: list[str], side: Side) -> None:
    """``pulumi up`` from empty, again (no-op), then destroy."""
    env = stack.env
    up = ["pulumi", "up", "--yes", "--skip-preview", "--non-interactive", "--stack", STACK]
    log(f"round {rnd}: pulumi up (from empty)")
    first = timed(up, logs / f"pulumi-up-{rnd}.log", cwd=stack.workdir, env=env)
    what = check_serving(PULUMI_PORT)
    got = running_services(f"appstack.stack={STACK}")
    if got != expect:
        msg = f"pulumi runs {got}, expected {expect}"
        raise RuntimeError(msg)
    log(f"round {rnd}: pulumi {first.seconds:.1f}s ({resources_summary(first.output)}), "
        f"{len(got)} services running, {what}")  # fmt: skip
    log(f"round {rnd}: pulumi up (no-op)")
    again = timed(up, logs / f"pulumi-noop-{rnd}.log", cwd=stack.workdir, env=env)
    check_serving(PULUMI_PORT)
    side.notes.append(f"round {rnd}: pulumi no-op: {resources_summary(again.output)}")
    label = f"appstack.stack={STACK}"
    check_gateway_image(label, f"{GATEWAY_IMAGE}:{GATEWAY_FROM}")
    log(f"round {rnd}: pulumi up (gateway {GATEWAY_FROM} -> {GATEWAY_TO})")
    set_gateway_tag(stack, GATEWAY_TO)
    with probing(PULUMI_PORT) as probe:
        change = timed(up, logs / f"pulumi-change-{rnd}.log", cwd=stack.workdir, env=env)
    check_serving(PULUMI_PORT)
    check_gateway_image(label, f"{GATEWAY_IMAGE}:{GATEWAY_TO}")
    if (got := running_services(label)) != expect:
        msg = f"pulumi runs {got} after the tag change, want {expect}"
        raise RuntimeError(msg)
    side.notes.append(f"round {rnd}: pulumi tag change: {resources_summary(change.output)}")
    log(f"round {rnd}: pulumi change {change.seconds:.1f}s, clients: {describe(probe)}")
    log(f"round {rnd}: pulumi destroy")
    destroy = [
        "pulumi",
        "destroy",
        "--yes",
        "--skip-preview",
        "--non-interactive",
        "--stack",
        STACK,
    ]
    down = timed(destroy, logs / f"pulumi-destroy-{rnd}.log", cwd=stack.workdir, env=env)
    set_gateway_tag(stack, GATEWAY_FROM)  # the next round deploys the old tag from empty again
    side.cold.append(first.seconds)
    side.noop.append(again.seconds)
    side.change.append(change.seconds)
    side.probes.append(probe)
    side.down.append(down.seconds)


def set_gateway_tag(stack: Any, tag: str) -> None:
    """``pulumi config set --path appstack:images.gateway.tag TAG``, as an operator would."""
    stack.pulumi("config", "set", "--path", "--stack", STACK, "appstack:images.gateway.tag", tag,
                 check=True)  # fmt: skip


# -- report ---------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Median (the only value for one round)."""
    return statistics.median(values) if values else float("nan")


def report(compose: Side, pulumi: Side, rounds: int, meta: dict[str, Any]) -> dict[str, Any]:
    """Print the tables and ratios; the same as a dict."""
    change = f"gateway {GATEWAY_FROM}->{GATEWAY_TO}"
    rows = [
        ("from empty", compose.cold, pulumi.cold),
        ("no-op", compose.noop, pulumi.noop),
        (change, compose.change, pulumi.change),
        ("teardown", compose.down, pulumi.down),
    ]
    width = max(len(step) for step, _c, _p in rows)
    print()
    print(f"Deploy benchmark: Haven dev topology, {rounds} round(s), {meta['machine']}")
    print(f"  compose {meta['compose']}, pulumi {meta['pulumi']}, docker engine {meta['engine']}")
    head = f"{'step':<{width}} {'compose (s)':>12} {'pulumi (s)':>12} {'pulumi/compose':>15}"
    print(head)
    print("-" * len(head))
    out: dict[str, Any] = {"meta": meta, "rounds": rounds, "steps": {}}
    for step, c_vals, p_vals in rows:
        c, p = median(c_vals), median(p_vals)
        ratio = p / c if c else float("nan")
        print(f"{step:<{width}} {c:>12.2f} {p:>12.2f} {ratio:>14.2f}x")
        out["steps"][step] = {"compose_s": c_vals, "pulumi_s": p_vals, "ratio_median": ratio}
    if rounds > 1:
        print("(medians over rounds; per round, compose/pulumi:)")
        for step, c_vals, p_vals in rows:
            pairs = ", ".join(
                f"{c:.1f}/{p:.1f}" for c, p in itertools.zip_longest(c_vals, p_vals, fillvalue=0.0)
            )
            print(f"  {step:<{width}} {pairs}")
    out["clients"] = report_clients(compose.probes, pulumi.probes, rounds)
    print()
    cold = out["steps"]["from empty"]["ratio_median"]
    noop = out["steps"]["no-op"]["ratio_median"]
    tag = out["steps"][change]["ratio_median"]
    print(f"pulumi up / docker compose up --wait, from empty: {cold:.2f}x")
    print(f"pulumi up / docker compose up --wait, no-op: {noop:.2f}x "
          f"({median(pulumi.noop):.2f}s vs {median(compose.noop):.2f}s)")  # fmt: skip
    print(f"pulumi up / docker compose up --wait, {change}: {tag:.2f}x; failed requests "
          f"{_counts(compose.probes, 'failed')} vs {_counts(pulumi.probes, 'failed')}, "
          f"longest gap {_gaps(compose.probes)} vs {_gaps(pulumi.probes)}")  # fmt: skip
    for note in compose.notes + pulumi.notes:
        print(f"  note: {note}")
    out["notes"] = compose.notes + pulumi.notes
    return out


def _counts(probes: Sequence[Probe], attr: str) -> str:
    return "/".join(str(getattr(p, attr)) for p in probes) or "-"


def _gaps(probes: Sequence[Probe]) -> str:
    return "/".join(f"{p.longest_gap_s:.2f}s" for p in probes) or "-"


def report_clients(
    compose: Sequence[Probe], pulumi: Sequence[Probe], rounds: int
) -> dict[str, Any]:
    """Print what the polling client saw during the tag change, per side; the same as a dict."""
    print()
    every = f"{PROBE_EVERY_S * 1000:g} ms"
    rounds_note = " (per round, /-separated)" if rounds > 1 else ""
    print(f"Clients during the gateway tag change: GET /v1/healthz every {every}{rounds_note}")
    head = f"{'':<22} {'compose':>20} {'pulumi':>20}"
    print(head)
    print("-" * len(head))
    lines = [
        ("requests", _counts(compose, "sent"), _counts(pulumi, "sent")),
        ("failed", _counts(compose, "failed"), _counts(pulumi, "failed")),
        ("longest gap", _gaps(compose), _gaps(pulumi)),
        ("slowest request", "/".join(f"{p.slowest_s:.2f}s" for p in compose) or "-",
         "/".join(f"{p.slowest_s:.2f}s" for p in pulumi) or "-"),
    ]  # fmt: skip
    for what, c, p in lines:
        print(f"{what:<22} {c:>20} {p:>20}")
    for side, probes in (("compose", compose), ("pulumi", pulumi)):
        for i, probe in enumerate(probes, 1):
            if probe.errors:
                errors = ", ".join(f"{k} x{v}" for k, v in probe.errors.most_common())
                print(f"  {side} round {i} failures: {errors}")

    def as_dict(probe: Probe) -> dict[str, Any]:
        return {"sent": probe.sent, "failed": probe.failed, "errors": dict(probe.errors),
                "longest_gap_s": probe.longest_gap_s, "slowest_s": probe.slowest_s}  # fmt: skip

    return {"compose": [as_dict(p) for p in compose], "pulumi": [as_dict(p) for p in pulumi]}


def versions(env: dict[str, str]) -> dict[str, str]:
    """What ran."""

    def quiet(argv: list[str], environ: dict[str, str] | None = None) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=environ)
        except OSError:
            return "-"
        return proc.stdout.strip() or "?"

    cpus = os.cpu_count() or 0
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "machine": f"{platform.machine()}, {cpus} cores, {mem_gib:.0f} GiB",
        "compose": quiet(["docker", "compose", "version", "--short"], env),
        "pulumi": quiet(["pulumi", "version"]),
        "engine": quiet(["docker", "version", "--format", "{{.Server.Version}}"]),
    }


def compose_files(
    tmp: Path, ollama_network: str, keep: Path | None
) -> tuple[tuple[Path, Path], dict[str, Any]]:
    """The compose file of the old gateway tag and that of the new one; facts about the first.

    The second must differ from the first in the gateway's image only, as the Pulumi side's
    change does (one config key).
    """
    docs = []
    for tag in (GATEWAY_FROM, GATEWAY_TO):
        prog = composegen.program(PROJECT, COMPOSE_PORT, ollama_network, {"gateway": tag})
        docs.append(composegen.generate(prog, PROJECT))
    (old, facts), (new, _) = docs
    diff = [
        name for name in sorted(set(old["services"]) | set(new["services"]))
        if old["services"].get(name) != new["services"].get(name)
    ]  # fmt: skip
    want = {**old["services"]["gateway"], "image": f"{GATEWAY_IMAGE}:{GATEWAY_TO}"}
    if diff != ["gateway"] or new["services"]["gateway"] != want:
        msg = f"the tag change's compose file differs in {diff}, not just the gateway's image"
        raise RuntimeError(msg)
    paths = (tmp / "compose.yaml", tmp / f"compose-gateway-{GATEWAY_TO}.yaml")
    for path, doc in zip(paths, (old, new), strict=True):
        path.write_text(composegen.dump(doc))
    if keep:
        keep.write_text(composegen.dump(old))
        keep.with_name(f"{keep.stem}-gateway-{GATEWAY_TO}{keep.suffix}").write_text(
            composegen.dump(new)
        )
    upstream = facts["upstream"][0] if facts["upstream"] else facts["public"][0]
    facts["token"] = old["services"][upstream]["environment"]["AUTH_TOKEN"]
    return paths, facts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 0 when every deployment came up and answered."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds (alternating order)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--keep-compose",
        type=Path,
        help="copy the generated compose file here (and the tag change's beside)",
    )
    parser.add_argument("--only", choices=("compose", "pulumi"), help="run one side only")
    args = parser.parse_args(argv)

    from tests.e2e.stack import Stack, start_ollama

    tmp = Path(tempfile.mkdtemp(prefix="appstack-bench-"))
    logs = tmp / "logs"
    logs.mkdir()
    log(f"work dir {tmp} (logs in {logs})")
    docker("info", "--format", "{{.ServerVersion}}")
    missing = [ref for ref in (OLLAMA_IMAGE,) if not docker("images", "-q", ref, check=False)]
    if missing:
        msg = f"images missing: {missing} (tools/images.sh build all)"
        raise RuntimeError(msg)

    compose_env = ensure_compose() if args.only != "pulumi" else dict(os.environ)
    compose_net = f"appstack-{PROJECT}-ollama"
    files, facts = compose_files(tmp, compose_net, args.keep_compose)
    compose_file = files[0]
    expect = sorted(facts["containers"])
    token = facts["token"]
    log(f"compose file {compose_file}: {len(expect)} services + one-off {facts['one_off']}, "
        f"edge {facts['public']} -> {facts['upstream']}; tag change: {files[1]}")  # fmt: skip

    stack = None
    if args.only != "compose":
        images = composegen.dev_images({"gateway": GATEWAY_FROM})
        # monitoring off on both sides: compose's file is generated from the same program
        config = {"appstack:images": images, "appstack:monitoring": False}
        stack = Stack.create(tmp / "pulumi", STACK, PULUMI_PORT, config)
    compose, pulumi = Side(), Side()
    compose_base = ["docker", "compose", "-p", PROJECT, "-f", str(compose_file)]
    try:
        if args.only != "pulumi":
            docker(*compose_base[1:], "down", "-v", "--remove-orphans", env=compose_env,
                   check=False)  # fmt: skip
            start_ollama(compose_net, compose_net)
        if stack is not None:
            clear_pulumi_leftovers(f"{STACK}-haven")
            start_ollama(stack.ollama_network, stack.ollama_network)
        for rnd in range(1, args.rounds + 1):
            sides = ["compose", "pulumi"] if rnd % 2 else ["pulumi", "compose"]
            for which in sides:
                if which == "compose" and args.only != "pulumi":
                    run_compose(files, compose_env, logs, rnd, token, expect, compose)
                elif which == "pulumi" and stack is not None:
                    run_pulumi(stack, logs, rnd, expect, pulumi)
    finally:
        log("cleaning up")
        if args.only != "pulumi":
            docker(*compose_base[1:], "down", "-v", "--remove-orphans", env=compose_env,
                   check=False)  # fmt: skip
            stop_ollama(compose_net, compose_net)
        if stack is not None:
            stack.pulumi("destroy", "--yes", "--skip-preview", "--stack", STACK)
            clear_pulumi_leftovers(f"{STACK}-haven")
            stop_ollama(stack.ollama_network, stack.ollama_network)

    meta = versions(compose_env)
    result = report(compose, pulumi, args.rounds, meta)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
