// Structured logs: JSON lines by default (for collectors), human-readable when a person is watching a terminal.
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(level = process.env.SOCKMESH_LOG_LEVEL ?? 'info', pretty = process.stdout.isTTY): Logger {
  if (pretty) {
    return pino({ level, base: undefined, transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' } } });
  }
  // Synchronous writes: a SIGKILLed agent must not lose the lines it already logged.
  return pino({ level, base: { pid: process.pid } }, pino.destination({ dest: 1, sync: true }));
}
