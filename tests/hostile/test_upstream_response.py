"""Hostile upstream responses (docs/testing.md "Upstream responses").

The recording upstream (rawupstream.py) answers each case's request with scripted bytes. What
the client must see:
  Bad  - invalid framing or no usable head: the proxy's 502 (or 504 for silence) before any
         byte of the upstream's response, and the upstream connection is closed.
  Cut  - the upstream fails after the head went out: the client connection is closed without
         a clean end (Content-Length short, or no final 0 chunk), never a complete response.
  Clean - a valid but unusual response: relayed whole, with hop-by-hop fields removed; checks
         say whether the upstream connection may be reused.
Every request the upstream received is also judged with parse_request_strict.
"""
import json
import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import (ASC, ProxyFixture, converse, error_code, h,  # noqa: E402
                     ok_response, parse_request_strict)

RESPONSE_TIMEOUT = 1.5
GET = b"GET /v1/apps HTTP/1.1\r\nHost: " + ASC.encode() + b"\r\n\r\n"
HEAD = b"HEAD /v1/apps HTTP/1.1\r\nHost: " + ASC.encode() + b"\r\n\r\n"


def resp(*lines, body=b"", status=b"HTTP/1.1 200 OK"):
    return status + b"\r\n" + b"".join(x + b"\r\n" for x in lines) + b"\r\n" + body


class Bad:
    def __init__(self, status=502, code="PROXY_BAD_UPSTREAM_RESPONSE"):
        self.status, self.code = status, code


class Cut:
    pass


class Clean:
    def __init__(self, status=200, body=None, check=None, reused=None, method="GET"):
        self.status, self.body, self.check, self.reused, self.method = (
            status, body, check, reused, method)


class UCase:
    def __init__(self, name, script, expect, request=GET, doc=""):
        self.name, self.script, self.expect, self.request, self.doc = (
            name, script, expect, request, doc)


def many_headers(n):
    return [b"X-H%d: v" % i for i in range(n)]


def no_fields(*names):
    def check(t, r):
        got = [k.lower() for k, _ in r.headers]
        for n in names:
            t.assertNotIn(n, got, "%s relayed to the client: %r" % (n, r.headers))
    return check


def header_is(name, value):
    def check(t, r):
        t.assertEqual(r.header_all(name), [value])
    return check


CASES = [
    # Framing the proxy cannot trust -> 502 before the head
    UCase("dup_cl_equal", [resp(b"Content-Length: 5", b"Content-Length: 5", body=b"hello")], Bad()),
    UCase("dup_cl_different", [resp(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!")],
          Bad()),
    UCase("cl_list", [resp(b"Content-Length: 5, 5", body=b"hello")], Bad()),
    UCase("cl_and_te", [resp(b"Content-Length: 5", b"Transfer-Encoding: chunked",
                             body=b"5\r\nhello\r\n0\r\n\r\n")], Bad()),
    UCase("te_and_cl", [resp(b"Transfer-Encoding: chunked", b"Content-Length: 5",
                             body=b"5\r\nhello\r\n0\r\n\r\n")], Bad()),
    UCase("te_unknown", [resp(b"Transfer-Encoding: gzip", body=b"\x1f\x8b"), "close"], Bad()),
    UCase("te_identity", [resp(b"Transfer-Encoding: identity", body=b"hello"), "close"], Bad()),
    UCase("te_chunked_then_identity", [resp(b"Transfer-Encoding: chunked, identity",
                                            body=b"hello"), "close"], Bad()),
    UCase("te_twice", [resp(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked",
                            body=b"5\r\nhello\r\n0\r\n\r\n")], Bad()),
    UCase("te_xchunked", [resp(b"Transfer-Encoding: xchunked", body=b"hello"), "close"], Bad()),
    UCase("cl_negative", [resp(b"Content-Length: -1", body=b"hello")], Bad()),
    UCase("cl_plus", [resp(b"Content-Length: +5", body=b"hello")], Bad()),
    UCase("cl_hex", [resp(b"Content-Length: 0x5", body=b"hello")], Bad()),
    UCase("cl_overflow", [resp(b"Content-Length: 99999999999999999999999", body=b"hello")], Bad()),
    UCase("cl_empty", [resp(b"Content-Length: ", body=b"hello")], Bad()),
    # Syntax
    UCase("bare_lf_response", [b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"], Bad()),
    UCase("bare_lf_in_head", [b"HTTP/1.1 200 OK\r\nX-A: a\nContent-Length: 2\r\n\r\nok"], Bad()),
    UCase("bare_cr_in_head", [b"HTTP/1.1 200 OK\r\nX-A: a\rContent-Length: 2\r\n\r\nok"], Bad()),
    UCase("obs_fold", [resp(b"X-A: a", b" folded", b"Content-Length: 2", body=b"ok")], Bad()),
    UCase("space_before_colon", [resp(b"Content-Length : 2", body=b"ok")], Bad()),
    UCase("nul_in_value", [resp(b"X-A: a\x00b", b"Content-Length: 2", body=b"ok")], Bad()),
    UCase("bad_name", [resp(b"X A: b", b"Content-Length: 2", body=b"ok")], Bad()),
    UCase("status_four_digits", [b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"], Bad()),
    UCase("status_below_100", [b"HTTP/1.1 011 Weird\r\n\r\n" + ok_response()], Bad(),
          doc="RFC 9110 15: status codes are 100..599 (600..999 tolerated); 000-099 is not an "
              "interim response to skip but an invalid one (found by fuzz_response)"),
    UCase("status_below_100_body_injection",
          [b"HTTP/1.1 099 X\r\nContent-Length: 57\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Injected: 1\r\n\r\nEVIL"], Bad(),
          doc="the body of a status-0xx response must never reach the client raw: here it "
              "is a whole forged response"),
    UCase("status_1xx_with_body_injection",
          [b"HTTP/1.1 199 X\r\nContent-Length: 57\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Injected: 1\r\n\r\nEVIL"], Bad(),
          doc="llhttp treats only 100-103, 204 and 304 as bodiless: a 199 with Content-Length "
              "must not reach the client raw either (found by fuzz_response)"),
    UCase("status_000", [b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok"], Bad()),
    UCase("status_line_garbage", [b"hello world\r\n\r\n", "close"], Bad()),
    UCase("http09_body_only", [b"ok", "close"], Bad()),
    UCase("switching_protocols", [resp(b"Upgrade: websocket", b"Connection: Upgrade",
                                       status=b"HTTP/1.1 101 Switching Protocols") +
                                  b"\x81\x05hello"], Bad(),
          doc="101 is never relayed: the proxy does not tunnel"),
    UCase("huge_header_section", [resp(*[b"X-Big-%d: %s" % (i, b"v" * 1000) for i in range(70)],
                                       b"Content-Length: 2", body=b"ok")], Bad()),
    UCase("too_many_headers", [resp(*many_headers(300), b"Content-Length: 2", body=b"ok")],
          Bad()),
    # The upstream goes away or stays silent before the head
    UCase("reset_before_head", ["reset"], Bad(code="PROXY_UPSTREAM_UNREACHABLE")),
    UCase("close_before_head", ["close"], Bad(code="PROXY_UPSTREAM_UNREACHABLE")),
    UCase("dirty_close_before_head", ["dirty_close"], Bad(code="PROXY_UPSTREAM_UNREACHABLE")),
    UCase("partial_head_then_close", [b"HTTP/1.1 200 OK\r\nContent-Le", "close"],
          Bad(code=None)),
    UCase("never_answers", ["hang"], Bad(504, "PROXY_UPSTREAM_TIMEOUT")),
    UCase("partial_head_then_silence", [b"HTTP/1.1 200 OK\r\n", "hang"],
          Bad(504, "PROXY_UPSTREAM_TIMEOUT")),
    # Failures after the head: the client must not see a clean end
    UCase("truncated_cl_then_close", [resp(b"Content-Length: 100", body=b"0123456789"), "close"],
          Cut()),
    UCase("truncated_cl_then_reset", [resp(b"Content-Length: 100", body=b"0123456789"),
                                      ("sleep", 0.1), "reset"], Cut()),
    UCase("truncated_chunked_then_close", [resp(b"Transfer-Encoding: chunked",
                                                body=b"a\r\n0123456789\r\n"), "close"], Cut()),
    UCase("truncated_inside_chunk", [resp(b"Transfer-Encoding: chunked", body=b"64\r\n0123"),
                                     "close"], Cut()),
    UCase("truncated_chunked_dirty_close", [resp(b"Transfer-Encoding: chunked",
                                                 body=b"5\r\nhello\r\n"), "dirty_close"], Cut()),
    UCase("bad_chunk_size_mid_body", [resp(b"Transfer-Encoding: chunked",
                                           body=b"5\r\nhello\r\nzz\r\n\r\n")], Cut()),
    UCase("bare_lf_chunk_mid_body", [resp(b"Transfer-Encoding: chunked",
                                          body=b"5\r\nhello\r\n5\nworld\n0\n\n")], Cut()),
    UCase("chunk_longer_than_declared", [resp(b"Transfer-Encoding: chunked",
                                              body=b"5\r\nhelloEXTRA\r\n0\r\n\r\n")], Cut()),
    UCase("stalls_mid_body", [resp(b"Content-Length: 100", body=b"0123456789"), "hang"], Cut(),
          doc="upstream_response_timeout mid-response closes the client connection"),
    # Valid, unusual: relayed whole
    UCase("garbage_after_cl_body", [resp(b"Content-Length: 5", body=b"helloGARBAGE")],
          Clean(body=b"hello", reused=False)),
    UCase("garbage_after_chunked_body", [resp(b"Transfer-Encoding: chunked",
                                              body=b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"
                                                   b"Content-Length: 4\r\n\r\nevil")],
          Clean(body=b"hello", reused=False)),
    UCase("body_after_head_response", [resp(b"Content-Length: 5", body=b"hello")],
          Clean(body=b"", reused=False, method="HEAD", check=header_is("content-length", "5")),
          request=HEAD),
    UCase("body_after_204", [resp(status=b"HTTP/1.1 204 No Content", body=b"hello")],
          Clean(status=204, body=b"", reused=False)),
    UCase("close_delimited", [resp(body=b"until the end"), "close"],
          Clean(body=b"until the end", reused=False)),
    UCase("interim_100_then_200", [resp(status=b"HTTP/1.1 100 Continue") +
                                   resp(b"Content-Length: 2", body=b"ok")],
          Clean(body=b"ok", reused=True)),
    UCase("early_hints_then_200", [resp(b"Link: </a.css>; rel=preload",
                                        status=b"HTTP/1.1 103 Early Hints") +
                                   resp(b"Content-Length: 2", body=b"ok")],
          Clean(body=b"ok", check=no_fields("link"))),
    UCase("hop_by_hop_response_fields",
          [resp(b"Connection: X-Up-Secret, keep-alive", b"X-Up-Secret: 1", b"Keep-Alive: timeout=1",
                b"Proxy-Authenticate: Basic realm=x", b"Proxy-Connection: keep-alive",
                b"Upgrade: h2c", b"Trailer: X-T", b"TE: trailers", b"X-Kept: 1",
                b"Content-Length: 2", body=b"ok")],
          Clean(body=b"ok", check=lambda t, r: (no_fields(
              "x-up-secret", "keep-alive", "proxy-authenticate", "proxy-connection", "upgrade",
              "trailer", "te")(t, r), t.assertEqual(r.header("x-kept"), "1")))),
    UCase("redirect_not_followed", [resp(b"Location: https://evil.example/steal",
                                         b"Content-Length: 0", status=b"HTTP/1.1 302 Found")],
          Clean(status=302, body=b"", check=header_is("location", "https://evil.example/steal")),
          doc="3xx goes back to the client; the proxy never follows it with the token"),
    UCase("redirect_307_not_followed", [resp(b"Location: http://127.0.0.1:1/",
                                             b"Content-Length: 0",
                                             status=b"HTTP/1.1 307 Temporary Redirect")],
          Clean(status=307, body=b"")),
    UCase("cl_leading_zeros", [resp(b"Content-Length: 005", body=b"hello")],
          Clean(body=b"hello", check=header_is("content-length", "5"))),
    UCase("chunked_with_extensions_and_trailers",
          [resp(b"Transfer-Encoding: chunked",
                body=b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n")],
          Clean(body=b"hello", reused=True, check=lambda t, r: t.assertEqual(r.trailers, []))),
    UCase("framing_field_in_trailers",
          [resp(b"Transfer-Encoding: chunked",
                body=b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n")],
          Cut(), doc="llhttp refuses Content-Length in trailers: the response is cut"),
]


class UpstreamResponseTest(unittest.TestCase):
    fx = None

    @classmethod
    def setUpClass(cls):
        cls.fx = ProxyFixture(limits={"upstream_response_timeout": RESPONSE_TIMEOUT})

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()

    def tearDown(self):
        self.fx.up.reset_scripts()

    def run_case(self, case):
        fx = self.fx
        fx.up.reset_scripts()
        # Every attempt gets the script (a retry on a new connection misbehaves the same way).
        fx.up.set_behaviour(case.script)
        mark = fx.up.mark()
        e = case.expect
        method = e.method if isinstance(e, Clean) else "GET"
        o = converse(fx.port, case.request, nresp=1, methods=[method],
                     timeout=RESPONSE_TIMEOUT + 5)
        fx.up.reset_scripts()
        reqs = fx.up.requests_since(mark)
        self.assertTrue(reqs, "%s: the upstream got no request" % case.name)
        for _, raw in reqs:
            parse_request_strict(raw, ASC)
        if isinstance(e, Bad):
            self.assertEqual(len(o.responses), 1, "%s: %r" % (case.name, o))
            r = o.responses[0]
            self.assertEqual(r.status, e.status, "%s: %r %r" % (case.name, r, r.body[:300]))
            code = error_code(r)
            self.assertIsNotNone(code, "%s: not the proxy's own error: %r" % (case.name, r.body))
            if e.code:
                self.assertEqual(code, e.code, case.name)
            self.assertTrue(r.complete, case.name)
            self.assertNotIn(b"evil", r.raw_head + r.body)
            self.assertLessEqual(len(reqs), 2, "%s: more than one retry" % case.name)
            self.assert_conns_closed(case, reqs)
        elif isinstance(e, Cut):
            # Either the head and part of the body, or (when the failure comes before the
            # proxy flushed anything) no byte at all; never a complete response.
            self.assertLessEqual(len(o.responses), 1, "%s: %r" % (case.name, o))
            for r in o.responses:
                self.assertEqual(r.status, 200, case.name)
                self.assertFalse(r.complete, "%s: a cut response reached the client as "
                                 "complete (body %r)" % (case.name, r.body[:200]))
            self.assertTrue(o.closed, "%s: %r" % (case.name, o))
            self.assertIsNone(o.error, case.name)
            self.assert_conns_closed(case, reqs)
        else:
            self.assertEqual(o.statuses(), [e.status], "%s: %r" % (case.name, o))
            r = o.responses[0]
            self.assertTrue(r.complete, case.name)
            if e.body is not None:
                self.assertEqual(r.body, e.body, case.name)
            if e.check:
                e.check(self, r)
            self.assertEqual(len(reqs), 1, case.name)
            conn = reqs[0][0]
            if e.reused is False:
                self.assert_conns_closed(case, reqs)
                # ... and the next request opens a new connection.
                mark2 = fx.up.mark()
                o2 = converse(fx.port, GET)
                self.assertEqual(o2.statuses(), [200], case.name)
                r2 = fx.up.requests_since(mark2)
                self.assertEqual(len(r2), 1, case.name)
                self.assertIsNot(r2[0][0], conn, "%s: the upstream connection was reused "
                                 "after an unclean response" % case.name)
            elif e.reused:
                time.sleep(0.1)
                self.assertFalse(conn.closed, "%s: a clean connection was not kept" % case.name)

    def assert_conns_closed(self, case, reqs):
        for conn in {c for c, _ in reqs}:
            self.fx.up.wait(lambda: conn.closed, 3.0)
            self.assertTrue(conn.closed, "%s: the upstream connection stayed open (could be "
                            "pooled)" % case.name)

    # -- explicit sequences -----------------------------------------------------------------------

    def test_clean_response_reuses_the_connection(self):
        """Control for the not-reused checks: two clean exchanges share one connection."""
        fx = self.fx
        converse(fx.port, GET)
        mark = fx.up.mark()
        for _ in range(2):
            self.assertEqual(converse(fx.port, GET).statuses(), [200])
        reqs = fx.up.requests_since(mark)
        self.assertEqual(len(reqs), 2)
        self.assertIs(reqs[0][0], reqs[1][0])

    def test_pooled_connection_closed_when_request_arrives_is_retried(self):
        """A pooled connection the upstream closes as the request arrives: an idempotent
        request is retried once on a new connection; never a spurious 502."""
        fx = self.fx
        self.assertEqual(converse(fx.port, GET).statuses(), [200])  # a pooled connection
        mark = fx.up.mark()
        fx.up.queue(["close"])  # the next request: read, then closed without an answer
        o = converse(fx.port, GET)
        self.assertEqual(o.statuses(), [200], "%r" % o)
        reqs = fx.up.requests_since(mark)
        self.assertEqual(len(reqs), 2)
        self.assertIsNot(reqs[0][0], reqs[1][0])

    def test_pooled_connection_closed_after_post_body_not_retried(self):
        """The same for a POST whose body went out: not retried (the upstream may have acted
        on it), a 502 instead."""
        fx = self.fx
        self.assertEqual(converse(fx.port, GET).statuses(), [200])
        mark = fx.up.mark()
        fx.up.queue(["close"], ["close"])
        raw = (b"POST /v1/x HTTP/1.1\r\nHost: " + ASC.encode() +
               b"\r\nContent-Length: 5\r\n\r\nhello")
        o = converse(fx.port, raw)
        self.assertEqual(o.statuses(), [502], "%r" % o)
        self.assertEqual(len(fx.up.requests_since(mark)), 1)

    # The retry of a request whose pooled connection dies, at each point of a chunked
    # upload. The body hides a whole second request after a "0" chunk: were a chunk-size line
    # lost on the way to a new connection, the upstream would read the client's data as
    # framing and run that request.
    SMUGGLED = (b"0\r\n\r\nDELETE /v1/smuggled HTTP/1.1\r\nHost: " + ASC.encode() +
                b"\r\nContent-Length: 0\r\n\r\n")
    CHUNKED_HEAD = (b"POST /v1/x HTTP/1.1\r\nHost: " + ASC.encode() +
                    b"\r\nTransfer-Encoding: chunked\r\n\r\n")

    def retry_case(self, first, rest, cut, body):
        """Pools a connection, arms a cut of it at `cut` (a predicate on the bytes it receives),
        sends `first`, waits for the cut, then sends `rest`. The client must get a 200 from a
        correctly framed request carrying `body` on a new connection, or a 502; whatever the
        upstream received is the client's framing and nothing else."""
        fx = self.fx
        self.assertEqual(converse(fx.port, GET).statuses(), [200])  # a pooled connection
        mark = fx.up.mark()
        fx.up.cut_when(cut)
        c = h.HttpClient(fx.port, timeout=RESPONSE_TIMEOUT + 8)
        try:
            c.send(first)
            # (wait() holds the upstream's lock while it calls these: they read conns bare.)
            fx.up.wait(lambda: any(x.closed_by == "us" for x in fx.up.conns), timeout=10)
            # Give a retry time to open its connection before the rest arrives.
            fx.up.wait(lambda: len(fx.up.conns) > mark.nconns, timeout=1.0)
            if rest:
                try:
                    c.send(rest)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            try:
                r = c.read_response("POST")
            except (socket.timeout, TimeoutError):
                self.fail("no answer: the retried request hangs")
        finally:
            c.close()
        self.assertIn(r.status, (200, 502), "%r" % r.body)
        if r.status == 502:
            self.assertEqual(error_code(r), "PROXY_UPSTREAM_UNREACHABLE")
        # Every byte a connection other than the cut one received must be whole requests,
        # each exactly as the client framed it.
        fx.up.wait(lambda: r.status == 502 or fx.up._requests_since_nolock(mark), timeout=5)
        time.sleep(0.2)
        cut_conns = [x for x in fx.up.conns if x.closed_by == "us"]
        for conn in fx.up.new_conns(mark):
            data = bytes(conn.data)
            self.assertNotIn(b"/v1/smuggled", data.split(b"\r\n\r\n", 1)[0])
            if conn in cut_conns or not data:
                continue
            req = parse_request_strict(data, ASC)
            self.assertEqual(req.body, body, "the new connection got %r" % data[-200:])
        if r.status == 200:
            reqs = [(conn, raw) for conn, raw in fx.up.requests_since(mark)]
            self.assertEqual(len(reqs), 1, "%r" % reqs)
            self.assertEqual(parse_request_strict(reqs[0][1], ASC).body, body)
        for conn, raw in fx.up.requests_since(mark):
            self.assertEqual(raw.split(b" ", 2)[1], b"/v1/x", "%r" % raw[:300])

    @staticmethod
    def _head_seen(d):
        return b"\r\n\r\n" in d

    def test_retry_cut_after_head_is_retried_whole(self):
        """Cut once the head is up, before any of the body was read from the client: retried,
        and the new connection gets the whole request."""
        data = b"%x\r\n" % len(self.SMUGGLED) + self.SMUGGLED + b"\r\n0\r\n\r\n"
        self.retry_case(self.CHUNKED_HEAD, data, self._head_seen, self.SMUGGLED)

    def test_retry_cut_after_chunk_size_line_regression(self):
        """Cut after the head and the first chunk-size line: that line was consumed, so a
        retry could not resend it; the client gets a 502 and the data is never read as framing
        (a retry used to send the chunk's data as if it were framing)."""
        size = b"%x\r\n" % len(self.SMUGGLED)

        def cut(d):
            i = d.find(b"\r\n\r\n")
            return i >= 0 and d.endswith(b"\r\n") and len(d) > i + 4
        self.retry_case(self.CHUNKED_HEAD + size, self.SMUGGLED + b"\r\n0\r\n\r\n", cut,
                        self.SMUGGLED)

    def test_retry_cut_mid_chunk_data(self):
        """Cut in the middle of a chunk's data: a 502, nothing more reaches any upstream."""
        size = b"%x\r\n" % len(self.SMUGGLED)
        half = self.SMUGGLED[:10]
        self.retry_case(self.CHUNKED_HEAD + size + half,
                        self.SMUGGLED[10:] + b"\r\n0\r\n\r\n",
                        lambda d: d.endswith(half), self.SMUGGLED)

    def test_retry_cut_after_last_chunk(self):
        """Cut after the whole request (data and the last chunk) went up: the upstream may have
        acted on it, so a 502."""
        body = b"hello"
        self.retry_case(self.CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n\r\n", b"",
                        lambda d: d.endswith(b"0\r\n\r\n"), body)

    def test_retry_cut_after_empty_chunked_body_regression(self):
        """An empty chunked body ("0" chunk only) cut after it went up: answered (a 502), never
        left hanging (a retry used to send the head without the last chunk and wait forever)."""
        self.retry_case(self.CHUNKED_HEAD + b"0\r\n\r\n", b"",
                        lambda d: d.endswith(b"0\r\n\r\n"), b"")

    def test_te_chunked_with_trailing_whitespace(self):
        """RFC 9110 5.5 allows OWS after a field value, so "chunked<TAB>" is chunked; whatever
        the proxy decides, its framing and its parser's must agree: either a 502 before the
        head, or the body de-chunked ("hello"), never the raw chunk syntax as content (found
        by fuzz_response)."""
        fx = self.fx
        for te in (b"chunked\t", b"chunked ", b"chunked \t "):
            fx.up.set_behaviour([resp(b"Transfer-Encoding: " + te,
                                      body=b"5\r\nhello\r\n0\r\n\r\n")])
            o = converse(fx.port, GET, timeout=RESPONSE_TIMEOUT + 5)
            fx.up.reset_scripts()
            self.assertEqual(len(o.responses), 1, "TE %r: %r" % (te, o))
            r = o.responses[0]
            if r.status == 502:
                self.assertEqual(error_code(r), "PROXY_BAD_UPSTREAM_RESPONSE")
            else:
                self.assertEqual((r.status, r.complete, r.body), (200, True, b"hello"),
                                 "TE %r: the client got %r (complete=%s)" % (te, r.body,
                                                                            r.complete))

    def test_error_bodies_name_no_token(self):
        fx = self.fx
        fx.up.set_behaviour([resp(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!")])
        o = converse(fx.port, GET)
        fx.up.reset_scripts()
        doc = json.loads(o.responses[0].body)
        self.assertNotIn("eyJ", json.dumps(doc))


def _add(cls, cases):
    for case in cases:
        def t(self, case=case):
            self.run_case(case)
        t.__name__ = "test_" + case.name
        t.__doc__ = case.doc or None
        setattr(cls, t.__name__, t)
    cls.CASES = cases


_add(UpstreamResponseTest, CASES)

if __name__ == "__main__":
    unittest.main(verbosity=2)
