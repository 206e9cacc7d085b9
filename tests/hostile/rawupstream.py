"""rawupstream: a recording, scriptable TLS upstream for the hostile-input suite.

It stands where Apple would: the proxy connects to it over TLS (a test certificate from
tests/upstream/certs.py) and it records, per TCP connection, whether it was accepted at all,
the TLS outcome (SNI and ALPN offered, handshake error), and every application byte received.
It splits what it receives into requests (leniently: just enough framing to know where a
request ends) so that it can answer each one; the tests then judge each recorded request
strictly with parse_request_strict() (below), which is deliberately much stricter than the
splitter.

Answers follow a script. A script is a list of actions, or a callable (conn, raw_request) ->
list of actions. Actions:

    b"..."                   send these bytes
    ("sleep", seconds)       pause
    "close"                  close cleanly (TLS close_notify, then FIN)
    "dirty_close"            close the TCP connection without close_notify
    "reset"                  close with RST (SO_LINGER 0)
    "hang"                   send nothing more; read (and record) until the peer closes
    ("stream", head, total)  send head, then `total` body bytes in 64 KiB writes (the number
                             sent so far is conn.body_sent)

After the actions, unless one of them closed the connection, the next request is read.
cut_when(pred) closes a connection in the middle of a request instead: once, as soon as
pred(bytes that connection received since the call) is true.
Which script answers a request: the oldest one given to queue() (one-shot) if any, else the
one given to set_behaviour() (persistent) if any, else ok_response() with a small JSON body.
Every default answer carries X-Upstream-Conn (the connection id) and X-Upstream-Request (its
request number on that connection), so a client can tell which upstream connection served it.

Used in-process (threads), never as a subprocess:

    up = RawUpstream(cert="good")         # or "expired", "wrong_host", ...
    mark = up.mark()
    ... client sends through the proxy ...
    up.new_conns(mark), up.new_bytes(mark), up.requests_since(mark)
    up.stop()
"""
import re
import socket
import ssl
import struct
import threading
import time

TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
TOKEN_RE = re.compile(rb"^" + TCHAR + rb"+$")
REQUEST_LINE_RE = re.compile(rb"^(" + TCHAR + rb"+) (/[^\x00-\x20\x7f]*) HTTP/1\.1$")
JWT_RE = re.compile(rb"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
CHUNK_SIZE_RE = re.compile(rb"^([0-9a-fA-F]{1,16})$")

# RFC 9110 7.6.1 plus the proxy credentials: never on the wire between proxy and upstream.
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
              b"http2-settings", b"proxy-authorization", b"proxy-authenticate"}

MAX_HEAD = 1 << 20


def ok_response(body=b'{"ok":true}', status=200, reason=b"OK", headers=()):
    """A well-formed response with Content-Length."""
    if isinstance(body, str):
        body = body.encode()
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n" % (status, reason)
    for k, v in headers:
        head += k + b": " + v + b"\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


class StrictError(AssertionError):
    """A request the upstream received is not what the proxy must send."""


class UpstreamRequest:
    """One request as the upstream received it, parsed strictly: method, target (bytes),
    headers [(name bytes, value bytes)], body (decoded bytes), chunked (bool), raw (bytes)."""

    def __init__(self):
        self.method = self.target = None
        self.headers = []
        self.body = b""
        self.chunked = False
        self.content_length = None
        self.raw = b""

    def all(self, name):
        n = name.lower().encode() if isinstance(name, str) else name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def get(self, name, default=None):
        v = self.all(name)
        return v[0] if v else default

    def names(self):
        return [k.lower() for k, _ in self.headers]

    def __repr__(self):
        return "<UpstreamRequest %r %r %d headers, %d body bytes>" % (
            self.method, self.target, len(self.headers), len(self.body))


def parse_request_strict(raw, upstream_host, exact=True):
    """Parses raw as exactly one request from the proxy, as strictly as the proxy's own rules:
    CRLF line ends only and no bare CR, LF or NUL anywhere in the head; an origin-form request
    line with HTTP/1.1; token header names with one colon and no whitespace before it; values
    without control characters (HTAB allowed); exactly one Host equal to upstream_host; exactly
    one Authorization, "Bearer <JWT>"; no hop-by-hop field; no Expect; at most one framing
    header, Content-Length plain digits or Transfer-Encoding exactly "chunked"; a body that
    matches the framing (chunk sizes plain hex, no extensions, no trailers); and, with exact,
    no byte after the request. Returns an UpstreamRequest; raises StrictError naming the
    first violation."""
    if isinstance(upstream_host, str):
        upstream_host = upstream_host.encode()
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        raise StrictError("no CRLF CRLF ending the head: %r" % raw[:300])
    head = raw[:end + 2]
    rest = raw[end + 4:]
    for bad in (b"\x00",):
        if bad in head:
            raise StrictError("NUL in the head: %r" % head[:300])
    stripped = head.replace(b"\r\n", b"")
    if b"\r" in stripped or b"\n" in stripped:
        raise StrictError("bare CR or LF in the head: %r" % head[:500])
    lines = head[:-2].split(b"\r\n")
    r = UpstreamRequest()
    r.raw = raw
    m = REQUEST_LINE_RE.match(lines[0])
    if not m:
        raise StrictError("bad request line %r" % lines[0][:300])
    r.method, r.target = m.group(1), m.group(2)
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise StrictError("header line without a colon: %r" % line[:200])
        if not TOKEN_RE.match(name):
            raise StrictError("bad header name %r" % name[:200])
        if any((c < 0x20 and c != 0x09) or c == 0x7f for c in value):
            raise StrictError("control character in header %r: %r" % (name, value[:200]))
        r.headers.append((name, value.strip(b" \t")))
    names = r.names()
    hosts = r.all("host")
    if hosts != [upstream_host]:
        raise StrictError("Host headers %r, want exactly [%r]" % (hosts, upstream_host))
    auths = r.all("authorization")
    if len(auths) != 1:
        raise StrictError("%d Authorization headers, want exactly one: %r" % (len(auths), auths))
    parts = auths[0].split(b" ")
    if len(parts) != 2 or parts[0] != b"Bearer" or not JWT_RE.match(parts[1]):
        raise StrictError("Authorization is not 'Bearer <JWT>': %r" % auths[0][:200])
    for n in names:
        if n in HOP_BY_HOP:
            raise StrictError("hop-by-hop header %r forwarded" % n)
        if n == b"expect":
            raise StrictError("Expect forwarded")
    cls = r.all("content-length")
    tes = r.all("transfer-encoding")
    if len(cls) + len(tes) > 1:
        raise StrictError("framing headers CL %r TE %r" % (cls, tes))
    if cls:
        if not re.fullmatch(rb"[0-9]+", cls[0]) or (len(cls[0]) > 1 and cls[0][0:1] == b"0"):
            raise StrictError("Content-Length %r is not canonical digits" % cls[0])
        n = int(cls[0])
        r.content_length = n
        if len(rest) < n:
            raise StrictError("body has %d bytes, Content-Length says %d" % (len(rest), n))
        r.body, rest = rest[:n], rest[n:]
    elif tes:
        if tes[0] != b"chunked":
            raise StrictError("Transfer-Encoding %r" % tes[0])
        r.chunked = True
        parts = []
        while True:
            i = rest.find(b"\r\n")
            if i < 0:
                raise StrictError("unterminated chunk size line: %r" % rest[:100])
            size_line, rest = rest[:i], rest[i + 2:]
            sm = CHUNK_SIZE_RE.match(size_line)
            if not sm:
                raise StrictError("bad chunk size line %r" % size_line[:100])
            size = int(sm.group(1), 16)
            if size == 0:
                if not rest.startswith(b"\r\n"):
                    raise StrictError("trailers or junk after the last chunk: %r" % rest[:100])
                rest = rest[2:]
                break
            if len(rest) < size + 2 or rest[size:size + 2] != b"\r\n":
                raise StrictError("chunk of %d bytes not followed by CRLF" % size)
            parts.append(rest[:size])
            rest = rest[size + 2:]
        r.body = b"".join(parts)
    if exact and rest:
        raise StrictError("%d bytes after the request: %r" % (len(rest), rest[:200]))
    return r


class Conn:
    """One accepted TCP connection: id, accepted_at, sni, alpn, handshake_ok, handshake_error,
    data (every application byte received, in order), requests (raw bytes of each complete
    request, by the lenient splitter), partial (bytes of an incomplete request at the close),
    closed_at (the time the connection ended), closed_by ("peer", "us", "error"),
    body_sent (bytes of a ("stream", ...) body written)."""

    def __init__(self, cid, sock, peer):
        self.id = cid
        self.sock = sock
        self.peer = peer
        self.accepted_at = time.monotonic()
        self.sni = None
        self.alpn = None
        self.handshake_ok = False
        self.handshake_error = None
        self.data = bytearray()
        self.requests = []
        self.partial = b""
        self.closed_at = None
        self.closed_by = None
        self.body_sent = 0
        self.note = None

    @property
    def closed(self):
        return self.closed_at is not None

    def __repr__(self):
        return "<Conn %d hs=%s %d bytes %d requests closed=%s by %s>" % (
            self.id, self.handshake_ok, len(self.data), len(self.requests), self.closed,
            self.closed_by)


class Mark:
    def __init__(self, nconns, lens, nreqs):
        self.nconns, self.lens, self.nreqs = nconns, lens, nreqs


class _Closed(Exception):
    pass


class RawUpstream:
    """See the module docstring. cert: a certs.py kind ("good", "expired", ...) or (cert, key);
    certs: the dict from certs.make_certs (harness.get_certs() when None)."""

    def __init__(self, cert="good", certs=None, host="127.0.0.1", handshake_timeout=10,
                 read_timeout=120):
        if certs is None:
            import harness
            certs = harness.get_certs()
        if isinstance(cert, str):
            cert_path, key_path = certs[cert + "_cert"], certs[cert + "_key"]
        else:
            cert_path, key_path = cert
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert_path, key_path)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.ctx.sni_callback = self._sni
        self.handshake_timeout = handshake_timeout
        self.read_timeout = read_timeout
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.conns = []
        self._queue = []
        self._behaviour = None
        self._cut = None
        self._stopping = False
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(1024)
        self.port = self.lsock.getsockname()[1]
        self.address = "%s:%d" % (host, self.port)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="rawupstream-%d" % self.port)
        self._thread.start()

    # -- scripting ------------------------------------------------------------------------------

    def queue(self, *scripts):
        """One-shot scripts, used by the next requests in order (any connection)."""
        with self.lock:
            self._queue.extend(scripts)

    def set_behaviour(self, script):
        """A script for every request once the queue is empty; None: the default answer."""
        with self.lock:
            self._behaviour = script

    def reset_scripts(self):
        with self.lock:
            self._queue = []
            self._behaviour = None
            self._cut = None

    def cut_when(self, pred):
        """One-shot: the first connection whose bytes received from now on satisfy pred is
        closed cleanly (close_notify, then FIN) at that moment, wherever in a request it is."""
        with self.lock:
            self._cut = (pred, {id(c): len(c.data) for c in self.conns})

    def _cut_due(self, conn):
        with self.lock:
            if self._cut is None:
                return False
            pred, start = self._cut
            if not pred(bytes(conn.data[start.get(id(conn), 0):])):
                return False
            self._cut = None
            return True

    def _script_for(self, conn, raw):
        with self.lock:
            if self._queue:
                s = self._queue.pop(0)
            else:
                s = self._behaviour
        if s is None:
            s = [ok_response(headers=[(b"X-Upstream-Conn", b"%d" % conn.id),
                                      (b"X-Upstream-Request", b"%d" % len(conn.requests))])]
        if callable(s):
            s = s(conn, raw)
        return s

    # -- observation ----------------------------------------------------------------------------

    def mark(self):
        with self.lock:
            return Mark(len(self.conns), [len(c.data) for c in self.conns],
                        [len(c.requests) for c in self.conns])

    def new_conns(self, mark):
        with self.lock:
            return list(self.conns[mark.nconns:])

    def new_bytes(self, mark):
        """Application bytes received since mark, over old and new connections."""
        with self.lock:
            n = sum(len(c.data) - mark.lens[i] for i, c in enumerate(self.conns[:mark.nconns]))
            return n + sum(len(c.data) for c in self.conns[mark.nconns:])

    def requests_since(self, mark):
        """[(conn, raw request)] completed since mark, in arrival order per connection."""
        out = []
        with self.lock:
            for i, c in enumerate(self.conns):
                start = mark.nreqs[i] if i < mark.nconns else 0
                for raw in c.requests[start:]:
                    out.append((c, raw))
        return out

    def wait(self, pred, timeout=5.0):
        """Waits until pred() is true (checked whenever something is recorded); returns it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    return v
                self.cond.wait(min(left, 0.05))

    def wait_requests(self, mark, n=1, timeout=5.0):
        self.wait(lambda: len(self._requests_since_nolock(mark)) >= n, timeout)
        return self.requests_since(mark)

    def _requests_since_nolock(self, mark):
        out = []
        for i, c in enumerate(self.conns):
            start = mark.nreqs[i] if i < mark.nconns else 0
            out.extend(c.requests[start:])
        return out

    def stop(self):
        self._stopping = True
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.sock.close()
            except OSError:
                pass

    # -- the server -----------------------------------------------------------------------------

    def _sni(self, sslobj, name, ctx):
        conn = getattr(sslobj, "_aap_conn", None)
        if conn is not None:
            conn.sni = name
        return None

    def _accept_loop(self):
        cid = 0
        while not self._stopping:
            try:
                sock, peer = self.lsock.accept()
            except OSError:
                return
            cid += 1
            conn = Conn(cid, sock, peer)
            with self.cond:
                self.conns.append(conn)
                self.cond.notify_all()
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="rawupstream-conn-%d" % cid).start()

    def _record(self, conn, data):
        with self.cond:
            conn.data += data
            self.cond.notify_all()

    def _end(self, conn, by):
        with self.cond:
            if conn.closed_at is None:
                conn.closed_at = time.monotonic()
                conn.closed_by = by
            self.cond.notify_all()

    def _serve(self, conn):
        raw_sock = conn.sock
        try:
            raw_sock.settimeout(self.handshake_timeout)
            tls = self.ctx.wrap_socket(raw_sock, server_side=True, do_handshake_on_connect=False)
        except Exception as e:  # pragma: no cover - wrap never fails for a fresh socket
            conn.handshake_error = repr(e)
            self._end(conn, "error")
            raw_sock.close()
            return
        conn.sock = tls
        # The SNI callback gets the SSLSocket (or its SSLObject): tag both to find the conn.
        tls._aap_conn = conn
        try:
            tls._sslobj._aap_conn = conn
        except Exception:
            pass
        try:
            tls.do_handshake()
        except Exception as e:
            conn.handshake_error = "%s: %s" % (type(e).__name__, e)
            self._end(conn, "error")
            try:
                tls.close()
            except OSError:
                pass
            return
        conn.handshake_ok = True
        conn.alpn = tls.selected_alpn_protocol()
        tls.settimeout(self.read_timeout)
        buf = b""
        try:
            while True:
                raw, buf = self._read_request(conn, tls, buf)
                if raw is None:
                    conn.partial = buf
                    self._end(conn, "peer")
                    break
                with self.cond:
                    conn.requests.append(raw)
                    self.cond.notify_all()
                script = self._script_for(conn, raw)
                if self._run(conn, tls, script):
                    conn.partial = buf
                    break
        except _Closed:
            pass
        except Exception as e:
            conn.note = "%s: %s" % (type(e).__name__, e)
            conn.partial = buf
            self._end(conn, "error")
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def _recv(self, conn, tls):
        try:
            data = tls.recv(65536)
        except (ConnectionResetError, ssl.SSLError, ssl.SSLEOFError, BrokenPipeError):
            data = b""
        except socket.timeout:
            data = b""
        if data:
            self._record(conn, data)
            if self._cut_due(conn):
                try:
                    tls.settimeout(1.0)
                    tls.unwrap().close()
                except (OSError, ValueError, ssl.SSLError):
                    pass
                self._end(conn, "us")
                return b""
        return data

    def _read_request(self, conn, tls, buf):
        """(raw request, leftover) or (None, leftover) at EOF. The split is lenient on purpose:
        the strict judgement is parse_request_strict's."""
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > MAX_HEAD:
                return None, buf
            data = self._recv(conn, tls)
            if not data:
                return None, buf
            buf += data
        head = buf[:end + 4]
        cl, chunked = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            n = name.strip().lower()
            if n == b"content-length" and value.strip().isdigit():
                cl = int(value.strip())
            elif n == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        pos = end + 4
        if chunked:
            while True:
                i = buf.find(b"\r\n", pos)
                while i < 0:
                    data = self._recv(conn, tls)
                    if not data:
                        return None, buf
                    buf += data
                    i = buf.find(b"\r\n", pos)
                line = buf[pos:i].split(b";")[0].strip()
                try:
                    size = int(line, 16)
                except ValueError:
                    return None, buf
                pos = i + 2
                if size == 0:
                    # trailers: lines until an empty one
                    while True:
                        j = buf.find(b"\r\n", pos)
                        while j < 0:
                            data = self._recv(conn, tls)
                            if not data:
                                return None, buf
                            buf += data
                            j = buf.find(b"\r\n", pos)
                        empty = j == pos
                        pos = j + 2
                        if empty:
                            return buf[:pos], buf[pos:]
                while len(buf) < pos + size + 2:
                    data = self._recv(conn, tls)
                    if not data:
                        return None, buf
                    buf += data
                pos += size + 2
        while len(buf) < pos + cl:
            data = self._recv(conn, tls)
            if not data:
                return None, buf
            buf += data
        return buf[:pos + cl], buf[pos + cl:]

    def _run(self, conn, tls, script):
        """Runs a script; True when the connection was closed by it."""
        for action in script:
            if isinstance(action, (bytes, bytearray)):
                try:
                    tls.sendall(action)
                except OSError:
                    self._end(conn, "error")
                    return True
            elif action == "close":
                try:
                    tls.settimeout(1.0)
                    tls.unwrap().close()
                except (OSError, ValueError, ssl.SSLError):
                    pass
                self._end(conn, "us")
                return True
            elif action == "dirty_close":
                try:
                    tls.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._end(conn, "us")
                return True
            elif action == "reset":
                try:
                    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
                self._end(conn, "us")
                return True
            elif action == "hang":
                while self._recv(conn, tls):
                    pass
                self._end(conn, "peer")
                return True
            elif isinstance(action, tuple) and action[0] == "sleep":
                time.sleep(action[1])
            elif isinstance(action, tuple) and action[0] == "stream":
                _, head, total = action
                block = b"0123456789abcdef" * 4096
                try:
                    tls.sendall(head)
                    while conn.body_sent < total:
                        n = min(len(block), total - conn.body_sent)
                        tls.sendall(block[:n])
                        conn.body_sent += n
                except OSError:
                    self._end(conn, "peer")
                    return True
            else:
                raise ValueError("unknown action %r" % (action,))
        return False
