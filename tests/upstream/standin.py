#!/usr/bin/python3
"""standin: a TLS stand-in for Apple's server APIs, verifying every token like Apple does.

Run by the integration tests on 127.0.0.1 (never anything else):

    /usr/bin/python3 tests/upstream/standin.py --cert C --key K --keys-dir DIR \
        [--host 127.0.0.1] [--port 0] [--log FILE] [--port-file FILE] [--rate-remaining N]

It virtual-hosts by the Host header (port stripped) and checks the bearer token by that host's
profile (docs/tokens.md), with PyJWT and the public keys in --keys-dir (files named <KEYID>.pem, read on
demand so tests may add keys while it runs). Hosts it does not know (localhost, 127.0.0.1...)
need no token; a token sent there is still checked (signature and expiry) and logged.

Paths (any host, answered after the token check):
  /__control/revoke?token=JWT|kid=KID   (hosts without a profile only: localhost, 127.0.0.1)
                           refuse that token / every token of that key from now on (401, as
                           for an invalid token); /__control/unrevoke?..., /__control/reset
  /__echo                  200 JSON describing the request (method, path, query, headers, body...)
  /__status/NNN[?h=v...]   status NNN (no body for 1xx/204/304 or HEAD); query parameters
                           become response headers (e.g. ?Location=https://...)
  /__slow?delay=S          sleeps S seconds, then 200 JSON
  /__bytes?n=N[&chunked=1] N bytes of b"0123456789abcdef"... in 64 KiB writes (streamed)
  /__headers?name=value..  200 with those response headers (a Content-Length or
                           Transfer-Encoding among them replaces the stand-in's own framing
                           and the connection closes after the response)
  /__close                 200 with Connection: close, then closes
  plus a few real-looking endpoints per host (ASC /v1/apps, WeatherKit availability/weather,
  StoreKit /inApps/v1/history/TXID; the Maps and Apple Business Manager token exchanges and
  APIs, and DeviceCheck, in standin_exchange.py); everything else 404 with Apple's errors JSON.
To add a behaviour, decorate a handler with @route(pattern, hosts=...) returning a Response.

Log (--log): one JSON object per line, flushed, with "event" one of accept, handshake, tls_error,
bad_request, request, response, conn_close (see the log calls below for the fields).
"""
import argparse
import hashlib
import http
import itertools
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse
import uuid

import jwt
from cryptography.hazmat.primitives import serialization

PATTERN = b"0123456789abcdef"
WRITE_SIZE = 65536
BLOCK = PATTERN * (WRITE_SIZE // len(PATTERN))
ECHO_BODY_MAX = 65536
MAX_LINE = 65536
MAX_HEADERS = 256
MAX_HEAD = 1 << 20

ASC_HOST = "api.appstoreconnect.apple.com"
ENTERPRISE_HOST = "api.enterprise.developer.apple.com"
WEATHERKIT_HOST = "weatherkit.apple.com"
STOREKIT_HOST = "api.storekit.itunes.apple.com"
STOREKIT_SANDBOX_HOST = "api.storekit-sandbox.itunes.apple.com"
MUSIC_HOST = "api.music.apple.com"

ASC_401_DETAIL = ("Provide a properly configured and signed bearer token, and make sure that it "
                  "has not expired. Learn more about Generating Tokens for API Requests "
                  "https://developer.apple.com/go/?id=api-generating-tokens")
ASC_401 = {"errors": [{"status": "401", "code": "NOT_AUTHORIZED",
                       "title": "Authentication credentials are missing or invalid.",
                       "detail": ASC_401_DETAIL}]}

TOKEN_CHARS = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
REQUEST_LINE = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^\x00-\x20\x7f]+) HTTP/(\d)\.(\d)\r\n$")
CHUNK_LINE = re.compile(rb"^([0-9A-Fa-f]{1,16})((?:;[^\r\n]*)?)\r\n$")
KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# ------------------------------------------------------------------------------------------------
# Log

class EventLog:
    """Thread-safe JSON-lines log; every line is flushed as it is written."""

    def __init__(self, path):
        self._lock = threading.Lock()
        self._f = open(path, "a", encoding="utf-8") if path else None

    def write(self, event, **fields):
        if self._f is None:
            return
        rec = {"event": event, "time": round(time.time(), 6)}
        rec.update(fields)
        line = json.dumps(rec, default=repr) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()


# ------------------------------------------------------------------------------------------------
# Keys and token checks

class KeyStore:
    """Public keys from DIR/<KID>.pem (a private key file is accepted too), read on demand."""

    def __init__(self, directory):
        self.dir = directory
        self._cache = {}
        self._lock = threading.Lock()

    def get(self, kid):
        if not self.dir or not isinstance(kid, str) or not KID_RE.match(kid):
            return None
        path = os.path.join(self.dir, kid + ".pem")
        try:
            st = os.stat(path)
        except OSError:
            return None
        with self._lock:
            hit = self._cache.get(path)
            if hit and hit[0] == st.st_mtime_ns:
                return hit[1]
        with open(path, "rb") as f:
            data = f.read()
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        with self._lock:
            self._cache[path] = (st.st_mtime_ns, key)
        return key


class TokenError(Exception):
    pass


def split_bearer(values):
    """values: every Authorization header value. Returns the token or raises TokenError."""
    if not values:
        raise TokenError("missing Authorization header")
    if len(values) > 1:
        raise TokenError("multiple Authorization headers")
    parts = values[0].split(" ")
    if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1]:
        raise TokenError("Authorization is not 'Bearer <token>'")
    return parts[1]


def decode_unverified(token):
    """(header, claims) without checking anything; ({}, {}) parts that do not decode."""
    header, claims = {}, {}
    try:
        header = jwt.get_unverified_header(token)
    except Exception:
        pass
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except Exception:
        pass
    return header, claims


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


class Profile:
    """A host's token rules. verify() raises TokenError; unauthorized() is the 401 answer."""
    name = "none"
    require_token = False
    require_typ = False
    max_lifetime = None

    def check_signature(self, token, keys, now):
        if token.count(".") != 2:
            raise TokenError("not a compact JWS")
        try:
            header = jwt.get_unverified_header(token)
        except Exception as e:
            raise TokenError("undecodable header: %s" % e)
        if header.get("alg") != "ES256":
            raise TokenError("alg is %r, not ES256" % header.get("alg"))
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError("missing kid")
        key = keys.get(kid)
        if key is None:
            raise TokenError("unknown kid %r" % kid)
        if self.require_typ and header.get("typ") != "JWT":
            raise TokenError("typ is %r, not JWT" % header.get("typ"))
        try:
            claims = jwt.decode(token, key, algorithms=["ES256"],
                                options={"verify_signature": True, "verify_exp": False,
                                         "verify_iat": False, "verify_nbf": False,
                                         "verify_aud": False, "verify_iss": False, "require": []})
        except jwt.InvalidSignatureError:
            raise TokenError("bad signature (ES256 needs the raw 64-byte R||S)")
        except jwt.PyJWTError as e:
            raise TokenError("undecodable token: %s" % e)
        for c in ("iat", "exp"):
            if c not in claims:
                raise TokenError("missing %s" % c)
            if not _is_int(claims[c]):
                raise TokenError("%s is not an integer" % c)
        iat, exp = claims["iat"], claims["exp"]
        if exp <= now:
            raise TokenError("expired (exp %d <= now %d)" % (exp, int(now)))
        if iat > now + 60:
            raise TokenError("iat %d in the future" % iat)
        if exp < iat:
            raise TokenError("exp before iat")
        if self.max_lifetime is not None and exp - iat > self.max_lifetime:
            raise TokenError("exp - iat = %d > %d" % (exp - iat, self.max_lifetime))
        return header, claims

    def verify(self, req, token, keys, now):
        return self.check_signature(token, keys, now)

    def unauthorized(self, req, reason):
        return _json(ASC_401, 401)


class AppStoreConnectProfile(Profile):
    name = "app-store-connect"
    require_token = True
    require_typ = True
    max_lifetime = 1200
    audience = "appstoreconnect-v1"

    def verify(self, req, token, keys, now):
        header, claims = self.check_signature(token, keys, now)
        if claims.get("aud") != self.audience:
            raise TokenError("aud is %r, not %r" % (claims.get("aud"), self.audience))
        if "iss" in claims:
            if not isinstance(claims["iss"], str) or not claims["iss"]:
                raise TokenError("iss is not a non-empty string")
        elif claims.get("sub") != "user":
            raise TokenError("neither iss nor sub 'user'")
        if claims["exp"] > now + 1200 + 5:
            raise TokenError("exp %d more than 20 minutes ahead" % claims["exp"])
        if "scope" in claims:
            check_scope(claims["scope"], req)
        return header, claims

    def unauthorized(self, req, reason):
        return _json(ASC_401, 401)


class EnterpriseProfile(AppStoreConnectProfile):
    name = "enterprise"
    audience = "apple-developer-enterprise-v1"


class WeatherKitProfile(Profile):
    name = "weatherkit"
    require_token = True

    def verify(self, req, token, keys, now):
        header, claims = self.check_signature(token, keys, now)
        if set(claims) != {"iss", "iat", "exp", "sub"}:
            raise TokenError("claims are %s, not exactly iss, iat, exp, sub" % sorted(claims))
        if not all(isinstance(claims[c], str) and claims[c] for c in ("iss", "sub")):
            raise TokenError("iss and sub must be non-empty strings")
        want = "%s.%s" % (claims["iss"], claims["sub"])
        if header.get("id") != want:
            raise TokenError("header id is %r, not %r" % (header.get("id"), want))
        return header, claims

    def unauthorized(self, req, reason):
        return _json({"reason": "MISSING_AUTH"}, 401)


class AppStoreServerProfile(Profile):
    name = "app-store-server"
    require_token = True
    require_typ = True
    max_lifetime = 3600

    def verify(self, req, token, keys, now):
        header, claims = self.check_signature(token, keys, now)
        if not isinstance(claims.get("iss"), str) or not claims["iss"]:
            raise TokenError("missing iss")
        if claims.get("aud") != "appstoreconnect-v1":
            raise TokenError("aud is %r, not 'appstoreconnect-v1'" % claims.get("aud"))
        if not isinstance(claims.get("bid"), str) or not claims["bid"]:
            raise TokenError("missing bid")
        return header, claims

    def unauthorized(self, req, reason):
        return Response(401, b"Unauthenticated\n", content_type="text/plain")


class MusicProfile(Profile):
    name = "music"
    require_token = True
    max_lifetime = 15777000

    def verify(self, req, token, keys, now):
        header, claims = self.check_signature(token, keys, now)
        if not isinstance(claims.get("iss"), str) or not claims["iss"]:
            raise TokenError("missing iss")
        if "origin" in claims and not (isinstance(claims["origin"], list) and
                                       all(isinstance(o, str) for o in claims["origin"])):
            raise TokenError("origin is not a list of strings")
        return header, claims

    def unauthorized(self, req, reason):
        return _json({"errors": [{"id": str(uuid.uuid4()), "title": "Unauthorized",
                                  "detail": "Invalid authentication",
                                  "status": "401", "code": "40100"}]}, 401)


PROFILES = {
    ASC_HOST: AppStoreConnectProfile(),
    ENTERPRISE_HOST: EnterpriseProfile(),
    WEATHERKIT_HOST: WeatherKitProfile(),
    STOREKIT_HOST: AppStoreServerProfile(),
    STOREKIT_SANDBOX_HOST: AppStoreServerProfile(),
    MUSIC_HOST: MusicProfile(),
}
GENERIC = Profile()


def check_scope(scope, req):
    if not isinstance(scope, list) or not all(isinstance(s, str) for s in scope):
        raise TokenError("scope is not a list of strings")
    for entry in scope:
        method, _, target = entry.partition(" ")
        path, qmark, query = target.partition("?")
        if method != req.method or path != req.path:
            continue
        if qmark and query != req.query:
            continue
        return
    raise TokenError("request %r matches no scope entry" % ("%s %s" % (req.method, req.target)))


# ------------------------------------------------------------------------------------------------
# Requests and responses

class BadRequest(Exception):
    pass


class Request:
    def __init__(self):
        self.method = self.target = self.path = self.query = self.version = None
        self.headers = []   # [[name, value], ...] as received
        self.trailers = []
        self.raw_head = b""
        self.host = None
        self.body_len = 0
        self.body_sha256 = hashlib.sha256().hexdigest()
        self.body_prefix = b""
        self.conn_id = self.conn_seq = None
        self.profile = GENERIC
        self.token_header = {}
        self.token_claims = {}

    def header_all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def header(self, name, default=None):
        vals = self.header_all(name)
        return vals[0] if vals else default

    def connection_tokens(self):
        toks = []
        for v in self.header_all("connection"):
            toks += [t.strip().lower() for t in v.split(",") if t.strip()]
        return toks

    def params(self):
        return urllib.parse.parse_qsl(self.query or "", keep_blank_values=True)

    def param(self, name, default=None):
        for k, v in self.params():
            if k == name:
                return v
        return default


class Response:
    """status, body (bytes, or an iterable of bytes with length= or chunked=True), extra headers.

    raw: bytes written verbatim instead of a generated response (then the connection closes).
    own_framing: the headers already hold Content-Length/Transfer-Encoding; send body as is.
    """

    def __init__(self, status, body=b"", headers=None, content_type=None, length=None,
                 chunked=False, close=False, raw=None, own_framing=False):
        self.status = status
        self.body = body
        self.headers = list(headers or [])
        if content_type and body is not None:
            self.headers.insert(0, ("Content-Type", content_type))
        self.length = length
        self.chunked = chunked
        self.close = close
        self.raw = raw
        self.own_framing = own_framing


def _json(obj, status=200, headers=None):
    return Response(status, json.dumps(obj).encode(), headers, content_type="application/json")


def apple_error(status, code, title, detail):
    return _json({"errors": [{"id": str(uuid.uuid4()), "status": str(status), "code": code,
                              "title": title, "detail": detail}]}, status)


def not_found(req):
    return apple_error(404, "NOT_FOUND", "The specified resource does not exist",
                       "The path provided does not match a defined resource type.")


# Per-path behaviours: (hosts or None for any, compiled pattern on the path, handler(req, match)).
ROUTES = []


def route(pattern, hosts=None):
    def deco(fn):
        ROUTES.append((set(hosts) if hosts else None, re.compile(pattern), fn))
        return fn
    return deco


def body_text(req):
    try:
        return req.body_prefix.decode("utf-8")
    except UnicodeDecodeError:
        return None


@route(r"^/__echo$")
def h_echo(req, m):
    return _json({"method": req.method, "path": req.path, "query": req.query,
                  "target": req.target, "version": req.version, "host": req.host,
                  "headers": req.headers, "trailers": req.trailers,
                  "body_len": req.body_len, "body_sha256": req.body_sha256,
                  "body": body_text(req), "conn_id": req.conn_id, "conn_seq": req.conn_seq,
                  "token_claims": req.token_claims})


@route(r"^/__status/(\d{3})$")
def h_status(req, m):
    """Query parameters become response headers (Location=..., Retry-After=...); framing
    headers among them are ignored (the stand-in frames the response itself)."""
    status = int(m.group(1))
    hdrs = [(k, v) for k, v in req.params()
            if k.lower() not in ("content-length", "transfer-encoding", "connection")]
    if status < 200 or status in (204, 304):
        return Response(status, None, hdrs)
    return _json({"status": status}, status, hdrs)


class Revocations:
    """Tokens and key ids the stand-in refuses (a revoked key, or Apple refusing one token),
    set by tests through /__control/... on a host without a profile (localhost, 127.0.0.1)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.tokens = set()
        self.kids = set()

    def check(self, token, header):
        kid = header.get("kid") if isinstance(header, dict) else None
        with self._lock:
            if token in self.tokens:
                raise TokenError("token revoked (/__control/revoke)")
            if kid in self.kids:
                raise TokenError("key %r revoked (/__control/revoke)" % kid)

    def control(self, action, params):
        with self._lock:
            for k, v in params:
                target = self.tokens if k == "token" else self.kids if k == "kid" else None
                if target is None:
                    raise ValueError("unknown control parameter %r" % k)
                if action == "revoke":
                    target.add(v)
                else:
                    target.discard(v)
            if action == "reset":
                self.tokens.clear()
                self.kids.clear()
            return {"tokens": len(self.tokens), "kids": sorted(self.kids)}


REVOKED = Revocations()


@route(r"^/__control/(revoke|unrevoke|reset)$")
def h_control(req, m):
    """/__control/revoke?token=JWT|kid=KID (repeatable), /__control/unrevoke?..., and
    /__control/reset: only on hosts without a token profile, never on an Apple host."""
    if req.profile is not GENERIC:
        return not_found(req)
    return _json(REVOKED.control(m.group(1), req.params()))


@route(r"^/__slow$")
def h_slow(req, m):
    delay = float(req.param("delay", "1"))
    time.sleep(max(0.0, delay))
    return _json({"slept": delay})


def pattern_bytes(n):
    full, rest = divmod(n, WRITE_SIZE)
    for _ in range(full):
        yield BLOCK
    if rest:
        yield BLOCK[:rest]


@route(r"^/__bytes$")
def h_bytes(req, m):
    n = int(req.param("n", "0"))
    chunked = req.param("chunked", "0") not in ("0", "", "false")
    return Response(200, pattern_bytes(n), content_type="application/octet-stream",
                    length=None if chunked else n, chunked=chunked)


@route(r"^/__headers$")
def h_headers(req, m):
    hdrs = req.params()
    own = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hdrs)
    close = own or any(k.lower() == "connection" and "close" in v.lower() for k, v in hdrs)
    return Response(200, b'{"headers":"set"}', hdrs, own_framing=own, close=close)


@route(r"^/__close$")
def h_close(req, m):
    return Response(200, b'{"closing":true}', content_type="application/json", close=True)


@route(r"^/v1/apps$", hosts=[ASC_HOST])
def h_apps(req, m):
    return _json({"data": [{"type": "apps", "id": "1",
                            "attributes": {"name": "Demo", "bundleId": "com.example.demo"}}],
                  "links": {"self": "https://api.appstoreconnect.apple.com/v1/apps"}})


@route(r"^/api/v1/availability/([^/]+)/([^/]+)$", hosts=[WEATHERKIT_HOST])
def h_availability(req, m):
    return _json(["currentWeather", "forecastDaily"])


@route(r"^/api/v1/weather/([^/]+)/([^/]+)/([^/]+)$", hosts=[WEATHERKIT_HOST])
def h_weather(req, m):
    lang, lat, lon = m.groups()
    return _json({"currentWeather": {
        "name": "CurrentWeather",
        "metadata": {"attributionURL": "https://developer.apple.com/weatherkit/data-source-attribution/",
                     "language": lang, "latitude": float(lat), "longitude": float(lon),
                     "version": 1},
        "asOf": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "conditionCode": "Clear", "temperature": 12.5, "humidity": 0.6}})


@route(r"^/inApps/v1/history/([^/]+)$", hosts=[STOREKIT_HOST, STOREKIT_SANDBOX_HOST])
def h_history(req, m):
    return _json({"revision": "1", "bundleId": req.token_claims.get("bid"),
                  "appAppleId": 1234567890,
                  "environment": "Sandbox" if req.host == STOREKIT_SANDBOX_HOST else "Production",
                  "hasMore": False, "signedTransactions": []})

import standin_recipes  # noqa: E402,F401  (registers the endpoints of docs/recipes.md)
import standin_gateway  # noqa: E402,F401  (Apple's 429 + Retry-After forms, test_gateway.py)
import standin_exchange  # noqa: E402,F401  (maps, apple-business and devicecheck)

# ------------------------------------------------------------------------------------------------
# Server

class RateLimiter:
    def __init__(self, start):
        self.start = start
        self._rem = {}
        self._lock = threading.Lock()

    def take(self, kid):
        """Returns (allowed, remaining after this request)."""
        with self._lock:
            rem = self._rem.get(kid, self.start + 1)
            if rem <= 0:
                return False, 0
            self._rem[kid] = rem - 1
            return True, rem - 1

    def peek(self, kid):
        with self._lock:
            return max(0, self._rem.get(kid, self.start + 1) - 1)


class StandIn(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 1024

    def __init__(self, cert, key, keys_dir, host="127.0.0.1", port=0, log_path=None,
                 rate_remaining=3599, idle_timeout=300.0, handshake_timeout=10.0):
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), ConnectionHandler)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.ctx.sni_callback = self._sni
        self.keys = KeyStore(keys_dir)
        self.log = EventLog(log_path)
        self.rate = RateLimiter(rate_remaining)
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()

    @staticmethod
    def _sni(sslsock, server_name, ctx):
        sslsock.aap_sni = server_name
        return None

    def next_conn_id(self):
        with self._ids_lock:
            return next(self._ids)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, socket.timeout, BrokenPipeError)):
            return
        self.log.write("error", error=repr(exc))
        super().handle_error(request, client_address)


class ConnectionHandler(socketserver.BaseRequestHandler):
    def handle(self):
        srv = self.server
        self.conn_id = srv.next_conn_id()
        srv.log.write("accept", conn_id=self.conn_id, peer="%s:%s" % self.client_address[:2])
        raw = self.request
        tls = srv.ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        tls.settimeout(srv.handshake_timeout)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as e:
            srv.log.write("tls_error", conn_id=self.conn_id, error=str(e),
                          sni=getattr(tls, "aap_sni", None))
            tls.close()
            return
        srv.log.write("handshake", conn_id=self.conn_id, sni=getattr(tls, "aap_sni", None),
                      alpn=tls.selected_alpn_protocol(), resumed=bool(tls.session_reused),
                      version=tls.version(), cipher=(tls.cipher() or [None])[0])
        self.sock = tls
        self.rfile = tls.makefile("rb", buffering=65536)
        seq = 0
        reason = "eof"
        try:
            while True:
                tls.settimeout(srv.idle_timeout)
                try:
                    req = self.read_head()
                except BadRequest as e:
                    srv.log.write("bad_request", conn_id=self.conn_id, conn_seq=seq + 1,
                                  error=str(e), raw_head=getattr(e, "raw", b"").decode("latin-1"))
                    self.send(None, apple_error(400, "BAD_REQUEST", "Bad request", str(e)),
                              close=True)
                    reason = "bad_request"
                    break
                if req is None:
                    break
                seq += 1
                req.conn_id, req.conn_seq = self.conn_id, seq
                if not self.serve(req):
                    reason = "close"
                    break
        except (socket.timeout, TimeoutError):
            reason = "timeout"
        except (ConnectionError, ssl.SSLError, OSError) as e:
            reason = "error: %s" % e
        finally:
            srv.log.write("conn_close", conn_id=self.conn_id, requests=seq, reason=reason)
            self.shutdown_tls()

    def shutdown_tls(self):
        try:
            self.rfile.close()
        except Exception:
            pass
        try:
            self.sock.settimeout(1.0)
            self.sock.unwrap().close()
        except Exception:
            try:
                self.sock.close()
            except Exception:
                pass

    # -- reading ---------------------------------------------------------------------------------

    def readline(self, raw, what):
        line = self.rfile.readline(MAX_LINE + 1)
        raw.append(line)
        if len(line) > MAX_LINE:
            raise self.bad(raw, "%s too long" % what)
        if line and not line.endswith(b"\r\n"):
            if line.endswith(b"\n"):
                raise self.bad(raw, "bare LF ending the %s" % what)
            raise self.bad(raw, "connection closed inside the %s" % what)
        if b"\r" in line[:-2] or b"\n" in line[:-2]:
            raise self.bad(raw, "bare CR or LF inside the %s" % what)
        return line

    @staticmethod
    def bad(raw, msg):
        e = BadRequest(msg)
        e.raw = b"".join(raw)[:MAX_HEAD]
        return e

    def read_head(self):
        raw = []
        line = self.readline(raw, "request line")
        if not line:
            return None
        if line == b"\r\n":  # one empty line before the request line is tolerated (RFC 9112)
            line = self.readline(raw, "request line")
            if not line:
                return None
        m = REQUEST_LINE.match(line)
        if not m:
            raise self.bad(raw, "malformed request line")
        req = Request()
        req.method = m.group(1).decode()
        req.target = m.group(2).decode("latin-1")
        req.version = "HTTP/%s.%s" % (m.group(3).decode(), m.group(4).decode())
        if req.version not in ("HTTP/1.1", "HTTP/1.0"):
            raise self.bad(raw, "unsupported version")
        req.path, _, req.query = req.target.partition("?")
        total = len(line)
        while True:
            line = self.readline(raw, "header line")
            total += len(line)
            if total > MAX_HEAD or len(req.headers) > MAX_HEADERS:
                raise self.bad(raw, "head too large")
            if not line:
                raise self.bad(raw, "connection closed inside the head")
            if line == b"\r\n":
                break
            if line[:1] in (b" ", b"\t"):
                raise self.bad(raw, "obs-fold")
            name, colon, value = line[:-2].partition(b":")
            if not colon:
                raise self.bad(raw, "header line without a colon")
            if not TOKEN_CHARS.match(name):
                raise self.bad(raw, "invalid header name %r" % name)
            value = value.strip(b" \t")
            if b"\x00" in value:
                raise self.bad(raw, "NUL in a header value")
            req.headers.append([name.decode("latin-1"), value.decode("latin-1")])
        req.raw_head = b"".join(raw)
        hosts = req.header_all("host")
        if len(hosts) > 1 or (req.version == "HTTP/1.1" and not hosts):
            raise self.bad(raw, "missing or repeated Host")
        if hosts:
            h = hosts[0].strip().lower()
            if h.startswith("["):
                h = h[:h.find("]") + 1]
            else:
                h = h.rsplit(":", 1)[0] if ":" in h else h
            req.host = h
        self.read_body(req, raw)
        return req

    def read_body(self, req, raw):
        te = req.header_all("transfer-encoding")
        cl = req.header_all("content-length")
        if te and cl:
            raise self.bad(raw, "Content-Length with Transfer-Encoding")
        if len(cl) > 1:
            raise self.bad(raw, "repeated Content-Length")
        chunked = False
        if te:
            codings = [c.strip().lower() for v in te for c in v.split(",")]
            if req.version != "HTTP/1.1" or codings[-1] != "chunked" or codings.count("chunked") != 1:
                raise self.bad(raw, "unsupported Transfer-Encoding %r" % te)
            chunked = True
        length = 0
        if cl:
            if not re.fullmatch(r"[0-9]{1,18}", cl[0]):
                raise self.bad(raw, "invalid Content-Length %r" % cl[0])
            length = int(cl[0])
        if (chunked or length) and "100-continue" in req.header("expect", "").lower():
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        sha = hashlib.sha256()
        prefix = []
        plen = 0

        def feed(data):
            nonlocal plen
            sha.update(data)
            req.body_len += len(data)
            if plen < ECHO_BODY_MAX:
                prefix.append(data[:ECHO_BODY_MAX - plen])
                plen += len(prefix[-1])

        def read_exact(n):
            while n > 0:
                data = self.rfile.read(min(n, WRITE_SIZE))
                if not data:
                    raise self.bad(raw, "connection closed inside the body")
                feed(data)
                n -= len(data)

        if chunked:
            while True:
                line = self.readline(raw, "chunk size line")
                m = CHUNK_LINE.match(line)
                if not m:
                    raise self.bad(raw, "invalid chunk size line %r" % line[:80])
                size = int(m.group(1), 16)
                if size == 0:
                    break
                read_exact(size)
                if self.rfile.read(2) != b"\r\n":
                    raise self.bad(raw, "chunk data not followed by CRLF")
            while True:
                line = self.readline(raw, "trailer line")
                if line == b"\r\n":
                    break
                if not line:
                    raise self.bad(raw, "connection closed inside the trailers")
                name, _, value = line[:-2].partition(b":")
                req.trailers.append([name.decode("latin-1"), value.strip(b" \t").decode("latin-1")])
        else:
            read_exact(length)
        req.body_sha256 = sha.hexdigest()
        req.body_prefix = b"".join(prefix)

    # -- serving ---------------------------------------------------------------------------------

    def serve(self, req):
        """Verifies, logs, answers. Returns False when the connection must close."""
        srv = self.server
        req.profile = PROFILES.get(req.host, GENERIC)
        req.keys = srv.keys  # for handlers that verify tokens themselves (standin_exchange)
        auth = req.header_all("authorization")
        token_ok, token_error, resp = False, None, None
        token = None
        try:
            token = split_bearer(auth)
        except TokenError as e:
            token_error = str(e)
        if token is not None:
            req.token_header, req.token_claims = decode_unverified(token)
            try:
                req.profile.verify(req, token, srv.keys, time.time())
                REVOKED.check(token, req.token_header)
                token_ok = True
            except TokenError as e:
                token_error = str(e)
        if len(auth) > 1:
            resp = apple_error(400, "PARAMETER_ERROR.INVALID", "Multiple Authorization headers",
                               "A request carries one Authorization header.")
        elif req.profile.require_token and not token_ok:
            resp = req.profile.unauthorized(req, token_error)
        extra = []
        if req.host == ASC_HOST:
            kid = req.token_header.get("kid") if isinstance(req.token_header, dict) else None
            kid = kid if isinstance(kid, str) else "-"
            if resp is None:
                allowed, rem = srv.rate.take(kid)
                if not allowed:
                    resp = apple_error(429, "RATE_LIMIT_EXCEEDED", "The request rate limit has been reached.",
                                       "We've received too many requests for this API.")
            else:
                rem = srv.rate.peek(kid)
            extra.append(("X-Rate-Limit", "user-hour-lim:3600;user-hour-rem:%d;" % rem))
        srv.log.write("request", conn_id=req.conn_id, conn_seq=req.conn_seq, host=req.host,
                      method=req.method, target=req.target, path=req.path, query=req.query,
                      version=req.version, headers=req.headers, trailers=req.trailers,
                      body_len=req.body_len, body_sha256=req.body_sha256,
                      profile=req.profile.name, token_ok=token_ok, token_error=token_error,
                      token_header=req.token_header, token_claims=req.token_claims,
                      raw_head=req.raw_head.decode("latin-1"))
        if resp is None:
            resp = self.dispatch(req)
        resp.headers = extra + resp.headers
        close = ("close" in req.connection_tokens() or
                 (req.version == "HTTP/1.0" and "keep-alive" not in req.connection_tokens()))
        return self.send(req, resp, close=close)

    def dispatch(self, req):
        for hosts, pattern, fn in ROUTES:
            if hosts is not None and req.host not in hosts:
                continue
            m = pattern.match(req.path)
            if m:
                try:
                    return fn(req, m)
                except (ValueError, KeyError) as e:
                    return apple_error(400, "PARAMETER_ERROR.INVALID", "Bad parameter", str(e))
        return not_found(req)

    def send(self, req, resp, close=False):
        """Writes resp; returns False when the connection must close afterwards."""
        srv = self.server
        head_only = req is not None and req.method == "HEAD"
        if resp.raw is not None:
            self.sock.sendall(resp.raw)
            srv.log.write("response", conn_id=self.conn_id, conn_seq=req and req.conn_seq,
                          status=None, raw=True, body_bytes=len(resp.raw), complete=True)
            return False
        close = close or resp.close
        if req is not None and req.version == "HTTP/1.0" and not close:
            keep_alive_hdr = [("Connection", "keep-alive")]
        else:
            keep_alive_hdr = []
        status = resp.status
        no_body = status < 200 or status in (204, 304) or resp.body is None
        lines = ["HTTP/1.1 %d %s" % (status, reason_phrase(status)),
                 "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
                 "Server: apple-auth-proxy-standin"]
        body = resp.body
        chunked = False
        if resp.own_framing:
            pass
        elif no_body:
            body = b""
        elif isinstance(body, (bytes, bytearray)):
            lines.append("Content-Length: %d" % len(body))
        elif resp.chunked or resp.length is None:
            if req is not None and req.version == "HTTP/1.0":
                close = True
            else:
                lines.append("Transfer-Encoding: chunked")
                chunked = True
        else:
            lines.append("Content-Length: %d" % resp.length)
        for k, v in resp.headers + keep_alive_hdr:
            lines.append("%s: %s" % (k, v))
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sent = 0
        complete = False
        try:
            if head_only or no_body or body is None:
                self.sock.sendall(head)
            elif isinstance(body, (bytes, bytearray)):
                self.sock.sendall(head + body)
                sent = len(body)
            else:
                self.sock.sendall(head)
                for piece in body:
                    if not piece:
                        continue
                    if chunked:
                        self.sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                    else:
                        self.sock.sendall(piece)
                    sent += len(piece)
                if chunked:
                    self.sock.sendall(b"0\r\n\r\n")
            complete = True
        finally:
            srv.log.write("response", conn_id=self.conn_id, conn_seq=req and req.conn_seq,
                          status=status, body_bytes=sent, complete=complete, close=close)
        return not close


def reason_phrase(status):
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description="TLS stand-in for Apple's server APIs (tests only)")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--keys-dir", default=None, help="public keys named <KEYID>.pem")
    ap.add_argument("--log", default=None, help="JSON-lines event log")
    ap.add_argument("--port-file", default=None, help="written with the bound port once listening")
    ap.add_argument("--rate-remaining", type=int, default=3599,
                    help="user-hour-rem on the first App Store Connect response of each key")
    ap.add_argument("--idle-timeout", type=float, default=300.0)
    ap.add_argument("--handshake-timeout", type=float, default=10.0)
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        ap.error("the stand-in listens on loopback only")

    srv = StandIn(args.cert, args.key, args.keys_dir, args.host, args.port, args.log,
                  args.rate_remaining, args.idle_timeout, args.handshake_timeout)
    port = srv.server_address[1]
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    signal.signal(signal.SIGINT, lambda *a: os._exit(0))
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    print("standin listening on %s:%d" % (args.host, port), flush=True)
    srv.serve_forever(poll_interval=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
