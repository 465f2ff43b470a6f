"""Per-device baselines: warm-up, class priors, drift, persistence.

A device first learns for `learn_seconds`; meanwhile it is judged against the
prior of its class (the pooled windows of devices with the same first tag that
already have a baseline) or, with no class prior, against a conservative
global prior.  Fitting is spread over polls (at most `fit_budget` devices and about
`fit_seconds` per call, at least one device) so that scikit-learn never holds the hub for
long: a fit with modes costs tens of milliseconds, and a fleet may finish warm-up at once.

State is a JSON file of numbers: baseline parameters and a small sample of
training windows per device, the known destinations and the frozen novelty
memories.  Loading it never executes code; a corrupt or hostile file, a damaged
novelty entry included, is set aside and learning starts afresh: the file is
written whole, so a part of it that does not read means none of it can be trusted.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field

import math

import numpy as np

from controller.detection.bank import BaselineBank
from controller.detection.baseline import BaselineFormatError, DeviceBaseline
from controller.detection.novelty import NoveltyFormatError, NoveltyMemory

LOG = logging.getLogger("iotguard.profiles")

SCHEMA = "iotguard.profiles/1"
SAMPLE_SIZE = 64          # windows kept per device for class priors and restarts
MAX_LEARN_WINDOWS = 4096  # cap on the windows buffered while learning
MIN_WINDOWS = 10
MV_WINDOWS_PER_FEATURE = 10
MAX_STATE_BYTES = 256 * 1024 * 1024


@dataclass
class Profile:
    mac: str
    cls: str | None
    started: float
    windows: list = field(default_factory=list)   # float32 rows, while learning
    sample: np.ndarray | None = None               # float32 (<= SAMPLE_SIZE, F) once fitted
    baseline: DeviceBaseline | None = None
    fitted_at: float | None = None
    burst_max: int = 0                             # largest 1-s new-flow burst while learning

    @property
    def learning(self) -> bool:
        return self.baseline is None


class BaselineStore:
    def __init__(self, n_features: int, learn_seconds: float = 300.0, far: float = 1e-4,
                 two_sided: tuple[int, ...] = (), max_shift_per_day: float = 0.7,
                 fit_budget: int = 20, prior_refresh: float = 60.0, known=None,
                 fit_seconds: float = 0.1,
                 fractions: tuple[int, ...] = (), min_level: float | tuple[float, ...] = 0.0) -> None:
        self.n_features = n_features
        self.min_level = min_level     # per feature, DeviceBaseline's: below it a rate is noise
        self.fractions = frozenset(fractions)   # features that are shares in [0, 1]
        self.known = known          # KnownDestinations, persisted alongside
        self.novelty: NoveltyMemory | None = None   # the detector's, persisted alongside
        self.learn_seconds = learn_seconds
        self.far = far
        self.two_sided = tuple(two_sided)
        self.max_shift_per_day = max_shift_per_day
        self.fit_budget = fit_budget
        self.fit_seconds = fit_seconds
        self.prior_refresh = prior_refresh
        self.profiles: dict[str, Profile] = {}
        self.bank = BaselineBank(n_features)   # the profiles' own baselines, stacked for scoring
        self.priors: dict[str | None, DeviceBaseline] = {}   # None: the global prior
        self._priors_at = -1e18
        self._first_prior_at = math.inf   # when any prior first existed (this process)
        self._priors_dirty = False
        self._rng = random.Random(0)

    def _new_baseline(self, n_windows: int, conservative: bool = False) -> DeviceBaseline:
        # A fraction spans at most ln 2 after log1p, so shares need a finer floor than counts.
        floor = [0.1 if j in self.fractions else 0.5 for j in range(self.n_features)]
        # A covariance from fewer than ~10 windows per feature scores new windows far more
        # harshly than its training ones (seen: false alarms after a 30 s warm-up).
        multivariate = n_windows >= MV_WINDOWS_PER_FEATURE * self.n_features
        if conservative:
            return DeviceBaseline(far=self.far, min_scale=[2 * f for f in floor], z_floor=6.0,
                                  two_sided=self.two_sided, multivariate=multivariate,
                                  min_level=self.min_level)
        return DeviceBaseline(far=self.far, min_scale=floor, two_sided=self.two_sided,
                              multivariate=multivariate, min_level=self.min_level)

    def profile(self, mac: str, cls: str | None, now: float) -> Profile:
        p = self.profiles.get(mac)
        if p is None:
            p = self.profiles[mac] = Profile(mac, cls, now)
        elif p.cls != cls and cls is not None:
            p.cls = cls   # the inventory named it since
        return p

    def judge(self, mac: str, cls: str | None, x: np.ndarray, now: float) -> tuple[DeviceBaseline | None, str]:
        """The baseline to score this window against, and where it comes from."""
        p = self.profile(mac, cls, now)
        if p.baseline is not None:
            return p.baseline, "own"
        if len(p.windows) < MAX_LEARN_WINDOWS:
            p.windows.append(np.asarray(x, dtype=np.float32))
        if p.started < self._first_prior_at:
            # It began learning alongside the devices the priors were made from (the
            # network's first warm-up): priors judge newcomers, not co-learners, whose
            # own baselines are due within learn_seconds anyway.
            return None, "learning"
        prior = self.priors.get(p.cls) if p.cls is not None else None
        if prior is not None:
            return prior, f"class:{p.cls}"
        prior = self.priors.get(None)
        return (prior, "global") if prior is not None else (None, "learning")

    def current(self, mac: str, cls: str | None) -> tuple[DeviceBaseline | None, str]:
        """The baseline a device is measured against now, without recording anything
        (the incident report's band): its own, else its class prior, else the global one."""
        p = self.profiles.get(mac)
        if p is not None and p.baseline is not None:
            return p.baseline, "own"
        if cls is not None and cls in self.priors:
            return self.priors[cls], f"class:{cls}"
        prior = self.priors.get(None)
        return (prior, "global") if prior is not None else (None, "")

    def ready(self, now: float) -> list[Profile]:
        return [p for p in self.profiles.values()
                if p.learning and now - p.started >= self.learn_seconds and len(p.windows) >= MIN_WINDOWS]

    def fit_pending(self, now: float) -> list[str]:
        """Fit up to `fit_budget` devices whose warm-up is over, stopping once `fit_seconds`
        are spent (after one at least); refresh priors."""
        fitted = []
        start = time.perf_counter()
        for p in self.ready(now)[: self.fit_budget]:
            if fitted and time.perf_counter() - start >= self.fit_seconds:
                break
            X = self._defined(np.vstack(p.windows).astype(np.float64))
            p.baseline = self._new_baseline(len(X)).fit(X)
            self.bank.put(p.mac, p.baseline)
            p.fitted_at = now
            keep = self._rng.sample(range(len(X)), min(SAMPLE_SIZE, len(X)))
            p.sample = X[sorted(keep)].astype(np.float32)
            p.windows = []
            fitted.append(p.mac)
            self._priors_dirty = True
        if self._priors_dirty and (now - self._priors_at >= self.prior_refresh or not self.priors):
            self._fit_priors(now)
        return fitted

    @staticmethod
    def _defined(X: np.ndarray) -> np.ndarray:
        """Shrink sparse windows' mix towards the median of the windows that sent."""
        from controller.telemetry.features import INDEX, shrink_tx_mix
        sent = X[X[:, INDEX["tx_packets"]] > 0]
        fill = np.median(sent, axis=0) if len(sent) else np.zeros(X.shape[1])
        return shrink_tx_mix(X, fill)

    def _fit_priors(self, now: float) -> None:
        by_cls: dict[str | None, list[np.ndarray]] = {}
        for p in self.profiles.values():
            if p.sample is None:
                continue
            by_cls.setdefault(None, []).append(p.sample)     # the global prior pools everyone
            if p.cls is not None:
                by_cls.setdefault(p.cls, []).append(p.sample)
        priors: dict[str | None, DeviceBaseline] = {}
        for cls, samples in by_cls.items():
            X = self._defined(np.vstack(samples).astype(np.float64))
            if len(X) > 2000:
                X = X[np.asarray(self._rng.sample(range(len(X)), 2000))]
            if len(X) >= MIN_WINDOWS:
                priors[cls] = self._new_baseline(len(X), conservative=cls is None).fit(X)
        self.priors = priors
        self._priors_at = now
        self._priors_dirty = False
        if priors and self._first_prior_at == math.inf:
            self._first_prior_at = now

    def fold(self, mac: str, x: np.ndarray, now: float, score: float | None = None) -> bool:
        """`DeviceBaseline.fold` of one window, through the bank (which holds its numbers)."""
        p = self.profiles.get(mac)
        if p is None or p.baseline is None:
            return False
        if not math.isfinite(now):
            raise ValueError(f"fold: now must be a finite time in seconds, got {now!r}")
        r = self.bank.row(mac, p.baseline)
        x = np.asarray(x, dtype=np.float64).reshape(1, self.n_features)
        if score is None:
            score = float(self.bank.scores(np.array([r]), x)[0])
        if score > 0.5 * p.baseline.threshold_:     # DeviceBaseline.fold's default suspicion
            return False
        self.bank.fold(np.array([r]), x, now, max_shift_per_day=self.max_shift_per_day)
        return True

    def fold_rows(self, rows: np.ndarray, X: np.ndarray, now: float) -> None:
        """Fold window X[k] into bank row rows[k] for every k: windows already judged normal."""
        self.bank.fold(rows, X, now, max_shift_per_day=self.max_shift_per_day)

    def forget(self, mac: str) -> None:
        """Drop a device's profile and its banked baseline."""
        self.profiles.pop(mac, None)
        self.bank.forget(mac)

    def note_burst(self, mac: str, count: int, floor: int) -> int:
        """Learn a learning device's normal burst size; returns its burst threshold."""
        p = self.profiles.get(mac)
        if p is None:
            return floor
        if p.learning and count < floor:
            p.burst_max = max(p.burst_max, count)
        return max(floor, 2 * p.burst_max)

    # ------------------------------------------------------------ persistence
    def to_dict(self, now: float | None = None) -> dict:
        """The saved form.  With `now` (the store's clock), novelty memories whose warm-up
        is over are frozen first (NoveltyMemory.settle), so that they are saved."""
        if self.novelty is not None and now is not None:
            self.novelty.settle(now, lambda mac: (p := self.profiles.get(mac)) is None or p.learning)
        return {"schema": SCHEMA, "saved": time.time(), "n_features": self.n_features, "profiles": [
            {"mac": p.mac, "cls": p.cls, "started": p.started, "fitted_at": p.fitted_at,
             "burst_max": p.burst_max,
             "sample": None if p.sample is None else np.round(p.sample.astype(np.float64), 6).tolist(),
             "windows": np.round(np.asarray(p.windows, dtype=np.float64), 6).tolist() if p.windows else [],
             "baseline": None if p.baseline is None else p.baseline.to_dict()}
            for p in self.profiles.values()],
            "known": self.known.to_dict() if self.known is not None else {},
            "familiar": self.known.familiar_to_dict() if self.known is not None else {},
            **({"novelty": self.novelty.to_dict()} if self.novelty is not None else {})}

    def save(self, path: str, now: float | None = None) -> None:
        """Atomically replace `path` (0600); `now` as in to_dict."""
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(now), f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_dict(self, d: object, now: float | None = None) -> str:
        """Replace the profiles, known destinations and novelty memories with validated ones
        from `d` (BaselineFormatError if any part is bad; nothing is replaced then).
        `now` is the clock the store runs on (a replay's capture time; default the wall
        clock).  Returns what the novelty part says, for the load message ("" if nothing to say)."""
        profiles = _parse_state(d, self.n_features)
        known = None
        if self.known is not None:
            try:
                known = type(self.known).from_dict(d.get("known", {}), familiar=d.get("familiar", {}))
            except (ValueError, TypeError, AttributeError) as e:
                raise BaselineFormatError(f"known: {e}") from None
        memories = _parse_novelty(d, profiles)
        if known is not None:
            self.known.replace_with(known)
        if self.novelty is not None:
            self.novelty.restore(memories or {})
        self.profiles = {p.mac: p for p in profiles}
        self.bank.clear()
        for p in profiles:
            if p.baseline is not None:
                self.bank.put(p.mac, p.baseline)
        self._priors_dirty = True
        self._fit_priors(time.time() if now is None else float(now))
        return self._novelty_note(memories, sum(1 for p in profiles if p.baseline is not None))

    def _novelty_note(self, memories: dict | None, baselined: int) -> str:
        """Which baselined devices re-learn their novelty memory (meanwhile what they do
        becomes normal to them): worth a warning when it is all of them."""
        if self.novelty is None or not baselined:
            return ""
        if memories is None:
            note = (f"it has no novelty memory (saved before iotguard kept it): {_devices(baselined)} "
                    f"with a baseline learn what is new to them again for {self.learn_seconds:g} s, "
                    f"without novelty alerts meanwhile")
            LOG.warning(note)
            return note
        missing = baselined - len(memories)
        return (f"novelty memory of {_devices(len(memories))}" +
                (f"; {_devices(missing)} with a baseline had none frozen yet and learn it again"
                 if missing else ""))

    def load(self, path: str) -> str:
        """Load state; a bad file is moved aside and reported, never fatal."""
        if not os.path.exists(path):
            return "no saved baselines; learning from scratch"
        try:
            note = self.load_dict(read_state(path))
            return f"loaded {len(self.profiles)} device profiles from {path}" + (f"; {note}" if note else "")
        except (OSError, ValueError, RecursionError) as e:   # JSONDecodeError, BaselineFormatError
            aside = f"{path}.corrupt-{int(time.time())}"
            try:
                os.replace(path, aside)
            except OSError:
                aside = "(could not move it)"
            self.profiles = {}
            self.bank.clear()
            self.priors = {}
            if self.novelty is not None:
                self.novelty.restore({})
            msg = f"{path}: unusable baseline state ({e}); moved to {aside}, learning from scratch"
            LOG.error(msg)
            return msg


def read_state(path: str) -> object:
    """The JSON of a state file, bounded by MAX_STATE_BYTES.  OSError if it cannot be read,
    BaselineFormatError if it is too large, ValueError if it is not JSON (or not UTF-8)."""
    if os.path.getsize(path) > MAX_STATE_BYTES:
        raise BaselineFormatError(f"file is larger than {MAX_STATE_BYTES} bytes")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _parse_state(d: object, n_features: int) -> list[Profile]:
    def bad(where: str, what: str):
        raise BaselineFormatError(f"{where}: {what}")

    if not isinstance(d, dict):
        bad("state", "not a JSON object")
    if d.get("schema") != SCHEMA:
        bad("schema", f"expected {SCHEMA!r}, got {str(d.get('schema'))[:40]!r}")
    if d.get("n_features") != n_features:
        bad("n_features", f"expected {n_features}, got {str(d.get('n_features'))[:20]}")
    items = d.get("profiles")
    if not isinstance(items, list):
        bad("profiles", "not a list")
    out = []
    for i, it in enumerate(items):
        where = f"profiles[{i}]"
        if not isinstance(it, dict):
            bad(where, "not an object")
        mac = it.get("mac")
        if not isinstance(mac, str) or len(mac) != 17:
            bad(f"{where}.mac", "not a MAC address")
        cls = it.get("cls")
        if cls is not None and (not isinstance(cls, str) or len(cls) > 64):
            bad(f"{where}.cls", "not a class name")
        nums = {}
        for k in ("started", "fitted_at", "burst_max"):
            v = it.get(k)
            if v is None and k == "fitted_at":
                nums[k] = None
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                bad(f"{where}.{k}", "not a non-negative number")
            nums[k] = v
        sample = _matrix(it.get("sample"), f"{where}.sample", n_features, allow_none=True)
        windows = _matrix(it.get("windows", []), f"{where}.windows", n_features, allow_none=False)
        base = it.get("baseline")
        baseline = None
        if base is not None:
            try:
                baseline = DeviceBaseline.from_dict(base)
            except BaselineFormatError as e:
                bad(f"{where}.baseline", str(e))
            if baseline.n_features_in_ != n_features:
                bad(f"{where}.baseline", f"has {baseline.n_features_in_} features, expected {n_features}")
        out.append(Profile(mac, cls, float(nums["started"]),
                           windows=[] if windows is None else list(windows[:MAX_LEARN_WINDOWS]),
                           sample=sample, baseline=baseline, fitted_at=nums["fitted_at"],
                           burst_max=int(nums["burst_max"])))
    return out


def _devices(n: int) -> str:
    return f"{n} device{'s' if n != 1 else ''}"


def _parse_novelty(d: dict, profiles: list[Profile]) -> dict | None:
    """The frozen novelty memories in `d`, each of a device with a baseline in the same file
    (None: a file from before they were saved)."""
    if "novelty" not in d:
        return None
    try:
        memories = NoveltyMemory.parse(d["novelty"])
    except NoveltyFormatError as e:
        raise BaselineFormatError(f"novelty: {e}") from None
    baselined = {p.mac for p in profiles if p.baseline is not None}
    for i, mac in enumerate(memories):
        if mac not in baselined:
            raise BaselineFormatError(f"novelty: devices[{i}].mac: {mac} has no baseline in this file")
    return memories


def _matrix(v: object, where: str, n_features: int, allow_none: bool) -> np.ndarray | None:
    if v is None and allow_none:
        return None
    if not isinstance(v, list):
        raise BaselineFormatError(f"{where}: not a list")
    if not v:
        return np.zeros((0, n_features), dtype=np.float32)
    if len(v) > MAX_LEARN_WINDOWS:
        raise BaselineFormatError(f"{where}: more than {MAX_LEARN_WINDOWS} rows")
    for r, row in enumerate(v):
        if not isinstance(row, list) or len(row) != n_features or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in row):
            raise BaselineFormatError(f"{where}[{r}]: not a row of {n_features} numbers")
    a = np.asarray(v, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise BaselineFormatError(f"{where}: values must be finite and non-negative")
    return a.astype(np.float32)


def store_for(config, known=None) -> BaselineStore:
    """The store for iotguard's feature set with the config's detection settings."""
    from controller.telemetry.features import FEATURES, FRACTIONS, MIN_LEVEL, TWO_SIDED
    return BaselineStore(len(FEATURES), config.learn_seconds, config.far, TWO_SIDED,
                         config.max_shift_per_day, known=known, fractions=FRACTIONS, min_level=MIN_LEVEL)
