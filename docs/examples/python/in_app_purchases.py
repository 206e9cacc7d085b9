#!/usr/bin/python3
"""In-app purchases and subscriptions of one app.

    python3 in_app_purchases.py [APP_ID]    # default: $APP_ID, else the first app listed
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


def get_all(url):
    """Every item of a collection, following links.next."""
    items = []
    while url:
        doc = get(url)
        items += doc["data"]
        url = doc["links"].get("next")
    return items


app_id = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("APP_ID")) \
    or get(f"{BASE}/v1/apps?limit=1")["data"][0]["id"]

iaps = get_all(f"{BASE}/v1/apps/{app_id}/inAppPurchasesV2?limit=200")
print(f"app {app_id}: {len(iaps)} in-app purchases")
for p in iaps:
    a = p["attributes"]
    print(f"  {a['productId']:<40} {a['inAppPurchaseType']:<26} {a['state']}")

groups = get_all(f"{BASE}/v1/apps/{app_id}/subscriptionGroups?limit=200")
print(f"{len(groups)} subscription groups")
for g in groups:
    print(f"  group {g['id']} {g['attributes']['referenceName']}")
    # the group's "subscriptions" relationship links to its subscriptions
    for s in get_all(g["relationships"]["subscriptions"]["links"]["related"]):
        a = s["attributes"]
        print(f"    {a['productId']:<38} {a['subscriptionPeriod']:<10} level {a['groupLevel']}")
