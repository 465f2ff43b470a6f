import numpy as np
import pytest

from controller.openflow import rules
from controller.network.forwarding import FlowRegistry
from controller.openflow.wire import FLOW_STATS_HEAD
from tests.unit.kinds import Kind
from controller.telemetry.stats import (FlowStatsTracker, MultipartAssembler, PortStatsTracker, TrafficTable, by_device,
                                        edge_array)

CAM, NVR, INET = "00:00:00:00:00:01", "00:00:00:00:00:02", "00:00:00:00:00:03"


def heads(rows):
    """rows: (cookie, packets, bytes, duration_sec)."""
    a = np.zeros(len(rows), dtype=FLOW_STATS_HEAD)
    for i, (c, p, b, d) in enumerate(rows):
        a[i]["cookie"], a[i]["packet_count"], a[i]["byte_count"], a[i]["duration_sec"] = c, p, b, d
    return a


def fwd(i):
    return rules.cookie(Kind.FORWARD, i)


def test_first_poll_is_a_baseline_not_traffic():
    t = FlowStatsTracker()
    d = t.update(1, heads([(fwd(1), 10, 1000, 5)]), now=100.0)
    assert d.window == 0 and d.packets.tolist() == [0] and d.bytes.tolist() == [0]


def test_deltas_between_polls():
    t = FlowStatsTracker()
    t.update(1, heads([(fwd(1), 10, 1000, 5), (fwd(2), 1, 60, 5)]), now=100.0)
    d = t.update(1, heads([(fwd(2), 3, 180, 6), (fwd(1), 25, 2500, 6)]), now=101.0)
    got = dict(zip(d.cookie.tolist(), zip(d.packets.tolist(), d.bytes.tolist())))
    assert got == {fwd(1): (15, 1500), fwd(2): (2, 120)}
    assert d.window == pytest.approx(1.0) and not d.reset.any()


def test_new_flow_between_polls_counts_from_zero():
    t = FlowStatsTracker()
    t.update(1, heads([]), now=0.0)
    d = t.update(1, heads([(fwd(9), 4, 400, 0)]), now=1.0)
    assert d.packets.tolist() == [4] and d.bytes.tolist() == [400]


def test_counter_reset_gives_the_new_counter_not_a_negative_delta():
    t = FlowStatsTracker()
    t.update(1, heads([(fwd(1), 100, 10000, 50)]), now=0.0)
    d = t.update(1, heads([(fwd(1), 7, 700, 1)]), now=1.0)
    assert d.reset.tolist() == [True]
    assert d.packets.tolist() == [7] and d.bytes.tolist() == [700]


def test_reset_detected_by_duration_even_if_counters_grew():
    t = FlowStatsTracker()
    t.update(1, heads([(fwd(1), 5, 500, 50)]), now=0.0)
    d = t.update(1, heads([(fwd(1), 9, 900, 2)]), now=1.0)
    assert d.reset.tolist() == [True] and d.packets.tolist() == [9]


def test_vanished_flow_is_reported():
    t = FlowStatsTracker()
    t.update(1, heads([(fwd(1), 5, 500, 5), (fwd(2), 5, 500, 5)]), now=0.0)
    d = t.update(1, heads([(fwd(2), 6, 600, 6)]), now=1.0)
    assert d.vanished.tolist() == [fwd(1)]


def test_flow_removed_tail_counted_once():
    t = FlowStatsTracker()
    t.update(1, heads([(fwd(1), 10, 1000, 5)]), now=0.0)
    tail = t.removed(1, fwd(1), 14, 1400, 9.0, now=0.5)
    assert tail.packets.tolist() == [4] and tail.bytes.tolist() == [400]
    d = t.update(1, heads([]), now=1.0)
    assert d.vanished.tolist() == []     # known removal, not a lost tail
    dup = t.removed(1, fwd(2), 5, 500, 0.4, now=1.2)   # lived and died between polls
    assert dup.packets.tolist() == [5] and dup.bytes.tolist() == [500]
    assert t.removed(1, fwd(2), 5, 500, 0.4, now=1.3).packets.tolist() == [0]  # a repeat


def test_flow_removed_then_readded_between_polls_counts_new_flow_fully():
    t = FlowStatsTracker()
    t.update(1, heads([(fwd(1), 10, 1000, 5)]), now=0.0)
    t.removed(1, fwd(1), 12, 1200, 7.0, now=0.3)
    d = t.update(1, heads([(fwd(1), 3, 300, 0)]), now=1.0)
    assert d.packets.tolist() == [3] and not d.reset.any()


def test_duplicate_cookies_are_summed():
    t = FlowStatsTracker()
    c = rules.cookie(Kind.QUARANTINE, 4)
    t.update(1, heads([(c, 1, 10, 5), (c, 2, 20, 5)]), now=0.0)
    d = t.update(1, heads([(c, 3, 30, 6), (c, 4, 40, 6)]), now=1.0)
    assert d.cookie.tolist() == [c] and d.packets.tolist() == [4] and d.bytes.tolist() == [40]


def test_switches_are_independent():
    t = FlowStatsTracker()
    t.update(1, heads([(fwd(1), 10, 1000, 5)]), now=0.0)
    d2 = t.update(2, heads([(fwd(1), 3, 300, 5)]), now=0.5)
    assert d2.window == 0
    d1 = t.update(1, heads([(fwd(1), 11, 1100, 6)]), now=1.0)
    assert d1.packets.tolist() == [1]


def test_the_window_is_the_switchs_interval_not_the_time_the_replies_were_handled():
    """A reply that waited in a busy event loop, then one handled on time: 0.07 s apart here,
    1 s apart on the switch, whose counters are 1 s of traffic (seen in CI: two devices read
    15 times their rate and re-alerted)."""
    t = FlowStatsTracker()
    t.update(1, heads([(fwd(1), 10, 1000, 5), (fwd(2), 1, 100, 9)]), now=0.93)
    d = t.update(1, heads([(fwd(1), 30, 3000, 6), (fwd(2), 2, 200, 10), (fwd(3), 4, 400, 0)]), now=1.0)
    assert d.window == pytest.approx(1.0)
    still = t.update(1, heads([(fwd(1), 31, 3100, 6), (fwd(2), 3, 300, 10)]), now=1.5)
    assert still.window == pytest.approx(0.5), "durations that did not advance say nothing"
    redone = t.update(1, heads([(fwd(1), 1, 100, 0)]), now=2.5)
    assert redone.window == pytest.approx(1.0), "a re-added flow's duration is no interval"


def test_port_deltas_use_the_ports_duration_when_it_advances():
    t = PortStatsTracker()
    t.update(1, [(1, 1000, 2000, 10, 20, 100.0), (2, 0, 0, 0, 0)], now=0.95)
    d1, d2 = t.update(1, [(1, 2000, 2500, 30, 25, 101.0), (2, 5, 5, 1, 1)], now=1.0)
    assert d1.window == pytest.approx(1.0) and d1.rx_packets == 20 and not d1.reset
    assert d2.window == pytest.approx(0.05), "no duration: the controller's interval"
    (again,) = t.update(1, [(1, 3000, 3000, 40, 30, 0.5)], now=2.0)
    assert again.reset and again.window == pytest.approx(1.0), "a port re-added: its counters anew"


def test_by_device_counts_each_conversation_once_at_the_edges():
    reg = FlowRegistry()
    up = reg.id_for(rules.flow_key(CAM, INET, 0x0800, "203.0.113.10", 6, 443))
    down = reg.id_for(rules.flow_key(INET, CAM, 0x0800, "10.0.0.11", 6, 40000))
    edges = {CAM: 1, INET: 2}
    t = FlowStatsTracker()
    for dpid in (1, 2):   # the same two flows exist on both switches
        t.update(dpid, heads([(fwd(up), 0, 0, 0), (fwd(down), 0, 0, 0)]), now=0.0)
    per = {}
    for dpid in (1, 2):
        d = t.update(dpid, heads([(fwd(up), 100, 150000, 2), (fwd(down), 50, 3000, 2)]), now=2.0)
        for mac, traffic in by_device(d, reg, edge_array(reg, edges.get)).items():
            per[mac] = traffic
    cam, inet = per[CAM], per[INET]
    assert (cam.tx_bytes, cam.tx_packets, cam.rx_bytes, cam.rx_packets) == (150000, 100, 3000, 50)
    assert (inet.tx_bytes, inet.rx_bytes) == (3000, 150000)
    assert cam.flows == 1
    assert cam.rates()["tx_bytes_per_s"] == 75000.0
    assert cam.rates()["packets_per_s"] == 75.0


def test_by_device_ignores_unknown_cookies_and_unlocated_devices():
    reg = FlowRegistry()
    fid = reg.id_for(rules.flow_key(CAM, NVR, 0x0806))
    t = FlowStatsTracker()
    t.update(1, heads([(fwd(fid), 0, 0, 0), (rules.cookie(Kind.PIPELINE, 2), 0, 0, 0),
                       (fwd(999), 0, 0, 0)]), now=0)
    d = t.update(1, heads([(fwd(fid), 5, 300, 1), (rules.cookie(Kind.PIPELINE, 2), 9, 900, 1),
                           (fwd(999), 1, 1, 1)]), now=1)
    per = by_device(d, reg, edge_array(reg, {CAM: 1}.get))
    assert set(per) == {CAM}
    assert per[CAM].tx_bytes == 300 and per[CAM].rx_bytes == 0


def test_the_traffic_table_keeps_each_devices_last_window_and_folds_tails_into_it():
    """One switch's poll updates the devices located there; a removed flow's tail adds to
    its devices' last window; a device that sent is seen then (the devices view's
    last_seen); one that only received is not."""
    reg = FlowRegistry()
    up = reg.id_for(rules.flow_key(CAM, NVR, 0x0800, "10.0.0.2", 6, 554))
    edges = edge_array(reg, {CAM: 1, NVR: 1}.get)
    t = FlowStatsTracker()
    table = TrafficTable(reg)
    t.update(1, heads([(fwd(up), 0, 0, 0)]), now=0.0)
    d = t.update(1, heads([(fwd(up), 10, 5000, 2)]), now=2.0)
    table.update(by_device(d, reg, edges), now=2.0, wall=1000.0)
    assert table.get(CAM).tx_bytes == 5000 and table.get(NVR).rx_bytes == 5000
    assert table.rates(CAM, now=3.0, stale=4.0)["tx_bytes_per_s"] == 2500.0
    assert table.rates(CAM, now=9.0, stale=4.0)["tx_bytes_per_s"] == 0.0, "stale: zero"
    assert table.last_sent(CAM) == 1000.0 and table.last_sent(NVR) is None
    tail = t.removed(1, fwd(up), 14, 7000, 3.0, now=3.0)
    table.fold(by_device(tail, reg, edges))
    assert table.get(CAM).tx_bytes == 7000 and table.get(CAM).tx_packets == 14
    assert set(table.last) == {CAM, NVR} and table.get("00:00:00:00:00:09") is None


def test_multipart_assembly():
    a = MultipartAssembler()
    for dpid, xid in ((1, 7), (2, 7), (1, 8)):
        a.expect(dpid, xid)
    assert a.add(1, 7, b"a", more=True) is None
    assert a.add(2, 7, b"x", more=False) == [b"x"]
    assert a.add(1, 8, b"other", more=True) is None
    assert a.add(1, 7, b"b", more=True) is None
    assert a.add(1, 7, b"c", more=False) == [b"a", b"b", b"c"]
    assert a.pending(1) == 1
    a.forget(1)
    assert a.pending(1) == 0


def test_multipart_refuses_endless_replies():
    a = MultipartAssembler(max_parts=3)
    a.expect(1, 1)
    for _ in range(3):
        a.add(1, 1, b"", more=True)
    with pytest.raises(ValueError, match="more than 3 parts"):
        a.add(1, 1, b"", more=True)


def test_port_stats_deltas_and_reset():
    t = PortStatsTracker()
    assert t.update(1, [(1, 100, 200, 1, 2)], now=0) == []
    (d,) = t.update(1, [(1, 150, 260, 2, 4)], now=1)
    assert (d.rx_bytes, d.tx_bytes, d.rx_packets, d.tx_packets, d.reset) == (50, 60, 1, 2, False)
    (r,) = t.update(1, [(1, 10, 20, 1, 1)], now=2)
    assert r.reset and r.rx_bytes == 10
