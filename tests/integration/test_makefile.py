"""The Makefile's configure step: a configure that fails never poisons the next `make`.

A first `make` on a new machine can fail in CMake (a missing package, a bad compiler) after
CMake has already written CMakeCache.txt. The next `make` must configure again, not take the
half-written build directory as configured and fail in `cmake --build` with "Makefile: No such
file or directory" until the directory is removed by hand. Each case configures a throw-away
build directory (tests off, so it takes seconds); nothing is built.
"""
import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def make(target, build_dir, env=None):
    """`make -C SOURCE_DIR target` with BUILD_DIR=build_dir; returns (rc, output)."""
    e = h.clean_env(env)
    e["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    p = subprocess.run(["make", "-C", h.SOURCE_DIR, target, "BUILD_DIR=" + build_dir,
                        "CMAKE_FLAGS=-DBUILD_TESTING=OFF"],
                       env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       errors="replace", timeout=300)
    return p.returncode, p.stdout


@unittest.skipUnless(shutil.which("make") and shutil.which("cmake"), "make and cmake")
class ConfigureIsRetried(unittest.TestCase):
    def setUp(self):
        self.dir = h.new_dir("makebuild")

    def assert_configured(self):
        self.assertTrue(os.path.exists(os.path.join(self.dir, ".configured")))
        self.assertTrue(os.path.exists(os.path.join(self.dir, "Makefile")),
                        "configure did not run again: no Makefile in the build directory")

    def test_failed_configure_then_configure(self):
        # CC names no compiler: CMake fails after writing CMakeCache.txt (with that compiler in it).
        rc, failed = make("configure", self.dir, {"CC": "/nonexistent/cc"})
        self.assertNotEqual(rc, 0, failed)
        self.assertFalse(os.path.exists(os.path.join(self.dir, ".configured")), failed)
        rc, out = make("configure", self.dir)
        self.assertEqual(rc, 0, out)
        self.assert_configured()
        self.assertIn("configure failed; the next make configures", failed)

    def test_half_written_cache_is_not_a_configured_tree(self):
        # What a CMake run killed or failed midway leaves: a cache and no build files.
        with open(os.path.join(self.dir, "CMakeCache.txt"), "w") as f:
            f.write("# This is the CMakeCache file.\nCMAKE_BUILD_TYPE:STRING=Release\n")
        rc, out = make("configure", self.dir)
        self.assertEqual(rc, 0, out)
        self.assert_configured()

    def test_configured_tree_is_not_configured_again(self):
        rc, out = make("configure", self.dir)
        self.assertEqual(rc, 0, out)
        stamp = os.path.join(self.dir, ".configured")
        before = os.stat(stamp).st_mtime_ns
        rc, out = make("configure", self.dir)
        self.assertEqual(rc, 0, out)
        self.assertEqual(os.stat(stamp).st_mtime_ns, before)
        self.assertNotIn("Configuring done", out)


@unittest.skipUnless(shutil.which("make"), "make")
class RunPointsAtTheDemo(unittest.TestCase):
    """`make run` adds "make demo" to the proxy's exit 2 only when nothing was configured: a
    set of environment-only variables given in part (APNs, Maps, Apple Business Manager as much
    as App Store Connect) is a mistake to fix, and the demo is no answer to it. The proxy here
    is a script that answers like the real one; `-o build` leaves the build alone."""

    def run_make(self, env):
        d = h.new_dir("makerun")
        fake = os.path.join(d, "apple-auth-proxy")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho 'apple-auth-proxy: a configuration problem' >&2\nexit 2\n")
        os.chmod(fake, 0o755)
        e = h.clean_env(env)
        e["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        p = subprocess.run(["make", "-s", "-C", h.SOURCE_DIR, "-o", "build", "run",
                            "BUILD_DIR=" + d], env=e, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace", timeout=60)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn("a configuration problem", p.stdout)
        return p.stdout

    def test_nothing_configured_points_at_the_demo(self):
        for env in ({}, {"APNS_KEY_ID": ""}):
            with self.subTest(env=env):
                self.assertIn("make demo", self.run_make(env))

    def test_a_set_given_in_part_does_not(self):
        for name in ("APP_STORE_CONNECT_API_KEY_KEY_ID", "WEATHERKIT_KEY_ID", "APNS_KEY_ID",
                     "APNS_KEY_FILEPATH", "APPLE_MAPS_KEY_ID", "APPLE_BUSINESS_CLIENT_ID",
                     "APPLE_AUTH_PROXY_CONFIG"):
            with self.subTest(name=name):
                self.assertNotIn("make demo", self.run_make({name: "X"}))


if __name__ == "__main__":
    unittest.main()
