#!/usr/bin/python3
"""App Clips of an app.

    python3 app_clips.py [APP_ID]           # default: $APP_ID, else the first app listed
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
clips = get(f"{BASE}/v1/apps/{app_id}/appClips")["data"]
print(f"app {app_id}: {len(clips)} App Clips")
for c in clips:
    print(f"  App Clip {c['id']}  {c['attributes']['bundleId']}")
