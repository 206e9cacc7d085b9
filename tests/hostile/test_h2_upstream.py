"""A hostile HTTP/2 upstream: bad frames, huge and endless header blocks, flow-control abuse,
pushes nobody asked for, answers on streams nobody opened, a connection cut mid-answer.

Each case is one scripted TLS HTTP/2 server (raw frames, hyperframe and hpack from python3-h2)
behind its own h2 route. For every case the client gets the proxy's own 502 (or a response cut
short, never a complete-looking one), and the proxy then still serves a good push through the
APNs stand-in. Run under ASan by CI like every hostile test: the harness fails the run on any
sanitizer report in the proxy's stderr.
"""
import json
import os
import socket
import ssl
import struct
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile import h  # noqa: E402

import hpack  # noqa: E402
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame,  # noqa: E402
                              HeadersFrame, PushPromiseFrame, SettingsFrame,
                              WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEVICE = "c" * 64


def frame_bytes(f):
    return f.serialize()


class RawH2Upstream:
    """Accepts TLS (ALPN h2), reads the client's preface and first request, then runs the
    script: a function (sock, stream_id, encoder) that sends whatever it likes."""

    def __init__(self, script):
        c = h.get_certs()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(c["good_cert"], c["good_key"])
        self.ctx.set_alpn_protocols(["h2"])
        self.script = script
        self.scripted = threading.Event()  # set once a script has sent everything (or failed)
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.address = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.conns = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                raw, _ = self.lsock.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    @staticmethod
    def _read_frame(s, buf):
        while len(buf) < 9:
            d = s.recv(65536)
            if not d:
                raise EOFError
            buf += d
        f, length = Frame.parse_frame_header(memoryview(buf[:9]))
        while len(buf) < 9 + length:
            d = s.recv(65536)
            if not d:
                raise EOFError
            buf += d
        f.parse_body(memoryview(buf[9:9 + length]))
        return f, buf[9 + length:]

    def _serve(self, raw):
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
            buf = b""
            while len(buf) < len(PREFACE):
                buf += s.recv(65536)
            buf = buf[len(PREFACE):]
            s.sendall(frame_bytes(SettingsFrame(0)))
            sid = None
            while sid is None:
                f, buf = self._read_frame(s, buf)
                if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                    s.sendall(frame_bytes(SettingsFrame(0, flags=["ACK"])))
                if isinstance(f, (HeadersFrame, DataFrame)) and "END_STREAM" in f.flags:
                    sid = f.stream_id
            self.script(s, sid, hpack.Encoder())
            self.scripted.set()
            # Keep reading until the proxy goes away.
            while s.recv(65536):
                pass
        except (OSError, EOFError, ssl.SSLError):
            pass
        finally:
            self.scripted.set()
            try:
                raw.close()
            except OSError:
                pass


def headers(enc, sid, fields, end_stream=False, end_headers=True):
    f = HeadersFrame(sid)
    f.data = enc.encode(fields)
    f.flags = set()
    if end_stream:
        f.flags.add("END_STREAM")
    if end_headers:
        f.flags.add("END_HEADERS")
    return frame_bytes(f)


def data(sid, payload, end_stream=False):
    f = DataFrame(sid)
    f.data = payload
    if end_stream:
        f.flags.add("END_STREAM")
    return frame_bytes(f)


# ---- the scripts -------------------------------------------------------------------------------

def garbage_frames(s, sid, enc):
    s.sendall(b"\x00\x00\x05\xee\xff\x00\x00\x00\x01hello" + b"\xff" * 64)


def bad_frame_length(s, sid, enc):
    # A SETTINGS frame whose length is not a multiple of 6: FRAME_SIZE_ERROR.
    s.sendall(b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5)


def tcp_send_buffer_max():
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


# The proxy reopens a stream's window as it passes DATA on to its client, so DATA sent without
# waiting for WINDOW_UPDATE is abuse only once the proxy can pass nothing more on: its client
# reads nothing until all of it has been sent (HOLD_CLIENT), and this is more than the kernel's
# largest send buffer towards that client plus the proxy's own buffers (under 1 MiB) can hold.
ABUSE_CHUNK = 16384
ABUSE_BYTES = (tcp_send_buffer_max() + (2 << 20)) // ABUSE_CHUNK * ABUSE_CHUNK


def flow_control_abuse(s, sid, enc):
    # DATA far past the stream's window (256 KiB) without waiting for WINDOW_UPDATE.
    s.sendall(headers(enc, sid, [(":status", "200"), ("content-length", str(ABUSE_BYTES))]))
    chunk = b"x" * ABUSE_CHUNK
    for _ in range(ABUSE_BYTES // ABUSE_CHUNK):
        s.sendall(data(sid, chunk))


def endless_continuation(s, sid, enc):
    # A header block that never ends: thousands of CONTINUATION frames (the 2024 flood).
    first = HeadersFrame(sid)
    first.data = enc.encode([(":status", "200")])
    s.sendall(frame_bytes(first))
    block = enc.encode([("x-filler", "v" * 200)])
    for _ in range(4000):
        c = ContinuationFrame(sid)
        c.data = block
        s.sendall(frame_bytes(c))


# Encoded once, before any request: pure-Python HPACK takes over a second for 100 kB (many
# under load), and a script that encodes it while the proxy waits races the proxy's
# upstream_response_timeout (a 504) instead of testing the size limit (a 502). Nothing is added
# to the dynamic table (the value is larger than the table), so these are the bytes any fresh
# encoder would write on the connection.
HUGE_BLOCK = hpack.Encoder().encode([(":status", "200"), ("x-big", "v" * 100000)])


def huge_header_value(s, sid, enc):
    f = HeadersFrame(sid)
    f.data = HUGE_BLOCK
    f.flags = {"END_STREAM", "END_HEADERS"}
    s.sendall(frame_bytes(f))


def continued(sid, block):
    """A header block cut into frames the proxy's default SETTINGS_MAX_FRAME_SIZE allows: the
    size limits apply to the decoded block, not only to one oversized frame."""
    out, step = b"", 16000
    for i in range(0, len(block), step):
        f = HeadersFrame(sid) if i == 0 else ContinuationFrame(sid)
        f.data = block[i:i + step]
        f.flags = set()
        if i == 0:
            f.flags.add("END_STREAM")
        if i + step >= len(block):
            f.flags.add("END_HEADERS")
        out += frame_bytes(f)
    return out


# One 100 kB field (over HPACK's own limit on a field), and 120 fields of 1 kB (a list over the
# proxy's 64 KiB head limit), each in legal frame sizes; without Huffman coding, so that they are
# quick to build.
HUGE_FIELD_BLOCK = hpack.Encoder().encode([(":status", "200"), ("x-big", "v" * 100000)],
                                          huffman=False)
LONG_LIST_BLOCK = hpack.Encoder().encode(
    [(":status", "200")] + [("x-f%d" % i, "w" * 1000) for i in range(120)], huffman=False)


def huge_field_in_continuations(s, sid, enc):
    s.sendall(continued(sid, HUGE_FIELD_BLOCK))


def header_list_over_the_limit(s, sid, enc):
    s.sendall(continued(sid, LONG_LIST_BLOCK))


def unrequested_push(s, sid, enc):
    p = PushPromiseFrame(sid)
    p.promised_stream_id = 2
    p.data = enc.encode([(":method", "GET"), (":path", "/x"), (":scheme", "https"),
                         (":authority", "api.push.apple.com")])
    p.flags.add("END_HEADERS")
    s.sendall(frame_bytes(p))


def wrong_stream(s, sid, enc):
    s.sendall(headers(enc, sid + 98, [(":status", "200")], end_stream=True))


def cut_mid_body(s, sid, enc):
    s.sendall(headers(enc, sid, [(":status", "200"), ("content-length", "1000")]))
    s.sendall(data(sid, b"y" * 100))
    s.shutdown(socket.SHUT_RDWR)


def connection_level_window_abuse(s, sid, enc):
    # A WINDOW_UPDATE that overflows the proxy's send window: FLOW_CONTROL_ERROR.
    w = WindowUpdateFrame(0)
    w.window_increment = 0x7fffffff
    s.sendall(frame_bytes(w) * 2)
    s.sendall(headers(enc, sid, [(":status", "200")], end_stream=True))


def goaway_error(s, sid, enc):
    g = GoAwayFrame(0)
    g.last_stream_id = sid
    g.error_code = 2
    s.sendall(frame_bytes(g))


def no_status(s, sid, enc):
    s.sendall(headers(enc, sid, [("content-type", "application/json")], end_stream=True))


def status_600(s, sid, enc):
    s.sendall(headers(enc, sid, [(":status", "600")], end_stream=True))


def status_099(s, sid, enc):
    s.sendall(headers(enc, sid, [(":status", "099"), ("content-length", "0")], end_stream=True))


def uppercase_header(s, sid, enc):
    s.sendall(headers(enc, sid, [(":status", "200"), ("X-Upper", "1")], end_stream=True))


CASES = {
    "garbage_frames": (garbage_frames, 502),
    "bad_frame_length": (bad_frame_length, 502),
    "endless_continuation": (endless_continuation, 502),
    "huge_header_value": (huge_header_value, 502),
    "huge_field_in_continuations": (huge_field_in_continuations, 502),
    "header_list_over_the_limit": (header_list_over_the_limit, 502),
    "unrequested_push": (unrequested_push, 502),
    "wrong_stream": (wrong_stream, 502),
    "connection_level_window_abuse": (connection_level_window_abuse, 502),
    "goaway_error": (goaway_error, 502),
    "no_status": (no_status, 502),
    "uppercase_header": (uppercase_header, 502),
    "status_600": (status_600, 502),
    "status_099": (status_099, 502),
    "flow_control_abuse": (flow_control_abuse, "cut"),
    "cut_mid_body": (cut_mid_body, "cut"),
}
# Cases whose client reads nothing until the upstream's script has sent everything, with a small
# receive buffer: a client that keeps reading lets the proxy reopen the stream's window as fast
# as DATA arrives, and then the DATA is a legal, complete answer rather than flow-control abuse.
HOLD_CLIENT = {"flow_control_abuse"}
CLIENT_RCVBUF = 4096


class HostileH2UpstreamTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.key = h.make_key()
        cls.good = h.Standin(script=h.STANDIN_APNS)
        cls.ups = {name: RawH2Upstream(script) for name, (script, _) in CASES.items()}
        cred = h.credential("apns", cls.key, team_id=h.random_team_id())
        routes = [h.route(up.address, "https://api.push.apple.com", "push",
                          path_prefix="/%s/3/device/" % name, strip_prefix="/%s" % name)
                  for name, up in cls.ups.items()]
        routes.append(h.route(cls.good, "https://api.push.apple.com", "push",
                              path_prefix="/3/device/"))
        cfg = h.write_config({"push": cred}, routes,
                             limits={"upstream_response_timeout": 5, "send_timeout": 5})
        cls.proxy = h.start_proxy(cfg)

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()
        cls.good.stop()

    def push(self, prefix="", hold=None):
        """hold: an Event to wait for (20 s at most) between sending and reading."""
        with h.HttpClient(self.proxy.port, timeout=20) as c:
            if hold is not None:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
            c.send(("POST %s/3/device/%s HTTP/1.1\r\nHost: localhost\r\napns-topic: com.example.app\r\n"
                    "Content-Length: 10\r\n\r\n{\"aps\":{}}" % (prefix, DEVICE)).encode())
            if hold is not None:
                hold.wait(20)
            try:
                r = c.read_response("POST")
            except Exception as e:  # a cut response: the client sees the connection end
                return "cut", repr(e)
            return r.status, r

    def check_alive(self):
        status, r = self.push()
        self.assertEqual(status, 200, r)

    def test_cases(self):
        for name, (_, want) in CASES.items():
            with self.subTest(case=name):
                hold = self.ups[name].scripted if name in HOLD_CLIENT else None
                status, r = self.push("/" + name, hold)
                if want == "cut":
                    if status != "cut":
                        # A head may have gone out; the body must not look complete.
                        self.assertNotEqual(len(r.body), int(r.header("content-length") or -1))
                else:
                    self.assertEqual(status, want, r)
                    err = json.loads(r.body)["errors"][0]
                    self.assertEqual(err["status"], "502")
                    self.assertTrue(err["code"].startswith("PROXY_"), err)
                self.check_alive()


if __name__ == "__main__":
    unittest.main()
