#!/usr/bin/env bash
# Build the Pulumi CLI this project pins from the Go module proxy only (no pulumi.com, no GitHub
# release downloads), cache it outside the repo, and put our own Python language host
# (tools/langhost/) beside it. No provider plugins: see tools/README-toolchain.md.
#
#   tools/toolchain.sh ensure [pulumi|langhost|all]...  build/link what is missing (default all);
#                                                   last stdout line = absolute bin dir
#   tools/toolchain.sh bindir                       print the bin dir (no building)
#   tools/toolchain.sh env                          print `export ...` lines for eval
#   tools/toolchain.sh versions                     print the pinned versions it would build
#   tools/toolchain.sh status                       what is cached / missing
#
# Progress goes to stderr; stdout carries only the results above.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
REQUIREMENTS="${APPSTACK_REQUIREMENTS:-$REPO_ROOT/requirements.txt}"
LANGHOST_SRC="$SCRIPT_DIR/langhost/pulumi-language-python"
CACHE_ROOT="${APPSTACK_CACHE:-$HOME/.cache/appstack}/toolchain"
BIN_DIR="$CACHE_ROOT/bin"
STAMP_NAME=".toolchain-stamp"
# Bump when the build recipe changes so old cache entries are rebuilt.
RECIPE=2

COMPONENTS=(pulumi langhost)
# Former components (provider plugins), accepted by `ensure` and ignored; see the README.
LEGACY_COMPONENTS=" docker command kubernetes "
# Names an older recipe put into bin/; link_bin removes them.
STALE_BIN_NAMES=(pulumi-language-python pulumi-resource-docker pulumi-resource-command pulumi-resource-kubernetes)

# Go: local toolchain only (a toolchain download would be a surprise on CI), parallelism of the
# 2-core machines, no VCS stamping (sources come from module zips, not a checkout).
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOWORK=off
export CGO_ENABLED=0
case " ${GOFLAGS:-} " in *" -buildvcs="*) ;; *) export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false" ;; esac
GO_P="${TOOLCHAIN_GO_P:-2}"

CURRENT_STEP="startup"
log() { printf 'toolchain: %s\n' "$*" >&2; }
die() { printf 'toolchain: FAILED at step "%s": %s\n' "$CURRENT_STEP" "$*" >&2; exit 1; }
step() { CURRENT_STEP="$1"; log "$1"; }
on_err() {
  local rc=$?
  printf 'toolchain: FAILED at step "%s" (exit %s; command: %s)\n' "$CURRENT_STEP" "$rc" "$BASH_COMMAND" >&2
  [[ -n "${CURRENT_LOG:-}" && -f "${CURRENT_LOG:-}" ]] && {
    printf 'toolchain: last lines of %s:\n' "$CURRENT_LOG" >&2
    tail -n 25 "$CURRENT_LOG" | sed 's/^/    /' >&2
  }
  exit "$rc"
}
trap on_err ERR

usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

# ---------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------
req_version() { # req_version PYPI_NAME -> exact pin from requirements.txt
  local name="$1" line
  [[ -f "$REQUIREMENTS" ]] || die "requirements file not found: $REQUIREMENTS"
  line="$(grep -i -E "^[[:space:]]*${name}[[:space:]]*==" "$REQUIREMENTS" | head -n1 || true)"
  [[ -n "$line" ]] || die "no exact pin '${name}==X' in $REQUIREMENTS"
  line="${line#*==}"; line="${line%%#*}"; line="${line%%;*}"
  printf '%s\n' "${line//[[:space:]]/}"
}

# Both components follow the `pulumi==X` pin (the language host reports X as its version).
component_version() {
  case "$1" in
    pulumi|langhost) req_version pulumi ;;
    *) die "unknown component '$1'" ;;
  esac
}

component_dir() { printf '%s/%s-v%s\n' "$CACHE_ROOT" "$1" "$(component_version "$1")"; }

pulumi_bins() { echo pulumi pulumi-language-python-exec pulumi-resource-pulumi-python; }

is_cached() {
  local c="$1" dir b
  case "$c" in
    pulumi)
      dir="$(component_dir pulumi)"
      [[ -f "$dir/$STAMP_NAME" ]] || return 1
      grep -qx "recipe=$RECIPE" "$dir/$STAMP_NAME" || return 1
      for b in $(pulumi_bins); do [[ -x "$dir/bin/$b" ]] || return 1; done ;;
    langhost)
      # Nothing to build: pulumi-vX/bin/pulumi-language-python links to the repo's tools/langhost/.
      [[ -x "$LANGHOST_SRC" && "$(readlink "$(langhost_link)" 2>/dev/null)" == "$LANGHOST_SRC" ]] || return 1 ;;
    *) return 1 ;;
  esac
}

# ---------------------------------------------------------------------------------------------
# Go module helpers (module proxy only)
# ---------------------------------------------------------------------------------------------
NOMOD_DIR=""
nomod_dir() { # an empty dir outside any module, so `go mod download` runs in module-less mode
  if [[ -z "$NOMOD_DIR" ]]; then NOMOD_DIR="$(mktemp -d)"; fi
  printf '%s\n' "$NOMOD_DIR"
}

json_field() { # json_field FIELD [SUBFIELD] < json
  python3 -c '
import json, sys
d = json.load(sys.stdin)
for k in sys.argv[1:]:
    d = d.get(k) if isinstance(d, dict) else None
print("" if d is None else d)' "$@"
}

# mod_download MODULE QUERY -> prints the JSON of `go mod download -json`; fails with its Error.
mod_download() {
  local mod="$1" query="$2" out err
  out="$(cd "$(nomod_dir)" && go mod download -json "$mod@$query" 2>/dev/null)" || true
  [[ -n "$out" ]] || out='{"Error":"go mod download printed nothing"}'
  err="$(printf '%s' "$out" | json_field Error)"
  if [[ -n "$err" ]]; then
    printf '%s\n' "$err" >&2
    return 1
  fi
  printf '%s\n' "$out"
}

# copy_module MODULE VERSION DEST -> writable copy of the module source at DEST; prints Version.
copy_module() {
  local mod="$1" ver="$2" dest="$3" j dir rv
  j="$(mod_download "$mod" "$ver")" || die "cannot download Go module $mod@$ver from the module proxy (GOPROXY=$(go env GOPROXY)); error above"
  dir="$(printf '%s' "$j" | json_field Dir)"
  rv="$(printf '%s' "$j" | json_field Version)"
  [[ -d "$dir" ]] || die "module $mod@$ver: no Dir in go mod download output"
  mkdir -p "$(dirname "$dest")"
  rm -rf "$dest"
  cp -r "$dir" "$dest"
  chmod -R u+w "$dest"
  printf '%s\n' "$rv"
}

check_local_replaces() { # check_local_replaces MODDIR: every `=> ../x` replace target must exist
  local moddir="$1" target
  while read -r target; do
    [[ -n "$target" ]] || continue
    [[ -f "$moddir/$target/go.mod" ]] || die "$moddir/go.mod replaces a module with local path '$target', which is not laid out ($moddir/$target/go.mod missing)"
  done < <(sed -n 's/.*=>[[:space:]]*\(\.\.\{0,1\}\/[^[:space:]]*\).*/\1/p' "$moddir/go.mod")
}

go_build() { # go_build LOGFILE DIR PKG OUT TAGS LDFLAGS
  local logf="$1" dir="$2" pkg="$3" out="$4" tags="$5" ldflags="$6"
  CURRENT_LOG="$logf"
  (cd "$dir" && go build -p "$GO_P" -trimpath ${tags:+-tags "$tags"} -ldflags "$ldflags" -o "$out" "$pkg") >>"$logf" 2>&1 \
    || die "go build $pkg in $dir failed (log: $logf)"
  CURRENT_LOG=""
}

# ---------------------------------------------------------------------------------------------
# The CLI. Builds into "$dir.tmp", then renames to "$dir".
# ---------------------------------------------------------------------------------------------
ambient_pulumi() { # prints path of a pulumi on PATH (outside the cache) reporting exactly v$1
  local want="v$1" p real
  p="$(PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -v -x -F "$BIN_DIR" | paste -sd: -)" command -v pulumi 2>/dev/null || true)"
  [[ -n "$p" ]] || return 1
  real="$(readlink -f "$p")"
  case "$real" in "$CACHE_ROOT"/*) return 1 ;; esac
  [[ "$(PULUMI_SKIP_UPDATE_CHECK=true "$real" version 2>/dev/null | tr -d '[:space:]')" == "$want" ]] || return 1
  printf '%s\n' "$real"
}

build_pulumi() {
  local V="$1" dir="$2" tmp="$3" logf="$3/build.log"
  local pkgmod=github.com/pulumi/pulumi/pkg/v3 sdkmod=github.com/pulumi/pulumi/sdk/v3
  local ldflags="-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$V"
  local tags="osusergo,grpcnotrace" amb="" src="$tmp/src"

  step "pulumi v$V: fetch $sdkmod@v$V"
  copy_module "$sdkmod" "v$V" "$src/sdk" >/dev/null
  echo "sdk=$sdkmod@v$V" >>"$tmp/$STAMP_NAME.new"

  step "pulumi v$V: install the python helper scripts from $sdkmod"
  # The module zip stores them read-only and not executable.
  install -m 0755 "$src/sdk/python/cmd/pulumi-language-python-exec" "$tmp/bin/pulumi-language-python-exec"
  install -m 0755 "$src/sdk/python/dist/pulumi-resource-pulumi-python" "$tmp/bin/pulumi-resource-pulumi-python"

  if amb="$(ambient_pulumi "$V")"; then
    log "  using pulumi v$V already on PATH: $amb (not building the CLI)"
    ln -sfn "$amb" "$tmp/bin/pulumi"
    echo "pulumi=ambient:$amb" >>"$tmp/$STAMP_NAME.new"
    return 0
  fi

  step "pulumi v$V: fetch $pkgmod@v$V"
  copy_module "$pkgmod" "v$V" "$src/pkg" >/dev/null
  echo "pkg=$pkgmod@v$V" >>"$tmp/$STAMP_NAME.new"
  check_local_replaces "$src/pkg"

  step "pulumi v$V: go build ./cmd/pulumi (log $dir/build.log)"
  go_build "$logf" "$src/pkg" ./cmd/pulumi "$tmp/bin/pulumi" "$tags" "$ldflags"

  step "pulumi v$V: check the built version"
  local got
  got="$(PULUMI_SKIP_UPDATE_CHECK=true "$tmp/bin/pulumi" version 2>&1 | tr -d '[:space:]')"
  [[ "$got" == "v$V" ]] || die "built pulumi reports version '$got', expected v$V"
}

ensure_pulumi() {
  local V dir tmp t0 t1
  V="$(component_version pulumi)"
  dir="$(component_dir pulumi)"
  if is_cached pulumi; then
    log "pulumi v$V: cached in $dir"
    return 0
  fi
  command -v go >/dev/null || die "go is not on PATH (needed to build pulumi v$V)"
  command -v python3 >/dev/null || die "python3 is not on PATH (used to read go mod download -json)"
  log "building pulumi v$V ... (cache $dir)"
  tmp="$dir.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp/bin"
  : >"$tmp/build.log"
  t0=$(date +%s)
  build_pulumi "$V" "$dir" "$tmp"
  t1=$(date +%s)
  {
    echo "component=pulumi"; echo "version=$V"; echo "recipe=$RECIPE"
    cat "$tmp/$STAMP_NAME.new" 2>/dev/null || true
    echo "go=$(go env GOVERSION)"; echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "seconds=$((t1 - t0))"
  } >"$tmp/$STAMP_NAME"
  rm -f "$tmp/$STAMP_NAME.new"
  [[ "${TOOLCHAIN_KEEP_SRC:-0}" == 1 ]] || rm -rf "$tmp/src"
  rm -rf "$dir"; mv "$tmp" "$dir"
  log "pulumi v$V: built in $((t1 - t0))s"
}

# The language host is ours (Python, in the repo): nothing to build. It is linked into the CLI's
# own dir (pulumi-vX/bin/, where the engine looks for the bundled "python" language plugin, next to
# the real `pulumi`), not into bin/: a pulumi-language-python on PATH that does not resolve to the
# file next to `pulumi` makes the engine warn "using pulumi-language-python from $PATH" on every run.
langhost_link() { printf '%s/bin/pulumi-language-python\n' "$(component_dir pulumi)"; }

ensure_langhost() {
  local link
  step "langhost: link $LANGHOST_SRC"
  [[ -f "$LANGHOST_SRC" ]] || die "$LANGHOST_SRC is missing"
  [[ -x "$LANGHOST_SRC" ]] || die "$LANGHOST_SRC is not executable"
  [[ -f "$SCRIPT_DIR/langhost/langhost.py" ]] || die "$SCRIPT_DIR/langhost/langhost.py is missing"
  is_cached pulumi || die "the pulumi CLI v$(component_version pulumi) is not built (run: tools/toolchain.sh ensure pulumi)"
  link="$(langhost_link)"
  if [[ "$(readlink "$link" 2>/dev/null)" != "$LANGHOST_SRC" ]]; then
    ln -sfn "$LANGHOST_SRC" "$link"
    log "langhost: $link -> $LANGHOST_SRC"
  else
    log "langhost: linked ($link -> $LANGHOST_SRC)"
  fi
}

link_bin() { # (re)point bin/ at the pinned CLI files that are cached
  local dir b
  mkdir -p "$BIN_DIR"
  dir="$(component_dir pulumi)"
  for b in $(pulumi_bins); do
    if is_cached pulumi; then ln -sfn "$dir/bin/$b" "$BIN_DIR/$b"; else rm -f "$BIN_DIR/$b"; fi
  done
  for b in "${STALE_BIN_NAMES[@]}"; do rm -f "$BIN_DIR/$b"; done
}

# ---------------------------------------------------------------------------------------------
cmd_ensure() {
  local want=() legacy=() c
  [[ $# -gt 0 ]] || set -- all
  for c in "$@"; do
    case "$c" in
      all) want+=("${COMPONENTS[@]}") ;;
      pulumi|langhost) want+=("$c") ;;
      *)
        if [[ "$LEGACY_COMPONENTS" == *" $c "* ]]; then
          legacy+=("$c")
        else
          usage; die "unknown component '$c' (pulumi|langhost|all)"
        fi ;;
    esac
  done
  [[ ${#legacy[@]} == 0 ]] || log "note: ignoring ${legacy[*]}: provider plugins are no longer built (see tools/README-toolchain.md)"
  mkdir -p "$CACHE_ROOT"
  # One builder at a time per cache.
  exec 9>"$CACHE_ROOT/.lock"
  if command -v flock >/dev/null; then
    flock -n 9 || { log "waiting for another toolchain build (lock $CACHE_ROOT/.lock)"; flock 9; }
  fi
  local failed=()
  for c in ${want[@]+"${want[@]}"}; do
    # Each component in a subshell so one failure does not stop the others (not as an `if`
    # condition: that would switch off errexit inside the subshell).
    local rc=0
    set +e
    ( set -e; trap on_err ERR; "ensure_$c" )
    rc=$?
    set -e
    [[ $rc == 0 ]] || failed+=("$c")
  done
  link_bin
  if [[ ${#failed[@]} -gt 0 ]]; then
    CURRENT_STEP="ensure"
    die "could not build: ${failed[*]} (see messages above)"
  fi
  printf '%s\n' "$BIN_DIR"
}

cmd_env() {
  local c
  for c in "${COMPONENTS[@]}"; do
    is_cached "$c" || log "warning: $c v$(component_version "$c") is not ready: run tools/toolchain.sh ensure"
  done
  printf 'export PATH=%q:"$PATH"\n' "$BIN_DIR"
  printf 'export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true\n'
  printf 'export PULUMI_SKIP_UPDATE_CHECK=true\n'
}

cmd_status() {
  local c what
  for c in "${COMPONENTS[@]}"; do
    case "$c" in pulumi) what="$(component_dir pulumi)" ;; langhost) what="$(langhost_link) -> $LANGHOST_SRC" ;; esac
    if is_cached "$c"; then printf '%-9s v%-10s ready   %s\n' "$c" "$(component_version "$c")" "$what"
    else printf '%-9s v%-10s missing %s\n' "$c" "$(component_version "$c")" "$what"; fi
  done
}

main() {
  local sub="${1:-ensure}"
  [[ $# -gt 0 ]] && shift
  case "$sub" in
    ensure) cmd_ensure "$@" ;;
    bindir) printf '%s\n' "$BIN_DIR" ;;
    env) cmd_env ;;
    versions) for c in "${COMPONENTS[@]}"; do printf '%s %s\n' "$c" "$(component_version "$c")"; done ;;
    status) cmd_status ;;
    -h|--help|help) usage ;;
    *) usage; die "unknown subcommand '$sub'" ;;
  esac
}

cleanup() { [[ -n "$NOMOD_DIR" ]] && rm -rf "$NOMOD_DIR"; return 0; }
trap cleanup EXIT
main "$@"
