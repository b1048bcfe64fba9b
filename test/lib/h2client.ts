// The independent HBONE client of the kernel tests (issue 13): python3-h2 (Debian) over Python's ssl (OpenSSL), run by
// /usr/bin/python3 in a lab node's namespace as another node's agent would be. argv: host port authority ca cert key
// payload (cert and key '' = no client certificate).
// One CONNECT, the payload with END_STREAM, then everything the stream answers. Prints one JSON line: the status, the
// body, the server's SPIFFE id; or the error that ended it.
export const H2CLIENT = `import json, socket, ssl, sys
import h2.config, h2.connection, h2.events
host, port, authority, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
payload = sys.argv[7].encode()
out = {'status': None, 'body': '', 'ended': None}
try:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(['h2'])
    ctx.check_hostname = False   # the server is named by a SPIFFE URI SAN, checked below, not by a host name
    ctx.load_verify_locations(ca)
    if cert: ctx.load_cert_chain(cert, key)
    tls = ctx.wrap_socket(socket.create_connection((host, port), timeout=5))
    out['alpn'] = tls.selected_alpn_protocol(); out['tls'] = tls.version()
    out['server'] = [v for k, v in tls.getpeercert().get('subjectAltName', ()) if k == 'URI']
    # h2 4.1 wants :path on every request, CONNECT included (RFC 9113 8.5 forbids it there): its outbound check is off,
    # so that the request is exactly HBONE's
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding='utf-8', validate_outbound_headers=False))
    conn.initiate_connection(); tls.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(':method', 'CONNECT'), (':authority', authority)])
    tls.sendall(conn.data_to_send())
    done = False
    while not done:
        data = tls.recv(65536)
        if not data:
            out['ended'] = 'connection closed'; break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                out['status'] = int(dict(ev.headers)[':status'])
                if out['status'] == 200: conn.send_data(sid, payload, end_stream=True)
            elif isinstance(ev, h2.events.DataReceived):
                out['body'] += ev.data.decode(); conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                out['ended'] = 'stream ended'; done = True
            elif isinstance(ev, h2.events.StreamReset):
                out['ended'] = 'stream reset %d' % ev.error_code; done = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                out['ended'] = 'goaway %d' % ev.error_code; done = True
        tls.sendall(conn.data_to_send())
except (OSError, ssl.SSLError) as e:
    out['error'] = type(e).__name__ + ': ' + str(e)
print(json.dumps(out))`;

/** What H2CLIENT prints: the CONNECT's status, the body the stream answered, how it ended, or the error. */
export interface H2Out { status: number | null; body: string; ended: string | null; alpn?: string; tls?: string; server?: string[]; error?: string }
