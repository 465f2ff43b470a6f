"""Approval for disruptive actions: a playbook in `mode: approve` decides and records a pending
response, notifies, and installs nothing until an operator approves it."""

from __future__ import annotations

import pytest

from controller.openflow import rules
from controller.openflow.rules import FlowSpec
from controller.response import playbook as pb
from tests.unit.kinds import Kind
from tests.unit.test_responder import CAM, make

APPROVE_BOOK = """
playbooks:
  - name: quarantine-burst-approved
    description: a human decides
    mode: approve
    priority: 800
    when: {kinds: [new_flow_burst]}
    do:
      - quarantine: {ttl: 10m}
      - notify: {log: true}
"""


def burst(c):
    return c.inject_alert({"kind": "new_flow_burst", "device": "camera", "score": 40})


def events(c, name):
    return [e for e in c.audit_view(None) if e["event"] == name]


def test_a_pending_quarantine_installs_nothing_until_approved(tmp_path):
    c, clock = make(tmp_path, books=APPROVE_BOOK)
    burst(c)
    out, jobs = c.take_outbox()
    assert out == [] and [j["destination"] for j in jobs] == ["log"]     # the operator is told
    (p,) = c.pending_view()
    assert p["action"] == "quarantine" and p["device"] == "camera" and p["state"] == "pending"
    assert p["approve_within"] == 900.0 and c.responses_view() == []
    assert events(c, "pending")[0]["outcome"] == "awaiting-approval"
    burst(c)                                                              # the same alert again:
    assert c.take_outbox()[0] == [] and len(c.pending_view()) == 1        # still one pending response

    clock.t += 60
    sent = c.approve_response(p["id"], "alice")
    assert sent and all(isinstance(s, FlowSpec) and rules.cookie_kind(s.cookie) == Kind.QUARANTINE
                        for _, s in sent)
    assert {d for d, _ in sent} == {2} and all(s.hard_timeout == 600 for _, s in sent)   # ttl from approval
    (r,) = c.responses_view()
    assert r["id"] == p["id"] and r["mac"] == CAM and r["remaining"] == 600.0
    (approved,) = events(c, "approved")
    assert approved["detail"]["by"] == "alice" and approved["time"] == clock.t
    assert c.pending_view() == []
    with pytest.raises(KeyError, match="not awaiting approval"):
        c.approve_response(p["id"], "bob")


def test_deny_and_expiry_leave_no_rule(tmp_path):
    c, clock = make(tmp_path, books=APPROVE_BOOK)
    burst(c)
    (p,) = c.pending_view()
    c.deny_response(p["id"], "bob", "a firmware update")
    assert c.pending_view() == [] and c.responses_view() == []
    (denied,) = events(c, "denied")
    assert denied["detail"] == {"by": "bob", "reason": "a firmware update"}
    assert c.switch_connected(2) and not [m for _, m in c.switch_connected(2)
                                          if isinstance(m, FlowSpec) and rules.cookie_kind(m.cookie) == Kind.QUARANTINE]

    clock.t += 3600                     # a new offence, after the old one's ttl: pending again
    burst(c)
    (p2,) = c.pending_view()
    clock.t += 901
    c.expire_responses()
    out, _ = c.take_outbox()
    assert out == [] and c.pending_view() == [] and c.responses_view() == []
    assert events(c, "denied")[0]["detail"]["by"] == "timeout"
    with pytest.raises(KeyError, match="not awaiting approval"):
        c.approve_response(p2["id"], "alice")


def test_approve_is_a_playbook_mode_in_the_schema():
    from controller.response import schema
    assert "approve" in schema.schema()["$defs"]["playbook"]["properties"]["mode"]["enum"]
    (book,) = pb.parse_playbooks(APPROVE_BOOK)
    assert book.mode == "approve" and not book.dry_run


from tests.unit.test_cli import api_cli, fake  # noqa: E402,F401 - the fake API fixture


def test_cli_pending_approve_deny(tmp_path, fake, capsys, monkeypatch):  # noqa: F811
    c, _ = make(tmp_path, books=APPROVE_BOOK)
    burst(c)
    fake.answer("GET", "/api/v1/responses/pending", 200, {"pending": c.pending_view()})
    status, out, _ = api_cli(fake, capsys, "pending")
    lines = out.splitlines()
    assert status == 0 and lines[0].split()[:4] == ["ID", "ACTION", "DEVICE", "TTL"]
    assert lines[1].split()[1:4] == ["quarantine", "camera", "10m0s"]
    rid = str(c.pending_view()[0]["id"])
    fake.answer("POST", f"/api/v1/responses/{rid}/approve", 200, {"approved": int(rid), "by": "alice",
                                                                   "rules_sent": 14})
    assert api_cli(fake, capsys, "approve", rid, "--by", "alice") == \
        (0, f"approved response {rid} as alice: 14 rules sent\n", "")
    assert fake.requests[-1]["body"] == {"by": "alice"}
    fake.answer("POST", f"/api/v1/responses/{rid}/deny", 200, {"denied": int(rid), "by": "bob"})
    monkeypatch.setenv("USER", "bob")
    monkeypatch.delenv("SUDO_USER", raising=False)
    assert api_cli(fake, capsys, "deny", rid, "--reason", "update")[0] == 0
    assert fake.requests[-1]["body"] == {"by": "bob", "reason": "update"}
    fake.answer("GET", "/api/v1/responses/pending", 200, {"pending": []})
    assert api_cli(fake, capsys, "pending") == (0, "no responses awaiting approval\n", "")
