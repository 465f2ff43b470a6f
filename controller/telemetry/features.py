"""One window of traffic as one feature vector per device.

Inputs of a window: every switch's flow-stats deltas (`add`, one call per poll
reply or flow-removed tail) and the conversations the forwarder installed from
packet-ins (`new_flow`, once per install).  `close` turns them into
`WindowFeatures`: a matrix with one row per active device and one column per
name in `FEATURES`.  Definitions, units and blind spots: docs/features.md.

Pure and vectorised: a poll reply costs a few numpy passes over its entries,
whatever their number; only per-device and per-install work is Python.

What a flow id means (source, IPv4 destination, protocol, port) is copied from
the registry when the flow is seen, so a conversation the registry retires
before the window closes is still counted.  Flow ids are never reused, so the
copy cannot go stale.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from controller.openflow import rules
from controller.network.forwarding import FlowRegistry
from controller.telemetry.stats import FlowDeltas

FEATURES: tuple[str, ...] = (
    "tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "new_flows",
    "distinct_dst_ips", "lateral_peers", "distinct_dst_ports", "new_dst_share",
    "tcp_share", "udp_share", "icmp_share", "other_share", "mean_pkt_size", "dns_queries")

INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURES)}

UNITS: dict[str, str] = {
    "tx_bytes": "bytes/s",
    "rx_bytes": "bytes/s",
    "tx_packets": "packets/s",
    "rx_packets": "packets/s",
    "new_flows": "flows/window",
    "distinct_dst_ips": "hosts/window",
    "lateral_peers": "hosts/window",
    "distinct_dst_ports": "ports/window",
    "new_dst_share": "fraction",
    "tcp_share": "fraction",
    "udp_share": "fraction",
    "icmp_share": "fraction",
    "other_share": "fraction",
    "mean_pkt_size": "bytes",
    "dns_queries": "packets/window",
}

# Derived from a window for playbook conditions, not scored: bytes received per byte sent.
# A flood is about 1 (a SYN and its RST) or near 0 (UDP into the void); a download's
# acknowledgements are small packets at a high rate too, but come with many times their
# bytes back.
RX_PER_TX = "rx_per_tx_bytes"


def rx_per_tx(tx_bytes: float, rx_bytes: float) -> float:
    """`RX_PER_TX` of one window (a window that sent nothing counts as one byte sent)."""
    return float(rx_bytes) / max(float(tx_bytes), 1.0)


# A drop is as unusual as a rise for the protocol mix and the packet size.  Not
# for new_dst_share: talking only to known destinations is the normal state.
TWO_SIDED: tuple[int, ...] = tuple(INDEX[n] for n in (
    "tcp_share", "udp_share", "icmp_share", "other_share", "mean_pkt_size"))

_FORWARD = np.uint64(rules.cookie(rules.Kind.FORWARD))
_KIND_MASK = np.uint64(rules.COOKIE_KIND_MASK)
_ID_MASK = np.uint64(rules.COOKIE_ID_MASK)
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_COMPACT_ROWS = 1 << 18         # pending tx rows before they are summed per flow id
_MAX_NEW_FLOWS = 1 << 20        # distinct installs remembered per window
_MAX_PACKET_INS = 1 << 20       # packet-in frames counted per window


# ---------------------------------------------------------------- output


@dataclass(eq=False)
class WindowFeatures:
    """The features of every device active in one window (row order of X = macs)."""

    time: float
    window: float
    macs: list[str]
    X: np.ndarray
    top_port: np.ndarray
    top_port_hosts: np.ndarray
    _rows: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = {m: i for i, m in enumerate(self.macs)}

    def row(self, mac: str) -> np.ndarray | None:
        i = self._rows.get(mac)
        return None if i is None else self.X[i]

    def index(self, mac: str) -> int | None:
        """The row of `mac` in X (None: not active in this window)."""
        return self._rows.get(mac)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {mac: dict(zip(FEATURES, values)) for mac, values in zip(self.macs, self.X.tolist())}


# ---------------------------------------------------------------- known destinations


MAX_FAMILIAR = 128     # destinations per device befriended after learning (oldest forgotten first)
MAX_CANDIDATES = 64    # ... and waiting to be (not saved: after a restart they wait again)
FAMILIAR_AFTER = 60.0  # s between two normal windows to a host before it is familiar


class KnownDestinations:
    """Per-device set of destination IPv4s seen while learning (bounded per device, e.g. 512;
    beyond that the device counts as 'talks to many' and new_dst_share is 0)."""

    def __init__(self, max_per_device: int = 512) -> None:
        if isinstance(max_per_device, bool) or not isinstance(max_per_device, int) \
                or max_per_device < 1:
            raise ValueError(f"max_per_device must be a positive int, not {max_per_device!r}")
        self.max_per_device = max_per_device
        self._sets: dict[str, set[int]] = {}
        self._many: set[str] = set()        # saturated: every destination counts as known
        # Met after learning, in windows judged normal: known to new_dst_share, not to
        # attribution (`unknown`, `learned_by`).  Oldest first, at most max_familiar each.
        self._familiar: dict[str, dict[int, None]] = {}
        self._candidates: dict[str, dict[int, float]] = {}   # not yet familiar: first normal sighting
        self._version = 0
        self._built: tuple[int, int, int] | None = None
        self._keys = np.zeros(0, dtype=np.uint64)
        self._learned = np.zeros(0, dtype=bool)
        self._saturated = np.zeros(0, dtype=bool)

    def replace_with(self, other: "KnownDestinations") -> None:
        """Take `other`'s contents in place: the extractor holds a reference to this object."""
        self.max_per_device = other.max_per_device
        self._sets, self._many, self._familiar = other._sets, other._many, other._familiar
        self._candidates = other._candidates
        self._version += 1
        self._built = None

    def __len__(self) -> int:
        return len(self._sets) + len(self._many)

    def __contains__(self, mac: object) -> bool:
        return mac in self._sets or mac in self._many

    def saturated(self, mac: str) -> bool:
        return mac in self._many

    def learn(self, mac: str, ips: np.ndarray | Iterable[int]) -> None:
        """Add destinations (IPv4 as unsigned ints; 0, the L2 marker, is skipped)."""
        if mac in self._many:
            return
        a = np.asarray(ips) if isinstance(ips, np.ndarray) else np.fromiter(ips, dtype=np.int64)
        if a.size and (a.dtype.kind not in "iu" or a.min() < 0 or a.max() > 0xFFFFFFFF):
            raise ValueError(f"learn({mac!r}): IPv4 addresses must be integers in 0..2**32-1")
        new = set(np.unique(a[a != 0]).tolist()) if a.size else set()
        cur = self._sets.get(mac)
        if cur is None:     # learning started for this device, even with no IPv4 peer yet
            cur = self._sets[mac] = set()
            self._version += 1
        before = len(cur)
        cur |= new
        if len(cur) > self.max_per_device:
            del self._sets[mac]
            self._many.add(mac)
            self._version += 1
        elif len(cur) != before:
            self._version += 1

    def befriend(self, mac: str, ips: np.ndarray | Iterable[int], now: float) -> None:
        """After learning: `ips` are the destinations of a window judged normal.  One met in
        such windows FAMILIAR_AFTER seconds apart, and in no window judged otherwise
        between (`suspect`), is no longer new to `mac`'s new_dst_share.

        Why: while learning, every window's destinations are learned, so the feature in the
        warm-up measures one window's share to hosts met in it; with a frozen set it would
        instead grow with every host met since, until a device that rotates its cloud
        servers reads "80% to hosts it never talked to" for good.  Why not at once: an
        upload to a drop zone starts with a quiet window (the handshake) and only then
        sends its megabytes, which must still read as going to a new host.  Bounded: the
        oldest of MAX_FAMILIAR (and of MAX_CANDIDATES still waiting) go first.
        """
        cur = self._sets.get(mac)
        if cur is None:
            return
        fam = self._familiar.setdefault(mac, {})
        cand = self._candidates.setdefault(mac, {})
        added = False
        for ip in (int(v) for v in ips):
            if not ip or ip in cur or ip in fam:
                continue
            first = cand.get(ip)
            if first is None:
                cand[ip] = float(now)
                if len(cand) > MAX_CANDIDATES:
                    del cand[next(iter(cand))]
            elif now - first >= FAMILIAR_AFTER:
                del cand[ip]
                fam[ip] = None
                added = True
                if len(fam) > MAX_FAMILIAR:
                    del fam[next(iter(fam))]
        if added:
            self._version += 1

    def suspect(self, mac: str, ips: np.ndarray | Iterable[int]) -> None:
        """`ips` are the destinations of a window not judged normal: those still waiting to
        become familiar wait again from their next normal window."""
        cand = self._candidates.get(mac)
        if cand:
            for ip in (int(v) for v in ips):
                cand.pop(ip, None)

    def unknown(self, mac: str, ips: Iterable[int]) -> list[int]:
        """Those of `ips` the device never talked to while learning (none once saturated)."""
        if mac in self._many:
            return []
        known = self._sets.get(mac, set())
        return [int(ip) for ip in ips if int(ip) not in known]

    def learned_by(self, ip: int) -> int:
        """How many devices talked to `ip` while learning (saturated devices not counted)."""
        return sum(1 for ips in self._sets.values() if ip in ips)

    def _state(self, registry: FlowRegistry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted keys mac_idx << 32 | ip, learned per mac index, saturated per mac index)."""
        tag = (self._version, id(registry), len(registry.macs))
        if tag != self._built:
            n = len(registry.macs)
            index = {m: i for i, m in enumerate(registry.macs)}
            learned = np.zeros(n, dtype=bool)
            saturated = np.zeros(n, dtype=bool)
            parts = []
            for mac, ips in self._sets.items():
                i = index.get(mac)
                if i is not None:
                    learned[i] = True
                    parts.append(np.fromiter(ips, dtype=np.uint64, count=len(ips))
                                 | np.uint64(i << 32))
                    fam = self._familiar.get(mac)
                    if fam:
                        parts.append(np.fromiter(fam, dtype=np.uint64, count=len(fam)) | np.uint64(i << 32))
            for mac in self._many:
                i = index.get(mac)
                if i is not None:
                    learned[i] = saturated[i] = True
            self._keys = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)
            self._learned, self._saturated = learned, saturated
            self._built = tag
        return self._keys, self._learned, self._saturated

    def contains(self, mac_idx: np.ndarray, ips: np.ndarray, registry: FlowRegistry) -> np.ndarray:
        """Per entry: is ips[k] a known destination of device registry.macs[mac_idx[k]]?

        A saturated device knows every destination; an index of -1 knows none.
        """
        keys, _, saturated = self._state(registry)
        mac_idx = np.asarray(mac_idx, dtype=np.int64)
        ok = (mac_idx >= 0) & (mac_idx < len(saturated))
        m = np.where(ok, mac_idx, 0)
        probe = (m.astype(np.uint64) << np.uint64(32)) | np.asarray(ips).astype(np.uint64)
        found = np.zeros(len(probe), dtype=bool)
        if len(keys):
            pos = np.minimum(np.searchsorted(keys, probe), len(keys) - 1)
            found = keys[pos] == probe
        if len(saturated):
            found |= saturated[m]
        return found & ok

    def to_dict(self) -> dict[str, list[str]]:
        """{mac: sorted dotted IPv4s}; a saturated device is ["*"]."""
        out = {mac: [str(ipaddress.IPv4Address(ip)) for ip in sorted(ips)]
               for mac, ips in self._sets.items()}
        out.update({mac: ["*"] for mac in self._many})
        return dict(sorted(out.items()))

    def familiar_to_dict(self) -> dict[str, list[str]]:
        """{mac: dotted IPv4s befriended after learning, oldest first}."""
        return {mac: [str(ipaddress.IPv4Address(ip)) for ip in fam]
                for mac, fam in sorted(self._familiar.items()) if fam}

    @classmethod
    def from_dict(cls, d: Mapping[str, list[str]], max_per_device: int = 512,
                  familiar: Mapping[str, list[str]] | None = None) -> KnownDestinations:
        """Strict inverse of to_dict (and of familiar_to_dict for `familiar`); a device with
        more than max_per_device becomes saturated."""
        if not isinstance(d, Mapping):
            raise ValueError(f"known destinations must be a mapping, not {type(d).__name__}")
        known = cls(max_per_device)
        if familiar is not None:
            if not isinstance(familiar, Mapping):
                raise ValueError(f"familiar destinations must be a mapping, not {type(familiar).__name__}")
            for mac, ips in familiar.items():
                where = f"familiar destinations[{str(mac)[:40]}]"
                if mac not in d or d[mac] == ["*"]:
                    raise ValueError(f"{where}: not a device with known destinations")
                if not isinstance(ips, list) or len(ips) > MAX_FAMILIAR:
                    raise ValueError(f"{where}: must be a list of at most {MAX_FAMILIAR} addresses")
                known._familiar[mac] = dict.fromkeys(_dotted_list(ips, where))
        for mac, ips in d.items():
            if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
                raise ValueError(f"known destinations: {str(mac)[:40]!r} is not a lower-case MAC")
            if not isinstance(ips, list):
                raise ValueError(f"known destinations[{mac}]: must be a list, not {type(ips).__name__}")
            if ips == ["*"]:
                known._many.add(mac)
                continue
            vals = set(_dotted_list(ips, f"known destinations[{mac}]"))
            fam = known._familiar.get(mac, {})
            if not vals.isdisjoint(fam):
                raise ValueError(f"familiar destinations[{mac}]: {ipaddress.IPv4Address(min(vals & set(fam)))} "
                                 f"is known from learning already")
            if len(vals) > max_per_device:
                known._many.add(mac)
            else:
                known._sets[mac] = vals
        known._version += 1
        return known


def _dotted_list(ips: list, where: str) -> list[int]:
    """Distinct canonical dotted IPv4 destinations (not 0.0.0.0), as integers, in order."""
    vals: dict[int, None] = {}
    for k, s in enumerate(ips):
        at = f"{where}[{k}]"
        if not isinstance(s, str):
            raise ValueError(f"{at}: must be a string, not {type(s).__name__}")
        try:
            ip = ipaddress.IPv4Address(s)
        except ValueError:
            raise ValueError(f"{at}: {s[:40]!r} is not an IPv4 address") from None
        if str(ip) != s or int(ip) == 0:
            raise ValueError(f"{at}: {s[:40]!r} is not a canonical destination address")
        if int(ip) in vals:
            raise ValueError(f"{at}: duplicate address {s}")
        vals[int(ip)] = None
    return list(vals)


# ---------------------------------------------------------------- extractor


def _parse_subnets(subnets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    nets, masks = [], []
    if isinstance(subnets, str):
        raise ValueError("internal_subnets must be a sequence of CIDR strings, not one string")
    for s in subnets:
        net = ipaddress.ip_network(s, strict=True)
        if net.version == 4:   # features are IPv4; IPv6 subnets cannot match
            nets.append(int(net.network_address))
            masks.append(int(net.netmask))
    return np.asarray(nets, dtype=np.uint32), np.asarray(masks, dtype=np.uint32)


_TX_COLS = ("src", "fid", "pk", "by", "ip", "proto", "port")
_TX_TYPES = (np.int64, np.int64, np.int64, np.int64, np.uint32, np.int16, np.int32)


def _empty_tx() -> dict[str, np.ndarray]:
    return {c: np.zeros(0, dtype=t) for c, t in zip(_TX_COLS, _TX_TYPES)}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return _empty_tx()
    if len(parts) == 1:
        return parts[0]
    return {c: np.concatenate([p[c] for p in parts]) for c in _TX_COLS}


def _per_fid(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One row per flow id, sorted by id, packets and bytes summed (the other
    columns are fixed per id)."""
    fid, first, inv = np.unique(t["fid"], return_index=True, return_inverse=True)
    out = {c: t[c][first] for c in ("src", "ip", "proto", "port")}
    out["fid"] = fid
    if len(fid) == len(t["fid"]):
        out["pk"], out["by"] = t["pk"][first], t["by"][first]
    else:
        out["pk"] = np.bincount(inv, weights=t["pk"], minlength=len(fid)).astype(np.int64)
        out["by"] = np.bincount(inv, weights=t["by"], minlength=len(fid)).astype(np.int64)
    return out


def _distinct(a: np.ndarray) -> np.ndarray:
    """np.unique(a) by sorting: numpy 2.x's hashing unique is 30x slower on these 64-bit
    (owner << 32 | value) keys (75 ms against 2 ms for 100k of them)."""
    s = np.sort(a)
    keep = np.ones(len(s), dtype=bool)
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def _count_distinct(owner: np.ndarray, value: np.ndarray, n: int) -> np.ndarray:
    """Per owner in 0..n-1: how many distinct values (value fits in 32 bits)."""
    if not len(owner):
        return np.zeros(n, dtype=np.int64)
    pairs = _distinct((owner.astype(np.uint64) << np.uint64(32)) | value.astype(np.uint64))
    return np.bincount((pairs >> np.uint64(32)).astype(np.int64), minlength=n)


class FeatureExtractor:
    """Accumulates one window (polls and installs) and closes it into WindowFeatures."""

    def __init__(self, registry: FlowRegistry, internal_subnets: Sequence[str],
                 known: KnownDestinations | None = None) -> None:
        self.registry = registry
        self.known = known
        self._nets, self._masks = _parse_subnets(internal_subnets)
        self.dropped_new_flows = 0      # installs past _MAX_NEW_FLOWS in the last window
        self.dropped_packet_ins = 0     # frames past _MAX_PACKET_INS in the last window
        self._dropped_pin = 0
        self._last_pairs = np.zeros(0, dtype=np.uint64)     # (mac index << 32 | ip), sorted
        self._last_rows: dict[str, int] = {}
        self._reset()

    def _reset(self) -> None:
        self._tx: list[dict[str, np.ndarray]] = []
        self._tx_rows = 0
        self._compact_at = _COMPACT_ROWS
        self._rx_b = np.zeros(0, dtype=np.int64)
        self._rx_p = np.zeros(0, dtype=np.int64)
        # Per device, the seconds its edge switch's polls in this window cover: its counters
        # come from that switch alone, so its rates divide by that switch's clock.
        self._span = np.zeros(0, dtype=np.float64)
        self._new: dict[int, tuple[int, int, int, int]] = {}
        self._dropped = 0
        # Frames that reached the controller (packet-in, then packet-out): no flow counter
        # sees them.  One row each: (source index or -1, destination index or -1, bytes,
        # IPv4 destination, protocol, destination port or -1).
        self._pin: list[tuple[int, int, int, int, int, int]] = []

    # -------------------------------------------------------- inputs
    def new_flow(self, fid: int) -> None:
        """The forwarder installed conversation `fid` (from a packet-in) in this window."""
        fid = int(fid)
        if fid in self._new:
            return
        reg = self.registry
        if not 0 < fid < len(reg.src_dev) or reg.src_dev[fid] < 0:
            return
        if len(self._new) >= _MAX_NEW_FLOWS:
            self._dropped += 1
            return
        self._new[fid] = (int(reg.src_dev[fid]), int(reg.ip_dst[fid]), int(reg.proto[fid]),
                          int(reg.tp_dst[fid]))

    def packet_in(self, src: str | None, dst: str | None, nbytes: int, ip: int = 0,
                  proto: int = -1, port: int = -1) -> None:
        """A frame the controller forwarded itself (packet-in, then packet-out).

        `src` is given when this is the source's edge switch (the frame counts in its tx),
        `dst` when it is the destination's (rx); None otherwise, as the edge rule says.
        `ip` is the IPv4 destination (0: none), `proto` the IP protocol (-1: not IP),
        `port` the TCP/UDP destination port, -1 for none and for an answer
        (`forwarding.is_reply`), as in the flow it travels beside.  Cost: one tuple.
        """
        if (src is None and dst is None) or nbytes <= 0:
            return
        if len(self._pin) >= _MAX_PACKET_INS:
            self._dropped_pin += 1
            return
        reg = self.registry
        s = reg.mac_index(src) if src is not None else -1
        d = reg.mac_index(dst) if dst is not None else -1
        self._pin.append((s, d, int(nbytes), int(ip), int(proto), int(port)))

    def add(self, deltas: FlowDeltas, edges: np.ndarray, tail: bool = False) -> None:
        """One switch's poll deltas (or, with `tail`, a flow-removed tail) in this window.

        tx counts where edges[source] is this switch, rx where edges[destination]
        is, so a conversation crossing several switches counts once.  A poll's
        interval (deltas.window, on the switch's clock) is added to the span of every
        device plugged into this switch; a tail lies inside an interval already counted.
        """
        reg = self.registry
        n = len(reg.macs)
        if n == 0:
            return
        edges = np.asarray(edges)
        here = np.zeros(n, dtype=bool)
        m = min(len(edges), n)
        here[:m] = edges[:m] == deltas.dpid
        if not tail and deltas.window > 0:
            if len(self._span) < n:
                self._span = np.concatenate([self._span, np.zeros(n - len(self._span))])
            self._span[:n][here] += float(deltas.window)
        if len(deltas) == 0:
            return
        c = np.asarray(deltas.cookie).astype(np.uint64, copy=False)
        ours = (c & _KIND_MASK) == _FORWARD
        if not ours.any():
            return
        fid = (c[ours] & _ID_MASK).astype(np.int64)
        fid = np.where(fid < len(reg.src_dev), fid, 0)      # id 0 is never assigned: src -1
        pk = np.asarray(deltas.packets)[ours].astype(np.int64, copy=False)
        by = np.asarray(deltas.bytes)[ours].astype(np.int64, copy=False)
        moved = (pk > 0) | (by > 0)
        if not moved.any():
            return
        fid, pk, by = fid[moved], pk[moved], by[moved]
        src, dst = reg.src_dev[fid], reg.dst_dev[fid]
        tx = (src >= 0) & here[np.maximum(src, 0)]
        rx = (dst >= 0) & here[np.maximum(dst, 0)]
        if tx.any():
            f = fid[tx]
            self._tx.append({"src": src[tx], "fid": f, "pk": pk[tx], "by": by[tx],
                             "ip": reg.ip_dst[f], "proto": reg.proto[f], "port": reg.tp_dst[f]})
            self._tx_rows += len(f)
            if self._tx_rows > self._compact_at:    # bound memory: one row per flow id
                self._tx = [_per_fid(_concat(self._tx))]
                self._tx_rows = len(self._tx[0]["fid"])
                self._compact_at = max(_COMPACT_ROWS, 2 * self._tx_rows)
        if rx.any():
            if len(self._rx_b) < n:
                grow = np.zeros(n - len(self._rx_b), dtype=np.int64)
                self._rx_b = np.concatenate([self._rx_b, grow])
                self._rx_p = np.concatenate([self._rx_p, grow])
            d = dst[rx]
            self._rx_b += np.bincount(d, weights=by[rx], minlength=n).astype(np.int64)
            self._rx_p += np.bincount(d, weights=pk[rx], minlength=n).astype(np.int64)

    def last_destinations(self, mac: str) -> np.ndarray:
        """The distinct IPv4 destinations (uint32, sorted) of `mac`'s conversations in the
        last closed window: what `KnownDestinations.learn` takes while a device is learning."""
        i = self._last_rows.get(mac)
        if i is None:
            return np.zeros(0, dtype=np.uint32)
        lo, hi = np.searchsorted(self._last_pairs, [np.uint64(i << 32), np.uint64((i + 1) << 32)])
        return (self._last_pairs[lo:hi] & np.uint64(0xFFFFFFFF)).astype(np.uint32)

    # -------------------------------------------------------- output
    def close(self, now: float, window: float) -> WindowFeatures:
        """Features of every device with any traffic or new flow in the window; resets.

        Rates divide by each device's span (`add`), or by `window` for a device whose
        switch sent no poll in it (only packet-ins, or flow-removed tails, counted)."""
        ok = isinstance(window, (int, float, np.integer, np.floating)) and not isinstance(window, bool)
        w = float(window) if ok else math.nan
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"window must be a positive number of seconds, not {window!r}")
        if not (self._tx or self._new or self._pin or self._rx_b.any() or self._rx_p.any()):
            return self._close_quiet(now, w)      # most windows of a quiet network: no numpy work
        tx = _per_fid(_concat(self._tx))
        new = self._new
        rx_b, rx_p = self._rx_b, self._rx_p
        pin = np.array(self._pin, dtype=np.int64).reshape(-1, 6)
        span = self._span
        self.dropped_new_flows = self._dropped
        self.dropped_packet_ins, self._dropped_pin = self._dropped_pin, 0
        self._reset()

        n = len(self.registry.macs)
        pad = lambda a: np.concatenate([a, np.zeros(n - len(a), dtype=a.dtype)])  # noqa: E731
        rx_b, rx_p = pad(rx_b), pad(rx_p)
        span = pad(span[:n])
        per = np.where(span > 0, span, w)
        src, pk, by = tx["src"], tx["pk"], tx["by"]
        ip, proto, port = tx["ip"], tx["proto"], tx["port"]

        # Packet-in frames: rx where the destination is plugged in, and beside the flows'
        # tx rows (one packet each, no flow id) where the source is.
        prx = pin[:, 1] >= 0
        rx_b = rx_b + np.bincount(pin[prx, 1], weights=pin[prx, 2], minlength=n).astype(np.int64)
        rx_p = rx_p + np.bincount(pin[prx, 1], minlength=n).astype(np.int64)
        ptx = pin[pin[:, 0] >= 0]
        m_src = np.concatenate([src, ptx[:, 0]])
        m_pk = np.concatenate([pk, np.ones(len(ptx), dtype=np.int64)])
        m_by = np.concatenate([by, ptx[:, 2]])
        m_ip = np.concatenate([ip.astype(np.int64), ptx[:, 3]])
        m_proto = np.concatenate([proto.astype(np.int64), ptx[:, 4]])
        m_port = np.concatenate([port.astype(np.int64), ptx[:, 5]])

        tx_b = np.bincount(m_src, weights=m_by, minlength=n)
        tx_p = np.bincount(m_src, weights=m_pk, minlength=n)

        # Protocol mix of tx packets: tcp, udp, icmp, other (L2 and other IP protocols).
        cls = np.full(len(m_src), 3, dtype=np.int64)
        cls[m_proto == rules.IPPROTO_TCP] = 0
        cls[m_proto == rules.IPPROTO_UDP] = 1
        cls[m_proto == rules.IPPROTO_ICMP] = 2
        mix = np.bincount(m_src * 4 + cls, weights=m_pk, minlength=4 * n).reshape(n, 4)
        has_p = tx_p > 0
        safe_p = np.where(has_p, tx_p, 1.0)
        shares = np.where(has_p[:, None], mix / safe_p[:, None], 0.0)
        mean_size = np.where(has_p, tx_b / safe_p, 0.0)
        dns = (m_proto == rules.IPPROTO_UDP) & (m_port == 53)
        dns_q = np.bincount(m_src[dns], weights=m_pk[dns], minlength=n)

        # Bytes to destinations the device did not talk to while learning.
        new_share = np.zeros(n)
        if self.known is not None and len(m_src):
            _, learned, _ = self.known._state(self.registry)
            answers = ((m_proto == rules.IPPROTO_TCP) | (m_proto == rules.IPPROTO_UDP)) & (m_port < 0)
            ipf = (m_ip != 0) & (m_by > 0) & ~answers     # answering a peer is not talking to a new host
            unknown = ~self.known.contains(m_src[ipf], m_ip[ipf], self.registry)
            s = m_src[ipf][unknown]
            new_b = np.bincount(s, weights=m_by[ipf][unknown], minlength=n)
            ok = learned[:n] if len(learned) >= n else np.concatenate(
                [learned, np.zeros(n - len(learned), dtype=bool)])
            ok = ok & (tx_b > 0)
            new_share = np.where(ok, new_b / np.where(ok, tx_b, 1.0), 0.0)

        # Conversations of the window: flows that sent packets, plus new installs.
        if new:
            nf = np.fromiter(new.keys(), dtype=np.int64, count=len(new))
            na = np.array(list(new.values()), dtype=np.int64).reshape(-1, 4)
        else:
            nf, na = np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.int64)
        new_flows = np.bincount(na[:, 0], minlength=n)
        sent = pk > 0
        c_fid = np.concatenate([tx["fid"][sent], nf])
        c_src = np.concatenate([src[sent], na[:, 0]])
        c_ip = np.concatenate([ip[sent].astype(np.int64), na[:, 1]])
        c_proto = np.concatenate([proto[sent].astype(np.int64), na[:, 2]])
        c_port = np.concatenate([port[sent].astype(np.int64), na[:, 3]])
        c_new = np.concatenate([np.zeros(int(sent.sum()), dtype=bool), np.ones(len(nf), dtype=bool)])
        _, first, inv = np.unique(c_fid, return_index=True, return_inverse=True)
        is_new = np.bincount(inv, weights=c_new, minlength=len(first)) > 0
        c_src, c_ip, c_proto, c_port = c_src[first], c_ip[first], c_proto[first], c_port[first]
        conv_fid = c_fid[first]

        # A device's answers (portless TCP/UDP flows, forwarding.is_reply) are not destinations
        # it chose: a scanned device must not look like it contacted its scanner.
        c_answer = ((c_proto == rules.IPPROTO_TCP) | (c_proto == rules.IPPROTO_UDP)) & (c_port < 0)
        v4 = (c_ip != 0) & ~c_answer
        dest_pairs = _distinct((c_src[v4].astype(np.uint64) << np.uint64(32)) | c_ip[v4].astype(np.uint64))
        distinct_ips = np.bincount((dest_pairs >> np.uint64(32)).astype(np.int64), minlength=n)
        internal = np.zeros(len(c_ip), dtype=bool)
        for net, mask in zip(self._nets.tolist(), self._masks.tolist()):
            internal |= (c_ip & mask) == net
        lat = v4 & internal
        lateral = _count_distinct(c_src[lat], c_ip[lat], n)
        has_port = ((c_proto == rules.IPPROTO_TCP) | (c_proto == rules.IPPROTO_UDP)) & (c_port >= 0)
        pp = (c_proto << 16) | c_port
        distinct_ports = _count_distinct(c_src[has_port], pp[has_port], n)

        top_port, top_hosts = self._top_ports(
            n, c_src[has_port], pp[has_port], c_ip[has_port], is_new[has_port],
            conv_fid[has_port], tx["fid"], by)

        active = (tx_b > 0) | (tx_p > 0) | (rx_b > 0) | (rx_p > 0) | (new_flows > 0)
        rows = np.flatnonzero(active)
        X = np.column_stack([
            tx_b / per, rx_b / per, tx_p / per, rx_p / per, new_flows,
            distinct_ips, lateral, distinct_ports, new_share,
            shares[:, 0], shares[:, 1], shares[:, 2], shares[:, 3], mean_size, dns_q,
        ]).astype(np.float64)[rows].reshape(len(rows), len(FEATURES))
        macs = [self.registry.macs[i] for i in rows.tolist()]
        self._last_pairs, self._last_rows = dest_pairs, dict(zip(macs, rows.tolist()))
        return WindowFeatures(float(now), w, macs, X, top_port[rows], top_hosts[rows])

    def _close_quiet(self, now: float, w: float) -> WindowFeatures:
        """`close` of a window in which nothing moved: no device row (what the full path gives)."""
        self.dropped_new_flows = self._dropped
        self.dropped_packet_ins, self._dropped_pin = self._dropped_pin, 0
        self._reset()
        self._last_pairs, self._last_rows = np.zeros(0, dtype=np.uint64), {}
        none = np.zeros(0, dtype=np.int64)
        return WindowFeatures(float(now), w, [], np.zeros((0, len(FEATURES))), none, none.copy())

    @staticmethod
    def _top_ports(n: int, src: np.ndarray, pp: np.ndarray, ip: np.ndarray, is_new: np.ndarray,
                   fid: np.ndarray, tx_fid: np.ndarray, tx_by: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Per device: the (protocol, port) with most new conversations, then most tx
        bytes, then the lowest port; and its distinct destination hosts."""
        top = np.full(n, -1, dtype=np.int64)
        hosts = np.zeros(n, dtype=np.int64)
        if not len(src):
            return top, hosts
        gkey = (src.astype(np.uint64) << np.uint64(32)) | pp.astype(np.uint64)
        groups, g = np.unique(gkey, return_inverse=True)
        g_new = np.bincount(g, weights=is_new, minlength=len(groups))
        # tx bytes per conversation (tx_fid is unique and sorted after _per_fid)
        conv_by = np.zeros(len(fid))
        if len(tx_fid):
            pos = np.minimum(np.searchsorted(tx_fid, fid), len(tx_fid) - 1)
            hit = tx_fid[pos] == fid
            conv_by[hit] = tx_by[pos[hit]]
        g_by = np.bincount(g, weights=conv_by, minlength=len(groups))
        g_hosts = _count_distinct(g[ip != 0], ip[ip != 0], len(groups))
        g_src = (groups >> np.uint64(32)).astype(np.int64)
        g_port = (groups & np.uint64(0xFFFF)).astype(np.int64)
        g_pp = (groups & np.uint64(0xFFFFFFFF)).astype(np.int64)
        # the best group of each device comes first: src, then -new, -bytes, port, proto
        order = np.lexsort((g_pp >> 16, g_port, -g_by, -g_new, g_src))
        devs, firsts = np.unique(g_src[order], return_index=True)
        best = order[firsts]
        top[devs] = g_port[best]
        hosts[devs] = g_hosts[best]
        return top, hosts


# Features that are shares in [0, 1]: the baseline gives them a finer scale floor.
FRACTIONS: tuple[int, ...] = tuple(i for i, f in enumerate(FEATURES) if UNITS[f] == "fraction")

# The least rate that is behaviour rather than noise (DeviceBaseline's min_level): below it
# every value is one level.  A DNS lookup, an NTP sync, a keep-alive or a cloud poll is
# under it; a download, an upload, a flood or a scan's packets are orders above it.
# Without it a device idle at 2 B/s alarms on a 4 kB/s burst (12 scales in log1p space).
LEVELS: dict[str, float] = {"tx_bytes": 1024.0, "rx_bytes": 1024.0, "tx_packets": 8.0, "rx_packets": 8.0}
MIN_LEVEL: tuple[float, ...] = tuple(LEVELS.get(f, 0.0) for f in FEATURES)

# What a device's sent packets were made of: undefined in a window where it sent none.
# new_dst_share too: one 48-byte NTP request to a pool server it never used reads "100% of
# its traffic to hosts it had never talked to" (seen on IoT-23 44-1, scored 4.6x its
# threshold); what is new to a device is told, whatever the volume, by novelty.py.
TX_MIX: tuple[int, ...] = tuple(INDEX[f] for f in ("tcp_share", "udp_share", "icmp_share",
                                                 "other_share", "mean_pkt_size", "new_dst_share"))


# Packets of evidence a window needs before its own mix outweighs the baseline's.
MIX_PSEUDO_PACKETS = 8.0


def shrink_tx_mix(X: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Pull the TX_MIX features of sparse windows towards `fill` (the baseline median).

    A share measured on two packets can only be 0, 0.5 or 1: one ARP request
    beside one ping reads as "50% OTHER" and would alarm on a quiet bulb, and one
    NTP request to a new pool server as "100% to new hosts".  Each
    row is blended as (p*x + k*fill) / (p + k), with p its packets sent and
    k = MIX_PSEUDO_PACKETS, so a window of pure listening (p = 0) says nothing
    and a scan of hundreds of packets keeps its own mix.  Training and scoring
    apply the same blend, so the baseline band matches what is scored.
    `fill` is one row for every window, or one row per window (each device's own median).
    """
    p = np.maximum(X[:, INDEX["tx_packets"]], 0.0)
    X = np.array(X, dtype=np.float64, copy=True)
    w = (p / (p + MIX_PSEUDO_PACKETS))[:, None]
    cols = list(TX_MIX)
    X[:, cols] = w * X[:, cols] + (1.0 - w) * np.asarray(fill, dtype=np.float64)[..., cols]
    return X
