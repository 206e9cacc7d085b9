#!/usr/bin/python3
"""Respond to a customer review.

    python3 review_response.py [REVIEW_ID] [TEXT]
    REVIEW_ID default: $REVIEW_ID, else the newest review of $APP_ID (or of the first app listed).
"""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")
review_id = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("REVIEW_ID")
text = sys.argv[2] if len(sys.argv) > 2 else "Thank you for the feedback! Version 1.2 fixes this."


def call(method, url, **kw):
    r = requests.request(method, url, timeout=30, **kw)
    if r.status_code not in (200, 201):
        sys.exit(f"{method} {url}: {r.status_code} {r.text}")
    return r.json()


if not review_id:
    app_id = os.environ.get("APP_ID") or call("GET", f"{BASE}/v1/apps?limit=1")["data"][0]["id"]
    review_id = call("GET", f"{BASE}/v1/apps/{app_id}/customerReviews?sort=-createdDate&limit=1")["data"][0]["id"]

resp = call("POST", f"{BASE}/v1/customerReviewResponses", json={"data": {
    "type": "customerReviewResponses",
    "attributes": {"responseBody": text},
    "relationships": {"review": {"data": {"type": "customerReviews", "id": review_id}}}}})["data"]
print(f"response {resp['id']} to review {review_id}: {resp['attributes']['state']}")
