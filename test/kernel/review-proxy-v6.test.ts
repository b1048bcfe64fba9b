// Review: the proxy address the kernel redirects to must be one the agent actually listens on.
import t from 'tap';
import { createServer as createNetServer, type Server } from 'node:net';
import { createServer as createHttpServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MapReader } from '../../agent/datapath/inspect.js';
import { kernelSkipReason, startAgent, testCgroup } from '../lib/kernel.js';

const skip = kernelSkipReason();
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const listen = (s: Server, port: number, host: string): Promise<boolean> =>
  new Promise((r) => { s.once('error', () => r(false)); s.listen(port, host, () => r(true)); });

t.test('the IPv6 proxy listener cannot be had: IPv6 clients are not redirected to whoever holds [::1]:port', { skip: skip ?? false }, async (t) => {
  // Before the fix: when listening on [::1]:port failed ("the L7 proxy listens on IPv4 only"), the kernel kept the
  // address the agent announced at start, ::1: connect() to an IPv6 VIP of an L7 service went to [::1]:port, to any
  // local process (no privilege needed) that had bound it first, with the application's request.
  const cg = testCgroup(t, 'review-v6');
  let squatted = 0;
  const squatter = createNetServer((s) => { squatted++; s.on('error', () => {}); s.end('HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nSQUAT\n'); });
  // a port free on 127.0.0.1 and held on ::1 by the squatter
  let port = 0;
  for (let i = 0; i < 20 && port === 0; i++) {
    if (!(await listen(squatter, 0, '::1'))) continue;
    const p = (squatter.address() as AddressInfo).port;
    const probe = createNetServer();
    if (await listen(probe, p, '127.0.0.1')) { await new Promise((r) => probe.close(r)); port = p; }
    else await new Promise((r) => squatter.close(r));
  }
  t.ok(port > 0, 'a port held on ::1 only');
  t.teardown(() => new Promise((r) => squatter.close(r)));
  const backend = createHttpServer((_req, res) => res.end('backend\n'));
  await listen(backend as unknown as Server, 0, '::1');
  t.teardown(() => { backend.closeAllConnections(); return new Promise((r) => backend.close(r)); });
  const bport = (backend.address() as AddressInfo).port;
  const agent = await startAgent(t, cg, {
    config: `
services:
  - name: six
    vips: ["::1"]
    ports: [{ port: 9187 }]
    backends: [{ address: "::1", port: ${bport} }]
    http: { failMode: open }
`,
    extraArgs: ['--proxy-port', String(port), '--proxy-heartbeat-ms', '200'],
  });
  await agent.waitLog((l) => l['msg'] === 'the L7 proxy listens on IPv4 only');
  await agent.waitLog((l) => l['msg'] === 'L7 proxy listening');
  const reader = MapReader.fromPins(agent.bpffs);
  t.teardown(() => reader.close());
  t.match(reader.proxy(), { v4: '127.0.0.1', alive: true }, 'the proxy is alive on IPv4');
  t.not(reader.proxy()?.v6, '::1', 'the kernel no longer redirects to [::1]:port');
  cg.enter('client');
  const body = await new Promise<string>((resolve, reject) => {
    const req = request({ host: '::1', port: 9187, path: '/', agent: false, timeout: 5000 }, (res) => {
      let b = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (b += d));
      res.on('end', () => resolve(b));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end();
  }).finally(() => cg.leave());
  t.equal(squatted, 0, 'nothing reached the process holding [::1]:port');
  t.equal(body, 'backend\n', 'the IPv6 client is served (through the IPv4 listener)');
});
