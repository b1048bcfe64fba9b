// A node's HBONE end for kernel tests (kernel/strict): the compiled TunnelServer (dist/agent/tunnel/), the code the
// agent serves 15008 with, in a lab node's network namespace and agent cgroup, listening on the node's address:15008
// with certificates from files, serving the node's pods, denying the identities it is told to. Its log lines (pino JSON) are collected; it is killed at teardown.
import './childenv.js'; // first: what this starts runs without tap's instrumentation
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TlsMaterial } from '../../agent/identity/material.js';
import type { ClusterNode } from '../../lab/cluster.js';
import { inCgroupNsenter } from '../../lab/cgroup.js';
import { DIES_WITH_TEST, ROOT } from './kernel.js';

interface Teardown { teardown(fn: () => void | Promise<void>): void }

const SERVE = `
import { readFileSync } from 'node:fs';
import { EventEmitter } from 'node:events';
import pino from 'pino';
const [root, dir, identity, addrs, local, deny] = process.argv.slice(1);
const { TunnelServer } = await import(root + '/dist/agent/tunnel/server.js');
const { TunnelMetrics } = await import(root + '/dist/agent/tunnel/metrics.js');
const f = (n) => readFileSync(dir + '/' + n, 'utf8');
const m = { identity, key: f('key.pem'), chain: f('cert-chain.pem'), bundle: f('root-cert.pem') };
const certs = Object.assign(new EventEmitter(), { get: (id) => (id === identity ? m : undefined), bundle: () => m.bundle });
const locals = new Set(local.split(','));
const denied = new Set(deny.split(',').filter(Boolean));
const metrics = new TunnelMetrics();
const server = new TunnelServer({ certs, identity, addresses: addrs.split(','), isLocal: (a) => locals.has(a), metrics,
  authorize: (q) => (denied.has(q.source) ? { allow: false, policy: 'test-deny' } : { allow: true }),
  log: pino({ base: null }, pino.destination({ dest: 1, sync: true })), handshakeTimeoutMs: 2000, maxPendingHandshakes: 16 });
await server.start();
process.stdin.on('data', () => process.stdout.write(JSON.stringify({ msg: 'report', report: metrics.report() }) + '\\n'));
`;

export interface TunnelNode {
  proc: ChildProcess;
  logs: Record<string, unknown>[];
  /** the server's TunnelReport (asked over its stdin) */
  report(): Promise<{ peers: { identity: string; streamsTotal: number; handshakes: number }[]; refusals: { in: Record<string, number> } }>;
}

export async function startTunnelNode(t: Teardown, node: ClusterNode, opts: { material: TlsMaterial; local: string[]; deny?: string[] }): Promise<TunnelNode> {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-tunnel-'));
  writeFileSync(join(dir, 'key.pem'), opts.material.key, { mode: 0o600 });
  writeFileSync(join(dir, 'cert-chain.pem'), opts.material.chain);
  writeFileSync(join(dir, 'root-cert.pem'), opts.material.bundle);
  const argv = [process.execPath, '--input-type=module', '-e', SERVE, ROOT, dir, opts.material.identity,
    `${node.nodeV4},${node.nodeV6}`, opts.local.join(','), (opts.deny ?? []).join(',')];
  const [cmd, args] = inCgroupNsenter(node.agentCgroup, node.netns, undefined, [...DIES_WITH_TEST, ...argv]);
  // run from the repository, so that 'pino' resolves from its node_modules
  const proc = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], cwd: ROOT });
  const h: TunnelNode = {
    proc, logs: [],
    report: () => new Promise((resolve) => {
      const n = h.logs.length;
      const iv = setInterval(() => {
        const r = h.logs.slice(n).find((l) => l.msg === 'report');
        if (r) { clearInterval(iv); resolve(r.report as Awaited<ReturnType<TunnelNode['report']>>); }
      }, 20);
      proc.stdin!.write('\n');
    }),
  };
  let buf = '', err = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    const lines = buf.split('\n');
    buf = lines.pop()!;
    for (const l of lines) { try { h.logs.push(JSON.parse(l) as Record<string, unknown>); } catch { h.logs.push({ msg: l }); } }
  });
  proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  t.teardown(() => { proc.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }); });
  await new Promise<void>((resolve, reject) => {
    const iv = setInterval(() => { if (h.logs.some((l) => String(l.msg).includes('HBONE server listening'))) { clearInterval(iv); resolve(); } }, 20);
    proc.once('exit', (code) => { clearInterval(iv); reject(new Error(`tunnel node ${node.name} exited ${code}: ${err.trim()}`)); });
  });
  return h;
}
