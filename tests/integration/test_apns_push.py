"""Pushes through the proxy: HTTP/1.1 in front, HTTP/2 to the APNs stand-in behind.

The stand-in (tests/upstream/standin_apns.py) verifies every token as APNs does and counts
connections and pushes by apns-id, so "nothing lost or duplicated" and "one upstream connection"
are read from its side, not assumed.
"""
import concurrent.futures
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

DEVICE = "b" * 64
PAYLOAD = b'{"aps":{"alert":{"title":"Hello","body":"from the proxy"}}}'


def wait_until(pred, timeout):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in %ss" % timeout)
        time.sleep(0.05)


def push_headers(**extra):
    hd = {"apns-topic": "com.example.app", "apns-push-type": "alert", "apns-priority": "10",
          "Content-Type": "application/json"}
    hd.update(extra)
    return hd


class ApnsPushTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.key = h.make_key()
        cls.team = h.random_team_id()
        cls.up = h.Standin(script=h.STANDIN_APNS, args=["--sandbox", "--max-streams", "200"])
        cred = h.credential("apns", cls.key, team_id=cls.team)
        route = h.route(cls.up, "https://api.push.apple.com", "push", path_prefix="/3/device/")
        cfg = h.write_config({"push": cred}, [route], workers=1, admin_listen="127.0.0.1:0",
                             limits={"upstream_response_timeout": 2})
        cls.proxy = h.start_proxy(cfg)

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()
        cls.up.stop()

    def stats(self):
        """The stand-in's counts, asked over HTTP/2 directly."""
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_apns_standin import H2Client
        c = H2Client(self.up.port)
        sid = c.send("GET", "/__stats")
        st = c.wait(sid)
        c.close()
        return json.loads(st["body"])

    def push(self, device=DEVICE, body=PAYLOAD, port=None, **extra):
        return h.request(port or self.proxy.port, "POST", "/3/device/" + device,
                         push_headers(**extra), body, timeout=30)

    def test_push_passes_through_unchanged(self):
        apns_id = str(uuid.uuid4()).upper()
        mark = self.up.mark()
        status, headers, body = self.push(**{"apns-id": apns_id, "apns-expiration": "0",
                                             "apns-collapse-id": "greeting"})
        hd = dict((k.lower(), v) for k, v in headers)
        self.assertEqual(status, 200, body)
        self.assertEqual(hd["apns-id"], apns_id)
        self.assertIn("apns-unique-id", hd)
        self.assertEqual(hd["content-length"], "0")
        ev = self.up.wait_for(lambda e: e.get("apns_id") == apns_id, kind="push", since=mark)
        self.assertEqual(ev["team"], self.team)
        self.assertEqual(ev["topic"], "com.example.app")
        self.assertEqual(ev["push_type"], "alert")
        self.assertEqual(ev["payload"], json.loads(PAYLOAD))
        # The access log names the push by its apns-id.
        lines = pt.access_log(self.proxy, n=1, pred=lambda l: l.get("apns_id") == apns_id)
        line = [l for l in lines if l.get("apns_id") == apns_id][0]
        self.assertEqual((line["status"], line["credential"], line["method"]),
                         (200, "push", "POST"))
        # An error answer comes back as APNs gave it: status, apns-id and the JSON reason.
        status, headers, body = self.push(device="zz")
        hd = dict((k.lower(), v) for k, v in headers)
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body), {"reason": "BadDeviceToken"})
        self.assertIn("apns-id", hd)

    def test_500_pushes_from_50_connections_over_one_upstream_connection(self):
        before = self.stats()
        ids = [str(uuid.uuid4()).upper() for _ in range(500)]
        results = {}
        lock = threading.Lock()

        def client(chunk):
            with h.HttpClient(self.proxy.port, timeout=30) as c:
                for apns_id in chunk:
                    r = c.request("POST", "/3/device/" + DEVICE,
                                  push_headers(**{"apns-id": apns_id}), PAYLOAD)
                    with lock:
                        results[apns_id] = (r.status, dict((k.lower(), v) for k, v in r.headers))

        with concurrent.futures.ThreadPoolExecutor(50) as ex:
            list(ex.map(client, [ids[i::50] for i in range(50)]))
        self.assertEqual(len(results), 500)
        for apns_id, (status, hd) in results.items():
            self.assertEqual(status, 200)
            self.assertEqual(hd["apns-id"], apns_id)  # never another client's answer
        after = self.stats()
        self.assertEqual(after["pushes"] - before["pushes"], 500)
        self.assertEqual(after["duplicates"], [])
        # All over one connection, as the stand-in saw them.
        idset = set(ids)
        conns = {e["conn"] for e in self.up.events("push") if e["apns_id"] in idset}
        self.assertEqual(len(conns), 1)

    def test_goaway_mid_burst_loses_and_duplicates_nothing(self):
        before = self.stats()
        ids = [str(uuid.uuid4()).upper() for _ in range(120)]
        goaway_at = ids[40]
        results = {}
        lock = threading.Lock()

        def one(apns_id):
            extra = {"apns-id": apns_id}
            if apns_id == goaway_at:
                extra["x-standin-action"] = "goaway-after"
            status, headers, body = self.push(**extra)
            with lock:
                results[apns_id] = (status, dict((k.lower(), v) for k, v in headers), body)

        with concurrent.futures.ThreadPoolExecutor(30) as ex:
            list(ex.map(one, ids))
        for apns_id in ids:
            status, hd, body = results[apns_id]
            self.assertEqual(status, 200, body)
            self.assertEqual(hd["apns-id"], apns_id)
        after = self.stats()
        self.assertEqual(after["pushes"] - before["pushes"], 120)
        self.assertEqual(after["duplicates"], [])
        # The GOAWAY'd connection took the first part, a new one the rest.
        idset = set(ids)
        conns = {e["conn"] for e in self.up.events("push") if e["apns_id"] in idset}
        self.assertGreaterEqual(len(conns), 2)
        self.assertTrue(self.up.events("goaway"))
        ignored = len(self.up.events("ignored"))
        self.assertGreater(ignored, 0)
        m = pt.metrics(self.proxy)
        self.assertGreaterEqual(m.value("apple_auth_proxy_http2_retries_total"), ignored)
        self.assertGreaterEqual(m.value("apple_auth_proxy_http2_connections"), 1)

    def test_rst_stream_is_502_and_the_connection_carries_on(self):
        failures = pt.metrics(self.proxy).value("apple_auth_proxy_http2_failures_total")
        status, headers, body = self.push(**{"x-standin-action": "rst"})
        self.assertEqual(status, 502)
        err = json.loads(body)["errors"][0]
        self.assertEqual(err["status"], "502")
        self.assertTrue(err["code"].startswith("PROXY_UPSTREAM"), err)
        self.assertEqual(pt.metrics(self.proxy).value("apple_auth_proxy_http2_failures_total"),
                         failures + 1)
        status, _, _ = self.push()
        self.assertEqual(status, 200)

    def test_stalled_stream_is_504_and_reset(self):
        mark = self.up.mark()
        status, headers, body = self.push(**{"x-standin-action": "delay=5"})
        self.assertEqual(status, 504)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "PROXY_UPSTREAM_TIMEOUT")
        status, _, _ = self.push()
        self.assertEqual(status, 200)
        # The late answer never reaches anyone: its stream was reset.
        time.sleep(0.2)
        self.assertFalse([e for e in self.up.events("answer", since=mark) if e["status"] == 504])

    def test_huge_response_head_is_502(self):
        status, headers, body = self.push(**{"x-standin-action": "headers=400"})
        self.assertEqual(status, 502)
        status, _, _ = self.push()
        self.assertEqual(status, 200)

    def test_token_refusals_keep_a_young_token(self):
        # 429 TooManyProviderTokenUpdates: logged as an error, counted, the token kept.
        mark = self.up.mark()
        status, headers, body = self.push(
            **{"x-standin-action": "refuse=429:TooManyProviderTokenUpdates"})
        self.assertEqual(status, 429)
        self.assertEqual(json.loads(body), {"reason": "TooManyProviderTokenUpdates"})
        wait_until(lambda: "TooManyProviderTokenUpdates, 1 so far" in self.proxy.stderr_text(),
                   timeout=5)
        self.assertEqual(pt.metrics(self.proxy).value(
            "apple_auth_proxy_apns_too_many_token_updates_total"), 1)
        # 403 ExpiredProviderToken on a token under 20 minutes old: passed on, not re-minted.
        status, headers, body = self.push(
            **{"x-standin-action": "refuse=403:ExpiredProviderToken"})
        self.assertEqual(status, 403)
        self.assertEqual(json.loads(body), {"reason": "ExpiredProviderToken"})
        wait_until(lambda: "under 20 minutes old, so it is kept" in self.proxy.stderr_text(),
                     timeout=5)
        status, _, _ = self.push()
        self.assertEqual(status, 200)
        iats = {e["iat"] for e in self.up.events("push", since=mark)}
        self.assertEqual(len(iats), 1)

    def test_request_body_streamed_chunked(self):
        # A chunked request body arrives whole (re-framed as HTTP/2 DATA).
        with h.HttpClient(self.proxy.port, timeout=10) as c:
            r = c.request("POST", "/3/device/" + DEVICE,
                          dict(push_headers(), **{"Transfer-Encoding": "chunked"}),
                          h.chunked_body([PAYLOAD[:10], PAYLOAD[10:]]))
            self.assertEqual(r.status, 200)


    def test_client_reset_right_after_its_push_leaves_no_stray_stream(self):
        # A client that sends a whole push and resets its connection at once: its stream is
        # submitted and then released before nghttp2 has sent the HEADERS (they wait for the
        # connection's next flush). The stream must be cancelled there, not freed under
        # nghttp2, whose body callback would read it (under ASan: a use after free; without:
        # another push's body taken, or a push sent with no body).
        mark = self.up.mark()
        reset_ids, good = [], {}
        lock = threading.Lock()

        def reset_one(apns_id):
            body = json.dumps({"aps": {"alert": "reset"}, "n": apns_id}).encode()
            head = ("POST /3/device/%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                    "apns-topic: com.example.app\r\napns-push-type: alert\r\n"
                    "apns-id: %s\r\nContent-Type: application/json\r\n"
                    "Content-Length: %d\r\n\r\n" % (DEVICE, self.proxy.port, apns_id,
                                                        len(body))).encode()
            s = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(head + body)
            s.close()  # RST: the request and the reset arrive together

        def good_one(apns_id):
            body = json.dumps({"aps": {"alert": "kept"}, "n": apns_id}).encode()
            status, headers, _ = self.push(body=body, **{"apns-id": apns_id})
            with lock:
                good[apns_id] = status

        with concurrent.futures.ThreadPoolExecutor(20) as ex:
            futs = []
            for i in range(200):
                apns_id = str(uuid.uuid4()).upper()
                if i % 2:
                    reset_ids.append(apns_id)
                    futs.append(ex.submit(reset_one, apns_id))
                else:
                    futs.append(ex.submit(good_one, apns_id))
            for f in futs:
                f.result()
        self.assertEqual(sorted(good.values()), [200] * 100)
        # Every push the stand-in saw carried its own body: none crossed, none went empty.
        time.sleep(0.5)
        seen = {}
        for e in self.up.events("push", since=mark):
            self.assertIsInstance(e["payload"], dict, e)
            self.assertEqual(e["payload"].get("n"), e["apns_id"], e)
            seen[e["apns_id"]] = seen.get(e["apns_id"], 0) + 1
        for apns_id in good:
            self.assertEqual(seen.get(apns_id), 1, apns_id)
        for apns_id in reset_ids:
            self.assertLessEqual(seen.get(apns_id, 0), 1, apns_id)
        self.assertEqual([e for e in self.up.events("answer", since=mark)
                          if e["status"] != 200], [])
        self.assertEqual(self.push()[0], 200)


class QueuedStreamTest(unittest.TestCase):
    """Streams that wait in nghttp2's queue (every connection at the peer's
    SETTINGS_MAX_CONCURRENT_STREAMS, the connection count at its cap): one whose client goes
    is cancelled there, never freed while nghttp2 still holds it; those on a connection that
    dies were never sent and go again."""

    def setUp(self):
        # The stand-in takes one stream per connection: a burst fills the 16 connections the
        # proxy opens per credential and target, and what comes next queues in nghttp2.
        self.up = h.Standin(script=h.STANDIN_APNS, args=["--max-streams", "1"])
        self.addCleanup(self.up.stop)
        route = h.route(self.up, "https://api.push.apple.com", "push", path_prefix="/3/device/")
        cfg = h.write_config({"push": h.credential("apns", h.make_key(),
                                                   team_id=h.random_team_id())},
                             [route], workers=1, admin_listen="127.0.0.1:0",
                             limits={"upstream_response_timeout": 20})
        self.proxy = h.start_proxy(cfg)
        self.addCleanup(self.proxy.stop)

    def push(self, apns_id, action=None):
        """A push whose payload names its apns-id (so a crossed body shows)."""
        body = json.dumps({"aps": {"alert": "hi"}, "n": apns_id}).encode()
        extra = {"apns-id": apns_id}
        if action:
            extra["x-standin-action"] = action
        return h.request(self.proxy.port, "POST", "/3/device/" + DEVICE, push_headers(**extra),
                         body, timeout=30)

    def test_client_gone_while_its_stream_is_queued(self):
        # Once the peer's SETTINGS are known, 16 connections (the cap per credential and
        # target) with one slow push on each.
        first = str(uuid.uuid4()).upper()
        self.assertEqual(self.push(first)[0], 200)
        slow = [str(uuid.uuid4()).upper() for _ in range(16)]
        ex = concurrent.futures.ThreadPoolExecutor(16)
        futs = [ex.submit(self.push, i, "delay=4") for i in slow]
        wait_until(lambda: len(self.up.events("handshake")) >= 16, timeout=15)
        time.sleep(0.5)  # each has its slow push in flight
        # Pushes now queue in nghttp2. These clients send theirs and reset at once.
        gone = [str(uuid.uuid4()).upper() for _ in range(8)]
        for apns_id in gone:
            body = json.dumps({"aps": {"alert": "gone"}, "n": apns_id}).encode()
            head = ("POST /3/device/%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                    "apns-topic: com.example.app\r\napns-id: %s\r\n"
                    "Content-Length: %d\r\n\r\n" % (DEVICE, self.proxy.port, apns_id,
                                                        len(body))).encode()
            s = socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10)
            s.sendall(head + body)
            time.sleep(0.1)  # read and queued before the reset arrives
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        # And these wait in the queue with their clients: each gets its own answer.
        kept = [str(uuid.uuid4()).upper() for _ in range(4)]
        kf = [ex.submit(self.push, i) for i in kept]
        for f in futs + kf:
            self.assertEqual(f.result()[0], 200)
        ex.shutdown()
        for f, apns_id in zip(kf, kept):
            hd = dict((k.lower(), v) for k, v in f.result()[1])
            self.assertEqual(hd["apns-id"], apns_id)
        time.sleep(0.5)
        pushed = self.up.events("push")
        for e in pushed:
            self.assertEqual(e["payload"].get("n"), e["apns_id"], e)
        ids = [e["apns_id"] for e in pushed]
        # The cancelled ones never went out; every other push went exactly once.
        self.assertEqual([i for i in ids if i in gone], [])
        self.assertEqual(sorted(ids), sorted([first] + slow + kept))
        self.assertEqual([e for e in self.up.events("answer") if e["status"] != 200], [])
        self.assertEqual(self.push(str(uuid.uuid4()).upper())[0], 200)

    def test_streams_queued_on_a_lost_connection_go_again(self):
        # Connections at the peer's limit, the pushes behind them queued in nghttp2; then every
        # connection dies without GOAWAY. The queued pushes were never sent: they go again on
        # a new connection and are answered. The ones in flight are lost (502).
        self.assertEqual(self.push(str(uuid.uuid4()).upper())[0], 200)
        ex = concurrent.futures.ThreadPoolExecutor(24)
        dropped = [ex.submit(self.push, str(uuid.uuid4()).upper(), "drop=2") for _ in range(16)]
        wait_until(lambda: len(self.up.events("handshake")) >= 16, timeout=15)
        time.sleep(0.3)
        queued_ids = [str(uuid.uuid4()).upper() for _ in range(4)]
        queued = [ex.submit(self.push, i) for i in queued_ids]
        for f in dropped:
            self.assertEqual(f.result()[0], 502)
        for f, apns_id in zip(queued, queued_ids):
            status, headers, body = f.result()
            self.assertEqual(status, 200, body)
            self.assertEqual(dict((k.lower(), v) for k, v in headers)["apns-id"], apns_id)
        ex.shutdown()
        pushed = [e["apns_id"] for e in self.up.events("push")]
        for apns_id in queued_ids:
            self.assertEqual(pushed.count(apns_id), 1)
        self.assertGreaterEqual(len(self.up.events("drop")), 16)


class IdleConnectionTest(unittest.TestCase):
    """An idle HTTP/2 connection stays open (Apple asks providers to keep them): after 30 s
    without traffic the proxy PINGs it, and the next push goes over the same connection."""

    def test_idle_connection_is_pinged_and_kept(self):
        key = h.make_key()
        up = h.Standin(script=h.STANDIN_APNS)
        cred = h.credential("apns", key, team_id=h.random_team_id())
        route = h.route(up, "https://api.push.apple.com", "push", path_prefix="/3/device/")
        proxy = h.start_proxy(h.write_config({"push": cred}, [route],
                                             limits={"upstream_idle_timeout": 2}))
        try:
            self.assertEqual(h.request(proxy.port, "POST", "/3/device/" + DEVICE,
                                       push_headers(), PAYLOAD)[0], 200)
            first = up.events("push")[0]["conn"]
            up.wait_for(lambda e: e["conn"] == first, kind="ping", timeout=60)
            self.assertEqual(h.request(proxy.port, "POST", "/3/device/" + DEVICE,
                                       push_headers(), PAYLOAD)[0], 200)
            self.assertEqual([e["conn"] for e in up.events("push")], [first, first])
            self.assertEqual(up.events("conn_close"), [])
        finally:
            proxy.stop()
            up.stop()


class DeadConnectionTest(unittest.TestCase):
    """A connection whose peer stops answering (PING unanswered for 10 s after 30 s idle) is
    closed, and the next push opens a new one instead of waiting on the dead one."""

    def test_unanswered_ping_closes_the_connection(self):
        key = h.make_key()
        up = h.Standin(script=h.STANDIN_APNS)
        cred = h.credential("apns", key, team_id=h.random_team_id())
        route = h.route(up, "https://api.push.apple.com", "push", path_prefix="/3/device/")
        proxy = h.start_proxy(h.write_config({"push": cred}, [route]))
        try:
            status = h.request(proxy.port, "POST", "/3/device/" + DEVICE,
                               push_headers(**{"x-standin-action": "freeze-after"}), PAYLOAD)[0]
            self.assertEqual(status, 200)
            first = up.events("push")[0]["conn"]
            wait_until(lambda: "no answer to PING" in proxy.stderr_text() or
                       [e for e in up.events("conn_close") if e["conn"] == first], timeout=70)
            self.assertEqual(h.request(proxy.port, "POST", "/3/device/" + DEVICE,
                                       push_headers(), PAYLOAD)[0], 200)
            conns = [e["conn"] for e in up.events("push")]
            self.assertEqual(len(conns), 2)
            self.assertNotEqual(conns[0], conns[1])
        finally:
            proxy.stop()
            up.stop()


class H2RequiredTest(unittest.TestCase):
    """An h2 route to an upstream that does not select h2 fails the TLS step with 502
    PROXY_UPSTREAM_TLS: the bytes of one protocol are never read as the other."""

    def test_upstream_without_h2_is_refused(self):
        key = h.make_key()
        up = h.start_standin("good")
        cred = h.credential("apns", key, team_id=h.random_team_id())
        route = h.route(up, "https://api.push.apple.com", "push", path_prefix="/3/device/")
        proxy = h.start_proxy(h.write_config({"push": cred}, [route]))
        try:
            status, headers, body = h.request(proxy.port, "POST", "/3/device/" + DEVICE,
                                              push_headers(), PAYLOAD)
            self.assertEqual(status, 502)
            err = json.loads(body)["errors"][0]
            self.assertEqual(err["code"], "PROXY_UPSTREAM_TLS")
            self.assertIn("did not select ALPN protocol h2", proxy.stderr_text() + body.decode())
            self.assertEqual(up.events("request"), [])
        finally:
            proxy.stop()
            up.stop()


class ApnsRecipesTest(unittest.TestCase):
    """The curl commands of docs/recipes.md's push section, as written, through the proxy."""

    def test_recipe_curls(self):
        with open(os.path.join(h.SOURCE_DIR, "docs", "recipes.md")) as f:
            text = f.read()
        section = text.split("## Push notifications", 1)[1].split("\n## ", 1)[0]
        blocks = section.split("```sh\n")[1:]
        script = [b.split("```", 1)[0] for b in blocks if "curl " in b][0]
        commands = [c for c in script.replace("\\\n", " ").splitlines()
                    if c.strip().startswith("curl ")]
        self.assertEqual(len(commands), 3)
        key = h.make_key()
        up = h.Standin(script=h.STANDIN_APNS)
        cred = h.credential("apns", key, team_id=h.random_team_id())
        route = h.route(up, "https://api.push.apple.com", "push", path_prefix="/3/device/")
        proxy = h.start_proxy(h.write_config({"push": cred}, [route]))
        try:
            for cmd in commands:
                cmd = cmd.replace("http://localhost:8080", "http://127.0.0.1:%d" % proxy.port)
                out = subprocess.run(["sh", "-c", cmd], capture_output=True, timeout=30,
                                     env=dict(os.environ, DEVICE="d" * 64)).stdout
                self.assertTrue(out.startswith(b"HTTP/1.1 200"), (cmd, out))
                self.assertIn(b"apns-id: ", out)
            types = [e["push_type"] for e in up.events("push")]
            self.assertEqual(types, ["alert", "background", "liveactivity"])
        finally:
            proxy.stop()
            up.stop()


class ProtocolMetricsTest(unittest.TestCase):
    """/metrics counts HTTP/1.1 and HTTP/2 upstreams apart: requests sent, exchanges failed,
    connections open and requests in flight, each with its protocol label."""

    FAMILIES = ("apple_auth_proxy_upstream_protocol_requests_total",
                "apple_auth_proxy_upstream_protocol_failures_total",
                "apple_auth_proxy_upstream_protocol_connections",
                "apple_auth_proxy_upstream_protocol_streams")

    def test_each_protocol_is_counted_apart(self):
        key = h.make_key()
        apns = h.Standin(script=h.STANDIN_APNS)
        asc = h.Standin()
        creds = {"push": h.credential("apns", key, team_id=h.random_team_id()),
                 "asc": h.credential("app-store-connect", key)}
        routes = [h.route(apns, "https://api.push.apple.com", "push", path_prefix="/3/device/"),
                  h.route(asc, "app-store-connect", "asc", path_prefix="/__")]
        proxy = h.start_proxy(h.write_config(creds, routes, admin_listen="127.0.0.1:0",
                                             limits={"upstream_response_timeout": 2}))

        def get(path):
            return h.request(proxy.port, "GET", path, timeout=30)[0]

        def push(**extra):
            return h.request(proxy.port, "POST", "/3/device/" + DEVICE, push_headers(**extra),
                             PAYLOAD, timeout=30)[0]

        def figures():
            m = pt.metrics(proxy)
            return {(f.rsplit("_", 2)[-2] if f.endswith("_total") else f.rsplit("_", 1)[-1],
                     p): m.value(f, protocol=p)
                    for f in self.FAMILIES for p in ("http/1.1", "h2")}

        try:
            m = pt.metrics(proxy)
            for f in self.FAMILIES:
                self.assertEqual(m.types[f], "counter" if f.endswith("_total") else "gauge")
            self.assertEqual(set(figures().values()), {0})
            for _ in range(3):
                self.assertEqual(push(), 200)
            for _ in range(2):
                self.assertEqual(get("/__echo"), 200)
            f = figures()
            self.assertEqual((f["requests", "h2"], f["requests", "http/1.1"]), (3, 2))
            # One HTTP/2 connection carries the pushes; the HTTP/1.1 one waits in its pool.
            self.assertEqual((f["connections", "h2"], f["connections", "http/1.1"]), (1, 1))
            self.assertEqual((f["streams", "h2"], f["streams", "http/1.1"]), (0, 0))
            self.assertEqual((f["failures", "h2"], f["failures", "http/1.1"]), (0, 0))

            # A slow answer on each: one request in flight on each protocol meanwhile.
            with concurrent.futures.ThreadPoolExecutor(2) as ex:
                slow_push = ex.submit(push, **{"x-standin-action": "delay=1.5"})
                slow_get = ex.submit(get, "/__slow?delay=1.5")
                wait_until(lambda: (lambda f: (f["streams", "h2"], f["streams", "http/1.1"]))(
                    figures()) == (1, 1), timeout=1.4)
                self.assertEqual((slow_push.result(), slow_get.result()), (200, 200))
            f = figures()
            self.assertEqual((f["streams", "h2"], f["streams", "http/1.1"]), (0, 0))

            # A reset stream fails an HTTP/2 exchange; a stalled answer an HTTP/1.1 one.
            self.assertEqual(push(**{"x-standin-action": "rst"}), 502)
            self.assertEqual(get("/__slow?delay=4"), 504)
            f = figures()
            self.assertEqual((f["failures", "h2"], f["failures", "http/1.1"]), (1, 1))
            self.assertEqual((f["requests", "h2"], f["requests", "http/1.1"]), (5, 4))
            self.assertEqual(f["connections", "h2"], 1)
        finally:
            proxy.stop()
            apns.stop()
            asc.stop()


if __name__ == "__main__":
    unittest.main()
