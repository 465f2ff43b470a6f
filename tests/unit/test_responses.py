"""Response records and their compilation to exact OpenFlow 1.3 rules.

Every compiled rule is also encoded by os-ken (`compat.to_message(...).serialize()`)
and, for flow-mods, parsed back by os-ken's own parser and compared with the spec:
the rules are valid OpenFlow 1.3 as os-ken encodes them, masks and set-fields
included.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from types import SimpleNamespace

import pytest

from controller.openflow import compat

from controller.openflow import rules
from controller.response.actions.block_ip import BlockIpPlan as BlockIpParams
from controller.response.actions.block_lateral import BlockLateralPlan as BlockLateralParams
from controller.response.actions.mirror import MirrorPlan as MirrorParams
from controller.response.actions.quarantine import Allow
from controller.response.actions.quarantine import QuarantinePlan as QuarantineParams
from controller.response.actions.rate_limit import RateLimitPlan as RateLimitParams
from controller.response.actions.redirect import RedirectPlan as RedirectParams
from controller.response.records import Entity, Response, ResponseError, compile_response, release_response
from controller.openflow.rules import FlowSpec, MeterSpec, RuleError
from tests.unit.kinds import Kind
from controller.response.actions import REGISTRY
from controller.network.topology import Location
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

DEV, DEV_IP = "02:00:00:00:00:0a", "10.0.0.10"
EDGE = Location(0x1, 3)
SWITCHES = [0x3, 0x1, 0x2]
GOTO = ("goto", 1)
IP, ARP = 0x0800, 0x0806

# cookies: 0x10C6 | kind << 40 | id
Q7 = 0x10C6_10_0000000007
L8 = 0x10C6_11_0000000008
R9 = 0x10C6_12_0000000009
RL10 = 0x10C6_13_000000000A
B11 = 0x10C6_14_000000000B
M12 = 0x10C6_15_000000000C


def table(compiled):
    """(dpid, table, priority, cookie, match, instructions, hard_timeout, flow-removed)."""
    return [(d, s.table_id, s.priority, s.cookie, s.match, s.instructions, s.hard_timeout,
             s.send_flow_removed) for d, s in compiled]


def quarantine(**kw) -> Response:
    params = QuarantineParams(allow=(Allow("10.0.0.50", "tcp", (443,)), Allow("198.51.100.0/24")),
                              dhcp=True, dns_servers=("10.0.0.1",))
    return Response(7, "quarantine", Entity(mac=DEV.upper(), ip=DEV_IP), params, **kw)


def block_lateral(**kw) -> Response:
    params = BlockLateralParams(("10.0.0.0/24", "192.168.0.0/16"), "10.0.0.1",
                                gateway_mac="02:00:00:00:00:01", allow=("10.0.0.53",))
    return Response(8, "block_lateral", Entity(mac=DEV), params, **kw)


def redirect(**kw) -> Response:
    params = RedirectParams("10.0.0.99", "02:00:00:00:00:99", original_ip="10.0.0.20",
                            proto="tcp", ports=(22, 23))
    return Response(9, "redirect", Entity(mac=DEV), params, **kw)


def rate_limit(**kw) -> Response:
    return Response(10, "rate_limit", Entity(mac=DEV), RateLimitParams(2000), **kw)


def block_ip(**kw) -> Response:
    return Response(11, "block_ip", Entity(prefix="203.0.113.0/24"), BlockIpParams(), **kw)


def mirror(**kw) -> Response:
    return Response(12, "mirror", Entity(mac=DEV), MirrorParams(dpid=0x1, port=9), **kw)


def compile_all(now_kw=None):
    """Every action compiled once, with the arguments each needs."""
    return {
        "quarantine": compile_response(quarantine(ttl=600), EDGE, SWITCHES),
        "block_lateral": compile_response(block_lateral(ttl=600), EDGE, SWITCHES),
        "redirect": compile_response(redirect(ttl=600), EDGE, SWITCHES),
        "redirect_l2": compile_response(
            Response(13, "redirect", Entity(mac=DEV), RedirectParams("10.0.0.99", "02:00:00:00:00:99")),
            EDGE, SWITCHES),
        "rate_limit": compile_response(rate_limit(ttl=600), EDGE, SWITCHES, meter_id=0x105),
        "block_ip": compile_response(block_ip(ttl=600), EDGE, SWITCHES),
        "mirror": compile_response(mirror(ttl=600), EDGE, SWITCHES),
    }


# ---------------------------------------------------------------- exact rules


def test_quarantine_exact_rules():
    src = (("eth_src", DEV), ("eth_type", IP))
    dst = (("eth_dst", DEV), ("eth_type", IP))
    allow = [
        (("eth_src", DEV), ("eth_type", ARP), ("arp_spa", DEV_IP)),
        (("eth_dst", DEV), ("eth_type", ARP)),
        src + (("ip_proto", 17), ("udp_src", 68), ("udp_dst", 67)),
        dst + (("ip_proto", 17), ("udp_src", 67), ("udp_dst", 68)),
        src + (("ipv4_dst", "10.0.0.1"), ("ip_proto", 17), ("udp_dst", 53)),
        dst + (("ipv4_src", "10.0.0.1"), ("ip_proto", 17), ("udp_src", 53)),
        src + (("ipv4_dst", "10.0.0.1"), ("ip_proto", 6), ("tcp_dst", 53)),
        dst + (("ipv4_src", "10.0.0.1"), ("ip_proto", 6), ("tcp_src", 53)),
        src + (("ipv4_dst", "10.0.0.50"), ("ip_proto", 6), ("tcp_dst", 443)),
        dst + (("ipv4_src", "10.0.0.50"), ("ip_proto", 6), ("tcp_src", 443)),
        src + (("ipv4_dst", ("198.51.100.0", "255.255.255.0")),),
        dst + (("ipv4_src", ("198.51.100.0", "255.255.255.0")),),
    ]
    expected = [(1, 0, 40000, Q7, m, (GOTO,), 600, True) for m in allow] + [
        (1, 0, 38000, Q7, (("eth_src", DEV),), (), 600, True),
        (1, 0, 38000, Q7, (("eth_dst", DEV),), (), 600, True),
    ]
    assert table(compile_response(quarantine(ttl=600), EDGE, SWITCHES)) == expected


def test_quarantine_without_dhcp_dns_or_known_ip_keeps_arp_only():
    r = Response(7, "quarantine", Entity(mac=DEV), QuarantineParams(dhcp=False), ttl=None)
    assert table(compile_response(r, EDGE, SWITCHES)) == [
        (1, 0, 40000, Q7, (("eth_src", DEV), ("eth_type", ARP)), (GOTO,), 0, True),
        (1, 0, 40000, Q7, (("eth_dst", DEV), ("eth_type", ARP)), (GOTO,), 0, True),
        (1, 0, 38000, Q7, (("eth_src", DEV),), (), 0, True),
        (1, 0, 38000, Q7, (("eth_dst", DEV),), (), 0, True),
    ]


def test_block_lateral_exact_rules():
    src = (("eth_src", DEV), ("eth_type", IP))
    assert table(compile_response(block_lateral(ttl=30.2), EDGE, SWITCHES)) == [
        (1, 0, 34000, L8, (("eth_src", DEV), ("eth_dst", "02:00:00:00:00:01"), ("eth_type", IP),
                           ("ipv4_dst", "10.0.0.1")), (GOTO,), 31, True),
        (1, 0, 34000, L8, src + (("ipv4_dst", "10.0.0.53"),), (GOTO,), 31, True),
        (1, 0, 32000, L8, src + (("ipv4_dst", ("10.0.0.0", "255.255.255.0")),), (), 31, True),
        (1, 0, 32000, L8, src + (("ipv4_dst", ("192.168.0.0", "255.255.0.0")),), (), 31, True),
    ]


def test_redirect_exact_rules_rewrite_both_ways():
    out = (("eth_src", DEV), ("eth_type", IP), ("ipv4_dst", "10.0.0.20"), ("ip_proto", 6))
    back = (("eth_dst", DEV), ("eth_type", IP), ("ipv4_src", "10.0.0.99"), ("ip_proto", 6))
    rewrite = ("apply", (("set_field", "eth_dst", "02:00:00:00:00:99"), ("set_field", "ipv4_dst", "10.0.0.99")))
    restore = ("apply", (("set_field", "ipv4_src", "10.0.0.20"),))
    assert table(compile_response(redirect(ttl=600, priority=5), EDGE, SWITCHES)) == [
        (1, 0, 50005, R9, out + (("tcp_dst", 22),), (rewrite, GOTO), 600, True),
        (1, 0, 50005, R9, back + (("tcp_src", 22),), (restore, GOTO), 600, True),
        (1, 0, 50005, R9, out + (("tcp_dst", 23),), (rewrite, GOTO), 600, True),
        (1, 0, 50005, R9, back + (("tcp_src", 23),), (restore, GOTO), 600, True),
    ]


def test_redirect_every_destination_rewrites_the_mac_only():
    r = Response(13, "redirect", Entity(mac=DEV), RedirectParams("10.0.0.99", "02:00:00:00:00:99"))
    assert table(compile_response(r, EDGE, SWITCHES)) == [
        (1, 0, 50000, 0x10C6_12_000000000D, (("eth_src", DEV), ("eth_type", IP)),
         (("apply", (("set_field", "eth_dst", "02:00:00:00:00:99"),)), GOTO), 0, True),
    ]


def test_rate_limit_exact_meter_and_flow():
    compiled = compile_response(rate_limit(ttl=600), EDGE, SWITCHES, meter_id=0x105)
    assert compiled[0] == (1, MeterSpec(0x105, 2000, 200, unit="kbps"))
    assert table(compiled[1:]) == [
        (1, 0, 24000, RL10, (("eth_src", DEV),), (("meter", 0x105), GOTO), 600, True),
    ]
    explicit = Response(10, "rate_limit", Entity(mac=DEV), RateLimitParams(100, burst_kbits=500))
    assert compile_response(explicit, EDGE, [], meter_id=0x100)[0][1] == MeterSpec(0x100, 100, 500, unit="kbps")
    small = Response(10, "rate_limit", Entity(mac=DEV), RateLimitParams(100))
    assert compile_response(small, EDGE, [], meter_id=0x100)[0][1].burst == 64


def test_block_ip_is_on_every_switch_both_directions():
    ip = (("eth_type", IP),)
    net = ("203.0.113.0", "255.255.255.0")
    assert table(compile_response(block_ip(ttl=600), EDGE, SWITCHES)) == [
        (d, 0, 45000, B11, ip + ((f, net),), (), 600, True)
        for d in (1, 2, 3) for f in ("ipv4_src", "ipv4_dst")]
    one = Response(11, "block_ip", Entity(prefix="203.0.113.7"), BlockIpParams())
    assert [s.match for _, s in compile_response(one, None, [5])] == [
        (("eth_type", IP), ("ipv4_src", "203.0.113.7")), (("eth_type", IP), ("ipv4_dst", "203.0.113.7"))]


def test_mirror_exact_rules():
    ins = (("apply", (("output", 9),)), GOTO)
    assert table(compile_response(mirror(ttl=600), EDGE, SWITCHES)) == [
        (1, 0, 22000, M12, (("eth_src", DEV),), ins, 600, True),
        (1, 0, 22000, M12, (("eth_dst", DEV),), ins, 600, True),
    ]


# ---------------------------------------------------------------- placement


def test_device_actions_go_to_every_switch_when_the_location_is_unknown():
    for r, kw in ((quarantine(), {}), (block_lateral(), {}), (redirect(), {}), (rate_limit(), {"meter_id": 0x100})):
        at_edge = compile_response(r, EDGE, SWITCHES, **kw)
        unknown = compile_response(r, None, SWITCHES, **kw)
        assert {d for d, _ in at_edge} == {1}
        assert {d for d, _ in unknown} == {1, 2, 3}
        assert [s for d, s in unknown if d == 2] == [s for _, s in at_edge]
    # the meter precedes the flow that names it, on every switch
    kinds = [(d, type(s).__name__) for d, s in compile_response(rate_limit(), None, [2, 1], meter_id=0x100)]
    assert kinds == [(1, "MeterSpec"), (1, "FlowSpec"), (2, "MeterSpec"), (2, "FlowSpec")]


def test_mirror_is_at_the_ids_switch_and_refuses_a_device_elsewhere():
    assert {d for d, _ in compile_response(mirror(), None, SWITCHES)} == {1}
    with pytest.raises(ResponseError, match="mirroring across switches"):
        compile_response(mirror(), Location(2, 4), SWITCHES)


def test_rate_limit_needs_a_meter_id_in_the_response_range():
    with pytest.raises(ResponseError, match="needs a meter id"):
        compile_response(rate_limit(), EDGE, SWITCHES)
    for bad in (rules.METER_PACKET_IN, rules.METER_LLDP, 0xFF, 0x10000):
        with pytest.raises(ResponseError, match="outside 0x100..0xffff"):
            compile_response(rate_limit(), EDGE, SWITCHES, meter_id=bad)


# ---------------------------------------------------------------- priorities


SLOTS = [rules.PRIO_REDIRECT, rules.PRIO_BLOCK_IP, rules.PRIO_QUARANTINE_ALLOW, rules.PRIO_QUARANTINE_DROP,
         rules.PRIO_LATERAL_ALLOW, rules.PRIO_LATERAL_DROP, rules.PRIO_RATE_LIMIT, rules.PRIO_MIRROR]


def test_priority_plan_keeps_its_order_for_every_offset():
    assert SLOTS == sorted(SLOTS, reverse=True)
    for higher, lower in zip(SLOTS, SLOTS[1:]):
        assert lower + rules.PRIO_OFFSET_MAX < higher
    assert rules.PRIO_RESPONSE_MIN <= SLOTS[-1]
    assert SLOTS[0] + rules.PRIO_OFFSET_MAX <= rules.PRIO_RESPONSE_MAX < rules.PRIO_LLDP
    assert rules.PRIO_DEFAULT < rules.PRIO_RESPONSE_MIN


@pytest.mark.parametrize("offset", [0, 999])
def test_compiled_priorities_allow_above_drop_and_inside_the_band(offset):
    for name, make in (("quarantine", quarantine), ("block_lateral", block_lateral)):
        flows = [s for _, s in compile_response(make(priority=offset), EDGE, SWITCHES)]
        allows = {s.priority for s in flows if s.instructions == (GOTO,)}
        drops = {s.priority for s in flows if s.instructions == ()}
        assert allows and drops and min(allows) > max(drops), name
    every = [s for c in compile_all().values() for _, s in c if isinstance(s, FlowSpec)]
    every += [s for _, s in compile_response(redirect(priority=offset), EDGE, SWITCHES)]
    for s in every:
        assert s.table_id == rules.TABLE_SECURITY
        assert rules.PRIO_RESPONSE_MIN <= s.priority <= rules.PRIO_RESPONSE_MAX
        assert s.priority > rules.PRIO_DEFAULT
    # the stricter action's exceptions can never open the other's drops, and the reverse
    q = [s for _, s in compile_response(quarantine(priority=0), EDGE, SWITCHES)]
    lat = [s for _, s in compile_response(block_lateral(priority=999), EDGE, SWITCHES)]
    assert min(s.priority for s in q) > max(s.priority for s in lat)
    blk = [s for _, s in compile_response(block_ip(priority=0), EDGE, SWITCHES)]
    assert min(s.priority for s in blk) > max(s.priority for s in q + lat)


def test_offsets_outside_the_slot_are_refused():
    with pytest.raises(ResponseError, match="priority offset 1000"):
        quarantine(priority=1000)
    with pytest.raises(RuleError, match="priority offset -1"):
        REGISTRY.get("block_ip").compile(1, Entity(prefix="203.0.113.7"), BlockIpParams(), offset=-1, timeout=0,
                                         meter_id=None)


# ---------------------------------------------------------------- the table check


@pytest.mark.parametrize("spec, message", [
    (FlowSpec(0, 40000, rules.cookie(Kind.QUARANTINE, 1), match=(("vlan_vid", 5),)),
     "match fields \\['vlan_vid'\\] not allowed in table security"),
    (FlowSpec(0, 40000, rules.cookie(Kind.QUARANTINE, 1), match=(("ipv6_dst", "::1"),)),
     "match fields \\['ipv6_dst'\\] not allowed"),
    (FlowSpec(0, 45000, rules.cookie(Kind.BLOCK_IP, 1), match=(("ipv4_dst", "1.2.3.4"),)),
     "ipv4_dst needs eth_type=0x800"),
    (FlowSpec(0, 45000, rules.cookie(Kind.BLOCK_IP, 1),
              match=(("eth_type", IP), ("ip_proto", 17), ("tcp_dst", 80))), "tcp_dst needs ip_proto=0x6"),
    (FlowSpec(0, 45000, rules.cookie(Kind.BLOCK_IP, 1), match=(("eth_type", IP), ("ip_proto", (6, 0xFF)))),
     "ip_proto cannot be masked"),
    (FlowSpec(0, 40000, rules.cookie(Kind.QUARANTINE, 1), match=(("eth_type", ARP), ("arp_spa", "10.0.0.1")),
              instructions=(GOTO, ("apply", (("output", 3),)))), "meter, apply, goto"),
    (FlowSpec(0, 50000, rules.cookie(Kind.REDIRECT, 1), match=(("eth_src", DEV),),
              instructions=(("apply", (("set_field", "ipv4_dst", "10.0.0.9"),)), GOTO)),
     "set_field ipv4_dst needs match eth_type=0x800"),
    (FlowSpec(0, 22000, rules.cookie(Kind.MIRROR, 1), instructions=(("goto", 0),)), "must go forward"),
    (FlowSpec(1, 100, rules.cookie(Kind.MIRROR, 1)), "not allowed in table forward"),
])
def test_check_rejects_response_rules_outside_the_layout(spec, message):
    with pytest.raises(RuleError, match=message):
        rules.check(spec)


# ---------------------------------------------------------------- timeouts


def test_ttl_becomes_the_hard_timeout_and_a_reinstall_gets_the_time_left():
    r = quarantine(ttl=90.1, created=1000.0)
    assert {s.hard_timeout for _, s in compile_response(r, EDGE, SWITCHES)} == {91}
    assert {s.hard_timeout for _, s in compile_response(r, EDGE, SWITCHES, now=1050.0)} == {41}
    with pytest.raises(ResponseError, match="expired"):
        compile_response(r, EDGE, SWITCHES, now=1090.1)
    assert r.expires == pytest.approx(1090.1) and quarantine().expires is None
    assert {s.hard_timeout for _, s in compile_response(quarantine(), EDGE, SWITCHES)} == {0}


@pytest.mark.parametrize("ttl", [0, -1, 65535.5, 86400])
def test_ttl_outside_the_openflow_timeout_is_refused(ttl):
    with pytest.raises(ResponseError, match="ttl"):
        quarantine(ttl=ttl)


# ---------------------------------------------------------------- records


@pytest.mark.parametrize("ident", [-1, 1 << 40, 2 ** 64, True, 1.0])
def test_ids_outside_the_cookie_range_are_refused(ident):
    with pytest.raises(ResponseError, match="outside the cookie"):
        Response(ident, "block_ip", Entity(prefix="203.0.113.7"), BlockIpParams())


def test_largest_cookie_id_is_accepted():
    r = Response(rules.COOKIE_ID_MASK, "block_ip", Entity(prefix="203.0.113.7"), BlockIpParams())
    assert {s.cookie for _, s in compile_response(r, None, [1])} == {0x10C6_14_FFFFFFFFFF}


@pytest.mark.parametrize("make, message", [
    (lambda: Response(1, "nuke", Entity(mac=DEV), BlockIpParams()), "unknown action 'nuke'"),
    (lambda: Response(1, "quarantine", Entity(mac=DEV), BlockIpParams()), f"needs {QuarantineParams.__name__}"),
    (lambda: Response(1, "quarantine", Entity(ip=DEV_IP), QuarantineParams()), "needs the device's MAC"),
    (lambda: Response(1, "block_ip", Entity(mac=DEV), BlockIpParams()), "needs entity.prefix"),
    (lambda: Response(1, "block_ip", Entity(prefix="0.0.0.0/0"), BlockIpParams()), "would drop all IPv4"),
    (lambda: Entity(), "needs a mac, an ip or a prefix"),
    (lambda: Entity(mac="02:00:00:00:00"), "not a MAC address"),
    (lambda: Entity(ip="10.0.0.300"), "not an IPv4 address"),
    (lambda: Entity(prefix="10.0.0.1/24"), "host bits must be zero"),
    (lambda: Allow("10.0.0.5", None, (80,)), "ports need proto tcp or udp"),
    (lambda: Allow("10.0.0.5", "icmp", (80,)), "ports need proto tcp or udp"),
    (lambda: Allow("10.0.0.5", "sctp"), "is not one of"),
    (lambda: Allow("10.0.0.5", "tcp", (0,)), "outside 1..65535"),
    (lambda: QuarantineParams(dns_servers=("dns.example",)), "dns_servers"),
    (lambda: BlockLateralParams((), "10.0.0.1"), "internal_subnets is empty"),
    (lambda: BlockLateralParams(("0.0.0.0/0",), "10.0.0.1"), "block the internet too"),
    (lambda: RedirectParams("10.0.0.99", "02:00:00:00:00:99", original_ip="10.0.0.99"), "the target itself"),
    (lambda: RedirectParams("10.0.0.0/24", "02:00:00:00:00:99"), "target_ip"),
    (lambda: RateLimitParams(0), "positive"),
    (lambda: MirrorParams(1, 0xFFFFFFFD), "not a physical port"),
])
def test_bad_records_are_refused_with_a_clear_message(make, message):
    with pytest.raises(ResponseError, match=message):
        make()


def test_records_are_normalised_and_frozen():
    e = Entity(mac="02:00:00:00:00:0A", ip="10.0.0.10", prefix="203.0.113.7")
    assert (e.mac, e.ip, e.prefix) == (DEV, DEV_IP, "203.0.113.7/32")
    r = quarantine()
    with pytest.raises(AttributeError):
        r.ttl = 5  # type: ignore[misc]
    assert replace(r, ttl=5).ttl == 5
    assert r.kind is Kind.QUARANTINE


# ---------------------------------------------------------------- release


def test_release_deletes_by_exact_cookie_then_the_meter():
    out = release_response(rate_limit(), [2, 1, 2], meter_id=0x105)
    full = 0xFFFF_FFFF_FFFF_FFFF
    assert [(d, s.command, s.table_id, s.cookie, s.cookie_mask) for d, s in out[:2]] == [
        (1, "delete", 0, RL10, full), (2, "delete", 0, RL10, full)]
    assert out[2:] == [(1, MeterSpec(0x105, 0, 0, command="delete", unit="kbps")),
                       (2, MeterSpec(0x105, 0, 0, command="delete", unit="kbps"))]
    assert release_response(quarantine(), [1]) == [(1, rules.delete_response(7, Kind.QUARANTINE))]
    assert rules.delete_response(7, Kind.QUARANTINE).match == ()


# ---------------------------------------------------------------- os-ken encodes them


def datapath():
    return SimpleNamespace(ofproto=ofp, ofproto_parser=parser, id=0x1)


def _instruction(i):
    if isinstance(i, parser.OFPInstructionGotoTable):
        return ("goto", i.table_id)
    if isinstance(i, parser.OFPInstructionMeter):
        return ("meter", i.meter_id)
    assert i.type == ofp.OFPIT_APPLY_ACTIONS
    acts = []
    for a in i.actions:
        if isinstance(a, parser.OFPActionOutput):
            acts.append(("output", a.port))
        else:
            acts.append(("set_field", a.key, a.value))
    return ("apply", tuple(acts))


def wire_round_trip(spec):
    """Encode with os-ken, parse the bytes back with os-ken, return the parsed message."""
    msg = compat.to_message(datapath(), spec)
    msg.serialize()
    data = bytes(msg.buf)
    version, msg_type, msg_len, xid = ofproto_parser.header(data)
    assert (version, msg_len) == (ofp.OFP_VERSION, len(data))
    if isinstance(spec, MeterSpec):
        # os-ken has no meter-mod parser: read the OF 1.3 layout (7.3.4.4) directly
        assert msg_type == ofp.OFPT_METER_MOD
        return struct.unpack_from("!HHI", data, 8), data[16:]
    parsed = ofproto_parser.msg(datapath(), version, msg_type, msg_len, xid, bytearray(data))
    assert parsed is not None and msg_type == ofp.OFPT_FLOW_MOD
    return parsed, None


def test_every_compiled_rule_is_valid_openflow_as_os_ken_encodes_it():
    checked = 0
    for name, compiled in compile_all().items():
        for _, spec in compiled:
            parsed, bands = wire_round_trip(spec)
            checked += 1
            if isinstance(spec, MeterSpec):
                command, flags, meter_id = parsed
                assert (command, meter_id) == (ofp.OFPMC_ADD, spec.meter_id)
                assert flags == ofp.OFPMF_KBPS | ofp.OFPMF_BURST
                assert struct.unpack("!HHII4x", bands) == (ofp.OFPMBT_DROP, 16, spec.rate, spec.burst)
                continue
            assert (parsed.table_id, parsed.priority, parsed.cookie) == (spec.table_id, spec.priority, spec.cookie)
            assert (parsed.hard_timeout, parsed.idle_timeout) == (spec.hard_timeout, 0)
            assert parsed.flags == ofp.OFPFF_SEND_FLOW_REM
            assert parsed.command == ofp.OFPFC_ADD
            assert dict(parsed.match.items()) == spec.match_dict, name
            assert tuple(_instruction(i) for i in parsed.instructions) == spec.instructions, name
    assert checked == 14 + 4 + 4 + 1 + 2 + 6 + 2   # quarantine, lateral, redirect x2, meter+flow, 3x2, 2


def test_pipeline_meters_stay_packets_per_second_on_the_wire():
    meters, _ = rules.pipeline(1000, 200)
    (command, flags, meter_id), bands = wire_round_trip(meters[0])
    assert flags == ofp.OFPMF_PKTPS | ofp.OFPMF_BURST and meter_id == 1
    assert struct.unpack("!HHII4x", bands) == (ofp.OFPMBT_DROP, 16, 1000, 200)


def test_releases_are_valid_openflow_too():
    for d, spec in release_response(rate_limit(), [1], meter_id=0x105):
        parsed, bands = wire_round_trip(spec)
        if isinstance(spec, MeterSpec):
            assert parsed == (ofp.OFPMC_DELETE, ofp.OFPMF_KBPS | ofp.OFPMF_BURST, 0x105) and bands == b""
        else:
            assert parsed.command == ofp.OFPFC_DELETE and parsed.table_id == 0
            assert (parsed.cookie, parsed.cookie_mask) == (RL10, 0xFFFF_FFFF_FFFF_FFFF)
            assert parsed.out_port == ofp.OFPP_ANY and parsed.out_group == ofp.OFPG_ANY
