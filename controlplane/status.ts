// The control plane's status endpoint (--status-listen): GET /metrics (Prometheus text) and JSON reports by path
// (serve --kubernetes: GET /v1/kubernetes). Both serve modes use it; the families are registered by their owners
// (kube/metrics.ts, ca-metrics.ts) on the registry controlPlaneRegistry() starts with.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import { registerCaMetrics } from './ca-metrics.js';
import type { CaServiceStats, CaSetup } from './ca-service.js';
import type { ControlPlane } from './server.js';

export interface StatusServer {
  /** http://host:port */
  readonly address: string;
  close(): Promise<void>;
}

/** A registry with the families of every control plane: open xDS streams, and the CA's when it runs one. */
export function controlPlaneRegistry(cp: ControlPlane, ca?: { setup: CaSetup; stats: () => CaServiceStats | undefined }): Registry {
  const registry = new Registry();
  const name = 'sockmesh_controlplane_xds_streams';
  registry.registerMetric({
    name, help: 'Open ADS streams', type: 'gauge', aggregator: 'sum',
    get: () => Promise.resolve({ name, help: 'Open ADS streams', type: 'gauge', aggregator: 'sum', values: [{ labels: {}, value: cp.streamCount }] }),
    reset: () => {},
  } as unknown as Parameters<Registry['registerMetric']>[0]);
  if (ca) registerCaMetrics(registry, ca.setup.authority, ca.stats);
  return registry;
}

export async function startStatusServer(listen: { host: string; port: number }, registry: Registry, reports: Record<string, () => unknown> = {}): Promise<StatusServer> {
  const paths = ['/metrics', ...Object.keys(reports)];
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    if (req.method !== 'GET' || !paths.includes(path)) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end(`not found: GET ${paths.join(' or GET ')}\n`);
      return;
    }
    const report = reports[path];
    if (report) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(report()));
      return;
    }
    registry.metrics().then((text) => {
      res.writeHead(200, { 'content-type': registry.contentType });
      res.end(text);
    }, (e: Error) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`collecting metrics failed: ${e.message}\n`);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new Error(`--status-listen ${listen.host}:${listen.port}: ${e.message}`)));
    server.listen(listen.port, listen.host, () => resolve());
  });
  const a = server.address() as AddressInfo;
  return {
    address: `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`,
    close: () => new Promise<void>((r) => { server.close(() => r()); server.closeAllConnections(); }),
  };
}
