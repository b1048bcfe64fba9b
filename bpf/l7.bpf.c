// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The second half of the L7 redirect (the first is connect4/6, lib/l7.h): when a client redirected to the proxy
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

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("sockops")
int sm_sockops_l7(struct bpf_sock_ops *skops)
{
	struct sm_orig_dst *pending;
	struct sm_orig_dst orig;
	struct sm_l7_key k = {};
	__u64 cookie;

	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	pending = bpf_map_lookup_elem(&sm_l7_pending, &cookie);
	if (!pending)
		return 1;
	/* Copied out before the delete: an LRU element may be reused as soon as it is freed. */
	orig = *pending;

	if (skops->family == SM_AF_INET) {
		sm_addr_from_v4(k.addr, skops->local_ip4);
	} else if (skops->family == SM_AF_INET6) {
		k.addr[0] = skops->local_ip6[0];
		k.addr[1] = skops->local_ip6[1];
		k.addr[2] = skops->local_ip6[2];
		k.addr[3] = skops->local_ip6[3];
	} else {
		return 1;
	}
	k.port = skops->local_port; /* host order in sock_ops */
	/* The netns only where the address alone is ambiguous (see struct sm_l7_key). */
	k.netns_cookie = sm_addr_is_loopback(k.addr) ? bpf_get_netns_cookie(skops) : 0;
	bpf_map_update_elem(&sm_l7_peers, &k, &orig, BPF_ANY);
	bpf_map_delete_elem(&sm_l7_pending, &cookie);
	sm_global_inc(SM_G_L7_HANDOFF);
	return 1;
}
