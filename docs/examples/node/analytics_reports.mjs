// Analytics Reports API: download counts from the App Store Commerce reports.
//
//   node analytics_reports.mjs [APP_ID]      default: $APP_ID, else the first app listed
//
// Flow: an ONGOING report request for the app (made once, here if none exists; an Admin key
// makes it) -> its reports -> a report's instances (one per day/week/month) -> each instance's
// segments, whose url is a file (gzip of tab-separated text) fetched without a token. Apple makes
// the first reports 24 to 48 hours after the request: until then there are no instances.
import { gunzipSync } from "node:zlib";

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

const appId = process.argv[2] ?? process.env.APP_ID ?? (await call("GET", "/v1/apps?limit=1")).data[0].id;
const existing = (await call("GET", `/v1/apps/${appId}/analyticsReportRequests?filter%5BaccessType%5D=ONGOING`)).data;
let requestId;
if (existing.length) {
  requestId = existing[0].id;
  console.log(`report request ${requestId} (ONGOING) exists`);
} else {
  requestId = (await call("POST", "/v1/analyticsReportRequests", { data: {
    type: "analyticsReportRequests", attributes: { accessType: "ONGOING" },
    relationships: { app: { data: { type: "apps", id: appId } } },
  } })).data.id;
  console.log(`created report request ${requestId} (ONGOING)`);
}

const reports = (await call("GET", `/v1/analyticsReportRequests/${requestId}/reports?filter%5Bcategory%5D=APP_STORE_COMMERCE`)).data;
for (const rep of reports) console.log(`report ${rep.id}  ${rep.attributes.category}: ${rep.attributes.name}`);
const downloads = reports.filter((rep) => rep.attributes.name.includes("Download"));
if (!downloads.length) throw new Error("no downloads report yet");

const instances = (await call("GET", `/v1/analyticsReports/${downloads[0].id}/instances?filter%5Bgranularity%5D=DAILY`)).data;
if (!instances.length) console.log("no instances yet: Apple makes the first reports 24-48 hours after the request");
for (const inst of instances.slice(0, 1)) {
  const day = inst.attributes.processingDate;
  for (const seg of (await call("GET", `/v1/analyticsReportInstances/${inst.id}/segments`)).data) {
    // a pre-signed URL, valid for minutes: no Authorization header, no proxy needed
    const r = await fetch(seg.attributes.url);
    if (!r.ok) throw new Error(`segment ${seg.id}: ${r.status}`);
    const [header, ...lines] = gunzipSync(Buffer.from(await r.arrayBuffer())).toString("utf8").trimEnd().split("\n").map((l) => l.split("\t"));
    const rows = lines.map((cells) => Object.fromEntries(header.map((h, i) => [h, cells[i]])));
    const total = rows.reduce((n, row) => n + Number(row.Counts), 0);
    console.log(`${day}: segment ${seg.id} ${seg.attributes.sizeInBytes} bytes, ${rows.length} rows, ${total} downloads`);
    for (const row of rows) console.log(`  ${row.Date} ${row["Download Type"].padEnd(20)} ${row.Territory} ${row.Counts}`);
  }
}
