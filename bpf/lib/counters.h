/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Per-CPU counters. Plain increments are enough: each CPU owns its copy and userland sums them.
 */
#ifndef SM_COUNTERS_H
#define SM_COUNTERS_H

#include "maps.h"

static __always_inline void sm_global_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&sm_global, &idx);

	if (v)
		*v += 1;
}

/* The counters of one service or backend, created zeroed on first use. BPF_NOEXIST keeps a
 * concurrent creator on another CPU from zeroing counters that were just incremented. */
static __always_inline struct sm_counters *sm_stats_get(void *map, __u32 id)
{
	struct sm_counters zero = {};
	struct sm_counters *c;

	c = bpf_map_lookup_elem(map, &id);
	if (c)
		return c;
	bpf_map_update_elem(map, &id, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, &id);
}

static __always_inline struct sm_counters *sm_svc_stats_get(__u32 service_id)
{
	return sm_stats_get(&sm_svc_stats, service_id);
}

static __always_inline struct sm_counters *sm_backend_stats_get(__u32 backend_id)
{
	return sm_stats_get(&sm_backend_stats, backend_id);
}

#endif /* SM_COUNTERS_H */
