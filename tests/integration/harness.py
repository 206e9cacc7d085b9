"""harness: shared helpers for the integration tests (stdlib + python3-jwt + python3-cryptography).

Everything runs on 127.0.0.1 with ports chosen at run time; keys and certificates are made at
test time in a private temporary directory removed at exit (set AAP_KEEP_TMP=1 to keep it).
Processes started here are stopped at exit (SIGTERM, then SIGKILL) and die with the test.

Typical use:

    import harness as h
    key = h.make_key()                                     # P-256, public key in h.keys_dir()
    up = h.start_standin()                                 # TLS stand-in for Apple, good cert
    cred = h.credential("app-store-connect", key)
    cfg = h.write_config({"asc": cred}, [h.route(up, "app-store-connect", "asc")])
    px = h.start_proxy(cfg)
    r = h.HttpClient(px.port).request("GET", "/v1/apps")  # h.Response
    ev = up.requests()[-1]                                 # what the stand-in received

or, for the common case, h.Stack(profiles=("app-store-connect",)) which does all of the above.
"""
import atexit
import base64
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("AAP_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
BINARY = os.environ.get("AAP_BINARY") or os.path.join(SOURCE_DIR, "build", "apple-auth-proxy")
UPSTREAM_DIR = os.path.join(SOURCE_DIR, "tests", "upstream")
STANDIN = os.path.join(UPSTREAM_DIR, "standin.py")
STANDIN_APNS = os.path.join(UPSTREAM_DIR, "standin_apns.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

if UPSTREAM_DIR not in sys.path:
    sys.path.insert(0, UPSTREAM_DIR)
import certs as certs_module  # noqa: E402  (tests/upstream/certs.py)

# Profile -> the Apple upstream its tokens are for, and the longest exp - iat Apple accepts.
UPSTREAMS = {
    "app-store-connect": "https://api.appstoreconnect.apple.com",
    "app-store-server": "https://api.storekit.itunes.apple.com",
    "app-store-server-sandbox": "https://api.storekit-sandbox.itunes.apple.com",
    "weatherkit": "https://weatherkit.apple.com",
    "enterprise": "https://api.enterprise.developer.apple.com",
    "music": "https://api.music.apple.com",
    "devicecheck": "https://api.devicecheck.apple.com",
    "maps": "https://maps-api.apple.com",
    "apple-business": "https://api-business.apple.com",
    "apple-school": "https://api-school.apple.com",
}
MAX_LIFETIME = {"app-store-connect": 1200, "app-store-server": 3600, "weatherkit": 3600,
                "enterprise": 1200, "music": 15777000}
# Set by CTest for -DSANITIZE=ON builds: peak-RSS bounds are not meaningful there.
SANITIZED = os.environ.get("AAP_SANITIZED") == "1"

LISTEN_RE = re.compile(r"^apple-auth-proxy: listening on (\S+):(\d+)(?: \(https\))?\s*$")
ADMIN_RE = re.compile(r"^apple-auth-proxy: admin listening on (\S+):(\d+)\s*$")

# ------------------------------------------------------------------------------------------------
# Temporary files and process lifetime

_lock = threading.RLock()
_workdir = None
_procs = []


def workdir():
    """The per-process temporary directory (mode 0700), removed at exit."""
    global _workdir
    with _lock:
        if _workdir is None:
            _workdir = tempfile.mkdtemp(prefix="aap-test-")
            os.chmod(_workdir, 0o700)
        return _workdir


def new_dir(prefix="d"):
    """A fresh subdirectory of workdir()."""
    return tempfile.mkdtemp(prefix=prefix + "-", dir=workdir())


def tmp_path(name):
    """A path in workdir() (not created)."""
    return os.path.join(workdir(), name)


# What a sanitizer build of the proxy prints when it finds a bug (ASan, LeakSanitizer at exit,
# UBSan): any of these in a proxy's stderr fails the test run, even if every assertion passed.
SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error: |"
                          r"WARNING: ThreadSanitizer")


def _cleanup():
    for p in list(reversed(_procs)):
        try:
            p.stop()
        except Exception:
            pass
    bad = []
    for p in _procs:
        if isinstance(p, Proxy):
            try:
                text = p.stderr_text()
            except OSError:
                continue
            if SANITIZER_RE.search(text):
                bad.append((p, text))
    for p, text in bad:
        sys.stderr.write("harness: the proxy (pid %d) reported a sanitizer error:\n%s\n" % (
            p.pid, text[-20000:]))
    if _workdir and os.environ.get("AAP_KEEP_TMP") != "1":
        shutil.rmtree(_workdir, ignore_errors=True)
    elif _workdir:
        sys.stderr.write("harness: kept %s\n" % _workdir)
    if bad:
        sys.stderr.flush()
        os._exit(1)


atexit.register(_cleanup)
if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
    # CTest's timeout sends SIGTERM: turn it into a normal exit so atexit stops the children.
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))


def _die_with_parent():
    """preexec_fn: the child gets SIGKILL when the test process (the forking thread) dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def clean_env(extra=None):
    """A minimal environment for child processes (no inherited Apple/proxy variables)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "HOME": workdir(), "TMPDIR": workdir()}
    for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "MSAN_OPTIONS", "TSAN_OPTIONS",
              "LLVM_PROFILE_FILE", "VALGRIND_OPTS"):
        if k in os.environ:
            env[k] = os.environ[k]
    if extra:
        env.update({k: v for k, v in extra.items() if v is not None})
    return env


class _Process:
    """A child with stdout/stderr in files; stop() sends SIGTERM then SIGKILL."""

    def __init__(self, name, argv, env=None, cwd=None):
        d = new_dir(name)
        self.dir = d
        self.stdout_path = os.path.join(d, "stdout")
        self.stderr_path = os.path.join(d, "stderr")
        self.argv = argv
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env=env, cwd=cwd, preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        with _lock:
            _procs.append(self)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Stops the process; returns its exit status (negative: killed by a signal)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def stdout_text(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr_text(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


def unused_port():
    """A loopback port nobody listens on (bound and released; good for 'connection refused')."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# Keys, certificates, tokens

KEY_ID_CHARS = string.ascii_uppercase + string.digits


def random_key_id():
    return "".join(secrets.choice(KEY_ID_CHARS) for _ in range(10))


def random_team_id():
    return random_key_id()


class Key:
    """A P-256 key: kid, private_path (PKCS#8 PEM, 0600), public_path (<kid>.pem in keys_dir),
    private_pem / public_pem (bytes), private_key / public_key (cryptography objects)."""

    def __init__(self, kid, private_key, private_path, public_path):
        self.kid = kid
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.private_path = private_path
        self.public_path = public_path
        self.private_pem = private_key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())
        self.public_pem = self.public_key.public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)


def keys_dir():
    """Where public keys go (the stand-in's --keys-dir by default)."""
    d = tmp_path("keys")
    os.makedirs(d, exist_ok=True)
    return d


def make_key(kid=None, keys_directory=None, publish=True):
    """A new P-256 key. The private key is written as AuthKey_<kid>.p8 (mode 0600) in a private
    directory; with publish (default) the public key is written to keys_directory/<kid>.pem so the
    stand-in accepts its tokens."""
    kid = kid or random_key_id()
    priv = ec.generate_private_key(ec.SECP256R1())
    pdir = tmp_path("private")
    os.makedirs(pdir, mode=0o700, exist_ok=True)
    ppath = os.path.join(pdir, "AuthKey_%s.p8" % kid)
    kd = keys_directory or keys_dir()
    pub_path = os.path.join(kd, kid + ".pem")
    key = Key(kid, priv, ppath, pub_path)
    fd = os.open(ppath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_pem)
    os.chmod(ppath, 0o600)
    if publish:
        os.makedirs(kd, exist_ok=True)
        with open(pub_path + ".tmp", "wb") as f:
            f.write(key.public_pem)
        os.replace(pub_path + ".tmp", pub_path)
    return key


_certs = None


def get_certs():
    """certs.make_certs() in workdir()/certs, made once per process: dict with ca_cert, ca_key,
    other_ca_cert, and <kind>_cert/<kind>_key for good, expired, not_yet_valid, wrong_host,
    self_signed, cn_only, unknown_ca, no_ip."""
    global _certs
    with _lock:
        if _certs is None:
            _certs = certs_module.make_certs(tmp_path("certs"))
        return _certs


def b64url_decode(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.urlsafe_b64decode(s + b"=" * (-len(s) % 4))


def b64url_json(segment):
    return json.loads(b64url_decode(segment))


def decode_token(token, key=None):
    """(header, claims). With key (a Key or a public key) the ES256 signature is verified by
    PyJWT (which requires the raw 64-byte R||S); no claim is checked here."""
    header = jwt.get_unverified_header(token)
    if key is None:
        claims = jwt.decode(token, options={"verify_signature": False})
    else:
        pub = key.public_key if isinstance(key, Key) else key
        claims = jwt.decode(token, pub, algorithms=["ES256"],
                            options={"verify_exp": False, "verify_iat": False,
                                     "verify_nbf": False, "verify_aud": False,
                                     "verify_iss": False, "require": []})
    return header, claims


def mint(key, claims, headers=None):
    """A token signed by PyJWT with key (kid set); headers are extra header fields (id...).
    PyJWT adds "typ": "JWT" unless headers has "typ": None."""
    h = {"kid": key.kid}
    h.update(headers or {})
    return jwt.encode(claims, key.private_key, algorithm="ES256", headers=h)


def mint_profile(profile, key, fields=None, lifetime=None, now=None, skew=60, **extra_claims):
    """A correct token for profile as Apple documents it (docs/tokens.md), minted by PyJWT.
    fields: the credential's identifiers (as from credential()); extra_claims override claims
    (a value of None removes a claim)."""
    fields = fields or credential(profile, key)
    now = int(time.time() if now is None else now)
    iat = now - skew
    lifetime = lifetime or {"app-store-connect": 1140, "enterprise": 1140,
                            "app-store-server": 3000, "weatherkit": 3000,
                            "music": 86400}[profile]
    exp = iat + lifetime
    headers = {"typ": "JWT"}
    if profile in ("app-store-connect", "enterprise"):
        claims = {"iat": iat, "exp": exp,
                  "aud": "appstoreconnect-v1" if profile == "app-store-connect"
                  else "apple-developer-enterprise-v1"}
        if fields.get("issuer_id"):
            claims = dict({"iss": fields["issuer_id"]}, **claims)
        else:
            claims = dict({"sub": "user"}, **claims)
    elif profile == "app-store-server":
        claims = {"iss": fields["issuer_id"], "iat": iat, "exp": exp, "aud": "appstoreconnect-v1",
                  "bid": fields["bundle_id"]}
    elif profile == "weatherkit":
        headers = {"id": "%s.%s" % (fields["team_id"], fields["service_id"]), "typ": None}
        claims = {"iss": fields["team_id"], "iat": iat, "exp": exp, "sub": fields["service_id"]}
    elif profile == "music":
        headers = {"typ": None}
        claims = {"iss": fields["team_id"], "iat": iat, "exp": exp}
    else:
        raise ValueError("unknown profile %r" % profile)
    for k, v in extra_claims.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return mint(key, claims, headers)


# ------------------------------------------------------------------------------------------------
# The stand-in for Apple

class Standin(_Process):
    """tests/upstream/standin.py as a subprocess: .port, .log_path, .cert, .key, plus the log
    readers events(), requests(), mark(), wait_for()."""

    def __init__(self, cert="good", keys_directory=None, rate_remaining=None, args=(),
                 timeout=10, script=STANDIN):
        c = get_certs()
        if isinstance(cert, str):
            self.cert, self.key = c[cert + "_cert"], c[cert + "_key"]
        else:
            self.cert, self.key = cert
        self.ca_file = c["ca_cert"]
        self.keys_dir = keys_directory or keys_dir()
        d = new_dir("standin-files")
        self.log_path = os.path.join(d, "log.jsonl")
        port_file = os.path.join(d, "port")
        argv = [PYTHON, script, "--cert", self.cert, "--key", self.key, "--host", "127.0.0.1",
                "--port", "0", "--keys-dir", self.keys_dir, "--log", self.log_path,
                "--port-file", port_file]
        if rate_remaining is not None:
            argv += ["--rate-remaining", str(rate_remaining)]
        argv += list(args)
        super().__init__("standin", argv, env=clean_env({"PYTHONDONTWRITEBYTECODE": "1"}))
        deadline = time.monotonic() + timeout
        while not os.path.exists(port_file):
            if not self.alive():
                raise RuntimeError("stand-in exited (%s):\n%s" % (self.proc.returncode,
                                                                 self.stderr_text()))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("stand-in did not start in %ss:\n%s" % (timeout,
                                                                         self.stderr_text()))
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read().strip())
        self.address = "127.0.0.1:%d" % self.port

    def events(self, kind=None, since=0):
        """The log as a list of dicts (complete lines only), from index since, optionally only
        those whose "event" is kind (a string or a tuple of strings)."""
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        out = []
        for line in data.split(b"\n")[:-1]:
            if line.strip():
                out.append(json.loads(line))
        out = out[since:]
        if kind is not None:
            kinds = (kind,) if isinstance(kind, str) else tuple(kind)
            out = [e for e in out if e.get("event") in kinds]
        return out

    def requests(self, since=0):
        return self.events("request", since)

    def mark(self):
        """The current number of log events: pass it as since= to see only later ones."""
        return len(self.events())

    def wait_for(self, pred, timeout=5.0, since=0, kind=None):
        """Waits until an event satisfies pred(event); returns it, or raises AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events(kind, since):
                if pred(e):
                    return e
            if time.monotonic() > deadline:
                raise AssertionError("no matching stand-in event in %ss; log:\n%s" % (
                    timeout, "\n".join(json.dumps(e) for e in self.events(since=since)[-20:])))
            time.sleep(0.02)

    def client(self, server_hostname, timeout=10, ca_file=None):
        """An HttpClient speaking TLS straight to the stand-in (SNI and verification by
        server_hostname, trusting the test CA unless ca_file)."""
        ctx = ssl.create_default_context(cafile=ca_file or self.ca_file)
        ctx.set_alpn_protocols(["http/1.1"])
        return HttpClient(self.port, timeout=timeout, tls=ctx, server_hostname=server_hostname)


def start_standin(cert="good", keys_directory=None, rate_remaining=None, args=(), timeout=10):
    """Starts the stand-in (cert: a certs kind name like "good"/"expired", or (cert, key) paths)."""
    return Standin(cert, keys_directory, rate_remaining, args, timeout)


# ------------------------------------------------------------------------------------------------
# Proxy configuration and process

def credential(profile, key, **fields):
    """A credential dict for profile with key (a Key) and plausible identifiers; fields override
    or add (a value of None removes the field). Individual App Store Connect key: issuer_id=None.
    Key source: private_key_file by default; pass key_source="private_key" (PEM text) or
    key_source=("private_key_env", "VARNAME") to change it."""
    source = fields.pop("key_source", "private_key_file")
    c = {"profile": profile, "key_id": key.kid}
    if profile in ("app-store-connect", "enterprise", "app-store-server"):
        c["issuer_id"] = str(uuid.uuid4())
    if profile == "app-store-server":
        c["bundle_id"] = "com.example.demo"
    if profile in ("weatherkit", "music", "devicecheck", "maps"):
        c["team_id"] = random_team_id()
    if profile == "apple-business":
        c["client_id"] = "BUSINESSAPI." + str(uuid.uuid4())
    if profile == "weatherkit":
        c["service_id"] = "com.example.weatherkit-client"
    if source == "private_key_file":
        c["private_key_file"] = key.private_path
    elif source == "private_key":
        c["private_key"] = key.private_pem.decode()
    elif isinstance(source, tuple) and source[0] == "private_key_env":
        c["private_key_env"] = source[1]
    else:
        raise ValueError("key_source %r" % (source,))
    for k, v in fields.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def route(standin, upstream, credential_name, path_prefix="/", ca_file=None, **extra):
    """A route to the stand-in: upstream is a URL or a profile name (see UPSTREAMS); the
    connection goes to the stand-in's port, trusting the test CA unless ca_file is given."""
    url = UPSTREAMS.get(upstream, upstream)
    r = {"path_prefix": path_prefix, "upstream": url, "credential": credential_name,
         "address": standin.address if isinstance(standin, Standin) else standin,
         "ca_file": ca_file or get_certs()["ca_cert"]}
    for k, v in extra.items():
        if v is None:
            r.pop(k, None)
        else:
            r[k] = v
    return r


def write_config(credentials, routes, workers=1, listen=None, admin_listen=None, path=None,
                 **extra):
    """Writes a proxy configuration (docs/configuration.md) and returns its path.
    listen defaults to ["127.0.0.1:0"], admin_listen to null; extra adds top-level keys
    (limits={...}, token_refresh_margin=...)."""
    cfg = {"listen": listen or ["127.0.0.1:0"], "admin_listen": admin_listen, "workers": workers,
           "credentials": credentials, "routes": routes}
    cfg.update(extra)
    path = path or os.path.join(new_dir("config"), "config.json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    os.chmod(path, 0o600)
    return path


class Proxy(_Process):
    """apple-auth-proxy serve: .port (first listener), .ports, .admin_port (or None)."""

    def __init__(self, config_path, args=(), env=None, timeout=10, listeners=None):
        if not os.path.exists(BINARY):
            raise RuntimeError("AAP_BINARY %s does not exist (build first)" % BINARY)
        argv = [BINARY, "serve", "--config", config_path] + list(args)
        self.config_path = config_path
        # The admin listener starts after the others: when the file names one (and the
        # environment does not override it), its line is waited for too, so that a test
        # reading admin_port at once never finds None on a loaded machine.
        wants_admin = False
        try:
            with open(config_path) as f:
                cfg = json.load(f)
            if listeners is None:
                listeners = len(cfg.get("listen") or [1])
            wants_admin = (isinstance(cfg.get("admin_listen"), str) and
                           "APPLE_AUTH_PROXY_ADMIN_LISTEN" not in (env or {}))
        except (OSError, ValueError, AttributeError):
            if listeners is None:
                listeners = 1
        super().__init__("proxy", argv, env=clean_env(env))
        self.ports, self.admin_port = [], None
        deadline = time.monotonic() + timeout
        while True:
            self._scan()
            if len(self.ports) >= listeners and (self.admin_port is not None or not wants_admin):
                break
            if not self.alive():
                raise RuntimeError("proxy exited with %s before listening; stderr:\n%s" % (
                    self.proc.returncode, self.stderr_text()))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("proxy did not print 'listening on' in %ss; stderr:\n%s" % (
                    timeout, self.stderr_text()))
            time.sleep(0.02)
        self.port = self.ports[0]

    def _scan(self):
        ports, admin = [], None
        for line in self.stderr_text().splitlines():
            m = LISTEN_RE.match(line)
            if m:
                ports.append(int(m.group(2)))
            m = ADMIN_RE.match(line)
            if m:
                admin = int(m.group(2))
        self.ports, self.admin_port = ports, admin

    def client(self, timeout=10):
        return HttpClient(self.port, timeout=timeout)


def start_proxy(config_path, args=(), env=None, timeout=10, listeners=None):
    """Starts `AAP_BINARY serve --config config_path` and waits (timeout s) for its
    "apple-auth-proxy: listening on 127.0.0.1:PORT" lines. env adds to clean_env()."""
    return Proxy(config_path, args, env, timeout, listeners)


def run_cli(args, env=None, timeout=30, input=None):
    """Runs AAP_BINARY with args in clean_env(env); returns (rc, stdout, stderr) as text."""
    if not os.path.exists(BINARY):
        raise AssertionError("AAP_BINARY %s does not exist (build first)" % BINARY)
    p = subprocess.run([BINARY] + list(args), env=clean_env(env), input=input,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       text=True, errors="replace", preexec_fn=_die_with_parent)
    return p.returncode, p.stdout, p.stderr


class Stack:
    """Keys + stand-in + config + proxy for the given profiles, in one call.

    .keys[profile] (Key), .creds[profile] (the credential dict, named by profile), .standin,
    .proxy, .config_path. With one profile the route is path_prefix "/"; with several, each gets
    a route matching its Apple host ("host" route key) and the first profile is also the default.
    """

    def __init__(self, profiles=("app-store-connect",), cert="good", workers=1, routes=None,
                 standin_args=(), proxy_args=(), env=None, **config_extra):
        self.profiles = list(profiles)
        self.keys = {p: make_key() for p in self.profiles}
        self.creds = {p: credential(p, self.keys[p]) for p in self.profiles}
        self.standin = start_standin(cert, args=standin_args)
        if routes is None:
            routes = []
            if len(self.profiles) > 1:
                for p in self.profiles:
                    routes.append(route(self.standin, p, p,
                                        host=UPSTREAMS[p].split("://", 1)[1]))
            routes.append(route(self.standin, self.profiles[0], self.profiles[0]))
        self.config_path = write_config(self.creds, routes, workers=workers, **config_extra)
        self.proxy = start_proxy(self.config_path, proxy_args, env)
        self.port = self.proxy.port

    def client(self, timeout=10):
        return HttpClient(self.port, timeout=timeout)

    def request(self, method, path, headers=None, body=None, timeout=10):
        """One request on a new connection to the proxy; returns a Response."""
        with HttpClient(self.port, timeout=timeout) as c:
            return c.request(method, path, headers, body)

    def stop(self):
        self.proxy.stop()
        self.standin.stop()


# ------------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client

class ProtocolError(Exception):
    pass


class TruncatedResponse(Exception):
    """The connection closed before the response was complete; .response holds what came."""

    def __init__(self, response, msg):
        super().__init__(msg)
        self.response = response


class Response:
    """status (int), reason, version, headers [(name, value)] as received, body (bytes, chunked
    decoded), body_len, trailers, chunked (bool), complete (bool), raw_head (bytes), interim
    (1xx list)."""

    def __init__(self):
        self.status = None
        self.reason = ""
        self.version = ""
        self.headers = []
        self.body = b""
        self.trailers = []
        self.chunked = False
        self.complete = False
        self.raw_head = b""
        self.interim = []
        self.body_len = 0

    def header_all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def header(self, name, default=None):
        vals = self.header_all(name)
        return vals[0] if vals else default

    def json(self):
        return json.loads(self.body)

    def tuple(self):
        return self.status, self.headers, self.body

    def __repr__(self):
        return "<Response %s %r %d bytes>" % (self.status, self.headers, len(self.body))


def chunked_body(chunks, trailers=None):
    """Encodes chunks (bytes each) as a chunked body with optional trailers [(name, value)]."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    out += b"0\r\n"
    for k, v in trailers or []:
        out += ("%s: %s\r\n" % (k, v)).encode("latin-1")
    return out + b"\r\n"


class HashSink:
    """A body sink for read_response(sink=...): counts and hashes without keeping the body."""

    def __init__(self):
        import hashlib
        self.sha = hashlib.sha256()
        self.length = 0
        self.head = b""

    def __call__(self, data):
        if len(self.head) < 64:
            self.head += data[:64 - len(self.head)]
        self.sha.update(data)
        self.length += len(data)

    def hexdigest(self):
        return self.sha.hexdigest()


class HttpClient:
    """One TCP (optionally TLS) connection: send raw bytes, read whole responses.

    HttpClient(port, host="127.0.0.1", timeout=10, tls=None, server_hostname=None)
      .send(data)                       raw bytes, exactly as given
      .read_response(method="GET", allow_truncated=False, sink=None) -> Response
      .request(method, target, headers=None, body=None, host=None, version="HTTP/1.1")
      .closed_by_peer(timeout=1.0)      True when the peer closed (EOF/reset) within timeout
      .read_until_close(timeout=5)      everything until EOF
      .shutdown_write(), .close(); usable as a context manager
    """

    def __init__(self, port, host="127.0.0.1", timeout=10, tls=None, server_hostname=None):
        self.port, self.host, self.timeout = port, host, timeout
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=server_hostname)
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    @property
    def buf(self):
        """Bytes received and not yet consumed (a bytearray; assigning bytes is fine)."""
        return self._buf

    @buf.setter
    def buf(self, value):
        self._buf = value if isinstance(value, bytearray) else bytearray(value)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def settimeout(self, t):
        self.timeout = t
        self.sock.settimeout(t)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def _recv(self):
        if self.eof:
            return b""
        try:
            data = self.sock.recv(262144)
        except (ConnectionResetError, ssl.SSLEOFError):
            data = b""
        if not data:
            self.eof = True
        return data

    def _fill(self):
        data = self._recv()
        if not data:
            return False
        self.buf += data
        return True

    def _take(self, n):
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _line(self):
        """A CRLF-terminated line (with its CRLF), or None at EOF."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = self._take(i + 1)
                if not line.endswith(b"\r\n"):
                    raise ProtocolError("line not ending in CRLF: %r" % line[:200])
                return line
            start = len(self.buf)
            if start > 1 << 20:
                raise ProtocolError("line too long")
            if not self._fill():
                return None

    def _stream(self, n, emit):
        """Passes up to n bytes to emit (in pieces); returns how many came before EOF."""
        got = 0
        if self.buf:
            piece = self._take(n)
            got += len(piece)
            emit(piece)
        while got < n:
            data = self._recv()
            if not data:
                break
            if len(data) > n - got:
                self.buf += data[n - got:]
                data = data[:n - got]
            got += len(data)
            emit(data)
        return got

    def _exact(self, n):
        parts = []
        self._stream(n, parts.append)
        return b"".join(parts)

    def read_head(self):
        """Reads one response head; returns a Response with status/headers (no body)."""
        r = Response()
        raw = []
        line = self._line()
        if line is None:
            raise TruncatedResponse(r, "connection closed before a response (%r)" % bytes(self.buf[:200]))
        raw.append(line)
        m = re.match(rb"^(HTTP/\d\.\d) (\d{3})(?: (.*))?\r\n$", line)
        if not m:
            raise ProtocolError("bad status line %r" % line[:200])
        r.version, r.status = m.group(1).decode(), int(m.group(2))
        r.reason = (m.group(3) or b"").decode("latin-1")
        while True:
            line = self._line()
            if line is None:
                raise TruncatedResponse(r, "connection closed inside the response head")
            raw.append(line)
            if line == b"\r\n":
                break
            name, colon, value = line[:-2].partition(b":")
            if not colon or not name or name != name.strip():
                raise ProtocolError("bad header line %r" % line[:200])
            r.headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        r.raw_head = b"".join(raw)
        return r

    def read_response(self, method="GET", allow_truncated=False, sink=None):
        """Reads a full response (skipping 1xx interim ones), honouring HEAD, 204/304,
        Transfer-Encoding: chunked, Content-Length, and read-until-close.
        sink: a callable given the body piece by piece instead of keeping it in .body (for
        huge bodies; see HashSink); .body_len counts the bytes either way."""
        interim = []
        while True:
            r = self.read_head()
            if 100 <= r.status < 200 and r.status != 101:
                interim.append(r)
                continue
            break
        r.interim = interim
        parts = []

        def emit(data):
            r.body_len += len(data)
            (sink or parts.append)(data)

        try:
            self._read_body(r, method, emit)
        except TruncatedResponse:
            if not allow_truncated:
                raise
        finally:
            if sink is None:
                r.body = b"".join(parts)
        return r

    def _read_body(self, r, method, emit):
        te = [c.strip().lower() for v in r.header_all("transfer-encoding") for c in v.split(",")]
        cl = r.header_all("content-length")
        if method == "HEAD" or r.status in (204, 304) or 100 <= r.status < 200:
            r.complete = True
            return
        if te:
            if te[-1] != "chunked":
                raise ProtocolError("response Transfer-Encoding %r" % te)
            r.chunked = True
            while True:
                line = self._line()
                if line is None:
                    raise TruncatedResponse(r, "closed before the last chunk")
                m = re.match(rb"^([0-9A-Fa-f]+)(;[^\r\n]*)?\r\n$", line)
                if not m:
                    raise ProtocolError("bad chunk size line %r" % line[:200])
                size = int(m.group(1), 16)
                if size == 0:
                    break
                if self._stream(size, emit) < size:
                    raise TruncatedResponse(r, "closed inside a chunk")
                crlf = self._exact(2)
                if crlf != b"\r\n":
                    if len(crlf) < 2:
                        raise TruncatedResponse(r, "closed after chunk data")
                    raise ProtocolError("chunk data not followed by CRLF")
            while True:
                line = self._line()
                if line is None:
                    raise TruncatedResponse(r, "closed inside the trailers")
                if line == b"\r\n":
                    break
                name, _, value = line[:-2].partition(b":")
                r.trailers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
            r.complete = True
            return
        if cl:
            if len(set(cl)) != 1 or not re.fullmatch(r"\d+", cl[0]):
                raise ProtocolError("response Content-Length %r" % cl)
            n = int(cl[0])
            got = self._stream(n, emit)
            if got < n:
                raise TruncatedResponse(r, "closed after %d of %d body bytes" % (got, n))
            r.complete = True
            return
        if self.buf:
            emit(self._take(len(self.buf)))
        while True:
            data = self._recv()
            if not data:
                break
            emit(data)
        r.complete = True

    def request(self, method, target, headers=None, body=None, host=None, version="HTTP/1.1",
                read=True, sink=None):
        """Sends one request and (unless read=False) returns its Response.
        headers: list of (name, value) or a dict; Host is added unless given (host or
        "127.0.0.1:PORT"); Content-Length is added for a body unless Content-Length or
        Transfer-Encoding is given. body: bytes or str, sent as is."""
        hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        names = {k.lower() for k, _ in hdrs}
        if isinstance(body, str):
            body = body.encode()
        if "host" not in names and version == "HTTP/1.1":
            hdrs.insert(0, ("Host", host or "%s:%d" % (self.host, self.port)))
        if body is not None and "content-length" not in names and "transfer-encoding" not in names:
            hdrs.append(("Content-Length", str(len(body))))
        head = "%s %s %s\r\n" % (method, target, version)
        head += "".join("%s: %s\r\n" % (k, v) for k, v in hdrs) + "\r\n"
        self.send(head.encode("latin-1") + (body or b""))
        if read:
            return self.read_response(method, sink=sink)
        return None

    def closed_by_peer(self, timeout=1.0):
        """True when the peer has closed (EOF or reset) within timeout; buffered or newly read
        bytes are kept in self.buf."""
        if self.eof:
            return True
        old = self.sock.gettimeout()
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                if not self._fill():
                    return True
        except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
            return False
        except OSError:
            self.eof = True
            return True
        finally:
            try:
                self.sock.settimeout(old)
            except OSError:
                pass

    def read_until_close(self, timeout=5):
        self.closed_by_peer(timeout)
        return self._take(len(self.buf))


def request(port, method, path, headers=None, body=None, timeout=10):
    """One request on a new connection to 127.0.0.1:port; returns (status, headers, body)."""
    with HttpClient(port, timeout=timeout) as c:
        return c.request(method, path, headers, body).tuple()
