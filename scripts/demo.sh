#!/usr/bin/env bash
# Quick start: builds wsplice, starts the bundled demo WebSocket echo upstream on
# 127.0.0.1:3000 and :3001, runs wsplice with the shipped config/wsplice.toml on
# 127.0.0.1:8080, and sends a message through it. Ctrl-C stops everything.
#   scripts/demo.sh          keep running so you can paste the printed command
#   scripts/demo.sh --once   send one message and exit (used by CI)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin wsplice --example demo_upstream --example ws_send

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_port() { # port: bounded wait (10 s) for a listener
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "demo: nothing listens on 127.0.0.1:$1 after 10 s" >&2
  return 1
}

target/release/examples/demo_upstream 127.0.0.1:3000 127.0.0.1:3001 &
pids+=($!)
wait_port 3000 && wait_port 3001
target/release/wsplice --config config/wsplice.toml &
pids+=($!)
wait_port 8080

target/release/examples/ws_send ws://127.0.0.1:8080/websocket "hello through wsplice"
[[ "${1:-}" == "--once" ]] && exit 0

cat <<'MSG'

wsplice is proxying ws://127.0.0.1:8080/websocket to the demo upstreams (round robin).

Open http://127.0.0.1:8080/demo in a browser: the page comes through wsplice, opens a
WebSocket back through it, and shows each echo with its round-trip time.

Or, in another terminal, paste:

    target/release/examples/ws_send ws://127.0.0.1:8080/websocket "your message"

or plain HTTP:  curl -i http://127.0.0.1:8080/headers
Ctrl-C stops the demo.
MSG
wait
