"""The devices' own baselines stacked into arrays, so one window is scored (and folded) in one numpy pass.

Why: `DeviceBaseline` is one estimator per device; scoring 5,000 of them one call at a
time costs ~100 µs of Python and numpy dispatch each, more than the arithmetic.  The bank
holds every banked baseline's parameters as rows of (capacity, F) and (capacity, F, F)
arrays, and the baselines' own arrays (median_, scale_, location_, precision_, anchor_,
anchor_scale_) *are* views of those rows: one copy of the numbers, so a batched fold is
seen by the estimator (explain, to_dict, the incident report) and nothing is synced back.

Memory (issue #9: at most 20 KB per device): the precision matrices, the largest part of a
row, are float32 (a Mahalanobis distance needs no more than 7 digits), and capacity grows
by a quarter, not by doubling, so a fleet's spare rows stay under a quarter of its own.

Invariant: a banked baseline is changed only through its store (fit_pending, fold,
load, forget), which keeps the bank in step.  `row()` re-reads a baseline whose arrays
were rebound behind the bank's back (refitted in place, folded on its own), so a stale
row is never scored; the check is one identity test per device.

All baselines of a bank have the same number of features (the store's feature set);
their parameters (min_scale, min_level, two_sided, multivariate) and number of modes may differ per
row.  A baseline's modes are views too, of (capacity, K, ...) arrays with K the most modes
of any row; a row with fewer uses its first slots and the rest are never scored.  Modes
never fold (only the device-wide model drifts), so they are written once per fit.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from controller.detection.baseline import (DAY, MAD_TO_SD, _SCALE_SHIFT, _Z_CAP, DeviceBaseline)

_VIEWS = ("median_", "scale_", "location_", "precision_", "anchor_", "anchor_scale_")
# a baseline's mode arrays -> the bank's (capacity, K, ...) array and its unused-slot filler
_MODE_VIEWS = {"mode_median_": ("mode_median", 0.0), "mode_scale_": ("mode_scale", 1.0),
               "mode_location_": ("mode_location", 0.0), "mode_precision_": ("mode_precision", 0.0),
               "mode_d_median_": ("mode_d_median", 0.0), "mode_d_scale_": ("mode_d_scale", 1.0)}
_MIN_CAPACITY = 16


class BaselineBank:
    """Rows of stacked baseline parameters, one per device (keyed by MAC)."""

    def __init__(self, n_features: int) -> None:
        self.n_features = F = int(n_features)
        self._rows: dict[str, int] = {}
        self._macs: list[str] = []
        self._owners: list[DeviceBaseline] = []
        self._cap = 0
        self._k = 0                      # mode slots per row
        self._alloc(_MIN_CAPACITY)
        assert F > 0

    # ------------------------------------------------------------ storage
    def _alloc(self, cap: int, k: int | None = None) -> None:
        """(Re)allocate to `cap` rows (and `k` mode slots), keeping the rows in use and
        re-pointing their owners' views."""
        F, n = self.n_features, len(self._macs)
        k0, self._k = self._k, self._k if k is None else k
        old = getattr(self, "_a", None)
        a = {"median_": np.zeros((cap, F)), "scale_": np.ones((cap, F)), "location_": np.zeros((cap, F)),
             "precision_": np.zeros((cap, F, F), dtype=np.float32), "anchor_": np.zeros((cap, F)),
             "anchor_scale_": np.ones((cap, F)),
             "floor": np.zeros((cap, F)), "level": np.zeros((cap, F)), "two": np.zeros((cap, F), dtype=bool),
             "mv": np.zeros(cap, dtype=bool), "d_median": np.zeros(cap), "d_scale": np.ones(cap),
             "threshold": np.zeros(cap), "anchor_time": np.full(cap, np.nan),
             "n_modes": np.zeros(cap, dtype=np.int64)}
        K = self._k
        for key, shape in (("mode_median", (F,)), ("mode_scale", (F,)), ("mode_location", (F,)),
                           ("mode_precision", (F, F)), ("mode_d_median", ()), ("mode_d_scale", ())):
            a[key] = np.zeros((cap, K, *shape), dtype=np.float32 if key == "mode_precision" else np.float64)
        for key, fill in _MODE_VIEWS.values():
            a[key][:] = fill
        if old is not None:
            for key, v in a.items():
                if key.startswith("mode_"):
                    v[:n, :k0] = old[key][:n]
                else:
                    v[:n] = old[key][:n]
        self._a, self._cap = a, cap
        for r, b in enumerate(self._owners):
            self._bind(r, b)

    def _bind(self, r: int, b: DeviceBaseline) -> None:
        for k in _VIEWS:
            setattr(b, k, self._a[k][r])
        K = int(self._a["n_modes"][r])
        for attr, (key, _) in _MODE_VIEWS.items():
            setattr(b, attr, self._a[key][r, :K])

    def _write(self, r: int, b: DeviceBaseline) -> None:
        a = self._a
        for k in _VIEWS:
            a[k][r] = getattr(b, k)
        a["floor"][r] = b._scale_floor()
        a["level"][r] = b._level()
        a["two"][r] = b._two_sided_mask()
        a["mv"][r] = bool(b.multivariate)
        a["d_median"][r], a["d_scale"][r] = b.d_median_, b.d_scale_
        a["threshold"][r] = b.threshold_
        a["anchor_time"][r] = math.nan if b.anchor_time_ is None else b.anchor_time_
        a["n_modes"][r] = K = b._n_modes()
        for attr, (key, fill) in _MODE_VIEWS.items():
            a[key][r] = fill
            a[key][r, :K] = getattr(b, attr)
        self._bind(r, b)

    def __len__(self) -> int:
        return len(self._macs)

    def __contains__(self, mac: object) -> bool:
        return mac in self._rows

    @property
    def macs(self) -> list[str]:
        return list(self._macs)

    def nbytes(self) -> int:
        """Bytes of the stacked arrays (capacity included)."""
        return sum(v.nbytes for v in self._a.values())

    # ------------------------------------------------------------ membership
    def put(self, mac: str, b: DeviceBaseline) -> int:
        """Bank `b` as `mac`'s baseline (a newly fitted, refitted or loaded one); returns its row."""
        if b.n_features_in_ != self.n_features:
            raise ValueError(f"bank: baseline has {b.n_features_in_} features, expected {self.n_features}")
        K = b._n_modes()
        if K > self._k:
            # re-allocating rebinds every owner to its old row: keep b's fresh numbers
            fresh = {k: getattr(b, k) for k in (*_VIEWS, *_MODE_VIEWS)}
            self._alloc(self._cap, K)
            for k, v in fresh.items():
                setattr(b, k, v)
        r = self._rows.get(mac)
        if r is None:
            r = len(self._macs)
            if r >= self._cap:
                self._alloc(max(_MIN_CAPACITY, self._cap + self._cap // 4))
            self._rows[mac] = r
            self._macs.append(mac)
            self._owners.append(b)
        else:
            old = self._owners[r]
            if old is not b:
                self._detach(old)
                self._owners[r] = b
        self._write(r, b)
        return r

    def forget(self, mac: str) -> None:
        """Drop `mac`'s row (the last row moves into it); its baseline keeps copies of its numbers."""
        r = self._rows.pop(mac, None)
        if r is None:
            return
        self._detach(self._owners[r])
        last = len(self._macs) - 1
        if r != last:
            for v in self._a.values():
                v[r] = v[last]
            self._macs[r], self._owners[r] = self._macs[last], self._owners[last]
            self._rows[self._macs[r]] = r
            self._bind(r, self._owners[r])
        self._macs.pop()
        self._owners.pop()

    def clear(self) -> None:
        for b in self._owners:
            self._detach(b)
        self._rows, self._macs, self._owners = {}, [], []
        self._alloc(_MIN_CAPACITY)

    def _detach(self, b: DeviceBaseline) -> None:
        for k in (*_VIEWS, *_MODE_VIEWS):
            v = getattr(b, k, None)
            if isinstance(v, np.ndarray) and v.base is not None:
                setattr(b, k, v.copy())

    def row(self, mac: str, b: DeviceBaseline) -> int:
        """`mac`'s row for baseline `b`, (re)banking it if the row is missing or stale."""
        r = self._rows.get(mac)
        # fit() and DeviceBaseline.fold() rebind median_: not a view of the bank = stale
        if r is None or self._owners[r] is not b or b.median_.base is not self._a["median_"]:
            return self.put(mac, b)
        return r

    def baseline(self, mac: str) -> DeviceBaseline | None:
        r = self._rows.get(mac)
        return None if r is None else self._owners[r]

    # ------------------------------------------------------------ scoring
    def medians(self, rows: np.ndarray) -> np.ndarray:
        return self._a["median_"][rows]

    def thresholds(self, rows: np.ndarray) -> np.ndarray:
        return self._a["threshold"][rows]

    def scores(self, rows: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Anomaly scores of windows X (n, F), row k by baseline rows[k]: `DeviceBaseline.score_one`
        for every k at once (same formula, same order of operations but the matrix product)."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._scores(rows, self._log(rows, np.asarray(X, dtype=np.float64)))

    def _log(self, rows: np.ndarray, X: np.ndarray) -> np.ndarray:
        """`DeviceBaseline._log` of X[k] under row rows[k]'s min_level."""
        return np.log1p(np.maximum(X, self._a["level"][rows]))

    def _scores(self, rows: np.ndarray, T: np.ndarray) -> np.ndarray:
        a = self._a
        z = (T - a["median_"][rows]) / a["scale_"][rows]
        two = a["two"][rows]
        pos = np.maximum(z, 0.0)
        s = np.where(two, np.abs(z), pos).max(axis=1)
        mv = a["mv"][rows]
        if mv.any():
            k = np.flatnonzero(mv)
            r = rows[k]
            D = np.clip(np.where(two[k], z[k], pos[k]), -_Z_CAP, _Z_CAP) - a["location_"][r]
            DP = np.matmul(D[:, None, :], a["precision_"][r])[:, 0, :]    # each row's D @ P
            d = np.sqrt(np.maximum((DP * D).sum(axis=1), 0.0))
            s[k] = np.maximum(s[k], (d - a["d_median"][r]) / a["d_scale"][r])
        nm = a["n_modes"][rows]
        if nm.any():                     # the lower of that and the nearest mode's score
            k = np.flatnonzero(nm)
            r = rows[k]
            zm = (T[k][:, None, :] - a["mode_median"][r]) / a["mode_scale"][r]      # (n, K, F)
            tk = two[k][:, None, :]
            pm = np.maximum(zm, 0.0)
            sm = np.where(tk, np.abs(zm), pm).max(axis=2)
            if mv[k].any():
                D = np.clip(np.where(tk, zm, pm), -_Z_CAP, _Z_CAP) - a["mode_location"][r]
                d = np.sqrt(np.maximum(np.einsum("nkf,nkfg,nkg->nk", D, a["mode_precision"][r], D), 0.0))
                dz = (d - a["mode_d_median"][r]) / a["mode_d_scale"][r]
                sm = np.where(mv[k][:, None], np.maximum(sm, dz), sm)
            sm[np.arange(self._k)[None, :] >= nm[k][:, None]] = np.inf      # unused slots
            s[k] = np.minimum(s[k], sm.min(axis=1))
        return s

    # ------------------------------------------------------------ drift
    def fold(self, rows: np.ndarray, X: np.ndarray, now: float, max_shift_per_day: float = 0.7,
             rate: float = 0.01) -> None:
        """`DeviceBaseline.fold` of window X[k] into baseline rows[k], for every k at once.

        The caller has already decided which windows may fold (scored below the
        SUSPICION share of their threshold), so there is no score test here.  Why
        batched and not sampled: every normal window still moves its device's
        baseline exactly as the per-device fold would (same steps, same bounds), so
        drift adaptation keeps its rate; only the Python per device is gone.  The
        anchors (the 24 h budget) are arrays too; the few devices whose period
        rolls over (or whose clock went back) get anchor_time_ written to the
        estimator in a loop over those alone, about once a day per device.
        """
        if not math.isfinite(now):
            raise ValueError(f"fold: now must be a finite time in seconds, got {now!r}")
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        s = np.sort(rows)
        if np.any(s[1:] == s[:-1]):
            raise ValueError("fold: a row may fold one window per call")
        a = self._a
        T = self._log(rows, np.asarray(X, dtype=np.float64).reshape(len(rows), self.n_features))
        med, scale = a["median_"][rows], a["scale_"][rows]
        at = a["anchor_time"][rows]
        roll = np.isnan(at) | (now - at >= DAY)
        back = ~roll & (now < at)
        if roll.any():
            rr = rows[roll]
            a["anchor_"][rr], a["anchor_scale_"][rr] = med[roll], scale[roll]
        changed = roll | back
        if changed.any():
            a["anchor_time"][rows[changed]] = float(now)
            for r in rows[changed].tolist():
                self._owners[r].anchor_time_ = float(now)
        anchor, anchor_scale = a["anchor_"][rows], a["anchor_scale_"][rows]
        dev = T - med
        m = med + rate * scale * np.sign(dev)
        a["median_"][rows] = np.clip(m, anchor - max_shift_per_day, anchor + max_shift_per_day)
        s = scale * np.exp(rate * np.sign(MAD_TO_SD * np.abs(dev) - scale))
        lim = math.exp(_SCALE_SHIFT * max_shift_per_day)
        s = np.clip(s, anchor_scale / lim, anchor_scale * lim)
        a["scale_"][rows] = np.maximum(s, a["floor"][rows])

    def rows_of(self, macs: Iterable[str]) -> np.ndarray:
        """Rows of `macs` (-1 for a MAC without one)."""
        get = self._rows.get
        return np.fromiter((get(m, -1) for m in macs), dtype=np.int64)
