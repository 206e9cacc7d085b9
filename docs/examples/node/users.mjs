// Users of the team and their roles (all pages).
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");

let url = `${BASE}/v1/users?limit=200`;
const users = [];
while (url) {
  const r = await fetch(url);
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  const doc = await r.json();
  users.push(...doc.data);
  url = doc.links.next;
}
console.log(`${users.length} users`);
for (const u of users) {
  const a = u.attributes;
  console.log(`  ${a.username.padEnd(28)} ${a.firstName} ${a.lastName.padEnd(12)} ${a.roles.join(",")}`);
}
