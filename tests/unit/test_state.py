"""State that never lies: a damaged, emptied or deleted response store never starts silently
with active responses forgotten; `iotguard state check|repair` shows and rebuilds them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from controller.core import Core
from controller.openflow import rules
from controller.openflow.rules import FlowSpec
from controller.response import playbook as pb
from controller.response import state
from controller.response.audit import AuditLog
from tests.unit.kinds import Kind
from tests.unit.test_responder import BOOKS, make


def quarantined(tmp_path):
    """A controller that quarantined the camera (10 min), then stopped."""
    c, clock = make(tmp_path)
    c.manual_response({"action": "quarantine", "device": "camera", "ttl": 600})
    (r,) = c.responses_view()
    c.responder.close()
    return c, clock, r["id"]


def test_a_healthy_state_dir_checks_ok(tmp_path):
    c, clock, rid = quarantined(tmp_path)
    report = state.check(str(tmp_path), clock())
    assert report.ok and report.active_in_store == [rid]
    state.guard(str(tmp_path), clock())


def test_an_emptied_store_refuses_to_start_and_repair_rebuilds_the_quarantine(tmp_path):
    c, clock, rid = quarantined(tmp_path)
    os.remove(tmp_path / "responses.sqlite")                  # lost, or restored from an old backup
    with pytest.raises(state.StateError) as e:
        Core(c.config, clock=clock, wall=clock).enable_responses(pb.parse_playbooks(BOOKS))
    text = str(e.value)
    assert f"audit.jsonl: response {rid} is active (quarantine of camera, until " in text
    assert "but the store lacks it" in text and "iotguard state repair --state-dir" in text

    clock.t += 100
    done = state.repair(str(tmp_path), clock())
    assert done == [f"response {rid}: rebuilt (quarantine, 600 s ttl, 500 s left)"]
    assert state.check(str(tmp_path), clock()).ok
    c2 = Core(c.config, clock=clock, wall=clock)
    c2.enable_responses(pb.parse_playbooks(BOOKS))
    out = c2.switch_connected(2)
    flows = [m for _, m in out if isinstance(m, FlowSpec) and rules.cookie_kind(m.cookie) == Kind.QUARANTINE]
    assert flows and all(f.hard_timeout == 500 for f in flows)          # the time it had left


def test_a_damaged_store_is_named_and_moved_aside_never_deleted(tmp_path):
    c, clock, rid = quarantined(tmp_path)
    (tmp_path / "responses.sqlite").write_bytes(b"this is not sqlite" * 100)
    report = state.check(str(tmp_path), clock())
    assert not report.ok
    assert report.lines()[0].startswith(f"{tmp_path}/responses.sqlite: cannot be read as a response store (")
    with pytest.raises(state.StateError, match="move it aside and run 'iotguard state repair"):
        state.guard(str(tmp_path), clock())
    done = state.repair(str(tmp_path), clock())
    assert done[0] == f"moved the unreadable store to {tmp_path}/responses.sqlite.damaged-{int(clock())}"
    assert done[1].startswith(f"response {rid}: rebuilt")
    assert (tmp_path / f"responses.sqlite.damaged-{int(clock())}").read_bytes().startswith(b"this is not")


def test_released_and_expired_responses_are_not_missing(tmp_path):
    c, clock = make(tmp_path)
    c.manual_response({"action": "quarantine", "device": "camera", "ttl": 600})
    (r,) = c.responses_view()
    c.release_response(r["id"], "test")
    c.manual_response({"action": "quarantine", "device": "tv", "ttl": 60})
    c.responder.close()
    os.remove(tmp_path / "responses.sqlite")
    clock.t += 120                                       # the tv's ran out
    assert state.check(str(tmp_path), clock()).ok


def test_the_cli_check_exits_1_naming_the_missing_response(tmp_path):
    c, clock, rid = quarantined(tmp_path)
    os.remove(tmp_path / "responses.sqlite")
    r = subprocess.run([sys.executable, "-m", "controller.api.cli", "state", "check", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    # the real clock: the quarantine of the test clock's 2027 has not run out
    assert r.returncode == 1 and f"response {rid} is active" in r.stdout and "not ok" in r.stdout
    r = subprocess.run([sys.executable, "-m", "controller.api.cli", "state", "repair", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"response {rid}: rebuilt" in r.stdout and r.stdout.rstrip().endswith(
        "ok: the store has every active response the audit log shows")


def test_a_fifo_audit_log_fails_at_once_instead_of_hanging(tmp_path):
    os.mkfifo(tmp_path / "audit.jsonl")
    with pytest.raises(OSError, match="audit.jsonl"):
        AuditLog(tmp_path / "audit.jsonl")


def test_a_token_file_that_is_not_utf8_is_named(tmp_path):
    from controller.api.rest import load_or_create_token
    (tmp_path / "api-token").write_bytes(b"\xff\xfe\x00garbage-token-bytes")
    with pytest.raises(ValueError, match=f"{tmp_path}/api-token: the API token file is not UTF-8"):
        load_or_create_token(None, str(tmp_path))


def test_the_audit_read_is_bounded_and_reads_the_log_backwards(tmp_path):
    import tracemalloc
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(3000):
        log.write("decision", time=float(i), action="quarantine", response_id=i, outcome="sent",
                  detail={"pad": "x" * 200})
    tracemalloc.start()
    newest = log.read()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(newest) == 1000 and newest[0]["response_id"] == 2999 and newest[-1]["response_id"] == 2000
    assert peak < 3_000_000           # the 1000 records it returns, not the whole 0.9 MB file twice over
    assert [r["response_id"] for r in log.read(since=2996.0)] == [2999, 2998, 2997]
    assert log.read(limit=10**9)[999]["response_id"] == 2000         # the cap holds whatever is asked


def test_the_audit_log_rotates_by_size_and_keeps_its_copies(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=20_000, keep=3)
    for i in range(400):
        log.write("decision", time=float(i), action="quarantine", response_id=i, outcome="sent",
                  detail={"pad": "x" * 100})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    assert all(p.stat().st_size <= 20_000 for p in tmp_path.iterdir())
    newest = log.read(limit=1000)
    ids = [r["response_id"] for r in newest]
    assert ids[0] == 399 and ids == sorted(ids, reverse=True) and ids == list(range(399, 399 - len(ids), -1))
    assert 300 > len(ids) > 100             # what the retention keeps: 4 files of at most 20 kB
    records = list(state._audit_records(str(tmp_path / "audit.jsonl")))
    assert [r["response_id"] for r in records] == sorted(ids)        # oldest first, across the copies
