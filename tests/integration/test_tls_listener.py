"""HTTPS listeners: serving, and SIGHUP taking renewed certificate files for new connections."""
import os
import shutil
import signal
import socket
import ssl
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def served_cert(port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert(binary_form=True)


class TlsListenerReload(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = h.get_certs()
        d = h.new_dir("tlslisten")
        cls.cert = os.path.join(d, "server.pem")
        cls.key = os.path.join(d, "server.key")
        shutil.copy(cls.certs["good_cert"], cls.cert)
        shutil.copy(cls.certs["good_key"], cls.key)
        os.chmod(cls.key, 0o600)
        key = h.make_key()
        cls.up = h.start_standin()
        cred = h.credential("app-store-connect", key)
        cls.config = h.write_config(
            {"asc": cred}, [h.route(cls.up, "app-store-connect", "asc")],
            listen=[{"address": "127.0.0.1:0", "tls": {"cert_file": cls.cert,
                                                       "key_file": cls.key}}])
        cls.px = h.start_proxy(cls.config)

    @classmethod
    def tearDownClass(cls):
        cls.px.stop()
        cls.up.stop()

    def test_1_serves_https(self):
        ctx = ssl.create_default_context(cafile=self.certs["ca_cert"])
        with h.HttpClient(self.px.port, tls=ctx, server_hostname="localhost") as c:
            r = c.request("GET", "/v1/apps")
        self.assertEqual(r.status, 200)

    def test_2_sighup_renews_the_certificate(self):
        before = served_cert(self.px.port, self.certs["ca_cert"])
        with open(self.certs["good_cert"], "rb") as f:
            self.assertEqual(ssl.PEM_cert_to_DER_cert(f.read().decode()), before)
        # A renewed certificate at the same paths (here: another one from the same CA).
        shutil.copy(self.certs["no_ip_cert"], self.cert)
        shutil.copy(self.certs["no_ip_key"], self.key)
        mark = len(self.px.stderr_text())
        self.px.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded" not in self.px.stderr_text()[mark:] and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("reloaded", self.px.stderr_text()[mark:])
        after = None
        while time.monotonic() < deadline:
            after = served_cert(self.px.port, self.certs["ca_cert"])
            if after != before:
                break
            time.sleep(0.05)
        with open(self.certs["no_ip_cert"], "rb") as f:
            self.assertEqual(ssl.PEM_cert_to_DER_cert(f.read().decode()), after)

    def test_3_broken_key_file_rejects_the_reload(self):
        with open(self.key, "w") as f:
            f.write("not a key\n")
        mark = len(self.px.stderr_text())
        self.px.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload rejected" not in self.px.stderr_text()[mark:] and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("reload rejected", self.px.stderr_text()[mark:])
        ctx = ssl.create_default_context(cafile=self.certs["ca_cert"])
        with h.HttpClient(self.px.port, tls=ctx, server_hostname="localhost") as c:
            self.assertEqual(c.request("GET", "/v1/apps").status, 200)


if __name__ == "__main__":
    unittest.main()
