// How the agent's Node.js runs. Every launcher (the bin's shebang, npm start, the Vagrant unit, tests, benchmarks)
// passes these flags, so what the benchmarks measure is what users run.
//
// --max-semi-space-size=8: V8 grows each young-generation semi-space to 16 MiB during a large xDS sync (10k services)
//   and keeps it; 8 MiB caps that at 2 x 8 MiB, measured: RSS after a 100k-endpoint sync 168-171 MiB instead of
//   185-194, after 1000 changes 181 instead of 208-218, and the sync itself faster (fewer promotions).
// --min-semi-space-size=8: and never below 8 MiB. V8 shrinks the young generation when it finds the allocation rate
//   low (an idle stretch, a full collection to give memory back: observe/memory.ts) and grows it again only once as
//   much as its size has SURVIVED scavenges; the L7 proxy's garbage nearly all dies young (~40 KB survive each), so it
//   took ~175 scavenges to get from 1 back to 8 MiB, and until then the proxy collected 4-5x as often (bench l7: 1.3-2.0
//   MB allocated per scavenge in every round that followed (c)'s, 6.5-7.0 in the others). Every scavenge stops all the
//   requests in flight (0.2-0.5 ms): at 30+ a second that is over 1 % of them, the p99 (issue 15). Costs up to 14 MiB
//   of RSS at rest that the shrink gave back; nothing during work (a sync grows it to 8 anyway).
// --v8-pool-size=1: V8's background compiler/GC threads each keep a malloc arena of freed memory (~18-25 MiB over four
//   threads on this kind of machine); one is enough on a 2-vCPU node agent whose hot work is on the main thread.
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8', '--min-semi-space-size=8', '--v8-pool-size=1'];

// How the control plane's Node.js runs (its shebang, scripts/image.sh's wrapper, the kubernetes bench and
// test/lib/controlplane.ts pass these): with V8's defaults, measured. A full sync of 10k services / 100k endpoints
// builds ~300 MiB of model and encoded resources that nearly all survive, so the young generation's cost is copying
// survivors, which no semi-space size avoids. Interleaved runs of the control plane's sync (in process, 7 pairs):
// CPU 2.00-2.15 s with the default 16 MiB semi-space (37 scavenges), 2.04-2.06 s with 32 (19 scavenges, +22-34 MiB
// RSS), 2.22 s with 64 (12, +88 MiB); in `npm run bench -- kubernetes` (2 pairs, load 9-10) the control plane used
// 1.77-2.05 s of CPU for the sync with the default and 2.19-2.38 s with 32. Fewer, longer pauses buy nothing here.
export const CONTROLPLANE_NODE_FLAGS: readonly string[] = [];
