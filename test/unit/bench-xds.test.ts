// The xDS bench's pure parts: the synthetic fleet (addresses, sizes, one-object changes), the reading of the
// agent's log lines and /proc status, percentiles, and the PASS/FAIL verdicts.
import t from 'tap';
import { BACKEND_PORT, Fleet, changedPort, loopbackAddress, prng, serviceConfig } from '../../bench/lib/fleet.js';
import {
  formatXdsTable, parseConfigApplied, percentile, vmField, xdsChecks, xdsSummary, type XdsResults,
} from '../../bench/lib/xdsreport.js';

const inLoopback = (a: string) => /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.test(a) && a.split('.').every((x) => Number(x) <= 255);

t.test('fleet: every address in 127/8, all distinct, the sizes asked for', (t) => {
  const f = new Fleet(300, 10);
  t.equal(f.model.services.length, 300);
  t.equal(f.endpoints, 3000);
  const vips = new Set<string>(), backends = new Set<string>();
  for (const s of f.model.services) {
    t.equal(s.algorithm, 'random');
    for (const fe of s.frontends) {
      vips.add(fe.vip);
      for (const b of fe.backends) backends.add(b.address);
    }
  }
  t.equal(vips.size, 300);
  t.equal(backends.size, 3000);
  t.ok([...vips, ...backends].every(inLoopback), 'all in 127.0.0.0/8');
  t.notOk([...vips].some((v) => backends.has(v)), 'no VIP is also a backend');
  // The far end of the default scale stays inside 127/8 too.
  t.ok(inLoopback(serviceConfig(9999, 10).vips[0]!));
  t.ok(inLoopback(serviceConfig(9999, 10).backends[9]!.address));
  t.equal(loopbackAddress(1, 65536), '127.2.0.0');
  t.throws(() => loopbackAddress(200, 56 * 65536), /out of range/);
  t.end();
});

t.test('fleet change: one new Service object, every other one reused', (t) => {
  const f = new Fleet(50, 4);
  const before = f.model;
  const { model, service, config } = f.changeBackendPort(7, 2, changedPort(0));
  t.not(model, before, 'a new model');
  t.not(model.services, before.services, 'a new services array');
  t.not(model.services[7], before.services[7], 'the changed service is a new object');
  t.equal(model.services[7], service);
  t.ok(model.services.every((s, i) => i === 7 || s === before.services[i]), 'the others are the same objects');
  t.same(service.frontends[0]!.backends.map((b) => b.port), [BACKEND_PORT, BACKEND_PORT, changedPort(0), BACKEND_PORT]);
  t.same(before.services[7]!.frontends[0]!.backends.map((b) => b.port), [8080, 8080, 8080, 8080], 'the old object is untouched');
  t.equal(config.backends[2]!.port, changedPort(0));
  t.equal(f.configs[7], config);
  // A later change of the same backend is still a change.
  t.not(changedPort(1), changedPort(0));
  t.not(changedPort(0), BACKEND_PORT);
  t.throws(() => f.changeBackendPort(50, 0, 1), /no backend/);
  t.end();
});

t.test('prng: seeded, repeatable, in [0, 1)', (t) => {
  const a = prng(1), b = prng(1), c = prng(2);
  const xs = Array.from({ length: 1000 }, () => a());
  t.same(Array.from({ length: 1000 }, () => b()), xs);
  t.not(c(), xs[0]);
  t.ok(xs.every((x) => x >= 0 && x < 1));
  t.end();
});

// A line the agent wrote (pino JSON) after an xDS apply; and one from a start.
const APPLIED_XDS = '{"level":30,"time":1795283637550,"pid":28167,"why":"xds","version":7,"services":10000,"changed":1,' +
  '"backendsWritten":1,"backendsDeleted":1,"frontendsWritten":0,"frontendsDeleted":0,"udpSocketsDestroyed":0,"ms":1.25,"msg":"config applied"}';
const APPLIED_START = '{"level":30,"time":1795283637550,"pid":28167,"why":"start","version":1,"services":1,"backendsWritten":3,' +
  '"backendsDeleted":0,"frontendsWritten":1,"frontendsDeleted":0,"udpSocketsDestroyed":0,"ms":12.777057000000013,"msg":"config applied"}';

t.test('parseConfigApplied', (t) => {
  t.same(parseConfigApplied(APPLIED_XDS), {
    why: 'xds', version: 7, services: 10000, changed: 1, backendsWritten: 1, backendsDeleted: 1, frontendsWritten: 0,
    frontendsDeleted: 0, ms: 1.25, time: 1795283637550,
  });
  const start = parseConfigApplied(APPLIED_START)!;
  t.equal(start.why, 'start');
  t.notOk('changed' in start, 'a full apply names no changed count');
  t.equal(parseConfigApplied('{"level":30,"msg":"xds: model applied","services":3}'), undefined);
  t.equal(parseConfigApplied('{"msg":"not config applied"}'), undefined, 'the message must match exactly');
  t.equal(parseConfigApplied('config applied but not JSON'), undefined);
  t.equal(parseConfigApplied(''), undefined);
  t.end();
});

t.test('vmField reads /proc/<pid>/status', (t) => {
  const status = 'Name:\tnode\nVmPeak:\t 1287388 kB\nVmHWM:\t  938620 kB\nVmRSS:\t  393012 kB\nThreads:\t11\n';
  t.equal(vmField(status), 393012 * 1024);
  t.equal(vmField(status, 'VmHWM'), 938620 * 1024);
  t.throws(() => vmField('Name:\tx\n'), /no VmRSS/);
  t.end();
});

t.test('percentile: nearest rank', (t) => {
  const xs = Array.from({ length: 1000 }, (_, i) => 1000 - i); // 1..1000, unsorted
  t.equal(percentile(xs, 50), 500);
  t.equal(percentile(xs, 99), 990);
  t.equal(percentile(xs, 100), 1000);
  t.equal(percentile(xs, 0), 1);
  t.equal(percentile([7], 99), 7);
  t.throws(() => percentile([], 50));
  t.end();
});

function results(over: Partial<XdsResults> = {}, changes: Partial<XdsResults['changes']> = {}): XdsResults {
  return {
    services: 10000, endpoints: 100000, fullSyncSeconds: 1.2, fullSyncBuildMs: 300,
    changes: { planned: 1000, completed: 1000, budgetSeconds: 60, p50Ms: 3, p99Ms: 12, maxMs: 30, meanMs: 4, reconcileP99Ms: 1, serverP99Ms: 2, verified: true, verifiedDetail: 'ok', ...changes },
    rssAfterSyncMiB: 150, rssAfterChangesMiB: 160, peakRssMiB: 190,
    ...over,
  };
}

t.test('checks: pass, miss, incomplete and unverified runs', (t) => {
  const ok = xdsChecks(results());
  t.same(ok.map((c) => c.status), ['PASS', 'PASS', 'PASS', 'PASS']);
  t.equal(xdsSummary(results(), ok, {}).ok, true);

  const slow = xdsChecks(results({ fullSyncSeconds: 2.5, rssAfterSyncMiB: 201 }, { p99Ms: 20.5 }));
  t.same(slow.map((c) => c.status), ['FAIL', 'FAIL', 'FAIL', 'PASS']);
  t.equal(xdsSummary(results(), slow, {}).ok, false);
  t.equal(xdsChecks(results({ fullSyncSeconds: 2 }))[0]!.status, 'PASS', 'the limit itself passes');

  const partial = xdsChecks(results({}, { completed: 82 }))[1]!;
  t.equal(partial.status, 'FAIL', 'fewer changes than planned is not a pass even when fast');
  t.match(partial.detail, /only 82 of 1000 changes in 60 s/);

  const unverified = xdsChecks(results({}, { verified: false, verifiedDetail: 'sm_backends holds []' }))[1]!;
  t.equal(unverified.status, 'FAIL');
  t.match(unverified.detail, /kernel map check failed/);

  const broken = results({ fullSyncSeconds: undefined, rssAfterSyncMiB: undefined, rssAfterChangesMiB: undefined, error: 'agent exited\nits last lines' },
    { completed: 0, p50Ms: undefined, p99Ms: undefined, maxMs: undefined, meanMs: undefined, verified: undefined });
  const bc = xdsChecks(broken);
  t.same(bc.map((c) => c.status), ['SKIP', 'SKIP', 'SKIP', 'SKIP']);
  t.equal(bc[0]!.detail, 'not measured: agent exited', 'the first line of the error only');
  const sum = xdsSummary(broken, bc, { seed: 1 });
  t.equal(sum.ok, false);
  t.equal(sum.error, 'agent exited');
  t.equal(sum.fullSyncSeconds, null);
  t.end();
});

t.test('table and summary', (t) => {
  const r = results();
  const checks = xdsChecks(r);
  const table = formatXdsTable(r, checks);
  t.match(table, /full sync \(server sends -> kernel maps\)\s+1\.20 s/);
  t.match(table, /one change \(1000\/1000\)\s+p50 3\.00\s+p99 12\.0\s+max 30\.0 ms/);
  t.match(table, /PASS one change p99: 12\.0 ms <= 20 ms/);
  const line = JSON.stringify(xdsSummary(r, checks, { kernel: 'x' }));
  t.notOk(line.includes('\n'), 'one line');
  const back = JSON.parse(line) as Record<string, unknown>;
  t.equal(back.bench, 'xds');
  t.equal(back.kernel, 'x');
  t.same((back.changes as Record<string, unknown>).p99Ms, 12);
  t.end();
});
