"""Token exchange: the maps and apple-business credentials end to end (client -> proxy -> the
stand-in's token endpoints and APIs, tests/upstream/standin_exchange.py).

The stand-in verifies the Maps auth token and the Apple Business Manager client assertion with
PyJWT (aud, iss = sub = client_id, a jti never seen before, exp - iat <= 180 days) and the form
fields, and serves its API paths only for an access token it issued itself. So a 200 here means
the proxy exchanged correctly and put the access token, not the signed token, on the request.
"""
import concurrent.futures
import json
import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

MAPS = "maps-api.apple.com"
BIZ = "api-business.apple.com"


def control(up, query):
    """Sets how the stand-in's token endpoints answer (standin_exchange.py)."""
    with up.client("localhost") as c:
        r = c.request("GET", "/__control/exchange" + query, host="localhost")
    assert r.status == 200, r.body
    return r.json()


def token_requests(up, since=0, host=None):
    """The stand-in's exchanges seen so far (both token endpoints unless host says)."""
    return [e for e in up.requests(since)
            if e["path"] in ("/v1/token", "/auth/oauth2/token") and (host is None or
                                                                    e["host"] == host)]


def api_requests(up, host, since=0):
    return [e for e in up.requests(since) if e["host"] == host and e["path"] != "/v1/token"]


class ExchangeSetup:
    """A stand-in, one maps and one apple-business credential whose token endpoints are the
    stand-in, and a proxy: /v1/ on Host maps-api.apple.com goes to Maps, everything else to
    Apple Business Manager."""

    def __init__(self, workers=1, standin_mode=None, token_ca_file=None, token_address=None,
                 limits=None, **extra):
        self.up = h.start_standin()
        if standin_mode:
            control(self.up, standin_mode)
        ca = h.get_certs()["ca_cert"]
        self.keys = {"maps": h.make_key(), "biz": h.make_key()}
        self.creds = {
            "maps": h.credential("maps", self.keys["maps"],
                                 token_address=token_address or self.up.address,
                                 token_ca_file=token_ca_file or ca),
            "biz": h.credential("apple-business", self.keys["biz"],
                                token_address=token_address or self.up.address,
                                token_ca_file=token_ca_file or ca)}
        routes = [h.route(self.up, "maps", "maps", path_prefix="/v1/", host=MAPS),
                  h.route(self.up, "apple-business", "biz", path_prefix="/")]
        cfg = {"limits": limits} if limits else {}
        cfg.update(extra)
        self.config = h.write_config(self.creds, routes, workers=workers,
                                     admin_listen="127.0.0.1:0", **cfg)
        self.px = h.start_proxy(self.config)

    def get(self, path, host=None, headers=None, body=None, method="GET", timeout=20):
        with self.px.client(timeout=timeout) as c:
            return c.request(method, path, headers=headers, body=body, host=host)

    def maps(self, path="/v1/geocode?q=Cupertino", timeout=20):
        return self.get(path, host=MAPS, timeout=timeout)

    def metrics(self):
        return pt.admin_get(self.px, "/metrics").body.decode()

    def stop(self):
        self.px.stop()
        self.up.stop()


def exchanges_metric(text, cred, result):
    for line in text.splitlines():
        if line.startswith('apple_auth_proxy_token_exchanges_total{credential="%s",result="%s"}'
                           % (cred, result)):
            return float(line.rsplit(" ", 1)[1])
    return None


class ExchangeEndToEndTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = ExchangeSetup(workers=2)

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def test_maps_geocode_search_directions(self):
        up = self.s.up
        for path in ("/v1/geocode?q=1%20Apple%20Park%20Way", "/v1/search?q=coffee",
                     "/v1/directions?origin=Cupertino&destination=San%20Francisco"):
            m = up.mark()
            r = self.s.maps(path)
            self.assertEqual(r.status, 200, r.body)
            ev = up.wait_for(lambda e: e["host"] == MAPS and e["path"] != "/v1/token", since=m,
                             kind="request")
            self.assertTrue(ev["token_ok"], ev["token_error"])
            auth = pt.auth_headers(ev)
            self.assertEqual(len(auth), 1)
            # The access token, never the signed token: that one goes to /v1/token only.
            self.assertFalse(auth[0][len("Bearer "):].startswith("eyJ"), auth)
        self.assertEqual(len(token_requests(up, host=MAPS)), 1, "one exchange, then reuse")

    def test_maps_token_request_is_what_apple_documents(self):
        self.s.maps()
        ev = token_requests(self.s.up, host=MAPS)[0]
        self.assertEqual(ev["method"], "GET")
        self.assertTrue(ev["token_ok"], ev["token_error"])
        self.assertEqual(ev["token_header"]["alg"], "ES256")
        self.assertEqual(ev["token_header"]["typ"], "JWT")
        self.assertEqual(ev["token_header"]["kid"], self.s.keys["maps"].kid)
        self.assertEqual(ev["token_claims"]["iss"], self.s.creds["maps"]["team_id"])
        self.assertEqual(set(ev["token_claims"]), {"iss", "iat", "exp"})

    def test_business_list_devices_and_assign(self):
        up = self.s.up
        r = self.s.get("/v1/orgDevices")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["data"][0]["type"], "orgDevices")
        body = json.dumps({"data": {"type": "orgDeviceActivities", "attributes": {
            "activityType": "ASSIGN_DEVICES"}, "relationships": {
            "mdmServer": {"data": {"type": "mdmServers", "id": "1F97349736CF4614A94F624E705841AD"}},
            "devices": {"data": [{"type": "orgDevices", "id": "XABC123X0ABC123X0"}]}}}})
        r = self.s.get("/v1/orgDeviceActivities", method="POST", body=body,
                       headers=[("Content-Type", "application/json")])
        self.assertEqual(r.status, 201, r.body)
        self.assertEqual(r.json()["data"]["attributes"]["status"], "IN_PROGRESS")
        toks = token_requests(up, host="account.apple.com")
        self.assertEqual(len(toks), 1)
        self.assertEqual(toks[0]["method"], "POST")
        ctype = [v for k, v in toks[0]["headers"] if k.lower() == "content-type"]
        self.assertEqual(ctype, ["application/x-www-form-urlencoded"])
        # No Authorization on the token request: the assertion is in the form.
        self.assertEqual(pt.auth_headers(toks[0]), [])

    def test_readyz_and_metrics(self):
        self.s.maps()
        self.s.get("/v1/orgDevices")
        pt.wait_until(lambda: pt.admin_get(self.s.px, "/readyz").status == 200, 10)
        text = self.s.metrics()
        self.assertEqual(exchanges_metric(text, "maps", "ok"), 1)
        self.assertEqual(exchanges_metric(text, "biz", "ok"), 1)
        self.assertIn('apple_auth_proxy_token_exchange_failing{credential="maps"} 0', text)


class ConcurrentFirstRequestsTest(unittest.TestCase):
    """Requests arriving while the first exchange is in flight wait for it: one exchange."""

    def test_one_exchange_for_many_waiting_requests(self):
        # The token endpoints answer after 1.5 s: every request below arrives meanwhile.
        s = ExchangeSetup(workers=2, standin_mode="?mode=slow&delay=1.5&times=1&only=maps")
        self.addCleanup(s.stop)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            rs = list(pool.map(lambda i: s.maps("/v1/search?q=%d" % i), range(16)))
        self.assertEqual([r.status for r in rs], [200] * 16, [r.body for r in rs if r.status != 200])
        self.assertEqual(len(token_requests(s.up, host=MAPS)), 1)
        self.assertEqual(len(api_requests(s.up, MAPS)), 16)


class RefreshAheadTest(unittest.TestCase):
    def test_refreshed_before_expiry_without_a_request(self):
        # 12-second tokens: refreshed at two thirds of their life (token_refresh_margin is
        # at most a third of it), in the background.
        s = ExchangeSetup(standin_mode="?expires=12")
        self.addCleanup(s.stop)
        r = s.maps()
        self.assertEqual(r.status, 200, r.body)
        first = token_requests(s.up, host=MAPS)
        self.assertEqual(len(first), 1)
        t0 = time.monotonic()
        pt.wait_until(lambda: len(token_requests(s.up, host=MAPS)) >= 2, 20, 0.1,
                      "a second exchange ahead of expiry")
        self.assertLess(time.monotonic() - t0, 12, "refreshed before the token expired")
        m = s.up.mark()
        r = s.maps()
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(len(token_requests(s.up, m, host=MAPS)), 0, "the request did not wait")
        api = api_requests(s.up, MAPS, m)
        self.assertTrue(api[0]["token_ok"], api[0]["token_error"])


class ReexchangeOn401Test(unittest.TestCase):
    def test_401_causes_one_new_exchange_and_one_retry(self):
        s = ExchangeSetup()
        self.addCleanup(s.stop)
        self.assertEqual(s.maps().status, 200)
        self.assertEqual(s.get("/v1/mdmServers").status, 200)
        control(s.up, "/forget")  # Apple no longer takes the cached access tokens
        m = s.up.mark()
        r = s.maps()
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(len(token_requests(s.up, m, host=MAPS)), 1)
        api = api_requests(s.up, MAPS, m)
        self.assertEqual([e["token_ok"] for e in api], [False, True])
        r = s.get("/v1/mdmServers")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(len(token_requests(s.up, m, host="account.apple.com")), 1)
        # Refused again at once: the 401 reaches the client, no exchange storm.
        control(s.up, "/forget")
        m = s.up.mark()
        r = s.maps()
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json(), {"error": {"message": "Not Authorized", "details": []}})
        self.assertEqual(len(token_requests(s.up, m, host=MAPS)), 0)


class ReloadTest(unittest.TestCase):
    def test_reload_keeps_access_tokens_of_unchanged_credentials(self):
        s = ExchangeSetup()
        self.addCleanup(s.stop)
        self.assertEqual(s.maps().status, 200)
        self.assertEqual(s.get("/v1/orgDevices").status, 200)
        with open(s.config) as f:
            cfg = json.load(f)
        # The business credential changes (another key): its token is not carried over.
        newkey = h.make_key()
        cfg["credentials"]["biz"]["key_id"] = newkey.kid
        cfg["credentials"]["biz"]["private_key_file"] = newkey.private_path
        with open(s.config, "w") as f:
            json.dump(cfg, f)
        m = s.up.mark()
        s.px.proc.send_signal(signal.SIGHUP)
        pt.wait_until(lambda: "reloaded" in s.px.stderr_text(), 10, 0.05, "the reload")
        pt.wait_until(lambda: len(token_requests(s.up, m, host="account.apple.com")) == 1, 10,
                      0.05, "a new exchange for the changed credential")
        r = s.maps()
        self.assertEqual(r.status, 200, r.body)
        r = s.get("/v1/orgDevices")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(token_requests(s.up, m, host=MAPS), [], "maps kept its access token")
        ex = token_requests(s.up, m, host="account.apple.com")
        self.assertEqual(len(ex), 1)
        text = s.metrics()
        self.assertEqual(exchanges_metric(text, "maps", "ok"), 1, "counts survive the reload")
        self.assertEqual(exchanges_metric(text, "biz", "ok"), 2)


class ReloadDuringExchangeTest(unittest.TestCase):
    def test_reload_while_an_exchange_is_in_flight(self):
        # The first exchange takes 2 s; a reload comes meanwhile. The waiting request is served,
        # the new configuration gets that exchange's token, and no second exchange is made.
        s = ExchangeSetup(standin_mode="?mode=slow&delay=2&times=1&only=maps")
        self.addCleanup(s.stop)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(s.maps)
            pt.wait_until(lambda: token_requests(s.up, host=MAPS), 10, 0.02, "the exchange")
            s.px.proc.send_signal(signal.SIGHUP)
            r = waiting.result(timeout=20)
        self.assertEqual(r.status, 200, r.body)
        pt.wait_until(lambda: "reloaded" in s.px.stderr_text(), 10, 0.05, "the reload")
        r = s.maps()
        self.assertEqual(r.status, 200, r.body)
        time.sleep(1.5)  # a scan of the new configuration would have started a second one
        self.assertEqual(len(token_requests(s.up, host=MAPS)), 1)


class FailureTest(unittest.TestCase):
    """Each way an exchange fails: Apple's error shape to the client with the reason, the error
    log, /metrics and /readyz say so, nothing secret anywhere, and a retry with backoff."""

    def check_failure(self, s, result, reason_re, status=502):
        r = s.maps(timeout=30)
        self.assertEqual(r.status, status, r.body)
        err = r.json()["errors"][0]
        if status == 502:
            self.assertEqual(err["code"], "PROXY_TOKEN_EXCHANGE_FAILED")
            self.assertRegex(err["detail"], "^credential maps: the access-token exchange failed: "
                             ".*" + reason_re)
            self.assertRegex(r.header("Retry-After", ""), r"^\d+$")
        pt.wait_until(lambda: (exchanges_metric(s.metrics(), "maps", result) or 0) >= 1, 10, 0.1,
                      "the %s failure counted" % result)
        self.assertIn('apple_auth_proxy_token_exchange_failing{credential="maps"} 1',
                      s.metrics())
        ready = pt.admin_get(s.px, "/readyz")
        self.assertEqual(ready.status, 503)
        checks = {c["name"]: c for c in json.loads(ready.body)["checks"]}
        self.assertEqual(checks["credential maps"]["state"], "failing")
        self.assertTrue(checks["credential maps"]["detail"].startswith(
            "cannot get an access token"), checks["credential maps"])
        self.assertRegex(s.px.stderr_text(), r"credential maps: access-token exchange failed "
                         r"\(%s\): .*next attempt in \d+ s" % result)
        self.assert_no_secrets(s)
        return r

    def assert_no_secrets(self, s):
        logs = s.px.stderr_text() + s.metrics()
        self.assertNotIn("eyJ", logs, "a signed token in the logs or metrics")
        for e in s.up.requests():
            for k, v in e["headers"]:
                if k.lower() == "authorization":
                    self.assertNotIn(v.split(" ", 1)[-1], logs)
        for k in s.keys.values():
            self.assertNotIn(k.private_pem.decode().splitlines()[1], logs)

    def test_non_200(self):
        s = ExchangeSetup(standin_mode="?mode=status&status=500")
        self.addCleanup(s.stop)
        self.check_failure(s, "status", r"maps-api\.apple\.com answered 500 invalid_client")

    def test_malformed_json(self):
        s = ExchangeSetup(standin_mode="?mode=malformed")
        self.addCleanup(s.stop)
        self.check_failure(s, "malformed", r"answered 200 without a usable access token: the "
                                           r"answer is not JSON")

    def test_missing_field(self):
        s = ExchangeSetup(standin_mode="?mode=missing")
        self.addCleanup(s.stop)
        self.check_failure(s, "malformed", r"has no accessToken")

    def test_expires_zero(self):
        s = ExchangeSetup(standin_mode="?mode=zero")
        self.addCleanup(s.stop)
        self.check_failure(s, "malformed", r"expiresInSeconds is 0, outside 10\.\.86400")

    def test_expires_absurd(self):
        s = ExchangeSetup(standin_mode="?mode=absurd")
        self.addCleanup(s.stop)
        self.check_failure(s, "malformed", r"expiresInSeconds is 315360000, outside")

    def test_answer_too_large(self):
        s = ExchangeSetup(standin_mode="?mode=huge")
        self.addCleanup(s.stop)
        self.check_failure(s, "malformed", r"maps-api\.apple\.com sent a malformed answer: a "
                                           r"body over 64 KiB")

    def test_connection_closed(self):
        s = ExchangeSetup(standin_mode="?mode=close")
        self.addCleanup(s.stop)
        self.check_failure(s, "unreachable", r"closed the connection before the answer")

    def test_tls_untrusted(self):
        s = ExchangeSetup(token_ca_file=h.get_certs()["other_ca_cert"])
        self.addCleanup(s.stop)
        self.check_failure(s, "tls", r"certificate verification failed for maps-api\.apple\.com")
        # The stand-in never received the exchange: no signed token left the proxy.
        self.assertEqual(token_requests(s.up), [])

    def test_unreachable(self):
        s = ExchangeSetup(token_address="127.0.0.1:%d" % h.unused_port())
        self.addCleanup(s.stop)
        self.check_failure(s, "unreachable", r"cannot connect to maps-api\.apple\.com")

    def test_answer_timeout(self):
        s = ExchangeSetup(standin_mode="?mode=slow&delay=5",
                          limits={"upstream_response_timeout": 1})
        self.addCleanup(s.stop)
        self.check_failure(s, "timeout", r"maps-api\.apple\.com did not answer in time")

    def test_wait_bounded_then_503(self):
        # The exchange takes 5 s; requests wait at most token_wait_timeout (1 s), so the answer
        # comes well before the exchange ends (generous for a loaded machine).
        s = ExchangeSetup(standin_mode="?mode=slow&delay=5&times=1&only=maps",
                          limits={"token_wait_timeout": 1})
        self.addCleanup(s.stop)
        t0 = time.monotonic()
        r = s.maps()
        self.assertEqual(r.status, 503, r.body)
        self.assertLess(time.monotonic() - t0, 4)
        err = r.json()["errors"][0]
        self.assertEqual(err["code"], "PROXY_TOKEN_UNAVAILABLE")
        self.assertIn("credential maps: no access token from Apple within token_wait_timeout",
                      err["detail"])
        # The exchange goes on; once it is done, requests go through without another.
        pt.wait_until(lambda: exchanges_metric(s.metrics(), "maps", "ok") == 1, 10, 0.1)
        r = s.maps()
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(len(token_requests(s.up, host=MAPS)), 1)

    def test_retried_with_backoff_then_recovers(self):
        # Two failures, then Apple answers: 1 s, then 2 s later, the third attempt succeeds.
        s = ExchangeSetup(standin_mode="?mode=status&status=503&times=2&only=maps")
        self.addCleanup(s.stop)
        pt.wait_until(lambda: len(token_requests(s.up, host=MAPS)) >= 3, 15, 0.1,
                      "two retries")
        r = s.maps()
        self.assertEqual(r.status, 200, r.body)
        text = s.metrics()
        self.assertEqual(exchanges_metric(text, "maps", "status"), 2)
        self.assertEqual(exchanges_metric(text, "maps", "ok"), 1)
        self.assertIn('apple_auth_proxy_token_exchange_failing{credential="maps"} 0', text)
        self.assertEqual(pt.admin_get(s.px, "/readyz").status, 200)
        self.assertEqual(len(token_requests(s.up, host=MAPS)), 3)


class CommandLineTest(unittest.TestCase):
    """`token` prints the access token, `--decode` the signed assertion, `check` exchanges."""

    @classmethod
    def setUpClass(cls):
        cls.up = h.start_standin()
        ca = h.get_certs()["ca_cert"]
        cls.keys = {"maps": h.make_key(), "biz": h.make_key()}
        cls.creds = {
            "maps": h.credential("maps", cls.keys["maps"], token_address=cls.up.address,
                                 token_ca_file=ca, origin=["https://maps.example.com"]),
            "biz": h.credential("apple-business", cls.keys["biz"], token_address=cls.up.address,
                                token_ca_file=ca, scope=["school.api"])}
        routes = [h.route(cls.up, "maps", "maps", path_prefix="/v1/", host=MAPS),
                  h.route(cls.up, "apple-school", "biz", path_prefix="/")]
        cls.config = h.write_config(cls.creds, routes)

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def test_token_prints_the_access_token(self):
        for name, host, kind in (("maps", MAPS, "maps"), ("biz", "api-school.apple.com", None)):
            m = self.up.mark()
            rc, out, err = h.run_cli(["token", "-c", self.config, "--credential", name])
            self.assertEqual(rc, 0, err)
            tok = out.strip()
            self.assertRegex(tok, r"^[A-Za-z0-9_-]{40,}$")
            self.assertEqual(len(token_requests(self.up, m)), 1)
            # It is what the API takes.
            with self.up.client(host) as c:
                path = "/v1/geocode?q=x" if kind else "/v1/orgDevices"
                r = c.request("GET", path, host=host, headers=[("Authorization", "Bearer " + tok)])
            self.assertEqual(r.status, 200, r.body)

    def test_decode_shows_the_signed_assertion(self):
        m = self.up.mark()
        rc, out, err = h.run_cli(["token", "-c", self.config, "--credential", "biz", "--decode"])
        self.assertEqual(rc, 0, err)
        doc = json.loads(out)
        self.assertEqual(doc["header"], {"alg": "ES256", "kid": self.keys["biz"].kid})
        c = doc["claims"]
        cid = self.creds["biz"]["client_id"]
        self.assertEqual((c["iss"], c["sub"]), (cid, cid))
        self.assertEqual(c["aud"], "https://account.apple.com/auth/oauth2/v2/token")
        self.assertRegex(c["jti"], r"^[0-9a-f-]{36}$")
        self.assertLessEqual(c["exp"] - c["iat"], 180 * 86400)
        rc, out, err = h.run_cli(["token", "-c", self.config, "--credential", "maps", "--decode"])
        self.assertEqual(rc, 0, err)
        doc = json.loads(out)
        self.assertEqual(doc["header"]["typ"], "JWT")
        self.assertEqual(doc["claims"]["origin"], "https://maps.example.com")
        self.assertEqual(doc["claims"]["iss"], self.creds["maps"]["team_id"])
        self.assertEqual(token_requests(self.up, m), [], "--decode exchanges nothing")

    def test_check_exchanges_once_per_credential(self):
        m = self.up.mark()
        rc, out, err = h.run_cli(["check", "-c", self.config])
        self.assertEqual(rc, 0, err)
        self.assertIn("credential maps: access-token exchange with maps-api.apple.com ok", out)
        self.assertIn("credential biz: access-token exchange with account.apple.com ok", out)
        self.assertEqual(len(token_requests(self.up, m)), 2)
        self.assertNotIn("eyJ", out + err)

    def test_check_reports_a_failed_exchange(self):
        control(self.up, "?mode=status&status=401&times=1&only=maps")
        self.addCleanup(control, self.up, "/reset")
        rc, out, err = h.run_cli(["check", "-c", self.config])
        self.assertEqual(rc, 1, out + err)
        self.assertIn("credentials.maps: access-token exchange with maps-api.apple.com failed "
                      "(status): maps-api.apple.com answered 401 invalid_client", err)

    def test_environment_only(self):
        km, kb = h.make_key(), h.make_key()
        maps_env = {"APPLE_MAPS_KEY_ID": km.kid, "APPLE_MAPS_TEAM_ID": "DEF123GHIJ",
                    "APPLE_MAPS_KEY_FILEPATH": km.private_path}
        env = {"APPLE_BUSINESS_CLIENT_ID": "SCHOOLAPI.9703f56c-10ce-4876-8f59-e78e5e23a152",
               "APPLE_BUSINESS_KEY_ID": "d136aa66-0c3b-4bd4-9892-c20e8db024ab",
               "APPLE_BUSINESS_KEY": kb.private_pem.decode(),
               "APPLE_BUSINESS_SCOPE": "school.api"}
        rc, out, err = h.run_cli(["token", "--credential", "maps", "--decode"], env=maps_env)
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["claims"]["iss"], "DEF123GHIJ")
        # (No `check` here: it would exchange with Apple itself.) Both sets at once want the
        # same default route: said, not guessed; the configuration is refused before anything
        # is exchanged.
        rc, out, err = h.run_cli(["check"], env=dict(env, **maps_env))
        self.assertEqual(rc, 2)
        self.assertIn('credentials "maps" and "business" both want the default route "/"', err)
        rc, out, err = h.run_cli(["token", "--credential", "business", "--decode"], env=env)
        self.assertEqual(rc, 0, err)
        doc = json.loads(out)
        self.assertEqual(doc["claims"]["sub"], env["APPLE_BUSINESS_CLIENT_ID"])
        self.assertEqual(doc["header"]["kid"], env["APPLE_BUSINESS_KEY_ID"])
        # A set that is not complete names what is missing.
        rc, out, err = h.run_cli(["token", "--decode"], env={"APPLE_MAPS_KEY_ID": km.kid})
        self.assertEqual(rc, 2)
        self.assertIn("APPLE_MAPS_TEAM_ID: not set, but other APPLE_MAPS_* variables are", err)
        bad = dict(env, APPLE_BUSINESS_SCOPE="maps.api")
        rc, out, err = h.run_cli(["token", "--credential", "business", "--decode"], env=bad)
        self.assertEqual(rc, 2)
        self.assertIn("APPLE_BUSINESS_SCOPE", err)


class DeviceCheckTest(unittest.TestCase):
    def test_devicecheck_token(self):
        st = h.Stack(profiles=("devicecheck",))
        self.addCleanup(st.stop)
        m = st.standin.mark()
        r = st.request("POST", "/v1/validate_device_token", body=json.dumps(
            {"device_token": "AgAAAA", "transaction_id": "1", "timestamp": 1}),
            headers=[("Content-Type", "application/json")])
        self.assertEqual(r.status, 200, r.body)
        ev = st.standin.wait_for(lambda e: True, since=m, kind="request")
        self.assertEqual(ev["host"], "api.devicecheck.apple.com")
        self.assertTrue(ev["token_ok"], ev["token_error"])
        self.assertEqual(set(ev["token_claims"]), {"iss", "iat"})
        self.assertEqual(ev["token_header"], {"alg": "ES256", "kid": st.keys["devicecheck"].kid})


class StandinVerifiesAssertionsTest(unittest.TestCase):
    """The stand-in itself refuses what Apple refuses (so the tests above prove something)."""

    @classmethod
    def setUpClass(cls):
        cls.up = h.start_standin()
        cls.key = h.make_key()
        cls.client_id = "BUSINESSAPI.9703f56c-10ce-4876-8f59-e78e5e23a152"

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()

    def assertion(self, **over):
        now = int(time.time())
        claims = {"sub": self.client_id, "aud": "https://account.apple.com/auth/oauth2/v2/token",
                  "iat": now, "exp": now + 300, "jti": os.urandom(8).hex(), "iss": self.client_id}
        claims.update(over)
        return h.mint(self.key, {k: v for k, v in claims.items() if v is not None})

    def post(self, assertion, **fields):
        import urllib.parse
        form = {"grant_type": "client_credentials", "client_id": self.client_id,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion, "scope": "business.api"}
        form.update(fields)
        body = urllib.parse.urlencode({k: v for k, v in form.items() if v is not None})
        with self.up.client("account.apple.com") as c:
            return c.request("POST", "/auth/oauth2/token", host="account.apple.com", body=body,
                             headers=[("Content-Type", "application/x-www-form-urlencoded")])

    def test_good_assertion(self):
        r = self.post(self.assertion())
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["token_type"], "Bearer")

    def test_jti_reuse_refused(self):
        a = self.assertion()
        self.assertEqual(self.post(a).status, 200)
        r = self.post(a)
        self.assertEqual(r.status, 401)
        self.assertIn("used before", r.json()["error_description"])

    def test_wrong_audience_refused(self):
        r = self.post(self.assertion(aud="https://account.apple.com/auth/oauth2/token"))
        self.assertEqual(r.status, 401)

    def test_over_180_days_refused(self):
        now = int(time.time())
        r = self.post(self.assertion(iat=now, exp=now + 180 * 86400 + 1))
        self.assertEqual(r.status, 401)
        self.assertIn("over 180 days", r.json()["error_description"])
        self.assertEqual(self.post(self.assertion(iat=now, exp=now + 180 * 86400)).status, 200)

    def test_sub_must_be_client_id(self):
        self.assertEqual(self.post(self.assertion(sub="SCHOOLAPI.other")).status, 401)

    def test_missing_jti_refused(self):
        self.assertEqual(self.post(self.assertion(jti=None)).status, 401)

    def test_form_fields_checked(self):
        self.assertEqual(self.post(self.assertion(), scope=None).status, 400)
        self.assertEqual(self.post(self.assertion(), grant_type="password").status, 400)
        self.assertEqual(self.post(self.assertion(), scope="maps.api").status, 400)

    def test_api_needs_an_issued_access_token(self):
        with self.up.client(BIZ) as c:
            r = c.request("GET", "/v1/orgDevices", host=BIZ,
                          headers=[("Authorization", "Bearer " + self.assertion())])
        self.assertEqual(r.status, 401)


if __name__ == "__main__":
    unittest.main()
