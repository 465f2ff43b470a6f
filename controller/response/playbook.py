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
import difflib
import ipaddress
import math
import operator
import os
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterable, Mapping, NoReturn, Sequence, Union
from urllib.parse import urlsplit

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controller import yamlnodes
from controller.addresses import Subnets, ip_address
from controller.config import Device
from controller.detection.alert import DETECTED_KINDS, Alert, finite
from controller.telemetry.features import FEATURES
from controller.yamlnodes import NAME_RE, TAG_RE, join, normalise_mac, short

__all__ = [
    "ALERT_KINDS", "ACTIONS", "CONDITION_FEATURES", "MODES", "DEFAULT_TTL", "MAX_TTL", "PARAMS",
    "Problem", "PlaybookError", "Condition", "Trigger", "AllowRule", "Quarantine",
    "BlockLateral", "Redirect", "RateLimit", "BlockIp", "Mirror", "Notify", "Escalate",
    "Action", "Playbook", "matching", "playbook_files", "load_playbooks",
    "parse_playbooks", "cmd_playbook_validate", "main",
]

# what `when.kinds` may name: the kinds the detector raises (a manual response is its own
# one-action playbook, so no loaded playbook could ever fire for kind manual)
ALERT_KINDS: tuple[str, ...] = tuple(k.value for k in DETECTED_KINDS)
CONDITION_FEATURES: tuple[str, ...] = FEATURES + ("new_flows_per_s",)   # the burst's own measure
MODES: tuple[str, ...] = ("enforce", "dry-run")
PROTOS: tuple[str, ...] = ("tcp", "udp", "any")
ACTIONS: tuple[str, ...] = ("quarantine", "block_lateral", "redirect", "rate_limit", "block_ip",
                            "mirror", "notify")
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq}
DEFAULT_PRIORITY = 500
DEFAULT_TTL = 3600            # seconds, when an action gives no ttl
MAX_TTL = 30 * 86400
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
OFPP_MAX = 0xFFFFFF00         # highest physical OpenFlow 1.3 port number


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One validation problem; line and column are 1-based, None for a whole-file problem."""

    file: str
    line: int | None
    column: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}:{self.column}"
        return ": ".join([where] + ([self.field] if self.field else []) + [self.message])


class PlaybookError(ValueError):
    """Every problem found in a set of playbook files; str() gives one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__(list(problems))
        self.problems = list(problems)

    def __str__(self) -> str:
        return "\n".join(map(str, self.problems))


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
class AllowRule:
    """Traffic a quarantined device may still exchange with `host`."""

    host: str                      # inventory name or IP address
    ports: tuple[int, ...] = ()    # () = every port
    proto: str = "any"             # tcp | udp | any


@dataclass(frozen=True)
class Quarantine:
    allow: tuple[AllowRule, ...] = ()
    dhcp: bool = True
    dns: bool = True


@dataclass(frozen=True)
class BlockLateral:
    allow: tuple[str, ...] = ()    # hosts besides the gateway


@dataclass(frozen=True)
class Redirect:
    to: str
    ports: tuple[int, ...] = ()    # () = all traffic
    proto: str = "any"


@dataclass(frozen=True)
class RateLimit:
    kbps: int | None = None        # exactly one of kbps and pps
    pps: int | None = None


@dataclass(frozen=True)
class BlockIp:
    ip: str | None = None          # address or prefix; or
    target: str | None = None      # "alert": the alert's top remote address


@dataclass(frozen=True)
class Mirror:
    to: str | None = None                  # the IDS host; or
    port: tuple[int, int] | None = None    # (dpid, port)


@dataclass(frozen=True)
class Notify:
    log: bool = True
    webhook: str | None = None
    timeout_s: float = 5.0
    retries: int = 3


Params = Union[Quarantine, BlockLateral, Redirect, RateLimit, BlockIp, Mirror, Notify]
PARAMS: dict[str, type] = {
    "quarantine": Quarantine, "block_lateral": BlockLateral, "redirect": Redirect,
    "rate_limit": RateLimit, "block_ip": BlockIp, "mirror": Mirror, "notify": Notify}
assert tuple(PARAMS) == ACTIONS


@dataclass(frozen=True)
class Escalate:
    """Repeat offenders: each repeat within `within` s multiplies the ttl by `factor`, up to `max_ttl`."""

    factor: float = 2.0
    within: int = 86400
    max_ttl: int = MAX_TTL


@dataclass(frozen=True)
class Action:
    kind: str                      # one of ACTIONS
    params: Params
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
    mode: str = "enforce"          # enforce | dry-run
    priority: int = DEFAULT_PRIORITY
    source: str = field(default="<string>", compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)

    @property
    def dry_run(self) -> bool:
        return self.mode == "dry-run"


def matching(playbooks: Iterable[Playbook], alert: Alert, device: Device | None) -> list[Playbook]:
    """The playbooks `alert` fires for `device`, in execution order: priority desc, then name."""
    return sorted((p for p in playbooks if p.when.matches(alert, device)),
                  key=lambda p: (-p.priority, p.name))


# --------------------------------------------------------------------------- validation


class _Skip(Exception):
    """Abandons the value being parsed; its problem is already recorded."""


_REQUIRED = object()


class _Checker(yamlnodes.Nodes):
    """Accessors that record each problem (with its column) and go on with the next field."""

    def __init__(self, source: str, problems: list[Problem],
                 known_hosts: set[str] | None, known_tags: set[str] | None) -> None:
        super().__init__(source)
        self.problems = problems
        self.known_hosts = known_hosts
        self.known_tags = known_tags

    def soft(self, node: Node | None, field: str, message: str, offset: int = 0) -> None:
        line, col = (None, None) if node is None else yamlnodes.position(node)
        if node is not None and offset and _single_line(node):
            col += offset + (1 if node.style in ("'", '"') else 0)  # type: ignore[operator]
        self.problems.append(Problem(self.source, line, col, field or None, message))

    def fail(self, node: Node | None, field: str, message: str, offset: int = 0) -> NoReturn:
        self.soft(node, field, message, offset)
        raise _Skip

    def section(self, node: Node, path: str, spec: Mapping[str, tuple[Callable[[Node, str], Any], Any]],
                null_ok: bool = False) -> dict[str, Any]:
        """Convert every key of a mapping by `spec` (key -> (convert, default or _REQUIRED)).

        Every field is checked even after one fails; then the section fails as a whole.
        """
        m = self.mapping(node, path, tuple(spec), null_ok=null_ok)
        out: dict[str, Any] = {}
        bad = False
        for key, (convert, default) in spec.items():
            if key in m:
                try:
                    out[key] = convert(m[key], join(path, key))
                except _Skip:
                    bad = True
            elif default is _REQUIRED:
                self.soft(node, join(path, key), f"required key {key!r} is missing")
                bad = True
            else:
                out[key] = default
        if bad:
            raise _Skip
        return out

    def items(self, node: Node, path: str, convert: Callable[[Node, str], Any],
              empty: str | None = None, what: str | None = None) -> tuple[Any, ...]:
        """A list converted item by item; `empty` is the message for [], None if [] is fine.

        With `what` (a word for one item), a repeated item is a problem too.
        """
        nodes = self.sequence(node, path)
        if not nodes and empty:
            self.fail(node, path, empty)
        out: list[Any] = []
        seen: dict[Any, int] = {}
        bad = False
        for i, item in enumerate(nodes):
            sub = f"{path}[{i}]"
            try:
                value = convert(item, sub)
            except _Skip:
                bad = True
                continue
            key = repr(value)
            if what is not None and key in seen:
                self.soft(item, sub, f"duplicate {what} {short(str(value))} (also {path}[{seen[key]}])")
                bad = True
                continue
            seen[key] = i
            out.append(value)
        if bad:
            raise _Skip
        return tuple(out)

    def choice(self, node: Node, path: str, allowed: tuple[str, ...], what: str) -> str:
        raw = self.text(node, path)
        if raw not in allowed:
            close = difflib.get_close_matches(raw, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(node, path, f"unknown {what} {short(raw)}{hint}; expected one of: {', '.join(allowed)}")
        return raw


def _single_line(node: Node) -> bool:
    return (isinstance(node, ScalarNode) and node.start_mark.line == node.end_mark.line
            and node.style in (None, "'", '"'))


def _known(c: _Checker, node: Node, path: str, value: str, known: set[str] | None, what: str) -> str:
    if known is not None and value not in known:
        close = difflib.get_close_matches(value, sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        c.fail(node, path, f"unknown {what} {short(value)}{hint}")
    return value


def _name(c: _Checker, node: Node, path: str) -> str:
    raw = c.text(node, path)
    if not NAME_RE.fullmatch(raw):
        c.fail(node, path, f"invalid name {short(raw)}: use 1-64 of A-Z a-z 0-9 . _ -")
    return raw


def _host_name(c: _Checker, node: Node, path: str) -> str:
    return _known(c, node, path, _name(c, node, path), c.known_hosts, "host")


def _host_ref(c: _Checker, node: Node, path: str) -> str:
    """An inventory name or an IP address literal (normalised)."""
    raw = c.text(node, path)
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        pass
    if not NAME_RE.fullmatch(raw):
        c.fail(node, path, f"not a host name or IP address: {short(raw)}")
    return _known(c, node, path, raw, c.known_hosts, "host")


def _tag(c: _Checker, node: Node, path: str) -> str:
    raw = c.text(node, path)
    if not TAG_RE.fullmatch(raw):
        c.fail(node, path, f"invalid tag {short(raw)}: use 1-32 of a-z 0-9 _ -")
    known = None if c.known_tags is None else c.known_tags | {"unclassified"}
    return _known(c, node, path, raw, known, "tag")


def _mac(c: _Checker, node: Node, path: str) -> str:
    raw = c.text(node, path)
    mac = normalise_mac(raw)
    if mac is None:
        c.fail(node, path, f"not a MAC address (like 00:11:22:33:44:55): {short(raw)}")
    return mac


def _port(c: _Checker, node: Node, path: str) -> int:
    return c.integer(node, path, 1, 65535)


def _ports(c: _Checker, node: Node, path: str) -> tuple[int, ...]:
    return c.items(node, path, lambda n, p: _port(c, n, p), "must not be empty (omit it for every port)",
                   "port")


_DURATION_RE = re.compile(r"([0-9]{1,9})([smhd])")


def _duration(c: _Checker, node: Node, path: str, lo: int = 1, hi: int = MAX_TTL) -> int:
    """`30s`, `10m`, `2h`, `1d` -> seconds.  A bare number is refused: its unit would be a guess."""
    if node.tag in (yamlnodes.INT, yamlnodes.FLOAT):
        c.fail(node, path, f"a duration needs a unit (s, m, h or d): write {node.value}s for seconds")
    raw = c.text(node, path)
    m = _DURATION_RE.fullmatch(raw.strip())
    if m is None:
        c.fail(node, path, f"not a duration (like 30s, 10m, 2h, 1d): {short(raw)}")
    seconds = int(m.group(1)) * UNITS[m.group(2)]
    if not lo <= seconds <= hi:
        c.fail(node, path, f"must be between {_fmt(lo)} and {_fmt(hi)}, got {raw.strip()}")
    return seconds


def _fmt(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % UNITS[unit] == 0:
            return f"{seconds // UNITS[unit]}{unit}"
    return f"{seconds}s"


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


def _allow_rule(c: _Checker, node: Node, path: str) -> AllowRule:
    spec = {"host": (lambda n, p: _host_ref(c, n, p), _REQUIRED),
            "ports": (lambda n, p: _ports(c, n, p), ()),
            "proto": (lambda n, p: c.choice(n, p, PROTOS, "protocol"), "any")}
    return AllowRule(**c.section(node, path, spec))


def _url(c: _Checker, node: Node, path: str) -> str:
    raw = c.text(node, path)
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        c.fail(node, path, f"not a URL: {short(raw)}")
    if parts.scheme not in ("http", "https"):
        c.fail(node, path, f"webhook must be an http:// or https:// URL, got {short(raw)}")
    if not parts.hostname or any(ch.isspace() or ord(ch) < 32 for ch in raw) or len(raw) > 2048:
        c.fail(node, path, f"not a URL: {short(raw)}")
    return raw


_DPID_PORT_RE = re.compile(r"(0[xX][0-9a-fA-F]{1,16}|[0-9]{1,20}):([0-9]{1,10})")


def _switch_port(c: _Checker, node: Node, path: str) -> tuple[int, int]:
    """`DPID:PORT`, DPID decimal or 0x-hex.  `1:4` unquoted is a YAML base-60 int; its text is kept."""
    raw = c.text(node, path)
    m = _DPID_PORT_RE.fullmatch(raw)
    if m is None:
        c.fail(node, path, f"expected 'DPID:PORT' (like '1:4' or '0x1a:4'), got {short(raw)}")
    dpid, port = int(m.group(1), 0), int(m.group(2))
    if not 1 <= dpid < 2 ** 64:
        c.fail(node, path, f"datapath id must be between 1 and 2^64-1, got {m.group(1)}")
    if not 1 <= port <= OFPP_MAX:
        c.fail(node, path, f"port must be between 1 and {OFPP_MAX}, got {port}")
    return dpid, port


def _ip_or_cidr(c: _Checker, node: Node, path: str) -> str:
    raw = c.text(node, path)
    return c.cidr(node, path) if "/" in raw else c.host(node, path)


def _target(c: _Checker, node: Node, path: str) -> str:
    raw = c.text(node, path)
    if raw != "alert":
        c.fail(node, path, f"target must be 'alert' (the alert's top remote address), got {short(raw)}")
    return raw


def _one_of(c: _Checker, node: Node, path: str, values: dict[str, Any], keys: tuple[str, str]) -> None:
    given = [k for k in keys if values.get(k) is not None]
    if len(given) != 1:
        c.fail(node, path, f"give exactly one of {keys[0]!r} and {keys[1]!r}"
                           + (", not both" if given else ""))


def _params(c: _Checker, kind: str, node: Node, path: str, common: dict[str, Any]) -> Params:
    """Parse an action's body: its own keys plus, except for notify, `ttl` and `escalate`."""
    b = lambda n, p: c.boolean(n, p)  # noqa: E731
    hosts = lambda n, p: c.items(n, p, lambda n2, p2: _host_ref(c, n2, p2), None, "host")  # noqa: E731
    proto = (lambda n, p: c.choice(n, p, PROTOS, "protocol"), "any")
    specs: dict[str, dict[str, tuple[Callable[[Node, str], Any], Any]]] = {
        "quarantine": {"allow": (lambda n, p: c.items(n, p, lambda n2, p2: _allow_rule(c, n2, p2)), ()),
                       "dhcp": (b, True), "dns": (b, True)},
        "block_lateral": {"allow": (hosts, ())},
        "redirect": {"to": (lambda n, p: _host_ref(c, n, p), _REQUIRED),
                     "ports": (lambda n, p: _ports(c, n, p), ()), "proto": proto},
        "rate_limit": {"kbps": (lambda n, p: c.integer(n, p, 8, 10_000_000), None),
                       "pps": (lambda n, p: c.integer(n, p, 1, 10_000_000), None)},
        "block_ip": {"ip": (lambda n, p: _ip_or_cidr(c, n, p), None),
                     "target": (lambda n, p: _target(c, n, p), None)},
        "mirror": {"to": (lambda n, p: _host_ref(c, n, p), None),
                   "port": (lambda n, p: _switch_port(c, n, p), None)},
        "notify": {"log": (b, True), "webhook": (lambda n, p: _url(c, n, p), None),
                   "timeout_s": (lambda n, p: c.number(n, p, 0.1, 60), None),
                   "retries": (lambda n, p: c.integer(n, p, 0, 10), None)},
    }
    spec = dict(specs[kind])
    if kind != "notify":
        spec["ttl"] = (lambda n, p: _duration(c, n, p), DEFAULT_TTL)
        spec["escalate"] = (lambda n, p: _escalate(c, n, p), None)
    values = c.section(node, path, spec, null_ok=True)
    common.update(ttl=values.pop("ttl", None), escalate=values.pop("escalate", None))
    if kind == "rate_limit":
        _one_of(c, node, path, values, ("kbps", "pps"))
    elif kind == "block_ip":
        _one_of(c, node, path, values, ("ip", "target"))
    elif kind == "mirror":
        _one_of(c, node, path, values, ("to", "port"))
    elif kind == "notify":
        if values["webhook"] is None:
            for key in ("timeout_s", "retries"):
                if values[key] is not None:
                    c.fail(_child(node, key), join(path, key),
                           f"{key} applies to a webhook; add 'webhook' or remove it")
            if not values["log"]:
                c.fail(node, path, "notify does nothing: set log: true or give a webhook")
        values = {k: v for k, v in values.items() if v is not None}
    esc = common["escalate"]
    if esc is not None and esc.max_ttl < common["ttl"]:
        c.fail(_child(_child(node, "escalate"), "max_ttl"), join(path, "escalate.max_ttl"),
               f"max_ttl {_fmt(esc.max_ttl)} is shorter than the ttl {_fmt(common['ttl'])}")
    return PARAMS[kind](**values)  # type: ignore[no-any-return]


def _child(node: Node | None, key: str) -> Node | None:
    """The value node of `key` in a mapping node (the first, if repeated); None if absent."""
    if not isinstance(node, MappingNode):
        return None
    return next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == key), None)


def _escalate(c: _Checker, node: Node, path: str) -> Escalate:
    spec = {"factor": (lambda n, p: c.number(n, p, 1, 100), 2.0),
            "within": (lambda n, p: _duration(c, n, p), 86400),
            "max_ttl": (lambda n, p: _duration(c, n, p), MAX_TTL)}
    return Escalate(**c.section(node, path, spec, null_ok=True))


def _action(c: _Checker, node: Node, path: str) -> Action:
    if not isinstance(node, MappingNode):
        c.fail(node, path, f"an action is a mapping '- ACTION: {{...}}', got {c.got(node)}")
    if len(node.value) != 1:
        keys = [str(k.value) for k, _ in node.value if isinstance(k, ScalarNode)]
        c.fail(node, path, "an action is a mapping with exactly one key, the action's name; got "
                           + (", ".join(keys) if keys else "none") + " (one list item per action)")
    key, body = node.value[0]
    kind = c.choice(key, path, ACTIONS, "action") if isinstance(key, ScalarNode) else c.text(key, path)
    common: dict[str, Any] = {}
    params = _params(c, kind, body, join(path, kind), common)
    return Action(kind, params, common["ttl"], common["escalate"], line=node.start_mark.line + 1)


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
           known_hosts: set[str] | None, known_tags: set[str] | None) -> list[Playbook]:
    """Playbooks of one file; problems are appended, names (name -> file, line) are shared across files."""
    c = _Checker(source, problems, known_hosts, known_tags)
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
            try:
                playbook = _playbook(c, pnode, path)
            except _Skip:
                continue
            if unique:
                out.append(playbook)
    except _Skip:
        pass
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
    """Each path as given; a directory stands for its *.yaml and *.yml files, sorted."""
    out: list[str] = []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p)
                          if f.endswith((".yaml", ".yml")) and os.path.isfile(os.path.join(p, f)))
        else:
            out.append(p)
    return out


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda q: (q.line or 0, q.column or 0))


def _load(paths: Iterable[str | os.PathLike[str]], known_hosts: set[str] | None,
          known_tags: set[str] | None) -> tuple[dict[str, list[Playbook]], list[Problem]]:
    names: dict[str, tuple[str, int]] = {}
    by_file: dict[str, list[Playbook]] = {}
    problems: list[Problem] = []
    for source in playbook_files(paths):
        found: list[Problem] = []
        try:
            text = yamlnodes.read_text(source)
        except yamlnodes.YamlProblem as e:
            found.append(Problem(source, e.line, e.column, None, e.message))
        else:
            by_file[source] = _parse(text, source, found, names, known_hosts, known_tags)
        problems += _sorted(found)
    return by_file, problems


def load_playbooks(paths: Sequence[str | os.PathLike[str]], known_hosts: set[str] | None = None,
                   known_tags: set[str] | None = None) -> list[Playbook]:
    """Every playbook in `paths` (files or directories), in file order; PlaybookError lists all problems.

    With `known_hosts` / `known_tags`, host names and tags must be among them.
    """
    by_file, problems = _load(paths, known_hosts, known_tags)
    if problems:
        raise PlaybookError(problems)
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
                          known_tags: set[str] | None = None) -> int:
    """`iotguard playbook validate FILE...`: 0 and a line per file, or 2 and every problem."""
    by_file, problems = _load(files, known_hosts, known_tags)
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
    for source, playbooks in by_file.items():
        listed = ", ".join(f"{p.name} ({p.mode}, priority {p.priority}, {len(p.do)} "
                           f"action{'s' * (len(p.do) != 1)})" for p in playbooks)
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
    return cmd_playbook_validate(args.files, hosts, tags)


if __name__ == "__main__":
    sys.exit(main())
