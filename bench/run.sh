#!/usr/bin/env bash
# The rollout benchmark in one command: builds the controller and the benchmark (release), starts
# a fresh simulated cluster, measures one Plan rolling across it, prints a table and writes JSON.
#
#   bash bench/run.sh --nodes 200 --concurrency 20     # see --help for the rest
#
# The cluster is stopped afterwards unless --keep is given.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked --bin system-upgrade-controller --example bench >&2
exec target/release/examples/bench "$@"
