// Imported for its effect, first thing in the test helpers that start our processes: the processes a test starts
// (agents, meshctl, control planes, load clients) run without tap's per-process instrumentation.
//
// Why: tap runs each test file with NODE_OPTIONS="--import=…/@tapjs/processinfo/…/import.mjs" (it records the process
// tree for coverage and --changed; this project runs tap with coverage disabled), and puts it back into the
// environment of every process the test spawns (a process-on-spawn listener, whatever env the spawn names). In a Node
// child that import hooks the module loader: `sockmesh-agent --help` cost 0.68-0.75 s of CPU with it and 0.21-0.22 s
// without (side by side, load 4 on 2 CPUs), so kernel/crash measured tap more than the agent's start ("modules read and
// linked" at 840 ms of CPU in a CI run), and every agent and meshctl a test started paid it.
const TAP_IMPORT = /\s*"?--(?:import|loader|require)=[^"\s]*@tapjs[^"\s]*"?/g;

/** NODE_OPTIONS without tap's instrumentation (undefined when nothing else is left). */
export function withoutTapInstrumentation(nodeOptions: string | undefined): string | undefined {
  if (!nodeOptions) return nodeOptions;
  const left = nodeOptions.replace(TAP_IMPORT, '').trim();
  return left === '' ? undefined : left;
}

function strip(env: Record<string, string | undefined>): void {
  const left = withoutTapInstrumentation(env.NODE_OPTIONS);
  if (left === undefined) delete env.NODE_OPTIONS;
  else env.NODE_OPTIONS = left;
}

strip(process.env);
// process-on-spawn's shared state (the package tap's processinfo uses; its documented singleton key): our listener
// runs after tap's, on the env each spawn is about to get. Not there when this runs outside tap: nothing to undo.
const onSpawn = (globalThis as Record<symbol, { listeners: ((o: { env: Record<string, string | undefined> }) => void)[] } | undefined>)[Symbol.for('process-on-spawn@*:singletonId')];
onSpawn?.listeners.push((opts) => strip(opts.env));
