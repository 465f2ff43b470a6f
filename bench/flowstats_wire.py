"""OpenFlow 1.3 flow-stats replies as a switch sends them, built with struct.

Shared by `tests/unit/test_ofwire.py` and `bench/stats_bench.py`.  Encoding is
written from the OpenFlow 1.3.5 specification, independently of os-ken, so the
tests can check os-ken's parser, iotguard's `ofwire` and this builder against
one another on the same bytes.

    ofp_header         version u8, type u8, length u16, xid u32           (8)
    ofp_multipart_reply type u16, flags u16, pad[4]                         (8)
    ofp_flow_stats     length u16, table_id u8, pad, duration_sec u32,
                       duration_nsec u32, priority u16, idle_timeout u16,
                       hard_timeout u16, flags u16, pad[4], cookie u64,
                       packet_count u64, byte_count u64                    (48)
                       ofp_match: type u16 (OXM=1), length u16 (unpadded),
                       OXM TLVs, zero pad to 8
                       instructions: apply-actions(type 4, len, pad[4]) +
                       output action (type 0, len 16, port u32, max_len u16, pad[6])
"""

from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

OFP_VERSION = 0x04
OFPT_MULTIPART_REPLY = 19
OFPMP_FLOW = 1
OFPMPF_REPLY_MORE = 1
OFPMT_OXM = 1
OFPXMC_OPENFLOW_BASIC = 0x8000
OFPIT_APPLY_ACTIONS = 4
OFPAT_OUTPUT = 0
OFPCML_NO_BUFFER = 0xFFFF
MAX_MESSAGE = 0xFFFF                 # ofp_header.length is 16 bits

HEADER = struct.Struct("!BBHI")
MP_REPLY = struct.Struct("!HH4x")
MP_HEADER_SIZE = HEADER.size + MP_REPLY.size   # 16
FLOW_STATS_HEAD = struct.Struct("!HBxIIHHHH4xQQQ")  # 48
MATCH_HEADER = struct.Struct("!HH")
INSTRUCTION_ACTIONS = struct.Struct("!HH4x")
ACTION_OUTPUT = struct.Struct("!HHIH6x")

# OXM basic fields used by table 1 (field number, value length).
OXM_FIELDS: dict[str, tuple[int, int]] = {
    "in_port": (0, 4),
    "eth_dst": (3, 6),
    "eth_src": (4, 6),
    "eth_type": (5, 2),
    "ip_proto": (10, 1),
    "ipv4_src": (11, 4),
    "ipv4_dst": (12, 4),
    "tcp_src": (13, 2),
    "tcp_dst": (14, 2),
    "udp_src": (15, 2),
    "udp_dst": (16, 2),
}


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def _value(name: str, value: Any, size: int) -> bytes:
    if name.startswith("eth_") and name != "eth_type":
        raw = bytes.fromhex(str(value).replace(":", ""))
    elif name.startswith("ipv4_"):
        raw = ipaddress.IPv4Address(value).packed
    else:
        raw = int(value).to_bytes(size, "big")
    if len(raw) != size:
        raise ValueError(f"{name}={value!r} is not {size} bytes")
    return raw


def oxm(name: str, value: Any) -> bytes:
    """One OXM TLV of the OpenFlow basic class, without mask."""
    fieldno, size = OXM_FIELDS[name]
    header = (OFPXMC_OPENFLOW_BASIC << 16) | (fieldno << 9) | size
    return struct.pack("!I", header) + _value(name, value, size)


def match_bytes(fields: Iterable[tuple[str, Any]]) -> bytes:
    """An ofp_match (OXM type) with its zero padding to 8 bytes."""
    tlvs = b"".join(oxm(n, v) for n, v in fields)
    length = MATCH_HEADER.size + len(tlvs)
    return MATCH_HEADER.pack(OFPMT_OXM, length) + tlvs + bytes(_pad8(length) - length)


def apply_output(port: int, max_len: int = 0) -> bytes:
    """An apply-actions instruction holding a single output action (24 bytes)."""
    action = ACTION_OUTPUT.pack(OFPAT_OUTPUT, ACTION_OUTPUT.size, port, max_len)
    return INSTRUCTION_ACTIONS.pack(OFPIT_APPLY_ACTIONS, INSTRUCTION_ACTIONS.size + len(action)) + action


@dataclass(frozen=True)
class FlowEntry:
    """One ofp_flow_stats entry, as values (what a parser must give back)."""

    cookie: int
    packet_count: int = 0
    byte_count: int = 0
    duration_sec: int = 0
    duration_nsec: int = 0
    priority: int = 200
    idle_timeout: int = 10
    hard_timeout: int = 0
    flags: int = 1                      # OFPFF_SEND_FLOW_REM, as iotguard installs
    table_id: int = 1
    match: tuple[tuple[str, Any], ...] = ()
    out_port: int = 1

    def encode(self) -> bytes:
        tail = match_bytes(self.match) + apply_output(self.out_port)
        length = FLOW_STATS_HEAD.size + len(tail)
        head = FLOW_STATS_HEAD.pack(length, self.table_id, self.duration_sec, self.duration_nsec,
                                    self.priority, self.idle_timeout, self.hard_timeout, self.flags,
                                    self.cookie, self.packet_count, self.byte_count)
        return head + tail


def multipart_reply(body: bytes, xid: int = 1, flags: int = 0, mp_type: int = OFPMP_FLOW) -> bytes:
    """Wrap an already-encoded body in ofp_header + ofp_multipart_reply."""
    length = MP_HEADER_SIZE + len(body)
    if length > MAX_MESSAGE:
        raise ValueError(f"message of {length} bytes exceeds {MAX_MESSAGE}")
    return HEADER.pack(OFP_VERSION, OFPT_MULTIPART_REPLY, length, xid) + MP_REPLY.pack(mp_type, flags) + body


def split_replies(encoded: Sequence[bytes], xid: int = 1, max_len: int = MAX_MESSAGE) -> list[bytes]:
    """Pack encoded entries into as few messages of at most `max_len` bytes as a
    switch would: whole entries only, OFPMPF_REPLY_MORE on all but the last."""
    groups: list[list[bytes]] = [[]]
    size = MP_HEADER_SIZE
    for e in encoded:
        if size + len(e) > max_len and groups[-1]:
            groups.append([])
            size = MP_HEADER_SIZE
        groups[-1].append(e)
        size += len(e)
    return [multipart_reply(b"".join(g), xid, OFPMPF_REPLY_MORE if i < len(groups) - 1 else 0)
            for i, g in enumerate(groups)]


def message_body(message: bytes) -> bytes:
    """The entries of one encoded multipart reply (everything after its 16-byte header)."""
    return message[MP_HEADER_SIZE:HEADER.unpack_from(message)[2]]


# ---------------------------------------------------------------- a realistic table

# (share, kind): TCP and UDP conversations (128-byte entries), ICMP (120), L2/ARP (104).
TRAFFIC_MIX = ((0.55, "tcp"), (0.25, "udp"), (0.10, "icmp"), (0.10, "l2"))


def device_mac(i: int) -> str:
    return "02:00:%02x:%02x:%02x:%02x" % ((i >> 24) & 0xFF, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF)


@dataclass
class SyntheticTable:
    """A forwarding table of `n` reactive flows between `devices` devices.

    `registry` is a `controller.network.forwarding.FlowRegistry` that knows every flow;
    `entries` are poll-1 values; `advance()` gives a later poll's values."""

    registry: Any
    macs: list[str]
    entries: list[FlowEntry]
    rng: random.Random = field(repr=False, default_factory=random.Random)

    def advance(self, seconds: int = 1) -> list[FlowEntry]:
        out = []
        for e in self.entries:
            dp = self.rng.randrange(0, 200)
            out.append(FlowEntry(
                e.cookie, e.packet_count + dp, e.byte_count + dp * self.rng.randrange(60, 1500),
                e.duration_sec + seconds, (e.duration_nsec + 1000) % 1_000_000_000, e.priority,
                e.idle_timeout, e.hard_timeout, e.flags, e.table_id, e.match, e.out_port))
        return out


def synthetic_table(n: int = 10_000, devices: int = 200, seed: int = 1) -> SyntheticTable:
    """Flows as iotguard's forwarder installs them: a FlowKey per conversation,
    cookie(Kind.FORWARD, registry id), priority 200 (IP) / 100 (L2), idle 10 s."""
    from controller.openflow import rules
    from controller.network.forwarding import FlowRegistry

    rng = random.Random(seed)
    registry = FlowRegistry()
    macs = [device_mac(i + 1) for i in range(devices)]
    for m in macs:
        registry.mac_index(m)
    entries: list[FlowEntry] = []
    seen: set = set()
    kinds = [k for _, k in TRAFFIC_MIX]
    weights = [w for w, _ in TRAFFIC_MIX]
    while len(entries) < n:
        s, d = rng.sample(range(devices), 2)
        kind = rng.choices(kinds, weights)[0]
        if kind == "l2":
            key = rules.flow_key(macs[s], macs[d], rules.ETH_TYPE_ARP)
        else:
            proto = {"tcp": rules.IPPROTO_TCP, "udp": rules.IPPROTO_UDP,
                     "icmp": rules.IPPROTO_ICMP}[kind]
            port = rng.choice((80, 443, 1883, 8883, 5683, 53, 123)) if rng.random() < 0.5 \
                else rng.randrange(1024, 65536)
            key = rules.flow_key(macs[s], macs[d], rules.ETH_TYPE_IP,
                                 f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                                 proto, port)
        if key in seen:
            continue
        seen.add(key)
        fid = registry.id_for(key)
        packets = rng.randrange(1, 100_000)
        entries.append(FlowEntry(
            cookie=rules.cookie(rules.Kind.FORWARD, fid), packet_count=packets,
            byte_count=packets * rng.randrange(60, 1500), duration_sec=rng.randrange(0, 3600),
            duration_nsec=rng.randrange(1_000_000_000),
            priority=rules.PRIO_FWD_IP if key.is_ip else rules.PRIO_FWD_L2,
            idle_timeout=10, flags=1, table_id=rules.TABLE_FORWARD, match=key.match(),
            out_port=rng.randrange(1, 49)))
    return SyntheticTable(registry, macs, entries, rng)


# ---------------------------------------------------------------- many polls of one table


def message_spans(sizes: Sequence[int], max_len: int = MAX_MESSAGE) -> list[tuple[int, int]]:
    """Entry index ranges [start, end) of the messages `split_replies` would build."""
    spans: list[tuple[int, int]] = []
    start, size = 0, MP_HEADER_SIZE
    for i, n in enumerate(sizes):
        if size + n > max_len and i > start:
            spans.append((start, i))
            start, size = i, MP_HEADER_SIZE
        size += n
    if len(sizes):
        spans.append((start, len(sizes)))
    return spans


class WireTable:
    """A table's entries encoded once; each poll rewrites only the counters with numpy.

    For benchmarks that need many successive polls of a big table: `body(...)`
    gives the same bytes as b"".join(FlowEntry.encode()) with the new counters,
    `messages(body, xid)` the same messages as `split_replies`.
    """

    # byte offset and big-endian type of the fields a poll changes, in ofp_flow_stats
    _FIELDS = {"duration_sec": (4, ">u4"), "duration_nsec": (8, ">u4"),
               "packet_count": (32, ">u8"), "byte_count": (40, ">u8")}

    def __init__(self, entries: Sequence[FlowEntry], max_len: int = MAX_MESSAGE) -> None:
        import numpy as np

        encoded = [e.encode() for e in entries]
        self.n = len(encoded)
        self.sizes = np.fromiter(map(len, encoded), dtype=np.int64, count=self.n)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.template = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        self.spans = message_spans(self.sizes.tolist(), max_len)
        self._cols = {k: self.offsets[:, None] + off + np.arange(np.dtype(t).itemsize)
                      for k, (off, t) in self._FIELDS.items()}

    def body(self, packet_count, byte_count, duration_sec, duration_nsec=None) -> bytes:
        import numpy as np

        buf = self.template.copy()
        values = {"packet_count": packet_count, "byte_count": byte_count, "duration_sec": duration_sec,
                  "duration_nsec": duration_nsec}
        for k, v in values.items():
            if v is None:
                continue
            t = np.dtype(self._FIELDS[k][1])
            buf[self._cols[k]] = np.asarray(v).astype(t).view(np.uint8).reshape(self.n, t.itemsize)
        return buf.tobytes()

    def messages(self, body: bytes, xid: int = 1) -> list[bytes]:
        out = []
        last = len(self.spans) - 1
        for i, (s, e) in enumerate(self.spans):
            lo, hi = int(self.offsets[s]), int(self.offsets[e - 1] + self.sizes[e - 1])
            out.append(multipart_reply(body[lo:hi], xid, OFPMPF_REPLY_MORE if i < last else 0))
        return out
