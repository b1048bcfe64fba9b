// Where the agent's bytes per request go: a preload (`node --import <this file>`) the l7 bench gives the agent
// with --alloc-profile. Each SIGUSR2 toggles V8's sampling heap profiler, counting objects the young and old
// collectors already freed too (which the sampling profiler leaves out by default, and which is what a per-request
// allocation is: garbage a moment later). On the toggle that stops it, the profile goes to
// $SOCKMESH_ALLOC_PROFILE_DIR/<n>.heapprofile (for Chrome DevTools' Memory panel) and, beside it, <n>.txt: the
// functions that allocated most, by self size. Not used outside the bench: sampling every 512 bytes costs CPU.
import { Session } from 'node:inspector';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

interface CallFrame { functionName: string; url: string; lineNumber: number; columnNumber: number }
interface ProfileNode { callFrame: CallFrame; selfSize: number; children: ProfileNode[] }
interface SamplingHeapProfile { head: ProfileNode }

/** Self size per function (name, file:line), biggest first, with each one's share of the total. */
export function topAllocators(profile: SamplingHeapProfile, n: number): string[] {
  const bySite = new Map<string, number>();
  let total = 0;
  const walk = (node: ProfileNode): void => {
    if (node.selfSize > 0) {
      const f = node.callFrame;
      const file = f.url.replace(/^file:\/\//, '').replace(/^.*\/(dist|node_modules)\//, '$1/');
      const key = `${f.functionName || '(anonymous)'} ${file}:${f.lineNumber + 1}`;
      bySite.set(key, (bySite.get(key) ?? 0) + node.selfSize);
      total += node.selfSize;
    }
    for (const c of node.children) walk(c);
  };
  walk(profile.head);
  return [...bySite.entries()].sort((a, b) => b[1] - a[1]).slice(0, n)
    .map(([k, v]) => `${(v / 1024).toFixed(0).padStart(8)} KiB ${((v / total) * 100).toFixed(1).padStart(5)}%  ${k}`);
}

function install(dir: string): void {
  const session = new Session();
  session.connect();
  let on = false;
  let n = 0;
  const post = (method: string, params?: object): Promise<unknown> =>
    new Promise((resolve, reject) => session.post(method, params ?? {}, (e, r) => (e ? reject(e) : resolve(r))));
  process.on('SIGUSR2', () => {
    void (async () => {
      if (!on) {
        on = true;
        await post('HeapProfiler.enable');
        await post('HeapProfiler.startSampling', {
          samplingInterval: 512, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true,
        });
        return;
      }
      on = false;
      const { profile } = (await post('HeapProfiler.stopSampling')) as { profile: SamplingHeapProfile };
      n++;
      writeFileSync(join(dir, `${n}.heapprofile`), JSON.stringify(profile));
      writeFileSync(join(dir, `${n}.txt`), topAllocators(profile, 40).join('\n') + '\n');
    })().catch((e: Error) => process.stderr.write(`alloc profile: ${e.message}\n`));
  });
}

const dir = process.env.SOCKMESH_ALLOC_PROFILE_DIR;
if (dir) install(dir);
