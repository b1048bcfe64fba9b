/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sockmesh kernel ABI: every map key and value shared by bpf/ and native/.
 *
 * This is the only place these structs are declared. The bpf/ programs include it, native/ includes it
 * to report sizes and field offsets (see abiLayout() in the addon), and agent/datapath/abi.ts
 * encodes the same layouts; test/unit/abi.test.ts fails if the TypeScript side drifts.
 *
 * Conventions:
 *  - Addresses are always 16 bytes, network byte order. IPv4 is stored IPv4-mapped
 *    (::ffff:a.b.c.d) so one service key serves connect4 and a connect6 to a v4-mapped address.
 *  - Ports in service/backend/revnat structs are network byte order (as in sockaddr).
 *  - Ports in struct sm_sock_key are host byte order (converted once in sock_ops/sk_msg).
 *  - Every struct is padded explicitly: no implicit holes, so the TS codec and the C compiler agree.
 *  - Changing a layout means bumping SM_ABI_VERSION: pinned maps of another version are not reused.
 */
#ifndef SOCKMESH_ABI_H
#define SOCKMESH_ABI_H

#include <linux/types.h>

#define SM_ABI_VERSION 9

/* ---- limits ---- */
#define SM_MAX_SERVICES      65536   /* frontends (VIP:port:proto) */
#define SM_MAX_BACKENDS      262144
#define SM_MAX_TABLE_ENTRIES (1u << 22) /* all selection tables together, room for make-before-break swaps */
#define SM_MAX_TABLE_SIZE    65537   /* largest selection table (Maglev M) */
#define SM_MAX_AFFINITY      262144
#define SM_MAX_REVNAT        524288
#define SM_MAX_SOCKETS       131072
#define SM_MAX_LOCAL_ADDRS   4096    /* the node's and its pods' addresses (110 pods x 2 by default) */
#define SM_EVENTS_BYTES      (256 * 1024)
#define SM_MAX_L7_PENDING    65536   /* connect()ed to the proxy, not yet established */
#define SM_MAX_L7_PEERS      65536   /* established to the proxy, not yet accepted by it */
#define SM_MAX_IDENTITY_CGROUPS 65536 /* workload cgroups with an identity (sm_identities) */
#define SM_MAX_AUTHZ         262144  /* (service, identity, port) verdicts (sm_authz) */
#define SM_MAX_AUTHZ_POLICIES 1024   /* sm_authz_stats slots: 0 = no policy decided (the default), 1..N = policy */
#define SM_ID_DEPTH          6       /* cgroup levels below the meshed cgroup searched for a workload's cgroup */
#define SM_MAX_PROXY_SOCKS   16      /* the proxy's and the tunnel hand-over's listeners: loopback v4/v6, node v4/v6 each,
                                      * room for a node address change */
#define SM_MAX_REMOTE_PODS   65536   /* other nodes' pod addresses a direct connect() is handed to the tunnel for */
#define SM_MAX_STRICT        16384   /* sm_strict: (local pod address, port) mTLS modes; sm_strict_stats: destinations counted */
#define SM_STRICT_EVENT_NS   1000000000ULL /* at most one SM_EV_STRICT_DROP per destination per CPU in this long */

/* ---- enums ---- */
enum sm_proto {
	SM_PROTO_TCP = 6,
	SM_PROTO_UDP = 17,
};

enum sm_algo {
	SM_ALGO_RANDOM = 0,   /* uniform over the table, table has one entry per backend */
	SM_ALGO_WEIGHTED = 1, /* uniform over the table, table entries proportional to weight */
	SM_ALGO_MAGLEV = 2,   /* table is a Maglev lookup table, index = hash(netns, cookie) % size */
};

/* struct sm_service.flags */
#define SM_SVC_F_AFFINITY   (1u << 0) /* session affinity per client netns */
#define SM_SVC_F_L7         (1u << 1) /* TCP connect() is redirected to the agent's L7 proxy */
#define SM_SVC_F_FAIL_OPEN  (1u << 2) /* with SM_SVC_F_L7: proxy down = balance at L4 (else refuse) */
#define SM_SVC_F_AUTHZ      (1u << 3) /* L4 authorization applies to TCP connect(): sm_authz decides, by the caller's
                                       * identity (sm_identities) and the chosen backend's port */
#define SM_SVC_F_AUTHZ_DENY (1u << 4) /* with SM_SVC_F_AUTHZ: no sm_authz entry = deny (an ALLOW policy applies to the
                                       * service, so a source no ALLOW matches is denied); without it, allow */

/* struct sm_backend.flags */
#define SM_BE_F_LOCAL       (1u << 0) /* backend address is on this node: sockmap candidate */
#define SM_BE_F_TUNNEL      (1u << 1) /* a workload of another node, mTLS mode != off: TCP connect() is handed to the
                                       * agent's tunnel hand-over listener (lib/tunnel.h), the pod ip:port kept for it */
#define SM_BE_F_STRICT      (1u << 2) /* with SM_BE_F_TUNNEL: the destination is strict, so with the hand-over down
                                       * connect() is refused (ECONNREFUSED) instead of going direct in plaintext */

/* struct sm_sock_meta.flags */
#define SM_SOCK_F_ACTIVE    (1u << 0) /* the connecting side */
#define SM_SOCK_F_TCP_ONLY  (1u << 1) /* bytes already took the TCP path: never redirect again
                                       * (redirected data would be read before them) */
#define SM_SOCK_F_SENT      (1u << 2) /* sk_msg tried to redirect a send of this socket: its bytes may wait in the
                                       * peer's redirected queue, so the peer must never leave the SOCKHASH */
#define SM_SOCK_F_BULK      (1u << 3) /* left the fast path as a bulk sender (with SM_SOCK_F_TCP_ONLY); sock_ops
                                       * takes it out of the SOCKHASH once TCP carries its bytes (bpf/lib/bulk.h) */
#define SM_SOCK_F_NOT_BULK  (1u << 4) /* its peer sends on the fast path too: request/response, it never leaves */

/* struct sm_proxy.flags */
#define SM_PROXY_F_IN_MESH  (1u << 0) /* the proxy runs inside the meshed cgroup: its accepted sockets get sock_ops,
                                       * so the app-to-proxy leg can take the fast path. Without it, client sockets
                                       * to the proxy stay out of the SOCKHASH (every send would pay for sk_msg
                                       * and then take TCP anyway). */
#define SM_PROXY_F_HANDOVER_IN_MESH (1u << 1) /* the same for the tunnel hand-over's listeners (tunnel_port): their
                                       * sockets were made in a cgroup below the meshed one (agent/datapath/
                                       * meshsocket.ts), whatever cgroup the agent runs in, so both ends of an app's
                                       * connection to the hand-over are in the SOCKHASH. Without it neither is. */

/* struct sm_config.flags */
#define SM_CFG_F_SOCKMAP    (1u << 0) /* sockmap fast path enabled */

/* sm_flow_event.kind */
enum sm_event_kind {
	SM_EV_CONNECT = 1,     /* TCP/UDP connect() balanced to a backend */
	SM_EV_NO_BACKEND = 2,  /* connect()/sendmsg() to a service without usable backend: refused */
	SM_EV_UDP_SEND = 3,    /* unconnected UDP sendmsg() balanced to a backend */
	SM_EV_L7_REDIRECT = 4, /* connect() to an L7 service redirected to the proxy (backend = the proxy) */
	SM_EV_L7_REFUSED = 5,  /* connect() to a fail-closed L7 service refused: the proxy is down */
	SM_EV_SOCK_INSERT = 6, /* sock_ops put a socket into the SOCKHASH (fast path); vip = its local end, backend =
	                        * its peer, service/backend ids from the VIP it was balanced through (0: none) */
	SM_EV_REDIRECT_MISS = 7, /* sk_msg found no peer in the SOCKHASH: this socket takes TCP from now on; addresses
	                          * as for SM_EV_SOCK_INSERT */
	SM_EV_AUTHZ_DENY = 8,  /* connect() refused by L4 authorization (EACCES); backend = the one it would have reached,
	                        * policy_id = the DENY policy that matched, or 0 when no ALLOW policy matched */
	SM_EV_STRICT_DROP = 9, /* a connection from another node straight to a strict pod was dropped (bpf/strict.bpf.c):
	                        * vip:vport = the pod address:port it was sent to, backend_addr:backend_port = its source,
	                        * cgroup_id = the listening socket's; at most one per destination per SM_STRICT_EVENT_NS
	                        * per CPU (a SYN flood must not flood the ring buffer), not sampled */
	SM_EV_TUNNEL = 10,     /* connect() to a workload of another node handed to the tunnel; backend = the pod (vip = the
	                        * VIP, or the pod itself for a direct connect) */
	SM_EV_TUNNEL_REFUSED = 11, /* connect() to a strict workload of another node refused: the hand-over is down */
};

/* sm_flow_event.flags */
#define SM_EV_F_AFFINITY_HIT (1u << 0) /* SM_EV_CONNECT/UDP_SEND: the backend came from the affinity map */
#define SM_EV_F_ACTIVE       (1u << 1) /* SM_EV_SOCK_INSERT/REDIRECT_MISS: the connecting side */

/* sm_global counter indices (PERCPU_ARRAY of __u64) */
enum sm_global_counter {
	SM_G_LB_CONNECT = 0,     /* connect() rewritten to a backend */
	SM_G_LB_UDP_SEND,        /* sendmsg() rewritten to a backend */
	SM_G_LB_NO_BACKEND,      /* refused: service without usable backend */
	SM_G_AFFINITY_HIT,       /* backend taken from the affinity map */
	SM_G_REVNAT_MISS,        /* getpeername/recvmsg without a revnat entry (normal for non-VIP) */
	SM_G_SOCK_INSERT,        /* sockets inserted into the SOCKHASH */
	SM_G_SOCK_INSERT_FAIL,   /* bpf_sock_hash_update failed */
	SM_G_REDIRECT,           /* sk_msg redirected to the local peer */
	SM_G_REDIRECT_MISS,      /* sk_msg: peer not in the map, normal path */
	SM_G_TCP_ONLY,           /* sk_msg: socket pinned to the TCP path (ordering guard) */
	SM_G_EVENT_DROP,         /* ring buffer full */
	SM_G_L7_REDIRECT,        /* connect() redirected to the L7 proxy */
	SM_G_L7_FAIL_OPEN,       /* proxy down, fail-open service: balanced at L4 instead */
	SM_G_L7_FAIL_CLOSED,     /* proxy down, fail-closed service: connect() refused */
	SM_G_L7_FROM_PROXY,      /* connect() from the proxy's own cgroup: balanced at L4, never looped back */
	SM_G_L7_HANDOFF,         /* sock_ops moved an original destination to the key the proxy looks up */
	SM_G_BULK_LEAVE,         /* sk_msg: a bulk sender left the fast path for TCP (bpf/lib/bulk.h) */
	SM_G_BULK_KEPT,          /* sock_ops: a bulk sender stayed in the SOCKHASH (on TCP) because its peer had sent */
	SM_G_STALE_PEER,         /* sock_ops removed another socket from the new connection's peer key (a gone pod's) */
	SM_G_L7_PROXY_GONE,      /* connect() to an L7 service while the heartbeat was fresh but the proxy's listener was
	                          * not in sm_proxy_socks (the agent died, or never listened there): fail mode applied */
	SM_G_AUTHZ_ALLOW,        /* connect() allowed by L4 authorization (services with SM_SVC_F_AUTHZ only) */
	SM_G_AUTHZ_DENY,         /* connect() refused by L4 authorization */
	SM_G_TUNNEL_HANDOVER,    /* connect() to another node's workload handed to the tunnel hand-over listener */
	SM_G_TUNNEL_DIRECT,      /* the hand-over was down (no heartbeat, or its listener not in sm_proxy_socks), the
	                          * destination permissive: connect() went direct, in plaintext */
	SM_G_TUNNEL_REFUSED,     /* the hand-over was down, the destination strict: connect() refused (ECONNREFUSED) */
	SM_G_STRICT_DROP,        /* strict mode: a segment from a non-local source to a strict pod's listener dropped */
	SM_G_STRICT_LOCAL,       /* strict mode: a segment to a strict pod's listener from this node (tunnel, pods, node) passed */
	SM_G__MAX,
};

/* ---- maps (pinned by name under the agent's bpffs directory) ----
 *  sm_services      HASH         struct sm_service_key -> struct sm_service
 *  sm_backends      HASH         __u32 backend_id      -> struct sm_backend
 *  sm_tables        HASH         struct sm_table_key   -> __u32 backend_id, index 0..table_size-1 of each
 *                                 table. One flat map rather than a map of arrays: every update of a
 *                                 map-of-maps from userland waits for an RCU grace period (~10 ms here),
 *                                 which made a 10,000-service sync take minutes.
 *  sm_affinity      LRU_HASH     struct sm_affinity_key -> struct sm_affinity
 *  sm_revnat        LRU_HASH     struct sm_revnat_key  -> struct sm_revnat
 *  sm_sockets       SOCKHASH     struct sm_sock_key    -> socket
 *  sm_sock_meta     HASH         struct sm_sock_key    -> struct sm_sock_meta
 *  sm_local_addrs   HASH         struct sm_addr        -> __u32 (1)
 *  sm_svc_stats     PERCPU_HASH  __u32 service_id      -> struct sm_counters
 *  sm_backend_stats PERCPU_HASH  __u32 backend_id      -> struct sm_counters
 *  sm_global        PERCPU_ARRAY __u32 index (enum sm_global_counter) -> __u64
 *  sm_config        ARRAY[1]     __u32 0               -> struct sm_config
 *  sm_events        RINGBUF      struct sm_flow_event records
 *  sm_proxy         HASH[1]      __u32 0               -> struct sm_proxy. Its own map: the heartbeat written
 *                                 every second never rewrites other config. A HASH without preallocation, not an
 *                                 ARRAY: an update swaps in a whole new element, so connect() never reads a
 *                                 half-written heartbeat (an ARRAY value is copied in place under the reader).
 *  sm_l7_pending    LRU_HASH     __u64 socket cookie   -> struct sm_orig_dst, written by connect4/6 when it
 *                                 redirects to the proxy (the local port is not chosen yet then). LRU: a connect
 *                                 that never establishes leaves its entry to be evicted.
 *  sm_l7_peers      LRU_HASH     struct sm_l7_key      -> struct sm_orig_dst, moved there by sock_ops when the
 *                                 client is established (before the proxy's accept() returns); the proxy takes
 *                                 it out with one BPF_MAP_LOOKUP_AND_DELETE_ELEM per accepted connection.
 *  sm_proxy_socks   SOCKHASH     struct sm_proxy_sock_key -> the proxy's listening socket on that address:port,
 *                                 inserted by the agent (value: the listener's fd). The kernel takes a socket out
 *                                 of a sockmap when it closes, so when the agent dies (SIGKILL, OOM) its listeners
 *                                 leave this map at once and connect() applies the fail mode from the next call,
 *                                 instead of redirecting to a dead port until the heartbeat is 3 intervals old.
 *                                 No program is attached to it: it is looked up, never redirected through.
 *  sm_identities    HASH         __u64 cgroup id       -> struct sm_identity: the workloads' cgroups (the pod's, not
 *                                 each container's: connect() looks up the caller's cgroup and its ancestors up to
 *                                 SM_ID_DEPTH levels below the meshed cgroup, the deepest hit wins), so a container
 *                                 started later has its pod's identity without the agent seeing it first.
 *  sm_authz         HASH         struct sm_authz_key   -> struct sm_authz_verdict, for services with SM_SVC_F_AUTHZ;
 *                                 a miss means the service's default (SM_SVC_F_AUTHZ_DENY).
 *  sm_authz_stats   PERCPU_ARRAY __u32 policy id (0..SM_MAX_AUTHZ_POLICIES-1) -> struct sm_authz_counters
 *  sm_remote_pods   HASH         struct sm_addr        -> __u32 SM_BE_F_TUNNEL [| SM_BE_F_STRICT]: pod addresses of
 *                                 other nodes whose mTLS mode is not off; a TCP connect() straight to one (no VIP) is
 *                                 handed to the tunnel like a VIP's remote backend.
 *  sm_strict        HASH         struct sm_strict_key  -> struct sm_strict: the mTLS mode of a local pod's address:port
 *                                 (port 0: every port of that address without an entry of its own), read by the
 *                                 strict-mode ingress program (bpf/strict.bpf.c) on each segment to a listener.
 *                                 Only what is not permissive/off needs an entry, plus the ports that open a strict
 *                                 address again.
 *  sm_strict_stats  PERCPU_HASH  struct sm_strict_key  -> struct sm_strict_counters, per destination address:port
 *                                 (the real port, never 0), created by the program on the first segment counted.
 */

struct sm_addr {
	__u32 a[4];
};

struct sm_service_key {
	__u32 addr[4]; /* VIP */
	__u16 port;    /* VIP port, network order */
	__u8 proto;    /* enum sm_proto */
	__u8 pad;
};

struct sm_service {
	__u32 service_id;         /* the configured service (counters) */
	__u32 frontend_id;        /* this VIP:port:proto (affinity scope) */
	__u32 table_id;           /* key in sm_tables */
	__u32 table_size;         /* entries in the table; 0 = no usable backend */
	__u32 affinity_timeout_s; /* with SM_SVC_F_AFFINITY */
	__u8 algo;                /* enum sm_algo */
	__u8 flags;               /* SM_SVC_F_* */
	__u16 pad;
};

struct sm_backend {
	__u32 addr[4];
	__u16 port;        /* network order */
	__u8 family;       /* AF_INET (2) or AF_INET6 (10) */
	__u8 flags;        /* SM_BE_F_* */
	__u32 service_id;  /* backends are per service: ids are never shared between services */
	__u32 weight;
};

struct sm_table_key {
	__u32 table_id;
	__u32 index;
};

struct sm_affinity_key {
	__u64 netns_cookie; /* the client */
	__u32 frontend_id;
	__u32 pad;
};

struct sm_affinity {
	__u64 last_used_ns; /* bpf_ktime_get_ns() */
	__u32 backend_id;
	__u32 pad;
};

struct sm_revnat_key {
	__u64 cookie;   /* socket cookie */
	__u32 addr[4];  /* backend address the socket was sent to */
	__u16 port;     /* backend port, network order */
	__u16 pad;
	__u32 pad2;
};

struct sm_revnat {
	__u32 vip[4];
	__u16 vport;    /* network order */
	__u16 pad;
	__u32 service_id;
	__u32 backend_id;
};

struct sm_sock_key {
	__u64 netns_cookie;  /* SOCKHASH is global across namespaces */
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 local_port;    /* host order */
	__u32 remote_port;   /* host order */
};

struct sm_sock_meta {
	__u32 service_id;  /* 0 when the connection did not go through a VIP */
	__u32 backend_id;
	__u32 flags;       /* SM_SOCK_F_* */
	__u32 bulk_kib;    /* KiB this socket sent in large messages while its peer never sent (bpf/lib/bulk.h) */
};

struct sm_counters {
	__u64 connections;     /* connect() balanced to this service/backend */
	__u64 udp_messages;    /* unconnected sendmsg() balanced */
	__u64 no_backend;      /* refused for lack of a usable backend (service only) */
	__u64 redirects;       /* sk_msg redirects on connections of this service/backend */
	__u64 redirect_bytes;  /* bytes handed over by those redirects */
	__u64 affinity_hits;   /* backend chosen from the affinity map */
};

struct sm_config {
	__u32 flags;             /* SM_CFG_F_* */
	__u32 event_sample;      /* emit one flow event in N (0 = none, 1 = all) */
	__u64 abi_version;       /* SM_ABI_VERSION of whoever wrote the maps (a pinned map of another layout is refused) */
	__u32 mesh_level;        /* the meshed cgroup's level (root = 0): where the search for a workload cgroup starts */
	__u32 pad;
	__u64 reserved;
};

struct sm_flow_event {
	__u64 ts_ns;
	__u64 cookie;
	__u64 netns_cookie;
	__u32 vip[4];
	__u32 backend_addr[4];
	__u16 vport;         /* network order */
	__u16 backend_port;  /* network order */
	__u32 service_id;
	__u32 backend_id;
	__u8 kind;           /* enum sm_event_kind */
	__u8 proto;          /* enum sm_proto */
	__u8 algo;           /* enum sm_algo of the service (balancing events) */
	__u8 flags;          /* SM_EV_F_* */
	__u64 cgroup_id;     /* the calling process's cgroup (sock_addr hooks; 0 in sock_ops and sk_msg) */
	__u32 identity_id;   /* SM_EV_AUTHZ_DENY: the caller's identity (0 = none) */
	__u32 policy_id;     /* SM_EV_AUTHZ_DENY: the policy that decided (0 = the default: no ALLOW matched) */
};

/* The agent's L7 proxy. Addresses as everywhere (v4 mapped); an all-zero address = no listener of that family. */
struct sm_proxy {
	__u32 v4[4];          /* IPv4 listener (::ffff:a.b.c.d) for AF_INET sockets and v4-mapped VIPs */
	__u32 v6[4];          /* IPv6 listener for AF_INET6 sockets to IPv6 VIPs (zero: v4-mapped v4 is used) */
	__u16 port;           /* network order */
	__u16 tunnel_port;    /* network order: the tunnel hand-over's listeners (same addresses as the proxy's); 0 = none
	                       * (remote workloads are then reached directly, or refused when strict) */
	__u32 flags;          /* SM_PROXY_F_* */
	__u64 netns_cookie;   /* the proxy's netns: a loopback proxy is only reachable from there */
	__u64 cgroup_id;      /* connect() from this cgroup is never redirected (the proxy's upstreams, probes) */
	__u64 heartbeat_ns;   /* bpf_ktime_get_ns() clock (CLOCK_MONOTONIC) of the last heartbeat; 0 = down */
	__u64 timeout_ns;     /* alive while now - heartbeat_ns <= timeout_ns */
	/* A node address the proxy also listens on, for clients in other network namespaces (pods): a loopback listener
	 * exists only in the proxy's netns, a node address is reachable over a pod's normal routes. All-zero = none (such
	 * clients get their service's fail mode). Used only for a client whose netns differs from netns_cookie. */
	__u32 node_v4[4];     /* for AF_INET sockets and v4-mapped VIPs */
	__u32 node_v6[4];     /* for IPv6 VIPs (zero: node_v4, v4-mapped) */
};

/* Where a redirected connection was going, and who asked. */
struct sm_orig_dst {
	__u32 vip[4];         /* what connect() asked for: the VIP, or the pod address of a direct connect */
	__u16 vport;          /* network order */
	__u16 pad;
	__u32 service_id;     /* 0 for a direct connect to a remote pod */
	__u64 cgroup_id;      /* bpf_get_current_cgroup_id() of the connecting process */
	__u32 backend[4];     /* tunnel hand-over: the pod chosen (the CONNECT's authority); zero for the L7 redirect */
	__u16 backend_port;   /* network order; 0 for the L7 redirect */
	__u16 pad2;
	__u32 backend_id;     /* tunnel hand-over through a VIP: the chosen backend (0 otherwise) */
};

/* Where a proxy listener is bound (sm_proxy_socks): the address as in struct sm_proxy (v4 mapped), its port. */
struct sm_proxy_sock_key {
	__u32 addr[4];
	__u16 port;           /* network order, as sm_proxy.port */
	__u16 pad;
};

/* The client end of a connection to the proxy, as the proxy sees its peer. The netns cookie is the client's when
 * the address is loopback (only a client in the proxy's netns reaches a loopback proxy, but other namespaces hold
 * the same loopback tuples), else 0 (node and pod addresses are unique on the node; the proxy cannot know the
 * client's netns). */
struct sm_l7_key {
	__u64 netns_cookie;
	__u32 addr[4];        /* client address */
	__u32 port;           /* client port, host order */
	__u32 pad;
};

/* A workload's identity as the kernel knows it: a small id the agent allocates per SPIFFE id. */
struct sm_identity {
	__u32 identity_id;    /* 0 is never used: it means "no identity" in sm_authz_key */
	__u32 pad;
};

/* One L4 authorization verdict: a service, the source identity (0 = a caller without one), the destination pod port
 * (Istio's `to.ports` are the workload's port). */
struct sm_authz_key {
	__u32 service_id;
	__u32 identity_id;
	__u16 port;           /* the chosen backend's port, network order */
	__u16 pad;
};

#define SM_AUTHZ_DENY  0
#define SM_AUTHZ_ALLOW 1

struct sm_authz_verdict {
	__u32 policy_id;      /* the policy that decided (sm_authz_stats slot); 0 = none (the default) */
	__u8 verdict;         /* SM_AUTHZ_ALLOW or SM_AUTHZ_DENY */
	__u8 pad[3];
};

struct sm_authz_counters {
	__u64 allowed;
	__u64 denied;
};

/* mTLS modes as the kernel holds them (struct sm_strict.mode); the model's strict / permissive / off. */
#define SM_MTLS_OFF        0
#define SM_MTLS_PERMISSIVE 1
#define SM_MTLS_STRICT     2

/* A destination on this node: a local pod's address and the port it listens on. */
struct sm_strict_key {
	__u32 addr[4];        /* the pod address (v4 mapped) */
	__u16 port;           /* network order, as in sm_authz_key; 0 = every port of the address without its own entry */
	__u16 pad;
};

struct sm_strict {
	__u8 mode;            /* SM_MTLS_*: only SM_MTLS_STRICT drops */
	__u8 pad[3];
};

struct sm_strict_counters {
	__u64 dropped;        /* segments from another node dropped (each SYN retransmission counts) */
	__u64 local;          /* segments from this node let through (the tunnel's connect, local pods, the node) */
	__u64 last_event_ns;  /* bpf_ktime_get_ns() of this CPU's last SM_EV_STRICT_DROP for the destination */
};

#endif /* SOCKMESH_ABI_H */
