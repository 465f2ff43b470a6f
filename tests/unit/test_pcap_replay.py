"""`iotguard replay --pcap`: real captures through the real Core and an emulated switch."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import struct

import dpkt
import pytest

from controller.api import cli
from controller.config import Config, load_devices
from controller import pcapreplay
from controller.pcapreplay import CaptureError, replay_pcap, with_learning

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIFECYCLE = os.path.join(ROOT, "tests", "data", "captures", "lifecycle")
GATEWAY = "c8:bf:4c:77:a0:3a"
CAPTURES = {
    "plug": ("xiaodu_plug.pcap", "f4:21:ae:9e:8f:cb", "xiaodu-plug"),
    "camera": ("xiaobai_Y2camera_idle_local.pcap", "78:df:72:24:69:4d", "xiaobai-camera"),
}
INVENTORY = f"""devices:
  - {{name: xiaodu-plug, mac: "f4:21:ae:9e:8f:cb", tags: [iot]}}
  - {{name: xiaobai-camera, mac: "78:df:72:24:69:4d", tags: [iot]}}
  - {{name: lab-gateway, mac: "{GATEWAY}", tags: [gateway]}}
"""


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    path = tmp_path_factory.mktemp("inv") / "devices.yaml"
    path.write_text(INVENTORY)
    return str(path)


@pytest.fixture(scope="module")
def replayed(inventory):
    """Each shipped capture replayed once (the plug takes a few seconds), with the inventory."""
    config = dataclasses.replace(Config(), devices=load_devices(inventory))
    cache = {}

    def get(which):
        if which not in cache:
            cache[which] = replay_pcap(os.path.join(LIFECYCLE, CAPTURES[which][0]), config).to_dict()
        return cache[which]
    return get


def expected_counts(path: str, mac: str, interval: float = 1.0) -> tuple[int, int, set[int]]:
    """From the capture itself (dpkt, not iotguard's parser): frames the device sent, unicast
    frames it received after it first sent (before that a switch floods them, unlocated), and
    the poll windows those frames fall in."""
    me = bytes.fromhex(mac.replace(":", ""))
    sent = received = 0
    windows: set[int] = set()
    located = False
    t0 = last = None
    for ts, buf in dpkt.pcap.Reader(open(path, "rb")):
        t0 = ts if t0 is None else t0
        last = ts if last is None else max(ts, last)
        k = int((last - t0) // interval)
        if buf[6:12] == me:
            located = True
            sent += 1
            windows.add(k)
        elif buf[0:6] == me and located:
            received += 1
            windows.add(k)
    return sent, received, windows


def device(result: dict, mac: str) -> dict:
    return next(d for d in result["devices"] if d["mac"] == mac)


@pytest.mark.parametrize("which", ["plug", "camera"])
def test_shipped_capture_replays_and_every_packet_of_the_device_is_counted(replayed, which):
    f, mac, name = CAPTURES[which]
    r = replayed(which)
    sent, received, windows = expected_counts(os.path.join(LIFECYCLE, f), mac)
    d = device(r, mac)
    assert d["name"] == name and d["tags"] == ["iot"] and not d["excluded"]
    # Flows counted by polls plus the packet-in frames (each conversation's first packet).
    assert (d["tx_packets"], d["rx_packets"]) == (sent, received)
    assert d["packets"] == sent + received == d["frames_sent"] + d["frames_received"]
    assert d["windows"] == len(windows)
    assert r["switch"]["packet_ins"] > 0 and r["switch"]["flows_installed"] > 0
    assert r["switch"]["dropped_by_packet_in_meter"] == 0
    assert r["windows"] == int((r["end"] - r["start"]) // 1.0) + 1
    assert r["frames"] == {"plug": 6428, "camera": 1512}[which]
    assert d["learned_at"] == pytest.approx(r["start"] + 300.0, abs=1.0)
    gw = device(r, GATEWAY)
    assert gw["excluded"] and gw["alerts"] == 0 and gw["flagged_windows"] == []


# The idle camera first opens UDP/80, UDP/8053 (P2P relays) and HTTPS to new cloud hosts 28 min in,
# after its 5 min warm-up: everyday cloud traffic, which the detector must not call a new service
# (controller/detection/detector.py, `_telling`).


@pytest.mark.parametrize("which", ["plug", "camera"])
def test_shipped_benign_capture_raises_no_alert_after_warm_up(replayed, which):
    r = replayed(which)
    d = device(r, CAPTURES[which][1])
    words = [(a["kind"], a["explanation"]) for a in r["alerts"]]
    assert d["alerts"] == 0 and d["flagged_windows"] == [], words
    assert r["alerts"] == [], words


# ------------------------------------------------------------------ a synthetic sweep

DEV, GW = "02:00:00:00:00:50", "02:00:00:00:00:01"
DEV_IP, GW_IP, CLOUD = "192.168.1.50", "192.168.1.1", "203.0.113.10"
T0 = 1_700_000_000.0


def _mac(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


def _eth(src: str, dst: str, payload, eth_type=dpkt.ethernet.ETH_TYPE_IP) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(src=_mac(src), dst=_mac(dst), type=eth_type, data=payload))


def _ip(src: str, dst: str, l4, p) -> dpkt.ip.IP:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=p, data=l4)
    ip.len = len(bytes(ip))
    return ip


def _udp(src, dst, sport, dport, data=b"x" * 40):
    return _ip(src, dst, dpkt.udp.UDP(sport=sport, dport=dport, data=data, ulen=8 + len(data)), dpkt.ip.IP_PROTO_UDP)


def _tcp(src, dst, sport, dport, flags):
    return _ip(src, dst, dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, off=5), dpkt.ip.IP_PROTO_TCP)


def _arp(src_mac, src_ip, dst_mac, dst_ip, op):
    a = dpkt.arp.ARP(sha=_mac(src_mac), spa=socket.inet_aton(src_ip), tha=_mac(dst_mac) if op == 2 else b"\0" * 6,
                     tpa=socket.inet_aton(dst_ip), op=op)
    return _eth(src_mac, dst_mac if op == 2 else "ff:ff:ff:ff:ff:ff", a, dpkt.ethernet.ETH_TYPE_ARP)


def sweep_frames() -> list[tuple[float, bytes]]:
    """A device with a periodic cloud heartbeat and DNS for 200 s; from 120 s it tries SSH
    on 8 internal hosts it never talked to, one every 2 s (ARP first; they answer RST)."""
    out = []
    for i in range(100):                          # a heartbeat every 2 s, answered
        t = T0 + 2 * i
        out.append((t, _eth(DEV, GW, _udp(DEV_IP, CLOUD, 40000, 5683))))
        out.append((t + 0.05, _eth(GW, DEV, _udp(CLOUD, DEV_IP, 5683, 40000))))
    for i in range(7):                            # DNS every 30 s
        t = T0 + 30 * i + 1
        out.append((t, _eth(DEV, GW, _udp(DEV_IP, GW_IP, 41000 + i, 53))))
        out.append((t + 0.01, _eth(GW, DEV, _udp(GW_IP, DEV_IP, 53, 41000 + i))))
    for j in range(8):
        t = T0 + 120 + 2 * j
        host_ip, host_mac = f"192.168.1.{101 + j}", f"02:00:00:00:01:{j:02x}"
        out.append((t, _arp(DEV, DEV_IP, "ff:ff:ff:ff:ff:ff", host_ip, 1)))
        out.append((t + 0.001, _arp(host_mac, host_ip, DEV, DEV_IP, 2)))
        out.append((t + 0.002, _eth(DEV, host_mac, _tcp(DEV_IP, host_ip, 50000 + j, 22, dpkt.tcp.TH_SYN))))
        out.append((t + 0.003, _eth(host_mac, DEV, _tcp(host_ip, DEV_IP, 22, 50000 + j,
                                                       dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK))))
    return sorted(out, key=lambda f: f[0])


def write_capture(path, frames, pcapng=False, linktype=dpkt.pcap.DLT_EN10MB):
    with open(path, "wb") as fh:
        w = dpkt.pcapng.Writer(fh, linktype=linktype) if pcapng else dpkt.pcap.Writer(fh, linktype=linktype)
        for ts, buf in frames:
            w.writepkt(buf, ts=ts)


@pytest.mark.parametrize("pcapng", [False, True], ids=["pcap", "pcapng"])
def test_a_slow_ssh_sweep_after_a_benign_warm_up_is_flagged_in_its_words(tmp_path, capsys, pcapng):
    path = tmp_path / ("sweep.pcapng" if pcapng else "sweep.pcap")
    frames = sweep_frames()
    write_capture(path, frames, pcapng=pcapng)
    inv = tmp_path / "inv.yaml"
    inv.write_text(f'- {{name: thermostat, mac: "{DEV}", tags: [iot]}}\n- {{name: gw, mac: "{GW}", tags: [gateway]}}\n')
    assert cli.main(["replay", "--pcap", str(path), "--devices", str(inv), "--learn", "60", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["frames"] == len(frames)
    d = device(r, DEV)
    assert d["name"] == "thermostat"
    sent = sum(1 for _, b in frames if b[6:12] == _mac(DEV))
    assert d["tx_packets"] == sent
    flagged = [a for w in d["flagged_windows"] for a in w["alerts"]]
    assert flagged, "the sweep went unnoticed"
    assert all(w["start"] >= T0 + 120 for w in d["flagged_windows"]), "a benign window was flagged"
    words = " ".join(a["explanation"] for a in flagged)
    hosts = [f"192.168.1.{101 + j}" for j in range(8)]
    assert "SSH" in words or "Telnet" in words or any(h in words for h in hosts), words
    assert {a["kind"] for a in flagged} & {"lateral_probe", "new_service", "anomaly", "new_flow_burst"}

    # The human form: the device's row, and with --windows the alert's words.
    assert cli.main(["replay", "--pcap", str(path), "--devices", str(inv), "--learn", "60", "--windows"]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("thermostat "))
    assert DEV in row and f" {sent + d['rx_packets']} " in row
    assert flagged[0]["explanation"] in text


def test_a_file_that_is_not_a_capture_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a packet capture\n" * 10)
    assert cli.main(["replay", "--pcap", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a pcap or pcapng" in err
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    assert cli.main(["replay", "--pcap", str(empty)]) == 2
    assert str(empty) in capsys.readouterr().err
    missing = tmp_path / "missing.pcap"
    assert cli.main(["replay", "--pcap", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_a_capture_of_a_link_type_it_cannot_read_exits_2_naming_it(tmp_path, capsys):
    wifi = tmp_path / "wifi.pcap"
    write_capture(wifi, [(T0, b"\x00" * 40)], linktype=127)      # 802.11 with radiotap
    assert cli.main(["replay", "--pcap", str(wifi)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"iotguard: {wifi}: link type 127 is not Ethernet (1) nor one without MACs"), err
    assert "113 Linux cooked capture (SLL)" in err and "101 raw IP" in err


def _without_macs(frames, link):
    """The frames as a capture without Ethernet headers records them: Linux cooked (SLL, SLL2;
    `tcpdump -i any`) with the sender's MAC, or raw IP (ARP then is not in the capture)."""
    out = []
    for ts, eth in frames:
        dst, src, etype, l3 = eth[0:6], eth[6:12], int.from_bytes(eth[12:14], "big"), eth[14:]
        kind = 4 if src == _mac(DEV) else (1 if dst == b"\xff" * 6 else 0)
        if link == 113:
            out.append((ts, struct.pack("!HHH8sH", kind, 1, 6, src + b"\0\0", etype) + l3))
        elif link == 276:
            out.append((ts, struct.pack("!HHiHBB8s", etype, 0, 2, 1, kind, 6, src + b"\0\0") + l3))
        elif etype == 0x0800:
            out.append((ts, l3))
    return out


@pytest.mark.parametrize("link", [113, 276, 101], ids=["sll", "sll2", "raw-ip"])
def test_captures_without_macs_replay_with_synthetic_ones_and_the_sweep_is_still_flagged(tmp_path, capsys, link):
    """`tcpdump -i any` writes Linux cooked frames; some tools write raw IP.  Neither has the
    MACs a switch sees: each internal address gets the synthetic MAC of --conn-log."""
    frames = _without_macs(sweep_frames(), link)
    path = tmp_path / f"any-{link}.pcap"
    write_capture(path, frames, linktype=link)
    inv = tmp_path / "inv.yaml"
    inv.write_text(f'- {{name: thermostat, ip: "{DEV_IP}", tags: [iot]}}\n')
    assert cli.main(["replay", "--pcap", str(path), "--devices", str(inv), "--learn", "60", "--json"]) == 0
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert r["frames"] == len(frames)
    assert r["warnings"][0].startswith(f"{path}: a {pcapreplay.NO_MACS[link]} has no Ethernet MACs"), r["warnings"]
    mac = "02:00:" + ":".join(f"{b:02x}" for b in socket.inet_aton(DEV_IP))
    d = device(r, mac)
    assert d["name"] == "thermostat" and d["tags"] == ["iot"]
    sent = sum(1 for _, b in sweep_frames() if b[6:12] == _mac(DEV) and (link != 101 or b[12:14] == b"\x08\x00"))
    assert d["tx_packets"] == sent
    gw = next(x for x in r["devices"] if x["name"] == "gateway")
    assert gw["excluded"] and gw["mac"] == "06:00:00:00:00:01"
    flagged = [a for w in d["flagged_windows"] for a in w["alerts"]]
    assert flagged and all(w["start"] >= T0 + 120 for w in d["flagged_windows"]), flagged
    words = " ".join(a["explanation"] for a in flagged)
    assert "SSH" in words and "192.168.1.101" in words, words


def test_a_capture_with_no_frames_is_an_error(tmp_path):
    path = tmp_path / "none.pcap"
    write_capture(path, [])
    with pytest.raises(CaptureError, match="no frames"):
        replay_pcap(str(path), Config())


def test_the_recording_form_keeps_working_and_the_forms_do_not_mix(tmp_path, capsys):
    rec = os.path.join(ROOT, "tests", "data", "smart_home_scan.jsonl")
    assert cli.main(["replay", rec, "--config", os.path.join(ROOT, "tests", "data", "replay.yaml")]) == 0
    assert all(json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines())
    assert cli.main(["replay", rec, "--pcap", "x.pcap"]) == 2
    assert cli.main(["replay"]) == 2
    assert cli.main(["replay", rec, "--windows"]) == 2
    assert "only with 'replay --pcap" in capsys.readouterr().err


def test_learn_override_is_bounded_like_the_config():
    assert with_learning(Config(), 60).learn_seconds == 60.0
    with pytest.raises(ValueError, match="--learn"):
        with_learning(Config(), 5)


def test_a_truncated_capture_replays_what_it_holds(tmp_path, capsys):
    path = tmp_path / "cut.pcap"
    write_capture(path, sweep_frames()[:50])
    data = path.read_bytes()
    path.write_bytes(data[:-7])                   # the last record cut short
    assert cli.main(["replay", "--pcap", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["frames"] in (49, 50)


@pytest.mark.timeout(120)
def test_a_frame_stamped_years_ahead_ends_with_warnings_not_endless_polls(tmp_path, capsys):
    """One damaged timestamp ten years ahead: the replay polled an empty switch 300 million
    times.  Now the silence is skipped after an hour of polls, and both oddities are told."""
    frames = sweep_frames()[:60]
    frames[30] = (frames[30][0] + 10 * 365 * 86400, frames[30][1])
    path = tmp_path / "glitch.pcap"
    write_capture(path, frames)
    assert cli.main(["replay", "--pcap", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["frames"] == 60
    skipped, back = out["warnings"]
    assert "skipped " in skipped and "polls" in skipped and "silences longer than 3600 s" in skipped
    assert back.startswith(f"{path}: 29 frames were stamped earlier than one before them")
    assert "counted at the latest time seen" in back
    assert "iotguard: warning:" in captured.err


def test_frames_out_of_order_by_less_than_a_millisecond_are_jitter_not_a_warning(tmp_path, capsys):
    frames = sweep_frames()[:60]
    frames[30] = (frames[29][0] - 0.0005, frames[30][1])     # half a millisecond early
    path = tmp_path / "jitter.pcap"
    write_capture(path, frames)
    assert cli.main(["replay", "--pcap", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["frames"] == 60 and out["warnings"] == []


def test_a_long_silence_is_skipped_after_an_hour_and_the_device_is_still_told_apart(tmp_path):
    """Three hours of silence between two halves of a heartbeat: polled for an hour, the rest
    skipped; every frame still counts."""
    first = [(T0 + 2 * i, _eth(DEV, GW, _udp(DEV_IP, CLOUD, 40000, 5683))) for i in range(50)]
    later = [(T0 + 3 * 3600 + 2 * i, _eth(DEV, GW, _udp(DEV_IP, CLOUD, 40000, 5683))) for i in range(50)]
    path = tmp_path / "silence.pcap"
    write_capture(path, first + later)
    res = replay_pcap(str(path), Config()).to_dict()
    dev = device(res, DEV)
    assert dev["frames_sent"] == 100 and dev["packets"] == 100
    (note,) = res["warnings"]
    assert "silences longer than 3600 s" in note and "the longest: 10,702 s" in note
    assert res["windows"] < 3600 + 400, "the polls of the silence's last two hours were skipped"


def test_a_capture_cut_by_its_snaplen_counts_every_frame_at_its_wire_length(tmp_path):
    """`tcpdump -s 96` keeps 96 bytes of each frame; a switch counts the whole frame, and so
    does the replay, from the IPv4 header's total length."""
    frames = [(T0 + 0.5 * i, _eth(DEV, GW, _udp(DEV_IP, CLOUD, 40000, 5683, b"x" * 1200))) for i in range(120)]
    full, cut = tmp_path / "full.pcap", tmp_path / "cut.pcap"
    write_capture(full, frames)
    write_capture(cut, [(t, buf[:96]) for t, buf in frames])
    a, b = (device(replay_pcap(str(p), Config()).to_dict(), DEV) for p in (full, cut))
    assert a["tx_bytes"] == 120 * len(frames[0][1]) and b["tx_bytes"] == a["tx_bytes"]
    assert b["tx_packets"] == a["tx_packets"] == 120


# ------------------------------------------------------------------ a bot retrying a dead C&C

C2 = "198.51.100.7"


def _syn(src, dst, sport, dport, flags=dpkt.tcp.TH_SYN):
    """A SYN (or SYN-ACK) as a TCP stack sends it: with an MSS option, so an ACK is smaller."""
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, off=6, opts=b"\x02\x04\x05\xb4")
    return _ip(src, dst, seg, dpkt.ip.IP_PROTO_TCP)


def _handshake(t: float, sport: int) -> list[tuple[float, bytes]]:
    """One answered HTTPS connection of DEV to CLOUD: SYN, SYN-ACK, ACK, a request, a reply."""
    A, S, P = dpkt.tcp.TH_ACK, dpkt.tcp.TH_SYN, dpkt.tcp.TH_PUSH
    req = _tcp(DEV_IP, CLOUD, sport, 443, A | P)
    req.data.data = b"q" * 120
    req.len = len(bytes(req))
    return [(t, _eth(DEV, GW, _syn(DEV_IP, CLOUD, sport, 443))),
            (t + 0.03, _eth(GW, DEV, _syn(CLOUD, DEV_IP, 443, sport, S | A))),
            (t + 0.031, _eth(DEV, GW, _tcp(DEV_IP, CLOUD, sport, 443, A))),
            (t + 0.032, _eth(DEV, GW, req)),
            (t + 0.06, _eth(GW, DEV, _tcp(CLOUD, DEV_IP, 443, sport, A)))]


def c2_frames() -> list[tuple[float, bytes]]:
    """A device with an answered cloud heartbeat (UDP every 2 s, HTTPS every 20 s) for 400 s;
    from 150 s it opens an HTTPS connection to a host it never used every 20 s, and nothing
    answers: each SYN is retransmitted after 1 s and 3 s, as a TCP stack does."""
    out = []
    for i in range(200):
        t = T0 + 2 * i
        out.append((t, _eth(DEV, GW, _udp(DEV_IP, CLOUD, 40000, 5683))))
        out.append((t + 0.05, _eth(GW, DEV, _udp(CLOUD, DEV_IP, 5683, 40000))))
    for i in range(20):
        out += _handshake(T0 + 20 * i + 1, 42000 + i)
    for j in range(12):
        t = T0 + 150 + 20 * j
        syn = _eth(DEV, GW, _syn(DEV_IP, C2, 43000 + j, 443))
        out += [(t, syn), (t + 1, syn), (t + 3, syn)]
    return sorted(out, key=lambda f: f[0])


def test_a_bot_retrying_a_dead_c2_in_a_capture_is_flagged_as_failed_connections(tmp_path, capsys):
    """The pcap path judges SYNs from the emulated switch's counters as the controller does
    (controller/telemetry/outcomes.py): unanswered retries to a new host are the alert."""
    path = tmp_path / "c2.pcap"
    write_capture(path, c2_frames())
    inv = tmp_path / "inv.yaml"
    inv.write_text(f'- {{name: plug, mac: "{DEV}", tags: [iot]}}\n- {{name: gw, mac: "{GW}", tags: [gateway]}}\n')
    assert cli.main(["replay", "--pcap", str(path), "--devices", str(inv), "--learn", "100", "--json"]) == 0
    d = device(json.loads(capsys.readouterr().out), DEV)
    assert d["failed_connections"] >= 3, d
    flagged = [(w["start"], a) for w in d["flagged_windows"] for a in w["alerts"]]
    assert all(t >= T0 + 150 for t, _ in flagged), "a benign window was flagged"
    failed = [a for _, a in flagged if a["kind"] == "failed_connections"]
    assert failed, [a["kind"] for _, a in flagged]
    assert C2 in failed[0]["explanation"] and "HTTPS" in failed[0]["explanation"], failed[0]["explanation"]
    assert min(t for t, a in flagged if a["kind"] == "failed_connections") <= T0 + 150 + 60


# ------------------------------------------------------------------ saved baselines

IRC = "198.51.100.66"


def heartbeat(start: float, seconds: float) -> list[tuple[float, bytes]]:
    """The plug's normal life: an answered UDP heartbeat to its cloud every 2 s."""
    out = []
    for i in range(int(seconds // 2)):
        t = start + 2 * i
        out.append((t, _eth(DEV, GW, _udp(DEV_IP, CLOUD, 40000, 5683))))
        out.append((t + 0.05, _eth(GW, DEV, _udp(CLOUD, DEV_IP, 5683, 40000))))
    return out


def infected_frames(start: float) -> list[tuple[float, bytes]]:
    """A capture of the plug that begins infected: the same heartbeat, and from +5 s an
    IRC session (TCP/6667, answered) to a host it never used, every 30 s."""
    A, S, P = dpkt.tcp.TH_ACK, dpkt.tcp.TH_SYN, dpkt.tcp.TH_PUSH
    out = heartbeat(start, 400)
    for j in range(13):
        t, sport = start + 5 + 30 * j, 45000 + j
        out += [(t, _eth(DEV, GW, _syn(DEV_IP, IRC, sport, 6667))),
                (t + 0.03, _eth(GW, DEV, _syn(IRC, DEV_IP, 6667, sport, S | A))),
                (t + 0.031, _eth(DEV, GW, _tcp(DEV_IP, IRC, sport, 6667, A | P)))]
    return sorted(out, key=lambda f: f[0])


def test_a_capture_infected_from_its_start_is_judged_against_a_clean_days_baselines(tmp_path, capsys):
    """The poisoned warm-up: learning on the infected capture itself makes the C&C a habit
    (no alert).  Learned on a clean capture of the same plug and saved, the baselines judge
    the infected one from its first frame, and its C&C is told at once."""
    clean, bad = tmp_path / "clean.pcap", tmp_path / "infected.pcap"
    write_capture(clean, heartbeat(T0, 400))
    t1 = T0 + 7 * 86400                  # a week later
    write_capture(bad, infected_frames(t1))
    inv = tmp_path / "inv.yaml"
    inv.write_text(f'- {{name: plug, mac: "{DEV}", tags: [iot]}}\n- {{name: gw, mac: "{GW}", tags: [gateway]}}\n')
    base = tmp_path / "plug-baselines.json"
    common = ["--devices", str(inv), "--learn", "100", "--json"]

    assert cli.main(["replay", "--pcap", str(bad), *common]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert device(alone, DEV)["alerts"] == 0, "learned on itself, the C&C is a habit"

    assert cli.main(["replay", "--pcap", str(clean), *common, "--save-baselines", str(base)]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["baselines"] == {"loaded_from": None, "devices": 0, "saved_to": str(base)}
    assert device(saved, DEV)["alerts"] == 0

    assert cli.main(["replay", "--pcap", str(bad), *common, "--baselines", str(base)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["baselines"]["loaded_from"] == str(base) and r["baselines"]["devices"] == 1
    d = device(r, DEV)
    assert d["from_baselines"] and d["alerts_after_learning"] == d["alerts"] >= 1
    first = min((a for a in r["alerts"] if a["mac"] == DEV), key=lambda a: a["time"])
    assert first["kind"] == "new_service" and first["time"] - t1 <= 15, first
    assert "TCP/6667" in first["explanation"] and IRC in first["explanation"], first["explanation"]

    # The same file is iotguard run's state file: a live controller loads it as it is.
    from controller.core import Core
    note = Core(Config()).store.load(str(base))
    assert note.startswith(f"loaded 2 device profiles from {base}") or note.startswith(
        f"loaded 1 device profiles from {base}"), note

    # The human form names where the baselines came from.
    assert cli.main(["replay", "--pcap", str(bad), "--devices", str(inv), "--baselines", str(base)]) == 0
    assert f"judged from the first frame by the baselines in {base}" in capsys.readouterr().out


@pytest.mark.parametrize("content, words", [
    (None, "cannot read the baselines"),
    ("{not json", "not a baselines file (not JSON"),
    ("[1, 2]", "not a baselines file (a JSON list, not an object)"),
    ('{"schema": "iotguard.profiles/1", "profiles": [{"mac": 5}]}', "not a baselines file iotguard can load"),
])
def test_baselines_that_cannot_be_loaded_exit_2_naming_the_file(tmp_path, capsys, content, words):
    cap = tmp_path / "c.pcap"
    write_capture(cap, heartbeat(T0, 60))
    base = tmp_path / "b.json"
    if content is not None:
        base.write_text(content)
    assert cli.main(["replay", "--pcap", str(cap), "--baselines", str(base)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith(f"iotguard: {base}: {words}"), out.err


def test_saving_baselines_where_nothing_can_be_written_exits_2(tmp_path, capsys):
    cap = tmp_path / "c.pcap"
    write_capture(cap, heartbeat(T0, 60))
    target = tmp_path / "no-such-dir" / "b.json"
    assert cli.main(["replay", "--pcap", str(cap), "--save-baselines", str(target)]) == 2
    out = capsys.readouterr()
    assert out.out == "", "refused before the replay, not after it"
    assert out.err.startswith(f"iotguard: --save-baselines {target}: cannot write there (no writable directory "), out.err
    assert cli.main(["replay", "--pcap", str(cap), "--save-baselines", str(tmp_path)]) == 2
    assert "cannot write there (a directory)" in capsys.readouterr().err


def test_the_recording_form_refuses_the_baselines_options(tmp_path, capsys):
    rec = tmp_path / "rec.jsonl"
    rec.write_text("")
    for opt in ("--baselines", "--save-baselines"):
        assert cli.main(["replay", str(rec), opt, str(tmp_path / "b.json")]) == 2
        assert f"{opt}: only with 'replay --pcap CAPTURE'" in capsys.readouterr().err


def test_a_device_the_baselines_file_holds_still_learning_learns_afresh(tmp_path, capsys):
    """Saved before its warm-up ended, the plug has no baseline in the file: its warm-up rows
    were taken on the other capture's clock, so it learns on this one, from its start."""
    short, bad = tmp_path / "short.pcap", tmp_path / "infected.pcap"
    write_capture(short, heartbeat(T0, 60))
    t1 = T0 + 86400
    write_capture(bad, infected_frames(t1))
    base = tmp_path / "b.json"
    assert cli.main(["replay", "--pcap", str(short), "--learn", "100", "--save-baselines", str(base), "--json"]) == 0
    capsys.readouterr()
    assert cli.main(["replay", "--pcap", str(bad), "--learn", "100", "--baselines", str(base), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["baselines"]["devices"] == 0
    d = device(r, DEV)
    assert not d["from_baselines"] and d["learned_at"] == pytest.approx(t1 + 100, abs=2)


# ------------------------------------------------------------------ a capture that begins scanning

def scanning_frames(start: float, seconds: float, rate: float = 1.0) -> list[tuple[float, bytes]]:
    """A plug infected before the capture began: its heartbeat, and from its first second a
    Telnet scan of random internet addresses (TCP/23, some TCP/2323), `rate` SYNs per second;
    one host in ten refuses (RST), the others never answer."""
    import random
    rnd = random.Random(7)
    out = heartbeat(start, seconds)
    for k in range(int(seconds * rate)):
        t = start + 0.5 + k / rate
        host = f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
        port, sport = (23 if rnd.random() < 0.9 else 2323), 30000 + k % 30000
        out.append((t, _eth(DEV, GW, _syn(DEV_IP, host, sport, port))))
        if rnd.random() < 0.1:
            out.append((t + 0.05, _eth(GW, DEV, _tcp(host, DEV_IP, port, sport, dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK))))
    return sorted(out, key=lambda f: f[0])


def test_a_capture_that_begins_with_a_telnet_scan_is_flagged_while_the_device_still_learns(tmp_path, capsys):
    """Learning on an infected capture makes its scan a habit for every learned signal (the
    first 400 s of this one raised nothing before address scans): the address scan is not
    learned, so it is told within a minute of the capture's start, in words that name it."""
    path = tmp_path / "scanning.pcap"
    write_capture(path, scanning_frames(T0, 400))
    inv = tmp_path / "inv.yaml"
    inv.write_text(f'- {{name: plug, mac: "{DEV}", tags: [iot]}}\n- {{name: gw, mac: "{GW}", tags: [gateway]}}\n')
    assert cli.main(["replay", "--pcap", str(path), "--devices", str(inv), "--learn", "300", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    d = device(r, DEV)
    assert d["failed_connections"] >= 300, d
    scans = [a for a in r["alerts"] if a["mac"] == DEV and a["kind"] == "address_scan"]
    assert len(scans) == 1 and d["alerts"] == 1, [a["explanation"] for a in r["alerts"]]
    a = scans[0]
    assert a["time"] - T0 <= 40, a["time"] - T0         # 25 hosts on TCP/23 take about 28 s at 1 per second
    assert a["explanation"].startswith("plug's Telnet connections to "), a["explanation"]
    assert "got no answer or were refused in the last 5 min" in a["explanation"]
    assert "an address scan (it is still learning: a scan is never learned as normal)" in a["explanation"]

    # The clean heartbeat alone raises nothing: the alert is the scan's.
    clean = tmp_path / "clean.pcap"
    write_capture(clean, heartbeat(T0, 400))
    assert cli.main(["replay", "--pcap", str(clean), "--devices", str(inv), "--learn", "300", "--json"]) == 0
    assert device(json.loads(capsys.readouterr().out), DEV)["alerts"] == 0


def test_connections_opened_by_the_last_frames_are_judged_too(tmp_path, capsys):
    """A SYN is judged 2.5 s after it, at a window: the replay polls on after the last frame
    until the connections it opened are judged (before, the capture's last SYNs never were)."""
    path = tmp_path / "tail.pcap"
    frames = heartbeat(T0, 120)
    end = max(t for t, _ in frames)
    frames += [(end + 0.2, _eth(DEV, GW, _syn(DEV_IP, C2, 43000, 443))),
               (end + 0.3, _eth(DEV, GW, _syn(DEV_IP, C2, 43001, 8443)))]
    write_capture(path, frames)
    assert cli.main(["replay", "--pcap", str(path), "--learn", "60", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert device(r, DEV)["failed_connections"] == 2
    assert r["end"] == pytest.approx(end + 0.3), "the capture still ends at its last frame"
