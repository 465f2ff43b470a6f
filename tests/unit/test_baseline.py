import json
import math

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from controller.detection.baseline import (SCHEMA, TAIL_MARGIN, VERSION, BaselineFormatError, Contribution,
                                          DeviceBaseline)

NAMES = ["tx_bytes", "tx_packets", "rx_bytes", "rx_packets", "flows", "distinct_ports",
         "distinct_dsts", "dns_queries", "syn_count", "tcp_share", "udp_share",
         "mean_pkt_size", "icmp_packets", "ntp_queries", "internal_share"]
TX, TX_PKTS, RX, PORTS, PKT_SIZE, ICMP = 0, 1, 2, 5, 11, 12
TWO_SIDED = (9, 10, 11, 14)     # shares and mean packet size: a drop is news too
DAY_WINDOWS = 1440              # one window a minute


def benign(n: int, rng, tx_factor: float = 1.0) -> np.ndarray:
    """A camera-like device: lognormal volumes, small Poisson counts, shares, constants."""
    X = np.zeros((n, len(NAMES)))
    X[:, TX] = rng.lognormal(np.log(5e4), 0.4, n) * tx_factor
    X[:, TX_PKTS] = np.round(X[:, TX] / rng.lognormal(np.log(500), 0.1, n))
    X[:, RX] = rng.lognormal(np.log(2e3), 0.6, n)
    X[:, 3] = rng.poisson(20, n)
    X[:, 4] = rng.poisson(3, n)
    X[:, PORTS] = rng.choice(4, n, p=[0.15, 0.35, 0.35, 0.15])
    X[:, 6] = rng.poisson(2, n)
    X[:, 7] = rng.poisson(0.5, n)
    X[:, 9] = rng.beta(40, 10, n)
    X[:, 10] = 1 - X[:, 9]
    X[:, PKT_SIZE] = X[:, TX] / np.maximum(X[:, TX_PKTS], 1)
    X[:, 13] = 1.0                  # syn_count and icmp_packets stay 0
    X[:, 14] = 1.0
    return X


def fitted(seed: int = 7, **kw) -> tuple[DeviceBaseline, np.random.Generator]:
    rng = np.random.default_rng(seed)
    return DeviceBaseline(two_sided=TWO_SIDED, **kw).fit(benign(2000, rng)), rng


def quiet_windows(b: DeviceBaseline, rng, n: int = 5) -> np.ndarray:
    X = benign(20 * n, rng)
    return X[b.anomaly_score(X) < b.threshold_ / 4][:n]


# ------------------------------------------------------------ scikit-learn conventions
def _expected_failures(est: DeviceBaseline) -> dict[str, str]:
    if est.far >= 0.01:
        return {}
    why = ("far=1e-4 on the check's 300 training samples puts the threshold above every "
           "training score by design, so predict() has no -1 there; the far=0.05 instance passes")
    return {"check_outliers_train": why, "check_outliers_fit_predict": why}


@parametrize_with_checks([DeviceBaseline(), DeviceBaseline(far=0.05, z_floor=0.0)],
                         expected_failed_checks=_expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_needs_two_windows_and_valid_params():
    with pytest.raises(ValueError, match="minimum of 2"):
        DeviceBaseline().fit(np.ones((1, 3)))
    with pytest.raises(ValueError, match="two_sided"):
        DeviceBaseline(two_sided=(3,)).fit(np.ones((5, 3)))
    with pytest.raises(ValueError, match="far"):
        DeviceBaseline(far=0.0).fit(np.ones((5, 3)))


def test_negative_inputs_count_as_zero():
    b, rng = fitted()
    x = quiet_windows(b, rng, 1)
    neg = x.copy()
    x[0, PORTS], neg[0, PORTS] = 0.0, -5.0
    assert b.anomaly_score(neg)[0] == b.anomaly_score(x)[0]


# ------------------------------------------------------------ calibration
def test_false_alarm_rate_matches_far_with_empirical_quantile():
    # z_floor=0 so the calibrated quantile, not the floor, sets the threshold
    b, rng = fitted(11, far=0.01, z_floor=0.0)
    rate = float((b.predict(benign(20000, rng)) == -1).mean())
    assert 0.2 * 0.01 <= rate <= 3 * 0.01, rate
    floored, rng = fitted(11, far=0.01)
    assert float((floored.predict(benign(20000, rng)) == -1).mean()) <= rate


def test_tiny_far_uses_the_tail_extrapolation():
    b, rng = fitted(12)         # far=1e-4 with 2000 windows: n*far < 5
    alarms = int((b.predict(benign(20000, rng)) == -1).sum())
    assert alarms <= 10, alarms
    assert b.threshold_ >= b.z_floor


def test_threshold_comes_from_out_of_sample_scores_with_a_capped_tail():
    # A heavy tail: 1% of windows send 30x, the way a camera's occasional upload does.  The
    # exponential extrapolation (6.9 mean excesses at far=1e-4) would put the threshold far
    # beyond anything the device sends; capped, it stays within reach of a real window.
    rng = np.random.default_rng(21)
    X = benign(1000, rng)
    X[::100, TX] *= 30
    b = DeviceBaseline(two_sided=TWO_SIDED).fit(X)
    T = np.log1p(X)
    oos = b._out_of_sample_scores(T)
    assert oos.shape == (1000,)
    assert b.z_floor <= b.threshold_ <= np.sort(oos)[-2] + TAIL_MARGIN
    assert int((b.predict(benign(20000, rng)) == -1).sum()) <= 10
    few = DeviceBaseline().fit(X[:12])          # too few windows to cross-fit: in-sample
    assert np.array_equal(few._out_of_sample_scores(np.log1p(X[:12])), few.anomaly_score(X[:12]))


def test_flat_baseline_ignores_jitter_but_not_a_jump():
    # a thermostat: exactly 120 bytes, 1 packet, no ports, no DNS, all traffic internal
    X = np.tile([120.0, 1.0, 0.0, 0.0, 1.0], (500, 1))
    b = DeviceBaseline(two_sided=(4,)).fit(X)
    jitter = X[:4].copy()
    jitter[:, 0] = [119, 121, 119, 121]
    assert (b.predict(jitter) == 1).all()
    jump = X[:1].copy()
    jump[0, 0] = 1200
    assert b.predict(jump)[0] == -1


# ------------------------------------------------------------ detection and explanation
def test_scan_is_flagged_and_explained():
    b, rng = fitted()
    x = quiet_windows(b, rng, 1)[0]
    x[PORTS] = 200
    assert b.predict(x[None])[0] == -1
    why = b.explain(x, NAMES)
    first = why[0]
    assert isinstance(first, Contribution) and first.feature == "distinct_ports"
    assert first.observed == 200 and 0 <= first.low < first.high < 10
    assert len(why) <= 3 and all(c.z > 0 for c in why)
    assert [c.z for c in why] == sorted((c.z for c in why), reverse=True)
    everything = b.explain(x, NAMES, top=len(NAMES))
    assert sum(c.share for c in everything) == pytest.approx(1.0)
    assert b.explain(x)[0].feature == f"x{PORTS}"


def test_drops_matter_only_in_two_sided_features():
    b, rng = fitted()
    x = quiet_windows(b, rng)
    small = x.copy()
    small[:, PKT_SIZE] = 40             # mean packet size 500 -> 40 bytes: two-sided
    assert (b.predict(small) == -1).all()
    quiet = x.copy()
    quiet[:, RX] /= 100                 # rx bytes down 100x: one-sided, a quiet device is fine
    assert (b.predict(quiet) == 1).all()
    assert (b.feature_z(quiet)[:, RX] == 0).all()
    one_sided = DeviceBaseline(two_sided=()).fit(benign(2000, np.random.default_rng(7)))
    assert (one_sided.predict(small) == 1).all()


def test_shares_need_a_per_feature_scale_floor():
    # a share spans ln 2 in log1p space: under the default floor 0.5 its z stays <= 1.39
    rng = np.random.default_rng(5)
    X = benign(500, rng)
    X[:, 14] = 0.0                      # e.g. the share of traffic to never-seen peers
    floors = [0.5] * len(NAMES)
    floors[14] = 0.05
    default = DeviceBaseline(two_sided=TWO_SIDED).fit(X)
    tuned = DeviceBaseline(two_sided=TWO_SIDED, min_scale=floors).fit(X)
    x = benign(50, rng)
    x[:, 14] = 0.0
    x = x[tuned.anomaly_score(x) < tuned.threshold_ / 4][:1]
    x[0, 14] = 1.0
    assert default.feature_z(x)[0, 14] == pytest.approx(np.log(2) / 0.5)
    assert default.predict(x)[0] == 1 and tuned.predict(x)[0] == -1
    assert tuned.explain(x[0], NAMES)[0].feature == "internal_share"
    assert np.array_equal(roundtrip(tuned).anomaly_score(x), tuned.anomaly_score(x))
    with pytest.raises(ValueError, match="min_scale"):
        DeviceBaseline(min_scale=[0.5, 0.5]).fit(X)


def test_scoring_is_vectorised():
    b, rng = fitted()
    X = benign(5000, rng)
    a = b.anomaly_score(X)
    assert a.shape == (5000,) and b.feature_z(X).shape == (5000, len(NAMES))
    assert np.allclose(a[[0, 17, 4999]], [b.anomaly_score(X[i:i + 1])[0] for i in (0, 17, 4999)])
    assert np.array_equal(b.decision_function(X), -a + b.threshold_)
    assert b.offset_ == -b.threshold_


# ------------------------------------------------------------ modes
def camera(n: int, rng, streaming: float = 0.3) -> np.ndarray:
    """`benign`, but a share of the windows stream: 40x the bytes in bigger packets, 10x rx."""
    X = benign(n, rng)
    s = rng.random(n) < streaming
    X[s, TX] *= 40
    X[s, TX_PKTS] = np.round(X[s, TX] / rng.lognormal(np.log(1200), 0.05, s.sum()))
    X[s, RX] *= 10
    X[s, 3] *= 10
    X[:, PKT_SIZE] = X[:, TX] / np.maximum(X[:, TX_PKTS], 1)
    return X


def test_a_second_state_is_a_mode_so_the_threshold_comes_down():
    rng = np.random.default_rng(3)
    X = camera(1500, rng)
    modal = DeviceBaseline(two_sided=TWO_SIDED, max_modes=4).fit(X)
    single = DeviceBaseline(two_sided=TWO_SIDED, max_modes=1).fit(X)
    assert 2 <= len(modal.mode_median_) <= modal.max_modes and len(single.mode_median_) == 0
    streaming = camera(300, rng, streaming=1.0)
    assert np.median(modal.anomaly_score(streaming)) < np.median(single.anomaly_score(streaming)) / 2
    assert modal.threshold_ < single.threshold_ - 1
    held_out = camera(2000, rng)
    assert (modal.predict(held_out) == -1).mean() <= 0.001
    # what the lower threshold buys: 30 ICMP packets in a window (the device sends none)
    ping = camera(300, rng)
    ping[:, ICMP] = 30
    assert (modal.predict(ping) == -1).mean() == 1.0 and (single.predict(ping) == -1).mean() == 0.0
    # the words judge a streaming window against the streaming mode: its volume is not blamed
    x = camera(50, rng, streaming=1.0)[0]
    x[ICMP] = 30
    tx_z = {m: {c.feature: c.z for c in m.explain(x, NAMES, top=len(NAMES))}.get("tx_bytes", 0.0)
            for m in (modal, single)}
    assert modal.explain(x, NAMES)[0].feature == "icmp_packets"
    assert tx_z[modal] < 2 < 4 < tx_z[single]
    k = modal.reference(x)
    assert k is not None and modal.top_band()[TX] >= x[TX] > modal.band()[1][TX]


def test_scores_never_exceed_the_device_wide_model_and_modes_can_be_off():
    rng = np.random.default_rng(8)
    X = camera(800, rng)
    b = DeviceBaseline(two_sided=TWO_SIDED).fit(X)
    Y = camera(500, rng) * rng.lognormal(0, 1, (500, len(NAMES)))
    T = np.log1p(Y)
    assert np.all(b.anomaly_score(Y) <= b._device_scores(T) + 1e-12)
    assert np.any(b.anomaly_score(Y) < b._device_scores(T) - 1)
    with pytest.raises(ValueError, match="max_modes"):
        DeviceBaseline(max_modes=0).fit(X)
    with pytest.raises(ValueError, match="max_modes"):
        DeviceBaseline(max_modes=True).fit(X)
    few = DeviceBaseline(two_sided=TWO_SIDED).fit(X[:19])     # under 2 x MODE_MIN_WINDOWS
    assert len(few.mode_median_) == 0 and few.reference(X[0]) is None


def test_a_feature_constant_in_a_mode_counts_in_its_distance():
    # CTU-Malware-Capture-8-1: both states never had new-destination traffic; one warm-up
    # window had some.  Left out of the modes' covariances (as constant features are left out
    # of the device-wide one), the attack's share alone (z 6.9) stayed under the threshold.
    rng = np.random.default_rng(4)
    X = benign(1500, rng)
    X[:, 14] = 0.0
    X[rng.random(1500) < 0.25, TX] *= 20
    X[rng.random(1500) < 0.004, 14] = 0.5
    floor = [0.5] * 9 + [0.1, 0.1, 0.5, 0.5, 0.5, 0.1]
    b = DeviceBaseline(two_sided=TWO_SIDED, min_scale=floor).fit(X)
    assert len(b.mode_median_) >= 2
    A = benign(50, rng)
    A[:, 14] = 1.0
    alone = math.log1p(1.0) / 0.1            # 6.9: the share's z on its own, in every mode
    assert np.all(b._mode_scores(np.log1p(A)) > alone + 5)
    assert np.all(b.predict(A) == -1)


# ------------------------------------------------------------ persistence
def roundtrip(b: DeviceBaseline) -> DeviceBaseline:
    return DeviceBaseline.from_dict(json.loads(json.dumps(b.to_dict(), allow_nan=False)))


def test_roundtrip_gives_identical_scores():
    b, rng = fitted()
    X = benign(500, rng)
    for x in X[:50]:
        b.fold(x, now=1000.0)
    c = roundtrip(b)
    assert np.array_equal(b.anomaly_score(X), c.anomaly_score(X))
    assert c.get_params() == b.get_params() and c.threshold_ == b.threshold_
    assert len(c.mode_median_) == len(b.mode_median_) >= 2
    assert c.to_dict() == b.to_dict() and c.to_dict()["schema"] == SCHEMA
    assert c.fold(X[0], now=2000.0)


def test_below_min_level_every_value_is_one_level():
    """IoT-23's HUE bridge idles at 2 B/s received and alarmed on 473 B/s (12 scales in
    log1p space): an effect too small to matter is not evidence."""
    rng = np.random.default_rng(5)
    X = benign(600, rng)
    X[:, RX] = rng.poisson(2, 600)                      # idle: a few bytes a second
    level = [0.0] * len(NAMES)
    level[RX] = 1024.0
    plain = DeviceBaseline(two_sided=TWO_SIDED).fit(X)
    b = DeviceBaseline(two_sided=TWO_SIDED, min_level=level).fit(X)
    x = quiet_windows(b, rng, 1)[0].copy()
    x[RX] = 700.0                                       # a cloud poll's reply
    assert plain.anomaly_score(x[None])[0] > plain.threshold_
    assert b.anomaly_score(x[None])[0] < b.threshold_
    assert b.score_one(x) == pytest.approx(b.anomaly_score(x[None])[0])
    x[RX] = 5e6                                         # a download: far above the level
    assert b.anomaly_score(x[None])[0] > b.threshold_
    (top,) = b.explain(x, NAMES, top=1)
    assert top.feature == "rx_bytes" and top.low == 0.0 and 1024 < top.high < 5e6
    assert b.band()[0][RX] == 0.0 and b.feature_alone(RX, 100.0) == b.feature_alone(RX, 1000.0)
    c = roundtrip(b)
    assert c.min_level == tuple(level) and np.array_equal(c.anomaly_score(X), b.anomaly_score(X))
    assert "min_level" not in plain.to_dict()["params"]  # as files from before it were written
    assert DeviceBaseline.from_dict(plain.to_dict()).min_level == 0.0


def test_old_baselines_still_load_without_modes():
    b, rng = fitted(max_modes=1)
    d = json.loads(json.dumps(b.to_dict()))
    assert d["version"] == VERSION == 3 and d["modes_"] == []
    del d["modes_"], d["params"]["max_modes"]           # as written before modes
    X = benign(200, rng)
    for version, written in ((2, 2), (None, 1)):        # None: before thresholds were cross-fitted
        if version is None:
            del d["version"]
        else:
            d["version"] = version
        old = DeviceBaseline.from_dict(d)
        assert old.version_ == written and old.threshold_ == b.threshold_ and old.max_modes == 1
        assert np.array_equal(old.anomaly_score(X), b.anomaly_score(X))
        assert old.to_dict()["version"] == written and roundtrip(old).version_ == written
        assert "modes_" not in old.to_dict() and "max_modes" not in old.to_dict()["params"]
    for bad in (0, VERSION + 1, True, "2", 2.0, None):
        d["version"] = bad
        with pytest.raises(BaselineFormatError, match="version"):
            DeviceBaseline.from_dict(d)
    d["version"], d["modes_"] = 2, []                   # a version 2 file has no modes
    with pytest.raises(BaselineFormatError, match="unknown field 'modes_'"):
        DeviceBaseline.from_dict(d)


def _deep(depth: int) -> list:
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


def _set(path: str, value):
    def mutate(d):
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        d[last] = value
    return mutate


def _setitem(key: str, i: int, value):
    def mutate(d):
        d[key][i] = value
    return mutate


def _delete(key: str):
    def mutate(d):
        del d[key]
    return mutate


HOSTILE = [
    ("schema", _set("schema", "iotguard.baseline/2")),
    ("schema", _delete("schema")),
    ("scale_", _delete("scale_")),
    ("far", lambda d: d["params"].pop("far")),
    ("__reduce__", _set("__reduce__", ["os.system", "rm -rf /"])),
    ("median_[3]", _setitem("median_", 3, float("nan"))),
    ("location_[0]", _setitem("location_", 0, float("inf"))),
    ("threshold_", _set("threshold_", float("-inf"))),
    ("threshold_", _set("threshold_", 10 ** 400)),
    ("threshold_", _set("threshold_", True)),
    ("median_[0]", _setitem("median_", 0, "1.0")),
    ("n_features_in_", _set("n_features_in_", "15")),
    ("n_features_in_", _set("n_features_in_", 10 ** 9)),
    ("n_windows_", _set("n_windows_", 1)),
    ("median_", lambda d: d["median_"].pop()),
    ("median_", _set("median_", [0.0] * 1_000_000)),
    ("median_", _set("median_", {"0": 1.0})),
    ("precision_[2]", lambda d: d["precision_"][2].pop()),
    ("precision_", _set("precision_", _deep(100_000))),
    ("precision_", _setitem("precision_", 0, [1e3] * 15)),
    ("scale_[4]", _setitem("scale_", 4, 0.0)),
    ("scale_[4]", _setitem("scale_", 4, -1.0)),
    ("d_scale_", _set("d_scale_", 0.0)),
    ("two_sided", _set("params.two_sided", [99])),
    ("two_sided", _set("params.two_sided", "0123")),
    ("two_sided", _set("params.two_sided", [1, 1])),
    ("far", _set("params.far", 2.0)),
    ("min_scale", _set("params.min_scale", [0.5])),
    ("multivariate", _set("params.multivariate", "yes")),
    ("params", _set("params", None)),
    ("anchor_time_", _set("anchor_time_", "now")),
    ("min_level", _set("params.min_level", -1.0)),
    ("min_level", _set("params.min_level", [1.0] * 3)),
    ("min_level", _set("params.min_level", float("inf"))),
    ("min_level", _set("params.min_level", "1024")),
    ("max_modes", _set("params.max_modes", 0)),
    ("max_modes", _set("params.max_modes", True)),
    ("max_modes", _set("params.max_modes", 17)),
    ("max_modes", lambda d: d["params"].pop("max_modes")),
    ("modes_", _delete("modes_")),
    ("modes_", lambda d: d.update(modes_=d["modes_"][:1])),
    ("modes_", lambda d: d.update(modes_=d["modes_"] * 3)),
    ("modes_", _set("modes_", {"0": {}})),
    ("modes_[1]", _setitem("modes_", 1, [])),
    ("modes_[0]", lambda d: d["modes_"][0].update(extra=1)),
    ("modes_[0]", lambda d: d["modes_"][0].pop("d_scale")),
    ("modes_[1].scale[3]", lambda d: d["modes_"][1]["scale"].__setitem__(3, 0.01)),
    ("modes_[0].median", lambda d: d["modes_"][0]["median"].pop()),
    ("modes_[0].location[2]", lambda d: d["modes_"][0]["location"].__setitem__(2, float("nan"))),
    ("modes_[1].precision", lambda d: d["modes_"][1]["precision"][0].__setitem__(1, 99.0)),
    ("modes_[0].precision", lambda d: d["modes_"][0].update(precision=_deep(1000))),
    ("modes_[0].d_scale", lambda d: d["modes_"][0].update(d_scale=0.0)),
    ("modes_[0].d_median", lambda d: d["modes_"][0].update(d_median="0")),
]


@pytest.mark.parametrize("field,mutate", HOSTILE, ids=[f"{i}-{f}" for i, (f, _) in enumerate(HOSTILE)])
def test_corrupted_baselines_are_refused_naming_the_field(field, mutate):
    b, _ = fitted()
    d = b.to_dict()
    mutate(d)
    with pytest.raises(BaselineFormatError, match=field.replace("[", r"\[").replace("]", r"\]")):
        DeviceBaseline.from_dict(d)


@pytest.mark.parametrize("junk", [None, "x", [], {}, 42, -1.5, 1e308, True, [[]], float("nan")])
def test_not_a_baseline_at_all(junk):
    with pytest.raises(BaselineFormatError):
        DeviceBaseline.from_dict(junk)


def test_fuzzed_fields_raise_only_baseline_format_errors():
    b, _ = fitted()
    junk = [None, "x", [], {}, 0, -1, 2, 0.5, 1e308, -1e308, float("nan"), True, [None] * 15,
            [[0.0] * 15] * 15, [1.0] * 15, 10 ** 400, _deep(5000)]
    base = b.to_dict()
    paths = [k for k in base if k != "params"] + [f"params.{k}" for k in base["params"]]
    for path in paths:
        for value in junk:
            d = json.loads(json.dumps(base))
            _set(path, value)(d)
            try:
                DeviceBaseline.from_dict(d)
            except BaselineFormatError:
                pass


def test_json_nan_literal_is_refused():
    b, _ = fitted()
    text = json.dumps(b.to_dict()).replace('"d_median_": ', '"d_median_": NaN, "x": ', 1)
    with pytest.raises(BaselineFormatError):
        DeviceBaseline.from_dict(json.loads(text))


# ------------------------------------------------------------ drift
def test_benign_change_of_habit_is_absorbed():
    b, rng = fitted(3)
    X = benign(2 * DAY_WINDOWS, rng, tx_factor=2.0)     # the camera now streams at twice the rate
    target = np.log1p(np.median(X[:, TX]))
    flagged = 0
    for i, x in enumerate(X):
        if b.predict(x[None])[0] == -1:
            flagged += 1
        else:
            b.fold(x, now=60.0 * i)
    assert abs(b.median_[TX] - target) < 0.1            # within ~10% in original units
    assert flagged / len(X) < 0.01


def test_shift_is_bounded_per_day():
    b, rng = fitted(multivariate=False)
    x = quiet_windows(b, rng, 1)[0]
    m0 = b.median_[RX]
    x[RX] = np.expm1(m0 + 0.45 * b.threshold_ * b.scale_[RX])    # just under suspicion
    assert b.fold(x, now=0.0)
    for i in range(1, 1000):
        b.fold(x, now=60.0 * i)
    assert b.median_[RX] - m0 == pytest.approx(0.7)
    for i in range(1000):
        b.fold(x, now=86400.0 + 60.0 * i)
    assert 0.7 < b.median_[RX] - m0 <= 1.4 + 1e-9


def test_suspicious_windows_are_never_folded():
    b, rng = fitted()
    x = quiet_windows(b, rng, 1)[0]
    x[PORTS] = 40
    assert b.threshold_ / 2 < b.anomaly_score(x[None])[0]
    before = b.to_dict()
    assert not b.fold(x, now=0.0)
    assert b.to_dict() == before


@pytest.mark.parametrize("ramp", [np.linspace, np.geomspace])
def test_slow_port_ramp_is_still_caught(ramp):
    b, rng = fitted()
    n = 2 * DAY_WINDOWS
    X = benign(n, rng)
    X[:, PORTS] = np.round(ramp(2, 300, n))     # each window a little above the last
    m0, caught = b.median_[PORTS], None
    for i, x in enumerate(X):
        a = b.anomaly_score(x[None])[0]
        if a > b.threshold_ and b.explain(x, NAMES)[0].feature == "distinct_ports":
            caught = i
            break
        before = b.median_.copy()
        folded = b.fold(x, now=60.0 * i)       # worst-case caller: offers every window
        assert folded == (a <= 0.5 * b.threshold_)
        if not folded:
            assert np.array_equal(before, b.median_)
    assert caught is not None and caught < n - 1
    assert b.median_[PORTS] - m0 <= 2 * 0.7 + 1e-9


# ------------------------------------------------------------ memory
def test_memory_budget():
    b, _ = fitted()
    arrays = sum(v.nbytes for v in vars(b).values() if isinstance(v, np.ndarray))
    assert arrays < b.nbytes() < 20_000
    assert not math.isnan(b.nbytes())


def test_score_one_matches_anomaly_score():
    rng = np.random.default_rng(5)
    X = rng.lognormal(2.0, 0.3, size=(200, 6))
    b = DeviceBaseline().fit(X)
    for x in (X[0], X[1] * 40, np.zeros(6)):
        assert b.score_one(x) == pytest.approx(float(b.anomaly_score(x[None, :])[0]))
