"""`iotguard replay --pcap FILE`: the real controller core over a packet capture.

Each frame of the capture goes, on the capture's clock, to the switch that
controller/replayswitch.py emulates for a real `Core` (table-misses as packet-ins,
flows with counters and idle timeouts, flow-stats polls every `poll_interval`).
This module only reads the capture.
"""

from __future__ import annotations

import struct
from typing import Iterable, Iterator

from controller.config import Config
from controller.replayswitch import CaptureError, Replay, Result, with_learning

__all__ = ["CaptureError", "read_capture", "replay_pcap", "with_learning"]

LINKTYPE_ETHERNET = 1


# ------------------------------------------------------------------ reading the capture

def read_capture(path: str, warnings: list[str] | None = None) -> Iterator[tuple[float, bytes]]:
    """(timestamp, frame) of an Ethernet pcap or pcapng file, in file order.

    CaptureError (naming the file) if it cannot be opened, is neither format, or its
    link type is not Ethernet.  A capture cut short (a killed tcpdump) ends where it
    is cut, with a note in `warnings`."""
    import dpkt

    try:
        fh = open(path, "rb")
    except OSError as e:
        raise CaptureError(f"{path}: cannot read the capture: {e.strerror or e}") from None
    try:
        magic = fh.read(4)
        fh.seek(0)
        try:
            reader = dpkt.pcapng.Reader(fh) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(fh)
        except (ValueError, struct.error, dpkt.dpkt.Error, EOFError) as e:
            raise CaptureError(f"{path}: not a pcap or pcapng capture ({e or type(e).__name__})") from None
        link = reader.datalink()
        if link != LINKTYPE_ETHERNET:
            hint = " (Linux cooked capture: capture on one interface, not 'any')" if link in (113, 276) else ""
            raise CaptureError(f"{path}: link type {link} is not Ethernet (1){hint}; iotguard replays "
                               f"Ethernet captures, as a switch sees them")
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


# ------------------------------------------------------------------ the replay

def replay_pcap(path: str, config: Config, frames: Iterable[tuple[float, bytes]] | None = None,
                baselines: str | None = None, save_baselines: str | None = None) -> Result:
    """Run a fresh Core over the capture at `path` (or over `frames`, named `path`),
    starting from the state file `baselines` if given, saving to `save_baselines`."""
    warnings: list[str] = []
    source = iter(frames) if frames is not None else read_capture(path, warnings)
    first = next(source, None)
    if first is None:
        if warnings:
            raise CaptureError(warnings[0])
        raise CaptureError(f"{path}: the capture holds no frames")
    replay = Replay(config, first[0])
    if baselines is not None:
        replay.load_baselines(baselines)
    n = 0
    frame: tuple[float, bytes] | None = first
    while frame is not None:
        n += 1
        replay.frame(*frame)
        frame = next(source, None)
    return replay.finish(path, n, warnings, save=save_baselines)
