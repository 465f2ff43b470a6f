"""What each device usually talks to, and how much of what it does now is new.

The poll windows see one second at a time, so an attacker who tries one host
every two seconds never shows more than one new peer in a window.  This module
keeps, per device, the memory that a window cannot: the internal peers, the
external destinations and the (protocol, destination port) services it used
while it learned, and counts what it does that is outside that memory over
sliding horizons of 10 s, 60 s and 10 min.  It is fed from the event path (each
new conversation a device starts, seen as a packet-in at its edge switch), so it
does not depend on the window length.

Counted per device and horizon (`KINDS`):

* `new_internal_peers`: internal addresses it never talked to while learning
  (TCP SYN, UDP, or an ARP request for them);
* `new_services`: (protocol, port) pairs it never used while learning;
* `new_external`: external addresses it never talked to while learning;
* `new_ports_one_host`: the most (host, service) pairs new to it on any one host,
  i.e. a port scan of one host;
* `failed_connections`: TCP connections it opened that got no answer or were refused
  (judged from the flow's counters, `telemetry/outcomes.py`, and counted when judged, a
  few seconds after the SYN), on a service it never used, to an internal host it never
  talked to, or to a new internet host if it met none after settling in
  (`_telling_failure`).  A habit that fails (its own cloud server down) is an outage,
  not news.  Every such failure counts, the same host's included: a bot retrying a dead
  C&C is what this sees.

Each new item counts once per `MAX_HORIZON` (a peer contacted again a minute
later is not new twice).  A device's normal churn is learned too: the most new
items it showed within each horizon during the second part of its warm-up (the
first third is the device settling in: everything is new then), or its warm-up
rate times the horizon if that is more.  `allowance` is a floor plus that churn,
so a hub or a laptop that always meets new hosts is allowed proportionally more.

Bounded: at most `MAX_PEERS` internal peers, `MAX_EXTERNAL` external addresses
and `MAX_SERVICES` services are learned per device (the least recently used is
evicted while learning; after warm-up the memory is frozen, so an attack cannot
evict a device's habits), `MAX_NOVEL` recently new items are remembered, and the
per-host scan counts cover the `MAX_HOSTS` most recent hosts.  Counts are kept
in time buckets (1 s, 5 s and 60 s wide for the three horizons), so a horizon's
count may include up to one bucket more of history.

Saved with the baselines (`to_dict`, `parse`, `restore`; the "novelty" section of
the state file): each frozen memory, i.e. the learned peers, external addresses,
services, (host, service) pairs and allowances, so that a restart neither re-learns
(an attacker active at the restart would become a habit) nor forgets (every habit
would look new).  Not saved: a memory still learning (it learns again from the
device's first event after the restart) and the recent counts (which items were new
in the last 10 min, the horizons' buckets, the examples): after a restart counting
starts at zero.  Loading is strict (`NoveltyFormatError` names the field) and bounded
like the memory.

Pure Python: one event costs a few dictionary operations; no numpy, no
scikit-learn on this path.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import ipaddress

__all__ = ["HORIZONS", "KINDS", "NOVELTY_VALUES", "FLOORS", "Novelty", "NoveltyMemory", "NoveltyFormatError",
           "value_name", "service_name"]

HORIZONS: tuple[float, ...] = (10.0, 60.0, 600.0)
_WIDTHS: tuple[float, ...] = (1.0, 5.0, 60.0)       # bucket width per horizon
MAX_HORIZON = HORIZONS[-1]
KINDS: tuple[str, ...] = ("new_internal_peers", "new_services", "new_external", "new_ports_one_host",
                          "failed_connections")
FAILED = "failed_connections"

# The least a horizon's count must reach before it says anything, per kind (before churn).
FLOORS: Mapping[str, tuple[int, int, int]] = MappingProxyType({
    "new_internal_peers": (5, 5, 10),
    "new_services": (5, 8, 16),
    "new_external": (10, 20, 50),
    "new_ports_one_host": (10, 20, 40),
    "failed_connections": (3, 3, 3),
})

MAX_PEERS = 256
MAX_EXTERNAL = 256
MAX_SERVICES = 64
MAX_NOVEL = 1024
MAX_HOSTS = 16
RECENT = 16                  # examples kept per kind, for the words
SETTLE = 1.0 / 3.0           # share of the warm-up in which everything is new anyway
IOT_SERVICES = 8             # a device whose warm-up used at most this many services is an appliance

TCP, UDP = 6, 17
_EPHEMERAL = 32768           # UDP to a port this high is almost always an answer, not a service
_EXEMPT = frozenset({(UDP, 67), (UDP, 68)})   # DHCP: a renewal may come hours after warm-up

# The saved form: `schema` changes when an old reader could not read it; `version` when it
# reads the same but means something new (an absent version is 1).
SCHEMA = "iotguard.novelty/2"
VERSION = 1
OLD_SCHEMAS = ("iotguard.novelty/1",)    # read: without failed_connections, which is then unlearned
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_MAX_COUNT = 10**9          # an allowance or a learned count beyond this is not one this code wrote
_UNLEARNED = (_MAX_COUNT,) * len(HORIZONS)   # the allowance of a kind a saved memory did not learn: never trips


def _horizon_label(h: float) -> str:
    return f"{h / 60:g}min" if h >= 600 else f"{h:g}s"


def value_name(kind: str, h: float) -> str:
    """The alert window value of one kind and horizon, e.g. new_internal_peers_60s."""
    return f"{kind}_{_horizon_label(h)}"


# Every value a novelty alert carries in its window (playbook conditions may name them).
NOVELTY_VALUES: tuple[str, ...] = tuple(value_name(k, h) for k in KINDS for h in HORIZONS)

_NAMES = {(TCP, 21): "FTP", (TCP, 22): "SSH", (TCP, 23): "Telnet", (TCP, 2323): "Telnet",
          (TCP, 25): "SMTP", (UDP, 53): "DNS", (TCP, 53): "DNS", (TCP, 80): "HTTP", (TCP, 8080): "HTTP",
          (UDP, 123): "NTP", (TCP, 139): "NetBIOS", (TCP, 443): "HTTPS", (TCP, 445): "SMB",
          (TCP, 554): "RTSP", (UDP, 1900): "SSDP", (TCP, 1883): "MQTT", (TCP, 8883): "MQTT over TLS",
          (TCP, 3389): "RDP", (UDP, 5353): "mDNS", (UDP, 5683): "CoAP", (TCP, 5900): "VNC"}


def service_name(proto: int, port: int) -> str:
    """TCP/22 as "SSH", others as "TCP/8081"."""
    return _NAMES.get((proto, port)) or f"{ {TCP: 'TCP', UDP: 'UDP'}.get(proto, str(proto)) }/{port}"


def _ip(ip: int) -> str:
    return str(ipaddress.IPv4Address(ip))


class NoveltyFormatError(ValueError):
    """A saved novelty memory is malformed; the message names the field."""


class _Sliding:
    """Counts over the three horizons, in buckets (running sums, amortised O(1))."""

    __slots__ = ("_b", "_sum")

    def __init__(self) -> None:
        self._b: list[deque] = [deque() for _ in HORIZONS]
        self._sum = [0] * len(HORIZONS)

    def add(self, t: float, n: int = 1) -> None:
        self.counts(t)                  # prune first: memory stays within the horizons
        for i, w in enumerate(_WIDTHS):
            start = math.floor(t / w) * w
            b = self._b[i]
            if b and b[-1][0] == start:
                b[-1][1] += n
            else:
                b.append([start, n])
            self._sum[i] += n

    def counts(self, now: float) -> tuple[int, ...]:
        for i, (h, w) in enumerate(zip(HORIZONS, _WIDTHS)):
            b = self._b[i]
            while b and b[0][0] + w <= now - h:     # the bucket ended before the horizon began
                self._sum[i] -= b.popleft()[1]
        return tuple(self._sum)

    def clear(self) -> None:
        for b in self._b:
            b.clear()
        self._sum = [0] * len(HORIZONS)


@dataclass(frozen=True, kw_only=True)
class Novelty:
    """One device's novelty after an event: counts, allowances and examples per kind.

    `counts[kind]` and `allowance[kind]` are per horizon (HORIZONS order); `tripped`
    lists the kinds with some horizon at or over its allowance.  `examples[kind]` are the
    newest new items, newest last, each (time, IPv4 int or 0, protocol, port).
    """

    mac: str
    time: float
    counts: Mapping[str, tuple[int, ...]]
    allowance: Mapping[str, tuple[int, ...]]
    examples: Mapping[str, tuple[tuple[float, int, int, int], ...]]
    learned_peers: int
    learned_services: tuple[tuple[int, int], ...]
    learned_external: int
    learned_failures: int = 0            # failed connections it showed after settling in, while learning
    scanned_host: int = 0                # the host of new_ports_one_host (0: none)
    tripped: tuple[str, ...] = ()

    def horizon(self, kind: str) -> int:
        """Index of the horizon that is furthest over its allowance (the longest on a tie:
        the same count over a longer time is the same news, and lasts)."""
        c, a = self.counts[kind], self.allowance[kind]
        return max(range(len(HORIZONS)), key=lambda i: (c[i] / max(a[i], 1), i))

    def values(self) -> dict[str, int]:
        """The alert window values: every kind at every horizon."""
        return {value_name(k, h): self.counts[k][i] for k in KINDS for i, h in enumerate(HORIZONS)}

    def recent(self, kind: str, within: float) -> list[tuple[float, int, int, int]]:
        return [e for e in self.examples[kind] if self.time - e[0] <= within]


@dataclass
class _Device:
    started: float
    learning: bool = True
    learned_at: float | None = None
    peers: OrderedDict = field(default_factory=OrderedDict)       # ip -> None (LRU while learning)
    external: OrderedDict = field(default_factory=OrderedDict)
    services: OrderedDict = field(default_factory=OrderedDict)    # (proto, port) -> None
    pairs: OrderedDict = field(default_factory=OrderedDict)       # (ip, proto, port) learned, bounded
    novel: OrderedDict = field(default_factory=OrderedDict)       # item -> time it last counted
    sliding: dict = field(default_factory=lambda: {k: _Sliding() for k in KINDS})
    hosts: OrderedDict = field(default_factory=OrderedDict)       # ip -> _Sliding (scan counts)
    examples: dict = field(default_factory=lambda: {k: deque(maxlen=RECENT) for k in KINDS})
    peaks: dict = field(default_factory=lambda: {k: [0] * len(HORIZONS) for k in KINDS})
    settled_new: dict = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    allowance: dict = field(default_factory=dict)


def _churn(d: _Device, kind: str, counts: tuple[int, ...]) -> None:
    """While learning, after settling in: one more new item of `kind`, and its horizons' peaks."""
    d.settled_new[kind] += 1
    d.peaks[kind] = [max(p, x) for p, x in zip(d.peaks[kind], counts)]


def _remember(d: OrderedDict, key, bound: int) -> None:
    d[key] = None
    d.move_to_end(key)
    while len(d) > bound:
        d.popitem(last=False)


class NoveltyMemory:
    """Every device's memory; `observe` is the per-event entry point."""

    def __init__(self, internal_subnets: Iterable[str], learn_seconds: float) -> None:
        self.learn_seconds = float(learn_seconds)
        nets = []
        for s in internal_subnets:
            n = ipaddress.ip_network(s)
            if n.version == 4:
                nets.append((int(n.network_address), int(n.netmask)))
        self._nets = tuple(nets)
        self.devices: dict[str, _Device] = {}

    def _internal(self, ip: int) -> bool:
        return any(ip & mask == net for net, mask in self._nets)

    def learning(self, mac: str) -> bool:
        d = self.devices.get(mac)
        return d is None or d.learning

    def observe(self, mac: str, proto: int, ip: int, port: int, now: float,
                learning: bool) -> Novelty | None:
        """A conversation the device started: TCP SYN, UDP, or ARP request (proto 0).

        `learning` says whether its baselines still learn; the memory learns at least
        `learn_seconds` from the device's first event as well (after a restart, a
        device whose memory was not saved frozen learns anew).  Returns its novelty if this event was new to it after
        warm-up, else None.
        """
        d = self._device_at(mac, now, learning)
        if ip >= 0xE0000000:          # multicast and broadcast are nobody's peer
            ip = 0
        service = (proto, port) if proto in (TCP, UDP) and 0 <= port and (proto, port) not in _EXEMPT \
            and not (proto == UDP and port >= _EPHEMERAL) else None
        internal = ip != 0 and self._internal(ip)
        if d.learning:
            self._learn(d, ip, internal, service, now)
            return None
        new = []
        if ip:
            kind, known = ("new_internal_peers", d.peers) if internal else ("new_external", d.external)
            if ip not in known and self._first(d, (kind, ip), now):
                new.append(kind)
        if service is not None and service not in d.services and self._first(d, service, now):
            new.append("new_services")
        scanned = 0
        if service is not None and ip and (ip, proto, port) not in d.pairs \
                and self._first(d, (ip, proto, port), now):
            new.append("new_ports_one_host")
            scanned = ip
        if not new:
            return None
        for kind in new:
            if kind != "new_ports_one_host":      # counted per host, below
                d.sliding[kind].add(now)
            d.examples[kind].append((now, ip, proto, port))
        if scanned:
            host = d.hosts.get(scanned)
            if host is None:
                host = d.hosts[scanned] = _Sliding()
                while len(d.hosts) > MAX_HOSTS:
                    d.hosts.popitem(last=False)
            d.hosts.move_to_end(scanned)
            host.add(now)
        return self._report(mac, d, now)

    def _device_at(self, mac: str, now: float, learning: bool) -> _Device:
        d = self.devices.get(mac)
        if d is None:
            d = self.devices[mac] = _Device(started=now)
        if d.learning and not learning and now - d.started >= self.learn_seconds:
            self._finish(d, now)
        return d

    def failed(self, mac: str, ip: int, port: int, now: float, learning: bool) -> Novelty | None:
        """A TCP connection of the device to `ip`:`port` failed (judged now).  While it
        learns, a failure after settling in is churn; after, a failure to a host or a
        service outside its memory counts.  Returns its novelty if it counted."""
        d = self.devices.get(mac)
        if d is None:
            return None               # it never opened anything we saw
        d = self._device_at(mac, now, learning)
        if ip == 0 or ip >= 0xE0000000:
            return None
        if d.learning:
            if now - d.started >= SETTLE * self.learn_seconds:
                d.sliding[FAILED].add(now)
                _churn(d, FAILED, d.sliding[FAILED].counts(now))
            return None
        if not self._telling_failure(d, ip, port):
            return None
        d.sliding[FAILED].add(now)
        d.examples[FAILED].append((now, ip, TCP, port))
        return self._report(mac, d, now)

    def _telling_failure(self, d: _Device, ip: int, port: int) -> bool:
        """Does a failed connection to `ip`:`port` say something about this device?  On a
        service it never used, yes; to a host it never talked to inside the LAN, yes; to
        a new internet host on a service it uses, only if it met no new internet hosts
        after settling in (a voice assistant meets new cloud hosts all day, and some of
        them do not answer).  A habit failing is an outage, not news."""
        if (TCP, port) not in d.services:
            return True
        if self._internal(ip):
            return ip not in d.peers
        return ip not in d.external and d.settled_new["new_external"] == 0

    def _first(self, d: _Device, item, now: float) -> bool:
        """Is `item` new within the last MAX_HORIZON (so it counts)?  Remembers it."""
        t = d.novel.get(item)
        d.novel[item] = now
        d.novel.move_to_end(item)
        while len(d.novel) > MAX_NOVEL:
            d.novel.popitem(last=False)
        return t is None or now - t > MAX_HORIZON

    def _learn(self, d: _Device, ip: int, internal: bool, service, now: float) -> None:
        firsts = []
        if ip:
            kind, known, bound = (("new_internal_peers", d.peers, MAX_PEERS) if internal
                                  else ("new_external", d.external, MAX_EXTERNAL))
            if ip not in known:
                firsts.append(kind)
            _remember(known, ip, bound)
        if service is not None:
            if service not in d.services:
                firsts.append("new_services")
            _remember(d.services, service, MAX_SERVICES)
            if ip:
                pair = (ip, service[0], service[1])
                if pair not in d.pairs:
                    firsts.append("new_ports_one_host")
                _remember(d.pairs, pair, MAX_PEERS + MAX_EXTERNAL)
        if now - d.started < SETTLE * self.learn_seconds:
            return                    # settling in: everything is new
        for kind in firsts:
            if kind == "new_ports_one_host":
                host = d.hosts.get(ip)
                if host is None:
                    host = d.hosts[ip] = _Sliding()
                    while len(d.hosts) > MAX_HOSTS:
                        d.hosts.popitem(last=False)
                host.add(now)
                c = host.counts(now)
            else:
                d.sliding[kind].add(now)
                c = d.sliding[kind].counts(now)
            _churn(d, kind, c)

    def _finish(self, d: _Device, now: float) -> None:
        """Warm-up over: the churn it showed becomes its allowance; counting starts afresh."""
        span = max(now - d.started - SETTLE * self.learn_seconds, 1.0)
        for kind in KINDS:
            rate = d.settled_new[kind] / span
            d.allowance[kind] = tuple(
                FLOORS[kind][i] + math.ceil(max(d.peaks[kind][i], rate * h))
                for i, h in enumerate(HORIZONS))
            d.sliding[kind].clear()
        d.hosts.clear()
        d.learning = False
        d.learned_at = now

    def _report(self, mac: str, d: _Device, now: float) -> Novelty:
        counts = {k: d.sliding[k].counts(now) for k in KINDS if k != "new_ports_one_host"}
        best, best_c = 0, (0,) * len(HORIZONS)
        for ip, host in d.hosts.items():
            c = host.counts(now)
            if c > best_c:
                best, best_c = ip, c
        counts["new_ports_one_host"] = best_c
        tripped = tuple(k for k in KINDS if any(c >= a for c, a in zip(counts[k], d.allowance[k])))
        return Novelty(mac=mac, time=now, counts=MappingProxyType(counts),
                       allowance=MappingProxyType(dict(d.allowance)),
                       examples=MappingProxyType({k: tuple(d.examples[k]) for k in KINDS}),
                       learned_peers=len(d.peers), learned_services=tuple(d.services),
                       learned_external=len(d.external), learned_failures=d.settled_new[FAILED],
                       scanned_host=best, tripped=tripped)

    def told(self, mac: str) -> None:
        """What the device's horizons counted so far was told by another alert (a burst
        for a fast scan): they start afresh, so a later alert is about what came after
        (in CI, a camera's quarantined and released scan read, 40 s later, as "looked for
        74 internal hosts ... in the last 60 s").  What it met stays met."""
        d = self.devices.get(mac)
        if d is None or d.learning:
            return
        for kind in KINDS:
            d.sliding[kind].clear()
            d.examples[kind].clear()
        d.hosts.clear()

    def appliance(self, mac: str) -> bool:
        """Did the device's warm-up use at most IOT_SERVICES services?"""
        d = self.devices.get(mac)
        return d is not None and not d.learning and len(d.services) <= IOT_SERVICES

    def stable_services(self, mac: str) -> bool:
        """Was its set of services closed: nothing new after the warm-up's settling part?
        (A device whose services churned while learning gets no new-service facts.)"""
        d = self.devices.get(mac)
        return d is not None and not d.learning and d.settled_new["new_services"] == 0

    def knows_service(self, mac: str, proto: int, port: int) -> bool:
        d = self.devices.get(mac)
        return d is not None and (proto, port) in d.services

    # ------------------------------------------------------------ persistence
    def settle(self, now: float, learning: Callable[[str], bool]) -> None:
        """Freeze every memory whose warm-up is over but waits for its device's next
        conversation to end (what `_device_at` does then).  A device whose traffic all
        rides flows it already has starts none, and its memory, still learning, would be
        left out of a save: after a restart it would learn again, an attacker active
        then included.  `learning(mac)`: is the device's baseline still learning?"""
        for mac, d in self.devices.items():
            if d.learning and not learning(mac) and now - d.started >= self.learn_seconds:
                self._finish(d, now)

    def to_dict(self) -> dict:
        """The frozen memories, JSON-serialisable (addresses dotted, oldest first).

        A memory still learning is left out: its warm-up is not over, so it has no
        allowance yet, and it learns again after a restart."""
        devices = []
        for mac, d in self.devices.items():
            if d.learning:
                continue
            devices.append({
                "mac": mac,
                "peers": [_ip(ip) for ip in d.peers],
                "external": [_ip(ip) for ip in d.external],
                "services": [[proto, port] for proto, port in d.services],
                "pairs": [[_ip(ip), proto, port] for ip, proto, port in d.pairs],
                "allowance": {k: list(d.allowance[k]) for k in KINDS},
                "settled_new": {k: d.settled_new[k] for k in KINDS},
            })
        return {"schema": SCHEMA, "version": VERSION, "devices": devices}

    @staticmethod
    def parse(d: object) -> dict[str, _Device]:
        """Strict inverse of to_dict: frozen memories by MAC; NoveltyFormatError names the
        first bad field (e.g. ``devices[2].peers[7]``)."""
        if not isinstance(d, dict):
            raise NoveltyFormatError(f"expected an object, got {type(d).__name__}")
        if d.get("schema") != SCHEMA and d.get("schema") not in OLD_SCHEMAS:
            raise NoveltyFormatError(f"schema: expected {SCHEMA!r}, got {str(d.get('schema'))[:40]!r}")
        kinds = KINDS if d["schema"] == SCHEMA else tuple(k for k in KINDS if k != FAILED)
        _keys(d, {"schema", "devices"}, {"version"}, "novelty memory")
        _count(d.get("version", 1), "version", 1, VERSION)
        items = d["devices"]
        if not isinstance(items, list):
            raise NoveltyFormatError("devices: expected a list")
        out: dict[str, _Device] = {}
        for i, it in enumerate(items):
            where = f"devices[{i}]"
            if not isinstance(it, dict):
                raise NoveltyFormatError(f"{where}: expected an object")
            _keys(it, {"mac", "peers", "external", "services", "pairs", "allowance", "settled_new"}, set(),
                  where)
            mac = it["mac"]
            if not isinstance(mac, str) or not _MAC.fullmatch(mac):
                raise NoveltyFormatError(f"{where}.mac: {str(mac)[:40]!r} is not a lower-case MAC address")
            if mac in out:
                raise NoveltyFormatError(f"{where}.mac: {mac} is given twice")
            try:
                out[mac] = NoveltyMemory._device(it, where, kinds)
            except NoveltyFormatError as e:
                raise NoveltyFormatError(f"{e} (device {mac})") from None
        return out

    @staticmethod
    def _device(it: dict, where: str, kinds: tuple[str, ...] = KINDS) -> _Device:
        """One device's frozen memory (`where` names it in errors); a kind not in `kinds`
        (a file from before it existed) is unlearned: it never trips for this device."""
        dev = _Device(started=0.0, learning=False)
        for name, bound in (("peers", MAX_PEERS), ("external", MAX_EXTERNAL)):
            for k, v in enumerate(_items(it[name], f"{where}.{name}", bound)):
                _unique(getattr(dev, name), _address(v, f"{where}.{name}[{k}]"), f"{where}.{name}[{k}]")
        for k, v in enumerate(_items(it["services"], f"{where}.services", MAX_SERVICES)):
            at = f"{where}.services[{k}]"
            if not isinstance(v, list) or len(v) != 2:
                raise NoveltyFormatError(f"{at}: expected [protocol, port]")
            _unique(dev.services, _service(v[0], v[1], at), at)
        for k, v in enumerate(_items(it["pairs"], f"{where}.pairs", MAX_PEERS + MAX_EXTERNAL)):
            at = f"{where}.pairs[{k}]"
            if not isinstance(v, list) or len(v) != 3:
                raise NoveltyFormatError(f"{at}: expected [address, protocol, port]")
            _unique(dev.pairs, (_address(v[0], at), *_service(v[1], v[2], at)), at)
        for name in ("allowance", "settled_new"):
            if not isinstance(it[name], dict):
                raise NoveltyFormatError(f"{where}.{name}: expected an object")
            _keys(it[name], set(kinds), set(), f"{where}.{name}")
        for kind in KINDS:
            if kind not in kinds:
                dev.allowance[kind], dev.settled_new[kind] = _UNLEARNED, 0
                continue
            at = f"{where}.allowance.{kind}"
            v = it["allowance"][kind]
            if not isinstance(v, list) or len(v) != len(HORIZONS):
                raise NoveltyFormatError(f"{at}: expected {len(HORIZONS)} integers (one per horizon)")
            dev.allowance[kind] = tuple(_count(a, f"{at}[{h}]", FLOORS[kind][h], _MAX_COUNT)
                                        for h, a in enumerate(v))
            dev.settled_new[kind] = _count(it["settled_new"][kind], f"{where}.settled_new.{kind}", 0,
                                           _MAX_COUNT)
        return dev

    def restore(self, devices: dict[str, _Device]) -> None:
        """Replace every memory with `devices` (from `parse`): the load at start."""
        self.devices = dict(devices)


def _keys(d: dict, required: set[str], optional: set[str], where: str) -> None:
    missing, unknown = required - set(d), set(d) - required - optional
    if missing:
        raise NoveltyFormatError(f"{where}: missing field {sorted(missing)[0]!r}")
    if unknown:
        raise NoveltyFormatError(f"{where}: unknown field {sorted(str(k)[:40] for k in unknown)[0]!r}")


def _items(v: object, where: str, bound: int) -> list:
    if not isinstance(v, list):
        raise NoveltyFormatError(f"{where}: expected a list")
    if len(v) > bound:
        raise NoveltyFormatError(f"{where}: {len(v)} entries, more than the {bound} a memory keeps")
    return v


def _unique(d: OrderedDict, key, where: str) -> None:
    if key in d:
        raise NoveltyFormatError(f"{where}: given twice")
    d[key] = None


def _count(v: object, where: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        shown = repr(v)[:40] if isinstance(v, (int, float)) or v is None else type(v).__name__
        raise NoveltyFormatError(f"{where}: expected an integer in [{lo}, {hi}], got {shown}")
    return v


def _address(v: object, where: str) -> int:
    """A unicast IPv4 as the memory keeps it (0, multicast and broadcast are nobody's peer)."""
    if not isinstance(v, str):
        raise NoveltyFormatError(f"{where}: expected a dotted IPv4 address, got {type(v).__name__}")
    try:
        ip = int(ipaddress.IPv4Address(v))
    except ValueError:
        raise NoveltyFormatError(f"{where}: {v[:40]!r} is not an IPv4 address") from None
    if _ip(ip) != v or ip == 0 or ip >= 0xE0000000:
        raise NoveltyFormatError(f"{where}: {v[:40]!r} is not a canonical unicast address")
    return ip


def _service(proto: object, port: object, where: str) -> tuple[int, int]:
    if isinstance(proto, bool) or not isinstance(proto, int) or proto not in (TCP, UDP):
        shown = repr(proto)[:20] if isinstance(proto, (int, float)) else type(proto).__name__
        raise NoveltyFormatError(f"{where}: protocol must be {TCP} (TCP) or {UDP} (UDP), got {shown}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        shown = repr(port)[:20] if isinstance(port, (int, float)) else type(port).__name__
        raise NoveltyFormatError(f"{where}: port must be an integer in [0, 65535], got {shown}")
    return proto, port
