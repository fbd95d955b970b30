#!/usr/bin/env python3
"""Test clients for the booted-systemd suite, run inside the container's
network namespace (nsenter -n) against the tunnel's plaintext entrance,
with Redis behind it.

  client.py hold PORT         one connection kept open: each line read on
                              stdin is sent as ECHO, the reply printed
  client.py loop PORT STOP [CA CERT KEY NAME]
                              new connections (PING) one after another until
                              the file STOP exists; prints a JSON summary.
                              With CA, CERT, KEY and NAME: mutual TLS to a
                              server-mode port, as a remote dctunnel would.
  client.py post PORT PATH CA BODY [CERT KEY | --token TOKEN]
                              one HTTP POST over TLS to the online CA (server
                              name ca.test), the body read from the file BODY;
                              prints the status, then the answer's body.
"""
import json
import os
import socket
import sys
import time


def read_reply(s):
    data = b""
    while not data.endswith(b"\r\n") or (data.startswith(b"$") and data.count(b"\r\n") < 2):
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed by the tunnel")
        data += chunk
    return data


def hold(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    for line in sys.stdin:
        word = line.strip()
        try:
            s.sendall(b"ECHO " + word.encode() + b"\r\n")
            reply = read_reply(s).split(b"\r\n")
            print(reply[1].decode() if reply[0].startswith(b"$") else reply[0].decode(), flush=True)
        except Exception as e:  # the harness reads this line
            print(f"error: {e}", flush=True)


def loop(port, stop, tls=None):
    ok = refused = other = 0
    longest = 0.0
    errors = []
    context = None
    if tls:
        import ssl
        ca, cert, key, name = tls
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(ca)
        context.load_cert_chain(cert, key)
    while not os.path.exists(stop):
        t0 = time.monotonic()
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            with (context.wrap_socket(raw, server_hostname=tls[3]) if context else raw) as s:
                s.sendall(b"PING\r\n")
                if read_reply(s) == b"+PONG\r\n":
                    ok += 1
                else:
                    other += 1
        except ConnectionRefusedError:
            refused += 1
        except Exception as e:
            other += 1
            if len(errors) < 5:
                errors.append(repr(e))
        longest = max(longest, time.monotonic() - t0)
    print(json.dumps({"ok": ok, "refused": refused, "other": other,
                      "longest_ms": round(longest * 1000, 1), "errors": errors}))


def post(port, path, ca, body, rest):
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    headers = ""
    if rest and rest[0] == "--token":
        headers = f"Authorization: Bearer {rest[1]}\r\n"
    elif rest:
        context.load_cert_chain(rest[0], rest[1])
    with open(body, "rb") as f:
        data = f.read()
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    with context.wrap_socket(raw, server_hostname="ca.test") as s:
        s.sendall((f"POST {path} HTTP/1.1\r\nHost: ca.test\r\n{headers}"
                   f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, rest_body = answer.partition(b"\r\n\r\n")
    print(head.split(b" ")[1].decode())
    print(rest_body.decode())


if __name__ == "__main__":
    if sys.argv[1] == "hold":
        hold(int(sys.argv[2]))
    elif sys.argv[1] == "loop":
        loop(int(sys.argv[2]), sys.argv[3], sys.argv[4:8] or None)
    elif sys.argv[1] == "post":
        post(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
    else:
        sys.exit(f"unknown mode {sys.argv[1]!r}")
