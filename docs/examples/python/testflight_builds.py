#!/usr/bin/python3
"""TestFlight: an app's builds (newest first) and its beta groups.

    python3 testflight_builds.py [APP_ID]   # default: $APP_ID, else the first app listed
"""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")


def get(url, **params):
    r = requests.get(url, params=params, timeout=30)
    if r.status_code != 200:
        sys.exit(f"GET {r.url}: {r.status_code} {r.text}")
    return r.json()


app_id = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("APP_ID")) \
    or get(f"{BASE}/v1/apps", limit=1)["data"][0]["id"]

builds = get(f"{BASE}/v1/builds", **{"filter[app]": app_id, "sort": "-uploadedDate", "limit": 20})
print(f"app {app_id}: {builds['meta']['paging']['total']} builds, newest first")
for b in builds["data"]:
    a = b["attributes"]
    print(f"  build {a['version']:<6} uploaded {a['uploadedDate']}  {a['processingState']}"
          f"{'  expired' if a['expired'] else ''}")

groups = get(f"{BASE}/v1/betaGroups", **{"filter[app]": app_id, "limit": 200})
print(f"{len(groups['data'])} beta groups")
for g in groups["data"]:
    a = g["attributes"]
    kind = "internal" if a["isInternalGroup"] else "external"
    print(f"  {g['id']}  {a['name']} ({kind})" + (f" {a['publicLink']}" if a.get("publicLink") else ""))
