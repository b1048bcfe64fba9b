// The admin API: HTTP over a unix socket that only root can open (mode 0600), read by meshctl.
import { createServer, type Server } from 'node:http';
import { chmodSync, existsSync, mkdirSync, unlinkSync } from 'node:fs';
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

export class AdminServer {
  private server?: Server;

  constructor(readonly socketPath: string, private readonly routes: Record<string, Handler>, private readonly log: Logger,
    private readonly streams: Record<string, StreamHandler> = {}) {}

  async start(): Promise<void> {
    mkdirSync(dirname(this.socketPath), { recursive: true, mode: 0o700 });
    // A socket file left by a killed agent would make listen() fail with EADDRINUSE.
    if (existsSync(this.socketPath)) unlinkSync(this.socketPath);
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
    const server = this.server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      // Restrictive umask while the socket file is created, then chmod to be sure.
      const old = process.umask(0o177);
      server.listen(this.socketPath, () => { process.umask(old); resolve(); });
    });
    chmodSync(this.socketPath, 0o600);
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections(); // idle keep-alive connections would hold close() open
    await closed;
    if (existsSync(this.socketPath)) unlinkSync(this.socketPath);
  }
}
