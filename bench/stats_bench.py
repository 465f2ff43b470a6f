"""Flow-stats path, side by side in one run: os-ken's object parse vs iotguard's.

    .venv/bin/python bench/stats_bench.py [--reps 7] [--entries 10000] [--json]

Input: a synthetic table 1 of reactive forwarding flows (cookies from a
FlowRegistry, matches as the forwarder installs them, ~125 bytes/entry), sent
as a switch sends it: OFPT_MULTIPART_REPLY messages of at most 65,535 bytes,
OFPMPF_REPLY_MORE on all but the last.  Every path starts from the message
bytes, as os-ken's receive loop holds them (a bytearray slice per message).

  (1) os-ken   header + ofproto_parser.msg() with os-ken's own OFPFlowStatsReply
               -> OFPFlowStats objects (what every app pays before its handler)
  (2) iotguard the same call with compat.install_raw_flow_stats() (RawFlowStats),
               the app's join + MultipartAssembler, then ofwire.flow_stats_heads,
               FlowStatsTracker.update (second poll: counters advanced) and
               stats.by_device (every device located at the polled switch)
  (3) stats    (2) without the message parse: heads + update + by_device

Then a fleet round: F devices with E forwarding entries each, spread over S
edge switches, each switch polled once (full path (2)): the CPU share of one
core needed to poll them all every second.  Times are medians of --reps runs
with time.perf_counter and Python's garbage collector in its default state.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench import flowstats_wire as wire  # noqa: E402
from controller.openflow import compat  # noqa: E402
from controller.openflow import wire as ofwire
from controller.openflow import rules
from controller.telemetry import stats
from controller.network.forwarding import FlowRegistry  # noqa: E402

ofp, parser = compat.ofp, compat.parser
from os_ken.ofproto import ofproto_parser  # noqa: E402

DPID = 0x1


def _dp(dpid: int = DPID):
    return SimpleNamespace(ofproto=ofp, ofproto_parser=parser, id=dpid)


def _use(cls) -> None:
    parser.OFPMultipartReply._STATS_MSG_TYPES[ofp.OFPMP_FLOW] = cls


def _median_time(fn, reps: int, setup=None) -> tuple[float, list[float]]:
    """Median seconds of fn() over reps runs (plus one untimed warm-up)."""
    times = []
    for i in range(reps + 1):
        state = setup() if setup else None
        t0 = time.perf_counter()
        keep = fn(state)
        t = time.perf_counter() - t0
        del keep
        if i:
            times.append(t)
    return statistics.median(times), times


# ---------------------------------------------------------------- the paths


def framework_parse(messages: list[bytes], dp) -> list:
    """(1) What os-ken's _recv_loop does per message, with its own reply class."""
    out = []
    for m in messages:
        version, msg_type, msg_len, xid = ofproto_parser.header(m)
        out.append(ofproto_parser.msg(dp, version, msg_type, msg_len, xid, bytearray(m)[:msg_len]))
    return out


def iotguard_path(messages: list[bytes], dp, tracker, assembler, registry, edge, now: float):
    """(2) Raw hook parse, the app's handler (join, assembler), then the stats step."""
    result = None
    for xid in {ofproto_parser.header(m)[3] for m in messages}:
        assembler.expect(dp.id, xid)      # the app registers each request's xid when it sends it
    for m in messages:
        version, msg_type, msg_len, xid = ofproto_parser.header(m)
        msg = ofproto_parser.msg(dp, version, msg_type, msg_len, xid, bytearray(m)[:msg_len])
        body = b"".join(b.data for b in msg.body)
        parts = assembler.add(dp.id, xid, body, bool(msg.flags & ofp.OFPMPF_REPLY_MORE))
        if parts is not None:
            result = stats_step(b"".join(parts), dp.id, tracker, registry, edge, now)
    return result


def stats_step(body: bytes, dpid: int, tracker, registry, edge, now: float):
    """(3) heads + tracker update + per-device attribution."""
    heads = ofwire.flow_stats_heads(body)
    deltas = tracker.update(dpid, heads, now)
    return stats.by_device(deltas, registry, edge)


# ---------------------------------------------------------------- scenarios


def single_switch(n_entries: int, n_devices: int, reps: int, seed: int) -> dict:
    table = wire.synthetic_table(n_entries, n_devices, seed)
    poll1 = table.entries
    poll2 = table.advance(1)
    enc1 = [e.encode() for e in poll1]
    enc2 = [e.encode() for e in poll2]
    msgs2 = wire.split_replies(enc2, xid=2)
    body1 = b"".join(enc1)
    body2 = b"".join(enc2)
    edge_of = {m: DPID for m in table.macs}
    registry = table.registry
    edge = stats.edge_array(registry, edge_of.get)   # the core caches this per topology change
    dp = _dp()

    def primed(_=None):
        tracker = stats.FlowStatsTracker()
        tracker.update(DPID, ofwire.flow_stats_heads(body1), 0.0)
        return tracker, stats.MultipartAssembler()

    # correctness once, untimed: the paths must agree with each other and the input
    _use(compat.framework_flow_stats_parser())
    objs = framework_parse(msgs2, dp)
    assert sum(len(m.body) for m in objs) == n_entries
    _use(compat.OFPFlowStatsReply)
    tracker, asm = primed()
    per_dev = iotguard_path(msgs2, dp, tracker, asm, registry, edge, 1.0)
    want_bytes = sum(b.byte_count - a.byte_count for a, b in zip(poll1, poll2))
    assert sum(t.tx_bytes for t in per_dev.values()) == want_bytes
    assert sum(t.rx_bytes for t in per_dev.values()) == want_bytes
    assert len(per_dev) == n_devices
    del objs

    _use(compat.framework_flow_stats_parser())
    t_fw, all_fw = _median_time(lambda s: framework_parse(msgs2, dp), reps)
    _use(compat.OFPFlowStatsReply)
    t_ig, all_ig = _median_time(
        lambda s: iotguard_path(msgs2, dp, s[0], s[1], registry, edge, 1.0), reps, primed)
    t_st, all_st = _median_time(lambda s: stats_step(body2, DPID, s[0], registry, edge, 1.0), reps, primed)
    # breakdown of (3)
    heads2 = ofwire.flow_stats_heads(body2)
    t_heads, _ = _median_time(lambda s: ofwire.flow_stats_heads(body2), reps)
    t_upd, _ = _median_time(lambda s: s[0].update(DPID, heads2, 1.0), reps, primed)

    def deltas_state(_=None):
        tr, _a = primed()
        return tr.update(DPID, heads2, 1.0)
    t_dev, _ = _median_time(lambda d: stats.by_device(d, registry, edge), reps, deltas_state)
    _use(compat.framework_flow_stats_parser())

    sizes = [len(e) for e in enc2]
    return {
        "entries": n_entries, "devices": n_devices, "messages": len(msgs2),
        "max_message_bytes": max(len(m) for m in msgs2),
        "mean_entry_bytes": statistics.fmean(sizes), "entry_bytes": sorted(set(sizes)),
        "seconds": {"framework": t_fw, "iotguard": t_ig, "stats_step": t_st,
                    "heads": t_heads, "tracker_update": t_upd, "by_device": t_dev},
        "all_seconds": {"framework": all_fw, "iotguard": all_ig, "stats_step": all_st},
    }


def fleet(n_devices: int, per_device: int, n_switches: int, reps: int) -> dict:
    """n_devices spread evenly over n_switches edge switches; each device has
    per_device forwarding entries at its edge switch, half toward a gateway
    (tx) and half from it (rx); the gateway sits on an unpolled core switch."""
    registry = FlowRegistry(capacity=n_devices * per_device + 2)
    macs = [wire.device_mac(i + 1) for i in range(n_devices)]
    gw = "02:ff:00:00:00:01"
    for m in macs:
        registry.mac_index(m)
    registry.mac_index(gw)
    edge_of = {m: 1 + i * n_switches // n_devices for i, m in enumerate(macs)}
    edge_of[gw] = 0xFFFF
    per_switch: dict[int, tuple[list, list]] = {d: ([], []) for d in range(1, n_switches + 1)}
    for i, m in enumerate(macs):
        for k in range(per_device):
            src, dst = (m, gw) if k % 2 == 0 else (gw, m)
            key = rules.flow_key(src, dst, rules.ETH_TYPE_IP, f"10.1.{k}.1", rules.IPPROTO_TCP, 8883 + k)
            fid = registry.id_for(key)
            common = dict(cookie=rules.cookie(rules.Kind.FORWARD, fid), duration_sec=100,
                          priority=rules.PRIO_FWD_IP, table_id=rules.TABLE_FORWARD, match=key.match())
            p1 = wire.FlowEntry(packet_count=1000 + i, byte_count=(1000 + i) * 200, **common)
            p2 = wire.FlowEntry(packet_count=1010 + i, byte_count=(1010 + i) * 200, **{
                **common, "duration_sec": 101})
            per_switch[edge_of[m]][0].append(p1.encode())
            per_switch[edge_of[m]][1].append(p2.encode())
    polls = {d: (b"".join(a), wire.split_replies(b, xid=d)) for d, (a, b) in per_switch.items()}
    edge = stats.edge_array(registry, edge_of.get)   # cached by the core between topology changes
    dps = {d: _dp(d) for d in polls}

    def primed(_=None):
        tracker = stats.FlowStatsTracker()
        for d, (body1, _m) in polls.items():
            tracker.update(d, ofwire.flow_stats_heads(body1), 0.0)
        return tracker, stats.MultipartAssembler()

    def round_(s):
        tracker, asm = s
        seen = 0
        for d, (_b, msgs) in polls.items():
            seen += len(iotguard_path(msgs, dps[d], tracker, asm, registry, edge, 1.0))
        return seen

    _use(compat.OFPFlowStatsReply)
    assert round_(primed()) == n_devices
    t_round, all_round = _median_time(round_, reps, primed)
    _use(compat.framework_flow_stats_parser())
    return {"devices": n_devices, "entries_per_device": per_device, "switches": n_switches,
            "entries": n_devices * per_device,
            "messages": sum(len(m) for _b, m in polls.values()),
            "round_seconds": t_round, "all_round_seconds": all_round}


# ---------------------------------------------------------------- report


def versions() -> dict:
    def v(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    return {"python": platform.python_version(), "os-ken": v("os-ken"), "numpy": np.__version__,
            "framework": compat.FRAMEWORK, "cpus": os.cpu_count(), "machine": platform.machine()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="repetitions; the median is reported (7)")
    ap.add_argument("--entries", type=int, default=10_000, help="flow entries on the switch (10000)")
    ap.add_argument("--devices", type=int, default=200, help="devices those flows connect (200)")
    ap.add_argument("--fleet-devices", type=int, default=5_000, help="devices polled every second (5000)")
    ap.add_argument("--entries-per-device", type=int, default=2, help="forwarding entries per device (2)")
    ap.add_argument("--switches", type=int, default=50, help="edge switches the fleet is spread over (50)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")

    gc_state = {"enabled": gc.isenabled(), "thresholds": list(gc.get_threshold()),
                "frozen": gc.get_freeze_count()}
    t_start = time.perf_counter()
    one = single_switch(args.entries, args.devices, args.reps, args.seed)
    fl = fleet(args.fleet_devices, args.entries_per_device, args.switches, args.reps)
    wall = time.perf_counter() - t_start

    n = one["entries"]
    s = one["seconds"]
    rate = {k: n / s[k] for k in ("framework", "iotguard", "stats_step")}
    fw_fleet_share = fl["entries"] / rate["framework"]
    extrapolated = fl["entries"] / rate["iotguard"]
    results = {
        "versions": versions(), "gc": gc_state, "reps": args.reps, "single_switch": one,
        "entries_per_second": rate,
        "ratios": {"iotguard_over_framework": rate["iotguard"] / rate["framework"],
                   "stats_step_over_framework": rate["stats_step"] / rate["framework"]},
        "per_poll_ms": {k: s[k] * 1e3 for k in s},
        "fleet": {**fl, "cpu_share_measured": fl["round_seconds"] / 1.0,
                  "cpu_share_extrapolated_one_switch": extrapolated,
                  "cpu_share_framework_parse": fw_fleet_share},
        "wall_seconds": wall,
    }

    ver = results["versions"]
    print(f"python {ver['python']}  {ver['framework']} {ver['os-ken']}  numpy {ver['numpy']}  "
          f"cpus {ver['cpus']}  gc enabled={gc_state['enabled']} thresholds={tuple(gc_state['thresholds'])} "
          f"frozen={gc_state['frozen']}")
    print(f"table: {n} forwarding entries, {one['devices']} devices, mean {one['mean_entry_bytes']:.1f} B/entry "
          f"(sizes {one['entry_bytes']}), {one['messages']} messages <= {one['max_message_bytes']} B, "
          f"REPLY_MORE on all but the last; median of {args.reps} reps")
    print()
    print(f"{'path':<62} {'ms/poll':>9} {'entries/s':>13} {'x (1)':>7}")
    rows = [("(1) os-ken parse -> OFPFlowStats objects", "framework"),
            ("(2) iotguard: raw hook parse + heads + update + by_device", "iotguard"),
            ("(3) iotguard stats step alone: heads + update + by_device", "stats_step")]
    for label, k in rows:
        print(f"{label:<62} {s[k] * 1e3:>9.2f} {rate[k]:>13,.0f} {rate[k] / rate['framework']:>7.1f}")
    print(f"{'    of (3): ofwire.flow_stats_heads':<62} {s['heads'] * 1e3:>9.2f}")
    print(f"{'    of (3): FlowStatsTracker.update':<62} {s['tracker_update'] * 1e3:>9.2f}")
    print(f"{'    of (3): stats.by_device':<62} {s['by_device'] * 1e3:>9.2f}")
    print()
    r = results["ratios"]
    print(f"ratio (2)/(1) = {r['iotguard_over_framework']:.1f}x   ratio (3)/(1) = {r['stats_step_over_framework']:.1f}x")
    print()
    f = results["fleet"]
    print(f"fleet: {f['devices']} devices x {f['entries_per_device']} forwarding entries = {f['entries']} entries, "
          f"over {f['switches']} edge switches ({f['messages']} messages), every device's edge switch polled "
          f"once per second")
    print(f"  measured round, path (2) on every switch:  {f['round_seconds'] * 1e3:8.1f} ms  "
          f"-> {f['cpu_share_measured']:.1%} of one core")
    print(f"  extrapolated from the one-switch rate (2): {extrapolated * 1e3:8.1f} ms  "
          f"-> {extrapolated:.1%} of one core")
    print(f"  os-ken's object parse alone, same entries: {fw_fleet_share * 1e3:8.1f} ms  "
          f"-> {fw_fleet_share:.1%} of one core")
    print(f"\nwall time {wall:.1f} s")
    if args.json:
        print(json.dumps(results, indent=None, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
