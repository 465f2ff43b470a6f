"""Tests for controller.api.metrics: exposition, histograms, failing snapshots, real HTTP, the dashboard."""

from __future__ import annotations

import errno
import json
import logging
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from controller.api.metrics import Metrics, actions

REPO = Path(__file__).resolve().parents[2]

FULL = {
    "polls": 10, "flow_entries": 1234, "packet_in": 99, "windows": 40, "unconfirmed": 6, "lldp_in": 8, "malformed": 1,
    "alerts": {"anomaly": 3, "new_flow_burst": 1, "outbreak": 0, "manual": 2},
    "responses": {("quarantine", "installed"): 2, ("rate_limit", "failed"): 1},
    "active_responses": {"quarantine": 1, "rate_limit": 2},
    "switches": 2, "devices": 5, "baselined": 3, "learning": 2, "notify_dropped": 4,
}


def lines(m: Metrics) -> set[str]:
    return set(m.render().decode().splitlines())


def sample_names(text: str) -> set[str]:
    return {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", ln).group(0) for ln in text.splitlines()
            if ln and not ln.startswith("#")}


def test_full_snapshot_exact_samples() -> None:
    out = lines(Metrics(lambda: FULL))
    for expected in (
        "iotguard_polls_total 10.0",
        "iotguard_flow_entries_total 1234.0",
        "iotguard_packet_in_total 99.0",
        "iotguard_windows_total 40.0",
        "iotguard_windows_unconfirmed_total 6.0",
        "iotguard_lldp_in_total 8.0",
        "iotguard_malformed_packets_total 1.0",
        "iotguard_notify_dropped_total 4.0",
        'iotguard_alerts_total{kind="anomaly"} 3.0',
        'iotguard_alerts_total{kind="outbreak"} 0.0',
        'iotguard_alerts_total{kind="manual"} 2.0',
        'iotguard_responses_total{action="quarantine",outcome="installed"} 2.0',
        'iotguard_responses_total{action="rate_limit",outcome="failed"} 1.0',
        'iotguard_active_responses{action="quarantine"} 1.0',
        'iotguard_active_responses{action="rate_limit"} 2.0',
        'iotguard_active_responses{action="mirror"} 0.0',
        "iotguard_switches_connected 2.0",
        "iotguard_devices 5.0",
        "iotguard_devices_baselined 3.0",
        "iotguard_devices_learning 2.0",
        "iotguard_scrape_errors_total 0.0",
        "# TYPE iotguard_alerts_total counter",
        "# TYPE iotguard_active_responses gauge",
        "# TYPE iotguard_scoring_seconds histogram",
        "# TYPE iotguard_response_confirm_seconds histogram",
    ):
        assert expected in out, expected
    for action in actions():
        assert any(ln.startswith(f'iotguard_active_responses{{action="{action}"}} ') for ln in out), action


def test_missing_keys_omit_scalars_but_keep_labelled_zeros() -> None:
    text = Metrics(dict).render().decode()
    assert "iotguard_polls_total" not in text and "iotguard_switches_connected" not in text
    assert 'iotguard_alerts_total{kind="new_flow_burst"} 0.0' in text
    assert 'iotguard_active_responses{action="block_ip"} 0.0' in text
    assert "iotguard_responses_total{" not in text
    assert "iotguard_scrape_errors_total 0.0" in text


def test_histograms_observe() -> None:
    m = Metrics(dict)
    m.observe_scoring(0.0002)
    m.observe_scoring(0.003)
    m.observe_confirm(0.02)
    out = lines(m)
    assert 'iotguard_scoring_seconds_bucket{le="0.0001"} 0.0' in out
    assert 'iotguard_scoring_seconds_bucket{le="0.00025"} 1.0' in out
    assert 'iotguard_scoring_seconds_bucket{le="1.0"} 2.0' in out
    assert "iotguard_scoring_seconds_count 2.0" in out
    assert 'iotguard_response_confirm_seconds_bucket{le="0.01"} 0.0' in out
    assert 'iotguard_response_confirm_seconds_bucket{le="0.025"} 1.0' in out
    assert 'iotguard_response_confirm_seconds_bucket{le="5.0"} 1.0' in out
    assert "iotguard_response_confirm_seconds_count 1.0" in out
    assert "iotguard_response_confirm_seconds_sum 0.02" in out


def test_failing_snapshot_still_scrapes_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict:
        raise RuntimeError("state not ready")

    m = Metrics(broken)
    m.observe_scoring(0.001)
    with caplog.at_level(logging.ERROR, logger="iotguard.metrics"):
        text = m.render().decode()
        assert "iotguard_scrape_errors_total 1.0" in text
        assert "iotguard_scoring_seconds_count 1.0" in text
        assert "iotguard_response_confirm_seconds_count 0.0" in text
        assert "iotguard_alerts_total" not in text  # omitted, not zeroed: no fake counter reset
        assert "iotguard_scrape_errors_total 2.0" in m.render().decode()
    assert m.scrape_errors == 2
    logged = [r for r in caplog.records if "state not ready" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


@pytest.mark.parametrize("bad", [{"polls": None}, {"alerts": ["anomaly"]}, {"responses": {"quarantine": 1}},
                                 {"active_responses": {"mirror": "x"}}], ids=repr)
def test_malformed_snapshot_is_a_scrape_error(bad: dict) -> None:
    m = Metrics(lambda: {"switches": 1, **bad})
    text = m.render().decode()
    assert "iotguard_scrape_errors_total 1.0" in text
    assert "iotguard_switches_connected" not in text  # nothing half-built


def test_private_registries_do_not_clash_and_snapshot_waits_for_scrape() -> None:
    calls: list[int] = []

    def snap() -> dict:
        calls.append(1)
        return {"polls": 1}

    a = Metrics(snap)
    b = Metrics(lambda: {"polls": 2})
    Metrics(snap, registry=CollectorRegistry(auto_describe=True))  # like the global registry
    assert calls == []  # registering must not call into the app
    assert "iotguard_polls_total 1.0" in lines(a) and "iotguard_polls_total 2.0" in lines(b)
    assert REGISTRY.get_sample_value("iotguard_scrape_errors_total") is None
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(dict, registry=a.registry)


def test_start_serves_http_and_refuses_taken_port() -> None:
    m = Metrics(lambda: {"switches": 3})
    server, thread = m.start("127.0.0.1", 0)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            body = resp.read().decode()
        assert "iotguard_switches_connected 3.0" in body
        assert "iotguard_scoring_seconds_count 0.0" in body

        with pytest.raises(OSError) as info:
            Metrics(dict).start("127.0.0.1", port)
        assert str(info.value).startswith(f"cannot listen for metrics on 127.0.0.1:{port}: ")
        assert info.value.errno == errno.EADDRINUSE
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --------------------------------------------------------------------------- dashboard and docs


def test_grafana_dashboard_queries_only_exposed_metrics() -> None:
    dash = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    m = Metrics(lambda: FULL)
    m.observe_scoring(0.001)
    m.observe_confirm(0.1)
    exposed = sample_names(m.render().decode())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    used: set[str] = set()
    for p in panels:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names = re.findall(r"iotguard_[a-z_]+", t["expr"])
            assert names, (p["title"], t["expr"])
            for name in names:
                # PromQL selects samples, so a histogram must be queried as _bucket/_sum/_count
                # and a counter with its _total: the exact sample name must exist.
                assert name in exposed, (p["title"], name)
            used.update(names)
    for needed in ("iotguard_packet_in_total", "iotguard_flow_entries_total", "iotguard_scoring_seconds_bucket",
                   "iotguard_response_confirm_seconds_bucket", "iotguard_alerts_total",
                   "iotguard_responses_total", "iotguard_active_responses", "iotguard_switches_connected",
                   "iotguard_devices_baselined", "iotguard_devices_learning"):
        assert needed in used, needed


def test_docs_describe_every_metric() -> None:
    doc = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    families = {ln.split()[2] for ln in Metrics(lambda: FULL).render().decode().splitlines()
                if ln.startswith("# TYPE") and not ln.split()[2].endswith("_created")}
    assert len(families) == 18
    for name in families:
        assert f"`{name}`" in doc, name
