"""Replicas that share one view through Redis ("shared_state", docs/deployment.md): two proxy
processes on one configuration, and a real redis-server started here on a free loopback port
with no persistence.

Covered, each by its own test:
  two replicas admit exactly one client's burst between them, in turn and all at once;
  Apple's quota reserve, learnt through one replica, refuses on the other;
  Apple's Retry-After, received through one replica, holds on the other;
  Redis killed under load: no 5xx, each replica falls back to its share of the limit (logged
    once, counted, said in /readyz while ready); restarted: sharing resumes without a restart;
  Redis stopped (SIGSTOP, a Redis that no longer answers): requests are decided locally after
    the timeout instead of stalling, and Redis is used again once it answers;
  a request waiting for its decision blocks no other on its worker;
  a client that leaves while its rate decision is pending, and pipelined requests each waiting
    for one;
  Redis turned read-only (a failover): not used while it refuses the scripts, used again once
    writable;
  Redis absent when the replicas start: local limits at once, shared once it comes;
  a reload that changes clients' limits keeps sharing them (the password read at start is kept),
    one that changes shared_state keeps the Redis in use until the next restart;
  two gateways with their own key_prefix on one Redis share nothing;
  Redis named by a host name, on a unix socket, with a password (right and wrong).
TLS to Redis: test_shared_state_tls.py.
"""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

LIMITED = "shared-state-limited-secret-0123456789abcdef"
FALLBACK = "shared-state-fallback-secret-0123456789abcde"
FAST = "shared-state-fast-secret-0123456789abcdefghij"
PRIORITY = "shared-state-priority-secret-0123456789abcde"
TIMEOUT = 0.3  # shared_state.timeout in these tests (seconds)


def bearer(secret):
    return [("Proxy-Authorization", "Bearer " + secret)]


def client(secret, **extra):
    c = {"key_sha256": hashlib.sha256(secret.encode()).hexdigest()}
    c.update(extra)
    return c


class Redis:
    """redis-server on a free loopback port, no RDB or AOF files, in its own directory.
    tls: {"cert", "key", "ca"} serves TLS only (the port is a TLS port), with "auth_clients"
    (a client certificate from "ca" required) and "client" ((cert, key) this harness shows)."""

    def __init__(self, port=None, bind="127.0.0.1", password=None, tls=None, unixsocket=None):
        self.port = port or h.unused_port()
        self.unixsocket = unixsocket
        self.bind = bind
        self.password = password
        self.tls = tls
        self.dir = h.new_dir("redis")
        self.proc = None
        self.start()

    def start(self):
        # A missing server fails the test rather than skipping it: a suite that passes without
        # ever reaching Redis proves nothing about sharing.
        server = shutil.which("redis-server")
        if server is None or shutil.which("redis-cli") is None:
            raise AssertionError("redis-server and redis-cli are needed: make deps")
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", self.tls["cert"], "--tls-key-file", self.tls["key"],
                     "--tls-ca-cert-file", self.tls["ca"],
                     "--tls-auth-clients", "yes" if self.tls.get("auth_clients") else "no"]
        self.proc = h._Process("redis-server", [server] + ports + [
            "--bind"] + self.bind.split() + [
            "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
            "--protected-mode", "yes", "--loglevel", "warning"] +
            (["--requirepass", self.password] if self.password else []) +
            (["--unixsocket", self.unixsocket] if self.unixsocket else []))
        pt.wait_until(self.answers, 10, 0.05, "redis-server answering PING")

    def answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
                s = raw
                if self.tls:
                    # whatever certificate it serves: some tests give it one the proxy refuses
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    if self.tls.get("client"):
                        ctx.load_cert_chain(*self.tls["client"])
                    s = ctx.wrap_socket(raw)
                s.sendall(b"PING\r\n")
                answer = s.recv(64)
                return answer.startswith(b"+PONG") or answer.startswith(b"-NOAUTH")
        except OSError:
            return False

    def cli_args(self):
        """redis-cli's arguments to reach this server."""
        args = ["-p", str(self.port)]
        if self.password:
            args += ["-a", self.password, "--no-auth-warning"]
        if self.tls:
            args += ["--tls", "--insecure"]
            if self.tls.get("client"):
                args += ["--cert", self.tls["client"][0], "--key", self.tls["client"][1]]
        return args

    def kill(self):
        self.proc.stop(signal.SIGKILL)

    def stop(self):
        if self.proc.alive():
            self.proc.proc.send_signal(signal.SIGCONT)
        self.proc.stop()


class ReplicaPair(unittest.TestCase):
    """Two proxy processes sharing one Redis (self.redis, made by setUp in each test class)."""

    def setUp(self):
        self.up = h.start_standin(rate_remaining=1000)
        self.addCleanup(self.up.stop)
        self.creds = {"asc": h.credential("app-store-connect", h.make_key())}
        self.routes = [h.route(self.up, "app-store-connect", "asc")]

    def start_pair(self, quota_reserve=None, redis_host="127.0.0.1", password=None, wait=True,
                   tls=None, workers=2, timeout=TIMEOUT):
        creds = {"asc": dict(self.creds["asc"])}
        if quota_reserve is not None:
            creds["asc"]["quota_reserve"] = quota_reserve
        clients = {
            "limited": client(LIMITED, rate={"per_second": 0.01, "burst": 6}),
            "fallback": client(FALLBACK, rate={"per_second": 0.01, "burst": 4}),
            "fast": client(FAST, rate={"per_second": 1000, "burst": 1000}),
            "boss": client(PRIORITY, priority=True),
        }
        shared = {"redis": "%s:%d" % (redis_host, self.redis.port), "timeout": timeout, "replicas": 2,
                  "key_prefix": "test%d:" % os.getpid()}
        if redis_host.startswith("unix:"):
            shared["redis"] = redis_host
        if tls is not None:
            shared["tls"] = tls
        env = None
        if password is not None:
            shared["password_env"] = "TEST_REDIS_PASSWORD"
            env = h.clean_env({"TEST_REDIS_PASSWORD": password})
        config = h.write_config(creds, self.routes, workers=workers, clients=clients,
                                admin_listen="127.0.0.1:0", shared_state=shared)
        self.px = []
        for _ in range(2):
            px = h.start_proxy(config, env=env)
            self.addCleanup(px.stop)
            self.px.append(px)
        for px in self.px:
            if wait:
                self.wait_using_redis(px)

    def readyz(self, px):
        r = pt.admin_get(px, "/readyz")
        return r.status, r.body.decode()

    def wait_using_redis(self, px, timeout=15):
        pt.wait_until(lambda: self.shared_check(px)["state"] == "redis", timeout, 0.05,
                      "the replica using Redis")

    def shared_check(self, px):
        """The shared_state entry of /readyz's JSON checks."""
        checks = {c["name"]: c for c in json.loads(self.readyz(px)[1])["checks"]}
        return checks["shared_state"]

    def get(self, px, secret=LIMITED, path="/v1/apps", timeout=10):
        with h.HttpClient(px.port, timeout=timeout) as c:
            return c.request("GET", path, bearer(secret))

    def redis_cli(self, *args):
        p = subprocess.run([shutil.which("redis-cli")] + self.redis.cli_args() + ["--raw"] +
                           list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
                           text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        return p.stdout

    def assertRedisHoldsNoSecrets(self):
        """Only names and numbers: no token, no key, no client secret, under the prefix."""
        prefix = "test%d:" % os.getpid()
        keys = sorted(self.redis_cli("--scan").split())
        self.assertTrue(keys)
        for k in keys:
            self.assertRegex(k, r"^%s(rate:[a-z]+|cred:asc|probe)$" % re.escape(prefix))
            kind = self.redis_cli("TYPE", k).strip()
            value = self.redis_cli("HGETALL" if kind == "hash" else "GET", k)
            self.assertRegex(value, r"^[A-Za-z_0-9.\s-]*$", (k, value))
            for secret in (LIMITED, FAST, PRIORITY, FALLBACK, "eyJ", "PRIVATE KEY"):
                self.assertNotIn(secret, value)


class SharedStateTest(ReplicaPair):
    def setUp(self):
        super().setUp()
        self.redis = Redis()
        self.addCleanup(self.redis.stop)

    def test_two_replicas_share_one_burst_exactly(self):
        self.start_pair()
        statuses = [self.get(self.px[i % 2]).status for i in range(12)]
        self.assertEqual(statuses.count(200), 6, statuses)
        self.assertEqual(statuses[:6], [200] * 6, statuses)
        self.assertEqual(set(statuses[6:]), {429}, statuses)
        r = self.get(self.px[1])
        self.assertEqual(pt.error_code(r), "PROXY_RATE_LIMITED")
        self.assertGreaterEqual(int(r.header("Retry-After")), 50)
        self.assertRedisHoldsNoSecrets()
        for px in self.px:
            m = pt.metrics(px)
            self.assertGreater(m.value("apple_auth_proxy_shared_rate_decisions_total",
                                       where="redis"), 0)
            self.assertEqual(m.value("apple_auth_proxy_shared_rate_decisions_total",
                                     where="local"), 0)
            self.assertEqual(m.value("apple_auth_proxy_shared_state_up"), 1)

    def test_concurrent_burst_on_both_replicas_is_never_over_admitted(self):
        # The rate script runs whole on Redis: 48 requests racing from 48 connections onto two
        # replicas (two workers each) take exactly the burst of 6 between them, no more.
        self.start_pair()
        n = 48
        barrier = threading.Barrier(n)
        results = [None] * n

        def one(i):
            with h.HttpClient(self.px[i % 2].port, timeout=30) as c:
                barrier.wait(30)
                results[i] = c.request("GET", "/v1/apps", bearer(LIMITED)).status

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(sorted(results, key=str), [200] * 6 + [429] * (n - 6), results)
        decided = 0
        for px in self.px:
            m = pt.metrics(px)
            self.assertEqual(m.value("apple_auth_proxy_shared_rate_decisions_total",
                                     where="local"), 0)
            decided += m.value("apple_auth_proxy_shared_rate_decisions_total", where="redis")
        self.assertEqual(decided, n)

    def test_shared_metrics_pass_promtool(self):
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool (Debian's prometheus package) is needed: make deps")
        self.start_pair()
        self.assertEqual(self.get(self.px[0]).status, 200)
        pt.wait_until(lambda: pt.metrics(self.px[0]).value(
            "apple_auth_proxy_shared_token_mints", credential="asc") is not None, 15, 0.1,
            "the shared mint count read back")
        text = pt.admin_get(self.px[0], "/metrics").body
        p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           timeout=60)
        self.assertEqual(p.returncode, 0, "promtool: %s %s" % (p.stdout.decode(),
                                                              p.stderr.decode()))
        # one token minted by each replica (each mints its own), added up in Redis
        pt.wait_until(lambda: all(pt.metrics(px).value(
            "apple_auth_proxy_shared_token_mints", credential="asc") ==
            sum(pt.metrics(q).value("apple_auth_proxy_token_mints_total", credential="asc")
                for q in self.px) for px in self.px), 15, 0.1, "the mint counts added up")

    def test_quota_reserve_learnt_on_one_replica_holds_on_the_other(self):
        # the stand-in reports about 1000 requests left; 2000 are kept for priority clients
        self.start_pair(quota_reserve=2000)
        r = self.get(self.px[0], secret=FAST)
        self.assertEqual(r.status, 200, r.body[:300])
        rem = int(re.search(r"user-hour-rem:(\d+)", r.header("X-Rate-Limit")).group(1))
        # nothing goes through the second replica until it has read the figures back
        pt.wait_until(lambda: pt.metrics(self.px[1]).value(
            "apple_auth_proxy_apple_rate_limit_remaining", credential="asc") == rem, 15, 0.1,
            "the second replica learning Apple's figures")
        mark = self.up.mark()
        r = self.get(self.px[1], secret=FAST)
        self.assertEqual(r.status, 429, r.body[:300])
        self.assertEqual(pt.error_code(r), "PROXY_QUOTA_RESERVED")
        self.assertEqual(self.up.requests(mark), [], "nothing reached Apple")
        self.assertEqual(self.get(self.px[1], secret=PRIORITY).status, 200)
        self.assertRedisHoldsNoSecrets()

    def test_retry_after_from_one_replica_holds_on_the_other(self):
        self.start_pair()
        r = self.get(self.px[0], secret=PRIORITY, path="/v1/__rate_limit?after=60")
        self.assertEqual(r.status, 429, r.body[:300])
        pt.wait_until(lambda: pt.metrics(self.px[1]).value(
            "apple_auth_proxy_apple_retry_after_seconds", credential="asc") > 0, 15, 0.1,
            "the second replica learning Apple's Retry-After")
        mark = self.up.mark()
        for secret in (PRIORITY, FAST):
            r = self.get(self.px[1], secret=secret)
            self.assertEqual(r.status, 429, r.body[:300])
            self.assertEqual(pt.error_code(r), "PROXY_APPLE_RETRY_AFTER")
            self.assertTrue(50 <= int(r.header("Retry-After")) <= 61, r.header("Retry-After"))
        self.assertEqual(self.up.requests(mark), [], "nothing reached Apple while it rests")

    def load(self, stop, results):
        """Requests through both replicas until stop is set; every status is recorded."""
        i = 0
        while not stop.is_set():
            try:
                results.append(self.get(self.px[i % 2], secret=FAST, timeout=15).status)
            except Exception as e:  # a failed exchange is a result too
                results.append(repr(e))
            i += 1

    def test_redis_killed_under_load_then_restarted(self):
        self.start_pair()
        marks = [len(px.stderr_text()) for px in self.px]
        stop, results = threading.Event(), []
        threads = [threading.Thread(target=self.load, args=(stop, results)) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            pt.wait_until(lambda: len(results) >= 30, 30, 0.05, "load before the kill")
            self.redis.kill()
            before = len(results)
            pt.wait_until(lambda: len(results) >= before + 60, 60, 0.05, "load after the kill")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertEqual([s for s in results if s != 200], [], "every request was served")
        for px, mark in zip(self.px, marks):
            status, body = self.readyz(px)
            self.assertEqual(status, 200, body)
            self.assertIn("is not usable; rate limits are local, divided by 2 replicas", body)
            m = pt.metrics(px)
            self.assertGreaterEqual(m.value("apple_auth_proxy_shared_state_fallbacks_total"), 1)
            self.assertGreater(m.value("apple_auth_proxy_shared_rate_decisions_total",
                                       where="local"), 0)
            self.assertEqual(m.value("apple_auth_proxy_shared_state_up"), 0)
            # logged once for the process, not per worker or per reconnect attempt
            self.assertEqual(len(re.findall(r"is not usable", px.stderr_text()[mark:])), 1,
                             px.stderr_text()[mark:])
        # each replica admits its share of the burst: 4 / 2 replicas
        statuses = [self.get(self.px[0], secret=FALLBACK).status for _ in range(4)]
        self.assertEqual(statuses, [200, 200, 429, 429])
        marks = [len(px.stderr_text()) for px in self.px]
        self.redis.start()
        for px, mark in zip(self.px, marks):
            self.wait_using_redis(px)
            pt.wait_stderr(px, r"shared state: using Redis", since=mark)
        # sharing resumed: the restarted Redis holds a fresh bucket for "limited" (burst 6),
        # which the two replicas now share
        statuses = [self.get(self.px[i % 2]).status for i in range(9)]
        self.assertEqual(statuses, [200] * 6 + [429] * 3)
        for px, mark in zip(self.px, marks):
            # the return is logged once too, however many workers reconnect
            self.assertEqual(len(re.findall(r"shared state: using Redis", px.stderr_text()[mark:])),
                             1, px.stderr_text()[mark:])
            self.assertEqual(pt.metrics(px).value("apple_auth_proxy_shared_state_up"), 1)

    def test_redis_absent_at_start_is_used_once_it_comes(self):
        # replicas that start before their Redis (pods scheduled before it) serve at once on
        # local limits, then share without a restart
        self.redis.stop()
        self.start_pair(wait=False)
        for px in self.px:
            pt.wait_stderr(px, r"shared state: Redis at 127\.0\.0\.1:%d is not usable \(.*\); "
                           r"rate limits are local, divided by 2 replicas" % self.redis.port,
                           timeout=15)
            status, body = self.readyz(px)
            self.assertEqual(status, 200, body)
            self.assertEqual(self.shared_check(px)["state"], "local", body)
        self.assertEqual([self.get(self.px[0], secret=FALLBACK).status for _ in range(3)],
                         [200, 200, 429])
        marks = [len(px.stderr_text()) for px in self.px]
        self.redis.start()
        for px, mark in zip(self.px, marks):
            self.wait_using_redis(px)
            pt.wait_stderr(px, r"shared state: using Redis at 127\.0\.0\.1:%d" % self.redis.port,
                           since=mark)
        statuses = [self.get(self.px[i % 2]).status for i in range(7)]
        self.assertEqual(statuses, [200] * 6 + [429])

    def rewrite_config(self, px, change):
        """Rewrites px's configuration file with change(cfg) applied, and reloads it (SIGHUP)."""
        with open(px.config_path) as f:
            cfg = json.load(f)
        change(cfg)
        tmp = px.config_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(cfg, f)
        os.chmod(tmp, 0o600)
        os.replace(tmp, px.config_path)
        return self.reload(px)

    def reload(self, px):
        """SIGHUP; returns where px's log stood before it."""
        mark = len(px.stderr_text())
        px.proc.send_signal(signal.SIGHUP)
        pt.wait_stderr(px, r"reloaded", since=mark)
        return mark

    def test_reload_keeps_sharing_and_the_redis_in_use(self):
        self.redis.stop()
        self.redis = Redis(port=self.redis.port, password="reload-redis-pass")
        self.addCleanup(self.redis.stop)
        self.start_pair(password="reload-redis-pass")

        def bigger_burst(cfg):
            cfg["clients"]["limited"]["rate"]["burst"] = 8

        # both replicas share one file: the first rewrite serves both reloads
        marks = [self.rewrite_config(self.px[0], bigger_burst), self.reload(self.px[1])]
        for px, mark in zip(self.px, marks):
            self.assertNotIn("shared_state changed", px.stderr_text()[mark:])
        # the password came from the variable removed at start, kept for reloads; the new
        # burst is the one the shared bucket applies
        statuses = [self.get(self.px[i % 2]).status for i in range(10)]
        self.assertEqual(statuses, [200] * 8 + [429] * 2)
        for px in self.px:
            self.assertEqual(self.shared_check(px)["state"], "redis")

        def other_prefix(cfg):
            cfg["shared_state"]["key_prefix"] = "elsewhere:"

        mark = self.rewrite_config(self.px[0], other_prefix)
        pt.wait_stderr(self.px[0], r"reload: shared_state changed; it takes effect at the next "
                       r"restart", since=mark)
        # still the Redis and the keys of the start: the bucket stays spent, nothing is
        # written under the new prefix
        self.assertEqual(self.get(self.px[0]).status, 429)
        self.assertEqual(self.redis_cli("KEYS", "elsewhere:*").strip(), "")

    def test_redis_turned_read_only_is_not_used_until_writable(self):
        # a failover demotes the Redis the replicas use: it still answers PING, but refuses
        # every script's writes. The replicas stop using it (logged once, counted, /readyz),
        # serve on local limits, and use it again once it is writable, without a restart.
        self.start_pair()
        marks = [len(px.stderr_text()) for px in self.px]
        self.redis_cli("REPLICAOF", "127.0.0.1", str(h.unused_port()))
        self.addCleanup(lambda: self.redis.proc.alive() and self.redis_cli("REPLICAOF", "NO", "ONE"))
        self.assertEqual(self.get(self.px[0], secret=FAST).status, 200)
        for px, mark in zip(self.px, marks):
            # px[1] finds out through its once-a-second sync, without a request
            pt.wait_stderr(px, r"shared state: Redis at 127\.0\.0\.1:%d is not usable \(Redis "
                           r"refused the [a-z]+ script: READONLY " % self.redis.port, since=mark,
                           timeout=15)
            status, body = self.readyz(px)
            self.assertEqual(status, 200, body)
            self.assertEqual(self.shared_check(px)["state"], "local", body)
            m = pt.metrics(px)
            self.assertGreaterEqual(m.value("apple_auth_proxy_shared_state_fallbacks_total"), 1)
            self.assertEqual(m.value("apple_auth_proxy_shared_state_up"), 0)
        # reconnections keep being refused by the probe: not used, and not logged again
        time.sleep(3)
        for px, mark in zip(self.px, marks):
            self.assertEqual(self.shared_check(px)["state"], "local")
            self.assertEqual(len(re.findall(r"is not usable|using Redis",
                                            px.stderr_text()[mark:])), 1,
                             px.stderr_text()[mark:])
        statuses = [self.get(self.px[0], secret=FALLBACK).status for _ in range(3)]
        self.assertEqual(statuses, [200, 200, 429])
        marks = [len(px.stderr_text()) for px in self.px]
        self.redis_cli("REPLICAOF", "NO", "ONE")
        for px, mark in zip(self.px, marks):
            self.wait_using_redis(px)
            pt.wait_stderr(px, r"shared state: using Redis", since=mark)
        statuses = [self.get(self.px[i % 2]).status for i in range(7)]
        self.assertEqual(statuses, [200] * 6 + [429])

    def test_redis_that_stops_answering_times_out_without_stalling(self):
        self.start_pair()
        self.redis.proc.proc.send_signal(signal.SIGSTOP)
        try:
            for i in range(6):
                t0 = time.monotonic()
                r = self.get(self.px[i % 2], secret=FAST, timeout=15)
                took = time.monotonic() - t0
                self.assertEqual(r.status, 200, r.body[:300])
                # a request waits at most about one timeout (checked four times per timeout)
                self.assertLess(took, TIMEOUT * 1.25 + 2.0, "request %d took %.2f s" % (i, took))
            for px in self.px:
                m = pt.metrics(px)
                self.assertGreaterEqual(m.value("apple_auth_proxy_shared_state_timeouts_total"),
                                        1)
                status, body = self.readyz(px)
                self.assertEqual(status, 200, body)
                self.assertNotIn("using Redis at", body)
        finally:
            self.redis.proc.proc.send_signal(signal.SIGCONT)
        for px in self.px:
            self.wait_using_redis(px)
        statuses = [self.get(self.px[i % 2]).status for i in range(8)]
        self.assertEqual(statuses, [200] * 6 + [429] * 2)

    def test_a_decision_pending_on_redis_blocks_nothing_else(self):
        # one worker; Redis stopped and a long timeout: while a rate-limited request waits for
        # its decision, the worker serves a client without a rate at once
        self.start_pair(workers=1, timeout=5)
        self.redis.proc.proc.send_signal(signal.SIGSTOP)
        self.addCleanup(lambda: self.redis.proc.proc.send_signal(signal.SIGCONT))
        pending = {}

        def wait_for_redis():
            t0 = time.monotonic()
            pending["status"] = self.get(self.px[0], secret=FAST, timeout=30).status
            pending["took"] = time.monotonic() - t0

        t = threading.Thread(target=wait_for_redis)
        t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        r = self.get(self.px[0], secret=PRIORITY)
        took = time.monotonic() - t0
        self.assertEqual(r.status, 200, r.body[:300])
        t.join(30)
        # the rate-limited request was still waiting when the other was served
        self.assertEqual(pending.get("status"), 200)
        self.assertGreater(pending["took"], 0.5 + took, (pending, took))
        self.assertLess(took, 3.0)  # well inside the 5 s the other waits at most

    def raw_request(self, secret, path="/v1/apps"):
        return ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Authorization: Bearer %s\r\n\r\n"
                % (path, secret)).encode()

    def test_client_gone_while_its_rate_decision_is_pending(self):
        self.start_pair()
        px = self.px[0]
        # replies that arrive after the client left (Redis answering within a millisecond
        # or two) ...
        for _ in range(40):
            with socket.create_connection(("127.0.0.1", px.port)) as s:
                s.sendall(self.raw_request(FAST))
        # ... and waits that end when Redis is dropped for being too slow
        self.redis.proc.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", px.port)) as s:
                    s.sendall(self.raw_request(FAST))
            time.sleep(TIMEOUT * 3)
        finally:
            self.redis.proc.proc.send_signal(signal.SIGCONT)
        self.wait_using_redis(px)
        self.assertTrue(px.alive())
        self.assertEqual(self.get(px, secret=FAST).status, 200)

    def test_gateways_with_their_own_key_prefix_do_not_share(self):
        # two gateways on one Redis, each with its own key_prefix: a client's burst spent on
        # one is whole on the other
        self.start_pair()
        self.assertEqual([self.get(self.px[0]).status for _ in range(7)], [200] * 6 + [429])
        with open(self.px[0].config_path) as f:
            cfg = json.load(f)
        cfg["shared_state"]["key_prefix"] = "other%d:" % os.getpid()
        path = os.path.join(h.new_dir("other-gateway"), "config.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        os.chmod(path, 0o600)
        other = h.start_proxy(path)
        self.addCleanup(other.stop)
        self.wait_using_redis(other)
        self.assertEqual([self.get(other).status for _ in range(7)], [200] * 6 + [429])
        self.assertEqual(self.get(self.px[1]).status, 429)
        keys = self.redis_cli("--scan", "--pattern", "other%d:rate:*" % os.getpid()).split()
        self.assertEqual(keys, ["other%d:rate:limited" % os.getpid()])

    def test_redis_named_by_host_name(self):
        # the name goes through the worker's own resolver (hiredis would block on it); the
        # hosts file answers for localhost, with 127.0.0.1 or ::1 (Redis listens on both)
        self.redis.stop()
        self.redis = Redis(port=self.redis.port, bind="127.0.0.1 ::1")
        self.addCleanup(self.redis.stop)
        self.start_pair(redis_host="localhost")
        statuses = [self.get(self.px[i % 2]).status for i in range(7)]
        self.assertEqual(statuses, [200] * 6 + [429])

    def test_redis_on_a_unix_socket(self):
        self.redis.stop()
        path = os.path.join(h.new_dir("redissock"), "redis.sock")
        self.redis = Redis(port=self.redis.port, unixsocket=path)
        self.addCleanup(self.redis.stop)
        self.start_pair(redis_host="unix:" + path)
        statuses = [self.get(self.px[i % 2]).status for i in range(7)]
        self.assertEqual(statuses, [200] * 6 + [429])

    def test_redis_password(self):
        self.redis.stop()
        self.redis = Redis(port=self.redis.port, password="s3cret-redis-pass")
        self.addCleanup(self.redis.stop)
        self.start_pair(password="s3cret-redis-pass")
        statuses = [self.get(self.px[i % 2]).status for i in range(7)]
        self.assertEqual(statuses, [200] * 6 + [429])
        for px in self.px:
            self.assertNotIn("s3cret-redis-pass", px.stderr_text())
            # read once, then removed from the environment like private_key_env
            self.assertNotIn(b"s3cret-redis-pass", pt.proc_bytes(px.pid, "environ"))

    def test_wrong_redis_password_falls_back(self):
        self.redis.stop()
        self.redis = Redis(port=self.redis.port, password="the-right-one")
        self.addCleanup(self.redis.stop)
        self.start_pair(password="a-wrong-one", wait=False)
        for px in self.px:
            pt.wait_stderr(px, r"is not usable \(AUTH refused: ", timeout=15)
            status, body = self.readyz(px)
            self.assertEqual(status, 200, body)
            self.assertIn("is not usable; rate limits are local", body)
            self.assertNotIn("a-wrong-one", px.stderr_text())
        # each replica keeps its share of the burst of 6
        statuses = [self.get(self.px[0]).status for _ in range(4)]
        self.assertEqual(statuses, [200, 200, 200, 429])

    def test_pipelined_requests_after_a_decision_from_redis(self):
        self.start_pair()
        with h.HttpClient(self.px[0].port) as c:
            c.send(self.raw_request(LIMITED) * 3)
            statuses = [c.read_response().status for _ in range(3)]
        self.assertEqual(statuses, [200, 200, 200])
        m = pt.metrics(self.px[0])
        self.assertEqual(m.value("apple_auth_proxy_shared_rate_decisions_total", where="redis"), 3)


if __name__ == "__main__":
    unittest.main()
