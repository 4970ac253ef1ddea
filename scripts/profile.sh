#!/usr/bin/env bash
# Where wsplice spends its CPU under one load mode: wsplice (1 worker) pinned to CPU 1, the
# bench upstream and client on CPU 0, `perf record` (cpu-clock sampling, which works without
# hardware counters, e.g. in VMs) on wsplice for 5 s of steady load, then the top symbols.
#   scripts/profile.sh                        rr, 50 connections, 64-byte messages
#   scripts/profile.sh bulk -c 4              any wsplice-bench mode and its options
# Needs perf (apt-get install linux-perf); the report and perf.data stay in a temp folder.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-rr}"
shift || true

if ! command -v perf >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null
fi
cargo build --release --quiet -p wsplice --bin wsplice
cargo build --release --quiet -p wsplice-bench
bench=target/release/wsplice-bench
dir=$(mktemp -d /tmp/wsplice-profile.XXXXXX)

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_line() { # file pattern: bounded wait (10 s) for a line, printed
  for _ in $(seq 1 200); do
    grep -m1 "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "profile: no '$2' in $1:" >&2
  cat "$1" >&2
  return 1
}

taskset -c 0 "$bench" upstream --listen 127.0.0.1:0 >"$dir/upstream.log" 2>&1 &
pids+=($!)
upstream=$(wait_line "$dir/upstream.log" "listening on" | awk '{print $3}')
printf '[backend]\nservers = ["%s"]\n' "$upstream" >"$dir/upstreams.toml"
printf 'listen = ["127.0.0.1:0"]\nworkers = 1\nupstreams = "upstreams.toml"\n\n[[route]]\npath = "/"\nupstream = "backend"\n' >"$dir/wsplice.toml"
taskset -c 1 target/release/wsplice --config "$dir/wsplice.toml" >"$dir/wsplice.log" 2>&1 &
wsplice=$!
pids+=("$wsplice")
proxy=$(wait_line "$dir/wsplice.log" "listening on" | sed 's/.*listening on \([^ ]*\).*/\1/')

"$bench" "$mode" --target "$proxy" --duration 8s --warmup 1s --cpus 0 "$@" >"$dir/load.log" 2>&1 &
load=$!
sleep 2
perf record -q -e cpu-clock -F 2999 -p "$wsplice" -o "$dir/perf.data" -- sleep 5 2>/dev/null
wait "$load" || true
cat "$dir/load.log"
perf report -i "$dir/perf.data" --stdio --no-children --sort dso,sym --percent-limit 0.7 2>/dev/null |
  grep -v '^$' | tee "$dir/report.txt" | head -60
echo "profile: $dir (perf.data, report.txt)"
