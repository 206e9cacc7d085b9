// Power and performance metrics of an app (the data behind Xcode's Organizer).
//
//   node perf_metrics.mjs [APP_ID]           default: $APP_ID, else the first app listed
const BASE = (process.env.APPLE_PROXY_URL ?? "http://localhost:8080").replace(/\/+$/, "");

async function get(url, headers = {}) {
  const r = await fetch(url, { headers });
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return r;
}

const appId = process.argv[2] ?? process.env.APP_ID ?? (await (await get(`${BASE}/v1/apps?limit=1`)).json()).data[0].id;
const r = await get(`${BASE}/v1/apps/${appId}/perfPowerMetrics`, { Accept: "application/vnd.apple.xcode-metrics+json" });
const doc = await r.json();
console.log(`app ${appId}: metrics ${doc.version} (${r.headers.get("content-type")})`);
for (const product of doc.productData) {
  for (const category of product.metricCategories) {
    for (const metric of category.metrics) {
      for (const ds of metric.datasets) {
        const last = ds.points.at(-1);
        console.log(`  ${product.platform} ${category.identifier.padEnd(8)} ${metric.identifier.padEnd(12)} ${ds.filterCriteria.deviceMarketingName}, ${ds.filterCriteria.percentile}: ${last.value} ${metric.unit.displayName} in ${last.version}`);
      }
    }
  }
}
for (const insight of doc.insights?.regressions ?? []) console.log(`  regression: ${insight.summaryString}`);
