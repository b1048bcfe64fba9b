// Parsers and report of the l7 bench, fed with output captured from the real tools on the project's VM
// (Debian 12, kernel 6.18): wrk 4.1.0 (Debian), h2load (nghttp2 1.52.0), haproxy 2.6 as the server.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  h2loadArgv, h2loadLogPercentiles, h2Shape, P999_LUA, parseH2load, parseH2loadSummary, parseWrk, wrkArgv, wrkDuration,
} from '../../bench/lib/loadgen.js';
import { allocPerRequest, GcMeter, parseGcLine } from '../../bench/lib/gctrace.js';
import { schedStats, statCpuTicks } from '../../bench/lib/cpu.js';
import { backendConfig, proxyConfig } from '../../bench/lib/haproxy.js';
import { formatL7Table, formatLoop, l7Checks, l7Json, ratios, summarize, type L7Result, type LoopFigures, type Sample } from '../../bench/lib/l7report.js';
import { l7BenchConfig } from '../../bench/l7.js';
import { sumSamples } from '../../bench/lib/promtext.js';
import { parseConfig } from '../../agent/model/config.js';

// `wrk -t1 -c16 -d2s --latency http://127.0.0.1:18080/` against the haproxy backend
const WRK_OK = `Running 2s test @ http://127.0.0.1:18080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    88.86us   33.86us 663.00us   70.93%
    Req/Sec   172.03k    13.91k  194.18k    85.71%
  Latency Distribution
     50%   70.00us
     75%  120.00us
     90%  132.00us
     99%  178.00us
  357786 requests in 2.10s, 22.52MB read
Requests/sec: 170364.23
Transfer/sec:     10.72MB
`;

// the same against a path the server answers 503 (`-c8 -d1s`): wrk exits 0 and counts them
const WRK_503 = `Running 1s test @ http://127.0.0.1:18082/bad
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   598.05us    1.04ms   5.39ms   84.95%
    Req/Sec    61.92k    24.31k  107.95k    80.00%
  Latency Distribution
     50%   82.00us
     75%  635.00us
     90%    2.22ms
     99%    4.46ms
  61618 requests in 1.00s, 4.88MB read
  Non-2xx or 3xx responses: 61618
Requests/sec:  61504.22
Transfer/sec:      4.87MB
`;

// against a path where haproxy closes the connection (`http-request reject`)
const WRK_RESET = `Running 1s test @ http://127.0.0.1:18082/reject
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  0 requests in 1.00s, 0.00B read
  Socket errors: connect 0, read 22066, write 0, timeout 0
Requests/sec:      0.00
Transfer/sec:       0.00B
`;

// `h2load -t1 -c2 -m8 -D 2 --log-file=h2.log http://127.0.0.1:18081/` (stdout), and the first lines of the log
const H2_OK = `starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Warm-up started for thread #0.
progress: 50% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 311620.00 req/s, 10.70MB/s
requests: 623240 total, 623256 started, 623240 done, 623240 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 623240 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 21.40MB (22436700) total, 9.51MB (9971840) headers (space savings 65.96%), 1.19MB (1246480) data
                     min         max         mean         sd        +/- sd
time for request:       20us      1.66ms        37us        12us    95.06%
time for connect:       59us        87us        73us        20us   100.00%
time to 1st byte:      261us       304us       283us        30us   100.00%
req/s           :  155794.54   155812.85   155803.70       12.95   100.00%
`;
const H2_OK_LOG = `1795290559373094	200	146
1795290559373095	200	165
1795290559373095	200	166
1795290559373095	200	167
1795290559373097	200	167
`;

// the 503 path (`-c1 -m4 -D 1`)
const H2_503 = `starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 60168.00 req/s, 2.30MB/s
requests: 60168 total, 60172 started, 60168 done, 0 succeeded, 60168 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 60168 5xx
traffic: 2.30MB (2406750) total, 1.15MB (1203360) headers (space savings 57.45%), 117.52KB (120336) data
                     min         max         mean         sd        +/- sd
time for request:       18us     57.77ms        61us       634us    98.70%
time for connect:       61us        61us        61us         0us   100.00%
time to 1st byte:      246us       246us       246us         0us   100.00%
req/s           :   60158.37    60158.37    60158.37        0.00   100.00%
`;
const H2_503_LOG = `1795290771057899	503	132
1795290771057900	503	152
1795290771057901	503	153
1795290771057901	503	154
1795290771058059	503	25
`;

// the closing path: 'errored', status -1 in the log
const H2_RESET = `starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.01s, 0.00 req/s, 99B/s
requests: 4 total, 8 started, 4 done, 0 succeeded, 4 failed, 4 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 99B (99) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
time for connect:       68us        68us        68us         0us   100.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :       0.00        0.00        0.00        0.00   100.00%
`;
const H2_RESET_LOG = `1795290777646054	-1	152
1795290777646055	-1	168
1795290777646056	-1	169
`;

// a port nobody listens on: h2load exits 0 and reports nothing done
const H2_REFUSED = `starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.01s, 0.00 req/s, 0B/s
requests: 0 total, 0 started, 0 done, 0 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :       0.00        0.00        0.00        0.00   100.00%
`;

t.test('wrk: req/s, percentiles in µs, no errors', async (t) => {
  const r = parseWrk(WRK_OK);
  t.equal(r.rps, 170364.23);
  t.equal(r.p50, 70);
  t.equal(r.p99, 178);
  t.equal(r.requests, 357786);
  t.equal(r.errors, 0);
  t.equal(r.errorDetail, undefined);
  t.equal(r.p999, undefined, 'no p99.9 without the script');
  // what P999_LUA's done() appends (wrk 4.1.0 -s, captured)
  t.equal(parseWrk(WRK_OK + 'Latency p99.9: 612us\n').p999, 612);
  t.ok(wrkArgv('http://x/', 8, 2, '/tmp/p.lua').join(' ').includes('-s /tmp/p.lua http://x/'));
  t.match(P999_LUA, /latency:percentile\(99\.9\)/);
});

t.test('wrk: non-2xx answers are errors; ms units', async (t) => {
  const r = parseWrk(WRK_503);
  t.equal(r.errors, 61618);
  t.match(r.errorDetail, /61618 non-2xx/);
  t.equal(r.p50, 82);
  t.equal(r.p99, 4460);
});

t.test('wrk: socket errors are errors', async (t) => {
  const r = parseWrk(WRK_RESET);
  t.equal(r.requests, 0);
  t.equal(r.errors, 22066);
  t.match(r.errorDetail, /read 22066/);
});

t.test('wrk: output without a latency distribution or with nothing done is refused', async (t) => {
  t.throws(() => parseWrk(WRK_OK.replace(/Latency Distribution[\s\S]*?99%[^\n]*\n/, '')), /50% latency/);
  t.throws(() => parseWrk('unable to connect to 127.0.0.1:18099 Connection refused\n'), /Requests\/sec/);
  t.throws(() => parseWrk(WRK_RESET.replace(/  Socket errors.*\n/, '')), /no requests/);
});

t.test('wrk durations', async (t) => {
  t.equal(wrkDuration('70.00us'), 70);
  t.equal(wrkDuration('1.58ms'), 1580);
  t.equal(wrkDuration('2.01s'), 2_010_000);
  t.throws(() => wrkDuration('-nan'), /cannot read/);
});

t.test('h2load summary', async (t) => {
  const s = parseH2loadSummary(H2_OK);
  t.same(s, { rps: 311620, requests: 623240, succeeded: 623240, failed: 0, errored: 0, timeout: 0, status2xx: 623240 });
});

t.test('h2load: percentiles from the request log', async (t) => {
  const r = parseH2load(H2_OK, H2_OK_LOG);
  t.equal(r.rps, 311620);
  t.equal(r.errors, 0);
  // five lines: 146 165 166 167 167 -> nearest rank p50 = 3rd, p99 = 5th
  t.equal(r.p50, 166);
  t.equal(r.p99, 167);
});

t.test('h2load log percentiles: nearest rank over many lines, failed requests left out', async (t) => {
  const lines: string[] = [];
  for (let i = 1; i <= 1000; i++) lines.push(`1795290559373094\t200\t${i}`);
  lines.push('1795290559373094\t-1\t999999');
  const p = h2loadLogPercentiles(lines.join('\n') + '\n');
  t.same(p, { p50: 500, p99: 990, p999: 999, count: 1000 });
  t.throws(() => h2loadLogPercentiles('garbage\n'), /cannot read line/);
});

t.test('h2load: 5xx and resets are errors; nothing done is refused', async (t) => {
  const bad = parseH2load(H2_503, H2_503_LOG);
  t.equal(bad.errors, 60168);
  t.match(bad.errorDetail, /60168 of 60168 not 2xx/);
  const reset = parseH2load(H2_RESET, H2_RESET_LOG);
  t.equal(reset.errors, 4);
  t.match(reset.errorDetail, /4 errored/);
  t.throws(() => parseH2load(H2_REFUSED, ''), /no requests/);
});

t.test('command lines', async (t) => {
  t.same(wrkArgv('http://127.0.0.1:8080/', 32, 5), ['wrk', '-t1', '-c32', '-d5s', '--latency', 'http://127.0.0.1:8080/']);
  t.same(h2Shape(32), { clients: 4, streams: 8 });
  t.same(h2Shape(4), { clients: 1, streams: 4 });
  t.same(h2loadArgv('http://x/', 32, 5, '/tmp/l'), ['h2load', '-t1', '-c', '4', '-m', '8', '-D', '5', '--log-file=/tmp/l', 'http://x/']);
});

t.test('/proc/<pid>/stat: utime + stime', async (t) => {
  // captured from this VM
  const stat = `1 (process_api) S 0 0 0 0 -1 4194560 165884 137551778 0 911 211 247 596616 137159 20 0 11 0 6 43614208 3896 18446744073709551615 1 1 0 0 0 0 0 4096 1256 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0`;
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  t.equal(statCpuTicks(stat), Number(f[11]) + Number(f[12]));
  // a command name with spaces and a parenthesis must not shift the fields
  t.equal(statCpuTicks(stat.replace('(process_api)', '(a b) c)')), statCpuTicks(stat));
  t.throws(() => statCpuTicks('garbage'), /no command name/);
});

const haproxyMissing = spawnSync('sh', ['-c', 'command -v haproxy']).status !== 0;
t.test('generated haproxy configs are valid to haproxy itself', { skip: haproxyMissing ? 'haproxy is not installed' : false }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bench-l7-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const [name, text] of [['backend', backendConfig(18080)], ['proxy1', proxyConfig(19001, '127.0.0.1', 18080, 1)], ['proxy2', proxyConfig(19002, '127.0.0.1', 19001, 2)]] as const) {
    const file = join(dir, `${name}.cfg`);
    writeFileSync(file, text);
    const r = spawnSync('haproxy', ['-c', '-f', file], { encoding: 'utf8', timeout: 10_000 });
    t.equal(r.status, 0, `${name}: ${r.stdout}${r.stderr}`);
  }
});

t.test('the (b) service config is valid to the agent: one L7 service, one catch-all route, no access log', async (t) => {
  const m = parseConfig(l7BenchConfig('127.77.0.1', 80, '127.0.0.1', 8080), 'bench.yaml');
  t.equal(m.services.length, 1);
  const http = m.services[0]!.http!;
  t.ok(http, 'the service is L7');
  t.equal(http.routes.length, 1);
  t.same(http.routes[0]!.match.path, { prefix: '/' });
  t.equal(http.accessLogSample, 0);
});

// an excerpt of the agent's /metrics after a `--quick --only b --duration 1` run
const METRICS = `# HELP sockmesh_health_checks_total health check probes completed, per service and result
# TYPE sockmesh_health_checks_total counter

# HELP sockmesh_http_requests_total HTTP requests through the L7 proxy by service, route, backend and status class (local = answered by the proxy itself, aborted = client gone first)
# TYPE sockmesh_http_requests_total counter
sockmesh_http_requests_total{service="bench-l7",route="all",backend="127.0.0.1:8080",class="aborted"} 24
sockmesh_http_requests_total{service="bench-l7",route="all",backend="127.0.0.1:8080",class="2xx"} 45070

# HELP sockmesh_http_local_replies_total Answers made by the proxy itself, by reason
# TYPE sockmesh_http_local_replies_total counter

# HELP sockmesh_http_request_duration_milliseconds Request duration in the proxy, from the request head to the end of the exchange, per route and backend
# TYPE sockmesh_http_request_duration_milliseconds histogram
sockmesh_http_request_duration_milliseconds_bucket{service="bench-l7",route="all",backend="127.0.0.1:8080",le="0.1"} 349
sockmesh_http_request_duration_milliseconds_bucket{service="bench-l7",route="all",backend="127.0.0.1:8080",le="0.25"} 1912
sockmesh_http_request_duration_milliseconds_bucket{service="bench-l7",route="all",backend="127.0.0.1:8080",le="0.5"} 15057
`;

// one line of `node --trace-gc-nvp` (Node 20.20, V8 11.3), captured from a scavenging script
const GC_LINE = '[18030:0x4230b870]       18 ms: pause=0.5 mutator=0.9 gc=s reduce_memory=0 time_to_safepoint=0.00 ' +
  'scavenge=0.45 scavenge_throughput=2391247 total_size_before=4069096 total_size_after=3193168 holes_size_before=7248 ' +
  'holes_size_after=432896 allocated=882200 promoted=89792 new_space_survived=34000 nodes_died_in_new=0';

t.test('GC trace: pause, collector and bytes allocated from --trace-gc-nvp lines; the agent\'s JSON logs ignored', async (t) => {
  t.same(parseGcLine(GC_LINE), { pause: 0.5, kind: 's', allocated: 882200, atMs: 18 });
  t.equal(parseGcLine('{"level":30,"msg":"pause=1 gc=s allocated=5"}'), undefined);
  t.equal(parseGcLine('datapath ready'), undefined);
  const m = new GcMeter();
  t.ok(m.feed(GC_LINE));
  t.ok(m.feed(GC_LINE.replace('pause=0.5', 'pause=1.5').replace('gc=s', 'gc=mc').replace('allocated=882200', 'allocated=100')));
  t.notOk(m.feed('{"msg":"x"}'));
  t.same(m.take(), { collections: 2, scavenges: 1, allocated: 882300, pauseTotalMs: 2, pauseMaxMs: 1.5, pausesOver1ms: 1, spanMs: 0, spanAllocated: 100 });
  t.same(m.take(), GcMeter.empty(), 'take() starts a new window');
});

t.test('GC trace: bytes per request from the rate between the first and last collection, not the sum that straddles the run', async (t) => {
  const at = (ms: number, allocated: number): string => GC_LINE.replace('      18 ms:', ` ${ms} ms:`).replace('allocated=882200', `allocated=${allocated}`);
  const m = new GcMeter();
  // 8 MB before the run's first collection (mostly from before the run), then 4 MB every 100 ms over 1 s
  m.feed(at(1000, 8_000_000));
  for (let i = 1; i <= 10; i++) m.feed(at(1000 + i * 100, 4_000_000));
  const g = m.take();
  t.equal(g.spanMs, 1000);
  t.equal(g.spanAllocated, 40_000_000);
  // a 1 s run of 40,000 requests: 40 MB/s -> 1000 B a request (the plain sum says 1200)
  t.equal(allocPerRequest(g, 40_000, 1), 1000);
  t.equal(g.allocated / 40_000, 1200);
  // fewer than 3 collections, or lines without times: the plain sum
  t.equal(allocPerRequest({ ...GcMeter.empty(), collections: 2, allocated: 500, spanMs: 10, spanAllocated: 100 }, 1, 1), 500);
  t.equal(allocPerRequest({ ...GcMeter.empty(), collections: 5, allocated: 500 }, 1, 1), 500);
});

t.test('Prometheus text: a family summed over the samples with the given labels', async (t) => {
  t.equal(sumSamples(METRICS, 'sockmesh_http_requests_total', { service: 'bench-l7', class: '2xx' }), 45070);
  t.equal(sumSamples(METRICS, 'sockmesh_http_requests_total', { service: 'bench-l7' }), 45094);
  t.equal(sumSamples(METRICS, 'sockmesh_http_requests_total', { service: 'other' }), 0);
  // a family whose name starts with another's is not mixed in
  t.equal(sumSamples(METRICS, 'sockmesh_http_request_duration_milliseconds', {}), 0);
  t.equal(sumSamples(METRICS, 'sockmesh_http_request_duration_milliseconds_bucket', { le: '0.5' }), 15057);
  t.throws(() => sumSamples('x_total{a="b"} nope\n', 'x_total', {}), /cannot read the value/);
});

function sample(rps: number, p50: number, p99: number, proxyCpu?: number, allocPerReq?: number): Sample {
  // a 5 s run: the proxy's CPU time is its share of one CPU over 5 s
  const cpu = proxyCpu !== undefined ? { proxyCpu, proxyCpuUs: (proxyCpu / 100) * 5e6 } : {};
  // (b): 40 collections of 0.5 ms and one of 2 ms in the 5 s
  const gc = allocPerReq !== undefined
    ? { gc: { collections: 41, scavenges: 40, allocated: allocPerReq * rps * 5, pauseTotalMs: 22, pauseMaxMs: 2, pausesOver1ms: 1 } }
    : {};
  return { rps, p50, p99, p999: p99 * 2, requests: rps * 5, errors: 0, backendCpu: 20, seconds: 5, ...cpu, ...gc };
}
const result = (name: L7Result['name'], http1: Sample[], h2: Sample[]): L7Result => ({ name, samples: { http1, h2 }, errors: {}, evidence: {} });

t.test('report: medians, ratios and the three targets per protocol', async (t) => {
  const results: L7Result[] = [
    result('direct', [sample(100_000, 100, 300), sample(90_000, 90, 200), sample(110_000, 110, 400)], [sample(200_000, 50, 100)]),
    result('sockmesh', [sample(40_000, 300, 900, 95, 1200)], [sample(50_000, 300, 2000, 90, 9000)]),
    result('haproxy', [sample(45_000, 300, 1000, 60)], [sample(70_000, 200, 1000, 60)]),
    result('chain', [sample(20_000, 700, 1500, 80)], [sample(30_000, 500, 1500, 80)]),
  ];
  t.same(summarize(results[0], 'http1'), { rps: 100_000, p50: 100, p99: 300, p999: 600, backendCpu: 20, samples: 3 });
  const b = summarize(results[1], 'http1')!;
  t.equal(b.allocPerReq, 1200);
  t.equal(b.gcPausePct, (22 / 1000 / 5) * 100, 'pause share: 22 ms of 5 s');
  t.equal(b.gcPauseMaxMs, 2);
  const r = ratios(results);
  t.equal(r['b/a']!.http1!.rps, 0.4);
  t.equal(r['b/c']!.http1!.rps, 40_000 / 45_000);
  t.equal(r['b/d']!.h2!.p99, 2000 / 1500);
  // proxy CPU per request: 95% of a CPU at 40k req/s = 23.75 µs; haproxy 60% at 45k = 13.3 µs
  t.equal(summarize(results[1], 'http1')!.cpuPerReq, 23.75);
  t.equal(r['b/c']!.http1!.cpuPerReq, 23.75 / ((60 * 1e4) / 45_000));
  t.equal(r['b/a']!.http1!.cpuPerReq, undefined, 'no ratio of CPU per request against direct (no proxy)');
  const checks = l7Checks(results);
  t.same(checks.map((c) => `${c.protocol} ${c.name} ${c.status}`), [
    'http1 (b) req/s >= 1.2x (c) FAIL', // 0.89x
    'http1 (b) p99 <= (c) p99 PASS', // 0.9x
    'http1 (b) req/s >= 1.5x (d) PASS', // 2.0x
    'http1 (b) p99 <= (d) p99 PASS', // 0.6x
    'http1 (b) allocation per request PASS', // 1200 B
    'h2 (b) req/s >= 1.2x (c) FAIL', // 0.71x
    'h2 (b) p99 <= (c) p99 FAIL', // 2.0x
    'h2 (b) req/s >= 1.5x (d) PASS', // 1.67x
    'h2 (b) p99 <= (d) p99 FAIL', // 1.33x
    'h2 (b) allocation per request FAIL', // 9000 B
  ]);
  t.equal(checks[9]!.detail, '9000 B <= 2560 B');
  const table = formatL7Table(results);
  t.match(table, /\(b\) sockmesh L7\s+40000\s+300\s+900\s+1800\s+95\s+23\.8\s+20/);
  t.match(table, /\(b\) sockmesh L7 GC\s+1200 B\/req, pauses 0\.44% of the time, max 2\.0 ms\s+9000 B\/req/);
  t.match(table, /b\/c\s+0\.89x/);
  const json = l7Json(results, checks) as { scenarios: Record<string, { http1: { rps: number } }> };
  t.equal(json.scenarios.direct!.http1.rps, 100_000);
  t.doesNotThrow(() => JSON.parse(JSON.stringify(json)));
});

t.test('report: the proxy\'s run-queue wait per request and preemptions per second (issue 15)', async (t) => {
  // 5 s runs of 40k req/s: 2 s and 4 s runnable-but-waiting over 200k requests, 10k and 30k preemptions
  const withSched = (runqUs: number, preempted: number): Sample => ({ ...sample(40_000, 300, 900, 95, 1200), sched: { runqUs, preempted, switches: 500 } });
  const results: L7Result[] = [
    result('sockmesh', [withSched(2e6, 10_000), withSched(4e6, 30_000), withSched(3e6, 20_000)], [withSched(1e6, 5000)]),
    result('haproxy', [sample(45_000, 300, 1000, 60)], [sample(70_000, 200, 1000, 60)]),
  ];
  const b = summarize(results[0], 'http1')!;
  t.equal(b.runqPerReq, 15, 'median 3 s over 200k requests');
  t.equal(b.preemptPerSec, 4000);
  t.equal(summarize(results[1], 'http1')!.runqPerReq, undefined, 'not measured: absent');
  t.match(formatL7Table(results), /\(b\) sched\s+run queue 15\.00 µs\/req, 4000 preemptions\/s\s+run queue 5\.00 µs\/req, 1000 preemptions\/s/);
  const json = l7Json(results, l7Checks(results)) as { scenarios: Record<string, { http1: Record<string, unknown> }> };
  t.equal(json.scenarios.sockmesh!.http1.proxyRunqUsPerRequest, 15);
  t.equal(json.scenarios.haproxy!.http1.proxyRunqUsPerRequest, undefined);
});

t.test('report: (b)\'s netio loop figures: the run with the median write p99, in the table and the JSON', async (t) => {
  const loop = (writeP99Us: number): LoopFigures => ({
    seconds: 4, eventsP50: 27, eventsP99: 32, batchP50Us: 300, batchP99Us: 1200, writeP50Us: 180, writeP99Us, writeP999Us: 4800,
    gapP99Us: 1200, gapP999Us: 6900, cpuMsPerS: 520, runqMsPerS: 400, gcMsPerS: 8,
  });
  const withLoop = (w: number): Sample => ({ ...sample(40_000, 300, 900, 95, 1200), loop: loop(w) });
  const results: L7Result[] = [result('sockmesh', [withLoop(900), withLoop(500), withLoop(700)], [sample(50_000, 300, 2000, 90, 1900)])];
  t.equal(summarize(results[0], 'http1')!.loop!.writeP99Us, 700);
  t.equal(summarize(results[0], 'h2')!.loop, undefined);
  t.match(formatL7Table(results), /\(b\) loop HTTP\/1\.1 \(wrk\): 27 events\/wake \(p99 32\), batch 300\/1200 µs, write \+180\/700\/4800 µs, gaps p99 1200 p99\.9 6900 µs, main thread 520 ms\/s on CPU, 400 waiting, 8 in GC/);
  t.notMatch(formatL7Table(results), /loop HTTP\/2/);
  t.equal(formatLoop({ ...loop(1), cpuMsPerS: -1, runqMsPerS: -1 }).includes('main thread - ms/s on CPU, - waiting'), true);
  const json = l7Json(results, l7Checks(results)) as { scenarios: Record<string, { http1: { loop?: LoopFigures } }> };
  t.equal(json.scenarios.sockmesh!.http1.loop!.writeP999Us, 4800);
});

t.test('schedStats: a process\'s sleeps are counted, a gone process is undefined', async (t) => {
  const a = schedStats(process.pid)!;
  // five futex sleeps of the main thread: each is a voluntary switch, whatever the load (a timer that is already due
  // when a preempted loop comes back would not sleep at all)
  const cell = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 5; i++) Atomics.wait(cell, 0, 0, 2);
  const b = schedStats(process.pid)!;
  t.ok(b.voluntary >= a.voluntary + 5, `voluntary switches ${a.voluntary} -> ${b.voluntary} over 5 sleeps`);
  t.ok(b.waitNs >= a.waitNs && b.involuntary >= a.involuntary);
  t.equal(schedStats(0x3fffffff), undefined);
});

t.test('report: (b) not available is a SKIP with the reason, never a number', async (t) => {
  const results: L7Result[] = [
    result('direct', [sample(100_000, 100, 300)], [sample(200_000, 50, 100)]),
    { name: 'sockmesh', samples: {}, errors: {}, evidence: {}, skipped: 'the agent has no L7 proxy yet' },
    result('haproxy', [sample(45_000, 300, 1000, 60)], [sample(70_000, 200, 1000, 60)]),
    { name: 'chain', samples: { http1: [sample(20_000, 700, 1500, 80)] }, errors: { h2: 'h2load: 3 failed requests' }, evidence: {} },
  ];
  const checks = l7Checks(results);
  t.ok(checks.every((c) => c.status === 'SKIP'));
  t.match(checks[0]!.detail, /the agent has no L7 proxy yet/);
  t.match(checks[7]!.detail, /3 failed requests/);
  t.match(checks[4]!.detail, /the agent has no L7 proxy yet/, 'no allocation figure without (b)');
  const table = formatL7Table(results);
  t.match(table, /\(b\) sockmesh L7\s+not available: the agent has no L7 proxy yet/);
  t.match(table, /\(d\) 2 haproxy HTTP\/2 \(h2load\) FAILED: h2load: 3 failed requests/);
  const json = l7Json(results, checks) as { scenarios: Record<string, Record<string, unknown>> };
  t.equal(json.scenarios.sockmesh!.notAvailable, 'the agent has no L7 proxy yet');
  t.equal(json.scenarios.sockmesh!.http1, null);
  t.same(json.scenarios.chain!.h2, { error: 'h2load: 3 failed requests' });
});
