"""What the monitoring containers read: Prometheus' scrape config, its rule files, Alertmanager's
route, postgres-exporter's queries and the blackbox exporter's probe modules. Pure functions of the
stack's shape and settings, rendered as text (JSON is YAML, so the configs are ``json.dumps``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RULES_DIR = Path(__file__).parent / "rules"
"""Rule files shipped with the library; tests/unit/alert_rules/ holds their promtool tests."""
APP_RULES: dict[str, tuple[str, ...]] = {
    "haven": ("edge.yml", "haven.yml", "storage.yml", "targets.yml"),
    "engramia": ("edge.yml", "engramia.yml", "storage.yml", "targets.yml"),
}
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
POSTGRES_EXPORTER_PORT = 9187
BLACKBOX_PORT = 9115
CONFIG_DIR = "/etc/appstack"
"""A tmpfs in each monitoring container: its command writes the files there from its env."""
SECRETS_DIR = "/run/secrets"
"""Credentials: the container's secret files (``components/providers/container.py``), not env."""
MINIO_METRICS_PATH = "/minio/v2/metrics/cluster"
DEEP_HEALTH_PATH = "/v1/health/deep"
# MinIO's own `mc admin prometheus generate` issues a bearer token valid for 100 years.
MINIO_TOKEN_YEARS = 100


@dataclass(frozen=True)
class Target:
    """One scrape job: where, and with which bearer credentials file (if any)."""

    job: str
    address: str
    path: str = "/metrics"
    labels: tuple[tuple[str, str], ...] = ()
    credentials_file: str | None = None
    dns: bool = False
    """Scrape every address the host name resolves to (a headless Service: each replica), not
    the name itself."""


def rule_files(app: str, stalled_after: str) -> dict[str, str]:
    """The app's rule files by name; Haven's stall alert takes the configured window as `for`."""
    files: dict[str, str] = {}
    for name in APP_RULES[app]:
        text = (RULES_DIR / name).read_text()
        if name == "haven.yml":
            doc = yaml.safe_load(text)
            for group in doc["groups"]:
                for rule in group["rules"]:
                    if rule.get("alert") == "HavenChunksStalled":
                        rule["for"] = stalled_after
            text = json.dumps(doc, indent=1)
        files[name] = text
    return files


def prometheus_yml(
    targets: list[Target], rule_names: list[str], scrape_interval: str, stack: str, app: str
) -> str:
    """Prometheus' config: the scrape jobs, the rule files, and Alertmanager."""
    jobs: list[dict[str, Any]] = [
        {
            "job_name": "prometheus",
            "static_configs": [{"targets": [f"localhost:{PROMETHEUS_PORT}"]}],
        }
    ]
    for t in targets:
        job: dict[str, Any] = {"job_name": t.job, "metrics_path": t.path}
        if t.dns:
            host, _, port = t.address.rpartition(":")
            job["dns_sd_configs"] = [{"names": [host], "type": "A", "port": int(port)}]
            # dns_sd has no labels of its own: relabelling sets them on every target
            job["relabel_configs"] = [{"target_label": k, "replacement": v} for k, v in t.labels]
        else:
            job["static_configs"] = [{"targets": [t.address], "labels": dict(t.labels)}]
        if t.credentials_file:
            job["authorization"] = {"type": "Bearer", "credentials_file": t.credentials_file}
        jobs.append(job)
    doc = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": scrape_interval,
            "external_labels": {"stack": stack, "app": app},
        },
        "rule_files": [f"{CONFIG_DIR}/rules/{n}" for n in rule_names],
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"alertmanager:{ALERTMANAGER_PORT}"]}]}
            ]
        },
        "scrape_configs": jobs,
    }
    return json.dumps(doc, indent=1)


def blackbox_job(api_address: str, scrape_interval: str) -> list[dict[str, Any]]:
    """Two probes of Engramia's deep health by the blackbox exporter (see rules/engramia.yml)."""
    jobs = []
    for module in ("engramia_deep_error", "engramia_deep_degraded"):
        jobs.append(
            {
                "job_name": module,
                "metrics_path": "/probe",
                "params": {"module": [module]},
                # deep health takes seconds (its LLM probes give up slowly): give it room
                "scrape_interval": "30s" if scrape_interval in ("5s", "10s", "15s") else None,
                "scrape_timeout": "25s",
                "static_configs": [
                    {
                        "targets": [f"http://{api_address}{DEEP_HEALTH_PATH}"],
                        "labels": {"probe": module},
                    }
                ],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "target_label": "instance"},
                    {"target_label": "__address__", "replacement": f"blackbox:{BLACKBOX_PORT}"},
                ],
            }
        )
    return [{k: v for k, v in j.items() if v is not None} for j in jobs]


def with_jobs(prometheus: str, extra: list[dict[str, Any]]) -> str:
    """``prometheus_yml``'s text with more scrape jobs appended."""
    doc = json.loads(prometheus)
    doc["scrape_configs"].extend(extra)
    return json.dumps(doc, indent=1)


def blackbox_yml(key_file: str) -> str:
    """Probe modules: `error` fails on a non-200 or a top-level "error"; `degraded` on not "ok"."""
    http = {
        "method": "GET",
        "valid_status_codes": [200],
        "preferred_ip_protocol": "ip4",
        # the client config is inline in the blackbox exporter's http prober
        "authorization": {"type": "Bearer", "credentials_file": key_file},
    }
    # The answer's first field is its overall status (Engramia: {"status": ..., "checks": ...}).
    modules = {
        "engramia_deep_error": {
            "prober": "http",
            "timeout": "20s",
            "http": {**http, "fail_if_body_matches_regexp": ['^\\{\\s*"status"\\s*:\\s*"error"']},
        },
        "engramia_deep_degraded": {
            "prober": "http",
            "timeout": "20s",
            "http": {**http, "fail_if_body_not_matches_regexp": ['^\\{\\s*"status"\\s*:\\s*"ok"']},
        },
    }
    return json.dumps({"modules": modules}, indent=1)


def alertmanager_yml() -> str:
    """One route to a receiver with no integrations: alerts are held and shown, not sent.

    Operators add their receivers (webhook, mail) here; nothing leaves the stack by default.
    """
    doc = {
        "route": {
            "receiver": "default",
            "group_by": ["alertname", "app", "service"],
            "group_wait": "10s",
            "repeat_interval": "4h",
        },
        "receivers": [{"name": "default"}],
    }
    return json.dumps(doc, indent=1)


def queries_yml(app: str, budget_bytes: int) -> str:
    """postgres-exporter's custom queries: the database against its budget; Haven's chunk queue."""
    queries: dict[str, Any] = {
        "appstack_database": {
            "query": (
                "SELECT current_database() AS datname, "
                "pg_database_size(current_database())::float AS size_bytes, "
                f"{int(budget_bytes)}::float AS budget_bytes"
            ),
            "metrics": [
                {"datname": {"usage": "LABEL", "description": "database"}},
                {"size_bytes": {"usage": "GAUGE", "description": "pg_database_size"}},
                {
                    "budget_bytes": {
                        "usage": "GAUGE",
                        "description": "appstack:monitoring.storageBudget",
                    }
                },
            ],
        }
    }
    if app == "haven":
        queries["haven_chunks"] = {
            "query": (
                "SELECT count(*) FILTER (WHERE embedding_status = 'processing')::float "
                "AS processing, "
                "count(*) FILTER (WHERE embedding_status = 'failed')::float AS failed, "
                "coalesce(min(id) FILTER (WHERE embedding_status = 'processing'), 0)::float "
                "AS processing_min_id FROM chunks"
            ),
            "metrics": [
                {"processing": {"usage": "GAUGE", "description": "chunks in processing"}},
                {"failed": {"usage": "GAUGE", "description": "chunks that failed to embed"}},
                {
                    "processing_min_id": {
                        "usage": "GAUGE",
                        "description": "oldest chunk in processing",
                    }
                },
            ],
        }
    return json.dumps(queries, indent=1)


def minio_token(access_key: str, secret_key: str, now: float | None = None) -> str:
    """The bearer token MinIO accepts on its metrics path: what `mc admin prometheus generate`
    makes (HS512 JWT over the access key, signed with the secret key)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    issued = int(time.time() if now is None else now)
    header = b64(json.dumps({"alg": "HS512", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {
        "exp": issued + MINIO_TOKEN_YEARS * 365 * 86400,
        "sub": access_key,
        "iss": "prometheus",
    }
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret_key.encode(), f"{header}.{payload}".encode(), hashlib.sha512)
    return f"{header}.{payload}.{b64(signature.digest())}"


def writer_command(files: dict[str, str], argv: list[str]) -> list[str]:
    """``sh -c``: write each env var to its file on the tmpfs, then exec ``argv`` without them.

    ``files`` maps a path to the env var holding its content (configuration, no credential:
    those are secret files already); the variables are removed from the server's environment.
    """
    lines = ["set -eu", "umask 077", f"mkdir -p {CONFIG_DIR}/rules"]
    for path, var in files.items():
        lines.append(f"printf '%s' \"${var}\" > {path}")
    unset = " ".join(f"-u {v}" for v in files.values())
    quoted = " ".join(f"'{a}'" for a in argv)
    lines.append(f"exec env {unset} {quoted}")
    return ["sh", "-c", "\n".join(lines)]
