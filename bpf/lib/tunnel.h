/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The hand-over of cross-node connections to the tunnel (issue 13, HBONE), at connect(): a TCP connect() that would
 * reach a workload of another node whose mTLS mode is not off (a VIP's backend with SM_BE_F_TUNNEL, or a pod address
 * in sm_remote_pods dialled directly) goes instead to the agent's tunnel hand-over listener, on the L7 proxy's
 * addresses (loopback from the agent's netns, the node address from a pod's) at sm_proxy.tunnel_port. The original
 * destination (what connect() asked for, the pod chosen, the caller's cgroup) is kept exactly as for the L7 redirect
 * (sm_l7_pending by cookie, moved to sm_l7_peers by sock_ops in l7.bpf.c), and the agent opens an HTTP/2 CONNECT
 * stream to the pod's node as the caller's workload identity (agent/tunnelhandover.ts).
 *
 * Alive = the proxy's heartbeat is fresh and the hand-over's listener for that address is in sm_proxy_socks (a killed
 * agent's sockets leave it at once, lib/l7.h). Down: a permissive destination is reached directly, in plaintext, as
 * with mTLS off (it accepts both; the alternative, refusing, would turn every agent crash into an outage for
 * cross-node traffic that policy allows in the clear); a strict one would refuse a raw connection anyway, so
 * connect() fails at once with ECONNREFUSED (a client retries that, and the restarted agent takes it) rather than
 * after a round trip to the other node.
 * The agent's own connections (its cgroup: the L7 proxy's upstreams, probes) are never handed over: the agent would
 * hand its own connections to itself, and they carry no workload identity.
 */
#ifndef SM_TUNNEL_H
#define SM_TUNNEL_H

#include "maps.h"
#include "addr.h"
#include "counters.h"
#include "events.h"
#include "revnat.h"
#include "sock_addr.h"
#include "l7.h"

#define SM_ECONNREFUSED 111

static __always_inline int sm_tunnel_connect(struct bpf_sock_addr *ctx, int v6, const struct sm_service_key *key,
					     const __u32 *be_addr, __u16 be_port, __u32 backend_id, __u8 be_flags,
					     const struct sm_flow *flow)
{
	struct sm_orig_dst orig = {};
	const __u32 *dst = NULL;
	struct sm_proxy *px;
	__u16 port = 0;

	px = sm_proxy_get();
	if (px && px->cgroup_id == flow->cgroup_id)
		return SM_L7_BALANCE;
	if (px && px->tunnel_port && sm_proxy_alive(px)) {
		port = px->tunnel_port;
		dst = sm_proxy_reach(px, v6, key->addr, flow->netns_cookie);
		if (dst && !sm_proxy_listening(dst, port))
			dst = NULL;
	}
	if (!dst) {
		if (be_flags & SM_BE_F_STRICT) {
			sm_global_inc(SM_G_TUNNEL_REFUSED);
			sm_event_emit(SM_EV_TUNNEL_REFUSED, flow, be_addr, be_port, backend_id, 0);
			bpf_set_retval(-SM_ECONNREFUSED);
			return SM_L7_REFUSE;
		}
		sm_global_inc(SM_G_TUNNEL_DIRECT);
		return SM_L7_BALANCE;
	}

	sm_addr_copy(orig.vip, key->addr);
	orig.vport = key->port;
	orig.service_id = flow->service_id;
	orig.cgroup_id = flow->cgroup_id;
	sm_addr_copy(orig.backend, be_addr);
	orig.backend_port = be_port;
	orig.backend_id = backend_id;
	/* Keyed by cookie until sock_ops knows the local port, as for the L7 redirect. */
	bpf_map_update_elem(&sm_l7_pending, &flow->cookie, &orig, BPF_ANY);
	sm_set_dest(ctx, v6, dst, port);
	/* getpeername() shows what connect() asked for (the VIP, or the pod itself). */
	sm_revnat_record(flow->cookie, dst, port, backend_id, key, flow->service_id);
	sm_global_inc(SM_G_TUNNEL_HANDOVER);
	sm_event_emit(SM_EV_TUNNEL, flow, be_addr, be_port, backend_id, 0);
	return SM_L7_DONE;
}

/* A TCP connect() straight to an address that is no VIP: handed over when it is another node's pod (sm_remote_pods).
 * Returns the sock_addr verdict. */
static __always_inline int sm_tunnel_direct(struct bpf_sock_addr *ctx, int v6, const struct sm_service_key *key)
{
	struct sm_flow flow = {};
	__u32 *flags;

	flags = bpf_map_lookup_elem(&sm_remote_pods, key->addr);
	if (!flags)
		return SM_SYSCALL_ALLOW;
	flow.cookie = bpf_get_socket_cookie(ctx);
	flow.netns_cookie = bpf_get_netns_cookie(ctx);
	flow.vip = key->addr;
	flow.vport = key->port;
	flow.proto = SM_PROTO_TCP;
	flow.cgroup_id = bpf_get_current_cgroup_id();
	if (sm_tunnel_connect(ctx, v6, key, key->addr, key->port, 0, (__u8)*flags, &flow) == SM_L7_REFUSE)
		return SM_SYSCALL_DENY;
	return SM_SYSCALL_ALLOW;
}

#endif /* SM_TUNNEL_H */
