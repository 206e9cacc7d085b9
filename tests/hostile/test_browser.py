"""The browser rule (docs/security.md): web pages, and pages that rebind their own name to the
proxy's address, cannot use the proxy.

Each case sends one request byte for byte on the listener and checks either a refusal (421
PROXY_MISDIRECTED_REQUEST for a Host that does not name the proxy, 403 PROXY_BROWSER_FORBIDDEN
for a web page's request), with nothing at the upstream, or a forward judged strictly there.
"""
import os
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import (ASC, ProxyFixture, converse, error_code, h,  # noqa: E402
                     parse_request_strict, req)

ALLOWED = "https://dashboard.example.test"
SERVER_NAME = "proxy.team.test"
LISTENER_NAME = "gw.listener.test"
ENV_NAME = "svc.from-env.test"


def get(host=ASC, headers=(), method="GET", target="/v1/apps"):
    return req(method=method, target=target, host=host,
               headers=[(k.encode(), v.encode()) for k, v in headers])


class BrowserRuleTest(unittest.TestCase):
    fx = None

    @classmethod
    def setUpClass(cls):
        cls.fx = ProxyFixture(
            listen=[{"address": "127.0.0.1:0", "server_names": [LISTENER_NAME]}],
            server_names=[SERVER_NAME], allowed_origins=[ALLOWED],
            admin_listen="127.0.0.1:0",
            env={"APPLE_AUTH_PROXY_SERVER_NAMES": SERVER_NAME + "," + ENV_NAME})

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()

    def refused(self, raw, status, code):
        fx = self.fx
        mark = fx.up.mark()
        o = converse(fx.port, raw)
        self.assertEqual(o.statuses(), [status], "%r" % o)
        r = o.responses[0]
        self.assertEqual(error_code(r), code)
        self.assertFalse([k for k, _ in r.headers if k.lower().startswith("access-control-")],
                         "a refusal carries CORS headers: %r" % r.headers)
        time.sleep(0.15)
        self.assertEqual(fx.up.new_bytes(mark), 0, "the upstream received bytes")
        self.assertEqual(fx.up.new_conns(mark), [])
        return r

    def forwarded(self, raw):
        fx = self.fx
        mark = fx.up.mark()
        o = converse(fx.port, raw)
        self.assertEqual(o.statuses(), [200], "%r" % o)
        r = o.responses[0]
        self.assertFalse([k for k, _ in r.headers if k.lower().startswith("access-control-")],
                         "the proxy added CORS headers: %r" % r.headers)
        reqs = fx.up.wait_requests(mark, 1)
        self.assertEqual(len(reqs), 1)
        parse_request_strict(reqs[0][1], ASC)
        return r

    # -- Host: what names the proxy -------------------------------------------------------------

    def test_hosts_that_name_the_proxy_are_served(self):
        port = self.fx.port
        for host in ("localhost", "localhost:%d" % port, "LOCALHOST.", "127.0.0.1",
                     "127.0.0.1:%d" % port, "127.9.8.7:1", "[::1]:%d" % port, ASC,
                     ASC + ":443", SERVER_NAME, SERVER_NAME.upper() + ":8080", LISTENER_NAME,
                     ENV_NAME):
            with self.subTest(host=host):
                self.forwarded(get(host=host))

    def test_rebound_host_421_regression(self):
        """A page at r.attacker.example:8080 rebinds its name to 127.0.0.1: its requests still
        name it in Host. Today's main forwarded them with the token."""
        for host in ("r.attacker.example:8080", "r.attacker.example", "evil.example",
                     "localhost.attacker.example", "127.0.0.1.attacker.example",
                     "api.appstoreconnect.apple.com.attacker.example", "0.0.0.0:8080",
                     "10.1.2.3", "[::2]", "[::ffff:127.0.0.1]:8080", "x"):
            with self.subTest(host=host):
                r = self.refused(get(host=host), 421, "PROXY_MISDIRECTED_REQUEST")
                self.assertEqual(r.reason, "Misdirected Request")

    def test_rebound_host_with_body_421(self):
        raw = get(host="r.attacker.example:8080", method="POST",
                  headers=[("Content-Length", "5")]) + b"hello"
        self.refused(raw, 421, "PROXY_MISDIRECTED_REQUEST")

    def test_absolute_form_keeps_its_rule(self):
        """http_proxy style: routed by the target's host (configured upstreams only), whatever
        Host says."""
        self.forwarded(get(host="elsewhere.example", target="http://%s/v1/apps" % ASC))
        self.refused(get(host="localhost", target="http://evil.example/v1/apps"), 403,
                     "PROXY_FORBIDDEN_HOST")

    def test_refusals_are_counted(self):
        self.refused(get(host="r.attacker.example"), 421, "PROXY_MISDIRECTED_REQUEST")
        self.refused(get(headers=[("Origin", "https://evil.example")]), 403,
                     "PROXY_BROWSER_FORBIDDEN")
        port = self.fx.proxy.admin_port
        c = h.HttpClient(port)
        try:
            c.send(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            text = c.read_response("GET").body.decode()
        finally:
            c.close()
        for code in ("PROXY_MISDIRECTED_REQUEST", "PROXY_BROWSER_FORBIDDEN"):
            lines = [ln for ln in text.splitlines() if '"%s"' % code in ln
                     and not ln.startswith("#")]
            self.assertTrue(lines, "no metric for %s" % code)
            self.assertGreaterEqual(float(lines[0].rsplit(" ", 1)[1]), 1, lines[0])

    # -- Origin and Sec-Fetch-Site: requests from web pages -------------------------------------

    def test_web_page_requests_403_regression(self):
        """Today's main forwarded these with the token."""
        for headers in ([("Origin", "https://evil.example")],
                        [("Origin", "null")],
                        [("Origin", "http://localhost:8080")],
                        [("Origin", ALLOWED + ".evil.example")],
                        [("Origin", ALLOWED.upper())],
                        [("Origin", ALLOWED), ("Origin", "https://evil.example")],
                        [("Sec-Fetch-Site", "same-origin")],
                        [("Sec-Fetch-Site", "same-site")],
                        [("Sec-Fetch-Site", "cross-site")],
                        [("Sec-Fetch-Site", "none"), ("Sec-Fetch-Site", "cross-site")],
                        [("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Mode", "navigate")]):
            with self.subTest(headers=headers):
                self.refused(get(headers=headers), 403, "PROXY_BROWSER_FORBIDDEN")

    def test_web_page_post_403(self):
        raw = get(method="POST", headers=[("Origin", "https://evil.example"),
                                          ("Content-Type", "text/plain"),
                                          ("Content-Length", "5")]) + b"hello"
        self.refused(raw, 403, "PROXY_BROWSER_FORBIDDEN")

    def test_preflight_gets_no_permissive_answer(self):
        for origin in ("https://evil.example", ALLOWED):
            with self.subTest(origin=origin):
                self.refused(get(method="OPTIONS", headers=[
                    ("Origin", origin), ("Access-Control-Request-Method", "DELETE"),
                    ("Access-Control-Request-Headers", "authorization")]),
                    403, "PROXY_BROWSER_FORBIDDEN")

    def test_allowed_origin_served_without_cors_headers(self):
        self.forwarded(get(headers=[("Origin", ALLOWED), ("Sec-Fetch-Site", "cross-site"),
                                    ("Sec-Fetch-Mode", "cors")]))

    def test_tools_are_served(self):
        """What curl, Python requests, wget, Go and Node's fetch send: Node's adds
        sec-fetch-mode: cors (and no Origin) to every request."""
        for headers in ([("User-Agent", "curl/7.88.1"), ("Accept", "*/*")],
                        [("User-Agent", "python-requests/2.31.0"), ("Accept", "*/*"),
                         ("Accept-Encoding", "gzip, deflate"), ("Connection", "keep-alive")],
                        [("User-Agent", "Wget/1.21.3"), ("Accept", "*/*")],
                        [("User-Agent", "Go-http-client/1.1"), ("Accept-Encoding", "gzip")],
                        [("accept", "*/*"), ("accept-language", "*"),
                         ("sec-fetch-mode", "cors"), ("user-agent", "node"),
                         ("accept-encoding", "gzip, deflate")],
                        [("Sec-Fetch-Site", "none"), ("Sec-Fetch-Mode", "navigate")]):
            with self.subTest(headers=headers):
                self.forwarded(get(host="localhost:%d" % self.fx.port, headers=headers))

    @unittest.skipUnless(shutil.which("node"), "node is not installed")
    def test_node_fetch(self):
        """Node's own fetch, as a script would use it, against http://localhost:PORT."""
        script = ("fetch('http://localhost:%d/v1/apps').then(async r => {"
                  "console.log(r.status); console.log(await r.text()); })"
                  ".catch(e => { console.error(e); process.exit(1); });" % self.fx.port)
        p = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.splitlines()[0], "200", p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
