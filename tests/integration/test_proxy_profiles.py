"""Each Apple token profile end to end through the proxy (client -> proxy -> TLS stand-in).

The stand-in verifies every token as Apple would for the Host it receives (PyJWT, the public
key, the profile's claims), so a 200 here with token_ok in its log means the proxy chose the
right credential for the route and minted a token Apple would take. Also: WeatherKit vs App
Store Connect routing by path (the classic bug is the App Store Connect token sent to
WeatherKit, which answers {"reason": "MISSING_AUTH"}).
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

PROFILES = ("app-store-connect", "weatherkit", "app-store-server", "enterprise", "music")
# A request each Apple host answers 200 to with a valid token.
PROBE = {"app-store-connect": "/v1/apps",
         "weatherkit": "/api/v1/weather/en/51.5/-0.12?dataSets=currentWeather",
         "app-store-server": "/inApps/v1/history/2000000123456789",
         "enterprise": "/__echo",
         "music": "/__echo"}


class ProfilesByHostTest(unittest.TestCase):
    """One credential per profile, each route selected by the request's Host."""
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(profiles=PROFILES)
        cls.up = cls.st.standin

    def call(self, profile, target=None, host=None):
        m = self.up.mark()
        host = host or pt.HOST_OF[profile]
        with self.st.client() as c:
            r = c.request("GET", target or PROBE[profile], host=host)
        ev = self.up.wait_for(lambda e: True, since=m, kind="request")
        return r, ev

    def check(self, profile, r, ev):
        self.assertEqual(r.status, 200, "%s: %s" % (profile, r.body[:300]))
        self.assertEqual(ev["host"], pt.HOST_OF[profile])
        self.assertEqual(ev["profile"], profile)
        self.assertTrue(ev["token_ok"], "%s: %s" % (profile, ev["token_error"]))
        auth = pt.auth_headers(ev)
        self.assertEqual(len(auth), 1, "exactly one Authorization header: %r" % auth)
        self.assertTrue(auth[0].startswith("Bearer "))
        token = auth[0][len("Bearer "):]
        key = self.st.keys[profile]
        header, claims = h.decode_token(token, key)  # signature checked with the public key
        self.assertEqual(len(h.b64url_decode(token.split(".")[2])), 64, "raw R||S signature")
        self.assertEqual(header["kid"], key.kid)
        self.assertEqual(header["alg"], "ES256")
        return header, claims

    def test_app_store_connect(self):
        r, ev = self.call("app-store-connect")
        header, claims = self.check("app-store-connect", r, ev)
        self.assertEqual(r.json()["data"][0]["type"], "apps")
        cred = self.st.creds["app-store-connect"]
        self.assertEqual(header["typ"], "JWT")
        self.assertEqual(claims["iss"], cred["issuer_id"])
        self.assertEqual(claims["aud"], "appstoreconnect-v1")
        self.assertLessEqual(claims["exp"] - claims["iat"], 1200)
        self.assertRegex(r.header("X-Rate-Limit", ""), r"user-hour-rem:\d+")

    def test_weatherkit(self):
        r, ev = self.call("weatherkit")
        header, claims = self.check("weatherkit", r, ev)
        self.assertEqual(r.json()["currentWeather"]["name"], "CurrentWeather")
        cred = self.st.creds["weatherkit"]
        self.assertEqual(header["id"], "%s.%s" % (cred["team_id"], cred["service_id"]))
        self.assertEqual(set(claims), {"iss", "iat", "exp", "sub"})
        self.assertEqual(claims["sub"], cred["service_id"])

    def test_app_store_server(self):
        r, ev = self.call("app-store-server")
        header, claims = self.check("app-store-server", r, ev)
        cred = self.st.creds["app-store-server"]
        self.assertEqual(claims["bid"], cred["bundle_id"])
        self.assertEqual(r.json()["bundleId"], cred["bundle_id"])
        self.assertEqual(claims["aud"], "appstoreconnect-v1")

    def test_enterprise(self):
        r, ev = self.call("enterprise")
        header, claims = self.check("enterprise", r, ev)
        self.assertEqual(claims["aud"], "apple-developer-enterprise-v1")
        self.assertEqual(r.json()["host"], pt.ENT)

    def test_music(self):
        r, ev = self.call("music")
        header, claims = self.check("music", r, ev)
        self.assertEqual(claims["iss"], self.st.creds["music"]["team_id"])
        self.assertEqual(r.json()["host"], pt.MUSIC)

    def test_host_with_port_and_case(self):
        # The Host is matched without its port and case-insensitively.
        r, ev = self.call("weatherkit", host="WeatherKit.Apple.COM:8080")
        self.check("weatherkit", r, ev)

    def test_default_route_for_other_hosts(self):
        # Host 127.0.0.1:PORT matches no host route: the default route (the first profile).
        r, ev = self.call("app-store-connect", host="127.0.0.1:%d" % self.st.port)
        self.check("app-store-connect", r, ev)

    def test_same_token_per_profile_distinct_between_profiles(self):
        seen = {}
        for p in PROFILES:
            toks = set()
            for _ in range(3):
                r, ev = self.call(p)
                self.assertEqual(r.status, 200)
                toks.add(pt.auth_headers(ev)[0])
            self.assertEqual(len(toks), 1, "%s: one cached token for all requests" % p)
            seen[p] = toks.pop()
        self.assertEqual(len(set(seen.values())), len(PROFILES))


class WeatherKitVsAscRoutingTest(unittest.TestCase):
    """Path-based routes as in the example configuration: /api/v1/ -> WeatherKit with the
    WeatherKit credential, /inApps/ -> App Store Server API, / -> App Store Connect. The Host
    the client sends is the proxy's own (127.0.0.1:PORT)."""

    @classmethod
    def setUpClass(cls):
        cls.keys = {p: h.make_key() for p in ("app-store-connect", "weatherkit",
                                              "app-store-server")}
        cls.creds = {"asc": h.credential("app-store-connect", cls.keys["app-store-connect"]),
                     "weather": h.credential("weatherkit", cls.keys["weatherkit"]),
                     "storekit": h.credential("app-store-server", cls.keys["app-store-server"]),
                     "asc-individual": h.credential("app-store-connect",
                                                    cls.keys["app-store-connect"],
                                                    issuer_id=None)}
        cls.up = h.start_standin()
        routes = [h.route(cls.up, "weatherkit", "weather", path_prefix="/api/v1/"),
                  h.route(cls.up, "app-store-server", "storekit", path_prefix="/inApps/"),
                  # A mistake the proxy warns about but serves: the ASC token to WeatherKit.
                  h.route(cls.up, "weatherkit", "asc", path_prefix="/wrong-token/",
                          strip_prefix="/wrong-token"),
                  h.route(cls.up, "app-store-connect", "asc-individual",
                          path_prefix="/individual/", strip_prefix="/individual"),
                  h.route(cls.up, "app-store-connect", "asc", path_prefix="/")]
        cls.config = h.write_config(cls.creds, routes)
        cls.px = h.start_proxy(cls.config)

    def call(self, target):
        m = self.up.mark()
        with self.px.client() as c:
            r = c.request("GET", target)
        ev = self.up.wait_for(lambda e: True, since=m, kind="request")
        return r, ev

    def test_weatherkit_path_gets_weatherkit_token(self):
        r, ev = self.call("/api/v1/availability/51.5/-0.12?country=GB")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json(), ["currentWeather", "forecastDaily"])
        self.assertEqual(ev["host"], pt.WK)
        self.assertTrue(ev["token_ok"], ev["token_error"])
        self.assertEqual(ev["token_header"]["kid"], self.keys["weatherkit"].kid)
        self.assertEqual(ev["token_claims"]["sub"], self.creds["weather"]["service_id"])
        self.assertEqual(ev["target"], "/api/v1/availability/51.5/-0.12?country=GB")

    def test_asc_path_gets_asc_token(self):
        r, ev = self.call("/v1/apps?limit=1")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(ev["host"], pt.ASC)
        self.assertTrue(ev["token_ok"], ev["token_error"])
        self.assertEqual(ev["token_claims"]["iss"], self.creds["asc"]["issuer_id"])
        self.assertEqual(ev["token_claims"]["aud"], "appstoreconnect-v1")

    def test_storekit_path(self):
        r, ev = self.call("/inApps/v1/history/1")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(ev["host"], pt.SK)
        self.assertTrue(ev["token_ok"], ev["token_error"])
        self.assertEqual(ev["token_claims"]["bid"], "com.example.demo")

    def test_individual_key(self):
        r, ev = self.call("/individual/v1/apps")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(ev["path"], "/v1/apps")
        self.assertTrue(ev["token_ok"], ev["token_error"])
        self.assertEqual(ev["token_claims"]["sub"], "user")
        self.assertNotIn("iss", ev["token_claims"])

    def test_asc_token_to_weatherkit_is_missing_auth(self):
        # What the proxy exists to prevent, made on purpose: WeatherKit refuses the App Store
        # Connect token, and its answer reaches the client unchanged.
        self.assertRegex(self.px.stderr_text(),
                         r"warning: routes\[2\]\.upstream: weatherkit\.apple\.com expects "
                         r"weatherkit tokens, but credential \"asc\" is app-store-connect")
        r, ev = self.call("/wrong-token/api/v1/availability/1/2")
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json(), {"reason": "MISSING_AUTH"})
        self.assertEqual(ev["host"], pt.WK)
        self.assertFalse(ev["token_ok"])


if __name__ == "__main__":
    unittest.main()
