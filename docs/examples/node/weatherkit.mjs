// WeatherKit: which data sets exist for a place, then current weather and a daily forecast.
//
//   node weatherkit.mjs [LAT] [LON] [TIMEZONE] [COUNTRY]
//   defaults: 37.323 -122.032 America/Los_Angeles US
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");
const [lat = "37.323", lon = "-122.032", tz = "America/Los_Angeles", country = "US"] = process.argv.slice(2);

async function get(path, params) {
  const url = `${BASE}${path}?${new URLSearchParams(params)}`;
  const r = await fetch(url);
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

console.log("available data sets:", (await get(`/api/v1/availability/${lat}/${lon}`, { country })).join(", "));
const w = await get(`/api/v1/weather/en/${lat}/${lon}`, { dataSets: "currentWeather,forecastDaily", timezone: tz, countryCode: country });
const cur = w.currentWeather;
console.log(`now: ${cur.conditionCode}, ${cur.temperature} °C, humidity ${Math.round(cur.humidity * 100)}%`);
for (const day of w.forecastDaily.days) {
  console.log(`  ${day.forecastStart.slice(0, 10)}  ${day.conditionCode.padEnd(14)} ${day.temperatureMin.toFixed(1).padStart(5)} .. ${day.temperatureMax.toFixed(1).padStart(5)} °C  rain ${Math.round(day.precipitationChance * 100)}%`);
}
