"""proxytest: helpers for the end-to-end proxy tests (test_proxy_*.py), on top of harness.py.

    import proxytest as pt
    st = h.Stack(admin_listen="127.0.0.1:0")
    m = pt.metrics(st.proxy)                 # parsed /metrics
    m.value("apple_auth_proxy_requests_total", code="200")
    pt.error_code(resp)                      # "PROXY_NO_ROUTE" from the proxy's JSON error
    pt.access_log(st.proxy, n=3)             # parsed JSON access-log lines (waits for 3)
    pt.tokens_seen(st.standin)               # JWTs the stand-in received, in order
    pt.vm_hwm_kib(st.proxy.pid)              # peak RSS
"""
import hashlib
import json
import os
import re
import socket
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

ASC = "api.appstoreconnect.apple.com"
WK = "weatherkit.apple.com"
SK = "api.storekit.itunes.apple.com"
SK_SANDBOX = "api.storekit-sandbox.itunes.apple.com"
ENT = "api.enterprise.developer.apple.com"
MUSIC = "api.music.apple.com"
HOST_OF = {p: u.split("://", 1)[1] for p, u in h.UPSTREAMS.items()}

PATTERN = b"0123456789abcdef"  # what the stand-in's /__bytes sends, repeated
_PATTERN_BUF = PATTERN * ((1 << 20) // len(PATTERN) + 2)

# ------------------------------------------------------------------------------------------------
# Waiting


def wait_until(pred, timeout=5.0, interval=0.02, msg="condition"):
    """Polls pred() until it returns a true value (returned) or raises AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, msg))
        time.sleep(interval)


def wait_stderr(proxy, pattern, timeout=10.0, since=0):
    """Waits until the proxy's stderr (from character offset since) matches the regex; returns
    the match."""
    rx = re.compile(pattern)

    def found():
        return rx.search(proxy.stderr_text()[since:])
    try:
        return wait_until(found, timeout, 0.05, "stderr matching %r" % pattern)
    except AssertionError:
        raise AssertionError("proxy stderr never matched %r; stderr:\n%s" % (
            pattern, proxy.stderr_text()[-4000:]))


# ------------------------------------------------------------------------------------------------
# The proxy's answers


def error_code(resp):
    """The "code" of a proxy error response (Apple's JSON error shape), checking the shape."""
    doc = json.loads(resp.body)
    errs = doc["errors"]
    assert isinstance(errs, list) and len(errs) == 1, doc
    e = errs[0]
    assert set(e) == {"status", "code", "title", "detail"}, e
    assert e["status"] == str(resp.status), (e, resp.status)
    return e["code"]


def error_detail(resp):
    return json.loads(resp.body)["errors"][0]["detail"]


def raw_exchange(port, data, timeout=10, read_timeout=5):
    """Sends raw bytes on a new connection and returns everything until the proxy closes."""
    with h.HttpClient(port, timeout=timeout) as c:
        c.send(data)
        return c.read_until_close(read_timeout)


def connect_refused(port, timeout=1.0):
    """True when a TCP connect to 127.0.0.1:port is refused (nobody listening)."""
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()
    return False


# ------------------------------------------------------------------------------------------------
# Large bodies, streamed


class Download:
    """The result of stream_get: status, headers, nbytes, chunked, complete, pattern_ok."""

    def __init__(self):
        self.status = None
        self.headers = []
        self.nbytes = 0
        self.chunked = False
        self.complete = False
        self.pattern_ok = True
        self.trailers = []

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default


def stream_get(port, target, host=None, timeout=60, check_pattern=True, on_progress=None):
    """GET target through the proxy on a new connection, reading the body in pieces and
    discarding them (bounded memory in the test too). With check_pattern, every byte is compared
    with the stand-in's /__bytes pattern. on_progress(nbytes) is called now and then."""
    d = Download()
    c = h.HttpClient(port, timeout=timeout)
    try:
        c.request("GET", target, host=host, read=False)
        r = c.read_head()
        d.status, d.headers = r.status, r.headers
        te = (r.header("Transfer-Encoding") or "").lower()
        cl = r.header("Content-Length")
        buf, c.buf = c.buf, b""
        sock = c.sock
        last = 0

        def consume(data):
            nonlocal last
            if check_pattern and data:
                off = d.nbytes % len(PATTERN)
                pos = 0
                while pos < len(data):
                    n = min(len(data) - pos, 1 << 20)
                    if data[pos:pos + n] != _PATTERN_BUF[off:off + n]:
                        d.pattern_ok = False
                    off = (off + n) % len(PATTERN)
                    pos += n
            d.nbytes += len(data)
            if on_progress and d.nbytes - last >= (64 << 20):
                last = d.nbytes
                on_progress(d.nbytes)

        def more():
            data = sock.recv(1 << 20)
            return data

        if "chunked" in te:
            d.chunked = True

            def fill(k):
                nonlocal buf
                while len(buf) < k:
                    data = more()
                    if not data:
                        return False
                    buf += data
                return True

            def line():
                nonlocal buf
                while b"\r\n" not in buf:
                    data = more()
                    if not data:
                        return None
                    buf += data
                ln, buf = buf.split(b"\r\n", 1)
                return ln

            while True:
                ln = line()
                if ln is None:
                    return d
                size = int(ln.split(b";")[0], 16)
                if size == 0:
                    while True:
                        ln = line()
                        if ln is None:
                            return d
                        if ln == b"":
                            d.complete = True
                            return d
                        d.trailers.append(ln)
                if not fill(size + 2):
                    consume(buf[:size])
                    return d
                consume(buf[:size])
                if buf[size:size + 2] != b"\r\n":
                    raise h.ProtocolError("chunk not followed by CRLF")
                buf = buf[size + 2:]
        elif cl is not None:
            left = int(cl)
            take = min(left, len(buf))
            consume(buf[:take])
            left -= take
            while left > 0:
                data = more()
                if not data:
                    return d
                data = data[:left]
                consume(data)
                left -= len(data)
            d.complete = True
        else:
            consume(buf)
            while True:
                data = more()
                if not data:
                    break
                consume(data)
            d.complete = True
        return d
    finally:
        c.close()


def upload(port, target, nbytes, host=None, timeout=60, chunk=1 << 20, chunked=False):
    """Sends nbytes of pseudo-random data as a request body (Content-Length, or chunked) and
    returns (Response, sha256 hex of what was sent)."""
    sha = hashlib.sha256()
    block = (hashlib.sha256(b"seed").digest() * (chunk // 32 + 1))[:chunk]
    c = h.HttpClient(port, timeout=timeout)
    try:
        hdrs = [("Transfer-Encoding", "chunked")] if chunked else [("Content-Length", str(nbytes))]
        hdrs.append(("Content-Type", "application/octet-stream"))
        c.request("POST", target, hdrs, host=host, read=False)
        sent = 0
        i = 0
        while sent < nbytes:
            n = min(chunk, nbytes - sent)
            piece = bytes([i & 0xff]) + block[1:n] if n > 1 else bytes([i & 0xff])
            sha.update(piece)
            if chunked:
                c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
            else:
                c.send(piece)
            sent += n
            i += 1
        if chunked:
            c.send(b"0\r\n\r\n")
        return c.read_response("POST"), sha.hexdigest()
    finally:
        c.close()


# ------------------------------------------------------------------------------------------------
# Process inspection


def proc_status_kib(pid, field):
    """A kB field of /proc/PID/status (VmHWM, VmRSS...) as an int."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def vm_hwm_kib(pid):
    return proc_status_kib(pid, "VmHWM")


def proc_bytes(pid, what):
    with open("/proc/%d/%s" % (pid, what), "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------------------------
# Admin endpoints and metrics


def admin_port(proxy, timeout=5.0):
    """The proxy's admin port; its "admin listening on" line may follow the listen lines, so
    this waits for it."""
    def scan():
        if not proxy.admin_port:
            proxy._scan()
        return proxy.admin_port
    try:
        return wait_until(scan, timeout, 0.02, "admin listening line")
    except AssertionError:
        raise AssertionError("the proxy has no admin listener (admin_listen); stderr:\n%s"
                             % proxy.stderr_text()[-2000:])


def admin_get(proxy, path, timeout=10):
    port = admin_port(proxy)
    with h.HttpClient(port, timeout=timeout) as c:
        return c.request("GET", path, host="127.0.0.1:%d" % port)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """A parsed Prometheus text exposition: .types {family: type}, .helps, .samples
    [(name, {labels}, float)], .text."""

    def __init__(self, text):
        self.text = text
        self.types, self.helps, self.samples = {}, {}, []
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("# TYPE "):
                _, _, name, typ = line.split(" ", 3)
                self.types[name] = typ
                continue
            if line.startswith("# HELP "):
                _, _, name, help_ = line.split(" ", 3)
                self.helps[name] = help_
                continue
            if line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            if not m:
                raise ValueError("bad metrics line %r" % line)
            labels = dict(_LABEL.findall(m.group(3) or ""))
            self.samples.append((m.group(1), labels, float(m.group(4))))

    def find(self, name, **labels):
        return [(l, v) for n, l, v in self.samples
                if n == name and all(l.get(k) == str(x) for k, x in labels.items())]

    def value(self, name, default=None, **labels):
        """The sum of the samples of name matching labels (default when there is none)."""
        hits = self.find(name, **labels)
        if not hits:
            return default
        return sum(v for _, v in hits)


def metrics(proxy):
    r = admin_get(proxy, "/metrics")
    assert r.status == 200, r
    return Metrics(r.body.decode())


# ------------------------------------------------------------------------------------------------
# Logs


def read_bytes(path):
    """A file's contents (b"" when it does not exist)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def read_json_lines(path):
    """(parsed, bad): the complete lines of a JSON-lines file, and the ones that did not parse
    as a JSON object (raw bytes)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], []
    parsed, bad = [], []
    for line in data.split(b"\n")[:-1]:
        try:
            obj = json.loads(line.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError
            parsed.append(obj)
        except ValueError:
            bad.append(line)
    if data and not data.endswith(b"\n"):
        bad.append(data.split(b"\n")[-1])
    return parsed, bad


def access_log(proxy_or_path, n=0, timeout=5.0, pred=None):
    """The parsed access-log lines (the proxy's stdout by default, or a file path); waits until
    at least n lines satisfy pred (all lines when pred is None)."""
    path = proxy_or_path if isinstance(proxy_or_path, str) else proxy_or_path.stdout_path

    def enough():
        lines, _ = read_json_lines(path)
        sel = [l for l in lines if pred is None or pred(l)]
        return lines if len(sel) >= n else None
    if n == 0:
        return read_json_lines(path)[0]
    return wait_until(enough, timeout, 0.05, "%d access-log lines in %s" % (n, path))


def memory_count(pid, needle):
    """How many times needle (bytes) occurs in the writable memory of process pid (its heap,
    stacks and anonymous mappings, read through /proc/PID/mem: needs root or ptrace rights).
    Mappings of 64 GiB or more are a sanitizer's shadow, not memory the program wrote into,
    and are skipped."""
    count = 0
    step = 1 << 20
    with open("/proc/%d/maps" % pid) as maps:
        regions = [line.split() for line in maps]
    fd = os.open("/proc/%d/mem" % pid, os.O_RDONLY)
    try:
        for r in regions:
            if len(r) < 2 or "w" not in r[1] or (len(r) > 5 and r[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in r[0].split("-"))
            if end - start >= 64 << 30:
                continue
            tail = b""
            for off in range(start, end, step):
                try:
                    data = os.pread(fd, min(step, end - off), off)
                except OSError:
                    tail = b""
                    continue
                chunk = tail + data
                count += chunk.count(needle)
                # too short to hold a match: carries one across the boundary, never twice
                tail = chunk[-(len(needle) - 1):] if len(needle) > 1 else b""
    finally:
        os.close(fd)
    return count


def standin_control(standin, action, **params):
    """Drives the stand-in's revocation list over a direct TLS connection (Host localhost)."""
    q = urllib.parse.urlencode(params)
    with standin.client("localhost") as c:
        r = c.request("GET", "/__control/%s%s" % (action, "?" + q if q else ""), host="localhost")
    assert r.status == 200, r.body
    return r.json()


def tokens_seen(standin, since=0):
    """Every bearer token the stand-in received (request events), in order."""
    out = []
    for e in standin.requests(since):
        for k, v in e["headers"]:
            if k.lower() == "authorization" and v.startswith("Bearer "):
                out.append(v[len("Bearer "):])
    return out


def auth_headers(event):
    return [v for k, v in event["headers"] if k.lower() == "authorization"]


def header_values(event, name):
    return [v for k, v in event["headers"] if k.lower() == name.lower()]


def new_marker():
    """A unique value to put in a request (header X-Test-Mark) so that no_upstream_traffic can
    tell this test's traffic from late log lines of earlier tests."""
    return "mark-%s" % os.urandom(8).hex()


def no_upstream_traffic(testcase, standin, since, settle=0.5, marker=None):
    """Asserts that the stand-in saw nothing since the mark: no new connection (accept,
    handshake, TLS error on a connection it had not accepted before the mark) and no request.

    The stand-in logs from one thread per connection, so a connection of an earlier test may
    log its handshake, or the end of its request, a little after the mark. Events on
    connections accepted before the mark are therefore only counted when they are requests
    carrying marker (see new_marker) or, without a marker, any request at all."""
    time.sleep(settle)
    everything = standin.events()
    known = {e.get("conn_id") for e in everything[:since] if e.get("event") == "accept"}
    bad = []
    for e in everything[since:]:
        kind = e.get("event")
        if kind not in ("accept", "request", "handshake", "tls_error", "bad_request"):
            continue
        if e.get("conn_id") not in known:
            bad.append(e)
        elif kind in ("request", "bad_request") and (marker is None or
                                                     marker in e.get("raw_head", "")):
            bad.append(e)
    testcase.assertEqual(bad, [], "the stand-in must receive nothing")


def pem_body(pem):
    """The base64 body of a PEM (bytes or str), without the armour and line breaks."""
    if isinstance(pem, bytes):
        pem = pem.decode()
    return "".join(l.strip() for l in pem.splitlines() if l.strip() and not l.startswith("-----"))


def start_env_proxy(env, timeout=10):
    """`apple-auth-proxy serve` without --config (environment-only mode), env added to
    harness.clean_env(); waits for its listening line. Returns a harness.Proxy."""
    p = h.Proxy.__new__(h.Proxy)
    p.config_path = None
    h._Process.__init__(p, "proxy-env", [h.BINARY, "serve"], env=h.clean_env(env))
    p.ports, p.admin_port = [], None
    deadline = time.monotonic() + timeout
    while True:
        p._scan()
        if p.ports:
            break
        if not p.alive():
            raise RuntimeError("proxy exited with %s; stderr:\n%s" % (p.proc.returncode,
                                                                      p.stderr_text()))
        if time.monotonic() > deadline:
            p.stop()
            raise RuntimeError("proxy did not start; stderr:\n%s" % p.stderr_text())
        time.sleep(0.02)
    p.port = p.ports[0]
    # the admin line follows the listen lines
    try:
        wait_until(lambda: (p._scan(), p.admin_port)[1], 2.0, 0.02, "admin listening")
    except AssertionError:
        pass
    return p
