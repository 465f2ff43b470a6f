"""Time from an alert to its response's rules confirmed on a real switch.

    sudo .venv/bin/python bench/response_bench.py [--alerts 100] [--switches 2] [--json]

Starts the real controller (`iotguard run`, a temporary state directory) and
--switches Open vSwitch bridges (userspace datapath, OpenFlow 1.3, fail-mode
secure) connected to it, with no hosts: the devices are in the configured
inventory and not located, so each quarantine goes to every switch, the worst
case.  One playbook quarantines a device on a `new_flow_burst` alert.  Then
--alerts alerts are raised one after another through `POST /api/v1/alerts`,
each for a different device, waiting for the previous one to be confirmed.

Measured by the controller, per response: from the alert's time (its wall
clock when the alert was raised) to the barrier reply that confirms the last of
its rules on a switch, i.e. decision + SQLite commit + fsync'd audit line +
compiling + sending + the switch applying them + the barrier round trip.
Reported: median and p99 (GET /api/v1/health, `responses.confirm_ms`), plus
the number of rules each quarantine installs.  Target: median <= 50 ms.

Everything it creates (bridges, the controller process, the state directory)
is removed in `finally`, by name and PID.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from topologies.lab import Controller, have_ovs  # noqa: E402

PLAYBOOK = """
playbooks:
  - name: bench-quarantine
    description: quarantine on a burst
    priority: 800
    when: {kinds: [new_flow_burst]}
    do:
      - quarantine: {dhcp: true, dns: true, ttl: 10m}
"""


def ovs(*args: str) -> None:
    subprocess.run(["ovs-vsctl", "--timeout=10", *args], check=True, capture_output=True, timeout=15)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=100)
    ap.add_argument("--switches", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not have_ovs():
        print("response_bench: needs root and a running Open vSwitch (sudo make provision)", file=sys.stderr)
        return 2
    books = tempfile.mkdtemp(prefix="iotguard-bench-")
    with open(os.path.join(books, "bench.yaml"), "w") as f:
        f.write(PLAYBOOK)
    inventory = [{"name": f"dev{i}", "mac": f"02:00:00:00:{i // 256:02x}:{i % 256:02x}",
                  "ip": f"10.9.{i // 256}.{i % 256 + 1}", "tags": ["camera", "iot"]}
                 for i in range(args.alerts)]
    ctl = Controller(inventory, detection={"learn_seconds": 3600},
                     responses={"playbooks": [books], "dns_servers": ["10.9.255.1"]})
    bridges = [f"iotgb{i}" for i in range(args.switches)]
    try:
        ctl.start(timeout=30)
        for i, br in enumerate(bridges):
            ovs("--may-exist", "add-br", br, "--", "set", "bridge", br, "datapath_type=netdev",
                "protocols=OpenFlow13", "fail-mode=secure", f"other-config:datapath-id={0xbe00 + i:016x}")
            ovs("set-controller", br, f"tcp:127.0.0.1:{ctl.ofp_port}")
        ctl.wait_switches(args.switches, timeout=30)
        t0 = time.monotonic()
        for i in range(args.alerts):
            ctl.call("POST", "/api/v1/alerts", {"kind": "new_flow_burst", "device": f"dev{i}", "score": 50})
            ctl.wait_for(lambda: (ctl.get("/api/v1/health")["responses"]["installed"]
                                  >= (i + 1) * args.switches), 10, f"alert {i} confirmed", interval=0.005)
        wall = time.monotonic() - t0
        health = ctl.get("/api/v1/health")["responses"]
        rules = max(len(r["dpids"]) for r in ctl.responses())
        per = [e for e in ctl.audit() if e["event"] == "decision"]
        result = {"alerts": args.alerts, "switches": args.switches,
                  "rules_per_quarantine_per_switch": len(per[0]["rules"]) // args.switches if per else None,
                  "confirm_ms": health["confirm_ms"], "failed": health["failed"],
                  "wall_s": round(wall, 2), "switches_per_response": rules}
    finally:
        for br in bridges:
            subprocess.run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", br],
                           capture_output=True, timeout=15)
        ctl.cleanup()
        subprocess.run(["rm", "-rf", books], timeout=10)
    if args.json:
        print(json.dumps(result))
    else:
        c = result["confirm_ms"]
        print(f"alert -> rules confirmed (barrier reply), {result['alerts']} alerts, "
              f"{result['switches']} switches, {result['rules_per_quarantine_per_switch']} rules per switch:")
        print(f"  median {c['median']:.1f} ms   p99 {c['p99']:.1f} ms   (n={c['n']}, failed {result['failed']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
