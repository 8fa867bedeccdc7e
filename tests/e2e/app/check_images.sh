#!/usr/bin/env bash
# tests/e2e/app/check_images.sh — prove the local test images with plain `docker run`.
#
#   eval "$(tools/docker-engine.sh start)"; tools/images.sh build all; tests/e2e/app/check_images.sh
#
# Creates an --internal network (+ one ordinary bridge only for the published gateway port on
# 127.0.0.1), checks postgres/pgvector on an empty volume, every schema file's behaviour, the
# gateway -> search -> qdrant/ollama chain, the worker, MinIO + bucket helper, clean SIGTERM
# stops; removes everything it created (containers, networks, volumes) at the end.
# Prints "N passed, N failed" last; exit 1 when anything failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
if ! docker info >/dev/null 2>&1; then eval "$("$ROOT/tools/docker-engine.sh" env)"; fi
P="${APPSTACK_IMGTEST_PREFIX:-appstack-imgtest}"
NET="$P-internal"
EDGE="$P-edge"
# gateways publish on an ephemeral 127.0.0.1 port (other stacks may share this engine)
TAG0=0.1.0
PG_IMG=appstack.local/postgres-pgvector:17
MINIO_IMG="$("$ROOT/tools/images.sh" list | grep '^appstack.local/minio:')"
PGPASS="imgtest-$(head -c8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TOKEN=gw-token-123
STOKEN=search-token-456
PASS=0
FAIL=0
HARDEN=(--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges --label "$P=1")

say() { printf '\n== %s\n' "$*"; }
ok() { PASS=$((PASS + 1)); printf '  ok   %s\n' "$*"; }
bad() { FAIL=$((FAIL + 1)); printf '  FAIL %s\n' "$*"; }
check() { local what="$1"; shift; if "$@" >/tmp/$P.out 2>&1; then ok "$what"; else bad "$what: $(tail -c 600 /tmp/$P.out)"; fi; }
check_fails() { local what="$1"; shift; if "$@" >/tmp/$P.out 2>&1; then bad "$what (expected failure, it succeeded)"; else ok "$what: $(grep -m1 ERROR /tmp/$P.out || tail -n1 /tmp/$P.out)"; fi; }

cleanup() {
  docker ps -aq --filter "label=$P=1" | xargs -r docker rm -f >/dev/null 2>&1
  docker network rm "$NET" "$EDGE" >/dev/null 2>&1
  docker volume ls -q --filter "label=$P=1" | xargs -r docker volume rm >/dev/null 2>&1
  rm -f /tmp/$P.out
}
trap cleanup EXIT
cleanup

wait_healthy() { # name [seconds]
  local i=0 s
  while [ $i -lt "${2:-60}" ]; do
    s="$(docker inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null)"
    [ "$s" = healthy ] && return 0
    [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ] || { docker logs --tail 20 "$1"; return 1; }
    sleep 0.5; i=$((i + 1))
  done
  docker logs --tail 20 "$1"; return 1
}

# one-off client on the internal network (psql, curl, python3 are in every image)
client() { docker run --rm -i --network "$NET" "${HARDEN[@]}" -e PGPASSWORD="$PGPASS" "appstack.local/haven-catalog:${CT:-$TAG0}" "$@"; }
psql_db() { local db="$1"; shift; client psql -X -v ON_ERROR_STOP=1 -h "$P-pg" -U haven -d "$db" "$@"; }
q() { psql_db "$1" -Atc "$2" 2>&1; }
out_has() { local pat="$1" got; shift; got="$("$@")"; grep -q -- "$pat" <<<"$got" || { echo "got: $got"; return 1; }; }
out_is() { local want="$1" got; shift; got="$("$@")"; [ "$got" = "$want" ] || { echo "got: $got"; return 1; }; }

say "networks"
docker network create --internal --label "$P=1" "$NET" >/dev/null && ok "internal network $NET"
docker network create --label "$P=1" "$EDGE" >/dev/null && ok "edge network $EDGE (gateway's published port only)"

say "postgres-pgvector on a fresh empty named volume"
docker volume create --label "$P=1" "$P-pgdata" >/dev/null
t0=$(date +%s.%N)
docker run -d --name "$P-pg" --network "$NET" --label "$P=1" \
  -e POSTGRES_USER=haven -e POSTGRES_PASSWORD="$PGPASS" -e POSTGRES_DB=haven \
  -v "$P-pgdata:/var/lib/postgresql/data" "$PG_IMG" >/dev/null
if wait_healthy "$P-pg" 120; then ok "postgres healthy (pg_isready) after $(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)")s"; else bad "postgres not healthy"; fi
check "postgres runs as uid 999" bash -c "docker top $P-pg -eo pid,uid | awk 'NR>1 {print \$2}' | sort -u | grep -qx 999"
check "volume owned by 999" bash -c "[ \"\$(docker exec $P-pg stat -c %u /var/lib/postgresql/data)\" = 999 ]"
check "host auth is scram-sha-256" bash -c "docker exec $P-pg grep -q '^host all all all scram-sha-256' /var/lib/postgresql/data/pg_hba.conf"
check_fails "TCP login with a wrong password is refused" docker run --rm --network "$NET" --label "$P=1" -e PGPASSWORD=wrong "$PG_IMG" psql -h "$P-pg" -U haven -d haven -c 'select 1'
check "CREATE EXTENSION vector over TCP (scram)" psql_db haven -c "CREATE EXTENSION IF NOT EXISTS vector; SELECT '[1,2,3]'::vector <=> '[1,2,4]'::vector;"
check "pg_isready/psql/pg_dump/pg_restore on PATH" docker exec "$P-pg" sh -c 'command -v pg_isready psql pg_dump pg_restore'
check "listens on 0.0.0.0:5432" bash -c "docker exec $P-pg psql -U haven -d haven -Atc 'show listen_addresses' | grep -qx '\*'"
check "POSTGRES_PASSWORD_FILE works" bash -c "docker run --rm --label $P=1 -e POSTGRES_PASSWORD_FILE=/run/pw -e POSTGRES_USER=u --entrypoint bash $PG_IMG -c 'echo s3cret >/run/pw; docker-entrypoint.sh postgres & for i in \$(seq 60); do pg_isready -q -h 127.0.0.1 && break; sleep 0.5; done; PGPASSWORD=s3cret psql -h 127.0.0.1 -U u -d u -Atc \"select current_user\"' | grep -qx u"

say "schema files (per tag) and migration behaviour"
for db in fresh010 fresh020 fresh030 legacy up010 broken; do psql_db haven -qc "CREATE DATABASE $db" >/dev/null; done
mig() { local tag="$1" db="$2" f="$3"; CT="$tag" psql_db "$db" -1 -q -f "/app/schema/$f"; }
check "0.1.0 init.sql on an empty DB" mig 0.1.0 fresh010 init.sql
check "0.1.0 after init: v2_001 succeeds (idempotent)" mig 0.1.0 fresh010 migrations/v2_001_chunk_embedding_status.sql
check_fails "0.1.0 after init: v2_002 fails" mig 0.1.0 fresh010 migrations/v2_002_rename_chunk_body.sql
check "0.2.0 init.sql on an empty DB" mig 0.2.0 fresh020 init.sql
check "0.2.0 after init: v2_001 succeeds" mig 0.2.0 fresh020 migrations/v2_001_chunk_embedding_status.sql
check_fails "0.2.0 after init: v2_002 fails" mig 0.2.0 fresh020 migrations/v2_002_rename_chunk_body.sql
check_fails "0.2.0 after init: v2_003 fails" mig 0.2.0 fresh020 migrations/v2_003_collections.sql
check "0.3.0-broken init.sql on an empty DB" mig 0.3.0-broken fresh030 init.sql
check_fails "0.3.0-broken after init: v2_004_broken fails" mig 0.3.0-broken fresh030 migrations/v2_004_broken.sql
# upgrade paths
check "legacy v1 schema (fixture)" psql_db legacy -q -f /app/fixtures/v1_init.sql
psql_db legacy -qc "INSERT INTO documents (title) VALUES ('old'); INSERT INTO chunks (document_id, body) VALUES (1, 'old chunk');" >/dev/null
check "v1 DB + v2_001 succeeds" mig 0.1.0 legacy migrations/v2_001_chunk_embedding_status.sql
check "v1 DB + v2_002 succeeds" mig 0.1.0 legacy migrations/v2_002_rename_chunk_body.sql
cols() { q "$1" "SELECT table_name||'.'||column_name||':'||data_type FROM information_schema.columns WHERE table_schema='public' ORDER BY table_name, ordinal_position"; }
check "v1 + v2_001 + v2_002 == 0.1.0 init.sql (columns)" diff <(cols legacy) <(cols fresh010)
check "old rows survive the upgrade (pending)" out_is "old chunk/pending" q legacy "select content||'/'||embedding_status from chunks"
check "0.1.0 init.sql for the upgrade DB" mig 0.1.0 up010 init.sql
check "0.1.0 DB + v2_003 (from 0.2.0 image) succeeds" mig 0.2.0 up010 migrations/v2_003_collections.sql
check "0.1.0 + v2_003 == 0.2.0 init.sql (columns)" diff <(cols up010) <(cols fresh020)
check "0.2.0 init.sql for the broken-migration DB" mig 0.2.0 broken init.sql
check_fails "v2_004_broken fails halfway on a 0.2.0 DB" mig 0.3.0-broken broken migrations/v2_004_broken.sql
check "rollback observable: no document_tags, no documents.language" out_is 0 q broken "select count(*) from information_schema.columns where (table_name='document_tags') or (table_name='documents' and column_name='language')"
CT=0.3.0-broken psql_db broken -q -f /app/schema/migrations/v2_004_broken.sql >/dev/null 2>&1
check "without a transaction the first half would remain (proves 'halfway')" out_is t q broken "select to_regclass('document_tags') is not null"
check "haven DB: 0.1.0 init.sql (for the services)" mig 0.1.0 haven init.sql

say "ollama + qdrant doubles, search, catalog, gateway (hardened: read-only root, tmpfs /tmp, no caps)"
docker volume create --label "$P=1" "$P-qdrant" >/dev/null
docker run -d --name "$P-ollama" --network "$NET" "${HARDEN[@]}" appstack.local/ollama:double >/dev/null
docker run -d --name "$P-qdrant" --network "$NET" "${HARDEN[@]}" -v "$P-qdrant:/qdrant/storage" appstack.local/qdrant:1.12-double >/dev/null
DBURL="postgresql://haven:$PGPASS@$P-pg:5432/haven"
docker run -d --name "$P-search" --network "$NET" "${HARDEN[@]}" \
  -e QDRANT_URL="http://$P-qdrant:6333" -e QDRANT_COLLECTION=haven_chunks -e DB_DSN="$DBURL" \
  -e OLLAMA_BASE_URL="http://$P-ollama:11434" -e EMBEDDING_MODEL=nomic-embed-text -e SEARCH_TOKEN="$STOKEN" \
  appstack.local/haven-search:$TAG0 >/dev/null
docker run -d --name "$P-catalog" --network "$NET" "${HARDEN[@]}" -e DATABASE_URL="$DBURL" -e CATALOG_TOKEN=cat-token \
  -e QDRANT_URL="http://$P-qdrant:6333" -e QDRANT_COLLECTION=haven_chunks appstack.local/haven-catalog:$TAG0 >/dev/null
docker create --name "$P-gateway" --network "$NET" "${HARDEN[@]}" -p "127.0.0.1::8080" \
  -e SEARCH_URL="http://$P-search:8080" -e AUTH_TOKEN="$TOKEN" -e SEARCH_TOKEN="$STOKEN" -e DATABASE_URL="$DBURL" \
  -e CATALOG_BASE_URL="http://$P-catalog:8081" -e MINIO_BUCKET=haven-files appstack.local/haven-gateway:$TAG0 >/dev/null
docker network connect "$EDGE" "$P-gateway" && docker start "$P-gateway" >/dev/null
docker create --name "$P-gateway-maint" --network "$NET" "${HARDEN[@]}" -p "127.0.0.1::8080" \
  -e SEARCH_URL="http://$P-search:8080" -e AUTH_TOKEN="$TOKEN" -e HAVEN_MAINTENANCE=true appstack.local/haven-gateway:$TAG0 >/dev/null
docker network connect "$EDGE" "$P-gateway-maint" && docker start "$P-gateway-maint" >/dev/null
for c in ollama qdrant search catalog gateway gateway-maint; do
  if wait_healthy "$P-$c" 60; then ok "$c healthy"; else bad "$c not healthy"; fi
done
check "services run as uid 10001" bash -c "docker top $P-gateway -eo pid,uid | awk 'NR>1 {print \$2}' | sort -u | grep -qx 10001"
GW_PORT="$(docker port "$P-gateway" 8080/tcp | grep -m1 '^127.0.0.1:' | cut -d: -f2)"
GW2_PORT="$(docker port "$P-gateway-maint" 8080/tcp | grep -m1 '^127.0.0.1:' | cut -d: -f2)"
GW="http://127.0.0.1:$GW_PORT"
code() { curl -s -o /tmp/$P.body -w '%{http_code}' "$@"; }
check "gateway healthz via 127.0.0.1:$GW_PORT -> ok + version" bash -c "curl -fsS $GW/v1/healthz | grep -q '\"status\": \"ok\".*\"version\": \"$TAG0\"'"
# seed qdrant with one point embedded by the ollama double, so a search finds it
client python3 - "$P" <<'EOF' >/dev/null
import json, sys, urllib.request
p = sys.argv[1]
def call(m, url, body):
    r = urllib.request.Request(url, json.dumps(body).encode(), method=m, headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(r))
vec = call("POST", f"http://{p}-ollama:11434/api/embeddings", {"model": "nomic-embed-text", "prompt": "hello haven"})["embedding"]
try:
    call("PUT", f"http://{p}-qdrant:6333/collections/haven_chunks", {"vectors": {"size": len(vec), "distance": "Cosine"}})
except Exception:
    pass
call("PUT", f"http://{p}-qdrant:6333/collections/haven_chunks/points", {"points": [{"id": 1, "vector": vec, "payload": {"text": "hello haven"}}]})
EOF
c=$(code -H "Authorization: Bearer $TOKEN" "$GW/v1/search?q=hello%20haven")
if [ "$c" = 200 ] && grep -q '"score": 1.0' /tmp/$P.body; then ok "search with token -> 200 + hit ($(head -c 120 /tmp/$P.body)...)"; else bad "search with token -> $c $(head -c 300 /tmp/$P.body)"; fi
c=$(code "$GW/v1/search?q=x"); [ "$c" = 401 ] && ok "search without token -> 401" || bad "search without token -> $c"
c=$(code -H "Authorization: Bearer nope" "$GW/v1/search?q=x"); [ "$c" = 403 ] && ok "search wrong token -> 403" || bad "search wrong token -> $c"
c=$(code "http://127.0.0.1:$GW2_PORT/v1/search?q=x"); [ "$c" = 503 ] && grep -q maintenance /tmp/$P.body && ok "HAVEN_MAINTENANCE=true -> 503 maintenance" || bad "maintenance -> $c"
c=$(code "http://127.0.0.1:$GW2_PORT/v1/healthz"); [ "$c" = 200 ] && ok "maintenance gateway healthz -> 200" || bad "maintenance healthz -> $c"
check "search healthz names the service" out_has '"service": "search"' client curl -fsS "http://$P-search:8080/v1/healthz"
check "catalog healthz (DB connects)" client curl -fsS "http://$P-catalog:8081/v1/healthz"
check "search direct with wrong SEARCH_TOKEN -> 403" out_is 403 client curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer x' "http://$P-search:8080/v1/search?q=a"
docker stop -t 5 "$P-qdrant" >/dev/null
c=$(code -H "Authorization: Bearer $TOKEN" "$GW/v1/search?q=hello"); [ "$c" = 502 ] && grep -q 'upstream_status": 500' /tmp/$P.body && ok "qdrant down: search 500 -> gateway 502" || bad "qdrant down -> $c $(head -c 200 /tmp/$P.body)"
docker start "$P-qdrant" >/dev/null; wait_healthy "$P-qdrant" 30 >/dev/null
c=$(code -H "Authorization: Bearer $TOKEN" "$GW/v1/search?q=hello%20haven"); [ "$c" = 200 ] && grep -q '"score": 1.0' /tmp/$P.body && ok "qdrant restarted: point persisted on its volume, search 200" || bad "after qdrant restart -> $c $(head -c 200 /tmp/$P.body)"
docker stop -t 5 "$P-ollama" >/dev/null
c=$(code -H "Authorization: Bearer $TOKEN" "$GW/v1/search?q=hello"); [ "$c" = 502 ] && ok "ollama down: gateway 502 ($(head -c 100 /tmp/$P.body))" || bad "ollama down -> $c"
docker start "$P-ollama" >/dev/null; wait_healthy "$P-ollama" 30 >/dev/null

say "worker: pending -> processing -> embedded"
check "catalog POST /v1/documents (5 pending chunks)" client curl -fsS -H 'Authorization: Bearer cat-token' -H 'Content-Type: application/json' -d '{"title":"doc","chunks":["a","b","c","d","e"]}' "http://$P-catalog:8081/v1/documents"
docker run -d --name "$P-worker" --network "$NET" "${HARDEN[@]}" -e DATABASE_URL="$DBURL" -e WORKER_TYPE=embedding \
  -e OLLAMA_BASE_URL="http://$P-ollama:11434" -e EMBEDDING_MODEL=nomic-embed-text -e WORKER_POLL_INTERVAL=1 -e WORKER_BATCH_SIZE=2 \
  -e CATALOG_BASE_URL="http://$P-catalog:8081" -e CATALOG_TOKEN=cat-token appstack.local/haven-worker:$TAG0 >/dev/null
for i in $(seq 30); do [ "$(q haven "select count(*) from chunks where embedding_status='embedded'")" = 5 ] && break; sleep 1; done
st="$(q haven "select string_agg(embedding_status||':'||n, ',') from (select embedding_status, count(*) n from chunks group by 1) s")"
[ "$st" = "embedded:5" ] && ok "all chunks embedded ($st) after ${i}s" || bad "chunk states: $st"
check "embeddings are vector(768)" out_is 768 q haven "select distinct vector_dims(embedding) from chunks"
if wait_healthy "$P-worker" 30; then ok "worker healthy (heartbeat file)"; else bad "worker not healthy"; fi
docker run -d --name "$P-worker-fail" --network "$NET" "${HARDEN[@]}" -e DATABASE_URL="$DBURL" \
  -e OLLAMA_BASE_URL="http://$P-ollama:11434" -e EMBEDDING_MODEL=no-such-model -e WORKER_POLL_INTERVAL=1 appstack.local/haven-worker:$TAG0 >/dev/null
docker stop -t 5 "$P-worker" >/dev/null
psql_db haven -qc "INSERT INTO chunks (document_id, chunk_index, content) VALUES (1, 99, 'will fail')" >/dev/null
for i in $(seq 20); do [ "$(q haven "select embedding_status from chunks where chunk_index=99")" = failed ] && break; sleep 1; done
[ "$(q haven "select embedding_status from chunks where chunk_index=99")" = failed ] && ok "unknown model -> chunk 'failed'" || bad "failure path: $(q haven "select embedding_status from chunks where chunk_index=99")"

say "SIGTERM"
for c in gateway search catalog worker-fail qdrant ollama; do
  s=$(date +%s.%N); docker stop -t 10 "$P-$c" >/dev/null; e=$(echo "$(date +%s.%N) - $s" | bc)
  ec=$(docker inspect -f '{{.State.ExitCode}}' "$P-$c")
  if [ "$(echo "$e < 3" | bc)" = 1 ]; then ok "$c stopped in $(printf '%.2f' "$e")s (exit $ec)"; else bad "$c took ${e}s to stop (exit $ec)"; fi
done
s=$(date +%s.%N); docker stop -t 30 "$P-pg" >/dev/null; e=$(echo "$(date +%s.%N) - $s" | bc)
pglog="$(docker logs "$P-pg" 2>&1)"
grep -q 'database system is shut down' <<<"$pglog" && [ "$(docker inspect -f '{{.State.ExitCode}}' "$P-pg")" = 0 ] \
  && ok "postgres clean shutdown in $(printf '%.2f' "$e")s (exit 0)" || bad "postgres shutdown: $(docker logs --tail 3 "$P-pg" 2>&1)"
docker start "$P-pg" >/dev/null
if wait_healthy "$P-pg" 60; then ok "postgres restarts on the initialized volume (no re-init)"; else bad "postgres restart"; fi
[ "$(q haven "select count(*) from chunks")" = 6 ] && ok "data survived restart" || bad "data after restart: $(q haven 'select count(*) from chunks')"
s=$(date +%s.%N); docker kill -s TERM "$P-pg" >/dev/null
for i in $(seq 100); do [ "$(docker inspect -f '{{.State.Running}}' "$P-pg")" = false ] && break; sleep 0.1; done
e=$(echo "$(date +%s.%N) - $s" | bc)
[ "$(docker inspect -f '{{.State.Running}} {{.State.ExitCode}}' "$P-pg")" = "false 0" ] \
  && ok "postgres SIGTERM (smart shutdown, idle) exits 0 in $(printf '%.2f' "$e")s" || bad "postgres SIGTERM: $(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$P-pg")"

say "minio (real server) + bucket helper"
docker volume create --label "$P=1" "$P-minio" >/dev/null
docker run -d --name "$P-minio" --network "$NET" --label "$P=1" --cap-drop ALL --security-opt no-new-privileges \
  -e MINIO_ROOT_USER=haven-admin -e MINIO_ROOT_PASSWORD="$PGPASS-minio" -v "$P-minio:/data" "$MINIO_IMG" >/dev/null
if wait_healthy "$P-minio" 90; then ok "minio healthy (/minio/health/live)"; else bad "minio not healthy"; fi
check "minio runs as uid 1000" bash -c "docker top $P-minio -eo pid,uid | awk 'NR>1 {print \$2}' | sort -u | grep -qx 1000"
check "appstack-mkbucket haven-files" docker exec "$P-minio" appstack-mkbucket haven-files
check "appstack-mkbucket again (idempotent)" docker exec "$P-minio" appstack-mkbucket haven-files
check "appstack-mkbucket from another container (endpoint arg)" client env MINIO_ROOT_USER=haven-admin MINIO_ROOT_PASSWORD="$PGPASS-minio" python3 - haven-other "http://$P-minio:9000" < "$ROOT/tools/images/minio/appstack-mkbucket"
check_fails "appstack-mkbucket with wrong credentials fails" docker exec -e MINIO_ROOT_PASSWORD=wrongwrong "$P-minio" appstack-mkbucket nope
if docker exec "$P-minio" sh -c 'command -v mc' >/dev/null 2>&1; then
  check "mc sees the buckets" bash -c "docker exec $P-minio sh -c 'mc alias set local http://127.0.0.1:9000 \"\$MINIO_ROOT_USER\" \"\$MINIO_ROOT_PASSWORD\" >/dev/null && mc ls local' | grep -q haven-files"
fi
check "minio ready endpoint" docker exec "$P-minio" curl -fsS http://127.0.0.1:9000/minio/health/ready

echo
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
