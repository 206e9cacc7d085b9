"""The metrics and readiness an operator runs on: build and process families, reloads, token
mints, Apple's latency apart from the proxy's own refusals, upstream connections by state,
Apple's quota ceiling, certificate expiry, in-flight requests, requests by gateway client, and
/readyz's JSON checks. Each value is compared with what the test did."""
import datetime
import hashlib
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

from cryptography import x509  # noqa: E402

ASC = "api.appstoreconnect.apple.com"


def not_after(path):
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return int(cert.not_valid_after.replace(tzinfo=datetime.timezone.utc).timestamp())


def proxy_auth(secret):
    return [("Proxy-Authorization", "Bearer " + secret)]


class OperatorMetrics(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.certs = h.get_certs()
        cls.secret = secrets.token_urlsafe(32)
        cls.started = time.time()
        clients = {"bot": {"key_sha256": hashlib.sha256(cls.secret.encode()).hexdigest()}}
        cls.key = h.make_key()
        cls.up = h.start_standin("good")
        cls.dead = h.unused_port()
        cls.creds = {"asc": h.credential("app-store-connect", cls.key)}
        cls.routes = [h.route("127.0.0.1:%d" % cls.dead, "https://dead.example", "asc",
                              path_prefix="/dead/"),
                      h.route(cls.up, "app-store-connect", "asc")]
        listen = ["127.0.0.1:0",
                  {"address": "127.0.0.1:0", "tls": {"cert_file": cls.certs["good_cert"],
                                                      "key_file": cls.certs["good_key"],
                                                      "client_ca_file": cls.certs["ca_cert"]}}]
        cls.config = h.write_config(cls.creds, cls.routes, listen=listen,
                                    admin_listen="127.0.0.1:0", clients=clients)
        cls.px = h.start_proxy(cls.config, listeners=2)

    @classmethod
    def tearDownClass(cls):
        cls.px.stop()
        cls.up.stop()

    def get(self, path, headers=None, timeout=15):
        with h.HttpClient(self.px.port, timeout=timeout) as c:
            return c.request("GET", path, list(headers or proxy_auth(self.secret)), host=ASC)

    def scrape(self):
        return pt.metrics(self.px)

    def test_build_and_process(self):
        m = self.scrape()
        info = m.find("apple_auth_proxy_build_info")
        self.assertEqual(len(info), 1, m.text[:2000])
        labels, value = info[0]
        self.assertEqual(value, 1)
        rc, out, _ = h.run_cli(["--version"])
        self.assertEqual(out.strip(), "apple-auth-proxy " + labels["version"])
        self.assertTrue(labels["openssl"].startswith("OpenSSL 3"), labels)
        self.assertTrue(labels["libevent"], labels)
        start = m.value("process_start_time_seconds")
        self.assertGreaterEqual(start, self.started - 1)
        self.assertLessEqual(start, time.time())
        rss = m.value("process_resident_memory_bytes")
        with open("/proc/%d/status" % self.px.proc.pid) as f:
            vmrss = int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024
        self.assertLess(abs(rss - vmrss), max(8 << 20, vmrss // 2), (rss, vmrss))
        fds = m.value("process_open_fds")
        real = len(os.listdir("/proc/%d/fd" % self.px.proc.pid))
        self.assertLessEqual(abs(fds - real), 4, (fds, real))
        self.assertGreater(m.value("process_max_fds"), fds)
        self.assertGreaterEqual(m.value("process_cpu_seconds_total"), 0)

    def test_apple_latency_apart_from_refusals(self):
        before = self.scrape()
        route = ASC + "/"
        n0 = before.value("apple_auth_proxy_apple_round_trip_seconds_count", 0, route=route,
                          code_class="2xx")
        r = self.get("/__slow?delay=0.3")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.get("/__status/503").status, 503)
        # the proxy's own refusals: no Proxy-Authorization (407), a dead upstream (502)
        self.assertEqual(self.get("/v1/apps", headers=[("X-A", "b")]).status, 407)
        self.assertEqual(self.get("/dead/x").status, 502)
        after = self.scrape()
        self.assertEqual(after.value("apple_auth_proxy_apple_round_trip_seconds_count", 0,
                                     route=route, code_class="2xx"), n0 + 1)
        self.assertEqual(after.value("apple_auth_proxy_apple_round_trip_seconds_count", 0,
                                     route=route, code_class="5xx")
                         - before.value("apple_auth_proxy_apple_round_trip_seconds_count", 0,
                                        route=route, code_class="5xx"), 1)
        # the slow answer lands above 0.25 s in both histograms
        for fam in ("apple_auth_proxy_apple_round_trip_seconds",
                    "apple_auth_proxy_time_to_first_byte_seconds"):
            le = after.value(fam + "_bucket", 0, route=route, code_class="2xx", le="0.25") - \
                before.value(fam + "_bucket", 0, route=route, code_class="2xx", le="0.25")
            self.assertEqual(le, 0, fam)
            self.assertGreaterEqual(after.value(fam + "_sum", 0, route=route, code_class="2xx"),
                                    0.3)
        # refusals are in no Apple histogram: the dead route has no series, 4xx did not move
        self.assertEqual(after.find("apple_auth_proxy_apple_round_trip_seconds_count",
                                    route="dead.example/dead/"), [])
        self.assertEqual(after.value("apple_auth_proxy_apple_round_trip_seconds_count", 0,
                                     code_class="4xx"),
                         before.value("apple_auth_proxy_apple_round_trip_seconds_count", 0,
                                      code_class="4xx"))

    def test_upstream_connections_by_state_and_failures(self):
        self.assertEqual(self.get("/v1/apps").status, 200)
        self.assertEqual(self.get("/dead/y").status, 502)
        m = self.scrape()
        up = ASC
        self.assertGreaterEqual(m.value("apple_auth_proxy_upstream_connections", upstream=up,
                                        state="idle"), 1)
        self.assertEqual(m.value("apple_auth_proxy_upstream_connections", upstream=up,
                                 state="busy"), 0)
        self.assertEqual(m.value("apple_auth_proxy_upstream_connections", upstream=up,
                                 state="connecting"), 0)
        self.assertGreaterEqual(m.value("apple_auth_proxy_upstream_handshakes_total",
                                        upstream=up), 1)
        self.assertGreaterEqual(m.value("apple_auth_proxy_upstream_connect_failures_total",
                                        upstream="dead.example", reason="connect"), 1)
        self.assertEqual(m.value("apple_auth_proxy_upstream_connect_failures_total",
                                 upstream=up, reason="tls"), 0)
        # busy while an exchange is in flight, and the request counted in flight
        c, t, res = start_slow(self.px.port, self.secret)
        try:
            def busy():
                mm = self.scrape()
                return mm if mm.value("apple_auth_proxy_upstream_connections", upstream=up,
                                      state="busy") == 1 else None
            mm = pt.wait_until(busy, 10.0, 0.05, "a busy upstream connection")
            self.assertEqual(mm.value("apple_auth_proxy_requests_in_flight"), 1)
        finally:
            t.join(20)
            c.close()
        self.assertEqual(res["r"].status, 200)
        pt.wait_until(lambda: self.scrape().value("apple_auth_proxy_requests_in_flight") == 0,
                      10.0, 0.05, "no request in flight")

    def test_tokens_quota_and_clients(self):
        before = self.scrape()
        self.assertEqual(self.get("/v1/apps").status, 200)
        self.assertEqual(self.get("/v1/apps", headers=[("X-A", "b")]).status, 407)
        m = self.scrape()
        self.assertEqual(m.value("apple_auth_proxy_client_requests_total", 0, client="bot",
                                 code_class="2xx")
                         - before.value("apple_auth_proxy_client_requests_total", 0,
                                        client="bot", code_class="2xx"), 1)
        self.assertEqual(m.value("apple_auth_proxy_client_requests_total", 0, client="",
                                 code_class="4xx")
                         - before.value("apple_auth_proxy_client_requests_total", 0, client="",
                                        code_class="4xx"), 1)
        self.assertEqual(m.value("apple_auth_proxy_apple_rate_limit_limit", credential="asc"),
                         3600)
        self.assertLess(m.value("apple_auth_proxy_apple_rate_limit_remaining",
                                credential="asc"), 3600)
        exp = m.value("apple_auth_proxy_token_expiry_timestamp_seconds", credential="asc")
        left = m.value("apple_auth_proxy_token_expiry_seconds", credential="asc")
        self.assertLess(abs(exp - (time.time() + left)), 3)
        self.assertEqual(m.value("apple_auth_proxy_token_mint_failures_total", credential="asc"),
                         0)
        # Apple's 401 to the cached token: dropped, minted again, counted
        remints = m.value("apple_auth_proxy_token_401_remints_total", credential="asc")
        mints = m.value("apple_auth_proxy_token_mints_total", credential="asc")
        self.assertEqual(self.get("/__status/401").status, 401)
        m = self.scrape()
        self.assertEqual(m.value("apple_auth_proxy_token_401_remints_total", credential="asc"),
                         remints + 1)
        self.assertEqual(m.value("apple_auth_proxy_token_mints_total", credential="asc"),
                         mints + 1)

    def test_certificate_expiry(self):
        m = self.scrape()
        tls_addr = [l for l, _ in m.find("apple_auth_proxy_listener_certificate_expiry_"
                                         "timestamp_seconds")]
        self.assertEqual(len(tls_addr), 1, m.text[:3000])
        self.assertEqual(tls_addr[0]["listener"], "127.0.0.1:0")
        self.assertEqual(m.value("apple_auth_proxy_listener_certificate_expiry_timestamp_"
                                 "seconds"), not_after(self.certs["good_cert"]))
        self.assertEqual(m.value("apple_auth_proxy_client_ca_expiry_timestamp_seconds"),
                         not_after(self.certs["ca_cert"]))

    def test_z_reloads_and_readiness(self):
        m = self.scrape()
        ok0 = m.value("apple_auth_proxy_reloads_total", outcome="success")
        bad0 = m.value("apple_auth_proxy_reloads_total", outcome="failure")
        t0 = m.value("apple_auth_proxy_last_reload_success_timestamp_seconds")
        self.assertGreaterEqual(t0, self.started - 1)
        mark = len(self.px.stderr_text())
        self.px.proc.send_signal(signal.SIGHUP)
        pt.wait_until(lambda: "reloaded" in self.px.stderr_text()[mark:], 10.0, 0.05, "reload")
        m = self.scrape()
        self.assertEqual(m.value("apple_auth_proxy_reloads_total", outcome="success"), ok0 + 1)
        t1 = m.value("apple_auth_proxy_last_reload_success_timestamp_seconds")
        self.assertGreater(t1, t0)
        with open(self.config) as f:
            good = f.read()
        try:
            with open(self.config, "w") as f:
                f.write("{ not json")
            mark = len(self.px.stderr_text())
            self.px.proc.send_signal(signal.SIGHUP)
            pt.wait_until(lambda: "reload rejected" in self.px.stderr_text()[mark:], 10.0, 0.05,
                          "rejected reload")
        finally:
            with open(self.config, "w") as f:
                f.write(good)
        m = self.scrape()
        self.assertEqual(m.value("apple_auth_proxy_reloads_total", outcome="failure"), bad0 + 1)
        self.assertEqual(m.value("apple_auth_proxy_last_reload_success_timestamp_seconds"), t1)
        # /readyz: JSON with every check; /healthz stays trivial
        r = pt.admin_get(self.px, "/readyz")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.header("Content-Type"), "application/json")
        doc = json.loads(r.body)
        self.assertIs(doc["ready"], True)
        checks = {c["name"]: c for c in doc["checks"]}
        self.assertEqual(checks["draining"]["state"], "no")
        self.assertEqual(checks["listeners"]["state"], "up")
        self.assertEqual(checks["credential asc"]["state"], "minting")
        self.assertIs(checks["credential asc"]["ok"], True)
        self.assertEqual(checks["upstream dead.example"]["state"], "unreachable")
        self.assertNotIn("ok", checks["upstream dead.example"])  # informational only
        self.assertEqual(checks["upstream " + ASC]["state"], "reachable")
        r = pt.admin_get(self.px, "/healthz")
        self.assertEqual((r.status, r.body), (200, b"ok\n"))


def start_slow(port, secret):
    """A GET of /__slow?delay=1 whose response a thread reads: (client, thread, result)."""
    c = h.HttpClient(port, timeout=30)
    res = {}
    c.request("GET", "/__slow?delay=1", proxy_auth(secret), host=ASC, read=False)

    def read():
        try:
            res["r"] = c.read_response()
        except Exception as e:  # noqa: BLE001
            res["e"] = e
    t = threading.Thread(target=read)
    t.start()
    return c, t, res


if __name__ == "__main__":
    unittest.main()
