#!/usr/bin/python3
"""App Store Server API: the status of every subscription of the customer who made a transaction.

    python3 subscription_status.py [TRANSACTION_ID]   # default: $TRANSACTION_ID or 2000000412345678

Signed fields are JWS: decoded here for printing only; verify them before trusting them.
"""
import base64
import datetime
import json
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")
tid = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TRANSACTION_ID", "2000000412345678")
STATUS = {1: "active", 2: "expired", 3: "billing retry", 4: "billing grace period", 5: "revoked"}


def payload(jws):
    part = jws.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


r = requests.get(f"{BASE}/inApps/v1/subscriptions/{tid}", timeout=30)
if r.status_code != 200:
    sys.exit(f"GET {r.url}: {r.status_code} {r.text}")
doc = r.json()
print(f"{doc['bundleId']} ({doc['environment']})")
for group in doc["data"]:
    for last in group["lastTransactions"]:
        tx, renewal = payload(last["signedTransactionInfo"]), payload(last["signedRenewalInfo"])
        expires = datetime.datetime.fromtimestamp(tx["expiresDate"] / 1000, datetime.timezone.utc)
        print(f"  group {group['subscriptionGroupIdentifier']}: {tx['productId']} is "
              f"{STATUS.get(last['status'], last['status'])}, expires {expires:%Y-%m-%d}, "
              f"auto-renew {'on' if renewal['autoRenewStatus'] == 1 else 'off'}")
