// The kernel ABI has three descriptions that must agree: the C header (compiled into the BPF objects and the addon),
// and the TypeScript codecs. The addon reports what the compiler computed; this test compares it with abi.ts.
import t from 'tap';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ABI_VERSION, MAX_STRICT, MTLS_MODE, ALGO, AUTHZ_ALLOW, AUTHZ_DENY, MAX_AUTHZ_POLICIES, SVC_F_AUTHZ, SVC_F_AUTHZ_DENY, BE_F_LOCAL, BE_F_STRICT, BE_F_TUNNEL, CFG_F_SOCKMAP, GLOBAL_COUNTERS, PROTO, SOCK_F_ACTIVE, SOCK_F_BULK, SOCK_F_NOT_BULK, SOCK_F_SENT, SOCK_F_TCP_ONLY, STRUCTS, SVC_F_AFFINITY, SVC_F_FAIL_OPEN, SVC_F_L7, EVENT_KIND, EV_F_ACTIVE, EV_F_AFFINITY_HIT, PROXY_HEARTBEAT_OFFSET, PROXY_NODE_V4_OFFSET, PROXY_NODE_V6_OFFSET, PROXY_TUNNEL_PORT_OFFSET, PROXY_FLAGS_OFFSET, PROXY_F_IN_MESH, PROXY_F_HANDOVER_IN_MESH, addrToBytes, bytesToAddr, decode, encode } from '../../agent/datapath/abi.js';
import { ROOT } from '../lib/kernel.js';

const built = existsSync(join(ROOT, 'build', 'Release', 'sockmesh.node'));

t.test('TypeScript codecs match the compiler\'s layout of sockmesh_abi.h', { skip: built ? false : 'native addon not built (npm ci)' }, async (t) => {
  const { native } = await import('../../agent/datapath/native.js');
  const layout = native().abiLayout();
  t.same(Object.keys(layout).sort(), Object.keys(STRUCTS).sort(), 'the same structs on both sides');
  for (const [name, def] of Object.entries(STRUCTS)) {
    const c = layout[name];
    if (!c) continue;
    t.equal(def.size, c.size, `${name}: size ${c.size}`);
    const ts = Object.fromEntries(def.fields.map((f) => [f.name, f.offset]));
    t.same(ts, c.offsets, `${name}: every field at the same offset`);
  }
});

t.test('constants match the header', { skip: built ? false : 'native addon not built (npm ci)' }, async (t) => {
  const { native } = await import('../../agent/datapath/native.js');
  const k = native().abiConstants();
  t.equal(k.SM_ABI_VERSION, ABI_VERSION);
  t.equal(k.SM_PROTO_TCP, PROTO.tcp);
  t.equal(k.SM_PROTO_UDP, PROTO.udp);
  t.equal(k.SM_ALGO_RANDOM, ALGO.random);
  t.equal(k.SM_ALGO_WEIGHTED, ALGO.weighted);
  t.equal(k.SM_ALGO_MAGLEV, ALGO.maglev);
  t.equal(k.SM_SVC_F_AFFINITY, SVC_F_AFFINITY);
  t.equal(k.SM_SVC_F_L7, SVC_F_L7);
  t.equal(k.SM_PROXY_F_IN_MESH, PROXY_F_IN_MESH);
  t.equal(k.SM_PROXY_F_HANDOVER_IN_MESH, PROXY_F_HANDOVER_IN_MESH);
  t.equal(k.SM_SVC_F_FAIL_OPEN, SVC_F_FAIL_OPEN);
  t.equal(EVENT_KIND[k.SM_EV_L7_REDIRECT!], 'l7-redirect');
  t.equal(EVENT_KIND[k.SM_EV_L7_REFUSED!], 'l7-refused');
  t.equal(EVENT_KIND[k.SM_EV_SOCK_INSERT!], 'sock-insert');
  t.equal(EVENT_KIND[k.SM_EV_REDIRECT_MISS!], 'redirect-miss');
  t.equal(EVENT_KIND[k.SM_EV_CONNECT!], 'connect');
  t.equal(EVENT_KIND[k.SM_EV_NO_BACKEND!], 'no-backend');
  t.equal(k.SM_EV_F_AFFINITY_HIT, EV_F_AFFINITY_HIT);
  t.equal(k.SM_EV_F_ACTIVE, EV_F_ACTIVE);
  t.equal(PROXY_HEARTBEAT_OFFSET, native().abiLayout().sm_proxy!.offsets.heartbeat_ns, 'the heartbeat is written at its offset');
  t.equal(PROXY_NODE_V4_OFFSET, native().abiLayout().sm_proxy!.offsets.node_v4, 'the node v4 address is written at its offset');
  t.equal(PROXY_NODE_V6_OFFSET, native().abiLayout().sm_proxy!.offsets.node_v6, 'the node v6 address is written at its offset');
  t.equal(k.SM_BE_F_LOCAL, BE_F_LOCAL);
  t.equal(k.SM_BE_F_TUNNEL, BE_F_TUNNEL);
  t.equal(k.SM_BE_F_STRICT, BE_F_STRICT);
  t.equal(PROXY_TUNNEL_PORT_OFFSET, native().abiLayout().sm_proxy!.offsets.tunnel_port, 'the tunnel hand-over\'s port is written at its offset');
  t.equal(PROXY_FLAGS_OFFSET, native().abiLayout().sm_proxy!.offsets.flags, 'the proxy\'s flags are written at their offset');
  t.equal(k.SM_SOCK_F_ACTIVE, SOCK_F_ACTIVE);
  t.equal(k.SM_SOCK_F_TCP_ONLY, SOCK_F_TCP_ONLY);
  t.equal(k.SM_SOCK_F_SENT, SOCK_F_SENT);
  t.equal(k.SM_SOCK_F_BULK, SOCK_F_BULK);
  t.equal(k.SM_SOCK_F_NOT_BULK, SOCK_F_NOT_BULK);
  t.equal(k.SM_CFG_F_SOCKMAP, CFG_F_SOCKMAP);
  t.equal(k.SM_G__MAX, GLOBAL_COUNTERS.length, 'one name per global counter');
  t.equal(k.SM_G_REDIRECT, GLOBAL_COUNTERS.indexOf('redirect'));
  t.equal(k.SM_G_EVENT_DROP, GLOBAL_COUNTERS.indexOf('event_drop'));
  t.equal(k.SM_G_L7_REDIRECT, GLOBAL_COUNTERS.indexOf('l7_redirect'));
  t.equal(k.SM_G_L7_HANDOFF, GLOBAL_COUNTERS.indexOf('l7_handoff'));
  t.equal(k.SM_G_BULK_LEAVE, GLOBAL_COUNTERS.indexOf('bulk_leave'));
  t.equal(k.SM_G_BULK_KEPT, GLOBAL_COUNTERS.indexOf('bulk_kept'));
  t.equal(k.SM_G_STALE_PEER, GLOBAL_COUNTERS.indexOf('stale_peer'));
  t.equal(k.SM_G_L7_PROXY_GONE, GLOBAL_COUNTERS.indexOf('l7_proxy_gone'));
  t.equal(k.SM_G_AUTHZ_ALLOW, GLOBAL_COUNTERS.indexOf('authz_allow'));
  t.equal(k.SM_G_AUTHZ_DENY, GLOBAL_COUNTERS.indexOf('authz_deny'));
  t.equal(k.SM_SVC_F_AUTHZ, SVC_F_AUTHZ);
  t.equal(k.SM_SVC_F_AUTHZ_DENY, SVC_F_AUTHZ_DENY);
  t.equal(k.SM_AUTHZ_ALLOW, AUTHZ_ALLOW);
  t.equal(k.SM_AUTHZ_DENY, AUTHZ_DENY);
  t.equal(k.SM_MAX_AUTHZ_POLICIES, MAX_AUTHZ_POLICIES);
  t.equal(EVENT_KIND[k.SM_EV_AUTHZ_DENY!], 'authz-deny');
  t.equal(EVENT_KIND[k.SM_EV_TUNNEL!], 'tunnel');
  t.equal(EVENT_KIND[k.SM_EV_TUNNEL_REFUSED!], 'tunnel-refused');
  t.equal(k.SM_G_TUNNEL_HANDOVER, GLOBAL_COUNTERS.indexOf('tunnel_handover'));
  t.equal(k.SM_G_TUNNEL_DIRECT, GLOBAL_COUNTERS.indexOf('tunnel_direct'));
  t.equal(k.SM_G_TUNNEL_REFUSED, GLOBAL_COUNTERS.indexOf('tunnel_refused'));
  t.equal(EVENT_KIND[k.SM_EV_STRICT_DROP!], 'strict-drop');
  t.equal(k.SM_G_STRICT_DROP, GLOBAL_COUNTERS.indexOf('strict_drop'));
  t.equal(k.SM_G_STRICT_LOCAL, GLOBAL_COUNTERS.indexOf('strict_local'));
  t.same([k.SM_MTLS_OFF, k.SM_MTLS_PERMISSIVE, k.SM_MTLS_STRICT], [MTLS_MODE.off, MTLS_MODE.permissive, MTLS_MODE.strict]);
  t.equal(k.SM_MAX_STRICT, MAX_STRICT);
});

t.test('address codec: v4 as v4-mapped, v6 compressed, round trips', async (t) => {
  t.equal(addrToBytes('127.0.0.1').toString('hex'), '00000000000000000000ffff7f000001');
  t.equal(addrToBytes('::1').toString('hex'), '00000000000000000000000000000001');
  t.equal(addrToBytes('::ffff:10.1.2.3').toString('hex'), '00000000000000000000ffff0a010203');
  for (const a of ['127.77.1.1', '::1', 'fd00::77', '2001:db8:0:1::5', 'fe80::1:2:3:4', '1:2:3:4:5:6:7:8']) {
    t.equal(bytesToAddr(addrToBytes(a)), a, a);
  }
  const key = encode('sm_service_key', { addr: '127.100.0.1', port: 80, proto: 6 });
  t.equal(key.toString('hex'), '00000000000000000000ffff7f6400010050' + '0600', 'port in network order');
  t.same(decode('sm_service_key', key), { addr: '127.100.0.1', port: 80, proto: 6 });
});

t.test('parseV4Into: dotted IPv4 straight into a v4-mapped key, anything else refused', async (t) => {
  const { parseV4Into } = await import('../../agent/datapath/datapath.js');
  const out = Buffer.alloc(32, 0xaa);
  t.equal(parseV4Into('127.0.0.1', 0, out, 8), 127);
  t.equal(out.subarray(8, 24).toString('hex'), addrToBytes('127.0.0.1').toString('hex'));
  t.equal(parseV4Into('::ffff:10.1.2.3', 7, out, 8), 10);
  t.equal(bytesToAddr(out, 8), '10.1.2.3');
  t.equal(out.subarray(0, 8).toString('hex'), 'aa'.repeat(8), 'nothing written before the address');
  t.equal(out.subarray(24).toString('hex'), 'aa'.repeat(8), 'nor after it');
  for (const bad of ['::1', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1..2.3', '1.2.3.', 'a.b.c.d', '1.2.3.4 ', '', '1234.1.1.1']) {
    t.equal(parseV4Into(bad, 0, Buffer.alloc(16), 0), -1, `'${bad}' refused`);
  }
});
