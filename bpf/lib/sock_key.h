/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * struct sm_sock_key from sock_ops and sk_msg contexts.
 *
 * Byte order (checked on 6.18: sm_sock_meta keys compared with `ss` for live sockets): in both
 * contexts local_port is host order and remote_port holds the network-order port shifted into
 * the upper 16 bits, so bpf_ntohl(remote_port) is the host-order port itself. Keys store both
 * ports in host order. Addresses are 16 bytes (v4 mapped), so a dual-stack AF_INET6 socket
 * talking to a v4 peer and the AF_INET peer socket build matching keys.
 *
 * The netns cookie is in the key only for loopback peers (127/8, ::1): every namespace has its own loopback, so two
 * namespaces can hold the same 127.0.0.1 4-tuple. Any other address of this node (a pod's, the node's) exists in one
 * namespace only, and the two ends of a pod <-> pod or pod <-> host connection are in different namespaces: their
 * keys must mirror each other without it (0 there).
 */
#ifndef SM_SOCK_KEY_H
#define SM_SOCK_KEY_H

#include "common.h"
#include "addr.h"

/* Keeps a context load in its own branch: clang may otherwise sink the loads of two branches into one load through
 * a pointer chosen by a phi (ctx + 24 or ctx + 28), which the verifier refuses ("dereference of modified ctx ptr"). */
#define sm_barrier_var(v) asm volatile("" : "+r"(v))

/* The key of the socket behind a sock_ops or sk_msg context, as seen from that socket: 0, or -1 for a family other
 * than AF_INET/AF_INET6. Both context types name these fields alike, and their fields must be loaded from the
 * context itself (not through a pointer a shared helper would take), hence one macro for the two readers below. */
#define SM_SOCK_KEY_FROM_CTX(ctx, k)							\
	({										\
		__u32 family__ = (ctx)->family;						\
		int ret__ = 0;								\
											\
		if (family__ == SM_AF_INET) {						\
			__u32 local4__ = (ctx)->local_ip4;				\
			__u32 remote4__ = (ctx)->remote_ip4;				\
											\
			sm_barrier_var(local4__);					\
			sm_barrier_var(remote4__);					\
			sm_addr_from_v4((k)->local_ip, local4__);			\
			sm_addr_from_v4((k)->remote_ip, remote4__);			\
		} else if (family__ == SM_AF_INET6) {					\
			(k)->local_ip[0] = (ctx)->local_ip6[0];				\
			(k)->local_ip[1] = (ctx)->local_ip6[1];				\
			(k)->local_ip[2] = (ctx)->local_ip6[2];				\
			(k)->local_ip[3] = (ctx)->local_ip6[3];				\
			(k)->remote_ip[0] = (ctx)->remote_ip6[0];			\
			(k)->remote_ip[1] = (ctx)->remote_ip6[1];			\
			(k)->remote_ip[2] = (ctx)->remote_ip6[2];			\
			(k)->remote_ip[3] = (ctx)->remote_ip6[3];			\
		} else {								\
			ret__ = -1;							\
		}									\
		if (ret__ == 0) {							\
			(k)->netns_cookie = sm_addr_is_loopback((k)->remote_ip) ?	\
				bpf_get_netns_cookie(ctx) : 0;				\
			(k)->local_port = (ctx)->local_port;				\
			(k)->remote_port = bpf_ntohl((ctx)->remote_port);		\
		}									\
		ret__;									\
	})

static __always_inline int sm_sock_key_from_ops(struct bpf_sock_ops *skops, struct sm_sock_key *k)
{
	return SM_SOCK_KEY_FROM_CTX(skops, k);
}

static __always_inline int sm_sock_key_from_msg(struct sk_msg_md *msg, struct sm_sock_key *k)
{
	return SM_SOCK_KEY_FROM_CTX(msg, k);
}

/* The same 4-tuple seen from the other end of the connection. */
static __always_inline void sm_sock_key_reverse(const struct sm_sock_key *k, struct sm_sock_key *r)
{
	r->netns_cookie = k->netns_cookie;
	sm_addr_copy(r->local_ip, k->remote_ip);
	sm_addr_copy(r->remote_ip, k->local_ip);
	r->local_port = k->remote_port;
	r->remote_port = k->local_port;
}

#endif /* SM_SOCK_KEY_H */
