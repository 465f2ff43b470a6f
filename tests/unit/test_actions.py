"""Each action refuses at validation what its rules could not enforce, and never targets a group MAC."""

from __future__ import annotations

import pytest

from controller.response import playbook as pb
from controller.response.actions.base import Entity, ResponseError
from controller.response.actions.quarantine import QuarantinePlan
from controller.response.records import Response


def one(action: str) -> str:
    return ("playbooks:\n  - name: p\n    when: {kinds: [anomaly]}\n    do:\n"
            f"      - {action}\n")


@pytest.mark.parametrize("body, where, message", [
    ("block_ip: {ip: 0.0.0.0/0}", "5:24: playbooks[0].do[0].block_ip.ip", "0.0.0.0/0 would drop all IPv4"),
    ("block_ip: {ip: '2001:db8::/32'}", "5:24: playbooks[0].do[0].block_ip.ip",
     "2001:db8::/32 is IPv6; block_ip matches IPv4 only"),
])
def test_block_ip_refuses_at_validation_what_would_be_refused_when_it_fires(body, where, message):
    with pytest.raises(pb.PlaybookError) as e:
        pb.parse_playbooks(one(body), source="p.yaml")
    assert str(e.value) == f"p.yaml:{where}: {message}"


def test_rate_limit_in_packets_per_second_validates_and_compiles_to_a_pktps_meter():
    from controller.response.actions import REGISTRY
    (book,) = pb.parse_playbooks(one("rate_limit: {pps: 200}"))
    action = REGISTRY.get("rate_limit")
    plan = action.resolve(book.do[0].params, None)
    meter, flow = action.compile(5, Entity(mac="02:00:00:00:00:05"), plan, offset=0, timeout=60, meter_id=0x101)
    assert (meter.rate, meter.burst, meter.unit) == (200, 20, "pktps")
    assert flow.instructions == (("meter", 0x101), ("goto", 1))


@pytest.mark.parametrize("mac", ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb", "33:33:00:00:00:01",
                                 "00:00:00:00:00:00"])
def test_a_group_or_zero_mac_is_never_a_response_target(mac):
    with pytest.raises(ResponseError, match="broadcast, multicast or zero MAC"):
        Response(1, "quarantine", Entity(mac=mac), QuarantinePlan())
