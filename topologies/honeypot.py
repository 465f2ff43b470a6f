"""The honeypot host's listener: accepts TCP connections, greets, records who came.

Each connection is one JSON line in the log: time, peer address and port, the
local address it reached (after iotguard's redirect rewrite, the honeypot's
own), and the first bytes the client sent.  Enough to prove that a redirected
device's connection landed here, and to read a brute-forcer's first attempt.
"""

import argparse
import json
import selectors
import socket
import time

BANNER = b'login: '
IP_TRANSPARENT = 19     # linux/in.h; the socket module has no name for it


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--bind', default='0.0.0.0')
    ap.add_argument('--port', type=int, action='append', required=True, help='TCP port (repeat)')
    ap.add_argument('--log', required=True, help='JSON lines, one per connection')
    args = ap.parse_args()
    sel = selectors.DefaultSelector()
    for port in args.port:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Answer from the address the client asked for, which is not ours (the host routes
        # every address to itself): without this the kernel refuses to send the SYN-ACK.
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.bind((args.bind, port))
        s.listen(128)
        sel.register(s, selectors.EVENT_READ)
    with open(args.log, 'a', buffering=1) as log:
        while True:
            for key, _ in sel.select():
                conn, peer = key.fileobj.accept()
                conn.settimeout(1.0)
                first = b''
                try:
                    conn.sendall(BANNER)
                    first = conn.recv(256)
                except OSError:
                    pass
                local = conn.getsockname()
                conn.close()
                log.write(json.dumps({'time': time.time(), 'peer': peer[0], 'peer_port': peer[1],
                                      'local': local[0], 'port': local[1],
                                      'first': first.decode('latin-1')}) + '\n')


if __name__ == '__main__':
    main()
