"""The alert record: what the detector raises and the response stage answers.

Defined once, here, in the stage that raises alerts.  Records are frozen: the
detector replaces an open alert (`dataclasses.replace`) when a later window
updates it, so an alert handed to the response stage, an incident or the API
never changes under it.  Dicts exist only at the edges: `Alert.to_dict()` is the
JSON of the API, the audit log, recordings and incidents; `Alert.from_dict()`
reads that JSON back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum
from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["AlertKind", "DETECTED_KINDS", "Evidence", "Alert", "finite"]


class AlertKind(str, Enum):
    """What raised an alert; the value is the word the API, the playbooks and the audit use."""

    ANOMALY = "anomaly"                 # a poll window scored above the device's threshold
    NEW_FLOW_BURST = "new_flow_burst"   # more new conversations within 1 s than its burst threshold
    OUTBREAK = "outbreak"               # several devices of one class anomalous on one feature
    LATERAL_PROBE = "lateral_probe"     # new internal peers over 10 s / 60 s / 10 min beyond its churn
    PORT_PROBE = "port_probe"           # new ports on one host over 10 s / 60 s / 10 min beyond its churn
    NEW_SERVICE = "new_service"         # an appliance used a (protocol, port) it never used while learning
    FAILED_CONNECTIONS = "failed_connections"   # connections to new hosts or services failed, beyond its churn
    ADDRESS_SCAN = "address_scan"       # failed connections on one port to 25 hosts in 5 min; never learned
    MANUAL = "manual"                   # an operator's response (POST /api/v1/responses)

    def __str__(self) -> str:
        return self.value


# The kinds the detector raises (and POST /api/v1/alerts may inject, playbooks may name).
DETECTED_KINDS: tuple[AlertKind, ...] = (AlertKind.ANOMALY, AlertKind.NEW_FLOW_BURST, AlertKind.OUTBREAK,
                                         AlertKind.LATERAL_PROBE, AlertKind.PORT_PROBE, AlertKind.NEW_SERVICE,
                                         AlertKind.FAILED_CONNECTIONS, AlertKind.ADDRESS_SCAN)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def finite(value: object) -> float | None:
    """`value` as a float if it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping)) if mapping else _EMPTY


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """One entry of an alert's `features`: a feature, what was observed, the normal range.

    An anomaly's entries are the baseline's explanation (z and share too); a burst's
    one entry carries `hosts`, `internal_hosts` and `top_port` in `extra`, where
    playbook conditions and `dst_ports` find them (`get`).  Fields an entry did not
    carry are None and left out of `to_dict()`.
    """

    feature: str | None = None
    observed: Any = None          # a number; an injected alert may carry anything
    low: Any = None
    high: Any = None
    z: Any = None
    share: Any = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _frozen(self.extra))

    def has(self, name: str) -> bool:
        if name in _STANDARD:
            return getattr(self, name) is not None
        return name in self.extra

    def get(self, name: str, default: Any = None) -> Any:
        if name in _STANDARD:
            value = getattr(self, name)
            return default if value is None else value
        return self.extra.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in _STANDARD if getattr(self, k) is not None}
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Evidence":
        if not isinstance(d, Mapping):
            raise ValueError(f"an alert's features entry must be an object, not {type(d).__name__}")
        feature = d.get("feature")
        if feature is not None and not isinstance(feature, str):
            raise ValueError("an alert's features entry names its feature as text")
        return cls(**{k: d[k] for k in _STANDARD if k in d},
                   extra={k: v for k, v in d.items() if k not in _STANDARD})


_STANDARD = ("feature", "observed", "low", "high", "z", "share")


@dataclass(frozen=True, kw_only=True)
class Alert:
    """One alert about a device (or, for an outbreak, about the `devices` listed)."""

    id: str
    time: float
    kind: AlertKind
    device: str | None                  # its name (None: a manual response without a device)
    mac: str | None
    score: float
    threshold: float = 0.0
    explanation: str = ""
    baseline: str = ""                  # own | class:<tag> | global | burst | correlation | manual
    features: tuple[Evidence, ...] = ()
    devices: tuple[str, ...] = ()       # an outbreak's device names
    tags: tuple[str, ...] = ()
    last_time: float = 0.0
    count: int = 1
    window: Mapping[str, float] = field(default_factory=lambda: _EMPTY)   # the device's whole window: feature -> value
    remote: str | None = None           # its top new external destination (block_ip target: alert)
    reopened: float = 0.0               # when its story last came back after it closed (0: never);
                                        # a response released before then applies again

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", AlertKind(self.kind))
        object.__setattr__(self, "features", tuple(
            e if isinstance(e, Evidence) else Evidence.from_dict(e) for e in self.features))
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "window", _frozen(self.window))

    # ------------------------------------------------------------ what playbooks read
    def value(self, name: str) -> float | None:
        """A number the alert carries about its device: `window[name]`, else its evidence.

        `window` is the device's whole window at alert time.  Otherwise the entry of
        `features` whose feature is `name` gives its `observed`, and any entry carrying
        a key `name` (such as a burst's `top_port`) gives that value.
        """
        if name in self.window:
            return finite(self.window[name])
        for e in self.features:
            if e.feature == name:
                return finite(e.observed)
        for e in self.features:
            if e.has(name):
                return finite(e.get(name))
        return None

    def remote_address(self) -> str | None:
        """`remote`, else the first `remote` of its evidence (an injected alert may carry it there)."""
        if isinstance(self.remote, str):
            return self.remote
        for e in self.features:
            value = e.get("remote")
            if isinstance(value, str):
                return value
        return None

    # ------------------------------------------------------------ the edges
    def to_dict(self) -> dict[str, Any]:
        """The JSON of the API, the audit log, recordings and incidents."""
        return {
            "id": self.id, "time": self.time, "kind": self.kind.value, "device": self.device,
            "mac": self.mac, "score": round(self.score, 3), "threshold": round(self.threshold, 3),
            "explanation": self.explanation, "baseline": self.baseline,
            "features": [e.to_dict() for e in self.features], "devices": list(self.devices),
            "tags": list(self.tags), "last_time": self.last_time, "count": self.count,
            "window": dict(self.window), "remote": self.remote, "reopened": self.reopened,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Alert":
        """An alert read back from its JSON; ValueError names what is wrong."""
        if not isinstance(d, Mapping):
            raise ValueError("an alert must be an object")
        unknown = sorted(set(d) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown alert field {unknown[0]!r}")
        for key in ("id", "time", "kind", "score"):
            if key not in d:
                raise ValueError(f"an alert needs {key!r}")
        try:
            kind = AlertKind(d["kind"])
        except ValueError:
            raise ValueError(f"unknown alert kind {d['kind']!r}") from None
        window = d.get("window") or {}
        if not isinstance(window, Mapping):
            raise ValueError("an alert's window maps feature names to numbers")
        features = d.get("features") or ()
        if not isinstance(features, (list, tuple)):
            raise ValueError("an alert's features are a list of objects")
        return cls(
            id=str(d["id"]), time=float(d["time"]), kind=kind, device=d.get("device"), mac=d.get("mac"),
            score=float(d["score"]), threshold=float(d.get("threshold") or 0.0),
            explanation=str(d.get("explanation") or ""), baseline=str(d.get("baseline") or ""),
            features=tuple(Evidence.from_dict(e) for e in features),
            devices=tuple(d.get("devices") or ()), tags=tuple(d.get("tags") or ()),
            last_time=float(d.get("last_time") or 0.0), count=int(d.get("count") or 1),
            window=window, remote=d.get("remote") if isinstance(d.get("remote"), str) else None,
            reopened=float(d.get("reopened") or 0.0))


_FIELDS = frozenset(f.name for f in fields(Alert))
