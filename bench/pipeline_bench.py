"""Detection pipeline, end to end in one run: what scoring costs next to os-ken's parse.

    .venv/bin/python bench/pipeline_bench.py [--reps 5] [--json] [--no-profile]

Everything runs through the real `controller.core.Core` (fake clock, no
switch): devices are located with `core.topology.observe`, named with
`core.inventory.observe`, their conversations registered with
`core.registry.id_for`, and each poll goes `core.poll_sent` -> (per message)
os-ken header + `ofproto_parser.msg` with iotguard's raw hook -> the app's join
-> `core.flow_stats_part`.  The last reply of a round closes the window, so
`close_window` (features + scoring) runs inside the timed round, as in the app.
Component times come from thin timing wrappers put around the Core's own
objects (`flow_stats_heads`, `FlowStatsTracker.update`, `FeatureExtractor.add`,
`by_device`, `FeatureExtractor.close`, `Detector.on_window`); "other" is the
rest of the Core (assembler, per-device traffic records, bookkeeping).

Baselines: devices first learn for --train-windows windows of 1 s
(learn_seconds 30, `store_for(config)` via the Core, fit_budget 0 meanwhile so
nothing is fitted early); then every device is fitted at once with one
`BaselineStore.fit_pending` call (timed; under tracemalloc in part 3).  The defaults give
baselines without the covariance model (it needs 10 windows per feature, 150);
`--learn-seconds 300 --train-windows 302` is the app's default warm-up, which has it.  Every
measured window has every device scored against its own baseline.

Tables are ordered as Open vSwitch dumps them, grouped by priority and match shape
(`ovs_order`); `--interleaved` keeps each device's flows together instead, so that match
shapes alternate every few entries: the raw parse's worst case, which walks every length
field in Python.

Polls: counters advance per entry as `SyntheticTable.advance` does (0-199
packets of 60-1499 bytes each, per second); each rep is the next poll, so the
tracker always has real deltas.  Times are medians of --reps reps after one
untimed warm-up rep, with `time.perf_counter`, the garbage collector in its
default state and a `gc.collect()` (untimed) before each timed section.

  1. one switch, --entries flows between --devices devices (stats_bench's
     realistic table 1): (a) os-ken's own object parse of the poll's messages,
     (b) the detection core on the same poll: FeatureExtractor.add of the
     tracker's deltas + FeatureExtractor.close + Detector.on_window,
     (c) the whole iotguard path: raw hook parse + heads + tracker + features +
     scoring (+ the rest of Core.flow_stats).  Target: cost(b)/cost(a) <= 0.5.
  2. scale: --fleet-devices devices x --flows-per-device flows on --switches
     edge switches; time per round without the message parse (stats step +
     features + scoring).  Target: <= 0.5 s on one core, and <= 0.02x os-ken's object
     parse of the same entries (at part 1's rate (a), measured in the same run).
  3. memory per device: DeviceBaseline.nbytes() (mean, max; its arrays are views of the
     store's BaselineBank, whose own bytes per device are shown too) and tracemalloc's
     growth while fitting the fleet's profiles (baseline + kept sample), per
     device.  Target: <= 20 KB.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import logging
import math
import os
import platform
import pstats
import statistics
import sys
import time
import tracemalloc
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench import flowstats_wire as wire  # noqa: E402
from bench.stats_bench import _dp, _use, framework_parse  # noqa: E402
from controller.openflow import compat  # noqa: E402
from controller.openflow import rules
from controller import core as core_module  # noqa: E402
from controller.config import Config, Device  # noqa: E402
from controller.core import Core  # noqa: E402
from controller.telemetry.features import FEATURES  # noqa: E402
from controller.detection.profiles import SAMPLE_SIZE  # noqa: E402

from os_ken.ofproto import ofproto_parser  # noqa: E402

ofp = compat.ofp
GW = "02:ff:00:00:00:01"
GW_DPID = 0x100          # the gateway's core switch: not polled, so never an edge here
FIT_BUDGET = 20          # BaselineStore's default, restored after training
FIT_SECONDS = 0.1        # and its time budget per poll
TARGET_CORE_RATIO = 0.5
TARGET_ROUND_S = 0.5
TARGET_FLEET_RATIO = 0.02   # part 2 over os-ken's object parse of the same entries (issue 9, item 6)
TARGET_BYTES_PER_DEVICE = 20 * 1024

COMPONENTS = ("raw parse", "heads", "tracker", "features add", "by_device", "features close", "scoring")


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


# ---------------------------------------------------------------- inputs


class Poller:
    """Successive polls of one switch's table, counters advancing as SyntheticTable.advance."""

    def __init__(self, entries: list[wire.FlowEntry], rng: np.random.Generator) -> None:
        self.wire = wire.WireTable(entries)
        self.n = len(entries)
        self.packets = np.array([e.packet_count for e in entries], dtype=np.uint64)
        self.bytes = np.array([e.byte_count for e in entries], dtype=np.uint64)
        self.dsec = np.array([e.duration_sec for e in entries], dtype=np.uint64)
        self.dnsec = np.array([e.duration_nsec for e in entries], dtype=np.uint64)
        self.rng = rng
        self.xid = 0

    def next(self, seconds: int = 1) -> bytes:
        dp = self.rng.integers(0, 200, self.n).astype(np.uint64)
        self.packets += dp
        self.bytes += dp * self.rng.integers(60, 1500, self.n).astype(np.uint64)
        self.dsec += np.uint64(seconds)
        self.xid += 1
        return self.wire.body(self.packets, self.bytes, self.dsec, self.dnsec)

    def messages(self, body: bytes) -> list[bytes]:
        return self.wire.messages(body, self.xid)


def make_core(learn_seconds: float) -> tuple[Core, Clock]:
    config = Config(learn_seconds=learn_seconds,
                    devices=(Device("gateway", GW, (), ("gateway",)),))
    clock = Clock()
    return Core(config, clock=clock, wall=clock, framework=compat.FRAMEWORK), clock


def place(core: Core, mac: str, dpid: int, port: int, now: float) -> None:
    """What a device's first packet-in at its edge port leaves behind."""
    core.registry.mac_index(mac)
    core.inventory.observe(mac, now)
    core.topology.observe(mac, dpid, port, now)


def single_switch_setup(core: Core, clock: Clock, n_entries: int, n_devices: int, seed: int,
                        interleaved: bool = False) -> Poller:
    """stats_bench's table 1 (wire.synthetic_table) on switch 1, re-registered in the Core."""
    table = wire.synthetic_table(n_entries, n_devices, seed)
    core.switch_connected(1)
    for i, mac in enumerate(table.macs):
        place(core, mac, 1, i + 1, clock())
    for e in table.entries:
        fid = rules.cookie_id(e.cookie)
        got = core.registry.id_for(table.registry.key_for(fid), clock())
        assert got == fid, "flow ids differ from the synthetic table's"
    return Poller(table.entries if interleaved else ovs_order(table.entries), np.random.default_rng(seed))


# 20 conversations of an IoT device: cloud, MQTT, DNS, NTP, HTTP, ping; replies from the
# gateway (rx); two lateral peers on the same switch; ARP both ways.
_PATTERN = (
    ("out", rules.IPPROTO_TCP, 443), ("out", rules.IPPROTO_TCP, 443), ("out", rules.IPPROTO_TCP, 443),
    ("out", rules.IPPROTO_TCP, 443), ("out", rules.IPPROTO_TCP, 8883), ("out", rules.IPPROTO_TCP, 8883),
    ("out", rules.IPPROTO_UDP, 53), ("out", rules.IPPROTO_UDP, 53), ("out", rules.IPPROTO_UDP, 123),
    ("out", rules.IPPROTO_TCP, 80), ("out", rules.IPPROTO_ICMP, None), ("out", rules.IPPROTO_ICMP, None),
    ("in", rules.IPPROTO_TCP, None), ("in", rules.IPPROTO_TCP, None), ("in", rules.IPPROTO_TCP, None),
    ("in", rules.IPPROTO_UDP, None),
    ("peer", rules.IPPROTO_TCP, 1883), ("peer", rules.IPPROTO_UDP, 5683),
    ("arp-out", None, None), ("arp-in", None, None),
)


def fleet_setup(core: Core, clock: Clock, n_devices: int, per_device: int, n_switches: int,
                seed: int, interleaved: bool = False) -> dict[int, Poller]:
    """n_devices spread evenly over n_switches edge switches, per_device conversations each
    (the pattern above, cycled), every entry on the device's own edge switch."""
    rng = np.random.default_rng(seed)
    now = clock()
    place(core, GW, GW_DPID, 1, now)
    for d in range(1, n_switches + 1):
        core.switch_connected(d)
    macs = [wire.device_mac(0x10000 + i) for i in range(n_devices)]
    edge = [1 + i * n_switches // n_devices for i in range(n_devices)]
    local: dict[int, list[int]] = {}
    for i, mac in enumerate(macs):
        local.setdefault(edge[i], []).append(i)
        place(core, mac, edge[i], len(local[edge[i]]), now)
    ip = {i: f"10.{edge[i]}.{k // 250}.{k % 250 + 1}" for d, devs in local.items() for k, i in enumerate(devs)}
    clouds = [f"203.0.113.{k}" for k in range(1, 255)] + [f"198.51.100.{k}" for k in range(1, 255)]
    per_switch: dict[int, list[wire.FlowEntry]] = {d: [] for d in local}
    for i, mac in enumerate(macs):
        devs = local[edge[i]]
        peers = rng.choice(devs, size=4, replace=False).tolist()
        peers = [p for p in peers if p != i][:2]
        picks = rng.choice(len(clouds), size=len(_PATTERN), replace=False).tolist()
        for k in range(per_device):
            kind, proto, port = _PATTERN[k % len(_PATTERN)]
            if kind == "out":
                dst = "10.0.0.53" if port == 53 else ("10.0.0.1" if k == 10 else clouds[picks[k]])
                key = rules.flow_key(mac, GW, rules.ETH_TYPE_IP, dst, proto, port)
            elif kind == "in":
                key = rules.flow_key(GW, mac, rules.ETH_TYPE_IP, ip[i], proto, int(rng.integers(32768, 61000)))
            elif kind == "peer":
                p = peers[(k // len(_PATTERN) + k) % len(peers)]
                key = rules.flow_key(mac, macs[p], rules.ETH_TYPE_IP, ip[p], proto, port)
            elif kind == "arp-out":
                key = rules.flow_key(mac, GW, rules.ETH_TYPE_ARP)
            else:
                key = rules.flow_key(GW, mac, rules.ETH_TYPE_ARP)
            fid = core.registry.id_for(key, now)
            packets = int(rng.integers(1, 100_000))
            per_switch[edge[i]].append(wire.FlowEntry(
                cookie=rules.cookie(rules.Kind.FORWARD, fid), packet_count=packets,
                byte_count=packets * int(rng.integers(60, 1500)), duration_sec=int(rng.integers(0, 3600)),
                duration_nsec=int(rng.integers(0, 1_000_000_000)),
                priority=rules.PRIO_FWD_IP if key.is_ip else rules.PRIO_FWD_L2, idle_timeout=10, flags=1,
                table_id=rules.TABLE_FORWARD, match=key.match(), out_port=int(rng.integers(1, 49))))
    return {d: Poller(entries if interleaved else ovs_order(entries), np.random.default_rng(seed + d))
            for d, entries in per_switch.items()}


def ovs_order(entries: list[wire.FlowEntry]) -> list[wire.FlowEntry]:
    """The entries in the order Open vSwitch dumps a table: grouped by priority and match
    shape (its classifier walks one subtable, i.e. one mask, after another), stable within
    a group.  Checked on OVS 3.1 (ovs-ofctl dump-flows of 300 TCP, UDP, ARP and ICMP flows
    added in random order: 3 runs, of 151, 75 and 74).  The order matters to the raw parse,
    which confirms runs of one entry length at once (controller/openflow/wire.py)."""
    return sorted(entries, key=lambda e: (-e.priority, tuple(name for name, _ in e.match)))


# ---------------------------------------------------------------- training


def learn(core: Core, clock: Clock, pollers: dict[int, Poller], windows: int) -> None:
    """Benign windows through the whole Core while every device learns (nothing fitted yet)."""
    core.store.fit_budget = 0
    for _ in range(windows):
        clock.t += 1.0
        core.poll_sent(list(pollers))
        for dpid, p in pollers.items():
            core.flow_stats(dpid, p.next())


def fit_all(core: Core, clock: Clock, trace: bool) -> dict:
    """Fit every learning device in one fit_pending call; measure time and memory kept."""
    store = core.store
    held = [p.windows for p in store.profiles.values()]   # keep the training rows alive: the
    n_rows = sum(len(w) for w in held)                   # growth measured is what the fit keeps
    store.fit_budget, store.fit_seconds = len(store.profiles), math.inf
    gc.collect()
    rss0 = rss_bytes()
    if trace:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    fitted = store.fit_pending(clock())
    t_fit = time.perf_counter() - t0
    n_fitted = len(fitted)
    del fitted
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - base if trace else None
    if trace:
        tracemalloc.stop()
    rss1 = rss_bytes()
    del held
    store.fit_budget, store.fit_seconds = FIT_BUDGET, FIT_SECONDS
    learning = sum(1 for p in store.profiles.values() if p.learning)
    assert learning == 0, f"{learning} devices still learning"
    return {"fitted": n_fitted, "fit_seconds": t_fit, "traced": trace, "training_rows": n_rows,
            "traced_bytes": traced, "rss_growth_bytes": rss1 - rss0}


# ---------------------------------------------------------------- measurement


class Meter:
    """Timing wrappers around the Core's own components (seconds per name, per round)."""

    def __init__(self, core: Core) -> None:
        self.t = dict.fromkeys(COMPONENTS, 0.0)
        self._wrap(core_module, "flow_stats_heads", "heads")
        self._wrap(core.flow_tracker, "update", "tracker")
        self._wrap(core.extractor, "add", "features add")
        self._wrap(core_module, "by_device", "by_device")
        self._wrap(core.extractor, "close", "features close")
        self._wrap(core.detector, "on_window", "scoring")

    def _wrap(self, obj, attr: str, name: str) -> None:
        fn = getattr(obj, attr)
        t = self.t
        clock = time.perf_counter

        def timed(*args, **kwargs):
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                t[name] += clock() - t0
        setattr(obj, attr, timed)

    def reset(self) -> None:
        for k in self.t:
            self.t[k] = 0.0


def timed_round(core: Core, clock: Clock, polls: dict[int, list[bytes]], dps: dict, meter: Meter,
                profiler: cProfile.Profile | None = None) -> dict:
    """One polling round through the app's path; the last reply closes the window."""
    windows, scored, alerts = core.counters["windows"], core.detector.windows_scored, core.counters["alerts"]
    core.poll_sent(list(polls))
    for dpid, msgs in polls.items():     # the app registers each request's xid before sending it
        for xid in {ofproto_parser.header(m)[3] for m in msgs}:
            core.request_sent(dpid, xid)
    meter.reset()
    t_parse = meter.t
    gc.collect()
    if profiler is not None:
        profiler.enable()
    t0 = time.perf_counter()
    for dpid, msgs in polls.items():
        dp = dps[dpid]
        for m in msgs:
            t1 = time.perf_counter()
            version, msg_type, msg_len, xid = ofproto_parser.header(m)
            msg = ofproto_parser.msg(dp, version, msg_type, msg_len, xid, bytearray(m)[:msg_len])
            body = b"".join(b.data for b in msg.body)
            more = bool(msg.flags & ofp.OFPMPF_REPLY_MORE)
            t_parse["raw parse"] += time.perf_counter() - t1
            core.flow_stats_part(dpid, msg.xid, body, more)
    total = time.perf_counter() - t0
    if profiler is not None:
        profiler.disable()
    assert core.counters["windows"] == windows + 1, "the round did not close its window"
    out = dict(meter.t)
    out["total"] = total
    out["other"] = total - sum(meter.t[k] for k in COMPONENTS)
    out["scored"] = core.detector.windows_scored - scored
    out["alerts"] = core.counters["alerts"] - alerts
    return out


def next_polls(clock: Clock, pollers: dict[int, Poller]) -> dict[int, list[bytes]]:
    clock.t += 1.0
    return {d: p.messages(p.next()) for d, p in pollers.items()}


def medians(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def single_switch(args) -> dict:
    core, clock = make_core(args.learn_seconds)
    t_setup = time.perf_counter()
    poller = single_switch_setup(core, clock, args.entries, args.devices, args.seed, args.interleaved)
    pollers = {1: poller}
    learn(core, clock, pollers, args.train_windows)
    fit = fit_all(core, clock, trace=False)
    t_setup = time.perf_counter() - t_setup
    meter = Meter(core)
    dps = {1: _dp(1)}
    rows_a, rows_c = [], []
    for rep in range(args.reps + 1):
        polls = next_polls(clock, pollers)
        msgs = polls[1]
        _use(compat.framework_flow_stats_parser())
        gc.collect()
        t0 = time.perf_counter()
        objs = framework_parse(msgs, dps[1])
        t_a = time.perf_counter() - t0
        assert sum(len(o.body) for o in objs) == args.entries
        del objs
        _use(compat.OFPFlowStatsReply)
        row = timed_round(core, clock, polls, dps, meter)
        assert row["scored"] == args.devices, (row["scored"], args.devices)
        row["core"] = row["features add"] + row["features close"] + row["scoring"]
        if rep:
            rows_a.append(t_a)
            rows_c.append(row)
    _use(compat.framework_flow_stats_parser())
    m = medians(rows_c)
    a = statistics.median(rows_a)
    n = args.entries
    return {
        "entries": n, "devices": args.devices, "messages": len(msgs),
        "setup_seconds": t_setup, "fit": fit,
        "seconds": {"a_framework_parse": a, "b_core": m["core"], "c_iotguard": m["total"],
                    **{k: m[k] for k in (*COMPONENTS, "other")}},
        "entries_per_second": {"a": n / a, "b": n / m["core"], "c": n / m["total"]},
        "ratio_b_over_a": m["core"] / a, "ratio_c_over_a": m["total"] / a,
        "alerts_in_measured_rounds": sum(r["alerts"] for r in rows_c),
        "all_seconds": {"a": rows_a, "b": [r["core"] for r in rows_c], "c": [r["total"] for r in rows_c]},
    }


def profile_round(core: Core, clock: Clock, pollers: dict, dps: dict, meter: Meter, top: int = 12) -> dict:
    polls = next_polls(clock, pollers)
    prof = cProfile.Profile()
    row = timed_round(core, clock, polls, dps, meter, prof)
    st = pstats.Stats(prof)
    total = max(v[3] for v in st.stats.values())          # the outermost frame's cumulative time
    here = os.path.basename(__file__)

    def name(func):
        path, line, fn = func
        short = path.split("site-packages/")[-1] if "site-packages" in path else os.path.relpath(path, ROOT) \
            if path.startswith(ROOT) else path
        return f"{short}:{line}({fn})"

    rows = [(func, v) for func, v in st.stats.items() if not func[0].endswith(here)]
    by_cum = sorted(rows, key=lambda r: -r[1][3])[:top]
    by_tot = sorted(rows, key=lambda r: -r[1][2])[:top]
    fmt = lambda r: {"function": name(r[0]), "calls": r[1][1], "tottime": r[1][2],  # noqa: E731
                     "cumtime": r[1][3], "share_cum": r[1][3] / total, "share_tot": r[1][2] / total}
    return {"profiled_total": total, "round": row,
            "by_cumulative": [fmt(r) for r in by_cum], "by_self": [fmt(r) for r in by_tot]}


def fleet(args) -> dict:
    core, clock = make_core(args.learn_seconds)
    t0 = time.perf_counter()
    pollers = fleet_setup(core, clock, args.fleet_devices, args.flows_per_device, args.switches, args.seed,
                          args.interleaved)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    learn(core, clock, pollers, args.train_windows)
    t_learn = time.perf_counter() - t0
    fit = fit_all(core, clock, trace=not args.no_trace)
    baselines = [p.baseline for p in core.store.profiles.values()]
    nb = np.array([b.nbytes() for b in baselines], dtype=np.float64)
    multivariate = sum(1 for b in baselines if b.multivariate)
    bank_bytes = core.store.bank.nbytes()
    samples = np.array([p.sample.nbytes for p in core.store.profiles.values()], dtype=np.float64)
    sample_rows = np.array([len(p.sample) for p in core.store.profiles.values()], dtype=np.float64)
    n_prof = len(core.store.profiles)
    meter = Meter(core)
    dps = {d: _dp(d) for d in pollers}
    rows = []
    _use(compat.OFPFlowStatsReply)       # the raw hook, as the app installs it
    for rep in range(args.reps + 1):
        row = timed_round(core, clock, next_polls(clock, pollers), dps, meter)
        assert row["scored"] == args.fleet_devices, (row["scored"], args.fleet_devices)
        row["no_parse"] = row["total"] - row["raw parse"]
        if rep:
            rows.append(row)
    m = medians(rows)
    prof = profile_round(core, clock, pollers, dps, meter) if not args.no_profile else None
    _use(compat.framework_flow_stats_parser())
    entries = sum(p.n for p in pollers.values())
    return {
        "devices": args.fleet_devices, "flows_per_device": args.flows_per_device, "switches": args.switches,
        "entries": entries, "messages": sum(len(p.wire.spans) for p in pollers.values()),
        "setup": {"build_seconds": t_build, "learn_seconds": t_learn, "train_windows": args.train_windows,
                  **fit, "fit_ms_per_device": fit["fit_seconds"] / max(fit["fitted"], 1) * 1e3},
        "seconds": m, "alerts_in_measured_rounds": sum(r["alerts"] for r in rows),
        "multivariate_baselines": multivariate,
        "all_seconds": {"total": [r["total"] for r in rows], "no_parse": [r["no_parse"] for r in rows]},
        "memory": {"profiles": n_prof, "nbytes_mean": float(nb.mean()), "nbytes_max": float(nb.max()),
                   "sample_bytes_mean": float(samples.mean()), "sample_bytes_max": float(samples.max()),
                   "sample_rows_mean": float(sample_rows.mean()),
                   "bank_bytes": bank_bytes, "bank_rows": len(core.store.bank),
                   "traced_per_device": None if fit["traced_bytes"] is None else fit["traced_bytes"] / n_prof,
                   "rss_per_device": fit["rss_growth_bytes"] / n_prof},
        "profile": prof,
    }


# ---------------------------------------------------------------- report


def versions() -> dict:
    def v(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {"python": platform.python_version(), "numpy": np.__version__, "os-ken": v("os-ken"),
            "scikit-learn": v("scikit-learn"), "framework": compat.FRAMEWORK, "cpus": os.cpu_count(),
            "cpus_usable": usable, "machine": platform.machine()}


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="measured reps; the median is reported (5)")
    ap.add_argument("--entries", type=int, default=10_000, help="part 1: flow entries on the switch (10000)")
    ap.add_argument("--devices", type=int, default=200, help="part 1: devices those flows connect (200)")
    ap.add_argument("--fleet-devices", type=int, default=5_000, help="part 2: devices (5000)")
    ap.add_argument("--flows-per-device", type=int, default=20, help="part 2: flows per device (20)")
    ap.add_argument("--switches", type=int, default=5, help="part 2: edge switches (5)")
    ap.add_argument("--train-windows", type=int, default=40, help="benign 1-s windows before fitting (40)")
    ap.add_argument("--learn-seconds", type=float, default=30.0, help="detection.learn_seconds (30)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile'd extra round")
    ap.add_argument("--no-trace", action="store_true", help="fit the fleet without tracemalloc")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    ap.add_argument("--interleaved", action="store_true",
                    help="order each table by device (its flows' match shapes alternate), not as OVS "
                         "dumps it (grouped by shape): the raw parse's worst case")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.train_windows < args.learn_seconds + 2:
        ap.error("--train-windows must exceed --learn-seconds + 1 (devices must finish learning)")

    logging.getLogger("iotguard").setLevel(logging.ERROR)   # alerts are counted, not logged
    print(f"tables ordered {'by device (match shapes interleaved)' if args.interleaved else 'as OVS dumps them (grouped by match shape)'}")
    t_start = time.perf_counter()
    one = single_switch(args)
    fl = fleet(args)
    wall = time.perf_counter() - t_start
    ver = versions()
    mem = fl["memory"]
    # the larger of the estimate (largest baseline + a sample at its row cap + the bank's
    # extra) and the measured growth
    full_sample = SAMPLE_SIZE * np.dtype(np.float32).itemsize * len(FEATURES)
    # nbytes() counts the baseline's views' data (its rows of the bank); the bank's spare
    # capacity and its per-row floors, masks and scalars come on top
    F = len(FEATURES)
    bank_extra = max(mem["bank_bytes"] / max(mem["bank_rows"], 1) - (5 * F + F * F) * 8, 0.0)
    estimate = mem["nbytes_max"] + max(mem["sample_bytes_max"], full_sample) + bank_extra
    bytes_per_device = max(estimate, mem["traced_per_device"] or 0.0)
    fleet_parse = fl["entries"] / one["entries_per_second"]["a"]      # os-ken at rate (a)
    fleet_ratio = fl["seconds"]["no_parse"] / fleet_parse
    targets = {
        "core_over_parse": {"value": one["ratio_b_over_a"], "target": TARGET_CORE_RATIO,
                            "met": one["ratio_b_over_a"] <= TARGET_CORE_RATIO},
        "fleet_round_seconds": {"value": fl["seconds"]["no_parse"], "target": TARGET_ROUND_S,
                                "met": fl["seconds"]["no_parse"] <= TARGET_ROUND_S},
        "fleet_over_parse": {"value": fleet_ratio, "target": TARGET_FLEET_RATIO,
                             "met": fleet_ratio <= TARGET_FLEET_RATIO},
        "bytes_per_device": {"value": bytes_per_device, "target": TARGET_BYTES_PER_DEVICE,
                             "met": bytes_per_device <= TARGET_BYTES_PER_DEVICE},
    }
    results = {"versions": ver, "reps": args.reps, "single_switch": one, "fleet": fl, "targets": targets,
               "wall_seconds": wall, "gc": {"enabled": gc.isenabled(), "thresholds": list(gc.get_threshold())}}

    print(f"python {ver['python']}  numpy {ver['numpy']}  {ver['framework']} {ver['os-ken']}  "
          f"scikit-learn {ver['scikit-learn']}  cpus {ver['cpus']} (usable {ver['cpus_usable']})  "
          f"{ver['machine']}  gc on; median of {args.reps} reps (+1 warm-up)")

    s = one["seconds"]
    n = one["entries"]
    print(f"\n1. one switch: {n} forwarding entries, {one['devices']} devices, {one['messages']} messages, "
          f"every device baselined ({one['fit']['fitted']} fitted after {args.train_windows} learning "
          f"windows, {one['fit']['fit_seconds'] * 1e3 / max(one['fit']['fitted'], 1):.2f} ms/fit)")
    print(f"   {'path':<66} {'ms/poll':>9} {'entries/s':>12} {'x cost(a)':>10}")
    for label, k in (("(a) os-ken parse -> OFPFlowStats objects", "a_framework_parse"),
                     ("(b) detection core: features add + close + Detector.on_window", "b_core"),
                     ("(c) whole iotguard path: raw parse .. scoring (Core)", "c_iotguard")):
        print(f"   {label:<66} {s[k] * 1e3:>9.2f} {n / s[k]:>12,.0f} {s[k] / s['a_framework_parse']:>10.3f}")
    for k in (*COMPONENTS, "other"):
        print(f"   {'    of (c): ' + k:<66} {s[k] * 1e3:>9.2f}")
    print(f"   cost(b)/cost(a) = {one['ratio_b_over_a']:.3f} (target <= {TARGET_CORE_RATIO}: "
          f"{verdict(targets['core_over_parse']['met'])});  cost(c)/cost(a) = {one['ratio_c_over_a']:.3f};  "
          f"alerts in measured windows: {one['alerts_in_measured_rounds']}")

    f = fl["seconds"]
    su = fl["setup"]
    print(f"\n2. scale: {fl['devices']} devices x {fl['flows_per_device']} flows = {fl['entries']} entries on "
          f"{fl['switches']} edge switches ({fl['messages']} messages), every device baselined and scored "
          f"({fl['multivariate_baselines']} of them with the covariance model)")
    print(f"   setup: build {su['build_seconds']:.1f} s, {su['train_windows']} learning windows "
          f"{su['learn_seconds']:.1f} s, fit {su['fitted']} baselines one by one {su['fit_seconds']:.1f} s "
          f"({su['fit_ms_per_device']:.2f} ms each{', under tracemalloc' if su['traced'] else ''}; "
          f"{one['fit']['fit_seconds'] * 1e3 / max(one['fit']['fitted'], 1):.2f} ms untraced in part 1)")
    print(f"   {'per round (all switches answered, window closed)':<66} {'ms':>9} {'share':>7}")
    for k in (*COMPONENTS, "other"):
        print(f"   {'  ' + k:<66} {f[k] * 1e3:>9.1f} {f[k] / f['total']:>7.1%}")
    print(f"   {'total, with the raw message parse':<66} {f['total'] * 1e3:>9.1f}")
    print(f"   {'stats step + features + scoring (total - raw parse)':<66} {f['no_parse'] * 1e3:>9.1f}   "
          f"target <= {TARGET_ROUND_S * 1e3:.0f} ms: {verdict(targets['fleet_round_seconds']['met'])}")
    print(f"   scoring per device: {f['scoring'] / fl['devices'] * 1e6:.1f} us;  os-ken's object parse of "
          f"the same entries (at rate (a)) would take {fl['entries'] / one['entries_per_second']['a']:.1f} s;  "
          f"alerts in measured windows: {fl['alerts_in_measured_rounds']}")
    print(f"   stats step + features + scoring / os-ken's object parse of the same entries = "
          f"{fleet_ratio:.4f} (target <= {TARGET_FLEET_RATIO}: {verdict(targets['fleet_over_parse']['met'])})")

    print(f"\n3. memory per device ({mem['profiles']} profiles)")
    print(f"   DeviceBaseline.nbytes(): mean {mem['nbytes_mean']:,.0f} B, max {mem['nbytes_max']:,.0f} B;  "
          f"kept sample: {mem['sample_rows_mean']:.0f} rows, {mem['sample_bytes_mean']:,.0f} B of float32 data "
          f"(at the {SAMPLE_SIZE}-row cap: {SAMPLE_SIZE * 4 * len(FEATURES):,} B)")
    print(f"   BaselineBank (every baseline's numbers, stacked; spare capacity included): "
          f"{mem['bank_bytes'] / max(mem['bank_rows'], 1):,.0f} B/device, of which "
          f"{bank_extra:,.0f} B are not the rows nbytes() already counts")
    if mem["traced_per_device"] is not None:
        print(f"   measured, tracemalloc growth over fit_pending (baseline + sample + profile changes, "
              f"training rows held): {mem['traced_per_device']:,.0f} B/device")
    print(f"   RSS growth over the same fit: {mem['rss_per_device']:,.0f} B/device "
          f"(tracemalloc's own bookkeeping included when traced)")
    print(f"   target <= {TARGET_BYTES_PER_DEVICE:,} B/device: {verdict(targets['bytes_per_device']['met'])} "
          f"(largest baseline + a full sample + bank extra {estimate:,.0f} B; "
          f"measured {mem['traced_per_device'] or float('nan'):,.0f} B)")

    prof = fl["profile"]
    if prof is not None:
        print(f"\nhot spots: cProfile of one more fleet round ({prof['round']['total'] * 1e3:.0f} ms under the "
              f"profiler, {f['total'] * 1e3:.0f} ms without), shares of the profiled round")
        print(f"   {'by cumulative time':<88} {'calls':>8} {'cum':>7}")
        for r in prof["by_cumulative"]:
            print(f"   {r['function'][:88]:<88} {r['calls']:>8} {r['share_cum']:>7.1%}")
        print(f"   {'by own time':<88} {'calls':>8} {'own':>7}")
        for r in prof["by_self"]:
            print(f"   {r['function'][:88]:<88} {r['calls']:>8} {r['share_tot']:>7.1%}")
    print(f"\nwall time {wall:.1f} s")
    if args.json:
        print(json.dumps(results, default=float, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
