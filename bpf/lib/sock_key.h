/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * struct sm_sock_key from sock_ops and sk_msg contexts.
 *
 * Byte order (checked on 6.18: sm_sock_meta keys compared with `ss` for live sockets): in both
 * contexts local_port is host order and remote_port holds the network-order port shifted into
 * the upper 16 bits, so bpf_ntohl(remote_port) is the host-order port itself. Keys store both
 * ports in host order. Addresses are 16 bytes (v4 mapped), so a dual-stack AF_INET6 socket
 * talking to a v4 peer and the AF_INET peer socket build matching keys.
 */
#ifndef SM_SOCK_KEY_H
#define SM_SOCK_KEY_H

#include "common.h"
#include "addr.h"

/* Keeps a context load in its own branch: clang may otherwise sink the loads of two branches into one load through
 * a pointer chosen by a phi (ctx + 24 or ctx + 28), which the verifier refuses ("dereference of modified ctx ptr"). */
#define sm_barrier_var(v) asm volatile("" : "+r"(v))

/* The key of the socket behind skops, as seen from that socket. */
static __always_inline int sm_sock_key_from_ops(struct bpf_sock_ops *skops, struct sm_sock_key *k)
{
	__u32 family = skops->family;

	if (family == SM_AF_INET) {
		__u32 local4 = skops->local_ip4;
		__u32 remote4 = skops->remote_ip4;

		sm_barrier_var(local4);
		sm_barrier_var(remote4);
		sm_addr_from_v4(k->local_ip, local4);
		sm_addr_from_v4(k->remote_ip, remote4);
	} else if (family == SM_AF_INET6) {
		k->local_ip[0] = skops->local_ip6[0];
		k->local_ip[1] = skops->local_ip6[1];
		k->local_ip[2] = skops->local_ip6[2];
		k->local_ip[3] = skops->local_ip6[3];
		k->remote_ip[0] = skops->remote_ip6[0];
		k->remote_ip[1] = skops->remote_ip6[1];
		k->remote_ip[2] = skops->remote_ip6[2];
		k->remote_ip[3] = skops->remote_ip6[3];
	} else {
		return -1;
	}
	k->netns_cookie = bpf_get_netns_cookie(skops);
	k->local_port = skops->local_port;
	k->remote_port = bpf_ntohl(skops->remote_port);
	return 0;
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

/* The key of the socket behind msg, as seen from that socket. */
static __always_inline int sm_sock_key_from_msg(struct sk_msg_md *msg, struct sm_sock_key *k)
{
	__u32 family = msg->family;

	if (family == SM_AF_INET) {
		sm_addr_from_v4(k->local_ip, msg->local_ip4);
		sm_addr_from_v4(k->remote_ip, msg->remote_ip4);
	} else if (family == SM_AF_INET6) {
		k->local_ip[0] = msg->local_ip6[0];
		k->local_ip[1] = msg->local_ip6[1];
		k->local_ip[2] = msg->local_ip6[2];
		k->local_ip[3] = msg->local_ip6[3];
		k->remote_ip[0] = msg->remote_ip6[0];
		k->remote_ip[1] = msg->remote_ip6[1];
		k->remote_ip[2] = msg->remote_ip6[2];
		k->remote_ip[3] = msg->remote_ip6[3];
	} else {
		return -1;
	}
	k->netns_cookie = bpf_get_netns_cookie(msg);
	k->local_port = msg->local_port;
	k->remote_port = bpf_ntohl(msg->remote_port);
	return 0;
}

#endif /* SM_SOCK_KEY_H */
