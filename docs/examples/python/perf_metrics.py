#!/usr/bin/python3
"""Power and performance metrics of an app (the data behind Xcode's Organizer).

    python3 perf_metrics.py [APP_ID]        # default: $APP_ID, else the first app listed
"""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")


def get(url, **kw):
    r = requests.get(url, timeout=30, **kw)
    if r.status_code != 200:
        sys.exit(f"GET {url}: {r.status_code} {r.text}")
    return r


app_id = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("APP_ID")) \
    or get(f"{BASE}/v1/apps?limit=1").json()["data"][0]["id"]

r = get(f"{BASE}/v1/apps/{app_id}/perfPowerMetrics",
        headers={"Accept": "application/vnd.apple.xcode-metrics+json"})
doc = r.json()
print(f"app {app_id}: metrics {doc['version']} ({r.headers.get('Content-Type')})")
for product in doc["productData"]:
    for category in product["metricCategories"]:
        for metric in category["metrics"]:
            for ds in metric["datasets"]:
                last = ds["points"][-1]
                print(f"  {product['platform']} {category['identifier']:<8} {metric['identifier']:<12}"
                      f" {ds['filterCriteria']['deviceMarketingName']}, "
                      f"{ds['filterCriteria']['percentile']}: {last['value']} "
                      f"{metric['unit']['displayName']} in {last['version']}")
for insight in doc.get("insights", {}).get("regressions", []):
    print(f"  regression: {insight['summaryString']}")
