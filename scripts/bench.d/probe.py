#!/usr/bin/env python3
"""Small probes for scripts/bench, read from /proc (Linux only).

  probe.py ports N        N distinct free TCP ports on 127.0.0.1, one a line (all bound at
                          once to port 0, then released)
  probe.py rss PID...     resident memory (VmRSS) of each PID and all its descendants, in KiB
  probe.py cpu PID...     CPU time (utime + stime) of each PID and all its descendants, in s

rss and cpu print one figure per PID argument (a PID argument may be a comma-separated
list, whose figures are added), each on its own line.
"""
import os
import socket
import sys


def free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def children_map():
    """parent pid -> [child pids], for every process now alive."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields follow the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def tree(pid, children):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv):
    if len(argv) >= 2 and argv[0] == "ports":
        print("\n".join(str(p) for p in free_ports(int(argv[1]))))
        return 0
    if argv and argv[0] in ("rss", "cpu"):
        measure = rss_kib if argv[0] == "rss" else cpu_seconds
        children = children_map()
        for group in argv[1:]:
            pids = [int(p) for p in group.split(",") if p]
            total = sum(measure(p) for pid in pids for p in tree(pid, children))
            print(total if argv[0] == "rss" else f"{total:.2f}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
