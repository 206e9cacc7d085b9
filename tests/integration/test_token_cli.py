"""Independent check of `apple-auth-proxy token` and `check` (README.md "Command line").

Every token the binary prints is decoded and its ES256 signature verified with PyJWT and the
public key, then its header and claims are compared with Apple's profiles (docs/tokens.md), and it is
also presented to the stand-in for Apple, which must accept it.
"""
import base64
import json
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
SKEW_SLACK = 5
HOSTS = {p: u.split("://", 1)[1] for p, u in h.UPSTREAMS.items()}
# A request on each Apple host that the stand-in answers 200 to with a valid token.
PROBE = {"app-store-connect": "/v1/apps", "enterprise": "/__echo",
         "app-store-server": "/inApps/v1/history/1", "weatherkit": "/api/v1/availability/1/2",
         "music": "/__echo"}


def routes_for(creds):
    """One plausible route per credential (the token command does not use them)."""
    out = []
    for i, (name, c) in enumerate(creds.items()):
        out.append({"path_prefix": "/r%d/" % i, "upstream": h.UPSTREAMS[c["profile"]],
                    "credential": name})
    return out


def config(creds, **extra):
    return h.write_config(creds, routes_for(creds), **extra)


class TokenCliTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(h.BINARY):
            raise AssertionError("AAP_BINARY %s does not exist: build apple-auth-proxy first"
                                 % h.BINARY)
        cls.key = h.make_key()
        cls.up = h.start_standin("good")

    # -- helpers ----------------------------------------------------------------------------------

    def run_token(self, args, env=None, expect_rc=0):
        before = int(time.time())
        rc, out, err = h.run_cli(["token"] + list(args), env=env)
        after = int(time.time()) + 1
        self.assertEqual(rc, expect_rc, "token %s: rc %d, stdout %r, stderr %r" % (args, rc, out, err))
        return out, err, before, after

    def get_token(self, args, env=None):
        out, err, before, after = self.run_token(args, env)
        self.assertEqual(out.count("\n"), 1 if out.endswith("\n") else 0,
                         "the token must be alone on one line: %r" % out)
        tok = out.strip()
        self.assertRegex(tok, JWT_RE)
        return tok, before, after

    def verify(self, tok, key, profile, before, after, exact_header, exact_claims,
               lifetime=None):
        """Checks signature, header, claim names/values, times; returns (header, claims)."""
        sig = h.b64url_decode(tok.split(".")[2])
        self.assertEqual(len(sig), 64, "ES256 signature must be raw R||S (64 bytes), got %d" % len(sig))
        header, claims = h.decode_token(tok, key)  # raises on a bad signature
        self.assertEqual(header, exact_header)
        self.assertEqual(set(claims), set(exact_claims) | {"iat", "exp"})
        for k, v in exact_claims.items():
            self.assertEqual(claims[k], v, "claim %s" % k)
        iat, exp = claims["iat"], claims["exp"]
        for c in (iat, exp):
            self.assertIsInstance(c, int)
            self.assertNotIsInstance(c, bool)
        self.assertGreaterEqual(iat, before - 60 - SKEW_SLACK, "iat too far in the past")
        self.assertLessEqual(iat, after, "iat in the future")
        self.assertGreater(exp, after, "token already expired")
        self.assertLessEqual(exp - iat, h.MAX_LIFETIME[profile])
        if lifetime is not None:
            self.assertEqual(exp - iat, lifetime)
        elif profile == "app-store-connect":
            self.assertLessEqual(exp, after + 18 * 60 + SKEW_SLACK,
                                 "App Store Connect tokens stay at most 18 minutes ahead")
        return header, claims

    def accepted_by_standin(self, tok, profile):
        host = HOSTS[profile]
        m = self.up.mark()
        with self.up.client(host) as c:
            r = c.request("GET", PROBE[profile], [("Authorization", "Bearer " + tok)], host=host)
        ev = self.up.requests(m)[-1]
        self.assertTrue(ev["token_ok"], "stand-in rejected the %s token: %s" % (profile, ev["token_error"]))
        self.assertEqual(r.status, 200, r.body)

    def expected(self, profile, cred):
        """(exact header, exact claims without iat/exp) for a credential dict."""
        kid = cred["key_id"]
        if profile == "app-store-connect":
            claims = {"aud": "appstoreconnect-v1"}
            if "issuer_id" in cred:
                claims["iss"] = cred["issuer_id"]
            else:
                claims["sub"] = "user"
            if cred.get("scope"):
                claims["scope"] = cred["scope"]
            return {"alg": "ES256", "kid": kid, "typ": "JWT"}, claims
        if profile == "app-store-server":
            return ({"alg": "ES256", "kid": kid, "typ": "JWT"},
                    {"iss": cred["issuer_id"], "aud": "appstoreconnect-v1", "bid": cred["bundle_id"]})
        if profile == "weatherkit":
            return ({"alg": "ES256", "kid": kid, "id": "%s.%s" % (cred["team_id"], cred["service_id"])},
                    {"iss": cred["team_id"], "sub": cred["service_id"]})
        if profile == "enterprise":
            return ({"alg": "ES256", "kid": kid, "typ": "JWT"},
                    {"iss": cred["issuer_id"], "aud": "apple-developer-enterprise-v1"})
        if profile == "music":
            claims = {"iss": cred["team_id"]}
            if "origin" in cred:
                claims["origin"] = cred["origin"]
            return {"alg": "ES256", "kid": kid}, claims
        raise ValueError(profile)

    def check_profile(self, profile, cred, extra_args=(), env=None, lifetime=None):
        path = config({"only": cred})
        tok, before, after = self.get_token(["-c", path] + list(extra_args), env)
        hdr, claims = self.expected(profile, cred)
        self.verify(tok, self.key, profile, before, after, hdr, claims, lifetime)
        self.accepted_by_standin(tok, profile)
        # --decode: the same header and claims as JSON.
        out, err, before, after = self.run_token(["-c", path, "--decode"] + list(extra_args), env)
        doc = json.loads(out)
        self.assertEqual(set(doc), {"header", "claims", "times"})
        self.assertEqual(doc["header"], hdr)
        self.assertEqual(set(doc["claims"]), set(claims) | {"iat", "exp"})
        for k, v in claims.items():
            self.assertEqual(doc["claims"][k], v)
        self.assertLessEqual(doc["claims"]["exp"] - doc["claims"]["iat"], h.MAX_LIFETIME[profile])
        return tok

    # -- every profile --------------------------------------------------------------------------

    def test_app_store_connect_team_key(self):
        self.check_profile("app-store-connect", h.credential("app-store-connect", self.key))

    def test_app_store_connect_individual_key(self):
        self.check_profile("app-store-connect",
                           h.credential("app-store-connect", self.key, issuer_id=None))

    def test_app_store_server(self):
        self.check_profile("app-store-server", h.credential("app-store-server", self.key,
                                                           bundle_id="com.example.shop"))

    def test_weatherkit(self):
        self.check_profile("weatherkit", h.credential("weatherkit", self.key))

    def test_enterprise(self):
        self.check_profile("enterprise", h.credential("enterprise", self.key))

    def test_music_with_origin(self):
        self.check_profile("music", h.credential("music", self.key,
                                                 origin=["https://example.com", "https://b.example"]))

    def test_music_without_origin(self):
        self.check_profile("music", h.credential("music", self.key))

    # -- options --------------------------------------------------------------------------------

    def test_scope_option(self):
        cred = h.credential("app-store-connect", self.key)
        scope = ["GET /v1/apps", "GET /v1/apps?filter[platform]=IOS"]
        args = []
        for s in scope:
            args += ["--scope", s]
        self.check_profile("app-store-connect", dict(cred, scope=scope), extra_args=args)

    def test_scope_from_config(self):
        cred = h.credential("app-store-connect", self.key, scope=["GET /v1/apps"])
        self.check_profile("app-store-connect", cred)

    def test_scope_rejected_outside_app_store_connect(self):
        path = config({"w": h.credential("weatherkit", self.key)})
        out, err, _, _ = self.run_token(["-c", path, "--scope", "GET /v1/apps"], expect_rc=2)
        self.assertEqual(out, "")
        self.assertTrue(err.strip())

    def test_lifetime_option(self):
        for profile, life in (("app-store-connect", 600), ("app-store-connect", 1200),
                              ("weatherkit", 3600), ("app-store-server", 1800),
                              ("enterprise", 1200)):
            with self.subTest(profile=profile, lifetime=life):
                self.check_profile(profile, h.credential(profile, self.key),
                                   extra_args=["--lifetime", str(life)], lifetime=life)

    def test_lifetime_above_maximum(self):
        for profile, life in (("app-store-connect", 1201), ("enterprise", 1201),
                              ("app-store-server", 3601), ("weatherkit", 3601),
                              ("music", 15777001)):
            with self.subTest(profile=profile):
                path = config({"c": h.credential(profile, self.key)})
                out, err, _, _ = self.run_token(["-c", path, "--lifetime", str(life)], expect_rc=2)
                self.assertEqual(out, "")
                self.assertTrue(err.strip(), "exit 2 needs a message on stderr")

    def test_bad_lifetime_values(self):
        path = config({"c": h.credential("app-store-connect", self.key)})
        for v in ("0", "-5", "abc", "12x"):
            with self.subTest(value=v):
                out, err, _, _ = self.run_token(["-c", path, "--lifetime", v], expect_rc=2)
                self.assertEqual(out, "")

    def test_token_lifetime_in_config(self):
        cred = h.credential("app-store-connect", self.key, token_lifetime=300)
        self.check_profile("app-store-connect", cred, lifetime=300)
        path = config({"c": h.credential("app-store-connect", self.key, token_lifetime=1201)})
        self.run_token(["-c", path], expect_rc=2)

    # -- key sources ----------------------------------------------------------------------------

    def test_private_key_inline_pem(self):
        cred = h.credential("app-store-connect", self.key, key_source="private_key")
        self.check_profile("app-store-connect", cred)

    def test_private_key_env_base64(self):
        cred = h.credential("app-store-connect", self.key, key_source=("private_key_env", "AAP_TEST_KEY"))
        env = {"AAP_TEST_KEY": base64.b64encode(self.key.private_pem).decode()}
        self.check_profile("app-store-connect", cred, env=env)

    def test_private_key_env_pem(self):
        cred = h.credential("weatherkit", self.key, key_source=("private_key_env", "AAP_TEST_KEY"))
        self.check_profile("weatherkit", cred, env={"AAP_TEST_KEY": self.key.private_pem.decode()})

    def test_private_key_env_unset(self):
        cred = h.credential("app-store-connect", self.key, key_source=("private_key_env", "AAP_UNSET_KEY"))
        out, err, _, _ = self.run_token(["-c", config({"c": cred})], expect_rc=2)
        self.assertIn("AAP_UNSET_KEY", err)

    def test_missing_key_file(self):
        missing = h.tmp_path("no-such-dir/AuthKey_NOPE.p8")
        cred = h.credential("app-store-connect", self.key, private_key_file=missing)
        out, err, _, _ = self.run_token(["-c", config({"c": cred})], expect_rc=2)
        self.assertEqual(out, "")
        self.assertIn(missing, err)

    def test_key_not_p256(self):
        other = ec.generate_private_key(ec.SECP384R1())
        path = h.tmp_path("p384.p8")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
            f.write(pem)
        cred = h.credential("app-store-connect", self.key, private_key_file=path)
        out, err, _, _ = self.run_token(["-c", config({"c": cred})], expect_rc=2)
        self.assertEqual(out, "")
        body = b"".join(pem.splitlines()[1:-1]).decode()
        self.assertNotIn(body[:40], err, "key material must never be printed")

    # -- choosing the credential ----------------------------------------------------------------

    def test_several_credentials(self):
        wk = h.credential("weatherkit", self.key)
        asc = h.credential("app-store-connect", self.key)
        path = config({"asc": asc, "weather": wk})
        out, err, _, _ = self.run_token(["-c", path], expect_rc=2)
        self.assertEqual(out, "")
        self.assertTrue(err.strip())
        tok, before, after = self.get_token(["-c", path, "--credential", "weather"])
        self.verify(tok, self.key, "weatherkit", before, after, *self.expected("weatherkit", wk))
        tok, before, after = self.get_token(["-c", path, "--credential", "asc"])
        self.verify(tok, self.key, "app-store-connect", before, after,
                    *self.expected("app-store-connect", asc))
        out, err, _, _ = self.run_token(["-c", path, "--credential", "nope"], expect_rc=2)
        self.assertIn("nope", err)

    def test_config_from_environment_variable(self):
        cred = h.credential("enterprise", self.key)
        path = config({"e": cred})
        tok, before, after = self.get_token([], env={"APPLE_AUTH_PROXY_CONFIG": path})
        self.verify(tok, self.key, "enterprise", before, after, *self.expected("enterprise", cred))

    # -- environment-only mode ------------------------------------------------------------------

    def test_environment_only_app_store_connect(self):
        issuer = "69a6de95-023f-47e3-e053-5b8c7c11a4d1"
        env = {"APP_STORE_CONNECT_API_KEY_KEY_ID": self.key.kid,
               "APP_STORE_CONNECT_API_KEY_ISSUER_ID": issuer,
               "APP_STORE_CONNECT_API_KEY_KEY_FILEPATH": self.key.private_path}
        tok, before, after = self.get_token([], env=env)
        self.verify(tok, self.key, "app-store-connect", before, after,
                    {"alg": "ES256", "kid": self.key.kid, "typ": "JWT"},
                    {"iss": issuer, "aud": "appstoreconnect-v1"})
        self.accepted_by_standin(tok, "app-store-connect")

    def test_environment_only_individual_key_content_base64(self):
        env = {"APP_STORE_CONNECT_API_KEY_KEY_ID": self.key.kid,
               "APP_STORE_CONNECT_API_KEY_KEY": base64.b64encode(self.key.private_pem).decode(),
               "APP_STORE_CONNECT_API_KEY_IS_KEY_CONTENT_BASE64": "true"}
        tok, before, after = self.get_token([], env=env)
        self.verify(tok, self.key, "app-store-connect", before, after,
                    {"alg": "ES256", "kid": self.key.kid, "typ": "JWT"},
                    {"sub": "user", "aud": "appstoreconnect-v1"})

    def test_environment_only_weatherkit(self):
        env = {"WEATHERKIT_KEY_ID": self.key.kid, "WEATHERKIT_TEAM_ID": "DEF123GHIJ",
               "WEATHERKIT_SERVICE_ID": "com.example.weatherkit-client",
               "WEATHERKIT_KEY_FILEPATH": self.key.private_path}
        tok, before, after = self.get_token([], env=env)
        self.verify(tok, self.key, "weatherkit", before, after,
                    {"alg": "ES256", "kid": self.key.kid, "id": "DEF123GHIJ.com.example.weatherkit-client"},
                    {"iss": "DEF123GHIJ", "sub": "com.example.weatherkit-client"})
        self.accepted_by_standin(tok, "weatherkit")

    def test_empty_environment(self):
        out, err, _, _ = self.run_token([], env={}, expect_rc=2)
        self.assertEqual(out, "")
        self.assertIn("APP_STORE_CONNECT_API_KEY_KEY_ID", err)

    # -- usage ----------------------------------------------------------------------------------

    def test_usage_errors(self):
        path = config({"c": h.credential("app-store-connect", self.key)})
        for args in (["-c", path, "--no-such-option"], ["-c"], ["-c", h.tmp_path("missing.json")]):
            with self.subTest(args=args):
                out, err, _, _ = self.run_token(args, expect_rc=2)
                self.assertEqual(out, "")
                self.assertTrue(err.strip())

    def test_help_and_version(self):
        for args in (["--help"], ["--version"]):
            rc, out, err = h.run_cli(args)
            self.assertEqual(rc, 0, (args, out, err))
            self.assertTrue((out + err).strip())


class CheckCliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(h.BINARY):
            raise AssertionError("AAP_BINARY %s does not exist: build apple-auth-proxy first"
                                 % h.BINARY)
        cls.key = h.make_key()

    def test_check_ok(self):
        creds = {"asc": h.credential("app-store-connect", self.key),
                 "weather": h.credential("weatherkit", self.key),
                 "store": h.credential("app-store-server", self.key),
                 "tunes": h.credential("music", self.key)}
        rc, out, err = h.run_cli(["check", "-c", config(creds)])
        self.assertEqual(rc, 0, (out, err))
        lines = out.splitlines()
        for name, c in creds.items():
            self.assertTrue(any(name in l and c["profile"] in l for l in lines),
                            "no line names %s and %s in:\n%s" % (name, c["profile"], out))
        self.assertNotIn(self.key.private_pem.decode().splitlines()[1][:40], out + err)

    def test_check_lists_every_error(self):
        bad = h.credential("app-store-connect", self.key, key_id="SHORT", colour="blue")
        rc, out, err = h.run_cli(["check", "-c", config({"asc": bad})])
        self.assertEqual(rc, 2, (out, err))
        text = out + err
        self.assertIn("colour", text, "the unknown key must be reported")
        self.assertIn("key_id", text, "the bad key_id must be reported")

    def test_check_unknown_top_level_key(self):
        path = h.write_config({"asc": h.credential("app-store-connect", self.key)},
                              routes_for({"asc": {"profile": "app-store-connect"}}),
                              lisen=["127.0.0.1:1"])
        rc, out, err = h.run_cli(["check", "-c", path])
        self.assertEqual(rc, 2, (out, err))
        self.assertIn("lisen", out + err)


if __name__ == "__main__":
    unittest.main()
