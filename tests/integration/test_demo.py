"""`make demo` keeps working: tests/upstream/demo.py runs to the end, exits 0 within 30 s, and
shows each step (the 401s without a token, the 200s through the proxy, the decoded token)."""
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

DEMO = os.path.join(h.SOURCE_DIR, "tests", "upstream", "demo.py")


class DemoTest(unittest.TestCase):
    def test_demo_runs(self):
        t0 = time.monotonic()
        p = subprocess.run([h.PYTHON, DEMO, "--binary", h.BINARY], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=60,
                           env=h.clean_env({k: os.environ[k] for k in
                                            ("AAP_SOURCE_DIR", "AAP_SANITIZED")
                                            if k in os.environ}))
        took = time.monotonic() - t0
        self.assertEqual(p.returncode, 0, "demo failed:\n%s\n%s" % (p.stdout[-3000:], p.stderr))
        self.assertLess(took, 30, "the demo must finish in under 30 s")
        out = p.stdout
        for needle in ("== 1. Calling Apple directly, without a token ==",
                       '"reason": "MISSING_AUTH"', '"code": "NOT_AUTHORIZED"',
                       "== 2. The same requests through the proxy",
                       "HTTP 200 OK", "== 3. The token the proxy added ==",
                       '"alg":\t"ES256"', "64 raw bytes", "accepted",
                       "== 4. A token exchange: the Apple Maps Server API ==",
                       "GET /v1/token with the Maps auth token (verified: accepted)",
                       "One exchange for both requests",
                       "== 5. Where to go next ==", "docs/troubleshooting.md"):
            self.assertIn(needle, out)
        self.assertLess(out.index("MISSING_AUTH"), out.index("HTTP 200 OK"))
        # The push: through the proxy, carried over HTTP/2.
        self.assertIn("A push notification", out)
        self.assertIn("apns-id: ", out)
        self.assertIn("HTTP/2 connection (ALPN h2)", out)
        self.assertNotIn("PRIVATE KEY", out + p.stderr)

    def test_demo_fails_loudly(self):
        p = subprocess.run([h.PYTHON, DEMO, "--binary", "/nonexistent/apple-auth-proxy"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=30, env=h.clean_env())
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("not an executable", p.stderr)


if __name__ == "__main__":
    unittest.main()
