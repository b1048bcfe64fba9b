#!/usr/bin/python3
# An HTTP/1.1 client independent of the proxy's code, for test/unit/proxy-drain-h1.test.ts: N keep-alive
# connections, each made idle by one request, then one more request on each of them while the server closes its idle
# connections (a planned restart's drain). It behaves as a careful client does (curl's "connection dead?" check,
# Go's transport's background read): just before reusing a connection it looks for the server's FIN, and a
# connection found closed is not used. Each request's fate is one of:
#   answered        a complete response on the old connection
#   closed-before   the FIN was there before the request was sent: nothing sent, retried on a new connection
#   crossed         sent, then a clean close (FIN) with no byte of a response: the request crossed the FIN on the
#                   wire; RFC 9112 9.3.1 lets a client retry it (GET is idempotent), and it is retried
#   reset           ECONNRESET (RST) when sending or reading: lost
#   partial         the connection closed within a response: lost
#   timeout         nothing within the time limit: lost
# Usage: h1race.py HOST PORT RETRY_PORT N TRIGGER_PORT DELAY_MS
#   prints "ready" once every connection is idle, then waits for a line on stdin; connects to TRIGGER_PORT (the test's
#   signal to start the drain), waits DELAY_MS and sends the race requests in a random order, then prints one JSON line
#   with the counts, the ids per fate and the retries' statuses.
import json
import random
import select
import socket
import sys
import time

host, port, retry_port, n, trigger_port, delay_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])


def request(path):
    return f'GET {path} HTTP/1.1\r\nhost: svc\r\n\r\n'.encode()


def parse(buf):
    """a complete response in buf: (status, headers) or None"""
    end = buf.find(b'\r\n\r\n')
    if end < 0:
        return None
    lines = buf[:end].decode('latin1').split('\r\n')
    if not lines[0].startswith('HTTP/1.1 '):
        raise ValueError(f'not a response: {buf[:80]!r}')
    status = int(lines[0].split(' ')[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(':')
        headers[k.strip().lower()] = v.strip()
    body = buf[end + 4:]
    if headers.get('transfer-encoding', '').lower() == 'chunked':
        if not body.endswith(b'0\r\n\r\n'):
            return None
    elif len(body) < int(headers.get('content-length', '0')):
        return None
    return status, headers


def exchange(sock, path, limit=5.0):
    """one request on a blocking socket: status, or the fate's name"""
    sock.settimeout(limit)
    try:
        sock.sendall(request(path))
        buf = b''
        while True:
            got = parse(buf)
            if got:
                return got[0]
            d = sock.recv(65536)
            if not d:
                return 'partial' if buf else 'crossed'
            buf += d
    except ConnectionResetError:
        return 'reset'
    except socket.timeout:
        return 'timeout'


def retry(path):
    with socket.create_connection((host, retry_port), timeout=5) as s:
        return exchange(s, path)


conns = []
for i in range(n):
    s = socket.create_connection((host, port), timeout=5)
    status = exchange(s, f'/warm/{i}')
    if status != 200:
        print(json.dumps({'error': f'warm-up request {i}: {status}'}), flush=True)
        sys.exit(1)
    s.setblocking(False)
    conns.append(s)
print('ready', flush=True)
sys.stdin.readline()

fate = {}
bufs = {}
pending = {}
trigger = None
order = list(range(n))
random.shuffle(order)
trigger = socket.create_connection((host, trigger_port))
if delay_ms > 0:
    time.sleep(delay_ms / 1000)
t0 = time.monotonic()
for i in order:
    s = conns[i]
    try:
        # the careful client's check: EOF waiting means the server closed this connection; do not send on it
        if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b'':
            fate[i] = 'closed-before'
            continue
    except BlockingIOError:
        pass
    except ConnectionResetError:
        fate[i] = 'reset'
        continue
    try:
        s.send(request(f'/race/{i}'))
    except ConnectionResetError:
        fate[i] = 'reset'
        continue
    except BrokenPipeError:
        fate[i] = 'reset'
        continue
    bufs[i] = b''
    pending[s.fileno()] = i
sent_ms = (time.monotonic() - t0) * 1000

deadline = time.monotonic() + 10
poller = select.poll()
for fd in pending:
    poller.register(fd, select.POLLIN)
while pending and time.monotonic() < deadline:
    for fd, _ in poller.poll(200):
        i = pending[fd]
        s = conns[i]
        done = None
        try:
            d = s.recv(65536)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            done = 'reset'
            d = b''
        if done is None:
            if d:
                bufs[i] += d
                got = parse(bufs[i])
                if got:
                    done = 'answered' if got[0] == 200 else f'status-{got[0]}'
            else:
                done = 'partial' if bufs[i] else 'crossed'
        if done is not None:
            fate[i] = done
            poller.unregister(fd)
            del pending[fd]
for i in pending.values():
    fate[i] = 'timeout'

retries = {}
for i, f in fate.items():
    if f in ('closed-before', 'crossed'):
        r = retry(f'/race/{i}')
        retries[str(r)] = retries.get(str(r), 0) + 1
for s in conns:
    s.close()
if trigger:
    trigger.close()
counts = {}
for f in fate.values():
    counts[f] = counts.get(f, 0) + 1
ids = {f: sorted(i for i, g in fate.items() if g == f) for f in counts}
print(json.dumps({'counts': counts, 'ids': ids, 'retries': retries, 'sentMs': round(sent_ms, 2)}), flush=True)
