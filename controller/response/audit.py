"""The response audit log: `<state_dir>/audit.jsonl`, append-only JSON lines.

Every decision of the response engine, and everything that later happens to the
response it made (installed, failed, released, expired, reconciled), is one
line.  The file is opened O_APPEND and created 0600 (an existing file is
chmod'ed to 0600); each record is one `write()` followed by `fsync()`.  Nothing
here ever truncates, rewrites or seeks: earlier lines stay byte-for-byte.  Past
`MAX_BYTES` the file is renamed to `audit.jsonl.1` (older copies shift, `KEEP` are
kept) and a new one is started; reads span the copies, newest first.

A crash can leave a last line without its newline.  `read()` skips any line that
is not a JSON object, and the first append after opening such a file starts
with a newline so the torn line never glues onto the next record.

Record fields (every record has all of them; absent values are null):

    time         unix seconds of the event (the caller's `now`)
    event        decision | installed | failed | dry-run | released | expired | reconciled
    alert        the alert dict (with its `explanation`), or null
    playbook     the playbook's name ("" for a manual response)
    action       quarantine, block_lateral, ..., notify
    mode         enforce | dry-run
    response_id  the response's id (its rules' cookie id), or null
    rules        [{dpid, table, priority, cookie (hex), match, instructions, ...}]
                 or, for a meter, [{dpid, meter, command, rate, burst, unit}]
    outcome      short word: sent, refreshed, unchanged, dry-run, installed, failed, ...
    error        the error text, or null
    detail       optional extra facts (ttl, repeats, reason, ...)
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any, Iterable

from controller.detection.alert import Alert
from controller.openflow.rules import FlowSpec, MeterSpec

EVENTS = ("decision", "installed", "failed", "dry-run", "released", "expired", "reconciled", "refused",
          "pending", "approved", "denied")
FIELDS = ("time", "event", "alert", "playbook", "action", "mode", "response_id", "rules",
          "outcome", "error", "detail")
READ_LIMIT = 1000
MAX_BYTES = 64 * 1024 * 1024   # the live file rotates past this size ...
KEEP = 8                       # ... and this many rotated copies are kept (.1 newest): 576 MiB in all
OLDER_RUN = 10000   # a `since` read stops after this many records in a row older than it (clock steps)


def _jsonable(value: Any) -> Any:
    """Tuples (matches, instructions, masks) become lists, numpy scalars numbers, NaN/inf
    strings (strict JSON); anything else unknown becomes its str()."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    item = getattr(value, "item", None)     # numpy scalar
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def rule_record(dpid: int, spec: FlowSpec | MeterSpec) -> dict:
    """One rule (or meter) as the audit log shows it; the cookie in hex."""
    if isinstance(spec, MeterSpec):
        return {"dpid": dpid, "meter": spec.meter_id, "command": spec.command,
                "rate": spec.rate, "burst": spec.burst, "unit": spec.unit}
    out = {"dpid": dpid, "table": spec.table_id, "priority": spec.priority,
           "cookie": f"{spec.cookie:#018x}", "command": spec.command,
           "match": {k: _jsonable(v) for k, v in spec.match},
           "instructions": _jsonable(spec.instructions)}
    if spec.command == "add":
        out["hard_timeout"] = spec.hard_timeout
    else:
        out["cookie_mask"] = f"{spec.cookie_mask:#018x}"
    return out


def rule_records(messages: Iterable[tuple[int, Any]]) -> list[dict]:
    return [rule_record(d, s) for d, s in messages if isinstance(s, (FlowSpec, MeterSpec))]


class AuditLog:
    """Append-only JSON lines; `write` one record, `read` newest first."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self.path = os.fspath(path)
        self.max_bytes, self.keep = max_bytes, keep
        self._open()

    def _open(self) -> None:
        try:   # O_NONBLOCK: a FIFO put in its place fails here instead of hanging start-up
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK,
                               0o600)
        except OSError as e:
            raise OSError(e.errno, f"{self.path}: cannot open the audit log: {e.strerror}") from None
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self._fd)
            raise OSError(f"{self.path}: the audit log must be a regular file")
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(self._fd, 0o600)
        self._torn = st.st_size > 0 and not self._ends_with_newline(st.st_size)
        self._size = st.st_size

    def files(self) -> list[str]:
        """The log's files, newest first: the live one, then its rotated copies .1 .. .keep."""
        return [self.path] + [f"{self.path}.{i}" for i in range(1, self.keep + 1)
                              if os.path.exists(f"{self.path}.{i}")]

    def _rotate(self) -> None:
        """audit.jsonl -> .1 -> .2 ... -> .keep; the oldest copy goes.  Each file stays append-only."""
        os.close(self._fd)
        self._fd = -1
        oldest = f"{self.path}.{self.keep}"
        if os.path.exists(oldest):
            os.remove(oldest)
        for i in range(self.keep - 1, 0, -1):
            if os.path.exists(f"{self.path}.{i}"):
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        os.replace(self.path, f"{self.path}.1")
        self._open()

    def _ends_with_newline(self, size: int) -> bool:
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) == b"\n"

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, event: str, *, time: float, alert: Alert | dict | None = None, playbook: str | None = None,
              action: str | None = None, mode: str | None = None, response_id: int | None = None,
              rules: Iterable[tuple[int, Any]] | list[dict] = (), outcome: str | None = None,
              error: str | None = None, detail: dict | None = None) -> dict:
        """Append one record (one write, then fsync) and return it."""
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}; one of {', '.join(EVENTS)}")
        rows = list(rules)
        if rows and not isinstance(rows[0], dict):
            rows = rule_records(rows)
        if isinstance(alert, Alert):      # the typed record becomes its JSON here, at the edge
            alert = alert.to_dict()
        record = {"time": time, "event": event, "alert": alert, "playbook": playbook,
                  "action": action, "mode": mode, "response_id": response_id, "rules": rows,
                  "outcome": outcome, "error": error, "detail": detail}
        line = json.dumps(_jsonable(record), separators=(",", ":"), allow_nan=False) + "\n"
        data = (b"\n" if self._torn else b"") + line.encode("utf-8")
        if self.keep > 0 and self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
            data = line.encode("utf-8")
        written = os.write(self._fd, data)
        while written < len(data):      # a regular file takes it all; a full disk raises
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)
        self._torn = False
        self._size += len(data)
        return record

    def read(self, since: float | None = None, limit: int = READ_LIMIT) -> list[dict]:
        """Records with time > `since` (all if None), newest first, at most `limit`.

        The file is read backwards in blocks, so the cost is the records returned, not
        the size of the log (a log of a million lines answers as fast as a short one).
        Lines that are not a JSON object (a torn last line) are skipped.
        """
        limit = max(0, min(int(limit), READ_LIMIT))
        out: list[dict] = []
        older = 0
        for raw in (line for path in self.files() for line in _lines_backwards(path)):
            if len(out) >= limit:
                break
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            if not isinstance(record, dict):
                continue
            t = record.get("time")
            if since is not None and not (isinstance(t, (int, float)) and t > since):
                older += 1
                if older >= OLDER_RUN:      # appended in time order: the rest is older still
                    break
                continue
            older = 0
            out.append(record)
        return out


def _lines_backwards(path: str, block: int = 65536) -> Iterable[bytes]:
    """The non-empty lines of a file, last first, reading `block` bytes at a time."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(0, os.SEEK_END)
        pos = f.tell()
        rest = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step) + rest
            lines = chunk.split(b"\n")
            rest = lines[0]
            for line in reversed(lines[1:]):
                if line.strip():
                    yield line
        if rest.strip():
            yield rest
