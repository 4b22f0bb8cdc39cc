#!/usr/bin/env bash
# The long soak: random seeds for about an hour, each with some minutes of operator actions and
# faults on 200 simulated nodes, checked write by write (tests/e2e/soak.rs, tests/e2e/history.rs);
# the results are added to SOAK.md.
#
#   bash tests/soak/run.sh [--minutes 60] [--seconds 300] [--nodes 200] [--seeds 7,8] [--out SOAK.md]
#
# Starts a fresh control plane (or reuses SUC_E2E_KUBECONFIG's, which must have been started with
# --audit-policy tests/cluster/audit-policy.yaml). Exits non-zero if any seed broke a rule; the
# seed, the rule, the writes that broke it and the command that replays it are printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
minutes=60 seconds=300 nodes=200 seeds= out=SOAK.md
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) sed -n '2,11p' "$0" >&2; exit 2 ;;
  esac
done
if [[ -z "$seeds" ]]; then
  # Each seed also spends about five minutes setting up and settling at this size.
  count=$(( (minutes * 60) / (seconds + 300) )); (( count >= 1 )) || count=1
  seeds="$(python3 -c "import random; print(','.join(str(random.randrange(1, 2**31)) for _ in range($count)))")"
fi
results="$(mktemp)"
started=$SECONDS
commit="$(git rev-parse --short HEAD)"
echo "soak: seeds $seeds, ${seconds}s of faults and actions each, $nodes nodes" >&2
status=0
# Two hundred nodes settle more slowly after the faults than the short run's fifty.
SUC_SOAK_SEEDS="$seeds" SUC_SOAK_SECONDS="$seconds" SUC_SOAK_NODES="$nodes" SUC_SOAK_OUT="$results" \
  SUC_SOAK_SETTLE_SECONDS="${SUC_SOAK_SETTLE_SECONDS:-600}" \
  cargo test --locked --features e2e --test e2e -- --exact a_seeded_soak_keeps_the_safety_rules || status=$?
python3 tests/soak/report.py "$results" "$((SECONDS - started))" "$commit" >>"$out"
echo "soak: results added to $out" >&2
rm -f "$results"
exit "$status"
