#!/usr/bin/env python3
"""Small clients for the network-namespace suite (tests/netns/run.sh), run
inside a namespace with `ip netns exec`. Each speaks Redis (RESP) to a
tunnel's local entrance.

    helper.py ping PORT                 PING on a new connection; prints ms
    helper.py deadlink PORT idle|busy LIMIT CMD...
        PING once, then run CMD (which blackholes the link) with the
        connection idle, or while commands flow; prints how long until the
        tunnel closed the connection; exit 1 if still open after LIMIT s.
    helper.py get URL                   prints an HTTP body (metrics)
    helper.py banner PORT               reads a server-first banner line
        without sending anything first, then one echoed line; prints it
    helper.py origin HOST PORT BIND CMD...
        connects from BIND (the application's address) to a tunnel's
        entrance whose backend is `serve-proxy`; prints the application's
        address, the source the backend read in the PROXY header, and,
        from the /connections JSON that CMD prints while the connection is
        open, the origin and source the server end lists; exit 1 unless
        both are the application's address
    helper.py serve-banner HOST PORT    a backend that speaks first ("220 ...")
        then echoes lines
    helper.py serve-proxy HOST PORT     a backend that reads a PROXY header
        (v1 or v2) and answers with "SRC addr DST addr" in one line
"""

import errno
import ipaddress
import json
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

BANNER = b"220 backend.netns ESMTP dctunnel netns suite\r\n"


def connect(port):
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def pong(s):
    s.sendall(b"PING\r\n")
    got = b""
    while not got.endswith(b"\r\n"):
        chunk = s.recv(64)
        if not chunk:
            raise SystemExit(f"connection closed before a reply (got {got!r})")
        got += chunk
    if got != b"+PONG\r\n":
        raise SystemExit(f"unexpected reply {got!r}")


def ping(port):
    started = time.monotonic()
    s = connect(port)
    pong(s)
    print(f"{(time.monotonic() - started) * 1000:.1f}")
    s.close()


def closed_by_peer(s):
    """Whether a readable socket says the tunnel closed it."""
    try:
        return s.recv(65536) == b""
    except ConnectionError:
        return True
    except OSError as e:
        return e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT)


def deadlink(port, mode, limit, cmd):
    limit = float(limit)
    s = connect(port)
    pong(s)
    if mode == "idle":
        subprocess.run(cmd, check=True)
        start = time.monotonic()
        s.settimeout(None)
        while time.monotonic() - start < limit:
            r, _, _ = select.select([s], [], [], 0.2)
            if r and closed_by_peer(s):
                return report(start, limit, True)
        return report(start, limit, False)
    # busy: commands flow both ways for a moment, then the link goes while
    # they go on being written.
    s.setblocking(False)
    burst = b"PING\r\n" * 512
    flowing_since = time.monotonic()
    start = None
    replies = 0
    while True:
        now = time.monotonic()
        if start is None and now - flowing_since > 0.5:
            if replies == 0:
                raise SystemExit("no reply flowed before the blackhole")
            subprocess.run(cmd, check=True)
            start = time.monotonic()
        if start is not None and now - start > limit:
            return report(start, limit, False)
        r, w, _ = select.select([s], [s], [], 0.2)
        if r:
            try:
                data = s.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                return report(start or now, limit, True)
            if data:
                replies += data.count(b"\r\n")
        if w:
            try:
                s.send(burst)
            except BlockingIOError:
                pass
            except OSError:
                return report(start or now, limit, True)


def report(start, limit, closed):
    took = time.monotonic() - start
    if closed:
        print(f"closed by the tunnel {took:.1f}s after the blackhole")
        sys.exit(0)
    print(f"still open {took:.1f}s after the blackhole (limit {limit:.0f}s)")
    sys.exit(1)


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        sys.stdout.write(r.read().decode())


def read_line(s, limit=10):
    s.settimeout(limit)
    got = b""
    while not got.endswith(b"\r\n"):
        try:
            chunk = s.recv(1)
        except socket.timeout:
            raise SystemExit(f"no full line within {limit}s (got {got!r})")
        if not chunk:
            raise SystemExit(f"connection closed before a full line (got {got!r})")
        got += chunk
    return got


def banner(port):
    s = connect(port)
    # Nothing is sent before the banner arrives.
    line = read_line(s)
    if not line.startswith(b"220 "):
        raise SystemExit(f"no 220 banner first: {line!r}")
    s.sendall(b"EHLO client.netns\r\n")
    echo = read_line(s)
    if echo != b"EHLO client.netns\r\n":
        raise SystemExit(f"unexpected echo {echo!r}")
    print(line.decode().strip())
    s.close()


def origin(host, port, bind, cmd):
    s = socket.create_connection((host, int(port)), timeout=10, source_address=(bind, 0))
    app = "%s:%d" % s.getsockname()[:2]
    line = read_line(s).decode().split()
    if len(line) != 4 or line[0] != "SRC":
        raise SystemExit(f"app {app}: the backend said {line!r}")
    seen = line[1]
    listed = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
    s.close()
    in_use = [c for c in listed if not c.get("warm")]
    print(
        f"app {app} | PROXY source {seen} | /connections in use: "
        + ", ".join(f"origin {c.get('origin')} source {c.get('source')}" for c in in_use)
    )
    ok = seen == app and any(
        c.get("origin") == app and c.get("source") != app for c in in_use
    )
    sys.exit(0 if ok else 1)


def serve(host, port, handle):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def echo_lines(conn):
    try:
        while True:
            data = conn.recv(4096)
            if not data:
                break
            conn.sendall(data)
    except OSError:
        pass
    conn.close()


def banner_backend(conn):
    conn.sendall(BANNER)
    echo_lines(conn)


def recv_exact(conn, n):
    got = b""
    while len(got) < n:
        chunk = conn.recv(n - len(got))
        if not chunk:
            raise EOFError
        got += chunk
    return got


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_header(conn):
    """The source and destination of a PROXY header, v1 or v2."""
    first = recv_exact(conn, 16)
    if first.startswith(b"PROXY "):
        line = first
        while not line.endswith(b"\r\n"):
            line += recv_exact(conn, 1)
        _, _, src, dst, sport, dport = line.decode().split()
        return f"{src}:{sport}", f"{dst}:{dport}"
    if first[:12] != V2_SIGNATURE:
        raise ValueError(f"no PROXY header: {first!r}")
    family, length = first[13], struct.unpack("!H", first[14:16])[0]
    body = recv_exact(conn, length)
    if family == 0x11:  # TCP over IPv4
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
    elif family == 0x21:  # TCP over IPv6
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
    else:
        raise ValueError(f"PROXY v2 family {family:#x}")
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    fmt = (lambda a, p: f"[{a}]:{p}") if family == 0x21 else (lambda a, p: f"{a}:{p}")
    return fmt(src, sport), fmt(dst, dport)


def proxy_backend(conn):
    try:
        src, dst = proxy_header(conn)
        conn.sendall(f"SRC {src} DST {dst}\r\n".encode())
    except (OSError, ValueError, EOFError) as e:
        print(f"bad connection: {e}", flush=True)
        conn.close()
        return
    print(f"PROXY source {src} destination {dst}", flush=True)
    echo_lines(conn)


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "ping":
        ping(*args)
    elif what == "deadlink":
        deadlink(args[0], args[1], args[2], args[3:])
    elif what == "get":
        get(*args)
    elif what == "banner":
        banner(*args)
    elif what == "origin":
        origin(args[0], args[1], args[2], args[3:])
    elif what == "serve-banner":
        serve(args[0], args[1], banner_backend)
    elif what == "serve-proxy":
        serve(args[0], args[1], proxy_backend)
    else:
        raise SystemExit(__doc__)
