#!/usr/bin/env python3
"""Time to first byte of a new session, for scripts/bench.

  ttfb.py --rounds N [--warmup W] NAME=PORT...

Each sample is one new TCP connection to 127.0.0.1:PORT: connect, send one HTTP request
line with its headers ("Connection: close"), and read the first byte of the answer; the time
is taken from before connect() to the first byte. One client, one connection at a time; the
rounds are interleaved (round 1 of every NAME, then round 2, ...) so that each system sees the
same machine. The rest of the answer is read to its end before the connection is closed,
outside the timing, so that no session ends with a reset. W warm-up rounds are not counted.

Prints one line per NAME: "NAME P50_MS P90_MS", or "NAME n/a: REASON".
"""
import argparse
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
TIMEOUT = 10.0


def sample(port):
    start = time.perf_counter_ns()
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(REQUEST)
        if not s.recv(1):
            raise OSError("closed before the first byte")
        elapsed = time.perf_counter_ns() - start
        while s.recv(65536):
            pass
    finally:
        s.close()
    return elapsed / 1e6


def percentile(values, fraction):
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("targets", nargs="+", metavar="NAME=PORT")
    args = parser.parse_args()
    targets = [(t.split("=", 1)[0], int(t.split("=", 1)[1])) for t in args.targets]
    samples = {name: [] for name, _ in targets}
    failed = {}
    for round_number in range(args.warmup + args.rounds):
        for name, port in targets:
            if name in failed:
                continue
            try:
                ms = sample(port)
            except OSError as error:
                failed[name] = f"{type(error).__name__}: {error}"
                continue
            if round_number >= args.warmup:
                samples[name].append(ms)
    for name, _ in targets:
        if name in failed:
            print(f"{name} n/a: {failed[name]}")
        else:
            values = samples[name]
            print(f"{name} {percentile(values, 0.5):.4f} {percentile(values, 0.9):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
