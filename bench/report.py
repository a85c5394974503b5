#!/usr/bin/env python3
"""Turn a bench/run.sh result directory into a markdown report (stdout).

Reads DIR/meta.txt (key=value lines), DIR/samples.tsv (one wrk run per line)
and DIR/idle.tsv (one idle-connections test per line). Every figure is the
median across rounds; req/s also shows the min-max spread, since the box is
shared and noisy.
"""

import csv
import math
import statistics
import sys
from pathlib import Path

MIB = 1024.0
LABELS = {
    "direct": "backends directly",
    "floor-epoll": "floor relay, epoll",
    "floor-uring": "floor relay, io_uring",
}


def read_tsv(path):
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


def read_meta(path):
    """meta.txt's key=value lines as a dict."""
    meta = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        meta[key] = value
    return meta


def split_config(config):
    """'nginx:2' -> ('nginx', '2'); 'direct' -> ('direct', '-')."""
    name, _, threads = config.partition(":")
    return name, threads or "-"


def valid(sample):
    """A run counts when wrk ran (req/s > 0) and the proxy was alive at its end (errors >= 0)."""
    try:
        return float(sample["rps"]) > 0 and int(sample["errors"]) >= 0
    except ValueError:
        return False


def num(sample, key):
    """A float column of a sample; None when it is missing (older samples.tsv) or nan."""
    try:
        v = float(sample.get(key) or "nan")
    except ValueError:
        return None
    return None if math.isnan(v) else v


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    return "n/a" if v is None else f"{v:,.{digits}f}"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def main():
    out = Path(sys.argv[1])
    meta = read_meta(out / "meta.txt")
    samples = read_tsv(out / "samples.tsv")
    idle = read_tsv(out / "idle.tsv")

    configs = []
    for s in samples:
        if s["config"] not in configs:
            configs.append(s["config"])
    order = {"direct": 0, "liege": 1, "liege-base": 1.5, "nginx": 2, "haproxy": 3, "floor-epoll": 4,
             "floor-uring": 5}
    configs.sort(key=lambda c: (split_config(c)[1], order.get(split_config(c)[0], 9)))

    med = {}
    p = print
    p(f"# liege router benchmark, {meta.get('date', '?')}")
    p()
    p(f"- liege commit `{meta.get('commit', '?')}`; nginx {meta.get('nginx', '?')}; "
      f"HAProxy {meta.get('haproxy', '?')}")
    p(f"- {meta.get('cpu', '?')} CPUs, Linux {meta.get('kernel', '?')}")
    p(f"- load: `{meta.get('wrk', '?')}` on 127.0.0.1, {meta.get('rounds', '?')} interleaved rounds "
      f"(warm-up {meta.get('warmup', '?')} per configuration)")
    p(f"- pinning: {meta.get('pinning', '?')}")
    busy = [int(s["busy_before_pct"]) for s in samples if s.get("busy_before_pct", "").isdigit()]
    busy_text = (f"; in the second before each run: median {statistics.median(busy):.0f}%, "
                 f"max {max(busy)}%" if busy else "")
    p(f"- CPUs busy with other work (tenants, builds) before the load: "
      f"{meta.get('busy_before', '?')}%{busy_text}; load average after: "
      f"{meta.get('loadavg_after', '?')}")
    if meta.get("unfinished"):
        p(f"- **not measured (did not serve): {meta['unfinished']}**")
    if meta.get("restarts"):
        p(f"- **exited during the run and were restarted: {meta['restarts']}** "
          "(see the run's log for the exit status)")
    p()
    p("## Throughput and latency (median across rounds)")
    p()
    p("| target | threads | req/s | req/s min-max | p50 ms | p99 ms | RSS after load MiB | "
      "proxy CPU µs/req | errors |")
    p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    invalid_total = 0
    for c in configs:
        rows = [s for s in samples if s["config"] == c]
        good = [s for s in rows if valid(s)]
        invalid = len(rows) - len(good)
        invalid_total += invalid
        name, threads = split_config(c)
        label = LABELS.get(name, name)
        if not good:
            p(f"| {label} | {threads} | n/a | no valid run of {len(rows)} | | | | | |")
            continue
        rps = [float(s["rps"]) for s in good]
        m = {
            "rps": statistics.median(rps),
            "p50": statistics.median(float(s["p50_ms"]) for s in good),
            "p99": statistics.median(float(s["p99_ms"]) for s in good),
            "rss": statistics.median(float(s["rss_kib"]) for s in good) / MIB,
            "cpu": median_or_none(num(s, "cpu_us_per_req") for s in good),
            "errors": sum(int(s["errors"]) for s in good),
        }
        med[c] = m
        runs = f" ({len(good)} of {len(rows)} runs)" if invalid else ""
        p(f"| {label} | {threads} | {fmt(m['rps'])}{runs} | {fmt(min(rps))}-{fmt(max(rps))} | "
          f"{m['p50']:.2f} | {m['p99']:.2f} | {m['rss']:.1f} | {fmt(m['cpu'], 1)} | {m['errors']} |")
    p()
    p("RSS is VmRSS sampled right after each run (nginx: its worker processes summed; "
      "the backends' row is the backend nginx worker). Errors are wrk's non-2xx responses "
      "plus socket errors, summed over all rounds. Proxy CPU is the user+system CPU time "
      "of the same processes (utime+stime from /proc/PID/stat, all threads) from just before "
      "to just after wrk, divided by the requests wrk completed; it is much less sensitive "
      "than req/s to where the scheduler puts the unpinned backend.")
    if invalid_total:
        p()
        p(f"{invalid_total} run(s) were left out: wrk could not run, or the proxy was not "
          "running at the end of the run.")

    threads_seen = sorted({split_config(c)[1] for c in configs if c != "direct"}, key=int)
    if any(f"liege:{t}" in med for t in threads_seen):
        p()
        p("## liege against nginx and HAProxy")
        p()
        p("| threads | liege/nginx req/s | liege/HAProxy req/s | liege p99 / better p99 of the two | "
          "nginx CPU/req ÷ liege CPU/req | HAProxy CPU/req ÷ liege CPU/req |")
        p("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for t in threads_seen:
            lg = med.get(f"liege:{t}")
            ng = med.get(f"nginx:{t}")
            hp = med.get(f"haproxy:{t}")
            if lg is None:
                continue
            others = [x["p99"] for x in (ng, hp) if x is not None]
            best = min(others) if others else None
            p(f"| {t} | {fmt(ratio(lg['rps'], ng and ng['rps']), 2)} | "
              f"{fmt(ratio(lg['rps'], hp and hp['rps']), 2)} | {fmt(ratio(lg['p99'], best), 2)} | "
              f"{fmt(ratio(ng and ng['cpu'], lg['cpu']), 2)} | "
              f"{fmt(ratio(hp and hp['cpu'], lg['cpu']), 2)} |")
        p()
        p("Targets (issue 2): req/s ratios >= 1.30; p99 ratio <= 1.00. "
          "A CPU ratio above 1 means liege spends less CPU per request.")

    if any(f"liege-base:{t}" in med for t in threads_seen):
        p()
        p("## liege against its baseline (BASELINE=)")
        p()
        p("| threads | req/s ratio | p99 ratio | CPU µs/req liege | CPU µs/req baseline | "
          "baseline CPU/req ÷ liege CPU/req |")
        p("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for t in threads_seen:
            lg = med.get(f"liege:{t}")
            bs = med.get(f"liege-base:{t}")
            if lg is None or bs is None:
                continue
            p(f"| {t} | {fmt(ratio(lg['rps'], bs['rps']), 3)} | {fmt(ratio(lg['p99'], bs['p99']), 3)} | "
              f"{fmt(lg['cpu'], 1)} | {fmt(bs['cpu'], 1)} | {fmt(ratio(bs['cpu'], lg['cpu']), 3)} |")
        p()
        p("A CPU ratio above 1 means this build spends less CPU per request than the baseline.")

    floor_threads = [t for t in threads_seen if f"liege:{t}" in med and
                     any(f"floor-{m}:{t}" in med for m in ("epoll", "uring"))]
    if floor_threads:
        p()
        p("## The floor: what no proxy can go below")
        p()
        p("The floor relays (`bench/floor_relay.cpp`) are not proxies: each client connection gets "
          "its own backend connection and bytes are copied both ways with no HTTP parsing at all. "
          "They make the same four socket calls per request as a proxy, so their CPU per request "
          "is the kernel's share of any proxy's that makes those calls; the io_uring one makes "
          "the fewest syscalls the kernel offers for them.")
        p()
        p("| relay | threads | req/s | CPU µs/req | liege req/s ÷ relay | relay CPU/req ÷ liege | "
          "relay req/s ÷ nginx | relay req/s ÷ HAProxy |")
        p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for t in floor_threads:
            lg = med[f"liege:{t}"]
            ng = med.get(f"nginx:{t}")
            hp = med.get(f"haproxy:{t}")
            for m in ("epoll", "uring"):
                fl = med.get(f"floor-{m}:{t}")
                if fl is None:
                    continue
                p(f"| {LABELS['floor-' + m]} | {t} | {fmt(fl['rps'])} | {fmt(fl['cpu'], 1)} | "
                  f"{fmt(ratio(lg['rps'], fl['rps']), 2)} | {fmt(ratio(fl['cpu'], lg['cpu']), 2)} | "
                  f"{fmt(ratio(fl['rps'], ng and ng['rps']), 2)} | "
                  f"{fmt(ratio(fl['rps'], hp and hp['rps']), 2)} |")
        p()
        p("The last two columns bound what any proxy making these four calls per request can "
          "reach against nginx and HAProxy on this box with these backends.")

    if idle:
        p()
        p(f"## {int(idle[0]['conns']):,} idle keep-alive client connections")
        p()
        p("| proxy | threads | held | pending | failed | closed by proxy | RSS before MiB | "
          "RSS holding them MiB |")
        p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in sorted(idle, key=lambda r: (split_config(r["config"])[1],
                                                order.get(split_config(r["config"])[0], 9))):
            name, threads = split_config(row["config"])
            p(f"| {name} | {threads} | {int(row['held'] or 0):,} | {row['pending']} | {row['failed']} | "
              f"{row['closed_by_peer']} | {float(row['rss_before_kib']) / MIB:.1f} | "
              f"{float(row['rss_held_kib']) / MIB:.1f} |")
        p()
        p("Each connection sent one request, got its response, and stayed open; RSS was sampled "
          "with all of them open. Every proxy runs with a 20,000 fd limit; HAProxy reserves two "
          "fds per client connection, so it accepts at most ~9,993 and the rest stay pending. "
          "Target (issue 2): liege under 40 MiB.")


if __name__ == "__main__":
    main()
