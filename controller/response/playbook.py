"""Response playbooks: the YAML format, its validator, and trigger matching.

A playbook file is a mapping with one key, `playbooks`, holding a list (a
mapping leaves room for file-level keys later).  Each playbook says when it
fires (`when`: alert kinds, score, device selectors, feature conditions) and
what to do (`do`: an ordered list of actions, each a one-key mapping
`- ACTION: {params}`).  Format, defaults and how playbooks combine:
docs/playbooks.md; JSON Schema: playbooks/schema.json.

Validation collects every problem it can (all files, all playbooks, all
fields) so an operator fixes a file in one pass; each problem carries file,
line and column.  Nothing here compiles rules or runs actions: this module is
pure and the response engine consumes its frozen dataclasses.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import math
import operator
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterable, Sequence

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controller import yamlnodes
from controller.addresses import Subnets, ip_address
from controller.config import Device
from controller.detection.alert import DETECTED_KINDS, Alert, finite
from controller.detection.novelty import NOVELTY_VALUES
from controller.detection.scans import SCANNED
from controller.response.actions import REGISTRY
from controller.response.validation import (DEFAULT_TTL, MAX_TTL, REQUIRED, Checker, PlaybookError,
                                            Problem, Skip, child, duration, fmt_duration, host_name,
                                            mac_value, name_value, parse_record, port_value, tag_value)
from controller.telemetry.features import FEATURES, RX_PER_TX
from controller.yamlnodes import NAME_RE, join, short

__all__ = [
    "ALERT_KINDS", "CONDITION_FEATURES", "MODES", "DEFAULT_TTL", "MAX_TTL", "actions", "params_class",
    "Problem", "PlaybookError", "Condition", "Trigger", "Escalate",
    "Action", "Playbook", "matching", "playbook_files", "load_playbooks",
    "parse_playbooks", "cmd_playbook_validate", "main",
]

# Old private names, kept for the format's own parsers below.
_Checker, _Skip, _REQUIRED, _child = Checker, Skip, REQUIRED, child
_duration, _fmt, _host_name, _mac, _name, _port, _tag = (duration, fmt_duration, host_name, mac_value,
                                                          name_value, port_value, tag_value)

# what `when.kinds` may name: the kinds the detector raises (a manual response is its own
# one-action playbook, so no loaded playbook could ever fire for kind manual)
ALERT_KINDS: tuple[str, ...] = tuple(k.value for k in DETECTED_KINDS)
# The window features, the burst's own measure, and the novelty counts per horizon
# (new_internal_peers_60s, ...) that lateral_probe, port_probe and new_service alerts carry,
# the hosts an address_scan alert counted (scanned_hosts_5min), and rx_per_tx_bytes, bytes received per byte sent in the window (every anomaly window carries
# it), which tells a flood (about 1 or less) from a download's acknowledgements (many).
CONDITION_FEATURES: tuple[str, ...] = FEATURES + ("new_flows_per_s", RX_PER_TX) + NOVELTY_VALUES + (SCANNED,)
MODES: tuple[str, ...] = ("enforce", "dry-run", "approve")
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq}
DEFAULT_PRIORITY = 500


def actions() -> tuple[str, ...]:
    """The action names a playbook may use: the registry's (controller/response/actions/)."""
    return REGISTRY.names()


def params_class(action: str) -> type:
    """The parameters dataclass of a registered action."""
    return REGISTRY.get(action).Params


# --------------------------------------------------------------------------- the format


@dataclass(frozen=True)
class Condition:
    """`FEATURE OP NUMBER`; a value the alert does not carry never satisfies it."""

    feature: str
    op: str
    value: float

    def holds(self, observed: float | None) -> bool:
        return observed is not None and OPS[self.op](observed, self.value)

    def __str__(self) -> str:
        return f"{self.feature} {self.op} {self.value:g}"


_NO_DEVICE = Device("", None)


@dataclass(frozen=True)
class Trigger:
    """When a playbook fires: every given criterion must hold (a list matches any of its items)."""

    kinds: tuple[str, ...]
    min_score: float | None = None
    devices: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    macs: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    subnets: tuple[str, ...] = ()
    dst_ports: tuple[int, ...] = ()
    conditions: tuple[Condition, ...] = ()

    @cached_property  # written to __dict__ directly: works on a frozen dataclass
    def _networks(self) -> Subnets:
        return Subnets(self.subnets)

    def matches(self, alert: Alert, device: Device | None) -> bool:
        """Pure: does `alert` about `device` fire this trigger?

        Without a device (an outbreak handed over as a whole) no device selector holds.
        A device's class is its first tag ("unclassified" without tags), as in the detector.
        """
        if alert.kind.value not in self.kinds:
            return False
        if self.min_score is not None:
            score = finite(alert.score)
            if score is None or score < self.min_score:
                return False
        if device is None:
            device = _NO_DEVICE
        if self.devices and device.name not in self.devices:
            return False
        if self.tags and not set(device.tags) & set(self.tags):
            return False
        if self.classes and device.cls not in self.classes:
            return False
        if self.macs and device.mac not in self.macs:
            return False
        if self.ips or self.subnets:
            ips = [ip for ip in map(ip_address, device.ips) if ip is not None]
            if self.ips and not any(str(ip) in self.ips for ip in ips):
                return False
            if self.subnets and not any(ip in self._networks for ip in ips):
                return False
        if self.dst_ports:
            port = alert.value("top_port")
            if port is None or port not in self.dst_ports:
                return False
        return all(c.holds(alert.value(c.feature)) for c in self.conditions)


@dataclass(frozen=True)
class Escalate:
    """Repeat offenders: each repeat within `within` s multiplies the ttl by `factor`, up to `max_ttl`."""

    factor: float = 2.0
    within: int = 86400
    max_ttl: int = MAX_TTL


@dataclass(frozen=True)
class Action:
    kind: str                      # a registered action's name (controller/response/actions/)
    params: Any                    # its Params
    ttl: int | None = DEFAULT_TTL  # seconds; None for notify, which has nothing to expire
    escalate: Escalate | None = None
    line: int = field(default=0, compare=False, repr=False)

    def ttl_for(self, repeats: int) -> int | None:
        """The ttl after `repeats` earlier applications within the escalation window."""
        if self.ttl is None or self.escalate is None or repeats <= 0:
            return self.ttl
        try:
            grown = self.ttl * self.escalate.factor ** repeats
        except OverflowError:
            return self.escalate.max_ttl
        return int(min(grown, self.escalate.max_ttl))


@dataclass(frozen=True)
class Playbook:
    name: str
    when: Trigger
    do: tuple[Action, ...]
    description: str = ""
    mode: str = "enforce"          # enforce | dry-run | approve
    priority: int = DEFAULT_PRIORITY
    source: str = field(default="<string>", compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)
    disabled: str = field(default="", compare=False)   # why it never fires (it names what the inventory lacks)

    @property
    def dry_run(self) -> bool:
        return self.mode == "dry-run"


def matching(playbooks: Iterable[Playbook], alert: Alert, device: Device | None) -> list[Playbook]:
    """The playbooks `alert` fires for `device`, in execution order: priority desc, then name.
    A disabled playbook never fires."""
    return sorted((p for p in playbooks if not p.disabled and p.when.matches(alert, device)),
                  key=lambda p: (-p.priority, p.name))


_COND_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*([<>=!]+)\s*(\S+)\s*")


def _condition(c: _Checker, node: Node, path: str) -> Condition:
    """`FEATURE OP NUMBER`; a problem points at the offending token's column."""
    raw = c.text(node, path)
    m = _COND_RE.fullmatch(raw)
    if m is None:
        c.fail(node, path, f"expected 'FEATURE OP NUMBER' (like 'distinct_dst_ports > 50'), got {short(raw)}")
    feature, op, number = m.groups()
    if feature not in CONDITION_FEATURES:
        close = difflib.get_close_matches(feature, CONDITION_FEATURES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        c.fail(node, path, f"unknown feature {feature!r}{hint}; features: {', '.join(CONDITION_FEATURES)}",
               m.start(1))
    if op not in OPS:
        c.fail(node, path, f"bad operator {op!r}; use one of {' '.join(OPS)}", m.start(2))
    try:
        value = float(number.replace("_", ""))
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        c.fail(node, path, f"not a number: {short(number)}", m.start(3))
    return Condition(feature, op, value)


_WHEN = ("kinds", "min_score", "devices", "tags", "classes", "macs", "ips", "subnets", "dst_ports",
         "conditions")


def _trigger(c: _Checker, node: Node, path: str) -> Trigger:
    nonempty = "must not be empty (omit it to match every device)"

    def lst(convert: Callable[..., Any], what: str, empty: str = nonempty) -> Callable[[Node, str], Any]:
        return lambda n, p: c.items(n, p, lambda n2, p2: convert(c, n2, p2), empty, what)

    spec = {
        "kinds": (lst(lambda c, n, p: c.choice(n, p, ALERT_KINDS, "alert kind"), "kind",
                      "must list at least one alert kind"), _REQUIRED),
        "min_score": (lambda n, p: c.number(n, p, 0, 1e9), None),
        "devices": (lst(_host_name, "device"), ()),
        "tags": (lst(_tag, "tag"), ()),
        "classes": (lst(_tag, "class"), ()),
        "macs": (lst(_mac, "MAC"), ()),
        "ips": (lst(lambda c, n, p: c.host(n, p), "IP"), ()),
        "subnets": (lst(lambda c, n, p: c.cidr(n, p), "subnet"), ()),
        "dst_ports": (lst(_port, "port"), ()),
        "conditions": (lst(_condition, "condition", "must not be empty (omit it for no condition)"), ()),
    }
    return Trigger(**c.section(node, path, spec))


def _escalate(c: _Checker, node: Node, path: str) -> Escalate:
    spec = {"factor": (lambda n, p: c.number(n, p, 1, 100), 2.0),
            "within": (lambda n, p: _duration(c, n, p), 86400),
            "max_ttl": (lambda n, p: _duration(c, n, p), MAX_TTL)}
    return Escalate(**c.section(node, path, spec, null_ok=True))


def _action(c: Checker, node: Node, path: str) -> Action:
    if not isinstance(node, MappingNode):
        c.fail(node, path, f"an action is a mapping '- ACTION: {{...}}', got {c.got(node)}")
    if len(node.value) != 1:
        keys = [str(k.value) for k, _ in node.value if isinstance(k, ScalarNode)]
        c.fail(node, path, "an action is a mapping with exactly one key, the action's name; got "
                           + (", ".join(keys) if keys else "none") + " (one list item per action)")
    key, body = node.value[0]
    kind = c.choice(key, path, actions(), "action") if isinstance(key, ScalarNode) else c.text(key, path)
    action = REGISTRY.get(kind)
    path = join(path, kind)
    extra: dict[str, tuple[Callable[[Node, str], Any], Any]] = {}
    if action.expires:
        extra = {"ttl": (lambda n, p: duration(c, n, p), DEFAULT_TTL),
                 "escalate": (lambda n, p: _escalate(c, n, p), None)}
    values = parse_record(c, action.Params, body, path, null_ok=True, extra=extra)
    ttl, esc = values.pop("ttl", None), values.pop("escalate", None)
    values = action.check(c, body, path, values)
    if esc is not None and esc.max_ttl < ttl:
        c.fail(child(child(body, "escalate"), "max_ttl"), join(path, "escalate.max_ttl"),
               f"max_ttl {fmt_duration(esc.max_ttl)} is shorter than the ttl {fmt_duration(ttl)}")
    return Action(kind, action.Params(**values), ttl, esc, line=node.start_mark.line + 1)


_PLAYBOOK = ("name", "description", "mode", "priority", "when", "do")


def _playbook(c: _Checker, node: Node, path: str) -> Playbook:
    def text(n: Node, p: str) -> str:
        value = c.text(n, p)
        if len(value) > 1000:
            c.fail(n, p, f"is longer than 1000 characters ({len(value)})")
        return value

    spec = {
        "name": (lambda n, p: _name(c, n, p), _REQUIRED),
        "description": (text, ""),
        "mode": (lambda n, p: c.choice(n, p, MODES, "mode"), "enforce"),
        "priority": (lambda n, p: c.integer(n, p, 1, 1000), DEFAULT_PRIORITY),
        "when": (lambda n, p: _trigger(c, n, p), _REQUIRED),
        "do": (lambda n, p: c.items(n, p, lambda n2, p2: _action(c, n2, p2),
                                     "must list at least one action"), _REQUIRED),
    }
    return Playbook(**c.section(node, path, spec), source=c.source, line=node.start_mark.line + 1)


def _parse(text: str, source: str, problems: list[Problem], names: dict[str, tuple[str, int]],
           known_hosts: set[str] | None, known_tags: set[str] | None, strict: bool = True,
           warnings: list[Problem] | None = None) -> list[Playbook]:
    """Playbooks of one file; problems are appended, names (name -> file, line) are shared across files.

    Not `strict`: a host or tag the inventory lacks is a warning (appended to
    `warnings`) and disables that playbook instead of failing the file."""
    c = _Checker(source, problems, known_hosts, known_tags, strict)
    try:
        root = yamlnodes.compose(text)
    except yamlnodes.YamlProblem as e:
        problems.append(Problem(source, e.line, e.column, None, e.message))
        return []
    if root is None:
        problems.append(Problem(source, None, None, None, "no playbooks: expected a 'playbooks:' list"))
        return []
    unsafe = list(c.bad_tags(root))
    for tnode, tpath, message in unsafe:
        c.soft(tnode, tpath, message)
    if unsafe:  # an unsafe file is not read any further
        return []
    if isinstance(root, SequenceNode):
        c.soft(root, "", "the top level must be a mapping with a 'playbooks:' list, got a list "
                         "(put the list under 'playbooks:')")
        return []
    out: list[Playbook] = []
    try:
        top = c.mapping(root, "", ("playbooks",), null_ok=False)
        if "playbooks" not in top:
            c.fail(root, "playbooks", "required key 'playbooks' is missing")
        for i, pnode in enumerate(c.sequence(top["playbooks"], "playbooks")):
            path = f"playbooks[{i}]"
            unique = _claim_name(c, names, pnode, path)  # even if the playbook is otherwise invalid
            seen = len(c.warnings)
            try:
                playbook = _playbook(c, pnode, path)
            except _Skip:
                continue
            if len(c.warnings) > seen:
                why = "; ".join(w.message.split(":", 1)[0] for w in c.warnings[seen:])
                playbook = dataclasses.replace(playbook, disabled=why)
            if unique:
                out.append(playbook)
    except _Skip:
        pass
    if warnings is not None:
        warnings += c.warnings
    return out


def _claim_name(c: _Checker, names: dict[str, tuple[str, int]], pnode: Node, path: str) -> bool:
    """Register the playbook's name; False (and a problem) if another playbook has it."""
    node = _child(pnode, "name")
    if not isinstance(node, ScalarNode) or not NAME_RE.fullmatch(node.value):
        return True  # _playbook reports it
    first = names.get(node.value)
    if first is not None:
        where = f"line {first[1]}" if first[0] == c.source else f"{first[0]}:{first[1]}"
        c.soft(node, f"{path}.name", f"duplicate playbook name {node.value!r} (first on {where})")
        return False
    names[node.value] = (c.source, node.start_mark.line + 1)
    return True


# --------------------------------------------------------------------------- entry points


def playbook_files(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Each path as given; a directory stands for its *.yaml and *.yml entries, sorted."""
    return _listing(paths)[0]


def _listing(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[str], list[Problem], list[Problem]]:
    """(files to read, problems, warnings): every entry of a directory is read or reported.

    A *.yaml or *.yml entry that is not a readable regular file (a dangling or looping
    link, a FIFO, a device, a directory) is a problem; any other entry is a warning
    ("ignored"), so nothing is skipped silently."""
    files: list[str] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for p in map(os.fspath, paths):
        if not os.path.isdir(p):
            files.append(p)
            continue
        try:
            entries = sorted(os.listdir(p))
        except OSError as e:
            problems.append(Problem(p, None, None, None, f"cannot list the directory: {e.strerror}"))
            continue
        for name in entries:
            full = os.path.join(p, name)
            playbook = name.endswith((".yaml", ".yml"))
            kind = _entry_kind(full)
            if playbook and kind == "file":
                files.append(full)
            elif playbook:
                problems.append(Problem(full, None, None, None, f"not a playbook file: {kind}"))
            elif not (name.startswith(".") or kind == "file" and name.endswith(_COMPANIONS)):
                warnings.append(Problem(full, None, None, None, f"ignored: {kind}, not a *.yaml or *.yml file"
                                        if kind != "file" else "ignored: not a *.yaml or *.yml file"))
    return files, problems, warnings


_COMPANIONS = (".json", ".md", ".txt", ".rst")   # a schema or notes beside the playbooks: not reported


def _entry_kind(path: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "a dangling symbolic link" if os.path.islink(path) else "gone"
    except OSError as e:
        return "a symbolic link loop" if e.errno == errno.ELOOP else f"unreadable ({e.strerror})"
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        return "a sub-directory (its files are not read)"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO"
    return "a device or socket"


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda q: (q.line or 0, q.column or 0))


def _load(paths: Iterable[str | os.PathLike[str]], known_hosts: set[str] | None,
          known_tags: set[str] | None, strict: bool = True,
          warnings: list[Problem] | None = None) -> tuple[dict[str, list[Playbook]], list[Problem]]:
    names: dict[str, tuple[str, int]] = {}
    by_file: dict[str, list[Playbook]] = {}
    files, problems, ignored = _listing(paths)
    if warnings is not None:
        warnings += ignored
    for source in files:
        found: list[Problem] = []
        try:
            text = yamlnodes.read_text(source)
        except yamlnodes.YamlProblem as e:
            found.append(Problem(source, e.line, e.column, None, e.message))
        else:
            by_file[source] = _parse(text, source, found, names, known_hosts, known_tags, strict, warnings)
        problems += _sorted(found)
    return by_file, problems


def load_playbooks(paths: Sequence[str | os.PathLike[str]], known_hosts: set[str] | None = None,
                   known_tags: set[str] | None = None, *, strict: bool = True,
                   warnings: list[Problem] | None = None, files: list[str] | None = None) -> list[Playbook]:
    """Every playbook in `paths` (files or directories), in file order; PlaybookError lists all problems.

    With `known_hosts` / `known_tags`, host names and tags must be among them: with
    `strict` an unknown one is a problem; without, it is a warning (appended to
    `warnings`) and that playbook is returned `disabled`.  `files` gets the files read
    (a directory is listed once: what is reported is what was loaded).
    """
    by_file, problems = _load(paths, known_hosts, known_tags, strict, warnings)
    if problems:
        raise PlaybookError(problems)
    if files is not None:
        files += list(by_file)
    return [p for ps in by_file.values() for p in ps]


def parse_playbooks(text: str, source: str = "<string>", known_hosts: set[str] | None = None,
                    known_tags: set[str] | None = None) -> list[Playbook]:
    """Like load_playbooks for one file's text (the API's reload, tests)."""
    problems: list[Problem] = []
    playbooks = _parse(text, source, problems, {}, known_hosts, known_tags)
    if problems:
        raise PlaybookError(_sorted(problems))
    return playbooks


def cmd_playbook_validate(files: Sequence[str], known_hosts: set[str] | None = None,
                          known_tags: set[str] | None = None, strict: bool = False) -> int:
    """`iotguard playbook validate FILE...`: 0 and a line per file, or 2 and every problem.

    Warnings (hosts or tags the inventory lacks, ignored directory entries) are printed
    to stderr; a playbook with one is disabled.  `strict` makes them problems."""
    warnings: list[Problem] = []
    by_file, problems = _load(files, known_hosts, known_tags, strict, warnings)
    if strict:
        problems = sorted(problems + warnings, key=lambda q: (q.file, q.line or 0, q.column or 0))
        warnings = []
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        n_files = len({q.file for q in problems})
        print(f"iotguard: {len(problems)} problem{'s' * (len(problems) != 1)} in {n_files} "
              f"file{'s' * (n_files != 1)}", file=sys.stderr)
        return 2
    if not by_file:
        print("iotguard: no playbook files found", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for source, playbooks in by_file.items():
        listed = ", ".join(f"{p.name} ({p.mode}, priority {p.priority}, {len(p.do)} "
                           f"action{'s' * (len(p.do) != 1)}" + (f"; DISABLED: {p.disabled}" if p.disabled else "")
                           + ")" for p in playbooks)
        print(f"{source}: ok, {len(playbooks)} playbook{'s' * (len(playbooks) != 1)}"
              + (f": {listed}" if listed else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m controller.response.playbook validate [--config FILE] FILE...`."""
    parser = argparse.ArgumentParser(prog="python -m controller.response.playbook",
                                     description="Validate iotguard response playbooks (docs/playbooks.md).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    val = sub.add_parser("validate", help="check playbook files and print every problem",
                         description="Check playbook files (a directory stands for its *.yaml files). "
                                     "Exit 0 with a line per file, or 2 with FILE:LINE:COL: problems.")
    val.add_argument("files", nargs="+", metavar="FILE")
    val.add_argument("--config", metavar="FILE",
                     help="iotguard config whose device inventory names the known hosts and tags")
    val.add_argument("--strict", action="store_true",
                     help="treat warnings as problems: a host or tag the inventory lacks (which "
                          "otherwise disables that playbook) and ignored directory entries")
    args = parser.parse_args(argv)
    hosts = tags = None
    if args.config:
        from controller.config import ConfigError, load_config
        try:
            config = load_config(args.config)
        except ConfigError as e:
            print(f"iotguard: configuration error: {e}", file=sys.stderr)
            return 2
        hosts = {d.name for d in config.devices}
        tags = {t for d in config.devices for t in d.tags}
    return cmd_playbook_validate(args.files, hosts, tags, args.strict)


if __name__ == "__main__":
    sys.exit(main())
