#!/usr/bin/python3
"""Apple Business Manager API: list the organisation's devices and MDM servers, then assign
a device to an MDM server.

    python3 business_devices.py [SERIAL] [MDM_SERVER_ID]
    defaults: the first device listed, the first MDM server listed
The proxy trades its client assertion for an access token and puts that on each request; the
examples' configuration routes /business/ to api-business.apple.com (docs/recipes.md).
"""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/") + "/business"
args = sys.argv[1:] + [None] * 2


def call(method, path, **kw):
    r = requests.request(method, BASE + path, timeout=30, **kw)
    if r.status_code not in (200, 201):
        sys.exit(f"{method} {r.url}: {r.status_code} {r.text}")
    return r.json()


devices = call("GET", "/v1/orgDevices", params={"limit": 100})["data"]
print(f"{len(devices)} devices")
for d in devices:
    a = d["attributes"]
    print(f"  {a['serialNumber']:<20} {a['deviceModel']:<14} {a['status']}")
servers = call("GET", "/v1/mdmServers")["data"]
for s in servers:
    print(f"MDM server {s['id']}  {s['attributes']['serverName']}")
serial = args[0] or devices[0]["id"]
server = next((s for s in servers if s["id"] == (args[1] or servers[0]["id"])), servers[0])
activity = call("POST", "/v1/orgDeviceActivities", json={"data": {
    "type": "orgDeviceActivities",
    "attributes": {"activityType": "ASSIGN_DEVICES"},
    "relationships": {
        "mdmServer": {"data": {"type": "mdmServers", "id": server["id"]}},
        "devices": {"data": [{"type": "orgDevices", "id": serial}]}}}})["data"]
print(f"assigning {serial} to {server['attributes']['serverName']}: activity {activity['id']} "
      f"{activity['attributes']['status']}")
