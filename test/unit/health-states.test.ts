// BackendStates: the ejection count behind growing ejection times decays while a backend stays in service
// (Envoy's outlier_detection.interval), so old failures do not condemn it to the maximum ejection time.
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackendStates } from '../../agent/health/states.js';
import { ejectionMs } from '../../agent/proxy/outlier.js';
import type { OutlierDetection } from '../../agent/model/l7.js';

const cfg: OutlierDetection = { consecutive5xx: 1, consecutiveGatewayErrors: 0, baseEjectionMs: 20, maxEjectionMs: 1000, maxEjectionPercent: 100, intervalMs: 1000 };

t.test('the ejection count decays by one per interval back in service, never below zero', async (t) => {
  let now = 0;
  const states = new BackendStates(() => now);
  t.teardown(() => states.close());
  const b = ['web', '127.0.0.1:8080'] as const;
  t.equal(states.eject(...b, ejectionMs(cfg, states.ejections(...b, cfg.intervalMs)), 'x', cfg.intervalMs), 1);
  t.equal(states.ejections(...b, cfg.intervalMs), 1, 'no decay while ejected');
  await sleep(60); // the 20 ms ejection ends (a real timer); the fake clock says it came back at 0
  t.notOk(states.isOut(...b));
  t.equal(states.eject(...b, ejectionMs(cfg, states.ejections(...b, cfg.intervalMs)), 'x', cfg.intervalMs), 2, 'at once again: count grows');
  t.equal(states.list()[0]!.ejection!.until - states.list()[0]!.ejection!.since, 40, 'second ejection: 2 x base');
  await sleep(80);
  now = 999;
  t.equal(states.ejections(...b, cfg.intervalMs), 2, 'less than one interval back: no decay');
  now = 1000;
  t.equal(states.ejections(...b, cfg.intervalMs), 1, 'one interval back: one less');
  t.equal(states.ejections(...b), 2, 'without an interval: the plain count');
  now = 10_000;
  t.equal(states.ejections(...b, cfg.intervalMs), 0, 'never below zero');
  t.equal(states.eject(...b, ejectionMs(cfg, states.ejections(...b, cfg.intervalMs)), 'x', cfg.intervalMs), 1, 'a long-healthy backend starts again from base');
  t.equal(states.list()[0]!.ejection!.until - states.list()[0]!.ejection!.since, 20);
});
