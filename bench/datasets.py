"""Loaders for the public IoT traffic shipped under tests/data/captures (and N-BaIoT if present).

Everything here is offline: it reads files in the repository (or a directory you name),
never the network.  Provenance, licences and checksums: tests/data/captures/SOURCES.md.

Three sources, three shapes:

* ``iot23_scenarios()``: Stratosphere IoT-23 Zeek connection logs (``*.conn.csv.gz``),
  real Raspberry Pi devices infected with Mirai / Torii / Hakai / a trojan, and real benign
  consumer devices (Philips Hue, Amazon Echo).  Each log is cut into windows of the device
  of interest and turned into iotguard's own feature vector (``controller.telemetry.features
  .FEATURES``, 15 columns), one row per window in which the device had a connection.
* ``pcap_windows()``: the same feature vector from a pcap/pcapng of one device (dpkt), used
  for the benign Lifecycle captures (a smart plug and a camera).
* ``load_nbaiot()``: N-BaIoT (UCI "detection of IoT botnet attacks", CC BY 4.0) feature rows,
  115 columns as published, from a local copy in either published layout.  No sample is
  shipped (see SOURCES.md); pass ``--nbaiot DIR`` to the benchmark to use one.

How conn records become windows (approximations, stated once):

* A connection is counted whole in the window where it *started* (Zeek gives totals, not a
  time series), so a long transfer lands in one window.  Windows where the device had no
  connection are not rows: iotguard emits rows only for devices active in the window.
* Direction: when the device is the originator, orig_* bytes/packets are its tx and the
  connection counts in new_flows, distinct_dst_ips, lateral_peers, distinct_dst_ports.
  When it is the responder (it answers a peer), resp_* are its tx and the connection counts
  only in bytes, packets and protocol shares, as iotguard treats replies
  (``forwarding.is_reply``).
* ``new_dst_share`` needs the set of destinations known from training, so windows carry a
  ``dst_bytes`` map and ``finalize_new_dst_share`` fills the column once the split is known.
* A window is *malicious* if any of its connections is labelled malicious by IoT-23; its
  ``kinds`` are the IoT-23 detailed labels (C&C, DDoS, PartOfAHorizontalPortScan, ...).
"""

from __future__ import annotations

import csv
import gzip
import io
import ipaddress
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTURES = os.path.join(ROOT, "tests", "data", "captures")

# iotguard's feature order (controller/telemetry/features.py).  Kept as a literal so the loaders
# work without importing the controller; the benchmark checks it against the controller's.
FEATURES: tuple[str, ...] = (
    "tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "new_flows",
    "distinct_dst_ips", "lateral_peers", "distinct_dst_ports", "new_dst_share",
    "tcp_share", "udp_share", "icmp_share", "other_share", "mean_pkt_size", "dns_queries")
IDX = {n: i for i, n in enumerate(FEATURES)}
INTERNAL = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


@dataclass
class Windows:
    """One device's windows: X (n, 15) in FEATURES order, labels and start times."""

    name: str
    device: str                  # what the device is
    device_ip: str
    X: np.ndarray
    malicious: np.ndarray        # bool per window
    start: np.ndarray            # window start, epoch seconds
    kinds: list[frozenset]       # detailed labels of malicious connections per window
    dst_bytes: list[dict]        # per window: IPv4 destination -> tx bytes (for new_dst_share)
    window: float = 10.0         # seconds
    source: str = ""


# ----------------------------------------------------------------- IoT-23 scenarios
# Device of interest per capture (from the IoT-23 scenario READMEs; checked against the logs:
# it is the address in nearly every record).
IOT23: tuple[tuple[str, str, str], ...] = (
    ("CTU-Malware-Capture-34-1", "192.168.1.195", "Raspberry Pi infected with Mirai"),
    ("CTU-Malware-Capture-44-1", "192.168.1.199", "Raspberry Pi infected with Mirai"),
    ("CTU-Malware-Capture-8-1", "192.168.100.113", "Raspberry Pi infected with Hakai"),
    ("CTU-Malware-Capture-20-1", "192.168.100.103", "Raspberry Pi infected with Torii"),
    ("CTU-Malware-Capture-21-1", "192.168.100.113", "Raspberry Pi infected with Torii"),
    ("CTU-Malware-Capture-42-1", "192.168.1.197", "Raspberry Pi infected with a trojan (Trojan)"),
    ("CTU-Honeypot-Capture-4-1", "192.168.1.132", "Philips HUE bridge (benign)"),
    ("CTU-Honeypot-Capture-5-1", "192.168.2.3", "Amazon Echo (benign)"),
)


def _num(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        return 0.0
    return f if math.isfinite(f) and f > 0 else 0.0


def _internal(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return a.version == 4 and any(a in n for n in INTERNAL)


def _ipv4(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return a.version == 4 and not (a.is_multicast or ip == "255.255.255.255")


class _Acc:
    """Accumulates one window of one device."""

    __slots__ = ("tx_b", "rx_b", "tx_p", "rx_p", "flows", "dsts", "lateral", "ports",
                 "proto_p", "dns", "dst_bytes", "mal", "kinds")

    def __init__(self) -> None:
        self.tx_b = self.rx_b = self.tx_p = self.rx_p = 0.0
        self.flows = 0
        self.dsts: set = set()
        self.lateral: set = set()
        self.ports: set = set()
        self.proto_p = {"tcp": 0.0, "udp": 0.0, "icmp": 0.0, "other": 0.0}
        self.dns = 0.0
        self.dst_bytes: dict = {}
        self.mal = False
        self.kinds: set = set()

    def add(self, proto: str, tx_b: float, tx_p: float, rx_b: float, rx_p: float,
            dst: str | None, dport: int | None) -> None:
        self.tx_b += tx_b
        self.rx_b += rx_b
        self.tx_p += tx_p
        self.rx_p += rx_p
        self.proto_p[proto if proto in ("tcp", "udp", "icmp") else "other"] += tx_p
        if dst is None:
            return                      # an answer: bytes, packets and shares only
        self.flows += 1
        if _ipv4(dst):
            self.dsts.add(dst)
            self.dst_bytes[dst] = self.dst_bytes.get(dst, 0.0) + tx_b
            if _internal(dst):
                self.lateral.add(dst)
        if proto in ("tcp", "udp") and dport is not None:
            self.ports.add((proto, dport))
            if proto == "udp" and dport == 53:
                self.dns += tx_p

    def row(self, window: float) -> list[float]:
        x = [0.0] * len(FEATURES)
        x[IDX["tx_bytes"]] = self.tx_b / window
        x[IDX["rx_bytes"]] = self.rx_b / window
        x[IDX["tx_packets"]] = self.tx_p / window
        x[IDX["rx_packets"]] = self.rx_p / window
        x[IDX["new_flows"]] = self.flows
        x[IDX["distinct_dst_ips"]] = len(self.dsts)
        x[IDX["lateral_peers"]] = len(self.lateral)
        x[IDX["distinct_dst_ports"]] = len(self.ports)
        if self.tx_p > 0:
            for p in ("tcp", "udp", "icmp", "other"):
                x[IDX[f"{p}_share"]] = self.proto_p[p] / self.tx_p
            x[IDX["mean_pkt_size"]] = self.tx_b / self.tx_p
        x[IDX["dns_queries"]] = self.dns
        return x


def _to_windows(name: str, device: str, ip: str, accs: dict, window: float, source: str) -> Windows:
    keys = sorted(accs)
    X = np.array([accs[k].row(window) for k in keys], dtype=np.float64).reshape(len(keys), len(FEATURES))
    return Windows(name, device, ip, X, np.array([accs[k].mal for k in keys], dtype=bool),
                   np.array([k * window for k in keys], dtype=np.float64),
                   [frozenset(accs[k].kinds) for k in keys], [accs[k].dst_bytes for k in keys], window, source)


def read_conn_log(path: str) -> list[dict]:
    """Rows of a shipped IoT-23 conn log (.csv or .csv.gz), as dicts of strings."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def conn_windows(path: str, device_ip: str, window: float = 10.0, name: str = "",
                 device: str = "") -> Windows:
    """One device's windows from a Zeek conn log with IoT-23 labels."""
    accs: dict[int, _Acc] = {}
    for r in read_conn_log(path):
        orig, resp = r["id.orig_h"], r["id.resp_h"]
        if device_ip not in (orig, resp):
            continue
        k = int(float(r["ts"]) // window)
        a = accs.get(k)
        if a is None:
            a = accs[k] = _Acc()
        proto = r["proto"].lower()
        ob, op = _num(r["orig_ip_bytes"]), _num(r["orig_pkts"])
        rb, rp = _num(r["resp_ip_bytes"]), _num(r["resp_pkts"])
        try:
            dport = int(float(r["id.resp_p"]))
        except ValueError:
            dport = None
        if orig == device_ip:
            a.add(proto, ob, op, rb, rp, resp, dport)
        else:
            a.add(proto, rb, rp, ob, op, None, None)
        if r["label"].strip().lower().startswith("malicious"):
            a.mal = True
            a.kinds.add(r["detailed-label"].strip())
    return _to_windows(name or os.path.basename(path), device, device_ip, accs, window, path)


def iot23_scenarios(window: float = 10.0, directory: str | None = None,
                    names: Sequence[str] | None = None) -> list[Windows]:
    """Every shipped IoT-23 scenario as windows of its device of interest."""
    d = directory or os.path.join(CAPTURES, "iot23")
    out = []
    for name, ip, what in IOT23:
        if names and name not in names:
            continue
        path = os.path.join(d, f"{name}.conn.csv.gz")
        if os.path.exists(path):
            out.append(conn_windows(path, ip, window, name, what))
    return out


def finalize_new_dst_share(w: Windows, known: Iterable[str]) -> np.ndarray:
    """X with new_dst_share filled: share of tx bytes to destinations outside `known`."""
    known = set(known)
    X = w.X.copy()
    j = IDX["new_dst_share"]
    for i, db in enumerate(w.dst_bytes):
        tx = X[i, IDX["tx_bytes"]]
        if tx <= 0 or not known:
            continue
        new = sum(b for dst, b in db.items() if dst not in known)
        X[i, j] = min(1.0, new / (tx * w.window))
    return X


# ----------------------------------------------------------------- pcaps
def open_capture(path: str):
    """A dpkt reader for a pcap or pcapng file (by its magic number)."""
    import dpkt   # only the pcap paths need it

    fh = open(path, "rb")
    magic = fh.read(4)
    fh.seek(0)
    if magic == b"\x0a\x0d\x0d\x0a":
        return dpkt.pcapng.Reader(fh)
    return dpkt.pcap.Reader(fh)


def pcap_windows(path: str, device_mac: str, window: float = 10.0, name: str = "",
                 device: str = "") -> Windows:
    """One device's windows from an Ethernet capture, by its MAC address.

    A conversation (destination IPv4, protocol, destination port) counts in new_flows in a
    window if it was not seen in the previous window (an idle timeout of about one window).
    Frames the device sends as answers (TCP SYN-ACK/RST, UDP from a port < 1024 to a higher
    one) count in bytes, packets and shares only, as in iotguard.
    """
    import dpkt

    mac = bytes.fromhex(device_mac.replace(":", ""))
    accs: dict[int, _Acc] = {}
    seen: dict[int, set] = {}
    ip = ""
    for ts, buf in open_capture(path):
        try:
            eth = dpkt.ethernet.Ethernet(buf)
        except (dpkt.UnpackError, IndexError):
            continue
        if eth.src != mac and eth.dst != mac:
            continue
        k = int(ts // window)
        a = accs.get(k)
        if a is None:
            a = accs[k] = _Acc()
        n = float(len(buf))
        pkt = eth.data
        proto, dst, dport, reply = "other", None, None, False
        if isinstance(pkt, dpkt.ip.IP):
            dst = socket.inet_ntoa(pkt.dst)
            l4 = pkt.data
            if isinstance(l4, dpkt.tcp.TCP):
                proto, dport = "tcp", l4.dport
                reply = bool(l4.flags & 0x04) or (l4.flags & 0x12) == 0x12
            elif isinstance(l4, dpkt.udp.UDP):
                proto, dport = "udp", l4.dport
                reply = l4.sport < 1024 <= l4.dport
            elif isinstance(l4, dpkt.icmp.ICMP):
                proto = "icmp"
            if eth.src == mac and not ip:
                ip = socket.inet_ntoa(pkt.src)
        if eth.src == mac:
            if dst is None or reply:
                a.add(proto, n, 1.0, 0.0, 0.0, None, None)
            else:
                conv = (dst, proto, dport)
                cur = seen.setdefault(k, set())
                if conv in cur:      # already counted this window: bytes only
                    a.add(proto, n, 1.0, 0.0, 0.0, None, None)
                    if _ipv4(dst):
                        a.dst_bytes[dst] = a.dst_bytes.get(dst, 0.0) + n
                    if proto == "udp" and dport == 53:
                        a.dns += 1.0
                else:
                    cur.add(conv)
                    a.add(proto, n, 1.0, 0.0, 0.0, dst, dport)
                    if conv in seen.get(k - 1, ()):
                        a.flows -= 1    # still the same conversation as last window
        else:
            a.rx_b += n
            a.rx_p += 1.0
    return _to_windows(name or os.path.basename(path), device, ip, accs, window, path)


# Shipped benign pcaps: (file, MAC of the device, what it is)
LIFECYCLE: tuple[tuple[str, str, str], ...] = (
    ("xiaodu_plug.pcap", "f4:21:ae:9e:8f:cb", "Xiaodu smart plug, whole lifecycle (benign)"),
    ("xiaobai_Y2camera_idle_local.pcap", "78:df:72:24:69:4d", "Xiaobai Y2 camera, 30 min idle (benign)"),
)


def lifecycle_devices(window: float = 10.0, directory: str | None = None) -> list[Windows]:
    d = directory or os.path.join(CAPTURES, "lifecycle")
    out = []
    for f, mac, what in LIFECYCLE:
        path = os.path.join(d, f)
        if os.path.exists(path):
            out.append(pcap_windows(path, mac, window, f.rsplit(".", 1)[0], what))
    return out


# ----------------------------------------------------------------- N-BaIoT
NBAIOT_DEVICES = (
    "Danmini_Doorbell", "Ecobee_Thermostat", "Ennio_Doorbell", "Philips_B120N10_Baby_Monitor",
    "Provision_PT_737E_Security_Camera", "Provision_PT_838_Security_Camera",
    "Samsung_SNH_1011_N_Webcam", "SimpleHome_XCS7_1002_WHT_Security_Camera",
    "SimpleHome_XCS7_1003_WHT_Security_Camera")


@dataclass
class NBaIoTDevice:
    device: str
    columns: list[str]
    benign: np.ndarray
    attack: np.ndarray
    attack_kind: list[str] = field(default_factory=list)


def _read_csv_rows(path: str, limit: int | None, rng: np.random.Generator | None):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        text = fh.read()
    reader = csv.reader(io.StringIO(text))
    cols = next(reader)
    rows = np.array([[float(v) for v in r] for r in reader if r], dtype=np.float64)
    if limit is not None and len(rows) > limit:
        idx = np.sort((rng or np.random.default_rng(0)).choice(len(rows), limit, replace=False))
        rows = rows[idx]
    return cols, rows


def load_nbaiot(root: str, devices: Sequence[str] | None = None, max_benign: int = 4000,
                max_attack_per_file: int = 300, seed: int = 0) -> list[NBaIoTDevice]:
    """N-BaIoT feature rows from a local directory, either layout the dataset is published in:

    * UCI: ``<root>/<i>.benign.csv``, ``<root>/<i>.mirai.<attack>.csv``, ``<root>/<i>.gafgyt.<attack>.csv``
      with i = 1..9 in NBAIOT_DEVICES order;
    * per-device folders: ``<root>/<Device>/benign_traffic.csv``, ``<root>/<Device>/mirai_attacks/*.csv``,
      ``<root>/<Device>/gafgyt_attacks/*.csv``.

    Also accepts the files gzipped (``.csv.gz``).  Rows are subsampled with a fixed seed.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i, dev in enumerate(NBAIOT_DEVICES, 1):
        if devices and dev not in devices:
            continue
        files: list[tuple[str, str]] = []          # (path, kind)
        benign = None
        for ext in (".csv", ".csv.gz"):
            if os.path.exists(os.path.join(root, f"{i}.benign{ext}")):
                benign = os.path.join(root, f"{i}.benign{ext}")
                for fam in ("mirai", "gafgyt"):
                    for att in ("ack", "scan", "syn", "udp", "udpplain", "combo", "junk", "tcp"):
                        p = os.path.join(root, f"{i}.{fam}.{att}{ext}")
                        if os.path.exists(p):
                            files.append((p, f"{fam}.{att}"))
            d = os.path.join(root, dev)
            if os.path.exists(os.path.join(d, f"benign_traffic{ext}")):
                benign = os.path.join(d, f"benign_traffic{ext}")
                for fam in ("mirai", "gafgyt"):
                    fd = os.path.join(d, f"{fam}_attacks")
                    if os.path.isdir(fd):
                        for f in sorted(os.listdir(fd)):
                            if f.endswith(ext):
                                files.append((os.path.join(fd, f), f"{fam}.{f[:-len(ext)]}"))
        if benign is None or not files:
            continue
        cols, B = _read_csv_rows(benign, max_benign, rng)
        parts, kinds = [], []
        for p, kind in files:
            c, A = _read_csv_rows(p, max_attack_per_file, rng)
            if c != cols:
                raise ValueError(f"{p}: columns differ from {benign}")
            parts.append(A)
            kinds += [kind] * len(A)
        out.append(NBaIoTDevice(dev, cols, B, np.vstack(parts), kinds))
    return out
