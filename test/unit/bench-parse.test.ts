// Parsers of the datapath bench, fed with output captured from the real tools on the project's
// VM (Debian 12, kernel 6.18): sockperf 3.7, iperf 3.12, bpftool, /proc/mounts.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { parseSockperf } from '../../bench/lib/sockperf.js';
import { parseIperf3 } from '../../bench/lib/iperf3.js';
import { globalCounterNames, sumPerCpu } from '../../bench/lib/agent.js';
import { cgroup2Mount } from '../../bench/lib/cgroup.js';
import { sumPerCpuU64 } from '../../bench/lib/minimal.js';
import { formatTable, ratiosToDirect, referenceInfo, targetChecks, type ScenarioResult } from '../../bench/lib/report.js';

// `sockperf pp --tcp -i 127.0.0.1 -p 11111 -t 2 -m 64`, stdout and stderr together (note the colour codes)
const SOCKPERF_64 = `sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m
sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)

[ 0] IP = 127.0.0.1       PORT = 11111 # TCP
sockperf: Warmup stage (sending a few dummy messages)...
sockperf: Starting test...
sockperf: Test end (interrupted by timer)
sockperf: Test ended
sockperf: [Total Run] RunTime=2.000 sec; Warm up time=400 msec; SentMessages=282860; ReceivedMessages=282859
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=228164; ReceivedMessages=228164
sockperf: \x1b[2;35m====> avg-latency=3.375 (std-dev=0.435)\x1b[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Latency is 3.375 usec
sockperf: \x1b[2;35mTotal 228164 observations\x1b[0m; each percentile contains 2281.64 observations
sockperf: ---> <MAX> observation =   22.494
sockperf: ---> percentile 99.999 =   19.394
sockperf: ---> percentile 99.990 =   14.830
sockperf: ---> percentile 99.900 =    8.645
sockperf: ---> percentile 99.000 =    5.263
sockperf: ---> percentile 90.000 =    3.452
sockperf: ---> percentile 75.000 =    3.400
sockperf: ---> percentile 50.000 =    3.329
sockperf: ---> percentile 25.000 =    3.251
sockperf: ---> <MIN> observation =    3.040
`;

// the same with -m 16384
const SOCKPERF_16K = `sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m
sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)

[ 0] IP = 127.0.0.1       PORT = 11111 # TCP
sockperf: Warmup stage (sending a few dummy messages)...
sockperf: Starting test...
sockperf: Test end (interrupted by timer)
sockperf: Test ended
sockperf: [Total Run] RunTime=2.000 sec; Warm up time=400 msec; SentMessages=149411; ReceivedMessages=149410
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=114330; ReceivedMessages=114330
sockperf: \x1b[2;35m====> avg-latency=6.730 (std-dev=3.046)\x1b[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Latency is 6.730 usec
sockperf: \x1b[2;35mTotal 114330 observations\x1b[0m; each percentile contains 1143.30 observations
sockperf: ---> <MAX> observation =  192.342
sockperf: ---> percentile 99.999 =  153.284
sockperf: ---> percentile 99.990 =   91.482
sockperf: ---> percentile 99.900 =   39.549
sockperf: ---> percentile 99.000 =   17.735
sockperf: ---> percentile 90.000 =    8.207
sockperf: ---> percentile 75.000 =    6.966
sockperf: ---> percentile 50.000 =    6.414
sockperf: ---> percentile 25.000 =    5.817
sockperf: ---> <MIN> observation =    4.076
`;

// `iperf3 -c 127.0.0.1 -p 11112 -t 2 -J`
const IPERF3_OK = `{
	"start":	{
		"connected":	[{
				"socket":	5,
				"local_host":	"127.0.0.1",
				"local_port":	38588,
				"remote_host":	"127.0.0.1",
				"remote_port":	11112
			}],
		"version":	"iperf 3.12",
		"system_info":	"Linux vm 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0 x86_64",
		"timestamp":	{
			"time":	"Sat, 21 Nov 2026 17:36:37 GMT",
			"timesecs":	1795282597
		},
		"connecting_to":	{
			"host":	"127.0.0.1",
			"port":	11112
		},
		"cookie":	"uemnzc7wa4fttrz4grryle3milpfri7j2f5g",
		"tcp_mss_default":	32768,
		"target_bitrate":	0,
		"sock_bufsize":	0,
		"sndbuf_actual":	16384,
		"rcvbuf_actual":	131072,
		"test_start":	{
			"protocol":	"TCP",
			"num_streams":	1,
			"blksize":	131072,
			"omit":	0,
			"duration":	2,
			"bytes":	0,
			"blocks":	0,
			"reverse":	0,
			"tos":	0,
			"target_bitrate":	0
		}
	},
	"intervals":	[{
			"streams":	[{
					"socket":	5,
					"start":	0,
					"end":	1.000014,
					"seconds":	1.0000139474868774,
					"bytes":	4274126848,
					"bits_per_second":	34192537884.026558,
					"retransmits":	0,
					"snd_cwnd":	1047728,
					"snd_wnd":	198656,
					"rtt":	35,
					"rttvar":	11,
					"pmtu":	65535,
					"omitted":	false,
					"sender":	true
				}],
			"sum":	{
				"start":	0,
				"end":	1.000014,
				"seconds":	1.0000139474868774,
				"bytes":	4274126848,
				"bits_per_second":	34192537884.026558,
				"retransmits":	0,
				"omitted":	false,
				"sender":	true
			}
		}, {
			"streams":	[{
					"socket":	5,
					"start":	1.000014,
					"end":	2.000042,
					"seconds":	1.0000280141830444,
					"bytes":	4907335680,
					"bits_per_second":	39257585670.809135,
					"retransmits":	0,
					"snd_cwnd":	1047728,
					"snd_wnd":	291840,
					"rtt":	36,
					"rttvar":	13,
					"pmtu":	65535,
					"omitted":	false,
					"sender":	true
				}],
			"sum":	{
				"start":	1.000014,
				"end":	2.000042,
				"seconds":	1.0000280141830444,
				"bytes":	4907335680,
				"bits_per_second":	39257585670.809135,
				"retransmits":	0,
				"omitted":	false,
				"sender":	true
			}
		}],
	"end":	{
		"streams":	[{
				"sender":	{
					"socket":	5,
					"start":	0,
					"end":	2.000042,
					"seconds":	2.000042,
					"bytes":	9181462528,
					"bits_per_second":	36725078885.3434,
					"retransmits":	0,
					"max_snd_cwnd":	1047728,
					"max_snd_wnd":	291840,
					"max_rtt":	36,
					"min_rtt":	35,
					"mean_rtt":	35,
					"sender":	true
				},
				"receiver":	{
					"socket":	5,
					"start":	0,
					"end":	2.000595,
					"seconds":	2.000042,
					"bytes":	9176350720,
					"bits_per_second":	36694486270.334572,
					"sender":	true
				}
			}],
		"sum_sent":	{
			"start":	0,
			"end":	2.000042,
			"seconds":	2.000042,
			"bytes":	9181462528,
			"bits_per_second":	36725078885.3434,
			"retransmits":	0,
			"sender":	true
		},
		"sum_received":	{
			"start":	0,
			"end":	2.000595,
			"seconds":	2.000595,
			"bytes":	9176350720,
			"bits_per_second":	36694486270.334572,
			"sender":	true
		},
		"cpu_utilization_percent":	{
			"host_total":	26.582609890453053,
			"host_user":	1.8869555441747756,
			"host_system":	24.695654346278275,
			"remote_total":	72.814442074598659,
			"remote_user":	3.4008814360099149,
			"remote_system":	69.413560638588748
		},
		"sender_tcp_congestion":	"bbr",
		"receiver_tcp_congestion":	"bbr"
	}
}
`;

// `iperf3 -c 127.0.0.1 -p 11199 -t 1 -J` with nothing listening
const IPERF3_REFUSED = `{
	"start":	{
		"connected":	[],
		"version":	"iperf 3.12",
		"system_info":	"Linux vm 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0 x86_64"
	},
	"intervals":	[],
	"end":	{
	},
	"error":	"unable to connect to server: Connection refused"
}
`;

// `bpftool -j map dump pinned` of a PERCPU_ARRAY without BTF (key 1 set to 5 on both CPUs)
const BPFTOOL_RAW = `[{"key":["0x00","0x00","0x00","0x00"],"values":[{"cpu":0,"value":["0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]},{"cpu":1,"value":["0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]}]},{"key":["0x01","0x00","0x00","0x00"],"values":[{"cpu":0,"value":["0x05","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]},{"cpu":1,"value":["0x05","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]}]}]`;

// `bpftool -j map dump pinned /sys/fs/bpf/sockmesh/sm_global` (with BTF it adds "formatted"), first two entries
const BPFTOOL_BTF = `[{"key":["0x00","0x00","0x00","0x00"],"values":[{"cpu":0,"value":["0x03","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]},{"cpu":1,"value":["0x03","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]}],"formatted":{"key":0,"values":[{"cpu":0,"value":3},{"cpu":1,"value":3}]}},{"key":["0x01","0x00","0x00","0x00"],"values":[{"cpu":0,"value":["0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]},{"cpu":1,"value":["0x00","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]}],"formatted":{"key":1,"values":[{"cpu":0,"value":0},{"cpu":1,"value":0}]}}]`;

t.test('sockperf 64 B', async (t) => {
  t.same(parseSockperf(SOCKPERF_64), { p50: 3.329, p99: 5.263, avg: 3.375, min: 3.04, max: 22.494, observations: 228164, roundTrips: 282859 });
});

t.test('sockperf 16 KiB', async (t) => {
  const l = parseSockperf(SOCKPERF_16K);
  t.equal(l.p50, 6.414);
  t.equal(l.p99, 17.735);
  t.equal(l.observations, 114330);
});

t.test('sockperf: lost or reordered messages are an error, not a result', async (t) => {
  const reordered = SOCKPERF_64.replace('# out-of-order messages = 0', '# out-of-order messages = 3');
  t.throws(() => parseSockperf(reordered), /3 out-of-order/);
  t.throws(() => parseSockperf(SOCKPERF_64.replace(/percentile 50\.000.*\n/, '')), /no p50/);
  t.throws(() => parseSockperf('sockperf: ERROR: [fd=3] Can`t bind socket'), /no dropped-message count/);
});

t.test('iperf3 JSON', async (t) => {
  const s = parseIperf3(IPERF3_OK);
  t.equal(s.bytes, 9176350720);
  t.equal(Math.round(s.gbps * 1000) / 1000, 36.694);
  t.equal(s.retransmits, 0);
  t.throws(() => parseIperf3(IPERF3_REFUSED), /iperf3: unable to connect to server: Connection refused/);
  t.throws(() => parseIperf3(''), /not JSON/);
});

t.test('bpftool per-CPU dump, raw and BTF-formatted', async (t) => {
  t.same([...sumPerCpu(BPFTOOL_RAW)], [[0, 0], [1, 10]]);
  t.same([...sumPerCpu(BPFTOOL_BTF)], [[0, 6], [1, 0]]);
});

t.test('counter names come from the ABI header, in index order', async (t) => {
  const header = readFileSync(new URL('../../bpf/include/sockmesh_abi.h', import.meta.url), 'utf8');
  const names = globalCounterNames(header);
  t.equal(names[0], 'SM_G_LB_CONNECT');
  t.ok(names.includes('SM_G_REDIRECT'));
  t.notOk(names.includes('SM_G__MAX'));
  t.same(globalCounterNames('enum sm_global_counter { A = 0, /* x, y */ B, C };'), ['A', 'B', 'C']);
});

t.test('cgroup2 mount from a hybrid host /proc/mounts', async (t) => {
  const mounts = [
    'tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0',
    'cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0',
    'cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0',
  ].join('\n');
  t.equal(cgroup2Mount(mounts), '/sys/fs/cgroup/unified');
  t.throws(() => cgroup2Mount('tmpfs /tmp tmpfs rw 0 0'), /no cgroup2/);
});

t.test('target checks', async (t) => {
  const lat = (p50: number) => ({ lat64Same: { p50, p99: p50 * 2, avg: p50, min: p50, max: p50, observations: 1 } });
  const stream = (gbps: number) => ({ gbps, bytes: 1, seconds: 1, retransmits: 0 });
  const r: ScenarioResult[] = [
    { name: 'direct', latency: lat(4), stream: stream(20), evidence: {} },
    { name: 'sockmesh', latency: lat(2.4), stream: stream(34), evidence: {} },
    { name: 'iptables', latency: lat(5), stream: stream(20), evidence: {} },
  ];
  t.same(targetChecks(r).map((c) => c.status), ['PASS', 'PASS', 'PASS']);
  r[1].latency = lat(2.9); // 0.725x (a), 0.58x (c)
  r[1].stream = stream(29); // 1.45x (a)
  t.same(targetChecks(r).map((c) => c.status), ['FAIL', 'FAIL', 'FAIL']);
  r[1] = { name: 'sockmesh', latency: {}, skipped: 'agent not built', evidence: {} };
  const skipped = targetChecks(r);
  t.same(skipped.map((c) => c.status), ['SKIP', 'SKIP', 'SKIP']);
  t.match(skipped[0].detail, /agent not built/);
});

t.test('per-CPU u64 counter as a map lookup returns it (8 bytes per possible CPU)', async (t) => {
  const v = Buffer.alloc(16);
  v.writeBigUInt64LE(1951808n, 0);
  v.writeBigUInt64LE(7n, 8);
  t.equal(sumPerCpuU64(v), 1951815);
  t.equal(sumPerCpuU64(Buffer.alloc(0)), 0);
});

t.test('(d) minimal sockmap: a row with ratios to (a), and (b)/(d) as information, not a target', async (t) => {
  const lat = (p50: number) => ({ lat64Same: { p50, p99: p50 * 2, avg: p50, min: p50, max: p50, observations: 1 } });
  const stream = (gbps: number) => ({ gbps, bytes: 1, seconds: 1, retransmits: 0 });
  const r: ScenarioResult[] = [
    { name: 'direct', latency: lat(3.4), stream: stream(34), evidence: {} },
    { name: 'sockmesh', latency: lat(2.5), stream: stream(24), evidence: {} },
    { name: 'minimal', latency: lat(2.0), stream: stream(25), evidence: { redirects: 10 } },
  ];
  const table = formatTable(r).split('\n');
  const row = table.findIndex((l) => l.startsWith('(d) minimal sockmap '));
  t.ok(row > 0, 'row for (d)');
  t.match(table[row + 1], /^ {4}vs \(a\)\s+0\.59x\s+0\.59x\s.*0\.74x$/); // p50 2.0/3.4, p99 4.0/6.8, stream 25/34
  t.equal(ratiosToDirect(r).minimal?.streamGbps, 0.735);

  const info = referenceInfo(r);
  t.same(info.map((i) => i.key), ['lat64Same.p50', 'streamGbps']);
  t.equal(info[0].detail, '(b)/(d) p50 64B same-CPU = 1.25x (sockmesh program overhead over the kernel path)');
  t.equal(info[1].detail, '(b)/(d) stream = 0.96x');
  t.equal(targetChecks(r).length, 3, 'no new target');

  r[2] = { name: 'minimal', latency: {}, error: 'clang failed', evidence: {} };
  const missing = referenceInfo(r);
  t.equal(missing[0].ratio, undefined);
  t.match(missing[0].detail, /not measured: clang failed/);
  t.match(referenceInfo(r.slice(0, 2))[1].detail, /not measured: scenario not run/);
});
