// The benches' charts: each captured bench result line (test/fixtures/bench/*.json, from real runs) renders to an SVG
// that holds every measured figure as a bar mark of its series and group (read back from the marks' descriptions,
// the SVG's aria-labels), the value labels, the legend of the scenarios, the axis titles and the targets as ticks.
// The expectations are read from the fixtures and the bench's own label constants, not from the chart module's
// adapters, so an adapter that drops a series fails here (shown below by charting a fixture with a scenario removed).
import '../lib/childenv.js'; // first: what this starts runs without tap's instrumentation
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AXES, benchJson, chartOf, emitResult, formatValue, genericChart, renderSvg, writeChart, type BenchJson } from '../../bench/chart.js';
import { L7_LABELS, PROTOCOLS, PROTOCOL_TITLES, type L7Scenario } from '../../bench/lib/l7report.js';
import { LATENCY_CASES, SCENARIO_LABELS, type ScenarioName } from '../../bench/lib/report.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'bench');
const fixture = (name: string): BenchJson => benchJson(JSON.parse(readFileSync(join(FIXTURES, `${name}.json`), 'utf8')));

const unescape = (s: string) =>
  s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&#39;|&apos;/g, "'").replace(/&amp;/g, '&');

/** Each mark of a role (bar, tick) as the key/value pairs of its description. */
function marks(svg: string, role: string): Record<string, string>[] {
  const out: Record<string, string>[] = [];
  const re = new RegExp(`aria-label="([^"]*)"[^>]*aria-roledescription="${role}"`, 'g');
  for (const m of svg.matchAll(re)) {
    const o: Record<string, string> = {};
    for (const part of unescape(m[1]!).split('; ')) {
      const i = part.indexOf(': ');
      if (i > 0) o[part.slice(0, i)] = part.slice(i + 2);
    }
    out.push(o);
  }
  return out;
}

/** The text content of every <text> element (labels, legend, titles). */
function texts(svg: string): string[] {
  return [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => unescape(m[1]!));
}

interface Want { axis: string; group: string; series?: string; value: number }

/** The wanted bars that no bar mark shows (figure = axis title, group, series, value exactly). */
function missing(svg: string, want: Want[]): Want[] {
  const got = marks(svg, 'bar');
  return want.filter((w) => !got.some((b) => Number(b[w.axis]) === w.value && Object.values(b).includes(w.group) &&
    (w.series === undefined || b.series === w.series)));
}

type O = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function datapathWants(r: O): Want[] {
  const want: Want[] = [];
  for (const [name, s] of Object.entries(r.scenarios as O)) {
    const series = SCENARIO_LABELS[name as ScenarioName];
    for (const c of LATENCY_CASES) {
      const l = (s as O).latency[c.key];
      if (!l) continue;
      want.push({ axis: AXES.p50, group: c.title, series, value: l.p50 }, { axis: AXES.p99, group: c.title, series, value: l.p99 });
    }
    if ((s as O).streamGbps !== undefined) want.push({ axis: AXES.gbps, group: 'iperf3 TCP stream', series, value: (s as O).streamGbps });
  }
  for (const [name, row] of Object.entries(r.ratiosToDirect as O)) {
    for (const c of LATENCY_CASES) {
      const v = (row as O)[`${c.key}.p50`];
      if (v !== undefined) want.push({ axis: AXES.ratio, group: `${c.title} p50`, series: SCENARIO_LABELS[name as ScenarioName], value: v });
    }
    const st = (row as O).streamGbps;
    if (st !== undefined) want.push({ axis: AXES.ratio, group: 'stream', series: SCENARIO_LABELS[name as ScenarioName], value: st });
  }
  for (const c of r.checks as O[]) if (c.ratio !== null) want.push({ axis: AXES.check, group: c.name, value: c.ratio });
  return want;
}

t.test('datapath: every scenario, case and percentile is a bar of its series; targets are ticks', async (t) => {
  const r = fixture('datapath');
  const svg = await renderSvg(chartOf(r));
  t.match(svg, /^<svg /, 'an SVG document');
  const want = datapathWants(r);
  t.ok(want.length >= 4 * 4 * 2 + 4, `${want.length} figures expected from the fixture`);
  t.same(missing(svg, want), [], 'every figure of the fixture is a bar mark');
  t.equal(marks(svg, 'bar').length, want.length, 'and nothing else is');

  const text = texts(svg);
  for (const name of Object.keys(r.scenarios as O)) t.ok(text.includes(SCENARIO_LABELS[name as ScenarioName]), `legend: ${name}`);
  for (const title of [AXES.p50, AXES.p99, AXES.gbps, AXES.ratio, AXES.check]) t.ok(text.includes(title), `axis title: ${title}`);
  const p50 = (r.scenarios as O).sockmesh.latency.lat64Same.p50 as number;
  t.ok(text.includes(formatValue(p50)), `the value ${p50} written over its bar`);

  const ticks = marks(svg, 'tick');
  const checks = r.checks as O[];
  t.equal(ticks.length, checks.length, 'one target tick per check');
  for (const c of checks) {
    t.ok(ticks.some((k) => Object.values(k).includes(c.name) && Number(k[AXES.check]) === c.limit), `target ${c.name} at ${c.limit}`);
    t.ok(text.some((x) => x.startsWith(formatValue(c.ratio, 'x')) && x.endsWith(c.status)), `${c.name}: measured and ${c.status}`);
  }
});

t.test('a series that goes missing from the chart is caught', async (t) => {
  const r = fixture('datapath');
  const want = datapathWants(r);
  const cut = structuredClone(r) as O;
  delete cut.scenarios.iptables;
  delete cut.ratiosToDirect.iptables;
  const lost = missing(await renderSvg(chartOf(cut as BenchJson)), want);
  t.ok(lost.length >= 9, `${lost.length} figures reported missing`);
  t.ok(lost.every((w) => w.series === SCENARIO_LABELS.iptables), 'exactly those of (c)');
});

t.test('l7: req/s, latency and proxy CPU per scenario and protocol; ratios; targets', async (t) => {
  const r = fixture('l7');
  const svg = await renderSvg(chartOf(r));
  const want: Want[] = [];
  for (const [name, s] of Object.entries(r.scenarios as O)) {
    const series = L7_LABELS[name as L7Scenario];
    t.equal((s as O).label, series, `the fixture labels ${name} as the bench does`);
    for (const p of PROTOCOLS) {
      const m = (s as O)[p];
      if (!m || m.rps === undefined) continue;
      const short = PROTOCOL_TITLES[p].split(' ')[0];
      want.push({ axis: AXES.rps, group: PROTOCOL_TITLES[p], series, value: m.rps });
      want.push({ axis: AXES.latency, group: `${short} p50`, series, value: m.p50Us });
      want.push({ axis: AXES.latency, group: `${short} p99`, series, value: m.p99Us });
      if (m.proxyCpuUsPerRequest !== null) want.push({ axis: AXES.cpuPerReq, group: PROTOCOL_TITLES[p], series, value: m.proxyCpuUsPerRequest });
    }
  }
  for (const key of ['b/c', 'b/d']) {
    for (const p of PROTOCOLS) {
      const v = (r.ratios as O)[key]?.[p];
      if (v) want.push({ axis: AXES.l7ratio, group: `${key} req/s`, series: PROTOCOL_TITLES[p], value: v.rps });
    }
  }
  t.ok(want.length >= 6 * 2 * 3, `${want.length} figures expected from the fixture`);
  t.same(missing(svg, want), [], 'every figure of the fixture is a bar mark');
  const text = texts(svg);
  for (const name of Object.keys(r.scenarios as O)) t.ok(text.includes(L7_LABELS[name as L7Scenario]), `legend: ${name}`);
  for (const title of [AXES.rps, AXES.latency, AXES.cpuPerReq, AXES.l7ratio]) t.ok(text.includes(title), `axis title: ${title}`);
  const checks = r.checks as O[];
  t.equal(marks(svg, 'tick').length, checks.length, 'one target tick per check (both protocols)');
});

t.test('xds: sync, change latency and RSS as bars, each target a tick', async (t) => {
  const r = fixture('xds') as O;
  const svg = await renderSvg(chartOf(r as BenchJson));
  const want: Want[] = [
    { axis: AXES.syncS, group: 'server sends -> kernel maps', value: r.fullSyncSeconds },
    { axis: AXES.changeMs, group: 'p50', value: r.changes.p50Ms },
    { axis: AXES.changeMs, group: 'p99', value: r.changes.p99Ms },
    { axis: AXES.rssMiB, group: 'after full sync', value: r.rssAfterSyncMiB },
    { axis: AXES.rssMiB, group: 'after the changes', value: r.rssAfterChangesMiB },
  ];
  t.same(missing(svg, want), [], 'the figures the targets are about');
  const ticks = marks(svg, 'tick');
  t.equal(ticks.length, (r.checks as O[]).length, 'one tick per target');
  const limit = (r.checks as O[]).find((c) => c.name === 'one change p99')!.limit as number;
  t.ok(ticks.some((k) => Object.values(k).includes('p99') && Number(k[AXES.changeMs]) === limit), `the ${limit} ms change target at p99`);
  t.ok(texts(svg).includes(`target <= ${formatValue(limit)} ms`), 'its label');
});

t.test('a bench without an adapter still gets a chart of its scenarios and checks', async (t) => {
  const r = benchJson({
    bench: 'other', kernel: 'x', cpus: 2,
    scenarios: { podToPod: { rps: 1200, latency: { p50Us: 40 } }, podToService: { rps: 1000, latency: { p50Us: 55 } } },
    checks: [{ name: 'pod p50 <= 0.8x', status: 'PASS', value: 0.73, limit: 0.8 }],
  });
  const c = genericChart(r);
  t.same(c.panels.map((p) => p.title), ['rps', 'latency.p50Us', 'Targets: measured (bars) against each limit (red)']);
  const svg = await renderSvg(c);
  const bars = marks(svg, 'bar');
  t.ok(bars.some((b) => b.rps === '1200' && Object.values(b).includes('podToPod')));
  t.ok(bars.some((b) => b['latency.p50Us'] === '55' && Object.values(b).includes('podToService')));
  t.equal(marks(svg, 'tick').length, 1);
});

t.test('writeChart: <bench>.svg and the result line beside it; a line without a bench name is refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-chart-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const r = fixture('datapath');
  const path = await writeChart(r, dir);
  t.equal(path, join(dir, 'datapath.svg'));
  t.match(readFileSync(path, 'utf8'), /aria-roledescription="bar"/);
  t.same(JSON.parse(readFileSync(join(dir, 'datapath.json'), 'utf8')), r);
  t.throws(() => benchJson({ scenarios: {} }), /not a bench result/);
  t.throws(() => benchJson({ bench: '../x' }), /not a bench result/);
  await t.rejects(renderSvg(chartOf(benchJson({ bench: 'datapath', scenarios: {} }))), /nothing to chart/);
});

t.test('emitResult: the JSON line first on stdout, then the chart (a chart that fails only says so on stderr)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-chart-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const out: string[] = [], err: string[] = [];
  const [w1, w2] = [process.stdout.write, process.stderr.write];
  process.stdout.write = ((s: string) => { out.push(s); return true; }) as typeof process.stdout.write;
  process.stderr.write = ((s: string) => { err.push(s); return true; }) as typeof process.stderr.write;
  try {
    await emitResult(fixture('xds'), dir);
    await emitResult({ bench: 'xds', scenarios: {} }, dir); // nothing measured: no chart, said on stderr
    await emitResult(fixture('l7'), null); // --no-chart
  } finally {
    process.stdout.write = w1;
    process.stderr.write = w2;
  }
  t.equal(out.length, 3, 'one JSON line per result');
  t.same(JSON.parse(out[0]!), fixture('xds'));
  t.same(err, [`bench: chart written to ${join(dir, 'xds.svg')}\n`, 'bench: no chart: nothing to chart: the xds result has no measured figure\n']);
  t.match(readFileSync(join(dir, 'xds.svg'), 'utf8'), /^<svg /);
});

const MAIN = join(import.meta.dirname, '..', '..', 'dist', 'bench', 'main.js');
t.test('npm run bench -- chart FILE: a saved line drawn again, the pods bench with its own panels', {
  skip: existsSync(MAIN) ? false : 'dist/bench/main.js not built (npx tsc -p tsconfig.json; the test command does it)',
}, async (t) => {
  const main = MAIN;
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-chart-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const [bench, title] of [['pods', 'wrk against nginx'], ['xds', 'Agent RSS at rest']]) {
    const r = spawnSync(process.execPath, [main, 'chart', join(FIXTURES, `${bench}.json`), '--chart', dir], { encoding: 'utf8', timeout: 60_000 });
    t.equal(r.status, 0, r.stderr);
    t.equal(r.stderr, `bench: chart written to ${join(dir, `${bench}.svg`)}\n`);
    t.ok(texts(readFileSync(join(dir, `${bench}.svg`), 'utf8')).some((x) => x.startsWith(title!)), `${bench}: its panel '${title}'`);
  }
  const bad = spawnSync(process.execPath, [main, 'chart', join(dir, 'nothing.json'), '--chart', dir], { encoding: 'utf8', timeout: 60_000 });
  t.equal(bad.status, 1);
  t.match(bad.stderr, /ENOENT/);
});
