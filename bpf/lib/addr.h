/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * 16-byte addresses in network order. IPv4 is always stored IPv4-mapped (::ffff:a.b.c.d) so
 * that connect4 and a dual-stack connect6 to the mapped form find the same map entries.
 * Copies are written out field by field: context fields must be read with 4-byte loads.
 */
#ifndef SM_ADDR_H
#define SM_ADDR_H

#include "common.h"

static __always_inline void sm_addr_from_v4(__u32 *a, __u32 ip4)
{
	a[0] = 0;
	a[1] = 0;
	a[2] = bpf_htonl(0x0000ffff);
	a[3] = ip4;
}

static __always_inline void sm_addr_copy(__u32 *dst, const __u32 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

static __always_inline int sm_addr_is_v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int sm_addr_is_zero(const __u32 *a)
{
	return (a[0] | a[1] | a[2] | a[3]) == 0;
}

static __always_inline int sm_addr_eq(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* 127.0.0.0/8 (plain or mapped) or ::1 */
static __always_inline int sm_addr_is_loopback(const __u32 *a)
{
	if (sm_addr_is_v4_mapped(a))
		return (bpf_ntohl(a[3]) >> 24) == 127;
	return a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == bpf_htonl(1);
}

#endif /* SM_ADDR_H */
