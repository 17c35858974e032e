// Turns every Grafana dashboard JSON into a TypeScript module whose object
// literal is typed with @grafana/schema, so `tsc` type-checks the dashboard:
// the dashboard against `Dashboard`, every panel's options against its panel
// plugin's `Options` (timeseries, stat, table, bargauge), rows against
// `RowPanel`. Object literals get TypeScript's excess-property check, so an
// unknown or misspelt key fails like a wrong type does.
//
// usage: node gen-dashboard-types.mjs OUT_DIR DASHBOARD.json...
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";

const PANEL_TYPES = {
  timeseries: "TimeSeriesPanelCfg",
  stat: "StatPanelCfg",
  table: "TablePanelCfg",
  bargauge: "BarGaugePanelCfg",
  gauge: "GaugePanelCfg",
  text: "TextPanelCfg",
  piechart: "PieChartPanelCfg",
  barchart: "BarChartPanelCfg",
  heatmap: "HeatmapPanelCfg",
};

const [outDir, ...files] = process.argv.slice(2);
if (!outDir || files.length === 0) {
  console.error("usage: gen-dashboard-types.mjs OUT_DIR DASHBOARD.json...");
  process.exit(64);
}
rmSync(outDir, { recursive: true, force: true });
mkdirSync(outDir, { recursive: true });

const lit = (v) => JSON.stringify(v, null, 2);
let failed = false;
for (const file of files) {
  let dash;
  try {
    dash = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    console.error(`${file}: not JSON: ${e.message}`);
    failed = true;
    continue;
  }
  const used = new Set();
  const panelDecls = [];
  const refs = [];
  (dash.panels ?? []).forEach((panel, i) => {
    const name = `panel${i}`;
    refs.push(name);
    if (panel.type === "row") {
      panelDecls.push(`const ${name}: Json<RowPanel> = ${lit(panel)};`);
      return;
    }
    const cfg = PANEL_TYPES[panel.type];
    if (!cfg) {
      console.error(`${file}: panel ${i} ("${panel.title}") has type "${panel.type}", which this check has no schema for`);
      failed = true;
      return;
    }
    used.add(panel.type);
    const O = `${cfg}Options`;
    // Panel options typed by the plugin's schema; everything else by Panel.
    panelDecls.push(`const ${name}: Json<Omit<Panel, "options"> & { options: ${O} }> = ${lit(panel)};`);
  });
  const imports = [...used].map((t) => {
    const cfg = PANEL_TYPES[t];
    return `import type { Options as ${cfg}Options } from "@grafana/schema/dist/esm/raw/composable/${t}/panelcfg/x/${cfg}_types.gen";`;
  });
  const { panels: _omit, ...rest } = dash;
  const src = [
    `// generated from ${file} by gen-dashboard-types.mjs — do not edit`,
    `import type { Dashboard, Panel, RowPanel } from "@grafana/schema";`,
    ...imports,
    // Dashboards are JSON: a string enum of the schema (ThresholdsMode, ...)
    // is written as its string value. Json<T> maps every string enum to the
    // union of its values and keeps the rest of T (optionality, required
    // keys, excess-property checks) as it is.
    `type Json<T> = T extends string ? \`\${T}\` : T extends number | boolean | null | undefined ? T : T extends ReadonlyArray<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;`,
    ...panelDecls,
    `const meta: Json<Omit<Dashboard, "panels">> = ${lit(rest)};`,
    `// The declarations above carry the checks; this only proves they assemble.`,
    `export const dashboard = { ...meta, panels: [${refs.join(", ")}] } as unknown as Dashboard;`,
    "",
  ].join("\n");
  writeFileSync(join(outDir, basename(file).replace(/\.json$/, ".ts")), src);
}
process.exit(failed ? 1 : 0);
