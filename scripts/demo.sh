#!/usr/bin/env bash
# Quick start: builds wsplice, starts the bundled demo WebSocket echo upstream on
# 127.0.0.1:3000 and :3001, runs wsplice with the shipped config/wsplice.toml on
# 127.0.0.1:8080, and sends a message through it. Ctrl-C stops everything.
#   scripts/demo.sh          keep running so you can paste the printed command
#   scripts/demo.sh --once   send one message and exit (used by CI)
#   scripts/demo.sh --tls    also a TLS listener on 127.0.0.1:8443 (wss://, https://) with a
#                            throwaway CA and certificate for localhost in target/demo-tls/
#                            (made once by examples/make_cert.rs; rm -r it for new ones)
# --tls and --once combine.
set -euo pipefail
cd "$(dirname "$0")/.."

once=0 tls=0
for arg in "$@"; do
  case "$arg" in
    --once) once=1 ;;
    --tls) tls=1 ;;
    *) echo "usage: scripts/demo.sh [--tls] [--once]" >&2; exit 2 ;;
  esac
done

examples=(--example demo_upstream --example ws_send)
((tls)) && examples+=(--example make_cert)
cargo build --release --quiet --bin wsplice "${examples[@]}"

config=config/wsplice.toml
if ((tls)); then
  # The certificate comes from a Rust example (rcgen, already a dependency) rather than
  # openssl: cargo is all this script needs, and openssl is not on every fresh machine.
  certs=target/demo-tls
  [[ -s $certs/cert.pem && -s $certs/key.pem && -s $certs/ca.pem && -s $certs/spki-sha256.txt ]] ||
    target/release/examples/make_cert "$certs" localhost 127.0.0.1
  # The shipped config plus a TLS listener next to the plain one; upstreams and routes are the
  # same. Written next to the certificates: paths in it are relative to target/demo-tls/.
  sed -e 's|^listen = \["127.0.0.1:8080"\]|listen = ["127.0.0.1:8080", { addr = "127.0.0.1:8443", tls = true }]|' \
    -e 's|^upstreams = "upstreams.toml"|upstreams = "../../config/upstreams.toml"|' \
    config/wsplice.toml >"$certs/wsplice.toml"
  grep -q '8443' "$certs/wsplice.toml" && grep -q '"../../config/upstreams.toml"' "$certs/wsplice.toml" ||
    { echo "demo: config/wsplice.toml no longer has the listen/upstreams lines --tls rewrites" >&2; exit 1; }
  printf '\n[tls]\ncertificates = [{ cert = "cert.pem", key = "key.pem" }]\n' >>"$certs/wsplice.toml"
  config=$certs/wsplice.toml
fi

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
target/release/wsplice --config "$config" &
pids+=($!)
wait_port 8080
((tls)) && wait_port 8443

target/release/examples/ws_send ws://127.0.0.1:8080/websocket "hello through wsplice"
((tls)) && target/release/examples/ws_send --ca "$certs/ca.pem" wss://localhost:8443/websocket "hello through wsplice over TLS"
((once)) && exit 0

cat <<'MSG'

wsplice is proxying ws://127.0.0.1:8080/websocket to the demo upstreams (round robin).

Open http://127.0.0.1:8080/demo in a browser: the page comes through wsplice, opens a
WebSocket back through it, and shows each echo with its round-trip time.

Or, in another terminal, paste:

    target/release/examples/ws_send ws://127.0.0.1:8080/websocket "your message"

or plain HTTP:  curl -i http://127.0.0.1:8080/headers
MSG
if ((tls)); then
  cat <<MSG

TLS: the same routes on https://localhost:8443 and wss://localhost:8443, with a throwaway
certificate for localhost and 127.0.0.1 ($certs/cert.pem) signed by a throwaway CA
($certs/ca.pem) that nothing trusts yet. Paste:

    target/release/examples/ws_send --ca $certs/ca.pem wss://localhost:8443/websocket "your message"
    curl --cacert $certs/ca.pem -i https://localhost:8443/headers      (or curl -k: no check at all)

In a browser, open https://localhost:8443/demo and accept the warning about the certificate
(Chrome: Advanced, Proceed to localhost; Firefox: Advanced, Accept the Risk and Continue); the
page's wss:// goes to the same listener. Or trust this certificate's key alone in a Chromium
with its own profile:

    chromium --user-data-dir=\$(mktemp -d) --ignore-certificate-errors-spki-list=$(cat "$certs/spki-sha256.txt") https://localhost:8443/demo

Or import $certs/ca.pem as an authority (Chrome: Settings, Privacy and security, Security,
Manage certificates; Firefox: Settings, Privacy & Security, View Certificates, Authorities)
and remove it when done: its key is gone, but it still vouches for $certs/key.pem.
MSG
fi
echo "Ctrl-C stops the demo."
wait
