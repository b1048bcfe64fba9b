// The proof that the control plane is a real xDS server: @grpc/grpc-js-xds, the gRPC team's own xDS client, resolves
// xds:///greeter through it and calls a real gRPC backend; when the config directory moves the service to another
// backend, the calls move there too. And every balancing choice a service can make (algorithm random, weighted,
// maglev; an L7 service's balancer least-request or round-robin) is served as a cluster gRPC's client accepts
// (load_balancing_policy) and balances the way the algorithm says.
//
// The xDS client reads its bootstrap when it is registered, so it runs in a child process with GRPC_XDS_BOOTSTRAP
// set from the start; it calls once every 100 ms and prints one JSON line per call.
import '../lib/childenv.js'; // first: what this starts runs without tap's instrumentation
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { startControlPlane, type RunningControlPlane } from '../../controlplane/server.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

// A tiny service with JSON messages: no .proto needed on either side.
const json = {
  serialize: (o: unknown) => Buffer.from(JSON.stringify(o)),
  deserialize: (b: Buffer) => JSON.parse(b.toString()) as unknown,
};
const GREETER: grpc.ServiceDefinition = {
  SayHello: {
    path: '/greeter.Greeter/SayHello', requestStream: false, responseStream: false,
    requestSerialize: json.serialize, requestDeserialize: json.deserialize,
    responseSerialize: json.serialize, responseDeserialize: json.deserialize,
  },
};

async function backend(name: string): Promise<{ port: number; calls: () => number; close: () => Promise<void> }> {
  const server = new grpc.Server();
  let calls = 0;
  server.addService(GREETER, {
    SayHello: (call: grpc.ServerUnaryCall<{ name: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      calls++;
      cb(null, { message: `hello ${call.request.name}`, backend: name });
    },
  });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  return { port, calls: () => calls, close: () => new Promise((r) => server.tryShutdown(() => r())) };
}

// The client: per target (argv: name=channels=calls,...) that many channels, each making that many sequential calls;
// one JSON line per call. Exits when every channel is done.
const CHILD = `
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();
const json = { s: (o) => Buffer.from(JSON.stringify(o)), d: (b) => JSON.parse(b.toString()) };
const Greeter = grpc.makeGenericClientConstructor({ SayHello: { path: '/greeter.Greeter/SayHello', requestStream: false,
  responseStream: false, requestSerialize: json.s, requestDeserialize: json.d, responseSerialize: json.s, responseDeserialize: json.d } }, 'Greeter');
let running = 0;
for (const spec of process.argv[1].split(',')) {
  const [target, channels, calls] = spec.split('=');
  for (let c = 0; c < Number(channels); c++) {
    running++;
    const client = new Greeter('xds:///' + target, grpc.credentials.createInsecure());
    let n = 0;
    const once = () => client.SayHello({ name: 'interop-' + (++n) }, { deadline: Date.now() + 2000 }, (err, res) => {
      process.stdout.write(JSON.stringify({ target, channel: c, ...(err ? { error: err.code + ' ' + err.details } : res) }) + '\\n');
      if (!err && n >= Number(calls)) {
        client.close();
        if (--running === 0) process.exit(0);
      } else setTimeout(once, err ? 100 : 10);
    });
    once();
  }
}
setTimeout(() => process.exit(2), 60000); // never outlive the test
`;

const config = (port: number) => `services:
  - name: greeter
    vips: [127.100.0.10]
    ports: [{port: 50051}]
    algorithm: weighted
    backends: [{address: 127.0.0.1, port: ${port}}]
`;

const dir = mkdtempSync(join(tmpdir(), 'sockmesh-interop-test-'));
const children: ChildProcess[] = [];
const closers: Array<() => Promise<void>> = [];
t.teardown(async () => {
  for (const c of children) c.kill('SIGKILL');
  for (const c of closers) await c();
  rmSync(dir, { recursive: true, force: true });
});

interface CallResult { target: string; channel: number; backend?: string; message?: string; error?: string }

/** A control plane serving `yaml` from its own directory, and a bootstrap file pointing gRPC's xDS client at it. */
async function controlPlane(name: string, yaml: string): Promise<{ confDir: string; bootstrap: string }> {
  const confDir = join(dir, name);
  mkdirSync(confDir);
  writeFileSync(join(confDir, 'services.yaml'), yaml);
  const cp: RunningControlPlane = await startControlPlane({ dir: confDir, listen: '127.0.0.1:0', debounceMs: 50 });
  closers.push(() => cp.close());
  const bootstrap = join(dir, `${name}-bootstrap.json`);
  writeFileSync(bootstrap, JSON.stringify({
    xds_servers: [{ server_uri: `127.0.0.1:${cp.port}`, channel_creds: [{ type: 'insecure' }], server_features: ['xds_v3'] }],
    node: { id: `interop-test-${name}`, locality: {} },
  }));
  return { confDir, bootstrap };
}

/** The xDS client in its own process (spec: see CHILD), its results as they come. */
function xdsClient(bootstrap: string, spec: string) {
  const child = spawn(process.execPath, ['-e', CHILD, spec], { cwd: ROOT, env: { ...process.env, GRPC_XDS_BOOTSTRAP: bootstrap }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const results: CallResult[] = [];
  let stderr = '';
  let partial = '';
  child.stdout!.on('data', (d: Buffer) => {
    const parts = (partial + d.toString()).split('\n');
    partial = parts.pop() ?? '';
    for (const p of parts) if (p.trim()) results.push(JSON.parse(p));
  });
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const waitFor = async (what: string, cond: () => boolean, ms: number) => {
    const end = Date.now() + ms;
    while (!cond()) {
      const errors = [...new Set(results.filter((r) => r.error).map((r) => `${r.target}: ${r.error}`))];
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}; errors: ${errors.slice(0, 8).join(' | ')}; last results: ${JSON.stringify(results.slice(-3))}; stderr: ${stderr.slice(-2000)}`);
      if (child.exitCode !== null && !cond()) throw new Error(`xDS client exited ${child.exitCode} before ${what}; errors: ${errors.slice(0, 8).join(' | ')}; stderr: ${stderr.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  return { child, results, waitFor };
}

t.test('@grpc/grpc-js-xds calls xds:///greeter through the control plane, and follows a backend change', async (t) => {
  const a = await backend('A');
  const b = await backend('B');
  closers.push(a.close, b.close);
  const { confDir, bootstrap } = await controlPlane('move', config(a.port));
  const { child, results, waitFor } = xdsClient(bootstrap, 'greeter=1=1000000');

  await waitFor('a call through xds:///greeter to reach backend A', () => results.some((r) => r.backend === 'A'), 20_000);
  const firstOk = results.find((r) => r.backend === 'A')!;
  t.match(firstOk.message, /^hello interop-\d+$/, 'the call reached backend A and returned its answer');
  t.ok(a.calls() >= 1, `backend A served ${a.calls()} call(s)`);
  t.equal(b.calls(), 0, 'backend B not called yet');

  // Move the service to backend B by editing the config directory.
  writeFileSync(join(confDir, 'services.yaml'), config(b.port));
  const mark = results.length;
  await waitFor('calls to move to backend B', () => results.slice(mark).some((r) => r.backend === 'B'), 20_000);
  const aBefore = a.calls();
  await waitFor('a few more calls', () => results.length >= results.findIndex((r, i) => i >= mark && r.backend === 'B') + 5, 5_000);
  t.equal(a.calls(), aBefore, 'after the move, backend A gets no new calls');
  t.ok(b.calls() >= 5, `backend B served ${b.calls()} calls`);
  const errors = results.filter((r) => r.error);
  t.comment(`calls: ${results.length}, errors: ${errors.length}${errors.length ? ` (${errors[0]!.error})` : ''}`);
  child.kill('SIGKILL');
});

t.test('every algorithm and balancer: gRPC\'s xDS client accepts the cluster and balances as the service says', async (t) => {
  const bs = await Promise.all(['A', 'B', 'C'].map(backend));
  for (const b of bs) closers.push(b.close);
  const [A, B, C] = bs.map((b) => b.port);
  const three = `[{address: 127.0.0.1, port: ${A}}, {address: 127.0.0.1, port: ${B}}, {address: 127.0.0.1, port: ${C}}]`;
  const yaml = `services:
  - {name: g-random, vips: [127.100.0.11], ports: [{port: 50051}], algorithm: random, backends: ${three}}
  - name: g-weighted
    vips: [127.100.0.12]
    ports: [{port: 50051}]
    algorithm: weighted
    backends: [{address: 127.0.0.1, port: ${A}, weight: 1}, {address: 127.0.0.1, port: ${B}, weight: 4}]
  - {name: g-maglev, vips: [127.100.0.13], ports: [{port: 50051}], algorithm: maglev, backends: ${three}}
  - {name: g-least-request, vips: [127.100.0.14], ports: [{port: 50051}], backends: ${three}, http: {balancer: least-request}}
  - {name: g-round-robin, vips: [127.100.0.15], ports: [{port: 50051}], algorithm: maglev, backends: ${three}, http: {balancer: round-robin}}
`;
  const { bootstrap } = await controlPlane('algorithms', yaml);
  // channels x calls per target: maglev on 12 channels (one backend per channel), the others on one.
  const plan: Record<string, [channels: number, calls: number]> = {
    'g-random': [1, 60], 'g-weighted': [1, 250], 'g-maglev': [12, 6], 'g-least-request': [1, 60], 'g-round-robin': [1, 60],
  };
  const { results, waitFor } = xdsClient(bootstrap, Object.entries(plan).map(([n, [c, k]]) => `${n}=${c}=${k}`).join(','));
  const okOf = (target: string) => results.filter((r) => r.target === target && r.backend);
  await waitFor('every target to make its calls', () => Object.entries(plan).every(([n, [c, k]]) => okOf(n).length >= c * k), 30_000);

  const share = (target: string) => {
    const ok = okOf(target);
    const by: Record<string, number> = {};
    for (const r of ok) by[r.backend!] = (by[r.backend!] ?? 0) + 1;
    return { by, n: ok.length, errors: results.filter((r) => r.target === target && r.error).length };
  };
  // random (gRPC: round_robin): every backend, evenly; weights do not matter (none set).
  const random = share('g-random');
  t.same(Object.keys(random.by).sort(), ['A', 'B', 'C'], `random: every backend called ${JSON.stringify(random)}`);
  t.ok(Object.values(random.by).every((k) => k >= random.n / 5), 'random: spread over the backends');
  // weighted (gRPC: ring_hash, a random hash per call): the backend of weight 4 gets about 4/5 of the calls.
  const weighted = share('g-weighted');
  const heavy = (weighted.by['B'] ?? 0) / weighted.n;
  t.ok((weighted.by['A'] ?? 0) > 0 && heavy > 0.65 && heavy < 0.93, `weighted: weight 1:4 -> ${(heavy * 100).toFixed(0)}% to the heavy backend ${JSON.stringify(weighted)}`);
  // maglev (gRPC: ring_hash hashing the channel): each channel sticks to one backend, the channels spread.
  const perChannel = new Map<number, Set<string>>();
  for (const r of okOf('g-maglev')) (perChannel.get(r.channel) ?? perChannel.set(r.channel, new Set()).get(r.channel)!).add(r.backend!);
  t.equal(perChannel.size, 12, 'maglev: 12 channels called');
  t.ok([...perChannel.values()].every((s) => s.size === 1), `maglev: each channel on one backend ${JSON.stringify([...perChannel].map(([c, s]) => [c, [...s]]))}`);
  t.ok(new Set([...perChannel.values()].map((s) => [...s][0])).size >= 2, 'maglev: the channels hash onto more than one backend');
  // L7 services: the balancer (least-request: gRPC clients without it fall back to round_robin).
  for (const target of ['g-least-request', 'g-round-robin']) {
    const s = share(target);
    t.same(Object.keys(s.by).sort(), ['A', 'B', 'C'], `${target}: every backend called ${JSON.stringify(s)}`);
    t.ok(Object.values(s.by).every((k) => k >= s.n / 5), `${target}: spread over the backends`);
  }
  const errors = results.filter((r) => r.error);
  t.comment(`calls: ${results.length}, errors: ${errors.length}${errors.length ? ` (${errors[0]!.target}: ${errors[0]!.error})` : ''}`);
});
