"""The only module that imports the OpenFlow framework.

Prefers os-ken (the maintained fork of Ryu); falls back to Ryu where only Ryu
is installed.  Besides re-exporting the few names the app needs, it compiles
the core's message data (`FlowSpec`, `MeterSpec`, `PacketOut`, `Barrier`) into
framework messages, and installs a raw body parser for flow-stats replies.
"""

from __future__ import annotations

import collections
import functools
import importlib
import logging
import socket
import time
import weakref

from controller.openflow import rules
from controller.openflow.rules import Barrier, FlowSpec, MeterSpec, PacketOut

try:
    from os_ken import cfg
    from os_ken.base import app_manager
    from os_ken.controller import event, ofp_event
    from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
    from os_ken.lib import hub
    from os_ken.ofproto import ofproto_v1_3 as ofp
    from os_ken.ofproto import ofproto_v1_3_parser as parser
    FRAMEWORK = "os-ken"
    BaseApp = app_manager.OSKenApp
except ImportError:  # pragma: no cover - exercised by the Ryu smoke test
    from ryu import cfg  # type: ignore[no-redef]
    from ryu.base import app_manager  # type: ignore[no-redef]
    from ryu.controller import event, ofp_event  # type: ignore[no-redef]
    from ryu.controller.handler import (CONFIG_DISPATCHER, DEAD_DISPATCHER,  # type: ignore[no-redef]
                                        MAIN_DISPATCHER, set_ev_cls)
    from ryu.lib import hub  # type: ignore[no-redef]
    from ryu.ofproto import ofproto_v1_3 as ofp  # type: ignore[no-redef]
    from ryu.ofproto import ofproto_v1_3_parser as parser  # type: ignore[no-redef]
    FRAMEWORK = "ryu"
    BaseApp = app_manager.RyuApp

__all__ = ["cfg", "app_manager", "ofp_event", "set_ev_cls", "hub", "ofp", "parser", "BaseApp",
           "FRAMEWORK", "CONFIG_DISPATCHER", "MAIN_DISPATCHER", "DEAD_DISPATCHER",
           "to_message", "install_raw_flow_stats", "flow_stats_request", "port_stats_request",
           "port_desc_request", "run_apps", "Malformed", "guarded", "on_event", "GuardedApp",
           "EventTick", "send_error", "describe", "error_text", "watch_openflow_listener"]

LOG = logging.getLogger("iotguard.openflow")


# ---------------------------------------------------------------- hostile input
class Malformed(Exception):
    """A switch's message the app cannot use.  The handler guard answers it with an
    OFPT_ERROR of (err_type, code) and the message's first 64 bytes, as OpenFlow 1.3
    section 7.4.4 has it, and counts it."""

    def __init__(self, why: str, err_type: int = ofp.OFPET_BAD_REQUEST,
                 code: int = ofp.OFPBRC_BAD_LEN) -> None:
        super().__init__(why)
        self.err_type, self.code = err_type, code


def describe(ev) -> tuple[int | None, str]:
    """The switch (dpid, None before FEATURES) and the message type an event carries."""
    msg = getattr(ev, "msg", None)
    dp = getattr(msg, "datapath", None) if msg is not None else getattr(ev, "datapath", None)
    return getattr(dp, "id", None), type(msg).__name__ if msg is not None else type(ev).__name__


def send_error(dp, err_type: int, code: int, data: bytes = b"") -> bool:
    """Send OFPT_ERROR to `dp` (never raises: the switch may be gone already)."""
    try:
        return bool(dp.send_msg(parser.OFPErrorMsg(dp, type_=err_type, code=code, data=bytes(data[:64]))))
    except Exception:  # noqa: BLE001 - a dead connection or a bad datapath: nothing to answer
        return False


def guarded(fn):
    """Wrap an event handler so that nothing it raises (a BaseException included: the native
    hub's TaskExit is a plain Exception, which os-ken's event loop re-raises and so ends the
    app's only event thread without a log line) reaches the framework.  The app's
    `handler_failed(ev, exc)` logs, counts and answers it."""

    @functools.wraps(fn)
    def wrapper(self, ev):
        try:
            return fn(self, ev)
        except BaseException as e:  # noqa: BLE001 - see the docstring
            try:
                self.handler_failed(ev, e)
            except BaseException:  # noqa: BLE001 - the report itself must not escape either
                LOG.exception("handler %s failed, and so did its error report", fn.__name__)
            return None
    return wrapper


def on_event(ev_cls, dispatchers=None):
    """`set_ev_cls` for a `guarded` handler."""
    def decorate(fn):
        return set_ev_cls(ev_cls, dispatchers)(guarded(fn))
    return decorate


class EventTick(event.EventBase):
    """Posted to the app's own queue so its event thread proves it is alive and keeping up
    (`GuardedApp`)."""

    def __init__(self, posted: float) -> None:
        super().__init__()
        self.posted = posted        # monotonic time it was queued


class _Lanes:
    """The app's event queue in two lanes: packet-ins (bulk), and every other switch event
    (a stats reply, a barrier, an error, a connect).  The event thread takes the other lane
    first, so under a packet-in storm (a SYN flood's replies, a MAC flood) the port-stats
    reply that detects the flood and the barrier that confirms its answer do not wait behind
    128 packet-ins, nor does the datapath's receive thread block on a full queue before it
    reads them.  A packet-in that finds its lane full is dropped (shed) and counted, as the
    switch's packet-in meter already drops what is over its rate: the first packet of a
    conversation, which the sender repeats.  The other lane keeps the framework's bound
    and back-pressure (`_events_sem`).  Hub primitives only: deques (atomic append and
    popleft) and one semaphore counting the items queued."""

    def __init__(self, maxsize: int, bulk_max: int) -> None:
        self.maxsize, self.bulk_max = maxsize, bulk_max
        self._other: collections.deque = collections.deque()
        self._bulk: collections.deque = collections.deque()
        self._items = hub.Semaphore(0)
        self.shed = 0

    def put(self, item) -> None:
        """Another lane's event (the caller holds a slot of the framework's semaphore)."""
        self._other.append(item)
        self._items.release()

    def put_bulk(self, item) -> bool:
        """A packet-in, or False (shed, counted) when its lane is full; never blocks."""
        if len(self._bulk) >= self.bulk_max:
            self.shed += 1
            return False
        self._bulk.append(item)
        self._items.release()
        return True

    def get(self) -> tuple[object, bool]:
        """The next event and whether it came from the bulk lane; blocks until there is one."""
        self._items.acquire()
        if self._other:
            return self._other.popleft(), False
        return self._bulk.popleft(), True

    def qsize(self) -> int:
        return len(self._other) + len(self._bulk)

    def empty(self) -> bool:
        return not self._other and not self._bulk


class GuardedApp(BaseApp):
    """The framework's app with an event loop that cannot end while the app is active.

    os-ken's `_event_loop` re-raises `hub.TaskExit`, which is `Exception` under the native
    hub: any handler error ends event processing for good, silently.  This loop catches
    everything per handler, and stamps `loop_beat` (monotonic) at each event.  A tick posted
    from another thread (`post_tick`) tells three states apart: idle (ticks are taken at
    once), stalled (`loop_age` grows: no event is taken at all) and falling behind
    (`loop_lag`: events are taken, but a tick waits behind a backlog of them).  The queue
    has two lanes (`_Lanes`): packet-ins wait behind every other switch event, and are shed
    past BULK_MAX; a tick goes in the packet-in lane, so the lag is the longest wait.
    """

    BULK_MAX = 256     # packet-ins queued for the event thread; more are shed (docs/security.md)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events = _Lanes(self.events.maxsize, self.BULK_MAX)   # the framework's bound stays
        self.loop_beat = time.monotonic()
        self.loop_errors = 0
        self._tick_posted: float | None = None    # when the tick still queued was posted
        self._last_lag = 0.0                      # how long the last tick waited
        self.queue_full = 0                       # ticks not posted: the queue was full

    def post_tick(self) -> None:
        """Queue one tick unless one is still queued; never blocks (a stalled loop must not
        stall the caller too)."""
        if self._tick_posted is not None:
            return
        now = time.monotonic()
        if self.events.put_bulk((EventTick(now), None)):
            self._tick_posted = now
        else:
            self.events.shed -= 1         # a tick is not a packet-in
            self.queue_full += 1

    @property
    def packet_ins_shed(self) -> int:
        """Packet-ins dropped because their lane was full (`_Lanes`)."""
        return self.events.shed

    def _send_event(self, ev, state) -> None:  # overrides the framework's (see the class docstring)
        if isinstance(ev, ofp_event.EventOFPPacketIn):
            self.events.put_bulk((ev, state))
            return
        self._events_sem.acquire()
        self.events.put((ev, state))

    def loop_age(self) -> float:
        """Seconds since the event thread last took an event."""
        return time.monotonic() - self.loop_beat

    def loop_lag(self) -> float:
        """Seconds an event waits in the queue now: the last tick's wait, or the wait so far
        of the tick still queued, whichever is longer."""
        posted = self._tick_posted
        waiting = time.monotonic() - posted if posted is not None else 0.0
        return max(self._last_lag, waiting)

    def queue_depth(self) -> int:
        """Events queued for the event thread (the framework bounds the queue)."""
        return self.events.qsize()

    def _event_loop(self):  # overrides the framework's (see the class docstring)
        while self.is_active or not self.events.empty():
            try:
                (ev, state), bulk = self.events.get()
                if not bulk:
                    self._events_sem.release()
                self.loop_beat = time.monotonic()
                if isinstance(ev, EventTick):
                    self._last_lag = self.loop_beat - ev.posted
                    self._tick_posted = None
                    continue
                if ev == self._event_stop:
                    continue
                handlers = self.get_handlers(ev, state)
            except BaseException:  # noqa: BLE001
                if not self.is_active:
                    raise   # stop() asked for it
                self.loop_errors += 1
                LOG.exception("%s: event loop error; the loop goes on", self.name)
                continue
            for handler in handlers:
                try:
                    handler(ev)
                except BaseException:  # noqa: BLE001 - an unguarded handler: log, count, go on
                    self.loop_errors += 1
                    LOG.exception("%s: handler %s failed on %s; the event loop goes on", self.name,
                                  getattr(handler, "__name__", handler), type(ev).__name__)

_PORTS = {"controller": ofp.OFPP_CONTROLLER, "flood": ofp.OFPP_FLOOD, "any": ofp.OFPP_ANY,
          "in_port": ofp.OFPP_IN_PORT, "table": ofp.OFPP_TABLE}
_COMMANDS = {"add": ofp.OFPFC_ADD, "delete": ofp.OFPFC_DELETE, "delete_strict": ofp.OFPFC_DELETE_STRICT}
_METER_COMMANDS = {"add": ofp.OFPMC_ADD, "modify": ofp.OFPMC_MODIFY, "delete": ofp.OFPMC_DELETE}


def _port(p: int | str) -> int:
    return _PORTS[p] if isinstance(p, str) else int(p)


def _action(a: tuple):
    if a[0] == "output":
        port = _port(a[1])
        max_len = ofp.OFPCML_NO_BUFFER if port == ofp.OFPP_CONTROLLER else 0
        return parser.OFPActionOutput(port, max_len)
    if a[0] == "set_field":
        return parser.OFPActionSetField(**{a[1]: a[2]})
    raise ValueError(f"unknown action {a!r}")


def _instruction(i: tuple):
    if i[0] == "goto":
        return parser.OFPInstructionGotoTable(i[1])
    if i[0] == "meter":
        return parser.OFPInstructionMeter(i[1], ofp.OFPIT_METER)
    if i[0] == "apply":
        return parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [_action(a) for a in i[1]])
    raise ValueError(f"unknown instruction {i!r}")


def to_message(dp, msg):
    """Compile one core message into the framework's message for `dp`."""
    if isinstance(msg, FlowSpec):
        return parser.OFPFlowMod(
            dp, cookie=msg.cookie, cookie_mask=msg.cookie_mask, table_id=msg.table_id,
            command=_COMMANDS[msg.command], idle_timeout=msg.idle_timeout,
            hard_timeout=msg.hard_timeout, priority=msg.priority, buffer_id=ofp.OFP_NO_BUFFER,
            out_port=_port(msg.out_port), out_group=ofp.OFPG_ANY,
            flags=ofp.OFPFF_SEND_FLOW_REM if msg.send_flow_removed else 0,
            match=parser.OFPMatch(**msg.match_dict),
            instructions=[_instruction(i) for i in msg.instructions])
    if isinstance(msg, MeterSpec):
        bands = [] if msg.command == "delete" else [
            parser.OFPMeterBandDrop(rate=msg.rate, burst_size=msg.burst)]
        unit = {"pktps": ofp.OFPMF_PKTPS, "kbps": ofp.OFPMF_KBPS}[msg.unit]
        return parser.OFPMeterMod(dp, command=_METER_COMMANDS[msg.command],
                                  flags=unit | ofp.OFPMF_BURST,
                                  meter_id=msg.meter_id, bands=bands)
    if isinstance(msg, PacketOut):
        return parser.OFPPacketOut(dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=_port(msg.in_port),
                                   actions=[parser.OFPActionOutput(_port(msg.out_port), 0)],
                                   data=msg.data)
    if isinstance(msg, Barrier):
        return parser.OFPBarrierRequest(dp)
    raise TypeError(f"not a core message: {msg!r}")


def flow_stats_request(dp):
    """All tables, only our cookies: foreign rules are not ours to count."""
    return parser.OFPFlowStatsRequest(dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                      rules.COOKIE_MAGIC, rules.COOKIE_MAGIC_MASK, parser.OFPMatch())


def port_stats_request(dp):
    return parser.OFPPortStatsRequest(dp, 0, ofp.OFPP_ANY)


def port_desc_request(dp):
    return parser.OFPPortDescStatsRequest(dp, 0)


class RawFlowStats:
    """A flow-stats reply body kept as bytes; `controller.openflow.wire` reads it."""

    __slots__ = ("data", "length")

    @classmethod
    def parser(cls, buf, offset):
        body = cls()
        body.data = bytes(buf[offset:])
        body.length = len(buf) - offset
        return body


_original_flow_stats_reply = parser.OFPMultipartReply._STATS_MSG_TYPES[ofp.OFPMP_FLOW]


class OFPFlowStatsReply(_original_flow_stats_reply):
    """Same name as the framework's class, so the same event class fires."""

    cls_stats_body_cls = RawFlowStats


def install_raw_flow_stats() -> None:
    """Make every flow-stats reply arrive as raw bytes (see ofwire for why)."""
    parser.OFPMultipartReply._STATS_MSG_TYPES[ofp.OFPMP_FLOW] = OFPFlowStatsReply


def framework_flow_stats_parser():
    """The framework's own reply class, for the benchmark's side-by-side run."""
    return _original_flow_stats_reply


def _joinall_waking(threads) -> None:
    """The native hub's joinall, waking twice a second.  Python runs a signal handler only in
    the main thread, between bytecodes; the framework's main thread sits in `join()`, and when
    the kernel delivers SIGHUP or SIGTERM to another thread that join is never interrupted, so
    the handler (reload, shutdown) waited for ever (seen in CI: a SIGHUP reload never came)."""
    for t in threads:
        while t.is_alive():
            t.join(0.5)


_joinall_waking._iotguard = True  # type: ignore[attr-defined]


def run_apps(app_modules: list[str], ofp_host: str, ofp_port: int) -> None:
    """Start the framework's app manager (os-ken 4 ships no manager command)."""
    hub.patch(thread=False)
    if getattr(hub, "HUB_TYPE", "native") == "native" and not getattr(hub.joinall, "_iotguard", False):
        hub.joinall = _joinall_waking
    args = ["--ofp-listen-host", ofp_host, "--ofp-tcp-listen-port", str(ofp_port)]
    if FRAMEWORK == "os-ken":
        cfg.CONF(args=args, project="os_ken")
    else:  # pragma: no cover
        cfg.CONF(args=args, project="ryu")
    app_manager.AppManager.run_apps(app_modules)


_ERROR_CODES = {"OFPET_HELLO_FAILED": "OFPHFC_", "OFPET_BAD_REQUEST": "OFPBRC_",
                "OFPET_BAD_ACTION": "OFPBAC_", "OFPET_BAD_INSTRUCTION": "OFPBIC_",
                "OFPET_BAD_MATCH": "OFPBMC_", "OFPET_FLOW_MOD_FAILED": "OFPFMFC_",
                "OFPET_GROUP_MOD_FAILED": "OFPGMFC_", "OFPET_PORT_MOD_FAILED": "OFPPMFC_",
                "OFPET_TABLE_MOD_FAILED": "OFPTMFC_", "OFPET_QUEUE_OP_FAILED": "OFPQOFC_",
                "OFPET_SWITCH_CONFIG_FAILED": "OFPSCFC_", "OFPET_ROLE_REQUEST_FAILED": "OFPRRFC_",
                "OFPET_METER_MOD_FAILED": "OFPMMFC_", "OFPET_TABLE_FEATURES_FAILED": "OFPTFFC_"}


def error_text(err_type: int, code: int) -> str:
    """An OpenFlow error as its spec names, e.g. 'OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL'."""
    names = {getattr(ofp, n): n for n in _ERROR_CODES if hasattr(ofp, n)}
    tname = names.get(err_type)
    if tname is None:
        return f"type={err_type} code={code}"
    prefix = _ERROR_CODES[tname]
    cname = next((n for n in dir(ofp) if n.startswith(prefix) and getattr(ofp, n) == code), None)
    return f"{tname}/{cname or f'code={code}'}"


# ---------------------------------------------------------------- hostile switches
_VALID_IN_PORT = (1, ofp.OFPP_MAX)


def packet_in_port(msg) -> int:
    """A packet-in's in_port: exactly one in_port OXM naming a switch port (1..OFPP_MAX or
    LOCAL).  Anything else raises Malformed (answered OFPET_BAD_MATCH)."""
    ports = [v for k, v in getattr(msg.match, "_fields2", ()) if k == "in_port"]
    if not ports:
        raise Malformed("packet-in without an in_port match field", ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_FIELD)
    if len(ports) > 1:
        raise Malformed(f"packet-in with {len(ports)} in_port match fields", ofp.OFPET_BAD_MATCH,
                        ofp.OFPBMC_DUP_FIELD)
    port = ports[0]
    if not isinstance(port, int) or not (_VALID_IN_PORT[0] <= port <= _VALID_IN_PORT[1]
                                         or port == ofp.OFPP_LOCAL):
        raise Malformed(f"packet-in from port {port!r}, not a switch port", ofp.OFPET_BAD_MATCH,
                        ofp.OFPBMC_BAD_VALUE)
    return port


HANDSHAKE_TIMEOUT = 10.0   # seconds a connection may take from TCP accept to FEATURES_REPLY
_live: "weakref.WeakSet | None" = None   # Datapaths being served (install_datapath_guards)
_bad_message_hook = None


def live_connections() -> int:
    """OpenFlow connections being served now, handshaken or not."""
    return 0 if _live is None else len(_live)


def _classify_parse_error(msg_type: int, buf, exc: BaseException) -> tuple[int, int]:
    if parser._MSG_PARSERS.get(msg_type) is None:
        return ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_TYPE
    if msg_type == ofp.OFPT_MULTIPART_REPLY and len(buf) >= 10:
        mp_type = int.from_bytes(bytes(buf[8:10]), "big")
        if mp_type not in parser.OFPMultipartReply._STATS_MSG_TYPES:
            return ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_MULTIPART
    return ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN


def watch_openflow_listener(on_bound, on_failed) -> None:
    """Tell the app when the framework's OpenFlow listener is bound, or that it could not be.

    os-ken binds it in a thread of its own (`OpenFlowController.server_loop`) and only logs a
    failure, so the process would go on with an API but no switch.  Here the framework's
    server class is wrapped: `on_bound((host, port))` once the socket listens, or
    `on_failed((host, port), OSError)` before the error ends that thread.  Idempotent; the
    latest callbacks win.
    """
    package = app_manager.__name__.split(".")[0]          # os_ken, or ryu
    ofp_controller = importlib.import_module(f"{package}.controller.controller")
    base = getattr(ofp_controller, "StreamServer", None)
    if base is None:       # a framework version that builds its server differently: cannot tell
        LOG.warning("%s.controller.controller has no StreamServer: the OpenFlow listener is "
                    "assumed to be bound", package)
        on_bound(("?", "?"))
        return
    if getattr(base, "_iotguard_watched", False):
        base._callbacks = (on_bound, on_failed)
        return

    class WatchedServer(base):
        _iotguard_watched = True
        _callbacks = (on_bound, on_failed)

        def __init__(self, listen_info, *args, **kwargs):
            bound, failed = type(self)._callbacks
            try:
                super().__init__(listen_info, *args, **kwargs)
            except OSError as e:
                failed(tuple(listen_info[:2]), e)
                raise
            bound(tuple(listen_info[:2]))

    ofp_controller.StreamServer = WatchedServer


def install_datapath_guards(on_bad_message=None, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Harden the framework's per-connection code against hostile switches (idempotent).

    * Parsing: a message the framework's parser cannot read is dropped and answered with
      OFPT_ERROR (BAD_TYPE, BAD_MULTIPART or BAD_LEN), logged once per budget by
      `on_bad_message(dp, kind, why)`, instead of os-ken's full traceback and hex dump per
      message (or, for a truncated one, the end of the connection).
    * Teardown: os-ken's `Datapath.serve()` joins its send thread, which under the native
      hub (where `hub.kill` does nothing) waits on an empty queue for ever: every connection
      that closed before or during the handshake left two threads behind.  Here the send
      loop is woken with a closing sentinel, so both threads end.
    * A connection that has not finished the handshake after `handshake_timeout` seconds is
      closed (a slow-loris of idle TCP connections would otherwise hold two threads each).
    """
    global _live, _bad_message_hook
    package = app_manager.__name__.split(".")[0]          # os_ken, or ryu
    ofp_controller = importlib.import_module(f"{package}.controller.controller")
    ofproto_parser = importlib.import_module(f"{package}.ofproto.ofproto_parser")
    HANDSHAKE_DISPATCHER = importlib.import_module(f"{package}.controller.handler").HANDSHAKE_DISPATCHER

    _bad_message_hook = on_bad_message
    if _live is not None:
        return
    _live = weakref.WeakSet()
    original_msg = ofproto_parser.msg
    Datapath = ofp_controller.Datapath

    def safe_msg(datapath, version, msg_type, msg_len, xid, buf):
        if version not in ofproto_parser._MSG_PARSERS:
            return original_msg(datapath, version, msg_type, msg_len, xid, buf)   # raises: ends it
        try:
            return ofproto_parser._MSG_PARSERS[version](datapath, version, msg_type, msg_len, xid, buf)
        except Exception as e:  # noqa: BLE001 - any parser failure is the message's fault
            err_type, code = _classify_parse_error(msg_type, buf, e)
            send_error(datapath, err_type, code, bytes(buf[:64]))
            hook = _bad_message_hook
            if hook is not None:
                try:
                    hook(datapath, f"message type {msg_type} ({msg_len} bytes)", f"{type(e).__name__}: {e}"
                         f"; answered {error_text(err_type, code)}")
                except Exception:  # noqa: BLE001
                    LOG.exception("bad-message hook failed")
            return None

    def wake_send_loop(dp) -> None:
        q, sem = dp.send_q, dp._send_q_sem
        if q is None:
            return
        if sem.acquire(blocking=False):      # a free slot: the send loop may be waiting on get()
            try:
                q.put_nowait((b"", True))    # close_socket=True: the loop ends after it
            except Exception:  # noqa: BLE001 - full after all: the loop is busy and will fail on the socket
                sem.release()

    def serve(self):
        _live.add(self)
        self._iotguard_accepted = time.monotonic()
        send_thr = hub.spawn(self._send_loop)
        self.send_msg(self.ofproto_parser.OFPHello(self))
        echo_thr = hub.spawn(self._echo_request_loop)
        try:
            self._recv_loop()
        finally:
            self.set_state(DEAD_DISPATCHER)
            wake_send_loop(self)
            hub.kill(send_thr)
            hub.kill(echo_thr)
            hub.joinall([send_thr])   # the echo loop ends by itself at its next wake-up
            self.is_active = False
            _live.discard(self)

    def watchdog():
        while True:
            hub.sleep(1.0)
            now = time.monotonic()
            for dp in list(_live):
                if dp.state in (HANDSHAKE_DISPATCHER, CONFIG_DISPATCHER) \
                        and now - getattr(dp, "_iotguard_accepted", now) > handshake_timeout:
                    LOG.info("closing the connection from %s: no handshake after %.0fs", dp.address,
                             handshake_timeout)
                    dp._iotguard_accepted = float("inf")   # once
                    try:
                        dp.socket.shutdown(socket.SHUT_RDWR)    # the receive loop sees the end
                    except OSError:
                        pass

    ofproto_parser.msg = safe_msg
    Datapath.serve = serve
    hub.spawn(watchdog)
