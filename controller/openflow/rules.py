"""The one place that decides what OpenFlow rules look like.

Every rule iotguard installs is a `FlowSpec` built here: the table layout, the
cookie scheme and the priority plan live in this module and nowhere else, so a
security rule can never be shadowed by a forwarding rule by accident.  Specs are
plain data; `controller.openflow.compat.flow_mod()` turns them into framework messages,
and only the app sends them.  That keeps this module testable without a switch.

Pipeline (OpenFlow 1.3):

    table 0  SECURITY  LLDP -> controller (prio 65000)
                       response rules (prio 20000..59999, see below)
                       default: goto table 1 (prio 0)
    table 1  FORWARD   per-conversation flows (prio 200 IP, 100 L2), idle timeout
                       table-miss: meter 1 -> controller (prio 0)

Cookies are 64 bits: 0x10C6 in the top 16 bits marks a rule as ours, the next
8 bits name its kind, the low 40 bits an id (a forwarding flow's id is its
`FlowKey` id, so stats replies identify the flow without parsing the match;
a response rule's id is its response's id).

Response priority plan (table 0).  Each slot is base + p, where p (0..999) is
the response's own priority offset; slots are 2000 apart, so an offset never
reorders two slots.  Table 0 applies exactly one rule per packet (the highest
matching), which decides how actions compose:

    50000  REDIRECT       device -> original IP (ports): rewrite dst, goto 1;
                          target -> device replies: rewrite src back, goto 1.
                          Above every drop: its packets never reach the
                          original destination, they end at the operator's
                          target (a sinkhole for a blocked C2 works).
    45000  BLOCK_IP       ipv4_src or ipv4_dst in the prefix: drop (every
                          switch).  Above the device allow lists: an explicit
                          network-wide block beats any device's exception.
    40000  QUARANTINE     allow: ARP, DHCP, DNS to the named servers, the
                          allow list (both directions): goto 1
    38000  QUARANTINE     drop everything from and to the device's MAC
    34000  BLOCK_LATERAL  allow: IPv4 to the gateway and allowed hosts: goto 1
    32000  BLOCK_LATERAL  drop IPv4 from the device to the internal subnets
                          (quarantine's whole block sits above it: the
                          stricter action wins, its holes included)
    24000  RATE_LIMIT     from the device: meter (kbit/s), goto 1
    22000  MIRROR         from/to the device: output IDS port, goto 1

Exceptions sit above the drops they punch through; everything is above the
default goto (0) and inside PRIO_RESPONSE_MIN..MAX.  Because one rule wins per
packet, RATE_LIMIT and MIRROR only act on traffic no higher response rule
matches (a quarantined device's allowed DNS is neither metered nor mirrored).
Two responses with the same action, entity and offset compile to the same
(match, priority): a switch keeps one, and the later add replaces the earlier
(cookie included), so the engine must treat them as one response.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Iterable

from controller.addresses import normalise_mac

# ---------------------------------------------------------------- cookies

COOKIE_MAGIC = 0x10C6 << 48
COOKIE_MAGIC_MASK = 0xFFFF << 48
COOKIE_KIND_SHIFT = 40
COOKIE_KIND_MASK = COOKIE_MAGIC_MASK | (0xFF << COOKIE_KIND_SHIFT)
COOKIE_ID_MASK = (1 << COOKIE_KIND_SHIFT) - 1


class Kind(IntEnum):
    """The controller's own rule kinds; each owns the cookie range MAGIC | kind << 40 | id.

    Response actions own the kinds RESPONSE_KIND_MIN..RESPONSE_KIND_MAX: each action
    module declares its own (controller/response/actions/), and the registry refuses
    two actions with one kind.
    """

    PIPELINE = 0x01       # default goto and table-miss
    CONTROL = 0x02        # LLDP to the controller
    FORWARD = 0x03        # learned per-conversation flows


RESPONSE_KIND_MIN = 0x10
RESPONSE_KIND_MAX = 0x7F


def is_response_kind(kind: int | None) -> bool:
    return kind is not None and RESPONSE_KIND_MIN <= int(kind) <= RESPONSE_KIND_MAX


def cookie(kind: int, ident: int = 0) -> int:
    if not 0 < int(kind) <= 0xFF:
        raise ValueError(f"cookie kind {kind} out of range 1..255")
    if not 0 <= ident <= COOKIE_ID_MASK:
        raise ValueError(f"cookie id {ident} out of range 0..{COOKIE_ID_MASK}")
    return COOKIE_MAGIC | (int(kind) << COOKIE_KIND_SHIFT) | ident


def is_ours(value: int) -> bool:
    return value & COOKIE_MAGIC_MASK == COOKIE_MAGIC


def cookie_kind(value: int) -> int | None:
    """The kind of one of our cookies: a `Kind`, a response action's kind, or None."""
    if not is_ours(value):
        return None
    k = (value >> COOKIE_KIND_SHIFT) & 0xFF
    if is_response_kind(k):
        return k
    try:
        return Kind(k)
    except ValueError:
        return None


def is_response_cookie(value: int) -> bool:
    """Does this cookie mark a response action's rule?"""
    return is_ours(value) and is_response_kind((value >> COOKIE_KIND_SHIFT) & 0xFF)


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
PRIO_FWD_REPLY = 150    # a device's answers (SYN-ACK, RST, UDP from a service port): no port
PRIO_FWD_L2 = 100
PRIO_MISS = 0

class Slot(IntEnum):
    """The response priority plan: each slot's base priority in table 0 (module docstring).

    An action puts each of its rules in one slot; the slot, not the action, decides
    which rule wins when responses overlap."""

    REDIRECT = 50000
    BLOCK_IP = 45000
    QUARANTINE_ALLOW = 40000
    QUARANTINE_DROP = 38000
    LATERAL_ALLOW = 34000
    LATERAL_DROP = 32000
    RATE_LIMIT = 24000
    MIRROR = 22000


PRIO_REDIRECT = Slot.REDIRECT
PRIO_BLOCK_IP = Slot.BLOCK_IP
PRIO_QUARANTINE_ALLOW = Slot.QUARANTINE_ALLOW
PRIO_QUARANTINE_DROP = Slot.QUARANTINE_DROP
PRIO_LATERAL_ALLOW = Slot.LATERAL_ALLOW
PRIO_LATERAL_DROP = Slot.LATERAL_DROP
PRIO_RATE_LIMIT = Slot.RATE_LIMIT
PRIO_MIRROR = Slot.MIRROR
PRIO_OFFSET_MAX = 999           # a response's own offset within its slot

METER_PACKET_IN = 1
METER_LLDP = 2
METER_RESPONSE_MIN = 0x100      # rate_limit meters; the engine allocates ids here
METER_RESPONSE_MAX = 0xFFFF
MAX_HARD_TIMEOUT = 0xFFFF       # OpenFlow's 16-bit timeout fields, in seconds

ETH_TYPE_IP = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_LLDP = 0x88CC
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17
IP_PROTOS = {"icmp": IPPROTO_ICMP, "tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}

_RESPONSE_FIELDS = frozenset({
    "in_port", "eth_src", "eth_dst", "eth_type", "ipv4_src", "ipv4_dst",
    "ip_proto", "tcp_src", "tcp_dst", "udp_src", "udp_dst", "arp_tpa", "arp_spa"})


@dataclass(frozen=True)
class TableSpec:
    """A table owns its id, the match fields it accepts and the kinds it holds."""

    table_id: int
    name: str
    match_fields: frozenset[str]
    kinds: frozenset[int]
    priorities: tuple[int, int]


TABLES: dict[int, TableSpec] = {
    TABLE_SECURITY: TableSpec(
        TABLE_SECURITY, "security", _RESPONSE_FIELDS,
        frozenset({Kind.PIPELINE, Kind.CONTROL}) | frozenset(range(RESPONSE_KIND_MIN, RESPONSE_KIND_MAX + 1)),
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

    ("meter", meter_id) | ("apply", (action, ...)) | ("goto", table_id), in that
    order (the order OpenFlow executes them and Open vSwitch requires), with
    actions ("output", port) where port may be "controller" or "flood", and
    ("set_field", field, value).  No instruction at all means drop.

    Match values are exact, or (value, mask) for the fields in MASKABLE, as
    os-ken's OFPMatch takes them: ("ipv4_dst", ("10.0.0.0", "255.0.0.0")).
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
    """One drop-band meter: `rate` and `burst` in packets (unit "pktps") or
    kilobits (unit "kbps"), per second and per burst."""

    meter_id: int
    rate: int
    burst: int
    command: str = "add"            # add | modify | delete
    unit: str = "pktps"             # pktps | kbps


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
    _check_prerequisites(spec)
    _check_instructions(spec)
    return spec


MASKABLE = frozenset({"eth_src", "eth_dst", "ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa"})

# OpenFlow 1.3 match prerequisites (spec 7.2.3.8): a switch refuses a field
# whose prerequisite is absent (Open vSwitch: OFPBMC_BAD_PREREQ).
_PREREQ: dict[str, tuple[str, int]] = {
    "ipv4_src": ("eth_type", ETH_TYPE_IP), "ipv4_dst": ("eth_type", ETH_TYPE_IP),
    "ip_proto": ("eth_type", ETH_TYPE_IP),
    "arp_spa": ("eth_type", ETH_TYPE_ARP), "arp_tpa": ("eth_type", ETH_TYPE_ARP),
    "tcp_src": ("ip_proto", IPPROTO_TCP), "tcp_dst": ("ip_proto", IPPROTO_TCP),
    "udp_src": ("ip_proto", IPPROTO_UDP), "udp_dst": ("ip_proto", IPPROTO_UDP),
}
_INSTRUCTION_ORDER = {"meter": 0, "apply": 1, "goto": 2}


def _check_prerequisites(spec: FlowSpec) -> None:
    m = spec.match_dict
    for name, value in m.items():
        if isinstance(value, tuple) and name not in MASKABLE:
            raise RuleError(f"match field {name} cannot be masked")
        need = _PREREQ.get(name)
        if need is not None and m.get(need[0]) != need[1]:
            raise RuleError(f"match field {name} needs {need[0]}={need[1]:#x}")
    for ins in spec.instructions:
        if ins[0] != "apply":
            continue
        for act in ins[1]:
            need = _PREREQ.get(act[1]) if act[0] == "set_field" else None
            if need is not None and m.get(need[0]) != need[1]:
                raise RuleError(f"set_field {act[1]} needs match {need[0]}={need[1]:#x}")


def _check_instructions(spec: FlowSpec) -> None:
    order = [_INSTRUCTION_ORDER.get(i[0], -1) for i in spec.instructions]
    if -1 in order:
        raise RuleError(f"unknown instruction in {spec.instructions!r}")
    if order != sorted(set(order)):
        raise RuleError("instructions must be meter, apply, goto: each at most once, in that order")
    for ins in spec.instructions:
        if ins[0] == "goto" and not (ins[1] > spec.table_id and ins[1] in TABLES):
            raise RuleError(f"goto table {ins[1]} from table {spec.table_id}: must go forward")


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
    """Normalise packet fields into the key the forwarder installs (tp_dst None: any port)."""
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
    """A learned conversation: forward it and count it (flow-removed gives the tail).

    A TCP/UDP key without a port is a device's answers to one peer (`is_reply` in
    the forwarder): one flow whatever ports the peer used, below the per-port flows."""
    if not key.is_ip:
        prio = PRIO_FWD_L2
    elif key.ip_proto in (IPPROTO_TCP, IPPROTO_UDP) and key.tp_dst is None:
        prio = PRIO_FWD_REPLY
    else:
        prio = PRIO_FWD_IP
    return check(FlowSpec(
        TABLE_FORWARD, prio,
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


# ---------------------------------------------------------------- responses
#
# Response actions (controller/response/actions/) compose their rules from
# these pieces: `response_rule` puts a match and instructions in one slot of
# table 0 with the action's cookie kind and the response's id, its priority
# offset, its hard_timeout (the switch-side backstop of the ttl; 0: none) and
# OFPFF_SEND_FLOW_REM, so expiry and deletion are observable; `response_meter`
# gives a meter in the response range.  Every rule is checked against the
# table layout before it leaves this module.

GOTO_FORWARD = ("goto", TABLE_FORWARD)
ALLOW: tuple[tuple, ...] = (GOTO_FORWARD,)     # instructions: let it through to the forwarder
DROP: tuple[tuple, ...] = ()                   # instructions: none, the packet is dropped


def hard_timeout(ttl: float | None) -> int:
    """The switch-side backstop for a ttl in seconds: ceil(ttl), 0 for none."""
    if ttl is None:
        return 0
    if not 0 < ttl <= MAX_HARD_TIMEOUT:
        raise ValueError(f"ttl {ttl} outside 0 < ttl <= {MAX_HARD_TIMEOUT} s (OpenFlow's 16-bit hard_timeout)")
    return math.ceil(ttl)


def ipv4_match(value: str) -> str | tuple[str, str]:
    """"10.0.0.5" or "10.0.0.5/32" -> "10.0.0.5"; "10.0.0.0/8" -> ("10.0.0.0", "255.0.0.0")."""
    net = ipaddress.IPv4Network(value, strict=True)
    if net.prefixlen == 32:
        return str(net.network_address)
    return (str(net.network_address), str(net.netmask))


def mac_match(value: str) -> str:
    """`value` normalised for a match field; ValueError if it is not a MAC address."""
    mac = normalise_mac(value)
    if mac is None:
        raise ValueError(f"{value!r} is not a MAC address")
    return mac


def response_rule(kind: int, rid: int, slot: Slot, match: tuple, instructions: tuple, *,
                  offset: int = 0, timeout: int = 0) -> FlowSpec:
    """One response rule: table 0, priority slot + offset, cookie (kind, response id)."""
    if not is_response_kind(kind):
        raise RuleError(f"cookie kind {kind:#x} is not a response kind "
                        f"({RESPONSE_KIND_MIN:#x}..{RESPONSE_KIND_MAX:#x})")
    if not 0 <= offset <= PRIO_OFFSET_MAX:
        raise RuleError(f"priority offset {offset} outside 0..{PRIO_OFFSET_MAX}")
    return check(FlowSpec(TABLE_SECURITY, Slot(slot) + offset, cookie(kind, rid), match=match,
                          instructions=instructions, hard_timeout=timeout, send_flow_removed=True))


def response_meter(meter_id: int, rate: int, burst: int, unit: str) -> MeterSpec:
    """A drop meter for a response, in kbit/s (unit "kbps") or packets/s ("pktps").
    The meter must reach the switch before the flow that names it."""
    if not METER_RESPONSE_MIN <= meter_id <= METER_RESPONSE_MAX:
        raise RuleError(f"response meter id {meter_id:#x} outside "
                        f"{METER_RESPONSE_MIN:#x}..{METER_RESPONSE_MAX:#x}")
    if unit not in ("kbps", "pktps"):
        raise RuleError(f"meter unit {unit!r} is neither kbps nor pktps")
    if rate <= 0 or burst <= 0:
        raise RuleError("rate and burst must be positive")
    return MeterSpec(meter_id, int(rate), int(burst), unit=unit)


def metered(meter_id: int) -> tuple[tuple, ...]:
    """Instructions: through a meter, then to the forwarder."""
    return (("meter", meter_id), GOTO_FORWARD)


def rewrite(*fields: tuple[str, Any]) -> tuple[tuple, ...]:
    """Instructions: set these fields, then to the forwarder."""
    return (("apply", tuple(("set_field", name, value) for name, value in fields)), GOTO_FORWARD)


def copy_to(port: int) -> tuple[tuple, ...]:
    """Instructions: a copy out of `port` (an IDS), and forward as usual."""
    if not 0 < port < 0xFFFFFF00:
        raise RuleError(f"IDS port {port} is not a physical port")
    return (("apply", (("output", port),)), GOTO_FORWARD)


def from_mac(mac: str, *match: tuple[str, Any]) -> tuple[tuple[str, Any], ...]:
    return (("eth_src", mac_match(mac)),) + match


def to_mac(mac: str, *match: tuple[str, Any]) -> tuple[tuple[str, Any], ...]:
    return (("eth_dst", mac_match(mac)),) + match


def l4_matches(proto: str | None, ports: tuple[int, ...], side: str) -> list[tuple[tuple[str, Any], ...]]:
    """Match parts for a protocol and ports on one side ("src" or "dst"), one per port."""
    if proto is None:
        if ports:
            raise RuleError("ports need a protocol (tcp or udp)")
        return [()]
    if proto not in IP_PROTOS:
        raise RuleError(f"unknown protocol {proto!r}; one of {sorted(IP_PROTOS)}")
    base = (("ip_proto", IP_PROTOS[proto]),)
    if not ports:
        return [base]
    if proto == "icmp":
        raise RuleError("icmp has no ports")
    for p in ports:
        if not 0 < p < 65536:
            raise RuleError(f"port {p} outside 1..65535")
    return [base + ((f"{proto}_{side}", p),) for p in ports]


def delete_response(r_id: int, kind: int) -> FlowSpec:
    """Remove one response's rules from table 0: exact cookie, full mask."""
    return check(FlowSpec(TABLE_SECURITY, 0, cookie(kind, r_id), command="delete",
                          cookie_mask=0xFFFF_FFFF_FFFF_FFFF))


def delete_meter(meter_id: int) -> MeterSpec:
    return MeterSpec(meter_id, 0, 0, command="delete", unit="kbps")


def layout_rows(responses: Iterable[tuple[str, ...]] = ()) -> Iterable[tuple[str, ...]]:
    """The README's table layout, generated so the docs cannot drift.  `responses` are
    the response actions' rows (`controller.response.actions.layout_rows()` adds them)."""
    yield ("table", "priority", "match", "action", "cookie kind")
    yield ("0 security", str(PRIO_LLDP), "eth_type=0x88cc (LLDP)", "meter 2, controller", "CONTROL 0x02")
    yield from responses
    yield ("0 security", str(PRIO_DEFAULT), "any", "goto table 1", "PIPELINE 0x01")
    yield ("1 forward", str(PRIO_FWD_IP), "eth_src, eth_dst, ipv4_dst, ip_proto, tcp/udp_dst",
           "output port", "FORWARD 0x03")
    yield ("1 forward", str(PRIO_FWD_REPLY), "eth_src, eth_dst, ipv4_dst, ip_proto (answers: SYN-ACK, RST, "
           "UDP from a port below 1024)", "output port", "FORWARD 0x03")
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
