// The planned restart (issue 14): a new agent started with the same --run-dir while the old one runs takes its
// listening sockets over, as Envoy's hot restart does, so that no connection finds the proxy's port closed and the
// kernel's proxy record is never down.
//
// <runDir>/handover.sock, one JSON line each way, fds attached with SCM_RIGHTS (native/fdpass.cc):
//   new -> old  {"type":"request","pid","version"}
//   old -> new  {"type":"offer",...} + fds: the proxy's listeners (loopback v4/v6, node addresses), the admin socket,
//               this handover socket, the metrics socket (when there is one), the tunnel hand-over's listeners,
//               the HBONE server's listeners (15008; tunnelhost.ts)                  or {"type":"refused","error"}
//               The offer names a file in the run dir with the model in force (JSON): a new agent whose source is a
//               control plane starts from it, so that it serves the same config from its first request even while the
//               control plane is down (its first sync replaces it), as a restarted ztunnel or Envoy cannot.
//   (the new agent loads and adopts the pinned datapath, announces the proxy alive and accepts on the same sockets:
//    both agents accept meanwhile)
//   new -> old  {"type":"commit"}
//   old -> new  {"type":"released"}: it stopped accepting, beating, reconciling and serving admin/metrics; it drains
//               its connections and exits 0
// The new agent then serves admin, metrics and handover.sock on the sockets it received (no moment without them).
// Until the commit nothing changed on the old side: a new agent that fails or dies before it (its end of the socket
// closes) leaves the old one serving as before. One handover at a time: another agent asking meanwhile is refused.
import { existsSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { listenUnix } from './admin/server.js';
import { createServer, type Server, type Socket } from 'node:net';
import { netioAddon, type NetioAddon } from './proxy/netio.js';
import type { ProxyHandover } from './proxyhost.js';
import type { Logger } from './observe/log.js';
import type { Model } from './model/types.js';

export const HANDOVER_SOCKET = 'handover.sock';
/** the model in force, written by the running agent for the new one (in the run dir, next to the socket) */
export const HANDOVER_MODEL = 'handover-model.json';
/** the new agent's wait for each answer of the old one */
const ANSWER_TIMEOUT_MS = 10_000;
/** the old agent's wait for the commit: the new one loads and attaches the datapath meanwhile */
const COMMIT_TIMEOUT_MS = 60_000;
/** a line longer than this is not ours */
const MAX_LINE = 64 * 1024;

export interface HandoverOfferMessage {
  type: 'offer';
  pid: number;
  version: string;
  /** the proxy's settings and listeners (null: it was not listening); their fds come first, in this order */
  proxy: (Omit<ProxyHandover, 'listeners'> & { listeners: { host: string; port: number }[] }) | null;
  /** the metrics endpoint's address (null: none); its fd comes last */
  metrics: string | null;
  /** the file in the run dir holding the model in force (null: none applied yet) */
  model?: string | null;
  /**
   * The tunnel hand-over's listeners (agent/tunnelhandover.ts; absent or null: none): their fds come after the
   * metrics endpoint's. Absent from an older agent's offer: the new one listens itself.
   */
  tunnelHandover?: { port: number; listeners: { host: string; port: number }[] } | null;
  /**
   * The HBONE server's listening sockets (15008 on the node's addresses: agent/tunnelhost.ts; absent or null: none),
   * their fds last. Passed on so that the listening socket never closes across the restart: an inbound SYN meanwhile
   * waits in its queue for whichever agent accepts, instead of being refused. Absent from an older agent's offer.
   */
  tunnelServer?: { listeners: { host: string; port: number }[] } | null;
}

/** What the running agent hands over (its side): the message and the fds, in the order of the protocol above. */
export interface Offer { message: HandoverOfferMessage; fds: number[] }

/** The new agent's side of a handover in progress. */
export interface TakeOver {
  /** the old agent's pid */
  readonly from: number;
  readonly proxy: (Omit<ProxyHandover, 'listeners'> & { listeners: { host: string; port: number; fd: number }[] }) | null;
  readonly adminFd: number;
  readonly handoverFd: number;
  readonly metricsFd: number | undefined;
  /** the tunnel hand-over's listening sockets (null: the running agent had none) */
  readonly tunnelHandover: { port: number; listeners: { host: string; port: number; fd: number }[] } | null;
  /** the HBONE server's listening sockets ([]: the running agent had none) */
  readonly tunnelServer: { host: string; port: number; fd: number }[];
  /** the running agent's model in force (undefined: it had none, or its file could not be read: a warning says why) */
  readonly model: Model | undefined;
  /** Tell the old agent to let go (we accept and beat now); waits for it. false: it did not answer (gone?). */
  commit(): boolean;
  /** Give up before the commit: every fd received is closed, the old agent serves on. */
  abort(): void;
}

type Fdpass = Pick<NetioAddon, 'unixConnect' | 'sendFds' | 'recvFds' | 'closeFd' | 'socketInfo'>;

const line = (o: object): Buffer => Buffer.from(`${JSON.stringify(o)}\n`);

/** Reads one JSON line (and the fds that came with it) from a blocking-use fd; throws on EOF or timeout. */
function readLine(n: Fdpass, fd: number, what: string): { msg: Record<string, unknown>; fds: number[] } {
  let buf = Buffer.alloc(0);
  const fds: number[] = [];
  const until = Date.now() + ANSWER_TIMEOUT_MS;
  try {
    for (;;) {
      const r = n.recvFds(fd, MAX_LINE, Math.max(1, until - Date.now()));
      fds.push(...r.fds);
      if (r.data.length === 0) throw new Error(`${what}: the running agent closed the handover socket`);
      buf = Buffer.concat([buf, r.data]);
      const nl = buf.indexOf(10);
      if (nl >= 0) {
        const text = buf.subarray(0, nl).toString('utf8');
        try {
          return { msg: JSON.parse(text) as Record<string, unknown>, fds };
        } catch {
          throw new Error(`${what}: not a JSON line from the running agent: ${JSON.stringify(text.slice(0, 200))}`);
        }
      }
      if (buf.length > MAX_LINE) throw new Error(`${what}: the running agent's answer is longer than ${MAX_LINE} bytes`);
    }
  } catch (e) {
    for (const f of fds) n.closeFd(f);
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ETIMEDOUT') throw new Error(`${what}: no answer from the running agent in ${ANSWER_TIMEOUT_MS} ms`);
    throw e;
  }
}

/**
 * Ask the agent running on runDir for its sockets. null when there is none (no handover.sock, or nobody listens on it:
 * a stale file of a killed agent, removed here). Throws, naming why, when one runs and the handover cannot be had
 * (refused: another handover is under way; a bad answer; a timeout): the caller must not start next to it.
 */
export function requestHandover(runDir: string, o: { version: string; log: Logger }, n: Fdpass = netioAddon()): TakeOver | null {
  const path = join(runDir, HANDOVER_SOCKET);
  if (!existsSync(path)) return null;
  let fd: number;
  try {
    fd = n.unixConnect(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code === 'ECONNREFUSED') {
      o.log.info({ path }, 'no agent behind the handover socket (a stale file): starting afresh');
      try { unlinkSync(path); } catch { /* gone already */ }
      return null;
    }
    throw new Error(`handover: cannot reach the running agent at ${path}: ${(e as Error).message}`);
  }
  const received: number[] = [];
  try {
    n.sendFds(fd, line({ type: 'request', pid: process.pid, version: o.version }), [], ANSWER_TIMEOUT_MS);
    const { msg, fds } = readLine(n, fd, `handover at ${path}`);
    received.push(...fds);
    if (msg.type === 'refused') throw new Error(`handover refused by the running agent at ${path}: ${String(msg.error)}`);
    if (msg.type !== 'offer') throw new Error(`handover at ${path}: expected an offer, got ${JSON.stringify(msg).slice(0, 200)}`);
    const offer = msg as unknown as HandoverOfferMessage;
    const listeners = offer.proxy?.listeners ?? [];
    const tunnelListeners = offer.tunnelHandover?.listeners ?? [];
    const tunnelAt = listeners.length + 2 + (offer.metrics !== null ? 1 : 0);
    const hboneListeners = offer.tunnelServer?.listeners ?? [];
    const hboneAt = tunnelAt + tunnelListeners.length;
    const want = hboneAt + hboneListeners.length;
    if (fds.length !== want) throw new Error(`handover at ${path}: the offer names ${want} sockets but ${fds.length} came with it`);
    // Each fd is checked for what the offer says it is before anything accepts on it.
    const check = (f: number, what: string, family?: number): void => {
      const i = n.socketInfo(f);
      if (!i.listening || !i.stream || (family !== undefined && i.family !== family)) {
        throw new Error(`handover at ${path}: the socket for ${what} is not a listening ${family === 0 ? 'unix' : 'TCP'} socket`);
      }
    };
    listeners.forEach((l, i) => check(fds[i]!, `the proxy listener ${l.host}:${l.port}`, l.host.includes(':') ? 6 : 4));
    const adminFd = fds[listeners.length]!, handoverFd = fds[listeners.length + 1]!;
    check(adminFd, 'the admin API', 0);
    check(handoverFd, 'the handover socket', 0);
    const metricsFd = offer.metrics !== null ? fds[listeners.length + 2] : undefined;
    if (metricsFd !== undefined) check(metricsFd, `the metrics endpoint ${offer.metrics}`);
    tunnelListeners.forEach((l, i) => check(fds[tunnelAt + i]!, `the tunnel hand-over listener ${l.host}:${l.port}`, l.host.includes(':') ? 6 : 4));
    hboneListeners.forEach((l, i) => check(fds[hboneAt + i]!, `the HBONE server's listener ${l.host}:${l.port}`, l.host.includes(':') ? 6 : 4));
    const model = offer.model ? readModel(join(runDir, offer.model), o.log) : undefined;
    let done = false;
    return {
      from: offer.pid,
      model,
      proxy: offer.proxy && { ...offer.proxy, listeners: listeners.map((l, i) => ({ ...l, fd: fds[i]! })) },
      adminFd, handoverFd, metricsFd,
      tunnelHandover: offer.tunnelHandover ? { port: offer.tunnelHandover.port, listeners: tunnelListeners.map((l, i) => ({ ...l, fd: fds[tunnelAt + i]! })) } : null,
      tunnelServer: hboneListeners.map((l, i) => ({ ...l, fd: fds[hboneAt + i]! })),
      commit: () => {
        if (done) throw new Error('handover: committed or aborted already');
        done = true;
        try {
          n.sendFds(fd, line({ type: 'commit' }), [], ANSWER_TIMEOUT_MS);
          const r = readLine(n, fd, `handover at ${path}`);
          for (const f of r.fds) n.closeFd(f);
          return r.msg.type === 'released';
        } catch (e) {
          o.log.warn({ error: (e as Error).message, from: offer.pid }, 'handover: the old agent did not confirm it let go');
          return false;
        } finally {
          n.closeFd(fd);
        }
      },
      abort: () => {
        if (done) return;
        done = true;
        // the fds the loop or a server adopted already are theirs; closing a number twice could hit a new fd
        for (const f of received) { try { n.closeFd(f); } catch { /* adopted and closed already */ } }
        n.closeFd(fd);
      },
    };
  } catch (e) {
    for (const f of received) n.closeFd(f);
    n.closeFd(fd);
    throw e;
  }
}

/** The running agent's side: the model in force, written for the new agent; returns the file's name in runDir. */
export function writeHandoverModel(runDir: string, model: Model): string {
  const file = join(runDir, HANDOVER_MODEL);
  writeFileSync(`${file}.tmp`, JSON.stringify({ pid: process.pid, model }));
  renameSync(`${file}.tmp`, file);
  return HANDOVER_MODEL;
}

/** The new agent's side: the model the running agent wrote (the file is removed: it was for this handover only). */
function readModel(file: string, log: Logger): Model | undefined {
  try {
    const data = JSON.parse(readFileSync(file, 'utf8')) as { model?: Model };
    if (!data.model || !Array.isArray(data.model.services)) throw new Error('no model with a services list in it');
    return data.model;
  } catch (e) {
    log.warn({ file, error: (e as Error).message }, 'handover: the running agent\'s model could not be read; starting without it');
    return undefined;
  } finally {
    try { unlinkSync(file); } catch { /* gone already */ }
  }
}

/** A Node server's or socket's fd: libuv's handle (Node has no public accessor; its cluster module uses the same field). */
function handleFd(o: Server | Socket | undefined): number | undefined {
  const fd = (o as unknown as { _handle?: { fd?: unknown } } | undefined)?._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

export interface HandoverServerOptions {
  path: string;
  log: Logger;
  /** what to hand over now (the fds stay ours until release: both agents serve meanwhile) */
  offer(): Offer;
  /** the new agent accepts and beats: stop serving everything but the connections under way (close, do not unlink) */
  release(): Promise<void>;
  /** after the new agent heard that we let go: drain and exit */
  released(): void;
}

/** The running agent's side: serves handover.sock (created, or the socket received from the agent before us). */
export class HandoverServer {
  private server?: Server;
  /** the new agent being handed to (one at a time) */
  private busy: { pid: number; socket: Socket } | null = null;
  private committed = false;

  constructor(private readonly o: HandoverServerOptions, private readonly n: Fdpass = netioAddon()) {}

  /** Listen on the path (a stale file is replaced), or on fd (received in a handover: the file is already there). */
  async start(fd?: number): Promise<void> {
    const server = createServer((s) => this.connection(s));
    await listenUnix(server, this.o.path, fd);
    server.on('error', (e) => this.o.log.error({ error: e.message, path: this.o.path }, 'handover socket error'));
    this.server = server;
  }

  /** the listening socket's fd (for the next agent) */
  fd(): number {
    const fd = handleFd(this.server);
    if (fd === undefined) throw new Error('handover socket: not listening');
    return fd;
  }

  /** Stop listening; the file is removed only when no agent takes over (unlink: a plain stop). */
  async close(unlink: boolean): Promise<void> {
    const server = this.server;
    this.server = undefined;
    // Not waiting for its connections: during a handover the one asking is one of them, and waits for our answer.
    server?.close();
    if (unlink && existsSync(this.o.path)) unlinkSync(this.o.path);
  }

  private connection(socket: Socket): void {
    const log = this.o.log;
    if (this.busy || this.committed) {
      const why = this.committed ? 'this agent has handed over already (ask the new one)' : `a handover to pid ${this.busy!.pid} is under way`;
      log.warn({ why }, 'handover: another agent asked meanwhile; refused');
      socket.end(line({ type: 'refused', error: why }));
      socket.on('error', () => { /* it may be gone already */ });
      return;
    }
    const session = { pid: 0, socket };
    this.busy = session;
    let buf = '';
    let stage: 'request' | 'commit' | 'done' = 'request';
    const timer = setTimeout(() => {
      log.error({ pid: session.pid, timeoutMs: COMMIT_TIMEOUT_MS }, 'handover: the new agent did not commit in time; serving on');
      socket.destroy();
    }, COMMIT_TIMEOUT_MS);
    timer.unref();
    const fail = (why: string): void => {
      log.error({ pid: session.pid, why }, 'handover failed; serving on as before');
      socket.destroy();
    };
    socket.on('error', () => { /* 'close' follows */ });
    socket.on('close', () => {
      clearTimeout(timer);
      if (this.busy === session) this.busy = null;
      if (stage !== 'done') log.warn({ pid: session.pid || null, stage }, 'handover aborted: the new agent went away before it committed; serving on as before');
    });
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      buf += d;
      if (buf.length > MAX_LINE) { fail('a line longer than 64 KiB'); return; }
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let msg: { type?: unknown; pid?: unknown };
        try { msg = JSON.parse(text) as typeof msg; } catch { fail(`not JSON: ${JSON.stringify(text.slice(0, 100))}`); return; }
        if (stage === 'request' && msg.type === 'request') {
          session.pid = typeof msg.pid === 'number' ? msg.pid : 0;
          const fd = handleFd(socket);
          if (fd === undefined) { fail('no fd under the handover connection'); return; }
          try {
            const offer = this.o.offer();
            this.n.sendFds(fd, line(offer.message), offer.fds, 5000);
          } catch (e) { fail(`sending the sockets: ${(e as Error).message}`); return; }
          stage = 'commit';
          log.info({ pid: session.pid }, 'handover: sockets sent to the new agent; both accept until it commits');
        } else if (stage === 'commit' && msg.type === 'commit') {
          stage = 'done';
          clearTimeout(timer);
          this.committed = true;
          void this.finish(socket, handleFd(socket), session.pid);
        } else {
          fail(`unexpected ${JSON.stringify(msg).slice(0, 100)} at stage ${stage}`);
          return;
        }
      }
    });
  }

  private async finish(socket: Socket, fd: number | undefined, pid: number): Promise<void> {
    const log = this.o.log;
    const t0 = performance.now();
    try {
      await this.o.release();
    } catch (e) {
      // past the commit the new agent serves: letting go half-way still beats serving twice
      log.error({ error: (e as Error).message }, 'handover: releasing failed part-way; draining anyway');
    }
    try {
      if (fd !== undefined) this.n.sendFds(fd, line({ type: 'released' }), [], 5000);
    } catch (e) {
      log.warn({ error: (e as Error).message }, 'handover: could not tell the new agent we let go');
    }
    socket.end();
    log.info({ pid, releaseMs: Math.round(performance.now() - t0) }, 'handover committed: the new agent serves; draining');
    this.o.released();
  }
}
