import json
import urllib.error

from controller.response.notify import deliver, payload, summary

JOB = {"destination": "https://soc.example/hook", "playbook": "pb", "mode": "enforce",
       "alert": {"kind": "new_flow_burst", "device": "camera", "explanation": "camera opened 40"},
       "webhook": "https://soc.example/hook", "timeout_s": 2, "retries": 2,
       "actions": [{"action": "quarantine", "outcome": "sent", "response_id": 7}]}


def test_log_destination_writes_one_line(caplog):
    assert deliver({**JOB, "webhook": None})
    assert "camera: camera opened 40 -> quarantine sent (#7)" in caplog.text


def test_webhook_posts_the_alert_and_actions_as_json():
    calls = []
    assert deliver(JOB, send=lambda u, b, t: calls.append((u, json.loads(b), t)) or 204, sleep=lambda s: None)
    ((url, body, timeout),) = calls
    assert url == JOB["webhook"] and timeout == 2
    assert body == payload(JOB) and body["actions"][0]["response_id"] == 7


def test_webhook_retries_with_backoff_then_gives_up(caplog):
    slept = []

    def refuse(u, b, t):
        raise urllib.error.URLError("connection refused")
    assert not deliver(JOB, send=refuse, sleep=slept.append)
    assert slept == [0.5, 1.0]
    assert "giving up on https://soc.example/hook after 3 attempts" in caplog.text


def test_webhook_error_status_is_retried():
    answers = iter([500, 200])
    assert deliver(JOB, send=lambda u, b, t: next(answers), sleep=lambda s: None)


def test_dry_run_is_said():
    assert "[pb dry-run]" in summary({**JOB, "mode": "dry-run"})
