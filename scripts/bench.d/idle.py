#!/usr/bin/env python3
"""Opens idle TCP sessions for scripts/bench and holds them.

  idle.py PORT COUNT TARGET_PORT [--batch B] [--stall SECONDS] [--budget SECONDS]

Opens COUNT connections to 127.0.0.1:PORT that send nothing, B at a time: after each batch
it waits until the server behind the system (listening on 127.0.0.1:TARGET_PORT) holds as
many more established connections as were opened, so that a slow hop is never flooded past
its accept backlog (a client's connect completes in the kernel whether or not the hop
accepted it). Then it prints "open COUNT" and holds them until it is terminated (SIGTERM,
SIGINT), when the kernel closes them all.

When the server's count stops growing for --stall seconds (default 20), or once --budget
seconds (default 150) have passed (it opens no new batch then), it prints
"partial N of COUNT: REASON" (N: the sessions that reached the server) and holds what it
has. A failed connect prints "failed: REASON" and exits 1.
"""
import argparse
import errno
import signal
import socket
import sys
import time


def established(port):
    """Established TCP connections whose local port is `port` (the server's side)."""
    suffix = f":{port:04X}"
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split(None, 4)
            if fields[3] == "01" and fields[1].endswith(suffix):
                count += 1
    return count


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("target_port", type=int)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--stall", type=float, default=20.0)
    parser.add_argument("--budget", type=float, default=150.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget

    base = established(args.target_port)
    held = []
    reached = 0
    while len(held) < args.count:
        if time.monotonic() > deadline:
            print(f"partial {reached} of {args.count}: no more after {args.budget:.0f} s", flush=True)
            hold()
        for _ in range(min(args.batch, args.count - len(held))):
            s = socket.socket()
            try:
                s.connect(("127.0.0.1", args.port))
            except OSError as error:
                print(f"failed: connect: {errno.errorcode.get(error.errno, error)}", flush=True)
                return 1
            held.append(s)
        progress_at = time.monotonic()
        while reached < len(held):
            now = established(args.target_port) - base
            if now > reached:
                reached, progress_at = now, time.monotonic()
            elif time.monotonic() - progress_at > args.stall:
                print(f"partial {reached} of {args.count}: no more reached the server for {args.stall:.0f} s", flush=True)
                hold()
            else:
                time.sleep(0.05)
    print(f"open {len(held)}", flush=True)
    hold()


def hold():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
