"""The only module that imports the OpenFlow framework.

Prefers os-ken (the maintained fork of Ryu); falls back to Ryu where only Ryu
is installed.  Besides re-exporting the few names the app needs, it compiles
the core's message data (`FlowSpec`, `MeterSpec`, `PacketOut`, `Barrier`) into
framework messages, and installs a raw body parser for flow-stats replies.
"""

from __future__ import annotations

from controller.openflow import rules
from controller.openflow.rules import Barrier, FlowSpec, MeterSpec, PacketOut

try:
    from os_ken import cfg
    from os_ken.base import app_manager
    from os_ken.controller import ofp_event
    from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
    from os_ken.lib import hub
    from os_ken.ofproto import ofproto_v1_3 as ofp
    from os_ken.ofproto import ofproto_v1_3_parser as parser
    FRAMEWORK = "os-ken"
    BaseApp = app_manager.OSKenApp
except ImportError:  # pragma: no cover - exercised by the Ryu smoke test
    from ryu import cfg  # type: ignore[no-redef]
    from ryu.base import app_manager  # type: ignore[no-redef]
    from ryu.controller import ofp_event  # type: ignore[no-redef]
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
           "port_desc_request", "run_apps"]

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


def run_apps(app_modules: list[str], ofp_host: str, ofp_port: int) -> None:
    """Start the framework's app manager (os-ken 4 ships no manager command)."""
    hub.patch(thread=False)
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
