"""Raw OpenFlow 1.3 flow-stats bodies, read with numpy.

os-ken builds an object per entry (match and instructions included) before a
handler runs: about 7k entries/s, more than a 1 s poll budget for a big table.
iotguard needs only the fixed 48-byte head of each `ofp_flow_stats` (cookies
identify our flows), so it reads that straight from the bytes.  Following the
length fields is done run by run with numpy (`_offsets`).
"""

from __future__ import annotations

import struct

import numpy as np

# struct ofp_flow_stats, up to (not including) the match.
FLOW_STATS_HEAD = np.dtype([
    ("length", ">u2"), ("table_id", "u1"), ("_pad", "u1"),
    ("duration_sec", ">u4"), ("duration_nsec", ">u4"),
    ("priority", ">u2"), ("idle_timeout", ">u2"), ("hard_timeout", ">u2"),
    ("flags", ">u2"), ("_pad2", "V4"),
    ("cookie", ">u8"), ("packet_count", ">u8"), ("byte_count", ">u8"),
])
HEAD_SIZE = FLOW_STATS_HEAD.itemsize  # 48
MIN_ENTRY = HEAD_SIZE + 8              # head plus an empty ofp_match
_LEN = struct.Struct("!H")
_WORDS = np.arange(HEAD_SIZE // 8)
_RUN = 16        # steps between two looks for a run of one length (read with numpy if found)
_PROBE = 64      # entries such a read covers first
_SHORT = 256    # a run shorter than this joins the walked list instead of an array of its own
_MAX_PROBE = 1 << 16                  # ... and at most (a longer run takes several)
_ARANGE = np.arange(_MAX_PROBE, dtype=np.int64)


class WireError(ValueError):
    """A malformed body: the switch (or whoever speaks for it) is lying."""


def flow_stats_heads(body: bytes | bytearray | memoryview) -> np.ndarray:
    """Return the entries' heads of one or more concatenated flow-stats bodies."""
    buf = bytes(body)
    n = len(buf)
    offsets = _offsets(buf, n)
    if offsets is None:
        offsets = _checked_offsets(buf, n)      # raises WireError naming the first bad entry
    if len(offsets) == 0:
        return np.zeros(0, dtype=FLOW_STATS_HEAD)
    # Entries are multiples of 8 bytes from byte 0, so each head is 6 whole 8-byte words.
    words = np.frombuffer(buf, dtype=np.uint64)
    rows = words[(np.asarray(offsets, dtype=np.int64) >> 3)[:, None] + _WORDS]
    return rows.view(FLOW_STATS_HEAD).reshape(-1)


def _offsets(buf: bytes, n: int) -> np.ndarray | None:
    """Each entry's offset, following the length fields; None if any entry is malformed.

    The length chain is serial, and walking it in Python was the biggest single cost of a
    poll of a big table.  But a table's entries come in runs of one length (Open vSwitch
    dumps one match shape after another), so every `_RUN` steps the walk asks whether the
    last `_RUN` entries spanned `_RUN` times the current length; if so, the entries L, 2L,
    ... further on are read with numpy at once, as far as they keep length L (`_PROBE` of
    them first, doubling while whole probes match).  Lengths that keep changing are walked
    as before, at the cost of a countdown per step.  The rules a step does not check
    (multiple of 8, no overrun) are checked on all offsets at once at the end.
    """
    if n % 8:
        return None
    lengths = np.frombuffer(buf, dtype=">u2", count=n // 2)    # lengths[off >> 1]: the length at byte off
    parts: list = []
    walked: list[int] = []
    append = walked.append
    off, countdown, probe = 0, _RUN, _PROBE
    try:
        while off < n:
            step = buf[off] << 8 | buf[off + 1]
            if step < MIN_ENTRY:
                return None
            countdown -= 1
            if not countdown:
                countdown = _RUN
                # the last _RUN entries spanned _RUN of this one's length: likely a run
                if not (off | step) & 7 and (probe > _PROBE or len(walked) >= _RUN
                                             and off - walked[-_RUN] == _RUN * step):
                    k = min((n - off) // step, probe, _MAX_PROBE)
                    if k == 0:
                        return None             # the entry overruns the body
                    half = step >> 1
                    eq = lengths[off >> 1:(off >> 1) + k * half:half] == step     # a strided view: no copy
                    m = k if eq.all() else int(eq.argmin())     # >= 1: the first is `step` long
                    if m < _SHORT:              # a short run: as Python ints, in C
                        walked.extend(range(off, off + step * m, step))
                    else:
                        if walked:
                            parts.append(walked)
                            walked = []
                            append = walked.append
                        parts.append(off + step * _ARANGE[:m])
                    off += step * m
                    if m == k:
                        probe *= 2              # the run goes on: the next probe reads twice as far
                        countdown = 1
                    else:
                        probe = _PROBE
                    continue
            append(off)
            off += step
    except IndexError:              # a stray byte at the end
        return None
    if off != n:                    # the last entry overruns the body
        return None
    if walked:
        parts.append(walked)
    offsets = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts \
        else np.zeros(0, dtype=np.int64)
    if len(offsets) and np.any(np.diff(np.append(offsets, n)) % 8):
        return None
    return offsets


def _checked_offsets(buf: bytes, n: int) -> list[int]:
    """The same walk with every rule checked in turn: raises WireError at the first bad entry."""
    offsets: list[int] = []
    off = 0
    unpack = _LEN.unpack_from
    while off < n:
        if n - off < MIN_ENTRY:
            raise WireError(f"truncated flow stats entry at byte {off}")
        (length,) = unpack(buf, off)
        if length < MIN_ENTRY or length % 8 or off + length > n:
            raise WireError(f"bad flow stats entry length {length} at byte {off}")
        offsets.append(off)
        off += length
    return offsets
