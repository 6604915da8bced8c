#!/usr/bin/env bash
# The daemons under a real systemd: boots a Debian 12 container (box.sh), installs the
# project's unit files and the built binaries, and checks socket activation, readiness,
# STATUS lines, reload with a transfer in flight, a watchdog restart, a clean stop, and
# `systemd-analyze verify/security` of the units. Root only.
#
#   Tests/system/systemd-test.sh [BIN_DIR]
#
# BIN_DIR (or RELAY_BIN_DIR) holds relay-proxy and relay-agent; default `swift build
# --show-bin-path`. The container shares the host's network namespace, so every port is
# chosen free at run time and clients run on the host. Prints "N passed, M failed" last.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BOX=$REPO/Tests/system/box.sh
BIN_DIR=${1:-${RELAY_BIN_DIR:-}}
[ -n "$BIN_DIR" ] || BIN_DIR=$(cd "$REPO" && swift build --show-bin-path)
NAME=relay-sd-$$
WORK=$(mktemp -d /tmp/relay-systemd-test.XXXXXX)
JOURNAL=${BOX_DIR:-$REPO/.build-box}/systemd-test.journal
SECRET="nspawn test secret"
passed=0
failed=0
background=()

started_at=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

cleanup() {
    local pid
    for pid in "${background[@]}"; do kill "$pid" 2>/dev/null || true; done
    # The container's whole journal, for a look after a failure.
    "$BOX" run "$NAME" journalctl --no-pager -o short-monotonic >"$JOURNAL" 2>&1 || true
    "$BOX" stop "$NAME" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

pass() {
    passed=$((passed + 1))
    echo "ok   $1 ($(since "$step_at") s)"
}
fail() {
    failed=$((failed + 1))
    echo "FAIL $1" >&2
    shift
    [ $# -eq 0 ] || printf '     %s\n' "$@" >&2
}
step() {
    step_at=$(date +%s.%N)
    echo "--   $1"
}

# Runs a command inside the container.
in_box() { "$BOX" run "$NAME" "$@"; }

# wait_for, free_port, ask
# shellcheck source=Tests/system/lib.sh
. "$REPO/Tests/system/lib.sh"

restarted() { [ "$(prop relay-proxy.service NRestarts)" -gt "$1" ]; }
size_at_least() { [ "$(stat -c %s "$1" 2>/dev/null || echo 0)" -ge "$2" ]; }
not_running() { ! kill -0 "$1" 2>/dev/null; }
ask_is() { [ "$(ask "$1" "$2")" = "$3" ]; }
prop() { in_box systemctl show -p "$2" --value "$1"; }
active() { [ "$(in_box systemctl is-active "$1")" = active ]; }
journal() { in_box journalctl -u "$1" -o cat --no-pager; }
# (grep without -q: an early exit would fail the pipeline under pipefail)
journal_has() { journal "$1" | grep -F -- "$2" >/dev/null; }
status_has() { prop "$1" StatusText | grep -F -- "$2" >/dev/null; }

for binary in relay-proxy relay-agent; do
    [ -x "$BIN_DIR/$binary" ] || {
        echo "systemd-test: $BIN_DIR/$binary is missing (build first)" >&2
        exit 1
    }
done

"$BOX" tools
"$BOX" build
step "boot a Debian 12 container"
"$BOX" boot "$NAME"
R=$("$BOX" root "$NAME")
pass "container booted"

step "install binaries, Swift runtime, units, user and configs"
install -m755 "$BIN_DIR/relay-proxy" "$BIN_DIR/relay-agent" "$R/usr/sbin/"
# The rootfs has no Swift runtime: copy in whatever the binaries need that it lacks.
for lib in $(ldd "$BIN_DIR/relay-proxy" "$BIN_DIR/relay-agent" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u); do
    soname=$(basename "$lib")
    [ -e "$R$lib" ] || [ -e "$R/usr/lib/x86_64-linux-gnu/$soname" ] || [ -e "$R/lib/x86_64-linux-gnu/$soname" ] ||
        install -m644 "$lib" "$R/usr/local/lib/"
done
in_box ldconfig
install -m644 "$REPO"/packaging/systemd/*.service "$REPO"/packaging/systemd/*.socket "$R/etc/systemd/system/"
in_box useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin relay

AGENTS=$(free_port) WEB=$(free_port) BLOB=$(free_port) NEW=$(free_port) T_WEB=$(free_port) T_BLOB=$(free_port)
# The sockets of the units, moved to free loopback ports; a shorter watchdog for the stall test.
mkdir -p "$R/etc/systemd/system/relay-proxy.socket.d" "$R/etc/systemd/system/relay-proxy-web.socket.d" \
    "$R/etc/systemd/system/relay-proxy.service.d"
printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$AGENTS" >"$R/etc/systemd/system/relay-proxy.socket.d/test.conf"
printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$WEB" >"$R/etc/systemd/system/relay-proxy-web.socket.d/test.conf"
printf '[Service]\nWatchdogSec=2s\n' >"$R/etc/systemd/system/relay-proxy.service.d/test.conf"

# Targets inside the container, one process per connection: "web" answers a line with
# "pong LINE"; "blob" sends /srv/blob, the first 4 MiB at once and the rest after /srv/go appears.
cat >"$R/etc/systemd/system/test-web.socket" <<EOF
[Socket]
ListenStream=127.0.0.1:$T_WEB
Accept=yes
EOF
cat >"$R/etc/systemd/system/test-web@.service" <<'EOF'
[Service]
StandardInput=socket
StandardOutput=socket
ExecStart=/bin/sh -c 'read -r line; echo "pong $line"'
EOF
cat >"$R/etc/systemd/system/test-blob.socket" <<EOF
[Socket]
ListenStream=127.0.0.1:$T_BLOB
Accept=yes
EOF
cat >"$R/etc/systemd/system/test-blob@.service" <<'EOF'
[Service]
StandardInput=socket
StandardOutput=socket
ExecStart=/bin/sh -c 'head -c 4194304 /srv/blob; while [ ! -e /srv/go ]; do sleep 0.05; done; tail -c +4194305 /srv/blob'
EOF
head -c $((32 << 20)) /dev/urandom >"$R/srv/blob"
blob_sum=$(sha256sum <"$R/srv/blob" | cut -d' ' -f1)

proxy_config() { # extra services as JSON objects
    local extra=${1:-}
    cat <<EOF
{
  "listen": "127.0.0.1:$AGENTS",
  "control": "/run/relay/proxy.sock",
  "agents": [ { "id": "office", "secretFile": "/etc/relay/office.secret" } ],
  "services": [
    { "name": "web", "agent": "office", "listen": "127.0.0.1:$WEB" },
    { "name": "blob", "agent": "office", "listen": "127.0.0.1:$BLOB" }$extra
  ],
  "drainTimeoutSeconds": 5
}
EOF
}
mkdir -p "$R/etc/relay"
printf '%s\n' "$SECRET" >"$R/etc/relay/office.secret"
proxy_config >"$R/etc/relay/proxy.json"
cat >"$R/etc/relay/agent.json" <<EOF
{
  "relay": "localhost:$AGENTS",
  "id": "office",
  "secretFile": "/etc/relay/office.secret",
  "control": "/run/relay/agent.sock",
  "services": [
    { "name": "web", "target": "127.0.0.1:$T_WEB" },
    { "name": "blob", "target": "127.0.0.1:$T_BLOB" },
    { "name": "new", "target": "127.0.0.1:$T_WEB" }
  ],
  "reconnectInitialDelaySeconds": 0.2,
  "reconnectMaxDelaySeconds": 1
}
EOF
chown -R 0:"$(awk -F: '$1 == "relay" { print $3 }' "$R/etc/group")" "$R/etc/relay"
chmod 0750 "$R/etc/relay"
chmod 0640 "$R/etc/relay/"*
in_box systemctl daemon-reload
missing=$(in_box sh -c 'ldd /usr/sbin/relay-proxy /usr/sbin/relay-agent | grep "not found" || true')
if [ -z "$missing" ]; then pass "installed (ports: agents $AGENTS, web $WEB, blob $BLOB, new $NEW)"; else fail "libraries missing" "$missing"; fi

step "systemd-analyze verify"
if out=$(in_box systemd-analyze verify --man=no relay-proxy.service relay-proxy.socket relay-proxy-web.socket \
    relay-agent.service 2>&1) && [ -z "$out" ]; then
    pass "systemd-analyze verify: clean"
else
    fail "systemd-analyze verify" "$out"
fi

step "systemd-analyze security"
for unit in relay-proxy.service relay-agent.service; do
    exposure=$(in_box systemd-analyze security "$unit" 2>&1 | awk '/Overall exposure level/ { print $(NF-2) }')
    echo "     $unit: exposure $exposure"
    if [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }'; then
        pass "systemd-analyze security $unit: $exposure <= 2.0"
    else
        fail "systemd-analyze security $unit: '$exposure' > 2.0"
    fi
done

step "relay-agent starts (READY=1) while its relay is down"
if in_box timeout 20 systemctl start relay-agent.service && active relay-agent.service &&
    wait_for 5 status_has relay-agent.service "reconnecting in"; then
    pass "systemctl start relay-agent: active; $(prop relay-agent.service StatusText)"
else
    fail "relay-agent start" "$(in_box systemctl status --no-pager relay-agent.service 2>&1 | tail -20)"
fi

step "socket activation: the agent's next connection starts relay-proxy.service"
in_box systemctl start relay-proxy.socket relay-proxy-web.socket test-web.socket test-blob.socket
if [ "$(in_box systemctl is-active relay-proxy.service)" = inactive ] &&
    wait_for 10 active relay-proxy.service &&
    wait_for 10 status_has relay-agent.service "connected to localhost:$AGENTS" &&
    wait_for 5 status_has relay-proxy.service "1/1 agents connected, 2 services"; then
    pass "relay-proxy.service activated through relay-proxy.socket; agent connected"
else
    fail "socket activation" "$(in_box systemctl status --no-pager relay-proxy.service 2>&1 | tail -20)"
fi
if journal_has relay-proxy.service "adopted=systemd role=agents" &&
    journal_has relay-proxy.service "adopted=systemd service=web"; then
    pass "both passed sockets adopted by name (agents, web)"
else
    fail "adoption" "$(journal relay-proxy.service | tail -10)"
fi

step "a client reaches a target through the adopted socket and the agent"
reply=$(ask "$WEB" "hello" || true)
if [ "$reply" = "pong hello" ]; then
    pass "client -> relay-proxy (socket 'web') -> relay-agent -> target: '$reply'"
else
    fail "tunnel through web" "reply: '$reply'" "$(journal relay-proxy.service | tail -5)"
fi

step "systemctl status shows the STATUS= lines"
proxy_status=$(in_box systemctl status --no-pager relay-proxy.service 2>&1 || true)
agent_status=$(in_box systemctl status --no-pager relay-agent.service 2>&1 || true)
if grep -q 'Status: "1/1 agents connected, 2 services, [0-9]* sessions"' <<<"$proxy_status" &&
    grep -q "Status: \"connected to localhost:$AGENTS, 3 services, [0-9]* sessions\"" <<<"$agent_status"; then
    pass "status lines"
    grep -h "Status:" <<<"$proxy_status$agent_status" | sed 's/^ */     /'
else
    fail "status lines" "$proxy_status" "$agent_status"
fi

step "systemctl reload relay-proxy with a transfer in flight"
exec {blob_fd}<"/dev/tcp/127.0.0.1/$BLOB"
cat <&"$blob_fd" >"$WORK/blob.out" &
reader=$!
background+=("$reader")
exec {blob_fd}<&-
main_pid=$(prop relay-proxy.service MainPID)
if wait_for 10 size_at_least "$WORK/blob.out" $((1 << 20)); then
    proxy_config ", { \"name\": \"new\", \"agent\": \"office\", \"listen\": \"127.0.0.1:$NEW\" }" >"$R/etc/relay/proxy.json"
    in_box systemctl reload relay-proxy.service
    if wait_for 10 journal_has relay-proxy.service "service 'new' added" &&
        [ "$(ask "$NEW" "new")" = "pong new" ] && kill -0 "$reader" 2>/dev/null &&
        [ "$(prop relay-proxy.service MainPID)" = "$main_pid" ]; then
        pass "reload applied (service 'new' answers, same MainPID) while the transfer waits"
    else
        fail "reload" "$(journal relay-proxy.service | tail -10)"
    fi
    touch "$R/srv/go"
    if wait_for 20 not_running "$reader" && [ "$(sha256sum <"$WORK/blob.out" | cut -d' ' -f1)" = "$blob_sum" ]; then
        pass "the transfer across the reload completed intact (32 MiB, SHA-256)"
    else
        fail "transfer across reload" "received $(stat -c %s "$WORK/blob.out") bytes"
    fi
else
    fail "transfer did not start" "$(journal relay-proxy.service | tail -10)"
fi

step "a watchdog stall (SIGSTOP) makes systemd restart relay-proxy"
restarts=$(prop relay-proxy.service NRestarts)
in_box kill -STOP "$main_pid"
if wait_for 20 restarted "$restarts" &&
    wait_for 10 active relay-proxy.service &&
    [ "$(prop relay-proxy.service MainPID)" != "$main_pid" ] &&
    journal_has relay-proxy.service "Watchdog timeout"; then
    pass "$(journal relay-proxy.service | grep -m1 "Watchdog timeout"); NRestarts $restarts -> $(prop relay-proxy.service NRestarts), MainPID $main_pid -> $(prop relay-proxy.service MainPID)"
else
    fail "watchdog restart" "NRestarts $restarts -> $(prop relay-proxy.service NRestarts), MainPID $main_pid -> $(prop relay-proxy.service MainPID)" \
        "$(journal relay-proxy.service | grep -v "^info" | tail -15)"
fi
if wait_for 10 status_has relay-agent.service "connected to localhost:$AGENTS" && wait_for 5 ask_is "$WEB" again "pong again"; then
    pass "serving again after the restart"
else
    fail "after restart" "$(journal relay-proxy.service | tail -10)"
fi

step "systemctl restart relay-proxy with socket-unit listeners carries a live session"
# The listeners of socket units are passed to the next process by systemd again, not through
# the descriptor store; the live session goes through the store (docs/restart.md).
count_lines() { journal "$1" | grep -c -F -- "$2" || true; }
more_lines() { [ "$(count_lines "$1" "$2")" -gt "$3" ]; }
attached_before=$(count_lines relay-proxy.service "session attached")
adopted_before=$(count_lines relay-proxy.service "adopted=systemd role=agents")
main_pid=$(prop relay-proxy.service MainPID)
exec {live_fd}<>"/dev/tcp/127.0.0.1/$WEB"
if wait_for 10 more_lines relay-proxy.service "session attached" "$attached_before"; then
    in_box systemctl restart relay-proxy.service
    printf 'across\n' >&"$live_fd"
    live_reply=""
    read -r -t 10 live_reply <&"$live_fd" || true
    if [ "$live_reply" = "pong across" ] && [ "$(prop relay-proxy.service MainPID)" != "$main_pid" ] &&
        journal_has relay-proxy.service "resumed 1 sessions from the process before" &&
        more_lines relay-proxy.service "adopted=systemd role=agents" "$adopted_before" &&
        wait_for 10 ask_is "$WEB" fresh "pong fresh" &&
        [ "$(in_box systemctl is-active relay-proxy.socket relay-proxy-web.socket | sort -u)" = active ]; then
        pass "session opened before the restart answered after it ('$live_reply'); $(journal relay-proxy.service | grep -o 'handed over.*' | tail -1); a new client served through the socket 'web' again"
    else
        fail "restart with socket units" "live session got: '$live_reply'" \
            "$(journal relay-proxy.service | grep -E 'hand|resumed|adopted|refus|error' | tail -10)"
    fi
else
    fail "the live session before the restart was not attached" "$(journal relay-proxy.service | tail -5)"
fi
exec {live_fd}>&-

step "stopping the service leaves its socket units listening"
# The daemon stops accepting on an activated socket without shutting it down: a shutdown()
# makes systemd fail the socket unit ("Got POLLHUP on a listening socket"), and activation.
in_box systemctl stop relay-proxy.service
sockets=$(in_box systemctl is-active relay-proxy.socket relay-proxy-web.socket | sort -u)
if [ "$sockets" = active ]; then
    pass "relay-proxy.service stopped; relay-proxy.socket and relay-proxy-web.socket still active"
else
    fail "socket units after stopping the service" "$sockets" "$(journal relay-proxy.socket | tail -3)"
fi
in_box systemctl start relay-proxy.service

step "systemctl stop is clean"
in_box systemctl stop relay-agent.service relay-proxy.socket relay-proxy-web.socket relay-proxy.service
proxy_result=$(prop relay-proxy.service Result) agent_result=$(prop relay-agent.service Result)
if [ "$proxy_result" = success ] && [ "$agent_result" = success ] &&
    [ "$(in_box systemctl is-active relay-proxy.service relay-agent.service relay-proxy.socket | sort -u)" = inactive ] &&
    journal_has relay-proxy.service "relay-proxy stopped" && journal_has relay-agent.service "relay-agent stopped" &&
    ! (exec 3<>"/dev/tcp/127.0.0.1/$AGENTS") 2>/dev/null; then
    pass "stopped: Result=success for both, ports closed"
else
    fail "stop" "proxy Result=$proxy_result, agent Result=$agent_result" "$(journal relay-proxy.service | tail -5)"
fi

echo "systemd-test: $(since "$started_at") s in all"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
