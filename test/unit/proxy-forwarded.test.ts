// x-forwarded-for / x-forwarded-proto / forwarded (agent/proxy/forwarded.ts and the model's http.forwarded): Envoy's
// use_remote_address and xff_num_trusted_hops semantics, the validation naming the field, and the headers a real backend
// gets through the proxy from curl (HTTP/1.1 and HTTP/2).
import t from 'tap';
import type { IncomingHttpHeaders } from 'node:http';
import { spawn } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { createServer as httpServer } from 'node:http';
import { parseConfig } from '../../agent/model/config.js';
import { ConfigError } from '../../agent/model/types.js';
import { BackendStates } from '../../agent/health/states.js';
import { applyForwarded } from '../../agent/proxy/forwarded.js';
import { ProxyPolicy } from '../../agent/proxy/policy.js';
import { ProxyServer } from '../../agent/proxy/server.js';
import type { Headers } from '../../agent/proxy/types.js';
import { backend, captureLog, http, model, service } from '../lib/l7model.js';
import { h2Backend } from '../lib/proxy.js';


t.test('applyForwarded: append the client, replace an untrusted x-forwarded-proto, keep a trusted one', async (t) => {
  const run = (h: Headers, useRemoteAddress: boolean, trustedHops: number, client = '10.0.0.7'): Headers => { applyForwarded(h, { useRemoteAddress, trustedHops }, client); return h; };
  t.same(run({}, true, 0), { 'x-forwarded-for': '10.0.0.7', forwarded: 'for=10.0.0.7;proto=http', 'x-forwarded-proto': 'http' }, 'nothing came in');
  t.same(run({ 'x-forwarded-for': '1.2.3.4', 'x-forwarded-proto': 'https', forwarded: 'for=1.2.3.4;proto=https' }, true, 0),
    { 'x-forwarded-for': '1.2.3.4,10.0.0.7', 'x-forwarded-proto': 'http', forwarded: 'for=1.2.3.4;proto=https, for=10.0.0.7;proto=http' },
    'untrusted: the claim of https is replaced, the client appended after what came in');
  t.same(run({ 'x-forwarded-for': ['1.2.3.4', '5.6.7.8'], 'x-forwarded-proto': 'https' }, true, 1),
    { 'x-forwarded-for': '1.2.3.4,5.6.7.8,10.0.0.7', 'x-forwarded-proto': 'https', forwarded: 'for=10.0.0.7;proto=http' },
    'one trusted hop: its x-forwarded-proto is kept; repeated x-forwarded-for fields joined');
  t.same(run({}, true, 0, '2001:db8::5'), { 'x-forwarded-for': '2001:db8::5', forwarded: 'for="[2001:db8::5]";proto=http', 'x-forwarded-proto': 'http' }, 'IPv6 quoted and bracketed in forwarded');
  t.same(run({ 'x-forwarded-for': '1.2.3.4', 'x-forwarded-proto': 'https' }, false, 0), { 'x-forwarded-for': '1.2.3.4', 'x-forwarded-proto': 'https' }, 'without useRemoteAddress: nothing appended, a present proto kept');
  t.same(run({}, false, 0), { 'x-forwarded-proto': 'http' }, 'without useRemoteAddress: x-forwarded-proto set when absent (as Envoy)');
});

const svc = (h: string): string => `services:\n  - name: web\n    vips: [127.100.0.1]\n    ports: [{port: 80}]\n    backends: [{address: 127.0.0.1, port: 8080}]\n    http:\n${h}\n`;

t.test('config: http.forwarded, its defaults and errors naming the field', async (t) => {
  const fw = (v: string): unknown => parseConfig(svc(`      forwarded: ${v}`), 'x.yaml').services[0]!.http!.forwarded;
  t.same(fw('{}'), { useRemoteAddress: true, trustedHops: 0 }, "'{}' = append the client, trust nobody");
  t.same(fw('{trustedHops: 2}'), { useRemoteAddress: true, trustedHops: 2 });
  t.same(fw('{useRemoteAddress: false}'), { useRemoteAddress: false, trustedHops: 0 });
  t.equal(parseConfig(svc('      failMode: closed'), 'x.yaml').services[0]!.http!.forwarded, undefined, 'absent: untouched headers');
  const errs = (v: string): string[] => {
    try { parseConfig(svc(`      forwarded: ${v}`), 'bad.yaml'); } catch (e) { if (e instanceof ConfigError) return e.issues.map((i) => `${i.path}: ${i.message}`); throw e; }
    return ['accepted'];
  };
  t.match(errs('{trustedHops: -1}'), [/^services\[0\]\.http\.forwarded\.trustedHops: /]);
  t.match(errs('{trustedHops: 17}'), [/^services\[0\]\.http\.forwarded\.trustedHops: .*16/]);
  t.match(errs('{useRemoteAddress: maybe}'), [/^services\[0\]\.http\.forwarded\.useRemoteAddress: /]);
  t.match(errs('{xffNumTrustedHops: 1}'), [/^services\[0\]\.http\.forwarded(\.xffNumTrustedHops)?: .*xffNumTrustedHops/]);
  t.match(errs('yes'), [/^services\[0\]\.http\.forwarded: /]);
});

function curl(args: string[]): Promise<string> {
  return new Promise((resolve) => {
    const p = spawn('curl', ['-sS', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    const timer = setTimeout(() => p.kill('SIGKILL'), 10_000);
    p.on('close', () => { clearTimeout(timer); resolve(out); });
  });
}

t.test('through the proxy: what an HTTP/1.1 and an HTTP/2 backend get from curl', async (t) => {
  let seen: IncomingHttpHeaders = {};
  const h1 = httpServer((req, res) => { seen = req.headers; req.resume(); res.end('ok'); });
  await new Promise<void>((r) => h1.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => { h1.closeAllConnections(); h1.close(); });
  const b2 = await h2Backend((st, h) => { seen = h; st.respond({ ':status': 200 }); st.end('ok'); });
  t.teardown(() => b2.close());
  const states = new BackendStates();
  t.teardown(() => states.close());
  const { log } = captureLog('warn');
  const pol = new ProxyPolicy({ states, log });
  const px = new ProxyServer({ policy: pol, log, originalDst: () => ({ vip: '127.100.0.1', port: 80, cgroupId: 5n }) });
  await px.listen(0, ['127.0.0.1']);
  t.teardown(() => px.close());
  const url = `http://127.0.0.1:${px.ports()[0]!}/`;
  const lie = ['-H', 'x-forwarded-for: 6.6.6.6', '-H', 'x-forwarded-proto: https'];
  for (const [proto, flags, port] of [['HTTP/1.1', [], (h1.address() as AddressInfo).port], ['HTTP/2', ['--http2-prior-knowledge'], b2.port]] as const) {
    const set = (f: unknown): void => pol.update(model(service('web', '127.100.0.1', 80, [backend(port)], http(f === undefined ? {} : { forwarded: f as never }))), () => undefined);
    set(undefined);
    t.equal(await curl([...flags, ...lie, url]), 'ok');
    t.same([seen['x-forwarded-for'], seen['x-forwarded-proto'], seen['forwarded']], ['6.6.6.6', 'https', undefined], `${proto}: no forwarded setting: untouched`);
    set({ useRemoteAddress: true, trustedHops: 0 });
    t.equal(await curl([...flags, ...lie, url]), 'ok');
    t.same([seen['x-forwarded-for'], seen['x-forwarded-proto'], seen['forwarded']], ['6.6.6.6,127.0.0.1', 'http', 'for=127.0.0.1;proto=http'], `${proto}: trust nobody: client appended, the https claim replaced`);
    set({ useRemoteAddress: true, trustedHops: 1 });
    t.equal(await curl([...flags, ...lie, url]), 'ok');
    t.same([seen['x-forwarded-for'], seen['x-forwarded-proto']], ['6.6.6.6,127.0.0.1', 'https'], `${proto}: one trusted hop: its x-forwarded-proto kept`);
  }
});
