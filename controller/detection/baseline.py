"""Per-device baselines: what normal looks like for one device, and how far a window is from it.

Why this shape:

* Features are counts, rates, shares and sizes spanning orders of magnitude, so everything is
  modelled in log1p space: a 10x jump is the same distance at 10 B/s as at 10 MB/s.
* Median and MAD, not mean and SD: the training windows may already hold a few odd ones.
  The scale has a floor (`min_scale`) so a device that sends exactly the same thing every
  window does not alarm on a byte of jitter.  It may be given per feature: a share in [0, 1]
  spans only ln 2 = 0.69 in log1p space, so under the default 0.5 its z can never pass 1.39.
* Below `min_level` (per feature, in its own units) every value is the same level: log1p
  alone makes 4 kB/s against a median of 2 B/s as far as 4 GB/s against 2 MB/s, and real
  quiet devices make such sub-kilobyte bursts every few hours.  An effect too small to
  matter is not evidence, however many scales it is.
* Most features are only suspicious going *up* (more ports, more bytes); a quiet device is not
  an attack.  Shares and mean packet size are suspicious both ways (`two_sided`).
* A covariance model (Ledoit-Wolf, F*F floats) over the features that varied in training
  catches several of them moderately off together, or off against each other.  It fits the
  20 KB/device budget; a per-device IsolationForest does not.  Features constant in training
  stay out of it, so for them (and for a flat device) min_scale and z_floor alone decide.
* The threshold is calibrated for a target false-alarm rate per window (`far`) on
  out-of-sample scores: each warm-up window scored by a model fitted without it (5
  interleaved folds).  Too few windows for the empirical quantile: an exponential tail
  fitted to the top 10% is extrapolated, which errs high for the light tails of normal
  traffic and far too high for heavy ones, so it is capped at TAIL_MARGIN above the
  second-highest score (one odd warm-up window cannot set the cap).
* Many devices live in a few states: a camera idles or streams, a plug is on or off, a hub
  syncs.  One model sits across all of them, so every state but the commonest scores high,
  and the threshold calibrated on those scores is then too high for an attack to reach.
  So the warm-up is also clustered (k-means on the clipped z-vectors, at most `max_modes`
  clusters, each holding at least MODE_MIN_SHARE and MODE_MIN_WINDOWS of the windows),
  and each cluster gets the same model of its own (median, scale, covariance, distance
  spread): a *mode*.  A window's score is the lowest of its device-wide score and its
  scores against each mode, so it is never above the device-wide score.  Known limit: a
  window quieter than a state on every one-sided count is normal for that state, so an
  idle camera sending at less than its streaming rate is judged by its mix and peers,
  not its volume.  Modes cost K x (F*F + 3F + 2) floats and do not drift (the
  device-wide model does): a refit relearns them.

Inputs are expected non-negative.  Negative values are clipped to 0 rather than rejected
(scikit-learn's estimator checks feed random negative data; a negative count means nothing).

Persistence is a plain JSON-able dict validated field by field: loading never runs code.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.utils.validation import check_is_fitted, validate_data

SCHEMA = "iotguard.baseline/1"
# How threshold_ was calibrated: 1 = on in-sample scores with an uncapped tail (a file without
# a "version" field); 2 = on cross-fitted scores, tail capped.  The arrays mean the same in
# both, so an old file loads as it is and keeps its threshold (and version) until refitted.
# 3 = with modes (mode_median_, mode_scale_, params.max_modes); an older file has none, and
# loads with max_modes=1 (no modes) and its old threshold until refitted.
VERSION = 3
DAY = 86400.0
MAD_TO_SD = 1.4826      # times the MAD of a normal sample, its standard deviation
TAIL_PRIOR_EXCESS = 0.47   # mean excess of a standard normal beyond its 90th percentile
TAIL_PRIOR_WEIGHT = 10.0   # ... counted as this many observed tail points
TAIL_MARGIN = 3.0        # the extrapolated threshold is at most this far above the 2nd-highest score
CV_FOLDS = 5             # cross-fitting folds for the out-of-sample calibration scores
CV_MIN_WINDOWS = 20      # fewer warm-up windows: calibrate on in-sample scores
RANGE_K = 2.33          # explain(): median +- 2.33 scales is the 1st..99th percentile of a normal
_Z_CAP = 8.0            # z fed to the covariance model: a few wild training windows cannot own it
_VAR_FLOOR = 0.34       # var of max(z, 0), z ~ N(0, 1): a quiet feature counts as one scale unit noisy
_D_SCALE_FLOOR = 0.7    # ~ the SD of a chi distance at any dimension: a tighter spread makes d_z jumpy
_SCALE_SHIFT = 0.25     # fold(): the scale may move by this fraction of the median's daily budget
_MAX_FEATURES = 4096    # from_dict() refuses anything larger before allocating it
MODE_MIN_SHARE = 0.05   # a mode holds at least this share of the warm-up windows ...
MODE_MIN_WINDOWS = 10   # ... and at least this many: a few odd windows are not a state
KMEANS_INITS = 4        # k-means restarts: with one, the final fit's partition may be poorer than its folds'
_MAX_MODES = 16         # the largest max_modes accepted (and loaded)


def band(median: np.ndarray, scale: np.ndarray, level: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The normal range per feature, in its own units, of a model on log1p (the 1st..99th
    percentile of a normal): what "its baseline is a–b" says.  A low end at or below the
    feature's `level` (min_level) reads 0: everything below that level is one value."""
    low = np.expm1(median - RANGE_K * scale)
    return np.where(low <= np.asarray(level) * (1 + 1e-9), 0.0, np.maximum(low, 0.0)), np.expm1(median + RANGE_K * scale)


class BaselineFormatError(ValueError):
    """A stored baseline is malformed; the message names the field."""


@dataclass
class Contribution:
    """One feature's part in an alarm, in the units an operator knows."""

    feature: str
    observed: float
    low: float          # the baseline's normal range, ~1st..99th percentile, original units
    high: float
    z: float
    share: float        # z / sum of the window's positive z


def _gaussian(Z: np.ndarray, pad: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Location and precision of clipped z-vectors: Ledoit-Wolf over the features that vary,
    each variance floored at _VAR_FLOOR.  A constant feature is left out, unless `pad` marks
    it: then it enters as independent, at the floor."""
    F = Z.shape[1]
    P = np.zeros((F, F))
    sd = Z.std(axis=0)
    v = np.flatnonzero(sd > 1e-9)
    if v.size:
        cov = LedoitWolf().fit(Z[:, v]).covariance_
        diag = np.diag_indices(v.size)
        cov[diag] = np.maximum(cov[diag], _VAR_FLOOR)   # raising a diagonal keeps it PSD
        inv = np.linalg.pinv(cov, hermitian=True)
        P[np.ix_(v, v)] = (inv + inv.T) / 2
    if pad is not None:
        c = np.flatnonzero((sd <= 1e-9) & pad)
        P[c, c] = 1.0 / _VAR_FLOOR
    return Z.mean(axis=0), P


def _spread(d: np.ndarray) -> tuple[float, float]:
    """Median and robust scale of warm-up distances; the scale floored (a tight one is jumpy)."""
    med = float(np.median(d))
    return med, float(max(MAD_TO_SD * np.median(np.abs(d - med)), _D_SCALE_FLOOR))


class DeviceBaseline(OutlierMixin, BaseEstimator):
    """One device's normal behaviour; scores windows of features, higher = more anomalous.

    scikit-learn conventions: `score_samples` is higher for normal, `decision_function` is
    negative for outliers, `predict` gives +1 normal / -1 outlier, `offset_ = -threshold_`.
    """

    def __init__(self, far: float = 1e-4, min_scale: float | Sequence[float] = 0.5,
                 z_floor: float = 4.0, two_sided: Sequence[int] = (), multivariate: bool = True,
                 max_modes: int = 2, min_level: float | Sequence[float] = 0.0) -> None:
        self.far = far
        self.min_scale = min_scale
        self.min_level = min_level
        self.z_floor = z_floor
        self.two_sided = two_sided
        self.multivariate = multivariate
        self.max_modes = max_modes

    # ------------------------------------------------------------ fitting
    def fit(self, X, y=None) -> "DeviceBaseline":
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        _check_params(self.get_params(), X.shape[1], ValueError)
        T = self._log(X)
        self.n_windows_ = int(X.shape[0])
        self._fit_model(T)
        self._fit_modes(T, self._mode_labels(T))
        self.threshold_ = self._calibrate(self._out_of_sample_scores(T))
        self.version_ = VERSION
        self.anchor_, self.anchor_scale_ = self.median_.copy(), self.scale_.copy()
        self.anchor_time_ = None            # fold() starts the first 24 h period
        return self

    def _fit_model(self, T: np.ndarray) -> None:
        """Medians, scales and the covariance model from log1p windows `T`."""
        self.median_ = np.median(T, axis=0)
        mad = np.median(np.abs(T - self.median_), axis=0)
        self.scale_ = np.maximum(MAD_TO_SD * mad, self._scale_floor())
        self._fit_covariance(T)

    def _mode_labels(self, T: np.ndarray) -> np.ndarray | None:
        """Each warm-up window's cluster (k-means on the clipped z-vectors), or None.

        Each cross-fitted fold clusters its own windows again: with the whole warm-up's
        labels a held-out window would have chosen its own mode, and the threshold would be
        read from scores too kind by that much.  A fixed seed: a refit of the same warm-up
        gives the same modes.
        """
        n = T.shape[0]
        k = min(int(self.max_modes), n // MODE_MIN_WINDOWS)
        if k < 2:
            return None
        Z = self._mv_input(self._z(T))
        if np.unique(Z, axis=0).shape[0] < k:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # duplicate windows: fewer distinct clusters
            return KMeans(n_clusters=k, n_init=KMEANS_INITS, random_state=0, max_iter=100).fit(Z).labels_

    def _fit_modes(self, T: np.ndarray, labels: np.ndarray | None) -> None:
        """A full model (median, scale, covariance, distance spread) of every cluster big
        enough to be a state; none unless two are.

        A feature constant within a mode but not device-wide (a share that is 0 while the
        camera idles) enters the mode's distance as independent at the variance floor: the
        mode never saw it move, so its moving is a departure from that mode.  Left out, as
        the device-wide model leaves out features constant everywhere, a mode would absorb
        exactly the windows that the device-wide distance flags on it.
        """
        F = T.shape[1]
        self.mode_median_, self.mode_scale_ = np.zeros((0, F)), np.ones((0, F))
        self.mode_location_, self.mode_precision_ = np.zeros((0, F)), np.zeros((0, F, F))
        self.mode_d_median_, self.mode_d_scale_ = np.zeros(0), np.ones(0)
        if labels is None:
            return
        need = max(MODE_MIN_WINDOWS, MODE_MIN_SHARE * T.shape[0])
        ids, counts = np.unique(labels, return_counts=True)
        big = ids[counts >= need]
        if big.size < 2:
            return
        floor, K = self._scale_floor(), big.size
        varies = self._mv_input(self._z(T)).std(axis=0) > 1e-9      # device-wide
        med, scale = np.zeros((K, F)), np.ones((K, F))
        loc, prec, dmed, dscale = np.zeros((K, F)), np.zeros((K, F, F)), np.zeros(K), np.ones(K)
        for i, c in enumerate(big.tolist()):
            Tc = T[labels == c]
            med[i] = np.median(Tc, axis=0)
            scale[i] = np.maximum(MAD_TO_SD * np.median(np.abs(Tc - med[i]), axis=0), floor)
            if self.multivariate:
                loc[i], prec[i] = _gaussian(self._mv_input((Tc - med[i]) / scale[i]), pad=varies)
        self.mode_median_, self.mode_scale_, self.mode_location_, self.mode_precision_ = med, scale, loc, prec
        if self.multivariate:
            d = self._mode_distance(self._mode_signed(T))
            for i, c in enumerate(big.tolist()):
                dmed[i], dscale[i] = _spread(d[labels == c, i])
        self.mode_d_median_, self.mode_d_scale_ = dmed, dscale

    def _out_of_sample_scores(self, T: np.ndarray) -> np.ndarray:
        """Each warm-up window's score by a model fitted without it (CV_FOLDS-fold cross-fit).

        In-sample scores are too kind: a window that is alone in its corner of the feature
        space pulls the median, scale and covariance toward itself, so the tail the
        threshold is read from is the tail of windows the model has already seen.  Folds
        interleave (window i is in fold i mod CV_FOLDS), so each one spans the whole
        warm-up and no fold is missing a phase (a setup, an idle hour) the others have.
        With fewer than CV_MIN_WINDOWS windows the folds would be too thin: in-sample.
        """
        n = T.shape[0]
        if n < CV_MIN_WINDOWS:
            return self._scores(T)
        out = np.empty(n)
        fold = np.arange(n) % CV_FOLDS
        for k in range(CV_FOLDS):
            m = DeviceBaseline(**self.get_params())
            m.n_features_in_ = self.n_features_in_
            m._fit_model(T[fold != k])
            m._fit_modes(T[fold != k], m._mode_labels(T[fold != k]))
            out[fold == k] = m._scores(T[fold == k])
        return out

    def _fit_covariance(self, T: np.ndarray) -> None:
        F = T.shape[1]
        if not self.multivariate:
            self.location_, self.precision_ = np.zeros(F), np.zeros((F, F))
            self.d_median_, self.d_scale_ = 0.0, 1.0
            return
        # Features constant in training stay out: their covariance is unknown, and their
        # per-feature z with its min_scale floor is the deliberate judgement on them.
        self.location_, self.precision_ = _gaussian(self._mv_input(self._z(T)))
        self.d_median_, self.d_scale_ = _spread(self._distance(self._z(T)))

    def _calibrate(self, a: np.ndarray) -> float:
        """The (1 - far) quantile of the (out-of-sample) warm-up scores, floored at z_floor.

        Beyond the sample, an exponential tail is fitted to the top 10%.  Its
        mean excess is shrunk toward a prior (that of a normal tail beyond its
        90th percentile, in z units) with the weight of TAIL_PRIOR_WEIGHT
        points: with 30 warm-up windows the top 10% is three numbers, and one
        noisy window would otherwise set the threshold for the device's life.
        The extrapolation is ln(0.1 / far) mean excesses (6.9 at far=1e-4), which on
        a heavy-tailed device lands far beyond anything it ever sent, where no
        attack reaches either: it is capped at TAIL_MARGIN above the second-highest score.
        """
        if len(a) * self.far >= 5 or self.far >= 0.1:
            t = float(np.quantile(a, 1 - self.far))
        else:
            q90 = float(np.quantile(a, 0.9))
            top = a[a > q90]
            excess = (float(np.sum(top - q90)) + TAIL_PRIOR_WEIGHT * TAIL_PRIOR_EXCESS) / \
                (top.size + TAIL_PRIOR_WEIGHT)
            # The cap stands on the second-highest score: one odd warm-up window (or an
            # attack already running) must not set it, as it must not set the tail above.
            second = float(np.partition(a, a.size - 2)[a.size - 2])
            t = min(q90 + excess * math.log(0.1 / self.far), second + TAIL_MARGIN)
        return float(max(self.z_floor, t))

    # ------------------------------------------------------------ scoring
    def _logs(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self._log(X)

    def _log(self, X: np.ndarray) -> np.ndarray:
        """log1p of windows already checked, each value raised to its feature's min_level."""
        return np.log1p(np.maximum(np.asarray(X, dtype=np.float64), self._level()))

    def _scale_floor(self) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.min_scale, dtype=np.float64), (self.n_features_in_,))

    def _level(self) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.min_level, dtype=np.float64), (self.n_features_in_,))

    def _two_sided_mask(self) -> np.ndarray:
        mask = np.zeros(self.n_features_in_, dtype=bool)
        mask[list(self.two_sided)] = True
        return mask

    def _z(self, T: np.ndarray) -> np.ndarray:
        return (T - self.median_) / self.scale_

    def _one_or_two_sided(self, z: np.ndarray, two: np.ndarray) -> np.ndarray:
        return np.where(self._two_sided_mask(), two, np.maximum(z, 0.0))

    def _mv_input(self, z: np.ndarray) -> np.ndarray:
        return np.clip(self._one_or_two_sided(z, z), -_Z_CAP, _Z_CAP)

    def _distance(self, z: np.ndarray) -> np.ndarray:
        D = self._mv_input(z) - self.location_
        return np.sqrt(np.maximum(((D @ self.precision_) * D).sum(axis=1), 0.0))

    def _n_modes(self) -> int:
        return len(getattr(self, "mode_median_", ()))

    def _mode_signed(self, T: np.ndarray) -> np.ndarray:
        """Per-mode z, (n, K, F), with its sign."""
        return (T[:, None, :] - self.mode_median_) / self.mode_scale_

    def _mode_distance(self, z: np.ndarray) -> np.ndarray:
        """Each window's distance to each mode, (n, K), from the signed per-mode z."""
        D = np.clip(self._one_or_two_sided(z, z), -_Z_CAP, _Z_CAP) - self.mode_location_
        return np.sqrt(np.maximum(np.einsum("nkf,kfg,nkg->nk", D, self.mode_precision_, D), 0.0))

    def _mode_scores(self, T: np.ndarray) -> np.ndarray:
        """Each window's score against each mode, (n, K): the device-wide score's formula."""
        z = self._mode_signed(T)
        a = self._one_or_two_sided(z, np.abs(z)).max(axis=2)
        if self.multivariate:
            a = np.maximum(a, (self._mode_distance(z) - self.mode_d_median_) / self.mode_d_scale_)
        return a

    def _device_scores(self, T: np.ndarray) -> np.ndarray:
        z = self._z(T)
        a = self._one_or_two_sided(z, np.abs(z)).max(axis=1)
        if self.multivariate:
            a = np.maximum(a, (self._distance(z) - self.d_median_) / self.d_scale_)
        return a

    def _scores(self, T: np.ndarray) -> np.ndarray:
        """The device-wide score, or a mode's if lower: a window normal for one state is normal."""
        a = self._device_scores(T)
        if self._n_modes():
            a = np.minimum(a, self._mode_scores(T).min(axis=1))
        return a

    def score_one(self, x: np.ndarray) -> float:
        """anomaly_score of one window without scikit-learn's input checks.

        The detector scores every device every poll; validate_data alone costs
        about 60 µs per call, more than the arithmetic.  `x` must be a finite
        float vector of n_features_in_ values (the detector's own output).
        """
        T = self._log(np.asarray(x, dtype=np.float64).reshape(1, self.n_features_in_))
        return float(self._scores(T)[0])

    def feature_z(self, X) -> np.ndarray:
        """Per-feature robust z, (n, F): one-sided (drops are 0) except two-sided features."""
        z = self._z(self._logs(X))
        return self._one_or_two_sided(z, np.abs(z))

    def anomaly_score(self, X) -> np.ndarray:
        """max(largest feature z, multivariate distance as a z); above threshold_ = outlier."""
        return self._scores(self._logs(X))

    def score_samples(self, X) -> np.ndarray:
        return -self.anomaly_score(X)

    def decision_function(self, X) -> np.ndarray:
        return self.score_samples(X) + self.threshold_

    def predict(self, X) -> np.ndarray:
        return np.where(self.decision_function(X) < 0, -1, 1)

    @property
    def offset_(self) -> float:
        return -self.threshold_

    def band(self) -> tuple[np.ndarray, np.ndarray]:
        """Each feature's normal range in its own units (`band`), device-wide."""
        return band(self.median_, self.scale_, self._level())

    def top_band(self) -> np.ndarray:
        """Each feature's highest normal value over the device-wide band and every mode's:
        what a volume check compares against (a streaming camera's rate is normal)."""
        high = self.band()[1]
        if self._n_modes():
            high = np.maximum(high, band(self.mode_median_, self.mode_scale_)[1].max(axis=0))
        return high

    def feature_alone(self, j: int, value: float) -> float:
        """z of one feature's value alone, against the device-wide model and every mode (the
        lowest): for a check that sees one counter, not a whole window."""
        t = math.log1p(max(float(value), float(self._level()[j])))
        z = (t - self.median_[j]) / self.scale_[j]
        if self._n_modes():
            z = min(z, float(((t - self.mode_median_[:, j]) / self.mode_scale_[:, j]).min()))
        return float(z)

    def reference(self, x) -> int | None:
        """The mode a window is judged against, or None for the device-wide model: the one
        it scores lowest against, ties (one feature far out in all of them) going to the one
        its other features sit closest to (least total z), so a streaming camera's ping burst
        is told against streaming, not against idle."""
        if not self._n_modes():
            return None
        T = self._logs(np.asarray(x, dtype=np.float64).reshape(1, -1))
        z = self._z(T)
        zm = self._mode_signed(T)[0]
        score = np.concatenate([self._device_scores(T), self._mode_scores(T)[0]])
        total = np.concatenate([[self._one_or_two_sided(z, np.abs(z)).sum()],
                                self._one_or_two_sided(zm, np.abs(zm)).sum(axis=1)])
        best = int(np.lexsort((total, np.round(score, 9)))[0])
        return None if best == 0 else best - 1

    def explain(self, x, feature_names: Sequence[str] | None = None, top: int = 3) -> list[Contribution]:
        """The features that pushed one window up, largest z first (only z > 0), against the
        device-wide model or, if the window scores lower against one of its modes, that mode."""
        row = np.asarray(x, dtype=np.float64).reshape(1, -1)
        k = self.reference(row)
        if k is None:
            z = self.feature_z(row)[0]
            low, high = self.band()
        else:
            z = self._mode_signed(self._logs(row))[0, k]
            z = self._one_or_two_sided(z, np.abs(z))
            low, high = band(self.mode_median_[k], self.mode_scale_[k], self._level())
        if feature_names is None:
            feature_names = getattr(self, "feature_names_in_", [f"x{j}" for j in range(len(z))])
        names = [str(n) for n in feature_names]
        if len(names) != len(z):
            raise ValueError(f"explain: {len(names)} feature names for {len(z)} features")
        total = float(z[z > 0].sum())
        order = [j for j in np.argsort(-z, kind="stable") if z[j] > 0][:top]
        return [Contribution(names[j], float(max(row[0, j], 0.0)), float(low[j]), float(high[j]),
                             float(z[j]), float(z[j] / total)) for j in order]

    # ------------------------------------------------------------ drift
    def fold(self, x, now: float, max_shift_per_day: float = 0.7, rate: float = 0.01,
             suspicion: float = 0.5, score: float | None = None) -> bool:
        """Let a normal window pull the baseline toward it, a little and boundedly.

        Why bounded: a slow attacker would otherwise drag the baseline along.  Each median
        moves at most `rate` scales per call (a stochastic-median step) and at most
        `max_shift_per_day` (log1p units) from where it stood when the current 24 h period
        began (so at most twice that across a period boundary).  The scale follows
        1.4826 |T - m| the same way, by at most a quarter of that budget per period, as a log
        ratio: a widening scale is the other lever an attacker has.  Windows scoring above
        `suspicion * threshold_` are refused.  Returns True if the window was folded.
        `score`, if given, is this window's anomaly score already computed by the caller.
        """
        if not math.isfinite(now):
            raise ValueError(f"fold: now must be a finite time in seconds, got {now!r}")
        if score is None:
            T = self._logs(np.asarray(x, dtype=np.float64).reshape(1, -1))
            score = float(self._scores(T)[0])
        else:
            T = self._log(np.asarray(x, dtype=np.float64).reshape(1, self.n_features_in_))
        if score > suspicion * self.threshold_:
            return False
        if self.anchor_time_ is None or now - self.anchor_time_ >= DAY:
            self.anchor_, self.anchor_scale_ = self.median_.copy(), self.scale_.copy()
            self.anchor_time_ = float(now)
        elif now < self.anchor_time_:
            self.anchor_time_ = float(now)      # clock went back: restart the period, keep the budget
        dev = T[0] - self.median_
        m = self.median_ + rate * self.scale_ * np.sign(dev)
        self.median_ = np.clip(m, self.anchor_ - max_shift_per_day, self.anchor_ + max_shift_per_day)
        s = self.scale_ * np.exp(rate * np.sign(MAD_TO_SD * np.abs(dev) - self.scale_))
        lim = math.exp(_SCALE_SHIFT * max_shift_per_day)
        s = np.clip(s, self.anchor_scale_ / lim, self.anchor_scale_ * lim)
        self.scale_ = np.maximum(s, self._scale_floor())
        return True

    # ------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """Numbers and lists only, JSON-serialisable."""
        check_is_fitted(self)
        version = int(getattr(self, "version_", VERSION))
        d = {
            "schema": SCHEMA, "version": version,
            "params": {"far": float(self.far), "min_scale": _plain(self.min_scale),
                       "z_floor": float(self.z_floor), "two_sided": [int(i) for i in self.two_sided],
                       "multivariate": bool(self.multivariate), "max_modes": int(self.max_modes),
                       "min_level": _plain(self.min_level)},
            "n_features_in_": int(self.n_features_in_), "n_windows_": int(self.n_windows_),
            **{k: getattr(self, k).tolist() for k in _ARRAYS},
            **{k: float(getattr(self, k)) for k in ("d_median_", "d_scale_", "threshold_")},
            "anchor_time_": None if self.anchor_time_ is None else float(self.anchor_time_),
            "modes_": [{"median": self.mode_median_[i].tolist(), "scale": self.mode_scale_[i].tolist(),
                        "location": self.mode_location_[i].tolist(),
                        "precision": self.mode_precision_[i].tolist(),
                        "d_median": float(self.mode_d_median_[i]), "d_scale": float(self.mode_d_scale_[i])}
                       for i in range(self._n_modes())],
        }
        if version < 3:                         # as it was written: no modes
            del d["params"]["max_modes"], d["modes_"]
        if not np.any(np.asarray(self.min_level, dtype=np.float64)):
            del d["params"]["min_level"]        # as files without it were written
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "DeviceBaseline":
        """Strictly validated inverse of to_dict; raises BaselineFormatError naming the field."""
        if not isinstance(d, dict):
            raise BaselineFormatError(f"baseline: expected an object, got {type(d).__name__}")
        if not isinstance(d.get("schema"), str) or d["schema"] != SCHEMA:
            raise BaselineFormatError(f"schema: expected {SCHEMA!r}")
        version = _integer(d.get("version", 1), "version", 1, VERSION)
        modal = version >= 3
        _exact_keys({k: v for k, v in d.items() if k != "version"},
                    _FIELDS | {"modes_"} if modal else _FIELDS, "baseline")
        params = d["params"]
        if not isinstance(params, dict):
            raise BaselineFormatError("params: expected an object")
        params = {"min_level": 0.0, **params}   # a file without min_level: no level (as before it)
        _exact_keys(params, _PARAMS if modal else _PARAMS - {"max_modes"}, "params")
        F = _integer(d["n_features_in_"], "n_features_in_", 1, _MAX_FEATURES)
        est = cls(**_check_params(params if modal else {**params, "max_modes": 1}, F, BaselineFormatError))
        est.n_features_in_ = F
        est.version_ = version
        est.n_windows_ = _integer(d["n_windows_"], "n_windows_", 2, 10**15)
        for k in ("median_", "location_", "anchor_"):
            setattr(est, k, _vector(d[k], k, F))
        for k in ("scale_", "anchor_scale_"):
            v = _vector(d[k], k, F)
            low = np.flatnonzero(~(v >= est._scale_floor()))
            if low.size:
                raise BaselineFormatError(f"{k}[{low[0]}]: below min_scale")
            setattr(est, k, v)
        est.precision_ = _precision(d["precision_"], "precision_", F)
        est.d_median_ = _number(d["d_median_"], "d_median_", lo=0.0)
        est.d_scale_ = _number(d["d_scale_"], "d_scale_", lo=1e-12)
        est.threshold_ = _number(d["threshold_"], "threshold_", lo=est.z_floor)
        t = d["anchor_time_"]
        est.anchor_time_ = None if t is None else _number(t, "anchor_time_")
        est._fit_modes(np.zeros((0, F)), None)           # no modes
        if modal:
            est._load_modes(d["modes_"])
        return est

    def _load_modes(self, modes: Any) -> None:
        F, floor = self.n_features_in_, self._scale_floor()
        if not isinstance(modes, list) or len(modes) == 1 or len(modes) > self.max_modes:
            raise BaselineFormatError(f"modes_: expected a list of 0 or 2 to {self.max_modes} modes (max_modes)")
        if not modes:
            return
        K = len(modes)
        med, scale = np.zeros((K, F)), np.ones((K, F))
        loc, prec, dmed, dscale = np.zeros((K, F)), np.zeros((K, F, F)), np.zeros(K), np.ones(K)
        for i, m in enumerate(modes):
            where = f"modes_[{i}]"
            if not isinstance(m, dict):
                raise BaselineFormatError(f"{where}: expected an object")
            _exact_keys(m, _MODE_FIELDS, where)
            med[i], loc[i] = _vector(m["median"], f"{where}.median", F), _vector(m["location"], f"{where}.location", F)
            scale[i] = _vector(m["scale"], f"{where}.scale", F)
            low = np.flatnonzero(~(scale[i] >= floor))
            if low.size:
                raise BaselineFormatError(f"{where}.scale[{low[0]}]: below min_scale")
            prec[i] = _precision(m["precision"], f"{where}.precision", F)
            dmed[i] = _number(m["d_median"], f"{where}.d_median", lo=0.0)
            dscale[i] = _number(m["d_scale"], f"{where}.d_scale", lo=1e-12)
        self.mode_median_, self.mode_scale_, self.mode_location_, self.mode_precision_ = med, scale, loc, prec
        self.mode_d_median_, self.mode_d_scale_ = dmed, dscale

    def nbytes(self) -> int:
        """Memory estimate: the object, its __dict__, and every value in it with its data."""
        total = sys.getsizeof(self) + sys.getsizeof(self.__dict__)
        for k, v in self.__dict__.items():
            total += sys.getsizeof(k) + sys.getsizeof(v)   # an ndarray owning its data counts it
            if isinstance(v, np.ndarray) and v.base is not None:
                total += v.nbytes
            elif isinstance(v, (tuple, list)):
                total += sum(sys.getsizeof(e) for e in v)
        return total


_ARRAYS = ("median_", "scale_", "location_", "precision_", "anchor_", "anchor_scale_")
_MODE_FIELDS = {"median", "scale", "location", "precision", "d_median", "d_scale"}
_PARAMS = {"far", "min_scale", "z_floor", "two_sided", "multivariate", "max_modes", "min_level"}
_FIELDS = {"schema", "params", "n_features_in_", "n_windows_", "d_median_", "d_scale_",
           "threshold_", "anchor_time_", *_ARRAYS}


def _check_params(p: dict, n_features: int, error: type[Exception]) -> dict:
    """Validated constructor parameters; `error` is ValueError in fit, BaselineFormatError on load."""
    def num(key: str, v: Any, lo: float, hi: float, closed: bool = False) -> float:
        ok = not isinstance(v, bool) and isinstance(v, (int, float, np.number))
        try:
            f = float(v) if ok else math.nan
        except OverflowError:
            f = math.nan
        if not (lo < f < hi or (closed and f == lo)):
            raise error(f"{key}: expected a number in {'[' if closed else '('}{lo}, {hi}), got {_show(v)}")
        return f

    out = {"far": num("far", p["far"], 0.0, 1.0),
           "z_floor": num("z_floor", p["z_floor"], 0.0, 1e6, closed=True)}
    for key, closed in (("min_scale", False), ("min_level", True)):
        v = p[key]
        if isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim):
            if len(v) != n_features:
                raise error(f"{key}: expected one number or {n_features}, got {len(v)}")
            out[key] = tuple(num(key, e, 0.0, math.inf, closed) for e in v)
        else:
            out[key] = num(key, v, 0.0, math.inf, closed)
    two = p["two_sided"]
    if isinstance(two, (str, bytes, dict)) or not hasattr(two, "__len__") or len(two) > n_features:
        raise error(f"two_sided: expected at most {n_features} feature indices")
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= i < n_features
               for i in two) or len(set(int(i) for i in two)) != len(two):
        raise error(f"two_sided: expected distinct indices in [0, {n_features})")
    out["two_sided"] = tuple(int(i) for i in two)
    if not isinstance(p["multivariate"], (bool, np.bool_)):
        raise error(f"multivariate: expected true or false, got {_show(p['multivariate'])}")
    out["multivariate"] = bool(p["multivariate"])
    m = p["max_modes"]
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= _MAX_MODES:
        raise error(f"max_modes: expected an integer in [1, {_MAX_MODES}], got {_show(m)}")
    out["max_modes"] = int(m)
    return out


def _plain(v: Any) -> float | list[float]:
    return float(v) if np.ndim(v) == 0 else [float(e) for e in v]


def _show(v: Any) -> str:
    """A value for an error message: never huge, never raising."""
    small = isinstance(v, (bool, float, np.floating)) or (isinstance(v, int) and abs(v) < 10**12)
    return repr(v)[:40] if small or v is None else type(v).__name__


def _exact_keys(d: dict, expected: set, where: str) -> None:
    missing, unknown = expected - set(d), set(d) - expected
    if missing:
        raise BaselineFormatError(f"{sorted(missing)[0]}: missing from {where}")
    if unknown:
        raise BaselineFormatError(f"{where}: unknown field {sorted(str(k)[:40] for k in unknown)[0]!r}")


def _number(v: Any, field: str, lo: float = -math.inf) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BaselineFormatError(f"{field}: expected a number, got {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:
        raise BaselineFormatError(f"{field}: number out of range") from None
    if not math.isfinite(f) or f < lo:
        raise BaselineFormatError(f"{field}: {f!r} is not a finite number >= {lo}")
    return f


def _integer(v: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BaselineFormatError(f"{field}: expected an integer in [{lo}, {hi}], got {_show(v)}")
    return v


def _vector(v: Any, field: str, n: int) -> np.ndarray:
    if not isinstance(v, list) or len(v) != n:
        raise BaselineFormatError(f"{field}: expected a list of {n} numbers")
    return np.array([_number(e, f"{field}[{i}]") for i, e in enumerate(v)], dtype=np.float64)


def _precision(v: Any, field: str, n: int) -> np.ndarray:
    """An n x n symmetric positive semi-definite matrix from lists, or BaselineFormatError."""
    if not isinstance(v, list) or len(v) != n:
        raise BaselineFormatError(f"{field}: expected a list of {n} rows")
    P = np.array([_vector(r, f"{field}[{i}]", n) for i, r in enumerate(v)])
    if not np.allclose(P, P.T, rtol=1e-9, atol=1e-12):
        raise BaselineFormatError(f"{field}: not symmetric")
    if np.linalg.eigvalsh(P).min() < -1e-9 * max(1.0, np.abs(P).max()):
        raise BaselineFormatError(f"{field}: not positive semi-definite")
    return P
