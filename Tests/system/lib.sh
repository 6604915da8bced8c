# shellcheck shell=bash
# Shell helpers shared by the container tests (systemd-test.sh, package-test.sh): sourced,
# not run.

# Polls `cmd` every 50 ms until it succeeds or `seconds` pass.
wait_for() {
    local seconds=$1 deadline
    shift
    deadline=$(($(date +%s%N) + seconds * 1000000000))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s%N)" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

# A TCP port nothing on this host listens on, different from those chosen before.
chosen=" "
free_port() {
    local port listening=" " hex
    while read -r hex; do
        listening="$listening$((16#$hex)) "
    done < <(awk 'NR > 1 && $4 == "0A" { split($2, a, ":"); print a[2] }' /proc/net/tcp /proc/net/tcp6)
    while :; do
        port=$((20000 + RANDOM % 40000))
        case "$listening$chosen" in *" $port "*) continue ;; esac
        chosen="$chosen$port "
        echo "$port"
        return
    done
}

# Sends a line to a relay service on the host's loopback and prints the reply line.
ask() {
    local port=$1 line=$2 fd reply=""
    exec {fd}<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf '%s\n' "$line" >&"$fd"
    read -r -t 5 reply <&"$fd" || true
    exec {fd}>&-
    printf '%s\n' "$reply"
}
