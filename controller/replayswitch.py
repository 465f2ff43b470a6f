"""The one OpenFlow switch a replay emulates, and the real `Core` it drives.

Shared by `iotguard replay --pcap` (controller/pcapreplay.py: frames from a capture)
and `--conn-log` (controller/connreplay.py: connections from a Zeek log).  Nothing
here re-implements detection: a `Core` (controller/core.py) runs as it runs in
`iotguard run`, and `Replay` plays its switch:

* one switch (dpid 1); each MAC gets its own port, learned from the first frame it
  sends (a frame to a MAC that has not sent yet is flooded, as a real switch does);
* table 1 holds the flows the core installs (`FlowSpec` adds and deletes), matched
  by their FlowKey fields, highest priority first, each with packet and byte
  counters and its idle timeout, expired by capture time (flow-removed goes to the
  core with the final counters, as OFPFF_SEND_FLOW_REM asks);
* a frame no flow matches is a table-miss: through the packet-in meter (a token
  bucket of `forwarding.packet_in_rate` / `packet_in_burst`; a dropped frame is
  lost, as on a switch) to `core.packet_in`, whose flows are installed at once
  (a real switch takes a few milliseconds: frames inside that gap would be
  packet-ins too) and whose packet-out delivers the frame;
* `Replay.packets` takes many like frames at one instant (a flow log's bulk): each
  is a table-miss until a flow matches, then the rest count on that flow, so a
  flood costs one call, not one per packet;
* every `poll_interval` of capture time the core gets `poll_sent` and a flow-stats
  reply built from the table in the wire format (`openflow.wire`), which closes
  the window exactly as a live poll does; after the last frame, up to
  JUDGE_AFTER more, while connections its last SYNs opened await judgement (they
  are judged at a window, JUDGE_AFTER after the SYN).

The clock (`clock=` and `wall=`) is the capture's timestamps, so learning lasts
`detection.learn_seconds` of capture time and alerts carry capture times.  Responses
(playbooks) stay off: the replay only reports.  Port statistics are not emulated
(no window feature uses them; the volume fast path does not run), nor LLDP (one
switch has no links).

Capture clocks are not always sane: a frame stamped earlier than one before it (a
capture merged from several files) counts at the latest time seen, and a silence in
which the switch's table is empty is polled for SILENCE_POLLED seconds, then skipped
(one frame of a damaged capture stamped ten years ahead had the replay poll an empty
switch 300 million times).  Both are told in the result's warnings; a step back of
less than JITTER (1 ms) is counted at the latest time without one.

A replay may start from saved baselines (`load_baselines`: `iotguard run`'s state file,
or another replay's `save` in `finish`), so that a capture whose device was infected
before it began is judged against a clean day instead of learning the infection as a
habit.  Devices in the file are judged from the first frame; the others learn as usual.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import struct
from dataclasses import dataclass, field

from controller.config import Config
from controller.core import Core
from controller.detection.baseline import BaselineFormatError
from controller.detection.profiles import read_state
from controller.network.forwarding import is_group_mac
from controller.openflow import rules
from controller.openflow.packets import parse_frame, wire_length
from controller.openflow.rules import FlowKey, FlowSpec
from controller.telemetry.features import INDEX
from controller.telemetry.outcomes import JUDGE_AFTER

DPID = 1
_ENTRY = struct.Struct("!HBxIIHHHH4xQQQ")     # ofp_flow_stats up to the match
_EMPTY_MATCH = struct.pack("!HH4x", 1, 4)     # OFPMT_OXM, no fields
_FLAG_SEND_FLOW_REM = 1
# Seconds of polls of an empty table after which the rest of a silence is skipped: by then
# every flow, alert and novelty horizon (10 min) has run out, so the windows of an idle
# switch say nothing new, and a day of silence costs an hour of polls.
SILENCE_POLLED = 3600.0
# Frames out of order by less than this are a capture's normal jitter (several queues or
# interfaces written into one file): taken at the latest time, without a warning.
JITTER = 0.001


class CaptureError(ValueError):
    """The capture or log cannot be replayed; the message names the file (and line)."""


# ------------------------------------------------------------------ the emulated switch

@dataclass
class _Flow:
    spec: FlowSpec
    installed: float
    last_hit: float
    seq: int
    packets: int = 0
    bytes: int = 0

    @property
    def expires(self) -> float:
        t = float("inf")
        if self.spec.idle_timeout:
            t = self.last_hit + self.spec.idle_timeout
        if self.spec.hard_timeout:
            t = min(t, self.installed + self.spec.hard_timeout)
        return t


def _frame_match(pkt) -> tuple:
    """The frame's fields in FlowKey match order; a flow matches it iff the flow's match
    is a prefix of this (FlowKey.match always lists its fields in this order)."""
    return FlowKey(pkt.eth_src, pkt.eth_dst, pkt.eth_type,
                   pkt.ipv4_dst if pkt.eth_type == rules.ETH_TYPE_IP else None,
                   pkt.ip_proto, pkt.tp_dst).match()


class Switch:
    """Table 1 (forwarding) of one OpenFlow 1.3 switch, as iotguard programs it."""

    def __init__(self, packet_in_rate: int, packet_in_burst: int) -> None:
        self.flows: dict[tuple, _Flow] = {}          # match -> flow (priorities follow the match shape)
        self._heap: list[tuple[float, int, tuple]] = []
        self._seq = 0
        self.rate, self.burst = float(packet_in_rate), float(packet_in_burst)
        self._tokens, self._tokens_at = float(packet_in_burst), None
        self.installed = self.expired = self.deleted = self.metered = 0

    def lookup(self, pkt) -> _Flow | None:
        full = _frame_match(pkt)
        best = None
        for n in range(3, len(full) + 1):
            f = self.flows.get(full[:n])
            if f is not None and (best is None or f.spec.priority > best.spec.priority):
                best = f
        return best

    def meter(self, now: float) -> bool:
        """The packet-in meter (drop band, packets/s): may this table-miss go to the controller?"""
        if self._tokens_at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._tokens_at) * self.rate)
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.metered += 1
        return False

    def apply(self, spec: FlowSpec, now: float) -> list[_Flow]:
        """One flow-mod; returns the flows it removed that asked for flow-removed."""
        if spec.command == "add":
            if spec.table_id != rules.TABLE_FORWARD or rules.cookie_kind(spec.cookie) != rules.Kind.FORWARD:
                return []          # the pipeline (table 0 goto, table-miss) is implicit here
            old = self.flows.get(spec.match)
            self._seq += 1
            flow = _Flow(spec, now, now, self._seq)
            if old is not None:    # OpenFlow 1.3: same match and priority replaces, counters kept
                flow.packets, flow.bytes = old.packets, old.bytes
            self.flows[spec.match] = flow
            self.installed += 1
            heapq.heappush(self._heap, (flow.expires, flow.seq, spec.match))
            return []
        if spec.table_id not in (rules.TABLE_FORWARD, rules.TABLE_ALL):
            return []
        want = dict(spec.match)
        gone = []
        for match, f in list(self.flows.items()):
            if (f.spec.cookie & spec.cookie_mask) != (spec.cookie & spec.cookie_mask):
                continue
            have = dict(match)
            if spec.command == "delete_strict":
                hit = match == spec.match and f.spec.priority == spec.priority
            else:
                hit = all(have.get(k) == v for k, v in want.items())
            if hit:
                del self.flows[match]
                self.deleted += 1
                if f.spec.send_flow_removed:
                    gone.append(f)
        return gone

    def next_expiry(self) -> float:
        """When the next flow times out (inf: none); stale heap entries are fixed up here."""
        while self._heap:
            t, seq, match = self._heap[0]
            f = self.flows.get(match)
            if f is None or f.seq != seq:
                heapq.heappop(self._heap)
                continue
            actual = f.expires
            if actual > t:
                heapq.heapreplace(self._heap, (actual, seq, match))
                continue
            return t
        return float("inf")

    def pop_expired(self) -> _Flow:
        _, _, match = heapq.heappop(self._heap)
        self.expired += 1
        return self.flows.pop(match)

    def stats_body(self, now: float) -> bytes:
        """A flow-stats reply body (ofp_flow_stats entries) of every flow in table 1."""
        out = []
        for f in self.flows.values():
            d = max(now - f.installed, 0.0)
            sec = int(d)
            out.append(_ENTRY.pack(56, rules.TABLE_FORWARD, sec, int((d - sec) * 1e9), f.spec.priority,
                                   f.spec.idle_timeout, f.spec.hard_timeout,
                                   _FLAG_SEND_FLOW_REM if f.spec.send_flow_removed else 0,
                                   f.spec.cookie, f.packets, f.bytes) + _EMPTY_MATCH)
        return b"".join(out)


# ------------------------------------------------------------------ what the replay reports

@dataclass
class DeviceSummary:
    mac: str
    name: str = ""
    tags: tuple[str, ...] = ()
    excluded: bool = False
    frames_sent: int = 0           # in the capture (a log: its packet counts)
    frames_received: int = 0       # in the capture, unicast to it
    frames_before_located: int = 0  # unicast to it before it sent anything: flooded, not counted
    windows: int = 0               # windows it was active in (a row of features)
    tx_packets: float = 0.0        # as iotguard counted them (features x window)
    rx_packets: float = 0.0
    tx_bytes: float = 0.0
    rx_bytes: float = 0.0
    learned_at: float | None = None
    failed_connections: int = 0    # its TCP connections judged failed (telemetry/outcomes.py)
    flagged: list[dict] = field(default_factory=list)   # windows in which an alert was raised or grew
    alert_ids: list[str] = field(default_factory=list)

    @property
    def packets(self) -> int:
        return round(self.tx_packets + self.rx_packets)


@dataclass
class Result:
    file: str
    frames: int
    start: float
    end: float
    config: Config
    windows: int
    packet_ins: int
    switch: Switch
    unparsed: int
    devices: dict[str, DeviceSummary]
    alerts: list[dict]
    warnings: list[str]
    unit: str = "frames"           # what `frames` counts: "frames" (a pcap) or "connections" (a log)
    baselines: str | None = None   # the file the replay started from (Replay.load_baselines)
    loaded: frozenset = frozenset()   # MACs judged from the first frame by a baseline from it
    saved: str | None = None       # where finish(save=) wrote the baselines at the end

    def to_dict(self) -> dict:
        learn_end = self.start + self.config.learn_seconds
        devs = []
        for d in sorted(self.devices.values(), key=lambda d: (d.excluded, d.name)):
            mine = [a for a in self.alerts if a["mac"] == d.mac]
            after = self.start if d.mac in self.loaded else learn_end
            kinds: dict[str, int] = {}
            for a in mine:
                kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
            devs.append({
                "name": d.name, "mac": d.mac, "tags": list(d.tags), "excluded": d.excluded,
                "windows": d.windows, "packets": d.packets,
                "tx_packets": round(d.tx_packets), "rx_packets": round(d.rx_packets),
                "tx_bytes": round(d.tx_bytes), "rx_bytes": round(d.rx_bytes),
                "frames_sent": d.frames_sent, "frames_received": d.frames_received,
                "frames_before_located": d.frames_before_located,
                "learned_at": d.learned_at, "failed_connections": d.failed_connections, "alerts": len(mine),
                "from_baselines": d.mac in self.loaded,
                "alerts_after_learning": sum(1 for a in mine if a["time"] >= after),
                "alert_kinds": kinds, "flagged_windows": d.flagged})
        return {
            "file": self.file, self.unit: self.frames, "unit": self.unit, "start": self.start, "end": self.end,
            "duration_s": round(self.end - self.start, 3),
            "poll_interval_s": self.config.poll_interval, "learn_seconds": self.config.learn_seconds,
            "idle_timeout_s": self.config.idle_timeout, "windows": self.windows,
            "switch": {"packet_ins": self.packet_ins, "flows_installed": self.switch.installed,
                       "flows_expired": self.switch.expired, "flows_deleted": self.switch.deleted,
                       "dropped_by_packet_in_meter": self.switch.metered, "unparsed_frames": self.unparsed},
            "baselines": {"loaded_from": self.baselines, "devices": len(self.loaded), "saved_to": self.saved},
            "devices": devs, "alerts": self.alerts, "warnings": list(self.warnings)}


class _Tap:
    """The core's recorder hook (`Core.recorder`): sees every window's features."""

    def __init__(self, devices: dict[str, DeviceSummary]) -> None:
        self.devices = devices
        self.last = None

    def event(self, now, mac, proto, ip, port) -> None:
        pass

    def failed(self, now, mac, ip, port) -> None:
        d = self.devices.get(mac)
        if d is None:
            d = self.devices[mac] = DeviceSummary(mac)
        d.failed_connections += 1

    def window(self, now, wf, who) -> None:
        self.last = wf
        tx_p, rx_p, tx_b, rx_b = (INDEX[k] for k in ("tx_packets", "rx_packets", "tx_bytes", "rx_bytes"))
        for i, mac in enumerate(wf.macs):
            d = self.devices.get(mac)
            if d is None:
                d = self.devices[mac] = DeviceSummary(mac)
            x = wf.X[i]
            d.windows += 1
            d.tx_packets += x[tx_p] * wf.window
            d.rx_packets += x[rx_p] * wf.window
            d.tx_bytes += x[tx_b] * wf.window
            d.rx_bytes += x[rx_b] * wf.window

    def close(self) -> None:
        pass




# ------------------------------------------------------------------ the replay

class Replay:
    """A fresh Core and the switch it programs, fed on the capture's clock from `t0`.

    Call `packets` (or `frame`) in time order, then `finish`.  Times that step back
    are taken as the latest time seen: the clock never goes back."""

    def __init__(self, config: Config, t0: float) -> None:
        self.config = config
        self.t0 = self.last = t0
        self._now = [t0]
        self.core = Core(config, clock=lambda: self._now[0], wall=lambda: self._now[0], framework="replay")
        self.devices: dict[str, DeviceSummary] = {}
        self._tap = _Tap(self.devices)
        self.core.recorder = self._tap      # duck-typed: the recorder hook sees each window's features
        self.switch = Switch(config.packet_in_rate, config.packet_in_burst)
        self.core.switch_connected(DPID)
        self.ports: dict[str, int] = {}
        self.unparsed = 0
        self._k = 0
        self._seen_alerts: dict[str, tuple[int, float]] = {}
        self._alerts_total = 0
        self._empty_from: int | None = None   # the poll since which the table has been empty
        self.skipped_polls = 0
        self.longest_silence = 0.0
        self.stepped_back = 0                 # frames stamped earlier than the latest seen
        self.most_back = 0.0
        self.baselines: str | None = None
        self.loaded: frozenset = frozenset()
        self._poll(0)                       # the switch connected: first poll, an empty table

    def load_baselines(self, path: str) -> None:
        """Start from the baselines, known destinations and novelty memories saved at `path`
        (before the first frame).  CaptureError naming the file (and the field) if it cannot
        be read or is not a state file this version loads; nothing is loaded then.  A device
        the file holds still learning (its warm-up rows were taken on another clock) learns
        afresh on this capture."""
        data = read_baselines(path)
        store = self.core.store
        try:
            store.load_dict(data, now=self.t0)
        except BaselineFormatError as e:
            raise CaptureError(f"{path}: not a baselines file iotguard can load: {e}") from None
        for mac in [m for m, p in store.profiles.items() if p.baseline is None]:
            store.forget(mac)
        self.baselines = path
        self.loaded = frozenset(store.profiles)

    # -------------------------------------------------------------- the clock
    def advance(self, ts: float) -> float:
        """Run the polls due before `ts` and the idle timeouts up to it; returns the time used.
        A `ts` before the latest seen is taken as it; the polls of a silence longer than
        SILENCE_POLLED with an empty table are skipped (see the module docstring)."""
        if ts < self.last:
            if self.last - ts >= JITTER:
                self.stepped_back += 1
                self.most_back = max(self.most_back, self.last - ts)
            ts = self.last
        self.longest_silence = max(self.longest_silence, ts - self.last)
        self.last = ts
        interval = self.config.poll_interval
        due = int((ts - self.t0) // interval)
        while self._k < due:
            if self.switch.flows:
                self._empty_from = None
            elif self._empty_from is None:
                self._empty_from = self._k
            elif (self._k - self._empty_from) * interval >= SILENCE_POLLED and due - 1 > self._k:
                self.skipped_polls += due - 1 - self._k
                self._k = due - 1               # the poll just before `ts` still runs
            self._k += 1
            self._poll(self._k)
        self._expire_until(ts, inclusive=True)
        self._now[0] = ts
        return ts

    def _removed(self, flow: _Flow, at: float) -> None:
        self._now[0] = at
        self.core.flow_removed(DPID, flow.spec.cookie, flow.packets, flow.bytes, at - flow.installed)

    def _install(self, out, at: float) -> None:
        for _, msg in out:
            if isinstance(msg, FlowSpec):
                for flow in self.switch.apply(msg, at):
                    self._removed(flow, at)

    def _expire_until(self, t: float, inclusive: bool) -> None:
        while True:
            e = self.switch.next_expiry()
            if e > t or (e == t and not inclusive):
                return
            self._removed(self.switch.pop_expired(), e)

    def _poll(self, k: int) -> None:
        t = self.t0 + k * self.config.poll_interval
        self._expire_until(t, inclusive=True)
        self._now[0] = t
        self.core.poll_sent([DPID])
        before = self.core.counters["windows"]
        self.core.flow_stats(DPID, self.switch.stats_body(t))
        if self.core.counters["windows"] > before:
            self._window_closed(t, t - self.config.poll_interval)

    def _window_closed(self, t: float, start: float) -> None:
        core = self.core
        for mac, p in core.store.profiles.items():
            d = self.devices.get(mac)
            if d is not None and d.learned_at is None and not p.learning:
                d.learned_at = t
        if core.counters["alerts"] == self._alerts_total and not core.detector._open:
            return
        self._alerts_total = core.counters["alerts"]
        by_mac: dict[str, list[dict]] = {}
        for a in core.detector.alerts:
            mark = (a.count, a.last_time)
            if self._seen_alerts.get(a.id) == mark:
                continue
            fresh = a.id not in self._seen_alerts
            self._seen_alerts[a.id] = mark
            if a.mac is None:
                continue
            by_mac.setdefault(a.mac, []).append(
                {"id": a.id, "kind": a.kind.value, "new": fresh, "count": a.count,
                 "score": round(a.score, 3), "threshold": round(a.threshold, 3),
                 "explanation": a.explanation})
        wf = self._tap.last
        for mac, alerts in by_mac.items():
            d = self.devices.setdefault(mac, DeviceSummary(mac))
            row = wf.row(mac) if wf is not None else None
            d.flagged.append({"start": round(start, 6), "end": round(t, 6), "alerts": alerts,
                              "features": None if row is None else
                              {k: round(float(row[i]), 3) for k, i in INDEX.items()}})
            d.alert_ids += [a["id"] for a in alerts if a["new"]]

    # -------------------------------------------------------------- the wire
    def frame(self, ts: float, buf: bytes) -> None:
        """One frame on the wire at `ts` (counted at its wire length: a capture's snaplen
        may have cut it, see packets.wire_length)."""
        n = wire_length(buf)
        self.packets(ts, buf, 1, n, n)

    def packets(self, ts: float, buf: bytes, count: int, nbytes: int, frame_len: int = 0) -> None:
        """`count` frames like `buf`, `nbytes` in all, at `ts`: table-misses (through the
        meter) until a flow matches them, then the rest count on that flow.  Frames the
        meter drops are lost (all the rest once its tokens are gone: they do not come
        back within one instant).  `frame_len`: each one's length on the wire, when
        larger than `buf` (a capture's snaplen cut it)."""
        if count <= 0:
            return
        ts = self.advance(ts)
        pkt = parse_frame(buf)
        if pkt is None:
            self.unparsed += count
            return
        self._count(pkt, count)
        if not is_group_mac(pkt.eth_src) and pkt.eth_src not in self.ports:
            self.ports[pkt.eth_src] = len(self.ports) + 1
        in_port = self.ports.get(pkt.eth_src, 0xFFFF)
        lldp = pkt.eth_type == rules.ETH_TYPE_LLDP
        while count > 0:
            flow = None if lldp else self.switch.lookup(pkt)
            if flow is not None:
                flow.packets += count
                flow.bytes += max(nbytes, 0)
                flow.last_hit = ts
                return
            if not self.switch.meter(ts):
                self.switch.metered += count - 1     # meter() counted this one
                return
            self._install(self.core.packet_in(DPID, in_port, buf, frame_len), ts)
            count -= 1
            nbytes -= max(len(buf), frame_len)

    def _count(self, pkt, n: int) -> None:
        """The capture's own count per MAC: frames sent, unicast frames received."""
        devices = self.devices
        src = devices.get(pkt.eth_src)
        if src is None and not is_group_mac(pkt.eth_src):
            src = devices[pkt.eth_src] = DeviceSummary(pkt.eth_src)
        if src is not None:
            src.frames_sent += n
        if not is_group_mac(pkt.eth_dst):
            dst = devices.get(pkt.eth_dst)
            if dst is None:
                dst = devices[pkt.eth_dst] = DeviceSummary(pkt.eth_dst)
            dst.frames_received += n
            if pkt.eth_dst not in self.ports:
                dst.frames_before_located += n

    # -------------------------------------------------------------- the end
    def finish(self, path: str, records: int, warnings: list[str], unit: str = "frames",
               save: str | None = None) -> Result:
        """The last window's poll, then what the replay found; with `save`, the baselines
        written there in the state-file format (`iotguard run` and `load_baselines` read it)."""
        self._k += 1
        self._poll(self._k)                 # the last frames' window
        interval = self.config.poll_interval
        # ... and the polls that judge the connections the last frames opened (a SYN is
        # judged JUDGE_AFTER after it, at a window): a bot's last attempts count too.
        for _ in range(math.ceil(JUDGE_AFTER / interval) + 1):
            if not len(self.core.outcomes):
                break
            self._k += 1
            self._poll(self._k)
        if self.skipped_polls:
            warnings.append(f"{path}: skipped {self.skipped_polls:,} polls ({self.skipped_polls * interval:,.0f} s) "
                            f"of an empty switch in silences longer than {SILENCE_POLLED:g} s (the longest: "
                            f"{self.longest_silence:,.0f} s between two {unit}); an idle switch's windows "
                            f"say nothing new")
        if self.stepped_back:
            warnings.append(f"{path}: {self.stepped_back} {unit} were stamped earlier than one before them "
                            f"(by up to {self.most_back:,.3f} s) and were counted at the latest time seen; "
                            f"a capture merged from several files, or with a damaged timestamp, reads so")
        core = self.core
        for mac, d in self.devices.items():
            d.name, d.tags = core.who(mac)
            d.excluded = core.detector.excluded(d.tags)
        alerts = sorted((a.to_dict() for a in core.detector.alerts), key=lambda a: a["time"])
        if save is not None:
            try:
                core.store.save(save, now=self.last)
            except OSError as e:
                raise CaptureError(f"{save}: cannot write the baselines: {e.strerror or e}") from None
        return Result(path, records, self.t0, self.last, self.config, core.counters["windows"],
                      core.counters["packet_in"], self.switch, self.unparsed, self.devices, alerts, warnings,
                      unit, self.baselines, self.loaded, save)


def read_baselines(path: str) -> dict:
    """The JSON of a saved state file (profiles.read_state); CaptureError naming the file
    if it is unreadable."""
    try:
        data = read_state(path)
    except OSError as e:
        raise CaptureError(f"{path}: cannot read the baselines: {e.strerror or e}") from None
    except BaselineFormatError as e:
        raise CaptureError(f"{path}: not a baselines file ({e})") from None
    except (ValueError, RecursionError) as e:     # JSONDecodeError, bad UTF-8
        raise CaptureError(f"{path}: not a baselines file (not JSON: {e})") from None
    if not isinstance(data, dict):
        raise CaptureError(f"{path}: not a baselines file (a JSON {type(data).__name__}, not an object)")
    return data


def with_learning(config: Config, learn: float | None) -> Config:
    """The config with `--learn SECONDS` applied (the config's own bounds: 10 s to 30 days)."""
    if learn is None:
        return config
    if not 10 <= learn <= 30 * 86400:
        raise ValueError(f"--learn {learn:g}: give 10 to {30 * 86400} seconds")
    return dataclasses.replace(config, learn_seconds=float(learn))
