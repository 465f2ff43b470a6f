"""Validation of YAML nodes with file:line:col problems: the checker and the field types.

The playbook format (controller/response/playbook.py) and every response action's
parameters (controller/response/actions/) are validated with the same `Checker`,
so every problem names its file, line, column and field the same way, and every
field of a file is checked in one pass.  Field types (`Bool`, `Int`, `HostRef`,
`Ports`, ...) also give their JSON Schema, so playbooks/schema.json is generated
from the same source as the validator.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NoReturn, Sequence
from urllib.parse import urlsplit

from yaml.nodes import MappingNode, Node, ScalarNode

from controller import yamlnodes
from controller.yamlnodes import NAME_RE, TAG_RE, join, normalise_mac, position, short

PROTOS: tuple[str, ...] = ("tcp", "udp", "any")
DEFAULT_TTL = 3600            # seconds, when an action gives no ttl
MAX_TTL = 30 * 86400
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
OFPP_MAX = 0xFFFFFF00         # highest physical OpenFlow 1.3 port number




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



# --------------------------------------------------------------------------- the checker


class Skip(Exception):
    """Abandons the value being parsed; its problem is already recorded."""


REQUIRED = object()


class Checker(yamlnodes.Nodes):
    """Accessors that record each problem (with its column) and go on with the next field."""

    def __init__(self, source: str, problems: list[Problem],
                 known_hosts: set[str] | None, known_tags: set[str] | None, strict: bool = True) -> None:
        super().__init__(source)
        self.problems = problems
        self.known_hosts = known_hosts
        self.known_tags = known_tags
        self.strict = strict
        self.warnings: list[Problem] = []   # unknown hosts and tags when not strict: the playbook is disabled

    def soft(self, node: Node | None, field: str, message: str, offset: int = 0) -> None:
        line, col = (None, None) if node is None else yamlnodes.position(node)
        if node is not None and offset and single_line(node):
            col += offset + (1 if node.style in ("'", '"') else 0)  # type: ignore[operator]
        self.problems.append(Problem(self.source, line, col, field or None, message))

    def fail(self, node: Node | None, field: str, message: str, offset: int = 0) -> NoReturn:
        self.soft(node, field, message, offset)
        raise Skip

    def section(self, node: Node, path: str, spec: Mapping[str, tuple[Callable[[Node, str], Any], Any]],
                null_ok: bool = False) -> dict[str, Any]:
        """Convert every key of a mapping by `spec` (key -> (convert, default or REQUIRED)).

        Every field is checked even after one fails; then the section fails as a whole.
        """
        m = self.mapping(node, path, tuple(spec), null_ok=null_ok)
        out: dict[str, Any] = {}
        bad = False
        for key, (convert, default) in spec.items():
            if key in m:
                try:
                    out[key] = convert(m[key], join(path, key))
                except Skip:
                    bad = True
            elif default is REQUIRED:
                self.soft(node, join(path, key), f"required key {key!r} is missing")
                bad = True
            else:
                out[key] = default
        if bad:
            raise Skip
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
            except Skip:
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
            raise Skip
        return tuple(out)

    def choice(self, node: Node, path: str, allowed: tuple[str, ...], what: str) -> str:
        raw = self.text(node, path)
        if raw not in allowed:
            close = difflib.get_close_matches(raw, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(node, path, f"unknown {what} {short(raw)}{hint}; expected one of: {', '.join(allowed)}")
        return raw


def single_line(node: Node) -> bool:
    return (isinstance(node, ScalarNode) and node.start_mark.line == node.end_mark.line
            and node.style in (None, "'", '"'))


def known_value(c: Checker, node: Node, path: str, value: str, known: set[str] | None, what: str) -> str:
    if known is not None and value not in known:
        close = difflib.get_close_matches(value, sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if c.strict:
            c.fail(node, path, f"unknown {what} {short(value)}{hint}")
        line, col = position(node)
        c.warnings.append(Problem(c.source, line, col, path or None,
                                  f"unknown {what} {short(value)}{hint}: the inventory has no such {what}"))
    return value


def name_value(c: Checker, node: Node, path: str) -> str:
    raw = c.text(node, path)
    if not NAME_RE.fullmatch(raw):
        c.fail(node, path, f"invalid name {short(raw)}: use 1-64 of A-Z a-z 0-9 . _ -")
    return raw


def host_name(c: Checker, node: Node, path: str) -> str:
    return known_value(c, node, path, name_value(c, node, path), c.known_hosts, "host")


def host_ref(c: Checker, node: Node, path: str) -> str:
    """An inventory name or an IP address literal (normalised)."""
    raw = c.text(node, path)
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        pass
    if not NAME_RE.fullmatch(raw):
        c.fail(node, path, f"not a host name or IP address: {short(raw)}")
    return known_value(c, node, path, raw, c.known_hosts, "host")


def tag_value(c: Checker, node: Node, path: str) -> str:
    raw = c.text(node, path)
    if not TAG_RE.fullmatch(raw):
        c.fail(node, path, f"invalid tag {short(raw)}: use 1-32 of a-z 0-9 _ -")
    known = None if c.known_tags is None else c.known_tags | {"unclassified"}
    return known_value(c, node, path, raw, known, "tag")


def mac_value(c: Checker, node: Node, path: str) -> str:
    raw = c.text(node, path)
    mac = normalise_mac(raw)
    if mac is None:
        c.fail(node, path, f"not a MAC address (like 00:11:22:33:44:55): {short(raw)}")
    return mac


def port_value(c: Checker, node: Node, path: str) -> int:
    return c.integer(node, path, 1, 65535)


def port_list(c: Checker, node: Node, path: str) -> tuple[int, ...]:
    return c.items(node, path, lambda n, p: port_value(c, n, p), "must not be empty (omit it for every port)",
                   "port")


_DURATION_RE = re.compile(r"([0-9]{1,9})([smhd])")


def duration(c: Checker, node: Node, path: str, lo: int = 1, hi: int = MAX_TTL) -> int:
    """`30s`, `10m`, `2h`, `1d` -> seconds.  A bare number is refused: its unit would be a guess."""
    if node.tag in (yamlnodes.INT, yamlnodes.FLOAT):
        c.fail(node, path, f"a duration needs a unit (s, m, h or d): write {node.value}s for seconds")
    raw = c.text(node, path)
    m = _DURATION_RE.fullmatch(raw.strip())
    if m is None:
        c.fail(node, path, f"not a duration (like 30s, 10m, 2h, 1d): {short(raw)}")
    seconds = int(m.group(1)) * UNITS[m.group(2)]
    if not lo <= seconds <= hi:
        c.fail(node, path, f"must be between {fmt_duration(lo)} and {fmt_duration(hi)}, got {raw.strip()}")
    return seconds


def fmt_duration(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % UNITS[unit] == 0:
            return f"{seconds // UNITS[unit]}{unit}"
    return f"{seconds}s"


def url_value(c: Checker, node: Node, path: str) -> str:
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


def switch_port(c: Checker, node: Node, path: str) -> tuple[int, int]:
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


def ip_or_cidr(c: Checker, node: Node, path: str) -> str:
    raw = c.text(node, path)
    return c.cidr(node, path) if "/" in raw else c.host(node, path)


def alert_target(c: Checker, node: Node, path: str) -> str:
    raw = c.text(node, path)
    if raw != "alert":
        c.fail(node, path, f"target must be 'alert' (the alert's top remote address), got {short(raw)}")
    return raw


def one_of(c: Checker, node: Node, path: str, values: dict[str, Any], keys: tuple[str, str]) -> None:
    given = [k for k in keys if values.get(k) is not None]
    if len(given) != 1:
        c.fail(node, path, f"give exactly one of {keys[0]!r} and {keys[1]!r}"
                           + (", not both" if given else ""))


def child(node: Node | None, key: str) -> Node | None:
    """The value node of `key` in a mapping node (the first, if repeated); None if absent."""
    if not isinstance(node, MappingNode):
        return None
    return next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == key), None)




# --------------------------------------------------------------------------- field types
#
# A parameter dataclass declares each field with `param(TYPE, default)`; TYPE
# parses the YAML node (recording problems with their position) and gives the
# field's JSON Schema.  `parse_record` and `record_schema` walk the fields, so a
# response action's module declares its parameters once, in one dataclass.


class FieldType:
    """How one field is read from YAML and described in JSON Schema."""

    def parse(self, c: Checker, node: Node, path: str) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class Bool(FieldType):
    def parse(self, c: Checker, node: Node, path: str) -> bool:
        return c.boolean(node, path)

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class Int(FieldType):
    lo: int
    hi: int

    def parse(self, c: Checker, node: Node, path: str) -> int:
        return c.integer(node, path, self.lo, self.hi)

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.lo, "maximum": self.hi}


@dataclass(frozen=True)
class Number(FieldType):
    lo: float
    hi: float

    def parse(self, c: Checker, node: Node, path: str) -> float:
        return c.number(node, path, self.lo, self.hi)

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "minimum": self.lo, "maximum": self.hi}


@dataclass(frozen=True)
class Choice(FieldType):
    values: tuple[str, ...]
    what: str

    def parse(self, c: Checker, node: Node, path: str) -> str:
        return c.choice(node, path, self.values, self.what)

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.values)}


PROTO = Choice(PROTOS, "protocol")


@dataclass(frozen=True)
class HostRef(FieldType):
    """An inventory device name or an IP address."""

    def parse(self, c: Checker, node: Node, path: str) -> str:
        return host_ref(c, node, path)

    def schema(self) -> dict[str, Any]:
        return {"$ref": "#/$defs/host"}


@dataclass(frozen=True)
class Hosts(FieldType):
    def parse(self, c: Checker, node: Node, path: str) -> tuple[str, ...]:
        return c.items(node, path, lambda n, p: host_ref(c, n, p), None, "host")

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": {"$ref": "#/$defs/host"}, "uniqueItems": True}


@dataclass(frozen=True)
class Ports(FieldType):
    def parse(self, c: Checker, node: Node, path: str) -> tuple[int, ...]:
        return port_list(c, node, path)

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535},
                "minItems": 1, "uniqueItems": True, "description": "destination ports; omit for every port"}


@dataclass(frozen=True)
class Url(FieldType):
    def parse(self, c: Checker, node: Node, path: str) -> str:
        return url_value(c, node, path)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": r"^https?://[^\s]+$", "maxLength": 2048}


@dataclass(frozen=True)
class SwitchPort(FieldType):
    def parse(self, c: Checker, node: Node, path: str) -> tuple[int, int]:
        return switch_port(c, node, path)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^(0[xX][0-9a-fA-F]{1,16}|[0-9]{1,20}):[0-9]{1,10}$",
                "description": "DPID:PORT"}


@dataclass(frozen=True)
class IpOrPrefix(FieldType):
    def parse(self, c: Checker, node: Node, path: str) -> str:
        return ip_or_cidr(c, node, path)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "description": "an address or a prefix"}


@dataclass(frozen=True)
class AlertTarget(FieldType):
    def parse(self, c: Checker, node: Node, path: str) -> str:
        return alert_target(c, node, path)

    def schema(self) -> dict[str, Any]:
        return {"const": "alert", "description": "the alert's top remote address"}


@dataclass(frozen=True)
class Records(FieldType):
    """A list of nested parameter records (a dataclass declared with `param`)."""

    cls: type

    def parse(self, c: Checker, node: Node, path: str) -> tuple[Any, ...]:
        return c.items(node, path, lambda n, p: self.cls(**parse_record(c, self.cls, n, p)))

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": record_schema(self.cls)}


def param(ftype: FieldType, default: Any = REQUIRED, doc: str = "") -> Any:
    """A parameter field: its type (parse + schema), its default (REQUIRED: none), its words."""
    meta = {"type": ftype, "doc": doc}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _default(f: dataclasses.Field) -> Any:
    return REQUIRED if f.default is dataclasses.MISSING else f.default


def parse_record(c: Checker, cls: type, node: Node, path: str, *, null_ok: bool = False,
                 extra: Mapping[str, tuple[Callable[[Node, str], Any], Any]] | None = None) -> dict[str, Any]:
    """Every field of the dataclass `cls` read from a mapping node (plus `extra` keys);
    Skip after recording every problem."""
    spec: dict[str, tuple[Callable[[Node, str], Any], Any]] = {}
    for f in dataclasses.fields(cls):
        ftype: FieldType = f.metadata["type"]
        spec[f.name] = ((lambda t: lambda n, p: t.parse(c, n, p))(ftype), _default(f))
    spec.update(extra or {})
    return c.section(node, path, spec, null_ok=null_ok)


def record_schema(cls: type, extra: Mapping[str, dict[str, Any]] | None = None, *,
                  nullable: bool = False) -> dict[str, Any]:
    """The JSON Schema of a parameter dataclass (plus `extra` properties)."""
    props: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(cls):
        s = dict(f.metadata["type"].schema())
        d = _default(f)
        if d is REQUIRED:
            required.append(f.name)
        elif d is not None and not isinstance(d, tuple):
            s["default"] = d
        if f.metadata.get("doc") and "description" not in s:
            s["description"] = f.metadata["doc"]
        props[f.name] = s
    props.update(extra or {})
    out: dict[str, Any] = {"type": ["object", "null"] if nullable else "object",
                           "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    return out
