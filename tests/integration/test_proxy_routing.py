"""Routing end to end: by host and path prefix (first match wins), strip_prefix, no route (404),
absolute-form targets (routed by their own host, only to configured upstreams: 403 and nothing
sent otherwise), CONNECT (405), dot-segments (400).

Whenever the proxy refuses, the stand-in must see nothing at all: no connection and no request
(the token would travel with it).
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402


class RoutingTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.kasc, cls.kwk = h.make_key(), h.make_key()
        cls.creds = {"asc": h.credential("app-store-connect", cls.kasc),
                     "weather": h.credential("weatherkit", cls.kwk)}
        cls.up = h.start_standin()
        up = cls.up
        routes = [
            # by host: any path on that host
            h.route(up, "weatherkit", "weather", host=pt.WK),
            # by path, with the prefix removed before forwarding
            h.route(up, "weatherkit", "weather", path_prefix="/weather/",
                    strip_prefix="/weather"),
            h.route(up, "app-store-connect", "asc", path_prefix="/asc",
                    strip_prefix="/asc"),
            # by path, kept
            h.route(up, "weatherkit", "weather", path_prefix="/api/v1/"),
            h.route(up, "app-store-connect", "asc", path_prefix="/v1/"),
            h.route(up, "app-store-connect", "asc", path_prefix="/__"),
        ]
        cls.config = h.write_config(cls.creds, routes)
        cls.px = h.start_proxy(cls.config)

    def call(self, method, target, headers=None, host=None, body=None):
        with self.px.client() as c:
            return c.request(method, target, headers, body, host=host)

    def routed(self, target, host=None, method="GET"):
        m = self.up.mark()
        r = self.call(method, target, host=host)
        ev = self.up.wait_for(lambda e: True, since=m, kind="request")
        return r, ev

    def refused(self, target, status, code, host=None, method="GET", headers=None):
        m = self.up.mark()
        marker = pt.new_marker()
        r = self.call(method, target, list(headers or []) + [("X-Test-Mark", marker)],
                      host=host)
        self.assertEqual(r.status, status, "%s %s: %s" % (method, target, r.body[:300]))
        self.assertEqual(pt.error_code(r), code)
        self.assertEqual(r.header("Content-Type"), "application/json")
        pt.no_upstream_traffic(self, self.up, m, settle=0.3, marker=marker)
        return r

    # -- matches ----------------------------------------------------------------------------------

    def test_route_by_host(self):
        r, ev = self.routed("/__echo?x=1", host=pt.WK)
        self.assertEqual(r.status, 200)
        self.assertEqual(ev["host"], pt.WK)
        self.assertEqual(ev["target"], "/__echo?x=1")
        self.assertEqual(ev["token_header"]["kid"], self.kwk.kid)
        self.assertTrue(ev["token_ok"], ev["token_error"])

    def test_route_by_path_prefix(self):
        r, ev = self.routed("/api/v1/availability/1/2")
        self.assertEqual(r.status, 200)
        self.assertEqual(ev["host"], pt.WK)
        self.assertEqual(ev["path"], "/api/v1/availability/1/2")
        r, ev = self.routed("/v1/apps")
        self.assertEqual(r.status, 200)
        self.assertEqual(ev["host"], pt.ASC)
        self.assertEqual(ev["token_header"]["kid"], self.kasc.kid)

    def test_strip_prefix(self):
        r, ev = self.routed("/weather/api/v1/availability/51.5/-0.12?country=GB")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(ev["host"], pt.WK)
        self.assertEqual(ev["target"], "/api/v1/availability/51.5/-0.12?country=GB")
        self.assertTrue(ev["token_ok"])
        r, ev = self.routed("/asc/v1/apps")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(ev["target"], "/v1/apps")
        # The whole path stripped: the upstream still gets a path starting with "/".
        r, ev = self.routed("/asc")
        self.assertEqual(ev["target"][:1], "/")
        self.assertEqual(ev["path"], "/")
        r, ev = self.routed("/asc?q=1")
        self.assertEqual(ev["target"], "/?q=1")

    def test_prefix_is_byte_for_byte(self):
        # "/V1/" is not "/v1/", and "/api/v1" (no final slash) is not "/api/v1/"
        self.refused("/V1/apps", 404, "PROXY_NO_ROUTE")
        self.refused("/api/v1", 404, "PROXY_NO_ROUTE")

    def test_first_match_wins(self):
        # Host weatherkit matches the first route even for an App Store Connect path.
        r, ev = self.routed("/v1/apps", host=pt.WK)
        self.assertEqual(ev["host"], pt.WK)
        self.assertEqual(r.status, 404)  # WeatherKit has no /v1/apps: Apple's 404 passed on

    # -- refusals ---------------------------------------------------------------------------------

    def test_no_route_404(self):
        self.refused("/nothing/here", 404, "PROXY_NO_ROUTE")
        # The connection stays usable after a 404 for a body-less request.
        with self.px.client() as c:
            self.assertEqual(c.request("GET", "/nothing").status, 404)
            self.assertEqual(c.request("GET", "/v1/apps").status, 200)

    def test_pipelined_after_proxy_errors(self):
        # Requests the proxy answers itself (404, 403 for a body-less request) keep the
        # connection, and the requests pipelined behind them are answered in order.
        with self.px.client() as c:
            c.send(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n"
                   b"GET /__echo?i=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                   b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n"
                   b"GET /__echo?i=2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            got = [c.read_response() for _ in range(4)]
        self.assertEqual([r.status for r in got], [404, 200, 403, 200])
        self.assertEqual(got[1].json()["query"], "i=1")
        self.assertEqual(got[3].json()["query"], "i=2")

    def test_absolute_form_routed(self):
        for target in ("http://api.appstoreconnect.apple.com/v1/apps",
                       "http://API.AppStoreConnect.Apple.com/v1/apps",
                       "https://api.appstoreconnect.apple.com/v1/apps"):
            with self.subTest(target=target):
                r, ev = self.routed(target, host="api.appstoreconnect.apple.com")
                self.assertEqual(r.status, 200, r.body)
                self.assertEqual(ev["host"], pt.ASC)
                self.assertEqual(ev["target"], "/v1/apps", "origin-form upstream")
                self.assertTrue(ev["token_ok"])

    def test_absolute_form_host_wins_over_host_header(self):
        r, ev = self.routed("http://weatherkit.apple.com/api/v1/availability/1/2",
                            host=pt.ASC)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(ev["host"], pt.WK)
        self.assertEqual(ev["token_header"]["kid"], self.kwk.kid)

    def test_absolute_form_foreign_host_403_nothing_sent(self):
        for target in ("http://evil.example/v1/apps",
                       "http://127.0.0.1:%d/__echo" % self.up.port,
                       "http://localhost:%d/__echo" % self.up.port,
                       "http://api.appstoreconnect.apple.com.evil.example/v1/apps",
                       "http://appstoreconnect.apple.com/v1/apps",
                       "https://evil.example/__echo"):
            with self.subTest(target=target):
                self.refused(target, 403, "PROXY_FORBIDDEN_HOST", host="evil.example")

    def test_absolute_form_with_userinfo_refused(self):
        for target in ("http://api.appstoreconnect.apple.com@evil.example/v1/apps",
                       "http://user:pw@api.appstoreconnect.apple.com/v1/apps"):
            with self.subTest(target=target):
                m = self.up.mark()
                marker = pt.new_marker()
                r = self.call("GET", target, [("X-Test-Mark", marker)], host=pt.ASC)
                self.assertIn(r.status, (400, 403), r.body)
                pt.no_upstream_traffic(self, self.up, m, settle=0.3, marker=marker)

    def test_connect_405(self):
        for target, host in (("api.appstoreconnect.apple.com:443", "api.appstoreconnect.apple.com:443"),
                             ("evil.example:443", "evil.example:443"),
                             ("127.0.0.1:%d" % self.up.port, "127.0.0.1:%d" % self.up.port)):
            with self.subTest(target=target):
                r = self.refused(target, 405, "PROXY_CONNECT_NOT_SUPPORTED", host=host,
                                 method="CONNECT")
                self.assertIn("tunnel", pt.error_detail(r).lower())

    def test_dot_segments_400(self):
        for target in ("/v1/../__echo", "/v1/./apps", "/v1/apps/..", "/api/v1/%2e%2e/x",
                       "/api/v1/%2E/x", "/v1/.%2e/x", "/v1/%2e./x", "/asc/../__echo",
                       "/weather/..", "http://api.appstoreconnect.apple.com/v1/../x"):
            with self.subTest(target=target):
                self.refused(target, 400, "PROXY_BAD_REQUEST", host=pt.ASC)

    def test_dots_inside_segments_allowed(self):
        r, ev = self.routed("/__echo?path=/../x")
        self.assertEqual(r.status, 200)
        r, ev = self.routed("/v1/apps.json")
        self.assertEqual(ev["path"], "/v1/apps.json")
        r, ev = self.routed("/v1/...")
        self.assertEqual(ev["path"], "/v1/...")


if __name__ == "__main__":
    unittest.main()
