// Config validation, JSON (targets/config.ts).
import { runFormat } from './config.js';

export { dict } from './config.js';
export const run = (d: Buffer): void => runFormat(true, d);
