"""`make demo` / `iotguard demo`: watch iotguard catch and isolate a compromised device.

A live timeline: iotguard and the smart_home network start, benign IoT traffic
teaches every device's baseline (a progress bar), then the camera is
compromised (by default a Mirai-like telnet scan).  iotguard raises an alert
with its explanation, the shipped playbooks answer, and the rules they
installed are shown; a reachability check proves the attacker is cut off
while every other device still works.  Then the incident report is written
and everything the demo started is ended by PID and its bridges removed, also
on Ctrl-C.

    sudo .venv/bin/python -m topologies.demo [--topo smart_home|enterprise] [--scenario scan]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from topologies.lab import ROOT, have_ovs, ping, running

LEARN = 30


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.tty = sys.stdout.isatty()

    def say(self, what: str) -> None:
        t = time.monotonic() - self.t0
        print(f"[{int(t // 60):02d}:{t % 60:04.1f}] {what}", flush=True)

    def bar(self, done: int, total: int, label: str) -> None:
        width = 30
        fill = int(width * done / max(total, 1))
        text = f"  [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {label}"
        if self.tty:
            print("\r" + text, end="", flush=True)
        else:
            print(text, flush=True)


def reach(net, names: list[str], gw: str, inet: str) -> dict[str, bool]:
    out = {}
    for n in names:
        h = net.get(n)
        web = h.cmd(f"timeout 5 curl -s -o /dev/null -w '%{{http_code}}' --max-time 3 http://{inet}/")
        out[n] = ping(h, gw) and web.strip().endswith("200")
    return out


def _fmt_reach(status: dict[str, bool]) -> str:
    return "  ".join(f"{n} {'ok' if ok else 'CUT'}" for n, ok in status.items())


def _rule(r: dict) -> str:
    """One audit rule record, the way ovs-ofctl would show it."""
    if "meter" in r:
        return f"dpid={r['dpid']:016x} meter={r['meter']} {r['command']} {r['rate']} {r['unit']}"
    match = ",".join(f"{k}={v if not isinstance(v, list) else '/'.join(map(str, v))}"
                     for k, v in r["match"].items())
    acts = r.get("instructions") or []
    return (f"dpid={r['dpid']:016x} table={r['table']} priority={r['priority']} cookie={r['cookie']} "
            f"{match or '*'} -> {acts if acts else 'drop'}")


def main(argv: list[str] | None = None) -> int:
    from topologies.scenarios import SCENARIOS
    ap = argparse.ArgumentParser(prog="iotguard demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topo", choices=["smart_home", "enterprise"], default="smart_home",
                    help="the network (default smart_home)")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="scan",
                    help="the attack the compromised device runs (default scan: a Mirai-like telnet scan)")
    ap.add_argument("--learn", type=int, default=LEARN, metavar="S",
                    help=f"warm-up seconds before baselines exist (default {LEARN}; at least 10)")
    ap.add_argument("--report", metavar="FILE", default="iotguard-demo-report.html",
                    help="where to write the incident report (default ./iotguard-demo-report.html)")
    ap.add_argument("--state-dir", metavar="DIR", default="/tmp/iotguard-demo",
                    help="the demo controller's state (emptied at start, kept after, so "
                         "'iotguard report --last --state-dir DIR' works later; default /tmp/iotguard-demo)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("iotguard demo: must run as root (Mininet and Open vSwitch need it): sudo make demo",
              file=sys.stderr)
        return 2
    if args.learn < 10:
        print("iotguard demo: --learn must be at least 10 seconds", file=sys.stderr)
        return 2
    tl = Timeline()
    if not have_ovs():
        tl.say("Open vSwitch is not running: provisioning (vagrant/provision.sh)")
        done = subprocess.run(["bash", os.path.join(ROOT, "vagrant", "provision.sh")], timeout=1800)
        if done.returncode != 0 or not have_ovs():
            print("iotguard demo: provisioning failed; see its output above", file=sys.stderr)
            return 2
    from topologies.enterprise import EnterpriseTopo
    from topologies.smart_home import SmartHomeTopo
    from topologies.traffic import start_benign

    topo = SmartHomeTopo() if args.topo == "smart_home" else EnterpriseTopo()
    sc = SCENARIOS[args.scenario]
    attackers = sc.attackers[topo.NAME]
    shutil.rmtree(args.state_dir, ignore_errors=True)
    try:
        tl.say(f"starting iotguard (shipped playbooks) and the {topo.NAME} network")
        with running(topo, detection={"learn_seconds": args.learn}, state_dir=args.state_dir) as (ctl, net):
            devices = [h.name for h in net.hosts
                       if h.name not in (topo.gateway, topo.internet, topo.honeypot)]
            tl.say(f"controller up: OpenFlow 127.0.0.1:{ctl.ofp_port}, API http://127.0.0.1:{ctl.api_port}/api/v1/, "
                   f"metrics http://127.0.0.1:{ctl.metrics_port}/metrics; "
                   f"{len(topo.switches())} switches, {len(devices)} devices")
            start_benign(net, 900)
            tl.say(f"benign traffic from every device; learning each one's baseline ({args.learn} s warm-up)")
            deadline = time.monotonic() + args.learn + 90
            while time.monotonic() < deadline:
                det = ctl.get("/api/v1/health")["detection"]
                tl.bar(det["baselined"], len(devices), "devices baselined")
                if det["baselined"] >= len(devices):
                    break
                time.sleep(1)
            if tl.tty:
                print()
            before = reach(net, devices, topo.GW_IP, topo.INET_IP)
            tl.say("reachability before the attack: " + _fmt_reach(before))
            t_alerts = time.time()
            attack = sc.run(net)
            tl.say(f"{', '.join(attackers)} compromised: {sc.doc} ({sc.name})")
            try:
                alert = ctl.wait_for(lambda: next(iter(ctl.alerts(t_alerts)[::-1]), None), 60,
                                     "an alert", interval=0.1)
                tl.say(f"ALERT {alert['kind']} after {alert['time'] - attack.started:.2f} s: "
                       f"{alert['explanation']}")
                answered = ctl.wait_for(lambda: [r for r in ctl.responses()
                                                 if r["created"] >= t_alerts and r["confirmed"]
                                                 and r["mode"] == "enforce"], 60, "a response",
                                        interval=0.1)
                for r in answered:
                    tl.say(f"RESPONSE {r['action']} by playbook {r['playbook']} (#{r['id']}, ttl "
                           f"{r['ttl']:.0f} s), confirmed on switch(es) "
                           f"{', '.join(f'{d:016x}' for d in r['confirmed'])} "
                           f"{min(r['created'] for r in answered) - attack.started:.2f} s after the first packet")
                    decision = next((e for e in ctl.audit(t_alerts) if e["response_id"] == r["id"]
                                     and e["event"] == "decision"), None)
                    if decision:
                        for rule in decision["rules"][:4]:
                            print(f"           {_rule(rule)}")
                        if len(decision["rules"]) > 4:
                            print(f"           ... and {len(decision['rules']) - 4} more rules")
                time.sleep(1.5)
                after = reach(net, devices, topo.GW_IP, topo.INET_IP)
                tl.say("reachability after: " + _fmt_reach(after))
                if sc.action == "quarantine" and any(after[n] for n in attackers):
                    tl.say("WARNING: the quarantined device can still reach the gateway and the internet")
                hurt = [n for n in devices if n not in attackers and not after[n]]
                tl.say("every other device still works" if not hurt else f"WARNING: also cut off: {hurt}")
            finally:
                attack.stop()
            time.sleep(4)           # a few windows after mitigation for the report's chart
            from controller.api.report import write_report
            path = write_report(ctl.state_dir, alert["id"], os.path.abspath(args.report))
            tl.say(f"incident report: {path}")
            tl.say(f"audit log: {os.path.join(ctl.state_dir, 'audit.jsonl')}")
        tl.say("done: the controller, the network and every process it started are cleaned up "
               f"(state kept in {args.state_dir} for 'iotguard report --last --state-dir {args.state_dir}')")
        return 0
    except KeyboardInterrupt:
        print("\n[demo] interrupted; cleaned up")
        return 130


if __name__ == "__main__":
    sys.exit(main())
