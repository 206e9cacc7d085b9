"""The cached token end to end: reuse, refresh ahead of expiry, the client's own credentials
stripped, and Apple's 401 (one re-mint and one retry, never a signing storm).

The stand-in's /__control/revoke (tests/upstream/standin.py) makes it refuse one token, or
every token of a key, the way Apple refuses a revoked key.
"""
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

MINTS = "apple_auth_proxy_token_mints_total"


control = pt.standin_control


class TokenReuseTest(unittest.TestCase):
    """Two workers share one token cache: every request carries the same cached token."""

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(workers=2, admin_listen="127.0.0.1:0")
        cls.up = cls.st.standin

    def test_same_token_over_many_requests(self):
        m = self.up.mark()
        for i in range(10):  # new connections: spread over both workers
            self.assertEqual(self.st.request("GET", "/v1/apps").status, 200)
        with self.st.client() as c:
            for i in range(20):
                self.assertEqual(c.request("GET", "/__echo?i=%d" % i).status, 200)
        reqs = self.up.requests(m)
        self.assertEqual(len(reqs), 30)
        self.assertTrue(all(e["token_ok"] for e in reqs), [e["token_error"] for e in reqs])
        toks = set(pt.tokens_seen(self.up, m))
        self.assertEqual(len(toks), 1, "one cached token for every request, got %d" % len(toks))
        mints = pt.metrics(self.st.proxy).value(MINTS, credential="app-store-connect")
        self.assertLessEqual(mints, 2, "no signature per request")

    def test_token_claims_and_lifetime(self):
        m = self.up.mark()
        self.assertEqual(self.st.request("GET", "/v1/apps").status, 200)
        tok = pt.tokens_seen(self.up, m)[0]
        header, claims = h.decode_token(tok, self.st.keys["app-store-connect"])
        self.assertEqual(header, {"alg": "ES256", "kid": self.st.keys["app-store-connect"].kid,
                                  "typ": "JWT"})
        self.assertLessEqual(claims["exp"] - claims["iat"], 1200)
        self.assertGreater(claims["exp"], time.time() + 60)
        self.assertLessEqual(claims["iat"], time.time())

    def test_client_authorization_stripped(self):
        m = self.up.mark()
        hdrs = [("Authorization", "Bearer client-token-1"),
                ("X-Before", "1"),
                ("authorization", "Basic dXNlcjpwYXNz"),
                ("AUTHORIZATION", "Bearer client-token-3"),
                ("aUtHoRiZaTiOn", "Bearer client-token-4"),
                ("X-After", "2")]
        with self.st.client() as c:
            r = c.request("GET", "/__echo", hdrs)
        self.assertEqual(r.status, 200)
        ev = self.up.wait_for(lambda e: True, since=m, kind="request")
        auth = pt.auth_headers(ev)
        self.assertEqual(len(auth), 1, auth)
        self.assertTrue(ev["token_ok"], ev["token_error"])
        self.assertNotIn("client-token", ev["raw_head"])
        self.assertNotIn("dXNlcjpwYXNz", ev["raw_head"])
        self.assertEqual(pt.header_values(ev, "X-Before"), ["1"])
        self.assertEqual(pt.header_values(ev, "X-After"), ["2"])

    def test_proxy_authorization_stripped(self):
        m = self.up.mark()
        with self.st.client() as c:
            r = c.request("GET", "/__echo", [("Proxy-Authorization", "Basic c2VjcmV0"),
                                             ("proxy-authorization", "Bearer other")])
        self.assertEqual(r.status, 200)
        ev = self.up.wait_for(lambda e: True, since=m, kind="request")
        self.assertEqual(pt.header_values(ev, "Proxy-Authorization"), [])
        self.assertNotIn("c2VjcmV0", ev["raw_head"])
        self.assertEqual(len(pt.auth_headers(ev)), 1)

    def test_authorization_in_trailers_not_forwarded(self):
        m = self.up.mark()
        with self.st.client() as c:
            c.send(b"POST /__echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n" +
                   h.chunked_body([b"abc"], [("Authorization", "Bearer trailer-token")]))
            r = c.read_response("POST")
        self.assertEqual(r.status, 200)
        ev = self.up.wait_for(lambda e: True, since=m, kind="request")
        self.assertEqual(ev["trailers"], [])
        self.assertEqual(len(pt.auth_headers(ev)), 1)
        self.assertTrue(ev["token_ok"])


class TokenRefreshTest(unittest.TestCase):
    """A short token life (120 s, iat backdated 60 s: 60 s of validity once minted), so that
    the cached token is replaced within the test. Every token the stand-in receives must be
    valid when it arrives. Takes about 40 s: the refresh margin is a third of the usable life,
    so the token is replaced 40 s after it is signed."""

    LIFETIME, SKEW = 120, 60

    @classmethod
    def setUpClass(cls):
        key = h.make_key()
        cls.key = key
        cls.up = h.start_standin()
        cred = h.credential("app-store-connect", key, token_lifetime=cls.LIFETIME,
                            clock_skew=cls.SKEW)
        cls.config = h.write_config({"asc": cred}, [h.route(cls.up, "app-store-connect", "asc")],
                                    admin_listen="127.0.0.1:0")
        cls.px = h.start_proxy(cls.config)

    def test_refreshed_before_expiry_never_expired(self):
        m = self.up.mark()
        first = None
        deadline = time.monotonic() + (self.LIFETIME - self.SKEW) + 10
        new_token_seen = False
        while time.monotonic() < deadline:
            with self.px.client() as c:
                r = c.request("GET", "/v1/apps")
            self.assertEqual(r.status, 200, r.body)
            toks = pt.tokens_seen(self.up, m)
            if first is None:
                first = toks[0]
            if any(t != first for t in toks):
                new_token_seen = True
                break
            time.sleep(1.0)
        self.assertTrue(new_token_seen, "the token was never refreshed within its validity")
        for _ in range(3):
            with self.px.client() as c:
                self.assertEqual(c.request("GET", "/v1/apps").status, 200)
        reqs = self.up.requests(m)
        for e in reqs:
            self.assertTrue(e["token_ok"], "a token the stand-in refused: %s" % e["token_error"])
            exp = e["token_claims"]["exp"]
            # Never handed out within 5 s of its exp (the cache's guard), so never expired.
            self.assertGreater(exp - e["time"], 4, "token too close to expiry when it arrived")
            self.assertLessEqual(e["token_claims"]["exp"] - e["token_claims"]["iat"],
                                 self.LIFETIME)
        toks = pt.tokens_seen(self.up, m)
        # Once the new token is in use, the old one is not used again.
        first_new = next(i for i, t in enumerate(toks) if t != first)
        self.assertNotIn(first, toks[first_new:])
        expiry = pt.metrics(self.px).value("apple_auth_proxy_token_expiry_seconds",
                                           credential="asc")
        self.assertGreater(expiry, 0)
        self.assertLessEqual(expiry, self.LIFETIME - self.SKEW)


class LargeClockSkewTest(unittest.TestCase):
    """clock_skew close to the lifetime (lifetime 180, skew 120: a valid configuration, since
    lifetime - skew >= 60) leaves a new token valid for 60 s. It must still be reused, not
    re-signed every second. (Regression: the margin was a third of exp - iat, 60 s, so every
    new token was already inside it; fixed in 3c20062.)"""

    @classmethod
    def setUpClass(cls):
        key = h.make_key()
        cls.up = h.start_standin()
        cred = h.credential("app-store-connect", key, token_lifetime=180, clock_skew=120)
        cls.config = h.write_config({"asc": cred}, [h.route(cls.up, "app-store-connect", "asc")],
                                    admin_listen="127.0.0.1:0")
        cls.px = h.start_proxy(cls.config)

    def test_token_reused_not_reminted_every_second(self):
        m = self.up.mark()
        for _ in range(6):
            with self.px.client() as c:
                self.assertEqual(c.request("GET", "/v1/apps").status, 200)
            time.sleep(0.7)
        toks = pt.tokens_seen(self.up, m)
        mints = pt.metrics(self.px).value(MINTS, credential="asc")
        self.assertLessEqual(len(set(toks)), 2,
                             "%d different tokens for 6 requests in 4 s" % len(set(toks)))
        self.assertLessEqual(mints, 2, "%d signatures in about 4 s" % mints)


class Remint401Test(unittest.TestCase):
    """Apple refuses the cached token once: the proxy drops it, mints a new one and retries the
    idempotent, body-less request once; the client sees only the 200."""

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(admin_listen="127.0.0.1:0")
        cls.up = cls.st.standin

    def test_401_remint_and_single_retry(self):
        m = self.up.mark()
        self.assertEqual(self.st.request("GET", "/v1/apps").status, 200)
        t1 = pt.tokens_seen(self.up, m)[0]
        mints_before = pt.metrics(self.st.proxy).value(MINTS, credential="app-store-connect")
        control(self.up, "revoke", token=t1)
        m = self.up.mark()
        r = self.st.request("GET", "/v1/apps")
        self.assertEqual(r.status, 200, "the client must see the retried request's answer")
        self.assertEqual(r.json()["data"][0]["type"], "apps")
        reqs = self.up.requests(m)
        self.assertEqual(len(reqs), 2, "one refused request and exactly one retry")
        self.assertFalse(reqs[0]["token_ok"])
        self.assertIn("revoked", reqs[0]["token_error"])
        self.assertEqual(pt.auth_headers(reqs[0]), ["Bearer " + t1])
        self.assertTrue(reqs[1]["token_ok"], reqs[1]["token_error"])
        t2 = pt.auth_headers(reqs[1])[0][len("Bearer "):]
        self.assertNotEqual(t2, t1)
        self.assertEqual(reqs[1]["target"], "/v1/apps")
        # The new token is cached and reused; the refused one is never sent again.
        m = self.up.mark()
        for _ in range(3):
            self.assertEqual(self.st.request("GET", "/v1/apps").status, 200)
        self.assertEqual(set(pt.tokens_seen(self.up, m)), {t2})
        mints_after = pt.metrics(self.st.proxy).value(MINTS, credential="app-store-connect")
        self.assertEqual(mints_after - mints_before, 1)
        # The client made one request: one access-log line, with the status it received.
        lines = pt.access_log(self.st.proxy, 5, pred=lambda l: l["path"] == "/v1/apps")
        self.assertEqual([l["status"] for l in lines if l["path"] == "/v1/apps"], [200] * 5)


class RevokedKeyTest(unittest.TestCase):
    """Apple refuses every token of the key (revoked key): one re-mint at most, no signing
    storm, and every client gets Apple's 401."""

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(admin_listen="127.0.0.1:0")
        cls.up = cls.st.standin
        cls.kid = cls.st.keys["app-store-connect"].kid

    def tearDown(self):
        control(self.up, "reset")

    def test_1_persistently_rejected_key_no_signing_storm(self):
        self.assertEqual(self.st.request("GET", "/v1/apps").status, 200)
        mints_before = pt.metrics(self.st.proxy).value(MINTS, credential="app-store-connect")
        control(self.up, "revoke", kid=self.kid)
        m = self.up.mark()
        n = 25
        for i in range(n):
            with self.st.client() as c:
                r = c.request("GET", "/v1/apps")
            self.assertEqual(r.status, 401)
            self.assertEqual(r.json()["errors"][0]["code"], "NOT_AUTHORIZED",
                             "Apple's own 401 reaches the client")
        mints = pt.metrics(self.st.proxy).value(MINTS, credential="app-store-connect")
        self.assertLessEqual(mints - mints_before, 2, "signing storm: %d new tokens for %d "
                             "refused requests" % (mints - mints_before, n))
        reqs = self.up.requests(m)
        self.assertLessEqual(len(reqs), n + 2, "at most one retry in total, not one per request")
        self.assertTrue(all(not e["token_ok"] for e in reqs))
        # Once the key is accepted again, the current token works at once.
        control(self.up, "unrevoke", kid=self.kid)
        self.assertEqual(self.st.request("GET", "/v1/apps").status, 200)

    def test_2_post_with_body_not_retried(self):
        m = self.up.mark()
        self.assertEqual(self.st.request("GET", "/__echo").status, 200)
        tok = pt.tokens_seen(self.up, m)[0]
        control(self.up, "revoke", token=tok)
        m = self.up.mark()
        r = self.st.request("POST", "/v1/apps", [("Content-Type", "application/json")],
                            json.dumps({"data": {}}))
        self.assertEqual(r.status, 401)
        self.assertEqual(len(self.up.requests(m)), 1, "a request with a body is never replayed")


if __name__ == "__main__":
    unittest.main()
