"""The `iotguard` command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import socket
import sys

from controller import __version__
from controller.api import load_or_create_token
from controller.config import ConfigError, Config, load_config

DESCRIPTION = """\
iotguard: an OpenFlow 1.3 controller app that learns how each IoT device
normally behaves and answers misbehaviour with operator-written playbooks.

commands:
  run        start the controller (OpenFlow listener, stats polling, detection, REST API)
  replay     run the detector offline over a recording made with 'run --record'
  playbook   validate response playbooks ('iotguard playbook validate FILE...')
  config     validate a configuration file and print the effective settings

Run 'iotguard COMMAND --help' for a command's options."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iotguard", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"iotguard {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

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
        "replay", help="run the detector over a recording, offline",
        description="Feed a recording made with 'iotguard run --record' to a fresh detector (no "
                    "switch, no root) and print its alerts as JSON lines, oldest first. The "
                    "config's detection settings and device inventory apply.")
    rep.add_argument("file", metavar="FILE", help="recording (JSON lines)")
    rep.add_argument("--config", metavar="FILE", help="YAML configuration file")

    pb = sub.add_parser("playbook", help="work with response playbooks",
                        description="Response playbooks (see docs/playbooks.md).")
    pbsub = pb.add_subparsers(dest="playbook_command", metavar="SUBCOMMAND")
    val = pbsub.add_parser("validate", help="check playbook files",
                           description="Check every FILE (or the *.yaml files of a directory) and "
                                       "print each problem as FILE:LINE:COL: field: message. Exit "
                                       "status 2 if there is any.")
    val.add_argument("files", metavar="FILE", nargs="+")
    val.add_argument("--config", metavar="FILE",
                     help="check host names and tags against this config's device inventory")

    cfg = sub.add_parser("config", help="validate a configuration file",
                         description="Validate FILE and print the effective settings as JSON. "
                                     "Exit status 2 and a file:line: field: message error if invalid.")
    cfg.add_argument("file", metavar="FILE")
    return p


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


def cmd_run(args) -> int:
    config = effective_config(args)
    prepare_state(config)
    _check_listen(config.ofp_host, config.ofp_port, "OpenFlow switches")
    _check_listen(config.api_host, config.api_port, "the REST API")
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from controller import app, compat  # the framework loads only when we run

    def shutdown(signum, _frame):
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
    from controller.record import RecordError, replay
    config = load_config(args.config) if args.config else Config()
    try:
        with open(args.file, encoding="utf-8") as f:
            for alert in replay(f, config, source=args.file):
                print(json.dumps(alert, sort_keys=True), flush=True)
    except RecordError as e:
        print(f"iotguard: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_playbook(args) -> int:
    from controller.playbook import main as playbook_main
    if args.playbook_command != "validate":
        _parser().parse_args(["playbook", "--help"])
        return 2
    argv = ["validate", *args.files] + (["--config", args.config] if args.config else [])
    return playbook_main(argv)


def cmd_config(args) -> int:
    import json
    config = load_config(args.file)
    print(json.dumps(dataclasses.asdict(config), indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        return {"run": cmd_run, "replay": cmd_replay, "playbook": cmd_playbook,
                "config": cmd_config}[args.command](args)
    except ConfigError as e:
        print(f"iotguard: configuration error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"iotguard: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
