// What the agent needs of the kernel, probed by the addon: the agent refuses to start without a required feature
// (agent/kernel.ts), and meshctl doctor reports each of them from the same lists.
import { native } from './native.js';

/** What the agent needs of the kernel ('group.name' as probe() reports it, what it is). */
export const REQUIRED_FEATURES: [string, string][] = [
  ['progTypes.cgroup_sock_addr', 'BPF cgroup/connect programs (kernel 4.17+, CONFIG_CGROUP_BPF)'],
  ['mapTypes.lru_hash', 'BPF LRU hash maps'],
  ['mapTypes.ringbuf', 'BPF ring buffers (kernel 5.8+)'],
  ['helpers.cgroup_sock_addr:get_netns_cookie', 'bpf_get_netns_cookie in cgroup/connect programs (kernel 5.7+)'],
  ['helpers.cgroup_sock_addr:get_current_cgroup_id', 'bpf_get_current_cgroup_id in cgroup/connect programs (kernel 5.7+)'],
];
/** Only for the L7 redirect's hand-over (without them L7 services behave as their fail mode says). */
export const L7_FEATURES: [string, string][] = [
  ['progTypes.sock_ops', 'BPF sock_ops programs (CONFIG_CGROUP_BPF)'],
  ['helpers.sock_ops:get_netns_cookie', 'bpf_get_netns_cookie in sock_ops (kernel 5.15+)'],
];
/** Only for the sockmap fast path (--no-sockmap runs without them). */
export const SOCKMAP_FEATURES: [string, string][] = [
  ['progTypes.sock_ops', 'BPF sock_ops programs (CONFIG_CGROUP_BPF)'],
  ['progTypes.sk_msg', 'BPF sk_msg programs (CONFIG_BPF_STREAM_PARSER / CONFIG_NET_SOCK_MSG)'],
  ['mapTypes.sockhash', 'BPF SOCKHASH maps'],
  ['helpers.sock_ops:get_netns_cookie', 'bpf_get_netns_cookie in sock_ops (kernel 5.15+)'],
  ['helpers.sk_msg:get_netns_cookie', 'bpf_get_netns_cookie in sk_msg (kernel 5.15+)'],
];

/** Every feature the addon probes, flattened: 'group.name' -> present (the agent's check and meshctl doctor read this). */
export function probeFeatures(): Record<string, boolean> {
  const flat: Record<string, boolean> = {};
  for (const [group, entries] of Object.entries(native().probe())) {
    for (const [k, v] of Object.entries(entries as Record<string, boolean>)) flat[`${group}.${k}`] = v;
  }
  return flat;
}

