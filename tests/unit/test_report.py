import json
import shutil

import numpy as np
import pytest

from controller.api import cli

from controller.api import report
from controller.telemetry.features import FEATURES, INDEX

T0 = 1795746552.13
EXPLANATION = ("camera opened 212 new connections to 198 hosts on port 23 in 1 s; "
               "its baseline is 0–3 hosts")
COOKIE = "0x0400000000000007"


def incident(alert_id="ca26a001b020", device="camera", t0=T0, burst=False):
    """120 normal windows, then a 20-window telnet scan starting at the alert."""
    rng = np.random.default_rng(1)
    n_pre, n_post = 120, 20
    times = [round(t0 + k, 3) for k in range(-n_pre + 1, n_post + 1)]
    values = np.zeros((n_pre + n_post, len(FEATURES)))
    values[:, INDEX["tx_bytes"]] = rng.normal(3000, 300, len(times))
    values[:, INDEX["tx_packets"]] = rng.normal(20, 2, len(times))
    values[:, INDEX["new_flows"]] = rng.poisson(1, len(times))
    values[:, INDEX["distinct_dst_ips"]] = rng.poisson(1, len(times))
    scan = slice(n_pre - 1, None)
    values[scan, INDEX["new_flows"]] = 212
    values[scan, INDEX["distinct_dst_ips"]] = 198
    values[scan, INDEX["tx_packets"]] = 400
    values[scan, INDEX["tx_bytes"]] = 26000
    low, high = [0.0] * len(FEATURES), [1.0] * len(FEATURES)
    for name, lo, hi in (("tx_bytes", 2000, 4000), ("tx_packets", 14, 26), ("new_flows", 0, 3),
                         ("distinct_dst_ips", 0, 3)):
        low[INDEX[name]], high[INDEX[name]] = lo, hi
    if burst:
        alert = {"id": alert_id, "time": t0, "kind": "new_flow_burst", "device": device,
                 "mac": "00:00:00:00:00:11", "score": 40, "threshold": 20,
                 "explanation": f"{device} contacted 40 internal hosts in 1 s",
                 "features": [{"feature": "new_flows_per_s", "observed": 40, "low": 0, "high": 3,
                               "hosts": 40, "internal_hosts": 40, "top_port": 23}]}
    else:
        alert = {"id": alert_id, "time": t0, "kind": "anomaly", "device": device,
                 "mac": "00:00:00:00:00:11", "score": 9.1, "threshold": 4.0,
                 "explanation": EXPLANATION.replace("camera", device, 1), "baseline": "own",
                 "features": [{"feature": "new_flows", "observed": 212, "low": 0, "high": 3,
                               "z": 9.1, "share": 0.8},
                              {"feature": "distinct_dst_ips", "observed": 198, "low": 0, "high": 3,
                               "z": 8.7, "share": 0.15}],
                 "window": {"new_flows": 212.0, "top_port": 23, "top_port_hosts": 198},
                 "tags": ["camera", "iot"], "count": 1, "last_time": t0}
    return {"alert": alert,
            "device": {"name": device, "mac": "00:00:00:00:00:11", "ips": ["10.0.0.11"],
                       "tags": ["camera", "iot"]},
            "window_s": 1.0, "features": list(FEATURES), "times": times,
            "values": np.round(values, 4).tolist(), "band": {"low": low, "high": high},
            "baseline": "own", "updated": times[-1], "complete": False}


def audit(alert, t0=T0):
    rule = {"dpid": 1, "table": 0, "priority": 499, "cookie": COOKIE, "command": "add",
            "match": {"eth_src": "00:00:00:00:00:11"}, "instructions": [], "hard_timeout": 600}
    other = {**alert, "id": "someoneelse"}
    return [
        {"time": t0 + 0.01, "event": "decision", "alert": alert, "playbook": "contain-scanners",
         "action": "quarantine", "mode": "enforce", "response_id": 7, "rules": [rule],
         "outcome": "sent", "error": None, "detail": {"ttl": 600}},
        {"time": t0 + 0.01, "event": "decision", "alert": other, "playbook": "unrelated-book",
         "action": "quarantine", "mode": "enforce", "response_id": 8, "rules": [],
         "outcome": "sent", "error": None, "detail": None},
        {"time": t0 + 0.05, "event": "installed", "alert": None, "playbook": "contain-scanners",
         "action": "quarantine", "mode": "enforce", "response_id": 7, "rules": [],
         "outcome": "installed", "error": None, "detail": {"dpid": 1}},
        {"time": t0 + 0.06, "event": "installed", "alert": None, "playbook": "unrelated-book",
         "action": "quarantine", "mode": "enforce", "response_id": 8, "rules": [],
         "outcome": "installed", "error": None, "detail": {"dpid": 1}},
        {"time": t0 + 15, "event": "released", "alert": None, "playbook": "contain-scanners",
         "action": "quarantine", "mode": "enforce", "response_id": 7, "rules": [rule],
         "outcome": "released", "error": None, "detail": {"reason": "checked"}},
    ]


def state(tmp_path, *incidents):
    d = tmp_path / "state"
    (d / "incidents").mkdir(parents=True)
    lines = []
    for inc in incidents:
        (d / "incidents" / f"{inc['alert']['id']}.json").write_text(json.dumps(inc))
        lines += [json.dumps(e) for e in audit(inc["alert"], inc["alert"]["time"])]
    (d / "audit.jsonl").write_text("\n".join(lines) + "\n{\"torn")
    return d


def test_render_shows_the_incident_and_its_responses():
    inc = incident()
    page = report.render(inc, audit(inc["alert"]))
    assert page.startswith("<!DOCTYPE html>")
    assert "iotguard incident: camera — anomaly" in page
    assert EXPLANATION in page and "10.0.0.11" in page and "00:00:00:00:00:11" in page
    assert "contain-scanners" in page and COOKIE in page and "0000000000000001" in page
    assert "<details>" in page and "released" in page and "+15.00 s" in page
    assert page.count("data:image/png;base64,") == 1
    assert "unrelated-book" not in page          # another alert's response
    assert "http://" not in page and "https://" not in page


def test_related_events_follow_response_ids_from_the_decision_on():
    alert = incident()["alert"]
    events = audit(alert)
    early = {**events[2], "time": T0 - 100}      # response 7 of an earlier life: not this alert's
    got = report.related_events(alert["id"], [events[4], early, *events[:4]])
    assert [(e["event"], e["response_id"]) for e in got] == [
        ("decision", 7), ("installed", 7), ("released", 7)]


def test_panels_are_the_alerts_features_then_tx():
    assert report.panel_features(incident()) == ["new_flows", "distinct_dst_ips", "tx_packets", "tx_bytes"]
    assert report.panel_features(incident(burst=True)) == [
        "new_flows", "distinct_dst_ips", "distinct_dst_ports", "tx_packets", "tx_bytes"]


def test_strings_from_the_files_are_escaped():
    evil = "<script>alert(1)</script>"
    inc = incident(device=evil)
    events = audit(inc["alert"])
    events[0]["playbook"] = "<b>book</b>"
    page = report.render(inc, events)
    assert evil not in page and "<b>book</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;book&lt;/b&gt;" in page
    assert "<script" not in page


def test_burst_alert_without_window_renders():
    inc = incident(burst=True)
    inc["alert"]["remote"] = "203.0.113.7"
    page = report.render(inc, [])
    assert "new_flow_burst" in page and "data:image/png;base64," in page
    assert "Remote address" in page and "203.0.113.7" in page
    assert "No response was decided" in page


def test_incident_without_windows_or_band_renders():
    inc = {**incident(), "times": [], "values": [], "band": None}
    page = report.render(inc, [])
    assert "No windows were recorded" in page and "data:image" not in page


def test_load_incident_latest_by_id_and_errors(tmp_path):
    d = state(tmp_path, incident("old", t0=T0 - 3600), incident("new"), incident("older", t0=T0 - 7200))
    assert report.load_incident(str(d))["alert"]["id"] == "new"
    assert report.load_incident(str(d), "old")["alert"]["id"] == "old"
    with pytest.raises(report.ReportError, match="no incident for alert nope.*new, old, older"):
        report.load_incident(str(d), "nope")
    with pytest.raises(report.ReportError, match="no state directory"):
        report.load_incident(str(tmp_path / "absent"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(report.ReportError, match=f"no incidents in {empty}/incidents"):
        report.load_incident(str(empty))


def test_read_audit_skips_torn_lines_and_filters(tmp_path):
    d = state(tmp_path, incident())
    assert len(report.read_audit(str(d))) == 5
    assert [e["event"] for e in report.read_audit(str(d), "ca26a001b020")] == [
        "decision", "installed", "released"]


def test_cli_report_last_writes_the_file(tmp_path, capsys):
    d = state(tmp_path, incident("a1", t0=T0 - 60), incident("a2"))
    out = tmp_path / "incident.html"
    assert cli.main(["report", "--last", "-o", str(out), "--state-dir", str(d)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text(encoding="utf-8")
    assert "a2" in page and EXPLANATION in page and COOKIE in page


def test_cli_report_default_name_and_state_dir_from_config(tmp_path, capsys, monkeypatch):
    d = state(tmp_path, incident("a1"))
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"state_dir: {d}\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "a1", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.strip() == "iotguard-incident-a1.html"
    assert (tmp_path / "iotguard-incident-a1.html").is_file()


def test_cli_report_errors(tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert cli.main(["report", "--last", "--state-dir", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("iotguard: ") and f"no state directory {missing}" in err
    d = state(tmp_path, incident("a1"))
    assert cli.main(["report", "zzz", "--state-dir", str(d)]) == 1
    assert "no incident for alert zzz" in capsys.readouterr().err
    assert cli.main(["report", "--state-dir", str(d)]) == 2
    assert "ALERT_ID or --last" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_chromium(tmp_path):
    from topologies.browser import check_html
    d = state(tmp_path, incident())
    path = report.write_report(str(d), None, str(tmp_path / "r.html"))
    got = check_html(path, [EXPLANATION, "camera", "contain-scanners"], timeout=60)
    assert got["nonblank"] and got["missing"] == []


def test_late_events_are_listed_but_not_plotted_and_odd_records_are_tolerated():
    inc = incident()
    events = audit(inc["alert"])
    events.append({**events[4], "event": "expired", "time": T0 + 3600})
    events.append({"time": "soon", "event": "installed", "alert": None, "response_id": [7]})
    page = report.render(inc, events)
    assert "+3600.00 s" in page and "1 later response events fall outside" in page
