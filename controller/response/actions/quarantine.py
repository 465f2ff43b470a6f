"""quarantine: cut a device off, except ARP, DHCP, DNS and an allow list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.openflow import rules
from controller.openflow.rules import ETH_TYPE_ARP, ETH_TYPE_IP, IPPROTO_UDP, Slot
from controller.response import validation as v
from controller.response.actions.base import (Context, Entity, ResponseAction, Spec, check_l4, ipv4,
                                              normalise, prefix)


@dataclass(frozen=True)
class AllowRule:
    """Traffic a quarantined device may still exchange with `host`."""

    host: str = v.param(v.HostRef())                   # inventory name or IP address
    ports: tuple[int, ...] = v.param(v.Ports(), ())    # () = every port
    proto: str = v.param(v.PROTO, "any")               # tcp | udp | any


@dataclass(frozen=True)
class QuarantineParams:
    allow: tuple[AllowRule, ...] = v.param(v.Records(AllowRule), ())
    dhcp: bool = v.param(v.Bool(), True)
    dns: bool = v.param(v.Bool(), True)


@dataclass(frozen=True)
class Allow:
    """One resolved exception: an address or prefix, a protocol ("tcp", "udp",
    "icmp", or None for all IPv4) and ports (() for all); both directions."""

    ip: str
    proto: str | None = None
    ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        normalise(self, "ip", prefix(self.ip, "allow.ip"))
        normalise(self, "ports", tuple(int(p) for p in self.ports))
        check_l4(self.proto, self.ports, "allow")


@dataclass(frozen=True)
class QuarantinePlan:
    allow: tuple[Allow, ...] = ()
    dhcp: bool = True
    dns_servers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        normalise(self, "allow", tuple(self.allow))
        normalise(self, "dns_servers", tuple(ipv4(s, "quarantine.dns_servers") for s in self.dns_servers))


class Quarantine(ResponseAction):
    name = "quarantine"
    summary = "drop everything from and to the device except DHCP, DNS and the allow list"
    Params = QuarantineParams
    Plan = QuarantinePlan
    kind = 0x10
    nullable = True
    shortcut = "isolate a device now"
    params_doc = ("`allow`: list of `{host, ports, proto}` (default none); `dhcp`: bool, default `true`; "
                  "`dns`: bool, default `true`")
    effect_doc = ("drop everything from and to the device except DHCP, DNS and the allow list. `host` is a "
                  "device name or an IP address; `ports` is a non-empty list of 1..65535, and leaving it out "
                  "means every port; `proto` is `tcp`, `udp` or `any` (default)")
    layout = (("0 security", f"{Slot.QUARANTINE_ALLOW}+p / {Slot.QUARANTINE_DROP}+p",
               "device MAC: ARP, DHCP, DNS, allow list / anything", "goto table 1 / drop", "QUARANTINE 0x10"),)

    def resolve(self, params: QuarantineParams, ctx: Context) -> QuarantinePlan:
        allow: list[Allow] = []
        for rule in params.allow:
            addr = ctx.host(rule.host)[0]
            protos = [None] if rule.proto == "any" and not rule.ports else \
                ["tcp", "udp"] if rule.proto == "any" else [rule.proto]
            allow += [Allow(addr, proto, rule.ports) for proto in protos]
        return QuarantinePlan(tuple(allow), params.dhcp, tuple(ctx.dns_servers()) if params.dns else ())

    def compile(self, rid: int, entity: Entity, plan: QuarantinePlan, *, offset: int, timeout: int,
                meter_id: int | None) -> list[Spec]:
        """Drop everything from and to the device's MAC, except (goto table 1, both
        directions): ARP (from the device only with arp_spa = its IP when known: it
        cannot poison others' caches), DHCP, DNS (udp and tcp 53) to each server, and
        each allow entry."""
        mac = rules.mac_match(entity.mac)  # type: ignore[arg-type]
        out_ip = rules.from_mac(mac, ("eth_type", ETH_TYPE_IP))
        in_ip = rules.to_mac(mac, ("eth_type", ETH_TYPE_IP))
        arp_from = rules.from_mac(mac, ("eth_type", ETH_TYPE_ARP))
        if entity.ip is not None:
            arp_from += (("arp_spa", rules.ipv4_match(entity.ip)),)
        matches = [arp_from, rules.to_mac(mac, ("eth_type", ETH_TYPE_ARP))]
        if plan.dhcp:
            matches += [out_ip + (("ip_proto", IPPROTO_UDP), ("udp_src", 68), ("udp_dst", 67)),
                        in_ip + (("ip_proto", IPPROTO_UDP), ("udp_src", 67), ("udp_dst", 68))]
        for server in plan.dns_servers:
            dst = rules.ipv4_match(server)
            for proto in ("udp", "tcp"):
                matches.append(out_ip + (("ipv4_dst", dst),) + rules.l4_matches(proto, (53,), "dst")[0])
                matches.append(in_ip + (("ipv4_src", dst),) + rules.l4_matches(proto, (53,), "src")[0])
        for a in plan.allow:
            addr = rules.ipv4_match(a.ip)
            for fwd, back in zip(rules.l4_matches(a.proto, a.ports, "dst"), rules.l4_matches(a.proto, a.ports, "src")):
                matches.append(out_ip + (("ipv4_dst", addr),) + fwd)
                matches.append(in_ip + (("ipv4_src", addr),) + back)
        kw: dict[str, Any] = {"offset": offset, "timeout": timeout}
        flows = [rules.response_rule(self.kind, rid, Slot.QUARANTINE_ALLOW, m, rules.ALLOW, **kw)
                 for m in matches]
        flows += [rules.response_rule(self.kind, rid, Slot.QUARANTINE_DROP, rules.from_mac(mac), rules.DROP, **kw),
                  rules.response_rule(self.kind, rid, Slot.QUARANTINE_DROP, rules.to_mac(mac), rules.DROP, **kw)]
        return flows

    def describe(self, entity: Entity, plan: QuarantinePlan) -> str:
        holes = (["DHCP"] if plan.dhcp else []) + [f"DNS to {s}" for s in plan.dns_servers] + \
            [a.ip + (f" {a.proto}" if a.proto else "") + (f"/{','.join(map(str, a.ports))}" if a.ports else "")
             for a in plan.allow]
        return f"quarantine {entity.mac}" + (f" (except {', '.join(holes)})" if holes else "")
