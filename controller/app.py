"""The os-ken/Ryu app: wires OpenFlow events to `controller.core.Core`.

Nothing here decides anything.  Each handler turns an event into plain values,
calls the core under one lock (handlers run in real threads under os-ken's
native hub), and sends back the messages the core returned.

Run with `iotguard run`, or `ryu-manager controller.app` (configuration from
the IOTGUARD_CONFIG environment variable).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sqlite3
import sys
import threading
import time

from controller.openflow import compat

from controller.response import notify
from controller.api.metrics import Metrics
from controller.api.rest import Api, ApiError, body_fields, load_or_create_token, make_handler, query_float, serve_connection
from controller.config import Config, load_config
from controller.core import Core
from controller.telemetry.stats import MultipartOverflow
from controller.response.playbook import PlaybookError
from controller.response.service import RequestError
from controller.openflow.rules import Barrier
from controller.openflow.compat import (CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, Malformed, hub,
                                       ofp, ofp_event, on_event)

LOG = logging.getLogger("iotguard.app")

_CONFIG: Config | None = None
_RECORD: str | None = None
INSTANCE: "IoTGuard | None" = None
SAVE_EVERY = 60.0   # seconds between baseline saves
TICK_EVERY = 1.0    # seconds between the event loop's liveness ticks


class LogBudget:
    """At most `burst` log lines per key every `period` seconds, then one line saying how many
    were left out: a switch sending bad messages at line rate must not fill the disk."""

    def __init__(self, burst: int = 5, period: float = 60.0, clock=time.monotonic,
                 max_keys: int = 1024) -> None:
        self.burst, self.period, self.clock, self.max_keys = burst, period, clock, max_keys
        self._seen: dict[object, list] = {}   # key -> [window start, lines logged, lines left out]

    def allow(self, key) -> tuple[bool, int]:
        """(log this one?, how many were left out since the last logged line of `key`)."""
        now = self.clock()
        slot = self._seen.get(key)
        if slot is None or now - slot[0] >= self.period:
            if slot is None and len(self._seen) >= self.max_keys:
                self._seen.clear()
            skipped = slot[2] if slot is not None else 0
            self._seen[key] = [now, 1, 0]
            return True, skipped
        if slot[1] < self.burst:
            slot[1] += 1
            return True, 0
        slot[2] += 1
        return False, 0


def configure(config: Config, record: str | None = None) -> None:
    """Hand the launcher's validated config to the app before it is instantiated."""
    global _CONFIG, _RECORD
    _CONFIG, _RECORD = config, record


def _config() -> Config:
    if _CONFIG is not None:
        return _CONFIG
    path = os.environ.get("IOTGUARD_CONFIG")
    return load_config(path) if path else Config()


class IoTGuard(compat.GuardedApp):
    OFP_VERSIONS = [ofp.OFP_VERSION]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        global INSTANCE
        INSTANCE = self
        self.config = _config()
        compat.install_raw_flow_stats()
        compat.install_datapath_guards(on_bad_message=self.bad_message)
        os.makedirs(self.config.state_dir, mode=0o700, exist_ok=True)
        self.core = Core(self.config, framework=compat.FRAMEWORK)
        self.lock = hub.Semaphore(1)
        self.datapaths: dict[int, object] = {}
        self._inflight: dict[int, float] = {}     # dpid -> time the flow poll was sent
        self._fast_inflight: dict[int, tuple[int, float]] = {}   # dpid -> (xid, time) of a fast port read
        self.running = True
        self.log_budget = LogBudget()
        token = load_or_create_token(self.config.api_token, self.config.state_dir)
        LOG.info(self.core.load_state())
        if _RECORD:
            self.core.record_to(_RECORD)
            LOG.info("recording detector input to %s", _RECORD)
        self.core.keep_incidents()
        self.core.enable_responses()        # PlaybookError: the launcher validated them first
        self.notify_q = hub.Queue(notify.QUEUE_SIZE)
        self.notify_dropped = 0
        self._snapshot: dict = {}
        self.metrics = Metrics(lambda: self._snapshot)
        self.core.set_hooks(score=self.metrics.observe_scoring, confirm=self.metrics.observe_confirm)
        self.api = Api(token, {
            ("GET", "/api/v1/health"): self._health,
            ("GET", "/api/v1/devices"): lambda q: {"devices": self._locked(self.core.devices_view)},
            ("GET", "/api/v1/alerts"): self._alerts,
            ("POST", "/api/v1/alerts"): self._inject_alert,
            ("GET", "/api/v1/responses"): lambda q: {"responses": self._locked(self.core.responses_view)},
            ("POST", "/api/v1/responses"): self._manual,
            ("DELETE", "/api/v1/responses/{id}"): self._release,
            ("GET", "/api/v1/responses/pending"): lambda q: {"pending": self._locked(self.core.pending_view)},
            ("POST", "/api/v1/responses/{id}/approve"): self._approve,
            ("POST", "/api/v1/responses/{id}/deny"): self._deny,
            # a file read, bounded (1000 records, read backwards): off the core lock
            ("GET", "/api/v1/audit"): lambda q: {"events": self.core.audit_view(query_float(q["query"], "since"))},
            ("GET", "/api/v1/playbooks"): lambda q: {"playbooks": self._locked(self.core.playbooks_view)},
            ("POST", "/api/v1/playbooks/reload"): lambda q: self.reload_playbooks(),
        })
        self._server = None
        # Each listener the process needs, and whether it is bound yet: "ready" is logged and
        # health says "ok" only once all are (the OpenFlow one binds in a framework thread).
        self.listeners: dict[str, str | None] = {"openflow": None, "api": None}
        if self.config.metrics_port:
            self.listeners["metrics"] = None
        compat.watch_openflow_listener(lambda addr: self._bound("openflow", addr),
                                       lambda addr, e: self._cannot_listen("OpenFlow switches", addr, e))
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda signum, frame: hub.spawn(self._reload_on_signal))

    # ------------------------------------------------------------ plumbing
    def start(self):
        thread = super().start()
        self.threads.append(hub.spawn(self._poll_loop))
        self.threads.append(hub.spawn(self._lldp_loop))
        self.threads.append(hub.spawn(self._notify_loop))
        self.threads.append(hub.spawn(self._tick_loop))
        if self.config.fast_poll:
            self.threads.append(hub.spawn(self._fast_loop))
        handler = make_handler(self.api)
        api_addr = (self.config.api_host, self.config.api_port)
        try:
            self._server = hub.StreamServer(api_addr, lambda sock, addr: serve_connection(handler, sock, addr))
        except OSError as e:
            self._cannot_listen("the REST API", api_addr, e)
        self.threads.append(hub.spawn(self._server.serve_forever))
        self._bound("api", self._server.server.getsockname()[:2])
        if self.config.metrics_port:
            try:
                self.metrics.start(self.config.metrics_host, self.config.metrics_port)
            except OSError as e:
                self._cannot_listen("Prometheus metrics", (self.config.metrics_host, self.config.metrics_port),
                                    e.__cause__ if isinstance(e.__cause__, OSError) else e)
            self._bound("metrics", (self.config.metrics_host, self.config.metrics_port))
        return thread

    def _bound(self, what: str, addr) -> None:
        """One listener is up; the last one makes the process ready (logged once)."""
        self.listeners[what] = f"{addr[0]}:{addr[1]}"
        if what == "metrics":
            LOG.info("Prometheus metrics on http://%s/metrics", self.listeners[what])
        if all(self.listeners.values()) and not getattr(self, "_ready", False):
            self._ready = True
            LOG.info("iotguard ready on %s: OpenFlow %s, API http://%s/api/v1/, poll every %.1fs",
                     compat.FRAMEWORK, self.listeners["openflow"], self.listeners["api"],
                     self.config.poll_interval)

    def not_listening(self) -> list[str]:
        """The listeners not bound yet (health: "starting" until this is empty)."""
        return [what for what, addr in self.listeners.items() if addr is None]

    def _cannot_listen(self, what: str, addr, e: OSError) -> None:
        """A listener could not be bound after the launcher's check (the port was taken in
        between): a half-started controller must not run, so exit non-zero naming the port."""
        text = f"cannot listen for {what} on {addr[0]}:{addr[1]}: {e.strerror or e}; exiting"
        LOG.critical(text)
        print(f"iotguard: {text}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(1)

    # ------------------------------------------------------------ hostile input
    def handler_failed(self, ev, exc: BaseException) -> None:
        """Whatever an OpenFlow handler raised (`compat.guarded`): log it with the switch and
        the message type, count it, and answer a malformed message with OFPT_ERROR."""
        dpid, kind = compat.describe(ev)
        where = "?" if dpid is None else f"{dpid:016x}"
        if isinstance(exc, Malformed):
            self._locked(self.core.count, "bad_messages")
            msg = getattr(ev, "msg", None)
            if msg is not None and getattr(msg, "datapath", None) is not None:
                compat.send_error(msg.datapath, exc.err_type, exc.code, bytes(getattr(msg, "buf", b"") or b""))
            ok, skipped = self.log_budget.allow(("bad", dpid, kind))
            if ok:
                LOG.warning("switch %s: refused %s: %s (answered %s)%s", where, kind, exc,
                            compat.error_text(exc.err_type, exc.code),
                            f"; {skipped} more left out of the log" if skipped else "")
            return
        self._locked(self.core.count, "handler_errors")
        ok, skipped = self.log_budget.allow(("error", dpid, kind, type(exc).__name__))
        if ok:
            LOG.error("switch %s: handler failed on %s: %s: %s%s; event processing goes on", where, kind,
                      type(exc).__name__, exc, f" ({skipped} more left out of the log)" if skipped else "",
                      exc_info=(type(exc), exc, exc.__traceback__))

    def bad_message(self, dp, kind: str, why: str) -> None:
        """The framework could not parse a switch's message (`compat.install_datapath_guards`)."""
        self._locked(self.core.count, "bad_messages")
        dpid = getattr(dp, "id", None)
        ok, skipped = self.log_budget.allow(("parse", dpid, kind))
        if ok:
            LOG.warning("switch %s: unparsable %s: %s%s", "?" if dpid is None else f"{dpid:016x}", kind, why,
                        f" ({skipped} more left out of the log)" if skipped else "")

    def _health(self, q: dict) -> dict:
        health = self._locked(self.core.health_view, self.loop_age(), compat.live_connections(),
                              self.loop_lag(), self.queue_depth(), self.not_listening())
        health.get("counters", {})["packet_ins_shed"] = self.packet_ins_shed
        return health

    def _tick_loop(self) -> None:
        """Liveness ticks for the event thread (health says "degraded" when they go unanswered)."""
        while self.running:
            self.post_tick()
            hub.sleep(TICK_EVERY)

    def _alerts(self, q: dict) -> dict:
        since = query_float(q["query"], "since")
        return {"alerts": self._locked(self.core.alerts_view, since)}

    # ------------------------------------------------------------ responses
    def _inject_alert(self, q: dict):
        try:
            alert = self._locked(self.core.inject_alert, q.get("body"))
        except RequestError as e:
            raise ApiError(400, "bad_request", str(e)) from None
        self._flush()
        return 201, {"alert": alert}

    def _manual(self, q: dict):
        body = q.get("body")
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object: "
                                               '{"device": ..., "action": ..., "ttl": ..., "params": {...}}')
        unknown = sorted(set(body) - {"device", "action", "ttl", "params", "reason", "dry_run", "force"})
        if unknown:
            raise ApiError(400, "bad_request", f"unknown field {unknown[0]!r}; allowed: action, device, "
                                               "dry_run, force, params, reason, ttl")

        try:
            done = self._locked(self.core.manual_response, body)
        except RequestError as e:
            raise ApiError(400, "bad_request", str(e)) from None
        except (OSError, sqlite3.OperationalError) as e:
            raise _storage_error(e) from None
        self._flush()
        acts = done["actions"]     # what the engine decided, action by action (no re-read of the audit log)
        ids = {a["response_id"] for a in acts if a["response_id"] is not None}
        mine = [r for r in self._locked(self.core.responses_view) if r["id"] in ids]
        failed = [a for a in acts if a["outcome"] == "failed"]
        if failed and not mine:
            raise ApiError(422, "response_failed", failed[0].get("error") or "the response failed")
        refused = [a for a in acts if a["outcome"] == "refused"]
        if refused and not mine:    # a protected device or address: nothing was done
            raise ApiError(403, "refused", f"{refused[0]['error']}; send \"force\": true to override",
                           actions=acts)
        return 201, {"responses": mine, "actions": acts}

    def _approve(self, q: dict):
        rid, by, _ = _decision_request(q)
        try:
            out = self._locked(self.core.approve_response, rid, by)
        except KeyError as e:
            raise ApiError(404, "not_found", str(e.args[0])) from None
        self._send(out)
        return {"approved": rid, "by": by, "rules_sent": len(out)}

    def _deny(self, q: dict):
        rid, by, reason = _decision_request(q)
        try:
            self._locked(self.core.deny_response, rid, by, reason)
        except KeyError as e:
            raise ApiError(404, "not_found", str(e.args[0])) from None
        return {"denied": rid, "by": by}

    def _release(self, q: dict):
        raw = q["params"]["id"]
        if not raw.isdigit():
            raise ApiError(400, "bad_request", f"response id must be a number, got {raw[:40]!r}")
        reason = ""
        if isinstance(q.get("body"), dict) and isinstance(q["body"].get("reason"), str):
            reason = q["body"]["reason"]
        try:
            out = self._locked(self.core.release_response, int(raw), reason or "released through the API")
        except KeyError as e:
            raise ApiError(404, "not_found", str(e.args[0])) from None
        self._send(out)
        return {"released": int(raw), "rules_removed": len(out)}

    def _reload_on_signal(self) -> None:
        """SIGHUP: reload, and say what happened either way (a spawned task dies silently)."""
        try:
            done = self.reload_playbooks()
        except Exception:  # noqa: BLE001
            LOG.exception("SIGHUP: playbook reload failed")
            return
        if isinstance(done, dict):
            LOG.info("SIGHUP: playbooks reloaded: %s", ", ".join(done.get("loaded") or []) or "(none)")

    def reload_playbooks(self):
        """SIGHUP or POST /api/v1/playbooks/reload; an invalid set changes nothing."""
        try:
            done = self._locked(self.core.reload_playbooks)
        except PlaybookError as e:
            LOG.error("playbook reload refused, the previous set stays active:\n%s", e)
            return 422, {"error": "invalid_playbooks",
                         "message": f"{len(e.problems)} problem(s); the previous playbooks stay active",
                         "problems": [str(p) for p in e.problems]}
        return done

    def _notify_loop(self) -> None:
        while self.running:
            job = self.notify_q.get()
            try:
                notify.deliver(job, sleep=hub.sleep)
            except Exception:  # noqa: BLE001 - one bad job must not end deliveries
                LOG.exception("notify failed")

    def _queue_jobs(self, jobs: list[dict]) -> None:
        for job in jobs:
            try:
                self.notify_q.put_nowait(job)
            except Exception:  # noqa: BLE001 - hub queues raise their framework's Full
                self.notify_dropped += 1
                LOG.error("notify queue full: dropped a job for %s", job.get("destination"))

    def _flush(self) -> None:
        """Send what the core decided outside a switch event (responses, expiries)."""
        out, jobs = self._locked(self.core.take_outbox)
        self._send(out)
        self._queue_jobs(jobs)

    def stop_serving(self) -> None:
        """Stop the loops, save the baselines, close the API socket (the launcher exits after)."""
        self.running = False
        try:
            self._locked(self.core.shutdown)
        except OSError as e:
            LOG.error("could not save baselines: %s", e)
        if self._server is not None:
            try:
                self._server.server.close()
            except OSError:
                pass

    def _locked(self, fn, *args):
        with self.lock:
            return fn(*args)

    def _send(self, out) -> None:
        """Send messages; a response's rules get xids the core tracks and a barrier per switch."""
        if not self.core.needs_confirmation(out):
            for dpid, spec in out:
                dp = self.datapaths.get(dpid)
                if dp is not None:
                    dp.send_msg(compat.to_message(dp, spec))
            return
        batch = []
        for dpid, spec in out:
            dp = self.datapaths.get(dpid)
            if dp is not None:
                msg = compat.to_message(dp, spec)
                dp.set_xid(msg)
                batch.append((dpid, dp, spec, msg))
        barriers = []
        with self.lock:   # track before sending: a fast reply must find its batch
            for dpid in self.core.track_sent((d, m.xid, s) for d, _, s, m in batch):
                dp = self.datapaths[dpid]
                msg = compat.to_message(dp, Barrier())
                dp.set_xid(msg)
                self.core.barrier_sent(dpid, msg.xid)
                barriers.append((dp, msg))
        for _, dp, _, msg in batch:
            dp.send_msg(msg)
        for dp, msg in barriers:
            dp.send_msg(msg)

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
            self._locked(self.core.expire_responses)
            self._flush()
            snap = self._locked(self.core.metrics_snapshot)
            snap["notify_dropped"] = self.notify_dropped
            snap["packet_ins_shed"] = self.packet_ins_shed
            snap["event_loop_age"] = self.loop_age()
            snap["event_loop_lag"] = self.loop_lag()
            snap["event_queue"] = self.queue_depth()
            self._snapshot = snap      # one reference swap: the exporter's thread reads it
            for dpid in polled:
                dp = self.datapaths.get(dpid)
                if dp is None:
                    continue
                self._inflight[dpid] = start
                requests = [compat.flow_stats_request(dp), compat.port_stats_request(dp)]
                for req in requests:
                    dp.set_xid(req)
                    self._locked(self.core.request_sent, dpid, req.xid)   # before: a fast reply must find it
                for req in requests:
                    dp.send_msg(req)
            hub.sleep(max(0.05, interval - (time.monotonic() - start)))

    def _fast_loop(self) -> None:
        """The volume fast path's port-counter reads, several per flow poll (one port entry
        per port: cheap for the switch).  One outstanding request per switch at most."""
        interval = self.config.fast_poll
        while self.running:
            start = time.monotonic()
            for dpid, dp in list(self.datapaths.items()):
                sent = self._fast_inflight.get(dpid)
                if sent is not None and start - sent[1] < 4 * interval:
                    continue   # still unanswered: do not pile up (the assembler keeps 8 xids)
                req = compat.port_stats_request(dp)
                dp.set_xid(req)
                self._locked(self.core.request_sent, dpid, req.xid)
                self._fast_inflight[dpid] = (req.xid, start)
                dp.send_msg(req)
            hub.sleep(max(0.01, interval - (time.monotonic() - start)))

    def _lldp_loop(self) -> None:
        while self.running:
            self._send(self._locked(self.core.lldp_tick))
            hub.sleep(self.config.lldp_interval)

    # ------------------------------------------------------------ switches
    @on_event(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev) -> None:
        dp = ev.msg.datapath
        LOG.info("switch %016x connected", dp.id)
        self.datapaths[dp.id] = dp
        self._inflight.pop(dp.id, None)
        self._send(self._locked(self.core.switch_connected, dp.id))
        dp.send_msg(compat.port_desc_request(dp))

    @on_event(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _port_desc(self, ev) -> None:
        dp = ev.msg.datapath
        ports = [p.port_no for p in ev.msg.body if not p.state & ofp.OFPPS_LINK_DOWN]
        self._send(self._locked(self.core.switch_ports, dp.id, ports))

    @on_event(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev) -> None:
        dp = ev.datapath
        if ev.state == DEAD_DISPATCHER and dp.id is not None and self.datapaths.get(dp.id) is dp:
            LOG.info("switch %016x disconnected", dp.id)
            del self.datapaths[dp.id]
            self._inflight.pop(dp.id, None)
            self._locked(self.core.switch_disconnected, dp.id)

    @on_event(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev) -> None:
        msg = ev.msg
        up = msg.reason != ofp.OFPPR_DELETE and not msg.desc.state & ofp.OFPPS_LINK_DOWN
        self._send(self._locked(self.core.port_status, msg.datapath.id, msg.desc.port_no, up))

    @on_event(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def _error(self, ev) -> None:
        msg = ev.msg
        if msg.type == ofp.OFPET_METER_MOD_FAILED and msg.code == ofp.OFPMMFC_UNKNOWN_METER:
            return   # deleting a meter that was not there (at connect, before a re-add): expected
        text = compat.error_text(msg.type, msg.code)
        removal = self._locked(self.core.switch_error, msg.datapath.id, msg.xid, text)
        if removal is None:
            LOG.error("switch %016x rejected a message: %s data=%s",
                      msg.datapath.id, text, bytes(msg.data[:64]).hex())
            return
        self._send(removal)

    @on_event(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev) -> None:
        self._locked(self.core.barrier_reply, ev.msg.datapath.id, ev.msg.xid)

    # ------------------------------------------------------------ traffic
    @on_event(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev) -> None:
        msg = ev.msg
        in_port = compat.packet_in_port(msg)     # Malformed without exactly one valid in_port
        self._send(self._locked(self.core.packet_in, msg.datapath.id, in_port, bytes(msg.data)))
        if self.core.outbox_pending():   # a burst alert decided responses
            self._flush()

    @on_event(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def _flow_removed(self, ev) -> None:
        m = ev.msg
        self._locked(self.core.flow_removed, m.datapath.id, m.cookie, m.packet_count,
                     m.byte_count, m.duration_sec + m.duration_nsec * 1e-9)

    @on_event(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev) -> None:
        msg = ev.msg
        dpid = msg.datapath.id
        body = b"".join(b.data for b in msg.body)
        more = bool(msg.flags & ofp.OFPMPF_REPLY_MORE)
        try:
            self._locked(self.core.flow_stats_part, dpid, msg.xid, body, more)
        except ValueError as e:     # an overflowing reply, or entries that do not parse
            raise Malformed(f"flow stats reply: {e}", ofp.OFPET_BAD_REQUEST,
                            ofp.OFPBRC_MULTIPART_BUFFER_OVERFLOW if isinstance(e, MultipartOverflow)
                            else ofp.OFPBRC_BAD_LEN) from None
        finally:
            if self.core.outbox_pending():   # the window closed with alerts
                self._flush()
        if not more:
            self._inflight.pop(dpid, None)

    @on_event(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def _port_stats(self, ev) -> None:
        msg = ev.msg
        fast = self._fast_inflight.get(msg.datapath.id)
        if fast is not None and fast[0] == msg.xid and not msg.flags & ofp.OFPMPF_REPLY_MORE:
            del self._fast_inflight[msg.datapath.id]
        ports = [(p.port_no, p.rx_bytes, p.tx_bytes, p.rx_packets, p.tx_packets,
                  p.duration_sec + p.duration_nsec * 1e-9)
                 for p in msg.body if p.port_no < ofp.OFPP_MAX]
        try:
            self._locked(self.core.port_stats_part, msg.datapath.id, msg.xid, ports,
                         bool(msg.flags & ofp.OFPMPF_REPLY_MORE))
        except MultipartOverflow as e:
            raise Malformed(f"port stats reply: {e}", ofp.OFPET_BAD_REQUEST,
                            ofp.OFPBRC_MULTIPART_BUFFER_OVERFLOW) from None
        finally:
            if self.core.outbox_pending():   # the volume fast path decided responses
                self._flush()


def _decision_request(q: dict) -> tuple[int, str, str]:
    """(response id, who, reason) of an approve or deny request: {"by": NAME, "reason": TEXT}."""
    raw = q["params"]["id"]
    if not raw.isdigit() or len(raw) > 15:
        raise ApiError(400, "bad_request", f"response id must be a number, got {raw[:40]!r}")
    body = body_fields(q.get("body"), {}, {"by": str, "reason": str})
    by = (body["by"] or "api").strip()[:64] or "api"
    return int(raw), by, (body["reason"] or "")[:500]


def _storage_error(e: Exception) -> Exception:
    """A write to the state directory failed: 507 when the disk is full, else the error itself."""
    full = getattr(e, "errno", None) == errno.ENOSPC or "full" in str(e).lower()
    if not full:
        return e
    LOG.error("state directory full: %s", e)
    return ApiError(507, "insufficient_storage", f"the state directory is full ({e}); the response may "
                                                 "not be recorded or installed: free space, then check "
                                                 "'iotguard responses' and 'iotguard state check'")
