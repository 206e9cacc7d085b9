#!/usr/bin/python3
"""WeatherKit: which data sets exist for a place, then current weather and a daily forecast.

    python3 weatherkit.py [LAT] [LON] [TIMEZONE] [COUNTRY]
    defaults: 37.323 -122.032 America/Los_Angeles US
"""
import os
import sys

import requests

BASE = os.environ.get("APPLE_PROXY_URL", "http://localhost:8080").rstrip("/")
args = sys.argv[1:] + [None] * 4
lat, lon = args[0] or "37.323", args[1] or "-122.032"
tz, country = args[2] or "America/Los_Angeles", args[3] or "US"


def get(url, **params):
    r = requests.get(url, params=params, timeout=30)
    if r.status_code != 200:
        sys.exit(f"GET {r.url}: {r.status_code} {r.text}")
    return r.json()


print("available data sets:", ", ".join(get(f"{BASE}/api/v1/availability/{lat}/{lon}", country=country)))
w = get(f"{BASE}/api/v1/weather/en/{lat}/{lon}", dataSets="currentWeather,forecastDaily",
        timezone=tz, countryCode=country)
cur = w["currentWeather"]
print(f"now: {cur['conditionCode']}, {cur['temperature']} °C, humidity {cur['humidity']:.0%}")
for day in w["forecastDaily"]["days"]:
    print(f"  {day['forecastStart'][:10]}  {day['conditionCode']:<14} "
          f"{day['temperatureMin']:5.1f} .. {day['temperatureMax']:5.1f} °C  "
          f"rain {day['precipitationChance']:.0%}")
