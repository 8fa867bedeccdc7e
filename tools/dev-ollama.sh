#!/usr/bin/env bash
# The dev stack's stand-in for Ollama (outside the stack, as Ollama is): a container named
# `ollama` on the Docker network `appstack-dev-ollama`, which Pulumi.dev.yaml's appstack:ollama names.
#   tools/dev-ollama.sh start|stop
set -euo pipefail
network=${APPSTACK_OLLAMA_NETWORK:-appstack-dev-ollama}
container=${APPSTACK_OLLAMA_CONTAINER:-appstack-dev-ollama}
image=${APPSTACK_OLLAMA_IMAGE:-appstack.local/ollama:double}
case "${1:-start}" in
  start)
    docker network inspect "$network" >/dev/null 2>&1 || docker network create "$network" >/dev/null
    if [[ "$(docker inspect -f '{{.State.Running}}' "$container" 2>/dev/null)" != true ]]; then
      docker rm -f "$container" >/dev/null 2>&1 || true
      docker run -d --name "$container" --network "$network" --network-alias ollama \
        --restart unless-stopped --read-only --security-opt no-new-privileges:true \
        --cap-drop ALL "$image" >/dev/null
    fi
    echo "ollama stand-in: $container on $network" >&2
    ;;
  stop)
    docker rm -f "$container" >/dev/null 2>&1 || true
    docker network rm "$network" >/dev/null 2>&1 || true
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
