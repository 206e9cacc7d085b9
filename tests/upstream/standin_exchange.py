"""standin_exchange: the token exchanges of the Apple Maps Server API and of the Apple School and
Business Manager API, and the API paths behind them, checked as Apple checks them.

Imported by standin.py (one import line); registers its profiles and handlers there.

  maps-api.apple.com
    GET /v1/token         Authorization: Bearer <maps auth token>: verified with PyJWT (ES256,
                          kid, typ JWT, iss, iat, exp; origin a string when present); answers
                          {"accessToken": ..., "expiresInSeconds": 1800}
    GET /v1/geocode, /v1/search, /v1/directions, /v1/etas, /v1/reverseGeocode, /__echo
                          only with Authorization: Bearer <an access token it issued, unexpired>;
                          else 401 {"error": {"message": "Not Authorized", "details": []}}
  account.apple.com
    POST /auth/oauth2/token   form-encoded grant_type=client_credentials, client_id,
                          client_assertion_type=urn:ietf:params:oauth:client-assertion-type:
                          jwt-bearer, client_assertion, scope. The assertion: ES256 with a known
                          kid; iss = sub = client_id; aud https://account.apple.com/auth/oauth2/
                          v2/token; integer iat and exp, exp in the future, exp - iat at most 180
                          days; a jti never seen before. Answers {"access_token", "token_type":
                          "Bearer", "expires_in": 3600, "scope"}, or OAuth's {"error": ...,
                          "error_description": ...} with 400/401.
  api-business.apple.com (scope business.api), api-school.apple.com (scope school.api)
    GET /v1/orgDevices[/ID], GET /v1/mdmServers, GET /v1/mdmServers/ID/relationships/devices,
    POST /v1/orgDeviceActivities, /__echo: only with an access token of the host's scope.
  api.devicecheck.apple.com, api.development.devicecheck.apple.com
    POST /v1/validate_device_token, /v1/query_two_bits, /v1/update_two_bits, /__echo: the
    DeviceCheck token (ES256, kid; exactly iss and iat, iat within the last hour).

Test controls, on hosts without a profile (127.0.0.1, localhost):
  /__control/exchange?mode=M[&status=N][&expires=S][&delay=S][&times=K][&only=maps|business]
      how the token endpoints answer from now on (both of them, or only one), for K answers
      (default: until changed): ok (the default), status (HTTP N, default 500, with an OAuth error body),
      malformed (not JSON), missing (no token field), zero (expires 0), absurd (expires ten
      years), huge (a chunked 100 KiB body), slow (sleep delay seconds, then answer ok), close
      (close without an answer);
      expires: the lifetime of the tokens issued (default Apple's: 1800 maps, 3600 business)
  /__control/exchange/forget   forget every access token issued (the API answers 401 to them)
  /__control/exchange/reset    all of the above back to the defaults
"""
import json
import secrets
import threading
import time
import urllib.parse

import jwt

from standin_host import host_globals


_S = host_globals("standin_exchange")
route = _S["route"]
Response = _S["Response"]
_json = _S["_json"]
Profile = _S["Profile"]
TokenError = _S["TokenError"]
PROFILES = _S["PROFILES"]
GENERIC = _S["GENERIC"]
not_found = _S["not_found"]

MAPS_HOST = "maps-api.apple.com"
ACCOUNT_HOST = "account.apple.com"
BUSINESS_HOST = "api-business.apple.com"
SCHOOL_HOST = "api-school.apple.com"
DEVICECHECK_HOST = "api.devicecheck.apple.com"
DEVICECHECK_DEV_HOST = "api.development.devicecheck.apple.com"
BUSINESS_AUD = "https://account.apple.com/auth/oauth2/v2/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFE = 180 * 86400
SCOPE_OF_HOST = {BUSINESS_HOST: "business.api", SCHOOL_HOST: "school.api"}
MAPS_401 = {"error": {"message": "Not Authorized", "details": []}}


class ExchangeState:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.issued = {}   # access token -> (expires_at, kind, scope)
        self.jtis = set()
        self.mode, self.status, self.delay, self.times = "ok", 500, 0.0, None
        self.only = None   # "maps" or "business": the mode applies to that endpoint only
        self.expires = {"maps": 1800, "business": 3600}

    def take_mode(self, kind):
        with self.lock:
            if self.only is not None and self.only != kind:
                return "ok", 200, 0.0
            mode, status, delay = self.mode, self.status, self.delay
            if self.times is not None:
                self.times -= 1
                if self.times <= 0:
                    self.mode, self.times = "ok", None
            return mode, status, delay

    def issue(self, kind, scope):
        tok = secrets.token_urlsafe(48)
        with self.lock:
            life = self.expires[kind]
            self.issued[tok] = (time.time() + life, kind, scope)
        return tok, life

    def check(self, token, kind, scope=None):
        with self.lock:
            got = self.issued.get(token)
        if got is None:
            raise TokenError("not an access token this stand-in issued (or it was forgotten)")
        exp, k, s = got
        if k != kind:
            raise TokenError("an access token of another API")
        if exp <= time.time():
            raise TokenError("access token expired")
        if scope is not None and s != scope:
            raise TokenError("access token for scope %r, not %r" % (s, scope))

    def jti_seen(self, jti):
        with self.lock:
            if jti in self.jtis:
                return True
            self.jtis.add(jti)
            return False


STATE = ExchangeState()


def _exchange_answer(kind, ok_body):
    """The token endpoint's answer under the current test mode."""
    mode, status, delay = STATE.take_mode(kind)
    if mode == "slow":
        time.sleep(delay)
    if mode == "status":
        return _json({"error": "invalid_client", "error_description": "refused by the test"},
                     status)
    if mode == "malformed":
        return Response(200, b"<html>not json</html>", content_type="application/json")
    if mode == "close":
        return Response(0, raw=b"")
    if mode == "huge":
        return Response(200, b'{"pad": "' + b"x" * (100 * 1024) + b'"}', chunked=True,
                        content_type="application/json")
    body = ok_body()
    field = "expiresInSeconds" if kind == "maps" else "expires_in"
    if mode == "missing":
        body.pop("accessToken" if kind == "maps" else "access_token")
    elif mode == "zero":
        body[field] = 0
    elif mode == "absurd":
        body[field] = 10 * 365 * 86400
    return _json(body)


class MapsProfile(Profile):
    name = "maps"
    require_token = True
    require_typ = True

    def verify(self, req, token, keys, now):
        if req.path != "/v1/token":
            STATE.check(token, "maps")
            return {}, {}
        header, claims = self.check_signature(token, keys, now)
        if not isinstance(claims.get("iss"), str) or not claims["iss"]:
            raise TokenError("missing iss (the Team ID)")
        if "origin" in claims and not isinstance(claims["origin"], str):
            raise TokenError("origin is not a string")
        extra = set(claims) - {"iss", "iat", "exp", "origin"}
        if extra:
            raise TokenError("unexpected claims %s" % sorted(extra))
        return header, claims

    def unauthorized(self, req, reason):
        return _json(MAPS_401, 401)


class BusinessApiProfile(Profile):
    name = "apple-business"
    require_token = True

    def verify(self, req, token, keys, now):
        STATE.check(token, "business", SCOPE_OF_HOST[req.host])
        return {}, {}

    def unauthorized(self, req, reason):
        return _json({"errors": [{"status": "401", "code": "UNAUTHORIZED",
                                  "title": "Unauthorized", "detail": "Invalid access token"}]}, 401)


class DeviceCheckProfile(Profile):
    name = "devicecheck"
    require_token = True

    def verify(self, req, token, keys, now):
        header = jwt.get_unverified_header(token)
        if header.get("alg") != "ES256" or not isinstance(header.get("kid"), str):
            raise TokenError("header %r: need alg ES256 and kid" % header)
        key = keys.get(header["kid"])
        if key is None:
            raise TokenError("unknown kid %r" % header["kid"])
        try:
            claims = jwt.decode(token, key, algorithms=["ES256"],
                                options={"verify_exp": False, "verify_iat": False,
                                         "verify_aud": False, "require": []})
        except jwt.PyJWTError as e:
            raise TokenError("undecodable or badly signed token: %s" % e)
        if set(claims) != {"iss", "iat"}:
            raise TokenError("claims are %s, not exactly iss and iat" % sorted(claims))
        if not isinstance(claims["iat"], int) or not now - 3600 < claims["iat"] <= now + 60:
            raise TokenError("iat %r is not within the last hour" % claims["iat"])
        return header, claims

    def unauthorized(self, req, reason):
        return Response(401, b"Unable to verify authorization token", content_type="text/plain")


PROFILES[MAPS_HOST] = MapsProfile()
PROFILES[BUSINESS_HOST] = BusinessApiProfile()
PROFILES[SCHOOL_HOST] = BusinessApiProfile()
PROFILES[DEVICECHECK_HOST] = DeviceCheckProfile()
PROFILES[DEVICECHECK_DEV_HOST] = DeviceCheckProfile()


@route(r"^/__control/exchange(?:/(forget|reset))?$")
def h_exchange_control(req, m):
    if req.profile is not GENERIC:
        return not_found(req)
    with STATE.lock:
        if m.group(1) == "forget":
            STATE.issued.clear()
        elif m.group(1) == "reset":
            STATE.reset()
        else:
            STATE.mode = req.param("mode", STATE.mode)
            STATE.status = int(req.param("status", STATE.status))
            STATE.delay = float(req.param("delay", STATE.delay))
            t = req.param("times")
            STATE.times = int(t) if t else None
            STATE.only = req.param("only")
            if req.param("expires"):
                STATE.expires = {"maps": int(req.param("expires")),
                                 "business": int(req.param("expires"))}
        return _json({"mode": STATE.mode, "expires": STATE.expires, "issued": len(STATE.issued)})


@route(r"^/v1/token$", hosts=[MAPS_HOST])
def h_maps_token(req, m):
    def ok():
        tok, life = STATE.issue("maps", None)
        return {"accessToken": tok, "expiresInSeconds": life}
    return _exchange_answer("maps", ok)


@route(r"^/v1/(geocode|reverseGeocode|search|searchAutocomplete|directions|etas)$",
       hosts=[MAPS_HOST])
def h_maps_api(req, m):
    what = m.group(1)
    q = dict(req.params())
    if what == "geocode":
        return _json({"results": [{"coordinate": {"latitude": 37.3349, "longitude": -122.009},
                                   "name": q.get("q", ""), "country": "United States",
                                   "countryCode": "US"}]})
    if what == "search":
        return _json({"results": [{"name": q.get("q", ""), "poiCategory": "Cafe",
                                   "coordinate": {"latitude": 37.33, "longitude": -122.03}}]})
    if what == "directions":
        return _json({"origin": {"name": q.get("origin", "")},
                      "destination": {"name": q.get("destination", "")},
                      "routes": [{"distanceMeters": 12345, "durationSeconds": 900,
                                  "transportType": q.get("transportType", "Automobile")}]})
    return _json({"results": [], "query": q})


def _oauth_error(status, error, description):
    return _json({"error": error, "error_description": description}, status)


def verify_assertion(assertion, client_id, keys, now):
    """Raises TokenError with the reason Apple would refuse the client assertion for."""
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError as e:
        raise TokenError("undecodable header: %s" % e)
    if header.get("alg") != "ES256":
        raise TokenError("alg is %r, not ES256" % header.get("alg"))
    key = keys.get(header.get("kid")) if isinstance(header.get("kid"), str) else None
    if key is None:
        raise TokenError("unknown kid %r" % header.get("kid"))
    try:
        claims = jwt.decode(assertion, key, algorithms=["ES256"], audience=BUSINESS_AUD,
                            issuer=client_id, options={"verify_exp": True, "verify_iat": False,
                                                       "require": ["iss", "sub", "aud", "iat",
                                                                   "exp", "jti"]})
    except jwt.PyJWTError as e:
        raise TokenError("assertion refused: %s" % e)
    if claims["sub"] != client_id:
        raise TokenError("sub %r is not the client_id" % claims["sub"])
    if not isinstance(claims["iat"], int) or not isinstance(claims["exp"], int):
        raise TokenError("iat and exp must be integers")
    if claims["iat"] > now + 60:
        raise TokenError("iat in the future")
    if claims["exp"] - claims["iat"] > MAX_ASSERTION_LIFE:
        raise TokenError("exp - iat = %d is over 180 days" % (claims["exp"] - claims["iat"]))
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise TokenError("jti is not a non-empty string")
    if STATE.jti_seen(claims["jti"]):
        raise TokenError("jti %s was used before" % claims["jti"])
    return claims


@route(r"^/auth/oauth2/token$", hosts=[ACCOUNT_HOST])
def h_business_token(req, m):
    if req.method != "POST":
        return _oauth_error(405, "invalid_request", "POST the form")
    ctype = (req.header("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return _oauth_error(400, "invalid_request", "content type %r" % ctype)
    try:
        pairs = urllib.parse.parse_qsl(req.body_prefix.decode("ascii"), keep_blank_values=True,
                                       strict_parsing=True)
    except (UnicodeDecodeError, ValueError) as e:
        return _oauth_error(400, "invalid_request", "form: %s" % e)
    names = [k for k, _ in pairs]
    if sorted(names) != sorted(["grant_type", "client_id", "client_assertion_type",
                                "client_assertion", "scope"]):
        return _oauth_error(400, "invalid_request", "form fields %s" % names)
    form = dict(pairs)
    if form["grant_type"] != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", form["grant_type"])
    if form["client_assertion_type"] != ASSERTION_TYPE:
        return _oauth_error(400, "invalid_request", "client_assertion_type")
    if form["scope"] not in ("business.api", "school.api"):
        return _oauth_error(400, "invalid_scope", form["scope"])
    try:
        verify_assertion(form["client_assertion"], form["client_id"], req.keys, time.time())
    except TokenError as e:
        return _oauth_error(401, "invalid_client", str(e))

    def ok():
        tok, life = STATE.issue("business", form["scope"])
        return {"access_token": tok, "token_type": "Bearer", "expires_in": life,
                "scope": form["scope"]}
    return _exchange_answer("business", ok)


DEVICES = [{"type": "orgDevices", "id": "XABC123X0ABC123X0",
            "attributes": {"serialNumber": "XABC123X0ABC123X0", "deviceModel": "iPad Air",
                           "productFamily": "iPad", "status": "ASSIGNED"}},
           {"type": "orgDevices", "id": "YDEF456Y1DEF456Y1",
            "attributes": {"serialNumber": "YDEF456Y1DEF456Y1", "deviceModel": "MacBook Air",
                           "productFamily": "Mac", "status": "UNASSIGNED"}}]


@route(r"^/v1/orgDevices$", hosts=[BUSINESS_HOST, SCHOOL_HOST])
def h_org_devices(req, m):
    return _json({"data": DEVICES, "links": {"self": "https://%s/v1/orgDevices" % req.host},
                  "meta": {"paging": {"limit": 100}}})


@route(r"^/v1/orgDevices/([A-Z0-9]+)$", hosts=[BUSINESS_HOST, SCHOOL_HOST])
def h_org_device(req, m):
    for d in DEVICES:
        if d["id"] == m.group(1):
            return _json({"data": d})
    return not_found(req)


@route(r"^/v1/mdmServers$", hosts=[BUSINESS_HOST, SCHOOL_HOST])
def h_mdm_servers(req, m):
    return _json({"data": [{"type": "mdmServers", "id": "1F97349736CF4614A94F624E705841AD",
                            "attributes": {"serverName": "Example MDM", "serverType": "MDM"}}]})


@route(r"^/v1/orgDeviceActivities$", hosts=[BUSINESS_HOST, SCHOOL_HOST])
def h_device_activities(req, m):
    if req.method != "POST":
        return not_found(req)
    try:
        body = json.loads(req.body_prefix)
        data = body["data"]
        assert data["type"] == "orgDeviceActivities"
        activity = data["attributes"]["activityType"]
        assert activity in ("ASSIGN_DEVICES", "UNASSIGN_DEVICES")
        devices = [d["id"] for d in data["relationships"]["devices"]["data"]]
        server = data["relationships"]["mdmServer"]["data"]["id"]
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        return _json({"errors": [{"status": "400", "code": "PARAMETER_ERROR.INVALID",
                                  "title": "Invalid body", "detail": repr(e)}]}, 400)
    return _json({"data": {"type": "orgDeviceActivities", "id": secrets.token_hex(16),
                           "attributes": {"status": "IN_PROGRESS", "activityType": activity,
                                          "devices": devices, "mdmServer": server}}}, 201)


@route(r"^/v1/(validate_device_token|query_two_bits|update_two_bits)$",
       hosts=[DEVICECHECK_HOST, DEVICECHECK_DEV_HOST])
def h_devicecheck(req, m):
    if m.group(1) == "query_two_bits":
        return _json({"bit0": False, "bit1": True, "last_update_time": "2026-01"})
    return Response(200, b"", content_type="text/plain")
