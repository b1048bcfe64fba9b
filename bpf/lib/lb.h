/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Backend selection for a service frontend: session affinity first, then the service's
 * selection table (sm_tables[{table_id, index}] -> backend_id -> sm_backends).
 */
#ifndef SM_LB_H
#define SM_LB_H

#include "maps.h"
#include "counters.h"

/* murmur3 fmix64: every input bit reaches every output bit, so consecutive socket cookies
 * spread evenly over a Maglev table. */
static __always_inline __u64 sm_fmix64(__u64 k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	k *= 0xc4ceb9fe1a85ec53ULL;
	k ^= k >> 33;
	return k;
}

static __always_inline __u32 sm_flow_hash(__u64 netns_cookie, __u64 sock_cookie)
{
	__u64 h = sm_fmix64(sock_cookie ^ (netns_cookie * 0x9e3779b97f4a7c15ULL));

	return (__u32)(h ^ (h >> 32));
}

static __always_inline __u32 sm_table_index(const struct sm_service *svc, __u32 table_size,
					    __u64 netns_cookie, __u64 sock_cookie)
{
	if (svc->algo == SM_ALGO_MAGLEV)
		return sm_flow_hash(netns_cookie, sock_cookie) % table_size;
	/* RANDOM has one slot per backend, WEIGHTED slots proportional to weight: both uniform. */
	return bpf_get_prandom_u32() % table_size;
}

static __always_inline struct sm_backend *sm_backend_of(const struct sm_service *svc, __u32 id)
{
	struct sm_backend *be = bpf_map_lookup_elem(&sm_backends, &id);

	/* A backend id of another service means userland is mid-update: not usable. */
	if (!be || be->service_id != svc->service_id)
		return NULL;
	return be;
}

static __always_inline struct sm_backend *sm_table_pick(const struct sm_service *svc,
							__u64 netns_cookie, __u64 sock_cookie,
							__u32 *backend_id)
{
	struct sm_table_key key = { .table_id = svc->table_id };
	__u32 table_size = svc->table_size;
	__u32 *slot;

	if (table_size == 0)
		return NULL;
	key.index = sm_table_index(svc, table_size, netns_cookie, sock_cookie);
	/* A missing entry (table being replaced under us) is a miss, never a wrong backend. */
	slot = bpf_map_lookup_elem(&sm_tables, &key);
	if (!slot)
		return NULL;
	*backend_id = *slot;
	return sm_backend_of(svc, *backend_id);
}

struct sm_pick {
	struct sm_backend *be;
	__u32 backend_id;
	__u8 affinity_hit;
};

/* Chooses a backend for a new flow of svc from the client namespace netns_cookie.
 * Returns 0 with p->be set, or -1 when the service has no usable backend. */
static __always_inline int sm_lb_select(const struct sm_service *svc, __u64 netns_cookie,
					__u64 sock_cookie, struct sm_pick *p)
{
	struct sm_affinity_key akey = {};
	struct sm_affinity aval = {};
	struct sm_affinity *aff;
	__u64 now = 0;
	int affinity = svc->flags & SM_SVC_F_AFFINITY;

	p->be = NULL;
	p->backend_id = 0;
	p->affinity_hit = 0;
	if (svc->table_size == 0)
		return -1;

	if (affinity) {
		akey.netns_cookie = netns_cookie;
		akey.frontend_id = svc->frontend_id;
		now = bpf_ktime_get_ns();
		aff = bpf_map_lookup_elem(&sm_affinity, &akey);
		if (aff && now - aff->last_used_ns <=
				   (__u64)svc->affinity_timeout_s * SM_NSEC_PER_SEC) {
			__u32 id = aff->backend_id;
			struct sm_backend *be = sm_backend_of(svc, id);

			/* weight 0 = draining: keep existing connections, take no new ones */
			if (be && be->weight != 0) {
				aff->last_used_ns = now;
				p->be = be;
				p->backend_id = id;
				p->affinity_hit = 1;
				return 0;
			}
		}
	}

	p->be = sm_table_pick(svc, netns_cookie, sock_cookie, &p->backend_id);
	if (!p->be)
		return -1;

	if (affinity) {
		aval.last_used_ns = now;
		aval.backend_id = p->backend_id;
		bpf_map_update_elem(&sm_affinity, &akey, &aval, BPF_ANY);
	}
	return 0;
}

#endif /* SM_LB_H */
