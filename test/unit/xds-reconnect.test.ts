// The xDS source's reconnection to a control plane that restarts, over real gRPC on 127.0.0.1: a restart is redialled
// within the initial delay of the plane listening again (the soak saw 6-24 s: gRPC's own channel backoff ran beside
// ours, and a stream started while the channel waited out its backoff failed without dialling, growing ours too);
// a long outage still backs off; a plane that never accepts a response gets no fast window.
import t from 'tap';
import pino from 'pino';
import { XdsSource, type XdsSourceOptions } from '../../agent/sources/xds/source.js';
import { FakeAds, serveWeb } from '../lib/ads.js';
import type { Model } from '../../agent/model/types.js';

const log = pino({ level: 'silent' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A source synced with a plane on a fresh port (one accepted response of each type: a healthy stream). */
async function synced(backoff?: XdsSourceOptions['backoff']) {
  const ads = new FakeAds();
  await ads.start();
  const applied: Model[] = [];
  const src = new XdsSource({
    address: `127.0.0.1:${ads.port}`, mode: 'sotw', log, node: { id: 'n1', cluster: 'sockmesh', metadata: {} },
    apply: (m) => { applied.push(m); return null; }, ...(backoff ? { backoff } : {}),
  });
  src.start();
  await serveWeb(await ads.stream(0));
  while (applied.length < 1) await sleep(20);
  return { ads, src, port: ads.port };
}

t.test('a control plane restart (killed, 3 s down) is redialled within 1 s of listening again, default backoff', async (t) => {
  const { ads, src, port } = await synced();
  let back: FakeAds | undefined;
  t.teardown(async () => { await src.stop(); ads.kill(); back?.kill(); });
  ads.kill(); // forceShutdown: the stream is reset, as by a SIGKILL
  await sleep(3000);
  const during = src.status().reconnects;
  back = new FakeAds();
  await back.start(port);
  const up = Date.now();
  await back.stream(0, 30_000);
  const ms = Date.now() - up;
  // the default initial delay is 500 ms (a redial every 250-500 ms in the window): 1 s leaves room for a slow CI
  t.ok(ms < 1000, `a new stream ${ms} ms after the plane listened again`);
  // and not a hot loop while it was down: at most one redial every 250 ms
  t.ok(during <= 3000 / 250 + 1, `${during} redials in the 3 s outage`);
  t.ok(during >= 3, `it kept redialling during the outage (${during})`);
});

t.test('after the fast window a dead control plane is redialled with a growing backoff', async (t) => {
  const { ads, src } = await synced({ initialMs: 50, maxMs: 5000, fastWindowMs: 500 });
  t.teardown(async () => { await src.stop(); ads.kill(); });
  ads.kill();
  await sleep(500);
  const inWindow = src.status().reconnects;
  await sleep(2500);
  const after = src.status().reconnects - inWindow;
  // in the window: a redial every 25-50 ms (~10-20 in 500 ms); after it, 25-50, 50-100, 100-200, ... 800-1600 ms:
  // at most 8 in 2.5 s, where a window that never closed would make 50 or more
  t.ok(inWindow >= 6, `${inWindow} redials in the 500 ms window`);
  t.ok(after <= 10, `${after} redials in the 2.5 s after it`);
});

t.test('a stream that never had a response accepted opens no fast window', async (t) => {
  const ads = new FakeAds();
  await ads.start();
  const src = new XdsSource({
    address: `127.0.0.1:${ads.port}`, mode: 'sotw', log, node: { id: 'n1', cluster: 'sockmesh', metadata: {} },
    apply: () => null, backoff: { initialMs: 50, maxMs: 5000, fastWindowMs: 60_000 },
  });
  t.teardown(async () => { await src.stop(); ads.kill(); });
  src.start();
  await ads.stream(0);
  ads.kill(); // up, but nothing accepted on it: not a working plane
  await sleep(2000);
  const n = src.status().reconnects;
  t.ok(n >= 2 && n <= 8, `${n} redials in 2 s (a fast window would make 40 or more)`);
});
