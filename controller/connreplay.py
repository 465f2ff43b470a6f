"""`iotguard replay --conn-log FILE`: the real controller core over a Zeek conn.log.

A conn.log has one record per connection (who, to what service, when, how long,
packets and bytes each way, how it ended), not packets.  Each record becomes what
the switch emulated by controller/replayswitch.py would have seen of it:

* the originator's first packet as a frame at `ts`: a bare TCP SYN of at most 60 IP
  bytes (`SYN_IP_BYTES`; an ACK when `conn_state` says no SYN was seen: OTH, SHR,
  RSTRH), a UDP datagram, or an ICMP message of the record's type (an echo request for
  ping); other first packets are the record's average size;
* the responder's first packet right after it, if `conn_state` says it answered:
  none for S0, SH and RSTOS0; a RST for REJ; a SYN-ACK for an established TCP
  connection (an ACK for OTH); a UDP datagram or an ICMP echo reply when it sent
  packets;
* for a TCP connection that was answered (a SYN-ACK), the originator's handshake ACK
  `HANDSHAKE` seconds after it, and its SYN a full `SYN_IP_BYTES` when the record's
  bytes allow: a real SYN carries options that the ACK does not, and the ACK follows the
  SYN-ACK at once, whatever the connection's duration.  Spreading them with the rest
  made a long or payload-free answered connection look unanswered (its next packet
  late, or SYN-sized) to the failed-connection judge (`telemetry/outcomes.py`);
* the rest of each side's packets (`orig_pkts`, `resp_pkts`) and bytes
  (`orig_ip_bytes`, `resp_ip_bytes`, plus a 14-byte Ethernet header each) spread
  evenly over `duration`, in at most one batch per `poll_interval`, counted on the
  flow that matches them (`Replay.packets`): a flood costs one batch per window,
  not one frame per packet.  A batch that finds no flow (it idled out) is a
  table-miss first, as on a switch.

Records are replayed in `ts` order (Zeek writes a record when its connection ends),
all interleaved on one clock.  A log has no MAC addresses, so each address gets a
stable synthetic one (`mac_for`): an IPv4 address inside `internal_subnets` (or
link-local, or 0.0.0.0) is 02:00 followed by its four bytes (192.168.1.195 is
02:00:c0:a8:01:c3), an on-link IPv6 address 02:06 and four bytes of its SHA-256;
every other address is behind one gateway (`GATEWAY_MAC`), as on a real LAN, and
group addresses map to their group MACs.  The gateway announces itself with one
ARP at the log's start (a router is known to a switch long before); hosts are
located from the first frame they send; ARP is not otherwise emulated (a conn.log
has none).  Devices are named by their address and the gateway is tagged
`gateway` (so excluded, as in a deployment); an inventory (`--devices`) names and
tags devices by `ip:`.

Not emulated: packet timing inside a connection beyond the even spread,
retransmissions and TCP flags after the first packet, fragments, and protocols
other than TCP, UDP and ICMP (skipped, with a warning).

Formats, plain or gzip: Zeek's tab-separated log (its `#separator`/`#fields`
header, `-` unset, several headers in one file allowed), its JSON lines, and CSV
with a header row of the same field names (empty for unset), as shipped under
tests/data/captures/iot23.  A malformed log is a CaptureError naming file and line.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import heapq
import ipaddress
import json
import math
import socket
import zlib
from dataclasses import dataclass
from typing import Iterator

from controller.config import Config, Device
from controller.replayswitch import CaptureError, Replay, Result

__all__ = ["Addresses", "ConnRecord", "GATEWAY_MAC", "announcement", "mac_for", "read_conn_log", "replay_conn_log",
           "synthetic_inventory"]

GATEWAY_MAC = "06:00:00:00:00:01"
REQUIRED = ("ts", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto")
PROTOS = {"tcp": 6, "udp": 17, "icmp": 1}
ETH_HEADER = 14
# conn_state (Zeek's base/protocols/conn/main.zeek): which first packets each one saw.
NO_ANSWER = frozenset({"S0", "SH", "RSTOS0"})          # the responder sent nothing
NO_SYN = frozenset({"OTH", "SHR", "RSTRH"})             # the originator's SYN was not seen
NO_SYNACK = frozenset({"OTH"})                          # nor a SYN-ACK: midstream
SYN, RST_ACK, SYN_ACK, ACK = 0x02, 0x14, 0x12, 0x10
SYN_IP_BYTES = 60           # a SYN with the usual options (MSS, SACK, timestamps, window scale)
MIN_TCP_IP_BYTES = 40       # an IPv4 header and a TCP header without options
HANDSHAKE = 0.001           # s from the SYN to the originator's ACK of an answered connection


@dataclass(frozen=True, slots=True)
class ConnRecord:
    """One connection as the log gives it (counts None when the log leaves them unset)."""

    line: int
    ts: float
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    proto: str
    duration: float
    conn_state: str
    orig_pkts: int | None
    orig_ip_bytes: int | None
    resp_pkts: int | None
    resp_ip_bytes: int | None


# ------------------------------------------------------------------ reading the log

def _open(path: str):
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
    except OSError as e:
        raise CaptureError(f"{path}: cannot read the log: {e.strerror or e}") from None
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, "rt", encoding="utf-8", errors="replace", newline="")


def _rows(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, field -> text or None when unset) of every data line."""
    fmt = fields = None
    sep, unset, empty = "\t", "-", "(empty)"
    fh = _open(path)
    try:
        for no, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if fmt is None:
                fmt = "json" if line.lstrip().startswith("{") else "zeek" if line.startswith("#") else "csv"
                if fmt == "csv":
                    fields = next(csv.reader([line]))
                    _check_fields(path, no, fields)
                    continue
            if fmt == "json":
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise CaptureError(f"{path}:{no}: not a JSON object ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise CaptureError(f"{path}:{no}: not a JSON object")
                _check_fields(path, no, obj)
                yield no, {k: None if v is None else str(v) for k, v in obj.items()}
                continue
            if fmt == "zeek" and line.startswith("#"):
                if line.startswith("#separator"):
                    raw = line[len("#separator"):].strip()
                    sep = raw.encode("ascii", "replace").decode("unicode_escape") or "\t"
                    continue
                key, _, value = line.partition(sep)
                if key == "#fields":
                    fields = value.split(sep)
                    _check_fields(path, no, fields)
                elif key == "#unset_field":
                    unset = value
                elif key == "#empty_field":
                    empty = value
                elif key == "#path" and value != "conn":
                    raise CaptureError(f"{path}:{no}: a Zeek {value!r} log, not a conn log")
                continue
            if fields is None:
                raise CaptureError(f"{path}:{no}: a data line before the '#fields' header; "
                                   "not a Zeek conn log")
            values = next(csv.reader([line], delimiter=sep, quoting=csv.QUOTE_NONE)) if fmt == "zeek" \
                else next(csv.reader([line]))
            if len(values) != len(fields):
                raise CaptureError(f"{path}:{no}: {len(values)} fields, the header names {len(fields)}")
            if fmt == "zeek":
                yield no, {f: None if v == unset else "" if v == empty else v for f, v in zip(fields, values)}
            else:
                yield no, {f: v if v != "" else None for f, v in zip(fields, values)}
    except (OSError, EOFError, zlib.error, UnicodeError) as e:
        raise CaptureError(f"{path}: cannot read the log: {e}") from None
    finally:
        fh.close()


def _check_fields(path: str, no: int, fields) -> None:
    missing = [f for f in REQUIRED if f not in fields]
    if missing:
        raise CaptureError(f"{path}:{no}: no {', '.join(repr(f) for f in missing)} field; a Zeek conn log "
                           f"names at least {', '.join(REQUIRED)}")


def _field(path: str, no: int, row: dict, name: str, parse, default=None, required: bool = False):
    v = row.get(name)
    if v is None or v == "":
        if required:
            raise CaptureError(f"{path}:{no}: {name} is unset")
        return default
    try:
        return parse(v)
    except ValueError as e:
        raise CaptureError(f"{path}:{no}: {name} {v[:40]!r}: {e}") from None


def _time(v: str) -> float:
    t = float(v)
    if not math.isfinite(t) or t < 0:
        raise ValueError("not a time")
    return t


def _count(v: str) -> int:
    f = float(v)
    if not math.isfinite(f) or f < 0 or not f.is_integer():
        raise ValueError("not a count")
    return int(f)


def _port(v: str) -> int:
    p = _count(v)
    if p > 65535:
        raise ValueError("not a port")
    return p


def _addr(v: str) -> str:
    return str(ipaddress.ip_address(v.strip()))


def read_conn_log(path: str, warnings: list[str] | None = None) -> list[ConnRecord]:
    """The log's TCP, UDP and ICMP records, sorted by start time (file order on ties).

    CaptureError names the file and line of the first malformed record; records of
    other protocols are skipped with a note in `warnings`."""
    out: list[ConnRecord] = []
    skipped: dict[str, int] = {}
    for no, row in _rows(path):
        proto = _field(path, no, row, "proto", str.lower, required=True)
        if proto not in PROTOS:
            skipped[proto] = skipped.get(proto, 0) + 1
            continue
        out.append(ConnRecord(
            line=no, ts=_field(path, no, row, "ts", _time, required=True),
            orig_h=_field(path, no, row, "id.orig_h", _addr, required=True),
            orig_p=_field(path, no, row, "id.orig_p", _port, required=True),
            resp_h=_field(path, no, row, "id.resp_h", _addr, required=True),
            resp_p=_field(path, no, row, "id.resp_p", _port, required=True),
            proto=proto, duration=_field(path, no, row, "duration", _time, 0.0),
            conn_state=(row.get("conn_state") or "").strip().upper(),
            orig_pkts=_field(path, no, row, "orig_pkts", _count),
            orig_ip_bytes=_field(path, no, row, "orig_ip_bytes", _count),
            resp_pkts=_field(path, no, row, "resp_pkts", _count),
            resp_ip_bytes=_field(path, no, row, "resp_ip_bytes", _count)))
    if skipped and warnings is not None:
        warnings.append(f"{path}: skipped {sum(skipped.values())} records of protocols other than TCP, UDP "
                        f"and ICMP ({', '.join(f'{k} x{n}' for k, n in sorted(skipped.items()))})")
    out.sort(key=lambda r: (r.ts, r.line))
    return out


# ------------------------------------------------------------------ addresses

class Addresses:
    """The synthetic MAC of every address (see the module docstring), and who is on-link."""

    def __init__(self, internal_subnets) -> None:
        self._nets = tuple(ipaddress.ip_network(s) for s in internal_subnets)
        self._macs: dict[str, str] = {}

    def on_link(self, ip: str) -> bool:
        a = ipaddress.ip_address(ip)
        return a.is_link_local or a.is_unspecified or any(a in n for n in self._nets if n.version == a.version)

    def mac(self, ip: str) -> str:
        m = self._macs.get(ip)
        if m is None:
            m = self._macs[ip] = mac_for(ip, self.on_link(ip))
        return m


def mac_for(ip: str, on_link: bool) -> str:
    """A stable MAC for `ip`: its group MAC, its own synthetic one, or the gateway's."""
    a = ipaddress.ip_address(ip)
    if a.version == 4:
        if ip == "255.255.255.255":
            return "ff:ff:ff:ff:ff:ff"
        if a.is_multicast:
            low = int(a) & 0x7FFFFF
            return "01:00:5e:" + ":".join(f"{(low >> s) & 255:02x}" for s in (16, 8, 0))
        if on_link:
            return "02:00:" + ":".join(f"{b:02x}" for b in a.packed)
        return GATEWAY_MAC
    if a.is_multicast:
        return "33:33:" + ":".join(f"{b:02x}" for b in a.packed[-4:])
    if on_link:
        return "02:06:" + ":".join(f"{b:02x}" for b in hashlib.sha256(a.packed).digest()[:4])
    return GATEWAY_MAC


def with_inventory(config: Config, records: list[ConnRecord], addresses: Addresses,
                   warnings: list[str]) -> Config:
    """The config's inventory plus an entry per on-link address that sends (named by the
    address, or as the inventory names that `ip:`) and the gateway, tagged `gateway`."""
    senders: dict[str, None] = {}
    for r in records:
        senders[r.orig_h] = None
        if r.resp_pkts or r.conn_state not in NO_ANSWER:
            senders[r.resp_h] = None
    return synthetic_inventory(config, senders, addresses, warnings, "a conn log")


def synthetic_inventory(config: Config, senders, addresses: Addresses, warnings: list[str],
                        what: str) -> Config:
    """`with_inventory` for any source without MACs (`what` names it in the warning):
    `senders` are the addresses that sent something, in order."""
    import dataclasses
    user = list(config.devices)
    added: list[Device] = []
    macs = {d.mac for d in user if d.mac}
    synthetic = set()
    for ip in senders:
        if not addresses.on_link(ip):
            continue
        mac = addresses.mac(ip)
        if int(mac[:2], 16) & 1:
            continue                   # a group address sends nothing
        synthetic.add(mac)
        if mac in macs:
            continue
        known = config.device_by_ip(ip)
        added.append(Device(known.name, mac, (ip,), known.tags) if known is not None and known.mac is None
                     else Device(ip, mac, (ip,), ()))
    if GATEWAY_MAC not in macs:
        added.append(Device("gateway", GATEWAY_MAC, (), ("gateway",)))
    strays = [d.name for d in user if d.mac and not d.ips and d.mac not in synthetic and d.mac != GATEWAY_MAC]
    if strays:
        warnings.append(f"--devices: {', '.join(strays[:5])}{' ...' if len(strays) > 5 else ''} only name a MAC; "
                        f"{what} has none (each address gets a synthetic MAC): give them 'ip:'")
    return dataclasses.replace(config, devices=tuple(user + added))


# ------------------------------------------------------------------ frames

def _frame(src_mac: str, dst_mac: str, src: str, dst: str, proto: str, sport: int, dport: int,
           flags: int, ip_size: int) -> bytes:
    """One Ethernet frame of about `ip_size` IP bytes (never less than its headers)."""
    import dpkt
    v6 = ":" in src
    head = 40 if v6 else 20
    if proto == "tcp":
        l4 = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, off=5)
        l4.data = b"\0" * max(ip_size - head - 20, 0)
        p = 6
    elif proto == "udp":
        data = b"\0" * max(ip_size - head - 8, 0)
        l4 = dpkt.udp.UDP(sport=sport, dport=dport, data=data, ulen=8 + len(data))
        p = 17
    else:                               # ICMP: Zeek logs its type as the source port, code as the destination
        l4 = dpkt.icmp.ICMP(type=sport & 255, code=dport & 255, data=b"\0" * max(ip_size - head - 4, 0))
        p = 58 if v6 else 1
    if v6:
        body = bytes(l4)
        ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                          nxt=p, hlim=64, plen=len(body), data=body)
        eth_type = dpkt.ethernet.ETH_TYPE_IP6
    else:
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=p, ttl=64, data=l4)
        ip.len = len(bytes(ip))
        eth_type = dpkt.ethernet.ETH_TYPE_IP
    return bytes(dpkt.ethernet.Ethernet(src=mac_bytes(src_mac), dst=mac_bytes(dst_mac), type=eth_type, data=ip))


def announcement(mac: str) -> bytes:
    """An ARP announcement from `mac` (no address: the log does not say the gateway's)."""
    import dpkt
    arp = dpkt.arp.ARP(sha=mac_bytes(mac), spa=b"\0" * 4, tha=b"\0" * 6, tpa=b"\0" * 4, op=dpkt.arp.ARP_OP_REPLY)
    return bytes(dpkt.ethernet.Ethernet(src=mac_bytes(mac), dst=b"\xff" * 6, type=dpkt.ethernet.ETH_TYPE_ARP,
                                        data=arp))


def mac_bytes(m: str) -> bytes:
    """The six bytes of a MAC written aa:bb:cc:dd:ee:ff."""
    return bytes.fromhex(m.replace(":", ""))


Event = tuple[float, bytes, int, int]     # time, a frame like the packets, packets, bytes


def _spread(t: float, duration: float, n: int, nbytes: int, interval: float) -> list[tuple[float, int, int]]:
    """`n` packets (`nbytes`) evenly over (t, t + duration], at most one batch per interval."""
    if n <= 0:
        return []
    m = min(n, max(1, math.ceil(duration / interval))) if duration > 0 else 1
    return [(t + duration * j / m, n * j // m - n * (j - 1) // m, nbytes * j // m - nbytes * (j - 1) // m)
            for j in range(1, m + 1)]


def events(r: ConnRecord, addresses: Addresses, interval: float) -> list[Event]:
    """What the switch sees of one connection, in time order."""
    o_mac, r_mac = addresses.mac(r.orig_h), addresses.mac(r.resp_h)
    state = r.conn_state
    o_n, r_n = r.orig_pkts, r.resp_pkts
    if o_n is None:                     # counts unset: one packet, and one answer if it answered
        o_n = 1
    if r_n is None:
        r_n = 0 if state in NO_ANSWER else 1
    if state == "REJ":
        r_n = max(r_n, 1)               # REJ: a RST was seen
    if state in NO_ANSWER:
        r_n = 0
    if o_n == 0 and r_n == 0:
        o_n = 1                         # a record means a packet was seen (IoT-23 has such rows)
    o_bytes = (r.orig_ip_bytes or 0) + ETH_HEADER * o_n
    r_bytes = (r.resp_ip_bytes or 0) + ETH_HEADER * r_n

    def avg(total: int, n: int) -> int:
        return (total - ETH_HEADER * n) // n if n else 0

    tcp = r.proto == "tcp"
    out: list[Event] = []
    later: list[tuple[float, int, bytes, int, int]] = []
    if o_n:
        first = SYN if state not in NO_SYN else ACK
        size = avg(o_bytes, o_n)
        # Answered: the SYN-ACK came, so the originator's next packet is its handshake ACK.
        shake = tcp and first == SYN and o_n > 1 and r_n > 0 and state != "REJ" and state not in NO_SYNACK
        if shake and (r.orig_ip_bytes or 0) >= SYN_IP_BYTES + MIN_TCP_IP_BYTES * (o_n - 1):
            size = SYN_IP_BYTES             # a SYN's options make it bigger than the ACK that follows
        elif tcp and first == SYN and o_n > 1:
            size = min(size, SYN_IP_BYTES)  # a SYN is SYN-sized; its answer's ACK and the data carry the rest
        f = _frame(o_mac, r_mac, r.orig_h, r.resp_h, r.proto, r.orig_p, r.resp_p, first, size)
        out.append((r.ts, f, 1, len(f)))
        if o_n > 1:
            bulk = f if not tcp or state in ("S0", "REJ") else \
                _frame(o_mac, r_mac, r.orig_h, r.resp_h, r.proto, r.orig_p, r.resp_p, ACK, avg(o_bytes, o_n))
            rest_n, rest_b = o_n - 1, o_bytes - len(f)
            if shake:                       # the handshake ACK at once; the rest over the duration
                ack = rest_b // rest_n
                later.append((r.ts + HANDSHAKE, 0, bulk, 1, ack))
                rest_n, rest_b = rest_n - 1, rest_b - ack
            later += [(t, 0, bulk, n, b) for t, n, b in _spread(r.ts, r.duration, rest_n, rest_b, interval)]
    if r_n:
        flags = RST_ACK if state == "REJ" else ACK if state in NO_SYNACK else SYN_ACK
        icmp_type = 0 if r.orig_p == 8 else 129 if r.orig_p == 128 else r.orig_p    # echo -> echo reply
        sport, dport = (icmp_type, r.resp_p) if r.proto == "icmp" else (r.resp_p, r.orig_p)
        f = _frame(r_mac, o_mac, r.resp_h, r.orig_h, r.proto, sport, dport, flags, avg(r_bytes, r_n))
        out.append((r.ts, f, 1, len(f)))
        if r_n > 1:
            bulk = f if not tcp or state == "REJ" else \
                _frame(r_mac, o_mac, r.resp_h, r.orig_h, r.proto, sport, dport, ACK, avg(r_bytes, r_n))
            later += [(t, 1, bulk, n, b) for t, n, b in _spread(r.ts, r.duration, r_n - 1, r_bytes - len(f),
                                                                interval)]
    later.sort(key=lambda e: (e[0], e[1]))
    return out + [(t, f, n, b) for t, _, f, n, b in later]


# ------------------------------------------------------------------ the replay

def replay_conn_log(path: str, config: Config, records: list[ConnRecord] | None = None,
                    baselines: str | None = None, save_baselines: str | None = None) -> Result:
    """Run a fresh Core over the conn log at `path` (or over `records`, named `path`),
    starting from the state file `baselines` if given, saving to `save_baselines`."""
    warnings: list[str] = []
    if records is None:
        records = read_conn_log(path, warnings)
    if not records:
        raise CaptureError(warnings[0] if warnings else f"{path}: the log holds no TCP, UDP or ICMP connection")
    addresses = Addresses(config.internal_subnets)
    config = with_inventory(config, records, addresses, warnings)
    interval = config.poll_interval
    replay = Replay(config, records[0].ts)
    if baselines is not None:
        replay.load_baselines(baselines)
    if any(addresses.mac(ip) == GATEWAY_MAC for r in records for ip in (r.orig_h, r.resp_h)):
        replay.frame(records[0].ts, announcement(GATEWAY_MAC))
    heap: list[tuple[float, int, int, list[Event]]] = []     # next event time, record, index, its events
    i = 0
    while i < len(records) or heap:
        if i < len(records) and (not heap or records[i].ts <= heap[0][0]):
            evs = events(records[i], addresses, interval)
            heapq.heappush(heap, (evs[0][0], i, 0, evs))
            i += 1
            continue
        _, rec, k, evs = heapq.heappop(heap)
        t, frame, n, nbytes = evs[k]
        replay.packets(t, frame, n, nbytes)
        if k + 1 < len(evs):
            heapq.heappush(heap, (evs[k + 1][0], rec, k + 1, evs))
    return replay.finish(path, len(records), warnings, unit="connections", save=save_baselines)
