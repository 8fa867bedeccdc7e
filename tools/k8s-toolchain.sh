#!/usr/bin/env bash
# The cluster toolchain: a real Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl), etcd, kwok (fake nodes and pods) and the real pulumi-kubernetes
# resource plugin, each built from the Go module proxy only and cached outside the repo by a hash
# of its inputs. tools/cluster.sh runs them; see docs/kubernetes.md ("A real control plane").
#
#   tools/k8s-toolchain.sh ensure [kubernetes|etcd|kwok|provider|all]...
#                                  build what is missing (default all), install the plugin into
#                                  the Pulumi plugin dir ($PULUMI_HOME/plugins); last stdout line
#                                  = absolute bin dir (the cluster's binaries, not the plugin)
#   tools/k8s-toolchain.sh status  ready / missing per component; exit 0 only when all are ready
#   tools/k8s-toolchain.sh bindir  print the bin dir (builds nothing)
#   tools/k8s-toolchain.sh env     `export PATH=...` for eval (warns about what is missing)
#   tools/k8s-toolchain.sh versions  the module versions it builds
#   tools/k8s-toolchain.sh key COMPONENT  the input hash that names COMPONENT's cache entry
#   tools/k8s-toolchain.sh seconds  build seconds recorded per component (for bench/k8s.py)
#
# Progress goes to stderr; stdout carries only the results above. Long builds run under `nice`.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
REQUIREMENTS="${APPSTACK_REQUIREMENTS:-$REPO_ROOT/requirements.txt}"
CACHE_ROOT="${APPSTACK_CACHE:-$HOME/.cache/appstack}/k8s-toolchain"
BIN_DIR="$CACHE_ROOT/bin"
STAMP=".stamp"
# Part of every input hash: bump it to rebuild everything (the recipe functions are hashed too).
RECIPE=1

KUBERNETES_VERSION=1.37.2
STAGING_VERSION=0.37.2 # k8s.io/api, k8s.io/apiserver, ... are published at v0.<minor>.<patch>
ETCD_VERSION=3.7.0
KWOK_VERSION=0.8.0
# The proxy serves the provider module only at this pseudo-version (code of 4.25.0; tagged
# versions answer 403). It is built as, and reports, PROVIDER_VERSION; the Python SDK is pinned to
# the same version in requirements.txt (`pulumi-kubernetes==`), checked below.
PROVIDER_MODULE_VERSION=v4.0.0-20260115033456-f47bc2d6f199
PROVIDER_VERSION=4.25.0

COMPONENTS=(kubernetes etcd kwok provider)
KUBERNETES_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOWORK=off
export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false -mod=mod"
GO_P="${TOOLCHAIN_GO_P:-2}"
NICE=(nice -n "${APPSTACK_NICE:-10}")

CURRENT_STEP="startup"
CURRENT_LOG=""
log() { printf 'k8s-toolchain: %s\n' "$*" >&2; }
die() { printf 'k8s-toolchain: FAILED at step "%s": %s\n' "$CURRENT_STEP" "$*" >&2; exit 1; }
step() { CURRENT_STEP="$1"; log "$1"; }
on_err() {
  local rc=$?
  printf 'k8s-toolchain: FAILED at step "%s" (exit %s; command: %s)\n' "$CURRENT_STEP" "$rc" "$BASH_COMMAND" >&2
  if [[ -n "$CURRENT_LOG" && -f "$CURRENT_LOG" ]]; then
    printf 'k8s-toolchain: last lines of %s:\n' "$CURRENT_LOG" >&2
    tail -n 25 "$CURRENT_LOG" | sed 's/^/    /' >&2
  fi
  exit "$rc"
}
trap on_err ERR
usage() { sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; }

# ---------------------------------------------------------------------------------------------
# Module helpers (Go module proxy only)
# ---------------------------------------------------------------------------------------------
NOMOD_DIR=""
cleanup() { [[ -n "$NOMOD_DIR" ]] && rm -rf "$NOMOD_DIR"; return 0; }
trap cleanup EXIT

copy_module() { # copy_module MODULE VERSION DEST: writable copy of the module's source
  local mod="$1" ver="$2" dest="$3" out dir
  [[ -n "$NOMOD_DIR" ]] || NOMOD_DIR="$(mktemp -d)"
  out="$(cd "$NOMOD_DIR" && GOFLAGS=-buildvcs=false go mod download -json "$mod@$ver" 2>&1)" || true
  dir="$(printf '%s' "$out" | python3 -c 'import json,sys
try: d=json.load(sys.stdin)
except Exception: d={}
print(d.get("Dir","") if not d.get("Error") else "")')"
  [[ -n "$dir" && -d "$dir" ]] || die "the module proxy did not serve $mod@$ver (GOPROXY=$(go env GOPROXY)): $(printf '%s' "$out" | tail -n 3)"
  rm -rf "$dest"; mkdir -p "$(dirname "$dest")"
  cp -r "$dir" "$dest"
  chmod -R u+w "$dest"
}

go_build() { # go_build LOG DIR PKG OUT LDFLAGS
  local logf="$1" dir="$2" pkg="$3" out="$4" ldflags="$5"
  CURRENT_LOG="$logf"
  log "  go build $pkg -> $(basename "$out")"
  (cd "$dir" && "${NICE[@]}" go build -p "$GO_P" -trimpath -ldflags "$ldflags" -o "$out" "$pkg") >>"$logf" 2>&1 \
    || die "go build $pkg in $dir failed (log: $logf)"
  CURRENT_LOG=""
}

sdk_pin() { # the pulumi-kubernetes pin of requirements.txt
  sed -n 's/^[[:space:]]*pulumi-kubernetes[[:space:]]*==[[:space:]]*\([^[:space:]#;]*\).*/\1/p' "$REQUIREMENTS" | head -n1
}

# ---------------------------------------------------------------------------------------------
# Recipes. Each builds into $1 (bin/ and share/ under it). The text of these functions is part
# of the input hash, so editing a recipe rebuilds exactly that component.
# ---------------------------------------------------------------------------------------------
build_kubernetes() {
  local out="$1" src="$1/src/kubernetes" logf="$1/build.log" mod ldflags="" key
  step "kubernetes v$KUBERNETES_VERSION: fetch k8s.io/kubernetes"
  copy_module k8s.io/kubernetes "v$KUBERNETES_VERSION" "$src"
  # The module zip has no staging/ tree: use the published staging modules instead of the
  # workspace and the vendor dir.
  rm -rf "$src/go.work" "$src/go.work.sum" "$src/vendor"
  step "kubernetes v$KUBERNETES_VERSION: staging modules at v$STAGING_VERSION"
  while read -r mod; do
    (cd "$src" && go mod edit -dropreplace="$mod" -require="$mod@v$STAGING_VERSION")
  done < <(sed -n 's/^[[:space:]]*\(k8s\.io\/[a-z0-9-]*\)[[:space:]]*=>[[:space:]]*\.\/staging\/.*/\1/p' "$src/go.mod")
  if grep -q '=> ./staging' "$src/go.mod"; then die "staging replaces left in go.mod"; fi
  for key in gitVersion=v$KUBERNETES_VERSION gitMajor=${KUBERNETES_VERSION%%.*} \
    gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) gitTreeState=clean \
    buildDate=1970-01-01T00:00:00Z; do
    ldflags+=" -X k8s.io/component-base/version.$key -X k8s.io/client-go/pkg/version.$key"
  done
  step "kubernetes v$KUBERNETES_VERSION: build ${KUBERNETES_BINS[*]} (log $logf)"
  local b
  for b in "${KUBERNETES_BINS[@]}"; do
    go_build "$logf" "$src" "./cmd/$b" "$out/bin/$b" "-s -w$ldflags"
  done
  "$out/bin/kube-apiserver" --version | grep -qx "Kubernetes v$KUBERNETES_VERSION" \
    || die "kube-apiserver reports '$("$out/bin/kube-apiserver" --version)', expected v$KUBERNETES_VERSION"
}

build_etcd() {
  local out="$1" src="$1/src/etcd" logf="$1/build.log" m
  step "etcd v$ETCD_VERSION: fetch go.etcd.io/etcd/server/v3"
  copy_module go.etcd.io/etcd/server/v3 "v$ETCD_VERSION" "$src/server"
  # The server module replaces its siblings with ../ paths: take the published ones instead.
  for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do
    (cd "$src/server" && go mod edit -dropreplace="go.etcd.io/etcd/$m" -require="go.etcd.io/etcd/$m@v$ETCD_VERSION")
  done
  if grep -q '=> \.\./' "$src/server/go.mod"; then die "local replaces left in etcd's go.mod"; fi
  step "etcd v$ETCD_VERSION: build (log $logf)"
  go_build "$logf" "$src/server" . "$out/bin/etcd" "-s -w"
  "$out/bin/etcd" --version | grep -q "etcd Version: $ETCD_VERSION" || die "etcd reports the wrong version"
}

build_kwok() {
  local out="$1" src="$1/src/kwok" logf="$1/build.log"
  step "kwok v$KWOK_VERSION: fetch sigs.k8s.io/kwok"
  copy_module sigs.k8s.io/kwok "v$KWOK_VERSION" "$src"
  step "kwok v$KWOK_VERSION: build (log $logf)"
  go_build "$logf" "$src" ./cmd/kwok "$out/bin/kwok" "-s -w"
  # The node stages kwok ships (initialize, heartbeat with lease) and its pod-delete stage:
  # tools/cluster.sh passes them with --config, beside appstack's own pod stages.
  mkdir -p "$out/share/stages"
  cp "$src/kustomize/stage/node/fast/node-initialize.yaml" \
    "$src/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    "$src/kustomize/stage/pod/general/pod-delete.yaml" "$out/share/stages/"
}

build_provider() {
  local out="$1" src="$1/src/provider" logf="$1/build.log"
  local pkg=github.com/pulumi/pulumi-kubernetes/provider/v4
  step "provider $PROVIDER_VERSION: fetch $pkg@$PROVIDER_MODULE_VERSION"
  copy_module "$pkg" "$PROVIDER_MODULE_VERSION" "$src"
  # `replace sdk/v4 => ../sdk` points into a checkout the module zip does not have.
  (cd "$src" && go mod edit -dropreplace=github.com/pulumi/pulumi-kubernetes/sdk/v4 \
    -require="github.com/pulumi/pulumi-kubernetes/sdk/v4@v$PROVIDER_VERSION")
  step "provider $PROVIDER_VERSION: embed the schema (generate.go, no download; log $logf)"
  CURRENT_LOG="$logf"
  (cd "$src/cmd/pulumi-resource-kubernetes" && VERSION="$PROVIDER_VERSION" "${NICE[@]}" go run generate.go) >>"$logf" 2>&1 \
    || die "go run generate.go failed (log: $logf)"
  CURRENT_LOG=""
  step "provider $PROVIDER_VERSION: build pulumi-resource-kubernetes (log $logf)"
  go_build "$logf" "$src" ./cmd/pulumi-resource-kubernetes "$out/bin/pulumi-resource-kubernetes" \
    "-s -w -X $pkg/pkg/version.Version=$PROVIDER_VERSION"
}

component_bins() {
  case "$1" in
    kubernetes) echo "${KUBERNETES_BINS[@]}" ;;
    etcd) echo etcd ;;
    kwok) echo kwok ;;
    provider) echo pulumi-resource-kubernetes ;;
    *) die "unknown component '$1' (kubernetes|etcd|kwok|provider|all)" ;;
  esac
}

component_inputs() { # everything a component's build depends on, as text
  local c="$1"
  printf 'recipe=%s\ncomponent=%s\n' "$RECIPE" "$c"
  printf 'go=%s %s/%s\n' "$(go env GOVERSION 2>/dev/null || echo none)" "$(go env GOOS 2>/dev/null)" "$(go env GOARCH 2>/dev/null)"
  case "$c" in
    kubernetes) printf 'k8s.io/kubernetes@v%s staging@v%s\n' "$KUBERNETES_VERSION" "$STAGING_VERSION" ;;
    etcd) printf 'go.etcd.io/etcd/server/v3@v%s\n' "$ETCD_VERSION" ;;
    kwok) printf 'sigs.k8s.io/kwok@v%s\n' "$KWOK_VERSION" ;;
    provider) printf 'provider@%s as %s\n' "$PROVIDER_MODULE_VERSION" "$PROVIDER_VERSION" ;;
  esac
  declare -f "build_$c" copy_module go_build
}

component_key() { component_inputs "$1" | sha256sum | cut -c1-16; }
component_dir() { printf '%s/%s-%s\n' "$CACHE_ROOT" "$1" "$(component_key "$1")"; }

is_cached() {
  local dir b
  dir="$(component_dir "$1")"
  [[ -f "$dir/$STAMP" ]] || return 1
  for b in $(component_bins "$1"); do [[ -x "$dir/bin/$b" ]] || return 1; done
}

ensure_component() {
  local c="$1" dir tmp t0 t1
  dir="$(component_dir "$c")"
  if is_cached "$c"; then log "$c: cached in $dir"; return 0; fi
  command -v go >/dev/null || die "go is not on PATH (needed to build $c)"
  tmp="$dir.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp/bin"; : >"$tmp/build.log"
  log "$c: building into $dir (input hash $(component_key "$c"))"
  t0=$(date +%s)
  "build_$c" "$tmp"
  t1=$(date +%s)
  { component_inputs "$c" | head -n 4; echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "seconds=$((t1 - t0))"; } >"$tmp/$STAMP"
  [[ "${TOOLCHAIN_KEEP_SRC:-0}" == 1 ]] || rm -rf "$tmp/src"
  rm -rf "$dir"; mv "$tmp" "$dir"
  log "$c: built in $((t1 - t0))s"
}

# ---------------------------------------------------------------------------------------------
# The plugin: the engine finds a resource plugin in its plugin dir ($PULUMI_HOME/plugins) by the
# version the SDK asks for. A real dir `resource-kubernetes-vX` holding a link to the cached
# binary is an installed plugin (the engine skips symlinked dirs, and a plugin on $PATH makes it
# warn on every run).
# ---------------------------------------------------------------------------------------------
plugin_dir() { printf '%s/plugins/resource-kubernetes-v%s\n' "${PULUMI_HOME:-$HOME/.pulumi}" "$PROVIDER_VERSION"; }

install_plugin() {
  local dir target link cur
  dir="$(plugin_dir)"; target="$(component_dir provider)/bin/pulumi-resource-kubernetes"
  link="$dir/pulumi-resource-kubernetes"
  if [[ -e "$link" && ! -L "$link" ]]; then
    log "plugin: $link is an installed binary, not ours: leaving it"
    return 0
  fi
  cur="$(readlink "$link" 2>/dev/null || true)"
  if [[ "$cur" != "$target" ]]; then
    mkdir -p "$dir"; rm -f "$dir.partial"
    ln -sfn "$target" "$link"
    log "plugin: $link -> $target"
  fi
}

link_bin() { # bin/ (the dir for PATH) holds the cluster's binaries; the plugin is not among them
  local c b
  mkdir -p "$BIN_DIR"
  for c in kubernetes etcd kwok; do
    for b in $(component_bins "$c"); do
      if is_cached "$c"; then ln -sfn "$(component_dir "$c")/bin/$b" "$BIN_DIR/$b"; else rm -f "$BIN_DIR/$b"; fi
    done
  done
  # A plugin found on $PATH makes the engine warn "using ... from $PATH" on every run.
  rm -f "$BIN_DIR/pulumi-resource-kubernetes"
  if is_cached kwok; then ln -sfn "$(component_dir kwok)/share/stages" "$CACHE_ROOT/stages"; fi
}

check_sdk_pin() {
  local pin
  pin="$(sdk_pin)"
  [[ "$pin" == "$PROVIDER_VERSION" ]] || log "warning: requirements.txt pins pulumi-kubernetes==$pin but the plugin is $PROVIDER_VERSION: the engine asks for the SDK's version and will not find the plugin"
}

cmd_ensure() {
  local want=() c failed=()
  [[ $# -gt 0 ]] || set -- all
  for c in "$@"; do
    case "$c" in
      all) want+=("${COMPONENTS[@]}") ;;
      kubernetes|etcd|kwok|provider) want+=("$c") ;;
      *) usage; die "unknown component '$c' (kubernetes|etcd|kwok|provider|all)" ;;
    esac
  done
  check_sdk_pin
  mkdir -p "$CACHE_ROOT"
  exec 9>"$CACHE_ROOT/.lock"
  flock -n 9 || { log "waiting for another cluster toolchain build (lock $CACHE_ROOT/.lock)"; flock 9; }
  for c in "${want[@]}"; do
    local rc=0
    set +e
    ( set -e; trap on_err ERR; ensure_component "$c" )
    rc=$?
    set -e
    [[ $rc == 0 ]] || failed+=("$c")
  done
  link_bin
  if is_cached provider; then install_plugin; fi
  if [[ ${#failed[@]} -gt 0 ]]; then CURRENT_STEP="ensure"; die "could not build: ${failed[*]} (see above)"; fi
  printf '%s\n' "$BIN_DIR"
}

cmd_status() {
  local c rc=0
  for c in "${COMPONENTS[@]}"; do
    if is_cached "$c"; then printf '%-10s ready   %s\n' "$c" "$(component_dir "$c")"
    else printf '%-10s missing %s\n' "$c" "$(component_dir "$c")"; rc=1; fi
  done
  return "$rc"
}

cmd_seconds() {
  local c
  for c in "${COMPONENTS[@]}"; do
    printf '%s %s\n' "$c" "$(sed -n 's/^seconds=//p' "$(component_dir "$c")/$STAMP" 2>/dev/null || echo -)"
  done
}

main() {
  local sub="${1:-ensure}"
  [[ $# -gt 0 ]] && shift
  case "$sub" in
    ensure) cmd_ensure "$@" ;;
    status) cmd_status ;;
    bindir) printf '%s\n' "$BIN_DIR" ;;
    env)
      cmd_status >/dev/null || log "warning: the cluster toolchain is not complete: run tools/k8s-toolchain.sh ensure"
      printf 'export PATH=%q:"$PATH"\n' "$BIN_DIR" ;;
    versions)
      printf 'kubernetes %s\netcd %s\nkwok %s\nprovider %s (%s)\n' "$KUBERNETES_VERSION" "$ETCD_VERSION" \
        "$KWOK_VERSION" "$PROVIDER_VERSION" "$PROVIDER_MODULE_VERSION" ;;
    key) component_key "${1:?component}" ;;
    seconds) cmd_seconds ;;
    -h|--help|help) usage ;;
    *) usage; die "unknown subcommand '$sub'" ;;
  esac
}
main "$@"
