"""Resource limits (docs/testing.md "Timeouts and resources"; docs/configuration.md "Limits").

- Size limits: request line (414), header bytes and count (431), body (413, by Content-Length
  before anything is forwarded, or mid-stream for chunked bodies), table-driven.
- The connection cap: with max_client_connections = 20, connections past it get 503
  PROXY_OVERLOADED (or a bare close), the 20 keep working, and room frees up as they close.
- A flood of AAP_FLOOD_CONNS (default 3000) connections that open and close in every rude way
  (no byte, half a head, reset, a request without reading the answer) finishes in bounded time
  and leaves no descriptor behind; the proxy still serves.
- AAP_IDLE_CONNS (default 2000) idle keep-alive connections held open while requests still
  flow at normal latency.

Descriptors: holding N client connections needs N + ~100 descriptors in this process and in the
proxy (which inherits this process's limit). The test raises its soft RLIMIT_NOFILE up to the
hard limit; when that is too low it reduces N and says so. 10,000 idle connections
(AAP_IDLE_CONNS=10000) need `ulimit -n` above ~10,100 (docs/security.md).
"""
import os
import resource
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import (ASC, OK_BODY, Case, CaseTest, Forward, ProxyFixture, Reject,  # noqa: E402
                     RejectMidBody, add_cases, assert_alive, converse, h)

FLOOD_CONNS = int(os.environ.get("AAP_FLOOD_CONNS", "3000"))
IDLE_CONNS = int(os.environ.get("AAP_IDLE_CONNS", "2000"))
HOST = b"Host: " + ASC.encode()
GET = b"GET /v1/apps HTTP/1.1\r\n" + HOST + b"\r\n\r\n"


def raise_nofile(want):
    """Raises the soft descriptor limit towards want; returns the limit in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


def get(*lines, line=b"GET /v1/apps HTTP/1.1"):
    return line + b"\r\n" + HOST + b"\r\n" + b"".join(x + b"\r\n" for x in lines) + b"\r\n"


def post(*lines, body=b""):
    return get(*lines, line=b"POST /v1/x HTTP/1.1") + body


LINE_MAX, HEAD_MAX, COUNT_MAX, BODY_MAX = 1024, 4096, 20, 1000


def body_len(n):
    def check(t, reqs, o):
        t.assertEqual(len(reqs[0].body), n)
    return check


def chunks(total, size=300):
    out = b""
    while total > 0:
        n = min(size, total)
        out += b"%x\r\n%s\r\n" % (n, b"b" * n)
        total -= n
    return out + b"0\r\n\r\n"


SIZE_CASES = [
    Case("request_line_too_long", get(line=b"GET /v1/" + b"a" * 2000 + b" HTTP/1.1"),
         Reject(414, code="PROXY_URI_TOO_LONG")),
    Case("request_line_huge", get(line=b"GET /v1/" + b"a" * 100000 + b" HTTP/1.1"),
         Reject(414, 431)),
    Case("request_line_below_limit", get(line=b"GET /v1/" + b"a" * 900 + b" HTTP/1.1"), Forward()),
    Case("header_value_too_large", get(b"X-Big: " + b"v" * 5000),
         Reject(431, code="PROXY_HEADERS_TOO_LARGE")),
    Case("head_too_large_small_headers", get(*[b"X-%d: %s" % (i, b"v" * 300) for i in range(15)]),
         Reject(431)),
    Case("too_many_headers", get(*[b"X-%d: v" % i for i in range(COUNT_MAX + 5)]),
         Reject(431, code="PROXY_HEADERS_TOO_LARGE")),
    Case("headers_at_count_limit", get(*[b"X-%d: v" % i for i in range(COUNT_MAX - 1)]),
         Forward()),
    Case("endless_header_line", get(line=b"GET /v1/apps HTTP/1.1\r\nX-A: " + b"v" * 20000),
         Reject(431)),
    Case("no_line_end_at_all", b"GET /" + b"a" * 20000, Reject(414, 431)),
    Case("body_content_length_over", post(b"Content-Length: %d" % (BODY_MAX + 1),
                                          body=b"b" * (BODY_MAX + 1)),
         Reject(413, code="PROXY_BODY_TOO_LARGE")),
    Case("body_content_length_at_limit", post(b"Content-Length: %d" % BODY_MAX,
                                              body=b"b" * BODY_MAX),
         Forward(body_len(BODY_MAX))),
    Case("body_chunked_over", post(b"Transfer-Encoding: chunked", body=chunks(BODY_MAX + 200)),
         RejectMidBody(413, code="PROXY_BODY_TOO_LARGE")),
    Case("body_chunked_at_limit", post(b"Transfer-Encoding: chunked", body=chunks(BODY_MAX)),
         Forward(body_len(BODY_MAX))),
]


class SizeLimitsTest(CaseTest, unittest.TestCase):
    fx = None

    @classmethod
    def setUpClass(cls):
        cls.fx = ProxyFixture(limits={"max_request_line_bytes": LINE_MAX,
                                      "max_header_bytes": HEAD_MAX, "max_headers": COUNT_MAX,
                                      "max_body_bytes": BODY_MAX})

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()


add_cases(SizeLimitsTest, SIZE_CASES)


def keepalive_request(c, target="/v1/apps"):
    return c.request("GET", target, host=ASC)


class ConnectionCapTest(unittest.TestCase):
    CAP = 20

    @classmethod
    def setUpClass(cls):
        cls.fx = ProxyFixture(limits={"max_client_connections": cls.CAP,
                                      "client_header_timeout": 30})

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()

    def refused(self, n):
        """Opens n connections past the cap; each must be answered 503 PROXY_OVERLOADED or
        closed within 3 s."""
        outcomes = []
        for _ in range(n):
            c = h.HttpClient(self.fx.port, timeout=3)
            try:
                data = c.read_until_close(3)
                outcomes.append((c.eof, data))
            finally:
                c.close()
        for eof, data in outcomes:
            self.assertTrue(eof, "a connection past the cap was neither answered nor closed")
            if data:
                self.assertTrue(data.startswith(b"HTTP/1.1 503 "), data[:200])
                self.assertIn(b"PROXY_OVERLOADED", data)
                self.assertIn(b"Connection: close", data)
        return outcomes

    def test_cap(self):
        fx = self.fx
        held = []
        try:
            for _ in range(self.CAP):
                c = h.HttpClient(fx.port, timeout=5)
                self.assertEqual(keepalive_request(c).status, 200)
                held.append(c)
            outcomes = self.refused(10)
            answered = sum(1 for _, d in outcomes if d)
            # Existing connections keep working at the cap.
            for c in held:
                r = keepalive_request(c)
                self.assertEqual((r.status, r.body), (200, OK_BODY))
            # Closing some frees room.
            for c in held[:5]:
                c.close()
            del held[:5]
            time.sleep(0.3)
            for _ in range(5):
                c = h.HttpClient(fx.port, timeout=5)
                self.assertEqual(keepalive_request(c).status, 200)
                held.append(c)
            self.refused(3)
            sys.stderr.write("\nconnection cap %d: 10 over the cap, %d answered 503, the rest "
                             "closed\n" % (self.CAP, answered))
        finally:
            for c in held:
                c.close()


class FloodTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        raise_nofile(4096)
        # Exchanges whose client closed right after a whole request still complete, and their
        # upstream connections go back to the pool (up to upstream_pool_size, for
        # upstream_idle_timeout): a short idle timeout lets every descriptor come back within
        # the test's wait.
        # Clients that close right after a whole request are treated like a half-close: their
        # exchanges still run to the upstream's answer (or its timeouts), so short upstream
        # timeouts bound how long a loaded machine keeps those descriptors.
        cls.fx = ProxyFixture(limits={"client_header_timeout": 2, "upstream_idle_timeout": 1,
                                      "upstream_tls_handshake_timeout": 3,
                                      "upstream_response_timeout": 3})

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()

    def test_open_close_flood(self):
        fx = self.fx
        self.assertEqual(converse(fx.port, GET).statuses(), [200])
        time.sleep(0.2)
        base_fds = fx.nfds()
        base_rss = fx.rss_kib()
        mark = fx.up.mark()
        errors = []
        kinds = os.environ.get("AAP_FLOOD_KINDS", "close,half_head,reset,request_no_read,close,"
                               "half_head,reset,garbage").split(",")

        def worker(start, n):
            for i in range(start, start + n):
                kind = kinds[i % len(kinds)]
                try:
                    s = socket.create_connection(("127.0.0.1", fx.port), timeout=5)
                    if kind == "half_head":
                        s.sendall(b"GET /v1/apps HTTP/1.1\r\nHo")
                    elif kind == "reset":
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    elif kind == "request_no_read":
                        s.sendall(GET)
                    elif kind == "garbage":
                        s.sendall(os.urandom(64))
                    s.close()
                except OSError as e:
                    errors.append("%s: %s" % (kind, e))

        t0 = time.monotonic()
        nthreads = 4
        per = FLOOD_CONNS // nthreads
        threads = [threading.Thread(target=worker, args=(i * per, per)) for i in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - t0
        assert_alive(self, fx, "flood")
        self.assertFalse(errors[:10], "connect failures during the flood: %s" % errors[:10])
        self.assertLess(elapsed, 60, "the flood of %d connections took %.1f s" % (
            FLOOD_CONNS, elapsed))
        # Still serving, at once.
        t1 = time.monotonic()
        self.assertEqual(converse(fx.port, GET).statuses(), [200])
        latency = time.monotonic() - t1
        # Every descriptor comes back (client connections close at once or at the 2 s header
        # timeout; aborted exchanges free their upstream connections).
        deadline = time.monotonic() + 20  # above every timeout configured here
        while time.monotonic() < deadline and fx.nfds() > base_fds + 5:
            time.sleep(0.2)
        fds = fx.nfds()
        self.assertLessEqual(fds, base_fds + 5, "descriptors: %d before the flood, %d after"
                             % (base_fds, fds))
        rss = fx.rss_kib()
        if not h.SANITIZED:  # ASan's shadow memory and quarantine make RSS meaningless
            self.assertLess(rss - base_rss, 32 * 1024,
                            "RSS grew from %d to %d KiB" % (base_rss, rss))
        sys.stderr.write("\nflood: %d connections in %.1f s; then a request in %.3f s; fds %d -> "
                         "%d; RSS %d -> %d KiB; upstream connections opened %d\n" % (
                             FLOOD_CONNS, elapsed, latency, base_fds, fds, base_rss, rss,
                             len(fx.up.new_conns(mark))))


class DescriptorExhaustionTest(unittest.TestCase):
    """The proxy at its own descriptor limit (started with RLIMIT_NOFILE 64, the way a default
    `ulimit -n` of 1024 meets the default max_client_connections of 10000): it must keep
    serving what it holds without spinning on accept() or flooding its log, and recover when
    descriptors free up."""

    @classmethod
    def setUpClass(cls):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        try:
            cls.fx = ProxyFixture()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.fx.proxy.pid) as f:
            st = f.read().rsplit(")", 1)[1].split()
        return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")

    def test_at_the_descriptor_limit(self):
        fx = self.fx
        held = [h.HttpClient(fx.port, timeout=5) for _ in range(8)]
        for c in held:
            self.assertEqual(keepalive_request(c).status, 200)
        log0 = len(fx.proxy.stderr_text())
        extra = [socket.create_connection(("127.0.0.1", fx.port), timeout=5) for _ in range(100)]
        time.sleep(0.5)
        cpu0 = self.cpu_seconds()
        time.sleep(3)
        cpu = self.cpu_seconds() - cpu0
        log = fx.proxy.stderr_text()[log0:]
        lines = log.count("accept failed")
        try:
            # Connections it holds keep working (their upstream connection is pooled).
            for c in held[:2]:
                self.assertEqual(keepalive_request(c).status, 200)
            self.assertLess(lines, 100, "%d 'accept failed' lines (%d bytes of log) in 3.5 s at "
                            "the descriptor limit" % (lines, len(log)))
            self.assertLess(cpu, 0.5, "the proxy used %.2f s of CPU in 3 s while idle at the "
                            "descriptor limit" % cpu)
        finally:
            for s in extra:
                s.close()
            for c in held:
                c.close()
        # It recovers once the descriptors are free again.
        time.sleep(2.5)
        assert_alive(self, fx, "descriptor limit")
        self.assertEqual(converse(fx.port, GET).statuses(), [200])


class IdleKeepAliveTest(unittest.TestCase):
    """N idle keep-alive connections (each has made one request the proxy answered itself, a
    404 for an unrouted path, so the upstream is not involved) while requests still flow."""

    @classmethod
    def setUpClass(cls):
        want = IDLE_CONNS + 200
        limit = raise_nofile(want)
        cls.n = IDLE_CONNS if limit >= want else max(100, limit - 200)
        if cls.n != IDLE_CONNS:
            sys.stderr.write("\nidle: RLIMIT_NOFILE %d is too low for %d connections; holding %d "
                             "(raise `ulimit -n`)\n" % (limit, IDLE_CONNS, cls.n))
        # upstream_idle_timeout: the upstream connections the requests below leave pooled (the
        # pool keeps as many as were busy at once lately) close well inside the final wait, so
        # that the descriptors counted then are the clients' alone.
        cls.fx = ProxyFixture(route_extra={"path_prefix": "/v1/"},
                              limits={"keepalive_timeout": 600, "client_header_timeout": 120,
                                      "upstream_idle_timeout": 2,
                                      "max_client_connections": max(10000, cls.n + 100)})

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()

    def test_idle_keepalive_connections(self):
        import selectors
        fx = self.fx
        n = self.n
        base_fds = fx.nfds()
        socks = []
        sel = selectors.DefaultSelector()
        t0 = time.monotonic()
        idle_req = b"GET /idle HTTP/1.1\r\n" + HOST + b"\r\n\r\n"
        try:
            for i in range(n):
                s = socket.create_connection(("127.0.0.1", fx.port), timeout=10)
                s.sendall(idle_req)
                s.setblocking(False)
                socks.append(s)
                sel.register(s, selectors.EVENT_READ, [s, b""])
            # Every one gets its 404 and stays open.
            pending = n
            deadline = time.monotonic() + 60 + n / 200
            while pending and time.monotonic() < deadline:
                for key, _ in sel.select(1.0):
                    st = key.data
                    d = key.fileobj.recv(65536)
                    self.assertTrue(d, "an idle keep-alive connection was closed")
                    st[1] += d
                    if b"PROXY_NO_ROUTE" in st[1] and st[1].endswith(b"}"):
                        sel.unregister(key.fileobj)
                        pending -= 1
            self.assertEqual(pending, 0, "%d of %d connections got no answer" % (pending, n))
            opened = time.monotonic() - t0
            held_fds = fx.nfds()
            self.assertGreaterEqual(held_fds, base_fds + n, "the proxy does not hold %d "
                                    "connections (fds %d -> %d)" % (n, base_fds, held_fds))
            # Requests still flow: new connections, and some of the idle ones.
            lat = []
            for _ in range(30):
                t1 = time.monotonic()
                o = converse(fx.port, GET)
                lat.append(time.monotonic() - t1)
                self.assertEqual(o.statuses(), [200])
            for s in socks[:: max(1, n // 20)]:
                s.setblocking(True)
                s.settimeout(10)
                c = h.HttpClient.__new__(h.HttpClient)
                c.sock, c.buf, c.eof, c.timeout, c.port, c.host = s, b"", False, 10, fx.port, ""
                t1 = time.monotonic()
                r = keepalive_request(c)
                lat.append(time.monotonic() - t1)
                self.assertEqual((r.status, r.body), (200, OK_BODY))
            self.assertLess(max(lat), 1.0, "a request took %.3f s with %d idle connections" % (
                max(lat), n))
            sys.stderr.write("\nidle: %d keep-alive connections opened in %.1f s; proxy fds "
                             "%d; RSS %d KiB; %d requests meanwhile, worst %.3f s\n" % (
                                 n, opened, held_fds, fx.rss_kib(), len(lat), max(lat)))
        finally:
            sel.close()
            for s in socks:
                s.close()
        deadline = time.monotonic() + 20  # above every timeout configured here
        while time.monotonic() < deadline and fx.nfds() > base_fds + 5:
            time.sleep(0.2)
        self.assertLessEqual(fx.nfds(), base_fds + 5)


if __name__ == "__main__":
    unittest.main(verbosity=2)
