"""Address scans: one service tried on many hosts, and the connections failed.

Everything else in detection judges a device against what it did while it learned.
A device that is already infected when iotguard first sees it (a bot on a device
bought or deployed compromised, a capture that begins with the malware running,
as most of IoT-23's do) teaches its scan as its habit: its warm-up is full of new
hosts and failures, so its churn allows them for good, and no novelty or window
alert ever comes (a telnet scan of random internet hosts from a capture's first
second, at 0.5 to 20 SYNs per second, raised nothing).

So this one signal is not learned.  As Zeek's scan policy (policy/misc/scan.zeek,
`Scan::Address_Scan`), it counts, per device and destination port, the distinct
hosts its failed TCP connections went to (no answer or refused, judged from the
flow counters by `telemetry/outcomes.py`) over `HORIZON` (5 min), and trips at
`HOSTS` (25, Zeek's default).  It is the same whether the device still learns
or not.  Toward the internet the hosts must also lie in `NETWORKS` distinct /16
networks, or 25 of them in one /24: a scan picks addresses all over the address
space (Mirai), or walks a block address by address, while a device whose cloud
is unreachable retries a few scattered addresses of one provider.

Blind spots: a scan slower than 25 hosts per 5 minutes on one port; one that
stays within a few /16 networks but skips about a /24 (fewer than 16 networks,
and fewer than 25 hosts in any /24); UDP scans (UDP is never judged); a scanning SYN whose flow was installed
already (the same host and port within its idle timeout) is not judged again.
A device that scans the LAN on purpose (an inventory or monitoring host) should
carry a tag in `detection.exclude_tags`.

Pure Python, bounded: per port the hosts of the last `HORIZON` only, at most
`MAX_HOSTS`; `MAX_PORTS` ports per device, `MAX_DEVICES` devices and `MAX_ENTRIES`
hosts in all (the least recently failing forgotten first).  Not saved: after a
restart counting starts at zero.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from itertools import islice
from dataclasses import dataclass
from typing import Callable

__all__ = ["HORIZON", "HOSTS", "NETWORKS", "SCANNED", "Scan", "ScanCounter"]

HORIZON = 300.0          # s: Zeek's scan_interval
HOSTS = 25               # distinct hosts with failed connections on one port: Zeek's addr_scan_threshold
NETWORKS = 16            # distinct /16 networks among them, when they are internet hosts
MAX_HOSTS = 2 * HOSTS    # hosts kept per port (the newest): enough to count and to name
MAX_PORTS = 8            # ports kept per device (the most recently failing)
MAX_DEVICES = 4096       # devices kept (the most recently failing)
MAX_ENTRIES = 65536      # hosts kept in all (a few MB); past it the least recently failing device is forgotten
SCANNED = "scanned_hosts_5min"   # the alert window value (playbook conditions may name it)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scan:
    """A device's failed connections on one port reached the scan threshold."""

    mac: str
    time: float
    port: int                     # TCP destination port
    hosts: int                    # distinct hosts it failed on, within the horizon (at most MAX_HOSTS)
    internal: int                 # ... of which inside the LAN
    networks: int                 # distinct /16 networks of the internet hosts
    block: int                    # the /24 holding most of the internet hosts (its network address)
    in_block: int                 # ... and how many of them
    first: float                  # when the oldest counted failure came
    examples: tuple[int, ...]     # the newest hosts, newest last (IPv4 ints)


class _Port:
    """One device's failed hosts on one port, with what the rule asks kept up to date (so a
    failure costs a few dictionary operations, not a pass over the hosts)."""

    __slots__ = ("hosts", "internal", "networks", "blocks")

    def __init__(self) -> None:
        self.hosts: OrderedDict[int, tuple[float, bool]] = OrderedDict()   # ip -> (last failure, internal)
        self.internal = 0
        self.networks: Counter = Counter()     # /16 of each internet host -> hosts in it
        self.blocks: Counter = Counter()       # /24 of each internet host -> hosts in it

    def add(self, ip: int, now: float, internal: bool) -> bool:
        """Count a failure to `ip` (now the most recent); True if the host is new here."""
        old = self.hosts.pop(ip, None)
        self.hosts[ip] = (now, internal)
        if old is not None:
            return False
        if internal:
            self.internal += 1
        else:
            self.networks[ip >> 16] += 1
            self.blocks[ip >> 8] += 1
        return True

    def drop_oldest(self) -> None:
        ip, (_, internal) = self.hosts.popitem(last=False)
        if internal:
            self.internal -= 1
            return
        for c, k in ((self.networks, ip >> 16), (self.blocks, ip >> 8)):
            c[k] -= 1
            if not c[k]:
                del c[k]

    def oldest(self) -> float:
        return next(iter(self.hosts.values()))[0]


class ScanCounter:
    """Per device and port, the hosts of its failed connections; `failed` reports a scan."""

    def __init__(self, internal: Callable[[int], bool], hosts: int = HOSTS, networks: int = NETWORKS,
                 horizon: float = HORIZON) -> None:
        self._internal = internal
        self.hosts, self.networks, self.horizon = int(hosts), int(networks), float(horizon)
        self._devices: OrderedDict[str, OrderedDict[int, _Port]] = OrderedDict()   # mac -> port -> hosts
        self.entries = 0          # hosts held over all devices and ports

    def __len__(self) -> int:
        return len(self._devices)

    def failed(self, mac: str, ip: int, port: int, now: float) -> Scan | None:
        """A TCP connection of `mac` to `ip`:`port` failed (judged now).  Returns the scan
        it belongs to if that port's hosts reach the threshold, else None."""
        if ip == 0 or ip >= 0xE0000000:
            return None
        ports = self._recent(self._devices, mac, MAX_DEVICES, OrderedDict)
        p = self._recent(ports, port, MAX_PORTS, _Port)
        internal = p.hosts[ip][1] if ip in p.hosts else self._internal(ip)
        self.entries += p.add(ip, now, internal)
        while p.hosts and (now - p.oldest() > self.horizon or len(p.hosts) > MAX_HOSTS):
            p.drop_oldest()
            self.entries -= 1
        while self.entries > MAX_ENTRIES and len(self._devices) > 1:
            self._drop(self._devices.popitem(last=False)[1])
        n = len(p.hosts)
        if n < self.hosts:
            return None
        block, in_block = p.blocks.most_common(1)[0] if p.blocks else (0, 0)
        if p.internal < self.hosts and len(p.networks) < self.networks and in_block < self.hosts:
            return None
        return Scan(mac=mac, time=now, port=port, hosts=n, internal=p.internal, networks=len(p.networks),
                    block=block << 8, in_block=in_block, first=p.oldest(),
                    examples=tuple(reversed(tuple(islice(reversed(p.hosts), 8)))))

    def forget(self, mac: str) -> None:
        """What a device's ports counted so far was told (a burst spoke for its scan): later
        failures count afresh."""
        self._drop(self._devices.pop(mac, {}))

    def _recent(self, d: OrderedDict, key, bound: int, make):
        """`d[key]` (`make()` if missing), now the most recent; beyond `bound`, the least
        recent is forgotten."""
        v = d.get(key)
        if v is None:
            v = d[key] = make()
            while len(d) > bound:
                self._drop(d.popitem(last=False)[1])
        d.move_to_end(key)
        return v

    def _drop(self, forgotten) -> None:
        """Account for a forgotten device (its ports) or port."""
        ports = [forgotten] if isinstance(forgotten, _Port) else forgotten.values()
        self.entries -= sum(len(p.hosts) for p in ports)
