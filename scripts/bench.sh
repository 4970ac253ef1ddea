#!/usr/bin/env bash
# The side-by-side benchmark (README "Benchmarks"): no proxy ("direct", the ceiling), nginx
# with the usual WebSocket recipe, HAProxy and wsplice, on the same upstream and client, in
# one run, printed as one table. Installs nginx and haproxy with apt when missing (as root),
# builds the release binaries, then runs `wsplice-bench compare`.
#   scripts/bench.sh             5 s cells, 3 rounds, 8,000 idle connections, fanout with and
#                                without a CPU hog, rr at 2,000 connections (about 12 minutes)
#   scripts/bench.sh --quick     1 s cells, 2 rounds, 1,000 idle connections (about 2 minutes)
#   scripts/bench.sh --targets direct,wsplice --cells rr,bulk --proxy-cpus 4-7 --load-cpus 0-3
#   scripts/bench.sh --cells tls --targets nginx,haproxy,wsplice   the TLS cells (wss-rr,
#     wss-rr-many, tls-handshakes, wss-bulk, wss-idle): same certificate, TLS 1.3, one cipher
#   scripts/bench.sh --targets nginx,wsplice --cells rr,rr-many,fanout --rr-connections 200
#                                issue 15's cost table: CPU per message as user + kernel, system
#                                calls per message (perf, in a separate 1 s window; n/a without
#                                it), p99 at 200 and at 2,000 connections (rr-many)
# Any other option is passed to `wsplice-bench compare` (see its --help). Results go to
# bench-results/DATE/ (table.md, summary.csv, runs.csv).
set -euo pipefail
cd "$(dirname "$0")/.."

targets="direct,nginx,haproxy,wsplice"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --targets) targets="${args[i + 1]:-}" ;;
    --targets=*) targets="${args[i]#--targets=}" ;;
  esac
done

missing=()
for program in nginx haproxy; do
  if [[ ",$targets," == *",$program,"* ]] && ! command -v "$program" >/dev/null && [[ ! -x "/usr/sbin/$program" ]]; then
    missing+=("$program")
  fi
done
if ((${#missing[@]})); then
  echo "bench: installing ${missing[*]} with apt-get" >&2
  # Keep the packages from starting their system services (nginx would take port 80).
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
find_program() { command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"; }

# Two builds, not one: built together, the proxy would get the load tool's tokio features.
cargo build --release --quiet -p wsplice --bin wsplice
cargo build --release --quiet -p wsplice-bench
target/release/wsplice-bench compare \
  --wsplice-bin target/release/wsplice \
  --nginx-bin "$(find_program nginx)" \
  --haproxy-bin "$(find_program haproxy)" \
  "$@"
