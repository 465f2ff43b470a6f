"""Incident records: what a device did before and after its alert, for the report.

Every device keeps a short ring of its last windows (`PRE` of them, float32).
When an alert opens an incident, the ring is copied into it together with the
baseline band the device was judged against, and the next `POST` windows are
appended, so the report shows the attack starting, the detection, and the
mitigation taking effect.  Each incident is written as JSON to
`<state_dir>/incidents/<alert id>.json` when it opens, every `FLUSH_EVERY`
windows while it is open, and when it closes: `iotguard report` reads the
files, with or without a running controller.

Bounded: the rings cost PRE x 16 x 4 bytes per device (7.7 KB at the
default), and at most `MAX_OPEN` incidents collect at once.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from controller.config import Device
from controller.detection.alert import Alert

LOG = logging.getLogger("iotguard.incidents")

PRE = 120            # windows kept before an alert
POST = 120           # windows collected after it
FLUSH_EVERY = 2
MAX_OPEN = 50
MAX_FILES = 1000     # incident files kept in the directory; the oldest are removed beyond it


@dataclass
class _Ring:
    times: np.ndarray
    values: np.ndarray
    n: int = 0       # windows written so far

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        size = len(self.times)
        if self.n <= size:
            return self.times[: self.n].copy(), self.values[: self.n].copy()
        i = self.n % size
        return (np.concatenate([self.times[i:], self.times[:i]]),
                np.concatenate([self.values[i:], self.values[:i]]))


@dataclass(kw_only=True)
class Incident:
    alert: dict
    device: dict
    mac: str
    band: dict | None
    baseline: str
    times: list[float]
    values: list[list[float]]
    left: int = POST
    since_flush: int = 0
    extra: dict = field(default_factory=dict)

    def to_json(self, features: Sequence[str], window_s: float, now: float) -> dict:
        return {"alert": self.alert, "device": self.device, "window_s": window_s,
                "features": list(features), "times": self.times, "values": self.values,
                "band": self.band, "baseline": self.baseline, "updated": now,
                "complete": self.left <= 0}


class Incidents:
    def __init__(self, directory: str | None, features: Sequence[str], pre: int = PRE, post: int = POST) -> None:
        self.directory = directory
        self.features = list(features)
        self.pre, self.post = pre, post
        self._rings: dict[str, _Ring] = {}
        self.open: dict[str, Incident] = {}    # alert id -> incident
        self.window_s = 1.0
        self.pruned = 0                         # incident files removed by the MAX_FILES bound

    def add_window(self, now: float, window_s: float, macs: Sequence[str], X: np.ndarray) -> None:
        """One closed window for every active device; feeds the rings and open incidents."""
        self.window_s = window_s
        width = len(self.features)
        for i, mac in enumerate(macs):
            ring = self._rings.get(mac)
            if ring is None:
                ring = self._rings[mac] = _Ring(np.zeros(self.pre), np.zeros((self.pre, width), np.float32))
            k = ring.n % self.pre
            ring.times[k] = now
            ring.values[k] = X[i, :width]
            ring.n += 1
        if not self.open:
            return
        rows = {mac: i for i, mac in enumerate(macs)}
        for aid, inc in list(self.open.items()):
            i = rows.get(inc.mac)
            inc.times.append(round(now, 3))
            inc.values.append([round(float(v), 4) for v in X[i, :width]] if i is not None else [0.0] * width)
            inc.left -= 1
            inc.since_flush += 1
            if inc.left <= 0:
                self._write(inc, now)
                del self.open[aid]
            elif inc.since_flush >= FLUSH_EVERY:
                self._write(inc, now)

    def forget(self, macs: Sequence[str]) -> None:
        for mac in macs:
            self._rings.pop(mac, None)

    def on_alert(self, alert: Alert, device: Device | None, band: dict | None, baseline: str,
                 now: float) -> None:
        """Open an incident for a device alert (outbreaks are about several devices: none)."""
        mac = alert.mac
        if mac is None or alert.id in self.open:
            return
        if len(self.open) >= MAX_OPEN:
            oldest = next(iter(self.open))
            self._write(self.open.pop(oldest), now)
        ring = self._rings.get(mac)
        times, values = ring.rows() if ring is not None else (np.zeros(0), np.zeros((0, len(self.features))))
        inc = Incident(alert=alert.to_dict(), device=device.to_dict() if device is not None else {}, mac=mac,
                       band=band, baseline=baseline, times=[round(float(t), 3) for t in times],
                       values=np.round(values.astype(np.float64), 4).tolist(), left=self.post)
        self.open[alert.id] = inc
        self._write(inc, now)
        self._prune()

    def _prune(self) -> None:
        """Keep at most MAX_FILES incident files: the oldest go (alerts are not bounded,
        the disk is)."""
        if self.directory is None:
            return
        try:
            names = [n for n in os.listdir(self.directory) if n.endswith(".json")]
            if len(names) <= MAX_FILES:
                return
            paths = sorted((os.path.join(self.directory, n) for n in names), key=os.path.getmtime)
            for path in paths[:len(paths) - MAX_FILES]:
                os.remove(path)
                self.pruned += 1
        except OSError as e:
            LOG.error("could not prune incidents in %s: %s", self.directory, e)

    def flush(self, now: float) -> None:
        for inc in self.open.values():
            self._write(inc, now)

    def _write(self, inc: Incident, now: float) -> None:
        inc.since_flush = 0
        if self.directory is None:
            return
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            path = os.path.join(self.directory, f"{_safe(inc.alert['id'])}.json")
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".incident-")
            with os.fdopen(fd, "w") as f:
                json.dump(inc.to_json(self.features, self.window_s, now), f, separators=(",", ":"))
            os.replace(tmp, path)
        except OSError as e:
            LOG.error("could not write incident %s: %s", inc.alert.get("id"), e)


def _safe(name: Any) -> str:
    text = str(name)
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:64] or "incident"


def band_of(baseline: Any) -> dict | None:
    """The normal range per feature a baseline implies (the explanations' 'baseline is a–b')."""
    if baseline is None or getattr(baseline, "median_", None) is None:
        return None
    from controller.detection.baseline import band
    level = np.asarray(getattr(baseline, "min_level", 0.0), dtype=np.float64)
    low, high = band(np.asarray(baseline.median_), np.asarray(baseline.scale_), level)
    return {"low": np.round(low, 4).tolist(), "high": np.round(high, 4).tolist()}
