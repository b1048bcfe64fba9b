// The pods bench's parsing, medians, ratios and targets, with redis-benchmark output captured from the real tool on
// the project's VM (Debian 12, redis 7.0.15), and its agent config and kube-proxy rules checked for shape.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  addCounters, addSample, checkLines, evidenceLines, formatPodTable, median, newResult, parseRedisBenchmark, podChecks,
  podJsonScenarios, podRatiosToDirect, redisBenchmarkArgv, LATENCY_METRICS, POD_LABELS, THROUGHPUT_METRICS, value, type PodResult,
  type PodScenario,
} from '../../bench/lib/podsreport.js';
import { kubeProxyRules, podsAgentConfig } from '../../bench/pods.js';
import { podsChart } from '../../bench/lib/podschart.js';
import { renderSvg } from '../../bench/chart.js';
import { parseConfig } from '../../agent/model/config.js';

// `redis-benchmark -h 127.0.0.1 -p 16379 -t set,get -n 2000 -c 8 --csv`
const REDIS_CSV = `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"SET","45454.55","0.118","0.024","0.095","0.143","0.239","3.911"
"GET","54054.05","0.096","0.016","0.095","0.151","0.191","0.327"
`;
// the same against a port nobody listens on (stdout only; it then waits until killed)
const REDIS_REFUSED = `Could not connect to Redis at 127.0.0.1:16399: Connection refused
WARNING: Could not fetch server CONFIG
`;

t.test('redis-benchmark: GET and SET req/s from --csv; no result is an error, never 0', async (t) => {
  t.same(parseRedisBenchmark(REDIS_CSV), { getRps: 54054.05, setRps: 45454.55 });
  t.throws(() => parseRedisBenchmark(REDIS_REFUSED), /no GET result: .*Connection refused/);
  t.throws(() => parseRedisBenchmark(REDIS_CSV.replace(/"GET".*\n/, '')), /no GET result/);
  t.throws(() => parseRedisBenchmark(REDIS_CSV.replace('54054.05', '0.00')), /GET: 0.00 requests per second/);
  t.same(redisBenchmarkArgv('198.19.254.4', 6379, 32, 50000),
    ['redis-benchmark', '-h', '198.19.254.4', '-p', '6379', '-c', '32', '-n', '50000', '-t', 'set,get', '--csv']);
});

t.test('medians over rounds; a failed workload or a skipped scenario has no figure', async (t) => {
  t.equal(median([3, 1, 2]), 2);
  t.equal(median([4, 1, 2, 3]), 2.5);
  t.equal(median([]), undefined);
  const r = newResult('direct');
  for (const v of [2.9, 2.7, 3.4]) addSample(r, 'lat64Same.p50', v);
  addSample(r, 'httpRps', 10000);
  t.equal(value(r, 'lat64Same.p50'), 2.9);
  t.equal(value(r, 'httpRps'), 10000);
  r.errors.wrk = 'wrk: timed out';
  t.equal(value(r, 'httpRps'), undefined, 'the wrk figures go with the wrk error');
  t.equal(value(r, 'lat64Same.p50'), 2.9, 'the others stay');
  t.equal(value({ ...r, skipped: 'no agent' }, 'lat64Same.p50'), undefined);
});

t.test('counter deltas are tallied per workload, only what moved', async (t) => {
  const r = newResult('sockmesh');
  addCounters(r, 'sockperf', { SM_G_SOCK_INSERT: 4, SM_G_REDIRECT: 100, SM_G_LB_CONNECT: 2 }, { SM_G_SOCK_INSERT: 6, SM_G_REDIRECT: 900, SM_G_LB_CONNECT: 3 });
  addCounters(r, 'sockperf', { SM_G_SOCK_INSERT: 6, SM_G_REDIRECT: 900 }, { SM_G_SOCK_INSERT: 8, SM_G_REDIRECT: 1000 });
  addCounters(r, 'wrk', { SM_G_REDIRECT: 1000 }, { SM_G_REDIRECT: 1000 });
  t.same(r.counters, { sockperf: { SM_G_SOCK_INSERT: 4, SM_G_REDIRECT: 900, SM_G_LB_CONNECT: 1 }, wrk: {} });
});

/** A run with figures per scenario: [lat64 p50, stream Gbit/s, wrk rps, redis GET, redis SET]. */
function results(figs: Partial<Record<PodScenario, [number, number, number, number, number]>>, bEvidence = { SM_G_SOCK_INSERT: 8, SM_G_REDIRECT: 5000 }): PodResult[] {
  return Object.entries(figs).map(([name, f]) => {
    const r = newResult(name as PodScenario);
    const keys = ['lat64Same.p50', 'streamGbps', 'httpRps', 'redisGetRps', 'redisSetRps'];
    keys.forEach((k, i) => addSample(r, k, f![i]!));
    addSample(r, 'lat64Same.p99', f![0] * 2);
    if (name === 'sockmesh') r.evidence = { ...bEvidence };
    if (name === 'minimal') r.evidence = { redirects: 7000, misses: 0 };
    return r;
  });
}

t.test('targets pass where met', async (t) => {
  const rs = results({
    direct: [2.8, 20, 40000, 50000, 48000], sockmesh: [1.6, 20, 60000, 70000, 70000], iptables: [3.2, 18, 35000, 45000, 44000],
    minimal: [1.5, 19, 61000, 71000, 71000], nosockmap: [2.8, 20, 40000, 50000, 48000],
  });
  const checks = podChecks(rs);
  t.same(checks.map((c) => c.status), ['PASS', 'PASS', 'PASS', 'PASS', 'PASS', 'PASS', 'PASS']);
  t.equal(checks[0]!.name, '(b) p50 64B same-CPU <= 0.62x (a)');
  t.ok(Math.abs(checks[0]!.value! - 1.6 / 2.8) < 1e-9, '(b)/(a)');
  t.ok(Math.abs(checks[1]!.value! - 1.6 / 3.2) < 1e-9, '(b)/(c)');
  t.ok(Math.abs(checks[2]!.value! - 1.6 / 1.5) < 1e-9, '(b)/(d)');
  t.ok(Math.abs(checks[3]!.value! - 1) < 1e-9, 'stream (b) over the better of (a) 20 and (d) 19');
  t.match(checks[3]!.detail, /the better is \(a\)/);
  t.ok(Math.abs(checks[4]!.value! - 1.5) < 1e-9, 'wrk (b)/(a)');
  t.equal(checks[0]!.reach?.reachable, true, '(d) meets it as well');
  t.equal(checks.filter((c) => c.why).length, 0, 'nothing to explain');
});

t.test('a miss says whether the kernel\'s own sockmap path (d) reaches the target, and whether (b) used the fast path', async (t) => {
  const rs = results({
    direct: [2.76, 20, 40000, 50000, 48000], sockmesh: [2.8, 21, 41000, 50000, 48000], iptables: [3.15, 18, 35000, 45000, 44000],
    minimal: [1.9, 14, 45000, 70000, 70000],
  }, { SM_G_SOCK_INSERT: 0, SM_G_REDIRECT: 0 });
  const checks = podChecks(rs);
  t.same(checks.map((c) => c.status), ['FAIL', 'FAIL', 'FAIL', 'PASS', 'FAIL', 'FAIL', 'FAIL']);
  // (d)/(a) = 0.688 > 0.62: out of reach
  t.equal(checks[0]!.reach?.reachable, false);
  t.match(checks[0]!.why, /out of reach on this kernel: \(d\)\/\(a\) = 0\.688x/);
  t.match(checks[0]!.why, /fast path did not engage in \(b\): sm_global SM_G_SOCK_INSERT=0 SM_G_REDIRECT=0/);
  // (d)/(a) on wrk = 1.125 < 1.3: out of reach; redis (d)/(a) = 1.4: reachable
  t.equal(checks[4]!.reach?.reachable, false);
  t.equal(checks[5]!.reach?.reachable, true);
  t.match(checks[5]!.why, /reachable: \(d\)\/\(a\) = 1\.400x/);
  t.match(checks[3]!.reach?.detail, /\(d\)\/\(a\) = 0\.700x/, 'stream: how sockmap itself does on a stream');
  const lines = checkLines(checks).join('\n');
  t.match(lines, /FAIL \(b\) p50 64B same-CPU <= 0\.62x \(a\): 1\.014x <= 0\.62x; \(d\)\/\(a\) = 0\.688x\n {5}why: out of reach/);
  t.match(evidenceLines(rs).join('\n'), /WARNING: the fast path did not engage in \(b\)/);
});

t.test('a stream miss where sockmap loses to TCP says so', async (t) => {
  const checks = podChecks(results({ direct: [2.8, 20, 1, 1, 1], sockmesh: [1.6, 13, 1, 1, 1], minimal: [1.5, 13, 1, 1, 1] }));
  t.equal(checks[3]!.status, 'FAIL');
  t.match(checks[3]!.why, /sockmap loses to TCP on a stream here \(\(d\)\/\(a\) = 0\.650x\)/);
});

t.test('what was not measured is SKIP with the reason, never PASS', async (t) => {
  const rs = results({ direct: [2.8, 20, 40000, 50000, 48000] });
  rs.push({ ...newResult('sockmesh'), skipped: 'agent not built' });
  const checks = podChecks(rs);
  t.same(checks.map((c) => c.status), Array(7).fill('SKIP'));
  t.match(checks[0]!.detail, /not measured: agent not built/);
  const onlyWrk = results({ direct: [2.8, 20, 40000, 50000, 48000], sockmesh: [1.6, 20, 60000, 70000, 70000] });
  onlyWrk[1]!.errors.wrk = 'wrk: timed out';
  const c2 = podChecks(onlyWrk);
  t.equal(c2[4]!.status, 'SKIP');
  t.match(c2[4]!.detail, /wrk: timed out/);
  t.equal(c2[0]!.status, 'PASS', 'the other workloads still count');
});

t.test('tables, ratios and JSON', async (t) => {
  const rs = results({ direct: [2.8, 20, 40000, 50000, 48000], sockmesh: [1.4, 20, 60000, 70000, 72000] });
  rs.push({ ...newResult('iptables'), skipped: 'setup failed: iptables' });
  const lat = formatPodTable(rs, LATENCY_METRICS);
  t.match(lat, /^ {20}64B same-CPU {6}16KiB same-CPU {4}64B split/);
  t.match(lat, /\(a\) direct pod IP\s+2\.80\s+5\.60/);
  t.match(lat, /\(b\) sockmesh\s+1\.40\s+2\.80\s+-/);
  t.match(lat, /vs \(a\)\s+0\.50x\s+0\.50x\s+-/);
  t.match(lat, /\(c\) kube-proxy\s+skipped: setup failed: iptables/);
  const tp = formatPodTable(rs, THROUGHPUT_METRICS, 11);
  t.match(tp, /\(b\) sockmesh\s+20\.00\s+60000\s+-\s+70000\s+72000/);
  t.match(tp, /vs \(a\)\s+1\.00x\s+1\.50x\s+-\s+1\.40x\s+1\.50x/);
  t.same(podRatiosToDirect(rs)['b/a'], { 'lat64Same.p50': 0.5, 'lat64Same.p99': 0.5, streamGbps: 1, httpRps: 1.5, redisGetRps: 1.4, redisSetRps: 1.5 });
  const j = podJsonScenarios(rs) as Record<string, { medians: Record<string, number>; skipped?: string }>;
  t.equal(j.sockmesh!.medians.httpRps, 60000);
  t.equal(j.iptables!.skipped, 'setup failed: iptables');
  t.match(evidenceLines(rs).join('\n'), /\(b\) sockmesh evidence: sock_insert=8 redirect=5000/);
});

t.test('the agent config: one service per workload, VIP -> the server pod; kube-proxy chains per service', async (t) => {
  const m = parseConfig(podsAgentConfig('198.18.3.2'), 'pods.yaml');
  const text = JSON.stringify(m);
  for (const want of ['sockperf', 'iperf3', 'nginx', 'redis', '198.19.254.1', '198.19.254.4', '198.18.3.2']) t.match(text, want);
  const rules = kubeProxyRules('198.18.3.2');
  t.same(rules[1], ['-A', 'PREROUTING', '-m', 'comment', '--comment', 'kubernetes service portals', '-j', 'KUBE-SERVICES']);
  const dnat = rules.filter((r) => r.includes('DNAT'));
  t.equal(dnat.length, 4, 'one endpoint chain with a DNAT per service');
  t.ok(dnat.every((r) => /^198\.18\.3\.2:\d+$/.test(r[r.length - 1]!)), 'to the server pod');
  t.ok(rules.some((r) => r.join(' ') === '-A KUBE-SERVICES -d 198.19.254.4/32 -p tcp -m tcp --dport 6379 -j KUBE-SVC-REDIS'));
});

t.test('the chart of a real run\'s result line: every scenario, each workload\'s panel, the targets', async (t) => {
  const line = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'fixtures', 'bench', 'pods.json'), 'utf8')) as Record<string, unknown>;
  const chart = podsChart(line);
  const titles = chart.panels.map((p) => p.title);
  for (const want of ['Latency p50', 'Latency p99', 'iperf3', 'wrk', 'redis', 'Against (a)', 'Targets']) t.ok(titles.some((x) => x.startsWith(want)), want);
  const p50 = chart.panels[0]!;
  t.same([...new Set(p50.bars.map((b) => b.series))], Object.values(POD_LABELS), 'all five scenarios in the p50 panel');
  t.ok(p50.bars.some((b) => b.group === '64B same-CPU p50' && b.series === POD_LABELS.sockmesh), '(b) 64 B same-CPU p50');
  t.ok(chart.panels[1]!.bars.some((b) => b.group === '16KiB split p99'), 'split cases named');
  const targets = chart.panels.find((p) => p.title.startsWith('Targets'))!;
  t.equal(targets.targets!.length, 7, 'seven targets');
  const svg = await renderSvg(chart);
  t.match(svg, /^<svg/);
  for (const l of Object.values(POD_LABELS)) t.ok(svg.includes(`>${l}</text>`), `${l} in the SVG's legend`);
});

t.test('a gain of the fast path measured while (b) made no redirect is no PASS', async (t) => {
  const rs = results({
    direct: [2.8, 20, 13362, 14152, 10462], sockmesh: [2.8, 21, 19803, 13959, 14201], minimal: [1.5, 19, 30439, 19463, 19693],
    nosockmap: [2.8, 20, 13878, 10284, 11534],
  }, { SM_G_SOCK_INSERT: 0, SM_G_REDIRECT: 0 });
  const b = rs.find((r) => r.name === 'sockmesh')!;
  addCounters(b, 'wrk', {}, { SM_G_LB_CONNECT: 166 });
  addCounters(b, 'redis', {}, { SM_G_LB_CONNECT: 195 });
  const checks = podChecks(rs);
  t.equal(checks[4]!.status, 'FAIL', 'wrk 1.48x without a redirect');
  t.match(checks[4]!.why, /\(b\) made no sockmap redirect during wrk: 1\.482x is not the fast path's but noise \(\(e\), the same connect-time path, = 1\.039x of \(a\)\)/);
  t.equal(checks[6]!.status, 'FAIL', 'redis SET 1.36x without a redirect');
  // with redirects counted, the same figures pass
  b.counters.wrk = { SM_G_REDIRECT: 500000 };
  t.equal(podChecks(rs)[4]!.status, 'PASS');
});
