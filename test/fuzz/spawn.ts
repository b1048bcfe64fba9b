// Running one target's process (child.ts) and reading its result: shared by `npm run fuzz` and the suite.
import { spawn } from 'node:child_process';
import { targetSpec } from './targets.js';

export interface TargetRun {
  target: string;
  execs: number;
  seconds: number;
  execsPerSecond: number;
  /** CPU seconds the fuzz loop used (its process, the watchdog thread included), and executions per CPU second */
  cpuSeconds: number;
  execsPerCpuSecond: number;
  corpus: number;
  seeds: number;
  probesHit: number;
  probesTotal: number;
  findings: { kind: string; signature: string; input: string; file?: string }[];
}

export interface RunOptions {
  seconds: number;
  execs?: number;
  seed?: string;
  timeoutMs?: number;
  corpus?: string;
  findings?: string;
  blind?: boolean;
  stopOnFinding?: boolean;
  /** pass the child's output through (long runs: findings show as they happen) */
  echo?: boolean;
}

const here = new URL('.', import.meta.url).pathname;

export function runTarget(name: string, o: RunOptions): Promise<TargetRun> {
  const spec = targetSpec(name);
  const args = ['--import', `${here}register.mjs`, `${here}child.ts`, '--target', name, '--seconds', String(o.seconds),
    '--timeout-ms', String(o.timeoutMs ?? 1000)];
  if (o.execs !== undefined) args.push('--execs', String(o.execs));
  if (o.seed !== undefined) args.push('--seed', o.seed);
  if (o.corpus) args.push('--corpus', o.corpus);
  if (o.findings) args.push('--findings', o.findings);
  if (o.blind) args.push('--blind');
  if (o.stopOnFinding) args.push('--stop-on-finding');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      env: { ...process.env, SOCKMESH_FUZZ_INSTRUMENT: spec.instrument.join(',') }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => { out += c.toString(); if (o.echo) process.stdout.write(c); });
    child.stderr.on('data', (c: Buffer) => { err += c.toString(); if (o.echo) process.stderr.write(c); });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      const lines = out.split('\n');
      const result = lines.find((l) => l.startsWith('FUZZ-RESULT '));
      if (result) return resolve(JSON.parse(result.slice(12)) as TargetRun);
      const hang = lines.find((l) => l.startsWith('FUZZ-HANG '));
      if (hang) {
        // the watchdog killed the process: the hang is the finding; the inputs run and the CPU used until then are from
        // the watchdog (inputs: every one started, the seeds' and the corpus' re-runs included), the rest died with it
        const h = JSON.parse(hang.slice(10)) as { file: string | null; input: string; timeoutMs: number; what: string; execs: number; seconds: number; cpuSeconds: number };
        const seconds = Math.round(h.seconds * 10) / 10, cpuSeconds = Math.round(h.cpuSeconds * 10) / 10;
        return resolve({ target: name, execs: h.execs, seconds, execsPerSecond: Math.round(h.execs / Math.max(h.seconds, 1e-3)), cpuSeconds,
          execsPerCpuSecond: Math.round(h.execs / Math.max(h.cpuSeconds, 1e-3)), corpus: 0, seeds: 0, probesHit: 0, probesTotal: 0,
          findings: [{ kind: 'hang', signature: h.what.startsWith('waited') ? `hang: ${h.what}` : `hang over ${h.timeoutMs} ms`, input: h.input, file: h.file ?? undefined }] });
      }
      reject(new Error(`fuzz target ${name}: the process ended (${signal ?? `exit ${code}`}) without a result\n${err.slice(-3000)}`));
    });
  });
}
