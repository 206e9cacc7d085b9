#!/usr/bin/python3
"""test_intercept_clients: unmodified HTTPS clients of other languages through CONNECT
interception, each paginating App Store Connect's /v1/apps (7 apps, 3 a page) by following
Apple's own https:// links.next through the proxy:

- Go's net/http (Debian's golang-go) with HTTPS_PROXY and SSL_CERT_FILE;
- Ruby's net/http (Debian's ruby) with http_proxy (what net/http reads, for https:// too) and
  SSL_CERT_FILE;
- Node with undici's ProxyAgent (requestTls.ca);
- the npm libraries node-app-store-connect-api 5.0.6 (readAll, with a fetch through the
  ProxyAgent), @rage-against-the-pixel/app-store-connect-api 4.4.1 and appstore-connect-sdk
  2.0.0 (both unchanged, their fetch routed by undici's setGlobalDispatcher);
- node-app-store-connect-api by base URL on an HTTPS listener, whose links.next the proxy
  rewrites to its own https:// origin (the library takes anything else for a path).

The npm packages are installed from the npm registry into a cache next to the binary
(<build>/test-npm, reused while the pinned versions match). A missing tool or a failed install
fails the test: .ci/deps.sh installs golang-go, ruby, nodejs and npm.
"""
import json
import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

ASC = "api.appstoreconnect.apple.com"
FIRST = "https://%s/v1/apps?limit=3" % ASC
# Pinned: undici 6 still runs on Debian 12's Node 18.
NPM_PACKAGES = {"undici": "6.21.3", "appstore-connect-sdk": "2.0.0",
                "@rage-against-the-pixel/app-store-connect-api": "4.4.1",
                "node-app-store-connect-api": "5.0.6"}
NPM_DIR = os.environ.get("AAP_TEST_NPM_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(h.BINARY)), "test-npm")
EXPECT = {"pages": 3, "apps": 7}


def tool(name):
    path = shutil.which(name)
    if path is None:
        raise AssertionError("%s is not installed: run `make deps` (.ci/deps.sh installs it)" % name)
    return path


def npm_install():
    """Installs NPM_PACKAGES into NPM_DIR unless they are there already; fails loudly."""
    def installed():
        for name, version in NPM_PACKAGES.items():
            try:
                with open(os.path.join(NPM_DIR, "node_modules", name, "package.json")) as f:
                    if json.load(f).get("version") != version:
                        return False
            except (OSError, ValueError):
                return False
        return True

    if installed():
        return
    os.makedirs(NPM_DIR, exist_ok=True)
    with open(os.path.join(NPM_DIR, "package.json"), "w") as f:
        json.dump({"private": True, "name": "aap-test-npm", "dependencies": NPM_PACKAGES}, f)
    env = dict(os.environ)
    env.setdefault("npm_config_cache", os.path.join(NPM_DIR, ".npm-cache"))
    p = subprocess.run([tool("npm"), "install", "--no-audit", "--no-fund", "--no-save",
                        "--ignore-scripts"], cwd=NPM_DIR, env=env, capture_output=True,
                       text=True, timeout=600)
    if p.returncode != 0 or not installed():
        raise AssertionError("npm install of %s failed (the tests need the npm registry):\n%s%s"
                             % (", ".join("%s@%s" % kv for kv in NPM_PACKAGES.items()),
                                p.stdout[-3000:], p.stderr[-3000:]))


GO_PROGRAM = r"""
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
)

func main() {
	url := os.Args[1]
	pages, apps := 0, 0
	for url != "" {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer dummy")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		var doc struct {
			Data  []json.RawMessage `json:"data"`
			Links struct {
				Next string `json:"next"`
			} `json:"links"`
		}
		if resp.StatusCode != 200 {
			fmt.Fprintln(os.Stderr, "status", resp.StatusCode)
			os.Exit(1)
		}
		if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		resp.Body.Close()
		pages++
		apps += len(doc.Data)
		url = doc.Links.Next
	}
	fmt.Printf("{\"pages\": %d, \"apps\": %d}\n", pages, apps)
}
"""

RUBY_PROGRAM = r"""
require "json"
require "net/http"
uri = URI(ARGV[0])
pages = apps = 0
while uri
  # net/http reads http_proxy, also for https:// URIs (it sends CONNECT for those);
  # SSL_CERT_FILE feeds OpenSSL's default store.
  res = Net::HTTP.start(uri.host, uri.port, use_ssl: true) do |http|
    req = Net::HTTP::Get.new(uri)
    req["Authorization"] = "Bearer dummy"
    http.request(req)
  end
  raise "status #{res.code}" unless res.code == "200"
  doc = JSON.parse(res.body)
  pages += 1
  apps += doc["data"].length
  nxt = doc["links"]["next"]
  uri = nxt ? URI(nxt) : nil
end
puts JSON.generate({"pages" => pages, "apps" => apps})
"""

NODE_UNDICI = r"""
import { readFileSync } from "node:fs";
import { ProxyAgent, fetch } from "undici";
const dispatcher = new ProxyAgent({ uri: process.env.PROXY_URL,
                                    requestTls: { ca: readFileSync(process.env.CA_FILE) } });
let url = process.argv[2], pages = 0, apps = 0;
while (url) {
  const r = await fetch(url, { dispatcher, headers: { authorization: "Bearer dummy" } });
  if (r.status !== 200) throw new Error("status " + r.status);
  const doc = await r.json();
  pages++;
  apps += doc.data.length;
  url = doc.links.next;
}
console.log(JSON.stringify({ pages, apps }));
"""

# node-app-store-connect-api: its own fetch option, given one that goes through the proxy.
NODE_DFABULICH = r"""
import { readFileSync } from "node:fs";
import { ProxyAgent, fetch } from "undici";
import { api } from "node-app-store-connect-api";
const dispatcher = new ProxyAgent({ uri: process.env.PROXY_URL,
                                    requestTls: { ca: readFileSync(process.env.CA_FILE) } });
let pages = 0;
const viaProxy = (url, options) => { pages++; return fetch(url, { ...options, dispatcher }); };
const { readAll } = await api({ issuerId: "00000000-0000-0000-0000-000000000000",
                                apiKey: "DUMMYKEY00", privateKey: readFileSync(process.env.DUMMY_KEY, "utf8"),
                                fetch: viaProxy, automaticRetries: 0 });
const { data } = await readAll("https://api.appstoreconnect.apple.com/v1/apps?limit=3");
console.log(JSON.stringify({ pages, apps: data.length }));
"""

# @rage-against-the-pixel/app-store-connect-api: its module-wide client is fixed to Apple's
# https:// origin; Node's fetch goes through the proxy with undici's global dispatcher.
NODE_RAGE = r"""
import { readFileSync } from "node:fs";
import { ProxyAgent, setGlobalDispatcher } from "undici";
import { AppStoreConnectClient } from "@rage-against-the-pixel/app-store-connect-api";
setGlobalDispatcher(new ProxyAgent({ uri: process.env.PROXY_URL,
                                     requestTls: { ca: readFileSync(process.env.CA_FILE) } }));
const client = new AppStoreConnectClient({ bearerToken: "dummy" });
let query = { limit: 3 }, pages = 0, apps = 0;
for (;;) {
  const { data, error } = await client.api.Apps.appsGetCollection({ query });
  if (error) throw new Error(JSON.stringify(error));
  pages++;
  apps += data.data.length;
  if (!data.links.next) break;
  query = Object.fromEntries(new URL(data.links.next).searchParams);
}
console.log(JSON.stringify({ pages, apps }));
"""

# appstore-connect-sdk: the default base URL, the same global dispatcher; links.next is read
# for its query (the client prefixes every url with its base URL).
NODE_SDK = r"""
import { readFileSync } from "node:fs";
import { ProxyAgent, setGlobalDispatcher } from "undici";
import { createClient, appsGetCollection } from "appstore-connect-sdk";
setGlobalDispatcher(new ProxyAgent({ uri: process.env.PROXY_URL,
                                     requestTls: { ca: readFileSync(process.env.CA_FILE) } }));
const client = createClient({ bearerToken: "dummy" });
let query = { limit: 3 }, pages = 0, apps = 0;
for (;;) {
  const res = await appsGetCollection({ client, query });
  if (res.error) throw new Error(JSON.stringify(res.error));
  pages++;
  apps += res.data.data.length;
  if (!res.data.links.next) break;
  query = Object.fromEntries(new URL(res.data.links.next).searchParams);
}
console.log(JSON.stringify({ pages, apps }));
"""


# node-app-store-connect-api by base URL: it treats every URL not starting with https:// as a
# path of its own, so readAll needs the links rewritten to https:// -- an HTTPS listener's.
NODE_DFABULICH_BASE_URL = r"""
import { readFileSync } from "node:fs";
import { api } from "node-app-store-connect-api";
let pages = 0;
const counting = (url, options) => { pages++; return fetch(url, options); };
const { readAll } = await api({ issuerId: "00000000-0000-0000-0000-000000000000",
                                apiKey: "DUMMYKEY00", privateKey: readFileSync(process.env.DUMMY_KEY, "utf8"),
                                urlBase: process.env.BASE_URL, fetch: counting, automaticRetries: 0 });
const { data } = await readAll("apps?limit=3");
console.log(JSON.stringify({ pages, apps: data.length }));
"""


class InterceptClients(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.key = h.make_key()
        cls.up = h.start_standin()
        cls.config = h.write_config(
            {"asc": h.credential("app-store-connect", cls.key)},
            [h.route(cls.up, "app-store-connect", "asc")],
            intercept={"ca_dir": os.path.join(h.new_dir("icpt-clients"), "ca")})
        cls.px = h.start_proxy(cls.config)
        rc, out, err = h.run_cli(["ca-cert", "-c", cls.config])
        if rc != 0:
            raise AssertionError("ca-cert failed: %s" % err)
        cls.work = h.new_dir("clients")
        cls.ca = os.path.join(cls.work, "ca.pem")
        with open(cls.ca, "w") as f:
            f.write(out)
        cls.proxy_url = "http://127.0.0.1:%d" % cls.px.port
        # A key the libraries sign their own (discarded) tokens with.
        cls.dummy_key = h.make_key(publish=False).private_path

    def run_client(self, argv, env=None, cwd=None, timeout=300):
        mark = self.up.mark()
        e = h.clean_env({"HTTPS_PROXY": self.proxy_url, "https_proxy": self.proxy_url,
                         "SSL_CERT_FILE": self.ca, "PROXY_URL": self.proxy_url,
                         "CA_FILE": self.ca, "DUMMY_KEY": self.dummy_key})
        e.update(env or {})
        e = {k: v for k, v in e.items() if v is not None}
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd)
        self.assertEqual(p.returncode, 0, "%s failed:\n%s\n%s" % (argv[0], p.stdout, p.stderr))
        last = [line for line in p.stdout.splitlines() if line.startswith("{")][-1]
        self.assertEqual(json.loads(last), EXPECT, p.stdout)
        reqs = self.up.requests(since=mark)
        self.assertEqual(len(reqs), 3, reqs)
        for ev in reqs:
            auth = [v for k, v in ev["headers"] if k.lower() == "authorization"]
            self.assertEqual(len(auth), 1)
            self.assertNotEqual(auth[0], "Bearer dummy")
            h.decode_token(auth[0].split(" ", 1)[1], self.key)  # the proxy's, verified
            self.assertTrue(ev["path"].startswith("/v1/apps"), ev["path"])

    def test_go_net_http(self):
        go = tool("go")
        src = os.path.join(self.work, "paginate.go")
        with open(src, "w") as f:
            f.write(GO_PROGRAM)
        cache = os.path.join(os.path.dirname(NPM_DIR), "test-go-cache")
        self.run_client([go, "run", src, FIRST],
                        env={"GOCACHE": cache, "GOPATH": os.path.join(self.work, "gopath"),
                             "GO111MODULE": "off", "GOPROXY": "off", "GOFLAGS": ""})

    def test_ruby_net_http(self):
        self.run_client([tool("ruby"), "-e", RUBY_PROGRAM, FIRST],
                        env={"http_proxy": self.proxy_url})

    def node(self, name, program, extra=()):
        npm_install()
        path = os.path.join(NPM_DIR, name + ".mjs")  # next to node_modules, for resolution
        with open(path, "w") as f:
            f.write(program)
        self.run_client([tool("node"), path] + list(extra), cwd=NPM_DIR)

    def test_node_undici_proxy_agent(self):
        self.node("undici_proxy_agent", NODE_UNDICI, [FIRST])

    def test_npm_node_app_store_connect_api(self):
        self.node("node_app_store_connect_api", NODE_DFABULICH)

    def test_npm_rage_against_the_pixel(self):
        self.node("rage_against_the_pixel", NODE_RAGE)

    def test_npm_appstore_connect_sdk(self):
        self.node("appstore_connect_sdk", NODE_SDK)

    def test_npm_node_app_store_connect_api_base_url_on_https_listener(self):
        certs = h.get_certs()
        cfg = h.write_config({"asc": h.credential("app-store-connect", self.key)},
                             [h.route(self.up, "app-store-connect", "asc")],
                             listen=[{"address": "127.0.0.1:0",
                                      "tls": {"cert_file": certs["good_cert"],
                                              "key_file": certs["good_key"]}}])
        px = h.start_proxy(cfg)
        try:
            npm_install()
            path = os.path.join(NPM_DIR, "node_app_store_connect_api_base_url.mjs")
            with open(path, "w") as f:
                f.write(NODE_DFABULICH_BASE_URL)
            # No proxy variables: the base URL is the proxy's HTTPS listener.
            self.run_client([tool("node"), path], cwd=NPM_DIR,
                            env={"BASE_URL": "https://localhost:%d" % px.port,
                                 "NODE_EXTRA_CA_CERTS": certs["ca_cert"], "HTTPS_PROXY": None,
                                 "https_proxy": None})
        finally:
            px.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
