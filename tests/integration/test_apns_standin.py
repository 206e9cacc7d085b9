"""The APNs stand-in (tests/upstream/standin_apns.py) against the proxy's own apns tokens.

Tokens come from `apple-auth-proxy token` with an apns credential, so this checks both sides: the
proxy's token is exactly what APNs documents, and the stand-in applies APNs' rules (signature,
exact claims, one hour, 20 minutes per connection, one team per connection) and answers in
APNs' shape; GOAWAY and RST_STREAM come on command. A small HTTP/2 client (python3-h2) talks to
the stand-in directly.
"""
import json
import os
import socket
import ssl
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402

DEVICE = "a" * 64
TOPIC = "com.example.app"


class H2Client:
    """One HTTP/2 connection; request() sends one request and waits for its end."""

    def __init__(self, port, server_hostname="api.push.apple.com", ca_file=None):
        ctx = ssl.create_default_context(cafile=ca_file or h.get_certs()["ca_cert"])
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.goaway = None
        self.done = {}

    def send(self, method, path, headers=(), body=b""):
        sid = self.conn.get_next_available_stream_id()
        hd = [(":method", method), (":scheme", "https"), (":authority", "api.push.apple.com"),
              (":path", path)] + list(headers)
        self.conn.send_headers(sid, hd, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self.done[sid] = {"status": None, "headers": {}, "body": b"", "ended": False,
                          "reset": None}
        return sid

    def wait(self, sid, timeout=10):
        deadline = time.monotonic() + timeout
        st = self.done[sid]
        while not st["ended"] and st["reset"] is None:
            if time.monotonic() > deadline:
                raise AssertionError("stream %d: no answer in %ss" % (sid, timeout))
            if self.goaway is not None and sid > self.goaway:
                return st
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("connection closed before stream %d ended" % sid)
            for ev in self.conn.receive_data(data):
                self.on_event(ev)
            self.sock.sendall(self.conn.data_to_send())
        return st

    def on_event(self, ev):
        if isinstance(ev, h2.events.ResponseReceived):
            st = self.done[ev.stream_id]
            st["headers"] = dict(ev.headers)
            st["status"] = int(st["headers"][":status"])
        elif isinstance(ev, h2.events.DataReceived):
            self.done[ev.stream_id]["body"] += ev.data
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            self.done[ev.stream_id]["ended"] = True
        elif isinstance(ev, h2.events.StreamReset):
            self.done[ev.stream_id]["reset"] = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev.last_stream_id
            # python3-h2 closes the whole connection on GOAWAY; RFC 9113 section 6.8 lets the
            # streams up to last-stream-id finish, which is what this client must observe.
            self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN

    def push(self, token, body=b'{"aps":{"alert":"hi"}}', device=DEVICE, extra=()):
        headers = [("apns-topic", TOPIC), ("apns-push-type", "alert")]
        if token is not None:
            headers.append(("authorization", "bearer " + token))
        sid = self.send("POST", "/3/device/" + device, headers + list(extra), body)
        return self.wait(sid)

    def close(self):
        self.sock.close()


def reason(st):
    return json.loads(st["body"])["reason"]


class ApnsStandinTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.key = h.make_key()
        cls.other_key = h.make_key()
        cls.team = h.random_team_id()
        cls.up = h.Standin(script=h.STANDIN_APNS, args=["--sandbox"])

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def proxy_token(self, key=None, team=None):
        """A token from the proxy's own `token` command for an apns credential."""
        key = key or self.key
        cred = h.credential("apns", key, team_id=team or self.team)
        path = h.write_config({"push": cred}, [{"path_prefix": "/3/device/",
                                                "upstream": "https://api.push.apple.com",
                                                "credential": "push"}])
        rc, out, err = h.run_cli(["token", "-c", path])
        self.assertEqual(rc, 0, err)
        return out.strip()

    def test_proxy_token_is_exactly_apns_shape_and_accepted(self):
        tok = self.proxy_token()
        header, claims = h.decode_token(tok, self.key)
        self.assertEqual(header, {"alg": "ES256", "kid": self.key.kid})
        self.assertEqual(set(claims), {"iss", "iat"})
        self.assertEqual(claims["iss"], self.team)
        c = H2Client(self.up.port)
        apns_id = str(uuid.uuid4()).upper()
        st = c.push(tok, extra=[("apns-id", apns_id)])
        self.assertEqual(st["status"], 200)
        self.assertEqual(st["headers"]["apns-id"], apns_id)
        self.assertIn("apns-unique-id", st["headers"])
        self.assertEqual(st["body"], b"")
        c.close()

    def test_token_rules(self):
        c = H2Client(self.up.port)
        st = c.push(None)
        self.assertEqual((st["status"], reason(st)), (403, "MissingProviderToken"))
        now = int(time.time())
        old = h.mint(self.key, {"iss": self.team, "iat": now - 3700}, {"typ": None})
        st = c.push(old)
        self.assertEqual((st["status"], reason(st)), (403, "ExpiredProviderToken"))
        with_exp = h.mint(self.key, {"iss": self.team, "iat": now, "exp": now + 600},
                          {"typ": None})
        st = c.push(with_exp)
        self.assertEqual((st["status"], reason(st)), (403, "InvalidProviderToken"))
        unknown = h.make_key(publish=False)
        st = c.push(h.mint(unknown, {"iss": self.team, "iat": now}, {"typ": None}))
        self.assertEqual((st["status"], reason(st)), (403, "InvalidProviderToken"))
        self.assertIn("apns-id", st["headers"])
        c.close()

    def test_twenty_minute_rule_per_connection(self):
        now = int(time.time())
        first = h.mint(self.key, {"iss": self.team, "iat": now}, {"typ": None})
        second = h.mint(self.other_key, {"iss": self.team, "iat": now + 1}, {"typ": None})
        c = H2Client(self.up.port)
        self.assertEqual(c.push(first)["status"], 200)
        self.assertEqual(c.push(first)["status"], 200)
        st = c.push(second)
        self.assertEqual((st["status"], reason(st)), (429, "TooManyProviderTokenUpdates"))
        # Another team's token on the same connection is refused outright.
        foreign = h.mint(self.key, {"iss": h.random_team_id(), "iat": now}, {"typ": None})
        st = c.push(foreign)
        self.assertEqual((st["status"], reason(st)), (403, "InvalidProviderToken"))
        # A new connection starts its own count; 20 minutes later the same connection takes it.
        d = H2Client(self.up.port)
        self.assertEqual(d.push(second)["status"], 200)
        d.close()
        st = c.push(second, extra=[("x-standin-clock", "1200")])
        self.assertEqual(st["status"], 200)
        c.close()

    def test_payload_rules(self):
        tok = self.proxy_token()
        c = H2Client(self.up.port)
        st = c.push(tok, device="zz")
        self.assertEqual((st["status"], reason(st)), (400, "BadDeviceToken"))
        st = c.push(tok, body=b'{"aps":{"alert":"' + b"x" * 5000 + b'"}}')
        self.assertEqual((st["status"], reason(st)), (413, "PayloadTooLarge"))
        st = c.push(tok, device="dead" + "0" * 60)
        self.assertEqual((st["status"], reason(st)), (410, "Unregistered"))
        self.assertIsInstance(json.loads(st["body"])["timestamp"], int)
        c.close()

    def test_goaway_and_rst_on_command(self):
        tok = self.proxy_token()
        c = H2Client(self.up.port)
        st = c.push(tok, extra=[("x-standin-action", "rst")])
        self.assertIsNotNone(st["reset"])
        ok = c.send("POST", "/3/device/" + DEVICE,
                    [("apns-topic", TOPIC), ("authorization", "bearer " + tok),
                     ("x-standin-action", "delay=0.3")], b'{"aps":{}}')
        gone = c.send("POST", "/3/device/" + DEVICE,
                      [("apns-topic", TOPIC), ("authorization", "bearer " + tok),
                       ("x-standin-action", "goaway")], b'{"aps":{}}')
        self.assertEqual(c.wait(ok)["status"], 200)
        self.assertEqual(c.goaway, ok)
        self.assertIsNone(c.wait(gone)["status"])
        c.close()

    def test_http11_refused(self):
        ctx = ssl.create_default_context(cafile=h.get_certs()["ca_cert"])
        ctx.set_alpn_protocols(["http/1.1"])
        raw = socket.create_connection(("127.0.0.1", self.up.port), timeout=10)
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            s = ctx.wrap_socket(raw, server_hostname="api.push.apple.com")
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            if not s.recv(100):
                raise ConnectionError("closed")
        raw.close()


if __name__ == "__main__":
    unittest.main()
