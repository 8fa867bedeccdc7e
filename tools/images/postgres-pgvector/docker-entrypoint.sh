#!/usr/bin/env bash
# A small re-implementation of the official postgres image's entrypoint (the parts appstack
# uses): fresh PGDATA -> initdb (scram-sha-256 for host connections, trust on the local
# socket), POSTGRES_USER / POSTGRES_PASSWORD[_FILE] / POSTGRES_DB, /docker-entrypoint-initdb.d
# (*.sql, *.sh), listen on 0.0.0.0:5432, then exec postgres as uid 999 in the foreground.
set -Eeuo pipefail

log() { echo "entrypoint: $*" >&2; }

file_env() { # file_env VAR: VAR or VAR_FILE
  local var="$1" fvar="${1}_FILE" def="${2:-}"
  if [ -n "${!var:-}" ] && [ -n "${!fvar:-}" ]; then log "both $var and $fvar are set"; exit 1; fi
  local val="$def"
  if [ -n "${!var:-}" ]; then val="${!var}"; elif [ -n "${!fvar:-}" ]; then val="$(< "${!fvar}")"; fi
  export "$var"="$val"; unset "$fvar"
}

if [ "${1:-}" != postgres ] && [ "${1#-}" = "${1:-}" ]; then exec "$@"; fi
if [ "${1#-}" != "${1:-}" ]; then set -- postgres "$@"; fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
  # a fresh named volume may come owned by root: make it ours, then drop privileges
  mkdir -p "$PGDATA" /var/run/postgresql
  chown 999:999 "$PGDATA" /var/run/postgresql 2>/dev/null || true
  chmod 700 "$PGDATA" 2>/dev/null || true
  if [ "$(stat -c %u "$PGDATA")" != 999 ]; then chown -R 999:999 "$PGDATA"; fi
  exec setpriv --reuid=999 --regid=999 --init-groups "$BASH_SOURCE" "$@"
fi

file_env POSTGRES_PASSWORD
file_env POSTGRES_USER postgres
file_env POSTGRES_DB "$POSTGRES_USER"
file_env POSTGRES_INITDB_ARGS ""

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "$POSTGRES_PASSWORD" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
    log "database is uninitialized and POSTGRES_PASSWORD is not set (no default password)"; exit 1
  fi
  log "initdb in $PGDATA (user $POSTGRES_USER, db $POSTGRES_DB)"
  pwfile="$(mktemp)"; printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  # shellcheck disable=SC2086
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
    --auth-host="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" --encoding=UTF8 --locale=C.UTF-8 \
    $POSTGRES_INITDB_ARGS >&2
  rm -f "$pwfile"
  printf '\nhost all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

  # temporary server on the unix socket only
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start >&2
  psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
  if [ "$POSTGRES_DB" != postgres ]; then
    "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" >&2 <<-'SQL'
	SELECT format('CREATE DATABASE %I', :'db') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
	SQL
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) log "running $f"; . "$f" ;;
      *.sql) log "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" >&2 ;;
      *.sql.gz) log "running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" >&2 ;;
      *) [ -e "$f" ] && log "ignoring $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >&2
  log "init complete"
fi

exec "$@"
