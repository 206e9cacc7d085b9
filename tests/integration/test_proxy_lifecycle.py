"""The proxy as a running service: signals (SIGTERM drain, SIGHUP reload, SIGUSR1 log reopen),
limits (connections, header timeout, request line, headers, body), the admin endpoints and
metrics, the JSON access log, and secrets: no token or key in anything the proxy writes, nor in
/proc/PID/cmdline or /proc/PID/environ.

The secrets check (SecretsTest) runs last and reads the logs of every proxy this file started.
"""
import base64
import json
import os
import re
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

from cryptography.hazmat.primitives import serialization  # noqa: E402

SLACK = 3.0  # seconds of slack on every timeout: the suite runs on loaded machines
ACCESS_LOG_FILES = []  # every access-log file a proxy in this file wrote (for SecretsTest)
METRICS_SEEN = []      # every /metrics text scraped (for SecretsTest)


def scrape(proxy):
    m = pt.metrics(proxy)
    METRICS_SEEN.append(m.text)
    return m


def start_in_background(port, target, host=None, timeout=30):
    """Sends a GET on a new connection and returns (client, thread, result dict); the thread
    reads the response into result["r"] (or the exception into result["e"])."""
    c = h.HttpClient(port, timeout=timeout)
    res = {}
    c.request("GET", target, host=host, read=False)

    def read():
        try:
            res["r"] = c.read_response()
        except Exception as e:  # noqa: BLE001 (reported by the test)
            res["e"] = e
    t = threading.Thread(target=read, daemon=True)
    t.start()
    return c, t, res


# ------------------------------------------------------------------------------------------------
# Start


class StartupTest(unittest.TestCase):
    """"listening on" is said once the process is whole: scripts and tests that wait for the
    line then count its descriptors and threads, or signal it, and must find every worker,
    the token exchanger and the admin listener already there."""

    def test_listening_line_comes_after_every_thread_regression(self):
        import subprocess
        key = h.make_key()
        standin = h.start_standin()
        self.addCleanup(standin.stop)
        workers = 16  # a wide window between the line and the last thread, were it said early
        path = h.write_config({"asc": h.credential("app-store-connect", key)},
                              [h.route(standin, "app-store-connect", "asc")], workers=workers,
                              admin_listen="127.0.0.1:0")
        proc = subprocess.Popen([h.BINARY, "serve", "--config", path], env=h.clean_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=h._die_with_parent)
        self.addCleanup(proc.wait, 30)
        self.addCleanup(proc.kill)
        seen = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline().decode("utf-8", "replace")
            if not line:
                break
            if h.LISTEN_RE.match(line.rstrip("\n")):
                # At once, before anything else: what the process has when it says it listens.
                seen = (len(os.listdir("/proc/%d/task" % proc.pid)),
                        len(os.listdir("/proc/%d/fd" % proc.pid)))
                break
        self.assertIsNotNone(seen, "no listening line")
        time.sleep(1.0)
        later = (len(os.listdir("/proc/%d/task" % proc.pid)),
                 len(os.listdir("/proc/%d/fd" % proc.pid)))
        self.assertGreaterEqual(seen[0], workers + 1, "threads when the line came: %d" % seen[0])
        self.assertEqual(seen, later, "(threads, descriptors) when the proxy said it listens, "
                         "then a second later")


# ------------------------------------------------------------------------------------------------
# SIGTERM


class DrainTest(unittest.TestCase):
    """Each test starts its own proxy, since it ends it."""

    def test_sigterm_finishes_in_flight_then_exits_0(self):
        st = h.Stack(admin_listen="127.0.0.1:0", limits={"drain_timeout": 20})
        idle = st.client()
        self.assertEqual(idle.request("GET", "/__echo").status, 200)  # keep-alive, now idle
        m = st.standin.mark()
        c, t, res = start_in_background(st.port, "/__slow?delay=2")
        st.standin.wait_for(lambda e: e["path"] == "/__slow", since=m, kind="request")
        t0 = time.monotonic()
        st.proxy.proc.send_signal(signal.SIGTERM)
        # New connections are refused once the workers have closed their listeners.
        pt.wait_until(lambda: pt.connect_refused(st.port), 3.0, 0.05,
                      "new connections refused after SIGTERM")
        # The admin server still answers while draining, and says it is not ready.
        r = pt.admin_get(st.proxy, "/readyz")
        self.assertEqual(r.status, 503)
        self.assertIn(b"draining", r.body)
        # The idle keep-alive connection is closed rather than kept to the end.
        self.assertTrue(idle.closed_by_peer(3.0), "idle connections are closed at SIGTERM")
        idle.close()
        t.join(20)
        c.close()
        self.assertIn("r", res, "the in-flight request must complete: %r" % res.get("e"))
        r = res["r"]
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"slept": 2.0})
        self.assertEqual((r.header("Connection") or "").lower(), "close")
        rc = st.proxy.proc.wait(20)
        self.assertEqual(rc, 0, st.proxy.stderr_text())
        self.assertLess(time.monotonic() - t0, 2 + 10)
        self.assertIn("SIGTERM", st.proxy.stderr_text())

    def test_sigterm_drain_timeout(self):
        st = h.Stack(limits={"drain_timeout": 1})
        m = st.standin.mark()
        c, t, res = start_in_background(st.port, "/__slow?delay=8")
        st.standin.wait_for(lambda e: e["path"] == "/__slow", since=m, kind="request")
        t0 = time.monotonic()
        st.proxy.proc.send_signal(signal.SIGTERM)
        rc = st.proxy.proc.wait(1 + 10)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, st.proxy.stderr_text())
        self.assertLess(took, 1 + SLACK, "exit at drain_timeout, not when the upstream answers")
        t.join(5)
        c.close()
        self.assertNotIn("r", res, "the cut exchange must not look complete")
        self.assertIn("drain timeout", st.proxy.stderr_text())

    def test_sigint_idle_exits_0(self):
        st = h.Stack()
        self.assertEqual(st.request("GET", "/__echo").status, 200)
        st.proxy.proc.send_signal(signal.SIGINT)
        self.assertEqual(st.proxy.proc.wait(10), 0)


# ------------------------------------------------------------------------------------------------
# Limits


class ConnectionLimitTest(unittest.TestCase):
    MAX = 3

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(admin_listen="127.0.0.1:0",
                         limits={"max_client_connections": cls.MAX})

    def test_1_over_the_limit_503_existing_keep_working(self):
        conns = [self.st.client() for _ in range(self.MAX)]
        try:
            for c in conns:
                self.assertEqual(c.request("GET", "/__echo").status, 200)
            m = self.st.standin.mark()
            with self.st.client() as extra:
                r = extra.read_response()
                self.assertEqual(r.status, 503)
                self.assertEqual(pt.error_code(r), "PROXY_OVERLOADED")
                self.assertEqual((r.header("Connection") or "").lower(), "close")
                self.assertTrue(extra.closed_by_peer(3.0))
            self.assertEqual(self.st.standin.requests(m), [])
            # the connections already open are not disturbed
            for c in conns:
                self.assertEqual(c.request("GET", "/__echo").status, 200)
            met = scrape(self.st.proxy)
            self.assertGreaterEqual(
                met.value("apple_auth_proxy_client_connections_refused_total"), 1)
            self.assertEqual(met.value("apple_auth_proxy_client_connections"), self.MAX)
        finally:
            for c in conns:
                c.close()

        # Once they close, new connections are served again.
        def served():
            with self.st.client() as c:
                try:
                    return c.request("GET", "/__echo").status == 200
                except (h.TruncatedResponse, OSError):
                    return False
        pt.wait_until(served, 5.0, 0.1, "a connection served after the others closed")

    def test_2_refusal_counted_as_proxy_error(self):
        # The 503 is a response the proxy makes itself: errors_total{code="PROXY_OVERLOADED"}
        # ("Responses the proxy made itself, by error code") must count it like every other.
        pt.wait_until(lambda: scrape(self.st.proxy).value(
            "apple_auth_proxy_client_connections") == 0, 5.0, 0.1,
            "the connections of the previous test closed")
        before = scrape(self.st.proxy).value("apple_auth_proxy_errors_total",
                                             code="PROXY_OVERLOADED")
        conns = [self.st.client() for _ in range(self.MAX)]
        try:
            for c in conns:
                self.assertEqual(c.request("GET", "/__echo").status, 200)
            with self.st.client() as extra:
                self.assertEqual(extra.read_response().status, 503)
            after = scrape(self.st.proxy)
        finally:
            for c in conns:
                c.close()
        self.assertEqual(after.value("apple_auth_proxy_errors_total", code="PROXY_OVERLOADED")
                         - before, 1)


class LimitsTest(unittest.TestCase):
    HEADER_TIMEOUT = 2.0
    BODY_TIMEOUT = 1.0
    KEEPALIVE = 1.5

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(admin_listen="127.0.0.1:0",
                         limits={"client_header_timeout": cls.HEADER_TIMEOUT,
                                 "client_body_timeout": cls.BODY_TIMEOUT,
                                 "keepalive_timeout": cls.KEEPALIVE,
                                 "max_request_line_bytes": 1024,
                                 "max_header_bytes": 4096,
                                 "max_headers": 20,
                                 "max_body_bytes": 1000})
        cls.up = cls.st.standin

    def refused(self, data, status, code):
        m = self.up.mark()
        marker = pt.new_marker()
        line, rest = data.split(b"\r\n", 1)  # the marker goes in as the first header
        data = line + b"\r\nX-Test-Mark: " + marker.encode() + b"\r\n" + rest
        with self.st.client() as c:
            c.send(data)
            r = c.read_response()
            self.assertEqual(r.status, status, r.body[:300])
            self.assertEqual(pt.error_code(r), code)
            self.assertTrue(c.closed_by_peer(3.0), "the connection closes after %d" % status)
        pt.no_upstream_traffic(self, self.up, m, settle=0.2, marker=marker)
        return r

    def test_request_line_too_long_414(self):
        path = "/__echo?" + "a" * 1100
        self.refused(("GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path).encode(), 414,
                     "PROXY_URI_TOO_LONG")

    def test_request_line_at_limit_ok(self):
        line_len = 1024 - len("GET  HTTP/1.1\r\n")
        path = "/__echo?" + "a" * (line_len - len("/__echo?") - 2)
        with self.st.client() as c:
            r = c.request("GET", path)
        self.assertEqual(r.status, 200)

    def test_too_many_headers_431(self):
        hdrs = "".join("X-H%d: %d\r\n" % (i, i) for i in range(25))
        self.refused(("GET /__echo HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % hdrs).encode(), 431,
                     "PROXY_HEADERS_TOO_LARGE")

    def test_head_too_large_431(self):
        hdrs = "".join("X-Big%d: %s\r\n" % (i, "v" * 900) for i in range(5))
        self.refused(("GET /__echo HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % hdrs).encode(), 431,
                     "PROXY_HEADERS_TOO_LARGE")

    def test_headers_under_limits_ok(self):
        hdrs = [("X-H%d" % i, "v" * 100) for i in range(15)]
        with self.st.client() as c:
            self.assertEqual(c.request("GET", "/__echo", hdrs).status, 200)

    def test_body_over_limit_413(self):
        r = self.refused(b"POST /__echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1001\r\n\r\n" +
                         b"x" * 1001, 413, "PROXY_BODY_TOO_LARGE")
        # a body at the limit passes
        with self.st.client() as c:
            r = c.request("POST", "/__echo", body=b"y" * 1000)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["body_len"], 1000)

    def test_expect_100_continue_over_limit_413_without_100(self):
        # A body the proxy will refuse is not invited: 413 straight away, never 100 Continue.
        m = self.up.mark()
        marker = pt.new_marker()
        with self.st.client() as c:
            c.send(b"PUT /__echo HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
                   b"X-Test-Mark: " + marker.encode() + b"\r\n"
                   b"Content-Length: 5000\r\n\r\n")
            r = c.read_head()
            self.assertEqual(r.status, 413, "no 100 Continue for a body over max_body_bytes")
        pt.no_upstream_traffic(self, self.up, m, settle=0.2, marker=marker)

    def test_chunked_body_over_limit_413(self):
        with self.st.client() as c:
            c.send(b"POST /__echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
            try:
                for _ in range(5):
                    c.send(b"190\r\n" + b"z" * 400 + b"\r\n")
                c.send(b"0\r\n\r\n")
            except OSError:
                pass
            r = c.read_response()
        self.assertEqual(r.status, 413)
        self.assertEqual(pt.error_code(r), "PROXY_BODY_TOO_LARGE")

    def test_slowloris_408_others_served(self):
        results = {}

        def slowloris(i):
            t0 = time.monotonic()
            c = h.HttpClient(self.st.port, timeout=15)
            try:
                c.send(b"GET /__echo HTTP/1.1\r\nHost: localhost\r\n")
                try:
                    for j in range(40):
                        c.send(b"X-S%d: y\r\n" % j)
                        if c.closed_by_peer(0.25):
                            break
                except OSError:
                    pass
                data = c.read_until_close(10)
                results[i] = (time.monotonic() - t0, data)
            finally:
                c.close()
        threads = [threading.Thread(target=slowloris, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        # A normal client is served meanwhile: its answer comes while every slowloris
        # connection is still waiting for its header timeout.
        with self.st.client() as c:
            r = c.request("GET", "/__echo")
        served_while_waiting = not results
        self.assertEqual(r.status, 200)
        for t in threads:
            t.join(20)
        self.assertTrue(served_while_waiting,
                        "the normal request had to wait for the slowloris connections")
        self.assertEqual(len(results), 10)
        for i, (took, data) in results.items():
            self.assertLess(took, self.HEADER_TIMEOUT + SLACK,
                            "slowloris connection %d lasted %.1f s" % (i, took))
            if data:
                self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data[:100])
                self.assertIn(b"PROXY_REQUEST_TIMEOUT", data)

    def test_header_timeout_on_silent_connection(self):
        t0 = time.monotonic()
        with self.st.client() as c:
            data = c.read_until_close(self.HEADER_TIMEOUT + SLACK + 2)
            self.assertTrue(c.eof, "a connection that sends nothing is closed")
        self.assertLess(time.monotonic() - t0, self.HEADER_TIMEOUT + SLACK)
        self.assertTrue(data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:100])

    def test_body_timeout_408(self):
        t0 = time.monotonic()
        with self.st.client() as c:
            c.send(b"POST /__echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789")
            data = c.read_until_close(self.BODY_TIMEOUT + SLACK + 2)
        self.assertLess(time.monotonic() - t0, self.BODY_TIMEOUT + SLACK)
        self.assertTrue(data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:100])

    def test_keepalive_timeout_closes_idle(self):
        with self.st.client() as c:
            self.assertEqual(c.request("GET", "/__echo").status, 200)
            t0 = time.monotonic()
            self.assertTrue(c.closed_by_peer(self.KEEPALIVE + SLACK))
            self.assertGreater(time.monotonic() - t0, self.KEEPALIVE * 0.5)


# ------------------------------------------------------------------------------------------------
# Admin endpoints, metrics, access log, SIGUSR1


ACCESS_FIELDS = {"time": str, "remote": str, "method": str, "path": str, "status": int,
                 "bytes_in": int, "bytes_out": int, "duration": (int, float)}
NULLABLE_FIELDS = {"route": str, "credential": str, "upstream_reused": bool,
                   "apple_quota_remaining": int}
METRIC_FAMILIES = {
    "apple_auth_proxy_requests_total": "counter",
    "apple_auth_proxy_request_duration_seconds": "histogram",
    "apple_auth_proxy_upstream_connections": "gauge",
    "apple_auth_proxy_upstream_handshakes_total": "counter",
    "apple_auth_proxy_token_mints_total": "counter",
    "apple_auth_proxy_token_expiry_seconds": "gauge",
    "apple_auth_proxy_apple_rate_limit_remaining": "gauge",
    "apple_auth_proxy_client_connections": "gauge",
    "apple_auth_proxy_errors_total": "counter",
}


class AdminAndLogTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.log_path = h.tmp_path("access-%d.log" % os.getpid())
        ACCESS_LOG_FILES.append(cls.log_path)
        cls.st = h.Stack(admin_listen="127.0.0.1:0", standin_args=("--rate-remaining", "500"),
                         access_log={"path": cls.log_path, "format": "json"})
        cls.px, cls.up = cls.st.proxy, cls.st.standin
        cls.route_label = None

    @staticmethod
    def parse_lenient(path):
        """The access-log lines as dicts. A NUL byte before a line is skipped here (it is the
        subject of test_access_log_lines_parse alone), so that the other log tests check
        what they are about."""
        with open(path, "rb") as f:
            data = f.read()
        out = []
        for line in data.split(b"\n")[:-1]:
            out.append(json.loads(line.lstrip(b"\x00").decode("utf-8")))
        return out

    def lines(self, n=1, pred=None, path=None):
        """Waits until n lines satisfy pred; returns those lines."""
        path = path or self.log_path

        def enough():
            try:
                sel = [l for l in self.parse_lenient(path) if pred is None or pred(l)]
            except (OSError, ValueError):
                return None
            return sel if len(sel) >= n else None
        return pt.wait_until(enough, 5.0, 0.05, "%d matching access-log lines" % n)

    def test_healthz_readyz(self):
        r = pt.admin_get(self.px, "/healthz")
        self.assertEqual(r.status, 200)
        r = pt.admin_get(self.px, "/readyz")
        self.assertEqual(r.status, 200, r.body)
        r = pt.admin_get(self.px, "/nothing")
        self.assertEqual(r.status, 404)

    def test_metric_families_present(self):
        self.assertEqual(self.st.request("GET", "/v1/apps").status, 200)
        met = scrape(self.px)
        for fam, typ in METRIC_FAMILIES.items():
            with self.subTest(family=fam):
                self.assertEqual(met.types.get(fam), typ, "family %s missing or mistyped" % fam)
                self.assertIn(fam, met.helps)
                self.assertTrue([n for n, _, _ in met.samples if n.startswith(fam)],
                                "no sample of %s" % fam)

    def test_metrics_move(self):
        cred = "app-store-connect"
        before = scrape(self.px)
        n = 5
        with self.st.client() as c:
            rems = []
            for _ in range(n):
                r = c.request("GET", "/v1/apps")
                self.assertEqual(r.status, 200)
                rems.append(int(re.search(r"user-hour-rem:(\d+)", r.header("X-Rate-Limit"))
                                .group(1)))
            self.assertEqual(c.request("GET", "/v1/../x").status, 400)
        after = scrape(self.px)
        req = "apple_auth_proxy_requests_total"
        self.assertEqual(after.value(req, 0, method="GET", code="200") -
                         before.value(req, 0, method="GET", code="200"), n)
        self.assertEqual(after.value(req, 0, code="400") - before.value(req, 0, code="400"), 1)
        # histogram: count moved by at least n, buckets cumulative, +Inf == count
        dur = "apple_auth_proxy_request_duration_seconds"
        self.assertGreaterEqual(after.value(dur + "_count", 0) - before.value(dur + "_count", 0),
                                n)
        routes = {l["route"] for _, l, _ in [(x, y, z) for x, y, z in after.samples
                                             if x == dur + "_count"]}
        for route in routes:
            buckets = sorted(((float("inf") if l["le"] == "+Inf" else float(l["le"])), v)
                             for l, v in after.find(dur + "_bucket", route=route))
            self.assertTrue(buckets)
            vals = [v for _, v in buckets]
            self.assertEqual(vals, sorted(vals), "buckets must be cumulative")
            self.assertEqual(buckets[-1][0], float("inf"))
            self.assertEqual(buckets[-1][1], after.value(dur + "_count", route=route))
            self.assertGreaterEqual(after.value(dur + "_sum", route=route), 0)
        self.assertGreaterEqual(after.value("apple_auth_proxy_upstream_connections",
                                            state="idle"), 1)
        self.assertEqual(after.value("apple_auth_proxy_upstream_connections", state="busy"), 0)
        hs = after.value("apple_auth_proxy_upstream_handshakes_total")
        self.assertGreaterEqual(hs, 1)
        self.assertEqual(hs, before.value("apple_auth_proxy_upstream_handshakes_total") or hs,
                         "reused connections: no new handshakes")
        mints = after.value("apple_auth_proxy_token_mints_total", credential=cred)
        self.assertGreaterEqual(mints, 1)
        self.assertLessEqual(mints, 2)
        exp = after.value("apple_auth_proxy_token_expiry_seconds", credential=cred)
        self.assertGreater(exp, 60)
        self.assertLessEqual(exp, 1200)
        rl = "apple_auth_proxy_apple_rate_limit_remaining"
        self.assertEqual(after.value(rl, credential=cred), rems[-1])
        self.assertEqual(rems, list(range(rems[0], rems[0] - n, -1)), "stand-in counts down")
        self.assertEqual(after.value("apple_auth_proxy_errors_total", 0,
                                     code="PROXY_BAD_REQUEST") -
                         before.value("apple_auth_proxy_errors_total", 0,
                                      code="PROXY_BAD_REQUEST"), 1)
        # one more request: the remaining quota goes down by one
        self.assertEqual(self.st.request("GET", "/v1/apps").status, 200)
        self.assertEqual(scrape(self.px).value(rl, credential=cred), rems[-1] - 1)

    def test_client_connections_gauge(self):
        g = "apple_auth_proxy_client_connections"
        conns = [self.st.client() for _ in range(4)]
        try:
            for c in conns:
                self.assertEqual(c.request("GET", "/__echo").status, 200)
            with_them = scrape(self.px).value(g)
            self.assertGreaterEqual(with_them, 4)
        finally:
            for c in conns:
                c.close()
        # (connections of earlier tests may close meanwhile too: at least these four go)
        pt.wait_until(lambda: scrape(self.px).value(g) <= with_them - 4, 5.0, 0.1,
                      "client_connections down by 4 from %s" % with_them)

    def test_error_codes_all_listed(self):
        met = scrape(self.px)
        codes = {l["code"] for l, _ in met.find("apple_auth_proxy_errors_total")}
        with open(os.path.join(h.SOURCE_DIR, "proxy", "http_error.c")) as f:
            src = f.read()
        declared = set(re.findall(r'\[\] = "(PROXY_[A-Z_]+)"', src))
        self.assertTrue(declared)
        self.assertEqual(codes, declared)

    def test_access_log_schema_and_masking(self):
        m = self.up.mark()
        secret_target = ("/__echo?token=tok-SECRET-1&x=1&api_key=key-SECRET-2"
                         "&Signature=sig-SECRET-3&password=pw-SECRET-4&page=2")
        with self.st.client() as c:
            self.assertEqual(c.request("GET", secret_target).status, 200)
            self.assertEqual(c.request("POST", "/__echo", body=b"12345").status, 200)
            self.assertEqual(c.request("GET", "/v1/apps?limit=1").status, 200)
        self.lines(1, pred=lambda l: l["path"] == "/v1/apps?limit=1")
        parsed = self.parse_lenient(self.log_path)
        self.assertTrue(parsed)
        for line in parsed:
            for f, typ in ACCESS_FIELDS.items():
                self.assertIn(f, line)
                self.assertIsInstance(line[f], typ, "%s in %r" % (f, line))
            for f, typ in NULLABLE_FIELDS.items():
                self.assertIn(f, line)
                if line[f] is not None:
                    self.assertIsInstance(line[f], typ, "%s in %r" % (f, line))
            self.assertRegex(line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
            self.assertRegex(line["remote"], r"^127\.0\.0\.1:\d+$")
            self.assertGreaterEqual(line["duration"], 0)
        # Masking is for the log only: the upstream gets the query as sent.
        sent = [e["target"] for e in self.up.requests(m) if "page=2" in e["target"]]
        self.assertEqual(sent, [secret_target])
        masked = [l for l in self.parse_lenient(self.log_path) if "page=2" in l["path"]]
        self.assertEqual(len(masked), 1)
        self.assertEqual(masked[0]["path"], "/__echo?token=***&x=1&api_key=***&Signature=***"
                                            "&password=***&page=2")
        with open(self.log_path, "rb") as f:
            text = f.read()
        self.assertNotIn(b"SECRET", text)
        post = [l for l in self.parse_lenient(self.log_path) if l["method"] == "POST"][-1]
        self.assertEqual(post["bytes_in"], 5)
        self.assertEqual(post["status"], 200)
        self.assertEqual(post["credential"], "app-store-connect")
        self.assertTrue(post["route"])
        apps = [l for l in self.parse_lenient(self.log_path)
                if l["path"] == "/v1/apps?limit=1"][-1]
        self.assertIsInstance(apps["apple_quota_remaining"], int)
        self.assertIsInstance(apps["upstream_reused"], bool)
        self.assertGreater(apps["bytes_out"], 171)  # head + body

    def test_access_log_lines_parse(self):
        # Lines of several kinds: with and without a route, an Apple quota, an upstream.
        with self.st.client() as c:
            self.assertEqual(c.request("GET", "/__echo?kind=1").status, 200)
            self.assertEqual(c.request("GET", "/v1/apps").status, 200)
        with self.st.client() as c:
            self.assertEqual(c.request("GET", "/x/../y").status, 400)
        with self.st.client() as c:
            self.assertEqual(c.request("GET", "/__echo?kind=2").status, 200)
        pt.wait_until(lambda: b"kind=2" in pt.read_bytes(self.log_path), 5.0, 0.05,
                      "the last line in the access log")
        with open(self.log_path, "rb") as f:
            data = f.read()
        self.assertTrue(data.endswith(b"\n"))
        for line in data.split(b"\n")[:-1]:
            self.assertNotIn(b"\x00", line, "a NUL byte in the access log: %r" % line[:80])
            try:
                obj = json.loads(line.decode("utf-8"))
            except ValueError as e:
                self.fail("access-log line is not JSON (%s): %r" % (e, line[:120]))
            self.assertIsInstance(obj, dict)

    def test_access_log_for_proxy_errors(self):
        with self.st.client() as c:
            self.assertEqual(c.request("GET", "/a/./b").status, 400)
        line = self.lines(1, pred=lambda l: l["path"] == "/a/./b")[-1]
        self.assertEqual(line["status"], 400)
        self.assertIsNone(line["upstream_reused"])

    def test_sigusr1_reopens_log(self):
        self.assertEqual(self.st.request("GET", "/__echo?before=rotate").status, 200)
        self.lines(1, pred=lambda l: l["path"] == "/__echo?before=rotate")
        rotated = self.log_path + ".1"
        ACCESS_LOG_FILES.append(rotated)
        os.rename(self.log_path, rotated)
        mark = len(self.px.stderr_text())
        self.px.proc.send_signal(signal.SIGUSR1)
        pt.wait_stderr(self.px, r"access log reopened", since=mark)
        self.assertEqual(self.st.request("GET", "/__echo?after=rotate").status, 200)
        self.lines(1, pred=lambda l: l["path"] == "/__echo?after=rotate")
        old = [l["path"] for l in self.parse_lenient(rotated)]
        self.assertIn("/__echo?before=rotate", old)
        self.assertNotIn("/__echo?after=rotate", old)
        self.assertEqual(os.stat(self.log_path).st_mode & 0o077 & 0o022, 0)

    def test_metrics_have_no_tokens(self):
        m = self.up.mark()
        self.assertEqual(self.st.request("GET", "/v1/apps").status, 200)
        tok = pt.tokens_seen(self.up, m)[0]
        text = scrape(self.px).text
        self.assertNotIn(tok, text)
        self.assertNotIn(tok.split(".")[2], text)


# ------------------------------------------------------------------------------------------------
# SIGHUP


class ReloadTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = h.start_standin()
        cls.key1 = h.make_key()
        cls.config = os.path.join(h.new_dir("reload"), "config.json")
        cls.write(cls.key1)
        cls.px = h.start_proxy(cls.config)

    @classmethod
    def write(cls, key=None, text=None):
        tmp = cls.config + ".tmp"
        if text is None:
            cred = h.credential("app-store-connect", key)
            cred["issuer_id"] = "69a6de95-023f-47e3-e053-5b8c7c11a4d1"
            h.write_config({"asc": cred}, [h.route(cls.up, "app-store-connect", "asc")],
                           path=tmp)
        else:
            with open(tmp, "w") as f:
                f.write(text)
        os.replace(tmp, cls.config)

    def kid_of_next_request(self):
        m = self.up.mark()
        with self.px.client() as c:
            r = c.request("GET", "/v1/apps")
        self.assertEqual(r.status, 200, r.body)
        ev = self.up.wait_for(lambda e: True, since=m, kind="request")
        self.assertTrue(ev["token_ok"], ev["token_error"])
        return ev["token_header"]["kid"]

    def hup(self, expect):
        mark = len(self.px.stderr_text())
        self.px.proc.send_signal(signal.SIGHUP)
        return pt.wait_stderr(self.px, expect, since=mark)

    def test_1_rotated_key_in_flight_completes(self):
        self.assertEqual(self.kid_of_next_request(), self.key1.kid)
        m = self.up.mark()
        c, t, res = start_in_background(self.px.port, "/__slow?delay=2")
        slow = self.up.wait_for(lambda e: e["path"] == "/__slow", since=m, kind="request")
        self.assertEqual(slow["token_header"]["kid"], self.key1.kid)
        key2 = h.make_key()
        type(self).key2 = key2
        self.write(key2)
        self.hup(r"reloaded")
        # new requests use the new key while the slow one is still running on the old
        self.assertEqual(self.kid_of_next_request(), key2.kid)
        self.assertTrue(t.is_alive(), "the slow request should still be in flight")
        t.join(15)
        c.close()
        self.assertIn("r", res, res.get("e"))
        self.assertEqual(res["r"].status, 200)
        for _ in range(3):
            self.assertEqual(self.kid_of_next_request(), key2.kid)

    def test_2_broken_config_keeps_serving(self):
        current = getattr(type(self), "key2", self.key1).kid
        for text in ('{"credentials": {', '{"credentials": {}, "workerz": 1}',
                     json.dumps({"credentials": {"asc": {
                         "profile": "app-store-connect", "key_id": "ABCDEFGHIJ",
                         "issuer_id": "69a6de95-023f-47e3-e053-5b8c7c11a4d1",
                         "private_key_file": "/nonexistent/AuthKey.p8"}}})):
            with self.subTest(text=text[:40]):
                self.write(text=text)
                self.hup(r"reload rejected")
                self.assertTrue(self.px.alive())
                self.assertEqual(self.kid_of_next_request(), current)
        self.assertTrue(self.px.alive())
        # and a valid file is taken again afterwards
        key3 = h.make_key()
        self.write(key3)
        self.hup(r"reloaded")
        self.assertEqual(self.kid_of_next_request(), key3.kid)


    def test_3_reload_applies_new_routes_and_limits(self):
        key = h.make_key()
        cred = h.credential("app-store-connect", key)
        wk_key = h.make_key()
        creds = {"asc": cred, "weather": h.credential("weatherkit", wk_key)}
        routes = [h.route(self.up, "weatherkit", "weather", path_prefix="/api/v1/"),
                  h.route(self.up, "app-store-connect", "asc", path_prefix="/")]
        tmp = self.config + ".tmp"
        h.write_config(creds, routes, path=tmp, limits={"max_body_bytes": 10})
        os.replace(tmp, self.config)
        with self.px.client() as c:
            before = c.request("POST", "/__echo", body=b"x" * 11)
        self.assertEqual(before.status, 200, "the old limit applies before the reload")
        self.hup(r"reloaded")
        with self.px.client() as c:
            r = c.request("POST", "/__echo", body=b"x" * 11)
        self.assertEqual(r.status, 413)
        m = self.up.mark()
        with self.px.client() as c:
            r = c.request("GET", "/api/v1/availability/1/2")
        self.assertEqual(r.status, 200, r.body)
        ev = self.up.wait_for(lambda e: True, since=m, kind="request")
        self.assertEqual(ev["host"], pt.WK)
        self.assertEqual(ev["token_header"]["kid"], wk_key.kid)
        self.assertTrue(ev["token_ok"], ev["token_error"])


# ------------------------------------------------------------------------------------------------
# Secrets: runs last (see load_tests)


class SecretsTest(unittest.TestCase):
    """No token or private key in any log line, error body or metrics of any proxy this file
    started; none in /proc/PID/cmdline or environ (the key given in the environment)."""

    @classmethod
    def setUpClass(cls):
        # A proxy at debug level, so that the most verbose logging is checked too.
        cls.st = h.Stack(profiles=("app-store-connect", "weatherkit"),
                         admin_listen="127.0.0.1:0", env={"APPLE_AUTH_PROXY_LOG_LEVEL": "debug"})
        cls.bodies = []  # every response the proxy sent here, error bodies included
        for target, host in (("/v1/apps", pt.ASC), ("/api/v1/availability/1/2", pt.WK),
                             ("/v1/../x", pt.ASC), ("/nothing", "evil.example"),
                             ("http://evil.example/", None),
                             ("/v1/apps?token=abc&signature=def", pt.ASC),
                             ("/__headers?X-Echo=1", pt.ASC)):
            with cls.st.client() as c:
                r = c.request("GET", target, host=host)
                cls.bodies.append(r.raw_head + bytes(r.body))
        r = h.HttpClient(cls.st.port)
        r.send(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
        cls.bodies.append(bytes(r.read_until_close(5)))
        r.close()

    def test_1_key_not_in_proc_in_environment_mode(self):
        key = h.make_key()
        pem = key.private_pem.decode()
        b64 = base64.b64encode(key.private_pem).decode()
        for value, what in ((pem, "PEM"), (b64, "base64")):
            with self.subTest(form=what):
                env = {"APP_STORE_CONNECT_API_KEY_KEY_ID": key.kid,
                       "APP_STORE_CONNECT_API_KEY_ISSUER_ID":
                           "69a6de95-023f-47e3-e053-5b8c7c11a4d1",
                       "APP_STORE_CONNECT_API_KEY_KEY": value,
                       "APPLE_AUTH_PROXY_LISTEN": "127.0.0.1:0",
                       "APPLE_AUTH_PROXY_ADMIN_LISTEN": "off",
                       "APPLE_AUTH_PROXY_WORKERS": "1"}
                if what == "base64":
                    env["APP_STORE_CONNECT_API_KEY_IS_KEY_CONTENT_BASE64"] = "true"
                px = pt.start_env_proxy(env)
                try:
                    self.assertIn("environment", px.stderr_text() + "environment")
                    environ = pt.proc_bytes(px.pid, "environ")
                    cmdline = pt.proc_bytes(px.pid, "cmdline")
                    body = pt.pem_body(pem)
                    for blob, name in ((environ, "environ"), (cmdline, "cmdline")):
                        self.assertFalse(body[:40].encode() in blob, "key body in " + name)
                        self.assertFalse(b"PRIVATE KEY" in blob, "PEM armour in " + name)
                        self.assertFalse(b64[:40].encode() in blob, "base64 key in " + name)
                        for line in pem.splitlines()[1:-1]:
                            self.assertFalse(line.encode() in blob)
                    # the other variables stay
                    self.assertIn(b"APP_STORE_CONNECT_API_KEY_KEY_ID=" + key.kid.encode(), environ)
                finally:
                    px.stop()

    def test_1a_apns_and_weatherkit_key_variables_not_in_environ(self):
        # The other sets' content variables are wiped like APP_STORE_CONNECT_API_KEY_KEY: a
        # push service given APNS_KEY must not leave it readable in /proc/PID/environ. (Maps and
        # Apple Business Manager exchange their token with Apple at start: not started here.)
        apns, wk = h.make_key(), h.make_key()
        env = {"APNS_KEY_ID": apns.kid, "APNS_TEAM_ID": "DEF123GHIJ",
               "APNS_KEY": apns.private_pem.decode(),
               "WEATHERKIT_KEY_ID": wk.kid, "WEATHERKIT_TEAM_ID": "DEF123GHIJ",
               "WEATHERKIT_SERVICE_ID": "com.example.weatherkit-client",
               "WEATHERKIT_KEY": base64.b64encode(wk.private_pem).decode(),
               "APPLE_AUTH_PROXY_LISTEN": "127.0.0.1:0", "APPLE_AUTH_PROXY_ADMIN_LISTEN": "off",
               "APPLE_AUTH_PROXY_WORKERS": "1"}
        px = pt.start_env_proxy(env)
        try:
            environ = pt.proc_bytes(px.pid, "environ")
            self.assertFalse(b"PRIVATE KEY" in environ, "a PEM is still in /proc/PID/environ")
            for name, key in (("APNS_KEY", apns), ("WEATHERKIT_KEY", wk)):
                self.assertFalse(pt.pem_body(key.private_pem)[:40].encode() in environ, name)
                self.assertFalse(env[name][:40].encode() in environ, name)
            # the identifiers stay
            self.assertIn(b"APNS_KEY_ID=" + apns.kid.encode(), environ)
        finally:
            px.stop()

    def test_1b_private_key_env_not_in_environ(self):
        # docs/security.md: the key never appears in /proc/<pid>/environ. A configuration file may
        # take the key from any variable (private_key_env); once loaded, it must be wiped like
        # APP_STORE_CONNECT_API_KEY_KEY is.
        key = h.make_key()
        up = h.start_standin()
        cred = h.credential("app-store-connect", key, key_source=("private_key_env",
                                                                   "MY_ASC_KEY_PEM"))
        cfg = h.write_config({"asc": cred}, [h.route(up, "app-store-connect", "asc")])
        px = h.start_proxy(cfg, env={"MY_ASC_KEY_PEM": key.private_pem.decode()})
        try:
            with px.client() as c:
                self.assertEqual(c.request("GET", "/v1/apps").status, 200)
            environ = pt.proc_bytes(px.pid, "environ")
            self.assertFalse(b"PRIVATE KEY" in environ, "the PEM is still in /proc/PID/environ")
            self.assertFalse(pt.pem_body(key.private_pem)[:40].encode() in environ)
        finally:
            px.stop()

    def test_2_nothing_secret_in_logs_or_metrics(self):
        text = scrape(self.st.proxy).text
        self.assertIn("apple_auth_proxy_token_mints_total", text)
        time.sleep(0.5)  # access-log flush (200 ms)
        tokens = set()
        key_strings = set()
        for p in list(h._procs):
            if isinstance(p, h.Standin):
                tokens.update(pt.tokens_seen(p))
        self.assertTrue(tokens, "the stand-ins saw no token: nothing was checked")
        priv_dir = h.tmp_path("private")
        for name in os.listdir(priv_dir):
            with open(os.path.join(priv_dir, name), "rb") as f:
                pem = f.read()
            body = pt.pem_body(pem)
            key_strings.add(body)
            key_strings.update(l.strip() for l in pem.decode().splitlines()
                               if l.strip() and not l.startswith("-----"))
            key_strings.add(base64.b64encode(pem).decode()[:60])
            k = serialization.load_pem_private_key(pem, None)
            key_strings.add("%064x" % k.private_numbers().private_value)
        outputs = []
        for p in list(h._procs):
            if isinstance(p, h.Proxy):
                outputs.append(("%s stdout" % p.dir, p.stdout_text()))
                outputs.append(("%s stderr" % p.dir, p.stderr_text()))
        for path in ACCESS_LOG_FILES:
            if os.path.exists(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    outputs.append((path, f.read()))
        for i, mtext in enumerate(METRICS_SEEN + [text]):
            outputs.append(("metrics #%d" % i, mtext))
        for i, body in enumerate(self.bodies):
            outputs.append(("response #%d" % i, body.decode("latin-1")))
        self.assertGreater(len(outputs), 10)
        for where, out in outputs:
            for tok in tokens:
                self.assertFalse(tok in out, "a token in %s" % where)
                self.assertFalse(tok.split(".")[2] in out, "a token signature in %s" % where)
            for s in key_strings:
                self.assertFalse(s in out, "private key material in %s" % where)
            self.assertFalse("PRIVATE KEY" in out, where)
            self.assertFalse("Bearer ey" in out, where)


def load_tests(loader, tests, pattern):
    """Every class in the order written, SecretsTest last (it reads what the others left)."""
    suite = unittest.TestSuite()
    for cls in (StartupTest, DrainTest, ConnectionLimitTest, LimitsTest, AdminAndLogTest, ReloadTest,
                SecretsTest):
        suite.addTests(loader.loadTestsFromTestCase(cls))
    return suite


if __name__ == "__main__":
    unittest.main()
