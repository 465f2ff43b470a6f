import io
import json
import subprocess
import sys

import numpy as np
import pytest

from controller.config import Config
from controller.telemetry.features import FEATURES, INDEX, WindowFeatures
from controller.detection.recording import Recorder, RecordError, read, replay

CAM = "00:00:00:00:00:11"


def who(mac):
    return ("camera-1", ("camera",))


def record(path, windows=40, scan_at=35):
    rec = Recorder(str(path), 1.0)
    rng = np.random.default_rng(1)
    for t in range(windows):
        x = np.zeros(len(FEATURES))
        x[INDEX["tx_bytes"]] = 1500 * rng.uniform(0.8, 1.2)
        x[INDEX["tx_packets"]] = 8 * rng.uniform(0.8, 1.2)
        x[INDEX["distinct_dst_ips"]] = 1
        if t == scan_at:
            for i in range(30):
                rec.event(1000.0 + t - 0.5 + i * 0.01, CAM, 6, 0x0A000000 + i, 23)
            x[INDEX["distinct_dst_ips"]] = 150
            x[INDEX["new_flows"]] = 150
        wf = WindowFeatures(time=1000.0 + t, window=1.0, macs=[CAM], X=x[None, :],
                            top_port=np.array([23]), top_port_hosts=np.array([150]))
        rec.window(1000.0 + t, wf, who)
    rec.close()


def test_record_then_replay_finds_the_scan(tmp_path):
    path = tmp_path / "trace.jsonl"
    record(path)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["schema"] == "iotguard.record/1" and len(lines) == 41
    with open(path) as f:
        alerts = list(replay(f, Config(learn_seconds=30)))
    kinds = [a["kind"] for a in alerts]
    assert kinds == ["new_flow_burst", "anomaly"]
    assert alerts[0]["device"] == "camera-1" and "port 23" in alerts[0]["explanation"]


def test_replay_cli_prints_json_lines(tmp_path):
    path = tmp_path / "trace.jsonl"
    record(path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("detection: {learn_seconds: 30}\n")
    r = subprocess.run([sys.executable, "-m", "controller.api.cli", "replay", str(path), "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [json.loads(ln)["kind"] for ln in r.stdout.splitlines()] == ["new_flow_burst", "anomaly"]


@pytest.mark.parametrize("text, words", [
    ("", "empty recording"),
    ('{"schema": "other"}\n', ":1: expected schema"),
    ('{"schema": "iotguard.record/1", "features": ["x"]}\n', "features differ"),
    ('{"schema": "iotguard.record/1", "features": %s}\n{"t": 1}\n' % json.dumps(list(FEATURES)),
     ":2: malformed window"),
    ('{"schema": "iotguard.record/1", "features": %s}\nnope\n' % json.dumps(list(FEATURES)), ":2: not JSON"),
    ('{"schema": "iotguard.record/1", "features": %s}\n{"t": 1, "window": 1, "events": [], '
     '"devices": [{"mac": "m", "name": "n", "tags": [], "x": [1]}]}\n' % json.dumps(list(FEATURES)),
     "x must be 15 finite numbers"),
])
def test_malformed_recordings_name_the_line(text, words):
    with pytest.raises(RecordError, match=words):
        list(read(io.StringIO(text), "t.jsonl"))


def test_shipped_smart_home_trace_replays_to_the_scan():
    """tests/data/smart_home_scan.jsonl: smart_home benign warm-up, then nmap -sS from the camera
    (recorded with `python -m topologies.record_trace`)."""
    import os
    data = os.path.join(os.path.dirname(__file__), "..", "data")
    with open(os.path.join(data, "smart_home_scan.jsonl")) as f:
        windows = list(read(f))
    with open(os.path.join(data, "smart_home_scan.jsonl")) as f:
        alerts = list(replay(f, Config(learn_seconds=30)))
    scan_start = min(t for w in windows for (t, mac, proto, ip, port) in w.events
                     if mac == "00:00:00:00:00:11" and proto == 6 and port not in (80, 443))
    assert alerts, "the scan was not detected"
    assert all(a["time"] >= scan_start for a in alerts), "alerts before the scan: false alarms"
    first = alerts[0]
    assert (first["kind"], first["device"]) == ("new_flow_burst", "camera")
    assert first["time"] - scan_start <= 1.0
    camera = [a for a in alerts if a["device"] == "camera" and a["kind"] == "anomaly"]
    assert camera and "ports" in camera[0]["explanation"]
