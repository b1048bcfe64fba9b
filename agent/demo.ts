// The embedded default: a demo service on a loopback VIP with three small HTTP backends, so that
// `npm start` shows the mesh working on any machine without writing a config first.
import { createServer } from 'node:http';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { modelFromObject } from './model/config.js';
import type { Model } from './model/types.js';

export const DEMO_VIP = '127.100.0.1';
export const DEMO_PORT = 80;
export const DEMO_BACKEND_PORTS = [18081, 18082, 18083];
/** the same backends as an L7 service: routes, a canary split, retries, an HTTP health check, HTTP/1.1 upstream */
export const DEMO_HTTP_VIP = '127.100.0.2';

export const DEMO_CONFIG = {
  services: [
    {
      name: 'demo',
      vips: [DEMO_VIP],
      ports: [{ port: DEMO_PORT, protocol: 'tcp' }],
      algorithm: 'maglev',
      backends: DEMO_BACKEND_PORTS.map((port) => ({ address: '127.0.0.1', port, weight: 1 })),
    },
    {
      name: 'demo-http',
      vips: [DEMO_HTTP_VIP],
      ports: [{ port: DEMO_PORT, protocol: 'tcp' }],
      backends: DEMO_BACKEND_PORTS.map((port, i) => ({ address: '127.0.0.1', port, ...(i === 2 ? { group: 'canary' } : {}) })),
      healthCheck: { type: 'http', path: '/healthz', interval: '2s' },
      http: {
        failMode: 'open',
        // the demo backends speak HTTP/1.1 only: HTTP/2 clients (curl --http2-prior-knowledge) are translated
        upstreamProtocol: 'http1',
        routes: [
          { name: 'canary', match: { path: { prefix: '/canary' } }, split: [{ group: 'canary', weight: 1 }] },
          {
            name: 'default',
            split: [{ group: 'default', weight: 90 }, { group: 'canary', weight: 10 }],
            retries: { attempts: 2, retryOn: ['5xx', 'reset', 'connect-failure'] },
            responseHeaders: { set: { 'x-sockmesh-route': 'default' } },
          },
        ],
      },
    },
  ],
};

export function demoModel(): Model {
  return modelFromObject(DEMO_CONFIG, '<embedded default config>');
}

/** Serve the demo backends in this process (run by `sockmesh-agent demo-backends` inside the meshed cgroup). */
export function serveDemoBackends(ports = DEMO_BACKEND_PORTS): void {
  ports.forEach((port, i) => {
    createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`hello from demo backend ${i + 1} (127.0.0.1:${port}), you asked for ${req.url}\n`);
    }).listen(port, '127.0.0.1');
  });
}

/**
 * Start the demo backends as a child process placed in the meshed cgroup before it listens: an accepted socket
 * inherits the listener's cgroup, so both ends of a demo connection are on the sockmap fast path.
 */
export function spawnDemoBackends(cgroup: string): ChildProcess {
  const main = fileURLToPath(new URL('./main.js', import.meta.url));
  const script = `echo $$ > '${cgroup}/cgroup.procs' && exec "$0" "$1" demo-backends`;
  return spawn('/bin/sh', ['-c', script, process.execPath, main], { stdio: ['ignore', 'inherit', 'inherit'] });
}
