"""Property test: whatever a switch sends, Core's OpenFlow input handlers neither raise
(other than the documented ValueError / MultipartOverflow of a bad stats reply, which the app
answers with OFPT_ERROR) nor let counters, tables or pending parts grow past their bounds."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.addresses import is_unicast_mac
from controller.openflow import rules
from controller.openflow.rules import Kind
from controller.telemetry.stats import MultipartOverflow
from tests.unit.test_core import arp, core, tcp

U64 = st.integers(0, 2 ** 64 - 1)
PORT = st.integers(0, 2 ** 32 - 1)
MACS = st.sampled_from(["00:00:00:00:00:11", "00:00:00:00:00:12", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01",
                        "33:33:00:00:00:01", "00:00:00:00:00:00", "02:00:00:00:00:01"])
COOKIE = st.one_of(U64, st.integers(0, 50).map(lambda i: rules.cookie(Kind.FORWARD, i)))


def flow_entry(cookie, packets, nbytes, length=None):
    m = struct.pack("!HH4x", 1, 4)
    return struct.pack("!HBxIIHHHH4xQQQ", 56 if length is None else length, 1, 1, 0, 200, 10, 0, 1,
                       cookie, packets, nbytes) + m


frames = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda s, i: arp(s, "10.0.0.1", f"10.0.1.{i}"), MACS, st.integers(1, 254)),
    st.builds(lambda s, d, p: tcp(s, d, "10.0.0.1", "10.0.0.2", p), MACS, MACS, st.integers(0, 65535)),
)

events = st.one_of(
    st.tuples(st.just("packet_in"), st.integers(1, 3), PORT, frames),
    st.tuples(st.just("flow_removed"), st.integers(1, 3), COOKIE, U64, U64,
              st.floats(allow_nan=True, allow_infinity=True)),
    st.tuples(st.just("flow_stats"), st.integers(1, 3), st.integers(0, 20), st.booleans(),
              st.lists(st.tuples(COOKIE, U64, U64, st.one_of(st.none(), st.integers(0, 200))), max_size=4),
              st.binary(max_size=20)),
    st.tuples(st.just("port_stats"), st.integers(1, 3), st.integers(0, 20), st.booleans(),
              st.lists(st.tuples(PORT, U64, U64, U64, U64), max_size=4)),
    st.tuples(st.just("port_status"), st.integers(1, 3), PORT, st.booleans()),
    st.tuples(st.just("barrier"), st.integers(1, 3), st.integers(0, 2 ** 32 - 1)),
    st.tuples(st.just("error"), st.integers(1, 3), st.integers(0, 2 ** 32 - 1), st.text(max_size=20)),
    st.tuples(st.just("ports"), st.integers(1, 3), st.lists(PORT, max_size=6)),
    st.tuples(st.just("connect"), st.integers(1, 3)),
    st.tuples(st.just("disconnect"), st.integers(1, 3)),
    st.tuples(st.just("request"), st.integers(1, 3), st.integers(0, 20)),
    st.tuples(st.just("tick"), st.floats(0, 30)),
)


def apply(c, clock, ev) -> None:
    kind, *args = ev
    if kind == "packet_in":
        dpid, port, frame = args
        c.packet_in(dpid, port, frame)
    elif kind == "flow_removed":
        dpid, cookie, p, b, d = args
        c.flow_removed(dpid, cookie, p, b, d)
    elif kind == "flow_stats":
        dpid, xid, more, rows, tail = args
        body = b"".join(flow_entry(*row) for row in rows) + tail
        try:
            c.flow_stats_part(dpid, xid, body, more)
        except (ValueError, MultipartOverflow):
            pass       # the app answers these with OFPT_ERROR
    elif kind == "port_stats":
        dpid, xid, more, ports = args
        c.port_stats_part(dpid, xid, ports, more)
    elif kind == "port_status":
        c.port_status(*args)
    elif kind == "barrier":
        c.barrier_reply(*args)
    elif kind == "error":
        c.switch_error(*args)
    elif kind == "ports":
        c.switch_ports(*args)
    elif kind == "connect":
        c.switch_connected(*args)
    elif kind == "disconnect":
        c.switch_disconnected(*args)
    elif kind == "request":
        c.request_sent(*args)
    elif kind == "tick":
        clock.t += args[0]
        c.poll_sent(list(c.switches))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, max_size=40))
def test_core_survives_any_switch_input(evs):
    c, clock = core()
    c.topology.max_devices = c.forwarder.max_macs = c.inventory.max_devices = 4
    c.assembler.max_bytes = 4096
    for dpid in (1, 2):
        c.switch_connected(dpid)
    for ev in evs:
        apply(c, clock, ev)
    assert all(is_unicast_mac(m) for m in c.inventory.devices)
    assert len(c.inventory.devices) <= 4 and len(c.topology._where) <= 4
    assert all(len(t) <= 4 for t in c.forwarder.mac_to_port.values())
    for dpid in (1, 2, 3):
        assert c.assembler.pending_bytes(dpid) <= 4096
        assert c.assembler.pending(dpid) <= c.assembler.max_expected
    for t in c.traffic.last.values():
        assert min(t.tx_bytes, t.tx_packets, t.rx_bytes, t.rx_packets) >= 0
    for sw in c.switches.values():
        assert all(min(d.rx_bytes, d.tx_bytes, d.rx_packets, d.tx_packets) >= 0 for d in sw.port_deltas.values())
    h = c.health_view(0.0, 0)
    assert h["status"] == "ok" and all(isinstance(v, int) and v >= 0 for v in h["counters"].values())
    assert np.isfinite([v for v in c.metrics_snapshot().values() if isinstance(v, (int, float))]).all()
