#!/usr/bin/env bash
# The .deb end to end, as root on a scratch machine (CI): build it with `cargo deb`, install it
# with `dpkg -i`, check what it installed (`wsplice --check` on /etc/wsplice, conffiles, user,
# `systemd-analyze verify`), then boot this machine's own root, read-only under a throwaway
# overlay, as a systemd container (systemd-nspawn, private network) and drive the installed
# unit there: start returns once it serves, hardening in force, reload, failed reload, upgrade
# in place with a WebSocket open (the documented SIGUSR2 command, then dpkg -i of the .deb
# again, which its postinst takes as an upgrade), drain on stop, restart on failure. Finally
# purges the package, leaving the machine as it was.
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
    /out/bin/demo_upstream 127.0.0.1:3000 127.0.0.1:3001 &
    for port in 3000 3001; do
        for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
    done
    ws_send() { timeout 10 /out/bin/ws_send ws://127.0.0.1:8080/websocket "$1"; }
    has() { grep -q -- "$1" <<<"$2"; }
    journal() { journalctl -u wsplice --no-pager; }
    # A WebSocket held open on fd 3 by hand: the upgrade, then its response head read line by
    # line (bash reads a socket a byte at a time, so nothing after the head is taken).
    ws_open() {
        exec 3<>/dev/tcp/127.0.0.1/8080
        printf 'GET /websocket HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n' >&3
        read -r -t 10 status_line <&3 || return 1
        [[ $status_line == "HTTP/1.1 101"* ]] || return 1
        while read -r -t 10 line <&3; do [[ $line == $'\r' ]] && return 0; done
        return 1
    }
    # One text frame of $1 (ASCII, under 126 bytes) over fd 3, masked with the key 0 (so the
    # payload goes as written), and the upstream's echo back: 0x81, the length, the text.
    ws_echo() {
        local n=${#1}
        printf "\\x81\\x$(printf %02x $((0x80 | n)))\\x00\\x00\\x00\\x00%s" "$1" >&3 || return 1
        [[ $(timeout 10 head -c $((2 + n)) <&3 | tail -c "$n") == "$1" ]] || return 1
    }
    # Polls for up to 10 s until the unit's MainPID is no longer $1 and that pid is gone, with
    # the new pid in `new` and every state the unit was seen in meanwhile in `seen`.
    await_handoff_from() {
        seen=""
        for _ in $(seq 1 200); do
            seen+="$(systemctl is-active wsplice) "
            new=$(systemctl show wsplice -p MainPID --value)
            [[ $new != 0 && $new != "$1" && ! -e /proc/$1 ]] && return 0
            sleep 0.05
        done
        return 1
    }

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

    # Upgrade in place (README "Upgrading"), with a WebSocket open: the documented command,
    # after the binary was replaced the way dpkg replaces it (a new file renamed over the
    # path), so the running process's /proc/PID/exe reads "... (deleted)".
    echo '[backend]
servers = ["127.0.0.1:3000"]' > /etc/wsplice/upstreams.toml
    [[ -S /run/wsplice/handoff.sock && $(stat -c '%U %a' /run/wsplice /run/wsplice/handoff.sock) == $'wsplice 700\nwsplice 600' ]]
    ws_open
    ws_echo "before the upgrade"
    active_since=$(systemctl show wsplice -p ActiveEnterTimestampMonotonic --value)
    invocation=$(systemctl show wsplice -p InvocationID --value)
    cp /usr/bin/wsplice /usr/bin/wsplice.new && mv /usr/bin/wsplice.new /usr/bin/wsplice
    [[ $(readlink "/proc/$pid/exe") == "/usr/bin/wsplice (deleted)" ]]
    systemctl kill --kill-whom=main --signal=SIGUSR2 wsplice
    await_handoff_from "$pid"
    echo "unit states seen during the handoff: $seen"
    [[ $(tr ' ' '\n' <<<"$seen" | sort -u | xargs) == active && $(systemctl is-active wsplice) == active ]]
    [[ $(systemctl show wsplice -p ActiveEnterTimestampMonotonic --value) == "$active_since" ]]
    [[ $(systemctl show wsplice -p InvocationID --value) == "$invocation" ]]
    [[ $(systemctl show wsplice -p NRestarts --value) == 0 ]]
    [[ $(readlink "/proc/$new/exe") == /usr/bin/wsplice && $(ps -o user= -p "$new") == wsplice ]]
    [[ $(ps -o ppid= -p "$new" | xargs) == 1 ]]
    grep -q '^Seccomp:\s*2$' "/proc/$new/status"
    ws_echo "after the upgrade"
    has 'echo "a new WebSocket after the upgrade"' "$(ws_send "a new WebSocket after the upgrade")"
    metrics=$(curl -sS http://127.0.0.1:9901/metrics)
    grep -E '^wsplice_handoff_tunnels_total 1$' <<<"$metrics"
    journal | grep -E "SIGUSR2|handoff" | tail -n 6
    has "SIGUSR2: started /usr/bin/wsplice --config /etc/wsplice/wsplice.toml --takeover" "$(journal)"
    has "handoff: pid $new is taking over" "$(journal)"
    has "handoff: handed over 1 tunnels to pid $new" "$(journal)"
    has "handoff: took over from pid $pid: 1 tunnels" "$(journal)"
    step "systemctl kill --kill-whom=main --signal=SIGUSR2: MainPID $pid -> $new, the old pid gone, the unit active throughout (same invocation, no restart), the open WebSocket echoes through the new process, 1 tunnel counted"

    # The same through the package: dpkg -i of the .deb again is an upgrade for its postinst,
    # which upgrades in place rather than restarting. The WebSocket is still open.
    pid=$new
    # A policy-rc.d saying 101 (a container image's, as on CI machines) would rightly keep
    # postinst off the unit; this booted copy is a machine whose services run.
    rm -f /usr/sbin/policy-rc.d
    dpkg -i --force-confold /out/wsplice.deb | tee /out/dpkg.log
    grep -q "wsplice: upgraded in place: pid $pid -> " /out/dpkg.log
    await_handoff_from "$pid"
    [[ $(tr ' ' '\n' <<<"$seen" | sort -u | xargs) == active ]]
    [[ $(systemctl show wsplice -p InvocationID --value) == "$invocation" && $(systemctl show wsplice -p NRestarts --value) == 0 ]]
    [[ $(readlink "/proc/$new/exe") == /usr/bin/wsplice ]]
    ws_echo "after the package upgrade"
    exec 3>&-
    has echo "$(ws_send "after the package upgrade")"
    step "dpkg -i (an upgrade for postinst): upgraded in place, MainPID $pid -> $new, the WebSocket open since before both upgrades still echoes"

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

    # Restart=on-failure: a crash is restarted (RestartSec=2s), also that of a process that
    # took over in an upgrade in place: systemd follows the main PID it was told, which was
    # not its child when it took over.
    echo '[backend]
servers = ["127.0.0.1:3000"]' > /etc/wsplice/upstreams.toml
    systemctl start wsplice
    pid=$(systemctl show wsplice -p MainPID --value)
    systemctl kill --kill-whom=main --signal=SIGUSR2 wsplice
    await_handoff_from "$pid"
    pid=$new
    kill -KILL "$pid"
    for _ in $(seq 1 100); do
        new=$(systemctl show wsplice -p MainPID --value)
        [[ $new != 0 && $new != "$pid" && $(systemctl is-active wsplice) == active ]] && break
        sleep 0.1
    done
    [[ $(systemctl show wsplice -p NRestarts --value) == 1 ]]
    has echo "$(ws_send "after a restart")"
    step "a killed wsplice (one that had taken over) was restarted (Restart=on-failure) and serves again"

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

grep -q '^handoff = "/run/wsplice/handoff.sock"$' /etc/wsplice/wsplice.toml || fail "the installed config has no handoff socket"
# An upgrade must not restart the unit (that would cut every WebSocket): postinst upgrades in
# place instead, and prerm stops the unit only on remove.
grep -q '_dh_action=restart' /var/lib/dpkg/info/wsplice.postinst && fail "postinst restarts the unit on upgrade"
grep -q 'kill -USR2' /var/lib/dpkg/info/wsplice.postinst || fail "postinst does not upgrade in place"
grep -q '"$1" = remove' /var/lib/dpkg/info/wsplice.prerm || fail "prerm stops the unit on upgrade too"

say "wsplice --check on the installed config"
/usr/bin/wsplice --check --config /etc/wsplice/wsplice.toml

say "systemd-analyze verify"
verify=$(systemd-analyze verify /usr/lib/systemd/system/wsplice.service 2>&1) || fail "verify: $verify"
[[ -z $verify ]] || fail "verify complained: $verify"
systemd-analyze security --offline=true /usr/lib/systemd/system/wsplice.service 2>&1 | tail -n 1

say "booting this machine's root (overlay, private network) under systemd to drive the unit"
unshare --mount --propagation private bash -euo pipefail -c '
    work=$1 repo=$2 deb=$3 examples=$4
    mount -t tmpfs tmpfs "$work"
    mkdir -p "$work"/{upper,overlay-work,root,out/bin}
    # Seen as /out inside: the demo programs, and the .deb that is installed again there.
    cp "$examples"/demo_upstream "$examples"/ws_send "$work"/out/bin/
    cp "$deb" "$work"/out/wsplice.deb
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
' _ "$work" "$repo" "$deb" "${CARGO_TARGET_DIR:-$repo/target}/release/examples" \
    || fail "the unit under systemd (log above)"

say "dpkg --purge"
dpkg --purge wsplice
[[ ! -e /etc/wsplice && ! -e /usr/bin/wsplice && ! -e /etc/systemd/system/multi-user.target.wants/wsplice.service ]] \
    || fail "purge left files behind"
say "OK"
