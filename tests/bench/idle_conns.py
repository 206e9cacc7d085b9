#!/usr/bin/python3
"""idle_conns: opens N keep-alive client connections, one request each, then holds them idle.

    idle_conns.py --port PORT [--host 127.0.0.1] [-n 10000] [--path /v1/apps] [--batch 200]
                  [--tls]

Each connection sends one HTTP/1.1 GET with keep-alive and reads the whole response
(Content-Length or chunked). Then it prints one line of JSON to stdout,
{"opened": N, "ok": K, "failed": F, "seconds": S}, and waits for a line (or EOF) on stdin;
it then checks how many connections are still open (no EOF from the server), prints
{"still_open": M} and closes them all. The soft file-descriptor limit is raised to the hard
limit at start (N needs N + a few descriptors). With --tls the connections are HTTPS (a full
TLS handshake each, the certificate not verified), opened one after another.
"""
import argparse
import json
import resource
import selectors
import select
import socket
import ssl
import sys
import time


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(need, soft)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def response_complete(buf):
    """True when buf holds one whole response (Content-Length or chunked)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = buf[:end].decode("latin-1").lower().split("\r\n")
    body = buf[end + 4:]
    length = None
    chunked = False
    for line in head[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
    if chunked:
        return body.endswith(b"0\r\n\r\n")
    if length is not None:
        return len(body) >= length
    return False


def open_tls(args, request):
    """--tls: n connections, one after another, each with a full handshake and one request.
    Returns (ok sockets, failed count)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    done, failed = [], 0
    deadline = time.monotonic() + args.timeout
    for _ in range(args.n):
        if time.monotonic() > deadline:
            failed += 1
            continue
        try:
            raw = socket.create_connection((args.host, args.port), timeout=10)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(request)
            buf = b""
            while not response_complete(buf):
                d = s.recv(65536)
                if not d:
                    break
                buf += d
        except (OSError, ssl.SSLError):
            failed += 1
            continue
        if buf.startswith(b"HTTP/1.1 200") and response_complete(buf):
            done.append(s)
        else:
            s.close()
            failed += 1
    return done, failed


def still_open_tls(done):
    """Connections the server has neither written to nor closed (no TLS record pending)."""
    still = 0
    poller = select.poll()
    for s in done:
        poller.register(s, select.POLLIN)
    ready = set(fd for fd, _ in poller.poll(0))
    for s in done:
        if s.fileno() not in ready and not s.pending():
            still += 1
    return still


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--path", default="/v1/apps")
    ap.add_argument("--host-header", default=None)
    ap.add_argument("--batch", type=int, default=200, help="connections in flight at once")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--tls", action="store_true", help="HTTPS connections")
    args = ap.parse_args()

    limit = raise_nofile(args.n + 64)
    if limit < args.n + 16:
        sys.stderr.write("idle_conns: file descriptor limit %d is too low for %d connections\n"
                         % (limit, args.n))
        return 2
    host_header = args.host_header or "%s:%d" % (args.host, args.port)
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: idle_conns\r\nAccept: */*\r\n\r\n"
               % (args.path, host_header)).encode()

    if args.tls:
        t0 = time.monotonic()
        done, failed = open_tls(args, request)
        print(json.dumps({"opened": args.n, "ok": len(done), "failed": failed,
                          "seconds": round(time.monotonic() - t0, 3)}), flush=True)
        sys.stdin.readline()
        print(json.dumps({"still_open": still_open_tls(done)}), flush=True)
        for s in done:
            s.close()
        return 0

    sel = selectors.DefaultSelector()
    done = []      # sockets whose response arrived
    failed = 0
    started = 0
    active = {}    # sock -> bytearray
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    while (started < args.n or active) and time.monotonic() < deadline:
        while started < args.n and len(active) < args.batch:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                s.connect((args.host, args.port))  # loopback: immediate
                s.sendall(request)
            except OSError:
                s.close()
                failed += 1
                started += 1
                continue
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            active[s] = bytearray()
            started += 1
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                del active[s]
                s.close()
                failed += 1
                continue
            buf = active[s]
            buf += data
            if response_complete(bytes(buf)):
                ok = buf.startswith(b"HTTP/1.1 200")
                sel.unregister(s)
                del active[s]
                if ok:
                    done.append(s)
                else:
                    s.close()
                    failed += 1
    for s in list(active):
        sel.unregister(s)
        s.close()
        failed += 1
    print(json.dumps({"opened": started, "ok": len(done), "failed": failed,
                      "seconds": round(time.monotonic() - t0, 3)}), flush=True)

    sys.stdin.readline()

    still = 0
    for s in done:
        try:
            data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data:
                still += 1  # unexpected bytes, but the connection is open
        except BlockingIOError:
            still += 1
        except OSError:
            pass
    print(json.dumps({"still_open": still}), flush=True)
    for s in done:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
