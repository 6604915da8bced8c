#!/usr/bin/env python3
"""Turns the raw figures of scripts/bench into one table.

  report.py RESULTS META [--out FILE]

RESULTS has one line per figure: "RUN<TAB>SYSTEM<TAB>METRIC<TAB>VALUE", VALUE a number or
"n/a: REASON". META has "KEY=VALUE" lines (date, machine, settings). The report is printed in
markdown; with --out it also replaces the part of FILE between the lines
"<!-- bench:begin -->" and "<!-- bench:end -->" (FILE is created, or the part appended,
when they are missing), leaving the rest of FILE as it is.
"""
import argparse
import statistics
import sys

SYSTEMS = [
    ("direct", "direct"),
    ("relay", "relay"),
    ("relay-tls", "relay, TLS"),
    ("socket-proxyd", "socket-proxyd ×2"),
    ("haproxy", "HAProxy ×2"),
    ("ssh", "ssh -R"),
]
PEERS = ["socket-proxyd", "haproxy", "ssh"]
RELAYS = ["relay", "relay-tls"]
SHORT = {"socket-proxyd": "socket-proxyd", "haproxy": "HAProxy", "ssh": "ssh -R"}

# key, label, unit, higher is better, decimals
PERF = [
    ("tput1", "iperf3, 1 stream (Gbit/s)", True, 2),
    ("tput8", "iperf3, 8 streams (Gbit/s)", True, 2),
    ("ka_rps", "keep-alive requests/s", True, 0),
    ("ka_p50", "keep-alive p50 (ms)", False, 3),
    ("ka_p99", "keep-alive p99 (ms)", False, 3),
    ("cl_rps", "`Connection: close` requests/s", True, 0),
    ("cl_p50", "`Connection: close` p50 (ms)", False, 3),
    ("cl_p99", "`Connection: close` p99 (ms)", False, 3),
    ("ttfb_p50", "new session, first byte, median (ms)", False, 3),
    ("ttfb_p90", "new session, first byte, p90 (ms)", False, 3),
]
PERF_KEYS = {key for key, *_ in PERF}
RESOURCES = [
    ("cpu_gib", "CPU s per GiB moved", False, 2),
    ("rss_idle", "RSS idle (MiB)", False, 1),
    ("rss_sessions", "RSS with up to {sessions} idle sessions (MiB)", False, 1),
    ("per_session", "RSS per idle session (KiB)", False, 1),
    ("rss_bulk", "RSS after {bulk} GiB moved (MiB)", False, 1),
]
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def number(value):
    try:
        return float(value)
    except ValueError:
        return None


def load(results_path):
    """(system, metric) -> {run: value string}"""
    table = {}
    with open(results_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t", 3)
            if len(parts) == 4:
                run, system, metric, value = parts
                table.setdefault((system, metric), {})[int(run)] = value
    return table


def derive(table):
    """Adds per-run derived figures: KiB per idle session (total and per hop), then MiB from KiB."""
    for system in {s for s, _ in table}:
        base = table.get((system, "rss_base"), {})
        base_hops = table.get((system, "rss_base.hops"), {})
        loaded = table.get((system, "rss_sessions"), {})
        loaded_hops = table.get((system, "rss_sessions.hops"), {})
        count = table.get((system, "sessions"), {})
        per, per_hops = {}, {}
        for run, value in loaded.items():
            b, v, n = number(base.get(run, "x")), number(value), number(count.get(run, "x"))
            if None in (b, v, n) or n <= 0:
                per[run] = value if number(value) is None else "n/a: no baseline"
                continue
            per[run] = f"{(v - b) / n:.3f}"
            try:
                bh = [float(x) for x in base_hops[run].split("+")]
                vh = [float(x) for x in loaded_hops[run].split("+")]
                per_hops[run] = "+".join(f"{(y - x) / n:.3f}" for x, y in zip(bh, vh))
            except (KeyError, ValueError):
                pass
        if per:
            table[(system, "per_session")] = per
        if per_hops:
            table[(system, "per_session.hops")] = per_hops
    for (system, metric), runs in list(table.items()):
        if metric.split(".")[0] in ("rss_idle", "rss_sessions", "rss_bulk", "rss_base"):
            table[(system, metric)] = {r: mib(v) for r, v in runs.items()}


def mib(value):
    """KiB -> MiB, for a figure or an "a+b" breakdown; "n/a" strings pass."""
    if value.startswith("n/a"):
        return value
    return "+".join(f"{float(x) / 1024:.3f}" for x in value.split("+"))


class Cell:
    def __init__(self, runs):
        values = {r: number(v) for r, v in runs.items()}
        self.numbers = {r: v for r, v in values.items() if v is not None}
        self.failures = sorted({v for v in runs.values() if number(v) is None})
        self.median = statistics.median(self.numbers.values()) if self.numbers else None
        # The run that gives the median (the lower middle one for an even count), for its breakdown.
        self.median_run = None
        if self.numbers:
            low = statistics.median_low(self.numbers.values())
            self.median_run = min(r for r, v in self.numbers.items() if v == low)


def fmt(value, decimals):
    if decimals == 0:
        return f"{value:,.0f}"
    return f"{value:,.{decimals}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def build(table, meta):
    cells = {key: Cell(runs) for key, runs in table.items()}
    lines = []
    heads = [label for _, label in SYSTEMS] + ["relay ÷ best peer", "relay, TLS ÷ best peer"]
    lines.append("| metric | " + " | ".join(heads) + " |")
    lines.append("|---|" + "---|" * len(heads))
    notes = []
    names = dict(SYSTEMS)

    def best_peer(metric, higher):
        found = [(cells[(p, metric)].median, p) for p in PEERS if (p, metric) in cells and cells[(p, metric)].median is not None]
        if not found:
            return None, None
        return (max if higher else min)(found)

    for key, label, higher, decimals in PERF + RESOURCES:
        sessions = meta.get("sessions", "?")
        label = label.format(sessions=f"{int(sessions):,}" if sessions.isdigit() else sessions, bulk=meta.get("bulk_gib", "?"))
        row = [label]
        direct = cells.get(("direct", key))
        direct_value = direct.median if direct else None
        for system, _ in SYSTEMS:
            cell = cells.get((system, key))
            if cell is None:
                row.append("—")
                continue
            if cell.median is None:
                row.append(cell.failures[0] if cell.failures else "n/a")
                continue
            text = fmt(cell.median, decimals)
            if key in PERF_KEYS:
                r = ratio(cell.median, direct_value)
                if r is not None and system != "direct":
                    text += f" ({r:.2f})"
            hops = cells.get((system, key + ".hops"))
            if hops is not None and cell.median_run in table[(system, key + ".hops")]:
                parts = table[(system, key + ".hops")][cell.median_run].split("+")
                if len(parts) == 2 and all(number(p) is not None for p in parts):
                    text += " (" + " + ".join(fmt(float(p), decimals) for p in parts) + ")"
            count = cells.get((system, "sessions"))
            if key in ("rss_sessions", "per_session") and count and count.median is not None:
                if str(int(count.median)) != meta.get("sessions"):
                    text += f" at {int(count.median):,}"
            row.append(text)
            if cell.failures:
                notes.append(f"{names[system]}, {label}: {len(cell.failures)} of {len(table[(system, key)])} runs failed: {cell.failures[0]}")
        peer_value, peer = best_peer(key, higher)
        for relay in RELAYS:
            cell = cells.get((relay, key))
            r = ratio(cell.median if cell else None, peer_value)
            row.append(f"{r:.2f} ({SHORT[peer]})" if r is not None else "—")
        lines.append("| " + " | ".join(row) + " |")

    for (system, metric), runs in sorted(table.items()):
        if metric == "sessions_note":
            for run, text in sorted(runs.items()):
                notes.append(f"{names.get(system, system)}, idle sessions, run {run}: {text}")
        if metric.endswith("_errors"):
            bad = {r: int(float(v)) for r, v in runs.items() if number(v) and float(v) > 0}
            if bad:
                what = "keep-alive" if metric.startswith("ka") else "`Connection: close`"
                notes.append(
                    f"{names.get(system, system)}, wrk {what}: socket errors or non-2xx answers in run(s) "
                    + ", ".join(f"{r} ({n:,})" for r, n in sorted(bad.items()))
                )
    return lines, notes, cells


def targets(cells):
    """Issue 9's targets for relay plaintext and issue 10's for TLS, each met or missed, in this run's figures."""
    def m(system, key):
        cell = cells.get((system, key))
        return cell.median if cell else None

    out = []

    def check(text, ok):
        if ok is None:
            out.append(f"- {text}: not measured")
        else:
            out.append(f"- {text}: {'met' if ok else 'missed'}")

    for key, name in (("tput1", "one stream"), ("tput8", "eight streams")):
        r, d, s = m("relay", key), m("direct", key), m("socket-proxyd", key)
        check(f"throughput, {name}: ≥ 0.6× direct ({_x(r, d)}) and ≥ 1.3× socket-proxyd ×2 ({_x(r, s)})",
              None if None in (r, d, s) else (r >= 0.6 * d and r >= 1.3 * s))
    r, h = m("relay", "cl_rps"), m("haproxy", "cl_rps")
    rp, hp = m("relay", "cl_p99"), m("haproxy", "cl_p99")
    check(f"new sessions/s ≥ HAProxy ×2 ({_x(r, h)}), p99 no worse ({_ms(rp)} vs {_ms(hp)})",
          None if None in (r, h, rp, hp) else (r >= h and rp <= hp))
    r, h = m("relay", "ka_rps"), m("haproxy", "ka_rps")
    rp, hp = m("relay", "ka_p99"), m("haproxy", "ka_p99")
    check(f"keep-alive requests/s ≥ 1.2× HAProxy ×2 ({_x(r, h)}), p99 no worse ({_ms(rp)} vs {_ms(hp)})",
          None if None in (r, h, rp, hp) else (r >= 1.2 * h and rp <= hp))
    # Issue 10's targets for relay with TLS on the agent port.
    for key, name in (("tput1", "one stream"), ("tput8", "eight streams")):
        t, s = m("relay-tls", key), m("ssh", key)
        check(f"TLS throughput, {name}: ≥ 1.5× ssh -R aes128-gcm ({_x(t, s)})", None if None in (t, s) else t >= 1.5 * s)
    t, r = m("relay-tls", "cl_rps"), m("relay", "cl_rps")
    check(f"TLS new sessions/s ≥ 0.5× plaintext relay ({_x(t, r)})", None if None in (t, r) else t >= 0.5 * r)
    return out


def _x(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "?"


def _ms(a):
    return f"{a:.2f} ms" if a is not None else "?"


def breakdown(table, cells, system, key):
    """The two hops' figures of the run that gives the median of `key`, or None."""
    cell = cells.get((system, key))
    if not cell or cell.median_run is None:
        return None
    try:
        parts = [float(x) for x in table[(system, key + ".hops")][cell.median_run].split("+")]
    except (KeyError, ValueError):
        return None
    return parts if len(parts) == 2 else None


def memory_targets(table, cells):
    out = []
    for key, limit, what, unit in (
        ("per_session", 16, "RSS per idle session ≤ 16 KiB", "KiB"),
        ("rss_idle", 20, "each daemon idle < 20 MiB", "MiB"),
        ("rss_bulk", 40, "each daemon < 40 MiB after the bulk transfer", "MiB"),
    ):
        parts = breakdown(table, cells, "relay", key)
        if parts is None:
            out.append(f"- {what}: not measured")
            continue
        ok = max(parts) <= limit if key == "per_session" else max(parts) < limit
        out.append(f"- {what}: relay-proxy {parts[0]:.1f} {unit}, relay-agent {parts[1]:.1f} {unit}: {'met' if ok else 'missed'}")
    return out


def render(table, meta):
    derive(table)
    lines, notes, cells = build(table, meta)
    g = meta.get
    out = [
        f"## {'Quick run' if g('mode') == 'quick' else 'Run'} of {g('date', '?')}",
        "",
        f"`scripts/bench{' --quick' if g('mode') == 'quick' else ''} --runs {g('runs', '?')}`, "
        f"relay {g('commit', '?')}; {g('nproc', '?')} cores ({g('cpu', '?')}), {g('memory', '?')} memory, "
        f"Linux {g('kernel', '?')}, {g('swift', '?')}. Load average before: {g('load_before', '?')}; "
        f"after: {g('load_after', '?')}. The run took {g('elapsed', '?')}.",
        "",
        "Median of the runs; in parentheses: for rates and times the ratio to direct in the same run, "
        "for CPU and memory the two hops (relay-proxy + relay-agent, first hop + second hop). "
        "The last two columns divide relay's figure by the best peer's (the best of socket-proxyd, "
        "HAProxy and ssh -R for that row; a ratio above 1 is better for rates, worse for times, CPU and memory).",
        "",
    ]
    out += lines
    out += [""]
    out.append("Issue 9's targets for relay (plaintext) and issue 10's for TLS, from this table:")
    out.append("")
    out += targets(cells)
    out += memory_targets(table, cells)
    out.append("")
    settings = (
        f"Settings: iperf3 {g('iperf_seconds', '?')} s per test (client to server), wrk {g('wrk_seconds', '?')} s "
        f"with -c16 -t2, {g('ttfb_rounds', '?')} first-byte rounds per run, {g('bulk_gib', '?')} GiB bulk "
        f"transfer for CPU and RSS, up to {g('sessions', '?')} idle sessions (open-file limit {g('fd_limit', '?')}). "
        f"HTTP target: {g('http_target', '?')}. Tools: {g('tools', '?')}."
    )
    out.append(settings)
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def write(path, section):
    block = f"{BEGIN}\n{section}{END}\n"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Performance\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + block + (("\n" + tail) if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(path, "w") as f:
        f.write(text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("meta")
    parser.add_argument("--out")
    args = parser.parse_args()
    meta = {}
    with open(args.meta) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    section = render(load(args.results), meta)
    print(section, end="")
    if args.out:
        write(args.out, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
