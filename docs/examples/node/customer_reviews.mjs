// Customer reviews of an app, newest first, with each review's rating.
//
//   node customer_reviews.mjs [APP_ID]       default: $APP_ID, else the first app listed
//
// The API lists reviews one by one; it has no endpoint for the App Store's average rating. The
// mean printed here is only the mean of the reviews listed.
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");

async function get(url) {
  const r = await fetch(url);
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

const appId = process.argv[2] ?? process.env.APP_ID ?? (await get(`${BASE}/v1/apps?limit=1`)).data[0].id;
let url = `${BASE}/v1/apps/${appId}/customerReviews?sort=-createdDate&limit=200`;
const reviews = [];
while (url) {
  const doc = await get(url);
  reviews.push(...doc.data);
  url = doc.links.next;
}
const stars = {};
for (const rv of reviews) {
  const a = rv.attributes;
  stars[a.rating] = (stars[a.rating] ?? 0) + 1;
  console.log(`${"*".repeat(a.rating).padEnd(5)} ${a.createdDate.slice(0, 10)} ${a.territory} ${JSON.stringify(a.title)}  id ${rv.id}`);
}
if (reviews.length) {
  const mean = reviews.reduce((n, rv) => n + rv.attributes.rating, 0) / reviews.length;
  console.log(`${reviews.length} reviews; by rating: ${JSON.stringify(stars)}; mean of these reviews: ${mean.toFixed(2)}`);
}
