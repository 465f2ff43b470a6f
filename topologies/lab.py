"""Run the real controller as a process, for the integration tests and the demo.

Every process is ended by PID and every network by stop_network() in the
callers' `finally`; nothing here kills by name.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.error import URLError

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RYU_MANAGER = os.path.join(ROOT, ".venv-ryu", "bin", "ryu-manager")


def have_ovs() -> bool:
    if os.geteuid() != 0 or shutil.which("ovs-vsctl") is None:
        return False
    return subprocess.run(["ovs-vsctl", "--timeout=3", "show"], capture_output=True).returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Controller:
    """`iotguard run` (or ryu-manager) in its own process group, with its API."""

    def __init__(self, inventory=None, framework: str = "os-ken", env: dict | None = None,
                 poll_interval: float = 1.0, ofp_port: int | None = None,
                 detection: dict | None = None, record: str | None = None,
                 responses: dict | None = None, state_dir: str | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="iotguard-lab-")
        self.ofp_port = ofp_port or free_port()
        self.api_port = free_port()
        self.metrics_port = free_port()
        self.framework = framework
        self.extra_env = env or {}
        self.config_path = os.path.join(self.dir, "iotguard.yaml")
        cfg = {"openflow": {"listen_host": "127.0.0.1", "port": self.ofp_port},
               "api": {"port": self.api_port}, "poll_interval": poll_interval,
               "metrics": {"port": self.metrics_port},
               "state_dir": state_dir or os.path.join(self.dir, "state"),
               "internal_subnets": ["10.0.0.0/8"],
               "devices": [{k: v for k, v in d.items() if v} for d in (inventory or [])]}
        if detection:
            cfg["detection"] = detection
        if responses:
            cfg["responses"] = responses      # playbooks (paths), dry_run, dns_servers
        self.state_dir = cfg["state_dir"]
        self.record = record
        with open(self.config_path, "w") as f:
            yaml.safe_dump(cfg, f)
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.dir, "controller.log")
        self.token: str | None = None

    def start(self, timeout: float = 20.0) -> "Controller":
        env = dict(os.environ, PYTHONPATH=ROOT, **self.extra_env)
        if self.framework == "ryu":
            env["IOTGUARD_CONFIG"] = self.config_path
            cmd = [RYU_MANAGER, "--ofp-listen-host", "127.0.0.1",
                   "--ofp-tcp-listen-port", str(self.ofp_port), "controller.app"]
        else:
            cmd = [sys.executable, "-m", "controller.api.cli", "run", "--config", self.config_path]
            if self.record:
                cmd += ["--record", self.record]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        token_path = os.path.join(self.state_dir, "api-token")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited with {self.proc.returncode}:\n{self.logs()}")
            if os.path.exists(token_path):
                with open(token_path) as f:
                    self.token = f.read().strip()
                try:
                    self.get("/api/v1/health")
                    return self
                except (URLError, ConnectionError, OSError):
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"controller API did not come up in {timeout}s:\n{self.logs()}")

    def get(self, path: str) -> dict:
        return self.call("GET", path)

    def call(self, method: str, path: str, body=None) -> dict:
        """One API request; an error status raises urllib's HTTPError (its body is JSON)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data,
                                     method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def metrics(self) -> str:
        """The Prometheus exposition text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def responses(self) -> list[dict]:
        return self.get("/api/v1/responses")["responses"]

    def audit(self, since: float | None = None) -> list[dict]:
        return self.get("/api/v1/audit" + (f"?since={since}" if since is not None else ""))["events"]

    def alerts(self, since: float | None = None) -> list[dict]:
        return self.get("/api/v1/alerts" + (f"?since={since}" if since is not None else ""))["alerts"]

    def devices(self) -> dict[str, dict]:
        return {d["name"]: d for d in self.get("/api/v1/devices")["devices"]}

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")

    def wait_switches(self, n: int, timeout: float = 15.0) -> None:
        self.wait_for(lambda: len(self.get("/api/v1/health")["switches"]) >= n, timeout,
                      f"{n} switches to connect")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 3.0) -> int | None:
        """End the controller by PID; returns its exit code (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            return None

    def logs(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop(signal.SIGKILL)
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def ping(src, dst_ip: str, count: int = 1, wait: int = 1) -> bool:
    """True if every echo got an answer."""
    out = src.cmd(f"timeout {count * wait + 3} ping -c {count} -W {wait} {dst_ip}")
    return " 0% packet loss" in out


@contextmanager
def running(topo, **controller_args):
    """The controller and `topo` against it; both are gone when the block ends."""
    from topologies.net import inventory, start_network, stop_network
    responses = dict(controller_args.pop("responses", None) or {})
    responses.setdefault("dns_servers", [topo.INET_IP])   # the internet host answers DNS
    ctl = Controller(inventory(topo), responses=responses, **controller_args)
    net = None
    try:
        ctl.start(timeout=30)
        net = start_network(topo, controller_port=ctl.ofp_port)
        ctl.wait_switches(len(topo.switches()))
        yield ctl, net
    finally:
        stop_network(net)
        ctl.cleanup()
