// App Store Server API: a customer's transaction history, all pages (revision / hasMore).
//
//   node transaction_history.mjs [TRANSACTION_ID]   default: $TRANSACTION_ID or 2000000412345678
//
// Each transaction is a JWS signed by Apple. This program only decodes the payloads to print
// them; before trusting one, verify its signature and x5c certificate chain (Apple's App Store
// Server Library does this).
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");
const tid = process.argv[2] ?? process.env.TRANSACTION_ID ?? "2000000412345678";

const payload = (jws) => JSON.parse(Buffer.from(jws.split(".")[1], "base64url").toString("utf8"));
const when = (ms) => new Date(ms).toISOString().slice(0, 10);

const params = new URLSearchParams({ sort: "ASCENDING" });
const transactions = [];
let pages = 0;
let doc;
for (;;) {
  const r = await fetch(`${BASE}/inApps/v2/history/${tid}?${params}`);
  if (r.status !== 200) throw new Error(`GET history: ${r.status} ${await r.text()}`);
  doc = await r.json();
  pages += 1;
  transactions.push(...doc.signedTransactions.map(payload));
  if (!doc.hasMore) break;
  params.set("revision", doc.revision);
}
console.log(`${doc.bundleId} (${doc.environment}): ${transactions.length} transactions in ${pages} pages`);
for (const t of transactions) {
  console.log(`  ${when(t.purchaseDate)} ${t.transactionId} ${t.type.padEnd(28)} ${t.productId}`);
}
