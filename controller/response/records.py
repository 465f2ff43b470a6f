"""Response records, before any OpenFlow exists (Zeek NetControl style).

A `Response` is a small frozen record: what to do (`action`, a registered
response action), about what (`entity`), how (`params`: the action's resolved
`Plan`), for how long (`ttl`) and why (`playbook`, `reason`).  The engine
decides and stores these; `compile_response` turns one into (dpid, FlowSpec |
MeterSpec) pairs with the action's own `compile` and `targets`, which build
every rule through `controller.openflow.rules`.  Pure: no framework, no I/O.

Where the rules go is each action's `targets`: a device action at the device's
edge switch, or every switch while its location is unknown (its matches are on
the device's MAC, so they mean the same anywhere); block_ip on every switch;
mirror only on the IDS's switch.

Limitations (see also controller/openflow/rules.py's docstring for how actions
combine):

- redirect with `original_ip` rewrites statelessly: one target stands in for
  one original IP per device and ports.
- quarantine and block_lateral match IPv4 and MAC: a device that changes its
  MAC escapes them.  block_lateral does not touch IPv6 or IPv4 multicast (add
  224.0.0.0/4 to the internal subnets to block mDNS/SSDP discovery).
- rate_limit meters what the device sends, not what it receives.
- a ttl is at most 65535 s (OpenFlow's 16-bit hard_timeout, the switch-side
  backstop); longer responses are refused rather than left without one.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any, Iterable, Sequence

from controller.network.topology import Location
from controller.openflow import rules
from controller.response.actions import REGISTRY, ResponseAction
from controller.response.actions.base import Entity, ResponseError, Spec

__all__ = ["Entity", "Response", "ResponseError", "Spec", "compile_response", "release_response"]


@dataclass(frozen=True)
class Response:
    """One decided response.  `id` is the low 40 bits of its rules' cookies;
    `priority` is its offset (0..999) within its action's slots; `ttl` seconds
    (None: until released), counted from `created` (unix seconds)."""

    id: int
    action: str
    entity: Entity
    params: Any                     # the action's Plan
    _: KW_ONLY
    ttl: float | None = None
    priority: int = 0
    created: float = 0.0
    playbook: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int) or \
                not 0 <= self.id <= rules.COOKIE_ID_MASK:
            raise ResponseError(f"response id {self.id!r} outside the cookie's 0..{rules.COOKIE_ID_MASK}")
        action = self.definition
        if type(self.params) is not action.Plan:
            raise ResponseError(f"{self.action} needs {action.Plan.__name__}, not {type(self.params).__name__}")
        action.check_entity(self.entity, self.params)
        if self.ttl is not None and not 0 < self.ttl <= rules.MAX_HARD_TIMEOUT:
            raise ResponseError(f"ttl {self.ttl} outside 0 < ttl <= {rules.MAX_HARD_TIMEOUT} s "
                                "(the switch backstop is OpenFlow's 16-bit hard_timeout)")
        if not 0 <= self.priority <= rules.PRIO_OFFSET_MAX:
            raise ResponseError(f"priority offset {self.priority} outside 0..{rules.PRIO_OFFSET_MAX}")

    @property
    def definition(self) -> ResponseAction:
        """The registered action (ResponseError if there is none that installs rules)."""
        action = REGISTRY.get(self.action) if self.action in REGISTRY else None
        if action is None or action.Plan is None:
            raise ResponseError(f"unknown action {self.action!r}; one of "
                                f"{sorted(a.name for a in REGISTRY.installing())}")
        return action

    @property
    def kind(self) -> int:
        return self.definition.kind  # type: ignore[return-value]

    @property
    def expires(self) -> float | None:
        return None if self.ttl is None else self.created + self.ttl


def _timeout(r: Response, now: float | None) -> int:
    if r.ttl is None:
        return 0
    if now is None:
        return rules.hard_timeout(r.ttl)
    left = r.created + r.ttl - now
    if left <= 0:
        raise ResponseError(f"response {r.id} expired {-left:.1f} s ago")
    return rules.hard_timeout(left)


def compile_response(r: Response, edge: Location | None, switches: Sequence[int], *,
                     meter_id: int | None = None, now: float | None = None) -> list[tuple[int, Spec]]:
    """The (dpid, spec) pairs that enforce `r`, in the order to send them (a
    meter before the flow that names it).  `edge` is the device's location
    (None: unknown), `switches` every connected switch, `meter_id` the meter
    the engine allocated for an action that uses one.  With `now`, the
    hard_timeout is the time left (for re-installing after a restart or
    reconnect), else the ttl."""
    action = r.definition
    timeout = _timeout(r, now)
    try:
        specs = action.compile(r.id, r.entity, r.params, offset=r.priority, timeout=timeout, meter_id=meter_id)
    except rules.RuleError as e:
        raise ResponseError(str(e)) from e
    return [(dpid, spec) for dpid in action.targets(r.entity, r.params, edge, switches) for spec in specs]


def release_response(r: Response, dpids: Iterable[int], *,
                     meter_id: int | None = None) -> list[tuple[int, Spec]]:
    """Undo `r` on the switches it was installed on: its flows by exact cookie,
    then its meter, if its action uses one."""
    dpids = sorted(set(dpids))
    out: list[tuple[int, Spec]] = [(d, rules.delete_response(r.id, r.kind)) for d in dpids]
    if r.definition.uses_meter and meter_id is not None:
        out += [(d, rules.delete_meter(meter_id)) for d in dpids]
    return out
