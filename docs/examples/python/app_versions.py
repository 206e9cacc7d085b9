#!/usr/bin/python3
"""App Store versions of an app and the localized metadata of each.

    python3 app_versions.py [APP_ID]        # default: $APP_ID, else the first app listed
"""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")


def get(url):
    r = requests.get(url, timeout=30)
    if r.status_code != 200:
        sys.exit(f"GET {url}: {r.status_code} {r.text}")
    return r.json()


app_id = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("APP_ID")) \
    or get(f"{BASE}/v1/apps?limit=1")["data"][0]["id"]

for v in get(f"{BASE}/v1/apps/{app_id}/appStoreVersions?limit=200")["data"]:
    a = v["attributes"]
    print(f"version {a['versionString']} ({a['platform']}): {a['appStoreState']}")
    locs = get(f"{BASE}/v1/appStoreVersions/{v['id']}/appStoreVersionLocalizations?limit=200")["data"]
    for loc in locs:
        la = loc["attributes"]
        print(f"  {la['locale']}: keywords={la['keywords']!r} whatsNew={la['whatsNew']!r}")
