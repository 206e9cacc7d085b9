#!/usr/bin/python3
"""test_intercept: CONNECT interception with the proxy's own name-constrained CA
(docs/configuration.md "intercept", docs/security.md "Interception").

- the CA: made on the first start in intercept.ca_dir (key 0600), reused afterwards, refused in
  a directory others can read; `ca-cert` prints it (`--bundle` after the system bundle); its
  name constraints checked with `openssl verify` (a leaf for a foreign name or an IP address
  signed with the CA's own key fails);
- clients: curl --proxy with --cacert; Python requests with HTTPS_PROXY and REQUESTS_CA_BUNDLE,
  paginating through Apple's own https:// links.next; the stand-in sees the proxy's token;
- refusals: CONNECT to a foreign host (403 naming it, nothing upstream), a client that does not
  trust the CA, garbage instead of a ClientHello, a handshake that stalls (closed at the header
  timeout), a Host inside that names another host, gateway clients without Proxy-Authorization
  on the CONNECT (407 before any handshake) and the client's rules applied inside;
- without "intercept", CONNECT stays 405 PROXY_CONNECT_NOT_SUPPORTED;
- HTTPS listeners: base-URL clients get links.next rewritten to the https:// origin.
"""
import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

ASC = "api.appstoreconnect.apple.com"
WK = "weatherkit.apple.com"


def read_head(sock, timeout=10):
    """Reads an HTTP response head from a socket: (status, head text, rest bytes)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    status = int(text.split(" ", 2)[1]) if text.startswith("HTTP/") else 0
    return status, text, rest


def read_response(sock, timeout=10):
    """(status, head, body) of one Content-Length response."""
    status, head, rest = read_head(sock, timeout)
    n = 0
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            n = int(v.strip())
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, head, rest[:n]


def connect(port, target, headers=(), with_body=False):
    """A raw socket to the proxy after `CONNECT target`: (socket, status, head), and the body
    of a refusal with with_body."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = ["CONNECT %s HTTP/1.1" % target, "Host: %s" % target] + ["%s: %s" % kv for kv in headers]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    if with_body:
        status, head, body = read_response(s)
        return s, status, head, body.decode()
    status, head, _ = read_head(s)
    return s, status, head


def text_of(path):
    with open(path) as f:
        return f.read()


def authorization(ev):
    """The Authorization values the stand-in received with a request."""
    return [v for k, v in ev["headers"] if k.lower() == "authorization"]


def tunnel(port, host, ca, headers=()):
    """A TLS socket to host through the proxy, verified against ca."""
    s, status, head = connect(port, "%s:443" % host, headers)
    if status != 200:
        s.close()
        raise AssertionError("CONNECT answered %d:\n%s" % (status, head))
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx.wrap_socket(s, server_hostname=host)


def get(sock, path, host=ASC, extra=""):
    sock.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path, host, extra)).encode())
    return read_response(sock)


def stall_handshake(s):
    """Sends the start of a TLS record and nothing more; returns the seconds until the proxy
    closed the connection (socket.timeout, a failure, after 30 s)."""
    s.settimeout(30)
    s.sendall(b"\x16\x03\x01\x00")
    start = time.monotonic()
    try:
        data = s.recv(4096)
    except ConnectionResetError:
        data = b""
    took = time.monotonic() - start
    s.close()
    if data:
        raise AssertionError("an answer to a stalled handshake: %r" % data[:100])
    return took


def openssl(*args, input=None):
    p = subprocess.run(["openssl"] + list(args), capture_output=True, text=True, input=input,
                       timeout=60)
    return p.returncode, p.stdout + p.stderr


class Intercept(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.key = h.make_key()
        cls.up = h.start_standin()
        cls.ca_dir = os.path.join(h.new_dir("icpt"), "ca")  # made by the proxy
        cred = h.credential("app-store-connect", cls.key)
        cls.config = h.write_config(
            {"asc": cred, "weather": h.credential("weatherkit", h.make_key())},
            [h.route(cls.up, "weatherkit", "weather", path_prefix="/api/v1/"),
             h.route(cls.up, "app-store-connect", "asc")],
            intercept={"ca_dir": cls.ca_dir}, limits={"client_header_timeout": 2},
            admin_listen="127.0.0.1:0")
        cls.px = h.start_proxy(cls.config)
        rc, out, err = h.run_cli(["ca-cert", "-c", cls.config])
        if rc != 0:
            raise AssertionError("ca-cert failed: %s" % err)
        cls.ca = os.path.join(h.new_dir("icpt-ca"), "ca.pem")
        with open(cls.ca, "w") as f:
            f.write(out)

    def proxy_url(self):
        return "http://127.0.0.1:%d" % self.px.port

    # ---- the CA ----

    def test_ca_files_and_modes(self):
        st = os.stat(self.ca_dir)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o700)
        st = os.stat(os.path.join(self.ca_dir, "ca.key"))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        with open(os.path.join(self.ca_dir, "ca.pem")) as f:
            self.assertEqual(f.read(), text_of(self.ca), "ca-cert prints the CA in ca_dir")
        rc, text = openssl("x509", "-noout", "-text", "-in", self.ca)
        self.assertEqual(rc, 0, text)
        self.assertIn("NIST CURVE: P-256", text)
        self.assertRegex(text, r"X509v3 Name Constraints: critical\s+Permitted:\s+"
                               r"DNS:weatherkit\.apple\.com\s+DNS:api\.appstoreconnect\.apple\.com\s+"
                               r"Excluded:\s+IP:0\.0\.0\.0/0\.0\.0\.0\s+IP:0:0:0:0:0:0:0:0/")
        self.assertRegex(text, r"Basic Constraints: critical\s+CA:TRUE, pathlen:0")

    def test_admin_serves_the_ca_certificate(self):
        with h.HttpClient(self.px.admin_port) as c:
            r = c.request("GET", "/ca.pem")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("content-type"), "application/x-pem-file")
        self.assertEqual(r.body.decode(), text_of(self.ca))

    def test_ca_is_reused_by_the_next_start(self):
        before = text_of(os.path.join(self.ca_dir, "ca.pem"))
        px2 = h.start_proxy(self.config)
        try:
            s = tunnel(px2.port, ASC, self.ca)
            status, _, _ = get(s, "/v1/apps")
            s.close()
            self.assertEqual(status, 200)
        finally:
            px2.stop()
        self.assertEqual(text_of(os.path.join(self.ca_dir, "ca.pem")), before)

    def test_ca_dir_readable_by_others_is_refused(self):
        d = os.path.join(h.new_dir("icpt-open"), "ca")
        os.mkdir(d)
        os.chmod(d, 0o755)
        cfg = h.write_config({"asc": h.credential("app-store-connect", self.key)},
                             [h.route(self.up, "app-store-connect", "asc")],
                             intercept={"ca_dir": d})
        rc, out, err = h.run_cli(["ca-cert", "-c", cfg])
        self.assertNotEqual(rc, 0)
        self.assertIn("mode 755", err)
        with self.assertRaises(RuntimeError) as cm:
            h.start_proxy(cfg, timeout=10)
        self.assertIn("chmod 700", str(cm.exception))
        self.assertFalse(os.path.exists(os.path.join(d, "ca.key")))

    def test_ca_key_readable_by_others_is_refused(self):
        d = os.path.join(h.new_dir("icpt-key"), "ca")
        cfg = h.write_config({"asc": h.credential("app-store-connect", self.key)},
                             [h.route(self.up, "app-store-connect", "asc")],
                             intercept={"ca_dir": d})
        rc, _, err = h.run_cli(["ca-cert", "-c", cfg])
        self.assertEqual(rc, 0, err)
        os.chmod(os.path.join(d, "ca.key"), 0o644)
        rc, _, err = h.run_cli(["ca-cert", "-c", cfg])
        self.assertNotEqual(rc, 0)
        self.assertIn("chmod 600", err)

    def test_ca_that_does_not_permit_a_new_upstream_is_refused(self):
        d = os.path.join(h.new_dir("icpt-narrow"), "ca")
        one = h.write_config({"asc": h.credential("app-store-connect", self.key)},
                             [h.route(self.up, "app-store-connect", "asc")],
                             intercept={"ca_dir": d})
        self.assertEqual(h.run_cli(["ca-cert", "-c", one])[0], 0)
        two = h.write_config({"asc": h.credential("app-store-connect", self.key),
                              "weather": h.credential("weatherkit", h.make_key())},
                             [h.route(self.up, "weatherkit", "weather", path_prefix="/api/v1/"),
                              h.route(self.up, "app-store-connect", "asc")],
                             intercept={"ca_dir": d})
        rc, _, err = h.run_cli(["ca-cert", "-c", two])
        self.assertNotEqual(rc, 0)
        self.assertIn("do not permit weatherkit.apple.com", err)

    def test_ca_from_a_read_only_secret_volume(self):
        """A Kubernetes Secret volume: a read-only tmpfs, a world-writable sticky directory,
        files behind ..data symbolic links, the key group-readable (fsGroup). The CA is used
        as it is; a key others may read is refused even there."""
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            self.skipTest("needs root and unshare(1) to mount a read-only tmpfs")
        mnt = h.new_dir("secretvol")
        script = r"""
set -e
mount -t tmpfs -o mode=1777 tmpfs "$MNT"
mkdir "$MNT/..data"
cp "$SRC/ca.key" "$SRC/ca.pem" "$MNT/..data/"
chmod "$KEYMODE" "$MNT/..data/ca.key"
chmod 0444 "$MNT/..data/ca.pem"
ln -s ..data/ca.key "$MNT/ca.key"
ln -s ..data/ca.pem "$MNT/ca.pem"
mount -o remount,ro "$MNT"
exec "$BIN" ca-cert -c "$CFG"
"""
        cfg = h.write_config({"asc": h.credential("app-store-connect", self.key)},
                             [h.route(self.up, "app-store-connect", "asc")],
                             intercept={"ca_dir": mnt})

        def run(mode):
            return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                   script], capture_output=True, text=True, timeout=60,
                                  env=h.clean_env({"MNT": mnt, "SRC": self.ca_dir, "KEYMODE": mode,
                                                   "BIN": h.BINARY, "CFG": cfg}))
        p = run("0440")
        if p.returncode != 0 and "mount" in p.stderr and "permission denied" in p.stderr.lower():
            self.skipTest("mounting is not permitted here: " + p.stderr)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, text_of(self.ca))
        p = run("0444")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("chmod 600", p.stderr)

    def test_ca_cert_bundle_follows_the_system_bundle(self):
        system = os.path.join(h.new_dir("bundle"), "system.pem")
        certs = h.get_certs()
        with open(certs["other_ca_cert"]) as f:
            other = f.read()
        with open(system, "w") as f:
            f.write(other)
        rc, out, err = h.run_cli(["ca-cert", "-c", self.config, "--bundle"],
                                 env={"SSL_CERT_FILE": system})
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.startswith(other))
        self.assertTrue(out.endswith(text_of(self.ca)))

    def test_ca_cert_without_intercept_is_a_usage_error(self):
        cfg = h.write_config({"asc": h.credential("app-store-connect", self.key)},
                             [h.route(self.up, "app-store-connect", "asc")])
        rc, out, err = h.run_cli(["ca-cert", "-c", cfg])
        self.assertEqual(rc, 2)
        self.assertIn("APPLE_AUTH_PROXY_INTERCEPT_CA_DIR", err)
        self.assertEqual(out, "")

    def test_ca_dir_from_the_environment(self):
        d = os.path.join(h.new_dir("icpt-env"), "ca")
        cfg = h.write_config({"asc": h.credential("app-store-connect", self.key)},
                             [h.route(self.up, "app-store-connect", "asc")])
        rc, out, err = h.run_cli(["ca-cert", "-c", cfg],
                                 env={"APPLE_AUTH_PROXY_INTERCEPT_CA_DIR": d})
        self.assertEqual(rc, 0, err)
        self.assertIn("BEGIN CERTIFICATE", out)
        self.assertTrue(os.path.exists(os.path.join(d, "ca.key")))

    def test_name_constraints_with_openssl_verify(self):
        """A leaf signed with the CA's own key (what a thief could do) for a name outside the
        constraints, or for an IP address, fails verification; one for the upstream passes."""
        d = h.new_dir("nc")
        cakey = os.path.join(self.ca_dir, "ca.key")

        def leaf(name, san):
            key, csr, crt = (os.path.join(d, name + x) for x in (".key", ".csr", ".pem"))
            ext = os.path.join(d, name + ".ext")
            with open(ext, "w") as f:
                f.write("subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\n"
                        "extendedKeyUsage=serverAuth\n" % san)
            rc, text = openssl("req", "-new", "-newkey", "ec", "-pkeyopt",
                               "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr,
                               "-subj", "/CN=" + name)
            self.assertEqual(rc, 0, text)
            rc, text = openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", cakey,
                               "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", crt)
            self.assertEqual(rc, 0, text)
            return crt

        good = leaf(ASC, "DNS:" + ASC)
        rc, text = openssl("verify", "-CAfile", self.ca, good)
        self.assertEqual(rc, 0, text)
        for name, san in (("www.example.com", "DNS:www.example.com"),
                          ("appstoreconnect.apple.com", "DNS:appstoreconnect.apple.com"),
                          ("ip", "IP:93.184.216.34"), ("ip6", "IP:2001:db8::1")):
            rc, text = openssl("verify", "-CAfile", self.ca, leaf(name, san))
            self.assertNotEqual(rc, 0, "%s must fail verification: %s" % (name, text))
            self.assertRegex(text, r"(permitted|excluded) subtree violation")
        # No SAN at all: the CN is checked against the constraints too.
        rc, text = openssl("verify", "-CAfile", self.ca, leaf("evil.example.net", "email:x@example.net"))
        self.assertNotEqual(rc, 0, text)

    def test_leaf_served_for_the_host(self):
        s = tunnel(self.px.port, ASC, self.ca)
        der = s.getpeercert(binary_form=True)
        self.assertEqual(s.selected_alpn_protocol(), "http/1.1")
        s.close()
        pem = ssl.DER_cert_to_PEM_cert(der)
        rc, text = openssl("x509", "-noout", "-text", input=pem)
        self.assertEqual(rc, 0, text)
        self.assertIn("DNS:" + ASC, text)
        self.assertIn("NIST CURVE: P-256", text)
        self.assertRegex(text, r"Basic Constraints: critical\s+CA:FALSE")
        rc, dates = openssl("x509", "-noout", "-startdate", "-enddate", input=pem)
        nb = ssl.cert_time_to_seconds(dates.split("notBefore=")[1].split("\n")[0].strip())
        na = ssl.cert_time_to_seconds(dates.split("notAfter=")[1].split("\n")[0].strip())
        self.assertLessEqual(na - nb, 25 * 3600 + 60, "a leaf lives a day (plus the backdating)")
        self.assertGreater(na, time.time() + 8 * 3600)
        # The same leaf for the next connection (cached), on another connection.
        s = tunnel(self.px.port, ASC, self.ca)
        self.assertEqual(s.getpeercert(binary_form=True), der)
        s.close()

    # ---- clients ----

    def test_curl_through_the_proxy(self):
        mark = self.up.mark()
        p = subprocess.run(["curl", "-sS", "--fail-with-body", "--proxy", self.proxy_url(),
                            "--cacert", self.ca, "https://%s/v1/apps?limit=2" % ASC],
                           capture_output=True, text=True, timeout=60, env=h.clean_env())
        self.assertEqual(p.returncode, 0, p.stderr + p.stdout)
        doc = json.loads(p.stdout)
        self.assertEqual(len(doc["data"]), 2)
        # Apple's own origin: nothing is rewritten inside an intercepted connection.
        self.assertTrue(doc["links"]["next"].startswith("https://%s/v1/apps?" % ASC))
        ev = self.up.requests(since=mark)[-1]
        self.assertEqual(ev["path"].split("?")[0], "/v1/apps")
        auth = authorization(ev)
        self.assertEqual(len(auth), 1, ev)
        h.decode_token(auth[0].split(" ", 1)[1], self.key)

    def test_curl_to_weatherkit_routes_by_the_connect_host(self):
        mark = self.up.mark()
        p = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--proxy",
                            self.proxy_url(), "--cacert", self.ca,
                            "https://%s/api/v1/availability/37.3/-122.0" % WK],
                           capture_output=True, text=True, timeout=60, env=h.clean_env())
        self.assertEqual(p.returncode, 0, p.stderr)
        ev = self.up.requests(since=mark)[-1]
        self.assertEqual(ev.get("host") or ev["headers"].get("host"), WK)

    def test_curl_that_does_not_trust_the_ca(self):
        mark = self.up.mark()
        p = subprocess.run(["curl", "-sS", "--proxy", self.proxy_url(),
                            "--cacert", h.get_certs()["ca_cert"], "https://%s/v1/apps" % ASC],
                           capture_output=True, text=True, timeout=60, env=h.clean_env())
        self.assertEqual(p.returncode, 60, p.stderr)  # CURLE_PEER_FAILED_VERIFICATION
        self.assertEqual(self.up.requests(since=mark), [])
        # The proxy is fine afterwards.
        s = tunnel(self.px.port, ASC, self.ca)
        self.assertEqual(get(s, "/v1/apps")[0], 200)
        s.close()

    def test_python_requests_paginates_with_https_proxy(self):
        script = r"""
import json, os, requests
url = "https://api.appstoreconnect.apple.com/v1/apps?limit=3"
pages = names = 0
while url:
    r = requests.get(url, headers={"Authorization": "Bearer dummy"}, timeout=30)
    r.raise_for_status()
    doc = r.json()
    pages += 1
    names += len(doc["data"])
    url = doc["links"].get("next")
print(json.dumps({"pages": pages, "apps": names}))
"""
        mark = self.up.mark()
        p = subprocess.run([h.PYTHON, "-c", script], capture_output=True, text=True, timeout=120,
                           env=h.clean_env({"HTTPS_PROXY": self.proxy_url(),
                                            "REQUESTS_CA_BUNDLE": self.ca}))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout), {"pages": 3, "apps": 7})
        reqs = self.up.requests(since=mark)
        self.assertEqual(len(reqs), 3)
        for ev in reqs:
            auth = authorization(ev)
            self.assertEqual(len(auth), 1, ev)
            self.assertNotEqual(auth[0], "Bearer dummy", "the client's own Authorization is replaced")
            h.decode_token(auth[0].split(" ", 1)[1], self.key)

    def test_keep_alive_inside_the_tunnel(self):
        s = tunnel(self.px.port, ASC, self.ca)
        for _ in range(3):
            status, head, body = get(s, "/v1/apps?limit=1")
            self.assertEqual(status, 200)
            self.assertEqual(len(json.loads(body)["data"]), 1)
        s.close()

    # ---- refusals ----

    def test_connect_to_a_foreign_host_is_refused(self):
        mark = self.up.mark()
        for target in ("www.example.com:443", "api.appstoreconnect.apple.com:8443",
                       "127.0.0.1:443", "api.appstoreconnect.apple.com.evil.test:443"):
            s, status, head, body = connect(self.px.port, target, with_body=True)
            s.close()
            self.assertEqual(status, 403, target)
            self.assertIn("PROXY_FORBIDDEN_HOST", body)
            self.assertIn(target + " is not one of the configured upstreams", body)
        s, status, _ = connect(self.px.port, "no-port-here")
        s.close()
        self.assertEqual(status, 400)
        self.assertEqual(self.up.requests(since=mark), [])

    def test_host_inside_must_name_the_connect_host(self):
        mark = self.up.mark()
        for host in (WK, "www.example.com", ASC + ":8443"):
            s = tunnel(self.px.port, ASC, self.ca)
            status, _, body = get(s, "/v1/apps", host=host)
            s.close()
            self.assertEqual(status, 400, host)
            self.assertIn("Host must name " + ASC, body.decode())
        s = tunnel(self.px.port, ASC, self.ca)
        self.assertEqual(get(s, "/v1/apps", host=ASC + ":443")[0], 200)
        s.close()
        s = tunnel(self.px.port, ASC, self.ca)
        s.sendall(b"GET https://www.example.com/v1/apps HTTP/1.1\r\nHost: %s\r\n\r\n" % ASC.encode())
        self.assertEqual(read_response(s)[0], 400)
        s.close()
        self.assertEqual(len(self.up.requests(since=mark)), 1)

    def test_browser_rule_inside_the_tunnel(self):
        """A browser configured with the proxy opens the tunnel itself, but the requests a page
        makes through it carry Origin or Sec-Fetch-Site: refused there too (the browser rule),
        while Host is the tunnel's rule."""
        mark = self.up.mark()
        for extra in ("Origin: https://evil.example\r\n", "Sec-Fetch-Site: cross-site\r\n"):
            s = tunnel(self.px.port, ASC, self.ca)
            status, _, body = get(s, "/v1/apps", extra=extra)
            s.close()
            self.assertEqual(status, 403, extra)
            self.assertIn("PROXY_BROWSER_FORBIDDEN", body.decode())
        self.assertEqual(self.up.requests(since=mark), [])

    def test_garbage_instead_of_a_client_hello(self):
        s, status, _ = connect(self.px.port, ASC + ":443")
        self.assertEqual(status, 200)
        s.sendall(b"GET /v1/apps HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(2000))
        s.settimeout(10)
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        s.close()
        self.assertNotIn(b"HTTP/1.1", data, "no plain-text answer inside the tunnel")
        # served as usual afterwards
        s = tunnel(self.px.port, ASC, self.ca)
        self.assertEqual(get(s, "/v1/apps")[0], 200)
        s.close()

    def test_stalled_handshake_is_closed_at_the_header_timeout(self):
        s, status, _ = connect(self.px.port, ASC + ":443")
        self.assertEqual(status, 200)
        took = stall_handshake(s)
        self.assertLess(took, 20, "closed by client_header_timeout (2 s), not by a long timeout")
        self.assertGreater(took, 1.0)

    def test_data_before_the_200_is_refused(self):
        s = socket.create_connection(("127.0.0.1", self.px.port), timeout=10)
        s.sendall(b"CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n\x16\x03\x01" % (
            ASC.encode(), ASC.encode()))
        status, _, _ = read_head(s)
        s.close()
        self.assertEqual(status, 400)


class CheckIntercept(unittest.TestCase):
    """`check` tries the interception CA as serve will load it, and makes nothing: no directory,
    no CA, no lock file."""

    @classmethod
    def setUpClass(cls):
        cls.key = h.make_key()

    def config(self, ca_dir, weather=False):
        creds = {"asc": h.credential("app-store-connect", self.key)}
        routes = [h.route("127.0.0.1:1", "app-store-connect", "asc")]
        if weather:
            creds["weather"] = h.credential("weatherkit", h.make_key())
            routes.insert(0, h.route("127.0.0.1:1", "weatherkit", "weather",
                                     path_prefix="/api/v1/"))
        return h.write_config(creds, routes, intercept={"ca_dir": ca_dir})

    def test_check_makes_no_ca(self):
        d = os.path.join(h.new_dir("icpt-check"), "ca")
        rc, out, err = h.run_cli(["check", "-c", self.config(d)])
        self.assertEqual(rc, 0, err)
        self.assertIn("tried: intercept: no CA in %s yet; serve makes one there" % d, out)
        self.assertFalse(os.path.exists(d), "check made the CA directory")
        os.mkdir(d, 0o700)
        rc, out, err = h.run_cli(["check", "-c", self.config(d)])
        self.assertEqual(rc, 0, err)
        self.assertEqual(os.listdir(d), [], "check made files in the CA directory")

    def test_check_loads_an_existing_ca(self):
        d = os.path.join(h.new_dir("icpt-check"), "ca")
        cfg = self.config(d)
        self.assertEqual(h.run_cli(["ca-cert", "-c", cfg])[0], 0)
        files = sorted(os.listdir(d))
        rc, out, err = h.run_cli(["check", "-c", cfg])
        self.assertEqual(rc, 0, err)
        self.assertIn("tried: intercept: the CA in %s loads and permits every upstream" % d, out)
        self.assertEqual(sorted(os.listdir(d)), files)

    def test_check_refuses_what_serve_refuses(self):
        base = h.new_dir("icpt-check")
        open_dir = os.path.join(base, "open")
        os.mkdir(open_dir)
        os.chmod(open_dir, 0o755)
        narrow = os.path.join(base, "narrow")
        self.assertEqual(h.run_cli(["ca-cert", "-c", self.config(narrow)])[0], 0)
        orphan = os.path.join(base, "orphan")
        os.mkdir(orphan, 0o700)
        with open(os.path.join(orphan, "ca.pem"), "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\n")
        for name, cfg, want in (
                ("readable by others", self.config(open_dir), "chmod 700"),
                ("CA narrower than the upstreams", self.config(narrow, weather=True),
                 "do not permit weatherkit.apple.com"),
                ("certificate without its key", self.config(orphan), "exists without ca.key")):
            with self.subTest(name):
                rc, out, err = h.run_cli(["check", "-c", cfg])
                self.assertNotEqual(rc, 0, out)
                self.assertIn(want, err)
                self.assertNotIn("check: ok", out)
                with self.assertRaises(RuntimeError) as cm:
                    h.start_proxy(cfg, timeout=10)
                self.assertIn(want, str(cm.exception))
        self.assertEqual(os.listdir(open_dir), [])


class WithoutIntercept(unittest.TestCase):
    def test_no_ca_on_the_admin_port(self):
        up = h.start_standin()
        cfg = h.write_config({"asc": h.credential("app-store-connect", h.make_key())},
                             [h.route(up, "app-store-connect", "asc")], admin_listen="127.0.0.1:0")
        px = h.start_proxy(cfg)
        try:
            with h.HttpClient(px.admin_port) as c:
                self.assertEqual(c.request("GET", "/ca.pem").status, 404)
        finally:
            px.stop()
            up.stop()

    def test_connect_stays_405(self):
        st = h.Stack()
        try:
            s, status, head, body = connect(st.proxy.port, ASC + ":443", with_body=True)
            s.close()
            self.assertEqual(status, 405)
            self.assertIn("PROXY_CONNECT_NOT_SUPPORTED", body)
        finally:
            st.stop()


class GatewayIntercept(unittest.TestCase):
    """A gateway client proves itself on the CONNECT; its rules apply to what comes inside."""

    @classmethod
    def setUpClass(cls):
        cls.up = h.start_standin()
        cls.key = h.make_key()
        cls.secret = secrets.token_urlsafe(32)
        cls.reader = secrets.token_urlsafe(32)
        sha = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
        cls.access_log = os.path.join(h.new_dir("gw-icpt"), "access.log")
        clients = {"alice": {"key_sha256": sha(cls.secret)},
                   "reader": {"key_sha256": sha(cls.reader),
                              "allow": [{"methods": ["GET"], "path_prefix": "/v1/apps"}]}}
        cls.config = h.write_config({"asc": h.credential("app-store-connect", cls.key)},
                                    [h.route(cls.up, "app-store-connect", "asc")],
                                    clients=clients,
                                    intercept={"ca_dir": os.path.join(h.new_dir("gwca"), "ca")},
                                    access_log={"path": cls.access_log, "format": "json"})
        cls.px = h.start_proxy(cls.config)
        rc, out, err = h.run_cli(["ca-cert", "-c", cls.config])
        assert rc == 0, err
        cls.ca = os.path.join(h.new_dir("gwca-pem"), "ca.pem")
        with open(cls.ca, "w") as f:
            f.write(out)

    def test_connect_without_credentials_is_407_before_any_handshake(self):
        s, status, head = connect(self.px.port, ASC + ":443")
        s.close()
        self.assertEqual(status, 407)
        self.assertIn("Proxy-Authenticate: Basic", head)
        s, status, _ = connect(self.px.port, ASC + ":443",
                               [("Proxy-Authorization", "Bearer wrong")])
        s.close()
        self.assertEqual(status, 407)

    def test_identity_applies_inside(self):
        mark = self.up.mark()
        s = tunnel(self.px.port, ASC, self.ca, [("Proxy-Authorization", "Bearer " + self.secret)])
        self.assertEqual(get(s, "/v1/apps")[0], 200)
        self.assertEqual(get(s, "/v1/users")[0], 200)
        s.close()
        self.assertEqual(len(self.up.requests(since=mark)), 2)
        cred = base64.b64encode(b"reader:" + self.reader.encode()).decode()
        s = tunnel(self.px.port, ASC, self.ca, [("Proxy-Authorization", "Basic " + cred)])
        self.assertEqual(get(s, "/v1/apps")[0], 200)
        status, _, body = get(s, "/v1/users")
        s.close()
        self.assertEqual(status, 403)
        self.assertIn("PROXY_CLIENT_FORBIDDEN", body.decode())
        self.assertEqual(len(self.up.requests(since=mark)), 3)
        deadline = time.monotonic() + 10
        names = []
        while time.monotonic() < deadline:
            with open(self.access_log) as f:
                names = [json.loads(line).get("client") for line in f if line.strip()]
            if names.count("reader") >= 3:
                break
            time.sleep(0.1)
        self.assertGreaterEqual(names.count("reader"), 3, names)
        self.assertGreaterEqual(names.count("alice"), 3, names)


class GatewayReload(unittest.TestCase):
    def test_a_client_removed_by_a_reload_loses_its_open_tunnel(self):
        up = h.start_standin()
        key = h.make_key()
        alice, bob = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        sha = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
        ca_dir = os.path.join(h.new_dir("reload-ca"), "ca")
        creds = {"asc": h.credential("app-store-connect", key)}
        routes = [h.route(up, "app-store-connect", "asc")]
        both = {"alice": {"key_sha256": sha(alice)}, "bob": {"key_sha256": sha(bob)}}
        cfg = h.write_config(creds, routes, clients=both, intercept={"ca_dir": ca_dir})
        px = h.start_proxy(cfg)
        try:
            ca = os.path.join(h.new_dir("reload-pem"), "ca.pem")
            with open(ca, "w") as f:
                f.write(h.run_cli(["ca-cert", "-c", cfg])[1])
            a = tunnel(px.port, ASC, ca, [("Proxy-Authorization", "Bearer " + alice)])
            b = tunnel(px.port, ASC, ca, [("Proxy-Authorization", "Bearer " + bob)])
            self.assertEqual(get(a, "/v1/apps")[0], 200)
            self.assertEqual(get(b, "/v1/apps")[0], 200)
            h.write_config(creds, routes, clients={"bob": both["bob"]},
                           intercept={"ca_dir": ca_dir}, path=cfg)
            mark = len(px.stderr_text())
            px.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "reloaded" not in px.stderr_text()[mark:] and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertIn("reloaded", px.stderr_text()[mark:])
            status, _, body = get(a, "/v1/apps")
            self.assertEqual(status, 403)
            self.assertIn("client alice is no longer configured", body.decode())
            self.assertEqual(get(b, "/v1/apps")[0], 200)
            a.close()
            b.close()
        finally:
            px.stop()
            up.stop()


class HttpsListenerLinks(unittest.TestCase):
    """Base-URL clients on an HTTPS listener get links.next on the listener's https:// origin;
    a handshake that stalls there is closed at the header timeout too."""

    def test_stalled_handshake_on_an_https_listener(self):
        """Regression: the 408 for a stalled handshake could never be written, so the
        connection lived on until send_timeout (60 s) instead of client_header_timeout."""
        certs = h.get_certs()
        up = h.start_standin()
        cfg = h.write_config({"asc": h.credential("app-store-connect", h.make_key())},
                             [h.route(up, "app-store-connect", "asc")],
                             listen=[{"address": "127.0.0.1:0",
                                      "tls": {"cert_file": certs["good_cert"],
                                              "key_file": certs["good_key"]}}],
                             limits={"client_header_timeout": 2})
        px = h.start_proxy(cfg)
        try:
            took = stall_handshake(socket.create_connection(("127.0.0.1", px.port), timeout=30))
            self.assertLess(took, 20)
        finally:
            px.stop()
            up.stop()

    def test_links_are_rewritten_to_https(self):
        certs = h.get_certs()
        up = h.start_standin()
        key = h.make_key()
        cfg = h.write_config({"asc": h.credential("app-store-connect", key)},
                             [h.route(up, "app-store-connect", "asc")],
                             listen=[{"address": "127.0.0.1:0",
                                      "tls": {"cert_file": certs["good_cert"],
                                              "key_file": certs["good_key"]}}])
        px = h.start_proxy(cfg)
        try:
            ctx = ssl.create_default_context(cafile=certs["ca_cert"])
            with h.HttpClient(px.port, tls=ctx, server_hostname="localhost") as c:
                r = c.request("GET", "/v1/apps?limit=3", headers=[("Host", "localhost:%d" % px.port)])
            self.assertEqual(r.status, 200)
            nxt = r.json()["links"]["next"]
            self.assertTrue(nxt.startswith("https://localhost:%d/v1/apps?" % px.port), nxt)
            self.assertNotIn(ASC, r.body.decode())
        finally:
            px.stop()
            up.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
