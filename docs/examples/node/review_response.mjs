// Respond to a customer review.
//
//   node review_response.mjs [REVIEW_ID] [TEXT]
//   REVIEW_ID default: $REVIEW_ID, else the newest review of $APP_ID (or of the first app listed).
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");
let reviewId = process.argv[2] ?? process.env.REVIEW_ID;
const text = process.argv[3] ?? "Thank you for the feedback! Version 1.2 fixes this.";

async function call(method, path, body) {
  const r = await fetch(`${BASE}${path}`, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (r.status !== 200 && r.status !== 201) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

if (!reviewId) {
  const appId = process.env.APP_ID ?? (await call("GET", "/v1/apps?limit=1")).data[0].id;
  reviewId = (await call("GET", `/v1/apps/${appId}/customerReviews?sort=-createdDate&limit=1`)).data[0].id;
}
const resp = (await call("POST", "/v1/customerReviewResponses", { data: {
  type: "customerReviewResponses",
  attributes: { responseBody: text },
  relationships: { review: { data: { type: "customerReviews", id: reviewId } } },
} })).data;
console.log(`response ${resp.id} to review ${reviewId}: ${resp.attributes.state}`);
