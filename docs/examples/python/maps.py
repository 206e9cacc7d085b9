#!/usr/bin/python3
"""Apple Maps Server API: geocode an address, search for places near it, directions between two.

    python3 maps.py [ADDRESS] [QUERY] [ORIGIN] [DESTINATION]
    defaults: "1 Apple Park Way, Cupertino" coffee Cupertino "San Francisco"
The proxy trades its Maps auth token for an access token and puts that on each request; the
examples' configuration routes /maps/ to maps-api.apple.com (docs/recipes.md).
"""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/") + "/maps"
args = sys.argv[1:] + [None] * 4
address, query = args[0] or "1 Apple Park Way, Cupertino", args[1] or "coffee"
origin, destination = args[2] or "Cupertino", args[3] or "San Francisco"


def get(path, **params):
    r = requests.get(BASE + path, params=params, timeout=30)
    if r.status_code != 200:
        sys.exit(f"GET {r.url}: {r.status_code} {r.text}")
    return r.json()


place = get("/v1/geocode", q=address, lang="en-US")["results"][0]
lat, lon = place["coordinate"]["latitude"], place["coordinate"]["longitude"]
print(f"geocode {address!r}: {lat}, {lon} ({place['country']})")
found = get("/v1/search", q=query, searchLocation=f"{lat},{lon}", lang="en-US")["results"]
print(f"search {query!r}: {len(found)} results; first: {found[0]['name']} ({found[0]['poiCategory']})")
route = get("/v1/directions", origin=origin, destination=destination,
            transportType="Automobile")["routes"][0]
print(f"directions {origin} -> {destination}: {route['distanceMeters'] / 1000:.1f} km, "
      f"{route['durationSeconds'] // 60} min by {route['transportType']}")
