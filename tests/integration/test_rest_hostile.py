"""Bad REST requests against the real controller process (no switch needed): each gets its
exact status and a JSON error body, changes nothing, and the controller stays healthy."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.integration import rawof as r

pytestmark = pytest.mark.integration

A, J = "Authorization", "Content-Type"


def bad_requests(token: str) -> list[tuple[str, str, str, dict, bytes | None, int, str]]:
    """(id, method, path, headers, body, status, error) for every case."""
    auth = {A: f"Bearer {token}"}
    js = {**auth, J: "application/json"}

    def post(path: str, body, status: int, error: str = "bad_request", name: str = ""):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return (name or f"POST {path} {data[:40]!r}", "POST", path, js, data, status, error)

    resp = "/api/v1/responses"
    cases = [
        ("no token", "GET", "/api/v1/health", {}, None, 401, "unauthorized"),
        ("wrong token", "GET", "/api/v1/devices", {A: "Bearer " + "x" * 40}, None, 401, "unauthorized"),
        ("basic auth", "GET", "/api/v1/devices", {A: "Basic Zm9vOmJhcg=="}, None, 401, "unauthorized"),
        ("unknown path", "GET", "/api/v1/nothing", auth, None, 404, "not_found"),
        ("wrong method", "PUT", "/api/v1/health", auth, None, 405, "method_not_allowed"),
        ("delete health", "DELETE", "/api/v1/health", auth, None, 405, "method_not_allowed"),
        ("since not a number", "GET", "/api/v1/alerts?since=yesterday", auth, None, 400, "bad_request"),
        ("since infinite", "GET", "/api/v1/audit?since=inf", auth, None, 400, "bad_request"),
        ("since nan", "GET", "/api/v1/alerts?since=nan", auth, None, 400, "bad_request"),
        ("release a letter", "DELETE", f"{resp}/abc", auth, None, 400, "bad_request"),
        ("release a huge id", "DELETE", f"{resp}/99999999999999999999999", auth, None, 404, "not_found"),
        ("release unknown", "DELETE", f"{resp}/424242", auth, None, 404, "not_found"),
        ("approve unknown", "POST", f"{resp}/424242/approve", js, b"{}", 404, "not_found"),
        ("deny a letter", "POST", f"{resp}/x/deny", js, b"{}", 400, "bad_request"),
        ("approve by a number", "POST", f"{resp}/1/approve", js, b'{"by": 5}', 400, "bad_request"),
        ("text body", "POST", resp, {**auth, J: "text/plain"}, b"quarantine camera", 415, "unsupported_media_type"),
        ("not json", "POST", resp, js, b"{nope", 400, "bad_request"),
        ("not utf-8", "POST", resp, js, b'{"action": "\xff"}', 400, "bad_request"),
        ("a list body", "POST", resp, js, b"[1, 2]", 400, "bad_request"),
        ("too deep", "POST", resp, js, b"[" * 5000 + b"]" * 5000, 400, "bad_request"),
        ("too large", "POST", resp, js, b'{"reason": "' + b"x" * 70000 + b'"}', 413, "too_large"),
        ("chunked", "POST", resp, {**js, "Transfer-Encoding": "chunked"}, None, 411, "length_required"),
        post(resp, b'{"action": "quarantine", "ttl": 1e999}', 400,
             name="infinite number"),
        post(resp, b'{"action": "quarantine", "action": "block_ip"}', 400, name="a field twice"),
        post(resp, {"action": ["quarantine"], "device": "camera"}, 400),
        post(resp, {"action": "explode", "device": "camera"}, 400),
        post(resp, {"device": "camera"}, 400, name="no action"),
        post(resp, {"action": "quarantine", "device": "nobody"}, 400),
        post(resp, {"action": "quarantine", "device": 7}, 400),
        post(resp, {"action": "quarantine", "device": "camera", "params": "ab"}, 400),
        post(resp, {"action": "quarantine", "device": "camera", "params": 5}, 400),
        post(resp, {"action": "quarantine", "device": "camera", "params": True}, 400),
        post(resp, {"action": "quarantine", "device": "camera", "params": [["dhcp", True]]}, 400),
        post(resp, {"action": "quarantine", "device": "camera", "dry_run": "false"}, 400),
        post(resp, {"action": "quarantine", "device": "camera", "force": "yes"}, 400),
        post(resp, {"action": "quarantine", "device": "camera", "ttl": 60, "params": {"ttl": "5m"}}, 400),
        post(resp, {"action": "quarantine", "device": "camera", "ttl": "soon"}, 400),
        post(resp, {"action": "quarantine", "device": "camera", "ttl": -5}, 400),
        post(resp, {"action": "rate_limit", "device": "camera", "params": {"kbps": "fast"}}, 400),
        post(resp, {"action": "rate_limit", "device": "camera", "params": {"kbps": 1, "pps": 1}}, 400),
        post(resp, {"action": "block_ip", "params": {"ip": "0.0.0.0/0"}}, 400),
        post(resp, {"action": "block_ip", "params": {"ip": "10.0.0.999"}}, 400),
        post(resp, {"action": "quarantine", "device": "camera", "colour": "red"}, 400),
        post("/api/v1/alerts", {"kind": "bogus", "device": "camera"}, 400),
        post("/api/v1/alerts", {"kind": "anomaly", "device": "camera", "score": "high"}, 400),
        post("/api/v1/alerts", {"kind": "outbreak", "devices": ["a"] * 51}, 400),
        post("/api/v1/alerts", {"kind": "anomaly", "device": "camera", "window": {"tx_bytes": "x"}}, 400),
    ]
    return cases


@pytest.fixture(scope="module")
def controller():
    c = r.ControllerProcess(config="poll_interval: 1.0\nlldp_interval: 1.0\ndevices:\n"
                                   "  - {name: camera, mac: '00:00:00:00:00:11', ip: 10.0.0.11, tags: [camera]}\n")
    try:
        c.wait_ready()
        yield c
    finally:
        c.stop()
        c.cleanup()


def test_every_bad_request_gets_its_status_and_a_json_error_and_health_stays_ok(controller):
    cases = bad_requests(controller._token())
    assert len(cases) >= 40
    for name, method, path, headers, body, status, error in cases:
        conn = http.client.HTTPConnection("127.0.0.1", controller.api_port, timeout=5)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            if body is not None and "Transfer-Encoding" not in headers:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            if body is not None and "Transfer-Encoding" not in headers:
                conn.send(body)
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        assert answer.status == status, (name, answer.status, data[:200])
        assert answer.getheader("Content-Type") == "application/json", name
        got = json.loads(data)
        assert got["error"] == error and isinstance(got["message"], str) and got["message"], (name, got)
        health = controller.health()
        assert health["status"] == "ok", (name, health)
    assert controller.api("GET", "/api/v1/responses") == {"responses": []}   # nothing changed
    assert "Traceback" not in controller.tail(200000)
