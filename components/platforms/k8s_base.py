"""What the parts of the Kubernetes platform share: labels, names, options and the stack's state.

``KubernetesApp`` (components/platforms/kubernetes.py) is built from one part per concern:
workloads (k8s_workloads.py), networking (k8s_networking.py), storage (k8s_storage.py) and
monitoring (k8s_monitoring.py, k8s_monitoring_wiring.py). Each part is a mixin over
``KubernetesParts``, which declares what they all read.
"""

from __future__ import annotations

from typing import Any, cast

import pulumi
import pulumi_kubernetes as k8s

from components.settings import KubernetesSettings, Settings
from components.spec import AppSpec, ServiceSpec

NAME_LABEL = "app.kubernetes.io/name"
SERVICE_UID = 10001
"""uid of app services (Haven's images run as any uid)."""
DATASTORE_UIDS = {"postgres": 999, "qdrant": 1000, "minio": 1000}
"""The uid each official data-store image owns its data as (fsGroup too)."""
INIT_TASK_COMPONENT = "init-task"
BACKUPS_CLAIM = "backups"
TMPFS_SIZE = "64Mi"


class KubernetesParts:
    """The state every part of a ``KubernetesApp`` reads, and the helpers they share."""

    _name: str
    _settings: Settings
    _k: KubernetesSettings
    _app: AppSpec
    _ns_name: str
    _provider: k8s.Provider
    ns: pulumi.Output[str]
    _secrets: dict[str, Any]
    _claims: dict[str, Any]
    _policies: list[pulumi.CustomResource]
    workloads: dict[str, pulumi.CustomResource]

    def _opts(self, **kwargs: Any) -> pulumi.ResourceOptions:
        # Every part is mixed into the component resource itself.
        parent = cast(pulumi.Resource, self)
        return pulumi.ResourceOptions(parent=parent, provider=self._provider, **kwargs)

    def _labels(self, name: str | None = None) -> dict[str, str]:
        labels = {
            "app.kubernetes.io/part-of": self._app.name,
            "app.kubernetes.io/instance": self._ns_name,
            "app.kubernetes.io/managed-by": "pulumi",
        }
        if name:
            labels[NAME_LABEL] = name
        return labels

    def _meta(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "namespace": self.ns, "labels": self._labels(name), **extra}

    def _uid(self, svc: ServiceSpec) -> int:
        if svc.user and svc.user.split(":", 1)[0].isdigit():
            return int(svc.user.split(":", 1)[0])
        return DATASTORE_UIDS.get(svc.name, SERVICE_UID)

    def _owner(self, image: pulumi.Input[str]) -> ServiceSpec | None:
        return next((s for s in self._app.services if s.image == image), None)
