"""Recording the detector's input, and replaying it offline.

`iotguard run --record FILE` writes one JSON line per poll window: every active
device's feature vector, the new-conversation events of that window and the
connections judged failed in it (`failed`, optional: recordings from before have none).
`iotguard replay FILE` feeds them to a fresh detector, with no switch and no
root, and prints the alerts as JSON lines.  The schema is versioned; a reader
refuses lines it does not understand, naming the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Iterator

import numpy as np

from controller.telemetry.features import FEATURES, WindowFeatures

SCHEMA = "iotguard.record/1"


class RecordError(ValueError):
    pass


@dataclass
class Window:
    time: float
    features: WindowFeatures
    who: dict[str, tuple[str, tuple[str, ...]]]
    events: list[tuple[float, str, int, int, int]] = field(default_factory=list)
    failed: list[tuple[float, str, int, int]] = field(default_factory=list)   # (time, mac, ip, port)


class Recorder:
    """Appends windows to a file; flushed per line so a crash loses at most one."""

    def __init__(self, path: str, poll_interval: float) -> None:
        self.f: IO[str] = open(path, "a", encoding="utf-8")
        self.events: list[list] = []
        self.failures: list[list] = []
        if self.f.tell() == 0:
            self._line({"schema": SCHEMA, "features": list(FEATURES), "poll_interval": poll_interval})

    def _line(self, obj: dict) -> None:
        self.f.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.f.flush()

    def event(self, now: float, mac: str, proto: int, ip: int, port: int) -> None:
        self.events.append([round(now, 6), mac, proto, ip, port])

    def failed(self, now: float, mac: str, ip: int, port: int) -> None:
        self.failures.append([round(now, 6), mac, ip, port])

    def window(self, now: float, wf: WindowFeatures, who) -> None:
        devices = []
        for i, mac in enumerate(wf.macs):
            name, tags = who(mac)
            devices.append({"mac": mac, "name": name, "tags": list(tags),
                            "x": [round(float(v), 6) for v in wf.X[i]],
                            "top_port": int(wf.top_port[i]), "top_port_hosts": int(wf.top_port_hosts[i])})
        line = {"t": round(now, 6), "window": round(wf.window, 6), "devices": devices, "events": self.events}
        if self.failures:
            line["failed"] = self.failures
        self._line(line)
        self.events, self.failures = [], []

    def close(self) -> None:
        self.f.close()


def read(f: IO[str], source: str = "<record>") -> Iterator[Window]:
    """Parse a recording; RecordError names the line of anything malformed."""
    header = None
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: expected a JSON object")
        if header is None:
            if obj.get("schema") != SCHEMA:
                raise RecordError(f"{where}: expected schema {SCHEMA!r}, got {str(obj.get('schema'))[:40]!r}")
            if obj.get("features") != list(FEATURES):
                raise RecordError(f"{where}: recorded features differ from this version's: "
                                  f"{obj.get('features')!r}")
            header = obj
            continue
        yield _window(obj, where)
    if header is None:
        raise RecordError(f"{source}: empty recording")


def _window(obj: dict, where: str) -> Window:
    try:
        t = float(obj["t"])
        w = float(obj["window"])
        macs, rows, ports, hosts, who = [], [], [], [], {}
        for d in obj["devices"]:
            x = [float(v) for v in d["x"]]
            if len(x) != len(FEATURES) or not all(np.isfinite(x)):
                raise ValueError(f"device {d.get('mac')!r}: x must be {len(FEATURES)} finite numbers")
            macs.append(str(d["mac"]))
            rows.append(x)
            ports.append(int(d.get("top_port", -1)))
            hosts.append(int(d.get("top_port_hosts", 0)))
            who[str(d["mac"])] = (str(d["name"]), tuple(str(t) for t in d["tags"]))
        events = [(float(e[0]), str(e[1]), int(e[2]), int(e[3]), int(e[4])) for e in obj["events"]]
        failed = [(float(e[0]), str(e[1]), int(e[2]), int(e[3])) for e in obj.get("failed", [])]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise RecordError(f"{where}: malformed window: {e}") from None
    X = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))
    wf = WindowFeatures(time=t, window=w, macs=macs, X=X, top_port=np.asarray(ports, dtype=np.int64),
                        top_port_hosts=np.asarray(hosts, dtype=np.int64))
    return Window(t, wf, who, events, failed)


def replay(f: IO[str], config, source: str = "<record>") -> Iterator[dict]:
    """Run a fresh detector over a recording; yields alerts as dicts, in order."""
    from controller.detection.detector import Detector
    from controller.detection.profiles import store_for

    names: dict[str, tuple[str, tuple[str, ...]]] = {}

    def who(mac: str) -> tuple[str, tuple[str, ...]]:
        dev = config.device_by_mac(mac)
        if dev is not None:
            return dev.name, tuple(dev.tags)
        return names.get(mac, ("dev-" + mac.replace(":", "")[-6:], ()))

    detector = Detector(config, store_for(config), who)
    for win in read(f, source):
        names.update(win.who)
        for t, mac, proto, ip, port in win.events:
            for alert in detector.on_new_flow(mac, proto, ip, port, t):
                yield alert.to_dict()
        for t, mac, ip, port in win.failed:
            detector.on_failed(mac, ip, port, t)
        for alert in detector.on_window(win.features, win.time):
            yield alert.to_dict()
