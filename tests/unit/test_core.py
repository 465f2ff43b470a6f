import struct

from controller.openflow import rules
from controller.config import parse_config
from controller.core import Core
from controller.openflow.packets import mac_bytes
from controller.openflow.rules import Barrier, FlowSpec, Kind, MeterSpec, PacketOut

CAM, HUB = "00:00:00:00:00:11", "00:00:00:00:00:12"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def core():
    cfg = parse_config("""
devices:
  - {name: camera-1, mac: "00:00:00:00:00:11", tags: [camera]}
  - {name: hub, ip: 10.0.0.12, tags: [hub]}
  - {name: never-seen, mac: "00:00:00:00:00:99"}
""")
    clock = Clock()
    return Core(cfg, clock=clock, wall=clock), clock


def arp(src, spa, tpa):
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac_bytes(src),
                       bytes(map(int, spa.split("."))), b"\0" * 6, bytes(map(int, tpa.split("."))))
    return mac_bytes("ff:ff:ff:ff:ff:ff") + mac_bytes(src) + b"\x08\x06" + body


def tcp(src, dst, ip_src, ip_dst, dport):
    l4 = struct.pack("!HH", 40000, dport) + b"\0" * 16
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
                     bytes(map(int, ip_src.split("."))), bytes(map(int, ip_dst.split("."))))
    return mac_bytes(dst) + mac_bytes(src) + b"\x08\x00" + ip + l4


def body(rows):
    """Raw flow-stats entries: (cookie, packets, bytes, duration)."""
    out = b""
    for c, p, b, d in rows:
        out += struct.pack("!HBxIIHHHH4xQQQ", 56, 1, d, 0, 200, 10, 0, 1, c, p, b)
        out += struct.pack("!HH4x", 1, 4)
    return out


def test_switch_connect_clears_ours_then_installs_pipeline():
    c, _ = core()
    out = c.switch_connected(1)
    msgs = [m for d, m in out]
    assert all(d == 1 for d, _ in out)
    assert msgs[0] == rules.delete_all_ours()
    assert [m.command for m in msgs if isinstance(m, MeterSpec)] == ["delete", "delete", "add", "add"]
    assert [m for m in msgs if isinstance(m, FlowSpec) and m.command == "add"] == \
        rules.pipeline(1000, 200)[1]
    assert isinstance(msgs[-1], Barrier)


def test_ports_get_signed_lldp_probes_and_links_are_learned():
    c, clock = core()
    c.switch_connected(1), c.switch_connected(2)
    probes = c.switch_ports(1, [1, 2, 0xFFFFFFFE])
    assert [(d, m.out_port) for d, m in probes] == [(1, 1), (1, 2)]
    frame = probes[1][1].data
    assert c.packet_in(2, 3, frame) == []
    assert c.topology.is_trunk(1, 2) and c.topology.is_trunk(2, 3)
    assert c.health_view()["links"] == [{"src": "%016x" % 1, "src_port": 2,
                                         "dst": "%016x" % 2, "dst_port": 3}]


def test_forged_lldp_from_a_host_port_is_ignored():
    c, _ = core()
    c.switch_connected(1)
    other = Core(c.config).lldp.build(1, 9)
    c.packet_in(1, 4, other)
    assert c.topology.links() == []


def test_devices_learned_named_located_and_forwarded():
    c, clock = core()
    c.switch_connected(1)
    out = c.packet_in(1, 1, arp(CAM, "10.0.0.11", "10.0.0.12"))
    assert out == [(1, PacketOut(arp(CAM, "10.0.0.11", "10.0.0.12"), "flood", 1))]
    c.packet_in(1, 2, arp(HUB, "10.0.0.12", "10.0.0.11"))
    out = c.packet_in(1, 1, tcp(CAM, HUB, "10.0.0.11", "10.0.0.12", 23))
    flows = [m for _, m in out if isinstance(m, FlowSpec)]
    assert len(flows) == 1 and flows[0].match_dict["tcp_dst"] == 23
    assert out[-1][1].out_port == 2
    devs = {d["name"]: d for d in c.devices_view()}
    assert devs["camera-1"]["dpid"] == "%016x" % 1 and devs["camera-1"]["port"] == 1
    assert devs["camera-1"]["tags"] == ["camera"] and devs["camera-1"]["ips"] == ["10.0.0.11"]
    assert devs["hub"]["mac"] == HUB and devs["hub"]["port"] == 2     # named by IP
    assert devs["never-seen"]["seen"] is False and devs["never-seen"]["dpid"] is None

    # two polls later the camera's rate is known
    cookie = flows[0].cookie
    c.flow_stats(1, body([(cookie, 0, 0, 0)]))
    clock.t += 2.0
    per = c.flow_stats(1, body([(cookie, 200, 30000, 2)]))
    assert per[CAM].tx_bytes == 30000 and per[HUB].rx_bytes == 30000
    devs = {d["name"]: d for d in c.devices_view()}
    assert devs["camera-1"]["tx_bytes_per_s"] == 15000.0
    assert devs["camera-1"]["packets_per_s"] == 100.0
    assert devs["hub"]["rx_bytes_per_s"] == 15000.0


def test_multipart_flow_stats_wait_for_last_part():
    c, clock = core()
    c.switch_connected(1)
    c.request_sent(1, 5)
    assert c.flow_stats_part(1, 5, body([(rules.cookie(Kind.FORWARD, 1), 1, 1, 1)]), True) is None
    assert c.switches[1].polls == 0
    assert c.flow_stats_part(1, 5, body([(rules.cookie(Kind.FORWARD, 2), 1, 1, 1)]), False) == {}
    assert c.switches[1].polls == 1 and c.switches[1].flow_entries == 2


def test_disconnect_forgets_switch():
    c, _ = core()
    c.switch_connected(1)
    c.packet_in(1, 1, arp(CAM, "10.0.0.11", "10.0.0.12"))
    c.switch_disconnected(1)
    assert c.packet_in(1, 1, arp(CAM, "10.0.0.11", "10.0.0.12")) == []
    assert c.topology.location(CAM) is None


def test_port_stats_multipart_and_deltas():
    c, clock = core()
    c.switch_connected(1)
    c.request_sent(1, 9)
    assert c.port_stats_part(1, 9, [(1, 100, 200, 1, 2)], more=True) is None
    assert c.port_stats_part(1, 9, [(2, 0, 0, 0, 0)], more=False) == []
    clock.t += 1
    c.request_sent(1, 10)
    c.port_stats_part(1, 10, [(1, 150, 260, 2, 4)], more=True)
    deltas = c.port_stats_part(1, 10, [(2, 5, 5, 1, 1)], more=False)
    assert [(d.port, d.rx_bytes, d.tx_bytes) for d in deltas] == [(1, 50, 60), (2, 5, 5)]


def test_gateway_does_not_inherit_the_addresses_it_routes():
    c, _ = core()
    c.switch_connected(1)
    gw = "00:00:00:00:00:01"
    c.packet_in(1, 1, arp(gw, "10.0.0.1", "10.0.0.11"))
    c.packet_in(1, 1, tcp(gw, CAM, "203.0.113.10", "10.0.0.11", 80))   # routed in
    c.packet_in(1, 1, tcp(gw, HUB, "10.0.0.11", "10.0.0.12", 80))      # hairpinned LAN source
    assert c.inventory.get(gw).ips == ["10.0.0.1"]


def test_a_reply_handled_late_does_not_shorten_the_next_window():
    """The switch read its counters 1 s apart; a busy controller handled the first reply
    0.93 s late, the second on time.  The window's rates are per the switch's second, not
    per the 0.07 s between the two replies' handling (seen in CI: 15 times the rate)."""
    from controller.telemetry.features import INDEX

    class Recorder:
        def __init__(self):
            self.windows = []

        def window(self, wall, wf, who):
            self.windows.append(wf)

        def event(self, *a):
            pass

    c, clock = core()
    c.recorder = rec = Recorder()
    c.switch_connected(1)
    c.packet_in(1, 1, arp(CAM, "10.0.0.11", "10.0.0.12"))
    c.packet_in(1, 2, arp(HUB, "10.0.0.12", "10.0.0.11"))
    out = c.packet_in(1, 1, tcp(CAM, HUB, "10.0.0.11", "10.0.0.12", 23))
    (flow,) = [m for _, m in out if isinstance(m, FlowSpec)]
    c.poll_sent([1])
    c.flow_stats(1, body([(flow.cookie, 0, 0, 10)]))
    clock.t += 1.0
    c.poll_sent([1])
    clock.t += 0.93
    c.flow_stats(1, body([(flow.cookie, 100, 10000, 11)]))       # read at +1 s, handled at +1.93 s
    clock.t += 0.07
    c.poll_sent([1])
    c.flow_stats(1, body([(flow.cookie, 200, 20000, 12)]))       # read and handled at +2 s
    last = rec.windows[-1]
    assert last.window == 1.0
    assert last.row(CAM)[INDEX["tx_bytes"]] == 10000.0, "not 10000 / 0.07"
    devs = {d["name"]: d for d in c.devices_view()}
    assert devs["camera-1"]["tx_bytes_per_s"] == 10000.0


def test_window_closes_when_every_switch_has_answered():
    c, clock = core()
    c.switch_connected(1), c.switch_connected(2)
    clock.t += 1
    c.poll_sent([1, 2])
    c.flow_stats(1, body([]))
    c.flow_stats(2, body([]))
    assert c.counters["windows"] == 1
    clock.t += 1
    c.poll_sent([1, 2])
    c.flow_stats(1, body([]))
    assert c.counters["windows"] == 1          # still waiting for switch 2
    clock.t += 1
    c.poll_sent([1, 2])                         # switch 2 never answered: close anyway
    assert c.counters["windows"] == 2


def test_alerts_name_the_new_external_address_they_are_about(monkeypatch):
    import numpy as np
    from controller.detection.alert import Alert
    from controller.openflow.packets import ip_int
    c, _ = core()
    c.known.learn(CAM, [ip_int("203.0.113.10")])
    dests = np.array([ip_int(a) for a in ("10.0.0.4", "203.0.113.10", "198.51.100.66")], dtype=np.uint32)
    monkeypatch.setattr(c.extractor, "last_destinations", lambda mac: dests)
    attribution = c.detector.attribution      # the detection stage names remotes as it builds alerts
    a = Alert(id="a1", time=1000.0, kind="anomaly", device="camera-1", mac=CAM, score=9.0, threshold=4.0,
              explanation="x", remote=attribution.remote(CAM))
    c.detector.alerts.append(a)
    ob = Alert(id="o1", time=1001.0, kind="outbreak", device="3 camera devices", mac=None, score=3.0,
               threshold=3.0, explanation="y", devices=["camera-1"],
               remote=attribution.outbreak(c.detector.alerts, {"camera-1"}, 1001.0, c.config.outbreak_seconds))
    assert a.remote == "198.51.100.66", "internal and learned destinations are not the remote"
    assert ob.remote == "198.51.100.66"
    c.known.learn(HUB, [ip_int("198.51.100.66")])      # another device uses it every day
    a = Alert(id="a1", time=1000.0, kind="anomaly", device="camera-1", mac=CAM, score=9.0, threshold=4.0,
              explanation="x", remote=attribution.remote(CAM))
    assert a.remote is None


def test_a_gateway_does_not_learn_destinations_so_it_cannot_vouch_for_a_drop_zone():
    c, clock = core()
    gw = "00:00:00:00:00:01"
    c.inventory.observe(gw, 0.0)
    c.inventory.get(gw).tags = ("gateway", "infra")
    c.switch_connected(1)
    c.packet_in(1, 2, arp(gw, "10.0.0.1", "10.0.0.11"))
    c.packet_in(1, 1, arp(CAM, "10.0.0.11", "10.0.0.1"))
    c.packet_in(1, 1, tcp(CAM, gw, "10.0.0.11", "203.0.113.20", 80))
    fwd = c.packet_in(1, 2, tcp(gw, CAM, "203.0.113.20", "10.0.0.11", 40000))    # relayed reply
    cookies = [m.cookie for _, m in fwd if isinstance(m, FlowSpec) and rules.cookie_kind(m.cookie) == Kind.FORWARD]
    clock.t += 1
    c.poll_sent([1])
    c.flow_stats(1, body([(k, 10, 10000, 1) for k in cookies]))
    assert gw not in c.known, "an excluded device learns no destinations"


def test_the_packet_in_frame_counts_in_its_window():
    """The first packet of a conversation goes packet-in, packet-out: it counts once, at
    its source's edge switch (tx) and its destination's (rx)."""
    from controller.telemetry.features import INDEX
    c, clock = core()
    c.switch_connected(1)
    c.packet_in(1, 1, arp(CAM, "10.0.0.11", "10.0.0.12"))      # flooded broadcast: tx only
    c.packet_in(1, 2, arp(HUB, "10.0.0.12", "10.0.0.11"))
    frame = tcp(CAM, HUB, "10.0.0.11", "10.0.0.12", 22)
    out = c.packet_in(1, 1, frame)
    assert any(isinstance(m, PacketOut) for _, m in out)
    wf = c.extractor.close(clock.t + 1, 1.0)
    cam, hub = wf.row(CAM), wf.row(HUB)
    assert cam[INDEX["tx_packets"]] == 2 and cam[INDEX["tx_bytes"]] == len(frame) + 42
    assert cam[INDEX["tcp_share"]] == 0.5 and cam[INDEX["other_share"]] == 0.5
    assert hub[INDEX["rx_packets"]] == 1 and hub[INDEX["rx_bytes"]] == len(frame)
    assert hub[INDEX["tx_packets"]] == 1, "its own ARP broadcast"


def test_health_says_when_the_state_disk_is_full(tmp_path, monkeypatch):
    from controller import core as core_module
    from controller.config import parse_config
    from controller.core import Core
    c = Core(parse_config(f"state_dir: {tmp_path}\n"), clock=Clock(), wall=Clock())
    assert c.health_view()["status"] == "ok"

    class Full:
        f_bavail, f_frsize = 10, 4096
    monkeypatch.setattr(core_module.os, "statvfs", lambda path: Full())
    h = c.health_view()
    assert h["status"] == "degraded"
    assert h["reasons"] == [f"the state directory {tmp_path} has 40960 bytes free: responses and the audit "
                            "log cannot be written (forwarding goes on)"]


def test_port_counters_of_a_port_with_one_device_reach_the_volume_fast_path(monkeypatch):
    c, clock = core()
    c.switch_connected(1)
    other = "00:00:00:00:00:13"
    c.packet_in(1, 3, arp(CAM, "10.0.0.11", "10.0.0.1"))      # camera alone on port 3
    c.packet_in(1, 4, arp(HUB, "10.0.0.12", "10.0.0.1"))      # two devices behind port 4
    c.packet_in(1, 4, arp(other, "10.0.0.13", "10.0.0.1"))
    seen = []
    monkeypatch.setattr(c.detector, "on_port_rates", lambda rates, now: seen.append(rates) or [])
    c.port_stats(1, [(3, 0, 0, 0, 0), (4, 0, 0, 0, 0), (5, 0, 0, 0, 0)])
    clock.t += 0.25
    c.port_stats(1, [(3, 42_000, 6_000, 1000, 100), (4, 42_000, 0, 1000, 0), (5, 42_000, 0, 1000, 0)])
    # the port's receive counters are what the device sent, its transmit counters what it received
    assert seen == [{CAM: (4000.0, 168_000.0, 24_000.0, 0.25)}]
    clock.t += 0.25
    c.port_stats(1, [(3, 10, 0, 1, 0)])                       # counters went back: a reset, not a rate
    assert len(seen) == 1
