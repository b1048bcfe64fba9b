// The admin API client: HTTP/1.1 GET over the agent's unix socket, JSON back, bounded by a timeout.
// It tells "no agent there" (the caller may read the pins instead) apart from "the agent answered with an error".
import { request } from 'node:http';

/** Nobody answered on the socket: missing, refused, or silent until the timeout. */
export class AgentUnreachable extends Error {
  constructor(readonly socketPath: string, readonly reason: string) {
    super(`no agent at ${socketPath} (${reason})`);
    this.name = 'AgentUnreachable';
  }
}

/** The agent answered, but with a non-2xx status or a body that is not JSON. */
export class AgentError extends Error {
  constructor(readonly path: string, readonly status: number, detail: string) {
    super(`the agent answered GET ${path} with ${status ? `HTTP ${status}: ` : ''}${detail}`);
    this.name = 'AgentError';
  }
}

/** errno codes that mean there is no agent listening (as opposed to, say, EACCES: an agent we may not talk to). */
const UNREACHABLE = new Set(['ENOENT', 'ECONNREFUSED', 'ENOTSOCK', 'ECONNRESET', 'EPIPE']);

export class AdminClient {
  constructor(readonly socketPath: string, readonly timeoutMs = 5000) {}

  get<T>(path: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const req = request({ socketPath: this.socketPath, path, method: 'GET', headers: { accept: 'application/json' } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (e) => reject(new AgentUnreachable(this.socketPath, `read: ${e.message}`)));
        res.on('end', () => {
          clearTimeout(timer);
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown;
          try {
            body = JSON.parse(text);
          } catch {
            return reject(new AgentError(path, res.statusCode ?? 0, `a body that is not JSON: ${text.slice(0, 80)}`));
          }
          const status = res.statusCode ?? 0;
          if (status < 200 || status > 299) {
            const msg = (body as { error?: unknown })?.error;
            return reject(new AgentError(path, status, typeof msg === 'string' ? msg : text.slice(0, 200)));
          }
          resolve(body as T);
        });
      });
      // A hung agent must not hang meshctl: give up after the timeout and let the caller read the pins.
      const timer = setTimeout(() => {
        req.destroy();
        reject(new AgentUnreachable(this.socketPath, `no answer within ${this.timeoutMs / 1000}s`));
      }, this.timeoutMs);
      req.on('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(this.requestError(e, path));
      });
      req.end();
    });
  }

  /**
   * A streaming GET (one JSON object per line) until the agent ends it or `signal` aborts it (then it resolves too).
   * Connecting is bounded by the timeout as for get(); once the stream is open, silence is not an error.
   */
  stream(path: string, onObject: (o: unknown) => void, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const req = request({ socketPath: this.socketPath, path, method: 'GET', headers: { accept: 'application/x-ndjson' } }, (res) => {
        clearTimeout(timer);
        const status = res.statusCode ?? 0;
        if (status < 200 || status > 299) {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let msg = text.slice(0, 200);
            try { msg = String((JSON.parse(text) as { error?: unknown }).error ?? msg); } catch { /* not JSON: as it came */ }
            reject(new AgentError(path, status, msg));
          });
          return;
        }
        let rest = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          const lines = (rest + chunk).split('\n');
          rest = lines.pop()!;
          for (const line of lines) if (line.trim() !== '') onObject(JSON.parse(line));
        });
        res.on('end', () => resolve());
        res.on('error', () => resolve());
        res.on('close', () => resolve());
      });
      const timer = setTimeout(() => {
        req.destroy();
        reject(new AgentUnreachable(this.socketPath, `no answer within ${this.timeoutMs / 1000}s`));
      }, this.timeoutMs);
      signal.addEventListener('abort', () => { clearTimeout(timer); req.destroy(); resolve(); }, { once: true });
      req.on('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        if (signal.aborted) return resolve();
        reject(this.requestError(e, path));
      });
      req.end();
    });
  }

  /** What a failed request means: no agent there, an agent we may not talk to, or something else. */
  private requestError(e: NodeJS.ErrnoException, path: string): Error {
    if (e.code && UNREACHABLE.has(e.code)) return new AgentUnreachable(this.socketPath, `connect ${e.code}`);
    if (e.code === 'EACCES') return new Error(`cannot open ${this.socketPath}: EACCES (the admin socket is root-only: run meshctl as root)`);
    return new Error(`admin request GET ${path} on ${this.socketPath} failed: ${e.message}`);
  }
}
