#!/usr/bin/python3
"""Invite a user to the team.

    python3 invite_user.py [EMAIL] [ROLE,ROLE...]
    defaults: $INVITE_EMAIL or new.developer@example.com, role DEVELOPER
"""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")
email = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("INVITE_EMAIL", "new.developer@example.com")
roles = (sys.argv[2] if len(sys.argv) > 2 else "DEVELOPER").split(",")

r = requests.post(f"{BASE}/v1/userInvitations", timeout=30, json={"data": {
    "type": "userInvitations",
    "attributes": {"email": email, "firstName": "New", "lastName": "Developer",
                   "roles": roles, "allAppsVisible": True}}})
if r.status_code != 201:
    sys.exit(f"POST /v1/userInvitations: {r.status_code} {r.text}")
inv = r.json()["data"]
print(f"invited {inv['attributes']['email']} as {','.join(inv['attributes']['roles'])}; "
      f"invitation {inv['id']} expires {inv['attributes']['expirationDate']}")
