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
PRIO_FWD_REPLY = 150    # a device's answers (SYN-ACK, RST, UDP from a service port): no port
PRIO_FWD_L2 = 100
PRIO_MISS = 0

# Response slots: base priorities in table 0 (see the module docstring).
PRIO_REDIRECT = 50000
PRIO_BLOCK_IP = 45000
PRIO_QUARANTINE_ALLOW = 40000
PRIO_QUARANTINE_DROP = 38000
PRIO_LATERAL_ALLOW = 34000
PRIO_LATERAL_DROP = 32000
PRIO_RATE_LIMIT = 24000
PRIO_MIRROR = 22000
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
# Each builder returns the checked rules of one response for one switch; the
# caller (controller.response.records) decides which switches.  All rules are in table
# 0, in the response's slot (+ its offset), with cookie(kind, response id),
# hard_timeout as the switch-side backstop of the ttl (0: none) and
# OFPFF_SEND_FLOW_REM, so expiry and deletion are observable.

GOTO_FORWARD = ("goto", TABLE_FORWARD)


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


def _response(kind: Kind, rid: int, base: int, offset: int, match: tuple, instructions: tuple,
              timeout: int) -> FlowSpec:
    if not 0 <= offset <= PRIO_OFFSET_MAX:
        raise RuleError(f"priority offset {offset} outside 0..{PRIO_OFFSET_MAX}")
    return check(FlowSpec(TABLE_SECURITY, base + offset, cookie(kind, rid), match=match,
                          instructions=instructions, hard_timeout=timeout, send_flow_removed=True))


def _l4(proto: str | None, ports: tuple[int, ...], side: str) -> list[tuple[tuple[str, Any], ...]]:
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


def quarantine(rid: int, mac: str, *, ip: str | None = None,
               allow: Iterable[tuple[str, str | None, tuple[int, ...]]] = (),
               dhcp: bool = True, dns_servers: Iterable[str] = (), offset: int = 0,
               timeout: int = 0) -> list[FlowSpec]:
    """Drop everything from and to `mac`, except (goto table 1, both directions):
    ARP (from the device only with arp_spa=`ip` when known: it cannot poison
    others' caches), DHCP, DNS (udp and tcp 53) to each server, and each allow
    entry (ip or prefix, protocol or None for all IPv4, ports or () for all)."""
    mac = mac_match(mac)
    allow_p, drop_p = PRIO_QUARANTINE_ALLOW, PRIO_QUARANTINE_DROP
    out_ip = (("eth_src", mac), ("eth_type", ETH_TYPE_IP))
    in_ip = (("eth_dst", mac), ("eth_type", ETH_TYPE_IP))
    arp_from = (("eth_src", mac), ("eth_type", ETH_TYPE_ARP))
    if ip is not None:
        arp_from += (("arp_spa", ipv4_match(ip)),)
    matches = [arp_from, (("eth_dst", mac), ("eth_type", ETH_TYPE_ARP))]
    if dhcp:
        matches += [out_ip + (("ip_proto", IPPROTO_UDP), ("udp_src", 68), ("udp_dst", 67)),
                    in_ip + (("ip_proto", IPPROTO_UDP), ("udp_src", 67), ("udp_dst", 68))]
    for server in dns_servers:
        dst = ipv4_match(server)
        for proto in ("udp", "tcp"):
            matches.append(out_ip + (("ipv4_dst", dst),) + _l4(proto, (53,), "dst")[0])
            matches.append(in_ip + (("ipv4_src", dst),) + _l4(proto, (53,), "src")[0])
    for host, proto, ports in allow:
        addr = ipv4_match(host)
        for fwd, back in zip(_l4(proto, tuple(ports), "dst"), _l4(proto, tuple(ports), "src")):
            matches.append(out_ip + (("ipv4_dst", addr),) + fwd)
            matches.append(in_ip + (("ipv4_src", addr),) + back)
    flows = [_response(Kind.QUARANTINE, rid, allow_p, offset, m, (GOTO_FORWARD,), timeout)
             for m in matches]
    flows += [_response(Kind.QUARANTINE, rid, drop_p, offset, (("eth_src", mac),), (), timeout),
              _response(Kind.QUARANTINE, rid, drop_p, offset, (("eth_dst", mac),), (), timeout)]
    return flows


def block_lateral(rid: int, mac: str, internal_subnets: Iterable[str], gateway_ip: str, *,
                  gateway_mac: str | None = None, allow: Iterable[str] = (), offset: int = 0,
                  timeout: int = 0) -> list[FlowSpec]:
    """Drop IPv4 from `mac` to each internal subnet, except the gateway IP (only
    through `gateway_mac` when given) and the allowed hosts or prefixes, which
    go to table 1.  Everything else (the internet, ARP, broadcasts) is untouched."""
    mac = mac_match(mac)
    base = (("eth_src", mac), ("eth_type", ETH_TYPE_IP))
    gw = base + (("ipv4_dst", ipv4_match(gateway_ip)),)
    if gateway_mac is not None:
        gw = (("eth_src", mac), ("eth_dst", mac_match(gateway_mac))) + gw[1:]
    flows = [_response(Kind.BLOCK_LATERAL, rid, PRIO_LATERAL_ALLOW, offset, m, (GOTO_FORWARD,), timeout)
             for m in [gw] + [base + (("ipv4_dst", ipv4_match(h)),) for h in allow]]
    subnets = [ipv4_match(n) for n in internal_subnets]
    if not subnets:
        raise RuleError("block_lateral needs at least one internal subnet")
    if ("0.0.0.0", "0.0.0.0") in subnets:
        raise RuleError("0.0.0.0/0 is not an internal subnet: it would block the internet too")
    flows += [_response(Kind.BLOCK_LATERAL, rid, PRIO_LATERAL_DROP, offset,
                        base + (("ipv4_dst", n),), (), timeout) for n in subnets]
    return flows


def redirect(rid: int, mac: str, target_ip: str, target_mac: str, *, original_ip: str | None = None,
             proto: str | None = None, ports: tuple[int, ...] = (), offset: int = 0,
             timeout: int = 0) -> list[FlowSpec]:
    """Steer the device's IPv4 (all, or one protocol and its destination ports)
    to a target host; the forwarder (table 1) then delivers it.

    With `original_ip` (L3 mode): only traffic to that address is steered,
    rewritten to eth_dst=target_mac, ipv4_dst=target_ip; replies from the target
    to the device get ipv4_src=original_ip back, so connections work
    unmodified.  A stateless rewrite can restore one original address only, so
    one target stands in for one original IP per device and ports.

    Without it (L2 mode): traffic to any address gets eth_dst=target_mac only;
    the target must accept packets for any destination address and answer as
    that address (e.g. iptables `-t nat -j REDIRECT`, or TPROXY), so no reverse
    rewrite is needed.  target_mac is the next hop toward the target: the
    target itself on the LAN, or the gateway."""
    mac, target_mac = mac_match(mac), mac_match(target_mac)
    target = ipv4_match(target_ip)
    if isinstance(target, tuple):
        raise RuleError("redirect target must be one address")
    out = (("eth_src", mac), ("eth_type", ETH_TYPE_IP))
    back = (("eth_dst", mac), ("eth_type", ETH_TYPE_IP))
    flows = []
    if original_ip is None:
        rewrite = ("apply", (("set_field", "eth_dst", target_mac),))
        for l4 in _l4(proto, ports, "dst"):
            flows.append(_response(Kind.REDIRECT, rid, PRIO_REDIRECT, offset, out + l4,
                                   (rewrite, GOTO_FORWARD), timeout))
        return flows
    original = ipv4_match(original_ip)
    if isinstance(original, tuple):
        raise RuleError("redirect original_ip must be one address (the reverse rewrite restores it)")
    if original == target:
        raise RuleError("redirect original_ip and target_ip are the same address")
    rewrite = ("apply", (("set_field", "eth_dst", target_mac), ("set_field", "ipv4_dst", target)))
    restore = ("apply", (("set_field", "ipv4_src", original),))
    for fwd, rev in zip(_l4(proto, ports, "dst"), _l4(proto, ports, "src")):
        flows.append(_response(Kind.REDIRECT, rid, PRIO_REDIRECT, offset,
                               out + (("ipv4_dst", original),) + fwd, (rewrite, GOTO_FORWARD), timeout))
        flows.append(_response(Kind.REDIRECT, rid, PRIO_REDIRECT, offset,
                               back + (("ipv4_src", target),) + rev, (restore, GOTO_FORWARD), timeout))
    return flows


def rate_limit(rid: int, mac: str, meter_id: int, kbps: int, burst_kbits: int, *, offset: int = 0,
               timeout: int = 0) -> tuple[MeterSpec, FlowSpec]:
    """A kbit/s drop meter and the flow sending everything from `mac` through it.
    The meter must reach the switch before the flow that names it."""
    if not METER_RESPONSE_MIN <= meter_id <= METER_RESPONSE_MAX:
        raise RuleError(f"response meter id {meter_id:#x} outside "
                        f"{METER_RESPONSE_MIN:#x}..{METER_RESPONSE_MAX:#x}")
    if kbps <= 0 or burst_kbits <= 0:
        raise RuleError("rate and burst must be positive")
    meter = MeterSpec(meter_id, int(kbps), int(burst_kbits), unit="kbps")
    flow = _response(Kind.RATE_LIMIT, rid, PRIO_RATE_LIMIT, offset, (("eth_src", mac_match(mac)),),
                     (("meter", meter_id), GOTO_FORWARD), timeout)
    return meter, flow


def block_ip(rid: int, prefix: str, *, offset: int = 0, timeout: int = 0) -> list[FlowSpec]:
    """Drop IPv4 from and to a remote address or prefix (two rules; every switch)."""
    addr = ipv4_match(prefix)
    if addr == ("0.0.0.0", "0.0.0.0"):
        raise RuleError("block_ip 0.0.0.0/0 would drop all IPv4")
    ip = (("eth_type", ETH_TYPE_IP),)
    return [_response(Kind.BLOCK_IP, rid, PRIO_BLOCK_IP, offset, ip + ((field, addr),), (), timeout)
            for field in ("ipv4_src", "ipv4_dst")]


def mirror(rid: int, mac: str, ids_port: int, *, offset: int = 0, timeout: int = 0) -> list[FlowSpec]:
    """Copy everything from and to `mac` out of the IDS port, and forward it as usual."""
    mac = mac_match(mac)
    if not 0 < ids_port < 0xFFFFFF00:
        raise RuleError(f"IDS port {ids_port} is not a physical port")
    ins = (("apply", (("output", ids_port),)), GOTO_FORWARD)
    return [_response(Kind.MIRROR, rid, PRIO_MIRROR, offset, ((field, mac),), ins, timeout)
            for field in ("eth_src", "eth_dst")]


def delete_response(r_id: int, kind: Kind) -> FlowSpec:
    """Remove one response's rules from table 0: exact cookie, full mask."""
    return check(FlowSpec(TABLE_SECURITY, 0, cookie(kind, r_id), command="delete",
                          cookie_mask=0xFFFF_FFFF_FFFF_FFFF))


def delete_meter(meter_id: int) -> MeterSpec:
    return MeterSpec(meter_id, 0, 0, command="delete", unit="kbps")


def layout_rows() -> Iterable[tuple[str, ...]]:
    """The README's table layout, generated so the docs cannot drift."""
    yield ("table", "priority", "match", "action", "cookie kind")
    yield ("0 security", str(PRIO_LLDP), "eth_type=0x88cc (LLDP)", "meter 2, controller", "CONTROL 0x02")
    yield ("0 security", f"{PRIO_REDIRECT}+p", "device MAC to original IP (ports); target to device",
           "rewrite dst (src on replies), goto table 1", "REDIRECT 0x12")
    yield ("0 security", f"{PRIO_BLOCK_IP}+p", "ipv4_src or ipv4_dst in prefix (every switch)", "drop",
           "BLOCK_IP 0x14")
    yield ("0 security", f"{PRIO_QUARANTINE_ALLOW}+p / {PRIO_QUARANTINE_DROP}+p",
           "device MAC: ARP, DHCP, DNS, allow list / anything", "goto table 1 / drop", "QUARANTINE 0x10")
    yield ("0 security", f"{PRIO_LATERAL_ALLOW}+p / {PRIO_LATERAL_DROP}+p",
           "device MAC: IPv4 to gateway, allowed / to internal subnets", "goto table 1 / drop",
           "BLOCK_LATERAL 0x11")
    yield ("0 security", f"{PRIO_RATE_LIMIT}+p", "eth_src=device MAC", "meter (kbit/s), goto table 1",
           "RATE_LIMIT 0x13")
    yield ("0 security", f"{PRIO_MIRROR}+p", "eth_src or eth_dst=device MAC", "output IDS port, goto table 1",
           "MIRROR 0x15")
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
