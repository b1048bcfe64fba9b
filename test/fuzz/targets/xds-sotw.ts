// xDS state-of-the-world responses (targets/xds.ts).
import { runMode } from './xds.js';

export { dict, setup } from './xds.js';
export const run = (d: Buffer): void => runMode('sotw', d);
