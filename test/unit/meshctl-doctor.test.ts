// meshctl doctor's verdicts, exit code and rendering, from made-up readings (the kernel test runs it against a real agent).
import t from 'tap';
import {
  DOCTOR_EXIT, abiCheck, adminSocketCheck, cgroupMountCheck, clockCheck, controlPlaneCheck, diagDestroyCheck, exitCodeFor, featureChecks,
  fillCheck, linksCheck, proxyListenersCheck, renderDoctor, summary, type Check, type Verdict,
} from '../../cli/commands/doctor.js';
import { ABI_VERSION } from '../../agent/datapath/abi.js';
import { L7_FEATURES, REQUIRED_FEATURES, SOCKMAP_FEATURES } from '../../agent/datapath/features.js';
import { ANSI, PLAIN, visibleWidth } from '../../cli/style.js';
import type { StatusReport } from '../../agent/admin/protocol.js';

const c = (check: string, verdict: Verdict, hint?: string): Check => ({ check, verdict, detail: `${check} detail`, ...(hint ? { hint } : {}) });

t.test('exit code by the worst verdict: 0 ok/skip, 2 warnings only, 1 any failure', async (t) => {
  t.equal(exitCodeFor([]), 0);
  t.equal(exitCodeFor([c('a', 'ok'), c('b', 'skip')]), DOCTOR_EXIT.ok);
  t.equal(exitCodeFor([c('a', 'ok'), c('b', 'warn', 'h')]), DOCTOR_EXIT.warn);
  t.equal(exitCodeFor([c('a', 'warn', 'h'), c('b', 'fail', 'h'), c('c', 'ok')]), DOCTOR_EXIT.fail);
  t.same([DOCTOR_EXIT.ok, DOCTOR_EXIT.fail, DOCTOR_EXIT.warn], [0, 1, 2]);
  t.same(summary([c('a', 'ok'), c('b', 'ok'), c('c', 'warn', 'h'), c('d', 'skip')]), { ok: 2, warn: 1, fail: 0, skip: 1 });
});

t.test('features: the agent\'s own lists, a required one missing fails, an optional one warns', async (t) => {
  const all: Record<string, boolean> = {};
  for (const [k] of [...REQUIRED_FEATURES, ...L7_FEATURES, ...SOCKMAP_FEATURES]) all[k] = true;
  const good = featureChecks(all, true);
  t.equal(good.length, Object.keys(all).length, 'one check per distinct feature');
  t.ok(good.every((x) => x.verdict === 'ok'));
  const noRingbuf = featureChecks({ ...all, 'mapTypes.ringbuf': false }, true);
  t.same(noRingbuf.filter((x) => x.verdict !== 'ok').map((x) => [x.check, x.verdict]), [['bpf map ringbuf', 'fail']]);
  const noSkMsg = (sockmap: boolean): Verdict => featureChecks({ ...all, 'progTypes.sk_msg': false }, sockmap).find((x) => x.check === 'bpf prog sk_msg')!.verdict;
  t.equal(noSkMsg(true), 'fail', 'the agent runs with the sockmap fast path: it needs sk_msg');
  t.equal(noSkMsg(false), 'warn', 'with --no-sockmap it does not');
  const noSockOpsCookie = featureChecks({ ...all, 'helpers.sock_ops:get_netns_cookie': false }, true).find((x) => x.check === 'bpf helper sock_ops:get_netns_cookie')!;
  t.equal(noSockOpsCookie.verdict, 'warn', 'L7 then follows the fail mode');
  t.match(noSockOpsCookie.detail, /L7 redirect, sockmap fast path/);
  const unprobed = { ...all };
  delete unprobed['mapTypes.lru_hash'];
  t.equal(featureChecks(unprobed, true).find((x) => x.check === 'bpf map lru_hash')!.verdict, 'skip');
});

t.test('host checks: cgroup mount, clock, CONFIG_INET_DIAG_DESTROY', async (t) => {
  t.equal(cgroupMountCheck(null, 0).verdict, 'fail');
  t.match(cgroupMountCheck('/sys/fs/cgroup', 0).detail, /unified/);
  t.match(cgroupMountCheck('/sys/fs/cgroup/unified', 9).detail, /hybrid: 9 cgroup v1 hierarchies/);
  t.equal(clockCheck('tsc').verdict, 'ok');
  t.equal(clockCheck('kvm-clock').verdict, 'ok');
  t.equal(clockCheck('hpet').verdict, 'warn');
  t.equal(clockCheck(null).verdict, 'skip');
  t.equal(diagDestroyCheck({ text: 'CONFIG_A=y\nCONFIG_INET_DIAG_DESTROY=y\n', from: '/proc/config.gz' }).verdict, 'ok');
  t.equal(diagDestroyCheck({ text: '# CONFIG_INET_DIAG_DESTROY is not set\n', from: '/boot/config-x' }).verdict, 'warn');
  const none = diagDestroyCheck({ missing: 'neither /proc/config.gz nor /boot/config-x exists' });
  t.equal(none.verdict, 'skip');
  t.match(none.detail, /neither/, 'a skip says why');
});

t.test('pins: ABI version, links against what the agent attached', async (t) => {
  t.equal(abiCheck(BigInt(ABI_VERSION)).verdict, 'ok');
  t.equal(abiCheck(BigInt(ABI_VERSION) + 1n).verdict, 'fail');
  t.match(abiCheck(BigInt(ABI_VERSION) + 1n).hint!, /cleanup/);
  t.equal(abiCheck(0n).verdict, 'warn');
  t.equal(abiCheck(null).verdict, 'fail');
  const link = (program: string, cgroupId = 7) => ({ program, info: { id: 1, progId: 2, type: 3, attachType: 4, cgroupId } });
  const core = ['sm_connect4', 'sm_connect6', 'sm_sendmsg4', 'sm_sendmsg6', 'sm_recvmsg4', 'sm_recvmsg6', 'sm_getpeername4', 'sm_getpeername6'];
  t.equal(linksCheck(core.map((p) => link(p)), null).verdict, 'ok', 'agent down: the core links are enough');
  t.equal(linksCheck(core.map((p) => link(p)), core).verdict, 'ok');
  t.match(linksCheck(core.map((p) => link(p)), [...core, 'sm_sockops']).detail, /attached by the agent but no pinned link: sm_sockops/);
  t.match(linksCheck(core.slice(1).map((p) => link(p)), null).detail, /missing: sm_connect4/);
  t.match(linksCheck([...core.map((p) => link(p)), link('sm_sockops', 0)], null).detail, /defunct .*sm_sockops/);
  t.match(linksCheck([...core.map((p) => link(p)), link('other')], null).detail, /not sockmesh programs: other/);
  t.equal(linksCheck([], null).verdict, 'fail');
});

t.test('map fill: warn above 80%, fail when full', async (t) => {
  const m = (map: string, entries: number, maxEntries = 100) => ({ map, entries, maxEntries });
  t.equal(fillCheck([m('a', 80), m('b', 3)]).verdict, 'ok', '80% is not above 80%');
  t.match(fillCheck([m('a', 80), m('b', 3)]).detail, /fullest: a 80\/100 \(80\.0%\)/);
  const w = fillCheck([m('a', 81), m('b', 95), m('c', 1)]);
  t.equal(w.verdict, 'warn');
  t.match(w.detail, /above 80%: b 95\/100 \(95\.0%\), a 81\/100/);
  t.equal(fillCheck([m('a', 100), m('b', 90)]).verdict, 'fail');
  t.equal(fillCheck([]).verdict, 'skip');
});

t.test('proxy listeners: every address the kernel may redirect to has its listening socket in sm_proxy_socks', async (t) => {
  const px = {
    v4: '127.0.0.1', v6: '::1', port: 15001, nodeV4: '10.0.0.1', nodeV6: null, cgroupId: '1', alive: true,
    listeners: ['10.0.0.1:15001', '127.0.0.1:15001', '[::1]:15001'], heartbeatAgeMs: 100, timeoutMs: 3000, inMesh: false,
  };
  t.equal(proxyListenersCheck(null).verdict, 'skip', 'no proxy announced');
  t.equal(proxyListenersCheck({ ...px, heartbeatAgeMs: null, listeners: [] }).verdict, 'skip', 'marked down: none expected');
  const good = proxyListenersCheck(px);
  t.equal(good.verdict, 'ok');
  t.equal(good.detail, '127.0.0.1:15001 [::1]:15001 10.0.0.1:15001 in sm_proxy_socks');
  const dead = proxyListenersCheck({ ...px, listeners: [] });
  t.equal(dead.verdict, 'fail', 'a fresh heartbeat does not hide a dead agent');
  t.match(dead.detail, /not in sm_proxy_socks: 127\.0\.0\.1:15001 \[::1\]:15001 10\.0\.0\.1:15001 \(none held\)/);
  t.match(dead.hint!, /agent .* gone/);
  t.match(proxyListenersCheck({ ...px, listeners: ['127.0.0.1:15001', '[::1]:15001'] }).detail, /not in sm_proxy_socks: 10\.0\.0\.1:15001 \(held: /);
});

t.test('agent side: admin socket permissions, control plane', async (t) => {
  const st = (mode: number, uid = 0, socket = true) => ({ mode, uid, isSocket: () => socket });
  t.equal(adminSocketCheck('/run/s', st(0o140600), true).verdict, 'ok');
  t.equal(adminSocketCheck('/run/s', st(0o140666), true).verdict, 'fail', 'others may talk to the agent');
  t.equal(adminSocketCheck('/run/s', st(0o140600, 1000), true).verdict, 'warn');
  t.equal(adminSocketCheck('/run/s', st(0o100600, 0, false), true).verdict, 'fail');
  t.match(adminSocketCheck('/run/s', st(0o140600), false).detail, /left over/, 'a socket nobody answers on');
  t.match(adminSocketCheck('/run/s', null, false).detail, /missing/);
  const cp = (over: Partial<NonNullable<StatusReport['controlPlane']>>): NonNullable<StatusReport['controlPlane']> => ({
    server: 'cp:18000', mode: 'delta', state: 'connected', connectedSince: '2026-12-04T00:00:00Z', lastError: null, reconnects: 0,
    acked: {}, lastNack: null, unsupported: [], warming: [], synced: true, ...over,
  });
  t.equal(controlPlaneCheck(null, 'file:/etc/x.yaml').verdict, 'skip');
  t.equal(controlPlaneCheck(cp({}), 'xds').verdict, 'ok');
  t.equal(controlPlaneCheck(cp({ synced: false }), 'xds').verdict, 'warn');
  t.equal(controlPlaneCheck(cp({ lastNack: { typeUrl: 'x.Cluster', version: '2', at: 'now', reason: 'bad' } }), 'xds').verdict, 'warn');
  const down = controlPlaneCheck(cp({ state: 'backoff', lastError: 'connect ECONNREFUSED' }), 'xds');
  t.equal(down.verdict, 'fail');
  t.match(down.detail, /backoff \(connect ECONNREFUSED\)/);
});

t.test('rendering: one aligned row per check, then what to do for warnings and failures, then the counts', async (t) => {
  const checks = [c('agent', 'ok'), c('pins', 'fail', 'restart the agent'), c('clock source', 'warn', 'use tsc'), c('control plane', 'skip')];
  const lines = renderDoctor(checks, PLAIN);
  t.same(lines, [
    'VERDICT  CHECK          DETAIL',
    'ok       agent          agent detail',
    'FAIL     pins           pins detail',
    'warn     clock source   clock source detail',
    'skip     control plane  control plane detail',
    '',
    'What to do',
    '  FAIL pins: restart the agent',
    '  warn clock source: use tsc',
    '',
    '1 ok, 1 warn, 1 fail, 1 skipped',
  ]);
  const styled = renderDoctor(checks, ANSI);
  t.ok(styled[2]!.includes('\x1b[31mFAIL\x1b[39m'), 'failures in red');
  t.equal(visibleWidth(styled[1]!), lines[1]!.length, 'styling keeps the alignment');
  t.notOk(renderDoctor([c('agent', 'ok')], PLAIN).includes('What to do'), 'nothing to do: no such section');
});
