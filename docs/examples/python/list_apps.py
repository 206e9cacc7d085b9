#!/usr/bin/python3
"""Page through all apps: follow links.next until a page has none.

    python3 list_apps.py [LIMIT]            # LIMIT: apps per page, 1 to 200 (default 200)

The proxy rewrites Apple's links to its own origin, so links.next goes through the proxy too.
"""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")
limit = sys.argv[1] if len(sys.argv) > 1 else "200"

url = f"{BASE}/v1/apps?limit={limit}"
apps, pages = [], 0
while url:
    r = requests.get(url, timeout=30)
    if r.status_code != 200:
        sys.exit(f"GET {url}: {r.status_code} {r.text}")
    doc = r.json()
    pages += 1
    print(f"page {pages}: {len(doc['data'])} apps (of {doc['meta']['paging']['total']})")
    apps += doc["data"]
    url = doc["links"].get("next")   # absent on the last page

for app in apps:
    a = app["attributes"]
    print(f"{app['id']}  {a['bundleId']:<32} {a['name']}")
print(f"total: {len(apps)} apps in {pages} pages")
