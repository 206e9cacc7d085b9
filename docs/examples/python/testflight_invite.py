#!/usr/bin/python3
"""TestFlight: add a tester to a beta group, then send them an invitation to the app.

    python3 testflight_invite.py [EMAIL] [GROUP_ID]
    EMAIL default: $TESTER_EMAIL or tester@example.com; GROUP_ID default: $BETA_GROUP_ID, else
    the first external beta group of $APP_ID (or of the first app listed).
"""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")
email = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TESTER_EMAIL", "tester@example.com")
group_id = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("BETA_GROUP_ID")


def call(method, url, **kw):
    r = requests.request(method, url, timeout=30, **kw)
    if r.status_code not in (200, 201):
        sys.exit(f"{method} {r.url}: {r.status_code} {r.text}")
    return r.json()


app_id = os.environ.get("APP_ID") or call("GET", f"{BASE}/v1/apps", params={"limit": 1})["data"][0]["id"]
if not group_id:
    groups = call("GET", f"{BASE}/v1/betaGroups", params={"filter[app]": app_id, "limit": 200})["data"]
    group_id = next(g["id"] for g in groups if not g["attributes"]["isInternalGroup"])

tester = call("POST", f"{BASE}/v1/betaTesters", json={"data": {
    "type": "betaTesters",
    "attributes": {"email": email, "firstName": "Test", "lastName": "Er"},
    "relationships": {"betaGroups": {"data": [{"type": "betaGroups", "id": group_id}]}}}})["data"]
print(f"created beta tester {tester['id']} ({tester['attributes']['email']}) in group {group_id}")

invitation = call("POST", f"{BASE}/v1/betaTesterInvitations", json={"data": {
    "type": "betaTesterInvitations",
    "relationships": {"app": {"data": {"type": "apps", "id": app_id}},
                      "betaTester": {"data": {"type": "betaTesters", "id": tester["id"]}}}}})["data"]
print(f"invitation {invitation['id']} sent for app {app_id}")
