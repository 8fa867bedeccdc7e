"""Storage of the Kubernetes platform: explicitly declared, protectable PersistentVolumeClaims."""

from __future__ import annotations

from typing import Any

import pulumi_kubernetes as k8s

from components.platforms.k8s_base import BACKUPS_CLAIM, KubernetesParts


class Storage(KubernetesParts):
    """The claims of a ``KubernetesApp``: one per data volume, and one for pre-migration dumps."""

    def _claim(self, claim: str, owner: str) -> Any:
        protect = self._settings.protect_volumes
        spec: dict[str, Any] = {
            "access_modes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": self._k.storage_size}},
        }
        if self._k.storage_class:
            spec["storage_class_name"] = self._k.storage_class
        labels = {**self._labels(claim), "appstack.io/owner": owner}
        # A WaitForFirstConsumer class binds only once a pod mounts the claim: waiting for
        # "Bound" before creating that pod would never end.
        annotations = {"pulumi.com/skipAwait": "true"}
        return k8s.core.v1.PersistentVolumeClaim(
            f"{self._name}-pvc-{claim}",
            metadata={
                "name": claim,
                "namespace": self.ns,
                "labels": labels,
                "annotations": annotations,
            },
            spec=spec,
            # Data outlives the stack where settings say so: `destroy` must not take it
            # (protect), and even an unprotected delete leaves the claim (retain).
            opts=self._opts(protect=protect, retain_on_delete=protect),
        )

    def _create_claims(self) -> dict[str, Any]:
        claims = {
            f"{svc.name}-{vol.name}": self._claim(f"{svc.name}-{vol.name}", svc.name)
            for svc in self._app.services
            for vol in svc.volumes
        }
        if self._app.migration is not None:
            # Pre-migration dumps are data too.
            claims[BACKUPS_CLAIM] = self._claim(BACKUPS_CLAIM, "migration")
        return claims
