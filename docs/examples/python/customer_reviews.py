#!/usr/bin/python3
"""Customer reviews of an app, newest first, with each review's rating.

    python3 customer_reviews.py [APP_ID]    # default: $APP_ID, else the first app listed

The API lists reviews one by one; it has no endpoint for the App Store's average rating. The mean
printed here is only the mean of the reviews listed.
"""
import os
import sys
from collections import Counter

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")


def get(url):
    r = requests.get(url, timeout=30)
    if r.status_code != 200:
        sys.exit(f"GET {url}: {r.status_code} {r.text}")
    return r.json()


app_id = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("APP_ID")) \
    or get(f"{BASE}/v1/apps?limit=1")["data"][0]["id"]

url, reviews = f"{BASE}/v1/apps/{app_id}/customerReviews?sort=-createdDate&limit=200", []
while url:
    doc = get(url)
    reviews += doc["data"]
    url = doc["links"].get("next")

for rv in reviews:
    a = rv["attributes"]
    print(f"{'*' * a['rating']:<5} {a['createdDate'][:10]} {a['territory']} {a['title']!r}  id {rv['id']}")
stars = Counter(rv["attributes"]["rating"] for rv in reviews)
if reviews:
    mean = sum(k * n for k, n in stars.items()) / len(reviews)
    print(f"{len(reviews)} reviews; by rating: {dict(sorted(stars.items()))}; "
          f"mean of these reviews: {mean:.2f}")
