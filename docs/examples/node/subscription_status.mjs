// App Store Server API: the status of every subscription of the customer who made a transaction.
//
//   node subscription_status.mjs [TRANSACTION_ID]   default: $TRANSACTION_ID or 2000000412345678
//
// Signed fields are JWS: decoded here for printing only; verify them before trusting them.
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");
const tid = process.argv[2] ?? process.env.TRANSACTION_ID ?? "2000000412345678";
const STATUS = { 1: "active", 2: "expired", 3: "billing retry", 4: "billing grace period", 5: "revoked" };

const payload = (jws) => JSON.parse(Buffer.from(jws.split(".")[1], "base64url").toString("utf8"));

const r = await fetch(`${BASE}/inApps/v1/subscriptions/${tid}`);
if (r.status !== 200) throw new Error(`GET subscriptions: ${r.status} ${await r.text()}`);
const doc = await r.json();
console.log(`${doc.bundleId} (${doc.environment})`);
for (const group of doc.data) {
  for (const last of group.lastTransactions) {
    const tx = payload(last.signedTransactionInfo);
    const renewal = payload(last.signedRenewalInfo);
    console.log(`  group ${group.subscriptionGroupIdentifier}: ${tx.productId} is ${STATUS[last.status] ?? last.status}, expires ${new Date(tx.expiresDate).toISOString().slice(0, 10)}, auto-renew ${renewal.autoRenewStatus === 1 ? "on" : "off"}`);
  }
}
