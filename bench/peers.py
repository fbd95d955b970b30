"""The tunnels under test: for each peer, the configuration of its two ends
and the processes that run them.

Every peer has the same shape. Its server end accepts mutual TLS and forwards
plaintext to a backend; its client end accepts plaintext and connects with
mutual TLS to the server end, checking the server name. Each end is one
process with the same services:

    server end   redis    TLS :B_redis -> redis-server
                 iperf    TLS :B_iperf -> iperf3 -s
    client end   redis       :A_redis      -> B_redis   (resumption on)
                 redis_full  :A_redis_full -> B_redis   (every handshake full)
                 iperf       :A_iperf      -> B_iperf
                 wan         :A_wan -> delay relay -> B_redis

`dctunnel-warm` is a second dctunnel pair for the WAN workload only: its
client end has the `wan` service alone, with warm connections, and an admin
endpoint; its server end the `redis` service alone. A pair of its own keeps
its pool (connections held open, replaced every 45 s) out of the other
workloads' memory, descriptor and CPU figures of `dctunnel`.

The ceilings: `haproxy-plain` is the same haproxy pair with TLS removed, and
`direct` has no tunnel at all (its entrances are the backends themselves).
"""

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

CLIENT_NAME = "client.bench"
SERVER_NAME = "server.bench"

# haproxy needs about two descriptors per connection plus its own: this
# leaves room under the 20,000 hard limit for 9,000+ connections per end.
HAPROXY_MAXCONN = 9800


class PortAllocator:
    """Hands out loopback ports below the ephemeral range, checked free."""

    def __init__(self, start):
        self.next = start

    def take(self):
        while True:
            port = self.next
            self.next += 1
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def listening(port):
    """Whether a socket listens on `port` (read from /proc: probing with a
    connection would start a bogus iperf3 test)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            pass
    return False


def wait_port(port, timeout=15.0, proc=None):
    """Waits until something listens on `port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode}")
        if listening(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def raise_nofile():
    """Run in each child: soft descriptor limit up to the hard limit."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Process:
    """One started program, its log file, and how to stop it."""

    def __init__(self, name, argv, log_dir, env=None, cwd=None):
        self.name = name
        self.log = Path(log_dir) / f"{name}.log"
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                preexec_fn=raise_nofile,
            )

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def proc_cpu_seconds(pid):
    """User + system CPU seconds of a process, all its threads included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def proc_threads(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class Peer:
    """One tool under test: its two ends (or none, for `direct`)."""

    name = "?"
    tls = True
    description = ""
    # Measured in the WAN workload only.
    wan_only = False

    def __init__(self, env, ports):
        self.env = env
        self.dir = env.work / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ends = []
        self.b_redis = ports.take()
        self.b_iperf = ports.take()
        self.entrance = {
            "redis": ports.take(),
            "redis_full": ports.take(),
            "iperf": ports.take(),
            "wan": ports.take(),
        }
        # Where the delay relay listens and forwards, for the wan service.
        self.relay_port = ports.take()
        self.relay_target = self.b_redis

    def start(self):
        self.ends = self._start_ends()
        for end, ports in zip(self.ends, self._end_ports()):
            for p in ports:
                wait_port(p, proc=end.popen)

    def stop(self):
        for end in self.ends:
            end.stop()
        self.ends = []

    def restart(self):
        self.stop()
        time.sleep(0.2)
        self.start()

    def pids(self):
        return [e.pid for e in self.ends]

    def alive(self):
        return all(e.alive() for e in self.ends)

    def cpu_seconds(self):
        return sum(proc_cpu_seconds(p) for p in self.pids())

    def rss_kib(self):
        return sum(proc_rss_kib(p) for p in self.pids())

    def threads(self):
        return sum(proc_threads(p) for p in self.pids())

    def _end_ports(self):
        return [
            [self.b_redis, self.b_iperf],
            list(self.entrance.values()),
        ]

    def _start_ends(self):
        raise NotImplementedError


class Dctunnel(Peer):
    name = "dctunnel"
    description = "dctunnel, one process per end"

    def _service(self, name, mode, listen, connect, extra=""):
        pki = self.env.pki
        if mode == "server":
            ident = f'cert = "{pki.server_cert}"\nkey = "{pki.server_key}"\nallow_peers = ["{CLIENT_NAME}"]'
        else:
            ident = (
                f'cert = "{pki.client_cert}"\nkey = "{pki.client_key}"\n'
                f'server_name = "{SERVER_NAME}"'
            )
        return (
            f'[[service]]\nname = "{name}"\nmode = "{mode}"\n'
            f'listen = "127.0.0.1:{listen}"\nconnect = "127.0.0.1:{connect}"\n'
            f'ca = "{pki.ca}"\n{ident}\n{extra}\n'
        )

    def _configs(self):
        env = self.env
        server = (
            self._service("redis", "server", self.b_redis, env.redis_port)
            + self._service("iperf", "server", self.b_iperf, env.iperf_port)
        )
        client = (
            self._service("redis", "client", self.entrance["redis"], self.b_redis)
            + self._service(
                "redis_full",
                "client",
                self.entrance["redis_full"],
                self.b_redis,
                "tls_resumption = false",
            )
            + self._service("iperf", "client", self.entrance["iperf"], self.b_iperf)
            + self._service("wan", "client", self.entrance["wan"], self.relay_port)
        )
        return server, client

    def _start_ends(self):
        env = self.env
        server, client = self._configs()
        ends = []
        # Extra top-level TOML for both ends (e.g. "[daemon]\nworker_threads = 1"),
        # to compare daemon settings without editing the suite.
        prefix = os.environ.get("DCTUNNEL_BENCH_TOML", "").replace("\\n", "\n")
        for role, text in (("server", prefix + "\n" + server), ("client", prefix + "\n" + client)):
            cfg = self.dir / f"{role}.toml"
            cfg.write_text(text)
            ends.append(
                Process(
                    f"{self.name}-{role}",
                    [str(env.dctunnel), "run", "--config", str(cfg)],
                    env.logs,
                    env={"DCTUNNEL_LOG": "warn"},
                )
            )
        return ends


class DctunnelWarm(Dctunnel):
    name = "dctunnel-warm"
    wan_only = True

    @property
    def description(self):
        return (
            "dctunnel with warm connections (WAN workload only): a second dctunnel pair, "
            f"its client end's `wan` service with `warm_connections = {self.env.warm_connections}`"
        )

    def __init__(self, env, ports):
        super().__init__(env, ports)
        self.entrance = {"wan": self.entrance["wan"]}
        # Client end's admin endpoint: how many warm connections were used.
        self.admin_port = ports.take()

    def _end_ports(self):
        return [[self.b_redis], [self.entrance["wan"], self.admin_port]]

    def _configs(self):
        env = self.env
        server = self._service("redis", "server", self.b_redis, env.redis_port)
        client = f'[admin]\nlisten = "127.0.0.1:{self.admin_port}"\n\n' + self._service(
            "wan",
            "client",
            self.entrance["wan"],
            self.relay_port,
            f"warm_connections = {env.warm_connections}",
        )
        return server, client

    def warm_used(self):
        """Warm connections the client end has put in use so far
        (dctunnel_warm_connections_used_total), or None if unreadable."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5
            ) as r:
                text = r.read().decode()
        except OSError:
            return None
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith("dctunnel_warm_connections_used_total{")
        )


class Stunnel(Peer):
    name = "stunnel"
    description = "stunnel4 (Debian), one process per end"

    def _start_ends(self):
        env, pki = self.env, self.env.pki
        common = "foreground = yes\npid =\nsyslog = no\ndebug = warning\n"
        tls = f"CAfile = {pki.ca}\nverifyChain = yes\nsslVersionMin = TLSv1.3\n"
        server = common
        for name, listen, backend in (
            ("redis", self.b_redis, env.redis_port),
            ("iperf", self.b_iperf, env.iperf_port),
        ):
            server += (
                f"\n[{name}]\naccept = 127.0.0.1:{listen}\nconnect = 127.0.0.1:{backend}\n"
                f"cert = {pki.server_cert}\nkey = {pki.server_key}\n{tls}"
                f"checkHost = {CLIENT_NAME}\n"
            )
        client = common
        for name, listen, remote, resume in (
            ("redis", self.entrance["redis"], self.b_redis, "yes"),
            ("redis_full", self.entrance["redis_full"], self.b_redis, "no"),
            ("iperf", self.entrance["iperf"], self.b_iperf, "yes"),
            ("wan", self.entrance["wan"], self.relay_port, "yes"),
        ):
            client += (
                f"\n[{name}]\nclient = yes\naccept = 127.0.0.1:{listen}\n"
                f"connect = 127.0.0.1:{remote}\ncert = {pki.client_cert}\n"
                f"key = {pki.client_key}\n{tls}checkHost = {SERVER_NAME}\n"
                f"sni = {SERVER_NAME}\nsessionResume = {resume}\n"
            )
        ends = []
        for role, text in (("server", server), ("client", client)):
            cfg = self.dir / f"{role}.conf"
            cfg.write_text(text)
            ends.append(Process(f"{self.name}-{role}", ["stunnel4", str(cfg)], env.logs))
        return ends


class Haproxy(Peer):
    name = "haproxy"
    description = "haproxy (Debian), one process per end"

    def _global(self):
        return (
            "global\n"
            f"    maxconn {HAPROXY_MAXCONN}\n"
            "    nbthread 2\n"
            "defaults\n"
            "    mode tcp\n"
            f"    maxconn {HAPROXY_MAXCONN}\n"
            "    timeout connect 10s\n"
            "    timeout client 1h\n"
            "    timeout server 1h\n"
        )

    def _bind_tls(self):
        pki = self.env.pki
        return (
            f" ssl crt {pki.server_combined} ca-file {pki.ca} verify required"
            " ssl-min-ver TLSv1.3"
        )

    def _server_tls(self, reuse):
        pki = self.env.pki
        return (
            f" ssl verify required ca-file {pki.ca} crt {pki.client_combined}"
            f" sni str({SERVER_NAME}) verifyhost {SERVER_NAME} ssl-min-ver TLSv1.3"
            + ("" if reuse else " no-ssl-reuse")
        )

    # The server end checks the client's identity, as dctunnel's
    # allow_peers and stunnel's checkHost do.
    def _peer_check(self):
        return f"    tcp-request session reject unless {{ ssl_c_s_dn(CN) -m str {CLIENT_NAME} }}\n"

    def _start_ends(self):
        env = self.env
        server = self._global()
        for name, listen, backend in (
            ("redis", self.b_redis, env.redis_port),
            ("iperf", self.b_iperf, env.iperf_port),
        ):
            server += (
                f"listen {name}\n    bind 127.0.0.1:{listen}{self._bind_tls() if self.tls else ''}\n"
                + (self._peer_check() if self.tls else "")
                + f"    server backend 127.0.0.1:{backend}\n"
            )
        client = self._global()
        for name, listen, remote, reuse in (
            ("redis", self.entrance["redis"], self.b_redis, True),
            ("redis_full", self.entrance["redis_full"], self.b_redis, False),
            ("iperf", self.entrance["iperf"], self.b_iperf, True),
            ("wan", self.entrance["wan"], self.relay_port, True),
        ):
            tls = self._server_tls(reuse) if self.tls else ""
            client += (
                f"listen {name}\n    bind 127.0.0.1:{listen}\n"
                f"    server remote 127.0.0.1:{remote}{tls}\n"
            )
        ends = []
        for role, text in (("server", server), ("client", client)):
            cfg = self.dir / f"{role}.cfg"
            cfg.write_text(text)
            ends.append(
                Process(f"{self.name}-{role}", ["haproxy", "-db", "-f", str(cfg)], env.logs)
            )
        return ends


class HaproxyPlain(Haproxy):
    name = "haproxy-plain"
    tls = False
    description = "the same haproxy pair without TLS (ceiling: relay cost, no crypto)"


class Direct(Peer):
    name = "direct"
    tls = False
    description = "no tunnel: straight to the backend (ceiling)"

    def __init__(self, env, ports):
        super().__init__(env, ports)
        self.entrance = {
            "redis": env.redis_port,
            "redis_full": env.redis_port,
            "iperf": env.iperf_port,
            "wan": self.relay_port,
        }
        self.relay_target = env.redis_port

    def start(self):
        pass

    def stop(self):
        pass

    def pids(self):
        return []


PEERS = [Dctunnel, DctunnelWarm, Stunnel, Haproxy, HaproxyPlain, Direct]
