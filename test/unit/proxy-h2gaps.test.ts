// Issue 15's HTTP/2 gaps, through the real proxy (agent/proxy/server.ts and the engine under it) with independent
// clients and backends: node:http2, raw frames, nghttp/curl where they exist. The SETTINGS ACK timeout both ways.
import t from 'tap';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';
import { createServer as netServer, type AddressInfo, type Socket } from 'node:net';
import { H2_ERROR } from '../../agent/proxy/h2/session.js';
import { block, frame, goawayCode, HELLO, isGoaway, raw } from '../lib/h2raw.js';
import { h2request, startProxy, TestGroup, TestPolicy, upstream, type RunningProxy } from '../lib/proxy.js';

let proxy: RunningProxy;
const group = new TestGroup();
const policy = new TestPolicy(() => ({ status: 500, headers: {}, body: 'no route\n' }));

t.before(async () => { proxy = await startProxy(policy, { h2SettingsTimeoutMs: 300 }); });
t.teardown(async () => { await proxy.close(); });

function client(t: { teardown(fn: () => void): void }): ClientHttp2Session {
  const c = h2connect(`http://127.0.0.1:${proxy.port}`);
  c.on('error', () => {});
  t.teardown(() => c.destroy());
  return c;
}

t.test('SETTINGS ACK timeout through the proxy: a client, then a backend, that never ACK get GOAWAY SETTINGS_TIMEOUT', async (t) => {
  const GET = [':method', 'GET', ':scheme', 'http', ':path', '/', ':authority', 'x'];
  const r = await raw(proxy.port, Buffer.concat([HELLO, frame(1, 0x4 | 0x1, 1, block(GET))]), isGoaway);
  t.equal(goawayCode(r), H2_ERROR.SETTINGS_TIMEOUT, 'a client that never ACKs: GOAWAY SETTINGS_TIMEOUT');
  t.ok(r.closed, 'its connection closed');

  // a backend that sends its SETTINGS and never ACKs ours: the request fails as a reset (502), not held for ever
  const frames: Buffer[] = [];
  const socks: Socket[] = [];
  const b = netServer((s) => { socks.push(s); s.on('error', () => {}); s.write(frame(4, 0, 0)); s.on('data', (d: Buffer) => frames.push(d)); });
  await new Promise<void>((res) => b.listen(0, '127.0.0.1', () => res()));
  t.teardown(() => { for (const s of socks) s.destroy(); b.close(); });
  policy.route = () => ({ upstreams: [upstream((b.address() as AddressInfo).port, group)] });
  const c = client(t);
  const started = performance.now();
  const got = await h2request(c, { ':path': '/held' });
  const took = performance.now() - started;
  t.equal(got.headers[':status'], 502, 'the client gets 502');
  t.equal(got.headers['x-sockmesh-error'], 'reset');
  t.ok(took >= 250 && took < 3000, `after about the timeout (${took.toFixed(0)} ms)`);
  const all = Buffer.concat(frames);
  // the proxy's GOAWAY to the backend: type 7, code SETTINGS_TIMEOUT in its payload's second word
  let code = -1;
  for (let p = 24; p + 9 <= all.length; p += 9 + all.readUIntBE(p, 3)) if (all[p + 3] === 7) code = all.readUInt32BE(p + 9 + 4);
  t.equal(code, H2_ERROR.SETTINGS_TIMEOUT, 'the backend got GOAWAY SETTINGS_TIMEOUT');
  t.equal(policy.contractViolations(), '');
});
