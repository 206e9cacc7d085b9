"""A hostile Redis behind TLS (docs/testing.md, "Shared state: a hostile Redis behind TLS"):
a server with a good certificate that completes the handshake and answers PING like Redis,
then answers a rate decision with garbage, with a bulk string announced at a gigabyte (and
bytes streamed after it), with an array of a hundred thousand elements, with replies to no
command, with an error (a read-only replica's) or with a reply of another shape. Each time
the connection is dropped (the replica decides locally: logged, counted), the request is
still served, the proxy's memory stays bounded, and Redis is used again once it behaves. The reader itself is fuzzed by tests/fuzz/fuzz_redis_reply.c.
"""
import hashlib
import json
import os
import socket
import ssl
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import ProxyFixture, h  # noqa: E402
import proxytest as pt  # noqa: E402

SECRET = "hostile-redis-client-secret-0123456789abcdef"
HUGE_STREAM = 256 * 1024 * 1024  # bytes a "huge" reply streams unless the proxy hangs up


def read_command(buf):
    """One RESP command (an array of bulk strings) from the front of buf: (args, rest), or
    (None, buf) while incomplete."""
    if not buf.startswith(b"*") or b"\r\n" not in buf:
        return None, buf
    head, rest = buf.split(b"\r\n", 1)
    args = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None, buf
        size_line, after = rest.split(b"\r\n", 1)
        n = int(size_line[1:])
        if len(after) < n + 2:
            return None, buf
        args.append(after[:n])
        rest = after[n + 2:]
    return args, rest


class FakeRedis:
    """A TLS server speaking enough of Redis' protocol for the proxy's commands while `mode`
    is "good"; otherwise the answer to a rate decision (an EVAL of the GCRA script) is hostile."""

    def __init__(self, certs):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certs["good_cert"], certs["good_key"])
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.mode = "good"
        self.streamed = 0  # bytes of the last "huge" reply that the proxy took
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as s:
                buf = b""
                while True:
                    data = s.recv(65536)
                    if not data:
                        return
                    buf += data
                    while True:
                        args, buf = read_command(buf)
                        if args is None:
                            break
                        s.sendall(self.answer(s, args))
        except (OSError, ssl.SSLError, ValueError):
            return

    def answer(self, s, args):
        name = args[0].upper()
        if name == b"PING":
            return b"+PONG\r\n"
        if name != b"EVAL":
            return b"-ERR unknown command\r\n"
        script = args[1]
        if b"HMGET" in script:  # the once-a-second sync: nothing known
            return b"*5\r\n" + b"$-1\r\n" * 5
        if b"TIME" not in script:  # a figure written (only the rate script reads the clock)
            return b":1\r\n"
        if self.mode == "garbage":
            return b"HTTP/1.1 200 OK\r\n\r\n"
        if self.mode == "many":
            return b"*100000\r\n" + b":1\r\n" * 1000
        if self.mode == "unasked":
            return b"*2\r\n:1\r\n:0\r\n" + b"+OK\r\n" * 20
        if self.mode == "refuse":  # a replica after a failover
            return b"-READONLY You can't write against a read only replica.\r\n"
        if self.mode == "shape":  # a well-formed reply that no GCRA script gives
            return b":1\r\n"
        if self.mode == "huge":
            s.sendall(b"$1000000000\r\n")
            chunk = b"x" * 65536
            self.streamed = 0
            while self.streamed < HUGE_STREAM:
                s.sendall(chunk)  # raises once the proxy has hung up
                self.streamed += len(chunk)
            return b""
        return b"*2\r\n:1\r\n:0\r\n"

    def stop(self):
        self.lsock.close()


class HostileRedisTlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        certs = h.get_certs()
        cls.redis = FakeRedis(certs)
        client = {"key_sha256": hashlib.sha256(SECRET.encode()).hexdigest(),
                  "rate": {"per_second": 1000, "burst": 1000}}
        cls.fx = ProxyFixture(admin_listen="127.0.0.1:0", clients={"ci": client},
                              shared_state={"redis": "127.0.0.1:%d" % cls.redis.port,
                                            "tls": {"ca_file": certs["ca_cert"]},
                                            "timeout": 0.5})

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()
        cls.redis.stop()

    def state(self):
        return self.shared()["state"]

    def shared(self):
        r = pt.admin_get(self.fx.proxy, "/readyz")
        return {c["name"]: c for c in json.loads(r.body)["checks"]}["shared_state"]

    def get(self):
        with h.HttpClient(self.fx.port, timeout=15) as c:
            return c.request("GET", "/v1/apps", [("Proxy-Authorization", "Bearer " + SECRET)])

    def remote(self):
        return pt.metrics(self.fx.proxy).value("apple_auth_proxy_shared_rate_decisions_total",
                                               where="redis")

    def hostile(self, mode, reason):
        """Redis in use; then one rate decision answered in `mode`: the connection is dropped
        for `reason`, the request served, and Redis used again once it behaves."""
        self.redis.mode = "good"
        pt.wait_until(lambda: self.state() == "redis", 15, 0.05, "the proxy using Redis")
        before = self.remote()
        self.assertEqual(self.get().status, 200)
        self.assertEqual(self.remote(), before + 1)  # decided by Redis
        mark = len(self.fx.proxy.stderr_text())
        fallbacks = pt.metrics(self.fx.proxy).value("apple_auth_proxy_shared_state_fallbacks_total")
        self.redis.mode = mode
        r = self.get()
        self.assertEqual(r.status, 200, r.body[:300])
        pt.wait_stderr(self.fx.proxy, r"is not usable \(%s" % reason, since=mark, timeout=15)
        self.assertGreater(pt.metrics(self.fx.proxy).value(
            "apple_auth_proxy_shared_state_fallbacks_total"), fallbacks)
        self.assertTrue(self.fx.proxy.alive())
        self.redis.mode = "good"
        pt.wait_until(lambda: self.state() == "redis", 15, 0.05, "Redis used again")
        self.assertEqual(self.get().status, 200)

    def test_garbage_reply(self):
        self.hostile("garbage", r"not a Redis reply: ")

    def test_array_of_a_hundred_thousand_elements(self):
        self.hostile("many", r"not a Redis reply: ")

    def test_replies_to_no_command(self):
        self.hostile("unasked", r"a reply to no command")

    def test_script_refused(self):
        self.hostile("refuse", r"Redis refused the rate script: READONLY ")

    def test_reply_of_another_shape(self):
        self.hostile("shape", r"the rate script answered with something else")

    def test_huge_reply_is_cut_off_at_1_mib(self):
        rss = self.fx.rss_kib()
        self.hostile("huge", r"a reply larger than 1 MiB")
        # the proxy hung up after about a megabyte (plus what the sockets buffer), not after
        # the quarter gigabyte the server would have sent; its memory grew by far less
        self.assertLess(self.redis.streamed, 64 * 1024 * 1024)
        self.assertLess(self.fx.rss_kib() - rss, 64 * 1024)


if __name__ == "__main__":
    unittest.main()
