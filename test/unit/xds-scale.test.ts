// The xDS client at fleet scale, against sockmesh's own control plane over loopback gRPC in delta mode: a full state of
// 10,000 services / 100,000 endpoints, then single-endpoint changes, each of which must reach apply() alone (changed =
// that one service) and quickly. The bound asserted here is deliberately loose (a loaded 2-vCPU VM must not flake);
// the 20 ms p99 target of issue 3 is measured by `npm run bench -- xds`.
import t from 'tap';
import pino from 'pino';
import { Writable } from 'node:stream';
import { XdsSource } from '../../agent/sources/xds/source.js';
import { startControlPlaneFromModel } from '../../controlplane/server.js';
import { modelFromObject } from '../../agent/model/config.js';
import type { Model, Service } from '../../agent/model/types.js';

const SERVICES = 10_000;
const PER_SERVICE = 10;
const CHANGES = Number(process.env.XDS_SCALE_CHANGES ?? 200);

/** 10,000 services with 10 backends each, VIPs and backends in 127/8, through the file source's validation. */
function bigModel(): Model {
  const services = [];
  for (let i = 0; i < SERVICES; i++) {
    services.push({
      name: `svc-${i}`,
      vips: [`127.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`],
      ports: [{ port: 80 }],
      algorithm: 'weighted',
      backends: Array.from({ length: PER_SERVICE }, (_, k) => ({ address: `127.1.${i & 255}.${k + 1}`, port: 8000 + (i >> 8), weight: 1 })),
    });
  }
  return modelFromObject({ services }, 'scale');
}

const wait = async (cond: () => boolean, ms: number) => {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
};

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;

t.test('delta: 10,000 services / 100,000 endpoints, then single-endpoint changes', async (t) => {
  let model = bigModel();
  const cp = await startControlPlaneFromModel(model, { listen: '127.0.0.1:0' });
  const applied: { model: Model; changed?: ReadonlySet<string>; at: number }[] = [];
  // The source logs how long it spent translating and validating each response; collect those figures.
  const logged: Record<string, any>[] = [];
  const sink = new Writable({ write(chunk, _enc, done) { logged.push(JSON.parse(chunk.toString())); done(); } });
  const src = new XdsSource({
    address: `127.0.0.1:${cp.port}`, mode: 'delta', log: pino({ level: 'info' }, sink),
    node: { id: 'scale', cluster: 'c', metadata: {} },
    apply: (m, changed) => { applied.push({ model: m, changed, at: performance.now() }); return null; },
  });
  t.teardown(async () => { await src.stop(); await cp.close(); });

  const t0 = performance.now();
  src.start();
  await wait(() => applied.length === 1, 60_000);
  const syncMs = applied[0]!.at - t0;
  const full = logged.filter((l) => l.msg === 'xds: model applied')[0];
  t.comment(`full sync: ${syncMs.toFixed(0)} ms from start to apply (client translate + validate of the last response: ${full?.ms} ms)`);
  t.equal(applied[0]!.model.services.length, SERVICES);
  t.equal(applied[0]!.changed, undefined, 'the first apply covers everything');
  t.equal(src.status().lastNack, null);

  const latencies: number[] = [];
  const clientMs: number[] = [];
  let wrongChanged = 0;
  for (let n = 0; n < CHANGES; n++) {
    const i = (n * 7919) % SERVICES;
    const svc = model.services[i]!;
    const fe = svc.frontends[0]!;
    // A new object for the changed service only: the control plane re-encodes by object identity.
    const next: Service = { ...svc, frontends: [{ ...fe, backends: fe.backends.map((b, k) => (k === 0 ? { ...b, weight: b.weight === 1 ? 2 : 1 } : b)) }] };
    const services = model.services.slice();
    services[i] = next;
    model = { services };
    const before = applied.length;
    const logsBefore = logged.length;
    const start = performance.now();
    cp.setModel(model);
    await wait(() => applied.length > before, 10_000);
    const got = applied[applied.length - 1]!;
    latencies.push(got.at - start);
    const line = logged.slice(logsBefore).find((l) => l.msg === 'xds: model applied');
    if (line?.ms !== undefined) clientMs.push(line.ms);
    if (got.changed?.size !== 1 || !got.changed.has(svc.name)) wrongChanged++;
    if (n === 0) t.same(got.model.services[i], next, 'the change arrives as served');
  }
  t.equal(wrongChanged, 0, 'every apply named exactly the one changed service');
  t.equal(applied.length, CHANGES + 1, 'one apply per change');
  const last = applied[applied.length - 1]!.model;
  t.equal(last.services.length, SERVICES);
  const served = new Map(model.services.map((s) => [s.name, s]));
  t.equal(last.services.filter((s) => JSON.stringify(s) === JSON.stringify(served.get(s.name))).length, SERVICES, 'the last model is the one served');
  // Services untouched by the changes are the very objects of the first apply (nothing rebuilt but the change).
  const firstByName = new Map(applied[0]!.model.services.map((s) => [s.name, s]));
  const touched = new Set([...applied.slice(1)].flatMap((a) => [...(a.changed ?? [])]));
  t.ok(last.services.every((s) => touched.has(s.name) || firstByName.get(s.name) === s), 'unchanged services keep their identity');

  latencies.sort((a, b) => a - b);
  clientMs.sort((a, b) => a - b);
  t.comment(`setModel -> apply over ${CHANGES} single-endpoint changes: p50 ${pct(latencies, 50).toFixed(1)} ms, p99 ${pct(latencies, 99).toFixed(1)} ms, max ${latencies.at(-1)!.toFixed(1)} ms`);
  if (clientMs.length) t.comment(`in the client (translate + validate): p50 ${pct(clientMs, 50).toFixed(2)} ms, p99 ${pct(clientMs, 99).toFixed(2)} ms`);
  // Loose: the bench checks 20 ms on a quiet machine. What this guards is that a change costs its service, not the
  // model: 100 ms, or a tenth of this run's full sync (a change that rebuilt everything would cost about a full sync),
  // since the machine's load stretches both (a fresh-clone run beside a soak, load 8: p99 122.8 ms).
  const bound = Math.max(100, syncMs / 10);
  t.ok(pct(latencies, 99) < bound, `p99 ${pct(latencies, 99).toFixed(1)} ms < ${bound.toFixed(0)} ms (100 ms, or a tenth of the ${syncMs.toFixed(0)} ms full sync)`);
});
