#!/usr/bin/env bash
# The whole test suite, as the README says. Installs with apt what the tests drive when it is
# missing (Debian's chromium for tests/browser.rs, systemd-analyze for tests/packaging.rs,
# curl for tests/keepalive.rs, Node and npm for tests/socketio.rs), the Socket.IO peers with
# npm ci (tests/socketio), then runs cargo test --workspace (the proxy and the load tool);
# arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v curl >/dev/null || missing+=(curl)
command -v npm >/dev/null || missing+=(nodejs npm)
if (( ${#missing[@]} )); then
    if [[ $(id -u) == 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null; then
        as_root=(sudo)
    else
        echo "scripts/test.sh: the tests need: apt-get install ${missing[*]} (as root)" >&2
        exit 1
    fi
    echo "scripts/test.sh: installing ${missing[*]} with apt-get"
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [[ ! -d tests/socketio/node_modules/socket.io ]]; then
    echo "scripts/test.sh: installing the Socket.IO test peers (npm ci in tests/socketio)"
    npm ci --prefix tests/socketio --no-audit --no-fund --loglevel=error
fi
exec cargo test --workspace "$@"
