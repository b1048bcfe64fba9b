/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every sockmesh map, defined once. Both objects (sock_lb, sockmap) include this file and
 * the loader opens them with the same pin root, so LIBBPF_PIN_BY_NAME makes them share one
 * instance of each map: whichever object loads first creates and pins, the other reuses.
 * Names, types and limits are the ones documented in sockmesh_abi.h.
 */
#ifndef SM_MAPS_H
#define SM_MAPS_H

#include "common.h"

/* HASH maps written by userland while programs read them: without preallocation an update
 * swaps in a new element, so a reader sees either the old or the new value, never a mix. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sm_service_key);
	__type(value, struct sm_service);
	__uint(max_entries, SM_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct sm_backend);
	__uint(max_entries, SM_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_backends SEC(".maps");

/* Selection tables: (table_id, index) -> backend_id. No preallocation: memory follows the
 * tables actually written, and an update replaces an element atomically for readers. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SM_MAX_TABLE_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sm_table_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sm_affinity_key);
	__type(value, struct sm_affinity);
	__uint(max_entries, SM_MAX_AFFINITY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sm_revnat_key);
	__type(value, struct sm_revnat);
	__uint(max_entries, SM_MAX_REVNAT);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_revnat SEC(".maps");

/* Userland sees the value as a socket fd (__u32); the kernel stores the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct sm_sock_key);
	__type(value, __u32);
	__uint(max_entries, SM_MAX_SOCKETS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_sockets SEC(".maps");

/* Not an LRU: the TCP_ONLY flag here is what keeps a stream in order, and an LRU may evict a
 * live entry long before it is full. Entries are deleted when their socket closes (STATE_CB). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sm_sock_key);
	__type(value, struct sm_sock_meta);
	__uint(max_entries, SM_MAX_SOCKETS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_sock_meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sm_addr);
	__type(value, __u32);
	__uint(max_entries, SM_MAX_LOCAL_ADDRS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_local_addrs SEC(".maps");

/* Stats entries are created lazily by the programs: no preallocation of
 * SM_MAX_BACKENDS x nr_cpus counter blocks that mostly stay unused. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32);
	__type(value, struct sm_counters);
	__uint(max_entries, SM_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_svc_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32);
	__type(value, struct sm_counters);
	__uint(max_entries, SM_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_backend_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, SM_G__MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_global SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct sm_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SM_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_events SEC(".maps");

/* The proxy's address, cgroup and heartbeat (see sockmesh_abi.h for why a one-entry HASH). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct sm_proxy);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_proxy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct sm_orig_dst);
	__uint(max_entries, SM_MAX_L7_PENDING);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_l7_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sm_l7_key);
	__type(value, struct sm_orig_dst);
	__uint(max_entries, SM_MAX_L7_PEERS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_l7_peers SEC(".maps");

/* The proxy's listening sockets, by the address:port connect() would be sent to (see sockmesh_abi.h). A SOCKHASH, not
 * a SOCKMAP array: the key is exactly the destination the redirect writes, so a node address that changes (a new
 * listener inserted before sm_proxy names it, the old one closed after) never leaves a window with the wrong socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct sm_proxy_sock_key);
	__type(value, __u32);
	__uint(max_entries, SM_MAX_PROXY_SOCKS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_proxy_socks SEC(".maps");

/* L4 authorization (lib/authz.h): written by the agent, read at connect(). No preallocation: an update swaps in a
 * whole element, so a connect() sees the old verdict or the new one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct sm_identity);
	__uint(max_entries, SM_MAX_IDENTITY_CGROUPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_identities SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sm_authz_key);
	__type(value, struct sm_authz_verdict);
	__uint(max_entries, SM_MAX_AUTHZ);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_authz SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct sm_authz_counters);
	__uint(max_entries, SM_MAX_AUTHZ_POLICIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_authz_stats SEC(".maps");

/* Other nodes' pods a direct connect() is handed to the tunnel for (lib/tunnel.h). Written by the agent from the model's
 * workloads; no preallocation, as the other maps userland writes while programs read. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sm_addr);
	__type(value, __u32);
	__uint(max_entries, SM_MAX_REMOTE_PODS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_remote_pods SEC(".maps");

static __always_inline const struct sm_config *sm_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sm_config, &zero);
}

#endif /* SM_MAPS_H */
