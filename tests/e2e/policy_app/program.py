"""Resources shaped as appstack makes them, one of them bent by ``policy-app:case``.

Previews only (nothing is created): the test reads what the policy pack says about them.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.providers import engine

config = pulumi.Config()
case = config.get("case") or "good"
platform = config.get("platform") or "docker"
token = config.require_secret("apiToken")
PINNED = "appstack.local/haven-gateway:0.1.0"


def container(name: str, service: str, **override: Any) -> engine.Container:
    """A container with every input appstack's Docker platform gives one."""
    props: dict[str, Any] = {
        "name": f"{pulumi.get_stack()}-{name}",
        "image": PINNED,
        "image_id": None,
        "command": [],
        "env": pulumi.Output.secret({"LOG_LEVEL": "info", "API_TOKEN": token}),
        "user": "1000",
        "networks": [],
        "ports": [],
        "healthcheck": None,
        "restart": "unless-stopped",
        "memory_mb": 256,
        "cpus": 0.5,
        "read_only": True,
        "tmpfs": {},
        "security_opt": ["no-new-privileges:true"],
        "cap_add": [],
        "mounts": [],
        "labels": {"appstack.stack": pulumi.get_stack(), "appstack.service": service},
        "extra_hosts": {},
        "stop_timeout_s": 30,
        "docker_host": None,
        "rollout": "start-first",
        "wait_timeout_s": 60,
        "grace_s": 2,
    }
    props.update(override)
    return engine.Container(name, props)


def docker() -> None:
    """An edge (the one published port), an API behind it, and a data volume."""
    data = engine.Volume(
        "data",
        volume_name=f"{pulumi.get_stack()}-data",
        labels={"appstack.stack": pulumi.get_stack()},
        # the case under test: an unprotected data volume
        opts=pulumi.ResourceOptions(protect=case != "unprotected"),
    )
    api: dict[str, Any] = {"mounts": [{"source": data.name, "target": "/data"}]}
    if case == "second-entry":
        api["ports"] = [{"internal": 8080, "external": 18397, "ip": "0.0.0.0"}]
    if case == "plain-secret":
        api["env"] = {"LOG_LEVEL": "info", "API_TOKEN": "plain-token-value"}
    if case == "latest":
        api["image"] = "appstack.local/haven-gateway:latest"
    if case == "no-limits":
        api["memory_mb"] = 0
    if case == "root":
        api["user"] = "root"
    if case == "digest":
        api["image"] = PINNED + "@sha256:" + "0" * 64
    container("api", "api", **api)
    edge_image = api["image"] if case == "digest" else PINNED
    container(
        "edge",
        "caddy",
        image=edge_image,
        env={"XDG_DATA_HOME": "/data"},
        ports=[{"internal": 8080, "external": 18396, "ip": "127.0.0.1"}],
    )


def kubernetes() -> None:
    """A Deployment behind a ClusterIP Service and the one Ingress, and a claim for its data."""
    provider = k8s.Provider(
        "render", kubeconfig="", render_yaml_to_directory=config.require("renderTo")
    )
    opts = pulumi.ResourceOptions(provider=provider)
    labels = {"app": "api"}
    secret = k8s.core.v1.Secret("api", string_data={"API_TOKEN": token}, opts=opts)
    env: list[dict[str, Any]] = [
        {"name": "LOG_LEVEL", "value": "info"},
        {"name": "API_TOKEN", "value_from": {"secret_key_ref": {
            "name": secret.metadata.name, "key": "API_TOKEN"}}},
    ]  # fmt: skip
    if case == "plain-secret":
        env[1] = {"name": "API_TOKEN", "value": "plain-token-value"}
    limits = {"cpu": "500m", "memory": "256Mi"}
    security: dict[str, Any] = {
        "run_as_non_root": True,
        "read_only_root_filesystem": True,
        "allow_privilege_escalation": False,
    }
    if case == "root":
        security = {"run_as_user": 0, "read_only_root_filesystem": True}
    claim = k8s.core.v1.PersistentVolumeClaim(
        "data",
        spec={"access_modes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        # the case under test: an unprotected data volume
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(protect=case != "unprotected")
        ),
    )
    k8s.apps.v1.Deployment(
        "api",
        spec={
            "replicas": 2,
            "selector": {"match_labels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{
                        "name": "api",
                        "image": "appstack.local/haven-gateway:latest" if case == "latest" else PINNED,
                        "env": env,
                        "resources": {} if case == "no-limits" else {"limits": limits, "requests": limits},
                        "security_context": security,
                        "volume_mounts": [{"name": "data", "mount_path": "/data"}],
                    }],
                    "volumes": [{"name": "data", "persistent_volume_claim": {
                        "claim_name": claim.metadata.name}}],
                },
            },
        },
        opts=opts,
    )  # fmt: skip
    service_type = {"nodeport": "NodePort", "loadbalancer": "LoadBalancer"}.get(case, "ClusterIP")
    service = k8s.core.v1.Service(
        "api",
        spec={
            "type": service_type,
            "selector": labels,
            "ports": [{"port": 80, "target_port": 8080}],
        },
        opts=opts,
    )
    k8s.networking.v1.Ingress(
        "entry",
        spec={"rules": [{"http": {"paths": [{"path": "/", "path_type": "Prefix", "backend": {
            "service": {"name": service.metadata.name, "port": {"number": 80}}}}]}}]},
        opts=opts,
    )  # fmt: skip


if platform == "kubernetes":
    kubernetes()
else:
    docker()
