"""A hostile switch against the real controller process (issue #10); no Open vSwitch or Mininet.

A raw-bytes client (tests/integration/rawof.py) completes the handshake, then sends each
message type truncated, oversized, with missing or duplicated OXMs, with all-ones counters,
unknown types and unsolicited replies.  After each message the controller must still turn a
normal packet-in into a packet-out and answer an echo on the same connection, and its health
must not report a stalled event loop.  At the end a response's rules are confirmed by a
barrier round trip.  Runs under the native hub and under eventlet.
"""

from __future__ import annotations

import struct
import time

import pytest

from tests.integration import rawof as r

pytestmark = pytest.mark.integration

NO_IN_PORT, ALL_ONES_REMOVED = r.NO_IN_PORT, r.ALL_ONES_REMOVED
FORWARD_COOKIE = 0x10C6030000000001
ONES = r.ALL_ONES
ARP = r.arp_frame("00:00:00:00:00:31", "10.0.0.31", "10.0.0.32")


def truncate(msg: bytes, n: int) -> bytes:
    """The first n bytes, with the header's length saying n (a complete but short message)."""
    return msg[:2] + struct.pack("!H", n) + msg[4:n]


def oversize(msg: bytes, extra: int = 60000) -> bytes:
    """The message with `extra` bytes of garbage after it, inside its declared length."""
    data = msg + b"\xa5" * extra
    return data[:2] + struct.pack("!H", len(data)) + data[4:]


def raw_match(length: int, fields: bytes) -> bytes:
    return struct.pack("!HH", 1, length) + fields


def packet_in_raw(match_bytes: bytes, frame: bytes = ARP) -> bytes:
    body = struct.pack("!IHBBQ", 0xFFFFFFFF, len(frame), 0, 0, 0) + match_bytes + b"\0\0" + frame
    return r.message(r.PACKET_IN, body, 77)


def cases() -> list[tuple[str, bytes]]:
    pin = r.packet_in(ARP, port=1, xid=5)
    fr = r.flow_removed(FORWARD_COOKIE, 10, 1000, xid=6)
    entry = r.flow_stats_entry(FORWARD_COOKIE, 1, 1)
    out = [
        # packet-in
        ("packet-in without in_port (the issue's)", NO_IN_PORT),
        ("packet-in with an empty match", r.packet_in(ARP, port=None, oxms=b"")),
        ("packet-in with in_port twice", r.packet_in(ARP, oxms=r.in_port_oxm(1) + r.in_port_oxm(2))),
        ("packet-in from port 0", r.packet_in(ARP, port=0)),
        ("packet-in from OFPP_ANY", r.packet_in(ARP, port=0xFFFFFFFF)),
        ("packet-in with a 2-byte in_port OXM", r.packet_in(ARP, oxms=r.oxm(0, b"\0\1"))),
        ("packet-in with an unknown OXM class", r.packet_in(
            ARP, oxms=struct.pack("!HBB", 0x1234, 2, 4) + b"\0\0\0\1")),
        ("packet-in whose match length overruns", packet_in_raw(raw_match(400, r.in_port_oxm(1)))),
        ("packet-in whose match length is 0", packet_in_raw(raw_match(0, b""))),
        ("packet-in truncated to its header", truncate(pin, 8)),
        ("packet-in truncated in the match", truncate(pin, 30)),
        ("packet-in with no frame", r.packet_in(b"", port=1)),
        ("packet-in with a 3-byte frame", r.packet_in(b"\x01\x02\x03", port=1)),
        ("packet-in with a lying total_len", r.packet_in(ARP, port=1, total_len=65535)),
        ("packet-in oversized", oversize(pin)),
        ("packet-in with a group source MAC", r.packet_in(
            r.arp_frame("ff:ff:ff:ff:ff:ff", "10.0.0.66", "10.0.0.67"), port=1)),
        # flow-removed
        ("flow-removed with all-ones counters (the issue's)", ALL_ONES_REMOVED),
        ("flow-removed, ours, all-ones", r.flow_removed(FORWARD_COOKIE, ONES, ONES)),
        ("flow-removed with 2**63 packets", r.flow_removed(FORWARD_COOKIE, 2 ** 63, 5)),
        ("flow-removed truncated", truncate(fr, 20)),
        ("flow-removed without a match", truncate(fr, 48)),
        ("flow-removed oversized", oversize(fr)),
        # multipart replies nobody asked for, and broken ones
        ("unsolicited flow-stats part", r.multipart_reply(r.MP_FLOW, entry, 0xDEAD, more=True)),
        ("unsolicited flow-stats, last part", r.multipart_reply(r.MP_FLOW, entry, 0xBEEF)),
        ("flow-stats entry of length 0", r.multipart_reply(r.MP_FLOW, b"\0" * 56, 0xBEF0)),
        ("unknown multipart type", r.multipart_reply(0x7777, b"\0" * 16, 9)),
        ("multipart reply truncated", truncate(r.multipart_reply(r.MP_FLOW, entry, 10), 12)),
        ("port-stats truncated", r.multipart_reply(r.MP_PORT_STATS, b"\0" * 7, 11)),
        ("unsolicited port-desc", r.multipart_reply(r.MP_PORT_DESC, r.port_desc(9), 12)),
        ("port-desc truncated", r.multipart_reply(r.MP_PORT_DESC, r.port_desc(9)[:20], 13)),
        # other types
        ("unknown message type 99", r.message(99, b"\0" * 8, 14)),
        ("unknown message type 255", r.message(255, b"", 15)),
        ("experimenter", r.message(4, struct.pack("!II", 0x2320, 1), 16)),
        ("error, truncated", r.message(r.ERROR, b"\0", 17)),
        ("error, unknown type", r.message(r.ERROR, struct.pack("!HH", 0x4444, 9) + b"x" * 8, 18)),
        ("barrier reply nobody asked for", r.message(r.BARRIER_REPLY, b"", 19)),
        ("barrier reply with a body", r.message(r.BARRIER_REPLY, b"\0" * 32, 20)),
        ("echo reply nobody asked for", r.message(r.ECHO_REPLY, b"x", 21)),
        ("port-status truncated", r.message(r.PORT_STATUS, b"\0" * 3, 22)),
        ("port-status for port 0", r.message(r.PORT_STATUS, struct.pack("!B7x", 0) + r.port_desc(0), 23)),
        ("port-status, unknown reason", r.message(r.PORT_STATUS, struct.pack("!B7x", 9) + r.port_desc(5), 24)),
        ("features reply again", r.message(r.FEATURES_REPLY, struct.pack("!QIBB2xII", 1, 0, 254, 0, 0x4F, 0),
                                           25)),
        ("hello again", r.message(r.HELLO, b"", 26)),
        ("message of declared length 0", r.header(r.BARRIER_REPLY, 0, 27)),
        ("packet-out from a switch", r.message(r.PACKET_OUT, b"\0" * 16, 28)),
        ("flow-mod from a switch", r.message(r.FLOW_MOD, b"\0" * 40, 29)),
    ]
    return out


@pytest.fixture(scope="module", params=["native", "eventlet"])
def controller(request):
    c = r.ControllerProcess(env={"OSKEN_HUB_TYPE": request.param})
    try:
        c.wait_ready()
        yield c
    finally:
        c.stop()
        c.cleanup()


def alive(c: r.ControllerProcess, sw: r.RawSwitch, n: int) -> None:
    src = f"00:00:00:00:{n // 256:02x}:{n % 256:02x}"
    assert sw.forwards(src=src), "a normal packet-in got no packet-out"
    assert sw.barrier(), "no echo reply"


def test_hostile_switch_messages(controller):
    c = controller
    failures = []
    with r.RawSwitch(c.ofp_port, dpid=0x42) as sw:
        sw.handshake()
        alive(c, sw, 1)
        for n, (name, data) in enumerate(cases(), start=2):
            try:
                sw.send(data)
                sw.pump(0.1)
                alive(c, sw, n)
            except (AssertionError, OSError) as e:
                failures.append(f"{name}: {e}")
                sw.close()
                sw = r.RawSwitch(c.ofp_port, dpid=0x42)   # carry on with a fresh connection
                sw.handshake()
        # memory: many unsolicited REPLY_MORE parts, each with a new xid
        for xid in range(2000):
            sw.send(r.multipart_reply(r.MP_FLOW, r.flow_stats_entry(FORWARD_COOKIE, 1, 1) * 20,
                                      0x100000 + xid, more=True))
        alive(c, sw, 9000)
        # the controller's own requests, answered badly: an entry of length 0 and an endless reply
        sw.replies[r.MP_FLOW] = b"\0" * 56
        sw.pump(2.5)
        alive(c, sw, 9001)
        del sw.replies[r.MP_FLOW]
        h = c.health()
        assert h["status"] == "ok", h
        assert h["event_loop_age_s"] < 5
        counters = h["counters"]
        assert counters["multipart_unsolicited"] >= 2000
        assert counters["bad_messages"] >= 5 and counters["handler_errors"] == 0, counters
        assert counters["group_or_zero_src"] >= 1
        devices = {d["mac"] for d in c.api("GET", "/api/v1/devices")["devices"]}
        assert "ff:ff:ff:ff:ff:ff" not in devices
        # a barrier round trip still confirms a response's rules
        installed = h["responses"]["installed"]
        c.api("POST", "/api/v1/responses", {"device": "00:00:00:00:00:02", "action": "quarantine", "ttl": 60})
        deadline = time.monotonic() + 5
        while c.health()["responses"]["installed"] == installed and time.monotonic() < deadline:
            sw.pump(0.2)
        assert c.health()["responses"]["installed"] > installed, "the barrier reply confirmed nothing"
        assert sw.forwards(src="00:00:00:00:99:99")
    assert not failures, "\n".join(failures) + "\n" + c.tail()
    assert c.proc.poll() is None


def test_early_closes_leave_no_threads_or_connections(controller):
    c = controller
    time.sleep(1.0)
    before = c.threads()
    for i in range(200):
        s = r.socket.create_connection(("127.0.0.1", c.ofp_port), timeout=5)
        s.settimeout(5)
        try:
            if i % 3:
                s.recv(8)                                     # the controller's HELLO
            if i % 3 == 2:
                s.sendall(r.message(r.HELLO, b"", 1))
                s.recv(8)                                     # FEATURES_REQUEST, then gone
        finally:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (c.threads() > before + 2 or c.health()["openflow_connections"]):
        time.sleep(0.2)
    assert c.threads() <= before + 2, (before, c.threads())
    assert c.health()["openflow_connections"] == 0
