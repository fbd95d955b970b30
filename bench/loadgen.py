"""Load the suite generates itself (the rest is iperf3 and redis-benchmark):
many idle Redis connections held open, and the time to a first reply byte.
"""

import asyncio
import socket
import ssl
import time

PING = b"PING\r\n"
PONG = b"+PONG\r\n"


def ping_once(port, timeout=10.0):
    """One fresh connection, one PING; True if +PONG came back."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(PING)
            got = b""
            while len(got) < len(PONG):
                chunk = s.recv(len(PONG) - len(got))
                if not chunk:
                    break
                got += chunk
            return got == PONG
    except OSError:
        return False


def first_byte_seconds(port, timeout=10.0):
    """Seconds from connect() to the first byte of the backend's reply to a
    PING sent as soon as the connection is up."""
    start = time.perf_counter()
    with socket.socket() as s:
        s.settimeout(timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect(("127.0.0.1", port))
        s.sendall(PING)
        first = s.recv(1)
        elapsed = time.perf_counter() - start
        if first != PONG[:1]:
            raise RuntimeError(f"unexpected first byte {first!r}")
        rest = b""
        while len(rest) < len(PONG) - 1:
            chunk = s.recv(len(PONG) - 1 - len(rest))
            if not chunk:
                break
            rest += chunk
    return elapsed


def tls_ping(port, ca, server_name, identity=None, timeout=10.0):
    """Speaks TLS straight to a server end, presenting `identity` (cert, key)
    or no certificate; says what was negotiated and whether the backend
    answered."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if identity:
        ctx.load_cert_chain(str(identity[0]), str(identity[1]))
    result = {"answered": False, "protocol": "?", "cipher": "?", "error": ""}
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=server_name) as s:
                result["protocol"] = s.version()
                result["cipher"] = s.cipher()[0]
                s.sendall(PING)
                got = b""
                while len(got) < len(PONG):
                    chunk = s.recv(len(PONG) - len(got))
                    if not chunk:
                        break
                    got += chunk
                result["answered"] = got == PONG
    except (OSError, ssl.SSLError) as e:
        result["error"] = str(e)
    return result


class IdlePool:
    """Redis connections opened through a tunnel and left idle. Each is
    checked end to end (PING answered by the backend) when opened."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.conns = []

    async def _open_one(self, port, sem, timeout):
        async with sem:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), timeout
                )
            except (OSError, asyncio.TimeoutError) as e:
                return None, f"connect: {e!r}"
            try:
                w.write(PING)
                got = await asyncio.wait_for(r.readexactly(len(PONG)), timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                w.transport.abort()
                return None, f"ping: {e!r}"
            if got != PONG:
                w.transport.abort()
                return None, f"ping: got {got!r}"
            return (r, w), None

    def open(self, port, n, concurrency=64, timeout=30.0):
        """Opens `n` more connections; returns the list of errors."""

        async def go():
            sem = asyncio.Semaphore(concurrency)
            return await asyncio.gather(
                *(self._open_one(port, sem, timeout) for _ in range(n))
            )

        errors = []
        for conn, err in self.loop.run_until_complete(go()):
            if conn is not None:
                self.conns.append(conn)
            else:
                errors.append(err)
        return errors

    def ping_all(self, concurrency=256, timeout=30.0):
        """PINGs every held connection again; returns the number that
        answered."""

        async def one(rw, sem):
            r, w = rw
            async with sem:
                try:
                    w.write(PING)
                    return await asyncio.wait_for(r.readexactly(len(PONG)), timeout) == PONG
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                    return False

        async def go():
            sem = asyncio.Semaphore(concurrency)
            return await asyncio.gather(*(one(c, sem) for c in self.conns))

        return sum(self.loop.run_until_complete(go()))

    def close(self):
        for _, w in self.conns:
            w.transport.abort()
        self.conns = []
        # Let the aborts run.
        self.loop.run_until_complete(asyncio.sleep(0.1))

    def __len__(self):
        return len(self.conns)


def conn_loop(port, clients, seconds, timeout=10.0):
    """`clients` loops in parallel for `seconds`, each: connect, PING, read
    +PONG, close. Returns (connections completed, list of errors); one that
    is under way when the time is up is not counted."""

    async def one_client(deadline, errors):
        done = 0
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            w = None
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
                w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                w.write(PING)
                got = await asyncio.wait_for(r.readexactly(len(PONG)), timeout)
                if got != PONG:
                    raise RuntimeError(f"got {got!r}")
                if loop.time() < deadline:
                    done += 1
            except (OSError, RuntimeError, asyncio.TimeoutError,
                    asyncio.IncompleteReadError) as e:
                errors.append(repr(e))
                if len(errors) > 100:
                    return done
            finally:
                if w is not None:
                    w.close()
        return done

    async def go():
        errors = []
        deadline = asyncio.get_running_loop().time() + seconds
        counts = await asyncio.gather(*(one_client(deadline, errors) for _ in range(clients)))
        # Let the closes run.
        await asyncio.sleep(0.05)
        return sum(counts), errors

    return asyncio.run(go())
