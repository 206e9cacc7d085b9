// TestFlight: add a tester to a beta group, then send them an invitation to the app.
//
//   node testflight_invite.mjs [EMAIL] [GROUP_ID]
//   EMAIL default: $TESTER_EMAIL or tester@example.com; GROUP_ID default: $BETA_GROUP_ID, else
//   the first external beta group of $APP_ID (or of the first app listed).
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");
const email = process.argv[2] ?? process.env.TESTER_EMAIL ?? "tester@example.com";
let groupId = process.argv[3] ?? process.env.BETA_GROUP_ID;

async function call(method, path, body) {
  const r = await fetch(`${BASE}${path}`, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (r.status !== 200 && r.status !== 201) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

const appId = process.env.APP_ID ?? (await call("GET", "/v1/apps?limit=1")).data[0].id;
if (!groupId) {
  const groups = (await call("GET", `/v1/betaGroups?filter[app]=${appId}&limit=200`)).data;
  groupId = groups.find((g) => !g.attributes.isInternalGroup).id;
}

const tester = (await call("POST", "/v1/betaTesters", { data: {
  type: "betaTesters",
  attributes: { email, firstName: "Test", lastName: "Er" },
  relationships: { betaGroups: { data: [{ type: "betaGroups", id: groupId }] } },
} })).data;
console.log(`created beta tester ${tester.id} (${tester.attributes.email}) in group ${groupId}`);

const invitation = (await call("POST", "/v1/betaTesterInvitations", { data: {
  type: "betaTesterInvitations",
  relationships: {
    app: { data: { type: "apps", id: appId } },
    betaTester: { data: { type: "betaTesters", id: tester.id } },
  },
} })).data;
console.log(`invitation ${invitation.id} sent for app ${appId}`);
