// HBONE interop with an independent client (issue 13): python3-h2 over Python's ssl (OpenSSL), in node n1's network
// namespace as another node's agent would be, opens an HTTP/2 CONNECT through node n2's 15008 (across the cluster's
// veths) to a pod on n2 and talks to it; without a client certificate, with another CA's, with an expired one, or as
// an identity the policy denies, it is refused, and so is a CONNECT to a pod of another node. The server is the
// compiled agent/tunnel/ in n2's namespace (test/lib/tunnelnode.ts); sockmesh's own client is test/unit/tunnel.test.ts.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kernelSkipReason, testCgroup } from '../lib/kernel.js';
import { testCluster } from '../lib/cluster.js';
import { TestCa } from '../lib/certs.js';
import { startTunnelNode } from '../lib/tunnelnode.js';
import type { TlsMaterial } from '../../agent/identity/material.js';

const skip = kernelSkipReason()
  ?? (spawnSync('/usr/bin/python3', ['-c', 'import h2']).status === 0 ? null : 'python3-h2 is not installed (apt-get install python3-h2)');
if (skip) t.comment(`kernel tests skipped: ${skip}`);

const TD = 'cluster.local';
const NODE2 = `spiffe://${TD}/sockmesh/node/n2`;
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const INTRUDER = `spiffe://${TD}/ns/shop/sa/intruder`;

// An echo pod: on each connection, reads to the client's FIN and answers "echo:<what it read>" (half-close).
const ECHO = `import socket, threading
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::', 7070)); s.listen(64)
def serve(c):
    b = b''
    while True:
        d = c.recv(65536)
        if not d: break
        b += d
    c.sendall(b'echo:' + b); c.close()
print('ready', flush=True)
while True:
    c, a = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()`;

// The independent client: python3-h2 over ssl. One CONNECT, the payload with END_STREAM, then everything the stream
// answers. Prints one JSON line: the status, the body, the server's SPIFFE id; or the error that ended it.
const H2CLIENT = `import json, socket, ssl, sys
import h2.config, h2.connection, h2.events
host, port, authority, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
payload = sys.argv[7].encode()
out = {'status': None, 'body': '', 'ended': None}
try:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(['h2'])
    ctx.check_hostname = False   # the server is named by a SPIFFE URI SAN, checked below, not by a host name
    ctx.load_verify_locations(ca)
    if cert: ctx.load_cert_chain(cert, key)
    tls = ctx.wrap_socket(socket.create_connection((host, port), timeout=5))
    out['alpn'] = tls.selected_alpn_protocol(); out['tls'] = tls.version()
    out['server'] = [v for k, v in tls.getpeercert().get('subjectAltName', ()) if k == 'URI']
    # h2 4.1 wants :path on every request, CONNECT included (RFC 9113 8.5 forbids it there): its outbound check is off,
    # so that the request is exactly HBONE's
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding='utf-8', validate_outbound_headers=False))
    conn.initiate_connection(); tls.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(':method', 'CONNECT'), (':authority', authority)])
    tls.sendall(conn.data_to_send())
    done = False
    while not done:
        data = tls.recv(65536)
        if not data:
            out['ended'] = 'connection closed'; break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                out['status'] = int(dict(ev.headers)[':status'])
                if out['status'] == 200: conn.send_data(sid, payload, end_stream=True)
            elif isinstance(ev, h2.events.DataReceived):
                out['body'] += ev.data.decode(); conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                out['ended'] = 'stream ended'; done = True
            elif isinstance(ev, h2.events.StreamReset):
                out['ended'] = 'stream reset %d' % ev.error_code; done = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                out['ended'] = 'goaway %d' % ev.error_code; done = True
        tls.sendall(conn.data_to_send())
except (OSError, ssl.SSLError) as e:
    out['error'] = type(e).__name__ + ': ' + str(e)
print(json.dumps(out))`;

interface H2Out { status: number | null; body: string; ended: string | null; alpn?: string; tls?: string; server?: string[]; error?: string }

t.test('python3-h2 through a node\'s 15008 to a pod', { skip: skip ?? false }, async (t) => {
  const cg = testCgroup(t, 'tunnel');
  const c = await testCluster(t, cg, { prefix: 'tunneltest', nodes: [{ name: 'n1', pods: [{ name: 'a' }] }, { name: 'n2', pods: [{ name: 'b' }] }] });
  const n1 = c.node('n1'), n2 = c.node('n2');
  const b = n2.lab.pod('b');
  const echo = b.spawn('python3', ['-c', ECHO]);
  await new Promise((res, rej) => { echo.stdout!.once('data', res); echo.once('exit', rej); });

  const ca = await TestCa.create();
  const other = await TestCa.create('another root');
  const server = await startTunnelNode(t, n2, { material: await ca.issue(NODE2), local: [b.v4!, b.v6!], deny: [INTRUDER] });
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-h2client-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'root.pem'), ca.bundle);
  const files = (name: string, m: TlsMaterial): [string, string] => {
    writeFileSync(join(dir, `${name}.pem`), m.chain);
    writeFileSync(join(dir, `${name}-key.pem`), m.key, { mode: 0o600 });
    return [join(dir, `${name}.pem`), join(dir, `${name}-key.pem`)];
  };
  const web = files('web', await ca.issue(WEB));
  const py = (cert: [string, string] | ['', ''], authority: string, host = n2.nodeV4): H2Out => {
    const [cmd, args] = n1.lab.onNode(['/usr/bin/python3', '-c', H2CLIENT, host, '15008', authority, join(dir, 'root.pem'), ...cert, 'hello over hbone']);
    const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20_000 });
    try { return JSON.parse(r.stdout) as H2Out; } catch { throw new Error(`python client: ${r.stdout} ${r.stderr}`); }
  };

  const ok = py(web, `${b.v4}:7070`);
  t.same([ok.tls, ok.alpn, ok.status, ok.body, ok.ended], ['TLSv1.3', 'h2', 200, 'echo:hello over hbone', 'stream ended'],
    'python3-h2: CONNECT through n2:15008 reaches the pod on n2; END_STREAM reached it as a FIN and its answer came back');
  t.same(ok.server, [NODE2], 'the server presented the node\'s SPIFFE id');
  const ok6 = py(web, `[${b.v6}]:7070`, n2.nodeV6);
  t.same([ok6.status, ok6.body], [200, 'echo:hello over hbone'], 'the same over IPv6, to the pod\'s IPv6 address');

  const noCert = py(['', ''], `${b.v4}:7070`);
  t.equal(noCert.status, null, `no client certificate: refused (${noCert.error ?? noCert.ended})`);
  const foreign = py(files('foreign', await other.issue(WEB)), `${b.v4}:7070`);
  t.equal(foreign.status, null, `another CA's certificate: refused (${foreign.error ?? foreign.ended})`);
  const expired = py(files('expired', await ca.issue(WEB, { notBefore: new Date(Date.now() - 48 * 3600_000), notAfter: new Date(Date.now() - 3600_000) })), `${b.v4}:7070`);
  t.equal(expired.status, null, `an expired certificate: refused (${expired.error ?? expired.ended})`);
  const denied = py(files('intruder', await ca.issue(INTRUDER)), `${b.v4}:7070`);
  t.same([denied.status, denied.body], [403, ''], 'an identity the policy denies: 403, nothing reaches the pod');
  const notLocal = py(web, `${n1.lab.pod('a').v4}:7070`);
  t.equal(notLocal.status, 421, 'a CONNECT to a pod of another node: 421 (no relaying)');

  const rep = await server.report();
  // after report(): the lines python's runs produced are read by then (spawnSync held this process's event loop)
  const logs = server.logs.map((l) => `${String(l.msg)} ${String(l.error ?? '')}`).join('\n');
  t.match(logs, /without a certificate/, 'the server logged the missing certificate');
  t.match(logs, /CERT_HAS_EXPIRED/, 'the server logged the expired certificate');
  t.match(logs, /UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT/, 'the server logged the unknown issuer');
  t.match(logs, new RegExp(`${INTRUDER.replace(/[/.]/g, '\\$&')} denied`), 'the server logged the denial with the identity');
  t.match(rep.refusals.in, { 'no-certificate': 1, 'bad-certificate': 2, denied: 1, 'not-local': 1 }, 'refusals counted by reason');

  const webStreams = rep.peers.filter((p) => p.identity === WEB).reduce((n, p) => n + p.streamsTotal, 0);
  t.equal(webStreams, 2, 'the server knows the python client by its SPIFFE id: its two accepted streams (IPv4, IPv6)');
});
