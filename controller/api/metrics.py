"""Prometheus exporter for iotguard (docs/metrics.md).

Why this shape: the control loop must never pay for monitoring.  Counters and
gauges are not updated on the hot path; the app hands in a ``snapshot``
callable that the exporter calls only when Prometheus scrapes, from the
exporter's own thread.  The snapshot should therefore just copy plain numbers
the app already keeps.  The two latency distributions cannot be rebuilt from a
snapshot, so they are real Histograms the app observes (an O(1) bucket bump).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.detection.alert import AlertKind
from controller.response.actions import REGISTRY

__all__ = ["Metrics", "actions", "ALERT_KINDS"]

LOG = logging.getLogger("iotguard.metrics")

# Always exposed (0 when absent): a series that appears only at its first
# non-zero value hides that first increase from rate()/increase().
def actions() -> tuple[str, ...]:
    """The response actions, from the registry (an action registered later shows up too)."""
    return tuple(a.name for a in REGISTRY.installing())


ALERT_KINDS = tuple(k.value for k in AlertKind)     # every kind, manual included

# snapshot key -> (metric name, help); counters get the _total suffix from the client.
_COUNTERS = (
    ("polls", "iotguard_polls", "Flow-statistics polls sent to switches."),
    ("flow_entries", "iotguard_flow_entries", "Flow-stats entries processed."),
    ("packet_in", "iotguard_packet_in", "Packet-in messages received."),
    ("windows", "iotguard_windows", "Per-device feature windows scored."),
    ("unconfirmed", "iotguard_windows_unconfirmed",
     "Windows over their threshold by less than 1.5x that no other crossing within 30 s confirmed (not raised)."),
    ("lldp_in", "iotguard_lldp_in", "LLDP probes received back (topology discovery)."),
    ("malformed", "iotguard_malformed_packets", "Packet-ins that could not be parsed."),
    ("notify_dropped", "iotguard_notify_dropped", "Notifications dropped because the queue was full."),
    ("packet_ins_shed", "iotguard_packet_in_shed",
     "Packet-ins dropped because 256 were already queued for the OpenFlow event loop."),
    ("bad_messages", "iotguard_openflow_bad_messages",
     "OpenFlow messages from switches refused as malformed (answered with OFPT_ERROR)."),
    ("handler_errors", "iotguard_handler_errors", "OpenFlow event handlers that raised (event processing went on)."),
    ("state_write_errors", "iotguard_state_write_errors", "Writes the state directory refused (e.g. a full disk)."),
    ("multipart_unsolicited", "iotguard_multipart_unsolicited",
     "Multipart reply parts dropped: no request of ours had their xid."),
    ("multipart_overflows", "iotguard_multipart_overflows", "Multipart replies dropped for exceeding their bounds."),
    ("inventory_full", "iotguard_inventory_full", "New devices not recorded because the inventory was full."),
    ("topology_full", "iotguard_topology_full", "New MACs not located because the location table was full."),
    ("mac_table_full", "iotguard_mac_table_full", "New MACs not learned because a switch's MAC table was full."),
    ("connections_failed", "iotguard_connections_failed",
     "TCP connections judged failed (no answer or refused) from their flows' counters."),
    ("connections_unjudged", "iotguard_connections_unjudged",
     "Connections dropped unjudged because 4096 were already awaiting judgement."),
    ("group_or_zero_src", "iotguard_group_or_zero_source",
     "Frames with a broadcast, multicast or zero source MAC (never devices)."),
)
_GAUGES = (
    ("switches", "iotguard_switches_connected", "Switches currently connected."),
    ("devices", "iotguard_devices", "Devices known to the controller."),
    ("baselined", "iotguard_devices_baselined", "Devices scored against their own baseline."),
    ("learning", "iotguard_devices_learning", "Devices still in their learning period."),
    ("event_loop_age", "iotguard_event_loop_age_seconds",
     "Seconds since the OpenFlow event loop last took an event (ticked every second; > 5 is a stall)."),
    ("event_loop_lag", "iotguard_event_loop_lag_seconds",
     "Seconds an event waits in the OpenFlow event loop's queue (> 2: it is not keeping up)."),
    ("event_queue", "iotguard_event_queue_depth", "Events queued for the OpenFlow event loop (at most 128, plus 256 packet-ins)."),
)
SCORING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
CONFIRM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_MAX_LOGGED = 64  # distinct scrape-error messages logged; bounds memory if messages vary
_ZERO = {key: 0 for key, _, _ in _COUNTERS + _GAUGES}


def _families(snap: dict) -> list[Metric]:
    """All snapshot-derived metric families; raises on a malformed snapshot (built fully before yielding)."""
    out: list[Metric] = []
    for key, name, doc in _COUNTERS:
        if key in snap:
            out.append(CounterMetricFamily(name, doc, value=float(snap[key])))
    for key, name, doc in _GAUGES:
        if key in snap:
            out.append(GaugeMetricFamily(name, doc, value=float(snap[key])))

    alerts = CounterMetricFamily("iotguard_alerts", "Alerts raised, by kind.", labels=["kind"])
    counts = dict.fromkeys(ALERT_KINDS, 0) | dict(snap.get("alerts") or {})
    for kind, n in counts.items():
        alerts.add_metric([str(kind)], float(n))
    out.append(alerts)

    responses = CounterMetricFamily("iotguard_responses", "Response attempts, by action and outcome.",
                                    labels=["action", "outcome"])
    for (action, outcome), n in sorted((snap.get("responses") or {}).items()):
        responses.add_metric([str(action), str(outcome)], float(n))
    out.append(responses)

    active = GaugeMetricFamily("iotguard_active_responses", "Enforced responses currently active, by action.",
                               labels=["action"])
    counts = dict.fromkeys(actions(), 0) | dict(snap.get("active_responses") or {})
    for action, n in counts.items():
        active.add_metric([str(action)], float(n))
    out.append(active)
    return out


class _SnapshotCollector(Collector):
    """Turns the app's snapshot into metric families at scrape time; a failing snapshot never fails the scrape."""

    def __init__(self, snapshot: Callable[[], dict]) -> None:
        self.snapshot = snapshot
        self.errors = 0
        self._logged: set[str] = set()
        self._lock = threading.Lock()  # scrapes may run concurrently (one thread per request)

    def describe(self) -> Iterable[Metric]:
        # For the registry's duplicate-name check; must not call the snapshot at register time.
        return [*_families(_ZERO), self._errors_family()]

    def collect(self) -> Iterator[Metric]:
        try:
            families = _families(self.snapshot())
        except Exception as e:  # noqa: BLE001 - any app bug must degrade to a scrape error, not a 500
            families = []       # omit, don't zero: a fake 0 would read as a counter reset
            with self._lock:
                self.errors += 1
                self._log(e)
        yield from families
        yield self._errors_family()

    def _errors_family(self) -> Metric:
        return CounterMetricFamily("iotguard_scrape_errors", "Scrapes whose controller snapshot failed.",
                                   value=float(self.errors))

    def _log(self, e: Exception) -> None:
        message = f"{type(e).__name__}: {e}"
        if message in self._logged or len(self._logged) >= _MAX_LOGGED:
            return
        self._logged.add(message)
        LOG.exception("metrics snapshot failed (each distinct error is logged once): %s", message)
        if len(self._logged) == _MAX_LOGGED:
            LOG.error("metrics snapshot: %d distinct errors, not logging new ones", _MAX_LOGGED)


class Metrics:
    """The exporter: snapshot-driven counters/gauges plus the two latency histograms.

    A private registry by default, so tests and several instances never clash
    with each other or with the process-wide default registry.
    """

    def __init__(self, snapshot: Callable[[], dict], registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self._collector = _SnapshotCollector(snapshot)
        self.registry.register(self._collector)
        self._scoring = Histogram("iotguard_scoring_seconds", "Time to extract features and score one window.",
                                  buckets=SCORING_BUCKETS, registry=self.registry)
        self._confirm = Histogram("iotguard_response_confirm_seconds",
                                  "Time from alert to response rules confirmed by a barrier.",
                                  buckets=CONFIRM_BUCKETS, registry=self.registry)

    @property
    def scrape_errors(self) -> int:
        return self._collector.errors

    def observe_scoring(self, seconds: float) -> None:
        """One window's feature extraction + scoring time."""
        self._scoring.observe(seconds)

    def observe_confirm(self, seconds: float) -> None:
        """Alert -> response rules confirmed by the switch's barrier reply."""
        self._confirm.observe(seconds)

    def start(self, host: str, port: int) -> Any:
        """Serve /metrics on a daemon thread; returns start_http_server's result ((server, thread) here).

        Port 0 binds an ephemeral port; "0 disables the exporter" is the caller's rule.
        """
        try:
            return start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            err = OSError(f"cannot listen for metrics on {_hostport(host, port)}: {e.strerror or e}")
            err.errno = e.errno
            raise err from e

    def render(self) -> bytes:
        """The exposition text a scrape would get."""
        return generate_latest(self.registry)


def _hostport(host: str, port: int) -> str:
    try:
        return f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}"
    except ValueError:
        return f"{host}:{port}"
