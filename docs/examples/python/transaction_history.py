#!/usr/bin/python3
"""App Store Server API: a customer's transaction history, all pages (revision / hasMore).

    python3 transaction_history.py [TRANSACTION_ID]   # default: $TRANSACTION_ID or 2000000412345678

Each transaction is a JWS signed by Apple. This program only decodes the payloads to print
them; before trusting one, verify its signature and x5c certificate chain (Apple's App Store
Server Library does this).
"""
import base64
import datetime
import json
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")
tid = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TRANSACTION_ID", "2000000412345678")


def payload(jws):
    part = jws.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def when(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d")


params, transactions, pages = {"sort": "ASCENDING"}, [], 0
while True:
    r = requests.get(f"{BASE}/inApps/v2/history/{tid}", params=params, timeout=30)
    if r.status_code != 200:
        sys.exit(f"GET {r.url}: {r.status_code} {r.text}")
    doc = r.json()
    pages += 1
    transactions += [payload(t) for t in doc["signedTransactions"]]
    if not doc["hasMore"]:
        break
    params["revision"] = doc["revision"]

print(f"{doc['bundleId']} ({doc['environment']}): {len(transactions)} transactions in {pages} pages")
for t in transactions:
    print(f"  {when(t['purchaseDate'])} {t['transactionId']} {t['type']:<28} {t['productId']}")
