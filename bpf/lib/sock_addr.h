/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The address of a cgroup/sock_addr call (connect, sendmsg, recvmsg, getpeername): read as a 16-byte address (v4
 * mapped, see addr.h) and rewritten. Used by the L4 balancer, its reverse translation and the L7 redirect alike.
 * Context fields are read and written one 4-byte word at a time, from the context itself.
 */
#ifndef SM_SOCK_ADDR_H
#define SM_SOCK_ADDR_H

#include "common.h"
#include "addr.h"

/* The call's address (the destination of connect/sendmsg, the peer or source of getpeername/recvmsg). */
static __always_inline void sm_sock_addr_get(const struct bpf_sock_addr *ctx, int v6, __u32 *addr)
{
	if (v6) {
		addr[0] = ctx->user_ip6[0];
		addr[1] = ctx->user_ip6[1];
		addr[2] = ctx->user_ip6[2];
		addr[3] = ctx->user_ip6[3];
	} else {
		sm_addr_from_v4(addr, ctx->user_ip4);
	}
}

/* Rewrite the call's address and port (network order); a v4 socket takes the last word of the mapped address. */
static __always_inline void sm_set_dest(struct bpf_sock_addr *ctx, int v6, const __u32 *addr, __u16 port)
{
	if (v6) {
		ctx->user_ip6[0] = addr[0];
		ctx->user_ip6[1] = addr[1];
		ctx->user_ip6[2] = addr[2];
		ctx->user_ip6[3] = addr[3];
	} else {
		ctx->user_ip4 = addr[3];
	}
	ctx->user_port = port;
}

#endif /* SM_SOCK_ADDR_H */
