#!/usr/bin/python3
"""Users of the team and their roles (all pages)."""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")

url = f"{BASE}/v1/users?limit=200"
users = []
while url:
    r = requests.get(url, timeout=30)
    if r.status_code != 200:
        sys.exit(f"GET {url}: {r.status_code} {r.text}")
    users += r.json()["data"]
    url = r.json()["links"].get("next")

print(f"{len(users)} users")
for u in users:
    a = u["attributes"]
    print(f"  {a['username']:<28} {a['firstName']} {a['lastName']:<12} {','.join(a['roles'])}")
