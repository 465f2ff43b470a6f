"""The novelty memory and its alerts: slow lateral probes, slow port scans, new services.

Each scenario is a unit-level replay: a warm-up of windows and new-conversation
events in time order, then the behaviour, through Detector.on_new_flow and
on_window exactly as core feeds them.
"""

import ipaddress
import re

import numpy as np
import pytest

from controller.config import Config
from controller.detection import novelty
from controller.detection.detector import Detector
from controller.detection.novelty import HORIZONS, NoveltyMemory
from controller.detection.profiles import store_for
from controller.response.playbook import load_playbooks, matching
from controller.config import Device
from tests.unit.test_detector import normal, window

CAM, PLUG, HUB = "00:00:00:00:00:11", "00:00:00:00:00:21", "00:00:00:00:00:31"
NAMES = {CAM: ("camera", ("camera", "iot")), PLUG: ("plug", ("plug", "iot")), HUB: ("hub", ("hub",))}
TCP, UDP = 6, 17
LEARN = 60
T0 = 1000.0


def ip(s):
    return int(ipaddress.IPv4Address(s))


def who(mac):
    return NAMES[mac]


# What each device does every few seconds while it learns, and after.
HABITS = {
    CAM: [(TCP, ip("10.0.0.2"), 554), (TCP, ip("203.0.113.10"), 443), (UDP, ip("10.0.0.1"), 53),
          (UDP, ip("203.0.113.20"), 123), (0, ip("10.0.0.1"), -1)],
    PLUG: [(TCP, ip("203.0.113.30"), 8883), (UDP, ip("10.0.0.1"), 53)],
}


def hub_event(k):
    """A hub meets a new phone or bulb now and then, on one of a dozen services."""
    return (TCP, ip("10.0.1.0") + (k % 200), [80, 443, 8080, 1883, 5683, 9000 + k % 7][k % 6])


class Replay:
    def __init__(self, macs=(CAM, PLUG)):
        self.config = Config(learn_seconds=LEARN)
        self.det = Detector(self.config, store_for(self.config), who)
        self.rng = np.random.default_rng(3)
        self.macs = macs
        self.t = T0
        self.alerts = []
        self.k = 0

    def habits(self, t):
        """Every device's usual conversations, one every 3 s (a hub: a new peer every 4 s)."""
        for mac in self.macs:
            if mac == HUB:
                if int(t) % 4 == 0:
                    self.k += 1
                    self.event(mac, *hub_event(self.k), t)
            elif int(t) % 3 == 0:
                proto, addr, port = HABITS[mac][int(t) // 3 % len(HABITS[mac])]
                self.event(mac, proto, addr, port, t)

    def event(self, mac, proto, addr, port, t):
        self.alerts += self.det.on_new_flow(mac, proto, addr, port, t)

    def run_until(self, end, extra=()):
        """Windows every second up to `end`; `extra` events (t, mac, proto, ip, port) in between."""
        extra = sorted(extra)
        while self.t < end:
            nxt = self.t + 1.0
            self.habits(self.t)
            while extra and extra[0][0] < nxt:
                t, mac, proto, addr, port = extra.pop(0)
                self.event(mac, proto, addr, port, t)
            self.alerts += self.det.on_window(window(nxt, {m: normal(self.rng) for m in self.macs}), nxt)
            self.t = nxt
        return self.alerts

    def warm(self):
        self.run_until(T0 + LEARN + 10)
        assert self.alerts == [], "no alerts while learning"
        assert all(not self.det.store.profiles[m].learning for m in self.macs)
        return self


def lateral_probe(start, gap, hosts=8, mac=CAM):
    """ARP, then SSH and Telnet, on one neighbour it never talked to every `gap` s."""
    out = []
    for k in range(hosts):
        t, addr = start + k * gap, ip("10.0.0.21") + 7 * k
        out += [(t, mac, 0, addr, -1), (t + 0.01, mac, TCP, addr, 22), (t + 0.02, mac, TCP, addr, 23)]
    return out


@pytest.mark.parametrize("gap", [1.5, 2.0, 2.5, 3.0])
def test_slow_lateral_probe_is_alerted_within_15_s_in_plain_words(gap):
    r = Replay().warm()
    start = r.t + 0.3
    r.run_until(start + 60, lateral_probe(start, gap))
    lateral = [a for a in r.alerts if a.kind == "lateral_probe"]
    assert len(lateral) == 1, "one alert, open while the probe continues"
    a = lateral[0]
    assert a.device == "camera" and a.time - start <= 15.0, a.time - start
    assert a.explanation.startswith("camera tried SSH or Telnet on 5 internal hosts it had never talked "
                                    "to in the last 60 s (10.0.0.21, 10.0.0.28, 10.0.0.35, …)"), a.explanation
    assert a.explanation.endswith("; while learning it talked to 2")
    assert a.window["new_internal_peers_60s"] == 5 and a.threshold == 5
    assert r.det.current(a.id).count > 1, "later probes update it"
    assert any(e.feature == "new_services" and "SSH" in e.get("services") for e in a.features)
    books = load_playbooks(["playbooks"])
    cam = Device("camera", CAM, ("10.0.0.11",), ("camera", "iot"))
    assert "block-lateral-iot-slow" in [p.name for p in matching(books, a, cam)]


def test_slow_port_scan_of_one_host_is_alerted_within_20_s():
    r = Replay().warm()
    start = r.t + 0.5
    scan = [(start + k / 3, PLUG, TCP, ip("10.0.0.5"), 1 + k) for k in range(120)]   # 3 ports per second
    r.run_until(start + 45, scan)
    (a,) = [a for a in r.alerts if a.kind == "port_probe"]
    assert a.device == "plug" and a.time - start <= 20.0
    assert re.fullmatch(r"plug tried 1\d new ports on 10\.0\.0\.5 in the last 10 s \(TCP/1, TCP/2, TCP/3, …\); "
                        r"while learning it used 2 services", a.explanation), a.explanation
    assert [p.name for p in matching(load_playbooks(["playbooks"]), a, None)] == ["quarantine-scanner-slow"]
    assert not [x for x in r.alerts if x.kind == "new_flow_burst"], "3 per second is no burst"


def test_an_appliance_using_a_service_it_never_used_is_a_fact():
    """The issue's case: UDP/123 as always, then TCP on a new port to a new host (z about 1)."""
    r = Replay().warm()
    t = r.t + 0.4
    r.run_until(t + 5, [(t, CAM, TCP, ip("198.51.100.7"), 8081)])
    (a,) = r.alerts
    assert a.kind == "new_service" and t + 1.0 <= a.time <= t + 2.0, "decided at the window after its grace"
    assert a.explanation == ("camera used TCP/8081, a service it never used (to 198.51.100.7); while learning "
                             "it used 4 services: RTSP, HTTPS, DNS, …")
    assert a.features[0].get("services") == ["TCP/8081"]
    r.run_until(t + 30, [(t + 10, CAM, TCP, ip("198.51.100.8"), 8081)])
    assert len(r.alerts) == 1, "the same service again is no new fact"


def test_asking_the_lans_dns_or_ntp_for_the_first_time_is_no_news_but_a_new_lan_service_is():
    """The plug never asked DNS over TCP or NTP while learning (an IoT-23 Pi first asked its
    router's DNS hours after warm-up): not a fact; Telnet to the same router is."""
    r = Replay(macs=(PLUG,)).warm()
    t = r.t + 0.4
    r.run_until(t + 5, [(t, PLUG, TCP, ip("10.0.0.1"), 53), (t + 0.1, PLUG, UDP, ip("10.0.0.1"), 123)])
    assert r.alerts == []
    r.run_until(t + 10, [(t + 6, PLUG, TCP, ip("10.0.0.1"), 23)])
    (a,) = r.alerts
    assert a.kind == "new_service" and "Telnet" in a.explanation and "10.0.0.1" in a.explanation


def test_normal_churn_is_learned_and_raises_nothing():
    """A hub that meets a new peer every 4 s while learning keeps doing so: no alert;
    the camera and the plug keep their habits for ten minutes: no alert."""
    r = Replay(macs=(CAM, PLUG, HUB)).warm()
    r.run_until(r.t + 600)
    assert r.alerts == []


def test_a_fast_scan_is_the_burst_alert_not_a_novelty_alert():
    r = Replay().warm()
    start = r.t + 0.2
    r.run_until(start + 5, [(start + k * 0.01, CAM, TCP, ip("10.0.0.5"), 1 + k) for k in range(300)])
    assert [a.kind for a in r.alerts] == ["new_flow_burst"]


def test_a_fast_sweep_told_by_its_burst_is_not_told_again_later_but_a_slow_one_after_it_is():
    """A camera ARPs for 80 neighbours within a second (a burst alert), then, 30 s later, uploads
    to a new address: that is not 'looked for 80 internal hosts in the last 60 s' (seen in CI
    after a quarantined scan was released).  Probing anew, slowly, is alerted as ever."""
    r = Replay().warm()
    start = r.t + 0.2
    sweep = [(start + k * 0.01, CAM, 0, ip("10.0.0.100") + k, -1) for k in range(80)]
    r.run_until(start + 30, sweep + [(start + 29, CAM, TCP, ip("198.51.100.9"), 443)])
    assert [a.kind for a in r.alerts] == ["new_flow_burst"]
    later = r.t + 0.3
    r.run_until(later + 30, lateral_probe(later, 2.0))
    (a,) = [a for a in r.alerts if a.kind == "lateral_probe"]
    assert a.time - later <= 15.0 and "on 5 internal hosts" in a.explanation and "10.0.0.21" in a.explanation
    assert "10.0.0.100" not in a.explanation, "the sweep's hosts are not its examples"


def test_nothing_new_while_learning_and_a_memory_not_restored_learns_again():
    mem = NoveltyMemory(["10.0.0.0/8"], learn_seconds=30)
    for k in range(40):
        assert mem.observe(CAM, TCP, ip("10.0.0.2"), 554, T0 + k, learning=k < 35) is None
    assert mem.observe(CAM, TCP, ip("10.0.0.9"), 22, T0 + 41, learning=False) is not None
    fresh = NoveltyMemory(["10.0.0.0/8"], learn_seconds=30)     # a baseline loaded, no memory saved with it
    assert fresh.observe(CAM, TCP, ip("10.0.0.9"), 22, T0, learning=False) is None, "memory learns first"


def test_a_warm_up_over_but_waiting_for_its_next_conversation_is_saved():
    """A device whose traffic all rides the one flow it opened starts no conversation after
    its warm-up, so its memory stayed "learning" and a save left it out: after a restart it
    learned again, whatever it did then.  settle() freezes it as its next event would."""
    mem = NoveltyMemory(["10.0.0.0/8"], learn_seconds=30)
    mem.observe(CAM, UDP, ip("203.0.113.10"), 5683, T0, learning=True)
    assert mem.to_dict()["devices"] == []
    mem.settle(T0 + 20, learning=lambda mac: False)
    assert mem.to_dict()["devices"] == [], "its warm-up is not over"
    mem.settle(T0 + 40, learning=lambda mac: True)
    assert mem.to_dict()["devices"] == [], "its baseline still learns"
    mem.settle(T0 + 40, learning=lambda mac: False)
    (saved,) = mem.to_dict()["devices"]
    assert saved["mac"] == CAM and saved["services"] == [[UDP, 5683]]
    back = NoveltyMemory(["10.0.0.0/8"], learn_seconds=30)
    back.restore(NoveltyMemory.parse(mem.to_dict()))
    r = back.observe(CAM, TCP, ip("198.51.100.66"), 6667, T0 + 50, learning=False)
    assert r is not None and r.counts["new_services"][0] == 1, "judged at once, not learned"


def test_memory_is_bounded_per_device():
    mem = NoveltyMemory(["10.0.0.0/8"], learn_seconds=10)
    for k in range(20000):
        mem.observe(CAM, TCP if k % 2 else UDP, ip("10.0.0.0") + k, 1 + k % 30000, T0 + k * 0.001, learning=True)
    for k in range(20000):
        mem.observe(CAM, TCP, ip("10.1.0.0") + k, 1 + k, T0 + 100 + k * 0.01, learning=False)
    d = mem.devices[CAM]
    assert len(d.peers) <= novelty.MAX_PEERS and len(d.services) <= novelty.MAX_SERVICES
    assert len(d.external) <= novelty.MAX_EXTERNAL and len(d.novel) <= novelty.MAX_NOVEL
    assert len(d.hosts) <= novelty.MAX_HOSTS and len(d.pairs) <= novelty.MAX_PEERS + novelty.MAX_EXTERNAL
    assert all(len(b) <= h / w + 2 for s in d.sliding.values()
               for b, h, w in zip(s._b, HORIZONS, novelty._WIDTHS))


def test_answers_broadcast_and_dhcp_are_not_novel():
    mem = NoveltyMemory(["10.0.0.0/8"], learn_seconds=10)
    mem.observe(CAM, TCP, ip("10.0.0.2"), 554, T0, learning=True)
    mem.observe(CAM, TCP, ip("10.0.0.2"), 554, T0 + 20, learning=False)
    assert mem.observe(CAM, UDP, ip("255.255.255.255"), 67, T0 + 21, learning=False) is None
    assert mem.observe(CAM, UDP, ip("239.255.255.250"), 1900, T0 + 22, learning=False).counts[
        "new_internal_peers"] == (0, 0, 0), "multicast is nobody's peer"
    r = mem.observe(CAM, UDP, ip("10.0.0.2"), 40000, T0 + 23, learning=False)
    assert r is None, "UDP to an ephemeral port of a known peer: an answer, not a service"
