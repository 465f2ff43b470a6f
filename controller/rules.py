"""The one place that decides what OpenFlow rules look like.

Every rule iotguard installs is a `FlowSpec` built here: the table layout, the
cookie scheme and the priority plan live in this module and nowhere else, so a
security rule can never be shadowed by a forwarding rule by accident.  Specs are
plain data; `controller.compat.flow_mod()` turns them into framework messages,
and only the app sends them.  That keeps this module testable without a switch.

Pipeline (OpenFlow 1.3):

    table 0  SECURITY  LLDP -> controller (prio 65000)
                       response rules (prio 20000..59999, later issues)
                       default: goto table 1 (prio 0)
    table 1  FORWARD   per-conversation flows (prio 200 IP, 100 L2), idle timeout
                       table-miss: meter 1 -> controller (prio 0)

Cookies are 64 bits: 0x10C6 in the top 16 bits marks a rule as ours, the next
8 bits name its kind, the low 40 bits an id (a forwarding flow's id is its
`FlowKey` id, so stats replies identify the flow without parsing the match).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Iterable

# ---------------------------------------------------------------- cookies

COOKIE_MAGIC = 0x10C6 << 48
COOKIE_MAGIC_MASK = 0xFFFF << 48
COOKIE_KIND_SHIFT = 40
COOKIE_KIND_MASK = COOKIE_MAGIC_MASK | (0xFF << COOKIE_KIND_SHIFT)
COOKIE_ID_MASK = (1 << COOKIE_KIND_SHIFT) - 1


class Kind(IntEnum):
    """Rule kinds; each owns the cookie range MAGIC | kind << 40 | id."""

    PIPELINE = 0x01       # default goto and table-miss
    CONTROL = 0x02        # LLDP to the controller
    FORWARD = 0x03        # learned per-conversation flows
    QUARANTINE = 0x10     # response kinds, used by playbooks (issue 4)
    BLOCK_LATERAL = 0x11
    REDIRECT = 0x12
    RATE_LIMIT = 0x13
    BLOCK_IP = 0x14
    MIRROR = 0x15


def cookie(kind: Kind, ident: int = 0) -> int:
    if not 0 <= ident <= COOKIE_ID_MASK:
        raise ValueError(f"cookie id {ident} out of range 0..{COOKIE_ID_MASK}")
    return COOKIE_MAGIC | (int(kind) << COOKIE_KIND_SHIFT) | ident


def is_ours(value: int) -> bool:
    return value & COOKIE_MAGIC_MASK == COOKIE_MAGIC


def cookie_kind(value: int) -> Kind | None:
    if not is_ours(value):
        return None
    try:
        return Kind((value >> COOKIE_KIND_SHIFT) & 0xFF)
    except ValueError:
        return None


def cookie_id(value: int) -> int:
    return value & COOKIE_ID_MASK


# ---------------------------------------------------------------- tables

TABLE_SECURITY = 0
TABLE_FORWARD = 1
TABLE_ALL = 0xFF

# Priority plan.  Response rules get the band between CONTROL and the default.
PRIO_LLDP = 65000
PRIO_RESPONSE_MIN = 20000
PRIO_RESPONSE_MAX = 59999
PRIO_DEFAULT = 0
PRIO_FWD_IP = 200
PRIO_FWD_L2 = 100
PRIO_MISS = 0

METER_PACKET_IN = 1
METER_LLDP = 2

ETH_TYPE_IP = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_LLDP = 0x88CC
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17

_RESPONSE_FIELDS = frozenset({
    "in_port", "eth_src", "eth_dst", "eth_type", "ipv4_src", "ipv4_dst",
    "ip_proto", "tcp_src", "tcp_dst", "udp_src", "udp_dst", "arp_tpa", "arp_spa"})


@dataclass(frozen=True)
class TableSpec:
    """A table owns its id, the match fields it accepts and the kinds it holds."""

    table_id: int
    name: str
    match_fields: frozenset[str]
    kinds: frozenset[Kind]
    priorities: tuple[int, int]


TABLES: dict[int, TableSpec] = {
    TABLE_SECURITY: TableSpec(
        TABLE_SECURITY, "security", _RESPONSE_FIELDS,
        frozenset({Kind.PIPELINE, Kind.CONTROL, Kind.QUARANTINE, Kind.BLOCK_LATERAL,
                   Kind.REDIRECT, Kind.RATE_LIMIT, Kind.BLOCK_IP, Kind.MIRROR}),
        (0, 65535)),
    TABLE_FORWARD: TableSpec(
        TABLE_FORWARD, "forward",
        frozenset({"eth_src", "eth_dst", "eth_type", "ipv4_dst", "ip_proto",
                   "tcp_dst", "udp_dst"}),
        frozenset({Kind.PIPELINE, Kind.FORWARD}),
        (PRIO_MISS, PRIO_FWD_IP)),
}


class RuleError(ValueError):
    """A spec that breaks the table layout: a bug in the caller, never sent."""


# ---------------------------------------------------------------- the data


@dataclass(frozen=True)
class FlowSpec:
    """One flow-mod as data.  `instructions` is a tuple of plain tuples:

    ("goto", table_id) | ("meter", meter_id) | ("apply", (action, ...))
    with actions ("output", port) where port may be "controller" or "flood".
    """

    table_id: int
    priority: int
    cookie: int
    match: tuple[tuple[str, Any], ...] = ()
    instructions: tuple[tuple, ...] = ()
    command: str = "add"            # add | delete | delete_strict
    idle_timeout: int = 0
    hard_timeout: int = 0
    send_flow_removed: bool = False
    cookie_mask: int = 0            # for deletes: which cookie bits must match
    out_port: str | int = "any"     # for deletes

    @property
    def match_dict(self) -> dict[str, Any]:
        return dict(self.match)


@dataclass(frozen=True)
class MeterSpec:
    meter_id: int
    rate_pps: int
    burst: int
    command: str = "add"            # add | modify | delete


def check(spec: FlowSpec) -> FlowSpec:
    """Refuse a spec the table layout does not allow (Faucet-style)."""
    if spec.command != "add":
        if not is_ours(spec.cookie) or spec.cookie_mask & COOKIE_MAGIC_MASK != COOKIE_MAGIC_MASK:
            raise RuleError("deletes must be restricted to iotguard cookies")
        return spec
    table = TABLES.get(spec.table_id)
    if table is None:
        raise RuleError(f"table {spec.table_id} is not in the layout")
    kind = cookie_kind(spec.cookie)
    if kind not in table.kinds:
        raise RuleError(f"cookie kind {kind!r} not allowed in table {table.name}")
    bad = set(spec.match_dict) - table.match_fields
    if bad:
        raise RuleError(f"match fields {sorted(bad)} not allowed in table {table.name}")
    lo, hi = table.priorities
    if not lo <= spec.priority <= hi:
        raise RuleError(f"priority {spec.priority} outside {lo}..{hi} of table {table.name}")
    return spec


# ---------------------------------------------------------------- flow keys


@dataclass(frozen=True)
class FlowKey:
    """What a forwarding flow matches: one conversation of one source device.

    Fine enough to tell each device's destinations and destination ports,
    coarse enough that replies and retransmits reuse the flow.
    """

    eth_src: str
    eth_dst: str
    eth_type: int
    ipv4_dst: str | None = None
    ip_proto: int | None = None
    tp_dst: int | None = None

    @property
    def is_ip(self) -> bool:
        return self.eth_type == ETH_TYPE_IP and self.ipv4_dst is not None

    def match(self) -> tuple[tuple[str, Any], ...]:
        m: list[tuple[str, Any]] = [("eth_src", self.eth_src), ("eth_dst", self.eth_dst),
                                    ("eth_type", self.eth_type)]
        if self.is_ip:
            m.append(("ipv4_dst", self.ipv4_dst))
            if self.ip_proto is not None:
                m.append(("ip_proto", self.ip_proto))
                if self.tp_dst is not None and self.ip_proto == IPPROTO_TCP:
                    m.append(("tcp_dst", self.tp_dst))
                elif self.tp_dst is not None and self.ip_proto == IPPROTO_UDP:
                    m.append(("udp_dst", self.tp_dst))
        return tuple(m)


def flow_key(eth_src: str, eth_dst: str, eth_type: int, ipv4_dst: str | None = None,
             ip_proto: int | None = None, tp_dst: int | None = None) -> FlowKey:
    """Normalise packet fields into the key the forwarder installs."""
    if eth_type != ETH_TYPE_IP or ipv4_dst is None:
        return FlowKey(eth_src, eth_dst, eth_type)
    if ip_proto not in (IPPROTO_TCP, IPPROTO_UDP):
        tp_dst = None
    return FlowKey(eth_src, eth_dst, eth_type, str(ipaddress.IPv4Address(ipv4_dst)),
                   ip_proto, tp_dst)


# ---------------------------------------------------------------- builders


def pipeline(packet_in_rate: int, packet_in_burst: int) -> tuple[list[MeterSpec], list[FlowSpec]]:
    """Meters and base flows a switch gets when it connects."""
    meters = [
        MeterSpec(METER_PACKET_IN, packet_in_rate, packet_in_burst),
        MeterSpec(METER_LLDP, 100, 50),
    ]
    to_ctl = ("apply", (("output", "controller"),))
    flows = [
        FlowSpec(TABLE_SECURITY, PRIO_DEFAULT, cookie(Kind.PIPELINE, 1),
                 instructions=(("goto", TABLE_FORWARD),)),
        FlowSpec(TABLE_SECURITY, PRIO_LLDP, cookie(Kind.CONTROL, 1),
                 match=(("eth_type", ETH_TYPE_LLDP),),
                 instructions=(("meter", METER_LLDP), to_ctl)),
        FlowSpec(TABLE_FORWARD, PRIO_MISS, cookie(Kind.PIPELINE, 2),
                 instructions=(("meter", METER_PACKET_IN), to_ctl)),
    ]
    return meters, [check(f) for f in flows]


def forward(key: FlowKey, flow_id: int, out_port: int, idle_timeout: int) -> FlowSpec:
    """A learned conversation: forward it and count it (flow-removed gives the tail)."""
    return check(FlowSpec(
        TABLE_FORWARD, PRIO_FWD_IP if key.is_ip else PRIO_FWD_L2,
        cookie(Kind.FORWARD, flow_id), match=key.match(),
        instructions=(("apply", (("output", out_port),)),),
        idle_timeout=idle_timeout, send_flow_removed=True))


def delete_all_ours() -> FlowSpec:
    """Remove every rule iotguard owns, in every table, and nothing else."""
    return FlowSpec(TABLE_ALL, 0, COOKIE_MAGIC, command="delete", cookie_mask=COOKIE_MAGIC_MASK)


def delete_kind(kind: Kind, table_id: int = TABLE_ALL) -> FlowSpec:
    return FlowSpec(table_id, 0, cookie(kind), command="delete", cookie_mask=COOKIE_KIND_MASK)


def delete_forwarding_to(mac: str) -> FlowSpec:
    """Forget forwarding flows toward a MAC that moved (they would blackhole)."""
    return FlowSpec(TABLE_FORWARD, 0, cookie(Kind.FORWARD), match=(("eth_dst", mac),),
                    command="delete", cookie_mask=COOKIE_KIND_MASK)


def delete_forwarding_from(mac: str) -> FlowSpec:
    return FlowSpec(TABLE_FORWARD, 0, cookie(Kind.FORWARD), match=(("eth_src", mac),),
                    command="delete", cookie_mask=COOKIE_KIND_MASK)


def layout_rows() -> Iterable[tuple[str, ...]]:
    """The README's table layout, generated so the docs cannot drift."""
    yield ("table", "priority", "match", "action", "cookie kind")
    yield ("0 security", str(PRIO_LLDP), "eth_type=0x88cc (LLDP)", "meter 2, controller", "CONTROL 0x02")
    yield ("0 security", f"{PRIO_RESPONSE_MIN}-{PRIO_RESPONSE_MAX}", "response rules", "drop/redirect/...",
           "0x10-0x15")
    yield ("0 security", str(PRIO_DEFAULT), "any", "goto table 1", "PIPELINE 0x01")
    yield ("1 forward", str(PRIO_FWD_IP), "eth_src, eth_dst, ipv4_dst, ip_proto, tcp/udp_dst",
           "output port", "FORWARD 0x03")
    yield ("1 forward", str(PRIO_FWD_L2), "eth_src, eth_dst, eth_type", "output port", "FORWARD 0x03")
    yield ("1 forward", str(PRIO_MISS), "any (table-miss)", "meter 1, controller", "PIPELINE 0x01")



@dataclass(frozen=True)
class PacketOut:
    """A frame to send out of `out_port` (a port number, "flood" or "table")."""

    data: bytes
    out_port: int | str
    in_port: int | str = "controller"


@dataclass(frozen=True)
class Barrier:
    """Ask the switch to confirm that everything before it was applied."""
