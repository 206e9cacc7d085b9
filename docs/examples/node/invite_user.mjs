// Invite a user to the team.
//
//   node invite_user.mjs [EMAIL] [ROLE,ROLE...]
//   defaults: $INVITE_EMAIL or new.developer@example.com, role DEVELOPER
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");
const email = process.argv[2] ?? process.env.INVITE_EMAIL ?? "new.developer@example.com";
const roles = (process.argv[3] ?? "DEVELOPER").split(",");

const r = await fetch(`${BASE}/v1/userInvitations`, {
  method: "POST",
  headers: { "Content-Type": "application/json" },
  body: JSON.stringify({ data: {
    type: "userInvitations",
    attributes: { email, firstName: "New", lastName: "Developer", roles, allAppsVisible: true },
  } }),
});
if (r.status !== 201) throw new Error(`POST /v1/userInvitations: ${r.status} ${await r.text()}`);
const inv = (await r.json()).data;
console.log(`invited ${inv.attributes.email} as ${inv.attributes.roles.join(",")}; invitation ${inv.id} expires ${inv.attributes.expirationDate}`);
