"""The control loop's state machine, without a framework.

Each method takes an event as plain values and returns the messages to send as
data: `(dpid, FlowSpec | MeterSpec | PacketOut | Barrier)`.  The app turns
framework events into these calls and sends what comes back; unit tests call
them directly.  Not thread-safe: the app holds one lock around every call.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Union

import numpy as np

from controller.openflow import rules
from controller.config import Config, Device
from controller.detection.alert import Alert
from controller.detection.attribution import Attribution
from controller.detection.detector import Detector
from controller.telemetry.features import FEATURES, FeatureExtractor, KnownDestinations
from controller.detection.incidents import Incidents, band_of
from controller.network.forwarding import FLOOD, Forwarder, FlowRegistry, PacketInfo
from controller.network.inventory import Inventory
from controller.openflow.wire import flow_stats_heads
from controller.openflow.packets import LldpSigner, fix_l4_checksum, ip_int, parse_frame
from controller.detection.profiles import store_for
from controller.detection.recording import Recorder
from controller.response.service import Responder
from controller.openflow.rules import Barrier, FlowSpec, MeterSpec, PacketOut
from controller.telemetry.stats import (DeviceTraffic, FlowStatsTracker, MultipartAssembler,
                              PortDelta, PortStatsTracker, by_device, edge_array)
from controller.network.topology import Topology

LOG = logging.getLogger("iotguard.core")

Message = Union[FlowSpec, MeterSpec, PacketOut, Barrier]
Out = list[tuple[int, Message]]


@dataclass
class SwitchState:
    dpid: int
    ports: set[int] = field(default_factory=set)
    connected_at: float = 0.0
    polls: int = 0
    last_poll: float | None = None
    flow_entries: int = 0
    port_deltas: dict[int, PortDelta] = field(default_factory=dict)


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
        self.traffic: dict[str, DeviceTraffic] = {}
        self.traffic_time: dict[str, float] = {}
        self.started = wall()
        self._edges: np.ndarray = np.zeros(0, dtype=np.int64)
        self._edges_key: tuple[int, int] = (-1, -1)
        self._retire: set[int] = set()     # flow ids that vanished somewhere
        self._retired_at = 0.0
        self.counters = {"packet_in": 0, "lldp_in": 0, "flow_entries": 0, "polls": 0,
                         "malformed": 0, "windows": 0, "alerts": 0}
        self.alert_kinds: dict[str, int] = {}
        self.known = KnownDestinations()
        self.extractor = FeatureExtractor(self.registry, config.internal_subnets, self.known)
        self.store = store_for(config, known=self.known)
        self.detector = Detector(config, self.store, self.who,
                                 Attribution(self.known, lambda mac: self.extractor.last_destinations(mac),
                                             config.internal_subnets))
        self.recorder: Recorder | None = None
        self._window_start = clock()
        self._awaiting: set[int] = set()   # switches whose flow stats this round still lacks
        self.incidents = Incidents(None, FEATURES)   # the app sets its directory
        self.score_hook = None             # called with each window's features + scoring seconds
        self.responder: Responder | None = None
        self.outbox: Out = []              # response messages decided outside a switch event
        self.notify_jobs: list[dict] = []

    def enable_responses(self, playbooks=None) -> Responder:
        """Open the response store and audit log under the state directory and load the
        playbooks (`config.playbooks`, or the given list).  Raises PlaybookError."""
        self.responder = Responder(self.config, self.inventory, self.topology,
                                   switches=lambda: list(self.switches), wall=self.wall,
                                   playbooks=playbooks)
        return self.responder

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
        self.switches[dpid] = SwitchState(dpid, connected_at=self.clock())
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
            out += self.responder.reconcile(dpid)
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
    def packet_in(self, dpid: int, in_port: int, data: bytes) -> Out:
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
        local = not self.topology.is_trunk(dpid, in_port)
        if local:
            self.inventory.observe(pkt.eth_src, self.wall(), pkt.arp_spa)
            if self.topology.observe(pkt.eth_src, dpid, in_port, now):
                loc = self.topology.location(pkt.eth_src)
                LOG.debug("device %s at %016x:%d", pkt.eth_src, loc.dpid, loc.port)
        decision = self.forwarder.packet_in(dpid, in_port, pkt, now)
        for f in decision.flows:
            if f.command == "add" and rules.cookie_kind(f.cookie) == rules.Kind.FORWARD:
                self.extractor.new_flow(rules.cookie_id(f.cookie))
        if local and self.topology.edge_dpid(pkt.eth_src) == dpid:
            self._event(pkt)
        out: Out = [(dpid, f) for f in decision.flows]
        if decision.out_port is None:
            return out
        port: int | str = "flood" if decision.out_port == FLOOD else decision.out_port
        out.append((dpid, PacketOut(fix_l4_checksum(data), port, in_port)))
        return out

    def _event(self, pkt: PacketInfo) -> None:
        """Feed the event path: a device starting a conversation, seen at its own edge."""
        if pkt.tcp_flags is not None:
            if pkt.tcp_flags & 0x12 != 0x02:   # only a bare SYN opens a connection
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
        alerts = self.detector.on_new_flow(pkt.eth_src, proto, addr, port, wall)
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
            return []
        t0 = time.perf_counter()
        wf = self.extractor.close(now, window)
        wall = self.wall()
        self.counters["windows"] += 1
        self.incidents.add_window(wall, window, wf.macs, wf.X)
        if self.recorder is not None:
            self.recorder.window(wall, wf, self.who)
        alerts = self.detector.on_window(wf, wall)   # learns destinations, names remotes
        if self.score_hook is not None:
            self.score_hook(time.perf_counter() - t0)
        self._raised(alerts)
        if self.detector.escalated:
            worse, self.detector.escalated = self.detector.escalated, []
            for a in worse:
                LOG.warning("ALERT %s %s escalated (score %.1f): window now %s", a.kind, a.device, a.score,
                            {k: round(v, 1) for k, v in a.window.items() if k in ("tx_packets", "tx_bytes",
                                                                                  "new_flows")})
            if self.responder is not None:
                out, jobs = self.responder.on_alerts(worse)
                self.outbox += out
                self.notify_jobs += jobs
        return alerts

    @property
    def state_path(self) -> str:
        return os.path.join(self.config.state_dir, "baselines.json")

    def load_state(self) -> str:
        return self.store.load(self.state_path)

    def save_state(self) -> None:
        self.store.save(self.state_path)

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
    def flow_stats_part(self, dpid: int, xid: int, body: bytes, more: bool) -> dict[str, DeviceTraffic] | None:
        parts = self.assembler.add(dpid, xid, body, more)
        if parts is None:
            return None
        return self.flow_stats(dpid, b"".join(parts))

    def flow_stats(self, dpid: int, body: bytes) -> dict[str, DeviceTraffic]:
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
        edges = self._edge_array()
        self.extractor.add(deltas, edges)
        per_dev = by_device(deltas, self.registry, edges)
        wall = self.wall()
        for mac, t in per_dev.items():
            self.traffic[mac] = t
            self.traffic_time[mac] = now
            if t.tx_packets:   # flows carry its traffic now, so packet-ins no longer say it is alive
                rec = self.inventory.get(mac)
                if rec is not None:
                    rec.last_seen = wall
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
        if dpid in self.switches and rules.cookie_kind(cookie) == rules.Kind.FORWARD:
            delta = self.flow_tracker.removed(dpid, cookie, packets, nbytes, duration, self.clock())
            self._retire.add(rules.cookie_id(cookie))
            edges = self._edge_array()
            self.extractor.add(delta, edges)
            for mac, t in by_device(delta, self.registry, edges).items():
                cur = self.traffic.get(mac)
                if cur is not None:   # fold the tail into the device's last window
                    cur.tx_bytes += t.tx_bytes
                    cur.tx_packets += t.tx_packets
                    cur.rx_bytes += t.rx_bytes
                    cur.rx_packets += t.rx_packets

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
        return deltas

    # ------------------------------------------------------------ views
    def devices_view(self) -> list[dict]:
        now = self.clock()
        stale = 3 * self.config.poll_interval + 1
        rows = []
        seen_macs = set()
        for mac, rec in sorted(self.inventory.devices.items(), key=lambda kv: kv[1].name):
            seen_macs.add(mac)
            loc = self.topology.location(mac)
            t = self.traffic.get(mac)
            rates = t.rates() if t is not None and now - self.traffic_time.get(mac, 0) <= stale \
                else DeviceTraffic(mac, 1.0).rates()
            rows.append({
                "name": rec.name, "mac": mac, "ips": list(rec.ips), "tags": list(rec.tags),
                "configured": rec.configured, "seen": True,
                "dpid": f"{loc.dpid:016x}" if loc else None, "port": loc.port if loc else None,
                "first_seen": rec.first_seen, "last_seen": rec.last_seen,
                **{k: round(v, 3) for k, v in rates.items()},
            })
        seen_names = {r["name"] for r in rows}
        for dev in self.config.devices:
            if dev.mac not in seen_macs and dev.name not in seen_names:
                rows.append({"name": dev.name, "mac": dev.mac, "ips": list(dev.ips),
                             "tags": list(dev.tags), "configured": True, "seen": False,
                             "dpid": None, "port": None, "first_seen": None, "last_seen": None,
                             **DeviceTraffic("", 1.0).rates()})
        return rows

    def health_view(self) -> dict:
        return {
            "status": "ok",
            "framework": self.framework,
            "uptime_s": round(self.wall() - self.started, 1),
            "switches": [{"dpid": f"{s.dpid:016x}", "ports": len(s.ports), "polls": s.polls,
                          "last_poll": s.last_poll, "flow_entries": s.flow_entries}
                         for s in sorted(self.switches.values(), key=lambda s: s.dpid)],
            "links": [{"src": f"{a:016x}", "src_port": ap, "dst": f"{b:016x}", "dst_port": bp}
                      for a, ap, b, bp in self.topology.links()],
            "devices": len(self.inventory.devices),
            "poll_interval_s": self.config.poll_interval,
            "counters": dict(self.counters),
            "detection": {"learning": sum(1 for p in self.store.profiles.values() if p.learning),
                          "baselined": sum(1 for p in self.store.profiles.values() if not p.learning),
                          "priors": sorted(c or "global" for c in self.store.priors),
                          "learn_seconds": self.config.learn_seconds},
            "responses": self._responses_health(),
        }

    def metrics_snapshot(self) -> dict:
        """Plain numbers for the Prometheus exporter (controller.api.metrics), taken under the
        app's lock and read later from the exporter's thread."""
        snap: dict = {k: self.counters[k] for k in ("polls", "flow_entries", "packet_in", "windows",
                                                     "lldp_in", "malformed")}
        profiles = list(self.store.profiles.values())
        snap.update(alerts=dict(self.alert_kinds), switches=len(self.switches),
                    devices=len(self.inventory.devices),
                    baselined=sum(1 for p in profiles if not p.learning),
                    learning=sum(1 for p in profiles if p.learning))
        r = self.responder
        if r is not None:
            active: dict[str, int] = {}
            for x in r.engine.store.active(self.wall()):
                if x.mode == "enforce":
                    active[x.action] = active.get(x.action, 0) + 1
            snap.update(responses=dict(r.outcomes), active_responses=active)
        return snap

    def _responses_health(self) -> dict | None:
        r = self.responder
        if r is None:
            return None
        lat = np.asarray(r.latencies, dtype=np.float64) * 1000.0
        return {"playbooks": len(r.engine.playbooks), "active": len(r.engine.store.active(self.wall())),
                "dry_run": self.config.dry_run, "installed": r.counters["installed"],
                "failed": r.counters["failed"],
                "confirm_ms": ({"n": int(lat.size), "median": round(float(np.median(lat)), 3),
                                "p99": round(float(np.percentile(lat, 99)), 3)} if lat.size else None)}
