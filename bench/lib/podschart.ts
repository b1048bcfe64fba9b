// The pods bench's chart (bench/chart.ts draws it): latency p50 and p99 per case, each throughput figure in a panel of
// its own unit, every figure against (a), and the targets. Built from the result line, so a saved line draws the same.
import { AXES, type Chart, type Panel } from '../chart.js';
import { LATENCY_METRICS, METRICS, POD_LABELS, POD_LETTERS, THROUGHPUT_METRICS } from './podsreport.js';

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const fmt = (v: number, suffix = ''): string => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2)) + suffix;

export function podsChart(r: Obj): Chart {
  const scenarios = obj(r.scenarios);
  const label = (n: string) => (POD_LABELS as Record<string, string>)[n] ?? n;
  const letterName = Object.fromEntries(Object.entries(POD_LETTERS).map(([n, l]) => [l, n]));
  const panel = (title: string, axis: string, groupAxis: string, keys: typeof METRICS, log = false): Panel => ({
    title, axis, groupAxis, log,
    bars: Object.entries(scenarios).flatMap(([name, s]) => keys.flatMap((m) => {
      const v = num(obj(obj(s).medians)[m.key]);
      const group = `${m.title || LATENCY_METRICS[LATENCY_METRICS.indexOf(m) - 1]?.title || ''} ${m.sub}`.trim();
      return v === undefined ? [] : [{ group, series: label(name), value: v, label: fmt(v) }];
    })),
  });
  const p50 = LATENCY_METRICS.filter((m) => m.sub === 'p50'), p99 = LATENCY_METRICS.filter((m) => m.sub === 'p99');
  const byKey = (k: string) => THROUGHPUT_METRICS.filter((m) => m.key === k);
  const ratios: Panel = {
    title: 'Against (a) the pod IP (latency: lower is better; req/s, Gbit/s: higher)', axis: AXES.ratio, groupAxis: 'figure',
    reference: { value: 1, label: '(a) = 1.0x' },
    bars: Object.entries(obj(r.ratiosToDirect)).flatMap(([pair, row]) => {
      const name = letterName[pair.split('/')[0]!] ?? pair;
      return ['lat64Same.p50', 'lat16kSame.p50', 'streamGbps', 'httpRps', 'redisGetRps', 'redisSetRps'].flatMap((k) => {
        const v = num(obj(row)[k]);
        const m = METRICS.find((x) => x.key === k)!;
        return v === undefined ? [] : [{ group: `${m.title} ${m.sub}`, series: label(name), value: v, label: fmt(v, 'x') }];
      });
    }),
  };
  const targets: Panel = {
    title: 'Targets: measured (bars) against each limit (red)', axis: AXES.check, groupAxis: 'check', horizontal: true, bars: [], targets: [],
  };
  for (const c0 of Array.isArray(r.checks) ? r.checks : []) {
    const c = obj(c0), name = String(c.name ?? '?'), v = num(c.ratio), limit = num(c.limit), status = String(c.status ?? '');
    if (limit !== undefined) targets.targets!.push({ group: name, value: limit, label: `${/<=/.test(name) ? '<=' : '>='} ${fmt(limit, 'x')}` });
    if (v !== undefined) targets.bars.push({ group: name, value: v, label: `${fmt(v, 'x')} ${status}`, colour: status === 'PASS' ? '#54a24b' : '#e45756' });
  }
  const verdict = r.ok === true ? 'every target met' : 'a target missed or a scenario failed';
  return {
    bench: 'pods',
    title: 'sockmesh pods bench: pod IP vs sockmesh vs kube-proxy vs a minimal sockmap program vs --no-sockmap',
    subtitle: [`kernel ${String(r.kernel ?? '?')}, ${String(r.cpus ?? '?')} CPUs, medians of ${String(r.rounds ?? '?')} interleaved rounds`, verdict],
    series: Object.values(POD_LABELS),
    panels: [
      panel('Latency p50 (lower is better)', AXES.p50, 'message size, CPU placement', p50),
      panel('Latency p99 (lower is better; log scale)', AXES.p99, 'message size, CPU placement', p99, true),
      panel('iperf3 stream (higher is better)', AXES.gbps, 'median of the rounds', byKey('streamGbps')),
      panel('wrk against nginx (higher is better)', AXES.rps, 'req/s', byKey('httpRps')),
      panel('redis-benchmark (higher is better)', AXES.rps, 'command', [...byKey('redisGetRps'), ...byKey('redisSetRps')]),
      ratios,
      targets,
    ],
  };
}
