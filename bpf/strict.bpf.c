// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * mTLS strict mode, the server side (issue 13): a pod in strict mode accepts, from other nodes, only connections that
 * arrive through its node's tunnel end (the agent's HBONE server on 15008 connects to the pod from this node). A TCP
 * connection from another node's pod or namespace straight to the pod's address is dropped; connections from this
 * node (other local pods, the node itself, the tunnel server's connect) pass. Permissive and off accept both.
 *
 * Why a cgroup_skb/ingress program on the meshed cgroup:
 *  - it runs for the segments delivered to the pods' own sockets (a cgroup program applies to its cgroup's sockets
 *    whatever their network namespace), so the agent attaches it to its meshed cgroup only: nothing is attached to a
 *    netns, a device or the root cgroup, and a process outside the mesh is never touched;
 *  - the decision needs the segment's source address (is it this node's?), which connect()-time hooks on the
 *    client's side cannot see: the client is on another node, outside this agent's reach. sk_lookup could refuse
 *    with an RST, but it attaches per network namespace (one link per pod, made and removed as pods come and go);
 *    tc could send RSTs too, but attaches to devices the CNI owns.
 *  - Only segments to a LISTENING socket are looked at (one context read for everything else): a SYN (and the ACK
 *    that would complete a handshake) from another node is dropped before the listener sees it, so no connection is
 *    ever made. Segments of established connections go to their own socket and pass: a connection made while the
 *    destination was permissive keeps working after a switch to strict (as connect()-time authorization, which also
 *    never cuts a connection it let through); only new ones are held to the new mode.
 *
 * What the client sees: its SYN is dropped, so connect() retries and times out (SYN retransmissions, 2 min by
 * default on Linux; clients with their own connect timeout fail sooner). That is what Cilium's and Istio's policy
 * drops look like too; an RST would need tc or sk_lookup (above), and would tell a scanner the port is there.
 *
 * Per destination: sm_strict is keyed by the local pod's address and the listener's port (the service's target
 * port, for per-service modes), with port 0 for every other port of the address (the namespace's or mesh's mode);
 * the agent writes only what drops, and the ports that open a strict address again. "From this node" means the
 * source is in sm_local_addrs (the node's and its pods' addresses, written by the agent for the fast path), a
 * loopback address, or an IPv6 link-local one (routers never forward a link-local source, RFC 4291 2.5.6: it came
 * from the pod's own link, i.e. its node). IPv4 and IPv6 alike (v4 as v4-mapped, so a dual-stack listener's IPv4
 * clients find the same keys).
 *
 * Limits: a connection that another node's traffic reaches with this node's address as its source (SNAT on the way,
 * as a NodePort with externalTrafficPolicy Cluster does) counts as local; a pod the agent's pod scan has not seen yet
 * (within 250 ms of its first address) counts as another node's.
 */
#include "common.h"
#include "maps.h"
#include "addr.h"
#include "counters.h"
#include "events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Return values of cgroup_skb programs. */
#define SM_SKB_DROP 0
#define SM_SKB_PASS 1

#define SM_ETH_P_IP   0x0800
#define SM_ETH_P_IPV6 0x86DD
#define SM_IPPROTO_TCP 6

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sm_strict_key);
	__type(value, struct sm_strict);
	__uint(max_entries, SM_MAX_STRICT);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_strict SEC(".maps");

/* Created by the program per destination on first use, like sm_svc_stats (no preallocation of unused blocks). Full:
 * that destination is counted in sm_global only. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct sm_strict_key);
	__type(value, struct sm_strict_counters);
	__uint(max_entries, SM_MAX_STRICT);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sm_strict_stats SEC(".maps");

/* The source and destination addresses of the segment (v4 mapped), and its source port (network order; 0 when an
 * IPv6 extension header hides it: only the event shows it). -1 when it is neither IPv4 nor IPv6 or too short. */
static __always_inline int sm_skb_addrs(struct __sk_buff *skb, __u32 *src, __u32 *dst, __u16 *sport)
{
	__u16 port = 0;

	if (skb->protocol == bpf_htons(SM_ETH_P_IP)) {
		__u32 a[2];
		__u8 vihl;

		/* at ingress a cgroup_skb program's data starts at the network header */
		if (bpf_skb_load_bytes(skb, 0, &vihl, 1) < 0 || bpf_skb_load_bytes(skb, 12, a, sizeof(a)) < 0)
			return -1;
		sm_addr_from_v4(src, a[0]);
		sm_addr_from_v4(dst, a[1]);
		bpf_skb_load_bytes(skb, (vihl & 0xf) * 4, &port, sizeof(port));
	} else if (skb->protocol == bpf_htons(SM_ETH_P_IPV6)) {
		__u8 nexthdr;

		if (bpf_skb_load_bytes(skb, 8, src, 16) < 0 || bpf_skb_load_bytes(skb, 24, dst, 16) < 0 ||
		    bpf_skb_load_bytes(skb, 6, &nexthdr, 1) < 0)
			return -1;
		if (nexthdr == SM_IPPROTO_TCP)
			bpf_skb_load_bytes(skb, 40, &port, sizeof(port));
	} else {
		return -1;
	}
	*sport = port;
	return 0;
}

/* From this node: its own or a local pod's address, loopback, or IPv6 link-local (see the top of this file). */
static __always_inline int sm_src_is_local(const __u32 *src)
{
	if (sm_addr_is_loopback(src))
		return 1;
	if (!sm_addr_is_v4_mapped(src) && (bpf_ntohl(src[0]) & 0xffc00000) == 0xfe800000)
		return 1;
	return bpf_map_lookup_elem(&sm_local_addrs, src) != NULL;
}

static __always_inline struct sm_strict_counters *sm_strict_counters_get(const struct sm_strict_key *k)
{
	struct sm_strict_counters zero = {};
	struct sm_strict_counters *c;

	c = bpf_map_lookup_elem(&sm_strict_stats, k);
	if (c)
		return c;
	bpf_map_update_elem(&sm_strict_stats, k, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&sm_strict_stats, k);
}

SEC("cgroup_skb/ingress")
int sm_strict_ingress(struct __sk_buff *skb)
{
	struct sm_strict_counters *c;
	struct sm_strict_key k = {};
	struct sm_strict *mode;
	struct bpf_sock *sk;
	struct sm_flow flow;
	__u32 src[4];
	__u16 sport;
	__u64 now;

	sk = skb->sk;
	/* Only a listener can be given a new connection: everything else passes after this one read. */
	if (!sk || sk->state != BPF_TCP_LISTEN)
		return SM_SKB_PASS;
	if (sm_skb_addrs(skb, src, k.addr, &sport) < 0)
		return SM_SKB_PASS;
	/* The listener's port (host order in bpf_sock) is the one the segment was sent to. */
	k.port = bpf_htons((__u16)sk->src_port);
	mode = bpf_map_lookup_elem(&sm_strict, &k);
	if (!mode) {
		__u16 port = k.port;

		k.port = 0;
		mode = bpf_map_lookup_elem(&sm_strict, &k);
		k.port = port;
	}
	if (!mode || mode->mode != SM_MTLS_STRICT)
		return SM_SKB_PASS;

	c = sm_strict_counters_get(&k);
	if (sm_src_is_local(src)) {
		sm_global_inc(SM_G_STRICT_LOCAL);
		if (c)
			c->local++;
		return SM_SKB_PASS;
	}
	sm_global_inc(SM_G_STRICT_DROP);
	if (!c)
		return SM_SKB_DROP;
	c->dropped++;
	now = bpf_ktime_get_ns();
	if (now - c->last_event_ns >= SM_STRICT_EVENT_NS && sm_events_on()) {
		c->last_event_ns = now;
		flow.cookie = bpf_get_socket_cookie(skb);
		flow.netns_cookie = 0;
		flow.vip = k.addr;
		flow.vport = k.port;
		flow.proto = SM_PROTO_TCP;
		flow.algo = 0;
		flow.service_id = 0;
		flow.cgroup_id = bpf_skb_cgroup_id(skb);
		flow.identity_id = 0;
		flow.policy_id = 0;
		sm_event_write(SM_EV_STRICT_DROP, &flow, src, sport, 0, 0);
	}
	return SM_SKB_DROP;
}
