"""The os-ken/Ryu app: wires OpenFlow events to `controller.core.Core`.

Nothing here decides anything.  Each handler turns an event into plain values,
calls the core under one lock (handlers run in real threads under os-ken's
native hub), and sends back the messages the core returned.

Run with `iotguard run`, or `ryu-manager controller.app` (configuration from
the IOTGUARD_CONFIG environment variable).
"""

from __future__ import annotations

import logging
import os
import time

from controller import compat
from controller.api import Api, load_or_create_token, make_handler, query_float, serve_connection
from controller.config import Config, load_config
from controller.core import Core
from controller.record import Recorder
from controller.compat import (CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, hub, ofp,
                               ofp_event, set_ev_cls)

LOG = logging.getLogger("iotguard.app")

_CONFIG: Config | None = None
_RECORD: str | None = None
INSTANCE: "IoTGuard | None" = None
SAVE_EVERY = 60.0   # seconds between baseline saves


def configure(config: Config, record: str | None = None) -> None:
    """Hand the launcher's validated config to the app before it is instantiated."""
    global _CONFIG, _RECORD
    _CONFIG, _RECORD = config, record


def _config() -> Config:
    if _CONFIG is not None:
        return _CONFIG
    path = os.environ.get("IOTGUARD_CONFIG")
    return load_config(path) if path else Config()


class IoTGuard(compat.BaseApp):
    OFP_VERSIONS = [ofp.OFP_VERSION]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        global INSTANCE
        INSTANCE = self
        self.config = _config()
        compat.install_raw_flow_stats()
        os.makedirs(self.config.state_dir, mode=0o700, exist_ok=True)
        self.core = Core(self.config, framework=compat.FRAMEWORK)
        self.lock = hub.Semaphore(1)
        self.datapaths: dict[int, object] = {}
        self._inflight: dict[int, float] = {}     # dpid -> time the flow poll was sent
        self.running = True
        token = load_or_create_token(self.config.api_token, self.config.state_dir)
        LOG.info(self.core.load_state())
        if _RECORD:
            self.core.recorder = Recorder(_RECORD, self.config.poll_interval)
            LOG.info("recording detector input to %s", _RECORD)
        self.api = Api(token, {
            ("GET", "/api/v1/health"): lambda q: self._locked(self.core.health_view),
            ("GET", "/api/v1/devices"): lambda q: {"devices": self._locked(self.core.devices_view)},
            ("GET", "/api/v1/alerts"): self._alerts,
        })
        self._server = None

    # ------------------------------------------------------------ plumbing
    def start(self):
        thread = super().start()
        self.threads.append(hub.spawn(self._poll_loop))
        self.threads.append(hub.spawn(self._lldp_loop))
        handler = make_handler(self.api)
        self._server = hub.StreamServer((self.config.api_host, self.config.api_port),
                                        lambda sock, addr: serve_connection(handler, sock, addr))
        self.threads.append(hub.spawn(self._server.serve_forever))
        LOG.info("iotguard on %s: OpenFlow %s:%d, API http://%s:%d/api/v1/, poll every %.1fs",
                 compat.FRAMEWORK, self.config.ofp_host, self.config.ofp_port,
                 self.config.api_host, self.config.api_port, self.config.poll_interval)
        return thread

    def _alerts(self, q: dict) -> dict:
        since = query_float(q["query"], "since")
        return {"alerts": self._locked(self.core.detector.recent, since)}

    def stop_serving(self) -> None:
        """Stop the loops, save the baselines, close the API socket (the launcher exits after)."""
        self.running = False
        try:
            self._locked(self.core.save_state)
        except OSError as e:
            LOG.error("could not save baselines: %s", e)
        if self.core.recorder is not None:
            self.core.recorder.close()
        if self._server is not None:
            try:
                self._server.server.close()
            except OSError:
                pass

    def _locked(self, fn, *args):
        with self.lock:
            return fn(*args)

    def _send(self, out) -> None:
        for dpid, msg in out:
            dp = self.datapaths.get(dpid)
            if dp is not None:
                dp.send_msg(compat.to_message(dp, msg))

    # ------------------------------------------------------------ loops
    def _poll_loop(self) -> None:
        interval = self.config.poll_interval
        saved = time.monotonic()
        while self.running:
            start = time.monotonic()
            if start - saved >= SAVE_EVERY:
                saved = start
                try:
                    self._locked(self.core.save_state)
                except OSError as e:
                    LOG.error("could not save baselines: %s", e)
            polled = []
            for dpid, dp in list(self.datapaths.items()):
                sent = self._inflight.get(dpid)
                if sent is not None and start - sent < 3 * interval:
                    continue   # the previous poll is still being answered: do not pile up
                polled.append(dpid)
            self._locked(self.core.poll_sent, polled)
            for dpid in polled:
                dp = self.datapaths.get(dpid)
                if dp is None:
                    continue
                self._inflight[dpid] = start
                dp.send_msg(compat.flow_stats_request(dp))
                dp.send_msg(compat.port_stats_request(dp))
            hub.sleep(max(0.05, interval - (time.monotonic() - start)))

    def _lldp_loop(self) -> None:
        while self.running:
            self._send(self._locked(self.core.lldp_tick))
            hub.sleep(self.config.lldp_interval)

    # ------------------------------------------------------------ switches
    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev) -> None:
        dp = ev.msg.datapath
        LOG.info("switch %016x connected", dp.id)
        self.datapaths[dp.id] = dp
        self._inflight.pop(dp.id, None)
        self._send(self._locked(self.core.switch_connected, dp.id))
        dp.send_msg(compat.port_desc_request(dp))

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _port_desc(self, ev) -> None:
        dp = ev.msg.datapath
        ports = [p.port_no for p in ev.msg.body if not p.state & ofp.OFPPS_LINK_DOWN]
        self._send(self._locked(self.core.switch_ports, dp.id, ports))

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev) -> None:
        dp = ev.datapath
        if ev.state == DEAD_DISPATCHER and dp.id is not None and self.datapaths.get(dp.id) is dp:
            LOG.info("switch %016x disconnected", dp.id)
            del self.datapaths[dp.id]
            self._inflight.pop(dp.id, None)
            self._locked(self.core.switch_disconnected, dp.id)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev) -> None:
        msg = ev.msg
        up = msg.reason != ofp.OFPPR_DELETE and not msg.desc.state & ofp.OFPPS_LINK_DOWN
        self._send(self._locked(self.core.port_status, msg.datapath.id, msg.desc.port_no, up))

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def _error(self, ev) -> None:
        msg = ev.msg
        if msg.type == ofp.OFPET_METER_MOD_FAILED and msg.code == ofp.OFPMMFC_UNKNOWN_METER:
            return   # deleting a meter that was not there, at connect: expected
        LOG.error("switch %016x rejected a message: type=%d code=%d data=%s",
                  msg.datapath.id, msg.type, msg.code, bytes(msg.data[:64]).hex())

    # ------------------------------------------------------------ traffic
    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev) -> None:
        msg = ev.msg
        self._send(self._locked(self.core.packet_in, msg.datapath.id, msg.match["in_port"],
                                bytes(msg.data)))

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def _flow_removed(self, ev) -> None:
        m = ev.msg
        self._locked(self.core.flow_removed, m.datapath.id, m.cookie, m.packet_count,
                     m.byte_count, m.duration_sec + m.duration_nsec * 1e-9)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev) -> None:
        msg = ev.msg
        dpid = msg.datapath.id
        body = b"".join(b.data for b in msg.body)
        more = bool(msg.flags & ofp.OFPMPF_REPLY_MORE)
        try:
            self._locked(self.core.flow_stats_part, dpid, msg.xid, body, more)
        except ValueError as e:
            LOG.error("switch %016x: bad flow stats reply: %s", dpid, e)
        if not more:
            self._inflight.pop(dpid, None)

    @set_ev_cls(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def _port_stats(self, ev) -> None:
        msg = ev.msg
        ports = [(p.port_no, p.rx_bytes, p.tx_bytes, p.rx_packets, p.tx_packets)
                 for p in msg.body if p.port_no < ofp.OFPP_MAX]
        self._locked(self.core.port_stats_part, msg.datapath.id, msg.xid, ports,
                     bool(msg.flags & ofp.OFPMPF_REPLY_MORE))
