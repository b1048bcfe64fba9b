// Real sockets for kernel tests: small servers that say who they are, and clients with bounded timeouts.
import { createServer, connect, type Server, type Socket, type AddressInfo } from 'node:net';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';

export interface IdServer { id: string; port: number; server: Server; accepted: number; close(): Promise<void> }

/** A TCP server that writes its id and the peer it saw, then keeps the connection open until the client closes. */
export async function idServer(id: string, host = '127.0.0.1'): Promise<IdServer> {
  const sockets = new Set<Socket>();
  const s: IdServer = {
    id, port: 0, accepted: 0,
    server: createServer((c) => {
      s.accepted++;
      sockets.add(c);
      c.on('close', () => sockets.delete(c));
      c.on('error', () => {});
      c.write(`${id}\n`);
      // Echo anything else: lets tests check an established connection still works.
      c.on('data', (d) => c.write(d));
    }),
    close: () => new Promise((r) => { for (const c of sockets) c.destroy(); s.server.close(() => r()); }),
  };
  await new Promise<void>((r) => s.server.listen(0, host, () => r()));
  s.port = (s.server.address() as AddressInfo).port;
  return s;
}

export interface Conn { id: string; socket: Socket; remoteAddress: string; remotePort: number }

/** Connect, read the server's id line. Rejects with the socket error (e.g. EPERM) or after timeoutMs. */
export function connectId(host: string, port: number, opts: { keep?: boolean; timeoutMs?: number; family?: 4 | 6 } = {}): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host, port, family: opts.family });
    let buf = '';
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`timeout connecting to ${host}:${port}`)); }, opts.timeoutMs ?? 5000);
    sock.on('error', (e) => { clearTimeout(timer); reject(e); });
    sock.on('data', (d) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      const res = { id: buf.slice(0, nl), socket: sock, remoteAddress: sock.remoteAddress!, remotePort: sock.remotePort! };
      sock.removeAllListeners('data');
      if (!opts.keep) sock.destroy();
      resolve(res);
    });
  });
}

/** Connect many times (bounded concurrency) and count which server answered. */
export async function distribution(host: string, port: number, n: number, concurrency = 20): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      next++;
      const c = await connectId(host, port);
      counts.set(c.id, (counts.get(c.id) ?? 0) + 1);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return counts;
}

export interface UdpEcho { id: string; port: number; sock: UdpSocket; close(): void }

/** A UDP server answering each datagram with `<id>:<payload>` (a DNS-style request/answer). */
export async function udpServer(id: string, host = '127.0.0.1'): Promise<UdpEcho> {
  const sock = createSocket(host.includes(':') ? 'udp6' : 'udp4');
  sock.on('message', (msg, rinfo) => sock.send(`${id}:${msg.toString()}`, rinfo.port, rinfo.address));
  await new Promise<void>((r) => sock.bind(0, host, () => r()));
  return { id, port: sock.address().port, sock, close: () => sock.close() };
}

/** Send one datagram with sendto() and wait for the answer; returns the answer and where it came from. */
export function udpAsk(host: string, port: number, payload: string, timeoutMs = 3000): Promise<{ text: string; from: string; fromPort: number }> {
  return new Promise((resolve, reject) => {
    const sock = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    const timer = setTimeout(() => { sock.close(); reject(new Error(`no UDP answer from ${host}:${port}`)); }, timeoutMs);
    sock.on('error', (e) => { clearTimeout(timer); sock.close(); reject(e); });
    sock.on('message', (msg, rinfo) => {
      clearTimeout(timer);
      sock.close();
      resolve({ text: msg.toString(), from: rinfo.address, fromPort: rinfo.port });
    });
    sock.send(payload, port, host);
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The first truthy value of `f`, polled every 50 ms; throws naming `what` after `ms`. */
export async function until<T>(what: string, f: () => T | undefined | false, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}
