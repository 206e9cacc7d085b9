// Xcode Cloud: start a build of a workflow.
//
//   node xcode_cloud_start_build.mjs [WORKFLOW_ID]
//   default: $WORKFLOW_ID, else the first workflow of the first product listed.
//   Starting a build uses your Xcode Cloud compute hours.
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");

async function call(method, path, body) {
  const r = await fetch(`${BASE}${path}`, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (r.status !== 200 && r.status !== 201) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

let workflowId = process.argv[2] ?? process.env.WORKFLOW_ID;
if (!workflowId) {
  const product = (await call("GET", "/v1/ciProducts?limit=1")).data[0];
  workflowId = (await call("GET", `/v1/ciProducts/${product.id}/workflows?limit=1`)).data[0].id;
}
const run = (await call("POST", "/v1/ciBuildRuns", { data: {
  type: "ciBuildRuns",
  relationships: { workflow: { data: { type: "ciWorkflows", id: workflowId } } },
} })).data;
console.log(`started build run ${run.id}: number ${run.attributes.number}, ${run.attributes.executionProgress}`);
