#!/usr/bin/env bash
# The .deb end to end, as root on a scratch machine (CI): build it with `cargo deb`, install it
# with `dpkg -i`, check what it installed (`wsplice --check` on /etc/wsplice, conffiles, user,
# `systemd-analyze verify`), then boot this machine's own root, read-only under a throwaway
# overlay, as a systemd container (systemd-nspawn, private network) and drive the installed
# unit there: start returns once it serves, hardening in force, reload, failed reload, drain on
# stop, restart on failure. Finally purges the package, leaving the machine as it was.
#   scripts/package-test.sh        needs: root, cargo-deb, systemd-container, curl
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

say() { echo "package-test: $*"; }
fail() { echo "package-test: FAILED: $*" >&2; exit 1; }

# ---- inside the container (PID 1 is systemd; the repo is at /src, results go to /out) ----
if [[ "${1:-}" == "--in-container" ]]; then
    exec > /out/inside.log 2>&1
    trap 'echo "inside: FAILED at line $LINENO: $BASH_COMMAND"; journalctl -u wsplice --no-pager | tail -n 30' ERR
    step() { echo "inside: $*"; }
    /src/target/release/examples/demo_upstream 127.0.0.1:3000 127.0.0.1:3001 &
    for port in 3000 3001; do
        for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
    done
    ws_send() { timeout 10 /src/target/release/examples/ws_send ws://127.0.0.1:8080/websocket "$1"; }
    has() { grep -q -- "$1" <<<"$2"; }
    journal() { journalctl -u wsplice --no-pager; }

    # Type=notify: start returns once every worker listens, so the first message must pass.
    systemctl start wsplice
    has 'echo "right after systemctl start"' "$(ws_send "right after systemctl start")"
    [[ $(systemctl show wsplice -p StatusText --value) == "listening on 127.0.0.1:8080" ]]
    pid=$(systemctl show wsplice -p MainPID --value)
    [[ $(ps -o user= -p "$pid") == wsplice ]]
    grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd):' "/proc/$pid/status"
    grep -q '^NoNewPrivs:\s*1$' "/proc/$pid/status"
    grep -q '^Seccomp:\s*2$' "/proc/$pid/status"
    grep -q '^CapEff:\s*0000000000000000$' "/proc/$pid/status"
    [[ $(systemctl show wsplice -p LimitNOFILE --value) == 65536 ]]
    step "systemctl start returned with wsplice serving, as user wsplice, no new privileges, seccomp on, no capabilities, 65536 files"

    # Reload: a good upstream file takes effect; a broken one fails the reload and changes nothing.
    echo '[backend]
servers = ["127.0.0.1:3001"]' > /etc/wsplice/upstreams.toml
    systemctl reload wsplice
    for _ in 1 2 3; do
        has 'X-Upstream: 127.0.0.1:3001' "$(curl -sS -i http://127.0.0.1:8080/)"
    done
    echo 'servers = [' > /etc/wsplice/upstreams.toml
    if systemctl reload wsplice; then exit 11; fi
    [[ $(systemctl show wsplice -p MainPID --value) == "$pid" ]]
    has echo "$(ws_send "after a refused reload")"
    step "systemctl reload applied a good upstream file, failed on a broken one and kept serving"

    # Stop drains: with a WebSocket open the unit stays deactivating until it closes.
    exec 3<>/dev/tcp/127.0.0.1/8080
    printf 'GET /websocket HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n' >&3
    read -r -t 10 status_line <&3
    [[ $status_line == "HTTP/1.1 101"* ]]
    systemctl stop --no-block wsplice
    for _ in $(seq 1 100); do
        has 'draining 1 open connections' "$(journal)" && break
        sleep 0.05
    done
    [[ $(systemctl is-active wsplice) == deactivating ]]
    exec 3>&-
    for _ in $(seq 1 200); do [[ $(systemctl is-active wsplice) == inactive ]] && break; sleep 0.05; done
    [[ $(systemctl is-active wsplice) == inactive ]]
    has 'stopped (drained): 1 connections drained, 0 cut' "$(journal)"
    [[ $(systemctl show wsplice -p Result --value) == success ]]
    step "systemctl stop waited for the open WebSocket to close (drain), then wsplice exited 0"

    # Restart=on-failure: a crash is restarted (RestartSec=2s).
    echo '[backend]
servers = ["127.0.0.1:3000"]' > /etc/wsplice/upstreams.toml
    systemctl start wsplice
    pid=$(systemctl show wsplice -p MainPID --value)
    kill -KILL "$pid"
    for _ in $(seq 1 100); do
        new=$(systemctl show wsplice -p MainPID --value)
        [[ $new != 0 && $new != "$pid" && $(systemctl is-active wsplice) == active ]] && break
        sleep 0.1
    done
    [[ $(systemctl show wsplice -p NRestarts --value) == 1 ]]
    has echo "$(ws_send "after a restart")"
    step "a killed wsplice was restarted (Restart=on-failure) and serves again"

    journalctl -u wsplice --no-pager -o short-monotonic
    step "INSIDE OK"
    exit 0
fi

# ---- on the host ----
[[ $(id -u) == 0 ]] || fail "needs root (dpkg -i, systemd-nspawn)"
command -v cargo-deb >/dev/null || fail "cargo-deb missing: cargo install cargo-deb"
command -v systemd-nspawn >/dev/null || fail "systemd-nspawn missing: apt-get install systemd-container"
command -v curl >/dev/null || fail "curl missing: apt-get install curl"
dpkg -s wsplice >/dev/null 2>&1 && fail "a wsplice package is already installed here; not replacing it"
if getent passwd wsplice >/dev/null; then user_existed=1; else user_existed=0; fi
cgroups_before=$(ls -d /sys/fs/cgroup/*/payload /sys/fs/cgroup/*/supervisor 2>/dev/null || true)
work=$(mktemp -d /tmp/wsplice-package-test.XXXXXX)

cleanup() {
    dpkg --purge wsplice >/dev/null 2>&1 || true
    if [[ $user_existed == 0 ]] && getent passwd wsplice >/dev/null; then
        userdel wsplice 2>/dev/null || true
        getent group wsplice >/dev/null && groupdel wsplice 2>/dev/null || true
    fi
    # systemd-nspawn --keep-unit leaves its (empty) cgroups under the current one.
    if [[ -z $cgroups_before ]]; then
        for top in /sys/fs/cgroup/*/payload /sys/fs/cgroup/*/supervisor; do
            [[ -d $top ]] && find "$top" -depth -type d -exec rmdir {} + 2>/dev/null || true
        done
    fi
    rm -rf "$work"
}
trap cleanup EXIT

say "building the .deb and the demo programs"
cargo build --release --quiet --example demo_upstream --example ws_send
deb=$(cargo deb --quiet | tail -n 1)
[[ -f $deb ]] || fail "cargo deb did not print a .deb path"
say "$deb: $(dpkg-deb -f "$deb" Package Version Depends | tr '\n' ' ')"

say "dpkg -i"
dpkg -i "$deb"
[[ $(dpkg-query -W -f='${Status}' wsplice) == "install ok installed" ]] || fail "not installed"
for path in /usr/bin/wsplice /usr/lib/systemd/system/wsplice.service /etc/wsplice/wsplice.toml \
    /etc/wsplice/upstreams.toml /usr/share/doc/wsplice/README.md; do
    [[ -e $path ]] || fail "$path not installed"
done
conffiles=$(dpkg-query -W -f='${Conffiles}' wsplice)
for conf in /etc/wsplice/wsplice.toml /etc/wsplice/upstreams.toml; do
    grep -q "$conf" <<<"$conffiles" || fail "$conf is not a conffile"
done
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[[ $(/usr/bin/wsplice --version) == "wsplice $version" ]] || fail "installed version differs"
[[ $(getent passwd wsplice | cut -d: -f7) == /usr/sbin/nologin ]] || fail "no system user wsplice"
(( $(id -u wsplice) < 1000 )) || fail "wsplice is not a system user"
[[ -L /etc/systemd/system/multi-user.target.wants/wsplice.service ]] || fail "unit not enabled"

say "wsplice --check on the installed config"
/usr/bin/wsplice --check --config /etc/wsplice/wsplice.toml

say "systemd-analyze verify"
verify=$(systemd-analyze verify /usr/lib/systemd/system/wsplice.service 2>&1) || fail "verify: $verify"
[[ -z $verify ]] || fail "verify complained: $verify"
systemd-analyze security --offline=true /usr/lib/systemd/system/wsplice.service 2>&1 | tail -n 1

say "booting this machine's root (overlay, private network) under systemd to drive the unit"
unshare --mount --propagation private bash -euo pipefail -c '
    work=$1 repo=$2
    mount -t tmpfs tmpfs "$work"
    mkdir -p "$work"/{upper,overlay-work,root,out}
    mount -t overlay overlay -o lowerdir=/,upperdir="$work"/upper,workdir="$work"/overlay-work "$work"/root
    systemd-id128 new > "$work"/root/etc/machine-id
    cat > "$work"/root/etc/systemd/system/wsplice-package-test.service <<UNIT
[Unit]
Description=drives wsplice.service
After=basic.target
SuccessAction=exit-force
FailureAction=exit-force
[Service]
Type=oneshot
ExecStart=/src/scripts/package-test.sh --in-container
StandardOutput=journal+console
TimeoutStartSec=120
UNIT
    timeout 180 systemd-nspawn -D "$work"/root --register=no --keep-unit --link-journal=no \
        --private-network --console=read-only --quiet --bind-ro="$repo":/src --bind="$work"/out:/out \
        -b systemd.unit=wsplice-package-test.service systemd.show_status=false \
        > "$work"/console.log 2>&1 || true
    if ! grep -q "inside: INSIDE OK" "$work"/out/inside.log 2>/dev/null; then
        cat "$work"/console.log "$work"/out/inside.log
        exit 1
    fi
    grep "^inside: " "$work"/out/inside.log
' _ "$work" "$repo" || fail "the unit under systemd (log above)"

say "dpkg --purge"
dpkg --purge wsplice
[[ ! -e /etc/wsplice && ! -e /usr/bin/wsplice && ! -e /etc/systemd/system/multi-user.target.wants/wsplice.service ]] \
    || fail "purge left files behind"
say "OK"
