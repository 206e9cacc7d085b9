"""Slow clients (docs/testing.md "Timeouts and resources"): slowloris, slow body, slow reader.

- Slowloris: AAP_SLOWLORIS_CONNS connections (default 300) each send a request line and then
  one header byte every 2 s, never finishing the head. Meanwhile a normal client keeps making
  requests: every one succeeds at normal latency, and every slow connection is closed (408 or a
  bare close) at client_header_timeout (3 s here), counted from its accept.
- Slow body: AAP_SLOWBODY_CONNS connections (default 50) send a head and a few body bytes, then
  one byte every 2 s: each is answered 408 (or closed) at client_body_timeout (1.5 s), the
  upstream never gets a complete request and its connections are closed; normal requests flow.
- Slow reader: a 64 MiB download read at a few MiB/s: the proxy's RSS stays bounded
  (backpressure), then the reader stops and send_timeout (2 s) closes the connection, and the
  upstream connection with it.

All in Python with the standard library (selectors), on 127.0.0.1.
"""
import os
import selectors
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import ASC, OK_BODY, ProxyFixture, h  # noqa: E402

SLOWLORIS_CONNS = int(os.environ.get("AAP_SLOWLORIS_CONNS", "300"))
SLOWBODY_CONNS = int(os.environ.get("AAP_SLOWBODY_CONNS", "50"))
HEADER_TIMEOUT = 3.0
BODY_TIMEOUT = 1.5
SEND_TIMEOUT = 2.0
BYTE_INTERVAL = 2.0
# Normal requests must stay fast while the slow clients are held. Loopback requests take a few
# milliseconds; the bound is generous for a loaded 2-core CI machine.
NORMAL_LATENCY_MAX = float(os.environ.get("AAP_NORMAL_LATENCY_MAX", "1.0"))
GET = b"GET /v1/apps HTTP/1.1\r\nHost: " + ASC.encode() + b"\r\n\r\n"


def raise_nofile(n):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


class NormalClient(threading.Thread):
    """Makes requests (a new connection each) until stopped; records (latency, status)."""

    def __init__(self, port, interval=0.05):
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.results = []
        self.errors = []
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            try:
                with h.HttpClient(self.port, timeout=10) as c:
                    r = c.request("GET", "/v1/apps", host=ASC)
                self.results.append((time.monotonic() - t0, r.status, r.body))
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                self.errors.append("%s after %.3fs" % (e, time.monotonic() - t0))
            self.stop_flag.wait(self.interval)

    def stop(self):
        self.stop_flag.set()
        self.join(15)


class SlowConns:
    """n non-blocking connections driven by one selector: each sends `first` right away, then
    `byte` every interval; records, per connection, when it was connected, what the proxy sent
    back and when it closed."""

    def __init__(self, port, n, first, byte=b"X", interval=BYTE_INTERVAL):
        self.port, self.first, self.byte, self.interval = port, first, byte, interval
        self.sel = selectors.DefaultSelector()
        self.conns = []
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setblocking(False)
            st = {"sock": s, "t0": time.monotonic(), "recv": b"", "closed_at": None,
                  "sent": 0}
            self.conns.append(st)
            self.sel.register(s, selectors.EVENT_READ, st)
            self._send(st, first)

    def _send(self, st, data):
        if st["closed_at"] is not None:
            return
        try:
            st["sent"] += st["sock"].send(data)
        except BlockingIOError:
            pass
        except OSError:
            self._closed(st)

    def _closed(self, st):
        if st["closed_at"] is None:
            st["closed_at"] = time.monotonic()
            try:
                self.sel.unregister(st["sock"])
            except (KeyError, ValueError):
                pass
            st["sock"].close()

    def open_count(self):
        return sum(1 for st in self.conns if st["closed_at"] is None)

    def drive(self, duration):
        """Runs for duration seconds (or until every connection is closed)."""
        end = time.monotonic() + duration
        next_send = time.monotonic() + self.interval
        while time.monotonic() < end and self.open_count():
            timeout = max(0.0, min(end, next_send) - time.monotonic())
            for key, _ in self.sel.select(timeout):
                st = key.data
                try:
                    d = st["sock"].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    d = b""
                if d:
                    st["recv"] += d
                else:
                    self._closed(st)
            if time.monotonic() >= next_send:
                for st in self.conns:
                    self._send(st, self.byte)
                next_send += self.interval

    def close(self):
        for st in self.conns:
            self._closed(st)
        self.sel.close()


class SlowClientsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        raise_nofile(SLOWLORIS_CONNS + SLOWBODY_CONNS + 512)
        cls.fx = ProxyFixture(limits={"client_header_timeout": HEADER_TIMEOUT,
                                      "client_body_timeout": BODY_TIMEOUT,
                                      "send_timeout": SEND_TIMEOUT,
                                      "upstream_response_timeout": 30})

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()

    def check_normal(self, normal, what):
        self.assertFalse(normal.errors, "%s: normal requests failed: %s" % (
            what, normal.errors[:5]))
        self.assertGreater(len(normal.results), 10, what)
        bad = [r for r in normal.results if r[1] != 200 or r[2] != OK_BODY]
        self.assertFalse(bad, "%s: normal requests got %r" % (what, bad[:5]))
        worst = max(r[0] for r in normal.results)
        self.assertLess(worst, NORMAL_LATENCY_MAX, "%s: a normal request took %.3f s" % (
            what, worst))
        return worst

    def test_slowloris(self):
        fx = self.fx
        normal = NormalClient(fx.port)
        normal.start()
        slow = SlowConns(fx.port, SLOWLORIS_CONNS, b"GET /v1/apps HTTP/1.1\r\nHost: " +
                         ASC.encode() + b"\r\nX-Slow: ")
        try:
            slow.drive(HEADER_TIMEOUT + 5)
        finally:
            normal.stop()
            slow.close()
        worst = self.check_normal(normal, "slowloris")
        lifetimes = [st["closed_at"] - st["t0"] for st in slow.conns if st["closed_at"]]
        still_open = [st for st in slow.conns if st["closed_at"] is None]
        self.assertFalse(still_open, "%d slow connections outlived client_header_timeout + 5 s"
                         % len(still_open))
        self.assertGreaterEqual(min(lifetimes), HEADER_TIMEOUT - 0.5,
                                "a slow connection was closed before the header timeout")
        self.assertLessEqual(max(lifetimes), HEADER_TIMEOUT + 2.5,
                             "slow connections lived up to %.2f s" % max(lifetimes))
        for st in slow.conns:
            if st["recv"]:
                self.assertTrue(st["recv"].startswith(b"HTTP/1.1 408 "), st["recv"][:200])
                self.assertIn(b"PROXY_REQUEST_TIMEOUT", st["recv"])
        sys.stderr.write("\nslowloris: %d connections closed after %.2f..%.2f s; %d normal "
                         "requests, worst %.3f s\n" % (len(lifetimes), min(lifetimes),
                                                       max(lifetimes), len(normal.results),
                                                       worst))

    def test_slow_body(self):
        fx = self.fx
        mark = fx.up.mark()
        normal = NormalClient(fx.port)
        normal.start()
        head = (b"POST /v1/slow HTTP/1.1\r\nHost: " + ASC.encode() +
                b"\r\nContent-Length: 1000\r\n\r\n0123456789")
        slow = SlowConns(fx.port, SLOWBODY_CONNS, head)
        try:
            slow.drive(BODY_TIMEOUT + 6)
        finally:
            normal.stop()
            slow.close()
        self.check_normal(normal, "slow body")
        still_open = [st for st in slow.conns if st["closed_at"] is None]
        self.assertFalse(still_open, "%d slow-body connections outlived the body timeout"
                         % len(still_open))
        lifetimes = [st["closed_at"] - st["t0"] for st in slow.conns]
        self.assertLessEqual(max(lifetimes), BODY_TIMEOUT + 3.5, "slow-body connections lived "
                             "up to %.2f s" % max(lifetimes))
        for st in slow.conns:
            if st["recv"]:
                self.assertTrue(st["recv"].startswith(b"HTTP/1.1 408 "), st["recv"][:200])
        # The upstream never got a complete slow request, and their connections were closed.
        slow_reqs = [r for _, r in fx.up.requests_since(mark) if b"/v1/slow" in r]
        self.assertEqual(slow_reqs, [])
        partial = [c for c in fx.up.new_conns(mark) if b"/v1/slow" in bytes(c.data)]
        for c in partial:
            fx.up.wait(lambda: c.closed, 3)
            self.assertTrue(c.closed, "an upstream connection carrying a stalled body stayed open")

    def test_slow_reader(self):
        fx = self.fx
        total = 64 << 20
        fx.up.queue([("stream", b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                b"Content-Length: %d\r\n\r\n" % total, total)])
        mark = fx.up.mark()
        base = fx.rss_kib()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.connect(("127.0.0.1", fx.port))
        s.settimeout(10)
        s.sendall(b"GET /v1/download HTTP/1.1\r\nHost: " + ASC.encode() + b"\r\n\r\n")
        got = 0
        peak = base
        t_end = time.monotonic() + 4.0
        t_stop = time.monotonic()
        while time.monotonic() < t_end:
            d = s.recv(65536)
            if not d:
                break
            # The proxy's send timeout runs from its last write, which this read allowed: the
            # wait is measured from here, not from after the RSS probe and the sleep below (a
            # loaded machine can spend a good part of a second in those).
            t_stop = time.monotonic()
            got += len(d)
            peak = max(peak, fx.rss_kib())
            time.sleep(0.015)
        up_conn = fx.up.new_conns(mark) or [c for c, _ in fx.up.requests_since(mark)]
        self.assertTrue(up_conn, "the download never reached the upstream")
        up_conn = fx.up.requests_since(mark)[0][0]
        sys.stderr.write("\nslow reader: read %.1f MiB in 4 s; upstream wrote %.1f MiB; proxy RSS "
                         "%d KiB -> peak %d KiB\n" % (got / 1048576, up_conn.body_sent / 1048576,
                                                      base, peak))
        self.assertGreater(got, 1 << 20, "the slow reader got almost nothing")
        self.assertLess(got, total)
        # Backpressure: the upstream is held back to what the reader takes plus bounded buffers.
        self.assertLess(up_conn.body_sent - got, 24 << 20,
                        "the proxy read %d bytes ahead of the client" % (up_conn.body_sent - got))
        if not h.SANITIZED:  # ASan's shadow memory and quarantine make RSS meaningless
            self.assertLess(peak - base, 24 * 1024,
                            "the proxy's RSS grew by %d KiB" % (peak - base))
        # The reader stops: send_timeout closes the connection, and the upstream one with it.
        fx.up.wait(lambda: up_conn.closed, SEND_TIMEOUT + 6)
        self.assertTrue(up_conn.closed, "the upstream connection outlived the stalled reader")
        waited = time.monotonic() - t_stop
        self.assertGreaterEqual(waited, SEND_TIMEOUT - 0.5)
        rest = 0
        s.settimeout(5)
        try:
            while True:
                d = s.recv(1 << 20)
                if not d:
                    break
                rest += len(d)
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
        self.assertLess(got + rest, total, "the whole body arrived although the reader stalled")
        sys.stderr.write("slow reader: closed %.2f s after the reader stopped\n" % waited)


if __name__ == "__main__":
    unittest.main(verbosity=2)
