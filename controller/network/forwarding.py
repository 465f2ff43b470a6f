"""Table 1: a learning forwarder that installs one flow per conversation.

Pure logic: it takes a parsed packet-in and returns what to do with the packet
and which `FlowSpec`s to install.  Flow ids come from `FlowRegistry`, which is
also how the stats path maps a cookie back to a (source, destination) device
pair without parsing any match.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from controller.addresses import is_group_mac, is_zero_mac
from controller.openflow import rules
from controller.openflow.packets import PacketInfo
from controller.openflow.rules import FlowKey, FlowSpec

FLOOD = -1


__all__ = ["FLOOD", "is_group_mac", "FlowRegistry", "PacketInfo", "is_reply", "is_bare_syn", "Decision",
           "Forwarder"]


class FlowRegistry:
    """Dense flow ids for FlowKeys, plus numpy arrays of their device indexes.

    Ids are never reused while a key is alive, so a cookie in a stats reply
    always names the conversation it was installed for.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._ids: dict[FlowKey, int] = {}
        self._keys: dict[int, FlowKey] = {}
        self._next = 1
        self.macs: list[str] = []
        self._mac_idx: dict[str, int] = {}
        self.src_dev = np.full(capacity, -1, dtype=np.int64)
        self.dst_dev = np.full(capacity, -1, dtype=np.int64)
        # What each flow id matches, as arrays for vectorised feature extraction:
        # IPv4 destination (0 for L2 flows), IP protocol and destination port (-1 if none).
        self.ip_dst = np.zeros(capacity, dtype=np.uint32)
        self.proto = np.full(capacity, -1, dtype=np.int16)
        self.tp_dst = np.full(capacity, -1, dtype=np.int32)
        self.last_used: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def index_of(self, mac: str) -> int | None:
        """The device index of `mac`, or None if no flow ever named it (nothing is added)."""
        return self._mac_idx.get(mac)

    def mac_index(self, mac: str) -> int:
        idx = self._mac_idx.get(mac)
        if idx is None:
            idx = self._mac_idx[mac] = len(self.macs)
            self.macs.append(mac)
        return idx

    def id_for(self, key: FlowKey, now: float = 0.0) -> int:
        fid = self._ids.get(key)
        if fid is not None:
            self.last_used[fid] = now
            return fid
        fid = self._next
        self._next += 1
        if fid > rules.COOKIE_ID_MASK:
            raise OverflowError("flow id space exhausted")
        if fid >= len(self.src_dev):
            self._grow(max(len(self.src_dev), fid + 1))
        self._ids[key] = fid
        self._keys[fid] = key
        self.last_used[fid] = now
        self.src_dev[fid] = self.mac_index(key.eth_src)
        self.dst_dev[fid] = self.mac_index(key.eth_dst)
        self.ip_dst[fid] = int(ipaddress.IPv4Address(key.ipv4_dst)) if key.ipv4_dst else 0
        self.proto[fid] = -1 if key.ip_proto is None else key.ip_proto
        self.tp_dst[fid] = -1 if key.tp_dst is None else key.tp_dst
        return fid

    def _grow(self, extra: int) -> None:
        def more(a: np.ndarray, fill) -> np.ndarray:
            return np.concatenate([a, np.full(extra, fill, dtype=a.dtype)])
        self.src_dev, self.dst_dev = more(self.src_dev, -1), more(self.dst_dev, -1)
        self.ip_dst, self.proto, self.tp_dst = more(self.ip_dst, 0), more(self.proto, -1), more(self.tp_dst, -1)

    def key_for(self, fid: int) -> FlowKey | None:
        return self._keys.get(fid)

    def forget(self, fids, unused_since: float | None = None) -> int:
        """Drop ids no switch holds any more; keep any used after `unused_since`."""
        n = 0
        for fid in map(int, fids):
            if unused_since is not None and self.last_used.get(fid, 0.0) > unused_since:
                continue
            key = self._keys.pop(fid, None)
            if key is not None:
                del self._ids[key]
                del self.last_used[fid]
                self.src_dev[fid] = self.dst_dev[fid] = -1
                self.ip_dst[fid], self.proto[fid], self.tp_dst[fid] = 0, -1, -1
                n += 1
        return n


def is_reply(pkt: PacketInfo) -> bool:
    """A device answering a peer: TCP SYN-ACK or RST, or UDP from a service port (< 1024)
    to a client port.  Its flow leaves the port out: the peer's ports are the peer's
    choice, so answers to a scan or a flood (a new port each) would otherwise each need
    a packet-in and a flow, and drain the packet-in budget every device shares."""
    if pkt.ip_proto == rules.IPPROTO_TCP and pkt.tcp_flags is not None:
        return bool(pkt.tcp_flags & 0x04) or pkt.tcp_flags & 0x12 == 0x12
    if pkt.ip_proto == rules.IPPROTO_UDP and pkt.tp_src is not None and pkt.tp_dst is not None:
        return pkt.tp_src < 1024 <= pkt.tp_dst
    return False


def is_bare_syn(pkt: PacketInfo) -> bool:
    """A TCP SYN without ACK: a connection being opened (not its answer)."""
    return pkt.tcp_flags is not None and pkt.tcp_flags & 0x12 == 0x02


@dataclass
class Decision:
    out_port: int | None                # a port, FLOOD, or None to drop
    flows: list[FlowSpec] = field(default_factory=list)
    key: FlowKey | None = None


class Forwarder:
    """Per-switch MAC learning; installs a FlowKey flow once both ends are known.

    Bounded: at most `max_macs` MACs per switch.  When a switch's table is full, the MAC
    heard from longest ago makes room if it has been silent `stale_after` seconds; otherwise
    the new MAC is not learned (counted in `full`; frames to it are flooded), so a MAC flood
    cannot push out devices that are talking."""

    MAX_MACS = 8192
    STALE_AFTER = 300.0

    def __init__(self, registry: FlowRegistry, idle_timeout: int = 10, max_macs: int = MAX_MACS,
                 stale_after: float = STALE_AFTER) -> None:
        self.registry = registry
        self.idle_timeout = idle_timeout
        self.max_macs, self.stale_after = max_macs, stale_after
        self.mac_to_port: dict[int, OrderedDict[str, int]] = {}   # least recently heard first
        self._heard: dict[int, dict[str, float]] = {}
        self.full = 0

    def _learn(self, dpid: int, table: OrderedDict, mac: str, port: int, now: float) -> int | None | bool:
        """Learn `mac` on `port`; returns its old port (None if new), or False if the table was full."""
        heard = self._heard.setdefault(dpid, {})
        old = table.get(mac)
        if old is None and len(table) >= self.max_macs:
            oldest = next(iter(table))
            if now - heard.get(oldest, now) < self.stale_after:
                self.full += 1
                return False
            del table[oldest]
            heard.pop(oldest, None)
        table[mac] = port
        table.move_to_end(mac)
        heard[mac] = now
        return old

    def packet_in(self, dpid: int, in_port: int, pkt: PacketInfo, now: float = 0.0) -> Decision:
        table = self.mac_to_port.setdefault(dpid, OrderedDict())
        flows: list[FlowSpec] = []
        if not is_group_mac(pkt.eth_src) and not is_zero_mac(pkt.eth_src):
            old = self._learn(dpid, table, pkt.eth_src, in_port, now)
            if old is not False and old is not None and old != in_port:
                flows.append(rules.delete_forwarding_to(pkt.eth_src))   # it moved: flows toward it blackhole
        if is_group_mac(pkt.eth_dst):
            return Decision(FLOOD, flows)
        out = table.get(pkt.eth_dst)
        if out is None:
            return Decision(FLOOD, flows)
        if out == in_port:
            return Decision(None, flows)
        key = rules.flow_key(pkt.eth_src, pkt.eth_dst, pkt.eth_type, pkt.ipv4_dst,
                             pkt.ip_proto, None if is_reply(pkt) else pkt.tp_dst)
        fid = self.registry.id_for(key, now)
        flows.append(rules.forward(key, fid, out, self.idle_timeout))
        return Decision(out, flows, key)

    def port_down(self, dpid: int, port: int) -> list[FlowSpec]:
        """Forget MACs learned on a port that went down, and their flows."""
        table = self.mac_to_port.get(dpid, {})
        gone = [mac for mac, p in table.items() if p == port]
        for mac in gone:
            del table[mac]
            self._heard.get(dpid, {}).pop(mac, None)
        return [rules.delete_forwarding_to(mac) for mac in gone]

    def switch_leave(self, dpid: int) -> None:
        self.mac_to_port.pop(dpid, None)
        self._heard.pop(dpid, None)
