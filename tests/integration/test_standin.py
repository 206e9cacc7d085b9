"""Self-test of the Apple stand-in (tests/upstream/standin.py) and of certs.py; no proxy needed.

Tokens are minted here with PyJWT, so this checks the verifier the other tests rely on.
"""
import base64
import hashlib
import json
import os
import socket
import ssl
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

ASC = "api.appstoreconnect.apple.com"
WK = "weatherkit.apple.com"
SK = "api.storekit.itunes.apple.com"
SK_SANDBOX = "api.storekit-sandbox.itunes.apple.com"
ENT = "api.enterprise.developer.apple.com"
MUSIC = "api.music.apple.com"


def bearer(token):
    return [("Authorization", "Bearer " + token)]


class StandinTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.key = h.make_key()
        cls.up = h.start_standin("good")
        cls.asc = h.credential("app-store-connect", cls.key)
        cls.wk = h.credential("weatherkit", cls.key)
        cls.sk = h.credential("app-store-server", cls.key)
        cls.ent = h.credential("enterprise", cls.key)
        cls.music = h.credential("music", cls.key)

    def call(self, host, method, target, headers=None, body=None):
        with self.up.client(host) as c:
            return c.request(method, target, headers, body, host=host)

    def last_request(self, since):
        reqs = self.up.requests(since)
        self.assertTrue(reqs, "the stand-in logged no request")
        return reqs[-1]

    # -- App Store Connect ------------------------------------------------------------------------

    def test_asc_valid_token(self):
        tok = h.mint_profile("app-store-connect", self.key, self.asc)
        m = self.up.mark()
        r = self.call(ASC, "GET", "/v1/apps", bearer(tok))
        self.assertEqual(r.status, 200, r.body)
        doc = r.json()
        self.assertEqual(doc["data"][0]["type"], "apps")
        self.assertEqual(doc["data"][0]["attributes"]["bundleId"], "com.example.demo")
        self.assertRegex(r.header("X-Rate-Limit", ""), r"^user-hour-lim:3600;user-hour-rem:\d+;$")
        ev = self.last_request(m)
        self.assertTrue(ev["token_ok"], ev["token_error"])
        self.assertIsNone(ev["token_error"])
        self.assertEqual(ev["host"], ASC)
        self.assertEqual(ev["token_claims"]["iss"], self.asc["issuer_id"])
        self.assertEqual(ev["token_header"]["kid"], self.key.kid)
        self.assertIn(["Authorization", "Bearer " + tok], ev["headers"])

    def test_asc_rate_limit_counts_down(self):
        tok = h.mint_profile("app-store-connect", self.key, self.asc)
        rems = []
        with self.up.client(ASC) as c:
            for _ in range(3):
                r = c.request("GET", "/v1/apps", bearer(tok), host=ASC)
                self.assertEqual(r.status, 200)
                rems.append(int(r.header("X-Rate-Limit").split("user-hour-rem:")[1].rstrip(";")))
        self.assertEqual(rems, [rems[0], rems[0] - 1, rems[0] - 2])

    def test_asc_individual_key(self):
        cred = dict(self.asc)
        del cred["issuer_id"]
        tok = h.mint_profile("app-store-connect", self.key, cred)
        self.assertEqual(h.decode_token(tok)[1]["sub"], "user")
        self.assertEqual(self.call(ASC, "GET", "/v1/apps", bearer(tok)).status, 200)

    def assert_asc_401(self, r):
        self.assertEqual(r.status, 401, r.body)
        self.assertEqual(r.header("Content-Type"), "application/json")
        err = r.json()["errors"][0]
        self.assertEqual(err["status"], "401")
        self.assertEqual(err["code"], "NOT_AUTHORIZED")
        self.assertEqual(err["title"], "Authentication credentials are missing or invalid.")
        self.assertTrue(r.header("X-Rate-Limit"))

    def test_asc_no_token(self):
        m = self.up.mark()
        self.assert_asc_401(self.call(ASC, "GET", "/v1/apps"))
        ev = self.last_request(m)
        self.assertFalse(ev["token_ok"])
        self.assertIn("missing", ev["token_error"])

    def test_asc_lifetime_1260_rejected(self):
        # fastlane's bug: iat backdated 60 s with a 1200 s duration.
        tok = h.mint_profile("app-store-connect", self.key, self.asc, lifetime=1260)
        m = self.up.mark()
        self.assert_asc_401(self.call(ASC, "GET", "/v1/apps", bearer(tok)))
        self.assertIn("exp - iat", self.last_request(m)["token_error"])

    def test_asc_lifetime_1200_accepted(self):
        tok = h.mint_profile("app-store-connect", self.key, self.asc, lifetime=1200)
        self.assertEqual(self.call(ASC, "GET", "/v1/apps", bearer(tok)).status, 200)

    def test_asc_exp_too_far_ahead(self):
        now = int(time.time())
        tok = h.mint_profile("app-store-connect", self.key, self.asc, iat=now + 30, exp=now + 1230)
        self.assert_asc_401(self.call(ASC, "GET", "/v1/apps", bearer(tok)))

    def test_asc_expired(self):
        now = int(time.time())
        tok = h.mint_profile("app-store-connect", self.key, self.asc, iat=now - 1000, exp=now - 10)
        self.assert_asc_401(self.call(ASC, "GET", "/v1/apps", bearer(tok)))

    def test_asc_wrong_audience_and_missing_typ(self):
        tok = h.mint_profile("app-store-connect", self.key, self.asc, aud="apple-developer-enterprise-v1")
        self.assert_asc_401(self.call(ASC, "GET", "/v1/apps", bearer(tok)))
        now = int(time.time())
        tok = h.mint(self.key, {"iss": self.asc["issuer_id"], "iat": now - 60, "exp": now + 600,
                                "aud": "appstoreconnect-v1"})  # PyJWT adds typ JWT by default
        self.assertEqual(self.call(ASC, "GET", "/v1/apps", bearer(tok)).status, 200)
        tok = h.mint(self.key, {"iss": self.asc["issuer_id"], "iat": now - 60, "exp": now + 600,
                                "aud": "appstoreconnect-v1"}, {"typ": None})
        self.assertNotIn("typ", h.decode_token(tok)[0])
        self.assert_asc_401(self.call(ASC, "GET", "/v1/apps", bearer(tok)))

    def test_asc_unknown_kid(self):
        other = h.make_key(publish=False)
        tok = h.mint_profile("app-store-connect", other, self.asc)
        m = self.up.mark()
        self.assert_asc_401(self.call(ASC, "GET", "/v1/apps", bearer(tok)))
        self.assertIn("unknown kid", self.last_request(m)["token_error"])

    def test_asc_wrong_key_signature(self):
        impostor = h.make_key(publish=False)
        impostor.kid = self.key.kid  # right kid, wrong key
        tok = h.mint_profile("app-store-connect", impostor, self.asc)
        m = self.up.mark()
        self.assert_asc_401(self.call(ASC, "GET", "/v1/apps", bearer(tok)))
        self.assertIn("signature", self.last_request(m)["token_error"])

    def test_asc_der_signature_rejected(self):
        # The classic bug: an ASN.1 DER ECDSA signature instead of raw R||S.
        good = h.mint_profile("app-store-connect", self.key, self.asc)
        signing_input = good.rsplit(".", 1)[0].encode()
        der = self.key.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        tok = signing_input.decode() + "." + base64.urlsafe_b64encode(der).rstrip(b"=").decode()
        self.assertEqual(len(h.b64url_decode(good.rsplit(".", 1)[1])), 64)
        self.assert_asc_401(self.call(ASC, "GET", "/v1/apps", bearer(tok)))

    def test_asc_scope(self):
        tok = h.mint_profile("app-store-connect", self.key, self.asc,
                             scope=["GET /v1/apps", "GET /__echo?x=1"])
        self.assertEqual(self.call(ASC, "GET", "/v1/apps", bearer(tok)).status, 200)
        self.assertEqual(self.call(ASC, "GET", "/v1/apps?limit=5", bearer(tok)).status, 200)
        self.assertEqual(self.call(ASC, "GET", "/__echo?x=1", bearer(tok)).status, 200)
        self.assert_asc_401(self.call(ASC, "GET", "/__echo?x=2", bearer(tok)))
        self.assert_asc_401(self.call(ASC, "POST", "/v1/apps", bearer(tok), b"{}"))
        self.assert_asc_401(self.call(ASC, "GET", "/v1/apps/1", bearer(tok)))

    def test_multiple_authorization_headers(self):
        tok = h.mint_profile("app-store-connect", self.key, self.asc)
        m = self.up.mark()
        r = self.call(ASC, "GET", "/v1/apps", bearer(tok) + [("authorization", "Bearer " + tok)])
        self.assertEqual(r.status, 400)
        ev = self.last_request(m)
        self.assertIn("multiple", ev["token_error"])
        self.assertEqual(len([1 for k, v in ev["headers"] if k.lower() == "authorization"]), 2)

    def test_not_found(self):
        tok = h.mint_profile("app-store-connect", self.key, self.asc)
        r = self.call(ASC, "GET", "/v1/nothing", bearer(tok))
        self.assertEqual(r.status, 404)
        self.assertEqual(r.json()["errors"][0]["status"], "404")

    # -- WeatherKit -----------------------------------------------------------------------------

    def test_asc_token_to_weatherkit(self):
        tok = h.mint_profile("app-store-connect", self.key, self.asc)
        r = self.call(WK, "GET", "/api/v1/availability/37.32/-122.03", bearer(tok))
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json(), {"reason": "MISSING_AUTH"})
        self.assertIsNone(r.header("X-Rate-Limit"))

    def test_weatherkit_valid(self):
        tok = h.mint_profile("weatherkit", self.key, self.wk)
        hdr = h.decode_token(tok)[0]
        self.assertNotIn("typ", hdr)
        r = self.call(WK, "GET", "/api/v1/availability/37.32/-122.03", bearer(tok))
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json(), ["currentWeather", "forecastDaily"])
        r = self.call(WK, "GET", "/api/v1/weather/en/37.32/-122.03?dataSets=currentWeather", bearer(tok))
        self.assertEqual(r.status, 200, r.body)
        self.assertIn("currentWeather", r.json())

    def test_weatherkit_extra_claim_or_bad_id(self):
        tok = h.mint_profile("weatherkit", self.key, self.wk, aud="x")
        r = self.call(WK, "GET", "/api/v1/availability/1/2", bearer(tok))
        self.assertEqual((r.status, r.json()), (401, {"reason": "MISSING_AUTH"}))
        now = int(time.time())
        tok = h.mint(self.key, {"iss": self.wk["team_id"], "iat": now - 60, "exp": now + 600,
                                "sub": self.wk["service_id"]}, {"id": "WRONG.ID"})
        r = self.call(WK, "GET", "/api/v1/availability/1/2", bearer(tok))
        self.assertEqual(r.status, 401)

    # -- App Store Server, enterprise, music ----------------------------------------------------

    def test_storekit(self):
        tok = h.mint_profile("app-store-server", self.key, self.sk)
        for host in (SK, SK_SANDBOX):
            r = self.call(host, "GET", "/inApps/v1/history/2000000000000001", bearer(tok))
            self.assertEqual(r.status, 200, r.body)
            doc = r.json()
            self.assertEqual(doc["bundleId"], "com.example.demo")
            self.assertEqual(doc["signedTransactions"], [])
            self.assertFalse(doc["hasMore"])
        tok = h.mint_profile("app-store-server", self.key, self.sk, bid=None)
        r = self.call(SK, "GET", "/inApps/v1/history/1", bearer(tok))
        self.assertEqual(r.status, 401)
        self.assertEqual(r.body.strip(), b"Unauthenticated")
        with self.assertRaises(ValueError):
            json.loads(r.body)
        tok = h.mint_profile("app-store-server", self.key, self.sk, lifetime=3700)
        self.assertEqual(self.call(SK, "GET", "/inApps/v1/history/1", bearer(tok)).status, 401)

    def test_enterprise(self):
        tok = h.mint_profile("enterprise", self.key, self.ent)
        self.assertEqual(self.call(ENT, "GET", "/__echo", bearer(tok)).status, 200)
        tok = h.mint_profile("app-store-connect", self.key, self.asc)
        self.assertEqual(self.call(ENT, "GET", "/__echo", bearer(tok)).status, 401)

    def test_music(self):
        tok = h.mint_profile("music", self.key, self.music, origin=["https://example.com"])
        self.assertEqual(self.call(MUSIC, "GET", "/__echo", bearer(tok)).status, 200)
        tok = h.mint_profile("music", self.key, self.music, lifetime=15777001)
        self.assertEqual(self.call(MUSIC, "GET", "/__echo", bearer(tok)).status, 401)

    # -- test paths -----------------------------------------------------------------------------

    def test_bytes(self):
        for q in ("n=1000000", "n=1000000&chunked=1"):
            r = self.call("localhost", "GET", "/__bytes?" + q)
            self.assertEqual(r.status, 200)
            self.assertEqual(len(r.body), 1000000)
            self.assertEqual(r.chunked, "chunked" in q)
            self.assertEqual(r.body[:32], b"0123456789abcdef" * 2)
            self.assertEqual(r.body, (b"0123456789abcdef" * 62500))
        r = self.call("localhost", "HEAD", "/__bytes?n=1000000")
        self.assertEqual((r.status, r.header("Content-Length"), r.body), (200, "1000000", b""))

    def test_echo_keepalive_and_chunked_body(self):
        body = os.urandom(200000)
        with self.up.client("localhost") as c:
            r1 = c.request("POST", "/__echo?a=b", [("Transfer-Encoding", "chunked")],
                           h.chunked_body([body[:100000], body[100000:]], [("X-Trailer", "t")]),
                           host="localhost")
            r2 = c.request("PUT", "/__echo", [("X-Test", "1")], b"hello", host="localhost")
        e1, e2 = r1.json(), r2.json()
        self.assertEqual((e1["method"], e1["path"], e1["query"]), ("POST", "/__echo", "a=b"))
        self.assertEqual(e1["body_len"], len(body))
        self.assertEqual(e1["body_sha256"], hashlib.sha256(body).hexdigest())
        self.assertEqual(e1["trailers"], [["X-Trailer", "t"]])
        self.assertEqual(e2["body"], "hello")
        self.assertIn(["X-Test", "1"], e2["headers"])
        self.assertEqual(e1["conn_id"], e2["conn_id"])
        self.assertEqual((e1["conn_seq"], e2["conn_seq"]), (1, 2))

    def test_status_headers_close_slow(self):
        r = self.call("localhost", "GET", "/__status/503")
        self.assertEqual((r.status, r.json()), (503, {"status": 503}))
        r = self.call("localhost", "GET", "/__status/204")
        self.assertEqual((r.status, r.body, r.header("Content-Length")), (204, b"", None))
        r = self.call("localhost", "GET", "/__headers?X-One=1&Cache-Control=no-store")
        self.assertEqual((r.header("X-One"), r.header("Cache-Control")), ("1", "no-store"))
        with self.up.client("localhost") as c:
            r = c.request("GET", "/__close", host="localhost")
            self.assertEqual(r.header("Connection"), "close")
            self.assertTrue(c.closed_by_peer(2))
        t0 = time.monotonic()
        r = self.call("localhost", "GET", "/__slow?delay=0.3")
        self.assertEqual(r.status, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)

    def test_handshake_logged_with_sni(self):
        m = self.up.mark()
        self.call(WK, "GET", "/__echo")
        ev = self.up.wait_for(lambda e: e["event"] == "handshake", since=m)
        self.assertEqual(ev["sni"], WK)
        self.assertEqual(ev["alpn"], "http/1.1")
        self.assertFalse(ev["resumed"])
        self.assertTrue(self.up.events("accept", m))
        req = self.up.requests(m)[-1]
        self.assertEqual(req["conn_id"], ev["conn_id"])

    def test_strict_request_parsing(self):
        with self.up.client("localhost") as c:
            m = self.up.mark()
            c.send(b"GET /__echo HTTP/1.1\r\nHost: localhost\r\nX-A: 1\nX-B: 2\r\n\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 400)
        ev = self.up.wait_for(lambda e: e["event"] == "bad_request", since=m)
        self.assertIn("bare LF", ev["error"])
        self.assertFalse(self.up.requests(m))


class CertsTest(unittest.TestCase):
    """certs.py sanity: Python's ssl with the test CA accepts only the good certificate."""

    BAD = {"expired": "expired", "not_yet_valid": "not yet valid", "wrong_host": "match",
           "self_signed": "self", "cn_only": "match", "unknown_ca": "unable to get local issuer"}

    @classmethod
    def setUpClass(cls):
        cls.standins = {k: h.start_standin(k) for k in ["good", "no_ip"] + list(cls.BAD)}

    def connect(self, kind, name=None, ip=None):
        up = self.standins[kind]
        ctx = ssl.create_default_context(cafile=h.get_certs()["ca_cert"])
        with socket.create_connection(("127.0.0.1", up.port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname=name or ip) as t:
                return t.version()

    def test_good(self):
        for name in ["api.appstoreconnect.apple.com", "weatherkit.apple.com",
                     "api.storekit.itunes.apple.com", "api.storekit-sandbox.itunes.apple.com",
                     "api.enterprise.developer.apple.com", "api.music.apple.com", "localhost"]:
            self.assertTrue(self.connect("good", name))
        self.assertTrue(self.connect("good", ip="127.0.0.1"))

    def test_bad(self):
        for kind, why in self.BAD.items():
            with self.subTest(kind=kind):
                up = self.standins[kind]
                m = up.mark()
                with self.assertRaises(ssl.SSLCertVerificationError) as cm:
                    self.connect(kind, "api.appstoreconnect.apple.com")
                self.assertIn(why, str(cm.exception))
                up.wait_for(lambda e: e["event"] == "tls_error", since=m)
                self.assertFalse(up.requests())

    def test_ip_not_in_san(self):
        self.assertTrue(self.connect("no_ip", "api.appstoreconnect.apple.com"))
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.connect("no_ip", ip="127.0.0.1")

    def test_no_private_key_material_in_repo(self):
        # Keys and certificates are made at test time in a temporary directory.
        self.assertTrue(h.get_certs()["ca_key"].startswith(h.workdir()))


if __name__ == "__main__":
    unittest.main()
