"""Upstream TLS failures (docs/testing.md "Upstream TLS -> 502, and the test server receives no
request bytes").

One recording upstream per bad certificate (tests/upstream/certs.py), each behind its own
route. For every one: the client gets 502 PROXY_UPSTREAM_TLS, the upstream accepted a TCP
connection whose ClientHello named the upstream (SNI), and it received no application byte,
so neither the request nor the token left the proxy. A good certificate is the control.
"""
import json
import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import (ASC, OK_BODY, ProxyFixture, RawUpstream, converse, error_code,  # noqa: E402
                     h, parse_request_strict)

BAD_KINDS = ["expired", "not_yet_valid", "wrong_host", "self_signed", "cn_only", "unknown_ca"]


class PlainTcpUpstream:
    """Accepts TCP and records bytes, never speaking TLS (an upstream that is not TLS)."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.data = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            buf = bytearray()
            self.data.append(buf)
            s.settimeout(2)
            try:
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    buf += d
            except OSError:
                pass
            s.close()

    def stop(self):
        self.lsock.close()


def get(path, host=ASC):
    return ("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host)).encode()


class UpstreamTlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        certs = h.get_certs()
        cls.bad = {k: RawUpstream(k) for k in BAD_KINDS}
        cls.no_ip = RawUpstream("no_ip")
        cls.good_ip = RawUpstream("good")
        cls.plain = PlainTcpUpstream()
        cls.other_ca = RawUpstream("good")
        routes = [h.route(up.address, "app-store-connect", "asc", path_prefix="/%s/" % k)
                  for k, up in cls.bad.items()]
        # An IP upstream: the certificate must carry the IP in its SAN.
        routes.append(h.route(cls.no_ip.address, "https://127.0.0.1:%d" % cls.no_ip.port, "asc",
                              path_prefix="/no_ip/"))
        routes.append(h.route(cls.good_ip.address, "https://127.0.0.1:%d" % cls.good_ip.port,
                              "asc", path_prefix="/good_ip/"))
        routes.append(h.route(cls.plain.address, "app-store-connect", "asc",
                              path_prefix="/plain/"))
        # A good certificate, but the route trusts another CA.
        routes.append(h.route(cls.other_ca.address, "app-store-connect", "asc",
                              path_prefix="/other_ca/", ca_file=certs["other_ca_cert"]))
        cls.fx = ProxyFixture(extra_routes=routes)

    @classmethod
    def tearDownClass(cls):
        cls.fx.stop()
        for up in list(cls.bad.values()) + [cls.no_ip, cls.good_ip, cls.other_ca]:
            up.stop()
        cls.plain.stop()

    def check_refused(self, name, up, path, host=ASC, sni=ASC):
        mark = up.mark()
        o = converse(self.fx.port, get(path, host))
        self.assertEqual(o.statuses(), [502], "%s: %r" % (name, o))
        r = o.responses[0]
        self.assertEqual(error_code(r), "PROXY_UPSTREAM_TLS", "%s: %r" % (name, r.body))
        detail = json.loads(r.body)["errors"][0]["detail"]
        self.assertNotIn("eyJ", detail)
        time.sleep(0.1)
        conns = up.new_conns(mark)
        self.assertTrue(conns, "%s: no TCP connection reached the upstream" % name)
        for c in conns:
            up.wait(lambda: c.closed, 3)
            self.assertEqual(len(c.data), 0, "%s: %d application bytes reached an unverified "
                             "upstream: %r" % (name, len(c.data), bytes(c.data[:200])))
            if sni is not False:
                self.assertEqual(c.sni, sni, "%s: SNI" % name)
        self.assertEqual(up.new_bytes(mark), 0)
        return detail

    def test_good_certificate_control(self):
        fx = self.fx
        mark = fx.up.mark()
        o = converse(fx.port, get("/v1/apps"))
        self.assertEqual(o.statuses(), [200])
        self.assertEqual(o.responses[0].body, OK_BODY)
        reqs = fx.up.requests_since(mark)
        self.assertEqual(len(reqs), 1)
        parse_request_strict(reqs[0][1], ASC)
        conn = reqs[0][0]
        self.assertEqual(conn.sni, ASC, "the ClientHello must carry the upstream's name")
        self.assertEqual(conn.alpn, "http/1.1", "ALPN http/1.1 must be offered")

    def test_ip_upstream_good_certificate_control(self):
        mark = self.good_ip.mark()
        o = converse(self.fx.port, get("/good_ip/x"))
        self.assertEqual(o.statuses(), [200], "%r" % o)
        reqs = self.good_ip.requests_since(mark)
        parse_request_strict(reqs[0][1], "127.0.0.1:%d" % self.good_ip.port)

    def test_ip_not_in_san(self):
        self.check_refused("no_ip", self.no_ip, "/no_ip/x", sni=False)

    def test_ip_upstream_sends_no_sni(self):
        """RFC 6066 3: "Literal IPv4 and IPv6 addresses are not permitted in HostName"; for an
        IP upstream the certificate check is against the IP SAN and no SNI is sent."""
        mark = self.good_ip.mark()
        o = converse(self.fx.port, get("/good_ip/sni"))
        self.assertEqual(o.statuses(), [200], "%r" % o)
        conn = self.good_ip.requests_since(mark)[0][0]
        self.assertIsNone(conn.sni, "an IP literal was sent as SNI")

    def test_trusting_another_ca(self):
        self.check_refused("other_ca", self.other_ca, "/other_ca/x")

    def test_upstream_not_speaking_tls(self):
        n = len(self.plain.data)
        o = converse(self.fx.port, get("/plain/x"))
        self.assertEqual(o.statuses(), [502], "%r" % o)
        self.assertIn(error_code(o.responses[0]),
                      ("PROXY_UPSTREAM_TLS", "PROXY_UPSTREAM_UNREACHABLE"))
        time.sleep(0.2)
        for buf in self.plain.data[n:]:
            # Only a ClientHello (a TLS record), never the request or the token.
            self.assertNotIn(b"Authorization", buf)
            self.assertNotIn(b"GET ", buf)
            if buf:
                self.assertEqual(buf[0], 0x16, "not a TLS handshake record: %r" % bytes(buf[:20]))

    def test_verification_cannot_be_switched_off_in_the_configuration(self):
        for key, value in (("tls_verify", False), ("insecure", True), ("verify", False),
                           ("ssl_verify", False)):
            r = h.route(self.fx.up.address, "app-store-connect", "asc")
            r[key] = value
            cfg = h.write_config({"asc": self.fx.cred}, [r])
            rc, out, err = h.run_cli(["check", "-c", cfg])
            self.assertEqual(rc, 2, "%s accepted: %s" % (key, err))
            self.assertIn(key, err)

    def test_http_upstream_refused_in_the_configuration(self):
        r = h.route(self.fx.up.address, "http://api.appstoreconnect.apple.com", "asc")
        cfg = h.write_config({"asc": self.fx.cred}, [r])
        rc, out, err = h.run_cli(["check", "-c", cfg])
        self.assertEqual(rc, 2, err)
        self.assertIn("https", err)


def _add(kind):
    def t(self):
        detail = self.check_refused(kind, self.bad[kind], "/%s/v1/apps" % kind)
        self.assertTrue(detail)
    t.__name__ = "test_certificate_" + kind
    t.__doc__ = "%s certificate -> 502 PROXY_UPSTREAM_TLS, no request byte upstream" % kind
    setattr(UpstreamTlsTest, t.__name__, t)


for _k in BAD_KINDS:
    _add(_k)

if __name__ == "__main__":
    unittest.main(verbosity=2)
