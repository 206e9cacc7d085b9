#!/usr/bin/python3
"""Provisioning: bundle IDs, certificates, devices and profiles (team keys only: individual keys
cannot use the provisioning endpoints)."""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")


def get_all(path):
    url, items = f"{BASE}{path}?limit=200", []
    while url:
        r = requests.get(url, timeout=30)
        if r.status_code != 200:
            sys.exit(f"GET {url}: {r.status_code} {r.text}")
        items += r.json()["data"]
        url = r.json()["links"].get("next")
    return items


for b in get_all("/v1/bundleIds"):
    print(f"bundle ID    {b['attributes']['identifier']:<32} {b['attributes']['platform']}")
for c in get_all("/v1/certificates"):
    a = c["attributes"]
    print(f"certificate  {a['certificateType']:<14} expires {a['expirationDate'][:10]}  {a['name']}")
for d in get_all("/v1/devices"):
    a = d["attributes"]
    print(f"device       {a['udid']}  {a['status']:<8} {a['name']}")
for p in get_all("/v1/profiles"):
    a = p["attributes"]
    print(f"profile      {a['profileType']:<20} {a['profileState']:<7} {a['name']}")
