"""The ``SmokeTest`` dynamic resource: HTTP checks against the public entry on every ``up``."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from components.providers.prune import prune
from components.providers.runner import redact
from components.providers.window import close_window, is_open
from components.spec import SmokeSpec

RUN_NOTE = "runs on every pulumi up"
"""The ``run`` input: the preview shows it against the last run's ``ran at ...`` output."""
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
BODY_CHARS = 200
WINDOW_LEFT_OPEN = (
    "\nThe maintenance window the migration opened stays open (clients get 503 with Retry-After): "
    "the database is migrated and the new release failed. `appstack deploy` rolls back and closes "
    "it; `appstack maintenance off` closes it by hand."
)
_MISSING = object()


@dataclass(frozen=True)
class Check:
    """One HTTP check: request, expected status, expected JSON values by dotted key."""

    name: str
    path: str
    method: str = "GET"
    expect_status: int = 200
    expect_json: Mapping[str, Any] = field(default_factory=dict)
    bearer_key: str | None = None
    timeout_s: float | None = None
    """Per-request timeout of this check; None: the test's ``timeout_s``."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Check:
        """A check from its dict form (Pulumi hands numbers back as floats)."""
        return cls(
            name=str(raw["name"]),
            path=str(raw["path"]),
            method=str(raw.get("method") or "GET").upper(),
            expect_status=int(raw.get("expect_status") or 200),
            expect_json=dict(raw.get("expect_json") or {}),
            bearer_key=raw.get("bearer_key") or None,
            timeout_s=float(raw["timeout_s"]) if raw.get("timeout_s") else None,
        )


@dataclass(frozen=True)
class Outcome:
    """The latest attempt of one check."""

    ok: bool
    latency_ms: float
    detail: str


def _dotted(data: Any, key: str) -> Any:
    for part in key.split("."):
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return _MISSING
    return data


def _json_mismatches(body: str, expect: Mapping[str, Any]) -> list[str]:
    if not expect:
        return []
    try:
        data = json.loads(body)
    except ValueError:
        return ["body is not JSON"]
    problems = []
    for key, want in expect.items():
        got = _dotted(data, key)
        if got is _MISSING:
            problems.append(f"json {key!r} missing (expected {want!r})")
        elif got != want:
            problems.append(f"json {key!r} = {got!r} (expected {want!r})")
    return problems


def run_check(
    client: httpx.Client,
    base_url: str,
    check: Check,
    secrets: Mapping[str, str],
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
) -> Outcome:
    """One attempt of one check; the detail is already redacted."""
    headers = dict(headers or {})
    if check.bearer_key:
        headers["Authorization"] = f"Bearer {secrets[check.bearer_key]}"
    url = base_url.rstrip("/") + "/" + check.path.lstrip("/")
    started = time.monotonic()
    what = f"{check.method} {check.path}"
    try:
        resp = client.request(check.method, url, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException as exc:
        ms = (time.monotonic() - started) * 1000
        detail = f"{what} -> timed out after {timeout_s:g}s ({type(exc).__name__})"
        return Outcome(False, round(ms, 1), redact(detail, list(secrets.values())))
    except httpx.HTTPError as exc:
        ms = (time.monotonic() - started) * 1000
        detail = f"{what} -> connection error: {type(exc).__name__}: {exc}"
        return Outcome(False, round(ms, 1), redact(detail, list(secrets.values())))
    ms = round((time.monotonic() - started) * 1000, 1)
    problems = []
    if resp.status_code != check.expect_status:
        problems.append(f"status {resp.status_code} (expected {check.expect_status})")
    else:
        problems.extend(_json_mismatches(resp.text, check.expect_json))
    if not problems:
        return Outcome(True, ms, f"{what} -> {resp.status_code}")
    body = resp.text[:BODY_CHARS].replace("\n", " ")
    detail = f"{what} -> {'; '.join(problems)}; body: {body!r}"
    return Outcome(False, ms, redact(detail, list(secrets.values())))


def tls_verify(ca_pem: str | None) -> Any:
    """TLS verification: the system's trust store, plus the edge's own CA or certificate.

    A certificate given to the edge (it may be self-signed, or a leaf of a private CA) is trusted
    as an anchor of its own: the check is that the edge serves exactly it.
    """
    if not ca_pem:
        return True
    import ssl

    context = ssl.create_default_context()
    context.load_verify_locations(cadata=ca_pem)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def run_checks(
    base_url: str,
    checks: Sequence[Check],
    secrets: Mapping[str, str],
    deadline_s: float,
    timeout_s: float,
    ca_pem: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[dict[str, Outcome], int]:
    """Run every check; retry the failing ones with exponential backoff until the deadline."""
    end = time.monotonic() + deadline_s
    results: dict[str, Outcome] = {}
    pending = list(checks)
    delay = 0.25
    attempts = 0
    with httpx.Client(follow_redirects=False, verify=tls_verify(ca_pem)) as client:
        while True:
            attempts += 1
            for check in pending:
                # A check's own timeout is granted in full, past the deadline if need be: cutting
                # a slow probe short at the deadline would report a timeout it never had.
                own = check.timeout_s or timeout_s
                budget = own if check.timeout_s else max(0.1, min(own, end - time.monotonic()))
                results[check.name] = run_check(client, base_url, check, secrets, budget, headers)
            pending = [c for c in pending if not results[c.name].ok]
            remaining = end - time.monotonic()
            if not pending or remaining <= 0:
                return results, attempts
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 5.0)


def failure_message(
    base_url: str, checks: Sequence[Check], results: Mapping[str, Outcome], attempts: int
) -> str:
    """One message listing every failing check with its status, latency and body."""
    failing = [c for c in checks if not results[c.name].ok]
    lines = [
        f"smoke test against {base_url} failed: {len(failing)} of {len(checks)} checks "
        f"still failing after {attempts} attempt(s):"
    ]
    lines += [
        f"  - {c.name}: {results[c.name].detail} [{results[c.name].latency_ms:g} ms]"
        for c in failing
    ]
    return "\n".join(lines)


def _check_failures(news: Mapping[str, Any]) -> list[CheckFailure]:
    failures: list[CheckFailure] = []
    raw_checks = news.get("checks")
    if raw_checks == UNKNOWN:
        return failures
    if not isinstance(raw_checks, list) or not raw_checks:
        return [CheckFailure("checks", "checks must be a non-empty list")]
    secrets = news.get("secrets")
    names: list[str] = []
    for i, raw in enumerate(raw_checks):
        try:
            check = Check.parse(raw)
        except (KeyError, TypeError, ValueError) as exc:
            failures.append(CheckFailure("checks", f"check #{i} is invalid: {exc!r}"))
            continue
        names.append(check.name)
        key = check.bearer_key
        if key and isinstance(secrets, Mapping) and key not in secrets:
            reason = f"check {check.name!r} names bearer_key {key!r}, not in secrets"
            failures.append(CheckFailure("checks", reason))
    if len(names) != len(set(names)):
        failures.append(CheckFailure("checks", f"check names repeat: {names}"))
    for key in ("deadline_s", "timeout_s"):
        value = news.get(key)
        if isinstance(value, int | float) and value <= 0:
            failures.append(CheckFailure(key, f"{key} must be positive, got {value}"))
    for raw in raw_checks:
        own = raw.get("timeout_s") if isinstance(raw, Mapping) else None
        if isinstance(own, int | float) and own <= 0:
            reason = f"check {raw.get('name')!r}: timeout_s must be positive, got {own}"
            failures.append(CheckFailure("checks", reason))
    return failures


class SmokeTestProvider(ResourceProvider):
    """Runs the smoke checks on every create and update; nothing to delete."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Validate the checks, bearer keys and timings."""
        return CheckResult({**news, "run": RUN_NOTE}, _check_failures(news))

    def diff(self, _id: str, _olds: dict[str, Any], _news: dict[str, Any]) -> DiffResult:
        """Always an update: the ``run`` property shows the checks run on every ``up``."""
        return DiffResult(changes=True, replaces=[], delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Run the checks; raise one message listing every failing check."""
        return CreateResult(f"smoke-{props.get('base_url', '')}", self._run(props, {}))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Run the checks again."""
        return UpdateResult(self._run(news, olds))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """A smoke test leaves nothing behind."""

    @staticmethod
    def _run(props: Mapping[str, Any], olds: Mapping[str, Any]) -> dict[str, Any]:
        checks = [Check.parse(raw) for raw in props["checks"]]
        secrets = {str(k): str(v) for k, v in (props.get("secrets") or {}).items()}
        base_url = str(props["base_url"])
        headers = {str(k): str(v) for k, v in (props.get("headers") or {}).items()}
        results, attempts = run_checks(
            base_url,
            checks,
            {**secrets, **{f"header:{k}": v for k, v in headers.items()}},
            float(props.get("deadline_s") or 90.0),
            float(props.get("timeout_s") or 5.0),
            str(props.get("ca_pem") or "") or None,
            headers,
        )
        window = props.get("window") or None
        if not all(o.ok for o in results.values()):
            message = failure_message(base_url, checks, results, attempts)
            if window and is_open(window.get("docker_host") or None, window):
                message += WINDOW_LEFT_OPEN
            raise RuntimeError(message)
        # The runbook's last step: maintenance off, once the new release passed.
        closed = close_window(window.get("docker_host") or None, window) if window else False
        released = _prune(props.get("prune") or None, olds)
        checked_at = datetime.now(UTC).isoformat(timespec="seconds")
        return {
            "base_url": base_url,
            "checks": list(props["checks"]),
            "deadline_s": props.get("deadline_s"),
            "timeout_s": props.get("timeout_s"),
            "passed": [c.name for c in checks],
            "latencies": {c.name: results[c.name].latency_ms for c in checks},
            "attempts": attempts,
            "checked_at": checked_at,
            "run": f"ran at {checked_at}",
            "window_closed": checked_at if closed else "",
            **released,
        }


def _prune(prune_in: Mapping[str, Any] | None, olds: Mapping[str, Any]) -> dict[str, Any]:
    """The release passed: older images go, the previous release's stay (``prune.py``)."""
    if not prune_in:
        return {}
    current, previous, removed = prune(
        prune_in.get("docker_host") or None,
        dict(prune_in.get("images") or {}),
        dict(olds.get("released_images") or {}),
        dict(olds.get("previous_images") or {}),
    )
    return {"released_images": current, "previous_images": previous, "pruned": removed}


def smoke_inputs(spec: SmokeSpec) -> tuple[list[dict[str, Any]], dict[str, pulumi.Output[str]]]:
    """Checks and secrets map for a ``SmokeSpec``: each bearer is keyed by its check's name."""
    checks: list[dict[str, Any]] = []
    secrets: dict[str, pulumi.Output[str]] = {}
    for c in spec.checks:
        if c.bearer is not None:
            secrets[c.name] = c.bearer
        checks.append(
            {
                "name": c.name,
                "method": c.method,
                "path": c.path,
                "expect_status": c.expect_status,
                "expect_json": dict(c.expect_json),
                "bearer_key": c.name if c.bearer is not None else None,
                "timeout_s": c.timeout_s,
            }
        )
    return checks, secrets


@dataclass(frozen=True)
class SmokeTestArgs:
    """Inputs of a ``SmokeTest``; ``secrets`` (the bearer tokens) is secret."""

    base_url: pulumi.Input[str]
    checks: Sequence[Mapping[str, Any]]
    secrets: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    deadline_s: float = 90.0
    timeout_s: float = 5.0
    ca_pem: pulumi.Input[str] = ""
    """A CA to trust instead of the system's (the edge's internal CA)."""
    headers: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Secret headers every check sends (the maintenance window's token)."""
    window: Mapping[str, Any] | None = None
    """The edge (docker_host, name, labels) whose maintenance window closes once checks pass."""
    prune: Mapping[str, Any] | None = None
    """``{docker_host, images: {service: ref}}``: older images pruned once checks pass."""


def smoke_args(
    spec: SmokeSpec,
    base_url: pulumi.Input[str],
    ca_pem: pulumi.Input[str] = "",
    headers: Mapping[str, pulumi.Input[str]] | None = None,
    window: Mapping[str, Any] | None = None,
    prune_images: Mapping[str, Any] | None = None,
) -> SmokeTestArgs:
    """A ``SmokeTest``'s inputs for an app's ``SmokeSpec`` against its public entry point."""
    checks, secrets = smoke_inputs(spec)
    return SmokeTestArgs(
        base_url=base_url,
        checks=checks,
        secrets=secrets,
        deadline_s=spec.deadline_s,
        timeout_s=spec.timeout_s,
        ca_pem=ca_pem,
        headers=dict(headers or {}),
        window=window,
        prune=prune_images,
    )


class SmokeTest(Resource, module="ops", name="SmokeTest"):
    """Smoke checks against the public entry point, run on every ``pulumi up``."""

    passed: pulumi.Output[list[str]]
    latencies: pulumi.Output[dict[str, float]]
    checked_at: pulumi.Output[str]
    run: pulumi.Output[str]

    def __init__(
        self, name: str, args: SmokeTestArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        props: dict[str, Any] = {
            "base_url": args.base_url,
            "checks": [dict(c) for c in args.checks],
            "secrets": pulumi.Output.secret(dict(args.secrets)),
            "deadline_s": args.deadline_s,
            "timeout_s": args.timeout_s,
            "ca_pem": args.ca_pem,
            "headers": pulumi.Output.secret(dict(args.headers)) if args.headers else {},
            "window": dict(args.window) if args.window else None,
            "prune": dict(args.prune) if args.prune else None,
            "run": RUN_NOTE,
            "passed": None,
            "latencies": None,
            "checked_at": None,
            "window_closed": None,
            "released_images": None,
            "previous_images": None,
            "pruned": None,
        }
        super().__init__(SmokeTestProvider(), name, props, opts)
