"""Frame parsing for packet-ins, and signed LLDP probes for link discovery.

Plain struct work: a packet-in needs a handful of header fields, and building
a full packet object per frame costs more than the rest of the handler.

LLDP probes carry an HMAC of (dpid, port) under a per-process secret in an
organisation-specific TLV.  A host that replays or forges LLDP cannot turn its
own port into a "trunk" and so hide from device location.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from controller.openflow.rules import ETH_TYPE_ARP, ETH_TYPE_IP, ETH_TYPE_LLDP, IPPROTO_TCP, IPPROTO_UDP

LLDP_DST = "01:80:c2:00:00:0e"
_OUI = b"\x00\x10\xc6"          # our org-specific TLV marker
_SUBTYPE = 1
_MAC = struct.Struct("!6s6sH")


@dataclass(frozen=True)
class PacketInfo:
    """The fields of a packet-in the core cares about (the app parses the frame)."""

    eth_src: str
    eth_dst: str
    eth_type: int
    ipv4_src: str | None = None
    ipv4_dst: str | None = None
    ip_proto: int | None = None
    tp_src: int | None = None
    tp_dst: int | None = None
    arp_spa: str | None = None
    arp_tpa: str | None = None
    arp_op: int | None = None
    tcp_flags: int | None = None


def mac_str(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def ip_str(b: bytes) -> str:
    return ".".join(str(x) for x in b)


def ip_int(ip: str | None) -> int:
    """Dotted quad to int (0 for None), the form the registry and features use."""
    if not ip:
        return 0
    a, b, c, d = (int(x) for x in ip.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def _ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def fix_l4_checksum(frame: bytes) -> bytes:
    """The frame with its IPv4 TCP or UDP checksum recomputed, for packet-out.

    Open vSwitch's userspace datapath with TSO (as these labs run it) hands
    packet-ins over with the checksum a NIC would have filled in still partial.
    Sent back as is, the first packet of every conversation (the one that went
    through the controller) is dropped by the receiver: a 1 s TCP retransmit,
    a lost DNS query.  A correct checksum comes out unchanged, so this is
    harmless with switches that deliver correct ones.  Fragments, truncated
    frames and UDP without a checksum are left alone.
    """
    off, eth_type = 14, frame[12:14]
    if eth_type == b"\x81\x00":
        off, eth_type = 18, frame[16:18]
    if eth_type != b"\x08\x00" or len(frame) < off + 20:
        return frame
    ihl = (frame[off] & 0x0F) * 4
    proto = frame[off + 9]
    total, = struct.unpack_from("!H", frame, off + 2)
    frag, = struct.unpack_from("!H", frame, off + 6)
    l4, end = off + ihl, off + total
    at = l4 + (16 if proto == IPPROTO_TCP else 6)
    if proto not in (IPPROTO_TCP, IPPROTO_UDP) or frag & 0x3FFF or ihl < 20 or end > len(frame) \
            or at + 2 > end:
        return frame
    if proto == IPPROTO_UDP and frame[at:at + 2] == b"\0\0":
        return frame
    pseudo = frame[off + 12:off + 20] + bytes((0, proto)) + struct.pack("!H", end - l4)
    c = ~_ones_sum(pseudo + frame[l4:at] + b"\0\0" + frame[at + 2:end]) & 0xFFFF
    if proto == IPPROTO_UDP and c == 0:
        c = 0xFFFF
    return frame[:at] + struct.pack("!H", c) + frame[at + 2:]


def _l3(data: bytes) -> tuple[int, int]:
    """EtherType and offset of the payload of an Ethernet frame of at least 14 bytes,
    past one optional 802.1Q tag."""
    (eth_type,) = struct.unpack_from("!H", data, 12)
    if eth_type == 0x8100 and len(data) >= 18:
        return struct.unpack_from("!H", data, 16)[0], 18
    return eth_type, 14


def parse_frame(data: bytes) -> PacketInfo | None:
    """Ethernet (one optional 802.1Q tag), ARP, IPv4, TCP/UDP ports. None if too short."""
    if len(data) < 14:
        return None
    dst, src, _ = _MAC.unpack_from(data, 0)
    eth_type, off = _l3(data)
    eth_dst, eth_src = mac_str(dst), mac_str(src)
    if eth_type == ETH_TYPE_ARP and len(data) >= off + 28:
        (op,) = struct.unpack_from("!H", data, off + 6)
        spa = ip_str(data[off + 14:off + 18])
        tpa = ip_str(data[off + 24:off + 28])
        return PacketInfo(eth_src, eth_dst, eth_type, arp_spa=spa, arp_tpa=tpa, arp_op=op)
    if eth_type == ETH_TYPE_IP and len(data) >= off + 20:
        ihl = (data[off] & 0x0F) * 4
        proto = data[off + 9]
        src_ip = ip_str(data[off + 12:off + 16])
        dst_ip = ip_str(data[off + 16:off + 20])
        frag = struct.unpack_from("!H", data, off + 6)[0] & 0x1FFF
        sport = dport = flags = None
        l4 = off + ihl
        if proto in (IPPROTO_TCP, IPPROTO_UDP) and frag == 0 and ihl >= 20 and len(data) >= l4 + 4:
            sport, dport = struct.unpack_from("!HH", data, l4)
            if proto == IPPROTO_TCP and len(data) >= l4 + 14:
                flags = data[l4 + 13]
        return PacketInfo(eth_src, eth_dst, eth_type, ipv4_src=src_ip, ipv4_dst=dst_ip,
                          ip_proto=proto, tp_src=sport, tp_dst=dport, tcp_flags=flags)
    return PacketInfo(eth_src, eth_dst, eth_type)


_ETH_TYPE_IPV6 = 0x86DD


def wire_length(data: bytes) -> int:
    """The frame's length on the wire: len(data), or more when a capture's snaplen cut it
    (`tcpdump -s 96`) and its IPv4 header (an IPv6 one: its payload length) says how long
    it was.  A switch counts the whole frame; a replay must too."""
    n = len(data)
    if n < 14:
        return n
    eth_type, off = _l3(data)
    if eth_type == ETH_TYPE_IP and n >= off + 4:
        return max(n, off + struct.unpack_from("!H", data, off + 2)[0])
    if eth_type == _ETH_TYPE_IPV6 and n >= off + 6:
        return max(n, off + 40 + struct.unpack_from("!H", data, off + 4)[0])
    return n


class LldpSigner:
    """Builds and verifies iotguard's LLDP probes."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or os.urandom(16)

    def _mac(self, dpid: int, port: int) -> bytes:
        return hmac.new(self.secret, struct.pack("!QI", dpid, port), hashlib.sha256).digest()[:16]

    def build(self, dpid: int, port: int, port_mac: str = "02:00:00:00:00:01") -> bytes:
        def tlv(t: int, value: bytes) -> bytes:
            return struct.pack("!H", (t << 9) | len(value)) + value
        chassis = tlv(1, b"\x07" + f"dpid:{dpid:016x}".encode())
        port_id = tlv(2, b"\x02" + struct.pack("!I", port))
        ttl = tlv(3, struct.pack("!H", 120))
        sig = tlv(127, _OUI + bytes([_SUBTYPE]) + struct.pack("!QI", dpid, port) + self._mac(dpid, port))
        end = tlv(0, b"")
        return (mac_bytes(LLDP_DST) + mac_bytes(port_mac) + struct.pack("!H", ETH_TYPE_LLDP)
                + chassis + port_id + ttl + sig + end)

    def verify(self, data: bytes) -> tuple[int, int] | None:
        """(dpid, port) the probe was sent from, or None if it is not ours/authentic."""
        if len(data) < 14 or struct.unpack_from("!H", data, 12)[0] != ETH_TYPE_LLDP:
            return None
        off = 14
        while off + 2 <= len(data):
            (hdr,) = struct.unpack_from("!H", data, off)
            t, ln = hdr >> 9, hdr & 0x1FF
            off += 2
            value = data[off:off + ln]
            off += ln
            if t == 0:
                break
            if t == 127 and len(value) == 4 + 12 + 16 and value[:3] == _OUI and value[3] == _SUBTYPE:
                dpid, port = struct.unpack_from("!QI", value, 4)
                if hmac.compare_digest(value[16:], self._mac(dpid, port)):
                    return dpid, port
                return None
        return None
