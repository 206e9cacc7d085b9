// Xcode Cloud: products and the workflows of each.
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");

async function get(url) {
  const r = await fetch(url);
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

const products = (await get(`${BASE}/v1/ciProducts?limit=200`)).data;
console.log(`${products.length} Xcode Cloud products`);
for (const p of products) {
  console.log(`product ${p.id}  ${p.attributes.name} (${p.attributes.productType})`);
  for (const w of (await get(`${BASE}/v1/ciProducts/${p.id}/workflows?limit=200`)).data) {
    console.log(`  workflow ${w.id}  ${w.attributes.name}${w.attributes.isEnabled ? "" : " (disabled)"}`);
  }
}
