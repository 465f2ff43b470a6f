"""The response engine: playbooks + alerts -> responses -> rules, with their lifecycle.

Pure and deterministic given `now`: no threads, no sleeps, no network.  Every
method returns the messages to send as data, `(dpid, FlowSpec | MeterSpec)`,
like `controller.core.Core`; the app sends them and holds its one lock around
every call.  State lives in two files under the state directory:

- `ResponseStore` (SQLite, stdlib `sqlite3`, plain JSON columns): every
  response ever decided, with its state (active, released, expired, failed).
  The active ones are reloaded at start and re-installed by `reconcile`; the
  others are the offence history that escalation counts.
- `controller.response.audit.AuditLog` (`audit.jsonl`): one line per decision and per
  later event.

How an alert becomes responses (the contract of docs/playbooks.md, "How
playbooks combine"):

1. `playbook.matching()` gives the playbooks that fire, highest priority first.
   A playbook runs in dry-run when its mode says so or `dry_run` (global) is set.
2. Each action is resolved to a response key: the action and its subject (the
   device's MAC; block_ip's prefix; mirror's MAC and IDS port) and the mode.
   Actions with the same key form one group: its params come from the first
   (highest-priority) member, its ttl is the longest any member asks for after
   escalation (`Action.ttl_for(repeats)`, repeats = earlier responses with the
   same action and subject, in the same mode, created within that member's
   `escalate.within`).  Enforce and dry-run never share a group, so a dry-run
   playbook can never replace, shorten or suppress an enforced action.
3. A group whose key is already active is not added again: the active
   response's expiry moves to now + ttl if that extends it by at least
   REFRESH_FRACTION of the ttl ("refreshed": its flows are re-sent with the new
   hard_timeout; a rate limit's meter is left as it is, since a meter-mod would
   refill its bucket), otherwise nothing happens ("unchanged").  A response
   therefore lasts at least 0.9 ttl after the last alert that applied it, and an
   alert updated every few seconds re-sends its rules once per tenth of the ttl,
   not at every update.  Its params stay those of the first application.
4. Otherwise a new response gets an id (the low 40 bits of its rules' cookies),
   for rate_limit a meter id, and is compiled by `responses.compile_response`
   at the device's edge switch (every switch when unknown; block_ip always on
   every switch).  Dry-run responses are stored and audited with the rules
   they would install, and nothing is returned to send.
5. `notify` actions become notify jobs (plain dicts), one per destination (the
   log, or a webhook URL) per alert, for the app to deliver off the lock.

Confirmation: every rule the engine emits carries its response's cookie, and
every meter a meter id the engine knows, so `response_id(spec)` maps a sent
message back to its response.  The app sends a Barrier after a batch and calls
`installed(id, dpid, now)` on its reply, or `failed(id, dpid, error, now)` on
an OpenFlow error for one of the batch's xids.  A failure marks the response
failed, is audited and logged, and returns the messages that remove what was
installed of it (a half-installed quarantine could drop DNS without its holes).

Timeouts: a response's ttl is capped at 65535 s, OpenFlow's hard_timeout (the
switch-side backstop); an escalation beyond it is audited as capped.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
import json
import logging
import math
import os
import sqlite3
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from controller.config import Device
from controller.detection.alert import Alert
from controller.response import playbook as pb
from controller.openflow import rules
from controller.response.audit import AuditLog
from controller.response import codec
from controller.response.actions import REGISTRY
from controller.response.actions.base import Context, is_ipv4
from controller.addresses import Subnets
from controller.response.protection import Protection, refusal
from controller.response.records import Entity, Response, ResponseError, compile_response, release_response
from controller.openflow.rules import FlowSpec, MeterSpec
from controller.network.topology import Location

LOG = logging.getLogger("iotguard.engine")

STATES = ("active", "released", "expired", "failed", "pending", "denied")
MAX_RELEASED = 4096          # (alert, response) pairs an operator released, remembered (oldest forgotten)
APPROVE_WITHIN = 900.0       # seconds a pending response waits for an operator; then it is denied
MODES = ("enforce", "dry-run")
REFRESH_FRACTION = 0.1       # a refresh must extend a response by this share of its ttl (else: unchanged)
Spec = FlowSpec | MeterSpec
Messages = list[tuple[int, Spec]]
HostLookup = Callable[[str], "tuple[str, str | None, Location | None] | None"]


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What the engine decided for one action of one alert (the API's `actions` list)."""

    action: str
    playbook: str
    mode: str
    outcome: str                    # sent | pending | refreshed | unchanged | skipped | dry-run | failed | queued
    response_id: int | None = None
    ttl: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k == "response_id"}


class Applied(NamedTuple):
    """What `Engine.on_alert` decided: messages to send, notify jobs to deliver, and
    each action's decision."""

    messages: Messages
    notify: list[dict]
    decisions: list[Decision]


# ---------------------------------------------------------------- stored records


@dataclass(frozen=True, kw_only=True)
class Stored:
    """One response as the store keeps it (a `Response` plus its lifecycle)."""

    id: int
    action: str
    entity: Entity
    params: Any                     # the action's Plan
    playbook: str
    mode: str                       # enforce | dry-run
    created: float
    expires: float
    repeats: int = 0
    state: str = "active"
    priority: int = 0               # offset in the action's slot (playbook priority - 1)
    meter_id: int | None = None     # actions that use a meter (rate_limit)
    alert_id: str | None = None
    mac: str | None = None          # the device the alert was about
    dpids: tuple[int, ...] = ()     # switches its rules were sent to
    confirmed: tuple[int, ...] = () # switches that confirmed them (barrier)
    reason: str = ""
    ended: float | None = None
    device: str | None = None       # the device's name when it was decided

    @property
    def ttl(self) -> float:
        return self.expires - self.created

    @property
    def subject(self) -> str:
        """What escalation counts offences of: the device's MAC, or a remote prefix."""
        return REGISTRY.get(self.action).subject(self.entity)

    @property
    def key(self) -> str:
        return REGISTRY.get(self.action).key(self.entity, self.params)

    def response(self, now: float | None = None) -> Response:
        """The record as a `Response`; with `now`, created=now and ttl the time left
        (so compile_response gives the remaining hard_timeout)."""
        if now is None:
            return Response(self.id, self.action, self.entity, self.params, ttl=None, priority=self.priority,
                            created=self.created, playbook=self.playbook, reason=self.reason)
        left = self.expires - now
        if left <= 0:
            raise ResponseError(f"response {self.id} expired {-left:.1f} s ago")
        return Response(self.id, self.action, self.entity, self.params, ttl=min(left, rules.MAX_HARD_TIMEOUT),
                        priority=self.priority, created=now, playbook=self.playbook, reason=self.reason)

    def record(self) -> dict:
        """The stored record as plain JSON: the audit log keeps it, so `iotguard state repair`
        can rebuild a store that was lost or emptied."""
        return {"id": self.id, "action": self.action, "entity": codec.encode(self.entity),
                "params": codec.encode(self.params), "playbook": self.playbook, "mode": self.mode,
                "created": self.created, "expires": self.expires, "repeats": self.repeats,
                "priority": self.priority, "meter_id": self.meter_id, "alert_id": self.alert_id,
                "mac": self.mac, "reason": self.reason, "device": self.device}

    @classmethod
    def from_record(cls, rec: dict, state: str = "active") -> "Stored":
        """The inverse of `record` (ValueError naming what does not fit)."""
        definition = REGISTRY.get(rec["action"]) if rec.get("action") in REGISTRY else None
        if definition is None or definition.Plan is None:
            raise ValueError(f"unknown action {rec.get('action')!r}")
        r = cls(id=rec["id"], action=rec["action"], entity=codec.decode(Entity, rec["entity"], "entity"),
                params=codec.decode(definition.Plan, rec["params"], "params"), playbook=rec["playbook"],
                mode=rec["mode"], created=float(rec["created"]), expires=float(rec["expires"]),
                repeats=rec["repeats"], state=state, priority=rec["priority"], meter_id=rec["meter_id"],
                alert_id=rec["alert_id"], mac=rec["mac"], reason=rec["reason"], device=rec.get("device"))
        r.response()
        return r

    def view(self, now: float) -> dict:
        return {"id": self.id, "action": self.action, "mode": self.mode, "playbook": self.playbook,
                "entity": codec.encode(self.entity), "params": codec.encode(self.params),
                "mac": self.mac, "device": self.device,
                "summary": REGISTRY.get(self.action).describe(self.entity, self.params), "alert_id": self.alert_id, "created": self.created,
                "expires": self.expires, "ttl": round(self.ttl, 3),
                "remaining": max(0.0, round(self.expires - now, 3)), "repeats": self.repeats,
                "state": self.state, "priority": self.priority, "meter_id": self.meter_id,
                "dpids": list(self.dpids), "confirmed": list(self.confirmed), "reason": self.reason,
                "cookie": f"{rules.cookie(REGISTRY.get(self.action).kind, self.id):#018x}"}


def response_key(action: str, entity: Entity, params: Any) -> str:
    """Responses with the same key are one response (docs/playbooks.md, "one per")."""
    return REGISTRY.get(action).key(entity, params)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _load_json(text: Any, where: str) -> Any:
    if not isinstance(text, str):
        raise ValueError(f"{where}: not JSON text")
    return json.loads(text)


def _ints(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(_is_int(x) for x in v):
        raise ValueError(f"{where}: expected a list of int")
    return tuple(v)


# ---------------------------------------------------------------- the store

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY,
    action TEXT NOT NULL,
    entity TEXT NOT NULL,
    params TEXT NOT NULL,
    playbook TEXT NOT NULL,
    mode TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    ttl REAL NOT NULL,
    alert_id TEXT,
    mac TEXT,
    subject TEXT NOT NULL,
    key TEXT NOT NULL,
    repeats INTEGER NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    meter_id INTEGER,
    dpids TEXT NOT NULL,
    confirmed TEXT NOT NULL,
    reason TEXT NOT NULL,
    ended REAL,
    device TEXT
);
CREATE INDEX IF NOT EXISTS responses_state ON responses (state, expires);
CREATE INDEX IF NOT EXISTS responses_key ON responses (key, mode, state);
CREATE INDEX IF NOT EXISTS responses_offences ON responses (subject, action, mode, created);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_COLUMNS = ("id", "action", "entity", "params", "playbook", "mode", "created", "expires", "ttl",
            "alert_id", "mac", "subject", "key", "repeats", "state", "priority", "meter_id", "dpids",
            "confirmed", "reason", "ended", "device")


class ResponseStore:
    """Responses in SQLite (`<state_dir>/responses.sqlite`), JSON columns only.

    Rows are validated when read: a row that does not make a valid `Response`
    is reported once (logged, and kept in `problems`) and skipped, never executed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if self.path != ":memory:" and not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.executescript(_SCHEMA)
        self._migrate()
        self.problems: list[str] = []
        self._reported: set[Any] = set()

    def _migrate(self) -> None:
        """Bring a store written by an older iotguard to SCHEMA_VERSION, in place.

        0 -> 1: the `device` column (the device's name, for the responses list);
        rows from before it have none."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ResponseError(f"{self.path}: written by a newer iotguard (schema {version}, "
                                f"this one reads up to {SCHEMA_VERSION})")
        if version == SCHEMA_VERSION:
            return
        with self._tx():
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(responses)")}
            if "device" not in columns:
                self.db.execute("ALTER TABLE responses ADD COLUMN device TEXT")
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------ ids
    def next_id(self) -> int:
        """A new response id: persisted, increasing, never reused, 1..2**40-1."""
        with self._tx():
            row = self.db.execute("SELECT value FROM meta WHERE name = 'next_id'").fetchone()
            top = self.db.execute("SELECT max(id) FROM responses").fetchone()[0]
            n = max(row[0] if row and _is_int(row[0]) else 1, (top + 1) if _is_int(top) else 1)
            if n > rules.COOKIE_ID_MASK:
                raise ResponseError(f"response ids exhausted ({rules.COOKIE_ID_MASK})")
            self.db.execute("INSERT INTO meta (name, value) VALUES ('next_id', ?) "
                            "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (n + 1,))
        return n

    def _tx(self):
        db = self.db

        class _T:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *rest) -> None:
                if exc_type is None:
                    db.execute("COMMIT")
                    return
                try:        # sqlite may have rolled back already (a full disk): keep the real error
                    db.execute("ROLLBACK")
                except sqlite3.OperationalError:
                    pass
        return _T()

    # ------------------------------------------------------------ rows
    def put(self, r: Stored) -> None:
        """Insert or replace one response (validated first: a bad record is never stored)."""
        r.response()
        row = (r.id, r.action, codec.dumps(r.entity), codec.dumps(r.params),
               r.playbook, r.mode, float(r.created), float(r.expires), float(r.ttl), r.alert_id, r.mac,
               r.subject, r.key, r.repeats, r.state, r.priority, r.meter_id, json.dumps(list(r.dpids)),
               json.dumps(list(r.confirmed)), r.reason, r.ended, r.device)
        with self._tx():
            self.db.execute(f"INSERT OR REPLACE INTO responses ({', '.join(_COLUMNS)}) "
                            f"VALUES ({', '.join('?' * len(_COLUMNS))})", row)

    def mark(self, rid: int, state: str, when: float) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
        with self._tx():
            cur = self.db.execute("UPDATE responses SET state = ?, ended = ? WHERE id = ?",
                                  (state, when, rid))
        if cur.rowcount != 1:
            raise KeyError(f"no response with id {rid}")

    def get(self, rid: int) -> Stored | None:
        """The response with this id, None if there is none or its row is invalid (reported)."""
        rows = self._select("WHERE id = ?", (rid,))
        return rows[0] if rows else None

    def active(self, now: float | None = None) -> list[Stored]:
        """Active responses; with `now`, only those not yet expired.  By id."""
        if now is None:
            return self._select("WHERE state = 'active' ORDER BY id")
        return self._select("WHERE state = 'active' AND expires > ? ORDER BY id", (now,))

    def due(self, now: float) -> list[Stored]:
        """Active responses whose ttl has run out."""
        return self._select("WHERE state = 'active' AND expires <= ? ORDER BY id", (now,))

    def lingering(self, now: float) -> list[Stored]:
        """Ended responses whose switch backstop (hard_timeout) may still be running."""
        return self._select("WHERE state IN ('released', 'expired', 'failed') AND expires > ? ORDER BY id",
                            (now,))

    def pending(self) -> list[Stored]:
        """Responses decided by an approve-mode playbook, waiting for an operator.  By id."""
        return self._select("WHERE state = 'pending' ORDER BY id")

    def by_key(self, key: str, mode: str, now: float) -> Stored | None:
        rows = self._select("WHERE key = ? AND mode = ? AND state = 'active' AND expires > ? "
                            "ORDER BY id", (key, mode, now))
        return next((r for r in rows if r.key == key), None)

    def meters_in_use(self) -> set[int]:
        return {r.meter_id for r in self.active() + self.pending() if r.meter_id is not None}

    def offences(self, subject: str, action: str, since: float, mode: str = "enforce") -> int:
        """Responses with this action for this subject (a device's MAC, or block_ip's
        prefix) created at or after `since`, in any state: the escalation history."""
        return self.db.execute("SELECT count(*) FROM responses WHERE subject = ? AND action = ? "
                               "AND mode = ? AND created >= ? AND state NOT IN ('pending', 'denied')",
                               (subject, action, mode, since)).fetchone()[0]

    def _select(self, where: str, args: tuple = ()) -> list[Stored]:
        cur = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM responses {where}", args)
        out = []
        for row in cur.fetchall():
            try:
                out.append(self._decode(dict(zip(_COLUMNS, row))))
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                self._report(row[0], f"response row id={row[0]!r} is invalid and is skipped: {e}")
        return out

    def _report(self, rid: Any, message: str) -> None:
        if rid in self._reported:
            return
        self._reported.add(rid)
        self.problems.append(message)
        LOG.error("%s: %s", self.path, message)

    @staticmethod
    def _decode(row: dict) -> Stored:
        rid, action, mode, state = row["id"], row["action"], row["mode"], row["state"]
        if not _is_int(rid) or not 0 < rid <= rules.COOKIE_ID_MASK:
            raise ValueError(f"id {rid!r} outside 1..{rules.COOKIE_ID_MASK}")
        definition = REGISTRY.get(action) if action in REGISTRY else None
        if definition is None or definition.Plan is None:
            raise ValueError(f"unknown action {action!r}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        for name in ("created", "expires"):
            v = row[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} {v!r} is not a time")
        if row["expires"] <= row["created"]:
            raise ValueError("expires is not after created")
        for name in ("repeats", "priority"):
            if not _is_int(row[name]) or row[name] < 0:
                raise ValueError(f"{name} {row[name]!r} is not a count")
        meter = row["meter_id"]
        if meter is not None and not (_is_int(meter) and rules.METER_RESPONSE_MIN <= meter
                                      <= rules.METER_RESPONSE_MAX):
            raise ValueError(f"meter_id {meter!r} outside the response meters")
        if definition.uses_meter and meter is None:
            raise ValueError(f"{action} without a meter_id")
        entity = codec.decode(Entity, _load_json(row["entity"], "entity"), "entity")
        params = codec.decode(definition.Plan, _load_json(row["params"], "params"), "params")
        dpids = _ints(_load_json(row["dpids"], "dpids"), "dpids")
        confirmed = _ints(_load_json(row["confirmed"], "confirmed"), "confirmed")
        for name in ("playbook", "reason"):
            if not isinstance(row[name], str):
                raise ValueError(f"{name} is not text")
        for name in ("alert_id", "mac", "device"):
            if row[name] is not None and not isinstance(row[name], str):
                raise ValueError(f"{name} is not text")
        ended = row["ended"]
        if ended is not None and (isinstance(ended, bool) or not isinstance(ended, (int, float))):
            raise ValueError(f"ended {ended!r} is not a time")
        r = Stored(id=rid, action=action, entity=entity, params=params, playbook=row["playbook"], mode=mode,
                   created=float(row["created"]), expires=float(row["expires"]), repeats=row["repeats"],
                   state=state, priority=row["priority"], meter_id=meter, alert_id=row["alert_id"],
                   mac=row["mac"], dpids=dpids, confirmed=confirmed, reason=row["reason"], ended=ended,
                   device=row["device"])
        r.response()                      # Response's own checks (params, entity, priority)
        return r


# ---------------------------------------------------------------- the engine


@dataclass
class _Group:
    """One response key's candidates, in playbook order (the first wins the params)."""

    mode: str
    key: str
    entity: Entity
    params: Any
    force: bool = False
    members: list[tuple[pb.Playbook, pb.Action]] = field(default_factory=list)


class Engine:
    """Decides responses for alerts and manages their lifecycle (module docstring).

    Inputs from the controller are callables, so the engine sees the current
    topology and inventory without owning them:

    - `gateway() -> (ip, mac | None) | None`: the gateway block_lateral lets through;
    - `hosts(name_or_ip) -> (ip, mac | None, Location | None) | None`: a named host
      (allow lists, redirect and mirror targets); `mac` is the next hop toward it;
    - `locate(mac) -> Location | None`: a device's edge;
    - `switches() -> iterable of dpids`: the connected switches;
    - `dns_servers`: addresses a quarantine's `dns: true` lets through (or a callable
      giving them, when they are learned at run time).
    """

    def __init__(self, playbooks: Sequence[pb.Playbook], store: ResponseStore, audit: AuditLog, *,
                 internal_subnets: Sequence[str] = (), gateway: Callable[[], Any] = lambda: None,
                 dns_servers: Sequence[str] | Callable[[], Sequence[str]] = (),
                 hosts: HostLookup = lambda name: None,
                 locate: Callable[[str], Location | None] = lambda mac: None,
                 switches: Callable[[], Iterable[int]] = lambda: (), dry_run: bool = False,
                 protection: Protection | None = None, approve_within: float = APPROVE_WITHIN) -> None:
        self.playbooks = list(playbooks)
        self.store = store
        self.audit = audit
        self.write_errors = 0     # records reconcile could not write (a full disk); its rules went out
        self.internal_subnets = tuple(internal_subnets)
        self.gateway = gateway
        self.dns_servers = dns_servers if callable(dns_servers) else tuple(dns_servers)
        self.hosts = hosts
        self.locate = locate
        self.switches = switches
        self.dry_run = dry_run
        self.approve_within = approve_within
        # (alert id, response key) -> when an operator released it: that alert, handed over
        # again while it stays open, must not put the response back; a new alert, or its
        # story reopening later (Alert.reopened), may.  Bounded; not persisted.
        self._released: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.protection = protection if protection is not None else Protection(
            internal=Subnets(self.internal_subnets), gateway=gateway, dns_servers=self._dns)

    def _dns(self) -> tuple[str, ...]:
        return tuple(self.dns_servers() if callable(self.dns_servers) else self.dns_servers)

    def set_playbooks(self, playbooks: Sequence[pb.Playbook]) -> None:
        """A reloaded set; active responses are kept as they are."""
        self.playbooks = list(playbooks)

    # ------------------------------------------------------------ alerts
    def on_alert(self, alert: Alert, device: Device | None, now: float,
                 playbooks: Sequence[pb.Playbook] | None = None, *, force: bool = False) -> Applied:
        """Decide, store and audit the responses `alert` about `device` calls for.

        `device` is None for an outbreak handed over as a whole (its playbooks then
        match without device selectors, and device actions fail: call once per
        device of `alert.devices` to act on them).  `playbooks` replaces the
        loaded set for this call (a manual response is a one-action playbook).
        The audit log and the notify jobs get `alert.to_dict()`.

        A response about a protected device or address (controller/response/protection.py)
        is refused and audited as refused; `force` (an operator's explicit request)
        overrides the protection of devices and internal prefixes, and is audited."""
        dev = _device(device)
        groups: dict[tuple[str, str], _Group] = {}
        jobs: dict[str, dict] = {}
        summary: list[Decision] = []
        messages: Messages = []
        for book in pb.matching(self.playbooks if playbooks is None else playbooks, alert, device):
            mode = "dry-run" if book.dry_run or self.dry_run else "approve" if book.mode == "approve" else "enforce"
            for act in book.do:
                action = REGISTRY.get(act.kind)
                if action.Plan is None:
                    self._notify(jobs, book, act, mode, alert)
                    continue
                try:
                    entity, params = self._resolve(act, alert, dev)
                except NoRemote as e:
                    # The alert names nothing to block (its address is one other devices
                    # use, or there are several): a decision not to act, not a failure.
                    self.audit.write("dry-run" if mode == "dry-run" else "decision", time=now, alert=alert,
                                     playbook=book.name, action=act.kind, mode=mode, outcome="skipped",
                                     detail={"why": str(e)})
                    summary.append(Decision(action=act.kind, playbook=book.name, mode=mode,
                                            outcome="skipped", error=str(e)))
                    continue
                except ResponseError as e:
                    self._audit_failed(now, alert, book.name, act.kind, mode, str(e))
                    summary.append(Decision(action=act.kind, playbook=book.name, mode=mode,
                                            outcome="failed", error=str(e)))
                    continue
                reason = refusal(self.protection, entity, dev, force=force)
                if reason is not None:
                    LOG.warning("refused %s of playbook %s: %s", act.kind, book.name, reason)
                    self.audit.write("refused", time=now, alert=alert, playbook=book.name, action=act.kind,
                                     mode=mode, outcome="refused", error=reason)
                    summary.append(Decision(action=act.kind, playbook=book.name, mode=mode,
                                            outcome="refused", error=reason))
                    continue
                key = response_key(act.kind, entity, params)
                group = groups.setdefault((mode, key), _Group(mode, key, entity, params, force))
                group.members.append((book, act))
        for group in groups.values():
            out, decision = self._apply(group, alert, dev, now)
            messages += out
            summary.append(decision)
        notify = list(jobs.values())
        for job in notify:
            job["actions"] = [d.to_dict() for d in summary]
            self.audit.write("dry-run" if job["mode"] == "dry-run" else "decision", time=now, alert=alert,
                             playbook=job["playbook"], action=job["action"], mode=job["mode"],
                             outcome="queued", detail={"destination": job["destination"]})
        return Applied(messages, notify, summary)

    def _notify(self, jobs: dict[str, dict], book: pb.Playbook, act: pb.Action, mode: str,
                alert: Alert) -> None:
        for job in REGISTRY.get(act.kind).jobs(act.params):  # type: ignore[attr-defined]
            dest = job["destination"]
            seen = jobs.get(dest)
            if seen is None:
                jobs[dest] = {**job, "action": act.kind, "playbook": book.name, "mode": mode,
                              "alert": alert.to_dict()}
            elif seen["mode"] == "dry-run" and mode == "enforce":
                seen["mode"] = "enforce"           # an enforced notify is never demoted to dry-run

    def _resolve(self, act: pb.Action, alert: Mapping[str, Any],
                 dev: dict) -> tuple[Entity, Any]:
        """The playbook action as an entity and its action's Plan; ResponseError if impossible."""
        action = REGISTRY.get(act.kind)
        ctx = Context(host=self._host, gateway=self.gateway, internal_subnets=self.internal_subnets,
                      dns_servers=lambda: tuple(self.dns_servers() if callable(self.dns_servers)
                                                else self.dns_servers),
                      alert_remote=lambda: _alert_remote(alert))
        mac = dev.get("mac") if action.needs_device else None
        ip = next((a for a in dev.get("ips") or () if is_ipv4(a)), None) if mac else None
        entity = action.entity(act.params, mac, ip, ctx)
        return entity, action.resolve(act.params, ctx)

    def _host(self, ref: str) -> tuple[str, str | None, Location | None]:
        found = self.hosts(ref)
        if found is not None:
            return found
        if is_ipv4(ref):
            return ref, None, None
        raise ResponseError(f"unknown host {ref!r} (not in the device inventory, not an IPv4 address)")

    def _apply(self, g: _Group, alert: dict, dev: dict, now: float) -> tuple[Messages, Decision]:
        first_book, first_act = g.members[0]
        action = REGISTRY.get(first_act.kind)
        subject = action.subject(g.entity)
        mode = "enforce" if g.mode == "approve" else g.mode     # what it becomes once approved
        existing = self.store.by_key(g.key, mode, now)
        ttl, repeats = 0, 0
        for _book, act in g.members:
            n = 0
            if act.escalate is not None:
                since = now - act.escalate.within
                n = self.store.offences(subject, act.kind, since, mode)
                if existing is not None and existing.created >= since:
                    n -= 1          # re-applying the active response is not a new offence
            t = act.ttl_for(n) or pb.DEFAULT_TTL
            if t > ttl:
                ttl, repeats = t, n
        detail: dict[str, Any] = {"ttl": ttl, "repeats": repeats,
                                  "playbooks": [b.name for b, _ in g.members]}
        if g.force:
            detail["force"] = True
        if ttl > rules.MAX_HARD_TIMEOUT:
            detail["capped"] = f"ttl {ttl} s capped at {rules.MAX_HARD_TIMEOUT} s (OpenFlow hard_timeout)"
            ttl = rules.MAX_HARD_TIMEOUT
        event = "dry-run" if g.mode == "dry-run" else "decision"
        decided = functools.partial(Decision, action=first_act.kind, playbook=first_book.name, mode=g.mode,
                                    ttl=ttl)
        if g.mode == "approve":
            waiting = next((p for p in self.store.pending() if p.key == g.key), None)
            if existing is not None or waiting is not None:   # never extended without an operator
                known = existing or waiting
                self.audit.write("pending", time=now, alert=alert, playbook=first_book.name, action=first_act.kind,
                                 mode=mode, response_id=known.id, outcome="unchanged",  # type: ignore[union-attr]
                                 detail={**detail, "state": known.state})  # type: ignore[union-attr]
                return [], decided(response_id=known.id, outcome="unchanged")  # type: ignore[union-attr]
        if existing is not None:
            if now + ttl - existing.expires < REFRESH_FRACTION * ttl:
                # An open alert is handed to the playbooks every few seconds; re-sending
                # the rules (a flow-mod per rule and switch, an audit line with all of
                # them) each time would only move the expiry by those seconds.
                self.audit.write(event, time=now, alert=alert, playbook=first_book.name,
                                 action=first_act.kind, mode=g.mode, response_id=existing.id,
                                 outcome="unchanged",
                                 detail={**detail, "expires": existing.expires,
                                         "refreshed_after": existing.expires - (1 - REFRESH_FRACTION) * ttl})
                return [], decided(response_id=existing.id, outcome="unchanged")
            r = replace(existing, expires=now + ttl)
            out = self._compile(r, now, refresh=True) if g.mode == "enforce" else []
            r = replace(r, dpids=tuple(sorted(set(r.dpids) | {d for d, _ in out})))
            self.store.put(r)
            self.audit.write(event, time=now, alert=alert, playbook=first_book.name, action=first_act.kind,
                             mode=g.mode, response_id=r.id, rules=out, outcome="refreshed",
                             detail={**detail, "expires": r.expires, "previous_expires": existing.expires,
                                     "record": r.record()})
            return out, decided(response_id=r.id, outcome="refreshed")
        released = self._released.get((alert.id, g.key))
        if g.mode != "dry-run" and released is not None and alert.reopened <= released:
            self.audit.write(event, time=now, alert=alert, playbook=first_book.name, action=first_act.kind,
                             mode=g.mode, outcome="unchanged",
                             detail={**detail, "why": "an operator released this alert's response; "
                                                      "only a new alert, or its story coming back "
                                                      "after it closed, applies it again"})
            return [], decided(outcome="unchanged")
        try:
            meter = self._meter() if action.uses_meter else None
            r = Stored(id=self.store.next_id(), action=first_act.kind, entity=g.entity, params=g.params,
                       playbook=first_book.name, mode=mode, created=now, expires=now + ttl, repeats=repeats,
                       priority=first_book.priority - 1, meter_id=meter, alert_id=alert.id,
                       mac=dev.get("mac"), reason=alert.explanation or "", device=_text(dev.get("name")))
            r.response()
            out = self._compile(r, now)
        except ResponseError as e:
            self._audit_failed(now, alert, first_book.name, first_act.kind, g.mode, str(e), detail)
            return [], decided(outcome="failed", error=str(e))
        if g.mode == "approve":
            r = replace(r, state="pending")
            self.store.put(r)
            self.audit.write("pending", time=now, alert=alert, playbook=first_book.name, action=first_act.kind,
                             mode=mode, response_id=r.id, rules=out, outcome="awaiting-approval",
                             detail={**detail, "approve_by": now + self.approve_within})
            LOG.warning("response %d (%s of %s) awaits approval until %.0f: iotguard approve %d", r.id,
                        r.action, r.playbook, now + self.approve_within, r.id)
            return [], decided(response_id=r.id, outcome="awaiting-approval")
        if g.mode == "dry-run":
            self.store.put(r)
            self.audit.write(event, time=now, alert=alert, playbook=first_book.name, action=first_act.kind,
                             mode=g.mode, response_id=r.id, rules=out, outcome="dry-run",
                             detail={**detail, "expires": r.expires})
            return [], decided(response_id=r.id, outcome="dry-run")
        r = replace(r, dpids=tuple(sorted({d for d, _ in out})))
        self.store.put(r)
        outcome = "sent" if out else "pending"   # pending: no switch yet; reconcile installs it
        self.audit.write(event, time=now, alert=alert, playbook=first_book.name, action=first_act.kind,
                         mode=g.mode, response_id=r.id, rules=out, outcome=outcome,
                         detail={**detail, "expires": r.expires, "record": r.record()})
        return out, decided(response_id=r.id, outcome=outcome)

    def _audit_failed(self, now: float, alert: dict | None, playbook: str, action: str, mode: str,
                      error: str, detail: dict | None = None) -> None:
        LOG.error("response %s of playbook %s failed: %s", action, playbook, error)
        self.audit.write("failed", time=now, alert=alert, playbook=playbook, action=action, mode=mode,
                         outcome="failed", error=error, detail=detail)

    def _meter(self) -> int:
        used = self.store.meters_in_use()
        for m in range(rules.METER_RESPONSE_MIN, rules.METER_RESPONSE_MAX + 1):
            if m not in used:
                return m
        raise ResponseError("no free response meter id")

    def _connected(self) -> set[int]:
        return set(self.switches())

    def _compile(self, r: Stored, now: float, *, only: int | None = None,
                 refresh: bool = False) -> Messages:
        """The rules of `r` with the time left as hard_timeout, for connected switches
        (or `only` one).  A rate_limit meter is deleted before it is added (a restarted
        controller may find it on the switch); a refresh leaves it alone: its params stay
        those of the first application, a meter has no timeout, and a meter-mod refills its
        bucket, which let a full burst of a throttled flood through at every refresh."""
        connected = self._connected()
        edge = self.locate(r.entity.mac) if r.entity.mac else None
        out: Messages = []
        for dpid, spec in compile_response(r.response(now), edge, sorted(connected),
                                           meter_id=r.meter_id):
            if dpid not in connected or (only is not None and dpid != only):
                continue
            if isinstance(spec, MeterSpec):
                if refresh:
                    continue
                out.append((dpid, rules.delete_meter(spec.meter_id)))
            out.append((dpid, spec))
        return out

    def _removal(self, r: Stored, dpids: Iterable[int] | None = None) -> Messages:
        if r.mode != "enforce":
            return []
        targets = set(r.dpids if dpids is None else dpids) & self._connected()
        return release_response(r.response(), targets, meter_id=r.meter_id)

    # ------------------------------------------------------------ lifecycle
    def _get(self, rid: int, state: str, wrong: str) -> Stored:
        """The response `rid` in `state`; KeyError (the API's 404) naming why not."""
        if isinstance(rid, bool) or not isinstance(rid, int) or not 0 < rid <= rules.COOKIE_ID_MASK:
            raise KeyError(f"no response with id {rid}")
        r = self.store.get(rid)
        if r is None:
            raise KeyError(f"no response with id {rid}")
        if r.state != state:
            raise KeyError(f"response {rid} {wrong} (it {'was' if state == 'active' else 'is'} {r.state})")
        return r

    def _get_active(self, rid: int) -> Stored:
        return self._get(rid, "active", "is not active")

    def release(self, rid: int, now: float, reason: str = "") -> Messages:
        """End a response now: delete its rules by cookie (and its meter)."""
        r = self._get_active(rid)
        out = self._removal(r)
        self.store.mark(rid, "released", now)
        if r.alert_id:
            self._released[(r.alert_id, r.key)] = now
            self._released.move_to_end((r.alert_id, r.key))
            while len(self._released) > MAX_RELEASED:
                self._released.popitem(last=False)
        self.audit.write("released", time=now, playbook=r.playbook, action=r.action, mode=r.mode,
                         response_id=rid, rules=out, outcome="released", detail={"reason": reason})
        return out

    # ------------------------------------------------------------ approval
    def _get_pending(self, rid: int) -> Stored:
        return self._get(rid, "pending", "is not awaiting approval")

    def approve(self, rid: int, by: str, now: float) -> Messages:
        """An operator approves a pending response: its ttl starts now and its rules go out."""
        r = self._get_pending(rid)
        if now >= r.created + self.approve_within:
            self._deny(r, "the approval window ended", "timeout", now)
            raise KeyError(f"response {rid} was not approved within {self.approve_within:.0f} s; it is denied")
        r = replace(r, state="active", created=now, expires=now + r.ttl)
        try:
            out = self._compile(r, now)
        except ResponseError as e:
            self.store.mark(r.id, "failed", now)
            self._audit_failed(now, None, r.playbook, r.action, r.mode, str(e), {"approved_by": by})
            raise
        r = replace(r, dpids=tuple(sorted({d for d, _ in out})))
        self.store.put(r)
        self.audit.write("approved", time=now, playbook=r.playbook, action=r.action, mode=r.mode,
                         response_id=r.id, rules=out, outcome="sent" if out else "pending",
                         detail={"by": by, "expires": r.expires, "record": r.record()})
        return out

    def deny(self, rid: int, by: str, now: float, reason: str = "") -> None:
        """An operator refuses a pending response: nothing is installed, ever."""
        self._deny(self._get_pending(rid), reason, by, now)

    def _deny(self, r: Stored, reason: str, by: str, now: float) -> None:
        self.store.mark(r.id, "denied", now)
        self.audit.write("denied", time=now, playbook=r.playbook, action=r.action, mode=r.mode,
                         response_id=r.id, outcome="denied", detail={"by": by, "reason": reason})

    def pending_view(self, now: float) -> list[dict]:
        """Responses awaiting approval, with the time left to approve them."""
        return [{**r.view(now), "approve_by": r.created + self.approve_within,
                 "approve_within": max(0.0, round(r.created + self.approve_within - now, 3))}
                for r in self.store.pending()]

    def expire(self, now: float) -> Messages:
        """End every active response whose ttl has run out (the switch's hard_timeout is the
        backstop), and deny every pending one whose approval window has ended."""
        for r in self.store.pending():
            if now >= r.created + self.approve_within:
                self._deny(r, f"not approved within {self.approve_within:.0f} s", "timeout", now)
        out: Messages = []
        for r in self.store.due(now):
            msgs = self._removal(r)
            self.store.mark(r.id, "expired", now)
            self.audit.write("expired", time=now, playbook=r.playbook, action=r.action, mode=r.mode,
                             response_id=r.id, rules=msgs, outcome="expired",
                             detail={"expires": r.expires})
            out += msgs
        return out

    def removed_by_switch(self, rid: int, dpid: int, now: float, slack: float = 1.0) -> Messages:
        """A switch removed one of `rid`'s rules.  When the response is due (within `slack`
        s: the hard_timeout is the ttl rounded up), the switch's backstop fired first: the
        response expires now, audited as such, and its rules elsewhere go too.  Anything
        else (a release's own delete, a response ended already) changes nothing."""
        r = self.store.get(rid)
        if r is None or r.state != "active" or r.mode != "enforce" or now < r.expires - slack:
            return []
        msgs = self._removal(r)
        self.store.mark(r.id, "expired", now)
        self.audit.write("expired", time=now, playbook=r.playbook, action=r.action, mode=r.mode,
                         response_id=r.id, rules=msgs, outcome="expired",
                         detail={"expires": r.expires, "by": "switch hard_timeout", "dpid": dpid})
        return msgs

    def reconcile(self, dpid: int, now: float) -> Messages:
        """A switch (re)connected: expire what is due, remove from it what ended
        while it may still hold it, and re-install there every active enforced
        response that belongs on it, with the time left.  Deletes are by exact
        cookie: foreign rules, and other responses, are never touched.

        The rules go out even when the state disk refuses the records (full): a switch
        that reconnects must get its active responses back; the write is logged and counted."""
        try:
            out = self.expire(now)
        except (OSError, sqlite3.Error) as e:      # retried at the next expiry; hard_timeout is the backstop
            self._write_failed("expire", e)
            out = []
        for r in self.store.lingering(now):
            if r.mode != "enforce" or dpid not in r.dpids:
                continue
            msgs = release_response(r.response(), [dpid], meter_id=r.meter_id)
            self._best_effort(self.audit.write, "reconciled", time=now, playbook=r.playbook, action=r.action,
                              mode=r.mode, response_id=r.id, rules=msgs, outcome="removed",
                              detail={"dpid": dpid, "state": r.state})
            out += msgs
        for r in self.store.active(now):
            if r.mode != "enforce":
                continue
            try:
                msgs = self._compile(r, now, only=dpid)
            except ResponseError as e:
                out += self._fail(r, dpid, str(e), now)
                continue
            if not msgs:
                continue
            self._best_effort(self.store.put, replace(r, dpids=tuple(sorted(set(r.dpids) | {dpid})),
                                                     confirmed=tuple(d for d in r.confirmed if d != dpid)))
            self._best_effort(self.audit.write, "reconciled", time=now, playbook=r.playbook, action=r.action,
                              mode=r.mode, response_id=r.id, rules=msgs, outcome="sent",
                              detail={"dpid": dpid, "remaining": round(r.expires - now, 3)})
            out += msgs
        return out

    def _write_failed(self, what: str, e: BaseException) -> None:
        self.write_errors += 1
        LOG.error("reconcile: could not %s (the rules are sent anyway): %s", what, e)

    def _best_effort(self, write, *args, **kwargs) -> None:
        try:
            write(*args, **kwargs)
        except (OSError, sqlite3.Error) as e:
            self._write_failed(f"write {getattr(write, '__name__', 'a record')}", e)

    # ------------------------------------------------------------ confirmation
    def response_id(self, spec: Spec) -> int | None:
        """The response a message the engine emitted belongs to (None: not a response's)."""
        if isinstance(spec, FlowSpec):
            return rules.cookie_id(spec.cookie) if rules.is_response_cookie(spec.cookie) else None
        for r in self.store.active():
            if r.meter_id == spec.meter_id:
                return r.id
        return None

    def installed(self, rid: int, dpid: int, now: float) -> None:
        """The barrier after `rid`'s rules on `dpid` came back: they are in place."""
        r = self.store.get(rid)
        if r is None:
            raise KeyError(f"no response with id {rid}")
        if r.state == "active":
            self.store.put(replace(r, confirmed=tuple(sorted(set(r.confirmed) | {dpid}))))
        self.audit.write("installed", time=now, playbook=r.playbook, action=r.action, mode=r.mode,
                         response_id=rid, outcome="installed" if r.state == "active" else r.state,
                         detail={"dpid": dpid})

    def failed(self, rid: int, dpid: int, error: str, now: float) -> Messages:
        """A switch refused one of `rid`'s messages (e.g. OFPFMFC_TABLE_FULL): mark it
        failed, audit and log it, and return the messages removing the rest of it."""
        r = self.store.get(rid)
        if r is None:
            raise KeyError(f"no response with id {rid}")
        return self._fail(r, dpid, error, now)

    def _fail(self, r: Stored, dpid: int, error: str, now: float) -> Messages:
        out = self._removal(r, set(r.dpids) | {dpid}) if r.state == "active" else []
        if r.state == "active":
            self.store.mark(r.id, "failed", now)
        LOG.error("response %d (%s, playbook %s) failed on switch %#x: %s", r.id, r.action,
                  r.playbook, dpid, error)
        self.audit.write("failed", time=now, playbook=r.playbook, action=r.action, mode=r.mode,
                         response_id=r.id, rules=out, outcome="failed", error=error,
                         detail={"dpid": dpid, "state_before": r.state})
        return out

    def confirm(self, rid: int, dpid: int, ok: bool, error: str | None, now: float) -> Messages:
        """`installed` or `failed` in one call."""
        if ok:
            self.installed(rid, dpid, now)
            return []
        return self.failed(rid, dpid, error or "unknown error", now)

    # ------------------------------------------------------------ views
    def active_view(self, now: float) -> list[dict]:
        """Active, unexpired responses with their remaining ttl (GET /api/v1/responses)."""
        return [r.view(now) for r in self.store.active(now)]


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _device(device: Device | None) -> dict:
    """The device as _resolve and _apply read it ({name, mac, ips, tags}; {} for none).
    The record itself (controller.config.Device) already normalised the MAC."""
    return device.to_dict() if device is not None else {}


class NoRemote(ResponseError):
    """block_ip `target: alert` on an alert that names no address: skipped, not failed."""


def _alert_remote(alert: Alert) -> str:
    """block_ip `target: alert`: the alert's top remote address, `alert.remote`, or
    the first `remote` of its `features` entries."""
    value = alert.remote_address()
    if not isinstance(value, str):
        raise NoRemote("block_ip target: alert, but the alert names no remote address to block "
                       "(alert['remote'] is empty: the address is one that devices used while learning, "
                       "or the alert is about several)")
    return value
