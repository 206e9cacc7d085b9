"""What the proxy learns while it serves outlives a reload (docs/architecture.md, "Live state"):
a client's rate bucket, Apple's Retry-After and X-Rate-Limit figures, and the mint counts are
kept by client and credential name, so SIGHUP neither refills a bucket nor forgets that Apple
asked to wait.

Covered, each by its own test:
  a client that used up its burst is still limited right after SIGHUP;
  a changed rate or burst for that client applies at once, without refilling its bucket;
  Apple's Retry-After is still honoured after SIGHUP, without a request reaching Apple;
  Apple's X-Rate-Limit figures (and so quota_reserve) hold across SIGHUP.
"""
import hashlib
import os
import re
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

SECRET = "live-state-test-secret-0123456789abcdefghijkl"
OTHER = "live-state-test-other-secret-0123456789abcdef"


def bearer(secret):
    return [("Proxy-Authorization", "Bearer " + secret)]


class LiveStateTest(unittest.TestCase):
    """One proxy per test: a client "limited" and a client "other", one App Store Connect
    credential; rewrite() changes the configuration and reload() applies it."""

    def setUp(self):
        self.up = h.start_standin(rate_remaining=1000)
        self.addCleanup(self.up.stop)
        self.creds = {"asc": h.credential("app-store-connect", h.make_key())}
        self.routes = [h.route(self.up, "app-store-connect", "asc")]
        self.config = os.path.join(h.new_dir("live-state"), "config.json")

    def rewrite(self, rate=None, quota_reserve=None, touch=""):
        limited = {"key_sha256": hashlib.sha256(SECRET.encode()).hexdigest()}
        if rate is not None:
            limited["rate"] = rate
        clients = {"limited": limited,
                   "other": {"key_sha256": hashlib.sha256(OTHER.encode()).hexdigest(),
                             "priority": True}}
        creds = {"asc": dict(self.creds["asc"])}
        if quota_reserve is not None:
            creds["asc"]["quota_reserve"] = quota_reserve
        routes = [dict(self.routes[0])]
        if touch:
            # a change the reload must take (a different route prefix order), so that the
            # test sees a new configuration, not the same one again
            routes.insert(0, h.route(self.up, "app-store-connect", "asc", path_prefix=touch))
        tmp = self.config + ".tmp"
        h.write_config(creds, routes, clients=clients, admin_listen="127.0.0.1:0", path=tmp)
        os.replace(tmp, self.config)

    def start(self):
        self.px = h.start_proxy(self.config)
        self.addCleanup(self.px.stop)

    def reload(self):
        mark = len(self.px.stderr_text())
        self.px.proc.send_signal(signal.SIGHUP)
        pt.wait_stderr(self.px, r"reloaded", since=mark, timeout=30)

    def get(self, path="/v1/apps", secret=SECRET):
        with h.HttpClient(self.px.port) as c:
            return c.request("GET", path, bearer(secret))

    def use_up_burst(self, burst):
        for i in range(burst):
            r = self.get()
            self.assertEqual(r.status, 200, (i, r.body[:300]))
        r = self.get()
        self.assertEqual(r.status, 429, r.body[:300])
        self.assertEqual(pt.error_code(r), "PROXY_RATE_LIMITED")

    def test_used_up_burst_still_limited_after_sighup(self):
        # one request per 100 s comes back: nothing refills during the test
        self.rewrite(rate={"per_second": 0.01, "burst": 3})
        self.start()
        self.use_up_burst(3)
        self.rewrite(rate={"per_second": 0.01, "burst": 3}, touch="/v2/")
        self.reload()
        mark = self.up.mark()
        r = self.get()
        self.assertEqual(r.status, 429, r.body[:300])
        self.assertEqual(pt.error_code(r), "PROXY_RATE_LIMITED")
        self.assertGreaterEqual(int(r.header("Retry-After")), 50)
        self.assertEqual(self.up.requests(mark), [], "nothing reaches Apple")
        # another client is not affected
        self.assertEqual(self.get(secret=OTHER).status, 200)

    def test_changed_rate_applies_without_refilling(self):
        self.rewrite(rate={"per_second": 0.01, "burst": 2})
        self.start()
        self.use_up_burst(2)
        # a larger burst and a faster rate: the bucket is not refilled by the reload, it
        # fills at the new rate from now on (2 per second: one request back within ~0.5 s)
        self.rewrite(rate={"per_second": 2, "burst": 5})
        self.reload()
        r = self.get()
        self.assertEqual(r.status, 429, r.body[:300])
        self.assertLessEqual(int(r.header("Retry-After")), 1, "the new rate decides the wait")
        deadline = time.monotonic() + 10
        while True:
            time.sleep(0.6)
            r = self.get()
            if r.status == 200 or time.monotonic() > deadline:
                break
        self.assertEqual(r.status, 200, r.body[:300])

    def test_apple_retry_after_honoured_after_sighup(self):
        self.rewrite()
        self.start()
        r = self.get("/v1/__rate_limit?after=60")
        self.assertEqual(r.status, 429, r.body[:300])
        self.assertEqual(r.header("Retry-After"), "60")
        self.rewrite(touch="/v2/")
        self.reload()
        mark = self.up.mark()
        for secret in (SECRET, OTHER):
            r = self.get(secret=secret)
            self.assertEqual(r.status, 429, r.body[:300])
            self.assertEqual(pt.error_code(r), "PROXY_APPLE_RETRY_AFTER")
            retry = int(r.header("Retry-After"))
            self.assertTrue(50 <= retry <= 61, retry)
        self.assertEqual(self.up.requests(mark), [], "nothing reaches Apple while it rests")

    def test_apple_quota_figures_survive_sighup(self):
        # the stand-in reports about 1000 requests left; the credential keeps 2000 for
        # priority clients
        self.rewrite(quota_reserve=2000)
        self.start()
        r = self.get()
        self.assertEqual(r.status, 200, r.body[:300])
        m = re.fullmatch(r"user-hour-lim:3600;user-hour-rem:(\d+);", r.header("X-Rate-Limit"))
        self.assertIsNotNone(m, r.header("X-Rate-Limit"))
        self.rewrite(quota_reserve=2000, touch="/v2/")
        self.reload()
        self.assertEqual(pt.metrics(self.px).value("apple_auth_proxy_apple_rate_limit_remaining",
                                                   credential="asc"), int(m.group(1)))
        mark = self.up.mark()
        r = self.get()
        self.assertEqual(r.status, 429, r.body[:300])
        self.assertEqual(pt.error_code(r), "PROXY_QUOTA_RESERVED")
        self.assertEqual(self.up.requests(mark), [])


if __name__ == "__main__":
    unittest.main()
