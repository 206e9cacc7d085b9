"""standin_gateway: Apple's "slow down" answers, for the gateway tests (test_gateway.py).

Imported by standin.py (one import line); registers its handlers with the stand-in's @route.
The stand-in's own App Store Connect limiter answers 429 RATE_LIMIT_EXCEEDED without a
Retry-After (App Store Connect documents none; it reports the hourly quota in X-Rate-Limit), so
the Retry-After forms the proxy must respect are served here, on request:

  GET /v1/__rate_limit?after=S[&form=seconds|date]     (api.appstoreconnect.apple.com)
      429 with App Store Connect's errors JSON (RATE_LIMIT_EXCEEDED) and
      Retry-After: S (delta seconds, the default form) or the HTTP-date S seconds from now.
  GET /inApps/v1/__rate_limit?after=S[&form=millis|seconds|date]
                                                  (api.storekit[-sandbox].itunes.apple.com)
      429 with the App Store Server API's error body {"errorCode": 4290000, "errorMessage":
      "Rate limit exceeded."} and, by default, Retry-After as that API sends it: the UNIX time,
      in milliseconds, at which requests may resume (now + S).

after defaults to 2 and may be fractional. Both answer only after the token check (a request
without a valid token gets the host's 401 first, as everywhere on the stand-in).
"""
import json
import time

from standin_host import host_globals


_S = host_globals("standin_gateway")
route = _S["route"]
Response = _S["Response"]
ASC_HOST = _S["ASC_HOST"]
STOREKIT_HOST = _S["STOREKIT_HOST"]
STOREKIT_SANDBOX_HOST = _S["STOREKIT_SANDBOX_HOST"]


def _retry_after(req, default_form):
    after = float(req.param("after", "2"))
    form = req.param("form", default_form)
    until = time.time() + after
    if form == "seconds":
        return "%d" % max(0, round(after))
    if form == "millis":
        return "%d" % int(until * 1000)
    if form == "date":
        return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(until))
    raise ValueError("form must be seconds, millis or date (got %r)" % form)


@route(r"^/v1/__rate_limit$", hosts=[ASC_HOST])
def h_asc_rate_limit(req, m):
    body = {"errors": [{"id": "3b5d1f8e-0c3a-4c52-9d7e-5f0a2b7c9e41", "status": "429",
                        "code": "RATE_LIMIT_EXCEEDED",
                        "title": "The request rate limit has been reached.",
                        "detail": "We've received too many requests for this API. "
                                  "Please wait and try again or slow down your request rate."}]}
    return Response(429, json.dumps(body).encode(),
                    [("Retry-After", _retry_after(req, "seconds"))],
                    content_type="application/json")


@route(r"^/inApps/v1/__rate_limit$", hosts=[STOREKIT_HOST, STOREKIT_SANDBOX_HOST])
def h_storekit_rate_limit(req, m):
    body = {"errorCode": 4290000, "errorMessage": "Rate limit exceeded."}
    return Response(429, json.dumps(body).encode(),
                    [("Retry-After", _retry_after(req, "millis"))],
                    content_type="application/json")
