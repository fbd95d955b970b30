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
"""

import errno
import select
import socket
import subprocess
import sys
import time
import urllib.request


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


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "ping":
        ping(*args)
    elif what == "deadlink":
        deadlink(args[0], args[1], args[2], args[3:])
    elif what == "get":
        get(*args)
    else:
        raise SystemExit(__doc__)
