#!/usr/bin/env bash
# One real node for the test control plane of cluster.sh: containerd and runc (Debian's), CNI bridge
# networking with host-local addresses (Debian's containernetworking-plugins), a kubelet and
# kube-proxy built from the control plane's own Kubernetes module.
#
#   tests/cluster/real-node.sh up   [--dir DIR] [--name NAME]   # `cluster.sh up --real-node` calls this
#   tests/cluster/real-node.sh down [--dir DIR]                 # `cluster.sh down` calls this
#
# No registry is reachable, so `up` imports locally built images into the node's containerd:
#   docker.io/library/suc-pause:1                   the pod sandbox image (busybox running sleep)
#   docker.io/library/suc-busybox:{latest,v1.0.0,v1.1.0}    a small upgrade image: busybox's sh, grep, sleep...
#   docker.io/library/system-upgrade-controller:TAG the controller, built by image/build.sh (amd64)
# The node is labelled like a K3s server (control-plane, etcd, master) and `suc-test/real-node=true`;
# kwok leaves it alone (it manages nodes labelled type=kwok). Everything the node creates lives
# under DIR/node, in the bridge `suc-cni0`, in network namespaces and iptables rules that `down`
# removes again: it deletes the node's pods, stops the processes, kills leftover containers,
# unmounts what is mounted under DIR/node, removes kube-proxy's and the bridge's rules, and puts
# IPv4 forwarding back as it found it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
command="${1:-}"
[[ -n "$command" ]] && shift
dir="${SUC_CLUSTER_DIR:-${TMPDIR:-/tmp}/suc-cluster}"
name=real-server
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# shellcheck source=tests/cluster/lib.sh
source "$here/lib.sh"

node="$dir/node"
bridge=suc-cni0
network=suc-pods
sock="$node/containerd/containerd.sock"
kc="$dir/kubeconfig"

ctr_() { ctr --address "$sock" -n k8s.io "$@"; }

# Tools the node runs, with the Debian package of each.
require_tools() {
  declare -A package_of=([containerd]=containerd [containerd-shim-runc-v2]=containerd [ctr]=containerd
    [runc]=runc [iptables]=iptables [ip]=iproute2 [busybox]=busybox-static)
  local missing=() tool
  for tool in "${!package_of[@]}"; do command -v "$tool" >/dev/null || missing+=("${package_of[$tool]}"); done
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing: ${missing[*]}"
    apt-get update -qq || true
    apt-get install -y -qq "${missing[@]}" >&2
  fi
}

write_configs() {
  mkdir -p "$node"/{containerd,cni/net.d,cni/ipam,kubelet,pod-logs,kube-proxy,images}
  cat >"$node/containerd/config.toml" <<EOF
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/suc-pause:1"
  # This machine's root may not lower oom_score_adj (no CAP_SYS_RESOURCE); without this every
  # sandbox fails in runc with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni/net.d"
EOF
  cat >"$node/cni/net.d/10-$network.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$network",
  "plugins": [
    {
      "type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$node/cni/ipam",
        "ranges": [[{"subnet": "$real_node_subnet", "gateway": "$real_node_ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
  client_cert "node-$name" "/O=system:nodes/CN=system:node:$name"
  client_cert kube-proxy "/CN=system:kube-proxy"
  local who
  for who in "node-$name" kube-proxy; do
    kubectl --kubeconfig="$kc" config view --raw --minify -o json | python3 -c '
import json, sys
config = json.load(sys.stdin)
pki, who = sys.argv[1], sys.argv[2]
config["users"][0]["user"] = {"client-certificate": f"{pki}/{who}.crt", "client-key": f"{pki}/{who}.key"}
json.dump(config, sys.stdout)' "$dir/pki" "$who" >"$node/$who.kubeconfig"
  done
  kubelet_port="$(free_port)"
  cat >"$node/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$sock
address: $real_node_ip
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(free_port)
# Only clients with a certificate of the test CA (kube-apiserver, for logs and exec) reach it.
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: AlwaysAllow}
# This machine: cgroup v1 without systemd, swap allowed, a shared disk that must not trigger evictions.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
evictionHard: {memory.available: 1Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: $node/pod-logs
clusterDomain: cluster.local
resolvConf: ""
serializeImagePulls: false
# Its iptables chains would outlive it; kube-proxy writes the rules Services need.
makeIPTablesUtilChains: false
# Node heartbeats as kwok's (cluster.sh: 40 s leases).
nodeLeaseDurationSeconds: 40
EOF
  cat >"$node/kube-proxy/config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $node/kube-proxy.kubeconfig}
hostnameOverride: $name
mode: iptables
clusterCIDR: $real_node_subnet
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$(free_port)
metricsBindAddress: 127.0.0.1:$(free_port)
# Leave the machine's conntrack sysctls as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# The images pods run here, imported from local archives (nothing can be pulled).
import_images() {
  local archive="$node/images/busybox.oci.tar" controller_archive version
  python3 "$here/busybox-image.py" "$archive" suc-pause:1 suc-busybox:latest suc-busybox:v1.0.0 suc-busybox:v1.1.0 >/dev/null
  ctr_ images import "$archive" >/dev/null
  # The controller's image for this machine, built from the working tree (incremental after the first).
  version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)"
  controller_archive="${SUC_REAL_NODE_IMAGE:-}"
  if [[ -z "$controller_archive" ]]; then
    log "building the controller's image for linux/amd64 (image/build.sh)"
    SUC_IMAGE_PLATFORMS=linux/amd64 SUC_IMAGE_OUT="$node/images" bash "$repo/image/build.sh" >/dev/null
    controller_archive="$node/images/system-upgrade-controller-$version-linux-amd64.tar"
  fi
  ctr_ images import "$controller_archive" >/dev/null
  ctr_ images ls -q | sed 's/^/cluster: image /' >&2
}

up() {
  [[ -f "$dir/apiserver.env" ]] || { log "no control plane in $dir (run cluster.sh up --real-node)"; exit 1; }
  # shellcheck disable=SC1091
  source "$dir/apiserver.env"
  [[ "${real_node:-0}" == 1 ]] || { log "the control plane in $dir was not started with --real-node"; exit 1; }
  [[ $(id -u) == 0 ]] || { log "a real node needs root (containerd, runc, network namespaces)"; exit 1; }
  require_tools
  mkdir -p "$dir/logs" "$dir/pids"
  # `down` reads this to know there is something to remove, even after a failed start.
  ip netns list 2>/dev/null | awk '{print $1}' | sort >"$dir/real-node.netns-before"
  # The bridge plugin turns on IPv4 forwarding (its gateway routes for pods); `down` puts it back.
  cat /proc/sys/net/ipv4/ip_forward >"$dir/real-node.ip-forward-before"
  printf 'name=%q\n' "$name" >"$dir/real-node.env"
  write_configs
  # The bridge exists before any pod, so the node address is there for kubelet and kube-proxy.
  ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
  ip addr replace "$real_node_ip/24" dev "$bridge"
  ip link set "$bridge" up

  log "starting containerd for node $name"
  start containerd containerd --config "$node/containerd/config.toml"
  wait_for containerd 30 ctr --address "$sock" version
  import_images || fail containerd "could not import the node's images"

  log "starting kubelet and kube-proxy"
  start kubelet "$bin/kubelet" --config="$node/kubelet/config.yaml" --kubeconfig="$node/node-$name.kubeconfig" \
    --root-dir="$node/kubelet" --cert-dir="$node/kubelet/pki" --hostname-override="$name" --node-ip="$real_node_ip"
  start kube-proxy "$bin/kube-proxy" --config="$node/kube-proxy/config.yaml"
  wait_for kubelet 90 kubectl --kubeconfig="$kc" get node "$name"
  # Labels a kubelet may not set on itself (node-role.kubernetes.io/*): those of a K3s server.
  kubectl --kubeconfig="$kc" label node "$name" --overwrite >/dev/null \
    node-role.kubernetes.io/control-plane=true node-role.kubernetes.io/master=true \
    node-role.kubernetes.io/etcd=true node.kubernetes.io/instance-type=k3s suc-test/real-node=true
  wait_for kubelet 120 kubectl --kubeconfig="$kc" wait --for=condition=Ready "node/$name" --timeout=2s
  wait_for kubelet 60 bash -c \
    "test -z \"\$(kubectl --kubeconfig='$kc' get node '$name' -o jsonpath='{.spec.taints}')\""
  kill -0 "$(cat "$dir/pids/kube-proxy")" 2>/dev/null || fail kube-proxy "kube-proxy exited during start-up"
  # kube-proxy has written the `kubernetes` Service's rules once this ClusterIP answers.
  wait_for kube-proxy 60 curl -fsS --max-time 2 --cacert "$dir/pki/ca.crt" \
    -H "Authorization: Bearer $(cat "$dir/pki/admin.token")" https://10.0.0.1/readyz
  log "node $name is Ready ($real_node_ip, pods in $real_node_subnet)"
}

down() {
  [[ -f "$dir/real-node.env" ]] || return 0
  # shellcheck disable=SC1091
  source "$dir/real-node.env"
  # shellcheck disable=SC1091
  [[ -f "$dir/apiserver.env" ]] && source "$dir/apiserver.env"
  # With the API server up, the kubelet stops the node's pods itself, which also releases their
  # addresses and rules through CNI.
  # Cordoned first, so the pods' controllers do not start new ones here meanwhile.
  if [[ -f "$dir/pids/kubelet" ]] && kill -0 "$(cat "$dir/pids/kubelet")" 2>/dev/null &&
    kubectl --kubeconfig="$kc" --request-timeout=5s cordon "$name" >/dev/null 2>&1 &&
    kubectl --kubeconfig="$kc" --request-timeout=5s delete pods --all-namespaces \
      --field-selector "spec.nodeName=$name" --force --grace-period=0 >/dev/null 2>&1; then
    for _ in $(seq 1 60); do
      [[ -z "$(ctr_ tasks ls -q 2>/dev/null)" ]] && break
      sleep 0.5
    done
    kubectl --kubeconfig="$kc" --request-timeout=5s delete node "$name" --wait=false >/dev/null 2>&1 || true
  fi
  stop_all kube-proxy kubelet
  # Whatever is still running: kill it through containerd, then containerd and its shims.
  if [[ -S "$sock" ]]; then
    local task
    for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true; done
    sleep 1
    for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$task" >/dev/null 2>&1 || true; done
  fi
  stop_all containerd
  pkill -9 -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null || true
  [[ -f "$node/kube-proxy/config.yaml" ]] && "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  # The bridge plugin's masquerade rules name the network in their comment.
  local rule chain
  while read -r rule; do
    chain="$(sed -n 's/.* -j \(CNI-[0-9a-f]*\).*/\1/p' <<<"$rule")"
    eval "iptables -t nat ${rule/-A /-D }" 2>/dev/null || true
    [[ -z "$chain" ]] || { iptables -t nat -F "$chain" && iptables -t nat -X "$chain"; } 2>/dev/null || true
  done < <(iptables -t nat -S POSTROUTING 2>/dev/null | grep -F "name: \\\"$network\\\"" || true)
  # kube-proxy's `--cleanup` leaves the localnet guard it shares with the kubelet.
  local tool
  for tool in iptables ip6tables; do
    "$tool" -D INPUT -j KUBE-FIREWALL 2>/dev/null || true
    "$tool" -D OUTPUT -j KUBE-FIREWALL 2>/dev/null || true
    { "$tool" -F KUBE-FIREWALL && "$tool" -X KUBE-FIREWALL; } 2>/dev/null || true
  done
  # Network namespaces made since `up`, and every mount under the node's directory (deepest first).
  if [[ -f "$dir/real-node.netns-before" ]]; then
    comm -13 "$dir/real-node.netns-before" <(ip netns list 2>/dev/null | awk '{print $1}' | sort) |
      while read -r ns; do ip netns delete "$ns" 2>/dev/null || umount "/run/netns/$ns" 2>/dev/null || true; done || true
  fi
  awk -v prefix="$node/" 'index($5, prefix) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r mount; do umount -l "$mount" 2>/dev/null || true; done || true
  ip link delete "$bridge" 2>/dev/null || true
  if [[ -s "$dir/real-node.ip-forward-before" ]]; then
    cat "$dir/real-node.ip-forward-before" >/proc/sys/net/ipv4/ip_forward 2>/dev/null || true
  fi
  rm -rf "$node" "$dir/real-node.env" "$dir/real-node.netns-before" "$dir/real-node.ip-forward-before"
}

case "$command" in
  up) up ;;
  down) down; log "removed the real node from $dir" ;;
  *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
