from controller.openflow import rules
from controller.network.forwarding import FLOOD, Forwarder, FlowRegistry, PacketInfo

A, B = "00:00:00:00:00:01", "00:00:00:00:00:02"


def pkt(src, dst, **kw):
    return PacketInfo(src, dst, kw.pop("eth_type", 0x0800), **kw)


def test_unknown_destination_floods_without_a_flow():
    f = Forwarder(FlowRegistry())
    d = f.packet_in(1, 1, pkt(A, B, ipv4_dst="10.0.0.2", ip_proto=6, tp_dst=80))
    assert d.out_port == FLOOD and d.flows == []


def test_known_destination_installs_conversation_flow():
    reg = FlowRegistry()
    f = Forwarder(reg, idle_timeout=7)
    f.packet_in(1, 2, pkt(B, "ff:ff:ff:ff:ff:ff", eth_type=0x0806))
    d = f.packet_in(1, 1, pkt(A, B, ipv4_dst="10.0.0.2", ip_proto=6, tp_dst=80))
    assert d.out_port == 2
    (flow,) = d.flows
    fid = rules.cookie_id(flow.cookie)
    assert reg.key_for(fid) == d.key
    assert reg.macs[reg.src_dev[fid]] == A and reg.macs[reg.dst_dev[fid]] == B
    assert flow.idle_timeout == 7
    again = f.packet_in(1, 1, pkt(A, B, ipv4_dst="10.0.0.2", ip_proto=6, tp_dst=80))
    assert again.flows[0].cookie == flow.cookie   # same conversation, same id


def test_group_destination_floods():
    f = Forwarder(FlowRegistry())
    assert f.packet_in(1, 1, pkt(A, "01:00:5e:00:00:01")).out_port == FLOOD


def test_same_port_is_dropped():
    f = Forwarder(FlowRegistry())
    f.packet_in(1, 1, pkt(B, A, eth_type=0x0806))
    assert f.packet_in(1, 1, pkt(A, B, eth_type=0x0806)).out_port is None


def test_moved_mac_deletes_flows_toward_it():
    f = Forwarder(FlowRegistry())
    f.packet_in(1, 1, pkt(A, B, eth_type=0x0806))
    d = f.packet_in(1, 4, pkt(A, B, eth_type=0x0806))
    assert rules.delete_forwarding_to(A) in d.flows


def test_port_down_forgets_macs_and_flows():
    f = Forwarder(FlowRegistry())
    f.packet_in(1, 3, pkt(A, B, eth_type=0x0806))
    assert f.port_down(1, 3) == [rules.delete_forwarding_to(A)]
    assert A not in f.mac_to_port[1]


def test_registry_grows_and_forgets():
    reg = FlowRegistry(capacity=2)
    ids = [reg.id_for(rules.flow_key(A, B, 0x0800, f"10.0.0.{i}", 6, 80)) for i in range(1, 10)]
    assert ids == list(range(1, 10)) and len(reg.src_dev) >= 10
    reg.forget([ids[0]])
    assert reg.key_for(ids[0]) is None and reg.src_dev[ids[0]] == -1
    assert reg.id_for(rules.flow_key(A, B, 0x0800, "10.0.0.1", 6, 80)) == 10


def test_registry_arrays_describe_each_flow():
    reg = FlowRegistry(capacity=1)
    tcp = reg.id_for(rules.flow_key(A, B, 0x0800, "10.0.0.2", 6, 23))
    icmp = reg.id_for(rules.flow_key(A, B, 0x0800, "203.0.113.10", 1, None))
    l2 = reg.id_for(rules.flow_key(A, B, 0x0806))
    assert (reg.ip_dst[tcp], reg.proto[tcp], reg.tp_dst[tcp]) == (0x0A000002, 6, 23)
    assert (reg.ip_dst[icmp], reg.proto[icmp], reg.tp_dst[icmp]) == (0xCB00710A, 1, -1)
    assert (reg.ip_dst[l2], reg.proto[l2], reg.tp_dst[l2]) == (0, -1, -1)


def test_answers_get_one_portless_flow_below_the_conversations():
    """A flood's RSTs (a new client port each) must not each cost a packet-in and a flow."""
    reg = FlowRegistry()
    fwd = Forwarder(reg)
    fwd.packet_in(1, 2, PacketInfo(B, A, rules.ETH_TYPE_IP))      # learn both ports
    fwd.packet_in(1, 1, PacketInfo(A, B, rules.ETH_TYPE_IP))
    keys = set()
    for port, flags in [(40001, 0x14), (40002, 0x14), (40003, 0x12)]:   # RST+ACK, RST+ACK, SYN+ACK
        d = fwd.packet_in(1, 2, PacketInfo(B, A, rules.ETH_TYPE_IP, "10.0.0.2", "10.0.0.1",
                                           rules.IPPROTO_TCP, 443, port, tcp_flags=flags))
        (flow,) = d.flows
        assert flow.priority == rules.PRIO_FWD_REPLY and "tcp_dst" not in dict(flow.match)
        keys.add(d.key)
    assert len(keys) == 1
    syn = fwd.packet_in(1, 1, PacketInfo(A, B, rules.ETH_TYPE_IP, "10.0.0.1", "10.0.0.2",
                                         rules.IPPROTO_TCP, 40004, 443, tcp_flags=0x02))
    assert syn.flows[0].priority == rules.PRIO_FWD_IP and dict(syn.flows[0].match)["tcp_dst"] == 443
    dns = fwd.packet_in(1, 2, PacketInfo(B, A, rules.ETH_TYPE_IP, "10.0.0.2", "10.0.0.1",
                                         rules.IPPROTO_UDP, 53, 51000))
    assert "udp_dst" not in dict(dns.flows[0].match)
    query = fwd.packet_in(1, 1, PacketInfo(A, B, rules.ETH_TYPE_IP, "10.0.0.1", "10.0.0.2",
                                           rules.IPPROTO_UDP, 51000, 53))
    assert dict(query.flows[0].match)["udp_dst"] == 53
