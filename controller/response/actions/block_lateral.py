"""block_lateral: keep a device off its internal neighbours; the gateway and the internet stay."""

from __future__ import annotations

from dataclasses import dataclass

from controller.openflow import rules
from controller.openflow.rules import ETH_TYPE_IP, Slot
from controller.response import validation as v
from controller.response.actions.base import (Context, Entity, ResponseAction, ResponseError, Spec, ipv4, mac,
                                              normalise, prefix)


@dataclass(frozen=True)
class BlockLateralParams:
    allow: tuple[str, ...] = v.param(v.Hosts(), (), "hosts besides the gateway")


@dataclass(frozen=True)
class BlockLateralPlan:
    internal_subnets: tuple[str, ...]
    gateway_ip: str
    gateway_mac: str | None = None      # when given, the gateway exception also pins eth_dst
    allow: tuple[str, ...] = ()         # addresses or prefixes the device may still reach

    def __post_init__(self) -> None:
        nets = tuple(prefix(n, "block_lateral.internal_subnets") for n in self.internal_subnets)
        if not nets:
            raise ResponseError("block_lateral.internal_subnets is empty")
        if "0.0.0.0/0" in nets:
            raise ResponseError("block_lateral.internal_subnets: 0.0.0.0/0 would block the internet too")
        normalise(self, "internal_subnets", nets)
        normalise(self, "gateway_ip", ipv4(self.gateway_ip, "block_lateral.gateway_ip"))
        if self.gateway_mac is not None:
            normalise(self, "gateway_mac", mac(self.gateway_mac, "block_lateral.gateway_mac"))
        normalise(self, "allow", tuple(prefix(a, "block_lateral.allow") for a in self.allow))


class BlockLateral(ResponseAction):
    name = "block_lateral"
    summary = "drop the device's traffic to internal hosts except the gateway and `allow`"
    Params = BlockLateralParams
    Plan = BlockLateralPlan
    kind = 0x11
    nullable = True
    params_doc = "`allow`: list of hosts (names or IPs), default none"
    effect_doc = ("drop the device's traffic to internal subnets and peers. The gateway (the device tagged "
                  "`gateway`) and `allow` stay reachable, and so does the internet")
    layout = (("0 security", f"{Slot.LATERAL_ALLOW}+p / {Slot.LATERAL_DROP}+p",
               "device MAC: IPv4 to gateway, allowed / to internal subnets", "goto table 1 / drop",
               "BLOCK_LATERAL 0x11"),)

    def resolve(self, params: BlockLateralParams, ctx: Context) -> BlockLateralPlan:
        gw = ctx.gateway()
        if gw is None:
            raise ResponseError("block_lateral needs the gateway (a device tagged 'gateway')")
        return BlockLateralPlan(ctx.internal_subnets, gw[0], gw[1], tuple(ctx.host(h)[0] for h in params.allow))

    def compile(self, rid: int, entity: Entity, plan: BlockLateralPlan, *, offset: int, timeout: int,
                meter_id: int | None) -> list[Spec]:
        """Drop IPv4 from the device to each internal subnet, except the gateway IP (only
        through its MAC when known) and the allowed hosts or prefixes, which go to
        table 1.  Everything else (the internet, ARP, broadcasts) is untouched."""
        base = rules.from_mac(entity.mac, ("eth_type", ETH_TYPE_IP))  # type: ignore[arg-type]
        gw = base + (("ipv4_dst", rules.ipv4_match(plan.gateway_ip)),)
        if plan.gateway_mac is not None:
            gw = (base[0], ("eth_dst", rules.mac_match(plan.gateway_mac))) + gw[1:]
        subnets = [rules.ipv4_match(n) for n in plan.internal_subnets]
        if not subnets:
            raise rules.RuleError("block_lateral needs at least one internal subnet")
        if ("0.0.0.0", "0.0.0.0") in subnets:
            raise rules.RuleError("0.0.0.0/0 is not an internal subnet: it would block the internet too")
        kw = {"offset": offset, "timeout": timeout}
        allow = [gw] + [base + (("ipv4_dst", rules.ipv4_match(h)),) for h in plan.allow]
        return ([rules.response_rule(self.kind, rid, Slot.LATERAL_ALLOW, m, rules.ALLOW, **kw) for m in allow]
                + [rules.response_rule(self.kind, rid, Slot.LATERAL_DROP, base + (("ipv4_dst", n),), rules.DROP, **kw)
                   for n in subnets])

    def describe(self, entity: Entity, plan: BlockLateralPlan) -> str:
        return (f"block {entity.mac} from {', '.join(plan.internal_subnets)} except the gateway {plan.gateway_ip}"
                + (f" and {', '.join(plan.allow)}" if plan.allow else ""))
