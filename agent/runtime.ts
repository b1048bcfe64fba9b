// How the agent's Node.js runs. Every launcher (the bin's shebang, npm start, the Vagrant unit, tests, benchmarks)
// passes these flags, so what the benchmarks measure is what users run.
//
// --max-semi-space-size=8: V8 grows each young-generation semi-space to 16 MiB during a large xDS sync (10k services)
//   and keeps it; 8 MiB caps that at 2 x 8 MiB, measured: RSS after a 100k-endpoint sync 168-171 MiB instead of
//   185-194, after 1000 changes 181 instead of 208-218, and the sync itself faster (fewer promotions).
// --v8-pool-size=1: V8's background compiler/GC threads each keep a malloc arena of freed memory (~18-25 MiB over four
//   threads on this kind of machine); one is enough on a 2-vCPU node agent whose hot work is on the main thread.
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8', '--v8-pool-size=1'];

// How the control plane's Node.js runs (its shebang, scripts/image.sh's wrapper, the kubernetes bench and
// test/lib/controlplane.ts pass these).
//
// --max-semi-space-size=32: the control plane builds a snapshot of the whole cluster (10k services: ~300 MiB of
//   model and encoded resources that all survive), so every young-generation collection copies what it finds. V8's
//   default semi-space (16 MiB on 64-bit) scavenged 37 times for a full sync of 10k services / 100k endpoints; 32 MiB
//   halves that (19) at the same CPU (2.04 s against 2.15 s, interleaved runs) and 38 % less time in GC pauses
//   (1.27 s against 2.00 s on a loaded 2-vCPU VM, where each parallel scavenge also waits for its helper threads),
//   for +34 MiB RSS; 64 MiB saved few pauses more (12) for +88 MiB and more CPU (2.22 s). Not the agent's 8 MiB: the
//   agent keeps one model, the control plane builds one for every node it serves.
export const CONTROLPLANE_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=32'];
