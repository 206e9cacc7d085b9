"""HTTPS listeners resume TLS sessions: TLS 1.3 tickets and TLS 1.2 (tickets and the session
cache) on every worker, across SIGHUP reloads (the ticket keys outlive a reload), and never on a
listener other than the one that made the session, nor after a reload changed the client CAs
(a resumed session skips certificate verification, so it must not carry an identity verified
under CAs no longer trusted).
"""
import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

CONNECTIONS = 12  # enough for SO_REUSEPORT to spread them over both workers


def client_ctx(ca, version=None):
    ctx = ssl.create_default_context(cafile=ca)
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def one_request(port, ctx, session=None):
    """A TLS connection with one GET; returns (status, session_reused, session). The session
    is taken after the response, when TLS 1.3 tickets have arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"GET /v1/apps HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                d = s.recv(65536)
                if not d:
                    break
                data += d
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            while len(body) < length:
                d = s.recv(65536)
                if not d:
                    break
                body += d
            status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else None
            return status, s.session_reused, s.session


def der_length(der, i):
    """(length, index after the length octets) of the DER length at der[i]."""
    first = der[i]
    if first < 0x80:
        return first, i + 1
    n = first & 0x7F
    return int.from_bytes(der[i + 1:i + 1 + n], "big"), i + 1 + n


def ticket_span(der):
    """(start, end) of the session ticket inside an SSL_SESSION in DER: OpenSSL encodes it as
    [10] EXPLICIT OCTET STRING (tag 0xAA, then 0x04)."""
    i = 0
    while i < len(der) - 4:
        if der[i] == 0xAA:
            outer, j = der_length(der, i + 1)
            if j < len(der) and der[j] == 0x04:
                inner, k = der_length(der, j + 1)
                if k + inner == j + outer and inner >= 64:
                    return k, k + inner
        i += 1
    raise AssertionError("no session ticket in the saved session")


def s_client(port, version, sess_out=None, sess_in=None):
    """openssl s_client with one request; returns its output (New/Reused line, response)."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
            "localhost", version, "-ign_eof"]
    if sess_out:
        argv += ["-sess_out", sess_out]
    if sess_in:
        argv += ["-sess_in", sess_in]
    r = subprocess.run(argv, input=b"GET /v1/apps HTTP/1.1\r\nHost: localhost\r\n"
                       b"Connection: close\r\n\r\n", stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    return r.stdout.decode("latin-1")


class TlsSessions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = h.get_certs()
        d = h.new_dir("tlssess")
        cls.client_ca = os.path.join(d, "clients-ca.pem")
        shutil.copy(cls.certs["ca_cert"], cls.client_ca)
        key = h.make_key()
        cls.up = h.start_standin()
        cred = h.credential("app-store-connect", key)
        tls = {"cert_file": cls.certs["good_cert"], "key_file": cls.certs["good_key"]}
        cls.config = h.write_config(
            {"asc": cred}, [h.route(cls.up, "app-store-connect", "asc")], workers=2,
            listen=[{"address": "127.0.0.1:0", "tls": tls},
                    {"address": "127.0.0.1:0", "tls": dict(tls, client_ca_file=cls.client_ca)}])
        cls.px = h.start_proxy(cls.config)
        cls.plain_port, cls.mtls_port = cls.px.ports[0], cls.px.ports[1]

    @classmethod
    def tearDownClass(cls):
        cls.px.stop()
        cls.up.stop()

    def reload(self):
        mark = len(self.px.stderr_text())
        self.px.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded" not in self.px.stderr_text()[mark:] and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("reloaded", self.px.stderr_text()[mark:])

    def resumes(self, version):
        ctx = client_ctx(self.certs["ca_cert"], version)
        status, reused, session = one_request(self.plain_port, ctx)
        self.assertEqual(status, 200)
        self.assertFalse(reused)
        for i in range(CONNECTIONS):
            status, reused, session = one_request(self.plain_port, ctx, session)
            self.assertEqual(status, 200)
            self.assertTrue(reused, "connection %d: a full handshake, not a resumption" % i)

    def test_1_tls13_tickets_resume(self):
        self.resumes(ssl.TLSVersion.TLSv1_3)

    def test_2_tls12_resumes(self):
        self.resumes(ssl.TLSVersion.TLSv1_2)

    def test_2b_tls13_resumption_brings_a_new_ticket(self):
        # A TLS 1.3 ticket is for one use: each resumption must bring a fresh one, or a client
        # that keeps only its latest session (wrk, many HTTP clients) does a full handshake
        # every other time. Regression: the proxy's own ticket keys once renewed nothing.
        ctx = client_ctx(self.certs["ca_cert"], ssl.TLSVersion.TLSv1_3)
        with socket.create_connection(("127.0.0.1", self.plain_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET /v1/apps HTTP/1.1\r\nHost: localhost\r\n\r\n")
                s.recv(65536)
                session = s.session
        for i in range(4):
            with socket.create_connection(("127.0.0.1", self.plain_port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                    s.sendall(b"GET /v1/apps HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    s.recv(65536)
                    self.assertTrue(s.session_reused, "connection %d" % i)
                    self.assertIsNot(s.session, session)
                    self.assertTrue(s.session.has_ticket)
                    # The ticket that arrived is a new one, not the one just used.
                    self.assertNotEqual(s.session.id, session.id)
                    session = s.session

    def test_3_resumption_survives_a_reload(self):
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            ctx = client_ctx(self.certs["ca_cert"], version)
            status, _, session = one_request(self.plain_port, ctx)
            self.assertEqual(status, 200)
            self.reload()
            status, reused, _ = one_request(self.plain_port, ctx, session)
            self.assertEqual(status, 200)
            self.assertTrue(reused, "%s: the reload ended the session" % version.name)

    def test_4_no_resumption_on_another_listener(self):
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            ctx = client_ctx(self.certs["ca_cert"], version)
            status, _, session = one_request(self.plain_port, ctx)
            self.assertEqual(status, 200)
            # The same context (a client's session cache is per context) on the other port.
            status, reused, _ = one_request(self.mtls_port, ctx, session)
            self.assertEqual(status, 200)
            self.assertFalse(reused, "%s: a session crossed listeners" % version.name)

    def test_5_changed_client_cas_end_sessions(self):
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            shutil.copy(self.certs["ca_cert"], self.client_ca)
            self.reload()
            ctx = client_ctx(self.certs["ca_cert"], version)
            status, _, session = one_request(self.mtls_port, ctx)
            self.assertEqual(status, 200)
            status, reused, session = one_request(self.mtls_port, ctx, session)
            self.assertTrue(reused)
            # The same CAs plus another: the set trusted is not the one the session was made
            # under.
            with open(self.client_ca, "ab") as out, open(self.certs["other_ca_cert"], "rb") as f:
                out.write(f.read())
            self.reload()
            status, reused, _ = one_request(self.mtls_port, ctx, session)
            self.assertEqual(status, 200)
            self.assertFalse(reused, "%s: a session outlived a change of client CAs"
                             % version.name)

    def test_6_forged_tickets_get_a_full_handshake(self):
        # A ticket with a byte changed in its key name, its encrypted state or its MAC is
        # never resumed and never breaks the connection: the handshake is a full one.
        d = h.new_dir("tickets")
        for version in ("-tls1_3", "-tls1_2"):
            saved = os.path.join(d, "session%s.pem" % version)
            out = s_client(self.plain_port, version, sess_out=saved)
            self.assertRegex(out, r"(?m)^New, ")
            self.assertIn("HTTP/1.1 200", out)
            with open(saved) as f:
                pem = f.read()
            body = "".join(l for l in pem.splitlines() if not l.startswith("-----"))
            der = base64.b64decode(body)
            start, end = ticket_span(der)
            for where in (start, start + 20, (start + end) // 2, end - 1):
                forged = bytearray(der)
                forged[where] ^= 0x01
                path = os.path.join(d, "forged%s-%d.pem" % (version, where))
                with open(path, "w") as f:
                    f.write("-----BEGIN SSL SESSION PARAMETERS-----\n")
                    b64 = base64.b64encode(bytes(forged)).decode()
                    f.write("\n".join(b64[i:i + 64] for i in range(0, len(b64), 64)))
                    f.write("\n-----END SSL SESSION PARAMETERS-----\n")
                out = s_client(self.plain_port, version, sess_in=path)
                self.assertRegex(out, r"(?m)^New, ", "%s, byte %d changed" % (version, where))
                self.assertIn("HTTP/1.1 200", out)
            # The untouched ticket still resumes: the forgeries changed nothing.
            out = s_client(self.plain_port, version, sess_in=saved)
            self.assertRegex(out, r"(?m)^Reused, ")
            self.assertIn("HTTP/1.1 200", out)
        self.assertTrue(self.px.alive())


if __name__ == "__main__":
    unittest.main(verbosity=2)
