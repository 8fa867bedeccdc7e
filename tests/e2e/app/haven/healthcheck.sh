#!/bin/sh
# haven-healthcheck: the Docker HEALTHCHECK of every Haven test image.
#   gateway/search -> GET http://127.0.0.1:8080/v1/healthz ; catalog -> :8081
#   worker         -> /tmp/worker-heartbeat younger than HAVEN_HEARTBEAT_MAX_AGE
#                     (default: max(30, 3 * WORKER_POLL_INTERVAL)) seconds
set -eu
case "${SERVICE:-gateway}" in
  worker|worker_service)
    f="${HAVEN_HEARTBEAT_FILE:-/tmp/worker-heartbeat}"
    [ -f "$f" ] || { echo "no heartbeat file $f"; exit 1; }
    interval="${WORKER_POLL_INTERVAL:-5}"; interval="${interval%.*}"; [ -n "$interval" ] || interval=1
    max="${HAVEN_HEARTBEAT_MAX_AGE:-$(( interval * 3 > 30 ? interval * 3 : 30 ))}"
    age=$(( $(date +%s) - $(stat -c %Y "$f") ))
    [ "$age" -le "$max" ] || { echo "heartbeat is ${age}s old (max ${max}s)"; exit 1; }
    echo "heartbeat ${age}s old" ;;
  catalog) exec curl -fsS -m 5 "http://127.0.0.1:${PORT:-8081}/v1/healthz" ;;
  *) exec curl -fsS -m 5 "http://127.0.0.1:${PORT:-8080}/v1/healthz" ;;
esac
