"""The team gateway (docs/configuration.md "Gateway: clients and TLS listeners", docs/deployment.md, "The team gateway"):
one shared proxy holds the Apple keys, and every client is identified, limited and audited.

Covered, each by its own test:
  the exposure rule (refusal to serve a public address without clients, the opt-out, `check`);
  identity: 407 without or with wrong Proxy-Authorization (Bearer and Basic), the right secret
  through Bearer, Basic, curl (-x, http_proxy, an HTTPS proxy), urllib's ProxyHandler, requests,
  Node's fetch with a base URL; CONNECT (https:// URLs through the proxy) refused; constant-time
  comparison (static and behavioural); policy: methods/paths, credentials, allow_cidrs; the
  client's token scope (client_scopes); per-client rate; Apple's quota (X-Rate-Limit and
  quota_reserve, priority); Apple's own 429 Retry-After in delta seconds, epoch milliseconds (App
  Store Server API) and HTTP-date; mutual TLS (cert_subject, an unknown CA, no certificate);
  `client-key`; the audit log (fields, masking, no secrets); SIGHUP adding and removing clients.

Everything runs on loopback; the exposure test binds 0.0.0.0 only to see the proxy refuse to
start, or with allow_anonymous_clients, and then connects through 127.0.0.1 only.
"""
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

ASC, WK, SK, SK_SANDBOX = pt.ASC, pt.WK, pt.SK, pt.SK_SANDBOX
AUTH_REQUIRED = "PROXY_AUTHENTICATION_REQUIRED"
FORBIDDEN = "PROXY_CLIENT_FORBIDDEN"
CLIENT_SUBJECT = "CN=ci-runner,O=Example"
WEATHER_PATH = "/api/v1/availability/37.323/-122.032"


# ------------------------------------------------------------------------------------------------
# Helpers


def new_secret():
    """A secret shaped like `apple-auth-proxy client-key` makes (32 bytes, base64url, 43 chars)."""
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def sha256_hex(text):
    return hashlib.sha256(text.encode()).hexdigest()


def bearer(secret):
    return [("Proxy-Authorization", "Bearer " + secret)]


def basic(name, secret):
    raw = ("%s:%s" % (name, secret)).encode()
    return [("Proxy-Authorization", "Basic " + base64.b64encode(raw).decode())]


def send(port, method, target, headers=(), body=None, host=None, tls=None):
    """One request on a new connection (TLS with tls=SSLContext, SNI localhost)."""
    with h.HttpClient(port, tls=tls, server_hostname="localhost" if tls else None) as c:
        try:
            return c.request(method, target, list(headers), body, host=host)
        except h.TruncatedResponse as e:
            if tls is None:
                raise
            raise AssertionError("the HTTPS listener completed the TLS handshake, then closed "
                                 "the connection without an answer to %s %s (%s)"
                                 % (method, target, e))


def openssl(args, cwd):
    p = subprocess.run(["openssl"] + args, cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise RuntimeError("openssl %s: %s" % (" ".join(args), p.stderr.strip()))
    return p.stdout


CLIENT_EXT = """\
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
"""


def make_client_certs(d, certs):
    """A client CA of our own, a client certificate from it with subject CN=ci-runner,O=Example,
    a "rogue" certificate with the same subject from a CA the proxy does not trust (the test
    suite's second CA), and a "stranger" certificate from our CA whose subject no client has.
    Returns a dict of paths plus the RFC 2253 subject openssl prints."""
    with open(os.path.join(d, "client.ext"), "w") as f:
        f.write(CLIENT_EXT)
    for name in ("clientca", "client", "rogue", "stranger"):
        openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", name + ".key"], d)
        os.chmod(os.path.join(d, name + ".key"), 0o600)
    openssl(["req", "-x509", "-new", "-key", "clientca.key", "-out", "clientca.pem", "-days", "30",
             "-subj", "/CN=apple-auth-proxy test client CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)
    for name, ca_cert, ca_key, subj in (
            ("client", "clientca.pem", "clientca.key", "/O=Example/CN=ci-runner"),
            ("rogue", certs["other_ca_cert"], certs["other_ca_key"], "/O=Example/CN=ci-runner"),
            ("stranger", "clientca.pem", "clientca.key", "/O=Example/CN=stranger")):
        # -subj lists the most general attribute first; RFC 2253 prints it last
        openssl(["req", "-new", "-key", name + ".key", "-out", name + ".csr", "-subj", subj], d)
        openssl(["x509", "-req", "-in", name + ".csr", "-CA", ca_cert, "-CAkey", ca_key,
                 "-out", name + ".pem", "-days", "30", "-sha256", "-extfile", "client.ext",
                 "-extensions", "client", "-set_serial", "0x" + os.urandom(8).hex()], d)
    subject = openssl(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", "client.pem"],
                      d).strip()
    p = lambda n: os.path.join(d, n)  # noqa: E731
    return {"ca": p("clientca.pem"), "cert": p("client.pem"), "key": p("client.key"),
            "rogue_cert": p("rogue.pem"), "rogue_key": p("rogue.key"),
            "stranger_cert": p("stranger.pem"), "stranger_key": p("stranger.key"),
            "subject": subject}


_shared = {}


def shared_standin():
    """One stand-in for the test classes that need nothing special from it."""
    if "up" not in _shared:
        _shared["up"] = h.start_standin()
    return _shared["up"]


def https_port(proxy, timeout=10):
    """The port of the proxy's HTTPS listener (its line ends in " (https)", which the harness's
    "listening on" pattern does not take)."""
    m = pt.wait_stderr(proxy, r"apple-auth-proxy: listening on \S+:(\d+) \(https\)", timeout)
    return int(m.group(1))


def client_tls(ca_file, cert=None, key=None, max_version=None):
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["http/1.1"])
    if cert:
        ctx.load_cert_chain(cert, key)
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def counter(proxy, name, **labels):
    return pt.metrics(proxy).value(name, 0.0, **labels)


class Gateway:
    """A gateway like the one in docs/deployment.md, "The team gateway": an App Store Connect and a WeatherKit
    credential, a plain-HTTP and an HTTPS (mutual TLS) listener, and one client of each kind."""

    CLIENTS = ("dev-alice", "reader", "weather-svc", "office", "local-svc", "limited")

    def __init__(self, access_log=True):
        self.certs = h.get_certs()
        self.cc = make_client_certs(h.new_dir("clientcerts"), self.certs)
        self.up = shared_standin()
        self.asc_key, self.wk_key = h.make_key(), h.make_key()
        self.secrets = {n: new_secret() for n in self.CLIENTS}
        s = {n: sha256_hex(v) for n, v in self.secrets.items()}
        clients = {
            "dev-alice": {"key_sha256": s["dev-alice"]},
            "reader": {"key_sha256": s["reader"],
                       "allow": [{"methods": ["GET", "HEAD"], "path_prefix": "/v1/apps"}]},
            "weather-svc": {"key_sha256": s["weather-svc"], "credentials": ["weather"]},
            "office": {"key_sha256": s["office"], "allow_cidrs": ["10.1.0.0/16"]},
            "local-svc": {"key_sha256": s["local-svc"], "allow_cidrs": ["127.0.0.0/8"]},
            "limited": {"key_sha256": s["limited"], "rate": {"per_second": 1, "burst": 3}},
            "ci-runner": {"cert_subject": CLIENT_SUBJECT},
        }
        creds = {"asc": h.credential("app-store-connect", self.asc_key),
                 "weather": h.credential("weatherkit", self.wk_key)}
        routes = [h.route(self.up, "weatherkit", "weather", path_prefix="/api/v1/"),
                  h.route(self.up, "app-store-connect", "asc", client_scopes=True)]
        listen = ["127.0.0.1:0",
                  {"address": "127.0.0.1:0",
                   "tls": {"cert_file": self.certs["good_cert"], "key_file": self.certs["good_key"],
                           "client_ca_file": self.cc["ca"]}}]
        extra = {}
        self.access_log = None
        if access_log:
            self.access_log = os.path.join(h.new_dir("gw-log"), "access.log")
            extra["access_log"] = {"path": self.access_log, "format": "json"}
        self.config_path = h.write_config(creds, routes, listen=listen,
                                          admin_listen="127.0.0.1:0", clients=clients, **extra)
        self.proxy = h.start_proxy(self.config_path, listeners=1)
        self.port = self.proxy.port
        self.tls_port = https_port(self.proxy)

    def auth(self, name):
        return bearer(self.secrets[name])

    def get(self, path, headers=(), method="GET", body=None, host=None):
        return send(self.port, method, path, headers, body, host)

    def mtls(self, cert=True):
        if cert:
            return client_tls(self.certs["ca_cert"], self.cc["cert"], self.cc["key"])
        return client_tls(self.certs["ca_cert"])


def assert_407(tc, r):
    tc.assertEqual(r.status, 407, r.body)
    tc.assertEqual(pt.error_code(r), AUTH_REQUIRED)
    tc.assertIn("application/json", r.header("Content-Type", ""))
    challenges = r.header_all("Proxy-Authenticate")
    tc.assertIn('Basic realm="apple-auth-proxy"', challenges)
    tc.assertIn('Bearer realm="apple-auth-proxy"', challenges)


def assert_forbidden(tc, r, detail=None):
    tc.assertEqual(r.status, 403, r.body)
    tc.assertEqual(pt.error_code(r), FORBIDDEN)
    if detail:
        tc.assertIn(detail, pt.error_detail(r))


# ------------------------------------------------------------------------------------------------
# The exposure rule


class ExposureTest(unittest.TestCase):
    """Without clients, a listener on a non-loopback address is refused unless the operator opts
    out with allow_anonymous_clients; `check` says the same."""

    @classmethod
    def setUpClass(cls):
        cls.up = shared_standin()
        cls.key = h.make_key()
        cls.creds = {"asc": h.credential("app-store-connect", cls.key)}
        cls.routes = [h.route(cls.up, "app-store-connect", "asc")]

    def config(self, listen, **extra):
        return h.write_config(self.creds, self.routes, listen=listen, **extra)

    def assert_refusal(self, rc, err, address="0.0.0.0:0", index=0, source=None):
        self.assertEqual(rc, 2, err)
        line = [l for l in err.splitlines() if "is not a loopback address" in l]
        self.assertEqual(len(line), 1, err)
        self.assertIn("%s: %s is not a loopback address" % (source or "listen[%d]" % index,
                                                             address), line[0])
        self.assertIn('add "clients"', line[0])
        self.assertIn('"allow_anonymous_clients": true', line[0])

    def test_public_address_without_clients_refuses_to_start(self):
        cfg = self.config(["0.0.0.0:0"])
        try:
            rc, out, err = h.run_cli(["serve", "--config", cfg], timeout=15)
        except subprocess.TimeoutExpired:
            self.fail("the proxy kept running on 0.0.0.0 without clients")
        self.assert_refusal(rc, err)
        self.assertNotIn("listening on", err)
        # also when the public address comes from --listen (the rule is checked after overrides)
        cfg = self.config(["127.0.0.1:0"])
        rc, out, err = h.run_cli(["serve", "--config", cfg, "--listen", "0.0.0.0:0"], timeout=15)
        self.assert_refusal(rc, err, source="--listen")
        # a loopback listener beside it does not help
        cfg = self.config(["127.0.0.1:0", "0.0.0.0:0"])
        rc, out, err = h.run_cli(["serve", "--config", cfg], timeout=15)
        self.assert_refusal(rc, err, index=1)

    def test_check_reports_the_exposure(self):
        rc, out, err = h.run_cli(["check", "-c", self.config(["0.0.0.0:0"])])
        self.assert_refusal(rc, err)
        rc, out, err = h.run_cli(["check", "-c", self.config(["0.0.0.0:0"],
                                                           allow_anonymous_clients=True)])
        self.assertEqual(rc, 0, err)
        self.assertIn("apple-auth-proxy: warning: listen[0]: allow_anonymous_clients is true", err)
        # the environment variable is the same opt-out
        rc, out, err = h.run_cli(["check", "-c", self.config(["0.0.0.0:0"])],
                                 env={"APPLE_AUTH_PROXY_ALLOW_ANONYMOUS_CLIENTS": "true"})
        self.assertEqual(rc, 0, err)
        self.assertIn("allow_anonymous_clients is true", err)
        # with clients the rule is satisfied on any address, without a warning
        cfg = self.config(["0.0.0.0:0"], clients={"a": {"key_sha256": sha256_hex(new_secret())}})
        rc, out, err = h.run_cli(["check", "-c", cfg])
        self.assertEqual(rc, 0, err)
        self.assertNotIn("allow_anonymous_clients", err)
        self.assertNotIn("loopback", err)

    def test_allow_anonymous_clients_starts_with_a_warning(self):
        px = h.start_proxy(self.config(["0.0.0.0:0"], allow_anonymous_clients=True))
        try:
            err = px.stderr_text()
            self.assertIn("apple-auth-proxy: listening on 0.0.0.0:%d" % px.port, err)
            warn = [l for l in err.splitlines() if "warning" in l]
            self.assertEqual(len(warn), 1, err)
            self.assertIn("listen[0]: allow_anonymous_clients is true and no client identities "
                          "are configured: anyone who can reach 0.0.0.0:0 can use the configured "
                          "Apple keys", warn[0])
            # it serves (through loopback only), without any client credentials
            r = send(px.port, "GET", "/v1/apps")
            self.assertEqual(r.status, 200, r.body)
        finally:
            px.stop()


    def test_reload_cannot_expose(self):
        """A reload is held to the same rule, against the sockets in use: withdrawing the
        opt-out (no clients either) is rejected, and the running configuration keeps serving."""
        path = os.path.join(h.new_dir("exposure-reload"), "config.json")
        self.config(["0.0.0.0:0"], allow_anonymous_clients=True, path=path)
        px = h.start_proxy(path)
        try:
            tmp = path + ".tmp"
            self.config(["0.0.0.0:0"], path=tmp)
            os.replace(tmp, path)
            mark = len(px.stderr_text())
            px.proc.send_signal(signal.SIGHUP)
            m = pt.wait_stderr(px, r"reload rejected.*", since=mark)
            self.assertIn("is not a loopback address", m.group(0))
            self.assertTrue(px.alive())
            self.assertEqual(send(px.port, "GET", "/v1/apps").status, 200)
        finally:
            px.stop()


# ------------------------------------------------------------------------------------------------
# Identity, policy, rate, TLS: one gateway


class GatewayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = Gateway()
        cls.up = cls.gw.up
        cls.px = cls.gw.proxy

    def assert_nothing_forwarded(self, mark):
        reqs = self.up.requests(mark)
        self.assertEqual(reqs, [], "the stand-in received %r" % [e["target"] for e in reqs])

    def assert_forwarded_ok(self, mark, n=1):
        reqs = self.up.requests(mark)
        self.assertEqual(len(reqs), n, [e["target"] for e in reqs])
        for e in reqs:
            self.assertTrue(e["token_ok"], e["token_error"])
            self.assertEqual(pt.header_values(e, "proxy-authorization"), [],
                             "Proxy-Authorization must not reach Apple")
        return reqs

    # -- 407 -------------------------------------------------------------------------------------

    def test_407_without_proxy_authorization(self):
        mark = self.up.mark()
        assert_407(self, self.gw.get("/v1/apps"))
        # HTTP_PROXY-style absolute form, and a path no route would take: same answer, before
        # any routing (an unknown client learns nothing about the routes)
        assert_407(self, self.gw.get("http://%s/v1/apps" % ASC, host=ASC))
        assert_407(self, self.gw.get("/nothing/routes/here", host="localhost"))
        # a body is read or the connection closed; the answer is the same
        assert_407(self, self.gw.get("/v1/apps", method="POST", body=b'{"data":{}}'))
        self.assert_nothing_forwarded(mark)

    def test_browser_rule_on_gateway_listeners_regression(self):
        """An identified client's request is still refused when its Host does not name the
        gateway (421) or a web page sent it (403), on the plain and the mutual-TLS listener:
        a browser can hold a client certificate or cached proxy credentials."""
        mark = self.up.mark()
        auth = bearer(self.gw.secrets["dev-alice"])
        for tls in (None, self.gw.mtls()):
            port = self.gw.tls_port if tls else self.gw.port
            r = send(port, "GET", "/v1/apps", auth, host="r.attacker.example:8080", tls=tls)
            self.assertEqual(r.status, 421, r.body)
            self.assertEqual(pt.error_code(r), "PROXY_MISDIRECTED_REQUEST")
            r = send(port, "GET", "/v1/apps", auth + [("Origin", "https://evil.example")],
                     tls=tls)
            self.assertEqual(r.status, 403, r.body)
            self.assertEqual(pt.error_code(r), "PROXY_BROWSER_FORBIDDEN")
            r = send(port, "GET", "/v1/apps", auth + [("Sec-Fetch-Site", "same-origin")],
                     host="localhost", tls=tls)
            self.assertEqual(r.status, 403, r.body)
            self.assertEqual(pt.error_code(r), "PROXY_BROWSER_FORBIDDEN")
        self.assert_nothing_forwarded(mark)

    def test_407_wrong_bearer_secret(self):
        mark = self.up.mark()
        good = self.gw.secrets["dev-alice"]
        for value in ("Bearer " + new_secret(),
                      "Bearer " + good[:-1],                # one character short
                      "Bearer " + good + "x",               # one too many
                      "Bearer " + sha256_hex(good),         # the hash is not the secret
                      "Bearer ",
                      "Bearer",
                      "Token " + good,                      # unknown scheme
                      good):                                # no scheme
            with self.subTest(value=value[:20]):
                assert_407(self, self.gw.get("/v1/apps", [("Proxy-Authorization", value)]))
        # two headers, even both right, are refused
        assert_407(self, self.gw.get("/v1/apps", bearer(good) + bearer(good)))
        # the secret in Authorization (meant for Apple) is not a client credential
        assert_407(self, self.gw.get("/v1/apps", [("Authorization", "Bearer " + good)]))
        self.assert_nothing_forwarded(mark)

    def test_407_wrong_basic_secret(self):
        mark = self.up.mark()
        good = self.gw.secrets["dev-alice"]
        b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
        for value in ("Basic " + b64("dev-alice:" + new_secret()),
                      "Basic " + b64("dev-alice:"),
                      "Basic " + b64("dev-alice"),           # no colon
                      "Basic " + b64(good),                  # the secret without "NAME:"
                      "Basic " + b64("reader:" + good),      # someone else's name
                      "Basic " + b64("Dev-Alice:" + good),   # names are case-sensitive
                      "Basic !!!not-base64!!!",
                      "Basic "):
            with self.subTest(value=value[:30]):
                assert_407(self, self.gw.get("/v1/apps", [("Proxy-Authorization", value)]))
        self.assert_nothing_forwarded(mark)

    # -- the right secret ------------------------------------------------------------------------

    def test_right_secret_bearer_200(self):
        mark = self.up.mark()
        r = self.gw.get("/v1/apps", self.gw.auth("dev-alice"))
        self.assertEqual(r.status, 200, r.body)
        self.assertIn("data", r.json())
        # scheme case and surrounding blanks do not matter
        r = self.gw.get("/v1/apps", [("Proxy-Authorization",
                                      "  bearer   %s  " % self.gw.secrets["dev-alice"])])
        self.assertEqual(r.status, 200, r.body)
        self.assert_forwarded_ok(mark, 2)

    def test_right_secret_basic_200(self):
        mark = self.up.mark()
        r = self.gw.get("/v1/apps", basic("dev-alice", self.gw.secrets["dev-alice"]))
        self.assertEqual(r.status, 200, r.body)
        # an empty user name is accepted (the secret alone identifies the client)
        r = self.gw.get("/v1/apps", basic("", self.gw.secrets["dev-alice"]))
        self.assertEqual(r.status, 200, r.body)
        # a wrong NAME with the right secret is refused (and nothing more is forwarded)
        r = self.gw.get("/v1/apps", basic("mallory", self.gw.secrets["dev-alice"]))
        assert_407(self, r)
        self.assert_forwarded_ok(mark, 2)

    def test_curl_http_proxy_basic(self):
        curl = shutil.which("curl")
        if not curl:
            self.skipTest("curl is not installed")
        url = "http://dev-alice:%s@127.0.0.1:%d" % (self.gw.secrets["dev-alice"], self.gw.port)
        body = os.path.join(h.new_dir("curl"), "body")
        mark = self.up.mark()
        p = subprocess.run([curl, "-sS", "-o", body, "-w", "%{http_code}", "-x", url,
                            "http://%s/v1/apps" % ASC], env=h.clean_env(), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        self.assertEqual((p.returncode, p.stdout), (0, "200"), p.stderr)
        with open(body) as f:
            self.assertIn("data", json.load(f))
        ev = self.assert_forwarded_ok(mark, 1)[0]
        self.assertEqual((ev["host"], ev["path"]), (ASC, "/v1/apps"))
        # the same with a wrong password: 407 (curl prints the code, exit 0)
        bad = "http://dev-alice:%s@127.0.0.1:%d" % (new_secret(), self.gw.port)
        p = subprocess.run([curl, "-sS", "-o", os.devnull, "-w", "%{http_code}", "-x", bad,
                            "http://%s/v1/apps" % ASC], env=h.clean_env(), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        self.assertEqual(p.stdout, "407", p.stderr)

    def test_environment_proxy_variables(self):
        """HTTP_PROXY-style configuration from the environment: curl reads only the lower-case
        http_proxy for http:// URLs; Python's requests reads HTTP_PROXY (or http_proxy)."""
        url = "http://dev-alice:%s@127.0.0.1:%d" % (self.gw.secrets["dev-alice"], self.gw.port)
        mark = self.up.mark()
        curl = shutil.which("curl")
        if curl:
            p = subprocess.run([curl, "-sS", "-o", os.devnull, "-w", "%{http_code}",
                                "http://%s/v1/apps" % ASC], env=h.clean_env({"http_proxy": url}),
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=20)
            self.assertEqual((p.returncode, p.stdout), (0, "200"), p.stderr)
        p = subprocess.run([h.PYTHON, "-c", "import requests; r = requests.get("
                            "'http://%s/v1/apps', timeout=10); print(r.status_code)" % ASC],
                           env=h.clean_env({"HTTP_PROXY": url}), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        if "No module named 'requests'" in p.stderr:
            self.skipTest("python3-requests is not installed")
        self.assertEqual(p.stdout.strip(), "200", p.stderr)
        self.assert_forwarded_ok(mark, 2 if curl else 1)

    def test_node_fetch_base_url_and_header(self):
        """Node's built-in fetch does not use HTTP_PROXY: the base URL plus Proxy-Authorization
        works, and the rewritten pagination links lead back through the gateway."""
        node = shutil.which("node")
        if not node:
            self.skipTest("node is not installed")
        script = (
            "const base = process.env.APPLE_PROXY_URL;"
            "const headers = {'Proxy-Authorization': `Bearer ${process.env.APPLE_PROXY_SECRET}`};"
            "let url = `${base}/v1/apps?limit=4`; const out = [];"
            "while (url && out.length < 3) {"
            "  const r = await fetch(url, {headers}); const doc = await r.json();"
            "  out.push([r.status, url.startsWith(base), doc.data.length]);"
            "  url = doc.links.next; }"
            "console.log(JSON.stringify(out));")
        mark = self.up.mark()
        p = subprocess.run([node, "--input-type=module", "-e", script], text=True, timeout=30,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=h.clean_env({"APPLE_PROXY_URL": "http://127.0.0.1:%d" % self.gw.port,
                                            "APPLE_PROXY_SECRET": self.gw.secrets["dev-alice"]}))
        self.assertEqual(p.returncode, 0, p.stderr)
        pages = json.loads(p.stdout)
        self.assertGreaterEqual(len(pages), 2, pages)   # the stand-in has 7 apps
        self.assertTrue(all(st == 200 and through for st, through, _ in pages), pages)
        self.assert_forwarded_ok(mark, len(pages))

    def test_curl_https_proxy_secret_or_client_certificate(self):
        """The HTTPS listener used as an HTTPS proxy (curl -x https://...): the secret then
        travels encrypted, or a client certificate replaces it."""
        curl = shutil.which("curl")
        if not curl:
            self.skipTest("curl is not installed")
        ca = self.gw.certs["ca_cert"]
        probe = "curl-%s" % os.urandom(4).hex()
        target = "http://%s/v1/apps?limit=1&p=%s" % (ASC, probe)
        mark = self.up.mark()
        for args in (["-x", "https://dev-alice:%s@localhost:%d" % (self.gw.secrets["dev-alice"],
                                                                   self.gw.tls_port)],
                     ["-x", "https://localhost:%d" % self.gw.tls_port,
                      "--proxy-cert", self.gw.cc["cert"], "--proxy-key", self.gw.cc["key"]]):
            p = subprocess.run([curl, "-sS", "-o", os.devnull, "-w", "%{http_code}",
                                "--proxy-cacert", ca] + args + [target], env=h.clean_env(),
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=20)
            self.assertEqual((p.returncode, p.stdout), (0, "200"), p.stderr)
        self.assert_forwarded_ok(mark, 2)
        lines = pt.access_log(self.gw.access_log, 2, pred=lambda l: probe in l["path"])
        self.assertEqual(sorted(l["client"] or "(null)" for l in lines if probe in l["path"]),
                         ["ci-runner", "dev-alice"])

    def test_https_proxy_links_keep_the_clients_http_scheme(self):
        """An http:// URL sent through the HTTPS listener as an HTTPS proxy: the pagination
        links come back as http:// Apple URLs, which the client sends through the proxy again.
        With the listener's https:// they would name Apple itself, and following one through
        the proxy would be a CONNECT (405), or a request to Apple without a token."""
        curl = shutil.which("curl")
        if not curl:
            self.skipTest("curl is not installed")
        proxy = ["--proxy-cacert", self.gw.certs["ca_cert"],
                 "-x", "https://dev-alice:%s@localhost:%d" % (self.gw.secrets["dev-alice"],
                                                              self.gw.tls_port)]
        url, pages = "http://%s/v1/apps?limit=3" % ASC, 0
        mark = self.up.mark()
        while url and pages < 4:
            p = subprocess.run([curl, "-sS", "-w", "\n%{http_code}"] + proxy + [url],
                               env=h.clean_env(), text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=20)
            body, _, status = p.stdout.rpartition("\n")
            self.assertEqual((p.returncode, status), (0, "200"), (url, p.stderr, body[:300]))
            pages += 1
            url = json.loads(body)["links"].get("next")
            if url:
                self.assertTrue(url.startswith("http://%s/v1/apps?" % ASC), url)
        self.assertEqual(pages, 3)   # the stand-in's 7 apps, 3 a page
        self.assert_forwarded_ok(mark, 3)

    def test_https_url_through_http_proxy_is_a_refused_connect(self):
        """What curl/requests/fastlane do with an https:// URL and HTTP_PROXY: CONNECT, which the
        proxy refuses (it cannot add a token inside a tunnel), identified or not."""
        curl = shutil.which("curl")
        if not curl:
            self.skipTest("curl is not installed")
        mark = self.up.mark()
        url = "http://dev-alice:%s@127.0.0.1:%d" % (self.gw.secrets["dev-alice"], self.gw.port)
        p = subprocess.run([curl, "-sS", "-o", os.devnull, "-x", url, "https://%s/v1/apps" % ASC],
                           env=h.clean_env(), text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=20)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("405", p.stderr)
        with h.HttpClient(self.gw.port) as c:
            r = c.request("CONNECT", "%s:443" % ASC, self.gw.auth("dev-alice"), host="%s:443" % ASC)
        self.assertEqual((r.status, pt.error_code(r)), (405, "PROXY_CONNECT_NOT_SUPPORTED"))
        with h.HttpClient(self.gw.port) as c:
            r = c.request("CONNECT", "%s:443" % ASC, host="%s:443" % ASC)
        assert_407(self, r)
        self.assert_nothing_forwarded(mark)

    def test_urllib_proxy_handler(self):
        secret = self.gw.secrets["dev-alice"]
        mark = self.up.mark()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler(
            {"http": "http://dev-alice:%s@127.0.0.1:%d" % (secret, self.gw.port)}))
        with opener.open("http://%s/v1/apps" % ASC, timeout=10) as resp:
            self.assertEqual(resp.status, 200)
            self.assertIn("data", json.load(resp))
        self.assert_forwarded_ok(mark, 1)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler(
            {"http": "http://dev-alice:%s@127.0.0.1:%d" % (new_secret(), self.gw.port)}))
        with self.assertRaises(urllib.error.HTTPError) as cm:
            opener.open("http://%s/v1/apps" % ASC, timeout=10)
        self.assertEqual(cm.exception.code, 407)
        self.assertEqual(json.load(cm.exception)["errors"][0]["code"], AUTH_REQUIRED)

    def test_requests_proxies_and_base_url(self):
        try:
            import requests
        except ImportError:
            self.skipTest("python3-requests is not installed")
        secret = self.gw.secrets["dev-alice"]
        proxy = "http://dev-alice:%s@127.0.0.1:%d" % (secret, self.gw.port)
        mark = self.up.mark()
        with requests.Session() as s:
            s.trust_env = False
            r = s.get("http://%s/v1/apps" % ASC, proxies={"http": proxy}, timeout=10)
            self.assertEqual(r.status_code, 200, r.text)
            # the base-URL style (what a client without proxy support does: Node's fetch...)
            r = s.get("http://127.0.0.1:%d/v1/apps" % self.gw.port,
                      headers={"Proxy-Authorization": "Bearer " + secret}, timeout=10)
            self.assertEqual(r.status_code, 200, r.text)
            # pagination links point back at the gateway (rewrite_links), so they keep working
            nxt = r.json().get("links", {}).get("next")
            if nxt:
                self.assertTrue(nxt.startswith("http://127.0.0.1:%d/" % self.gw.port), nxt)
            self.assert_forwarded_ok(mark, 2)
            # an https:// URL through the proxy becomes CONNECT: refused
            with self.assertRaises(requests.exceptions.ProxyError):
                s.get("https://%s/v1/apps" % ASC, proxies={"https": proxy}, timeout=10)

    # -- comparison ------------------------------------------------------------------------------

    def test_constant_time_comparison_in_source(self):
        with open(os.path.join(h.SOURCE_DIR, "proxy", "gateway.c")) as f:
            src = f.read()
        m = re.search(r"\nstatic const struct conf_client \*match_secret\([^)]*\)\s*\{(.*?)\n\}",
                      src, re.S)
        self.assertIsNotNone(m, "match_secret() not found in proxy/gateway.c")
        body = m.group(1)
        # SHA-256 of the presented secret, compared with CRYPTO_memcmp against every client:
        self.assertIn("sha256(secret, len, h)", body)
        self.assertIn("CRYPTO_memcmp(h, cl->key_sha256, 32)", body)
        loop = re.search(r"for \(size_t i = 0; i < conf->nclients; i\+\+\) \{(.*?)\n    \}", body,
                         re.S)
        self.assertIsNotNone(loop, "a loop over every client")
        self.assertNotRegex(loop.group(1), r"\b(break|return|goto)\b",
                            "the loop must not stop at the first match")
        self.assertNotRegex(body, r"(?<!CRYPTO_)\bmemcmp\(|strcmp\(")
        self.assertIn("OPENSSL_cleanse(h", body)
        # both schemes go through it, and the Basic user name is checked only afterwards
        ident = src[src.index("void gateway_identify("):src.index("void gateway_authorize(")]
        self.assertEqual(ident.count("match_secret("), 2)
        self.assertLess(ident.index("cl = match_secret(conf, colon + 1"),
                        ident.index("memcmp(cl->name, dec, ul)"))
        # and key_sha256 is compared nowhere else
        outside = src.replace(m.group(0), "")
        self.assertNotRegex(outside, r"memcmp\([^;]*key_sha256")

    def test_wrong_secrets_counted_and_logged(self):
        n = 24
        before = counter(self.px, "apple_auth_proxy_errors_total", code=AUTH_REQUIRED)
        before407 = counter(self.px, "apple_auth_proxy_requests_total", code="407")
        err_mark = len(self.px.stderr_text())
        mark = self.up.mark()
        wrong = [new_secret() for _ in range(n)]
        with h.HttpClient(self.gw.port) as c:   # one keep-alive connection: 407 keeps it open
            for i, s in enumerate(wrong):
                hdrs = bearer(s) if i % 2 else basic("dev-alice", s)
                assert_407(self, c.request("GET", "/v1/apps", hdrs))
        self.assertEqual(counter(self.px, "apple_auth_proxy_errors_total", code=AUTH_REQUIRED)
                         - before, n)
        self.assertEqual(counter(self.px, "apple_auth_proxy_requests_total", code="407")
                         - before407, n)
        self.assert_nothing_forwarded(mark)
        pt.wait_until(lambda: self.px.stderr_text()[err_mark:].count(
            "refused: the client credentials are not valid") >= n, 5, msg="refusal log lines")
        log = self.px.stderr_text()[err_mark:]
        lines = [l for l in log.splitlines() if "refused" in l]
        self.assertEqual(len(lines), n, log)
        for l in lines:
            self.assertRegex(l, r" warn client 127\.0\.0\.1:\d+: refused: the client credentials "
                                r"are not valid$")
        for s in wrong + list(self.gw.secrets.values()):
            self.assertNotIn(s, self.px.stderr_text())

    # -- policy ----------------------------------------------------------------------------------

    def test_get_only_client_post_forbidden(self):
        mark = self.up.mark()
        auth = self.gw.auth("reader")
        r = self.gw.get("/v1/apps", auth + [("Content-Type", "application/json")], method="POST",
                        body=json.dumps({"data": {"type": "apps"}}))
        assert_forbidden(self, r, "client reader may not send POST /v1/apps")
        assert_forbidden(self, self.gw.get("/v1/apps/1", auth, method="DELETE"))
        assert_forbidden(self, self.gw.get("/v1/apps", auth, method="PATCH", body=b"{}"))
        assert_forbidden(self, self.gw.get("/v1/builds", auth))       # outside its path_prefix
        assert_forbidden(self, self.gw.get(WEATHER_PATH, auth))        # ditto
        self.assert_nothing_forwarded(mark)
        # HEAD is allowed by the rule, so the proxy forwards it (the token's scope names GET
        # only: the stand-in, matching methods exactly, refuses it; see docs/deployment.md, "The team gateway")
        r = send(self.gw.port, "HEAD", "/v1/apps", auth)
        self.assertNotEqual(r.status, 403)
        self.assertEqual([e["method"] for e in self.up.requests(mark)][:1], ["HEAD"])

    def test_client_scope_claim_of_get_only_client(self):
        mark = self.up.mark()
        r = self.gw.get("/v1/apps", self.gw.auth("reader"))
        self.assertEqual(r.status, 200, r.body)
        ev = self.assert_forwarded_ok(mark, 1)[0]
        self.assertEqual(ev["token_claims"].get("scope"), ["GET /v1/apps"])
        # an unrestricted client on the same route gets the credential's usual, unscoped token
        mark = self.up.mark()
        self.assertEqual(self.gw.get("/v1/apps", self.gw.auth("dev-alice")).status, 200)
        ev = self.assert_forwarded_ok(mark, 1)[0]
        self.assertNotIn("scope", ev["token_claims"])

    def test_secrets_wiped_from_memory_regression(self):
        """After requests whose heads carried a client's secret (Bearer, and Basic in base64;
        heads split across reads on the plain and the TLS listener so that buffers are joined
        and grown), the secret is nowhere in the proxy's memory, and the JWT it sent is held
        once: by the token cache, not by freed buffers."""
        secret = self.gw.secrets["local-svc"]
        basic_value = basic("local-svc", secret)[0][1]
        mark = self.up.mark()
        for tls in (None, self.gw.mtls(cert=False)):
            port = self.gw.tls_port if tls else self.gw.port
            for auth in ("Bearer " + secret, basic_value):
                head = ("GET /v1/apps HTTP/1.1\r\nHost: localhost\r\nProxy-Authorization: %s"
                        "\r\nX-Pad: %s\r\n\r\n" % (auth, "p" * 3000)).encode()
                cut = head.index(b"Proxy-Authorization") + 30
                with h.HttpClient(port, tls=tls,
                                  server_hostname="localhost" if tls else None) as c:
                    c.send(head[:cut])
                    time.sleep(0.1)
                    c.send(head[cut:])
                    r = c.read_response("GET")
                    self.assertEqual(r.status, 200, r.body)
        reqs = self.up.requests(mark)
        self.assertEqual(len(reqs), 4)
        jwt = pt.auth_headers(reqs[-1])[0][len("Bearer "):].encode()
        time.sleep(0.3)  # the last exchange's buffers are given back after the response
        pid = self.px.pid
        self.assertEqual(pt.memory_count(pid, secret.encode()), 0,
                         "the client's secret is still in the proxy's memory")
        self.assertEqual(pt.memory_count(pid, basic_value.split(" ")[1].encode()), 0,
                         "the Basic credentials are still in the proxy's memory")
        self.assertLessEqual(pt.memory_count(pid, jwt), 1,
                             "copies of the token line outlive the requests that carried it")

    def test_path_tricks_cannot_pass_allow_rules(self):
        """The reader may GET /v1/apps...: paths that start with that prefix as sent but name
        something else to a server that reads '\\' as '/' or strips ';' parameters are refused
        before its rules are looked at (a literal '\\' used to pass)."""
        mark = self.up.mark()
        auth = self.gw.auth("reader")
        for path in ("/v1/apps\\..\\users", "/v1/apps/..\\users", "/v1/apps/..;/users",
                     "/v1/apps;x=1/../../users", "/v1/apps/..%3B/users", "/v1/apps;"):
            with self.subTest(path=path):
                r = self.gw.get(path, auth)
                self.assertEqual((r.status, pt.error_code(r)), (400, "PROXY_BAD_REQUEST"), r.body)
        self.assert_nothing_forwarded(mark)
        # the query may hold them
        r = self.gw.get("/v1/apps?filter=a;b\\c", auth)
        self.assertEqual(r.status, 200, r.body)

    def test_client_scope_401_remint_regression(self):
        """Apple refuses a client-scoped token once: the proxy drops that token, mints a new one
        with the client's own scope (not the route's wider one) and retries once; the client
        sees the 200. (The 401 used to reach the client: the invalidation looked up the
        route's token, not the client's.)"""
        auth = self.gw.auth("reader")
        mark = self.up.mark()
        self.assertEqual(self.gw.get("/v1/apps", auth).status, 200)
        t1 = pt.tokens_seen(self.up, mark)[0]
        pt.standin_control(self.up, "revoke", token=t1)
        mark = self.up.mark()
        r = self.gw.get("/v1/apps", auth)
        self.assertEqual(r.status, 200, r.body)
        reqs = self.up.requests(mark)
        self.assertEqual(len(reqs), 2, "one refused request and exactly one retry")
        self.assertIn("revoked", reqs[0]["token_error"])
        self.assertTrue(reqs[1]["token_ok"], reqs[1]["token_error"])
        self.assertEqual(reqs[1]["token_claims"].get("scope"), ["GET /v1/apps"])
        t2 = pt.auth_headers(reqs[1])[0][len("Bearer "):]
        self.assertNotEqual(t2, t1)
        # the new token is the one cached for the client from now on
        mark = self.up.mark()
        self.assertEqual(self.gw.get("/v1/apps", auth).status, 200)
        self.assertEqual(pt.tokens_seen(self.up, mark), [t2])

    def test_client_scope_names_exact_resources(self):
        """The allow rule is a path prefix, but Apple's scope entries name exact resources: the
        reader's token ("GET /v1/apps") is refused by Apple for /v1/apps/1 although the proxy's
        rule lets the request through (docs/deployment.md, "The team gateway" says to list exact resource paths)."""
        mark = self.up.mark()
        r = self.gw.get("/v1/apps/1", self.gw.auth("reader"))
        self.assertEqual(r.status, 401, r.body)
        reqs = self.up.requests(mark)
        self.assertGreaterEqual(len(reqs), 1)
        self.assertIn("matches no scope entry", reqs[0]["token_error"])

    def test_client_limited_to_weather(self):
        mark = self.up.mark()
        auth = self.gw.auth("weather-svc")
        assert_forbidden(self, self.gw.get("/v1/apps", auth),
                         "client weather-svc may not use credential asc")
        assert_forbidden(self, self.gw.get("http://%s/v1/apps" % ASC, auth, host=ASC))
        self.assert_nothing_forwarded(mark)
        r = self.gw.get(WEATHER_PATH, auth)
        self.assertEqual(r.status, 200, r.body)
        ev = self.assert_forwarded_ok(mark, 1)[0]
        self.assertEqual(ev["host"], WK)

    def test_cidr_refusal(self):
        mark = self.up.mark()
        r = self.gw.get("/v1/apps", self.gw.auth("office"))
        assert_forbidden(self, r, "client office may not connect from 127.0.0.1")
        r = self.gw.get("/v1/apps", basic("office", self.gw.secrets["office"]))
        assert_forbidden(self, r)
        self.assert_nothing_forwarded(mark)

    def test_cidr_acceptance(self):
        mark = self.up.mark()
        r = self.gw.get("/v1/apps", self.gw.auth("local-svc"))
        self.assertEqual(r.status, 200, r.body)
        self.assert_forwarded_ok(mark, 1)

    def test_rate_limit_burst_then_429_then_again(self):
        auth = self.gw.auth("limited")
        mark = self.up.mark()
        with h.HttpClient(self.gw.port) as c:
            for i in range(3):
                r = c.request("GET", "/v1/apps", auth)
                self.assertEqual(r.status, 200, (i, r.body))
            r = c.request("GET", "/v1/apps", auth)
            t429 = time.monotonic()
        self.assertEqual(r.status, 429, r.body)
        self.assertEqual(pt.error_code(r), "PROXY_RATE_LIMITED")
        retry = int(r.header("Retry-After"))
        self.assertGreaterEqual(retry, 1)
        self.assertLessEqual(retry, 2)
        self.assert_forwarded_ok(mark, 3)
        # other clients are not affected
        self.assertEqual(self.gw.get("/v1/apps", self.gw.auth("dev-alice")).status, 200)
        time.sleep(max(0, retry - (time.monotonic() - t429)) + 0.05)
        r = self.gw.get("/v1/apps", auth)
        self.assertEqual(r.status, 200, r.body)

    def test_access_log_names_the_client(self):
        probe = "probe-%s" % os.urandom(4).hex()
        r = self.gw.get("/v1/apps?limit=1&p=" + probe, self.gw.auth("dev-alice"))
        self.assertEqual(r.status, 200, r.body)
        r = self.gw.get("/v1/apps?p=" + probe, basic("reader", self.gw.secrets["reader"]),
                        method="DELETE")
        assert_forbidden(self, r)
        lines = pt.access_log(self.gw.access_log, 2, pred=lambda l: probe in l["path"])
        got = [(l["method"], l["status"], l["client"]) for l in lines if probe in l["path"]]
        self.assertEqual(got, [("GET", 200, "dev-alice"), ("DELETE", 403, "reader")])

    # -- mutual TLS ------------------------------------------------------------------------------

    def test_client_cert_subject_rfc2253(self):
        # what the docs tell operators to run, and what cert_subject must hold
        self.assertEqual(self.gw.cc["subject"], "subject=" + CLIENT_SUBJECT)

    def test_mtls_client_certificate_identifies_client(self):
        mark = self.up.mark()
        probe = "mtls-%s" % os.urandom(4).hex()
        r = send(self.gw.tls_port, "GET", "/v1/apps?limit=1&probe=" + probe, tls=self.gw.mtls())
        self.assertEqual(r.status, 200, r.body)
        self.assert_forwarded_ok(mark, 1)
        line = pt.access_log(self.gw.access_log, 1, pred=lambda l: probe in l["path"])
        line = [l for l in line if probe in l["path"]][0]
        self.assertEqual((line["status"], line["credential"]), (200, "asc"))
        self.assertEqual(line["client"], "ci-runner", line)
        # a verified certificate is the identity even when Proxy-Authorization names another
        # client: weather-svc may not use asc, ci-runner may
        r = send(self.gw.tls_port, "GET", "/v1/apps", self.gw.auth("weather-svc"),
                 tls=self.gw.mtls())
        self.assertEqual(r.status, 200, r.body)

    def test_mtls_unknown_client_certificate_fails_handshake(self):
        """Same subject, but from a CA the listener does not trust: the handshake is refused
        (TLS 1.2: inside the handshake, with an unknown_ca alert; TLS 1.3: the client learns it
        after its Finished, on its first write or read), and no request gets through."""
        mark = self.up.mark()
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=version.name):
                ctx = client_tls(self.gw.certs["ca_cert"], self.gw.cc["rogue_cert"],
                                 self.gw.cc["rogue_key"], max_version=version)
                stage, got = "handshake", None
                try:
                    with h.HttpClient(self.gw.tls_port, tls=ctx,
                                      server_hostname="localhost") as c:
                        stage = "request"
                        c.request("GET", "/v1/apps", self.gw.auth("dev-alice"), read=False)
                        got = c.read_until_close(5)
                except (ssl.SSLError, ConnectionError) as e:
                    got = e
                if version == ssl.TLSVersion.TLSv1_2:
                    self.assertEqual(stage, "handshake", got)
                    self.assertIn("UNKNOWN_CA", str(got))
                else:
                    self.assertFalse(isinstance(got, bytes) and got.startswith(b"HTTP/"),
                                     "an unverified certificate got an HTTP answer: %r" % (got,))
        self.assert_nothing_forwarded(mark)
        self.assertTrue(self.px.alive())

    def test_mtls_verified_certificate_of_no_client_falls_back_to_header(self):
        ctx = client_tls(self.gw.certs["ca_cert"], self.gw.cc["stranger_cert"],
                         self.gw.cc["stranger_key"])
        assert_407(self, send(self.gw.tls_port, "GET", "/v1/apps", tls=ctx))
        r = send(self.gw.tls_port, "GET", "/v1/apps", self.gw.auth("dev-alice"), tls=ctx)
        self.assertEqual(r.status, 200, r.body)

    def test_tls_listener_without_client_cert_uses_proxy_authorization(self):
        mark = self.up.mark()
        r = send(self.gw.tls_port, "GET", "/v1/apps", self.gw.auth("dev-alice"),
                 tls=self.gw.mtls(cert=False))
        self.assertEqual(r.status, 200, r.body)
        self.assert_forwarded_ok(mark, 1)
        r = send(self.gw.tls_port, "GET", "/v1/apps", tls=self.gw.mtls(cert=False))
        assert_407(self, r)
        # the plain listener ignores certificates entirely: no Proxy-Authorization, no entry
        assert_407(self, self.gw.get("/v1/apps"))


# ------------------------------------------------------------------------------------------------
# client-key


class ClientKeyTest(unittest.TestCase):
    def test_client_key_output_and_use(self):
        rc, out, err = h.run_cli(["client-key", "ci-bot"])
        self.assertEqual(rc, 0, err)
        m = re.search(r"^  ([A-Za-z0-9_-]+)$", out, re.M)
        self.assertIsNotNone(m, out)
        secret = m.group(1)
        self.assertEqual(len(secret), 43)
        line = re.search(r'^  ("clients": \{ "ci-bot": \{ "key_sha256": "([0-9a-f]{64})" \} \})$',
                         out, re.M)
        self.assertIsNotNone(line, out)
        self.assertEqual(line.group(2), sha256_hex(secret))
        self.assertIn("Proxy-Authorization: Bearer " + secret, out)
        self.assertIn("http_proxy=http://ci-bot:%s@HOST:PORT" % secret, out)
        # every run makes a new one
        rc2, out2, _ = h.run_cli(["client-key", "ci-bot"])
        self.assertNotIn(secret, out2)
        # the printed line, pasted into a configuration, accepts the secret
        clients = json.loads("{" + line.group(1) + "}")["clients"]
        up = shared_standin()
        key = h.make_key()
        cfg = h.write_config({"asc": h.credential("app-store-connect", key)},
                             [h.route(up, "app-store-connect", "asc")], clients=clients)
        rc, cout, cerr = h.run_cli(["check", "-c", cfg])
        self.assertEqual(rc, 0, cerr)
        px = h.start_proxy(cfg)
        try:
            self.assertEqual(send(px.port, "GET", "/v1/apps", bearer(secret)).status, 200)
            self.assertEqual(send(px.port, "GET", "/v1/apps", basic("ci-bot", secret)).status,
                             200)
            assert_407(self, send(px.port, "GET", "/v1/apps", bearer(line.group(2))))
        finally:
            px.stop()
        self.assertNotIn(secret, px.stderr_text() + px.stdout_text())


# ------------------------------------------------------------------------------------------------
# Apple's quota


class QuotaReserveTest(unittest.TestCase):
    """The stand-in starts each key at 5 requests left this hour; the credential keeps 10 for
    priority clients."""

    @classmethod
    def setUpClass(cls):
        cls.up = h.start_standin(rate_remaining=5)
        cls.key = h.make_key()
        cls.secrets = {"script": new_secret(), "release": new_secret()}
        clients = {"script": {"key_sha256": sha256_hex(cls.secrets["script"])},
                   "release": {"key_sha256": sha256_hex(cls.secrets["release"]),
                               "priority": True}}
        cfg = h.write_config({"asc": h.credential("app-store-connect", cls.key,
                                                  quota_reserve=10)},
                             [h.route(cls.up, "app-store-connect", "asc")], clients=clients,
                             admin_listen="127.0.0.1:0")
        cls.px = h.start_proxy(cfg)

    def get(self, who):
        return send(self.px.port, "GET", "/v1/apps", bearer(self.secrets[who]))

    def test_quota_reserve_from_x_rate_limit(self):
        # nothing is known before Apple's first answer: it goes through and reports 5 left
        r = self.get("script")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.header("X-Rate-Limit"), "user-hour-lim:3600;user-hour-rem:5;")
        m = pt.metrics(self.px)
        self.assertEqual(m.value("apple_auth_proxy_apple_rate_limit_remaining", credential="asc"),
                         5)
        # 5 <= 10: the rest is reserved for priority clients
        mark = self.up.mark()
        r = self.get("script")
        self.assertEqual(r.status, 429, r.body)
        self.assertEqual(pt.error_code(r), "PROXY_QUOTA_RESERVED")
        self.assertIn("credential asc has 5 requests left this hour; the last 10 are reserved",
                      pt.error_detail(r))
        retry = int(r.header("Retry-After"))
        self.assertTrue(1 <= retry <= 60, retry)
        self.assertEqual(self.up.requests(mark), [])
        # a priority client still gets through
        r = self.get("release")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.header("X-Rate-Limit"), "user-hour-lim:3600;user-hour-rem:4;")
        self.assertEqual(len(self.up.requests(mark)), 1)
        self.assertEqual(pt.metrics(self.px).value("apple_auth_proxy_apple_rate_limit_remaining",
                                                   credential="asc"), 4)
        # until Apple itself says no: the stand-in's 429 (App Store Connect sends no
        # Retry-After with it) is passed through as it is
        for _ in range(4):
            self.assertEqual(self.get("release").status, 200)
        r = self.get("release")
        self.assertEqual(r.status, 429)
        self.assertEqual(r.json()["errors"][0]["code"], "RATE_LIMIT_EXCEEDED")
        self.assertIsNone(r.header("Retry-After"))
        self.assertEqual(pt.error_code(self.get("script")), "PROXY_QUOTA_RESERVED")


# ------------------------------------------------------------------------------------------------
# Apple's Retry-After


class AppleRetryAfterTest(unittest.TestCase):
    """Apple's 429 with Retry-After is passed through, and the credential then rests for
    everyone until the time has passed, without reaching Apple."""

    @classmethod
    def setUpClass(cls):
        cls.up = shared_standin()
        keys = {n: h.make_key() for n in ("asc", "storekit", "storekit-sandbox")}
        creds = {"asc": h.credential("app-store-connect", keys["asc"]),
                 "storekit": h.credential("app-store-server", keys["storekit"]),
                 "storekit-sandbox": h.credential("app-store-server", keys["storekit-sandbox"])}
        routes = [h.route(cls.up, "app-store-server", "storekit", path_prefix="/inApps/",
                          host=SK),
                  h.route(cls.up, "app-store-server-sandbox", "storekit-sandbox",
                          path_prefix="/inApps/", host=SK_SANDBOX),
                  h.route(cls.up, "app-store-connect", "asc")]
        cls.secrets = {"a": new_secret(), "b": new_secret()}
        clients = {n: {"key_sha256": sha256_hex(s)} for n, s in cls.secrets.items()}
        cls.px = h.start_proxy(h.write_config(creds, routes, clients=clients))

    def get(self, path, host=None, who="a"):
        return send(self.px.port, "GET", path, bearer(self.secrets[who]), host=host)

    def rests_then_resumes(self, first, path, host, seconds, slack=1.5):
        """first: Apple's 429 just received (at time.time() ~ now). Requests to path rest for
        about `seconds`, for every client, then go through again."""
        t0 = time.time()
        self.assertEqual(first.status, 429, first.body)
        mark = self.up.mark()
        for who in ("a", "b"):
            r = self.get(path, host, who)
            self.assertEqual(r.status, 429, r.body)
            self.assertEqual(pt.error_code(r), "PROXY_APPLE_RETRY_AFTER")
            retry = int(r.header("Retry-After"))
            self.assertTrue(1 <= retry <= seconds + 1, retry)
        self.assertEqual(self.up.requests(mark), [], "nothing reaches Apple while it rests")
        time.sleep(max(0.0, t0 + seconds + 0.15 - time.time()))
        deadline = time.time() + slack
        while True:
            r = self.get(path, host)
            if r.status == 200 or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(r.status, 200, r.body)

    def test_apple_429_delta_seconds(self):
        r = self.get("/v1/__rate_limit?after=2")
        self.assertEqual(r.header("Retry-After"), "2")
        self.assertEqual(r.json()["errors"][0]["code"], "RATE_LIMIT_EXCEEDED")
        # only the credential concerned rests
        self.assertEqual(self.get("/inApps/v1/history/1000000000000001", SK).status, 200)
        self.rests_then_resumes(r, "/v1/apps", None, 2)

    def test_app_store_server_429_epoch_milliseconds(self):
        r = self.get("/inApps/v1/__rate_limit?after=2", SK)
        self.assertEqual(r.json(), {"errorCode": 4290000, "errorMessage": "Rate limit exceeded."})
        ra = int(r.header("Retry-After"))
        self.assertGreater(ra, 10 ** 12, "the App Store Server API's form: epoch milliseconds")
        self.assertAlmostEqual(ra / 1000.0, time.time() + 2, delta=1.5)
        # not read as 1.7e12 seconds from now: the wait the proxy reports is about 2 s
        self.rests_then_resumes(r, "/inApps/v1/history/1000000000000001", SK, 2)

    def test_apple_429_http_date(self):
        r = self.get("/inApps/v1/__rate_limit?after=2&form=date", SK_SANDBOX)
        self.assertRegex(r.header("Retry-After"), r"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$")
        self.rests_then_resumes(r, "/inApps/v1/history/1000000000000001", SK_SANDBOX, 2)


class AppleRetryAfterBoundTest(unittest.TestCase):
    """A Retry-After far in the future (a delta of days, a date centuries ahead) rests the
    credential for an hour at most, and says so in the log: one garbled answer must not take the
    credential away from every client for longer (regression: it rested for the whole time)."""

    def test_long_retry_after_rests_an_hour_at_most(self):
        up = shared_standin()
        creds = {"asc": h.credential("app-store-connect", h.make_key()),
                 "storekit": h.credential("app-store-server", h.make_key())}
        routes = [h.route(up, "app-store-server", "storekit", path_prefix="/inApps/", host=SK),
                  h.route(up, "app-store-connect", "asc")]
        secret = new_secret()
        px = h.start_proxy(h.write_config(creds, routes,
                                          clients={"a": {"key_sha256": sha256_hex(secret)}}))
        try:
            for path, host, name in (("/v1/__rate_limit?after=864000", None, "asc"),
                                     ("/inApps/v1/__rate_limit?after=864000000&form=date", SK,
                                      "storekit")):
                r = send(px.port, "GET", path, bearer(secret), host=host)
                self.assertEqual(r.status, 429, r.body)
                probe = "/v1/apps" if host is None else "/inApps/v1/history/1000000000000001"
                mark = up.mark()
                r = send(px.port, "GET", probe, bearer(secret), host=host)
                self.assertEqual(pt.error_code(r), "PROXY_APPLE_RETRY_AFTER", r.body)
                self.assertTrue(3500 <= int(r.header("Retry-After")) <= 3600,
                                r.header("Retry-After"))
                self.assertEqual(up.requests(mark), [], "nothing reaches Apple while it rests")
                pt.wait_until(lambda: "credential %s: Apple's Retry-After" % name
                              in px.stderr_text(), 10, 0.1, "the warning for " + name)
        finally:
            px.stop()


# ------------------------------------------------------------------------------------------------
# The audit log


class AuditLogTest(unittest.TestCase):
    """Every kind of exchange on a gateway of its own, then its access log and stderr."""

    @classmethod
    def setUpClass(cls):
        cls.gw = Gateway()

    def test_audit_log_fields_masking_and_no_secrets(self):
        gw = self.gw
        mark = gw.up.mark()
        wrong = new_secret()
        traffic = [
            # (method, target, expected status, headers, tls, host)
            ("GET", "/v1/apps?token=abc&limit=2", 200, gw.auth("dev-alice"), None, None),
            ("GET", "http://%s/v1/apps?filter[name]=Demo" % ASC, 200,
             basic("dev-alice", gw.secrets["dev-alice"]), None, ASC),
            ("GET", WEATHER_PATH + "?key=k1&secret=s2", 200, gw.auth("weather-svc"), None, None),
            ("GET", "/v1/apps?password=p4ss", 407, bearer(wrong), None, None),
            ("POST", "/v1/apps", 403, gw.auth("reader"), None, None),
            ("GET", "/v1/apps", 403, gw.auth("office"), None, None),
            ("GET", "/v1/apps?access_token=zzz", 200, [], gw.mtls(), None),
        ]
        sent = 0
        for method, target, status, hdrs, tls, host in traffic:
            with self.subTest(step="traffic", target=target):
                port = gw.tls_port if tls else gw.port
                body = b'{"data":{}}' if method == "POST" else None
                r = send(port, method, target, hdrs, body, host, tls)
                sent += 1
                self.assertEqual(r.status, status, (target, r.body))
        for _ in range(4):  # the limited client's burst and one 429
            send(gw.port, "GET", "/v1/apps", gw.auth("limited"))
            sent += 1
        try:
            pt.access_log(gw.access_log, sent)
        except AssertionError:
            pass  # checked below, line by line
        lines, bad = pt.read_json_lines(gw.access_log)
        by_path = {}
        for l in lines:
            by_path.setdefault((l.get("method"), l.get("path")), []).append(l)

        def one(method, path):
            self.assertIn((method, path), by_path, sorted(by_path))
            return by_path[(method, path)][0]

        with self.subTest(step="every line is a JSON object with every field"):
            self.assertEqual(bad, [])
            self.assertEqual(len(lines), sent)
            fields = {"time", "client", "remote", "method", "path", "route", "credential",
                      "status", "error", "outcome", "bytes_in", "bytes_out", "duration",
                      "upstream_reused", "apple_quota_remaining"}
            for l in lines:
                self.assertEqual(set(l), fields, l)
                self.assertRegex(l["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
                self.assertRegex(l["remote"], r"^127\.0\.0\.1:\d+$")
                self.assertIsInstance(l["duration"], float)
                self.assertIsInstance(l["bytes_in"], int)
                self.assertIsInstance(l["bytes_out"], int)
                self.assertGreater(l["bytes_out"], 0)
        with self.subTest(step="forwarded exchanges"):
            l = one("GET", "/v1/apps?token=***&limit=2")
            self.assertEqual((l["status"], l["route"], l["credential"], l["error"], l["outcome"]),
                             (200, "%s/" % ASC, "asc", None, "ok"))
            self.assertIsInstance(l["upstream_reused"], bool)
            self.assertIsInstance(l["apple_quota_remaining"], int)
            l = one("GET", WEATHER_PATH + "?key=***&secret=***")
            self.assertEqual((l["status"], l["credential"], l["route"]),
                             (200, "weather", "%s/api/v1/" % WK))
            self.assertIsNone(l["apple_quota_remaining"])   # WeatherKit sends no X-Rate-Limit
            self.assertEqual(one("POST", "/v1/apps")["bytes_in"], 0)  # refused before the body
        with self.subTest(step="refusals"):
            l = one("GET", "/v1/apps?password=***")
            self.assertEqual((l["client"], l["status"], l["error"], l["route"], l["credential"],
                              l["upstream_reused"]), (None, 407, AUTH_REQUIRED, None, None, None))
            l = one("POST", "/v1/apps")
            self.assertEqual((l["status"], l["error"], l["upstream_reused"]),
                             (403, FORBIDDEN, None))
            l = [x for x in by_path.get(("GET", "/v1/apps"), []) if x["status"] == 403]
            self.assertEqual([x["error"] for x in l], [FORBIDDEN])
            l = [x for x in by_path.get(("GET", "/v1/apps"), []) if x["status"] == 429]
            self.assertEqual([x["error"] for x in l], ["PROXY_RATE_LIMITED"])
        with self.subTest(step="the client of every identified exchange"):
            got = {(l["method"], l["path"], l["status"]): l["client"] for l in lines}
            want = {("GET", "/v1/apps?token=***&limit=2", 200): "dev-alice",
                    ("GET", "http://%s/v1/apps?filter[name]=Demo" % ASC, 200): "dev-alice",
                    ("GET", WEATHER_PATH + "?key=***&secret=***", 200): "weather-svc",
                    ("GET", "/v1/apps?password=***", 407): None,
                    ("POST", "/v1/apps", 403): "reader",
                    ("GET", "/v1/apps", 403): "office",
                    ("GET", "/v1/apps", 429): "limited",
                    ("GET", "/v1/apps?access_token=***", 200): "ci-runner"}
            self.assertEqual({k: got.get(k, "(no line)") for k in want}, want)

        # nothing secret anywhere the proxy writes
        gw.proxy.stop()
        text = (pt.read_bytes(gw.access_log) + gw.proxy.stderr_text().encode() +
                gw.proxy.stdout_text().encode())
        with self.subTest(step="no client secret, no masked query value"):
            for s in list(gw.secrets.values()) + [wrong]:
                self.assertNotIn(s.encode(), text)
                self.assertNotIn(base64.b64encode(s.encode())[:40], text)
            for q in (b"abc", b"k1", b"s2", b"zzz", b"p4ss"):
                self.assertNotIn(b"=" + q, text)
        with self.subTest(step="no token"):
            tokens = pt.tokens_seen(gw.up, mark)
            self.assertGreaterEqual(len(tokens), 4)
            for t in tokens:
                self.assertNotIn(t.encode(), text)
                self.assertNotIn(t.split(".")[2].encode(), text)
        with self.subTest(step="no private key material"):
            self.assertNotIn(b"PRIVATE KEY", text)
            pems = [gw.asc_key.private_pem, gw.wk_key.private_pem]
            for path in (gw.certs["good_key"], gw.cc["key"]):
                with open(path, "rb") as f:
                    pems.append(f.read())
            for pem in pems:
                for line in pem.splitlines():
                    if line and not line.startswith(b"-----") and len(line) >= 16:
                        self.assertNotIn(line, text)


# ------------------------------------------------------------------------------------------------
# SIGHUP


class ReloadClientsTest(unittest.TestCase):
    def write(self, names):
        clients = {n: {"key_sha256": sha256_hex(self.secrets[n])} for n in names}
        tmp = self.config + ".tmp"
        h.write_config(self.creds, self.routes, clients=clients, path=tmp)
        os.replace(tmp, self.config)

    def test_sighup_adds_and_removes_clients(self):
        up = shared_standin()
        self.creds = {"asc": h.credential("app-store-connect", h.make_key())}
        self.routes = [h.route(up, "app-store-connect", "asc")]
        self.secrets = {n: new_secret() for n in ("alice", "bob", "carol")}
        self.config = os.path.join(h.new_dir("reload-clients"), "config.json")
        self.write(["alice", "bob"])
        px = h.start_proxy(self.config)
        try:
            def status(n):
                return send(px.port, "GET", "/v1/apps", bearer(self.secrets[n])).status
            self.assertEqual([status(n) for n in ("alice", "bob", "carol")], [200, 200, 407])
            bob_conn = h.HttpClient(px.port)   # a keep-alive connection from before the reload
            self.assertEqual(bob_conn.request("GET", "/v1/apps", bearer(self.secrets["bob"]))
                             .status, 200)
            self.write(["alice", "carol"])
            rc, out, err = h.run_cli(["check", "-c", self.config])
            self.assertEqual(rc, 0, err)
            mark = len(px.stderr_text())
            px.proc.send_signal(signal.SIGHUP)
            pt.wait_stderr(px, r"reloaded", since=mark)
            self.assertEqual([status(n) for n in ("alice", "bob", "carol")], [200, 407, 200])
            r = send(px.port, "GET", "/v1/apps", basic("carol", self.secrets["carol"]))
            self.assertEqual(r.status, 200)
            # a removed client's open connection does not keep its access
            with bob_conn:
                assert_407(self, bob_conn.request("GET", "/v1/apps", bearer(self.secrets["bob"])))
        finally:
            px.stop()
        for s in self.secrets.values():
            self.assertNotIn(s, px.stderr_text())


if __name__ == "__main__":
    unittest.main()
