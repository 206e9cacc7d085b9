// Apple Maps Server API: geocode an address, search for places near it, directions between two.
//
//   node maps.mjs [ADDRESS] [QUERY] [ORIGIN] [DESTINATION]
//   defaults: "1 Apple Park Way, Cupertino" coffee Cupertino "San Francisco"
// The proxy trades its Maps auth token for an access token and puts that on each request; the
// examples' configuration routes /maps/ to maps-api.apple.com (docs/recipes.md).
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "") + "/maps";
const [address = "1 Apple Park Way, Cupertino", query = "coffee", origin = "Cupertino", destination = "San Francisco"] = process.argv.slice(2);

async function get(path, params) {
  const url = `${BASE}${path}?${new URLSearchParams(params)}`;
  const r = await fetch(url);
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

const place = (await get("/v1/geocode", { q: address, lang: "en-US" })).results[0];
const { latitude: lat, longitude: lon } = place.coordinate;
console.log(`geocode '${address}': ${lat}, ${lon} (${place.country})`);
const found = (await get("/v1/search", { q: query, searchLocation: `${lat},${lon}`, lang: "en-US" })).results;
console.log(`search '${query}': ${found.length} results; first: ${found[0].name} (${found[0].poiCategory})`);
const route = (await get("/v1/directions", { origin, destination, transportType: "Automobile" })).routes[0];
console.log(`directions ${origin} -> ${destination}: ${(route.distanceMeters / 1000).toFixed(1)} km, ${Math.floor(route.durationSeconds / 60)} min by ${route.transportType}`);
