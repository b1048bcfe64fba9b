// `node dist/bench/nettls.js [--mib 512] [--rounds 5]` (no root; run it under the kernel lock like every bench):
// bulk mTLS throughput of a netio TLS pair (agent/proxy/netio.ts NetConn.startTls: TLS 1.3 in the native epoll loop
// on node's own OpenSSL) against a node:tls pair, with a plain netio TCP pair as the ceiling, on loopback. The receiver
// is a child process (its own event loop and CPU, as another node's agent would be); both sides are mutual TLS 1.3
// with the same ECDSA P-256 certificates and the same suite (AES-128-GCM). One connection per run carries --mib MiB in
// 256 KiB writes (backpressure honoured); the receiver counts and answers the count at our end, which proves every
// byte arrived. Rounds interleaved (plain, netio-tls, node-tls, ...), medians: Gbit/s, and CPU seconds per GiB of
// sender and receiver (/proc/<pid>/stat: what each side's process spent, its whole event loop). A table, the ratios,
// the load average, then one JSON line.
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as tlsServer, type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import type { TlsMaterial } from '../agent/identity/material.js';
import { NetIo, NetTlsContext, type NetConn } from '../agent/proxy/netio.js';
import { makeBenchCerts } from './lib/certs.js';
import { cpuSeconds } from './lib/cpu.js';

const SERVER = 'spiffe://bench.local/sockmesh/node/bench';
const CLIENT = 'spiffe://bench.local/ns/bench/sa/client';
const CHUNK = 256 * 1024;
const SUITE = 'TLS_AES_128_GCM_SHA256';

type Scenario = 'plain' | 'netio-tls' | 'node-tls';
const SCENARIOS: Scenario[] = ['plain', 'netio-tls', 'node-tls'];

interface Ports { plain: number; netioTls: number; nodeTls: number }

/** The receiver (child): counts what arrives and answers the count at the sender's end; the same for all three. */
async function serve(certs: Map<string, TlsMaterial>): Promise<void> {
  const m = certs.get(SERVER)!;
  const io = new NetIo();
  const ctx = new NetTlsContext({ role: 'server', chain: m.chain, key: m.key, bundle: m.bundle });
  const count = (c: NetConn | TLSSocket): void => {
    let n = 0;
    c.on('data', (d: Buffer) => { n += d.length; });
    c.on('end', () => { c.write(String(n)); c.end(); });
    c.on('error', () => {});
  };
  const plain = io.listen('127.0.0.1', 0, count);
  const netioTls = io.listen('127.0.0.1', 0, (c) => { c.startTls(ctx); count(c); });
  const node = tlsServer({
    key: m.key, cert: m.chain, ca: m.bundle, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3',
    ciphers: SUITE, ALPNProtocols: ['h2'], allowHalfOpen: true,
  }, count);
  const nodeTls = await new Promise<number>((r) => node.listen(0, '127.0.0.1', () => r((node.address() as AddressInfo).port)));
  process.send!({ plain: plain.port, netioTls: netioTls.port, nodeTls } satisfies Ports);
}

/** one connection carrying `bytes`; Gbit/s to the receiver's count (checked) */
async function bulk(open: () => NetConn | TLSSocket, ready: string, bytes: number): Promise<number> {
  const chunk = Buffer.alloc(CHUNK, 7);
  const t0 = process.hrtime.bigint();
  const s = open();
  const answer = new Promise<string>((res, rej) => {
    let b = '';
    s.on('data', (d: Buffer) => { b += d.toString(); });
    s.on('end', () => res(b));
    s.on('error', rej);
  });
  await new Promise((r) => s.once(ready, r));
  let sent = 0;
  while (sent < bytes) {
    sent += chunk.length;
    if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
  }
  s.end();
  const got = await answer;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  if (Number(got) !== sent) throw new Error(`bulk: the receiver counted ${got} of ${sent} bytes`);
  s.destroy();
  return (sent * 8) / secs / 1e9;
}

const median = (xs: number[]): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]!; };
const arg = (name: string, d: number): number => { const i = process.argv.indexOf(name); return i > 0 ? Number(process.argv[i + 1]) : d; };

async function main(): Promise<void> {
  if (process.argv[2] === 'serve') return serve(new Map(JSON.parse(process.argv[3]!) as [string, TlsMaterial][]));
  const mib = arg('--mib', 512), rounds = arg('--rounds', 5);
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-bench-nettls-'));
  let certs: Map<string, TlsMaterial>;
  try {
    certs = makeBenchCerts(dir, [{ name: 'node', identity: SERVER }, { name: 'web', identity: CLIENT }]).material;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const child = fork(process.argv[1]!, ['serve', JSON.stringify([...certs])], { stdio: 'inherit' });
  const io = new NetIo();
  try {
    const ports = await new Promise<Ports>((r) => child.once('message', (m) => r(m as Ports)));
    const web = certs.get(CLIENT)!;
    const ctx = new NetTlsContext({ role: 'client', chain: web.chain, key: web.key, bundle: web.bundle });
    const open: Record<Scenario, [() => NetConn | TLSSocket, string]> = {
      plain: [() => io.connect({ address: '127.0.0.1', port: ports.plain }), 'connect'],
      'netio-tls': [() => io.connect({ address: '127.0.0.1', port: ports.netioTls }).startTls(ctx), 'secure'],
      'node-tls': [() => tlsConnect({
        host: '127.0.0.1', port: ports.nodeTls, key: web.key, cert: web.chain, ca: web.bundle, minVersion: 'TLSv1.3',
        ciphers: SUITE, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined,
      }), 'secureConnect'],
    };
    const bytes = mib * 1024 * 1024;
    const runs: Record<Scenario, { gbps: number[]; senderCpuPerGiB: number[]; receiverCpuPerGiB: number[] }> = {
      plain: { gbps: [], senderCpuPerGiB: [], receiverCpuPerGiB: [] },
      'netio-tls': { gbps: [], senderCpuPerGiB: [], receiverCpuPerGiB: [] },
      'node-tls': { gbps: [], senderCpuPerGiB: [], receiverCpuPerGiB: [] },
    };
    for (const s of SCENARIOS) await bulk(open[s][0], open[s][1], 32 * 1024 * 1024); // warm-up (JIT, buffers)
    const load0 = loadavg()[0]!;
    for (let r = 0; r < rounds; r++) {
      for (const s of SCENARIOS) {
        const me0 = cpuSeconds(process.pid)!, peer0 = cpuSeconds(child.pid!)!;
        const gbps = await bulk(open[s][0], open[s][1], bytes);
        const me1 = cpuSeconds(process.pid)!, peer1 = cpuSeconds(child.pid!)!;
        runs[s].gbps.push(gbps);
        runs[s].senderCpuPerGiB.push((me1 - me0) / (mib / 1024));
        runs[s].receiverCpuPerGiB.push((peer1 - peer0) / (mib / 1024));
      }
    }
    const load1 = loadavg()[0]!;
    const med = Object.fromEntries(SCENARIOS.map((s) => [s, {
      gbps: median(runs[s].gbps), senderCpuPerGiB: median(runs[s].senderCpuPerGiB), receiverCpuPerGiB: median(runs[s].receiverCpuPerGiB),
    }])) as Record<Scenario, { gbps: number; senderCpuPerGiB: number; receiverCpuPerGiB: number }>;
    process.stdout.write(`${'pair'.padEnd(10)} ${'Gbit/s'.padStart(7)} ${'sender CPU s/GiB'.padStart(17)} ${'receiver CPU s/GiB'.padStart(19)}   runs Gbit/s\n`);
    for (const s of SCENARIOS) {
      const m = med[s];
      process.stdout.write(`${s.padEnd(10)} ${m.gbps.toFixed(2).padStart(7)} ${m.senderCpuPerGiB.toFixed(3).padStart(17)} ${m.receiverCpuPerGiB.toFixed(3).padStart(19)}   ${runs[s].gbps.map((g) => g.toFixed(2)).join(' ')}\n`);
    }
    const ratios = {
      netioVsNodeThroughput: med['netio-tls'].gbps / med['node-tls'].gbps,
      netioVsNodeSenderCpu: med['netio-tls'].senderCpuPerGiB / med['node-tls'].senderCpuPerGiB,
      netioVsNodeReceiverCpu: med['netio-tls'].receiverCpuPerGiB / med['node-tls'].receiverCpuPerGiB,
      netioTlsVsPlainThroughput: med['netio-tls'].gbps / med.plain.gbps,
    };
    for (const [k, v] of Object.entries(ratios)) process.stdout.write(`${k} ${v.toFixed(2)}x\n`);
    process.stdout.write(`load average (1 min) ${load0.toFixed(2)} before, ${load1.toFixed(2)} after; ${rounds} rounds of ${mib} MiB, interleaved\n`);
    process.stdout.write(JSON.stringify({ bench: 'nettls', mib, rounds, suite: SUITE, load: [load0, load1], medians: med, ratios, runs }) + '\n');
  } finally {
    io.close();
    child.kill('SIGKILL');
  }
}

await main();
