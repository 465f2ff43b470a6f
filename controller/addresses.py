"""Addresses: the one copy of MAC normalisation and of subnet membership.

Foundation layer: stdlib only, nothing from the rest of the controller, so the
config loader, the rule builder, the detector and the response engine can all
agree on what a MAC address is and on which addresses are internal.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Iterator, Union

__all__ = ["MAC_RE", "Address", "Network", "normalise_mac", "is_mac", "is_group_mac", "is_zero_mac",
           "is_unicast_mac", "ip_address", "Subnets"]

# ':' or '-' separated, the same separator throughout, either case
MAC_RE = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")

IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[str, int, IP]     # text, an IPv4 address as an integer, or an address object


def normalise_mac(text: object) -> str | None:
    """Lower-case and ':'-separated; None if `text` is not a MAC address."""
    if not isinstance(text, str) or not MAC_RE.fullmatch(text):
        return None
    return text.lower().replace("-", ":")


def is_mac(text: object) -> bool:
    return normalise_mac(text) is not None


def is_group_mac(mac: str) -> bool:
    """Broadcast or multicast (the I/G bit of the first octet): ff:ff:ff:ff:ff:ff, 01:00:5e:...,
    33:33:...  Such a MAC is an address many listen on, never one device's source."""
    return bool(int(mac[:2], 16) & 1)


def is_zero_mac(mac: str) -> bool:
    return mac.replace(":", "").replace("-", "").strip("0") == ""


def is_unicast_mac(mac: str) -> bool:
    """A MAC that can be one device's: not group (broadcast, multicast) and not all zeros."""
    return not is_group_mac(mac) and not is_zero_mac(mac)


def ip_address(value: object) -> IP | None:
    """`value` as an address object (an integer is IPv4, as the flow tables carry it);
    None if it is not an address."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    try:
        if isinstance(value, str):
            return ipaddress.ip_address(value)
        if isinstance(value, bool):
            return None
        return ipaddress.IPv4Address(int(value))        # int, numpy integer
    except (TypeError, ValueError):
        return None


class Subnets:
    """A fixed set of networks: `addr in subnets` for an address as text, integer or object.

    Anything that is not an address is in no subnet."""

    __slots__ = ("networks",)

    def __init__(self, cidrs: Iterable[str | Network] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(
            n if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else ipaddress.ip_network(n)
            for n in cidrs)

    def __contains__(self, addr: object) -> bool:
        ip = ip_address(addr)
        return ip is not None and any(ip in n for n in self.networks)

    def __iter__(self) -> Iterator[Network]:
        return iter(self.networks)

    def __len__(self) -> int:
        return len(self.networks)

    def __repr__(self) -> str:
        return f"Subnets({[str(n) for n in self.networks]!r})"
