#!/usr/bin/python3
"""tls_connect: new TLS connections per second against an HTTPS listener, one request each.

    tls_connect.py --port PORT [--host 127.0.0.1] [--procs 4] [--seconds 5] [--path /v1/apps]
                   [--resume] [--tls13-only | --tls12-only]

Each of --procs processes loops for --seconds: connect, TLS handshake (the server certificate
is not verified: the handshake cost measured is the server's), one GET with
"Connection: close", read to the end. Without --resume every handshake is a full one (a new
process's curl, a cron script); with --resume each connection offers the session of the one
before it (a client that keeps its session, as wrk does). Prints one line of JSON:
{"connections": N, "errors": E, "resumed": R, "seconds": S, "per_s": N/S}.
"""
import argparse
import json
import multiprocessing
import socket
import ssl
import sys
import time


def worker(args, q):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if args.tls13_only:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if args.tls12_only:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
               % (args.path, args.host)).encode()
    n = errors = resumed = 0
    session = None
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((args.host, args.port), timeout=10) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with ctx.wrap_socket(raw, server_hostname=args.sni,
                                     session=session if args.resume else None) as s:
                    s.sendall(request)
                    data = b""
                    while True:
                        d = s.recv(65536)
                        if not d:
                            break
                        data += d
                    if not data.startswith(b"HTTP/1.1 200"):
                        errors += 1
                        continue
                    n += 1
                    resumed += 1 if s.session_reused else 0
                    session = s.session
        except (OSError, ssl.SSLError):
            errors += 1
    q.put((n, errors, resumed))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sni", default="localhost")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--path", default="/v1/apps")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--tls13-only", action="store_true")
    ap.add_argument("--tls12-only", action="store_true")
    args = ap.parse_args()
    q = multiprocessing.Queue()
    t0 = time.monotonic()
    ps = [multiprocessing.Process(target=worker, args=(args, q)) for _ in range(args.procs)]
    for p in ps:
        p.start()
    got = [q.get() for _ in ps]
    for p in ps:
        p.join()
    secs = time.monotonic() - t0
    n = sum(g[0] for g in got)
    print(json.dumps({"connections": n, "errors": sum(g[1] for g in got),
                      "resumed": sum(g[2] for g in got), "seconds": round(secs, 3),
                      "per_s": n / secs if secs else 0.0}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
