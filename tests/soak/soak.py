#!/usr/bin/python3
"""soak: mixed load through the proxy for minutes while the upstream misbehaves on a schedule.

    /usr/bin/python3 tests/soak/soak.py --binary build/apple-auth-proxy [--duration S]

(`make soak`; not part of `make test`.) Everything runs on 127.0.0.1:

    client threads --HTTP--> apple-auth-proxy (workers 2) --TLS--> relay.py --> stand-in for Apple
                                                                      \\---> stand-ins with bad
                                                                            certificates

relay.py keeps the upstream's address stable while this script resets, closes and stalls its
connections, restarts the stand-in behind it (the relay refuses connections meanwhile), or points
it at a stand-in whose certificate is expired, for another host or from an unknown CA, and back.
Every 30 s the configuration file is rewritten and the proxy gets SIGHUP: in turn a rotated key
(a new key file and key id), a changed limit (with the access log rotated: renamed, then
SIGUSR1), and an invalid file (which must be rejected). Tokens live 150 s, so the refresher
re-mints them under load as well.

Client threads (each with its own connections; every request carries its id as X-Soak-Id and as
the query parameter soak=ID, so the stand-in's log and the proxy's access log can be matched):
  keepalive  small GETs and POSTs on one keep-alive connection (/__echo, /v1/apps, /__slow)
  pipeline   2-6 requests written at once, responses read in order
  download   20 MiB downloads (Content-Length and chunked; some over HTTP/1.0), some abandoned
             mid-body
  upload     chunked and Content-Length uploads up to 8 MiB, some with Expect: 100-continue,
             some abandoned mid-body
  abort      clients that go away mid-response, mid-upload, mid-head or while waiting
  slowupload an upload that keeps sending steadily for longer than upstream_response_timeout

Checks (any failure makes the exit status 1):
  - the proxy stays alive, /healthz answers, and it exits 0 on SIGTERM at the end;
  - every request ends in exactly one of: a complete response, a proxy error status (502, 503,
    504 with the proxy's JSON error), a closed connection, or the client's own abort; no request
    hangs (no progress for --client-timeout seconds);
  - no wrong answer: complete 2xx bodies are checked (echoed id, body length and SHA-256,
    download pattern, rewritten links), responses match their requests in order, and no bytes
    arrive unasked on an idle keep-alive connection;
  - every failure (proxy error status or closed connection) happened inside an injected fault's
    window (plus a grace period) and is of a kind that fault can cause;
  - no request answered twice: one access log line per id; the stand-in saw each POST at most
    once and each GET at most twice (the proxy's documented retry of an idempotent request on a
    pooled connection that turns out closed); every complete 2xx came from the stand-in;
  - stand-ins with bad certificates never received a request (the token never left);
  - the stand-in accepted every token the proxy sent (none expired, none of a retired key);
  - after a key rotation, requests carry the new key id; an invalid file is rejected; SIGUSR1
    reopens the access log and no line is lost or torn;
  - /metrics errors_total by code equals the access log's error lines, and no client saw more
    errors of a code than the proxy counted; no counter ever goes down;
  - after the load, once the idle timeouts have passed, the proxy's RSS (VmRSS) is within
    --rss-tolerance-mib of its level after the warm-up and its descriptor count within
    --fd-tolerance, with no client or upstream connection left open.

Environment: SOAK_SECONDS (the default of --duration, 300), AAP_KEEP_TMP=1 keeps the temporary
directory (it is kept anyway when the run fails).
"""
import argparse
import base64
import collections
import hashlib
import json
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness as h  # noqa: E402

MiB = 1 << 20
PATTERN = b"0123456789abcdef"
RELAY = os.path.join(HERE, "relay.py")

# Short timeouts so that faults turn into answers quickly; the fault lengths below are chosen
# against them (a stall outlasts the response and handshake timeouts).
LIMITS = {
    "upstream_connect_timeout": 2,
    "upstream_tls_handshake_timeout": 3,
    "upstream_response_timeout": 5,
    "upstream_idle_timeout": 4,
    "upstream_pool_size": 32,
    "keepalive_timeout": 10,
    "client_header_timeout": 5,
    "client_body_timeout": 10,
    "send_timeout": 15,
    "drain_timeout": 10,
    "max_body_bytes": 1 << 30,
}
# Tokens live 150 s (90 s past the 60 s clock skew) and are replaced 30 s before they expire.
TOKEN_LIFETIME = 150
TOKEN_REFRESH_MARGIN = 30
STALL_SECONDS = 8.0
SWAP_SECONDS = 6.0
RESTART_DOWN_SECONDS = 1.5
PRE_GRACE = 0.5
POST_GRACE = 3.0

# Outcomes of one request.
OK = "ok"                # complete 2xx, checked
PROXY_ERROR = "proxy"    # 502/503/504 with the proxy's JSON error (rec.code)
CLOSED = "closed"        # the connection closed before the response was complete
ABORT = "abort"          # the client went away on purpose
HANG = "hang"            # no progress for --client-timeout seconds
WRONG = "wrong"          # a wrong or unexpected answer

TLS = "PROXY_UPSTREAM_TLS"
UNREACHABLE = "PROXY_UPSTREAM_UNREACHABLE"
TIMEOUT = "PROXY_UPSTREAM_TIMEOUT"
# What each fault can cause. A failure outside every window, or of a kind its windows do not
# allow, is unexplained.
FAULT_EFFECTS = {
    "reset": {UNREACHABLE, TLS, CLOSED},
    "close": {UNREACHABLE, TLS, CLOSED},
    "stall": {TIMEOUT, CLOSED},
    "restart": {UNREACHABLE, TLS, CLOSED},
    "cert-expired": {TLS, UNREACHABLE, CLOSED},
    "cert-wrong_host": {TLS, UNREACHABLE, CLOSED},
    "cert-unknown_ca": {TLS, UNREACHABLE, CLOSED},
}
FAULT_CYCLE = ["reset", "stall", "restart", "cert-expired", "close", "stall", "cert-wrong_host",
               "restart", "reset", "cert-unknown_ca"]

T0 = time.time()


def log(msg):
    sys.stdout.write("[%7.1f] %s\n" % (time.time() - T0, msg))
    sys.stdout.flush()


def fmt_mib(kib):
    return "%.1f MiB" % (kib / 1024.0)


# ------------------------------------------------------------------------------------------------
# The proxy process: resources, metrics


def proc_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def admin_get(port, path, timeout=5):
    with h.HttpClient(port, timeout=timeout) as c:
        r = c.request("GET", path)
        return r.status, r.body.decode("utf-8", "replace")


METRIC_RE = re.compile(r'^([a-z_]+)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)$')


def parse_metrics(text):
    """{(name, labels-string): value}"""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = METRIC_RE.match(line.strip())
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def metric_by_label(metrics, name, label):
    """{label value: number} for one metric."""
    out = collections.Counter()
    rx = re.compile(r'%s="([^"]*)"' % label)
    for (n, labels), v in metrics.items():
        if n == name:
            m = rx.search(labels)
            out[m.group(1) if m else ""] += v
    return out


def metric_value(metrics, name, labels=""):
    return metrics.get((name, labels), 0.0)


# ------------------------------------------------------------------------------------------------
# Upstream side: the relay and the stand-ins


class Relay:
    """relay.py as a child; cmd() sends one command and returns its reply."""

    def __init__(self, port, target, log_path):
        self.port = port
        self.address = "127.0.0.1:%d" % port
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [h.PYTHON, RELAY, "--listen", self.address, "--target", target, "--log", log_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log_path + ".stderr", "wb"),
            env=h.clean_env({"PYTHONDONTWRITEBYTECODE": "1"}), preexec_fn=h._die_with_parent,
            bufsize=0)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("relay: listening on"):
            raise RuntimeError("relay did not start: %r" % line)

    def cmd(self, line):
        with self.lock:
            self.proc.stdin.write((line + "\n").encode())
            reply = self.proc.stdout.readline().decode().strip()
        if not reply.startswith("ok"):
            raise RuntimeError("relay %r: %r" % (line, reply))
        return reply

    def stop(self):
        try:
            self.cmd("quit")
            self.proc.wait(5)
        except Exception:
            self.proc.kill()


def free_low_port():
    """A loopback port below the ephemeral range, so that closing and reopening the relay's
    listener cannot lose the port to an outgoing connection."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


class Upstreams:
    def __init__(self):
        self.good = []          # every good stand-in started (restarts add one)
        self.bad = {}
        for kind in ("expired", "wrong_host", "unknown_ca"):
            self.bad[kind] = self.start("bad-" + kind, kind)
        self.good.append(self.start("good-0", "good"))
        d = h.new_dir("relay")
        self.relay_log = os.path.join(d, "relay.jsonl")
        self.relay = Relay(free_low_port(), self.good[-1].address, self.relay_log)

    @staticmethod
    def start(name, cert):
        s = h.start_standin(cert, rate_remaining=10 ** 9)
        s.soak_name = name
        return s

    def restart_good(self):
        old = self.good[-1]
        old.stop()
        new = self.start("good-%d" % len(self.good), "good")
        self.good.append(new)
        return new


# ------------------------------------------------------------------------------------------------
# Requests and their records


class Rec:
    __slots__ = ("id", "kind", "method", "target", "t_start", "t_end", "outcome", "status",
                 "code", "detail", "nbytes", "kid", "thread")

    def __init__(self, rid, kind, method, target, thread):
        self.id, self.kind, self.method, self.target = rid, kind, method, target
        self.thread = thread
        self.t_start = time.time()
        self.t_end = None
        self.outcome = None
        self.status = None
        self.code = None
        self.detail = ""
        self.nbytes = 0
        self.kid = None

    def end(self, outcome, detail="", status=None, code=None):
        self.outcome = outcome
        self.detail = detail
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.t_end = time.time()
        return self

    def bucket(self):
        if self.outcome == PROXY_ERROR:
            return "%s %s" % (self.status, self.code)
        return self.outcome

    def describe(self):
        return "%s %s %s %s [%.2f..%.2f] %s status=%s code=%s %s" % (
            self.id, self.kind, self.method, self.target, self.t_start - T0,
            (self.t_end or 0) - T0, self.outcome, self.status, self.code, self.detail)


class AbortNow(Exception):
    pass


class Sink:
    """A body sink: hashes and counts, keeps the first 64 KiB (an error answer's JSON), and
    raises AbortNow once abort_at bytes have come."""

    def __init__(self, abort_at=None, total=None):
        self.sha = hashlib.sha256()
        self.length = 0
        self.head = b""
        self.abort_at = abort_at
        self.total = total

    def __call__(self, data):
        if len(self.head) < 65536:
            self.head += data[:65536 - len(self.head)]
        self.sha.update(data)
        self.length += len(data)
        if self.abort_at is not None and self.length >= self.abort_at:
            raise AbortNow("client closed after %d of %d body bytes" % (self.length, self.total))

    def hexdigest(self):
        return self.sha.hexdigest()


_expected_sha = {}
_sha_lock = threading.Lock()


def pattern_sha(n):
    with _sha_lock:
        if n not in _expected_sha:
            block = PATTERN * 4096
            sha = hashlib.sha256()
            left = n
            while left:
                piece = block[:min(left, len(block))]
                sha.update(piece)
                left -= len(piece)
            _expected_sha[n] = sha.hexdigest()
        return _expected_sha[n]


RANDOM_BLOCK = os.urandom(MiB)


def upload_pieces(total, rng):
    """(pieces, sha256 hex): random-sized pieces of random bytes adding up to total."""
    pieces, sha, left = [], hashlib.sha256(), total
    while left:
        n = min(left, rng.randint(1, 96 * 1024))
        off = rng.randint(0, len(RANDOM_BLOCK) - n)
        piece = RANDOM_BLOCK[off:off + n]
        sha.update(piece)
        pieces.append(piece)
        left -= n
    return pieces, sha.hexdigest()


def token_kid(auth_value):
    try:
        token = auth_value.split(" ", 1)[1]
        seg = token.split(".")[0]
        return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))).get("kid")
    except Exception:
        return None


class Client:
    """One client thread's connection to the proxy, reopened when it closes."""

    def __init__(self, worker, port, timeout):
        self.worker = worker
        self.port = port
        self.timeout = timeout
        self.c = None
        self.idle_since = None

    def conn(self):
        """The open connection, after checking that nothing arrived on it while idle."""
        if self.c is not None:
            c = self.c
            idle = time.monotonic() - (self.idle_since or time.monotonic())
            problem = None
            closed = c.eof
            if c.buf:
                problem = "%d unasked bytes after the last response: %r" % (len(c.buf),
                                                                            bytes(c.buf[:80]))
            elif not closed and select.select([c.sock], [], [], 0)[0]:
                try:
                    data = c.sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError:
                    data = b""
                if data:
                    problem = "%d unasked bytes on an idle connection: %r" % (len(data),
                                                                             data[:80])
                elif data == b"":
                    closed = True
            if closed and problem is None and idle < LIMITS["keepalive_timeout"] - 1:
                problem = ("the proxy closed an idle keep-alive connection after %.1f s without "
                           "Connection: close (keepalive_timeout is %s s)" % (
                               idle, LIMITS["keepalive_timeout"]))
            if problem:
                self.worker.anomalies.append((time.time(), problem))
            if problem or closed:
                self.drop()
        if self.c is None:
            self.c = h.HttpClient(self.port, timeout=self.timeout)
        return self.c

    def idle(self):
        self.idle_since = time.monotonic()

    def drop(self, hard=False):
        if self.c is not None:
            if hard:
                try:
                    self.c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self.c.close()
            self.c = None


def wants_close(r):
    return "close" in ",".join(r.header_all("connection")).lower() or r.version == "HTTP/1.0"


def classify_status(rec, r):
    """For a complete response that is not a 2xx: a proxy error, or a wrong answer."""
    if r.status in (502, 503, 504):
        try:
            err = json.loads(r.body)["errors"][0]
            code = err["code"]
            if not code.startswith("PROXY_") or err.get("status") != str(r.status):
                raise ValueError(code)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return rec.end(WRONG, "%d without the proxy's JSON error (%s): %r" % (
                r.status, e, r.body[:200]), status=r.status)
        return rec.end(PROXY_ERROR, err.get("detail", ""), status=r.status, code=code)
    return rec.end(WRONG, "unexpected status %d: %r" % (r.status, r.body[:300]), status=r.status)


def read_answer(cl, rec, method="GET", sink=None, head=None):
    """Reads the response (or its body when head, a response head, was already read).
    Returns the Response when one came whole, else None with rec ended."""
    c = cl.c
    try:
        if head is None:
            r = c.read_response(method, sink=sink)
        else:
            r = head
            parts = []

            def emit(data):
                r.body_len += len(data)
                (sink or parts.append)(data)
            c._read_body(r, method, emit)
            if sink is None:
                r.body = b"".join(parts)
    except h.TruncatedResponse as e:
        cl.drop()
        rec.end(CLOSED, str(e), status=e.response.status)
        return None
    except AbortNow as e:
        cl.drop(hard=rec.id.endswith("h"))
        rec.end(ABORT, str(e))
        return None
    except (socket.timeout, TimeoutError):
        cl.drop()
        rec.end(HANG, "no progress for %s s" % cl.timeout)
        return None
    except h.ProtocolError as e:
        cl.drop()
        rec.end(WRONG, "protocol error: %s" % e)
        return None
    except OSError as e:
        cl.drop()
        rec.end(CLOSED, "read: %s" % e)
        return None
    rec.status = r.status
    rec.nbytes = r.body_len
    if wants_close(r):
        cl.drop()
    return r


def check_echo(rec, r, body_len=0, body_sha=None):
    try:
        e = json.loads(r.body)
    except ValueError:
        return rec.end(WRONG, "echo body is not JSON: %r" % r.body[:200])
    q = dict(urllib.parse.parse_qsl(e.get("query") or ""))
    ids = [v for k, v in e.get("headers", []) if k.lower() == "x-soak-id"]
    auth = [v for k, v in e.get("headers", []) if k.lower() == "authorization"]
    if q.get("soak") != rec.id or ids != [rec.id]:
        return rec.end(WRONG, "answer for another request: query %r, X-Soak-Id %r" % (q, ids))
    if len(auth) != 1:
        return rec.end(WRONG, "upstream saw %d Authorization headers" % len(auth))
    rec.kid = token_kid(auth[0])
    if e.get("body_len") != body_len:
        return rec.end(WRONG, "upstream got %s body bytes, sent %d" % (e.get("body_len"), body_len))
    if body_sha and e.get("body_sha256") != body_sha:
        return rec.end(WRONG, "upstream got a different body (sha256)")
    return rec.end(OK)


# ------------------------------------------------------------------------------------------------
# Client threads


class Worker(threading.Thread):
    def __init__(self, soak, role, index):
        super().__init__(name="%s-%d" % (role, index), daemon=True)
        self.soak = soak
        self.role = role
        self.rng = random.Random(soak.seed * 1000 + index)
        self.records = []
        self.anomalies = []
        self.seq = 0
        self.prefix = "%s%d" % (role[:2], index)
        self.cl = Client(self, soak.proxy_port, soak.args.client_timeout)
        self.current = None

    def new(self, kind, method, target_fmt, suffix=""):
        self.seq += 1
        rid = "%s-%d%s" % (self.prefix, self.seq, suffix)
        rec = Rec(rid, kind, method, target_fmt.replace("{id}", rid), self.name)
        self.records.append(rec)
        self.current = rec
        return rec

    def run(self):
        fn = getattr(self, "role_" + self.role)
        try:
            while not self.soak.stop.is_set():
                fn()
                self.soak.note_progress()
        except Exception as e:  # a bug in this script must not pass for a proxy success
            import traceback
            self.anomalies.append((time.time(), "client thread crashed: %s\n%s" % (
                e, traceback.format_exc())))
        finally:
            self.cl.drop()

    def think(self, lo, hi):
        time.sleep(self.rng.uniform(lo, hi))

    # -- helpers ---------------------------------------------------------------------------------

    def send(self, rec, data):
        """Sends data on the current connection; False (rec ended) when the connection died."""
        try:
            self.cl.conn().send(data)
            return True
        except (socket.timeout, TimeoutError):
            self.cl.drop()
            rec.end(HANG, "send: no progress for %s s" % self.cl.timeout)
        except OSError as e:
            self.cl.drop()
            rec.end(CLOSED, "send: %s" % e)
            if isinstance(e, ConnectionRefusedError):
                time.sleep(0.1)  # the proxy is gone: the monitor will stop the run
        return False

    def head_bytes(self, rec, headers=(), version="HTTP/1.1"):
        hdrs = [("Host", "127.0.0.1:%d" % self.soak.proxy_port), ("X-Soak-Id", rec.id)]
        hdrs += list(headers)
        return ("%s %s %s\r\n" % (rec.method, rec.target, version) +
                "".join("%s: %s\r\n" % kv for kv in hdrs) + "\r\n").encode("latin-1")

    def simple(self, rec, body=b"", headers=(), check=None):
        """One request with an optional Content-Length body; the answer checked by check(r)."""
        if body:
            headers = list(headers) + [("Content-Length", str(len(body)))]
        if not self.send(rec, self.head_bytes(rec, headers) + body):
            return
        r = read_answer(self.cl, rec, rec.method)
        self.cl.idle()
        if r is None:
            return
        if not 200 <= r.status < 300:
            classify_status(rec, r)
            return
        check(r)

    def check_apps(self, rec, r):
        try:
            e = json.loads(r.body)
            link = e["links"]["self"]
        except (ValueError, KeyError, TypeError):
            return rec.end(WRONG, "/v1/apps answer: %r" % r.body[:200])
        want = "http://127.0.0.1:%d/v1/apps" % self.soak.proxy_port
        if not link.startswith(want):
            return rec.end(WRONG, "links.self %r, want %r (rewrite_links)" % (link, want))
        return rec.end(OK)

    def upload(self, rec, pieces, chunked, expect=False, abort_after=None, pace=None):
        """Streams pieces; reads the answer (an early one stops the upload). abort_after: close
        after that many body bytes. pace: seconds between pieces."""
        total = sum(len(p) for p in pieces)
        hdrs = [("Content-Type", "application/octet-stream")]
        hdrs.append(("Transfer-Encoding", "chunked") if chunked
                    else ("Content-Length", str(total)))
        if expect:
            hdrs.append(("Expect", "100-continue"))
        if not self.send(rec, self.head_bytes(rec, hdrs)):
            return None
        c = self.cl.c
        early = None
        try:
            if expect:
                r, _, _ = select.select([c.sock], [], [], 3.0)
                if r or c.buf:
                    head = c.read_head()
                    if head.status != 100:
                        early = head
            sent = 0
            for piece in ([] if early else pieces):
                data = (b"%x\r\n" % len(piece) + piece + b"\r\n") if chunked else piece
                off = 0
                while off < len(data):
                    rd, wr, _ = select.select([c.sock], [c.sock], [], self.cl.timeout)
                    if rd or c.buf:
                        head = c.read_head()
                        if head.status == 100:
                            continue
                        early = head
                        break
                    if not wr:
                        raise socket.timeout()
                    off += c.sock.send(data[off:off + 262144])
                if early:
                    break
                sent += len(piece)
                if abort_after is not None and sent >= abort_after:
                    self.cl.drop(hard=self.rng.random() < 0.5)
                    rec.end(ABORT, "client closed after %d of %d body bytes" % (sent, total))
                    return None
                if pace:
                    time.sleep(pace)
            if not early and chunked:
                c.send(b"0\r\n\r\n")
        except h.TruncatedResponse as e:
            self.cl.drop()
            rec.end(CLOSED, "upload: %s" % e)
            return None
        except (socket.timeout, TimeoutError):
            self.cl.drop()
            rec.end(HANG, "upload: no progress for %s s" % self.cl.timeout)
            return None
        except h.ProtocolError as e:
            self.cl.drop()
            rec.end(WRONG, "upload: protocol error %s" % e)
            return None
        except OSError as e:
            # The proxy may have answered before closing: read what is there.
            try:
                c.sock.settimeout(2)
                r = c.read_response("POST")
            except Exception:
                self.cl.drop()
                rec.end(CLOSED, "upload: %s" % e)
                return None
            self.cl.drop()
            rec.status = r.status
            if 200 <= r.status < 300:
                rec.end(WRONG, "2xx although the upload failed (%s)" % e)
            else:
                classify_status(rec, r)
            return None
        r = read_answer(self.cl, rec, "POST", head=early)
        self.cl.idle()
        if r is None:
            return None
        if early is not None and not wants_close(r):
            # The body was not sent whole: the connection cannot carry another request.
            self.cl.drop()
        if not 200 <= r.status < 300:
            classify_status(rec, r)
            return None
        if early is not None:
            rec.end(WRONG, "2xx before the request body was sent")
            return None
        return r

    # -- roles -----------------------------------------------------------------------------------

    def role_keepalive(self):
        x = self.rng.random()
        if x < 0.55:
            rec = self.new("get", "GET", "/__echo?soak={id}")
            self.simple(rec, check=lambda r: check_echo(rec, r))
        elif x < 0.75:
            body = os.urandom(self.rng.randint(1, 64 * 1024))
            rec = self.new("post", "POST", "/__echo?soak={id}")
            self.simple(rec, body, check=lambda r: check_echo(
                rec, r, len(body), hashlib.sha256(body).hexdigest()))
        elif x < 0.92:
            rec = self.new("apps", "GET", "/v1/apps?soak={id}")
            self.simple(rec, check=lambda r: self.check_apps(rec, r))
        else:
            rec = self.new("slow", "GET", "/__slow?delay=0.5&soak={id}")
            self.simple(rec, check=lambda r: rec.end(OK))
        self.think(0, 0.02)

    def role_pipeline(self):
        k = self.rng.randint(2, 6)
        recs = []
        data = b""
        for _ in range(k):
            if self.rng.random() < 0.8:
                rec = self.new("pipelined", "GET", "/__echo?soak={id}")
                data += self.head_bytes(rec)
            else:
                rec = self.new("pipelined", "GET", "/v1/apps?soak={id}")
                data += self.head_bytes(rec)
            recs.append(rec)
        try:
            self.cl.conn().send(data)
        except OSError as e:
            self.cl.drop()
            for rec in recs:
                rec.end(CLOSED, "pipelined send: %s" % e)
            if isinstance(e, ConnectionRefusedError):
                time.sleep(0.1)  # the proxy is gone: the monitor will stop the run
            return
        for i, rec in enumerate(recs):
            if self.cl.c is None:
                rec.end(CLOSED, "connection closed before this pipelined request's answer")
                continue
            r = read_answer(self.cl, rec)
            if r is None:
                continue
            if not 200 <= r.status < 300:
                classify_status(rec, r)
            elif rec.target.startswith("/v1/apps"):
                self.check_apps(rec, r)
            else:
                check_echo(rec, r)
        self.cl.idle()
        self.think(0.02, 0.08)

    def download(self, n, chunked=False, http10=False, abort_at=None):
        target = "/__bytes?n=%d%s&soak={id}" % (n, "&chunked=1" if chunked else "")
        suffix = ("h" if self.rng.random() < 0.5 else "s") if abort_at is not None else ""
        rec = self.new("download" + ("-abort" if abort_at is not None else ""), "GET", target,
                       suffix)
        version = "HTTP/1.0" if http10 else "HTTP/1.1"
        if not self.send(rec, self.head_bytes(rec, version=version)):
            return
        sink = Sink(abort_at, n)
        r = read_answer(self.cl, rec, "GET", sink=sink)
        self.cl.idle()
        if r is None:
            return
        if not 200 <= r.status < 300:
            r.body = sink.head
            classify_status(rec, r)
            return
        if abort_at is not None:
            self.cl.drop(hard=rec.id.endswith("h"))
            rec.end(ABORT, "the whole body came before the abort")
            return
        if r.body_len != n:
            close_delimited = not r.header_all("content-length") and not r.chunked
            if close_delimited and r.body_len < n:
                # An HTTP/1.0 body ends with the connection: a cut is only seen by its length.
                rec.end(CLOSED, "close-delimited body cut at %d of %d bytes" % (r.body_len, n))
            else:
                rec.end(WRONG, "%d body bytes, want %d" % (r.body_len, n))
            return
        if sink.hexdigest() != pattern_sha(n):
            rec.end(WRONG, "download content differs from the pattern")
            return
        rec.end(OK)

    def role_download(self):
        x = self.rng.random()
        big = self.soak.args.download_mib * MiB
        if x < 0.12:
            self.download(big, chunked=self.rng.random() < 0.5,
                          abort_at=self.rng.randint(1, big - 1))
        elif x < 0.22:
            self.download(MiB + 17, chunked=self.rng.random() < 0.5, http10=True)
        elif x < 0.45:
            self.download(self.rng.choice([1, 1000, 65536, MiB + 17]),
                          chunked=self.rng.random() < 0.5)
        else:
            self.download(big, chunked=self.rng.random() < 0.4)
        self.think(0.05, 0.4)

    def role_upload(self):
        x = self.rng.random()
        total = self.rng.choice([1, 1000, 256 * 1024, MiB, 3 * MiB, 8 * MiB])
        pieces, sha = upload_pieces(total, self.rng)
        chunked = self.rng.random() < 0.6
        expect = self.rng.random() < 0.25
        if x < 0.12:
            rec = self.new("upload-abort", "POST", "/__echo?soak={id}")
            self.upload(rec, pieces, chunked, expect, abort_after=self.rng.randint(0, total - 1)
                        if total > 1 else 0)
        else:
            rec = self.new("upload-chunked" if chunked else "upload", "POST", "/__echo?soak={id}")
            r = self.upload(rec, pieces, chunked, expect)
            if r is not None:
                check_echo(rec, r, total, sha)
        self.think(0.05, 0.3)

    def role_abort(self):
        x = self.rng.random()
        if x < 0.3:
            rec = self.new("abort-waiting", "GET", "/__slow?delay=1.5&soak={id}")
            if self.send(rec, self.head_bytes(rec)):
                time.sleep(self.rng.uniform(0.05, 0.6))
                self.cl.drop(hard=self.rng.random() < 0.5)
                rec.end(ABORT, "client closed while waiting for the answer")
        elif x < 0.5:
            rec = self.new("abort-head", "GET", "/__echo?soak={id}")
            head = self.head_bytes(rec)
            if self.send(rec, head[:self.rng.randint(1, len(head) - 3)]):
                time.sleep(self.rng.uniform(0, 0.2))
                self.cl.drop(hard=self.rng.random() < 0.5)
                rec.end(ABORT, "client closed inside the request head")
        elif x < 0.75:
            n = 4 * MiB
            self.download(n, chunked=self.rng.random() < 0.5, abort_at=self.rng.randint(1, n - 1))
        else:
            total = 2 * MiB
            pieces, _ = upload_pieces(total, self.rng)
            rec = self.new("upload-abort", "POST", "/__echo?soak={id}")
            self.upload(rec, pieces, self.rng.random() < 0.5,
                        abort_after=self.rng.randint(0, total - 1))
        self.cl.drop()
        self.think(0.05, 0.3)

    def role_slowupload(self):
        """Sends 1 MiB steadily over upstream_response_timeout + 3 s: the upstream answers only
        once the body is whole, so this must succeed (RFC 9112 has the response follow the
        request; a response timeout that counts while the body is still moving cuts every
        upload slower than the timeout)."""
        pace_total = LIMITS["upstream_response_timeout"] + 3.0
        total = MiB
        n = 32
        pieces, sha = upload_pieces(total, self.rng)
        # Regroup into n pieces sent at an even pace.
        blob = b"".join(pieces)
        step = total // n
        pieces = [blob[i:i + step] for i in range(0, total, step)]
        rec = self.new("upload-slow", "POST", "/__echo?soak={id}")
        r = self.upload(rec, pieces, chunked=self.rng.random() < 0.5, pace=pace_total / n)
        if r is not None:
            check_echo(rec, r, total, sha)
        self.think(1, 3)


ROLES = [("keepalive", 2), ("pipeline", 1), ("download", 2), ("upload", 2), ("abort", 1),
         ("slowupload", 1)]


# ------------------------------------------------------------------------------------------------
# The run


class Fault:
    def __init__(self, kind):
        self.kind = kind
        self.start = time.time()
        self.end = None
        self.detail = ""

    def window(self):
        post = POST_GRACE
        if self.kind == "stall":
            post += LIMITS["upstream_response_timeout"]
        return self.start - PRE_GRACE, (self.end or time.time()) + post


class Soak:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed
        self.stop = threading.Event()
        self.all_done = threading.Event()
        self.log_rotations = 0
        self.last_counters = {}
        self.counter_drops = set()
        self.faults = []
        self.reloads = []            # dicts: time, kind, confirmed, kid
        self.samples = []            # (time, rss KiB, fds)
        self.failures = []           # check failures (strings)
        self.alive_failure = None
        self.death_time = None
        self.progress = 0
        self.progress_lock = threading.Lock()

    def note_progress(self):
        with self.progress_lock:
            self.progress += 1

    # -- setup -----------------------------------------------------------------------------------

    def write_config(self, variant=0, invalid=False):
        if invalid:
            with open(self.config_path, "w") as f:
                f.write('{"credentials": {"asc": {"profile": "app-store-connect",,}}\n')
            return
        limits = dict(LIMITS)
        if variant % 2:
            limits["upstream_pool_size"] = 4
            limits["max_body_bytes"] = 512 * MiB
        h.write_config({"asc": self.cred}, [self.route], workers=self.args.workers,
                       listen=["127.0.0.1:0"], admin_listen="127.0.0.1:0",
                       path=self.config_path, limits=limits,
                       access_log={"path": self.access_log, "format": "json"},
                       token_refresh_margin=TOKEN_REFRESH_MARGIN)

    def setup(self):
        h.BINARY = os.path.abspath(self.args.binary)
        log("certificates, keys and stand-ins (temporary directory %s)" % h.workdir())
        self.key = h.make_key()
        self.kids = [self.key.kid]
        # Short-lived tokens, so that the refresher re-mints several times under load.
        self.cred = h.credential("app-store-connect", self.key, token_lifetime=TOKEN_LIFETIME,
                                 clock_skew=60)
        self.up = Upstreams()
        self.route = h.route(self.up.relay.address, "app-store-connect", "asc")
        d = h.new_dir("soak")
        self.config_path = os.path.join(d, "config.json")
        self.access_log = os.path.join(d, "access.jsonl")
        self.write_config()
        env = {"APPLE_AUTH_PROXY_LOG_LEVEL": "info"}
        self.proxy = h.start_proxy(self.config_path, env=env)
        self.pid = self.proxy.pid
        self.proxy_port = self.proxy.port
        self.admin_port = self.proxy.admin_port
        log("proxy pid %d on 127.0.0.1:%d (admin %s), relay on %s -> stand-in %s" % (
            self.pid, self.proxy_port, self.admin_port, self.up.relay.address,
            self.up.good[-1].address))
        self.launch = (proc_rss_kib(self.pid), proc_fds(self.pid))

    def sample(self):
        s = (time.time(), proc_rss_kib(self.pid), proc_fds(self.pid))
        self.samples.append(s)
        return s

    def metrics(self):
        st, text = admin_get(self.admin_port, "/metrics")
        if st != 200:
            raise RuntimeError("/metrics answered %d" % st)
        return parse_metrics(text)

    def wait_quiet(self, timeout):
        """Waits until the proxy holds no client or upstream connection; returns the seconds
        waited, or None when it did not happen in time."""
        t = time.time()
        while time.time() - t < timeout:
            m = self.metrics()
            conns = (metric_value(m, "apple_auth_proxy_client_connections") +
                     sum(metric_by_label(m, "apple_auth_proxy_upstream_connections",
                                         "state").values()))
            if conns == 0:
                return time.time() - t
            time.sleep(0.5)
        return None

    def warm_up(self):
        """One request of each kind, then idle until every connection has closed: the
        baseline for the resource check."""
        log("warm-up")
        w = Worker(self, "keepalive", 99)
        w.prefix = "warm"
        for role in ("keepalive", "keepalive", "keepalive", "keepalive", "pipeline"):
            getattr(w, "role_" + role)()
        w.download(self.args.download_mib * MiB)
        w.download(MiB, chunked=True)
        pieces, sha = upload_pieces(MiB, w.rng)
        rec = w.new("upload", "POST", "/__echo?soak={id}")
        r = w.upload(rec, pieces, True)
        if r is not None:
            check_echo(rec, r, MiB, sha)
        w.cl.drop()
        bad = [r for r in w.records if r.outcome != OK]
        if bad:
            raise RuntimeError("warm-up failed:\n  " + "\n  ".join(r.describe() for r in bad))
        self.warm_records = w.records
        waited = self.wait_quiet(LIMITS["keepalive_timeout"] + LIMITS["upstream_idle_timeout"] + 10)
        if waited is None:
            raise RuntimeError("connections still open after the warm-up")
        time.sleep(1)
        self.baseline = self.sample()[1:]
        self.metrics_start = self.metrics()
        self.check_counters(self.metrics_start)
        log("baseline: RSS %s, %d descriptors (at launch: RSS %s, %d descriptors)" % (
            fmt_mib(self.baseline[0]), self.baseline[1], fmt_mib(self.launch[0]), self.launch[1]))

    # -- background activities -------------------------------------------------------------------

    def monitor(self):
        last_health = 0
        last_report = time.time()
        while not self.monitor_stop.is_set():
            if not self.proxy.alive():
                self.death_time = time.time()
                self.alive_failure = "the proxy exited with status %s during the run, at %.1f s" % (
                    self.proxy.proc.returncode, self.death_time - T0)
                self.stop.set()
                return
            try:
                self.sample()
            except OSError:
                continue
            now = time.time()
            if now - last_health >= 5:
                last_health = now
                try:
                    st, _ = admin_get(self.admin_port, "/healthz", timeout=10)
                    if st != 200:
                        self.failures.append("/healthz answered %d at %.1f s" % (st, now - T0))
                    self.check_counters(self.metrics())
                except Exception as e:
                    self.failures.append("/healthz or /metrics failed at %.1f s: %s" % (
                        now - T0, e))
            if now - last_report >= 15:
                last_report = now
                self.report_progress()
            self.monitor_stop.wait(1.0)

    def check_counters(self, m):
        """Counters (and histogram series) never go down while the process lives."""
        for key, v in m.items():
            name = key[0]
            if not name.endswith(("_total", "_count", "_sum", "_bucket")):
                continue
            old = self.last_counters.get(key)
            if old is not None and v < old and key not in self.counter_drops:
                self.counter_drops.add(key)
                self.failures.append("counter %s%s went down from %g to %g at %.1f s" % (
                    name, key[1], old, v, time.time() - T0))
            self.last_counters[key] = v

    def report_progress(self):
        counts = collections.Counter()
        for w in self.workers:
            for r in list(w.records):
                counts[r.bucket() if r.outcome else "in flight"] += 1
        s = self.samples[-1]
        active = [f.kind for f in self.faults if f.end is None]
        log("%d requests: %s | RSS %s, %d fds%s" % (
            sum(counts.values()), ", ".join("%s %d" % kv for kv in sorted(counts.items())),
            fmt_mib(s[1]), s[2], " | fault: " + ",".join(active) if active else ""))

    def sleep_until(self, t):
        while not self.stop.is_set():
            left = t - time.time()
            if left <= 0:
                return True
            self.stop.wait(min(left, 0.5))
        return False

    def inject(self, kind):
        relay = self.up.relay
        f = Fault(kind)
        self.faults.append(f)
        if kind in ("reset", "close"):
            f.detail = relay.cmd(kind)
        elif kind == "stall":
            relay.cmd("stall")
            self.stop.wait(STALL_SECONDS)
            f.detail = relay.cmd("unstall")
        elif kind == "restart":
            relay.cmd("listen off")
            self.up.restart_good()
            self.stop.wait(RESTART_DOWN_SECONDS)
            relay.cmd("target " + self.up.good[-1].address)
            relay.cmd("listen on")
            f.detail = "stand-in now on %s" % self.up.good[-1].address
        elif kind.startswith("cert-"):
            bad = self.up.bad[kind[5:]]
            relay.cmd("target " + bad.address)
            f.detail = relay.cmd("close")
            self.stop.wait(SWAP_SECONDS)
            relay.cmd("target " + self.up.good[-1].address)
        f.end = time.time()
        log("fault %s: %.1f s (%s)" % (kind, f.end - f.start, f.detail))

    def fault_loop(self):
        interval = self.args.fault_interval
        t = self.load_start + interval * 0.6
        i = 0
        while t + STALL_SECONDS + 12 < self.load_end:
            if not self.sleep_until(t):
                break
            try:
                self.inject(FAULT_CYCLE[i % len(FAULT_CYCLE)])
            except Exception as e:
                self.failures.append("fault injection failed: %s" % e)
                break
            i += 1
            t += interval
        # The stand-ins this thread started die with it (the harness sets PR_SET_PDEATHSIG,
        # which follows the forking thread): it lives until the run is over.
        self.all_done.wait()

    def rotate_access_log(self):
        """What logrotate does: rename the file, then SIGUSR1 to reopen it. Lines written in
        between land in the renamed file; every file is read at the end."""
        self.log_rotations += 1
        before = self.stderr_count(r"SIGUSR1: access log reopened")
        os.rename(self.access_log, "%s.%d" % (self.access_log, self.log_rotations))
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.time() + 10
        while self.stderr_count(r"SIGUSR1: access log reopened") <= before:
            if time.time() > deadline:
                self.failures.append("SIGUSR1 at %.1f s: no 'access log reopened' line within "
                                     "10 s" % (time.time() - T0))
                return
            time.sleep(0.05)
        log("SIGUSR1: access log rotated (%d)" % self.log_rotations)

    def stderr_count(self, pattern):
        return len(re.findall(pattern, self.proxy.stderr_text(), re.M))

    def reload_loop(self):
        interval = self.args.reload_interval
        t = self.load_start + interval
        i = 0
        variant = 0
        while t < self.load_end - 5:
            if not self.sleep_until(t):
                return
            kind = ["key", "limits", "invalid"][i % 3]
            ok_before = self.stderr_count(r"reloaded ")
            bad_before = self.stderr_count(r"reload rejected")
            rec = {"time": time.time(), "kind": kind, "confirmed": None, "kid": None}
            if kind == "key":
                key = h.make_key()          # its public key goes to the stand-ins' keys dir
                self.cred["key_id"] = key.kid
                self.cred["private_key_file"] = key.private_path
                self.kids.append(key.kid)
                rec["kid"] = key.kid
                self.write_config(variant)
            elif kind == "limits":
                variant += 1
                self.write_config(variant)
                self.rotate_access_log()
            else:
                self.write_config(invalid=True)
            rec["time"] = time.time()
            os.kill(self.pid, signal.SIGHUP)
            want = r"reload rejected" if kind == "invalid" else r"reloaded "
            before = bad_before if kind == "invalid" else ok_before
            deadline = time.time() + 10
            while time.time() < deadline:
                if self.stderr_count(want) > before:
                    rec["confirmed"] = time.time()
                    break
                time.sleep(0.05)
            self.reloads.append(rec)
            log("SIGHUP (%s%s): %s" % (kind, " " + rec["kid"] if rec["kid"] else "",
                                       "confirmed after %.2f s" % (rec["confirmed"] - rec["time"])
                                       if rec["confirmed"] else "NOT CONFIRMED"))
            if kind == "invalid":
                self.write_config(variant)  # leave a valid file behind
            i += 1
            t += interval

    # -- the run ---------------------------------------------------------------------------------

    def run(self):
        self.setup()
        self.warm_up()
        self.monitor_stop = threading.Event()
        self.workers = []
        skip = set(filter(None, self.args.skip.split(",")))
        n = 0
        for role, count in ROLES:
            if role in skip:
                continue
            for _ in range(count * self.args.scale):
                n += 1
                self.workers.append(Worker(self, role, n))
        self.load_start = time.time()
        self.load_end = self.load_start + self.args.duration
        log("load: %d client threads (%s) for %d s; faults every %d s, SIGHUP every %d s" % (
            len(self.workers), ", ".join("%s x%d" % (r, c * self.args.scale) for r, c in ROLES
                                         if r not in skip),
            self.args.duration, self.args.fault_interval, self.args.reload_interval))
        mon = threading.Thread(target=self.monitor, daemon=True)
        mon.start()
        for w in self.workers:
            w.start()
        bg = [threading.Thread(target=self.fault_loop, daemon=True),
              threading.Thread(target=self.reload_loop, daemon=True)]
        for t in bg:
            t.start()
        self.sleep_until(self.load_end)
        self.stop.set()
        log("load stopped; waiting for the clients to finish their requests")
        bg[1].join(60)
        deadline = time.time() + self.args.client_timeout + 30
        for w in self.workers:
            w.join(max(0.1, deadline - time.time()))
            if w.is_alive():
                self.failures.append("client thread %s still busy %d s after the load stopped "
                                     "(request %s)" % (w.name, self.args.client_timeout + 30,
                                                       w.current.describe() if w.current else
                                                       "-"))
        self.load_stopped = time.time()
        self.monitor_stop.set()
        mon.join(5)
        # Make sure no fault is left active, whatever happened.
        try:
            self.up.relay.cmd("unstall")
            self.up.relay.cmd("listen on")
            self.up.relay.cmd("target " + self.up.good[-1].address)
        except Exception as e:
            self.failures.append("relay: %s" % e)
        if self.alive_failure:
            return
        settle = LIMITS["keepalive_timeout"] + LIMITS["upstream_idle_timeout"] + 15
        log("waiting up to %d s for the idle timeouts to close every connection" % settle)
        waited = self.wait_quiet(settle)
        if waited is None:
            m = self.metrics()
            self.failures.append("connections still open %d s after the load: clients %d, "
                                 "upstream %s" % (settle, metric_value(
                                     m, "apple_auth_proxy_client_connections"),
                                     dict(metric_by_label(
                                         m, "apple_auth_proxy_upstream_connections", "state"))))
        time.sleep(1.5)  # the access log is written every 200 ms
        self.end_sample = self.sample()[1:]
        self.metrics_end = self.metrics()
        self.check_counters(self.metrics_end)
        log("stopping the proxy (SIGTERM)")
        self.exit_status = self.proxy.stop(signal.SIGTERM, timeout=LIMITS["drain_timeout"] + 10)
        self.all_done.set()

    # -- checks and summary ----------------------------------------------------------------------

    def explain(self, rec):
        """The faults whose window holds rec's failure and which can cause it."""
        what = rec.code if rec.outcome == PROXY_ERROR else CLOSED
        out = []
        for f in self.faults:
            lo, hi = f.window()
            if lo <= rec.t_end <= hi and what in FAULT_EFFECTS[f.kind]:
                out.append(f)
        return out

    def check(self):
        recs = [r for w in self.workers for r in w.records]
        self.recs = recs
        fail = self.failures
        by_id = {r.id: r for r in recs}
        if len(by_id) != len(recs):
            fail.append("duplicate request ids in the client records (a bug in soak.py)")
        unfinished = [r for r in recs if r.outcome is None]
        for r in unfinished:
            fail.append("no outcome recorded: %s" % r.describe())
        for w in self.workers:
            for t, a in w.anomalies:
                if self.death_time and t >= self.death_time - 1.5 and "crashed" not in a:
                    continue
                fail.append("%s at %.1f s: %s" % (w.name, t - T0, a))

        # Wrong answers and hangs.
        for r in recs:
            if r.outcome == WRONG:
                fail.append("wrong answer: " + r.describe())
            elif r.outcome == HANG and not (self.death_time and r.t_end >= self.death_time - 1.5):
                fail.append("hang: " + r.describe())

        # Every failure explained by a fault.
        self.unexplained = []
        self.after_death = 0
        self.per_fault = collections.defaultdict(collections.Counter)
        for r in recs:
            if (self.death_time and r.outcome in (PROXY_ERROR, CLOSED, HANG) and
                    r.t_end >= self.death_time - 1.5):
                self.after_death += 1   # reported once, as the crash
                continue
            if r.outcome in (PROXY_ERROR, CLOSED):
                fs = self.explain(r)
                if fs:
                    self.per_fault[id(fs[0])][r.bucket()] += 1
                else:
                    self.unexplained.append(r)
        for r in self.unexplained[:40]:
            active = [(f.kind, round(f.start - T0, 1), round(f.end - T0, 1)) for f in self.faults
                      if f.window()[0] - 10 <= r.t_end <= f.window()[1] + 10]
            fail.append("unexplained failure: %s (faults nearby: %s)" % (r.describe(), active))
        if len(self.unexplained) > 40:
            fail.append("... and %d more unexplained failures" % (len(self.unexplained) - 40))

        # Recovery after each fault: some request started after it ended succeeded.
        self.recovery = {}
        oks = sorted((r.t_start, r.t_end) for r in recs if r.outcome == OK)
        for f in self.faults:
            after = [te for ts, te in oks if ts >= f.end]
            self.recovery[id(f)] = (min(after) - f.end) if after else None
            if not after and not (self.death_time and f.end >= self.death_time - 5):
                fail.append("no successful request after the %s fault at %.1f s" % (
                    f.kind, f.start - T0))

        # The stand-ins' view: duplicates, and that every 2xx came from upstream.
        seen = collections.Counter()
        self.bad_tokens = collections.Counter()
        for s in self.up.good:
            for e in s.requests():
                q = dict(urllib.parse.parse_qsl(e.get("query") or ""))
                if "soak" in q:
                    seen[q["soak"]] += 1
                if not e.get("token_ok"):
                    self.bad_tokens[e.get("token_error")] += 1
        for err, n in self.bad_tokens.items():
            fail.append("the upstream refused the proxy's token %d times: %s" % (n, err))
        self.upstream_seen = seen
        self.upstream_dups = 0
        for r in recs:
            n = seen.get(r.id, 0)
            limit = 1 if r.method == "POST" else 2
            if n > limit:
                fail.append("the upstream received %s %d times: %s" % (r.id, n, r.describe()))
            if n == 2:
                self.upstream_dups += 1
            if r.outcome == OK and n == 0:
                fail.append("complete 2xx that the upstream never received: " + r.describe())
        for kind, s in self.up.bad.items():
            n = len(s.requests())
            if n:
                fail.append("the stand-in with the %s certificate received %d requests (a token "
                            "went over a connection that failed verification)" % (kind, n))

        # The access log: one line per request, matching what the client saw.
        self.access = collections.defaultdict(list)
        files = [self.access_log] + ["%s.%d" % (self.access_log, i)
                                     for i in range(1, self.log_rotations + 1)]
        for path in files:
            if not os.path.exists(path):
                fail.append("access log %s is missing" % path)
                continue
            with open(path, "rb") as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        fail.append("access log line is not JSON (torn?): %r" % line[:200])
                        continue
                    q = dict(urllib.parse.parse_qsl(
                        urllib.parse.urlsplit(e.get("path") or "").query))
                    if "soak" in q:
                        self.access[q["soak"]].append(e)
        warm = {r.id for r in self.warm_records}
        for rid, lines in self.access.items():
            if rid in warm:
                continue
            if len(lines) > 1:
                fail.append("%d access log lines for %s (answered twice?)" % (len(lines), rid))
            if rid not in by_id:
                fail.append("access log line for a request no client sent: %s" % lines[0])
        for r in recs:
            lines = self.access.get(r.id, [])
            if self.death_time and r.t_end >= self.death_time - 1.5:
                continue  # the access log is written every 200 ms: the last lines died with it
            if r.outcome == OK and not (lines and lines[0].get("status") == r.status and
                                        lines[0].get("outcome") == "ok"):
                fail.append("access log disagrees with a complete %s: %s / %s" % (
                    r.status, r.describe(), lines))
            if r.outcome == PROXY_ERROR and not (lines and lines[0].get("status") == r.status and
                                                 lines[0].get("error") == r.code):
                fail.append("access log disagrees with a proxy error: %s / %s" % (
                    r.describe(), lines))

        self.metric_errors, self.log_errors, self.client_errors = {}, {}, {}
        self.metric_requests = {}
        self.mints = "?"
        if not self.death_time:
            name = "apple_auth_proxy_token_mints_total"
            self.mints = int(sum(metric_by_label(self.metrics_end, name, "credential").values()) -
                             sum(metric_by_label(self.metrics_start, name, "credential").values()))
            # A valid reload signs a token for every route (docs/architecture.md), and
            # counters survive reloads (docs/operations.md).
            valid = sum(1 for rl in self.reloads if rl["kind"] != "invalid" and rl["confirmed"])
            if self.mints < valid:
                fail.append("token_mints_total rose by %d during the load, but %d valid reloads "
                            "each signed a token (a reload must not reset the counter)" % (
                                self.mints, valid))
        used = {r.kid for r in recs if r.kid}
        self.kids_used = [k for k in self.kids if k in used]
        self.kid_mismatch = 0
        self.check_sanitizers()
        if self.death_time:
            # No metrics, resources or exit status to compare once the proxy is gone.
            return
        # Metrics: errors_total by code against the access log and the clients.
        m0 = metric_by_label(self.metrics_start, "apple_auth_proxy_errors_total", "code")
        m1 = metric_by_label(self.metrics_end, "apple_auth_proxy_errors_total", "code")
        self.metric_errors = {k: int(m1[k] - m0.get(k, 0)) for k in m1 if m1[k] - m0.get(k, 0)}
        self.log_errors = collections.Counter()
        for rid, lines in self.access.items():
            if rid in warm:
                continue
            for e in lines:
                if e.get("error") and e.get("outcome") != "upstream_cut":
                    self.log_errors[e["error"]] += 1
        self.client_errors = collections.Counter(r.code for r in recs if r.outcome == PROXY_ERROR)
        for code in set(self.metric_errors) | set(self.log_errors) | set(self.client_errors):
            mv = self.metric_errors.get(code, 0)
            lv = self.log_errors.get(code, 0)
            cv = self.client_errors.get(code, 0)
            if mv != lv:
                fail.append("errors_total{code=%s} rose by %d, the access log has %d such "
                            "answers" % (code, mv, lv))
            if cv > mv:
                fail.append("clients saw %d answers %s, errors_total{code=%s} counted %d" % (
                    cv, code, code, mv))
        r0 = metric_by_label(self.metrics_start, "apple_auth_proxy_requests_total", "code")
        r1 = metric_by_label(self.metrics_end, "apple_auth_proxy_requests_total", "code")
        self.metric_requests = {k: int(r1[k] - r0.get(k, 0)) for k in r1 if r1[k] - r0.get(k, 0)}
        log_codes = collections.Counter(str(e.get("status")) for rid, lines in self.access.items()
                                        if rid not in warm for e in lines)
        if self.metric_requests.get("200", 0) != log_codes.get("200", 0):
            fail.append("requests_total{code=200} rose by %d, the access log has %d" % (
                self.metric_requests.get("200", 0), log_codes.get("200", 0)))

        self.check_reloads(recs)
        self.check_resources()

    def check_reloads(self, recs):
        fail = self.failures
        # Reloads: each confirmed; after a key rotation, the new key id is used.
        for i, rl in enumerate(self.reloads):
            if not rl["confirmed"]:
                fail.append("SIGHUP (%s) at %.1f s: no %s line within 10 s" % (
                    rl["kind"], rl["time"] - T0,
                    "'reload rejected'" if rl["kind"] == "invalid" else "'reloaded'"))
        rotations = [rl for rl in self.reloads if rl["kind"] == "key" and rl["confirmed"]]
        self.kid_mismatch = 0
        for i, rl in enumerate(rotations):
            # Requests wholly between this rotation (plus a second) and the next SIGHUP. The
            # end counts, not the start: a pipelined request waits its turn on the connection.
            until = rotations[i + 1]["time"] if i + 1 < len(rotations) else float("inf")
            for r in recs:
                if (r.kid and rl["confirmed"] + 1.0 <= r.t_start and r.t_end < until and
                        r.kid != rl["kid"]):
                    self.kid_mismatch += 1
                    if self.kid_mismatch <= 5:
                        fail.append("request %s at %.1f s carried key %s, not %s (rotated at "
                                    "%.1f s)" % (r.id, r.t_start - T0, r.kid, rl["kid"],
                                                 rl["confirmed"] - T0))

    def check_resources(self):
        fail = self.failures
        rss_end, fds_end = self.end_sample
        rss_base, fds_base = self.baseline
        if rss_end > rss_base + self.args.rss_tolerance_mib * 1024:
            fail.append("RSS %s after the load, %s at the start (tolerance +%d MiB)" % (
                fmt_mib(rss_end), fmt_mib(rss_base), self.args.rss_tolerance_mib))
        if fds_end > fds_base + self.args.fd_tolerance:
            fail.append("%d descriptors after the load, %d at the start (tolerance +%d)" % (
                fds_end, fds_base, self.args.fd_tolerance))
        if self.exit_status != 0:
            fail.append("exit status %s on SIGTERM, want 0" % self.exit_status)

    def check_sanitizers(self):
        fail = self.failures
        err = self.proxy.stderr_text()
        for pat in ("AddressSanitizer", "LeakSanitizer", "runtime error:", "Segmentation",
                    "double free", "corrupted"):
            if pat in err:
                fail.append("proxy stderr mentions %r" % pat)

    def summary(self):
        recs = self.recs
        counts = collections.Counter(r.bucket() for r in recs)
        complete = sum(1 for r in recs if r.outcome in (OK, PROXY_ERROR) or
                       (r.outcome == WRONG and r.status))
        upstream_ok = counts.get(OK, 0)
        print()
        print("=" * 78)
        print("soak summary: %s, %d s of load, %d client threads, proxy workers %d, seed %d" % (
            self.args.binary, self.args.duration, len(self.workers), self.args.workers,
            self.seed))
        print("-" * 78)
        print("requests sent                          %8d" % len(recs))
        print("  answered (a complete response)       %8d" % complete)
        print("    by the upstream (complete 2xx)     %8d" % upstream_ok)
        print("    by the proxy (its error status)    %8d" % sum(
            v for k, v in counts.items() if k[:1] == "5"))
        print("  failed or abandoned                  %8d" % (len(recs) - upstream_ok))
        for k in sorted(counts):
            if k == OK:
                continue
            label = {CLOSED: "connection closed (no complete answer)",
                     ABORT: "client abort (on purpose)",
                     HANG: "client timeout (hang)", WRONG: "wrong answer"}.get(k, k)
            print("    %-36s %8d" % (label, counts[k]))
        print("  unexplained failures                 %8d" % len(self.unexplained))
        if self.death_time:
            print("  failed because the proxy had died    %8d" % self.after_death)
        kinds = collections.Counter(r.kind for r in recs)
        print("  by kind: " + ", ".join("%s %d" % kv for kv in sorted(kinds.items())))
        print("  GETs the upstream received twice (the proxy's retry): %d" % self.upstream_dups)
        print("-" * 78)
        print("faults injected: %d" % len(self.faults))
        for f in self.faults:
            eff = self.per_fault.get(id(f), {})
            rec_t = self.recovery.get(id(f))
            print("  %7.1f s  %-16s %5.1f s  failures: %-48s recovered %s" % (
                f.start - T0, f.kind, f.end - f.start,
                ", ".join("%s %d" % kv for kv in sorted(eff.items())) or "none",
                "after %.2f s" % rec_t if rec_t is not None else "NEVER"))
        print("reloads (SIGHUP): %d" % len(self.reloads))
        for rl in self.reloads:
            print("  %7.1f s  %-8s %s%s" % (
                rl["time"] - T0, rl["kind"],
                "confirmed in %.2f s" % (rl["confirmed"] - rl["time"]) if rl["confirmed"]
                else "NOT CONFIRMED", " (key %s)" % rl["kid"] if rl["kid"] else ""))
        print("  key ids seen by the upstream: %s; requests with a stale key after a rotation: %d"
              % (", ".join(self.kids_used), self.kid_mismatch))
        print("  tokens minted during the load: %s; tokens the upstream refused: %d; access log "
              "rotations (SIGUSR1): %d" % (self.mints, sum(self.bad_tokens.values()),
                                           self.log_rotations))
        print("-" * 78)
        print("errors_total delta by code (metrics / access log / seen by clients):")
        for code in sorted(set(self.metric_errors) | set(self.log_errors) |
                           set(self.client_errors)):
            print("  %-32s %6d / %6d / %6d" % (code, self.metric_errors.get(code, 0),
                                               self.log_errors.get(code, 0),
                                               self.client_errors.get(code, 0)))
        print("requests_total delta by status: %s" % ", ".join(
            "%s %d" % kv for kv in sorted(self.metric_requests.items())))
        print("-" * 78)
        peak_rss = max(s[1] for s in self.samples)
        peak_fds = max(s[2] for s in self.samples)
        print("proxy RSS:   launch %s, start (after warm-up) %s, peak %s, end %s "
              "(tolerance +%d MiB)" % (fmt_mib(self.launch[0]), fmt_mib(self.baseline[0]),
                                      fmt_mib(peak_rss), fmt_mib(self.end_sample[0]),
                                      self.args.rss_tolerance_mib))
        print("descriptors: launch %d, start %d, peak %d, end %d (tolerance +%d)" % (
            self.launch[1], self.baseline[1], peak_fds, self.end_sample[1],
            self.args.fd_tolerance))
        print("exit status on SIGTERM: %s" % self.exit_status)
        print("-" * 78)
        if self.failures:
            print("FAILED CHECKS (%d):" % len(self.failures))
            for f in self.failures[:120]:
                print("  - " + f)
            if len(self.failures) > 120:
                print("  ... %d more" % (len(self.failures) - 120))
        print("verdict: %s" % ("PASS" if not self.failures else "FAIL"))
        print("=" * 78)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "apple-auth-proxy"))
    ap.add_argument("--duration", type=int, default=int(os.environ.get("SOAK_SECONDS") or 300),
                    help="seconds of load (default: $SOAK_SECONDS or 300)")
    ap.add_argument("--workers", type=int, default=2, help="proxy worker threads")
    ap.add_argument("--scale", type=int, default=1, help="multiply the client threads")
    ap.add_argument("--skip", default="", help="comma-separated roles to leave out: " +
                    ",".join(r for r, _ in ROLES))
    ap.add_argument("--fault-interval", type=int, default=15)
    ap.add_argument("--reload-interval", type=int, default=30)
    ap.add_argument("--download-mib", type=int, default=20)
    ap.add_argument("--client-timeout", type=float, default=60.0)
    ap.add_argument("--rss-tolerance-mib", type=int, default=16)
    ap.add_argument("--fd-tolerance", type=int, default=8)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 16)
    if not os.path.exists(args.binary):
        ap.error("%s does not exist (make build)" % args.binary)
    random.seed(args.seed)
    soak = Soak(args)
    ok = False
    try:
        soak.run()
        if soak.alive_failure:
            soak.failures.insert(0, soak.alive_failure)
            soak.exit_status = soak.proxy.proc.returncode
            soak.end_sample = soak.samples[-1][1:] if soak.samples else (0, 0)
            soak.metrics_end = soak.metrics_start
            lines = soak.proxy.stderr_text().splitlines()
            first = [i for i, l in enumerate(lines) if "Sanitizer" in l or "runtime error" in l]
            shown = lines[first[0]:first[0] + 40] if first else lines[-40:]
            sys.stdout.write("proxy stderr (%s):\n%s\n" % (
                "the sanitizer's report" if first else "last 40 lines", "\n".join(shown)))
        soak.check()
        soak.summary()
        ok = not soak.failures
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        soak.all_done.set()
        if not ok:
            os.environ["AAP_KEEP_TMP"] = "1"
            try:
                soak.up.relay.stop()
            except Exception:
                pass
        else:
            try:
                soak.up.relay.stop()
            except Exception:
                pass
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
