"""Failed connections: judged from the flow's counters, counted by the novelty memory,
alerted in plain words, and seen through the real Core (packet-in, flow stats, window)."""

import json
import struct

import numpy as np

from controller.config import parse_config
from controller.core import Core
from controller.detection import novelty
from controller.detection.novelty import NoveltyMemory
from controller.openflow import rules
from controller.openflow.packets import mac_bytes
from controller.telemetry.outcomes import JUDGE_AFTER, ConnectionOutcomes
from controller.telemetry.stats import FlowDeltas
from tests.unit.test_core import Clock, arp
from tests.unit.test_novelty import CAM, PLUG, TCP, Replay, ip

SYN = 74


def deltas(dpid, rows, t=0.0):
    """FlowDeltas of (flow id, packets, bytes) on forwarding cookies."""
    cookie = np.array([rules.cookie(rules.Kind.FORWARD, fid) for fid, _, _ in rows], dtype=np.uint64)
    n = len(rows)
    return FlowDeltas(dpid=dpid, time=t, window=1.0, cookie=cookie,
                      packets=np.array([p for _, p, _ in rows], dtype=np.int64),
                      bytes=np.array([b for _, _, b in rows], dtype=np.int64),
                      duration=np.ones(n), reset=np.zeros(n, dtype=bool))


def test_a_connection_is_judged_by_what_its_flow_counted_after_the_syn():
    o = ConnectionOutcomes()
    o.opened(1, CAM, ip("198.51.100.1"), 443, 1, SYN, 10.0)      # nothing more: refused
    o.opened(2, CAM, ip("198.51.100.2"), 443, 1, SYN, 10.0)      # two retransmissions: no answer
    o.opened(3, CAM, ip("198.51.100.3"), 443, 1, SYN, 10.0)      # ACK and data: answered
    o.opened(4, CAM, ip("198.51.100.4"), 443, 1, SYN, 10.0)      # answered, counted on another switch only
    o.add(deltas(1, [(2, 2, 2 * SYN), (3, 3, 66 + 200 + 66)]))
    o.add(deltas(2, [(4, 3, 66 + 200 + 66)]))
    assert o.due(10.0 + JUDGE_AFTER - 0.1) == [], "not before its time"
    got = {x.ip - ip("198.51.100.0"): (x.failed, x.retries) for x in o.due(10.0 + JUDGE_AFTER)}
    assert got == {1: (True, 0), 2: (True, 2), 3: (False, 0), 4: (True, 0)}
    assert len(o) == 0


def test_a_single_ack_after_the_syn_is_an_answer_and_pending_is_bounded():
    o = ConnectionOutcomes(max_pending=2)
    o.opened(1, CAM, ip("198.51.100.1"), 80, 1, 58, 0.0)
    o.add(deltas(1, [(1, 1, 54)]))           # an ACK without options: 4 bytes less than the SYN's MSS
    (x,) = o.due(5.0)
    assert not x.failed
    for fid in range(10, 15):
        o.opened(fid, CAM, ip("198.51.100.1"), 80, 1, 58, 1.0)
    assert len(o) == 2 and o.dropped == 3, "the oldest are dropped unjudged, and counted"


def failures(r, host, port, times):
    """Feed failed connections at the given times (as Core does at each window)."""
    for t in times:
        r.run_until(t)
        r.det.on_failed(CAM, host, port, t)


def test_a_bot_retrying_a_dead_c2_is_one_alert_in_plain_words():
    """Torii's pattern (IoT-23 20-1): HTTPS, never used, to one new host, unanswered every
    minute or two.  The third failure within 10 min alerts, once; later ones update it."""
    r = Replay().warm()
    start = r.t + 0.5
    c2 = ip("66.85.157.90")
    failures(r, c2, 8443, [start, start + 120, start + 200, start + 400, start + 700])
    r.run_until(start + 705)
    got = [a for a in r.alerts if a.kind == "failed_connections"]
    assert len(got) == 1, [a.explanation for a in r.alerts]
    a = got[0]
    assert start + 200 <= a.time <= start + 203
    assert a.explanation == ("camera opened 3 connections to hosts or services it never used that got no answer "
                             "or were refused, in the last 10 min (TCP/8443 to 66.85.157.90 \u00d73); while "
                             "learning none of its connections failed"), a.explanation
    assert a.threshold == 3 and a.window["failed_connections_10min"] == 3
    assert r.det.current(a.id).count == 3, "the two later failures update it"
    assert a.features[0].get("hosts") == ["66.85.157.90"]


def test_a_habit_that_fails_is_an_outage_not_news():
    r = Replay().warm()
    start = r.t + 0.5
    failures(r, ip("203.0.113.10"), 443, [start + k for k in range(0, 60, 5)])    # its own cloud host
    failures(r, ip("10.0.0.2"), 554, [start + 61 + k for k in range(0, 30, 5)])   # its own NVR
    r.run_until(start + 100)
    assert r.alerts == []


def test_failures_while_learning_are_churn_that_raises_the_allowance():
    r = Replay(macs=(PLUG,))
    for k in range(0, 60, 6):         # a plug whose warm-up saw a failure every 6 s after settling in
        t = 1000.0 + 25 + k
        r.run_until(t)
        r.det.on_failed(PLUG, ip("198.51.100.9"), 9999, t)
    r.run_until(1000.0 + 70)
    mem = r.det.novelty.devices[PLUG]
    assert not mem.learning and mem.allowance["failed_connections"][0] > novelty.FLOORS["failed_connections"][0]


def test_a_memory_saved_before_failed_connections_loads_with_them_unlearned():
    m = NoveltyMemory(["10.0.0.0/8"], 60)
    m.observe(CAM, TCP, ip("10.0.0.2"), 554, 0.0, learning=True)
    m.observe(CAM, TCP, ip("10.0.0.2"), 554, 100.0, learning=False)
    saved = m.to_dict()
    assert saved["schema"] == "iotguard.novelty/2"
    assert NoveltyMemory.parse(json.loads(json.dumps(saved)))[CAM].allowance == m.devices[CAM].allowance
    old = json.loads(json.dumps(saved))
    old["schema"] = "iotguard.novelty/1"
    for d in old["devices"]:
        del d["allowance"]["failed_connections"], d["settled_new"]["failed_connections"]
    dev = NoveltyMemory.parse(old)[CAM]
    assert dev.allowance["failed_connections"] == (10**9,) * 3, "never trips until it learns again"
    del saved["devices"][0]["allowance"]["failed_connections"]
    try:
        NoveltyMemory.parse(saved)
    except novelty.NoveltyFormatError as e:
        assert "missing field 'failed_connections'" in str(e)
    else:
        raise AssertionError("a /2 memory must carry every kind")


# ------------------------------------------------------------------ through the Core

def syn(src, dst, ip_src, ip_dst, dport, size=SYN):
    l4 = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    l4 += b"\0" * (size - 14 - 20 - len(l4))
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, 6, 0,
                      bytes(map(int, ip_src.split("."))), bytes(map(int, ip_dst.split("."))))
    return mac_bytes(dst) + mac_bytes(src) + b"\x08\x00" + iph + l4


def stats(rows):
    out = b""
    for c, p, b in rows:
        out += struct.pack("!HBxIIHHHH4xQQQ", 56, 1, 1, 0, 200, 10, 0, 1, c, p, b)
        out += struct.pack("!HH4x", 1, 4)
    return out


def test_core_judges_a_syn_from_its_flow_counters_and_counts_the_failure():
    cfg = parse_config("devices:\n  - {name: camera, mac: \"00:00:00:00:00:11\", tags: [camera, iot]}\n")
    clock = Clock()
    core = Core(cfg, clock=clock, wall=clock)
    core.switch_connected(1)
    core.packet_in(1, 2, arp("00:00:00:00:00:12", "10.0.0.12", "10.0.0.11"))
    core.packet_in(1, 1, arp(CAM, "10.0.0.11", "10.0.0.12"))
    seen = []
    core.detector.on_failed = lambda mac, addr, port, now: seen.append((mac, addr, port))
    out = core.packet_in(1, 1, syn(CAM, "00:00:00:00:00:12", "10.0.0.11", "10.0.0.12", 23))
    (flow,) = [m for _, m in out if getattr(m, "cookie", None) and rules.cookie_kind(m.cookie) == rules.Kind.FORWARD]
    for k in range(1, 5):             # polls: the flow counts one retransmitted SYN, nothing else
        clock.t += 1.0
        core.poll_sent([1])
        core.flow_stats(1, stats([(flow.cookie, 1 if k >= 1 else 0, SYN if k >= 1 else 0)]))
    assert seen == [(CAM, ip("10.0.0.12"), 23)]
    assert core.counters["connections_failed"] == 1


def _with_attribution(r, learned_by_others=()):
    from controller.detection.attribution import Attribution
    from controller.telemetry.features import KnownDestinations
    known = KnownDestinations()
    known.learn(PLUG, np.array(learned_by_others, dtype=np.int64))
    r.det.attribution = Attribution(known, lambda _mac: (), ["10.0.0.0/8"])
    return r


def test_a_dead_c2_alert_names_the_host_for_block_dead_c2_only_when_it_is_one_host_nobody_uses():
    """`remote` is what block_ip target: alert blocks: the one internet host every failure
    went to, if no device talked to it while learning; else nothing (a skip, not a block)."""
    c2, other = ip("66.85.157.90"), ip("66.85.157.91")
    cases = {"one new host": ([c2] * 3, (), "66.85.157.90"),
             "a host another device uses": ([c2] * 3, (c2,), None),
             "two hosts": ([c2, other, c2], (), None)}
    for what, (hosts, others, remote) in cases.items():
        r = _with_attribution(Replay().warm(), others)
        start = r.t + 0.5
        for k, host in enumerate(hosts):
            failures(r, host, 8443, [start + 60 * k])
        r.run_until(start + 60 * len(hosts) + 5)
        (a,) = [a for a in r.alerts if a.kind == "failed_connections"]
        assert a.remote == remote, (what, a.remote)


def test_a_dead_c2_after_a_lan_probe_names_the_host_on_the_open_alert_and_hands_it_on_again():
    """A failed_connections alert stays open 10 min: a dead C2 after failures inside the LAN
    updates it, names the C2 and goes back to the playbooks (block-dead-c2 can act)."""
    r = _with_attribution(Replay().warm())
    start = r.t + 0.5
    for k, port in enumerate((8081, 8082, 8083)):
        failures(r, ip("10.0.0.3"), port, [start + 2 * k])
    r.run_until(start + 10)
    (a,) = [a for a in r.alerts if a.kind == "failed_connections"]
    assert a.remote is None
    r.det.escalated.clear()
    failures(r, ip("66.85.157.90"), 443, [start + 20, start + 30, start + 40])
    r.run_until(start + 45)
    now = r.det.current(a.id)
    assert now.remote == "66.85.157.90" and "HTTPS to 66.85.157.90 \u00d73" in now.explanation, now.explanation
    assert [x.id for x in r.det.escalated] == [a.id], "handed to the playbooks once"


def test_block_dead_c2_blocks_the_named_host_on_every_switch_and_skips_an_alert_that_names_none(tmp_path):
    from dataclasses import replace
    from tests.unit.test_engine import CAMERA, events, make
    from controller.detection.alert import Alert
    engine, _ = make(tmp_path)
    alert = Alert.from_dict({"id": "f1", "time": 0.0, "kind": "failed_connections", "score": 3.0,
                             "threshold": 3.0, "device": "camera", "mac": CAMERA.mac, "tags": ["camera", "iot"],
                             "explanation": "camera opened 3 connections ... (HTTPS to 66.85.157.90 ×3)",
                             "remote": "66.85.157.90"})
    msgs, notify, decided = engine.on_alert(alert, CAMERA, now=0.0)
    blocks = [v for v in engine.active_view(0.0) if v["action"] == "block_ip"]
    assert [(v["playbook"], v["entity"]["prefix"]) for v in blocks] == [("block-dead-c2", "66.85.157.90/32")]
    assert {d for d, _ in msgs} == {1, 2}, "every switch"
    assert notify and notify[0]["playbook"] == "block-dead-c2"
    msgs, _, decided = engine.on_alert(replace(alert, id="f2", remote=None, mac=CAMERA.mac), CAMERA, now=1.0)
    assert msgs == [] and [(d.playbook, d.outcome) for d in decided if d.action == "block_ip"] == \
        [("block-dead-c2", "skipped")]
    assert events(engine, "failed") == []
