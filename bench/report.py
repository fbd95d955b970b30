"""Turns results.json into RESULTS.md and a chart of the ratios
dctunnel ÷ peer. Can be run alone: `python3 report.py DIR` rewrites DIR's
RESULTS.md and results.png from DIR/results.json."""

import json
import sys
from pathlib import Path

PEER_ORDER = ["dctunnel", "dctunnel-warm", "stunnel", "haproxy", "haproxy-plain", "direct"]
# A row of the WAN workload only (dctunnel with warm connections): shown in
# the tables, compared in its own section, not a peer dctunnel is divided by.
WARM = "dctunnel-warm"


def fmt(x):
    if x is None:
        return "–"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def ratios(metric):
    med = metric.get("median", {})
    mine = med.get("dctunnel")
    out = {}
    for peer, v in med.items():
        if peer not in ("dctunnel", WARM) and mine is not None and v:
            out[peer] = mine / v
    return out


def peers_of(results):
    present = set()
    for m in results["metrics"].values():
        present |= set(m.get("median", {}))
    present |= set(results["meta"].get("peers", {}))
    return [p for p in PEER_ORDER if p in present]


def chart(results, path):
    """Writes the ratio chart; returns its path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("report: matplotlib missing, no chart", file=sys.stderr)
        return None
    others = [p for p in peers_of(results) if p not in ("dctunnel", WARM)]
    colours = {"stunnel": "#d62728", "haproxy": "#1f77b4", "haproxy-plain": "#9ecae1",
               "direct": "#7f7f7f"}
    groups = []
    for better, title in (
        ("higher", "higher is better: dctunnel ÷ peer > 1 means dctunnel is ahead"),
        ("lower", "lower is better: dctunnel ÷ peer < 1 means dctunnel is ahead"),
    ):
        rows = [(m["label"], ratios(m)) for m in results["metrics"].values()
                if m["better"] == better and ratios(m)]
        if rows:
            groups.append((title, rows))
    if not groups:
        return None
    heights = [max(2.0, 0.55 * len(rows) * max(1, len(others)) / 2 + 1) for _, rows in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    bar = 0.8 / max(1, len(others))
    for ax, (title, rows) in zip(axes[:, 0], groups):
        for i, peer in enumerate(others):
            ys, xs = [], []
            for j, (_, r) in enumerate(rows):
                if peer in r:
                    ys.append(j + (i - (len(others) - 1) / 2) * bar)
                    xs.append(r[peer])
            ax.barh(ys, xs, height=bar, color=colours.get(peer), label=f"÷ {peer}")
            for y, x in zip(ys, xs):
                ax.annotate(f"{x:.2f}", (x, y), xytext=(3, 0), textcoords="offset points",
                            va="center", fontsize=7)
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ax.set_xticks([t for t in (0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50) if lo <= t <= hi])
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([label for label, _ in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    m = results["meta"]
    fig.suptitle(f"dctunnel ÷ peer, medians of {m['settings']['runs']} run(s), {m['date']} "
                 f"({m['mode']} mode)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def wan_section(results, w):
    s = results["meta"]["settings"]
    met = results["metrics"]
    fb = met.get("wan_first_byte", {}).get("median", {})
    cr = met.get("wan_connrate", {}).get("median", {})
    rows = [p for p in PEER_ORDER if p in fb or p in cr]
    w("## Over the WAN relay\n")
    w(f"`bench/delay_relay.py` between client end and server end, {s['wan_delay_ms']:g} ms each "
      f"way (a {2 * s['wan_delay_ms']:g} ms round trip); `direct` is plain TCP over the same "
      f"relay. `{WARM}` is a second dctunnel pair, the same configuration, through the "
      f"same relay, with `warm_connections = {results.get('wan_warm_connections', '?')}` on its "
      "client-end service: a new local connection takes a mutual-TLS connection established before, "
      "sends its start message and the request at once, and a replacement is opened behind "
      "it. Medians of the runs, all from this run.\n")
    w(f"- First reply byte: {s['wan_conns']} sequential connections per row and run "
      "(connect, PING, time to the first byte of +PONG), each followed by "
      f"{s.get('wan_pause_ms', 0):g} ms untimed, the same for every row, so that the "
      "warm pool has replaced the connection just taken.")
    w(f"- New connections/s: {s.get('wan_rate_clients', '?')} clients in parallel for "
      f"{s.get('wan_rate_seconds', 0):g} s, each in a loop of connect, PING, read +PONG, close.")
    w("")
    w(f"| row | first reply byte (ms) | ÷ direct | {WARM} ÷ row | new connections/s | "
      f"{WARM} ÷ row |")
    w("|---|---:|---:|---:|---:|---:|")
    for p in rows:
        a, b = fb.get(p), cr.get(p)
        w(f"| {p} | {fmt(a)} | "
          + (f"{a / fb['direct']:.2f}" if a and fb.get("direct") else "–") + " | "
          + (f"{fb[WARM] / a:.2f}" if a and fb.get(WARM) and p != WARM else "–") + " | "
          + f"{fmt(b)} | "
          + (f"{cr[WARM] / b:.2f}" if b and cr.get(WARM) and p != WARM else "–") + " |")
    w("")
    used = results.get("warm_used", {})
    if used:
        w("Warm connections taken by the client end (its "
          "`dctunnel_warm_connections_used_total`, read before and after each measurement), "
          "over all runs: "
          + "; ".join(f"{'first reply byte' if k == 'wan_first_byte' else 'new connections'}: "
                      f"{u['used']:,} for {u['conns']:,} connections measured"
                      for k, u in used.items())
          + " (in the connections/s loop, connections under way when the time is up are "
          "counted as taken but not as measured).\n")


def markdown(results, path, chart_path):
    m = results["meta"]
    s = m["settings"]
    peers = peers_of(results)
    others = [p for p in peers if p not in ("dctunnel", WARM)]
    L = []
    w = L.append
    w("# dctunnel benchmark results\n")
    w(f"- Date: {m['date']}; {m['mode']} mode; {s['runs']} run(s) per figure, "
      f"peers interleaved within each run; the figure shown is the median of the runs. "
      f"Suite time {m.get('elapsed_s', '?')} s.")
    w(f"- Command: `{m['command']}` (from the repository root)")
    mc = m["machine"]
    w(f"- Machine: {mc['cpu']}, {mc['cores']} cores, {mc['memory_gib']} GiB, "
      f"{mc['os']}, Linux {mc['kernel']}; descriptor limit {mc['nofile_limit'][0]}. "
      f"Load average before the run: {', '.join(f'{x:.2f}' for x in mc['load_before'])} "
      "(the cores are shared with other jobs: compare ratios measured in the same run, "
      "not absolute figures across runs).")
    w("- Versions: " + "; ".join(f"{k} {v}" if k not in v.lower() else v
                                 for k, v in m["versions"].items()))
    w(f"- Certificates: one private CA, ECDSA P-256, made by {m['pki']}.")
    w("")
    w("Topology, for every peer: load generator → client end (plaintext in, mutual TLS out, "
      "server name checked) → server end (mutual TLS in, client identity checked, plaintext "
      "out) → backend, all on 127.0.0.1, each end its own process.\n")
    for name, desc in m.get("peers", {}).items():
        w(f"- **{name}**: {desc}")
    w("")

    w("## Figures\n")
    w("Ratio = dctunnel ÷ peer, from the medians of the same run. The "
      f"`{WARM}` column is dctunnel with warm connections, measured in the WAN "
      "workload only; it is compared in [Over the WAN relay](#over-the-wan-relay).\n")
    head = ["metric", "unit", "better"] + peers + [f"÷ {p}" for p in others]
    w("| " + " | ".join(head) + " |")
    w("|" + "---|" * 3 + "---:|" * (len(head) - 3))
    for metric in results["metrics"].values():
        med = metric.get("median", {})
        r = ratios(metric)
        cells = [metric["label"], metric["unit"], metric["better"]]
        cells += [fmt(med.get(p)) for p in peers]
        cells += [f"{r[p]:.2f}" if p in r else "–" for p in others]
        w("| " + " | ".join(cells) + " |")
    w("")
    if chart_path:
        w(f"![dctunnel ÷ peer]({Path(chart_path).name})\n")

    w("## Targets\n")
    met = results["metrics"]

    def ratio(key, peer):
        return ratios(met[key]).get(peer) if key in met else None

    def verdict(ok):
        return "met" if ok else "**not met**"

    r = ratio("bulk1", "haproxy")
    if r is not None:
        w(f"- Single-stream throughput ≥ 2× haproxy: {r:.2f}× — {verdict(r >= 2)}")
    for key, label in (("connrate_resume", "resumption on"), ("connrate_full", "every handshake full")):
        r = ratio(key, "haproxy")
        if r is not None:
            w(f"- New connections/s ≥ 3× haproxy, {label}: {r:.2f}× — {verdict(r >= 3)}")
    mem = met.get("memory", {}).get("median", {}).get("dctunnel")
    if mem is not None:
        w(f"- ≤ 23 kB per idle connection, both ends: {mem:.1f} kB — {verdict(mem <= 23)}")
    wan_fb = met.get("wan_first_byte", {}).get("median", {})
    if WARM in wan_fb and wan_fb.get("direct"):
        r = wan_fb[WARM] / wan_fb["direct"]
        w(f"- First reply byte over the WAN relay, warm connections ≤ 0.6 × direct TCP: "
          f"{wan_fb[WARM]:.1f} ms ÷ {wan_fb['direct']:.1f} ms = {r:.2f}× — {verdict(r <= 0.6)}")
    wan_cr = met.get("wan_connrate", {}).get("median", {})
    if WARM in wan_cr:
        parts = [f"{wan_cr[WARM] / wan_cr[p]:.2f}× {p}" for p in ("stunnel", "haproxy")
                 if wan_cr.get(p)]
        if parts:
            w(f"- New connections/s over the WAN relay, warm connections well ahead of stunnel "
              f"and haproxy: {wan_cr[WARM]:,.0f}/s, " + ", ".join(parts))
    held = results.get("held", {}).get("dctunnel")
    if held:
        ok = held["answering"] == held["target"] and not held["errors"] and held["alive"]
        w(f"- {held['target']:,} concurrent connections per end held without error: "
          f"{held['answering']:,} answering, {held['errors']} errors — {verdict(ok)}")
    w("")

    if wan_fb or wan_cr:
        wan_section(results, w)

    if results.get("held"):
        w("## Connections held at once\n")
        w("Every connection PINGed end to end when opened, and all of them again once all "
          "were open. Descriptors are counted per end (client end, server end).\n")
        w("| peer | target | open | answering | errors | descriptors per end | threads | RSS both ends |")
        w("|---|---:|---:|---:|---:|---|---:|---:|")
        for peer, h in results["held"].items():
            w(f"| {peer} | {h['target']:,} | {h['open']:,} | {h['answering']:,} | {h['errors']} | "
              f"{' / '.join(f'{x:,}' for x in reversed(h['fds_per_end']))} | {h['threads']:,} | "
              f"{h['rss_mib']:.0f} MiB |")
        w("")

    if results.get("memory_per_end"):
        n = s["mem_conns"]
        w("## Memory per idle connection, each end\n")
        w(f"VmRSS growth of each end with {n:,} idle connections open, over its baseline, "
          "divided by the number of connections.\n")
        w("| peer | client end | server end | both |")
        w("|---|---:|---:|---:|")
        for peer, e in results["memory_per_end"].items():
            w(f"| {peer} | {e['client']:.1f} kB | {e['server']:.1f} kB | "
              f"{e['client'] + e['server']:.1f} kB |")
        w("")

    if results.get("tls"):
        w("## TLS as negotiated\n")
        w("Checked against each server end with Python's ssl module (OpenSSL): with the "
          "client's certificate the backend answers over TLS 1.3; with no certificate, or "
          "with a certificate from the same CA for another name (`other.bench`), it does "
          "not.\n")
        w("| peer | protocol | cipher suite |")
        w("|---|---|---|")
        for peer, t in results["tls"].items():
            w(f"| {peer} | {t['protocol']} | {t['cipher']} |")
        w("")

    # What each optimisation bought, and the profile behind what is still
    # missing: written by hand (it compares runs), kept beside the suite.
    notes = Path(__file__).resolve().parent / "optimisations.md"
    if notes.exists():
        w(notes.read_text().rstrip() + "\n")

    w("## Exact commands\n")
    w("ENTRANCE is the client end's listening port of the peer measured (the backend's own "
      "port for `direct`); N is chosen per peer by a short calibration run (also a warm-up) "
      "so that each run lasts about "
      f"{s['connrate_seconds']:g} s (connections) or {s['keepalive_seconds']:g} s (requests). "
      "Tunnel CPU is user + system time of both end processes from /proc/PID/stat over the "
      "run; memory is VmRSS of both ends, after a fresh start and 16 warm-up connections, "
      "and again with the idle connections open.\n")
    w("```")
    for key, cmd in m.get("commands", {}).items():
        w(f"{key}: {cmd}")
    w("```\n")
    w("The configuration files of every end are written by `bench/peers.py` into "
      "`bench/out/work/PEER/` at each run.\n")

    w("## Checks\n")
    failed = [c for c in results["checks"] if not c["ok"]]
    w(f"{len(results['checks']) - len(failed)} passed, {len(failed)} failed "
      "(one check per workload × peer: every run carried its traffic).\n")
    for c in failed:
        w(f"- FAILED {c['workload']} / {c['peer']}: {c['detail']}")
    if failed:
        w("")

    w("## Every run\n")
    w("| metric | peer | runs |")
    w("|---|---|---|")
    for metric in results["metrics"].values():
        for peer in peers:
            runs = metric["runs"].get(peer)
            if runs:
                w(f"| {metric['label']} ({metric['unit']}) | {peer} | "
                  f"{', '.join(fmt(x) for x in runs)} |")
    w("")
    Path(path).write_text("\n".join(L))


if __name__ == "__main__":
    d = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    res = json.loads((d / "results.json").read_text())
    markdown(res, d / "RESULTS.md", chart(res, d / "results.png"))
