"""Glue between the control loop and the response engine.

`controller.response.engine.Engine` decides; this module feeds it what the controller
knows (devices, hosts, the gateway, switch locations), fans alerts out to it,
turns an operator's manual request into a one-action playbook, loads and
reloads the playbook set, and tracks which sent messages each barrier
confirms.  Pure like `Core`: it returns messages as data, and `Core` holds it.
"""

from __future__ import annotations

import collections
import json
import dataclasses
import ipaddress
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import yaml

from controller.addresses import Subnets
from controller.response.protection import Protection
from controller.response import playbook as pb
from controller.openflow import rules
from controller.response.audit import AuditLog
from controller.config import Config, Device
from controller.detection.alert import Alert, AlertKind
from controller.response.engine import Decision, Engine, ResponseStore, Spec
from controller.openflow.rules import FlowSpec, MeterSpec
from controller.network.inventory import Inventory
from controller.response.actions import REGISTRY
from controller.network.topology import Location, Topology

LOG = logging.getLogger("iotguard.responder")

Out = list[tuple[int, Spec]]
MANUAL_PRIORITY = 1000
LATENCIES = 1000          # alert -> confirmed samples kept for the API and the benchmark


def is_response_message(spec: object) -> bool:
    """Cheap test on the send path: does this install a response's rule or meter (to be
    confirmed by a barrier)?  Deletes are not confirmed: an error on them is only logged."""
    if isinstance(spec, FlowSpec):
        return spec.command == "add" and rules.is_response_cookie(spec.cookie)
    if isinstance(spec, MeterSpec):
        return spec.command != "delete" and rules.METER_RESPONSE_MIN <= spec.meter_id <= rules.METER_RESPONSE_MAX
    return False


def _json(value: Any) -> str:
    """A request value in an error message: short JSON, as the client sent it."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def own_addresses(config: Config) -> tuple[str, ...]:
    """The controller's own addresses, as configured (a listener on a specific address)."""
    out = []
    for host in (config.ofp_host, config.api_host, config.metrics_host):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if not (ip.is_unspecified or ip.is_loopback):
            out.append(str(ip))
    return tuple(dict.fromkeys(out))


MAX_ALERT_DEVICES = 50   # an injected outbreak's devices, as the detector's own (Detector.MAX_OUTBREAK_DEVICES)


class RequestError(ValueError):
    """A manual request that cannot be carried out; the message names the field."""


@dataclass
class _Batch:
    rids: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)


class Confirmations:
    """Which response each sent message belongs to, and which barrier closes them.

    A switch answers messages in order, so an error for one of a batch's xids
    arrives before the barrier reply that closes the batch: the reply confirms
    every response of the batch that no error was reported for.
    """

    def __init__(self) -> None:
        self._xids: dict[tuple[int, int], int] = {}           # (dpid, xid) -> response id
        self._open: dict[int, _Batch] = {}                     # dpid -> batch awaiting its barrier
        self._barriers: dict[tuple[int, int], _Batch] = {}     # (dpid, barrier xid) -> batch

    def sent(self, dpid: int, xid: int, rid: int) -> None:
        self._xids[(dpid, xid)] = rid
        self._open.setdefault(dpid, _Batch()).rids.add(rid)

    def pending(self, dpid: int) -> bool:
        return dpid in self._open

    def barrier(self, dpid: int, xid: int) -> None:
        batch = self._open.pop(dpid, None)
        if batch is not None:
            self._barriers[(dpid, xid)] = batch

    def error(self, dpid: int, xid: int) -> int | None:
        rid = self._xids.pop((dpid, xid), None)
        if rid is not None:
            for batch in [self._open.get(dpid), *self._barriers.values()]:
                if batch is not None and rid in batch.rids:
                    batch.failed.add(rid)
        return rid

    def reply(self, dpid: int, xid: int) -> list[int]:
        """The responses the barrier `xid` confirms (none if it was not ours)."""
        batch = self._barriers.pop((dpid, xid), None)
        if batch is None:
            return []
        for key in [k for k, rid in self._xids.items() if k[0] == dpid and rid in batch.rids]:
            del self._xids[key]
        return sorted(batch.rids - batch.failed)

    def forget(self, dpid: int) -> None:
        """The switch went away: its unanswered messages will never be answered."""
        self._open.pop(dpid, None)
        for key in [k for k in self._barriers if k[0] == dpid]:
            del self._barriers[key]
        for key in [k for k in self._xids if k[0] == dpid]:
            del self._xids[key]


class Responder:
    """Owns the engine, its store and audit log under `config.state_dir`."""

    def __init__(self, config: Config, inventory: Inventory, topology: Topology,
                 switches: Callable[[], Iterable[int]], wall: Callable[[], float],
                 playbooks: Sequence[pb.Playbook] | None = None) -> None:
        self.config = config
        self.inventory = inventory
        self.topology = topology
        self.wall = wall
        self._nets = Subnets(config.internal_subnets)
        from controller.response import state
        state.guard(config.state_dir, wall())       # never start with active responses forgotten
        store = ResponseStore(os.path.join(config.state_dir, "responses.sqlite"))
        self.audit = AuditLog(os.path.join(config.state_dir, "audit.jsonl"))
        self.engine = Engine([], store, self.audit, internal_subnets=config.internal_subnets,
                             gateway=self.gateway, dns_servers=self.dns_servers, hosts=self.host,
                             locate=topology.location, switches=switches, dry_run=config.dry_run,
                             protection=Protection(
                                 names=frozenset(config.protected_names), tags=frozenset(config.protected_tags),
                                 subnets=Subnets(config.protected_subnets), internal=self._nets,
                                 gateway=self.gateway, dns_servers=self.dns_servers,
                                 own_addresses=own_addresses(config)),
                             approve_within=config.approve_within)
        self.playbook_files: list[str] = []
        if playbooks is None:
            self.reload()
        else:
            self.engine.set_playbooks(playbooks)
        self.confirmations = Confirmations()
        self._decided: dict[int, float] = {}     # response id -> wall time its alert was raised
        self.latencies: collections.deque[float] = collections.deque(maxlen=LATENCIES)
        self.confirm_hook: Callable[[float], None] | None = None   # metrics
        self.counters: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[tuple] = collections.Counter()   # (action, outcome) -> n

    def close(self) -> None:
        self.engine.store.close()
        self.audit.close()

    # ------------------------------------------------------------ playbooks
    def reload(self) -> dict:
        """Load `config.playbooks`; PlaybookError (every problem) leaves the active set as it was."""
        missing = [p for p in self.config.playbooks if not os.path.exists(p)]
        if missing:
            raise pb.PlaybookError([pb.Problem(p, None, None, "responses.playbooks", "no such file or directory")
                                    for p in missing])
        hosts, tags = self._known()
        warnings: list[pb.Problem] = []
        files: list[str] = []
        books = pb.load_playbooks(self.config.playbooks, known_hosts=hosts, known_tags=tags, strict=False,
                                  warnings=warnings, files=files)
        self.engine.set_playbooks(books)
        self.playbook_files = files
        for w in warnings:
            LOG.warning("playbooks: %s", w)
        disabled = {b.name: b.disabled for b in books if b.disabled}
        for name, why in disabled.items():
            LOG.warning("playbook %s is disabled: %s (add it to the inventory, or edit the playbook)", name, why)
        LOG.info("playbooks: %d loaded from %s", len(books), ", ".join(files) or "(no files)")
        return {"loaded": [b.name for b in books], "files": files, "disabled": disabled,
                "warnings": [str(w) for w in warnings]}

    def _known(self) -> tuple[set[str] | None, set[str] | None]:
        """With an inventory in the config, host names and tags must come from it."""
        if not self.config.devices:
            return None, None
        hosts = {d.name for d in self.config.devices} | {ip for d in self.config.devices for ip in d.ips}
        tags = {t for d in self.config.devices for t in d.tags}
        return hosts, tags

    # ------------------------------------------------------------ lookups for the engine
    def device(self, mac: str) -> Device | None:
        return self.inventory.device(mac)

    def find(self, ref: str) -> Device | None:
        """A device by name, MAC or IP: what was seen first, then the configured inventory."""
        return self.inventory.find(ref)

    def gateway(self) -> tuple[str, str | None] | None:
        """The device tagged `gateway`: its configured address, else its first internal
        one seen in ARP (a router also ARPs from its WAN address under the same MAC)."""
        for dev in self.config.devices:
            ips = [a for a in dev.ips if self._internal(a)]
            if "gateway" in dev.tags and ips:
                mac = dev.mac or next((r.mac for r in self.inventory.devices.values() if ips[0] in r.ips), None)
                return ips[0], mac
        for rec in self.inventory.devices.values():
            ips = [a for a in rec.ips if self._internal(a)]
            if "gateway" in rec.tags and ips:
                return ips[0], rec.mac
        return None

    def dns_servers(self) -> tuple[str, ...]:
        """Configured servers, else the gateway (home routers answer DNS)."""
        if self.config.dns_servers:
            return self.config.dns_servers
        gw = self.gateway()
        return (gw[0],) if gw else ()

    def _internal(self, ip: str) -> bool:
        return ip in self._nets

    def host(self, ref: str) -> tuple[str, str | None, Location | None] | None:
        """(ip, next-hop MAC, where that MAC is) of a named host or an address.

        An internal host is reached at its own MAC; an external one through the gateway."""
        dev = self.find(ref)
        ip = next((a for a in dev.ips if ":" not in a), None) if dev is not None else None
        if dev is None:
            try:
                ip = str(ipaddress.IPv4Address(ref))
            except ValueError:
                return None
        if ip is None:
            return None
        if self._internal(ip):
            mac = dev.mac if dev else next((r.mac for r in self.inventory.devices.values()
                                              if ip in r.ips), None)
        else:
            gw = self.gateway()
            mac = gw[1] if gw else None
        return ip, mac, self.topology.location(mac) if mac else None

    # ------------------------------------------------------------ alerts
    def on_alerts(self, alerts: Iterable[Alert]) -> tuple[Out, list[dict]]:
        """Each alert to the engine: once for its device, or once per device of an outbreak."""
        out: Out = []
        jobs: list[dict] = []
        now = self.wall()
        for alert in alerts:
            if alert.kind == AlertKind.OUTBREAK:
                devices = [self.find(name) for name in alert.devices]
            else:
                devices = [self.device(alert.mac) if alert.mac is not None else None]
            for dev in devices:
                applied = self.engine.on_alert(alert, dev, now)
                out += applied.messages
                jobs += applied.notify
                self._note(applied.messages, alert)
                self._count(applied.decisions)
        return out, jobs

    def _count(self, decisions: list[Decision]) -> None:
        for d in decisions:
            self.outcomes[(d.action, d.outcome)] += 1

    def _note(self, messages: Out, alert: Alert) -> None:
        for _dpid, spec in messages:
            rid = self.engine.response_id(spec)
            if rid is not None:
                self._decided.setdefault(rid, float(alert.time))

    def manual(self, body: Mapping[str, Any], now: float) -> dict:
        """An operator's response (POST /api/v1/responses) as a one-action playbook, so
        it is validated, stored, escalated and audited like any other."""
        action = body.get("action")
        names = [a.name for a in REGISTRY.installing()]
        if not isinstance(action, str) or action not in names:
            raise RequestError(f"field 'action' must be one of {', '.join(names)}, got {_json(action)}")
        raw = body.get("params")
        if raw is not None and not isinstance(raw, dict):
            raise RequestError(f"field 'params' must be an object like {{\"kbps\": 1000}}, got {_json(raw)}")
        for name in ("dry_run", "force"):
            if body.get(name) is not None and not isinstance(body[name], bool):
                raise RequestError(f"field {name!r} must be true or false, got {_json(body[name])}")
        for name in ("device", "reason"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise RequestError(f"field {name!r} must be a string, got {_json(body[name])}")
        params = dict(raw or {})
        ttl = body.get("ttl")
        if ttl is not None:    # seconds as a number, or a duration like 10m
            if "ttl" in params:
                raise RequestError("ttl is given twice: as field 'ttl' and as 'params.ttl'; give one")
            if isinstance(ttl, bool) or not isinstance(ttl, (int, str)):
                raise RequestError(f"field 'ttl' must be whole seconds or a duration like \"10m\", got {_json(ttl)}")
            params["ttl"] = f"{ttl}s" if isinstance(ttl, int) else ttl
        ref = body.get("device")
        dev = None
        if REGISTRY.get(action).needs_device or ref not in (None, "", "-"):
            if not isinstance(ref, str) or not ref:
                raise RequestError(f"field 'device' (a name, MAC or IP) is required for {action}")
            dev = self.find(ref)
            if dev is None or not dev.mac:
                raise RequestError(f"unknown device {ref!r}: not seen on the network and not in the inventory")
        mode = "dry-run" if body.get("dry_run") else "enforce"
        text = yaml.safe_dump({"playbooks": [{
            "name": "manual", "description": "an operator's request", "mode": mode,
            "priority": MANUAL_PRIORITY, "when": {"kinds": ["anomaly"]}, "do": [{action: params}]}]})
        try:
            (book,) = pb.parse_playbooks(text, source="request")
        except pb.PlaybookError as e:
            raise RequestError("; ".join(_request_problem(p) for p in e.problems)) from None
        book = dataclasses.replace(book, when=dataclasses.replace(book.when, kinds=(AlertKind.MANUAL.value,)))
        reason = body.get("reason") if isinstance(body.get("reason"), str) else ""
        remote = params.get("ip")
        alert = Alert(id=f"manual-{int(now * 1000)}", time=now, kind=AlertKind.MANUAL,
                      device=dev.name if dev else None, mac=dev.mac if dev else None, score=0.0, threshold=0.0,
                      explanation=f"manual {action} requested by an operator" + (f": {reason}" if reason else ""),
                      remote=remote if isinstance(remote, str) else None)
        applied = self.engine.on_alert(alert, dev, now, playbooks=[book], force=body.get("force") is True)
        self._note(applied.messages, alert)
        self._count(applied.decisions)
        keys = ("action", "playbook", "mode", "response_id", "outcome", "error")
        actions = [{k: v for k, v in d.to_dict().items() if k in keys} for d in applied.decisions]
        actions += [Decision(action=j["action"], playbook=j["playbook"], mode=j["mode"], outcome="queued").to_dict()
                    for j in applied.notify]
        return {"messages": applied.messages, "jobs": applied.notify, "alert": alert.to_dict(),
                "actions": actions}

    def alert_from_request(self, body: Mapping[str, Any], now: float) -> Alert:
        """An alert raised by hand (POST /api/v1/alerts), to exercise playbooks."""
        allowed = {"kind", "device", "devices", "score", "explanation", "window", "features", "remote"}
        if not isinstance(body, Mapping):
            raise RequestError("the body must be a JSON object")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise RequestError(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
        kind = body.get("kind", "anomaly")
        if kind not in pb.ALERT_KINDS:
            raise RequestError(f"field 'kind' must be one of {', '.join(pb.ALERT_KINDS)}, got {kind!r}")
        score = body.get("score", 100.0)
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise RequestError("field 'score' must be a number")
        window = body.get("window") or {}
        if not isinstance(window, Mapping) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in window.values()):
            raise RequestError("field 'window' must map feature names to numbers")
        features = body.get("features") or []
        if not isinstance(features, list) or not all(isinstance(f, Mapping) for f in features):
            raise RequestError("field 'features' must be a list of objects")
        devices = body.get("devices") or []
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise RequestError("field 'devices' must be a list of device names")
        for name, value, most in (("devices", devices, MAX_ALERT_DEVICES), ("features", features, 32),
                                  ("window", window, 64)):
            if len(value) > most:   # each listed device is one engine call and one audit line
                raise RequestError(f"field {name!r} has {len(value)} entries; at most {most}")
        if isinstance(body.get("explanation"), str) and len(body["explanation"]) > 1000:
            raise RequestError(f"field 'explanation' is {len(body['explanation'])} characters; at most 1000")
        dev = None
        if kind != "outbreak":
            ref = body.get("device")
            if not isinstance(ref, str) or not ref:
                raise RequestError("field 'device' (a name, MAC or IP) is required")
            dev = self.find(ref)
            if dev is None:
                raise RequestError(f"unknown device {ref!r}: not seen on the network and not in the inventory")
        else:
            for name in devices:
                if self.find(name) is None:
                    raise RequestError(f"unknown device {name!r} in field 'devices'")
        text = body.get("explanation")
        if text is not None and not isinstance(text, str):
            raise RequestError("field 'explanation' must be text")
        remote = body.get("remote")
        name = dev.name if dev else f"{len(devices)} devices"
        try:
            return Alert.from_dict({
                "id": f"inj{int(now * 1000) % 10**9:09d}", "time": now, "kind": kind, "device": name,
                "mac": dev.mac if dev else None, "score": float(score), "threshold": 0.0,
                "explanation": text or f"{kind} raised by hand through the API for {name}", "baseline": "manual",
                "features": features, "devices": devices, "tags": dev.tags if dev else (), "last_time": now,
                "count": 1, "window": window, "remote": remote if isinstance(remote, str) else None})
        except ValueError as e:
            raise RequestError(f"field 'features': {e}") from None

    # ------------------------------------------------------------ lifecycle
    def release(self, rid: int, reason: str) -> Out:
        return self.engine.release(rid, self.wall(), reason)

    def approve(self, rid: int, by: str) -> Out:
        return self.engine.approve(rid, by, self.wall())

    def deny(self, rid: int, by: str, reason: str) -> None:
        self.engine.deny(rid, by, self.wall(), reason)

    def pending_view(self) -> list[dict]:
        return self.engine.pending_view(self.wall())

    def expire(self) -> Out:
        return self.engine.expire(self.wall())

    def removed_by_switch(self, rid: int, dpid: int) -> Out:
        return self.engine.removed_by_switch(rid, dpid, self.wall())

    def reconcile(self, dpid: int) -> Out:
        self.confirmations.forget(dpid)
        return self.engine.reconcile(dpid, self.wall())

    # ------------------------------------------------------------ confirmation
    def track(self, sent: Iterable[tuple[int, int, Spec]]) -> set[int]:
        """Messages about to be sent with their xids; returns the switches that need a barrier."""
        need = set()
        for dpid, xid, spec in sent:
            if not is_response_message(spec):
                continue
            rid = self.engine.response_id(spec)
            if rid is not None:
                self.confirmations.sent(dpid, xid, rid)
                need.add(dpid)
        return need

    def barrier_sent(self, dpid: int, xid: int) -> None:
        self.confirmations.barrier(dpid, xid)

    def barrier_reply(self, dpid: int, xid: int) -> None:
        now = self.wall()
        for rid in self.confirmations.reply(dpid, xid):
            try:
                self.engine.installed(rid, dpid, now)
            except KeyError:
                continue
            self.counters["installed"] += 1
            r = self.engine.store.get(rid)
            if r is not None and set(r.confirmed) >= set(r.dpids):   # the last switch confirmed
                self.outcomes[(r.action, "installed")] += 1
                t = self._decided.pop(rid, None)
                if t is not None:
                    self.latencies.append(now - t)
                    if self.confirm_hook is not None:
                        self.confirm_hook(now - t)

    def error(self, dpid: int, xid: int, text: str) -> Out | None:
        """An OpenFlow error; None if it was not about a response's message."""
        rid = self.confirmations.error(dpid, xid)
        if rid is None:
            return None
        self.counters["failed"] += 1
        self._decided.pop(rid, None)
        r = self.engine.store.get(rid)
        if r is not None:
            self.outcomes[(r.action, "failed")] += 1
        try:
            return self.engine.failed(rid, dpid, text, self.wall())
        except KeyError:
            return []

    # ------------------------------------------------------------ views
    def responses_view(self) -> list[dict]:
        return self.engine.active_view(self.wall())

    def audit_view(self, since: float | None) -> list[dict]:
        return self.audit.read(since)

    def health(self) -> dict:
        """The responses part of the health view."""
        lat = np.asarray(self.latencies, dtype=np.float64) * 1000.0
        return {"playbooks": len(self.engine.playbooks), "active": len(self.engine.store.active(self.wall())),
                "dry_run": self.config.dry_run, "installed": self.counters["installed"],
                "failed": self.counters["failed"],
                "confirm_ms": ({"n": int(lat.size), "median": round(float(np.median(lat)), 3),
                                "p99": round(float(np.percentile(lat, 99)), 3)} if lat.size else None)}

    def metrics(self) -> dict:
        """The responses part of the metrics snapshot: outcomes, and enforced responses by action."""
        active: dict[str, int] = {}
        for x in self.engine.store.active(self.wall()):
            if x.mode == "enforce":
                active[x.action] = active.get(x.action, 0) + 1
        return {"responses": dict(self.outcomes), "active_responses": active}

    def playbooks_view(self) -> list[dict]:
        return [{"name": b.name, "mode": b.mode, "priority": b.priority, "source": b.source,
                 "kinds": list(b.when.kinds), "actions": [a.kind for a in b.do],
                 "enabled": not b.disabled, **({"disabled": b.disabled} if b.disabled else {})}
                for b in self.engine.playbooks]


def _request_problem(p: pb.Problem) -> str:
    """A playbook problem in the words of the request body (params.<field>)."""
    where = p.field.split(".do[0].", 1)[-1] if p.field else ""
    where = where.split(".", 1)[-1] if "." in where else where
    if where == "ttl":
        return f"ttl: {p.message}"
    return f"params.{where}: {p.message}" if where else p.message
