"""The response engine (controller/response/engine.py) and the audit log (controller/response/audit.py).

Everything is driven by explicit `now` values: no clock, no switch, no threads.
Expected rules are always compile_response's own output for the record the
engine should have made, so these tests check decisions, not rule shapes
(test_responses.py checks those).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from dataclasses import replace

import pytest

from controller.config import Device
from controller.detection.alert import Alert
from controller.openflow import rules
from controller.response.audit import AuditLog
from controller.response.engine import Engine, ResponseStore
from controller.response.playbook import load_playbooks, parse_playbooks
from controller.response.actions.block_ip import BlockIpPlan as BlockIpParams
from controller.response.actions.block_lateral import BlockLateralPlan as BlockLateralParams
from controller.response.actions.mirror import MirrorPlan as MirrorParams
from controller.response.actions.quarantine import Allow
from controller.response.actions.quarantine import QuarantinePlan as QuarantineParams
from controller.response.actions.rate_limit import RateLimitPlan as RateLimitParams
from controller.response.actions.redirect import RedirectPlan as RedirectParams
from controller.response.records import Entity, Response, compile_response, release_response
from controller.openflow.rules import FlowSpec
from tests.unit.kinds import Kind
from controller.network.topology import Location

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAM, CAM_IP = "02:00:00:00:00:0a", "10.0.0.10"
THERMO, THERMO_IP = "02:00:00:00:00:0b", "10.0.0.11"
GW, GW_IP = "02:00:00:00:00:01", "10.0.0.1"
CAMERA = Device("camera", CAM, (CAM_IP,), ("camera", "iot"))
THERMOSTAT = Device("thermostat", THERMO, (THERMO_IP,), ("thermostat", "iot"))
EDGES = {CAM: Location(1, 3), THERMO: Location(2, 4)}
FULL_MASK = 0xFFFF_FFFF_FFFF_FFFF


def burst(alert_id="a1", t=100.0) -> Alert:
    return Alert.from_dict({"id": alert_id, "time": t, "kind": "new_flow_burst", "device": "camera", "mac": CAM,
            "score": 120.0, "threshold": 30.0,
            "explanation": "camera opened 120 new connections to 40 hosts on port 23 within 1 s; "
                           "its baseline is at most 4 per second",
            "baseline": "burst", "devices": [], "tags": ["camera", "iot"],
            "features": [{"feature": "new_flows_per_s", "observed": 120, "low": 0, "high": 4,
                          "hosts": 40, "internal_hosts": 38, "top_port": 23}]})


def anomaly(mac=CAM, name="camera", alert_id="b1", **window) -> Alert:
    return Alert.from_dict({"id": alert_id, "time": 0.0, "kind": "anomaly", "device": name, "mac": mac, "score": 9.0,
            "threshold": 4.0, "explanation": f"{name} sent a lot", "features": [],
            "window": {"tx_packets": 5000, "mean_pkt_size": 60, "rx_per_tx_bytes": 1.0, "distinct_dst_ports": 3,
                       **window}})


class Net:
    """The engine's view of the network, changeable by a test."""

    def __init__(self):
        self.switches = [1, 2]
        self.edges = dict(EDGES)


def make(tmp_path, playbooks=None, net=None, dry_run=False):
    net = net or Net()
    books = load_playbooks([os.path.join(ROOT, "playbooks")]) if playbooks is None else playbooks
    hosts = {"honeypot": ("10.0.0.99", "02:00:00:00:00:99", Location(2, 9)),
             "ids": ("10.0.0.98", "02:00:00:00:00:98", Location(1, 9))}
    engine = Engine(books, ResponseStore(tmp_path / "responses.sqlite"), AuditLog(tmp_path / "audit.jsonl"),
                    internal_subnets=["10.0.0.0/24"], gateway=lambda: (GW_IP, GW), dns_servers=[GW_IP],
                    hosts=hosts.get, locate=net.edges.get, switches=lambda: net.switches, dry_run=dry_run)
    return engine, net


def quarantine_of(rid, ttl=600, priority=799, created=100.0):
    return Response(rid, "quarantine", Entity(mac=CAM, ip=CAM_IP),
                    QuarantineParams((), True, (GW_IP,)), ttl=ttl, priority=priority, created=created)


def events(engine, event=None, action=None):
    """Audit records, oldest first; notify decisions left out unless asked for."""
    records = list(reversed(engine.audit.read()))
    return [r for r in records if (event is None or r["event"] == event)
            and (r["action"] == action if action else r["action"] != "notify")]


# ---------------------------------------------------------------- decisions


def test_scanner_burst_is_quarantined_at_the_edge_switch(tmp_path):
    engine, _ = make(tmp_path)
    msgs, notify, _ = engine.on_alert(burst(), CAMERA, now=100.0)
    [active] = engine.active_view(100.0)
    rid = active["id"]
    assert msgs == compile_response(quarantine_of(rid), Location(1, 3), [1, 2])
    assert {d for d, _ in msgs} == {1}
    assert all(s.cookie == rules.cookie(Kind.QUARANTINE, rid) and s.hard_timeout == 600 for _, s in msgs)
    assert active["playbook"] == "quarantine-scanner-burst" and active["remaining"] == 600
    assert active["mode"] == "enforce" and active["dpids"] == [1]

    [decision] = events(engine, "decision")[:1]
    assert decision["action"] == "quarantine" and decision["outcome"] == "sent"
    assert decision["alert"]["explanation"].startswith("camera opened 120 new connections")
    assert decision["response_id"] == rid and decision["mode"] == "enforce"
    assert len(decision["rules"]) == len(msgs)
    first = decision["rules"][0]
    assert first["dpid"] == 1 and first["table"] == 0 and first["priority"] == msgs[0][1].priority
    assert first["cookie"] == f"{rules.cookie(Kind.QUARANTINE, rid):#018x}"
    assert first["match"] == {"eth_src": CAM, "eth_type": 0x0806, "arp_spa": CAM_IP}
    assert first["instructions"] == [["goto", 1]]

    [job] = notify
    assert job["destination"] == "log" and job["playbook"] == "quarantine-scanner-burst"
    assert job["actions"][0]["response_id"] == rid and job["actions"][0]["outcome"] == "sent"


def test_unknown_location_goes_to_every_connected_switch(tmp_path):
    engine, net = make(tmp_path)
    net.edges.clear()
    msgs, _, _ = engine.on_alert(burst(), CAMERA, now=100.0)
    assert {d for d, _ in msgs} == {1, 2}
    net.switches = []
    msgs, _, _ = engine.on_alert(burst(), replace(THERMOSTAT, name="t"), now=100.0)
    assert msgs == [] and events(engine, "decision")[-1]["outcome"] == "pending"


def test_dry_run_playbook_decides_and_audits_but_installs_nothing(tmp_path):
    books = parse_playbooks("""
playbooks:
  - name: watch-scanners
    mode: dry-run
    when: {kinds: [new_flow_burst]}
    do:
      - quarantine: {ttl: 10m}
      - notify: {log: true}
""")
    engine, _ = make(tmp_path, books)
    msgs, notify, _ = engine.on_alert(burst(), CAMERA, now=100.0)
    assert msgs == []
    [dry] = events(engine, "dry-run")[:1]
    assert dry["outcome"] == "dry-run" and dry["action"] == "quarantine" and dry["rules"]
    assert notify[0]["mode"] == "dry-run"
    [view] = engine.active_view(100.0)
    assert view["mode"] == "dry-run" and view["dpids"] == []
    assert engine.reconcile(1, now=200.0) == []              # never installed, not even on reconnect
    assert engine.release(view["id"], now=300.0) == []       # releasing a dry run sends nothing
    assert events(engine, "released")[0]["mode"] == "dry-run"


def test_global_dry_run_installs_nothing_but_audits(tmp_path):
    engine, _ = make(tmp_path, dry_run=True)
    msgs, _, _ = engine.on_alert(burst(), CAMERA, now=100.0)
    assert msgs == [] and events(engine, "decision") == []
    dry = [r for r in events(engine, "dry-run") if r["action"] == "quarantine"]
    assert len(dry) == 1 and dry[0]["rules"] and dry[0]["playbook"] == "quarantine-scanner-burst"
    assert engine.expire(now=10_000.0) == []
    assert events(engine, "expired")[0]["mode"] == "dry-run"


def test_the_same_alert_twice_is_one_response_with_its_expiry_refreshed(tmp_path):
    engine, _ = make(tmp_path)
    first, _, _ = engine.on_alert(burst(), CAMERA, now=100.0)
    again, _, _ = engine.on_alert(burst(), CAMERA, now=160.0)
    [view] = engine.active_view(160.0)
    assert view["expires"] == 760.0 and view["repeats"] == 0      # refreshed, not escalated
    assert [s.match for _, s in again] == [s.match for _, s in first]
    assert {s.hard_timeout for _, s in again} == {600}          # re-sent: the switch backstop moves too
    assert events(engine, "decision")[-1]["outcome"] == "refreshed"
    same, _, _ = engine.on_alert(burst(), CAMERA, now=160.0)
    assert same == [] and events(engine, "decision")[-1]["outcome"] == "unchanged"
    assert len(engine.store.active()) == 1


def test_an_alert_updated_every_few_seconds_refreshes_once_per_tenth_of_the_ttl(tmp_path):
    """A refresh re-sends every rule and audits them all: an open alert handed to the
    playbooks every 5 s must not do that every 5 s, only when the expiry moves by 10% of
    the ttl (60 s of the 600 s quarantine)."""
    engine, _ = make(tmp_path)
    engine.on_alert(burst(), CAMERA, now=100.0)                 # expires 700
    sent = {t: engine.on_alert(burst(), CAMERA, now=t)[0] for t in range(105, 225, 5)}
    refreshed = [t for t, msgs in sent.items() if msgs]
    assert refreshed == [160, 220]                              # 700 -> 760 -> 820
    [view] = engine.active_view(221.0)
    assert view["expires"] == 820.0
    quiet = [r for r in events(engine, "decision") if r["outcome"] == "unchanged"]
    assert quiet and quiet[0]["detail"]["refreshed_after"] == 160.0
    assert quiet[0]["rules"] in (None, [])


def test_two_playbooks_firing_apply_both_actions_and_one_log_job(tmp_path):
    engine, _ = make(tmp_path)
    alert = anomaly(distinct_dst_ports=80)      # quarantine-scanner-ports (800) + ratelimit-flood (400)
    msgs, notify, _ = engine.on_alert(alert, CAMERA, now=0.0)
    actions = sorted(v["action"] for v in engine.active_view(0.0))
    assert actions == ["quarantine", "rate_limit"]
    assert len(notify) == 1                     # one log job for the alert, listing both actions
    assert {a["action"] for a in notify[0]["actions"]} == {"quarantine", "rate_limit"}


def test_shipped_block_lateral_redirect_and_a_mirror_resolve_hosts_and_gateway(tmp_path):
    engine, _ = make(tmp_path)
    alert = anomaly(lateral_peers=9, new_flows=60, distinct_dst_ports=2, tx_packets=10, top_port=23)
    msgs, _, _ = engine.on_alert(alert, CAMERA, now=0.0)
    views = {v["action"]: v for v in engine.active_view(0.0)}
    assert sorted(views) == ["block_lateral", "redirect"]
    lateral = Response(views["block_lateral"]["id"], "block_lateral", Entity(mac=CAM, ip=CAM_IP),
                       BlockLateralParams(("10.0.0.0/24",), GW_IP, GW), ttl=900, priority=599)
    redirect = Response(views["redirect"]["id"], "redirect", Entity(mac=CAM, ip=CAM_IP),
                        RedirectParams("10.0.0.99", "02:00:00:00:00:99", proto="tcp", ports=(22, 23)),
                        ttl=1800, priority=699)
    assert msgs == (compile_response(redirect, EDGES[CAM], [1, 2])
                    + compile_response(lateral, EDGES[CAM], [1, 2]))   # playbook priority order

    books = parse_playbooks("""
playbooks:
  - name: watch
    when: {kinds: [anomaly]}
    do:
      - mirror: {to: ids, ttl: 1h}
""")
    (tmp_path / "m").mkdir()
    engine, _ = make(tmp_path / "m", books)
    msgs, _, _ = engine.on_alert(anomaly(), CAMERA, now=0.0)
    [view] = engine.active_view(0.0)
    assert view["params"] == {"dpid": 1, "port": 9}
    assert msgs == compile_response(Response(view["id"], "mirror", Entity(mac=CAM, ip=CAM_IP),
                                             MirrorParams(1, 9), ttl=3600, priority=499), EDGES[CAM], [1, 2])
    msgs, _, _ = engine.on_alert(anomaly(mac=THERMO, name="thermostat"), THERMOSTAT, now=0.0)
    assert msgs == [] and "mirroring across switches is not supported" in events(engine, "failed")[0]["error"]


# ---------------------------------------------------------------- escalation and combination


ESCALATING = """
playbooks:
  - name: q
    when: {kinds: [new_flow_burst]}
    do:
      - quarantine: {ttl: 10m, escalate: {factor: %s, within: %s, max_ttl: %s}}
"""


def offend(engine, times):
    """An alert at each time, released right after; the ttl each decision got."""
    ttls = []
    for t in times:
        engine.on_alert(burst(f"a{t}", t), CAMERA, now=t)
        [view] = engine.active_view(t)
        ttls.append(view["ttl"])
        engine.release(view["id"], now=t + 1)
    return ttls


def test_escalation_doubles_within_the_window_up_to_the_cap(tmp_path):
    engine, _ = make(tmp_path, parse_playbooks(ESCALATING % (2, "1d", "1h")))
    assert offend(engine, [0, 1000, 2000, 3000, 4000]) == [600, 1200, 2400, 3600, 3600]
    assert engine.store.offences(CAM, "quarantine", since=0) == 5
    assert [r["detail"]["repeats"] for r in events(engine, "decision")] == [0, 1, 2, 3, 4]


def test_escalation_counts_only_offences_inside_the_window(tmp_path):
    engine, _ = make(tmp_path, parse_playbooks(ESCALATING % (2, "1h", "1d")))
    assert offend(engine, [0, 1000, 10_000, 10_100]) == [600, 1200, 600, 1200]


def test_escalation_beyond_the_hard_timeout_is_capped_and_audited(tmp_path):
    engine, _ = make(tmp_path, parse_playbooks(ESCALATING % (100, "30d", "30d")))
    assert offend(engine, [0, 1000, 2000]) == [600, 60_000, rules.MAX_HARD_TIMEOUT]
    assert "capped at 65535 s" in events(engine, "decision")[-1]["detail"]["capped"]


def test_escalation_is_per_device(tmp_path):
    engine, _ = make(tmp_path, parse_playbooks(ESCALATING % (2, "1d", "1d")))
    offend(engine, [0])
    engine.on_alert(burst("t1", 50), THERMOSTAT, now=50.0)
    view = next(v for v in engine.active_view(50.0) if v["mac"] == THERMO)
    assert view["ttl"] == 600


COMBINED = """
playbooks:
  - name: strict
    priority: 900
    when: {kinds: [anomaly]}
    do:
      - quarantine:
          allow: [{host: 10.0.0.50, ports: [443], proto: tcp}]
          ttl: 10m
  - name: lenient
    priority: 100
    when: {kinds: [anomaly]}
    do:
      - quarantine: {dhcp: false, dns: false, ttl: 1h}
  - name: trial
    mode: dry-run
    priority: 1000
    when: {kinds: [anomaly]}
    do:
      - quarantine: {dhcp: false, ttl: 2h}
"""


def test_combination_takes_highest_priority_params_and_longest_ttl(tmp_path):
    engine, _ = make(tmp_path, parse_playbooks(COMBINED))
    msgs, _, _ = engine.on_alert(anomaly(), CAMERA, now=0.0)
    views = {v["mode"]: v for v in engine.active_view(0.0)}
    enforced = views["enforce"]
    assert enforced["playbook"] == "strict" and enforced["ttl"] == 3600 and enforced["priority"] == 899
    assert enforced["params"] == {"allow": [{"ip": "10.0.0.50/32", "proto": "tcp", "ports": [443]}],
                                  "dhcp": True, "dns_servers": [GW_IP]}
    expected = Response(enforced["id"], "quarantine", Entity(mac=CAM, ip=CAM_IP),
                        QuarantineParams((Allow("10.0.0.50", "tcp", (443,)),), True, (GW_IP,)),
                        ttl=3600, priority=899, created=0.0)
    assert msgs == compile_response(expected, EDGES[CAM], [1, 2])
    # the dry-run playbook (priority 1000, 2h) neither replaced nor lengthened the enforced one
    assert views["dry-run"]["playbook"] == "trial" and views["dry-run"]["ttl"] == 7200
    decision = events(engine, "decision")[0]
    assert decision["detail"]["playbooks"] == ["strict", "lenient"]


def test_dry_run_never_suppresses_an_active_enforced_response(tmp_path):
    engine, _ = make(tmp_path, parse_playbooks(COMBINED))
    engine.on_alert(anomaly(), CAMERA, now=0.0)
    engine.dry_run = True                       # global dry-run switched on later
    msgs, _, _ = engine.on_alert(anomaly(alert_id="b2"), CAMERA, now=100.0)
    assert msgs == []
    assert {v["mode"]: v["expires"] for v in engine.active_view(100.0)}["enforce"] == 3600.0


# ---------------------------------------------------------------- release, expiry


def test_release_deletes_by_cookie_and_is_audited(tmp_path):
    engine, _ = make(tmp_path)
    engine.on_alert(burst(), CAMERA, now=100.0)
    rid = engine.active_view(100.0)[0]["id"]
    out = engine.release(rid, now=200.0, reason="operator: false positive")
    assert out == [(1, rules.delete_response(rid, Kind.QUARANTINE))]
    assert out[0][1].cookie_mask == FULL_MASK
    released = events(engine, "released")[0]
    assert released["response_id"] == rid and released["detail"]["reason"] == "operator: false positive"
    assert released["rules"][0]["command"] == "delete"
    assert engine.active_view(200.0) == []
    with pytest.raises(KeyError, match="not active"):
        engine.release(rid, now=201.0)
    with pytest.raises(KeyError, match="no response with id 999"):
        engine.release(999, now=201.0)


def test_a_released_response_is_not_put_back_by_the_same_alert_only_by_a_new_one(tmp_path):
    engine, _ = make(tmp_path)
    engine.on_alert(burst("a1"), CAMERA, now=100.0)
    rid = engine.active_view(100.0)[0]["id"]
    engine.release(rid, now=103.0, reason="operator: handled")
    msgs, _notify, decisions = engine.on_alert(burst("a1", t=109.0), CAMERA, now=109.0)   # the next window
    assert msgs == [] and engine.active_view(109.0) == []
    assert [d.outcome for d in decisions if d.action == "quarantine"] == ["unchanged"]
    why = [e for e in events(engine, "decision") if e["time"] == 109.0]
    assert why and "an operator released this alert's response" in why[0]["detail"]["why"]
    engine.on_alert(burst("a2", t=150.0), CAMERA, now=150.0)          # a new alert: applied again
    assert [r["id"] for r in engine.active_view(150.0)] == [rid + 1]


def test_a_released_response_applies_again_when_its_alert_s_story_comes_back(tmp_path):
    engine, _ = make(tmp_path)
    engine.on_alert(burst("a1"), CAMERA, now=100.0)
    rid = engine.active_view(100.0)[0]["id"]
    engine.release(rid, now=103.0, reason="operator: handled")
    # The detector closed the alert, then the same story came back at 200 (Alert.reopened):
    # a new episode, so the response the operator released in the pause applies again.
    back = replace(burst("a1", t=200.0), reopened=200.0)
    msgs, _notify, decisions = engine.on_alert(back, CAMERA, now=200.0)
    assert msgs and [d.outcome for d in decisions if d.action == "quarantine"] == ["sent"]
    assert [r["id"] for r in engine.active_view(200.0)] == [rid + 1]
    # Reopened before the release (a later window of that episode): still released.
    engine.release(rid + 1, now=205.0)
    msgs, _notify, _ = engine.on_alert(replace(back, last_time=206.0), CAMERA, now=206.0)
    assert msgs == [] and engine.active_view(206.0) == []


def test_rate_limit_allocates_a_meter_and_release_deletes_it(tmp_path):
    engine, _ = make(tmp_path)
    msgs, _, _ = engine.on_alert(anomaly(mac=THERMO, name="thermostat"), THERMOSTAT, now=0.0)
    [view] = engine.active_view(0.0)
    rid, meter = view["id"], view["meter_id"]
    assert meter == rules.METER_RESPONSE_MIN
    rec = Response(rid, "rate_limit", Entity(mac=THERMO, ip=THERMO_IP), RateLimitParams(1000), ttl=300,
                   priority=399)
    assert msgs == [(2, rules.delete_meter(meter))] + compile_response(rec, EDGES[THERMO], [1, 2],
                                                                       meter_id=meter)
    assert engine.response_id(msgs[1][1]) == rid and engine.response_id(msgs[2][1]) == rid
    assert engine.on_alert(anomaly(mac=THERMO, name="thermostat", alert_id="b2"), THERMOSTAT, now=5.0)[0] == []
    again, _, _ = engine.on_alert(anomaly(mac=THERMO, name="thermostat", alert_id="b2"), THERMOSTAT, now=30.0)
    # 30 s = a tenth of the ttl: a refresh re-sends the flow with its new hard_timeout, never the meter (a meter-mod refills
    # its bucket: a full burst of the throttled flood at every refresh)
    assert [(type(x).__name__, x.command) for _, x in again] == [("FlowSpec", "add")]
    assert engine.release(rid, now=40.0) == release_response(rec, [2], meter_id=meter)
    assert engine._meter() == meter            # free again


def test_expiry_deletes_by_cookie_and_is_audited(tmp_path):
    engine, _ = make(tmp_path)
    engine.on_alert(burst(), CAMERA, now=100.0)
    rid = engine.active_view(100.0)[0]["id"]
    assert engine.expire(now=699.0) == []
    assert engine.active_view(699.0)[0]["remaining"] == 1.0
    assert engine.expire(now=700.0) == [(1, rules.delete_response(rid, Kind.QUARANTINE))]
    assert engine.expire(now=701.0) == []
    assert events(engine, "expired")[0]["response_id"] == rid
    assert engine.store.get(rid).state == "expired"


def test_block_ip_target_alert_goes_to_every_switch_or_is_skipped_saying_why(tmp_path):
    engine, _ = make(tmp_path)
    outbreak = Alert.from_dict({"id": "o1", "time": 0.0, "kind": "outbreak", "score": 3.0,
                                "explanation": "3 camera devices ...",
                                "devices": ["camera", "cam2", "cam3"], "remote": "203.0.113.66"})
    msgs, notify, _ = engine.on_alert(outbreak, None, now=0.0)
    [view] = engine.active_view(0.0)
    rec = Response(view["id"], "block_ip", Entity(prefix="203.0.113.66"), BlockIpParams(), ttl=3600,
                   priority=899)
    assert msgs == compile_response(rec, None, [1, 2]) and {d for d, _ in msgs} == {1, 2}
    msgs, _, applied = engine.on_alert(replace(outbreak, id="o2", remote=None), None, now=1.0)
    assert msgs == [] and events(engine, "failed") == []        # nothing to block is not a failure
    skipped = [e for e in events(engine, "decision") if e["outcome"] == "skipped"]
    assert [e["action"] for e in skipped] == ["block_ip"]
    assert "names no remote address" in skipped[0]["detail"]["why"]
    assert [(d.action, d.outcome) for d in applied if d.action == "block_ip"] == [("block_ip", "skipped")]
    assert len(engine.active_view(1.0)) == 1


# ---------------------------------------------------------------- confirmation


def test_installed_and_failed_are_recorded_and_failure_rolls_back(tmp_path):
    engine, _ = make(tmp_path)
    msgs, _, _ = engine.on_alert(burst(), CAMERA, now=100.0)
    rid = engine.response_id(msgs[0][1])
    engine.installed(rid, 1, now=100.01)
    assert engine.active_view(100.01)[0]["confirmed"] == [1]
    assert events(engine, "installed")[0]["detail"] == {"dpid": 1}

    msgs, _, _ = engine.on_alert(anomaly(mac=THERMO, name="thermostat"), THERMOSTAT, now=100.0)
    rl = engine.response_id(msgs[-1][1])
    meter = engine.store.get(rl).meter_id
    out = engine.confirm(rl, 2, False, "OFPFMFC_TABLE_FULL", now=100.02)
    assert out == [(2, rules.delete_response(rl, Kind.RATE_LIMIT)), (2, rules.delete_meter(meter))]
    assert engine.store.get(rl).state == "failed"
    failed = events(engine, "failed")[0]
    assert failed["response_id"] == rl and failed["error"] == "OFPFMFC_TABLE_FULL"
    assert [v["id"] for v in engine.active_view(100.02)] == [rid]
    assert engine.response_id(FlowSpec(1, 200, rules.cookie(Kind.FORWARD, 5))) is None
    with pytest.raises(KeyError):
        engine.installed(12345, 1, now=101.0)


# ---------------------------------------------------------------- restart and reconcile


def test_reconcile_after_restart_reinstalls_remaining_ttl_and_deletes_expired(tmp_path):
    engine, net = make(tmp_path)
    engine.on_alert(burst(), CAMERA, now=100.0)                                   # 600 s
    engine.on_alert(anomaly(mac=THERMO, name="thermostat"), THERMOSTAT, now=100.0)  # 300 s rate_limit
    q = next(v for v in engine.active_view(100.0) if v["action"] == "quarantine")
    rl = next(v for v in engine.active_view(100.0) if v["action"] == "rate_limit")
    engine.store.close()
    engine.audit.close()

    engine2, _ = make(tmp_path, net=net)          # a new controller over the same state directory
    assert [v["id"] for v in engine2.active_view(450.0)] == [q["id"]]
    out = engine2.reconcile(1, now=450.0)
    # the rate limit ran out while the controller was down: deleted by cookie (and its meter)
    deletes = [(d, s) for d, s in out if s.command == "delete"]
    assert deletes == [(2, rules.delete_response(rl["id"], Kind.RATE_LIMIT)),
                       (2, rules.delete_meter(rl["meter_id"]))]
    assert all(rules.is_ours(s.cookie) and s.cookie_mask == FULL_MASK
               for _, s in deletes if isinstance(s, FlowSpec))
    # the quarantine is back on switch 1 with the 250 s it has left
    adds = [(d, s) for d, s in out if s.command == "add"]
    assert adds == compile_response(quarantine_of(q["id"]), EDGES[CAM], [1, 2], now=450.0)
    assert {s.hard_timeout for _, s in adds} == {250}
    assert engine2.store.get(rl["id"]).state == "expired"
    assert events(engine2, "reconciled")[-1]["detail"]["remaining"] == 250.0
    # nothing belongs on switch 2 any more; nothing else (no foreign cookie) is deleted
    assert engine2.reconcile(2, now=460.0) == []


def test_reconcile_rate_limit_deletes_the_meter_before_adding_it(tmp_path):
    engine, _ = make(tmp_path)
    engine.on_alert(anomaly(mac=THERMO, name="thermostat"), THERMOSTAT, now=0.0)
    [view] = engine.active_view(0.0)
    out = engine.reconcile(2, now=100.0)
    meter = view["meter_id"]
    assert [type(s).__name__ + ":" + s.command for _, s in out] == \
        ["MeterSpec:delete", "MeterSpec:add", "FlowSpec:add"]
    assert out[0][1] == rules.delete_meter(meter) and out[1][1].meter_id == meter
    assert out[2][1].hard_timeout == 200
    assert engine.reconcile(1, now=100.0) == []        # the thermostat is on switch 2 only


def test_reconcile_removes_a_response_that_ended_while_the_switch_was_away(tmp_path):
    engine, net = make(tmp_path)
    engine.on_alert(burst(), CAMERA, now=100.0)
    rid = engine.active_view(100.0)[0]["id"]
    net.switches = [2]                                  # switch 1 is gone
    assert engine.release(rid, now=200.0) == []         # the delete could not be sent
    net.switches = [1, 2]
    assert engine.reconcile(1, now=300.0) == [(1, rules.delete_response(rid, Kind.QUARANTINE))]
    assert events(engine, "reconciled")[-1]["outcome"] == "removed"


# ---------------------------------------------------------------- the store


def test_next_id_is_persisted_and_increasing(tmp_path):
    path = tmp_path / "r.sqlite"
    store = ResponseStore(path)
    assert [store.next_id() for _ in range(3)] == [1, 2, 3]
    store.close()
    store = ResponseStore(path)
    assert store.next_id() == 4
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_corrupted_rows_are_skipped_with_a_clear_report(tmp_path):
    engine, net = make(tmp_path)
    engine.on_alert(burst(), CAMERA, now=100.0)
    engine.on_alert(anomaly(mac=THERMO, name="thermostat"), THERMOSTAT, now=100.0)
    engine.on_alert(replace(burst("c"), mac="02:00:00:00:00:0c"),
                    Device("bulb", "02:00:00:00:00:0c", (), ()), now=100.0)
    ids = [v["id"] for v in engine.active_view(100.0)]
    engine.store.close()
    db = sqlite3.connect(tmp_path / "responses.sqlite")
    db.execute("UPDATE responses SET params = '{not json' WHERE id = ?", (ids[1],))
    db.execute("UPDATE responses SET action = 'format_disk' WHERE id = ?", (ids[2],))
    db.commit()
    db.close()

    engine2, _ = make(tmp_path, net=net)
    assert [v["id"] for v in engine2.active_view(150.0)] == [ids[0]]
    problems = engine2.store.problems
    assert len(problems) == 2
    assert f"id={ids[1]}" in problems[0] and "invalid and is skipped" in problems[0]
    assert "unknown action 'format_disk'" in problems[1]
    out = engine2.reconcile(1, now=150.0) + engine2.reconcile(2, now=150.0)
    assert {rules.cookie_id(s.cookie) for _, s in out if isinstance(s, FlowSpec)} == {ids[0]}
    assert len(engine2.store.problems) == 2             # each bad row reported once
    with pytest.raises(KeyError):
        engine2.release(ids[1], now=160.0)


@pytest.mark.parametrize("column, value, words", [
    ("params", json.dumps({"allow": [], "dhcp": "yes", "dns_servers": []}), "expected bool"),
    ("params", json.dumps({"allow": [], "dhcp": True, "dns_servers": [], "extra": 1}), "fields"),
    ("entity", json.dumps({"mac": "zz", "ip": None, "prefix": None}), "not a MAC"),
    ("priority", 5000, "priority offset"),
    ("expires", 0.0, "expires is not after created"),
    ("created", "yesterday", "not a time"),
    ("state", "zombie", "unknown state"),
    ("id", 2 ** 41, "outside"),
])
def test_each_kind_of_bad_row_is_reported(tmp_path, column, value, words):
    engine, _ = make(tmp_path)
    engine.on_alert(burst(), CAMERA, now=100.0)
    engine.store.db.execute(f"UPDATE responses SET {column} = ?", (value,))
    assert engine.store.active() == [] and engine.active_view(100.0) == []
    rid = engine.store.db.execute("SELECT id FROM responses").fetchone()[0]
    assert engine.store.get(rid) is None
    assert words in engine.store.problems[0]


# ---------------------------------------------------------------- the audit log


def test_audit_log_is_append_only_0600_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    os.chmod(path, 0o644)
    log = AuditLog(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    log.write("decision", time=1.0, playbook="p", action="quarantine", mode="enforce", response_id=1,
              rules=[(1, rules.delete_response(1, Kind.QUARANTINE))], outcome="sent")
    log.write("installed", time=2.0, response_id=1, outcome="installed")
    before = path.read_bytes()
    log.write("released", time=3.0, response_id=1, outcome="released")
    assert path.read_bytes().startswith(before)
    assert [r["event"] for r in log.read()] == ["released", "installed", "decision"]
    assert [r["time"] for r in log.read(since=1.5)] == [3.0, 2.0]
    assert len(log.read(limit=1)) == 1
    assert set(log.read()[0]) == {"time", "event", "alert", "playbook", "action", "mode", "response_id",
                                  "rules", "outcome", "error", "detail"}
    log.close()

    with open(path, "ab") as f:                 # a crash in the middle of a record
        f.write(b'{"time": 4.0, "event": "expi')
    log = AuditLog(path)
    assert [r["time"] for r in log.read()] == [3.0, 2.0, 1.0]
    log.write("expired", time=5.0, response_id=1, outcome="expired")
    assert [r["time"] for r in log.read()] == [5.0, 3.0, 2.0, 1.0]
    assert path.read_bytes().startswith(before)
    with pytest.raises(ValueError, match="unknown audit event"):
        log.write("deleted", time=6.0)


def test_audit_records_are_strict_json(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    np = pytest.importorskip("numpy")
    log.write("decision", time=1.0, alert={"score": np.float64(3.5), "bad": float("nan")})
    line = (tmp_path / "a.jsonl").read_text().strip()
    assert json.loads(line)["alert"] == {"score": 3.5, "bad": "nan"}
    assert "NaN" not in line


def test_reconcile_sends_the_rules_when_the_state_disk_is_full(tmp_path):
    engine, _ = make(tmp_path)
    engine.on_alert(anomaly(mac=THERMO, name="thermostat"), THERMOSTAT, now=0.0)
    expected = engine.reconcile(2, now=100.0)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")
    engine.audit.write = full
    engine.store.put = locked
    assert engine.reconcile(2, now=100.0) == expected      # the meter and rule go out anyway
    assert engine.write_errors >= 2
