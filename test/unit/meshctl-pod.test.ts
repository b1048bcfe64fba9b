// meshctl exec --pod without a kernel: a lab pod with no process yet is found from the lab's state (its cgroup and
// named network namespace), by its whole name or its unique last part; an unknown pod is refused naming the pods.
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolvePod } from '../../cli/commands/exec.js';
import { CliError } from '../../cli/errors.js';

t.test('exec --pod: lab pods from the lab state, unknown pods named in the error', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-execpod-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const meshed = join(dir, 'cg', 'meshed'), labs = join(dir, 'labs');
  mkdirSync(meshed, { recursive: true });
  mkdirSync(labs);
  const pod = (name: string, ns: string, base = meshed) => ({ name, ns, cgroup: join(base, 'kubepods-x', name) });
  writeFileSync(join(labs, 'x.json'), JSON.stringify({ pods: [pod('pod-a', 'sockmesh-lab-x-pod-a'), pod('host', '')] }));
  writeFileSync(join(labs, 'y.json'), JSON.stringify({ pods: [pod('pod-a', 'other', join(dir, 'elsewhere'))] }));
  writeFileSync(join(labs, 'broken.json'), '{');
  t.same(resolvePod(meshed, 'pod-a', labs), { name: 'kubepods-x/pod-a', cgroup: join(meshed, 'kubepods-x', 'pod-a'), netns: '/run/netns/sockmesh-lab-x-pod-a' },
    'by its last part; a lab of another meshed cgroup is not looked at');
  t.same(resolvePod(meshed, 'kubepods-x/host', labs), { name: 'kubepods-x/host', cgroup: join(meshed, 'kubepods-x', 'host'), netns: '' },
    'a hostNetwork pod: the node\'s namespace');
  t.throws(() => resolvePod(meshed, 'nope', labs), new CliError(`no pod 'nope' in the meshed cgroup ${meshed} (pods: kubepods-x/host, kubepods-x/pod-a)`));
  t.throws(() => resolvePod(meshed, 'nope', join(dir, 'none')), /no pods there: no process below it, and no lab pod/);
});
