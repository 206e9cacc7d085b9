"""The upstream side end to end: the TLS connection pool, certificate verification, and what
the client sees when the upstream is down, slow, silent or closes pooled connections.

Certificates come from tests/upstream/certs.py. For every bad certificate the proxy must answer
502 PROXY_UPSTREAM_TLS and the stand-in must log no request: the token never leaves the proxy.
"""
import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

SLACK = 3.0  # generous: the suite runs on loaded machines


class PoolTest(unittest.TestCase):
    """Two workers: at most one TLS handshake per worker for many sequential requests."""
    WORKERS = 2

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(workers=cls.WORKERS, admin_listen="127.0.0.1:0")
        cls.up = cls.st.standin

    def test_1_connection_reuse(self):
        m = self.up.mark()
        n = 100
        for i in range(n):  # a new client connection each time: spread over the workers
            with self.st.client() as c:
                r = c.request("GET", "/__echo?i=%d" % i)
                self.assertEqual(r.status, 200)
        hs = self.up.events("handshake", m)
        self.assertGreaterEqual(len(hs), 1)
        self.assertLessEqual(len(hs), self.WORKERS,
                             "%d TLS handshakes for %d sequential requests" % (len(hs), n))
        self.assertEqual(len(self.up.requests(m)), n)
        self.assertLessEqual(len(self.up.events("accept", m)), self.WORKERS)
        met = pt.metrics(self.st.proxy)
        self.assertLessEqual(met.value("apple_auth_proxy_upstream_handshakes_total"),
                             self.WORKERS)
        self.assertGreaterEqual(met.value("apple_auth_proxy_upstream_reused_total"),
                                n - self.WORKERS)
        lines = pt.access_log(self.st.proxy, n, pred=lambda l: l["path"].startswith("/__echo?i="))
        reused = [l["upstream_reused"] for l in lines if l["path"].startswith("/__echo?i=")]
        self.assertGreaterEqual(reused.count(True), n - self.WORKERS)

    def test_2_sni_and_alpn(self):
        m = self.up.mark()
        # Force a new connection: the pools hold at most WORKERS idle ones, so run a few
        # requests concurrently.
        threads = [threading.Thread(target=self.st.request, args=("GET", "/__slow?delay=0.5"))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        hs = self.up.events("handshake")
        self.assertTrue(hs)
        for e in hs:
            self.assertEqual(e["sni"], pt.ASC, "SNI must be the upstream's name")
            self.assertEqual(e["alpn"], "http/1.1")
            self.assertIn(e["version"], ("TLSv1.2", "TLSv1.3"))
        self.assertGreater(len(self.up.events("handshake", m)), 0)

    def test_3_redirects_passed_not_followed(self):
        for status in (301, 302, 303, 307, 308):
            for location in ("https://evil.example/steal", "https://%s/v1/apps" % pt.ASC,
                             "/v1/apps"):
                with self.subTest(status=status, location=location):
                    m = self.up.mark()
                    with self.st.client() as c:
                        r = c.request("GET", "/__status/%d?Location=%s" % (status, location))
                    self.assertEqual(r.status, status)
                    self.assertEqual(r.header("Location"), location)
                    time.sleep(0.1)
                    reqs = self.up.requests(m)
                    self.assertEqual([e["path"] for e in reqs], ["/__status/%d" % status],
                                     "the proxy must never follow a redirect")

    def test_4_concurrent_requests_use_several_connections(self):
        m = self.up.mark()
        results = []

        def one():
            results.append(self.st.request("GET", "/__slow?delay=0.5").status)
        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, [200] * 6)
        self.assertEqual(len(self.up.requests(m)), 6)


    def test_5_many_concurrent_clients(self):
        m = self.up.mark()
        errors = []

        def client(i):
            try:
                with self.st.client(timeout=30) as c:
                    for j in range(5):
                        r = c.request("GET", "/__echo?c=%d&j=%d" % (i, j))
                        if r.status != 200 or r.json()["query"] != "c=%d&j=%d" % (i, j):
                            errors.append((i, j, r.status))
            except Exception as e:  # noqa: BLE001
                errors.append((i, repr(e)))
        threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        reqs = self.up.requests(m)
        self.assertEqual(len(reqs), 250)
        self.assertTrue(all(e["token_ok"] for e in reqs))
        self.assertEqual(len(set(pt.tokens_seen(self.up, m))), 1)

    def test_6_client_abort_mid_download_not_pooled(self):
        m = self.up.mark()
        c = h.HttpClient(self.st.port, timeout=10)
        c.request("GET", "/__bytes?n=%d" % (200 << 20), read=False)
        head = c.read_head()
        self.assertEqual(head.status, 200)
        c.sock.recv(65536)
        aborted = self.up.wait_for(lambda e: e["path"] == "/__bytes", since=m, kind="request")
        c.close()  # mid-body
        # The upstream connection that carried it is closed, not returned to the pool.
        self.up.wait_for(lambda e: e["conn_id"] == aborted["conn_id"], since=m,
                         kind="conn_close", timeout=10)
        m2 = self.up.mark()
        r = self.st.request("GET", "/__echo")
        self.assertEqual(r.status, 200)
        self.assertNotEqual(r.json()["conn_id"], aborted["conn_id"])
        self.assertEqual(len(self.up.requests(m2)), 1)

    def test_8_outcome_client_abort_vs_upstream_cut(self):
        # The access log's outcome tells who ended an exchange early (docs/operations.md):
        # client_abort when the client went away, upstream_cut when the upstream did.
        c = h.HttpClient(self.st.port, timeout=10)
        c.request("GET", "/__bytes?n=%d&abort=client" % (200 << 20), read=False)
        self.assertEqual(c.read_head().status, 200)
        c.sock.recv(65536)
        c.close()
        with self.st.client() as c:
            # The stand-in declares 100 bytes, sends 17 and closes.
            c.request("GET", "/__headers?Content-Length=100&cut=upstream", read=False)
            try:
                r = c.read_response(allow_truncated=True)
                self.assertEqual(r.status, 200)
                self.assertLess(len(r.body), 100, "a cut body must never look complete")
            except h.TruncatedResponse:
                pass  # the proxy had not flushed the head yet: nothing at all, also no clean end
            self.assertTrue(c.closed_by_peer(3.0), "a cut response must end the connection")
        lines = pt.access_log(self.st.proxy, 2, pred=lambda l: "abort=client" in l["path"] or
                              "cut=upstream" in l["path"])
        outcome = {("client" if "abort=client" in l["path"] else "upstream"): l["outcome"]
                   for l in lines if "abort=client" in l["path"] or "cut=upstream" in l["path"]}
        self.assertEqual(outcome, {"client": "client_abort", "upstream": "upstream_cut"})

    def test_7_upstream_connection_close(self):
        with self.st.client() as c:
            r = c.request("GET", "/__close")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json(), {"closing": True})
            self.assertNotEqual((r.header("Connection") or "").lower(), "close",
                                "the upstream's Connection: close is hop-by-hop")
            for _ in range(3):
                self.assertEqual(c.request("GET", "/__echo").status, 200)


class NoPoolTest(unittest.TestCase):
    """upstream_pool_size 0: no idle connection is kept, every exchange opens its own."""

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(limits={"upstream_pool_size": 0})
        cls.up = cls.st.standin

    def test_every_request_new_connection(self):
        m = self.up.mark()
        with self.st.client() as c:
            for i in range(5):
                self.assertEqual(c.request("GET", "/__echo").status, 200)
        self.assertEqual(len(self.up.requests(m)), 5)
        self.assertEqual(len(self.up.events("handshake", m)), 5)
        lines = pt.access_log(self.st.proxy, 5)
        self.assertTrue(all(l["upstream_reused"] is False for l in lines[-5:]), lines[-5:])


class BadCertificateTest(unittest.TestCase):
    """One stand-in per bad certificate, one proxy with a route to each (/KIND/...)."""
    KINDS = ("expired", "not_yet_valid", "wrong_host", "self_signed", "cn_only", "unknown_ca")

    @classmethod
    def setUpClass(cls):
        cls.key = h.make_key()
        cls.ups = {k: h.start_standin(k) for k in cls.KINDS + ("good", "no_ip")}
        routes = []
        for k in cls.KINDS + ("good",):
            routes.append(h.route(cls.ups[k], "app-store-connect", "asc",
                                  path_prefix="/%s/" % k, strip_prefix="/" + k))
        # An IP address upstream: the certificate must name it in its SAN (no_ip does not).
        for k in ("no_ip", "good"):
            routes.append({"path_prefix": "/ip-%s/" % k, "strip_prefix": "/ip-" + k,
                           "upstream": "https://127.0.0.1:%d" % cls.ups[k].port,
                           "credential": "asc", "ca_file": h.get_certs()["ca_cert"]})
        cls.config = h.write_config({"asc": h.credential("app-store-connect", cls.key)}, routes)
        cls.px = h.start_proxy(cls.config)

    def check_refused(self, prefix, up):
        m = up.mark()
        with self.px.client() as c:
            r = c.request("GET", "/%s/v1/apps" % prefix)
        self.assertEqual(r.status, 502, r.body)
        self.assertEqual(pt.error_code(r), "PROXY_UPSTREAM_TLS")
        detail = pt.error_detail(r)
        self.assertTrue(detail, "the detail carries OpenSSL's reason")
        # The stand-in saw a connection and a failed handshake, and no request byte.
        up.wait_for(lambda e: True, since=m, kind="tls_error", timeout=5)
        time.sleep(0.2)
        self.assertEqual(up.events(("request", "bad_request", "handshake"), m), [])
        return detail

    # OpenSSL's reason, as the client and the error log see it
    REASONS = {"expired": "certificate has expired",
               "not_yet_valid": "certificate is not yet valid",
               "wrong_host": "hostname mismatch",
               "self_signed": "self-signed certificate",
               "cn_only": "hostname mismatch",  # the subject CN is never used
               "unknown_ca": "unable to get local issuer certificate"}

    def test_bad_certificates(self):
        for kind in self.KINDS:
            with self.subTest(kind=kind):
                detail = self.check_refused(kind, self.ups[kind])
                self.assertIn(self.REASONS[kind], detail)
                self.assertIn(pt.ASC, detail)

    def test_ip_not_in_san(self):
        detail = self.check_refused("ip-no_ip", self.ups["no_ip"])
        self.assertIn("IP address mismatch", detail)

    def test_good_certificate_control(self):
        for prefix in ("good", "ip-good"):
            with self.subTest(prefix=prefix):
                with self.px.client() as c:
                    r = c.request("GET", "/%s/__echo" % prefix)
                self.assertEqual(r.status, 200, r.body)

    def test_error_logged_without_token(self):
        with self.px.client() as c:
            c.request("GET", "/expired/v1/apps")
        pt.wait_stderr(self.px, r"(?i)(certificate|tls|verify)")


class UpstreamFailureTest(unittest.TestCase):
    """Down, slow, silent and unreachable upstreams, with short timeouts."""
    RESPONSE_TIMEOUT = 1.0
    CONNECT_TIMEOUT = 1.0
    TLS_TIMEOUT = 1.0

    @classmethod
    def setUpClass(cls):
        cls.key = h.make_key()
        cls.up = h.start_standin()
        # A listener that accepts and never speaks (TLS handshake timeout).
        cls.silent = socket.socket()
        cls.silent.bind(("127.0.0.1", 0))
        cls.silent.listen(16)
        cls.silent_conns = []
        cls.stop = False

        def acceptor():
            cls.silent.settimeout(0.2)
            while not cls.stop:
                try:
                    conn, _ = cls.silent.accept()
                    cls.silent_conns.append(conn)
                except OSError:
                    pass
        cls.silent_thread = threading.Thread(target=acceptor, daemon=True)
        cls.silent_thread.start()
        # A listener whose accept queue is full and never accepts (connect timeout): further
        # SYNs are dropped by the kernel, so connect() hangs.
        cls.full = socket.socket()
        cls.full.bind(("127.0.0.1", 0))
        cls.full.listen(0)
        cls.fillers = []
        cls.connect_timeout_possible = cls._fill_backlog()
        cls.down_port = h.unused_port()
        routes = [
            h.route(cls.up, "app-store-connect", "asc", path_prefix="/down/",
                    strip_prefix="/down", address="127.0.0.1:%d" % cls.down_port),
            h.route(cls.up, "app-store-connect", "asc", path_prefix="/silent/",
                    strip_prefix="/silent", address="127.0.0.1:%d" % cls.silent.getsockname()[1]),
            h.route(cls.up, "app-store-connect", "asc", path_prefix="/full/",
                    strip_prefix="/full", address="127.0.0.1:%d" % cls.full.getsockname()[1]),
            h.route(cls.up, "app-store-connect", "asc", path_prefix="/"),
        ]
        cls.config = h.write_config(
            {"asc": h.credential("app-store-connect", cls.key)}, routes,
            limits={"upstream_response_timeout": cls.RESPONSE_TIMEOUT,
                    "upstream_connect_timeout": cls.CONNECT_TIMEOUT,
                    "upstream_tls_handshake_timeout": cls.TLS_TIMEOUT})
        cls.px = h.start_proxy(cls.config)

    @classmethod
    def _fill_backlog(cls):
        port = cls.full.getsockname()[1]
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            cls.fillers.append(s)
        time.sleep(0.1)
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", port))
            return False  # the kernel completed it anyway: cannot provoke a connect timeout
        except (socket.timeout, TimeoutError):
            return True
        except OSError:
            return False
        finally:
            probe.close()

    @classmethod
    def tearDownClass(cls):
        cls.stop = True
        for s in cls.silent_conns + cls.fillers + [cls.silent, cls.full]:
            try:
                s.close()
            except OSError:
                pass

    def timed(self, target, method="GET", body=None):
        t0 = time.monotonic()
        with self.px.client(timeout=30) as c:
            r = c.request(method, target, body=body)
        return r, time.monotonic() - t0

    def test_upstream_down_502(self):
        r, _ = self.timed("/down/v1/apps")
        self.assertEqual(r.status, 502, r.body)
        self.assertEqual(pt.error_code(r), "PROXY_UPSTREAM_UNREACHABLE")
        # With a body too (the request cannot be kept: the body was not read)
        r, _ = self.timed("/down/__echo", "POST", b"abc")
        self.assertEqual(r.status, 502)
        self.assertEqual(pt.error_code(r), "PROXY_UPSTREAM_UNREACHABLE")

    def test_upstream_down_with_expect_no_100(self):
        # The upstream is down: the client is told so instead of being invited to send a body
        # that would go nowhere (the proxy answers Expect only once the upstream is ready).
        with self.px.client(timeout=30) as c:
            c.send(b"PUT /down/__echo HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
                   b"Content-Length: 5\r\n\r\n")
            r = c.read_head()
        self.assertEqual(r.status, 502)

    def test_upstream_slow_504(self):
        m = self.up.mark()
        r, took = self.timed("/__slow?delay=%s" % (self.RESPONSE_TIMEOUT + 3))
        self.assertEqual(r.status, 504, r.body)
        self.assertEqual(pt.error_code(r), "PROXY_UPSTREAM_TIMEOUT")
        self.assertLess(took, self.RESPONSE_TIMEOUT + SLACK)
        self.assertEqual(len(self.up.requests(m)), 1, "a timed-out request is not retried")
        # A fast request right after is fine (the timed-out connection is not reused).
        r, _ = self.timed("/__echo")
        self.assertEqual(r.status, 200)

    def test_tls_handshake_timeout_504(self):
        r, took = self.timed("/silent/v1/apps")
        self.assertEqual(r.status, 504, r.body)
        self.assertEqual(pt.error_code(r), "PROXY_UPSTREAM_TIMEOUT")
        self.assertLess(took, self.TLS_TIMEOUT + SLACK)

    def test_connect_timeout_504(self):
        if not self.connect_timeout_possible:
            self.skipTest("this kernel completes connections to a full accept queue: a connect "
                          "timeout cannot be provoked on loopback")
        r, took = self.timed("/full/v1/apps")
        self.assertEqual(r.status, 504, r.body)
        self.assertEqual(pt.error_code(r), "PROXY_UPSTREAM_TIMEOUT")
        self.assertLess(took, self.CONNECT_TIMEOUT + SLACK)

    def test_other_clients_unaffected(self):
        # While one client waits on a slow upstream, another is served meanwhile.
        slow = threading.Thread(target=self.timed, args=("/__slow?delay=%s" %
                                                         (self.RESPONSE_TIMEOUT + 1),))
        slow.start()
        time.sleep(0.2)
        r, took = self.timed("/__echo")
        served_while_waiting = slow.is_alive()
        slow.join()
        self.assertEqual(r.status, 200)
        self.assertTrue(served_while_waiting, "the fast request waited for the slow one")


class IdleCloseTest(unittest.TestCase):
    """The stand-in closes idle connections after 0.5 s: pooled connections die while idle, and
    the next request must still succeed (never a spurious 502)."""

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(standin_args=("--idle-timeout", "0.5"), admin_listen="127.0.0.1:0")
        cls.up = cls.st.standin

    def test_request_after_upstream_closed_idle_connection(self):
        for i in range(4):
            m = self.up.mark()
            with self.st.client() as c:
                r = c.request("GET", "/__echo?round=%d" % i)
                self.assertEqual(r.status, 200, r.body)
            # wait until the stand-in has closed that connection
            self.up.wait_for(lambda e: e.get("reason") == "timeout", since=m,
                             kind="conn_close", timeout=5)
            time.sleep(0.1)
        with self.st.client() as c:
            for method, body in (("GET", None), ("POST", b"body"), ("DELETE", None)):
                r = c.request(method, "/__echo", body=body)
                self.assertEqual(r.status, 200, "%s after an idle close: %s" % (method, r.body))
                time.sleep(0.8)  # the pooled connection is closed by the stand-in meanwhile
        self.assertNotIn("PROXY_UPSTREAM", self.st.proxy.stderr_text())

    def test_keepalive_client_across_idle_close(self):
        with self.st.client() as c:
            for i in range(3):
                r = c.request("GET", "/__echo")
                self.assertEqual(r.status, 200, r.body)
                time.sleep(0.8)
        lines = pt.access_log(self.st.proxy)
        self.assertFalse([l for l in lines if l["status"] >= 500], lines)


if __name__ == "__main__":
    unittest.main()


class PooledConnectionAfterQuietSecond(unittest.TestCase):
    """A pooled connection idle for a whole second gives its TLS record buffers back (the
    worker's once-a-second house tick); when it is used again they are allocated anew. The
    connection must stay in the pool and carry small and large responses as before."""

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(workers=1, admin_listen="127.0.0.1:0")
        cls.up = cls.st.standin

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def test_reused_after_buffers_released(self):
        first = self.st.request("GET", "/__echo?i=1")
        self.assertEqual(first.status, 200)
        conn = first.json()["conn_id"]
        m = self.up.mark()
        time.sleep(2.6)  # two house ticks: idle for a whole second, then released
        r = self.st.request("GET", "/__echo?i=2")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["conn_id"], conn, "the pooled connection was not reused")
        n = 3 * 1024 * 1024 + 17  # many TLS records through the re-allocated buffers
        big = self.st.request("GET", "/__bytes?n=%d" % n, timeout=30)
        self.assertEqual(big.status, 200)
        self.assertEqual(len(big.body), n)
        pattern = b"0123456789abcdef"
        self.assertEqual(big.body, (pattern * (n // len(pattern) + 1))[:n])
        self.assertEqual(self.up.events("handshake", m), [], "a new TLS connection was opened")
        met = pt.metrics(self.st.proxy)
        self.assertEqual(met.value("apple_auth_proxy_upstream_handshakes_total"), 1)
