// A reset that Node reports as a clean end (issue 13): libuv, after a read that did not fill its buffer, reports EOF
// without reading again when epoll says HUP (uv__stream_io's POLLHUP short-cut). A TCP reset (RST) sets HUP too, so a
// peer that sends data and then resets (a pod closing with SO_LINGER 0, an app aborting) reaches Node as 'end' when
// the RST lands in the same wake-up as the last bytes; the ECONNRESET stays pending in the kernel (SO_ERROR), never
// read. Through the tunnel that end would go on as END_STREAM and a FIN: the far app sees a clean end where the pod
// reset (measured on the lab: a pod sending 100 kB then resetting, 'fin' through the tunnel in 6 of 6 runs, ECONNRESET
// direct). The splice asks here at each 'end' and turns a pending error into the reset it was.
import type { Socket } from 'node:net';
import { getSystemErrorName } from 'node:util';
import { netioAddon } from '../proxy/netio.js';

type Ask = (fd: number) => number;
let ask: Ask | null | undefined;

/** The addon's socketError (native/fdpass.cc), or null when the build predates it (then a reset may look like an end). */
function asker(): Ask | null {
  if (ask !== undefined) return ask;
  try {
    const a = netioAddon() as { socketError?: Ask };
    ask = typeof a.socketError === 'function' ? a.socketError.bind(a) : null;
  } catch {
    ask = null;
  }
  return ask;
}

/**
 * The error (ECONNRESET, EPIPE, ...) the kernel holds for `sock` and has not reported, as an Error with its code, or
 * undefined for a clean end (a FIN). Asking clears it (SO_ERROR): call once, at 'end'.
 */
export function hiddenReset(sock: Socket): NodeJS.ErrnoException | undefined {
  const fd = (sock as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  const f = asker();
  if (typeof fd !== 'number' || fd < 0 || !f) return undefined;
  let errno: number;
  try {
    errno = f(fd);
  } catch {
    return undefined; // closed meanwhile: its own 'close' tells
  }
  if (errno === 0) return undefined;
  const code = getSystemErrorName(-errno);
  return Object.assign(new Error(`read ${code} (reported by the kernel after an end of stream)`), { code, errno: -errno, syscall: 'read' });
}
