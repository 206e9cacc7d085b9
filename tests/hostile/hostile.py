"""hostile: shared pieces of the hostile-input suite (tests/hostile/test_*.py).

- ProxyFixture: a RawUpstream (rawupstream.py) and the built proxy routed to it, one worker,
  access log off; .port, .up, .key, .proxy, .stop().
- converse(): one raw client connection: send bytes exactly as given, read what comes back
  (complete and truncated responses), and whether the proxy closed the connection.
- Case tables: Case(name, raw, expect) with expect one of Reject, RejectMidBody, Forward;
  add_cases(TestClass, cases) turns every case into its own test method test_<name>, so a
  failure names the case.

Nothing here changes the proxy: the outcomes asserted are the ones docs/testing.md ("What each
area must show") and docs/architecture.md document.
"""
import json
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("AAP_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
for d in (HERE, os.path.join(SOURCE_DIR, "tests", "integration")):
    if d not in sys.path:
        sys.path.insert(0, d)

import harness as h  # noqa: E402
from rawupstream import (RawUpstream, StrictError, ok_response,  # noqa: E402,F401
                         parse_request_strict)

ASC = "api.appstoreconnect.apple.com"
OK_BODY = b'{"ok":true}'
# How long to wait after a rejection before concluding the upstream got nothing. Forwarding
# is sub-millisecond on loopback, so this is generous.
SETTLE = float(os.environ.get("AAP_HOSTILE_SETTLE", "0.15"))


class ProxyFixture:
    """Keys, a RawUpstream with cert `upstream_cert`, and a proxy routing "/" (plus
    extra_routes first) to it. limits: the "limits" object of the configuration."""

    def __init__(self, limits=None, upstream_cert="good", extra_routes=(), route_extra=None,
                 workers=1, upstream=None, cred_fields=None, env=None, **config_extra):
        self.key = h.make_key(publish=False)
        self.up = upstream or RawUpstream(upstream_cert)
        self.cred = h.credential("app-store-connect", self.key, **(cred_fields or {}))
        routes = [r(self) if callable(r) else r for r in extra_routes]
        routes.append(h.route(self.up.address, "app-store-connect", "asc", **(route_extra or {})))
        config_extra.setdefault("access_log", {"path": "off"})
        self.config_path = h.write_config({"asc": self.cred}, routes, workers=workers,
                                          limits=dict(limits or {}), **config_extra)
        self.env = env
        self.proxy = h.start_proxy(self.config_path, env=env)
        self.port = self.proxy.port

    def ensure_alive(self):
        """Restarts the proxy if an earlier case killed it (that case has already failed with
        the crash), so that the following cases test their own input."""
        if not self.proxy.alive():
            sys.stderr.write("\n[hostile] the proxy had died (exit status %s): restarted\n"
                             % self.proxy.proc.returncode)
            self.proxy = h.start_proxy(self.config_path, env=self.env)
            self.port = self.proxy.port

    def stop(self):
        self.proxy.stop()
        self.up.stop()

    def rss_kib(self):
        with open("/proc/%d/status" % self.proxy.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def nfds(self):
        return len(os.listdir("/proc/%d/fd" % self.proxy.pid))


class Outcome:
    """What a client saw: responses (harness.Response; .complete False when cut short),
    closed (the proxy closed the connection), timed_out, error (a protocol error text),
    send_error (the proxy closed before all bytes were sent)."""

    def __init__(self):
        self.responses = []
        self.closed = False
        self.timed_out = False
        self.error = None
        self.send_error = None

    def statuses(self):
        return [r.status for r in self.responses]

    def __repr__(self):
        return "<Outcome statuses=%s complete=%s closed=%s timed_out=%s error=%s send_error=%s>" % (
            self.statuses(), [r.complete for r in self.responses], self.closed, self.timed_out,
            self.error, self.send_error)


def converse(port, data, nresp=1, methods=None, timeout=5.0, close_wait=0.25,
             shutdown_write=False, client=None):
    """Sends data (bytes, or a list of byte strings sent with a short pause between them) on a
    new connection, reads up to nresp responses (None: until the connection closes or timeout),
    then waits close_wait for a close. methods: the request method of each response (HEAD has
    no body)."""
    o = Outcome()
    c = client or h.HttpClient(port, timeout=timeout)
    try:
        pieces = data if isinstance(data, list) else [data]
        try:
            for i, piece in enumerate(pieces):
                if i:
                    time.sleep(0.05)
                c.send(piece)
            if shutdown_write:
                c.shutdown_write()
        except (BrokenPipeError, ConnectionResetError) as e:
            o.send_error = repr(e)
        while nresp is None or len(o.responses) < nresp:
            method = (methods[len(o.responses)] if methods and len(o.responses) < len(methods)
                      else "GET")
            try:
                r = c.read_response(method)
            except h.TruncatedResponse as e:
                if e.response.status is not None:
                    e.response.complete = False
                    o.responses.append(e.response)
                o.closed = True
                return o
            except (socket.timeout, TimeoutError):
                o.timed_out = True
                return o
            except h.ProtocolError as e:
                o.error = str(e)
                return o
            except ConnectionResetError:
                o.closed = True
                return o
            o.responses.append(r)
        o.closed = c.closed_by_peer(close_wait)
        if o.closed and c.buf:
            o.error = "bytes after the last expected response: %r" % c.buf[:300]
        return o
    finally:
        if client is None:
            c.close()


def error_code(resp):
    """The `code` of the proxy's JSON error body, or None."""
    try:
        doc = json.loads(resp.body)
        return doc["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


# ------------------------------------------------------------------------------------------------
# Case tables

class Reject:
    """The proxy answers one of statuses (its JSON error, Connection: close), closes the
    connection, and the upstream receives nothing: no byte and no new connection."""

    def __init__(self, *statuses, code=None, closed=True):
        self.statuses = set(statuses)
        self.code = code
        self.closed = closed  # None: the proxy may keep the connection (no body to skip)


class RejectMidBody(Reject):
    """A request whose head is valid and whose body is not: the head may already have gone
    upstream (the body streams), but the upstream never receives a complete request or the
    offending bytes, and its connection is closed. The client gets one of statuses, or (when
    allow_close) just a close."""

    def __init__(self, *statuses, code=None, allow_close=False):
        super().__init__(*statuses, code=code)
        self.allow_close = allow_close


class Forward:
    """The request goes upstream as exactly n well-formed requests (parse_request_strict); the
    client gets statuses (default one 200 with the upstream's body); check(test, reqs) adds
    case-specific assertions; closed: whether the proxy closes the client connection after
    (None: either)."""

    def __init__(self, check=None, statuses=(200,), n=1, closed=False, methods=None):
        self.check = check
        self.statuses = list(statuses)
        self.n = n
        self.closed = closed
        self.methods = methods


class OneOf:
    """Either outcome is safe (for example a spelling RFC 9110 allows and llhttp refuses): the
    first response decides which expectation is checked, the proxy's error -> reject, else
    forward."""

    def __init__(self, reject, forward):
        self.reject = reject
        self.forward = forward


class Case:
    def __init__(self, name, raw, expect, doc=""):
        self.name = name
        self.raw = raw
        self.expect = expect
        self.doc = doc


def assert_alive(test, fx, what=""):
    """The proxy process is still running (a crash is always a finding)."""
    test.assertTrue(fx.proxy.alive(), "%s: the proxy died (exit status %s); stderr tail:\n%s" % (
        what, fx.proxy.proc.returncode, fx.proxy.stderr_text()[-3000:]))


def verify_token(test, fx, req):
    """The single Authorization is a JWT the proxy signed with the configured key."""
    tok = req.get("authorization").split(b" ", 1)[1].decode()
    header, claims = h.decode_token(tok, fx.key)
    test.assertEqual(header.get("kid"), fx.key.kid)
    test.assertEqual(claims.get("aud"), "appstoreconnect-v1")


class CaseTest:
    """Mixin for unittest.TestCase classes with a class attribute `fx` (a ProxyFixture)."""

    def setUp(self):
        self.fx.ensure_alive()

    def run_case(self, case):
        fx = self.fx
        fx.up.reset_scripts()
        mark = fx.up.mark()
        e = case.expect
        if isinstance(e, OneOf):
            o = converse(fx.port, case.raw, nresp=len(e.forward.statuses),
                         methods=e.forward.methods)
            if o.responses and error_code(o.responses[0]):
                if isinstance(e.reject, RejectMidBody):
                    self._reject_mid_body(case, fx, mark, e.reject, o)
                else:
                    self._reject(case, fx, mark, e.reject, o)
            else:
                self._forward(case, fx, mark, e.forward, o)
        elif isinstance(e, Forward):
            self._forward(case, fx, mark, e)
        elif isinstance(e, RejectMidBody):
            self._reject_mid_body(case, fx, mark, e)
        elif isinstance(e, Reject):
            self._reject(case, fx, mark, e)
        else:
            raise AssertionError("unknown expectation %r" % e)
        assert_alive(self, fx, case.name)

    def assert_proxy_error(self, case, r, statuses, code=None):
        self.assertIn(r.status, statuses, "%s: status %s, want one of %s; body %r" % (
            case.name, r.status, sorted(statuses), r.body[:300]))
        got = error_code(r)
        self.assertIsNotNone(got, "%s: not the proxy's JSON error: %r" % (case.name, r.body[:300]))
        self.assertTrue(got.startswith("PROXY_"), "%s: code %r" % (case.name, got))
        if code:
            self.assertEqual(got, code, case.name)
        doc = json.loads(r.body)
        self.assertEqual(doc["errors"][0]["status"], str(r.status), case.name)
        self.assertEqual(r.header("content-type"), "application/json", case.name)
        self.assertNotIn(b"Bearer", r.body, case.name)

    def _reject(self, case, fx, mark, e, o=None):
        o = o or converse(fx.port, case.raw, nresp=1)
        self.assertEqual(len(o.responses), 1, "%s: no response: %r" % (case.name, o))
        r = o.responses[0]
        self.assert_proxy_error(case, r, e.statuses, e.code)
        if e.closed:
            self.assertEqual((r.header("connection") or "").lower(), "close",
                             "%s: a rejection must say Connection: close" % case.name)
            self.assertTrue(o.closed, "%s: the proxy did not close the connection: %r" % (
                case.name, o))
        else:
            # Kept open: then it must say so consistently.
            self.assertEqual(o.closed, (r.header("connection") or "").lower() == "close",
                             "%s: Connection header and close disagree: %r" % (case.name, o))
        self.assertIsNone(o.error, case.name)
        time.sleep(SETTLE)
        self.assertEqual(fx.up.new_bytes(mark), 0, "%s: the upstream received %d bytes: %r" % (
            case.name, fx.up.new_bytes(mark), fx.up.requests_since(mark)))
        self.assertEqual(fx.up.new_conns(mark), [], "%s: the proxy opened an upstream "
                         "connection for a request it rejects" % case.name)

    def _reject_mid_body(self, case, fx, mark, e, o=None):
        o = o or converse(fx.port, case.raw, nresp=1)
        if o.responses:
            r = o.responses[0]
            self.assert_proxy_error(case, r, e.statuses, e.code)
        else:
            self.assertTrue(e.allow_close, "%s: no response: %r" % (case.name, o))
        self.assertTrue(o.closed, "%s: the proxy did not close the connection: %r" % (
            case.name, o))
        time.sleep(SETTLE)
        self.assertEqual(fx.up.requests_since(mark), [],
                         "%s: a complete request reached the upstream" % case.name)
        touched = [c for i, c in enumerate(fx.up.conns)
                   if (i >= mark.nconns and c.data) or
                   (i < mark.nconns and len(c.data) > mark.lens[i])]
        for c in touched:
            fx.up.wait(lambda: c.closed, 3.0)
            self.assertTrue(c.closed, "%s: the upstream connection that got part of the "
                            "request was not closed" % case.name)
            got = bytes(c.data[mark.lens[c.id - 1] if c.id - 1 < mark.nconns else 0:])
            end = got.find(b"\r\n\r\n")
            if end >= 0:
                # What did arrive is the start of a well-formed request: the head, and only
                # validly re-framed body bytes.
                try:
                    parse_request_strict(got[:end + 4], ASC)
                except StrictError as err:
                    if "body" not in str(err) and "chunk" not in str(err):
                        raise AssertionError("%s: %s" % (case.name, err))

    def _forward(self, case, fx, mark, e, o=None):
        o = o or converse(fx.port, case.raw, nresp=len(e.statuses), methods=e.methods)
        self.assertEqual(o.statuses(), e.statuses, "%s: %r; bodies %r" % (
            case.name, o, [r.body[:200] for r in o.responses]))
        for r in o.responses:
            self.assertTrue(r.complete, "%s: response cut short" % case.name)
        if e.closed is not None:
            self.assertEqual(o.closed, e.closed, "%s: connection closed=%s, want %s: %r" % (
                case.name, o.closed, e.closed, o))
        reqs = fx.up.wait_requests(mark, e.n, 3.0)
        time.sleep(SETTLE)
        reqs = fx.up.requests_since(mark)
        self.assertEqual(len(reqs), e.n, "%s: the upstream got %d requests, want %d: %r" % (
            case.name, len(reqs), e.n, reqs))
        parsed = []
        for conn, raw in reqs:
            try:
                req = parse_request_strict(raw, ASC)
            except StrictError as err:
                raise AssertionError("%s: %s" % (case.name, err))
            verify_token(self, fx, req)
            parsed.append(req)
        # Nothing but whole requests on the connections used.
        for conn in {c for c, _ in reqs}:
            i = conn.id - 1
            start = mark.lens[i] if i < mark.nconns else 0
            first = mark.nreqs[i] if i < mark.nconns else 0
            self.assertEqual(bytes(conn.data[start:]), b"".join(conn.requests[first:]),
                             "%s: bytes besides whole requests on the upstream connection"
                             % case.name)
        if e.check:
            e.check(self, parsed, o)


def add_cases(cls, cases):
    """Adds test_<name> to cls for each case (names must be unique)."""
    seen = set()
    for case in cases:
        assert case.name not in seen, "duplicate case %s" % case.name
        seen.add(case.name)

        def t(self, case=case):
            self.run_case(case)
        t.__name__ = "test_" + case.name
        t.__doc__ = case.doc or None
        setattr(cls, t.__name__, t)
    cls.CASES = list(cases)
    return cls


def req(method="GET", target="/v1/apps", headers=(), body=b"", host=ASC, version="HTTP/1.1"):
    """Builds a request from parts, byte for byte: headers are (name, value) bytes or whole
    raw lines (bytes without CRLF). Host first unless host is None."""
    out = b"%s %s %s\r\n" % (method.encode(), target.encode() if isinstance(target, str)
                             else target, version.encode())
    if host is not None:
        out += b"Host: " + (host.encode() if isinstance(host, str) else host) + b"\r\n"
    for hd in headers:
        if isinstance(hd, tuple):
            out += hd[0] + b": " + hd[1] + b"\r\n"
        else:
            out += hd + b"\r\n"
    return out + b"\r\n" + body
