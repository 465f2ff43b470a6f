"""Tests for controller.response.playbook: the shipped playbooks, trigger matching, and exact error positions."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from controller.response import playbook as pb
from controller.telemetry.features import FEATURES
from controller.response.actions import REGISTRY
from controller.response.actions.block_ip import BlockIpParams as BlockIp
from controller.response.actions.block_lateral import BlockLateralParams as BlockLateral
from controller.response.actions.mirror import MirrorParams as Mirror
from controller.response.actions.notify import NotifyParams as Notify
from controller.response.actions.quarantine import AllowRule
from controller.response.actions.quarantine import QuarantineParams as Quarantine
from controller.response.actions.rate_limit import RateLimitParams as RateLimit
from controller.response.actions.redirect import RedirectParams as Redirect
from controller.response.playbook import (
    Action, Condition, Escalate, Playbook, PlaybookError, Problem, Trigger, load_playbooks,
    matching, parse_playbooks,
)
from controller.yamlnodes import MAX_FILE_BYTES
from controller.config import Device
from controller.detection.alert import DETECTED_KINDS, Alert

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "playbooks"
HOSTS = {"honeypot", "gw", "camera", "ids"}
TAGS = {"iot", "camera", "gateway"}


def write(tmp_path: Path, text: str, name: str = "pb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(paths: list[Path], **known: set[str]) -> list[Problem]:
    with pytest.raises(PlaybookError) as info:
        load_playbooks([str(p) for p in paths], **known)
    return info.value.problems


# --------------------------------------------------------------------------- shipped playbooks


def test_shipped_playbooks_load() -> None:
    books = {p.name: p for p in load_playbooks([str(SHIPPED)], known_hosts=HOSTS, known_tags=TAGS)}
    assert sorted(books) == ["block-c2-outbreak", "block-dead-c2", "block-exfiltration", "block-lateral-iot",
                             "block-lateral-iot-slow", "honeypot-bruteforce", "quarantine-scanner-burst",
                             "quarantine-scanner-ports", "quarantine-scanner-slow", "quarantine-scanner-sweep",
                             "ratelimit-flood"]
    assert all(p.mode == "enforce" and p.description for p in books.values())

    burst, ports = books["quarantine-scanner-burst"], books["quarantine-scanner-ports"]
    assert burst.when == Trigger(kinds=("new_flow_burst",))
    assert ports.when == Trigger(kinds=("anomaly",), conditions=(Condition("distinct_dst_ports", ">", 50),))
    for book in (burst, ports):
        quarantine, notify = book.do
        assert quarantine == Action("quarantine", Quarantine(allow=(), dhcp=True, dns=True), ttl=600,
                                    escalate=Escalate(factor=2.0, within=86400, max_ttl=86400))
        assert notify == Action("notify", Notify(log=True), ttl=None)

    lateral = books["block-lateral-iot"]
    assert lateral.when == Trigger(kinds=("anomaly",), tags=("iot",),
                                   conditions=(Condition("lateral_peers", ">", 5),))
    assert lateral.do[0] == Action("block_lateral", BlockLateral(), ttl=900)

    honeypot = books["honeypot-bruteforce"]
    assert honeypot.when == Trigger(kinds=("anomaly",), dst_ports=(22, 23), conditions=(
        Condition("new_flows", ">", 30), Condition("distinct_dst_ports", "<=", 2)))
    assert honeypot.do[0] == Action("redirect", Redirect(to="honeypot", ports=(22, 23), proto="tcp"), ttl=1800)

    flood = books["ratelimit-flood"]
    assert flood.when.conditions == (Condition("tx_packets", ">", 1000), Condition("mean_pkt_size", "<", 400),
                                     Condition("rx_per_tx_bytes", "<", 4))
    assert [a.kind for a in flood.do] == ["rate_limit", "notify"]
    assert flood.do[0] == Action("rate_limit", RateLimit(kbps=1000), ttl=300)

    c2 = books["block-c2-outbreak"]
    assert c2.when == Trigger(kinds=("outbreak",))
    assert c2.do == (Action("block_ip", BlockIp(target="alert"), ttl=3600), Action("notify", Notify(), ttl=None))
    assert c2.source == str(SHIPPED / "block-c2-outbreak.yaml") and c2.line == 4


def test_shipped_playbooks_fire_on_the_alerts_they_are_for() -> None:
    books = load_playbooks([str(SHIPPED)])
    cam = Device("camera", "00:00:00:00:00:11", ("10.0.0.11",), ("camera", "iot"))
    scan = alert(kind="anomaly", score=40.0, window={"distinct_dst_ports": 900, "new_flows": 950,
                                                     "lateral_peers": 1, "tx_packets": 2000,
                                                     "mean_pkt_size": 60, "rx_per_tx_bytes": 0.9})
    assert [p.name for p in matching(books, scan, cam)] == ["quarantine-scanner-ports", "ratelimit-flood"]
    # a high packet rate that is not a flood: a download's acknowledgements, a backup's full-size packets
    download = alert(kind="anomaly", score=12.0, window={"tx_packets": 1335, "mean_pkt_size": 73,
                                                         "rx_per_tx_bytes": 300.0})
    backup = alert(kind="anomaly", score=12.0, window={"tx_packets": 27000, "mean_pkt_size": 1480,
                                                       "rx_per_tx_bytes": 0.03})
    assert matching(books, download, cam) == [] and matching(books, backup, cam) == []
    brute = alert(kind="anomaly", score=9.0,
                  window={"new_flows": 120, "distinct_dst_ports": 1, "top_port": 23, "lateral_peers": 9})
    assert [p.name for p in matching(books, brute, cam)] == ["honeypot-bruteforce", "block-lateral-iot"]
    burst = alert(kind="new_flow_burst", score=300.0,
                  features=[{"feature": "new_flows_per_s", "observed": 300, "top_port": 22}])
    assert [p.name for p in matching(books, burst, cam)] == ["quarantine-scanner-burst"]
    outbreak = alert(kind="outbreak", score=3.0, devices=["camera", "camera-2", "camera-3"])
    assert [p.name for p in matching(books, outbreak, cam)] == ["block-c2-outbreak"]
    slow = alert(kind="lateral_probe", score=6.0, window={"new_internal_peers_60s": 6})
    assert [p.name for p in matching(books, slow, cam)] == ["block-lateral-iot-slow"]
    probe = alert(kind="port_probe", score=31.0, window={"new_ports_one_host_10s": 31})
    assert [p.name for p in matching(books, probe, cam)] == ["quarantine-scanner-slow"]
    sweep = alert(kind="address_scan", score=31.0, window={"scanned_hosts_5min": 31})
    assert [p.name for p in matching(books, sweep, cam)] == ["quarantine-scanner-sweep"]
    fact = alert(kind="new_service", score=1.0, window={"new_services_60s": 1})
    assert matching(books, fact, cam) == [], "a new service alone is a fact to look at, not to act on"


def test_docs_example_parses_to_every_field() -> None:
    doc = (REPO / "docs" / "playbooks.md").read_text(encoding="utf-8")
    example = re.search(r"## A full example\n\n```yaml\n(.*?)```", doc, re.S).group(1)
    (book,) = parse_playbooks(example, "docs", known_hosts={"remediation"}, known_tags={"iot"})
    assert book == Playbook(
        name="quarantine-scanner-ports",
        description="In one window a device contacted more than 50 distinct ports.",
        mode="enforce", priority=800,
        when=Trigger(kinds=("anomaly",), min_score=6.0, tags=("iot",), subnets=("10.0.0.0/24",),
                     conditions=(Condition("distinct_dst_ports", ">", 50.0),
                                 Condition("new_dst_share", ">=", 0.5))),
        do=(Action("quarantine", Quarantine(allow=(AllowRule("remediation", (80, 443), "tcp"),)), ttl=600,
                   escalate=Escalate(2.0, 86400, 86400)),
            Action("notify", Notify(True, "https://soc.example.net/hooks/iotguard", 5.0, 3), ttl=None)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        book.priority = 1  # type: ignore[misc]


def test_defaults_and_every_action() -> None:
    text = textwrap.dedent("""\
        playbooks:
          - name: all-actions
            mode: dry-run
            when: {kinds: [anomaly, outbreak], devices: [camera], classes: [camera],
                   macs: ['AA-BB-CC-DD-EE-01'], ips: ['FD00::1'], dst_ports: [22]}
            do:
              - quarantine:
              - block_lateral: {allow: [gw, 10.0.0.9]}
              - redirect: {to: 10.0.0.99}
              - rate_limit: {pps: 50, ttl: 1d}
              - block_ip: {ip: 198.51.100.0/24}
              - block_ip: {ip: 198.51.100.7, ttl: 30d}
              - mirror: {port: 0x1a:4}
              - mirror: {port: 1:4}
              - mirror: {to: ids, escalate:}
              - notify: {webhook: 'http://127.0.0.1:9000/hook', log: false, retries: 0}
        """)
    (book,) = parse_playbooks(text, known_hosts=HOSTS, known_tags=TAGS)
    assert book.dry_run and book.priority == 500 and book.description == ""
    assert book.when == Trigger(kinds=("anomaly", "outbreak"), devices=("camera",), classes=("camera",),
                                macs=("aa:bb:cc:dd:ee:01",), ips=("fd00::1",), dst_ports=(22,))
    assert [a.params for a in book.do] == [
        Quarantine(), BlockLateral(allow=("gw", "10.0.0.9")), Redirect(to="10.0.0.99"), RateLimit(pps=50),
        BlockIp(ip="198.51.100.0/24"), BlockIp(ip="198.51.100.7"), Mirror(port=(26, 4)), Mirror(port=(1, 4)),
        Mirror(to="ids"), Notify(log=False, webhook="http://127.0.0.1:9000/hook", retries=0)]
    assert [a.ttl for a in book.do] == [3600, 3600, 3600, 86400, 3600, 30 * 86400, 3600, 3600, 3600, None]
    assert book.do[8].escalate == Escalate() and book.do[0].escalate is None
    assert [a.line for a in book.do] == list(range(7, 17))


def test_empty_playbook_list_is_valid(tmp_path: Path) -> None:
    assert load_playbooks([write(tmp_path, "playbooks: []\n")]) == []


def test_directory_loads_yaml_files_in_name_order(tmp_path: Path) -> None:
    one = "playbooks:\n  - {name: %s, when: {kinds: [anomaly]}, do: [notify: ]}\n"
    write(tmp_path, one % "b", "2.yml")
    write(tmp_path, one % "a", "1.yaml")
    write(tmp_path, "not yaml at all: [", "notes.txt")
    files: list[str] = []
    assert [p.name for p in load_playbooks([tmp_path], files=files)] == ["a", "b"]
    assert files == [str(tmp_path / "1.yaml"), str(tmp_path / "2.yml")]    # what was read, listed once
    assert pb.playbook_files([tmp_path]) == files


def test_alert_kinds_are_the_detectors() -> None:
    src = (REPO / "controller" / "detection" / "detector.py").read_text(encoding="utf-8")
    declared = [k.value for k in DETECTED_KINDS]
    assert tuple(declared) == pb.ALERT_KINDS
    assert pb.CONDITION_FEATURES[:len(FEATURES) + 2] == FEATURES + ("new_flows_per_s", "rx_per_tx_bytes")
    assert "new_internal_peers_60s" in pb.CONDITION_FEATURES    # the novelty counts per horizon
    assert '"feature": "new_flows_per_s"' in src   # the burst's measure, as conditions name it


# --------------------------------------------------------------------------- matching

def alert(**fields) -> Alert:
    """An alert carrying only what a test gives (a score of NaN: no score)."""
    return Alert(**{"id": "t1", "time": 0.0, "device": None, "mac": None, **fields})


DEVICE = Device("cam", "00:00:00:00:00:11", ("10.0.0.11", "fd00::11"), ("camera", "iot"))
ALERT = alert(kind="anomaly", score=12.5,
              features=[{"feature": "tx_packets", "observed": 1623.0, "low": 0, "high": 21.6},
                        {"feature": "new_flows", "observed": 3.0}],
              window={"distinct_dst_ports": 80, "lateral_peers": 0})


@pytest.mark.parametrize(("trigger", "expected"), [
    (Trigger(kinds=("anomaly",)), True),
    (Trigger(kinds=("outbreak", "new_flow_burst")), False),
    (Trigger(kinds=("anomaly",), min_score=12.5), True),
    (Trigger(kinds=("anomaly",), min_score=12.6), False),
    (Trigger(kinds=("anomaly",), devices=("thermostat", "cam")), True),
    (Trigger(kinds=("anomaly",), devices=("thermostat",)), False),
    (Trigger(kinds=("anomaly",), tags=("iot",)), True),
    (Trigger(kinds=("anomaly",), tags=("hvac", "bulb")), False),
    (Trigger(kinds=("anomaly",), classes=("camera",)), True),
    (Trigger(kinds=("anomaly",), classes=("iot",)), False),          # the class is the first tag
    (Trigger(kinds=("anomaly",), macs=("00:00:00:00:00:11",)), True),
    (Trigger(kinds=("anomaly",), macs=("00:00:00:00:00:12",)), False),
    (Trigger(kinds=("anomaly",), ips=("fd00::11",)), True),
    (Trigger(kinds=("anomaly",), ips=("10.0.0.12",)), False),
    (Trigger(kinds=("anomaly",), subnets=("10.0.0.0/24",)), True),
    (Trigger(kinds=("anomaly",), subnets=("192.168.0.0/16",)), False),
    (Trigger(kinds=("anomaly",), tags=("iot",), subnets=("192.168.0.0/16",)), False),   # all must hold
    (Trigger(kinds=("anomaly",), conditions=(Condition("tx_packets", ">", 1000),)), True),    # from features
    (Trigger(kinds=("anomaly",), conditions=(Condition("distinct_dst_ports", ">=", 80),)), True),  # window
    (Trigger(kinds=("anomaly",), conditions=(Condition("distinct_dst_ports", ">", 80),)), False),
    (Trigger(kinds=("anomaly",), conditions=(Condition("lateral_peers", "==", 0),)), True),
    (Trigger(kinds=("anomaly",), conditions=(Condition("new_flows", "<", 5),
                                             Condition("tx_packets", "<=", 1623),)), True),
    (Trigger(kinds=("anomaly",), conditions=(Condition("new_flows", "<", 5),
                                             Condition("tx_packets", "<", 1623),)), False),
    (Trigger(kinds=("anomaly",), conditions=(Condition("dns_queries", "<", 1e9),)), False),  # not carried
    (Trigger(kinds=("anomaly",), dst_ports=(22,)), False),           # no top_port in this alert
])
def test_trigger_matches(trigger: Trigger, expected: bool) -> None:
    assert trigger.matches(ALERT, DEVICE) is expected


def test_trigger_edge_cases() -> None:
    t = Trigger(kinds=("new_flow_burst",), dst_ports=(22, 23), conditions=(Condition("new_flows_per_s", ">", 40),))
    burst = alert(kind="new_flow_burst", score=64.0,
                  features=[{"feature": "new_flows_per_s", "observed": 64, "top_port": 23}])
    assert t.matches(burst, DEVICE)
    assert not t.matches(replace(burst, window={"top_port": 80}), DEVICE)          # window comes first
    assert not t.matches(replace(burst, features=[{"feature": "new_flows_per_s", "observed": True}]), DEVICE)
    nan = replace(burst, features=[{"feature": "new_flows_per_s", "observed": float("nan"), "top_port": 22}])
    assert not t.matches(nan, DEVICE)
    unclassified = Trigger(kinds=("anomaly",), classes=("unclassified",))
    assert unclassified.matches(ALERT, Device("x", None, (), ()))
    assert not unclassified.matches(ALERT, DEVICE)
    by_mac = Trigger(kinds=("anomaly",), macs=("00:00:00:00:00:11",))
    assert by_mac.matches(ALERT, replace(DEVICE, mac="00-00-00-00-00-11"))
    assert not by_mac.matches(ALERT, replace(DEVICE, mac=None))
    assert not Trigger(kinds=("anomaly",), subnets=("10.0.0.0/8",)).matches(ALERT, replace(DEVICE, ips=("junk",)))
    assert not Trigger(kinds=("anomaly",), min_score=1).matches(alert(kind="anomaly", score=float("nan")), DEVICE)
    assert alert(kind="anomaly", score=1.0).value("tx_bytes") is None
    assert str(Condition("tx_bytes", ">=", 1e6)) == "tx_bytes >= 1e+06"


def test_matching_orders_by_priority_then_name() -> None:
    def book(name: str, priority: int, kind: str = "anomaly") -> Playbook:
        return Playbook(name, Trigger(kinds=(kind,)), (Action("notify", Notify(), ttl=None),), priority=priority)

    books = [book("b", 10), book("a", 10), book("z", 900), book("other", 999, "outbreak")]
    assert [p.name for p in matching(books, ALERT, DEVICE)] == ["z", "a", "b"]


def test_escalation_arithmetic() -> None:
    act = Action("quarantine", Quarantine(), ttl=600, escalate=Escalate(factor=2, within=86400, max_ttl=7200))
    assert [act.ttl_for(n) for n in range(6)] == [600, 1200, 2400, 4800, 7200, 7200]
    assert act.ttl_for(10 ** 6) == 7200                      # no overflow
    assert act.ttl_for(-1) == 600
    assert Action("quarantine", Quarantine(), ttl=600).ttl_for(3) == 600
    assert Action("notify", Notify(), ttl=None).ttl_for(3) is None
    slow = Action("block_lateral", BlockLateral(), ttl=100, escalate=Escalate(factor=1.5, max_ttl=1000))
    assert [slow.ttl_for(n) for n in range(4)] == [100, 150, 225, 337]


# --------------------------------------------------------------------------- malformed playbooks

HEAD = "playbooks:\n  - name: p\n"                        # lines 1-2
WHEN = "    when:\n      kinds: [anomaly]\n"              # lines 3-4 (or later)
DO = "    do:\n      - notify: {log: true}\n"


def act(line: str) -> str:
    """A playbook whose only action (line 6, the item at column 9) is `line`."""
    return HEAD + WHEN + "    do:\n      - " + line + "\n"


def cond(text: str) -> str:
    """A playbook whose only condition (line 6, its scalar at column 11) is `text`."""
    return HEAD + WHEN + "      conditions:\n        - " + text + "\n" + DO


# (id, yaml, line, column, field, distinctive message part); validated with HOSTS and TAGS known.
BAD = [
    ("unknown-key", HEAD + "    colour: red\n" + WHEN + DO, 3, 5, "playbooks[0].colour",
     "unknown key 'colour'; allowed keys: name, description, mode, priority, when, do"),
    ("unknown-key-hint", HEAD + "    priorty: 5\n" + WHEN + DO, 3, 5, "playbooks[0].priorty",
     "unknown key 'priorty' (did you mean 'priority'?)"),
    ("duplicate-key", HEAD + WHEN + WHEN + DO, 5, 5, "playbooks[0].when",
     "duplicate key 'when' (first on line 3)"),
    ("missing-when", HEAD + DO, 2, 5, "playbooks[0].when", "required key 'when' is missing"),
    ("missing-name", "playbooks:\n  - description: x\n" + WHEN + DO, 2, 5, "playbooks[0].name",
     "required key 'name' is missing"),
    ("empty-do", HEAD + WHEN + "    do: []\n", 5, 9, "playbooks[0].do", "must list at least one action"),
    ("do-mapping", HEAD + WHEN + "    do: {notify: {}}\n", 5, 9, "playbooks[0].do",
     "expected a list, got a mapping"),
    ("bad-name", "playbooks:\n  - name: 'a b'\n" + WHEN + DO, 2, 11, "playbooks[0].name", "invalid name 'a b'"),
    ("bad-mode", HEAD + "    mode: dry_run\n" + WHEN + DO, 3, 11, "playbooks[0].mode",
     "unknown mode 'dry_run' (did you mean 'dry-run'?); expected one of: enforce, dry-run"),
    ("priority-range", HEAD + "    priority: 1001\n" + WHEN + DO, 3, 15, "playbooks[0].priority",
     "must be between 1 and 1000, got 1001"),
    ("priority-bool", HEAD + "    priority: yes\n" + WHEN + DO, 3, 15, "playbooks[0].priority",
     "expected an integer, got a boolean ('yes')"),
    ("description-list", HEAD + "    description: [a]\n" + WHEN + DO, 3, 18, "playbooks[0].description",
     "expected a string, got a list"),
    ("unknown-kind", HEAD + "    when:\n      kinds: [anomaly, scan]\n" + DO, 4, 24, "playbooks[0].when.kinds[1]",
     "unknown alert kind 'scan'; expected one of: anomaly, new_flow_burst, outbreak"),
    ("empty-kinds", HEAD + "    when:\n      kinds: []\n" + DO, 4, 14, "playbooks[0].when.kinds",
     "must list at least one alert kind"),
    ("missing-kinds", HEAD + "    when:\n      min_score: 3\n" + DO, 4, 7, "playbooks[0].when.kinds",
     "required key 'kinds' is missing"),
    ("min-score-text", HEAD + WHEN + "      min_score: high\n" + DO, 5, 18, "playbooks[0].when.min_score",
     "expected a number, got a string ('high')"),
    ("unknown-feature", cond("tx_pkts > 5"), 6, 11, "playbooks[0].when.conditions[0]",
     "unknown feature 'tx_pkts' (did you mean 'tx_packets'?)"),
    ("bad-operator", cond("tx_packets =< 5"), 6, 22, "playbooks[0].when.conditions[0]",
     "bad operator '=<'; use one of > >= < <= =="),
    ("bad-number", cond("'tx_packets > 5k'"), 6, 25, "playbooks[0].when.conditions[0]", "not a number: '5k'"),
    ("condition-shape", cond("tx_packets"), 6, 11, "playbooks[0].when.conditions[0]",
     "expected 'FEATURE OP NUMBER' (like 'distinct_dst_ports > 50'), got 'tx_packets'"),
    ("condition-mapping", cond("{tx_packets: 5}"), 6, 11, "playbooks[0].when.conditions[0]",
     "expected a string, got a mapping"),
    ("empty-tags", HEAD + WHEN + "      tags: []\n" + DO, 5, 13, "playbooks[0].when.tags",
     "must not be empty (omit it to match every device)"),
    ("bad-tag", HEAD + WHEN + "      tags: [IoT]\n" + DO, 5, 14, "playbooks[0].when.tags[0]", "invalid tag 'IoT'"),
    ("unknown-tag", HEAD + WHEN + "      tags: [iot, cam]\n" + DO, 5, 19, "playbooks[0].when.tags[1]",
     "unknown tag 'cam' (did you mean 'camera'?)"),
    ("duplicate-tag", HEAD + WHEN + "      tags: [iot, iot]\n" + DO, 5, 19, "playbooks[0].when.tags[1]",
     "duplicate tag 'iot' (also playbooks[0].when.tags[0])"),
    ("unknown-device", HEAD + WHEN + "      devices: [honeypt]\n" + DO, 5, 17, "playbooks[0].when.devices[0]",
     "unknown host 'honeypt' (did you mean 'honeypot'?)"),
    ("bad-mac", HEAD + WHEN + "      macs: ['00:11:22:33:44']\n" + DO, 5, 14, "playbooks[0].when.macs[0]",
     "not a MAC address (like 00:11:22:33:44:55): '00:11:22:33:44'"),
    ("bad-ip", HEAD + WHEN + "      ips: [10.0.0.300]\n" + DO, 5, 13, "playbooks[0].when.ips[0]",
     "not an IPv4/IPv6 address: '10.0.0.300'"),
    ("host-bits", HEAD + WHEN + "      subnets: [10.0.0.1/24]\n" + DO, 5, 17, "playbooks[0].when.subnets[0]",
     "host bits set in '10.0.0.1/24' (did you mean '10.0.0.0/24'?)"),
    ("port-range", HEAD + WHEN + "      dst_ports: [22, 70000]\n" + DO, 5, 23, "playbooks[0].when.dst_ports[1]",
     "must be between 1 and 65535, got 70000"),
    ("unknown-when-key", HEAD + WHEN + "      tag: [iot]\n" + DO, 5, 7, "playbooks[0].when.tag",
     "unknown key 'tag' (did you mean 'tags'?)"),
    ("unknown-action", act("quarentine: {}"), 6, 9, "playbooks[0].do[0]",
     "unknown action 'quarentine' (did you mean 'quarantine'?); expected one of: quarantine, block_lateral,"),
    ("two-actions-one-item", act("{quarantine: {}, notify: {}}"), 6, 9, "playbooks[0].do[0]",
     "exactly one key, the action's name; got quarantine, notify (one list item per action)"),
    ("action-scalar", act("quarantine"), 6, 9, "playbooks[0].do[0]",
     "an action is a mapping '- ACTION: {...}', got a string ('quarantine')"),
    ("ttl-without-unit", act("quarantine: {ttl: 600}"), 6, 27, "playbooks[0].do[0].quarantine.ttl",
     "a duration needs a unit (s, m, h or d): write 600s for seconds"),
    ("ttl-bad", act("quarantine: {ttl: 10 minutes}"), 6, 27, "playbooks[0].do[0].quarantine.ttl",
     "not a duration (like 30s, 10m, 2h, 1d): '10 minutes'"),
    ("ttl-too-long", act("quarantine: {ttl: 31d}"), 6, 27, "playbooks[0].do[0].quarantine.ttl",
     "must be between 1s and 30d, got 31d"),
    ("ttl-zero", act("quarantine: {ttl: 0s}"), 6, 27, "playbooks[0].do[0].quarantine.ttl",
     "must be between 1s and 30d, got 0s"),
    ("dhcp-not-bool", act("quarantine: {dhcp: 'no'}"), 6, 28, "playbooks[0].do[0].quarantine.dhcp",
     "expected true or false, got a string ('no')"),
    ("quarantine-scalar", act("quarantine: yes"), 6, 21, "playbooks[0].do[0].quarantine",
     "expected a mapping, got a boolean ('yes')"),
    ("allow-unknown-host", act("quarantine: {allow: [{host: honeypt}]}"), 6, 37,
     "playbooks[0].do[0].quarantine.allow[0].host", "unknown host 'honeypt' (did you mean 'honeypot'?)"),
    ("allow-missing-host", act("quarantine: {allow: [{ports: [80]}]}"), 6, 30,
     "playbooks[0].do[0].quarantine.allow[0].host", "required key 'host' is missing"),
    ("allow-proto", act("quarantine: {allow: [{host: 10.0.0.9, proto: icmp}]}"), 6, 54,
     "playbooks[0].do[0].quarantine.allow[0].proto", "unknown protocol 'icmp'; expected one of: tcp, udp, any"),
    ("allow-empty-ports", act("quarantine: {allow: [{host: gw, ports: []}]}"), 6, 48,
     "playbooks[0].do[0].quarantine.allow[0].ports", "must not be empty (omit it for every port)"),
    ("escalate-factor", act("block_lateral: {escalate: {factor: 0.5}}"), 6, 44,
     "playbooks[0].do[0].block_lateral.escalate.factor", "must be between 1 and 100, got 0.5"),
    ("escalate-unknown", act("block_lateral: {escalate: {max: 1d}}"), 6, 36,
     "playbooks[0].do[0].block_lateral.escalate.max", "allowed keys: factor, within, max_ttl"),
    ("max-ttl-short", act("block_lateral: {ttl: 2h, escalate: {max_ttl: 1h}}"), 6, 54,
     "playbooks[0].do[0].block_lateral.escalate.max_ttl", "max_ttl 1h is shorter than the ttl 2h"),
    ("block-lateral-host", act("block_lateral: {allow: [gw, 'gw 2']}"), 6, 37,
     "playbooks[0].do[0].block_lateral.allow[1]", "not a host name or IP address: 'gw 2'"),
    ("redirect-missing-to", act("redirect: {ports: [22]}"), 6, 19, "playbooks[0].do[0].redirect.to",
     "required key 'to' is missing"),
    ("redirect-null", act("redirect:"), 6, 18, "playbooks[0].do[0].redirect.to", "required key 'to' is missing"),
    ("rate-both", act("rate_limit: {kbps: 100, pps: 10}"), 6, 21, "playbooks[0].do[0].rate_limit",
     "give exactly one of 'kbps' and 'pps', not both"),
    ("rate-neither", act("rate_limit: {ttl: 5m}"), 6, 21, "playbooks[0].do[0].rate_limit",
     "give exactly one of 'kbps' and 'pps'"),
    ("kbps-range", act("rate_limit: {kbps: 4}"), 6, 28, "playbooks[0].do[0].rate_limit.kbps",
     "must be between 8 and 10000000, got 4"),
    ("kbps-float", act("rate_limit: {kbps: 1500.0}"), 6, 28, "playbooks[0].do[0].rate_limit.kbps",
     "expected an integer, got a float ('1500.0')"),
    ("block-ip-bad", act("block_ip: {ip: 10.0.0.256}"), 6, 24, "playbooks[0].do[0].block_ip.ip",
     "not an IPv4/IPv6 address: '10.0.0.256'"),
    ("block-ip-host-bits", act("block_ip: {ip: 10.1.2.3/8}"), 6, 24, "playbooks[0].do[0].block_ip.ip",
     "host bits set in '10.1.2.3/8' (did you mean '10.0.0.0/8'?)"),
    ("block-ip-target", act("block_ip: {target: remote}"), 6, 28, "playbooks[0].do[0].block_ip.target",
     "target must be 'alert'"),
    ("block-ip-both", act("block_ip: {target: alert, ip: 192.0.2.1}"), 6, 19, "playbooks[0].do[0].block_ip",
     "give exactly one of 'ip' and 'target', not both"),
    ("mirror-port", act("mirror: {port: 'sw1:4'}"), 6, 24, "playbooks[0].do[0].mirror.port",
     "expected 'DPID:PORT' (like '1:4' or '0x1a:4'), got 'sw1:4'"),
    ("mirror-port-zero", act("mirror: {port: '1:0'}"), 6, 24, "playbooks[0].do[0].mirror.port",
     "port must be between 1 and 4294967040, got 0"),
    ("mirror-unknown-host", act("mirror: {to: snort}"), 6, 22, "playbooks[0].do[0].mirror.to",
     "unknown host 'snort'"),
    ("webhook-scheme", act("notify: {webhook: 'ftp://soc.example.net/x'}"), 6, 27,
     "playbooks[0].do[0].notify.webhook",
     "webhook must be an http:// or https:// URL, got 'ftp://soc.example.net/x'"),
    ("webhook-no-host", act("notify: {webhook: 'https:///hook'}"), 6, 27, "playbooks[0].do[0].notify.webhook",
     "not a URL: 'https:///hook'"),
    ("webhook-bad-port", act("notify: {webhook: 'http://soc:99999/'}"), 6, 27, "playbooks[0].do[0].notify.webhook",
     "not a URL: 'http://soc:99999/'"),
    ("notify-does-nothing", act("notify: {log: false}"), 6, 17, "playbooks[0].do[0].notify",
     "notify does nothing: set log: true or give a webhook"),
    ("retries-without-webhook", act("notify: {retries: 2}"), 6, 27, "playbooks[0].do[0].notify.retries",
     "retries applies to a webhook"),
    ("timeout-range", act("notify: {webhook: 'https://x.example/h', timeout_s: 0}"), 6, 61,
     "playbooks[0].do[0].notify.timeout_s", "must be between 0.1 and 60, got 0"),
    ("notify-ttl", act("notify: {ttl: 5m}"), 6, 18, "playbooks[0].do[0].notify.ttl",
     "unknown key 'ttl'; allowed keys: log, webhook, timeout_s, retries"),
    ("duplicate-name", HEAD + WHEN + DO + "  - name: p\n" + WHEN + DO, 7, 11, "playbooks[1].name",
     "duplicate playbook name 'p' (first on line 2)"),
    ("top-level-list", "- name: p\n", 1, 1, None,
     "the top level must be a mapping with a 'playbooks:' list, got a list (put the list under 'playbooks:')"),
    ("top-level-scalar", "hello\n", 1, 1, None, "the top level must be a mapping, got a string ('hello')"),
    ("playbooks-null", "playbooks:\n", 1, 11, "playbooks", "expected a list, got null"),
    ("playbook-scalar", "playbooks: [p]\n", 1, 13, "playbooks[0]", "expected a mapping, got a string ('p')"),
    ("alias", "playbooks:\n  - name: &n p\n    description: *n\n", 3, 18, None, "aliases are not allowed"),
    ("merge-key", "playbooks:\n  - <<: {name: p}\n", 2, 5, "playbooks[0].<<", "merge keys ('<<') are not allowed"),
    ("python-tag", "playbooks:\n  - name: !!python/name:os.system ''\n", 2, 11, "playbooks[0].name",
     "tag '!!python/name:os.system' is not allowed"),
    ("custom-tag", HEAD + WHEN + "    do: !steps [notify]\n", 5, 9, "playbooks[0].do",
     "tag '!steps' is not allowed"),
    ("two-documents", HEAD + WHEN + DO + "---\n" + HEAD, 7, 1, None,
     "only one YAML document is allowed (found a second '---')"),
    ("yaml-syntax", "playbooks:\n  - name: p\n   when: x\n", 3, 4, None, "YAML syntax error:"),
    ("control-char", "playbooks: a\x07b\n", 1, 13, None, "invalid character '\\x07'"),
    ("empty-file", "# nothing here\n", None, None, None, "no playbooks: expected a 'playbooks:' list"),
]


def test_enough_malformed_cases() -> None:
    assert len(BAD) >= 30 and len({b[0] for b in BAD}) == len(BAD)


@pytest.mark.parametrize(("text", "line", "column", "field", "fragment"),
                         [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_playbook(tmp_path: Path, text: str, line: int | None, column: int | None,
                      field: str | None, fragment: str) -> None:
    path = write(tmp_path, text)
    (problem,) = problems_of([path], known_hosts=HOSTS, known_tags=TAGS)
    assert (problem.file, problem.line, problem.column, problem.field) == (str(path), line, column, field)
    assert fragment in problem.message
    where = str(path) if line is None else f"{path}:{line}:{column}"
    assert str(problem) == f"{where}: " + (f"{field}: " if field else "") + problem.message


def test_unknown_names_pass_without_known_sets(tmp_path: Path) -> None:
    text = act("redirect: {to: nowhere}").replace("kinds: [anomaly]", "kinds: [anomaly]\n      tags: [whatever]")
    (book,) = load_playbooks([write(tmp_path, text)])
    assert book.do[0].params == Redirect(to="nowhere") and book.when.tags == ("whatever",)


def test_every_problem_is_collected_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, textwrap.dedent("""\
        playbooks:
          - name: scan
            mode: loud
            when:
              kinds: [anomaly, scan]
              conditions: [distinct_dst_ports >> 5]
            do:
              - quarantine: {ttl: 5 m}
              - rate_limit: {}
          - name: fine
            when: {kinds: [outbreak]}
            do: [notify: ]
        """), "a.yaml")
    second = write(tmp_path, textwrap.dedent("""\
        playbooks:
          - name: fine
            when: {kinds: [anomaly]}
            do: []
        """), "b.yaml")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(PlaybookError) as info:
        load_playbooks([first, second, missing])
    assert [(p.file, p.line, p.column) for p in info.value.problems] == [
        (str(first), 3, 11), (str(first), 5, 24), (str(first), 6, 39), (str(first), 8, 27), (str(first), 9, 21),
        (str(second), 2, 11), (str(second), 4, 9), (str(missing), None, None)]
    text = str(info.value)
    assert text.splitlines() == [str(p) for p in info.value.problems]
    assert f"{second}:2:11: playbooks[0].name: duplicate playbook name 'fine' (first on {first}:10)" in text
    assert f"{missing}: file not found" in text
    assert "bad operator '>>'" in text and "give exactly one of 'kbps' and 'pps'" in text


def test_file_size_limit(tmp_path: Path) -> None:
    body = "playbooks:\n  - {name: p, when: {kinds: [anomaly]}, do: [notify: ]}\n"
    path = tmp_path / "big.yaml"
    path.write_bytes(body.encode() + b"#" * (MAX_FILE_BYTES - len(body)))
    assert [p.name for p in load_playbooks([path])] == ["p"]        # exactly 1 MiB is fine
    path.write_bytes(body.encode() + b"#" * (MAX_FILE_BYTES + 1 - len(body)))
    (problem,) = problems_of([path])
    assert str(problem) == f"{path}: file is larger than 1 MiB (1048577 bytes)"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"playbooks:\n  - name: caf\xe9\n")
    (problem,) = problems_of([path])
    assert (problem.line, problem.column) == (2, 14) and "not valid UTF-8 (byte 24)" in problem.message


def test_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    (problem,) = problems_of([fifo])
    assert str(problem) == f"{fifo}: not a regular file"


def test_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = write(tmp_path, "\n".join(lines) + "\nplaybooks: *a9\n")
    start = time.perf_counter()
    (problem,) = problems_of([path])
    assert time.perf_counter() - start < 1.0
    assert (problem.line, problem.column, problem.message) == (2, 10, "aliases are not allowed")


def test_python_tag_is_not_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    calls: list[object] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    path = write(tmp_path, textwrap.dedent(f"""\
        playbooks:
          - name: p
            description: !!python/object/apply:os.system ['touch {marker}']
            when: {{kinds: [anomaly]}}
            do: [notify: !!python/object/new:os.system ['touch {marker}']]
        """))
    problems = problems_of([path])
    assert [(p.line, p.column, p.field) for p in problems] == [
        (3, 18, "playbooks[0].description"), (5, 18, "playbooks[0].do[0].notify")]
    assert all("!!python/object" in p.message and "is not allowed" in p.message for p in problems)
    assert calls == [] and not marker.exists()


def test_dry_run_playbook_with_webhook_is_fine() -> None:
    text = act("notify: {webhook: 'https://soc.example.net/h', timeout_s: 2.5, retries: 1}").replace(
        "  - name: p\n", "  - name: p\n    mode: dry-run\n")
    (book,) = parse_playbooks(text)
    assert book.dry_run and book.do[0].params == Notify(True, "https://soc.example.net/h", 2.5, 1)


def test_parse_playbooks_raises_with_its_source() -> None:
    with pytest.raises(PlaybookError) as info:
        parse_playbooks("playbooks: [{name: x}]\n", "api")
    assert str(info.value).splitlines() == [
        "api:1:13: playbooks[0].when: required key 'when' is missing",
        "api:1:13: playbooks[0].do: required key 'do' is missing"]


# --------------------------------------------------------------------------- schema


def test_schema_matches_the_format() -> None:
    schema = json.loads((SHIPPED / "schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and schema["required"] == ["playbooks"]
    assert set(schema["properties"]) == {"playbooks"} and schema["additionalProperties"] is False
    defs = schema["$defs"]
    assert set(defs["playbook"]["properties"]) == {"name", "description", "mode", "priority", "when", "do"}
    assert defs["playbook"]["properties"]["mode"]["enum"] == list(pb.MODES)
    assert set(defs["when"]["properties"]) == {f.name for f in dataclasses.fields(Trigger)}
    assert defs["when"]["properties"]["kinds"]["items"]["enum"] == list(pb.ALERT_KINDS)
    assert defs["action"]["oneOf"] == [{"$ref": f"#/$defs/{a}"} for a in pb.actions()]
    for kind, cls in {a.name: a.Params for a in REGISTRY}.items():
        body = defs[kind]["properties"][kind]
        common = set() if kind == "notify" else {"ttl", "escalate"}
        assert set(body["properties"]) == {f.name for f in dataclasses.fields(cls)} | common, kind
        assert body["additionalProperties"] is False
    assert set(defs["escalate"]["properties"]) == {f.name for f in dataclasses.fields(Escalate)}

    # The schema's own patterns accept every condition, duration and name the shipped files use.
    cond_re, dur_re, name_re = (re.compile(defs[k]["pattern"]) for k in ("condition", "duration", "name"))
    for feature in pb.CONDITION_FEATURES:
        assert cond_re.fullmatch(f"{feature} >= 1.5") and not cond_re.fullmatch(f"{feature} => 1")
    seen = 0
    for path in sorted(SHIPPED.glob("*.yaml")):
        for book in yaml.safe_load(path.read_text(encoding="utf-8"))["playbooks"]:
            assert name_re.fullmatch(book["name"])
            for c in book["when"].get("conditions", []):
                assert cond_re.fullmatch(c), c
                seen += 1
            for action in book["do"]:
                (body,) = action.values()
                durations = [body.get("ttl")] + list((body.get("escalate") or {}).values()) if body else []
                for value in durations:
                    if isinstance(value, str):
                        assert dur_re.fullmatch(value), value
                        seen += 1
    assert seen >= 10

    if importlib.util.find_spec("jsonschema") is None:
        return  # not a dependency: without it, the checks above are what can be asserted
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted(SHIPPED.glob("*.yaml")):
        assert list(validator.iter_errors(yaml.safe_load(path.read_text(encoding="utf-8")))) == [], path
    for text in (act("rate_limit: {kbps: 100, pps: 10}"), act("quarentine: {}"), cond("tx_pkts > 5"),
                 HEAD + "    colour: red\n" + WHEN + DO, act("notify: {retries: 2}")):
        assert list(validator.iter_errors(yaml.safe_load(text))), text


# --------------------------------------------------------------------------- command line


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.response.playbook", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_validates_shipped_playbooks() -> None:
    done = run_cli("validate", "playbooks")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 7 and done.stderr == ""
    assert "playbooks/quarantine-scanner.yaml: ok, 4 playbooks: quarantine-scanner-burst (enforce, " \
           "priority 800, 2 actions), quarantine-scanner-ports (enforce, priority 800, 2 actions), " \
           "quarantine-scanner-slow (enforce, priority 800, 2 actions), quarantine-scanner-sweep (enforce, " \
           "priority 800, 2 actions)" in lines
    assert "playbooks/ratelimit-flood.yaml: ok, 1 playbook: ratelimit-flood (enforce, priority 400, 2 actions)" \
        in lines


def test_cli_reports_every_problem(tmp_path: Path) -> None:
    bad = write(tmp_path, act("quarantine: {ttl: 600}").replace("kinds: [anomaly]", "kinds: [scan]"))
    done = run_cli("validate", str(SHIPPED / "ratelimit-flood.yaml"), str(bad))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{bad}:4:15: playbooks[0].when.kinds[0]: unknown alert kind 'scan'; expected one of: anomaly, "
        "new_flow_burst, outbreak, lateral_probe, port_probe, new_service, failed_connections, address_scan",
        f"{bad}:6:27: playbooks[0].do[0].quarantine.ttl: a duration needs a unit (s, m, h or d): write 600s "
        "for seconds",
        "iotguard: 2 problems in 1 file"]


def test_cli_checks_hosts_and_tags_against_a_config(tmp_path: Path) -> None:
    done = run_cli("validate", "--strict", "--config", "iotguard.example.yaml", "playbooks")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "playbooks/block-dead-c2.yaml:16:14: playbooks[0].when.tags[0]: unknown tag 'iot'",
        "playbooks/block-lateral-iot.yaml:9:14: playbooks[0].when.tags[0]: unknown tag 'iot'",
        "playbooks/block-lateral-iot.yaml:28:14: playbooks[1].when.tags[0]: unknown tag 'iot'",
        "playbooks/honeypot-bruteforce.yaml:17:15: playbooks[0].do[0].redirect.to: unknown host 'honeypot'",
        "playbooks/quarantine-scanner.yaml:68:14: playbooks[3].when.tags[0]: unknown tag 'iot'",
        "iotguard: 5 problems in 4 files"]
    # without --strict the same references disable those playbooks, with a warning each
    done = run_cli("validate", "--config", "iotguard.example.yaml", "playbooks")
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        "warning: playbooks/block-dead-c2.yaml:16:14: playbooks[0].when.tags[0]: unknown tag 'iot': "
        "the inventory has no such tag",
        "warning: playbooks/block-lateral-iot.yaml:9:14: playbooks[0].when.tags[0]: unknown tag 'iot': "
        "the inventory has no such tag",
        "warning: playbooks/block-lateral-iot.yaml:28:14: playbooks[1].when.tags[0]: unknown tag 'iot': "
        "the inventory has no such tag",
        "warning: playbooks/honeypot-bruteforce.yaml:17:15: playbooks[0].do[0].redirect.to: unknown host "
        "'honeypot': the inventory has no such host",
        "warning: playbooks/quarantine-scanner.yaml:68:14: playbooks[3].when.tags[0]: unknown tag 'iot': "
        "the inventory has no such tag"]
    assert "honeypot-bruteforce (enforce, priority 700, 2 actions; DISABLED: unknown host 'honeypot')" \
        in done.stdout
    config = write(tmp_path, "devices:\n  - {name: honeypot, ip: 10.0.0.66, tags: [iot]}\n", "site.yaml")
    assert run_cli("validate", "--config", str(config), "playbooks").returncode == 0
    broken = write(tmp_path, "poll_interval: 0\n", "broken.yaml")
    done = run_cli("validate", "--config", str(broken), "playbooks")
    assert done.returncode == 2 and "configuration error" in done.stderr


def test_cli_usage_errors() -> None:
    assert run_cli().returncode == 2
    assert run_cli("validate").returncode == 2
    assert run_cli("check", "playbooks").returncode == 2


def test_cmd_playbook_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pb.cmd_playbook_validate([str(SHIPPED / "block-c2-outbreak.yaml")]) == 0
    out, err = capsys.readouterr()
    assert out == (f"{SHIPPED / 'block-c2-outbreak.yaml'}: ok, 1 playbook: block-c2-outbreak "
                   "(enforce, priority 900, 2 actions)\n") and err == ""
    empty = write(tmp_path, "playbooks: []\n")
    assert pb.cmd_playbook_validate([str(empty)]) == 0
    assert capsys.readouterr().out == f"{empty}: ok, 0 playbooks\n"
    assert pb.cmd_playbook_validate([str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'none.yaml'}: file not found\niotguard: 1 problem in 1 file\n"
    (tmp_path / "sub").mkdir()
    assert pb.cmd_playbook_validate([str(tmp_path / "sub")]) == 2
    assert "no playbook files found" in capsys.readouterr().err
    assert pb.main(["validate", str(SHIPPED)]) == 0


def test_shipped_schema_is_generated_from_the_registry() -> None:
    from controller.response import schema
    assert (SHIPPED / "schema.json").read_text(encoding="utf-8") == schema.text(), \
        "playbooks/schema.json is stale: python -m controller.response.schema > playbooks/schema.json"


def test_docs_action_table_is_generated_from_the_registry() -> None:
    from controller.response import schema
    docs = (REPO / "docs" / "playbooks.md").read_text(encoding="utf-8")
    assert schema.action_table() in docs


def test_shipped_playbooks_stay_usable_with_an_inventory_that_lacks_honeypot_and_iot(tmp_path: Path) -> None:
    warnings: list[Problem] = []
    books = {b.name: b for b in load_playbooks([str(SHIPPED)], known_hosts={"gw", "cam"}, known_tags={"camera"},
                                              strict=False, warnings=warnings)}
    assert len(books) == 11
    assert books["honeypot-bruteforce"].disabled == "unknown host 'honeypot'"
    assert books["block-lateral-iot"].disabled == "unknown tag 'iot'"
    assert {n for n, b in books.items() if b.disabled} == {"honeypot-bruteforce", "block-lateral-iot",
                                                            "block-lateral-iot-slow", "block-dead-c2",
                                                            "quarantine-scanner-sweep"}
    assert sorted(w.field for w in warnings) == ["playbooks[0].do[0].redirect.to", "playbooks[0].when.tags[0]",
                                                 "playbooks[0].when.tags[0]", "playbooks[1].when.tags[0]",
                                                 "playbooks[3].when.tags[0]"]
    assert not books["quarantine-scanner-burst"].disabled                  # the rest still answer
    from controller.detection.alert import Alert
    alert = Alert(id="a", time=0.0, kind="anomaly", device="cam", mac=None, score=99.0, threshold=1.0,
                  explanation="", window={"lateral_peers": 50.0})
    assert "block-lateral-iot" not in [b.name for b in matching(books.values(), alert, None)]


def test_every_entry_of_a_playbook_directory_is_loaded_or_reported(tmp_path: Path) -> None:
    import os
    d = tmp_path / "books"
    d.mkdir()
    (d / "good.yaml").write_text(act("notify: {log: true}"), encoding="utf-8")
    os.symlink(d / "missing.yaml", d / "dangling.yaml")
    os.symlink(d / "loop.yaml", d / "loop.yaml")
    os.mkfifo(d / "fifo.yml")
    (d / "sub.yaml").mkdir()
    (d / "notes.ini").write_text("x", encoding="utf-8")
    (d / "schema.json").write_text("{}", encoding="utf-8")
    problems = problems_of([d])
    assert sorted((Path(p.file).name, p.message) for p in problems) == [
        ("dangling.yaml", "not a playbook file: a dangling symbolic link"),
        ("fifo.yml", "not a playbook file: a FIFO"),
        ("loop.yaml", "not a playbook file: a symbolic link loop"),
        ("sub.yaml", "not a playbook file: a sub-directory (its files are not read)")]
    (d / "dangling.yaml").unlink(), (d / "loop.yaml").unlink(), (d / "fifo.yml").unlink(), (d / "sub.yaml").rmdir()
    warnings: list[Problem] = []
    assert [b.name for b in load_playbooks([d], warnings=warnings)] == ["p"]
    assert [(Path(w.file).name, w.message) for w in warnings] == [("notes.ini", "ignored: not a *.yaml or *.yml file")]
