#!/usr/bin/env bash
# A local Kubernetes control plane with kwok nodes, on 127.0.0.1 only, from the cluster toolchain
# (tools/k8s-toolchain.sh): etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok.
# No kubelet runs (a real one changes the host kernel's settings): kwok writes the status a
# kubelet would, so pods become Ready but no container ever runs (docs/kubernetes.md).
#
#   tools/cluster.sh start [DIR]   start (or find running) the cluster kept in DIR; the last
#                                  stdout lines are `export KUBECONFIG=...` lines for eval
#   tools/cluster.sh stop [DIR]    stop exactly the processes `start` recorded in DIR
#   tools/cluster.sh status [DIR]  which of them run; exit 0 when all do
#   tools/cluster.sh env [DIR]     the export lines
#
# DIR defaults to ${APPSTACK_CLUSTER_DIR:-${APPSTACK_CACHE:-~/.cache/appstack}/cluster}. It holds the
# certificates, the kubeconfig, etcd's data, the logs and the pid files. Every port is picked
# free at start (two clusters can run side by side). Pod and Service addresses come from the
# 198.18.0.0/15 benchmarking range: they are only recorded in objects, nothing is ever sent to them.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${APPSTACK_CACHE:-$HOME/.cache/appstack}"
BIN="${APPSTACK_K8S_BIN:-$CACHE/k8s-toolchain/bin}"
STAGES_DIR="$CACHE/k8s-toolchain/stages"
SERVICE_CIDR=198.19.0.0/24
SERVICE_IP=198.19.0.1
POD_CIDR=198.18.0.0/16
NODES="${APPSTACK_KWOK_NODES:-1}"
PVS="${APPSTACK_KWOK_PVS:-32}"
STORAGE_CLASS=kwok-static
# Stop order: the reverse of start.
PROCS=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { printf 'cluster: FAILED: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# A pid counts as ours only while its command line still names our DIR (pids get reused).
ours() {
  local pid="$1"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DIR/"
}

running() { local f="$DIR/pids/$1.pid"; [[ -f "$f" ]] && ours "$(cat "$f")"; }

launch() { # launch NAME ARGS...: start one process of the cluster in the background
  local name="$1"; shift
  [[ -x "$BIN/$name" ]] || die "$BIN/$name is missing: run tools/k8s-toolchain.sh ensure"
  # setsid: a Ctrl-C in the shell that started the cluster does not take it down; `stop` does.
  setsid "$BIN/$name" "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name.pid"
}

wait_for() { # wait_for WHAT SECONDS CMD...
  local what="$1" secs="$2" end; shift 2
  end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then die "$what not ready after ${secs}s (logs in $DIR/logs)"; fi
    sleep 0.3
  done
}

kc() { "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" "$@"; }

certificates() {
  local pki="$DIR/pki"
  [[ -f "$pki/admin.crt" ]] && return 0
  mkdir -p "$pki"
  (
    cd "$pki"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=appstack-local-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    cat >apiserver.ext <<EOF
subjectAltName=IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EOF
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key \
      -out apiserver.csr 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=appstack-admin" \
      -keyout admin.key -out admin.csr 2>/dev/null
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out admin.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr
  )
}

kubeconfig() {
  local port="$1" pki="$DIR/pki"
  umask 077
  cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: appstack-local
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $pki/ca.crt
users:
- name: appstack-admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: appstack-local
  context: {cluster: appstack-local, user: appstack-admin}
current-context: appstack-local
EOF
}

admission_config() {
  # Pod Security Admission enforces `restricted` in every namespace but kube-system: every pod the
  # program or the task runner makes must pass the strictest profile.
  cat >"$DIR/admission.yaml" <<'EOF'
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults: {enforce: restricted, enforce-version: latest, audit: restricted, warn: restricted}
    exemptions: {namespaces: [kube-system]}
EOF
}

bootstrap_objects() {
  local i
  {
    for ((i = 0; i < NODES; i++)); do
      cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
---
EOF
    done
    cat <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $STORAGE_CLASS
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
reclaimPolicy: Retain
EOF
    # Pre-made volumes stand in for a provisioner; nothing ever mounts them (no kubelet).
    for ((i = 0; i < PVS; i++)); do
      cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: kwok-pv-$i, labels: {appstack.io/kwok-pool: "true"}}
spec:
  capacity: {storage: 100Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: $STORAGE_CLASS
  hostPath: {path: /nonexistent/appstack-kwok/pv-$i}
EOF
    done
  } | kc apply -f - >/dev/null
}

node_ready() { kc get nodes -o jsonpath='{.items[*].status.conditions[?(@.type=="Ready")].status}' | grep -q True; }
default_sa() { kc -n default get serviceaccount default; }

cmd_env() {
  printf 'export KUBECONFIG=%q\n' "$DIR/kubeconfig"
  printf 'export APPSTACK_CLUSTER_DIR=%q\n' "$DIR"
}

cmd_start() {
  local t0=$SECONDS p all=1 etcd_port peer_port api_port node_port stages
  for p in "${PROCS[@]}"; do running "$p" || all=0; done
  if [[ $all == 1 ]]; then log "already running in $DIR"; cmd_env; return 0; fi
  for p in "${PROCS[@]}"; do
    if running "$p"; then die "$p of $DIR runs but the cluster is incomplete: run tools/cluster.sh stop $DIR first"; fi
  done
  for p in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl; do
    [[ -x "$BIN/$p" ]] || die "$BIN/$p is missing: run tools/k8s-toolchain.sh ensure"
  done
  [[ -d "$STAGES_DIR" ]] || die "kwok's stages are missing ($STAGES_DIR): run tools/k8s-toolchain.sh ensure kwok"
  command -v openssl >/dev/null || die "openssl is not on PATH"
  mkdir -p "$DIR/logs" "$DIR/pids" "$DIR/etcd"
  chmod 700 "$DIR"
  certificates
  admission_config
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port); node_port=$(free_port)
  printf 'etcd=%s\netcd-peer=%s\napiserver=%s\nkwok-node=%s\n' "$etcd_port" "$peer_port" "$api_port" "$node_port" >"$DIR/ports"
  kubeconfig "$api_port"
  stages="$DIR/kwok.yaml"
  {
    for p in "$STAGES_DIR"/node-initialize.yaml "$STAGES_DIR"/node-heartbeat-with-lease.yaml; do
      cat "$p"; printf '\n---\n'
    done
    cat "$SCRIPT_DIR/kwok/stages.yaml"
  } >"$stages"

  log "starting etcd on 127.0.0.1:$etcd_port"
  launch etcd --name appstack --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "appstack=http://127.0.0.1:$peer_port" \
    --quota-backend-bytes 2147483648 --unsafe-no-fsync
  wait_for etcd 30 python3 -c "import urllib.request,sys; sys.exit(0 if b'true' in urllib.request.urlopen('http://127.0.0.1:$etcd_port/health', timeout=2).read() else 1)"

  log "starting kube-apiserver on 127.0.0.1:$api_port"
  launch kube-apiserver --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --secure-port "$api_port" --advertise-address 127.0.0.1 \
    --endpoint-reconciler-type none --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$DIR/pki/ca.crt" --tls-cert-file "$DIR/pki/apiserver.crt" \
    --tls-private-key-file "$DIR/pki/apiserver.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
    --authorization-mode RBAC --kubelet-preferred-address-types InternalIP \
    --admission-control-config-file "$DIR/admission.yaml" --profiling=false
  wait_for kube-apiserver 90 kc get --raw /readyz

  log "starting kube-controller-manager, kube-scheduler and kwok"
  launch kube-controller-manager --kubeconfig "$DIR/kubeconfig" --leader-elect=false \
    --secure-port 0 --service-account-private-key-file "$DIR/pki/sa.key" \
    --root-ca-file "$DIR/pki/ca.crt" --cluster-signing-cert-file "$DIR/pki/ca.crt" \
    --cluster-signing-key-file "$DIR/pki/ca.key" --profiling=false
  launch kube-scheduler --kubeconfig "$DIR/kubeconfig" --leader-elect=false --secure-port 0 \
    --profiling=false
  launch kwok --kubeconfig "$DIR/kubeconfig" --config "$stages" --manage-all-nodes=true \
    --node-ip 127.0.0.1 --node-port "$node_port" --cidr "$POD_CIDR" --node-lease-duration-seconds 40
  bootstrap_objects
  wait_for "a kwok node" 60 node_ready
  wait_for "the service-account controller" 60 default_sa
  for p in "${PROCS[@]}"; do running "$p" || die "$p exited during start (log $DIR/logs/$p.log)"; done
  log "ready in $((SECONDS - t0))s: $DIR (kubeconfig $DIR/kubeconfig)"
  printf 'seconds=%s\n' "$((SECONDS - t0))" >"$DIR/started"
  cmd_env
}

cmd_stop() {
  local p f pid end
  for p in "${PROCS[@]}"; do
    f="$DIR/pids/$p.pid"
    [[ -f "$f" ]] || continue
    pid="$(cat "$f")"
    if ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      end=$((SECONDS + 15))
      while ours "$pid" && ((SECONDS < end)); do sleep 0.2; done
      if ours "$pid"; then log "$p ($pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
      log "stopped $p ($pid)"
    fi
    rm -f "$f"
  done
}

cmd_status() {
  local p rc=0
  for p in "${PROCS[@]}"; do
    if running "$p"; then printf '%-24s running (pid %s)\n' "$p" "$(cat "$DIR/pids/$p.pid")"
    else printf '%-24s stopped\n' "$p"; rc=1; fi
  done
  return "$rc"
}

sub="${1:-}"
[[ $# -gt 0 ]] && shift
DIR="${1:-${APPSTACK_CLUSTER_DIR:-$CACHE/cluster}}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
case "$sub" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  -h|--help|help) usage ;;
  *) usage; die "unknown subcommand '$sub'" ;;
esac
