import pytest

from controller.openflow import rules
from controller.openflow.rules import FlowSpec, RuleError
from tests.unit.kinds import Kind
from controller.response.actions import REGISTRY


def test_cookie_scheme_round_trips_kind_and_id():
    c = rules.cookie(Kind.FORWARD, 12345)
    assert c == 0x10C6_03_0000003039
    assert rules.is_ours(c)
    assert rules.cookie_kind(c) is Kind.FORWARD
    assert rules.cookie_id(c) == 12345
    assert not rules.is_ours(0)
    assert rules.cookie_kind(0x1234) is None


def test_cookie_id_out_of_range_is_refused():
    with pytest.raises(ValueError):
        rules.cookie(Kind.FORWARD, 1 << 40)


def test_pipeline_exact_rules():
    meters, flows = rules.pipeline(1000, 200)
    assert [(m.meter_id, m.rate, m.burst, m.unit) for m in meters] == [(1, 1000, 200, "pktps"), (2, 100, 50, "pktps")]
    by = {(f.table_id, f.priority): f for f in flows}
    goto = by[(0, 0)]
    assert goto.match == () and goto.instructions == (("goto", 1),)
    assert goto.cookie == rules.cookie(Kind.PIPELINE, 1)
    lldp = by[(0, 65000)]
    assert lldp.match == (("eth_type", 0x88CC),)
    assert lldp.instructions == (("meter", 2), ("apply", (("output", "controller"),)))
    assert rules.cookie_kind(lldp.cookie) is Kind.CONTROL
    miss = by[(1, 0)]
    assert miss.match == ()
    assert miss.instructions == (("meter", 1), ("apply", (("output", "controller"),)))
    assert len(flows) == 3


def test_forward_ip_tcp_flow_matches_source_destination_and_port():
    key = rules.flow_key("00:00:00:00:00:01", "00:00:00:00:00:02", 0x0800, "10.0.0.2", 6, 80)
    f = rules.forward(key, 7, 3, idle_timeout=10)
    assert f.table_id == 1 and f.priority == 200
    assert f.cookie == rules.cookie(Kind.FORWARD, 7)
    assert f.match == (("eth_src", "00:00:00:00:00:01"), ("eth_dst", "00:00:00:00:00:02"),
                       ("eth_type", 0x0800), ("ipv4_dst", "10.0.0.2"), ("ip_proto", 6),
                       ("tcp_dst", 80))
    assert f.instructions == (("apply", (("output", 3),)),)
    assert f.idle_timeout == 10 and f.hard_timeout == 0 and f.send_flow_removed


def test_forward_udp_icmp_and_l2_keys():
    udp = rules.flow_key("00:00:00:00:00:01", "00:00:00:00:00:02", 0x0800, "10.0.0.2", 17, 53)
    assert ("udp_dst", 53) in udp.match()
    icmp = rules.flow_key("00:00:00:00:00:01", "00:00:00:00:00:02", 0x0800, "10.0.0.2", 1, 999)
    assert icmp.tp_dst is None and icmp.match()[-1] == ("ip_proto", 1)
    arp = rules.flow_key("00:00:00:00:00:01", "00:00:00:00:00:02", 0x0806, "10.0.0.2", None, None)
    assert arp.match() == (("eth_src", "00:00:00:00:00:01"), ("eth_dst", "00:00:00:00:00:02"),
                           ("eth_type", 0x0806))
    assert rules.forward(arp, 1, 2, 10).priority == rules.PRIO_FWD_L2


def test_deletes_are_restricted_to_our_cookies():
    d = rules.delete_all_ours()
    assert d.command == "delete" and d.table_id == rules.TABLE_ALL
    assert d.cookie == rules.COOKIE_MAGIC and d.cookie_mask == rules.COOKIE_MAGIC_MASK
    k = rules.delete_forwarding_to("00:00:00:00:00:05")
    assert k.cookie_mask == rules.COOKIE_KIND_MASK and rules.cookie_kind(k.cookie) is Kind.FORWARD
    assert k.match == (("eth_dst", "00:00:00:00:00:05"),)
    with pytest.raises(RuleError, match="iotguard cookies"):
        rules.check(FlowSpec(rules.TABLE_ALL, 0, 0, command="delete"))


@pytest.mark.parametrize("spec, message", [
    (FlowSpec(5, 10, rules.cookie(Kind.FORWARD, 1)), "table 5 is not in the layout"),
    (FlowSpec(1, 10, rules.cookie(Kind.QUARANTINE, 1)), "not allowed in table forward"),
    (FlowSpec(0, 10, rules.cookie(Kind.FORWARD, 1)), "not allowed in table security"),
    (FlowSpec(1, 100, rules.cookie(Kind.FORWARD, 1), match=(("ipv4_src", "1.2.3.4"),)),
     "match fields \\['ipv4_src'\\] not allowed"),
    (FlowSpec(1, 5000, rules.cookie(Kind.FORWARD, 1)), "priority 5000 outside"),
    (FlowSpec(1, 100, 0xdead), "cookie kind None"),
])
def test_check_rejects_specs_outside_the_layout(spec, message):
    with pytest.raises(RuleError, match=message):
        rules.check(spec)


def test_layout_rows_cover_every_table():
    rows = list(REGISTRY.layout_rows())
    assert rows[0][0] == "table"
    assert {r[0].split()[0] for r in rows[1:]} == {"0", "1"}


def test_readme_table_layout_matches_the_code():
    import os
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    rows = list(REGISTRY.layout_rows())
    table = "\n".join(["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
                      + ["| " + " | ".join(r) + " |" for r in rows[1:]])
    assert table in readme
