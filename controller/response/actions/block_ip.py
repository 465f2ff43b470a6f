"""block_ip: drop traffic to and from a remote address or prefix, on every switch."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Sequence

from yaml.nodes import Node

from controller.network.topology import Location
from controller.openflow import rules
from controller.openflow.rules import ETH_TYPE_IP, Slot
from controller.response import validation as v
from controller.response.actions.base import Context, Entity, ResponseAction, ResponseError, Spec


@dataclass(frozen=True)
class BlockIpParams:
    ip: str | None = v.param(v.IpOrPrefix(), None)        # address or prefix; or
    target: str | None = v.param(v.AlertTarget(), None)   # "alert": the alert's top remote address


@dataclass(frozen=True)
class BlockIpPlan:
    """Nothing to add: the address or prefix to block is the entity's `prefix`."""


class BlockIp(ResponseAction):
    name = "block_ip"
    summary = "drop traffic to and from an address on every switch"
    Params = BlockIpParams
    Plan = BlockIpPlan
    kind = 0x14
    needs_device = False
    schema_extra = {"oneOf": [{"required": ["ip"]}, {"required": ["target"]}]}
    example = "block_ip - --param ip=203.0.113.7"
    params_doc = "exactly one of `ip` (an address, or a prefix without host bits) and `target: alert`"
    effect_doc = ("drop traffic to and from that address on every switch. `target: alert` means the alert's "
                  "top remote address; on an alert that names none (an address devices used while learning, "
                  "or several) the action is skipped, audited as `skipped` with why, not as a failure")
    layout = (("0 security", f"{Slot.BLOCK_IP}+p", "ipv4_src or ipv4_dst in prefix (every switch)", "drop",
               "BLOCK_IP 0x14"),)

    def check(self, c: v.Checker, node: Node, path: str, values: dict[str, Any]) -> dict[str, Any]:
        v.one_of(c, node, path, values, ("ip", "target"))
        if values["ip"] is not None:    # what the rules cannot match is refused now, not when it fires
            net = ipaddress.ip_network(values["ip"])
            where = v.join(path, "ip")
            if net.version != 4:
                c.fail(v.child(node, "ip"), where, f"{values['ip']} is IPv6; block_ip matches IPv4 only")
            if net.prefixlen == 0:
                c.fail(v.child(node, "ip"), where, "0.0.0.0/0 would drop all IPv4")
        return values

    def entity(self, params: BlockIpParams, device_mac: str | None, device_ip: str | None, ctx: Context) -> Entity:
        return Entity(prefix=params.ip if params.ip is not None else ctx.alert_remote())

    def resolve(self, params: BlockIpParams, ctx: Context) -> BlockIpPlan:
        return BlockIpPlan()

    def check_entity(self, entity: Entity, plan: BlockIpPlan) -> None:
        if entity.prefix is None:
            raise ResponseError("block_ip needs entity.prefix")
        if entity.prefix == "0.0.0.0/0":
            raise ResponseError("block_ip 0.0.0.0/0 would drop all IPv4")

    def key(self, entity: Entity, plan: BlockIpPlan) -> str:
        return f"{self.name} {entity.prefix}"

    def subject(self, entity: Entity) -> str:
        return entity.prefix  # type: ignore[return-value]

    def targets(self, entity: Entity, plan: BlockIpPlan, edge: Location | None, switches: Sequence[int]) -> list[int]:
        return sorted(set(switches))

    def compile(self, rid: int, entity: Entity, plan: BlockIpPlan, *, offset: int, timeout: int,
                meter_id: int | None) -> list[Spec]:
        """Two rules: IPv4 from the prefix, and to it."""
        addr = rules.ipv4_match(entity.prefix)  # type: ignore[arg-type]
        if addr == ("0.0.0.0", "0.0.0.0"):
            raise rules.RuleError("block_ip 0.0.0.0/0 would drop all IPv4")
        return [rules.response_rule(self.kind, rid, Slot.BLOCK_IP, (("eth_type", ETH_TYPE_IP), (field, addr)),
                                    rules.DROP, offset=offset, timeout=timeout)
                for field in ("ipv4_src", "ipv4_dst")]

    def describe(self, entity: Entity, plan: BlockIpPlan) -> str:
        return f"block {entity.prefix} on every switch"
