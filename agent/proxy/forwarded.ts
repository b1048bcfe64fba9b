// x-forwarded-for, x-forwarded-proto and forwarded (RFC 7239) on the request going upstream, as Envoy's HTTP connection
// manager does with use_remote_address and xff_num_trusted_hops (model: HttpPolicy.forwarded; absent, nothing is
// touched). The proxy speaks cleartext to its clients, so the scheme it vouches for is always http.
//
// - useRemoteAddress: the client's address (the connection's peer: the pod or process that connected) is appended to
//   x-forwarded-for (',' as Envoy) and to forwarded as `for=...;proto=http` (an IPv6 address quoted and bracketed, RFC
//   7239 6). What came in is kept in front of it, never believed by the proxy itself.
// - x-forwarded-proto: with trustedHops 0 (nobody in front of the client is trusted) an incoming value is replaced, so a
//   client cannot claim https to a backend that redirects on it; with trustedHops > 0 an incoming value is what the
//   nearest trusted proxy said, and kept. Set when absent in every case (also without useRemoteAddress, as Envoy).
import type { ForwardedHeaders } from '../model/l7.js';
import type { Headers } from './types.js';

/** rewrite h (the request's Headers record, lower-case names) for a request from client (a textual address) */
export function applyForwarded(h: Headers, f: ForwardedHeaders, client: string): void {
  if (f.useRemoteAddress) {
    const xff = h['x-forwarded-for'];
    h['x-forwarded-for'] = xff === undefined ? client : `${typeof xff === 'string' ? xff : xff.join(',')},${client}`;
    const node = client.includes(':') ? `"[${client}]"` : client;
    const fwd = h['forwarded'];
    const el = `for=${node};proto=http`;
    h['forwarded'] = fwd === undefined ? el : `${typeof fwd === 'string' ? fwd : fwd.join(', ')}, ${el}`;
    if (f.trustedHops === 0) { h['x-forwarded-proto'] = 'http'; return; }
  }
  if (h['x-forwarded-proto'] === undefined) h['x-forwarded-proto'] = 'http';
}
