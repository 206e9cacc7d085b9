"""Core dumps are off (docs/security.md, "Secrets in memory"): the proxy sets RLIMIT_CORE to 0
and PR_SET_DUMPABLE to 0 at start, unless APPLE_AUTH_PROXY_DEBUG_CORE_DUMPS=1 asks for dumps
(with a warning).

Whether a process is dumpable shows in the owner of its /proc/PID files: the kernel gives
them to root when it is not. So the proxy runs here as an unprivileged user (setpriv, which
needs root), configured by the environment alone so that it reads no file.
"""
import os
import re
import select
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

NOBODY = 65534


def core_limits(pid):
    """(soft, hard) of "Max core file size" in /proc/PID/limits, as written there."""
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max core file size"):
                parts = re.split(r"\s{2,}", line.strip())
                return parts[1], parts[2]
    raise AssertionError("no core limit in /proc/%d/limits" % pid)


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("setpriv"),
                     "needs root and setpriv to run the proxy as another user")
class CoreDumpsTest(unittest.TestCase):
    def start(self, extra_env):
        key = h.make_key()
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
               "APP_STORE_CONNECT_API_KEY_KEY_ID": key.kid,
               "APP_STORE_CONNECT_API_KEY_ISSUER_ID": "69a6de95-023f-47e3-e053-5b8c7c11a4d1",
               "APP_STORE_CONNECT_API_KEY_KEY": key.private_pem.decode(),
               "APPLE_AUTH_PROXY_LISTEN": "127.0.0.1:0",
               "APPLE_AUTH_PROXY_ADMIN_LISTEN": "off"}
        env.update(extra_env)
        p = subprocess.Popen(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
                              "--clear-groups", h.BINARY, "serve"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(self.stop, p)
        err = b""
        deadline = time.monotonic() + 20
        while b"listening on" not in err:
            left = deadline - time.monotonic()
            if left <= 0 or p.poll() is not None:
                self.fail("the proxy did not start (exit %s): %s" % (p.poll(), err.decode()))
            if select.select([p.stderr], [], [], left)[0]:
                chunk = os.read(p.stderr.fileno(), 4096)
                if not chunk and p.poll() is not None:
                    continue
                err += chunk
        return p, err.decode(errors="replace")

    @staticmethod
    def stop(p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        p.stderr.close()

    def test_core_dumps_off_regression(self):
        p, err = self.start({})
        self.assertEqual(core_limits(p.pid), ("0", "0"))
        st = os.stat("/proc/%d/environ" % p.pid)
        self.assertEqual(st.st_uid, 0, "a dumpable process owns its /proc files: "
                                       "PR_SET_DUMPABLE was not cleared")
        self.assertNotIn("core dumps are on", err)

    def test_core_dumps_on_for_debugging_with_a_warning(self):
        p, err = self.start({"APPLE_AUTH_PROXY_DEBUG_CORE_DUMPS": "1"})
        self.assertEqual(os.stat("/proc/%d/environ" % p.pid).st_uid, NOBODY)
        self.assertNotEqual(core_limits(p.pid)[1], "0")
        self.assertIn("core dumps are on (APPLE_AUTH_PROXY_DEBUG_CORE_DUMPS=1)", err)
        self.assertIn("holds its private keys", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
