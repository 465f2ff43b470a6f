"""A benign soak on enterprise with every traffic profile: no alert, no response.

Five switches, IoT, IT and server segments; every device runs its profile and its
check-in.  After the warm-up, IOTGUARD_SOAK_SECONDS (default 300) of benign traffic
must raise 0 alerts and apply 0 responses, with the shipped playbooks loaded.
"""

from __future__ import annotations

import os
import time

import pytest

from topologies.lab import have_ovs, running

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_ovs(), reason="needs root and a running Open vSwitch "
                                                        "(sudo make test provisions both)")]

from topologies.enterprise import EnterpriseTopo  # noqa: E402
from topologies.traffic import start_benign  # noqa: E402

LEARN = 30
SOAK = float(os.environ.get("IOTGUARD_SOAK_SECONDS", "300"))


@pytest.mark.timeout(SOAK + LEARN + 300)
def test_enterprise_benign_soak_no_alert_no_response():
    topo = EnterpriseTopo()
    with running(topo, detection={"learn_seconds": LEARN}) as (ctl, net):
        devices = [h.name for h in net.hosts if h.name not in (topo.gateway, topo.internet, topo.honeypot)]
        start_benign(net, LEARN + SOAK + 200)
        ctl.wait_for(lambda: ctl.get("/api/v1/health")["detection"]["baselined"] >= len(devices),
                     LEARN + 90, "every device to finish its warm-up", interval=1.0)
        t0 = time.time()
        while time.time() - t0 < SOAK:
            time.sleep(min(10.0, max(0.0, SOAK - (time.time() - t0))))
            alerts = ctl.alerts()
            assert alerts == [], "\n".join(f"{a['kind']} {a['device']}: {a['explanation']}" for a in alerts)
            assert ctl.responses() == []
        health = ctl.get("/api/v1/health")
        assert health["counters"]["windows"] >= (LEARN + SOAK) * 0.9
        assert len(health["switches"]) == 5 and health["detection"]["baselined"] >= len(devices)
        print(f"enterprise soak: {SOAK:.0f} s after a {LEARN} s warm-up, {len(devices)} devices, "
              f"{health['counters']['windows']} windows, 0 alerts, 0 responses")
