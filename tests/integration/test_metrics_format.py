"""/metrics is valid Prometheus text format 0.0.4: promtool's parser and linter accept it, with
every series family present, after traffic of every kind (routes, no route, proxy errors)."""
import os
import shutil
import subprocess
import sys
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

FAMILIES = [
    "apple_auth_proxy_requests_total", "apple_auth_proxy_request_duration_seconds",
    "apple_auth_proxy_upstream_connections", "apple_auth_proxy_upstream_handshakes_total",
    "apple_auth_proxy_token_mints_total", "apple_auth_proxy_token_expiry_seconds",
    "apple_auth_proxy_apple_rate_limit_remaining", "apple_auth_proxy_client_connections",
    "apple_auth_proxy_errors_total", "apple_auth_proxy_build_info", "process_start_time_seconds",
    "process_resident_memory_bytes", "process_open_fds", "process_max_fds",
    "process_cpu_seconds_total", "apple_auth_proxy_reloads_total",
    "apple_auth_proxy_last_reload_success_timestamp_seconds",
    "apple_auth_proxy_token_mint_failures_total", "apple_auth_proxy_token_401_remints_total",
    "apple_auth_proxy_token_expiry_timestamp_seconds", "apple_auth_proxy_apple_rate_limit_limit",
    "apple_auth_proxy_apple_round_trip_seconds", "apple_auth_proxy_time_to_first_byte_seconds",
    "apple_auth_proxy_upstream_connect_failures_total", "apple_auth_proxy_requests_in_flight",
    "apple_auth_proxy_client_requests_total",
    "apple_auth_proxy_listener_certificate_expiry_timestamp_seconds",
    "apple_auth_proxy_client_ca_expiry_timestamp_seconds",
]


class MetricsFormat(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(profiles=("app-store-connect", "weatherkit"), admin_listen="127.0.0.1:0")

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def scrape(self):
        # The admin line may follow the listen lines the stack waited for.
        url = "http://127.0.0.1:%d/metrics" % pt.admin_port(self.st.proxy)
        with urllib.request.urlopen(url, timeout=10) as r:
            self.assertEqual(r.headers["Content-Type"], "text/plain; version=0.0.4; charset=utf-8")
            return r.read()

    def test_promtool_accepts_the_exposition(self):
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool (Debian's prometheus package) is needed: make deps")
        for host, path in (("api.appstoreconnect.apple.com", "/v1/apps"),
                           ("weatherkit.apple.com", "/api/v1/availability/1/2"),
                           ("api.appstoreconnect.apple.com", "/a/../b"),
                           ("api.appstoreconnect.apple.com", "/__status/503")):
            self.st.request("GET", path, {"Host": host})
        # A method label that must be folded into "other", and a quote in nothing user-given.
        self.st.request("PROPFIND", "/v1/apps", {"Host": "api.appstoreconnect.apple.com"})
        text = self.scrape()
        p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           timeout=60)
        self.assertEqual(p.returncode, 0, "promtool: %s %s\n%s" % (
            p.stdout.decode(), p.stderr.decode(), text.decode()[:3000]))
        body = text.decode()
        for fam in FAMILIES:
            self.assertIn("# TYPE %s " % fam, body)
        self.assertIn('method="other"', body)
        self.assertIn('code="PROXY_BAD_REQUEST"} 1', body)


if __name__ == "__main__":
    unittest.main()
