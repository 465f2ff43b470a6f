"""Every listener is bound before the process says it is ready, and a bind failure exits
non-zero naming the port: also when the port is taken after the launcher's own check.

`iotguard run` checks its ports before the framework starts (test_cli covers that
message).  A port can still be taken between that check and the framework's bind, or
the app can be embedded without the launcher; that window is reproduced here by starting
the app through `compat.run_apps` with the port already held by the test.  No switch is
needed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from tests.integration.rawof import ROOT, ControllerProcess, free_port

pytestmark = pytest.mark.integration

EMBEDDED = ("from controller.openflow import compat; "
            "compat.run_apps(['controller.app'], '127.0.0.1', int(sys.argv[1]))")


def held_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def embedded(ofp_port: int, api_port: int, metrics_port: int = 0) -> subprocess.CompletedProcess:
    d = tempfile.mkdtemp(prefix="iotguard-listen-")
    cfg = os.path.join(d, "config.yaml")
    with open(cfg, "w") as f:
        f.write(f"openflow: {{listen_host: 127.0.0.1, port: {ofp_port}}}\n"
                f"api: {{listen_host: 127.0.0.1, port: {api_port}}}\n"
                f"metrics: {{listen_host: 127.0.0.1, port: {metrics_port}}}\n"
                f"state_dir: {os.path.join(d, 'state')}\n")
    env = dict(os.environ, PYTHONPATH=ROOT, IOTGUARD_CONFIG=cfg)
    try:
        return subprocess.run([sys.executable, "-c", "import sys; " + EMBEDDED, str(ofp_port)],
                              capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    finally:
        subprocess.run(["rm", "-rf", d], timeout=10)


@pytest.mark.parametrize("which, what", [("openflow", "OpenFlow switches"), ("api", "the REST API"),
                                         ("metrics", "Prometheus metrics")])
def test_a_port_taken_after_the_check_exits_1_naming_it(which, what):
    held = held_port()
    try:
        port = held.getsockname()[1]
        ports = {"openflow": free_port(), "api": free_port(), "metrics": free_port(), which: port}
        r = embedded(ports["openflow"], ports["api"], ports["metrics"])
    finally:
        held.close()
    assert r.returncode == 1, r.stderr[-2000:]
    assert f"iotguard: cannot listen for {what} on 127.0.0.1:{port}: Address already in use; exiting" in r.stderr
    assert "iotguard ready" not in r.stderr


def test_ready_is_said_once_every_listener_accepts():
    metrics = free_port()
    ctl = ControllerProcess(metrics_port=metrics)
    try:
        ctl.wait_ready()
        deadline = time.monotonic() + 10
        while "iotguard ready" not in ctl.tail(20000) and time.monotonic() < deadline:
            time.sleep(0.1)
        log = ctl.tail(20000)
        line = next(ln for ln in log.splitlines() if "iotguard ready" in ln)
        assert f"OpenFlow 127.0.0.1:{ctl.ofp_port}" in line and f"API http://127.0.0.1:{ctl.api_port}/api/v1/" in line
        h = ctl.health()
        assert h["status"] == "ok" and h["listening"] is True, h
        # what "ready" promised: each of the three ports accepts a connection now
        for port in (ctl.ofp_port, ctl.api_port, metrics):
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            assert b"iotguard_event_loop_lag_seconds" in r.read()
    finally:
        ctl.stop()
        assert ctl.proc.returncode is not None
