"""Haven's topology, written once for every platform (contract: shared/DESIGN.md, "Haven")."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from components.apps import common
from components.apps.common import sized
from components.settings import Settings
from components.spec import (
    AppSpec,
    DatabaseRef,
    Exposure,
    HealthCheck,
    InitTask,
    MigrationSpec,
    Resources,
    Role,
    ServiceSpec,
    SmokeCheck,
    SmokeSpec,
    Volume,
)

DB_NAME = "haven"
DB_USER = "haven"
PORTS = {"gateway": 8080, "catalog": 8081, "search": 8080, "postgres": 5432, "qdrant": 6333,
         "minio": 9000}  # fmt: skip
DEFAULT_RESOURCES = {
    "gateway": Resources(256, 0.5),
    "catalog": Resources(256, 0.5),
    "search": Resources(512, 1.0),
    "worker": Resources(512, 1.0),
    "postgres": Resources(1024, 1.0),
    "qdrant": Resources(1024, 1.0),
    "minio": Resources(512, 0.5),
    "caddy": Resources(128, 0.25),
}
SERVICE_UID = "10001"
"""Haven's services run as any uid (its image has no USER): the one Kubernetes forces too."""
DATASTORE_UID = "1000"
"""Qdrant's and MinIO's uid, as on Kubernetes; their data directories must be owned by it."""
# MinIO's image has `mc`; its entrypoint is replaced by `sh -c` for this one command.
MC_ALIAS = (
    'mc alias set haven "http://minio:9000" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null'
)
MAKE_BUCKET = (MC_ALIAS + ' && mc mb --ignore-existing "haven/$MINIO_BUCKET"',)


HEALTH_PATH = "/v1/healthz"


def _http_health(port: int, path: str = HEALTH_PATH) -> HealthCheck:
    return HealthCheck(http_path=f"http://127.0.0.1:{port}{path}")


def _url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def build(settings: Settings, secrets: Mapping[str, pulumi.Output[str]]) -> AppSpec:
    """Haven as specs: gateway, catalog, search, worker, Postgres+pgvector, Qdrant, MinIO."""
    db_password = secrets["postgresPassword"]
    database_url: pulumi.Output[str] = pulumi.Output.secret(
        pulumi.Output.concat("postgresql://", DB_USER, ":", db_password, "@postgres:5432/", DB_NAME)
    )  # type: ignore[arg-type]
    qdrant_url = _url("qdrant", PORTS["qdrant"])
    search_url = _url("search", PORTS["search"])
    catalog_url = _url("catalog", PORTS["catalog"])
    collection = settings.qdrant_collection
    image = {name: ref.ref for name, ref in settings.images.items()}
    ollama = settings.ollama
    ollama_host = ollama.url.split("://", 1)[1].split("/", 1)[0]

    def svc(name: str, **kwargs: object) -> ServiceSpec:
        return ServiceSpec(
            name=name,
            image=image[name],
            port=PORTS.get(name),
            replicas=settings.replicas(name),
            resources=sized(settings, DEFAULT_RESOURCES, name),
            **{"user": SERVICE_UID, **kwargs},  # type: ignore[arg-type]
        )

    postgres = common.postgres(
        image["postgres"], DB_NAME, DB_USER, db_password,
        sized(settings, DEFAULT_RESOURCES, "postgres"),
    )  # fmt: skip
    qdrant = svc(
        "qdrant",
        role=Role.DATASTORE,
        # The Qdrant image has no HTTP client: probe the REST port with bash's /dev/tcp.
        health=HealthCheck(command=("bash", "-c", ":> /dev/tcp/127.0.0.1/6333")),
        volumes=(Volume("storage", "/qdrant/storage", 10),),
        user=DATASTORE_UID,
        read_only_root=False,
    )
    minio = svc(
        "minio",
        role=Role.DATASTORE,
        # The image's entrypoint is `minio` (or a script that prefixes it): pass its arguments.
        command=("server", "/data", "--address", ":9000"),
        secret_env={
            "MINIO_ROOT_USER": secrets["minioAccessKey"],
            "MINIO_ROOT_PASSWORD": secrets["minioSecretKey"],
        },
        # MinIO's server reads both from the files their *_FILE variables name.
        file_env=("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"),
        health=HealthCheck(command=("curl", "-fsS", "http://127.0.0.1:9000/minio/health/live")),
        volumes=(Volume("data", "/data", 10),),
        user=DATASTORE_UID,
        read_only_root=False,
    )
    catalog = svc(
        "catalog",
        env={
            "QDRANT_URL": qdrant_url,
            "QDRANT_COLLECTION": collection,
            "SEARCH_URL": search_url,
            "CATALOG_FORWARD_TO_SEARCH": "true",
        },
        secret_env={
            "DATABASE_URL": database_url,
            "CATALOG_TOKEN": secrets["catalogToken"],
            "SEARCH_TOKEN": secrets["searchToken"],
        },
        health=_http_health(PORTS["catalog"]),
        depends_on=("postgres", "qdrant"),
    )
    search = svc(
        "search",
        env={
            "QDRANT_URL": qdrant_url,
            "QDRANT_COLLECTION": collection,
            "OLLAMA_BASE_URL": ollama.url,
            "EMBEDDING_MODEL": ollama.embedding_model,
        },
        secret_env={"DB_DSN": database_url, "SEARCH_TOKEN": secrets["searchToken"]},
        health=_http_health(PORTS["search"]),
        depends_on=("catalog", "postgres", "qdrant"),
        needs_egress=True,
        egress_hosts=(ollama_host,),
    )
    gateway = svc(
        "gateway",
        env={
            "SEARCH_URL": search_url,
            "CATALOG_BASE_URL": catalog_url,
            "CONTACTS_HELPER_URL": "",
            "MINIO_ENDPOINT": "minio:9000",
            "MINIO_BUCKET": settings.minio_bucket,
            "MINIO_SECURE": "false",
            "QDRANT_URL": qdrant_url,
            "QDRANT_COLLECTION": collection,
        },
        secret_env={
            "DATABASE_URL": database_url,
            "AUTH_TOKEN": secrets["authToken"],
            "CATALOG_TOKEN": secrets["catalogToken"],
            "SEARCH_TOKEN": secrets["searchToken"],
            "MINIO_ACCESS_KEY": secrets["minioAccessKey"],
            "MINIO_SECRET_KEY": secrets["minioSecretKey"],
        },
        health=_http_health(PORTS["gateway"]),
        exposure=Exposure.PUBLIC,
        depends_on=("catalog", "postgres", "qdrant", "minio"),
    )
    worker = svc(
        "worker",
        role=Role.WORKER,
        env={
            "CATALOG_BASE_URL": catalog_url,
            "WORKER_TYPE": settings.worker.type,
            "OLLAMA_BASE_URL": ollama.url,
            "EMBEDDING_MODEL": ollama.embedding_model,
            "WORKER_POLL_INTERVAL": str(settings.worker.poll_interval_s),
            "WORKER_BATCH_SIZE": str(settings.worker.batch_size),
        },
        secret_env={"DATABASE_URL": database_url, "CATALOG_TOKEN": secrets["catalogToken"]},
        depends_on=("catalog", "postgres", "search", "gateway"),
        needs_egress=True,
        egress_hosts=(ollama_host,),
    )
    database = DatabaseRef("postgres", DB_NAME, DB_USER, db_password, image=image["postgres"])
    migration = MigrationSpec(
        mode="sql-dir",
        source_image=image["catalog"],
        database=database,
        schema_path="/app/schema",
        quiescent=("worker",),
        baseline=settings.migration_baseline,
        keep_backups=settings.keep_backups,
        backup_store=settings.backups.store_spec(),
        lock_timeout=settings.migration_lock_timeout,
    )
    auth = secrets["authToken"]
    smoke = SmokeSpec(
        checks=(
            SmokeCheck("gateway-health", "/v1/healthz", 200, expect_json={"status": "ok"}),
            SmokeCheck("search-authorized", "/v1/search?q=hello", 200, bearer=auth),
            SmokeCheck("search-unauthorized", "/v1/search?q=hello", 401),
        )
    )
    bucket = InitTask(
        name="bucket",
        image=image["minio"],
        command=MAKE_BUCKET,
        entrypoint=("sh", "-c"),
        after=("minio",),
        env={"MINIO_BUCKET": settings.minio_bucket},
        secret_env={
            "MINIO_ROOT_USER": secrets["minioAccessKey"],
            "MINIO_ROOT_PASSWORD": secrets["minioSecretKey"],
        },
    )
    services: tuple[ServiceSpec, ...] = (postgres, qdrant, minio, catalog, search, gateway, worker)
    # Haven has no maintenance switch: the edge answers 503 for everything but health.
    edge, entry = common.edge(settings, secrets, gateway, (HEALTH_PATH, 200), (HEALTH_PATH,))
    if edge.maintenance:
        smoke = SmokeSpec(
            checks=(
                SmokeCheck("gateway-health", HEALTH_PATH, 200, expect_json={"status": "ok"}),
                SmokeCheck("maintenance", "/v1/search?q=hello", 503, bearer=auth),
            )
        )
    return AppSpec(
        name="haven",
        services=services,
        entry=entry,
        migration=migration,
        smoke=smoke,
        init_tasks=(bucket,),
        # What a client needs to call the API (secret outputs: `pulumi stack output authToken
        # --show-secrets`), and the HostAgent's x-auth secret.
        outputs={"authToken": auth, "hostAgentSecret": secrets["hostAgentSecret"]},
        edge=edge,
    )
