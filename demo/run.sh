#!/usr/bin/env bash
# The main job: a local simulated K3s cluster (a real control plane, kwok nodes), with our
# controller rolling the usual K3s server and agent Plans across it.
#
#   bash demo/run.sh              # set everything up, show the rollout until both Plans are Complete
#   bash demo/run.sh --real-node  # the same with a real kubelet node as the K3s server (root): the
#                                 # controller runs in-cluster from its image, and the server
#                                 # Plan's upgrade pod really runs on that node
#   bash demo/run.sh stop         # stop the controller, the channel server and the cluster
#
# Environment: SUC_DEMO_NODES (default 6: 1 control plane, 5 agents), SUC_DEMO_DIR (default
# /tmp/suc-demo), SUC_DEMO_VERSION (default v1.30.5+k3s1; the simulated nodes run v1.30.4+k3s1, and
# report the new version once their upgrade succeeds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="${SUC_DEMO_DIR:-${TMPDIR:-/tmp}/suc-demo}"
nodes="${SUC_DEMO_NODES:-6}"
version="${SUC_DEMO_VERSION:-v1.30.5+k3s1}"
real_node=0
[[ "${1:-}" == --real-node ]] && real_node=1

say() { printf '\n== %s\n' "$*"; }

stop() {
  for pid_file in "$dir/controller.pid" "$dir/channel.pid"; do
    if [[ -f "$pid_file" ]]; then
      kill "$(cat "$pid_file")" 2>/dev/null || true
      rm -f "$pid_file"
    fi
  done
  bash tests/cluster/cluster.sh down --dir "$dir/cluster"
}

if [[ "${1:-}" == stop ]]; then
  stop
  exit 0
fi
stop >/dev/null 2>&1 || true
mkdir -p "$dir"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [[ $real_node == 1 ]]; then
  say "Starting a control plane, a real node (the K3s server) and $((nodes - 1)) simulated agents (the first run builds it: ~10 minutes)"
  kubeconfig="$(bash tests/cluster/cluster.sh up --dir "$dir/cluster" --nodes "$((nodes - 1))" --real-node)"
  export KUBECONFIG="$kubeconfig"
  kubectl get nodes -L kubernetes.io/arch

  say "Installing the controller in the cluster from its image: deploy/, with Jobs using local images (no registry here)"
  kubectl apply -k tests/cluster/real-node-deploy
  kubectl -n system-upgrade rollout status deployment/system-upgrade-controller --timeout=180s
  kubectl -n system-upgrade get pods -o wide
  # Pods reach this machine at the node's address.
  channel_host=10.86.0.1
else
  say "Building system-upgrade-controller"
  cargo build --release --locked --bin system-upgrade-controller
  bin="$PWD/target/release/system-upgrade-controller"

  say "Starting a control plane with $nodes simulated nodes (the first run builds it: ~10 minutes)"
  kubeconfig="$(bash tests/cluster/cluster.sh up --dir "$dir/cluster" --nodes "$nodes" --control-planes 1)"
  export KUBECONFIG="$kubeconfig"
  kubectl get nodes -L kubernetes.io/arch

  say "Installing the namespace, the CRD, RBAC (ServiceAccounts system-upgrade-controller and system-upgrade) and the webhooks"
  kubectl apply -f deploy/namespace.yaml -f deploy/crd.yaml -f deploy/rbac.yaml
  kubectl wait --for condition=established crd/plans.upgrade.cattle.io --timeout=60s >/dev/null
  port="$(free_port)"
  # The controller runs on this machine, not in the cluster: point the webhooks at it by URL.
  awk -v url="https://127.0.0.1:$port" '
    /^    service:$/ { in_service = 1; next }
    in_service && /^      / { if ($1 == "path:") path = $2; next }
    in_service { print "    url: " url path; in_service = 0 }
    { print }' webhook-config.yaml | kubectl apply -f -
  channel_host=127.0.0.1
fi

say "Starting a stand-in for the K3s release channel (no network here): it answers $version"
channel_port="$(free_port)"
python3 - "$channel_host" "$channel_port" "$version" >"$dir/channel.log" 2>&1 <<'EOF' &
import http.server, sys, urllib.parse
host, port, version = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class Channel(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", "https://github.com/k3s-io/k3s/releases/tag/" + urllib.parse.quote(version))
        self.end_headers()
http.server.HTTPServer((host, port), Channel).serve_forever()
EOF
echo $! >"$dir/channel.pid"

if [[ $real_node == 0 ]]; then
  say "Starting the controller as the ServiceAccount system-upgrade-controller (its RBAC is all it has)"
  sed "s/^  user:/  user:\n    as: system:serviceaccount:system-upgrade:system-upgrade-controller/" "$KUBECONFIG" >"$dir/service-account.kubeconfig"
  "$bin" run --kubeconfig "$dir/service-account.kubeconfig" --listen "127.0.0.1:$port" --extra-cert-names 127.0.0.1 \
    --cert-check-interval 2s >"$dir/controller.log" 2>&1 &
  echo $! >"$dir/controller.pid"
  for _ in $(seq 1 120); do
    curl -fsSk "https://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "$(cat "$dir/controller.pid")" 2>/dev/null || { tail -20 "$dir/controller.log"; exit 1; }
    sleep 0.5
  done
fi
until [[ -n "$(kubectl get validatingwebhookconfiguration system-upgrade-controller -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]]; do sleep 0.5; done

say "Applying the usual K3s server Plan (channel) and agent Plan (version)"
server_plan="$(sed "s#https://update.k3s.io/v1-release/channels/stable#http://$channel_host:$channel_port/v1-release/channels/stable#" \
  tests/plans/valid/k3s-server.yaml)"
if [[ $real_node == 1 ]]; then
  # The real server node cannot pull rancher/k3s-upgrade: a local busybox image says what it would do.
  server_plan="$(kubectl patch --local -f - --type merge -o yaml -p '{"spec": {"upgrade": {
    "image": "suc-busybox:latest", "command": ["sh", "-c"],
    "args": ["echo \"upgrading K3s on $SYSTEM_UPGRADE_NODE_NAME to $SYSTEM_UPGRADE_PLAN_LATEST_VERSION\"; sleep 3; echo done"]}}}' \
    <<<"$server_plan")"
fi
kubectl apply -f - <<<"$server_plan"
sed "s#version: v1.30.4+k3s1#version: $version#" tests/plans/valid/k3s-agent.yaml | kubectl apply -f -

say "The rollout as it happens (J = Job runs: prepare first, C = cordoned and drained after prepare, S/A = server/agent Plan done; agents start once the server runs the new version)"
started=$SECONDS
snapshot() {
  local nodes_line jobs_line
  # Jobs first, then nodes: a node is cordoned only after its Job exists and prepare ran, so a
  # cordon seen in the same snapshot always has its Job listed.
  jobs_line="$(kubectl -n system-upgrade get jobs -o jsonpath='{range .items[*]}{.metadata.labels.upgrade\.cattle\.io/node}{" "}{.status.active}{"\n"}{end}')"
  nodes_line="$(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{"|"}{.spec.unschedulable}{"|"}{.metadata.labels.plan\.upgrade\.cattle\.io/server-plan}{"|"}{.metadata.labels.plan\.upgrade\.cattle\.io/agent-plan}{"\n"}{end}')"
  while IFS='|' read -r name cordoned server agent; do
    [[ -z "$name" ]] && continue
    local marks=""
    [[ "$cordoned" == true ]] && marks+="C"
    grep -q "^$name 1$" <<<"$jobs_line" && marks+="J"
    [[ -n "$server" ]] && marks+="S"
    [[ -n "$agent" ]] && marks+="A"
    printf '%s[%s] ' "$name" "${marks:--}"
  done <<<"$nodes_line"
}
last=""
while true; do
  line="$(snapshot)"
  if [[ "$line" != "$last" ]]; then
    printf '%4ss  %s\n' "$((SECONDS - started))" "$line"
    last="$line"
  fi
  complete="$(kubectl -n system-upgrade get plans -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Complete")].status}{" "}{end}')"
  [[ "$complete" == "True True " ]] && break
  if ((SECONDS - started > 600)); then
    echo "the rollout did not finish in 10 minutes; see $dir/controller.log" >&2
    exit 1
  fi
  sleep 0.5
done
elapsed=$((SECONDS - started))

say "Both Plans are Complete after ${elapsed}s"
kubectl -n system-upgrade get plans -o wide
kubectl get nodes -L plan.upgrade.cattle.io/server-plan -L plan.upgrade.cattle.io/agent-plan
kubectl -n system-upgrade get events --field-selector involvedObject.kind=Plan --sort-by=.eventTime 2>/dev/null | tail -8 || true
first_agent="$(kubectl get nodes -l plan.upgrade.cattle.io/agent-plan -o jsonpath='{.items[0].metadata.name}')"
echo "Each node records its last upgrade by each Plan; $first_agent's by the agent Plan:"
kubectl get node "$first_agent" -o jsonpath='{.metadata.annotations.upgraded\.upgrade\.cattle\.io/agent-plan}{"\n"}'

if [[ $real_node == 1 ]]; then
  say "The server Plan's Job really ran on the real node; its log:"
  kubectl -n system-upgrade logs "$(kubectl -n system-upgrade get jobs -l upgrade.cattle.io/plan=server-plan -o name | head -n 1)" \
    --all-containers --prefix
  cat <<EOF

The cluster and the controller (in-cluster, two replicas) keep running. Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl apply -f tests/plans/invalid/many-problems.yaml        # refused by the in-cluster webhook
  kubectl -n system-upgrade get lease system-upgrade-controller   # which replica leads
  kubectl -n system-upgrade delete pod --force POD                # kill it: the other one takes over
  kubectl -n system-upgrade logs deployment/system-upgrade-controller
  curl -k https://\$(kubectl -n system-upgrade get svc system-upgrade-controller -o jsonpath='{.spec.clusterIP}')/metrics
Stop everything with: bash demo/run.sh stop
EOF
  exit 0
fi
cat <<EOF

The cluster and the controller keep running. Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl apply -f tests/plans/invalid/many-problems.yaml        # a bad Plan: every problem is named
  kubectl -n system-upgrade patch plan agent-plan --type=merge -p '{"spec":{"version":"v1.29.9+k3s1"}}'   # refused: a downgrade
  kubectl -n system-upgrade patch plan agent-plan --type=merge -p '{"spec":{"version":"v1.31.0+k3s1"}}'   # agents wait for the server
  kubectl -n system-upgrade get plan agent-plan -o jsonpath='{range .status.nodes[*]}{.name} {.phase}: {.message}{"\n"}{end}'
  curl -k https://127.0.0.1:$port/metrics                         # webhook and controller metrics
  less $dir/controller.log
Stop everything with: bash demo/run.sh stop
EOF
