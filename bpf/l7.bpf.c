// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The second half of the L7 redirect and of the tunnel hand-over (the first is connect4/6, lib/l7.h and lib/tunnel.h):
 * when a client redirected to the proxy (or to the tunnel hand-over)
 * is established, its original destination moves from the socket cookie (all connect() had) to the client's
 * address and port, which is what the proxy sees of the accepted socket. ACTIVE_ESTABLISHED runs on the client
 * as the SYN-ACK arrives, before the client's ACK is sent, so before the proxy can accept() the connection.
 *
 * A program of its own, attached to the meshed cgroup whether or not the sockmap fast path is on: with
 * --no-sockmap the sockmap object (and its sock_ops program) is not loaded, yet the redirect must work. A cgroup
 * runs every attached sock_ops link in turn, so with the fast path both programs see each callback; this one
 * returns at once for anything but ACTIVE_ESTABLISHED, and for sockets that connect() did not redirect.
 * Needs bpf_get_netns_cookie in sock_ops (5.15), like the fast path; the agent loads it only where it exists.
 */
#include "common.h"
#include "maps.h"
#include "addr.h"
#include "counters.h"
#include "sock_key.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The client end of a connection as the proxy will see it (struct sm_l7_key). */
static __always_inline void sm_l7_key_of(const struct sm_sock_key *sk, struct sm_l7_key *k)
{
	sm_addr_copy(k->addr, sk->local_ip);
	k->port = sk->local_port;
	/* The netns only where the address alone is ambiguous (see struct sm_l7_key). */
	k->netns_cookie = sm_addr_is_loopback(k->addr) ? sk->netns_cookie : 0;
	k->pad = 0;
}

/* A connection to the proxy that connect() did not redirect (an application dialing the proxy port itself): any entry
 * still under this client's key is from an earlier connection the proxy never took, and must not be mistaken for
 * this one's original destination. */
static __always_inline void sm_l7_forget_stale(const struct sm_sock_key *sk)
{
	struct sm_l7_key k = {};
	struct sm_proxy *px;
	__u32 zero = 0;

	px = bpf_map_lookup_elem(&sm_proxy, &zero);
	/* the proxy's port or the tunnel hand-over's (same addresses, same keys: lib/tunnel.h) */
	if (!px || (sk->remote_port != bpf_ntohs(px->port) && (!px->tunnel_port || sk->remote_port != bpf_ntohs(px->tunnel_port))))
		return;
	if (!sm_addr_eq(sk->remote_ip, px->v4) && !sm_addr_eq(sk->remote_ip, px->v6) &&
	    !sm_addr_eq(sk->remote_ip, px->node_v4) && !sm_addr_eq(sk->remote_ip, px->node_v6))
		return;
	sm_l7_key_of(sk, &k);
	bpf_map_delete_elem(&sm_l7_peers, &k);
}

SEC("sockops")
int sm_sockops_l7(struct bpf_sock_ops *skops)
{
	struct sm_orig_dst *pending;
	struct sm_orig_dst orig;
	struct sm_sock_key sk = {};
	struct sm_l7_key k = {};
	__u64 cookie;

	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	/* ports host order, addresses v4-mapped, the socket's netns (lib/sock_key.h) */
	if (sm_sock_key_from_ops(skops, &sk) < 0)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	pending = bpf_map_lookup_elem(&sm_l7_pending, &cookie);
	if (!pending) {
		sm_l7_forget_stale(&sk);
		return 1;
	}
	/* Copied out before the delete: an LRU element may be reused as soon as it is freed. */
	orig = *pending;
	bpf_map_delete_elem(&sm_l7_pending, &cookie);
	sm_l7_key_of(&sk, &k);
	bpf_map_update_elem(&sm_l7_peers, &k, &orig, BPF_ANY);
	sm_global_inc(SM_G_L7_HANDOFF);
	return 1;
}
