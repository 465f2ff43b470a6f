"""A benign soak with the novelties of a real day: the shipped playbooks do nothing.

smart_home, shipped playbooks, a 30 s warm-up, then IOTGUARD_NOVELTY_SECONDS (default
150; the issue's target is 600) of benign traffic with, one after another:

- a big download: the TV fetches 30 MB from the server it gets its firmware from;
- a backup: the laptop uploads 40 MB to the cloud server it browses;
- a reboot: the camera goes silent for 20 s, forgets its ARP cache, and streams again;
- a report-rate change: the thermostat reports twice as often from then on;
- a newcomer: the speaker, silent through the whole warm-up, joins and starts its profile.

Alerts may be raised (an operator may want to hear of a 40 MB upload); no response may be
applied, since each of these is a normal thing for its device to do.  The alerts are
printed for the record.
"""

from __future__ import annotations

import os
import time

import pytest

from topologies.lab import have_ovs, running

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_ovs(), reason="needs root and a running Open vSwitch "
                                                        "(sudo make test provisions both)")]

from topologies.net import _state, stop_process  # noqa: E402
from topologies.smart_home import SmartHomeTopo  # noqa: E402
from topologies.traffic import PROFILES, start_benign, start_host  # noqa: E402

LEARN = 30
SOAK = float(os.environ.get("IOTGUARD_NOVELTY_SECONDS", "150"))
DEVICES = ["camera", "doorbell", "thermostat", "bulb1", "bulb2", "bulb3", "hub", "laptop", "tv"]


def at(t0: float, offset: float) -> None:
    time.sleep(max(0.0, t0 + offset - time.time()))


@pytest.mark.timeout(SOAK + LEARN + 300)
def test_a_day_of_benign_novelties_gets_no_response():
    topo = SmartHomeTopo()
    inet_ip = topo.INET_IP
    with running(topo, detection={"learn_seconds": LEARN}) as (ctl, net):
        total = LEARN + SOAK + 200
        www = os.path.join(_state(net)["tmpdir"], "www")
        with open(os.path.join(www, "firmware", "big.bin"), "wb") as f:
            f.write(os.urandom(30_000_000))
        procs = start_benign(net, total, roles={"camera": "off", "thermostat": "off", "speaker": "off"})
        camera = start_host(net, "camera", total)
        thermostat = start_host(net, "thermostat", total)
        ctl.wait_for(lambda: ctl.get("/api/v1/health")["detection"]["baselined"] >= len(DEVICES),
                     LEARN + 90, "every device to finish its warm-up", interval=1.0)
        assert "speaker" not in ctl.devices() or not ctl.devices()["speaker"]["seen"], "the newcomer was silent"
        t0 = time.time()
        story: list[tuple[float, str]] = []
        speaker: list = []
        try:
            at(t0, 5)
            story.append((time.time() - t0, "tv downloads 30 MB"))
            r = net.get("tv").cmd(f"timeout 90 curl -s -m 80 -o /dev/null -w '%{{size_download}}' "
                                  f"http://{inet_ip}/firmware/big.bin")
            assert r.strip().endswith("30000000"), f"the download did not complete: {r!r}\n" + \
                _report(ctl, t0, story, ctl.responses())
            at(t0, 25)
            story.append((time.time() - t0, "laptop uploads a 40 MB backup"))
            r = net.get("laptop").cmd(f"head -c 40000000 /dev/urandom | timeout 90 curl -s -m 80 -o /dev/null "
                                      f"-w '%{{http_code}}' --data-binary @- http://{inet_ip}/upload")
            assert r.strip().endswith("200"), f"the upload failed: {r!r}\n" + _report(ctl, t0, story, ctl.responses())
            at(t0, 45)
            story.append((time.time() - t0, "camera reboots (20 s silent, ARP cache flushed)"))
            for p in camera:
                stop_process(p)
            net.get("camera").cmd("ip neigh flush all")
            time.sleep(20)
            camera = start_host(net, "camera", total)
            at(t0, 75)
            story.append((time.time() - t0, "thermostat reports twice as often"))
            for p in thermostat:
                stop_process(p)
            faster = PROFILES["thermostat"].replace("sleep 2", "sleep 1")
            assert faster != PROFILES["thermostat"]
            thermostat = start_host(net, "thermostat", total, loop=faster)
            at(t0, 85)
            story.append((time.time() - t0, "the speaker joins"))
            speaker = start_host(net, "speaker", total)
            ctl.wait_for(lambda: ctl.devices().get("speaker", {}).get("seen"), 30, "the newcomer to be seen")
            while time.time() - t0 < SOAK:
                time.sleep(min(10.0, max(0.0, SOAK - (time.time() - t0))))
                responses = [r for r in ctl.responses() if r["created"] >= t0]
                assert responses == [], _report(ctl, t0, story, responses)
        finally:
            for p in camera + thermostat + speaker + procs:
                stop_process(p)
        responses = [r for r in ctl.responses() if r["created"] >= t0]
        pending = ctl.get("/api/v1/responses/pending")["pending"]
        print(_report(ctl, t0, story, responses))
        assert responses == [] and pending == []


def _report(ctl, t0: float, story, responses) -> str:
    lines = [f"+{t:5.1f} s  {what}" for t, what in story]
    for a in reversed(ctl.alerts(t0)):
        lines.append(f"  alert {a['kind']} {a['device']} (+{a['time'] - t0:.1f} s): {a['explanation']}")
    for r in responses:
        lines.append(f"  response {r['action']} by {r['playbook']} for {r.get('device') or r['mac']}: {r['reason']}")
    return "\n".join(lines)
