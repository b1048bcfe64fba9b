/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Things every sockmesh program needs: UAPI context structs, libbpf helpers, the ABI header,
 * and the few libc constants that cannot be included in a BPF object.
 */
#ifndef SM_COMMON_H
#define SM_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sockmesh_abi.h"

/* <sys/socket.h> is libc: not usable with -target bpf. */
#define SM_AF_INET      2
#define SM_AF_INET6     10
#define SM_SOCK_STREAM  1
#define SM_SOCK_DGRAM   2

#define SM_NSEC_PER_SEC 1000000000ULL

/* Return values of cgroup/sock_addr programs: 1 lets the call proceed, 0 fails it with EPERM. */
#define SM_SYSCALL_ALLOW 1
#define SM_SYSCALL_DENY  0

#endif /* SM_COMMON_H */
