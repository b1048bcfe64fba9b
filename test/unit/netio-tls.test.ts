// TLS 1.3 in the netio loop (NetTlsContext, NetConn.startTls; native/netio.cc on node's own OpenSSL) against
// independent peers on loopback: node:tls, python3's ssl and the openssl CLI (s_client / s_server -Verify 1), each
// with ECDSA P-256 certificates of a test CA. 8 MiB byte-exact both ways with half-close (our close_notify, then we
// keep reading); refusals with OpenSSL's reason as the error (wrong CA, no client certificate, a TLS 1.2-only peer,
// garbage, no ALPN h2) while the loop keeps serving a connection opened before them; the handshake timeout; rotation
// (new connections get the new context, a live one keeps the old); bad PEM input named.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer as netServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { NetConn, NetIo, NetTlsContext, type NetTlsError } from '../../agent/proxy/netio.js';
import type { TlsMaterial } from '../../agent/identity/material.js';
import { TestCa } from '../lib/certs.js';

const PY = '/usr/bin/python3';
const MiB8 = 8 * 1024 * 1024;
const SERVER_ID = 'spiffe://test.local/sockmesh/node/n2';
const CLIENT_ID = 'spiffe://test.local/ns/web/sa/client';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** every 'data' of a connection until 'end' (or 'close' / 'error': then whatever came) */
function readAll(c: NetConn | Socket): Promise<Buffer> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let done = false;
    const fin = (): void => { if (!done) { done = true; resolve(Buffer.concat(parts)); } };
    c.on('data', (d: Buffer) => parts.push(d));
    for (const ev of ['end', 'close', 'error']) c.on(ev, fin);
  });
}

function waitFor<T = void>(e: NodeJS.EventEmitter, name: string, ms = 15_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${name}' within ${ms} ms`)), ms);
    e.once(name, (v: T) => { clearTimeout(timer); resolve(v); });
  });
}

/** the first 'error' of a connection (rejects if it closes without one) */
function errorOf(c: NodeJS.EventEmitter, ms = 15_000): Promise<NetTlsError> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no 'error' within ${ms} ms`)), ms);
    c.once('error', (e: NetTlsError) => { clearTimeout(timer); resolve(e); });
    c.once('close', () => setTimeout(() => { clearTimeout(timer); reject(new Error('closed without an error')); }, 50));
  });
}

function uriOf(x: X509Certificate | undefined): string | undefined {
  return /URI:([^,]+)/.exec(x?.subjectAltName ?? '')?.[1];
}

/** a child process with its stdout collected as bytes (killed after ms) */
function run(cmd: string, args: string[], opts: { input?: Buffer | string; cwd?: string; ms?: number } = {}): Promise<{ code: number | null; out: Buffer; err: string }> {
  const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let err = '';
  child.stdout.on('data', (d: Buffer) => out.push(d));
  child.stderr.on('data', (d) => { err += d; });
  child.stdin.on('error', () => {});
  if (opts.input !== undefined) child.stdin.end(opts.input);
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.ms ?? 30_000);
  return new Promise((resolve) => child.on('close', (code) => { clearTimeout(timer); resolve({ code, out: Buffer.concat(out), err }); }));
}

const dir = mkdtempSync(join(tmpdir(), 'netio-tls-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const ca = await TestCa.create('netio-tls root');
const otherCa = await TestCa.create('some other root');
const server = await ca.issue(SERVER_ID);
const client = await ca.issue(CLIENT_ID);
const stranger = await otherCa.issue(CLIENT_ID); // the right identity, from a CA the bundle does not hold

function files(name: string, m: TlsMaterial): { cert: string; key: string; ca: string } {
  const f = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`), ca: join(dir, `${name}.ca`) };
  writeFileSync(f.cert, m.chain);
  writeFileSync(f.key, m.key, { mode: 0o600 });
  writeFileSync(f.ca, m.bundle);
  return f;
}
const serverFiles = files('server', server);
const clientFiles = files('client', client);

const serverCtx = new NetTlsContext({ role: 'server', ...server });
const clientCtx = new NetTlsContext({ role: 'client', ...client });

/** a NetIo TLS server on 127.0.0.1: onSecure gets each connection once its handshake is done; errors are collected */
function tlsServer(io: NetIo, ctx: () => NetTlsContext, onSecure: (c: NetConn) => void, handshakeTimeoutMs?: number): { port: number; errors: NetTlsError[]; nextError: () => Promise<NetTlsError> } {
  const errors: NetTlsError[] = [];
  const waiting: ((e: NetTlsError) => void)[] = [];
  const l = io.listen('127.0.0.1', 0, (c) => {
    c.startTls(ctx(), { handshakeTimeoutMs });
    c.once('secure', () => onSecure(c));
    c.on('error', (e: NetTlsError) => {
      if (c.secure) return;
      errors.push(e);
      waiting.shift()?.(e);
    });
  });
  return {
    port: l.port, errors,
    nextError: () => new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the server saw no handshake error in 15 s')), 15_000);
      waiting.push((e) => { clearTimeout(timer); resolve(e); });
    }),
  };
}

/**
 * A node:tls server (our CA's server certificate, client certificates required, ALPN h2) whose connections `send`
 * writes to, and a NetIo client connected to it with TLS: what the read-path tests receive from. Both go with `t`.
 */
async function fromNodeTls(t: Test, send: (s: tls.TLSSocket) => void): Promise<{ io: NetIo; c: NetConn }> {
  const srv = tls.createServer({ key: server.key, cert: server.chain, ca: ca.bundle, requestCert: true, ALPNProtocols: ['h2'] }, send);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => srv.close());
  const io = new NetIo();
  t.teardown(() => io.close());
  return { io, c: io.connect({ address: '127.0.0.1', port: (srv.address() as AddressInfo).port }).startTls(clientCtx) };
}

const echo = (c: NetConn): void => {
  c.on('data', (d: Buffer) => { if (!c.write(d)) { c.pause(); c.once('drain', () => c.resume()); } });
};

t.test('NetConn to NetConn: TLS 1.3, AES-128-GCM, ALPN h2, both chains verified and exposed; 8 MiB echoed byte-exact', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  let serverSide: NetConn | undefined;
  const srv = tlsServer(io, () => serverCtx, (c) => { serverSide = c; echo(c); });
  const c = io.connect({ address: '127.0.0.1', port: srv.port }).startTls(clientCtx, { servername: 'n2' });
  t.equal(c.encrypted, true, 'encrypted as soon as startTls was called');
  t.equal(c.alpnProtocol, false, 'no ALPN before the handshake');
  await waitFor(c, 'secure');
  t.equal(c.getProtocol(), 'TLSv1.3');
  t.same(c.getCipher(), { name: 'TLS_AES_128_GCM_SHA256', version: 'TLSv1.3' }, 'AES-128-GCM is chosen first');
  t.equal(c.alpnProtocol, 'h2');
  t.equal(c.authorized, true);
  t.equal(uriOf(c.getPeerX509Certificate()), SERVER_ID, 'the client sees the server\'s SPIFFE id');
  t.equal(c.getPeerCertificates().length, 1, 'the chain the server presented (a leaf of the root)');
  t.ok(new X509Certificate(c.getPeerCertificates()[0]!).checkIssued(new X509Certificate(ca.bundle)), 'DER of a leaf the root issued');
  const data = randomBytes(MiB8);
  const got = readAll(c);
  const closed = waitFor(c, 'close', 30_000);
  // in pieces of every size, so that records and the queue's coalescing both get exercised
  for (let off = 0, i = 0; off < data.length; i++) {
    const n = Math.min([1, 100, 16384, 70_000, 1 << 20][i % 5]!, data.length - off);
    c.write(data.subarray(off, off + n));
    off += n;
  }
  c.end();
  const back = await got;
  t.equal(back.length, data.length, '8 MiB back');
  t.equal(sha(back), sha(data), 'byte-exact');
  t.ok(serverSide, 'the server side was secure');
  t.equal(uriOf(serverSide!.getPeerX509Certificate()), CLIENT_ID, 'the server sees the client\'s SPIFFE id');
  t.equal(serverSide!.alpnProtocol, 'h2');
  await closed;
  await new Promise((r) => setTimeout(r, 20)); // the server side's 'close' follows its own end
  t.equal(io.openCount(), 1, 'both ends closed after the close_notify exchange: only the listener is left');
});

t.test('TLS reads are handed on without a copy: views of 1 MiB slabs the loop never writes again, small reads copied', async (t) => {
  // node:tls as the sender (its 16 KiB records, many per wake when the receiver lags): the NetConn receives 8 MiB and
  // keeps every chunk to the end, so a slab the loop wrote into twice would show as bytes changed under a kept chunk
  const data = randomBytes(MiB8);
  // 100 bytes alone first (a read that small is copied), then the rest
  const { c } = await fromNodeTls(t, (s) => {
    s.write(data.subarray(0, 100));
    setTimeout(() => s.end(data.subarray(100)), 100);
  });
  const chunks: Buffer[] = [];
  c.on('data', (d: Buffer) => chunks.push(d));
  await waitFor(c, 'end', 30_000);
  t.equal(sha(Buffer.concat(chunks)), sha(data), '8 MiB byte-exact, every chunk kept to the end');
  const big = chunks.filter((d) => d.length > 4096), small = chunks.filter((d) => d.length <= 4096);
  t.ok(big.length > 0, `reads over 4 KiB came (${big.length} of ${chunks.length})`);
  t.equal(big.filter((d) => d.buffer.byteLength === 1024 * 1024).length, big.length, 'every read over 4 KiB is a view of a 1 MiB slab (a copy would be a buffer of its own size)');
  const slabs = new Set(big.map((d) => d.buffer));
  t.ok(slabs.size >= 8, `8 MiB went through ${slabs.size} slabs: a used one is replaced, not rewritten`);
  t.ok(small.length >= 1, `reads of 4 KiB or less came (${small.length})`);
  t.equal(small.filter((d) => d.buffer.byteLength === 1024 * 1024).length, 0, 'none of them holds a slab');
  c.destroy();
});

t.test('returnsTlsReads: slabs whose views all came back are filled again; a view kept keeps its slab unwritten', async (t) => {
  // 16 MiB: each chunk is hashed and given back at once (the tunnel's HTTP/2 session does so once a read's DATA went
  // to the splices), except one chunk over 4 KiB, kept to the end with a copy of its bytes
  const data = randomBytes(2 * MiB8);
  const { io, c } = await fromNodeTls(t, (s) => s.end(data));
  c.returnsTlsReads = true;
  const h = createHash('sha256');
  const slabs = new Set<ArrayBufferLike>();
  let kept: Buffer | undefined, keptCopy: Buffer | undefined, big = 0;
  c.on('data', (d: Buffer) => {
    h.update(d);
    if (d.length <= 4096) { c.recycle(d); return; }
    slabs.add(d.buffer);
    if (++big === 3) { kept = d; keptCopy = Buffer.from(d); return; }
    c.recycle(d);
    c.recycle(d); // a second give-back of the same chunk is ignored (the slab's count stays right)
  });
  await waitFor(c, 'end', 30_000);
  t.equal(h.digest('hex'), sha(data), '16 MiB byte-exact');
  t.ok(big > 16, `reads over 4 KiB came (${big})`);
  t.ok(slabs.size <= 3, `16 MiB went through ${slabs.size} slabs (without recycle(): 16 or more)`);
  t.ok(kept !== undefined && kept.equals(keptCopy!), 'the chunk kept (not given back) was never written over');
  c.destroy();
});

t.test('returnsTlsReads: a slab whose views were never given back goes to the GC once they are gone', async (t) => {
  // a listener that gives no read back and keeps none (the session's reads whose DATA went to a handler that may keep
  // it: TunnelClient.connect()'s streams): the slabs' counts never come back to 0, and the loop must not hold them
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const data = randomBytes(4 * 1024 * 1024);
  const { io, c } = await fromNodeTls(t, (s) => s.end(data));
  c.returnsTlsReads = true;
  const h = createHash('sha256');
  let first: WeakRef<ArrayBufferLike> | undefined;
  c.on('data', (d: Buffer) => {
    h.update(d);
    if (d.length > 4096 && first === undefined) first = new WeakRef(d.buffer);
  });
  await waitFor(c, 'end', 30_000);
  t.equal(h.digest('hex'), sha(data), '4 MiB byte-exact');
  t.ok(first !== undefined, 'reads over 4 KiB came (views of a slab)');
  c.destroy();
  for (let i = 0; i < 10 && first!.deref() !== undefined; i++) {
    await new Promise((r) => setTimeout(r, 20));
    gc();
  }
  t.equal(first!.deref(), undefined, 'the first slab (retired, its views gone) was collected while the loop lives on');
  t.notOk(io.isClosed, 'the loop is still open');
});

t.test('NetConn client, node:tls server (requestCert, rejectUnauthorized): 8 MiB each way, the server answers after our close_notify', async (t) => {
  const sent = randomBytes(MiB8), answer = randomBytes(MiB8);
  let peerId: string | undefined;
  let serverGot = '';
  const srv = tls.createServer({
    key: server.key, cert: server.chain, ca: ca.bundle, requestCert: true, rejectUnauthorized: true,
    minVersion: 'TLSv1.3', ALPNProtocols: ['h2'], allowHalfOpen: true,
  }, (s) => {
    peerId = uriOf(s.getPeerX509Certificate());
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('end', () => { serverGot = sha(Buffer.concat(parts)); s.end(answer); });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => srv.close());
  const io = new NetIo();
  t.teardown(() => io.close());
  const c = io.connect({ address: '127.0.0.1', port: (srv.address() as AddressInfo).port }).startTls(clientCtx);
  const got = readAll(c);
  c.write(sent); // before 'secure': held until the handshake is done
  c.end();
  const back = await got;
  t.equal(serverGot, sha(sent), 'node:tls received our 8 MiB, then our close_notify as its end');
  t.equal(back.length, answer.length, 'then we read its 8 MiB after our own close_notify');
  t.equal(sha(back), sha(answer), 'byte-exact');
  t.equal(peerId, CLIENT_ID, 'node:tls verified our certificate and saw our SPIFFE id');
});

t.test('node:tls client to a NetConn server: 8 MiB echoed, the client half-closes and still gets everything', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const srv = tlsServer(io, () => serverCtx, echo);
  const data = randomBytes(MiB8);
  const s = tls.connect({
    host: '127.0.0.1', port: srv.port, key: client.key, cert: client.chain, ca: ca.bundle, ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.3', checkServerIdentity: () => undefined,
    // node passes it on to the TLSSocket (our close_notify must not end its reading); @types/node lacks it
    ...{ allowHalfOpen: true },
  });
  await waitFor(s, 'secureConnect');
  t.equal(s.alpnProtocol, 'h2');
  t.equal(s.getCipher().name, 'TLS_AES_128_GCM_SHA256', 'the server\'s preference: AES-128-GCM');
  t.equal(uriOf(s.getPeerX509Certificate()), SERVER_ID);
  const got = readAll(s);
  s.end(data);
  const back = await got;
  t.equal(sha(back), sha(data), '8 MiB byte-exact');
  s.destroy();
});

t.test('python3 ssl client with a client certificate to a NetConn server: 8 MiB each way', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const peers: (string | undefined)[] = [];
  const srv = tlsServer(io, () => serverCtx, (c) => { peers.push(uriOf(c.getPeerX509Certificate())); echo(c); });
  const py = `
import hashlib, os, select, socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_verify_locations(sys.argv[2]); ctx.check_hostname = False
ctx.load_cert_chain(sys.argv[3], sys.argv[4]); ctx.set_alpn_protocols(['h2'])
s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))))
data = os.urandom(8 << 20)
# Sends and reads as they can, as a client of an echo must: an echo that waits for its peer to read (backpressure)
# and a client that sends all 8 MiB before reading wait on each other once the socket buffers are full (seen in CI).
s.setblocking(False)
sent = 0
got = bytearray()
while len(got) < len(data):
    if sent < len(data):
        try: sent += s.send(data[sent:sent + (256 << 10)])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError): pass
    try:
        b = s.recv(1 << 20)
        if not b: break
        got += b
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        select.select([s], [s] if sent < len(data) else [], [], 1)
print(s.version(), s.cipher()[0], s.selected_alpn_protocol(), hashlib.sha256(data).hexdigest() == hashlib.sha256(got).hexdigest(), len(got))
s.close()
`;
  const r = await run(PY, ['-c', py, String(srv.port), serverFiles.ca, clientFiles.cert, clientFiles.key]);
  t.equal(r.code, 0, r.err);
  t.equal(r.out.toString().trim(), `TLSv1.3 TLS_AES_128_GCM_SHA256 h2 True ${MiB8}`, 'python: TLS 1.3, AES-128-GCM, h2, 8 MiB echoed byte-exact');
  t.same(peers, [CLIENT_ID], 'we verified python\'s certificate');
});

t.test('NetConn client to a python3 ssl server (CERT_REQUIRED): our close_notify is its EOF, its 8 MiB come after', async (t) => {
  const py = `
import hashlib, socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(sys.argv[1]); ctx.load_cert_chain(sys.argv[2], sys.argv[3]); ctx.set_alpn_protocols(['h2'])
l = socket.create_server(('127.0.0.1', 0))
print(l.getsockname()[1], flush=True)
c, _ = l.accept()
s = ctx.wrap_socket(c, server_side=True)
h = hashlib.sha256(); n = 0
while True:
    b = s.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
peer = [v for k, v in s.getpeercert()['subjectAltName'] if k == 'URI'][0]
s.sendall(f'{n} {h.hexdigest()} {peer}\\n'.encode() + bytes(range(256)) * (1 << 15))
s.unwrap(); s.close()
`;
  const child = spawn(PY, ['-c', py, serverFiles.ca, serverFiles.cert, serverFiles.key], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => child.kill());
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const port = Number(await new Promise<string>((r) => child.stdout.once('data', (d: Buffer) => r(d.toString()))));
  const io = new NetIo();
  t.teardown(() => io.close());
  const c = io.connect({ address: '127.0.0.1', port }).startTls(clientCtx);
  await waitFor(c, 'secure');
  t.equal(uriOf(c.getPeerX509Certificate()), SERVER_ID);
  const data = randomBytes(MiB8);
  const got = readAll(c);
  c.write(data);
  c.end();
  const back = await got;
  const nl = back.indexOf(10);
  t.equal(back.subarray(0, nl).toString(), `${MiB8} ${sha(data)} ${CLIENT_ID}`, 'python read our 8 MiB to our close_notify and saw our id');
  const expected = Buffer.alloc(MiB8);
  for (let i = 0; i < MiB8; i++) expected[i] = i & 0xff;
  t.equal(sha(back.subarray(nl + 1)), sha(expected), 'its 8 MiB came after, byte-exact');
  t.equal(back.length - nl - 1, MiB8);
  t.notMatch(stderr, /Error/, stderr);
});

t.test('openssl s_client (client certificate) to a NetConn server: 8 MiB each way', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const answer = randomBytes(MiB8);
  const got: Buffer[] = [];
  let received = 0;
  let serverHash = '';
  const srv = tlsServer(io, () => serverCtx, (c) => {
    c.on('data', (d: Buffer) => {
      got.push(d);
      received += d.length;
      // s_client keeps reading after its stdin ended (-quiet implies -ign_eof): answer once all came, then close_notify
      if (received === MiB8) { serverHash = sha(Buffer.concat(got)); c.write(answer); c.end(); }
    });
  });
  const input = randomBytes(MiB8);
  const r = await run('openssl', ['s_client', '-quiet', '-connect', `127.0.0.1:${srv.port}`, '-tls1_3', '-alpn', 'h2',
    '-cert', clientFiles.cert, '-key', clientFiles.key, '-CAfile', serverFiles.ca, '-verify_return_error'], { input });
  t.equal(serverHash, sha(input), 'we received s_client\'s 8 MiB byte-exact');
  t.equal(r.out.length, MiB8, `s_client printed our 8 MiB (${r.err.trim().split('\n').slice(-1)[0] ?? ''})`);
  t.equal(sha(r.out), sha(answer), 'byte-exact');
});

t.test('NetConn client to openssl s_server -Verify 1 -WWW: a file of 8 MiB byte-exact, our certificate required', async (t) => {
  const body = randomBytes(MiB8);
  writeFileSync(join(dir, 'file.bin'), body);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const child = spawn('openssl', ['s_server', '-accept', `127.0.0.1:${port}`, '-tls1_3', '-alpn', 'h2', '-Verify', '1',
    '-verify_return_error', '-cert', serverFiles.cert, '-key', serverFiles.key, '-CAfile', serverFiles.ca, '-WWW', '-naccept', '2'],
  { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => child.kill());
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  await new Promise<void>((resolve) => child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('ACCEPT')) resolve(); }));
  const io = new NetIo();
  t.teardown(() => io.close());
  const c = io.connect({ address: '127.0.0.1', port }).startTls(clientCtx);
  const got = readAll(c);
  c.write('GET /file.bin HTTP/1.0\r\n\r\n');
  await waitFor(c, 'secure');
  t.equal(c.alpnProtocol, 'h2');
  const back = await got;
  const head = back.indexOf('\r\n\r\n');
  t.match(back.subarray(0, head).toString(), /^HTTP\/1\.0 200 ok/, `s_server answered (${err.trim()})`);
  t.equal(sha(back.subarray(head + 4)), sha(body), '8 MiB byte-exact');

  // the same server refuses a context whose certificate it cannot verify
  const bad = io.connect({ address: '127.0.0.1', port }).startTls(new NetTlsContext({ role: 'client', ...stranger, bundle: ca.bundle }));
  bad.write('GET /file.bin HTTP/1.0\r\n\r\n');
  const e = await errorOf(bad);
  t.match(e.message, /alert/, `s_server refused a certificate of another CA: ${e.message}`);
});

t.test('refused with OpenSSL\'s reason, and the loop keeps serving a connection opened before', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const srv = tlsServer(io, () => serverCtx, echo);
  // a good connection first: it must keep working while the others are refused
  const good = io.connect({ address: '127.0.0.1', port: srv.port }).startTls(clientCtx);
  await waitFor(good, 'secure');
  const ping = async (label: string): Promise<void> => {
    const msg = randomBytes(100_000);
    const parts: Buffer[] = [];
    let n = 0;
    const back = new Promise<void>((resolve) => {
      const on = (d: Buffer): void => { parts.push(d); n += d.length; if (n >= msg.length) { good.off('data', on); resolve(); } };
      good.on('data', on);
    });
    good.write(msg);
    await back;
    t.equal(sha(Buffer.concat(parts)), sha(msg), `the earlier connection still echoes (${label})`);
  };

  // a client certificate of another CA (node:tls client)
  let e = srv.nextError();
  const s1 = tls.connect({ host: '127.0.0.1', port: srv.port, key: stranger.key, cert: stranger.chain, ca: ca.bundle, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
  s1.on('error', () => {});
  let got = await e;
  t.equal(got.code, 'ERR_SSL_CERTIFICATE_VERIFY_FAILED', got.message);
  t.match(got.message, /^TLS handshake from 127\.0\.0\.1:\d+ failed: certificate verify failed \(unable to get local issuer certificate\)$/);
  await ping('after a wrong CA');

  // no client certificate (python)
  e = srv.nextError();
  const py = `
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.load_verify_locations(sys.argv[2]); ctx.check_hostname = False
s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))))
try:
    s.recv(10); print('no error')
except ssl.SSLError as e:
    print(e.reason)
`;
  const r = await run(PY, ['-c', py, String(srv.port), serverFiles.ca]);
  got = await e;
  t.equal(got.code, 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE', got.message);
  t.equal(r.out.toString().trim(), 'TLSV13_ALERT_CERTIFICATE_REQUIRED', 'python was told: certificate required');
  await ping('after no client certificate');

  // a TLS 1.2-only peer (openssl s_client)
  e = srv.nextError();
  const r2 = await run('openssl', ['s_client', '-connect', `127.0.0.1:${srv.port}`, '-tls1_2', '-cert', clientFiles.cert, '-key', clientFiles.key], { input: '' });
  got = await e;
  t.equal(got.code, 'ERR_SSL_UNSUPPORTED_PROTOCOL', got.message);
  t.match(r2.err, /alert protocol version|tlsv1 alert/, 's_client was told');
  await ping('after TLS 1.2');

  // garbage: an HTTP request on the TLS port
  e = srv.nextError();
  const raw = netConnect(srv.port, '127.0.0.1', () => raw.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  raw.on('error', () => {});
  got = await e;
  t.match(got.code, /^ERR_SSL_(HTTP_REQUEST|WRONG_VERSION_NUMBER|PACKET_LENGTH_TOO_LONG)$/, got.message);
  raw.destroy();
  await ping('after garbage');

  // a client that offers another protocol, and one that offers none
  e = srv.nextError();
  const s2 = tls.connect({ host: '127.0.0.1', port: srv.port, key: client.key, cert: client.chain, ca: ca.bundle, ALPNProtocols: ['http/1.1'], checkServerIdentity: () => undefined });
  s2.on('error', () => {});
  got = await e;
  t.equal(got.code, 'ERR_SSL_NO_APPLICATION_PROTOCOL', got.message);
  e = srv.nextError();
  const s3 = tls.connect({ host: '127.0.0.1', port: srv.port, key: client.key, cert: client.chain, ca: ca.bundle, checkServerIdentity: () => undefined });
  s3.on('error', () => {});
  got = await e;
  t.equal(got.code, 'ERR_TLS_NO_APPLICATION_PROTOCOL', got.message);
  s3.destroy();
  await ping('after no ALPN');

  // our client: a server of another CA
  const other = tls.createServer({ key: stranger.key, cert: stranger.chain, ALPNProtocols: ['h2'] });
  other.on('tlsClientError', () => {});
  await new Promise<void>((r) => other.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => other.close());
  const c = io.connect({ address: '127.0.0.1', port: (other.address() as AddressInfo).port }).startTls(clientCtx);
  got = await errorOf(c);
  t.equal(got.code, 'ERR_SSL_CERTIFICATE_VERIFY_FAILED', got.message);
  t.match(got.message, /^TLS handshake with 127\.0\.0\.1:\d+ failed: certificate verify failed/);
  await ping('after our own refusal');
  t.equal(srv.errors.length, 6, 'six refusals, each one error');
  good.end();
  await waitFor(good, 'close');
});

t.test('the handshake is bounded: a silent client and a half ClientHello are cut at the timeout', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const srv = tlsServer(io, () => serverCtx, echo, 300);
  const started = performance.now();
  const silent = netConnect(srv.port, '127.0.0.1');
  silent.on('error', () => {});
  const e1 = await srv.nextError();
  t.equal(e1.code, 'ERR_TLS_HANDSHAKE_TIMEOUT', e1.message);
  t.match(e1.message, /not done in 300 ms/);
  const took = performance.now() - started;
  t.ok(took >= 290 && took < 3000, `cut after ${took.toFixed(0)} ms`);
  await waitFor(silent, 'close');
  t.pass('the silent client saw its connection closed');
  // the first bytes of a ClientHello, then nothing
  const half = netConnect(srv.port, '127.0.0.1', () => half.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])));
  half.on('error', () => {});
  const e2 = await srv.nextError();
  t.equal(e2.code, 'ERR_TLS_HANDSHAKE_TIMEOUT', e2.message);
  await waitFor(half, 'close');
  t.equal(io.openCount(), 1, 'both fds are closed: only the listener is left');
  // a client of ours against a server that never answers
  const mute = await new Promise<{ port: number; close(): void }>((resolve) => {
    const socks: Socket[] = [];
    const s = netServer((x: Socket) => socks.push(x));
    s.listen(0, '127.0.0.1', () => resolve({ port: (s.address() as AddressInfo).port, close: () => { for (const x of socks) x.destroy(); s.close(); } }));
  });
  t.teardown(() => mute.close());
  const c = io.connect({ address: '127.0.0.1', port: mute.port }).startTls(clientCtx, { handshakeTimeoutMs: 200 });
  const e3 = await errorOf(c);
  t.equal(e3.code, 'ERR_TLS_HANDSHAKE_TIMEOUT');
  t.match(e3.message, /^TLS handshake with 127\.0\.0\.1:\d+ not done in 200 ms$/);
});

t.test('rotation: new connections use the new context, a live connection keeps the old one', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const ca2 = await TestCa.create('next root');
  const both = ca.bundle + ca2.bundle;
  let current = serverCtx;
  const srv = tlsServer(io, () => current, echo);
  const old = io.connect({ address: '127.0.0.1', port: srv.port }).startTls(clientCtx);
  await waitFor(old, 'secure');
  const oldSerial = old.getPeerX509Certificate()!.serialNumber;
  t.equal(oldSerial, server.serial);
  // a client of the new root is refused by the old context
  const ca2Client = await ca2.issue(CLIENT_ID);
  const early = io.connect({ address: '127.0.0.1', port: srv.port }).startTls(new NetTlsContext({ role: 'client', ...ca2Client, bundle: both }));
  const eEarly = srv.nextError();
  await errorOf(early);
  t.equal((await eEarly).code, 'ERR_SSL_CERTIFICATE_VERIFY_FAILED', 'before the rotation the new root is not trusted');
  // rotate: a new leaf from the new root, both roots trusted
  const next = await ca2.issue(SERVER_ID);
  current = new NetTlsContext({ role: 'server', ...next, bundle: both });
  const fresh = io.connect({ address: '127.0.0.1', port: srv.port }).startTls(new NetTlsContext({ role: 'client', ...ca2Client, bundle: both }));
  await waitFor(fresh, 'secure');
  t.equal(fresh.getPeerX509Certificate()!.serialNumber, next.serial, 'a new connection gets the new certificate');
  const oldClient = io.connect({ address: '127.0.0.1', port: srv.port }).startTls(clientCtx);
  const eOld = await errorOf(oldClient);
  t.equal(eOld.code, 'ERR_SSL_CERTIFICATE_VERIFY_FAILED', 'a client that trusts only the old root cannot verify the new leaf');
  // the live connection still echoes, with its old certificate
  const msg = randomBytes(1 << 20);
  const parts: Buffer[] = [];
  let n = 0;
  const back = new Promise<void>((resolve) => old.on('data', (d: Buffer) => { parts.push(d); n += d.length; if (n >= msg.length) resolve(); }));
  old.write(msg);
  await back;
  t.equal(sha(Buffer.concat(parts)), sha(msg), 'the connection made before the rotation still carries 1 MiB');
  t.equal(old.getPeerX509Certificate()!.serialNumber, oldSerial);
  current.native.free(); // freed while nothing else uses it: connections hold their own reference
  old.destroy();
  fresh.destroy();
});

t.test('pause/resume on a TLS connection loses nothing (records OpenSSL holds are delivered after resume)', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  // bursts the client acknowledges: at the end of each the kernel has nothing more, so a record OpenSSL read ahead
  // (read_ahead, 256 KiB) and a paused reader did not take comes only if resume() looks at SSL_has_pending
  const sizes = [1 << 20, 777_777, 3 << 20, 300_001, 2 << 20, 65_537, 1 << 20, 1_500_000];
  const data = randomBytes(sizes.reduce((a, b) => a + b, 0));
  const srv = tlsServer(io, () => serverCtx, (c) => {
    let at = 0, i = 0;
    const burst = (): void => { if (i < sizes.length) { c.write(data.subarray(at, at + sizes[i]!)); at += sizes[i++]!; } };
    c.on('data', burst); // each 1-byte acknowledgement asks for the next
    burst();
  });
  const c = io.connect({ address: '127.0.0.1', port: srv.port }).startTls(clientCtx);
  const parts: Buffer[] = [];
  let n = 0, pauses = 0, next = 0, acked = 0;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`stalled at ${n} of ${data.length} bytes (burst ${acked})`)), 20_000);
    c.on('data', (d: Buffer) => {
      parts.push(d);
      n += d.length;
      let wait = 5;
      // the next burst arrives while we are paused: it is all in the kernel (and OpenSSL's read-ahead) at resume
      while (acked < sizes.length && n >= next + sizes[acked]!) { next += sizes[acked++]!; c.write('a'); wait = 40; }
      if (n >= data.length) { clearTimeout(timer); resolve(); return; }
      // paused across the loop's next wakes: what OpenSSL holds waits for resume()
      c.pause();
      pauses++;
      setTimeout(() => c.resume(), wait);
    });
  });
  t.equal(sha(Buffer.concat(parts)), sha(data), `${(data.length / 1048576).toFixed(1)} MiB in ${sizes.length} bursts byte-exact through ${pauses} pauses`);
  c.destroy();
});

t.test('records OpenSSL read ahead when the shared arena ran out are delivered (epoll cannot see them)', async (t) => {
  // 24 connections whose data all waits in the kernel when they resume together: one wake reads them in turn into
  // the loop's 1 MiB slab (TLS reads go there, not the arena), which runs out part-way; the socket it ran out on has the rest of its bytes in OpenSSL's
  // buffer and none in the kernel, so only the loop's own wake-up (the eventfd) delivers them
  const N = 24, SIZE = 60_000;
  const payload = randomBytes(SIZE);
  // no end: a FIN would keep the socket readable for epoll and hide a missed wake-up
  const held: tls.TLSSocket[] = [];
  const srv = tls.createServer({ key: server.key, cert: server.chain, ca: ca.bundle, requestCert: true, ALPNProtocols: ['h2'] }, (s) => { held.push(s); s.write(payload); });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => { for (const s of held) s.destroy(); srv.close(); });
  const port = (srv.address() as AddressInfo).port;
  const io = new NetIo();
  t.teardown(() => io.close());
  const conns = await Promise.all(Array.from({ length: N }, async () => {
    const c = io.connect({ address: '127.0.0.1', port }).startTls(clientCtx);
    await waitFor(c, 'secure');
    c.pause();
    return c;
  }));
  await new Promise((r) => setTimeout(r, 200)); // every server has written its 60 kB by now
  const got = conns.map((c) => new Promise<Buffer>((resolve) => {
    const parts: Buffer[] = [];
    let n = 0;
    c.on('data', (d: Buffer) => { parts.push(d); n += d.length; if (n >= SIZE) resolve(Buffer.concat(parts)); });
  }));
  for (const c of conns) c.resume();
  const all = await Promise.race([Promise.all(got), new Promise<null>((r) => setTimeout(() => r(null), 10_000))]);
  t.ok(all, 'every connection got all its data');
  t.equal(all?.filter((b) => sha(b) === sha(payload)).length, N, `${N} x ${SIZE} bytes byte-exact`);
});

t.test('many handshakes at once on one loop', async (t) => {
  const io = new NetIo();
  t.teardown(() => io.close());
  const srv = tlsServer(io, () => serverCtx, echo);
  const N = 64;
  const results = await Promise.all(Array.from({ length: N }, async () => {
    const c = io.connect({ address: '127.0.0.1', port: srv.port }).startTls(clientCtx);
    const msg = randomBytes(64 * 1024);
    const got = readAll(c);
    c.write(msg);
    c.end();
    return sha(await got) === sha(msg);
  }));
  t.equal(results.filter(Boolean).length, N, `${N} connections, each 64 KiB echoed`);
  await new Promise((r) => setTimeout(r, 50));
  t.equal(io.openCount(), 1, 'every connection closed');
});

t.test('bad context input is refused naming what is wrong; startTls refuses what it cannot do', async (t) => {
  const other = await ca.issue('spiffe://test.local/ns/x/sa/y');
  t.throws(() => new NetTlsContext({ role: 'server', ...server, key: other.key }), /netio TLS context \(server\): the key does not match the chain's first certificate/);
  t.throws(() => new NetTlsContext({ role: 'server', ...server, chain: 'not a pem' }), /the certificate chain has no PEM certificate/);
  t.throws(() => new NetTlsContext({ role: 'client', ...server, key: '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n' }), /netio TLS context \(client\): the key is not a PEM private key/);
  t.throws(() => new NetTlsContext({ role: 'server', ...server, bundle: 'nothing' }), /the trust bundle has no PEM certificate/);
  t.throws(() => new NetTlsContext({ role: 'server', ...server, bundle: '' }), /bundle must be a non-empty PEM string/);
  t.throws(() => new NetTlsContext({ role: 'peer' as 'server', ...server }), /role must be 'server' or 'client'/);
  t.throws(() => new NetTlsContext({ role: 'server', ...server, alpn: [''] }), /alpn\[0\] must be a protocol name/);
  const io = new NetIo();
  t.teardown(() => io.close());
  const srv = tlsServer(io, () => serverCtx, echo);
  const c = io.connect({ address: '127.0.0.1', port: srv.port });
  t.throws(() => c.startTls({} as NetTlsContext), /ctx must be a NetTlsContext/);
  c.startTls(clientCtx);
  t.throws(() => c.startTls(clientCtx), /is TLS already/);
  await waitFor(c, 'secure');
  t.throws(() => c.release(), /TLS connection/, 'a TLS connection cannot be handed to node:net');
  c.destroy();
});

