"""Flow and port statistics as per-poll deltas, keyed by device.

Pure and vectorised: the input is the numpy head array from `ofwire` (or any
array with cookie/packet_count/byte_count/duration_sec/duration_nsec fields),
the output plain dataclasses and arrays.  Handles the three ways counters lie:

* a flow deleted and re-added between polls (counters or duration go back):
  the delta is the new counter, not a negative number;
* a flow that idles out: its flow-removed message carries the final counters,
  so the tail since the last poll is counted once (`removed`);
* a flow that vanishes without a flow-removed (switch restart, lost message):
  reported in `vanished`, its unseen tail is lost and said to be.

A window's length is measured on the switch's clock where it can be (`switch_seconds`):
the counters were read when the switch answered, not when a busy controller got to the
reply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Callable, Iterable, Iterator

import numpy as np

from controller.openflow import rules
from controller.network.forwarding import FlowRegistry


class MultipartOverflow(ValueError):
    """A switch's reply exceeded the assembler's bounds; its parts were dropped."""


class MultipartAssembler:
    """Collects OFPMPF_REPLY_MORE parts per (dpid, xid) until the last one.

    Only replies to requests we sent are collected (`expect` each request's xid first):
    a part with any other xid is dropped and counted in `unsolicited`, so a switch cannot
    grow memory by sending REPLY_MORE parts under ever new xids.  Bounds, per switch:
    `max_expected` outstanding requests (the oldest is forgotten), `max_parts` parts in
    one reply, `max_bytes` bytes pending over all its replies (MultipartOverflow)."""

    MAX_PARTS = 4096
    MAX_BYTES = 32 * 1024 * 1024
    MAX_EXPECTED = 8

    def __init__(self, max_parts: int = MAX_PARTS, max_bytes: int = MAX_BYTES,
                 max_expected: int = MAX_EXPECTED) -> None:
        self._parts: dict[tuple[int, int], list] = {}
        self._expected: dict[int, dict[int, None]] = {}   # dpid -> xids, oldest first
        self._bytes: dict[int, int] = {}
        self._sizes: dict[tuple[int, int], int] = {}
        self.max_parts, self.max_bytes, self.max_expected = max_parts, max_bytes, max_expected
        self.unsolicited = 0     # parts dropped: no request of ours had their xid
        self.overflows = 0       # replies dropped for exceeding max_parts or max_bytes

    def expect(self, dpid: int, xid: int) -> None:
        """A request with this xid was sent to the switch; its reply may come in parts."""
        exp = self._expected.setdefault(dpid, {})
        exp.pop(xid, None)
        exp[xid] = None
        while len(exp) > self.max_expected:
            self._drop(dpid, next(iter(exp)))

    def _drop(self, dpid: int, xid: int) -> None:
        self._expected.get(dpid, {}).pop(xid, None)
        self._parts.pop((dpid, xid), None)
        size = self._sizes.pop((dpid, xid), 0)
        if size:
            self._bytes[dpid] = self._bytes.get(dpid, 0) - size

    @staticmethod
    def _size(body) -> int:
        return len(body) if isinstance(body, (bytes, bytearray, memoryview)) else 64 * len(body)

    def add(self, dpid: int, xid: int, body, more: bool) -> list | None:
        """Returns all parts' bodies in order once the reply is complete; None while parts
        are missing, and for a part nobody asked for (counted in `unsolicited`)."""
        if xid not in self._expected.get(dpid, ()):
            self.unsolicited += 1
            return None
        key = (dpid, xid)
        parts = self._parts.setdefault(key, [])
        parts.append(body)
        size = self._size(body)
        self._sizes[key] = self._sizes.get(key, 0) + size
        self._bytes[dpid] = self._bytes.get(dpid, 0) + size
        if len(parts) > self.max_parts or self._bytes[dpid] > self.max_bytes:
            pending = self._bytes[dpid]
            self._drop(dpid, xid)
            self.overflows += 1
            if len(parts) > self.max_parts:
                raise MultipartOverflow(f"switch {dpid:#x} sent more than {self.max_parts} parts for xid {xid}")
            raise MultipartOverflow(f"switch {dpid:#x} has {pending} bytes of replies pending "
                                    f"(at most {self.max_bytes})")
        if more:
            return None
        self._drop(dpid, xid)
        return parts

    def forget(self, dpid: int) -> None:
        for k in [k for k in self._parts if k[0] == dpid]:
            del self._parts[k]
        for k in [k for k in self._sizes if k[0] == dpid]:
            del self._sizes[k]
        self._expected.pop(dpid, None)
        self._bytes.pop(dpid, None)

    def pending(self, dpid: int) -> int:
        return sum(1 for k in self._parts if k[0] == dpid)

    def pending_bytes(self, dpid: int) -> int:
        return self._bytes.get(dpid, 0)


@dataclass
class FlowDeltas:
    """What changed on one switch since its previous poll (arrays align)."""

    dpid: int
    time: float
    window: float
    cookie: np.ndarray
    packets: np.ndarray
    bytes: np.ndarray
    duration: np.ndarray
    reset: np.ndarray
    vanished: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.cookie)


@dataclass
class DeviceTraffic:
    """One device's traffic over one poll window, counted at its edge switch."""

    mac: str
    window: float
    tx_bytes: int = 0
    tx_packets: int = 0
    rx_bytes: int = 0
    rx_packets: int = 0
    flows: int = 0

    def rates(self) -> dict[str, float]:
        w = self.window if self.window > 0 else 1.0
        return {"tx_bytes_per_s": self.tx_bytes / w, "tx_packets_per_s": self.tx_packets / w,
                "rx_bytes_per_s": self.rx_bytes / w, "rx_packets_per_s": self.rx_packets / w,
                "bytes_per_s": (self.tx_bytes + self.rx_bytes) / w,
                "packets_per_s": (self.tx_packets + self.rx_packets) / w}


_TX_B, _TX_P, _RX_B, _RX_P, _FLOWS = range(5)      # rows of SwitchTraffic.counts


class SwitchTraffic(Mapping):
    """One poll's traffic of every device located at one switch, as arrays.

    Reads as a mapping MAC -> DeviceTraffic, each built when asked for: a poll of a
    big switch touches thousands of devices, and the detector needs none of these
    objects (it reads the flow deltas), only the devices view does, on request."""

    __slots__ = ("macs", "window", "idx", "counts", "_pos")

    def __init__(self, macs: list[str], window: float, idx: np.ndarray, counts: np.ndarray) -> None:
        self.macs = macs            # the registry's list of MACs (it only grows: indexes are stable)
        self.window = window
        self.idx = idx              # registry indexes of the devices, ascending
        self.counts = counts        # (5, len(idx)) int64: tx bytes, tx packets, rx bytes, rx packets, flows
        self._pos: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.idx)

    def __iter__(self) -> Iterator[str]:
        return (self.macs[i] for i in self.idx.tolist())

    def __getitem__(self, mac: str) -> DeviceTraffic:
        if self._pos is None:
            self._pos = {self.macs[i]: j for j, i in enumerate(self.idx.tolist())}
        j = self._pos[mac]
        c = self.counts[:, j].tolist()
        return DeviceTraffic(mac, self.window, *c)


class TrafficTable:
    """Each device's last window of traffic, and the devices view built on it.

    Kept as arrays by registry index (`update` is one numpy assignment per poll, not an
    object per device).  Telemetry owns the numbers; the inventory (names, addresses)
    and the topology (where a device is) come from the network stage below it."""

    def __init__(self, registry: FlowRegistry) -> None:
        self.registry = registry
        self._counts = np.zeros((0, 5), dtype=np.int64)
        self._window = np.zeros(0)
        self._time = np.zeros(0)         # monotonic time of each device's last window (nan: none)
        self._sent = np.zeros(0)         # wall time of its last window in which it sent (nan: none)

    def _grow(self, n: int) -> None:
        have = len(self._time)
        if n <= have:
            return
        cap = max(n, 2 * have, 64)
        extra = cap - have
        self._counts = np.concatenate([self._counts, np.zeros((extra, 5), dtype=np.int64)])
        self._window = np.concatenate([self._window, np.ones(extra)])
        self._time = np.concatenate([self._time, np.full(extra, np.nan)])
        self._sent = np.concatenate([self._sent, np.full(extra, np.nan)])

    def update(self, traffic: SwitchTraffic, now: float, wall: float) -> None:
        """One switch's poll: the last window of every device located there."""
        if not len(traffic):
            return
        self._grow(int(traffic.idx[-1]) + 1)
        self._counts[traffic.idx] = traffic.counts.T
        self._window[traffic.idx] = traffic.window
        self._time[traffic.idx] = now
        self._sent[traffic.idx[traffic.counts[_TX_P] > 0]] = wall

    def fold(self, tail: SwitchTraffic) -> None:
        """Removed flows' last counts belong to their devices' last windows."""
        idx = tail.idx[tail.idx < len(self._time)]
        if len(idx):
            has = ~np.isnan(self._time[idx])
            self._counts[idx[has]] += tail.counts[:, :len(idx)].T[has]

    def _index(self, mac: str) -> int | None:
        """The row of a device that has had a window, else None."""
        i = self.registry.index_of(mac)
        return None if i is None or i >= len(self._time) or math.isnan(self._time[i]) else i

    def _record(self, i: int) -> DeviceTraffic:
        return DeviceTraffic(self.registry.macs[i], float(self._window[i]), *self._counts[i].tolist())

    def get(self, mac: str) -> DeviceTraffic | None:
        i = self._index(mac)
        return None if i is None else self._record(i)

    @property
    def last(self) -> dict[str, DeviceTraffic]:
        """Every device's last window, as objects (for views and tests)."""
        return {self.registry.macs[i]: self._record(i) for i in np.flatnonzero(~np.isnan(self._time)).tolist()}

    def last_sent(self, mac: str) -> float | None:
        """Wall time of the device's last window in which its flows carried what it sent."""
        i = self.registry.index_of(mac)
        if i is None or i >= len(self._sent) or math.isnan(self._sent[i]):
            return None
        return float(self._sent[i])

    def rates(self, mac: str, now: float, stale: float) -> dict[str, float]:
        """Its last window's rates, zeros once it is older than `stale` seconds."""
        i = self._index(mac)
        if i is not None and now - self._time[i] <= stale:
            return self._record(i).rates()
        return DeviceTraffic(mac, 1.0).rates()

    def devices_view(self, inventory, topology, configured, now: float, stale: float) -> list[dict]:
        """GET /api/v1/devices: every device seen, then configured ones never seen.

        `inventory` is a network.inventory.Inventory, `topology` a network.topology.Topology,
        `configured` the config's devices.  `last_seen` is the later of its last packet-in
        and its last window in which its flows carried traffic it sent."""
        rows = []
        seen_macs = set()
        for mac, rec in sorted(inventory.devices.items(), key=lambda kv: kv[1].name):
            seen_macs.add(mac)
            loc = topology.location(mac)
            sent = self.last_sent(mac)
            rows.append({
                "name": rec.name, "mac": mac, "ips": list(rec.ips), "tags": list(rec.tags),
                "configured": rec.configured, "seen": True,
                "dpid": f"{loc.dpid:016x}" if loc else None, "port": loc.port if loc else None,
                "first_seen": rec.first_seen,
                "last_seen": rec.last_seen if sent is None else max(rec.last_seen, sent),
                **{k: round(v, 3) for k, v in self.rates(mac, now, stale).items()},
            })
        seen_names = {r["name"] for r in rows}
        for dev in configured:
            if dev.mac not in seen_macs and dev.name not in seen_names:
                rows.append({"name": dev.name, "mac": dev.mac, "ips": list(dev.ips),
                             "tags": list(dev.tags), "configured": True, "seen": False,
                             "dpid": None, "port": None, "first_seen": None, "last_seen": None,
                             **DeviceTraffic("", 1.0).rates()})
        return rows


@dataclass
class _Snapshot:
    time: float
    cookie: np.ndarray   # sorted, unique
    packets: np.ndarray
    bytes: np.ndarray
    duration: np.ndarray


_NA = np.uint64(0xFFFFFFFFFFFFFFFF)
_MAX_COUNT = 2 ** 63 - 1   # counters are int64 here; above it a counter is all-ones or a lie


def counter(value: int) -> int:
    """An OpenFlow counter as a count: all-ones means "unavailable" (OpenFlow 1.3, 7.2.2 and
    OFPFF_NO_PKT_COUNTS/NO_BYT_COUNTS), and so does anything no real switch can have counted
    (>= 2**63); both are 0, never 2**64-1 or a negative number."""
    v = int(value)
    return v if 0 <= v <= _MAX_COUNT else 0


def _aggregate(entries: np.ndarray):
    """Sum entries sharing a cookie (response rules may share one)."""
    cookie = entries["cookie"].astype(np.uint64)
    # All-ones means "not counted" (OFPFF_NO_PKT_COUNTS/NO_BYT_COUNTS), not 2**64-1.
    # Anything >= 2**63 is no count either: as int64 it would wrap to a negative number.
    pc, bc = entries["packet_count"].astype(np.uint64), entries["byte_count"].astype(np.uint64)
    packets = np.where(pc > np.uint64(_MAX_COUNT), np.uint64(0), pc).astype(np.int64)
    nbytes = np.where(bc > np.uint64(_MAX_COUNT), np.uint64(0), bc).astype(np.int64)
    duration = entries["duration_sec"].astype(np.float64) + entries["duration_nsec"] * 1e-9
    uniq, inv = np.unique(cookie, return_inverse=True)
    if len(uniq) == len(cookie):
        order = np.argsort(cookie, kind="stable")
        return cookie[order], packets[order], nbytes[order], duration[order]
    p = np.bincount(inv, weights=packets, minlength=len(uniq)).astype(np.int64)
    b = np.bincount(inv, weights=nbytes, minlength=len(uniq)).astype(np.int64)
    d = np.full(len(uniq), np.inf)
    np.minimum.at(d, inv, duration)
    return uniq, p, b, d


MAX_SWITCH_SECONDS = 86400.0    # a switch's interval beyond this is no clock reading


def switch_seconds(advance: float, fallback: float) -> float:
    """The time between a switch's two counter reads, on its own clock: how far the
    duration of what it held both times advanced (for flows, the median over them; for
    a port, its own).  The controller's clock tells when the replies were handled: a reply
    that waited in a busy event loop, then one on time, made a 0.07 s window of 1 s of
    counters, and every device read 15 times its rate (seen in CI: two old attackers
    re-alerted).  `fallback` (the controller's interval) when nothing was held twice, or
    the durations did not advance (a switch or a test that reports none)."""
    if math.isfinite(advance) and 1e-3 <= advance <= MAX_SWITCH_SECONDS:
        return advance
    return fallback


class FlowStatsTracker:
    """Turns successive flow-stats replies of each switch into deltas."""

    def __init__(self) -> None:
        self._prev: dict[int, _Snapshot] = {}
        self._removed: dict[int, set[int]] = {}

    def update(self, dpid: int, entries: np.ndarray, now: float) -> FlowDeltas:
        prev = self._prev.get(dpid)
        if prev is not None and not len(entries) and not len(prev.cookie):
            self._removed.pop(dpid, None)      # an empty table twice: nothing to subtract
            return self._empty(dpid, now, max(now - prev.time, 0.0))
        cookie, packets, nbytes, duration = _aggregate(entries)
        removed = self._removed.pop(dpid, set())
        if prev is None:
            # First sight: counters since install are not this window's traffic.
            d_p = np.zeros_like(packets)
            d_b = np.zeros_like(nbytes)
            reset = np.zeros(len(cookie), dtype=bool)
            window = 0.0
            vanished = np.zeros(0, dtype=np.uint64)
        else:
            window = max(now - prev.time, 0.0)
            pcookie, pp, pb, pd = prev.cookie, prev.packets, prev.bytes, prev.duration
            if removed:
                keep = ~np.isin(pcookie, np.fromiter(removed, dtype=np.uint64, count=len(removed)))
                pcookie, pp, pb, pd = pcookie[keep], pp[keep], pb[keep], pd[keep]
            pos = np.searchsorted(pcookie, cookie)
            pos_c = np.minimum(pos, max(len(pcookie) - 1, 0))
            known = (pos < len(pcookie)) & (pcookie[pos_c] == cookie) if len(pcookie) else \
                np.zeros(len(cookie), dtype=bool)
            prev_p = np.where(known, pp[pos_c] if len(pp) else 0, 0)
            prev_b = np.where(known, pb[pos_c] if len(pb) else 0, 0)
            prev_d = np.where(known, pd[pos_c] if len(pd) else 0.0, 0.0)
            reset = known & ((packets < prev_p) | (nbytes < prev_b) | (duration + 1e-6 < prev_d))
            base = known & ~reset
            d_p = packets - np.where(base, prev_p, 0)
            d_b = nbytes - np.where(base, prev_b, 0)
            vanished = np.setdiff1d(pcookie, cookie, assume_unique=True)
            advance = duration[base] - prev_d[base]
            window = switch_seconds(float(np.median(advance)) if len(advance) else math.nan, window)
        self._prev[dpid] = _Snapshot(now, cookie, packets, nbytes, duration)
        return FlowDeltas(dpid, now, window, cookie, d_p, d_b, duration, reset, vanished)

    def _empty(self, dpid: int, now: float, window: float) -> FlowDeltas:
        z = np.zeros(0, dtype=np.int64)
        self._prev[dpid] = _Snapshot(now, np.zeros(0, dtype=np.uint64), z, z.copy(), np.zeros(0))
        return FlowDeltas(dpid, now, window, np.zeros(0, dtype=np.uint64), z.copy(), z.copy(), np.zeros(0),
                          np.zeros(0, dtype=bool))

    def removed(self, dpid: int, cookie: int, packets: int, nbytes: int, duration: float,
                now: float) -> FlowDeltas:
        """A flow-removed message: count its tail since the last poll, once.

        A counter the switch does not have (all-ones) adds nothing: its tail is unknown."""
        prev = self._prev.get(dpid)
        packets_known, bytes_known = counter(packets) == packets, counter(nbytes) == nbytes
        packets, nbytes = counter(packets), counter(nbytes)
        d_p, d_b = packets, nbytes
        window = 0.0
        if prev is not None:
            window = max(now - prev.time, 0.0)
            if cookie not in self._removed.get(dpid, ()):
                i = int(np.searchsorted(prev.cookie, np.uint64(cookie)))
                if i < len(prev.cookie) and int(prev.cookie[i]) == cookie \
                        and packets >= prev.packets[i] and nbytes >= prev.bytes[i]:
                    d_p, d_b = packets - int(prev.packets[i]), nbytes - int(prev.bytes[i])
            else:
                d_p = d_b = 0   # already counted by an earlier removal
            self._removed.setdefault(dpid, set()).add(cookie)
        if not packets_known:
            d_p = 0
        if not bytes_known:
            d_b = 0
        arr = lambda v, t: np.asarray([v], dtype=t)  # noqa: E731
        return FlowDeltas(dpid, now, window, arr(cookie, np.uint64), arr(d_p, np.int64),
                          arr(d_b, np.int64), arr(duration, np.float64), np.zeros(1, dtype=bool))

    def forget(self, dpid: int) -> None:
        self._prev.pop(dpid, None)
        self._removed.pop(dpid, None)

    def active_cookies(self, dpid: int) -> np.ndarray:
        prev = self._prev.get(dpid)
        return prev.cookie if prev is not None else np.zeros(0, dtype=np.uint64)


def edge_array(registry: FlowRegistry, edge_dpid: Callable[[str], int | None]) -> np.ndarray:
    """Edge dpid of every registry device (-1: not located), for `by_device`.

    O(devices); callers cache it until the topology or the registry changes.
    """
    return np.array([-1 if (e := edge_dpid(m)) is None else e for m in registry.macs],
                    dtype=np.int64)


def by_device(deltas: FlowDeltas, registry: FlowRegistry, edges: np.ndarray) -> SwitchTraffic:
    """Attribute forwarding-flow deltas to devices, each at its own edge switch.

    A conversation crosses several switches; counting it only where the source
    (for tx) or the destination (for rx) is plugged in counts it exactly once.
    Every device located at the switch is in the result, with or without traffic.
    """
    c = deltas.cookie
    ours = (c & np.uint64(rules.COOKIE_KIND_MASK)) == np.uint64(rules.cookie(rules.Kind.FORWARD))
    fid = (c[ours] & np.uint64(rules.COOKIE_ID_MASK)).astype(np.int64)
    fid = np.where(fid < len(registry.src_dev), fid, 0)
    src = registry.src_dev[fid]
    dst = registry.dst_dev[fid]
    pk, by = deltas.packets[ours], deltas.bytes[ours]
    n = len(registry.macs)
    if n == 0:
        return SwitchTraffic(registry.macs, deltas.window, np.zeros(0, dtype=np.int64),
                             np.zeros((5, 0), dtype=np.int64))
    here = np.zeros(n, dtype=bool)
    here[:len(edges)] = edges[:n] == deltas.dpid
    tx_mask = (src >= 0) & here[np.maximum(src, 0)]
    rx_mask = (dst >= 0) & here[np.maximum(dst, 0)]
    idx = np.flatnonzero(here)
    counts = np.empty((5, len(idx)), dtype=np.int64)
    counts[_TX_B] = np.bincount(src[tx_mask], weights=by[tx_mask], minlength=n)[idx]
    counts[_TX_P] = np.bincount(src[tx_mask], weights=pk[tx_mask], minlength=n)[idx]
    counts[_RX_B] = np.bincount(dst[rx_mask], weights=by[rx_mask], minlength=n)[idx]
    counts[_RX_P] = np.bincount(dst[rx_mask], weights=pk[rx_mask], minlength=n)[idx]
    counts[_FLOWS] = np.bincount(src[tx_mask], minlength=n)[idx]
    return SwitchTraffic(registry.macs, deltas.window, idx, counts)


@dataclass
class PortDelta:
    dpid: int
    port: int
    window: float
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    reset: bool = False


class PortStatsTracker:
    """Port counters as deltas; a switch restart resets them, which is not negative traffic."""

    def __init__(self) -> None:
        self._prev: dict[tuple[int, int], tuple[float, tuple[int, int, int, int], float]] = {}

    def update(self, dpid: int, ports: Iterable[tuple],
               now: float) -> list[PortDelta]:
        """ports: (port_no, rx_bytes, tx_bytes, rx_packets, tx_packets[, duration]), the
        duration (s since the port was added, the switch's clock) giving the interval
        when it advanced (`switch_seconds`)."""
        out = []
        for port, *counters in ports:
            duration = float(counters.pop()) if len(counters) > 4 else math.nan
            cur = tuple(counter(x) for x in counters)   # all-ones: unavailable, 0
            prev = self._prev.get((dpid, port))
            self._prev[(dpid, port)] = (now, cur, duration)
            if prev is None:
                continue
            t0, old, before = prev
            reset = any(c < o for c, o in zip(cur, old)) or duration < before
            d = cur if reset else tuple(c - o for c, o in zip(cur, old))
            window = max(now - t0, 0.0)
            if not reset:
                window = switch_seconds(duration - before, window)
            out.append(PortDelta(dpid, port, window, *d, reset=reset))
        return out

    def forget(self, dpid: int) -> None:
        for k in [k for k in self._prev if k[0] == dpid]:
            del self._prev[k]
