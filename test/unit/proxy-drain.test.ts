// A planned restart's drain of the proxy (ProxyServer.drain, agent/proxy/h2server.ts): HTTP/2 clients get the
// two-step GOAWAY of RFC 9113 6.8 and lose no request, h2load included.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { connect as netConnect } from 'node:net';
import { sleep } from '../lib/net.js';
import { block, frame, HELLO, type RawFrame } from '../lib/h2raw.js';
import { startProxy, TestGroup, TestPolicy, upstream, type RunningProxy } from '../lib/proxy.js';

const group = new TestGroup();

/** an HTTP/1.1 backend that counts the requests it saw by path */
async function backend(t: { teardown(fn: () => void): void }, delayMs = 0): Promise<{ port: number; seen: Map<string, number> }> {
  const seen = new Map<string, number>();
  const s: Server = createServer((req, res) => {
    seen.set(req.url!, (seen.get(req.url!) ?? 0) + 1);
    req.resume();
    const answer = (): void => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end(`ok ${req.url}`); };
    if (delayMs > 0) setTimeout(answer, delayMs); else answer();
  });
  s.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  t.teardown(() => { s.closeAllConnections(); s.close(); });
  return { port: (s.address() as { port: number }).port, seen };
}

async function proxyTo(t: { teardown(fn: () => Promise<void> | void): void }, port: number): Promise<RunningProxy> {
  const policy = new TestPolicy(() => ({ upstreams: [upstream(port, group)], upstreamProtocol: 'http1' }));
  const p = await startProxy(policy);
  t.teardown(() => p.close());
  return p;
}

function h2load(args: string[]): { proc: ChildProcess; done: Promise<string> } {
  const proc = spawn('h2load', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  proc.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  const timer = setTimeout(() => proc.kill('SIGKILL'), 60_000);
  const done = new Promise<string>((resolve, reject) => {
    proc.on('error', reject);
    proc.on('close', () => { clearTimeout(timer); resolve(out); });
  });
  return { proc, done };
}

function h2Numbers(out: string): { succeeded: number; failed: number; errored: number } | null {
  const m = /requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(out);
  return m ? { succeeded: Number(m[1]), failed: Number(m[2]), errored: Number(m[3]) } : null;
}

t.test('h2load -c4 -m8 whose responses and the GOAWAY reach it in one read: 0 failed, every client saw the GOAWAY', async (t) => {
  const b = await backend(t);
  const p = await proxyTo(t, b.port);
  const load = h2load(['-c4', '-m8', '-D', '4', `http://127.0.0.1:${p.port}/drain`]);
  await sleep(1500);
  // h2load stopped: what the proxy answers now waits in its socket buffer, where the GOAWAY lands behind it (what a
  // loaded machine does to a client that is slow to read). nghttp2 opens a new stream for each answer it reads, in
  // the same read as the GOAWAY, and then refuses to send those: h2load counted them errored (32 = 4 x 8).
  load.proc.kill('SIGSTOP');
  await sleep(200);
  const drained = p.proxy.drain(10_000);
  await sleep(100);
  load.proc.kill('SIGCONT');
  const { left } = await drained;
  const out = await load.done;
  const n = h2Numbers(out);
  if (!n || n.failed !== 0 || n.errored !== 0) t.comment(out);
  t.ok(n, 'h2load output parsed');
  t.equal(left, 0, 'every client connection finished before the drain timeout');
  t.equal(n?.errored, 0, 'h2load: 0 errored');
  t.equal(n?.failed, 0, 'h2load: 0 failed');
  // h2load opens no new connection after a GOAWAY (it says "Process Request Failure" and stops that client): each
  // of its 4 clients saying so proves the GOAWAY reached each under load, which is what this test is about.
  t.equal(out.match(/Process Request Failure/g)?.length ?? 0, 4, 'each of the 4 clients got the GOAWAY while loading');
  t.equal(b.seen.get('/drain'), n?.succeeded, `the backend saw exactly the ${n?.succeeded} requests that succeeded`);
});

/**
 * A raw HTTP/2 client: frames out as the test says, frames in as they come. Each PING is answered at once, as any
 * client does, unless hold(ping) says to keep its answer back (the test sends it).
 */
function rawClient(port: number, hold: (ping: RawFrame) => boolean = () => false): { send(b: Buffer): void; frames: RawFrame[]; next(pred: (f: RawFrame) => boolean, ms?: number): Promise<RawFrame>; ended: Promise<{ fin: boolean; error: string | null }>; destroy(): void } {
  // half-open allowed: after our FIN the client still writes what nghttp2 writes then (its GOAWAY), then ends
  const sock = netConnect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const frames: RawFrame[] = [];
  let buf = Buffer.alloc(0);
  const waiters: { pred: (f: RawFrame) => boolean; resolve: (f: RawFrame) => void }[] = [];
  let fin = false, error: string | null = null;
  sock.on('error', (e: NodeJS.ErrnoException) => { error ??= e.code ?? e.message; });
  sock.on('end', () => {
    fin = true;
    // a write that finds the socket closed under unread bytes gets RST back; the ones after it fail (EPIPE)
    sock.write(frame(GOAWAY, 0, 0, Buffer.alloc(8)));
    setTimeout(() => sock.write(frame(PING, 0, 0, Buffer.alloc(8))), 15);
    setTimeout(() => sock.write(frame(PING, 0, 0, Buffer.alloc(8))), 30);
    setTimeout(() => sock.end(), 45);
  });
  const ended = new Promise<{ fin: boolean; error: string | null }>((resolve) => sock.on('close', () => resolve({ fin, error })));
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      const f = { type: buf[3]!, flags: buf[4]!, id: buf.readUInt32BE(5) & 0x7fffffff, payload: Buffer.from(buf.subarray(9, 9 + len)) };
      frames.push(f);
      buf = buf.subarray(9 + len);
      if (f.type === PING && (f.flags & ACK) === 0 && !hold(f)) sock.write(frame(PING, ACK, 0, f.payload));
      for (let i = waiters.length - 1; i >= 0; i--) if (waiters[i]!.pred(f)) waiters.splice(i, 1)[0]!.resolve(f);
    }
  });
  return {
    send: (b) => { if (!sock.writableEnded) sock.write(b); },
    frames,
    next: (pred, ms = 5000) => {
      const have = frames.find(pred);
      if (have) return Promise.resolve(have);
      return new Promise((resolve, reject) => {
        const w = { pred, resolve: (f: RawFrame) => { clearTimeout(timer); resolve(f); } };
        const timer = setTimeout(() => { waiters.splice(waiters.indexOf(w), 1); reject(new Error(`frame not seen in ${ms} ms; got ${frames.map((f) => f.type).join(',')}`)); }, ms);
        waiters.push(w);
      });
    },
    ended,
    destroy: () => sock.destroy(),
  };
}

const GOAWAY = 7, PING = 6, HEADERS = 1, DATA = 0, RST_STREAM = 3, SETTINGS = 4;
const END_STREAM = 1, END_HEADERS = 4, ACK = 1;
const get = (path: string): Buffer => block([':method', 'GET', ':scheme', 'http', ':authority', 'svc', ':path', path]);
const lastId = (f: RawFrame): number => f.payload.readUInt32BE(0) & 0x7fffffff;

t.test('a request sent after the GOAWAY notice, before the client acknowledged our PING, is served', async (t) => {
  const b = await backend(t, 50);
  const p = await proxyTo(t, b.port);
  // the PING after the GOAWAY notice is answered by the test
  const c = rawClient(p.port, (f) => c.frames.some((g) => g.type === GOAWAY));
  t.teardown(() => c.destroy());
  c.send(Buffer.concat([HELLO, frame(HEADERS, END_STREAM | END_HEADERS, 1, get('/one'))]));
  await c.next((f) => f.type === SETTINGS && (f.flags & ACK) === 0);
  c.send(frame(SETTINGS, ACK, 0));
  await sleep(10); // stream 1 is at the backend
  const drained = p.proxy.drain(10_000);
  const notice = await c.next((f) => f.type === GOAWAY);
  t.equal(lastId(notice), 0x7fffffff, 'the first GOAWAY names the largest stream id: nothing refused yet');
  const ping = await c.next((f) => f.type === PING && (f.flags & ACK) === 0 && c.frames.indexOf(f) > c.frames.indexOf(notice));
  // A client that opened a stream before it read the notice, and whose HEADERS reach us late (a slow machine): it
  // acknowledges the PING only after them, as it reads and writes in order. The proxy must still serve the stream.
  await sleep(800);
  t.equal(c.frames.filter((f) => f.type === GOAWAY).length, 1, 'no final GOAWAY while the PING after the notice is unanswered');
  c.send(frame(HEADERS, END_STREAM | END_HEADERS, 3, get('/three')));
  const acked = performance.now();
  c.send(frame(PING, ACK, 0, ping.payload));
  const final = await c.next((f) => f.type === GOAWAY && f !== notice);
  const waited = performance.now() - acked;
  t.equal(lastId(final), 3, 'the final GOAWAY, after the PING came back, names stream 3 as the last one');
  t.ok(waited < 150, `and came right after the PING's answer (${waited.toFixed(1)} ms), not from a timer`);
  await c.ended;
  t.notOk(c.frames.some((f) => f.type === RST_STREAM), 'no stream was reset');
  for (const id of [1, 3]) {
    t.ok(c.frames.some((f) => f.id === id && (f.type === DATA || f.type === HEADERS) && (f.flags & END_STREAM) !== 0), `stream ${id} answered to its end`);
  }
  t.equal((await drained).left, 0, 'the connection closed, the drain is over');
  t.equal(b.seen.get('/three'), 1, 'the backend saw the late stream');
});

t.test('graceful close: the final GOAWAY, the last answer, then FIN, not RST, though the client writes until it closes', async (t) => {
  const b = await backend(t, 100);
  const p = await proxyTo(t, b.port);
  const c = rawClient(p.port);
  t.teardown(() => c.destroy());
  c.send(Buffer.concat([HELLO, frame(HEADERS, END_STREAM | END_HEADERS, 1, get('/slow'))]));
  await c.next((f) => f.type === SETTINGS && (f.flags & ACK) === 0);
  c.send(frame(SETTINGS, ACK, 0));
  await sleep(10);
  const drained = p.proxy.drain(10_000);
  const ping = await c.next((f) => f.type === PING && (f.flags & ACK) === 0);
  c.send(frame(PING, ACK, 0, ping.payload));
  // a chatty client: PINGs of its own until the end (unread bytes in our receive buffer at close() would send RST)
  const chatter = setInterval(() => c.send(frame(PING, 0, 0, Buffer.alloc(8, 7))), 5);
  t.teardown(() => clearInterval(chatter));
  const how = await c.ended;
  clearInterval(chatter);
  t.ok(how.fin, 'the proxy closed its side with FIN');
  t.equal(how.error, null, 'no RST (ECONNRESET) or other error at the client, though it wrote after our FIN');
  const i = (pred: (f: RawFrame) => boolean): number => c.frames.findIndex(pred);
  const lastAnswer = i((f) => f.id === 1 && (f.flags & END_STREAM) !== 0);
  const goaways = c.frames.filter((f) => f.type === GOAWAY);
  t.equal(goaways.length, 2, 'two GOAWAYs: the notice and the final one');
  t.ok(lastAnswer >= 0, 'stream 1 was answered to its end');
  t.equal(lastId(goaways[1]!), 1, 'the final one names stream 1');
  t.equal(lastAnswer, c.frames.length - 1, `the answer was the last frame before the FIN: nothing cut (${c.frames.slice(lastAnswer).map((f) => `${f.type}/${f.id}/${f.flags}`).join(' ')})`);
  t.equal((await drained).left, 0, 'the drain is over');
});
