// Page through all apps: follow links.next until a page has none.
//
//   node list_apps.mjs [LIMIT]               LIMIT: apps per page, 1 to 200 (default 200)
//
// The proxy rewrites Apple's links to its own origin, so links.next goes through the proxy too.
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");
const limit = process.argv[2] ?? "200";

let url = `${BASE}/v1/apps?limit=${limit}`;
const apps = [];
let pages = 0;
while (url) {
  const r = await fetch(url);
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  const doc = await r.json();
  pages += 1;
  console.log(`page ${pages}: ${doc.data.length} apps (of ${doc.meta.paging.total})`);
  apps.push(...doc.data);
  url = doc.links.next; // absent on the last page
}
for (const app of apps) {
  console.log(`${app.id}  ${app.attributes.bundleId.padEnd(32)} ${app.attributes.name}`);
}
console.log(`total: ${apps.length} apps in ${pages} pages`);
