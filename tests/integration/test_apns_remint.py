"""APNs' token refusals end to end, on the real clock: the proxy runs unmodified (no clock of its
own is moved), and the 20-minute rule is tested with the time it names.

  - always (seconds): a 403 InvalidProviderToken, and APNs' own 403 ExpiredProviderToken (the
    stand-in's clock moved an hour ahead, so that it is APNs' rule that refuses, not a scripted
    answer), to a token under 20 minutes old are passed on and the token is kept: nothing is
    minted and nothing is sent again.
  - with AAP_REALTIME_TESTS=1 (about 21 minutes): once the token is 20 minutes old, APNs' own
    403 ExpiredProviderToken makes the proxy mint once more and send that push once more with
    the new token, on the same connection, and the client gets APNs' 200; after that the new
    token is young, so a 403 InvalidProviderToken is passed on, and a 429
    TooManyProviderTokenUpdates is logged, counted, and the token kept.
"""
import os
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402
import test_apns_push as ap  # noqa: E402  its push headers, device and payload

TOKEN_MIN_AGE = 1200  # APNs: a team's token is replaced no more often than every 20 minutes
REALTIME = os.environ.get("AAP_REALTIME_TESTS") == "1"


class RemintTest(unittest.TestCase):
    def setUp(self):
        self.key = h.make_key()
        self.team = h.random_team_id()
        self.up = h.Standin(script=h.STANDIN_APNS)
        cred = h.credential("apns", self.key, team_id=self.team)
        route = h.route(self.up, "https://api.push.apple.com", "push", path_prefix="/3/device/")
        self.proxy = h.start_proxy(h.write_config({"push": cred}, [route], workers=1,
                                                  admin_listen="127.0.0.1:0"))

    def tearDown(self):
        self.proxy.stop()
        self.up.stop()

    def push(self, **extra):
        """One push with its own apns-id; returns (status, body, the stand-in's answers to it)."""
        apns_id = str(uuid.uuid4()).upper()
        mark = self.up.mark()
        status, _, body = h.request(self.proxy.port, "POST", "/3/device/" + ap.DEVICE,
                                    ap.push_headers(**dict(extra, **{"apns-id": apns_id})),
                                    ap.PAYLOAD, timeout=30)
        answers = [(e["status"], e["reason"]) for e in self.up.events("answer", since=mark)
                   if e.get("apns_id") == apns_id]
        iats = [e["iat"] for e in self.up.events("push", since=mark)
                if e.get("apns_id") == apns_id]
        return status, body, answers, iats

    def counts(self):
        m = pt.metrics(self.proxy)
        return {"mints": m.value("apple_auth_proxy_token_mints_total", credential="push"),
                "retries": m.value("apple_auth_proxy_apns_token_retries_total"),
                "too_many": m.value("apple_auth_proxy_apns_too_many_token_updates_total")}

    def test_refusals_of_a_young_token_are_passed_on(self):
        status, _, answers, iats = self.push()
        self.assertEqual((status, answers), (200, [(200, None)]))
        first_iat = iats[0]
        status, body, answers, _ = self.push(
            **{"x-standin-action": "refuse=403:InvalidProviderToken"})
        self.assertEqual((status, answers), (403, [(403, "InvalidProviderToken")]))
        self.assertIn(b"InvalidProviderToken", body)
        # The stand-in an hour ahead: the token is expired by APNs' own rule.
        status, body, answers, _ = self.push(**{"x-standin-clock": "3700"})
        self.assertEqual((status, answers), (403, [(403, "ExpiredProviderToken")]))
        self.assertIn(b"ExpiredProviderToken", body)
        self.assertEqual(self.counts(), {"mints": 1, "retries": 0, "too_many": 0})
        self.assertEqual(self.proxy.stderr_text().count("under 20 minutes old, so it is kept"), 2)
        self.assertEqual({e["iat"] for e in self.up.events("push")}, {first_iat})

    @unittest.skipUnless(REALTIME, "20 minutes of real time: set AAP_REALTIME_TESTS=1")
    def test_20_minute_old_token_refused_is_replaced_once_and_the_push_sent_again(self):
        status, _, answers, iats = self.push()
        self.assertEqual((status, answers), (200, [(200, None)]))
        old_iat = iats[0]
        minted_by = time.time()  # the token was signed before its push's answer came back
        conns = {e["conn"] for e in self.up.events("push")}
        time.sleep(max(0.0, minted_by + TOKEN_MIN_AGE + 2 - time.time()))

        # The stand-in's clock 42 minutes ahead: for APNs the token is over an hour old.
        status, body, answers, iats = self.push(**{"x-standin-clock": "2500"})
        self.assertEqual(status, 200, body)
        self.assertEqual(answers, [(403, "ExpiredProviderToken"), (200, None)])
        self.assertEqual(len(iats), 1)
        new_iat = iats[0]
        self.assertGreaterEqual(new_iat - old_iat, TOKEN_MIN_AGE - 60)  # iat is backdated a little
        self.assertEqual(self.counts(), {"mints": 2, "retries": 1, "too_many": 0})
        self.assertIn("a new token was minted; the push goes once more", self.proxy.stderr_text())
        # Both attempts went over the one connection the proxy keeps.
        self.assertEqual({e["conn"] for e in self.up.events("push")}, conns)

        # The new token is young: a refusal is passed on, nothing is minted or sent again.
        status, _, answers, _ = self.push(**{"x-standin-action":
                                             "refuse=403:InvalidProviderToken"})
        self.assertEqual((status, answers), (403, [(403, "InvalidProviderToken")]))
        status, _, answers, _ = self.push(**{"x-standin-action":
                                             "refuse=429:TooManyProviderTokenUpdates"})
        self.assertEqual((status, answers), (429, [(429, "TooManyProviderTokenUpdates")]))
        ap.wait_until(lambda: "TooManyProviderTokenUpdates, 1 so far" in
                      self.proxy.stderr_text(), timeout=5)
        self.assertEqual(self.counts(), {"mints": 2, "retries": 1, "too_many": 1})
        status, _, answers, iats = self.push()
        self.assertEqual((status, answers, iats), (200, [(200, None)], [new_iat]))


if __name__ == "__main__":
    unittest.main()
