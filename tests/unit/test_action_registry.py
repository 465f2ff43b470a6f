"""Adding a response action is one module and one registration line.

A test-only `tarpit` action (rate-limit a device to 1 packet/s) is registered by a
fixture, and nothing outside this file changes: it validates in a playbook,
compiles to rules, is stored and reloaded after a restart, is listed by the
controller's responses view (what GET /api/v1/responses answers) and by the
CLI, appears in the generated schema, and is released.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

import pytest

from controller.api import cli
from controller.core import Core
from controller.openflow import rules
from controller.openflow.rules import FlowSpec, MeterSpec, Slot
from controller.response import playbook as pb
from controller.response import schema, validation as v
from controller.response.actions import REGISTRY
from controller.response.actions.base import Context, Entity, ResponseAction
from controller.response.engine import ResponseStore
from tests.unit.test_cli import api_cli, fake  # noqa: F401 - the fake API fixture
from tests.unit.test_responder import CAM, make

TARPIT_KIND = 0x20


# ---------------------------------------------------------------- the action: what a new module holds

@dataclass(frozen=True)
class TarpitParams:
    pps: int = v.param(v.Int(1, 10), 1, "packets per second the device may still send")


@dataclass(frozen=True)
class TarpitPlan:
    pps: int = 1


class Tarpit(ResponseAction):
    name = "tarpit"
    summary = "let the device send one packet per second"
    Params = TarpitParams
    Plan = TarpitPlan
    kind = TARPIT_KIND
    uses_meter = True
    nullable = True
    params_doc = "`pps`: 1..10, default 1"
    effect_doc = "a packets-per-second meter on everything the device sends"
    layout = (("0 security", f"{Slot.RATE_LIMIT}+p", "eth_src=device MAC", "meter (packets/s), goto table 1",
               "TARPIT 0x20"),)

    def resolve(self, params: TarpitParams, ctx: Context) -> TarpitPlan:
        return TarpitPlan(params.pps)

    def compile(self, rid, entity: Entity, plan: TarpitPlan, *, offset, timeout, meter_id):
        return [rules.response_meter(meter_id, plan.pps, 1, "pktps"),
                rules.response_rule(self.kind, rid, Slot.RATE_LIMIT, rules.from_mac(entity.mac),
                                    rules.metered(meter_id), offset=offset, timeout=timeout)]


@pytest.fixture
def tarpit():
    action = REGISTRY.register(Tarpit())      # the one registration line
    yield action
    REGISTRY.unregister("tarpit")


TARPIT_BOOK = """
playbooks:
  - name: tarpit-burst
    description: slow a scanner down to a crawl
    priority: 700
    when: {kinds: [new_flow_burst]}
    do:
      - tarpit: {ttl: 10m}
"""


def test_tarpit_validates_in_a_playbook_and_bad_params_name_their_place(tarpit):
    (book,) = pb.parse_playbooks(TARPIT_BOOK, source="tarpit.yaml")
    assert book.do[0].kind == "tarpit" and book.do[0].params == TarpitParams(1) and book.do[0].ttl == 600
    with pytest.raises(pb.PlaybookError) as e:
        pb.parse_playbooks(TARPIT_BOOK.replace("{ttl: 10m}", "{pps: 50}"), source="tarpit.yaml")
    assert str(e.value) == "tarpit.yaml:8:23: playbooks[0].do[0].tarpit.pps: must be between 1 and 10, got 50"


def test_without_the_registration_line_tarpit_is_an_unknown_action():
    with pytest.raises(pb.PlaybookError, match="unknown action 'tarpit'"):
        pb.parse_playbooks(TARPIT_BOOK, source="tarpit.yaml")


def test_tarpit_compiles_is_stored_listed_survives_a_restart_and_is_released(tarpit, tmp_path):
    c, clock = make(tmp_path, books=TARPIT_BOOK)
    c.inject_alert({"kind": "new_flow_burst", "device": "camera", "score": 40})
    out, _ = c.take_outbox()
    meters = [m for _, m in out if isinstance(m, MeterSpec) and m.command == "add"]
    flows = [f for _, f in out if isinstance(f, FlowSpec)]
    assert {d for d, _ in out} == {2}                       # the camera's edge switch
    assert [(m.rate, m.unit) for m in meters] == [(1, "pktps")]
    (flow,) = flows
    assert rules.cookie_kind(flow.cookie) == TARPIT_KIND and flow.priority == Slot.RATE_LIMIT + 699
    assert flow.match == (("eth_src", CAM),) and flow.instructions == (("meter", meters[0].meter_id), ("goto", 1))
    assert REGISTRY.by_kind(rules.cookie_kind(flow.cookie)) is tarpit    # where the rule comes from

    (view,) = c.responses_view()                   # GET /api/v1/responses
    assert view["action"] == "tarpit" and view["params"] == {"pps": 1} and view["device"] == "camera"
    assert view["cookie"] == f"{rules.cookie(TARPIT_KIND, view['id']):#018x}"

    c.shutdown()                                             # a restart: a new controller, same state
    c2 = Core(c.config, clock=clock, wall=clock)
    c2.enable_responses(pb.parse_playbooks(TARPIT_BOOK))
    again = c2.switch_connected(2)
    assert [m for _, m in again if isinstance(m, FlowSpec) and rules.cookie_kind(m.cookie) == TARPIT_KIND] \
        == [flow]                                            # the same rule, from the stored plan
    assert [r["action"] for r in c2.responses_view()] == ["tarpit"]

    removed = c2.release_response(view["id"], "test")
    assert (2, rules.delete_response(view["id"], TARPIT_KIND)) in removed
    assert (2, rules.delete_meter(meters[0].meter_id)) in removed
    assert c2.responses_view() == []


def test_a_manual_tarpit_goes_through_the_api_body(tarpit, tmp_path):
    c, _ = make(tmp_path)
    done = c.manual_response({"action": "tarpit", "device": "camera", "params": {"pps": 2}})
    assert [a["action"] for a in done["actions"]] == ["tarpit"]
    assert any(isinstance(m, MeterSpec) and m.rate == 2 and m.unit == "pktps" for _, m in done["messages"])


def test_the_cli_offers_and_lists_tarpit(tarpit, tmp_path, fake, capsys):  # noqa: F811
    assert "tarpit" in cli.response_actions()
    c, _ = make(tmp_path, books=TARPIT_BOOK)
    c.inject_alert({"kind": "new_flow_burst", "device": "camera", "score": 40})
    fake.answer("GET", "/api/v1/responses", 200, {"responses": c.responses_view()})
    status, out, _ = api_cli(fake, capsys, "responses")
    assert status == 0 and out.splitlines()[1].split()[1:3] == ["tarpit", "camera"]   # the list names the device
    fake.answer("POST", "/api/v1/responses", 201, {"responses": [], "actions": []})
    assert api_cli(fake, capsys, "respond", "tarpit", "camera", "--param", "pps=3")[0] == 0
    assert fake.requests[-1]["body"] == {"device": "camera", "action": "tarpit", "params": {"pps": 3}}


def test_tarpit_is_in_the_generated_schema_and_the_docs_table(tarpit):
    s = schema.schema()
    assert {"$ref": "#/$defs/tarpit"} in s["$defs"]["action"]["oneOf"]
    body = s["$defs"]["tarpit"]["properties"]["tarpit"]
    assert body["properties"]["pps"] == {"type": "integer", "minimum": 1, "maximum": 10, "default": 1,
                                         "description": "packets per second the device may still send"}
    assert set(body["properties"]) == {"pps", "ttl", "escalate"}
    assert "| `tarpit` | `pps`: 1..10, default 1 |" in schema.action_table()
    assert any(r[-1] == "TARPIT 0x20" for r in REGISTRY.layout_rows())


def test_a_second_action_with_the_same_name_or_cookie_kind_is_refused(tarpit):
    with pytest.raises(ValueError, match="registered twice"):
        REGISTRY.register(Tarpit())

    class Clash(Tarpit):
        name = "clash"
    with pytest.raises(ValueError, match="cookie kind 0x20 is tarpit's already"):
        REGISTRY.register(Clash())


# ---------------------------------------------------------------- the store's migration

V0_SCHEMA = """
CREATE TABLE responses (
    id INTEGER PRIMARY KEY, action TEXT NOT NULL, entity TEXT NOT NULL, params TEXT NOT NULL,
    playbook TEXT NOT NULL, mode TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    ttl REAL NOT NULL, alert_id TEXT, mac TEXT, subject TEXT NOT NULL, key TEXT NOT NULL,
    repeats INTEGER NOT NULL, state TEXT NOT NULL, priority INTEGER NOT NULL, meter_id INTEGER,
    dpids TEXT NOT NULL, confirmed TEXT NOT NULL, reason TEXT NOT NULL, ended REAL
);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def test_a_store_written_before_the_registry_still_loads(tmp_path):
    """Rows as the previous release wrote them (schema 0: no device column, hand-encoded params)."""
    path = tmp_path / "responses.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V0_SCHEMA)
    rows = [
        (3, "quarantine", {"mac": CAM, "ip": "10.0.0.11", "prefix": None},
         {"allow": [{"ip": "10.0.0.50", "proto": "tcp", "ports": [443]}], "dhcp": True, "dns_servers": ["10.0.0.1"]},
         f"quarantine {CAM}", None),
        (4, "rate_limit", {"mac": CAM, "ip": None, "prefix": None}, {"kbps": 1000, "burst_kbits": None},
         f"rate_limit {CAM}", 0x100),
        (5, "block_ip", {"mac": None, "ip": None, "prefix": "203.0.113.7"}, {}, "block_ip 203.0.113.7/32", None),
    ]
    for rid, action, entity, params, key, meter in rows:
        db.execute("INSERT INTO responses VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (rid, action, json.dumps(entity), json.dumps(params), "pb", "enforce", 100.0, 700.0, 600.0,
                    "a1", entity["mac"], key.split(" ", 1)[1], key, 0, "active", 499, meter, "[1]", "[1]",
                    "why", None))
    db.commit()
    db.close()

    store = ResponseStore(path)
    loaded = store.active()
    assert [(r.id, r.action, r.key) for r in loaded] == [(3, "quarantine", f"quarantine {CAM}"),
                                                         (4, "rate_limit", f"rate_limit {CAM}"),
                                                         (5, "block_ip", "block_ip 203.0.113.7/32")]
    assert store.problems == [] and all(r.device is None for r in loaded)
    assert loaded[0].params.allow[0].ports == (443,) and loaded[1].params.burst == 100
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == 1
    store.close()
    store = ResponseStore(path)                                # opening again changes nothing
    assert [r.id for r in store.active()] == [3, 4, 5]
    store.close()


def test_a_store_from_a_newer_release_is_refused(tmp_path):
    path = tmp_path / "responses.sqlite"
    ResponseStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(ValueError, match="newer iotguard"):
        ResponseStore(path)
