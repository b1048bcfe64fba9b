// How the agent's Node.js runs. Every launcher (the bin's shebang, npm start, the Vagrant unit, tests, benchmarks)
// passes these flags, so what the benchmarks measure is what users run.
//
// --max-semi-space-size=8: V8 grows each young-generation semi-space to 16 MiB during a large xDS sync (10k services)
//   and keeps it; 8 MiB caps that at 2 x 8 MiB, measured: RSS after a 100k-endpoint sync 168-171 MiB instead of
//   185-194, after 1000 changes 181 instead of 208-218, and the sync itself faster (fewer promotions).
// --v8-pool-size=1: V8's background compiler/GC threads each keep a malloc arena of freed memory (~18-25 MiB over four
//   threads on this kind of machine); one is enough on a 2-vCPU node agent whose hot work is on the main thread.
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8', '--v8-pool-size=1'];
