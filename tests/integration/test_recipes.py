#!/usr/bin/python3
"""test_recipes: docs/recipes.md and every program in docs/examples/ against the stand-in.

One stand-in for Apple (tests/upstream/standin.py with standin_recipes.py) and one proxy with
routes for WeatherKit (/api/v1/), the App Store Server API (/inApps/), App Store Connect (/,
rewrite_links on) and, for comparison, App Store Connect under /raw/ with rewrite_links off.

- every docs/examples/python/*.py (/usr/bin/python3) and docs/examples/node/*.mjs (node, when
  installed) runs with APPLE_PROXY_URL at the proxy and must exit 0 printing its markers; the
  stand-in must have seen only valid tokens;
- some Python examples again through HTTP_PROXY with Apple's http:// origins;
- pagination: a client walks links.next to the end, by base URL and as an HTTP_PROXY client;
- bodies that must pass untouched: the gzip sales report (a file, not a content coding), a
  JSON body with Content-Encoding: gzip, and everything on a rewrite_links: false route.
"""
import glob
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

ASC = "api.appstoreconnect.apple.com"
WK = "weatherkit.apple.com"
SK = "api.storekit.itunes.apple.com"
SK_SANDBOX = "api.storekit-sandbox.itunes.apple.com"
MAPS = "maps-api.apple.com"
BUSINESS = "api-business.apple.com"
EXAMPLES = os.path.join(h.SOURCE_DIR, "docs", "examples")
NODE = shutil.which("node")
SALES = ("/v1/salesReports?filter[frequency]=DAILY&filter[reportType]=SALES"
         "&filter[reportSubType]=SUMMARY&filter[vendorNumber]=12345678&filter[reportDate]=2026-03-01")

# What each example prints when it works against the stand-in (regular expressions), and its
# arguments. Every program in docs/examples/{python,node} must be listed here.
EXPECT = {
    "list_apps": (["3"], [r"^page 1: 3 apps \(of 7\)$", r"^page 3: 1 apps \(of 7\)$",
                          r"6443410101  com\.example\.demo ", r"^total: 7 apps in 3 pages$"]),
    "in_app_purchases": ([], [r"^app 6443410101: 4 in-app purchases$", r"com\.example\.demo\.pro\.unlock +NON_CONSUMABLE",
                              r"^1 subscription groups$", r"com\.example\.demo\.premium\.yearly +ONE_YEAR +level 2"]),
    "testflight_builds": ([], [r"^app 6443410101: 5 builds, newest first$", r"^  build 44 .*PROCESSING$",
                               r"^3 beta groups$", r"External Beta \(external\) https://testflight\.apple\.com/join/"]),
    "testflight_invite": ([], [r"^created beta tester \S+ \(tester@example\.com\) in group \S+$",
                               r"^invitation \S+ sent for app 6443410101$"]),
    "xcode_cloud": ([], [r"^2 Xcode Cloud products$", r"^product \S+  Demo Pro \(APP\)$",
                         r"^  workflow \S+  Release$"]),
    "xcode_cloud_start_build": ([], [r"^started build run \S+: number \d+, PENDING$"]),
    "users": ([], [r"^4 users$", r"jane@example\.com +Jane Appleseed +ADMIN$"]),
    "invite_user": ([], [r"^invited new\.developer@example\.com as DEVELOPER; invitation \S+ expires \d{4}-"]),
    "provisioning": ([], [r"^bundle ID +com\.example\.demo +IOS$", r"^certificate +DISTRIBUTION +expires 2027-02-11",
                          r"^device +00008120-\S+ +ENABLED +Jane's iPhone$", r"^profile +IOS_APP_STORE +ACTIVE +Demo App Store$"]),
    "app_versions": ([], [r"^version 1\.2 \(IOS\): PREPARE_FOR_SUBMISSION$", r"^version 1\.1 \(IOS\): READY_FOR_DISTRIBUTION$",
                          r"^  de-DE: keywords="]),
    "app_clips": ([], [r"^app 6443410101: 1 App Clips$", r"com\.example\.demo\.Clip$"]),
    "sales_report": ([], [r"^saved sales_12345678_latest\.txt\.gz: \d+ bytes gzip \(application/a-gzip\), 4 rows$",
                          r"Pro Unlock +type IA1 +units +3", r"^total units: 51$"]),
    "perf_metrics": ([], [r"\(application/vnd\.apple\.xcode-metrics\+json\)$",
                          r"iOS LAUNCH +launchTime +All iPhones, percentile\.fifty: 1\.12 Seconds in 1\.1$",
                          r"regression: Launch time increased"]),
    "customer_reviews": ([], [r"^\*\* +2026-02-25 DEU 'Crashes on launch'|^\*\* +2026-02-25 DEU \"Crashes on launch\"",
                              r"^5 reviews; by rating: .*; mean of these reviews: 3\.80$"]),
    "review_response": ([], [r"^response \S+ to review \S+: PENDING_PUBLISH$"]),
    "analytics_reports": ([], [r"^(created )?report request \S+ \(ONGOING\)", r"APP_STORE_COMMERCE: App Downloads Standard$",
                               r"^2026-03-13: segment \S+ \d+ bytes, 3 rows, 60 downloads$",
                               r"First-time download +US 42$"]),
    "weatherkit": ([], [r"^available data sets: currentWeather, forecastDaily$", r"^now: Clear, 12\.5 °C, humidity 60%$",
                        r"^  \d{4}-\d\d-\d\d  Rain +"]),
    "transaction_history": ([], [r"^com\.example\.demo \(Production\): 7 transactions in 3 pages$",
                                 r"Auto-Renewable Subscription +com\.example\.demo\.premium\.monthly$"]),
    "maps": ([], [r"^geocode '1 Apple Park Way, Cupertino': 37\.3349, -122\.009 \(United States\)$",
                  r"^search 'coffee': 1 results; first: coffee \(Cafe\)$",
                  r"^directions Cupertino -> San Francisco: 12\.3 km, 15 min by Automobile$"]),
    "business_devices": ([], [r"^2 devices$", r"^  XABC123X0ABC123X0 +iPad Air +ASSIGNED$",
                              r"^MDM server 1F97349736CF4614A94F624E705841AD  Example MDM$",
                              r"^assigning XABC123X0ABC123X0 to Example MDM: activity \S+ IN_PROGRESS$"]),
    "subscription_status": ([], [r"^com\.example\.demo \(Production\)$",
                                 r"group 21450001: com\.example\.demo\.premium\.monthly is active, expires \d{4}-\d\d-\d\d, auto-renew on$"]),
}


def example_env(extra):
    """A minimal environment: nothing inherited that could steer an HTTP client elsewhere."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "HOME": h.workdir(), "NO_COLOR": "1"}
    env.update(extra)
    return env


class Recipes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.keys = {p: h.make_key() for p in ("app-store-connect", "weatherkit", "app-store-server",
                                              "maps", "apple-business")}
        cls.up = h.start_standin()
        ca = h.get_certs()["ca_cert"]
        cls.creds = {"asc": h.credential("app-store-connect", cls.keys["app-store-connect"]),
                     "weather": h.credential("weatherkit", cls.keys["weatherkit"]),
                     "storekit": h.credential("app-store-server", cls.keys["app-store-server"]),
                     "maps": h.credential("maps", cls.keys["maps"], token_address=cls.up.address,
                                          token_ca_file=ca),
                     "business": h.credential("apple-business", cls.keys["apple-business"],
                                              token_address=cls.up.address, token_ca_file=ca)}
        # the routes of docs/recipes.md, plus /raw/ without rewrite_links
        routes = [h.route(cls.up, "weatherkit", "weather", path_prefix="/api/v1/"),
                  h.route(cls.up, "maps", "maps", path_prefix="/maps/", strip_prefix="/maps"),
                  h.route(cls.up, "apple-business", "business", path_prefix="/business/",
                          strip_prefix="/business"),
                  h.route(cls.up, "app-store-server-sandbox", "storekit", path_prefix="/inApps/",
                          host=SK_SANDBOX),
                  h.route(cls.up, "app-store-server-sandbox", "storekit",
                          path_prefix="/sandbox/inApps/", strip_prefix="/sandbox"),
                  h.route(cls.up, "app-store-server", "storekit", path_prefix="/inApps/"),
                  h.route(cls.up, "app-store-connect", "asc", path_prefix="/raw/",
                          strip_prefix="/raw", rewrite_links=False),
                  h.route(cls.up, "app-store-connect", "asc", path_prefix="/", rewrite_links=True)]
        cls.px = h.start_proxy(h.write_config(cls.creds, routes, workers=2))
        cls.origin = "http://127.0.0.1:%d" % cls.px.port

    @classmethod
    def tearDownClass(cls):
        cls.px.stop()
        cls.up.stop()

    # -- helpers ---------------------------------------------------------------------------------

    def get(self, target, headers=None, host=None):
        with h.HttpClient(self.px.port, timeout=15) as c:
            return c.request("GET", target, headers, host=host)

    def direct(self, path, host=ASC):
        """GET straight from the stand-in with a correct App Store Connect token."""
        tok = h.mint_profile("app-store-connect", self.keys["app-store-connect"], self.creds["asc"])
        with self.up.client(host) as c:
            return c.request("GET", path, [("Authorization", "Bearer " + tok)], host=host)

    def assert_tokens_ok(self, since):
        reqs = [e for e in self.up.requests(since)
                if e["host"] in (ASC, WK, SK, SK_SANDBOX, MAPS, BUSINESS)]
        self.assertTrue(reqs, "the stand-in saw no request")
        bad = [(e["target"], e["token_error"]) for e in reqs if not e["token_ok"]]
        self.assertEqual(bad, [], "requests without a valid token")
        return reqs

    def run_example(self, argv, env, name, expect=None):
        cwd = h.new_dir("ex-" + name)
        t0 = time.monotonic()
        p = subprocess.run(argv, cwd=cwd, env=example_env(env), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, text=True,
                           errors="replace")
        out = p.stdout
        msg = "%s exited %s after %.1fs\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(argv), p.returncode, time.monotonic() - t0, out, p.stderr)
        self.assertEqual(p.returncode, 0, msg)
        for rx in EXPECT[name][1] if expect is None else expect:
            self.assertRegex(out, re.compile(rx, re.M), msg)
        return out

    def need_requests(self):
        p = subprocess.run(["/usr/bin/python3", "-c", "import requests"], capture_output=True)
        if p.returncode != 0:
            self.fail("the Python examples need requests: apt-get install python3-requests "
                      "(.ci/deps.sh installs it)")

    def examples(self, lang):
        ext = {"python": ".py", "node": ".mjs"}[lang]
        files = sorted(glob.glob(os.path.join(EXAMPLES, lang, "*" + ext)))
        self.assertTrue(files, "no examples in docs/examples/" + lang)
        names = [os.path.basename(f)[:-len(ext)] for f in files]
        self.assertEqual(sorted(set(names) - set(EXPECT)), [],
                         "examples without expectations in test_recipes.EXPECT")
        return list(zip(names, files))

    # -- the example programs --------------------------------------------------------------------

    def test_python_examples(self):
        self.need_requests()
        m = self.up.mark()
        for name, path in self.examples("python"):
            with self.subTest(example=name):
                self.run_example(["/usr/bin/python3", path] + EXPECT[name][0],
                                 {"APPLE_PROXY_URL": self.origin}, name)
        self.assert_tokens_ok(m)

    def test_node_examples(self):
        if NODE is None:
            print("test_node_examples: skipped: no `node` on PATH (the Node examples need "
                  "Node 18 or newer for the built-in fetch)", file=sys.stderr)
            self.skipTest("node is not installed")
        names = {n for n, _ in self.examples("python")}
        m = self.up.mark()
        for name, path in self.examples("node"):
            with self.subTest(example=name):
                self.assertIn(name, names, "each Node example has a Python twin")
                self.run_example([NODE, path] + EXPECT[name][0],
                                 {"APPLE_PROXY_URL": self.origin}, name)
        self.assertEqual(names, {n for n, _ in self.examples("node")},
                         "each Python example has a Node twin")
        self.assert_tokens_ok(m)

    def test_documented_sample_output_matches_its_command(self):
        """docs/recipes.md shows list_apps' output under the exact command that printed it:
        running that command prints those lines (every line but the "..." elision)."""
        self.need_requests()
        with open(os.path.join(os.path.dirname(EXAMPLES), "recipes.md")) as f:
            doc = f.read()
        m = re.search(r"^```\n\$ (python3 docs/examples/python/list_apps\.py[^\n]*)\n(.*?)^```",
                      doc, re.M | re.S)
        self.assertIsNotNone(m, "the list_apps sample in docs/recipes.md names no command")
        argv = m.group(1).split()
        shown = [l for l in m.group(2).splitlines() if l != "..."]
        path = os.path.join(h.SOURCE_DIR, argv[1])
        out = self.run_example(["/usr/bin/python3", path] + argv[2:],
                               {"APPLE_PROXY_URL": self.origin}, "list_apps", expect=[])
        lines = out.splitlines()
        for l in shown:
            self.assertIn(l, lines, "docs/recipes.md shows %r, which `%s` does not print:\n%s"
                          % (l, m.group(1), out))

    def test_python_examples_through_http_proxy(self):
        """requests honours HTTP_PROXY: Apple's own host names, in http:// URLs."""
        self.need_requests()
        py = os.path.join(EXAMPLES, "python")
        proxy = "http://127.0.0.1:%d" % self.px.port
        for name, origin in (("list_apps", "http://" + ASC), ("in_app_purchases", "http://" + ASC),
                             ("sales_report", "http://" + ASC), ("analytics_reports", "http://" + ASC),
                             ("weatherkit", "http://" + WK), ("transaction_history", "http://" + SK)):
            with self.subTest(example=name):
                m = self.up.mark()
                self.run_example(["/usr/bin/python3", os.path.join(py, name + ".py")] + EXPECT[name][0],
                                 {"APPLE_PROXY_URL": origin, "HTTP_PROXY": proxy}, name)
                reqs = self.assert_tokens_ok(m)
                self.assertTrue(all(e["host"] == origin[7:] or e["host"] == ASC for e in reqs),
                                [e["host"] for e in reqs])

    def test_app_store_server_sandbox(self):
        """The sandbox routes of docs/recipes.md: /sandbox/inApps/... and the sandbox host."""
        self.need_requests()
        py, node = os.path.join(EXAMPLES, "python"), os.path.join(EXAMPLES, "node")
        proxy = "http://127.0.0.1:%d" % self.px.port
        runs = [(["/usr/bin/python3", os.path.join(py, "transaction_history.py")],
                 {"APPLE_PROXY_URL": self.origin + "/sandbox"}, "transaction_history",
                 [r"^com\.example\.demo \(Sandbox\): 7 transactions in 3 pages$"]),
                (["/usr/bin/python3", os.path.join(py, "subscription_status.py")],
                 {"APPLE_PROXY_URL": "http://" + SK_SANDBOX, "HTTP_PROXY": proxy},
                 "subscription_status", [r"^com\.example\.demo \(Sandbox\)$", r" is active, "])]
        if NODE:
            runs.append(([NODE, os.path.join(node, "subscription_status.mjs")],
                         {"APPLE_PROXY_URL": self.origin + "/sandbox"}, "subscription_status",
                         [r"^com\.example\.demo \(Sandbox\)$", r" is active, "]))
        for argv, env, name, expect in runs:
            with self.subTest(argv=argv[1:], env=env):
                m = self.up.mark()
                self.run_example(argv, env, name, expect)
                reqs = self.assert_tokens_ok(m)
                self.assertEqual({e["host"] for e in reqs}, {SK_SANDBOX})
                self.assertTrue(all(e["path"].startswith("/inApps/") for e in reqs))

    # -- pagination ------------------------------------------------------------------------------

    def walk(self, first, host, origin, absolute):
        """Follows links.next from first; returns (ids, pages, responses)."""
        ids, targets, responses = [], [], []
        target = first
        while target:
            r = self.get(target, [("Accept-Encoding", "gzip")], host=host)
            self.assertEqual(r.status, 200, r.body)
            responses.append(r)
            text = r.body.decode()
            self.assertNotIn("https://" + ASC, text, "a link still points at Apple")
            self.assertNotIn("https:\\/\\/" + ASC, text)
            doc = json.loads(text)
            ids += [a["id"] for a in doc["data"]]
            for app in doc["data"]:
                self.assertTrue(app["links"]["self"].startswith(origin + "/v1/apps/"), app["links"])
            nxt = doc["links"].get("next")
            targets.append(target)
            if nxt is None:
                break
            self.assertTrue(nxt.startswith(origin + "/v1/apps?"), nxt)
            self.assertIn("limit=3", nxt)
            self.assertIn("cursor=", nxt)
            target = nxt if absolute else nxt[len(origin):]
            self.assertLess(len(targets), 10, "links.next never ends")
        return ids, targets, responses

    def check_walk(self, m, ids, targets, responses):
        self.assertEqual(len(targets), 3)
        self.assertEqual(len(ids), 7)
        self.assertEqual(len(set(ids)), 7)
        self.assertEqual(ids[0], "6443410101")
        for r in responses:
            # rewritten bodies change length: chunked, without Content-Length, identity coding
            self.assertEqual(r.header("Transfer-Encoding"), "chunked")
            self.assertIsNone(r.header("Content-Length"))
            self.assertIsNone(r.header("Content-Encoding"))
        reqs = [e for e in self.up.requests(m) if e["path"] == "/v1/apps"]
        self.assertEqual(len(reqs), 3, [e["target"] for e in reqs])
        for e in reqs:
            self.assertEqual(e["host"], ASC)
            self.assertTrue(e["token_ok"], e["token_error"])
            self.assertEqual(e["token_claims"]["iss"], self.creds["asc"]["issuer_id"])
            self.assertFalse([v for k, v in e["headers"] if k.lower() == "accept-encoding"],
                             "Accept-Encoding must not reach Apple on a rewrite_links route")
        self.assertNotIn("cursor=", reqs[0]["query"])
        self.assertIn("cursor=", reqs[1]["query"])
        self.assertNotEqual(reqs[1]["query"], reqs[2]["query"])

    def test_pagination_base_url(self):
        m = self.up.mark()
        ids, targets, responses = self.walk("/v1/apps?limit=3", None, self.origin, False)
        self.check_walk(m, ids, targets, responses)
        # the origin is the one the client used: localhost:PORT stays localhost:PORT
        local = "http://localhost:%d" % self.px.port
        r = self.get("/v1/apps?limit=3", host="localhost:%d" % self.px.port)
        self.assertTrue(r.json()["links"]["next"].startswith(local + "/v1/apps?cursor="), r.body)

    def test_pagination_http_proxy(self):
        m = self.up.mark()
        origin = "http://" + ASC
        ids, targets, responses = self.walk(origin + "/v1/apps?limit=3", ASC, origin, True)
        self.check_walk(m, ids, targets, responses)
        self.assertTrue(all(t.startswith(origin + "/v1/apps?") for t in targets))

    def test_pagination_with_filters_keeps_them(self):
        r = self.get("/v1/builds?filter%5Bapp%5D=6443410101&sort=-uploadedDate&limit=2")
        doc = r.json()
        self.assertEqual(doc["meta"]["paging"], {"total": 5, "limit": 2})
        nxt = doc["links"]["next"]
        self.assertTrue(nxt.startswith(self.origin + "/v1/builds?cursor="), nxt)
        self.assertIn("filter[app]=6443410101", nxt)
        seen = [b["attributes"]["version"] for b in doc["data"]]
        while nxt:
            doc = self.get(nxt[len(self.origin):]).json()
            seen += [b["attributes"]["version"] for b in doc["data"]]
            nxt = doc["links"].get("next")
        self.assertEqual(seen, ["44", "43", "42", "41", "40"])

    # -- bodies that pass untouched ----------------------------------------------------------------

    def test_sales_report_is_byte_identical(self):
        r = self.get(SALES, [("Accept-Encoding", "gzip")])
        d = self.direct(SALES)
        self.assertEqual((r.status, d.status), (200, 200), r.body)
        self.assertEqual(r.header("Content-Type"), "application/a-gzip")
        self.assertIsNone(r.header("Content-Encoding"))
        self.assertEqual(r.body, d.body)
        self.assertEqual(r.header("Content-Length"), str(len(d.body)))
        self.assertEqual(r.body[:2], b"\x1f\x8b")
        self.assertTrue(gzip.decompress(r.body).startswith(b"Provider\tProvider Country\tSKU\t"))

    def test_sales_report_missing_filter(self):
        r = self.get("/v1/salesReports?filter%5Bfrequency%5D=DAILY&filter%5BreportType%5D=SALES"
                     "&filter%5BreportSubType%5D=SUMMARY")
        self.assertEqual(r.status, 400)
        err = r.json()["errors"][0]
        self.assertEqual((err["status"], err["code"]), ("400", "PARAMETER_ERROR.REQUIRED"))
        self.assertEqual(err["source"], {"parameter": "filter[vendorNumber]"})

    def test_analytics_segment_file_is_byte_identical(self):
        app = "6443410103"
        body = json.dumps({"data": {"type": "analyticsReportRequests",
                                    "attributes": {"accessType": "ONE_TIME_SNAPSHOT"},
                                    "relationships": {"app": {"data": {"type": "apps", "id": app}}}}})
        with h.HttpClient(self.px.port) as c:
            r = c.request("POST", "/v1/analyticsReportRequests",
                          [("Content-Type", "application/json")], body)
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["data"]["id"]
        rep = self.get("/v1/analyticsReportRequests/%s/reports" % rid).json()["data"][0]
        inst = self.get("/v1/analyticsReports/%s/instances" % rep["id"]).json()["data"][0]
        seg = self.get("/v1/analyticsReportInstances/%s/segments" % inst["id"]).json()["data"][0]
        url = seg["attributes"]["url"]
        self.assertTrue(url.startswith(self.origin + "/__download/"), url)
        got = self.get(url[len(self.origin):])
        want = self.direct(url[len(self.origin):])
        self.assertEqual(got.status, 200)
        self.assertEqual(got.body, want.body)
        self.assertEqual(len(got.body), seg["attributes"]["sizeInBytes"])
        self.assertEqual(got.header("Content-Length"), str(len(want.body)))

    def test_content_encoded_json_passes_untouched(self):
        r = self.get("/__recipes/gzip-json", [("Accept-Encoding", "gzip")])
        d = self.direct("/__recipes/gzip-json")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("Content-Encoding"), "gzip")
        self.assertEqual(r.header("Content-Type"), "application/json")
        self.assertEqual(r.body, d.body)
        self.assertEqual(r.header("Content-Length"), str(len(d.body)))
        self.assertIn(b"https://" + ASC.encode() + b"/v1/apps?cursor=", gzip.decompress(r.body))

    def test_route_without_rewrite_links(self):
        m = self.up.mark()
        r = self.get("/raw/v1/apps?limit=3", [("Accept-Encoding", "gzip")])
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("Content-Encoding"), "gzip")
        doc = json.loads(gzip.decompress(r.body))
        self.assertTrue(doc["links"]["next"].startswith("https://%s/v1/apps?cursor=" % ASC))
        ev = self.up.requests(m)[-1]
        self.assertEqual(ev["target"], "/v1/apps?limit=3")
        self.assertEqual([v for k, v in ev["headers"] if k.lower() == "accept-encoding"], ["gzip"])
        r = self.get("/raw/v1/apps?limit=3")
        self.assertIsNone(r.header("Content-Encoding"))
        self.assertIsNotNone(r.header("Content-Length"))
        self.assertTrue(r.json()["links"]["next"].startswith("https://%s/" % ASC))

    def test_xcode_metrics_json_passes_intact(self):
        """application/vnd.apple.xcode-metrics+json is JSON to the rewriter (+json): it goes out
        chunked, and the document is the one Apple sent."""
        path = "/v1/apps/6443410101/perfPowerMetrics"
        r = self.get(path, [("Accept", "application/vnd.apple.xcode-metrics+json")])
        d = self.direct(path)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("Content-Type"), "application/vnd.apple.xcode-metrics+json")
        self.assertEqual(r.body, d.body)

    def test_post_error_passes(self):
        with h.HttpClient(self.px.port) as c:
            r = c.request("POST", "/v1/betaTesters", [("Content-Type", "application/json")],
                          json.dumps({"data": {"type": "betaTesters", "attributes": {}}}))
        self.assertEqual(r.status, 409, r.body)
        self.assertEqual(r.json()["errors"][0]["code"], "ENTITY_ERROR.ATTRIBUTE.REQUIRED")


if __name__ == "__main__":
    unittest.main()
