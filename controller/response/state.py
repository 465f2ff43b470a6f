"""State that never lies: the response store checked against the audit log.

The store (`responses.sqlite`) says which responses are active; the audit log
(`audit.jsonl`, append-only) says what was decided and what ended.  If the store
is damaged, or emptied (deleted, restored from an old backup), while the audit
log shows responses that were never released and have not run out, starting
would silently forget active quarantines.  So the controller refuses to start
and names the files; `iotguard state check` shows the difference and
`iotguard state repair` rebuilds the missing active responses from the records
the audit log keeps (`detail.record`, written with every decision).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Iterator

from controller.response.engine import ResponseStore, Stored

STORE = "responses.sqlite"
AUDIT = "audit.jsonl"
_CREATED = ("decision", "approved", "reconciled")
_ENDED = ("released", "expired", "failed", "denied")


class StateError(RuntimeError):
    """The state directory cannot be trusted as it is; the message says how to recover."""


@dataclass
class Report:
    state_dir: str
    store_problem: str | None = None                        # the store cannot be read at all
    active_in_store: list[int] = field(default_factory=list)
    missing: dict[int, dict | None] = field(default_factory=dict)   # id -> record (None: not rebuildable)
    bad_rows: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.store_problem is None and not self.missing

    def lines(self) -> list[str]:
        store, audit = os.path.join(self.state_dir, STORE), os.path.join(self.state_dir, AUDIT)
        if self.store_problem is not None:
            return [f"{store}: {self.store_problem}"]
        out = [f"{store}: {len(self.active_in_store)} active response(s)"]
        out += [f"{store}: {p}" for p in self.bad_rows]
        for rid, rec in sorted(self.missing.items()):
            what = (f"{rec['action']} of {rec.get('device') or rec.get('mac') or rec['entity'].get('prefix')}, "
                    f"until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(rec['expires']))}"
                    if rec else "its record is not in the audit log (written by an older iotguard)")
            out.append(f"{audit}: response {rid} is active ({what}) but the store lacks it")
        return out


def _audit_records(path: str) -> Iterator[dict]:
    """Every record of the audit log, oldest first: its rotated copies (.N .. .1), then the live file."""
    rotated = sorted((int(n.rsplit(".", 1)[1]), n) for n in os.listdir(os.path.dirname(path) or ".")
                     if n.startswith(os.path.basename(path) + ".") and n.rsplit(".", 1)[1].isdigit())
    for _, name in reversed(rotated):
        yield from _file_records(os.path.join(os.path.dirname(path), name))
    yield from _file_records(path)


def _file_records(path: str) -> Iterator[dict]:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            try:
                rec = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict):
                yield rec


def audit_active(path: str, now: float) -> dict[int, dict | None]:
    """Responses the audit log shows as enforced, never ended and not yet expired."""
    live: dict[int, dict | None] = {}
    for rec in _audit_records(path):
        rid = rec.get("response_id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            continue
        event, detail = rec.get("event"), rec.get("detail") or {}
        if event in _ENDED:
            live.pop(rid, None)
        elif event in _CREATED and rec.get("mode") == "enforce" and rec.get("outcome") in ("sent", "pending",
                                                                                          "refreshed"):
            record = detail.get("record") if isinstance(detail, dict) else None
            live[rid] = record if isinstance(record, dict) else live.get(rid)
            if live[rid] is None and isinstance(detail, dict) and isinstance(detail.get("expires"), (int, float)):
                live[rid] = None if detail["expires"] > now else live.pop(rid, None)
    return {rid: rec for rid, rec in live.items()
            if rec is None or (isinstance(rec.get("expires"), (int, float)) and rec["expires"] > now)}


def check(state_dir: str, now: float | None = None) -> Report:
    now = time.time() if now is None else now
    report = Report(state_dir)
    path = os.path.join(state_dir, STORE)
    try:
        store = ResponseStore(path)
    except (sqlite3.DatabaseError, ValueError) as e:
        report.store_problem = (f"cannot be read as a response store ({e}); move it aside and run "
                                f"'iotguard state repair --state-dir {state_dir}' to rebuild the active "
                                "responses from the audit log")
        return report
    try:
        try:
            active = store.active()
        except sqlite3.DatabaseError as e:
            report.store_problem = f"is damaged ({e}); move it aside and run 'iotguard state repair'"
            return report
        report.active_in_store = [r.id for r in active]
        report.bad_rows = list(store.problems)
        for rid, rec in audit_active(os.path.join(state_dir, AUDIT), now).items():
            if store.get(rid) is None:      # a row the store has, in any state, is not "forgotten"
                report.missing[rid] = rec
    finally:
        store.close()
    return report


def guard(state_dir: str, now: float | None = None) -> None:
    """Refuse to start on a store that would forget active responses (StateError says how to recover)."""
    report = check(state_dir, now)
    if report.ok:
        return
    raise StateError("the response state cannot be trusted; not starting:\n  " + "\n  ".join(report.lines())
                     + f"\nSee 'iotguard state check --state-dir {state_dir}'; 'iotguard state repair --state-dir "
                       f"{state_dir}' rebuilds the active responses from the audit log.")


def repair(state_dir: str, now: float | None = None) -> list[str]:
    """Rebuild the active responses the audit log knows and the store lacks; a store that
    cannot be read is moved aside first (never deleted).  Returns what was done."""
    now = time.time() if now is None else now
    done: list[str] = []
    path = os.path.join(state_dir, STORE)
    report = check(state_dir, now)
    if report.store_problem is not None:
        aside = f"{path}.damaged-{int(now)}"
        os.replace(path, aside)
        done.append(f"moved the unreadable store to {aside}")
        report = check(state_dir, now)
    store = ResponseStore(path)
    try:
        for rid, rec in sorted(report.missing.items()):
            if rec is None:
                done.append(f"response {rid}: cannot be rebuilt (no record in the audit log); left out")
                continue
            try:
                r = Stored.from_record(rec)
            except (KeyError, TypeError, ValueError) as e:
                done.append(f"response {rid}: its audit record does not fit ({e}); left out")
                continue
            store.put(r)
            done.append(f"response {rid}: rebuilt ({r.action}, {r.ttl:.0f} s ttl, "
                        f"{max(0.0, r.expires - now):.0f} s left)")
    finally:
        store.close()
    return done or ["nothing to repair"]
