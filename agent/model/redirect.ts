// The L7 redirect's hand-over, as both of its ends see it: the datapath reads it out of the kernel
// (Datapath.originalDst, from sm_l7_peers) and the proxy routes by it. Here, in the model both depend on, so that
// neither imports the other (sources -> model <- datapath, proxy). Pure data.

/** Where the client's connection was going before the kernel redirected it to the proxy. */
export interface OriginalDst {
  /** canonical textual VIP ('127.100.0.1', '::1') and port the application connected to */
  vip: string;
  port: number;
  /** cgroup v2 id of the connecting process (the source workload) */
  cgroupId: bigint;
  /** the tunnel hand-over only: the pod the kernel chose (a VIP's backend, or the pod dialled directly) */
  backend?: { address: string; port: number };
  /** the tunnel hand-over only: the service of the VIP (0 for a direct connect to a pod) */
  serviceId?: number;
}
