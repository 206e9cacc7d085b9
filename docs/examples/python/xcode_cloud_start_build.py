#!/usr/bin/python3
"""Xcode Cloud: start a build of a workflow.

    python3 xcode_cloud_start_build.py [WORKFLOW_ID]
    default: $WORKFLOW_ID, else the first workflow of the first product listed.
    Starting a build uses your Xcode Cloud compute hours.
"""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")


def call(method, url, **kw):
    r = requests.request(method, url, timeout=30, **kw)
    if r.status_code not in (200, 201):
        sys.exit(f"{method} {url}: {r.status_code} {r.text}")
    return r.json()


workflow_id = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("WORKFLOW_ID")
if not workflow_id:
    product = call("GET", f"{BASE}/v1/ciProducts?limit=1")["data"][0]
    workflow_id = call("GET", f"{BASE}/v1/ciProducts/{product['id']}/workflows?limit=1")["data"][0]["id"]

run = call("POST", f"{BASE}/v1/ciBuildRuns", json={"data": {
    "type": "ciBuildRuns",
    "relationships": {"workflow": {"data": {"type": "ciWorkflows", "id": workflow_id}}}}})["data"]
a = run["attributes"]
print(f"started build run {run['id']}: number {a['number']}, {a['executionProgress']}")
