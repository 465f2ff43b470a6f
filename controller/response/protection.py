"""Protected devices and addresses: what an automatic response must never cut off.

A security controller must not answer an attack by taking the network down.
An automatic response (from a playbook) is refused, and audited as refused with
the reason, when:

- its device is protected: named in `protected.names`, tagged with one of
  `protected.tags` (default `infra`, `gateway`), inside `protected.subnets`, the
  gateway, a DNS server, or one of the controller's own addresses;
- it would block a prefix that covers a protected address or any part of an
  internal subnet;
- it would block an address that is not a unicast internet address (multicast,
  broadcast, unspecified, loopback, link-local, reserved).

A manual response (POST /api/v1/responses) may override the first two with
`"force": true`; the audit records it.  The third always holds: blocking
255.255.255.255 or 127.0.0.1 protects nothing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from controller.addresses import Subnets
from controller.response.actions.base import Entity


@dataclass(frozen=True, kw_only=True)
class Protection:
    names: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset({"infra", "gateway"})
    subnets: Subnets = Subnets()
    internal: Subnets = Subnets()
    gateway: Callable[[], "tuple[str, str | None] | None"] = lambda: None
    dns_servers: Callable[[], Sequence[str]] = lambda: ()
    own_addresses: tuple[str, ...] = ()

    def _addresses(self) -> list[tuple[str, str]]:
        """(address, what it is) of every protected single address."""
        out = []
        gw = self.gateway()
        if gw is not None:
            out.append((gw[0], "the gateway"))
        out += [(a, "a DNS server") for a in self.dns_servers()]
        out += [(a, "the controller's own address") for a in self.own_addresses]
        return out

    def device(self, dev: Mapping[str, Any]) -> str | None:
        """Why this device (a {name, mac, ips, tags} record) must not be acted on, or None."""
        name = dev.get("name") or dev.get("mac") or "the device"
        if dev.get("name") in self.names:
            return f"{name} is protected (protected.names)"
        tags = [t for t in dev.get("tags") or () if t in self.tags]
        if tags:
            return f"{name} is tagged {tags[0]!r}, a protected tag (protected.tags)"
        gw = self.gateway()
        if gw is not None and gw[1] is not None and dev.get("mac") == gw[1]:
            return f"{name} is the gateway"
        ips = [str(a) for a in dev.get("ips") or ()]
        for ip in ips:
            if ip in self.subnets:
                return f"{name} ({ip}) is in a protected subnet (protected.subnets)"
            for addr, what in self._addresses():
                if ip == addr:
                    return f"{name} ({ip}) is {what}"
        return None

    def prefix(self, prefix: str) -> str | None:
        """Why blocking this prefix would cut off what must stay reachable, or None."""
        net = ipaddress.ip_network(prefix, strict=False)
        for sub in list(self.internal) + list(self.subnets):
            if sub.version == net.version and net.overlaps(sub):
                what = "an internal subnet" if sub in list(self.internal) else "a protected subnet"
                return f"{prefix} covers {what} ({sub})"
        for addr, what in self._addresses():
            ip = ipaddress.ip_address(addr)
            if ip.version == net.version and ip in net:
                return f"{prefix} covers {what} ({addr})"
        return None


def not_unicast(prefix: str) -> str | None:
    """Why this address or prefix is not a unicast internet destination, or None."""
    net = ipaddress.ip_network(prefix, strict=False)
    addr = net.network_address
    for test, what in ((net.is_multicast, "multicast"), (addr == ipaddress.IPv4Address("255.255.255.255")
                                                        if net.version == 4 else False, "the broadcast address"),
                       (net.is_unspecified, "unspecified"), (net.is_loopback, "loopback"),
                       (net.is_link_local, "link-local"), (net.is_reserved, "reserved")):
        if test:
            return f"{prefix} is {what}, not a unicast internet address"
    return None


def refusal(protection: Protection, entity: Entity, device: Mapping[str, Any] | None, *,
            force: bool) -> str | None:
    """Why a response about `entity` must not be carried out (None: it may)."""
    if entity.prefix is not None:
        reason = not_unicast(entity.prefix)
        if reason is not None:
            return reason
        if not force:
            return protection.prefix(entity.prefix)
    if not force and entity.mac is not None and device:
        return protection.device(device)
    return None
