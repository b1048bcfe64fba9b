// KubeAccess (kube/watch.ts) over the API client: what agent/main.ts and controlplane/main.ts hand to the wiring.
import { KubeApiStatusError, KubeClient, loadKubeConfig, RESOURCES } from './client.js';
import { Reflector } from './reflector.js';
import type { KubeAccess } from './watch.js';
import type { Logger } from '../agent/observe/log.js';

export interface ApiAccess extends KubeAccess {
  client: KubeClient;
  /** the API server's URL */
  server: string;
}

/**
 * The kubeconfig (--kubeconfig, else in-cluster, else $KUBECONFIG, else ~/.kube/config: loadKubeConfig says which
 * and why not) as reflectors and the HTTPRoute status write-back. Throws loadKubeConfig's error naming file and field.
 */
export function apiAccess(opts: { kubeconfig?: string; log?: Logger }): ApiAccess {
  const connection = loadKubeConfig({ kubeconfig: opts.kubeconfig });
  const client = new KubeClient(connection);
  return {
    client,
    server: connection.server,
    reflect: (kind, o) => new Reflector(client, RESOURCES[kind], { fieldSelector: o.fieldSelector, log: opts.log }),
    patchRouteStatus: (namespace, name, status) => client.patchStatus(RESOURCES.httproutes, namespace, name, status),
    served: async (kind) => {
      try {
        await client.list(RESOURCES[kind], { limit: 1 });
        return true;
      } catch (e) {
        if (e instanceof KubeApiStatusError && (e.code === 404 || e.code === 403)) return false; // no such CRD, or not readable
        throw e;
      }
    },
  };
}
