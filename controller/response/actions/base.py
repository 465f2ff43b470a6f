"""What every response action is made of, and what it may ask of the controller.

A response action is one module under controller/response/actions/ holding one
`ResponseAction` subclass, registered with one line in the package's
`__init__.py` (see there).  The class says, in one place:

- `Params`: the operator's parameters, one frozen dataclass whose fields are
  declared with `validation.param(TYPE, default)`: the playbook validator, the
  API's manual requests and the JSON Schema all read it;
- `check`: cross-field validation, with file:line:col problems like the rest;
- `resolve`: the parameters against what the controller knows (`Context`: hosts,
  gateway, DNS servers, internal subnets, the alert's remote address) into a
  `Plan`, the frozen record that is stored and compiled (a restart re-installs
  exactly what was decided, whatever the inventory says by then);
- `compile`: the plan as rules, built only with `controller.openflow.rules`'
  generic pieces (`response_rule` in a `Slot`, with the action's cookie `kind`);
- `key`, `subject`, `targets`: which responses are one, what escalation counts,
  which switches get the rules;
- `describe`, `summary`, `layout`: its words for the audit log, the CLI, the
  docs and the README's table layout.

Zeek NetControl composes `quarantine_host` from a few generic drop/allow rules
in the same way; here the generic pieces are the slots and instruction helpers
of the rule builder.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

from yaml.nodes import Node

from controller.addresses import is_unicast_mac
from controller.network.topology import Location
from controller.openflow import rules
from controller.openflow.rules import FlowSpec, MeterSpec
from controller.response import validation as v

Spec = FlowSpec | MeterSpec


class ResponseError(ValueError):
    """A response that cannot become rules (bad record, or nowhere to put it)."""


def ipv4(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ResponseError(f"{what}: {value!r} is not an IPv4 address") from None


def is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
        return True
    except ValueError:
        return False


def prefix(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError:
        raise ResponseError(f"{what}: {value!r} is not an IPv4 address or prefix "
                            "(host bits must be zero)") from None


def mac(value: str, what: str) -> str:
    try:
        return rules.mac_match(value)
    except ValueError:
        raise ResponseError(f"{what}: {value!r} is not a MAC address") from None


def check_l4(proto: str | None, ports: tuple[int, ...], what: str) -> None:
    if proto is not None and proto not in rules.IP_PROTOS:
        raise ResponseError(f"{what}.proto: {proto!r} is not one of {sorted(rules.IP_PROTOS)}")
    if ports and proto not in ("tcp", "udp"):
        raise ResponseError(f"{what}.ports need proto tcp or udp")
    for p in ports:
        if not 0 < p < 65536:
            raise ResponseError(f"{what}.ports: {p} is outside 1..65535")


def normalise(obj: Any, name: str, value: Any) -> None:
    """Set a normalised value on a frozen dataclass in its __post_init__."""
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class Entity:
    """What a response is about: a device (`mac`, and its IPv4 `ip` when known)
    or a remote address (`prefix`: "203.0.113.7" or "198.51.100.0/24")."""

    mac: str | None = None
    ip: str | None = None
    prefix: str | None = None

    def __post_init__(self) -> None:
        if self.mac is None and self.ip is None and self.prefix is None:
            raise ResponseError("entity needs a mac, an ip or a prefix")
        if self.mac is not None:
            normalise(self, "mac", mac(self.mac, "entity.mac"))
        if self.ip is not None:
            normalise(self, "ip", ipv4(self.ip, "entity.ip"))
        if self.prefix is not None:
            normalise(self, "prefix", prefix(self.prefix, "entity.prefix"))


HostLookup = Callable[[str], "tuple[str, str | None, Location | None]"]


@dataclass(frozen=True, kw_only=True)
class Context:
    """What the controller knows when an action is resolved (the engine builds it).

    `host(ref)` gives (ip, next-hop MAC or None, where that MAC is) of an inventory
    name or an address, and raises ResponseError for an unknown name;
    `gateway()` the gateway's (ip, mac or None) or None; `dns_servers()` the
    servers a quarantine lets through; `alert_remote()` the alert's top remote
    address (ResponseError when it names none)."""

    host: HostLookup
    gateway: Callable[[], "tuple[str, str | None] | None"]
    dns_servers: Callable[[], Sequence[str]]
    internal_subnets: tuple[str, ...]
    alert_remote: Callable[[], str]


class ResponseAction:
    """One response action (module docstring).  Subclasses set the class attributes
    and override what differs from the defaults: a device action at the device's
    edge switch, one response per action and device."""

    name: ClassVar[str]
    summary: ClassVar[str]                  # one line: the schema, the docs, the CLI
    Params: ClassVar[type]
    Plan: ClassVar[type | None] = None      # None: installs nothing (notify)
    kind: ClassVar[int | None] = None       # cookie kind, rules.RESPONSE_KIND_MIN..MAX
    needs_device: ClassVar[bool] = True
    uses_meter: ClassVar[bool] = False      # the engine allocates a meter id for each response
    nullable: ClassVar[bool] = False        # `- ACTION:` with no body is valid
    expires: ClassVar[bool] = True          # takes ttl and escalate
    schema_extra: ClassVar[dict[str, Any]] = {}
    params_doc: ClassVar[str] = ""          # the docs' action table: parameters
    effect_doc: ClassVar[str] = ""          # and what it does
    shortcut: ClassVar[str | None] = None   # CLI: `iotguard NAME DEVICE`, with this help
    example: ClassVar[str] = ""             # CLI: an `iotguard respond` example
    layout: ClassVar[tuple[tuple[str, ...], ...]] = ()   # README table-layout rows

    # ------------------------------------------------------------ validation
    def check(self, c: v.Checker, node: Node, path: str, values: dict[str, Any]) -> dict[str, Any]:
        """Cross-field checks on the parsed fields (c.fail to refuse); the values to build Params from."""
        return values

    # ------------------------------------------------------------ resolution
    def entity(self, params: Any, device_mac: str | None, device_ip: str | None, ctx: Context) -> Entity:
        if not device_mac:
            raise ResponseError(f"{self.name} needs a device, and the alert names none")
        return Entity(mac=device_mac, ip=device_ip)

    def resolve(self, params: Any, ctx: Context) -> Any:
        raise NotImplementedError

    def check_entity(self, entity: Entity, plan: Any) -> None:
        if self.needs_device and entity.mac is None:
            raise ResponseError(f"{self.name} needs the device's MAC (entity.mac)")
        if entity.mac is not None and not is_unicast_mac(entity.mac):
            raise ResponseError(f"{self.name}: {entity.mac} is a broadcast, multicast or zero MAC, never a "
                                "device: its rules would cut off everyone")

    # ------------------------------------------------------------ identity
    def key(self, entity: Entity, plan: Any) -> str:
        """Responses with the same key are one response (docs/playbooks.md, "one per")."""
        return f"{self.name} {entity.mac}"

    def subject(self, entity: Entity) -> str:
        """What escalation counts offences of."""
        return entity.mac  # type: ignore[return-value]

    # ------------------------------------------------------------ rules
    def targets(self, entity: Entity, plan: Any, edge: Location | None, switches: Sequence[int]) -> list[int]:
        """The device's edge switch; every switch while its location is unknown (the
        rules match its MAC, so they mean the same anywhere)."""
        return [edge.dpid] if edge is not None else sorted(set(switches))

    def compile(self, rid: int, entity: Entity, plan: Any, *, offset: int, timeout: int,
                meter_id: int | None) -> list[Spec]:
        raise NotImplementedError

    def describe(self, entity: Entity, plan: Any) -> str:
        """Words for the CLI and the audit log: what the response does, to what."""
        return f"{self.name} {entity.mac or entity.prefix}"
