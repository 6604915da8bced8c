#!/usr/bin/env bash
# shellcheck disable=SC2016 # single-quoted commands run inside the container expand there
# The Debian packages, end to end, under a real systemd: builds relayctl, relay-proxy and
# relay-agent with scripts/package (which runs lintian), boots a fresh Debian 12 container
# (box.sh), installs them with apt-get, checks files, owners, modes, conffiles, the user and
# group and that nothing failed; writes the configs as README.Debian says, runs
# `systemctl enable --now`, carries a real TCP session through both daemons, checks relayctl
# for root, for a member of group relay and for anyone else, reload and restart, an upgrade to
# a higher revision with 20 sessions streaming across it (none lost, digests equal), then
# remove and purge, and compares the container's files with a
# snapshot taken before the install. Root only.
#
#   Tests/system/package-test.sh
#
# RELAY_PACKAGES: a directory holding relayctl_*.deb, relay-proxy_*.deb and relay-agent_*.deb
# (default: built now with `scripts/package --out build/packages`). RELAY_UPGRADE_PACKAGES:
# the same packages with a higher version (default: built now with
# `scripts/package --revision 2 --no-lintian --out build/packages-upgrade`). Packages given this way are
# also checked with lintian here, unless RELAY_LINTIAN=no. The container shares the host's
# network namespace, so every port is chosen free at run time and the client runs on the
# host. Prints the package sizes, the install and upgrade times and the time from
# `systemctl enable --now` to READY, and "N passed, M failed" last; exits non-zero on any
# failure. The container's journal is left in $BOX_DIR/package-test.journal.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BOX=$REPO/Tests/system/box.sh
NAME=relay-pkg-$$
WORK=$(mktemp -d /tmp/relay-package-test.XXXXXX)
JOURNAL=${BOX_DIR:-$REPO/.build-box}/package-test.journal
SECRET="package-test $(head -c 18 /dev/urandom | base64)"
MEMBER=relaytest-member # a user in group relay (added after the install)
OTHER=relaytest-other   # a user who is not
passed=0
failed=0
booted=no
figures=()

started_at=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

background=()
cleanup() {
    local pid
    for pid in "${background[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ "$booted" = yes ]; then
        # The container's whole journal, for a look after a failure.
        "$BOX" run "$NAME" journalctl --no-pager -o short-monotonic >"$JOURNAL" 2>&1 || true
    fi
    "$BOX" stop "$NAME" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Each result line shows the time since the previous result or the start of its step.
pass() {
    passed=$((passed + 1))
    echo "ok   $1 ($(since "$step_at") s)"
    step_at=$(date +%s.%N)
}
fail() {
    failed=$((failed + 1))
    echo "FAIL $1 ($(since "$step_at") s)" >&2
    shift
    [ $# -eq 0 ] || printf '%s\n' "$@" | sed 's/^/     /' >&2
    step_at=$(date +%s.%N)
}
# Pass or fail by a condition: check NAME DETAIL -- CMD... (DETAIL is printed on failure).
check() {
    local name=$1 detail=$2
    shift 3
    if "$@"; then pass "$name"; else fail "$name" "$detail"; fi
}
step() {
    step_at=$(date +%s.%N)
    echo "--   $1"
}
note() { printf '%s\n' "$@" | sed 's/^/     /'; }
# Stops the test after a failure that leaves nothing else to check.
give_up() {
    [ "$failed" -gt 0 ] || failed=1
    echo "package-test: cannot go on: $*" >&2
    echo "$passed passed, $failed failed (stopped early)"
    exit 1
}

# Runs a command inside the container (stdin passes through).
in_box() { "$BOX" run "$NAME" "$@"; }
# Runs a command inside; its output (stdout and stderr) goes to $out, its status to $rc.
out=""
rc=0
inside() {
    rc=0
    out=$(in_box "$@" 2>&1 </dev/null) || rc=$?
}
# Prints a command's output (stdout and stderr) inside, whatever its status.
text() { in_box "$@" 2>&1 </dev/null || true; }
# Whether a line of `systemctl show` properties (joined by spaces, one after each) holds
# every PROPERTY=VALUE given.
has_props() {
    local line=" $1" want
    shift
    for want in "$@"; do [[ $line == *" $want "* ]] || return 1; done
}

# wait_for, free_port, ask
# shellcheck source=Tests/system/lib.sh
. "$REPO/Tests/system/lib.sh"
ask_is() { [ "$(ask "$1" "$2" 2>/dev/null)" = "$3" ]; }
# A session through relay-proxy's web port to the target behind relay-agent, retried for up
# to 10 s (the agent may still be reconnecting); prints the last reply.
tunnel_reply=""
tunnel_works() {
    local line=$1
    wait_for 10 ask_is "$WEB" "$line" "pong $line" && tunnel_reply="pong $line" && return 0
    tunnel_reply=$(ask "$WEB" "$line" 2>&1 || true)
    return 1
}

prop() { in_box systemctl show -p "$2" --value "$1" </dev/null; }
journal() { in_box journalctl -u "$1" -o cat --no-pager </dev/null; }
active() { [ "$(in_box systemctl is-active "$1" </dev/null)" = active ]; }
# relay-proxy counts the agent as connected and relay-agent says it is connected.
registered() {
    local proxy agent
    proxy=$(in_box relayctl --json --socket /run/relay/proxy.sock status 2>/dev/null </dev/null) || return 1
    agent=$(in_box relayctl --json --socket /run/relay/agent.sock status 2>/dev/null </dev/null) || return 1
    [[ $proxy =~ \"agentsConnected\"\ *:\ *1[^0-9] ]] && [[ $agent =~ \"state\"\ *:\ *\"connected\" ]]
}
no_failed_units() {
    failed_units=$(text systemctl --failed --plain --no-legend)
    system_state=$(text systemctl is-system-running)
    [ -z "$failed_units" ] && [ "$system_state" = running ]
}
# The state of the configs: owners, modes and hashes.
configs() { text sh -c 'stat -c "%a %U:%G %n" /etc/relay /etc/relay/*; sha256sum /etc/relay/*.json'; }
# The last lines of an apt-get log, without dpkg's progress line.
log_tail() { grep -v '^(Reading database' "$1" | tail -"${2:-30}"; }
# The lines of apt-get's output that are not its usual progress.
apt_noise() {
    grep -Ev '^(Reading|Building|Preparing|Unpacking|Setting up|Selecting|Processing triggers|\(Reading database|Note, selecting|The following|Need to get|After this operation|Get:|Fetched|[0-9]+ upgraded|  |debconf: delaying package configuration|Removing|Purging configuration files)' "$1" || true
}

# --- the container's file list ---------------------------------------------------------
# Every file, directory and link on the container's root file system with its type, mode,
# owner, link target and (files) content hash, except what changes by itself or in any apt
# run and is none of the packages' business:
#   /proc /sys /dev /run /tmp        other file systems (-xdev too)
#   /var/log/journal                 the journal
#   /var/log/apt /var/log/dpkg.log /var/log/alternatives.log   apt's and dpkg's logs
#   /var/log/wtmp /var/log/btmp /var/log/lastlog /var/log/faillog  login records
#   /var/cache/apt /var/lib/apt      apt's caches and lists, extended_states
#   /var/cache/debconf               debconf's database (rewritten, *-old copies)
#   /var/cache/ldconfig              ldconfig's aux cache
#   /var/lib/dpkg/{status,status-old,available,available-old,lock,lock-frontend,triggers,updates,cmethopt}
#                                    dpkg's own database
#   /var/lib/systemd/{random-seed,timers,catalog}   systemd's own state
# Compared on purpose: /etc (enabled units, conffiles, users), /var/lib/dpkg/info (maintainer
# scripts and file lists of a package dpkg still knows), the alternatives, diversions and
# statoverrides, /var/lib/systemd/deb-systemd-helper-* (the maintainer scripts' record of
# enabled and masked units), /var/tmp (PrivateTmp= leftovers), /var/lib/systemd/coredump.
SNAPSHOT='find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
    -o -path /var/log/journal -o -path /var/log/apt -o -path /var/log/dpkg.log \
    -o -path /var/log/alternatives.log -o -path /var/log/wtmp -o -path /var/log/btmp \
    -o -path /var/log/lastlog -o -path /var/log/faillog \
    -o -path /var/cache/apt -o -path /var/lib/apt -o -path /var/cache/debconf -o -path /var/cache/ldconfig \
    -o -path /var/lib/dpkg/status -o -path /var/lib/dpkg/status-old -o -path /var/lib/dpkg/available \
    -o -path /var/lib/dpkg/available-old -o -path /var/lib/dpkg/lock -o -path /var/lib/dpkg/lock-frontend \
    -o -path /var/lib/dpkg/triggers -o -path /var/lib/dpkg/updates -o -path /var/lib/dpkg/cmethopt \
    -o -path /var/lib/systemd/random-seed -o -path /var/lib/systemd/timers -o -path /var/lib/systemd/catalog \
    \) -prune -o "$@"'
# Prints the list, one "PATH<TAB>TYPE MODE OWNER [LINK] [HASH]" line per entry, sorted.
snapshot() {
    {
        in_box sh -c "$SNAPSHOT" find -printf 'M\t%p\t%y %m %u:%g %l\n' </dev/null
        in_box sh -c "$SNAPSHOT | xargs -0 -r sha256sum" find -type f -print0 </dev/null | sed 's/^\([0-9a-f]*\)  /H\t\1\t/'
    } | awk -F'\t' '
        $1 == "H" { hash[$3] = substr($2, 1, 16); next }
        $1 == "M" { meta[$2] = $3 }
        END { for (p in meta) { line = meta[p]; sub(/ $/, "", line); if (p in hash) line = line " " hash[p]; print p "\t" line } }' |
        LC_ALL=C sort
}
# Compares two lists: "added|removed|modified<TAB>PATH<TAB>what", sorted by path.
compare() {
    awk -F'\t' '
        NR == FNR { before[$1] = $2; next }
        { after[$1] = $2 }
        END {
            for (p in before) {
                if (!(p in after)) print "removed\t" p "\t" before[p]
                else if (before[p] != after[p]) print "modified\t" p "\t" before[p] " -> " after[p]
            }
            for (p in after) if (!(p in before)) print "added\t" p "\t" after[p]
        }' "$1" "$2" | LC_ALL=C sort -t "$(printf '\t')" -k2
}

# --- the packages -----------------------------------------------------------------------
# Prints the one file PACKAGE_*_amd64.deb in DIR.
deb_in() {
    local dir=$1 package=$2 found=()
    shopt -s nullglob
    found=("$dir/${package}"_*_amd64.deb)
    shopt -u nullglob
    [ ${#found[@]} -eq 1 ] || {
        echo "package-test: expected one ${package}_*_amd64.deb in $dir, found ${#found[@]}" >&2
        return 1
    }
    echo "${found[0]}"
}
# Copies the three packages of DIR into the container's DEST through stdin (not into $R/tmp:
# the container's own /tmp hides it).
copy_in() {
    local dir=$1 dest=$2 package deb
    in_box mkdir -p "$dest" </dev/null
    for package in relayctl relay-proxy relay-agent; do
        deb=$(deb_in "$dir" "$package")
        # shellcheck disable=SC2094 # the file is read here and written inside the container
        in_box sh -c "cat > $dest/$(basename "$deb")" <"$deb"
    done
}
# Installs the packages copied to DIR inside with apt-get, as a user would; the log goes to
# LOG, the status to $rc.
apt_install() {
    rc=0
    in_box sh -c "cd $1 && timeout 600 apt-get install -y ./relayctl_*.deb ./relay-proxy_*.deb ./relay-agent_*.deb" \
        </dev/null >"$2" 2>&1 || rc=$?
}
# dpkg's state of the three, e.g. "ii 0.1.0-1 ii 0.1.0-1 ii 0.1.0-1 " (relayctl, proxy, agent).
PACKAGE_STATES='for p in relayctl relay-proxy relay-agent; do
    dpkg-query -W -f="\${db:Status-Abbrev}\${Version} " $p 2>/dev/null || printf "none "; done'
package_states() { text sh -c "$PACKAGE_STATES"; }

[ "$(id -u)" -eq 0 ] || {
    echo "package-test: needs root (systemd-nspawn)" >&2
    exit 1
}

step "the packages"
PACKAGES=${RELAY_PACKAGES:-}
UPGRADE=${RELAY_UPGRADE_PACKAGES:-}
if [ -z "$PACKAGES" ]; then
    step "scripts/package --out build/packages (release build, lintian)"
    if (cd "$REPO" && scripts/package --out build/packages); then
        pass "scripts/package: built, lintian clean"
    else
        fail "scripts/package"
        give_up "no packages"
    fi
    PACKAGES=$REPO/build/packages
fi
if [ -z "$UPGRADE" ]; then
    # The same binaries and files as the packages above, which lintian checked: only the
    # version differs, so lintian is not run again (40 s saved).
    step "scripts/package --revision 2 --no-lintian --out build/packages-upgrade (the upgrade)"
    if (cd "$REPO" && scripts/package --revision 2 --no-lintian --out build/packages-upgrade); then
        pass "scripts/package --revision 2: built"
    else
        fail "scripts/package --revision 2"
        give_up "no upgrade packages"
    fi
    UPGRADE=$REPO/build/packages-upgrade
fi

step "package sizes, versions and dependencies"
for dir in "$PACKAGES" "$UPGRADE"; do
    for package in relayctl relay-proxy relay-agent; do deb_in "$dir" "$package" >/dev/null || give_up "packages missing in $dir"; done
done
VERSION=$(dpkg-deb -f "$(deb_in "$PACKAGES" relay-proxy)" Version)
UPGRADE_VERSION=$(dpkg-deb -f "$(deb_in "$UPGRADE" relay-proxy)" Version)
UPSTREAM=${VERSION%-*}
sizes=""
for file in "$PACKAGES"/*.deb "$PACKAGES"/*.ddeb; do
    [ -e "$file" ] || continue
    size=$(stat -c %s "$file")
    note "$(printf '%10d bytes  %s' "$size" "$(basename "$file")")"
    case $(basename "$file") in *-dbgsym_* | *.ddeb) ;; *) sizes="$sizes${sizes:+, }$(basename "${file%%_*}") $size bytes" ;; esac
done
figures+=("package sizes: $sizes")
problems=()
for package in relayctl relay-proxy relay-agent; do
    deb=$(deb_in "$PACKAGES" "$package")
    version=$(dpkg-deb -f "$deb" Version)
    [ "$version" = "$VERSION" ] || problems+=("$package is version $version, relay-proxy $VERSION")
    version=$(dpkg-deb -f "$(deb_in "$UPGRADE" "$package")" Version)
    [ "$version" = "$UPGRADE_VERSION" ] || problems+=("upgrade: $package is version $version, relay-proxy $UPGRADE_VERSION")
    depends=$(dpkg-deb -f "$deb" Depends)
    note "$package: Installed-Size $(dpkg-deb -f "$deb" Installed-Size) KiB; Depends: $depends"
    case $package in relay-proxy | relay-agent)
        grep -Eq "(^|, )relayctl \(= $VERSION\)(,|$)" <<<"$depends" || problems+=("$package does not depend on relayctl (= $VERSION)")
        grep -Eq '(^|, )libsystemd0( |,|$)' <<<"$depends" || problems+=("$package does not depend on libsystemd0")
        ;;
    esac
    if grep -qi swift <<<"$depends"; then problems+=("$package depends on a Swift runtime: $depends"); fi
done
dpkg --compare-versions "$UPGRADE_VERSION" gt "$VERSION" || problems+=("the upgrade's version $UPGRADE_VERSION is not above $VERSION")
if [ ${#problems[@]} -eq 0 ]; then
    pass "versions $VERSION and $UPGRADE_VERSION; relay-proxy and relay-agent depend on relayctl (= $VERSION) and libsystemd0"
else
    fail "package metadata" "${problems[@]}"
fi

# Binaries stripped, their debug info in the -dbgsym packages (by build id).
mkdir -p "$WORK/x"
for file in "$PACKAGES"/*.deb "$PACKAGES"/*.ddeb; do [ ! -e "$file" ] || dpkg-deb -x "$file" "$WORK/x"; done
problems=()
for binary in usr/sbin/relay-proxy usr/sbin/relay-agent usr/bin/relayctl; do
    if [ ! -f "$WORK/x/$binary" ]; then
        problems+=("/$binary is in none of the packages")
        continue
    fi
    if readelf -S --wide "$WORK/x/$binary" | grep -Eq '\.(debug_info|symtab) '; then problems+=("/$binary is not stripped"); fi
    id=$(readelf -n "$WORK/x/$binary" | awk '/Build ID:/ { print $3 }')
    if [ -z "$id" ]; then
        problems+=("/$binary has no build id")
    elif [ ! -f "$WORK/x/usr/lib/debug/.build-id/${id:0:2}/${id:2}.debug" ]; then
        problems+=("/$binary: no /usr/lib/debug/.build-id/${id:0:2}/${id:2}.debug in the -dbgsym packages")
    fi
done
if [ ${#problems[@]} -eq 0 ]; then pass "binaries stripped; their debug info in the -dbgsym packages"; else fail "stripping" "${problems[@]}"; fi

if [ -n "${RELAY_PACKAGES:-}${RELAY_UPGRADE_PACKAGES:-}" ] && [ "${RELAY_LINTIAN:-yes}" != no ]; then
    step "lintian (packages given, not built by scripts/package here)"
    if ! command -v lintian >/dev/null; then
        note "lintian is not installed: skipped"
    else
        for dir in ${RELAY_PACKAGES:+"$PACKAGES"} ${RELAY_UPGRADE_PACKAGES:+"$UPGRADE"}; do
            if out=$(lintian --fail-on error,warning --suppress-tags-from-file /dev/null "$dir"/*.deb 2>&1 | { grep -v 'running with root privileges' || true; }); then
                pass "lintian $dir/*.deb: no errors or warnings${out:+ (other tags: $(wc -l <<<"$out"))}"
                [ -z "$out" ] || note "$out"
            else
                fail "lintian $dir/*.deb" "$out"
            fi
        done
    fi
fi

"$BOX" tools
"$BOX" build
step "boot a Debian 12 container"
booted=yes
"$BOX" boot "$NAME" || give_up "the container did not boot"
R=$("$BOX" root "$NAME")
pass "container booted"

step "before the install: test users, the target, a snapshot of the file list"
AGENTS=$(free_port) WEB=$(free_port) TARGET=$(free_port)
# A second service, "stream": an echo target on the host (the container shares its network)
# for sessions that stream across the upgrade (handover-client.py, as handover-test.sh uses).
STREAM=$(free_port)
CLIENT=$REPO/Tests/system/handover-client.py
# The echo target binds a port the system chooses, and says which: no port to race for.
python3 "$CLIENT" echo 0 "$WORK/echo-port" &
background+=($!)
echo_bound() { [ -s "$WORK/echo-port" ]; }
wait_for 10 echo_bound || give_up "the echo target for the streaming sessions did not start"
ECHO=$(cat "$WORK/echo-port")
# Made now, so that their traces (/etc/subuid- and the like) are in the snapshot.
in_box useradd --no-create-home --shell /bin/sh "$MEMBER" </dev/null
in_box useradd --no-create-home --shell /bin/sh "$OTHER" </dev/null
# The target, one process per connection, answers a line with "pong LINE". Runtime units in
# /run, outside the snapshot.
in_box sh -c 'cat > /run/systemd/system/test-web.socket' <<EOF
[Socket]
ListenStream=127.0.0.1:$TARGET
Accept=yes
EOF
in_box sh -c 'cat > /run/systemd/system/test-web@.service' <<'EOF'
[Service]
StandardInput=socket
StandardOutput=socket
ExecStart=/bin/sh -c 'read -r line; echo "pong $line"'
EOF
in_box systemctl daemon-reload </dev/null
in_box systemctl start test-web.socket </dev/null
mkdir -p "$WORK/etc"
for file in passwd group shadow gshadow; do cp "$R/etc/$file" "$WORK/etc/"; done
snapshot >"$WORK/before.list"
entries=$(wc -l <"$WORK/before.list")
if [ "$entries" -gt 1000 ] && grep -q "^/etc/passwd	f 644 root:root [0-9a-f]" "$WORK/before.list"; then
    pass "snapshot: $entries entries (ports: agents $AGENTS, web $WEB, target $TARGET)"
else
    fail "snapshot" "$entries entries"
fi

step "apt-get install -y ./relayctl_*.deb ./relay-proxy_*.deb ./relay-agent_*.deb"
copy_in "$PACKAGES" /srv/relay-debs
install_at=$(date +%s.%N)
apt_install /srv/relay-debs "$WORK/install.log"
install_time=$(since "$install_at")
figures+=("install time (apt-get install of the three .debs): $install_time s")
note "install time: $install_time s"
states=$(package_states)
installed=no
if [ "$rc" -eq 0 ] && [ "$states" = "ii $VERSION ii $VERSION ii $VERSION " ]; then
    pass "installed $VERSION in $install_time s"
    installed=yes
else
    # The files may still be unpacked: check them, then stop before the daemons.
    fail "apt-get install (exit $rc): $states" "$(log_tail "$WORK/install.log")"
fi
noise=$(apt_noise "$WORK/install.log")
[ "$installed" = no ] || [ -z "$noise" ] || note "apt-get also printed:" "$noise"
pulled=$(awk '/^The following NEW packages/ { on = 1; next } /^[^ ]/ { on = 0 } on' "$WORK/install.log" | tr -s ' ' '\n' |
    grep -Ev '^(relayctl|relay-proxy|relay-agent)?$' | tr '\n' ' ' || true)
note "dependencies apt-get installed besides the three: ${pulled:-none}"

step "files, owners and modes"
# PATH MODE OWNER; a PATH ending in ~ may also be PATH.gz (dh_compress).
cat >"$WORK/files" <<'EOF'
/usr/sbin/relay-proxy 755 root:root
/usr/sbin/relay-agent 755 root:root
/usr/bin/relayctl 755 root:root
/lib/systemd/system/relay-proxy.service 644 root:root
/lib/systemd/system/relay-proxy.socket 644 root:root
/lib/systemd/system/relay-agent.service 644 root:root
/usr/lib/sysusers.d/relay.conf 644 root:root
/usr/share/man/man1/relayctl.1~ 644 root:root
/usr/share/man/man8/relay-proxy.8~ 644 root:root
/usr/share/man/man8/relay-agent.8~ 644 root:root
/usr/share/man/man5/relay-proxy.json.5~ 644 root:root
/usr/share/man/man5/relay-agent.json.5~ 644 root:root
/usr/share/bash-completion/completions/relayctl 644 root:root
/usr/share/zsh/vendor-completions/_relayctl 644 root:root
/usr/share/fish/vendor_completions.d/relayctl.fish 644 root:root
/usr/share/doc/relayctl/copyright 644 root:root
/usr/share/doc/relay-proxy/copyright 644 root:root
/usr/share/doc/relay-agent/copyright 644 root:root
/usr/share/doc/relay-proxy/README.Debian~ 644 root:root
/usr/share/doc/relay-proxy/examples/proxy.json~ 644 root:root
/usr/share/doc/relay-proxy/examples/relay-proxy-web.socket~ 644 root:root
/usr/share/doc/relay-agent/README.Debian~ 644 root:root
/usr/share/doc/relay-agent/examples/agent.json~ 644 root:root
/etc/relay 750 root:relay
/etc/relay/proxy.json 640 root:relay
/etc/relay/agent.json 640 root:relay
EOF
wrong=$(in_box sh -c '
while read -r path mode owner; do
    case $path in *"~") path=${path%"~"}; [ -e "$path" ] || path=$path.gz ;; esac
    if [ ! -e "$path" ]; then
        others=$(ls -d "${path%.gz}".* 2>/dev/null | tr "\n" " ")
        echo "missing: $path${others:+ (there is: $others)}"
        continue
    fi
    got=$(stat -c "%a %U:%G" "$path")
    [ "$got" = "$mode $owner" ] || echo "$path: $got, expected $mode $owner"
done' <"$WORK/files" 2>&1)
if [ -z "$wrong" ]; then pass "$(wc -l <"$WORK/files") files and directories with the documented owners and modes"; else fail "files" "$wrong"; fi
listing=$(text ls -A /etc/relay | tr '\n' ' ')
check "/etc/relay holds proxy.json and agent.json, nothing else" "$listing" -- [ "$listing" = "agent.json proxy.json " ]
placeholders=$(text grep -H 'CHANGE-ME' /etc/relay/proxy.json /etc/relay/agent.json | grep -v '"//' || true)
check "both shipped configs hold CHANGE-ME placeholders (at least the secrets)" "$placeholders" -- \
    test "$(grep -c '"secret": *"CHANGE-ME' <<<"$placeholders")" -eq 2
note "$placeholders"
inside sh -c 'ldd /usr/sbin/relay-proxy /usr/sbin/relay-agent /usr/bin/relayctl | grep -E "not found|swift" || true
    for b in relay-proxy relay-agent relayctl; do $b --version; done'
check "the binaries need no Swift toolchain and print version $UPSTREAM" "$out" -- \
    [ "$out" = "relay-proxy $UPSTREAM"$'\n'"relay-agent $UPSTREAM"$'\n'"relayctl $UPSTREAM" ]

step "conffiles"
for package in relay-proxy relay-agent relayctl; do
    conffiles=$(text dpkg-query -W -f='${Conffiles}' "$package")
    case $package in
    relay-proxy) want="/etc/relay/proxy.json " ;;
    relay-agent) want="/etc/relay/agent.json " ;;
    relayctl) want="" ;;
    esac
    listed=$(awk 'NF { print $1 ($3 == "" ? "" : " (" $3 ")") }' <<<"$conffiles" | tr '\n' ' ')
    shown=${listed% }
    check "$package: conffiles ${shown:-none}" "$conffiles" -- [ "$listed" = "$want" ]
done

step "the system user and group relay"
user=$(text getent passwd relay)
group=$(text getent group relay)
shadow=$(text getent shadow relay)
note "passwd: $user" "group:  $group" "shadow: $(cut -d: -f1-2 <<<"$shadow")"
IFS=: read -r _ _ uid gid _ home shell <<<"$user"
IFS=: read -r _ _ group_gid _ <<<"$group"
IFS=: read -r _ password _ <<<"$shadow"
problems=()
[ -n "$user" ] || problems+=("no user relay")
[ -n "$group" ] || problems+=("no group relay")
if ! [[ ${uid:-x} =~ ^[0-9]+$ ]] || [ "$uid" -lt 100 ] || [ "$uid" -gt 999 ]; then problems+=("uid '${uid:-}' is not a system uid (100-999)"); fi
if ! [[ ${group_gid:-x} =~ ^[0-9]+$ ]] || [ "$group_gid" -lt 100 ] || [ "$group_gid" -gt 999 ]; then problems+=("gid '${group_gid:-}' is not a system gid (100-999)"); fi
[ "${gid:-}" = "${group_gid:-}" ] || problems+=("the user's primary group '${gid:-}' is not relay (${group_gid:-})")
[ "${shell:-}" = /usr/sbin/nologin ] || problems+=("shell '${shell:-}', not /usr/sbin/nologin")
case ${password:-} in '!'* | '*'*) ;; *) problems+=("no locked password: '${password:0:3}...'") ;; esac
if [ ${#problems[@]} -eq 0 ]; then
    pass "user relay uid $uid, group relay gid $group_gid (system ids), home $home, shell $shell, password locked"
else
    fail "user and group relay" "${problems[@]}"
fi

step "after the install: no failed unit; the daemons enabled but skipped while the configs hold placeholders"
if no_failed_units; then pass "systemctl --failed: none; is-system-running: running"; else fail "failed units" "is-system-running: $system_state" "$failed_units"; fi
for unit in relay-proxy relay-agent; do
    state=$(text systemctl show -p ActiveState -p Result -p UnitFileState -p ConditionResult -p NRestarts "$unit.service" | tr '\n' ' ')
    status=$(text systemctl status --no-pager --lines=20 "$unit.service")
    log=$(journal "$unit.service" 2>&1)
    placeholder=$(grep -F 'CHANGE-ME' <<<"$log" | head -3 || true)
    if has_props "$state" ActiveState=inactive UnitFileState=enabled NRestarts=0 && ! has_props "$state" Result=failed &&
        [ -n "$placeholder" ] && grep -qF 'CHANGE-ME' <<<"$status"; then
        pass "$unit: enabled, not started (${state% }); the placeholder named in the journal and systemctl status"
        note "$placeholder"
    else
        fail "$unit after the install" "$state" "$status" "journal:" "$log"
    fi
done
state=$(text systemctl show -p ActiveState -p UnitFileState relay-proxy.socket | tr '\n' ' ')
if has_props "$state" ActiveState=inactive UnitFileState=disabled; then
    pass "relay-proxy.socket installed, neither enabled nor active"
else
    fail "relay-proxy.socket after the install" "$state"
fi

step "systemd-analyze verify of the installed units"
inside sh -c 'systemd-analyze verify --man=no relay-proxy.service relay-proxy.socket relay-agent.service
    f=/usr/share/doc/relay-proxy/examples/relay-proxy-web.socket
    if [ ! -e $f ]; then zcat $f.gz >/run/relay-proxy-web.socket; f=/run/relay-proxy-web.socket; fi
    systemd-analyze verify --man=no $f'
if [ "$rc" -eq 0 ] && [ -z "$out" ]; then pass "systemd-analyze verify: clean (the three units and the example socket)"; else fail "systemd-analyze verify (exit $rc)" "$out"; fi

step "README.Debian: what to edit, which systemctl enable --now to run"
problems=()
for package in relay-proxy relay-agent; do
    readme=$(text sh -c "zcat -f /usr/share/doc/$package/README.Debian*")
    config=/etc/relay/${package#relay-}.json
    grep -qF "$config" <<<"$readme" || problems+=("$package's README.Debian does not name $config")
    grep -qE "systemctl enable --now ([a-z-]+ )*$package" <<<"$readme" || problems+=("$package's README.Debian does not say: systemctl enable --now $package")
    grep -qF 'CHANGE-ME' <<<"$readme" || problems+=("$package's README.Debian does not mention the CHANGE-ME placeholders")
done
if [ ${#problems[@]} -eq 0 ]; then pass "both name their config, the placeholders and systemctl enable --now"; else fail "README.Debian" "${problems[@]}"; fi

[ "$installed" = yes ] || give_up "the packages did not install"

step "write the configs (cat > file), systemctl enable --now relay-proxy relay-agent"
in_box sh -c 'cat > /etc/relay/proxy.json' <<EOF
{
  "listen": "127.0.0.1:$AGENTS",
  "control": "/run/relay/proxy.sock",
  "agents": [ { "id": "office", "secret": "$SECRET" } ],
  "services": [ { "name": "web", "agent": "office", "listen": "127.0.0.1:$WEB" },
                { "name": "stream", "agent": "office", "listen": "127.0.0.1:$STREAM" } ]
}
EOF
in_box sh -c 'cat > /etc/relay/agent.json' <<EOF
{
  "relay": "127.0.0.1:$AGENTS",
  "id": "office",
  "secret": "$SECRET",
  "control": "/run/relay/agent.sock",
  "services": [ { "name": "web", "target": "127.0.0.1:$TARGET" },
                { "name": "stream", "target": "127.0.0.1:$ECHO" } ]
}
EOF
modes=$(text stat -c '%a %U:%G %n' /etc/relay/proxy.json /etc/relay/agent.json)
check "configs written, still 640 root:relay" "$modes" -- \
    [ "$modes" = "640 root:relay /etc/relay/proxy.json"$'\n'"640 root:relay /etc/relay/agent.json" ]
enable_at=$(date +%s.%N)
rc=0
out=$(in_box timeout 120 systemctl enable --now relay-proxy relay-agent </dev/null 2>&1) || rc=$?
ready_time=$(since "$enable_at")
if [ "$rc" -eq 0 ] && active relay-proxy.service && active relay-agent.service; then
    each=""
    for unit in relay-proxy relay-agent; do
        # From leaving "inactive" (ExecCondition= included) to READY=1, as systemd saw it.
        t=$(text systemctl show -p InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic "$unit.service" |
            awk -F= '{ v[$1] = $2 } END { printf "%.3f", (v["ActiveEnterTimestampMonotonic"] - v["InactiveExitTimestampMonotonic"]) / 1e6 }')
        each="$each, $unit $t s"
    done
    figures+=("systemctl enable --now relay-proxy relay-agent until both sent READY=1: $ready_time s (start to READY in systemd's timestamps$each)")
    pass "enable --now returned once both were READY: $ready_time s (start to READY$each)"
    [ -z "$out" ] || note "$out"
else
    fail "systemctl enable --now (exit $rc)" "$out" "$(text systemctl status --no-pager relay-proxy relay-agent)"
fi
state=$(text systemctl show -p ActiveState -p UnitFileState relay-proxy.socket | tr '\n' ' ')
if has_props "$state" ActiveState=inactive UnitFileState=disabled; then
    pass "relay-proxy.socket still neither enabled nor active"
else
    fail "relay-proxy.socket after enable --now relay-proxy" "$state"
fi
registered_at=$(date +%s.%N)
if wait_for 30 registered; then
    pass "the agent is registered (relayctl --json status of both) $(since "$registered_at") s after READY"
else
    fail "the agent did not register in 30 s" "$(text relayctl --socket /run/relay/proxy.sock status)" \
        "$(text relayctl --socket /run/relay/agent.sock status)" "$(journal relay-agent.service | tail -10)"
fi
if tunnel_works hello; then
    pass "a TCP session from the host: client -> relay-proxy 127.0.0.1:$WEB -> relay-agent -> target: '$tunnel_reply'"
else
    fail "tunnel" "reply: '$tunnel_reply'" "$(journal relay-proxy.service | tail -5)" "$(journal relay-agent.service | tail -5)"
fi

step "relayctl status: as root, as a member of group relay, as anyone else"
inside relayctl status
if [ "$rc" -eq 0 ] && grep -q . <<<"$out"; then pass "relayctl status as root (default socket: the proxy's)"; else fail "relayctl status as root (exit $rc)" "$out"; fi
note "$out"
in_box usermod -a -G relay "$MEMBER" </dev/null
for args in "status" "--socket /run/relay/proxy.sock status" "--socket /run/relay/agent.sock status"; do
    # shellcheck disable=SC2086 # the words of $args
    inside runuser -u "$MEMBER" -- relayctl $args
    if [ "$rc" -eq 0 ] && grep -q . <<<"$out"; then pass "relayctl $args as $MEMBER (in group relay)"; else fail "relayctl $args as $MEMBER (exit $rc)" "$out"; fi
done
for args in "status" "--socket /run/relay/proxy.sock status" "--socket /run/relay/agent.sock status"; do
    # shellcheck disable=SC2086 # the words of $args
    inside runuser -u "$OTHER" -- relayctl $args
    if [ "$rc" -ne 0 ] && [ "$(wc -l <<<"$out")" -eq 1 ] && grep -qi 'permission' <<<"$out"; then
        pass "relayctl $args as $OTHER (not in group relay): refused, exit $rc"
        note "$out"
    else
        fail "relayctl $args as $OTHER: expected a one-line refusal that names the permission" "exit $rc: $out"
    fi
done

step "systemctl reload (the same process) and restart (a new one)"
for unit in relay-proxy relay-agent; do
    pid=$(prop "$unit.service" MainPID)
    rc=0
    out=$(in_box timeout 60 systemctl reload "$unit" </dev/null 2>&1) || rc=$?
    if [ "$rc" -eq 0 ] && [ "$(prop "$unit.service" MainPID)" = "$pid" ] && active "$unit.service" &&
        wait_for 10 registered && tunnel_works "after the reload of $unit"; then
        pass "systemctl reload $unit: MainPID $pid kept, active, the tunnel works"
    else
        fail "systemctl reload $unit (exit $rc)" "$out" "MainPID $pid -> $(prop "$unit.service" MainPID), $(prop "$unit.service" ActiveState)" \
            "reply: '$tunnel_reply'" "$(journal "$unit.service" | tail -8)"
    fi
done
for unit in relay-proxy relay-agent; do
    pid=$(prop "$unit.service" MainPID)
    rc=0
    out=$(in_box timeout 120 systemctl restart "$unit" </dev/null 2>&1) || rc=$?
    new=$(prop "$unit.service" MainPID)
    if [ "$rc" -eq 0 ] && [ "$new" != "$pid" ] && [ "$new" != 0 ] && active "$unit.service" &&
        wait_for 30 registered && tunnel_works "after the restart of $unit"; then
        pass "systemctl restart $unit: MainPID $pid -> $new, active, the tunnel works"
    else
        fail "systemctl restart $unit (exit $rc)" "$out" "MainPID $pid -> $new, $(prop "$unit.service" ActiveState)" \
            "reply: '$tunnel_reply'" "$(journal "$unit.service" | tail -8)"
    fi
done

step "upgrade to $UPGRADE_VERSION: apt-get install -y of the rebuilt packages"
configs_before=$(configs)
proxy_pid=$(prop relay-proxy.service MainPID)
agent_pid=$(prop relay-agent.service MainPID)
copy_in "$UPGRADE" /srv/relay-debs-upgrade
# Sessions that stream through the upgrade: the postinst's restart hands them to the new
# processes (docs/restart.md), so none may be lost, nor a byte, nor a new session refused.
STREAMING=20
python3 "$CLIENT" stream "$STREAM" "$STREAMING" "$WORK/stream-status" "$WORK/stream-stop" \
    >"$WORK/stream-result.json" 2>"$WORK/stream-client.err" &
stream_pid=$!
background+=("$stream_pid")
streaming() { [ "$(cat "$WORK/stream-status" 2>/dev/null)" = "streaming $STREAMING" ]; }
wait_for 40 streaming || note "the streaming sessions did not all open: $(cat "$WORK/stream-client.err")"
upgrade_at=$(date +%s.%N)
apt_install /srv/relay-debs-upgrade "$WORK/upgrade.log"
upgrade_time=$(since "$upgrade_at")
figures+=("upgrade time (apt-get install of the three rebuilt .debs): $upgrade_time s")
states=$(package_states)
if [ "$rc" -eq 0 ] && [ "$states" = "ii $UPGRADE_VERSION ii $UPGRADE_VERSION ii $UPGRADE_VERSION " ]; then
    pass "upgraded to $UPGRADE_VERSION in $upgrade_time s"
else
    fail "upgrade (exit $rc): $states" "$(log_tail "$WORK/upgrade.log")"
fi
noise=$(apt_noise "$WORK/upgrade.log")
[ -z "$noise" ] || note "apt-get also printed:" "$noise"
configs_after=$(configs)
check "the edited configs kept byte for byte, same owners and modes, no .dpkg-* files" \
    "$(diff <(echo "$configs_before") <(echo "$configs_after") || true)" -- [ "$configs_before" = "$configs_after" ]
new_proxy=$(prop relay-proxy.service MainPID)
new_agent=$(prop relay-agent.service MainPID)
if [ "$new_proxy" != "$proxy_pid" ] && [ "$new_agent" != "$agent_pid" ] && [ "$new_proxy" != 0 ] && [ "$new_agent" != 0 ] &&
    active relay-proxy.service && active relay-agent.service; then
    pass "both daemons restarted by the upgrade (relay-proxy MainPID $proxy_pid -> $new_proxy, relay-agent $agent_pid -> $new_agent), active"
else
    fail "restart by the upgrade" "relay-proxy MainPID $proxy_pid -> $new_proxy ($(prop relay-proxy.service ActiveState))" \
        "relay-agent MainPID $agent_pid -> $new_agent ($(prop relay-agent.service ActiveState))"
fi
if wait_for 30 registered && tunnel_works "after the upgrade"; then
    pass "after the upgrade the agent is registered and the tunnel works: '$tunnel_reply'"
else
    fail "tunnel after the upgrade" "reply: '$tunnel_reply'" "$(journal relay-agent.service | tail -5)"
fi
if no_failed_units; then pass "no failed unit after the upgrade"; else fail "failed units after the upgrade" "is-system-running: $system_state" "$failed_units"; fi
touch "$WORK/stream-stop"
wait "$stream_pid" || true
stream_result=$(cat "$WORK/stream-result.json" 2>/dev/null)
if python3 -c 'import json,sys; r=json.load(sys.stdin); sys.exit(0 if r["sessions"] > 0 and r["ok"] == r["sessions"] and r["bytesSent"] == r["bytesReceived"] and r["arrivalFailures"] == 0 else 1)' <<<"$stream_result" 2>/dev/null; then
    figures+=("sessions streaming across the upgrade: $stream_result")
    pass "$STREAMING sessions streamed across the upgrade: 0 lost, 0 bytes lost, 0 new sessions refused: $stream_result"
else
    fail "sessions across the upgrade" "$stream_result" "$(tail -5 "$WORK/stream-client.err" 2>/dev/null)" \
        "$(journal relay-proxy.service | grep -E "handing over|handed over|resumed|not handing over" | tail -4)"
fi

step "apt-get remove -y relay-proxy relay-agent relayctl"
configs_before=$(configs)
rc=0
in_box timeout 600 apt-get remove -y relay-proxy relay-agent relayctl </dev/null >"$WORK/remove.log" 2>&1 || rc=$?
states=$(package_states)
# relay-proxy and relay-agent keep their conffiles (rc); relayctl has none, so it is gone (un).
if [ "$rc" -eq 0 ] && [[ $states =~ ^(un\ +|rc\ $UPGRADE_VERSION\ )rc\ $UPGRADE_VERSION\ rc\ $UPGRADE_VERSION\ $ ]]; then
    pass "removed (dpkg: relay-proxy and relay-agent rc, their configuration kept; relayctl ${states%% *})"
else
    fail "apt-get remove (exit $rc): $states" "$(log_tail "$WORK/remove.log" 20)"
fi
noise=$(apt_noise "$WORK/remove.log")
[ -z "$noise" ] || note "apt-get also printed:" "$noise"
processes=$(text pgrep -a -f '^/usr/sbin/relay-(proxy|agent)( |$)')
states=$(text systemctl show -p ActiveState --value relay-proxy.service relay-agent.service relay-proxy.socket | grep . | sort -u)
if [ -z "$processes" ] && [ "$states" = inactive ]; then pass "the daemons are stopped (no process, units inactive)"; else fail "daemons after the remove" "$processes" "states: $states"; fi
left=$(text sh -c 'for f in /usr/sbin/relay-proxy /usr/sbin/relay-agent /usr/bin/relayctl /lib/systemd/system/relay-proxy.service \
    /lib/systemd/system/relay-proxy.socket /lib/systemd/system/relay-agent.service; do [ ! -e $f ] || echo "still there: $f"; done')
check "binaries and units gone" "$left" -- [ -z "$left" ]
configs_after=$(configs)
check "/etc/relay/proxy.json and agent.json kept unchanged" "$(diff <(echo "$configs_before") <(echo "$configs_after") || true)" -- \
    [ "$configs_before" = "$configs_after" ]
if no_failed_units; then pass "no failed unit after the remove"; else fail "failed units after the remove" "is-system-running: $system_state" "$failed_units"; fi

step "apt-get purge -y relay-proxy relay-agent relayctl"
rc=0
in_box timeout 600 apt-get purge -y relay-proxy relay-agent relayctl </dev/null >"$WORK/purge.log" 2>&1 || rc=$?
states=$(package_states)
if [ "$rc" -eq 0 ] && [[ $states =~ ^((un|none)\ [^ ]*\ ?){3}$ ]]; then pass "purged (dpkg: $states)"; else fail "apt-get purge (exit $rc): $states" "$(log_tail "$WORK/purge.log" 20)"; fi
noise=$(apt_noise "$WORK/purge.log")
[ -z "$noise" ] || note "apt-get also printed:" "$noise"
left=$(text sh -c 'for f in /etc/relay /run/relay; do [ ! -e $f ] || ls -lad $f $f/*; done')
check "/etc/relay and /run/relay gone" "$left" -- [ -z "$left" ]
if no_failed_units; then pass "no failed unit after the purge"; else fail "failed units after the purge" "is-system-running: $system_state" "$failed_units"; fi

step "after the purge: the file list is the snapshot's but for what the docs name"
in_box rm -rf /srv/relay-debs /srv/relay-debs-upgrade </dev/null
snapshot >"$WORK/after.list"
compare "$WORK/before.list" "$WORK/after.list" >"$WORK/differences"
# Kept by Debian's policy on system users: the user and group relay. Adding them (and the
# test's member to the group) changed these files and their backups; nothing may be added,
# removed or changed anywhere else.
allowed='^modified	/etc/(passwd|group|shadow|gshadow)-?	'
unexpected=$(grep -Ev "$allowed" "$WORK/differences" || true)
changed=$(grep -E "$allowed" "$WORK/differences" | cut -f2 | tr '\n' ' ' || true)
check "nothing added, removed or changed but ${changed:-nothing} ($(wc -l <"$WORK/after.list") entries)" \
    "$(cut -f1-3 <<<"$unexpected")" -- [ -z "$unexpected" ]
problems=()
lines=""
for file in passwd group shadow gshadow; do
    while IFS= read -r line; do
        case $line in
        "> relay:"*) lines="$lines${lines:+$'\n'}/etc/$file: ${line#> }" ;;
        [\<\>]*) problems+=("/etc/$file: $line") ;;
        esac
    done < <(diff "$WORK/etc/$file" "$R/etc/$file" || true)
done
if [ ${#problems[@]} -eq 0 ]; then
    pass "the user and group relay stay (Debian policy), no other account changed"
    note "$lines"
else
    fail "accounts changed beyond relay" "${problems[@]}"
fi

echo "package-test: $(since "$started_at") s in all"
for figure in "${figures[@]}"; do echo "figure: $figure"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
