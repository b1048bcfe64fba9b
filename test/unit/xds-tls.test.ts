// The agent's xDS connection over TLS: the control plane serves with a certificate, the agent verifies it with --xds-ca.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { XdsSource } from '../../agent/sources/xds/source.js';
import { modelFromObject } from '../../agent/model/config.js';
import type { Model } from '../../agent/model/types.js';
import { startControlPlaneFromModel } from '../../controlplane/server.js';

const log = pino({ level: 'silent' });

/** A throwaway self-signed certificate for 127.0.0.1 (openssl, as an operator would make one). */
function selfSigned(dir: string, name: string): { cert: string; key: string } {
  const cert = join(dir, `${name}.pem`), key = join(dir, `${name}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=sockmesh-test', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'ignore' });
  return { cert, key };
}

const model = modelFromObject({ services: [{ name: 'web', vips: ['127.77.7.1'], ports: [{ port: 80 }], backends: [{ address: '127.0.0.1', port: 8080 }] }] }, 'test');

t.test('TLS to the control plane, verified with a CA file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-tls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const server = selfSigned(dir, 'server');
  const other = selfSigned(dir, 'other');
  const cp = await startControlPlaneFromModel(model, { listen: '127.0.0.1:0', tls: server, log });
  t.teardown(() => cp.close());

  const applied: Model[] = [];
  const good = new XdsSource({
    address: `127.0.0.1:${cp.port}`, tls: { caFile: server.cert }, mode: 'delta', log,
    node: { id: 'tls-test', cluster: 'sockmesh', metadata: {} }, apply: (m) => { applied.push(m); return null; },
  });
  t.teardown(() => good.stop());
  good.start();
  const deadline = Date.now() + 10000;
  while (applied.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.equal(applied.length, 1, 'synced over TLS');
  t.same(applied[0]?.services.map((s) => s.name), ['web']);

  // The wrong CA: the handshake fails, nothing is applied, and the status says why.
  const refused: Model[] = [];
  const bad = new XdsSource({
    address: `127.0.0.1:${cp.port}`, tls: { caFile: other.cert }, mode: 'delta', log, backoff: { initialMs: 100, maxMs: 200 },
    node: { id: 'tls-test-bad', cluster: 'sockmesh', metadata: {} }, apply: (m) => { refused.push(m); return null; },
  });
  t.teardown(() => bad.stop());
  bad.start();
  const until = Date.now() + 10000;
  while (!bad.status().lastError && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  t.equal(refused.length, 0, 'nothing applied from an unverified server');
  t.not(bad.status().state, 'connected');
  t.ok(bad.status().lastError, `lastError: ${bad.status().lastError}`);
});
