// Where the agent's bytes per request go: a preload (`node --import <this file>`) the l7 bench gives the agent
// with --alloc-profile. Each SIGUSR2 toggles V8's sampling heap profiler, counting objects the young and old
// collectors already freed too (which the sampling profiler leaves out by default, and which is what a per-request
// allocation is: garbage a moment later). On the toggle that stops it, the profile goes to
// $SOCKMESH_ALLOC_PROFILE_DIR/<n>.heapprofile (for Chrome DevTools' Memory panel) and, beside it, <n>.txt: the
// functions that allocated most, by self size. Not used outside the bench: sampling every 512 bytes costs CPU.
// With $SOCKMESH_CPU_PROFILE_DIR instead (--cpu-profile), the same toggle runs V8's CPU profiler (every 100 µs):
// <n>.cpuprofile and <n>.txt, the functions by self time. Started by the signal after the agent is up, not with
// node's --cpu-prof: its SIGPROF ticks interrupt the BPF verifier, whose load then fails with EAGAIN.
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

/**
 * On each SIGUSR2: start a profiler (inspector calls through `post`), or stop it and write what stop() returned, as
 * <n>.<ext> and the summary <n>.txt in dir.
 */
function onToggle(what: string, dir: string, ext: string, start: (post: Post) => Promise<void>, stop: (post: Post) => Promise<{ json: unknown; summary: string[] }>): void {
  const session = new Session();
  session.connect();
  let on = false;
  let n = 0;
  const post: Post = (method, params) =>
    new Promise((resolve, reject) => session.post(method, params ?? {}, (e, r) => (e ? reject(e) : resolve(r))));
  process.on('SIGUSR2', () => {
    void (async () => {
      if (!on) {
        on = true;
        await start(post);
        return;
      }
      on = false;
      const { json, summary } = await stop(post);
      n++;
      writeFileSync(join(dir, `${n}.${ext}`), JSON.stringify(json));
      writeFileSync(join(dir, `${n}.txt`), summary.join('\n') + '\n');
    })().catch((e: Error) => process.stderr.write(`${what}: ${e.message}\n`));
  });
}
type Post = (method: string, params?: object) => Promise<unknown>;

function install(dir: string): void {
  onToggle('alloc profile', dir, 'heapprofile', async (post) => {
    await post('HeapProfiler.enable');
    await post('HeapProfiler.startSampling', {
      samplingInterval: 512, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true,
    });
  }, async (post) => {
    const { profile } = (await post('HeapProfiler.stopSampling')) as { profile: SamplingHeapProfile };
    return { json: profile, summary: topAllocators(profile, 40) };
  });
}

interface CpuNode { id: number; callFrame: CallFrame; hitCount?: number }
interface CpuProfile { nodes: CpuNode[]; startTime: number; endTime: number; samples?: number[] }

/** Self time per function (name, file:line), biggest first, with each one's share of the samples. */
export function topFunctions(profile: CpuProfile, n: number): string[] {
  const bySite = new Map<string, number>();
  let total = 0;
  for (const node of profile.nodes) {
    const hits = node.hitCount ?? 0;
    if (hits === 0) continue;
    const f = node.callFrame;
    const file = f.url.replace(/^file:\/\//, '').replace(/^.*\/(dist|node_modules)\//, '$1/');
    const key = `${f.functionName || '(anonymous)'} ${file}${file ? `:${f.lineNumber + 1}` : ''}`;
    bySite.set(key, (bySite.get(key) ?? 0) + hits);
    total += hits;
  }
  const msPerHit = total > 0 ? (profile.endTime - profile.startTime) / 1000 / total : 0;
  return [...bySite.entries()].sort((a, b) => b[1] - a[1]).slice(0, n)
    .map(([k, v]) => `${(v * msPerHit).toFixed(0).padStart(8)} ms ${((v / total) * 100).toFixed(1).padStart(5)}%  ${k}`);
}

function installCpu(dir: string): void {
  onToggle('cpu profile', dir, 'cpuprofile', async (post) => {
    await post('Profiler.enable');
    await post('Profiler.setSamplingInterval', { interval: 100 });
    await post('Profiler.start');
  }, async (post) => {
    const { profile } = (await post('Profiler.stop')) as { profile: CpuProfile };
    return { json: profile, summary: topFunctions(profile, 60) };
  });
}

const dir = process.env.SOCKMESH_ALLOC_PROFILE_DIR;
const cpuDir = process.env.SOCKMESH_CPU_PROFILE_DIR;
if (dir) install(dir);
else if (cpuDir) installCpu(cpuDir);
