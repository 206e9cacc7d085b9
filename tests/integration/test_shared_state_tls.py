"""Shared state over TLS ("shared_state.tls", docs/configuration.md): a real redis-server serving
TLS only, with certificates from the test CA made at test time (tests/upstream/certs.py).

Covered, each by its own test:
  two replicas share one client's burst exactly over TLS, and Redis holds no secret;
  a Redis whose certificate comes from another CA, or names another host, is refused: the
    replicas decide locally (logged with the reason, counted, said in /readyz while ready) and
    Redis never received a command; "server_name" names the host the certificate must carry;
  a plain-text Redis where TLS is configured never receives a byte in clear (not even AUTH);
  mutual TLS: a Redis that requires a client certificate is used with one, refused without
    or with one from another CA; a client key that is not the certificate's stops `check` and
    `serve`;
  Redis killed and restarted over TLS: fallback, then sharing resumes without a restart.
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402
from test_gateway import make_client_certs  # noqa: E402
from test_shared_state import FALLBACK, ReplicaPair, Redis  # noqa: E402


class SharedStateTlsTest(ReplicaPair):
    def setUp(self):
        super().setUp()
        self.certs = h.get_certs()
        self.redis = None

    def start_redis(self, kind="good", **tls):
        """A TLS-only Redis serving the test certificate of that kind (certs.py)."""
        spec = {"cert": self.certs[kind + "_cert"], "key": self.certs[kind + "_key"],
                "ca": self.certs["ca_cert"]}
        spec.update(tls)
        self.redis = Redis(tls=spec)
        self.addCleanup(self.redis.stop)
        self.redis_cli("CONFIG", "RESETSTAT")  # the harness' own PING is not the proxy's

    def commands_received(self):
        """The commands Redis has run since start_redis (INFO commandstats), the harness' own
        aside (its CONFIG RESETSTAT and INFO)."""
        names = []
        for line in self.redis_cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                names.append(line.split(":")[0][len("cmdstat_"):])
        return [n for n in names if n not in ("info", "config|resetstat")]

    def assert_refused(self, reason):
        """Both replicas decide locally for that reason, ready, and Redis ran no command."""
        for px in self.px:
            pt.wait_stderr(px, r"shared state: Redis at 127\.0\.0\.1:%d is not usable \(%s"
                           % (self.redis.port, reason), timeout=15)
            status, body = self.readyz(px)
            self.assertEqual(status, 200, body)
            self.assertEqual(self.shared_check(px)["state"], "local", body)
            m = pt.metrics(px)
            self.assertEqual(m.value("apple_auth_proxy_shared_state_up"), 0)
            self.assertGreaterEqual(m.value("apple_auth_proxy_shared_state_tls_failures_total"),
                                    1)
        # each replica admits its share of the burst: 4 / 2 replicas
        statuses = [self.get(self.px[0], secret=FALLBACK).status for _ in range(3)]
        self.assertEqual(statuses, [200, 200, 429])
        self.assertGreater(pt.metrics(self.px[0]).value(
            "apple_auth_proxy_shared_rate_decisions_total", where="local"), 0)
        self.assertEqual(self.commands_received(), [])

    def test_two_replicas_share_one_burst_over_tls(self):
        self.start_redis()
        self.start_pair(tls={"ca_file": self.certs["ca_cert"]})
        statuses = [self.get(self.px[i % 2]).status for i in range(9)]
        self.assertEqual(statuses, [200] * 6 + [429] * 3)
        self.assertRedisHoldsNoSecrets()
        for px in self.px:
            self.assertIn("over TLS", self.shared_check(px)["detail"])
            pt.wait_stderr(px, r"shared state: using Redis at 127\.0\.0\.1:%d \(TLS\)"
                           % self.redis.port)
            m = pt.metrics(px)
            self.assertGreater(m.value("apple_auth_proxy_shared_rate_decisions_total",
                                       where="redis"), 0)
            self.assertEqual(m.value("apple_auth_proxy_shared_state_tls_failures_total"), 0)

    def test_certificate_from_another_ca_is_refused(self):
        self.start_redis("unknown_ca")
        self.start_pair(tls={"ca_file": self.certs["ca_cert"]}, password="never-sent", wait=False)
        self.assert_refused(r"TLS: certificate verification failed: unable to get local issuer "
                            r"certificate")
        for px in self.px:
            self.assertNotIn("never-sent", px.stderr_text())

    def test_system_store_does_not_trust_a_private_ca(self):
        # "tls": true verifies against the system's store, which does not hold the test CA
        self.start_redis()
        self.start_pair(tls=True, wait=False)
        # Redis sends the test CA along with its certificate: the chain ends in a self-signed
        # root the system does not trust
        self.assert_refused(r"TLS: certificate verification failed: self-signed certificate in "
                            r"certificate chain")

    def test_certificate_for_another_name_is_refused(self):
        self.start_redis("wrong_host")  # the test CA's, for wrong.example only
        self.start_pair(tls={"ca_file": self.certs["ca_cert"]}, wait=False)
        self.assert_refused(r"TLS: certificate verification failed: IP address mismatch")

    def test_server_name_is_the_name_verified(self):
        self.start_redis("wrong_host")
        self.start_pair(tls={"ca_file": self.certs["ca_cert"], "server_name": "wrong.example"})
        statuses = [self.get(self.px[i % 2]).status for i in range(7)]
        self.assertEqual(statuses, [200] * 6 + [429])

    def test_plain_redis_where_tls_is_configured_gets_nothing_in_clear(self):
        # a Redis that does not speak TLS on the port: the handshake fails, and neither AUTH
        # (with the password; this Redis has none, so it would count a failed AUTH) nor any
        # other command reaches it
        self.redis = Redis()
        self.addCleanup(self.redis.stop)
        self.redis_cli("CONFIG", "RESETSTAT")
        self.start_pair(tls={"ca_file": self.certs["ca_cert"]}, password="kept-secret",
                        wait=False)
        # Redis takes the ClientHello for the start of an inline command and waits for its end
        self.assert_refused(r"no TLS handshake in time")
        for px in self.px:
            self.assertNotIn("kept-secret", px.stderr_text())

    def client_certificates(self):
        cc = make_client_certs(h.new_dir("redisclients"), self.certs)
        self.start_redis(ca=cc["ca"], auth_clients=True, client=(cc["cert"], cc["key"]))
        return cc

    def test_mutual_tls(self):
        cc = self.client_certificates()
        self.start_pair(tls={"ca_file": self.certs["ca_cert"], "cert_file": cc["cert"],
                             "key_file": cc["key"]})
        statuses = [self.get(self.px[i % 2]).status for i in range(7)]
        self.assertEqual(statuses, [200] * 6 + [429])
        self.assertRedisHoldsNoSecrets()

    def test_mutual_tls_without_a_client_certificate_is_refused(self):
        self.client_certificates()
        self.start_pair(tls={"ca_file": self.certs["ca_cert"]}, wait=False)
        # TLS 1.3: Redis refuses the missing certificate after the client's handshake is done
        self.assert_refused(r"TLS: closed by Redis right after the handshake \(a client "
                            r"certificate it requires, or refuses\?\): ")

    def test_mutual_tls_with_a_certificate_from_another_ca_is_refused(self):
        cc = self.client_certificates()
        self.start_pair(tls={"ca_file": self.certs["ca_cert"], "cert_file": cc["rogue_cert"],
                             "key_file": cc["rogue_key"]}, wait=False)
        self.assert_refused(r"TLS: closed by Redis right after the handshake \(a client "
                            r"certificate it requires, or refuses\?\): ")

    def test_client_key_of_another_certificate_stops_check_and_serve(self):
        cc = make_client_certs(h.new_dir("redisclients"), self.certs)
        shared = {"redis": "127.0.0.1:6379", "tls": {"ca_file": self.certs["ca_cert"],
                                                     "cert_file": cc["cert"],
                                                     "key_file": cc["rogue_key"]}}
        cfg = h.write_config(self.creds, self.routes, shared_state=shared)
        rc, out, err = h.run_cli(["check", "-c", cfg])
        self.assertEqual(rc, 1, out + err)
        self.assertIn("shared_state.tls: cannot load shared_state.tls.key_file: key values "
                      "mismatch", err)
        rc, out, err = h.run_cli(["serve", "-c", cfg], timeout=15)
        self.assertEqual(rc, 1, err)
        self.assertIn("cannot load shared_state.tls.key_file: key values mismatch", err)
        self.assertNotIn("listening on", err)
        shared["tls"]["key_file"] = cc["key"]
        cfg = h.write_config(self.creds, self.routes, shared_state=shared)
        rc, out, err = h.run_cli(["check", "-c", cfg])
        self.assertEqual(rc, 0, out + err)
        self.assertIn("tried: shared_state.tls: 127.0.0.1:6379: trusted certificates, client "
                      "certificate and key loaded", out)

    def test_redis_killed_and_restarted_over_tls(self):
        self.start_redis()
        self.start_pair(tls={"ca_file": self.certs["ca_cert"]})
        self.assertEqual(self.get(self.px[0]).status, 200)
        marks = [len(px.stderr_text()) for px in self.px]
        self.redis.kill()
        for px, mark in zip(self.px, marks):
            pt.wait_stderr(px, r"is not usable \(connection lost", since=mark, timeout=15)
            self.assertEqual(self.readyz(px)[0], 200)
        statuses = [self.get(self.px[0], secret=FALLBACK).status for _ in range(3)]
        self.assertEqual(statuses, [200, 200, 429])
        marks = [len(px.stderr_text()) for px in self.px]
        self.redis.start()
        for px, mark in zip(self.px, marks):
            self.wait_using_redis(px)
            pt.wait_stderr(px, r"shared state: using Redis at .* \(TLS\)", since=mark)
            self.assertGreaterEqual(pt.metrics(px).value(
                "apple_auth_proxy_shared_state_fallbacks_total"), 1)
        # the restarted Redis holds a fresh bucket (burst 6), shared again
        statuses = [self.get(self.px[i % 2]).status for i in range(9)]
        self.assertEqual(statuses, [200] * 6 + [429] * 3)


if __name__ == "__main__":
    unittest.main()
