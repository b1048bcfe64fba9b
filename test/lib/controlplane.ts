// sockmesh-controlplane as a child process of a kernel test, serving a config directory on a fixed port, so that it
// can be killed and started again where the agent expects it.
import './childenv.js'; // first: what this starts runs without tap's instrumentation
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { CONTROLPLANE_NODE_FLAGS } from '../../agent/runtime.js';
import { DIES_WITH_TEST, ROOT } from './kernel.js';
import { sleep } from './net.js';

const CONTROLPLANE = join(ROOT, 'dist', 'controlplane', 'main.js');

export class ControlPlaneProcess {
  proc?: ChildProcess;
  logs: string[] = [];
  constructor(readonly dir: string, readonly port: number) {}
  async start(): Promise<void> {
    const [cmd, ...pre] = DIES_WITH_TEST;
    const proc = spawn(cmd, [...pre, process.execPath, ...CONTROLPLANE_NODE_FLAGS, CONTROLPLANE, 'serve', '--dir', this.dir, '--listen', `127.0.0.1:${this.port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    const from = this.logs.length;
    proc.stdout!.on('data', (d: Buffer) => this.logs.push(...d.toString().split('\n').filter(Boolean)));
    proc.stderr!.on('data', (d: Buffer) => this.logs.push(d.toString()));
    const deadline = Date.now() + 15000;
    while (!this.logs.slice(from).some((l) => l.includes('control plane listening'))) {
      if (proc.exitCode !== null) throw new Error(`control plane exited: ${this.logs.join('\n')}`);
      if (Date.now() > deadline) throw new Error(`control plane did not start: ${this.logs.join('\n')}`);
      await sleep(20);
    }
  }
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    await new Promise<void>((r) => { p.once('exit', () => r()); p.kill(signal); });
  }
}
