// Local pod discovery (agent/identity/podns.ts) over a fake cgroup tree and /proc: pods by network namespace, named by
// their cgroup, hostNetwork ones by cgroup; a namespace's addresses and where its routes go; the node address pods use.
import t, { type Test } from 'tap';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PodNames, discoverPods, findPod, labelBackends, labelSockets, netnsAddresses, netnsGateways, podGatewayAddress, podNetnses } from '../../agent/identity/podns.js';

const HOST_NS = 4026531840n;

function fake(t: Test) {
  const dir = mkdtempSync(join(tmpdir(), 'sockmesh-pods-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const proc = join(dir, 'proc'), meshed = join(dir, 'cg', 'meshed');
  mkdirSync(meshed, { recursive: true });
  writeFileSync(join(meshed, 'cgroup.procs'), '1\n'); // the meshed cgroup's own process: never a pod
  const cgroup = (rel: string, pids: number[]): void => {
    mkdirSync(join(meshed, rel), { recursive: true });
    writeFileSync(join(meshed, rel, 'cgroup.procs'), pids.map((p) => `${p}\n`).join(''));
  };
  const process = (pid: number, netns: bigint, net: Record<string, string> = {}): void => {
    mkdirSync(join(proc, String(pid), 'ns'), { recursive: true });
    symlinkSync(`net:[${netns}]`, join(proc, String(pid), 'ns', 'net'));
    mkdirSync(join(proc, String(pid), 'net'));
    for (const [f, text] of Object.entries(net)) writeFileSync(join(proc, String(pid), 'net', f), text);
  };
  return { proc, meshed, cgroup, process };
}

// What a lab pod's namespace shows: 198.18.3.1/32 and 2001:db8:3::1/128 on eth0, the node at 198.19.255.3 and
// 2001:db8:ffff::3 (a host route and the gateway of the pods' range).
const LAB_NET = {
  fib_trie: `Main:
  +-- 0.0.0.0/0 3 0 4
     |-- 127.0.0.1
        /32 host LOCAL
     |-- 198.18.3.1
        /32 host LOCAL
     |-- 198.19.255.3
        /32 link UNICAST
Local:
  +-- 0.0.0.0/0 3 0 4
     |-- 198.18.3.1
        /32 host LOCAL
`,
  if_inet6: `00000000000000000000000000000001 01 80 10 80       lo
20010db8000300000000000000000001 02 80 00 80     eth0
fe80000000000000c0ffeefffe000001 02 40 20 80     eth0
`,
  route: `Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t03FF13C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
eth0\t000312C6\t03FF13C6\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0
`,
  ipv6_route: `20010db8ffff00000000000000000003 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001     eth0
20010db8000300000000000000000000 40 00000000000000000000000000000000 00 20010db8ffff00000000000000000003 00000400 00000001 00000000 00000003     eth0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
20010db8000300000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001       lo
`,
};

t.test('pods by network namespace, named by the deepest cgroup holding them; hostNetwork pods by cgroup', async (t) => {
  const f = fake(t);
  f.process(1, HOST_NS);
  f.process(10, 100n, LAB_NET); f.process(11, 100n); f.process(12, 100n);
  f.process(20, 200n);
  f.process(30, HOST_NS); f.process(31, HOST_NS);
  f.cgroup('kubepods-lab/pod-a/c1', [10, 11]);
  f.cgroup('kubepods-lab/pod-a/c2', [12]);
  f.cgroup('kubepods-lab/pod-b', [20, 99]); // 99: gone since cgroup.procs was read
  f.cgroup('kubepods-lab/host', [30, 31]);
  f.cgroup('kubepods-lab/empty', []);
  const pods = discoverPods(f.meshed, { proc: f.proc, ownNetns: HOST_NS });
  t.same(pods.map((p) => [p.name, p.netns, p.pid, p.hostNetwork]), [
    ['kubepods-lab/host', HOST_NS, 30, true],
    ['kubepods-lab/pod-a', 100n, 10, false],
    ['kubepods-lab/pod-b', 200n, 20, false],
  ]);
  t.equal(pods[1]!.netnsPath, join(f.proc, '10', 'ns', 'net'));
  t.equal(pods[1]!.cgroup, join(f.meshed, 'kubepods-lab/pod-a'));
  t.same(podNetnses(pods).map((p) => p.name), ['kubepods-lab/pod-a', 'kubepods-lab/pod-b'], 'one entry per namespace, the node\'s left out');
  t.equal(findPod(pods, 'pod-b')?.name, 'kubepods-lab/pod-b', 'by its last part');
  t.equal(findPod(pods, 'kubepods-lab/pod-a')?.pid, 10, 'by its whole name');
  t.equal(findPod(pods, 'nope'), undefined);
  t.same(discoverPods(join(f.meshed, 'missing'), { proc: f.proc, ownNetns: HOST_NS }), [], 'no meshed cgroup: no pods');
});

t.test('a name shared by two pods is ambiguous by its last part', async (t) => {
  const f = fake(t);
  f.process(10, 100n); f.process(20, 200n);
  f.cgroup('kubepods-a/web', [10]);
  f.cgroup('kubepods-b/web', [20]);
  const pods = discoverPods(f.meshed, { proc: f.proc, ownNetns: HOST_NS });
  t.equal(findPod(pods, 'web'), undefined);
  t.equal(findPod(pods, 'kubepods-b/web')?.pid, 20);
});

t.test('a namespace\'s addresses and where its routes go, loopback and link-local left out', async (t) => {
  const f = fake(t);
  f.process(10, 100n, LAB_NET);
  t.same(netnsAddresses(10, f.proc).sort(), ['198.18.3.1', '2001:db8:3::1']);
  t.same(netnsGateways(10, f.proc).sort(), ['198.19.255.3', '2001:db8:ffff::3']);
  f.process(11, 101n);
  t.same(netnsAddresses(11, f.proc), [], 'nothing readable: nothing');
  t.same(netnsGateways(11, f.proc), []);
});

t.test('the node address pods route to: a gateway that is the node\'s own, the one most pods use', async (t) => {
  const f = fake(t);
  f.process(10, 100n, LAB_NET);
  f.process(20, 200n, LAB_NET);
  f.process(30, 300n, { route: LAB_NET.route.replace(/03FF13C6/g, '09FF13C6') }); // 198.19.255.9
  f.cgroup('kubepods-lab/a', [10]); f.cgroup('kubepods-lab/b', [20]); f.cgroup('kubepods-lab/c', [30]);
  const pods = discoverPods(f.meshed, { proc: f.proc, ownNetns: HOST_NS });
  const node = new Set(['127.0.0.1', '198.19.255.3', '198.19.255.9', '2001:db8:ffff::3']);
  t.same(podGatewayAddress(pods, node, f.proc), { v4: '198.19.255.3', v6: '2001:db8:ffff::3' });
  t.same(podGatewayAddress(pods, new Set(['198.19.255.9']), f.proc), { v4: '198.19.255.9', v6: '' }, 'only node addresses count');
  t.same(podGatewayAddress(pods, new Set(['10.0.0.1']), f.proc), { v4: '', v6: '' }, 'a gateway that is not the node\'s (Calico\'s 169.254.1.1): none');
  t.same(podGatewayAddress([], node, f.proc), { v4: '', v6: '' }, 'no pods: none');
});

t.test('pod names for sockets (loopback by netns cookie, else by address) and backends, with fast-path counts', async (t) => {
  const f = fake(t);
  f.process(10, 100n, LAB_NET);
  f.process(20, 200n, { fib_trie: LAB_NET.fib_trie.replace(/198\.18\.3\.1/g, '198.18.3.2'), if_inet6: '' });
  f.cgroup('kubepods-lab/a', [10]); f.cgroup('kubepods-lab/b', [20]);
  const pods = discoverPods(f.meshed, { proc: f.proc, ownNetns: HOST_NS });
  const cookies: Record<string, bigint> = { [join(f.proc, '10', 'ns', 'net')]: 4097n, [join(f.proc, '20', 'ns', 'net')]: 4098n };
  const names = new PodNames(pods, { netnsCookie: (p) => cookies[p]!, ownCookie: 1n, node: new Set(['198.19.255.3', '127.0.0.1']), proc: f.proc });
  t.equal(names.ofAddress('198.18.3.2'), 'kubepods-lab/b');
  t.equal(names.ofAddress('2001:DB8:3::1'), 'kubepods-lab/a', 'v6, any case');
  t.equal(names.ofAddress('198.19.255.3'), 'node');
  t.equal(names.ofAddress('10.9.9.9'), '');
  const sock = (netnsCookie: string, local: string, remote: string, backendId = 0, active = true, tcpOnly = false) =>
    ({ netnsCookie, local, remote, serviceId: backendId ? 1 : 0, backendId, tcpOnly, active });
  const labeled = labelSockets([
    sock('4097', '127.0.0.1:40000', '127.0.0.1:8080', 7), // loopback inside pod a
    sock('0', '198.18.3.1:41000', '198.18.3.2:8080', 8), // pod a -> pod b, no netns cookie in the key
    sock('0', '198.18.3.2:8080', '198.18.3.1:41000', 8, false),
    sock('1', '127.0.0.1:5000', '127.0.0.1:5001'), // the node's namespace
    sock('999', '127.0.0.1:5000', '127.0.0.1:5001', 9, true, true), // an unknown namespace: not named
  ], names);
  t.same(labeled.map((s) => [s.pod ?? '', s.peerPod ?? '']), [
    ['kubepods-lab/a', 'kubepods-lab/a'], ['kubepods-lab/a', 'kubepods-lab/b'], ['kubepods-lab/b', 'kubepods-lab/a'], ['node', 'node'], ['', ''],
  ]);
  const fes = labelBackends([{ service: 'x', backends: [{ id: 7, address: '127.0.0.1' }, { id: 8, address: '198.18.3.2' }, { id: 9, address: '10.0.0.1' }] }], labeled, names);
  t.same(fes[0]!.backends, [
    { id: 7, address: '127.0.0.1', fastPath: 1 },
    { id: 8, address: '198.18.3.2', pod: 'kubepods-lab/b', fastPath: 1 },
    { id: 9, address: '10.0.0.1', fastPath: 0 },
  ], 'pods by address; connecting sockets not pinned to TCP counted (accepted ends and tcp-only ones not)');
});
