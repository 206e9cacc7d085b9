// TestFlight: an app's builds (newest first) and its beta groups.
//
//   node testflight_builds.mjs [APP_ID]      default: $APP_ID, else the first app listed
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");

async function get(path, params = {}) {
  const url = `${BASE}${path}?${new URLSearchParams(params)}`;
  const r = await fetch(url);
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

const appId = process.argv[2] ?? process.env.APP_ID ?? (await get("/v1/apps", { limit: 1 })).data[0].id;

const builds = await get("/v1/builds", { "filter[app]": appId, sort: "-uploadedDate", limit: 20 });
console.log(`app ${appId}: ${builds.meta.paging.total} builds, newest first`);
for (const b of builds.data) {
  const a = b.attributes;
  console.log(`  build ${a.version.padEnd(6)} uploaded ${a.uploadedDate}  ${a.processingState}${a.expired ? "  expired" : ""}`);
}

const groups = await get("/v1/betaGroups", { "filter[app]": appId, limit: 200 });
console.log(`${groups.data.length} beta groups`);
for (const g of groups.data) {
  const a = g.attributes;
  const kind = a.isInternalGroup ? "internal" : "external";
  console.log(`  ${g.id}  ${a.name} (${kind})${a.publicLink ? " " + a.publicLink : ""}`);
}
