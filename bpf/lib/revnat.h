/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Reverse NAT: per socket, which VIP:port a backend address stands for, so getpeername()
 * and recvfrom() show the application the VIP it asked for.
 */
#ifndef SM_REVNAT_H
#define SM_REVNAT_H

#include "maps.h"
#include "addr.h"

static __always_inline void sm_revnat_key_init(struct sm_revnat_key *k, __u64 cookie,
					       const __u32 *addr, __u16 port)
{
	k->cookie = cookie;
	sm_addr_copy(k->addr, addr);
	k->port = port;
	k->pad = 0;
	k->pad2 = 0;
}

/* The socket cookie was sent to addr:port (a backend, or the L7 proxy with backend_id 0) in place of vip. */
static __always_inline void sm_revnat_record(__u64 cookie, const __u32 *addr, __u16 port, __u32 backend_id,
					     const struct sm_service_key *vip, __u32 service_id)
{
	struct sm_revnat_key k = {};
	struct sm_revnat v = {};

	sm_revnat_key_init(&k, cookie, addr, port);
	sm_addr_copy(v.vip, vip->addr);
	v.vport = vip->port;
	v.service_id = service_id;
	v.backend_id = backend_id;
	bpf_map_update_elem(&sm_revnat, &k, &v, BPF_ANY);
}

static __always_inline struct sm_revnat *sm_revnat_lookup(__u64 cookie, const __u32 *addr,
							  __u16 port)
{
	struct sm_revnat_key k = {};

	sm_revnat_key_init(&k, cookie, addr, port);
	return bpf_map_lookup_elem(&sm_revnat, &k);
}

#endif /* SM_REVNAT_H */
