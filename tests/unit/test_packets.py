import struct

from controller.openflow.packets import LldpSigner, mac_bytes, parse_frame, wire_length


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


def _valid(frame: bytes) -> bool:
    """An independent check: the ones' complement sum over pseudo-header and segment is 0xFFFF."""
    import struct as st
    ip = frame[14:34]
    total = st.unpack("!H", ip[2:4])[0]
    seg = frame[34:14 + total]
    data = ip[12:20] + bytes((0, ip[9])) + st.pack("!H", len(seg)) + seg
    data += b"\0" * (len(data) % 2)
    s = sum(st.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def _frame(proto: int, payload: bytes, csum: bytes = b"\x12\x34") -> bytes:
    import struct as st
    if proto == 6:
        l4 = st.pack("!HHIIBBH", 40000, 23, 1, 0, 0x50, 0x02, 8192) + csum + b"\0\0" + payload
    else:
        l4 = st.pack("!HHH", 40000, 53, 8 + len(payload)) + csum + payload
    ip = st.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0,
                 bytes([10, 0, 0, 11]), bytes([10, 0, 0, 66]))
    return b"\0" * 6 + b"\x00\x00\x00\x00\x00\x11" + b"\x08\x00" + ip + l4


def test_partial_checksums_are_completed_for_packet_out():
    from controller.openflow.packets import fix_l4_checksum
    for proto, payload in [(6, b""), (6, b"hello"), (17, b"q" * 33), (17, b"x" * 1400)]:
        bad = _frame(proto, payload)
        assert not _valid(bad)
        good = fix_l4_checksum(bad)
        assert _valid(good) and len(good) == len(bad)
        assert fix_l4_checksum(good) == good, "a correct checksum is left as it is"


def test_frames_that_must_not_be_touched():
    from controller.openflow.packets import fix_l4_checksum
    no_csum = _frame(17, b"abc", csum=b"\0\0")
    assert fix_l4_checksum(no_csum) == no_csum
    truncated = _frame(6, b"hello")[:-3]
    assert fix_l4_checksum(truncated) == truncated
    frag = bytearray(_frame(6, b"hello"))
    frag[20:22] = b"\x20\x00"            # more fragments
    assert fix_l4_checksum(bytes(frag)) == bytes(frag)
    arp = b"\xff" * 6 + b"\x00" * 6 + b"\x08\x06" + b"\x00" * 28
    assert fix_l4_checksum(arp) == arp


def test_wire_length_of_frames_a_snaplen_cut():
    eth = b"\x02" * 12
    ipv4 = eth + b"\x08\x00" + bytes([0x45, 0]) + struct.pack("!H", 1500) + b"\0" * 16
    assert wire_length(ipv4) == 14 + 1500, "the IPv4 total length, not the 34 bytes kept"
    tagged = eth + b"\x81\x00\x00\x05\x08\x00" + ipv4[14:]
    assert wire_length(tagged) == 18 + 1500
    ipv6 = eth + b"\x86\xdd" + b"\x60\0\0\0" + struct.pack("!H", 1000) + b"\0" * 34
    assert wire_length(ipv6) == 14 + 40 + 1000
    whole = ipv4[:14] + bytes([0x45, 0]) + struct.pack("!H", 20) + b"\0" * 60   # padded past its IP length
    assert wire_length(whole) == len(whole)
    assert wire_length(eth + b"\x08\x06" + b"\0" * 28) == 42 and wire_length(b"\0" * 5) == 5
