"""The `iotguard` command.

`run`, `replay`, `playbook validate` and `config` work locally; the response
commands (`quarantine`, `respond`, `release`, `responses`, `audit`,
`playbook reload`) talk to a running controller's REST API through
controller/api/client.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from controller import __version__
from controller.api.rest import load_or_create_token
from controller.config import ConfigError, Config, load_config
from controller.response.actions import REGISTRY

DESCRIPTION = """\
iotguard: an OpenFlow 1.3 controller app that learns how each IoT device
normally behaves and answers misbehaviour with operator-written playbooks.

commands:
  run        start the controller (OpenFlow listener, stats polling, detection, REST API)
  replay     run the detector offline over a recording made with 'run --record', or the
             whole controller over a packet capture ('replay --pcap FILE.pcap') or a Zeek
             conn.log ('replay --conn-log conn.log')
  playbook   validate response playbooks ('playbook validate FILE...'), or make the
             running controller reload them ('playbook reload')
  config     validate a configuration file and print the effective settings
  report     write an HTML incident report from the state directory ('report --last')
  state      check the response store against the audit log, or repair it ('state check')
  demo       watch iotguard catch and isolate a compromised device in Mininet (root;
             from a checkout: 'iotguard demo --help')

commands for a running controller (through its REST API):
{shortcuts}  respond     apply any response action ('respond ACTION DEVICE --param KEY=VALUE')
  release     end a response early ('release ID')
  pending     list the responses awaiting approval; 'approve ID' or 'deny ID' decides
  responses   list the active responses
  audit       show the response audit log

Run 'iotguard COMMAND --help' for a command's options."""


def response_actions() -> tuple[str, ...]:
    """The actions a manual response may ask for: the registry's that install rules."""
    return tuple(a.name for a in REGISTRY.installing())


def _shortcuts() -> list:
    """Actions that have their own command (`iotguard NAME DEVICE`)."""
    return [a for a in REGISTRY.installing() if a.shortcut]


def _description() -> str:
    lines = "".join(f"  {a.name:<10}  {a.shortcut} ('{a.name} DEVICE --ttl 10m')\n" for a in _shortcuts())
    return DESCRIPTION.format(shortcuts=lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iotguard", description=_description(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"iotguard {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    common = _client_options()

    run = sub.add_parser(
        "run", help="start the controller",
        description="Start the controller: listen for OpenFlow 1.3 switches, install the "
                    "table pipeline, forward traffic, poll flow and port statistics every "
                    "poll interval, and serve the REST API. SIGINT or SIGTERM stop it.")
    run.add_argument("--config", metavar="FILE",
                     help="YAML configuration file (see docs/config.md); built-in defaults if omitted")
    run.add_argument("--ofp-port", type=int, metavar="N",
                     help="TCP port for OpenFlow switches (overrides openflow.port; default 6653)")
    run.add_argument("--api-port", type=int, metavar="N",
                     help="TCP port of the REST API (overrides api.port; default 8080)")
    run.add_argument("--state-dir", metavar="DIR",
                     help="directory for the API token and learned state (overrides state_dir; "
                          "default /var/lib/iotguard)")
    run.add_argument("--record", metavar="FILE",
                     help="append the detector's input (per-window device features and new-connection "
                          "events, JSON lines) to FILE, for 'iotguard replay'")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="log verbosity (default INFO)")

    rep = sub.add_parser(
        "replay", help="run the detector offline over a recording, a packet capture or a Zeek conn.log",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Three forms, all offline (no switch, no root):\n\n"
                    "  iotguard replay FILE [--config FILE]\n"
                    "      feed a recording made with 'iotguard run --record' to a fresh detector and\n"
                    "      print its alerts as JSON lines, oldest first.\n\n"
                    "  iotguard replay --pcap CAPTURE [--devices INVENTORY] [--windows] [--json]\n"
                    "                  [--learn SECONDS] [--baselines FILE] [--save-baselines FILE]\n"
                    "                  [--config FILE]\n"
                    "      run iotguard's real controller core (forwarding, feature extraction,\n"
                    "      detection) over a pcap or pcapng, emulating the one\n"
                    "      switch it would program: flows, idle timeouts and flow-stats polls follow\n"
                    "      the capture's timestamps. Baselines and known destinations are learned\n"
                    "      from the capture's first detection.learn_seconds (default 300 s). Prints\n"
                    "      a summary per device: windows, packets counted, alerts, flagged windows.\n"
                    "      Responses (playbooks) stay off. A capture without Ethernet MACs (Linux\n"
                    "      cooked from 'tcpdump -i any', raw IP) gets the synthetic MACs of --conn-log\n"
                    "      below. Exit status 2 if the capture cannot be read or is of another link\n"
                    "      type.\n\n"
                    "  iotguard replay --conn-log CONN_LOG [--devices INVENTORY] [--windows] [--json]\n"
                    "                  [--learn SECONDS] [--baselines FILE] [--save-baselines FILE]\n"
                    "                  [--config FILE]\n"
                    "      the same over a Zeek conn.log (tab-separated with its #fields header, JSON\n"
                    "      lines, or CSV with a header row; gzip or not): each connection becomes its\n"
                    "      first packet(s) as table-misses (a TCP SYN, a UDP datagram, an ICMP echo;\n"
                    "      the answer conn_state says was sent) and its other packets and bytes counted\n"
                    "      on the flows the core installed, spread over its duration. A conn.log has\n"
                    "      no MAC addresses: each address inside internal_subnets gets a synthetic MAC,\n"
                    "      02:00 and its four bytes (192.168.1.195 is 02:00:c0:a8:01:c3), and every\n"
                    "      other address is behind one gateway MAC, 06:00:00:00:00:01, tagged\n"
                    "      'gateway'. Devices are named by address; in INVENTORY name them by 'ip:'.\n"
                    "      Exit status 2, naming the file and line, if the log is malformed.\n\n"
                    "  A warm-up learns whatever the device does, an infection that began before the\n"
                    "  capture included. To judge a capture against a clean day instead, learn on that\n"
                    "  day with --save-baselines FILE, then replay the suspect capture with\n"
                    "  --baselines FILE: devices in FILE are judged from the first frame (no warm-up),\n"
                    "  the others learn as usual. FILE is the state-file format of 'iotguard run'\n"
                    "  (<state_dir>/baselines.json), so a live controller's baselines work too.\n\n"
                    "The config's detection settings, poll_interval, forwarding settings and device\n"
                    "inventory apply; --devices replaces the inventory.")
    rep.add_argument("file", metavar="FILE", nargs="?", help="recording (JSON lines)")
    rep.add_argument("--config", metavar="FILE", help="YAML configuration file")
    rep.add_argument("--pcap", metavar="CAPTURE",
                     help="replay a packet capture (pcap or pcapng: Ethernet, Linux cooked or raw IP) instead "
                          "of a recording")
    rep.add_argument("--conn-log", metavar="CONN_LOG",
                     help="replay a Zeek conn.log (TSV, JSON lines or CSV; gzip or not) instead of a recording; "
                          "addresses get synthetic MACs (see above)")
    rep.add_argument("--devices", metavar="INVENTORY",
                     help="with --pcap or --conn-log: YAML device inventory, the config's 'devices:' list (or a "
                          "bare list), for names and tags (tag the gateway 'gateway' to exclude its traffic, "
                          "devices 'iot' for the appliance rules; for a conn log, by 'ip:')")
    rep.add_argument("--windows", action="store_true",
                     help="with --pcap or --conn-log: also print every flagged window with its alerts' words")
    rep.add_argument("--json", action="store_true", help="with --pcap or --conn-log: print the whole result as JSON")
    rep.add_argument("--learn", type=float, metavar="SECONDS",
                     help="with --pcap or --conn-log: warm-up length in capture seconds (overrides "
                          "detection.learn_seconds)")
    rep.add_argument("--baselines", metavar="FILE",
                     help="with --pcap or --conn-log: start from the baselines, known destinations and "
                          "novelty memories saved in FILE (a replay's --save-baselines, or iotguard run's "
                          "<state_dir>/baselines.json); exit status 2 if it cannot be loaded")
    rep.add_argument("--save-baselines", metavar="FILE",
                     help="with --pcap or --conn-log: write them to FILE at the end, in the state-file "
                          "format that --baselines and iotguard run read")

    pb = sub.add_parser("playbook", help="validate or reload response playbooks",
                        description="Response playbooks (see docs/playbooks.md).")
    pbsub = pb.add_subparsers(dest="playbook_command", metavar="SUBCOMMAND")
    pbsub.add_parser("reload", parents=[common], help="make the running controller reload its playbooks",
                     description="Ask the running controller to re-read its playbook files "
                                 "(POST /api/v1/playbooks/reload) and print what it loaded. If any "
                                 "file is invalid, print each problem and exit with status 2.")
    val = pbsub.add_parser("validate", help="check playbook files",
                           description="Check every FILE (or the *.yaml files of a directory) and "
                                       "print each problem as FILE:LINE:COL: field: message. Exit "
                                       "status 2 if there is any.")
    val.add_argument("files", metavar="FILE", nargs="+")
    val.add_argument("--config", metavar="FILE",
                     help="check host names and tags against this config's device inventory")

    _response_parsers(sub, common)

    cfg = sub.add_parser("config", help="validate a configuration file",
                         description="Validate FILE and print the effective settings as JSON. "
                                     "Exit status 2 and a file:line: field: message error if invalid.")
    cfg.add_argument("file", metavar="FILE")

    st = sub.add_parser(
        "state", help="check or repair the response state against the audit log",
        description="'state check' compares the response store (<state_dir>/responses.sqlite) with the "
                    "audit log (<state_dir>/audit.jsonl): exit 0 when every response the audit log shows "
                    "as active is in the store, 1 with each one the store lacks. 'state repair' rebuilds "
                    "those from the audit log's records (an unreadable store is moved aside, never "
                    "deleted). Run it with the controller stopped.")
    st.add_argument("state_command", metavar="ACTION", choices=("check", "repair"), help="check or repair")
    st.add_argument("--state-dir", metavar="DIR", help="the state directory (default: the config's state_dir)")
    st.add_argument("--config", metavar="FILE", help="the controller's YAML configuration, for its state_dir")

    rp = sub.add_parser(
        "report", help="write an HTML incident report",
        description="Write one self-contained HTML page about an alert: the explanation, the "
                    "device, its features over the windows before and after the alert against "
                    "its baseline band, the responses decided with their OpenFlow rules, and "
                    "their timeline. Reads <state_dir>/incidents/ and <state_dir>/audit.jsonl "
                    "directly: no running controller or API token needed. Prints the path written.")
    rp.add_argument("alert_id", metavar="ALERT_ID", nargs="?",
                    help="the alert's id (as in the alert, the audit log or the incident file name)")
    rp.add_argument("--last", action="store_true",
                    help="report on the most recent alert (by alert time) instead of ALERT_ID")
    rp.add_argument("-o", "--output", metavar="FILE",
                    help="where to write the page (default iotguard-incident-ALERT_ID.html here)")
    rp.add_argument("--state-dir", metavar="DIR",
                    help="the controller's state directory (overrides the config's state_dir; "
                         "default /var/lib/iotguard)")
    rp.add_argument("--config", metavar="FILE",
                    help="the controller's YAML configuration, for its state_dir")
    return p


def _client_options() -> argparse.ArgumentParser:
    """The options every command that talks to a running controller takes."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection options")
    g.add_argument("--config", metavar="FILE",
                   help="the controller's YAML configuration: the API address (api.listen_host, "
                        "api.port), api.token and state_dir come from it; built-in defaults if omitted")
    g.add_argument("--state-dir", metavar="DIR",
                   help="the controller's state directory, where 'iotguard run' wrote the api-token "
                        "file (overrides state_dir; default /var/lib/iotguard)")
    g.add_argument("--api", metavar="URL",
                   help="the controller's REST API, like http://127.0.0.1:8080 (default: from the config)")
    g.add_argument("--token", metavar="TOKEN",
                   help="API bearer token; default $IOTGUARD_TOKEN, else the config's api.token, else "
                        "the api-token file in the state directory. Prefer the variable: a command "
                        "line is visible to other users")
    g.add_argument("--json", action="store_true", help="print the API's JSON answer instead of a table")
    return common


def _response_parsers(sub, common: argparse.ArgumentParser) -> None:
    def response_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ttl", metavar="DURATION",
                       help="how long the response lasts: 30s, 10m, 2h, 1d, or plain seconds "
                            "(1s..30d; default: the controller's, 1h)")
        p.add_argument("--reason", metavar="TEXT", help="why; kept with the response and in the audit log")
        p.add_argument("--dry-run", action="store_true",
                       help="let the controller decide and audit the response without installing rules")

    for action in _shortcuts():
        q = sub.add_parser(
            action.name, parents=[common], help=action.shortcut,
            description=f"Apply {action.name} to DEVICE on the running controller (POST /api/v1/responses): "
                        f"{action.summary}, until the ttl runs out or 'iotguard release ID' ends it. "
                        "Prints the response id, the outcome and the ttl.")
        q.add_argument("device", metavar="DEVICE", help="the device: its inventory name, MAC or IP address")
        q.set_defaults(shortcut=action.name)
        response_options(q)

    examples = ", ".join(f"'respond {a.example}'" for a in REGISTRY.installing() if a.example)
    deviceless = [a.name for a in REGISTRY.installing() if not a.needs_device]
    r = sub.add_parser(
        "respond", parents=[common], help="apply a response action to a device",
        description="Apply ACTION on the running controller (POST /api/v1/responses), with the "
                    "action's fields from --param (see docs/playbooks.md, 'Actions')."
                    + (f" Examples: {examples}." if examples else ""))
    r.add_argument("action", metavar="ACTION", choices=response_actions(),
                   help="one of: " + ", ".join(response_actions()))
    r.add_argument("device", metavar="DEVICE",
                   help="the device: its inventory name, MAC or IP address"
                        + (f"; '-' for {', '.join(deviceless)}, which takes its address from --param ip=..."
                           if deviceless else ""))
    response_options(r)
    r.add_argument("--param", metavar="KEY=VALUE", action="append", default=[],
                   help="an action field; VALUE is read as JSON when it is JSON (1000, true, "
                        "[22,23], {...}), else as a string. Repeat for several fields")

    rel = sub.add_parser(
        "release", parents=[common], help="end a response early",
        description="End the active response ID now and remove its rules "
                    "(DELETE /api/v1/responses/ID). 'iotguard responses' lists the ids.")
    rel.add_argument("id", metavar="ID", help="the response id")
    rel.add_argument("--reason", metavar="TEXT", help="why; recorded in the audit log")

    sub.add_parser(
        "pending", parents=[common], help="list the responses awaiting approval",
        description="List the responses that playbooks in 'mode: approve' decided and that wait for an "
                    "operator (GET /api/v1/responses/pending), with the time left to approve each; "
                    "unapproved ones are denied when it runs out (responses.approve_within).")
    for verb, what in (("approve", "install a pending response now; its ttl starts then"),
                       ("deny", "drop a pending response; nothing is installed")):
        d = sub.add_parser(verb, parents=[common], help=what,
                           description=f"{verb.capitalize()} the pending response ID "
                                       f"(POST /api/v1/responses/ID/{verb}): {what}. The audit log records "
                                       "who and when.")
        d.add_argument("id", metavar="ID", help="the response id ('iotguard pending' lists them)")
        d.add_argument("--by", metavar="NAME", help="who decides, for the audit log (default: your user name)")
        d.add_argument("--reason", metavar="TEXT", help="why; recorded in the audit log")

    sub.add_parser(
        "responses", parents=[common], help="list the active responses",
        description="List the running controller's active responses (GET /api/v1/responses): "
                    "id, action, device (MAC, or the address for block_ip), mode, time left, "
                    "playbook ('-' for manual ones) and the switches that confirmed the rules.")

    au = sub.add_parser(
        "audit", parents=[common], help="show the response audit log",
        description="Print the running controller's response audit log (GET /api/v1/audit), one "
                    "line per event, oldest first: time, event, action, response id, outcome.")
    au.add_argument("--since", metavar="WHEN",
                    help="only events from WHEN on: unix seconds, or a time ago like -10m (or 10m), "
                         "-2h, -1d (default: the controller's recent events)")


def _port(value: int | None, what: str) -> int | None:
    if value is not None and not 1 <= value <= 65535:
        raise ConfigError("<command line>", None, what, f"port {value} is not in 1..65535")
    return value


def effective_config(args) -> Config:
    config = load_config(args.config) if args.config else Config()
    overrides = {}
    if _port(args.ofp_port, "--ofp-port") is not None:
        overrides["ofp_port"] = args.ofp_port
    if _port(args.api_port, "--api-port") is not None:
        overrides["api_port"] = args.api_port
    if args.state_dir:
        overrides["state_dir"] = os.path.abspath(args.state_dir)
    return dataclasses.replace(config, **overrides)


def _check_listen(host: str, port: int, what: str) -> None:
    """Fail early and clearly when a port is taken (the framework would only log it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot listen for {what} on {host}:{port}: {e.strerror}") from None


def prepare_state(config: Config) -> None:
    """Create the state directory and the API token before the framework starts."""
    try:
        os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
        load_or_create_token(config.api_token, config.state_dir)
    except OSError as e:
        raise OSError(f"cannot use state directory {config.state_dir}: {e.strerror or e}") from None


def check_playbooks(config: Config) -> str | None:
    """Every problem of the configured playbooks, or None: the controller must not start
    with a set it would refuse on reload."""
    from controller.response import playbook as pb
    missing = [p for p in config.playbooks if not os.path.exists(p)]
    if missing:
        return "\n".join(f"{p}: responses.playbooks: no such file or directory" for p in missing)
    hosts = {d.name for d in config.devices} | {ip for d in config.devices for ip in d.ips}
    tags = {t for d in config.devices for t in d.tags}
    try:
        pb.load_playbooks(config.playbooks, known_hosts=hosts if config.devices else None,
                          known_tags=tags if config.devices else None, strict=False)
    except pb.PlaybookError as e:
        return str(e)
    return None


def cmd_run(args) -> int:
    config = effective_config(args)
    problems = check_playbooks(config)
    if problems:
        print(f"iotguard: the playbooks are invalid; not starting:\n{problems}", file=sys.stderr)
        return 2
    prepare_state(config)
    from controller.core import LOW_DISK, state_free_bytes
    free = state_free_bytes(config.state_dir)
    if free is not None and free < LOW_DISK:
        print(f"iotguard: warning: the state directory {config.state_dir} has only {free} bytes free; "
              "responses and the audit log may not be written (forwarding will go on)", file=sys.stderr)
    from controller.response.state import StateError, guard
    try:
        guard(config.state_dir)
    except StateError as e:
        print(f"iotguard: {e}", file=sys.stderr)
        return 2
    _check_listen(config.ofp_host, config.ofp_port, "OpenFlow switches")
    _check_listen(config.api_host, config.api_port, "the REST API")
    if config.metrics_port:
        _check_listen(config.metrics_host, config.metrics_port, "Prometheus metrics (metrics.port; 0 disables)")
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from controller import app  # the framework loads only when we run
    from controller.openflow import compat

    stopping: list[int] = []

    def shutdown(signum, _frame):
        if stopping:        # a second signal while the first one shuts down: nothing more to do
            return
        stopping.append(signum)
        logging.getLogger("iotguard").info("%s: shutting down", signal.Signals(signum).name)
        if app.INSTANCE is not None:
            app.INSTANCE.stop_serving()
        logging.shutdown()
        # The framework's run_apps cannot stop native hub threads; all our
        # state is flushed above, so leave without waiting for them.
        os._exit(0)

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)
    app.configure(config, record=os.path.abspath(args.record) if args.record else None)
    compat.run_apps(["controller.app"], config.ofp_host, config.ofp_port)
    return 0


def cmd_replay(args) -> int:
    import json
    from controller.detection.recording import RecordError, replay
    sources = [s for s, v in (("FILE", args.file), ("--pcap", args.pcap), ("--conn-log", args.conn_log))
               if v is not None]
    if len(sources) > 1:
        raise UsageError(f"replay takes one of a recording FILE, --pcap CAPTURE or --conn-log CONN_LOG, "
                         f"not {' and '.join(sources)}")
    if args.pcap is not None or args.conn_log is not None:
        return cmd_replay_pcap(args)
    if args.file is None:
        raise UsageError("replay needs a recording FILE, --pcap CAPTURE or --conn-log CONN_LOG "
                         "(see 'iotguard replay --help')")
    used = [o for o, v in (("--devices", args.devices), ("--windows", args.windows), ("--json", args.json),
                           ("--learn", args.learn), ("--baselines", args.baselines),
                           ("--save-baselines", args.save_baselines)) if v not in (None, False)]
    if used:
        raise UsageError(f"{', '.join(used)}: only with 'replay --pcap CAPTURE' or '--conn-log CONN_LOG'")
    config = load_config(args.config) if args.config else Config()
    try:
        with open(args.file, encoding="utf-8") as f:
            for alert in replay(f, config, source=args.file):
                print(json.dumps(alert, sort_keys=True), flush=True)
    except RecordError as e:
        print(f"iotguard: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_replay_pcap(args) -> int:
    """`replay --pcap` and `replay --conn-log`: the same switch emulation, the same summary."""
    from controller.config import load_devices
    from controller.connreplay import replay_conn_log
    from controller.pcapreplay import CaptureError, replay_pcap, with_learning
    config = load_config(args.config) if args.config else Config()
    if args.devices:
        config = dataclasses.replace(config, devices=load_devices(args.devices))
    try:
        config = with_learning(config, args.learn)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.save_baselines is not None:        # before the replay, not after it: nothing lost
        where = os.path.dirname(os.path.abspath(args.save_baselines))
        if os.path.isdir(args.save_baselines) or not os.path.isdir(where) or not os.access(where, os.W_OK):
            raise UsageError(f"--save-baselines {args.save_baselines}: cannot write there "
                             f"({'a directory' if os.path.isdir(args.save_baselines) else 'no writable directory ' + where})")
    log = logging.getLogger("iotguard")
    level = log.level
    log.setLevel(logging.ERROR)   # the summary says it; no ALERT log lines
    try:
        if args.conn_log is not None:
            result = replay_conn_log(args.conn_log, config, baselines=args.baselines,
                                     save_baselines=args.save_baselines)
        else:
            result = replay_pcap(args.pcap, config, baselines=args.baselines, save_baselines=args.save_baselines)
    except CaptureError as e:
        print(f"iotguard: {e}", file=sys.stderr)
        return 2
    finally:
        log.setLevel(level)       # main() may be called again in the same process (tests)
    for w in result.warnings:
        print(f"iotguard: warning: {w}", file=sys.stderr)
    out = result.to_dict()
    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True))
    else:
        print_pcap_summary(out, windows=args.windows)
    return 0


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def print_pcap_summary(r: dict, windows: bool = False) -> None:
    """The human form of `replay --pcap` and `--conn-log`: what was replayed, then one row per device."""
    sw = r["switch"]
    b = r["baselines"]
    loaded = (f"; {b['devices']} device{'' if b['devices'] == 1 else 's'} judged from the first frame by the "
              f"baselines in {b['loaded_from']}" if b["loaded_from"] else "")
    print(f"{r['file']}: {r[r['unit']]:,} {r['unit']} over {r['duration_s']:,.0f} s from {_utc(r['start'])}; "
          f"{r['windows']:,} windows of {r['poll_interval_s']:g} s, learning the first "
          f"{r['learn_seconds']:g} s{loaded}")
    print(f"switch: {sw['packet_ins']:,} packet-ins, {sw['flows_installed']:,} flows installed, "
          f"{sw['flows_expired']:,} idled out ({r['idle_timeout_s']} s), "
          f"{sw['dropped_by_packet_in_meter']:,} dropped by the packet-in meter"
          + (f", {sw['unparsed_frames']:,} frames too short to parse" if sw["unparsed_frames"] else ""))
    rows = []
    for d in r["devices"]:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(d["alert_kinds"].items())) or "-"
        rows.append([d["name"], d["mac"], ",".join(d["tags"]) or "-", d["windows"], d["packets"],
                     "excluded" if d["excluded"] else d["alerts"],
                     "-" if d["excluded"] else len(d["flagged_windows"]), "-" if d["excluded"] else kinds])
    print()
    _table(["DEVICE", "MAC", "TAGS", "WINDOWS", "PACKETS", "ALERTS", "FLAGGED", "KINDS"], rows)
    if b["saved_to"]:
        print(f"baselines saved to {b['saved_to']} (load them with --baselines, or as iotguard run's state file)")
    uncounted = [d for d in r["devices"] if d["frames_before_located"]]
    for d in uncounted:
        n = d["frames_before_located"]
        print(f"note: {n} frame{'' if n == 1 else 's'} to {d['name']} came before it sent any: "
              "flooded, not counted (a switch does not know its port yet)")
    if not windows:
        return
    # One line per alert where it was raised; the later windows that kept it open (an alert
    # is updated, not repeated, while its device stays anomalous) are summed up under it.
    raised: dict[str, list] = {}
    for d in r["devices"]:
        for w in d["flagged_windows"]:
            for a in w["alerts"]:
                entry = raised.setdefault(a["id"], [w["end"], d["name"], a, []])
                if not a["new"]:
                    entry[3].append(w["end"])
    if raised:
        print()
    for end, name, a, later in sorted(raised.values(), key=lambda e: e[0]):
        print(f"{_utc(end)} +{end - r['start']:,.0f}s  {name}  {a['kind']} (score {a['score']:g}, threshold "
              f"{a['threshold']:g}): {a['explanation']}")
        if later:
            print(f"    still open in {len(later)} more window{'' if len(later) == 1 else 's'}, "
                  f"until +{later[-1] - r['start']:,.0f}s")


def cmd_playbook(args) -> int:
    from controller.response.playbook import main as playbook_main
    if args.playbook_command == "reload":
        return cmd_playbook_reload(args)
    if args.playbook_command != "validate":
        _parser().parse_args(["playbook", "--help"])
        return 2
    argv = ["validate", *args.files] + (["--config", args.config] if args.config else [])
    return playbook_main(argv)


def cmd_config(args) -> int:
    """Validate a config as `iotguard run` would: the file, then the playbooks it names."""
    import json
    config = load_config(args.file)
    problems = check_playbooks(config)
    if problems:
        print(f"iotguard: the playbooks this configuration loads are invalid (run would refuse to "
              f"start):\n{problems}", file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(config), indent=1, default=str))
    return 0


def cmd_state(args) -> int:
    from controller.response import state
    config = load_config(args.config) if args.config else Config()
    state_dir = os.path.abspath(args.state_dir) if args.state_dir else config.state_dir
    if args.state_command == "repair":
        for line in state.repair(state_dir):
            print(line)
    report = state.check(state_dir)
    for line in report.lines():
        print(line)
    print("ok: the store has every active response the audit log shows" if report.ok else
          f"not ok: run 'iotguard state repair --state-dir {state_dir}' with the controller stopped")
    return 0 if report.ok else 1


def cmd_report(args) -> int:
    from controller.api.report import ReportError, write_report
    if (args.alert_id is None) == (not args.last):
        raise UsageError("give an ALERT_ID or --last (not both)")
    config = load_config(args.config) if args.config else Config()
    state_dir = os.path.abspath(args.state_dir) if args.state_dir else config.state_dir
    try:
        print(write_report(state_dir, args.alert_id, args.output))
    except ReportError as e:
        print(f"iotguard: {e}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------ API commands


class UsageError(ValueError):
    """A bad command-line value found after parsing (exit status 2)."""


def _api(args, method: str, path: str, body: Any = None) -> dict:
    """One call to the controller's API; its JSON object answer."""
    from controller.api.client import Client, ClientError, api_url, resolve_token
    config = load_config(args.config) if args.config else Config()
    token = resolve_token(args.token, config, args.state_dir)
    try:
        client = Client(api_url(config, args.api), token)
    except ValueError as e:
        raise UsageError(f"--api: {e}") from None
    answer = client.request(method, path, body)
    if not isinstance(answer, dict):
        raise ClientError(None, "bad_response", f"{method} {path}: expected a JSON object, got {answer!r:.80}")
    return answer


def _print_json(answer: Any) -> None:
    print(json.dumps(answer, indent=1, sort_keys=True))


def _table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def human_duration(seconds: Any) -> str:
    """9m58s; whole seconds, rounded down (a ttl is never longer than shown)."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds != seconds:
        return "-"
    left = max(0, int(seconds))
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size or out:
            out += f"{left // size}{unit}"
            left %= size
    return f"{out}{left}s"


def _device(r: dict) -> str:
    """The device's name when the controller knows it, else its MAC (or the blocked address)."""
    entity = r.get("entity") or {}
    return (entity.get("prefix") or r.get("device") or entity.get("mac") or entity.get("ip") or r.get("mac")
            or "-")


def _number(text: str) -> int | float | str:
    """Plain seconds as a number; anything else ('10m') as the API's duration string."""
    if re.fullmatch(r"[0-9]+", text):
        return int(text)
    return float(text) if re.fullmatch(r"[0-9]*\.[0-9]+", text) else text


def _json_value(text: str) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(name)
    try:
        return json.loads(text, parse_constant=no_constants)
    except ValueError:
        return text


def parse_params(items: list[str]) -> dict:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--param {item!r}: write KEY=VALUE, like kbps=1000")
        if key in params:
            raise UsageError(f"--param {key!r} is given twice")
        params[key] = _json_value(value)
    return params


def _respond(args, action: str, params: dict) -> int:
    body: dict[str, Any] = {"action": action}
    if args.device != "-":
        body["device"] = args.device
    elif REGISTRY.get(action).needs_device:
        deviceless = ", ".join(a.name for a in REGISTRY.installing() if not a.needs_device)
        raise UsageError(f"DEVICE '-' (no device) is only for {deviceless}")
    if args.ttl is not None:
        body["ttl"] = _number(args.ttl)
    if params:
        body["params"] = params
    if args.reason is not None:
        body["reason"] = args.reason
    if args.dry_run:
        body["dry_run"] = True
    answer = _api(args, "POST", "/api/v1/responses", body)
    actions = answer.get("actions") or []
    if args.json:
        _print_json(answer)
    else:
        by_id = {r.get("id"): r for r in answer.get("responses") or []}
        rows = []
        for a in actions:
            r = by_id.get(a.get("response_id"), {})
            rows.append([a.get("response_id"), a.get("action"), _device(r) if r else None,
                         a.get("mode"), a.get("outcome"), human_duration(r.get("ttl"))])
        _table(["ID", "ACTION", "DEVICE", "MODE", "OUTCOME", "TTL"], rows)
    failed = [a for a in actions if a.get("error")]
    for a in failed:
        print(f"iotguard: {a.get('action')} {a.get('outcome') or 'failed'}: {a['error']}", file=sys.stderr)
    return 1 if failed else 0


def cmd_shortcut(args) -> int:
    """`iotguard ACTION DEVICE`: an action with its own command, no parameters."""
    return _respond(args, args.shortcut, {})


def cmd_respond(args) -> int:
    return _respond(args, args.action, parse_params(args.param))


def cmd_release(args) -> int:
    body = {"reason": args.reason} if args.reason is not None else None
    answer = _api(args, "DELETE", f"/api/v1/responses/{quote(args.id, safe='')}", body)
    if args.json:
        _print_json(answer)
    else:
        print(f"released response {answer.get('released')}: {answer.get('rules_removed')} rules removed")
    return 0


def _listing(args, path: str, key: str, empty: str, header: list[str], row) -> int:
    """GET a list from the API and print it as a table (or its JSON with --json)."""
    answer = _api(args, "GET", path)
    if args.json:
        _print_json(answer)
        return 0
    items = answer.get(key) or []
    if not items:
        print(empty)
        return 0
    _table(header, [row(r) for r in items])
    return 0


def _confirmed(r: dict) -> str:
    confirmed, sent = r.get("confirmed") or [], r.get("dpids") or []
    switches = ",".join(str(d) for d in confirmed)
    if len(sent) > len(confirmed):
        switches += f" ({len(sent) - len(confirmed)} unconfirmed)"
    return switches.strip()


def cmd_responses(args) -> int:
    return _listing(args, "/api/v1/responses", "responses", "no active responses",
                    ["ID", "ACTION", "DEVICE", "MODE", "REMAINING", "PLAYBOOK", "CONFIRMED"],
                    lambda r: [r.get("id"), r.get("action"), _device(r), r.get("mode"),
                               human_duration(r.get("remaining")), r.get("playbook"), _confirmed(r)])


def cmd_pending(args) -> int:
    return _listing(args, "/api/v1/responses/pending", "pending", "no responses awaiting approval",
                    ["ID", "ACTION", "DEVICE", "TTL", "APPROVE WITHIN", "PLAYBOOK", "WHAT"],
                    lambda r: [r.get("id"), r.get("action"), _device(r), human_duration(r.get("ttl")),
                               human_duration(r.get("approve_within")), r.get("playbook"), r.get("summary") or ""])


def cmd_decide(args) -> int:
    """`iotguard approve ID` / `iotguard deny ID`."""
    body: dict[str, Any] = {"by": args.by or os.environ.get("SUDO_USER") or os.environ.get("USER") or "cli"}
    if args.reason is not None:
        body["reason"] = args.reason
    answer = _api(args, "POST", f"/api/v1/responses/{quote(args.id, safe='')}/{args.command}", body)
    if args.json:
        _print_json(answer)
    elif args.command == "approve":
        print(f"approved response {answer.get('approved')} as {answer.get('by')}: "
              f"{answer.get('rules_sent')} rules sent")
    else:
        print(f"denied response {answer.get('denied')} as {answer.get('by')}")
    return 0


def parse_since(text: str, now: float | None = None) -> float:
    """Unix seconds, or a time ago: -90 (seconds), -10m or 10m, -2h, -1d."""
    m = re.fullmatch(r"(-?)([0-9]+(?:\.[0-9]+)?)([smhd]?)", text.strip())
    if m is None:
        raise UsageError(f"--since {text!r}: give unix seconds (1700000000) or a time ago (-10m, -2h, -1d)")
    if not m.group(1) and not m.group(3):
        return float(m.group(2))
    size = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(3)]
    return (time.time() if now is None else now) - float(m.group(2)) * size


def _iso(t: Any) -> str:
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        return "-"
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def cmd_audit(args) -> int:
    path = "/api/v1/audit"
    if args.since is not None:
        path += "?since=" + f"{parse_since(args.since):.3f}".rstrip("0").rstrip(".")
    answer = _api(args, "GET", path)
    if args.json:
        _print_json(answer)
        return 0
    events = answer.get("events") or []
    if not events:
        print("no audit events")
        return 0
    header = ["TIME", "EVENT", "ACTION", "RESPONSE", "OUTCOME"]
    rows = [[_iso(e.get("time")), e.get("event"), e.get("action"), e.get("response_id"), e.get("outcome")]
            for e in events]
    if any(e.get("error") for e in events):
        header.append("ERROR")
        for row, e in zip(rows, events):
            row.append(e.get("error"))
    _table(header, rows)
    return 0


def _problem(p: Any) -> str:
    if not isinstance(p, dict):
        return str(p)
    where = ":".join(str(p[k]) for k in ("file", "line", "col") if p.get(k) is not None)
    text = ": ".join(str(p[k]) for k in ("field", "message") if p.get(k))
    return ": ".join(x for x in (where, text) if x) or json.dumps(p, sort_keys=True)


def cmd_playbook_reload(args) -> int:
    from controller.api.client import ClientError
    try:
        answer = _api(args, "POST", "/api/v1/playbooks/reload")
    except ClientError as e:
        if e.status != 422 or not isinstance(e.body, dict):
            raise
        print(f"iotguard: {e}", file=sys.stderr)
        for problem in e.body.get("problems") or []:
            print(_problem(problem), file=sys.stderr)
        return 2
    if args.json:
        _print_json(answer)
        return 0
    loaded = answer.get("loaded") or []
    print(f"loaded {len(loaded)} playbook{'' if len(loaded) == 1 else 's'}"
          + (": " + ", ".join(map(str, loaded)) if loaded else ""))
    for f in answer.get("files") or []:
        print(f"  from {f}")
    return 0


def _since_ago(argv: list[str]) -> list[str]:
    """`--since -10m` as `--since=-10m`: argparse would take -10m for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--":
            return out + argv[i:]
        if argv[i] == "--since" and i + 1 < len(argv) and re.fullmatch(r"-[0-9.]+[smhd]", argv[i + 1]):
            out.append(f"--since={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def cmd_demo(argv: list[str]) -> int:
    """The demo lives in the checkout's topologies/ (Mininet scripts, not installed code)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(root, "topologies", "demo.py")):
        print("iotguard demo: needs the source checkout (topologies/demo.py); run it from there "
              "with 'sudo make demo'", file=sys.stderr)
        return 2
    if root not in sys.path:
        sys.path.insert(0, root)
    from topologies.demo import main as demo_main
    return demo_main(argv)


def main(argv: list[str] | None = None) -> int:
    from controller.api.client import ClientError
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "demo":          # its own parser, so 'iotguard demo --help' is the demo's
        return cmd_demo(argv[1:])
    args = _parser().parse_args(_since_ago(argv))
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        if getattr(args, "shortcut", None):
            return cmd_shortcut(args)
        return {"run": cmd_run, "replay": cmd_replay, "playbook": cmd_playbook, "config": cmd_config,
                "respond": cmd_respond, "release": cmd_release, "pending": cmd_pending,
                "approve": cmd_decide, "deny": cmd_decide,
                "responses": cmd_responses, "audit": cmd_audit, "report": cmd_report,
                "state": cmd_state}[args.command](args)
    except ConfigError as e:
        print(f"iotguard: configuration error: {e}", file=sys.stderr)
        return 2
    except UsageError as e:
        print(f"iotguard: {e}", file=sys.stderr)
        return 2
    except ClientError as e:
        print(f"iotguard: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"iotguard: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
