#!/usr/bin/python3
"""Analytics Reports API: download counts from the App Store Commerce reports.

    python3 analytics_reports.py [APP_ID]   # default: $APP_ID, else the first app listed

Flow: an ONGOING report request for the app (made once, here if none exists; an Admin key
makes it) -> its reports -> a report's instances (one per day/week/month) -> each instance's
segments, whose url is a file (gzip of tab-separated text) fetched without a token. Apple makes
the first reports 24 to 48 hours after the request: until then there are no instances.
"""
import csv
import gzip
import io
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")


def call(method, url, **kw):
    r = requests.request(method, url, timeout=30, **kw)
    if r.status_code not in (200, 201):
        sys.exit(f"{method} {url}: {r.status_code} {r.text}")
    return r.json()


app_id = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("APP_ID")) \
    or call("GET", f"{BASE}/v1/apps?limit=1")["data"][0]["id"]

existing = call("GET", f"{BASE}/v1/apps/{app_id}/analyticsReportRequests",
                params={"filter[accessType]": "ONGOING"})["data"]
if existing:
    request_id = existing[0]["id"]
    print(f"report request {request_id} (ONGOING) exists")
else:
    request_id = call("POST", f"{BASE}/v1/analyticsReportRequests", json={"data": {
        "type": "analyticsReportRequests", "attributes": {"accessType": "ONGOING"},
        "relationships": {"app": {"data": {"type": "apps", "id": app_id}}}}})["data"]["id"]
    print(f"created report request {request_id} (ONGOING)")

reports = call("GET", f"{BASE}/v1/analyticsReportRequests/{request_id}/reports",
               params={"filter[category]": "APP_STORE_COMMERCE"})["data"]
for rep in reports:
    print(f"report {rep['id']}  {rep['attributes']['category']}: {rep['attributes']['name']}")
downloads = [rep for rep in reports if "Download" in rep["attributes"]["name"]]
if not downloads:
    sys.exit("no downloads report yet")

instances = call("GET", f"{BASE}/v1/analyticsReports/{downloads[0]['id']}/instances",
                 params={"filter[granularity]": "DAILY"})["data"]
if not instances:
    print("no instances yet: Apple makes the first reports 24-48 hours after the request")
for inst in instances[:1]:
    day = inst["attributes"]["processingDate"]
    segments = call("GET", f"{BASE}/v1/analyticsReportInstances/{inst['id']}/segments")["data"]
    for seg in segments:
        # a pre-signed URL, valid for minutes: no Authorization header, no proxy needed
        r = requests.get(seg["attributes"]["url"], timeout=60)
        r.raise_for_status()
        rows = list(csv.DictReader(io.StringIO(gzip.decompress(r.content).decode("utf-8")),
                                   delimiter="\t"))
        total = sum(int(row["Counts"]) for row in rows)
        print(f"{day}: segment {seg['id']} {seg['attributes']['sizeInBytes']} bytes, "
              f"{len(rows)} rows, {total} downloads")
        for row in rows:
            print(f"  {row['Date']} {row['Download Type']:<20} {row['Territory']} {row['Counts']}")
