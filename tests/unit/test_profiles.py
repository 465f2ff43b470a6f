import os

import numpy as np
import pytest

from controller.config import Config
from controller.telemetry.features import FEATURES, INDEX, KnownDestinations
from controller.detection.profiles import SAMPLE_SIZE, store_for

CAM, CAM2, BULB = "00:00:00:00:00:11", "00:00:00:00:00:12", "00:00:00:00:00:21"


def row(rng, scale=1.0):
    x = np.zeros(len(FEATURES))
    x[INDEX["tx_bytes"]] = 2000 * scale * rng.uniform(0.8, 1.2)
    x[INDEX["tx_packets"]] = 10 * scale * rng.uniform(0.8, 1.2)
    x[INDEX["tcp_share"]] = 1.0
    return x


def learned_store(learn=30):
    store = store_for(Config(learn_seconds=learn), known=KnownDestinations())
    store.fit_seconds = float("inf")     # every due device fits in its poll, however busy the machine
    rng = np.random.default_rng(3)
    for t in range(learn + 2):
        for mac, cls in ((CAM, "camera"), (CAM2, "camera"), (BULB, "bulb")):
            store.judge(mac, cls, row(rng), 1000.0 + t)
        store.fit_pending(1000.0 + t)
    return store, rng


def test_warm_up_learns_then_fits_own_baseline():
    store = store_for(Config(learn_seconds=30))
    rng = np.random.default_rng(0)
    for t in range(29):
        assert store.judge(CAM, "camera", row(rng), 1000.0 + t) == (None, "learning")
        assert store.fit_pending(1000.0 + t) == []
    store.judge(CAM, "camera", row(rng), 1030.0)
    assert store.fit_pending(1030.0) == [CAM]
    baseline, source = store.judge(CAM, "camera", row(rng), 1031.0)
    assert source == "own" and baseline.n_windows_ == 30
    assert store.profiles[CAM].sample.shape == (min(SAMPLE_SIZE, 30), len(FEATURES))


def test_class_prior_then_global_prior_for_strangers():
    store, rng = learned_store()
    assert sorted(c or "global" for c in store.priors) == ["bulb", "camera", "global"]
    assert store.judge("00:00:00:00:00:13", "camera", row(rng), 2000.0)[1] == "class:camera"
    b, source = store.judge("00:00:00:00:00:99", None, row(rng), 2000.0)
    assert source == "global"
    assert b.threshold_ >= store.priors["camera"].threshold_   # conservative


def test_fit_budget_spreads_fitting_over_polls():
    store = store_for(Config(learn_seconds=10))
    store.fit_budget = 2
    rng = np.random.default_rng(0)
    macs = [f"00:00:00:00:01:{i:02x}" for i in range(5)]
    for t in range(11):
        for m in macs:
            store.judge(m, "bulb", row(rng), float(t))
    store.fit_seconds = 60.0
    assert len(store.fit_pending(11.0)) == 2
    assert len(store.fit_pending(12.0)) == 2
    assert len(store.fit_pending(13.0)) == 1


def test_fit_seconds_bounds_one_poll_but_always_fits_one():
    store = store_for(Config(learn_seconds=10))
    store.fit_budget, store.fit_seconds = 20, 0.0
    rng = np.random.default_rng(0)
    macs = [f"00:00:00:00:02:{i:02x}" for i in range(3)]
    for t in range(11):
        for m in macs:
            store.judge(m, "bulb", row(rng), float(t))
    assert [len(store.fit_pending(11.0 + k)) for k in range(4)] == [1, 1, 1, 0]


def test_save_and_load_round_trip(tmp_path):
    store, rng = learned_store()
    store.known.learn(CAM, [0xCB00710A])
    for t in (0.0, 60.0):                                         # two normal windows a minute apart
        store.known.befriend(CAM, [0xCB00710B, 0x08080808], now=t)
    store.judge("00:00:00:00:00:55", "bulb", row(rng), 1050.0)    # one still learning
    path = str(tmp_path / "baselines.json")
    store.save(path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    fresh = store_for(Config(learn_seconds=30), known=KnownDestinations())
    assert fresh.load(path).startswith("loaded 4 device profiles")
    x = row(rng, scale=50)[None, :]
    assert fresh.profiles[CAM].baseline.anomaly_score(x)[0] == pytest.approx(
        store.profiles[CAM].baseline.anomaly_score(x)[0])
    assert fresh.profiles["00:00:00:00:00:55"].learning
    assert len(fresh.profiles["00:00:00:00:00:55"].windows) == 1
    assert fresh.known.to_dict() == store.known.to_dict()
    assert fresh.known.familiar_to_dict() == {CAM: ["203.0.113.11", "8.8.8.8"]}
    assert "camera" in fresh.priors


@pytest.mark.parametrize("content, words", [
    ("{not json", "unusable baseline state"),
    ('{"schema": "iotguard.profiles/0"}', "schema"),
    ('{"schema": "iotguard.profiles/1", "n_features": 15, "profiles": [{"mac": 5}]}', "mac"),
    ('{"schema": "iotguard.profiles/1", "n_features": 15, "profiles": '
     '[{"mac": "00:00:00:00:00:11", "cls": null, "started": 1, "fitted_at": null, "burst_max": 0, '
     '"sample": [[1, 2]], "windows": []}]}', "sample"),
    ('{"py/object": "os.system", "schema": "iotguard.profiles/1", "n_features": 15, '
     '"profiles": [{"mac": "00:00:00:00:00:11", "cls": "!!python/object/apply:os.system", "started": 1,'
     '"fitted_at": null, "burst_max": 0, "sample": null, "windows": [], '
     '"baseline": {"schema": "iotguard.baseline/1", "median_": "__import__(\'os\')"}}]}', "baseline"),
    ("[" * 100000, "unusable"),
])
def test_corrupt_or_hostile_state_gives_clear_error_and_fresh_start(tmp_path, content, words):
    path = tmp_path / "baselines.json"
    path.write_text(content)
    store = store_for(Config(learn_seconds=30), known=KnownDestinations())
    msg = store.load(str(path))
    assert "unusable baseline state" in msg and words in msg and "learning from scratch" in msg
    assert store.profiles == {} and not path.exists()
    assert [p.name for p in tmp_path.iterdir()][0].startswith("baselines.json.corrupt-")


def test_bursts_learned_only_while_learning_and_below_the_floor():
    store = store_for(Config(learn_seconds=30))
    store.profile(CAM, "camera", 0.0)
    assert store.note_burst(CAM, 8, floor=20) == 20
    assert store.note_burst(CAM, 15, floor=20) == 30
    assert store.note_burst(CAM, 500, floor=20) == 30     # a scan while learning is not learned
