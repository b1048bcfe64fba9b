// Review of the health checker: each test proves a bug that was found (it failed before its fix) and guards it.
// Real backends on loopback.
import t from 'tap';
import { createServer as createH2Server, type Http2Server } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { probe } from '../../agent/health/probes.js';
import type { HealthCheck } from '../../agent/model/l7.js';

const GRPC: HealthCheck = { kind: 'grpc', intervalMs: 1000, timeoutMs: 1000, healthyThreshold: 1, unhealthyThreshold: 1, grpcService: '' };

t.test('grpc probe: a grpc-message that is not valid percent-encoding is a failed probe, not an agent crash', async (t) => {
  // Before the fix: decodeURIComponent('50% of shards down') threw URIError inside the h2 stream's event handler, an
  // uncaught exception: any backend (or anything listening on a backend's port) could kill the agent with one answer.
  const msgs = ['50% of shards down', '%E0%A4%A', 'plain', '%1B%5D0%3Bowned%07%1B%5B2Jred%0Dfake line'];
  let i = 0;
  const server: Http2Server = createH2Server();
  server.on('stream', (s) => {
    const msg = msgs[i++ % msgs.length]!;
    s.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    s.on('wantTrailers', () => s.sendTrailers({ 'grpc-status': '14', 'grpc-message': msg }));
    s.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const port = (server.address() as AddressInfo).port;
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown): void => { uncaught.push(e); };
  process.prependListener('uncaughtException', onUncaught);
  t.teardown(() => { process.off('uncaughtException', onUncaught); });
  for (const msg of msgs) {
    const r = await probe({ address: '127.0.0.1', port, family: 4 }, GRPC);
    t.equal(r.healthy, false, `${JSON.stringify(msg)}: unhealthy`);
    t.match(r.reason, /^grpc UNAVAILABLE: /, `reason: ${JSON.stringify(r.reason)}`);
    // the reason reaches logs and meshctl's terminal table: a backend must not write escape sequences or lines there
    t.notMatch(r.reason, /[\x00-\x1f\x7f]/, 'no control characters from the backend in the reason');
  }
  t.same(uncaught.map(String), [], 'no exception escaped the probe');
});
