"""The novelty memory across a restart (issue 9): saved with the baselines, reloaded at start.

Each scenario warms a unit-level replay (tests/unit/test_novelty.py), saves its store as
the controller does, and starts a second detector from that file, as a restart would.
"""

import json

import pytest

from tests.unit import test_novelty as replay
from tests.unit.test_novelty import CAM, HUB, LEARN, PLUG, TCP, UDP, Replay, ip, lateral_probe

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
    assert msg.startswith("loaded 3 device profiles"), msg
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
