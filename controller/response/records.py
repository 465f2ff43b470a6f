"""Response records, before any OpenFlow exists (Zeek NetControl style).

A `Response` is a small frozen record: what to do (`action`), about what
(`entity`), how (`params`, one small dataclass per action), for how long
(`ttl`) and why (`playbook`, `reason`).  The engine decides and stores these;
`compile_response` turns one into (dpid, FlowSpec | MeterSpec) pairs through
the builders in `controller.openflow.rules`, the only place rules are built.  Pure: no
framework, no I/O.

Where the rules go:

- device actions (quarantine, block_lateral, redirect, rate_limit) go to the
  device's edge switch.  When its location is unknown (`edge=None`, e.g. right
  after a restart, before the device has sent anything) they go to every
  switch instead: their matches are on the device's MAC, so they mean the same
  anywhere and the first switch a packet meets enforces them.
- block_ip goes to every switch.
- mirror goes to the IDS's switch (`MirrorParams.dpid`), and only when the
  device is on that switch too (or its location is unknown): output to a port
  on another switch would need a tunnel or a path through trunks that the
  forwarder also uses, which is not built.  A device elsewhere is refused.

Limitations (see also controller/openflow/rules.py's docstring for how actions combine):

- redirect with `original_ip` rewrites statelessly, so the reverse rewrite can
  restore exactly one original address: one target stands in for one original
  IP per device and ports, and anything else the target sends the device on
  those ports is rewritten too.  Without `original_ip` (every destination) only
  the destination MAC is rewritten and the target must itself answer for any
  address (iptables REDIRECT or TPROXY).
- quarantine and block_lateral match IPv4 and MAC: a device that changes its
  MAC escapes them (the location is not pinned to the port, so a shared port,
  e.g. an access point, keeps working for the other devices on it).
  block_lateral does not touch IPv6 or IPv4 multicast (add 224.0.0.0/4 to the
  internal subnets to block mDNS/SSDP discovery).
- rate_limit meters what the device sends, not what it receives.
- a ttl is at most 65535 s (OpenFlow's 16-bit hard_timeout, the switch-side
  backstop); longer responses are refused rather than left without one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from controller.openflow import rules
from controller.openflow.rules import FlowSpec, Kind, MeterSpec
from controller.network.topology import Location

ACTIONS: dict[str, Kind] = {
    "quarantine": Kind.QUARANTINE,
    "block_lateral": Kind.BLOCK_LATERAL,
    "redirect": Kind.REDIRECT,
    "rate_limit": Kind.RATE_LIMIT,
    "block_ip": Kind.BLOCK_IP,
    "mirror": Kind.MIRROR,
}
DEVICE_ACTIONS = frozenset({"quarantine", "block_lateral", "redirect", "rate_limit", "mirror"})


class ResponseError(ValueError):
    """A response that cannot become rules (bad record, or nowhere to put it)."""


def _ip(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ResponseError(f"{what}: {value!r} is not an IPv4 address") from None


def _net(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError:
        raise ResponseError(f"{what}: {value!r} is not an IPv4 address or prefix "
                            "(host bits must be zero)") from None


def _mac(value: str, what: str) -> str:
    try:
        return rules.mac_match(value)
    except ValueError:
        raise ResponseError(f"{what}: {value!r} is not a MAC address") from None


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Entity:
    """What a response is about: a device (`mac`, and its IPv4 `ip` when known)
    or a remote address (`prefix`: "203.0.113.7" or "198.51.100.0/24")."""

    mac: str | None = None
    ip: str | None = None
    prefix: str | None = None

    def __post_init__(self) -> None:
        if self.mac is None and self.ip is None and self.prefix is None:
            raise ResponseError("entity needs a mac, an ip or a prefix")
        if self.mac is not None:
            _set(self, "mac", _mac(self.mac, "entity.mac"))
        if self.ip is not None:
            _set(self, "ip", _ip(self.ip, "entity.ip"))
        if self.prefix is not None:
            _set(self, "prefix", _net(self.prefix, "entity.prefix"))


@dataclass(frozen=True)
class Allow:
    """One quarantine exception: an address or prefix, a protocol ("tcp", "udp",
    "icmp", or None for all IPv4) and ports (() for all); both directions."""

    ip: str
    proto: str | None = None
    ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _set(self, "ip", _net(self.ip, "allow.ip"))
        _set(self, "ports", tuple(int(p) for p in self.ports))
        _check_l4(self.proto, self.ports, "allow")


def _check_l4(proto: str | None, ports: tuple[int, ...], what: str) -> None:
    if proto is not None and proto not in rules.IP_PROTOS:
        raise ResponseError(f"{what}.proto: {proto!r} is not one of {sorted(rules.IP_PROTOS)}")
    if ports and proto not in ("tcp", "udp"):
        raise ResponseError(f"{what}.ports need proto tcp or udp")
    for p in ports:
        if not 0 < p < 65536:
            raise ResponseError(f"{what}.ports: {p} is outside 1..65535")


@dataclass(frozen=True)
class QuarantineParams:
    allow: tuple[Allow, ...] = ()
    dhcp: bool = True
    dns_servers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _set(self, "allow", tuple(self.allow))
        _set(self, "dns_servers", tuple(_ip(s, "quarantine.dns_servers") for s in self.dns_servers))


@dataclass(frozen=True)
class BlockLateralParams:
    internal_subnets: tuple[str, ...]
    gateway_ip: str
    gateway_mac: str | None = None      # when given, the gateway exception also pins eth_dst
    allow: tuple[str, ...] = ()         # addresses or prefixes the device may still reach

    def __post_init__(self) -> None:
        nets = tuple(_net(n, "block_lateral.internal_subnets") for n in self.internal_subnets)
        if not nets:
            raise ResponseError("block_lateral.internal_subnets is empty")
        if "0.0.0.0/0" in nets:
            raise ResponseError("block_lateral.internal_subnets: 0.0.0.0/0 would block the internet too")
        _set(self, "internal_subnets", nets)
        _set(self, "gateway_ip", _ip(self.gateway_ip, "block_lateral.gateway_ip"))
        if self.gateway_mac is not None:
            _set(self, "gateway_mac", _mac(self.gateway_mac, "block_lateral.gateway_mac"))
        _set(self, "allow", tuple(_net(a, "block_lateral.allow") for a in self.allow))


@dataclass(frozen=True)
class RedirectParams:
    """Steer to `target_ip` via `target_mac` (the next hop toward it).  With
    `original_ip`, only traffic to that address, rewritten both ways; without,
    traffic to any address, MAC rewrite only (see the module docstring)."""

    target_ip: str
    target_mac: str
    original_ip: str | None = None
    proto: str | None = None            # "tcp" | "udp" | "icmp" | None (all IPv4)
    ports: tuple[int, ...] = ()         # destination ports; () for all

    def __post_init__(self) -> None:
        _set(self, "target_ip", _ip(self.target_ip, "redirect.target_ip"))
        _set(self, "target_mac", _mac(self.target_mac, "redirect.target_mac"))
        if self.original_ip is not None:
            _set(self, "original_ip", _ip(self.original_ip, "redirect.original_ip"))
            if self.original_ip == self.target_ip:
                raise ResponseError("redirect.original_ip is the target itself")
        _set(self, "ports", tuple(int(p) for p in self.ports))
        _check_l4(self.proto, self.ports, "redirect")


@dataclass(frozen=True)
class RateLimitParams:
    kbps: int
    burst_kbits: int | None = None      # None: 100 ms at the rate, at least 64 kbit

    def __post_init__(self) -> None:
        if not 0 < self.kbps <= 0xFFFFFFFF:
            raise ResponseError(f"rate_limit.kbps: {self.kbps} is not a positive 32-bit rate")
        if self.burst_kbits is not None and not 0 < self.burst_kbits <= 0xFFFFFFFF:
            raise ResponseError(f"rate_limit.burst_kbits: {self.burst_kbits} is not positive")

    @property
    def burst(self) -> int:
        return self.burst_kbits if self.burst_kbits is not None else max(self.kbps // 10, 64)


@dataclass(frozen=True)
class BlockIpParams:
    """Nothing to add: the address or prefix to block is the entity's `prefix`."""


@dataclass(frozen=True)
class MirrorParams:
    dpid: int       # the switch the IDS is plugged into
    port: int       # and its port there

    def __post_init__(self) -> None:
        if not 0 < self.port < 0xFFFFFF00:
            raise ResponseError(f"mirror.port: {self.port} is not a physical port")


Params = Union[QuarantineParams, BlockLateralParams, RedirectParams, RateLimitParams,
               BlockIpParams, MirrorParams]
PARAMS: dict[str, type] = {
    "quarantine": QuarantineParams, "block_lateral": BlockLateralParams,
    "redirect": RedirectParams, "rate_limit": RateLimitParams,
    "block_ip": BlockIpParams, "mirror": MirrorParams,
}


@dataclass(frozen=True)
class Response:
    """One decided response.  `id` is the low 40 bits of its rules' cookies;
    `priority` is its offset (0..999) within its action's slot; `ttl` seconds
    (None: until released), counted from `created` (unix seconds)."""

    id: int
    action: str
    entity: Entity
    params: Params
    ttl: float | None = None
    priority: int = 0
    created: float = 0.0
    playbook: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int) or \
                not 0 <= self.id <= rules.COOKIE_ID_MASK:
            raise ResponseError(f"response id {self.id!r} outside the cookie's 0..{rules.COOKIE_ID_MASK}")
        if self.action not in ACTIONS:
            raise ResponseError(f"unknown action {self.action!r}; one of {sorted(ACTIONS)}")
        if type(self.params) is not PARAMS[self.action]:
            raise ResponseError(f"{self.action} needs {PARAMS[self.action].__name__}, "
                                f"not {type(self.params).__name__}")
        if self.action in DEVICE_ACTIONS and self.entity.mac is None:
            raise ResponseError(f"{self.action} needs the device's MAC (entity.mac)")
        if self.action == "block_ip":
            if self.entity.prefix is None:
                raise ResponseError("block_ip needs entity.prefix")
            if self.entity.prefix == "0.0.0.0/0":
                raise ResponseError("block_ip 0.0.0.0/0 would drop all IPv4")
        if self.ttl is not None and not 0 < self.ttl <= rules.MAX_HARD_TIMEOUT:
            raise ResponseError(f"ttl {self.ttl} outside 0 < ttl <= {rules.MAX_HARD_TIMEOUT} s "
                                "(the switch backstop is OpenFlow's 16-bit hard_timeout)")
        if not 0 <= self.priority <= rules.PRIO_OFFSET_MAX:
            raise ResponseError(f"priority offset {self.priority} outside 0..{rules.PRIO_OFFSET_MAX}")

    @property
    def kind(self) -> Kind:
        return ACTIONS[self.action]

    @property
    def expires(self) -> float | None:
        return None if self.ttl is None else self.created + self.ttl


# ---------------------------------------------------------------- compilation

Spec = Union[FlowSpec, MeterSpec]


def _timeout(r: Response, now: float | None) -> int:
    if r.ttl is None:
        return 0
    if now is None:
        return rules.hard_timeout(r.ttl)
    left = r.created + r.ttl - now
    if left <= 0:
        raise ResponseError(f"response {r.id} expired {-left:.1f} s ago")
    return rules.hard_timeout(left)


def _targets(r: Response, edge: Location | None, switches: Sequence[int]) -> list[int]:
    every = sorted(set(switches))
    if r.action == "block_ip":
        return every
    if r.action == "mirror":
        ids = r.params.dpid  # type: ignore[union-attr]
        if edge is not None and edge.dpid != ids:
            raise ResponseError(f"mirror: the device is on switch {edge.dpid:#x}, the IDS on {ids:#x}; "
                                "mirroring across switches is not supported")
        return [ids]
    return [edge.dpid] if edge is not None else every


def _flows(r: Response, timeout: int, meter_id: int | None) -> list[Spec]:
    p, mac, kw = r.params, r.entity.mac, {"offset": r.priority, "timeout": timeout}
    if isinstance(p, QuarantineParams):
        return list(rules.quarantine(r.id, mac, ip=r.entity.ip,
                                     allow=[(a.ip, a.proto, a.ports) for a in p.allow],
                                     dhcp=p.dhcp, dns_servers=p.dns_servers, **kw))
    if isinstance(p, BlockLateralParams):
        return list(rules.block_lateral(r.id, mac, p.internal_subnets, p.gateway_ip,
                                        gateway_mac=p.gateway_mac, allow=p.allow, **kw))
    if isinstance(p, RedirectParams):
        return list(rules.redirect(r.id, mac, p.target_ip, p.target_mac, original_ip=p.original_ip,
                                   proto=p.proto, ports=p.ports, **kw))
    if isinstance(p, RateLimitParams):
        if meter_id is None:
            raise ResponseError("rate_limit needs a meter id (the engine allocates one in "
                                f"{rules.METER_RESPONSE_MIN:#x}..{rules.METER_RESPONSE_MAX:#x})")
        return list(rules.rate_limit(r.id, mac, meter_id, p.kbps, p.burst, **kw))
    if isinstance(p, BlockIpParams):
        return list(rules.block_ip(r.id, r.entity.prefix, **kw))
    if isinstance(p, MirrorParams):
        return list(rules.mirror(r.id, mac, p.port, **kw))
    raise ResponseError(f"no compiler for {type(p).__name__}")  # pragma: no cover


def compile_response(r: Response, edge: Location | None, switches: Sequence[int], *,
                     meter_id: int | None = None, now: float | None = None) -> list[tuple[int, Spec]]:
    """The (dpid, spec) pairs that enforce `r`, in the order to send them (a
    meter before the flow that names it).  `edge` is the device's location
    (None: unknown), `switches` every connected switch, `meter_id` the meter
    the engine allocated for a rate_limit.  With `now`, the hard_timeout is the
    time left (for re-installing after a restart or reconnect), else the ttl."""
    timeout = _timeout(r, now)
    try:
        specs = _flows(r, timeout, meter_id)
    except rules.RuleError as e:
        raise ResponseError(str(e)) from e
    return [(dpid, spec) for dpid in _targets(r, edge, switches) for spec in specs]


def release_response(r: Response, dpids: Iterable[int], *,
                     meter_id: int | None = None) -> list[tuple[int, Spec]]:
    """Undo `r` on the switches it was installed on: its flows by exact cookie,
    then (rate_limit) its meter."""
    dpids = sorted(set(dpids))
    out: list[tuple[int, Spec]] = [(d, rules.delete_response(r.id, r.kind)) for d in dpids]
    if r.action == "rate_limit" and meter_id is not None:
        out += [(d, rules.delete_meter(meter_id)) for d in dpids]
    return out
