// The proof that the control plane is a real xDS server: @grpc/grpc-js-xds, the gRPC team's own xDS client, resolves
// xds:///greeter through it and calls a real gRPC backend; when the config directory moves the service to another
// backend, the calls move there too.
//
// The xDS client reads its bootstrap when it is registered, so it runs in a child process with GRPC_XDS_BOOTSTRAP
// set from the start; it calls once every 100 ms and prints one JSON line per call.
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

const CHILD = `
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();
const json = { s: (o) => Buffer.from(JSON.stringify(o)), d: (b) => JSON.parse(b.toString()) };
const Greeter = grpc.makeGenericClientConstructor({ SayHello: { path: '/greeter.Greeter/SayHello', requestStream: false,
  responseStream: false, requestSerialize: json.s, requestDeserialize: json.d, responseSerialize: json.s, responseDeserialize: json.d } }, 'Greeter');
const client = new Greeter('xds:///greeter', grpc.credentials.createInsecure());
let n = 0;
const once = () => client.SayHello({ name: 'interop-' + (++n) }, { deadline: Date.now() + 2000 }, (err, res) => {
  process.stdout.write(JSON.stringify(err ? { error: err.code + ' ' + err.details } : res) + '\\n');
  setTimeout(once, 100);
});
once();
setTimeout(() => process.exit(2), 60000); // never outlive the test
`;

const config = (port: number) => `services:
  - name: greeter
    vips: [127.100.0.10]
    ports: [{port: 50051}]
    algorithm: weighted        # ROUND_ROBIN: the lb_policy gRPC's xDS client supports (it refuses RANDOM and MAGLEV)
    backends: [{address: 127.0.0.1, port: ${port}}]
`;

const dir = mkdtempSync(join(tmpdir(), 'sockmesh-interop-test-'));
let cp: RunningControlPlane | undefined;
let child: ChildProcess | undefined;
const closers: Array<() => Promise<void>> = [];
t.teardown(async () => {
  child?.kill('SIGKILL');
  await cp?.close();
  for (const c of closers) await c();
  rmSync(dir, { recursive: true, force: true });
});

t.test('@grpc/grpc-js-xds calls xds:///greeter through the control plane, and follows a backend change', async (t) => {
  const a = await backend('A');
  const b = await backend('B');
  closers.push(a.close, b.close);
  const confDir = join(dir, 'conf');
  mkdirSync(confDir);
  writeFileSync(join(confDir, 'greeter.yaml'), config(a.port));
  cp = await startControlPlane({ dir: confDir, listen: '127.0.0.1:0', debounceMs: 50 });

  const bootstrap = join(dir, 'bootstrap.json');
  writeFileSync(bootstrap, JSON.stringify({
    xds_servers: [{ server_uri: `127.0.0.1:${cp.port}`, channel_creds: [{ type: 'insecure' }], server_features: ['xds_v3'] }],
    node: { id: 'interop-test', locality: {} },
  }));
  child = spawn(process.execPath, ['-e', CHILD], { cwd: ROOT, env: { ...process.env, GRPC_XDS_BOOTSTRAP: bootstrap }, stdio: ['ignore', 'pipe', 'pipe'] });
  const results: Array<{ backend?: string; message?: string; error?: string }> = [];
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
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last results: ${JSON.stringify(results.slice(-3))}; stderr: ${stderr.slice(-2000)}`);
      if (child!.exitCode !== null) throw new Error(`xDS client exited ${child!.exitCode}: ${stderr.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  await waitFor('a call through xds:///greeter to reach backend A', () => results.some((r) => r.backend === 'A'), 20_000);
  const firstOk = results.find((r) => r.backend === 'A')!;
  t.match(firstOk.message, /^hello interop-\d+$/, 'the call reached backend A and returned its answer');
  t.ok(a.calls() >= 1, `backend A served ${a.calls()} call(s)`);
  t.equal(b.calls(), 0, 'backend B not called yet');

  // Move the service to backend B by editing the config directory.
  writeFileSync(join(confDir, 'greeter.yaml'), config(b.port));
  const mark = results.length;
  await waitFor('calls to move to backend B', () => results.slice(mark).some((r) => r.backend === 'B'), 20_000);
  const aBefore = a.calls();
  await waitFor('a few more calls', () => results.length >= results.findIndex((r, i) => i >= mark && r.backend === 'B') + 5, 5_000);
  t.equal(a.calls(), aBefore, 'after the move, backend A gets no new calls');
  t.ok(b.calls() >= 5, `backend B served ${b.calls()} calls`);
  const errors = results.filter((r) => r.error);
  t.comment(`calls: ${results.length}, errors: ${errors.length}${errors.length ? ` (${errors[0]!.error})` : ''}`);
});
