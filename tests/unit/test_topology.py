from controller.network.topology import Location, Topology

H1 = "00:00:00:00:00:01"


def test_device_located_at_its_edge_port():
    t = Topology()
    t.add_switch(1)
    assert t.observe(H1, 1, 3, now=0.0)
    assert t.location(H1) == Location(1, 3) and t.edge_dpid(H1) == 1


def test_sighting_on_a_known_trunk_is_not_a_location():
    t = Topology()
    t.add_switch(1), t.add_switch(2)
    t.add_link(1, 4, 2, 1, now=0.0)
    assert not t.observe(H1, 2, 1, now=0.1)      # arrived at s2 over the trunk
    assert t.location(H1) is None
    t.observe(H1, 1, 2, now=0.2)
    assert t.location(H1) == Location(1, 2)


def test_flooded_copy_over_undiscovered_trunk_does_not_steal_location():
    t = Topology(move_grace=3.0)
    t.observe(H1, 1, 2, now=0.0)                 # real port
    assert not t.observe(H1, 2, 1, now=0.01)     # flooded copy, trunk not yet known
    assert t.location(H1) == Location(1, 2)


def test_location_on_port_that_turns_out_to_be_a_trunk_is_dropped():
    t = Topology()
    t.observe(H1, 2, 1, now=0.0)                 # only seen via the trunk so far
    t.add_link(1, 4, 2, 1, now=0.5)
    assert t.location(H1) is None
    t.observe(H1, 1, 2, now=0.6)
    assert t.location(H1) == Location(1, 2)


def test_device_that_moved_is_followed_after_grace():
    t = Topology(move_grace=3.0)
    t.observe(H1, 1, 2, now=0.0)
    assert not t.observe(H1, 1, 5, now=1.0)
    assert t.observe(H1, 1, 5, now=10.0)
    assert t.location(H1) == Location(1, 5)


def test_links_build_graph_and_expire():
    t = Topology(link_timeout=3.0)
    for d in (1, 2, 3):
        t.add_switch(d)
    assert t.add_link(1, 1, 2, 1, now=0.0)
    assert not t.add_link(1, 1, 2, 1, now=1.0)
    t.add_link(2, 2, 3, 1, now=1.0)
    assert t.path(1, 3) == [1, 2, 3]
    assert t.is_trunk(2, 2) and t.is_trunk(3, 1) and not t.is_trunk(1, 5)
    assert t.expire_links(now=3.5) == []
    assert t.expire_links(now=4.5) == [(1, 1, 2, 1), (2, 2, 3, 1)]
    assert t.path(1, 3) is None and not t.is_trunk(2, 2)


def test_port_down_and_switch_removal():
    t = Topology()
    t.add_switch(1), t.add_switch(2)
    t.add_link(1, 1, 2, 1, now=0)
    t.observe(H1, 2, 3, now=0)
    t.port_down(1, 1)
    assert not t.is_trunk(2, 1)
    t.remove_switch(2)
    assert t.location(H1) is None and t.switches == [1]
