// xDS delta responses (targets/xds.ts).
import { runMode, warmUp } from './xds.js';

export { dict } from './xds.js';
export const setup = (): Promise<void> => warmUp('delta');
export const run = (d: Buffer): void => runMode('delta', d);
