"""Load and validate the iotguard YAML configuration file.

Pure Python (stdlib + PyYAML) so the CLI and the unit tests can use it without
os-ken.  The YAML is only *composed* into a node tree, never constructed by a
loader (controller/yamlnodes.py, shared with the playbooks): every value keeps
its line number for error messages, and no tag can ever instantiate a Python
object.  The result is a set of frozen dataclasses, so the rest of the
controller can share one Config without defensive copies.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from functools import cached_property
from typing import NoReturn, Union

from yaml.nodes import Node

from controller import yamlnodes
from controller.addresses import normalise_mac
from controller.yamlnodes import MAX_FILE_BYTES

__all__ = ["ConfigError", "Device", "Config", "load_config", "parse_config", "load_devices", "MAX_FILE_BYTES"]

# The shipped playbooks, beside the package (a checkout or an editable install).
DEFAULT_PLAYBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "playbooks")

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
    """The device record: an inventory entry, or what the controller learned of a device.

    The one shape every stage passes a device around in (the detector's incidents,
    the response engine, playbook triggers).  The MAC is normalised (None when absent
    or not a MAC), addresses and tags are tuples of text, so lookups compare strings.
    """

    name: str
    mac: str | None
    ips: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", normalise_mac(self.mac))
        object.__setattr__(self, "ips", tuple(str(a) for a in self.ips or ()))
        object.__setattr__(self, "tags", tuple(str(t) for t in self.tags or ()))

    @property
    def cls(self) -> str:
        """Its class: the first tag, "unclassified" without tags (as the detector groups them)."""
        return self.tags[0] if self.tags else "unclassified"

    def to_dict(self) -> dict:
        return {"name": self.name, "mac": self.mac, "ips": list(self.ips), "tags": list(self.tags)}


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
    # detection: see docs/config.md
    learn_seconds: float = 300.0
    far: float = 1e-4
    burst_floor: int = 20
    fast_poll: float = 0.25         # s between port-counter reads for the volume fast path; 0: off
    outbreak_devices: int = 3
    outbreak_seconds: float = 30.0
    max_shift_per_day: float = 0.7
    exclude_tags: tuple[str, ...] = ("gateway", "internet", "infra", "external")
    # responses: see docs/config.md and docs/playbooks.md
    playbooks: tuple[str, ...] = (DEFAULT_PLAYBOOKS,)
    dry_run: bool = False
    dns_servers: tuple[str, ...] = ()
    approve_within: float = 900.0   # seconds a pending (mode: approve) response waits; then it is denied
    # protected devices and addresses (controller/response/protection.py, docs/config.md)
    protected_names: tuple[str, ...] = ()
    protected_tags: tuple[str, ...] = ("infra", "gateway")
    protected_subnets: tuple[str, ...] = ()
    # metrics: see docs/metrics.md; port 0 disables the exporter
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108

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

_NULL = yamlnodes.NULL
_normalise_mac = yamlnodes.normalise_mac
_short = yamlnodes.short
_join = yamlnodes.join
_NAME_RE = yamlnodes.NAME_RE
_TAG_RE = yamlnodes.TAG_RE

_TOP_KEYS = ("openflow", "api", "poll_interval", "state_dir", "internal_subnets",
             "forwarding", "lldp_interval", "devices", "detection", "responses", "protected", "metrics")
_PROTECTED_KEYS = ("names", "tags", "subnets")
_OFP_KEYS = ("listen_host", "port")
_API_KEYS = ("listen_host", "port", "token")
_FWD_KEYS = ("idle_timeout", "packet_in_rate", "packet_in_burst")
_DEVICE_KEYS = ("name", "mac", "ip", "ips", "tags")
_DETECT_KEYS = ("learn_seconds", "false_alarm_rate", "burst_floor", "outbreak_devices",
                "outbreak_seconds", "max_shift_per_day", "exclude_tags", "fast_poll")
_RESP_KEYS = ("playbooks", "dry_run", "dns_servers", "approve_within")
_METRICS_KEYS = ("listen_host", "port")


# --------------------------------------------------------------------------- validation


class _Doc(yamlnodes.Nodes):
    """Typed accessors (yamlnodes.Nodes) whose first failure is a precise ConfigError."""

    def fail(self, node: Node | None, field: str, message: str) -> NoReturn:
        line = node.start_mark.line + 1 if node is not None else None
        raise ConfigError(self.source, line, field or None, message)


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
    def fast_poll(node, path: str) -> float:
        v = doc.number(node, path, 0, 60)
        if 0 < v < 0.05:
            doc.fail(node, path, f"must be 0 (off) or at least 0.05 s, got {v:g}")
        return v
    doc.optional(det, "fast_poll", "detection", fast_poll, out, "fast_poll")
    if "exclude_tags" in det and det["exclude_tags"].tag != _NULL:
        out["exclude_tags"] = _tags(doc, det["exclude_tags"], "detection.exclude_tags")

    resp = doc.mapping(top["responses"], "responses", _RESP_KEYS) if "responses" in top else {}
    if "playbooks" in resp and resp["playbooks"].tag != _NULL:
        out["playbooks"] = _paths(doc, resp["playbooks"], "responses.playbooks")
    if "dry_run" in resp:
        out["dry_run"] = doc.boolean(resp["dry_run"], "responses.dry_run")
    doc.optional(resp, "approve_within", "responses", lambda n, p: doc.number(n, p, 10, 86400), out,
                 "approve_within")
    if "dns_servers" in resp and resp["dns_servers"].tag != _NULL:
        out["dns_servers"] = tuple(doc.host(n, f"responses.dns_servers[{i}]")
                                   for i, n in enumerate(doc.sequence(resp["dns_servers"],
                                                                      "responses.dns_servers")))
    prot = doc.mapping(top["protected"], "protected", _PROTECTED_KEYS) if "protected" in top else {}
    if "names" in prot and prot["names"].tag != _NULL:
        out["protected_names"] = tuple(doc.text(n, f"protected.names[{i}]")
                                       for i, n in enumerate(doc.sequence(prot["names"], "protected.names")))
    if "tags" in prot and prot["tags"].tag != _NULL:
        out["protected_tags"] = _tags(doc, prot["tags"], "protected.tags")
    if "subnets" in prot and prot["subnets"].tag != _NULL:
        out["protected_subnets"] = tuple(doc.cidr(n, f"protected.subnets[{i}]") if "/" in doc.text(n, "")
                                         else doc.host(n, f"protected.subnets[{i}]")
                                         for i, n in enumerate(doc.sequence(prot["subnets"], "protected.subnets")))
    met = doc.mapping(top["metrics"], "metrics", _METRICS_KEYS) if "metrics" in top else {}
    doc.optional(met, "listen_host", "metrics", doc.host, out, "metrics_host")
    doc.optional(met, "port", "metrics", lambda n, p: doc.integer(n, p, 0, 65535), out, "metrics_port")
    config = Config(**out)  # type: ignore[arg-type]
    _distinct_listeners(doc, config, {"openflow": ofp, "api": api, "metrics": met})
    return config


def _distinct_listeners(doc: _Doc, config: Config, sections: dict[str, dict[str, Node]]) -> None:
    """Two listeners on one port would leave a half-started controller: refuse it here,
    where `iotguard config` and `iotguard run` both see it."""
    listeners = [("openflow", config.ofp_host, config.ofp_port), ("api", config.api_host, config.api_port)]
    if config.metrics_port:
        listeners.append(("metrics", config.metrics_host, config.metrics_port))
    for i, (name, host, port) in enumerate(listeners):
        for other, ohost, oport in listeners[:i]:
            shared = host == ohost or "0.0.0.0" in (host, ohost) or "::" in (host, ohost)
            if port == oport and shared:
                node = sections[name].get("port") or sections[other].get("port")
                where = name if sections[name].get("port") is not None else other
                doc.fail(node, f"{where}.port", f"port {port} is also {other if where == name else name}.port "
                                                f"({ohost if where == name else host}); each listener needs its own")


def _paths(doc: _Doc, node: Node, path: str) -> tuple[str, ...]:
    """Playbook files or directories; relative ones are relative to the config file."""
    base = os.path.dirname(os.path.abspath(doc.source)) if os.path.isfile(doc.source) else os.getcwd()
    from yaml.nodes import ScalarNode
    items = [node] if isinstance(node, ScalarNode) else doc.sequence(node, path)
    out = []
    for i, item in enumerate(items):
        p = doc.text(item, f"{path}[{i}]")
        if not p.strip() or "\0" in p:
            doc.fail(item, f"{path}[{i}]", "must be a non-empty path")
        out.append(os.path.normpath(os.path.join(base, p)))
    return tuple(out)


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
        root = yamlnodes.compose(text)
    except yamlnodes.YamlProblem as e:
        raise ConfigError(source, e.line, None, e.message) from None
    return _build(_Doc(source), root)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, size-check and validate one YAML config file."""
    source = os.fspath(path)
    try:
        text = yamlnodes.read_text(source, opener=open)  # this module's open: tests replace it
    except yamlnodes.YamlProblem as e:
        raise ConfigError(source, e.line, None, e.message) from None
    return parse_config(text, source)


def load_devices(path: str | os.PathLike[str]) -> tuple[Device, ...]:
    """An inventory file on its own (`iotguard replay --pcap ... --devices FILE`): the
    config's `devices:` list, either under a top-level `devices:` key (a whole config
    file works too: only its devices are taken) or as a bare YAML sequence.  The same
    checks as in a config, with ConfigError naming the file and line."""
    source = os.fspath(path)
    try:
        text = yamlnodes.read_text(source, opener=open)
        root = yamlnodes.compose(text)
    except yamlnodes.YamlProblem as e:
        raise ConfigError(source, e.line, None, e.message) from None
    doc = _Doc(source)
    if root is None:
        return ()
    doc.check_tags(root)
    from yaml.nodes import SequenceNode
    if isinstance(root, SequenceNode):
        return _devices(doc, root)
    return _build(doc, root).devices

