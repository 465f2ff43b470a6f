"""Protected devices and addresses: automatic responses never cut off the gateway, DNS, the
controller, infra devices or internal prefixes; a manual one needs "force": true."""

from __future__ import annotations

import pytest

from controller.response.service import RequestError
from tests.unit.test_responder import CAM, make

OUTBREAK_BOOK = """
playbooks:
  - name: block-c2
    description: test
    priority: 900
    when: {kinds: [outbreak]}
    do:
      - block_ip: {target: alert, ttl: 1h}
"""


def audit(c):
    return [e for e in c.audit_view(None)]


def test_manual_quarantine_of_the_gateway_is_refused_without_force_and_audited(tmp_path):
    c, _ = make(tmp_path)
    done = c.manual_response({"action": "quarantine", "device": "gw", "ttl": 60})
    (decision,) = done["actions"]
    assert decision["outcome"] == "refused" and not done["messages"]
    assert decision["error"] == "gw is tagged 'gateway', a protected tag (protected.tags)"
    (refused,) = [e for e in audit(c) if e["event"] == "refused"]
    assert refused["action"] == "quarantine" and refused["error"] == decision["error"]
    assert c.responses_view() == []

    forced = c.manual_response({"action": "quarantine", "device": "gw", "ttl": 60, "force": True})
    assert forced["actions"][0]["outcome"] == "sent" and forced["messages"]
    (decided,) = [e for e in audit(c) if e["event"] == "decision"]
    assert decided["detail"]["force"] is True


def test_a_quarantine_of_an_ordinary_device_still_works(tmp_path):
    c, _ = make(tmp_path)
    done = c.manual_response({"action": "quarantine", "device": "camera", "ttl": 60})
    assert done["actions"][0]["outcome"] == "sent"
    assert [r["mac"] for r in c.responses_view()] == [CAM]


@pytest.mark.parametrize("ip, reason", [
    ("10.0.0.0/8", "10.0.0.0/8 covers an internal subnet (10.0.0.0/24)"),
    ("10.0.0.1", "10.0.0.1/32 covers an internal subnet (10.0.0.0/24)"),
    ("0.0.0.0/1", "0.0.0.0/1 covers an internal subnet (10.0.0.0/24)"),
])
def test_manual_block_of_an_internal_prefix_needs_force(tmp_path, ip, reason):
    c, _ = make(tmp_path)
    done = c.manual_response({"action": "block_ip", "params": {"ip": ip}})
    assert done["actions"][0]["outcome"] == "refused" and done["actions"][0]["error"] == reason
    assert not done["messages"]


@pytest.mark.parametrize("ip, word", [("255.255.255.255", "the broadcast address"), ("127.0.0.1", "loopback"),
                                      ("224.0.0.251", "multicast")])
def test_non_unicast_addresses_are_never_blocked_even_with_force(tmp_path, ip, word):
    c, _ = make(tmp_path)
    done = c.manual_response({"action": "block_ip", "params": {"ip": ip}, "force": True})
    assert done["actions"][0]["outcome"] == "refused" and word in done["actions"][0]["error"]


@pytest.mark.parametrize("remote, outcome", [
    ("10.0.0.1", "refused"), ("10.0.0.0/24", "refused"), ("255.255.255.255", "refused"),
    ("127.0.0.1", "refused"), ("198.51.100.66", "sent")])
def test_an_outbreak_whose_remote_is_internal_or_not_unicast_is_refused_and_audited(tmp_path, remote, outcome):
    c, _ = make(tmp_path, books=OUTBREAK_BOOK)
    c.inject_alert({"kind": "outbreak", "device": "2 iot devices", "devices": ["camera", "tv"], "score": 2,
                    "remote": remote})
    out, _ = c.take_outbox()
    events = [e for e in audit(c) if e["action"] == "block_ip"]
    if outcome == "refused":
        assert out == [] and events and all(e["event"] == "refused" for e in events)
        assert c.responses_view() == []
    else:
        assert out and any(e["event"] == "decision" and e["outcome"] == "sent" for e in events)


def test_protected_section_names_tags_and_subnets(tmp_path):
    c, _ = make(tmp_path, extra="protected: {names: [tv], tags: [camera], subnets: [10.0.0.4/32]}")
    for device, word in (("tv", "tv is protected (protected.names)"),
                         ("camera", "camera is tagged 'camera', a protected tag")):
        done = c.manual_response({"action": "block_lateral", "device": device})
        assert done["actions"][0]["outcome"] == "refused" and word in done["actions"][0]["error"]
    # the configured list replaces the default one: gw (gateway, infra) is no longer protected by tag,
    # but it is still the gateway
    done = c.manual_response({"action": "rate_limit", "device": "gw", "params": {"kbps": 100}})
    assert done["actions"][0]["error"] == "gw is the gateway"


@pytest.mark.parametrize("body, message", [
    ({"action": ["quarantine"], "device": "camera"}, 'field \'action\' must be one of'),
    ({"action": "quarantine", "device": "camera", "params": "ab"}, "field 'params' must be an object"),
    ({"action": "quarantine", "device": "camera", "params": 5}, "field 'params' must be an object"),
    ({"action": "quarantine", "device": "camera", "params": True}, "field 'params' must be an object"),
    ({"action": "quarantine", "device": "camera", "params": [["ttl", "5m"]]}, "field 'params' must be an object"),
    ({"action": "quarantine", "device": "camera", "dry_run": "false"}, "field 'dry_run' must be true or false"),
    ({"action": "quarantine", "device": "camera", "force": 1}, "field 'force' must be true or false"),
    ({"action": "quarantine", "device": "camera", "ttl": 60, "params": {"ttl": "5m"}}, "ttl is given twice"),
    ({"action": "quarantine", "device": "camera", "ttl": True}, "field 'ttl' must be whole seconds"),
    ({"action": "quarantine", "device": 7}, "field 'device' must be a string"),
])
def test_manual_requests_have_exact_types(tmp_path, body, message):
    c, _ = make(tmp_path)
    with pytest.raises(RequestError, match=message.replace("(", r"\(")):
        c.manual_response(body)
    assert c.responses_view() == []


def test_a_release_of_an_impossible_id_is_not_found(tmp_path):
    c, _ = make(tmp_path)
    with pytest.raises(KeyError, match="no response with id"):
        c.release_response(99999999999999999999999, "test")


@pytest.mark.parametrize("body, message", [
    ({"kind": "outbreak", "devices": ["camera"] * 51, "score": 2}, "field 'devices' has 51 entries; at most 50"),
    ({"kind": "anomaly", "device": "camera", "features": [{"feature": "tx_bytes"}] * 33},
     "field 'features' has 33 entries; at most 32"),
    ({"kind": "anomaly", "device": "camera", "window": {f"f{i}": 1 for i in range(65)}},
     "field 'window' has 65 entries; at most 64"),
    ({"kind": "anomaly", "device": "camera", "explanation": "x" * 1001},
     "field 'explanation' is 1001 characters; at most 1000"),
])
def test_an_injected_alert_is_bounded(tmp_path, body, message):
    c, _ = make(tmp_path)
    with pytest.raises(RequestError, match=message):
        c.inject_alert(body)
    assert [e for e in audit(c)] == []


def test_incident_files_are_bounded(tmp_path, monkeypatch):
    from controller.detection import incidents
    monkeypatch.setattr(incidents, "MAX_FILES", 3)
    c, clock = make(tmp_path)
    c.keep_incidents(str(tmp_path / "incidents"))
    for i in range(5):
        clock.t += 1
        c.inject_alert({"kind": "anomaly", "device": "camera", "score": 9})
    files = list((tmp_path / "incidents").glob("*.json"))
    assert len(files) == 3 and c.incidents.pruned == 2
