"""What each policy of the pack checks, as plain functions of resources' inputs.

The pack (``policy/pack.py``) hands these functions a resource's inputs as plain dicts and lists,
with an input the preview cannot know yet as ``UNKNOWN`` and an input the engine sent as a secret
as ``SecretText``. They return the problems found, one sentence each, and never raise on shapes
they do not know: a policy that cannot tell says nothing rather than guess.

Which resources they read:
- appstack's own Docker resources (dynamic providers, ``components/providers/``): containers
  (``pulumi-python:dynamic/docker:Container``: ``name``, ``image``, ``env``, ``user``, ``ports``,
  ``memory_mb``, ``cpus``, ``read_only``, ``security_opt``, ``labels``) and volumes;
- pulumi-kubernetes resources: the pod template of every workload kind, Services, Ingresses and
  PersistentVolumeClaims (inputs in the API's camelCase).

Environments: a stack is ``prod`` when its name matches one of ``prodStacks`` (glob patterns,
default ``prod`` and ``*-prod``), ``dev`` when it matches ``devStacks`` (default ``dev`` and
``*-dev``), else ``staging``. The stack's name is the one every resource's URN carries, so the
repository's stacks (``dev``, ``engramia-dev``, ``staging``, ``prod``, ``engramia-prod``) are
classified as their ``appstack:environment`` says; a stack named otherwise is listed in the
policy configuration (``--policy-pack-config``).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from components.providers.runner import looks_secret

DOCKER_CONTAINER = "pulumi-python:dynamic/docker:Container"
DOCKER_VOLUME = "pulumi-python:dynamic/docker:Volume"
K8S_SERVICE = "kubernetes:core/v1:Service"
K8S_INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
K8S_PVC = "kubernetes:core/v1:PersistentVolumeClaim"
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "kubernetes:core/v1:Pod": ("spec",),
}
"""Where each Kubernetes workload kind keeps its pod spec."""
SERVICE_LABEL = "appstack.service"
EDGE_SERVICE = "caddy"
"""The edge proxy's service label on Docker: the one container that may publish a port."""
DEFAULT_PROD_STACKS = ("prod", "*-prod")
DEFAULT_DEV_STACKS = ("dev", "*-dev")
WRITABLE_ROOT = ("qdrant", "minio")
"""Services whose spec keeps a writable root (Haven's Qdrant and MinIO: components/apps/haven.py,
``read_only_root=False``); every other service's spec asks for a read-only root."""
EXPOSING_SERVICE_TYPES = ("NodePort", "LoadBalancer")


class _Unknown:
    """An input the preview cannot know yet (it comes from a resource not yet created)."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


class SecretText(str):
    """A string input the engine sent as a secret (``Output.secret``, ``--secret`` config)."""

    __slots__ = ()


def known(value: Any) -> bool:
    """Whether the preview knows ``value``."""
    return value is not UNKNOWN


def stack_of(urn: str) -> str:
    """The stack name in ``urn:pulumi:<stack>::<project>::<type>::<name>``."""
    return urn.split("::", 1)[0].split(":")[-1]


def name_of(urn: str) -> str:
    """The resource's logical name, the last part of its URN."""
    return urn.rsplit("::", 1)[-1]


def environment(urn: str, config: Mapping[str, Any] | None) -> str:
    """``prod``, ``dev`` or ``staging`` for the stack of ``urn`` (see the module's docstring)."""
    stack = stack_of(urn)
    config = config or {}
    prod = config.get("prodStacks") or DEFAULT_PROD_STACKS
    dev = config.get("devStacks") or DEFAULT_DEV_STACKS
    if any(fnmatch.fnmatchcase(stack, str(p)) for p in prod):
        return "prod"
    if any(fnmatch.fnmatchcase(stack, str(p)) for p in dev):
        return "dev"
    return "staging"


def _get(value: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def pod_spec(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec of a Kubernetes workload (None for anything else)."""
    path = POD_SPEC_PATHS.get(resource_type)
    spec = _get(props, *path) if path else None
    return spec if isinstance(spec, Mapping) else None


def k8s_containers(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every container of a pod spec, init containers included."""
    for key in ("initContainers", "containers"):
        for container in _list(spec.get(key)):
            if isinstance(container, Mapping):
                yield container


def _where(container: Mapping[str, Any]) -> str:
    name = container.get("name")
    return f"container {name}" if known(name) and name else "a container"


# -- images ---------------------------------------------------------------------------------------


def images(resource_type: str, props: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(where, image reference) of every container a resource runs."""
    if resource_type == DOCKER_CONTAINER:
        return [(f"container {props.get('name')}", props.get("image"))]
    spec = pod_spec(resource_type, props)
    if spec is None:
        return []
    return [(_where(c), c.get("image")) for c in k8s_containers(spec)]


def tag_problem(image: Any) -> str | None:
    """Why ``image`` is not pinned to a version (None: pinned by tag or digest, or not known)."""
    if not known(image) or not isinstance(image, str):
        return None
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag (it means :latest, whatever that is today)"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} uses the moving tag :latest"
    return None


def digest_problem(image: Any) -> str | None:
    """Why ``image`` is not pinned by digest (None: it is, or not known)."""
    if not known(image) or not isinstance(image, str) or "@sha256:" in image:
        return None
    return f"image {image!r} is not pinned by digest (@sha256:...)"


# -- resources ------------------------------------------------------------------------------------


def limit_problems(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Containers without a memory or CPU limit."""
    problems: list[str] = []
    if resource_type == DOCKER_CONTAINER:
        where = f"container {props.get('name')}"
        for key in ("memory_mb", "cpus"):
            value = props.get(key)
            if known(value) and not (isinstance(value, int | float) and value > 0):
                problems.append(f"{where} has no {key} limit (got {value!r})")
        return problems
    spec = pod_spec(resource_type, props)
    for container in k8s_containers(spec) if spec is not None else ():
        limits = _get(container, "resources", "limits")
        if not known(limits):
            continue
        given = limits if isinstance(limits, Mapping) else {}
        missing = [k for k in ("memory", "cpu") if not given.get(k)]
        if missing:
            problems.append(f"{_where(container)} has no {' or '.join(missing)} limit")
    return problems


# -- hardening ------------------------------------------------------------------------------------


def _root_user(user: Any) -> bool:
    if not known(user) or user in (None, ""):
        return False
    return str(user).split(":", 1)[0] in ("0", "root")


def hardening_problems(
    resource_type: str, props: Mapping[str, Any], writable: Sequence[str] = WRITABLE_ROOT
) -> list[str]:
    """Root users and writable roots where the service's spec says otherwise."""
    problems: list[str] = []
    if resource_type == DOCKER_CONTAINER:
        where = f"container {props.get('name')}"
        service = _get(props, "labels", SERVICE_LABEL)
        if _root_user(props.get("user")):
            problems.append(f"{where} runs as root (user {props.get('user')!r})")
        read_only = props.get("read_only")
        if known(read_only) and read_only is not True and service not in writable:
            problems.append(f"{where} has a writable root file system (read_only is not true)")
        options = props.get("security_opt")
        if known(options) and "no-new-privileges:true" not in _list(options):
            problems.append(f"{where} lacks security_opt no-new-privileges:true")
        return problems
    spec = pod_spec(resource_type, props)
    if spec is None:
        return problems
    pod_context = spec.get("securityContext")
    pod_non_root = _get(pod_context, "runAsNonRoot")
    pod_user = _get(pod_context, "runAsUser")
    for container in k8s_containers(spec):
        context = container.get("securityContext")
        if not known(context) or not known(pod_context):
            continue
        non_root = _get(context, "runAsNonRoot")
        user = _get(context, "runAsUser")
        user = pod_user if user is None else user
        if user == 0 or (non_root is not True and pod_non_root is not True):
            problems.append(f"{_where(container)} may run as root (runAsNonRoot is not true)")
        read_only = _get(context, "readOnlyRootFilesystem")
        if known(read_only) and read_only is not True and container.get("name") not in writable:
            problems.append(f"{_where(container)} has a writable root (readOnlyRootFilesystem)")
    return problems


# -- secrets --------------------------------------------------------------------------------------


NOT_SECRET = ("ENGRAMIA_RATE_LIMIT_PER_KEY",)
"""Names ``looks_secret`` takes for secrets that are not: Engramia's rate limit per API key is
an integer of requests per minute (DESIGN.md). The policy's ``notSecret`` config replaces it."""


def _carries_secret(key: str, not_secret: Sequence[str]) -> bool:
    # A *_FILE variable holds the path of a secret file, not the secret.
    return looks_secret(key) and not key.upper().endswith("_FILE") and key not in not_secret


def secret_env_problems(
    resource_type: str, props: Mapping[str, Any], not_secret: Sequence[str] = NOT_SECRET
) -> list[str]:
    """Secret-looking variables (``looks_secret``) fed from a plain value.

    Docker: the value must reach the container as a secret input (the engine marks it) or as a
    secret file (``secret_files``, read through ``<KEY>_FILE``). Kubernetes: from a Secret
    (``valueFrom.secretKeyRef``), never a literal ``value`` in the pod template, which anyone
    who can read the Deployment reads, secret input or not.
    """
    problems: list[str] = []
    if resource_type == DOCKER_CONTAINER:
        env = props.get("env")
        if not isinstance(env, Mapping):
            return problems
        for key, value in sorted(env.items()):
            if not _carries_secret(str(key), not_secret) or not known(value) or value in (None, ""):
                continue
            if not isinstance(value, SecretText):
                where = f"container {props.get('name')}"
                problems.append(f"{where}: {key} is set from a plain (non-secret) value")
        return problems
    spec = pod_spec(resource_type, props)
    for container in k8s_containers(spec) if spec is not None else ():
        for var in _list(container.get("env")):
            name = str(var.get("name", "")) if isinstance(var, Mapping) else ""
            if not _carries_secret(name, not_secret):
                continue
            if var.get("value") not in (None, ""):
                problems.append(
                    f"{_where(container)}: {var.get('name')} is a literal value in the pod "
                    "template, not valueFrom.secretKeyRef"
                )
    return problems


# -- data -----------------------------------------------------------------------------------------


def is_data_volume(resource_type: str) -> bool:
    """Docker volumes and PersistentVolumeClaims hold the stack's data."""
    return resource_type in (DOCKER_VOLUME, K8S_PVC)


def exposing_service_type(resource_type: str, props: Mapping[str, Any]) -> str | None:
    """``NodePort`` or ``LoadBalancer`` when a Service is one (None otherwise)."""
    if resource_type != K8S_SERVICE:
        return None
    kind = _get(props, "spec", "type")
    return kind if known(kind) and kind in EXPOSING_SERVICE_TYPES else None


# -- the stack's public entry ----------------------------------------------------------------------


def _public_port(port: Any) -> bool:
    """A published port any host can reach: bound to a non-loopback address (or to all)."""
    if not isinstance(port, Mapping):
        return True
    ip = port.get("ip")
    if not known(ip):
        return True
    if not ip:
        return True
    try:
        return not ipaddress.ip_address(str(ip)).is_loopback
    except ValueError:
        return True


def public_entry_problems(resources: Sequence[tuple[str, str, Mapping[str, Any]]]) -> list[str]:
    """Problems with the stack's public entry; ``resources`` are (type, urn, inputs).

    Docker: the edge (service label ``caddy``) is the only container that publishes a port, and
    there is exactly one; a port another container binds to a loopback address only (Prometheus's
    ``monitoring.prometheusPort``) reaches no other host and is no entry. Kubernetes: exactly one
    Ingress, and no Service of type LoadBalancer (an entry beside the Ingress). A NodePort opens a
    port on the nodes, which outside prod is a common way in to a local cluster: it is refused on
    prod stacks by its own policy (``no-exposing-services-on-prod``).
    A stack with no container and no workload has no entry to check.
    """
    problems: list[str] = []
    containers = [(urn, p) for t, urn, p in resources if t == DOCKER_CONTAINER]
    if containers:
        entries = []
        for urn, props in containers:
            ports = props.get("ports")
            ports = _list(ports) if known(ports) else [UNKNOWN]
            edge = _get(props, "labels", SERVICE_LABEL) == EDGE_SERVICE
            public = [p for p in ports if _public_port(p)]
            if edge and ports:
                entries.append(urn)
            elif public:
                entries.append(urn)
                problems.append(
                    f"{name_of(urn)} publishes a port and is not the edge: only the edge "
                    f"({SERVICE_LABEL}={EDGE_SERVICE}) may"
                )
        if len(entries) != 1:
            names = ", ".join(name_of(u) for u in entries) or "none"
            count = len(entries)
            problems.append(f"the stack has {count} public entries on Docker ({names}), not 1")
    workloads = [urn for t, urn, _ in resources if t in POD_SPEC_PATHS]
    ingresses = [urn for t, urn, _ in resources if t == K8S_INGRESS]
    for t, urn, props in resources:
        if exposing_service_type(t, props) == "LoadBalancer":
            problems.append(
                f"Service {name_of(urn)} is a LoadBalancer: an entry beside the Ingress"
            )
    if workloads and len(ingresses) != 1:
        names = ", ".join(name_of(u) for u in ingresses) or "none"
        problems.append(f"the stack has {len(ingresses)} Ingresses ({names}), not 1")
    return problems
