// App Store versions of an app and the localized metadata of each.
//
//   node app_versions.mjs [APP_ID]           default: $APP_ID, else the first app listed
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");

async function get(url) {
  const r = await fetch(url);
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

const appId = process.argv[2] ?? process.env.APP_ID ?? (await get(`${BASE}/v1/apps?limit=1`)).data[0].id;
for (const v of (await get(`${BASE}/v1/apps/${appId}/appStoreVersions?limit=200`)).data) {
  const a = v.attributes;
  console.log(`version ${a.versionString} (${a.platform}): ${a.appStoreState}`);
  const locs = (await get(`${BASE}/v1/appStoreVersions/${v.id}/appStoreVersionLocalizations?limit=200`)).data;
  for (const loc of locs) {
    const la = loc.attributes;
    console.log(`  ${la.locale}: keywords=${JSON.stringify(la.keywords)} whatsNew=${JSON.stringify(la.whatsNew)}`);
  }
}
