"""Named regression tests for proxy bugs found at the integration level (one test per bug)."""
import os
import socket
import sys
import unittest

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
            s.sendall(b"GET /v1/apps HTTP/1.1\r\nHost: x\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            data = read_all(s)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:80])
        self.assertIn(b'"apps"', data)

    def test_post_with_body_then_shutdown_gets_the_response(self):
        with socket.create_connection(("127.0.0.1", self.st.port), timeout=10) as s:
            s.sendall(b"POST /__echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
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
                      b"GET /v1/apps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
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


if __name__ == "__main__":
    unittest.main()
