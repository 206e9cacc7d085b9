"""Hostile input, header and request-line syntax (docs/testing.md "Header syntax -> 400, nothing
forwarded").

Each malformed head must be answered by the proxy itself (400, or 417/505 where named), with
Connection: close, and the upstream must see neither a byte nor a connection. The few valid
but unusual spellings at the end are forwarded, re-serialised canonically.
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import (ASC, Case, CaseTest, Forward, OneOf, ProxyFixture, Reject,  # noqa: E402
                     add_cases)

HOST = b"Host: " + ASC.encode()


def get(*lines, line=b"GET /v1/apps HTTP/1.1", host=True):
    """A GET with the given raw header lines after Host (host=False: no Host line)."""
    hs = ([HOST] if host else []) + list(lines)
    return line + b"\r\n" + b"".join(x + b"\r\n" for x in hs) + b"\r\n"


BAD = [
    # obs-fold and whitespace
    ("obs_fold_space", get(b"X-A: a", b" folded")),
    ("obs_fold_tab", get(b"X-A: a", b"\tfolded")),
    ("obs_fold_host", get(b"X-A: a", line=b"GET /v1/apps HTTP/1.1\r\nHost: x\r\n " + ASC.encode())),
    ("space_before_colon", get(b"X-A : b")),
    ("tab_before_colon", get(b"X-A\t: b")),
    ("space_before_first_header", b"GET /v1/apps HTTP/1.1\r\n X-A: b\r\n" + HOST + b"\r\n\r\n"),
    ("tab_before_first_header", b"GET /v1/apps HTTP/1.1\r\n\tX-A: b\r\n" + HOST + b"\r\n\r\n"),
    ("whitespace_only_line", get(b"   ")),
    # control characters
    ("cr_in_value", get(b"X-A: a\rb")),
    ("lf_in_value", get(b"X-A: a\nb")),
    ("nul_in_value", get(b"X-A: a\x00b")),
    ("nul_in_name", get(b"X-\x00A: b")),
    ("del_in_value", get(b"X-A: a\x7fb")),
    ("esc_in_value", get(b"X-A: a\x1b[31mb")),
    ("vt_in_value", get(b"X-A: a\x0bb")),
    ("cr_in_name", get(b"X-\rA: b")),
    # names
    ("high_byte_in_name", get(b"X\xe9: v")),
    ("utf8_in_name", get(b"X-\xc3\xa9t\xc3\xa9: v")),
    ("no_colon", get(b"NoColon")),
    ("empty_name", get(b": value")),
    ("slash_in_name", get(b"X/Y: v")),
    ("at_in_name", get(b"X@Y: v")),
    ("paren_in_name", get(b"X(Y): v")),
    ("quote_in_name", get(b'"X": v')),
    ("brace_in_name", get(b"X{Y}: v")),
    # Host
    ("missing_host", get(host=False)),
    ("duplicate_host_same", get(HOST)),
    ("duplicate_host_other", get(b"Host: evil.example")),
    ("duplicate_host_case", get(b"hOsT: " + ASC.encode())),
    ("empty_host", get(b"Host: ", host=False)),
    ("host_with_space", get(b"Host: a b", host=False)),
    ("host_userinfo", get(b"Host: user@" + ASC.encode(), host=False)),
    ("host_with_path", get(b"Host: " + ASC.encode() + b"/evil", host=False)),
    ("host_bad_port", get(b"Host: a:99999x", host=False)),
    ("host_long_port", get(b"Host: a:1234567", host=False)),
    ("host_empty_port", get(b"Host: a:", host=False)),
    ("host_unclosed_ipv6", get(b"Host: [::1", host=False)),
    ("host_nul", get(b"Host: a\x00b", host=False)),
    ("host_backslash", get(b"Host: evil.example\\" + ASC.encode(), host=False)),
    # line ends
    ("bare_lf_request_line", b"GET /v1/apps HTTP/1.1\n" + HOST + b"\r\n\r\n"),
    ("bare_lf_everywhere", b"GET /v1/apps HTTP/1.1\n" + HOST + b"\n\n"),
    ("bare_lf_final", b"GET /v1/apps HTTP/1.1\r\n" + HOST + b"\r\n\n"),
    ("bare_cr_everywhere", b"GET /v1/apps HTTP/1.1\r" + HOST + b"\r\r"),
    ("bare_cr_request_line", b"GET /v1/apps HTTP/1.1\r" + HOST + b"\r\n\r\n"),
    # request line
    ("tab_separator", get(line=b"GET\t/v1/apps HTTP/1.1")),
    ("trailing_space", get(line=b"GET /v1/apps HTTP/1.1 ")),
    ("extra_token", get(line=b"GET /v1/apps HTTP/1.1 x")),
    ("space_in_target", get(line=b"GET /v1/a pps HTTP/1.1")),
    ("lowercase_method", get(line=b"get /v1/apps HTTP/1.1")),
    ("unknown_method", get(line=b"FOO /v1/apps HTTP/1.1")),
    ("method_with_nul", get(line=b"GE\x00T /v1/apps HTTP/1.1")),
    ("lowercase_version", get(line=b"GET /v1/apps http/1.1")),
    ("version_no_minor", get(line=b"GET /v1/apps HTTP/1")),
    ("version_2", get(line=b"GET /v1/apps HTTP/2.0")),
    ("version_1_2", get(line=b"GET /v1/apps HTTP/1.2")),
    ("version_0_9", get(line=b"GET /v1/apps HTTP/0.9")),
    ("version_3", get(line=b"GET /v1/apps HTTP/3.0")),
    ("version_double_digit", get(line=b"GET /v1/apps HTTP/11.1")),
    ("http09_no_version", get(line=b"GET /v1/apps")),
    ("nul_in_target", get(line=b"GET /v1/\x00apps HTTP/1.1")),
    ("ctl_in_target", get(line=b"GET /v1/\x01apps HTTP/1.1")),
    ("del_in_target", get(line=b"GET /v1/\x7fapps HTTP/1.1")),
    ("fragment_in_target", get(line=b"GET /v1/apps#frag HTTP/1.1")),
    ("dot_segment", get(line=b"GET /v1/../admin HTTP/1.1")),
    ("dot_segment_single", get(line=b"GET /v1/./apps HTTP/1.1")),
    ("dot_segment_encoded", get(line=b"GET /v1/%2e%2e/admin HTTP/1.1")),
    ("dot_segment_mixed", get(line=b"GET /v1/.%2E/admin HTTP/1.1")),
    ("dot_segment_trailing", get(line=b"GET /v1/.. HTTP/1.1")),
    # regression: "..%2F" is a dot-segment to a server that decodes before resolving
    ("encoded_slash_dot_segment", get(line=b"GET /v1/apps/..%2F..%2Fusers HTTP/1.1")),
    ("encoded_slash", get(line=b"GET /v1/apps%2fusers HTTP/1.1")),
    ("encoded_backslash", get(line=b"GET /v1/apps/..%5Cusers HTTP/1.1")),
    # regression: a literal '\' passed the dot-segment and prefix checks; servers that accept
    # Windows paths read it as '/'
    ("backslash_in_target", get(line=b"GET /v1\\..\\admin HTTP/1.1")),
    ("backslash_dot_segment", get(line=b"GET /v1/apps/..\\users HTTP/1.1")),
    ("backslash_alone", get(line=b"GET /v1/apps\\ HTTP/1.1")),
    # ';' path parameters: refused ("..;" is ".." to servers that strip parameters first)
    ("semicolon_dot_segment", get(line=b"GET /v1/apps/..;/users HTTP/1.1")),
    ("semicolon_param", get(line=b"GET /v1/apps;jsessionid=1 HTTP/1.1")),
    ("encoded_semicolon", get(line=b"GET /v1/apps/..%3b/users HTTP/1.1")),
    ("absolute_semicolon", get(line=b"GET https://" + ASC.encode() + b"/v1/apps/..;/users "
                                    b"HTTP/1.1")),
    ("asterisk_form", get(line=b"OPTIONS * HTTP/1.1")),
    ("http2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("tls_client_hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32),
]
CASES = [Case("bad_" + name, raw, Reject(400, 505)) for name, raw in BAD]


def header_absent(*names):
    def check(t, reqs, outcome):
        for n in names:
            t.assertEqual(reqs[0].all(n), [], "%s was forwarded" % n)
    return check


def header_is(name, value):
    def check(t, reqs, outcome):
        t.assertEqual(reqs[0].all(name), [value])
    return check


CASES += [
    Case("expect_unknown", get(b"Expect: something"), Reject(417, code="PROXY_EXPECTATION_FAILED")),
    Case("expect_100_continue_list", get(b"Expect: 100-continue, x"), Reject(417)),
    # Valid but unusual: forwarded canonically.
    Case("ok_obs_text_value", get(b"X-A: caf\xe9"), Forward(header_is("x-a", b"caf\xe9"))),
    Case("ok_tab_inside_value", get(b"X-A: a\tb"), Forward(header_is("x-a", b"a\tb"))),
    Case("ok_value_ows_trimmed", get(b"X-A: \t value \t"), Forward(header_is("x-a", b"value"))),
    Case("ok_no_space_after_colon", get(b"X-A:v"), Forward(header_is("x-a", b"v"))),
    Case("ok_empty_value", get(b"X-A:"), Forward(header_is("x-a", b""))),
    Case("ok_tchar_name", get(b"X!#$%&'*+.^`|~-A: v"),
         Forward(header_is("x!#$%&'*+.^`|~-a", b"v"))),
    # '_' is a tchar, but some servers read it as '-': such names are dropped, never forwarded.
    Case("underscore_name_dropped", get(b"Transfer_Encoding: chunked\r\nX_A: v"),
         Forward(header_absent("transfer_encoding", "x_a"))),
    # Bytes >= 0x80 in the target, or empty lines before the request line: RFC 9112 allows a
    # server to accept or refuse these; either way nothing raw goes upstream.
    Case("high_byte_in_target", get(line=b"GET /v1/\xffapps HTTP/1.1"),
         OneOf(Reject(400), Forward())),
    # The query may hold ';' and '\' (only the path is compared with prefixes).
    Case("semicolon_backslash_in_query", get(line=b"GET /v1/apps?a=1;b=%5C HTTP/1.1"),
         Forward()),
    # RFC 9112 3: a recipient MAY parse on whitespace boundaries; the proxy re-serialises the
    # line with single spaces, so the upstream never sees the ambiguity.
    Case("double_space_before_target", get(line=b"GET  /v1/apps HTTP/1.1"),
         OneOf(Reject(400), Forward())),
    Case("double_space_before_version", get(line=b"GET /v1/apps  HTTP/1.1"),
         OneOf(Reject(400), Forward())),
    Case("empty_line_before_request_line", b"\r\n" + get(), OneOf(Reject(400), Forward())),
]


class HeaderSyntaxTest(CaseTest, unittest.TestCase):
    fx = None

    @classmethod
    def setUpClass(cls):
        cls.fx = ProxyFixture()

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()


add_cases(HeaderSyntaxTest, CASES)

if __name__ == "__main__":
    unittest.main(verbosity=2)
