"""Attribution: which remote address an alert is about, decided before it is built.

While a device learns, the external destinations it talks to become its known
destinations.  An anomaly is then about the first external destination of its
window that no device talked to while learning (an address others use every day
is not a C2 server, and blocking it would cut them off); an outbreak is about the
one most of its devices' recent anomalies share.  That address is the alert's
`remote`, the target of a playbook's `block_ip target: alert`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Callable, Collection, Iterable

from controller.addresses import Subnets
from controller.detection.alert import Alert, AlertKind
from controller.telemetry.features import KnownDestinations

__all__ = ["Attribution"]


class Attribution:
    """`destinations(mac)` gives the external addresses (IPv4 integers) of the device's
    last window (the feature extractor's `last_destinations`)."""

    def __init__(self, known: KnownDestinations, destinations: Callable[[str], Iterable[int]],
                 internal_subnets: Iterable[str]) -> None:
        self.known = known
        self.destinations = destinations
        self._internal = Subnets(internal_subnets)

    def learn(self, macs: Iterable[str], learning: Callable[[str], bool]) -> None:
        """Devices still learning (`learning(mac)`) add their window's destinations."""
        for mac in macs:
            if learning(mac):
                self.known.learn(mac, self.destinations(mac))

    def befriend(self, mac: str, normal: bool, now: float) -> None:
        """A baselined device's window was judged normal or not: its destinations move
        toward counting as familiar in new_dst_share, or wait again
        (`KnownDestinations.befriend`, `suspect`); attribution is unchanged."""
        if normal:
            self.known.befriend(mac, self.destinations(mac), now)
        else:
            self.known.suspect(mac, self.destinations(mac))

    def remote(self, mac: str) -> str | None:
        """The first destination of `mac`'s window that is external and nobody learned."""
        for ip in self.known.unknown(mac, self.destinations(mac)):
            if ip not in self._internal and not self.known.learned_by(ip):
                return str(ipaddress.IPv4Address(ip))
        return None

    @staticmethod
    def outbreak(recent: Iterable[Alert], names: Collection[str], now: float, horizon: float) -> str | None:
        """The remote most of the anomalies of `names` within `horizon` seconds share."""
        votes = Counter(x.remote for x in recent
                        if x.kind == AlertKind.ANOMALY and x.device in names and x.remote
                        and now - x.time <= horizon)
        return votes.most_common(1)[0][0] if votes else None
