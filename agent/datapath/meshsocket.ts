// Listening sockets of the agent's made INSIDE the meshed cgroup, whatever cgroup the agent itself runs in (issue 13:
// the tunnel hand-over's listeners).
//
// Why: a socket belongs to the cgroup of the task that made it, and accept() hands out sockets of the listener's
// cgroup. The sockmap's sock_ops program is attached to the meshed cgroup, so the connections an agent outside the mesh
// accepts never enter the SOCKHASH, while the app's end of the same connection (in the mesh) does: every send of the
// app then pays for sk_msg, misses its peer and takes TCP through the ordering guard (SM_G_TCP_ONLY; DESIGN.md
// measured that case at -20 to -38 %). Made here, the listener's accepted sockets get sock_ops like a meshed server's,
// and both ends of the app <-> agent leg are in the SOCKHASH from their ESTABLISHED callbacks on (bpf/sockmap.bpf.c),
// which the kernel is told with SM_PROXY_F_HANDOVER_IN_MESH.
//
// Where: a leaf cgroup of ours below the meshed one (cgroup v2 lets no process into a cgroup that has controllers
// enabled for its children, as a kubelet's kubepods has). No process stays in it (the task that makes a socket exits
// at once), so the pod scan (identity/podns.ts) never takes it for a pod and no workload's cgroup pattern names it.
// It is kept while the agent runs, and across a restart (the listeners passed on keep pointing at it);
// removeMeshSocketCgroup() is for `cleanup`.
import { mkdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { native } from './native.js';

/** The leaf cgroup below the meshed one where the agent's in-mesh listening sockets are made. */
export const MESH_SOCKET_CGROUP = 'sockmesh-agent-sockets';

/** Node's own default backlog for net.Server.listen(). */
const BACKLOG = 511;

/**
 * A listening TCP socket on host:port made below `meshedCgroup`: its fd, for net.Server.listen({ fd }). Throws an
 * Error naming the address and the cgroup (no such cgroup, clone3 or CLONE_INTO_CGROUP refused, the port taken).
 */
export function listenInMesh(meshedCgroup: string, host: string, port: number): number {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`listen ${host}:${port} in the mesh: port is not 0..65535`);
  const dir = join(meshedCgroup, MESH_SOCKET_CGROUP);
  try {
    mkdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`listen ${host}:${port} in the mesh: cgroup ${dir}: ${(e as Error).message}`, { cause: e });
  }
  return native().listenInCgroup(dir, host, port, BACKLOG);
}

/** Remove the leaf cgroup (best effort: a cgroup holding a process stays). Returns whether it was removed. */
export function removeMeshSocketCgroup(meshedCgroup: string): boolean {
  try {
    rmdirSync(join(meshedCgroup, MESH_SOCKET_CGROUP));
    return true;
  } catch {
    return false;
  }
}
