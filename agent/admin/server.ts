// The admin API: HTTP over a unix socket that only root can open (mode 0600), read by meshctl.
import { createServer, type Server } from 'node:http';
import { chmodSync, existsSync, mkdirSync, renameSync, unlinkSync } from 'node:fs';
import type { Server as NetServer } from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from '../observe/log.js';

/** A GET handler; `query` holds the URL's query parameters (?service=web). */
export type Handler = (query: URLSearchParams) => unknown | Promise<unknown>;

/** An answer other than 200 on purpose (404 for an unknown service): status and message go to the client as they are. */
/**
 * A streaming GET (GET /v1/monitor): the handler starts writing lines to `out` and returns what stops it; the server
 * calls that when the client goes away or the server stops. A query it refuses throws (an AdminError, or any Error: 400)
 * before anything is written.
 */
export type StreamHandler = (query: URLSearchParams, out: StreamOut) => () => void;

/** One reader's end of a stream: write() takes a line, or returns false and drops it when the reader is behind. */
export interface StreamOut { write(line: string): boolean }

/** Bytes a stream reader may have waiting in the agent's memory; past that, lines are dropped for it (and counted). */
export const STREAM_QUEUE_BYTES = 256 * 1024;

const NDJSON = { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' };

export class AdminError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = 'AdminError';
  }
}

/**
 * Listen on a unix socket at path (mode 0600, root only), or on fd: that socket received from the agent this one
 * replaces (agent/handover.ts), already bound to path. A new socket is bound under a temporary name and renamed onto
 * path: the rename replaces a stale file of a killed agent at once, and libuv, which unlinks the path it bound when the
 * server closes, then unlinks only the temporary name; were it path, the agent handing over would remove the file its
 * successor serves on.
 */
export async function listenUnix(server: Server | NetServer, path: string, fd?: number): Promise<void> {
  const tmp = `${path}.${process.pid}.new`;
  if (fd === undefined) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    if (existsSync(tmp)) unlinkSync(tmp);
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // Restrictive umask while the socket file is created, then chmod to be sure.
    const old = process.umask(0o177);
    const done = (): void => { process.umask(old); server.off('error', reject); resolve(); };
    if (fd === undefined) server.listen(tmp, done);
    else server.listen({ fd }, done);
  });
  if (fd !== undefined) return;
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

export class AdminServer {
  private server?: Server;

  constructor(readonly socketPath: string, private readonly routes: Record<string, Handler>, private readonly log: Logger,
    private readonly streams: Record<string, StreamHandler> = {}) {}

  /**
   * Listen on socketPath, or on fd: the admin socket received from the agent this one replaces (agent/handover.ts),
   * already bound to socketPath, so meshctl never finds the path without a listener.
   */
  async start(fd?: number): Promise<void> {
    this.server = createServer(async (req, res) => {
      let url: URL;
      try {
        url = new URL(req.url ?? '/', 'http://admin');
      } catch {
        // '//4999999999' is a valid request-target and no URL: thrown here, it was an unhandled rejection that ended
        // the agent (found by fuzzing)
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: `bad request-target ${JSON.stringify((req.url ?? '').slice(0, 100))}` }));
        return;
      }
      const path = url.pathname;
      const handler = req.method === 'GET' ? this.routes[path] : undefined;
      const send = (status: number, body: unknown): void => {
        const text = JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(text);
      };
      const stream = req.method === 'GET' ? this.streams[path] : undefined;
      if (stream) {
        let stop: () => void;
        try {
          stop = stream(url.searchParams, {
            // Never wait for a reader: what its socket has not taken yet stays bounded, the rest is dropped.
            write: (line) => {
              if (res.destroyed || res.writableLength > STREAM_QUEUE_BYTES) return false;
              if (!res.headersSent) res.writeHead(200, NDJSON);
              res.write(line);
              return true;
            },
          });
        } catch (e) {
          return send(e instanceof AdminError ? e.status : 400, { error: (e as Error).message });
        }
        if (!res.headersSent) {
          res.writeHead(200, NDJSON);
          res.flushHeaders();
        }
        res.on('close', stop);
        return;
      }
      if (!handler) return send(404, { error: `no such endpoint: ${req.method} ${path}` });
      try {
        send(200, await handler(url.searchParams));
      } catch (e) {
        if (e instanceof AdminError) return send(e.status, { error: e.message });
        this.log.warn({ err: e, path }, 'admin request failed');
        send(500, { error: (e as Error).message });
      }
    });
    await listenUnix(this.server, this.socketPath, fd);
  }

  /** the listening socket's fd (what a planned restart hands to the new agent), or undefined when not listening */
  fd(): number | undefined {
    // libuv's handle: Node has no public accessor (its cluster module uses the same field)
    const fd = (this.server as unknown as { _handle?: { fd?: unknown } } | undefined)?._handle?.fd;
    return typeof fd === 'number' && fd >= 0 ? fd : undefined;
  }

  /** Stop serving; the socket file is removed unless a new agent serves on it (unlink false: a planned restart). */
  async stop(unlink = true): Promise<void> {
    const server = this.server;
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections(); // idle keep-alive connections would hold close() open
    await closed;
    if (unlink && existsSync(this.socketPath)) unlinkSync(this.socketPath);
  }
}
