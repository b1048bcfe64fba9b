// SPDX-License-Identifier: GPL-2.0-only
/*
 * The smallest sockmap fast path there is: a LAB REFERENCE for the datapath bench's scenario
 * "(d) minimal sockmap", not part of sockmesh (it is not in bpf/ nor built by binding.gyp; the
 * bench compiles it at run time). It shows what the kernel's own sockmap path can do on the
 * machine, so that sockmesh's figures can be judged against that ceiling and not only against
 * plain loopback.
 *
 * Deliberately missing, because everything it adds is what sockmesh must get right and this
 * program must not be measured with:
 *  - no netns cookie in the key: the SOCKHASH is global, so identical 127.0.0.1 4-tuples in two
 *    namespaces would collide. Harmless here: the bench attaches it to a cgroup of its own whose
 *    processes all live in one network namespace of their own.
 *  - no check that the peer is local: every established IPv4 socket of that cgroup goes in.
 *  - no ordering guard: bytes sent before the peer is in the map take TCP, later ones are
 *    redirected and can overtake them. sockperf in the bench would report that as
 *    out-of-order messages.
 *  - no counters beyond one per-CPU pair (redirected / not redirected), read by the bench as
 *    evidence that the fast path was really taken.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Byte order as measured on our kernels: remote_port is network order in the upper 16 bits
 * (bpf_ntohl), local_port is host order. */
struct key {
	__u32 sip, dip, sport, dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct key);
	__type(value, __u32);
} socks SEC(".maps");

/* Index 0: sends redirected into the peer; 1: sends that found no peer and took TCP. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} redirects SEC(".maps");

SEC("sockops")
int min_sockops(struct bpf_sock_ops *s)
{
	if (s->family != 2 /* AF_INET */)
		return 1;
	if (s->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || s->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		struct key k = { s->local_ip4, s->remote_ip4, s->local_port, bpf_ntohl(s->remote_port) };

		bpf_sock_hash_update(s, &socks, &k, BPF_ANY);
	}
	return 1;
}

SEC("sk_msg")
int min_sk_msg(struct sk_msg_md *m)
{
	/* The peer's key: its local end is our remote end. */
	struct key k = { m->remote_ip4, m->local_ip4, bpf_ntohl(m->remote_port), m->local_port };
	__u32 slot = bpf_msg_redirect_hash(m, &socks, &k, BPF_F_INGRESS) == SK_PASS ? 0 : 1;
	__u64 *n = bpf_map_lookup_elem(&redirects, &slot);

	if (n)
		(*n)++; /* per-CPU: no other writer on this CPU's slot */
	/* On a miss the helper says SK_DROP; returning that would drop the data, so always pass. */
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
