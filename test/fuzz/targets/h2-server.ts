// HTTP/2, server role (targets/h2.ts).
import { runRole } from './h2.js';

export { dict } from './h2.js';
export const run = (d: Buffer): void => runRole('server', d);
