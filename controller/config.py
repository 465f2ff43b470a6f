"""Load and validate the iotguard YAML configuration file.

Pure Python (stdlib + PyYAML) so the CLI and the unit tests can use it without
os-ken.  The YAML is only *composed* into a node tree, never constructed by a
loader: every value keeps its line number for error messages, and no tag can
ever instantiate a Python object.  The result is a set of frozen dataclasses,
so the rest of the controller can share one Config without defensive copies.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, NoReturn, Union

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["ConfigError", "Device", "Config", "load_config", "parse_config", "MAX_FILE_BYTES"]

MAX_FILE_BYTES = 1024 * 1024
"""A config is a few KiB; anything bigger is a mistake or an attack on the parser."""

IPLike = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]


class ConfigError(ValueError):
    """A config problem pinned to file, line and field, so an operator can fix it at once."""

    def __init__(self, path: str, line: int | None, field: str | None, message: str) -> None:
        super().__init__(path, line, field, message)  # keeps the error picklable
        self.path = path
        self.line = line
        self.field = field
        self.message = message

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return ": ".join([where] + ([self.field] if self.field else []) + [self.message])


@dataclass(frozen=True)
class Device:
    """One inventory entry; addresses are normalised so lookups can compare strings."""

    name: str
    mac: str | None
    ips: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    """Validated settings; field defaults are the defaults of an empty config file."""

    source: str = "<defaults>"
    ofp_host: str = "0.0.0.0"
    ofp_port: int = 6653
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_token: str | None = None
    poll_interval: float = 1.0
    state_dir: str = "/var/lib/iotguard"
    internal_subnets: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    idle_timeout: int = 10
    packet_in_rate: int = 1000
    packet_in_burst: int = 200
    lldp_interval: float = 1.0
    devices: tuple[Device, ...] = ()
    # detection (issue 3): see docs/config.md
    learn_seconds: float = 300.0
    far: float = 1e-4
    burst_floor: int = 20
    outbreak_devices: int = 3
    outbreak_seconds: float = 30.0
    max_shift_per_day: float = 0.7
    exclude_tags: tuple[str, ...] = ("gateway", "internet", "infra", "external")

    # Indexes are built on first use: lookups happen on the packet-in path.
    # cached_property writes to __dict__ directly, so it works on a frozen dataclass
    # and stays out of __eq__/__repr__/__hash__.
    @cached_property
    def _by_mac(self) -> dict[str, Device]:
        index: dict[str, Device] = {}
        for d in self.devices:
            if d.mac is not None:
                index.setdefault(d.mac, d)
        return index

    @cached_property
    def _by_ip(self) -> dict[str, Device]:
        index: dict[str, Device] = {}
        for d in self.devices:
            for ip in d.ips:
                index.setdefault(ip, d)
        return index

    def device_by_mac(self, mac: str) -> Device | None:
        """Inventory entry for ``mac`` in any case, ':' or '-' separated; None if unknown or malformed."""
        key = _normalise_mac(mac) if isinstance(mac, str) else None
        return None if key is None else self._by_mac.get(key)

    def device_by_ip(self, ip: IPLike) -> Device | None:
        """Inventory entry for ``ip`` (string or ipaddress object); None if unknown or malformed."""
        try:
            key = str(ipaddress.ip_address(ip))
        except ValueError:
            return None
        return self._by_ip.get(key)


# --------------------------------------------------------------------------- helpers

_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TAG_RE = re.compile(r"[a-z0-9_-]{1,32}")

_YAML = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_YAML + t for t in ("str", "int", "float", "bool", "null"))
_TIMESTAMP, _MAP, _SEQ = (_YAML + t for t in ("timestamp", "map", "seq"))
_KIND = {
    _STR: "a string", _INT: "an integer", _FLOAT: "a float", _BOOL: "a boolean",
    _NULL: "null", _TIMESTAMP: "a date", _MAP: "a mapping", _SEQ: "a list",
}
# Everything else (!!python/..., !!binary, !!set, local !tags, the << merge key) is refused.
_ALLOWED_TAGS = frozenset(_KIND)
_TEXT_TAGS = frozenset({_STR, _INT, _FLOAT, _TIMESTAMP})

_TOP_KEYS = ("openflow", "api", "poll_interval", "state_dir", "internal_subnets",
             "forwarding", "lldp_interval", "devices", "detection")
_OFP_KEYS = ("listen_host", "port")
_API_KEYS = ("listen_host", "port", "token")
_FWD_KEYS = ("idle_timeout", "packet_in_rate", "packet_in_burst")
_DEVICE_KEYS = ("name", "mac", "ip", "ips", "tags")
_DETECT_KEYS = ("learn_seconds", "false_alarm_rate", "burst_floor", "outbreak_devices",
                "outbreak_seconds", "max_shift_per_day", "exclude_tags")


def _normalise_mac(text: str) -> str | None:
    return text.lower().replace("-", ":") if _MAC_RE.fullmatch(text) else None


def _short(text: str, limit: int = 40) -> str:
    """Quote user text in messages without letting a huge value flood the terminal."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_YAML):] if tag.startswith(_YAML) else tag


class _Refused(Exception):
    """Raised from inside the composer, before the source name is known."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer refuses aliases (billion-laughs, and they hide where a value came from)."""

    def compose_node(self, parent: Node | None, index: object) -> Node:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            raise _Refused(self.peek_event().start_mark.line + 1, "aliases are not allowed")
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- validation


class _Doc:
    """Typed accessors over the node tree; every failure becomes a precise ConfigError."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._ctor = SafeConstructor()  # only ever fed int/float scalars

    def fail(self, node: Node | None, field: str, message: str) -> NoReturn:
        line = node.start_mark.line + 1 if node is not None else None
        raise ConfigError(self.source, line, field or None, message)

    @staticmethod
    def got(node: Node, secret: bool = False) -> str:
        kind = _KIND.get(node.tag, _tag_name(node.tag))
        if isinstance(node, ScalarNode) and not secret and node.tag != _NULL:
            return f"{kind} ({_short(node.value)})"
        return kind

    def check_tags(self, root: Node) -> None:
        """Refuse non-core tags anywhere, even under keys that would later be rejected."""
        stack: list[tuple[Node, str]] = [(root, "")]
        while stack:
            node, path = stack.pop()
            if node.tag == _YAML + "merge":
                self.fail(node, path, "merge keys ('<<') are not allowed")
            if node.tag not in _ALLOWED_TAGS:
                self.fail(node, path, f"tag {_short(_tag_name(node.tag))} is not allowed")
            if isinstance(node, SequenceNode):
                stack.extend((n, f"{path}[{i}]") for i, n in reversed(list(enumerate(node.value))))
            elif isinstance(node, MappingNode):
                for k, v in reversed(node.value):
                    sub = _join(path, str(k.value)) if isinstance(k, ScalarNode) else path
                    stack += [(v, sub), (k, sub)]

    def mapping(self, node: Node, path: str, allowed: tuple[str, ...],
                null_ok: bool = True) -> dict[str, Node]:
        """Key -> value node; rejects duplicate and unknown keys (typos must not be silently ignored)."""
        if null_ok and node.tag == _NULL:
            return {}
        if not isinstance(node, MappingNode):
            what = "expected a mapping" if path else "the top level must be a mapping"
            self.fail(node, path, f"{what}, got {self.got(node)}")
        out: dict[str, Node] = {}
        lines: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                self.fail(key, path, f"keys must be plain strings, got {self.got(key)}")
            name = key.value
            sub = _join(path, name)
            if name in out:
                self.fail(key, sub, f"duplicate key {_short(name)} (first on line {lines[name]})")
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(key, sub, f"unknown key {_short(name)}{hint}; allowed keys: {', '.join(allowed)}")
            out[name] = value
            lines[name] = key.start_mark.line + 1
        return out

    def sequence(self, node: Node, path: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self.fail(node, path, f"expected a list, got {self.got(node)}")
        return list(node.value)

    def integer(self, node: Node, path: str, lo: int, hi: int) -> int:
        """Only YAML ints: a bool (true, yes, on) or a float is a type error, not 1 or 0."""
        if node.tag != _INT:
            self.fail(node, path, f"expected an integer, got {self.got(node)}")
        try:
            value = int(self._ctor.construct_yaml_int(node))
        except ValueError:
            self.fail(node, path, f"not a valid integer: {_short(node.value)}")
        if not lo <= value <= hi:
            self.fail(node, path, f"must be between {lo} and {hi}, got {value}")
        return value

    def number(self, node: Node, path: str, lo: float, hi: float) -> float:
        if node.tag not in (_INT, _FLOAT):
            self.fail(node, path, f"expected a number, got {self.got(node)}")
        make = self._ctor.construct_yaml_int if node.tag == _INT else self._ctor.construct_yaml_float
        try:
            value = float(make(node))
        except (ValueError, OverflowError):
            self.fail(node, path, f"not a valid number: {_short(node.value)}")
        if not lo <= value <= hi:  # also catches .nan
            self.fail(node, path, f"must be between {lo:g} and {hi:g}, got {value:g}")
        return value

    def text(self, node: Node, path: str, secret: bool = False) -> str:
        """The scalar exactly as written.

        YAML 1.1 turns some addresses and names into numbers (52:54:00:12:34:56 is
        a base-60 int); the literal text is what the user meant, and each field's own
        syntax check is the real validation.  Booleans and null are refused because
        yes/no/on/off/~ are almost always a mistake for a name or path.
        """
        if not isinstance(node, ScalarNode) or node.tag not in _TEXT_TAGS:
            hint = "; quote it if you meant text" if node.tag in (_BOOL, _NULL) else ""
            self.fail(node, path, f"expected a string, got {self.got(node, secret)}{hint}")
        return str(node.value)

    def host(self, node: Node, path: str) -> str:
        raw = self.text(node, path)
        try:
            return str(ipaddress.ip_address(raw))
        except ValueError:
            self.fail(node, path, f"not an IPv4/IPv6 address: {_short(raw)}")

    def cidr(self, node: Node, path: str) -> str:
        raw = self.text(node, path)
        try:
            if "/" not in raw:
                raise ValueError
            return str(ipaddress.ip_network(raw, strict=True))
        except ValueError:
            pass
        try:
            fixed = ipaddress.ip_network(raw, strict=False)
        except ValueError:
            self.fail(node, path, f"not a CIDR network (like 10.0.0.0/8): {_short(raw)}")
        if "/" not in raw:
            self.fail(node, path, f"missing prefix length: {_short(raw)} (did you mean {str(fixed)!r}?)")
        self.fail(node, path, f"host bits set in {_short(raw)} (did you mean {str(fixed)!r}?)")

    def optional(self, section: dict[str, Node], key: str, path: str,
                 convert: Callable[[Node, str], object], out: dict[str, object], attr: str) -> None:
        """Set out[attr] only when the key is present, so Config's own defaults apply otherwise."""
        if key in section:
            out[attr] = convert(section[key], _join(path, key))


def _build(doc: _Doc, root: Node | None) -> Config:
    out: dict[str, object] = {"source": doc.source}
    if root is None:  # empty file / only comments
        return Config(**out)  # type: ignore[arg-type]
    doc.check_tags(root)
    top = doc.mapping(root, "", _TOP_KEYS)

    u16 = lambda n, p: doc.integer(n, p, 1, 65535)  # noqa: E731
    ofp = doc.mapping(top["openflow"], "openflow", _OFP_KEYS) if "openflow" in top else {}
    doc.optional(ofp, "listen_host", "openflow", doc.host, out, "ofp_host")
    doc.optional(ofp, "port", "openflow", u16, out, "ofp_port")

    api = doc.mapping(top["api"], "api", _API_KEYS) if "api" in top else {}
    doc.optional(api, "listen_host", "api", doc.host, out, "api_host")
    doc.optional(api, "port", "api", u16, out, "api_port")
    if "token" in api and api["token"].tag != _NULL:
        out["api_token"] = _token(doc, api["token"], "api.token")

    doc.optional(top, "poll_interval", "", lambda n, p: doc.number(n, p, 0.1, 3600), out, "poll_interval")
    doc.optional(top, "lldp_interval", "", lambda n, p: doc.number(n, p, 0.1, 60), out, "lldp_interval")
    if "state_dir" in top:
        state_dir = doc.text(top["state_dir"], "state_dir")
        if not state_dir.strip() or "\0" in state_dir:
            doc.fail(top["state_dir"], "state_dir", "must be a non-empty path")
        out["state_dir"] = state_dir
    if "internal_subnets" in top:
        out["internal_subnets"] = _subnets(doc, top["internal_subnets"])

    fwd = doc.mapping(top["forwarding"], "forwarding", _FWD_KEYS) if "forwarding" in top else {}
    doc.optional(fwd, "idle_timeout", "forwarding", u16, out, "idle_timeout")
    for key in ("packet_in_rate", "packet_in_burst"):
        doc.optional(fwd, key, "forwarding", lambda n, p: doc.integer(n, p, 1, 1_000_000), out, key)

    if "devices" in top and top["devices"].tag != _NULL:
        out["devices"] = _devices(doc, top["devices"])

    det = doc.mapping(top["detection"], "detection", _DETECT_KEYS) if "detection" in top else {}
    doc.optional(det, "learn_seconds", "detection", lambda n, p: doc.number(n, p, 10, 30 * 86400),
                 out, "learn_seconds")
    doc.optional(det, "false_alarm_rate", "detection", lambda n, p: doc.number(n, p, 1e-9, 0.5), out, "far")
    doc.optional(det, "burst_floor", "detection", lambda n, p: doc.integer(n, p, 2, 100_000), out, "burst_floor")
    doc.optional(det, "outbreak_devices", "detection", lambda n, p: doc.integer(n, p, 2, 100_000),
                 out, "outbreak_devices")
    doc.optional(det, "outbreak_seconds", "detection", lambda n, p: doc.number(n, p, 1, 86400),
                 out, "outbreak_seconds")
    doc.optional(det, "max_shift_per_day", "detection", lambda n, p: doc.number(n, p, 0, 10),
                 out, "max_shift_per_day")
    if "exclude_tags" in det and det["exclude_tags"].tag != _NULL:
        out["exclude_tags"] = _tags(doc, det["exclude_tags"], "detection.exclude_tags")
    return Config(**out)  # type: ignore[arg-type]


def _token(doc: _Doc, node: Node, path: str) -> str:
    """Validate the API bearer token without ever echoing it into logs."""
    token = doc.text(node, path, secret=True)
    if len(token) < 16:
        doc.fail(node, path, f"must be at least 16 characters, got {len(token)}")
    if not all("!" <= c <= "~" for c in token):
        doc.fail(node, path, "must be printable ASCII without whitespace")
    return token


def _subnets(doc: _Doc, node: Node) -> tuple[str, ...]:
    items = doc.sequence(node, "internal_subnets")
    if not items:
        doc.fail(node, "internal_subnets", "must not be empty (omit the key to use the defaults)")
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        net = doc.cidr(item, f"internal_subnets[{i}]")
        if net in seen:
            doc.fail(item, f"internal_subnets[{i}]",
                     f"duplicate subnet {net} (also internal_subnets[{seen[net]}])")
        seen[net] = i
    return tuple(seen)


def _tags(doc: _Doc, node: Node, path: str) -> tuple[str, ...]:
    tags: list[str] = []
    for j, tnode in enumerate(doc.sequence(node, path)):
        tag = doc.text(tnode, f"{path}[{j}]")
        if not _TAG_RE.fullmatch(tag):
            doc.fail(tnode, f"{path}[{j}]", f"invalid tag {_short(tag)}: use 1-32 of a-z 0-9 _ -")
        if tag in tags:
            doc.fail(tnode, f"{path}[{j}]", f"duplicate tag {tag!r}")
        tags.append(tag)
    return tuple(tags)


def _devices(doc: _Doc, node: Node) -> tuple[Device, ...]:
    """Inventory entries; names, MACs and IPs must be unique or lookups would be ambiguous."""
    names: dict[str, int] = {}
    owners: dict[str, tuple[str, int]] = {}  # normalised MAC or IP -> (device name, line)
    devices = []
    for i, dnode in enumerate(doc.sequence(node, "devices")):
        p = f"devices[{i}]"
        d = doc.mapping(dnode, p, _DEVICE_KEYS, null_ok=False)
        line = dnode.start_mark.line + 1

        if "name" not in d:
            doc.fail(dnode, f"{p}.name", "required key 'name' is missing")
        name = doc.text(d["name"], f"{p}.name")
        if not _NAME_RE.fullmatch(name):
            doc.fail(d["name"], f"{p}.name", f"invalid name {_short(name)}: use 1-64 of A-Z a-z 0-9 . _ -")
        if name in names:
            doc.fail(d["name"], f"{p}.name", f"duplicate device name {name!r} (first on line {names[name]})")
        names[name] = line

        present = {k: v for k, v in d.items() if v.tag != _NULL}  # "mac:" with no value = not given
        mac = None
        if "mac" in present:
            mnode, mpath = present["mac"], f"{p}.mac"
            raw = doc.text(mnode, mpath)
            mac = _normalise_mac(raw)
            if mac is None:
                doc.fail(mnode, mpath, f"not a MAC address (like 00:11:22:33:44:55): {_short(raw)}")
            if int(mac[:2], 16) & 1:
                doc.fail(mnode, mpath, f"{mac} is a multicast/broadcast MAC, not a device address")
            if mac == "00:00:00:00:00:00":
                doc.fail(mnode, mpath, "00:00:00:00:00:00 is not a device address")
            _claim(doc, owners, mac, "MAC", mnode, mpath, name)

        if "ip" in present and "ips" in present:
            doc.fail(present["ips"], f"{p}.ips", "use either 'ip' or 'ips', not both")
        ip_nodes: list[tuple[Node, str]] = []
        if "ip" in present:
            ip_nodes = [(present["ip"], f"{p}.ip")]
        elif "ips" in present:
            items = doc.sequence(present["ips"], f"{p}.ips")
            if not items:
                doc.fail(present["ips"], f"{p}.ips", "must not be empty")
            ip_nodes = [(n, f"{p}.ips[{j}]") for j, n in enumerate(items)]
        ips = []
        for inode, ipath in ip_nodes:
            ip = doc.host(inode, ipath)
            _claim(doc, owners, ip, "IP", inode, ipath, name)
            ips.append(ip)

        if mac is None and not ips:
            doc.fail(dnode, p, "device needs at least one of 'mac', 'ip' or 'ips'")

        tags = _tags(doc, present["tags"], f"{p}.tags") if "tags" in present else ()

        devices.append(Device(name=name, mac=mac, ips=tuple(ips), tags=tags))
    return tuple(devices)


def _claim(doc: _Doc, owners: dict[str, tuple[str, int]], key: str, kind: str,
           node: Node, path: str, name: str) -> None:
    """Record that ``name`` owns address ``key``; a second owner is an error naming the first."""
    if key in owners:
        other, line = owners[key]
        doc.fail(node, path, f"duplicate {kind} {key}: already used by device {other!r} (line {line})")
    owners[key] = (name, node.start_mark.line + 1)


# --------------------------------------------------------------------------- entry points


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate config ``text``; ``source`` is only used to name the origin in errors."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except _Refused as e:
        raise ConfigError(source, e.line, None, e.message) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = f"YAML syntax error: {e.problem or e.context}"
        if e.context == "expected a single document in the stream":
            msg = "only one YAML document is allowed (found a second '---')"
        elif e.problem and e.context:
            ctx_line = f" on line {e.context_mark.line + 1}" if e.context_mark else ""
            msg += f" ({e.context}{ctx_line})"
        raise ConfigError(source, mark.line + 1 if mark else None, None, msg) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError(source, line, None, f"invalid character {chr(e.character)!r}: {e.reason}") from None
    except yaml.YAMLError as e:
        raise ConfigError(source, None, None, f"YAML error: {e}") from None
    except RecursionError:
        raise ConfigError(source, None, None, "YAML is nested too deeply") from None
    return _build(_Doc(source), root)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, size-check and validate one YAML config file."""
    source = os.fspath(path)

    def fail(message: str, line: int | None = None) -> NoReturn:
        raise ConfigError(source, line, None, message)

    try:
        st = os.stat(source)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            fail("not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            fail(f"file is larger than 1 MiB ({st.st_size} bytes)")
        with open(source, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        fail("file not found")
    except PermissionError:
        fail("cannot read file: permission denied")
    except OSError as e:
        fail(f"cannot read file: {e.strerror or e}")
    if len(data) > MAX_FILE_BYTES:  # grew between stat and read
        fail("file is larger than 1 MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        fail(f"not valid UTF-8 (byte {e.start})", data.count(b"\n", 0, e.start) + 1)
    return parse_config(text, source)
