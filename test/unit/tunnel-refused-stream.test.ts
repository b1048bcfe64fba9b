// A CONNECT the server refused unprocessed (RST_STREAM REFUSED_STREAM before any answer, RFC 9113 8.7: what an HTTP/2
// client makes of every stream above a GOAWAY's last stream id, as when the old agent of a planned restart stops
// serving while CONNECTs are on their way) is sent again once by the tunnel client, and only once; any other reset
// fails the open. The server is node:http2 (nghttp2, an independent implementation) with the node's certificate, so
// that it can refuse at will; the client is agent/tunnel/client.ts over real TLS on loopback.
import t, { type Test } from 'tap';
import { constants, createSecureServer, type ServerHttp2Stream } from 'node:http2';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { TunnelClient } from '../../agent/tunnel/client.js';
import { TunnelMetrics } from '../../agent/tunnel/metrics.js';
import { TunnelError, type TunnelRequest } from '../../agent/tunnel/types.js';
import { StaticCerts, TestCa } from '../lib/certs.js';

const TD = 'cluster.local';
const NODE_ID = `spiffe://${TD}/sockmesh/node/node-b`;
const CLIENT_ID = `spiffe://${TD}/ns/shop/sa/web`;

/** A node's HBONE end that resets the CONNECTs `refuse(n)` names (n: the stream's ordinal) and answers 200 to others. */
async function server(t: Test, ca: TestCa, refuse: (n: number) => number | null): Promise<{ port: number; streams: () => number }> {
  const m = await ca.issue(NODE_ID);
  const s = createSecureServer({ key: m.key, cert: m.chain, ca: m.bundle, requestCert: true, minVersion: 'TLSv1.3' });
  let n = 0;
  const sessions = new Set<import('node:http2').ServerHttp2Session>();
  s.on('session', (x) => { sessions.add(x); x.on('close', () => sessions.delete(x)); });
  s.on('stream', (stream: ServerHttp2Stream) => {
    stream.on('error', () => { /* our own reset, told back to us */ });
    const code = refuse(++n);
    if (code !== null) { stream.close(code); return; }
    stream.respond({ ':status': 200 });
    stream.end('hello');
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  // close() waits for every session: the client's pooled one is ended here
  t.teardown(() => new Promise<void>((r) => { s.close(() => r()); for (const x of sessions) x.destroy(); }));
  return { port: (s.address() as AddressInfo).port, streams: () => n };
}

const lines: Record<string, unknown>[] = [];
const log = pino({ level: 'info' }, { write: (x: string) => { lines.push(JSON.parse(x) as Record<string, unknown>); } });

t.test('REFUSED_STREAM before an answer: sent again once; other resets fail', async (t) => {
  const ca = await TestCa.create();
  const certs = new StaticCerts([await ca.issue(CLIENT_ID)]);
  const client = new TunnelClient({ certs, metrics: new TunnelMetrics(), log, timeoutMs: 5000 });
  t.teardown(() => client.close());
  const req = (port: number): TunnelRequest => ({ source: CLIENT_ID, dst: { address: '127.0.0.1', port: 7 }, node: { name: 'node-b', address: '127.0.0.1', port } });
  const read = async (p: Promise<import('node:stream').Duplex>): Promise<string> => {
    const s = await p;
    let b = '';
    for await (const d of s) b += (d as Buffer).toString();
    return b;
  };

  const once = await server(t, ca, (n) => (n === 1 ? constants.NGHTTP2_REFUSED_STREAM : null));
  t.equal(await read(client.connect(req(once.port))), 'hello', 'the first CONNECT refused unprocessed: sent again, answered');
  t.equal(once.streams(), 2, 'two CONNECTs reached the server');
  t.ok(lines.some((l) => String(l.msg).includes('refused unprocessed')), 'the retry is logged');

  const always = await server(t, ca, () => constants.NGHTTP2_REFUSED_STREAM);
  const e = await client.connect(req(always.port)).then(() => null, (err: unknown) => err);
  t.ok(e instanceof TunnelError && /reset \(REFUSED_STREAM\)/.test(e.message), `refused again: the open fails (${(e as Error).message})`);
  t.equal(always.streams(), 2, 'after one retry only');

  const other = await server(t, ca, (n) => (n === 1 ? constants.NGHTTP2_INTERNAL_ERROR : null));
  const e2 = await client.connect(req(other.port)).then(() => null, (err: unknown) => err);
  t.ok(e2 instanceof TunnelError && /reset \(INTERNAL_ERROR\)/.test(e2.message), `another reset (INTERNAL_ERROR): no retry, the open fails (${(e2 as Error).message})`);
  t.equal(other.streams(), 1, 'one CONNECT only');
});
