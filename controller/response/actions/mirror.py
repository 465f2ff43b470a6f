"""mirror: copy a device's traffic to an IDS port, and forward it as usual."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from yaml.nodes import Node

from controller.network.topology import Location
from controller.openflow import rules
from controller.openflow.rules import Slot
from controller.response import validation as v
from controller.response.actions.base import Context, Entity, ResponseAction, ResponseError, Spec


@dataclass(frozen=True)
class MirrorParams:
    to: str | None = v.param(v.HostRef(), None)                   # the IDS host; or
    port: tuple[int, int] | None = v.param(v.SwitchPort(), None)  # (dpid, port)


@dataclass(frozen=True)
class MirrorPlan:
    dpid: int       # the switch the IDS is plugged into
    port: int       # and its port there

    def __post_init__(self) -> None:
        if not 0 < self.port < 0xFFFFFF00:
            raise ResponseError(f"mirror.port: {self.port} is not a physical port")


class Mirror(ResponseAction):
    """Only where the device is on the IDS's switch (or its location is unknown):
    output to a port on another switch would need a tunnel or a path through
    trunks the forwarder also uses, which is not built.  A device elsewhere is refused."""

    name = "mirror"
    summary = "copy the device's traffic to an IDS"
    Params = MirrorParams
    Plan = MirrorPlan
    kind = 0x15
    schema_extra = {"oneOf": [{"required": ["to"]}, {"required": ["port"]}]}
    params_doc = ("exactly one of `to` (the IDS host's name or IP) and `port` (`\"DPID:PORT\"`, DPID decimal or "
                  "`0x` hex; quote it)")
    effect_doc = "copy the device's traffic to an IDS"
    layout = (("0 security", f"{Slot.MIRROR}+p", "eth_src or eth_dst=device MAC", "output IDS port, goto table 1",
               "MIRROR 0x15"),)

    def check(self, c: v.Checker, node: Node, path: str, values: dict[str, Any]) -> dict[str, Any]:
        v.one_of(c, node, path, values, ("to", "port"))
        return values

    def resolve(self, params: MirrorParams, ctx: Context) -> MirrorPlan:
        if params.port is not None:
            return MirrorPlan(*params.port)
        where = ctx.host(params.to)[2]  # type: ignore[arg-type]
        if where is None:
            raise ResponseError(f"mirror: the IDS host {params.to!r} has no known switch port yet")
        return MirrorPlan(where.dpid, where.port)

    def key(self, entity: Entity, plan: MirrorPlan) -> str:
        return f"{self.name} {entity.mac} {plan.dpid:#x}:{plan.port}"

    def targets(self, entity: Entity, plan: MirrorPlan, edge: Location | None, switches: Sequence[int]) -> list[int]:
        if edge is not None and edge.dpid != plan.dpid:
            raise ResponseError(f"mirror: the device is on switch {edge.dpid:#x}, the IDS on {plan.dpid:#x}; "
                                "mirroring across switches is not supported")
        return [plan.dpid]

    def compile(self, rid: int, entity: Entity, plan: MirrorPlan, *, offset: int, timeout: int,
                meter_id: int | None) -> list[Spec]:
        copy = rules.copy_to(plan.port)
        return [rules.response_rule(self.kind, rid, Slot.MIRROR, match, copy, offset=offset, timeout=timeout)
                for match in (rules.from_mac(entity.mac), rules.to_mac(entity.mac))]  # type: ignore[arg-type]

    def describe(self, entity: Entity, plan: MirrorPlan) -> str:
        return f"mirror {entity.mac} to port {plan.port} of switch {plan.dpid:#x}"
