# Helpers shared by cluster.sh and real-node.sh: processes started in the background with a PID
# file and a log under $dir, and start-up checks that blame the failing component by its log tail.
# The sourcing script sets $dir and defines `down`, which a failed start calls before exiting.

log() { echo "cluster: $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

fail() {
  local component="$1"; shift
  log "FAILED: $*"
  if [[ -f "$dir/logs/$component.log" ]]; then
    log "last lines of $dir/logs/$component.log:"
    tail -n 40 "$dir/logs/$component.log" >&2
  fi
  down
  exit 1
}

# Waits up to $2 seconds for command "${@:3}" to succeed; the component named $1 is blamed if not.
wait_for() {
  local component="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$dir/pids/$component")" 2>/dev/null; then
      fail "$component" "$component exited during start-up"
    fi
    if ((SECONDS > deadline)); then
      fail "$component" "$component was not ready after ${seconds}s"
    fi
    sleep 0.5
  done
}

start() {
  local name="$1"; shift
  "$@" >"$dir/logs/$name.log" 2>&1 &
  echo $! >"$dir/pids/$name"
}

# Stops the processes named in the arguments, in order, by their PID files: TERM, then KILL after 5 s.
stop_all() {
  local name pid_file pid
  for name in "$@"; do
    pid_file="$dir/pids/$name"
    [[ -f "$pid_file" ]] || continue
    pid="$(cat "$pid_file")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
  done
}

# The real node's pod network: a bridge on this machine whose address is also the node's address
# (a node needs a non-loopback one) and the address pods reach the API server at.
real_node_ip=10.86.0.1
real_node_subnet=10.86.0.0/24

# Writes $1.crt and $1.key in $dir/pki: a client certificate for subject $2 signed by the test CA.
client_cert() {
  local name="$1" subject="$2"
  (
    cd "$dir/pki"
    openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$name.key" -out "$name.csr" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -out "$name.crt" \
      -extfile "$name.ext" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
  )
}
