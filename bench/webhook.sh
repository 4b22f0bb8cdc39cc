#!/usr/bin/env bash
# Webhook throughput: POST /validate with a typical Plan (the K3s agent Plan, as the API server
# sends it on `kubectl apply`) against GET /healthz, over TLS with keep-alive, measured with wrk.
# Then /validate again at about half its top rate, for the latency an API server sees when the
# webhook is busy but not saturated.
#
#   bash bench/webhook.sh [--connections 16] [--threads 2] [--duration 20s]
#
# The server runs with --webhook-only on loopback, so no cluster is needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
connections=16
threads=2
duration=20s
while [[ $# -gt 0 ]]; do
  case "$1" in
    --connections) connections="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { apt-get install -y wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }; }
cargo build --release --locked --bin system-upgrade-controller >&2

work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
target/release/system-upgrade-controller run --webhook-only --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  curl -fsSk "https://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# The review body, and a wrk script that posts it and prints the figures as one line each.
python3 - "$work/review.json" <<'PY'
import json, sys
plan = {
    "apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
    "metadata": {"name": "agent-plan", "namespace": "system-upgrade"},
    "spec": {
        "concurrency": 1, "cordon": True,
        "nodeSelector": {"matchExpressions": [
            {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]},
        "prepare": {"args": ["prepare", "server-plan"], "image": "rancher/k3s-upgrade"},
        "serviceAccountName": "system-upgrade",
        "upgrade": {"image": "rancher/k3s-upgrade"},
        "version": "v1.30.4+k3s1",
    },
}
review = {
    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
    "request": {
        "uid": "0f6a5c1e-6b7c-4f5e-9a57-3d1c2b0e9f11",
        "kind": {"group": "upgrade.cattle.io", "version": "v1", "kind": "Plan"},
        "resource": {"group": "upgrade.cattle.io", "version": "v1", "resource": "plans"},
        "requestKind": {"group": "upgrade.cattle.io", "version": "v1", "kind": "Plan"},
        "requestResource": {"group": "upgrade.cattle.io", "version": "v1", "resource": "plans"},
        "name": "agent-plan", "namespace": "system-upgrade", "operation": "CREATE",
        "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
        "object": plan, "oldObject": None, "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions", "fieldManager": "kubectl-client-side-apply"},
    },
}
open(sys.argv[1], "w").write(json.dumps(review))
PY
cat >"$work/report.lua" <<'LUA'
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f errors=%d requests=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    summary.requests))
end
LUA
{
  printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nlocal f = io.open("%s")\nwrk.body = f:read("*a")\nf:close()\n' "$work/review.json"
  cat "$work/report.lua"
} >"$work/validate.lua"

# Checks that the review is really allowed, so the figures are of real answers.
curl -fsSk -H 'Content-Type: application/json' --data-binary "@$work/review.json" "https://127.0.0.1:$port/validate" \
  | grep -q '"allowed":true' || { echo "the typical Plan was not allowed" >&2; exit 1; }

run() { wrk --threads "$threads" --connections "$connections" --duration "$duration" "$@" | grep '^RESULT' | sed 's/^RESULT //'; }
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }

healthz="$(run -s "$work/report.lua" "https://127.0.0.1:$port/healthz")"
validate="$(run -s "$work/validate.lua" "https://127.0.0.1:$port/validate")"
# About half of /validate's top rate: each connection pauses between requests (wrk's delay hook, in
# whole milliseconds) so that all of them together ask for that rate.
half="$(python3 -c "print(int($(field rps "$validate") / 2))")"
pause_ms="$(python3 -c "print(max(1, round($connections * 1000 / $half)))")"
{
  printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nlocal f = io.open("%s")\nwrk.body = f:read("*a")\nf:close()\n' "$work/review.json"
  printf 'delay = function() return %s end\n' "$pause_ms"
  cat "$work/report.lua"
} >"$work/validate-half.lua"
paced="$(run -s "$work/validate-half.lua" "https://127.0.0.1:$port/validate")"

ratio="$(python3 -c "print(f'{$(field rps "$validate") / $(field rps "$healthz"):.2f}')")"
cat <<TABLE

webhook throughput: $connections connections, $threads wrk threads, $duration each, TLS keep-alive, $(nproc) cores

| endpoint | requests/s | p50 | p99 | errors |
|---|---|---|---|---|
| GET /healthz | $(field rps "$healthz") | $(field p50_ms "$healthz") ms | $(field p99_ms "$healthz") ms | $(field errors "$healthz") |
| POST /validate (typical Plan) | $(field rps "$validate") | $(field p50_ms "$validate") ms | $(field p99_ms "$validate") ms | $(field errors "$validate") |
| POST /validate, paced to ~$half/s | $(field rps "$paced") | $(field p50_ms "$paced") ms | $(field p99_ms "$paced") ms | $(field errors "$paced") |

/validate ÷ /healthz: $ratio (goal ≥ 0.5); p99 at about half rate: $(field p99_ms "$paced") ms (goal < 5 ms)
TABLE
