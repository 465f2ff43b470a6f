#!/usr/bin/env python3
"""A tiny authoritative DNS responder (UDP, A records only), standard library only.

It serves the "internet" host of the iotguard test topologies:

    python3 dns_server.py --bind 203.0.113.10 --record cloud.example=203.0.113.10 ...

* Answers A queries for the names given with ``--record NAME=IPV4`` (case-insensitive,
  exact names, no wildcards). A known name asked for another type (AAAA, MX...) gets
  NOERROR with no answer; any other name gets NXDOMAIN. Non-queries, multi-question
  packets and names with compression pointers get FORMERR; other opcodes NOTIMP.
* Bounded: one socket, one thread, datagrams read into a 4 KiB buffer, names checked
  against the RFC 1035 limits (63-byte labels, 255-byte names), logging capped.
  ``--max-seconds`` ends the server after that long (0 = run until signalled).

The same file is a small client, because the test machines have no dig/nslookup:

    python3 dns_server.py --query cloud.example --server 203.0.113.10

prints the A addresses (one per line) and exits 0, or prints ``NXDOMAIN`` (or another
rcode name) and exits 3 for NXDOMAIN / 1 for other failures and timeouts.
"""

import argparse
import os
import random
import signal
import socket
import struct
import sys
import time

TYPE_A = 1
CLASS_IN = 1
RCODES = {0: 'NOERROR', 1: 'FORMERR', 2: 'SERVFAIL', 3: 'NXDOMAIN', 4: 'NOTIMP', 5: 'REFUSED'}
MAX_DATAGRAM = 4096
LOG_FIRST = 200          # log the first N queries one per line ...
LOG_EVERY = 10000        # ... then one summary line every N queries


class FormatError(Exception):
    pass


def encode_name(name):
    name = name.rstrip('.')
    out = b''
    for label in name.split('.') if name else []:
        raw = label.encode('ascii')
        if not 0 < len(raw) <= 63:
            raise ValueError('bad DNS label in %r' % name)
        out += bytes([len(raw)]) + raw
    out += b'\x00'
    if len(out) > 255:
        raise ValueError('DNS name too long: %r' % name)
    return out


def decode_name(packet, offset):
    """Decode an uncompressed name at offset; return (name, offset after it)."""
    labels = []
    total = 0
    while True:
        if offset >= len(packet):
            raise FormatError('name runs past the packet')
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise FormatError('compression pointer in question')
        if offset + length > len(packet):
            raise FormatError('label runs past the packet')
        total += length + 1
        if total > 254:
            raise FormatError('name longer than 255 bytes')
        labels.append(packet[offset:offset + length].decode('ascii', 'replace'))
        offset += length
    return '.'.join(labels), offset


def build_response(query, zone, ttl=60):
    """Return (response bytes or None, rcode, qname, qtype) for one query datagram."""
    if len(query) < 12:
        return None, None, None, None          # too short to even answer
    qid, flags, qdcount, _an, _ns, _ar = struct.unpack('!HHHHHH', query[:12])
    if flags & 0x8000:
        return None, None, None, None          # a response: never answer those
    rd = flags & 0x0100
    opcode = (flags >> 11) & 0xF

    def reply(rcode, question=b'', answers=b'', ancount=0):
        rflags = 0x8000 | (opcode << 11) | 0x0400 | rd | rcode    # QR, AA
        return struct.pack('!HHHHHH', qid, rflags, 1 if question else 0,
                           ancount, 0, 0) + question + answers

    if opcode != 0:
        return reply(4), 4, None, None
    if qdcount != 1:
        return reply(1), 1, None, None
    try:
        qname, end = decode_name(query, 12)
        if end + 4 > len(query):
            raise FormatError('truncated question')
    except FormatError:
        return reply(1), 1, None, None
    qtype, qclass = struct.unpack('!HH', query[end:end + 4])
    question = query[12:end + 4]
    key = qname.lower().rstrip('.')
    if qclass != CLASS_IN:
        return reply(5, question), 5, qname, qtype
    if key not in zone:
        return reply(3, question), 3, qname, qtype
    if qtype != TYPE_A:
        return reply(0, question), 0, qname, qtype          # NODATA
    answer = (b'\xc0\x0c' + struct.pack('!HHIH', TYPE_A, CLASS_IN, ttl, 4)
              + socket.inet_aton(zone[key]))
    return reply(0, question, answer, 1), 0, qname, qtype


def parse_records(items):
    zone = {}
    for item in items:
        name, sep, addr = item.partition('=')
        if not sep:
            raise SystemExit('--record wants NAME=IPV4, got %r' % item)
        socket.inet_aton(addr)                 # validates
        encode_name(name)                      # validates
        zone[name.lower().rstrip('.')] = addr
    return zone


def serve(bind, port, zone, ttl=60, max_seconds=0.0, quiet=False):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    deadline = time.monotonic() + max_seconds if max_seconds > 0 else None
    sock.settimeout(1.0)
    print('dns_server: listening on %s:%d, %d names: %s' % (
        bind, port, len(zone), ', '.join('%s=%s' % kv for kv in sorted(zone.items()))),
        flush=True)
    count = 0
    while deadline is None or time.monotonic() < deadline:
        try:
            data, peer = sock.recvfrom(MAX_DATAGRAM)
        except socket.timeout:
            continue
        except OSError:
            break
        resp, rcode, qname, qtype = build_response(data, zone, ttl)
        if resp is None:
            continue
        try:
            sock.sendto(resp, peer)
        except OSError:
            pass
        count += 1
        if not quiet and (count <= LOG_FIRST or count % LOG_EVERY == 0):
            print('dns_server: #%d %s:%d %s type %s -> %s' % (
                count, peer[0], peer[1], qname, qtype, RCODES.get(rcode, rcode)), flush=True)
    sock.close()


def query(server, name, qtype=TYPE_A, port=53, timeout=2.0, retries=1):
    """Ask server for name; return (rcode name, [IPv4 strings]). Raises socket.timeout."""
    qid = random.randrange(0x10000)
    packet = struct.pack('!HHHHHH', qid, 0x0100, 1, 0, 0, 0) + encode_name(name) \
        + struct.pack('!HH', qtype, CLASS_IN)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.settimeout(timeout)
        for attempt in range(retries + 1):
            sock.sendto(packet, (server, port))
            try:
                while True:
                    data, _ = sock.recvfrom(MAX_DATAGRAM)
                    if len(data) >= 12 and struct.unpack('!H', data[:2])[0] == qid:
                        break
            except socket.timeout:
                if attempt == retries:
                    raise
                continue
            break
    finally:
        sock.close()
    _id, flags, qd, an, _ns, _ar = struct.unpack('!HHHHHH', data[:12])
    rcode = flags & 0xF
    offset = 12
    for _ in range(qd):
        _n, offset = decode_name(data, offset)
        offset += 4
    addrs = []
    for _ in range(an):
        if data[offset] & 0xC0 == 0xC0:
            offset += 2
        else:
            _n, offset = decode_name(data, offset)
        rtype, _rclass, _ttl, rdlen = struct.unpack('!HHIH', data[offset:offset + 10])
        offset += 10
        if rtype == TYPE_A and rdlen == 4:
            addrs.append(socket.inet_ntoa(data[offset:offset + 4]))
        offset += rdlen
    return RCODES.get(rcode, str(rcode)), addrs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--bind', default='0.0.0.0')
    ap.add_argument('--port', type=int, default=53)
    ap.add_argument('--record', action='append', default=[], metavar='NAME=IPV4')
    ap.add_argument('--ttl', type=int, default=60)
    ap.add_argument('--max-seconds', type=float, default=0.0)
    ap.add_argument('--quiet', action='store_true')
    ap.add_argument('--query', metavar='NAME', help='client mode: resolve NAME and exit')
    ap.add_argument('--server', default='127.0.0.1', help='client mode: server address')
    ap.add_argument('--timeout', type=float, default=2.0, help='client mode: per try')
    args = ap.parse_args(argv)

    if args.query:
        try:
            rcode, addrs = query(args.server, args.query, port=args.port, timeout=args.timeout)
        except (OSError, FormatError, ValueError, struct.error, IndexError) as exc:
            print('ERROR %s' % (str(exc) or type(exc).__name__))
            return 1
        if rcode != 'NOERROR':
            print(rcode)
            return 3 if rcode == 'NXDOMAIN' else 1
        for addr in addrs:
            print(addr)
        return 0

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    serve(args.bind, args.port, parse_records(args.record), args.ttl,
          args.max_seconds, args.quiet)
    return 0


if __name__ == '__main__':
    sys.exit(main())
