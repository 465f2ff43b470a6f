"""Address scans (controller/detection/scans.py): failed connections on one port to many
hosts, a fact that no warm-up makes normal; the counter, the alert and its words."""

import random
from collections import Counter

import pytest

from controller.addresses import Subnets
from controller.detection import scans
from controller.detection.scans import HOSTS, ScanCounter
from tests.unit.test_novelty import CAM, LEARN, T0, Replay, ip

LAN = Subnets(("10.0.0.0/8", "192.168.0.0/16"))
DEV = "02:00:00:00:00:50"


def counter() -> ScanCounter:
    return ScanCounter(lambda a: a in LAN)


def random_hosts(n: int, seed: int = 1) -> list[int]:
    """Internet addresses picked as Mirai picks them: anywhere."""
    rnd = random.Random(seed)
    return [ip(f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}")
            for _ in range(n)]


def feed(c: ScanCounter, hosts, port=23, start=0.0, gap=1.0, mac=DEV):
    return [c.failed(mac, h, port, start + k * gap) for k, h in enumerate(hosts)]


def test_the_25th_host_of_failed_connections_on_one_port_is_a_scan():
    c = counter()
    got = feed(c, random_hosts(HOSTS))
    assert got[:-1] == [None] * (HOSTS - 1), "24 hosts are not yet a scan"
    s = got[-1]
    assert s is not None and s.port == 23 and s.hosts == HOSTS and s.internal == 0
    assert s.networks >= scans.NETWORKS and s.first == 0.0 and s.examples[-1] == random_hosts(HOSTS)[-1]


def test_failures_count_per_port_and_only_within_five_minutes():
    c = counter()
    hosts = random_hosts(2 * HOSTS)
    assert all(x is None for x in feed(c, hosts[:HOSTS - 1], port=23))
    assert all(x is None for x in feed(c, hosts[HOSTS:2 * HOSTS - 1], port=2323)), "another port counts apart"
    assert c.failed(DEV, hosts[HOSTS - 1], 23, scans.HORIZON + 30.0) is None, "the first ones are too old"
    assert feed(c, [hosts[0]] * 5)[-1] is None, "the same host again is one host"


def test_a_cloud_that_does_not_answer_is_an_outage_not_a_scan():
    """A device retrying its provider's many addresses: they lie in a few networks."""
    c = counter()
    provider = [ip(f"52.{16 + k % 3}.{k}.{k % 7 + 1}") for k in range(60)]
    assert all(x is None for x in feed(c, provider, port=443))


def test_a_walk_through_one_block_of_the_internet_is_a_scan():
    c = counter()
    got = feed(c, [ip(f"203.0.113.{k}") for k in range(1, 1 + HOSTS)])
    assert got[-2] is None and got[-1] is not None
    assert got[-1].networks == 1 and got[-1].in_block == HOSTS and got[-1].block == ip("203.0.113.0")


def test_a_sweep_of_the_lan_is_a_scan_however_close_its_hosts():
    c = counter()
    got = feed(c, [ip(f"192.168.1.{k}") for k in range(2, 2 + HOSTS)], port=22)
    assert got[-1] is not None and got[-1].internal == HOSTS and got[-1].networks == 0


def test_the_counter_is_bounded():
    c = counter()
    for k in range(scans.MAX_PORTS + 5):
        c.failed(DEV, ip("198.51.100.1"), 1000 + k, 0.0)
    assert len(c._devices[DEV]) == scans.MAX_PORTS
    feed(c, random_hosts(3 * scans.MAX_HOSTS), gap=0.01)
    assert len(c._devices[DEV][23].hosts) == scans.MAX_HOSTS
    assert c.entries == scans.MAX_PORTS - 1 + scans.MAX_HOSTS, "every host held is counted, once"
    c.forget(DEV)
    assert c.entries == 0 and len(c) == 0


def test_all_devices_together_hold_at_most_max_entries_hosts(monkeypatch):
    monkeypatch.setattr(scans, "MAX_ENTRIES", 100)
    c = counter()
    for d in range(10):
        feed(c, random_hosts(30, seed=d), mac=f"02:00:00:00:01:{d:02x}", start=d * 10.0, gap=0.1)
    assert c.entries <= 100, c.entries
    assert list(c._devices) == [f"02:00:00:00:01:{d:02x}" for d in (7, 8, 9)], \
        "the least recently failing devices are forgotten"
    assert c.entries == sum(len(h.hosts) for p in c._devices.values() for h in p.values())
    assert c.failed(DEV, 0, 23, 1.0) is None and c.failed(DEV, ip("224.0.0.1"), 23, 1.0) is None


def failures(r: Replay, mac: str, hosts, port: int, start: float, gap: float):
    """Failed connections as Core hands them over, between windows."""
    for k, h in enumerate(hosts):
        t = start + k * gap
        r.run_until(t)
        r.det.on_failed(mac, h, port, t)


@pytest.mark.parametrize("learned", [False, True], ids=["while-learning", "after-warm-up"])
def test_a_telnet_scan_is_one_alert_in_plain_words_whether_or_not_the_device_still_learns(learned):
    r = Replay()
    if learned:
        r.warm()
    start = r.t + 0.5
    hosts = random_hosts(40)
    failures(r, CAM, hosts, 23, start, 2.0)
    r.run_until(start + 2.0 * 40 + 2)
    got = [a for a in r.alerts if a.kind == "address_scan"]
    assert len(got) == 1, [a.explanation for a in r.alerts]
    a = got[0]
    assert start + 2.0 * (HOSTS - 1) <= a.time <= start + 2.0 * (HOSTS - 1) + 2.0, "at the next window"
    assert a.mac == CAM and a.threshold == HOSTS and a.window == {"scanned_hosts_5min": HOSTS}
    dotted = ".".join(str(hosts[HOSTS - 1] >> s & 255) for s in (24, 16, 8, 0))
    assert a.explanation.startswith(f"camera's Telnet connections to {HOSTS} hosts got no answer or were "
                                    f"refused in the last 5 min ({dotted}, "), a.explanation
    assert a.explanation.endswith(": an address scan" if learned else
                                  ": an address scan (it is still learning: a scan is never learned as normal)")
    assert a.features[0].get("top_port") == 23 and a.features[0].get("networks") >= scans.NETWORKS
    now = r.det.current(a.id)
    assert now.count == 40 - HOSTS + 1 and now.score == 40, "later hosts update the one alert"
    assert "to 40 hosts" in now.explanation and now.window["scanned_hosts_5min"] == 40
    assert (a.time >= T0 + LEARN) == learned, "raised while the camera still learned" if not learned else ""


def test_a_scan_a_burst_already_told_is_not_told_again():
    r = Replay().warm()
    start = r.t + 0.5
    hosts = random_hosts(60)
    r.run_until(start, extra=[(start - 0.4 + k * 0.01, CAM, 6, h, 23) for k, h in enumerate(hosts[:30])])
    assert [a.kind for a in r.alerts] == ["new_flow_burst"], [a.explanation for a in r.alerts]
    failures(r, CAM, hosts[:30], 23, start + 2.0, 0.05)
    r.run_until(start + 6)
    assert [a.kind for a in r.alerts] == ["new_flow_burst"], "the burst spoke for the scan"


@pytest.mark.parametrize("hosts, port, words", [
    ([ip(f"203.0.113.{k}") for k in range(1, 1 + HOSTS)], 80,
     "camera's HTTP connections to 25 hosts got no answer or were refused in the last 5 min (203.0.113.25, "
     "203.0.113.24, 203.0.113.23, …), 25 of them in 203.0.113.0/24: an address scan"),
    ([ip(f"10.0.0.{k}") for k in range(100, 100 + HOSTS)], 22,
     "camera's SSH connections to 25 internal hosts got no answer or were refused in the last 5 min "
     "(10.0.0.124, 10.0.0.123, 10.0.0.122, …): an address scan"),
], ids=["one-block", "lan"])
def test_the_words_say_where_the_scan_went(hosts, port, words):
    r = Replay().warm()
    start = r.t + 0.5
    failures(r, CAM, hosts, port, start, 1.0)
    r.run_until(start + len(hosts) + 2)
    (a,) = [a for a in r.alerts if a.kind == "address_scan"]
    assert a.explanation == words, a.explanation


def test_the_counts_kept_up_to_date_match_the_hosts_held():
    """The per-port counts are updated on each failure and eviction, not recounted: after
    LAN and internet hosts, repeats, expiry and the bound, they still match what is held."""
    c = counter()
    rnd = random.Random(5)
    pool = random_hosts(40) + [ip(f"192.168.1.{k}") for k in range(1, 30)] + [ip(f"203.0.113.{k}") for k in range(60)]
    for k in range(2000):
        c.failed(DEV, rnd.choice(pool), 23, k * 0.7)
    p = c._devices[DEV][23]
    held = list(p.hosts)
    assert p.internal == sum(1 for h in held if h in LAN)
    assert dict(p.networks) == dict(Counter(h >> 16 for h in held if h not in LAN))
    assert dict(p.blocks) == dict(Counter(h >> 8 for h in held if h not in LAN))
    assert c.entries == len(held) <= scans.MAX_HOSTS
