#!/usr/bin/env bash
# The main job: a local simulated K3s-like cluster (real control plane, kwok nodes) with our
# server installed as the Plans' admission webhook, and the usual K3s server and agent Plans
# applied to it.
#
#   bash demo/run.sh          # set up everything and show the result
#   bash demo/run.sh stop     # stop the server and the cluster
#
# Environment: SUC_DEMO_NODES (default 6: 1 control plane, 5 agents), SUC_DEMO_DIR (default
# /tmp/suc-demo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="${SUC_DEMO_DIR:-${TMPDIR:-/tmp}/suc-demo}"
nodes="${SUC_DEMO_NODES:-6}"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

stop() {
  if [[ -f "$dir/controller.pid" ]]; then
    kill "$(cat "$dir/controller.pid")" 2>/dev/null || true
    rm -f "$dir/controller.pid"
  fi
  bash tests/cluster/cluster.sh down --dir "$dir/cluster"
}

if [[ "${1:-}" == stop ]]; then
  stop
  exit 0
fi
stop >/dev/null 2>&1 || true
mkdir -p "$dir"

say "Building system-upgrade-controller"
cargo build --release --locked --bin system-upgrade-controller
bin="$PWD/target/release/system-upgrade-controller"

say "Starting a control plane with $nodes simulated nodes (first run builds it: ~10 minutes)"
kubeconfig="$(bash tests/cluster/cluster.sh up --dir "$dir/cluster" --nodes "$nodes" --control-planes 1)"
export KUBECONFIG="$kubeconfig"
kubectl get nodes -L kubernetes.io/arch

say "Installing the CRD, the namespace and the webhook configurations"
kubectl apply -f deploy/namespace.yaml -f deploy/crd.yaml
kubectl wait --for condition=established crd/plans.upgrade.cattle.io --timeout=60s
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# The server runs on this machine, not in the cluster: point the webhooks at it by URL.
awk -v url="https://127.0.0.1:$port" '
  /^    service:$/ { in_service = 1; next }
  in_service && /^      / { if ($1 == "path:") path = $2; next }
  in_service { print "    url: " url path; in_service = 0 }
  { print }' webhook-config.yaml | kubectl apply -f -

say "Starting the server (it creates its CA, injects the caBundle and serves on 127.0.0.1:$port)"
"$bin" run --kubeconfig "$KUBECONFIG" --listen "127.0.0.1:$port" --extra-cert-names 127.0.0.1 \
  >"$dir/controller.log" 2>&1 &
echo $! >"$dir/controller.pid"
for _ in $(seq 1 60); do
  curl -fsSk "https://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$dir/controller.pid")" 2>/dev/null || { cat "$dir/controller.log"; exit 1; }
  sleep 0.5
done
until [[ -n "$(kubectl get validatingwebhookconfiguration system-upgrade-controller -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]]; do sleep 0.5; done

say "Applying the usual K3s server and agent Plans"
kubectl apply -f tests/plans/valid/k3s-server.yaml -f tests/plans/valid/k3s-agent.yaml
kubectl -n system-upgrade get plans -o wide

say "A Plan with mistakes is refused with every problem named"
kubectl apply -f tests/plans/invalid/many-problems.yaml || true

say "Offline, the same rules: system-upgrade-controller check"
"$bin" check -f tests/plans/invalid/many-problems.yaml tests/plans/valid/k3s-agent.yaml || true

cat <<EOF

The cluster and the server keep running:
  export KUBECONFIG=$KUBECONFIG
  kubectl apply -f tests/plans/invalid/version-two-parts.yaml   # try a bad Plan
  curl -k https://127.0.0.1:$port/metrics                        # what the webhook answered
  less $dir/controller.log
Stop everything with: bash demo/run.sh stop
EOF
