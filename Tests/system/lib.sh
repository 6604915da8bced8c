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

# A TCP port for a daemon's config, one no socket on this host holds (in any state) and
# different from those chosen before. The daemons in the container bind it later, so it is
# picked outside the kernel's ephemeral range (net.ipv4.ip_local_port_range): a port the
# OS would hand out (bind to port 0, connect) could be taken by any outgoing connection
# meanwhile, and was, under the tests' own traffic ("address already in use").
# FREE_PORT_FLOOR: the lowest port chosen below the ephemeral range; that range must start
# more than FREE_PORT_MIN_SPAN above it, else ports above the range are chosen.
FREE_PORT_FLOOR=10000 FREE_PORT_MIN_SPAN=1024
chosen=" "
free_port() {
    local port used=" " hex low high first span
    while read -r hex; do
        used="$used$((16#$hex)) "
    done < <(awk 'FNR > 1 { split($2, a, ":"); print a[2] }' /proc/net/tcp /proc/net/tcp6)
    read -r low high </proc/sys/net/ipv4/ip_local_port_range
    if [ "$low" -gt $((FREE_PORT_FLOOR + FREE_PORT_MIN_SPAN)) ]; then
        first=$FREE_PORT_FLOOR span=$((low - FREE_PORT_FLOOR))
    else
        first=$((high + 1)) span=$((65536 - high - 1))
    fi
    while :; do
        port=$((first + (RANDOM * 32768 + RANDOM) % span))
        case "$used$chosen" in *" $port "*) continue ;; esac
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
