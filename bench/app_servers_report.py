#!/usr/bin/env python3
"""Turn a bench/app_servers.sh result directory into a markdown report (stdout).

Reads DIR/meta.txt (key=value lines) and DIR/samples.tsv (one row per server and round: the
throughput run, the rewrites, the broken file, the drop). Figures are medians across rounds;
failed requests are summed over all rounds.
"""

import statistics
import sys
from pathlib import Path

from report import MIB, fmt, median_or_none, num, ratio, read_meta, read_tsv

LABELS = {"liege": "liege", "uwsgi": "uWSGI"}
TARGET_RATIO = 1.2    # liege's req/s over uWSGI's
TARGET_RELEASE = 0.3  # seconds from a rewrite to the new release answering


def floats(text):
    """'0.12,nan,0.3' -> [0.12, None, 0.3]."""
    out = []
    for x in (text or "").split(","):
        try:
            v = float(x)
        except ValueError:
            v = None
        out.append(None if v is None or v != v else v)
    return out


def count(sample, key):
    """A request count; None when wrk did not run (-1, nan or missing)."""
    v = num(sample, key)
    return None if v is None or v < 0 else int(v)


def total(rows, key):
    values = [count(s, key) for s in rows]
    return None if not values or None in values else sum(values)


def failed_of(rows, failed, requests):
    """'49 (12,731)': failed requests, and in brackets the responses wrk got meanwhile (a socket
    error is not a response, so the first can exceed the second)."""
    f, n = total(rows, failed), total(rows, requests)
    return "n/a" if f is None else f"{f:,} ({fmt(n)})"


def figures(rows):
    lat = [v for s in rows for v in floats(s["reload_s"])]
    seen = [v for v in lat if v is not None]
    return {
        "rounds": len(rows),
        "rps": median_or_none(num(s, "rps") for s in rows),
        "p50": median_or_none(num(s, "p50_ms") for s in rows),
        "p99": median_or_none(num(s, "p99_ms") for s in rows),
        "errors": total(rows, "errors"),
        "cpu": median_or_none(num(s, "cpu_us_per_req") for s in rows),
        "rss": median_or_none(num(s, "rss_kib") for s in rows),
        "app_rss": median_or_none(num(s, "app_master_rss_kib") for s in rows),
        "reload_failed": total(rows, "reload_failed"),
        "reloads": len(lat),
        "reloads_never": len(lat) - len(seen),
        "reload_med": statistics.median(seen) if seen else None,
        "reload_max": max(seen) if seen else None,
        "ready_ms": median_or_none(v for s in rows for v in floats(s.get("worker_ready_ms"))),
        "broken_failed": total(rows, "broken_failed"),
        "restore": median_or_none(num(s, "restore_s") for s in rows),
        "drop": median_or_none(num(s, "drop_s") for s in rows),
    }


def mib(kib):
    return None if kib is None else kib / MIB


def yes_no(ok):
    return "n/a" if ok is None else ("**yes**" if ok else "**no**")


def main():
    out = Path(sys.argv[1])
    meta = read_meta(out / "meta.txt")
    samples = read_tsv(out / "samples.tsv")
    servers = [s for s in ("liege", "uwsgi") if any(x["server"] == s for x in samples)]
    fig = {s: figures([x for x in samples if x["server"] == s]) for s in servers}
    lg, uw = fig.get("liege"), fig.get("uwsgi")

    p = print
    conc = meta.get("liege_concurrency", "?")
    conc_text = ("**without the `concurrency` key** (this build did not have it)" if conc == "0"
                 else f"`concurrency = {conc}`")
    p(f"# liege against uWSGI's Emperor, {meta.get('date', '?')}")
    p()
    p(f"- liege commit `{meta.get('commit', '?')}`; uWSGI {meta.get('uwsgi', '?')}")
    p(f"- liege: `liege run --threads {meta.get('liege_threads', '?')}`, one vassal of "
      f"`workers = 2` uWSGI processes (`--http11-socket`, no master), {conc_text}, "
      "`[health] path = \"/\"`")
    keepalive = "with `--http-keepalive`" if meta.get("uwsgi_keepalive") == "1" else \
        "without `--http-keepalive`"
    p(f"- uWSGI: `uwsgi --master --http ... --http-subscription-server ... --emperor DIR` "
      f"({keepalive}), one vassal ini of `processes = 2` under a master, `socket`, `subscribe-to`")
    p(f"- {meta.get('cpu', '?')} CPUs, Linux {meta.get('kernel', '?')}")
    p(f"- load: `{meta.get('wrk', '?')}` on 127.0.0.1, {meta.get('rounds', '?')} interleaved "
      f"rounds; {meta.get('reloads', '?')} rewrites and {meta.get('broken_seconds', '?')} s of a "
      "broken file per round, under the same wrk load")
    p(f"- pinning: {meta.get('pinning', '?')}")
    busy = [int(s["busy_before_pct"]) for s in samples if s.get("busy_before_pct", "").isdigit()]
    busy_text = (f"; in the second before each round: median {statistics.median(busy):.0f}%, "
                 f"max {max(busy)}%" if busy else "")
    p(f"- CPUs busy with other work before the load: {meta.get('busy_before', '?')}%{busy_text}; "
      f"load average after: {meta.get('loadavg_after', '?')}")
    p()
    if not lg or not uw:
        p("Only one server ran; no comparison.")
        return

    def row(name, key, digits=0, ratio_ok=None, target="", met=None, scale=None):
        a, b = lg[key], uw[key]
        if scale:
            a, b = scale(a), scale(b)
        r = ratio(a, b)
        ok = None if ratio_ok is None or r is None else ratio_ok(r)
        if met is not None:
            ok = met
        p(f"| {name} | {fmt(a, digits)} | {fmt(b, digits)} | {fmt(r, 2)} | {target} | "
          f"{yes_no(ok) if target else ''} |")

    def latency(f):
        never = f" ({f['reloads_never']} never)" if f["reloads_never"] else ""
        return f"{fmt(f['reload_med'], 3)} (max {fmt(f['reload_max'], 3)}){never}"

    p(f"## Side by side (medians of {lg['rounds']} rounds; failed requests summed over them)")
    p()
    p("| figure | liege | uWSGI | liege/uWSGI | target (issue 10) | met |")
    p("| --- | ---: | ---: | ---: | --- | --- |")
    row("req/s", "rps", 0, lambda r: r >= TARGET_RATIO, f">= {TARGET_RATIO}x uWSGI")
    row("p99 ms", "p99", 2, lambda r: r <= 1.0, "no worse than uWSGI")
    row("p50 ms", "p50", 2)
    row("errors in the throughput runs", "errors", 0, target="0",
        met=lg["errors"] == 0 if lg["errors"] is not None else None)
    row("emperor + router CPU µs/req", "cpu", 1)
    p(f"| failed requests over the rewrites | "
      f"{failed_of([x for x in samples if x['server'] == 'liege'], 'reload_failed', 'reload_requests')} | "
      f"{failed_of([x for x in samples if x['server'] == 'uwsgi'], 'reload_failed', 'reload_requests')} | "
      f"| 0 | {yes_no(None if lg['reload_failed'] is None else lg['reload_failed'] == 0)} |")
    release_ok = (None if lg["reload_max"] is None else
                  lg["reload_max"] <= TARGET_RELEASE and lg["reloads_never"] == 0)
    p(f"| rewrite → new release answers, s (median of {lg['reloads']}) | {latency(lg)} | "
      f"{latency(uw)} | {fmt(ratio(lg['reload_med'], uw['reload_med']), 2)} | "
      f"<= {TARGET_RELEASE} s, every rewrite | {yes_no(release_ok)} |")
    p(f"| of which liege's first new worker, spawn → ready, ms (median, from its log) | "
      f"{fmt(lg['ready_ms'])} | | | | |")
    p(f"| failed requests while the file is broken | "
      f"{failed_of([x for x in samples if x['server'] == 'liege'], 'broken_failed', 'broken_requests')} | "
      f"{failed_of([x for x in samples if x['server'] == 'uwsgi'], 'broken_failed', 'broken_requests')} | "
      f"| 0 | {yes_no(None if lg['broken_failed'] is None else lg['broken_failed'] == 0)} |")
    row("valid file back → its release answers, s", "restore", 3)
    row("new vassal file → it answers, s", "drop", 3)
    row("RSS of emperor + router, MiB", "rss", 1, scale=mib)
    p(f"| not counted: uWSGI's vassal master, MiB | - | {fmt(mib(uw['app_rss']), 1)} | | | |")
    p()
    p("Failed requests are wrk's non-2xx responses plus its socket errors (connect, read, write, "
      "timeout); in brackets, the responses wrk got in the same time (a socket error is not one). "
      "CPU is utime+stime of the emperor's and the router's processes over the "
      "throughput run, divided by the requests wrk completed; RSS is their summed VmRSS right "
      "after it. liege: `liege run` and its `liege router`; uWSGI: the master, its Emperor and "
      "its HTTP router. The app processes are not counted: liege's 2 uWSGI workers, uWSGI's "
      "vassal master and its 2 workers. Times are from the file's rename until a poll every "
      "20 ms gets the new release's body.")
    p()
    p("## Every round")
    p()
    p("| round | server | req/s | p99 ms | errors | CPU µs/req | RSS MiB | rewrites: failed (responses) "
      "| rewrite → release, s | worker ready ms | broken file: failed (responses) | restore s | drop s | busy % |")
    p("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for s in samples:
        lat = ", ".join(fmt(v, 3) for v in floats(s["reload_s"]))
        p(f"| {s['round']} | {LABELS.get(s['server'], s['server'])} | {fmt(num(s, 'rps'))} | "
          f"{fmt(num(s, 'p99_ms'), 2)} | {fmt(count(s, 'errors'))} | "
          f"{fmt(num(s, 'cpu_us_per_req'), 1)} | {fmt(mib(num(s, 'rss_kib')), 1)} | "
          f"{failed_of([s], 'reload_failed', 'reload_requests')} | {lat} | "
          f"{', '.join(fmt(v) for v in floats(s.get('worker_ready_ms')))} | "
          f"{failed_of([s], 'broken_failed', 'broken_requests')} | {fmt(num(s, 'restore_s'), 3)} | "
          f"{fmt(num(s, 'drop_s'), 3)} | {s['busy_before_pct']} |")


if __name__ == "__main__":
    main()
