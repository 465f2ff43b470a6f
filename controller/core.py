"""The control loop's state machine, without a framework.

Each method takes an event as plain values and returns the messages to send as
data: `(dpid, FlowSpec | MeterSpec | PacketOut | Barrier)`.  The app turns
framework events into these calls and sends what comes back; unit tests call
them directly.  Not thread-safe: the app holds one lock around every call.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Union

import numpy as np

from controller.addresses import is_unicast_mac
from controller.openflow import rules
from controller.config import Config, Device
from controller.detection.alert import Alert
from controller.detection.attribution import Attribution
from controller.detection.detector import Detector
from controller.telemetry.features import FEATURES, FeatureExtractor, KnownDestinations
from controller.telemetry.outcomes import ConnectionOutcomes
from controller.detection.incidents import Incidents, band_of
from controller.network.forwarding import (FLOOD, Forwarder, FlowRegistry, PacketInfo, is_bare_syn, is_group_mac,
                                           is_reply)
from controller.network.inventory import Inventory
from controller.openflow.wire import flow_stats_heads
from controller.openflow.packets import LldpSigner, fix_l4_checksum, ip_int, parse_frame
from controller.detection.profiles import store_for
from controller.detection.recording import Recorder
from controller.response.service import Responder, is_response_message
from controller.openflow.rules import Barrier, FlowSpec, MeterSpec, PacketOut
from controller.telemetry.stats import (DeviceTraffic, FlowStatsTracker, MultipartAssembler, SwitchTraffic,
                              TrafficTable, PortDelta, PortStatsTracker, by_device, edge_array)
from controller.network.topology import Topology

LOG = logging.getLogger("iotguard.core")

Message = Union[FlowSpec, MeterSpec, PacketOut, Barrier]
Out = list[tuple[int, Message]]


@dataclass(kw_only=True)
class SwitchState:
    dpid: int
    ports: set[int] = field(default_factory=set)
    connected_at: float = 0.0
    polls: int = 0
    last_poll: float | None = None
    flow_entries: int = 0
    port_deltas: dict[int, PortDelta] = field(default_factory=dict)


LOW_DISK = 4 * 1024 * 1024      # bytes free in the state directory below which health says so


def state_free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still use under `path` (None: cannot tell)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class Core:
    def __init__(self, config: Config, clock=time.monotonic, wall=time.time,
                 framework: str = "") -> None:
        self.config = config
        self.framework = framework
        self.clock = clock
        self.wall = wall
        self.registry = FlowRegistry()
        self.forwarder = Forwarder(self.registry, config.idle_timeout)
        self.topology = Topology(link_timeout=max(3.5 * config.lldp_interval, 2.0))
        self.inventory = Inventory(config)
        self.flow_tracker = FlowStatsTracker()
        self.port_tracker = PortStatsTracker()
        self.assembler = MultipartAssembler()
        self.lldp = LldpSigner()
        self.switches: dict[int, SwitchState] = {}
        self.traffic = TrafficTable(self.registry)
        self.started = wall()
        self._edges: np.ndarray = np.zeros(0, dtype=np.int64)
        self._edges_key: tuple[int, int] = (-1, -1)
        self._retire: set[int] = set()     # flow ids that vanished somewhere
        self._retired_at = 0.0
        self.counters = {"packet_in": 0, "lldp_in": 0, "flow_entries": 0, "polls": 0,
                         "malformed": 0, "windows": 0, "alerts": 0,
                         "bad_messages": 0,       # OpenFlow messages refused (answered with OFPT_ERROR)
                         "handler_errors": 0,     # handlers that raised (a bug, or input nobody foresaw)
                         "state_write_errors": 0,   # the state disk refused a write
                         "connections_failed": 0}   # TCP connections judged failed (telemetry/outcomes.py)
        self.alert_kinds: dict[str, int] = {}
        self.known = KnownDestinations()
        self.extractor = FeatureExtractor(self.registry, config.internal_subnets, self.known)
        self.outcomes = ConnectionOutcomes()
        self.store = store_for(config, known=self.known)
        self.detector = Detector(config, self.store, self.who,
                                 Attribution(self.known, lambda mac: self.extractor.last_destinations(mac),
                                             config.internal_subnets))
        self.recorder: Recorder | None = None
        self._window_start = clock()
        self._round_seconds: list[float] = []   # each answer's interval on its switch's clock
        self._awaiting: set[int] = set()   # switches whose flow stats this round still lacks
        self.incidents = Incidents(None, FEATURES)   # the app sets its directory
        self.score_hook = None             # called with each window's features + scoring seconds
        self.responder: Responder | None = None
        self.outbox: Out = []              # response messages decided outside a switch event
        self.notify_jobs: list[dict] = []

    # Seconds without an event-loop tick before health says "degraded" (the app ticks every second).
    STALL_AFTER = 5.0
    BEHIND_AFTER = 2.0      # s an event may wait in the event thread's queue before health says so

    def count(self, name: str, n: int = 1) -> None:
        """Bump one of `counters` (the app counts what only it sees: refused messages, handler errors)."""
        self.counters[name] = self.counters.get(name, 0) + n

    def request_sent(self, dpid: int, xid: int) -> None:
        """A multipart request (flow or port stats) went to the switch under `xid`: only
        replies to such requests are assembled."""
        self.assembler.expect(dpid, xid)

    def enable_responses(self, playbooks=None) -> Responder:
        """Open the response store and audit log under the state directory and load the
        playbooks (`config.playbooks`, or the given list).  Raises PlaybookError."""
        self.responder = Responder(self.config, self.inventory, self.topology,
                                   switches=lambda: list(self.switches), wall=self.wall,
                                   playbooks=playbooks)
        return self.responder

    def _responses(self) -> Responder:
        if self.responder is None:
            raise RuntimeError("responses are not enabled")
        return self.responder

    def set_hooks(self, *, score: Callable[[float], None] | None = None,
                  confirm: Callable[[float], None] | None = None) -> None:
        """Metrics callbacks: each window's scoring seconds, each response's alert -> confirmed seconds."""
        self.score_hook = score
        if self.responder is not None:
            self.responder.confirm_hook = confirm

    def record_to(self, path: str) -> None:
        """Record the detector's input (`iotguard run --record`) for an offline replay."""
        self.recorder = Recorder(path, self.config.poll_interval)

    def keep_incidents(self, directory: str | None = None) -> None:
        """Write incident records under `directory` (default: <state_dir>/incidents)."""
        self.incidents.directory = directory or os.path.join(self.config.state_dir, "incidents")

    def shutdown(self) -> None:
        """Flush open incidents and save the baselines (OSError if either cannot be written);
        the recording is closed whatever happens."""
        try:
            self.incidents.flush(self.wall())
            self.save_state()
        finally:
            if self.recorder is not None:
                self.recorder.close()
                self.recorder = None

    def manual_response(self, body) -> dict:
        """POST /api/v1/responses: an operator's response (RequestError names a bad field).
        Its messages and notify jobs go to the outbox; the answer lists what was decided."""
        done = self._responses().manual(body, self.wall())
        self.outbox += done["messages"]
        self.notify_jobs += done["jobs"]
        return done

    def release_response(self, rid: int, reason: str) -> Out:
        """DELETE /api/v1/responses/{id}: the messages removing it (KeyError: no such response)."""
        return self._responses().release(rid, reason)

    def approve_response(self, rid: int, by: str) -> Out:
        """POST /api/v1/responses/{id}/approve: a pending response's rules (KeyError: none pending)."""
        return self._responses().approve(rid, by)

    def deny_response(self, rid: int, by: str, reason: str) -> None:
        """POST /api/v1/responses/{id}/deny: a pending response is dropped (KeyError: none pending)."""
        self._responses().deny(rid, by, reason)

    def reload_playbooks(self) -> dict:
        """SIGHUP or POST /api/v1/playbooks/reload; PlaybookError leaves the active set as it was."""
        return self._responses().reload()

    def outbox_pending(self) -> bool:
        """Did a switch event decide responses or notify jobs (a burst, a closed window)?"""
        return bool(self.outbox or self.notify_jobs)

    # ------------------------------------------------------------ confirmation of sent responses
    def needs_confirmation(self, out: Iterable[tuple[int, Message]]) -> bool:
        """Does `out` install a response's rule or meter (to be confirmed by a barrier)?"""
        return self.responder is not None and any(is_response_message(spec) for _, spec in out)

    def track_sent(self, sent: Iterable[tuple[int, int, Message]]) -> set[int]:
        """Messages about to be sent, with their xids; returns the switches that need a barrier."""
        return self.responder.track(sent) if self.responder is not None else set()

    def barrier_sent(self, dpid: int, xid: int) -> None:
        if self.responder is not None:
            self.responder.barrier_sent(dpid, xid)

    def barrier_reply(self, dpid: int, xid: int) -> None:
        if self.responder is not None:
            self.responder.barrier_reply(dpid, xid)

    def switch_error(self, dpid: int, xid: int, text: str) -> Out | None:
        """An OpenFlow error: the messages rolling back the response it failed, or None
        if it was not about a response's message."""
        return self.responder.error(dpid, xid, text) if self.responder is not None else None

    def take_outbox(self) -> tuple[Out, list[dict]]:
        """Response messages and notify jobs decided since the last call (the app sends them)."""
        out, jobs = self.outbox, self.notify_jobs
        self.outbox, self.notify_jobs = [], []
        return out, jobs

    def _open_incident(self, a: Alert, wall: float) -> None:
        device = self.inventory.device(a.mac)
        if device is None:                     # nobody knows it: named after its MAC
            name, tags = self.who(a.mac)
            device = Device(name, a.mac, (), tags)
        baseline, source = self.store.current(a.mac, device.tags[0] if device.tags else None)
        self.incidents.on_alert(a, device, band_of(baseline), source, wall)

    def inject_alert(self, body) -> dict:
        """POST /api/v1/alerts: an alert raised by hand goes the way a detected one goes."""
        if self.responder is None:
            raise RuntimeError("responses are not enabled")
        alert = self.responder.alert_from_request(body, self.wall())
        self.detector.alerts.append(alert)
        self.alert_kinds[alert.kind.value] = self.alert_kinds.get(alert.kind.value, 0) + 1
        if alert.mac is not None:
            self._open_incident(alert, self.wall())
        self.counters["alerts"] += 1
        out, jobs = self.responder.on_alerts([alert])
        self.outbox += out
        self.notify_jobs += jobs
        return alert.to_dict()

    def expire_responses(self) -> None:
        if self.responder is not None:
            self.outbox += self.responder.expire()

    # ------------------------------------------------------------ switches
    def switch_connected(self, dpid: int) -> Out:
        """Start from a known state: our old rules go, the pipeline comes back."""
        self.switches[dpid] = SwitchState(dpid=dpid, connected_at=self.clock())
        self.topology.add_switch(dpid)
        self.flow_tracker.forget(dpid)
        self.port_tracker.forget(dpid)
        self.forwarder.switch_leave(dpid)
        meters, flows = rules.pipeline(self.config.packet_in_rate, self.config.packet_in_burst)
        out: Out = [(dpid, rules.delete_all_ours())]
        out += [(dpid, MeterSpec(m.meter_id, 0, 0, command="delete")) for m in meters]
        out += [(dpid, m) for m in meters]
        out += [(dpid, f) for f in flows]
        out.append((dpid, Barrier()))
        if self.responder is not None:   # after the pipeline: active responses come back, with the time left
            try:
                out += self.responder.reconcile(dpid)
            except (OSError, sqlite3.Error) as e:   # the pipeline goes out whatever the disk says
                self.counters["state_write_errors"] += 1
                LOG.error("switch %016x: could not reconcile active responses: %s", dpid, e)
        return out

    def switch_ports(self, dpid: int, ports: Iterable[int]) -> Out:
        sw = self.switches.get(dpid)
        if sw is None:
            return []
        sw.ports = {p for p in ports if 0 < p < 0xFFFFFF00}
        return self._probe(dpid)

    def switch_disconnected(self, dpid: int) -> None:
        self.switches.pop(dpid, None)
        if self.responder is not None:
            self.responder.confirmations.forget(dpid)
        self._round_answered(dpid)
        self.topology.remove_switch(dpid)
        self.flow_tracker.forget(dpid)
        self.port_tracker.forget(dpid)
        self.assembler.forget(dpid)
        self.forwarder.switch_leave(dpid)

    def port_status(self, dpid: int, port: int, up: bool) -> Out:
        sw = self.switches.get(dpid)
        if sw is None or not 0 < port < 0xFFFFFF00:
            return []
        if up:
            sw.ports.add(port)
            return [(dpid, PacketOut(self.lldp.build(dpid, port), port))]
        sw.ports.discard(port)
        self.topology.port_down(dpid, port)
        return [(dpid, f) for f in self.forwarder.port_down(dpid, port)]

    # ------------------------------------------------------------ LLDP
    def _probe(self, dpid: int) -> Out:
        sw = self.switches.get(dpid)
        if sw is None:
            return []
        return [(dpid, PacketOut(self.lldp.build(dpid, p), p)) for p in sorted(sw.ports)]

    def lldp_tick(self) -> Out:
        """Probe every port; forget links that stopped answering."""
        for gone in self.topology.expire_links(self.clock()):
            LOG.info("link gone: %016x:%d -> %016x:%d", *gone)
        out: Out = []
        for dpid in list(self.switches):
            out += self._probe(dpid)
        return out

    # ------------------------------------------------------------ packet-in
    def packet_in(self, dpid: int, in_port: int, data: bytes, total_len: int = 0) -> Out:
        """A table-miss.  `total_len`: the frame's length on the wire when `data` was cut
        short (a replayed capture's snaplen); counts use the larger of the two."""
        if dpid not in self.switches:
            return []
        now = self.clock()
        pkt = parse_frame(data)
        if pkt is None:
            self.counters["malformed"] += 1
            return []
        if pkt.eth_type == rules.ETH_TYPE_LLDP:
            self.counters["lldp_in"] += 1
            origin = self.lldp.verify(data)
            if origin is not None and origin[0] in self.switches and origin != (dpid, in_port):
                if self.topology.add_link(origin[0], origin[1], dpid, in_port, now):
                    LOG.info("link: %016x:%d -> %016x:%d", origin[0], origin[1], dpid, in_port)
            return []
        self.counters["packet_in"] += 1
        # A group or zero source MAC is nobody's (spoofed or broken): forwarded, never a device,
        # never located, never an event for the detector.
        local = not self.topology.is_trunk(dpid, in_port)
        if local and not is_unicast_mac(pkt.eth_src):
            self.inventory.not_devices += 1
            local = False
        if local:
            self.inventory.observe(pkt.eth_src, self.wall(), pkt.arp_spa)
            if self.topology.observe(pkt.eth_src, dpid, in_port, now):
                loc = self.topology.location(pkt.eth_src)
                LOG.debug("device %s at %016x:%d", pkt.eth_src, loc.dpid, loc.port)
        decision = self.forwarder.packet_in(dpid, in_port, pkt, now)
        at_src = local and self.topology.edge_dpid(pkt.eth_src) == dpid
        for f in decision.flows:
            if f.command == "add" and rules.cookie_kind(f.cookie) == rules.Kind.FORWARD:
                self.extractor.new_flow(rules.cookie_id(f.cookie))
                if at_src and is_bare_syn(pkt) and pkt.tp_dst is not None and pkt.ipv4_dst is not None:
                    # a bare SYN whose conversation this flow now carries: did it get an answer?
                    self.outcomes.opened(rules.cookie_id(f.cookie), pkt.eth_src, ip_int(pkt.ipv4_dst),
                                         pkt.tp_dst, dpid, max(len(data), total_len), now)
        if at_src:
            self._event(pkt)
        out: Out = [(dpid, f) for f in decision.flows]
        if decision.out_port is None:
            return out
        self._count_frame(dpid, pkt, max(len(data), total_len), at_src)
        port: int | str = "flood" if decision.out_port == FLOOD else decision.out_port
        out.append((dpid, PacketOut(fix_l4_checksum(data), port, in_port)))
        return out

    def _count_frame(self, dpid: int, pkt: PacketInfo, size: int, at_src: bool) -> None:
        """The frame goes on as a packet-out, which no flow counter sees: count it in the
        window, by the edge rule (tx at its source's switch, rx at its destination's)."""
        at_dst = not is_group_mac(pkt.eth_dst) and self.topology.edge_dpid(pkt.eth_dst) == dpid
        if not (at_src or at_dst):
            return
        ip = ip_int(pkt.ipv4_dst) if pkt.ipv4_dst is not None else 0
        proto = pkt.ip_proto if pkt.ip_proto is not None else -1
        port = pkt.tp_dst if pkt.tp_dst is not None and not is_reply(pkt) else -1
        self.extractor.packet_in(pkt.eth_src if at_src else None, pkt.eth_dst if at_dst else None,
                                 size, ip, proto, port)

    def _event(self, pkt: PacketInfo) -> None:
        """Feed the event path: a device starting a conversation, seen at its own edge."""
        if pkt.tcp_flags is not None:
            if not is_bare_syn(pkt):           # only a bare SYN opens a connection
                return
            proto, ip, port = rules.IPPROTO_TCP, pkt.ipv4_dst, pkt.tp_dst
        elif pkt.ip_proto == rules.IPPROTO_UDP and pkt.tp_dst is not None and pkt.tp_dst < 49152:
            proto, ip, port = rules.IPPROTO_UDP, pkt.ipv4_dst, pkt.tp_dst   # not a reply to an ephemeral port
        elif pkt.arp_op == 1 and pkt.arp_tpa is not None:
            proto, ip, port = 0, pkt.arp_tpa, -1                          # ARP who-has: a sweep of absent hosts
        else:
            return
        wall = self.wall()
        addr = ip_int(ip)
        if self.recorder is not None:
            self.recorder.event(wall, pkt.eth_src, proto, addr, port)
        alerts = self.detector.on_new_flow(pkt.eth_src, proto, addr, port, wall, answer=is_reply(pkt))
        if alerts:
            self._raised(alerts)

    # ------------------------------------------------------------ detection
    def who(self, mac: str) -> tuple[str, tuple[str, ...]]:
        return self.inventory.who(mac)

    def poll_sent(self, dpids) -> list[Alert]:
        """A new polling round begins.  A round some switch never answered closes now."""
        alerts = self.close_window() if self._awaiting else []
        self._awaiting = set(dpids) & set(self.switches)
        return alerts

    def _round_answered(self, dpid: int) -> None:
        """The window closes as soon as every switch has answered: no extra poll of lag."""
        if dpid in self._awaiting:
            self._awaiting.discard(dpid)
            if not self._awaiting:
                self.close_window()

    def close_window(self) -> list[Alert]:
        """Turn the window's stats into features and score them."""
        self._awaiting = set()
        now = self.clock()
        window = now - self._window_start
        self._window_start = now
        if window <= 0:
            self._round_seconds.clear()
            return []
        if self._round_seconds:
            # The counters span the switches' intervals (telemetry.stats.switch_seconds),
            # not the time between the replies' handling.  Each device's rates divide by its
            # own switch's (FeatureExtractor.add); this is the window's nominal length.
            window = float(np.median(self._round_seconds))
            self._round_seconds.clear()
        t0 = time.perf_counter()
        wf = self.extractor.close(now, window)
        wall = self.wall()
        self.counters["windows"] += 1
        self._judge_connections(now, wall)
        self.incidents.add_window(wall, window, wf.macs, wf.X)
        if self.recorder is not None:
            self.recorder.window(wall, wf, self.who)
        alerts = self.detector.on_window(wf, wall)   # learns destinations, names remotes
        if self.score_hook is not None:
            self.score_hook(time.perf_counter() - t0)
        self._raised(alerts)
        self._hand_escalated()
        return alerts

    def _judge_connections(self, now: float, wall: float) -> None:
        """Connections whose SYN is old enough are judged on their flows' counters; the
        failed ones go to the detector's novelty memory (and to a recording)."""
        for o in self.outcomes.due(now):
            if not o.failed:
                continue
            self.counters["connections_failed"] += 1
            if self.recorder is not None:
                self.recorder.failed(wall, o.mac, o.ip, o.port)
            self.detector.on_failed(o.mac, o.ip, o.port, wall)

    def _hand_escalated(self) -> None:
        """Open alerts that grew worse (or show a rate the playbooks have not seen) go to
        the playbooks again."""
        if not self.detector.escalated:
            return
        worse, self.detector.escalated = self.detector.escalated, []
        for a in worse:
            how = "reopened" if a.reopened and a.reopened == a.last_time else "escalated"
            LOG.warning("ALERT %s %s %s (score %.1f): window now %s", a.kind, a.device, how, a.score,
                        {k: round(v, 1) for k, v in a.window.items() if k in ("tx_packets", "tx_bytes",
                                                                              "new_flows")})
        if self.responder is not None:
            out, jobs = self.responder.on_alerts(worse)
            self.outbox += out
            self.notify_jobs += jobs

    @property
    def state_path(self) -> str:
        return os.path.join(self.config.state_dir, "baselines.json")

    def load_state(self) -> str:
        return self.store.load(self.state_path)

    def save_state(self) -> None:
        self.store.save(self.state_path, now=self.wall())

    def _raised(self, alerts: list[Alert]) -> None:
        wall = self.wall()
        for a in alerts:
            self.counters["alerts"] += 1
            self.alert_kinds[a.kind.value] = self.alert_kinds.get(a.kind.value, 0) + 1
            LOG.warning("ALERT %s %s (score %.1f > %.1f): %s", a.kind, a.device, a.score, a.threshold,
                        a.explanation)
            if a.mac is not None:
                self._open_incident(a, wall)
        if self.responder is not None and alerts:
            out, jobs = self.responder.on_alerts(alerts)
            self.outbox += out
            self.notify_jobs += jobs

    # ------------------------------------------------------------ stats
    def flow_stats_part(self, dpid: int, xid: int, body: bytes, more: bool) -> SwitchTraffic | None:
        parts = self.assembler.add(dpid, xid, body, more)
        if parts is None:
            return None
        return self.flow_stats(dpid, b"".join(parts))

    def flow_stats(self, dpid: int, body: bytes) -> Mapping[str, DeviceTraffic]:
        """One switch's whole flow-stats reply: its deltas go to the features, the
        connection judge and the traffic table; returns the traffic of the devices there."""
        sw = self.switches.get(dpid)
        if sw is None:
            return {}
        now = self.clock()
        heads = flow_stats_heads(body)
        deltas = self.flow_tracker.update(dpid, heads, now)
        sw.polls += 1
        sw.last_poll = self.wall()
        sw.flow_entries = len(heads)
        self.counters["polls"] += 1
        self.counters["flow_entries"] += len(heads)
        if deltas.window <= 0:
            self._round_answered(dpid)
            return {}
        self._round_seconds.append(deltas.window)
        edges = self._edge_array()
        self.extractor.add(deltas, edges)
        self.outcomes.add(deltas)
        per_dev = by_device(deltas, self.registry, edges)
        self.traffic.update(per_dev, now, self.wall())     # its windows with traffic say it is alive
        if len(deltas.vanished):
            self._retire.update(int(c) & rules.COOKIE_ID_MASK for c in deltas.vanished
                                if rules.cookie_kind(int(c)) == rules.Kind.FORWARD)
        self._retire_ids(now)
        self._round_answered(dpid)
        return per_dev

    def _edge_array(self) -> np.ndarray:
        key = (self.topology.version, len(self.registry.macs))
        if key != self._edges_key:
            self._edges = edge_array(self.registry, self.topology.edge_dpid)
            self._edges_key = key
        return self._edges

    def _retire_ids(self, now: float) -> None:
        """Forget flow ids that no switch holds and nobody re-learned lately.

        Bounds the registry under scans (one id per probed port) without ever
        dropping an id whose flow is installed but not yet seen in a poll.
        """
        grace = max(5 * self.config.poll_interval, 5.0)
        if not self._retire or now - self._retired_at < grace:
            return
        self._retired_at = now
        live: set[int] = set()
        for dpid in self.switches:
            live.update((self.flow_tracker.active_cookies(dpid) & np.uint64(rules.COOKIE_ID_MASK)).tolist())
        self.registry.forget([f for f in self._retire if f not in live], unused_since=now - grace)
        self._retire.clear()

    def flow_removed(self, dpid: int, cookie: int, packets: int, nbytes: int, duration: float) -> None:
        if rules.is_response_cookie(cookie) and self.responder is not None:
            # the switch's hard_timeout backstop fired: the response ends now, audited, even if
            # this comes before the controller's own expiry check
            self.outbox += self.responder.removed_by_switch(rules.cookie_id(cookie), dpid)
            return
        if dpid in self.switches and rules.cookie_kind(cookie) == rules.Kind.FORWARD:
            delta = self.flow_tracker.removed(dpid, cookie, packets, nbytes, duration, self.clock())
            self._retire.add(rules.cookie_id(cookie))
            edges = self._edge_array()
            self.extractor.add(delta, edges, tail=True)
            self.outcomes.add(delta)
            self.traffic.fold(by_device(delta, self.registry, edges))   # the tails belong to the last windows

    def port_stats_part(self, dpid: int, xid: int, ports: list, more: bool) -> list[PortDelta] | None:
        parts = self.assembler.add(dpid, xid, ports, more)
        return None if parts is None else self.port_stats(dpid, [p for part in parts for p in part])

    def port_stats(self, dpid: int, ports: Iterable[tuple[int, int, int, int, int]]) -> list[PortDelta]:
        sw = self.switches.get(dpid)
        if sw is None:
            return []
        deltas = self.port_tracker.update(dpid, ports, self.clock())
        for d in deltas:
            sw.port_deltas[d.port] = d
        # The volume fast path: an edge port with one device on it counts what that device
        # sends (the port's receive counters) and receives (its transmit counters); a flood
        # shows there before the next flow poll (Detector.on_port_rates).
        sole = self.topology.sole_devices(dpid)
        rates = {sole[d.port]: (d.rx_packets / d.window, d.rx_bytes / d.window, d.tx_bytes / d.window, d.window)
                 for d in deltas if d.port in sole and not d.reset and d.window >= 0.05}
        if rates:
            self._raised(self.detector.on_port_rates(rates, self.wall()))
            self._hand_escalated()
        return deltas

    # ------------------------------------------------------------ views (each stage gives its part)
    def devices_view(self) -> list[dict]:
        rows = self.traffic.devices_view(self.inventory, self.topology, self.config.devices, self.clock(),
                                         stale=3 * self.config.poll_interval + 1)
        for row in rows:            # the detector's part: the last window's score against the threshold
            last = self.detector.last_score(row["mac"]) if row["mac"] else None
            row["score"], row["threshold"] = (round(last[0], 3), round(last[1], 3)) if last else (None, None)
        return rows

    def bounds_view(self) -> dict[str, int]:
        """How often each bound on hostile input was hit (docs/security.md)."""
        return {"multipart_unsolicited": self.assembler.unsolicited,
                "multipart_overflows": self.assembler.overflows,
                "inventory_full": self.inventory.dropped,
                "group_or_zero_src": self.inventory.not_devices,
                "topology_full": self.topology.full,
                "mac_table_full": self.forwarder.full,
                "connections_unjudged": self.outcomes.dropped}

    def health_view(self, loop_age: float | None = None, connections: int | None = None,
                    loop_lag: float | None = None, queued: int | None = None,
                    not_listening: list[str] | tuple[str, ...] = ()) -> dict:
        """GET /api/v1/health.  `loop_age`: seconds since the app's event thread last took an
        event (it is sent a tick every second); past STALL_AFTER the status is "degraded",
        since switch events (connects, packet-ins, barriers, errors) are no longer handled.
        `loop_lag`: how long an event waits in the thread's queue (`queued` events); past
        BEHIND_AFTER the loop is running but not keeping up, so every switch event (a
        barrier confirming a quarantine, a packet-in) is answered that much late.
        `not_listening`: listeners not bound yet; until they are the status is "starting"."""
        reasons = []
        if not_listening:
            reasons.append(f"starting: not yet listening for {', '.join(not_listening)}")
        free = state_free_bytes(self.config.state_dir)
        if free is not None and free < LOW_DISK:
            reasons.append(f"the state directory {self.config.state_dir} has {free} bytes free: responses "
                           "and the audit log cannot be written (forwarding goes on)")
        if self.counters["state_write_errors"]:
            reasons.append(f"{self.counters['state_write_errors']} state write(s) failed since start "
                           "(disk full or unwritable); see the log")
        if loop_age is not None and loop_age > self.STALL_AFTER:
            reasons.append(f"the OpenFlow event loop has not run for {loop_age:.0f}s: switch events "
                           "are not being handled")
        elif loop_lag is not None and loop_lag > self.BEHIND_AFTER:
            reasons.append(f"the OpenFlow event loop is falling behind: events wait {loop_lag:.1f}s in its "
                           f"queue ({queued if queued is not None else '?'} queued), so switch events are "
                           "handled that much late")
        return {
            "status": "starting" if not_listening else "degraded" if reasons else "ok",
            "listening": not not_listening,
            "reasons": reasons,
            "event_loop_age_s": None if loop_age is None else round(loop_age, 3),
            "event_loop_lag_s": None if loop_lag is None else round(loop_lag, 3),
            "event_queue": queued,
            "openflow_connections": connections,
            "framework": self.framework,
            "uptime_s": round(self.wall() - self.started, 1),
            "switches": [{"dpid": f"{s.dpid:016x}", "ports": len(s.ports), "polls": s.polls,
                          "last_poll": s.last_poll, "flow_entries": s.flow_entries}
                         for s in sorted(self.switches.values(), key=lambda s: s.dpid)],
            "links": self.topology.links_view(),
            "devices": len(self.inventory.devices),
            "poll_interval_s": self.config.poll_interval,
            "counters": dict(self.counters) | self.bounds_view(),
            "detection": self.detector.health(),
            "responses": self.responder.health() if self.responder is not None else None,
        }

    def metrics_snapshot(self) -> dict:
        """Plain numbers for the Prometheus exporter (controller.api.metrics), taken under the
        app's lock and read later from the exporter's thread."""
        snap: dict = {k: self.counters[k] for k in ("polls", "flow_entries", "packet_in", "windows",
                                                     "lldp_in", "malformed", "bad_messages",
                                                     "handler_errors", "state_write_errors",
                                                     "connections_failed")}
        snap.update(self.bounds_view())
        detection = self.detector.health()
        snap.update(alerts=dict(self.alert_kinds), switches=len(self.switches),
                    devices=len(self.inventory.devices),
                    baselined=detection["baselined"], learning=detection["learning"],
                    unconfirmed=self.detector.unconfirmed)
        if self.responder is not None:
            snap.update(self.responder.metrics())
        return snap

    def alerts_view(self, since: float | None = None) -> list[dict]:
        """GET /api/v1/alerts: newest first, each in its current version."""
        return self.detector.recent(since)

    def responses_view(self) -> list[dict]:
        return self.responder.responses_view() if self.responder is not None else []

    def pending_view(self) -> list[dict]:
        return self.responder.pending_view() if self.responder is not None else []

    def audit_view(self, since: float | None = None) -> list[dict]:
        return self.responder.audit_view(since) if self.responder is not None else []

    def playbooks_view(self) -> list[dict]:
        return self.responder.playbooks_view() if self.responder is not None else []
