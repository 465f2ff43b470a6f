"""Alerts: scoring each window, new-flow bursts, outbreaks, and the words for them.

Three paths raise alerts about a device:

* periodic: every poll window, each active device's feature vector is scored
  against its baseline (or its class/global prior while it learns);
* event-driven: every new conversation a device starts arrives as a packet-in;
  more distinct destinations within one second than its burst threshold raises
  `new_flow_burst` at once, without waiting for the next poll;
* novelty (`novelty.py`): what is new to a device over 10 s to 10 min, beyond
  its learned churn, and address scans (`scans.py`): failed connections on one
  port to many hosts, which are not judged against the warm-up at all.

An alert stays open while its device stays anomalous (later windows update it
rather than repeat it), and several devices of one class anomalous on the same
leading feature within `outbreak_seconds` raise one `outbreak` alert.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass, replace
from typing import Callable

from controller.addresses import Subnets
from controller.config import Config
from controller.openflow import rules
import numpy as np

from controller.telemetry.features import FEATURES, INDEX, RX_PER_TX, WindowFeatures, rx_per_tx, shrink_tx_mix
from controller.detection.alert import Alert, AlertKind, Evidence
from controller.detection.attribution import Attribution
from controller.detection.novelty import FAILED, HORIZONS, Novelty, NoveltyMemory, service_name
from controller.detection.profiles import BaselineStore
from controller.detection.scans import HORIZON as SCAN_HORIZON, SCANNED, Scan, ScanCounter

CLEAR_WINDOWS = 3        # normal windows before an anomaly alert closes
# ... but the same story within this many seconds of its close reopens it: one alert, not
# one per burst of a persistent connection (an IoT-23 Echo's keepalives to one new cloud
# host, every 4-6 s for three hours, were 1,524 alerts; an IoT-23 HUE's sync every 15 min,
# 82 a day).  An hour, as Zeek's default notice suppression interval.
STORY_GAP = 3600.0
STORIES = 4              # closed anomalies per device a new one may continue (bounded: MAX_ALERTS devices)
BURST_QUIET = 5.0        # seconds without a burst before a burst alert closes
SUSPICION = 0.5          # windows scoring above this share of the threshold are never folded
ESCALATION = 1.5         # an open alert is handed to the playbooks again when its score grows this much
# ... or when a count of its window is GROWTH times the one they last saw.  Scores are in
# log space: an upload whose first, partial window sent 1.2 MB and whose next sent 39 MB
# moved from 8 to 9, while a playbook's `tx_bytes > 2000000` only matched the second
# (seen in CI: block-exfiltration never fired, the upload was over within 2 s).
GROWTH = 2.0
# ... and by at least this much: small counts double by chance (1 host, then 2).
GROWING: dict[str, float] = {"tx_bytes": 65536.0, "rx_bytes": 65536.0, "tx_packets": 100.0, "rx_packets": 100.0,
                             "new_flows": 5.0, "distinct_dst_ips": 5.0, "lateral_peers": 3.0,
                             "distinct_dst_ports": 5.0, "dns_queries": 5.0}
# A window anomaly is raised at once when its score is CONFIRM times its threshold; a
# window between the threshold and that is raised only if another over the threshold came
# within CONFIRM_SECONDS before it.  Real benign devices cross a threshold calibrated on a
# 5-minute warm-up by a hair, once, every few hours (a cloud sync, a protocol they did not
# use while learning); an attack that only just crosses it does so again in its next windows.
CONFIRM = 1.5
CONFIRM_SECONDS = 30.0
EVERYDAY_CLOUD_PORTS = frozenset({53, 80, 123, 443, 853, 8443})   # DNS, HTTP(S), NTP, DoT
# Asking the LAN's resolver or time server is no news either, however rarely a device does it
# (an IoT-23 Raspberry Pi first asked its router's DNS hours after warm-up); a sweep of port 53
# still shows as new internal peers (lateral_probe).
EVERYDAY_LAN_SERVICES = frozenset({(rules.IPPROTO_UDP, 53), (rules.IPPROTO_TCP, 53), (rules.IPPROTO_UDP, 123)})
REHAND_SECONDS = 5.0     # ... and with its current window at least this often while it stays anomalous
MAX_ALERTS = 10000
# The volume fast path (`Detector.on_port_rates`) acts only on a device sending at least this
# many packets/s, and this many times the top of its own packet-rate band: a flood, not a peak.
FAST_MIN_PPS = 500.0
FAST_FACTOR = 10.0
NOVELTY_GRACE = 1.0      # s a new item waits before novelty decides on it: a burst (1 s) speaks first
NOVELTY_QUIET = 60.0     # s without new items still over the allowance before a novelty alert closes
DEAD_END_FAILURES = 3    # failures to one new internet host before a failed_connections alert names it
NOVELTY_PENDING = 64     # event snapshots kept per device between two decisions
_REMOTE = "remote:"      # an outbreak lead: the same new remote address
_NEW_DST = INDEX["new_dst_share"]
_NOVELTY_ALERTS = {"new_internal_peers": AlertKind.LATERAL_PROBE, "new_ports_one_host": AlertKind.PORT_PROBE,
                   FAILED: AlertKind.FAILED_CONNECTIONS}
# A bot retrying a dead C&C every few minutes is one story: its alert stays open over the
# whole horizon its failures are counted on, not the default minute.
# ... and a scan over the horizon its hosts are counted on.
_QUIET = {AlertKind.FAILED_CONNECTIONS.value: HORIZONS[-1], AlertKind.ADDRESS_SCAN.value: SCAN_HORIZON}
_NOVELTY_KINDS = frozenset({*(k.value for k in _NOVELTY_ALERTS.values()), AlertKind.NEW_SERVICE.value,
                            AlertKind.ADDRESS_SCAN.value})


# ------------------------------------------------------------------ words

def _num(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}".rstrip("0").rstrip(".") if v % 1 else f"{v:.0f}"


def _bytes(v: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if v < 1000:
            return f"{_num(v)} {unit}"
        v /= 1000
    return f"{_num(v)} TB"


def _range(lo: float, hi: float, fmt=_num) -> str:
    return f"{fmt(lo)}–{fmt(hi)}"


_COUNTS = {"new_flows", "distinct_dst_ips", "lateral_peers", "distinct_dst_ports", "dns_queries"}


def describe(name: str, c, window: float, port: int = -1, port_hosts: int = 0,
             row: dict[str, float] | None = None) -> str:
    """One sentence for the leading contribution `c` (feature, observed, low, high).

    `row` is the whole window, so a scan reads as one fact: connections, hosts, port.
    """
    f, v, lo, hi = c.feature, c.observed, c.low, c.high
    if f in _COUNTS:
        lo, hi = math.floor(lo), math.ceil(hi)
    row = row or {}
    w = _num(window)
    pct = lambda x: f"{x * 100:.0f}%"  # noqa: E731
    base = f"its baseline is {_range(lo, hi)}"
    if f in ("new_flows", "distinct_dst_ips", "lateral_peers"):
        conns = row.get("new_flows", v if f == "new_flows" else 0)
        hosts = row.get("lateral_peers" if f == "lateral_peers" else "distinct_dst_ips", v)
        ports = row.get("distinct_dst_ports", 0)
        kind = ("internal host" if f == "lateral_peers" else "host") + ("" if hosts == 1 else "s")
        unit = "connections" if f == "new_flows" else kind
        opened = f"opened {_num(conns)} new connections to " if conns >= hosts and conns > 0 else "contacted "
        if port >= 0 and port_hosts * 2 >= hosts and ports <= 2:
            where = f" on port {port}"                 # a sweep: many hosts, one service
        elif ports > 1:
            where = f" on {_num(ports)} ports"          # a port scan: few hosts, many ports
        else:
            where = ""
        return f"{name} {opened}{_num(hosts)} {kind}{where} in {w} s; {base} {unit}"
    phrases = {
        "distinct_dst_ports": f"{name} contacted {_num(v)} distinct ports in {w} s; {base} ports",
        "tx_bytes": f"{name} sent {_bytes(v)}/s; its baseline is {_range(lo, hi, _bytes)}/s",
        "rx_bytes": f"{name} received {_bytes(v)}/s; its baseline is {_range(lo, hi, _bytes)}/s",
        "tx_packets": f"{name} sent {_num(v)} packets/s; {base} packets/s",
        "rx_packets": f"{name} received {_num(v)} packets/s; {base} packets/s",
        "new_dst_share": f"{name} sent {pct(v)} of its traffic to hosts it had never talked to; "
                         f"its baseline is {pct(lo)}–{pct(hi)}",
        "mean_pkt_size": f"{name}'s packets averaged {_num(v)} bytes; {base} bytes",
        "dns_queries": f"{name} sent {_num(v)} DNS queries in {w} s; {base}",
    }
    if f in phrases:
        return phrases[f]
    proto = f.removesuffix("_share").upper()
    return f"{proto} made up {pct(v)} of {name}'s packets; its baseline is {pct(lo)}–{pct(hi)}"


def _h(h: float) -> str:
    return f"{h / 60:g}min" if h >= 600 else f"{h:g}s"


def _dotted(ip: int) -> str:
    return ".".join(str((ip >> s) & 255) for s in (24, 16, 8, 0))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _examples(items, most: int = 3) -> str:
    items = list(dict.fromkeys(items))
    return ", ".join(items[:most]) + (", …" if len(items) > most else "")


def _services_evidence(entries, r) -> dict:
    used = sorted({(e[2], e[3]) for e in entries})
    return {"feature": "new_services", "observed": len(used), "low": 0, "high": 0,
            "services": [service_name(p, q) for p, q in used],
            "learned_services": [service_name(p, q) for p, q in r.learned_services]}


def _lateral_words(name: str, hits, count: int, h: float, r) -> str:
    # The first sight of a new neighbour is often the ARP before the SYN: the services
    # are those tried on these hosts (pairs new to the device), whatever came first.
    hosts_hit = {e[1] for e in hits}
    services = sorted({service_name(e[2], e[3]) for e in hits + r.recent("new_ports_one_host", h)
                       if e[3] >= 0 and e[1] in hosts_hit})
    if not services:
        how = "looked for"
        tail = " with ARP requests"
    else:
        how = f"tried {' or '.join(services)} on" if len(services) <= 3 else f"tried {len(services)} services on"
        tail = ""
    hosts = _examples([_dotted(e[1]) for e in reversed(hits)][::-1])
    return (f"{name} {how} {_plural(count, 'internal host')} it had never talked to{tail} in the last "
            f"{_num(h)} s ({hosts}); while learning it talked to {r.learned_peers}")


# ------------------------------------------------------------------ detector

def _failed_words(name: str, hits, count: int, h: float, r) -> str:
    """"camera opened 4 connections to hosts or services it never used that got no answer or
    were refused, in the last 10 min (HTTPS to 66.85.157.90 ×3, Telnet to 10.0.0.7); while
    learning none of its connections failed": each (service, host) once, with its count."""
    by = Counter((e[3], e[1]) for e in hits)
    shown = [f"{service_name(rules.IPPROTO_TCP, port)} to {_dotted(ip)}" + (f" ×{n}" if n > 1 else "")
             for (port, ip), n in by.most_common()]
    learned = r.learned_failures
    return (f"{name} opened {_plural(count, 'connection')} to hosts or services it never used that got no "
            f"answer or were refused, in the last {f'{h / 60:g} min' if h >= 600 else f'{h:g} s'} "
            f"({_examples(shown)}); while learning "
            + ("none of its connections failed" if learned == 0 else f"{_plural(learned, 'connection')} failed"))


def _scan_words(name: str, s: Scan, learning: bool) -> str:
    """"plug's Telnet connections to 31 hosts got no answer or were refused in the last 5 min
    (198.51.100.9, 203.0.113.5, ...), spread over 29 /16 networks: an address scan"."""
    if s.internal >= s.hosts:
        where, spread = "internal hosts", ""
    elif s.in_block >= s.hosts:
        where, spread = "hosts", f", {s.in_block} of them in {_dotted(s.block)}/24"
    else:
        where, spread = "hosts", f", spread over {s.networks} /16 networks"
    hosts = _examples([_dotted(ip) for ip in reversed(s.examples)])
    return (f"{name}'s {service_name(rules.IPPROTO_TCP, s.port)} connections to {s.hosts} {where} got no "
            f"answer or were refused in the last {_num(SCAN_HORIZON / 60)} min ({hosts}){spread}: an address scan"
            + (" (it is still learning: a scan is never learned as normal)" if learning else ""))


def _grown(window: dict[str, float], handed: dict | None) -> bool:
    """Whether a count in `window` is GROWTH times (and GROWING more than) what the window
    last handed to the playbooks carried: a raw condition may match only now."""
    if not handed:
        return False
    for f, floor in GROWING.items():
        now, then = window.get(f, 0.0), handed.get(f)
        if isinstance(then, (int, float)) and now >= GROWTH * then and now - then >= floor:
            return True
    return False


def _observed(wf: WindowFeatures, i: int) -> dict[str, float]:
    """Device `i`'s whole window, as an alert carries it."""
    observed = {f: round(float(v), 6) for f, v in zip(FEATURES, wf.X[i].tolist())}
    observed[RX_PER_TX] = round(rx_per_tx(observed["tx_bytes"], observed["rx_bytes"]), 6)
    observed["top_port"] = int(wf.top_port[i])
    observed["top_port_hosts"] = int(wf.top_port_hosts[i])
    return observed


@dataclass
class _Open:
    alert: Alert
    quiet: int = 0
    handed: float = -1e18       # when the playbooks last saw this alert's window
    provisional: bool = False   # raised by the volume fast path; the next window completes it


class Detector:
    MAX_OUTBREAK_DEVICES = 50   # names an outbreak alert lists (its score and text give the full count)

    def __init__(self, config: Config, store: BaselineStore,
                 who: Callable[[str], tuple[str, tuple[str, ...]]],
                 attribution: Attribution | None = None) -> None:
        """`who(mac)` gives a device's name and tags (from the inventory); `attribution`
        learns known destinations and names each alert's remote (a replay has none)."""
        self.config = config
        self.store = store
        self.who = who
        self.attribution = attribution
        self.alerts: deque[Alert] = deque(maxlen=MAX_ALERTS)
        self._open: dict[tuple[str, str], _Open] = {}
        # each device's last STORIES closed anomalies, oldest first: a device may interleave two
        # stories (an Echo's bursts of new hosts and its DNS-heavy minutes), and either may come back
        self._closed: OrderedDict[str, list[Alert]] = OrderedDict()
        self._bursts: dict[str, dict[tuple, float]] = {}
        # time, mac, cls, leading features (an anomaly's top 3; a burst's "new_flow_burst")
        # ... and whether it alerted (False: suspicious only, it corroborates an outbreak)
        self._recent: deque[tuple[float, str, str, tuple[str, ...], bool]] = deque(maxlen=10000)
        self._noted: dict[str, float] = {}   # when each device was last put in _recent without an alert
        self._outbreaks: dict[tuple[str, str], float] = {}
        self.escalated: list[Alert] = []     # open alerts that grew worse; the core drains it
        self._internal = Subnets(config.internal_subnets)
        self.windows_scored = 0
        self._last: tuple | None = None
        self.novelty = NoveltyMemory(config.internal_subnets, config.learn_seconds)
        store.novelty = self.novelty                       # saved and loaded with the baselines
        self._pending: dict[str, deque[Novelty]] = {}      # novelty snapshots not yet decided on
        self._marginal: dict[str, float] = {}              # when a device's window last crossed by a hair
        self.unconfirmed = 0                               # such windows not (yet) raised
        self._decided: dict[str, float] = {}               # time of the last snapshot decided on
        self.scans = ScanCounter(self._is_internal)        # not learned: a warm-up cannot make a scan normal
        self._scanning: dict[str, Scan] = {}               # the latest scan report per device, not yet decided

    def excluded(self, tags: tuple[str, ...]) -> bool:
        return any(t in self.config.exclude_tags for t in tags)

    def _emit(self, alert: Alert) -> Alert:
        self.alerts.append(alert)
        return alert

    def _update(self, opened: _Open, **changes) -> Alert:
        """An open alert's next version: it replaces the old one in `alerts` (never mutated)."""
        old, new = opened.alert, replace(opened.alert, **changes)
        opened.alert = new
        for i in range(len(self.alerts) - 1, -1, -1):   # an open alert is among the newest
            if self.alerts[i] is old:
                self.alerts[i] = new
                break
        return new

    def last_score(self, mac: str) -> tuple[float, float] | None:
        """(score, threshold) of the device's window in the last round, if it was scored: how
        close to alerting it is (GET /api/v1/devices)."""
        if self._last is None:
            return None
        wf, scored, score, threshold = self._last
        i = wf.index(mac)
        if i is None or not scored[i]:
            return None
        return float(score[i]), float(threshold[i])

    def current(self, alert_id: str) -> Alert | None:
        """The newest version of an alert (an open one is updated by later windows)."""
        return next((a for a in reversed(self.alerts) if a.id == alert_id), None)

    def _remote(self, mac: str) -> str | None:
        return self.attribution.remote(mac) if self.attribution is not None else None

    # -------------------------------------------------------------- periodic path
    def on_window(self, wf: WindowFeatures, now: float) -> list[Alert]:
        """Score every active device's window; returns the alerts raised.

        One pass in Python per device looks up what it is (name, tags, exclusion) and
        whose baseline judges it; the numbers are then done for all devices at once:
        the devices with their own baseline in one pass over the store's bank (shrink,
        score, fold), those judged by a class or global prior in one pass per prior.
        Only a device over its threshold (rare) goes through the per-device code that
        explains it and raises or updates its alert.
        """
        store, who = self.store, self.who
        profiles, bank_row = store.profiles, store.bank.row
        exclude = frozenset(self.config.exclude_tags)       # excluded(tags), without a call per device
        active: set[str] = set()
        learners: list[str] = []
        own_i: list[int] = []
        own_r: list[int] = []
        others: list[tuple[int, str, str | None]] = []
        for i, mac in enumerate(wf.macs):
            tags = who(mac)[1]
            if not exclude.isdisjoint(tags):
                continue
            active.add(mac)
            cls = tags[0] if tags else None
            p = profiles.get(mac)
            if p is None or p.baseline is None:
                learners.append(mac)
            if p is None or (cls is not None and p.cls != cls):
                p = store.profile(mac, cls, now)          # creates it, or records the class named since
            b = p.baseline
            if b is not None:
                own_i.append(i)
                own_r.append(bank_row(mac, b))
            else:
                others.append((i, mac, cls))
        if self.attribution is not None:
            self.attribution.learn(learners, lambda _mac: True)   # learners: not excluded, still learning

        n = len(wf.macs)
        scored = np.zeros(n, dtype=bool)
        score = np.zeros(n)
        threshold = np.zeros(n)
        judged: dict[int, tuple[object, str]] = {}     # window row -> (baseline, source), for alerts
        X = np.array(wf.X, dtype=np.float64).reshape(n, len(FEATURES))
        if own_i:
            idx, rows = np.asarray(own_i), np.asarray(own_r)
            bank = store.bank
            X[idx] = shrink_tx_mix(X[idx], np.expm1(bank.medians(rows)))
            score[idx] = bank.scores(rows, X[idx])
            threshold[idx] = bank.thresholds(rows)
            scored[idx] = True
            calm = score[idx] < SUSPICION * threshold[idx]
            store.fold_rows(rows[calm], X[idx[calm]], now)
            if self.attribution is not None:
                # What folds, teaches: new hosts met in normal windows, a minute apart and
                # never in another kind between, become familiar (not new any more).
                new = X[idx, _NEW_DST] > 0
                for i, ok in zip(idx[new].tolist(), calm[new].tolist()):
                    self.attribution.befriend(wf.macs[i], ok, now)
        by_prior: dict[int, tuple[object, str, list[int]]] = {}
        for i, mac, cls in others:
            baseline, source = store.judge(mac, cls, wf.X[i], now)
            if baseline is not None:
                by_prior.setdefault(id(baseline), (baseline, source, []))[2].append(i)
        for baseline, source, ii in by_prior.values():
            idx = np.asarray(ii)
            X[idx] = shrink_tx_mix(X[idx], np.expm1(baseline.median_))
            score[idx] = baseline.anomaly_score(X[idx])      # one call per prior, not per device
            threshold[idx] = baseline.threshold_
            scored[idx] = True
            judged.update((i, (baseline, source)) for i in ii)
        self.windows_scored += int(scored.sum())
        self._last = (wf, scored, score, threshold)     # for `last_score` (the devices view)

        for key in [k for k in self._open if k[1] == "anomaly"]:
            i = wf.index(key[0])
            if i is not None and scored[i] and score[i] <= threshold[i]:
                self._quiet(key)
        out: list[Alert] = []
        for i in np.flatnonzero(scored & ~(score <= threshold)).tolist():
            mac = wf.macs[i]
            if not self._confirmed(mac, float(score[i]), float(threshold[i]), now):
                continue
            name, tags = who(mac)
            baseline, source = judged.get(i) or (profiles[mac].baseline, "own")
            out += self._anomalous(wf, i, mac, name, tags, baseline, source, X[i], float(score[i]), now)
        suspicious = np.flatnonzero(scored & (score > SUSPICION * threshold) & (score <= threshold))
        if suspicious.size and self._recent and self.attribution is not None:
            # Suspicious, not alerting, while others of their class have alerted lately:
            # their new remote may corroborate an outbreak (`_correlate`).  The recent list
            # is only read when some device is suspicious: not on every quiet poll.
            horizon = self.config.outbreak_seconds
            classes = {c for t, _m, c, _f, st in self._recent if st and now - t <= horizon}
            for i in suspicious.tolist():
                mac = wf.macs[i]
                tags = who(mac)[1]
                if (tags[0] if tags else "unclassified") in classes:
                    remote = self._remote(mac)
                    if remote:
                        out += self._note(now, mac, (_REMOTE + remote,), strong=False)
        for key in [k for k in self._open if k[1] == "anomaly" and k[0] not in active]:
            self._quiet(key)
        out += self.decide_novelty(now)
        self.store.fit_pending(now)
        return out

    def _confirmed(self, mac: str, score: float, threshold: float, now: float) -> bool:
        """Whether a window over its threshold is raised now (see CONFIRM): always if the
        device's anomaly is already open, or the score is CONFIRM x the threshold, or
        another window crossed within CONFIRM_SECONDS.  Otherwise it is remembered."""
        if (mac, "anomaly") in self._open or score > CONFIRM * threshold:
            return True
        last = self._marginal.get(mac)
        self._marginal[mac] = now
        if last is not None and 0.0 <= now - last <= CONFIRM_SECONDS:
            return True
        if len(self._marginal) > MAX_ALERTS:
            self._marginal = {m: t for m, t in self._marginal.items() if now - t <= CONFIRM_SECONDS}
        self.unconfirmed += 1
        return False

    def _anomalous(self, wf: WindowFeatures, i: int, mac: str, name: str, tags: tuple[str, ...],
                   baseline, source: str, x: np.ndarray, score: float, now: float) -> list[Alert]:
        """A device over its threshold: update its open alert, or explain it in a new one."""
        key = (mac, "anomaly")
        opened = self._open.get(key)
        if opened is not None and opened.provisional:
            # Raised by the volume fast path from two port counters: this first full
            # window completes it (words, evidence, every feature), and the playbooks
            # see it again, so conditions on other features (an exfiltration's new
            # destination) can match although the flood may already be over.
            contribs, text = self._words(name, baseline, x, wf, i)
            opened.provisional, opened.quiet, opened.handed = False, 0, now
            alert = self._update(opened, count=opened.alert.count + 1, last_time=now,
                                 score=max(score, opened.alert.score), explanation=text,
                                 features=[asdict(c) for c in contribs],
                                 window=_observed(wf, i), remote=self._remote(mac) or opened.alert.remote)
            self.escalated.append(alert)
            return []
        if opened is not None:
            opened.quiet = 0
            changes: dict = {"count": opened.alert.count + 1, "last_time": now}
            window = _observed(wf, i)
            worse = score > ESCALATION * opened.alert.score or _grown(window, opened.alert.window)
            if opened.handed < opened.alert.time:
                opened.handed = opened.alert.time
            stale = now - opened.handed >= REHAND_SECONDS
            if worse or stale:
                # Worse than when it was raised, or still going: the playbooks see the
                # new window (a flood's first window is often a partial one, so a
                # condition such as tx_packets > 1000 may only match later).
                # Re-applying is idempotent: an active response is refreshed.
                changes.update(window=window, remote=self._remote(mac) or opened.alert.remote)
                if score > opened.alert.score:
                    changes["score"] = score
                opened.handed = now
            alert = self._update(opened, **changes)
            if worse or stale:
                self.escalated.append(alert)
            return self._note(now, mac, self._leads(alert), strong=True)
        contribs, text = self._words(name, baseline, x, wf, i)
        remote = self._remote(mac)
        story = self._same_story(mac, contribs, now)
        if story is not None:
            # The same story again after a pause: its alert reopens (count, window, the
            # playbooks see it again: a new episode, so a response an operator released
            # in the pause applies again).
            stories = self._closed[mac]
            stories.remove(story)
            if not stories:
                del self._closed[mac]
            opened = self._open[key] = _Open(story, handed=now)
            if self.current(story.id) is not story:
                self._emit(story)                  # rotated out of `alerts` meanwhile
            alert = self._update(opened, count=story.count + 1, last_time=now, score=max(score, story.score),
                                 window=_observed(wf, i), remote=remote or story.remote, reopened=now)
            self.escalated.append(alert)
            return []
        alert = self._emit(Alert(
            id=uuid.uuid4().hex[:12], time=now, kind=AlertKind.ANOMALY, device=name, mac=mac,
            score=score, threshold=float(baseline.threshold_), explanation=text, baseline=source,
            features=[asdict(c) for c in contribs], tags=tags, last_time=now,
            window=_observed(wf, i), remote=remote))
        self._open[key] = _Open(alert)
        return [alert] + self._correlate(now, mac, tags, self._leads(alert), attribute=True)

    @staticmethod
    def _leads(alert: Alert) -> tuple[str, ...]:
        """What an anomaly may share with others of its class in an outbreak: its leading
        features, and its new remote."""
        leads = tuple(e.feature for e in alert.features if e.feature) or ("combination",)
        return leads + ((_REMOTE + alert.remote,) if alert.remote else ())

    def _note(self, now: float, mac: str, leads: tuple[str, ...], strong: bool) -> list[Alert]:
        """A device still anomalous (an open alert), or suspicious with a new remote, stays
        in the outbreak correlation: put it there again, at most every third of the horizon."""
        if now - self._noted.get(mac, -1e18) < self.config.outbreak_seconds / 3:
            return []
        self._noted[mac] = now
        if len(self._noted) > MAX_ALERTS:
            self._noted = {m: t for m, t in self._noted.items() if now - t < self.config.outbreak_seconds}
        return self._correlate(now, mac, self.who(mac)[1], leads, attribute=True, strong=strong)

    def on_port_rates(self, rates: dict[str, tuple[float, float, float, float]], now: float) -> list[Alert]:
        """The volume fast path: each device's rates read from its own edge port's counters
        (`mac -> (packets/s sent, bytes/s sent, bytes/s received, seconds measured)`), several times between
        two flow polls.  A flood is plain from those two numbers, so it need not wait for
        the next window: a baselined device sending FAST_FACTOR times the top of its own
        packet-rate band, and at least FAST_MIN_PPS, is alerted now.  It opens the same
        anomaly alert the window path would (its next window completes it, no second
        alert), with a window of just what the counters tell (tx_packets, tx_bytes, rx_bytes,
        mean_pkt_size, rx_per_tx_bytes), which playbooks read like any window.  An alert
        already open whose window shows less than half the counted rate is handed over
        again with the counted values (`escalated`)."""
        out: list[Alert] = []
        j = INDEX["tx_packets"]
        for mac, (pps, bps, rx_bps, seconds) in rates.items():
            if pps < FAST_MIN_PPS:
                continue
            counted = {"tx_packets": pps, "tx_bytes": bps, "rx_bytes": rx_bps, "mean_pkt_size": bps / pps,
                       RX_PER_TX: rx_per_tx(bps, rx_bps)}
            opened = self._open.get((mac, "anomaly"))
            if opened is not None:
                # Already alerted, perhaps on a flood's first, partial window (a few hundred
                # packets/s: too few for `tx_packets > 1000`).  When the counters show at
                # least twice the rate the playbooks last saw, they see it now, not at the
                # next window.
                seen = opened.alert.window.get("tx_packets")
                if seen is not None and pps >= 2 * seen:
                    opened.handed = now
                    self.escalated.append(self._update(opened, last_time=now,
                                                       window={**opened.alert.window, **counted}))
                continue
            p = self.store.profiles.get(mac)
            if p is None or p.baseline is None:
                continue                  # learning or judged by a prior: the window path decides
            name, tags = self.who(mac)
            if self.excluded(tags):
                continue
            b = p.baseline
            low, high = float(b.band()[0][j]), float(b.top_band()[j])    # a mode's rate is normal too
            z = b.feature_alone(j, pps)
            if pps < FAST_FACTOR * max(high, 1.0) or z <= b.threshold_:
                continue
            text = (f"{name} sent {_num(pps)} packets/s ({_bytes(bps)}/s, its switch port's counters over "
                    f"{seconds:.2f} s); its baseline is {_range(low, high)} packets/s")
            alert = self._emit(Alert(
                id=uuid.uuid4().hex[:12], time=now, kind=AlertKind.ANOMALY, device=name, mac=mac,
                score=z, threshold=float(b.threshold_), explanation=text, baseline="own",
                features=(Evidence(feature="tx_packets", observed=pps, low=low, high=high, z=z, share=1.0),),
                tags=tags, last_time=now, window=counted, remote=self._remote(mac)))
            self._open[(mac, "anomaly")] = _Open(alert, handed=now, provisional=True)
            out.append(alert)
            out += self._correlate(now, mac, tags, ("tx_packets",), attribute=True)
        return out

    def _words(self, name: str, baseline, x: np.ndarray, wf: WindowFeatures, i: int):
        """An anomalous window's top 3 contributions and its sentence."""
        contribs = baseline.explain(x, FEATURES, top=3)
        if not contribs:
            return contribs, f"{name}'s traffic is an unusual combination of otherwise normal values"
        lead = contribs[0]
        text = describe(name, lead, wf.window, int(wf.top_port[i]), int(wf.top_port_hosts[i]),
                        dict(zip(FEATURES, x.tolist())))
        if lead.z <= baseline.threshold_:   # the multivariate model, not one feature, tripped
            others = ", ".join(c.feature.replace("_", " ") for c in contribs[1:])
            text = f"unusual combination{' with ' + others if others else ''}: {text}"
        return contribs, text

    def _quiet(self, key: tuple[str, str]) -> None:
        opened = self._open.get(key)
        if opened is not None:
            opened.quiet += 1
            if opened.quiet >= CLEAR_WINDOWS:
                del self._open[key]
                if key[1] == "anomaly":
                    stories = self._closed.setdefault(key[0], [])
                    stories.append(opened.alert)
                    del stories[:-STORIES]
                    self._closed.move_to_end(key[0])
                    while len(self._closed) > MAX_ALERTS:
                        self._closed.popitem(last=False)

    def _same_story(self, mac: str, contribs, now: float) -> Alert | None:
        """The newest of the device's last closed anomalies that this one continues: within
        STORY_GAP of its last window, with a leading feature in common.  Not the same remote: a cloud
        device spreads over several new hosts of one service; the reopened alert names
        the new one, and a response to it is a new response."""
        leads = {c.feature for c in contribs} or {"combination"}
        for old in reversed(self._closed.get(mac, ())):
            if now - old.last_time <= STORY_GAP and leads & ({e.feature for e in old.features} or {"combination"}):
                return old
        return None

    # -------------------------------------------------------------- event path
    def on_new_flow(self, mac: str, proto: int, ip: int, port: int, now: float,
                    answer: bool = False) -> list[Alert]:
        """A device started a conversation (TCP SYN, UDP to a service port, ARP request).

        Returns the alerts raised: a burst, and the outbreak it may complete.  The novelty
        memory learns it too (not an `answer`: UDP from a service port); what is new to
        the device is decided on at the next window (`decide_novelty`)."""
        name, tags = self.who(mac)
        if self.excluded(tags):
            return []
        if not answer:
            p = self.store.profiles.get(mac)
            report = self.novelty.observe(mac, proto, ip, port, now, learning=p is None or p.learning)
            if report is not None:
                self._pending.setdefault(mac, deque(maxlen=NOVELTY_PENDING)).append(report)
        seen = self._bursts.setdefault(mac, {})
        seen[(proto, ip, port)] = now
        if len(seen) > 64:   # prune lazily: only devices that are busy pay for it
            for k in [k for k, t in seen.items() if now - t > 1.0]:
                del seen[k]
        live = [k for k, t in seen.items() if now - t <= 1.0]
        count = len(live)
        threshold = self.store.note_burst(mac, count, self.config.burst_floor)
        key = (mac, "new_flow_burst")
        opened = self._open.get(key)
        if opened is not None and now - opened.alert.last_time > BURST_QUIET:
            del self._open[key]
            opened = None
        if count < threshold:
            return []
        if opened is not None:
            self._update(opened, last_time=now, count=opened.alert.count + 1,
                         score=max(opened.alert.score, float(count)))
            return []
        ports = Counter(k[2] for k in live if k[2] >= 0)
        hosts = {k[1] for k in live}
        port, n_port = ports.most_common(1)[0] if ports else (-1, 0)
        where = (f"port {port}" if n_port * 2 >= count else f"{len(ports)} ports") if ports else "no ports"
        internal = sum(1 for h in hosts if self._is_internal(h))
        p = self.store.profiles.get(mac)
        learned = p.burst_max if p is not None else 0
        n_hosts = len(hosts)
        if ports:
            text = (f"{name} opened {count} new connections to {n_hosts} host{'s' if n_hosts != 1 else ''} "
                    f"on {where} within 1 s; its baseline is at most {learned} per second")
        else:   # ARP who-has for addresses nobody answered: a sweep before the scan proper
            text = (f"{name} looked for {n_hosts} host{'s' if n_hosts != 1 else ''} with ARP requests "
                    f"within 1 s; its baseline is at most {learned} per second")
        features = [{"feature": "new_flows_per_s", "observed": count, "low": 0, "high": learned,
                     "hosts": len(hosts), "internal_hosts": internal, "top_port": port}]
        alert = self._emit(Alert(id=uuid.uuid4().hex[:12], time=now, kind=AlertKind.NEW_FLOW_BURST, device=name,
                                 mac=mac, score=float(count), threshold=float(threshold), explanation=text,
                                 baseline="burst", features=features, tags=tags, last_time=now))
        self._open[key] = _Open(alert)
        return [alert] + self._correlate(now, mac, tags, ("new_flow_burst",))

    def on_failed(self, mac: str, ip: int, port: int, now: float) -> None:
        """A TCP connection the device opened failed (`telemetry.outcomes`): the novelty
        memory counts it; what it trips is decided at this window (`decide_novelty`)."""
        _name, tags = self.who(mac)
        if self.excluded(tags):
            return
        scan = self.scans.failed(mac, ip, port, now)
        if scan is not None:
            self._scanning[mac] = scan
        p = self.store.profiles.get(mac)
        report = self.novelty.failed(mac, ip, port, now, learning=p is None or p.learning)
        if report is not None:
            self._pending.setdefault(mac, deque(maxlen=NOVELTY_PENDING)).append(report)

    def _telling(self, e: tuple[float, int, int, int]) -> bool:
        """Is a first use of a service a fact worth an alert on its own?  Inside the LAN,
        always (an appliance has no business opening new services on its neighbours),
        but DNS and NTP (EVERYDAY_LAN_SERVICES).
        Toward the internet only a TCP connection on a port that is not everyday cloud
        traffic: devices talk UDP to ever-changing cloud and P2P relays, and HTTPS to
        new hosts, all the time (seen on the shipped camera capture).  Those still count
        in the novelty values the alert windows carry."""
        _t, ip, proto, port = e
        if self._is_internal(ip):
            return (proto, port) not in EVERYDAY_LAN_SERVICES
        return proto == rules.IPPROTO_TCP and port not in EVERYDAY_CLOUD_PORTS

    def _is_internal(self, ip: int) -> bool:
        return ip in self._internal

    # -------------------------------------------------------------- novelty
    def decide_novelty(self, now: float) -> list[Alert]:
        """Raise or update lateral_probe, port_probe, failed_connections and new_service alerts from what the
        event path found new, once it is NOVELTY_GRACE old (a burst alert, decided within
        1 s, speaks for a fast scan; a device with a burst open gets no novelty alert), and
        address_scan alerts from the scans the failed connections completed."""
        out: list[Alert] = []
        for mac, scan in self._scanning.items():
            out += self._scan(mac, scan, now)
        self._scanning.clear()
        for mac in list(self._pending):
            q = self._pending[mac]
            report = None
            while q and now - q[0].time >= NOVELTY_GRACE:
                report = q.popleft()
            if not q:
                del self._pending[mac]
            if report is not None:
                out += self._novel(mac, report, now)
                self._decided[mac] = max(report.time, self._decided.get(mac, -math.inf))
        for key in [k for k, o in self._open.items()
                    if k[1] in _NOVELTY_KINDS and now - o.alert.last_time > _QUIET.get(k[1], NOVELTY_QUIET)]:
            del self._open[key]
        return out

    def _novel(self, mac: str, r: Novelty, now: float) -> list[Alert]:
        name, tags = self.who(mac)
        if self.excluded(tags):
            return []
        burst = self._open.get((mac, "new_flow_burst"))
        if burst is not None and now - burst.alert.last_time <= BURST_QUIET:
            self.novelty.told(mac)      # a fast scan: the burst alert already says it
            return []
        since = self._decided.get(mac, -math.inf)
        fresh = [e for e in r.examples["new_services"] if e[0] > since and self._telling(e)]
        appliance = ("iot" in tags or self.novelty.appliance(mac)) and self.novelty.stable_services(mac)
        out: list[Alert] = []
        for feature, kind in _NOVELTY_ALERTS.items():
            if feature in r.tripped:
                out += self._novelty_alert(mac, name, tags, kind, feature, r, appliance, now)
        if appliance and fresh and not any((mac, k.value) in self._open for k in _NOVELTY_ALERTS.values()):
            out += self._novelty_alert(mac, name, tags, AlertKind.NEW_SERVICE, "new_services", r, appliance,
                                       now, fresh=fresh)
        return out

    def _scan(self, mac: str, s: Scan, now: float) -> list[Alert]:
        """Raise or update a device's address_scan alert (scans.py).  Not judged against
        its warm-up, so raised while it learns as well; a burst already open speaks for it."""
        name, tags = self.who(mac)
        burst = self._open.get((mac, "new_flow_burst"))
        if burst is not None and now - burst.alert.last_time <= BURST_QUIET:
            self.scans.forget(mac)
            return []
        p = self.store.profiles.get(mac)
        text = _scan_words(name, s, learning=p is None or p.learning)
        key = (mac, AlertKind.ADDRESS_SCAN.value)
        opened = self._open.get(key)
        if opened is not None:
            grew = s.hosts > opened.alert.score
            self._update(opened, count=opened.alert.count + 1, last_time=now,
                         score=max(opened.alert.score, float(s.hosts)),
                         window={**opened.alert.window, SCANNED: s.hosts},
                         **({"explanation": text} if grew else {}))
            return []
        evidence = [{"feature": SCANNED, "observed": s.hosts, "low": 0, "high": self.scans.hosts - 1,
                     "horizon_s": SCAN_HORIZON, "hosts": [_dotted(ip) for ip in s.examples],
                     "internal_hosts": s.internal, "networks": s.networks, "top_port": s.port}]
        alert = self._emit(Alert(
            id=uuid.uuid4().hex[:12], time=now, kind=AlertKind.ADDRESS_SCAN, device=name, mac=mac,
            score=float(s.hosts), threshold=float(self.scans.hosts), explanation=text, baseline="scan",
            features=evidence, tags=tags, last_time=now, window={SCANNED: s.hosts}))
        self._open[key] = _Open(alert)
        return [alert] + self._correlate(now, mac, tags, (AlertKind.ADDRESS_SCAN.value,))

    def _novelty_alert(self, mac: str, name: str, tags: tuple[str, ...], kind: AlertKind, feature: str,
                       r: Novelty, appliance: bool, now: float, fresh=()) -> list[Alert]:
        if kind == AlertKind.NEW_SERVICE:
            i = 1
            count, allowed = len({(e[2], e[3]) for e in fresh}), 1
        else:
            i = r.horizon(feature)
            count, allowed = r.counts[feature][i], r.allowance[feature][i]
        key = (mac, kind.value)
        opened = self._open.get(key)
        h = HORIZONS[i]
        if opened is not None:
            changes: dict = {}
            if kind == AlertKind.FAILED_CONNECTIONS and opened.alert.remote is None:
                # Opened by other failures (a probe of the LAN), then a dead C2: the alert
                # names it now and goes to the playbooks again, so block-dead-c2 can act.
                hits = r.recent(feature, h)
                changes["remote"] = self._dead_end(hits)
                if changes["remote"]:     # its words name the C2 first
                    first = sorted(hits, key=lambda e: _dotted(e[1]) != changes["remote"])
                    changes["explanation"] = _failed_words(name, first, count, h, r)
            alert = self._update(opened, count=opened.alert.count + 1, last_time=now,
                                 score=max(opened.alert.score, float(count)),
                                 window={**opened.alert.window, **r.values()}, **changes)
            if changes.get("remote"):
                self.escalated.append(alert)
            return []
        remote = None
        evidence = [{"feature": f"{feature}_{_h(h)}", "observed": count, "low": 0, "high": max(allowed - 1, 0),
                     "horizon_s": h}]
        services = [e for e in r.recent("new_services", h)]
        if services and kind != AlertKind.NEW_SERVICE and appliance:
            evidence.append(_services_evidence(services, r))
        if kind == AlertKind.LATERAL_PROBE:
            hits = r.recent(feature, h)
            text = _lateral_words(name, hits, count, h, r)
            ports = Counter(e[3] for e in hits if e[3] >= 0)
            evidence[0].update(hosts=[_dotted(e[1]) for e in hits], learned_peers=r.learned_peers)
        elif kind == AlertKind.FAILED_CONNECTIONS:
            hits = r.recent(feature, h)
            ports = Counter(e[3] for e in hits)
            text = _failed_words(name, hits, count, h, r)
            evidence[0].update(hosts=sorted({_dotted(e[1]) for e in hits}), learned_failures=r.learned_failures)
            remote = self._dead_end(hits)
        elif kind == AlertKind.PORT_PROBE:
            hits = [e for e in r.recent(feature, h) if e[1] == r.scanned_host]
            ports = Counter(e[3] for e in hits)
            text = (f"{name} tried {count} new ports on {_dotted(r.scanned_host)} in the last {_num(h)} s "
                    f"({_examples([service_name(e[2], e[3]) for e in hits])}); while learning it used "
                    f"{_plural(len(r.learned_services), 'service')}")
            evidence[0].update(host=_dotted(r.scanned_host), ports=sorted(ports))
        else:
            ports = Counter(e[3] for e in fresh)
            used = sorted({service_name(e[2], e[3]) for e in fresh})
            where = sorted({_dotted(e[1]) for e in fresh if e[1]})
            learned = [service_name(p, q) for p, q in r.learned_services]
            text = (f"{name} used {' and '.join(used) if len(used) <= 3 else f'{len(used)} services'}, "
                    f"{'a service' if len(used) == 1 else 'services'} it never used"
                    f"{' (to ' + _examples(where) + ')' if where else ''}; while learning it used "
                    f"{_plural(len(learned), 'service')}{': ' + _examples(learned) if learned else ''}")
            evidence = [_services_evidence(fresh, r)]
        if ports:
            evidence[0]["top_port"] = ports.most_common(1)[0][0]
        alert = self._emit(Alert(
            id=uuid.uuid4().hex[:12], time=now, kind=kind, device=name, mac=mac, score=float(count),
            threshold=float(allowed), explanation=text, baseline="novelty", features=evidence, tags=tags,
            last_time=now, window=r.values(), remote=remote))
        self._open[key] = _Open(alert)
        return [alert] + self._correlate(now, mac, tags, (kind.value,))

    def _dead_end(self, hits) -> str | None:
        """The remote of a failed_connections alert: the one internet host that every failure
        toward the internet went to, DEAD_END_FAILURES times or more, if no device talked to
        it while learning (a bot calling a C2 that is down; block-dead-c2 blocks it before
        it answers).  None for several internet hosts (a scan, a cloud outage), or one that
        others use.  Failures inside the LAN are the lateral playbooks' business."""
        external = [e[1] for e in hits if not self._is_internal(e[1])]
        if len(set(external)) != 1 or len(external) < DEAD_END_FAILURES or self.attribution is None:
            return None
        ip = external[0]
        return None if self.attribution.known.learned_by(ip) else _dotted(ip)

    # -------------------------------------------------------------- correlation
    def _correlate(self, now: float, mac: str, tags: tuple[str, ...], leads: tuple[str, ...],
                   attribute: bool = False, strong: bool = True) -> list[Alert]:
        """An outbreak: N devices of one class anomalous within T seconds with a leading
        feature in common (one of each one's top three: the same infection can lead with
        rx bytes on one bulb and new destinations on the next), or talking to the same new
        remote (a lead "remote:<ip>").  All but one must have alerted; the last may only be
        suspicious (`strong` False: over SUSPICION of its threshold, with that remote), as a
        third bulb beaconing to the same C2 as two alerting ones is, whose own threshold it
        just misses.  `attribute` (the periodic path) names the remote most of its devices'
        recent anomalies share."""
        cls = tags[0] if tags else "unclassified"
        self._recent.append((now, mac, cls, leads, strong))
        horizon = self.config.outbreak_seconds
        recent = [(m, f, st) for t, m, c, f, st in self._recent if now - t <= horizon and c == cls]
        need = self.config.outbreak_devices
        lead, macs = "", set()
        for feature in leads:
            with_it = {m for m, f, _ in recent if feature in f}
            alerted = {m for m, f, st in recent if st and feature in f}
            if len(with_it) > len(macs) and len(alerted) >= need - 1:
                lead, macs = feature, with_it
        if len(macs) < need:
            return []
        if now - self._outbreaks.get((cls, lead), -1e18) <= horizon:
            return []
        self._outbreaks[(cls, lead)] = now
        names = sorted(self.who(m)[0] for m in macs)
        listed = names[:self.MAX_OUTBREAK_DEVICES]      # a MAC flood must not make an alert of megabytes
        more = f" and {len(names) - len(listed)} more" if len(names) > len(listed) else ""
        remote = None
        if lead.startswith(_REMOTE):
            remote = lead[len(_REMOTE):]
            feature = f"traffic to {remote}, a host they had never talked to,"
        else:
            feature = f"{lead.replace('_', ' ')}"
            if attribute and self.attribution is not None:
                remote = self.attribution.outbreak(list(self.alerts)[-500:], set(names), now, horizon)
        alert = self._emit(Alert(
            id=uuid.uuid4().hex[:12], time=now, kind=AlertKind.OUTBREAK, device=f"{len(names)} {cls} devices",
            mac=None, score=float(len(names)), threshold=float(self.config.outbreak_devices),
            explanation=f"{len(names)} {cls} devices turned anomalous on {feature} within {_num(horizon)} s: "
                        f"{', '.join(listed)}{more}", baseline="correlation", devices=listed, tags=(cls,),
            last_time=now, remote=remote))
        return [alert]

    # -------------------------------------------------------------- views
    def health(self) -> dict:
        """The detection part of the health view."""
        profiles = self.store.profiles.values()
        return {"learning": sum(1 for p in profiles if p.learning),
                "baselined": sum(1 for p in profiles if not p.learning),
                "priors": sorted(c or "global" for c in self.store.priors),
                "learn_seconds": self.config.learn_seconds}

    def recent(self, since: float | None = None, limit: int = 1000) -> list[dict]:
        """Newest first; `since` keeps alerts raised or updated after it."""
        out = []
        for a in reversed(self.alerts):
            if since is not None and max(a.time, a.last_time) <= since:
                continue
            out.append(a.to_dict())
            if len(out) >= limit:
                break
        return out

