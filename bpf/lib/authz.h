/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * L4 authorization by identity at connect() (issue 13): same-node connections never leave the kernel, so this is
 * where a policy holds for them. The agent compiles the model's AuthorizationPolicies (agent/model/authz4.ts) into
 * sm_authz: (service, source identity, destination pod port) -> verdict and the policy that decided; a service with
 * SM_SVC_F_AUTHZ is looked up there, a miss takes the service's default (SM_SVC_F_AUTHZ_DENY: an ALLOW policy
 * applies, and none matched). The source identity is the caller's cgroup's, or its nearest ancestor's below the
 * meshed cgroup (a container's cgroup is a child of its pod's): sm_identities.
 *
 * A denied connect() fails at once with EACCES ("Permission denied"): connect(2) documents it for "a local firewall
 * rule", and it tells a refusal by policy apart from a service without backends (EPERM, as before) and from a
 * backend that is down (ECONNREFUSED, which clients retry elsewhere: a denial is not worth retrying).
 */
#ifndef SM_AUTHZ_H
#define SM_AUTHZ_H

#include "maps.h"
#include "counters.h"

#define SM_EACCES 13

/* The caller's identity id, 0 = none: the deepest of its cgroup and ancestors (up to SM_ID_DEPTH levels below the
 * meshed cgroup) that is a workload's. */
static __always_inline __u32 sm_identity_of(void)
{
	const struct sm_config *cfg = sm_config_get();
	struct sm_identity *v;
	__u32 base;
	__u64 id;
	int i;

	if (!cfg)
		return 0;
	base = cfg->mesh_level;
	/* deepest first: an ancestor level beyond the caller's own gives 0 */
	for (i = SM_ID_DEPTH; i >= 1; i--) {
		id = bpf_get_current_ancestor_cgroup_id(base + i);
		if (!id)
			continue;
		v = bpf_map_lookup_elem(&sm_identities, &id);
		if (v)
			return v->identity_id;
	}
	return 0;
}

static __always_inline void sm_authz_count(__u32 policy_id, int allowed)
{
	struct sm_authz_counters *c;

	c = bpf_map_lookup_elem(&sm_authz_stats, &policy_id);
	if (c) {
		if (allowed)
			c->allowed++;
		else
			c->denied++;
	}
	sm_global_inc(allowed ? SM_G_AUTHZ_ALLOW : SM_G_AUTHZ_DENY);
}

/* 1 = allowed. On a denial, flow gets the identity and policy (for the event) and the syscall's error is EACCES. */
static __always_inline int sm_authz_allowed(const struct sm_service *svc, struct sm_flow *flow, __u16 port)
{
	struct sm_authz_key k = {};
	struct sm_authz_verdict *v;
	__u32 policy_id = 0;
	int allowed;

	k.service_id = svc->service_id;
	k.identity_id = sm_identity_of();
	k.port = port;
	v = bpf_map_lookup_elem(&sm_authz, &k);
	if (v) {
		policy_id = v->policy_id;
		allowed = v->verdict == SM_AUTHZ_ALLOW;
	} else {
		allowed = !(svc->flags & SM_SVC_F_AUTHZ_DENY);
	}
	sm_authz_count(policy_id, allowed);
	if (!allowed) {
		flow->identity_id = k.identity_id;
		flow->policy_id = policy_id;
		bpf_set_retval(-SM_EACCES);
	}
	return allowed;
}

#endif /* SM_AUTHZ_H */
