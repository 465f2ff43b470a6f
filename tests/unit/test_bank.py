"""The baseline bank: the batched scorer and fold agree with DeviceBaseline device by device."""

import copy

import numpy as np
import pytest

from controller.config import Config
from controller.detection.bank import BaselineBank
from controller.detection.baseline import DAY, DeviceBaseline
from controller.detection.detector import Detector
from controller.detection.profiles import Profile, store_for
from controller.telemetry.features import INDEX, WindowFeatures
from tests.unit.test_detector import normal   # the same benign camera window

F = 6


def random_baseline(rng: np.random.Generator) -> DeviceBaseline:
    """Random parameters: one- and two-sided features, per-feature floors, with and without
    the covariance model, a constant feature (outside the covariance) now and then."""
    n = int(rng.integers(25, 90))
    X = rng.lognormal(rng.uniform(0, 8, F), rng.uniform(0.05, 1.0, F), (n, F))
    if rng.random() < 0.5:                   # a second state (streaming, on): modes
        X[rng.random(n) < 0.4] *= np.exp(rng.uniform(1.0, 4.0, F))
    if rng.random() < 0.3:
        X[:, int(rng.integers(F))] = 3.0
    two = tuple(int(j) for j in np.flatnonzero(rng.random(F) < 0.4))
    floor = 0.5 if rng.random() < 0.5 else [float(v) for v in rng.uniform(0.05, 0.6, F)]
    level = 0.0 if rng.random() < 0.5 else [float(v) for v in np.expm1(rng.uniform(0, 6, F)) * (rng.random(F) < 0.5)]
    return DeviceBaseline(min_scale=floor, two_sided=two, multivariate=bool(rng.random() < 0.7),
                          max_modes=int(rng.choice([1, 2, 4])), min_level=level).fit(X)


def windows(rng: np.random.Generator, b: DeviceBaseline, k: int) -> np.ndarray:
    """Windows around (and some far from) the baseline's median, zeros and negatives included."""
    T = b.median_ + b.scale_ * rng.normal(0, rng.choice([0.5, 2.0, 8.0]), (k, F))
    X = np.expm1(np.maximum(T, 0.0))
    X[rng.random((k, F)) < 0.05] = 0.0
    X[rng.random((k, F)) < 0.02] = -1.0
    return X


def test_scores_equal_each_baselines_own():
    rng = np.random.default_rng(3)
    bank, baselines = BaselineBank(F), []
    for d in range(60):
        b = random_baseline(rng)
        bank.put(f"m{d}", b)
        baselines.append(b)
    assert any(b.multivariate for b in baselines) and not all(b.multivariate for b in baselines)
    assert {0, 2, 3, 4} <= {b._n_modes() for b in baselines}     # rows of every width, padded
    rows = rng.integers(0, 60, 500)
    X = np.vstack([windows(rng, baselines[r], 1) for r in rows])
    got = bank.scores(rows, X)
    want = np.array([baselines[r].score_one(x) for r, x in zip(rows, X)])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(bank.thresholds(rows), [baselines[r].threshold_ for r in rows])
    # the estimator API still answers the same (the bank's views are its arrays)
    b = baselines[int(rows[0])]
    np.testing.assert_allclose(b.anomaly_score(X[:1]), got[:1], rtol=1e-9, atol=1e-9)


def test_fold_equals_per_device_fold_including_anchor_periods():
    rng = np.random.default_rng(5)
    own = [random_baseline(rng) for _ in range(25)]
    ref = [copy.deepcopy(b) for b in own]
    bank = BaselineBank(F)
    for d, b in enumerate(own):
        bank.put(f"m{d}", b)
    times = [1000.0, 1060.0, 1000.0 + DAY + 1, 500.0, 600.0, 600.0 + 3 * DAY]   # roll, clock back
    for now in times:
        X = np.vstack([windows(rng, b, 1) for b in ref])
        scores = np.array([b.score_one(x) for b, x in zip(ref, X)])
        calm = np.flatnonzero(scores < 0.5 * np.array([b.threshold_ for b in ref]))
        for d in calm:
            assert ref[d].fold(X[d], now, score=scores[d])
        bank.fold(calm, X[calm], now)
        for b, r in zip(own, ref):
            for k in ("median_", "scale_", "anchor_", "anchor_scale_"):
                np.testing.assert_allclose(getattr(b, k), getattr(r, k), rtol=1e-12, atol=1e-12)
            assert b.anchor_time_ == r.anchor_time_
    assert own[0].to_dict()["median_"] == pytest.approx(ref[0].to_dict()["median_"], abs=1e-12)


def test_added_refitted_folded_forgotten_are_reflected():
    rng = np.random.default_rng(11)
    bank = BaselineBank(F)
    a, b, c = (random_baseline(rng) for _ in range(3))
    ra, rb = bank.put("a", a), bank.put("b", b)
    x = windows(rng, b, 1)
    assert bank.scores([rb], x)[0] == pytest.approx(b.score_one(x[0]), abs=1e-9)
    # refitted: a new estimator under the same MAC replaces the row
    assert bank.put("b", c) == rb
    assert bank.scores([rb], x)[0] == pytest.approx(c.score_one(x[0]), abs=1e-9)
    old = b.median_.copy()
    b.median_ += 1.0                        # the replaced one is detached: no longer writes the bank
    assert np.all(bank.medians([rb])[0] == c.median_) and np.all(b.median_ == old + 1.0)
    # refitted in place (fit rebinds the arrays): row() notices and re-reads it
    c.fit(np.abs(rng.normal(5, 2, (40, F))))
    assert bank.row("b", c) == rb
    assert bank.scores([rb], x)[0] == pytest.approx(c.score_one(x[0]), abs=1e-9)
    # folded through the bank: the estimator sees it
    before = c.median_.copy()
    bank.fold([rb], np.expm1(c.median_ + 3 * c.scale_)[None, :], now=10.0)
    assert np.all(c.median_ >= before) and np.any(c.median_ > before) and c.anchor_time_ == 10.0
    # forgotten: the last row moves in, both estimators keep their numbers
    ma, mc = a.median_.copy(), c.median_.copy()
    bank.forget("a")
    assert "a" not in bank and len(bank) == 1 and bank.row("b", c) == ra
    assert np.all(a.median_ == ma) and np.all(c.median_ == mc)
    assert bank.scores([ra], x)[0] == pytest.approx(c.score_one(x[0]), abs=1e-9)
    # refitted in place with more modes than any row had: the mode slots grow, nothing is lost
    two_states = np.abs(rng.normal(5, 1, (80, F)))
    two_states[::2] *= 30.0
    narrow = DeviceBaseline(max_modes=1).fit(np.abs(rng.normal(5, 2, (40, F))))
    wide = DeviceBaseline(max_modes=1).fit(np.abs(rng.normal(5, 2, (40, F))))
    bank2 = BaselineBank(F)
    rn, rw = bank2.put("narrow", narrow), bank2.put("wide", wide)
    wide.set_params(max_modes=4).fit(two_states)
    fresh = {k: getattr(wide, k).copy() for k in ("median_", "mode_median_", "mode_precision_")}
    assert wide._n_modes() >= 2 and bank2.row("wide", wide) == rw
    for k, v in fresh.items():             # precisions are kept as float32 in the bank
        np.testing.assert_allclose(getattr(wide, k), v, rtol=1e-6 if "precision" in k else 0)
    y = np.vstack([windows(rng, wide, 5), two_states[:5] * 3, windows(rng, narrow, 5)])
    rows = np.array([rw] * 10 + [rn] * 5)
    np.testing.assert_allclose(bank2.scores(rows, y), [wide.score_one(v) for v in y[:10]] +
                               [narrow.score_one(v) for v in y[10:]], rtol=1e-9, atol=1e-9)
    modes = wide.mode_median_.copy()
    bank2.forget("wide")                     # detached: keeps its modes, as copies
    np.testing.assert_array_equal(wide.mode_median_, modes)
    assert wide.mode_median_.base is not bank2._a["mode_median"]
    # growth past the capacity keeps every view pointing at its row
    many = [copy.deepcopy(a) for _ in range(40)]
    for d, m in enumerate(many):
        bank.put(f"n{d}", m)
    many[0].median_[0] = 42.0
    assert bank.medians(bank.rows_of(["n0"]))[0, 0] == 42.0


def test_5000_devices_scored_without_per_device_calls(monkeypatch):
    """Under the threshold, no device reaches DeviceBaseline's per-device code; the one
    over it does (and only it), and the folds match the per-device fold."""
    n = 5000
    rng = np.random.default_rng(1)
    config = Config(learn_seconds=30)
    store = store_for(config)
    X0 = np.vstack([normal(rng) for _ in range(300)])
    model = store._new_baseline(len(X0)).fit(store._defined(X0))
    assert model.multivariate                     # the default warm-up's model has the covariance part
    macs = [f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}" for i in range(n)]
    for mac in macs:
        p = store.profiles[mac] = Profile(mac, "camera", 0.0, baseline=copy.deepcopy(model))
        store.bank.put(mac, p.baseline)
    det = Detector(config, store, lambda m: ("cam-" + m[-5:], ("camera", "iot")))
    X = np.vstack([normal(rng) for _ in range(n)])
    X[17, INDEX["distinct_dst_ports"]] = 400          # one scan
    X[17, INDEX["new_flows"]] = 400
    wf = WindowFeatures(time=2000.0, window=1.0, macs=macs, X=X, top_port=np.full(n, 23),
                        top_port_hosts=np.full(n, 1))
    ref = copy.deepcopy(store.profiles[macs[3]].baseline)
    calls = {"score_one": 0, "fold": 0, "explain": 0}

    def counting(name):
        real = getattr(DeviceBaseline, name)

        def wrapped(self, *a, **k):
            calls[name] += 1
            return real(self, *a, **k)
        return wrapped
    for name in calls:
        monkeypatch.setattr(DeviceBaseline, name, counting(name))
    alerts = det.on_window(wf, 2000.0)
    assert [a.mac for a in alerts] == [macs[17]]
    assert calls == {"score_one": 0, "fold": 0, "explain": 1}
    assert det.windows_scored == n
    monkeypatch.undo()
    from controller.telemetry.features import shrink_tx_mix
    x = shrink_tx_mix(X[3:4], np.expm1(ref.median_))[0]
    assert ref.fold(x, 2000.0)
    np.testing.assert_allclose(store.profiles[macs[3]].baseline.median_, ref.median_, atol=1e-12)
    np.testing.assert_allclose(store.profiles[macs[3]].baseline.scale_, ref.scale_, atol=1e-12)


def test_store_keeps_the_bank_in_step_with_fit_load_and_forget():
    config = Config(learn_seconds=5)
    store = store_for(config)
    rng = np.random.default_rng(2)
    for t in range(12):
        for mac in ("02:00:00:00:00:01", "02:00:00:00:00:02"):
            store.judge(mac, "camera", normal(rng), float(t))
    store.fit_pending(20.0)
    assert sorted(store.bank.macs) == ["02:00:00:00:00:01", "02:00:00:00:00:02"]
    x = normal(rng)
    b = store.profiles["02:00:00:00:00:01"].baseline
    r = store.bank.rows_of(["02:00:00:00:00:01"])
    assert store.bank.scores(r, x[None, :])[0] == pytest.approx(b.score_one(x), abs=1e-9)
    saved = store.to_dict()
    store.forget("02:00:00:00:00:01")
    assert store.bank.macs == ["02:00:00:00:00:02"] and "02:00:00:00:00:01" not in store.profiles
    store.load_dict(saved)
    assert sorted(store.bank.macs) == ["02:00:00:00:00:01", "02:00:00:00:00:02"]
    b = store.profiles["02:00:00:00:00:01"].baseline
    r = store.bank.rows_of(["02:00:00:00:00:01"])
    assert store.bank.scores(r, x[None, :])[0] == pytest.approx(b.score_one(x), abs=1e-9)
    assert store.fold("02:00:00:00:00:01", x, 30.0) and b.anchor_time_ == 30.0
