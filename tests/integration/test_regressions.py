"""Named regression tests for proxy bugs found at the integration level (one test per bug)."""
import os
import re
import signal
import socket
import sys
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def read_all(s):
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            return data
        data += d


class HalfCloseBeforeUpstreamReady(unittest.TestCase):
    """A client that sends a whole request and half-closes at once used to be dropped when the
    EOF arrived while the proxy was still opening the upstream connection (no pooled one): the
    request had not been forwarded yet, so it counted as abandoned mid-request."""

    def setUp(self):
        self.st = h.Stack()

    def tearDown(self):
        self.st.stop()

    def test_get_then_shutdown_gets_the_response(self):
        with socket.create_connection(("127.0.0.1", self.st.port), timeout=10) as s:
            s.sendall(b"GET /v1/apps HTTP/1.1\r\nHost: localhost\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            data = read_all(s)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:80])
        self.assertIn(b'"apps"', data)

    def test_post_with_body_then_shutdown_gets_the_response(self):
        with socket.create_connection(("127.0.0.1", self.st.port), timeout=10) as s:
            s.sendall(b"POST /__echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello")
            s.shutdown(socket.SHUT_WR)
            data = read_all(s)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:80])
        self.assertIn(b'"body_len": 5', data)


class PipelinedBehindProxyError(unittest.TestCase):
    """A request the proxy answered itself (here 403 for a foreign host) left the connection
    idle without looking at the pipelined request already buffered behind it, which then waited
    for more bytes that never came."""

    def setUp(self):
        self.st = h.Stack()

    def tearDown(self):
        self.st.stop()

    def test_second_request_answered(self):
        with socket.create_connection(("127.0.0.1", self.st.port), timeout=10) as s:
            s.sendall(b"GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n"
                      b"GET /v1/apps HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = read_all(s)
        first = data.find(b"HTTP/1.1 403 ")
        second = data.find(b"HTTP/1.1 200 ")
        self.assertEqual(first, 0, data[:200])
        self.assertGreater(second, first, data[:400])


class LinkRewriteEdges(unittest.TestCase):
    """Two gaps in link rewriting: an HTTP/1.0 request without Host got Apple's absolute links
    (leading the client around the proxy), and HEAD on a rewritten resource announced the
    upstream's Content-Length although a GET of it is rewritten and sent chunked."""

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack()

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def test_http10_without_host_gets_the_listener_origin(self):
        with socket.create_connection(("127.0.0.1", self.st.port), timeout=10) as s:
            s.sendall(b"GET /v1/apps?limit=1 HTTP/1.0\r\n\r\n")
            data = read_all(s)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:80])
        self.assertNotIn(b"https://api.appstoreconnect.apple.com", data)
        self.assertIn(("http://127.0.0.1:%d/v1/apps" % self.st.port).encode(), data)

    def test_head_on_rewritten_resource_has_no_upstream_length(self):
        with self.st.client() as c:
            head = c.request("HEAD", "/v1/apps")
            get = c.request("GET", "/v1/apps")
        self.assertEqual(head.status, 200)
        self.assertEqual(head.header_all("Content-Length"), [])
        self.assertEqual(get.header_all("Content-Length"), [])
        self.assertEqual(head.header_all("Transfer-Encoding"), ["chunked"])
        self.assertEqual(get.header_all("Transfer-Encoding"), ["chunked"])


class SilentUpstream:
    """A TCP listener that accepts and never speaks TLS: upstream handshakes hang."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


class ClientGoneWhileUpstreamOpens(unittest.TestCase):
    """A client that went away while its upstream connection was still opening was freed, and
    the connection's ready callback then wrote into the freed client: a remote crash (found by
    the hostile suite and the soak test, both variants below)."""

    def setUp(self):
        self.silent = SilentUpstream()
        key = h.make_key()
        cred = h.credential("app-store-connect", key)
        route = h.route("127.0.0.1:%d" % self.silent.port, "app-store-connect", "asc")
        self.config = h.write_config({"asc": cred}, [route],
                                     limits={"upstream_tls_handshake_timeout": 1})
        self.px = h.start_proxy(self.config)

    def tearDown(self):
        self.px.stop()
        self.silent.close()

    def abandon(self, data, how):
        s = socket.create_connection(("127.0.0.1", self.px.port), timeout=5)
        s.sendall(data)
        time.sleep(0.2)
        if how == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()

    def test_partial_post_then_close(self):
        for _ in range(5):
            self.abandon(b"POST /v1/apps HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n"
                         b"0123456789", "close")
        time.sleep(2.0)  # past the handshake timeout: the callbacks have run
        self.assertTrue(self.px.alive(), self.px.stderr_text()[-2000:])
        with self.px.client() as c:
            self.assertEqual(c.request("GET", "/v1/apps").status, 504)

    def test_get_then_reset(self):
        for _ in range(5):
            self.abandon(b"GET /v1/apps HTTP/1.1\r\nHost: localhost\r\n\r\n", "reset")
        time.sleep(2.0)
        self.assertTrue(self.px.alive(), self.px.stderr_text()[-2000:])
        with self.px.client() as c:
            self.assertEqual(c.request("GET", "/v1/apps").status, 504)


class SlowUploadNotCutByResponseTimeout(unittest.TestCase):
    """upstream_response_timeout was armed when the request head went out, so an upload that
    took longer than it got 504 while the body was still streaming (found by the soak test)."""

    def setUp(self):
        self.st = h.Stack(limits={"upstream_response_timeout": 1})

    def tearDown(self):
        self.st.stop()

    def test_upload_longer_than_the_response_timeout(self):
        body = b"x" * 3000
        with socket.create_connection(("127.0.0.1", self.st.port), timeout=10) as s:
            s.sendall(b"POST /__echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n"
                      b"Connection: close\r\n\r\n" % len(body))
            for i in range(0, len(body), 100):  # 30 pieces over 3 s
                s.sendall(body[i:i + 100])
                time.sleep(0.1)
            data = read_all(s)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:200])
        self.assertIn(b'"body_len": 3000', data)


class MintCountSurvivesReload(unittest.TestCase):
    """apple_auth_proxy_token_mints_total was read from the current configuration's token
    cache, so every reload reset it although the docs say counters survive reloads (found by
    the soak test)."""

    def setUp(self):
        self.st = h.Stack(admin_listen="127.0.0.1:0")

    def tearDown(self):
        self.st.stop()

    def mints(self):
        url = "http://127.0.0.1:%d/metrics" % self.st.proxy.admin_port
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        m = re.search(r'^apple_auth_proxy_token_mints_total\{credential="app-store-connect"\} (\d+)',
                      text, re.M)
        return int(m.group(1))

    def test_each_reload_adds_its_signature(self):
        self.assertEqual(self.mints(), 1)
        for n in range(2, 5):
            mark = len(self.st.proxy.stderr_text())
            self.st.proxy.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "reloaded" not in self.st.proxy.stderr_text()[mark:]:
                self.assertLess(time.monotonic(), deadline, "no reload logged")
                time.sleep(0.05)
            self.assertEqual(self.mints(), n)


if __name__ == "__main__":
    unittest.main()
