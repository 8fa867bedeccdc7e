"""A ``docker compose`` file generated from the same specs the Pulumi program deploys.

The real ``__main__.py`` runs under Pulumi mocks (``tests/unit/harness.py``), which records every
resource with its inputs. The Docker platform's engine objects translate one to one:

- ``docker:Network`` -> a compose network (``internal: true`` kept); a network a container names
  that the stack does not create (Ollama's) -> an ``external`` network;
- ``docker:Volume`` -> a compose volume (only those a container mounts);
- ``docker:Container`` -> a service named after the container's logical name (not its physical
  name, which is unique per release): image ref, command, environment, user, networks + aliases,
  published ports, health check, restart policy, memory/CPU limits, read-only root, tmpfs,
  ``cap_drop: [ALL]`` + ``cap_add``, ``security_opt``, volumes, extra hosts, stop grace period;
- a Pulumi dependency edge from one container to another -> ``depends_on`` with
  ``condition: service_healthy`` (``service_started`` when neither spec nor image has a check);
- ``docker:EdgeRoute`` (the edge proxy's runtime configuration, loaded by appstack once the
  upstream answers its health path) -> the edge container (Caddy, the only published port) runs
  Caddy's stock ``caddy reverse-proxy --from :<port> --to <upstream service>:<port>`` instead of
  ``caddy run --resume``, which would start with no configuration; Caddy's admin endpoint is off
  under that command, so its health check is the upstream's health path through the proxy (what
  the route's gate checks), and it depends on the upstream with ``service_healthy``. Same image,
  environment, volume and limits as the Pulumi side. Only a plain-HTTP edge translates;
- ``ops:OneOffTask`` (MinIO's bucket) -> a one-off service after its dependencies; compose's
  ``up --wait`` fails on an exited service nobody depends on, so the public service (the edge)
  adopts it with ``service_completed_successfully`` (in Pulumi only the smoke test waits for it);
- ``ops:Migration`` (sql-dir mode, an empty database) -> two one-off services: ``schema`` copies
  the schema directory out of the migration's source image into a volume, ``migrate`` runs its
  ``init.sql`` with ``psql`` from the client image in one transaction, only on a database without
  a ledger table (which it creates; compose re-runs one-off services on every ``up``, and
  ``init.sql`` drops Haven's tables); every container the
  migration gates depends on ``migrate`` with ``service_completed_successfully``.

Secrets are the mocks' ``generated-<name>`` values: fine for a benchmark, never for a deployment.
Every ``$`` is doubled so compose does not interpolate it.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECRET_SIG = "4dabf18193072939515e22adb298388d"  # noqa: S105 - Pulumi's secret marker
T_CONTAINER = "pulumi-python:dynamic/docker:Container"
T_NETWORK = "pulumi-python:dynamic/docker:Network"
T_VOLUME = "pulumi-python:dynamic/docker:Volume"
T_IMAGE = "pulumi-python:dynamic/docker:Image"
T_TASK = "pulumi-python:dynamic/ops:OneOffTask"
T_MIGRATION = "pulumi-python:dynamic/ops:Migration"
T_ROUTE = "pulumi-python:dynamic/docker:EdgeRoute"
T_APP = "appstack:platforms:DockerApp"
# init.sql DROPS and recreates Haven's tables: it may run on an empty database only. Compose
# re-runs one-off services on every `up`, so the command keeps a ledger table as the Pulumi
# migration does, and does nothing when it exists.
MIGRATE = (
    'if [ -n "$(psql -X -tAc "SELECT to_regclass(\'public.appstack_schema_ledger\')")" ]; then'
    " echo 'schema present: nothing to do';"
    " else psql -X -q -v ON_ERROR_STOP=1 -1 -f /schema/init.sql"
    ' -c "CREATE TABLE appstack_schema_ledger (name text PRIMARY KEY, applied_at timestamptz)"'
    " -c \"INSERT INTO appstack_schema_ledger VALUES ('init.sql', now())\"; fi"
)


def plain(value: Any) -> Any:
    """Inputs with Pulumi's secret wrappers removed and whole floats back to ints."""
    if isinstance(value, Mapping):
        if SECRET_SIG in value:
            return plain(value.get("value"))
        return {str(k): plain(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def dollar(value: Any) -> Any:
    """Escape compose interpolation: ``$`` -> ``$$`` in every string."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, Mapping):
        return {k: dollar(v) for k, v in value.items()}
    if isinstance(value, list):
        return [dollar(v) for v in value]
    return value


def seconds(value: float) -> str:
    """A compose duration."""
    return f"{float(value):g}s"


def dev_images(tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``appstack:images`` of dev's config, with the image tag of some services replaced."""
    from tests.unit.harness import stack_config

    images = {
        k: dict(v) if isinstance(v, Mapping) else v
        for k, v in stack_config("dev")["appstack:images"].items()
    }
    for svc, tag in (tags or {}).items():
        if not isinstance(images.get(svc), dict):
            msg = f"appstack:images.{svc} in Pulumi.dev.yaml is not a {{registry, repository, tag}}"
            raise ValueError(msg)
        images[svc]["tag"] = tag
    return images


def program(
    stack: str, port: int, ollama_network: str, tags: Mapping[str, str] | None = None
) -> Any:
    """The dev stack's program, run under mocks as ``stack``, public on ``port``.

    ``tags`` sets the image tag of some services (``{"gateway": "0.2.0"}``) over dev's config.
    """
    from tests.unit.harness import run

    overrides = {
        "appstack:public": {"address": "127.0.0.1", "port": port},
        "appstack:ollama": {"url": "http://ollama:11434", "network": ollama_network},
        "appstack:images": dev_images(tags),
        # the app alone, as before monitoring existed: its cost is a measurement of its own
        "appstack:monitoring": False,
    }
    return run(stack, overrides=overrides, base="dev")


def image_has_healthcheck(ref: str) -> bool | None:
    """Whether the image defines a HEALTHCHECK (None: unknown, the engine did not answer)."""
    import subprocess

    proc = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{json .Config.Healthcheck}}", ref],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() not in ("", "null")


def environment(props: dict[str, Any]) -> dict[str, str]:
    """A container's env for compose; each secret file goes back to the variable it stands for.

    Compose has no way to fill a file before the start on a remote engine either, and the bench
    compares deployments, not where a secret sits: ``X_FILE=/run/secrets/x`` becomes ``X``.
    """
    env = {str(k): str(v) for k, v in (props.get("env") or {}).items()}
    files = {f"/run/secrets/{n}": str(v) for n, v in (props.get("secret_files") or {}).items()}
    for key, path in list(env.items()):
        if key.endswith("_FILE") and path in files:
            del env[key]
            env[key.removesuffix("_FILE")] = files[path]
    return dict(sorted(env.items()))


def generate(
    prog: Any, project: str, inspect_images: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The compose document for one mocked program run, and facts about it for the report."""
    res = prog.resources
    by_urn = {r.urn: r for r in res}
    app = next(r for r in res if r.type == T_APP)
    prefix = app.name + "-"

    def short(name: str) -> str:
        return name.removeprefix(prefix)

    # The mocks' image ids are sha256(ref): map them back to the refs.
    refs = {
        "sha256:" + hashlib.sha256(r.inputs["ref"].encode()).hexdigest(): r.inputs["ref"]
        for r in res
        if r.type == T_IMAGE
    }
    nets_created = {r.inputs["name"]: plain(r.inputs) for r in res if r.type == T_NETWORK}
    vols_created = {r.inputs["name"]: plain(r.inputs) for r in res if r.type == T_VOLUME}
    containers = [r for r in res if r.type == T_CONTAINER]
    svc_of = {c.urn: short(c.inputs["name"]) for c in containers}

    networks: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    services: dict[str, Any] = {}
    healthy: dict[str, bool] = {}

    def network_key(name: str) -> str:
        if name in nets_created:
            key = short(name)
            networks[key] = {"internal": True} if nets_created[name].get("internal") else {}
            return key
        key = name
        networks[key] = {"external": True, "name": name}
        return key

    for c in containers:
        p = plain(c.inputs)
        name = svc_of[c.urn]
        svc: dict[str, Any] = {"image": p["image"], "pull_policy": "missing"}
        if p.get("command"):
            svc["command"] = list(p["command"])
        if p.get("user"):
            svc["user"] = p["user"]
        svc["environment"] = environment(p)
        svc["networks"] = {}
        for net in p["networks"]:
            key = network_key(net["name"])
            svc["networks"][key] = {"aliases": list(net["aliases"])} if net.get("aliases") else {}
        if p.get("ports"):
            svc["ports"] = [
                f"{port['ip']}:{int(port['external'])}:{int(port['internal'])}"
                for port in p["ports"]
            ]
        hc = p.get("healthcheck")
        if hc:
            svc["healthcheck"] = {
                "test": list(hc["test"]),
                "interval": seconds(hc.get("interval_s", 5)),
                "timeout": seconds(hc.get("timeout_s", 3)),
                "retries": int(hc.get("retries", 3)),
                "start_period": seconds(hc.get("start_period_s", 0)),
            }
            healthy[name] = True
        else:
            # No check in the spec: the container inherits the image's HEALTHCHECK, if any.
            healthy[name] = bool(inspect_images and image_has_healthcheck(p["image"]))
        svc["restart"] = p.get("restart") or "unless-stopped"
        if p.get("memory_mb"):
            svc["mem_limit"] = f"{int(p['memory_mb'])}m"
        if p.get("cpus"):
            svc["cpus"] = float(p["cpus"])
        svc["read_only"] = bool(p.get("read_only"))
        if p.get("tmpfs"):
            svc["tmpfs"] = [f"{path}:{opts}" for path, opts in p["tmpfs"].items()]
        svc["cap_drop"] = ["ALL"]
        if p.get("cap_add"):
            svc["cap_add"] = list(p["cap_add"])
        if p.get("security_opt"):
            svc["security_opt"] = list(p["security_opt"])
        if p.get("mounts"):
            svc["volumes"] = []
            for m in p["mounts"]:
                key = short(m["source"]) if m["source"] in vols_created else m["source"]
                volumes[key] = {} if m["source"] in vols_created else {"external": True}
                svc["volumes"].append(f"{key}:{m['target']}")
        if p.get("extra_hosts"):
            svc["extra_hosts"] = [f"{h}:{ip}" for h, ip in p["extra_hosts"].items()]
        if p.get("stop_timeout_s"):
            svc["stop_grace_period"] = seconds(p["stop_timeout_s"])
        svc["labels"] = {"appstack.bench": project, "appstack.service": name}
        services[name] = svc

    # Edges between containers, and to the one-off tasks.
    gated_by_migration: list[str] = []
    for c in containers:
        name = svc_of[c.urn]
        deps: dict[str, Any] = {}
        for dep in c.dependencies:
            target = by_urn.get(dep)
            if target is None:
                continue
            if target.type == T_CONTAINER:
                other = svc_of[target.urn]
                cond = "service_healthy" if healthy[other] else "service_started"
                deps[other] = {"condition": cond}
            elif target.type == T_MIGRATION:
                deps["migrate"] = {"condition": "service_completed_successfully"}
                gated_by_migration.append(name)
        if deps:
            services[name]["depends_on"] = dict(sorted(deps.items()))

    routes = [_edge_service(r, services, svc_of, by_urn) for r in res if r.type == T_ROUTE]

    migrations = [r for r in res if r.type == T_MIGRATION]
    for mig in migrations:
        m = plain(mig.inputs)
        if m.get("mode") != "sql-dir":
            msg = f"migration mode {m.get('mode')!r}: only sql-dir translates to compose"
            raise ValueError(msg)
        target = m["target"]
        net = network_key(target["network"])
        db = next(svc_of[d] for d in mig.dependencies if d in svc_of)
        volumes["schema"] = {}
        services["schema"] = {
            "image": refs.get(m["source_image"], m["source_image"]),
            "pull_policy": "missing",
            "user": "0:0",
            "entrypoint": ["sh", "-c"],
            "command": [f"cp -a {m['schema_path']}/. /schema/"],
            "network_mode": "none",
            "volumes": ["schema:/schema"],
            "restart": "no",
            "labels": {"appstack.bench": project, "appstack.service": "schema"},
        }
        services["migrate"] = {
            "image": target["client_image"],
            "pull_policy": "missing",
            "entrypoint": ["sh", "-c"],
            "command": [MIGRATE],
            "environment": {
                "PGHOST": target["db_host"],
                "PGPORT": str(int(target["db_port"])),
                "PGDATABASE": target["db_name"],
                "PGUSER": target["db_user"],
                "PGPASSWORD": str(m["db_password"]),
            },
            "networks": {net: {}},
            "volumes": ["schema:/schema:ro"],
            "restart": "no",
            "depends_on": {
                db: {"condition": "service_healthy"},
                "schema": {"condition": "service_completed_successfully"},
            },
            "labels": {"appstack.bench": project, "appstack.service": "migrate"},
        }

    public = [edge for edge, _upstream in routes] or [
        n for n, s in services.items() if s.get("ports")
    ]
    tasks = [r for r in res if r.type == T_TASK]
    for task in tasks:
        t = plain(task.inputs)
        name = short(t["name"])
        deps = {
            svc_of[d]: {"condition": "service_healthy" if healthy[svc_of[d]] else "service_started"}
            for d in task.dependencies
            if d in svc_of
        }
        env = {**(t.get("env") or {}), **(t.get("secret_env") or {})}
        services[name] = {
            "image": refs.get(t["image"], t["image"]),
            "pull_policy": "missing",
            "entrypoint": list(t["entrypoint"]) if t.get("entrypoint") else None,
            "command": list(t.get("command") or []),
            "environment": {str(k): str(v) for k, v in sorted(env.items())},
            "networks": {network_key(t["target"]["network"]): {}},
            "restart": "no",
            "depends_on": deps,
            "labels": {"appstack.bench": project, "appstack.service": name},
        }
        if services[name]["entrypoint"] is None:
            del services[name]["entrypoint"]
        for adopter in public:  # `up --wait` fails on an exited service nobody depends on
            services[adopter].setdefault("depends_on", {})[name] = {
                "condition": "service_completed_successfully"
            }

    doc = {
        "name": project,
        "services": dollar(services),
        "networks": networks,
        "volumes": volumes,
    }
    facts = {
        "containers": [svc_of[c.urn] for c in containers],
        "one_off": [n for n in services if n not in svc_of.values()],
        "gated_by_migration": gated_by_migration,
        "public": public,
        "upstream": [upstream for _edge, upstream in routes],
    }
    return doc, facts


def _edge_service(
    route: Any, services: dict[str, Any], svc_of: Mapping[str, str], by_urn: Mapping[str, Any]
) -> tuple[str, str]:
    """Turn the edge container the route configures into a stock ``caddy reverse-proxy``.

    Returns (edge service, upstream service). The route depends on exactly those two containers;
    the upstream is the one whose release name its ``upstream`` (``<physical name>:<port>``) names.
    """
    r = plain(route.inputs)
    host, _, port = str(r.get("upstream") or "").rpartition(":")
    pair = [d for d in route.dependencies if d in svc_of]
    named = [d for d in pair if host.startswith(str(by_urn[d].inputs["name"]) + "-")]
    if len(pair) != 2 or len(named) != 1 or not port.isdigit():
        msg = f"edge route {route.name}: cannot tell edge from upstream ({r.get('upstream')!r})"
        raise ValueError(msg)
    upstream = svc_of[named[0]]
    edge = next(svc_of[d] for d in pair if d != named[0])
    svc = services[edge]
    published = svc.get("ports") or []
    if r.get("internal_ca") or r.get("files") or len(published) != 1:
        msg = f"edge route {route.name}: only a plain-HTTP edge on one port translates to compose"
        raise ValueError(msg)
    listen = int(published[0].rsplit(":", 1)[1])
    svc["command"] = ["caddy", "reverse-proxy", "--from", f":{listen}",
                      "--to", f"{upstream}:{int(port)}"]  # fmt: skip
    if svc.get("healthcheck"):
        # `caddy reverse-proxy` runs without the admin endpoint the spec's check asks.
        url = f"http://127.0.0.1:{listen}{r['health_path']}"
        svc["healthcheck"]["test"] = ["CMD", "wget", "-q", "-O", "/dev/null", url]
    svc.setdefault("depends_on", {})[upstream] = {"condition": "service_healthy"}
    svc["depends_on"] = dict(sorted(svc["depends_on"].items()))
    return edge, upstream


def dump(doc: Mapping[str, Any]) -> str:
    """The compose file's text."""
    head = (
        "# Generated by bench/composegen.py from the Pulumi program's specs (mocks). Do not edit.\n"
    )
    return head + yaml.safe_dump(dict(doc), sort_keys=False, width=100)


def main(argv: list[str]) -> int:
    """``python bench/composegen.py [PROJECT [PORT [OLLAMA_NETWORK]]]``: print the file."""
    project = argv[1] if len(argv) > 1 else "bench-compose"
    port = int(argv[2]) if len(argv) > 2 else 18291
    ollama = argv[3] if len(argv) > 3 else f"appstack-{project}-ollama"
    doc, _ = generate(program(project, port, ollama), project)
    sys.stdout.write(dump(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
