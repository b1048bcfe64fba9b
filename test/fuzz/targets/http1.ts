// The HTTP/1.1 engine (agent/proxy/http1.ts, and h1pool.ts's upstream side) fed bytes by both of its peers, in
// process: the input is a script of messages, each a 2-byte word (top bit: to the upstream, else to the client; the
// rest: the length) and its bytes, delivered to the client's connection or to the upstream connection the engine
// opened last (told 'connect' first), an event-loop turn apart; an empty message closes that side. Byte 0 picks the
// route: retries, a small replay buffer, a route timeout (never reached: a script runs in a few turns).
// Crashes: anything thrown out of the engine, its own safety nets (fatal(): "proxy connection failed", the upstream's
// "proxy upstream handler failed") and the policy's contract once both sides are closed: every attempt finished
// exactly once, every exchange ended exactly once (test/lib/proxy.ts TestPolicy).
import { EventEmitter } from 'node:events';
import { pino } from 'pino';
import { H1Conn } from '../../../agent/proxy/http1.js';
import { H1Pool } from '../../../agent/proxy/h1pool.js';
import { H2Pool } from '../../../agent/proxy/h2pool.js';
import type { Conn } from '../../../agent/proxy/conn.js';
import type { EngineContext } from '../../../agent/proxy/engine.js';
import { TEST_DST, TestGroup, TestPolicy, upstream } from '../../lib/proxy.js';
import { HTTP_DICT, InvariantBroken, invariant } from './common.js';

export const dict = HTTP_DICT;

class FakeConn extends EventEmitter {
  remoteAddress = '127.0.0.1';
  remotePort = 40000;
  destroyed = false;
  connected = false;
  written = 0;
  write(d: Buffer | Uint8Array | string): boolean {
    this.written += typeof d === 'string' ? Buffer.byteLength(d, 'latin1') : d.length;
    return true;
  }
  cork(): void {}
  uncork(): void {}
  pause(): this { return this; }
  resume(): this { return this; }
  end(): this { return this.destroy(); }
  destroy(): this { if (!this.destroyed) { this.destroyed = true; this.emit('close'); } return this; }
  setNoDelay(): this { return this; }
  setTimeout(): this { return this; }
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

// The engine's safety nets log at error level: a bug of ours caught, which is a finding here. One logger for the
// process (a pino() per input was a third of this target's time, with its garbage): a line goes to the input
// running, or - logged by timers after its input finished - is kept for the next one to report.
let logged: string | undefined;
let late: string | undefined;
let running = false;
const log = pino({ level: 'error' }, { write: (line: string) => { if (running) logged ??= line; else late ??= line; } });

export async function run(data: Buffer): Promise<void> {
  if (late !== undefined) { const l = late; late = undefined; throw new InvariantBroken(`the engine's safety net caught a bug of ours after an earlier input ended: ${l}`); }
  if (data.length === 0) return;
  const flags = data[0]!;
  logged = undefined;
  running = true;
  try {
    await script(data, flags);
  } finally {
    running = false;
  }
}

async function script(data: Buffer, flags: number): Promise<void> {
  const upstreams: FakeConn[] = [];
  const connect = (): Conn => {
    const c = new FakeConn();
    c.remotePort = 80;
    upstreams.push(c);
    return c as unknown as Conn;
  };
  const group = new TestGroup(4, 4);
  const policy = new TestPolicy(() => ({
    upstreams: [upstream(8080, group)],
    retries: flags & 1 ? 2 : 0,
    retryOn: () => true,
    bufferLimitBytes: flags & 2 ? 16 : 64 * 1024,
    timeoutMs: flags & 4 ? 60_000 : 0,
  }));
  const pool = new H1Pool({ log, maxHeaderBytes: 4096, connect });
  const h2pool = new H2Pool(log, 30_000, 5_000, connect, 4096, 0);
  const ctx: EngineContext = {
    policy, log, pool, h2pool, maxHeaderBytes: 4096, clientIdleTimeoutMs: 300_000, headTimeoutMs: 30_000, h2SettingsTimeoutMs: 0,
    stats: { connectionsH1: 0, connectionsH2: 0, requests: 0, badRequests: 0, upgrades: 0 }, connect,
  };
  const client = new FakeConn();
  let first = true;
  try {
    for (let p = 1; p < data.length;) {
      const word = p + 2 <= data.length ? data.readUInt16BE(p) : data.length - p - 1;
      const toClient = (word & 0x8000) === 0;
      const bytes = data.subarray(Math.min(p + 2, data.length), Math.min(p + 2 + (word & 0x7fff), data.length));
      p += 2 + bytes.length;
      if (toClient) {
        if (first) {
          first = false;
          // server.ts hands the engine the connection with its first bytes
          if (bytes.length > 0) new H1Conn(ctx, client as unknown as Conn, { dst: TEST_DST, address: '127.0.0.1', port: 40000 }, Buffer.from(bytes));
          else break;
        } else if (bytes.length === 0) client.destroy();
        else if (!client.destroyed) client.emit('data', Buffer.from(bytes));
      } else {
        const up = upstreams.at(-1);
        if (up && !up.destroyed) {
          if (!up.connected) { up.connected = true; up.emit('connect'); }
          if (bytes.length === 0) up.destroy();
          else up.emit('data', Buffer.from(bytes));
        }
      }
      await turn();
      if (logged !== undefined) break;
    }
  } finally {
    client.destroy();
    for (const up of upstreams) up.destroy();
    await turn();
    pool.close();
    h2pool.close();
  }
  if (logged !== undefined) throw new InvariantBroken(`the engine's safety net caught a bug of ours: ${logged}`);
  const broken = policy.contractViolations();
  invariant(broken === '', () => `policy contract: ${broken}`);
  invariant(group.connections === 0 && group.pending === 0, () => `the group's counters after everything closed: ${group.connections} connections, ${group.pending} pending`);
}
