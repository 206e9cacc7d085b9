"""standin_recipes: the Apple endpoints that docs/recipes.md and docs/examples/ use, for the stand-in.

Imported by standin.py (one import line); on import it registers its handlers in front of the
stand-in's own ROUTES, so its richer /v1/apps and WeatherKit weather answers win. Requests a
handler here does not take (another method, say) fall through to the stand-in's later routes.

Answers are shaped like Apple's documented ones and kept small:

App Store Connect (api.appstoreconnect.apple.com), JSON:API documents (data, attributes,
relationships, links, meta.paging) with real pagination: `limit` (1..200, default 50) is honoured
and links.next is https://api.appstoreconnect.apple.com/PATH?cursor=...&limit=N&<other params>
while items remain. JSON answers are gzip-coded when the request offers Accept-Encoding: gzip.
  GET  /v1/apps, /v1/apps/{id}                         7 apps; the first is "Demo" (com.example.demo)
  GET  /v1/apps/{id}/inAppPurchasesV2, /subscriptionGroups, /v1/subscriptionGroups/{id}/subscriptions
  GET  /v1/builds (filter[app]), /v1/betaGroups (filter[app])
  POST /v1/betaTesters, /v1/betaTesterInvitations      JSON:API body checked -> 201
  GET  /v1/ciProducts, /v1/ciProducts/{id}/workflows;  POST /v1/ciBuildRuns -> 201
  GET  /v1/users;                                      POST /v1/userInvitations -> 201
  GET  /v1/bundleIds, /v1/certificates, /v1/devices, /v1/profiles
  GET  /v1/apps/{id}/appStoreVersions, /v1/appStoreVersions/{id}/appStoreVersionLocalizations
  GET  /v1/apps/{id}/appClips
  GET  /v1/salesReports?filter[frequency]&filter[reportType]&filter[reportSubType]&filter[vendorNumber]
       200 application/a-gzip (a gzip file of a TSV, deterministic bytes); a missing required
       filter -> 400 with Apple's errors JSON
  GET  /v1/apps/{id}/perfPowerMetrics                  application/vnd.apple.xcode-metrics+json
  GET  /v1/apps/{id}/customerReviews (sort, filter[rating]);  POST /v1/customerReviewResponses -> 201
  POST /v1/analyticsReportRequests -> 201;  GET /v1/apps/{id}/analyticsReportRequests,
  GET  /v1/analyticsReportRequests/{id}/reports (filter[category]),
       /v1/analyticsReports/{id}/instances (filter[granularity]),
       /v1/analyticsReportInstances/{id}/segments
  A segment's url is, on Apple, a pre-signed URL on Apple's storage host (no token, valid 5
  minutes). Here it is https://api.appstoreconnect.apple.com/__download/analytics/... so that a
  test client can fetch it through the proxy; the file is a gzip of a TSV.
WeatherKit (weatherkit.apple.com):
  GET /api/v1/weather/{lang}/{lat}/{lon}?dataSets=currentWeather,forecastDaily&timezone=...
App Store Server API (api.storekit[-sandbox].itunes.apple.com), signed data as JWS (ES256 by a
key of the stand-in's own, without Apple's x5c chain: decode only, never trust):
  GET /inApps/v2/history/{transactionId}?revision=...  3 transactions a page (Apple sends up to
      20), revision/hasMore paging over 7 transactions
  GET /inApps/v1/subscriptions/{transactionId}
Test helper (any host): GET /__recipes/gzip-json: JSON with Content-Encoding: gzip whatever the
request offers, holding https://api.appstoreconnect.apple.com links (a proxy must not touch it).
"""
import base64
import datetime
import gzip
import hashlib
import json
import re
import time
import urllib.parse
import uuid

from standin_host import host_globals


_S = host_globals("standin_recipes")
Response = _S["Response"]
ROUTES = _S["ROUTES"]
ASC_HOST = _S["ASC_HOST"]
WEATHERKIT_HOST = _S["WEATHERKIT_HOST"]
STOREKIT_HOST = _S["STOREKIT_HOST"]
STOREKIT_SANDBOX_HOST = _S["STOREKIT_SANDBOX_HOST"]
ASC = "https://" + ASC_HOST
NS = uuid.UUID("6f1d5b1e-2c7a-4c1b-9a53-7d0b1a3c9e11")

# ------------------------------------------------------------------------------------------------
# Registration: in front of the stand-in's routes, in this module's order; a handler returning
# None passes the request on to the routes after its own.

_mine = []


def route(pattern, hosts=None, methods=("GET",)):
    def deco(fn):
        rx = re.compile(pattern)
        hs = set(hosts) if hosts else None

        def handler(req, m, _fn=fn):
            if methods is not None and req.method not in methods and not (
                    req.method == "HEAD" and "GET" in methods):
                return _fall_through(req, handler)
            r = _fn(req, m)
            return _fall_through(req, handler) if r is None else r
        _mine.append((hs, rx, handler))
        return fn
    return deco


def _fall_through(req, me):
    """The answer of the first stand-in route after `me` that matches req."""
    seen = False
    for hosts, pattern, fn in ROUTES:
        if fn is me:
            seen = True
            continue
        if not seen or (hosts is not None and req.host not in hosts):
            continue
        m = pattern.match(req.path)
        if m:
            return fn(req, m)
    return _S["not_found"](req)


# ------------------------------------------------------------------------------------------------
# Answers

def _encode_json(req, obj, status=200, content_type="application/json", headers=None):
    body = json.dumps(obj, indent=None, separators=(",", ":")).encode()
    hdrs = list(headers or [])
    if "gzip" in (req.header("accept-encoding") or "").lower():
        body = gzip.compress(body, mtime=0)
        hdrs.append(("Content-Encoding", "gzip"))
        hdrs.append(("Vary", "Accept-Encoding"))
    return Response(status, body, hdrs, content_type=content_type)


def asc_error(req, status, code, title, detail, parameter=None, pointer=None):
    err = {"id": str(uuid.uuid4()), "status": str(status), "code": code, "title": title,
           "detail": detail}
    if parameter:
        err["source"] = {"parameter": parameter}
    elif pointer:
        err["source"] = {"pointer": pointer}
    return _encode_json(req, {"errors": [err]}, status)


def not_found(req, rtype, rid):
    return asc_error(req, 404, "NOT_FOUND", "The specified resource does not exist",
                     "There is no resource of type '%s' with id '%s'" % (rtype, rid))


class ParamError(Exception):
    def __init__(self, parameter, detail, code="PARAMETER_ERROR.INVALID",
                 title="A parameter has an invalid value"):
        super().__init__(detail)
        self.parameter, self.detail, self.code, self.title = parameter, detail, code, title


def resource(rtype, rid, attributes, relationships=None, self_path=None):
    """A JSON:API resource object with links.self and related links for relationships."""
    path = self_path or "/v1/%s/%s" % (rtype, rid)
    r = {"type": rtype, "id": rid, "attributes": attributes}
    if relationships:
        rel = {}
        for name, target in relationships.items():
            entry = {"links": {"self": "%s%s/relationships/%s" % (ASC, path, name),
                               "related": "%s%s/%s" % (ASC, path, name)}}
            if target is not None:
                entry["data"] = target
            rel[name] = entry
        r["relationships"] = rel
    r["links"] = {"self": ASC + path}
    return r


def _b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode().rstrip("=")


def _unb64(s):
    return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))


def _limit(req, default=50, maximum=200):
    v = req.param("limit")
    if v is None:
        return default
    if not re.fullmatch(r"[0-9]{1,4}", v) or not 1 <= int(v) <= maximum:
        raise ParamError("limit", "The parameter 'limit' must be an integer from 1 to %d (got '%s')."
                         % (maximum, v))
    return int(v)


def _offset(req):
    cur = req.param("cursor")
    if cur is None:
        return 0
    try:
        off = _unb64(cur)["o"]
        if isinstance(off, int) and off >= 0:
            return off
    except Exception:
        pass
    raise ParamError("cursor", "The cursor '%s' is not valid." % cur)


def page(req, items, default_limit=50):
    """One page of items as a JSON:API collection document, links.next while more remain."""
    limit = _limit(req, default_limit)
    off = _offset(req)
    chunk = items[off:off + limit]
    doc = {"data": chunk, "links": {"self": ASC + req.target},
           "meta": {"paging": {"total": len(items), "limit": limit}}}
    if off + limit < len(items):
        rest = [(k, v) for k, v in req.params() if k not in ("cursor", "limit")]
        q = [("cursor", _b64({"o": off + limit})), ("limit", str(limit))] + rest
        doc["links"]["next"] = "%s%s?%s" % (ASC, req.path,
                                            urllib.parse.urlencode(q, safe="[],"))
    return doc


def collection(req, items, default_limit=50):
    try:
        return _encode_json(req, page(req, items, default_limit))
    except ParamError as e:
        return asc_error(req, 400, e.code, e.title, e.detail, parameter=e.parameter)


def single(req, item):
    return _encode_json(req, {"data": item, "links": {"self": ASC + req.path}})


def _filter_list(req, name):
    v = req.param("filter[%s]" % name)
    return None if v is None else [x for x in v.split(",") if x]


def _filtered(req, items, name, get):
    want = _filter_list(req, name)
    return items if want is None else [i for i in items if get(i) in want]


# ------------------------------------------------------------------------------------------------
# Data (deterministic)

APPS = [
    ("6443410101", "Demo", "com.example.demo"),
    ("6443410102", "Demo Pro", "com.example.demo.pro"),
    ("6443410103", "Field Notes", "com.example.fieldnotes"),
    ("6443410104", "Trail Weather", "com.example.trailweather"),
    ("6443410105", "Pocket Ledger", "com.example.ledger"),
    ("6443410106", "Tiny Tunes", "com.example.tinytunes"),
    ("6443410107", "Sketch Pad", "com.example.sketchpad"),
]
APP_IDS = {a[0]: a for a in APPS}


def app_resource(app):
    aid, name, bundle = app
    return resource("apps", aid, {
        "name": name, "bundleId": bundle, "sku": bundle.upper().replace(".", "_"),
        "primaryLocale": "en-US", "isOrEverWasMadeForKids": False,
        "contentRightsDeclaration": "DOES_NOT_USE_THIRD_PARTY_CONTENT"},
        {r: None for r in ("appStoreVersions", "builds", "betaGroups", "inAppPurchasesV2",
                           "subscriptionGroups", "customerReviews", "appClips",
                           "perfPowerMetrics", "analyticsReportRequests")})


def _app_or_404(req, aid):
    return APP_IDS.get(aid)


def _uid(*parts):
    return str(uuid.uuid5(NS, "/".join(parts)))


def _sid(*parts):
    """A short numeric id like Apple's (10 digits), stable for parts."""
    return str(6450000000 + int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:8], 16) % 9999999)


# ------------------------------------------------------------------------------------------------
# Apps

@route(r"^/v1/apps$", hosts=[ASC_HOST])
def h_apps(req, m):
    items = [app_resource(a) for a in APPS]
    items = _filtered(req, items, "bundleId", lambda r: r["attributes"]["bundleId"])
    return collection(req, items)


@route(r"^/v1/apps/([^/]+)$", hosts=[ASC_HOST])
def h_app(req, m):
    app = APP_IDS.get(m.group(1))
    return single(req, app_resource(app)) if app else not_found(req, "apps", m.group(1))


# ------------------------------------------------------------------------------------------------
# In-app purchases and subscriptions

IAPS = [("coins.100", "100 Coins", "CONSUMABLE", "APPROVED"),
        ("coins.500", "500 Coins", "CONSUMABLE", "APPROVED"),
        ("pro.unlock", "Pro Unlock", "NON_CONSUMABLE", "APPROVED"),
        ("season.pass", "Season Pass", "NON_RENEWING_SUBSCRIPTION", "READY_TO_SUBMIT")]
SUBSCRIPTIONS = [("premium.monthly", "Premium Monthly", "ONE_MONTH", 1),
                 ("premium.yearly", "Premium Yearly", "ONE_YEAR", 2)]


@route(r"^/v1/apps/([^/]+)/inAppPurchasesV2$", hosts=[ASC_HOST])
def h_iaps(req, m):
    app = APP_IDS.get(m.group(1))
    if not app:
        return not_found(req, "apps", m.group(1))
    items = [resource("inAppPurchases", _sid(app[0], pid), {
        "name": name, "productId": "%s.%s" % (app[2], pid), "inAppPurchaseType": typ,
        "state": state, "reviewNote": None, "familySharable": False, "contentHosting": False},
        {"app": None, "inAppPurchaseLocalizations": None, "pricePoints": None},
        self_path="/v2/inAppPurchases/%s" % _sid(app[0], pid))
        for pid, name, typ, state in IAPS]
    items = _filtered(req, items, "inAppPurchaseType", lambda r: r["attributes"]["inAppPurchaseType"])
    return collection(req, items)


def _group_id(app):
    return _sid(app[0], "group", "premium")


@route(r"^/v1/apps/([^/]+)/subscriptionGroups$", hosts=[ASC_HOST])
def h_subscription_groups(req, m):
    app = APP_IDS.get(m.group(1))
    if not app:
        return not_found(req, "apps", m.group(1))
    gid = _group_id(app)
    items = [resource("subscriptionGroups", gid, {"referenceName": "Premium"},
                      {"subscriptions": [{"type": "subscriptions", "id": _sid(app[0], s[0])}
                                         for s in SUBSCRIPTIONS],
                       "subscriptionGroupLocalizations": None})]
    return collection(req, items)


@route(r"^/v1/subscriptionGroups/([^/]+)/subscriptions$", hosts=[ASC_HOST])
def h_subscriptions(req, m):
    for app in APPS:
        if _group_id(app) == m.group(1):
            items = [resource("subscriptions", _sid(app[0], pid), {
                "name": name, "productId": "%s.%s" % (app[2], pid), "familySharable": False,
                "state": "APPROVED", "subscriptionPeriod": period, "reviewNote": None,
                "groupLevel": level}, {"group": None, "prices": None})
                for pid, name, period, level in SUBSCRIPTIONS]
            return collection(req, items)
    return not_found(req, "subscriptionGroups", m.group(1))


# ------------------------------------------------------------------------------------------------
# TestFlight

def _builds():
    out = []
    for app, count in ((APPS[0], 5), (APPS[1], 2)):
        for n in range(count):
            uploaded = datetime.datetime(2026, 3, 2 + 3 * n, 9, 30, tzinfo=datetime.timezone.utc)
            out.append(resource("builds", _uid(app[0], "build", str(n)), {
                "version": str(40 + n), "uploadedDate": _iso(uploaded),
                "expirationDate": _iso(uploaded + datetime.timedelta(days=90)),
                "expired": False, "minOsVersion": "17.0",
                "processingState": "VALID" if n < count - 1 else "PROCESSING",
                "usesNonExemptEncryption": False, "buildAudienceType": "APP_STORE_ELIGIBLE"},
                {"app": {"type": "apps", "id": app[0]}, "preReleaseVersion": None,
                 "betaGroups": None, "individualTesters": None}))
    return out


def _iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + ("Z" if dt.utcoffset() == datetime.timedelta(0)
                                               else dt.strftime("%z"))


def _sort(req, items, keys, default=None):
    s = req.param("sort", default)
    if not s:
        return items
    field = s.lstrip("-")
    if field not in keys:
        raise ParamError("sort", "The parameter 'sort' cannot be '%s'." % s)
    return sorted(items, key=lambda r: r["attributes"][field], reverse=s.startswith("-"))


@route(r"^/v1/builds$", hosts=[ASC_HOST])
def h_builds(req, m):
    items = _filtered(req, _builds(), "app", lambda r: r["relationships"]["app"]["data"]["id"])
    try:
        items = _sort(req, items, ("uploadedDate", "version"))
    except ParamError as e:
        return asc_error(req, 400, e.code, e.title, e.detail, parameter=e.parameter)
    return collection(req, items)


BETA_GROUPS = [("Internal Testers", True, False), ("External Beta", False, True),
               ("Friends and Family", False, False)]


def _beta_groups():
    out = []
    for app in APPS[:2]:
        for name, internal, public in BETA_GROUPS:
            gid = _uid(app[0], "betaGroup", name)
            out.append(resource("betaGroups", gid, {
                "name": name, "createdDate": "2026-01-15T10:00:00Z", "isInternalGroup": internal,
                "hasAccessToAllBuilds": internal, "publicLinkEnabled": public,
                "publicLink": "https://testflight.apple.com/join/%s" % gid[:8] if public else None,
                "feedbackEnabled": True},
                {"app": {"type": "apps", "id": app[0]}, "builds": None, "betaTesters": None}))
    return out


@route(r"^/v1/betaGroups$", hosts=[ASC_HOST])
def h_beta_groups(req, m):
    items = _filtered(req, _beta_groups(), "app", lambda r: r["relationships"]["app"]["data"]["id"])
    return collection(req, items)


def _body(req):
    """The request's JSON:API document, or raises ParamError-like Entity errors."""
    ctype = (req.header("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise EntityError(415, "ENTITY_UNSUPPORTED", "The request entity is not supported",
                          "Send the request body as application/json (got '%s')." % ctype, "")
    try:
        doc = json.loads(req.body_prefix.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise EntityError(400, "ENTITY_UNPARSABLE", "The request entity is not valid JSON",
                          "The request entity could not be parsed: %s" % e, "")
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise EntityError(409, "ENTITY_ERROR", "The request entity is invalid",
                          "The document must have a top-level 'data' object.", "/data")
    return doc["data"]


class EntityError(Exception):
    def __init__(self, status, code, title, detail, pointer):
        super().__init__(detail)
        self.status, self.code, self.title, self.detail, self.pointer = (status, code, title,
                                                                         detail, pointer)


def _need_type(data, rtype):
    if data.get("type") != rtype:
        raise EntityError(409, "ENTITY_ERROR.ATTRIBUTE.INVALID", "The provided entity includes "
                          "an attribute with an invalid value",
                          "'type' must be '%s' (got %r)." % (rtype, data.get("type")), "/data/type")


def _attr(data, name, required=True, kind=str):
    attrs = data.get("attributes") or {}
    if name not in attrs or attrs[name] in (None, ""):
        if required:
            raise EntityError(409, "ENTITY_ERROR.ATTRIBUTE.REQUIRED",
                              "The provided entity is missing a required attribute",
                              "You must provide a value for the attribute '%s' with this "
                              "request" % name, "/data/attributes/%s" % name)
        return None
    if not isinstance(attrs[name], kind):
        raise EntityError(409, "ENTITY_ERROR.ATTRIBUTE.TYPE", "An attribute in the provided "
                          "entity has the wrong type", "'%s' has the wrong type." % name,
                          "/data/attributes/%s" % name)
    return attrs[name]


def _rel(data, name, rtype, required=True, many=False):
    rel = ((data.get("relationships") or {}).get(name) or {}).get("data")
    if rel is None:
        if required:
            raise EntityError(409, "ENTITY_ERROR.RELATIONSHIP.REQUIRED",
                              "The provided entity is missing a required relationship",
                              "You must provide a value for the relationship '%s' with this "
                              "request" % name, "/data/relationships/%s" % name)
        return [] if many else None
    items = rel if many else [rel]
    if many and not isinstance(rel, list):
        items = None
    if not items or not all(isinstance(i, dict) and i.get("type") == rtype and
                            isinstance(i.get("id"), str) and i["id"] for i in items):
        raise EntityError(409, "ENTITY_ERROR.RELATIONSHIP.INVALID",
                          "The provided entity includes a relationship with an invalid value",
                          "'%s' must be %s of type '%s'." % (name, "a list of resources" if many
                                                              else "a resource", rtype),
                          "/data/relationships/%s" % name)
    return [i["id"] for i in items] if many else items[0]["id"]


def creating(fn):
    """POST handlers: the JSON:API body in, 201 with the new resource out, or Apple's errors."""
    def wrapper(req, m):
        try:
            res = fn(req, m, _body(req))
        except EntityError as e:
            return asc_error(req, e.status, e.code, e.title, e.detail, pointer=e.pointer or None)
        return _encode_json(req, {"data": res, "links": {"self": res["links"]["self"]}}, 201)
    return wrapper


@route(r"^/v1/betaTesters$", hosts=[ASC_HOST], methods=("POST",))
@creating
def h_create_beta_tester(req, m, data):
    _need_type(data, "betaTesters")
    email = _attr(data, "email")
    if "@" not in email:
        raise EntityError(409, "ENTITY_ERROR.ATTRIBUTE.INVALID", "The provided entity includes "
                          "an attribute with an invalid value", "'%s' is not an email address."
                          % email, "/data/attributes/email")
    groups = _rel(data, "betaGroups", "betaGroups", required=False, many=True)
    builds = _rel(data, "builds", "builds", required=False, many=True)
    if not groups and not builds:
        raise EntityError(409, "ENTITY_ERROR.RELATIONSHIP.REQUIRED", "The provided entity is "
                          "missing a required relationship", "A beta tester is added to "
                          "'betaGroups' or 'builds'.", "/data/relationships")
    tid = _uid("betaTester", email)
    return resource("betaTesters", tid, {
        "firstName": _attr(data, "firstName", required=False) or "",
        "lastName": _attr(data, "lastName", required=False) or "",
        "email": email, "inviteType": "EMAIL", "state": "INVITED"},
        {"apps": None, "betaGroups": None, "builds": None})


@route(r"^/v1/betaTesterInvitations$", hosts=[ASC_HOST], methods=("POST",))
@creating
def h_invite_beta_tester(req, m, data):
    _need_type(data, "betaTesterInvitations")
    app = _rel(data, "app", "apps")
    tester = _rel(data, "betaTester", "betaTesters")
    if app not in APP_IDS:
        raise EntityError(404, "NOT_FOUND", "The specified resource does not exist",
                          "There is no resource of type 'apps' with id '%s'" % app,
                          "/data/relationships/app")
    return resource("betaTesterInvitations", _uid("invitation", app, tester), {})


# ------------------------------------------------------------------------------------------------
# Xcode Cloud

def _ci_products():
    return [(app, _uid(app[0], "ciProduct")) for app in APPS[:2]]


@route(r"^/v1/ciProducts$", hosts=[ASC_HOST])
def h_ci_products(req, m):
    items = [resource("ciProducts", pid, {"name": app[1], "createdDate": "2025-11-03T08:00:00Z",
                                          "productType": "APP"},
                      {"app": {"type": "apps", "id": app[0]}, "workflows": None,
                       "primaryRepositories": None, "buildRuns": None})
             for app, pid in _ci_products()]
    return collection(req, items)


WORKFLOWS = [("Pull Requests", "Builds and tests every pull request."),
             ("Release", "Archives for TestFlight on tags.")]


@route(r"^/v1/ciProducts/([^/]+)/workflows$", hosts=[ASC_HOST])
def h_ci_workflows(req, m):
    for app, pid in _ci_products():
        if pid == m.group(1):
            items = [resource("ciWorkflows", _uid(pid, "workflow", name), {
                "name": name, "description": desc, "isEnabled": True,
                "isLockedForEditing": False, "clean": name == "Release",
                "containerFilePath": "%s.xcodeproj" % app[1].replace(" ", ""),
                "lastModifiedDate": "2026-02-01T12:00:00Z"},
                {"product": {"type": "ciProducts", "id": pid}, "repository": None,
                 "buildRuns": None}) for name, desc in WORKFLOWS]
            return collection(req, items)
    return not_found(req, "ciProducts", m.group(1))


_build_numbers = {}


@route(r"^/v1/ciBuildRuns$", hosts=[ASC_HOST], methods=("POST",))
@creating
def h_start_build(req, m, data):
    _need_type(data, "ciBuildRuns")
    wf = _rel(data, "workflow", "ciWorkflows")
    known = {_uid(pid, "workflow", name) for _, pid in _ci_products() for name, _ in WORKFLOWS}
    if wf not in known:
        raise EntityError(404, "NOT_FOUND", "The specified resource does not exist",
                          "There is no resource of type 'ciWorkflows' with id '%s'" % wf,
                          "/data/relationships/workflow")
    _rel(data, "sourceBranchOrTag", "scmGitReferences", required=False)
    number = _build_numbers[wf] = _build_numbers.get(wf, 100) + 1
    return resource("ciBuildRuns", str(uuid.uuid4()), {
        "number": number, "createdDate": _iso(datetime.datetime.now(datetime.timezone.utc)
                                              .replace(microsecond=0)),
        "startedDate": None, "finishedDate": None, "sourceCommit": None,
        "isPullRequestBuild": False, "executionProgress": "PENDING",
        "completionStatus": None, "startReason": "MANUAL", "cancelReason": None},
        {"workflow": {"type": "ciWorkflows", "id": wf}, "actions": None, "builds": None})


# ------------------------------------------------------------------------------------------------
# Users and invitations

USERS = [("Jane", "Appleseed", "jane@example.com", ["ADMIN"]),
         ("John", "Doe", "john@example.com", ["APP_MANAGER", "DEVELOPER"]),
         ("Ana", "Silva", "ana@example.com", ["MARKETING"]),
         ("Kenji", "Sato", "kenji@example.com", ["FINANCE", "SALES"])]

ROLES = {"ADMIN", "FINANCE", "ACCOUNT_HOLDER", "SALES", "MARKETING", "APP_MANAGER", "DEVELOPER",
         "ACCESS_TO_REPORTS", "CUSTOMER_SUPPORT", "CREATE_APPS", "CLOUD_MANAGED_DEVELOPER_ID",
         "CLOUD_MANAGED_APP_DISTRIBUTION", "GENERATE_INDIVIDUAL_KEYS"}


@route(r"^/v1/users$", hosts=[ASC_HOST])
def h_users(req, m):
    items = [resource("users", _uid("user", email), {
        "username": email, "firstName": first, "lastName": last, "roles": roles,
        "allAppsVisible": "ADMIN" in roles, "provisioningAllowed": "ADMIN" in roles},
        {"visibleApps": None}) for first, last, email, roles in USERS]
    items = [i for i in items if _filter_list(req, "roles") is None or
             set(_filter_list(req, "roles")) & set(i["attributes"]["roles"])]
    return collection(req, items)


@route(r"^/v1/userInvitations$", hosts=[ASC_HOST], methods=("POST",))
@creating
def h_invite_user(req, m, data):
    _need_type(data, "userInvitations")
    email = _attr(data, "email")
    first = _attr(data, "firstName")
    last = _attr(data, "lastName")
    roles = _attr(data, "roles", kind=list)
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise EntityError(409, "ENTITY_ERROR.ATTRIBUTE.INVALID", "The provided entity includes "
                          "an attribute with an invalid value", "Unknown roles: %s" % bad,
                          "/data/attributes/roles")
    all_apps = _attr(data, "allAppsVisible", required=False, kind=bool)
    expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + \
        datetime.timedelta(days=3)
    return resource("userInvitations", _uid("userInvitation", email), {
        "email": email, "firstName": first, "lastName": last, "roles": roles,
        "allAppsVisible": bool(all_apps), "provisioningAllowed":
        bool(_attr(data, "provisioningAllowed", required=False, kind=bool)),
        "expirationDate": _iso(expires)}, {"visibleApps": None})


# ------------------------------------------------------------------------------------------------
# Provisioning

@route(r"^/v1/bundleIds$", hosts=[ASC_HOST])
def h_bundle_ids(req, m):
    items = [resource("bundleIds", _sid("bundleId", bundle), {
        "name": name, "identifier": bundle, "platform": "IOS", "seedId": "A1B2C3D4E5"},
        {"profiles": None, "bundleIdCapabilities": None, "app": None})
        for _, name, bundle in APPS[:3]]
    items = _filtered(req, items, "identifier", lambda r: r["attributes"]["identifier"])
    return collection(req, items)


@route(r"^/v1/certificates$", hosts=[ASC_HOST])
def h_certificates(req, m):
    certs = [("Apple Development: Jane Appleseed (8X7Y6Z5W4V)", "DEVELOPMENT", "2027-01-20T10:00:00Z"),
             ("Apple Distribution: Example Corp (A1B2C3D4E5)", "DISTRIBUTION", "2027-02-11T10:00:00Z")]
    items = [resource("certificates", _sid("cert", name), {
        "name": name, "displayName": name.split(": ", 1)[1], "certificateType": ctype,
        "platform": None, "serialNumber": hashlib.sha1(name.encode()).hexdigest()[:16].upper(),
        "expirationDate": exp, "certificateContent": base64.b64encode(
            b"stand-in certificate " + name.encode()).decode()}, None)
        for name, ctype, exp in certs]
    items = _filtered(req, items, "certificateType", lambda r: r["attributes"]["certificateType"])
    return collection(req, items)


@route(r"^/v1/devices$", hosts=[ASC_HOST])
def h_devices(req, m):
    devs = [("Jane's iPhone", "IPHONE", "iPhone 15 Pro"), ("Test iPad", "IPAD", "iPad Air"),
            ("QA iPhone SE", "IPHONE", "iPhone SE (3rd generation)")]
    items = [resource("devices", _sid("device", name), {
        "name": name, "platform": "IOS", "udid": "00008120-%016X" % (i * 0x1111111111 + 0xA),
        "deviceClass": cls, "status": "ENABLED", "model": model,
        "addedDate": "2025-10-0%dT12:00:00Z" % (i + 1)}, None)
        for i, (name, cls, model) in enumerate(devs)]
    items = _filtered(req, items, "platform", lambda r: r["attributes"]["platform"])
    return collection(req, items)


@route(r"^/v1/profiles$", hosts=[ASC_HOST])
def h_profiles(req, m):
    profs = [("Demo Development", "IOS_APP_DEVELOPMENT"), ("Demo App Store", "IOS_APP_STORE")]
    items = [resource("profiles", _sid("profile", name), {
        "name": name, "platform": "IOS", "profileType": ptype, "profileState": "ACTIVE",
        "uuid": _uid("profile", name), "createdDate": "2026-01-05T09:00:00Z",
        "expirationDate": "2027-01-05T09:00:00Z",
        "profileContent": base64.b64encode(b"stand-in profile " + name.encode()).decode()},
        {"bundleId": None, "certificates": None, "devices": None})
        for name, ptype in profs]
    items = _filtered(req, items, "profileType", lambda r: r["attributes"]["profileType"])
    return collection(req, items)


# ------------------------------------------------------------------------------------------------
# App Store versions and metadata

def _versions(app):
    return [(_uid(app[0], "version", v), v, state, created)
            for v, state, created in (("1.2", "PREPARE_FOR_SUBMISSION", "2026-03-10T08:00:00Z"),
                                      ("1.1", "READY_FOR_DISTRIBUTION", "2026-01-20T08:00:00Z"))]


@route(r"^/v1/apps/([^/]+)/appStoreVersions$", hosts=[ASC_HOST])
def h_versions(req, m):
    app = APP_IDS.get(m.group(1))
    if not app:
        return not_found(req, "apps", m.group(1))
    items = [resource("appStoreVersions", vid, {
        "platform": "IOS", "versionString": v, "appStoreState": state, "appVersionState":
        "ACCEPTED" if state == "READY_FOR_DISTRIBUTION" else state,
        "copyright": "2026 Example Corp", "releaseType": "MANUAL", "earliestReleaseDate": None,
        "downloadable": True, "createdDate": created},
        {"app": {"type": "apps", "id": app[0]}, "appStoreVersionLocalizations": None,
         "build": None}) for vid, v, state, created in _versions(app)]
    items = _filtered(req, items, "versionString", lambda r: r["attributes"]["versionString"])
    items = _filtered(req, items, "platform", lambda r: r["attributes"]["platform"])
    return collection(req, items)


LOCALIZATIONS = [("en-US", "Take notes anywhere.", "notes,journal,offline", "Bug fixes and a new dark theme."),
                 ("de-DE", "Notizen überall.", "notizen,tagebuch,offline", "Fehlerbehebungen und ein neues dunkles Design.")]


@route(r"^/v1/appStoreVersions/([^/]+)/appStoreVersionLocalizations$", hosts=[ASC_HOST])
def h_localizations(req, m):
    for app in APPS:
        for vid, v, _, _ in _versions(app):
            if vid == m.group(1):
                items = [resource("appStoreVersionLocalizations", _uid(vid, loc), {
                    "locale": loc, "description": desc, "keywords": kw,
                    "marketingUrl": "https://example.com/%s" % app[1].lower().replace(" ", "-"),
                    "promotionalText": None, "supportUrl": "https://example.com/support",
                    "whatsNew": new}, {"appStoreVersion": None, "appScreenshotSets": None,
                                       "appPreviewSets": None})
                    for loc, desc, kw, new in LOCALIZATIONS]
                items = _filtered(req, items, "locale", lambda r: r["attributes"]["locale"])
                return collection(req, items)
    return not_found(req, "appStoreVersions", m.group(1))


# ------------------------------------------------------------------------------------------------
# App Clips

@route(r"^/v1/apps/([^/]+)/appClips$", hosts=[ASC_HOST])
def h_app_clips(req, m):
    app = APP_IDS.get(m.group(1))
    if not app:
        return not_found(req, "apps", m.group(1))
    items = [] if app is not APPS[0] else [
        resource("appClips", _sid(app[0], "clip"), {"bundleId": app[2] + ".Clip"},
                 {"app": {"type": "apps", "id": app[0]}, "appClipDefaultExperiences": None,
                  "appClipAdvancedExperiences": None})]
    return collection(req, items)


# ------------------------------------------------------------------------------------------------
# Sales and Trends reports

SALES_REQUIRED = ("frequency", "reportType", "reportSubType", "vendorNumber")
SALES_HEADER = ["Provider", "Provider Country", "SKU", "Developer", "Title", "Version",
                "Product Type Identifier", "Units", "Developer Proceeds", "Begin Date", "End Date",
                "Customer Currency", "Country Code", "Currency of Proceeds", "Apple Identifier",
                "Customer Price", "Promo Code", "Parent Identifier", "Subscription", "Period",
                "Category", "CMB", "Device", "Supported Platforms", "Proceeds Reason",
                "Preserved Pricing", "Client", "Order Type"]


def sales_report_bytes(vendor, date):
    """The gzip file (deterministic: mtime 0) of a small SALES SUMMARY DAILY TSV."""
    d = "%s/%s/%s" % (date[5:7], date[8:10], date[:4])
    rows = [
        ("COM.EXAMPLE.DEMO", "Demo", "1.1", "1F", "12", "0", "USD", "US", "USD", "6443410101", "0", "Productivity", "iPhone"),
        ("COM.EXAMPLE.DEMO", "Demo", "1.1", "1F", "5", "0", "EUR", "DE", "EUR", "6443410101", "0", "Productivity", "iPad"),
        ("COM.EXAMPLE.DEMO", "Demo", "1.1", "7F", "31", "0", "USD", "US", "USD", "6443410101", "0", "Productivity", "iPhone"),
        ("COM.EXAMPLE.DEMO.PRO_UNLOCK", "Pro Unlock", "", "IA1", "3", "2.09", "USD", "US", "USD", "6450000001", "2.99", "Productivity", "iPhone"),
    ]
    lines = ["\t".join(SALES_HEADER)]
    for sku, title, ver, ptype, units, proceeds, cur, cc, pcur, aid, price, cat, dev in rows:
        lines.append("\t".join(["APPLE", "US", sku, "Example Corp", title, ver, ptype, units,
                                proceeds, d, d, cur, cc, pcur, aid, price, "", "", "", "", cat,
                                "", dev, "iOS", "", "", "", ""]))
    tsv = ("\n".join(lines) + "\n").encode()
    return gzip.compress(tsv, mtime=0)


@route(r"^/v1/salesReports$", hosts=[ASC_HOST])
def h_sales_reports(req, m):
    for name in SALES_REQUIRED:
        if not req.param("filter[%s]" % name):
            return asc_error(req, 400, "PARAMETER_ERROR.REQUIRED", "A required parameter is missing",
                             "The parameter 'filter[%s]' is required." % name,
                             parameter="filter[%s]" % name)
    freq = req.param("filter[frequency]")
    if freq not in ("DAILY", "WEEKLY", "MONTHLY", "YEARLY"):
        return asc_error(req, 400, "PARAMETER_ERROR.INVALID", "A parameter has an invalid value",
                         "'%s' is not a valid value for 'filter[frequency]'." % freq,
                         parameter="filter[frequency]")
    date = req.param("filter[reportDate]")
    if date is None:
        date = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)).strftime("%Y-%m-%d")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        return asc_error(req, 400, "PARAMETER_ERROR.INVALID", "A parameter has an invalid value",
                         "'%s' is not a valid date for 'filter[reportDate]'." % date,
                         parameter="filter[reportDate]")
    body = sales_report_bytes(req.param("filter[vendorNumber]"), date)
    return Response(200, body, content_type="application/a-gzip")


# ------------------------------------------------------------------------------------------------
# Power and performance metrics

@route(r"^/v1/apps/([^/]+)/perfPowerMetrics$", hosts=[ASC_HOST])
def h_perf_power(req, m):
    app = APP_IDS.get(m.group(1))
    if not app:
        return not_found(req, "apps", m.group(1))

    def metric(ident, unit, unit_name, values):
        return {"identifier": ident, "goalKeys": [],
                "unit": {"identifier": unit, "displayName": unit_name},
                "datasets": [{"filterCriteria": {"percentile": "percentile.fifty",
                                                 "device": "all_iphones",
                                                 "deviceMarketingName": "All iPhones"},
                              "points": [{"version": v, "value": val, "errorMargin": round(val * 0.05, 3),
                                          "percentageBreakdown": {"value": 100.0,
                                                                  "subSystemLabel": "All"}}
                                         for v, val in values]}]}
    doc = {"version": "1.0",
           "insights": {"trendingUp": [], "regressions": [
               {"metricCategory": "LAUNCH", "latestVersion": "1.1", "metric": "launchTime",
                "summaryString": "Launch time increased by 12% since 1.0",
                "referenceVersions": "1.0", "maxLatestVersionValue": 1.12,
                "subSystemLabel": "All", "highImpact": False,
                "populations": [{"device": "all_iphones", "deviceMarketingName": "All iPhones",
                                 "percentile": "percentile.fifty"}]}]},
           "productData": [{"platform": "iOS", "metricCategories": [
               {"identifier": "LAUNCH", "metrics": [metric("launchTime", "s", "Seconds",
                                                           [("1.0", 1.0), ("1.1", 1.12)])]},
               {"identifier": "HANG", "metrics": [metric("hangRate", "s/hr", "Seconds per Hour",
                                                         [("1.0", 0.8), ("1.1", 0.6)])]},
               {"identifier": "MEMORY", "metrics": [metric("peakMemory", "MB", "Megabytes",
                                                           [("1.0", 180.0), ("1.1", 172.5)])]}]}]}
    return _encode_json(req, doc, content_type="application/vnd.apple.xcode-metrics+json")


# ------------------------------------------------------------------------------------------------
# Customer reviews and responses

REVIEWS = [(5, "Love it", "Does exactly what I need.", "pat123", "USA", "2026-03-01T10:00:00-08:00"),
           (4, "Great, one wish", "Please add a widget.", "notes_fan", "GBR", "2026-02-27T09:00:00-08:00"),
           (2, "Crashes on launch", "Since 1.1 it crashes when I open it.", "kim_k", "DEU", "2026-02-25T18:30:00-08:00"),
           (5, "Five stars", "Simple and fast.", "ro", "FRA", "2026-02-20T07:15:00-08:00"),
           (3, "Okay", "Good but the sync is slow.", "alexj", "USA", "2026-02-11T12:00:00-08:00")]


def _reviews(app):
    return [resource("customerReviews", _uid(app[0], "review", str(i)), {
        "rating": rating, "title": title, "body": body, "reviewerNickname": nick,
        "createdDate": created, "territory": terr}, {"response": None})
        for i, (rating, title, body, nick, terr, created) in enumerate(REVIEWS)]


@route(r"^/v1/apps/([^/]+)/customerReviews$", hosts=[ASC_HOST])
def h_reviews(req, m):
    app = APP_IDS.get(m.group(1))
    if not app:
        return not_found(req, "apps", m.group(1))
    items = _filtered(req, _reviews(app), "rating", lambda r: str(r["attributes"]["rating"]))
    items = _filtered(req, items, "territory", lambda r: r["attributes"]["territory"])
    try:
        items = _sort(req, items, ("createdDate", "rating"))
    except ParamError as e:
        return asc_error(req, 400, e.code, e.title, e.detail, parameter=e.parameter)
    return collection(req, items)


@route(r"^/v1/customerReviewResponses$", hosts=[ASC_HOST], methods=("POST",))
@creating
def h_review_response(req, m, data):
    _need_type(data, "customerReviewResponses")
    text = _attr(data, "responseBody")
    review = _rel(data, "review", "customerReviews")
    if review not in {r["id"] for app in APPS for r in _reviews(app)}:
        raise EntityError(404, "NOT_FOUND", "The specified resource does not exist",
                          "There is no resource of type 'customerReviews' with id '%s'" % review,
                          "/data/relationships/review")
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return resource("customerReviewResponses", _uid("response", review), {
        "responseBody": text, "lastModifiedDate": _iso(now), "state": "PENDING_PUBLISH"},
        {"review": {"type": "customerReviews", "id": review}})


# ------------------------------------------------------------------------------------------------
# Analytics Reports API

ANALYTICS_REPORTS = [("App Downloads Standard", "APP_STORE_COMMERCE"),
                     ("App Store Purchases Standard", "APP_STORE_COMMERCE"),
                     ("App Store Discovery and Engagement Standard", "APP_STORE_ENGAGEMENT"),
                     ("App Store Installation and Deletion Standard", "APP_USAGE"),
                     ("App Sessions Standard", "APP_USAGE")]
_requests = {}


@route(r"^/v1/analyticsReportRequests$", hosts=[ASC_HOST], methods=("POST",))
@creating
def h_analytics_request(req, m, data):
    _need_type(data, "analyticsReportRequests")
    access = _attr(data, "accessType")
    if access not in ("ONGOING", "ONE_TIME_SNAPSHOT"):
        raise EntityError(409, "ENTITY_ERROR.ATTRIBUTE.INVALID", "The provided entity includes "
                          "an attribute with an invalid value", "'accessType' must be ONGOING or "
                          "ONE_TIME_SNAPSHOT.", "/data/attributes/accessType")
    app = _rel(data, "app", "apps")
    if app not in APP_IDS:
        raise EntityError(404, "NOT_FOUND", "The specified resource does not exist",
                          "There is no resource of type 'apps' with id '%s'" % app,
                          "/data/relationships/app")
    rid = _uid("analyticsRequest", app, access)
    _requests[rid] = (app, access)
    return _analytics_request_resource(rid, access)


def _analytics_request_resource(rid, access):
    return resource("analyticsReportRequests", rid,
                    {"accessType": access, "stoppedDueToInactivity": False}, {"reports": None})


@route(r"^/v1/apps/([^/]+)/analyticsReportRequests$", hosts=[ASC_HOST])
def h_app_analytics_requests(req, m):
    if m.group(1) not in APP_IDS:
        return not_found(req, "apps", m.group(1))
    items = [_analytics_request_resource(rid, access)
             for rid, (app, access) in sorted(_requests.items()) if app == m.group(1)]
    items = _filtered(req, items, "accessType", lambda r: r["attributes"]["accessType"])
    return collection(req, items)


@route(r"^/v1/analyticsReportRequests/([^/]+)/reports$", hosts=[ASC_HOST])
def h_analytics_reports(req, m):
    rid = m.group(1)
    if rid not in _requests:
        return not_found(req, "analyticsReportRequests", rid)
    items = [resource("analyticsReports", _uid(rid, name), {"name": name, "category": cat},
                      {"instances": None}) for name, cat in ANALYTICS_REPORTS]
    items = _filtered(req, items, "category", lambda r: r["attributes"]["category"])
    items = _filtered(req, items, "name", lambda r: r["attributes"]["name"])
    return collection(req, items)


def _report_by_id(report_id):
    for rid in _requests:
        for name, cat in ANALYTICS_REPORTS:
            if _uid(rid, name) == report_id:
                return rid, name, cat
    return None


def _instances(report_id):
    today = datetime.date(2026, 3, 14)
    out = []
    for gran, days in (("DAILY", (1, 2, 3)), ("WEEKLY", (7,)), ("MONTHLY", (14,))):
        for d in days:
            pdate = (today - datetime.timedelta(days=d)).isoformat()
            out.append(resource("analyticsReportInstances", _uid(report_id, gran, pdate),
                                {"granularity": gran, "processingDate": pdate}, {"segments": None}))
    return out


@route(r"^/v1/analyticsReports/([^/]+)/instances$", hosts=[ASC_HOST])
def h_analytics_instances(req, m):
    if _report_by_id(m.group(1)) is None:
        return not_found(req, "analyticsReports", m.group(1))
    items = _filtered(req, _instances(m.group(1)), "granularity",
                      lambda r: r["attributes"]["granularity"])
    items = _filtered(req, items, "processingDate", lambda r: r["attributes"]["processingDate"])
    return collection(req, items)


def _instance_by_id(instance_id):
    for rid in _requests:
        for name, cat in ANALYTICS_REPORTS:
            report_id = _uid(rid, name)
            for inst in _instances(report_id):
                if inst["id"] == instance_id:
                    return rid, name, inst
    return None


def segment_bytes(name, inst):
    """The gzip (mtime 0) of a small TSV for one report instance."""
    date = inst["attributes"]["processingDate"]
    if "Download" in name:
        head = ["Date", "App Name", "App Apple Identifier", "Download Type", "App Version",
                "Device", "Platform Version", "Source Type", "Territory", "Counts"]
        rows = [[date, "Demo", "6443410101", "First-time download", "1.1", "iPhone", "iOS 18.3",
                 "App Store search", "US", "42"],
                [date, "Demo", "6443410101", "Redownload", "1.1", "iPad", "iPadOS 18.3",
                 "App Store browse", "DE", "7"],
                [date, "Demo", "6443410101", "First-time download", "1.1", "iPhone", "iOS 18.2",
                 "Web referrer", "GB", "11"]]
    else:
        head = ["Date", "App Name", "App Apple Identifier", "Event", "Device", "Territory", "Counts"]
        rows = [[date, "Demo", "6443410101", "Install", "iPhone", "US", "40"],
                [date, "Demo", "6443410101", "Delete", "iPhone", "US", "3"]]
    tsv = "\n".join("\t".join(r) for r in [head] + rows) + "\n"
    return gzip.compress(tsv.encode(), mtime=0)


@route(r"^/v1/analyticsReportInstances/([^/]+)/segments$", hosts=[ASC_HOST])
def h_analytics_segments(req, m):
    found = _instance_by_id(m.group(1))
    if found is None:
        return not_found(req, "analyticsReportInstances", m.group(1))
    rid, name, inst = found
    data = segment_bytes(name, inst)
    sid = _uid(inst["id"], "segment", "0")
    expires = int(time.time()) + 300
    url = "%s/__download/analytics/%s/0.csv.gz?X-Amz-Expires=300&X-Amz-Date=%d&X-Amz-Signature=%s" % (
        ASC, inst["id"], expires, hashlib.sha256(("%s%d" % (sid, expires)).encode()).hexdigest())
    items = [resource("analyticsReportSegments", sid, {
        "checksum": hashlib.md5(data).hexdigest(), "sizeInBytes": len(data), "url": url})]
    return collection(req, items)


@route(r"^/__download/analytics/([^/]+)/0\.csv\.gz$", hosts=[ASC_HOST])
def h_analytics_download(req, m):
    found = _instance_by_id(m.group(1))
    if found is None:
        return Response(404, b"<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml")
    return Response(200, segment_bytes(found[1], found[2]), content_type="application/octet-stream")


# ------------------------------------------------------------------------------------------------
# WeatherKit

DATASETS = ("currentWeather", "forecastDaily", "forecastHourly", "forecastNextHour", "weatherAlerts")


@route(r"^/api/v1/weather/([^/]+)/([^/]+)/([^/]+)$", hosts=[WEATHERKIT_HOST])
def h_weather(req, m):
    lang = m.group(1)
    try:
        lat, lon = float(m.group(2)), float(m.group(3))
    except ValueError:
        return Response(400, b'{"reason":"INVALID_REQUEST"}', content_type="application/json")
    wanted = [d for d in (req.param("dataSets") or "currentWeather").split(",") if d]
    if any(d not in DATASETS for d in wanted):
        return Response(400, b'{"reason":"INVALID_REQUEST"}', content_type="application/json")
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    meta = {"attributionURL": "https://developer.apple.com/weatherkit/data-source-attribution/",
            "expireTime": _iso(now + datetime.timedelta(minutes=10)), "language": lang,
            "latitude": lat, "longitude": lon, "providerName": "Stand-in",
            "readTime": _iso(now), "reportedTime": _iso(now), "units": "m", "version": 1}
    out = {}
    if "currentWeather" in wanted:
        out["currentWeather"] = dict(name="CurrentWeather", metadata=meta, asOf=_iso(now),
                                     cloudCover=0.2, conditionCode="Clear", daylight=True,
                                     humidity=0.6, precipitationIntensity=0.0, pressure=1016.2,
                                     pressureTrend="steady", temperature=12.5,
                                     temperatureApparent=11.8, temperatureDewPoint=5.0,
                                     uvIndex=3, visibility=24000.0, windDirection=240,
                                     windGust=18.0, windSpeed=9.5)
    if "forecastDaily" in wanted:
        tz = req.param("timezone") or "UTC"
        start = now.replace(hour=0, minute=0, second=0)
        codes = ("Clear", "PartlyCloudy", "Rain", "MostlyCloudy", "Clear", "Drizzle", "Clear",
                 "Cloudy", "Clear", "PartlyCloudy")
        days = []
        for i, code in enumerate(codes):
            day = start + datetime.timedelta(days=i)
            days.append({"forecastStart": _iso(day),
                         "forecastEnd": _iso(day + datetime.timedelta(days=1)),
                         "conditionCode": code, "maxUvIndex": 4, "moonPhase": "waxingCrescent",
                         "precipitationAmount": 2.5 if "Rain" in code or code == "Drizzle" else 0.0,
                         "precipitationChance": 0.7 if "Rain" in code or code == "Drizzle" else 0.1,
                         "precipitationType": "rain" if "Rain" in code or code == "Drizzle" else "clear",
                         "snowfallAmount": 0.0, "temperatureMax": 14.0 + i % 4,
                         "temperatureMin": 6.0 + i % 3})
        out["forecastDaily"] = {"name": "DailyForecast", "metadata": dict(meta, timezone=tz),
                                "days": days}
    return Response(200, json.dumps(out).encode(), content_type="application/json")


# ------------------------------------------------------------------------------------------------
# App Store Server API

_signer = None


def _jws(payload):
    """A compact JWS of payload, ES256 with a stand-in key (Apple's carry an x5c chain)."""
    global _signer
    jwt = _S["jwt"]
    if _signer is None:
        from cryptography.hazmat.primitives.asymmetric import ec
        _signer = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(payload, _signer, algorithm="ES256", headers={"kid": "standin-storekit"})


def _storekit_error(code, message, status):
    return Response(status, json.dumps({"errorCode": code, "errorMessage": message}).encode(),
                    content_type="application/json")


def _environment(req):
    return "Sandbox" if req.host == STOREKIT_SANDBOX_HOST else "Production"


def _transactions(req, tid):
    """Seven transactions of one customer: a consumable and six monthly renewals."""
    bid = req.token_claims.get("bid") or "com.example.demo"
    base = int(tid)
    start = 1767225600000  # 2026-01-01T00:00:00Z in ms
    month = 30 * 86400 * 1000
    out = [{"transactionId": str(base), "originalTransactionId": str(base), "bundleId": bid,
            "productId": bid + ".coins.100", "purchaseDate": start - 5 * 86400000,
            "originalPurchaseDate": start - 5 * 86400000, "quantity": 1, "type": "Consumable",
            "inAppOwnershipType": "PURCHASED", "environment": _environment(req),
            "transactionReason": "PURCHASE", "storefront": "USA", "storefrontId": "143441",
            "price": 990, "currency": "USD"}]
    orig = str(base + 1)
    for i in range(6):
        out.append({"transactionId": str(base + 1 + i), "originalTransactionId": orig,
                    "webOrderLineItemId": str(base + 100 + i), "bundleId": bid,
                    "productId": bid + ".premium.monthly", "subscriptionGroupIdentifier": "21450001",
                    "purchaseDate": start + i * month, "originalPurchaseDate": start,
                    "expiresDate": start + (i + 1) * month, "quantity": 1,
                    "type": "Auto-Renewable Subscription", "inAppOwnershipType": "PURCHASED",
                    "environment": _environment(req),
                    "transactionReason": "PURCHASE" if i == 0 else "RENEWAL",
                    "storefront": "USA", "storefrontId": "143441", "price": 4990, "currency": "USD"})
    signed = int(time.time() * 1000)
    for t in out:
        t["signedDate"] = signed
    return out


@route(r"^/inApps/v2/history/([^/]+)$", hosts=[STOREKIT_HOST, STOREKIT_SANDBOX_HOST])
def h_history_v2(req, m):
    tid = m.group(1)
    if not re.fullmatch(r"[0-9]{1,18}", tid):
        return _storekit_error(4000006, "Invalid transaction id.", 400)
    txs = _transactions(req, tid)
    if req.param("sort") == "DESCENDING":
        txs.reverse()
    off = 0
    rev = req.param("revision")
    if rev:
        try:
            off = int(_unb64(rev)["o"])
        except Exception:
            return _storekit_error(4000005, "Invalid revision.", 400)
    chunk = txs[off:off + 3]
    doc = {"revision": _b64({"o": off + len(chunk)}), "bundleId": req.token_claims.get("bid"),
           "appAppleId": 6443410101, "environment": _environment(req),
           "hasMore": off + len(chunk) < len(txs),
           "signedTransactions": [_jws(t) for t in chunk]}
    return Response(200, json.dumps(doc).encode(), content_type="application/json")


@route(r"^/inApps/v1/subscriptions/([^/]+)$", hosts=[STOREKIT_HOST, STOREKIT_SANDBOX_HOST])
def h_subscription_status(req, m):
    tid = m.group(1)
    if not re.fullmatch(r"[0-9]{1,18}", tid):
        return _storekit_error(4000006, "Invalid transaction id.", 400)
    latest = _transactions(req, tid)[-1]
    renewal = {"originalTransactionId": latest["originalTransactionId"],
               "autoRenewProductId": latest["productId"], "productId": latest["productId"],
               "autoRenewStatus": 1, "signedDate": latest["signedDate"],
               "environment": latest["environment"],
               "recentSubscriptionStartDate": latest["originalPurchaseDate"],
               "renewalDate": latest["expiresDate"]}
    doc = {"environment": _environment(req), "bundleId": req.token_claims.get("bid"),
           "appAppleId": 6443410101,
           "data": [{"subscriptionGroupIdentifier": "21450001", "lastTransactions": [
               {"originalTransactionId": latest["originalTransactionId"], "status": 1,
                "signedTransactionInfo": _jws(latest), "signedRenewalInfo": _jws(renewal)}]}]}
    return Response(200, json.dumps(doc).encode(), content_type="application/json")


# ------------------------------------------------------------------------------------------------
# Test helper

@route(r"^/__recipes/gzip-json$")
def h_gzip_json(req, m):
    doc = {"data": [], "links": {"self": ASC + "/v1/apps",
                                 "next": ASC + "/v1/apps?cursor=Mw&limit=3"}}
    body = gzip.compress(json.dumps(doc).encode(), mtime=0)
    return Response(200, body, [("Content-Encoding", "gzip")], content_type="application/json")


ROUTES[0:0] = _mine
