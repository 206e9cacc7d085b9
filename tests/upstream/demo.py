#!/usr/bin/python3
"""demo: `make demo` -- the proxy at work against a local stand-in for Apple, no account needed.

    /usr/bin/python3 tests/upstream/demo.py --binary build/apple-auth-proxy

Makes a throwaway P-256 key and a test CA in a temporary directory, starts the stand-in for
Apple (tests/upstream/standin.py: TLS on 127.0.0.1, checking tokens as Apple does) and the proxy
(one worker, loopback only), then shows step by step:

  1. Apple without a token: WeatherKit says 401 {"reason": "MISSING_AUTH"}, App Store Connect
     401 NOT_AUTHORIZED;
  2. the same requests through the proxy: 200; and a push notification, sent as plain HTTP/1.1
     and carried to the APNs stand-in (tests/upstream/standin_apns.py) over HTTP/2;
  3. the token the proxy added (`apple-auth-proxy token --decode`, and as the stand-in saw it);
  4. a token exchange: the Apple Maps Server API takes an access token that the proxy gets
     once for its signed token (GET /v1/token) and reuses;
  5. where to go next.

Everything is removed at the end. Exit status 0 when every step worked, 1 otherwise. Nothing
leaves 127.0.0.1.
"""
import argparse
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))

WK_HOST = "weatherkit.apple.com"
ASC_HOST = "api.appstoreconnect.apple.com"
WK_PATH = "/api/v1/weather/en/37.3349/-122.0090?dataSets=currentWeather"
MAPS_HOST = "maps-api.apple.com"
MAPS_PATHS = ("/maps/v1/geocode?q=1%20Apple%20Park%20Way", "/maps/v1/search?q=coffee")
ASC_PATH = "/v1/apps?limit=1"

BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


class StepFailed(Exception):
    pass


def heading(n, text):
    print()
    print("%s== %s%s ==%s" % (BOLD, "%s. " % n if n else "", text, RESET))
    print()


def say(text=""):
    print(text)


def show_response(r, max_lines=14):
    body = r.body.decode("utf-8", "replace")
    try:
        body = json.dumps(json.loads(body), indent=2)
    except ValueError:
        pass
    lines = body.splitlines()
    say("   HTTP %d %s" % (r.status, r.reason))
    for line in lines[:max_lines]:
        say("   " + line)
    if len(lines) > max_lines:
        say("   ... (%d more lines)" % (len(lines) - max_lines))


def expect(cond, what):
    if not cond:
        raise StepFailed(what)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(SOURCE_DIR, "build", "apple-auth-proxy"))
    args = ap.parse_args(argv)
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        sys.stderr.write("demo: %s is not an executable (run `make build` first)\n" % binary)
        return 1
    os.environ["AAP_BINARY"] = binary
    os.environ.setdefault("AAP_SOURCE_DIR", SOURCE_DIR)
    sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))
    import harness as h  # noqa: E402  (after AAP_BINARY is set)

    t0 = time.monotonic()
    step = "setup"
    try:
        heading(None, "Setting up (a throwaway key, a test CA, the stand-in for Apple, the proxy)")
        key = h.make_key()
        certs = h.get_certs()
        up = h.start_standin("good")
        apns = h.Standin(script=h.STANDIN_APNS, args=["--sandbox"])
        creds = {
            "asc": h.credential("app-store-connect", key),
            "weather": h.credential("weatherkit", key, team_id="DEF123GHIJ",
                                    service_id="com.example.weatherkit-client"),
            "push": h.credential("apns", key, team_id="DEF123GHIJ"),
            "maps": h.credential("maps", key, team_id="DEF123GHIJ", token_address=up.address,
                                 token_ca_file=certs["ca_cert"]),
        }
        routes = [h.route(apns, "https://api.push.apple.com", "push", path_prefix="/3/device/"),
                  h.route(up, "weatherkit", "weather", path_prefix="/api/v1/"),
                  h.route(up, "maps", "maps", path_prefix="/maps/", strip_prefix="/maps"),
                  h.route(up, "app-store-connect", "asc", path_prefix="/")]
        config = h.write_config(creds, routes, workers=1, listen=["127.0.0.1:0"])
        px = h.start_proxy(config)
        say("   key        %s (P-256, Key ID %s; made for this demo only)" % (
            key.private_path, key.kid))
        say("   test CA    %s" % certs["ca_cert"])
        say("   stand-in   https://127.0.0.1:%d  -- answers as %s," % (up.port, ASC_HOST))
        say("              %s and the other Apple hosts, and checks every token" % WK_HOST)
        say("              the way Apple does (signature, claims, lifetime)")
        say("   APNs       https://127.0.0.1:%d  -- HTTP/2 only, checks push tokens as APNs" %
            apns.port)
        say("   proxy      http://127.0.0.1:%d  -- %s serve --config %s" % (
            px.port, os.path.relpath(binary), config))
        say()
        say("   The proxy's routes (a real configuration leaves out \"address\", \"ca_file\" and")
        say("   the maps credential's \"token_address\", \"token_ca_file\", which point it at")
        say("   the stand-in instead of Apple):")
        for r in routes:
            say("     %-12s -> %-38s credential %s" % (r["path_prefix"], r["upstream"],
                                                        r["credential"]))

        step = "1"
        heading(1, "Calling Apple directly, without a token")
        say("   $ curl https://%s%s" % (WK_HOST, WK_PATH))
        with up.client(WK_HOST) as c:
            r = c.request("GET", WK_PATH, host=WK_HOST)
        show_response(r)
        expect(r.status == 401 and r.json() == {"reason": "MISSING_AUTH"},
               "WeatherKit without a token should answer 401 {\"reason\": \"MISSING_AUTH\"}")
        say()
        say("   $ curl https://%s%s" % (ASC_HOST, ASC_PATH))
        with up.client(ASC_HOST) as c:
            r = c.request("GET", ASC_PATH, host=ASC_HOST)
        show_response(r)
        expect(r.status == 401 and r.json()["errors"][0]["code"] == "NOT_AUTHORIZED",
               "App Store Connect without a token should answer 401 NOT_AUTHORIZED")
        say()
        say("   Both APIs want an ES256 JSON Web Token, each its own kind: WeatherKit refuses")
        say("   an App Store Connect token with the same MISSING_AUTH.")

        step = "2"
        heading(2, "The same requests through the proxy (plain HTTP, no token in the client)")
        m = up.mark()
        say("   $ curl http://127.0.0.1:%d%s" % (px.port, WK_PATH))
        with px.client() as c:
            r = c.request("GET", WK_PATH)
        show_response(r)
        expect(r.status == 200 and "currentWeather" in r.json(),
               "WeatherKit through the proxy should answer 200 with currentWeather")
        say()
        say("   $ curl http://127.0.0.1:%d%s" % (px.port, ASC_PATH))
        with px.client() as c:
            r = c.request("GET", ASC_PATH)
        show_response(r)
        expect(r.status == 200 and r.json()["data"][0]["type"] == "apps",
               "App Store Connect through the proxy should answer 200 with apps")
        say()
        say("   Apple's rate-limit header came back too: X-Rate-Limit: %s" %
            r.header("X-Rate-Limit"))
        say()
        device = "5a1b" + "0" * 60
        say("   A push notification: plain HTTP/1.1 in, HTTP/2 to APNs, one token per team")
        say("   $ curl http://127.0.0.1:%d/3/device/%s... -H 'apns-topic: com.example.app' \\" % (
            px.port, device[:8]))
        say("          -H 'apns-push-type: alert' -d '{\"aps\":{\"alert\":\"Hello\"}}'")
        with px.client() as c:
            r = c.request("POST", "/3/device/" + device,
                          {"apns-topic": "com.example.app", "apns-push-type": "alert"},
                          b'{"aps":{"alert":"Hello"}}')
        say("   HTTP %d %s" % (r.status, r.reason))
        for name in ("apns-id", "apns-unique-id"):
            say("   %s: %s" % (name, r.header(name)))
        expect(r.status == 200 and r.header("apns-id"),
               "the push through the proxy should answer 200 with an apns-id")
        pushed = apns.wait_for(lambda e: True, kind="push")
        hs = [e for e in apns.events("handshake")]
        say("   APNs saw it on an HTTP/2 connection (ALPN %s), token of team %s" % (
            hs[0]["alpn"] if hs else "?", pushed["team"]))
        seen = up.wait_for(lambda e: e["host"] == WK_HOST, since=m, kind="request")
        expect(seen["token_ok"], "the stand-in refused the proxy's WeatherKit token: %s" %
               seen["token_error"])

        step = "3"
        heading(3, "The token the proxy added")
        say("   $ apple-auth-proxy token --decode --config %s --credential weather" %
            os.path.basename(config))
        rc, out, err = h.run_cli(["token", "--decode", "--config", config,
                                  "--credential", "weather"])
        expect(rc == 0, "token --decode failed (%d): %s" % (rc, err.strip()))
        for line in out.rstrip().splitlines():
            say("   " + line)
        decoded = json.loads(out)
        expect(decoded["header"].get("id") == "DEF123GHIJ.com.example.weatherkit-client",
               "the WeatherKit token's header should carry id TeamID.ServiceID")
        say()
        auth = [v for k, v in seen["headers"] if k.lower() == "authorization"]
        expect(len(auth) == 1, "the stand-in should see exactly one Authorization header")
        token = auth[0].split(" ", 1)[1]
        hdr_b64, claims_b64, sig_b64 = token.split(".")
        sig = h.b64url_decode(sig_b64)
        say("   As the stand-in received it (Authorization: Bearer %s...%s):" % (
            token[:16], token[-6:]))
        say("     header  %s" % json.dumps(seen["token_header"]))
        say("     claims  %s" % json.dumps(seen["token_claims"]))
        c = seen["token_claims"]
        say("     exp - iat = %d s; iat is backdated a little for clocks that run ahead" % (
            c["exp"] - c["iat"]))
        say("     signature: %d base64url characters = %d raw bytes, R || S (ES256, RFC 7518)"
            % (len(sig_b64), len(sig)))
        say("     -- not the DER that OpenSSL returns, the most common Apple JWT bug")
        say("     verified by the stand-in with PyJWT and the public key: %s" % (
            "accepted" if seen["token_ok"] else "REFUSED"))
        expect(len(sig) == 64, "the ES256 signature must be 64 raw bytes, got %d" % len(sig))
        say()
        say("   The proxy signs once and reuses the token until shortly before it expires;")
        say("   nothing it writes (logs, errors, metrics) contains the token or the key.")

        step = "4"
        heading(4, "A token exchange: the Apple Maps Server API")
        say("   Maps does not take the signed token on its API: the proxy trades it once for an")
        say("   access token (GET https://%s/v1/token), keeps it, and exchanges again" % MAPS_HOST)
        say("   before it expires. It made the exchange as it started; two requests through it:")
        m = up.mark()
        for path in MAPS_PATHS:
            say()
            say("   $ curl 'http://127.0.0.1:%d%s'" % (px.port, path))
            with px.client() as c:
                r = c.request("GET", path)
            show_response(r, max_lines=6)
            expect(r.status == 200 and r.json()["results"],
                   "Maps through the proxy should answer 200 with results")
        exchanges = [e for e in up.requests() if e["host"] == MAPS_HOST and e["path"] == "/v1/token"]
        api = [e for e in up.requests(m) if e["host"] == MAPS_HOST and e["path"] != "/v1/token"]
        expect(len(exchanges) == 1 and len(api) == 2,
               "one exchange and two API requests expected, saw %d and %d" % (
                   len(exchanges), len(api)))
        say()
        say("   What the stand-in for Apple saw:")
        ex = exchanges[0]
        say("     GET /v1/token with the Maps auth token (verified: %s)" % (
            "accepted" if ex["token_ok"] else "REFUSED"))
        say("       header  %s" % json.dumps(ex["token_header"]))
        say("       claims  %s" % json.dumps(ex["token_claims"]))
        for e in api:
            tok = [v for k, v in e["headers"] if k.lower() == "authorization"][0].split(" ", 1)[1]
            say("     GET %s with the access token %s... (%s)" % (
                e["target"].split("?")[0], tok[:10], "accepted" if e["token_ok"] else "REFUSED"))
            expect(e["token_ok"], "the stand-in refused the access token: %s" % e["token_error"])
        say("   One exchange for both requests; the access token never left the proxy's cache")
        say("   except on requests to Maps.")

        step = "5"
        heading(5, "Where to go next")
        say("   README.md                 run it against Apple: `make run` with fastlane's")
        say("                             APP_STORE_CONNECT_API_KEY_* variables, or a config file")
        say("   docs/configuration.md     every configuration key, routes, limits")
        say("   docs/tokens.md            the token profiles, lifetimes and clock skew, and the")
        say("                             token exchange of Maps and Apple Business Manager")
        say("   docs/recipes.md           pushes from curl, Python and Node (alert, background,")
        say("                             Live Activity), Maps, Apple Business Manager")
        say("   docs/troubleshooting.md   MISSING_AUTH, NOT_AUTHORIZED, TLS errors, error codes")
        say("   apple-auth-proxy check -c my.json    validate a configuration and its keys")
        say()
        px.stop()
        up.stop()
        apns.stop()
        say("Demo finished in %.1f s; the temporary key, CA and logs are removed." % (
            time.monotonic() - t0))
        return 0
    except StepFailed as e:
        sys.stderr.write("\ndemo: step %s FAILED: %s\n" % (step, e))
    except Exception:  # noqa: BLE001 -- any failure is reported and makes the exit status 1
        sys.stderr.write("\ndemo: step %s FAILED with an error:\n" % step)
        traceback.print_exc()
    for name in ("px", "up", "apns"):
        p = locals().get(name)
        if p is not None:
            tail = p.stderr_text()[-1500:]
            if tail.strip():
                sys.stderr.write("--- %s stderr ---\n%s\n" % (
                    "proxy" if name == "px" else "stand-in", tail))
    return 1


if __name__ == "__main__":
    sys.exit(main())
