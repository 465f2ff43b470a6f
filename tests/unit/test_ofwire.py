"""controller.openflow.wire against os-ken's own parser on the same bytes, plus the compat hook.

The bytes come from `bench.flowstats_wire`, written from the OpenFlow 1.3 spec
independently of os-ken; os-ken parsing them back (match and instructions
included) is the check that the builder itself is right.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np
import pytest

from bench import flowstats_wire as wire
from bench.flowstats_wire import FlowEntry
from controller.openflow import compat
from controller.openflow import wire as ofwire
from controller.openflow import rules
from os_ken.controller import ofp_event
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

HEAD_FIELDS = ("cookie", "table_id", "priority", "packet_count", "byte_count", "duration_sec",
               "duration_nsec", "idle_timeout", "hard_timeout", "flags", "length")

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


@pytest.fixture(autouse=True)
def framework_parser():
    """Every test starts and ends with os-ken's own flow-stats reply class."""
    table = parser.OFPMultipartReply._STATS_MSG_TYPES
    table[ofp.OFPMP_FLOW] = compat.framework_flow_stats_parser()
    yield
    table[ofp.OFPMP_FLOW] = compat.framework_flow_stats_parser()


def datapath():
    return SimpleNamespace(ofproto=ofp, ofproto_parser=parser, id=0x1)


def parse(message: bytes):
    """Parse one message the way os-ken's receive loop does."""
    version, msg_type, msg_len, xid = ofproto_parser.header(message)
    msg = ofproto_parser.msg(datapath(), version, msg_type, msg_len, xid, bytearray(message[:msg_len]))
    assert msg is not None, "os-ken refused the message (see the log)"
    return msg


def varied_entries() -> list[FlowEntry]:
    """Matches of every shape table 1 holds, and head values at their limits."""
    fwd = lambda i: rules.cookie(rules.Kind.FORWARD, i)  # noqa: E731
    return [
        # TCP conversation: full match, 56-byte match, 128-byte entry
        FlowEntry(fwd(1), 12, 3456, 7, 123_456_789, 200, 10, 0, ofp.OFPFF_SEND_FLOW_REM, 1,
                  rules.flow_key(MAC_A, MAC_B, 0x0800, "10.0.0.2", 6, 443).match(), 3),
        # L2 only (ARP): 32-byte match, 104-byte entry
        FlowEntry(fwd(2), 0, 0, 0, 0, 100, 10, 0, ofp.OFPFF_SEND_FLOW_REM, 1,
                  rules.flow_key(MAC_B, MAC_A, 0x0806).match(), 1),
        # ICMP: no transport port, 48-byte match
        FlowEntry(fwd(3), 2**32 + 5, 2**40 + 7, 86_400, 999_999_999, 200, 10, 0, 1, 1,
                  rules.flow_key(MAC_A, MAC_B, 0x0800, "192.168.1.1", 1).match(), 2),
        # UDP: udp_dst
        FlowEntry(fwd(rules.COOKIE_ID_MASK), 1, 60, 1, 1, 200, 10, 0, 1, 1,
                  rules.flow_key(MAC_B, MAC_A, 0x0800, "10.0.0.1", 17, 53).match(), 4),
        # IPv4 without proto: 40-byte match
        FlowEntry(fwd(5), 9, 900, 3, 4, 200, 10, 0, 1, 1,
                  (("eth_src", MAC_A), ("eth_dst", MAC_B), ("eth_type", 0x0800), ("ipv4_dst", "10.0.0.9")), 5),
        # a pipeline rule with an empty match (the 56-byte minimum entry head + 8-byte match)
        FlowEntry(rules.cookie(rules.Kind.PIPELINE, 2), 77, 7700, 100, 5, 0, 0, 0, 0, 1, (), 0xFFFFFFFD),
        # all-ones head values: unsigned, big-endian, no sign trouble
        FlowEntry(2**64 - 1, 2**64 - 1, 2**64 - 1, 2**32 - 1, 2**32 - 1, 0xFFFF, 0xFFFF, 0xFFFF,
                  0x1F, 0xFE, (("in_port", 7), ("eth_type", 0x88CC)), 6),
    ]


def assert_heads_match(heads: np.ndarray, stats: list) -> None:
    assert heads.dtype == ofwire.FLOW_STATS_HEAD
    assert len(heads) == len(stats)
    for i, (h, s) in enumerate(zip(heads, stats)):
        for f in HEAD_FIELDS:
            assert int(h[f]) == getattr(s, f), f"entry {i} field {f}"


# ---------------------------------------------------------------- the builder is right


def test_builder_entries_parse_back_in_os_ken_with_their_match_and_actions() -> None:
    entries = varied_entries()
    msg = parse(wire.multipart_reply(b"".join(e.encode() for e in entries), xid=42))
    assert type(msg).__name__ == "OFPFlowStatsReply" and msg.xid == 42 and msg.flags == 0
    assert {len(e.encode()) for e in entries} == {128, 104, 120, 112, 80, 96}
    for e, s in zip(entries, msg.body, strict=True):
        assert dict(s.match.items()) == dict(e.match)
        (inst,) = s.instructions
        assert inst.type == ofp.OFPIT_APPLY_ACTIONS
        (act,) = inst.actions
        assert act.port == e.out_port
        assert s.length == len(e.encode()) and s.length % 8 == 0


# ---------------------------------------------------------------- ofwire == os-ken


def test_heads_agree_with_os_ken_on_varied_entries() -> None:
    entries = varied_entries()
    message = wire.multipart_reply(b"".join(e.encode() for e in entries))
    heads = ofwire.flow_stats_heads(wire.message_body(message))
    assert_heads_match(heads, parse(message).body)
    for h, e in zip(heads, entries):   # and with the values the entries were built from
        assert (int(h["cookie"]), int(h["packet_count"]), int(h["byte_count"])) == \
            (e.cookie, e.packet_count, e.byte_count)


def test_heads_agree_with_os_ken_across_a_multipart_reply() -> None:
    table = wire.synthetic_table(n=1500, devices=40, seed=7)
    messages = wire.split_replies([e.encode() for e in table.entries], xid=9)
    assert len(messages) >= 3
    assert all(len(m) <= 65535 for m in messages)
    msgs = [parse(m) for m in messages]
    assert [bool(m.flags & ofp.OFPMPF_REPLY_MORE) for m in msgs] == [True] * (len(msgs) - 1) + [False]
    stats = [s for m in msgs for s in m.body]
    # the assembled body (as core.flow_stats_part joins it) and each part alone
    assert_heads_match(ofwire.flow_stats_heads(b"".join(wire.message_body(m) for m in messages)), stats)
    for message, m in zip(messages, msgs):
        assert_heads_match(ofwire.flow_stats_heads(memoryview(wire.message_body(message))), m.body)
    assert [int(c) for c in ofwire.flow_stats_heads(
        b"".join(wire.message_body(m) for m in messages))["cookie"]] == [e.cookie for e in table.entries]


def test_empty_body_gives_empty_heads() -> None:
    heads = ofwire.flow_stats_heads(b"")
    assert heads.shape == (0,) and heads.dtype == ofwire.FLOW_STATS_HEAD
    assert parse(wire.multipart_reply(b"")).body == []


# ---------------------------------------------------------------- malformed bodies


def _with_length(entry: bytes, length: int) -> bytes:
    return struct.pack("!H", length) + entry[2:]


GOOD = [e.encode() for e in varied_entries()[:3]]   # 128 + 104 + 120 bytes
BAD_AT = len(GOOD[0]) + len(GOOD[1])                 # the third entry starts at byte 232


@pytest.mark.parametrize("body, offset, what", [
    pytest.param(GOOD[0] + GOOD[1] + GOOD[2][:40], BAD_AT, "truncated", id="truncated-below-minimum"),
    pytest.param(GOOD[0] + GOOD[1] + b"\x00", BAD_AT, "truncated", id="one-stray-byte"),
    pytest.param(GOOD[0] + GOOD[1] + GOOD[2][:100], BAD_AT, "length 120", id="truncated-entry-overruns"),
    pytest.param(GOOD[0] + GOOD[1] + _with_length(GOOD[2], 124), BAD_AT, "length 124", id="not-multiple-of-8"),
    pytest.param(GOOD[0] + GOOD[1] + _with_length(GOOD[2], 48), BAD_AT, "length 48", id="below-56"),
    pytest.param(GOOD[0] + GOOD[1] + _with_length(GOOD[2], 0), BAD_AT, "length 0", id="zero-length"),
    pytest.param(GOOD[0] + GOOD[1] + _with_length(GOOD[2], 128), BAD_AT, "length 128", id="overruns-body"),
    pytest.param(_with_length(GOOD[0], 65528) + GOOD[1], 0, "length 65528", id="first-entry-overruns"),
])
def test_malformed_body_raises_wire_error_naming_the_offset(body: bytes, offset: int, what: str) -> None:
    with pytest.raises(ofwire.WireError) as err:
        ofwire.flow_stats_heads(body)
    assert f"at byte {offset}" in str(err.value)
    assert what in str(err.value)
    assert isinstance(err.value, ValueError)   # the app catches ValueError


def test_minimum_entry_is_accepted() -> None:
    entry = FlowEntry(rules.cookie(rules.Kind.PIPELINE, 1), 1, 2, 3, 4, 0, 0, 0, 0, 0).encode()
    entry = _with_length(entry[:56], 56)   # head + empty match, no instructions
    (h,) = ofwire.flow_stats_heads(entry)
    assert int(h["length"]) == 56 and int(h["byte_count"]) == 2
    (s,) = parse(wire.multipart_reply(entry)).body
    assert s.instructions == [] and s.byte_count == 2


# ---------------------------------------------------------------- the compat hook


def test_raw_hook_keeps_the_body_as_bytes_through_os_kens_generic_path() -> None:
    table = wire.synthetic_table(n=1200, devices=30, seed=3)
    messages = wire.split_replies([e.encode() for e in table.entries], xid=77)
    framework = [parse(m) for m in messages]          # before the hook: objects
    compat.install_raw_flow_stats()
    try:
        assert parser.OFPMultipartReply._STATS_MSG_TYPES[ofp.OFPMP_FLOW] is compat.OFPFlowStatsReply
        raw = [parse(m) for m in messages]
    finally:
        parser.OFPMultipartReply._STATS_MSG_TYPES[ofp.OFPMP_FLOW] = compat.framework_flow_stats_parser()
    assert parser.OFPMultipartReply._STATS_MSG_TYPES[ofp.OFPMP_FLOW].cls_stats_body_cls is parser.OFPFlowStats

    for i, (message, msg) in enumerate(zip(messages, raw)):
        assert type(msg).__name__ == "OFPFlowStatsReply"
        assert isinstance(msg, compat.OFPFlowStatsReply) and isinstance(msg, parser.OFPFlowStatsReply)
        # the same event class fires, so the app's handler is the one that gets it
        assert type(ofp_event.ofp_msg_to_ev(msg)) is ofp_event.EventOFPFlowStatsReply
        assert msg.type == ofp.OFPMP_FLOW and msg.xid == 77
        more = i < len(messages) - 1
        assert bool(msg.flags & ofp.OFPMPF_REPLY_MORE) is more
        assert isinstance(msg.body, list) and msg.body
        assert all(isinstance(b, compat.RawFlowStats) for b in msg.body)
        data = b"".join(b.data for b in msg.body)
        assert data == wire.message_body(message)
        assert sum(b.length for b in msg.body) == len(data)

    body = b"".join(b.data for m in raw for b in m.body)
    assert_heads_match(ofwire.flow_stats_heads(body), [s for m in framework for s in m.body])


def test_raw_hook_with_an_empty_reply() -> None:
    compat.install_raw_flow_stats()
    try:
        msg = parse(wire.multipart_reply(b"", flags=0))
    finally:
        parser.OFPMultipartReply._STATS_MSG_TYPES[ofp.OFPMP_FLOW] = compat.framework_flow_stats_parser()
    assert type(msg).__name__ == "OFPFlowStatsReply" and msg.body == [] and msg.flags == 0
    assert len(ofwire.flow_stats_heads(b"".join(b.data for b in msg.body))) == 0


# ---------------------------------------------------------------- the run-by-run walk


def _reference_offsets(body: bytes) -> list[int] | None:
    """The plain walk, one length field at a time: what `_offsets` must agree with."""
    out, off = [], 0
    while off < len(body):
        if len(body) - off < 2:
            return None
        (step,) = struct.unpack_from("!H", body, off)
        if step < ofwire.MIN_ENTRY or step % 8 or off + step > len(body):
            return None
        out.append(off)
        off += step
    return out


@pytest.mark.parametrize("shape", ["uniform", "alternating", "runs", "random"])
def test_the_run_walk_finds_every_entry_of_any_length_pattern(shape: str) -> None:
    """Runs of one length are confirmed with numpy; whatever the pattern (a table of one
    kind of entry, lengths that alternate, long and short runs, anything), the offsets are
    exactly the plain walk's, and a corrupted length anywhere reads as it does there
    (refused, or a long entry that lands on garbage)."""
    import random
    rng = random.Random(shape)
    pool = varied_entries()
    if shape == "uniform":
        picks = [0] * 3000
    elif shape == "alternating":
        picks = [i % 2 for i in range(3000)]
    elif shape == "runs":
        picks = [k % len(pool) for k in range(40) for _ in range(rng.choice([1, 2, 15, 16, 17, 33, 200]))]
    else:
        picks = [rng.randrange(len(pool)) for _ in range(3000)]
    body = b"".join(pool[i].encode() for i in picks)
    got = ofwire._offsets(body, len(body))
    assert got is not None and got.tolist() == _reference_offsets(body)
    heads = ofwire.flow_stats_heads(body)
    assert [int(h["cookie"]) for h in heads] == [pool[i].cookie for i in picks]
    starts = _reference_offsets(body)
    for _ in range(20):
        k = rng.randrange(len(starts))
        bad = body[:starts[k]] + struct.pack("!H", rng.choice([0, 8, 60, 65528])) + body[starts[k] + 2:]
        want, got = _reference_offsets(bad), ofwire._offsets(bad, len(bad))
        assert (got is None) if want is None else (got is not None and got.tolist() == want), k
        if want is None:        # a long entry that lands on garbage, or a length below the minimum
            with pytest.raises(ofwire.WireError):
                ofwire.flow_stats_heads(bad)


def test_a_run_longer_than_one_probe_is_read_whole() -> None:
    """70,000 minimal entries of one length: more than the largest single probe reads."""
    entry = _with_length(FlowEntry(rules.cookie(rules.Kind.PIPELINE, 1), 1, 2, 3, 4, 0, 0, 0, 0, 0).encode()[:56], 56)
    body = entry * 70_000
    got = ofwire._offsets(body, len(body))
    assert got is not None and got.tolist() == list(range(0, len(body), 56))
    assert ofwire._offsets(body + entry[:8], len(body) + 8) is None     # a stray 8 bytes at the end
