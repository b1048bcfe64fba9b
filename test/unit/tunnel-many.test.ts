// Many short connections over ONE pooled tunnel connection (issue 13). nghttp2 >= 1.57 (the CVE-2023-44487 "rapid
// reset" fix) counts the RST_STREAM frames a server receives in a token bucket (burst 1000, 33/s) and, once it is
// empty, ends the session itself with GOAWAY INTERNAL_ERROR: a client that resets every stream, even one that ended
// normally both ways, loses its pooled connection (and the ~16 streams in flight on it) every ~1,000 streams.
// So: 5,000 sequential connections (100 B each way, both ends FIN), through the hand-over path (client.open ->
// CONNECT stream -> server -> pod): every byte back, one handshake, no GOAWAY, and no RST_STREAM in either direction.
//
// The frames are counted by nghttp2's own side, not inferred: a reset that arrives for a stream that is already
// closed never reaches JavaScript (no 'close', no rstCode), but it still drains the bucket. So the run happens in a
// child process with NODE_DEBUG_NATIVE=HTTP2SESSION, whose per-session lines "Http2Session server (..) complete frame
// received: type: 3" (3 = RST_STREAM) the parent counts.
import t from 'tap';
import { spawn } from 'node:child_process';
import { connect as netConnect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { closeSync, createReadStream, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import pino from 'pino';

const TD = 'cluster.local';
const NODE_ID = `spiffe://${TD}/sockmesh/node/node-b`;
const CLIENT_ID = `spiffe://${TD}/ns/shop/sa/web`;
const CHILD = 'TUNNEL_MANY_CHILD';

/**
 * The ways a connection ends normally, each over one pooled session:
 * - handover: the kernel hand-over's path (client.open() splices an accepted socket), the app FINs first;
 * - pod-fin-first: the same, the pod answers and FINs first, the app FINs after reading it;
 * - duplex: client.connect()'s stream used as a Duplex, as bench/tunnel.ts does: FIN, read to the peer's END_STREAM,
 *   then destroy() (this one reset every stream before the fix: ~1,010 RST_STREAM, then GOAWAY INTERNAL_ERROR);
 * - denied: every CONNECT refused with 403 (the client used to end each with RST_STREAM NO_ERROR).
 */
type Mode = 'handover' | 'pod-fin-first' | 'duplex' | 'denied';
const MODES: Record<Mode, number> = { 'handover': 5000, 'duplex': 5000, 'pod-fin-first': 1500, 'denied': 1500 };

interface Result { streams: number; bad: number; handshakesOut: number; handshakesIn: number; goaways: number }

/** The run itself (in the child): one server, one client pool, an echo pod, `streams` connections one after another. */
async function run(mode: Mode, streams: number): Promise<Result> {
  const { TunnelClient } = await import('../../agent/tunnel/client.js');
  const { TunnelMetrics } = await import('../../agent/tunnel/metrics.js');
  const { TunnelServer } = await import('../../agent/tunnel/server.js');
  const { StaticCerts, TestCa } = await import('../lib/certs.js');
  const { TunnelError } = await import('../../agent/tunnel/types.js');
  const ca = await TestCa.create();
  const certs = new StaticCerts([await ca.issue(NODE_ID), await ca.issue(CLIENT_ID)]);
  const closers: (() => unknown)[] = [];
  const listen = async (s: Server): Promise<number> => {
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise<void>((r) => s.close(() => r())));
    return (s.address() as AddressInfo).port;
  };
  // the pod echoes and, on the client's FIN, sends its own (a normal end both ways)
  const pod = await listen(createServer({ allowHalfOpen: true }, (c) => {
    let n = 0;
    c.on('data', (d: Buffer) => { n += d.length; if (mode === 'pod-fin-first' && n >= 100) c.end(d); else c.write(d); });
    c.on('end', () => { if (!c.writableEnded) c.end(); });
    c.on('error', () => {});
  }));
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const serverPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const sm = new TunnelMetrics(), cm = new TunnelMetrics();
  const quiet = pino({ level: 'silent' });
  const server = new TunnelServer({ certs, identity: NODE_ID, addresses: ['127.0.0.1'], port: serverPort, metrics: sm, log: quiet, isLocal: () => true,
    authorize: () => ({ allow: mode !== 'denied', policy: 'deny-all' }) });
  await server.start();
  let goaways = 0;
  const clog = pino({ level: 'info' }, { write: (s: string) => { if (s.includes('GOAWAY')) goaways++; } });
  const client = new TunnelClient({ certs, metrics: cm, log: clog, timeoutMs: 5000 });
  const req = { source: CLIENT_ID, dst: { address: '127.0.0.1', port: pod }, node: { name: 'node-b', address: '127.0.0.1', port: serverPort } };
  const handover = await listen(createServer({ allowHalfOpen: true }, (sock: Socket) => { client.open(req, sock).catch(() => {}); }));
  const payload = Buffer.alloc(100, 0x61);
  let bad = 0;
  // the stream itself as a Duplex, as bench/tunnel.ts uses it: FIN after the answer, destroy() after the peer's
  const viaStream = async (): Promise<Buffer | Error> => {
    const st = await client.connect(req).catch((e: Error) => e);
    if (st instanceof Error) return st;
    return new Promise((resolve) => {
      const parts: Buffer[] = [];
      st.on('data', (d: Buffer) => parts.push(d));
      st.on('end', () => { st.destroy(); resolve(Buffer.concat(parts)); });
      st.on('error', (e) => resolve(e));
      st.end(payload);
    });
  };
  for (let i = 0; i < streams; i++) {
    if (mode === 'denied') {
      const e = await client.connect(req).then(() => null, (err: unknown) => err);
      if (!(e instanceof TunnelError) || e.status !== 403) bad++;
      continue;
    }
    const got = mode === 'duplex' ? await viaStream() : await new Promise<Buffer | Error>((resolve) => {
      const c = netConnect({ port: handover, host: '127.0.0.1', allowHalfOpen: true }, () => c.end(payload));
      const parts: Buffer[] = [];
      c.on('data', (d: Buffer) => parts.push(d));
      c.on('end', () => { c.end(); resolve(Buffer.concat(parts)); });
      c.on('error', (e) => resolve(e));
    });
    if (!(got instanceof Buffer) || !got.equals(payload)) bad++;
  }
  // what follows (the client's and the server's GOAWAY at close) is not counted; stderr to a file is synchronous
  process.stderr.write('END OF RUN\n');
  const result: Result = {
    streams, bad, goaways,
    handshakesOut: cm.totals('out').handshakes, handshakesIn: sm.totals('in').handshakes,
  };
  client.close();
  await server.stop();
  for (const c of closers) await c();
  return result;
}

if (process.env[CHILD]) {
  const [mode, n] = process.env[CHILD].split(' ') as [Mode, string];
  run(mode, Number(n)).then((r) => { process.stdout.write(`RESULT ${JSON.stringify(r)}\n`); process.exit(0); },
    (e: unknown) => { process.stdout.write(`ERROR ${(e as Error).stack}\n`); process.exit(1); });
} else {
  for (const [mode, streams] of Object.entries(MODES) as [Mode, number][]) {
    t.test(`${mode}: ${streams} short connections over one pooled tunnel connection: no RST_STREAM, no GOAWAY`, async (t) => {
      // the same file, the same loader (tap's TypeScript import hook is in execArgv / NODE_OPTIONS)
      // stderr to a file, not a pipe: Node makes a pipe non-blocking, and the C++ debug lines written while the
      // parent is behind are then dropped (EAGAIN), which undercounted frames by ~10%
      const dir = mkdtempSync(join(tmpdir(), 'tunnel-many-'));
      t.teardown(() => rmSync(dir, { recursive: true, force: true }));
      const errFd = openSync(join(dir, 'stderr'), 'w');
      const child = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)], {
        env: { ...process.env, [CHILD]: `${mode} ${streams}`, NODE_DEBUG_NATIVE: 'HTTP2SESSION' }, stdio: ['ignore', 'pipe', errFd],
      });
      closeSync(errFd);
      let out = '';
      child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
      const code = await new Promise<number | null>((r) => child.on('close', r));
      // nghttp2's frames as each side received them (0 DATA, 1 HEADERS, 3 RST_STREAM, 7 GOAWAY), up to the end of
      // the run (the GOAWAYs of the closing after it are not counted)
      const frames = { server: new Map<string, number>(), client: new Map<string, number>() };
      let ended = false;
      for await (const l of createInterface({ input: createReadStream(join(dir, 'stderr')) })) {
        if (l === 'END OF RUN') { ended = true; break; }
        const m = /^Http2Session (server|client) \(\d+\) complete frame received: type: (\d+)$/.exec(l);
        if (m) { const side = frames[m[1] as 'server' | 'client']; side.set(m[2]!, (side.get(m[2]!) ?? 0) + 1); }
      }
      const line = /^RESULT (.*)$/m.exec(out);
      t.equal(code, 0, `the run finished (${/^ERROR [^\n]*/m.exec(out)?.[0] ?? 'ok'})`);
      if (!line) return;
      const r = JSON.parse(line[1]!) as Result;
      const n = (side: 'server' | 'client', type: number): number => frames[side].get(String(type)) ?? 0;
      t.ok(ended, 'the run reached its end');
      // the count is real: the server read every stream's HEADERS (a debug output that changed format would give 0)
      t.equal(n('server', 1), streams, `HEADERS frames the server received: ${n('server', 1)}`);
      t.equal(r.bad, 0, mode === 'denied' ? `all ${streams} CONNECTs refused with 403` : `all ${streams} connections got their 100 B back and a FIN`);
      t.equal(n('server', 3), 0, `RST_STREAM frames the server received: ${n('server', 3)} (nghttp2 ends the session after ~1,000)`);
      // a refusal is the server's complete answer before the client's request ended: RFC 9113 8.1 lets it ask the
      // client to stop with RST_STREAM NO_ERROR, and Node's server does; only the server side has the reset limit
      if (mode === 'denied') t.comment(`RST_STREAM frames the client received: ${n('client', 3)}`);
      else t.equal(n('client', 3), 0, `RST_STREAM frames the client received: ${n('client', 3)}`);
      t.equal(n('server', 7) + n('client', 7), 0, `GOAWAY frames received: server ${n('server', 7)}, client ${n('client', 7)}`);
      t.equal(r.goaways, 0, 'the pool logged no GOAWAY');
      t.same([r.handshakesOut, r.handshakesIn], [1, 1], 'one handshake each side: the same pooled connection throughout');
    });
  }
}
