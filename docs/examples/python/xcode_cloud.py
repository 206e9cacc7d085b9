#!/usr/bin/python3
"""Xcode Cloud: products and the workflows of each."""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")


def get(url):
    r = requests.get(url, timeout=30)
    if r.status_code != 200:
        sys.exit(f"GET {url}: {r.status_code} {r.text}")
    return r.json()


products = get(f"{BASE}/v1/ciProducts?limit=200")["data"]
print(f"{len(products)} Xcode Cloud products")
for p in products:
    print(f"product {p['id']}  {p['attributes']['name']} ({p['attributes']['productType']})")
    for w in get(f"{BASE}/v1/ciProducts/{p['id']}/workflows?limit=200")["data"]:
        a = w["attributes"]
        print(f"  workflow {w['id']}  {a['name']}{'' if a['isEnabled'] else ' (disabled)'}")
