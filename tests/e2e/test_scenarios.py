"""End to end on smart_home: benign traffic teaches the baselines, then each attack
scenario is mitigated by its intended shipped playbook while every other device
keeps working and no benign device gets an alert or a response.

One network and controller (shipped playbooks, 30 s warm-up) for the module;
the scenarios run one after another, each released and settled before the next.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from topologies.lab import have_ovs, ping, running

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_ovs(), reason="needs root and a running Open vSwitch "
                                                        "(sudo make test provisions both)")]

from topologies.scenarios import SCENARIOS, target_of  # noqa: E402
from topologies.smart_home import SmartHomeTopo  # noqa: E402
from topologies.traffic import start_benign  # noqa: E402

LEARN = 30
GW, INET = "10.0.0.1", "203.0.113.10"
DEVICES = ["camera", "doorbell", "thermostat", "bulb1", "bulb2", "bulb3", "hub", "laptop", "tv", "speaker"]


def http_ok(host, ip: str = INET) -> bool:
    out = host.cmd(f"timeout 5 curl -s -o /dev/null -w '%{{http_code}}' --max-time 3 http://{ip}/")
    return out.strip().endswith("200")


def reachable(net, names) -> dict[str, bool]:
    return {n: ping(net.get(n), GW) and http_ok(net.get(n)) for n in names}


@pytest.fixture(scope="module")
def lab():
    topo = SmartHomeTopo()
    with running(topo, detection={"learn_seconds": LEARN}) as (ctl, net):
        start_benign(net, 1800)
        ctl.wait_for(lambda: ctl.get("/api/v1/health")["detection"]["baselined"] >= len(DEVICES),
                     LEARN + 60, "every device to finish its warm-up", interval=1.0)
        time.sleep(10)           # a few scored windows before the first attack
        assert ctl.alerts() == [], "false alarm during warm-up: " + str(ctl.alerts()[:1])
        yield ctl, net, topo


@pytest.mark.parametrize("name", list(SCENARIOS))
@pytest.mark.timeout(240)
def test_scenario_is_mitigated_and_nobody_else_is_touched(lab, name):
    ctl, net, topo = lab
    sc = SCENARIOS[name]
    attackers = sc.attackers[topo.NAME]
    others = [d for d in DEVICES if d not in attackers]
    before = reachable(net, others)
    assert all(before.values()), f"not all reachable before the attack: {before}"
    t0 = time.time()
    attack = sc.run(net)
    try:
        peak: dict[str, dict[str, float]] = {n: {} for n in attackers}   # for a failure's output

        def answered():
            rs = [r for r in ctl.responses() if r["playbook"] in sc.playbooks and r["action"] == sc.action
                  and r["created"] >= t0 and r["confirmed"]]
            if not rs:
                devices = ctl.devices()
                for n in attackers:
                    for k in ("tx_packets_per_s", "rx_bytes_per_s", "score"):
                        peak[n][k] = max(peak[n].get(k, 0.0), devices.get(n, {}).get(k) or 0.0)
                    peak[n]["threshold"] = devices.get(n, {}).get("threshold")
            return rs or None
        responses = ctl.wait_for(answered, 60, f"{' or '.join(sc.playbooks)} to {sc.action} for {name}", interval=0.2)
        took = min(r["created"] for r in responses) - attack.started
        print(f"{name}: {sc.action} by {responses[0]['playbook']} {took:.2f} s after the first packet")
        target = target_of(name, topo)
        if sc.action == "block_ip":
            assert {r["entity"]["prefix"] for r in responses} == {f"{target}/32"}
        else:
            att_macs = {d["mac"] for n, d in ctl.devices().items() if n in attackers}
            assert {r["mac"] for r in responses} <= att_macs, responses
        after = reachable(net, others)
        assert all(after.values()), f"{name}: collateral damage: {after}"
    finally:
        running = [p.poll() is None for p in attack.procs]   # before stop(): was the attack still going?
        rates = {n: {k: ctl.devices()[n].get(k) for k in ("tx_packets_per_s", "tx_bytes_per_s")} for n in attackers}
        attack.stop()
        print(f"  attack processes still running at the end: {running}; attackers' last windows: {rates}; "
              f"their peaks while waiting: {peak}")
        for host, text in attack.outputs().items():
            if text:
                print(f"  {host}'s results (000: no answer): {dict(Counter(text.split()))}")
        mine = [r for r in ctl.responses() if r["created"] >= t0]
        alerts = ctl.alerts(t0)
        for a in reversed(alerts):      # the story, for a failure's output
            print(f"  alert {a['kind']} {a['device']} (+{a['time'] - attack.started:.2f} s): {a['explanation']}"
                  f" remote={a.get('remote')} window={ {k: a['window'].get(k) for k in ('tx_bytes', 'new_dst_share', 'lateral_peers')} if a.get('window') else None}")
        for r in mine:
            print(f"  response {r['action']} by {r['playbook']} for {r['mac'] or r['entity']['prefix']}")
        for e in ctl.audit(t0):
            if e["event"] == "failed":
                print(f"  failed {e['action']} by {e['playbook']}: {e['error']}")
        for r in mine:
            ctl.call("DELETE", f"/api/v1/responses/{r['id']}")
    benign_alerts = [a for a in alerts if a["device"] in others or
                     (a["kind"] == "outbreak" and set(a["devices"]) - set(attackers))]
    assert benign_alerts == [], "\n".join(f"{a['kind']} {a['device']}: {a['explanation']}" for a in benign_alerts)
    macs = {d["mac"]: n for n, d in ctl.devices().items()}
    touched = [r for r in mine if r["mac"] and macs.get(r["mac"]) in others]
    assert touched == [], f"a benign device got a response: {touched}"
    time.sleep(8)        # the attacker's alerts close (3 quiet windows) before the next scenario
