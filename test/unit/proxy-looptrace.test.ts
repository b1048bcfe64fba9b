// SOCKMESH_NETIO_TRACE (agent/proxy/looptrace.ts): the log-scaled histograms' quantiles, and the trace a real NetIo
// writes while echoing over real loopback sockets: one JSON line per flush with the batches, the writes made inside
// them (and the ones made outside), the time split and nothing written for a second without batches.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LogHistogram, loopTraceFromEnv, readLoopTrace } from '../../agent/proxy/looptrace.js';

// read once, at the first NetIo of the process: set before any is made
const dir = mkdtempSync(join(tmpdir(), 'sockmesh-looptrace-'));
const file = join(dir, 'trace.jsonl');
process.env.SOCKMESH_NETIO_TRACE = file;
const { NetIo } = await import('../../agent/proxy/netio.js');
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

t.test('LogHistogram: quantiles within a bucket (19 %) of the exact ones, max exact, reset', async (t) => {
  const h = new LogHistogram();
  t.equal(h.quantile(0.5), 0, 'empty: 0');
  for (let v = 1; v <= 1000; v++) h.add(v);
  t.equal(h.n, 1000);
  t.equal(h.max, 1000);
  for (const [q, exact] of [[0.5, 500], [0.9, 900], [0.99, 990]] as const) {
    const got = h.quantile(q);
    t.ok(got >= exact && got <= exact * 1.19, `p${q * 100} ${got} within [${exact}, ${exact * 1.19}]`);
  }
  t.equal(h.quantile(1), 1000, 'the top quantile is the max, not the bucket edge above it');
  h.add(0.2);
  t.equal(h.quantile(1 / 1001), 1, 'below 1: the first bucket');
  // one slow event among many fast ones is the p99.9, not the p99
  const g = new LogHistogram();
  for (let i = 0; i < 999; i++) g.add(10);
  g.add(5000);
  t.ok(g.quantile(0.99) <= 12, `p99 ${g.quantile(0.99)}`);
  t.equal(g.quantile(0.9999), 5000);
  t.same(g.summary().n, 1000);
  g.reset();
  t.same([g.n, g.max, g.quantile(0.5)], [0, 0, 0]);
});

t.test('off unless the environment names a file', async (t) => {
  t.equal(loopTraceFromEnv({}), null);
  t.equal(loopTraceFromEnv({ SOCKMESH_NETIO_TRACE: '' }), null);
});

t.test('a NetIo echoing over loopback: batches, writes inside them and outside, one line per flush', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const trace = io.trace;
  if (trace === null) throw new Error('SOCKMESH_NETIO_TRACE was set: NetIo.trace must exist');
  trace.flush(); // what came before (nothing) is not this test's
  t.equal(trace.writeSample, 8, 'one write in 8 timed by default');
  trace.writeSample = 1; // every write timed: the counts below are exact
  // 'd...' is echoed from a microtask (as the h2 session flushes a session other than the one it reads)
  const l = io.listen('127.0.0.1', 0, (c) => { c.on('data', (d: Buffer) => (d[0] === 100 ? queueMicrotask(() => c.write(d)) : c.write(d))); });
  const s = connect(l.port, '127.0.0.1');
  await new Promise<void>((r) => s.once('connect', () => r()));
  const ROUNDS = 50;
  for (let i = 0; i < ROUNDS; i++) {
    // one message at a time: each echo is one read event and one write, made inside the batch that read it
    const got = new Promise<void>((r) => s.once('data', () => r()));
    s.write(`m${i}`);
    await got;
  }
  const deferred = new Promise<void>((r) => s.once('data', () => r()));
  s.write('d');
  await deferred;
  trace.flush();
  const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
  t.equal(lines.length, 1, 'one line for the flush with batches');
  const x = lines[0]!;
  t.ok(x.batches >= ROUNDS + 2, `batches ${x.batches}: the accept and ${ROUNDS + 1} reads`);
  t.equal(x.writeUs.n, ROUNDS + 1, 'every echo was timed from the start of the batch that read it');
  t.equal(x.writesDeferred, 1, 'the one written from a microtask after the batch');
  t.equal(x.writesOutside, 0);
  t.ok(x.reads.max === 1 && x.events.max >= 1, 'one socket read per wake');
  t.ok(x.writeUs.p50 > 0 && x.writeUs.p50 < 100_000, `write offset p50 ${x.writeUs.p50} µs`);
  t.ok(x.gapUs.n === x.batches - 1, 'a gap between every two batches');
  t.ok(x.batchMs > 0 && x.gapMs > 0, 'time in and between batches');
  t.ok(x.cpuMs >= 0 && x.runqMs >= 0, `the main thread's CPU ${x.cpuMs} ms and run-queue wait ${x.runqMs} ms`);

  // a write from a timer is outside any batch
  const conn = [...io.conns.values()].find((c) => c.remotePort === s.localPort)!;
  const got = new Promise<void>((r) => s.once('data', () => r()));
  setTimeout(() => conn.write('late'), 1);
  await got;
  trace.flush();
  const second = JSON.parse(readFileSync(file, 'utf8').trim().split('\n')[1]!) as Record<string, any>;
  t.equal(second.writesOutside, 1);
  t.equal(second.writesDeferred, 0);
  t.equal(second.writeUs.n, 0);

  // a second with neither batches nor writes writes nothing
  trace.flush();
  t.equal(readFileSync(file, 'utf8').trim().split('\n').length, 2);
  s.destroy();
  t.ok(existsSync(file));

  // a reader (the l7 bench) merges the seconds wholly inside its run (the lines re-dated a second apart: 10 s, 11 s)
  const [l1, l2] = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { t: number; h: { writeUs: { max: number } } });
  const text = [{ ...l1!, t: 10_000 }, { ...l2!, t: 11_000 }].map((l) => JSON.stringify(l)).join('\n') + '\n';
  const both = readLoopTrace(text, 9000, 11_000)!;
  t.equal(both.seconds, 2);
  t.equal(both.writeUs.n, ROUNDS + 1, 'the timed writes of both seconds');
  t.equal(both.writeUs.quantile(1), l1!.h.writeUs.max, 'the max survives the merge');
  t.equal(both.events.n, x.batches, "the second line had no batch (only the timer's write)");
  t.equal(readLoopTrace(text, 9001, 11_000)!.seconds, 1, 'a second that began before the window is not the run\'s');
  t.equal(readLoopTrace(text, 9000, 10_999)!.seconds, 1, 'nor one that ended after it');
  t.equal(readLoopTrace(text, 11_001, 15_000), null);
  t.throws(() => readLoopTrace('{"t": 1,\n', 0, 10), /loop trace line 1/);
  t.equal(readLoopTrace(text + '{"t": 12000, "batc', 9000, 20_000)!.seconds, 2, 'a line still being written is left for later');
  t.throws(() => readLoopTrace(JSON.stringify({ ...l1!, h: { ...l1!.h, events: { b: { 999: 1 }, max: 1 } } }) + '\n', 0, Infinity), /bucket 999=1 out of range/);
});
