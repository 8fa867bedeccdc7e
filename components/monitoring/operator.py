"""The prometheus-operator's view of the same monitoring: PrometheusRule and ServiceMonitor specs.

Rendered from the rule files and scrape jobs the plain Prometheus reads (``config``, ``targets``),
never from a copy; declared only when the cluster serves the ``monitoring.coreos.com/v1`` CRDs
(``appstack:monitoring.operator``: ``auto`` asks the API server's discovery at preview).
"""

from __future__ import annotations

from typing import Any

import yaml

from components.monitoring.targets import Scrape
from components.providers.k8s_runner import KubectlError, kubectl
from components.settings import NS, ConfigError, Settings

GROUP = "monitoring.coreos.com"
API_VERSION = f"{GROUP}/v1"
RESOURCES = ("prometheusrules", "servicemonitors")
SCRAPE_LABEL = "appstack.io/scrape"
"""Label of the headless Service in front of a scrape job's pods (its value: the job)."""
METRICS_PORT_NAME = "metrics"


def served_resources(context: str | None, namespace: str) -> set[str]:
    """The resources of ``monitoring.coreos.com`` the API server serves (discovery, no cache)."""
    proc = kubectl(namespace, context, "api-resources", f"--api-group={GROUP}", "-o", "name")
    return {line.split(".", 1)[0] for line in proc.stdout.split() if line.endswith(f".{GROUP}")}


def operator_wanted(settings: Settings) -> bool:
    """Whether to declare PrometheusRule/ServiceMonitor objects; raise naming the key when
    ``true`` meets a cluster without the CRDs or ``auto`` cannot ask it."""
    m, k = settings.monitoring, settings.kubernetes
    if not m.enabled or k is None or m.operator == "false":
        return False
    if k.render_to is not None:
        # No cluster to ask: render them only when asked for explicitly.
        return m.operator == "true"
    key = f"{NS}:monitoring.operator"
    try:
        served = served_resources(k.kubeconfig_context, k.namespace)
    except KubectlError as exc:
        msg = f"{key}: {m.operator}: cannot ask the cluster for {GROUP} ({exc}); set true or false"
        raise ConfigError(msg) from exc
    present = all(r in served for r in RESOURCES)
    if m.operator == "true" and not present:
        missing = ", ".join(f"{r}.{GROUP}" for r in RESOURCES if r not in served)
        msg = f"{key}: true, but the cluster serves no {missing} (install the operator's CRDs)"
        raise ConfigError(msg)
    return present


def rule_groups(text: str) -> list[dict[str, Any]]:
    """The rule groups of one rule file, as a PrometheusRule's ``spec.groups``."""
    return list(yaml.safe_load(text)["groups"])


def service_monitor_spec(
    job: Scrape, interval: str, namespace: str, credentials_secret: str | None
) -> dict[str, Any]:
    """A ServiceMonitor for one job: its headless Service's ``metrics`` port, the same path,
    labels and bearer credential (from the Secret holding Prometheus' files)."""
    relabel = [{"targetLabel": "job", "replacement": job.job}]
    relabel += [{"targetLabel": k, "replacement": v} for k, v in job.labels]
    endpoint: dict[str, Any] = {
        "port": METRICS_PORT_NAME,
        "path": job.path,
        "interval": interval,
        "relabelings": relabel,
    }
    if job.credential:
        if credentials_secret is None:
            msg = f"monitoring: job {job.job} needs a credential but there is no Secret for it"
            raise ValueError(msg)
        ref = {"name": credentials_secret, "key": job.credential}
        endpoint["authorization"] = {"type": "Bearer", "credentials": ref}
    return {
        "selector": {"matchLabels": {SCRAPE_LABEL: job.job}},
        "namespaceSelector": {"matchNames": [namespace]},
        "endpoints": [endpoint],
    }
