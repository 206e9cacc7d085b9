#!/usr/bin/python3
"""Download a daily Sales summary report, save the .gz file and print its rows.

    python3 sales_report.py [VENDOR_NUMBER] [YYYY-MM-DD]
    defaults: $VENDOR_NUMBER (your vendor number, in App Store Connect > Payments and Financial
    Reports) or 12345678; $REPORT_DATE, else the latest daily report.

The answer is a gzip file (Content-Type: application/a-gzip), not a gzip-coded response, so
requests hands over the compressed bytes; gunzip them yourself.
"""
import csv
import gzip
import io
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")
vendor = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("VENDOR_NUMBER", "12345678")
date = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("REPORT_DATE")

params = {"filter[frequency]": "DAILY", "filter[reportType]": "SALES",
          "filter[reportSubType]": "SUMMARY", "filter[vendorNumber]": vendor}
if date:
    params["filter[reportDate]"] = date
r = requests.get(f"{BASE}/v1/salesReports", params=params, timeout=60)
if r.status_code != 200:
    sys.exit(f"GET {r.url}: {r.status_code} {r.text}")   # Apple's errors JSON

name = f"sales_{vendor}_{date or 'latest'}.txt.gz"
with open(name, "wb") as f:
    f.write(r.content)
rows = list(csv.DictReader(io.StringIO(gzip.decompress(r.content).decode("utf-8")), delimiter="\t"))
print(f"saved {name}: {len(r.content)} bytes gzip ({r.headers.get('Content-Type')}), {len(rows)} rows")
for row in rows:
    print(f"  {row['Begin Date']} {row['Title']:<12} type {row['Product Type Identifier']:<4}"
          f" units {row['Units']:>4}  {row['Country Code']}")
print(f"total units: {sum(int(row['Units']) for row in rows)}")
