import json

import numpy as np

from controller.config import Device
from controller.detection.alert import Alert
from controller.telemetry.features import FEATURES
from controller.detection.incidents import Incidents, band_of

CAM, TV = "00:00:00:00:00:11", "00:00:00:00:00:04"


def alert(alert_id, mac, kind):
    return Alert(id=alert_id, time=0.0, kind=kind, device=None, mac=mac, score=0.0)


def rows(n, value):
    return np.full((n, len(FEATURES)), value, dtype=np.float64)


def test_incident_keeps_the_windows_before_and_collects_those_after(tmp_path):
    inc = Incidents(str(tmp_path), FEATURES, pre=5, post=3)
    for t in range(8):                                   # the ring keeps the last 5
        inc.add_window(100.0 + t, 1.0, [CAM, TV], np.vstack([rows(1, t), rows(1, -1)]))
    inc.on_alert(alert("a1", CAM, "anomaly"), Device("camera", CAM), {"low": [0] * 15, "high": [1] * 15},
                 "own", 107.5)
    path = tmp_path / "a1.json"
    first = json.loads(path.read_text())
    assert first["times"] == [103.0, 104.0, 105.0, 106.0, 107.0] and not first["complete"]
    assert [v[0] for v in first["values"]] == [3, 4, 5, 6, 7]
    inc.add_window(108.0, 1.0, [CAM], rows(1, 50))
    inc.add_window(109.0, 1.0, [TV], rows(1, 9))          # the device was silent: zeros
    inc.add_window(110.0, 1.0, [CAM], rows(1, 0))
    done = json.loads(path.read_text())
    assert done["complete"] and done["times"][-3:] == [108.0, 109.0, 110.0]
    assert [v[0] for v in done["values"][-3:]] == [50, 0, 0]
    assert done["features"] == list(FEATURES) and done["device"]["name"] == "camera"
    assert inc.open == {}


def test_outbreaks_and_unwritable_directories_do_not_break_the_loop(tmp_path):
    inc = Incidents(str(tmp_path / "f" / "x"), FEATURES, pre=2, post=2)
    (tmp_path / "f").write_text("a file where the directory should be")
    inc.on_alert(alert("o1", None, "outbreak"), None, None, "", 1.0)
    assert inc.open == {}
    inc.on_alert(alert("a2", CAM, "anomaly"), None, None, "", 1.0)   # logged, not raised
    inc.add_window(2.0, 1.0, [CAM], rows(1, 1))
    assert "a2" in inc.open


def test_band_is_the_explanations_range():
    class B:
        median_ = np.log1p(np.full(15, 10.0))
        scale_ = np.zeros(15)
    band = band_of(B())
    assert band["low"][0] == band["high"][0] == 10.0
    assert band_of(None) is None
