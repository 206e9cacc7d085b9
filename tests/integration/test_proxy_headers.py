"""Header rewriting end to end (RFC 9110 7.6.1, docs/testing.md "Hop-by-hop and credentials").

Upstream: hop-by-hop headers dropped (Connection and every header it lists, Keep-Alive,
Proxy-Connection, TE, Trailer, Upgrade, HTTP2-Settings, Proxy-Authorization), Host rewritten to
the upstream's name, exactly one Authorization (the proxy's, even when Connection lists it),
everything else passed unchanged and in order. Downstream: the response's hop-by-hop headers
dropped, the rest passed on.
"""
import os
import sys
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
              "http2-settings", "proxy-authorization", "transfer-encoding"}
# What the proxy itself sets upstream.
OWN = {"host", "authorization", "content-length", "transfer-encoding"}


class RequestHeadersTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(profiles=("app-store-connect",))
        cls.up = cls.st.standin

    def send(self, headers, target="/__echo", method="GET", body=None, host=None):
        m = self.up.mark()
        with self.st.client() as c:
            r = c.request(method, target, headers, body, host=host)
        self.assertEqual(r.status, 200, r.body[:300])
        ev = self.up.wait_for(lambda e: True, since=m, kind="request")
        return r, ev

    def names(self, ev):
        return [k.lower() for k, _ in ev["headers"]]

    def test_hop_by_hop_dropped(self):
        hdrs = [("Connection", "keep-alive, X-Hop-One, x-hop-two"),
                ("X-Hop-One", "1"),
                ("Keep-Alive", "timeout=5, max=100"),
                ("X-Hop-Two", "2"),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Trailer", "X-Checksum"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ("X-Kept", "yes")]
        r, ev = self.send(hdrs)
        names = self.names(ev)
        for n in ("connection", "x-hop-one", "x-hop-two", "keep-alive", "proxy-connection", "te",
                  "trailer", "upgrade", "http2-settings"):
            self.assertNotIn(n, names, "%s must not be forwarded" % n)
        self.assertEqual(pt.header_values(ev, "X-Kept"), ["yes"])
        self.assertTrue(ev["token_ok"])
        # Upgrade: h2c never turns into a switch of protocols.
        self.assertEqual(r.status, 200)

    def test_connection_listing_authorization_keeps_token(self):
        r, ev = self.send([("Connection", "Authorization, Host, Content-Length"),
                           ("Authorization", "Bearer from-client")])
        auth = pt.auth_headers(ev)
        self.assertEqual(len(auth), 1, "the injected token must survive Connection: Authorization")
        self.assertNotIn("from-client", auth[0])
        self.assertTrue(ev["token_ok"], ev["token_error"])
        self.assertEqual(pt.header_values(ev, "Host"), [pt.ASC])

    def test_connection_listing_framing_keeps_body(self):
        body = b"x" * 1000
        r, ev = self.send([("Connection", "content-length, transfer-encoding"),
                           ("Content-Type", "text/plain")], method="POST", body=body)
        self.assertEqual(r.json()["body_len"], len(body))
        self.assertEqual(pt.header_values(ev, "Content-Length"), ["1000"])

    def test_host_rewritten_to_upstream(self):
        for host in ("127.0.0.1:%d" % self.st.port, "localhost", pt.ASC + ":8080"):
            with self.subTest(host=host):
                r, ev = self.send([("X-Forwarded-Host", "evil.example")], host=host)
                self.assertEqual(pt.header_values(ev, "Host"), [pt.ASC])
                self.assertEqual(ev["host"], pt.ASC)
                self.assertEqual(ev["headers"][0], ["Host", pt.ASC], "Host comes first")

    def test_end_to_end_headers_unchanged_in_order(self):
        hdrs = [("Accept", "application/json"),
                ("X-Request-ID", "a1b2c3"),
                ("User-Agent", "fastlane/2.220.0 (Ruby 3.2)"),
                ("x-lower-case", "v"),
                ("X-Dup", "first"),
                ("Accept-Language", "en-GB, fr;q=0.5"),
                ("X-Dup", "second"),
                ("X-Empty", ""),
                ("Cookie", "a=b; c=d"),
                ("X-Symbols", "!#$%&'*+-.^_`|~ \"quoted\" (comment) [x]"),
                ("If-None-Match", 'W/"abc"'),
                ("X-Forwarded-For", "10.0.0.1"),
                ("X-Dup", "third")]
        r, ev = self.send(hdrs)
        forwarded = [(k, v) for k, v in ev["headers"] if k.lower() not in OWN]
        self.assertEqual(forwarded, hdrs)

    def test_end_to_end_with_body(self):
        hdrs = [("Content-Type", "application/vnd.api+json"), ("X-A", "1"),
                ("Content-Encoding", "identity"), ("X-B", "2")]
        r, ev = self.send(hdrs, method="PATCH", body=b'{"data":{}}')
        forwarded = [(k, v) for k, v in ev["headers"] if k.lower() not in OWN]
        self.assertEqual(forwarded, hdrs)

    def test_large_header_value_intact(self):
        big = "".join(chr(33 + i % 94) for i in range(8000))
        r, ev = self.send([("X-Large", big), ("X-After", "1")])
        self.assertEqual(pt.header_values(ev, "X-Large"), [big])
        self.assertEqual(pt.header_values(ev, "X-After"), ["1"])

    def test_expect_not_forwarded(self):
        m = self.up.mark()
        with self.st.client() as c:
            c.send(b"POST /__echo HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
                   b"Content-Length: 2\r\n\r\n")
            self.assertEqual(c.read_head().status, 100)
            c.send(b"ok")
            self.assertEqual(c.read_response("POST").status, 200)
        ev = self.up.wait_for(lambda e: True, since=m, kind="request")
        self.assertNotIn("expect", self.names(ev))

    def test_head_is_reserialised_with_crlf(self):
        r, ev = self.send([("X-Spaces", "a  b")])
        raw = ev["raw_head"]
        self.assertTrue(raw.startswith("GET /__echo HTTP/1.1\r\nHost: %s\r\n" % pt.ASC), raw[:80])
        self.assertTrue(raw.endswith("\r\n\r\n"))
        self.assertNotIn("\n", raw.replace("\r\n", ""))
        self.assertEqual(pt.header_values(ev, "X-Spaces"), ["a  b"])


class ResponseHeadersTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(profiles=("app-store-connect",))

    def get_with_response_headers(self, pairs):
        q = urllib.parse.urlencode(pairs)
        with self.st.client() as c:
            r = c.request("GET", "/__headers?" + q)
            # the connection stays usable afterwards (unless the proxy chose to close)
            if not (r.header("Connection") or "").lower() == "close":
                r2 = c.request("GET", "/__echo")
                self.assertEqual(r2.status, 200)
        return r

    def test_response_hop_by_hop_dropped(self):
        r = self.get_with_response_headers([
            ("Connection", "X-Resp-Hop"),
            ("X-Resp-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "h2c"),
            ("Proxy-Authenticate", "Basic realm=x"),
            ("X-End-To-End", "kept"),
            ("Cache-Control", "no-store"),
        ])
        self.assertEqual(r.status, 200)
        names = [k.lower() for k, _ in r.headers]
        for n in ("x-resp-hop", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
                  "proxy-authenticate"):
            self.assertNotIn(n, names, "%s must not reach the client" % n)
        self.assertNotIn("x-resp-hop", (r.header("Connection") or "").lower())
        self.assertEqual(r.header("X-End-To-End"), "kept")
        self.assertEqual(r.header("Cache-Control"), "no-store")
        self.assertEqual(r.body, b'{"headers":"set"}')

    def test_response_headers_in_order(self):
        pairs = [("X-One", "1"), ("Set-Cookie", "a=1"), ("X-Two", "2"), ("Set-Cookie", "b=2"),
                 ("X-Apple-Jwt-Hint", "none"), ("Link", '<https://x/>; rel="next"')]
        r = self.get_with_response_headers(pairs)
        got = [(k, v) for k, v in r.headers if k in {p[0] for p in pairs}]
        self.assertEqual(got, pairs)

    def test_many_response_headers(self):
        pairs = [("X-H%d" % i, "v%d" % i) for i in range(100)] + \
                [("Set-Cookie", "c%d=%d" % (i, i)) for i in range(20)]
        r = self.get_with_response_headers(pairs)
        self.assertEqual(r.status, 200)
        got = [(k, v) for k, v in r.headers if k.startswith("X-H") or k == "Set-Cookie"]
        self.assertEqual(got, pairs)

    def test_rate_limit_header_passed(self):
        with self.st.client() as c:
            r = c.request("GET", "/v1/apps")
        self.assertRegex(r.header("X-Rate-Limit", ""), r"^user-hour-lim:3600;user-hour-rem:\d+;$")
        self.assertEqual(r.header("Server"), "apple-auth-proxy-standin")


if __name__ == "__main__":
    unittest.main()
