import struct

from controller.packets import LldpSigner, mac_bytes, parse_frame


def eth(dst, src, eth_type, payload=b""):
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", eth_type) + payload


def ipv4(src, dst, proto, l4=b""):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0,
                      bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return hdr + l4


def test_tcp_frame():
    f = eth("00:00:00:00:00:02", "00:00:00:00:00:01", 0x0800,
            ipv4("10.0.0.1", "10.0.0.2", 6, struct.pack("!HHIIBB", 40000, 23, 0, 0, 0x50, 0x02) + b"\0" * 6))
    p = parse_frame(f)
    assert (p.eth_src, p.eth_dst, p.ipv4_src, p.ipv4_dst, p.ip_proto, p.tp_src, p.tp_dst) == \
        ("00:00:00:00:00:01", "00:00:00:00:00:02", "10.0.0.1", "10.0.0.2", 6, 40000, 23)
    assert p.tcp_flags == 0x02   # SYN


def test_arp_frame():
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac_bytes("00:00:00:00:00:01"),
                      bytes([10, 0, 0, 1]), b"\0" * 6, bytes([10, 0, 0, 9]))
    p = parse_frame(eth("ff:ff:ff:ff:ff:ff", "00:00:00:00:00:01", 0x0806, arp))
    assert p.arp_spa == "10.0.0.1" and p.arp_tpa == "10.0.0.9" and p.ipv4_dst is None
    assert p.arp_op == 1


def test_vlan_tagged_and_short_frames():
    inner = ipv4("10.0.0.1", "10.0.0.2", 17, struct.pack("!HH", 5353, 53))
    f = mac_bytes("00:00:00:00:00:02") + mac_bytes("00:00:00:00:00:01") + \
        struct.pack("!HHH", 0x8100, 10, 0x0800) + inner
    assert parse_frame(f).tp_dst == 53
    assert parse_frame(b"\0" * 10) is None
    truncated = eth("00:00:00:00:00:02", "00:00:00:00:00:01", 0x0800, b"\x45\0")
    assert parse_frame(truncated).ipv4_dst is None


def test_lldp_probe_verifies_and_forgeries_fail():
    s = LldpSigner(b"k" * 16)
    frame = s.build(0x1234, 7)
    assert parse_frame(frame).eth_type == 0x88CC
    assert s.verify(frame) == (0x1234, 7)
    assert LldpSigner(b"x" * 16).verify(frame) is None          # other controller's secret
    forged = bytearray(frame)
    i = frame.index(b"\x00\x10\xc6") + 4 + 11                    # port byte inside the signed TLV
    forged[i] ^= 1
    assert s.verify(bytes(forged)) is None
    assert s.verify(eth("01:80:c2:00:00:0e", "00:00:00:00:00:01", 0x88CC, b"\0\0")) is None
