#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the end-to-end tests: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, and kwok simulating nodes and their kubelets.
#
#   tests/cluster/cluster.sh up   [--dir DIR] [--nodes N] [--control-planes M] [--audit-policy FILE]
#   tests/cluster/cluster.sh down [--dir DIR]
#   tests/cluster/cluster.sh env  [--dir DIR]     # prints `export KUBECONFIG=...` for a running cluster
#   tests/cluster/cluster.sh restart-apiserver [--dir DIR] [--down-for SECONDS]
#
# `up` builds the binaries when the cache is cold (tests/testbin/build.sh), writes certificates, a
# kubeconfig and logs under DIR (default: $SUC_CLUSTER_DIR, else $TMPDIR/suc-cluster or
# /tmp/suc-cluster), creates N simulated nodes labelled like a K3s cluster (the first M are
# control-plane nodes) and waits until they are Ready and untainted. `down` stops every process
# by PID. A failed start prints the failing component's log tail and exits non-zero.
# With --audit-policy, kube-apiserver writes the audit events FILE asks for to DIR/logs/audit.log,
# one file that is never rotated and survives restarts (the benchmark counts the controller's own
# requests this way; the e2e suite's soak reads its history from it).
# `restart-apiserver` stops kube-apiserver, waits (default 5 s) and starts it again on the same
# port: the outage a K3s server upgrade causes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command="${1:-}"
[[ -n "$command" ]] && shift
dir="${SUC_CLUSTER_DIR:-${TMPDIR:-/tmp}/suc-cluster}"
nodes=6
control_planes=
real_node=0
down_for=5
audit_policy=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --control-planes) control_planes="$2"; shift 2 ;;
    --real-node) real_node=1; shift ;;
    --down-for) down_for="$2"; shift 2 ;;
    --audit-policy) audit_policy="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
# With a real node, it is the K3s server (where the controller's Deployment runs) and every
# simulated node is an agent, unless asked otherwise.
[[ -n "$control_planes" ]] || control_planes=$((real_node ? 0 : 1))

# shellcheck source=tests/cluster/lib.sh
source "$here/lib.sh"

down() {
  [[ -d "$dir/pids" ]] || return 0
  if [[ -f "$dir/real-node.env" ]]; then
    bash "$here/real-node.sh" down --dir "$dir" || log "removing the real node failed; stopping the rest"
  fi
  # Reverse start order: nodes' kubelet first, etcd last.
  stop_all kubelet-versions kwok kube-scheduler kube-controller-manager kube-apiserver etcd
}

pki() {
  local p="$dir/pki"
  mkdir -p "$p"
  (
    cd "$p"
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=suc-test-ca -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr 2>/dev/null
    # The names pods use too: the `kubernetes` Service's address and the real node's.
    printf 'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' "$real_node_ip" >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -out apiserver.crt -extfile apiserver.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    token="$(openssl rand -hex 16)"
    echo "$token,admin,admin-uid,\"system:masters\"" >tokens.csv
    echo "$token" >admin.token
  )
  # kube-apiserver's identity towards kubelets (logs, exec).
  client_cert kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
}

kubeconfig() {
  local port="$1"
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: suc-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $dir/pki/ca.crt
users:
- name: admin
  user:
    token: $(cat "$dir/pki/admin.token")
contexts:
- name: suc-test
  context: {cluster: suc-test, user: admin}
current-context: suc-test
EOF
}

node_manifest() {
  local name="$1" role="$2" arch="$3"
  cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/arch: $arch
    beta.kubernetes.io/os: linux
    beta.kubernetes.io/arch: $arch
    node.kubernetes.io/instance-type: k3s
EOF
  if [[ "$role" == control-plane ]]; then
    cat <<EOF
    node-role.kubernetes.io/control-plane: "true"
    node-role.kubernetes.io/master: "true"
    node-role.kubernetes.io/etcd: "true"
EOF
  fi
  cat <<EOF
status:
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
  nodeInfo:
    architecture: $arch
    operatingSystem: linux
    kubeletVersion: v1.30.4+k3s1
    containerRuntimeVersion: containerd://2.0.0-k3s1
EOF
}

# kube-apiserver with the settings `up` saved in $dir/apiserver.env.
start_apiserver() {
  # shellcheck disable=SC1091
  source "$dir/apiserver.env"
  # Pods on a real node reach the API server through the `kubernetes` Service, so then it listens
  # on every address and advertises the node bridge's; otherwise it stays on loopback.
  local network=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none)
  [[ $real_node == 1 ]] && network=(--bind-address=0.0.0.0 --advertise-address="$real_node_ip" --endpoint-reconciler-type=lease)
  local audit=()
  [[ -f "$dir/audit-policy.yaml" ]] && audit=(--audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/logs/audit.log" --audit-log-maxsize=8192)
  log "starting kube-apiserver on port $api_port (${network[0]})"
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" --secure-port="$api_port" "${network[@]}" \
    --tls-cert-file="$dir/pki/apiserver.crt" --tls-private-key-file="$dir/pki/apiserver.key" \
    --client-ca-file="$dir/pki/ca.crt" --token-auth-file="$dir/pki/tokens.csv" \
    --kubelet-client-certificate="$dir/pki/kubelet-client.crt" --kubelet-client-key="$dir/pki/kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$dir/pki/sa.pub" --service-account-signing-key-file="$dir/pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --allow-privileged=true \
    --cert-dir="$dir/apiserver-certs" "${audit[@]}"
}

wait_apiserver() {
  wait_for kube-apiserver 90 curl -fsS --cacert "$dir/pki/ca.crt" \
    -H "Authorization: Bearer $(cat "$dir/pki/admin.token")" "https://127.0.0.1:$api_port/readyz"
}

restart_apiserver() {
  local pid_file="$dir/pids/kube-apiserver"
  [[ -f "$pid_file" ]] || { log "no kube-apiserver running in $dir"; exit 1; }
  local pid
  pid="$(cat "$pid_file")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  log "kube-apiserver stopped; starting it again in ${down_for}s"
  sleep "$down_for"
  mv "$dir/logs/kube-apiserver.log" "$dir/logs/kube-apiserver.before-restart.log"
  start_apiserver
  wait_apiserver
  log "kube-apiserver is back"
}

# Whether at least $2 nodes are Ready, from one list.
nodes_ready() {
  local ready
  ready="$(kubectl --kubeconfig="$1" get nodes \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$')"
  ((ready >= $2))
}

# Whether no node has a taint (the node controller removes `not-ready` once a node is Ready).
nodes_untainted() {
  [[ -z "$(kubectl --kubeconfig="$1" get nodes -o jsonpath='{range .items[*]}{.spec.taints}{end}')" ]]
}

up() {
  if [[ -f "$dir/pids/kube-apiserver" ]] && kill -0 "$(cat "$dir/pids/kube-apiserver")" 2>/dev/null; then
    log "a cluster is already running in $dir (run: $0 down --dir $dir)"
    exit 1
  fi
  local bin
  bin="$(bash "$here/../testbin/build.sh" "$( ((real_node)) && echo all || echo control-plane)")"
  rm -rf "$dir"
  mkdir -p "$dir/logs" "$dir/pids" "$dir/etcd"
  pki
  [[ -z "$audit_policy" ]] || cp "$audit_policy" "$dir/audit-policy.yaml"
  local etcd_port etcd_peer api_port sched_port
  etcd_port="$(free_port)"; etcd_peer="$(free_port)"; api_port="$(free_port)"; sched_port="$(free_port)"
  local kc="$dir/kubeconfig"

  log "starting etcd on 127.0.0.1:$etcd_port"
  start etcd "$bin/etcd" --name=node0 --data-dir="$dir/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
    --initial-cluster="node0=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync=true \
    --auto-compaction-retention=1 --quota-backend-bytes=$((2 * 1024 * 1024 * 1024)) --log-level=warn
  wait_for etcd 60 curl -fsS "http://127.0.0.1:$etcd_port/readyz"

  printf 'bin=%q\netcd_port=%q\napi_port=%q\nreal_node=%q\n' "$bin" "$etcd_port" "$api_port" "$real_node" >"$dir/apiserver.env"
  start_apiserver
  kubeconfig "$api_port"
  wait_apiserver

  log "starting kube-controller-manager and kube-scheduler"
  start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$kc" --leader-elect=false \
    --controllers=job-controller,disruption-controller,garbage-collector-controller,node-lifecycle-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,ttl-after-finished-controller,replicaset-controller,deployment-controller,daemonset-controller,endpointslice-controller,statefulset-controller,root-ca-certificate-publisher-controller \
    --service-account-private-key-file="$dir/pki/sa.key" --root-ca-file="$dir/pki/ca.crt" \
    --use-service-account-credentials=false --node-monitor-grace-period=40s --secure-port=0 \
    --kube-api-qps=200 --kube-api-burst=400
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig="$kc" --leader-elect=false \
    --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --secure-port="$sched_port" \
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics \
    --kube-api-qps=200 --kube-api-burst=400
  wait_for kube-scheduler 60 curl -fsSk "https://127.0.0.1:$sched_port/readyz"
  wait_for kube-controller-manager 60 kubectl --kubeconfig="$kc" -n default get serviceaccount default

  log "starting kwok"
  start kwok "$bin/kwok" --kubeconfig="$kc" -c "$bin/kwok-stages.yaml" -c "$here/job-stages.yaml" \
    --manage-nodes-with-label-selector=type=kwok --node-lease-duration-seconds=40 \
    --cidr=10.244.0.1/16 --node-ip=10.1.0.1
  sleep 1
  kill -0 "$(cat "$dir/pids/kwok")" 2>/dev/null || fail kwok "kwok exited during start-up"
  # K3s's part on simulated nodes: a succeeded k3s-upgrade or rke2-upgrade pod brings its node's
  # kubeletVersion to the image's tag (not for a pod labelled suc-test/no-converge=true).
  start kubelet-versions "$bin/kubelet-versions" --kubeconfig="$kc"

  log "creating $nodes nodes ($control_planes control plane)"
  local manifests=""
  for i in $(seq 1 "$nodes"); do
    local name role arch
    if ((i <= control_planes)); then name="server-$i"; role=control-plane; else name="agent-$((i - control_planes))"; role=agent; fi
    # A homelab mix: every third node is a 64-bit ARM board.
    if ((i % 3 == 0)); then arch=arm64; else arch=amd64; fi
    manifests+="$(node_manifest "$name" "$role" "$arch")"$'\n---\n'
  done
  local created=$SECONDS
  echo "$manifests" | kubectl --kubeconfig="$kc" create -f - >/dev/null || fail kwok "could not create the nodes"
  # Readiness and taints are read from one list of all nodes each time (a wait per node takes
  # minutes at a thousand nodes); the time allowed grows with the node count.
  local allowed=$((120 + nodes / 5))
  wait_for kwok "$allowed" nodes_ready "$kc" "$nodes"
  wait_for kube-controller-manager "$allowed" nodes_untainted "$kc"
  log "$nodes nodes Ready and untainted $((SECONDS - created))s after they were created"
  if [[ $real_node == 1 ]]; then
    bash "$here/real-node.sh" up --dir "$dir" || { down; exit 1; }
  fi
  log "ready: export KUBECONFIG=$kc"
  echo "$kc"
}

case "$command" in
  up) up ;;
  down) down; log "stopped the cluster in $dir" ;;
  env) echo "export KUBECONFIG=$dir/kubeconfig" ;;
  restart-apiserver) restart_apiserver ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
