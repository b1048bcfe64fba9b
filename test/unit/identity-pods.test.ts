// Local pods: the scanner over a fake cgroup tree and /proc (podns.ts's walk and parsers), and the set fed by sources.
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalPods, ProcPodScanner, ProcPodWatcher } from '../../agent/identity/pods.js';

const FIB = `Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 198.18.3.0/24 2 0 2
        |-- 198.18.3.0
           /24 universe UNICAST
        |-- 198.18.3.7
           /32 host LOCAL
        |-- 198.19.255.3
           /32 link UNICAST
Local:
  +-- 0.0.0.0/0 3 0 5
        |-- 198.18.3.7
           /32 host LOCAL
        |-- 10.1.2.3
           /32 host LOCAL
`;

const INET6 = `fe8000000000000000fc00fffe000001 04 40 20 80     eth0
20010db8000300000000000000000007 04 80 00 80     eth0
fd000000000000010000000000000000 05 40 00 80     eth1
00000000000000000000000000000001 01 80 10 80       lo
`;

t.test('LocalPods: the union of its sources; listeners hear only of changes of the addresses', async (t) => {
  const pods = new LocalPods();
  let calls = 0;
  const off = pods.onChange(() => calls++);
  pods.set('procfs', [{ id: '1', name: 'a', addresses: ['198.18.1.1', '2001:db8:1::1'] }]);
  t.equal(calls, 1);
  pods.set('procfs', [{ id: '1', name: 'a renamed', addresses: ['2001:db8:1::1', '198.18.1.1'] }]);
  t.equal(calls, 1, 'same addresses: no call');
  pods.set('kubernetes', [{ id: 'uid', name: 'ns/a', addresses: ['198.18.1.1', '198.18.1.9'] }]);
  t.equal(calls, 2);
  t.same([...pods.addresses()].sort(), ['198.18.1.1', '198.18.1.9', '2001:db8:1::1']);
  pods.set('procfs', []);
  t.same([...pods.addresses()].sort(), ['198.18.1.1', '198.18.1.9'], 'an address stays while any source names it');
  pods.drop('kubernetes');
  t.same([...pods.addresses()], []);
  t.equal(pods.pods().length, 0);
  off();
  pods.set('procfs', [{ id: '2', name: 'b', addresses: ['198.18.1.2'] }]);
  t.equal(calls, 4, 'unsubscribed');
});

/** A fake cgroup tree and /proc: pid -> [cgroup (relative), netns inode, fib_trie, if_inet6 | null]. */
function fake(t: { teardown(fn: () => void): void }, procs: Record<string, [string, string, string, string | null]>) {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-pods-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const cg = join(dir, 'cg'), proc = join(dir, 'proc');
  mkdirSync(cg);
  writeFileSync(join(cg, 'cgroup.procs'), '');
  const byCg = new Map<string, string[]>();
  for (const [pid, [rel, ns, fib, v6]] of Object.entries(procs)) {
    byCg.set(rel, [...(byCg.get(rel) ?? []), pid]);
    mkdirSync(join(proc, pid, 'ns'), { recursive: true });
    mkdirSync(join(proc, pid, 'net'), { recursive: true });
    symlinkSync(`net:[${ns}]`, join(proc, pid, 'ns', 'net'));
    writeFileSync(join(proc, pid, 'net', 'fib_trie'), fib);
    if (v6 !== null) writeFileSync(join(proc, pid, 'net', 'if_inet6'), v6);
  }
  for (const [rel, pids] of byCg) {
    mkdirSync(join(cg, rel), { recursive: true });
    writeFileSync(join(cg, rel, 'cgroup.procs'), pids.join('\n') + '\n');
  }
  return { cg, proc };
}

const fib4 = (a: string): string => `Main:\n     |-- ${a}\n        /32 host LOCAL\n`;
const inet6 = (hex: string): string => `${hex} 04 80 00 80 eth0\n`;

t.test('the scanner: one pod per network namespace of the meshed tree with its addresses, the node\'s own left out', async (t) => {
  const { cg, proc } = fake(t, {
    10: ['kubepods/a', '111', FIB, INET6],
    11: ['kubepods/a/c2', '111', FIB, INET6], // a second container of pod a: one namespace, one pod
    20: ['kubepods/b', '222', fib4('198.18.1.2'), null], // no IPv6 in this kernel (no if_inet6): v4 only
    30: ['kubepods/h', '999', fib4('192.0.2.2'), null], // hostNetwork: the node's netns
    40: ['kubepods/gone', '333', fib4('198.18.1.3'), null],
  });
  rmSync(join(proc, '40'), { recursive: true }); // exited between cgroup.procs and /proc
  const sc = new ProcPodScanner(cg, { proc, ownNetns: 999n });
  const pods = sc.scan().sort((x, y) => x.id.localeCompare(y.id));
  t.same(pods.map((p) => ({ ...p, addresses: [...p.addresses].sort() })), [
    // fib_trie's local /32s (no loopback, once each), if_inet6's global ones (no ::1, no link-local)
    { id: '111', name: 'kubepods/a', addresses: ['10.1.2.3', '198.18.3.7', '2001:db8:3::7', 'fd00:0:0:1::'] },
    { id: '222', name: 'kubepods/b', addresses: ['198.18.1.2'] },
  ]);
  t.match(sc.last, { namespaces: 3 }, 'a, b and the hostNetwork one');
});

t.test('the watcher feeds the set on every scan and calls afterScan; errors go to onError', async (t) => {
  const { cg, proc } = fake(t, { 10: ['p', '111', fib4('198.18.1.1'), null] });
  const pods = new LocalPods();
  let after = 0;
  const w = new ProcPodWatcher(new ProcPodScanner(cg, { proc, ownNetns: 999n }), pods, { intervalMs: 10, afterScan: () => after++ });
  w.tick();
  t.same([...pods.addresses()], ['198.18.1.1']);
  t.equal(after, 1);
  rmSync(join(proc, '10'), { recursive: true });
  w.tick();
  t.same([...pods.addresses()], [], 'the pod is gone at the next scan');
  const errors: string[] = [];
  const bad = new ProcPodWatcher(new ProcPodScanner(cg, { proc, ownNetns: 999n }), pods, {
    intervalMs: 10, afterScan: () => { throw new Error('kernel said no'); }, onError: (e) => errors.push(e.message),
  });
  bad.tick();
  t.same(errors, ['kernel said no']);
  w.start();
  w.stop();
});
