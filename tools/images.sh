#!/usr/bin/env bash
# tools/images.sh — build appstack's local test images without any container registry.
#
#   tools/images.sh build [all|NAME...]   build (or reuse) images; NAME is one of `names`
#   tools/images.sh list                  print every image reference this script produces
#   tools/images.sh tags                  print the Haven test tags
#   tools/images.sh engramia-tags         print the Engramia test tags
#   tools/images.sh names                 print the buildable names
#   tools/images.sh haven-source TAG DIR  write Haven's source at TAG into DIR (Dockerfile at its root)
#
# Every image is derived from ONE Debian trixie rootfs made with debootstrap and imported as
# appstack.local/base:trixie-<hash8>. Each image carries the label appstack.inputs-hash (a
# sha256 over everything that went into it, the base included); a build is skipped when an
# image with that tag and label already exists. The rootfs tarball is cached under
# ${APPSTACK_CACHE:-$HOME/.cache/appstack}/images/, keyed by its package list; the Python wheels of
# the Engramia double under .../images/wheels/, keyed by their pins (tools/images/engramia/wheels.txt).
# The monitoring images (Prometheus, Alertmanager, postgres- and blackbox-exporter: `build monitoring`) come from
# a SECOND rootfs of their own (tools/images/monitoring/packages.txt), cached and hashed the same
# way but separately, so adding them changes no hash of the images above.
# Progress goes to stderr; a failure names the step that failed. Needs a Docker engine
# (DOCKER_HOST honoured; see tools/docker-engine.sh) and root for debootstrap.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMG_DIR="$ROOT/tools/images"
APP_DIR="$ROOT/tests/e2e/app/haven"
ENGRAMIA_DIR="$ROOT/tests/e2e/app/engramia"
CACHE="${APPSTACK_CACHE:-$HOME/.cache/appstack}"
IMG_CACHE="$CACHE/images"
SUITE=trixie
MIRROR="${APPSTACK_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KEYRING="${APPSTACK_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"

HAVEN_TAGS=(0.1.0 0.2.0 0.2.1-badsearch 0.3.0-broken)
HAVEN_SERVICES=(gateway catalog search worker)
ENGRAMIA_TAGS=(0.6.1 0.6.2 0.6.3-badmigration 0.6.4-wrongversion)
# The base's python3 (Debian trixie) is 3.13: the Engramia double's wheels are fetched for it.
ENGRAMIA_PYTHON=3.13
POSTGRES_REF=appstack.local/postgres-pgvector:17
QDRANT_REF=appstack.local/qdrant:1.12-double
OLLAMA_REF=appstack.local/ollama:double
CADDY_REF=appstack.local/caddy:2
# Upstream versions of trixie's packages in the monitoring rootfs: the tags of its images (each
# build checks the installed package against its tag).
PROMETHEUS_VERSION=2.53.3
ALERTMANAGER_VERSION=0.28.1
POSTGRES_EXPORTER_VERSION=0.17.1
BLACKBOX_EXPORTER_VERSION=0.26.0
MON_DIR="$IMG_DIR/monitoring"
# Real MinIO server, built from the Go module proxy (a pinned pseudo-version of master).
MINIO_MODULE=github.com/minio/minio
MINIO_VERSION="${APPSTACK_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
MC_MODULE=github.com/minio/mc
MC_VERSION="${APPSTACK_MC_VERSION:-v0.0.0-20250313080218-cf909e1063a9}"
WITH_MC="${APPSTACK_MINIO_WITH_MC:-true}"

log() { printf '[images] %s\n' "$*" >&2; }
STEP="init"
step() { STEP="$*"; log "$*"; }
trap 'rc=$?; if [ $rc -ne 0 ]; then log "FAILED at step: $STEP (exit $rc)"; fi' EXIT

DOCKER="${DOCKER:-docker}"
if [ -x /usr/local/bin/docker ] && [ -z "${DOCKER_SET:-}" ]; then DOCKER=/usr/local/bin/docker; fi
# The legacy builder is enough (and is what Debian's docker.io 20.10 has); buildx may be absent.
if ! "$DOCKER" buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi

sha() { sha256sum | cut -d' ' -f1; }

minio_tag() { # v0.0.0-20260212201848-7aac2a2c5b7c -> 2026-02-12T20-18-48Z-7aac2a2c
  local v="$MINIO_VERSION" ts commit
  ts="$(echo "$v" | cut -d- -f2)"; commit="$(echo "$v" | cut -d- -f3)"
  echo "${ts:0:4}-${ts:4:2}-${ts:6:2}T${ts:8:2}-${ts:10:2}-${ts:12:2}Z-${commit:0:8}"
}
MINIO_REF="appstack.local/minio:$(minio_tag)"

base_packages() { grep -v '^\s*#' "$IMG_DIR/base/packages.txt" | tr -s ' \n' '\n' | sed '/^$/d' | sort -u; }
base_key() { { echo "suite=$SUITE variant=minbase arch=$(dpkg --print-architecture 2>/dev/null || uname -m)";
  base_packages; cat "$IMG_DIR/base/finalize.sh"; } | sha; }
base_ref() { echo "appstack.local/base:$SUITE-$(base_key | cut -c1-8)"; }

image_hash_label() { # ref -> label value or ""
  "$DOCKER" image inspect -f '{{ index .Config.Labels "appstack.inputs-hash" }}' "$1" 2>/dev/null || true
}

context_hash() { # dir extra... -> sha of files (path + content) and extra strings
  local dir="$1"; shift
  { (cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum);
    (cd "$dir" && find . -type f -perm -u+x | LC_ALL=C sort);
    printf '%s\n' "$@"; } | sha
}

# ---------------------------------------------------------------------------------------- base
build_base() {
  local key ref tarball
  key="$(base_key)"; ref="$(base_ref)"
  if [ "$(image_hash_label "$ref")" = "$key" ]; then log "base: $ref up to date"; return 0; fi
  mkdir -p "$IMG_CACHE"
  tarball="$IMG_CACHE/rootfs-$SUITE-${key:0:16}.tar"
  if [ ! -s "$tarball" ]; then
    [ "$(id -u)" = 0 ] || { STEP="base: debootstrap needs root"; return 1; }
    if ! command -v debootstrap >/dev/null 2>&1; then
      step "base: installing debootstrap"
      DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >&2; }
    fi
    local rootfs="$IMG_CACHE/rootfs-$SUITE-${key:0:16}.tmp"
    rm -rf "$rootfs"; mkdir -p "$rootfs"
    local pkgs; pkgs="$(base_packages | paste -sd, -)"
    step "base: debootstrap --variant=minbase $SUITE ($pkgs) from $MIRROR (log $IMG_CACHE/debootstrap.log)"
    local t0=$SECONDS
    if ! debootstrap --variant=minbase --keyring="$KEYRING" --include="$pkgs" \
         "$SUITE" "$rootfs" "$MIRROR" >"$IMG_CACHE/debootstrap.log" 2>&1; then
      tail -n 30 "$IMG_CACHE/debootstrap.log" >&2
      [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
      return 1
    fi
    log "base: debootstrap took $((SECONDS - t0))s"
    step "base: finalize rootfs"
    bash "$IMG_DIR/base/finalize.sh" "$rootfs" >&2
    step "base: pack rootfs into $tarball"
    tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  else
    log "base: reusing cached rootfs $tarball"
  fi
  step "base: docker import $ref"
  "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL appstack.inputs-hash=$key" \
    --change 'CMD ["/bin/bash"]' \
    - "$ref" <"$tarball" >/dev/null
  log "base: $ref imported"
}

# ------------------------------------------------------------------------- monitoring rootfs
mon_packages() { grep -v '^\s*#' "$MON_DIR/packages.txt" | tr -s ' \n' '\n' | sed '/^$/d' | sort -u; }
mon_key() { { echo "suite=$SUITE variant=minbase arch=$(dpkg --print-architecture 2>/dev/null || uname -m) rootfs=monitoring";
  mon_packages; cat "$MON_DIR/finalize.sh"; } | sha; }
mon_base_ref() { echo "appstack.local/monitoring-base:$SUITE-$(mon_key | cut -c1-8)"; }

build_monitoring_base() { # the same steps as build_base, on the monitoring package list
  local key ref tarball
  key="$(mon_key)"; ref="$(mon_base_ref)"
  if [ "$(image_hash_label "$ref")" = "$key" ]; then log "monitoring-base: $ref up to date"; return 0; fi
  mkdir -p "$IMG_CACHE"
  tarball="$IMG_CACHE/rootfs-monitoring-$SUITE-${key:0:16}.tar"
  if [ ! -s "$tarball" ]; then
    [ "$(id -u)" = 0 ] || { STEP="monitoring-base: debootstrap needs root"; return 1; }
    command -v debootstrap >/dev/null 2>&1 || { STEP="monitoring-base: debootstrap missing (tools/system-deps.sh)"; return 1; }
    local rootfs="$IMG_CACHE/rootfs-monitoring-$SUITE-${key:0:16}.tmp"
    rm -rf "$rootfs"; mkdir -p "$rootfs"
    local pkgs; pkgs="$(mon_packages | paste -sd, -)"
    step "monitoring-base: debootstrap --variant=minbase $SUITE ($pkgs) (log $IMG_CACHE/debootstrap-monitoring.log)"
    local t0=$SECONDS
    if ! nice debootstrap --variant=minbase --keyring="$KEYRING" --include="$pkgs" \
         "$SUITE" "$rootfs" "$MIRROR" >"$IMG_CACHE/debootstrap-monitoring.log" 2>&1; then
      tail -n 30 "$IMG_CACHE/debootstrap-monitoring.log" >&2
      [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
      return 1
    fi
    log "monitoring-base: debootstrap took $((SECONDS - t0))s"
    step "monitoring-base: finalize rootfs"
    bash "$MON_DIR/finalize.sh" "$rootfs" >&2
    step "monitoring-base: pack rootfs into $tarball"
    tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  else
    log "monitoring-base: reusing cached rootfs $tarball"
  fi
  step "monitoring-base: docker import $ref"
  "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL appstack.inputs-hash=$key" \
    --change 'CMD ["/bin/bash"]' \
    - "$ref" <"$tarball" >/dev/null
  log "monitoring-base: $ref imported"
}

mon_build() { # mon_build REF CONTEXT_DIR PACKAGE VERSION: docker_build on the monitoring rootfs
  local ref="$1" ctx="$2" pkg="$3" ver="$4" base; base="$(mon_base_ref)"
  local h; h="$(context_hash "$ctx" "base=$base:$(mon_key)" "package=$pkg" "version=$ver")"
  if [ "$(image_hash_label "$ref")" = "$h" ]; then log "$ref up to date (${h:0:12})"; return 0; fi
  step "build $ref"
  local t0=$SECONDS
  if ! "$DOCKER" build -q --build-arg "BASE=$base" --build-arg "PACKAGE=$pkg" --build-arg "VERSION=$ver" \
       --label "appstack.inputs-hash=$h" -t "$ref" "$ctx" >/dev/null 2>"$IMG_CACHE/build.err"; then
    cat "$IMG_CACHE/build.err" >&2
    return 1
  fi
  log "built $ref in $((SECONDS - t0))s"
}

build_monitoring() {
  build_monitoring_base
  mon_build "appstack.local/prometheus:$PROMETHEUS_VERSION" "$IMG_DIR/prometheus" prometheus "$PROMETHEUS_VERSION"
  mon_build "appstack.local/alertmanager:$ALERTMANAGER_VERSION" "$IMG_DIR/alertmanager" \
    prometheus-alertmanager "$ALERTMANAGER_VERSION"
  mon_build "appstack.local/postgres-exporter:$POSTGRES_EXPORTER_VERSION" "$IMG_DIR/postgres-exporter" \
    prometheus-postgres-exporter "$POSTGRES_EXPORTER_VERSION"
  mon_build "appstack.local/blackbox-exporter:$BLACKBOX_EXPORTER_VERSION" "$IMG_DIR/blackbox-exporter" \
    prometheus-blackbox-exporter "$BLACKBOX_EXPORTER_VERSION"
}

# ----------------------------------------------------------------------------- derived images
# docker_build REF CONTEXT_DIR [--build-arg ...]: skip when the label matches.
docker_build() {
  local ref="$1" ctx="$2"; shift 2
  local base; base="$(base_ref)"
  local h; h="$(context_hash "$ctx" "base=$base:$(base_key)" "$@")"
  if [ "$(image_hash_label "$ref")" = "$h" ]; then log "$ref up to date (${h:0:12})"; return 0; fi
  step "build $ref"
  local t0=$SECONDS
  if ! "$DOCKER" build -q --build-arg "BASE=$base" "$@" \
       --label "appstack.inputs-hash=$h" -t "$ref" "$ctx" >/dev/null 2>"$IMG_CACHE/build.err"; then
    # re-run verbosely so the failing Dockerfile step is visible
    "$DOCKER" build --build-arg "BASE=$base" "$@" --label "appstack.inputs-hash=$h" -t "$ref" "$ctx" >&2 || true
    return 1
  fi
  log "built $ref in $((SECONDS - t0))s"
}

tmp_ctx() { mktemp -d "${TMPDIR:-/tmp}/appstack-img.XXXXXX"; }

build_postgres() {
  docker_build "$POSTGRES_REF" "$IMG_DIR/postgres-pgvector"
}

build_qdrant() {
  docker_build "$QDRANT_REF" "$IMG_DIR/qdrant-double"
}

build_ollama() {
  docker_build "$OLLAMA_REF" "$IMG_DIR/ollama-double"
}

build_caddy() {
  docker_build "$CADDY_REF" "$IMG_DIR/caddy"
}

haven_schema_files() { # tag -> relative schema paths from the manifest
  awk -v t="$1" '!/^#/ && NF>=2 && $1==t { for (i=2;i<=NF;i++) print $i }' "$APP_DIR/schema/MANIFEST"
}

haven_context() { # haven_context TAG DIR: assemble Haven's build context for TAG into DIR
  local tag="$1" ctx="$2" f
  grep -qE "^$tag( |$)" "$APP_DIR/schema/MANIFEST" || { STEP="haven $tag: tag missing from schema MANIFEST"; return 1; }
  step "haven $tag: assemble build context"
  cp "$IMG_DIR/haven/Dockerfile" "$ctx/Dockerfile"
  mkdir -p "$ctx/app/schema/migrations" "$ctx/app/fixtures"
  cp "$APP_DIR"/*.py "$ctx/app/"
  cp "$APP_DIR/healthcheck.sh" "$ctx/haven-healthcheck"
  while read -r f; do
    [ -n "$f" ] || continue
    [ -f "$APP_DIR/schema/$f" ] || { STEP="haven $tag: schema file $f missing"; return 1; }
    case "$f" in
      */init.sql) cp "$APP_DIR/schema/$f" "$ctx/app/schema/init.sql" ;;
      migrations/*) cp "$APP_DIR/schema/$f" "$ctx/app/schema/migrations/" ;;
      *) cp "$APP_DIR/schema/$f" "$ctx/app/schema/" ;;
    esac
  done < <(haven_schema_files "$tag")
  [ -f "$ctx/app/schema/init.sql" ] || { STEP="haven $tag: no init.sql in MANIFEST"; return 1; }
  cp "$APP_DIR/schema/legacy/v1_init.sql" "$ctx/app/fixtures/v1_init.sql"
}

build_haven() { # build_haven TAG
  local tag="$1" ctx svc
  ctx="$(tmp_ctx)"
  haven_context "$tag" "$ctx" || { rm -rf "$ctx"; return 1; }
  for svc in "${HAVEN_SERVICES[@]}"; do
    docker_build "appstack.local/haven-$svc:$tag" "$ctx" \
      --build-arg "SERVICE=$svc" --build-arg "HAVEN_VERSION=$tag" || { rm -rf "$ctx"; return 1; }
  done
  rm -rf "$ctx"
}

haven_source() { # haven_source TAG DIR: Haven's source as its own repository has it (Dockerfile at
  # the root, building with a plain `docker build --build-arg SERVICE=...`): the context of TAG,
  # its base image pinned as the Dockerfile's default (`appstack release` e2e).
  local tag="$1" dir="$2"
  mkdir -p "$dir"
  haven_context "$tag" "$dir"
  sed -i "s|^ARG BASE\$|ARG BASE=$(base_ref)|; s|^ARG HAVEN_VERSION=dev\$|ARG HAVEN_VERSION=$tag|" "$dir/Dockerfile"
  STEP="done"
}

engramia_release() { # tag -> "app_version head writes_tags" from the RELEASES manifest
  awk -v t="$1" '!/^#/ && NF>=4 && $1==t { print $2, $3, $4 }' "$ENGRAMIA_DIR/RELEASES"
}

engramia_wheels_dir() { # the cache dir of the pinned wheels: keyed by the pins (and the target)
  local key
  key="$({ cat "$IMG_DIR/engramia/wheels.txt"; echo "python=$ENGRAMIA_PYTHON arch=$(uname -m)"; } | sha | cut -c1-16)"
  echo "$IMG_CACHE/wheels/engramia-$key"
}

engramia_fetch_wheels() { # fill the cache dir once with `pip download` (hash-checked)
  local dir pip; dir="$(engramia_wheels_dir)"
  if [ -f "$dir/.complete" ]; then return 0; fi
  if [ -x "$ROOT/.venv/bin/pip" ]; then pip="$ROOT/.venv/bin/pip"
  elif python3 -m pip --version >/dev/null 2>&1; then pip="python3 -m pip"
  else STEP="engramia: no pip to download its wheels with (run make venv)"; return 1; fi
  step "engramia: pip download the pinned wheels of tools/images/engramia/wheels.txt into $dir"
  rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
  # shellcheck disable=SC2086
  if ! $pip download --disable-pip-version-check --no-deps --only-binary=:all: \
       --python-version "$ENGRAMIA_PYTHON" --implementation cp \
       --platform "manylinux2014_$(uname -m)" --platform "manylinux_2_17_$(uname -m)" \
       --platform "manylinux_2_28_$(uname -m)" --require-hashes \
       -r "$IMG_DIR/engramia/wheels.txt" -d "$dir.tmp" >"$IMG_CACHE/engramia-wheels.log" 2>&1; then
    tail -n 20 "$IMG_CACHE/engramia-wheels.log" >&2; rm -rf "$dir.tmp"; return 1
  fi
  touch "$dir.tmp/.complete"; rm -rf "$dir"; mv "$dir.tmp" "$dir"
}

engramia_hash() { # tag -> hash of every input of that tag's image
  local tag="$1"
  { context_hash "$IMG_DIR/engramia" "base=$(base_ref):$(base_key)" "tag=$tag" \
      "release=$(engramia_release "$tag")" "python=$ENGRAMIA_PYTHON";
    context_hash "$ENGRAMIA_DIR"; } | sha
}

build_engramia() { # build_engramia TAG
  local tag="$1" ref="appstack.local/engramia:$1" rel version head tags h
  rel="$(engramia_release "$tag")"
  [ -n "$rel" ] || { STEP="engramia $tag: tag missing from tests/e2e/app/engramia/RELEASES"; return 1; }
  read -r version head tags <<<"$rel"
  h="$(engramia_hash "$tag")"
  if [ "$(image_hash_label "$ref")" = "$h" ]; then log "$ref up to date (${h:0:12})"; return 0; fi
  local wheels ctx rev f
  engramia_fetch_wheels || return 1
  wheels="$(engramia_wheels_dir)"
  step "engramia $tag: assemble build context (revisions up to $head, reports $version)"
  ctx="$(tmp_ctx)"
  cp "$IMG_DIR/engramia/Dockerfile" "$ctx/Dockerfile"
  mkdir -p "$ctx/wheels" "$ctx/app/migrations/versions"
  cp "$wheels"/*.whl "$ctx/wheels/"
  cp "$ENGRAMIA_DIR/engramia.py" "$ENGRAMIA_DIR/alembic.ini" "$ctx/app/"
  cp "$ENGRAMIA_DIR/migrations/env.py" "$ctx/app/migrations/"
  for f in "$ENGRAMIA_DIR"/migrations/versions/[0-9]*.py; do
    rev="$(basename "$f" | cut -d_ -f1)"
    if [[ ! "$rev" > "$head" ]]; then cp "$f" "$ctx/app/migrations/versions/"; fi
  done
  [ -n "$(ls "$ctx/app/migrations/versions/${head}_"*.py 2>/dev/null)" ] \
    || { STEP="engramia $tag: no revision $head in migrations/versions"; rm -rf "$ctx"; return 1; }
  printf '{"app_version": "%s", "expected_revision": "%s", "writes_tags": %s}\n' \
    "$version" "$head" "$tags" >"$ctx/app/release.json"
  step "build $ref"
  local t0=$SECONDS
  if ! "$DOCKER" build -q --build-arg "BASE=$(base_ref)" --build-arg "APP_VERSION=$version" \
       --build-arg "GIT_COMMIT=${h:0:12}" --build-arg "BUILD_TIME=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
       --label "appstack.inputs-hash=$h" -t "$ref" "$ctx" >/dev/null 2>"$IMG_CACHE/build.err"; then
    cat "$IMG_CACHE/build.err" >&2
    rm -rf "$ctx"; return 1
  fi
  rm -rf "$ctx"
  log "built $ref in $((SECONDS - t0))s"
}

build_minio_binaries() { # -> $IMG_CACHE/bin/{minio,mc}-<version>
  mkdir -p "$IMG_CACHE/bin"
  command -v go >/dev/null 2>&1 || { STEP="minio: Go toolchain missing (needs go >= 1.24)"; return 1; }
  local out="$IMG_CACHE/bin/minio-$MINIO_VERSION"
  if [ ! -x "$out" ]; then
    local ts commit ver rel
    ts="$(echo "$MINIO_VERSION" | cut -d- -f2)"; commit="$(echo "$MINIO_VERSION" | cut -d- -f3)"
    ver="${ts:0:4}-${ts:4:2}-${ts:6:2}T${ts:8:2}:${ts:10:2}:${ts:12:2}Z"
    rel="RELEASE.${ts:0:4}-${ts:4:2}-${ts:6:2}T${ts:8:2}-${ts:10:2}-${ts:12:2}Z"
    local p=github.com/minio/minio/cmd
    step "minio: go install $MINIO_MODULE@$MINIO_VERSION (CGO_ENABLED=0, log $IMG_CACHE/minio-build.log)"
    local gobin t0=$SECONDS; gobin="$(tmp_ctx)"
    if ! CGO_ENABLED=0 GOBIN="$gobin" GOFLAGS=-buildvcs=false go install -trimpath \
        -ldflags "-s -w -X $p.Version=$ver -X $p.ReleaseTag=$rel -X $p.CommitID=$commit -X $p.ShortCommitID=${commit:0:12} -X $p.CopyrightYear=${ts:0:4}" \
        "$MINIO_MODULE@$MINIO_VERSION" >"$IMG_CACHE/minio-build.log" 2>&1; then
      tail -n 30 "$IMG_CACHE/minio-build.log" >&2; rm -rf "$gobin"; return 1
    fi
    mv "$gobin/minio" "$out"; rm -rf "$gobin"
    log "minio: built in $((SECONDS - t0))s"
  fi
  if [ "$WITH_MC" = true ] && [ ! -x "$IMG_CACHE/bin/mc-$MC_VERSION" ]; then
    step "minio: go install $MC_MODULE@$MC_VERSION (log $IMG_CACHE/mc-build.log)"
    local gobin t0=$SECONDS; gobin="$(tmp_ctx)"
    if CGO_ENABLED=0 GOBIN="$gobin" GOFLAGS=-buildvcs=false go install -trimpath -ldflags "-s -w" \
        "$MC_MODULE@$MC_VERSION" >"$IMG_CACHE/mc-build.log" 2>&1; then
      mv "$gobin/mc" "$IMG_CACHE/bin/mc-$MC_VERSION"; log "mc: built in $((SECONDS - t0))s"
    else
      log "mc: build failed (image ships appstack-mkbucket only); see $IMG_CACHE/mc-build.log"
    fi
    rm -rf "$gobin"
  fi
}

minio_hash() {
  context_hash "$IMG_DIR/minio" "base=$(base_ref):$(base_key)" "minio=$MINIO_VERSION" "mc=$WITH_MC:$MC_VERSION"
}

build_minio() {
  local base; base="$(base_ref)"
  # Decide from the inputs alone whether anything must be compiled.
  local h; h="$(minio_hash)"
  if [ "$(image_hash_label "$MINIO_REF")" = "$h" ]; then log "$MINIO_REF up to date (${h:0:12})"; return 0; fi
  build_minio_binaries
  local ctx; ctx="$(tmp_ctx)"
  cp -r "$IMG_DIR/minio/." "$ctx/"
  mkdir -p "$ctx/bin"
  cp "$IMG_CACHE/bin/minio-$MINIO_VERSION" "$ctx/bin/minio"
  if [ "$WITH_MC" = true ] && [ -x "$IMG_CACHE/bin/mc-$MC_VERSION" ]; then
    cp "$IMG_CACHE/bin/mc-$MC_VERSION" "$ctx/bin/mc"
  fi
  step "build $MINIO_REF"
  local t0=$SECONDS
  if ! "$DOCKER" build -q --build-arg "BASE=$base" --build-arg "MINIO_VERSION=$MINIO_VERSION" \
       --label "appstack.inputs-hash=$h" -t "$MINIO_REF" "$ctx" >/dev/null 2>"$IMG_CACHE/build.err"; then
    cat "$IMG_CACHE/build.err" >&2
    rm -rf "$ctx"; return 1
  fi
  rm -rf "$ctx"
  log "built $MINIO_REF in $((SECONDS - t0))s"
}

# ------------------------------------------------------------------------------------- CLI
all_refs() {
  echo "$(base_ref)"
  echo "$POSTGRES_REF"
  local t s
  for t in "${HAVEN_TAGS[@]}"; do for s in "${HAVEN_SERVICES[@]}"; do echo "appstack.local/haven-$s:$t"; done; done
  echo "$QDRANT_REF"
  echo "$MINIO_REF"
  echo "$OLLAMA_REF"
  echo "$CADDY_REF"
  for t in "${ENGRAMIA_TAGS[@]}"; do echo "appstack.local/engramia:$t"; done
  echo "$(mon_base_ref)"
  echo "appstack.local/prometheus:$PROMETHEUS_VERSION"
  echo "appstack.local/alertmanager:$ALERTMANAGER_VERSION"
  echo "appstack.local/postgres-exporter:$POSTGRES_EXPORTER_VERSION"
  echo "appstack.local/blackbox-exporter:$BLACKBOX_EXPORTER_VERSION"
}

names() {
  echo base postgres haven qdrant minio ollama caddy engramia monitoring
  local t
  for t in "${HAVEN_TAGS[@]}"; do echo "haven:$t"; done
  for t in "${ENGRAMIA_TAGS[@]}"; do echo "engramia:$t"; done
}

build_one() {
  case "$1" in
    base) build_base ;;
    postgres|postgres-pgvector) build_postgres ;;
    qdrant) build_qdrant ;;
    ollama) build_ollama ;;
    caddy) build_caddy ;;
    minio) build_minio ;;
    monitoring) build_monitoring ;;
    haven) local t; for t in "${HAVEN_TAGS[@]}"; do build_haven "$t"; done ;;
    haven:*) build_haven "${1#haven:}" ;;
    engramia) local t; for t in "${ENGRAMIA_TAGS[@]}"; do build_engramia "$t"; done ;;
    engramia:*) build_engramia "${1#engramia:}" ;;
    *) STEP="unknown image name '$1' (try: $(names | paste -sd' ' -))"; return 1 ;;
  esac
}

cmd_build() {
  [ $# -gt 0 ] || set -- all
  if [ "$1" = all ]; then set -- postgres haven qdrant ollama caddy engramia minio monitoring; fi
  step "check Docker engine"
  if ! "$DOCKER" info >/dev/null 2>&1 && [ -z "${DOCKER_HOST:-}" ]; then
    # fall back to the private engine of tools/docker-engine.sh when it runs
    eval "$("$ROOT/tools/docker-engine.sh" env 2>/dev/null)" || true
    [ -n "${DOCKER_HOST:-}" ] && log "using the engine of tools/docker-engine.sh: $DOCKER_HOST"
  fi
  "$DOCKER" info >/dev/null 2>&1 || { STEP="no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); run: eval \"\$(tools/docker-engine.sh start)\""; return 1; }
  mkdir -p "$IMG_CACHE"
  local t0=$SECONDS n
  # (MinIO is compiled after debootstrap, not beside it: on 2 cores running both at once was
  # measured slower, 5m16s vs 3m51s cold.)
  build_base
  for n in "$@"; do [ "$n" = base ] || build_one "$n"; done
  step "remove superseded (untagged) appstack images"
  "$DOCKER" image prune -f --filter label=appstack.inputs-hash >/dev/null || true
  STEP="done"
  log "all requested images ready in $((SECONDS - t0))s"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  list) all_refs ;;
  tags) printf '%s\n' "${HAVEN_TAGS[@]}" ;;
  engramia-tags) printf '%s\n' "${ENGRAMIA_TAGS[@]}" ;;
  names) names ;;
  haven-source) shift; haven_source "$@" ;;
  *) echo "usage: $0 build [all|NAME...] | list | tags | engramia-tags | names | haven-source TAG DIR" >&2; exit 2 ;;
esac
