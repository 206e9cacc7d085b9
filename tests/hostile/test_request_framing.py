"""Hostile input, request framing and smuggling (docs/testing.md "Request framing").

Every case is sent byte for byte on a raw socket to the proxy, which routes to a recording TLS
upstream (rawupstream.py). Rejections: the proxy's JSON error, Connection: close, a closed
connection, and not one byte (nor a connection) at the upstream. Accepted requests: exactly the
expected number of requests at the upstream, each re-serialised by the proxy and judged by
parse_request_strict (CRLF only, one Host, one Bearer, no hop-by-hop field, canonical framing
that matches the body).

The Transfer-Encoding obfuscations are the ones request-smuggling scanners send (smuggler.py,
Burp's HTTP Request Smuggler): each is sent together with a Content-Length, so that a parser
that honoured either header alone would frame the body differently from one that honoured the
other.
"""
import os
import socket
import struct
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import (ASC, OK_BODY, Case, CaseTest, Forward, OneOf, ProxyFixture,  # noqa: E402
                     Reject, RejectMidBody, add_cases, assert_alive, converse, h,
                     parse_request_strict, req)

HOST = b"Host: " + ASC.encode()
# The classic CL.TE probe: by Content-Length the body is 6 bytes; by chunked it ends after
# "0\r\n\r\n" and the "G" would prefix the next request ("GPOST ...").
PROBE_BODY = b"0\r\n\r\nG"


def post(headers, body=b"", target=b"/v1/x", version=b"HTTP/1.1"):
    """A POST with Host first, then the given raw header lines (bytes, no CRLF)."""
    return (b"POST " + target + b" " + version + b"\r\n" + HOST + b"\r\n" +
            b"".join(hd + b"\r\n" for hd in headers) + b"\r\n" + body)


def cl_te(te_line, cl=b"Content-Length: 6", body=PROBE_BODY):
    return post([cl, te_line], body)


def body_is(expected, chunked=None):
    def check(t, reqs, outcome):
        t.assertEqual(reqs[0].body, expected)
        if chunked is not None:
            t.assertEqual(reqs[0].chunked, chunked)
    return check


def cl_forwarded(n, body):
    def check(t, reqs, outcome):
        r = reqs[0]
        t.assertEqual(r.all("content-length"), [b"%d" % n])
        t.assertFalse(r.chunked)
        t.assertEqual(r.body, body)
    return check


# Transfer-Encoding obfuscations, each sent after "Content-Length: 6".
TE_OBFUSCATIONS = [
    ("plain", b"Transfer-Encoding: chunked"),
    ("space_before_colon", b"Transfer-Encoding : chunked"),
    ("tab_before_colon", b"Transfer-Encoding\t: chunked"),
    ("tab_after_colon", b"Transfer-Encoding:\tchunked"),
    ("no_space_after_colon", b"Transfer-Encoding:chunked"),
    ("nul_in_name", b"Transfer-Encoding\x00: chunked"),
    ("nul_before_value", b"Transfer-Encoding: \x00chunked"),
    ("nul_after_value", b"Transfer-Encoding: chunked\x00"),
    ("vt_before_value", b"Transfer-Encoding:\x0bchunked"),
    ("ff_before_value", b"Transfer-Encoding:\x0cchunked"),
    ("vt_after_value", b"Transfer-Encoding: chunked\x0b"),
    ("ff_after_name", b"Transfer-Encoding\x0c: chunked"),
    ("cr_before_colon", b"Transfer-Encoding\r: chunked"),
    ("cr_before_value", b"Transfer-Encoding:\rchunked"),
    ("cr_after_value", b"Transfer-Encoding: chunked\r"),
    ("bare_lf_before_value", b"Transfer-Encoding:\nchunked"),
    ("obs_fold_space", b"Transfer-Encoding:\r\n chunked"),
    ("obs_fold_tab", b"Transfer-Encoding:\r\n\tchunked"),
    ("leading_space_line", b" Transfer-Encoding: chunked"),
    ("leading_tab_line", b"\tTransfer-Encoding: chunked"),
    ("upper_case", b"TRANSFER-ENCODING: CHUNKED"),
    ("mixed_case", b"tRaNsFeR-eNcOdInG: cHuNkEd"),
    ("double_quoted", b'Transfer-Encoding: "chunked"'),
    ("single_quoted", b"Transfer-Encoding: 'chunked'"),
    ("duplicate", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
    ("duplicate_identity", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity"),
    ("identity_then_chunked", b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked"),
    ("list_chunked_identity", b"Transfer-Encoding: chunked, identity"),
    ("list_identity_chunked", b"Transfer-Encoding: identity, chunked"),
    ("list_chunked_chunked", b"Transfer-Encoding: chunked, chunked"),
    ("leading_comma", b"Transfer-Encoding: ,chunked"),
    ("trailing_comma", b"Transfer-Encoding: chunked,"),
    ("xchunked", b"Transfer-Encoding: xchunked"),
    ("chunkedchunked", b"Transfer-Encoding: chunkedchunked"),
    ("chunked_space_word", b"Transfer-Encoding: chunked x"),
    ("chunked_parameter", b"Transfer-Encoding: chunked;q=1.0"),
    ("empty_value", b"Transfer-Encoding:"),
    ("nbsp_before_value", b"Transfer-Encoding:\xa0chunked"),
    ("gzip_chunked", b"Transfer-Encoding: gzip, chunked"),
    ("in_value_after_bare_lf", b"X-Foo: bar\nTransfer-Encoding: chunked"),
    ("in_value_after_bare_cr", b"X-Foo: bar\rTransfer-Encoding: chunked"),
]

CASES = []
for name, line in TE_OBFUSCATIONS:
    CASES.append(Case("cl_te_" + name, cl_te(line), Reject(400, 501),
                      "Content-Length: 6 then %r: both framings present -> rejected" % line))
CASES += [
    Case("te_before_cl", post([b"Transfer-Encoding: chunked", b"Content-Length: 6"], PROBE_BODY),
         Reject(400)),
    Case("te_cl_zero", post([b"Content-Length: 0", b"Transfer-Encoding: chunked"], PROBE_BODY),
         Reject(400)),
    Case("te_http10", post([b"Transfer-Encoding: chunked"], PROBE_BODY, version=b"HTTP/1.0"),
         Reject(400), "chunked does not exist in HTTP/1.0"),
    Case("te_unknown_alone", post([b"Transfer-Encoding: gzip"], b"abc"), Reject(501, 400)),
    Case("te_space_before_colon_alone", post([b"Transfer-Encoding : chunked"],
                                             b"5\r\nhello\r\n0\r\n\r\n"), Reject(400)),
    # Valid spellings of chunked: re-framed by the proxy, never passed through raw.
    Case("te_tab_ows_alone", post([b"Transfer-Encoding:\tchunked"], b"5\r\nhello\r\n0\r\n\r\n"),
         Forward(body_is(b"hello", chunked=True))),
    Case("te_upper_case_alone", post([b"TRANSFER-ENCODING: CHUNKED"], b"5\r\nhello\r\n0\r\n\r\n"),
         Forward(body_is(b"hello", chunked=True))),
    # Trailing OWS after "chunked" (RFC 9110 5.5): refused or de-chunked, never desynchronised.
    Case("te_trailing_tab_alone", post([b"Transfer-Encoding: chunked\t"],
                                       b"5\r\nhello\r\n0\r\n\r\n"),
         OneOf(RejectMidBody(400), Forward(body_is(b"hello", chunked=True))),
         "llhttp refuses it only when the body is parsed, after the proxy's own checks "
         "passed: an upstream connection may be opened, but no byte is sent"),
    Case("te_trailing_space_alone", post([b"Transfer-Encoding: chunked "],
                                         b"5\r\nhello\r\n0\r\n\r\n"),
         OneOf(Reject(400), Forward(body_is(b"hello", chunked=True)))),
    # An underscore makes it another field name: framing is by Content-Length alone, so the
    # upstream sees the 6 bytes as the body, never a second request.
    Case("cl_te_underscore_name", cl_te(b"Transfer_Encoding: chunked"),
         Forward(cl_forwarded(6, PROBE_BODY))),
]

# Content-Length values: every one but plain digits is refused.
BAD_CL = [
    ("duplicate_equal", [b"Content-Length: 5", b"Content-Length: 5"]),
    ("duplicate_different", [b"Content-Length: 5", b"Content-Length: 6"]),
    ("duplicate_case", [b"Content-Length: 5", b"content-length: 5"]),
    ("list_equal", [b"Content-Length: 5, 5"]),
    ("list_trailing_comma", [b"Content-Length: 5,"]),
    ("empty", [b"Content-Length: "]),
    ("plus", [b"Content-Length: +5"]),
    ("minus", [b"Content-Length: -5"]),
    ("minus_zero", [b"Content-Length: -0"]),
    ("hex", [b"Content-Length: 0x5"]),
    ("underscore", [b"Content-Length: 0_5"]),
    ("inner_space", [b"Content-Length: 1 2"]),
    ("decimal", [b"Content-Length: 5.0"]),
    ("exponent", [b"Content-Length: 5e0"]),
    ("quoted", [b'Content-Length: "5"']),
    ("overflow", [b"Content-Length: 99999999999999999999999"]),
    ("wraps_2_64", [b"Content-Length: 18446744073709551621"]),
    ("nineteen_digits", [b"Content-Length: 1000000000000000005"]),
    ("nul_after", [b"Content-Length: 5\x00"]),
    ("vt_before", [b"Content-Length:\x0b5"]),
    ("fullwidth_digit", [b"Content-Length: \xef\xbc\x95"]),
    ("space_before_colon", [b"Content-Length : 5"]),
    ("obs_fold", [b"Content-Length:\r\n 5"]),
]
for name, lines in BAD_CL:
    CASES.append(Case("cl_" + name, post(lines, b"hello"), Reject(400)))
CASES += [
    Case("cl_above_max_body", post([b"Content-Length: 999999999999999999"], b"hello"),
         Reject(413, code="PROXY_BODY_TOO_LARGE")),
    # Plain digits in any spelling are accepted and re-serialised canonically.
    Case("cl_leading_zeros", post([b"Content-Length: 0005"], b"hello"),
         Forward(cl_forwarded(5, b"hello"))),
    Case("cl_leading_ows", post([b"Content-Length:   5"], b"hello"),
         Forward(cl_forwarded(5, b"hello"))),
    # Trailing OWS is allowed by RFC 9110 5.5; llhttp takes a space and refuses a tab. Either
    # way the upstream sees only the canonical value, or nothing.
    Case("cl_trailing_space", post([b"Content-Length: 5 "], b"hello"),
         OneOf(Reject(400), Forward(cl_forwarded(5, b"hello")))),
    Case("cl_trailing_tab", post([b"Content-Length: 5\t"], b"hello"),
         OneOf(Reject(400), Forward(cl_forwarded(5, b"hello")))),
    Case("cl_upper_name", post([b"CONTENT-LENGTH: 5"], b"hello"),
         Forward(cl_forwarded(5, b"hello"))),
    Case("cl_zero", post([b"Content-Length: 0"]), Forward(cl_forwarded(0, b""))),
]


def chunked(body):
    return post([b"Transfer-Encoding: chunked"], body)


# Malformed chunked bodies: the head is valid (it may already be on its way upstream), the
# body is not. The upstream never gets a complete request nor the offending bytes.
BAD_CHUNKS = [
    ("size_0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
    ("size_underscore", b"0_5\r\nhello\r\n0\r\n\r\n"),
    ("size_plus", b"+5\r\nhello\r\n0\r\n\r\n"),
    ("size_minus", b"-5\r\nhello\r\n0\r\n\r\n"),
    ("size_leading_space", b" 5\r\nhello\r\n0\r\n\r\n"),
    ("size_trailing_space", b"5 \r\nhello\r\n0\r\n\r\n"),
    ("size_overflow", b"fffffffffffffffff5\r\nhello\r\n0\r\n\r\n"),
    ("size_empty", b"\r\nhello\r\n0\r\n\r\n"),
    ("size_not_hex", b"g\r\nhello\r\n0\r\n\r\n"),
    ("more_data_than_declared", b"5\r\nhelloEXTRA\r\n0\r\n\r\n"),
    ("bare_lf_everywhere", b"5\nhello\n0\n\n"),
    ("bare_cr_everywhere", b"5\rhello\r0\r\r"),
    ("bare_lf_after_size", b"5\nhello\r\n0\r\n\r\n"),
    ("bare_lf_after_data", b"5\r\nhello\n0\r\n\r\n"),
    ("cr_in_extension", b"5;a=b\rc\r\nhello\r\n0\r\n\r\n"),
    ("lf_in_extension", b"5;a=b\nc\r\nhello\r\n0\r\n\r\n"),
    ("nul_in_extension", b"5;a=\x00\r\nhello\r\n0\r\n\r\n"),
    ("bare_lf_in_trailer", b"5\r\nhello\r\n0\r\nX-T: y\n\r\n"),
]
for name, body in BAD_CHUNKS:
    CASES.append(Case("chunk_" + name, chunked(body), RejectMidBody(400)))


def no_trailer_leak(t, reqs, outcome):
    r = reqs[0]
    t.assertEqual(r.body, b"hello")
    t.assertTrue(r.chunked)
    t.assertEqual(len(r.all("authorization")), 1)
    t.assertNotIn(b"evil", r.raw)
    t.assertEqual(r.all("content-length"), [])


CASES += [
    Case("chunk_leading_zeros", chunked(b"0005\r\nhello\r\n0\r\n\r\n"),
         Forward(body_is(b"hello", chunked=True))),
    Case("chunk_extension_dropped", chunked(b"5;name=value\r\nhello\r\n0;last\r\n\r\n"),
         Forward(body_is(b"hello", chunked=True))),
    Case("chunk_quoted_extension", chunked(b'5;n="v; x"\r\nhello\r\n0\r\n\r\n'),
         Forward(body_is(b"hello", chunked=True))),
    Case("chunk_trailers_auth_host_dropped",
         chunked(b"5\r\nhello\r\n0\r\nAuthorization: Bearer evil\r\nHost: evil.example\r\n"
                 b"Proxy-Authorization: evil\r\n\r\n"),
         Forward(no_trailer_leak),
         "Authorization and Host hidden in trailers never become headers"),
    Case("chunk_trailers_framing_fields",
         chunked(b"5\r\nhello\r\n0\r\nContent-Length: 100\r\nAuthorization: Bearer evil\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n"),
         OneOf(RejectMidBody(400), Forward(no_trailer_leak)),
         "framing fields in trailers: refused (llhttp) or dropped, never forwarded"),
    Case("chunk_trailer_obs_fold", chunked(b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n"),
         OneOf(RejectMidBody(400), Forward(no_trailer_leak))),
]


def two_requests(t, reqs, outcome):
    t.assertEqual([r.target for r in reqs], [b"/v1/first", b"/v1/second"])


GET1 = req(target="/v1/first")
GET2 = req(target="/v1/second")
CASES += [
    Case("pipeline_two_gets", GET1 + GET2, Forward(two_requests, statuses=(200, 200), n=2)),
    Case("pipeline_cl_body_then_request",
         post([b"Content-Length: 5"], b"hello", target=b"/v1/first") + GET2,
         Forward(two_requests, statuses=(200, 200), n=2),
         "a request the client itself pipelined after a body is framed as its own request"),
    Case("pipeline_garbage_after_get", GET1 + b"GARBAGE\r\n\r\n",
         Forward(statuses=(200, 400), closed=True),
         "garbage after a valid request: first served, then 400 and the connection closes"),
    Case("pipeline_garbage_after_cl_body",
         post([b"Content-Length: 5"], b"helloBOGUS / HTTP/1.1\r\n\r\n"),
         Forward(body_is(b"hello"), statuses=(200, 400), closed=True)),
    Case("pipeline_garbage_after_chunked_body",
         chunked(b"5\r\nhello\r\n0\r\n\r\n\x00\x01\x02 junk\r\n\r\n"),
         Forward(body_is(b"hello"), statuses=(200, 400), closed=True)),
    Case("pipeline_tls_hello_after_get", GET1 + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
         Forward(statuses=(200, 400), closed=True)),
    Case("pipeline_http09_after_get", GET1 + b"GET /v1/apps\r\n\r\n",
         Forward(statuses=(200, 505), closed=True),
         "a request line without a version (HTTP/0.9) is not HTTP/1.1: refused, not forwarded"),
]


class RequestFramingTest(CaseTest, unittest.TestCase):
    fx = None

    @classmethod
    def setUpClass(cls):
        cls.fx = ProxyFixture()

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()


add_cases(RequestFramingTest, CASES)


class HalfCloseTest(unittest.TestCase):
    """Client half-close after a whole request: the response is still delivered (docs/testing.md
    "Timeouts and resources"). Without a pooled upstream connection the request waits for a
    new TLS connection, so the client's FIN arrives while the proxy is still connecting."""

    @classmethod
    def setUpClass(cls):
        cls.fx = ProxyFixture(limits={"upstream_pool_size": 0})

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()

    def setUp(self):
        self.fx.ensure_alive()

    def check(self, raw, body=None, method="GET"):
        mark = self.fx.up.mark()
        o = converse(self.fx.port, raw, nresp=1, shutdown_write=True)
        time.sleep(0.3)
        assert_alive(self, self.fx, "half-close")
        self.assertEqual(o.statuses(), [200], "half-closed client got %r (bytes sent %r)" % (
            o, raw[:200]))
        self.assertTrue(o.responses[0].complete)
        self.assertEqual(o.responses[0].body, OK_BODY)
        reqs = self.fx.up.requests_since(mark)
        self.assertEqual(len(reqs), 1)
        r = parse_request_strict(reqs[0][1], ASC)
        if body is not None:
            self.assertEqual(r.body, body)

    def test_half_close_after_get_new_upstream_connection(self):
        self.check(req(target="/v1/half-close"))

    def test_half_close_after_post_body_new_upstream_connection(self):
        self.check(post([b"Content-Length: 5"], b"hello"), b"hello")

    def test_half_close_after_chunked_body_new_upstream_connection(self):
        self.check(chunked(b"5\r\nhello\r\n0\r\n\r\n"), b"hello")

    def test_client_gone_while_upstream_connects_regression(self):
        """Regression: a client that sends a whole request and closes (or half-closes) while
        the proxy is still opening the upstream connection must not leave that pending
        connection pointing at the freed client (heap-use-after-free in up_ready, found by the
        flood test). Exact bytes: 'GET /v1/apps HTTP/1.1\\r\\nHost: api.appstoreconnect.apple.com
        \\r\\n\\r\\n', then close, with no idle pooled upstream connection."""
        for how in ("close", "shutdown", "reset"):
            for _ in range(5):
                s = socket.create_connection(("127.0.0.1", self.fx.port))
                s.sendall(req(target="/v1/gone"))
                if how == "shutdown":
                    s.shutdown(socket.SHUT_WR)
                elif how == "reset":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            time.sleep(0.5)
            assert_alive(self, self.fx, "client gone while connecting (%s)" % how)
        o = converse(self.fx.port, req())
        self.assertEqual(o.statuses(), [200])


class ClientAbortTest(unittest.TestCase):
    """Client abort mid-request: the upstream connection is closed, never pooled, and the
    partial request is never completed upstream."""

    @classmethod
    def setUpClass(cls):
        cls.fx = ProxyFixture()

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()

    def test_abort_mid_cl_body(self):
        fx = self.fx
        mark = fx.up.mark()
        c = h.HttpClient(fx.port)
        c.send(post([b"Content-Length: 100"], b"x" * 40))
        conn = fx.up.wait(lambda: next(iter([k for k in fx.up.conns if len(k.data) > (
            mark.lens[k.id - 1] if k.id - 1 < mark.nconns else 0)]), None), 5)
        self.assertIsNotNone(conn, "the head never reached the upstream")
        c.close()
        fx.up.wait(lambda: conn.closed, 5)
        self.assertTrue(conn.closed, "the upstream connection of an aborted request stayed open")
        self.assertEqual(fx.up.requests_since(mark), [])
        # The next request works on a different upstream connection.
        mark2 = fx.up.mark()
        o = converse(fx.port, req())
        self.assertEqual(o.statuses(), [200])
        reqs = fx.up.requests_since(mark2)
        self.assertEqual(len(reqs), 1)
        self.assertIsNot(reqs[0][0], conn)


if __name__ == "__main__":
    unittest.main(verbosity=2)
