"""Every response action on real Open vSwitch, checked by real traffic.

One smart_home network and controller serve the module.  Responses are
requested through the API (manual responses, or alerts raised by hand that go
through the playbooks), so these tests do not wait for a baseline; detection
itself is tested in test_detection.py.  Each test releases what it applied.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from topologies.lab import have_ovs, ping, running

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_ovs(), reason="needs root and a running Open vSwitch "
                                                        "(sudo make test provisions both)")]

from controller.openflow import rules  # noqa: E402
from tests.unit.kinds import Kind  # noqa: E402
from topologies.net import dns_query_cmd, honeypot_log, start_process, wait_listening  # noqa: E402
from topologies.smart_home import SmartHomeTopo  # noqa: E402

INET = "203.0.113.10"
CAM, TV, LAPTOP, GW = "10.0.0.11", "10.0.0.4", "10.0.0.3", "10.0.0.1"

PLAYBOOKS = """
playbooks:
  - name: test-burst-quarantine
    description: a burst alert quarantines (through the playbook, not a manual request)
    priority: 800
    when: {kinds: [new_flow_burst], devices: [camera]}
    do:
      - quarantine: {dhcp: true, dns: true, ttl: 10m}
      - notify: {log: true, webhook: "http://127.0.0.1:{hook}/hook", timeout_s: 2, retries: 1}
  - name: test-dry-run
    description: decides and audits, installs nothing
    mode: dry-run
    priority: 500
    when: {kinds: [anomaly], devices: [doorbell]}
    do:
      - quarantine: {ttl: 10m}
"""


def flows(bridge: str, table: int = 0) -> list[str]:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge, f"table={table}"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return [ln.strip() for ln in out.splitlines() if "cookie=" in ln]


def with_kind(bridge: str, kind: int) -> list[str]:
    """Table-0 flows on `bridge` whose cookie says they are rules of this kind."""
    return [f for f in flows(bridge) if rules.cookie_kind(int(f.split("cookie=")[1].split(",")[0], 16)) == kind]


def http_ok(host, ip: str, port: int = 80) -> bool:
    out = host.cmd(f"timeout 5 curl -s -o /dev/null -w '%{{http_code}}' --max-time 3 http://{ip}:{port}/")
    return out.strip().endswith("200")


def dns_ok(host, attempts: int = 2) -> bool:
    """A resolver's view: a query answered within `attempts` tries of 2 s (the very first
    query of a conversation can lose its packet while every hop's flow is being set up)."""
    return any(INET in host.cmd(dns_query_cmd(INET, "cloud.example")) for _ in range(attempts))


class Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def webhook():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, webhook):
    books = tmp_path_factory.mktemp("playbooks")
    (books / "test.yaml").write_text(PLAYBOOKS.replace("{hook}", str(webhook)))
    state = str(tmp_path_factory.mktemp("state"))
    topo = SmartHomeTopo()
    with running(topo, detection={"learn_seconds": 3600},
                 responses={"playbooks": [str(books)]}, state_dir=state) as (ctl, net):
        for h in net.hosts:     # every device announces itself (ARP) and is located
            h.cmd(f"timeout 3 ping -c1 -W1 {GW}")
        start_process(net, net.get("camera"), [sys.executable, "-m", "http.server", "8080",
                                               "--bind", CAM], "http")
        assert wait_listening(net.get("camera"), [("tcp", 8080)], timeout=10)
        ctl.wait_for(lambda: all(d["ips"] and d["dpid"] for d in ctl.devices().values()), 15,
                     "every device located with its address")
        ctl.books = books
        yield ctl, net


def manual(ctl, device, action, ttl=120, **params) -> dict:
    body = {"device": device, "action": action, "ttl": ttl, "params": params}
    return ctl.call("POST", "/api/v1/responses", body)


def confirmed(ctl, rid: int, timeout: float = 5.0) -> dict:
    return ctl.wait_for(lambda: next((r for r in ctl.responses() if r["id"] == rid and r["confirmed"]), None),
                        timeout, f"response {rid} confirmed by a barrier")


def release(ctl, rid: int) -> None:
    ctl.call("DELETE", f"/api/v1/responses/{rid}")


def test_quarantine_cuts_the_device_off_except_dns_and_release_restores(lab):
    ctl, net = lab
    cam, laptop = net.get("camera"), net.get("laptop")
    assert ping(cam, GW) and http_ok(cam, INET) and ping(laptop, CAM) and http_ok(laptop, CAM, 8080)
    assert dns_ok(cam)
    done = manual(ctl, "camera", "quarantine")
    (r,) = done["responses"]
    assert r["action"] == "quarantine" and r["mode"] == "enforce"
    r = confirmed(ctl, r["id"])
    assert r["confirmed"] == [0x102], "installed at the camera's edge switch, hs2"
    try:
        assert not ping(cam, GW, count=2), "camera still reaches the gateway"
        assert not http_ok(cam, INET), "camera still reaches the internet"
        assert not ping(laptop, CAM, count=2) and not http_ok(laptop, CAM, 8080), "camera still reachable"
        assert dns_ok(cam), "DNS to the allowed server must keep working"
        assert ping(laptop, GW) and http_ok(laptop, INET), "the others keep working"
    finally:
        release(ctl, r["id"])
    assert ctl.wait_for(lambda: ping(cam, GW), 5, "camera reachable again after release")
    assert http_ok(laptop, CAM, 8080)
    events = [e["event"] for e in ctl.audit() if e["response_id"] == r["id"]]
    assert {"decision", "installed", "released"} <= set(events)


def test_block_lateral_keeps_internet_and_gateway(lab):
    ctl, net = lab
    cam = net.get("camera")
    assert ping(cam, TV) and ping(cam, LAPTOP)
    (r,) = manual(ctl, "camera", "block_lateral")["responses"]
    confirmed(ctl, r["id"])
    try:
        assert not ping(cam, TV, count=2) and not ping(cam, LAPTOP, count=2), "lateral traffic still flows"
        assert http_ok(cam, INET), "internet traffic must keep flowing"
        assert ping(cam, GW), "the gateway stays reachable"
    finally:
        release(ctl, r["id"])
    assert ctl.wait_for(lambda: ping(cam, TV), 5, "lateral traffic restored")


def test_redirect_lands_the_connection_on_the_honeypot(lab):
    ctl, net = lab
    cam = net.get("camera")
    log = honeypot_log(net)
    probe = f"timeout 5 nc -w 2 {TV} 23 </dev/null"
    assert "login:" not in cam.cmd(probe), "nothing listens on the tv's telnet port"
    (r,) = manual(ctl, "camera", "redirect", to="honeypot", ports=[23], proto="tcp")["responses"]
    confirmed(ctl, r["id"])
    try:
        out = cam.cmd(probe)
        assert "login:" in out, f"the connection did not reach the honeypot: {out!r}"
        with open(log) as f:
            hits = [json.loads(x) for x in f if x.strip()]
        assert any(h["peer"] == CAM and h["local"] == TV and h["port"] == 23 for h in hits), hits
        assert http_ok(cam, INET), "traffic on other ports is not redirected"
    finally:
        release(ctl, r["id"])
    assert ctl.wait_for(lambda: "login:" not in cam.cmd(probe), 5, "redirect removed")


def iperf_udp_kbps(client, server, server_ip: str, seconds: int = 4) -> float:
    """What arrived at `server`, in kbit/s, of a 10 Mbit/s UDP stream from `client`."""
    srv = server.popen(["timeout", str(seconds + 8), "iperf3", "-s", "-1", "-p", "5202"])
    try:
        time.sleep(0.5)
        out = client.cmd(f"timeout {seconds + 6} iperf3 -c {server_ip} -p 5202 -u -b 10M -t {seconds} -J")
        total = json.loads(out)["end"]["sum"]      # UDP: lost_* are the receiver's count
        return total["bits_per_second"] * (1 - total["lost_percent"] / 100) / 1000
    finally:
        srv.kill()
        srv.wait(5)


def test_rate_limit_holds_iperf3_within_20_percent_of_the_cap(lab):
    ctl, net = lab
    cam, laptop = net.get("camera"), net.get("laptop")
    before = iperf_udp_kbps(cam, laptop, LAPTOP)
    assert before > 8000, f"unlimited UDP only {before:.0f} kbit/s"
    (r,) = manual(ctl, "camera", "rate_limit", kbps=2000)["responses"]
    confirmed(ctl, r["id"])
    try:
        got = iperf_udp_kbps(cam, laptop, LAPTOP)
        assert 1600 <= got <= 2400, f"rate limited to 2000 kbit/s, measured {got:.0f}"
    finally:
        release(ctl, r["id"])
    assert iperf_udp_kbps(cam, laptop, LAPTOP) > 8000


def test_block_ip_stops_every_host_reaching_it(lab):
    ctl, net = lab
    hosts = [net.get(n) for n in ("camera", "laptop", "tv")]
    assert all(http_ok(h, INET) for h in hosts)
    # INET is also the DNS server, a protected address: an operator must insist
    with pytest.raises(urllib.error.HTTPError) as e:
        ctl.call("POST", "/api/v1/responses", {"action": "block_ip", "ttl": 120, "params": {"ip": INET}})
    refused = json.load(e.value)
    assert e.value.code == 403 and refused["error"] == "refused"
    assert refused["message"] == f"{INET}/32 covers a DNS server ({INET}); send \"force\": true to override"
    assert refused["actions"][0]["outcome"] == "refused"
    assert all(http_ok(h, INET) for h in hosts), "a refused response installs nothing"
    done = ctl.call("POST", "/api/v1/responses", {"action": "block_ip", "ttl": 120, "params": {"ip": INET},
                                                   "force": True})
    (r,) = done["responses"]
    confirmed(ctl, r["id"])

    def both():
        mine = next(x for x in ctl.responses() if x["id"] == r["id"])
        return sorted(mine["confirmed"]) if len(mine["confirmed"]) == 2 else None
    assert ctl.wait_for(both, 5, "both switches confirm") == [0x101, 0x102]
    try:
        assert not any(http_ok(h, INET) for h in hosts), "somebody still reaches the blocked address"
        assert all(ping(h, GW) for h in hosts), "everything else keeps working"
    finally:
        release(ctl, r["id"])
    assert ctl.wait_for(lambda: all(http_ok(h, INET) for h in hosts), 5, "address reachable again")


def test_ttl_expiry_restores_connectivity(lab):
    ctl, net = lab
    cam = net.get("camera")
    (r,) = manual(ctl, "camera", "quarantine", ttl=4)["responses"]
    confirmed(ctl, r["id"])
    assert not ping(cam, GW, count=1)
    ctl.wait_for(lambda: ping(cam, GW), 10, "connectivity back after the ttl")
    # the controller's expiry and the switch's hard_timeout race; either way the expiry is
    # audited (a flow-removed of a due response expires it): wait for that very record
    ctl.wait_for(lambda: any(e["event"] == "expired" and e["response_id"] == r["id"] for e in ctl.audit()),
                 10, "the expired audit record")
    assert r["id"] not in [x["id"] for x in ctl.responses()]


def test_alert_through_a_playbook_quarantines_and_dry_run_changes_nothing(lab):
    ctl, net = lab
    cam, bell = net.get("camera"), net.get("doorbell")
    t0 = time.time()
    ctl.call("POST", "/api/v1/alerts", {"kind": "anomaly", "device": "doorbell", "score": 9})
    assert ping(bell, GW), "a dry-run playbook must install nothing"
    assert [r for r in ctl.responses() if r["mode"] == "enforce" and r["mac"] == "00:00:00:00:00:12"] == []
    dry = [e for e in ctl.audit(t0) if e["event"] == "dry-run" and e["playbook"] == "test-dry-run"]
    assert dry and dry[0]["rules"], "the dry run is audited with the rules it would install"
    ctl.call("POST", "/api/v1/alerts", {"kind": "new_flow_burst", "device": "camera", "score": 50})
    (r,) = [x for x in ctl.responses() if x["playbook"] == "test-burst-quarantine"]
    confirmed(ctl, r["id"])
    try:
        assert not ping(cam, GW, count=2)
        ctype, hook = ctl.wait_for(lambda: Hook.received[-1] if Hook.received else None, 5,
                                   "the webhook called")
        assert ctype == "application/json" and hook["alert"]["device"] == "camera"
        assert hook["actions"][0]["action"] == "quarantine" and hook["actions"][0]["response_id"] == r["id"]
        assert "NOTIFY [test-burst-quarantine]" in ctl.logs()
    finally:
        release(ctl, r["id"])


def test_bad_requests_get_json_errors_and_change_nothing(lab):
    ctl, _ = lab
    state = lambda: [(r["id"], r["state"], r["expires"]) for r in ctl.responses()]  # noqa: E731
    before = state()
    for method, path, body, status, words in [
        ("POST", "/api/v1/responses", {"device": "camera", "action": "explode"}, 400, "field 'action'"),
        ("POST", "/api/v1/responses", {"device": "nobody", "action": "quarantine"}, 400, "unknown device"),
        ("POST", "/api/v1/responses", {"device": "camera", "action": "rate_limit", "params": {"kbps": -1}},
         400, "params.kbps"),
        ("DELETE", "/api/v1/responses/999999", None, 404, "999999"),
        ("POST", "/api/v1/alerts", {"kind": "anomaly"}, 400, "field 'device'"),
    ]:
        with pytest.raises(urllib.error.HTTPError) as e:
            ctl.call(method, path, body)
        answer = json.load(e.value)
        assert e.value.code == status and words in answer["message"], (path, answer)
    assert state() == before


def test_quarantine_survives_kill_9_and_a_switch_reconnect(lab):
    ctl, net = lab
    cam = net.get("camera")
    (r,) = manual(ctl, "camera", "quarantine", ttl=300)["responses"]
    confirmed(ctl, r["id"])
    assert not ping(cam, GW, count=1)
    os.killpg(ctl.proc.pid, signal.SIGKILL)
    ctl.proc.wait(5)
    ctl.log.close()
    try:
        ctl.start(timeout=30)
        ctl.wait_switches(2, timeout=30)
        again = confirmed(ctl, r["id"], timeout=15)
        assert 0 < again["remaining"] < 300
        assert not ping(cam, GW, count=2), "the quarantine must still hold after a restart"
        assert with_kind("hs2", Kind.QUARANTINE)
        # the switch drops and re-opens its connection: rules come back with it
        subprocess.run(["ovs-vsctl", "del-controller", "hs2"], check=True, timeout=10)
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", "hs2",
                        f"cookie={rules.cookie(Kind.QUARANTINE, r['id']):#x}/-1"], check=True, timeout=10)
        assert not with_kind("hs2", Kind.QUARANTINE)
        subprocess.run(["ovs-vsctl", "set-controller", "hs2", f"tcp:127.0.0.1:{ctl.ofp_port}"],
                       check=True, timeout=10)
        ctl.wait_for(lambda: with_kind("hs2", Kind.QUARANTINE), 20, "quarantine rules re-installed")
        assert not ping(cam, GW, count=2)
    finally:
        release(ctl, r["id"])
    ctl.wait_for(lambda: ping(cam, GW), 5, "camera reachable after release")


def test_a_full_table_fails_the_response_loudly_and_leaves_nothing_half_installed(lab):
    ctl, net = lab
    cam = net.get("camera")
    t0 = time.time()
    subprocess.run(["ovs-vsctl", "--", "--id=@t", "create", "Flow_Table", "flow_limit=6",
                    "overflow_policy=refuse", "--", "set", "Bridge", "hs2", "flow_tables:0=@t"],
                   check=True, timeout=10, capture_output=True)
    try:
        (r,) = manual(ctl, "camera", "quarantine")["responses"]     # 10 rules: more than fit
        failed = ctl.wait_for(lambda: [e for e in ctl.audit(t0) if e["event"] == "failed"
                                       and e["response_id"] == r["id"]], 5, "the failure reported")
        assert "OFPFMFC_TABLE_FULL" in failed[0]["error"]
        assert r["id"] not in [x["id"] for x in ctl.responses()], "a failed response is not listed active"
        ctl.wait_for(lambda: not with_kind("hs2", Kind.QUARANTINE), 5, "the installed part removed")
        assert ping(cam, GW), "a half-installed quarantine must not be left cutting the camera off"
        assert "OFPFMFC_TABLE_FULL" in ctl.logs()
    finally:
        subprocess.run(["ovs-vsctl", "clear", "Bridge", "hs2", "flow_tables"], check=True, timeout=10)


def test_reload_refuses_an_invalid_set_and_keeps_the_last_good_one(lab):
    ctl, _ = lab
    names = lambda: sorted(p["name"] for p in ctl.get("/api/v1/playbooks")["playbooks"])  # noqa: E731
    before = names()
    bad = ctl.books / "zz-bad.yaml"
    bad.write_text("playbooks:\n  - name: broken\n    description: d\n    when: {kinds: [scan]}\n"
                   "    do: [{quarantine: {ttl: 10m}}]\n")
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            ctl.call("POST", "/api/v1/playbooks/reload")
        answer = json.load(e.value)
        assert e.value.code == 422 and answer["error"] == "invalid_playbooks"
        assert any("zz-bad.yaml:4:" in p and "unknown alert kind 'scan'" in p for p in answer["problems"])
        os.kill(ctl.proc.pid, signal.SIGHUP)
        ctl.wait_for(lambda: ctl.logs().count("playbook reload refused") >= 2, 5, "SIGHUP reload refused in the log")
        assert names() == before, "the previous set stays active"
    finally:
        bad.unlink()
    good = ctl.books / "zz-good.yaml"
    good.write_text("playbooks:\n  - name: extra\n    description: d\n    when: {kinds: [outbreak]}\n"
                    "    do: [{notify: {log: true}}]\n")
    try:
        os.kill(ctl.proc.pid, signal.SIGHUP)
        ctl.wait_for(lambda: "extra" in names(), 5, "SIGHUP reload picks up the new playbook")
    finally:
        good.unlink()
        ctl.call("POST", "/api/v1/playbooks/reload")
    assert names() == before


def test_prometheus_metrics_count_what_happened(lab):
    """Counters start at the last controller start (the kill -9 test restarted it)."""
    ctl, _ = lab
    (r,) = manual(ctl, "camera", "quarantine", ttl=60)["responses"]
    confirmed(ctl, r["id"])
    release(ctl, r["id"])

    def scraped():
        text = ctl.metrics()
        lines = dict(ln.rsplit(" ", 1) for ln in text.splitlines() if ln and not ln.startswith("#"))
        key = 'iotguard_responses_total{action="quarantine",outcome="installed"}'
        active = 'iotguard_active_responses{action="quarantine"}'
        return lines if float(lines.get(key, 0)) >= 1 and float(lines.get(active, 1)) == 0 else None
    lines = ctl.wait_for(scraped, 5, "the released quarantine counted in a metrics snapshot")
    assert float(lines["iotguard_switches_connected"]) == 2
    assert float(lines['iotguard_responses_total{action="quarantine",outcome="failed"}']) >= 1   # the full table
    assert float(lines["iotguard_polls_total"]) > 0 and float(lines["iotguard_packet_in_total"]) > 0
    assert float(lines["iotguard_response_confirm_seconds_count"]) >= 1
    assert float(lines["iotguard_scoring_seconds_count"]) > 0
