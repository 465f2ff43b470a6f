"""A full state disk (a small tmpfs): reported at start and in health, a manual response gets
507 with a JSON body, and the controller keeps answering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from tests.integration import rawof as r

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")]


@pytest.fixture
def small_disk():
    path = tempfile.mkdtemp(prefix="iotguard-full-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", path], check=True, timeout=10)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=False, timeout=10)
        os.rmdir(path)


def test_a_full_state_disk_is_reported_and_a_response_gets_507(small_disk):
    ofp, api = r.free_port(), r.free_port()
    cfg = os.path.join(small_disk, "c.yaml")
    with open(cfg, "w") as f:
        f.write("devices:\n  - {name: camera, mac: '00:00:00:00:00:11', ip: 10.0.0.11, tags: [camera]}\n"
                "metrics: {port: 0}\nopenflow: {listen_host: 127.0.0.1}\n")
    log = open(os.path.join(tempfile.gettempdir(), f"iotguard-full-{os.getpid()}.log"), "wb")
    p = subprocess.Popen([sys.executable, "-m", "controller.api.cli", "run", "--config", cfg, "--ofp-port", str(ofp),
                          "--api-port", str(api), "--state-dir", os.path.join(small_disk, "state")],
                         stdout=log, stderr=subprocess.STDOUT, cwd=r.ROOT, env=dict(os.environ, PYTHONPATH=r.ROOT))
    try:
        token_path = os.path.join(small_disk, "state", "api-token")

        def call(method: str, path: str, body=None):
            req = urllib.request.Request(f"http://127.0.0.1:{api}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {open(token_path).read().strip()}",
                                                  "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as a:
                    return a.status, json.loads(a.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        deadline = time.monotonic() + 30
        while True:
            try:
                assert call("GET", "/api/v1/health")[0] == 200
                break
            except (OSError, AssertionError):
                assert p.poll() is None and time.monotonic() < deadline, "the controller did not start"
                time.sleep(0.3)
        # fill the disk
        with open(os.path.join(small_disk, "filler"), "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        status, health = call("GET", "/api/v1/health")
        assert status == 200 and health["status"] == "degraded"
        assert any("bytes free" in reason for reason in health["reasons"]), health["reasons"]
        status, body = call("POST", "/api/v1/responses", {"action": "quarantine", "device": "camera", "ttl": 60})
        assert status == 507 and body["error"] == "insufficient_storage", body
        assert "state directory is full" in body["message"]
        assert call("GET", "/api/v1/devices")[0] == 200            # it keeps answering
        assert p.poll() is None
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        log.close()
