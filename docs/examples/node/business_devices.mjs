// Apple Business Manager API: list the organisation's devices and MDM servers, then assign a
// device to an MDM server.
//
//   node business_devices.mjs [SERIAL] [MDM_SERVER_ID]
//   defaults: the first device listed, the first MDM server listed
// The proxy trades its client assertion for an access token and puts that on each request; the
// examples' configuration routes /business/ to api-business.apple.com (docs/recipes.md).
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "") + "/business";
const [serialArg, serverArg] = process.argv.slice(2);

async function call(method, path, body) {
  const r = await fetch(BASE + path, body === undefined ? { method } : {
    method, body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
  });
  if (r.status !== 200 && r.status !== 201) throw new Error(`${method} ${BASE}${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

const devices = (await call("GET", "/v1/orgDevices?limit=100")).data;
console.log(`${devices.length} devices`);
for (const d of devices) {
  const a = d.attributes;
  console.log(`  ${a.serialNumber.padEnd(20)} ${a.deviceModel.padEnd(14)} ${a.status}`);
}
const servers = (await call("GET", "/v1/mdmServers")).data;
for (const s of servers) console.log(`MDM server ${s.id}  ${s.attributes.serverName}`);
const serial = serialArg ?? devices[0].id;
const server = servers.find((s) => s.id === (serverArg ?? servers[0].id)) ?? servers[0];
const activity = (await call("POST", "/v1/orgDeviceActivities", {
  data: {
    type: "orgDeviceActivities",
    attributes: { activityType: "ASSIGN_DEVICES" },
    relationships: {
      mdmServer: { data: { type: "mdmServers", id: server.id } },
      devices: { data: [{ type: "orgDevices", id: serial }] },
    },
  },
})).data;
console.log(`assigning ${serial} to ${server.attributes.serverName}: activity ${activity.id} ${activity.attributes.status}`);
