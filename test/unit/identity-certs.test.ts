// The agent's certificate manager (agent/identity/certs.ts) against the real CA over the real gRPC API: issue,
// renewal at half life (seconds-long TTLs), a TLS 1.3 stream kept open across renewals and a bundle rotation, new
// handshakes presenting the new certificate, retries with backoff, a wrong answer from the CA refused, metrics.
import t, { type Test } from 'tap';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { Registry } from 'prom-client';
import type { Model } from '../../agent/model/types.js';
import { CertManager, type CertificateSource } from '../../agent/identity/certs.js';
import { secureContextFor } from '../../agent/identity/material.js';
import { CertificateAuthority } from '../../controlplane/ca.js';
import { NodeTokens } from '../../controlplane/ca-service.js';
import { startControlPlaneFromModel } from '../../controlplane/server.js';
import { CaClient } from '../../xds/ca.js';

const TD = 'cluster.local';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const API = `spiffe://${TD}/ns/shop/sa/api`;
const FOREIGN = `spiffe://${TD}/ns/shop/sa/db`;
const TOKEN = 'node-a-token-0123456789abcdef';
const log = pino({ level: 'silent' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

async function world(t: Test, certTtlS: number) {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-certs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const authority = await CertificateAuthority.fromDir({ dir: join(dir, 'ca'), trustDomain: TD, certTtlS });
  const model = { services: [], workloads: [
    { name: 'web', cgroups: [], identity: WEB, node: 'node-a' },
    { name: 'api', cgroups: [], identity: API, node: 'node-a' },
    { name: 'db', cgroups: [], identity: FOREIGN, node: 'node-b' },
  ] } as unknown as Model;
  const cp = await startControlPlaneFromModel(model, { listen: '127.0.0.1:0', log, ca: { authority, tokens: NodeTokens.parse(`${TOKEN} node-a\n`, 't') } });
  t.teardown(() => cp.close());
  const client = new CaClient({ address: `127.0.0.1:${cp.port}`, token: () => TOKEN });
  t.teardown(() => client.close());
  return { authority, cp, client };
}

t.test('issue, renew at half life, keep a TLS stream across renewals and a bundle rotation', async (t) => {
  const { authority, client } = await world(t, 4);
  const registry = new Registry();
  const certs = new CertManager({ ca: client, log, random: () => 0, bundleRefreshMs: 200, registry });
  t.teardown(() => certs.stop());
  const changes: string[] = [];
  const changedAt: number[] = [];
  certs.on('change', (id) => { changes.push(id); if (id === WEB) changedAt.push(Date.now()); });
  certs.setIdentities([WEB, API]);
  await certs.settled();
  const first = certs.get(WEB)!;
  t.ok(first, 'web has material');
  t.equal(new X509Certificate(first.chain.split(/(?<=-----END CERTIFICATE-----\n)/)[0]!).subjectAltName, `URI:${WEB}`);
  t.equal(first.chain.match(/BEGIN CERTIFICATE/g)!.length, 2, 'the chain presented is leaf + intermediate (no root)');
  t.same(certs.bundle(), authority.trustBundle().join(''), 'the bundle is the CA\'s');
  // X.509 times are whole seconds: the life left at receipt is 3-4 s, and renewal is due at half of it
  const issuedAt = changedAt[0]!;
  const lifeAtReceipt = first.notAfter.getTime() - issuedAt;
  t.ok(lifeAtReceipt > 2800 && lifeAtReceipt <= 4000, `4 s certificate (${lifeAtReceipt} ms left at receipt)`);

  // mutual TLS 1.3: the server presents web's material, the client api's; each side checks the other's URI SAN
  const seen: string[] = [];
  const server = createServer({
    SNICallback: (_name, cb) => cb(null, secureContextFor(certs.get(WEB)!)),
    ...{ key: first.key, cert: first.chain, ca: first.bundle },
    requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3',
  }, (s) => {
    seen.push(s.getPeerX509Certificate()!.subjectAltName!);
    s.pipe(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const dial = () => new Promise<TLSSocket>((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', servername: 'web', secureContext: secureContextFor(certs.get(API)!), checkServerIdentity: () => undefined });
    s.once('secureConnect', () => (s.authorized ? resolve(s) : reject(new Error(String(s.authorizationError)))));
    s.once('error', reject);
  });
  const stream = await dial();
  t.teardown(() => stream.destroy());
  t.equal(stream.getProtocol(), 'TLSv1.3');
  t.equal(stream.getPeerX509Certificate()!.subjectAltName, `URI:${WEB}`, 'the client sees web');
  let echoed = 0;
  stream.on('data', (d: Buffer) => { echoed += d.length; });
  const pump = setInterval(() => stream.write('x'.repeat(100)), 50);
  t.teardown(() => clearInterval(pump));

  // renewal at half life (random pinned to 0: exactly 0.5 of the 4 s)
  await until('the first renewal', () => certs.get(WEB)?.serial !== first.serial);
  // the request leaves at half life; the answer takes a CSR, a signature and a round trip (slow on a loaded machine)
  const renewedAfter = changedAt[1]! - issuedAt;
  t.ok(renewedAfter >= lifeAtReceipt / 2 - 50 && renewedAfter < lifeAtReceipt, `renewed at half life: ${renewedAfter} ms after receipt (half: ${lifeAtReceipt / 2})`);
  await until('api renewed too', () => certs.report().identities.every((i) => i.renewals >= 1 && i.state === 'issued'));
  t.not(certs.get(WEB)!.key, first.key, 'a new key with each renewal');
  t.ok(changes.includes(WEB), '\'change\' fired for web');

  // a bundle rotation: the new root reaches the manager before anything is issued under it
  const newRoot = await authority.rotate(1500);
  await until('the new bundle', () => certs.bundle()?.includes(newRoot) === true);
  t.ok(changes.includes(''), '\'change\' fired for the bundle');
  t.equal(certs.bundle()!.match(/BEGIN CERTIFICATE/g)!.length, 2, 'old and new roots during the rotation');
  const newRootCert = new X509Certificate(newRoot);
  await until('a certificate under the new root', () => {
    const m = certs.get(WEB);
    const inter = m && new X509Certificate(m.chain.split(/(?<=-----END CERTIFICATE-----\n)/)[1]!);
    return !!inter && inter.checkIssued(newRootCert);
  });
  t.pass('renewed under the new root');

  // the stream opened at the start is still up and echoing; a new handshake presents the current certificate
  const before = echoed;
  await sleep(300);
  t.ok(echoed > before, 'the first stream still echoes after renewals and the rotation');
  t.equal(stream.destroyed, false);
  const fresh = await dial();
  t.equal(fresh.getPeerX509Certificate()!.serialNumber, certs.get(WEB)!.serial, 'a new handshake presents the renewed certificate');
  // in TLS 1.3 the client is done before the server has read its Finished: wait for the server's side
  await until('the server\'s second handshake', () => seen.length >= 2);
  fresh.destroy();
  t.ok(seen.length >= 2 && seen.every((s) => s === `URI:${API}`), 'the server saw api as the client each time');

  const text = await registry.metrics();
  t.match(text, /sockmesh_certificates_issued_total 2/);
  t.match(text, /sockmesh_certificates_renewed_total [1-9]/);
  t.match(text, /sockmesh_certificate_expiry_seconds\{identity="spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web"\} [0-4]/);
  const r = certs.report();
  t.equal(r.bundle.length, 2);
  t.match(r.identities[0]!, { identity: API, state: 'issued', issuer: /sockmesh intermediate/ });

  // an identity leaving the node is dropped at once
  certs.setIdentities([API]);
  t.equal(certs.get(WEB), undefined, 'web dropped');
  t.same(certs.report().identities.map((i) => i.identity), [API]);
});

t.test('a foreign identity fails with the CA\'s reason and is retried with backoff', async (t) => {
  const { client } = await world(t, 60);
  const certs = new CertManager({ ca: client, log, backoff: { initialMs: 100, maxMs: 400 }, random: () => 1 });
  t.teardown(() => certs.stop());
  certs.setIdentities([FOREIGN, WEB]);
  await until('three failures', () => (certs.report().identities.find((i) => i.identity === FOREIGN)?.failures ?? 0) >= 3);
  const r = certs.report().identities.find((i) => i.identity === FOREIGN)!;
  t.equal(r.state, 'failed');
  t.match(r.lastError, /PERMISSION_DENIED: node node-a may not have spiffe:\/\/cluster\.local\/ns\/shop\/sa\/db/);
  t.equal(certs.get(FOREIGN), undefined);
  t.ok(certs.get(WEB), 'the other identity is unaffected');
  t.ok(certs.counts.failed >= 3 && certs.counts.issued === 1);
});

t.test('retries with growing backoff; a wrong answer from the CA is refused; the old certificate served meanwhile', async (t) => {
  const { client } = await world(t, 3);
  let mode: 'ok' | 'down' | 'wrong' = 'down';
  const attempts: number[] = [];
  const flaky: CertificateSource = {
    trustBundle: () => client.trustBundle(),
    createCertificate: async (csr, ttl) => {
      attempts.push(Date.now());
      if (mode === 'down') throw new Error('UNAVAILABLE: connection refused');
      if (mode === 'wrong') {
        // the leaf of an earlier answer (another key) in place of the one for this CSR
        const chain = await client.createCertificate(csr, ttl);
        return [wrongLeaf!, ...chain.slice(1)];
      }
      return client.createCertificate(csr, ttl);
    },
  };
  let wrongLeaf: string | undefined;
  const certs = new CertManager({ ca: flaky, log, backoff: { initialMs: 100, maxMs: 1000 }, random: () => 1 });
  t.teardown(() => certs.stop());
  certs.setIdentities([WEB]);
  await until('four attempts', () => attempts.length >= 4);
  const gaps = attempts.slice(1).map((a, i) => a - attempts[i]!);
  // Each gap is the backoff (100, 200, 400 ms: random pinned to 1) plus making a key and a CSR, which on a loaded
  // machine took up to ~110 ms (gaps 183, 213, 520 once): the backoff is checked as each gap's floor, its growth by
  // the last gap against the first.
  t.ok(gaps[0]! >= 95 && gaps[1]! >= 195 && gaps[2]! >= 395 && gaps[2]! > gaps[0]! + 150, `backoff grows, 100 -> 200 -> 400 ms at least: ${gaps.join(', ')} ms`);
  t.match(certs.report().identities[0], { state: 'failed', lastError: /UNAVAILABLE/ });
  mode = 'ok';
  await until('issued after the CA is back', () => !!certs.get(WEB), 5000);
  const good = certs.get(WEB)!;

  // the CA answers with a certificate for another key: refused, the current one stays until it expires
  wrongLeaf = good.chain.split(/(?<=-----END CERTIFICATE-----\n)/)[0]!;
  mode = 'wrong';
  await until('a refused renewal', () => /another key/.test(certs.report().identities[0]!.lastError ?? ''), 5000);
  t.equal(certs.get(WEB)?.serial, good.serial, 'the current certificate is still served');
  await until('expiry', () => certs.get(WEB) === undefined, 6000);
  t.pass('an expired certificate is no longer served');
  mode = 'ok';
  await until('issued again', () => !!certs.get(WEB), 5000);
  t.not(certs.get(WEB)!.serial, good.serial);
});
