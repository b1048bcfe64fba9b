/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The L7 redirect at connect(): a TCP connect() to a service marked SM_SVC_F_L7 goes to the agent's proxy
 * instead of a backend, and the original VIP:port (with the caller's cgroup) is kept for the proxy to find.
 *
 *  - from the proxy's own cgroup: never to the proxy (its upstream connections and the agent's health probes
 *    would loop back into it); balanced at L4 like any service.
 *  - proxy alive (heartbeat younger than its timeout, reachable from the caller's netns): redirected, to the
 *    loopback listener from the proxy's netns, to the node address (--proxy-node-address) from any other.
 *  - proxy down: SM_SVC_F_FAIL_OPEN balances at L4 (skipping the L7 rules), otherwise connect() fails at once
 *    with EPERM, as for a service without backends.
 *
 * "Alive" is two checks. The heartbeat catches a proxy that is there but not serving (stopped, its event loop
 * stalled). A dead one (SIGKILL, OOM kill, a segfault) is seen from its listening socket: the agent puts each
 * listener into sm_proxy_socks, and the kernel removes a socket from every sockmap when it closes, which a dying
 * process's sockets do at exit. So from the first connect() after the death the listener the call would go to is
 * missing and the fail mode applies, where the heartbeat alone would send calls to a dead port (ECONNREFUSED, or for
 * failMode open a failure that should have been a backend) for up to 3 intervals.
 * Why this and not bpf_sk_lookup_tcp(): a sock_addr program looks up in the caller's netns (another one only by a
 * netns *id* relative to the caller's, which a pod's netns does not have for the node's), and it finds whichever
 * socket listens on that address:port, while the sockhash holds exactly the agent's own listener. The lookup takes a
 * reference the program must drop (bpf_sk_release), which the verifier enforces; about 50 ns per L7 connect.
 * A listener handed to a new agent (hot restart) is the same socket: it stays in the map as long as either holds it.
 */
#ifndef SM_L7_H
#define SM_L7_H

#include "maps.h"
#include "addr.h"
#include "counters.h"
#include "events.h"
#include "revnat.h"
#include "sock_addr.h"

enum sm_l7_verdict {
	SM_L7_BALANCE = 0,  /* go on with L4 balancing */
	SM_L7_DONE = 1,     /* redirected to the proxy: allow the call as rewritten */
	SM_L7_REFUSE = 2,   /* fail closed: refuse the call */
};

static __always_inline struct sm_proxy *sm_proxy_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sm_proxy, &zero);
}

/* Of a proxy address pair (v4 and v6, zero: not set), the one a socket of this family can reach for this VIP, or
 * NULL. A v4 socket (or a dual-stack socket asking for a v4-mapped VIP) goes to the v4 address; a v6 VIP to the v6
 * one, else to the v4 one mapped. Used for the loopback listener and for the node addresses (a client in another
 * netns). */
static __always_inline const __u32 *sm_proxy_pick(const __u32 *a4, const __u32 *a6, int v6, const __u32 *vip)
{
	if (v6 && !sm_addr_is_v4_mapped(vip) && !sm_addr_is_zero(a6))
		return a6;
	return sm_addr_is_zero(a4) ? NULL : a4;
}

static __always_inline int sm_proxy_alive(const struct sm_proxy *px)
{
	__u64 hb = px->heartbeat_ns;
	__u64 now;

	if (hb == 0)
		return 0;
	now = bpf_ktime_get_ns();
	/* now < hb only if userland wrote another clock: treat as dead rather than alive forever */
	return now >= hb && now - hb <= px->timeout_ns;
}

/* The proxy's listener on dst:port is open (it is in sm_proxy_socks and still listening). */
static __always_inline int sm_proxy_listening(const __u32 *dst, __u16 port)
{
	struct sm_proxy_sock_key k = {};
	struct bpf_sock *sk;
	int ok;

	sm_addr_copy(k.addr, dst);
	k.port = port;
	sk = bpf_map_lookup_elem(&sm_proxy_socks, &k);
	if (!sk)
		return 0;
	/* A socket is in a sockmap only while listening or established; a listener shut down leaves it. Checked anyway:
	 * a redirect to anything but a listener is a connection to nothing. */
	ok = sk->state == BPF_TCP_LISTEN;
	bpf_sk_release(sk);
	return ok;
}

/* The proxy's address a caller in netns_cookie can reach for this VIP (the loopback listener from the proxy's netns,
 * the node address from any other), or NULL. The tunnel hand-over's listeners are on the same addresses. */
static __always_inline const __u32 *sm_proxy_reach(const struct sm_proxy *px, int v6, const __u32 *vip, __u64 netns_cookie)
{
	const __u32 *dst = sm_proxy_pick(px->v4, px->v6, v6, vip);

	/* A loopback listener exists only in the proxy's netns: from another one (a pod) the call would reach whatever
	 * listens on that port there, or nothing. Such a client goes to the proxy's node address, which its routes
	 * reach, or (none set) gets the fail mode. */
	if (dst && sm_addr_is_loopback(dst) && px->netns_cookie != 0 && px->netns_cookie != netns_cookie)
		dst = sm_proxy_pick(px->node_v4, px->node_v6, v6, vip);
	return dst;
}

static __always_inline int sm_l7_connect(struct bpf_sock_addr *ctx, int v6, const struct sm_service_key *key,
					 const struct sm_service *svc, const struct sm_flow *flow)
{
	struct sm_orig_dst orig = {};
	struct sm_counters *c;
	const __u32 *dst = NULL;
	struct sm_proxy *px;
	__u64 cgroup_id;
	__u16 port;

	px = sm_proxy_get();
	cgroup_id = flow->cgroup_id;
	if (px && px->cgroup_id == cgroup_id) {
		sm_global_inc(SM_G_L7_FROM_PROXY);
		return SM_L7_BALANCE;
	}
	if (px && sm_proxy_alive(px)) {
		dst = sm_proxy_reach(px, v6, key->addr, flow->netns_cookie);
		/* The heartbeat is fresh, but the process may have died since (no beats for up to 3 intervals then). */
		if (dst && !sm_proxy_listening(dst, px->port)) {
			sm_global_inc(SM_G_L7_PROXY_GONE);
			dst = NULL;
		}
	}
	if (!dst) {
		if (svc->flags & SM_SVC_F_FAIL_OPEN) {
			sm_global_inc(SM_G_L7_FAIL_OPEN);
			return SM_L7_BALANCE;
		}
		sm_global_inc(SM_G_L7_FAIL_CLOSED);
		c = sm_svc_stats_get(flow->service_id);
		if (c)
			c->no_backend++;
		sm_event_emit(SM_EV_L7_REFUSED, flow, NULL, 0, 0, 0);
		return SM_L7_REFUSE;
	}

	port = px->port;
	sm_addr_copy(orig.vip, key->addr);
	orig.vport = key->port;
	orig.service_id = svc->service_id;
	orig.cgroup_id = cgroup_id;
	/* Keyed by cookie until sock_ops knows the local port (connect() has not chosen it yet). */
	bpf_map_update_elem(&sm_l7_pending, &flow->cookie, &orig, BPF_ANY);
	sm_set_dest(ctx, v6, dst, port);
	sm_revnat_record(flow->cookie, dst, port, 0, key, svc->service_id);

	sm_global_inc(SM_G_L7_REDIRECT);
	c = sm_svc_stats_get(flow->service_id);
	if (c)
		c->connections++;
	sm_event_emit(SM_EV_L7_REDIRECT, flow, dst, port, 0, 0);
	return SM_L7_DONE;
}

#endif /* SM_L7_H */
