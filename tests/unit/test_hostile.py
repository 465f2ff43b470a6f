"""Hostile input (issue #10): bad switch messages, MAC floods, group source MACs, a full disk."""

from __future__ import annotations

import struct
import threading
import time

import numpy as np
import pytest

from controller.addresses import is_group_mac, is_unicast_mac, is_zero_mac
from controller.app import LogBudget
from controller.config import Config
from controller.network.forwarding import Forwarder, FlowRegistry
from controller.network.inventory import Inventory
from controller.network.topology import Topology
from controller.openflow import compat, rules
from controller.openflow.packets import parse_frame
from controller.openflow.rules import Kind, MeterSpec
from controller.telemetry.stats import FlowStatsTracker, MultipartAssembler, MultipartOverflow, PortStatsTracker
from tests.unit.test_core import arp, body, core

ofp, parser = compat.ofp, compat.parser

from tests.integration.rawof import ALL_ONES, ALL_ONES_REMOVED, NO_IN_PORT  # noqa: E402


def parse(raw: bytes):
    version, msg_type, length, xid = struct.unpack_from("!BBHI", raw)
    return parser.msg_parser(None, version, msg_type, length, xid, raw)


def packet_in_with(oxms: bytes):
    m = struct.pack("!HH", 1, 4 + len(oxms)) + oxms
    m += b"\0" * ((8 - len(m) % 8) % 8)
    frame = arp("00:00:00:00:00:21", "10.0.0.21", "10.0.0.99")
    body_ = struct.pack("!IHBBQ", 0xFFFFFFFF, len(frame), 0, 0, 0) + m + b"\0\0" + frame
    raw = struct.pack("!BBHI", 4, 10, 8 + len(body_), 1) + body_
    return parse(raw)


def in_port(p: int) -> bytes:
    return struct.pack("!HBBI", 0x8000, 0, 4, p)


# ------------------------------------------------------------------ the packet-in's in_port
def test_packet_in_without_in_port_is_malformed_not_a_key_error():
    msg = parse(NO_IN_PORT)
    with pytest.raises(compat.Malformed) as e:
        compat.packet_in_port(msg)
    assert (e.value.err_type, e.value.code) == (ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_FIELD)


def test_packet_in_with_two_in_ports_or_a_reserved_one_is_malformed():
    with pytest.raises(compat.Malformed) as e:
        compat.packet_in_port(packet_in_with(in_port(1) + in_port(2)))
    assert e.value.code == ofp.OFPBMC_DUP_FIELD
    for bad in (0, ofp.OFPP_ANY, ofp.OFPP_CONTROLLER):
        with pytest.raises(compat.Malformed):
            compat.packet_in_port(packet_in_with(in_port(bad)))
    assert compat.packet_in_port(packet_in_with(in_port(7))) == 7
    assert compat.packet_in_port(packet_in_with(in_port(ofp.OFPP_LOCAL))) == ofp.OFPP_LOCAL


# ------------------------------------------------------------------ the handler guard
class FakeApp:
    def __init__(self):
        self.failures = []

    @compat.guarded
    def raises(self, ev):
        raise ev

    def handler_failed(self, ev, exc):
        self.failures.append(exc)


@pytest.mark.parametrize("exc", [KeyError("in_port"), compat.hub.TaskExit(), KeyboardInterrupt(),
                                 SystemExit(1), GeneratorExit()])
def test_guard_reports_anything_a_handler_raises(exc):
    app = FakeApp()
    assert app.raises(exc) is None
    assert app.failures == [exc]


def test_guard_survives_a_failing_report():
    class Worse(FakeApp):
        def handler_failed(self, ev, exc):
            raise RuntimeError("the report failed too")
    assert Worse().raises(ValueError("x")) is None


class Loop(compat.GuardedApp):
    pass


def test_event_loop_outlives_handlers_that_raise_base_exceptions():
    app = Loop()
    seen = []

    def bad(ev):
        raise compat.hub.TaskExit()    # a plain Exception under the native hub: os-ken's loop re-raises it

    def worse(ev):
        raise KeyboardInterrupt()

    def good(ev):
        seen.append(ev)

    class Ev(compat.event.EventBase):
        pass

    for h in (bad, worse, good):
        h.callers = {Ev: type("C", (), {"dispatchers": set()})()}
        app.register_handler(Ev, h)
    t = threading.Thread(target=app._event_loop, daemon=True)
    t.start()
    try:
        for _ in range(3):
            app._send_event(Ev(), None)
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(seen) == 3 and t.is_alive()
        assert app.loop_errors == 6
        before = app.loop_beat
        app.post_tick()
        app.post_tick()                   # one tick at a time: never blocks, never piles up
        deadline = time.monotonic() + 5
        while app.loop_beat == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.loop_beat > before and app.loop_age() < 5
    finally:
        app.is_active = False
        app._send_event(app._event_stop, None)
        t.join(5)
    assert not t.is_alive()


def test_a_loop_that_runs_but_falls_behind_is_told_from_an_idle_and_a_stalled_one():
    app = Loop()
    release = threading.Event()

    class Slow(compat.event.EventBase):
        pass

    def slow(ev):
        release.wait(10)               # one handler hogs the thread: events queue behind it

    slow.callers = {Slow: type("C", (), {"dispatchers": set()})()}
    app.register_handler(Slow, slow)
    t = threading.Thread(target=app._event_loop, daemon=True)
    t.start()
    try:
        app.post_tick()
        deadline = time.monotonic() + 5
        while app._tick_posted is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.loop_lag() < 0.5 and app.queue_depth() == 0      # idle: a tick is taken at once
        app._send_event(Slow(), None)
        time.sleep(0.1)
        for _ in range(5):
            app._send_event(Slow(), None)
        app.post_tick()
        time.sleep(1.5)
        assert app.loop_lag() >= 1.4 and app.queue_depth() == 6     # 5 slow events and the tick wait
        release.set()
        deadline = time.monotonic() + 5
        while app._tick_posted is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.loop_lag() >= 1.4 and app.queue_depth() == 0     # the last tick's wait is kept
    finally:
        release.set()
        app.is_active = False
        app._send_event(app._event_stop, None)
        t.join(5)


def test_packet_ins_wait_behind_other_switch_events_and_are_shed_past_their_bound():
    """Under a packet-in storm a port-stats reply or a barrier is handled first, and the
    datapath's receive thread never blocks on packet-ins (they are shed, and counted)."""
    app = Loop()
    release = threading.Event()
    order: list[str] = []

    class Slow(compat.event.EventBase):
        pass

    class Stats(compat.event.EventBase):
        pass

    def slow(ev):
        release.wait(10)

    def packet_in(ev):
        order.append("packet_in")

    def stats(ev):
        order.append("stats")

    for cls, h in ((Slow, slow), (compat.ofp_event.EventOFPPacketIn, packet_in), (Stats, stats)):
        h.callers = {cls: type("C", (), {"dispatchers": set()})()}
        app.register_handler(cls, h)
    t = threading.Thread(target=app._event_loop, daemon=True)
    t.start()
    try:
        app._send_event(Slow(), None)          # holds the thread while the storm queues
        time.sleep(0.1)
        storm = app.BULK_MAX + 40
        started = time.monotonic()
        for _ in range(storm):
            app._send_event(compat.ofp_event.EventOFPPacketIn(None), None)
        assert time.monotonic() - started < 1.0           # never blocked on the full lane
        app._send_event(Stats(), None)
        assert app.packet_ins_shed == 40 and app.queue_depth() == app.BULK_MAX + 1
        release.set()
        deadline = time.monotonic() + 5
        while len(order) < app.BULK_MAX + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert order[0] == "stats" and order.count("packet_in") == app.BULK_MAX
        app.post_tick()                        # a tick is not counted as a shed packet-in
        assert app.packet_ins_shed == 40
    finally:
        release.set()
        app.is_active = False
        app._send_event(app._event_stop, None)
        t.join(5)
    assert not t.is_alive()


def test_health_says_when_the_event_loop_falls_behind():
    c, _ = core()
    assert c.health_view(0.2, 1, loop_lag=0.1, queued=0)["status"] == "ok"
    h = c.health_view(0.2, 1, loop_lag=c.BEHIND_AFTER + 1.5, queued=97)
    assert h["status"] == "degraded"
    assert h["reasons"] == [f"the OpenFlow event loop is falling behind: events wait {c.BEHIND_AFTER + 1.5:.1f}s "
                            "in its queue (97 queued), so switch events are handled that much late"]
    assert h["event_loop_lag_s"] == c.BEHIND_AFTER + 1.5 and h["event_queue"] == 97
    stalled = c.health_view(c.STALL_AFTER + 1, 1, loop_lag=c.STALL_AFTER + 1, queued=128)
    assert len(stalled["reasons"]) == 1 and "has not run" in stalled["reasons"][0]   # a stall says stall


def test_health_is_degraded_when_the_event_loop_stalls():
    c, _ = core()
    assert c.health_view(0.5, 1)["status"] == "ok"
    h = c.health_view(c.STALL_AFTER + 1, 1)
    assert h["status"] == "degraded" and "event loop" in h["reasons"][0]
    assert h["openflow_connections"] == 1 and h["event_loop_age_s"] == c.STALL_AFTER + 1


def test_counters_reach_health_and_metrics():
    c, _ = core()
    c.count("handler_errors")
    c.count("bad_messages", 2)
    assert c.health_view()["counters"]["handler_errors"] == 1
    snap = c.metrics_snapshot()
    assert snap["bad_messages"] == 2 and snap["multipart_unsolicited"] == 0
    from controller.api.metrics import Metrics
    text = Metrics(lambda: snap).render().decode()
    assert "iotguard_handler_errors_total 1.0" in text
    assert "iotguard_openflow_bad_messages_total 2.0" in text


def test_log_budget_bounds_lines_per_key():
    t = [0.0]
    b = LogBudget(burst=2, period=10, clock=lambda: t[0])
    assert [b.allow("k")[0] for _ in range(5)] == [True, True, False, False, False]
    t[0] = 11
    assert b.allow("k") == (True, 3)          # and says how many it left out


def test_send_error_never_raises():
    class Dead:
        def send_msg(self, msg):
            raise OSError("gone")
    assert compat.send_error(Dead(), ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN, b"x") is False


# ------------------------------------------------------------------ all-ones counters
def test_flow_removed_with_all_ones_counters_adds_nothing():
    msg = parse(ALL_ONES_REMOVED)
    assert msg.packet_count == ALL_ONES and msg.byte_count == ALL_ONES
    t = FlowStatsTracker()
    d = t.removed(1, msg.cookie, msg.packet_count, msg.byte_count, 10.0, now=1.0)   # no OverflowError
    assert d.packets.tolist() == [0] and d.bytes.tolist() == [0]


def test_flow_removed_all_ones_after_a_poll_is_no_negative_delta():
    c, clock = core()
    c.switch_connected(1)
    ck = rules.cookie(Kind.FORWARD, 1)
    c.flow_stats(1, body([(ck, 10, 1000, 1)]))
    clock.t += 1
    c.flow_removed(1, ck, ALL_ONES, ALL_ONES, 2.0)      # the message: no exception
    d = c.flow_tracker.removed(1, rules.cookie(Kind.FORWARD, 2), ALL_ONES, 5, 1.0, clock.t)
    assert d.packets.tolist() == [0] and d.bytes.tolist() == [5]


def test_flow_stats_counters_of_2_63_and_more_are_no_counts():
    t = FlowStatsTracker()
    entries = np.zeros(2, dtype=[("cookie", ">u8"), ("packet_count", ">u8"), ("byte_count", ">u8"),
                                 ("duration_sec", ">u4"), ("duration_nsec", ">u4")])
    entries["cookie"] = [1, 2]
    t.update(1, entries, now=0.0)
    entries["packet_count"] = [2 ** 63 + 5, 7]
    entries["byte_count"] = [ALL_ONES, 70]
    d = t.update(1, entries, now=1.0)
    assert d.packets.tolist() == [0, 7] and d.bytes.tolist() == [0, 70]
    assert (d.packets >= 0).all()


def test_port_stats_all_ones_is_unavailable():
    t = PortStatsTracker()
    t.update(1, [(1, 100, ALL_ONES, 1, 2)], now=0)
    (d,) = t.update(1, [(1, 150, ALL_ONES, 2, 4)], now=1)
    assert (d.rx_bytes, d.tx_bytes) == (50, 0)


# ------------------------------------------------------------------ multipart bounds
def test_unsolicited_parts_are_dropped_and_counted():
    a = MultipartAssembler()
    for xid in range(10000):
        assert a.add(1, xid, b"x" * 100, more=True) is None
    assert a.pending(1) == 0 and a.unsolicited == 10000


def test_expected_replies_per_switch_are_bounded():
    a = MultipartAssembler(max_expected=2)
    for xid in (1, 2, 3):
        a.expect(1, xid)
        a.add(1, xid, b"part", more=True)
    assert a.pending(1) == 2                        # xid 1 forgotten with its parts
    assert a.add(1, 1, b"last", more=False) is None and a.unsolicited == 1
    assert a.add(1, 3, b"last", more=False) == [b"part", b"last"]


def test_pending_bytes_per_switch_are_bounded():
    a = MultipartAssembler(max_bytes=1000)
    a.expect(1, 5)
    a.add(1, 5, b"x" * 600, more=True)
    with pytest.raises(MultipartOverflow, match="bytes"):
        a.add(1, 5, b"x" * 600, more=True)
    assert a.pending(1) == 0 and a.pending_bytes(1) == 0 and a.overflows == 1
    a.expect(1, 6)
    assert a.add(1, 6, b"y", more=False) == [b"y"]     # the switch's next reply is fine


def test_core_drops_flow_stats_nobody_asked_for():
    c, _ = core()
    c.switch_connected(1)
    assert c.flow_stats_part(1, 77, body([(rules.cookie(Kind.FORWARD, 1), 1, 1, 1)]), False) is None
    assert c.switches[1].polls == 0 and c.health_view()["counters"]["multipart_unsolicited"] == 1


# ------------------------------------------------------------------ table bounds
def test_topology_table_is_bounded_and_keeps_talking_devices():
    t = Topology(max_devices=3, stale_after=100)
    for i in range(3):
        t.observe(f"00:00:00:00:01:{i:02x}", 1, 1, now=0.0)
    assert not t.observe("00:00:00:00:02:00", 1, 2, now=10.0)    # full of recent devices
    assert t.full == 1 and t.location("00:00:00:00:02:00") is None
    t.observe("00:00:00:00:01:00", 1, 1, now=150.0)              # still talking: most recent now
    assert t.observe("00:00:00:00:02:00", 1, 2, now=150.0)       # the longest silent (01:01) goes
    assert t.location("00:00:00:00:01:01") is None and t.location("00:00:00:00:01:00") is not None


def pkt(src, dst="ff:ff:ff:ff:ff:ff"):
    return parse_frame(arp(src, "10.0.0.1", "10.0.0.2")[:0] + bytes.fromhex(dst.replace(":", ""))
                       + arp(src, "10.0.0.1", "10.0.0.2")[6:])


def test_forwarder_mac_table_is_bounded():
    f = Forwarder(FlowRegistry(), max_macs=4, stale_after=100)
    for i in range(10):
        f.packet_in(1, 1 + i % 3, pkt(f"00:00:00:00:03:{i:02x}"), now=1.0)
    assert len(f.mac_to_port[1]) == 4 and f.full == 6
    f.packet_in(1, 2, pkt("00:00:00:00:04:00"), now=200.0)      # the flood went stale: room again
    assert "00:00:00:00:04:00" in f.mac_to_port[1]


def test_a_mac_flood_through_core_stays_within_the_bounds():
    c, clock = core()
    c.switch_connected(1)
    c.topology.max_devices = c.forwarder.max_macs = c.inventory.max_devices = 50
    for i in range(500):
        c.packet_in(1, 1, arp(f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", "10.0.0.50", "10.0.0.51"))
    assert len(c.inventory.devices) == 50 and len(c.forwarder.mac_to_port[1]) == 50
    assert len(c.topology._where) == 50
    counters = c.health_view()["counters"]
    assert counters["inventory_full"] == counters["topology_full"] == counters["mac_table_full"] == 450


# ------------------------------------------------------------------ group and zero MACs
@pytest.mark.parametrize("mac", ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb", "33:33:00:00:00:01",
                                 "00:00:00:00:00:00", "01:80:c2:00:00:0e"])
def test_group_and_zero_macs_are_never_devices(mac):
    assert not is_unicast_mac(mac) and (is_group_mac(mac) or is_zero_mac(mac))
    inv = Inventory(Config())
    assert inv.observe(mac, 1.0, "10.0.0.5") is None
    assert inv.devices == {} and inv.not_devices == 1


def test_unicast_macs_are_devices():
    assert is_unicast_mac("00:00:00:00:00:11") and is_unicast_mac("02:42:ac:11:00:02")


def arp_sweep(src):
    c, clock = core()
    c.switch_connected(1)
    for i in range(25):
        clock.t += 0.01
        out = c.packet_in(1, 1, arp(src, "10.0.0.66", f"10.0.1.{i + 1}"))
        assert out, "still forwarded"
    return c


def test_arp_burst_from_broadcast_source_is_no_device_and_no_alert():
    assert arp_sweep("00:00:00:00:00:66").counters["alerts"] >= 1    # the same sweep from a device is one
    c = arp_sweep("ff:ff:ff:ff:ff:ff")
    assert c.inventory.devices == {} and c.topology.location("ff:ff:ff:ff:ff:ff") is None
    assert c.counters["alerts"] == 0 and list(c.detector.alerts) == []
    assert "ff:ff:ff:ff:ff:ff" not in c.forwarder.mac_to_port[1]
    assert c.health_view()["counters"]["group_or_zero_src"] == 25


def test_zero_source_is_not_learned_by_the_forwarder():
    c, _ = core()
    c.switch_connected(1)
    c.packet_in(1, 1, arp("00:00:00:00:00:00", "0.0.0.0", "10.0.0.1"))
    assert c.forwarder.mac_to_port[1] == {} and c.inventory.devices == {}


# ------------------------------------------------------------------ a full state disk
def test_switch_connect_sends_the_pipeline_when_the_disk_is_full():
    c, _ = core()

    class FullDisk:
        def reconcile(self, dpid):
            raise OSError(28, "No space left on device")
    c.responder = FullDisk()
    out = c.switch_connected(1)
    assert out[0][1] == rules.delete_all_ours()
    assert any(isinstance(m, MeterSpec) for _, m in out)
    assert c.counters["state_write_errors"] == 1
