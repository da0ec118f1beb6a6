// The dashboard against Grafana's own dashboard schema: the TypeScript types that
// @grafana/schema generates from it, checked by the TypeScript compiler on the dashboard as an
// object literal (so unknown keys, wrong types and missing required fields are errors).
// Run: `npm ci && node --test` in this folder (`.ci/run` does).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const here = path.dirname(fileURLToPath(import.meta.url));
const dashboardText = fs.readFileSync(path.join(here, 'impresario.json'), 'utf8');
const dashboard = JSON.parse(dashboardText);

/** The compiler's complaints about `value` typed as Grafana's (classic JSON model) Dashboard. */
function schemaErrors(value) {
  const file = path.join(here, `.schema-check-${process.pid}.ts`);
  fs.writeFileSync(
    file,
    "import type { Dashboard } from '@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen';\n" +
      `export const dashboard: Dashboard = ${JSON.stringify(value, null, 2)};\n`,
  );
  try {
    const program = ts.createProgram([file], {
      noEmit: true,
      strict: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
    });
    return ts
      .getPreEmitDiagnostics(program)
      .map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'));
  } finally {
    fs.unlinkSync(file);
  }
}

test('the dashboard is a valid Grafana dashboard', () => {
  assert.deepEqual(schemaErrors(dashboard), []);
});

test('the check rejects what Grafana rejects', () => {
  const broken = structuredClone(dashboard);
  broken.templating.list[0].current = {};
  broken.panels[0].gridPos = { x: 0 };
  const errors = schemaErrors(broken).join('\n');
  assert.match(errors, /'VariableOption': text, value/, errors);
  assert.match(errors, /'GridPos': h, w, y/, errors);
});

test('windows follow the scrape interval and every query is scoped by job and instance', () => {
  const names = dashboard.templating.list.map((v) => v.name);
  assert.deepEqual(names, ['datasource', 'job', 'instance']);
  for (const variable of dashboard.templating.list) {
    assert.ok(!('current' in variable), `${variable.name} pins no current value`);
  }
  const exprs = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
  assert.ok(exprs.length > 20);
  for (const expr of exprs) {
    for (const [, window] of expr.matchAll(/\[([^\]]+)\]/g)) {
      assert.ok(['$__rate_interval', '$__range'].includes(window), `${expr}: window ${window}`);
    }
    // Label lists name labels, not metrics.
    const metricsOnly = expr.replace(/\b(?:by|without) \([^)]*\)/g, '');
    const selectors = [...metricsOnly.matchAll(/\b(?:impresario|gen_ai)_\w+(\{[^}]*\})?/g)];
    for (const [metric, selector] of selectors) {
      assert.ok(
        selector?.includes('job=~"$job", instance=~"$instance"'),
        `${expr}: ${metric} is not scoped by job and instance`,
      );
    }
  }
});
