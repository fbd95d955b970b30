#!/usr/bin/env python3
"""dctunnel benchmark suite: runs every workload through every peer, checks
that each tunnel carried the traffic, and writes results, report and chart.

Started by `bench/run`, which installs the tools and builds the binary first.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import loadgen
import peers as P
import report
from pki import Pki

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
GIB = 1 << 30
MIB = 1 << 20

FULL = {
    "runs": 5,
    "bulk_bytes": 2 * GIB,
    "connrate_seconds": 5.0,
    "connrate_clients": 50,
    "keepalive_seconds": 5.0,
    "keepalive_clients": 16,
    "mem_conns": 5000,
    "held_conns": 9000,
    "wan_conns": 40,
    "wan_delay_ms": 5.0,
    # After each timed connection, every row waits this long untimed, so
    # that dctunnel-warm's pool has replaced the connection just taken
    # (a replacement costs one connect and one handshake over the relay,
    # about 25 ms).
    "wan_pause_ms": 60,
    # New connections over the relay: clients in parallel, each in a loop
    # of connect, PING, reply, close.
    "wan_rate_clients": 8,
    "wan_rate_seconds": 5.0,
    # dctunnel-warm's pool: a client takes a warm connection about every
    # round trip (10 ms), and a slot needs about 2.5 (connect, handshake
    # over the relay) to replace it, so a client needs about 2.5 slots to
    # always find one ready: 4 per client leave room.
    "warm_connections": 32,
}
QUICK = {
    **FULL,
    "runs": 1,
    "bulk_bytes": 128 * MIB,
    "connrate_seconds": 1.0,
    "keepalive_seconds": 1.0,
    "mem_conns": 300,
    # Above the usual soft limit of 1,024 descriptors: checks the raise.
    "held_conns": 1500,
    "wan_conns": 8,
    "wan_rate_seconds": 1.0,
}

WORKLOADS = ["carry", "mtls", "bulk", "connrate", "keepalive", "memory", "wan"]


def log(msg):
    print(msg, flush=True)


class Checks:
    """One check per workload x peer: passed if every run carried traffic."""

    def __init__(self):
        self.results = {}

    def note(self, workload, peer, ok, detail=""):
        key = (workload, peer)
        prev = self.results.get(key)
        if prev is None or (prev[0] and not ok):
            self.results[key] = (ok, "" if ok else detail)
        if not ok:
            log(f"  FAIL {workload} / {peer}: {detail}")

    def counts(self):
        passed = sum(1 for ok, _ in self.results.values() if ok)
        return passed, len(self.results) - passed

    def as_list(self):
        return [
            {"workload": w, "peer": p, "ok": ok, "detail": d}
            for (w, p), (ok, d) in self.results.items()
        ]


class Metrics:
    """Per-run values of each metric for each peer."""

    def __init__(self):
        self.data = {}

    def define(self, key, label, unit, better, workload):
        self.data.setdefault(
            key,
            {"label": label, "unit": unit, "better": better, "workload": workload, "runs": {}},
        )

    def add(self, key, peer, value):
        self.data[key]["runs"].setdefault(peer, []).append(value)

    def finish(self):
        for m in self.data.values():
            m["median"] = {p: statistics.median(v) for p, v in m["runs"].items() if v}
        return self.data


class Env:
    """Paths, certificates and backend ports shared by every peer."""

    def __init__(self, work, dctunnel):
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.dctunnel = dctunnel
        self.pki = None
        self.redis_port = None
        self.iperf_port = None
        self.warm_connections = 0


def run_cmd(argv, timeout):
    """Runs a load generator; returns (ok, stdout, stderr)."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return False, e.stdout or "", f"timed out after {timeout}s"
    return p.returncode == 0, p.stdout, p.stderr


# ---------------------------------------------------------------- workloads


class Suite:
    def __init__(self, args, settings, env, peers, backends):
        self.args = args
        self.s = settings
        self.env = env
        # Every peer started; `peers` are those of every workload, the
        # others (dctunnel-warm) are measured in the WAN workload only.
        self.all_peers = peers
        self.backends = backends
        self.checks = Checks()
        self.metrics = Metrics()
        self.extra = {}
        self.commands = {}

    @property
    def peers(self):
        return [p for p in self.all_peers if not p.wan_only]

    def tls_peers(self):
        return [p for p in self.peers if p.tls]

    def tunnel_peers(self):
        return [p for p in self.peers if p.name != "direct"]

    def ensure_alive(self, workload):
        for p in self.all_peers:
            if not p.alive():
                self.checks.note(workload, p.name, False, "a tunnel process died")
                log(f"  restarting {p.name} (a process died; see {self.env.logs})")
                p.restart()

    # 0. every entrance answers at all
    def carry(self):
        log("== carry: one PING through each entrance")
        for p in self.all_peers:
            for entrance in ("redis", "redis_full", "iperf", "wan"):
                if entrance not in p.entrance:
                    continue
                if entrance == "iperf":
                    ok = self.iperf_ok(p.entrance["iperf"])
                else:
                    ok = loadgen.ping_once(p.entrance[entrance])
                self.checks.note("carry", p.name, ok, f"entrance {entrance}")

    def iperf_ok(self, port):
        ok = self.iperf(port, MIB, 1)[0]
        if not ok:
            self.backends.restart_iperf()
        return ok

    # 0b. each TLS peer's server end speaks TLS 1.3 and admits only the client
    def mtls(self):
        log("== mtls: the server ends speak TLS 1.3 and admit only the client's identity")
        pki = self.env.pki
        self.extra["tls"] = {}
        for p in self.tls_peers():
            def attempt(identity):
                return loadgen.tls_ping(p.b_redis, pki.ca, P.SERVER_NAME, identity)

            good = attempt((pki.client_cert, pki.client_key))
            none = attempt(None)
            other = attempt((pki.other_cert, pki.other_key))
            self.extra["tls"][p.name] = good
            ok = (good["answered"] and good["protocol"] == "TLSv1.3"
                  and not none["answered"] and not other["answered"])
            self.checks.note(
                "mtls", p.name, ok,
                f"client certificate: {good['protocol']}, "
                f"{'answered' if good['answered'] else 'no answer ' + good['error']}; "
                f"no certificate: {'answered!' if none['answered'] else 'refused'}; "
                f"same CA, other name: {'answered!' if other['answered'] else 'refused'}",
            )

    # 1. bulk throughput
    def bulk(self):
        n = self.s["bulk_bytes"]
        for streams in (1, 4):
            key = f"bulk{streams}"
            self.metrics.define(
                key, f"bulk throughput, {streams} stream{'s' if streams > 1 else ''}",
                "Gbit/s", "higher", "bulk",
            )
            self.metrics.define(
                key + "_cpu", f"tunnel CPU per GiB, {streams} stream{'s' if streams > 1 else ''}",
                "CPU s/GiB", "lower", "bulk",
            )
            self.commands[key] = f"iperf3 -c 127.0.0.1 -p ENTRANCE -n {n} -P {streams} -J"
            log(f"== bulk, {streams} stream(s), {n / GIB:g} GiB per run")
            for run in range(self.s["runs"]):
                for p in self.peers:
                    c0 = p.cpu_seconds()
                    ok, why, got, bps = self.iperf(p.entrance["iperf"], n, streams)
                    cpu = p.cpu_seconds() - c0
                    self.checks.note(f"bulk{streams}", p.name, ok, why if not ok else "")
                    if not ok:
                        self.backends.restart_iperf()
                        self.ensure_alive(f"bulk{streams}")
                        continue
                    self.metrics.add(key, p.name, bps / 1e9)
                    if p.pids():
                        self.metrics.add(key + "_cpu", p.name, cpu / (got / GIB))
                    log(f"  run {run + 1} {p.name:14} {bps / 1e9:7.2f} Gbit/s  "
                        f"tunnel CPU {cpu:6.2f} s")

    def iperf(self, port, n, streams):
        """One iperf3 test; returns (ok, why not, bytes sent, receiver bits/s)."""
        argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", str(n),
                "-P", str(streams), "-J"]
        for attempt in range(10):
            ok, out, err = run_cmd(argv, 600)
            try:
                j = json.loads(out)
            except ValueError:
                return False, (err or out)[-300:], 0, 0
            if "error" not in j:
                break
            # The server may still be closing the previous test.
            if "busy" not in j["error"] or attempt == 9:
                return False, j["error"], 0, 0
            time.sleep(0.5)
        # The sender's count: the receiver's stops when the sender is done,
        # with the tunnel's buffers still in flight.
        got = j["end"]["sum_sent"]["bytes"]
        bps = j["end"]["sum_received"]["bits_per_second"]
        return ok and got >= n, f"sent {got} of {n} bytes", got, bps

    def redis_benchmark(self, port, n, keepalive, clients, timeout=120):
        # redis-benchmark waits forever when it cannot connect: the timeout
        # is what turns a dead tunnel into a failure.
        argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-k", str(keepalive),
                "-c", str(clients), "-n", str(n), "-t", "get", "--csv"]
        ok, out, err = run_cmd(argv, timeout)
        rows = [l for l in out.splitlines() if l.startswith('"GET"')]
        heads = [l for l in out.splitlines() if l.startswith('"test"')]
        if not ok or not rows or not heads or "rror" in err or "rror" in out:
            return None, (err or out).strip()[-300:] or "no result"
        header = [h.strip('"') for h in heads[0].split(",")]
        values = dict(zip(header, (v.strip('"') for v in rows[0].split(","))))
        return {k: float(v) for k, v in values.items() if k != "test"}, ""

    def calibrate(self, port, keepalive, clients, seconds):
        """Number of requests that take about `seconds` (also a warm-up)."""
        res, _ = self.redis_benchmark(port, 2000 if keepalive else 500, keepalive, clients, 30)
        if res is None:
            return 2000
        return int(min(max(res["rps"] * seconds, 1000), 2_000_000))

    # 2. new connections per second
    def connrate(self):
        c = self.s["connrate_clients"]
        for mode, entrance, label in (
            ("resume", "redis", "resumption on"),
            ("full", "redis_full", "every handshake full"),
        ):
            key = f"connrate_{mode}"
            peers = self.peers if mode == "resume" else self.tls_peers()
            self.metrics.define(key, f"new connections/s, {label}", "conn/s", "higher", "connrate")
            self.metrics.define(key + "_cpu", f"tunnel CPU per connection, {label}",
                                "CPU µs/conn", "lower", "connrate")
            self.commands[key] = f"redis-benchmark -h 127.0.0.1 -p ENTRANCE -k 0 -c {c} -n N -t get --csv"
            log(f"== new connections, {label}")
            sizes = {p.name: self.calibrate(p.entrance[entrance], 0, c, self.s["connrate_seconds"])
                     for p in peers}
            for run in range(self.s["runs"]):
                for p in peers:
                    n = sizes[p.name]
                    c0 = p.cpu_seconds()
                    res, why = self.redis_benchmark(p.entrance[entrance], n, 0, c,
                                                      30 + 10 * self.s["connrate_seconds"])
                    cpu = p.cpu_seconds() - c0
                    self.checks.note(key, p.name, res is not None, why)
                    if res is None:
                        self.ensure_alive(key)
                        continue
                    self.metrics.add(key, p.name, res["rps"])
                    if p.pids():
                        self.metrics.add(key + "_cpu", p.name, cpu / n * 1e6)
                    log(f"  run {run + 1} {p.name:14} {res['rps']:9.0f} conn/s  "
                        f"tunnel CPU {cpu / n * 1e6:7.1f} µs/conn  (n={n})")

    # 3. requests over persistent connections
    def keepalive(self):
        c = self.s["keepalive_clients"]
        for key, label, unit, better in (
            ("keepalive_rps", f"requests/s, {c} persistent connections", "req/s", "higher"),
            ("keepalive_p50", "request latency p50, persistent", "ms", "lower"),
            ("keepalive_p99", "request latency p99, persistent", "ms", "lower"),
        ):
            self.metrics.define(key, label, unit, better, "keepalive")
        self.commands["keepalive"] = f"redis-benchmark -h 127.0.0.1 -p ENTRANCE -k 1 -c {c} -n N -t get --csv"
        log(f"== requests over {c} persistent connections")
        sizes = {p.name: self.calibrate(p.entrance["redis"], 1, c, self.s["keepalive_seconds"])
                 for p in self.peers}
        for run in range(self.s["runs"]):
            for p in self.peers:
                res, why = self.redis_benchmark(p.entrance["redis"], sizes[p.name], 1, c,
                                                  30 + 10 * self.s["keepalive_seconds"])
                self.checks.note("keepalive", p.name, res is not None, why)
                if res is None:
                    self.ensure_alive("keepalive")
                    continue
                self.metrics.add("keepalive_rps", p.name, res["rps"])
                self.metrics.add("keepalive_p50", p.name, res["p50_latency_ms"])
                self.metrics.add("keepalive_p99", p.name, res["p99_latency_ms"])
                log(f"  run {run + 1} {p.name:14} {res['rps']:9.0f} req/s  "
                    f"p50 {res['p50_latency_ms']:.3f} ms  p99 {res['p99_latency_ms']:.3f} ms")

    # 4. memory per idle connection, and the held-connections check
    def memory(self):
        n, held = self.s["mem_conns"], self.s["held_conns"]
        self.metrics.define("memory", f"resident memory per idle connection, both ends ({n} conns)",
                            "kB/conn", "lower", "memory")
        self.commands["memory"] = (
            f"bench/loadgen.py IdlePool: {n} then {held} Redis connections to ENTRANCE, "
            "each PINGed once when opened and again when all are open"
        )
        self.extra["held"] = {}
        log(f"== memory: {n} idle connections, then {held} held")
        for p in self.tunnel_peers():
            # Fresh processes, so that earlier workloads' allocations do not
            # hide the cost of new connections.
            p.restart()
            pool = loadgen.IdlePool()
            try:
                errors = pool.open(p.entrance["redis"], 16)
                pool.close()
                time.sleep(1.0)
                base_ends = [P.proc_rss_kib(pid) for pid in p.pids()]
                errors = pool.open(p.entrance["redis"], n)
                time.sleep(2.0)
                rss_ends = [P.proc_rss_kib(pid) for pid in p.pids()]
                base, rss = sum(base_ends), sum(rss_ends)
                self.extra.setdefault("memory_per_end", {})[p.name] = {
                    role: (after - before) * 1024 / n / 1000
                    for role, before, after in zip(("server", "client"), base_ends, rss_ends)
                }
                ok = not errors and p.alive()
                self.checks.note("memory", p.name, ok,
                                 f"{len(errors)} of {n} failed: {errors[:1]}" if errors else "")
                if ok:
                    per_conn = (rss - base) * 1024 / n / 1000
                    self.metrics.add("memory", p.name, per_conn)
                    ends = self.extra["memory_per_end"][p.name]
                    log(f"  {p.name:14} baseline {base / 1024:7.1f} MiB, with {n}: "
                        f"{rss / 1024:7.1f} MiB -> {per_conn:5.1f} kB/conn "
                        f"(client end {ends['client']:.1f}, server end {ends['server']:.1f})")
                more = held - len(pool)
                if more > 0:
                    errors += pool.open(p.entrance["redis"], more)
                time.sleep(1.0)
                answering = pool.ping_all()
                fds = [len(os.listdir(f"/proc/{pid}/fd")) for pid in p.pids()]
                info = {
                    "target": held,
                    "open": len(pool),
                    "answering": answering,
                    "errors": len(errors),
                    "fds_per_end": fds,
                    "threads": p.threads(),
                    "rss_mib": p.rss_kib() / 1024,
                    "alive": p.alive(),
                }
                self.extra["held"][p.name] = info
                ok = answering == held and not errors and p.alive()
                self.checks.note("held", p.name, ok,
                                 f"{answering} of {held} answering, {len(errors)} errors "
                                 f"{errors[:1]}")
                log(f"  {p.name:14} held {answering}/{held} answering, descriptors per end {fds}, "
                    f"threads {info['threads']}, RSS {info['rss_mib']:.0f} MiB")
            finally:
                pool.close()
                pool.loop.close()
            p.restart()

    # 5. first byte, and new connections per second, over a simulated WAN
    def wan_rows(self):
        """(row name, peer, entrance port) of every peer's `wan` entrance,
        dctunnel-warm right after dctunnel."""
        return [(p.name, p, p.entrance["wan"]) for p in self.all_peers
                if p.name != "haproxy-plain"]

    def warm_used(self, row, peer):
        return peer.warm_used() if hasattr(peer, "warm_used") else None

    def note_warm(self, key, row, peer, before, taken):
        """Records how many of the row's connections took a warm one."""
        if before is None:
            return
        after = self.warm_used(row, peer)
        if after is None:
            return
        used = self.extra.setdefault("warm_used", {}).setdefault(key, {"used": 0, "conns": 0})
        used["used"] += after - before
        used["conns"] += taken
        return after - before

    def wan(self):
        k = self.s["wan_conns"]
        d = self.s["wan_delay_ms"]
        pause = self.s["wan_pause_ms"] / 1000
        rows = self.wan_rows()
        self.extra["wan_rows"] = [r for r, _, _ in rows]
        self.extra["wan_warm_connections"] = self.env.warm_connections
        self.metrics.define("wan_first_byte", f"connect() to first reply byte, {d:g} ms each way",
                            "ms", "lower", "wan")
        self.commands["wan"] = (
            f"bench/delay_relay.py --delay-ms {d:g} between client end and server end; "
            f"{k} sequential connections to ENTRANCE, each: connect, PING, time to first byte, "
            f"then {self.s['wan_pause_ms']:g} ms untimed (every row)"
        )
        log(f"== first byte over {d:g} ms each way, {k} connections per run, "
            f"{self.s['wan_pause_ms']:g} ms between them")
        for run in range(self.s["runs"]):
            for row, p, port in rows:
                times, errors = [], []
                before = self.warm_used(row, p)
                for _ in range(k):
                    try:
                        times.append(loadgen.first_byte_seconds(port) * 1000)
                    except (OSError, RuntimeError) as e:
                        errors.append(repr(e))
                    time.sleep(pause)
                warm = self.note_warm("wan_first_byte", row, p, before, k)
                if warm is not None:
                    self.checks.note("wan_warm_used", row, warm > 0,
                                     f"no warm connection used in {k} connections")
                self.checks.note("wan", row, not errors,
                                 f"{len(errors)} of {k} failed: {errors[:1]}" if errors else "")
                if times:
                    self.metrics.add("wan_first_byte", row, statistics.median(times))
                    log(f"  run {run + 1} {row:14} median {statistics.median(times):6.2f} ms "
                        f"(min {min(times):.2f}, max {max(times):.2f})"
                        + (f", {warm} of {k} warm" if warm is not None else ""))
        self.wan_connrate(rows)

    def wan_connrate(self, rows):
        c = self.s["wan_rate_clients"]
        t = self.s["wan_rate_seconds"]
        d = self.s["wan_delay_ms"]
        self.metrics.define("wan_connrate", f"new connections/s over the relay, {c} clients",
                            "conn/s", "higher", "wan")
        self.commands["wan_connrate"] = (
            f"bench/loadgen.py conn_loop: {c} clients for {t:g} s, each in a loop: connect to "
            f"ENTRANCE, PING, read the reply, close (through the {d:g} ms relay)"
        )
        log(f"== new connections over the relay, {c} clients, {t:g} s per run")
        for row, p, port in rows:
            # Warm-up (every row): the first connections, and dctunnel-warm's
            # pool grown back to its size, then a pause to refill it.
            loadgen.conn_loop(port, c, min(1.0, t / 2))
            time.sleep(0.5)
        for run in range(self.s["runs"]):
            for row, p, port in rows:
                before = self.warm_used(row, p)
                n, errors = loadgen.conn_loop(port, c, t)
                warm = self.note_warm("wan_connrate", row, p, before, n)
                self.checks.note("wan_connrate", row, n > 0 and not errors,
                                 f"{len(errors)} failed, {n} done: {errors[:1]}")
                if n:
                    self.metrics.add("wan_connrate", row, n / t)
                if warm is not None:
                    self.checks.note("wan_warm_used", row, warm > 0,
                                     f"no warm connection used in {n} connections")
                log(f"  run {run + 1} {row:14} {n / t:8.0f} conn/s ({n} done, "
                    f"{len(errors)} failed)" + (f", {warm} of {n} warm" if warm is not None else ""))
                time.sleep(0.5)


# ---------------------------------------------------------------- backends


class Backends:
    def __init__(self, env, ports):
        self.env = env
        env.redis_port = ports.take()
        env.iperf_port = ports.take()
        self.redis = None
        self.iperf = None
        self.relay = None

    def start(self):
        e = self.env
        self.redis = P.Process(
            "redis-server",
            ["redis-server", "--port", str(e.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--maxclients", "19000",
             "--protected-mode", "no", "--daemonize", "no", "--dir", str(e.work)],
            e.logs,
        )
        P.wait_port(e.redis_port, proc=self.redis.popen)
        self.start_iperf()

    def start_iperf(self):
        self.iperf = P.Process("iperf3-server", ["iperf3", "-s", "-p", str(self.env.iperf_port)],
                               self.env.logs)
        P.wait_port(self.env.iperf_port, proc=self.iperf.popen)

    def restart_iperf(self):
        self.iperf.stop()
        time.sleep(0.3)
        self.start_iperf()

    def start_relay(self, peers, delay_ms):
        mappings = [f"{p.relay_port}:127.0.0.1:{p.relay_target}" for p in peers]
        self.relay = P.Process(
            "delay-relay",
            [sys.executable, str(BENCH / "delay_relay.py"), "--delay-ms", str(delay_ms), *mappings],
            self.env.logs,
        )
        for p in peers:
            P.wait_port(p.relay_port, proc=self.relay.popen)

    def stop(self):
        for proc in (self.relay, self.iperf, self.redis):
            if proc is not None:
                proc.stop()


# ---------------------------------------------------------------- facts


def first_line(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = [l for l in (p.stdout + p.stderr).splitlines() if l.strip()]
    return lines[0].strip() if lines else "?"


def facts(dctunnel):
    git = first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    stunnel = "?"
    for l in subprocess.run(["stunnel4", "-version"], capture_output=True, text=True).stderr.splitlines():
        if l.startswith("stunnel "):
            stunnel = l.strip()
    cpu = "?"
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            cpu = l.split(":", 1)[1].strip()
            break
    mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    try:
        import matplotlib

        mpl = matplotlib.__version__
    except ImportError:
        mpl = "not installed"
    return {
        "versions": {
            "dctunnel": f"{first_line([str(dctunnel), '--version'])} (git {git})",
            "stunnel": stunnel,
            "haproxy": first_line(["haproxy", "-v"]),
            "openssl": first_line(["openssl", "version"]),
            "iperf3": first_line(["iperf3", "--version"]),
            "redis": first_line(["redis-server", "--version"]),
            "python": platform.python_version(),
            "matplotlib": mpl,
        },
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "memory_gib": round(int(mem) / (1 << 20), 1),
            "kernel": platform.release(),
            "os": first_line(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE),
            "load_before": os.getloadavg(),
        },
    }


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one run (CI)")
    ap.add_argument("--runs", type=int, help="runs per figure (default 5, quick 1)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument("--peers", default=",".join(c.name for c in P.PEERS),
                    help="comma-separated subset of peers (dctunnel and dctunnel-warm are always "
                    "included)")
    ap.add_argument("--out", type=Path, help="where RESULTS.md, results.json and results.png go")
    ap.add_argument("--dctunnel", type=Path, default=REPO / "target" / "release" / "dctunnel")
    ap.add_argument("--command", default="bench/run", help="command line to record in the report")
    args = ap.parse_args()

    settings = dict(QUICK if args.quick else FULL)
    if args.runs:
        settings["runs"] = args.runs
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}")
    wanted = set(args.peers.split(",")) | {"dctunnel", "dctunnel-warm"}
    out = args.out or (BENCH / "out" / "quick" if args.quick else BENCH)
    out.mkdir(parents=True, exist_ok=True)
    work = BENCH / "out" / ("work-quick" if args.quick else "work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    # A stop request still stops every process the suite started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    started = time.monotonic()
    env = Env(work, args.dctunnel.resolve())
    env.warm_connections = settings["warm_connections"]
    env.pki = Pki(work / "pki", env.dctunnel)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "command": args.command,
        "settings": settings,
        "workloads": workloads,
        "pki": env.pki.made_with,
        **facts(env.dctunnel),
    }
    log(f"bench: {meta['mode']} mode, {settings['runs']} run(s) per figure; "
        f"dctunnel {meta['versions']['dctunnel']}; certificates by {env.pki.made_with}")

    ports = P.PortAllocator(21000 if not args.quick else 24000)
    backends = Backends(env, ports)
    peers = [cls(env, ports) for cls in P.PEERS if cls.name in wanted]
    suite = Suite(args, settings, env, peers, backends)
    try:
        backends.start()
        backends.start_relay(peers, settings["wan_delay_ms"])
        for p in list(peers):
            try:
                p.start()
            except RuntimeError as e:
                suite.checks.note("start", p.name, False, f"{e} (see {env.logs})")
                p.stop()
                peers.remove(p)
        for w in WORKLOADS:
            if w in workloads:
                getattr(suite, w)()
                suite.ensure_alive(w)
    finally:
        for p in peers:
            p.stop()
        backends.stop()

    meta["elapsed_s"] = round(time.monotonic() - started)
    meta["peers"] = {p.name: p.description for p in peers}
    meta["commands"] = suite.commands
    results = {
        "meta": meta,
        "metrics": suite.metrics.finish(),
        "checks": suite.checks.as_list(),
        **suite.extra,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    chart = report.chart(results, out / "results.png")
    report.markdown(results, out / "RESULTS.md", chart)
    log(f"bench: wrote {out / 'RESULTS.md'}" + (f" and {chart}" if chart else ""))

    passed, failed = suite.checks.counts()
    for c in suite.checks.as_list():
        if not c["ok"]:
            log(f"failed: {c['workload']} / {c['peer']}: {c['detail']}")
    log(f"bench {'quick' if args.quick else 'full'}: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
