"""Hostile input: hop-by-hop fields, client credentials, absolute-form targets and CONNECT
(docs/testing.md "Hop-by-hop and credentials").

Forwarded cases are judged at the recording upstream by parse_request_strict (which already
refuses any hop-by-hop field, a second Authorization or a foreign Host) plus the case's own
check; the Authorization that arrives must verify against the configured key, so it is the
proxy's token and not the client's. Refused cases must not reach the upstream at all.
"""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import (ASC, OK_BODY, Case, CaseTest, Forward, ProxyFixture,  # noqa: E402
                     RawUpstream, Reject, add_cases, converse, h, parse_request_strict)

HOST = b"Host: " + ASC.encode()


def get(*lines, line=b"GET /v1/apps HTTP/1.1", host=True):
    hs = ([HOST] if host else []) + list(lines)
    return line + b"\r\n" + b"".join(x + b"\r\n" for x in hs) + b"\r\n"


def post(*lines, body=b"hello"):
    return get(*lines, line=b"POST /v1/x HTTP/1.1") + body


def absent(*names, present=()):
    """The upstream request has none of names, and has each of present (name, value)."""
    def check(t, reqs, outcome):
        got = reqs[0].names()
        for n in names:
            t.assertNotIn(n.lower().encode(), got, "%s forwarded" % n)
        for n, v in present:
            t.assertEqual(reqs[0].all(n), [v])
    return check


def body(expected, chunked=None):
    def check(t, reqs, outcome):
        t.assertEqual(reqs[0].body, expected)
        if chunked is not None:
            t.assertEqual(reqs[0].chunked, chunked)
    return check


def target(expected):
    def check(t, reqs, outcome):
        t.assertEqual(reqs[0].target, expected)
    return check


def no_client_credential(t, reqs, outcome):
    raw = reqs[0].raw
    for secret in (b"evil", b"Zm9vOmJhcg", b"client-token"):
        t.assertNotIn(secret, raw)


H2_SETTINGS = b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"
CASES = [
    # Connection and what it lists
    Case("connection_close", get(b"Connection: close"),
         Forward(absent("connection"), closed=True)),
    Case("connection_lists_field", get(b"Connection: X-Secret", b"X-Secret: 1", b"X-Kept: 2"),
         Forward(absent("x-secret", present=[("x-kept", b"2")]))),
    Case("connection_lists_field_other_case", get(b"Connection: x-SECRET", b"X-Secret: 1"),
         Forward(absent("x-secret"))),
    Case("connection_several_headers",
         get(b"Connection: keep-alive", b"Connection: X-A, X-B", b"X-A: 1", b"X-B: 2",
             b"X-C: 3"),
         Forward(absent("x-a", "x-b", present=[("x-c", b"3")]))),
    Case("connection_list_whitespace", get(b"Connection: ,  X-A ,,\tX-B ,", b"X-A: 1", b"X-B: 2"),
         Forward(absent("x-a", "x-b"))),
    Case("connection_lists_authorization",
         get(b"Connection: Authorization", b"Authorization: Basic Zm9vOmJhcg=="),
         Forward(no_client_credential),
         "Connection: Authorization must not remove the injected credential"),
    Case("connection_lists_host", get(b"Connection: Host"), Forward(),
         "the upstream Host survives (parse_request_strict requires exactly one)"),
    Case("connection_lists_content_length", post(b"Connection: Content-Length",
                                                 b"Content-Length: 5"),
         Forward(body(b"hello", chunked=False))),
    Case("connection_lists_transfer_encoding",
         get(b"Connection: Transfer-Encoding", b"Transfer-Encoding: chunked",
             line=b"POST /v1/x HTTP/1.1") + b"5\r\nhello\r\n0\r\n\r\n",
         Forward(body(b"hello", chunked=True))),
    # Hop-by-hop fields by name
    Case("keep_alive_field", get(b"Connection: keep-alive", b"Keep-Alive: timeout=5, max=1000"),
         Forward(absent("keep-alive"))),
    Case("proxy_connection", get(b"Proxy-Connection: keep-alive"), Forward()),
    Case("te_trailers", get(b"Connection: TE", b"TE: trailers"), Forward()),
    Case("te_gzip", get(b"TE: gzip, deflate;q=0.5"), Forward()),
    Case("trailer_field", get(b"Trailer: X-Checksum"), Forward()),
    Case("proxy_authorization", get(b"Proxy-Authorization: Basic Zm9vOmJhcg=="),
         Forward(no_client_credential)),
    Case("proxy_authenticate", get(b"Proxy-Authenticate: Basic realm=evil"),
         Forward(no_client_credential)),
    Case("http2_settings_alone", get(H2_SETTINGS), Forward()),
    # Upgrade never becomes a tunnel: the response is the upstream's, and the connection still
    # speaks HTTP/1.1 (the pipelined second request is served normally).
    Case("upgrade_h2c", get(b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c", H2_SETTINGS) +
         get(line=b"GET /v1/second HTTP/1.1"),
         Forward(statuses=(200, 200), n=2)),
    Case("upgrade_websocket",
         get(b"Connection: Upgrade", b"Upgrade: websocket",
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13") +
         get(line=b"GET /v1/second HTTP/1.1"),
         Forward(statuses=(200, 200), n=2)),
    Case("upgrade_without_connection", get(b"Upgrade: h2c"), Forward()),
    # Client credentials are replaced, whatever their spelling or number
    Case("authorization_bearer", get(b"Authorization: Bearer client-token"),
         Forward(no_client_credential)),
    Case("authorization_basic", get(b"Authorization: Basic Zm9vOmJhcg=="),
         Forward(no_client_credential)),
    Case("authorization_lower_case", get(b"authorization: Bearer evil"),
         Forward(no_client_credential)),
    Case("authorization_upper_case", get(b"AUTHORIZATION: Bearer evil"),
         Forward(no_client_credential)),
    Case("authorization_repeated", get(b"Authorization: Bearer evil", b"authorization: Bearer evil",
                                       b"Authorization: Basic Zm9vOmJhcg=="),
         Forward(no_client_credential)),
    Case("authorization_empty", get(b"Authorization:"), Forward()),
    Case("authorization_list", get(b"Authorization: Bearer evil, Bearer evil2"),
         Forward(no_client_credential)),
    Case("authorization_in_trailer",
         get(b"Transfer-Encoding: chunked", line=b"POST /v1/x HTTP/1.1") +
         b"5\r\nhello\r\n0\r\nAuthorization: Bearer evil\r\n\r\n",
         Forward(no_client_credential)),
    # Host and friends cannot redirect the token
    Case("x_forwarded_host_foreign", get(b"X-Forwarded-Host: evil.example"), Forward()),
    Case("forwarded_host_foreign", get(b"Forwarded: host=evil.example;proto=https"), Forward()),
    Case("host_foreign_origin_form", get(b"Host: evil.example", host=False),
         Reject(421, code="PROXY_MISDIRECTED_REQUEST", closed=None),
         "origin-form with a Host that does not name the proxy (a page rebinding its own name "
         "to the proxy's address) is refused: nothing goes upstream"),
    Case("host_with_port", get(b"Host: " + ASC.encode() + b":8443", host=False), Forward()),
    Case("double_slash_path", get(line=b"GET //evil.example/v1/apps HTTP/1.1"),
         Forward(target(b"//evil.example/v1/apps"))),
    Case("expect_100_continue_body_sent", post(b"Expect: 100-continue", b"Content-Length: 5"),
         Forward(body(b"hello"))),
    # CONNECT
    Case("connect_configured", b"CONNECT " + ASC.encode() + b":443 HTTP/1.1\r\nHost: " +
         ASC.encode() + b":443\r\n\r\n", Reject(405, code="PROXY_CONNECT_NOT_SUPPORTED")),
    Case("connect_foreign", b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
         Reject(405)),
    Case("connect_loopback", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
         Reject(405)),
    Case("connect_with_tls_bytes", b"CONNECT " + ASC.encode() + b":443 HTTP/1.1\r\nHost: " +
         ASC.encode() + b":443\r\n\r\n\x16\x03\x01\x00\x05hello", Reject(405)),
    # Absolute-form: only configured upstreams
    Case("absolute_foreign_https", get(b"Host: evil.example", host=False,
                                       line=b"GET https://evil.example/v1/apps HTTP/1.1"),
         Reject(403, code="PROXY_FORBIDDEN_HOST", closed=None)),
    Case("absolute_foreign_http", get(line=b"GET http://evil.example/v1/apps HTTP/1.1"),
         Reject(403, closed=None)),
    Case("absolute_foreign_post", get(b"Content-Length: 5",
                                      line=b"POST https://evil.example/v1/x HTTP/1.1") + b"hello",
         Reject(403, closed=None)),
    Case("absolute_loopback_ip", get(line=b"GET http://127.0.0.1/v1/apps HTTP/1.1"),
         Reject(403, closed=None)),
    Case("absolute_loopback_ipv6", get(line=b"GET http://[::1]:8080/v1/apps HTTP/1.1"),
         Reject(403, closed=None)),
    Case("absolute_trailing_dot", get(line=b"GET https://" + ASC.encode() + b"./v1 HTTP/1.1"),
         Reject(403, 400, closed=None)),
    Case("absolute_suffix_host",
         get(line=b"GET https://" + ASC.encode() + b".evil.example/ HTTP/1.1"),
         Reject(403, closed=None)),
    Case("absolute_prefix_host", get(line=b"GET https://evil" + ASC.encode() + b"/ HTTP/1.1"),
         Reject(403, closed=None)),
    Case("absolute_percent_host",
         get(line=b"GET https://api%2eappstoreconnect.apple.com/ HTTP/1.1"),
         Reject(403, 400, closed=None)),
    Case("absolute_userinfo", get(line=b"GET https://user:pw@" + ASC.encode() + b"/v1 HTTP/1.1"),
         Reject(400)),
    Case("absolute_at_trick", get(line=b"GET https://" + ASC.encode() + b"@evil.example/ HTTP/1.1"),
         Reject(400, 403, closed=None)),
    Case("absolute_backslash_at", get(line=b"GET https://evil.example\\@" + ASC.encode() +
                                      b"/ HTTP/1.1"), Reject(400, 403, closed=None)),
    Case("absolute_empty_host", get(line=b"GET https:///v1/apps HTTP/1.1"),
         Reject(400, 403, closed=None)),
    Case("absolute_ftp", get(line=b"GET ftp://" + ASC.encode() + b"/ HTTP/1.1"), Reject(400)),
    Case("absolute_no_slashes", get(line=b"GET https:" + ASC.encode() + b"/v1 HTTP/1.1"),
         Reject(400)),
    Case("authority_form_get", get(line=b"GET " + ASC.encode() + b":443 HTTP/1.1"), Reject(400)),
    Case("absolute_foreign_host_header_configured",
         get(line=b"GET https://evil.example/v1/apps HTTP/1.1"), Reject(403, closed=None)),
    Case("absolute_configured", get(b"Host: evil.example", host=False,
                                    line=b"GET https://" + ASC.encode() + b"/v1/apps HTTP/1.1"),
         Forward(target(b"/v1/apps"))),
    Case("absolute_configured_upper_case",
         get(line=b"GET HTTPS://API.APPSTORECONNECT.APPLE.COM/v1/apps HTTP/1.1"),
         Forward(target(b"/v1/apps"))),
    Case("absolute_configured_http_scheme",
         get(line=b"GET http://" + ASC.encode() + b"/v1 HTTP/1.1"),
         Forward(target(b"/v1"))),
    Case("absolute_configured_other_port",
         get(line=b"GET https://" + ASC.encode() + b":8443/v1 HTTP/1.1"), Forward(target(b"/v1")),
         "the port of an absolute-form target never redirects: the configured address is used"),
    Case("absolute_configured_no_path", get(line=b"GET https://" + ASC.encode() + b" HTTP/1.1"),
         Forward(target(b"/"))),
    Case("absolute_configured_query_only",
         get(line=b"GET https://" + ASC.encode() + b"?a=1 HTTP/1.1"), Forward(target(b"/?a=1"))),
    Case("absolute_configured_dot_segment",
         get(line=b"GET https://" + ASC.encode() + b"/v1/../x HTTP/1.1"), Reject(400)),
]


class HopByHopTest(CaseTest, unittest.TestCase):
    fx = None

    @classmethod
    def setUpClass(cls):
        cls.fx = ProxyFixture()

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()

    def test_expect_100_continue_answered_by_the_proxy(self):
        """Expect: 100-continue: the proxy sends 100 Continue itself, the upstream never sees
        Expect, and the body follows."""
        fx = self.fx
        mark = fx.up.mark()
        c = h.HttpClient(fx.port, timeout=5)
        try:
            c.send(post(b"Expect: 100-continue", b"Content-Length: 5", body=b""))
            interim = c.read_head()
            self.assertEqual(interim.status, 100)
            c.send(b"hello")
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, OK_BODY)
        finally:
            c.close()
        reqs = fx.up.requests_since(mark)
        self.assertEqual(len(reqs), 1)
        self.assertEqual(parse_request_strict(reqs[0][1], ASC).body, b"hello")

    def test_token_never_in_error_bodies(self):
        """The proxy's own errors never carry the token (checked on a 403 and a 405)."""
        for raw in (get(line=b"GET https://evil.example/ HTTP/1.1"),
                    b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"):
            o = converse(self.fx.port, raw)
            self.assertNotIn(b"eyJ", o.responses[0].body)
            self.assertNotIn(b"eyJ", o.responses[0].raw_head)


add_cases(HopByHopTest, CASES)


def key_fragments(key):
    """The base64 lines of the private key's PEM (any one of them in an output is a leak)."""
    lines = key.private_pem.decode().splitlines()
    return [ln for ln in lines if ln and not ln.startswith("-----")]


class SecretLeakTest(unittest.TestCase):
    """docs/testing.md: the token and key never appear in logs, error bodies, metrics,
    /proc/<pid>/cmdline or environ. The key is given through private_key_env here, the way a
    container would; the access log and the admin endpoints are on."""

    @classmethod
    def setUpClass(cls):
        # The key is made first: the proxy's environment must hold its PEM.
        key = h.make_key(publish=False)
        fx = ProxyFixture.__new__(ProxyFixture)
        fx.key = key
        fx.up = RawUpstream("good")
        fx.cred = h.credential("app-store-connect", key,
                               key_source=("private_key_env", "AAP_HOSTILE_KEY"))
        routes = [h.route(fx.up.address, "app-store-connect", "asc")]
        fx.config_path = h.write_config({"asc": fx.cred}, routes, workers=1,
                                        admin_listen="127.0.0.1:0",
                                        access_log={"path": "-", "format": "json"})
        fx.proxy = h.start_proxy(fx.config_path, env={"AAP_HOSTILE_KEY": key.private_pem.decode()})
        fx.port = fx.proxy.port
        cls.fx = fx

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()

    def outputs(self):
        import urllib.request
        fx = self.fx
        out = {"stdout": fx.proxy.stdout_text(), "stderr": fx.proxy.stderr_text()}
        if fx.proxy.admin_port:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % fx.proxy.admin_port,
                                        timeout=5) as r:
                out["metrics"] = r.read().decode("utf-8", "replace")
        with open("/proc/%d/cmdline" % fx.proxy.pid, "rb") as f:
            out["cmdline"] = f.read().decode("latin-1")
        with open("/proc/%d/environ" % fx.proxy.pid, "rb") as f:
            out["environ"] = f.read().decode("latin-1")
        return out

    def traffic(self):
        fx = self.fx
        mark = fx.up.mark()
        bodies = []
        for raw in (get(b"Authorization: Bearer client-secret-xyz"),
                    get(line=b"GET /v1/apps?access_token=query-secret-xyz HTTP/1.1"),
                    get(b"X-A: a\r\n b"),
                    get(line=b"GET https://evil.example/ HTTP/1.1"),
                    b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"):
            o = converse(fx.port, raw)
            bodies += [r.raw_head + r.body for r in o.responses]
        fx.up.queue([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx"])
        o = converse(fx.port, get())
        bodies += [r.raw_head + r.body for r in o.responses]
        reqs = fx.up.requests_since(mark)
        token = parse_request_strict(reqs[0][1], ASC).get("authorization").split(b" ")[1].decode()
        time.sleep(0.6)  # the access log is flushed every 200 ms
        return token, bodies

    def test_token_and_key_in_no_output(self):
        token, bodies = self.traffic()
        secrets = {"token": token, "token signature": token.rsplit(".", 1)[1],
                   "PEM marker": "PRIVATE KEY"}
        for i, frag in enumerate(key_fragments(self.fx.key)):
            secrets["key line %d" % i] = frag
        outs = self.outputs()
        outs["error bodies"] = b"".join(bodies).decode("latin-1")
        self.assertIn("/v1/apps", outs["stdout"], "the access log is empty: nothing was checked")
        for where, text in outs.items():
            if where == "environ":
                continue  # test_key_not_in_environ
            for what, secret in secrets.items():
                self.assertNotIn(secret, text, "%s appears in %s" % (what, where))
            self.assertNotIn("client-secret-xyz", text,
                             "a client's Authorization value appears in %s" % where)

    def test_key_not_in_environ(self):
        """The key given through private_key_env does not stay readable in
        /proc/<pid>/environ (as APP_STORE_CONNECT_API_KEY_KEY and WEATHERKIT_KEY do not)."""
        environ = self.outputs()["environ"]
        for frag in key_fragments(self.fx.key):
            self.assertNotIn(frag, environ, "the private key is readable in /proc/%d/environ "
                             "(private_key_env AAP_HOSTILE_KEY)" % self.fx.proxy.pid)

    def test_env_only_mode_scrubs_key(self):
        key = h.make_key(publish=False)
        env = h.clean_env({"APP_STORE_CONNECT_API_KEY_KEY_ID": key.kid,
                           "APP_STORE_CONNECT_API_KEY_ISSUER_ID":
                               "69a6de95-023f-47e3-e053-5b8c7c11a4d1",
                           "APP_STORE_CONNECT_API_KEY_KEY": key.private_pem.decode(),
                           "APPLE_AUTH_PROXY_LISTEN": "127.0.0.1:0",
                           "APPLE_AUTH_PROXY_ADMIN_LISTEN": "off"})
        p = h._Process("proxy-env", [h.BINARY, "serve"], env=env)
        try:
            deadline = time.monotonic() + 10
            while "listening on" not in p.stderr_text():
                self.assertTrue(p.alive(), p.stderr_text())
                self.assertLess(time.monotonic(), deadline, p.stderr_text())
                time.sleep(0.05)
            with open("/proc/%d/environ" % p.pid, "rb") as f:
                environ = f.read().decode("latin-1")
            with open("/proc/%d/cmdline" % p.pid, "rb") as f:
                cmdline = f.read().decode("latin-1")
            for frag in key_fragments(key):
                self.assertNotIn(frag, environ)
                self.assertNotIn(frag, cmdline)
        finally:
            p.stop()

if __name__ == "__main__":
    unittest.main(verbosity=2)
