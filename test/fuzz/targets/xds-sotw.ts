// xDS state-of-the-world responses (targets/xds.ts).
import { runMode, warmUp } from './xds.js';

export { dict } from './xds.js';
export const setup = (): Promise<void> => warmUp('sotw');
export const run = (d: Buffer): void => runMode('sotw', d);
