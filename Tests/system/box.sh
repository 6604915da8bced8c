#!/usr/bin/env bash
# A throwaway Debian 12 machine with a real systemd as PID 1, booted with systemd-nspawn
# from a cached rootfs on a tmpfs (see ../../../shared/design/TESTING-SYSTEMD.md). Root only.
#
#   box.sh tools            install the host tools when missing (systemd-container debootstrap zstd)
#   box.sh usable           exit 0 when containers can be booted here, else print why and exit 1
#   box.sh build            build the rootfs tarball once (cached under $BOX_DIR)
#   box.sh boot NAME        boot a container; returns once systemd reports "running"
#   box.sh root NAME        print the container's root directory (writable from the host)
#   box.sh run NAME CMD...  run CMD inside (stdin, stdout and exit status pass through)
#   box.sh stop NAME        halt the container and remove every trace of it (idempotent)
#
# BOX_DIR defaults to .build-box/ at the top of the repository. The container shares the
# host's network namespace: its sockets listen on the host's loopback.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BOX_DIR=${BOX_DIR:-$REPO/.build-box}
PACKAGES=systemd,systemd-sysv,dbus,procps
SUITE=bookworm
KEY=$(printf '%s %s v1' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
TARBALL=$BOX_DIR/rootfs-$SUITE-$KEY.tar.zst

die() {
    echo "box.sh: $*" >&2
    exit 1
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

tools() {
    local need=()
    command -v systemd-nspawn >/dev/null || need+=(systemd-container)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v zstd >/dev/null || need+=(zstd)
    command -v nsenter >/dev/null || need+=(util-linux)
    if [ ${#need[@]} -gt 0 ]; then
        echo "box.sh: installing ${need[*]}" >&2
        apt-get update -qq
        # No recommends: libnss-mymachines would add itself to the host's nsswitch.conf.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}

usable() {
    [ "$(id -u)" -eq 0 ] || {
        echo "not root"
        return 1
    }
    for tool in systemd-nspawn debootstrap zstd nsenter; do
        command -v "$tool" >/dev/null || {
            echo "$tool is missing"
            return 1
        }
    done
    [ -d /sys/fs/cgroup ] && [ -w /sys/fs/cgroup ] || [ -w /sys/fs/cgroup/systemd ] || {
        echo "/sys/fs/cgroup is not writable"
        return 1
    }
    return 0
}

mirror() {
    local uri
    uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

build() {
    [ -f "$TARBALL" ] && return 0
    mkdir -p "$BOX_DIR"
    local dir=$BOX_DIR/rootfs-build.$$ started
    started=$(now)
    trap 'rm -rf "$dir" "$TARBALL.part"' EXIT
    echo "box.sh: building the $SUITE rootfs with debootstrap (once, about 40 s)" >&2
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$dir" "$(mirror)" >"$BOX_DIR/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $BOX_DIR/debootstrap.log"
    chroot "$dir" apt-get clean
    tar --numeric-owner --zstd -cf "$TARBALL.part" -C "$dir" .
    mv "$TARBALL.part" "$TARBALL"
    rm -rf "$dir"
    trap - EXIT
    echo "box.sh: rootfs ready in $(elapsed "$started") s: $TARBALL" >&2
}

# The cgroup directories of a container, in every hierarchy this host has.
cgroups() {
    local name=$1
    if [ -d /sys/fs/cgroup/systemd ]; then
        echo "/sys/fs/cgroup/systemd/box-$name"
        [ -d /sys/fs/cgroup/unified ] && echo "/sys/fs/cgroup/unified/box-$name"
    else
        echo "/sys/fs/cgroup/box-$name"
    fi
    return 0
}

state() { echo "$BOX_DIR/box/$1"; }

pid1() {
    local nspawn child
    nspawn=$(cat "$(state "$1")/nspawn.pid" 2>/dev/null) || return 1
    for child in $(pgrep -P "$nspawn" 2>/dev/null); do
        [ "$(cat "/proc/$child/comm" 2>/dev/null)" = systemd ] && {
            echo "$child"
            return 0
        }
    done
    return 1
}

run() {
    local name=$1 pid
    shift
    pid=$(pid1 "$name") || die "container $name is not running"
    exec nsenter -t "$pid" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= \
        SYSTEMD_COLORS=0 DEBIAN_FRONTEND=noninteractive "$@"
}

boot() {
    local name=$1 dir root started pid deadline status cg
    dir=$(state "$name")
    root=$dir/root
    [ -e "$dir" ] && die "container $name exists already (box.sh stop $name)"
    [ -f "$TARBALL" ] || build
    started=$(now)
    mkdir -p "$root"
    mount -t tmpfs -o size=2g,mode=755 "box-$name" "$root"
    tar --numeric-owner --zstd -xf "$TARBALL" -C "$root"
    # debootstrap writes no /etc/hosts (an installer would): without it "localhost" does not resolve.
    [ -e "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
    for cg in $(cgroups "$name"); do mkdir -p "$cg"; done
    (
        for cg in $(cgroups "$name"); do echo "$BASHPID" >"$cg/cgroup.procs"; done
        exec setsid systemd-nspawn -q -D "$root" -M "$name" -b --register=no --keep-unit --console=read-only
    ) </dev/null >"$dir/console.log" 2>&1 &
    echo $! >"$dir/nspawn.pid"
    deadline=$(($(date +%s) + 30))
    until pid=$(pid1 "$name"); do
        kill -0 "$(cat "$dir/nspawn.pid")" 2>/dev/null || die "systemd-nspawn exited; see $dir/console.log"
        [ "$(date +%s)" -lt "$deadline" ] || die "no systemd in container $name after 30 s"
        sleep 0.02
    done
    until status=$( (run "$name" systemctl is-system-running --wait) 2>/dev/null); do
        case $status in running | degraded) break ;; esac
        [ "$(date +%s)" -lt "$deadline" ] || die "container $name did not finish booting in 30 s"
        sleep 0.05
    done
    if [ "$status" != running ]; then
        (run "$name" systemctl --failed --no-pager) >&2 || true
        die "container $name booted $status"
    fi
    echo "box.sh: $name running (pid 1 = host pid $pid) after $(elapsed "$started") s" >&2
}

stop() {
    local name=$1 dir nspawn cg i pid
    dir=$(state "$name")
    [ -e "$dir" ] || return 0
    if nspawn=$(cat "$dir/nspawn.pid" 2>/dev/null) && kill -0 "$nspawn" 2>/dev/null; then
        kill -TERM "$nspawn" 2>/dev/null || true
        for ((i = 0; i < 200; i++)); do
            kill -0 "$nspawn" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$nspawn" 2>/dev/null; then
            echo "box.sh: $name did not halt in 10 s; killing it" >&2
            kill -KILL "$nspawn" 2>/dev/null || true
            sleep 0.2
        fi
    fi
    for cg in $(cgroups "$name"); do
        if [ -d "$cg" ]; then
            # Anything still in there (after a SIGKILL of nspawn) goes too.
            while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < <(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null)
            for ((i = 0; i < 50; i++)); do
                find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null && break
                sleep 0.05
            done
        fi
    done
    mountpoint -q "$dir/root" && umount "$dir/root"
    rm -rf "$dir" "/run/systemd/nspawn/propagate/$name"
}

[ $# -ge 1 ] || die "usage: box.sh tools|usable|build|boot NAME|root NAME|run NAME CMD...|stop NAME"
command=$1
shift
case $command in
tools) tools ;;
usable) usable ;;
build) build ;;
boot) boot "${1:?NAME}" ;;
root) echo "$(state "${1:?NAME}")/root" ;;
run) run "${1:?NAME}" "${@:2}" ;;
stop) stop "${1:?NAME}" ;;
*) die "unknown command $command" ;;
esac
