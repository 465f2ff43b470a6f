"""The control loop on real Open vSwitch and Mininet, with the real controller."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from topologies.lab import RYU_MANAGER, Controller, have_ovs, ping, running

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_ovs(), reason="needs root and a running Open vSwitch "
                                                        "(sudo make test provisions both)")]

from topologies.net import inventory, locations, start_network, stop_network  # noqa: E402
from topologies.enterprise import EnterpriseTopo  # noqa: E402
from topologies.smart_home import SmartHomeTopo  # noqa: E402

INET_IP = "203.0.113.10"


def flows(bridge: str) -> list[dict]:
    """The bridge's flows as {"cookie": int, "table": int, "duration": float, "text": str}."""
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    rows = []
    for ln in out.splitlines():
        fields = dict(kv.split("=", 1) for kv in ln.strip().replace(" ", ",").split(",")
                      if kv.startswith(("cookie=", "table=", "duration=")))
        if "cookie" in fields:
            rows.append({"cookie": int(fields["cookie"], 16), "table": int(fields.get("table", 0)),
                         "duration": float(fields["duration"].rstrip("s")), "text": ln.strip()})
    return rows


@pytest.fixture(scope="module")
def smart_home():
    topo = SmartHomeTopo()
    with running(topo) as (ctl, net):
        yield ctl, net, topo


def test_pingall_smart_home(smart_home):
    _, net, _ = smart_home
    assert net.pingAll(timeout="1") == 0.0


def test_tcp_iperf3_and_http(smart_home):
    ctl, net, _ = smart_home
    laptop, camera = net.get("laptop"), net.get("camera")
    srv = laptop.popen(["timeout", "15", "iperf3", "-s", "-1", "-p", "5201"])
    try:
        time.sleep(0.5)
        out = camera.cmd("timeout 10 iperf3 -c 10.0.0.3 -p 5201 -t 3 -f m")
        assert "receiver" in out, out
        rate = float([ln for ln in out.splitlines() if "receiver" in ln][0].split()[-3])
        assert rate > 10, f"iperf3 camera->laptop only {rate} Mbit/s"
    finally:
        os.killpg(srv.pid, signal.SIGKILL)
        srv.wait(5)
    page = camera.cmd(f"timeout 5 curl -s -o /dev/null -w '%{{http_code}}' http://{INET_IP}/")
    assert page.strip().endswith("200"), page


def test_flow_stats_for_every_active_host_within_3s(smart_home):
    ctl, net, topo = smart_home
    hosts = [h for h in net.hosts if h.name not in ("gw",)]
    pings = [h.popen(["timeout", "8", "ping", "-i", "0.2", "-W", "1", "10.0.0.1"]) for h in hosts
             if h.name != "inet"]
    pings.append(net.get("inet").popen(["timeout", "8", "ping", "-i", "0.2", "-W", "1", "203.0.113.1"]))
    try:
        time.sleep(1.0)   # first packets take the packet-in path; flows carry the rest
        t0 = time.monotonic()

        def all_counted():
            devs = ctl.devices()
            missing = [h.name for h in hosts if devs.get(h.name, {}).get("tx_packets_per_s", 0) <= 0]
            return not missing or None
        ctl.wait_for(all_counted, 3.0, "per-device flow stats for every pinging host")
        took = time.monotonic() - t0
        devs = ctl.devices()
        assert devs["camera"]["tx_packets_per_s"] > 2   # 5 pings/s, counted at hs2
        assert devs["gw"]["rx_packets_per_s"] > 2
        health = ctl.get("/api/v1/health")
        assert all(s["polls"] > 0 and s["flow_entries"] > 0 for s in health["switches"])
        print(f"flow stats for {len(hosts)} hosts within {took:.2f}s")
    finally:
        for p in pings:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def test_devices_api_locates_every_host(smart_home):
    ctl, net, topo = smart_home
    net.pingAll(timeout="1")
    expected = locations(topo)
    devs = ctl.devices()
    for inv in inventory(topo):
        d = devs[inv["name"]]
        loc = expected[inv["name"]]
        assert (d["dpid"], d["port"]) == (loc["dpid"], loc["port"]), (inv["name"], d)
        assert d["mac"] == inv["mac"] and d["tags"] == inv["tags"]
        assert inv["ip"] in d["ips"]
    health = ctl.get("/api/v1/health")
    assert len(health["links"]) == 2   # hs1<->hs2, both directions


def test_enterprise_pingall_and_locations():
    topo = EnterpriseTopo()
    with running(topo) as (ctl, net):
        ctl.wait_for(lambda: len(ctl.get("/api/v1/health")["links"]) >= 2 * (len(topo.switches()) - 1),
                     5.0, "every inter-switch link discovered")
        assert net.pingAll(timeout="1") == 0.0
        devs = ctl.devices()
        for name, loc in locations(topo).items():
            assert (devs[name]["dpid"], devs[name]["port"]) == (loc["dpid"], loc["port"]), name


def test_restart_restores_forwarding_within_10s():
    topo = SmartHomeTopo()
    ctl = Controller(inventory(topo))
    ctl2 = None
    net = None
    try:
        ctl.start()
        net = start_network(topo, controller_port=ctl.ofp_port)
        ctl.wait_switches(2)
        assert ping(net.get("camera"), "10.0.0.3")
        # someone else's rule, and ours: a restart must remove only ours
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", "hs1",
                        "cookie=0x1234,table=0,priority=5,udp,tp_dst=9,actions=drop"],
                       check=True, timeout=10)
        assert any(f["cookie"] >> 40 == 0x10C603 and f["table"] == 1 for f in flows("hs1"))
        time.sleep(2.0)   # so rules from before the restart are visibly older
        ctl.stop(signal.SIGKILL)
        ctl2 = Controller(inventory(topo), ofp_port=ctl.ofp_port)
        t0 = time.monotonic()
        ctl2.start()
        # a conversation the switches have never seen needs the new controller
        ctl2.wait_for(lambda: ping(net.get("doorbell"), "10.0.0.4"), 10.0,
                      "forwarding after the restart")
        print(f"forwarding restored {time.monotonic() - t0:.2f}s after restart")
        age = time.monotonic() - t0
        after = flows("hs1")
        foreign = [f for f in after if f["cookie"] == 0x1234]
        assert foreign and foreign[0]["duration"] > age + 1.5, "the foreign rule was touched"
        ours = [f for f in after if f["cookie"] >> 48 == 0x10C6]
        assert ours and all(f["duration"] <= age + 0.2 for f in ours), \
            [f["text"] for f in ours if f["duration"] > age + 0.2]
    finally:
        stop_network(net)
        ctl.cleanup()
        if ctl2:
            ctl2.cleanup()


def test_sigterm_and_sigint_exit_0_within_3s():
    for sig in (signal.SIGTERM, signal.SIGINT):
        ctl = Controller()
        try:
            ctl.start()
            t0 = time.monotonic()
            code = ctl.stop(sig, timeout=3.0)
            assert code == 0, f"{sig!r}: exit code {code}, log:\n{ctl.logs()}"
            assert time.monotonic() - t0 < 3.0
            assert "shutting down" in ctl.logs()
        finally:
            ctl.cleanup()


def test_eventlet_hub_pingall():
    with running(SmartHomeTopo(), env={"OSKEN_HUB_TYPE": "eventlet"}) as (ctl, net):
        assert net.pingAll(timeout="1") == 0.0
        ctl.wait_for(lambda: ctl.devices()["camera"]["dpid"] == "0000000000000102", 3.0,
                     "camera located under eventlet")
        assert ctl.get("/api/v1/health")["framework"] == "os-ken"
        assert ctl.stop(signal.SIGTERM) == 0


@pytest.mark.skipif(not os.path.exists(RYU_MANAGER),
                    reason="Ryu 4.34 venv missing: run vagrant/install-ryu.sh (make test does)")
def test_ryu_manager_smoke():
    with running(SmartHomeTopo(), framework="ryu") as (ctl, net):
        assert "iotguard ready on ryu" in ctl.logs()
        assert ctl.get("/api/v1/health")["framework"] == "ryu"
        assert net.pingAll(timeout="1") == 0.0
        assert ctl.devices()["camera"]["port"] == 2
