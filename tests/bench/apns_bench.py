#!/usr/bin/python3
"""apns_bench: pushes per second through apple-auth-proxy and through HAProxy to one HTTP/2 upstream.

    /usr/bin/python3 tests/bench/apns_bench.py --binary build/apple-auth-proxy

`make bench` runs it as its test 8 (tests/bench/bench.py imports run()); alone it prints the
same figures. On 127.0.0.1, with ports chosen at run time and files in a temporary directory:
  - the upstream: nghttpd (Debian's nghttp2-server) serving TLS with a test certificate
    (tests/upstream/certs.py), answering POST /3/device/<token> with 200 and no body, as APNs
    does for a push it accepts (it checks no token: the proxies' work is what is measured).
    Alone on one connection it answers about six times the pushes either proxy passes, so it
    is not what limits them;
  - like for like, access logs off on both:
      aap      apple-auth-proxy with an apns credential ("workers": 1, "access_log" off), its
               route to https://api.push.apple.com at the upstream's address: HTTP/1.1 in,
               HTTP/2 out, a token minted per team;
      haproxy  HAProxy 2.6 (nbthread 1, no log) with the same front and back: "proto h2 alpn
               h2", verified TLS with SNI, and the token pasted into an "http-request
               set-header" (HAProxy cannot mint one);
  - as shipped, one JSON line per push on both:
      aap-shipped      the same proxy with only "workers": 1 set beyond the credential and the
                       route: its default access log (JSON lines to stdout, here a file);
      haproxy-logged   HAProxy as above with a JSON log-format to stdout (a file);

then runs wrk (-t1, BENCH_CLIENTS keep-alive connections, default 100) posting a small alert
payload, alternating between the four for BENCH_ROUNDS rounds (default 5) of BENCH_SECONDS
(default 5) each. For each round: pushes/s, CPU per push of the proxy and of the upstream,
latency percentiles, and the TCP connections each proxy holds to the upstream halfway through
the round (its sockets, read from /proc). Prints the medians and the ratios; nothing here
asserts a timing. The machine's other load shows in the spread of the rounds.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
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
TEAM_ID = "DEF123GHIJ"
KEY_ID = "ABC123DEFG"
# The variants, in the order each round runs them, and their like-for-like peers.
VARIANTS = ("aap", "haproxy", "aap-shipped", "haproxy-logged")
PAIRS = (("aap", "haproxy"), ("aap-shipped", "haproxy-logged"))
LUA = """wrk.method = "POST"
wrk.body = '{"aps":{"alert":{"title":"Bench","body":"one push"}}}'
wrk.headers["apns-topic"] = "com.example.app"
wrk.headers["apns-push-type"] = "alert"
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.status, e.connect + e.read + e.write + e.timeout, latency:percentile(50),
    latency:percentile(99)))
end
"""
# HAProxy's JSON line per request, with the fields of the proxy's own access log that HAProxy
# has (time, client, method, path, status, bytes, duration).
HAPROXY_LOG_FORMAT = ('{\\"time\\":\\"%tr\\",\\"remote\\":\\"%ci\\",\\"method\\":\\"%HM\\",'
                      '\\"path\\":\\"%HU\\",\\"status\\":%ST,\\"bytes_out\\":%B,'
                      '\\"duration_ms\\":%Ta,\\"upstream_ms\\":%Tr}')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("a process of the benchmark exited (%s) before listening on %d" %
                               (proc.returncode, port))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on port %d" % port)


def missing_tools():
    return [t for t in ("nghttpd", "wrk") if shutil.which(t) is None]


def cpu_seconds(pid):
    """User + system CPU time of a process (all its threads), in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, IndexError, ValueError):
        return 0.0


def upstream_sockets(pid, port):
    """Established TCP connections of process pid to 127.0.0.1:port (its descriptors matched
    with /proc/net/tcp), so that each proxy's count is its own."""
    inodes = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return None
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[3] == "01" and int(cols[2].split(":")[1], 16) == port and cols[9] in inodes:
                n += 1
    return n


class Bench:
    def __init__(self, binary, tmp, log):
        self.binary, self.tmp, self.log = os.path.abspath(binary), tmp, log
        self.procs = {}
        self.ports = {}
        self.c = certs.make_certs(os.path.join(tmp, "certs"))

    def spawn(self, name, argv):
        out = open(os.path.join(self.tmp, name + ".out"), "wb")
        err = open(os.path.join(self.tmp, name + ".err"), "wb")
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             cwd=self.tmp)
        out.close()
        err.close()
        self.procs[name] = p
        return p

    def start_upstream(self):
        www = os.path.join(self.tmp, "www", "3", "device")
        os.makedirs(www)
        open(os.path.join(www, DEVICE), "w").close()
        self.up_port = free_port()
        p = self.spawn("upstream", ["nghttpd", "-d", os.path.join(self.tmp, "www"),
                                    str(self.up_port), self.c["good_key"], self.c["good_cert"]])
        wait_port(self.up_port, p)

    def write_private(self, name, text):
        path = os.path.join(self.tmp, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def aap_config(self, name, shipped):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        key_path = os.path.join(self.tmp, "AuthKey_%s.p8" % KEY_ID)
        if not os.path.exists(key_path):
            key = ec.generate_private_key(ec.SECP256R1())
            self.write_private(os.path.basename(key_path), key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()).decode())
        port, admin = free_port(), free_port()
        cfg = {"listen": ["127.0.0.1:%d" % port], "admin_listen": "127.0.0.1:%d" % admin,
               "workers": 1,
               "credentials": {"push": {"profile": "apns", "key_id": KEY_ID, "team_id": TEAM_ID,
                                        "private_key_file": key_path}},
               "routes": [{"path_prefix": "/3/device/", "upstream": "https://api.push.apple.com",
                           "address": "127.0.0.1:%d" % self.up_port, "ca_file": self.c["ca_cert"],
                           "credential": "push"}]}
        if not shipped:
            cfg["access_log"] = {"path": "off"}
        return port, admin, self.write_private(name + ".json", json.dumps(cfg, indent=2))

    def start_aap(self, name, shipped, binary=None):
        port, admin, path = self.aap_config(name, shipped)
        self.ports[name] = port
        self.admin = getattr(self, "admin", {})
        self.admin[name] = admin
        wait_port(port, self.spawn(name, [binary or self.binary, "serve", "--config", path]))

    def token(self):
        _, _, path = self.aap_config("token", False)
        return subprocess.run([self.binary, "token", "--config", path], capture_output=True,
                              text=True, check=True).stdout.strip()

    def start_haproxy(self, name, logged, token):
        port = free_port()
        log = ("    log stdout format raw local0\n" if logged else "")
        fe_log = ("    log global\n    log-format \"%s\"\n" % HAPROXY_LOG_FORMAT if logged else "")
        cfg = ("global\n    nbthread 1\n    maxconn 4096\n    ssl-server-verify required\n" + log +
               "defaults\n    mode http\n    option http-keep-alive\n    timeout connect 5s\n"
               "    timeout client 600s\n    timeout server 60s\n"
               "    timeout http-keep-alive 600s\n    http-reuse always\n"
               "frontend fe\n    bind 127.0.0.1:%d\n" % port + fe_log +
               "    default_backend apns\n"
               "backend apns\n    http-request set-header authorization \"bearer %s\"\n"
               "    server apns 127.0.0.1:%d ssl verify required ca-file %s "
               "sni str(api.push.apple.com) verifyhost api.push.apple.com alpn h2 proto h2\n"
               % (token, self.up_port, self.c["ca_cert"]))
        path = self.write_private(name + ".cfg", cfg)
        self.ports[name] = port
        wait_port(port, self.spawn(name, ["haproxy", "-db", "-f", path]))

    def wrk(self, name, seconds, clients, lua):
        """One wrk run against variant name: its figures, with the CPU the proxy and the
        upstream used meanwhile and the proxy's upstream connections halfway through."""
        pid, up = self.procs[name].pid, self.procs["upstream"].pid
        c0, u0 = cpu_seconds(pid), cpu_seconds(up)
        w = subprocess.Popen(["wrk", "-t1", "-c%d" % clients, "-d%ds" % seconds, "--timeout",
                              "10s", "-s", lua,
                              "http://127.0.0.1:%d/3/device/%s" % (self.ports[name], DEVICE)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(seconds / 2.0)
        conns = upstream_sockets(pid, self.up_port)
        out = w.communicate(timeout=seconds + 60)[0]
        c1, u1 = cpu_seconds(pid), cpu_seconds(up)
        m = re.search(r"^RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", out, re.M)
        if m is None:
            raise RuntimeError("wrk printed no result:\n" + out)
        requests, duration_us, non2xx, errors, p50, p99 = map(int, m.groups())
        if non2xx or errors:
            raise RuntimeError("%s: %d non-2xx answers, %d socket errors" % (name, non2xx,
                                                                            errors))
        return {"pushes": requests, "pushes_per_s": requests / (duration_us / 1e6),
                "proxy_cpu_us_per_push": (c1 - c0) * 1e6 / requests if requests else None,
                "upstream_cpu_us_per_push": (u1 - u0) * 1e6 / requests if requests else None,
                "p50_ms": p50 / 1e3, "p99_ms": p99 / 1e3, "upstream_connections": conns}

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def run(binary, seconds=5, rounds=5, clients=100, log=print, baseline=None):
    """Runs the benchmark; returns the results (the medians per variant, each round's figures,
    the ratios). Variants whose tool is missing (HAProxy) are left out. baseline: another build
    of the proxy, measured as the variant aap-baseline (log off) in the same rounds, so that a
    change is compared with what it changes under the same load."""
    d = tempfile.mkdtemp(prefix="aap-apns-bench-")
    b = Bench(binary, d, log)
    try:
        b.start_upstream()
        variants = [v for v in VARIANTS if shutil.which("haproxy") or
                    not v.startswith("haproxy")]
        if baseline:
            variants.insert(1, "aap-baseline")
        token = b.token()
        for v in variants:
            if v.startswith("aap"):
                b.start_aap(v, v == "aap-shipped",
                            os.path.abspath(baseline) if v == "aap-baseline" else None)
            else:
                b.start_haproxy(v, v == "haproxy-logged", token)
        lua = os.path.join(d, "post.lua")
        with open(lua, "w") as f:
            f.write(LUA)
        for v in variants:  # warm-up: connections, token, allocator
            b.wrk(v, 1, clients, lua)
        per = {v: [] for v in variants}
        for r in range(rounds):
            for v in variants:
                x = b.wrk(v, seconds, clients, lua)
                per[v].append(x)
                log("  round %d %-15s %8.0f pushes/s  CPU %.1f us/push (upstream %.1f)  "
                    "p99 %.2f ms  upstream connections %s" % (
                        r + 1, v, x["pushes_per_s"], x["proxy_cpu_us_per_push"] or 0,
                        x["upstream_cpu_us_per_push"] or 0, x["p99_ms"],
                        x["upstream_connections"]))
        out = {"clients": clients, "workers": 1, "seconds": seconds, "rounds": rounds}
        for v in variants:
            med = {k: statistics.median([x[k] for x in per[v] if x[k] is not None])
                   for k in ("pushes_per_s", "proxy_cpu_us_per_push", "upstream_cpu_us_per_push",
                             "p50_ms", "p99_ms")}
            med["upstream_connections_max"] = max(x["upstream_connections"] or 0 for x in per[v])
            med["rounds"] = per[v]
            out[v] = med
        for v in (v for v in variants if v.startswith("aap")):
            # The proxy's own count, beside the sockets: the HTTP/2 connections it holds.
            try:
                text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % b.admin[v],
                                              timeout=10).read().decode()
                m = re.search(r"^apple_auth_proxy_http2_connections (\d+)", text, re.M)
                out[v]["http2_connections_metric"] = int(m.group(1)) if m else None
            except OSError:
                out[v]["http2_connections_metric"] = None
        for a, h in PAIRS + ((("aap-baseline", "haproxy"),) if baseline else ()):
            if h in out:
                out["ratio_" + a] = out[a]["pushes_per_s"] / out[h]["pushes_per_s"]
        return out
    finally:
        b.stop()
        if os.environ.get("BENCH_KEEP_TMP") == "1":
            log("  kept %s" % d)
        else:
            shutil.rmtree(d, ignore_errors=True)


def report(out, write=print):
    for a, h in PAIRS + ((("aap-baseline", "haproxy"),) if "aap-baseline" in out else ()):
        for v in (a, h):
            if v in out:
                write("median  %-15s %9.0f pushes/s  CPU %5.1f us/push  p99 %6.2f ms  "
                      "upstream connections (per worker) %d" % (
                          v, out[v]["pushes_per_s"], out[v]["proxy_cpu_us_per_push"],
                          out[v]["p99_ms"], out[v]["upstream_connections_max"]))
        if "ratio_" + a in out:
            write("ratio   %s / %s: %.2fx (target 1.2x)" % (a, h, out["ratio_" + a]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(SOURCE_DIR, "build", "apple-auth-proxy"))
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--baseline", metavar="BINARY",
                    help="another build of the proxy, measured beside --binary in every round "
                         "(variant aap-baseline, log off), to compare a change")
    args = ap.parse_args(argv)
    missing = missing_tools()
    if missing:
        sys.exit("apns_bench: %s missing (apt-get install nghttp2-server haproxy wrk)" %
                 " and ".join(missing))
    out = run(args.binary, int(os.environ.get("BENCH_SECONDS", "5")),
              int(os.environ.get("BENCH_ROUNDS", "5")),
              int(os.environ.get("BENCH_CLIENTS", "100")),
              log=lambda s: print(s, flush=True), baseline=args.baseline)
    report(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
