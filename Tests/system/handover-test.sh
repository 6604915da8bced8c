#!/usr/bin/env bash
# Live sessions across `systemctl restart` (docs/restart.md), under a real systemd: boots a
# Debian 12 container (box.sh), installs the units (with FileDescriptorStoreMax=) and the
# built binaries, runs SESSIONS (default 200) streaming echo sessions through relay-proxy and
# relay-agent while a second client opens a new session every 25 ms, then restarts
# relay-proxy, relay-agent (HANDOVER_AGENT=0 skips it) and relay-proxy again the way an
# upgrade's postinst does (deb-systemd-invoke restart), checking each time that relayctl lists
# the sessions again with the same ids; compares every session's digests at the end, and
# checks that a TLS session drains at a restart and that `systemctl stop` still drains.
# Passes with 0 sessions lost, 0 bytes lost and 0 new connections refused; prints each
# handover's time (the old process's "handing over" to the new one's "resumed N sessions").
# Root only.
#
#   Tests/system/handover-test.sh [BIN_DIR]
#
# The container shares the host's network namespace: the echo target and both clients run
# on the host (python3), every port chosen free at run time. Prints "N passed, M failed" last.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BOX=$REPO/Tests/system/box.sh
CLIENT=$REPO/Tests/system/handover-client.py
BIN_DIR=${1:-${RELAY_BIN_DIR:-}}
[ -n "$BIN_DIR" ] || BIN_DIR=$(cd "$REPO" && swift build --show-bin-path)
SESSIONS=${SESSIONS:-200}
NAME=relay-ho-$$
WORK=$(mktemp -d /tmp/relay-handover-test.XXXXXX)
JOURNAL=${BOX_DIR:-$REPO/.build-box}/handover-test.journal
passed=0
failed=0
background=()

started_at=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

cleanup() {
    local pid
    for pid in "${background[@]}"; do kill "$pid" 2>/dev/null || true; done
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
in_box() { "$BOX" run "$NAME" "$@"; }
# shellcheck source=Tests/system/lib.sh
. "$REPO/Tests/system/lib.sh"
prop() { in_box systemctl show -p "$2" --value "$1"; }
journal() { in_box journalctl -u "$1" -o cat --no-pager; }
journal_has() { journal "$1" | grep -F -- "$2" >/dev/null; }
status_has() { prop "$1" StatusText | grep -F -- "$2" >/dev/null; }
exists() { [ -e "$1" ]; }
not_running() { ! kill -0 "$1" 2>/dev/null; }

for binary in relay-proxy relay-agent relayctl; do
    [ -x "$BIN_DIR/$binary" ] || {
        echo "handover-test: $BIN_DIR/$binary is missing (build first)" >&2
        exit 1
    }
done
command -v python3 >/dev/null || {
    echo "handover-test: needs python3 on the host" >&2
    exit 1
}

"$BOX" tools
"$BOX" build
step "boot a Debian 12 container"
"$BOX" boot "$NAME"
R=$("$BOX" root "$NAME")
pass "container booted"

step "install binaries, Swift runtime, units, user and configs"
install -m755 "$BIN_DIR/relay-proxy" "$BIN_DIR/relay-agent" "$R/usr/sbin/"
install -m755 "$BIN_DIR/relayctl" "$R/usr/bin/"
for lib in $(ldd "$BIN_DIR/relay-proxy" "$BIN_DIR/relay-agent" "$BIN_DIR/relayctl" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u); do
    soname=$(basename "$lib")
    [ -e "$R$lib" ] || [ -e "$R/usr/lib/x86_64-linux-gnu/$soname" ] || [ -e "$R/lib/x86_64-linux-gnu/$soname" ] ||
        install -m644 "$lib" "$R/usr/local/lib/"
done
in_box ldconfig
install -m644 "$REPO"/packaging/systemd/relay-proxy.service "$REPO"/packaging/systemd/relay-agent.service \
    "$R/etc/systemd/system/"
in_box useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin relay
AGENTS=$(free_port) ECHO=$(free_port)
# The echo target binds a port the system chooses, and says which: no port to race for.
python3 "$CLIENT" echo 0 "$WORK/target-port" &
background+=($!)
target_bound() { [ -s "$WORK/target-port" ]; }
wait_for 10 target_bound || { echo "handover-test: the echo target did not start" >&2; exit 1; }
TARGET=$(cat "$WORK/target-port")
mkdir -p "$R/etc/relay"
printf 'handover test secret\n' >"$R/etc/relay/office.secret"
cat >"$R/etc/relay/proxy.json" <<JSON
{
  "listen": "127.0.0.1:$AGENTS",
  "control": "/run/relay/proxy.sock",
  "agents": [ { "id": "office", "secretFile": "/etc/relay/office.secret" } ],
  "services": [ { "name": "echo", "agent": "office", "listen": "127.0.0.1:$ECHO" } ],
  "drainTimeoutSeconds": 5
}
JSON
cat >"$R/etc/relay/agent.json" <<JSON
{
  "relay": "127.0.0.1:$AGENTS",
  "id": "office",
  "secretFile": "/etc/relay/office.secret",
  "control": "/run/relay/agent.sock",
  "services": [ { "name": "echo", "target": "127.0.0.1:$TARGET" } ],
  "reconnectInitialDelaySeconds": 0.1,
  "reconnectMaxDelaySeconds": 1
}
JSON
chown -R 0:"$(awk -F: '$1 == "relay" { print $3 }' "$R/etc/group")" "$R/etc/relay"
chmod 0750 "$R/etc/relay"
chmod 0640 "$R/etc/relay/"*
in_box systemctl daemon-reload
if [ "$(prop relay-proxy.service FileDescriptorStoreMax)" -ge $((2 * SESSIONS + 3)) ] &&
    [ "$(prop relay-agent.service FileDescriptorStoreMax)" -ge $((2 * SESSIONS + 3)) ]; then
    pass "installed; FileDescriptorStoreMax=$(prop relay-proxy.service FileDescriptorStoreMax) (ports: agents $AGENTS, echo $ECHO, target $TARGET)"
else
    fail "FileDescriptorStoreMax too small for $SESSIONS sessions"
fi

step "start relay-proxy and relay-agent (the echo target runs since the configs were written)"
if in_box timeout 20 systemctl start relay-proxy.service relay-agent.service &&
    wait_for 10 status_has relay-proxy.service "1/1 agents connected"; then
    pass "both active, agent connected"
else
    fail "start" "$(in_box systemctl status --no-pager relay-proxy.service relay-agent.service 2>&1 | tail -30)"
fi

step "$SESSIONS streaming sessions, and a new session every 25 ms"
python3 "$CLIENT" stream "$ECHO" "$SESSIONS" "$WORK/status" "$WORK/stop" >"$WORK/result.json" 2>"$WORK/client.err" &
client=$!
background+=("$client")
if wait_for 40 exists "$WORK/status" && [ "$(cat "$WORK/status")" = "streaming $SESSIONS" ]; then
    pass "$(cat "$WORK/status")"
else
    fail "sessions did not all open" "$(cat "$WORK/status" 2>/dev/null)" "$(cat "$WORK/client.err")"
fi
sleep 1 # let them stream: bytes in flight in every pipe and socket buffer

resumed_at_least() { # unit, count: the new process resumed at least that many sessions
    local n
    n=$(journal "$1" | sed -n 's/.*resumed \([0-9]*\) sessions.*/\1/p' | tail -1)
    [ -n "$n" ] && [ "$n" -ge "$2" ]
}
# relayctl's sessions of a unit's daemon, as JSON.
sessions_of() {
    local socket=/run/relay/proxy.sock
    [ "$1" = relay-agent.service ] && socket=/run/relay/agent.sock
    in_box relayctl --socket "$socket" --json sessions
}
# Every session older than 1 s before (the streaming ones) is listed after with the same
# id, service, client and start, and counts that went on; prints how many.
same_sessions() {
    python3 - "$1" "$2" <<'PY'
import json, sys
def load(path):
    document = json.load(open(path))
    if isinstance(document, dict):
        document = next(v for v in document.values() if isinstance(v, list))
    return {s["id"]: s for s in document}
before, after = load(sys.argv[1]), load(sys.argv[2])
old = [s for s in before.values() if s["ageSeconds"] > 1]
bad = [s["id"] for s in old if s["id"] not in after
       or any(after[s["id"]][k] != s[k] for k in ("service", "client", "startedAt"))
       or after[s["id"]]["bytesIn"] < s["bytesIn"] or after[s["id"]]["bytesOut"] < s["bytesOut"]]
print(f"{len(old) - len(bad)} of {len(old)}")
sys.exit(1 if bad or not old else 0)
PY
}
restart() { # unit [command that restarts it: default systemctl restart]
    local unit=$1 resumed="resumed " before after took listed
    local how=${2:-systemctl restart}
    sessions_of "$unit" >"$WORK/before.json"
    before=$(prop "$unit" MainPID)
    step "$how $unit under $SESSIONS live sessions"
    local t0 t1
    t0=$(date +%s%N)
    # shellcheck disable=SC2086 # $how is a command and its arguments
    in_box timeout 60 $how "$unit"
    t1=$(date +%s%N)
    after=$(prop "$unit" MainPID)
    if [ "$before" != "$after" ] && wait_for 10 resumed_at_least "$unit" "$SESSIONS"; then
        took=$(journal "$unit" | grep -F -- "$resumed" | tail -1 | sed -n 's/.*handoverMs=\([0-9]*\).*/\1/p')
        pass "$unit restarted (MainPID $before -> $after): $(journal "$unit" | grep -F "handed over" | tail -1 | sed 's/^.*handed over/handed over/'); $(journal "$unit" | grep -F -- "$resumed" | tail -1 | sed 's/^.*resumed/resumed/')"
        echo "     handover: ${took:-?} ms (old process's 'handing over' to the new one's 'resumed'); $how took $(((t1 - t0) / 1000000)) ms"
        sessions_of "$unit" >"$WORK/after.json"
        if listed=$(same_sessions "$WORK/before.json" "$WORK/after.json"); then
            pass "relayctl sessions: $listed streaming sessions listed again with the same id, service, client and start; their counts went on"
        else
            fail "relayctl sessions after the restart of $unit" "$listed"
        fi
    else
        fail "$unit restart" "$(journal "$unit" | tail -20)"
    fi
    sleep 1
}
restart relay-proxy.service
wait_for 15 status_has relay-proxy.service "1/1 agents connected" || fail "agent did not reconnect" "$(journal relay-agent.service | tail -10)"
if [ "${HANDOVER_AGENT:-1}" = 1 ]; then
    restart relay-agent.service
    wait_for 15 status_has relay-proxy.service "1/1 agents connected" || fail "agent did not register again"
    # What the packages' postinst runs at an upgrade (dh_installsystemd, --restart-after-upgrade):
    # it acts on enabled units only.
    in_box systemctl enable --quiet relay-proxy.service relay-agent.service
    restart relay-proxy.service "deb-systemd-invoke restart"
fi

step "stop streaming; compare digests"
touch "$WORK/stop"
if wait_for 60 not_running "$client"; then
    result=$(cat "$WORK/result.json")
    echo "     $result"
    if python3 -c 'import json,sys; r=json.load(sys.stdin); sys.exit(0 if r["ok"] == r["sessions"] and r["bytesSent"] == r["bytesReceived"] and r["arrivalFailures"] == 0 else 1)' <<<"$result"; then
        pass "0 sessions lost, 0 bytes lost (SHA-256 of every session equal), 0 new connections refused"
    else
        fail "sessions or bytes lost, or new connections refused" "$result" "$(cat "$WORK/client.err")"
    fi
else
    fail "client did not finish" "$(cat "$WORK/client.err")"
fi

step "nothing handed over went missing"
missing=$(journal relay-proxy.service; journal relay-agent.service)
missing=$(grep -E "missing a socket|stored descriptor|cannot use the state|no longer knows" <<<"$missing" || true)
if [ -z "$missing" ]; then
    pass "every stored session came back whole (no 'missing a socket', no stray descriptor)"
else
    fail "handed-over descriptors went missing" "$missing"
fi

step "a store too small for what there is to hand over: the restart drains"
mkdir -p "$R/etc/systemd/system/relay-proxy.service.d"
printf '[Service]\nFileDescriptorStoreMax=0\n' >"$R/etc/systemd/system/relay-proxy.service.d/no-store.conf"
in_box systemctl daemon-reload
if in_box timeout 30 systemctl restart relay-proxy.service &&
    journal_has relay-proxy.service 'stopping, not handing over why="FileDescriptorStoreMax=0 cannot hold' &&
    wait_for 15 status_has relay-proxy.service "1/1 agents connected"; then
    pass "FileDescriptorStoreMax=0: $(journal relay-proxy.service | grep -F "FileDescriptorStoreMax=0" | tail -1 | sed 's/^.*stopping/stopping/')"
else
    fail "restart with no store" "$(journal relay-proxy.service | tail -8)"
fi
rm "$R/etc/systemd/system/relay-proxy.service.d/no-store.conf"
in_box systemctl daemon-reload

step "TLS data channels are not carried: a restart drains them as a stop does"
# The agent port turns to TLS (a self-signed key, the agent pins it); a session opened before
# the restart is still served by the old process while it drains, and the restart ends as
# soon as that session does; the next process serves new sessions.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=relay \
    -keyout "$R/etc/relay/relay.key" -out "$R/etc/relay/relay.crt" 2>/dev/null
chown 0:"$(awk -F: '$1 == "relay" { print $3 }' "$R/etc/group")" "$R/etc/relay/relay.key" "$R/etc/relay/relay.crt"
chmod 0640 "$R/etc/relay/relay.key" "$R/etc/relay/relay.crt"
with_tls() { # config file, the JSON of its "tls" object
    python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c["tls"] = json.loads(sys.argv[2]); json.dump(c, open(sys.argv[1], "w"), indent=2)' "$1" "$2"
}
with_tls "$R/etc/relay/proxy.json" '{"certificate": "/etc/relay/relay.crt", "key": "/etc/relay/relay.key"}'
# As the daemons' user: the config check refuses a secret readable by a group not its own.
pin=$(in_box runuser -u relay -- relay-proxy --print-tls-pin --config /etc/relay/proxy.json || true)
with_tls "$R/etc/relay/agent.json" "{\"pin\": \"$pin\"}"
in_box timeout 30 systemctl restart relay-proxy.service relay-agent.service || true
if wait_for 15 status_has relay-proxy.service "1/1 agents connected" && journal_has relay-agent.service "agent port uses TLS 1.3" &&
    [ "$(ask "$ECHO" "before")" = before ]; then
    exec {tls_fd}<>"/dev/tcp/127.0.0.1/$ECHO"
    printf 'first\n' >&"$tls_fd"
    first="" during=""
    read -r -t 5 first <&"$tls_fd" || true
    # (without the session's descriptor: a copy of it would keep the session open)
    in_box timeout 30 systemctl restart relay-proxy.service {tls_fd}>&- &
    restarting=$!
    draining() { journal relay-proxy.service | grep -F "handed over" | tail -1 | grep -F "draining=1" >/dev/null; }
    if wait_for 10 draining; then
        printf 'during\n' >&"$tls_fd"
        read -r -t 5 during <&"$tls_fd" || true
    fi
    closed_at=$(date +%s%N)
    exec {tls_fd}>&-
    wait "$restarting" || true
    restarted_ms=$((($(date +%s%N) - closed_at) / 1000000))
    if [ "$first" = first ] && [ "$during" = during ] && [ "$restarted_ms" -lt 4000 ] &&
        wait_for 15 status_has relay-proxy.service "1/1 agents connected" && [ "$(ask "$ECHO" "after")" = after ]; then
        pass "$(journal relay-proxy.service | grep -F "handed over" | tail -1 | sed 's/^.*handed over/handed over/'); the TLS session was served while the old process drained ('$during'), the restart ended $restarted_ms ms after it closed (drainTimeoutSeconds 5); the next process serves"
    else
        fail "TLS drain at a restart" "replies '$first' '$during', restart ended $restarted_ms ms after the close" \
            "$(journal relay-proxy.service | tail -8)"
    fi
else
    fail "TLS on the agent port" "$(journal relay-proxy.service | tail -5)" "$(journal relay-agent.service | tail -5)"
fi

step "systemctl stop still drains (no handover)"
if in_box timeout 30 systemctl stop relay-proxy.service relay-agent.service &&
    journal_has relay-proxy.service 'stopping, not handing over why="job stop"' &&
    journal_has relay-agent.service 'stopping, not handing over why="job stop"' &&
    journal_has relay-proxy.service "shutting down: no longer accepting"; then
    pass "systemctl stop: both drained ('stopping, not handing over why=\"job stop\"')"
else
    fail "stop" "$(journal relay-proxy.service | tail -5)" "$(journal relay-agent.service | tail -5)"
fi

echo "$passed passed, $failed failed ($(since "$started_at") s)"
[ "$failed" -eq 0 ]
