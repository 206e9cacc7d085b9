#!/usr/bin/python3
"""standin_apns: an HTTP/2 TLS stand-in for the Apple Push Notification service.

Run by the tests on 127.0.0.1 (never anything else):

    /usr/bin/python3 tests/upstream/standin_apns.py --cert C --key K --keys-dir DIR \
        [--host 127.0.0.1] [--port 0] [--port-file FILE] [--log FILE] \
        [--max-streams N] [--sandbox]

It speaks only HTTP/2 (ALPN "h2"; a client that does not offer it fails the handshake, as with
APNs) and checks provider tokens as APNs documents them ("Establishing a token-based connection
to APNs"), with PyJWT and the public keys in --keys-dir (<KEYID>.pem, read on demand):

  - authorization "bearer <jwt>"; header exactly {"alg": "ES256", "kid"}, claims exactly
    {"iss", "iat"}; the signature verified with the key named by kid. Missing: 403
    MissingProviderToken; anything else wrong: 403 InvalidProviderToken.
  - iat more than an hour old: 403 ExpiredProviderToken.
  - per connection: a token other than the connection's current one, less than 20 minutes after
    the connection's current token was first used: 429 TooManyProviderTokenUpdates. A token of
    another team than the connection's: 403 InvalidProviderToken.
  - POST /3/device/<64 hex>, apns-topic present, body a JSON object of at most 4096 bytes
    (BadDeviceToken, MissingTopic, PayloadEmpty, PayloadTooLarge, BadPath, MethodNotAllowed,
    BadPriority, BadPushType, BadExpirationDate: each 400/404/405/413 as APNs answers).

Answers in APNs' shape: 200 with apns-id (the request's, else a new UUID) and, with --sandbox,
apns-unique-id; errors with apns-id and a JSON body {"reason": "..."}.

Commands (tests drive misbehaviour with a request header; the stream carrying it is affected):
  x-standin-action: goaway        GOAWAY with last-stream-id one below this stream's id, after
                                  which this stream and every later one are left unprocessed
  x-standin-action: goaway-after  answer this stream, then GOAWAY naming it as the last one
  x-standin-action: rst           RST_STREAM (INTERNAL_ERROR) instead of an answer
  x-standin-action: delay=S       answer after S seconds (other streams go on meanwhile)
  x-standin-action: refuse=N:R    answer status N with reason R after the token check (APNs'
                                  answers that cannot be provoked in a test's time, such as
                                  429 TooManyProviderTokenUpdates from another sender's token)
  x-standin-action: headers=N     answer 200 with N extra header fields (a huge head)
  x-standin-action: drop=S        leave this stream unanswered and, S seconds later, close the
                                  TCP connection without GOAWAY (a peer that died)
  x-standin-action: freeze-after  answer this stream, then read nothing more on the connection
                                  (a dead peer behind a live socket: PINGs go unanswered)
  x-standin-clock: N              this connection's clock runs N seconds ahead from now on (the
                                  20-minute and one-hour rules without waiting)
  GET /__stats                    JSON: connections, pushes, per apns-id counts (duplicates)

Log (--log): one JSON object per line (event: accept, handshake, tls_error, push, answer,
goaway, rst, ping, conn_close).
"""
import argparse
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import uuid

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import jwt
from cryptography.hazmat.primitives import serialization

MAX_PAYLOAD = 4096
TOKEN_MAX_AGE = 3600
TOKEN_MIN_INTERVAL = 1200
DEVICE_RE = re.compile(r"^/3/device/([0-9a-fA-F]{64})$")
PUSH_TYPES = {"alert", "background", "location", "voip", "complication", "fileprovider", "mdm",
              "liveactivity", "pushtotalk"}
READ_SIZE = 65536


class EventLog:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.f = open(path, "a", buffering=1) if path else None

    def __call__(self, event, **fields):
        if self.f is None:
            return
        fields["event"] = event
        fields["t"] = round(time.time(), 3)
        with self.lock:
            self.f.write(json.dumps(fields, sort_keys=True) + "\n")


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.connections = 0
        self.pushes = 0
        self.ids = {}

    def push(self, apns_id):
        with self.lock:
            self.pushes += 1
            self.ids[apns_id] = self.ids.get(apns_id, 0) + 1

    def snapshot(self):
        with self.lock:
            return {"connections": self.connections, "pushes": self.pushes,
                    "duplicates": sorted(k for k, v in self.ids.items() if v > 1)}


class TokenRefused(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Verifier:
    """APNs' provider-token rules; one instance per connection (the 20-minute rule is per
    connection, as APNs applies it)."""

    def __init__(self, keys_dir):
        self.keys_dir = keys_dir
        self.current = None      # the connection's token
        self.since = None        # when it became the connection's token (connection clock)
        self.team = None

    def public_key(self, kid):
        if not re.match(r"^[A-Z0-9]{10}$", kid or ""):
            return None
        try:
            with open(os.path.join(self.keys_dir, kid + ".pem"), "rb") as f:
                return serialization.load_pem_public_key(f.read())
        except OSError:
            return None

    def check(self, authorization, now):
        if authorization is None:
            raise TokenRefused(403, "MissingProviderToken")
        parts = authorization.split(" ", 1)
        if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1]:
            raise TokenRefused(403, "InvalidProviderToken")
        token = parts[1]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused(403, "InvalidProviderToken")
        if set(header) != {"alg", "kid"} or header.get("alg") != "ES256":
            raise TokenRefused(403, "InvalidProviderToken")
        key = self.public_key(header.get("kid"))
        if key is None:
            raise TokenRefused(403, "InvalidProviderToken")
        try:
            claims = jwt.decode(token, key, algorithms=["ES256"],
                                options={"verify_exp": False, "verify_iat": False,
                                         "verify_aud": False})
        except jwt.PyJWTError:
            raise TokenRefused(403, "InvalidProviderToken")
        if (set(claims) != {"iss", "iat"} or not isinstance(claims["iat"], int)
                or not re.match(r"^[A-Z0-9]{10}$", str(claims["iss"]))):
            raise TokenRefused(403, "InvalidProviderToken")
        if self.team is not None and claims["iss"] != self.team:
            raise TokenRefused(403, "InvalidProviderToken")
        if now - claims["iat"] > TOKEN_MAX_AGE:
            raise TokenRefused(403, "ExpiredProviderToken")
        if claims["iat"] > now + 60:
            raise TokenRefused(403, "InvalidProviderToken")
        if token != self.current:
            if self.current is not None and now - self.since < TOKEN_MIN_INTERVAL:
                raise TokenRefused(429, "TooManyProviderTokenUpdates")
            self.current, self.since, self.team = token, now, claims["iss"]
        return claims


class StandIn:
    def __init__(self, args):
        self.args = args
        self.log = EventLog(args.log)
        self.stats = Stats()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.load_cert_chain(args.cert, args.key)
        self.ctx.set_alpn_protocols(["h2"])
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((args.host, args.port))
        self.sock.listen(256)
        self.conn_ids = 0

    def serve(self):
        port = self.sock.getsockname()[1]
        if self.args.port_file:
            tmp = self.args.port_file + ".tmp"
            with open(tmp, "w") as f:
                f.write("%d\n" % port)
            os.rename(tmp, self.args.port_file)
        print("standin_apns: listening on %s:%d" % (self.args.host, port), flush=True)
        while True:
            raw, addr = self.sock.accept()
            self.conn_ids += 1
            with self.stats.lock:
                self.stats.connections += 1
            threading.Thread(target=Connection(self, raw, self.conn_ids).run, daemon=True).start()


class Connection:
    def __init__(self, server, raw, cid):
        self.server = server
        self.raw = raw
        self.cid = cid
        self.log = server.log
        self.verifier = Verifier(server.args.keys_dir)
        self.clock_offset = 0
        self.lock = threading.Lock()     # the h2 state and the socket (delayed answers)
        self.streams = {}                # stream id -> {"headers": dict, "body": bytearray}
        self.closed = False
        self.frozen = False
        self.refused_from = None         # after a GOAWAY: streams from this id are ignored

    def now(self):
        return int(time.time()) + self.clock_offset

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.tls.sendall(data)

    def run(self):
        self.log("accept", conn=self.cid)
        try:
            self.tls = self.server.ctx.wrap_socket(self.raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.log("tls_error", conn=self.cid, error=str(e))
            self.raw.close()
            return
        self.log("handshake", conn=self.cid, alpn=self.tls.selected_alpn_protocol())
        if self.tls.selected_alpn_protocol() != "h2":
            self.tls.close()
            return
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                        validate_inbound_headers=True)
        self.h2 = h2.connection.H2Connection(config=cfg)
        try:
            with self.lock:
                self.h2.initiate_connection()
                self.h2.update_settings({
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS:
                        self.server.args.max_streams})
                self.flush()
            while not self.closed:
                data = self.tls.recv(READ_SIZE)
                if not data:
                    break
                with self.lock:
                    try:
                        events = self.h2.receive_data(data)
                    except h2.exceptions.ProtocolError as e:
                        self.log("protocol_error", conn=self.cid, error=str(e))
                        self.flush()
                        break
                    for ev in events:
                        self.on_event(ev)
                    self.flush()
                while self.frozen and not self.closed:
                    time.sleep(1)
        except (OSError, ssl.SSLError) as e:
            self.log("conn_error", conn=self.cid, error=str(e))
        finally:
            self.closed = True
            self.log("conn_close", conn=self.cid)
            try:
                self.tls.close()
            except OSError:
                pass

    def on_event(self, ev):
        if isinstance(ev, h2.events.RequestReceived):
            self.streams[ev.stream_id] = {"headers": dict(ev.headers), "body": bytearray()}
            if ev.stream_ended:
                self.on_request(ev.stream_id)
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if st is not None:
                st["body"] += ev.data
                if len(st["body"]) > MAX_PAYLOAD * 4:
                    self.answer(ev.stream_id, 413, "PayloadTooLarge", st["headers"])
                    self.streams.pop(ev.stream_id, None)
        elif isinstance(ev, h2.events.StreamEnded):
            if ev.stream_id in self.streams:
                self.on_request(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            self.streams.pop(ev.stream_id, None)
        elif isinstance(ev, h2.events.PingReceived):
            self.log("ping", conn=self.cid)

    def answer(self, sid, status, reason, headers, extra=(), timestamp=None):
        apns_id = headers.get("apns-id") or str(uuid.uuid4()).upper()
        out = [(":status", str(status)), ("apns-id", apns_id)]
        if self.server.args.sandbox:
            out.append(("apns-unique-id", str(uuid.uuid4())))
        out.extend(extra)
        body = b""
        if reason is not None:
            doc = {"reason": reason}
            if timestamp is not None:
                doc["timestamp"] = timestamp
            body = json.dumps(doc).encode()
            out.append(("content-type", "application/json"))
            out.append(("content-length", str(len(body))))
        try:
            self.h2.send_headers(sid, out, end_stream=not body)
            if body:
                self.h2.send_data(sid, body, end_stream=True)
        except h2.exceptions.H2Error as e:
            self.log("answer_error", conn=self.cid, stream=sid, error=str(e))
            return
        self.log("answer", conn=self.cid, stream=sid, status=status, reason=reason,
                 apns_id=apns_id)

    def on_request(self, sid):
        st = self.streams.pop(sid)
        hd = st["headers"]
        if self.refused_from is not None and sid >= self.refused_from:
            self.log("ignored", conn=self.cid, stream=sid)
            return
        action = hd.get("x-standin-action", "")
        if "x-standin-clock" in hd:
            self.clock_offset = int(hd["x-standin-clock"])
        if hd.get(":method") == "GET" and hd.get(":path") == "/__stats":
            body = json.dumps(self.server.stats.snapshot()).encode()
            self.h2.send_headers(sid, [(":status", "200"), ("content-length", str(len(body)))])
            self.h2.send_data(sid, body, end_stream=True)
            return
        if action == "goaway":
            self.send_goaway(sid - 2 if sid > 2 else 0)
            return
        if action == "rst":
            self.h2.reset_stream(sid, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.log("rst", conn=self.cid, stream=sid)
            return
        if action.startswith("headers="):
            n = int(action.split("=", 1)[1])
            extra = [("x-filler-%d" % i, "v" * 100) for i in range(n)]
            try:
                self.h2.send_headers(sid, [(":status", "200")] + extra, end_stream=True)
            except h2.exceptions.H2Error as e:
                self.log("answer_error", conn=self.cid, stream=sid, error=str(e))
            return
        if action.startswith("drop="):
            threading.Timer(float(action.split("=", 1)[1]), self.drop).start()
            return
        if action.startswith("delay="):
            delay = float(action.split("=", 1)[1])
            threading.Timer(delay, self.delayed, args=(sid, hd, bytes(st["body"]))).start()
            return
        self.process(sid, hd, bytes(st["body"]))
        if action == "goaway-after":
            self.send_goaway(sid)
        if action == "freeze-after":
            self.log("freeze", conn=self.cid)
            self.frozen = True

    def send_goaway(self, last):
        """A graceful GOAWAY: streams up to `last` still get their answers (h2's own
        close_connection would stop the connection from answering them), later ones never."""
        self.refused_from = last + 2
        self.flush()
        frame = hyperframe.frame.GoAwayFrame(0)
        frame.last_stream_id = last
        frame.error_code = h2.errors.ErrorCodes.NO_ERROR
        self.tls.sendall(frame.serialize())
        self.log("goaway", conn=self.cid, last_stream_id=last)

    def drop(self):
        with self.lock:
            if self.closed:
                return
            self.log("drop", conn=self.cid)
            self.closed = True
            try:
                self.tls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def delayed(self, sid, hd, body):
        with self.lock:
            if self.closed:
                return
            self.process(sid, hd, body)
            try:
                self.flush()
            except OSError:
                pass

    def process(self, sid, hd, body):
        path = hd.get(":path", "")
        m = DEVICE_RE.match(path)
        if not path.startswith("/3/device/"):
            return self.answer(sid, 404, "BadPath", hd)
        if hd.get(":method") != "POST":
            return self.answer(sid, 405, "MethodNotAllowed", hd)
        try:
            claims = self.verifier.check(hd.get("authorization"), self.now())
        except TokenRefused as e:
            return self.answer(sid, e.status, e.reason, hd)
        action = hd.get("x-standin-action", "")
        if action.startswith("refuse="):
            status, reason = action.split("=", 1)[1].split(":", 1)
            return self.answer(sid, int(status), reason, hd)
        if m is None:
            return self.answer(sid, 400, "BadDeviceToken", hd)
        if "apns-topic" not in hd:
            return self.answer(sid, 400, "MissingTopic", hd)
        if hd.get("apns-push-type", "alert") not in PUSH_TYPES:
            return self.answer(sid, 400, "InvalidPushType", hd)
        if hd.get("apns-priority", "10") not in ("5", "10", "1"):
            return self.answer(sid, 400, "BadPriority", hd)
        if not hd.get("apns-expiration", "0").isdigit():
            return self.answer(sid, 400, "BadExpirationDate", hd)
        if len(body) > MAX_PAYLOAD:
            return self.answer(sid, 413, "PayloadTooLarge", hd)
        if not body:
            return self.answer(sid, 400, "PayloadEmpty", hd)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return self.answer(sid, 400, "BadPayload", hd)
        if m.group(1).lower().startswith("dead"):
            # APNs says since when the device token has been invalid (ms since the epoch).
            return self.answer(sid, 410, "Unregistered", hd,
                               timestamp=int(time.time() * 1000) - 86400000)
        apns_id = hd.get("apns-id") or ""
        self.server.stats.push(apns_id)
        self.log("push", conn=self.cid, stream=sid, device=m.group(1), apns_id=apns_id,
                 team=claims["iss"], iat=claims["iat"], topic=hd.get("apns-topic"),
                 push_type=hd.get("apns-push-type"), payload=payload)
        return self.answer(sid, 200, None, hd)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--keys-dir", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--log")
    ap.add_argument("--max-streams", type=int, default=1000)
    ap.add_argument("--sandbox", action="store_true")
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        ap.error("the stand-in listens on loopback only")
    StandIn(args).serve()


if __name__ == "__main__":
    sys.exit(main())
