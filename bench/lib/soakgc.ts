// The soak's preload for its agent (`node --expose-gc --import <this file> agent/main.js`): on SIGUSR2, two full
// garbage collections, then one JSON line on stdout with the RSS and V8's heap as they are after them. The soak asks
// every 10 s and judges the agent's memory by these points, where garbage no longer counts: a fit over raw RSS reads
// V8's old generation filling up between full collections (108 -> 181 -> 132 MiB in a 10-minute run) as a leak.
// Not used outside the soak (a full collection of the agent's heap is a pause of tens of ms).
import { memoryUsage } from 'node:process';

const gc = (globalThis as { gc?: () => void }).gc;
process.on('SIGUSR2', () => {
  if (!gc) {
    process.stdout.write(`${JSON.stringify({ msg: 'soak: gc', error: 'no gc(): the agent needs --expose-gc', time: Date.now() })}\n`);
    return;
  }
  gc();
  gc(); // the second one frees what the first one's finalizers and weak callbacks let go
  // after the current tick: the pages the collection freed are given back first
  setImmediate(() => {
    const m = memoryUsage();
    process.stdout.write(`${JSON.stringify({ msg: 'soak: gc', time: Date.now(), rssKiB: Math.round(m.rss / 1024), heapUsedKiB: Math.round(m.heapUsed / 1024), externalKiB: Math.round(m.external / 1024), arrayBuffersKiB: Math.round(m.arrayBuffers / 1024) })}\n`);
  });
});
