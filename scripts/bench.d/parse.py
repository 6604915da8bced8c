#!/usr/bin/env python3
"""Reads the output of one measurement for scripts/bench.

  parse.py iperf FILE   iperf3 -J output -> "GBITS BYTES" (received, Gbit/s and bytes)
  parse.py wrk FILE     wrk --latency output -> "REQS P50_MS P99_MS ERRORS"

A failed measurement prints "n/a: REASON" instead (and exits 0, so the bench goes on).
"""
import json
import re
import sys

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def last_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:160] if lines else "no output"


def iperf(text):
    try:
        report = json.loads(text)
    except ValueError:
        return f"n/a: iperf3: {last_line(text)}"
    if report.get("error"):
        return f"n/a: iperf3: {report['error']}"
    received = report.get("end", {}).get("sum_received")
    if not received or not received.get("bytes"):
        return "n/a: iperf3 reported no bytes received"
    return f"{received['bits_per_second'] / 1e9:.3f} {received['bytes']}"


def wrk(text):
    reqs = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    p50 = re.search(r"^\s+50%\s+([0-9.]+)(us|ms|s|m|h)\s*$", text, re.M)
    p99 = re.search(r"^\s+99%\s+([0-9.]+)(us|ms|s|m|h)\s*$", text, re.M)
    if not (reqs and p50 and p99):
        return f"n/a: wrk: {last_line(text)}"
    errors = 0
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    ms50 = float(p50.group(1)) * UNITS_MS[p50.group(2)]
    ms99 = float(p99.group(1)) * UNITS_MS[p99.group(2)]
    return f"{float(reqs.group(1)):.1f} {ms50:.4f} {ms99:.4f} {errors}"


def main(argv):
    if len(argv) != 2 or argv[0] not in ("iperf", "wrk"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        with open(argv[1], errors="replace") as f:
            text = f.read()
    except OSError as error:
        print(f"n/a: {error.strerror}")
        return 0
    print(iperf(text) if argv[0] == "iperf" else wrk(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
