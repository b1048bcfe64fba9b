// One end of the mesh bench's "(t) tunnel only" row, run as its own process in a lab node's network namespace (as
// that node's agent would run): `node dist/bench/lib/tunnelend.js <config.json>`.
//   server: agent/tunnel's TunnelServer on the node address, serving the node's pods (what the destination agent runs)
//   client: TCP listeners on the node address, one per service, in the tunnel's netio loop (tunnelIo(), as the agent's
//           hand-over listeners: agent/tunnelhandover.ts); each accepted connection is carried by agent/tunnel's
//           TunnelClient (one pooled mTLS HTTP/2 connection) to the server pod through the server end: what the source
//           agent does with a connection the kernel hands over, minus the hand-over itself (the client pod dials the
//           node address instead of being redirected there at connect()).
// It prints {"msg":"ready"} once listening, and at each SIGUSR2 one {"msg":"report"} line with the tunnel's totals
// (handshakes, streams, bytes), which the bench reads around the measured runs (a signal: the bench's children have
// no stdin).
import { readFileSync } from 'node:fs';
import pino from 'pino';
import type { TlsMaterial } from '../../agent/identity/material.js';
import { fixedCerts } from './certs.js';
import { TunnelClient } from '../../agent/tunnel/client.js';
import { TunnelMetrics } from '../../agent/tunnel/metrics.js';
import { TunnelServer } from '../../agent/tunnel/server.js';
import { tunnelIo } from '../../agent/tunnel/splice.js';
import type { NetConn } from '../../agent/proxy/netio.js';

export interface TunnelEndServer {
  role: 'server';
  identity: string;
  material: TlsMaterial[];
  address: string;
  port: number;
  /** the pod addresses of this node: the only destinations served */
  local: string[];
}

export interface TunnelEndClient {
  role: 'client';
  /** the source workload's identity (its certificate is presented) */
  source: string;
  material: TlsMaterial[];
  /** where the client pod connects: address and one port per destination */
  address: string;
  routes: Array<{ listen: number; dst: { address: string; port: number } }>;
  node: { name: string; address: string; port: number };
}

export type TunnelEndConfig = TunnelEndServer | TunnelEndClient;

const say = (o: Record<string, unknown>): void => { process.stdout.write(JSON.stringify(o) + '\n'); };

async function main(): Promise<void> {
  const file = process.argv[2];
  if (!file) throw new Error('usage: tunnelend.js <config.json>');
  const cfg = JSON.parse(readFileSync(file, 'utf8')) as TunnelEndConfig;
  const metrics = new TunnelMetrics();
  const log = pino({ level: 'warn' }, pino.destination(2));
  const certs = fixedCerts(cfg.material);
  if (cfg.role === 'server') {
    const locals = new Set(cfg.local);
    const server = new TunnelServer({ certs, identity: cfg.identity, addresses: [cfg.address], port: cfg.port, metrics, log, isLocal: (a) => locals.has(a) });
    await server.start();
  } else {
    const client = new TunnelClient({ certs, metrics, log });
    for (const r of cfg.routes) {
      // as the agent's hand-over accepts (agent/tunnelhandover.ts): paused until the stream is up, half-open
      tunnelIo().listen(cfg.address, r.listen, (sock: NetConn) => {
        sock.pause();
        sock.allowHalfOpen = true;
        sock.on('error', () => { /* a reset from either side ends it */ });
        client.open({ source: cfg.source, dst: r.dst, node: cfg.node }, sock).catch((e: Error) => log.warn({ err: e.message }, 'tunnel open failed'));
      }, (e) => log.warn({ err: e.message }, 'accept failed'));
    }
  }
  process.on('SIGUSR2', () => say({ msg: 'report', out: metrics.totals('out'), in: metrics.totals('in'), refusals: metrics.refusals() }));
  say({ msg: 'ready' });
}

main().catch((e: Error) => {
  process.stderr.write(`tunnelend: ${e.message}\n`);
  process.exit(1);
});
