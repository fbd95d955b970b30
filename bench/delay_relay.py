#!/usr/bin/env python3
"""A TCP relay that delays every byte by a fixed one-way delay: a WAN link
stand-in for loopback benchmarks (tc netem is not available here).

    delay_relay.py --delay-ms 5 LISTEN_PORT:TARGET_HOST:TARGET_PORT [...]

Each mapping listens on 127.0.0.1:LISTEN_PORT and forwards to the target.
Data is held for --delay-ms in each direction. The TCP handshake to the relay
completes at once on loopback, so the relay also charges what a real link
would for it: data from the connecting side is not delivered before 3 one-way
delays after accept (SYN, SYN-ACK, then the data itself), and data from the
target not before 2 (the target could only have accepted after one delay).
A connect over the simulated link therefore costs one round trip, as on a
real one. Bandwidth is not limited. Prints "ready" once every listener is up.
"""

import argparse
import asyncio
import socket
import sys

CHUNK = 256 * 1024


async def pump(reader, writer, delay, not_before, loop):
    """Reads from `reader`, writes each chunk to `writer` once it is due."""
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                try:
                    if writer.can_write_eof():
                        writer.write_eof()
                except OSError:
                    pass
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(CHUNK)
            due = max(loop.time() + delay, not_before)
            queue.put_nowait((due, data or None))
            if not data:
                break
        await sender
    except (OSError, asyncio.IncompleteReadError):
        sender.cancel()
        writer.transport.abort()


def nodelay(writer):
    sock = writer.get_extra_info("socket")
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # no socket, or already closed by the peer
        pass


def handler(target_host, target_port, delay):
    async def handle(c_reader, c_writer):
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        try:
            t_reader, t_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            c_writer.transport.abort()
            return
        nodelay(c_writer)
        nodelay(t_writer)
        await asyncio.gather(
            pump(c_reader, t_writer, delay, accepted + 3 * delay, loop),
            pump(t_reader, c_writer, delay, accepted + 2 * delay, loop),
        )
        for w in (c_writer, t_writer):
            w.close()

    return handle


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delay-ms", type=float, default=5.0, help="one-way delay")
    p.add_argument("mapping", nargs="+", help="LISTEN_PORT:TARGET_HOST:TARGET_PORT")
    args = p.parse_args()
    delay = args.delay_ms / 1000.0
    servers = []
    for m in args.mapping:
        listen, host, port = m.split(":")
        servers.append(
            await asyncio.start_server(
                handler(host, int(port), delay), "127.0.0.1", int(listen), backlog=1024
            )
        )
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
