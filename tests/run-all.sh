#!/usr/bin/env bash
# The README's test command: every test suite, with all set-up, on a fresh machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Tools the suites use besides Rust and Go: openssl and curl (test PKI, health checks),
# python3 (free ports) and kubectl (what a user runs).
missing=()
for tool in openssl curl python3 kubectl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  packages=("${missing[@]/kubectl/kubernetes-client}")
  sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq && "${sudo_cmd[@]}" apt-get install -y -qq "${packages[@]}"
fi

# Unit tests, the router in-process, TLS on loopback, the CLI and the packaging checks.
cargo test --locked

# End to end against a real control plane: builds it from the Go module proxy when the cache is
# cold, starts a fresh one (or reuses SUC_E2E_KUBECONFIG's), runs the suite and stops it.
cargo test --locked --features e2e --test e2e
