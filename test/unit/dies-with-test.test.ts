// A daemon a test starts must not outlive the test process, also when the test dies without its teardown: the
// prefix test/lib/kernel.ts puts before every agent, control plane and tunnel end (PR_SET_PDEATHSIG).
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { DIES_WITH_TEST } from '../lib/kernel.js';
import { sleep } from '../lib/net.js';

/** A stand-in test process that starts `sleep 30` (with `prefix`), prints its pid, and is then SIGKILLed. */
async function orphan(prefix: string[]): Promise<number> {
  const code = `const c = require('node:child_process').spawn(${JSON.stringify(prefix.length ? prefix[0] : 'sleep')}, `
    + `${JSON.stringify([...prefix.slice(1), ...(prefix.length ? ['sleep'] : []), '30'])}, { stdio: 'ignore' });`
    + `c.on('spawn', () => console.log(c.pid)); setInterval(() => {}, 1000);`;
  const parent = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  const pid = await new Promise<number>((r) => parent.stdout!.once('data', (d: Buffer) => r(Number(d.toString().trim()))));
  await sleep(200); // setpriv has exec'd sleep by now
  await new Promise<void>((r) => { parent.once('exit', () => r()); parent.kill('SIGKILL'); });
  return pid;
}

async function goneWithin(pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!existsSync(`/proc/${pid}`)) return true;
    await sleep(20);
  }
  return false;
}

t.test('a daemon started with DIES_WITH_TEST dies with its test process; one without it is orphaned', async (t) => {
  const kept = await orphan([]);
  t.teardown(() => { try { process.kill(kept, 'SIGKILL'); } catch { /* gone */ } });
  t.notOk(await goneWithin(kept, 500), 'without the prefix the child outlives its parent (the control: the check can fail)');
  const pid = await orphan(DIES_WITH_TEST);
  t.ok(await goneWithin(pid, 2000), `with ${DIES_WITH_TEST.join(' ')} the child is killed when its parent dies`);
});
