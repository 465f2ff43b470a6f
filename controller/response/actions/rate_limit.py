"""rate_limit: cap what a device sends with an OpenFlow meter, in kbit/s or packets/s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from yaml.nodes import Node

from controller.openflow import rules
from controller.openflow.rules import Slot
from controller.response import validation as v
from controller.response.actions.base import Context, Entity, ResponseAction, ResponseError, Spec


@dataclass(frozen=True)
class RateLimitParams:
    kbps: int | None = v.param(v.Int(8, 10_000_000), None)   # exactly one of kbps and pps
    pps: int | None = v.param(v.Int(1, 10_000_000), None)


@dataclass(frozen=True)
class RateLimitPlan:
    kbps: int | None = None
    burst_kbits: int | None = None      # None: 100 ms at the rate, at least 64 kbit
    pps: int | None = None              # packets per second instead of kbps

    def __post_init__(self) -> None:
        if (self.kbps is None) == (self.pps is None):
            raise ResponseError("rate_limit needs exactly one of kbps and pps")
        for name in ("kbps", "pps", "burst_kbits"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 0xFFFFFFFF:
                raise ResponseError(f"rate_limit.{name}: {value} is not a positive 32-bit rate")

    @property
    def burst(self) -> int:
        if self.pps is not None:
            return max(self.pps // 10, 1)
        return self.burst_kbits if self.burst_kbits is not None else max(self.kbps // 10, 64)  # type: ignore[operator]


class RateLimit(ResponseAction):
    name = "rate_limit"
    summary = "cap the device's rate with a meter"
    Params = RateLimitParams
    Plan = RateLimitPlan
    kind = 0x13
    uses_meter = True
    schema_extra = {"oneOf": [{"required": ["kbps"]}, {"required": ["pps"]}]}
    example = "rate_limit cam1 --param kbps=1000"
    params_doc = "exactly one of `kbps`: int 8..10,000,000 and `pps`: int 1..10,000,000"
    effect_doc = "an OpenFlow meter capping what the device sends, in kbit/s or packets/s"
    layout = (("0 security", f"{Slot.RATE_LIMIT}+p", "eth_src=device MAC", "meter (kbit/s or packets/s), goto table 1",
               "RATE_LIMIT 0x13"),)

    def check(self, c: v.Checker, node: Node, path: str, values: dict[str, Any]) -> dict[str, Any]:
        v.one_of(c, node, path, values, ("kbps", "pps"))
        return values

    def resolve(self, params: RateLimitParams, ctx: Context) -> RateLimitPlan:
        return RateLimitPlan(kbps=params.kbps, pps=params.pps)

    def compile(self, rid: int, entity: Entity, plan: RateLimitPlan, *, offset: int, timeout: int,
                meter_id: int | None) -> list[Spec]:
        """A drop meter and the flow sending everything from the device through it
        (the meter first: the switch refuses a flow naming an unknown meter)."""
        if meter_id is None:
            raise ResponseError("rate_limit needs a meter id (the engine allocates one in "
                                f"{rules.METER_RESPONSE_MIN:#x}..{rules.METER_RESPONSE_MAX:#x})")
        if plan.pps is not None:
            meter = rules.response_meter(meter_id, plan.pps, plan.burst, "pktps")
        else:
            meter = rules.response_meter(meter_id, plan.kbps, plan.burst, "kbps")  # type: ignore[arg-type]
        flow = rules.response_rule(self.kind, rid, Slot.RATE_LIMIT, rules.from_mac(entity.mac),  # type: ignore[arg-type]
                                   rules.metered(meter_id), offset=offset, timeout=timeout)
        return [meter, flow]

    def describe(self, entity: Entity, plan: RateLimitPlan) -> str:
        rate = f"{plan.pps} packets/s" if plan.pps is not None else f"{plan.kbps} kbit/s"
        return f"rate-limit {entity.mac} to {rate}"
