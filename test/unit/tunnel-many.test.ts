// Many short connections over ONE pooled tunnel connection (issue 13), against an independent HTTP/2 implementation
// on the other end: nghttp2 (node:http2). nghttp2 >= 1.57 (the CVE-2023-44487 "rapid reset" fix) counts the
// RST_STREAM frames a server receives in a token bucket (burst 1000, 33/s) and, once it is empty, ends the session
// itself with GOAWAY INTERNAL_ERROR: a client that resets every stream, even one that ended normally both ways, loses
// its pooled connection (and the streams in flight on it) every ~1,000 streams. So:
//  - our TunnelClient against an nghttp2 CONNECT server (the test's own, splicing to the pod): 5,000 sequential
//    connections (100 B each way, both ends FIN) in three ways, and 1,500 refused ones: every byte back, one
//    handshake, no GOAWAY, and no RST_STREAM received by nghttp2;
//  - an nghttp2 client against our TunnelServer: 5,000 CONNECTs and 1,500 refused ones: no RST_STREAM and no GOAWAY
//    received by nghttp2 (a normal end and a refusal are END_STREAM both ways, never a reset), one handshake.
//
// The frames are counted by nghttp2's own side, not inferred: a reset that arrives for a stream that is already
// closed never reaches JavaScript (no 'close', no rstCode), but it still drains the bucket. So the run happens in a
// child process with NODE_DEBUG_NATIVE=HTTP2SESSION, whose per-session lines "Http2Session server (..) complete frame
// received: type: 3" (3 = RST_STREAM) the parent counts.
import '../lib/childenv.js'; // first: what this starts runs without tap's instrumentation
import t from 'tap';
import { spawn } from 'node:child_process';
import { connect as h2connect, createSecureServer, type Http2SecureServer, type ServerHttp2Stream } from 'node:http2';
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
 * The ways a connection ends normally, each over one pooled session. Our client against an nghttp2 server:
 * - handover: the kernel hand-over's path (client.open() splices an accepted socket), the app FINs first;
 * - pod-fin-first: the same, the pod answers and FINs first, the app FINs after reading it;
 * - duplex: client.connect()'s stream used as a Duplex, as bench/tunnel.ts does: FIN, read to the peer's END_STREAM,
 *   then destroy() (with node:http2 under the client this reset every stream: ~1,010 RST_STREAM, then GOAWAY);
 * - denied: every CONNECT refused with 403 (the node:http2 client used to end each with RST_STREAM NO_ERROR).
 * An nghttp2 client against our server:
 * - server: CONNECT, 100 B, FIN, read to the end; the stream closes with no frame;
 * - server-denied: every CONNECT refused with 403 (node:http2's server answered each with RST_STREAM NO_ERROR too).
 */
type Mode = 'handover' | 'pod-fin-first' | 'duplex' | 'denied' | 'server' | 'server-denied';
const MODES: Record<Mode, number> = { 'handover': 5000, 'duplex': 5000, 'pod-fin-first': 1500, 'denied': 1500, 'server': 5000, 'server-denied': 1500 };
/** which end is nghttp2 (its received frames are counted) */
const NGHTTP2_SIDE = (mode: Mode): 'server' | 'client' => (mode.startsWith('server') ? 'client' : 'server');

interface Result { streams: number; bad: number; handshakes: number; goaways: number }

/** The run itself (in the child): the two ends, an echo pod, `streams` connections one after another. */
async function run(mode: Mode, streams: number): Promise<Result> {
  const { TunnelClient } = await import('../../agent/tunnel/client.js');
  const { TunnelMetrics } = await import('../../agent/tunnel/metrics.js');
  const { TunnelServer } = await import('../../agent/tunnel/server.js');
  const { StaticCerts, TestCa } = await import('../lib/certs.js');
  const { TunnelError } = await import('../../agent/tunnel/types.js');
  const ca = await TestCa.create();
  const certs = new StaticCerts([await ca.issue(NODE_ID), await ca.issue(CLIENT_ID)]);
  const closers: (() => unknown)[] = [];
  const listen = async (s: Server | Http2SecureServer): Promise<number> => {
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
  const denied = mode === 'denied' || mode === 'server-denied';
  const payload = Buffer.alloc(100, 0x61);
  const node = certs.get(NODE_ID)!, web = certs.get(CLIENT_ID)!;
  let bad = 0;
  let goaways = 0;
  let handshakes = 0;
  let finish: () => Promise<void>;

  if (mode === 'server' || mode === 'server-denied') {
    // an nghttp2 client of our server
    const sm = new TunnelMetrics();
    const server = new TunnelServer({ certs, identity: NODE_ID, addresses: ['127.0.0.1'], port: 0, metrics: sm, log: pino({ level: 'silent' }),
      isLocal: () => true, authorize: () => ({ allow: !denied, policy: 'deny-all' }) });
    const [where] = await server.start();
    const session = h2connect(`https://${where}`, { key: web.key, cert: web.chain, ca: web.bundle, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
    session.on('goaway', () => { goaways++; });
    session.on('error', () => {});
    for (let i = 0; i < streams; i++) {
      const got = await new Promise<Buffer | number | Error>((resolve) => {
        const st = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${pod}` }, { endStream: false });
        const parts: Buffer[] = [];
        let status = 0;
        st.on('response', (h) => {
          status = Number(h[':status']);
          // a refusal ends the server's side: ours ends too, and the stream closes with no frame
          if (status === 200) st.write(payload); else st.resume();
          st.end();
        });
        st.on('data', (d: Buffer) => parts.push(d));
        st.on('close', () => resolve(st.rstCode ? new Error(`reset ${st.rstCode}`) : status === 200 ? Buffer.concat(parts) : status));
        st.on('error', () => {});
      });
      if (denied ? got !== 403 : !(got instanceof Buffer) || !got.equals(payload)) bad++;
    }
    handshakes = sm.totals('in').handshakes;
    finish = async () => { session.close(); await server.stop(); };
  } else {
    // an nghttp2 CONNECT server in front of the pod: what our client talks to
    let sessions = 0;
    const h2 = createSecureServer({ key: node.key, cert: node.chain, ca: node.bundle, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' });
    h2.on('session', () => { sessions++; });
    h2.on('stream', (stream: ServerHttp2Stream, h) => {
      stream.on('error', () => {});
      if (denied || h[':method'] !== 'CONNECT') { stream.respond({ ':status': 403 }, { endStream: true }); return; }
      const sock = netConnect({ port: pod, host: '127.0.0.1', allowHalfOpen: true }, () => {
        stream.respond({ ':status': 200 });
        // (pipe ends each side at the other's end; nothing destroys: nghttp2 closes the stream itself)
        stream.pipe(sock);
        sock.pipe(stream);
      });
      sock.on('error', () => stream.close(0xa));
    });
    const h2port = await listen(h2);
    const clog = pino({ level: 'info' }, { write: (s: string) => { if (s.includes('GOAWAY')) goaways++; } });
    const client = new TunnelClient({ certs, metrics: new TunnelMetrics(), log: clog, timeoutMs: 5000 });
    const req = { source: CLIENT_ID, dst: { address: '127.0.0.1', port: pod }, node: { name: 'node-b', address: '127.0.0.1', port: h2port } };
    const handover = await listen(createServer({ allowHalfOpen: true }, (sock: Socket) => { client.open(req, sock).catch(() => {}); }));
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
    handshakes = sessions;
    finish = async () => { client.close(); };
  }
  // what follows (the GOAWAYs of the closing) is not counted; stderr to a file is synchronous
  process.stderr.write('END OF RUN\n');
  const result: Result = { streams, bad, goaways, handshakes };
  await finish();
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
      // nghttp2's frames as it received them (0 DATA, 1 HEADERS, 3 RST_STREAM, 7 GOAWAY), up to the end of the run
      // (the GOAWAYs of the closing after it are not counted)
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
      const side = NGHTTP2_SIDE(mode);
      const n = (type: number): number => frames[side].get(String(type)) ?? 0;
      t.ok(ended, 'the run reached its end');
      // the count is real: nghttp2 read every stream's HEADERS (a debug output that changed format would give 0)
      t.equal(n(1), streams, `HEADERS frames the nghttp2 ${side} received: ${n(1)}`);
      t.equal(r.bad, 0, mode.endsWith('denied') ? `all ${streams} CONNECTs refused with 403` : `all ${streams} connections got their 100 B back and a FIN`);
      t.equal(n(3), 0, `RST_STREAM frames the nghttp2 ${side} received: ${n(3)} (an nghttp2 server ends the session after ~1,000)`);
      t.equal(n(7), 0, `GOAWAY frames the nghttp2 ${side} received: ${n(7)}`);
      t.equal(r.goaways, 0, 'no GOAWAY seen by the client');
      t.equal(r.handshakes, 1, 'one handshake: the same pooled connection throughout');
    });
  }
}
