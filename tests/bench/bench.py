#!/usr/bin/python3
"""bench: apple-auth-proxy beside nginx and HAProxy as authenticating reverse proxies, on loopback.

One run starts, on 127.0.0.1 with ports chosen at run time:
  - the upstream: nginx serving TLS with a test certificate (tests/upstream/certs.py), a small
    JSON answer at /v1/apps, a 100 MiB file at /big and a sparse 1 GiB file at /huge, made in
    a temporary directory;
  - apple-auth-proxy, nginx and HAProxy, each configured as the same reverse proxy: plain HTTP in,
    "Authorization: Bearer <token>" added, verified TLS (test CA, SNI and name
    api.appstoreconnect.apple.com) to the upstream over a keep-alive pool; one worker each
    (nginx worker_processes 1, HAProxy nbthread 1, apple-auth-proxy "workers": 1); access logs
    off; apple-auth-proxy's rewrite_links off (nginx and HAProxy do not rewrite bodies), except
    in test 1rw.

and measures them in alternating rounds (A B C A B C ...):
  1    small requests on 50 keep-alive connections (wrk --latency; h2load --h1 as a second
       client), one worker; 1w2: the same with two workers; 1rw: apple-auth-proxy with
       rewrite_links on (its default for App Store Connect routes) beside nginx;
  2    a new client connection per request (Connection: close);
  3    100 MiB downloads on one connection (wrk): throughput and peak RSS (VmHWM); 3g: one 1 GiB
       download (curl) through each;
  4    10,000 idle keep-alive client connections (idle_conns.py): RSS per connection, then
       requests/s beside them;
  5    200 sequential curl calls through each proxy and directly over HTTPS to the upstream, on
       plain loopback and behind delay_relay.py (10 ms each way);
  6    token minting in-process beside PyJWT (token_bench.py);
  1d   the proxy as shipped (no limits, its JSON access log) beside nginx with keepalive 64 and a
       JSON access log, at 50 and 500 keep-alive clients, with the share of requests that opened
       a new upstream connection (the upstream's stub_status);
  7    HTTPS listeners, a new TLS connection per request: full and resumed handshakes
       (tls_connect.py) and wrk with Connection: close, beside nginx with ssl_session_cache
       shared; 7i: memory per idle TLS client connection (idle_conns.py --tls).
  8    APNs pushes over HTTP/2 (apns_bench.py): BENCH_CLIENTS (100) keep-alive clients posting
       pushes through apple-auth-proxy and through HAProxy ("proto h2", the token pasted) to one
       TLS HTTP/2 upstream (nghttpd), one worker each, access logs off on both, then both with a
       JSON line per push (the proxy as shipped); pushes/s, CPU per push and the connections
       each holds to the upstream. nginx cannot proxy to an HTTP/2 upstream: not in this test.

It prints a table with each figure and its ratio to nginx (and to direct HTTPS where that
applies) and writes the figures as JSON (--out, default BUILD/bench-results.json). Figures are
medians over the rounds; every round's value is in the JSON. Nothing here asserts a timing: the
targets are printed beside the figures for information only.

Environment: BENCH_SECONDS (10) per measurement, BENCH_ROUNDS (3), BENCH_IDLE (10000) idle
connections, BENCH_BIG_MIB (100) size of /big, BENCH_HUGE_MIB (1024) size of /huge,
BENCH_CURL_CALLS (200), BENCH_DELAY_MS (10) one-way relay delay, BENCH_IDLE_TLS (2000) idle
TLS connections, BENCH_CLIENTS (100) APNs clients in test 8, BENCH_TESTS (all:
"1,1w2,1rw,1d,2,3,3g,4,5,6,7,7i,8") to run a subset, BENCH_NO_INSTALL=1 never to call apt-get,
BENCH_KEEP_TMP=1 to keep the temporary directory.
"""
import argparse
import atexit
import ctypes
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "upstream"))
sys.path.insert(0, HERE)
import certs as certs_module  # noqa: E402  tests/upstream/certs.py
import apns_bench  # noqa: E402  tests/bench/apns_bench.py (test 8)

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
API_HOST = "api.appstoreconnect.apple.com"
KEY_ID = "2X9R4HXF34"
ISSUER_ID = "69a6de95-023f-47e3-e053-5b8c7c11a4d1"
# Debian packages for the benchmark only (never needed by `make test`).
BENCH_PACKAGES = ["nginx", "haproxy", "wrk", "nghttp2-client", "nghttp2-server", "curl", "python3",
                  "python3-jwt", "python3-cryptography", "openssl"]
TOOLS = {"nginx": "/usr/sbin/nginx", "haproxy": "/usr/sbin/haproxy", "wrk": "wrk",
         "h2load": "h2load", "curl": "curl", "openssl": "openssl"}
PROXIES = ("aap", "nginx", "haproxy")
NAMES = {"aap": "apple-auth-proxy", "nginx": "nginx", "haproxy": "HAProxy",
         "direct": "direct HTTPS"}

# A small App Store Connect-like answer (about 0.6 kB).
APPS_JSON = json.dumps({
    "data": [{"type": "apps", "id": "1234567890", "attributes": {
        "name": "Bench App", "bundleId": "com.example.bench", "sku": "BENCH1",
        "primaryLocale": "en-US", "isOrEverWasMadeForKids": False,
        "subscriptionStatusUrl": None, "contentRightsDeclaration": None},
        "links": {"self": "https://api.appstoreconnect.apple.com/v1/apps/1234567890"}}],
    "links": {"self": "https://api.appstoreconnect.apple.com/v1/apps"},
    "meta": {"paging": {"total": 1, "limit": 50}}}, separators=(",", ":"))

WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
"""


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


def env_float(name, default):
    v = os.environ.get(name, "").strip()
    return float(v) if v else default


def log(msg):
    sys.stderr.write("bench: %s\n" % msg)
    sys.stderr.flush()


# ------------------------------------------------------------------------------------------------
# Tools

def ensure_tools():
    """Installs the benchmark's Debian packages when some are missing and we are root."""
    missing = []
    for p in BENCH_PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, universal_newlines=True)
        if "install ok installed" not in r.stdout:
            missing.append(p)
    if not missing:
        return
    if os.environ.get("BENCH_NO_INSTALL") == "1" or os.geteuid() != 0:
        log("missing packages: %s (as root: apt-get install -y %s); the parts needing them are "
            "skipped" % (" ".join(missing), " ".join(missing)))
        return
    log("installing %s" % " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
                   env=env, check=True)


def have(tool):
    path = TOOLS.get(tool, tool)
    return os.access(path, os.X_OK) if os.path.isabs(path) else shutil.which(path) is not None


def tool_versions():
    def first_line(argv, pattern=None):
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               universal_newlines=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        text = r.stdout.strip()
        if pattern:
            m = re.search(pattern, text)
            return m.group(1) if m else text.splitlines()[0] if text else None
        return text.splitlines()[0] if text else None

    return {
        "nginx": first_line([TOOLS["nginx"], "-v"], r"nginx/(\S+)"),
        "haproxy": first_line([TOOLS["haproxy"], "-v"], r"version (\S+)"),
        "wrk": first_line(["wrk", "-v"], r"wrk (\S+)"),
        "h2load": first_line(["h2load", "--version"], r"nghttp2/(\S+)"),
        "curl": first_line(["curl", "--version"], r"curl (\S+)"),
        "openssl": first_line(["openssl", "version"], r"OpenSSL (\S+)"),
        "python": platform.python_version(),
    }


def machine_info():
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    distro = None
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "memory_mib": mem, "os": distro, "loadavg_at_start": os.getloadavg()}


# ------------------------------------------------------------------------------------------------
# Processes

_procs = []


def _die_with_parent():
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Proc:
    def __init__(self, name, argv, workdir, env=None, stdin=subprocess.DEVNULL):
        self.name = name
        self.out_path = os.path.join(workdir, name + ".out")
        self.err_path = os.path.join(workdir, name + ".err")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=err, env=env,
                                         preexec_fn=_die_with_parent, cwd=workdir)
        self.pid = self.proc.pid
        _procs.append(self)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        if self in _procs:
            _procs.remove(self)

    def stderr_text(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


def _cleanup():
    for p in list(reversed(_procs)):
        try:
            p.stop()
        except Exception:
            pass


atexit.register(_cleanup)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))


def children_of(pid):
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def proc_status(pid):
    """VmRSS and VmHWM of pid in kB."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def cpu_seconds(pids):
    """User + system CPU time of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / float(os.sysconf("SC_CLK_TCK"))


def unused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if not proc.alive():
            raise RuntimeError("%s exited (%s):\n%s" % (proc.name, proc.proc.returncode,
                                                       proc.stderr_text()))
        if time.monotonic() > deadline:
            raise RuntimeError("%s is not listening on %d after %ss:\n%s" % (
                proc.name, port, timeout, proc.stderr_text()))
        time.sleep(0.05)


def http_get(port, path="/v1/apps", timeout=10, tls=False):
    """One HTTP/1.1 GET (HTTPS, the certificate unverified, with tls); returns (status, body)."""
    import http.client
    import ssl
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# ------------------------------------------------------------------------------------------------
# The setup: certificates, key, files, upstream, proxies

class Setup:
    def __init__(self, binary, big_mib, huge_mib, fd_limit):
        self.tmp = tempfile.mkdtemp(prefix="aap-bench-")
        os.chmod(self.tmp, 0o700)
        self.fd_limit = fd_limit
        # A private copy of the binary: a rebuild during the run cannot change what is measured.
        self.binary = os.path.join(self.tmp, "apple-auth-proxy")
        shutil.copy2(binary, self.binary)
        with open(self.binary, "rb") as f:
            self.binary_sha256 = hashlib.sha256(f.read()).hexdigest()
        log("certificates and keys in %s" % self.tmp)
        self.certs = certs_module.make_certs(os.path.join(self.tmp, "certs"))
        self.ca = self.certs["ca_cert"]
        self.key_path = os.path.join(self.tmp, "AuthKey_%s.p8" % KEY_ID)
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-out", self.key_path], check=True)
        os.chmod(self.key_path, 0o600)
        self.www = os.path.join(self.tmp, "www")
        os.makedirs(self.www)
        self.big_bytes = big_mib * 1024 * 1024
        block = os.urandom(1024 * 1024)
        with open(os.path.join(self.www, "big"), "wb") as f:
            for _ in range(big_mib):
                f.write(block)
        # /huge (BENCH_HUGE_MIB, 1 GiB): a sparse file, so that it costs no disk space.
        self.huge_bytes = huge_mib * 1024 * 1024
        with open(os.path.join(self.www, "huge"), "wb") as f:
            f.truncate(self.huge_bytes)
        self.upstream = None
        self.upstream_port = None
        self.status_port = None
        self.token = None
        self.knows_rewrite_links = None
        # Client connections each proxy accepts (one descriptor each, plus upstream ones).
        self.conn_cap = max(1024, fd_limit - 512)

    def start_upstream(self, workers=1):
        d = os.path.join(self.tmp, "upstream")
        os.makedirs(d, exist_ok=True)
        port = unused_port()
        self.status_port = unused_port()
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_main(d, workers, self.fd_limit, self.conn_cap) + """
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:%(port)d ssl reuseport;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        location = /v1/apps {
            default_type application/json;
            return 200 '%(json)s';
        }
        location = /big {
            alias %(www)s/big;
            default_type application/octet-stream;
        }
        location = /huge {
            alias %(www)s/huge;
            default_type application/octet-stream;
        }
        location / { return 404; }
    }
    # Connections accepted so far: how many new upstream connections a proxy opened.
    server {
        listen 127.0.0.1:%(status)d;
        location = /status { stub_status; }
    }
}
""" % {"port": port, "cert": self.certs["good_cert"], "key": self.certs["good_key"],
       "json": APPS_JSON, "www": self.www, "status": self.status_port or 0})
        self.upstream = Proc("upstream-nginx", [TOOLS["nginx"], "-p", d, "-c", conf], self.tmp)
        wait_port(port, self.upstream)
        self.upstream_port = port
        return port

    def upstream_accepts(self):
        """Connections the upstream has accepted since it started (nginx stub_status)."""
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.status_port, timeout=10)
        try:
            c.request("GET", "/status")
            text = c.getresponse().read().decode()
        finally:
            c.close()
        # "server accepts handled requests\n A H R"
        return int(text.split("\n")[2].split()[0])

    def mint_token(self):
        """A real token from the proxy's own CLI, for the nginx and HAProxy configurations (so
        that every proxy sends an Authorization line of the same length)."""
        cfg = self.aap_config(unused_port(), 1, "127.0.0.1:1")
        r = subprocess.run([self.binary, "token", "-c", cfg], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, check=True)
        self.token = r.stdout.strip()
        return self.token

    def aap_config(self, port, workers, upstream_addr, rewrite_links=False, shipped=False,
                   tls=False, pool=128):
        """The proxy's configuration. rewrite_links (JSON link rewriting, on by default for App
        Store Connect routes) is off unless asked for: nginx and HAProxy do not rewrite bodies.
        It is left out when the binary does not know the key. shipped: no limits and the
        default access log (JSON lines to stdout, which the benchmark sends to a file), as the
        proxy ships; tls: an HTTPS listener with the test certificate; pool: the tuned
        upstream_pool_size."""
        listen = "127.0.0.1:%d" % port
        if tls:
            listen = {"address": listen, "tls": {"cert_file": self.certs["good_cert"],
                                                 "key_file": self.certs["good_key"]}}
        cfg = {
            "listen": [listen],
            "admin_listen": None,
            "workers": workers,
            "credentials": {"asc": {"profile": "app-store-connect", "key_id": KEY_ID,
                                    "issuer_id": ISSUER_ID, "private_key_file": self.key_path}},
            "routes": [{"path_prefix": "/", "upstream": "https://" + API_HOST,
                        "credential": "asc", "address": upstream_addr, "ca_file": self.ca,
                        "rewrite_links": rewrite_links}],
            "access_log": {"path": "off"},
            "limits": {"max_client_connections": self.conn_cap, "keepalive_timeout": 600,
                       "upstream_pool_size": pool, "upstream_idle_timeout": 600},
        }
        if shipped:
            del cfg["limits"]
            del cfg["access_log"]
        if self.knows_rewrite_links is False:
            del cfg["routes"][0]["rewrite_links"]
        path = os.path.join(self.tmp, "aap-%d.json" % port)
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
        os.chmod(path, 0o600)
        if self.knows_rewrite_links is None:
            r = subprocess.run([self.binary, "check", "-c", path], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, universal_newlines=True)
            self.knows_rewrite_links = "rewrite_links: unknown key" not in r.stdout
            if not self.knows_rewrite_links:
                return self.aap_config(port, workers, upstream_addr, rewrite_links, shipped, tls,
                                       pool)
        return path


def nginx_main(d, workers, fd_limit, conn_cap):
    """The main and events blocks, and the opening of the http block with private temp paths."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    return """
user root;
daemon off;
worker_processes %(workers)d;
worker_rlimit_nofile %(fd)d;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events {
    worker_connections %(conns)d;
}
http {
    client_body_temp_path %(d)s/client_body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
""" % {"workers": workers, "fd": fd_limit, "d": d, "conns": conn_cap}


class Proxy:
    """One proxy under test: kind in PROXIES, .port, .pids() (every process of it)."""

    def __init__(self, setup, kind, workers, upstream_addr, rewrite_links=False, wrapper=(),
                 start_timeout=15, shipped=False, tls=False, pool=128):
        """wrapper: a command to run the proxy under (valgrind ...); nginx then runs without
        its master process, as one process. shipped: apple-auth-proxy as it ships (no limits,
        its JSON access log), nginx beside it with a JSON access log to a file and keepalive
        pool; tls: HTTPS listeners (nginx: ssl_session_cache shared, tickets on); pool: the
        upstream pool size (upstream_pool_size, nginx's keepalive)."""
        self.setup, self.kind, self.workers = setup, kind, workers
        self.rewrite_links = rewrite_links
        self.shipped, self.tls, self.pool = shipped, tls, pool
        self.wrapper = list(wrapper)  # e.g. valgrind: a command the proxy runs under
        self.upstream_addr = upstream_addr
        self.port = unused_port()
        d = os.path.join(setup.tmp, "%s-w%d-%d" % (kind, workers, self.port))
        os.makedirs(d)
        self.dir = d
        getattr(self, "_start_" + kind)()
        wait_port(self.port, self.proc, start_timeout)
        st, body = http_get(self.port, timeout=start_timeout, tls=tls)
        if st != 200 or not body.startswith(b'{"data":[{"type":"apps"'):
            raise RuntimeError("%s: GET /v1/apps answered %s %r:\n%s" % (
                kind, st, body[:200], self.proc.stderr_text()))

    def _start_aap(self):
        cfg = self.setup.aap_config(self.port, self.workers, self.upstream_addr,
                                    self.rewrite_links, self.shipped, self.tls, self.pool)
        self.proc = Proc("aap-%d" % self.port,
                         self.wrapper + [self.setup.binary, "serve", "--config", cfg], self.dir)

    def _start_nginx(self):
        d = self.dir
        host, port = self.upstream_addr.rsplit(":", 1)
        conf = os.path.join(d, "nginx.conf")
        # Like for like with the proxy as shipped: one JSON line per request, to a file.
        log = """
    log_format json escape=json '{"time":"$time_iso8601","remote":"$remote_addr",'
        '"method":"$request_method","path":"$request_uri","status":$status,'
        '"bytes_out":$bytes_sent,"duration_ms":$request_time,'
        '"upstream_time":"$upstream_response_time","upstream_connect":"$upstream_connect_time"}';
    access_log %s/access.log json;""" % d if self.shipped else "\n    access_log off;"
        listen = "127.0.0.1:%d reuseport" % self.port
        if self.tls:
            listen += """ ssl;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m""" % (self.setup.certs["good_cert"],
                                               self.setup.certs["good_key"])
        with open(conf, "w") as f:
            f.write(("master_process off;\n" if self.wrapper else "") +
                    nginx_main(d, self.workers, self.setup.fd_limit, self.setup.conn_cap) + log +
                    """
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    upstream apple {
        server %(host)s:%(port)s;
        keepalive %(pool)d;
        keepalive_requests 1000000;
        keepalive_timeout 600s;
    }
    server {
        listen %(listen)s;
        location / {
            proxy_pass https://apple;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host %(api)s;
            proxy_set_header Authorization "Bearer %(token)s";
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate %(ca)s;
            proxy_ssl_verify_depth 2;
            proxy_ssl_server_name on;
            proxy_ssl_name %(api)s;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            proxy_ssl_session_reuse on;
            proxy_max_temp_file_size 0;
        }
    }
}
""" % {"host": host, "port": port, "listen": listen, "api": API_HOST,
       "token": self.setup.token, "ca": self.setup.ca, "pool": self.pool})
        self.proc = Proc("nginx-%d" % self.port,
                         self.wrapper + [TOOLS["nginx"], "-p", d, "-c", conf], self.dir)

    def _start_haproxy(self):
        conf = os.path.join(self.dir, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write("""
global
    nbthread %(workers)d
    maxconn %(conns)d
    # maxconn assumes two descriptors per connection; idle client connections need one, and
    # the hard descriptor limit may be below 2 x maxconn: warn instead of refusing to start.
    no strict-limits
    # Past pool-low-fd-ratio (20 percent) of its descriptors in use, HAProxy 2.6 stops keeping
    # idle server connections: with 10,000 idle clients it would open a new TLS connection to
    # the upstream for every request. The other proxies keep their pools at any client count.
    tune.pool-low-fd-ratio 90
    tune.pool-high-fd-ratio 95
    ssl-server-verify required

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 600s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 600s

frontend fe
    bind 127.0.0.1:%(listen)d
    maxconn %(conns)d
    default_backend apple

backend apple
    http-reuse always
    http-request set-header Host %(api)s
    http-request set-header Authorization "Bearer %(token)s"
    server apple %(up)s ssl verify required ca-file %(ca)s sni str(%(api)s) \
        verifyhost %(api)s alpn http/1.1
""" % {"workers": self.workers, "conns": self.setup.conn_cap, "listen": self.port,
       "api": API_HOST, "token": self.setup.token, "ca": self.setup.ca,
       "up": self.upstream_addr})
        self.proc = Proc("haproxy-%d" % self.port,
                         self.wrapper + [TOOLS["haproxy"], "-db", "-f", conf], self.dir)

    def pids(self):
        return [self.proc.pid] + children_of(self.proc.pid)

    def cpu_seconds(self):
        return cpu_seconds(self.pids())

    def rss_kb(self):
        return sum(proc_status(p).get("VmRSS", 0) for p in self.pids())

    def hwm_kb(self):
        return sum(proc_status(p).get("VmHWM", 0) for p in self.pids())

    def reset_hwm(self):
        """Resets the peak RSS to the current RSS (Linux 4.0+: write 5 to clear_refs)."""
        for p in self.pids():
            try:
                with open("/proc/%d/clear_refs" % p, "w") as f:
                    f.write("5")
            except OSError:
                return False
        return True

    def stop(self, timeout=10):
        self.proc.stop(timeout)


# ------------------------------------------------------------------------------------------------
# Load generators

class Wrk:
    def __init__(self, tmp):
        self.script = os.path.join(tmp, "summary.lua")
        with open(self.script, "w") as f:
            f.write(WRK_LUA)

    def run(self, port, path, conns, seconds, headers=(), threads=1, timeout_s=10,
            scheme="http"):
        argv = ["wrk", "-t", str(threads), "-c", str(conns), "-d", "%gs" % seconds, "--latency",
                "--timeout", "%ds" % timeout_s, "-s", self.script]
        for h in headers:
            argv += ["-H", h]
        argv.append("%s://127.0.0.1:%d%s" % (scheme, port, path))
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=seconds + 60)
        m = re.search(r"^WRKJSON (\{.*\})$", r.stdout, re.M)
        if not m:
            raise RuntimeError("wrk output without a summary:\n" + r.stdout)
        d = json.loads(m.group(1))
        secs = d["duration_us"] / 1e6
        d["rps"] = d["requests"] / secs if secs else 0.0
        d["bytes_per_s"] = d["bytes"] / secs if secs else 0.0
        d["errors"] = sum(d[k] for k in ("connect_errors", "read_errors", "write_errors",
                                          "status_errors", "timeouts"))
        return d


def h2load_h1(port, path, conns, seconds):
    argv = ["h2load", "--h1", "-t", "1", "-c", str(conns), "-D", str(int(seconds)),
            "--warm-up-time=1", "http://127.0.0.1:%d%s" % (port, path)]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=seconds + 60)
    m = re.search(r"finished in [^,]+, ([\d.]+) req/s", r.stdout)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored", r.stdout)
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", r.stdout)
    if not m or not req:
        raise RuntimeError("h2load output not understood:\n" + r.stdout)

    def us(s):
        for unit, f in (("us", 1), ("ms", 1e3), ("s", 1e6)):
            if s.endswith(unit):
                return float(s[:-len(unit)]) * f
        return float(s)

    return {"rps": float(m.group(1)), "requests": int(req.group(1)),
            "succeeded": int(req.group(4)), "failed": int(req.group(5)),
            "errored": int(req.group(6)), "mean_us": us(lat.group(3)) if lat else None}


def curl_loop(n, url, extra=()):
    """n sequential curl processes; returns (seconds, number of 200 answers)."""
    args = " ".join("'%s'" % a.replace("'", "'\\''") for a in list(extra) + [url])
    script = ("for i in $(seq %d); do curl -s -o /dev/null -w '%%{http_code}\\n' %s; done"
              % (n, args))
    t0 = time.monotonic()
    r = subprocess.run(["bash", "-c", script], stdout=subprocess.PIPE, universal_newlines=True)
    elapsed = time.monotonic() - t0
    return elapsed, r.stdout.split().count("200")


# ------------------------------------------------------------------------------------------------
# The benchmark

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.seconds = env_float("BENCH_SECONDS", 10.0)
        self.rounds = env_int("BENCH_ROUNDS", 3)
        self.n_idle = env_int("BENCH_IDLE", 10000)
        self.n_idle_tls = env_int("BENCH_IDLE_TLS", 2000)
        self.big_mib = env_int("BENCH_BIG_MIB", 100)
        self.huge_mib = env_int("BENCH_HUGE_MIB", 1024)
        self.curl_calls = env_int("BENCH_CURL_CALLS", 200)
        self.apns_clients = env_int("BENCH_CLIENTS", 100)
        self.delay_ms = env_float("BENCH_DELAY_MS", 10.0)
        tests = os.environ.get("BENCH_TESTS", "").strip()
        self.tests = set(t.strip() for t in tests.split(",")) if tests else \
            {"1", "1w2", "1rw", "1d", "2", "3", "3g", "4", "5", "6", "7", "7i", "8"}
        self.kinds = [k for k in PROXIES if k == "aap" or have(k)]
        self.results = {"tests": {}}
        self.proxies = {}

    # -- proxies -------------------------------------------------------------------------------
    def start_all(self, workers=1, upstream_addr=None, kinds=None, rewrite_links=False, **variant):
        """variant: Proxy's shipped, tls, pool."""
        self.stop_all()
        addr = upstream_addr or "127.0.0.1:%d" % self.setup.upstream_port
        for k in kinds or self.kinds:
            self.proxies[k] = Proxy(self.setup, k, workers, addr, rewrite_links, **variant)
        time.sleep(0.2)

    def stop_all(self):
        for p in self.proxies.values():
            p.stop()
        self.proxies = {}

    def wrk(self, k, path, conns, seconds, **kw):
        """wrk against proxy k, with the CPU time the proxy and the upstream used meanwhile."""
        p = self.proxies[k]
        up_pids = [self.setup.upstream.pid] + children_of(self.setup.upstream.pid)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        c0, u0 = p.cpu_seconds(), cpu_seconds(up_pids)
        d = self.wrk_runner.run(p.port, path, conns, seconds, scheme="https" if p.tls else "http",
                                **kw)
        c1, u1 = p.cpu_seconds(), cpu_seconds(up_pids)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        d["proxy_cpu_s"], d["upstream_cpu_s"] = c1 - c0, u1 - u0
        d["wrk_cpu_s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        n = d["requests"]
        d["proxy_cpu_us_per_req"] = (c1 - c0) * 1e6 / n if n else None
        d["upstream_cpu_us_per_req"] = (u1 - u0) * 1e6 / n if n else None
        return d

    def note_load(self, name):
        self.results["tests"].setdefault(name, {})["loadavg_before"] = os.getloadavg()

    # -- 1. small requests ---------------------------------------------------------------------
    def small(self, name, workers, rewrite_links=False):
        kinds = [k for k in self.kinds if k != "haproxy"] if rewrite_links else self.kinds
        log("test %s: small requests, 50 keep-alive connections, %d worker(s)%s" % (
            name, workers, ", apple-auth-proxy with rewrite_links" if rewrite_links else ""))
        self.note_load(name)
        self.start_all(workers, kinds=kinds, rewrite_links=rewrite_links)
        for k in kinds:  # warm-up: pools, allocator, page cache
            self.wrk(k, "/v1/apps", 50, 1)
        per = {k: [] for k in kinds}
        h2 = {k: [] for k in kinds}
        for r in range(self.rounds):
            for k in kinds:
                d = self.wrk(k, "/v1/apps", 50, self.seconds)
                per[k].append(d)
                log("  round %d %-8s %8.0f req/s  p50 %.2f ms  p99 %.2f ms  CPU %.1f us/req  "
                    "errors %d" % (r + 1, k, d["rps"], d["p50_us"] / 1e3, d["p99_us"] / 1e3,
                                   d["proxy_cpu_us_per_req"] or 0, d["errors"]))
            if have("h2load") and not rewrite_links:
                for k in kinds:
                    d = h2load_h1(self.proxies[k].port, "/v1/apps", 50, self.seconds)
                    h2[k].append(d)
                    log("  round %d %-8s h2load --h1 %8.0f req/s  failed %d" % (
                        r + 1, k, d["rps"], d["failed"] + d["errored"]))
        out = self.results["tests"][name]
        out.update({"workers": workers, "connections": 50, "path": "/v1/apps",
                    "response_bytes": len(APPS_JSON), "rewrite_links": rewrite_links})
        for k in kinds:
            out[k] = {
                "rps": median([d["rps"] for d in per[k]]),
                "cpu_us_per_req": median([d["proxy_cpu_us_per_req"] for d in per[k]]),
                "upstream_cpu_us_per_req": median([d["upstream_cpu_us_per_req"]
                                                   for d in per[k]]),
                # Cores busy during the runs: this proxy, the upstream, wrk.
                "cores_proxy": median([d["proxy_cpu_s"] * 1e6 / d["duration_us"]
                                       for d in per[k]]),
                "cores_upstream": median([d["upstream_cpu_s"] * 1e6 / d["duration_us"]
                                          for d in per[k]]),
                "cores_wrk": median([d["wrk_cpu_s"] * 1e6 / d["duration_us"] for d in per[k]]),
                "p50_ms": median([d["p50_us"] / 1e3 for d in per[k]]),
                "p99_ms": median([d["p99_us"] / 1e3 for d in per[k]]),
                "errors": sum(d["errors"] for d in per[k]),
                "h2load_rps": median([d["rps"] for d in h2[k]]) if h2[k] else None,
                "h2load_failed": sum(d["failed"] + d["errored"] for d in h2[k]),
                "rounds": per[k], "h2load_rounds": h2[k]}
        self.stop_all()

    # -- 1d. the proxy as shipped --------------------------------------------------------------
    def shipped(self):
        """apple-auth-proxy with no limits configured and its default JSON access log, beside
        nginx with keepalive 64 and a JSON access log to a file, at 50 and 500 keep-alive
        clients. New upstream connections per request come from the upstream's own count of
        accepted connections."""
        kinds = [k for k in ("aap", "nginx") if k in self.kinds]
        log("test 1d: the proxy as shipped beside nginx (keepalive 64), JSON access logs")
        self.note_load("1d")
        self.start_all(1, kinds=kinds, shipped=True, pool=64)
        for conns in (50, 500):
            name = "1d-%d" % conns
            for k in kinds:  # warm-up: the pools grow to the demand
                self.wrk(k, "/v1/apps", conns, 1)
            per = {k: [] for k in kinds}
            for r in range(self.rounds):
                for k in kinds:
                    a0 = self.setup.upstream_accepts()
                    d = self.wrk(k, "/v1/apps", conns, self.seconds)
                    # The status request itself is one of the accepted connections.
                    d["upstream_new"] = self.setup.upstream_accepts() - a0 - 1
                    d["upstream_new_pct"] = (100.0 * d["upstream_new"] / d["requests"]
                                             if d["requests"] else None)
                    per[k].append(d)
                    log("  %d conns round %d %-8s %8.0f req/s  p99 %.2f ms  CPU %.1f us/req  "
                        "new upstream connections %d (%.2f %%)  errors %d" % (
                            conns, r + 1, k, d["rps"], d["p99_us"] / 1e3,
                            d["proxy_cpu_us_per_req"] or 0, d["upstream_new"],
                            d["upstream_new_pct"] or 0, d["errors"]))
            out = self.results["tests"].setdefault(name, {})
            out.update({"workers": 1, "connections": conns, "nginx_keepalive": 64,
                        "access_logs": "JSON lines to a file"})
            for k in kinds:
                out[k] = {"rps": median([d["rps"] for d in per[k]]),
                          "p99_ms": median([d["p99_us"] / 1e3 for d in per[k]]),
                          "cpu_us_per_req": median([d["proxy_cpu_us_per_req"] for d in per[k]]),
                          "upstream_new_pct": median([d["upstream_new_pct"] for d in per[k]]),
                          "upstream_new": sum(d["upstream_new"] for d in per[k]),
                          "errors": sum(d["errors"] for d in per[k]), "rounds": per[k]}
        self.stop_all()

    # -- 7. new TLS client connections -----------------------------------------------------------
    def tls_connect(self, k, resume):
        p = self.proxies[k]
        argv = [PYTHON, os.path.join(HERE, "tls_connect.py"), "--port", str(p.port), "--procs",
                "3", "--seconds", str(self.seconds)] + (["--resume"] if resume else [])
        c0 = p.cpu_seconds()
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=self.seconds + 120)
        c1 = p.cpu_seconds()
        d = json.loads(r.stdout.strip().splitlines()[-1])
        n = d["connections"]
        d["proxy_cpu_us_per_conn"] = (c1 - c0) * 1e6 / n if n else None
        return d

    def https_new(self):
        """HTTPS listeners, a new TLS connection per request: full handshakes (tls_connect.py:
        three client processes that keep no session, like a new curl each time), resumed ones
        (tls_connect.py --resume), and wrk with Connection: close (wrk offers its last
        session again, so these are resumptions too). Same pool (64) and no access logs on
        both; nginx with ssl_session_cache shared and its default session tickets."""
        name = "7"
        kinds = [k for k in ("aap", "nginx") if k in self.kinds]
        log("test 7: HTTPS listener, a new TLS connection per request")
        self.note_load(name)
        self.start_all(1, kinds=kinds, tls=True, pool=64)
        hdr = ["Connection: close"]
        for k in kinds:
            self.wrk(k, "/v1/apps", 50, 1, headers=hdr)
        full = {k: [] for k in kinds}
        res = {k: [] for k in kinds}
        per = {k: [] for k in kinds}
        for r in range(self.rounds):
            for k in kinds:
                d = self.tls_connect(k, False)
                full[k].append(d)
                log("  round %d %-8s full handshakes %6.0f conn/s  CPU %.0f us/conn  errors %d"
                    % (r + 1, k, d["per_s"], d["proxy_cpu_us_per_conn"] or 0, d["errors"]))
            for k in kinds:
                d = self.tls_connect(k, True)
                res[k].append(d)
                log("  round %d %-8s resumed        %6.0f conn/s  CPU %.0f us/conn  resumed %d "
                    "of %d  errors %d" % (r + 1, k, d["per_s"], d["proxy_cpu_us_per_conn"] or 0,
                                          d["resumed"], d["connections"], d["errors"]))
            for k in kinds:
                d = self.wrk(k, "/v1/apps", 50, self.seconds, headers=hdr)
                per[k].append(d)
                log("  round %d %-8s wrk, close    %6.0f req/s   CPU %.1f us/req  errors %d" % (
                    r + 1, k, d["rps"], d["proxy_cpu_us_per_req"] or 0, d["errors"]))
        out = self.results["tests"][name]
        out.update({"workers": 1, "client_processes": 3, "wrk_connections": 50})
        for k in kinds:
            out[k] = {
                "full_per_s": median([d["per_s"] for d in full[k]]),
                "full_cpu_us": median([d["proxy_cpu_us_per_conn"] for d in full[k]]),
                "resumed_per_s": median([d["per_s"] for d in res[k]]),
                "resumed_cpu_us": median([d["proxy_cpu_us_per_conn"] for d in res[k]]),
                "resumed_pct": median([100.0 * d["resumed"] / d["connections"]
                                       for d in res[k] if d["connections"]]),
                "wrk_rps": median([d["rps"] for d in per[k]]),
                "wrk_cpu_us": median([d["proxy_cpu_us_per_req"] for d in per[k]]),
                "errors": sum(d["errors"] for d in full[k] + res[k] + per[k]),
                "full_rounds": full[k], "resumed_rounds": res[k], "wrk_rounds": per[k]}
        self.stop_all()

    # -- 7i. idle TLS client connections ----------------------------------------------------------
    def idle_tls(self):
        name = "7i"
        n = min(self.n_idle_tls, self.setup.fd_limit - 600)
        kinds = [k for k in ("aap", "nginx") if k in self.kinds]
        log("test 7i: %d idle TLS client connections" % n)
        self.note_load(name)
        out = self.results["tests"][name]
        out.update({"workers": 1, "idle_connections": n})
        for k in kinds:
            self.start_all(1, kinds=[k], tls=True, pool=64)
            p = self.proxies[k]
            self.wrk(k, "/v1/apps", 50, 1)
            time.sleep(0.5)
            before = p.rss_kb()
            helper = subprocess.Popen([PYTHON, os.path.join(HERE, "idle_conns.py"), "--port",
                                       str(p.port), "-n", str(n), "--tls"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, universal_newlines=True,
                                      preexec_fn=_die_with_parent)
            opened = json.loads(helper.stdout.readline())
            time.sleep(3.0)  # the steady state, as in test 4
            after = p.rss_kb()
            helper.stdin.write("\n")
            helper.stdin.flush()
            still = json.loads(helper.stdout.readline())
            helper.wait(30)
            per_conn = (after - before) * 1024.0 / opened["ok"] if opened["ok"] else None
            log("  %-8s RSS %.1f -> %.1f MiB for %d TLS connections (%s bytes each); %d still "
                "open" % (k, before / 1024, after / 1024, opened["ok"],
                          "%.0f" % per_conn if per_conn is not None else "?",
                          still["still_open"]))
            out[k] = {"rss_before_kb": before, "rss_after_kb": after, "opened": opened,
                      "bytes_per_connection": per_conn, "still_open_after": still["still_open"]}
            self.stop_all()

    # -- 2. connection per request -------------------------------------------------------------
    def close_per_request(self):
        name = "2"
        log("test 2: a new client connection per request (Connection: close), 50 at a time")
        self.note_load(name)
        self.start_all(1)
        hdr = ["Connection: close"]
        for k in self.kinds:
            self.wrk(k, "/v1/apps", 50, 1, headers=hdr)
        per = {k: [] for k in self.kinds}
        for r in range(self.rounds):
            for k in self.kinds:
                d = self.wrk(k, "/v1/apps", 50, self.seconds, headers=hdr)
                per[k].append(d)
                log("  round %d %-8s %8.0f req/s  p99 %.2f ms  CPU %.1f us/req  errors %d" % (
                    r + 1, k, d["rps"], d["p99_us"] / 1e3, d["proxy_cpu_us_per_req"] or 0,
                    d["errors"]))
        out = self.results["tests"][name]
        out.update({"workers": 1, "connections": 50})
        for k in self.kinds:
            out[k] = {"rps": median([d["rps"] for d in per[k]]),
                      "p99_ms": median([d["p99_us"] / 1e3 for d in per[k]]),
                      "cpu_us_per_req": median([d["proxy_cpu_us_per_req"] for d in per[k]]),
                      "errors": sum(d["errors"] for d in per[k]), "rounds": per[k]}
        self.stop_all()

    # -- 3. large downloads --------------------------------------------------------------------
    def large(self):
        name = "3"
        log("test 3: %d MiB downloads, one connection" % self.big_mib)
        self.note_load(name)
        self.start_all(1)
        per = {k: [] for k in self.kinds}
        hwm = {k: [] for k in self.kinds}
        for r in range(self.rounds):
            for k in self.kinds:
                p = self.proxies[k]
                p.reset_hwm()
                d = self.wrk(k, "/big", 1, self.seconds, timeout_s=60)
                peak = p.hwm_kb()
                per[k].append(d)
                hwm[k].append(peak)
                log("  round %d %-8s %8.1f MiB/s  %d downloads  peak RSS %.1f MiB  errors %d" % (
                    r + 1, k, d["bytes_per_s"] / 2**20, d["requests"], peak / 1024,
                    d["errors"]))
        out = self.results["tests"][name]
        out.update({"workers": 1, "connections": 1, "body_mib": self.big_mib})
        for k in self.kinds:
            out[k] = {"mib_per_s": median([d["bytes_per_s"] / 2**20 for d in per[k]]),
                      "cpu_ms_per_mib": median([d["proxy_cpu_s"] * 1e3 / (d["bytes"] / 2**20)
                                                for d in per[k] if d["bytes"]]),
                      "downloads": sum(d["requests"] for d in per[k]),
                      "peak_rss_mib": max(hwm[k]) / 1024.0,
                      "errors": sum(d["errors"] for d in per[k]), "rounds": per[k],
                      "peak_rss_kb_rounds": hwm[k]}
        self.stop_all()

    # -- 3g. one very large download ------------------------------------------------------------
    def huge(self):
        name = "3g"
        log("test 3g: one %d MiB download through each proxy (curl)" % self.huge_mib)
        self.note_load(name)
        self.start_all(1)
        out = self.results["tests"][name]
        out.update({"workers": 1, "body_mib": self.huge_mib})
        for k in self.kinds:
            p = self.proxies[k]
            p.reset_hwm()
            c0 = p.cpu_seconds()
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w",
                                "%{http_code} %{size_download} %{time_total}",
                                "http://127.0.0.1:%d/huge" % p.port], stdout=subprocess.PIPE,
                               universal_newlines=True, timeout=600)
            cpu = p.cpu_seconds() - c0
            code, size, secs = r.stdout.split()
            size, secs = int(size), float(secs)
            peak = p.hwm_kb()
            ok = code == "200" and size == self.setup.huge_bytes
            log("  %-8s %s, %d bytes in %.2f s (%.0f MiB/s), peak RSS %.1f MiB, CPU %.2f s" % (
                k, "ok" if ok else "INCOMPLETE (status %s)" % code, size, secs,
                size / 2**20 / secs if secs else 0, peak / 1024, cpu))
            out[k] = {"ok": ok, "bytes": size, "seconds": secs,
                      "mib_per_s": size / 2**20 / secs if secs else None,
                      "peak_rss_mib": peak / 1024.0, "cpu_s": cpu}
        self.stop_all()

    # -- 4. idle connections -------------------------------------------------------------------
    def idle(self):
        name = "4"
        n = self.n_idle
        if n + 600 > self.setup.fd_limit:
            n = self.setup.fd_limit - 600
            log("test 4: the descriptor limit (%d) allows %d idle connections, not %d"
                % (self.setup.fd_limit, n, self.n_idle))
        log("test 4: %d idle keep-alive client connections" % n)
        self.note_load(name)
        out = self.results["tests"][name]
        out.update({"workers": 1, "idle_connections": n})
        for k in self.kinds:
            # A fresh process each, warmed up the same way, so that memory freed by earlier
            # tests cannot be reused and hide the cost of the connections.
            self.start_all(1)
            for other in [x for x in self.kinds if x != k]:
                self.proxies.pop(other).stop()
            p = self.proxies[k]
            self.wrk(k, "/v1/apps", 50, 1)
            time.sleep(0.5)
            before = p.rss_kb()
            helper = subprocess.Popen([PYTHON, os.path.join(HERE, "idle_conns.py"), "--port",
                                       str(p.port), "-n", str(n)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, universal_newlines=True,
                                      preexec_fn=_die_with_parent)
            opened = json.loads(helper.stdout.readline())
            # The steady state, not the burst: apple-auth-proxy gives memory freed after a
            # burst back to the system once a quiet second has passed (nginx and HAProxy keep
            # theirs either way), so the reading waits for that.
            time.sleep(3.0)
            after = p.rss_kb()
            d = self.wrk(k, "/v1/apps", 50, self.seconds)
            after_load = p.rss_kb()
            helper.stdin.write("\n")
            helper.stdin.flush()
            still = json.loads(helper.stdout.readline())
            helper.wait(30)
            per_conn = (after - before) * 1024.0 / opened["ok"] if opened["ok"] else None
            log("  %-8s RSS %.1f -> %.1f MiB for %d connections (%s bytes each); with them open "
                "%.0f req/s p99 %.2f ms; %d still open afterwards" % (
                    k, before / 1024, after / 1024, opened["ok"],
                    "%.0f" % per_conn if per_conn is not None else "?", d["rps"],
                    d["p99_us"] / 1e3, still["still_open"]))
            out[k] = {"rss_before_kb": before, "rss_after_kb": after,
                      "rss_after_load_kb": after_load, "opened": opened,
                      "bytes_per_connection": per_conn, "rps_with_idle": d["rps"],
                      "p99_ms_with_idle": d["p99_us"] / 1e3, "errors": d["errors"],
                      "cpu_us_per_req_with_idle": d["proxy_cpu_us_per_req"],
                      "still_open_after": still["still_open"]}
            self.stop_all()

    # -- 5. sequential curl --------------------------------------------------------------------
    def curl_seq(self):
        name = "5"
        n = self.curl_calls
        log("test 5: %d sequential curl calls, through each proxy and directly" % n)
        self.note_load(name)
        out = self.results["tests"][name]
        out.update({"calls": n, "delay_ms": self.delay_ms})
        for phase in ("loopback", "relay"):
            relay = None
            if phase == "relay":
                relay, up_port = self.start_relay(self.delay_ms)
            else:
                up_port = self.setup.upstream_port
            self.start_all(1, "127.0.0.1:%d" % up_port)
            direct_url = "https://%s:%d/v1/apps" % (API_HOST, up_port)
            direct_args = ["--cacert", self.setup.ca, "--resolve",
                           "%s:%d:127.0.0.1" % (API_HOST, up_port),
                           "-H", "Authorization: Bearer " + self.setup.token]
            res = {k: [] for k in list(self.kinds) + ["direct"]}
            ok = {k: 0 for k in res}
            for r in range(self.rounds if phase == "loopback" else max(1, self.rounds - 1)):
                for k in list(self.kinds) + ["direct"]:
                    if k == "direct":
                        secs, good = curl_loop(n, direct_url, direct_args)
                    else:
                        secs, good = curl_loop(n, "http://127.0.0.1:%d/v1/apps"
                                               % self.proxies[k].port)
                    res[k].append(secs)
                    ok[k] += good
                    log("  %-8s round %d %-8s %6.2f s  (%d of %d answered 200)" % (
                        phase, r + 1, k, secs, good, n))
            out[phase] = {k: {"seconds": median(res[k]), "rounds": res[k], "ok": ok[k]}
                          for k in res}
            for k in self.kinds:
                s = out[phase][k]["seconds"]
                out[phase][k]["speedup_vs_direct"] = out[phase]["direct"]["seconds"] / s
            self.stop_all()
            if relay:
                relay.stop()

    # -- 6. tokens -----------------------------------------------------------------------------
    def tokens(self):
        log("test 6: token minting (token_bench.py)")
        out = self.results["tests"].setdefault("6", {})
        r = subprocess.run([PYTHON, os.path.join(HERE, "token_bench.py"), "--binary",
                            self.args.binary, "--json"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True)
        try:
            out.update(json.loads(r.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            out["error"] = r.stdout.strip()
            log("  token_bench.py failed: %s" % r.stdout.strip())
            return
        log("  C %d signatures/s, PyJWT %s %.0f/s, cache hits %d/s" % (
            out["c_signs_per_s"], out["pyjwt_version"], out["pyjwt_signs_per_s"],
            out["c_cache_hits_per_s"]))

    # -- 8. APNs pushes over HTTP/2 ---------------------------------------------------------------
    def apns(self):
        log("test 8: APNs pushes, %d keep-alive clients, HTTP/2 upstream (apns_bench.py)" %
            self.apns_clients)
        self.note_load("8")
        missing = apns_bench.missing_tools()
        if missing:
            log("  skipped: %s missing (apt-get install nghttp2-server wrk)" % " ".join(missing))
            return
        self.results["tests"]["8"].update(apns_bench.run(
            self.setup.binary, self.seconds, self.rounds, self.apns_clients,
            log=lambda s: log(s.strip())))
        apns_bench.report(self.results["tests"]["8"], write=lambda s: log("  " + s))

    # -- setup shared by run() and serve() -----------------------------------------------------
    def prepare(self):
        ensure_tools()
        for t in ("nginx", "wrk", "curl", "openssl"):
            if not have(t):
                sys.exit("bench: %s is required (apt-get install %s)" % (t, " ".join(
                    BENCH_PACKAGES)))
        self.kinds = [k for k in PROXIES if k == "aap" or have(k)]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else 65536
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.results.update({
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "versions": tool_versions(),
            "settings": {"seconds": self.seconds, "rounds": self.rounds, "idle": self.n_idle,
                         "big_mib": self.big_mib, "curl_calls": self.curl_calls,
                         "delay_ms": self.delay_ms, "fd_limit": fd_limit,
                         "tests": sorted(self.tests)},
        })
        try:
            rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 universal_newlines=True).stdout.strip()
        except OSError:
            rev = None
        self.setup = Setup(self.args.binary, self.big_mib, self.huge_mib, fd_limit)
        self.results["proxy"] = {"binary": os.path.abspath(self.args.binary),
                                 "sha256": self.setup.binary_sha256, "git": rev}
        self.setup.start_upstream(1)
        self.setup.mint_token()
        self.wrk_runner = Wrk(self.setup.tmp)

    def start_relay(self, delay_ms):
        """delay_relay.py in front of the upstream; returns (Proc, port)."""
        pf = os.path.join(self.setup.tmp, "relay-%d.port" % unused_port())
        relay = Proc("delay-relay-%d" % int(time.monotonic() * 1000),
                     [PYTHON, os.path.join(HERE, "delay_relay.py"), "--listen", "127.0.0.1:0",
                      "--target", "127.0.0.1:%d" % self.setup.upstream_port,
                      "--delay-ms", str(delay_ms), "--port-file", pf], self.setup.tmp)
        deadline = time.monotonic() + 10
        while not os.path.exists(pf):
            if not relay.alive() or time.monotonic() > deadline:
                raise RuntimeError("delay_relay did not start:\n" + relay.stderr_text())
            time.sleep(0.05)
        with open(pf) as f:
            return relay, int(f.read())

    def serve(self, workers, relay_ms):
        self.prepare()
        relay = None
        up_port = self.setup.upstream_port
        if relay_ms:
            relay, up_port = self.start_relay(relay_ms)
        self.start_all(workers, "127.0.0.1:%d" % up_port)
        info = {"tmp": self.setup.tmp, "ca": self.setup.ca, "token": self.setup.token,
                "upstream": {"port": self.setup.upstream_port,
                             "pids": [self.setup.upstream.pid] +
                             children_of(self.setup.upstream.pid)},
                "relay_port": up_port if relay else None}
        for k, p in self.proxies.items():
            info[k] = {"port": p.port, "pids": p.pids()}
        print(json.dumps(info, indent=2), flush=True)
        try:
            signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
            while True:
                time.sleep(3600)
        finally:
            self.stop_all()
            if relay:
                relay.stop()
            self.setup.upstream.stop()
            shutil.rmtree(self.setup.tmp, ignore_errors=True)
        return 0

    # -- all -----------------------------------------------------------------------------------
    def run(self):
        self.prepare()
        try:
            if "1" in self.tests:
                self.small("1", 1)
            if "1w2" in self.tests:
                self.small("1w2", 2)
            if "1rw" in self.tests:
                self.small("1rw", 1, rewrite_links=True)
            if "1d" in self.tests:
                self.shipped()
            if "2" in self.tests:
                self.close_per_request()
            if "3" in self.tests:
                self.large()
            if "3g" in self.tests:
                self.huge()
            if "4" in self.tests:
                self.idle()
            if "5" in self.tests:
                self.curl_seq()
            if "6" in self.tests:
                self.tokens()
            if "7" in self.tests:
                self.https_new()
            if "7i" in self.tests:
                self.idle_tls()
            if "8" in self.tests:
                self.apns()
        finally:
            self.stop_all()
            self.setup.upstream.stop()
            if os.environ.get("BENCH_KEEP_TMP") == "1":
                log("kept %s" % self.setup.tmp)
            else:
                shutil.rmtree(self.setup.tmp, ignore_errors=True)
        return self.results


# ------------------------------------------------------------------------------------------------
# Report

def fmt(v, spec):
    return "-" if v is None else spec % v


def ratio(a, b):
    return a / b if a is not None and b else None


def table(results):
    """The report as rows: figure, apple-auth-proxy, nginx, HAProxy, direct, aap/nginx,
    aap/direct, target (strings)."""
    T = results["tests"]
    rows = []
    for t in ("1", "1w2", "1rw"):
        for v in T.get(t, {}).values():
            if isinstance(v, dict) and v.get("cores_upstream") is not None:
                v["cores_other"] = v["cores_upstream"] + (v.get("cores_wrk") or 0)

    def g(t, k, f, scale=1.0):
        v = T.get(t, {}).get(k)
        v = v.get(f) if isinstance(v, dict) else None
        return v * scale if v is not None else None

    def add(label, t, f, spec, target="", scale=1.0, with_ratio=True):
        a, n, h = g(t, "aap", f, scale), g(t, "nginx", f, scale), g(t, "haproxy", f, scale)
        rows.append([label, fmt(a, spec), fmt(n, spec), fmt(h, spec), "",
                     fmt(ratio(a, n), "%.2fx") if with_ratio else "", "", target])

    for t, label in (("1", "1 worker"), ("1w2", "2 workers"),
                     ("1rw", "1 worker, rewrite_links on")):
        if t not in T:
            continue
        add("1. small, 50 conns, %s: req/s (wrk)" % label, t, "rps", "%.0f",
            ">= 1.2x nginx" if t == "1" else "")
        add("   p50 latency, ms", t, "p50_ms", "%.2f")
        add("   p99 latency, ms", t, "p99_ms", "%.2f", "<= nginx" if t == "1" else "")
        add("   CPU per request, us", t, "cpu_us_per_req", "%.1f")
        add("   cores busy: proxy", t, "cores_proxy", "%.2f", with_ratio=False)
        add("   cores busy: upstream + wrk", t, "cores_other", "%.2f", with_ratio=False)
        if t != "1rw":
            add("   req/s (h2load --h1)", t, "h2load_rps", "%.0f")
    for conns in (50, 500):
        t = "1d-%d" % conns
        if t not in T:
            continue
        add("1d. as shipped, %d conns, JSON logs: req/s (wrk)" % conns, t, "rps", "%.0f",
            ">= nginx (keepalive 64)")
        add("   p99 latency, ms", t, "p99_ms", "%.2f")
        add("   CPU per request, us", t, "cpu_us_per_req", "%.1f")
        add("   requests opening an upstream connection, %", t, "upstream_new_pct", "%.2f",
            "<= 1 %", with_ratio=False)
    if "2" in T:
        add("2. new connection per request: req/s", "2", "rps", "%.0f")
        add("   p99 latency, ms", "2", "p99_ms", "%.2f")
        add("   CPU per request, us", "2", "cpu_us_per_req", "%.1f")
    if "3" in T:
        add("3. %s MiB downloads, 1 conn: MiB/s" % T["3"].get("body_mib"), "3", "mib_per_s",
            "%.0f", ">= nginx")
        add("   CPU per MiB, ms", "3", "cpu_ms_per_mib", "%.2f")
        add("   peak RSS, MiB", "3", "peak_rss_mib", "%.1f")
    if "3g" in T:
        add("3. one %s MiB download (curl): MiB/s" % T["3g"].get("body_mib"), "3g", "mib_per_s",
            "%.0f")
        add("   peak RSS, MiB", "3g", "peak_rss_mib", "%.1f",
            "< 64 MiB" if T["3g"].get("body_mib") == 1024 else "")
    if "4" in T:
        add("4. RSS before %d idle conns, MiB" % T["4"].get("idle_connections"), "4",
            "rss_before_kb", "%.1f", scale=1 / 1024.0, with_ratio=False)
        add("   RSS with them open, MiB", "4", "rss_after_kb", "%.1f", scale=1 / 1024.0,
            with_ratio=False)
        add("   bytes per idle connection", "4", "bytes_per_connection", "%.0f", "<= nginx")
        add("   req/s with them open (wrk 50)", "4", "rps_with_idle", "%.0f")
        add("   p99 latency with them open, ms", "4", "p99_ms_with_idle", "%.2f")
        add("   CPU per request with them open, us", "4", "cpu_us_per_req_with_idle", "%.1f")
    if "5" in T:
        for phase in ("loopback", "relay"):
            P = T["5"].get(phase)
            if not P:
                continue
            label = "loopback" if phase == "loopback" else "%g ms relay" % T["5"]["delay_ms"]
            d = P["direct"]["seconds"]
            a, n, h = (P.get(k, {}).get("seconds") for k in PROXIES)
            # For times, the ratio is nginx's time over the proxy's: above 1 is better.
            rows.append(["5. %d sequential curl, %s: s" % (T["5"]["calls"], label),
                         fmt(a, "%.2f"), fmt(n, "%.2f"), fmt(h, "%.2f"), fmt(d, "%.2f"),
                         fmt(ratio(n, a), "%.2fx"), fmt(ratio(d, a), "%.2fx"),
                         ">= 2.5x direct" if phase == "relay" else ""])
    if "7" in T:
        add("7. HTTPS, full handshake per request: conn/s", "7", "full_per_s", "%.0f", ">= nginx")
        add("   CPU per connection, us", "7", "full_cpu_us", "%.0f")
        add("   resumed handshake per request: conn/s", "7", "resumed_per_s", "%.0f", ">= nginx")
        add("   CPU per connection, us", "7", "resumed_cpu_us", "%.0f")
        add("   sessions resumed, %", "7", "resumed_pct", "%.1f", with_ratio=False)
        add("   wrk, Connection: close: req/s", "7", "wrk_rps", "%.0f", ">= nginx")
        add("   CPU per request, us", "7", "wrk_cpu_us", "%.1f")
    if "7i" in T:
        add("7i. bytes per idle TLS client connection (%d)" % T["7i"].get("idle_connections"),
            "7i", "bytes_per_connection", "%.0f", "<= nginx")
    P = T.get("8", {})

    def apns_row(name, a, h, f, spec, target="", with_ratio=True):
        x, y = P[a].get(f), P.get(h, {}).get(f)
        rows.append([name, fmt(x, spec), "", fmt(y, spec), "",
                     fmt(ratio(x, y), "%.2fx") if with_ratio else "", "", target])

    for n, a, h, label in (("8", "aap", "haproxy", "logs off"),
                           ("8d", "aap-shipped", "haproxy-logged", "as shipped, JSON logs")):
        if a not in P:
            continue
        apns_row("%s. APNs pushes, %d clients, %s: pushes/s" % (n, P["clients"], label), a, h,
                 "pushes_per_s", "%.0f", ">= 1.2x HAProxy")
        apns_row("   p99 latency, ms", a, h, "p99_ms", "%.2f")
        apns_row("   CPU per push, us", a, h, "proxy_cpu_us_per_push", "%.1f")
        apns_row("   upstream connections per worker", a, h, "upstream_connections_max", "%d",
                 "<= 1", with_ratio=False)
    if "6" in T:
        t6 = T["6"]
        rows.append(["6. ES256 tokens signed/s, in-process", fmt(t6.get("c_signs_per_s"), "%d"),
                     "", "", "PyJWT " + fmt(t6.get("pyjwt_signs_per_s"), "%.0f"), "",
                     fmt(t6.get("ratio"), "%.1fx"), ""])
        rows.append(["   token cache hits/s", fmt(t6.get("c_cache_hits_per_s"), "%d"), "", "",
                     "", "", "", ""])
    return rows


HEADER = ["figure", "apple-auth-proxy", "nginx", "HAProxy", "direct", "aap/nginx", "aap/direct",
          "target"]


def print_table(results, out=sys.stdout):
    rows = table(results)
    widths = [max(len(str(r[i])) for r in rows + [HEADER]) for i in range(len(HEADER))]
    line = "  ".join("%-*s" % (widths[0], HEADER[0]) if i == 0 else "%*s" % (widths[i], HEADER[i])
                     for i in range(len(HEADER)))
    out.write(line + "\n" + "-" * len(line) + "\n")
    for r in rows:
        out.write("  ".join("%-*s" % (widths[0], r[0]) if i == 0 else "%*s" % (widths[i], r[i])
                            for i in range(len(r))) + "\n")
    out.write("\nRatios: aap/nginx is apple-auth-proxy's figure over nginx's, except for the curl "
              "loops (test 5),\nwhere it is nginx's time over apple-auth-proxy's (above 1: "
              "apple-auth-proxy is faster); aap/direct\nis how many times faster the loop ran "
              "through apple-auth-proxy than straight to the upstream\nover HTTPS (for test 6: "
              "the C signer over PyJWT). For test 8 (APNs, HTTP/2 upstream, where nginx\n"
              "cannot go) the ratio is over HAProxy. Latency, CPU and memory: lower is better.\n"
              "Figures are medians over %s rounds; CPU is the process's user + system time "
              "over the requests\nwrk completed.\n" % results.get("settings", {}).get("rounds"))


def print_markdown(results, out=sys.stdout):
    rows = table(results)
    out.write("| " + " | ".join(HEADER) + " |\n")
    out.write("|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 2) + ["---"]) + "|\n")
    for r in rows:
        label = r[0].strip() if not r[0].startswith(" ") else "↳ " + r[0].strip()
        out.write("| " + " | ".join([label] + [str(c).strip() for c in r[1:]]) + " |\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "apple-auth-proxy"))
    ap.add_argument("--out", help="JSON results file (default: bench-results.json beside the "
                                  "binary)")
    ap.add_argument("--report", metavar="JSON", help="print the table of an earlier run and exit")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    ap.add_argument("--serve", action="store_true",
                    help="only start the upstream and the three proxies, print their ports and "
                         "process ids as JSON, and wait (for profiling by hand); stop with ^C")
    ap.add_argument("--workers", type=int, default=1, help="with --serve: workers per proxy")
    ap.add_argument("--relay-ms", type=float, default=0,
                    help="with --serve: put delay_relay.py with this one-way delay in front of "
                         "the upstream")
    args = ap.parse_args()
    if args.report:
        with open(args.report) as f:
            results = json.load(f)
        print_table(results)
        if args.markdown:
            print()
            print_markdown(results)
        return 0
    if not os.access(args.binary, os.X_OK):
        sys.exit("bench: %s not found; run `make build` first" % args.binary)
    bench = Bench(args)
    if args.serve:
        return bench.serve(args.workers, args.relay_ms)
    results = bench.run()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.binary)),
                                   "bench-results.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print()
    print_table(results)
    if args.markdown:
        print()
        print_markdown(results)
    print("\nresults: %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
