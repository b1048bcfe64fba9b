// meshctl's exit codes, and the error that carries one up to the top level (printed there as one line).

export const EXIT = {
  ok: 0,
  /** usage error or anything unexpected */
  error: 1,
  /** the agent is not running and the answer could not be given from the pinned maps */
  agentDown: 3,
  /** no sockmesh datapath is pinned at --bpffs */
  noDatapath: 4,
} as const;

export class CliError extends Error {
  constructor(message: string, readonly exitCode: number = EXIT.error) {
    super(message);
    this.name = 'CliError';
  }
}
