// Provisioning: bundle IDs, certificates, devices and profiles (team keys only: individual keys
// cannot use the provisioning endpoints).
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");

async function getAll(path) {
  let url = `${BASE}${path}?limit=200`;
  const items = [];
  while (url) {
    const r = await fetch(url);
    if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
    const doc = await r.json();
    items.push(...doc.data);
    url = doc.links.next;
  }
  return items;
}

for (const b of await getAll("/v1/bundleIds")) {
  console.log(`bundle ID    ${b.attributes.identifier.padEnd(32)} ${b.attributes.platform}`);
}
for (const c of await getAll("/v1/certificates")) {
  const a = c.attributes;
  console.log(`certificate  ${a.certificateType.padEnd(14)} expires ${a.expirationDate.slice(0, 10)}  ${a.name}`);
}
for (const d of await getAll("/v1/devices")) {
  const a = d.attributes;
  console.log(`device       ${a.udid}  ${a.status.padEnd(8)} ${a.name}`);
}
for (const p of await getAll("/v1/profiles")) {
  const a = p.attributes;
  console.log(`profile      ${a.profileType.padEnd(20)} ${a.profileState.padEnd(7)} ${a.name}`);
}
