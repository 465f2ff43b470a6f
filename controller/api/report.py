"""`iotguard report`: one self-contained HTML page about one incident.

Reads what the controller left in its state directory, so it works with or
without a running controller and needs no API token:

* `<state_dir>/incidents/<alert id>.json`: the device's windows before and
  after its alert, and the baseline band it was judged against
  (controller/detection/incidents.py);
* `<state_dir>/audit.jsonl`: the responses decided for the alert and what
  happened to them later (controller/response/audit.py).

Everything taken from the files is HTML-escaped: a device name can be a DHCP
hostname an attacker chose.  The page loads nothing: CSS is inline, the figure
is a data: URL.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from controller.response.actions import REGISTRY
from controller.telemetry.features import UNITS
from controller.detection.incidents import _safe

INCIDENTS = "incidents"
AUDIT = "audit.jsonl"
BURST_FEATURES = ("new_flows", "distinct_dst_ips", "distinct_dst_ports")
ALWAYS = ("tx_packets", "tx_bytes")
MAX_PANELS = 8
LINE_EVENTS = ("decision", "dry-run", "installed", "failed", "released", "expired")
SHOW_IDS = 5
LOG_RATIO = 20.0

# actions that install no rules (notify): nothing to mark on the timeline
_NO_RULES = frozenset(a.name for a in REGISTRY if a.Plan is None)


class ReportError(Exception):
    """No such state directory or incident; the message says what to do."""


# ------------------------------------------------------------------ reading

def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except PermissionError:
        raise ReportError(f"cannot read {path}: permission denied (run as the controller's "
                          "user; the files are 0600)") from None
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("alert"), dict) else None


def _num(v: Any, default: float = math.nan) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def load_incident(state_dir: str, alert_id: str | None = None) -> dict:
    """The incident of `alert_id`, or the most recent one by alert time (None)."""
    directory = os.path.join(state_dir, INCIDENTS)
    if not os.path.isdir(state_dir):
        raise ReportError(f"no state directory {state_dir} (give --state-dir, or the config "
                          "'iotguard run' used)")
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith(".")]
    except FileNotFoundError:
        names = []
    except OSError as e:
        raise ReportError(f"cannot read {directory}: {e.strerror or e}") from None
    if alert_id is not None:
        doc = _read_json(os.path.join(directory, f"{_safe(alert_id)}.json"))
        if doc is not None and str(doc["alert"].get("id")) == alert_id:
            return doc
    found = [d for d in (_read_json(os.path.join(directory, n)) for n in names) if d is not None]
    if not found:
        raise ReportError(f"no incidents in {directory}: the controller writes one for each "
                          "device alert")
    found.sort(key=lambda d: _num(d["alert"].get("time"), 0.0), reverse=True)
    if alert_id is None:
        return found[0]
    for d in found:                     # a file named otherwise (copied, renamed)
        if str(d["alert"].get("id")) == alert_id:
            return d
    ids = [str(d["alert"].get("id")) for d in found[:SHOW_IDS]]
    more = f" (and {len(found) - SHOW_IDS} more)" if len(found) > SHOW_IDS else ""
    raise ReportError(f"no incident for alert {alert_id} in {directory}; the latest: "
                      f"{', '.join(ids)}{more}")


def read_audit(state_dir: str, alert_id: str | None = None) -> list[dict]:
    """The audit records, oldest first (only those of `alert_id` if given); torn lines skipped.

    Read directly, not through AuditLog, which opens the file for appending; streamed,
    since the log is never truncated.
    """
    path = os.path.join(state_dir, AUDIT)
    try:
        with open(path, "rb") as f:
            return list(_records(f) if alert_id is None else _link(alert_id, _records(f)))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror or e}") from None


def _records(lines: Iterable[bytes]) -> Iterator[dict]:
    for raw in lines:
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(record, dict):
            yield record


def related_events(alert_id: str, events: Iterable[dict]) -> list[dict]:
    """The events of one alert, oldest first: those carrying it, and the later events
    (installed, released, ...) of the responses its decisions named."""
    return list(_link(alert_id, sorted(events, key=lambda e: _num(e.get("time"), 0.0))))


def _link(alert_id: str, events: Iterable[dict]) -> Iterator[dict]:
    """`related_events` over events already in time order (the log's own order)."""
    rids: set = set()
    for e in events:
        alert = e.get("alert")
        rid = e.get("response_id")
        rid = rid if isinstance(rid, (int, str)) else None
        if isinstance(alert, dict) and str(alert.get("id")) == alert_id:
            if rid is not None:
                rids.add(rid)
            yield e
        elif alert is None and rid is not None and rid in rids:
            yield e


# ------------------------------------------------------------------ the figure

def panel_features(incident: dict) -> list[str]:
    """The alert's leading features that were recorded, then tx_packets and tx_bytes."""
    alert, recorded = incident["alert"], list(incident.get("features") or [])
    names = [f.get("feature") for f in alert.get("features") or [] if isinstance(f, dict)]
    top = [n for n in names if n in recorded]
    if not top:
        top = [n for n in BURST_FEATURES if n in recorded]
    out: list[str] = []
    for n in top[: MAX_PANELS - len(ALWAYS)] + [n for n in ALWAYS if n in recorded]:
        if n not in out:
            out.append(n)
    return out[:MAX_PANELS]


def _series(incident: dict, t0: float):
    import numpy as np
    width = len(incident.get("features") or [])
    times = incident.get("times") or []
    rows = incident.get("values") or []
    n = min(len(times), len(rows))
    x = np.array([_num(t) for t in times[:n]], dtype=float) - t0
    y = np.full((n, width), np.nan)
    for i, row in enumerate(rows[:n]):
        if isinstance(row, list):
            vals = [_num(v) for v in row[:width]]
            y[i, : len(vals)] = vals
    return x, y


def _marks(events: list[dict], t0: float) -> list[tuple[float, str]]:
    """(x, label) of the response events to draw; one per label and tenth of a second."""
    seen, out = set(), []
    for e in events:
        t = _num(e.get("time"))
        if e.get("event") not in LINE_EVENTS or e.get("action") in _NO_RULES or math.isnan(t):
            continue
        label = f"{e.get('action') or '?'} {e.get('event')}"
        key = (label, round(t - t0, 1))
        if key not in seen:
            seen.add(key)
            out.append((t - t0, label))
    return out


def figure_png(incident: dict, events: list[dict]) -> tuple[bytes | None, str]:
    """The small multiples as PNG bytes, and a caption (None and why when nothing to draw)."""
    features = panel_features(incident)
    t0 = _num(incident["alert"].get("time"), 0.0)
    x, y = _series(incident, t0)
    if not features or len(x) == 0:
        return None, "No windows were recorded for this device."
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    recorded = list(incident["features"])
    band = incident.get("band") if isinstance(incident.get("band"), dict) else None
    lo, hi = float(min(x.min(), 0.0)), float(max(x.max(), 0.0))
    pad = max((hi - lo) * 0.02, 1.0)
    marks = _marks(events, t0)
    shown = [(mx, label) for mx, label in marks if lo - pad <= mx <= hi + pad]
    fig, axes = plt.subplots(len(features), 1, figsize=(10, 2 * len(features)), sharex=True,
                             squeeze=False)
    try:
        for k, (ax, name) in enumerate(zip(axes[:, 0], features)):
            i = recorded.index(name)
            ax.plot(x, y[:, i], color="#1f4e79", lw=1.2, label="device")
            b_lo, b_hi = _band(band, i)
            if b_lo is not None:
                ax.axhspan(b_lo, b_hi, color="#2ca02c", alpha=0.18, lw=0, label="baseline band")
            ax.axvline(0.0, color="#c00000", lw=1.5)
            for mx, _ in shown:
                ax.axvline(mx, color="#7f3fbf", lw=1, ls="--")
            log = _log_scale(y[:, i], b_hi)
            if log:
                ax.set_yscale("symlog", linthresh=max(b_hi or 0.0, 1.0))
                ax.set_ylim(bottom=0.0)
            unit = UNITS.get(name, "") + (", log" if log else "")
            ax.set_ylabel(f"{name}\n({unit})", fontsize=8, parse_math=False)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            ax.set_xlim(lo - pad, hi + pad)
            if k == 0:
                _labels(ax, shown)
                ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
        axes[-1, 0].set_xlabel("seconds relative to the alert", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
    finally:
        plt.close(fig)
    caption = ("The device's values per window; the shaded band is the baseline's normal range, "
               "the red line the alert, dashed lines the responses.")
    if len(shown) < len(marks):
        caption += f" {len(marks) - len(shown)} later response events fall outside the plotted " \
                   "windows; see the timeline."
    return buf.getvalue(), caption


def _log_scale(values, band_high: float | None) -> bool:
    """Log when the attack dwarfs the normal range, or the band would be a hairline."""
    import numpy as np
    finite = values[np.isfinite(values)]
    if not len(finite) or finite.min() < 0:
        return False
    normal = max(band_high or float(np.median(finite)), 1.0)
    return float(finite.max()) > LOG_RATIO * normal


def _band(band: dict | None, i: int) -> tuple[float | None, float | None]:
    if band is None:
        return None, None
    lows, highs = band.get("low") or [], band.get("high") or []
    if i >= len(lows) or i >= len(highs):
        return None, None
    lo, hi = _num(lows[i]), _num(highs[i])
    return (None, None) if math.isnan(lo) or math.isnan(hi) else (lo, hi)


def _labels(ax, marks: list[tuple[float, str]]) -> None:
    """'alert' and each response's label at the top of the first panel, staggered."""
    ax.text(0.0, 0.98, " alert", transform=ax.get_xaxis_transform(), color="#c00000",
            fontsize=8, va="top", ha="left", parse_math=False)
    for k, (mx, label) in enumerate(marks):
        ax.text(mx, 0.84 - 0.14 * (k % 5), " " + label, transform=ax.get_xaxis_transform(),
                color="#7f3fbf", fontsize=7, va="top", ha="left", parse_math=False)


# ------------------------------------------------------------------ the page

def _e(v: Any) -> str:
    return html.escape("-" if v is None or v == "" else str(v), quote=True)


def iso(t: Any) -> str:
    v = _num(t)
    if math.isnan(v) or math.isinf(v):
        return "-"
    return datetime.fromtimestamp(v, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _rel(t: Any, t0: float) -> str:
    v = _num(t)
    return "-" if math.isnan(v) else f"{v - t0:+.2f} s"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v) if v is not None else "-"


def _json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


def _dpid(v: Any) -> str:
    return f"{v:016x}" if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else str(v)


def _rules_table(rules: list) -> str:
    rows = []
    for r in rules:
        if not isinstance(r, dict):
            continue
        if "meter" in r:
            what = f"meter {r.get('meter')} {r.get('command', '')}"
            how = f"rate {r.get('rate')} {r.get('unit', '')}, burst {r.get('burst')}"
            cells = [_dpid(r.get("dpid")), "-", "-", "-", what, how, "-"]
        else:
            cells = [_dpid(r.get("dpid")), r.get("table"), r.get("priority"), r.get("cookie"),
                     _json(r.get("match")), _json(r.get("instructions")), r.get("hard_timeout")]
        rows.append("<tr>" + "".join(f"<td><code>{_e(c)}</code></td>" for c in cells) + "</tr>")
    if not rows:
        return "no rules"
    head = "".join(f"<th>{h}</th>" for h in ("dpid", "table", "priority", "cookie", "match",
                                               "instructions", "hard_timeout"))
    return (f"<details><summary>{len(rows)} rule{'' if len(rows) == 1 else 's'}</summary>"
            f"<table class=rules><tr>{head}</tr>{''.join(rows)}</table></details>")


def _responses(events: list[dict]) -> str:
    latest: dict = {}
    for e in events:
        if e.get("response_id") is not None:
            latest[e["response_id"]] = e.get("event")
    rows = []
    for e in events:
        if e.get("alert") is None or e.get("event") not in ("decision", "dry-run", "failed"):
            continue
        rid = e.get("response_id")
        cells = [_e(e.get("playbook")), _e(e.get("action")), _e(e.get("mode")), _e(e.get("outcome")),
                 _e(rid), _e(latest.get(rid) if rid is not None else None),
                 _rules_table(e.get("rules") or [])]
        if e.get("error"):
            cells[3] += f"<div class=err>{_e(e['error'])}</div>"
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return "<p>No response was decided for this alert (no matching playbook, or no audit log).</p>"
    head = "".join(f"<th>{h}</th>" for h in ("playbook", "action", "mode", "outcome", "response id",
                                               "latest event", "rules"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _timeline(alert: dict, events: list[dict], t0: float) -> str:
    rows = [["+0.00 s", iso(alert.get("time")), "alert", alert.get("kind"), "-", "-", "-"]]
    for e in events:
        rows.append([_rel(e.get("time"), t0), iso(e.get("time")), e.get("event"), e.get("action"),
                     e.get("response_id"), e.get("outcome"), e.get("error")])
    head = "".join(f"<th>{h}</th>" for h in ("time", "UTC", "event", "action", "response id",
                                               "outcome", "error"))
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _contributions(alert: dict) -> str:
    rows = []
    for f in alert.get("features") or []:
        if not isinstance(f, dict):
            continue
        name = f.get("feature")
        rows.append([name, f"{_fmt(f.get('observed'))} {UNITS.get(str(name), '')}",
                     f"{_fmt(f.get('low'))} – {_fmt(f.get('high'))}", _fmt(f.get("z")),
                     _fmt(f.get("share"))])
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("feature", "observed", "baseline", "z", "share"))
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<h2>What stood out</h2><table><tr>{head}</tr>{body}</table>"


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
 padding:0 1em;color:#1a1a1a;background:#fff}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.explanation{font-size:1.25em;background:#fff4e5;border-left:5px solid #e07000;padding:.7em 1em;margin:1em 0}
.meta{color:#555}.err{color:#b00000}
table{border-collapse:collapse;width:100%;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}
dt{font-weight:600}dd{margin:0}code{font-size:.85em;word-break:break-all}
table.rules{font-size:.9em}img{max-width:100%}figcaption{color:#555;font-size:.9em}
"""


def render(incident: dict, audit_events: list[dict]) -> str:
    """The report page (HTML5, self-contained) for one incident and its audit events."""
    alert = incident.get("alert") if isinstance(incident.get("alert"), dict) else {}
    incident = {**incident, "alert": alert}
    device = incident.get("device") if isinstance(incident.get("device"), dict) else {}
    events = related_events(str(alert.get("id")), audit_events)
    t0 = _num(alert.get("time"), 0.0)
    name = device.get("name") or alert.get("device")
    title = f"iotguard incident: {_e(name)} — {_e(alert.get('kind'))}"
    png, caption = figure_png(incident, events)
    figure = (f'<img alt="device features around the alert" '
              f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
              if png else "")
    n_after = sum(1 for t in incident.get("times") or [] if _num(t) > t0)
    status = "" if incident.get("complete") else \
        f"<p class=meta>Still collecting: {n_after} windows after the alert so far.</p>"
    ips = ", ".join(str(i) for i in device.get("ips") or []) or None
    tags = ", ".join(str(t) for t in device.get("tags") or alert.get("tags") or []) or None
    facts = [("Time", iso(alert.get("time"))), ("Kind", alert.get("kind")),
             ("Score", f"{_fmt(alert.get('score'))} (threshold {_fmt(alert.get('threshold'))})"),
             ("Device", name), ("MAC", device.get("mac") or alert.get("mac")), ("IPs", ips),
             ("Tags", tags), ("Baseline", incident.get("baseline") or alert.get("baseline")),
             ("Window", f"{_fmt(incident.get('window_s'))} s"), ("Alert id", alert.get("id")),
             ("Repeats", alert.get("count"))]
    if alert.get("remote"):
        facts.insert(7, ("Remote address", alert["remote"]))
    score, threshold = _e(_fmt(alert.get("score"))), _e(_fmt(alert.get("threshold")))
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{CSS}</style></head>
<body>
<h1>{title}</h1>
<p class=meta>{_e(iso(alert.get("time")))} · score {score} against threshold {threshold}</p>
<p class=explanation>{_e(alert.get("explanation"))}</p>
<dl>{dl}</dl>
{_contributions(alert)}
<h2>Around the alert</h2>
<figure>{figure}<figcaption>{_e(caption)}</figcaption></figure>
{status}
<h2>Responses</h2>
{_responses(events)}
<h2>Timeline</h2>
{_timeline(alert, events, t0)}
<p class=meta>Generated by iotguard report at {_e(iso(datetime.now(timezone.utc).timestamp()))}.</p>
</body></html>
"""


def write_report(state_dir: str, alert_id: str | None, out_path: str | None = None) -> str:
    """Render the incident of `alert_id` (the latest if None) to `out_path`
    (default iotguard-incident-<alert id>.html here); the path written."""
    incident = load_incident(state_dir, alert_id)
    aid = str(incident["alert"].get("id"))
    page = render(incident, read_audit(state_dir, aid))
    path = out_path or f"iotguard-incident-{_safe(aid)}.html"
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as e:
        raise ReportError(f"cannot write {path}: {e.strerror or e}") from None
    return path
