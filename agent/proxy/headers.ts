// The policy's Headers record (types.ts Headers), as both protocols' parsers make it per request.
import type { Headers } from './types.js';

/**
 * A fast-mode object that inherits nothing: Object.create(null) makes a slow hash table (a dictionary-mode object) per
 * request, and an object literal inherits Object.prototype, so 'constructor' or '__proto__' would not be names like
 * any other. Objects made by one constructor share their hidden classes per order of names: a client that sends the
 * same fields each time costs one small object and its property store.
 */
export const HeadersRecord = function HeadersRecord(): void { /* empty */ } as unknown as { new (): Headers };
HeadersRecord.prototype = Object.create(null) as object;
