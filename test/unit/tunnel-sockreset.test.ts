// agent/tunnel/sockreset.ts and the addon's socketError (native/fdpass.cc) on real sockets: a reset the peer sent and
// Node has not read is found pending in the kernel (ECONNRESET, once: asking clears it); a clean end (FIN) and a live
// connection hold none. kernel/tunnel-handover checks what it is for (a pod's reset right behind data reaching the app
// through the tunnel as a reset, not a clean end).
import t from 'tap';
import { createServer, connect, type Socket } from 'node:net';
import { hiddenReset } from '../../agent/tunnel/sockreset.js';
import { netioAddon } from '../../agent/proxy/netio.js';

/** A connected client socket that reads nothing (paused), and the server's end of it. */
async function pair(t: { teardown(fn: () => void): void }): Promise<{ client: Socket; server: Socket }> {
  let accepted!: (s: Socket) => void;
  const got = new Promise<Socket>((r) => { accepted = r; });
  const srv = createServer((s) => accepted(s));
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  const client = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  client.pause();
  client.on('error', () => {});
  await new Promise<void>((r) => client.once('connect', () => r()));
  const server = await got;
  server.on('error', () => {});
  t.teardown(() => { client.destroy(); server.destroy(); srv.close(); });
  return { client, server };
}

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 100));

t.test('the addon reports a socket\'s pending error once', async (t) => {
  const { client, server } = await pair(t);
  const fd = (client as unknown as { _handle: { fd: number } })._handle.fd;
  t.equal(netioAddon().socketError(fd), 0, 'a live connection: no pending error');
  server.write(Buffer.alloc(10_000));
  server.resetAndDestroy();
  await settle();
  t.equal(netioAddon().socketError(fd), 104, 'data then a reset, unread: ECONNRESET (104) pending');
  t.equal(netioAddon().socketError(fd), 0, 'asked once, cleared');
  t.throws(() => netioAddon().socketError(-1), /socketError/, 'a bad fd throws, naming the call');
});

t.test('hiddenReset: a reset behind data, and a clean end', async (t) => {
  const reset = await pair(t);
  reset.server.write(Buffer.alloc(10_000));
  reset.server.resetAndDestroy();
  await settle();
  const e = hiddenReset(reset.client);
  t.equal(e?.code, 'ECONNRESET', `the reset is found (${e?.message})`);
  t.match(e?.message, /ECONNRESET/, 'its message names it');
  const fin = await pair(t);
  fin.server.end(Buffer.alloc(10_000));
  await settle();
  t.equal(hiddenReset(fin.client), undefined, 'data then a FIN: a clean end, nothing pending');
  fin.client.destroy();
  t.equal(hiddenReset(fin.client), undefined, 'a socket closed meanwhile: nothing to ask');
});
