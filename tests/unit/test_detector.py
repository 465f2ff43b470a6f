import math

import numpy as np
import pytest

from controller.config import Config
from controller.detection.detector import STORY_GAP, SUSPICION, Detector
from controller.telemetry.features import FEATURES, INDEX, WindowFeatures
from controller.detection.profiles import store_for

CAM = "00:00:00:00:00:11"
NAMES = {CAM: ("camera-1", ("camera", "iot")), "00:00:00:00:00:01": ("gw", ("gateway", "infra"))}


def who(mac):
    return NAMES.get(mac, ("cam-" + mac[-2:], ("camera", "iot")))


def normal(rng):
    x = np.zeros(len(FEATURES))
    x[INDEX["tx_bytes"]] = 2000 * rng.uniform(0.8, 1.2)
    x[INDEX["rx_bytes"]] = 300 * rng.uniform(0.8, 1.2)
    x[INDEX["tx_packets"]] = 10 * rng.uniform(0.8, 1.2)
    x[INDEX["rx_packets"]] = 6 * rng.uniform(0.8, 1.2)
    x[INDEX["distinct_dst_ips"]] = rng.integers(1, 3)
    x[INDEX["distinct_dst_ports"]] = rng.integers(1, 3)
    x[INDEX["tcp_share"]] = 1.0
    x[INDEX["mean_pkt_size"]] = 200 * rng.uniform(0.9, 1.1)
    return x


def window(t, rows: dict, port=-1, hosts=0):
    macs = list(rows)
    return WindowFeatures(time=t, window=1.0, macs=macs, X=np.asarray([rows[m] for m in macs]),
                          top_port=np.full(len(macs), port), top_port_hosts=np.full(len(macs), hosts))


def trained(macs=(CAM,), learn=30, **cfg):
    config = Config(learn_seconds=learn, **cfg)
    det = Detector(config, store_for(config), who)
    rng = np.random.default_rng(7)
    for t in range(learn + 5):
        assert det.on_window(window(1000.0 + t, {m: normal(rng) for m in macs}), 1000.0 + t) == []
    return det, rng


def scan_row(rng):
    x = normal(rng)
    x[INDEX["new_flows"]] = 212
    x[INDEX["distinct_dst_ips"]] = 198
    x[INDEX["lateral_peers"]] = 198
    return x


def test_learning_then_scan_is_explained_in_plain_words():
    det, rng = trained()
    assert not det.store.profiles[CAM].learning
    (alert,) = det.on_window(window(2000.0, {CAM: scan_row(rng)}, port=23, hosts=198), 2000.0)
    assert alert.kind == "anomaly" and alert.device == "camera-1" and alert.baseline == "own"
    assert alert.score > alert.threshold
    assert alert.explanation.startswith("camera-1 opened 212 new connections to 198")
    assert "on port 23 in 1 s; its baseline is 0–" in alert.explanation
    assert alert.features[0].feature in ("new_flows", "distinct_dst_ips", "lateral_peers")


def test_alert_is_deduplicated_while_anomalous_and_the_same_story_reopens_it():
    det, rng = trained()
    first = det.on_window(window(2000.0, {CAM: scan_row(rng)}), 2000.0)
    assert len(first) == 1
    assert det.on_window(window(2001.0, {CAM: scan_row(rng)}), 2001.0) == []
    now = det.current(first[0].id)                 # the open alert's newest version
    assert now.count == 2 and now.last_time == 2001.0
    for t in range(3):                             # 3 normal windows close it
        det.on_window(window(2002.0 + t, {CAM: normal(rng)}), 2002.0 + t)
    det.escalated.clear()
    # The same story (a leading feature in common) within STORY_GAP: no new alert, the
    # old one reopens and goes to the playbooks again.
    assert det.on_window(window(2010.0, {CAM: scan_row(rng)}), 2010.0) == []
    again = det.current(first[0].id)
    assert again.count == 3 and again.last_time == 2010.0 and again.reopened == 2010.0
    assert [a.id for a in det.escalated] == [first[0].id]
    for t in range(3):
        det.on_window(window(2011.0 + t, {CAM: normal(rng)}), 2011.0 + t)
    # After STORY_GAP without it, the story is over: a new alert.
    later = 2013.0 + STORY_GAP + 1
    (fresh,) = det.on_window(window(later, {CAM: scan_row(rng)}), later)
    assert fresh.id != first[0].id and fresh.count == 1


def test_the_last_score_of_each_device_is_kept_for_the_devices_view():
    det, rng = trained()
    assert det.last_score("00:00:00:00:99:99") is None          # never seen
    det.on_window(window(2000.0, {CAM: normal(rng)}), 2000.0)
    score, threshold = det.last_score(CAM)
    assert 0 <= score < threshold
    det.on_window(window(2001.0, {CAM: scan_row(rng)}), 2001.0)
    score, threshold = det.last_score(CAM)
    assert score > threshold


def test_a_different_story_after_a_closed_one_is_a_new_alert():
    det, rng = trained()
    (scan,) = det.on_window(window(2000.0, {CAM: scan_row(rng)}), 2000.0)
    for t in range(3):
        det.on_window(window(2001.0 + t, {CAM: normal(rng)}), 2001.0 + t)
    x = normal(rng)
    x[INDEX["tx_packets"]] = 130000
    x[INDEX["tx_bytes"]] = 130000 * 60
    (flood,) = det.on_window(window(2010.0, {CAM: x}), 2010.0)
    assert flood.id != scan.id and "packets/s" in flood.explanation


def test_two_interleaved_stories_each_reopen_their_own_alert():
    """A scan story, then a flood story, then the scan again and the flood again: two
    alerts, each reopened once (an IoT-23 Echo interleaves bursts of new hosts with its
    DNS-heavy minutes; keeping only the last closed story made each return a new alert)."""
    det, rng = trained()
    flood = normal(rng)
    flood[INDEX["tx_packets"]] = 130000
    flood[INDEX["tx_bytes"]] = 130000 * 60
    t = 2000.0
    raised = []
    for row in (scan_row, lambda r: flood, scan_row, lambda r: flood):
        raised += det.on_window(window(t, {CAM: row(rng)}), t)
        for k in range(1, 4):
            det.on_window(window(t + k, {CAM: normal(rng)}), t + k)
        t += 10
    assert len(raised) == 2, [a.explanation for a in raised]
    assert all(det.current(a.id).count == 2 and det.current(a.id).reopened for a in raised)


def test_flood_named_by_packet_rate():
    det, rng = trained()
    x = normal(rng)
    x[INDEX["tx_packets"]] = 130000
    x[INDEX["tx_bytes"]] = 130000 * 60
    x[INDEX["mean_pkt_size"]] = 60
    (alert,) = det.on_window(window(2000.0, {CAM: x}), 2000.0)
    assert "packets/s" in alert.explanation or "/s" in alert.explanation
    assert {f.feature for f in alert.features} & {"tx_packets", "tx_bytes"}


def test_nothing_is_judged_before_any_baseline_exists():
    config = Config(learn_seconds=300)
    det = Detector(config, store_for(config), who)
    rng = np.random.default_rng(0)
    assert det.on_window(window(1.0, {CAM: scan_row(rng)}), 1.0) == []
    assert det.windows_scored == 0


def test_new_device_is_judged_by_its_class_prior():
    det, rng = trained(macs=(CAM, "00:00:00:00:00:12"))
    newcam = "00:00:00:00:00:13"
    (alert,) = det.on_window(window(2000.0, {newcam: scan_row(rng)}), 2000.0)
    assert alert.baseline == "class:camera" and alert.device == "cam-13"


def test_excluded_tags_are_not_scored():
    det, rng = trained()
    gw = "00:00:00:00:00:01"
    assert det.on_window(window(2000.0, {gw: scan_row(rng)}), 2000.0) == []
    assert gw not in det.store.profiles
    for i in range(100):
        assert det.on_new_flow(gw, 6, 0x0A000000 + i, 23, 2001.0) == []


def test_burst_path_fires_within_the_second_and_names_the_port():
    det, _ = trained()
    alerts = [a for i in range(40) for a in det.on_new_flow(CAM, 6, 0x0A000000 + i, 23, 3000.0 + i * 0.02)]
    raised = [a for a in alerts if a is not None]
    assert len(raised) == 1
    a = raised[0]
    assert a.kind == "new_flow_burst" and a.time < 3000.0 + 1.0
    assert "20 new connections to 20 hosts on port 23 within 1 s" in a.explanation


def test_slow_connections_are_not_a_burst():
    det, _ = trained()
    assert all(det.on_new_flow(CAM, 6, 0x0A000000 + i, 23, 3000.0 + i * 0.5) == [] for i in range(100))


def test_outbreak_when_three_cameras_turn_anomalous_together():
    macs = ("00:00:00:00:00:11", "00:00:00:00:00:12", "00:00:00:00:00:13", "00:00:00:00:00:14")
    det, rng = trained(macs=macs)
    out = []
    for i, m in enumerate(macs[:3]):
        out += det.on_window(window(2000.0 + i * 5, {m: scan_row(rng)}), 2000.0 + i * 5)
    kinds = [a.kind for a in out]
    assert kinds.count("anomaly") == 3 and kinds.count("outbreak") == 1
    ob = [a for a in out if a.kind == "outbreak"][0]
    assert list(ob.devices) == ["camera-1", "cam-12", "cam-13"] or sorted(ob.devices) == list(ob.devices)
    assert "3 camera devices turned anomalous" in ob.explanation
    # a fourth within the horizon does not repeat the outbreak
    assert [a.kind for a in det.on_window(window(2016.0, {macs[3]: scan_row(rng)}), 2016.0)] == ["anomaly"]


def test_recent_is_newest_first_with_since():
    det, rng = trained()
    det.on_window(window(2000.0, {CAM: scan_row(rng)}), 2000.0)
    det.on_new_flow(CAM, 6, 1, 1, 2000.5)
    for i in range(30):
        det.on_new_flow(CAM, 6, 100 + i, 23, 2100.0 + i * 0.01)
    rec = det.recent()
    assert [a["kind"] for a in rec] == ["new_flow_burst", "anomaly"]
    assert [a["kind"] for a in det.recent(since=2050.0)] == ["new_flow_burst"]
    assert det.recent(since=9999.0) == []


@pytest.mark.parametrize("feature, value, words", [
    ("dns_queries", 400, "DNS queries"),
    ("new_dst_share", 1.0, "never talked to"),
    ("rx_bytes", 5e7, "received"),
])
def test_explanation_names_the_leading_feature(feature, value, words):
    det, rng = trained()
    x = normal(rng)
    x[INDEX[feature]] = value
    if feature == "new_dst_share":      # a share needs packets behind it (shrink_tx_mix)
        x[INDEX["tx_packets"]] = 100
    (alert,) = det.on_window(window(2000.0, {CAM: x}), 2000.0)
    assert alert.features[0].feature == feature
    assert words in alert.explanation


def test_one_packet_to_a_new_host_is_not_an_anomaly():
    """IoT-23 44-1: a 48-byte NTP request to a pool server it never used read "100% of its
    traffic to hosts it had never talked to" and opened an alert that lasted 1.6 h."""
    det, rng = trained()
    x = normal(rng)
    x[INDEX["tx_packets"]], x[INDEX["tx_bytes"]] = 1, 200
    x[INDEX["new_dst_share"]] = 1.0
    assert det.on_window(window(2000.0, {CAM: x}), 2000.0) == []
    x = normal(rng)                         # 100 packets, all to new hosts: news
    x[INDEX["tx_packets"]], x[INDEX["new_dst_share"]] = 100, 1.0
    (alert,) = det.on_window(window(2001.0, {CAM: x}), 2001.0)
    assert "never talked to" in alert.explanation


def test_a_window_that_only_listens_is_not_a_protocol_collapse():
    det, rng = trained()
    x = np.zeros(len(FEATURES))
    x[INDEX["rx_bytes"]] = 300
    x[INDEX["rx_packets"]] = 5      # received, sent nothing: no tcp share, no packet size
    assert det.on_window(window(2000.0, {CAM: x}), 2000.0) == []


def test_two_packets_of_other_protocols_are_not_a_protocol_shift():
    """The soak's false alarm: one ARP and one ping from a quiet TCP device read as '50% OTHER'."""
    det, rng = trained()
    x = np.zeros(len(FEATURES))
    x[INDEX["tx_packets"]], x[INDEX["tx_bytes"]] = 2, 140
    x[INDEX["icmp_share"]], x[INDEX["other_share"]], x[INDEX["mean_pkt_size"]] = 0.5, 0.5, 70
    assert det.on_window(window(2000.0, {CAM: x}), 2000.0) == []


def test_a_protocol_shift_with_many_packets_still_alarms():
    det, rng = trained()
    x = normal(rng)
    x[INDEX["tx_packets"]] = 400
    x[INDEX["tcp_share"]], x[INDEX["udp_share"]] = 0.0, 1.0   # same volume of bytes, all UDP now
    (alert,) = det.on_window(window(2000.0, {CAM: x}), 2000.0)
    assert {f.feature for f in alert.features} & {"udp_share", "tcp_share"}


def test_an_outbreak_completed_by_bursts_is_returned_to_act_on():
    macs = ("00:00:00:00:00:11", "00:00:00:00:00:12", "00:00:00:00:00:13")
    det, _ = trained(macs=macs)
    out = []
    for k, m in enumerate(macs):
        for i in range(25):
            out += det.on_new_flow(m, 6, 0x0A000000 + i, 23, 3000.0 + k + i * 0.01)
    assert [a.kind for a in out] == ["new_flow_burst"] * 3 + ["outbreak"]


def test_anomaly_carries_its_whole_window_for_playbook_conditions():
    det, rng = trained()
    (alert,) = det.on_window(window(2000.0, {CAM: scan_row(rng)}, port=23, hosts=198), 2000.0)
    assert alert.window["new_flows"] == 212 and alert.window["lateral_peers"] == 198
    assert alert.window["top_port"] == 23 and set(FEATURES) <= set(alert.window)


def test_priors_judge_newcomers_not_the_devices_that_learned_alongside_them():
    config = Config(learn_seconds=30)
    det = Detector(config, store_for(config), who)
    rng = np.random.default_rng(7)
    late = "00:00:00:00:00:12"                 # seen in the first window, then silent
    det.on_window(window(1000.0, {CAM: normal(rng), late: normal(rng)}), 1000.0)
    for t in range(1, 35):
        det.on_window(window(1000.0 + t, {CAM: normal(rng)}), 1000.0 + t)
    assert det.store.priors, "the camera's baseline made a prior"
    assert det.on_window(window(2000.0, {late: scan_row(rng)}), 2000.0) == [], "a co-learner is not judged"
    (alert,) = det.on_window(window(2001.0, {"00:00:00:00:00:13": scan_row(rng)}), 2001.0)
    assert alert.baseline.startswith("class:") or alert.baseline == "global"


def test_outbreak_when_leading_features_differ_but_one_is_shared():
    macs = ("00:00:00:00:00:11", "00:00:00:00:00:12", "00:00:00:00:00:13")
    det, rng = trained(macs=macs)
    out = []
    for i, m in enumerate(macs):
        x = normal(rng)
        x[INDEX["new_dst_share"]] = 0.9                       # every one: new destinations
        x[INDEX["rx_bytes"]] = 5e4 if i != 2 else 300         # two lead with rx bytes
        x[INDEX["tx_packets"]] = 10 if i != 2 else 2000       # the third with packets
        out += det.on_window(window(2000.0 + i, {m: x}), 2000.0 + i)
    (ob,) = [a for a in out if a.kind == "outbreak"]
    assert "new dst share" in ob.explanation and len(ob.devices) == 3


def test_an_open_alert_that_grows_worse_is_handed_over_again_with_its_new_window():
    det, rng = trained()
    mild = normal(rng)
    mild[INDEX["tx_packets"]] = 400                 # the flood's first, partial window
    (alert,) = det.on_window(window(2000.0, {CAM: mild}), 2000.0)
    assert alert.window["tx_packets"] == 400 and det.escalated == []
    full = normal(rng)
    full[INDEX["tx_packets"]] = 20000
    assert det.on_window(window(2001.0, {CAM: full}), 2001.0) == [], "still one alert"
    assert [a.id for a in det.escalated] == [alert.id] and det.escalated[0].window["tx_packets"] == 20000
    assert alert.window["tx_packets"] == 400 and det.current(alert.id) is det.escalated[0], "replaced, not mutated"
    det.escalated.clear()
    det.on_window(window(2002.0, {CAM: full}), 2002.0)
    assert det.escalated == [], "the same level again is not an escalation"


def test_an_open_alert_whose_volume_grows_is_handed_over_again_though_its_score_barely_moves(monkeypatch):
    """An upload's first window is partial (its handshake and 1.2 MB), the next sends 39 MB:
    in log space the score hardly moves, but block-exfiltration's `tx_bytes > 2000000`
    only matches the second, and the upload may be over before the 5 s re-hand."""
    import controller.detection.detector as detector
    monkeypatch.setattr(detector, "ESCALATION", math.inf)      # the score alone never hands it over
    det, rng = trained()
    first = normal(rng)
    first[INDEX["tx_bytes"]], first[INDEX["new_dst_share"]] = 1.2e6, 0.67
    (alert,) = det.on_window(window(2000.0, {CAM: first}), 2000.0)
    big = normal(rng)
    big[INDEX["tx_bytes"]], big[INDEX["new_dst_share"]] = 3.9e7, 0.99
    det.on_window(window(2001.0, {CAM: big}), 2001.0)
    (again,) = det.escalated
    assert again.id == alert.id and again.window["tx_bytes"] == 3.9e7
    det.escalated.clear()
    det.on_window(window(2002.0, {CAM: big}), 2002.0)
    assert det.escalated == [], "the same volume again is not an escalation"


def test_outbreak_alert_lists_a_bounded_number_of_devices(monkeypatch):
    macs = ("00:00:00:00:00:11", "00:00:00:00:00:12", "00:00:00:00:00:13", "00:00:00:00:00:14")
    det, rng = trained(macs=macs)
    det.MAX_OUTBREAK_DEVICES = 2
    out = []
    for i, m in enumerate(macs[:3]):
        out += det.on_window(window(2000.0 + i * 5, {m: scan_row(rng)}), 2000.0 + i * 5)
    ob = [a for a in out if a.kind == "outbreak"][0]
    assert len(ob.devices) == 2 and ob.score == 3.0
    assert ob.explanation.endswith(" and 1 more")


def test_a_sustained_anomaly_is_handed_to_the_playbooks_again_with_its_current_window():
    """A flood whose first window was partial and whose later windows do not score 1.5x
    higher is still answered: while it lasts, the playbooks see its window every 5 s."""
    from controller.detection.detector import REHAND_SECONDS
    det, rng = trained()
    first = normal(rng)
    first[INDEX["tx_packets"]] = 622                # below ratelimit-flood's 1000
    (alert,) = det.on_window(window(2000.0, {CAM: first}), 2000.0)
    same = normal(rng)
    same[INDEX["tx_packets"]] = 900                 # a steady flood: not 1.5x worse
    t = 2000.0
    while t < 2000.0 + REHAND_SECONDS - 1:
        t += 1.0
        det.on_window(window(t, {CAM: same}), t)
    assert det.escalated == []
    steady = normal(rng)
    steady[INDEX["tx_packets"]] = 1100
    det.on_window(window(2000.0 + REHAND_SECONDS, {CAM: steady}), 2000.0 + REHAND_SECONDS)
    (again,) = det.escalated
    assert again.id == alert.id and again.window["tx_packets"] == 1100


# ---------------------------------------------------------------- volume fast path

def test_a_flood_seen_on_the_port_counters_is_alerted_before_the_next_window():
    det, rng = trained()
    band = det.store.profiles[CAM].baseline
    (alert,) = det.on_port_rates({CAM: (9000.0, 9000.0 * 42, 0.0, 0.25)}, 2000.0)
    assert alert.kind == "anomaly" and alert.baseline == "own" and alert.score > alert.threshold == band.threshold_
    assert alert.explanation.startswith("camera-1 sent 9,000 packets/s (378 kB/s, its switch port's counters "
                                        "over 0.25 s); its baseline is ")
    assert alert.window == {"tx_packets": 9000.0, "tx_bytes": 9000.0 * 42, "rx_bytes": 0.0, "mean_pkt_size": 42.0,
                            "rx_per_tx_bytes": 0.0}
    assert alert.value("tx_packets") == 9000.0          # what `tx_packets > 1000` reads
    # the same alert, not a second one: the next window updates it
    x = normal(rng)
    x[INDEX["tx_packets"]], x[INDEX["tx_bytes"]] = 9000, 9000 * 42
    assert det.on_window(window(2000.5, {CAM: x}), 2000.5) == []
    full = det.current(alert.id)
    assert full.count == 2 and full.time == alert.time
    # ... and completes it: the whole window, its words and evidence, handed to the playbooks again
    assert set(full.window) >= set(FEATURES) and full.window["distinct_dst_ips"] == x[INDEX["distinct_dst_ips"]]
    assert full.explanation.startswith("camera-1 ") and "its switch port's counters" not in full.explanation
    assert len(full.features) == 3
    assert det.escalated == [full]
    det.escalated.clear()
    assert det.on_port_rates({CAM: (9000.0, 9000.0 * 42, 0.0, 0.25)}, 2000.75) == []
    assert det.on_window(window(2001.5, {CAM: x}), 2001.5) == [] and det.escalated == []   # once, not each window


@pytest.mark.parametrize("pps", [0.0, 12.0, 60.0, 400.0])
def test_the_fast_path_leaves_normal_rates_peaks_and_small_bursts_to_the_window(pps):
    det, _ = trained()          # a camera at about 10 packets/s: 400/s is a burst, not yet a flood
    assert det.on_port_rates({CAM: (pps, pps * 200, 0.0, 0.25)}, 2000.0) == []


def test_the_fast_path_needs_ten_times_the_band_not_just_the_floor():
    config = Config(learn_seconds=30)
    det = Detector(config, store_for(config), who)
    rng = np.random.default_rng(3)
    for t in range(35):                  # a busy device: about 200 packets/s
        x = normal(rng)
        x[INDEX["tx_packets"]] = 200 * rng.uniform(0.8, 1.2)
        det.on_window(window(1000.0 + t, {CAM: x}), 1000.0 + t)
    b = det.store.profiles[CAM].baseline
    top = float(np.expm1(b.median_[INDEX["tx_packets"]] + 2.33 * b.scale_[INDEX["tx_packets"]]))
    assert top > 200          # so 9 times it is well over FAST_MIN_PPS
    assert det.on_port_rates({CAM: (9 * top, 0.0, 0.0, 0.25)}, 2000.0) == []      # over the floor, under 10x
    (alert,) = det.on_port_rates({CAM: (11 * top, 0.0, 0.0, 0.25)}, 2000.25)
    assert alert.window["tx_packets"] == 11 * top


def test_the_fast_path_ignores_learning_excluded_and_unknown_devices():
    config = Config(learn_seconds=300)
    det = Detector(config, store_for(config), who)
    rng = np.random.default_rng(0)
    det.on_window(window(1000.0, {CAM: normal(rng)}), 1000.0)      # learning
    assert det.on_port_rates({CAM: (50000.0, 5e6, 0.0, 0.25)}, 1001.0) == []
    assert det.on_port_rates({"00:00:00:00:00:99": (50000.0, 5e6, 0.0, 0.25)}, 1001.0) == []
    det2, _ = trained(macs=(CAM, "00:00:00:00:00:01"))
    assert det2.on_port_rates({"00:00:00:00:00:01": (50000.0, 5e6, 0.0, 0.25)}, 2000.0) == []   # the gateway


def test_an_alert_opened_on_a_partial_window_is_handed_again_when_the_counters_show_the_flood():
    det, rng = trained()
    x = normal(rng)
    x[INDEX["tx_packets"]], x[INDEX["tx_bytes"]] = 600, 600 * 60       # the flood's first, partial second
    (alert,) = det.on_window(window(2000.0, {CAM: x}), 2000.0)
    det.escalated.clear()
    assert det.on_port_rates({CAM: (900.0, 900.0 * 60, 0.0, 0.25)}, 2000.25) == [] and det.escalated == []
    assert det.on_port_rates({CAM: (9000.0, 9000.0 * 60, 0.0, 0.25)}, 2000.5) == []
    (again,) = det.escalated
    assert again.id == alert.id and again.window["tx_packets"] == 9000.0 and again.window["mean_pkt_size"] == 60.0
    assert again.window["distinct_dst_ips"] == x[INDEX["distinct_dst_ips"]]     # the rest of its window is kept
    det.escalated.clear()
    assert det.on_port_rates({CAM: (9500.0, 9500.0 * 60, 0.0, 0.25)}, 2000.75) == [] and det.escalated == []


class SameRemote:
    """An attribution stub: every device's window has one new external remote, the C2."""

    C2 = "198.51.100.66"

    def learn(self, macs, keep) -> None:
        pass

    def remote(self, mac: str) -> str:
        return self.C2

    @staticmethod
    def outbreak(recent, names, now, horizon):
        return None


def _suspicious_row(det, mac, rng, share=0.75):
    """A window scoring `share` of the device's threshold on rx bytes: suspicious, no alert."""
    from controller.telemetry.features import shrink_tx_mix
    b = det.store.profiles[mac].baseline
    j = INDEX["rx_bytes"]
    x = normal(rng)
    x[j] = np.expm1(b.median_[j] + share * b.threshold_ * b.scale_[j])
    s = float(b.anomaly_score(shrink_tx_mix(x[None, :], np.expm1(b.median_[None, :])))[0])
    assert SUSPICION * b.threshold_ < s <= b.threshold_, (s, b.threshold_)
    return x


def test_an_outbreak_is_completed_by_a_suspicious_member_talking_to_the_same_new_remote():
    macs = ("00:00:00:00:00:11", "00:00:00:00:00:12", "00:00:00:00:00:13")
    det, rng = trained(macs=macs)
    det.attribution = SameRemote()
    out = []
    for i, m in enumerate(macs[:2]):
        out += det.on_window(window(2000.0 + i, {m: scan_row(rng)}), 2000.0 + i)
    assert [a.kind for a in out] == ["anomaly", "anomaly"]
    out = det.on_window(window(2003.0, {macs[2]: _suspicious_row(det, macs[2], rng)}), 2003.0)
    (ob,) = out
    assert ob.kind == "outbreak" and ob.remote == SameRemote.C2 and len(ob.devices) == 3
    assert ob.explanation.startswith("3 camera devices turned anomalous on traffic to 198.51.100.66, a host "
                                     "they had never talked to, within 30 s: ")


def test_suspicious_members_alone_never_make_an_outbreak():
    macs = ("00:00:00:00:00:11", "00:00:00:00:00:12", "00:00:00:00:00:13")
    det, rng = trained(macs=macs)
    det.attribution = SameRemote()
    out = det.on_window(window(2000.0, {macs[0]: scan_row(rng)}), 2000.0)    # one alerts
    for i, m in enumerate(macs[1:]):                                        # two only suspicious
        out += det.on_window(window(2001.0 + i, {m: _suspicious_row(det, m, rng)}), 2001.0 + i)
    assert [a.kind for a in out] == ["anomaly"]


def test_members_still_anomalous_count_when_the_last_one_alerts_after_the_horizon():
    macs = ("00:00:00:00:00:11", "00:00:00:00:00:12", "00:00:00:00:00:13")
    det, rng = trained(macs=macs)
    out = []
    for t in range(2000, 2041):                 # two stay anomalous for 40 s
        out += det.on_window(window(float(t), {m: scan_row(rng) for m in macs[:2]}), float(t))
    assert [a.kind for a in out] == ["anomaly", "anomaly"]
    out = det.on_window(window(2041.0, {m: scan_row(rng) for m in macs}), 2041.0)
    assert sorted(a.kind for a in out) == ["anomaly", "outbreak"]


# ------------------------------------------------------------------ marginal windows


def _marginal(det, rng, lo: float, hi: float):
    """A window whose score lies between lo and hi times the camera's threshold."""
    b = det.store.profiles[CAM].baseline
    for v in np.geomspace(1, 1e6, 4000):
        x = normal(rng)
        x[INDEX["dns_queries"]] = v
        if lo * b.threshold_ < b.score_one(x) < hi * b.threshold_:
            return x
    raise AssertionError("no window in that band")


def test_a_window_over_its_threshold_by_a_hair_is_raised_only_when_it_recurs():
    from controller.detection.detector import CONFIRM, CONFIRM_SECONDS
    det, rng = trained()
    x = _marginal(det, rng, 1.05, CONFIRM * 0.95)
    assert det.on_window(window(2000.0, {CAM: x}), 2000.0) == []          # once: remembered
    assert det.unconfirmed == 1
    assert det.on_window(window(2001.0, {CAM: normal(rng)}), 2001.0) == []
    later = 2000.0 + CONFIRM_SECONDS + 5
    assert det.on_window(window(later, {CAM: x}), later) == []            # too long after: once again
    (alert,) = det.on_window(window(later + 10, {CAM: x}), later + 10)    # again within the horizon
    assert alert.kind == "anomaly" and "DNS" in alert.explanation
    assert det.on_window(window(later + 11, {CAM: x}), later + 11) == []  # the open alert counts it
    assert det.current(alert.id).count == 2


def test_a_window_well_over_its_threshold_is_raised_at_once():
    from controller.detection.detector import CONFIRM
    det, rng = trained()
    x = _marginal(det, rng, CONFIRM * 1.1, 1e9)
    (alert,) = det.on_window(window(2000.0, {CAM: x}), 2000.0)
    assert alert.kind == "anomaly" and det.unconfirmed == 0


def test_new_hosts_of_normal_windows_become_familiar_but_not_an_uploads():
    """With a frozen set of known destinations a device that rotates its cloud servers reads
    "80% to hosts it never talked to" for good (IoT-23's Echo: one alert open for 4 h).  An
    upload to a drop zone starts with a quiet handshake window: the drop zone must stay new."""
    from controller.detection.attribution import Attribution
    from controller.telemetry.features import FAMILIAR_AFTER, KnownDestinations
    known = KnownDestinations()
    config = Config(learn_seconds=30)
    dests = {CAM: [1]}
    det = Detector(config, store_for(config, known), who,
                   Attribution(known, lambda mac: dests[mac], config.internal_subnets))
    rng = np.random.default_rng(7)
    for t in range(35):
        assert det.on_window(window(1000.0 + t, {CAM: normal(rng)}), 1000.0 + t) == []
    assert known.to_dict()[CAM] == ["0.0.0.1"]

    def quiet(t, *hosts):
        dests[CAM] = [1, *hosts]
        x = normal(rng)
        x[INDEX["new_dst_share"]] = 0.02        # a little to new hosts, in a normal window
        assert det.on_window(window(t, {CAM: x}), t) == []

    quiet(2000.0, 2, 3)                         # a cloud host, and a drop zone's handshake
    dests[CAM] = [1, 3]
    x = normal(rng)
    x[INDEX["new_dst_share"]], x[INDEX["tx_packets"]] = 1.0, 100    # then the upload: raised
    (alert,) = det.on_window(window(2001.0, {CAM: x}), 2001.0)
    assert "never talked to" in alert.explanation
    for t in range(2002, 2006):                 # the alert closes
        det.on_window(window(float(t), {CAM: normal(rng)}), float(t))
    quiet(2000.0 + FAMILIAR_AFTER, 2, 3)
    assert known.familiar_to_dict() == {CAM: ["0.0.0.2"]}   # the cloud host, not the drop zone
    assert known.to_dict()[CAM] == ["0.0.0.1"]             # what learning saw, unchanged
