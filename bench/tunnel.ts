// `node dist/bench/tunnel.js [--mib 256] [--conns 2000] [--rounds 3]` (root not needed; run it under the kernel lock
// like every bench): the HBONE tunnel (agent/tunnel/) side by side with a direct connection, on loopback, the
// receiving end in a child process (its own event loop and CPU, as another node's agent would be):
//   direct  client -> pod                                     (plain TCP)
//   tls     client -> TLS relay (mTLS, no HTTP/2) -> pod      (the ceiling of ANY HTTP/2 engine on Node's TLS)
//   tunnel  pooled client -> HBONE server (CONNECT on the proxy's HTTP/2 session, over mTLS) -> pod
// Throughput: one connection carrying --mib MiB (Gbit/s, and the receiving process's CPU-seconds per GiB); connection rate: --conns connections of 64 B each way, 16 at a
// time (connections/s; the tunnel's are streams on its one pooled connection: handshakes during the run are counted,
// the target is 0). Rounds interleaved, medians; a table, then the ratios, then one JSON line.
// The tls row is a bare TLS relay (Node's TLS socket piped to the pod, no HTTP/2): tunnel/tls is what HTTP/2 framing,
// pooling and the splice cost on top of TLS in Node.
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as netConnect, createServer, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect, createServer as tlsServer } from 'node:tls';
import type { Duplex } from 'node:stream';
import pino from 'pino';
import type { TlsMaterial } from '../agent/identity/material.js';
import { TunnelClient } from '../agent/tunnel/client.js';
import { TunnelMetrics } from '../agent/tunnel/metrics.js';
import { TunnelServer } from '../agent/tunnel/server.js';
import { fixedCerts, makeBenchCerts } from './lib/certs.js';
import { nodeSpiffeId } from '../agent/model/spiffe.js';

const TD = 'bench.local';
// the server presents the node identity of the node the client dials (req.node.name 'bench' below)
const NODE = nodeSpiffeId(TD, 'bench');
const WEB = `spiffe://${TD}/ns/bench/sa/client`;

/** A root and two leaves with SPIFFE URI SANs (bench/lib/certs.ts: the openssl CLI, ECDSA P-256 as the CA issues them). */
function makeCerts(): Map<string, TlsMaterial> {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-bench-tunnel-'));
  try {
    return makeBenchCerts(dir, [{ name: 'node', identity: NODE }, { name: 'web', identity: WEB }]).material;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const listen = (s: { listen(port: number, host: string, cb: () => void): unknown; address(): unknown }): Promise<number> =>
  new Promise((r) => { s.listen(0, '127.0.0.1', () => r((s.address() as AddressInfo).port)); });

/** The receiving side (child process): the pod, the TLS relay and the HBONE server; prints their ports. */
async function serve(certs: Map<string, TlsMaterial>): Promise<void> {
  // the pod: echoes 64 B messages; for bulk, counts and answers the count at the client's FIN
  const pod = createServer({ allowHalfOpen: true }, (c) => {
    let n = 0;
    c.on('data', (d: Buffer) => { n += d.length; if (d.length <= 64 && n <= 64) c.write(d); });
    c.on('end', () => (n > 64 ? c.end(String(n)) : c.end()));
    c.on('error', () => {});
  });
  const podPort = await listen(pod);
  const node = certs.get(NODE)!;
  const relay = tlsServer({ key: node.key, cert: node.chain, ca: node.bundle, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3', allowHalfOpen: true }, (s) => {
    const up = netConnect({ port: podPort, host: '127.0.0.1', allowHalfOpen: true });
    s.pipe(up); up.pipe(s);
    s.on('error', () => up.destroy()); up.on('error', () => s.destroy());
  });
  const relayPort = await listen(relay);
  const server = new TunnelServer({
    certs: fixedCerts(certs.values()), identity: NODE, addresses: ['127.0.0.1'], port: 0, metrics: new TunnelMetrics(), log: pino({ level: 'silent' }),
    isLocal: (a) => a === '127.0.0.1', maxPendingHandshakes: 1024,
  });
  const [hbone] = await server.start();
  // the receiving process's CPU time (user + system, µs) when asked: the parent takes it around each bulk run
  process.on('message', (m) => { if (m === 'cpu') { const u = process.cpuUsage(); process.send!({ cpuUs: u.user + u.system }); } });
  process.send!({ podPort, relayPort, hbonePort: Number(hbone!.split(':').pop()) });
}

type Opener = () => Promise<Duplex>;

/** One connection carrying `bytes`; resolves with Gbit/s (to the pod's count answer, which proves all arrived). */
async function bulk(open: Opener, bytes: number): Promise<number> {
  const chunk = Buffer.alloc(256 * 1024, 7);
  const t0 = process.hrtime.bigint();
  const s = await open();
  const answer = new Promise<string>((res, rej) => { let b = ''; s.on('data', (d: Buffer) => { b += d.toString(); }); s.on('end', () => res(b)); s.on('error', rej); });
  let sent = 0;
  while (sent < bytes) {
    sent += chunk.length;
    if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
  }
  s.end();
  const got = await answer;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  if (Number(got) !== sent) throw new Error(`bulk: the pod counted ${got} of ${sent} bytes`);
  s.destroy();
  return (sent * 8) / secs / 1e9;
}

/** `n` connections, 64 B each way, `conc` at a time; resolves with connections/s. */
async function rate(open: Opener, n: number, conc = 16): Promise<number> {
  const msg = Buffer.alloc(64, 1);
  let next = 0;
  const t0 = process.hrtime.bigint();
  const worker = async (): Promise<void> => {
    while (next < n) {
      next++;
      const s = await open();
      await new Promise<void>((res, rej) => {
        let got = 0;
        s.on('data', (d: Buffer) => { got += d.length; if (got >= 64) s.end(); });
        s.on('end', () => res());
        s.on('error', rej);
        s.write(msg);
      });
      s.destroy();
    }
  };
  await Promise.all(Array.from({ length: conc }, worker));
  return n / (Number(process.hrtime.bigint() - t0) / 1e9);
}

const median = (xs: number[]): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]!; };
const arg = (name: string, d: number): number => { const i = process.argv.indexOf(name); return i > 0 ? Number(process.argv[i + 1]) : d; };

async function main(): Promise<void> {
  if (process.argv[2] === 'serve') return serve(new Map(JSON.parse(process.argv[3]!) as [string, TlsMaterial][]));
  const mib = arg('--mib', 256), conns = arg('--conns', 2000), rounds = arg('--rounds', 3);
  const certs = makeCerts();
  const child = fork(process.argv[1]!, ['serve', JSON.stringify([...certs])], { stdio: 'inherit' });
  try {
    const ports = await new Promise<{ podPort: number; relayPort: number; hbonePort: number }>((r) => child.once('message', (m) => r(m as never)));
    const web = certs.get(WEB)!;
    const metrics = new TunnelMetrics();
    const client = new TunnelClient({ certs: fixedCerts(certs.values()), metrics, log: pino({ level: 'silent' }) });
    const req = { source: WEB, dst: { address: '127.0.0.1', port: ports.podPort }, node: { name: 'bench', address: '127.0.0.1', port: ports.hbonePort } };
    const openers: Record<string, Opener> = {
      direct: () => new Promise((r) => { const s: Socket = netConnect({ port: ports.podPort, host: '127.0.0.1', allowHalfOpen: true, noDelay: true }, () => r(s)); }),
      tls: () => new Promise((r) => {
        const s = tlsConnect({ port: ports.relayPort, host: '127.0.0.1', key: web.key, cert: web.chain, ca: web.bundle, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined }, () => r(s));
      }),
      tunnel: () => client.connect(req),
    };
    await rate(openers.tunnel!, 50); // warm: the pooled connection is up before anything is measured
    const childCpu = (): Promise<number> => new Promise((r) => {
      child.once('message', (m) => r((m as { cpuUs: number }).cpuUs));
      child.send('cpu');
    });
    const res: Record<string, { gbps: number[]; cps: number[]; rxCpuPerGiB: number[] }> = {
      direct: { gbps: [], cps: [], rxCpuPerGiB: [] }, tls: { gbps: [], cps: [], rxCpuPerGiB: [] }, tunnel: { gbps: [], cps: [], rxCpuPerGiB: [] },
    };
    const hs0 = metrics.totals('out').handshakes;
    for (let r = 0; r < rounds; r++) {
      for (const name of Object.keys(openers)) {
        const c0 = await childCpu();
        res[name]!.gbps.push(await bulk(openers[name]!, mib * 1024 * 1024));
        // the receiving end's CPU-seconds per GiB carried (its pod's reads included): less noisy than Gbit/s on a
        // loaded machine
        res[name]!.rxCpuPerGiB.push((await childCpu() - c0) / 1e6 / (mib / 1024));
        res[name]!.cps.push(await rate(openers[name]!, conns));
      }
    }
    const steadyHandshakes = metrics.totals('out').handshakes - hs0;
    const m = Object.fromEntries(Object.entries(res).map(([k, v]) => [k, { gbps: median(v.gbps), cps: median(v.cps), rxCpuPerGiB: median(v.rxCpuPerGiB) }])) as Record<string, { gbps: number; cps: number; rxCpuPerGiB: number }>;
    process.stdout.write(`${'case'.padEnd(8)} ${'Gbit/s'.padStart(8)} ${'conn/s'.padStart(9)} ${'rx CPU-s/GiB'.padStart(13)}\n`);
    for (const [k, v] of Object.entries(m)) process.stdout.write(`${k.padEnd(8)} ${v.gbps.toFixed(2).padStart(8)} ${v.cps.toFixed(0).padStart(9)} ${v.rxCpuPerGiB.toFixed(3).padStart(13)}\n`);
    const ratios = {
      tunnelVsDirectThroughput: m.tunnel!.gbps / m.direct!.gbps, tunnelVsDirectRate: m.tunnel!.cps / m.direct!.cps,
      tunnelVsTlsThroughput: m.tunnel!.gbps / m.tls!.gbps, tunnelVsTlsRate: m.tunnel!.cps / m.tls!.cps,
    };
    for (const [k, v] of Object.entries(ratios)) process.stdout.write(`${k} ${v.toFixed(2)}x\n`);
    process.stdout.write(`handshakes during the measured runs: tunnel ${steadyHandshakes} (pooled), tls ${rounds * (conns + 1)} (one per connection)\n`);
    process.stdout.write(JSON.stringify({ bench: 'tunnel', mib, conns, rounds, medians: m, ratios, steadyHandshakes, runs: res }) + '\n');
    client.close();
  } finally {
    child.kill('SIGKILL');
  }
}

await main();
