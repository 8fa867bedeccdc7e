"""Deploy benchmark: ``pulumi up`` against ``docker compose up --wait`` on the same images.

    tools/env.sh .venv/bin/python bench/deploy.py [--rounds N] [--json PATH] [--keep-compose PATH]
    (``make bench`` runs it with the defaults)

Both sides deploy Haven's dev topology from empty on the same Docker engine, side by side in one
run: the compose file is generated from the very specs the Pulumi program registers
(``bench/composegen.py``, the program under mocks), the Pulumi side is the real program in a scratch
copy with its own file backend (``tests/e2e/stack.py``). Each round measures, per side:

1. ``docker compose up -d --wait`` from empty (project ``bench-compose``, gateway on 18291);
2. ``docker compose up -d --wait`` again: the no-op;
3. ``pulumi up`` from empty (stack ``bench``, gateway on 18290);
4. ``pulumi up`` again: the no-op (Pulumi's smoke test runs on every ``up``; compose has none);

and tears each side down in between (``compose down -v``; ``pulumi destroy``), so the two never
run at the same time. After every timed step, and outside the timing, the deployment must answer
``GET /v1/healthz`` through its published port (compose also gets the smoke test's search checks)
and run the same long-running containers. Ollama is outside both stacks: a stand-in container
on a network of its own per side, as in tests/e2e. Rounds alternate which side goes first.

The output is a table of wall times and the ratios pulumi/compose. No figure is asserted: times on
a shared machine vary, the ratios measured side by side are what to read.
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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench import composegen  # noqa: E402

STACK = "bench"
PROJECT = "bench-compose"
PULUMI_PORT = 18290
COMPOSE_PORT = 18291
from tests.e2e.stack import OLLAMA_IMAGE  # noqa: E402

STEP_TIMEOUT_S = 900


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


# -- the two sides --------------------------------------------------------------------------------


@dataclass
class Side:
    """Timings of one side, per round."""

    cold: list[float] = field(default_factory=list)
    noop: list[float] = field(default_factory=list)
    down: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_compose(file: Path, env: dict[str, str], logs: Path, rnd: int, token: str,
                expect: list[str], side: Side) -> None:  # fmt: skip
    """Compose from empty, again (no-op), then down -v."""
    base = ["docker", "compose", "--progress", "plain", "-p", PROJECT, "-f", str(file)]
    up = [*base, "up", "-d", "--wait", "--wait-timeout", "600"]
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
    recreated = [line for line in again.output.splitlines() if "Recreate" in line]
    if recreated:
        side.notes.append(f"round {rnd}: compose no-op recreated: {recreated[:3]}")
    log(f"round {rnd}: docker compose down -v")
    down = timed([*base, "down", "-v", "--remove-orphans"], logs / f"compose-down-{rnd}.log",
                 env=env)  # fmt: skip
    side.cold.append(first.seconds)
    side.noop.append(again.seconds)
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
    side.cold.append(first.seconds)
    side.noop.append(again.seconds)
    side.down.append(down.seconds)


# -- report ---------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Median (the only value for one round)."""
    return statistics.median(values) if values else float("nan")


def report(compose: Side, pulumi: Side, rounds: int, meta: dict[str, Any]) -> dict[str, Any]:
    """Print the table and ratios; the same as a dict."""
    rows = [
        ("from empty", "docker compose up --wait", compose.cold, "pulumi up", pulumi.cold),
        ("no-op", "docker compose up --wait", compose.noop, "pulumi up", pulumi.noop),
        ("teardown", "docker compose down -v", compose.down, "pulumi destroy", pulumi.down),
    ]
    print()
    print(f"Deploy benchmark: Haven dev topology, {rounds} round(s), {meta['machine']}")
    print(f"  compose {meta['compose']}, pulumi {meta['pulumi']}, docker engine {meta['engine']}")
    head = f"{'step':<11} {'compose (s)':>14} {'pulumi (s)':>14} {'pulumi/compose':>15}"
    print(head)
    print("-" * len(head))
    out: dict[str, Any] = {"meta": meta, "rounds": rounds, "steps": {}}
    for step, _c_cmd, c_vals, _p_cmd, p_vals in rows:
        c, p = median(c_vals), median(p_vals)
        ratio = p / c if c else float("nan")
        print(f"{step:<11} {c:>14.2f} {p:>14.2f} {ratio:>14.2f}x")
        out["steps"][step] = {"compose_s": c_vals, "pulumi_s": p_vals, "ratio_median": ratio}
    if rounds > 1:
        print("(medians over rounds; per round:)")
        for step, _c, c_vals, _p, p_vals in rows:
            pairs = ", ".join(
                f"{c:.1f}/{p:.1f}" for c, p in itertools.zip_longest(c_vals, p_vals, fillvalue=0.0)
            )
            print(f"  {step:<11} compose/pulumi: {pairs}")
    print()
    cold = out["steps"]["from empty"]["ratio_median"]
    noop = median(pulumi.noop)
    print(f"pulumi up / docker compose up --wait, from empty: {cold:.2f}x")
    print(f"no-op pulumi up: {noop:.2f}s (compose no-op {median(compose.noop):.2f}s)")
    for note in compose.notes + pulumi.notes:
        print(f"  note: {note}")
    out["notes"] = compose.notes + pulumi.notes
    return out


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 0 when every deployment came up and answered."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds (alternating order)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep-compose", type=Path, help="copy the generated compose file here")
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
    doc, facts = composegen.generate(
        composegen.program(PROJECT, COMPOSE_PORT, compose_net), PROJECT
    )
    compose_file = tmp / "compose.yaml"
    compose_file.write_text(composegen.dump(doc))
    if args.keep_compose:
        args.keep_compose.write_text(composegen.dump(doc))
    expect = sorted(facts["containers"])
    token = doc["services"][facts["public"][0]]["environment"]["AUTH_TOKEN"]
    log(f"compose file {compose_file}: {len(expect)} services + one-off {facts['one_off']}")

    stack = None
    if args.only != "compose":
        stack = Stack.create(tmp / "pulumi", STACK, PULUMI_PORT, {})
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
                    run_compose(compose_file, compose_env, logs, rnd, token, expect, compose)
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
