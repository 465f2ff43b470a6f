import ipaddress
import json

import numpy as np
import pytest

from controller.telemetry import features

from controller.openflow import rules
from controller.telemetry.features import (FEATURES, INDEX, TWO_SIDED, UNITS, FeatureExtractor,
                                 KnownDestinations, WindowFeatures)
from controller.network.forwarding import FlowRegistry
from tests.unit.kinds import Kind
from controller.telemetry.stats import FlowDeltas, edge_array

CAM, NVR, GW, HUB = "00:00:00:00:00:01", "00:00:00:00:00:02", "00:00:00:00:00:03", "00:00:00:00:00:04"
CLOUD = "203.0.113.10"
SUBNETS = ("10.0.0.0/8", "192.168.0.0/16")
IP, ARP = rules.ETH_TYPE_IP, rules.ETH_TYPE_ARP


def fwd(i):
    return rules.cookie(Kind.FORWARD, i)


def deltas(dpid, rows, window=1.0):
    """rows: (cookie, packets, bytes)."""
    c, p, b = (zip(*rows) if rows else ((), (), ()))
    n = len(rows)
    return FlowDeltas(dpid, 0.0, window, np.array(c, dtype=np.uint64), np.array(p, dtype=np.int64),
                      np.array(b, dtype=np.int64), np.zeros(n), np.zeros(n, dtype=bool))


def flow(reg, src, dst, eth_type=IP, ip=None, proto=None, port=None):
    return reg.id_for(rules.flow_key(src, dst, eth_type, ip, proto, port))


def edges(reg, where):
    return edge_array(reg, where.get)


def val(wf, mac, name):
    row = wf.row(mac)
    assert row is not None, f"{mac} not active"
    return float(row[INDEX[name]])


def top(wf, mac):
    i = wf.macs.index(mac)
    return int(wf.top_port[i]), int(wf.top_port_hosts[i])


# ---------------------------------------------------------------- constants


def test_feature_table_is_consistent():
    assert len(FEATURES) == len(set(FEATURES)) == 15
    assert set(UNITS) == set(FEATURES)
    assert INDEX == {n: i for i, n in enumerate(FEATURES)}
    assert {FEATURES[i] for i in TWO_SIDED} == {"tcp_share", "udp_share", "icmp_share",
                                                "other_share", "mean_pkt_size"}
    assert UNITS["tx_bytes"] == "bytes/s" and UNITS["new_dst_share"] == "fraction"


def test_docs_define_every_feature_with_its_unit():
    import pathlib
    doc = (pathlib.Path(__file__).parents[2] / "docs" / "features.md").read_text()
    for name in FEATURES:
        assert f"`{name}`" in doc and UNITS[name] in doc


# ---------------------------------------------------------------- scenarios


def test_camera_uploading_to_one_cloud_host():
    reg = FlowRegistry()
    up = flow(reg, CAM, GW, ip=CLOUD, proto=6, port=443)
    down = flow(reg, GW, CAM, ip="10.0.0.11", proto=6, port=40000)
    e = edges(reg, {CAM: 1, GW: 2})
    fx = FeatureExtractor(reg, SUBNETS)
    for dpid in (1, 2):   # both flows cross both switches
        fx.add(deltas(dpid, [(fwd(up), 1000, 1_400_000), (fwd(down), 500, 30_000)], window=10.0), e)
    wf = fx.close(now=100.0, window=10.0)
    assert wf.time == 100.0 and wf.window == 10.0
    assert sorted(wf.macs) == [CAM, GW] and wf.X.shape == (2, len(FEATURES))
    assert wf.X.dtype == np.float64
    assert val(wf, CAM, "tx_bytes") == 140_000.0
    assert val(wf, CAM, "tx_packets") == 100.0
    assert val(wf, CAM, "rx_bytes") == 3_000.0 and val(wf, CAM, "rx_packets") == 50.0
    assert val(wf, CAM, "distinct_dst_ips") == 1 and val(wf, CAM, "lateral_peers") == 0
    assert val(wf, CAM, "distinct_dst_ports") == 1
    assert val(wf, CAM, "tcp_share") == 1.0 and val(wf, CAM, "udp_share") == 0.0
    assert val(wf, CAM, "mean_pkt_size") == 1400.0
    assert val(wf, CAM, "new_flows") == 0 and val(wf, CAM, "dns_queries") == 0
    assert val(wf, CAM, "new_dst_share") == 0.0        # no KnownDestinations at all
    assert top(wf, CAM) == (443, 1)
    assert val(wf, GW, "lateral_peers") == 1           # the reply goes to an internal host
    d = wf.as_dict()
    assert set(d) == {CAM, GW} and list(d[CAM]) == list(FEATURES)
    assert d[CAM]["tx_bytes"] == 140_000.0 and isinstance(d[CAM]["tx_bytes"], float)
    json.dumps(d)
    assert wf.row(NVR) is None


def test_port_scan_of_one_host_counts_every_installed_port():
    reg = FlowRegistry()
    fids = [flow(reg, CAM, NVR, ip="10.0.0.20", proto=6, port=p) for p in range(1, 201)]
    e = edges(reg, {CAM: 1, NVR: 1})
    fx = FeatureExtractor(reg, SUBNETS)
    for f in fids:
        fx.new_flow(f)
    for f in fids[:50]:
        fx.new_flow(f)        # installed on a second switch too: the same conversation
    # Most probes went out as packet-outs, so the stats see almost nothing.
    fx.add(deltas(1, [(fwd(fids[9]), 2, 120), (fwd(fids[99]), 1, 60)]), e)
    wf = fx.close(now=1.0, window=1.0)
    assert val(wf, CAM, "new_flows") == 200
    assert val(wf, CAM, "distinct_dst_ports") == 200
    assert val(wf, CAM, "distinct_dst_ips") == 1 and val(wf, CAM, "lateral_peers") == 1
    # every port has one new conversation: the tie goes to the most bytes (port 10)
    assert top(wf, CAM) == (10, 1)


def test_top_port_ties_without_bytes_go_to_the_lowest_port():
    reg = FlowRegistry()
    fids = [flow(reg, CAM, NVR, ip="10.0.0.20", proto=17, port=p) for p in (5353, 161, 1900)]
    fx = FeatureExtractor(reg, SUBNETS)
    for f in fids:
        fx.new_flow(f)
    wf = fx.close(now=1.0, window=1.0)
    assert wf.macs == [CAM]                  # active from packet-ins alone
    assert top(wf, CAM) == (161, 1)
    assert val(wf, CAM, "tx_bytes") == 0 and val(wf, CAM, "udp_share") == 0.0


def test_mirai_like_sweep_of_internal_hosts_on_telnet():
    reg = FlowRegistry()
    fids = [flow(reg, CAM, GW, ip=f"10.0.1.{h}", proto=6, port=23) for h in range(1, 51)]
    e = edges(reg, {CAM: 1, GW: 1})
    fx = FeatureExtractor(reg, SUBNETS)
    for f in fids:
        fx.new_flow(f)
    fx.add(deltas(1, [(fwd(f), 3, 180) for f in fids[:20]]), e)
    wf = fx.close(now=5.0, window=5.0)
    assert val(wf, CAM, "lateral_peers") == 50
    assert val(wf, CAM, "distinct_dst_ips") == 50
    assert val(wf, CAM, "distinct_dst_ports") == 1
    assert val(wf, CAM, "new_flows") == 50
    assert top(wf, CAM) == (23, 50)


def test_new_conversations_beat_bytes_for_top_port():
    reg = FlowRegistry()
    upload = flow(reg, CAM, GW, ip=CLOUD, proto=6, port=443)
    sweep = [flow(reg, CAM, GW, ip=f"192.168.7.{h}", proto=6, port=23) for h in range(1, 4)]
    e = edges(reg, {CAM: 1, GW: 1})
    fx = FeatureExtractor(reg, SUBNETS)
    for f in sweep:
        fx.new_flow(f)
    fx.add(deltas(1, [(fwd(upload), 1000, 1_000_000)]), e)
    wf = fx.close(now=1.0, window=1.0)
    assert top(wf, CAM) == (23, 3)
    assert val(wf, CAM, "distinct_dst_ips") == 4 and val(wf, CAM, "lateral_peers") == 3
    # the next window, with no new conversation, the bytes decide
    fx.add(deltas(1, [(fwd(upload), 1000, 1_000_000), (fwd(sweep[0]), 1, 60)]), e)
    assert top(fx.close(now=2.0, window=1.0), CAM) == (443, 1)


def test_dns_client():
    reg = FlowRegistry()
    dns = flow(reg, HUB, GW, ip="10.0.0.1", proto=17, port=53)
    dns_tcp = flow(reg, HUB, GW, ip="10.0.0.1", proto=6, port=53)
    ntp = flow(reg, HUB, GW, ip="10.0.0.1", proto=17, port=123)
    e = edges(reg, {HUB: 1, GW: 1})
    fx = FeatureExtractor(reg, SUBNETS)
    fx.add(deltas(1, [(fwd(dns), 6, 420), (fwd(ntp), 2, 180)], window=5.0), e)
    fx.add(deltas(1, [(fwd(dns), 4, 280), (fwd(dns_tcp), 1, 80)], window=5.0), e)   # a second poll
    wf = fx.close(now=10.0, window=10.0)
    assert val(wf, HUB, "dns_queries") == 10            # per window, not per second
    assert val(wf, HUB, "tx_packets") == pytest.approx(1.3)
    assert val(wf, HUB, "udp_share") == pytest.approx(12 / 13)
    assert val(wf, HUB, "distinct_dst_ports") == 3      # udp/53, tcp/53, udp/123
    assert val(wf, HUB, "distinct_dst_ips") == 1
    assert top(wf, HUB) == (53, 1)                      # udp/53 has the most bytes


def test_protocol_shares_sum_to_one_when_there_are_packets():
    reg = FlowRegistry()
    tcp = flow(reg, CAM, NVR, ip="10.0.0.20", proto=6, port=554)
    udp = flow(reg, CAM, NVR, ip="10.0.0.20", proto=17, port=5000)
    icmp = flow(reg, CAM, NVR, ip="10.0.0.20", proto=1)
    gre = flow(reg, CAM, NVR, ip="10.0.0.20", proto=47)
    arp = flow(reg, CAM, NVR, eth_type=ARP)
    e = edges(reg, {CAM: 1, NVR: 1})
    fx = FeatureExtractor(reg, SUBNETS)
    fx.add(deltas(1, [(fwd(tcp), 50, 50_000), (fwd(udp), 30, 3_000), (fwd(icmp), 10, 980),
                      (fwd(gre), 6, 600), (fwd(arp), 4, 240)]), e)
    wf = fx.close(now=1.0, window=1.0)
    shares = [val(wf, CAM, n) for n in ("tcp_share", "udp_share", "icmp_share", "other_share")]
    assert shares == pytest.approx([0.5, 0.3, 0.1, 0.1])
    assert sum(shares) == pytest.approx(1.0)
    assert val(wf, CAM, "distinct_dst_ports") == 2      # ICMP, GRE and ARP have none
    assert val(wf, CAM, "distinct_dst_ips") == 1        # ARP has no IPv4 destination
    assert val(wf, CAM, "mean_pkt_size") == pytest.approx(54_820 / 100)
    # NVR only receives: no tx packets, so every share is 0
    assert [val(wf, NVR, n) for n in ("tcp_share", "udp_share", "icmp_share", "other_share",
                                      "mean_pkt_size")] == [0, 0, 0, 0, 0]
    assert val(wf, NVR, "rx_packets") == 100
    assert top(wf, NVR) == (-1, 0)


def test_edge_rule_counts_a_conversation_once():
    reg = FlowRegistry()
    f = flow(reg, CAM, NVR, ip="10.0.0.20", proto=6, port=554)
    lost = flow(reg, HUB, NVR, ip="10.0.0.20", proto=6, port=80)    # HUB not located
    e = edges(reg, {CAM: 1, NVR: 3})
    fx = FeatureExtractor(reg, SUBNETS)
    foreign = [(fwd(999), 7, 700), (rules.cookie(Kind.PIPELINE, 2), 9, 900),
               (rules.cookie(Kind.QUARANTINE, f), 9, 900), (0x1234, 9, 900)]
    for dpid in (1, 2, 3):   # the flow crosses three switches
        fx.add(deltas(dpid, [(fwd(f), 10, 10_000), (fwd(lost), 5, 500)] + (foreign if dpid == 1 else [])), e)
    wf = fx.close(now=1.0, window=1.0)
    assert val(wf, CAM, "tx_bytes") == 10_000 and val(wf, CAM, "tx_packets") == 10
    assert val(wf, NVR, "rx_bytes") == 10_500 and val(wf, NVR, "rx_packets") == 15
    assert val(wf, NVR, "tx_bytes") == 0
    assert HUB not in wf.macs


def test_edges_shorter_than_the_registry_and_empty_inputs():
    reg = FlowRegistry()
    fx = FeatureExtractor(reg, SUBNETS)
    fx.add(deltas(1, []), np.zeros(0, dtype=np.int64))
    fx.new_flow(5)                                  # unknown id: ignored
    wf = fx.close(now=1.0, window=1.0)
    assert wf.macs == [] and wf.X.shape == (0, len(FEATURES)) and wf.top_port.shape == (0,)
    f = flow(reg, CAM, NVR, ip="10.0.0.20", proto=6, port=80)
    e = edges(reg, {CAM: 1})
    g = flow(reg, HUB, GW, ip="10.0.0.1", proto=6, port=80)   # macs grew after edges was built
    fx.add(deltas(1, [(fwd(f), 1, 100), (fwd(g), 1, 100)]), e)
    assert fx.close(now=2.0, window=1.0).macs == [CAM]


def test_retired_flow_still_counts_in_its_window():
    reg = FlowRegistry()
    f = flow(reg, CAM, NVR, ip="10.0.0.20", proto=6, port=80)
    g = flow(reg, CAM, NVR, ip="10.0.0.21", proto=6, port=81)
    fx = FeatureExtractor(reg, SUBNETS)
    fx.add(deltas(1, [(fwd(f), 1, 100)]), edges(reg, {CAM: 1}))
    fx.new_flow(g)
    reg.forget([f, g])
    wf = fx.close(now=1.0, window=1.0)
    assert val(wf, CAM, "distinct_dst_ips") == 2 and val(wf, CAM, "new_flows") == 1


def test_compaction_gives_the_same_answer(monkeypatch):
    reg = FlowRegistry()
    fids = [flow(reg, CAM, NVR, ip=f"10.0.0.{h}", proto=6, port=80 + h % 3) for h in range(1, 40)]
    e = edges(reg, {CAM: 1, NVR: 1})

    def run():
        fx = FeatureExtractor(reg, SUBNETS, KnownDestinations())
        fx.known.learn(CAM, [int(ipaddress.IPv4Address("10.0.0.1"))])
        for poll in range(5):
            fx.add(deltas(1, [(fwd(f), poll + 1, 100 * (poll + i)) for i, f in enumerate(fids)]), e)
        return fx.close(now=5.0, window=5.0)

    plain = run()
    monkeypatch.setattr(features, "_COMPACT_ROWS", 8)
    small = run()
    assert plain.macs == small.macs
    np.testing.assert_allclose(plain.X, small.X)
    assert plain.top_port.tolist() == small.top_port.tolist()


# ---------------------------------------------------------------- new destinations


def test_new_dst_share_with_known_destinations():
    reg = FlowRegistry()
    cloud = flow(reg, CAM, GW, ip=CLOUD, proto=6, port=443)
    other = flow(reg, CAM, GW, ip="198.51.100.7", proto=6, port=443)
    arp = flow(reg, CAM, GW, eth_type=ARP)
    nvr = flow(reg, NVR, GW, ip="198.51.100.7", proto=6, port=443)
    hub = flow(reg, HUB, GW, ip="198.51.100.7", proto=6, port=443)
    e = edges(reg, {CAM: 1, GW: 1, NVR: 1, HUB: 1})
    known = KnownDestinations()
    known.learn(CAM, np.array([int(ipaddress.IPv4Address(CLOUD))], dtype=np.uint32))
    known.learn(HUB, [])               # learned, but never talked IPv4
    fx = FeatureExtractor(reg, SUBNETS, known)
    fx.add(deltas(1, [(fwd(cloud), 10, 2_900), (fwd(other), 4, 1_000), (fwd(arp), 2, 100),
                      (fwd(nvr), 1, 500), (fwd(hub), 1, 500)]), e)
    wf = fx.close(now=1.0, window=1.0)
    assert val(wf, CAM, "new_dst_share") == pytest.approx(1_000 / 4_000)   # ARP bytes are not new
    assert val(wf, NVR, "new_dst_share") == 0.0        # no known set yet
    assert val(wf, HUB, "new_dst_share") == 1.0        # known set, empty
    assert val(wf, GW, "new_dst_share") == 0.0         # no tx at all
    # what was learned in between counts from then on
    known.learn(CAM, [int(ipaddress.IPv4Address("198.51.100.7"))])
    fx.add(deltas(1, [(fwd(other), 4, 1_000)]), e)
    assert val(fx.close(now=2.0, window=1.0), CAM, "new_dst_share") == 0.0


def test_saturated_device_has_no_new_destinations():
    reg = FlowRegistry()
    f = flow(reg, CAM, GW, ip="198.51.100.7", proto=6, port=443)
    known = KnownDestinations(max_per_device=3)
    known.learn(CAM, [1, 2, 3, 4])
    fx = FeatureExtractor(reg, SUBNETS, known)
    fx.add(deltas(1, [(fwd(f), 4, 1_000)]), edges(reg, {CAM: 1}))
    assert val(fx.close(now=1.0, window=1.0), CAM, "new_dst_share") == 0.0


def test_known_destinations_bound_and_contains():
    reg = FlowRegistry()
    known = KnownDestinations(max_per_device=4)
    known.learn(NVR, [10, 20])               # learned before the registry knew the MAC
    known.learn(CAM, [1, 2, 3])
    known.learn(CAM, np.array([3, 4, 0], dtype=np.uint32))   # 0 (L2) is skipped
    assert not known.saturated(CAM) and known.to_dict()[CAM] == ["0.0.0.1", "0.0.0.2",
                                                                 "0.0.0.3", "0.0.0.4"]
    flow(reg, CAM, GW, ip="10.0.0.1")
    cam = reg.macs.index(CAM)
    got = known.contains(np.array([cam, cam, cam, -1]), np.array([1, 4, 5, 1], dtype=np.uint32), reg)
    assert got.tolist() == [True, True, False, False]
    flow(reg, NVR, GW, ip="10.0.0.1")        # the registry grew: rebuilt lazily
    nvr = reg.macs.index(NVR)
    assert known.contains(np.array([nvr, nvr, cam]), np.array([20, 1, 20]), reg).tolist() == \
        [True, False, False]
    known.learn(CAM, [5])                    # the fifth: talks to many
    assert known.saturated(CAM) and known.to_dict()[CAM] == ["*"]
    assert known.contains(np.array([cam, cam]), np.array([5, 123456]), reg).tolist() == [True, True]
    known.learn(CAM, range(100, 200))        # stays saturated, memory stays bounded
    assert known.to_dict()[CAM] == ["*"]
    assert known.contains(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint32), reg).shape == (0,)


def test_known_destinations_round_trip():
    known = KnownDestinations(max_per_device=3)
    known.learn(CAM, [int(ipaddress.IPv4Address(CLOUD)), int(ipaddress.IPv4Address("10.0.0.1"))])
    known.learn(NVR, [1, 2, 3, 4])
    known.learn(HUB, [])
    d = json.loads(json.dumps(known.to_dict()))
    assert d == {CAM: ["10.0.0.1", CLOUD], NVR: ["*"], HUB: []}
    back = KnownDestinations.from_dict(d, max_per_device=3)
    assert back.to_dict() == d and back.saturated(NVR) and HUB in back
    # a device with more addresses than the bound saturates rather than failing
    assert KnownDestinations.from_dict(d, max_per_device=1).to_dict()[CAM] == ["*"]


@pytest.mark.parametrize("bad, words", [
    ([], "must be a mapping"),
    ({"AA:00:00:00:00:01": []}, "AA:00:00:00:00:01"),
    ({"00:00:00:00:00:1": []}, "00:00:00:00:00:1"),
    ({5: []}, "'5'"),
    ({CAM: "10.0.0.1"}, f"[{CAM}]: must be a list"),
    ({CAM: {"10.0.0.1": 1}}, f"[{CAM}]: must be a list"),
    ({CAM: [167772161]}, f"[{CAM}][0]: must be a string"),
    ({CAM: ["10.0.0.1", None]}, f"[{CAM}][1]: must be a string"),
    ({CAM: ["10.0.0"]}, "'10.0.0' is not an IPv4"),
    ({CAM: ["010.0.0.1"]}, "'010.0.0.1'"),
    ({CAM: ["::1"]}, "'::1' is not an IPv4"),
    ({CAM: [" 10.0.0.1"]}, "' 10.0.0.1'"),
    ({CAM: ["0.0.0.0"]}, "not a canonical destination"),
    ({CAM: ["10.0.0.1", "10.0.0.1"]}, f"[{CAM}][1]: duplicate address 10.0.0.1"),
    ({CAM: ["*", "10.0.0.1"]}, f"[{CAM}][0]: '*'"),
    ({CAM: ["x" * 10_000]}, "is not an IPv4"),
])
def test_known_destinations_refuse_hostile_input(bad, words):
    with pytest.raises(ValueError) as err:
        KnownDestinations.from_dict(bad)
    assert words in str(err.value)
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("ips", [[-1], [2 ** 32], np.array([1.5])])
def test_learn_refuses_non_addresses(ips):
    with pytest.raises(ValueError, match="IPv4 addresses"):
        KnownDestinations().learn(CAM, ips)


@pytest.mark.parametrize("bound", [0, -3, True, 2.5, "512"])
def test_known_destinations_bound_must_be_positive(bound):
    with pytest.raises(ValueError, match="max_per_device"):
        KnownDestinations(bound)


# ---------------------------------------------------------------- window life


def test_close_resets_the_accumulators():
    reg = FlowRegistry()
    f = flow(reg, CAM, NVR, ip="10.0.0.20", proto=6, port=80)
    e = edges(reg, {CAM: 1, NVR: 1})
    fx = FeatureExtractor(reg, SUBNETS)
    fx.add(deltas(1, [(fwd(f), 2, 200)]), e)
    fx.new_flow(f)
    first = fx.close(now=1.0, window=1.0)
    assert sorted(first.macs) == [CAM, NVR]
    empty = fx.close(now=2.0, window=1.0)
    assert empty.macs == [] and empty.X.shape == (0, len(FEATURES))
    fx.add(deltas(1, [(fwd(f), 1, 100)]), e)
    again = fx.close(now=3.0, window=1.0)
    assert val(again, CAM, "tx_bytes") == 100 and val(again, CAM, "new_flows") == 0
    assert val(again, NVR, "rx_bytes") == 100


@pytest.mark.parametrize("window", [0, -1.0, float("nan"), float("inf"), None, "1", True])
def test_close_refuses_a_bad_window(window):
    fx = FeatureExtractor(FlowRegistry(), SUBNETS)
    with pytest.raises(ValueError, match="window"):
        fx.close(now=1.0, window=window)


def test_internal_subnets_are_checked_and_ipv6_ignored():
    with pytest.raises(ValueError):
        FeatureExtractor(FlowRegistry(), ["10.0.0.1/8"])
    with pytest.raises(ValueError):
        FeatureExtractor(FlowRegistry(), "10.0.0.0/8")
    reg = FlowRegistry()
    f = flow(reg, CAM, NVR, ip="172.16.0.5", proto=6, port=80)
    fx = FeatureExtractor(reg, ["fd00::/8", "172.16.0.0/12"])
    fx.new_flow(f)
    assert val(fx.close(now=1.0, window=1.0), CAM, "lateral_peers") == 1


def test_window_features_row_and_dict():
    X = np.arange(2 * len(FEATURES), dtype=np.float64).reshape(2, -1)
    wf = WindowFeatures(1.0, 1.0, [CAM, NVR], X, np.array([80, -1]), np.array([1, 0]))
    assert wf.row(NVR).tolist() == X[1].tolist() and wf.row(GW) is None
    assert wf.as_dict()[CAM]["rx_bytes"] == 1.0


# ---------------------------------------------------------------- scale


def test_hundred_thousand_flows_run_vectorised():
    reg = FlowRegistry(capacity=1 << 17)
    ndev, per = 1000, 100
    macs = [f"02:00:00:00:{d >> 8:02x}:{d & 0xFF:02x}" for d in range(ndev)]
    fids = np.array([flow(reg, macs[d], macs[(d + 1 + k) % ndev], ip=f"10.{d >> 8}.{d & 0xFF}.{k + 1}",
                          proto=(6, 17, 1)[k % 3], port=None if k % 3 == 2 else 1000 + k)
                     for d in range(ndev) for k in range(per)])
    assert len(fids) == 100_000
    where = {m: 1 + d % 10 for d, m in enumerate(macs)}
    e = edges(reg, where)
    known = KnownDestinations()
    for d in range(0, ndev, 2):
        known.learn(macs[d], [int(ipaddress.IPv4Address(f"10.{d >> 8}.{d & 0xFF}.1"))])
    fx = FeatureExtractor(reg, SUBNETS, known)
    rng = np.random.default_rng(1)
    pk = rng.integers(0, 50, len(fids))
    by = pk * 100
    cookies = np.uint64(rules.cookie(Kind.FORWARD)) | fids.astype(np.uint64)
    for _ in range(3):       # three polls in the window
        for dpid in range(1, 11):
            fx.add(FlowDeltas(dpid, 0.0, 1.0, cookies, pk, by, np.zeros(len(fids)),
                              np.zeros(len(fids), dtype=bool)), e)
    for f in fids[::10].tolist():
        fx.new_flow(f)
    wf = fx.close(now=3.0, window=3.0)
    assert wf.X.shape == (ndev, len(FEATURES)) and np.isfinite(wf.X).all()
    assert wf.X[:, INDEX["tx_bytes"]].sum() * 3.0 == pytest.approx(3 * by.sum())
    assert wf.X[:, INDEX["rx_bytes"]].sum() * 3.0 == pytest.approx(3 * by.sum())
    assert (wf.X[:, INDEX["new_flows"]] == 10).all()
    assert (wf.X[:, INDEX["distinct_dst_ips"]] <= per).all()
    assert (wf.top_port >= -1).all()


def test_last_destinations_feed_learning():
    reg = FlowRegistry()
    a = flow(reg, CAM, GW, ip=CLOUD, proto=6, port=443)
    b = flow(reg, CAM, NVR, ip="10.0.0.20", proto=17, port=5000)
    c = flow(reg, CAM, NVR, ip="10.0.0.20", proto=6, port=554)
    arp = flow(reg, CAM, NVR, eth_type=ARP)
    e = edges(reg, {CAM: 1, NVR: 1, GW: 1})
    fx = FeatureExtractor(reg, SUBNETS)
    fx.add(deltas(1, [(fwd(a), 1, 100), (fwd(b), 1, 100), (fwd(arp), 1, 60)]), e)
    fx.new_flow(c)
    assert fx.last_destinations(CAM).tolist() == []          # nothing closed yet
    fx.close(now=1.0, window=1.0)
    ips = [str(ipaddress.IPv4Address(int(i))) for i in fx.last_destinations(CAM)]
    assert ips == ["10.0.0.20", CLOUD]
    assert fx.last_destinations(NVR).tolist() == [] and fx.last_destinations(HUB).tolist() == []
    known = KnownDestinations()
    known.learn(CAM, fx.last_destinations(CAM))
    assert known.to_dict() == {CAM: ["10.0.0.20", CLOUD]}
    fx.close(now=2.0, window=1.0)
    assert fx.last_destinations(CAM).tolist() == []


def test_a_scanned_device_answering_its_scanner_is_not_contacting_anyone():
    """Its RSTs (one portless answer flow, forwarding.is_reply) are bytes it sent, not
    destinations it chose: no new destination, no lateral peer, no port."""
    reg = FlowRegistry()
    answers = flow(reg, HUB, CAM, ip="10.0.0.1", proto=6, port=None)     # HUB answering CAM's scan
    usual = flow(reg, HUB, GW, ip=CLOUD, proto=6, port=443)
    e = edges(reg, {CAM: 1, GW: 1, HUB: 1})
    known = KnownDestinations()
    known.learn(HUB, [int(ipaddress.IPv4Address(CLOUD))])
    fx = FeatureExtractor(reg, SUBNETS, known)
    fx.add(deltas(1, [(fwd(answers), 40, 2_160), (fwd(usual), 2, 300)]), e)
    wf = fx.close(now=1.0, window=1.0)
    assert val(wf, HUB, "tx_packets") == 42
    assert val(wf, HUB, "new_dst_share") == 0.0
    assert val(wf, HUB, "lateral_peers") == 0 and val(wf, HUB, "distinct_dst_ips") == 1
    assert val(wf, HUB, "distinct_dst_ports") == 1
    assert list(fx.last_destinations(HUB)) == [int(ipaddress.IPv4Address(CLOUD))]


# ---------------------------------------------------------------- packet-in frames


def test_packet_in_frames_count_in_bytes_packets_mix_and_dns():
    """The first packet of each conversation travels as packet-in + packet-out: no flow
    counter sees it, so the extractor counts it from the frame itself."""
    reg = FlowRegistry()
    dns = flow(reg, CAM, GW, ip="10.0.0.1", proto=17, port=53)
    fx = FeatureExtractor(reg, SUBNETS)
    e = edges(reg, {CAM: 1, GW: 1})
    fx.add(deltas(1, [(fwd(dns), 2, 200)], window=2.0), e)   # two more queries through the flow
    fx.packet_in(CAM, GW, 100, int(ipaddress.IPv4Address("10.0.0.1")), 17, 53)    # the first one
    fx.packet_in(CAM, None, 60)                         # an ARP broadcast: tx only, no IP
    fx.packet_in(None, CAM, 80, int(ipaddress.IPv4Address("10.0.0.11")), 17, -1)  # the answer: rx
    wf = fx.close(10.0, 2.0)
    assert val(wf, CAM, "tx_packets") == 4 / 2 and val(wf, CAM, "tx_bytes") == 360 / 2
    assert val(wf, CAM, "rx_packets") == 1 / 2 and val(wf, CAM, "rx_bytes") == 80 / 2
    assert val(wf, CAM, "dns_queries") == 3
    assert val(wf, CAM, "udp_share") == 0.75 and val(wf, CAM, "other_share") == 0.25
    assert val(wf, CAM, "mean_pkt_size") == 90
    assert val(wf, CAM, "distinct_dst_ips") == 1, "a frame adds no conversation"
    again = fx.close(11.0, 1.0)
    assert CAM not in again.macs, "frames belong to their window only"


def test_a_device_seen_only_in_packet_ins_is_active():
    reg = FlowRegistry()
    fx = FeatureExtractor(reg, SUBNETS)
    fx.packet_in(HUB, None, 42)          # a broadcast from a MAC with no flow yet
    fx.packet_in(None, None, 42)         # counted nowhere (not an edge of either end)
    wf = fx.close(1.0, 1.0)
    assert wf.macs == [HUB] and val(wf, HUB, "other_share") == 1 and val(wf, HUB, "tx_bytes") == 42


def test_packet_in_bytes_to_new_destinations_count_in_new_dst_share():
    reg = FlowRegistry()
    known = KnownDestinations()
    known.learn(CAM, [int(ipaddress.IPv4Address(CLOUD))])
    fx = FeatureExtractor(reg, SUBNETS, known)
    cloud = flow(reg, CAM, GW, ip=CLOUD, proto=6, port=443)
    fx.add(deltas(1, [(fwd(cloud), 3, 300)]), edges(reg, {CAM: 1}))
    fx.packet_in(CAM, GW, 100, int(ipaddress.IPv4Address("198.51.100.7")), 6, 443)
    fx.packet_in(CAM, GW, 100, int(ipaddress.IPv4Address("198.51.100.8")), 6, -1)   # an answer
    wf = fx.close(1.0, 1.0)
    assert val(wf, CAM, "new_dst_share") == pytest.approx(100 / 500)


def test_packet_in_rows_are_bounded_per_window(monkeypatch):
    monkeypatch.setattr(features, "_MAX_PACKET_INS", 3)
    fx = FeatureExtractor(FlowRegistry(), SUBNETS)
    for _ in range(5):
        fx.packet_in(CAM, None, 10)
    wf = fx.close(1.0, 1.0)
    assert val(wf, CAM, "tx_packets") == 3 and fx.dropped_packet_ins == 2


# ---------------------------------------------------------------- familiar destinations

from controller.telemetry.features import FAMILIAR_AFTER  # noqa: E402


def test_befriended_hosts_are_not_new_but_stay_unknown_to_attribution():
    """After learning, the hosts of a window judged normal stop counting in new_dst_share:
    in the warm-up each window's share is to hosts met in that window, and so it stays."""
    reg = FlowRegistry()
    other = flow(reg, CAM, GW, ip="198.51.100.7", proto=6, port=443)
    e = edges(reg, {CAM: 1, GW: 1})
    known = KnownDestinations()
    known.learn(CAM, [int(ipaddress.IPv4Address(CLOUD))])
    fx = FeatureExtractor(reg, SUBNETS, known)
    fx.add(deltas(1, [(fwd(other), 4, 1_000)]), e)
    assert val(fx.close(now=1.0, window=1.0), CAM, "new_dst_share") == 1.0
    known.befriend(CAM, fx.last_destinations(CAM), now=1.0)     # a first normal window: not yet
    fx.add(deltas(1, [(fwd(other), 4, 1_000)]), e)
    assert val(fx.close(now=2.0, window=1.0), CAM, "new_dst_share") == 1.0
    known.befriend(CAM, fx.last_destinations(CAM), now=1.0 + FAMILIAR_AFTER)   # a minute on: familiar
    fx.add(deltas(1, [(fwd(other), 4, 1_000)]), e)
    assert val(fx.close(now=3.0, window=1.0), CAM, "new_dst_share") == 0.0
    ip = int(ipaddress.IPv4Address("198.51.100.7"))
    assert known.unknown(CAM, [ip]) == [ip] and known.learned_by(ip) == 0   # still no habit of anyone's
    assert known.to_dict()[CAM] == [CLOUD]                                  # what learning saw, unchanged


def test_befriend_is_bounded_oldest_first_and_skips_learning_and_saturated_devices():
    from controller.telemetry.features import MAX_CANDIDATES, MAX_FAMILIAR
    known = KnownDestinations(max_per_device=2)
    twice = lambda mac, ips: [known.befriend(mac, ips, now=t) for t in (0.0, FAMILIAR_AFTER)]   # noqa: E731
    twice(CAM, [5])                               # never learned: nothing to befriend against
    assert known.familiar_to_dict() == {}
    known.learn(CAM, [1])
    known.learn(NVR, [1, 2, 3])                   # saturated: everything is known anyway
    twice(NVR, [9])
    twice(CAM, [1, 0])                            # learned already, and the L2 marker
    assert known.familiar_to_dict() == {}
    for lo in range(100, 100 + MAX_FAMILIAR + 3, MAX_CANDIDATES):
        twice(CAM, range(lo, min(lo + MAX_CANDIDATES, 100 + MAX_FAMILIAR + 3)))
    fam = known.familiar_to_dict()[CAM]
    assert len(fam) == MAX_FAMILIAR and fam[0] == str(ipaddress.IPv4Address(103))
    known.befriend(CAM, range(1000, 1000 + MAX_CANDIDATES + 1), now=0.0)   # waiting: bounded too
    known.befriend(CAM, [1000, 1001 + MAX_CANDIDATES - 1], now=FAMILIAR_AFTER)
    assert "0.0.3.232" not in known.familiar_to_dict()[CAM]          # 1000: forgotten while waiting
    assert known.familiar_to_dict()[CAM][-1] == str(ipaddress.IPv4Address(1000 + MAX_CANDIDATES))


def test_a_host_met_in_a_window_not_judged_normal_waits_again():
    """An upload to a drop zone: a quiet handshake window, then the megabytes."""
    known = KnownDestinations()
    known.learn(CAM, [1])
    known.befriend(CAM, [9], now=0.0)
    known.suspect(CAM, [9])
    known.befriend(CAM, [9], now=FAMILIAR_AFTER)       # the clock starts again here
    assert known.familiar_to_dict() == {}
    known.befriend(CAM, [9], now=2 * FAMILIAR_AFTER - 1)
    assert known.familiar_to_dict() == {}
    known.befriend(CAM, [9], now=2 * FAMILIAR_AFTER)
    assert known.familiar_to_dict() == {CAM: ["0.0.0.9"]}


def test_familiar_destinations_round_trip_and_refuse_hostile_input():
    known = KnownDestinations()
    known.learn(CAM, [1])
    for t in (0.0, FAMILIAR_AFTER):
        known.befriend(CAM, [7, 3], now=t)
    d = json.loads(json.dumps(known.to_dict()))
    f = json.loads(json.dumps(known.familiar_to_dict()))
    assert f == {CAM: ["0.0.0.7", "0.0.0.3"]}
    back = KnownDestinations.from_dict(d, familiar=f)
    assert back.familiar_to_dict() == f and back.to_dict() == d
    for bad, words in [([], "must be a mapping"), ({NVR: ["0.0.0.7"]}, "not a device with known"),
                       ({CAM: "0.0.0.7"}, "must be a list"), ({CAM: ["0.0.0.1"]}, "known from learning"),
                       ({CAM: ["0.0.0.7", "0.0.0.7"]}, "duplicate"), ({CAM: ["x"]}, "not an IPv4"),
                       ({CAM: ["0.0.0.9"] * 1000}, "at most")]:
        with pytest.raises(ValueError) as err:
            KnownDestinations.from_dict(d, familiar=bad)
        assert words in str(err.value), (bad, str(err.value))


def test_each_device_divides_by_its_own_switchs_interval():
    """Two edge switches; switch 2 missed the last round, so its late answer and its
    answer of this round both land in this window: its counters cover 2 s, switch 1's
    cover 1 s.  Each device's rates are its own switch's; a device whose switch sent no
    poll (only a packet-in) divides by the window; a flow-removed tail adds no time."""
    reg = FlowRegistry()
    up = flow(reg, CAM, GW, ip=CLOUD, proto=6, port=443)
    hub = flow(reg, HUB, GW, ip=CLOUD, proto=6, port=443)
    e = edges(reg, {CAM: 1, HUB: 2, GW: 3})
    fx = FeatureExtractor(reg, SUBNETS)
    fx.add(deltas(1, [(fwd(up), 100, 100_000)], window=1.0), e)
    fx.add(deltas(2, [(fwd(hub), 100, 100_000)], window=1.0), e)     # the late answer
    fx.add(deltas(2, [(fwd(hub), 100, 100_000)], window=1.0), e)     # this round's
    fx.add(deltas(2, [(fwd(hub), 20, 20_000)], window=0.6), e, tail=True)   # a flow removed
    fx.packet_in(NVR, None, 1_000)
    wf = fx.close(now=10.0, window=1.0)
    assert val(wf, CAM, "tx_bytes") == 100_000 and val(wf, CAM, "tx_packets") == 100
    assert val(wf, HUB, "tx_bytes") == 110_000 and val(wf, HUB, "tx_packets") == 110
    assert val(wf, NVR, "tx_bytes") == 1_000
    again = fx.close(now=11.0, window=1.0)      # the spans start afresh
    assert again.macs == []
