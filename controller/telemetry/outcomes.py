"""Did a connection a device opened get an answer?  Judged from its flow's counters.

A device's TCP SYN reaches the controller as a packet-in at its edge switch; the
forwarder installs the conversation's flow and the SYN leaves as a packet-out, which no
counter sees.  What the device sends on that conversation afterwards is counted on the
flow, and it tells how the connection went:

* answered (SYN-ACK): the device sends an ACK, smaller than its SYN (a SYN carries an
  MSS option, an ACK never does), then its data;
* refused (RST): the device sends nothing more on it;
* no answer: the device retransmits the same SYN, the same size byte for byte.

So `JUDGE_AFTER` seconds after the SYN, a flow that counted nothing, or only packets of
the SYN's size, carried a connection that failed.  Scanners and bots are made of these
(Mirai's SYNs to random addresses, Torii's retries to a dead C2); a device's own cloud
connections almost never fail.  The detector counts them per device over its horizons
(`NoveltyMemory.failed`).

Blind spots: only the conversation whose SYN was a packet-in is judged (later SYNs to the
same host and port while its flow is installed share that flow and are not); an answered
connection whose first packets average exactly its SYN's size counts as failed; so does
one whose peer answers later than `JUDGE_AFTER`; UDP is never judged (a UDP service need
not answer).

Pure Python and numpy; bounded (`MAX_PENDING` connections awaiting judgement, the oldest
is dropped unjudged, counted in `dropped`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from controller.openflow import rules
from controller.telemetry.stats import FlowDeltas

__all__ = ["JUDGE_AFTER", "MAX_PENDING", "Outcome", "ConnectionOutcomes"]

JUDGE_AFTER = 2.5        # s after the SYN: an answer's ACK is counted by then, a retransmission too
MAX_PENDING = 4096
_FORWARD = np.uint64(rules.cookie(rules.Kind.FORWARD))
_KIND_MASK = np.uint64(rules.COOKIE_KIND_MASK)
_ID_MASK = np.uint64(rules.COOKIE_ID_MASK)
_SLACK = 1               # bytes per packet: an emulated switch spreads a log's bytes evenly


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One judged connection: who opened it, to what, when, and whether it failed."""

    mac: str
    time: float          # when its SYN was seen
    ip: int              # IPv4 destination, as an int
    port: int            # TCP destination port
    failed: bool
    retries: int         # SYN-sized packets counted after the first (retransmissions)


class _Pending:
    __slots__ = ("mac", "time", "ip", "port", "dpid", "syn", "packets", "bytes")

    def __init__(self, mac: str, time: float, ip: int, port: int, dpid: int, syn: int) -> None:
        self.mac, self.time, self.ip, self.port, self.dpid, self.syn = mac, time, ip, port, dpid, syn
        self.packets = self.bytes = 0


class ConnectionOutcomes:
    """Connections awaiting judgement, by flow id; `due` returns those that are ripe."""

    def __init__(self, judge_after: float = JUDGE_AFTER, max_pending: int = MAX_PENDING) -> None:
        self.judge_after, self.max_pending = float(judge_after), int(max_pending)
        self._pending: OrderedDict[int, _Pending] = OrderedDict()    # oldest SYN first
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._pending)

    def opened(self, fid: int, mac: str, ip: int, port: int, dpid: int, syn_bytes: int, now: float) -> None:
        """A bare SYN of `mac` was a packet-in at its edge switch `dpid`, and flow `fid`
        now carries its conversation.  A flow already awaiting judgement keeps its first SYN."""
        fid = int(fid)
        if fid in self._pending or syn_bytes <= 0:
            return
        if len(self._pending) >= self.max_pending:
            self._pending.popitem(last=False)
            self.dropped += 1
        self._pending[fid] = _Pending(mac, now, int(ip), int(port), int(dpid), int(syn_bytes))

    def add(self, deltas: FlowDeltas) -> None:
        """One switch's poll deltas (or a flow-removed tail): count them on pending flows
        whose SYN was seen at that switch.  Cost: one membership test per flow entry
        only while something is pending."""
        if not self._pending or len(deltas) == 0:
            return
        c = np.asarray(deltas.cookie).astype(np.uint64, copy=False)
        fids = (c & _ID_MASK).astype(np.int64)
        pend = np.fromiter(self._pending.keys(), dtype=np.int64, count=len(self._pending))
        hit = ((c & _KIND_MASK) == _FORWARD) & np.isin(fids, pend)
        pk, by = np.asarray(deltas.packets), np.asarray(deltas.bytes)
        for i in np.flatnonzero(hit):
            p = self._pending[int(fids[i])]
            if p.dpid == deltas.dpid:
                p.packets += int(pk[i])
                p.bytes += int(by[i])

    def due(self, now: float) -> list[Outcome]:
        """Judge and forget every connection whose SYN is `judge_after` old."""
        out: list[Outcome] = []
        while self._pending:
            fid, p = next(iter(self._pending.items()))
            if now - p.time < self.judge_after:
                break
            del self._pending[fid]
            failed = abs(p.bytes - p.packets * p.syn) <= _SLACK * p.packets
            out.append(Outcome(mac=p.mac, time=p.time, ip=p.ip, port=p.port, failed=failed,
                               retries=p.packets if failed else 0))
        return out
