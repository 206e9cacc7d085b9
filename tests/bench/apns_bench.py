#!/usr/bin/python3
"""apns_bench: pushes per second through apple-auth-proxy and through HAProxy to one HTTP/2 upstream.

    /usr/bin/python3 tests/bench/apns_bench.py --binary build/apple-auth-proxy

On 127.0.0.1, with ports chosen at run time and files in a temporary directory:
  - the upstream: nghttpd (Debian's nghttp2-server) serving TLS with a test certificate
    (tests/upstream/certs.py), answering POST /3/device/<token> with 200 and no body, as APNs
    does for a push it accepts (it checks no token: the proxies' work is what is measured);
  - apple-auth-proxy with an apns credential ("workers": 1, access log off), its route to
    https://api.push.apple.com at the upstream's address: HTTP/1.1 in, HTTP/2 out, a token
    minted per team;
  - HAProxy 2.6 (nbthread 1, access log off) with the same front and back: "proto h2 alpn h2",
    verified TLS with SNI, and the token pasted into an "http-request set-header" (HAProxy
    cannot mint one);

then runs wrk (-t1, BENCH_CLIENTS keep-alive connections, default 100) posting a small alert
payload, alternating between the two for BENCH_ROUNDS rounds (default 5) of BENCH_SECONDS
(default 5) each, and prints each round, the medians, the ratio, and the HTTP/2 connections the
proxy used (apple_auth_proxy_http2_connections). Nothing here asserts a timing. The machine's
other load shows in the spread of the rounds: read the medians with it.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "upstream"))
import certs  # noqa: E402

DEVICE = "a" * 64
LUA = """wrk.method = "POST"
wrk.body = '{"aps":{"alert":{"title":"Bench","body":"one push"}}}'
wrk.headers["apns-topic"] = "com.example.app"
wrk.headers["apns-push-type"] = "alert"
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d\\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
"""


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on port %d" % port)


def need(tool):
    if shutil.which(tool) is None:
        sys.exit("apns_bench: %s is missing (apt-get install nghttp2-server haproxy wrk)" % tool)


def run_wrk(port, seconds, clients, lua):
    out = subprocess.run(["wrk", "-t1", "-c%d" % clients, "-d%ds" % seconds, "-s", lua,
                          "http://127.0.0.1:%d/3/device/%s" % (port, DEVICE)],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"^RESULT (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    if m is None:
        raise RuntimeError("wrk printed no result:\n" + out)
    requests, duration_us, non2xx, errors = map(int, m.groups())
    if non2xx or errors:
        raise RuntimeError("port %d: %d non-2xx answers, %d socket errors" % (port, non2xx,
                                                                           errors))
    return requests / (duration_us / 1e6)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(SOURCE_DIR, "build", "apple-auth-proxy"))
    args = ap.parse_args(argv)
    for tool in ("nghttpd", "haproxy", "wrk"):
        need(tool)
    seconds = int(os.environ.get("BENCH_SECONDS", "5"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    clients = int(os.environ.get("BENCH_CLIENTS", "100"))
    d = tempfile.mkdtemp(prefix="aap-apns-bench-")
    procs = []
    try:
        c = certs.make_certs(os.path.join(d, "certs"))
        www = os.path.join(d, "www", "3", "device")
        os.makedirs(www)
        open(os.path.join(www, DEVICE), "w").close()
        up_port, px_port, ha_port, admin_port = (free_port() for _ in range(4))
        procs.append(subprocess.Popen(["nghttpd", "-d", os.path.join(d, "www"), str(up_port),
                                       c["good_key"], c["good_cert"]],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(up_port)

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        key = ec.generate_private_key(ec.SECP256R1())
        key_path = os.path.join(d, "AuthKey_ABC123DEFG.p8")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        cfg = {"listen": ["127.0.0.1:%d" % px_port], "admin_listen": "127.0.0.1:%d" % admin_port,
               "workers": 1, "access_log": {"path": "off"},
               "credentials": {"push": {"profile": "apns", "key_id": "ABC123DEFG",
                                        "team_id": "DEF123GHIJ", "private_key_file": key_path}},
               "routes": [{"path_prefix": "/3/device/", "upstream": "https://api.push.apple.com",
                           "address": "127.0.0.1:%d" % up_port, "ca_file": c["ca_cert"],
                           "credential": "push"}]}
        cfg_path = os.path.join(d, "proxy.json")
        fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f)
        token = subprocess.run([args.binary, "token", "-c", cfg_path], capture_output=True,
                               text=True, check=True).stdout.strip()
        procs.append(subprocess.Popen([args.binary, "serve", "-c", cfg_path],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ha_cfg = os.path.join(d, "haproxy.cfg")
        with open(ha_cfg, "w") as f:
            f.write("global\n    nbthread 1\n    maxconn 4096\n"
                    "defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n"
                    "    timeout server 60s\n    http-reuse always\n"
                    "frontend fe\n    bind 127.0.0.1:%d\n    default_backend apns\n"
                    "backend apns\n    http-request set-header authorization \"bearer %s\"\n"
                    "    server apns 127.0.0.1:%d ssl verify required ca-file %s "
                    "sni str(api.push.apple.com) verifyhost api.push.apple.com alpn h2 proto h2\n"
                    % (ha_port, token, up_port, c["ca_cert"]))
        procs.append(subprocess.Popen(["haproxy", "-db", "-f", ha_cfg],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(px_port)
        wait_port(ha_port)
        lua = os.path.join(d, "post.lua")
        with open(lua, "w") as f:
            f.write(LUA)
        run_wrk(px_port, 1, clients, lua)  # warm-up: connections, token, pools
        run_wrk(ha_port, 1, clients, lua)
        res = {"apple-auth-proxy": [], "haproxy": []}
        for r in range(rounds):
            for name, port in (("apple-auth-proxy", px_port), ("haproxy", ha_port)):
                rps = run_wrk(port, seconds, clients, lua)
                res[name].append(rps)
                print("round %d  %-17s %9.0f pushes/s" % (r + 1, name, rps), flush=True)
        metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin_port).read()
        conns = re.search(rb"^apple_auth_proxy_http2_connections (\d+)", metrics, re.M)
        a = statistics.median(res["apple-auth-proxy"])
        b = statistics.median(res["haproxy"])
        print("median    apple-auth-proxy %9.0f pushes/s" % a)
        print("median    haproxy          %9.0f pushes/s" % b)
        print("ratio     %.2fx (target 1.2x)" % (a / b))
        print("HTTP/2 connections the proxy used: %s (target: at most 1 per worker)" % (
            conns.group(1).decode() if conns else "?"))
        return 0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
