// Bulk flows leave the sockmap fast path (bpf/lib/bulk.h): a one-way stream of large sends moves to TCP and out of
// the SOCKHASH, byte order exact across the switch in both directions; request/response stays on the fast path.
import t, { type Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { kernelSkipReason, startAgent, testCgroup } from '../lib/kernel.js';
import { MapReader } from '../../agent/datapath/inspect.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A bulk part (chunks of `chunk` bytes, above the rule's message size) and then many small writes. */
function bulkThenSmall(tag: string, bulkBytes: number, chunk: number): Buffer[] {
  const bulk = randomBytes(bulkBytes);
  const parts: Buffer[] = [];
  for (let o = 0; o < bulk.length; o += chunk) parts.push(bulk.subarray(o, o + chunk));
  for (let i = 0; i < 3000; i++) parts.push(Buffer.from(`${tag}:${i};`));
  return parts;
}

/** Write the parts in order, honouring backpressure; resolves when all are handed to the kernel. */
async function writeAll(s: Socket, parts: Buffer[]): Promise<void> {
  for (const p of parts) {
    if (!s.write(p)) await new Promise<void>((r) => s.once('drain', () => r()));
  }
}

/** Collect `bytes` bytes from a socket (started paused for `pauseMs`, so that redirected bytes queue up first). */
function collect(s: Socket, bytes: number, pauseMs: number, timeoutMs = 30000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const timer = setTimeout(() => reject(new Error(`received ${got} of ${bytes} bytes in ${timeoutMs} ms`)), timeoutMs);
    s.pause();
    setTimeout(() => s.resume(), pauseMs);
    const onData = (d: Buffer) => {
      chunks.push(d);
      got += d.length;
      if (got >= bytes) { clearTimeout(timer); s.off('data', onData); resolve(Buffer.concat(chunks)); }
    };
    s.on('data', onData);
    s.once('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

interface Server1 { server: Server; port: number; accepted: Promise<Socket> }

async function listen(): Promise<Server1> {
  let accept!: (s: Socket) => void;
  const accepted = new Promise<Socket>((r) => { accept = r; });
  const server = createServer({ allowHalfOpen: true }, (c) => { c.on('error', () => {}); accept(c); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { server, port: (server.address() as AddressInfo).port, accepted };
}

t.test('bulk flows leave the fast path', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'bulk');
  // Join the meshed cgroup before creating any socket: accepted sockets belong to the listener's cgroup.
  cg.enter('client');
  const servers = [await listen(), await listen(), await listen()];
  t.teardown(() => { for (const s of servers) s.server.close(); });
  const agent = await startAgent(t, cg, {
    config: `
services:
${servers.map((s, i) => `  - name: s${i}
    vips: [127.77.9.${i + 1}]
    ports: [{ port: 7000 }]
    backends: [{ address: 127.0.0.1, port: ${s.port} }]`).join('\n')}
`,
  });
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());
  const global = () => reader.stats().global;
  const inMap = (local: string) => reader.sockets().some((e) => e.local === local);

  /**
   * One connection: `first` streams bulk-then-small to `second` (which reads only after a pause), then `second`
   * answers with bulk-then-small too. Returns what each side received against what the other sent.
   */
  async function oneWayThenBack(t: Test, srv: Server1, vip: string, clientFirst: boolean): Promise<void> {
    const client = connect({ host: vip, port: 7000, allowHalfOpen: true });
    await new Promise<void>((r, j) => { client.once('connect', () => r()); client.once('error', j); });
    client.on('error', () => {});
    const server = await srv.accepted;
    const [first, second] = clientFirst ? [client, server] : [server, client];
    const firstLocal = `${first.localAddress}:${first.localPort}`;
    const secondLocal = `${second.localAddress}:${second.localPort}`;
    t.ok(inMap(firstLocal) && inMap(secondLocal), 'both ends start on the fast path');
    const before = global();

    const out = bulkThenSmall(clientFirst ? 'up' : 'down', 8 << 20, 64 << 10);
    const want = Buffer.concat(out);
    const receiving = collect(second, want.length, 300);
    await writeAll(first, out);
    const got = await receiving;
    t.equal(got.length, want.length, `${want.length} bytes arrived`);
    t.equal(sha(got), sha(want), 'bulk then small: sha256 of what was received equals what was sent');
    const mid = global();
    t.equal(mid.bulk_leave! - before.bulk_leave!, 1, 'the sender left the fast path (bulk_leave + 1)');
    t.ok(mid.redirect! > before.redirect!, `its first bytes were redirected (${mid.redirect! - before.redirect!})`);
    // sock_ops takes it out of the SOCKHASH on the first ACK of its TCP bytes: long done by now.
    t.notOk(inMap(firstLocal), 'the bulk sender is out of the SOCKHASH');
    t.ok(inMap(secondLocal), 'its peer stays (it may still hold redirected bytes)');

    // The other way: the peer's sends miss (the sender is gone from the map) and take TCP, in order.
    const back = bulkThenSmall(clientFirst ? 'down' : 'up', 2 << 20, 64 << 10);
    const wantBack = Buffer.concat(back);
    const receivingBack = collect(first, wantBack.length, 100);
    await writeAll(second, back);
    const gotBack = await receivingBack;
    t.equal(sha(gotBack), sha(wantBack), 'the answer: sha256 equal, byte-exact');
    const after = global();
    t.ok(after.redirect_miss! > mid.redirect_miss!, 'the answer missed the gone peer and took TCP');
    t.equal(after.bulk_kept! - before.bulk_kept!, 0, 'no bulk sender had to stay in the SOCKHASH');
    client.end();
    server.end();
  }

  t.test('client streams: it leaves, order exact both ways', (t) => oneWayThenBack(t, servers[0]!, '127.77.9.1', true));
  t.test('server streams (a download to a silent client): it leaves, order exact both ways',
    (t) => oneWayThenBack(t, servers[1]!, '127.77.9.2', false));

  t.test('request/response stays on the fast path, however many bytes', async (t) => {
    const client = connect({ host: '127.77.9.3', port: 7000 });
    await new Promise<void>((r, j) => { client.once('connect', () => r()); client.once('error', j); });
    const server = await servers[2]!.accepted;
    server.on('data', (d) => server.write(d)); // echo
    const local = `${client.localAddress}:${client.localPort}`;
    const before = global();
    const msg = randomBytes(16 << 10);
    const rounds = 600; // 9.4 MiB each way in 16 KiB messages, twice the rule's byte count
    let prevRedirects = before.redirect!;
    let grew = 0;
    let pending: { want: number; chunks: Buffer[]; done: (b: Buffer) => void } | undefined;
    client.on('data', (d) => {
      if (!pending) return;
      pending.chunks.push(d);
      pending.want -= d.length;
      if (pending.want <= 0) pending.done(Buffer.concat(pending.chunks));
    });
    for (let i = 0; i < rounds; i++) {
      const reply = new Promise<Buffer>((done) => { pending = { want: msg.length, chunks: [], done }; });
      client.write(msg);
      const r = await reply;
      if (!r.equals(msg)) { t.fail(`round ${i}: echo differs`); break; }
      if (i % 100 === 99) {
        const now = global().redirect!;
        if (now > prevRedirects) grew++;
        prevRedirects = now;
      }
    }
    const after = global();
    t.equal(grew, rounds / 100, 'the redirect counter kept growing through the whole exchange');
    t.ok(after.redirect! - before.redirect! >= 2 * rounds, `every message redirected (${after.redirect! - before.redirect!})`);
    t.equal(after.bulk_leave! - before.bulk_leave!, 0, 'no bulk_leave');
    t.ok(inMap(local), 'the client is still in the SOCKHASH');
    client.destroy();
    await sleep(10);
  });
});
