"""The response loop through Core: alert -> rules as data -> barrier/error -> store and audit."""

import json

import pytest

from controller.response import playbook as pb
from controller.openflow import rules
from controller.config import parse_config
from controller.core import Core
from controller.response.service import Confirmations, RequestError
from controller.openflow.rules import FlowSpec, MeterSpec
from tests.unit.kinds import Kind

from tests.unit.test_core import Clock, arp

CAM, GW, TV = "00:00:00:00:00:11", "00:00:00:00:00:01", "00:00:00:00:00:04"

BOOKS = """
playbooks:
  - name: quarantine-burst
    description: test
    priority: 800
    when: {kinds: [new_flow_burst]}
    do:
      - quarantine: {dhcp: true, dns: true, ttl: 10m, escalate: {factor: 2, within: 1d, max_ttl: 1d}}
      - notify: {log: true}
  - name: lateral
    description: test
    priority: 600
    when: {kinds: [anomaly], tags: [iot], conditions: [lateral_peers > 5]}
    do:
      - block_lateral: {ttl: 15m}
"""


def make(tmp_path, books=BOOKS, extra=""):
    cfg = parse_config(f"""
state_dir: {tmp_path}
internal_subnets: [10.0.0.0/24]
devices:
  - {{name: camera, mac: "{CAM}", ip: 10.0.0.11, tags: [camera, iot]}}
  - {{name: gw, mac: "{GW}", ip: 10.0.0.1, tags: [gateway, infra]}}
  - {{name: tv, mac: "{TV}", ip: 10.0.0.4, tags: [tv, iot]}}
{extra}""")
    clock = Clock()
    clock.t = 1_800_000_000.0
    c = Core(cfg, clock=clock, wall=clock)
    c.enable_responses(pb.parse_playbooks(books))
    c.switch_connected(1)
    c.switch_connected(2)
    c.packet_in(2, 2, arp(CAM, "10.0.0.11", "10.0.0.1"))     # camera at switch 2 port 2
    c.packet_in(1, 1, arp(GW, "10.0.0.1", "10.0.0.11"))
    c.take_outbox()
    return c, clock


def burst(c):
    return c.inject_alert({"kind": "new_flow_burst", "device": "camera", "score": 40})


def test_burst_alert_quarantines_at_the_edge_switch_and_queues_the_notify(tmp_path):
    c, _ = make(tmp_path)
    alert = burst(c)
    out, jobs = c.take_outbox()
    assert out and {d for d, _ in out} == {2}
    flows = [m for _, m in out if isinstance(m, FlowSpec)]
    assert all(rules.cookie_kind(f.cookie) == Kind.QUARANTINE and f.table_id == 0 for f in flows)
    drops = [f for f in flows if not f.instructions]
    assert {dict(f.match).get("eth_src") or dict(f.match).get("eth_dst") for f in drops} == {CAM}
    dns = [f for f in flows if dict(f.match).get("ipv4_dst") == "10.0.0.1" and dict(f.match).get("udp_dst") == 53]
    assert dns, "DNS to the gateway (no dns_servers configured) stays open"
    assert all(f.hard_timeout == 600 for f in flows)
    assert [j["destination"] for j in jobs] == ["log"] and jobs[0]["alert"]["id"] == alert["id"]
    (r,) = c.responder.responses_view()
    assert r["action"] == "quarantine" and r["mac"] == CAM and r["remaining"] == 600


def test_barrier_reply_confirms_and_error_fails_and_removes(tmp_path):
    c, clock = make(tmp_path)
    burst(c)
    out, _ = c.take_outbox()
    sent = [(d, 100 + i, m) for i, (d, m) in enumerate(out)]
    assert c.responder.track(sent) == {2}
    c.responder.barrier_sent(2, 999)
    clock.t += 0.004
    c.responder.barrier_reply(2, 999)
    (r,) = c.responder.responses_view()
    assert r["confirmed"] == [2]
    assert list(c.responder.latencies) == [pytest.approx(0.004, abs=1e-6)]
    # a second device, refused by the switch: failed, its rules removed, audited with the error
    c.packet_in(1, 4, arp(TV, "10.0.0.4", "10.0.0.1"))
    c.inject_alert({"kind": "new_flow_burst", "device": "tv"})
    out, _ = c.take_outbox()
    sent = [(d, 200 + i, m) for i, (d, m) in enumerate(out)]
    c.responder.track(sent)
    c.responder.barrier_sent(1, 998)
    removal = c.responder.error(1, 201, "OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL")
    assert removal and all(m.command == "delete_strict" or m.command.startswith("delete") for _, m in removal)
    c.responder.barrier_reply(1, 998)
    assert [r["mac"] for r in c.responder.responses_view()] == [CAM]
    failed = [e for e in c.responder.audit_view(None) if e["event"] == "failed"]
    assert failed and "OFPFMFC_TABLE_FULL" in failed[0]["error"]
    assert c.responder.error(1, 12345, "not ours") is None


def test_reconnect_reinstalls_with_the_time_left_and_expiry_removes(tmp_path):
    c, clock = make(tmp_path)
    burst(c)
    c.take_outbox()
    clock.t += 100
    out = c.switch_connected(2)
    mine = [m for _, m in out if isinstance(m, FlowSpec) and rules.cookie_kind(m.cookie) == Kind.QUARANTINE]
    assert mine and all(m.hard_timeout == 500 for m in mine if m.command == "add")
    clock.t += 501
    c.expire_responses()
    out, _ = c.take_outbox()
    assert out and all(m.command.startswith("delete") for _, m in out)
    assert c.responder.responses_view() == []
    assert [e["event"] for e in c.responder.audit_view(None)][0] == "expired"


def test_state_survives_a_restart(tmp_path):
    c, clock = make(tmp_path)
    burst(c)
    c.responder.close()
    c2 = Core(c.config, clock=clock, wall=clock)
    c2.enable_responses(pb.parse_playbooks(BOOKS))
    out = c2.switch_connected(2)
    assert any(isinstance(m, FlowSpec) and rules.cookie_kind(m.cookie) == Kind.QUARANTINE for _, m in out)
    assert [r["action"] for r in c2.responder.responses_view()] == ["quarantine"]


def test_anomaly_window_conditions_pick_the_playbook(tmp_path):
    c, _ = make(tmp_path)
    c.inject_alert({"kind": "anomaly", "device": "camera", "window": {"lateral_peers": 3}})
    assert c.take_outbox()[0] == []
    c.inject_alert({"kind": "anomaly", "device": "camera", "window": {"lateral_peers": 40}})
    out, _ = c.take_outbox()
    assert out and all(rules.cookie_kind(m.cookie) == Kind.BLOCK_LATERAL for _, m in out if isinstance(m, FlowSpec))


def test_outbreak_is_applied_to_each_listed_device(tmp_path):
    books = """
playbooks:
  - name: outbreak
    description: test
    when: {kinds: [outbreak]}
    do: [{rate_limit: {kbps: 500, ttl: 5m}}]
"""
    c, _ = make(tmp_path, books)
    c.packet_in(1, 4, arp(TV, "10.0.0.4", "10.0.0.1"))
    c.inject_alert({"kind": "outbreak", "devices": ["camera", "tv"]})
    out, _ = c.take_outbox()
    meters = [m for _, m in out if isinstance(m, MeterSpec) and m.command == "add"]
    assert len(meters) == 2 and len({m.meter_id for m in meters}) == 2
    assert sorted(r["mac"] for r in c.responder.responses_view()) == [TV, CAM]


def test_manual_request_is_validated_and_applied(tmp_path):
    c, _ = make(tmp_path)
    with pytest.raises(RequestError, match="params.kbps"):
        c.responder.manual({"action": "rate_limit", "device": "camera", "params": {"kbps": "fast"}}, 1.8e9)
    with pytest.raises(RequestError, match="unknown device 'nobody'"):
        c.responder.manual({"action": "quarantine", "device": "nobody"}, 1.8e9)
    with pytest.raises(RequestError, match="ttl"):
        c.responder.manual({"action": "quarantine", "device": "camera", "ttl": "soon"}, 1.8e9)
    done = c.responder.manual({"action": "quarantine", "device": CAM, "ttl": 120, "reason": "test"},
                              c.wall())
    assert done["messages"] and all(m.hard_timeout == 120 for _, m in done["messages"])
    (r,) = c.responder.responses_view()
    assert r["playbook"] == "manual" and "test" in r["reason"]
    ip = c.responder.manual({"action": "block_ip", "params": {"ip": "198.51.100.7"}}, c.wall())
    assert {d for d, _ in ip["messages"]} == {1, 2}


def test_injected_alert_is_refused_with_the_field_named(tmp_path):
    c, _ = make(tmp_path)
    for body, words in [({"kind": "nope", "device": "camera"}, "field 'kind'"),
                        ({"device": "camera", "score": "high"}, "field 'score'"),
                        ({"kind": "anomaly"}, "field 'device'"),
                        ({"device": "camera", "colour": 1}, "unknown field 'colour'")]:
        with pytest.raises(RequestError, match=words):
            c.inject_alert(body)
    assert c.take_outbox() == ([], [])


def test_a_missing_playbook_directory_is_reported_and_nothing_changes(tmp_path):
    c, _ = make(tmp_path, extra=f"responses: {{playbooks: [{tmp_path}/nope]}}")
    before = c.responder.playbooks_view()
    with pytest.raises(pb.PlaybookError, match="no such file"):
        c.responder.reload()
    assert c.responder.playbooks_view() == before


def test_confirmations_forget_a_departed_switch():
    conf = Confirmations()
    conf.sent(1, 10, 7)
    conf.barrier(1, 11)
    conf.forget(1)
    assert conf.reply(1, 11) == [] and conf.error(1, 10) is None


def test_audit_lines_are_json_with_the_alert_explanation(tmp_path):
    c, _ = make(tmp_path)
    burst(c)
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    decisions = [json.loads(x) for x in lines if json.loads(x)["event"] == "decision"]
    assert decisions[0]["alert"]["explanation"] and decisions[0]["rules"][0]["cookie"]


def test_gateway_is_its_internal_address_even_if_it_arped_from_the_wan_first(tmp_path):
    c, _ = make(tmp_path)
    c.inventory.get(GW).ips.insert(0, "203.0.113.1")
    assert c.responder.gateway() == ("10.0.0.1", GW)


def test_expiry_is_audited_when_the_switch_backstop_fires_first(tmp_path):
    c, clock = make(tmp_path)
    c.manual_response({"action": "quarantine", "device": "camera", "ttl": 60})
    (r,) = c.responses_view()
    cookie = int(r["cookie"], 16)
    c.flow_removed(2, cookie, 0, 0, 30.0)            # a delete of ours, long before the ttl: nothing
    assert [x["id"] for x in c.responses_view()] == [r["id"]]
    clock.t += 60                                       # the hard_timeout fired on the switch
    c.flow_removed(2, cookie, 0, 0, 60.0)
    assert c.responses_view() == []
    (expired,) = [e for e in c.audit_view(None) if e["event"] == "expired"]
    assert expired["response_id"] == r["id"] and expired["detail"]["by"] == "switch hard_timeout"
    c.flow_removed(2, cookie, 0, 0, 60.0)            # its other rules' flow-removed: once only
    assert len([e for e in c.audit_view(None) if e["event"] == "expired"]) == 1
