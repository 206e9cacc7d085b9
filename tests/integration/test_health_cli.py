"""`apple-auth-proxy health`: the probe that the container image's HEALTHCHECK runs.

Against a running proxy (its admin listener, /healthz and /readyz, given by --admin, by
APPLE_AUTH_PROXY_ADMIN_LISTEN and as a wildcard address), and against scripted admin servers
that answer 503, garbage, nothing at all, or far more than the probe reads: the exit status is 0
only for a 200, 1 for every other outcome, 2 for a usage error, and the probe never waits past
its --timeout.
"""
import json
import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402


class ScriptedAdmin:
    """A one-port server on 127.0.0.1 (or ::1) that records each request head and answers it
    with `answer` (bytes; None: say nothing and hold the connection open until stopped)."""

    def __init__(self, answer, family=socket.AF_INET):
        self.answer = answer
        self.requests = []
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.held = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
            except OSError:
                pass
            self.requests.append(head.decode("latin-1"))
            if self.answer is None:
                self.held.append(conn)
                continue
            try:
                conn.sendall(self.answer)
            except OSError:
                pass
            conn.close()

    def stop(self):
        self.stopping.set()
        self.sock.close()
        self.thread.join(5)
        for c in self.held:
            c.close()


def http_answer(status, reason, body=b"", extra=b""):
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s"
            b"Connection: close\r\n\r\n" % (status, reason, len(body), extra)) + body


def health(*args, env=None, timeout=30):
    return h.run_cli(["health"] + list(args), env=env, timeout=timeout)


class HealthAgainstTheProxy(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(admin_listen="127.0.0.1:0")
        cls.admin = pt.admin_port(cls.st.proxy)
        # Ready once the first token is minted.
        pt.wait_until(lambda: pt.admin_get(cls.st.proxy, "/readyz").status == 200, 30, 0.1,
                      "/readyz 200")

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def test_healthz_by_flag(self):
        rc, out, err = health("--admin", "127.0.0.1:%d" % self.admin)
        self.assertEqual(rc, 0, err)
        self.assertIn("GET http://127.0.0.1:%d/healthz answered 200" % self.admin, out)

    def test_readyz(self):
        rc, out, err = health("--admin", "127.0.0.1:%d" % self.admin, "--ready")
        self.assertEqual(rc, 0, err)
        self.assertIn("/readyz answered 200", out)

    def test_readyz_is_summarised_on_one_line(self):
        # /readyz's JSON, not its indentation: "ready", then each check as NAME STATE: DETAIL
        rc, out, err = health("--admin", "127.0.0.1:%d" % self.admin, "--ready")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"/readyz answered 200: ready; draining no; listeners up: "
                              r"\d+ listen address(es)?, \d+ workers?; credential ")
        self.assertNotIn("{", out)
        self.assertNotIn("\t", out)

    def test_address_from_the_environment(self):
        rc, out, err = health(env={"APPLE_AUTH_PROXY_ADMIN_LISTEN": "127.0.0.1:%d" % self.admin})
        self.assertEqual(rc, 0, err)
        self.assertIn(":%d/healthz" % self.admin, out)

    def test_wildcard_address_is_probed_on_loopback(self):
        # What the container image sets: APPLE_AUTH_PROXY_ADMIN_LISTEN=0.0.0.0:9901.
        rc, out, err = health(env={"APPLE_AUTH_PROXY_ADMIN_LISTEN": "0.0.0.0:%d" % self.admin})
        self.assertEqual(rc, 0, err)
        self.assertIn("http://127.0.0.1:%d/healthz" % self.admin, out)

    def test_flag_wins_over_the_environment(self):
        dead = h.unused_port()
        rc, _, err = health("--admin", "127.0.0.1:%d" % self.admin,
                            env={"APPLE_AUTH_PROXY_ADMIN_LISTEN": "127.0.0.1:%d" % dead})
        self.assertEqual(rc, 0, err)


class HealthAgainstScriptedServers(unittest.TestCase):
    def probe(self, answer, *args, family=socket.AF_INET):
        srv = ScriptedAdmin(answer, family)
        self.addCleanup(srv.stop)
        host = "[::1]" if family == socket.AF_INET6 else "127.0.0.1"
        started = time.monotonic()
        rc, out, err = health("--admin", "%s:%d" % (host, srv.port), *args)
        return rc, out, err, srv, time.monotonic() - started

    def test_request_is_a_plain_get_with_host(self):
        rc, _, err, srv, _ = self.probe(http_answer(200, b"OK", b"ok\n"), "--ready")
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(srv.requests), 1)
        lines = srv.requests[0].split("\r\n")
        self.assertEqual(lines[0], "GET /readyz HTTP/1.1")
        self.assertIn("Host: 127.0.0.1:%d" % srv.port, lines)
        self.assertIn("Connection: close", lines)

    def test_503_is_unhealthy_and_says_why(self):
        body = b"credential asc: no valid token (minting failed; see the error log)\n"
        rc, out, err, _, _ = self.probe(http_answer(503, b"Service Unavailable", body), "--ready")
        self.assertEqual(rc, 1)
        self.assertEqual(out, "")
        self.assertIn("answered 503: credential asc: no valid token", err)

    def test_503_readyz_names_the_failing_check_first(self):
        # A /readyz as the proxy writes it (cJSON's indented form) whose failing check comes
        # after enough passing ones to fill the message: the failing one is still named, first.
        checks = [{"name": "draining", "state": "no", "ok": True},
                  {"name": "listeners", "state": "up", "ok": True,
                   "detail": "4 listen addresses, 8 workers"}]
        checks += [{"name": "credential team-%d" % i, "state": "minting", "ok": True,
                    "detail": "token valid until 2026-12-07T07:17:14Z"} for i in range(8)]
        checks += [{"name": "credential zeta", "state": "failing", "ok": False,
                    "detail": "no valid token (minting failed; see the error log)"},
                   {"name": "upstream api.appstoreconnect.apple.com", "state": "unknown",
                    "detail": "no connection attempted yet"}]
        body = json.dumps({"ready": False, "checks": checks}, indent="\t").encode()
        self.assertGreater(len(body), 1000)
        rc, out, err, _, _ = self.probe(http_answer(503, b"Service Unavailable", body), "--ready")
        self.assertEqual(rc, 1)
        self.assertIn("answered 503: not ready; credential zeta failing: no valid token "
                      "(minting failed; see the error log); draining no; listeners up", err)
        self.assertNotIn("{", err)

    def test_other_statuses_are_unhealthy(self):
        for status, reason in ((204, b"No Content"), (301, b"Moved"), (404, b"Not Found"),
                               (500, b"Internal Server Error")):
            with self.subTest(status=status):
                rc, _, err, _, _ = self.probe(http_answer(status, reason))
                self.assertEqual(rc, 1)
                self.assertIn("answered %d" % status, err)

    def test_not_http_is_unhealthy(self):
        for answer in (b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/2 200\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n",
                       b"HTTP/1.1 20\r\n\r\n", b"\x16\x03\x01\x00\x05hello"):
            with self.subTest(answer=answer):
                rc, _, err, _, _ = self.probe(answer)
                self.assertEqual(rc, 1)
                self.assertIn("not HTTP/1.x", err)

    def test_closed_without_an_answer(self):
        rc, _, err, _, _ = self.probe(b"")
        self.assertEqual(rc, 1)
        self.assertIn("closed without an answer", err)

    def test_silent_server_times_out(self):
        rc, _, err, _, took = self.probe(None, "--timeout", "1")
        self.assertEqual(rc, 1)
        self.assertIn("no answer before the timeout", err)
        # One second, plus process start-up on a loaded machine; never the 5 s default.
        self.assertLess(took, 4.5)

    def test_long_answer_is_read_up_to_the_limit(self):
        # A 200 whose body is far past what the probe reads, on a connection that stays open:
        # the status line decides, and the probe neither waits for the rest nor fails on it.
        body = b"x" * (1 << 20)
        rc, out, err, _, took = self.probe(http_answer(200, b"OK", body), "--timeout", "10")
        self.assertEqual(rc, 0, err)
        self.assertIn("answered 200", out)
        self.assertLess(len(out), 600)
        self.assertLess(took, 8)

    def test_control_bytes_in_the_body_are_not_repeated(self):
        body = b"bad\x1b[31m\x00news\n"
        rc, _, err, _, _ = self.probe(http_answer(503, b"Service Unavailable", body))
        self.assertEqual(rc, 1)
        self.assertIn("answered 503: bad[31mnews", err)
        self.assertNotIn("\x1b", err)

    def test_ipv6_loopback(self):
        if not socket.has_ipv6:
            self.skipTest("no IPv6")
        try:
            s = socket.socket(socket.AF_INET6)
            s.bind(("::1", 0))
            s.close()
        except OSError:
            self.skipTest("no ::1 on this machine")
        rc, out, err, srv, _ = self.probe(http_answer(200, b"OK", b"ok\n"), family=socket.AF_INET6)
        self.assertEqual(rc, 0, err)
        self.assertIn("http://[::1]:%d/healthz" % srv.port, out)
        self.assertIn("Host: [::1]:%d" % srv.port, srv.requests[0])


class HealthFromTheConfiguration(unittest.TestCase):
    """Without --admin the probe asks the address serve listens on: the configuration file's
    admin_listen (the file from -c or APPLE_AUTH_PROXY_CONFIG), with the environment over it."""

    @classmethod
    def setUpClass(cls):
        cls.key = h.make_key()

    def setUp(self):
        self.srv = ScriptedAdmin(http_answer(200, b"OK", b"ok\n"))
        self.addCleanup(self.srv.stop)
        self.addr = "127.0.0.1:%d" % self.srv.port

    def config(self, admin_listen):
        cred = h.credential("app-store-connect", self.key)
        return h.write_config({"asc": cred}, [h.route("127.0.0.1:1", "app-store-connect", "asc")],
                              admin_listen=admin_listen)

    def test_file_named_by_flag(self):
        rc, out, err = health("-c", self.config(self.addr))
        self.assertEqual(rc, 0, err)
        self.assertIn("http://%s/healthz answered 200" % self.addr, out)
        self.assertEqual(len(self.srv.requests), 1)

    def test_file_named_by_the_environment(self):
        # The container's case: a mounted configuration that moves the admin port.
        rc, out, err = health(env={"APPLE_AUTH_PROXY_CONFIG": self.config(self.addr)})
        self.assertEqual(rc, 0, err)
        self.assertIn("http://%s/healthz" % self.addr, out)

    def test_environment_overrides_the_file_as_for_serve(self):
        path = self.config("127.0.0.1:%d" % h.unused_port())
        rc, out, err = health("-c", path, env={"APPLE_AUTH_PROXY_ADMIN_LISTEN": self.addr})
        self.assertEqual(rc, 0, err)
        self.assertIn("http://%s/healthz" % self.addr, out)

    def test_wildcard_in_the_file_is_probed_on_loopback(self):
        rc, out, err = health("-c", self.config("0.0.0.0:%d" % self.srv.port))
        self.assertEqual(rc, 0, err)
        self.assertIn("http://127.0.0.1:%d/healthz" % self.srv.port, out)

    def test_admin_off_in_the_file(self):
        rc, out, err = health("-c", self.config(None))
        self.assertEqual(rc, 1, err)
        self.assertEqual(out, "")
        self.assertIn("the admin listener is off", err)
        self.assertEqual(self.srv.requests, [])

    def test_flag_wins_over_the_environment_file(self):
        path = self.config("127.0.0.1:%d" % h.unused_port())
        rc, _, err = health("--admin", self.addr, env={"APPLE_AUTH_PROXY_CONFIG": path})
        self.assertEqual(rc, 0, err)

    def test_unloadable_file_is_a_usage_error(self):
        bad = os.path.join(h.new_dir("config"), "bad.json")
        with open(bad, "w") as f:
            f.write("{ not json")
        for args in (["-c", bad], ["-c", "/nonexistent/config.json"]):
            with self.subTest(args=args):
                rc, out, err = health(*args)
                self.assertEqual(rc, 2, err)
                self.assertEqual(out, "")
                self.assertIn("apple-auth-proxy health:", err)
        self.assertEqual(self.srv.requests, [])

    def test_admin_and_config_together_is_a_usage_error(self):
        rc, out, err = health("--admin", self.addr, "-c", self.config(self.addr))
        self.assertEqual(rc, 2, err)
        self.assertIn("not both", err)


class HealthUsage(unittest.TestCase):
    def test_nothing_listening(self):
        port = h.unused_port()
        rc, _, err = health("--admin", "127.0.0.1:%d" % port)
        self.assertEqual(rc, 1)
        self.assertIn("127.0.0.1:%d/healthz" % port, err)

    def test_admin_listener_off(self):
        for env, args in (({"APPLE_AUTH_PROXY_ADMIN_LISTEN": "off"}, []), ({}, ["--admin", "off"])):
            with self.subTest(env=env, args=args):
                rc, out, err = health(*args, env=env)
                self.assertEqual(rc, 1, err)
                self.assertEqual(out, "")
                self.assertIn("the admin listener is off", err)

    def test_default_address(self):
        # With neither flag nor variable the probe asks 127.0.0.1:9901 (whatever answers there).
        rc, out, err = health()
        self.assertIn(rc, (0, 1))
        self.assertIn("http://127.0.0.1:9901/healthz", out + err)

    def test_usage_errors(self):
        for args in (["--admin"], ["--admin", "nohost"], ["--admin", "127.0.0.1:0"],
                     ["--admin", "127.0.0.1:70000"], ["--timeout", "0"], ["--timeout", "301"],
                     ["--timeout", "1s"], ["--bogus"]):
            with self.subTest(args=args):
                rc, out, err = health(*args)
                self.assertEqual(rc, 2, err)
                self.assertEqual(out, "")
                self.assertIn("apple-auth-proxy health:", err)

    def test_help(self):
        rc, out, _ = health("--help")
        self.assertEqual(rc, 0)
        self.assertIn("usage: apple-auth-proxy health", out)

    def test_listed_in_the_main_usage(self):
        rc, out, _ = h.run_cli(["--help"])
        self.assertEqual(rc, 0)
        self.assertIn("apple-auth-proxy health [--admin ADDR | -c FILE] [--ready]", out)


if __name__ == "__main__":
    unittest.main()
