"""`make demo`: the controller drives the smart_home network under benign traffic.

Starts iotguard, the smart_home topology with its gateway, DNS and HTTP, and a
minute of mixed benign IoT traffic, then prints the device table: where each
device is plugged in and its rates over the last poll.  Everything it starts is
ended by PID and every bridge it creates is removed, also on Ctrl-C.

    sudo .venv/bin/python -m topologies.demo [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from topologies.lab import have_ovs, running

INET = "203.0.113.10"

# (host, shell loop) -- each runs under `timeout`, so it ends by itself too.
TRAFFIC = [
    ("camera", f"while :; do head -c 400000 /dev/urandom | curl -s -m 3 -o /dev/null "
               f"--data-binary @- http://{INET}/upload; sleep 0.5; done"),
    ("doorbell", f"while :; do for i in 1 2 3; do curl -s -m 2 -o /dev/null http://{INET}/; done; "
                 f"sleep 4; done"),
    ("thermostat", f"while :; do curl -s -m 2 -o /dev/null http://{INET}/; sleep 2; done"),
    ("bulb1", "ping -i 1 -q 10.0.0.2"),
    ("bulb2", "ping -i 1.5 -q 10.0.0.2"),
    ("bulb3", "ping -i 2 -q 10.0.0.2"),
    ("hub", "while :; do for b in 21 22 23; do ping -c 1 -W 1 -q 10.0.0.$b; done; sleep 1; done"),
    ("laptop", f"while :; do {{dns}}; curl -s -m 3 -o /dev/null http://{INET}/; sleep 1; done"),
    ("tv", f"while :; do head -c 200000 /dev/urandom | curl -s -m 3 -o /dev/null "
           f"--data-binary @- http://{INET}/; sleep 1; done"),
    ("speaker", f"while :; do curl -s -m 2 -o /dev/null http://{INET}/; sleep 3; done"),
]


def _rate(bps: float) -> str:
    for unit in ("B/s", "kB/s", "MB/s"):
        if bps < 1000:
            return f"{bps:6.1f} {unit}"
        bps /= 1000
    return f"{bps:6.1f} GB/s"


def device_table(devices: list[dict]) -> str:
    lines = [f"{'device':<11} {'mac':<17} {'ip':<12} {'tags':<16} {'switch':<16} {'port':>4} "
             f"{'tx':>11} {'rx':>11} {'pkt/s':>7}"]
    for d in sorted(devices, key=lambda d: (d["dpid"] or "", d["port"] or 0)):
        lines.append(
            f"{d['name']:<11} {d['mac'] or '-':<17} {(d['ips'] or ['-'])[-1]:<12} "
            f"{','.join(d['tags'])[:16]:<16} {d['dpid'] or '-':<16} {d['port'] or '-':>4} "
            f"{_rate(d['tx_bytes_per_s']):>11} {_rate(d['rx_bytes_per_s']):>11} "
            f"{d['packets_per_s']:7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="benign traffic duration (default 60)")
    ap.add_argument("--every", type=int, default=15, help="print the table every N seconds (default 15)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: must run as root (Mininet and Open vSwitch need it): sudo make demo",
              file=sys.stderr)
        return 2
    if not have_ovs():
        print("demo: Open vSwitch is not running; run `sudo make provision` first", file=sys.stderr)
        return 2
    from topologies.net import dns_query_cmd, start_process
    from topologies.smart_home import SmartHomeTopo

    topo = SmartHomeTopo()
    try:
        print("[demo] starting iotguard and smart_home: 2 switches, 10 devices, gateway, internet host")
        with running(topo) as (ctl, net):
            print(f"[demo] controller up (OpenFlow 127.0.0.1:{ctl.ofp_port}, API 127.0.0.1:{ctl.api_port})")
            loss = net.pingAll(timeout="1")
            print(f"[demo] pingall: {loss:.0f}% loss")
            dns = dns_query_cmd(INET, "cloud.example")
            for host, loop in TRAFFIC:
                start_process(net, host, ["timeout", str(args.seconds + 5), "sh", "-c",
                                          loop.replace("{dns}", dns + " >/dev/null")], name="traffic")
            print(f"[demo] {len(TRAFFIC)} devices generating benign traffic for {args.seconds}s")
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.seconds:
                time.sleep(max(0.0, min(args.every, args.seconds - (time.monotonic() - t0))))
                health = ctl.get("/api/v1/health")
                print(f"\n[demo] t={time.monotonic() - t0:4.0f}s  switches={len(health['switches'])} "
                      f"links={len(health['links'])} polls={health['counters']['polls']} "
                      f"packet-ins={health['counters']['packet_in']}")
                print(device_table(ctl.get("/api/v1/devices")["devices"]))
        print("\n[demo] done; the controller, the network and its processes are cleaned up.")
        return 0
    except KeyboardInterrupt:
        print("\n[demo] interrupted; cleaned up")
        return 130


if __name__ == "__main__":
    sys.exit(main())
