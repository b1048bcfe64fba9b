/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Bulk senders leave the sockmap fast path.
 *
 * The rule: a socket that has sent SM_BULK_KIB in messages of at least SM_BULK_MSG_MIN bytes while its peer never
 * sent a byte on the fast path is a one-way bulk stream. Its next send takes TCP (SK_PASS without redirect), and
 * sock_ops takes it out of the SOCKHASH once TCP carries its bytes (the first RTT sample, which only TCP data
 * produces), so that its sends no longer pay for tcp_bpf_sendmsg and sk_msg at all. A connection whose peer has sent
 * (request/response, ping-pong, anything two-way) stays on the fast path for good. Only loopback connections (a key
 * with the netns cookie) are judged: between pods TCP pays for the veths, and the sockmap stream beat it there.
 *
 * Why a bulk stream leaves (numbers in README, "the fast path"): a redirect moves the bytes but a stream of large
 * writes is no faster than loopback TCP on these kernels, and sometimes much slower; a socket that stays in the
 * SOCKHASH and passes to TCP is far slower still (every send goes through tcp_bpf_sendmsg), so leaving means leaving
 * the map.
 *
 * Why byte order holds:
 *  - the sender: its bytes sent before the switch sit in the peer's redirected queue (bpf_tcp_ingress queues them
 *    before sendmsg returns), the later ones go to TCP, and tcp_bpf_recvmsg serves the redirected queue before the
 *    TCP receive queue; the switch is one-way (SM_SOCK_F_TCP_ONLY), so nothing can overtake again.
 *  - the sender's own receive side: taking a socket out of the SOCKHASH frees whatever waits in its redirected queue
 *    (sk_psock_drop -> __sk_psock_zap_ingress). That queue can only hold what the peer redirected, hence the
 *    condition that the peer never sent (SM_SOCK_F_SENT is set before the peer's first redirect attempt, and checked
 *    again right before the removal). After the removal the peer's sends miss in the map and take TCP
 *    (SM_SOCK_F_TCP_ONLY on the peer), so the peer's receive queue keeps its order the same way.
 *  - Left open: a peer whose very first send starts within the few instructions between that last check and the
 *    delete; its bytes would be queued to a socket whose redirected queue is being freed.
 *
 * Each socket writes only its own sm_sock_meta from sk_msg (its flags and bulk_kib; sk_msg runs under the socket's
 * lock), and reads its peer's: no write of one socket can be lost to the other's.
 */
#ifndef SM_BULK_H
#define SM_BULK_H

#include "common.h"
#include "maps.h"
#include "counters.h"
#include "sock_key.h"

/* A send counts toward bulk from this size on (a message, as sk_msg sees it: one sendmsg() or up to 17 pages). */
#define SM_BULK_MSG_MIN (8u * 1024)
/* KiB in such sends, with the peer silent, after which the socket leaves. */
#define SM_BULK_KIB     (4u * 1024)

/* The app <-> agent leg of the tunnel hand-over (either end: the peer's key has the hand-over's port on its side).
 * Judged for bulk like a loopback connection: its agent end drains only at the tunnel's pace, and redirected bytes meet
 * no receive-buffer back-pressure (bpf_tcp_ingress charges memory, not sk_rcvbuf), so a bulk sender piles its stream up
 * in the agent socket's queue; bench mesh (b), iperf3 one stream, load ~10: 0.70 Gbit/s with both ends on the fast
 * path against 1.05 with neither, while ping-pong and HTTP/1.1 were no worse. By port only: a pod's own connection to
 * another pod's port that happens to equal it is judged the same way, which costs it nothing but the fast path for
 * a one-way bulk stream. */
static __always_inline int sm_is_handover_leg(const struct sm_sock_key *peer)
{
	struct sm_proxy *px;
	__u32 zero = 0;
	__u16 port;

	px = bpf_map_lookup_elem(&sm_proxy, &zero);
	if (!px || !px->tunnel_port)
		return 0;
	port = bpf_ntohs(px->tunnel_port);
	return peer->local_port == port || peer->remote_port == port;
}

/*
 * sk_msg, before the redirect: 1 when this send must take TCP because the socket leaves the fast path now, else 0
 * (redirect as usual). meta is this socket's, peer the key of the other end.
 */
static __always_inline int sm_bulk_leaves(struct sm_sock_meta *meta, const struct sm_sock_key *peer, __u32 size)
{
	struct sm_sock_meta *pm;
	__u32 kib;

	if (!(meta->flags & SM_SOCK_F_SENT))
		meta->flags |= SM_SOCK_F_SENT;
	/* Only loopback connections leave (their key carries the netns cookie): between pods TCP crosses two veths, and
	 * there the sockmap stream was 0.99-2.5x of TCP in every pods bench run, against 0.53-1.37x of loopback TCP. */
	if (!peer->netns_cookie && !sm_is_handover_leg(peer))
		return 0;
	if ((meta->flags & SM_SOCK_F_NOT_BULK) || size < SM_BULK_MSG_MIN)
		return 0;
	kib = meta->bulk_kib + (size >> 10);
	meta->bulk_kib = kib;
	if (kib < SM_BULK_KIB)
		return 0;
	pm = bpf_map_lookup_elem(&sm_sock_meta, peer);
	if (!pm || (pm->flags & SM_SOCK_F_SENT)) {
		meta->flags |= SM_SOCK_F_NOT_BULK;
		return 0;
	}
	meta->flags |= SM_SOCK_F_BULK | SM_SOCK_F_TCP_ONLY;
	sm_global_inc(SM_G_BULK_LEAVE);
	return 1;
}

static __always_inline void sm_bulk_rtt_cb_off(struct bpf_sock_ops *skops)
{
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_RTT_CB_FLAG);
}

/*
 * sock_ops BPF_SOCK_OPS_RTT_CB of a socket we inserted (the callback is asked for at insertion; on the fast path no
 * TCP data flows, so it fires only once a socket's bytes take TCP). k is this socket's key.
 */
static __always_inline void sm_bulk_rtt(struct bpf_sock_ops *skops, const struct sm_sock_key *k)
{
	struct sm_sock_meta *meta, *pm;
	struct sm_sock_key pk;

	meta = bpf_map_lookup_elem(&sm_sock_meta, k);
	if (!meta) {
		sm_bulk_rtt_cb_off(skops);
		return;
	}
	if (!(meta->flags & SM_SOCK_F_BULK)) {
		/* On TCP for good after a miss: nothing left to do here. Otherwise (e.g. the handshake's own sample on
		 * the passive side) keep the callback for a later switch. */
		if (meta->flags & SM_SOCK_F_TCP_ONLY)
			sm_bulk_rtt_cb_off(skops);
		return;
	}
	sm_sock_key_reverse(k, &pk);
	pm = bpf_map_lookup_elem(&sm_sock_meta, &pk);
	if (pm && !(pm->flags & SM_SOCK_F_SENT))
		bpf_map_delete_elem(&sm_sockets, k);
	else
		sm_global_inc(SM_G_BULK_KEPT); /* the peer sent meanwhile (or is gone): its bytes may wait for us */
	sm_bulk_rtt_cb_off(skops);
}

#endif /* SM_BULK_H */
