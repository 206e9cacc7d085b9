// Download a daily Sales summary report, save the .gz file and print its rows.
//
//   node sales_report.mjs [VENDOR_NUMBER] [YYYY-MM-DD]
//   defaults: $VENDOR_NUMBER (your vendor number, in App Store Connect > Payments and Financial
//   Reports) or 12345678; $REPORT_DATE, else the latest daily report.
//
// The answer is a gzip file (Content-Type: application/a-gzip), not a gzip-coded response, so
// fetch hands over the compressed bytes; gunzip them yourself.
import { writeFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";

const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");
const vendor = process.argv[2] ?? process.env.VENDOR_NUMBER ?? "12345678";
const date = process.argv[3] ?? process.env.REPORT_DATE;

const params = new URLSearchParams({
  "filter[frequency]": "DAILY", "filter[reportType]": "SALES",
  "filter[reportSubType]": "SUMMARY", "filter[vendorNumber]": vendor,
});
if (date) params.set("filter[reportDate]", date);
const r = await fetch(`${BASE}/v1/salesReports?${params}`);
if (r.status !== 200) throw new Error(`GET /v1/salesReports: ${r.status} ${await r.text()}`); // Apple's errors JSON

const gz = Buffer.from(await r.arrayBuffer());
const name = `sales_${vendor}_${date ?? "latest"}.txt.gz`;
writeFileSync(name, gz);
const [header, ...lines] = gunzipSync(gz).toString("utf8").trimEnd().split("\n").map((l) => l.split("\t"));
const rows = lines.map((cells) => Object.fromEntries(header.map((h, i) => [h, cells[i]])));
console.log(`saved ${name}: ${gz.length} bytes gzip (${r.headers.get("content-type")}), ${rows.length} rows`);
for (const row of rows) {
  console.log(`  ${row["Begin Date"]} ${row.Title.padEnd(12)} type ${row["Product Type Identifier"].padEnd(4)} units ${row.Units.padStart(4)}  ${row["Country Code"]}`);
}
console.log(`total units: ${rows.reduce((n, row) => n + Number(row.Units), 0)}`);
