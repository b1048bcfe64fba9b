/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Sampled flow events into the sm_events ring buffer: one in sm_config.event_sample.
 */
#ifndef SM_EVENTS_H
#define SM_EVENTS_H

#include "maps.h"
#include "addr.h"
#include "counters.h"

struct sm_flow {
	__u64 cookie;
	__u64 netns_cookie;
	const __u32 *vip;
	__u16 vport;
	__u8 proto;
	__u8 algo;          /* enum sm_algo (balancing events) */
	__u32 service_id;
	__u64 cgroup_id;    /* the caller's cgroup; 0 where there is no calling process (sock_ops, sk_msg) */
	__u32 identity_id;  /* SM_EV_AUTHZ_DENY only (else 0) */
	__u32 policy_id;    /* SM_EV_AUTHZ_DENY only (else 0) */
};

static __always_inline int sm_event_sampled(void)
{
	const struct sm_config *cfg = sm_config_get();
	__u32 every;

	if (!cfg)
		return 0;
	every = cfg->event_sample;
	if (every == 0)
		return 0;
	return every == 1 || bpf_get_prandom_u32() % every == 0;
}

/* Events on (sm_config.event_sample not 0): for events that are rate limited instead of sampled (SM_EV_STRICT_DROP). */
static __always_inline int sm_events_on(void)
{
	const struct sm_config *cfg = sm_config_get();

	return cfg && cfg->event_sample != 0;
}

/* One event into the ring buffer, unconditionally (sm_event_emit samples first). */
static __always_inline void sm_event_write(__u8 kind, const struct sm_flow *f, const __u32 *baddr, __u16 bport,
					   __u32 backend_id, __u8 flags)
{
	struct sm_flow_event *ev;

	ev = bpf_ringbuf_reserve(&sm_events, sizeof(*ev), 0);
	if (!ev) {
		sm_global_inc(SM_G_EVENT_DROP);
		return;
	}
	ev->ts_ns = bpf_ktime_get_ns();
	ev->cookie = f->cookie;
	ev->netns_cookie = f->netns_cookie;
	sm_addr_copy(ev->vip, f->vip);
	ev->vport = f->vport;
	if (baddr) {
		sm_addr_copy(ev->backend_addr, baddr);
		ev->backend_port = bport;
	} else {
		ev->backend_addr[0] = 0;
		ev->backend_addr[1] = 0;
		ev->backend_addr[2] = 0;
		ev->backend_addr[3] = 0;
		ev->backend_port = 0;
	}
	ev->service_id = f->service_id;
	ev->backend_id = backend_id;
	ev->kind = kind;
	ev->proto = f->proto;
	ev->algo = f->algo;
	ev->flags = flags;
	ev->cgroup_id = f->cgroup_id;
	ev->identity_id = f->identity_id;
	ev->policy_id = f->policy_id;
	bpf_ringbuf_submit(ev, 0);
}

/* baddr may be NULL (SM_EV_NO_BACKEND, SM_EV_L7_REFUSED): the backend fields stay zero. For SM_EV_L7_REDIRECT
 * the "backend" is the proxy. flags: SM_EV_F_*. One in sm_config.event_sample. */
static __always_inline void sm_event_emit(__u8 kind, const struct sm_flow *f, const __u32 *baddr, __u16 bport,
					  __u32 backend_id, __u8 flags)
{
	if (sm_event_sampled())
		sm_event_write(kind, f, baddr, bport, backend_id, flags);
}

#endif /* SM_EVENTS_H */
