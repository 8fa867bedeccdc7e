#!/usr/bin/env bash
# Sets up everything a real `pulumi` run needs here, then runs the given command in that environment:
#   tools/env.sh [--no-docker] [--no-images] CMD ARGS...
# - the Pulumi CLI and plugins: an official `pulumi` on PATH at the pinned version, else the offline
#   build of tools/toolchain.sh (cached outside the repo);
# - a Docker engine: the one that answers (DOCKER_HOST honoured), else Debian's dockerd started by
#   tools/docker-engine.sh;
# - the local test images of tools/images.sh (only where no registry is reachable: APPSTACK_IMAGES=local);
# - a file:// state backend and a passphrase for secrets, both outside git (.state/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
docker=1 images=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-docker) docker=0; images=0; shift ;;
    --no-images) images=0; shift ;;
    *) break ;;
  esac
done

log() { printf 'appstack: %s\n' "$*" >&2; }

want=$(sed -n 's/^pulumi==//p' "$root/requirements.txt")
if command -v pulumi >/dev/null 2>&1 && [[ "$(pulumi version 2>/dev/null)" == "v$want" ]] \
   && [[ -z "${APPSTACK_FORCE_TOOLCHAIN:-}" ]]; then
  log "using pulumi v$want from PATH"
else
  log "building/using the offline Pulumi toolchain (tools/toolchain.sh)"
  "$root/tools/toolchain.sh" ensure all >/dev/null
  eval "$("$root/tools/toolchain.sh" env)"
fi
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true

state="${APPSTACK_STATE:-$root/.state}"
mkdir -p "$state/backend"
export PULUMI_BACKEND_URL="${PULUMI_BACKEND_URL:-file://$state/backend}"
if [[ -z "${PULUMI_CONFIG_PASSPHRASE:-}" && -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]]; then
  if [[ ! -s "$state/passphrase" ]]; then
    (umask 077; head -c 32 /dev/urandom | base64 > "$state/passphrase")
  fi
  export PULUMI_CONFIG_PASSPHRASE_FILE="$state/passphrase"
fi

if [[ $docker == 1 ]]; then
  eval "$("$root/tools/docker-engine.sh" start | tail -n 1)"
  if [[ $images == 1 && "${APPSTACK_IMAGES:-local}" == local ]]; then
    "$root/tools/images.sh" build all >&2
  fi
fi
exec "$@"
