"""Switches, inter-switch links and where each device is plugged in.

A networkx graph holds switches (nodes) and links learned from LLDP (edges,
with the port at each end).  A port that carries a link is a trunk: a MAC seen
there is somebody else's device, flooded or forwarded through, never local.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import networkx as nx


@dataclass(frozen=True)
class Location:
    dpid: int
    port: int


@dataclass
class _Sighting:
    loc: Location
    first_seen: float
    last_seen: float


class Topology:
    """Bounded: at most `max_devices` device locations.  When full, the location silent the
    longest makes room if it has been silent `stale_after` seconds; otherwise the new MAC is
    not located (counted in `full`), so a MAC flood cannot evict devices that are talking."""

    MAX_DEVICES = 10000
    STALE_AFTER = 300.0

    def __init__(self, link_timeout: float = 3.5, move_grace: float = 3.0,
                 max_devices: int = MAX_DEVICES, stale_after: float = STALE_AFTER) -> None:
        self.graph = nx.Graph()
        self.link_timeout = link_timeout
        self.move_grace = move_grace
        self._link_seen: dict[tuple[int, int, int, int], float] = {}
        self._trunks: set[tuple[int, int]] = set()
        self._where: OrderedDict[str, _Sighting] = OrderedDict()   # least recently seen first
        self.max_devices, self.stale_after = max_devices, stale_after
        self.full = 0      # new MACs not located because the table was full
        self.version = 0   # bumped whenever any device location may have changed
        self._sole: dict[int, dict[int, str]] = {}
        self._sole_version = -1

    # ------------------------------------------------------------ switches
    def add_switch(self, dpid: int) -> None:
        self.graph.add_node(dpid)

    def remove_switch(self, dpid: int) -> None:
        if dpid in self.graph:
            self.graph.remove_node(dpid)
        for key in [k for k in self._link_seen if dpid in (k[0], k[2])]:
            del self._link_seen[key]
        self._rebuild_trunks()
        for mac in [m for m, s in self._where.items() if s.loc.dpid == dpid]:
            del self._where[mac]
        self.version += 1

    @property
    def switches(self) -> list[int]:
        return sorted(self.graph.nodes)

    # ------------------------------------------------------------ links
    def add_link(self, src_dpid: int, src_port: int, dst_dpid: int, dst_port: int,
                 now: float) -> bool:
        """Record an LLDP sighting (src sent, dst received). True if the link is new."""
        key = (src_dpid, src_port, dst_dpid, dst_port)
        new = key not in self._link_seen
        self._link_seen[key] = now
        if new:
            self.graph.add_edge(src_dpid, dst_dpid, ports={src_dpid: src_port, dst_dpid: dst_port})
            self._rebuild_trunks()
            for port_end in ((src_dpid, src_port), (dst_dpid, dst_port)):
                for mac in [m for m, s in self._where.items()
                            if (s.loc.dpid, s.loc.port) == port_end]:
                    del self._where[mac]   # it was a trunk all along
            self.version += 1
        return new

    def expire_links(self, now: float) -> list[tuple[int, int, int, int]]:
        gone = [k for k, t in self._link_seen.items() if now - t > self.link_timeout]
        for k in gone:
            del self._link_seen[k]
        if gone:
            self._rebuild_graph_edges()
        return gone

    def port_down(self, dpid: int, port: int) -> None:
        gone = [k for k in self._link_seen if (k[0], k[1]) == (dpid, port) or (k[2], k[3]) == (dpid, port)]
        for k in gone:
            del self._link_seen[k]
        if gone:
            self._rebuild_graph_edges()
        for mac in [m for m, s in self._where.items() if s.loc == Location(dpid, port)]:
            del self._where[mac]
        self.version += 1

    def _rebuild_graph_edges(self) -> None:
        self.graph.remove_edges_from(list(self.graph.edges))
        for (a, ap, b, bp) in self._link_seen:
            self.graph.add_edge(a, b, ports={a: ap, b: bp})
        self._rebuild_trunks()

    def _rebuild_trunks(self) -> None:
        self._trunks = {(k[0], k[1]) for k in self._link_seen} | {(k[2], k[3]) for k in self._link_seen}

    def is_trunk(self, dpid: int, port: int) -> bool:
        return (dpid, port) in self._trunks

    def links(self) -> list[tuple[int, int, int, int]]:
        return sorted(self._link_seen)

    def links_view(self) -> list[dict]:
        """The links, as the health view lists them."""
        return [{"src": f"{a:016x}", "src_port": ap, "dst": f"{b:016x}", "dst_port": bp}
                for a, ap, b, bp in self.links()]

    # ------------------------------------------------------------ devices
    def observe(self, mac: str, dpid: int, port: int, now: float) -> bool:
        """A packet from `mac` entered (dpid, port).  True if its location changed.

        The first edge port a device is seen on wins; a later sighting elsewhere
        only moves it once the old place has been silent for `move_grace`
        seconds.  This keeps a flooded copy arriving over a not-yet-discovered
        trunk from stealing the location, while a device that really moved is
        followed.
        """
        if self.is_trunk(dpid, port):
            return False
        loc = Location(dpid, port)
        cur = self._where.get(mac)
        if cur is not None and cur.loc == loc:
            cur.last_seen = now
            self._where.move_to_end(mac)
            return False
        if cur is None and len(self._where) >= self.max_devices:
            oldest = next(iter(self._where))
            if now - self._where[oldest].last_seen < self.stale_after:
                self.full += 1
                return False
            del self._where[oldest]
        if cur is None or now - cur.last_seen > self.move_grace:
            self._where[mac] = _Sighting(loc, now, now)
            self._where.move_to_end(mac)
            self.version += 1
            return True
        return False

    def location(self, mac: str) -> Location | None:
        s = self._where.get(mac)
        return s.loc if s else None

    def sole_devices(self, dpid: int) -> dict[int, str]:
        """Edge ports of `dpid` with exactly one device located on them: port -> MAC.

        Such a port's receive counters are that device's transmit counters (the volume
        fast path reads them).  A port with several devices behind it (a hub, an
        unmanaged switch) is nobody's alone and is left out.  Cached until the next change."""
        if self._sole_version != self.version:
            ports: dict[tuple[int, int], list[str]] = {}
            for mac, s in self._where.items():
                ports.setdefault((s.loc.dpid, s.loc.port), []).append(mac)
            sole: dict[int, dict[int, str]] = {}
            for (d, port), macs in ports.items():
                if len(macs) == 1:
                    sole.setdefault(d, {})[port] = macs[0]
            self._sole, self._sole_version = sole, self.version
        return self._sole.get(dpid, {})

    def edge_dpid(self, mac: str) -> int | None:
        s = self._where.get(mac)
        return s.loc.dpid if s else None

    def forget_device(self, mac: str) -> None:
        self._where.pop(mac, None)
        self.version += 1

    def path(self, a: int, b: int) -> list[int] | None:
        try:
            return nx.shortest_path(self.graph, a, b)
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            return None
