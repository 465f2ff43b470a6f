"""redirect: steer a device's traffic (all, or some ports) to a honeypot or remediation host."""

from __future__ import annotations

from dataclasses import dataclass

from controller.openflow import rules
from controller.openflow.rules import ETH_TYPE_IP, Slot
from controller.response import validation as v
from controller.response.actions.base import (Context, Entity, ResponseAction, ResponseError, Spec, check_l4,
                                              ipv4, mac, normalise)


@dataclass(frozen=True)
class RedirectParams:
    to: str = v.param(v.HostRef())
    ports: tuple[int, ...] = v.param(v.Ports(), ())    # () = all traffic
    proto: str = v.param(v.PROTO, "any")


@dataclass(frozen=True)
class RedirectPlan:
    """Steer to `target_ip` via `target_mac` (the next hop toward it).  With
    `original_ip`, only traffic to that address, rewritten both ways; without,
    traffic to any address, MAC rewrite only (see `Redirect.compile`)."""

    target_ip: str
    target_mac: str
    original_ip: str | None = None
    proto: str | None = None            # "tcp" | "udp" | "icmp" | None (all IPv4)
    ports: tuple[int, ...] = ()         # destination ports; () for all

    def __post_init__(self) -> None:
        normalise(self, "target_ip", ipv4(self.target_ip, "redirect.target_ip"))
        normalise(self, "target_mac", mac(self.target_mac, "redirect.target_mac"))
        if self.original_ip is not None:
            normalise(self, "original_ip", ipv4(self.original_ip, "redirect.original_ip"))
            if self.original_ip == self.target_ip:
                raise ResponseError("redirect.original_ip is the target itself")
        normalise(self, "ports", tuple(int(p) for p in self.ports))
        check_l4(self.proto, self.ports, "redirect")


class Redirect(ResponseAction):
    name = "redirect"
    summary = "steer the device's traffic (all, or these ports) to a host"
    Params = RedirectParams
    Plan = RedirectPlan
    kind = 0x12
    example = "redirect cam1 --param to=honeypot --param ports=[22,23]"
    params_doc = "`to`: host, required; `ports`: list (leave it out for all traffic); `proto`: `tcp`, `udp` or `any` (default)"
    effect_doc = ("steer the device's traffic to a honeypot or remediation host by rewriting the destination, "
                  "with the reverse rewrite on replies")
    layout = (("0 security", f"{Slot.REDIRECT}+p", "device MAC to original IP (ports); target to device",
               "rewrite dst (src on replies), goto table 1", "REDIRECT 0x12"),)

    def resolve(self, params: RedirectParams, ctx: Context) -> RedirectPlan:
        addr, next_hop, _ = ctx.host(params.to)
        if next_hop is None:
            raise ResponseError(f"redirect: the MAC toward {params.to!r} is not known yet")
        if params.proto == "any" and params.ports:
            raise ResponseError("redirect with ports needs proto tcp or udp")
        return RedirectPlan(addr, next_hop, None, None if params.proto == "any" else params.proto, params.ports)

    def compile(self, rid: int, entity: Entity, plan: RedirectPlan, *, offset: int, timeout: int,
                meter_id: int | None) -> list[Spec]:
        """Steer the device's IPv4 (all, or one protocol and its destination ports) to
        the target; the forwarder (table 1) then delivers it.

        With `original_ip` (L3 mode): only traffic to that address is steered,
        rewritten to eth_dst=target_mac, ipv4_dst=target_ip; replies from the target
        get ipv4_src=original_ip back, so connections work unmodified.  A stateless
        rewrite restores one original address only: one target stands in for one
        original IP per device and ports.

        Without it (L2 mode): traffic to any address gets eth_dst=target_mac only; the
        target must accept packets for any destination and answer as that address
        (iptables REDIRECT or TPROXY).  target_mac is the next hop toward the target."""
        mac_, target_mac = rules.mac_match(entity.mac), rules.mac_match(plan.target_mac)  # type: ignore[arg-type]
        target = rules.ipv4_match(plan.target_ip)
        if isinstance(target, tuple):
            raise rules.RuleError("redirect target must be one address")
        out = rules.from_mac(mac_, ("eth_type", ETH_TYPE_IP))
        back = rules.to_mac(mac_, ("eth_type", ETH_TYPE_IP))
        kw = {"offset": offset, "timeout": timeout}
        if plan.original_ip is None:
            steer = rules.rewrite(("eth_dst", target_mac))
            return [rules.response_rule(self.kind, rid, Slot.REDIRECT, out + l4, steer, **kw)
                    for l4 in rules.l4_matches(plan.proto, plan.ports, "dst")]
        original = rules.ipv4_match(plan.original_ip)
        if isinstance(original, tuple):
            raise rules.RuleError("redirect original_ip must be one address (the reverse rewrite restores it)")
        steer = rules.rewrite(("eth_dst", target_mac), ("ipv4_dst", target))
        restore = rules.rewrite(("ipv4_src", original))
        flows = []
        for fwd, rev in zip(rules.l4_matches(plan.proto, plan.ports, "dst"),
                            rules.l4_matches(plan.proto, plan.ports, "src")):
            flows.append(rules.response_rule(self.kind, rid, Slot.REDIRECT, out + (("ipv4_dst", original),) + fwd,
                                             steer, **kw))
            flows.append(rules.response_rule(self.kind, rid, Slot.REDIRECT, back + (("ipv4_src", target),) + rev,
                                             restore, **kw))
        return flows

    def describe(self, entity: Entity, plan: RedirectPlan) -> str:
        what = f"{plan.proto or 'ip'}" + (f"/{','.join(map(str, plan.ports))}" if plan.ports else "")
        return f"redirect {entity.mac} {what} to {plan.target_ip}"
