// The Grafana dashboard's shape (deploy/grafana/sockmesh.json), without Grafana: every panel and query on the
// datasource variable, ids unique, panels on the 24-column grid without overlap, every template variable it uses
// defined, every query readable by the PromQL reader the kernel test (test/kernel/grafana.test.ts) checks it with
// against a real scrape; and that reader itself, on the forms the dashboard uses.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GLOBAL_COUNTERS } from '../../agent/datapath/abi.js';
import { expandGrafanaVariables, parseScrape, promUses } from '../lib/promql.js';

const ROOT = join(import.meta.dirname, '..', '..');

interface Target { datasource?: { uid?: string }; expr: string; refId: string }
interface Panel { id: number; type: string; title: string; datasource?: { type?: string; uid?: string }; gridPos: { x: number; y: number; w: number; h: number }; targets?: Target[] }
interface Dashboard {
  uid: string; title: string; panels: Panel[];
  templating: { list: { name: string; type: string; query?: unknown; definition?: string; datasource?: { uid?: string } }[] };
}

const dash = JSON.parse(readFileSync(join(ROOT, 'deploy', 'grafana', 'sockmesh.json'), 'utf8')) as Dashboard;

t.test('the dashboard: one datasource variable everything uses, unique ids, a grid without overlaps', (t) => {
  t.equal(dash.uid, 'sockmesh-agent');
  const ds = dash.templating.list.find((v) => v.type === 'datasource');
  t.equal(ds?.name, 'datasource');
  t.equal(ds?.query, 'prometheus', 'a Prometheus datasource variable');
  const panels = dash.panels.filter((p) => p.type !== 'row');
  t.ok(panels.length >= 25, `${panels.length} panels`);
  for (const p of panels) {
    t.same(p.datasource, { type: 'prometheus', uid: '${datasource}' }, `${p.title}: on the datasource variable`);
    t.ok((p.targets ?? []).length > 0, `${p.title}: has queries`);
    for (const tg of p.targets ?? []) t.equal(tg.datasource?.uid, '${datasource}', `${p.title} ${tg.refId}: on the datasource variable`);
    t.equal(new Set((p.targets ?? []).map((x) => x.refId)).size, (p.targets ?? []).length, `${p.title}: refIds unique`);
  }
  for (const v of dash.templating.list.filter((x) => x.type === 'query')) t.equal(v.datasource?.uid, '${datasource}', `$${v.name} on the datasource variable`);
  const ids = dash.panels.map((p) => p.id);
  t.equal(new Set(ids).size, ids.length, 'panel ids unique');
  const cells = new Map<string, string>();
  for (const p of dash.panels) {
    const g = p.gridPos;
    t.ok(g.x >= 0 && g.w > 0 && g.x + g.w <= 24 && g.h > 0, `${p.title}: inside the 24 columns`);
    for (let x = g.x; x < g.x + g.w; x++) for (let y = g.y; y < g.y + g.h; y++) {
      const k = `${x},${y}`;
      if (cells.has(k)) t.fail(`${p.title} overlaps ${cells.get(k)} at ${k}`);
      cells.set(k, p.title);
    }
  }
  t.end();
});

t.test('every query reads, selects sockmesh or process metrics, and names only defined variables', (t) => {
  const defined = new Set(dash.templating.list.map((v) => v.name));
  const exprs = dash.panels.flatMap((p) => (p.targets ?? []).map((x) => ({ title: p.title, expr: x.expr })));
  exprs.push(...dash.templating.list.filter((v) => v.definition).map((v) => ({ title: `$${v.name}`, expr: v.definition! })));
  const families = new Set<string>();
  for (const { title, expr } of exprs) {
    for (const m of expr.matchAll(/\$\{?([a-zA-Z_][a-zA-Z0-9_]*)/g)) {
      if (!m[1]!.startsWith('__')) t.ok(defined.has(m[1]!), `${title}: $${m[1]} is a dashboard variable`);
    }
    const u = promUses(expr.replace(/^label_values\((.*),\s*\w+\)$/, '$1'));
    t.ok(u.metrics.length > 0, `${title}: selects a metric`);
    for (const m of u.metrics) {
      t.match(m, /^(sockmesh_|process_|nodejs_)/, `${title}: ${m}`);
      families.add(m.replace(/_(bucket|sum|count)$/, ''));
    }
  }
  // The groups of the agent's metrics each appear somewhere: services, backends, health, L7, datapath, process.
  for (const p of ['sockmesh_service_', 'sockmesh_backend_', 'sockmesh_health_', 'sockmesh_frontend_panic', 'sockmesh_http_requests_total',
    'sockmesh_http_request_duration_milliseconds', 'sockmesh_datapath_', 'process_']) {
    t.ok([...families].some((f) => f.startsWith(p)), `a panel over ${p}*`);
  }
  // Every datapath counter the kernel keeps is on the dashboard: a new counter needs a query (or this test fails).
  for (const g of GLOBAL_COUNTERS) t.ok(families.has(`sockmesh_datapath_${g}_total`), `datapath counter ${g} is queried`);
  t.end();
});

t.test('the PromQL reader: metrics, matchers per metric, grouping labels', (t) => {
  t.same(promUses('sum by (service, route, le) (rate(sockmesh_http_request_duration_milliseconds_bucket{instance=~"$instance", service=~"$service"}[$__rate_interval]))'), {
    metrics: ['sockmesh_http_request_duration_milliseconds_bucket'],
    matchers: [{ metric: 'sockmesh_http_request_duration_milliseconds_bucket', label: 'instance' }, { metric: 'sockmesh_http_request_duration_milliseconds_bucket', label: 'service' }],
    grouping: ['service', 'route', 'le'],
  });
  t.same(promUses('histogram_quantile(0.99, sum(rate(a_bucket[5m])) by (le)) / on (job) group_left (x) b{c!="d,}"} > bool 2 or vector(0)'), {
    metrics: ['a_bucket', 'b'], matchers: [{ metric: 'b', label: 'c' }], grouping: ['le', 'job', 'x'],
  });
  t.same(promUses('count(x == 0) or vector(0)').metrics, ['x']);
  t.same(promUses('{__name__="y", a=\'b\'} offset 5m').matchers, [{ metric: '', label: '__name__' }, { metric: '', label: 'a' }]);
  t.throws(() => promUses('x{a}'), /matcher operator/);
  t.throws(() => promUses('x{a="b"'), /label name expected|quoted/);
  t.throws(() => promUses('sum by (a-b) (x)'), /not a label name/);
  t.equal(expandGrafanaVariables('rate(x{a=~"$a", b="${b}"}[$__rate_interval])'), 'rate(x{a=~"x", b="x"}[5m])');
  t.end();
});

t.test('the scrape reader: sample names, their labels, histogram parts apart', (t) => {
  const s = parseScrape([
    '# HELP h a histogram', '# TYPE h histogram', 'h_bucket{service="a",le="0.1"} 1', 'h_bucket{service="a",le="+Inf"} 2',
    'h_sum{service="a"} 3', 'h_count{service="a"} 2', '# TYPE empty counter', 'plain 4', 'q{v="with \\"quote\\", and comma"} 1', '',
  ].join('\n'));
  t.same([...s.samples.keys()], ['h_bucket', 'h_sum', 'h_count', 'plain', 'q']);
  t.same([...s.samples.get('h_bucket')!.labels], ['service', 'le']);
  t.equal(s.samples.get('h_bucket')!.count, 2);
  t.same([...s.samples.get('q')!.labels], ['v']);
  t.notOk(s.samples.has('empty'), 'a family without samples has no entry');
  t.equal(s.types.get('empty'), 'counter');
  t.end();
});
