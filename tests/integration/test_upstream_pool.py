"""The upstream pool's size follows demand: with the shipped defaults, many concurrent
keep-alive clients stop opening new upstream connections once the pool has grown to what they
keep busy, and the connections demand no longer needs are closed afterwards.

Behavioural, not timed: the clients run in lock-step rounds (every client sends one request,
all wait for every answer, then the next round), so that in every round all of them are busy
at once and then all of their upstream connections are idle at once, the pattern that makes a
fixed-size pool close what the next round needs. The counts come from the access log's
`upstream_reused` and the stand-in's own accept events.
"""
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import proxytest as pt  # noqa: E402

CLIENTS = 200        # concurrent keep-alive clients, all on one worker
ROUNDS = 6           # the first warms the pool up; the others are measured
HOLD = "0.05"        # seconds the stand-in holds each request: every client is busy at once


def run_rounds(port, clients, rounds, tag):
    """clients threads, each with one keep-alive connection, send one request per round in
    lock-step. Returns the statuses seen (a list per round)."""
    barrier = threading.Barrier(clients, timeout=120)
    statuses = [[None] * clients for _ in range(rounds)]
    errors = []

    def client(i):
        try:
            with h.HttpClient(port, timeout=60) as c:
                for r in range(rounds):
                    barrier.wait()
                    resp = c.request("GET", "/__slow?delay=%s&tag=%s&r=%d&c=%d" % (HOLD, tag, r, i))
                    statuses[r][i] = resp.status
        except Exception as e:  # reported by the test, not lost in a thread
            errors.append(repr(e))
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors:
        raise AssertionError("%d clients failed, first: %s" % (len(errors), errors[0]))
    return statuses


class PoolFollowsDemand(unittest.TestCase):
    """The proxy as shipped (no limits configured), one worker, CLIENTS concurrent clients."""

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(admin_listen="127.0.0.1:0")
        cls.up = cls.st.standin

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def test_1_no_new_upstream_connections_after_warm_up(self):
        m = self.up.mark()
        statuses = run_rounds(self.st.port, CLIENTS, ROUNDS, "demand")
        for r, st in enumerate(statuses):
            self.assertEqual(st, [200] * CLIENTS, "round %d" % r)

        def ours(line):
            return "tag=demand&" in line.get("path", "")
        lines = [l for l in pt.access_log(self.st.proxy, CLIENTS * ROUNDS, timeout=30, pred=ours)
                 if ours(l)]
        self.assertEqual(len(lines), CLIENTS * ROUNDS)
        measured = [l for l in lines if "&r=0&" not in l["path"]]
        new = [l for l in measured if l["upstream_reused"] is not True]
        self.assertLessEqual(len(new), len(measured) // 100,
                             "%d of %d requests after the first round opened a new upstream "
                             "connection" % (len(new), len(measured)))
        # The stand-in agrees: about one connection per client, not one per request.
        accepts = len(self.up.events("accept", m))
        self.assertLessEqual(accepts, CLIENTS + len(measured) // 100)

    def test_2_idle_connections_beyond_demand_are_closed(self):
        # After test 1 the pool holds about CLIENTS idle connections. With no demand, the
        # windows that saw it pass (10 to 20 s) and the pool shrinks to one connection, long
        # before upstream_idle_timeout (30 s) would close any of them.
        def idle():
            return pt.metrics(self.st.proxy).value("apple_auth_proxy_upstream_connections",
                                                   state="idle")
        self.assertGreater(idle(), CLIENTS // 2)
        pt.wait_until(lambda: idle() <= 1, timeout=60, interval=0.5,
                      msg="the idle pool to shrink to what demand needs")
        # The one kept still serves.
        r = self.st.request("GET", "/__echo")
        self.assertEqual(r.status, 200)


class PoolHardCap(unittest.TestCase):
    """upstream_pool_size caps the pool however high demand goes: what is beyond the cap is
    closed when its exchange ends."""

    @classmethod
    def setUpClass(cls):
        cls.st = h.Stack(admin_listen="127.0.0.1:0", limits={"upstream_pool_size": 8})

    @classmethod
    def tearDownClass(cls):
        cls.st.stop()

    def test_1_cap_holds(self):
        run_rounds(self.st.port, 40, 2, "cap")
        idle = pt.metrics(self.st.proxy).value("apple_auth_proxy_upstream_connections",
                                               state="idle")
        self.assertLessEqual(idle, 8)
        self.assertGreaterEqual(idle, 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
