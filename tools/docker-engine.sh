#!/usr/bin/env bash
# tools/docker-engine.sh — a private Docker engine for appstack's tests.
#
#   tools/docker-engine.sh start    # reuse a Docker that answers, else start our own dockerd
#   tools/docker-engine.sh env      # print the export line for the engine we started
#   tools/docker-engine.sh status   # say what answers (exit 0 when an engine answers)
#   tools/docker-engine.sh stop     # stop only the dockerd this script started (pid file)
#
#   eval "$(tools/docker-engine.sh start)"
#
# `start` prints `export DOCKER_HOST=...` as its last stdout line (progress goes to stderr).
# When `docker info` already answers (DOCKER_HOST honoured) nothing is started and the line
# names that engine. Otherwise Debian's docker.io is installed if dockerd is missing, and a
# dockerd is started with its own socket, exec root, data root, pid file and log:
#
#   socket     unix:///run/appstack-docker.sock   (root, APPSTACK_CACHE unset; else <cache>/docker/docker.sock)
#   data root  ${APPSTACK_CACHE:-$HOME/.cache/appstack}/docker-data
#   state      ${APPSTACK_CACHE:-$HOME/.cache/appstack}/docker/{dockerd.pid,dockerd.log}
#
# iptables: dockerd needs a working iptables for published ports. The script probes
# `iptables` (nft on Debian) and falls back to iptables-legacy through a PATH shim given to
# dockerd only (no system-wide alternatives change). If neither works it fails and says so,
# unless APPSTACK_DOCKER_IPTABLES=false is set (then ports cannot be published).
set -euo pipefail

CACHE="${APPSTACK_CACHE:-$HOME/.cache/appstack}"
STATE="$CACHE/docker"
DATA_ROOT="$CACHE/docker-data"
PIDFILE="$STATE/dockerd.pid"
LOGFILE="$STATE/dockerd.log"
HOSTFILE="$STATE/docker-host"
WAIT_SECONDS="${APPSTACK_DOCKER_WAIT:-60}"

log() { printf '[docker-engine] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# /run/appstack-docker.sock by default (root); an explicit APPSTACK_CACHE keeps everything in it
# (so a second checkout with its own cache gets its own socket), if the path is short enough.
if [ "$(id -u)" = 0 ] && [ -w /run ] && { [ -z "${APPSTACK_CACHE:-}" ] || [ ${#STATE} -gt 90 ]; }; then
  SOCK="/run/appstack-docker.sock"
  EXEC_ROOT="/run/appstack-docker"
else
  SOCK="$STATE/docker.sock"
  EXEC_ROOT="$STATE/exec"
fi
OUR_HOST="unix://$SOCK"

docker_bin() {
  # Prefer the newer client in /usr/local/bin when present; API version negotiation works.
  if [ -x /usr/local/bin/docker ]; then echo /usr/local/bin/docker
  elif command -v docker >/dev/null 2>&1; then command -v docker
  else echo ""; fi
}

answers() { # answers HOST  -> 0 when `docker info` answers on HOST ("" = ambient)
  local d; d="$(docker_bin)"; [ -n "$d" ] || return 1
  if [ -n "$1" ]; then DOCKER_HOST="$1" timeout 10 "$d" info >/dev/null 2>&1
  else timeout 10 "$d" info >/dev/null 2>&1; fi
}

our_pid() { # prints the pid of the dockerd we started, if it is alive
  [ -f "$PIDFILE" ] || return 1
  local pid; pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # make sure the pid is still a dockerd (pid reuse)
  grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

iptables_shim() { # prints a directory to prepend to dockerd's PATH ("" = none needed)
  if [ "${APPSTACK_DOCKER_IPTABLES:-true}" = false ]; then echo ""; return 0; fi
  if iptables -t nat -L -n >/dev/null 2>&1 && iptables -t filter -L -n >/dev/null 2>&1; then
    log "iptables works ($(iptables --version 2>/dev/null))"
    echo ""; return 0
  fi
  log "iptables ($(iptables --version 2>/dev/null || echo missing)) does not work; trying iptables-legacy"
  if command -v iptables-legacy >/dev/null 2>&1 && iptables-legacy -t nat -L -n >/dev/null 2>&1; then
    local shim="$STATE/iptables-shim"
    mkdir -p "$shim"
    local b
    for b in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
      if command -v "$b-legacy" >/dev/null 2>&1; then ln -sf "$(command -v "$b-legacy")" "$shim/$b"; fi
    done
    log "using iptables-legacy for dockerd (PATH shim $shim)"
    echo "$shim"; return 0
  fi
  die "neither iptables (nft) nor iptables-legacy works here: $(iptables -t nat -L -n 2>&1 | tail -1). \
Set APPSTACK_DOCKER_IPTABLES=false to start dockerd with --iptables=false (published ports will not work)."
}

ensure_dockerd() {
  if command -v dockerd >/dev/null 2>&1; then return 0; fi
  [ "$(id -u)" = 0 ] || die "dockerd is missing and we are not root: install docker.io"
  log "dockerd missing: installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends docker.io iptables >&2; then
    apt-get update >&2 && apt-get install -y --no-install-recommends docker.io iptables >&2 \
      || die "apt-get install docker.io failed"
  fi
  command -v dockerd >/dev/null 2>&1 || die "docker.io installed but dockerd is not on PATH"
}

cmd_start() {
  local pid
  if pid="$(our_pid)"; then
    if answers "$OUR_HOST"; then
      log "our dockerd (pid $pid) already answers on $OUR_HOST"
      echo "export DOCKER_HOST=$OUR_HOST"; return 0
    fi
  elif answers "${DOCKER_HOST:-}"; then
    local h="${DOCKER_HOST:-unix:///var/run/docker.sock}"
    log "a Docker engine already answers on $h: not starting another"
    echo "export DOCKER_HOST=$h"; return 0
  fi

  mkdir -p "$STATE" "$DATA_ROOT" "$EXEC_ROOT"
  if [ -n "${pid:-}" ]; then
    log "our dockerd (pid $pid) is alive but does not answer yet; waiting for it"
  else
    ensure_dockerd
    local shim; shim="$(iptables_shim)"
    local ipt=() ; [ "${APPSTACK_DOCKER_IPTABLES:-true}" = false ] && ipt=(--iptables=false)
    rm -f "$SOCK"
    log "starting dockerd: socket $OUR_HOST, data root $DATA_ROOT, log $LOGFILE"
    # setsid: the daemon must outlive this shell and its process group.
    PATH="${shim:+$shim:}$PATH" setsid dockerd \
      --host "$OUR_HOST" \
      --data-root "$DATA_ROOT" \
      --exec-root "$EXEC_ROOT" \
      --pidfile "$PIDFILE" \
      "${ipt[@]}" \
      ${APPSTACK_DOCKERD_ARGS:-} \
      >>"$LOGFILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE.launch"
  fi

  local i=0
  until answers "$OUR_HOST"; do
    i=$((i + 1))
    if [ -f "$PIDFILE.launch" ] && ! kill -0 "$(cat "$PIDFILE.launch")" 2>/dev/null; then
      log "dockerd exited; last log lines:"; tail -n 25 "$LOGFILE" >&2 || true
      die "dockerd failed to start (see $LOGFILE)"
    fi
    if [ "$i" -ge "$WAIT_SECONDS" ]; then
      tail -n 25 "$LOGFILE" >&2 || true
      die "dockerd did not answer on $OUR_HOST within ${WAIT_SECONDS}s (see $LOGFILE)"
    fi
    sleep 1
  done
  rm -f "$PIDFILE.launch"
  echo "$OUR_HOST" >"$HOSTFILE"
  log "dockerd (pid $(cat "$PIDFILE" 2>/dev/null || echo '?')) answers on $OUR_HOST"
  echo "export DOCKER_HOST=$OUR_HOST"
}

cmd_env() {
  if our_pid >/dev/null && answers "$OUR_HOST"; then
    echo "export DOCKER_HOST=$OUR_HOST"; return 0
  fi
  if answers "${DOCKER_HOST:-}"; then
    echo "export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}"; return 0
  fi
  die "no engine answers; run: tools/docker-engine.sh start"
}

cmd_status() {
  local pid
  if pid="$(our_pid)"; then log "our dockerd: pid $pid, $OUR_HOST"; else log "our dockerd: not running"; fi
  if answers "$OUR_HOST"; then echo "$OUR_HOST"; return 0; fi
  if answers "${DOCKER_HOST:-}"; then echo "${DOCKER_HOST:-unix:///var/run/docker.sock}"; return 0; fi
  return 1
}

cmd_stop() {
  local pid
  if ! pid="$(our_pid)"; then
    log "no dockerd started by this script is running"; rm -f "$PIDFILE" "$PIDFILE.launch"; return 0
  fi
  log "stopping dockerd pid $pid"
  kill -TERM "$pid"
  local i=0
  while kill -0 "$pid" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -ge 45 ]; then log "dockerd ignored SIGTERM for 45s: SIGKILL"; kill -KILL "$pid" || true; break; fi
    sleep 1
  done
  rm -f "$PIDFILE" "$PIDFILE.launch" "$HOSTFILE"
  log "stopped"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
