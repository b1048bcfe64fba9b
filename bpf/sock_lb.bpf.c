// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-level L4 load balancing (cgroup/sock_addr hooks).
 *
 * connect()/sendmsg() to a service VIP:port is rewritten to a backend before any packet
 * exists; getpeername()/recvmsg() rewrite the backend back to the VIP so the application
 * only ever sees the address it asked for. A TCP connect() to an L7 service goes to the agent's proxy instead
 * (lib/l7.h); one to a workload of another node, through a VIP or straight to its pod address, to the agent's tunnel
 * hand-over (lib/tunnel.h).
 */
#include "common.h"
#include "maps.h"
#include "addr.h"
#include "counters.h"
#include "events.h"
#include "lb.h"
#include "revnat.h"
#include "sock_addr.h"
#include "l7.h"
#include "authz.h"
#include "tunnel.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline __u8 sm_proto_of(__u32 sock_type)
{
	if (sock_type == SM_SOCK_STREAM)
		return SM_PROTO_TCP;
	if (sock_type == SM_SOCK_DGRAM)
		return SM_PROTO_UDP;
	return 0;
}

/* The destination of the call as a service key (v4 as v4-mapped). */
static __always_inline void sm_dest_key(struct bpf_sock_addr *ctx, int v6, __u8 proto,
					struct sm_service_key *key)
{
	sm_sock_addr_get(ctx, v6, key->addr);
	/* user_port: the sockaddr's network-order port in the low 16 bits */
	key->port = (__u16)ctx->user_port;
	key->proto = proto;
	key->pad = 0;
}

/* connect() (udp_send = 0) or unconnected UDP sendmsg() (udp_send = 1). */
static __always_inline int sm_balance(struct bpf_sock_addr *ctx, int v6, int udp_send)
{
	struct sm_service_key key;
	struct sm_service *svc;
	struct sm_counters *c;
	struct sm_flow flow;
	struct sm_pick pick;
	int handed = 0;
	__u8 proto;

	proto = sm_proto_of(ctx->type);
	if (!proto)
		return SM_SYSCALL_ALLOW;
	sm_dest_key(ctx, v6, proto, &key);
	svc = bpf_map_lookup_elem(&sm_services, &key);
	if (!svc)
		return proto == SM_PROTO_TCP && !udp_send ? sm_tunnel_direct(ctx, v6, &key) : SM_SYSCALL_ALLOW;

	flow.cookie = bpf_get_socket_cookie(ctx);
	flow.netns_cookie = bpf_get_netns_cookie(ctx);
	flow.vip = key.addr;
	flow.vport = key.port;
	flow.proto = proto;
	flow.algo = svc->algo;
	flow.service_id = svc->service_id;
	flow.cgroup_id = bpf_get_current_cgroup_id();
	flow.identity_id = 0;
	flow.policy_id = 0;

	/* UDP frontends are never L7 (the config validator rejects http on them); the flag is ignored there. */
	if ((svc->flags & SM_SVC_F_L7) && !udp_send && proto == SM_PROTO_TCP) {
		int verdict = sm_l7_connect(ctx, v6, &key, svc, &flow);

		if (verdict == SM_L7_DONE)
			return SM_SYSCALL_ALLOW;
		if (verdict == SM_L7_REFUSE)
			return SM_SYSCALL_DENY;
	}

	/* A v4 socket cannot reach a v6 backend; a v6 socket reaches v4 ones v4-mapped
	 * (backend addresses are stored mapped already). */
	if (sm_lb_select(svc, flow.netns_cookie, flow.cookie, &pick) < 0 ||
	    (!v6 && pick.be->family != SM_AF_INET)) {
		/* Refuse at once (EPERM) rather than let the call hang on a VIP nobody serves. */
		sm_global_inc(SM_G_LB_NO_BACKEND);
		c = sm_svc_stats_get(flow.service_id);
		if (c)
			c->no_backend++;
		sm_event_emit(SM_EV_NO_BACKEND, &flow, NULL, 0, 0, 0);
		return SM_SYSCALL_DENY;
	}

	/* L4 authorization: TCP only (Istio's L4 policies are about connections), after the pick because the verdict
	 * depends on the pod port the connection would reach. */
	if ((svc->flags & SM_SVC_F_AUTHZ) && !udp_send && proto == SM_PROTO_TCP &&
	    !sm_authz_allowed(svc, &flow, pick.be->port)) {
		sm_event_emit(SM_EV_AUTHZ_DENY, &flow, pick.be->addr, pick.be->port, pick.backend_id, 0);
		return SM_SYSCALL_DENY;
	}

	/* A workload of another node: to the tunnel hand-over (or, with it down, direct or refused: lib/tunnel.h). */
	if ((pick.be->flags & SM_BE_F_TUNNEL) && !udp_send && proto == SM_PROTO_TCP) {
		int verdict = sm_tunnel_connect(ctx, v6, &key, pick.be->addr, pick.be->port, pick.backend_id,
						pick.be->flags, &flow);

		if (verdict == SM_L7_REFUSE)
			return SM_SYSCALL_DENY;
		handed = verdict == SM_L7_DONE;
	}
	if (!handed) {
		sm_set_dest(ctx, v6, pick.be->addr, pick.be->port);
		sm_revnat_record(flow.cookie, pick.be->addr, pick.be->port, pick.backend_id, &key, flow.service_id);
	}

	sm_global_inc(udp_send ? SM_G_LB_UDP_SEND : SM_G_LB_CONNECT);
	if (pick.affinity_hit)
		sm_global_inc(SM_G_AFFINITY_HIT);
	c = sm_svc_stats_get(flow.service_id);
	if (c) {
		if (udp_send)
			c->udp_messages++;
		else
			c->connections++;
		if (pick.affinity_hit)
			c->affinity_hits++;
	}
	c = sm_backend_stats_get(pick.backend_id);
	if (c) {
		if (udp_send)
			c->udp_messages++;
		else
			c->connections++;
		if (pick.affinity_hit)
			c->affinity_hits++;
	}
	if (!handed)
		sm_event_emit(udp_send ? SM_EV_UDP_SEND : SM_EV_CONNECT, &flow, pick.be->addr, pick.be->port,
			      pick.backend_id, pick.affinity_hit ? SM_EV_F_AFFINITY_HIT : 0);
	return SM_SYSCALL_ALLOW;
}

/* getpeername() (the connected peer) or recvmsg() (the datagram's source): a backend this
 * socket was balanced to becomes the VIP again. These hooks must always return 1. */
static __always_inline int sm_reverse(struct bpf_sock_addr *ctx, int v6)
{
	struct sm_revnat *rn;
	__u32 addr[4];

	sm_sock_addr_get(ctx, v6, addr);
	rn = sm_revnat_lookup(bpf_get_socket_cookie(ctx), addr, (__u16)ctx->user_port);
	if (!rn) {
		sm_global_inc(SM_G_REVNAT_MISS);
		return SM_SYSCALL_ALLOW;
	}
	sm_set_dest(ctx, v6, rn->vip, rn->vport);
	return SM_SYSCALL_ALLOW;
}

SEC("cgroup/connect4")
int sm_connect4(struct bpf_sock_addr *ctx)
{
	return sm_balance(ctx, 0, 0);
}

SEC("cgroup/connect6")
int sm_connect6(struct bpf_sock_addr *ctx)
{
	return sm_balance(ctx, 1, 0);
}

SEC("cgroup/sendmsg4")
int sm_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sm_balance(ctx, 0, 1);
}

SEC("cgroup/sendmsg6")
int sm_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sm_balance(ctx, 1, 1);
}

SEC("cgroup/recvmsg4")
int sm_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sm_reverse(ctx, 0);
}

SEC("cgroup/recvmsg6")
int sm_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sm_reverse(ctx, 1);
}

SEC("cgroup/getpeername4")
int sm_getpeername4(struct bpf_sock_addr *ctx)
{
	return sm_reverse(ctx, 0);
}

SEC("cgroup/getpeername6")
int sm_getpeername6(struct bpf_sock_addr *ctx)
{
	return sm_reverse(ctx, 1);
}
