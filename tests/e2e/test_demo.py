"""`iotguard demo` itself, as a user runs it, and its report in headless Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from topologies.lab import ROOT, have_ovs

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_ovs(), reason="needs root and a running Open vSwitch "
                                                        "(sudo make test provisions both)")]


@pytest.mark.timeout(400)
def test_demo_isolates_the_camera_and_writes_a_report_chromium_renders(tmp_path):
    from topologies.browser import check_html
    report = tmp_path / "report.html"
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "controller.api.cli", "demo", "--report", str(report),
                           "--state-dir", str(tmp_path / "state")],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=360)
    took = time.monotonic() - t0
    out = done.stdout
    print(out[-3000:], done.stderr[-2000:])
    assert done.returncode == 0
    assert "ALERT new_flow_burst" in out and "camera" in out
    assert "RESPONSE quarantine by playbook quarantine-scanner-burst" in out
    assert "camera CUT" in out.split("reachability after:")[1].splitlines()[0]
    assert "every other device still works" in out
    assert took < 240, f"the demo took {took:.0f} s"
    # everything it started is gone
    assert subprocess.run(["ovs-vsctl", "br-exists", "hs1"]).returncode == 2
    result = check_html(str(report), ["camera", "quarantine-scanner-burst", "ARP requests", "Timeline"])
    assert result["nonblank"] and result["missing"] == [], result
    # the state is kept for a later report
    later = subprocess.run([sys.executable, "-m", "controller.api.cli", "report", "--last", "--state-dir",
                            str(tmp_path / "state"), "-o", str(tmp_path / "again.html")],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert later.returncode == 0 and (tmp_path / "again.html").stat().st_size > 10000
