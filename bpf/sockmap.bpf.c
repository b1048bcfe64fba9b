// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sockmap fast path: sock_ops puts established TCP sockets whose peer is on this node into the
 * sm_sockets SOCKHASH; sk_msg hands each send straight to the peer socket's receive queue.
 *
 * Ordering: redirected bytes are read by the peer before anything in its TCP receive queue.
 * Both ends are inserted in their ESTABLISHED callbacks, before connect()/accept() return, so
 * normally every byte is redirected. If a send finds no peer in the map its bytes take TCP,
 * and from then on that socket stays on TCP (SM_SOCK_F_TCP_ONLY) so nothing can overtake them.
 *
 * Bulk: a one-way stream of large sends leaves the fast path for TCP and the SOCKHASH (bpf/lib/bulk.h).
 */
#include "common.h"
#include "maps.h"
#include "addr.h"
#include "counters.h"
#include "events.h"
#include "revnat.h"
#include "sock_key.h"
#include "bulk.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline int sm_sockmap_enabled(void)
{
	const struct sm_config *cfg = sm_config_get();

	return cfg && (cfg->flags & SM_CFG_F_SOCKMAP);
}

/* Is the remote end of this connection on this node? */
static __always_inline int sm_peer_is_local(const struct sm_sock_key *k)
{
	struct sm_addr a;

	if (sm_addr_is_loopback(k->remote_ip))
		return 1;
	sm_addr_copy(a.a, k->remote_ip);
	return bpf_map_lookup_elem(&sm_local_addrs, &a) != NULL;
}

/* The L7 proxy or the tunnel hand-over, listening outside the meshed cgroup: their accepted sockets get no sock_ops, so
 * they never pair with the client's in the map, and the client's would only pay for sk_msg on every send and then take
 * TCP anyway (the ordering guard: SM_G_TCP_ONLY on every send; see SM_PROXY_F_IN_MESH). Each has its own flag: the
 * hand-over's listeners are made in the mesh even when the agent (and so the proxy) runs outside it. */
static __always_inline int sm_peer_is_proxy_outside_mesh(const struct sm_sock_key *k)
{
	struct sm_proxy *px;
	__u32 zero = 0;
	__u32 in_mesh;

	px = bpf_map_lookup_elem(&sm_proxy, &zero);
	if (!px)
		return 0;
	if (k->remote_port == bpf_ntohs(px->port))
		in_mesh = px->flags & SM_PROXY_F_IN_MESH;
	else if (px->tunnel_port && k->remote_port == bpf_ntohs(px->tunnel_port))
		in_mesh = px->flags & SM_PROXY_F_HANDOVER_IN_MESH;
	else
		return 0;
	/* In the mesh, the accepted socket pairs with the client's, at its loopback address (same netns) as at its node
	 * address (a pod: keys without the netns, lib/sock_key.h). */
	if (in_mesh)
		return 0;
	return sm_addr_eq(k->remote_ip, px->v4) || sm_addr_eq(k->remote_ip, px->v6) ||
	       sm_addr_eq(k->remote_ip, px->node_v4) || sm_addr_eq(k->remote_ip, px->node_v6);
}

/* A fast-path event (SM_EV_SOCK_INSERT, SM_EV_REDIRECT_MISS): vip = the socket's local end, backend = its peer. */
static __always_inline void sm_sock_event(__u8 kind, const struct sm_sock_key *k, __u64 cookie,
					  const struct sm_sock_meta *meta)
{
	struct sm_flow f = {};

	f.cookie = cookie;
	f.netns_cookie = k->netns_cookie;
	f.vip = k->local_ip;
	f.vport = bpf_htons((__u16)k->local_port);
	f.proto = SM_PROTO_TCP;
	f.service_id = meta ? meta->service_id : 0;
	sm_event_emit(kind, &f, k->remote_ip, bpf_htons((__u16)k->remote_port), meta ? meta->backend_id : 0,
		      meta && (meta->flags & SM_SOCK_F_ACTIVE) ? SM_EV_F_ACTIVE : 0);
}

static __always_inline void sm_sock_insert(struct bpf_sock_ops *skops, struct sm_sock_key *k,
					   const struct sm_sock_meta *meta)
{
	bpf_map_update_elem(&sm_sock_meta, k, meta, BPF_ANY);
	if (bpf_sock_hash_update(skops, &sm_sockets, k, BPF_ANY) != 0) {
		bpf_map_delete_elem(&sm_sock_meta, k);
		sm_global_inc(SM_G_SOCK_INSERT_FAIL);
		return;
	}
	sm_global_inc(SM_G_SOCK_INSERT);
	sm_sock_event(SM_EV_SOCK_INSERT, k, bpf_get_socket_cookie(skops), meta);
	/* STATE: to forget the meta when the connection closes (the map is LRU, this keeps it small); RTT: fires only
	 * once bytes of this socket take TCP, to take a bulk sender out of the SOCKHASH (bulk.h) */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG |
				  BPF_SOCK_OPS_RTT_CB_FLAG);
}

/* The connecting side is established before its peer can be (the peer's last ACK is sent after this callback), so
 * whatever the map holds under the peer's key now is some other socket with the same 4-tuple: one of a pod that is
 * gone (its netns kept alive by a process) whose address a new pod reuses. Pairing with it would hand this
 * connection's bytes to that socket, and its bytes to this one. Remove it: the real peer inserts itself when it is
 * established, and until then sends take TCP (the ordering guard in sm_sk_msg). */
static __always_inline void sm_sock_forget_stale_peer(const struct sm_sock_key *k)
{
	struct sm_sock_key pk;

	sm_sock_key_reverse(k, &pk);
	if (bpf_map_delete_elem(&sm_sockets, &pk) == 0)
		sm_global_inc(SM_G_STALE_PEER);
	bpf_map_delete_elem(&sm_sock_meta, &pk);
}

/* Connecting side: insert when the server is local. The ids come from the connect-time
 * rewrite (revnat), if this connection went through a VIP. */
static __always_inline void sm_active_established(struct bpf_sock_ops *skops, struct sm_sock_key *k)
{
	struct sm_sock_meta meta = {};
	struct sm_revnat *rn;

	if (!sm_peer_is_local(k) || sm_peer_is_proxy_outside_mesh(k))
		return;
	rn = sm_revnat_lookup(bpf_get_socket_cookie(skops), k->remote_ip,
			      bpf_htons((__u16)k->remote_port));
	if (rn) {
		meta.service_id = rn->service_id;
		meta.backend_id = rn->backend_id;
	}
	meta.flags = SM_SOCK_F_ACTIVE;
	sm_sock_forget_stale_peer(k);
	sm_sock_insert(skops, k, &meta);
}

/* Accepting side: insert only when the client socket is already in the map (a local client in
 * a meshed cgroup); otherwise every send would pay for sk_msg and then take TCP anyway. */
static __always_inline void sm_passive_established(struct bpf_sock_ops *skops, struct sm_sock_key *k)
{
	struct sm_sock_meta meta = {};
	struct sm_sock_meta *peer;
	struct sm_sock_key pk;

	sm_sock_key_reverse(k, &pk);
	peer = bpf_map_lookup_elem(&sm_sock_meta, &pk);
	if (!peer)
		return;
	meta.service_id = peer->service_id;
	meta.backend_id = peer->backend_id;
	sm_sock_insert(skops, k, &meta);
}

SEC("sockops")
int sm_sockops(struct bpf_sock_ops *skops)
{
	struct sm_sock_key k = {};
	__u32 op = skops->op;

	switch (op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (!sm_sockmap_enabled())
			break;
		if (sm_sock_key_from_ops(skops, &k) < 0)
			break;
		if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
			sm_active_established(skops, &k);
		else
			sm_passive_established(skops, &k);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* Only sockets we inserted asked for this callback. The kernel removes the
		 * socket from the SOCKHASH itself; the meta is ours to delete. */
		if (skops->args[1] == BPF_TCP_CLOSE && sm_sock_key_from_ops(skops, &k) == 0)
			bpf_map_delete_elem(&sm_sock_meta, &k);
		break;
	case BPF_SOCK_OPS_RTT_CB:
		if (sm_sock_key_from_ops(skops, &k) == 0)
			sm_bulk_rtt(skops, &k);
		break;
	default:
		break;
	}
	return 1;
}

static __always_inline void sm_count_redirect(__u32 id, void *map, __u32 bytes)
{
	struct sm_counters *c;

	if (!id)
		return;
	c = sm_stats_get(map, id);
	if (c) {
		c->redirects++;
		c->redirect_bytes += bytes;
	}
}

SEC("sk_msg")
int sm_sk_msg(struct sk_msg_md *msg)
{
	struct sm_sock_meta fresh = {};
	struct sm_sock_key me = {}, peer = {};
	struct sm_sock_meta *meta;
	__u32 size = msg->size;
	long ret;

	if (sm_sock_key_from_msg(msg, &me) < 0)
		return SK_PASS;
	meta = bpf_map_lookup_elem(&sm_sock_meta, &me);
	if (meta && (meta->flags & SM_SOCK_F_TCP_ONLY)) {
		sm_global_inc(SM_G_TCP_ONLY);
		return SK_PASS;
	}

	sm_sock_key_reverse(&me, &peer);
	if (meta && sm_bulk_leaves(meta, &peer, size))
		return SK_PASS;
	ret = bpf_msg_redirect_hash(msg, &sm_sockets, &peer, BPF_F_INGRESS);
	if (ret == SK_PASS) {
		sm_global_inc(SM_G_REDIRECT);
		if (meta) {
			sm_count_redirect(meta->service_id, &sm_svc_stats, size);
			sm_count_redirect(meta->backend_id, &sm_backend_stats, size);
		}
		return SK_PASS;
	}

	/* Peer not in the map: SK_DROP here would drop the data. Let it take TCP, and keep
	 * this socket on TCP from now on so later redirected bytes cannot overtake it. */
	sm_global_inc(SM_G_REDIRECT_MISS);
	sm_sock_event(SM_EV_REDIRECT_MISS, &me, 0, meta);
	if (meta) {
		meta->flags |= SM_SOCK_F_TCP_ONLY;
	} else {
		fresh.flags = SM_SOCK_F_TCP_ONLY;
		bpf_map_update_elem(&sm_sock_meta, &me, &fresh, BPF_ANY);
	}
	return SK_PASS;
}
