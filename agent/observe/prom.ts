// prom-client's parts the agent's start needs, without the rest. Its index loads everything it has when first
// imported: the Pushgateway (node:http and node:https), Summary's t-digest, and the default metrics, whose process
// CPU collector loads @opentelemetry/api (for exemplars). Measured on this machine: 39-43 ms of a start for
// prom-client and 26-28 ms more for @opentelemetry/api, all before the proxy serves; the Registry from its own file
// (with the metric base classes it needs) ~8 ms. The default process metrics are loaded when the metrics endpoint starts
// (observe/metrics.ts), after the proxy serves. The class is prom-client's own (the index re-exports this very
// file), so a Registry made here takes the metrics of code importing 'prom-client' (the tunnel's, loaded later).
import { createRequire } from 'node:module';
import type * as Prom from 'prom-client';

const require = createRequire(import.meta.url);

export const Registry = require('prom-client/lib/registry') as typeof Prom.Registry;
export type Registry = Prom.Registry;

/** prom-client's collectDefaultMetrics, loaded when first called (it loads @opentelemetry/api). */
export function collectDefaultMetrics(config: Prom.DefaultMetricsCollectorConfiguration<Prom.RegistryContentType>): void {
  (require('prom-client/lib/defaultMetrics') as typeof Prom.collectDefaultMetrics)(config);
}
