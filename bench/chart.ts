// Each bench's results as an SVG chart. The input is the JSON object a bench prints on its last line (so a saved line
// renders the same chart later: `npm run bench -- chart FILE`); an adapter per bench turns it into panels of grouped
// bars (figures per scenario, ratios) with the bench's targets as red ticks; the panels become one vega-lite spec,
// which vega renders to SVG headless (no canvas, no browser).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { PROTOCOLS, PROTOCOL_TITLES } from './lib/l7report.js';
import { LATENCY_CASES, SCENARIO_LABELS } from './lib/report.js';

/** One bar: a figure of one series (a scenario, a protocol) in one group of the x axis. */
export interface Bar {
  group: string;
  /** the colour and the place inside the group; absent = one series only (one colour, no legend) */
  series?: string;
  value: number;
  /** the text over the bar (default: the value, formatted) */
  label?: string;
  /** a colour of its own (bars of a panel without series only: e.g. PASS green, FAIL red) */
  colour?: string;
}

/** A target: a red tick across a group at the limit, with its text ('<= 0.7x'). */
export interface Target {
  group: string;
  value: number;
  label: string;
}

export interface Panel {
  title: string;
  /** the y axis title (what and in which unit) */
  axis: string;
  /** the x axis title (what the groups are) */
  groupAxis: string;
  bars: Bar[];
  targets?: Target[];
  /** a dashed line across the panel, e.g. 1.0 on a ratio panel (= the baseline) */
  reference?: { value: number; label: string };
  /** bars across, groups down: for long group names (check names) */
  horizontal?: boolean;
  /** a log scale for the figures: for tails that span orders of magnitude (p99 across CPUs on a busy machine) */
  log?: boolean;
}

export interface Chart {
  bench: string;
  title: string;
  subtitle: string[];
  panels: Panel[];
  /** the order of the series (legend and place in each group); default: order of first appearance */
  series?: string[];
}

/** A bench's result line, as parsed. */
export type BenchJson = { bench: string } & Record<string, unknown>;

/** A parsed result line, checked for the one field every bench writes. */
export function benchJson(v: unknown): BenchJson {
  const o = v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  if (!o || typeof o.bench !== 'string' || !/^[a-z0-9-]+$/.test(o.bench)) throw new Error('not a bench result: no "bench" name');
  return o as BenchJson;
}

// ---- reading the JSON defensively (a saved line may come from an older run) ----

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj | undefined => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : undefined);
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const list = (v: unknown): Obj[] => (Array.isArray(v) ? v.map(obj).filter((o): o is Obj => o !== undefined) : []);

/** A figure as a bar label: 3 significant digits or whole numbers, and a unit suffix ('x'). */
export function formatValue(v: number, suffix = ''): string {
  const a = Math.abs(v);
  const s = a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
  return s + suffix;
}

/** Push a bar when the value was measured. */
function add(bars: Bar[], group: string, series: string | undefined, value: unknown, suffix = ''): void {
  const v = num(value);
  if (v === undefined) return;
  bars.push({ group, ...(series !== undefined ? { series } : {}), value: v, label: formatValue(v, suffix) });
}

const STATUS_COLOURS: Record<string, string> = { PASS: '#54a24b', FAIL: '#e45756' };

/** The checks of a bench (value or ratio against limit) as one panel: measured bars, the limits as ticks. */
export function checksPanel(checks: Obj[], name: (c: Obj) => string, suffix = 'x'): Panel | undefined {
  const bars: Bar[] = [];
  const targets: Target[] = [];
  for (const c of checks) {
    const limit = num(c.limit);
    const group = name(c);
    const value = num(c.value) ?? num(c.ratio);
    const status = str(c.status) ?? '';
    const cmp = /<=/.test(str(c.name) ?? '') ? '<=' : '>=';
    if (limit !== undefined) targets.push({ group, value: limit, label: `${cmp} ${formatValue(limit, suffix)}` });
    if (value !== undefined) bars.push({ group, value, label: `${formatValue(value, suffix)} ${status}`, colour: STATUS_COLOURS[status] ?? '#888' });
  }
  if (targets.length === 0) return undefined;
  return { title: 'Targets: measured (bars) against each limit (red)', axis: AXES.check, groupAxis: 'check', bars, targets, horizontal: true };
}

/** The chart with the checks panel of the result's checks added (when it has any with a limit). */
function withChecks(r: BenchJson, name: (c: Obj) => string, chart: Chart): Chart {
  const p = checksPanel(list(r.checks), name);
  return p ? { ...chart, panels: [...chart.panels, p] } : chart;
}

const context = (r: Obj, extra: string[]): string[] => {
  const k = str(r.kernel), c = num(r.cpus);
  const head = [k ? `kernel ${k}` : '', c ? `${c} CPUs` : '', ...extra].filter(Boolean).join(', ');
  const verdict = r.ok === true ? 'every target met' : r.ok === false ? 'a target missed or a scenario failed' : '';
  return [head, verdict].filter(Boolean);
};

// ---- the adapters, one per bench ----

/** The y axis titles: they also name the figure in each bar's description (the SVG's aria-label). */
export const AXES = {
  p50: 'p50 one-way µs (sockperf RTT/2)', p99: 'p99 one-way µs (sockperf RTT/2)', gbps: 'Gbit/s', ratio: 'ratio to (a)',
  rps: 'requests/s (median of runs)', latency: 'µs', cpuPerReq: 'µs of CPU per request', l7ratio: 'ratio', check: 'measured ratio',
  syncS: 'seconds', changeMs: 'ms', rssMiB: 'MiB',
} as const;

/** sockperf's cases of each series as two panels, p50 and p99; figure(caseKey, percentile) reads one value. */
function latencyPanels(series: [string, (key: string, p: 'p50' | 'p99') => unknown][], caseTitle = (t: string) => t): Panel[] {
  const p50: Bar[] = [], p99: Bar[] = [];
  for (const [name, figure] of series) {
    for (const c of LATENCY_CASES) {
      add(p50, caseTitle(c.title), name, figure(c.key, 'p50'));
      add(p99, caseTitle(c.title), name, figure(c.key, 'p99'));
    }
  }
  return [
    { title: 'Latency p50 (lower is better)', axis: AXES.p50, groupAxis: 'message size, CPU placement', bars: p50 },
    { title: 'Latency p99 (lower is better; log scale)', axis: AXES.p99, groupAxis: 'message size, CPU placement', bars: p99, log: true },
  ];
}

/** A panel of ratios to (a), with the 1.0x line. */
function ratioPanel(bars: Bar[]): Panel {
  return { title: 'Ratios to (a) direct (latency: lower is better)', axis: AXES.ratio, groupAxis: 'figure', bars, reference: { value: 1, label: '(a) = 1.0x' } };
}

function datapathChart(r: BenchJson): Chart {
  const scenarios = Object.entries(obj(r.scenarios) ?? {}).map(([name, s]) => [name, obj(s) ?? {}] as const);
  const label = (n: string) => (SCENARIO_LABELS as Record<string, string>)[n] ?? n;
  const stream: Bar[] = [], ratios: Bar[] = [];
  for (const [name, s] of scenarios) add(stream, 'iperf3 TCP stream', label(name), s.streamGbps);
  for (const [name, row0] of Object.entries(obj(r.ratiosToDirect) ?? {})) {
    const row = obj(row0) ?? {};
    for (const c of LATENCY_CASES) add(ratios, `${c.title} p50`, label(name), row[`${c.key}.p50`], 'x');
    add(ratios, 'stream', label(name), row.streamGbps, 'x');
  }
  const panels: Panel[] = [
    ...latencyPanels(scenarios.map(([name, s]) => [label(name), (key, p) => obj(obj(s.latency)?.[key])?.[p]])),
    { title: 'Throughput (higher is better)', axis: AXES.gbps, groupAxis: 'iperf3, median of 3 runs', bars: stream },
    ratioPanel(ratios),
  ];
  return withChecks(r, (c) => str(c.name) ?? '?', {
    bench: 'datapath', title: 'sockmesh datapath bench: loopback vs sockmesh vs iptables DNAT vs a minimal sockmap program',
    subtitle: context(r, [num(r.seconds) ? `sockperf ${num(r.seconds)} s per case` : '']),
    panels, series: Object.values(SCENARIO_LABELS),
  });
}

const L7_PROTOCOLS = PROTOCOLS.map((p) => [p, PROTOCOL_TITLES[p]] as const);

function l7Chart(r: BenchJson): Chart {
  const scenarios = obj(r.scenarios) ?? {};
  const rps: Bar[] = [], lat: Bar[] = [], cpu: Bar[] = [];
  const order: string[] = [];
  for (const [name, s0] of Object.entries(scenarios)) {
    const s = obj(s0) ?? {};
    const label = str(s.label) ?? name;
    order.push(label);
    for (const [p, title] of L7_PROTOCOLS) {
      const m = obj(s[p]);
      if (!m) continue;
      add(rps, title, label, m.rps);
      const short = title.split(' ')[0];
      add(lat, `${short} p50`, label, m.p50Us);
      add(lat, `${short} p99`, label, m.p99Us);
      add(cpu, title, label, m.proxyCpuUsPerRequest);
    }
  }
  const ratios: Bar[] = [];
  for (const key of ['b/c', 'b/d']) {
    const row = obj(obj(r.ratios)?.[key]) ?? {};
    for (const [p, title] of L7_PROTOCOLS) {
      add(ratios, `${key} req/s`, title, obj(row[p])?.rps, 'x');
      add(ratios, `${key} p99`, title, obj(row[p])?.p99, 'x');
    }
  }
  const panels: Panel[] = [
    { title: 'Requests per second (higher is better)', axis: AXES.rps, groupAxis: 'protocol, load generator', bars: rps },
    { title: 'Latency (lower is better; log scale)', axis: AXES.latency, groupAxis: 'protocol, percentile', bars: lat, log: true },
    { title: 'Proxy CPU time per request (lower is better)', axis: AXES.cpuPerReq, groupAxis: 'protocol', bars: cpu },
    { title: 'sockmesh (b) against (c) one haproxy and (d) two chained', axis: AXES.l7ratio, groupAxis: 'ratio, figure', bars: ratios,
      reference: { value: 1, label: '1.0x' } },
  ];
  const protoShort = (p: unknown) => (p === 'h2' ? 'HTTP/2' : p === 'http1' ? 'HTTP/1.1' : '');
  const reps = num(r.repetitions), dur = num(r.duration), conns = num(r.connections);
  return withChecks(r, (c) => `${protoShort(c.protocol)} ${str(c.name) ?? '?'}`.trim(), {
    bench: 'l7', title: 'sockmesh L7 bench: direct vs the sockmesh proxy vs haproxy vs 2 chained haproxy',
    subtitle: context(r, [reps && dur ? `median of ${reps} runs of ${dur} s` : '', conns ? `${conns} requests in flight` : '',
      r.pinned === true ? 'pinned' : '']),
    panels, series: [...order, ...L7_PROTOCOLS.map(([, t]) => t)],
  });
}

function xdsChart(r: BenchJson): Chart {
  const checks = list(r.checks);
  const limit = (name: string): number | undefined => num(checks.find((c) => c.name === name)?.limit);
  const target = (group: string, name: string, unit: string): Target[] => {
    const l = limit(name);
    return l === undefined ? [] : [{ group, value: l, label: `target <= ${formatValue(l)} ${unit}` }];
  };
  const changes = obj(r.changes) ?? {};
  const sync: Bar[] = [], change: Bar[] = [], rss: Bar[] = [];
  add(sync, 'server sends -> kernel maps', undefined, r.fullSyncSeconds);
  add(sync, 'with the server\'s build', undefined, r.fullSyncWithBuildSeconds);
  for (const [k, g] of [['p50Ms', 'p50'], ['p99Ms', 'p99'], ['maxMs', 'max'], ['reconcileP99Ms', 'agent reconcile p99'], ['serverP99Ms', 'server p99']]) {
    add(change, g!, undefined, changes[k!]);
  }
  add(rss, 'after full sync', undefined, r.rssAfterSyncMiB);
  add(rss, 'after the changes', undefined, r.rssAfterChangesMiB);
  add(rss, 'peak', undefined, r.peakRssMiB);
  const done = num(changes.completed), planned = num(changes.planned);
  return {
    bench: 'xds', title: `sockmesh xDS bench: ${num(r.services) ?? '?'} services, ${num(r.endpoints) ?? '?'} endpoints, control plane -> agent -> kernel`,
    subtitle: context(r, [done !== undefined && planned !== undefined ? `${done} of ${planned} endpoint changes` : '']),
    panels: [
      { title: 'Full sync (lower is better)', axis: AXES.syncS, groupAxis: 'measured from', bars: sync, targets: target('server sends -> kernel maps', 'full sync', 's') },
      { title: 'One endpoint change to the kernel map (lower is better)', axis: AXES.changeMs, groupAxis: 'over the changes', bars: change, targets: target('p99', 'one change p99', 'ms') },
      { title: 'Agent RSS at rest (lower is better)', axis: AXES.rssMiB, groupAxis: 'when', bars: rss,
        targets: [...target('after full sync', 'agent RSS after full sync', 'MiB'), ...target('after the changes', 'agent RSS after the changes', 'MiB')] },
    ],
  };
}

/**
 * Any other bench: one panel per numeric figure its scenarios share
 * (`scenarios: { name: { figure: n, nested: { figure: n } } }`), and its checks. A bench with a better idea passes
 * its own Chart to emitResult.
 */
export function genericChart(r: BenchJson): Chart {
  const byFigure = new Map<string, Bar[]>();
  const walk = (scenario: string, o: Obj, path: string): void => {
    for (const [k, v] of Object.entries(o)) {
      const p = path ? `${path}.${k}` : k;
      if (num(v) !== undefined) {
        let bars = byFigure.get(p);
        if (!bars) byFigure.set(p, (bars = []));
        add(bars, scenario, undefined, v);
      } else if (obj(v) && p.split('.').length < 3) walk(scenario, obj(v)!, p);
    }
  };
  for (const [name, s] of Object.entries(obj(r.scenarios) ?? {})) if (obj(s)) walk(name, obj(s)!, '');
  const panels: Panel[] = [...byFigure.entries()].slice(0, 12).map(([figure, bars]) => ({ title: figure, axis: figure, groupAxis: 'scenario', bars }));
  return withChecks(r, (c) => `${str(c.protocol) ?? ''} ${str(c.name) ?? '?'}`.trim(),
    { bench: r.bench, title: `sockmesh ${r.bench} bench`, subtitle: context(r, []), panels });
}

const ADAPTERS: Record<string, (r: BenchJson) => Chart> = { datapath: datapathChart, l7: l7Chart, xds: xdsChart };

/** The chart of a result line: its bench's adapter, or the generic one. */
export function chartOf(r: BenchJson): Chart {
  return (ADAPTERS[r.bench] ?? genericChart)(r);
}

// ---- panels -> vega-lite -> SVG ----

const PANEL_WIDTH = 420;
const PANEL_HEIGHT = 230;

function unique(xs: string[]): string[] {
  return [...new Set(xs)];
}

/** A log scale from the power of ten below the smallest figure to the one above the largest (bars need a floor). */
function logScale(p: Panel): { scale: Record<string, unknown>; floor: number } {
  const vs = [...p.bars.map((b) => b.value), ...(p.targets ?? []).map((t) => t.value)].filter((v) => v > 0);
  const lo = vs.length ? 10 ** Math.floor(Math.log10(Math.min(...vs))) : 1;
  const hi = vs.length ? 10 ** Math.ceil(Math.log10(Math.max(...vs)) + 0.05) : 10;
  return { scale: { type: 'log', domain: [lo, hi] }, floor: lo };
}

function panelSpec(p: Panel, series: string[]): Record<string, unknown> {
  const groups = unique([...p.bars.map((b) => b.group), ...(p.targets ?? []).map((t) => t.group)]);
  const longest = Math.max(0, ...groups.map((g) => g.length));
  const across = p.horizontal ? 'y' : 'x', along = p.horizontal ? 'x' : 'y';
  const band = {
    // (groups down the side: their labels say it, and a title there would sit on them)
    field: 'group', type: 'nominal', sort: groups, title: p.horizontal ? null : p.groupAxis,
    // labels turned when they would not fit their band (about 6 px a character at 10 px)
    axis: { labelAngle: p.horizontal || longest * 6 <= PANEL_WIDTH / Math.max(1, groups.length) - 8 ? 0 : -25, labelLimit: 400 },
  };
  const log = p.log ? logScale(p) : undefined;
  const value = { field: 'value', type: 'quantitative', title: p.axis, ...(log ? { scale: log.scale } : {}) };
  const pos = { [across]: band, [along]: value };
  const hasSeries = p.bars.some((b) => b.series !== undefined);
  const mine = series.filter((s) => p.bars.some((b) => b.series === s));
  const offset = hasSeries ? { [`${across}Offset`]: { field: 'series', type: 'nominal', sort: mine } } : {};
  const colour = hasSeries
    ? { color: { field: 'series', type: 'nominal', title: null, scale: { domain: series } } }
    : { color: { field: 'colour', type: 'nominal', scale: null } };
  const bars = p.bars.map((b) => ({
    group: b.group, series: b.series ?? '', value: b.value, label: b.label ?? formatValue(b.value), colour: b.colour ?? '#4c78a8',
  }));
  // Value labels: over each bar; turned when the bars are many and thin; right of the bar when horizontal.
  const turned = !p.horizontal && hasSeries && mine.length > 3;
  const labelMark = p.horizontal
    ? { align: 'left', baseline: 'middle', dx: 3 }
    : turned ? { angle: 270, align: 'left', baseline: 'middle', dx: 2 } : { baseline: 'bottom', dy: -2 };
  const one = [{}];
  const layer: Record<string, unknown>[] = [
    // on a log scale a bar starts from the axis' floor, not from 0
    { data: { values: bars }, mark: { type: 'bar' }, encoding: { ...pos, ...offset, ...colour, ...(log ? { [`${along}2`]: { datum: log.floor } } : {}) } },
    { data: { values: bars }, mark: { type: 'text', fontSize: hasSeries ? 8 : 10, ...labelMark }, encoding: { ...pos, ...offset, text: { field: 'label' } } },
  ];
  if (p.targets?.length) {
    layer.push(
      { data: { values: p.targets }, mark: { type: 'tick', color: '#d62728', thickness: 3 }, encoding: pos },
      { data: { values: p.targets },
        mark: { type: 'text', color: '#d62728', fontSize: 10, fontWeight: 'bold',
          ...(p.horizontal ? { align: 'left', baseline: 'top', dx: 3, dy: 4 } : { align: 'left', baseline: 'bottom', dx: 4, dy: -3 }) },
        encoding: { ...pos, text: { field: 'label' } } },
    );
  }
  if (p.reference) {
    const at = { [along]: { datum: p.reference.value } };
    layer.push(
      { data: { values: one }, mark: { type: 'rule', strokeDash: [4, 3], color: '#555' }, encoding: at },
      { data: { values: one }, mark: { type: 'text', align: 'right', baseline: 'bottom', dy: -2, color: '#555', fontSize: 9 },
        encoding: { ...at, [across]: { value: p.horizontal ? 0 : PANEL_WIDTH }, text: { value: p.reference.label } } },
    );
  }
  const height = p.horizontal ? Math.max(PANEL_HEIGHT, groups.length * 36) : PANEL_HEIGHT;
  return { title: p.title, width: PANEL_WIDTH, height, layer };
}

/** The vega-lite spec of a chart: its panels two by two, one legend of the series for all. */
export function chartSpec(c: Chart): TopLevelSpec {
  const series = unique([...(c.series ?? []), ...c.panels.flatMap((p) => p.bars.map((b) => b.series).filter((s): s is string => s !== undefined))]);
  const used = series.filter((s) => c.panels.some((p) => p.bars.some((b) => b.series === s)));
  const panels = c.panels.filter((p) => p.bars.length > 0 || (p.targets?.length ?? 0) > 0);
  if (panels.length === 0) throw new Error(`nothing to chart: the ${c.bench} result has no measured figure`);
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: c.title, subtitle: c.subtitle, anchor: 'start', fontSize: 15 },
    background: 'white',
    padding: 12,
    columns: 2,
    concat: panels.map((p) => panelSpec(p, used)),
    // one colour per series across the panels; the place inside a group is each panel's own
    resolve: { scale: { color: 'shared', xOffset: 'independent', yOffset: 'independent' } },
    config: {
      // no red: red is for targets
      range: { category: ['#4c78a8', '#f58518', '#54a24b', '#b279a2', '#72b7b2', '#9d755d', '#eeca3b', '#ff9da6', '#bab0ac'] },
      legend: { orient: 'top', columns: 4 },
      axis: { titleFontSize: 11, labelFontSize: 10 },
      title: { fontSize: 13 },
    },
  } as unknown as TopLevelSpec;
}

/** Render a chart to SVG text (vega headless: renderer 'none'). */
export async function renderSvg(c: Chart): Promise<string> {
  const vg = compile(chartSpec(c)).spec;
  const view = new vega.View(vega.parse(vg), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Write <dir>/<bench>.svg (and the result line beside it as <bench>.json, so the chart can be made again). */
export async function writeChart(r: BenchJson, dir: string, chart: Chart = chartOf(r)): Promise<string> {
  const svg = await renderSvg(chart);
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${r.bench}.svg`);
  writeFileSync(path, svg);
  writeFileSync(join(dir, `${r.bench}.json`), JSON.stringify(r) + '\n');
  return path;
}

/**
 * How every bench ends: the result as one JSON line on stdout (the last line, for machines), then the chart into
 * chartDir (null: --no-chart). A chart that cannot be made is reported on stderr and does not change the bench's exit
 * status. The hook for a new bench: build the summary, then `await emitResult(summary, opts.chartDir)`, optionally
 * with a Chart of its own panels.
 */
export async function emitResult(summary: Record<string, unknown>, chartDir: string | null, chart?: Chart): Promise<void> {
  process.stdout.write(JSON.stringify(summary) + '\n');
  if (chartDir === null) return;
  try {
    const r = benchJson(summary);
    const path = await writeChart(r, chartDir, chart ?? chartOf(r));
    process.stderr.write(`bench: chart written to ${path}\n`);
  } catch (e) {
    process.stderr.write(`bench: no chart: ${(e as Error).message}\n`);
  }
}
