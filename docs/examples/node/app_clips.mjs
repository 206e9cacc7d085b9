// App Clips of an app.
//
//   node app_clips.mjs [APP_ID]              default: $APP_ID, else the first app listed
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");

async function get(url) {
  const r = await fetch(url);
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

const appId = process.argv[2] ?? process.env.APP_ID ?? (await get(`${BASE}/v1/apps?limit=1`)).data[0].id;
const clips = (await get(`${BASE}/v1/apps/${appId}/appClips`)).data;
console.log(`app ${appId}: ${clips.length} App Clips`);
for (const c of clips) console.log(`  App Clip ${c.id}  ${c.attributes.bundleId}`);
