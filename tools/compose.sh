#!/usr/bin/env bash
# tools/compose.sh — Docker Compose v2 for the deploy benchmark (bench/deploy.py), built from the
# Go module proxy (no release download, no registry), cached outside the repo.
#
#   tools/compose.sh ensure     build (once) and install as a docker CLI plugin; the last stdout
#                               line is an `export ...` line for eval
#   tools/compose.sh path       print the cached binary's path (no building; exit 1 if missing)
#   tools/compose.sh status     what is cached / installed
#
# The binary is `github.com/docker/compose/v2/cmd` at $COMPOSE_VERSION, built in a writable copy
# of the module (its go.mod has `exclude` directives, so `go install module/cmd@version` refuses
# it; no `replace`s), CGO_ENABLED=0, -trimpath, version stamped as upstream's Makefile does. It lands in
# ${APPSTACK_CACHE:-$HOME/.cache/appstack}/compose-$COMPOSE_VERSION/cli-plugins/docker-compose and
# is linked into ${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/ (if that is not writable, the
# export line sets DOCKER_CONFIG to the cache dir instead). A cached run is instant.
# Progress goes to stderr; stdout carries only the results above.
set -euo pipefail

COMPOSE_VERSION="${APPSTACK_COMPOSE_VERSION:-v2.39.1}"
MODULE=github.com/docker/compose/v2
CACHE="${APPSTACK_CACHE:-$HOME/.cache/appstack}"
DIR="$CACHE/compose-$COMPOSE_VERSION"
BIN="$DIR/cli-plugins/docker-compose"

log() { printf 'compose: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

built() { [[ -x "$BIN" ]] && "$BIN" version --short 2>/dev/null | grep -qx "${COMPOSE_VERSION#v}"; }

build() {
  command -v go >/dev/null 2>&1 || die "go not found (needed to build docker compose from the module proxy)"
  mkdir -p "$DIR/cli-plugins"
  local tmp logf t0=$SECONDS
  tmp="$(mktemp -d "$DIR/build.XXXXXX")"
  logf="$DIR/build.log"; : >"$logf"
  log "building $MODULE/cmd@$COMPOSE_VERSION (CGO_ENABLED=0, -trimpath; minutes on 2 cores; log $logf)"
  export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOWORK=off GOFLAGS="-buildvcs=false" CGO_ENABLED=0
  # Compose's go.mod has `exclude` directives, which `go install module/cmd@version` refuses:
  # build in a writable copy of the module (fetched from the proxy), as its own main module.
  local src
  src="$(cd "$tmp" && go mod download -json "$MODULE@$COMPOSE_VERSION" 2>>"$logf" \
         | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')" || true
  [[ -n "$src" && -f "$src/go.mod" ]] || { tail -n 25 "$logf" >&2; rm -rf "$tmp"; die "go mod download $MODULE@$COMPOSE_VERSION"; }
  cp -r "$src/." "$tmp/src"
  chmod -R u+w "$tmp/src"
  if ! (cd "$tmp/src" && go build -p "${COMPOSE_GO_P:-2}" -trimpath \
          -ldflags "-s -w -X $MODULE/internal.Version=$COMPOSE_VERSION" \
          -o "$tmp/cmd" ./cmd) >>"$logf" 2>&1; then
    tail -n 25 "$logf" | sed 's/^/    /' >&2
    rm -rf "$tmp"
    die "go build ./cmd in a copy of $MODULE@$COMPOSE_VERSION"
  fi
  mv -f "$tmp/cmd" "$BIN"
  rm -rf "$tmp"
  built || die "built binary does not report version $COMPOSE_VERSION"
  log "built in $((SECONDS - t0))s: $BIN"
}

install_plugin() { # -> prints the export line
  local cfg="${DOCKER_CONFIG:-$HOME/.docker}"
  if mkdir -p "$cfg/cli-plugins" 2>/dev/null && ln -sfn "$BIN" "$cfg/cli-plugins/docker-compose" 2>/dev/null; then
    log "plugin: $cfg/cli-plugins/docker-compose -> $BIN"
    printf 'export APPSTACK_COMPOSE=%q\n' "$BIN"
  else
    log "plugin: $cfg not writable; using DOCKER_CONFIG=$DIR"
    printf 'export APPSTACK_COMPOSE=%q DOCKER_CONFIG=%q\n' "$BIN" "$DIR"
  fi
}

cmd="${1:-ensure}"
case "$cmd" in
  ensure)
    if built; then log "cached: $BIN ($COMPOSE_VERSION)"; else build; fi
    install_plugin
    ;;
  path)
    built || { log "not built: run tools/compose.sh ensure"; exit 1; }
    printf '%s\n' "$BIN"
    ;;
  status)
    if built; then log "built: $BIN"; else log "missing: $BIN"; fi
    cfg="${DOCKER_CONFIG:-$HOME/.docker}"
    if [[ -e "$cfg/cli-plugins/docker-compose" ]]; then
      log "plugin: $cfg/cli-plugins/docker-compose -> $(readlink -f "$cfg/cli-plugins/docker-compose")"
    else
      log "plugin: not installed in $cfg/cli-plugins"
    fi
    built
    ;;
  -h|--help|help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2 ;;
  *) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
