// The tunnel hand-over's listeners (agent/tunnelhandover.ts, issue 13): the port flag (--tunnel-handover-port, the real
// agent binary refusing bad values with the flag named), and listeners that follow the proxy's addresses (a node address
// that changes): a new address listens and is recorded in the kernel, an address no longer wanted stops accepting, and a
// connection accepted on it goes on. Real sockets on 127/8; the kernel and the tunnel are stand-ins that record what
// they are told (the tunnel echoes).
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { TunnelHandover, type HandoverKernel } from '../../agent/tunnelhandover.js';
import type { TunnelOpener } from '../../agent/tunnel/types.js';
import { freePort, runAgentRefusing } from '../lib/kernel.js';

t.test('--tunnel-handover-port: a port, not the proxy\'s, else the agent refuses to start and names the flag', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-hoport-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const run = (args: string[]) => runAgentRefusing(dir, args);
  for (const bad of ['0', '65536', 'abc', '15007.5', '']) {
    const r = await run(['--tunnel-handover-port', bad]);
    t.equal(r.code, 1, `--tunnel-handover-port '${bad}': exit 1`);
    t.match(r.stderr, `--tunnel-handover-port: expected a port 1..65535, got '${bad}'`, `'${bad}' refused with the flag named`);
  }
  const same = await run(['--tunnel-handover-port', '15123', '--proxy-port', '15123']);
  t.equal(same.code, 1);
  t.match(same.stderr, /--tunnel-handover-port 15123: the same port as --proxy-port/, 'the proxy\'s port refused');
  t.match((await run(['--proxy-port', '0'])).stderr, /--proxy-port: expected a port 1..65535, got '0'/, '--proxy-port keeps its check');
});

interface Kernel extends HandoverKernel { recorded: string[]; tunnelPorts: [number, boolean | undefined][] }

function kernel(): Kernel {
  const k: Kernel = {
    recorded: [], tunnelPorts: [],
    originalDst: () => ({ vip: '198.18.2.1', port: 80, cgroupId: 7n, serviceId: 0, backend: { address: '198.18.2.1', port: 9090 } }),
    proxyListener: (host, port) => { k.recorded.push(`${host}:${port}`); },
    setTunnelPort: (port, inMesh) => { k.tunnelPorts.push([port, inMesh]); },
  } as Kernel;
  return k;
}

/** The tunnel: the destination accepts at once and echoes. */
const echo: TunnelOpener = {
  open: async (_req, sock) => {
    sock.on('data', (d: Buffer) => sock.write(d));
    sock.on('end', () => sock.end());
    sock.resume();
  },
};

function dial(host: string, port: number): Promise<Socket> {
  return new Promise((res, rej) => { const s = connect(port, host, () => res(s)); s.once('error', rej); });
}
function roundTrip(s: Socket, text: string): Promise<string> {
  return new Promise((res, rej) => { s.once('data', (d: Buffer) => res(d.toString())); s.once('error', rej); s.write(text); });
}

t.test('the hand-over\'s listeners follow the proxy\'s addresses; accepted connections go on', async (t) => {
  const port = await freePort();
  const k = kernel();
  const logs: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (l: string) => { logs.push(JSON.parse(l) as Record<string, unknown>); } });
  const ho = new TunnelHandover({
    dp: k, opener: echo, hosts: ['127.0.0.1'], port,
    // the first address's socket cannot be made in the mesh here (no cgroup): listened on outside it, and said so
    listenFd: () => { throw new Error('listen in the mesh: cgroup /nowhere: ENOENT'); },
    identityOf: () => 'spiffe://td/ns/a/sa/b',
    model: () => ({ workloads: [{ name: 'b', node: 'n2', addresses: ['198.18.2.1'] }] }) as never,
    peer: (name) => ({ name, address: '198.19.255.2' }),
    log,
  });
  await ho.start();
  t.teardown(() => ho.close());
  t.same(k.recorded, [`127.0.0.1:${port}`], 'the listener is recorded in the kernel');
  t.same(k.tunnelPorts, [[port, false]], 'the kernel is told the port, and that the listener is outside the mesh (neither end in the SOCKHASH)');
  t.ok(logs.some((l) => String(l.msg).includes('cannot listen in the meshed cgroup') && String(l.error).includes('ENOENT')), 'the fallback is logged with why');

  const first = await dial('127.0.0.1', port);
  t.teardown(() => first.destroy());
  t.equal(await roundTrip(first, 'one'), 'one', 'a connection on the first address is carried');

  await ho.follow(['127.0.0.1', '127.0.0.2']);
  t.same(ho.hosts(), ['127.0.0.1', '127.0.0.2'], 'a new address listens');
  t.same(k.recorded, [`127.0.0.1:${port}`, `127.0.0.2:${port}`], 'and is recorded in the kernel before clients are sent there');
  const second = await dial('127.0.0.2', port);
  t.teardown(() => second.destroy());
  t.equal(await roundTrip(second, 'two'), 'two', 'a connection on the new address is carried');

  await ho.follow(['127.0.0.2']);
  t.same(ho.hosts(), ['127.0.0.2'], 'the old address is left');
  const refused = await dial('127.0.0.1', port).then((s) => { s.destroy(); return 'connected'; }, (e: NodeJS.ErrnoException) => e.code);
  t.equal(refused, 'ECONNREFUSED', 'nothing listens on the old address any more');
  t.equal(await roundTrip(first, 'still'), 'still', 'the connection accepted on the old address goes on');
  t.equal(await roundTrip(second, 'too'), 'too', 'and so does the one on the new address');
  t.equal(ho.report().accepted, 2, 'two connections accepted');

  const calls = k.tunnelPorts.length;
  await ho.follow(['127.0.0.2']);
  t.equal(k.tunnelPorts.length, calls, 'no change, nothing told to the kernel');
  t.same(k.tunnelPorts.at(-1), [port, false], 'the kernel still knows the hand-over is outside the mesh (a listener of it was)');
});
