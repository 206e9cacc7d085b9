"""The command line as an operator meets it: `check` tries what `serve` tries before accepting
traffic (and agrees with it), every command prints its own usage for --help, `client-key`
refuses names the configuration would refuse, and `token --decode` shows readable times."""
import datetime
import json
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def utc(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class CheckAgreesWithServe(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.key = h.make_key()
        cls.certs = h.get_certs()
        cls.creds = {"asc": h.credential("app-store-connect", cls.key)}
        cls.routes = [h.route("127.0.0.1:9", "app-store-connect", "asc")]

    def config(self, **extra):
        return h.write_config(self.creds, self.routes, **extra)

    def assert_check_fails(self, args, rc, *needles):
        code, out, err = h.run_cli(["check"] + list(args))
        self.assertEqual(code, rc, (out, err))
        for n in needles:
            self.assertIn(n, err)
        # No summary that ends in "ok" before (or instead of) the failure.
        self.assertNotIn("check: ok", out)
        self.assertFalse(re.search(r"\bok$", out.strip().splitlines()[-1]), out)
        self.assertIn("serve would not start", out.strip().splitlines()[-1])
        return out, err

    def test_access_log_in_a_missing_directory_fails_check_as_it_fails_serve(self):
        missing = os.path.join(h.new_dir("nolog"), "absent", "access.log")
        cfg = self.config(access_log={"path": missing})
        self.assert_check_fails(["-c", cfg], 1, "access_log: %s" % missing, "does not exist")
        rc, out, err = h.run_cli(["serve", "-c", cfg], timeout=15)
        self.assertEqual(rc, 1, err)
        self.assertIn("does not exist", err)
        self.assertNotIn("listening on", err)
        # check creates nothing: the directory is still missing after both
        os.makedirs(os.path.dirname(missing))
        rc, out, err = h.run_cli(["check", "-c", cfg])
        self.assertEqual(rc, 0, err)
        self.assertFalse(os.path.exists(missing), "check must not create the access log")
        self.assertIn("tried: access_log: %s does not exist yet" % missing, out)
        self.assertEqual(out.strip().splitlines()[-1], "check: ok")

    def test_access_log_that_cannot_be_written_fails_check(self):
        d = h.new_dir("rolog")
        path = os.path.join(d, "access.log")
        os.mkdir(path)  # a directory where the file should be
        self.assert_check_fails(["-c", self.config(access_log={"path": path})], 1,
                                "access_log: %s: cannot open it for writing" % path)

    def test_bind_tries_the_listen_address(self):
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        try:
            cfg = self.config(listen=["127.0.0.1:%d" % port])
            rc, out, err = h.run_cli(["check", "-c", cfg])
            self.assertEqual(rc, 0, err)
            self.assertIn("not tried: listen[0]: 127.0.0.1:%d: the address resolves; binding it "
                          "was not tried (check --bind tries it)" % port, out)
            self.assert_check_fails(["-c", cfg, "--bind"], 1,
                                    "listen[0]: 127.0.0.1:%d: cannot listen there" % port)
            rc, out, err = h.run_cli(["serve", "-c", cfg], timeout=15)
            self.assertEqual(rc, 1, err)
        finally:
            busy.close()
        rc, out, err = h.run_cli(["check", "-c", cfg, "--bind"])
        self.assertEqual(rc, 0, err)
        self.assertIn("tried: listen[0]: 127.0.0.1:%d: bound and released" % port, out)
        self.assertIn("not tried: upstreams", out)

    def test_tls_listener_files_are_tried(self):
        c = self.certs
        good = {"address": "127.0.0.1:0", "tls": {"cert_file": c["good_cert"],
                                                   "key_file": c["good_key"],
                                                   "client_ca_file": c["ca_cert"]}}
        rc, out, err = h.run_cli(["check", "-c", self.config(listen=[good])])
        self.assertEqual(rc, 0, err)
        self.assertIn("listener listen[0]: 127.0.0.1:0, https (certificate %s; client "
                      "certificates verified against %s)" % (c["good_cert"], c["ca_cert"]), out)
        self.assertIn("tried: listen[0]: 127.0.0.1:0: TLS certificate, key and client CAs "
                      "loaded", out)
        mismatched = {"address": "127.0.0.1:0", "tls": {"cert_file": c["good_cert"],
                                                         "key_file": c["no_ip_key"]}}
        cfg = self.config(listen=[mismatched])
        self.assert_check_fails(["-c", cfg], 1,
                                "apple-auth-proxy: listen[0]: 127.0.0.1:0: cannot load key_file")
        rc, out, err = h.run_cli(["serve", "-c", cfg], timeout=15)
        self.assertEqual(rc, 1, err)
        self.assertIn("listen[0]: 127.0.0.1:0: cannot load key_file", err)
        not_a_ca = os.path.join(h.new_dir("ca"), "ca.pem")
        with open(not_a_ca, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        bad_ca = {"address": "127.0.0.1:0", "tls": {"cert_file": c["good_cert"],
                                                     "key_file": c["good_key"],
                                                     "client_ca_file": not_a_ca}}
        rc, out, err = h.run_cli(["check", "-c", self.config(listen=[bad_ca])])
        self.assertEqual(rc, 2, err)
        self.assertIn("listen[0].tls.client_ca_file: %s: no PEM certificate" % not_a_ca, err)
        self.assertNotIn("check: ok", out)

    def test_expired_listener_certificate_is_a_warning(self):
        c = self.certs
        lst = {"address": "127.0.0.1:0", "tls": {"cert_file": c["expired_cert"],
                                                  "key_file": c["expired_key"]}}
        rc, out, err = h.run_cli(["check", "-c", self.config(listen=[lst])])
        self.assertEqual(rc, 0, err)
        self.assertIn("apple-auth-proxy: warning: listen[0]: cert_file %s expired at"
                      % c["expired_cert"], err)

    def test_exposure_failure_prints_no_ok_summary(self):
        self.assert_check_fails(["-c", self.config(listen=["0.0.0.0:0"])], 2,
                                "listen[0]: 0.0.0.0:0 is not a loopback address")

    def test_address_from_the_environment_is_named_by_its_variable(self):
        env = {"APPLE_AUTH_PROXY_LISTEN": "0.0.0.0:0"}
        rc, out, err = h.run_cli(["check", "-c", self.config()], env=env)
        self.assertEqual(rc, 2, (out, err))
        self.assertIn("apple-auth-proxy: APPLE_AUTH_PROXY_LISTEN: 0.0.0.0:0 is not a loopback "
                      "address", err)
        self.assertNotIn("listen[0]", err)
        rc, out, err = h.run_cli(["serve", "-c", self.config()], env=env, timeout=15)
        self.assertEqual(rc, 2, err)
        self.assertIn("APPLE_AUTH_PROXY_LISTEN: 0.0.0.0:0 is not a loopback address", err)
        rc, out, err = h.run_cli(["check", "-c", self.config()],
                                 env={"APPLE_AUTH_PROXY_LISTEN": "127.0.0.1:0"})
        self.assertEqual(rc, 0, err)
        self.assertIn("listener APPLE_AUTH_PROXY_LISTEN: 127.0.0.1:0, http", out)

    def test_summary_lists_listeners_credentials_clients_and_routes(self):
        clients = {"release-bot": {"key_sha256": "ab" * 32,
                                   "allow": [{"methods": ["GET"], "path_prefix": "/v1/apps"}]}}
        cfg = self.config(listen=["127.0.0.1:0", "[::1]:0"], clients=clients)
        rc, out, err = h.run_cli(["check", "-c", cfg])
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertRegex(lines[0], r"^configuration .*config\.json: 2 listeners, 1 credential, "
                                   r"1 client, 1 route$")
        self.assertIn("listener listen[0]: 127.0.0.1:0, http", lines)
        self.assertIn("listener listen[1]: [::1]:0, http", lines)
        self.assertIn("client release-bot: identified by secret; allowed GET /v1/apps", lines)
        self.assertTrue(any(l.startswith("credential asc: profile app-store-connect") for l in lines),
                        out)
        self.assertTrue(any(l.startswith("route 0: / -> https://api.appstoreconnect.apple.com")
                            for l in lines), out)
        self.assertEqual(lines[-1], "check: ok")

    def test_key_file_named_for_another_key_id_warns(self):
        other = h.make_key()
        d = h.new_dir("authkey")
        named = os.path.join(d, "AuthKey_%s.p8" % other.kid)
        with open(other.private_path, "rb") as src, open(named, "wb") as dst:
            dst.write(src.read())
        os.chmod(named, 0o600)
        cfg = h.write_config({"asc": h.credential("app-store-connect", self.key,
                                                  private_key_file=named)}, self.routes)
        rc, out, err = h.run_cli(["check", "-c", cfg])
        self.assertEqual(rc, 0, err)
        self.assertIn("apple-auth-proxy: warning: credentials.asc.private_key_file: the file is "
                      "named for key %s but key_id is %s" % (other.kid, self.key.kid), err)
        # named for its own key_id: no warning
        cfg = h.write_config({"asc": h.credential("app-store-connect", other,
                                                  private_key_file=named)}, self.routes)
        rc, out, err = h.run_cli(["check", "-c", cfg])
        self.assertEqual(rc, 0, err)
        self.assertNotIn("named for key", err)


def read_stderr_until(p, needle, err, timeout=20):
    """Reads p's stderr onto err until it holds needle, p ends or timeout; returns err."""
    deadline = time.monotonic() + timeout
    while needle not in err and time.monotonic() < deadline:
        r, _, _ = select.select([p.stderr], [], [], 0.5)
        if r:
            chunk = os.read(p.stderr.fileno(), 65536)
            if not chunk:
                break
            err += chunk
    return err


def serve_stderr(cfg, nofile):
    """Starts serve with RLIMIT_NOFILE set to nofile (soft, hard), waits for it to listen, stops
    it and returns its stderr."""
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
    p = subprocess.Popen([h.BINARY, "serve", "-c", cfg], env=h.clean_env(), preexec_fn=limit,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = b""
    try:
        err = read_stderr_until(p, b"listening on", err)
    finally:
        p.send_signal(signal.SIGTERM)
        _, rest = p.communicate(timeout=20)
        err += rest
    return err.decode(errors="replace")


class DescriptorLimit(unittest.TestCase):
    def test_default_connection_cap_starts_without_warning_at_20000_descriptors(self):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY and hard < 20000:
            self.skipTest("the hard descriptor limit here is %d, below 20000" % hard)
        key = h.make_key()
        cfg = h.write_config({"asc": h.credential("app-store-connect", key)},
                             [h.route("127.0.0.1:9", "app-store-connect", "asc")])
        # a soft limit of 1024 is raised to the hard one; 20000 leaves room for the default
        # max_client_connections (10000) and the pools
        err = serve_stderr(cfg, (1024, 20000))
        self.assertIn("listening on", err)
        self.assertNotIn("descriptor limit", err)
        # a hard limit that cannot hold the cap is still said, once
        err = serve_stderr(cfg, (1024, 5000))
        self.assertIn("listening on", err)
        self.assertEqual(err.count("the descriptor limit is 5000"), 1, err)


class SignalsAtStart(unittest.TestCase):
    def test_sighup_right_after_listening_reloads_instead_of_killing(self):
        """A supervisor may send SIGHUP the moment the proxy says it listens: the signal is
        caught from then on (it was once caught only after the workers and the admin server
        were set up, and the default action ended the process)."""
        key = h.make_key()
        cfg = h.write_config({"asc": h.credential("app-store-connect", key)},
                             [h.route("127.0.0.1:9", "app-store-connect", "asc")], workers=4,
                             admin_listen="127.0.0.1:0")
        for attempt in range(5):
            p = subprocess.Popen([h.BINARY, "serve", "-c", cfg], env=h.clean_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                err = read_stderr_until(p, b"listening on", b"")
                self.assertIn(b"listening on", err)
                p.send_signal(signal.SIGHUP)
                err = read_stderr_until(p, b"reloaded", err)
                self.assertIsNone(p.poll(), "attempt %d: SIGHUP ended the proxy (status %s); "
                                  "stderr:\n%s" % (attempt, p.returncode, err.decode()))
                self.assertIn(b"reloaded", err)
            finally:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                p.communicate(timeout=20)


class EveryCommandExplainsItself(unittest.TestCase):
    def test_help_per_command(self):
        for cmd in ("serve", "token", "check", "client-key"):
            for flag in ("--help", "-h"):
                rc, out, err = h.run_cli([cmd, flag])
                self.assertEqual(rc, 0, (cmd, out, err))
                self.assertTrue(out.startswith("usage: apple-auth-proxy %s" % cmd)
                                or (cmd == "serve" and out.startswith(
                                    "usage: apple-auth-proxy [serve]")), (cmd, out))
                self.assertEqual(err, "")
        rc, out, err = h.run_cli(["client-key", "--help"])
        self.assertNotIn("secret for the client", out)
        self.assertNotIn("key_sha256\":", out)

    def test_top_level_help_names_the_log_level_variable(self):
        rc, out, err = h.run_cli(["--help"])
        self.assertEqual(rc, 0)
        self.assertIn("APPLE_AUTH_PROXY_LOG_LEVEL", out)
        self.assertIn("COMMAND --help", out)

    def test_client_key_refuses_names_the_configuration_refuses(self):
        for bad in ("a b", "x" * 65, "café", "a/b", "a:b"):
            rc, out, err = h.run_cli(["client-key", bad])
            self.assertEqual(rc, 2, (bad, out, err))
            self.assertEqual(out, "")
            self.assertIn("the configuration would refuse a client named", err)
        rc, out, err = h.run_cli(["client-key", "--verbose"])
        self.assertEqual(rc, 2, err)
        self.assertEqual(out, "")

    def test_client_key_suggests_lower_case_http_proxy(self):
        rc, out, err = h.run_cli(["client-key", "ci.bot_1-x"])
        self.assertEqual(rc, 0, err)
        m = re.search(r"^  http_proxy=http://([^:@]+):([^@]+)@HOST:PORT$", out, re.M)
        self.assertIsNotNone(m, out)
        self.assertEqual(m.group(1), "ci.bot_1-x")
        self.assertRegex(m.group(2), r"^[A-Za-z0-9_-]{43}$")
        self.assertNotIn("HTTP_PROXY=", out)

    def test_token_decode_shows_utc_times(self):
        key = h.make_key()
        cfg = h.write_config({"asc": h.credential("app-store-connect", key)},
                             [h.route("127.0.0.1:9", "app-store-connect", "asc")])
        rc, out, err = h.run_cli(["token", "-c", cfg, "--decode"])
        self.assertEqual(rc, 0, err)
        doc = json.loads(out)
        self.assertEqual(doc["times"]["iat"], utc(doc["claims"]["iat"]))
        self.assertEqual(doc["times"]["exp"], utc(doc["claims"]["exp"]))
        self.assertRegex(doc["times"]["now"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        # the claims themselves are the signed ones, numbers only
        self.assertIsInstance(doc["claims"]["iat"], int)


if __name__ == "__main__":
    unittest.main()
