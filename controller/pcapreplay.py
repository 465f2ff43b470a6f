"""`iotguard replay --pcap FILE`: the real controller core over a packet capture.

Each frame of the capture goes, on the capture's clock, to the switch that
controller/replayswitch.py emulates for a real `Core` (table-misses as packet-ins,
flows with counters and idle timeouts, flow-stats polls every `poll_interval`).
This module only reads the capture.

Captures without Ethernet headers carry no MACs a switch would see: Linux cooked
captures (`tcpdump -i any`, SLL and SLL2) and raw IP.  Their frames are given an
Ethernet header with the synthetic MACs of `--conn-log` (connreplay.mac_for: each
internal address its own, every other address behind one gateway that announces
itself first), ARP rewritten to match; devices are named by address, the gateway
tagged `gateway`, and `--devices` names them by `ip:`.  Frames that are neither IP
nor ARP are skipped and counted in a warning.
"""

from __future__ import annotations

import struct
from typing import Iterable, Iterator

from controller.config import Config
from controller.replayswitch import CaptureError, Replay, Result, with_learning

__all__ = ["CaptureError", "read_capture", "replay_pcap", "with_learning"]

LINKTYPE_ETHERNET = 1
# Link types without Ethernet MACs that are replayed with synthetic ones (see above).
NO_MACS = {113: "Linux cooked capture (SLL)", 276: "Linux cooked capture v2 (SLL2)", 101: "raw IP",
           12: "raw IP", 14: "raw IP", 228: "raw IPv4", 229: "raw IPv6"}
ETH_IP, ETH_IP6, ETH_ARP = 0x0800, 0x86DD, 0x0806


# ------------------------------------------------------------------ reading the capture

def _open(path: str):
    """(file, dpkt reader) of a pcap or pcapng; CaptureError naming the file otherwise."""
    import dpkt

    try:
        fh = open(path, "rb")
    except OSError as e:
        raise CaptureError(f"{path}: cannot read the capture: {e.strerror or e}") from None
    try:
        magic = fh.read(4)
        fh.seek(0)
        return fh, dpkt.pcapng.Reader(fh) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(fh)
    except (ValueError, struct.error, dpkt.dpkt.Error, EOFError) as e:
        fh.close()
        raise CaptureError(f"{path}: not a pcap or pcapng capture ({e or type(e).__name__})") from None


def link_type(path: str) -> int:
    """The capture's link type (its first interface's, for pcapng); CaptureError as read_capture."""
    fh, reader = _open(path)
    fh.close()
    return int(reader.datalink())


def read_capture(path: str, warnings: list[str] | None = None,
                 link_types: tuple[int, ...] = (LINKTYPE_ETHERNET,)) -> Iterator[tuple[float, bytes]]:
    """(timestamp, frame) of a pcap or pcapng file, in file order, as recorded.

    CaptureError (naming the file) if it cannot be opened, is neither format, or its
    link type is not one of `link_types`.  A capture cut short (a killed tcpdump) ends
    where it is cut, with a note in `warnings`."""
    import dpkt

    fh, reader = _open(path)
    try:
        link = reader.datalink()
        if link not in link_types:
            raise CaptureError(f"{path}: link type {link} is not Ethernet (1) nor one without MACs that "
                               f"iotguard replays with synthetic ones ({', '.join(f'{k} {v}' for k, v in NO_MACS.items())})")
        n = 0
        try:
            for ts, buf in reader:
                n += 1
                yield float(ts), bytes(buf)
        except (ValueError, struct.error, dpkt.dpkt.Error, EOFError) as e:
            if warnings is not None:
                warnings.append(f"{path}: the capture ends in a damaged record after frame {n} "
                                f"({e or type(e).__name__}); replayed the frames before it")
    finally:
        fh.close()


def network_layer(link: int, buf: bytes) -> tuple[int, bytes] | None:
    """(EtherType, network-layer bytes) of a frame of a link type without MACs; None if
    it is too short or of no version this reads."""
    if link == 113:
        return (int.from_bytes(buf[14:16], "big"), buf[16:]) if len(buf) >= 16 else None
    if link == 276:
        return (int.from_bytes(buf[0:2], "big"), buf[20:]) if len(buf) >= 20 else None
    if not buf:
        return None
    version = buf[0] >> 4
    if link == 228 or (link != 229 and version == 4):
        return ETH_IP, buf
    if link == 229 or version == 6:
        return ETH_IP6, buf
    return None


def synthetic_frame(ethertype: int, l3: bytes, mac) -> tuple[bytes, str | None] | None:
    """An Ethernet frame around `l3` with the synthetic MACs `mac(ip)` gives, and its
    sender's address; ARP's hardware addresses rewritten to match.  None: not IP or ARP."""
    import ipaddress
    from controller.connreplay import mac_bytes
    if ethertype == ETH_IP and len(l3) >= 20:
        src, dst = str(ipaddress.IPv4Address(l3[12:16])), str(ipaddress.IPv4Address(l3[16:20]))
    elif ethertype == ETH_IP6 and len(l3) >= 40:
        src, dst = str(ipaddress.IPv6Address(l3[8:24])), str(ipaddress.IPv6Address(l3[24:40]))
    elif ethertype == ETH_ARP and len(l3) >= 28 and l3[0:6] == b"\x00\x01\x08\x00\x06\x04":
        spa, tpa = str(ipaddress.IPv4Address(l3[14:18])), str(ipaddress.IPv4Address(l3[24:28]))
        op = int.from_bytes(l3[6:8], "big")
        s_mac = mac_bytes(mac(spa))
        d_mac = mac_bytes(mac(tpa)) if op == 2 else b"\xff" * 6
        arp = l3[:8] + s_mac + l3[14:18] + (d_mac if op == 2 else l3[18:24]) + l3[24:]
        return d_mac + s_mac + ETH_ARP.to_bytes(2, "big") + arp, spa
    else:
        return None
    s_mac, d_mac = mac_bytes(mac(src)), mac_bytes(mac(dst))
    return d_mac + s_mac + ethertype.to_bytes(2, "big") + l3, src


def _synthetic_frames(path: str, link: int, mac, warnings: list[str] | None,
                      senders: dict | None = None) -> Iterator[tuple[float, bytes]]:
    """The capture's frames with Ethernet headers (synthetic_frame); `senders` collects
    every sender's address; frames that are not IP or ARP are skipped and told."""
    skipped = 0
    for ts, buf in read_capture(path, warnings, link_types=(link,)):
        l3 = network_layer(link, buf)
        out = synthetic_frame(*l3, mac) if l3 is not None else None
        if out is None:
            skipped += 1
            continue
        if senders is not None and out[1] is not None:
            senders[out[1]] = None
        yield ts, out[0]
    if skipped and warnings is not None:
        warnings.append(f"{path}: skipped {skipped:,} frames that are neither IP nor ARP (a {NO_MACS[link]} "
                        f"is replayed from its addresses)")


# ------------------------------------------------------------------ the replay

def replay_pcap(path: str, config: Config, frames: Iterable[tuple[float, bytes]] | None = None,
                baselines: str | None = None, save_baselines: str | None = None) -> Result:
    """Run a fresh Core over the capture at `path` (or over `frames`, named `path`),
    starting from the state file `baselines` if given, saving to `save_baselines`."""
    warnings: list[str] = []
    link = LINKTYPE_ETHERNET if frames is not None else link_type(path)
    gateway = None
    if link in NO_MACS:
        from controller.connreplay import GATEWAY_MAC, Addresses, announcement, synthetic_inventory
        addresses = Addresses(config.internal_subnets)
        senders: dict[str, None] = {}
        for _ in _synthetic_frames(path, link, addresses.mac, None, senders):     # who sends: the inventory
            pass
        config = synthetic_inventory(config, senders, addresses, warnings, f"a {NO_MACS[link]}")
        source = _synthetic_frames(path, link, addresses.mac, warnings)
        gateway = announcement(GATEWAY_MAC)
    else:
        source = iter(frames) if frames is not None else read_capture(path, warnings)
    first = next(source, None)
    if first is None:
        if warnings:
            raise CaptureError(warnings[-1])
        raise CaptureError(f"{path}: the capture holds no frames")
    replay = Replay(config, first[0])
    if baselines is not None:
        replay.load_baselines(baselines)
    if gateway is not None:
        replay.frame(first[0], gateway)         # a router is known to a switch long before
        warnings.insert(0, f"{path}: a {NO_MACS[link]} has no Ethernet MACs: each internal address got a "
                           f"synthetic one (02:00 and its four bytes), every other address is behind one "
                           f"gateway, and devices are named by address (--devices names them by 'ip:')")
    n = 0
    frame: tuple[float, bytes] | None = first
    while frame is not None:
        n += 1
        replay.frame(*frame)
        frame = next(source, None)
    return replay.finish(path, n, warnings, save=save_baselines)
