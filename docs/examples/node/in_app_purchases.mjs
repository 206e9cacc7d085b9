// In-app purchases and subscriptions of one app.
//
//   node in_app_purchases.mjs [APP_ID]       default: $APP_ID, else the first app listed
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");

async function get(url) {
  const r = await fetch(url);
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

// Every item of a collection, following links.next.
async function getAll(url) {
  const items = [];
  while (url) {
    const doc = await get(url);
    items.push(...doc.data);
    url = doc.links.next;
  }
  return items;
}

const appId = process.argv[2] ?? process.env.APP_ID ?? (await get(`${BASE}/v1/apps?limit=1`)).data[0].id;

const iaps = await getAll(`${BASE}/v1/apps/${appId}/inAppPurchasesV2?limit=200`);
console.log(`app ${appId}: ${iaps.length} in-app purchases`);
for (const p of iaps) {
  const a = p.attributes;
  console.log(`  ${a.productId.padEnd(40)} ${a.inAppPurchaseType.padEnd(26)} ${a.state}`);
}

const groups = await getAll(`${BASE}/v1/apps/${appId}/subscriptionGroups?limit=200`);
console.log(`${groups.length} subscription groups`);
for (const g of groups) {
  console.log(`  group ${g.id} ${g.attributes.referenceName}`);
  // the group's "subscriptions" relationship links to its subscriptions
  for (const s of await getAll(g.relationships.subscriptions.links.related)) {
    const a = s.attributes;
    console.log(`    ${a.productId.padEnd(38)} ${a.subscriptionPeriod.padEnd(10)} level ${a.groupLevel}`);
  }
}
