"""The novelty memory across a restart (issue 9): saved with the baselines, reloaded at start.

Each scenario warms a unit-level replay (tests/unit/test_novelty.py), saves its store as
the controller does, and starts a second detector from that file, as a restart would.
"""

import json

import pytest

from tests.unit import test_novelty as replay
from tests.unit.test_novelty import CAM, HUB, PLUG, TCP, UDP, Replay, ip, lateral_probe

TV = "00:00:00:00:00:41"
A, B = ip("10.0.0.40"), ip("10.0.0.41")


@pytest.fixture(autouse=True)
def tv(monkeypatch):
    """An appliance whose warm-up used peers A and B on TCP/80, and DNS."""
    monkeypatch.setitem(replay.NAMES, TV, ("tv", ("tv", "iot")))
    monkeypatch.setitem(replay.HABITS, TV, [(TCP, A, 80), (TCP, B, 80), (UDP, ip("10.0.0.1"), 53)])


def restarted(r: Replay, path) -> tuple[Replay, str]:
    """Save `r`'s state and start a new detector from it at the same time."""
    r.det.store.save(str(path))
    fresh = Replay(macs=r.macs)
    msg = fresh.det.store.load(str(path))
    fresh.t = r.t
    return fresh, msg


def test_after_a_restart_known_peers_are_quiet_and_a_sweep_is_a_lateral_probe(tmp_path):
    r = Replay(macs=(CAM, PLUG, TV)).warm()
    r2, msg = restarted(r, tmp_path / "baselines.json")
    assert msg.startswith("loaded 3 device profiles") and msg.endswith("; novelty memory of 3 devices"), msg
    t = r2.t + 0.3
    r2.run_until(t + 30, [(t, TV, TCP, A, 80), (t + 1, TV, TCP, B, 80), (t + 2, TV, 0, A, -1)])
    assert r2.alerts == [], "peers A, B and TCP/80 were learned before the restart"
    start = r2.t + 0.3
    for run in (r, r2):         # the same sweep without and with the restart
        run.run_until(start + 60, lateral_probe(start, 2.0))
    swept = {e[3] for e in lateral_probe(start, 2.0)}
    assert not swept & set(r2.det.novelty.devices[CAM].peers), "the sweep's hosts were learned as normal"
    before = [a for a in r.alerts if a.kind == "lateral_probe"]
    after = [a for a in r2.alerts if a.kind == "lateral_probe"]
    assert len(before) == 1 and len(after) == 1, "the restart must not let the sweep be learned"
    assert after[0].explanation == before[0].explanation
    assert after[0].explanation.endswith("; while learning it talked to 2")
    assert after[0].time == before[0].time and after[0].threshold == before[0].threshold


def test_learned_churn_allowances_survive_a_restart(tmp_path):
    r = Replay(macs=(CAM, PLUG, HUB, TV)).warm()
    r.run_until(r.t + 5)
    r2, _ = restarted(r, tmp_path / "baselines.json")
    hub = r.det.novelty.devices[HUB]
    assert any(a > f for a, f in zip(hub.allowance["new_internal_peers"],
                                     replay.novelty.FLOORS["new_internal_peers"])), "a hub churns"
    for mac in r.macs:
        old, new = r.det.novelty.devices[mac], r2.det.novelty.devices.get(mac)
        assert new is not None and not new.learning, mac
        assert new.allowance == old.allowance, mac
        assert (list(new.peers), list(new.external), list(new.services), list(new.pairs)) == \
            (list(old.peers), list(old.external), list(old.services), list(old.pairs)), mac
    r2.run_until(r2.t + 300)
    assert r2.alerts == [], "the hub keeps its allowance: its usual churn is no alert after a restart"


@pytest.fixture(scope="module")
def saved():
    """A warmed camera and plug's state, as the controller writes it (a JSON object)."""
    r = Replay(macs=(CAM, PLUG)).warm()
    return json.loads(json.dumps(r.det.store.to_dict())), r


def write(tmp_path, state) -> str:
    path = tmp_path / "baselines.json"
    path.write_text(json.dumps(state))
    return str(path)


def test_the_state_file_carries_a_versioned_novelty_section(saved):
    state, r = saved
    section = state["novelty"]
    assert section["schema"] == "iotguard.novelty/2" and section["version"] == 1
    cam = next(d for d in section["devices"] if d["mac"] == CAM)
    assert cam["peers"] == ["10.0.0.2", "10.0.0.1"] and [6, 554] in cam["services"]
    assert cam["allowance"]["new_internal_peers"] == list(r.det.novelty.devices[CAM].allowance["new_internal_peers"])


def test_a_memory_still_learning_is_not_saved():
    mem = replay.NoveltyMemory(["10.0.0.0/8"], learn_seconds=30)
    mem.observe(CAM, TCP, ip("10.0.0.2"), 554, 1000.0, learning=True)
    assert mem.to_dict()["devices"] == []


def test_an_old_file_without_novelty_memory_loads_and_the_devices_learn_it_again(saved, tmp_path, caplog):
    state, r = saved
    old = {k: v for k, v in state.items() if k != "novelty"}
    r2 = Replay(macs=(CAM, PLUG))
    with caplog.at_level("WARNING", logger="iotguard.profiles"):
        msg = r2.det.store.load(write(tmp_path, old))
    assert msg.startswith("loaded 2 device profiles") and "has no novelty memory" in msg, msg
    assert "2 devices with a baseline learn what is new to them again for 60 s" in msg
    assert any("has no novelty memory" in rec.getMessage() for rec in caplog.records)
    assert all(not r2.det.store.profiles[m].learning for m in (CAM, PLUG)) and r2.det.novelty.devices == {}
    r2.t = r.t
    r2.run_until(r2.t + 5)
    assert r2.det.novelty.learning(CAM), "it re-learns"


def damage(state, change):
    """A copy of `state` with `change(section, the camera's entry)`, the camera first."""
    state = json.loads(json.dumps(state))
    state["novelty"]["devices"].sort(key=lambda d: d["mac"] != CAM)
    change(state["novelty"], state["novelty"]["devices"][0])
    return state


def _set(key, value):
    return lambda section, dev: dev.__setitem__(key, value)


@pytest.mark.parametrize("change, words", [
    (lambda s, d: d["peers"].__setitem__(0, "10.0.0.300"),
     "novelty: devices[0].peers[0]: '10.0.0.300' is not an IPv4 address (device 00:00:00:00:00:11)"),
    (lambda s, d: d["peers"].append("10.0.0.1"), "novelty: devices[0].peers[2]: given twice"),
    (lambda s, d: d["external"].append("239.255.255.250"), "is not a canonical unicast address"),
    (_set("peers", [f"10.0.1.{k % 250}" if k < 250 else f"10.0.2.{k}" for k in range(257)]),
     "devices[0].peers: 257 entries, more than the 256 a memory keeps"),
    (lambda s, d: d["services"].append([6, 70000]), "port must be an integer in [0, 65535], got 70000"),
    (lambda s, d: d["services"].append([1, 0]), "protocol must be 6 (TCP) or 17 (UDP), got 1"),
    (lambda s, d: d["pairs"].append(["10.0.0.9", 6]), "expected [address, protocol, port]"),
    (lambda s, d: d["allowance"].__setitem__("new_internal_peers", [5, 5]),
     "devices[0].allowance.new_internal_peers: expected 3 integers (one per horizon)"),
    (lambda s, d: d["allowance"].__setitem__("new_internal_peers", [0, 0, 0]),
     "devices[0].allowance.new_internal_peers[0]: expected an integer in [5, "),
    (lambda s, d: d["settled_new"].pop("new_services"), "settled_new: missing field 'new_services'"),
    (lambda s, d: d.__setitem__("sliding", {}), "devices[0]: unknown field 'sliding'"),
    (lambda s, d: d.__setitem__("mac", "00:00:00:00:00:99"),
     "novelty: devices[0].mac: 00:00:00:00:00:99 has no baseline in this file"),
    (lambda s, d: s["devices"].append(dict(d)), "devices[2].mac: 00:00:00:00:00:11 is given twice"),
    (lambda s, d: s.__setitem__("version", 2), "novelty: version: expected an integer in [1, 1], got 2"),
    (lambda s, d: s.__setitem__("schema", "iotguard.novelty/3"), "novelty: schema: expected 'iotguard.novelty/2'"),
])
def test_a_damaged_novelty_entry_refuses_the_file_naming_file_and_field(saved, tmp_path, change, words):
    """As a damaged baseline does: the file is moved aside and every device learns afresh
    (its baseline too), never a baseline kept with its novelty memory silently re-learning."""
    state, _ = saved
    path = write(tmp_path, damage(state, change))
    r2 = Replay(macs=(CAM, PLUG))
    msg = r2.det.store.load(path)
    assert msg.startswith(f"{path}: unusable baseline state (") and words in msg, msg
    assert "learning from scratch" in msg
    assert r2.det.store.profiles == {} and r2.det.novelty.devices == {}
    assert [p.name for p in tmp_path.iterdir()][0].startswith("baselines.json.corrupt-")


def test_a_null_novelty_section_is_damage_not_an_old_file(saved, tmp_path):
    state, _ = saved
    msg = Replay().det.store.load(write(tmp_path, {**state, "novelty": None}))
    assert "unusable baseline state (novelty: expected an object, got NoneType)" in msg, msg


def test_the_saved_memory_of_a_device_at_the_caps_is_bounded(tmp_path):
    """A device that met thousands of peers and services while learning: the memory keeps
    the caps, and its entry in the file stays under 25 KiB (longest addresses, 5-digit ports)."""
    from tests.unit.test_profiles import learned_store
    store, _ = learned_store()
    mem = store.novelty = replay.NoveltyMemory(["10.0.0.0/8"], learn_seconds=30)
    t = 1000.0
    for k in range(3000):
        t += 0.005
        mem.observe(CAM, TCP if k % 2 else UDP, ip("10.200.200.100") + k, 10000 + k % 22000, t, learning=True)
        mem.observe(CAM, TCP, ip("203.113.100.100") + k, 20000 + k % 12000, t, learning=True)
    mem.observe(CAM, TCP, ip("10.200.200.100"), 10000, t + 60, learning=False)
    d = mem.devices[CAM]
    caps = (replay.novelty.MAX_PEERS, replay.novelty.MAX_EXTERNAL, replay.novelty.MAX_SERVICES,
            replay.novelty.MAX_PEERS + replay.novelty.MAX_EXTERNAL)
    assert (len(d.peers), len(d.external), len(d.services), len(d.pairs)) == caps
    path = tmp_path / "baselines.json"
    store.save(str(path))
    with_memory = path.stat().st_size
    store.novelty = None
    store.save(str(path))
    assert with_memory - path.stat().st_size <= 25 * 1024
    fresh = Replay().det.store
    store.novelty = mem
    store.save(str(path))
    assert fresh.load(str(path)).endswith("; novelty memory of 1 device; 2 devices with a baseline had none "
                                          "frozen yet and learn it again")
    e = fresh.novelty.devices[CAM]
    assert (len(e.peers), len(e.external), len(e.services), len(e.pairs)) == caps
    assert e.allowance == d.allowance
