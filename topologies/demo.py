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
    from topologies.traffic import start_benign
    from topologies.smart_home import SmartHomeTopo

    topo = SmartHomeTopo()
    try:
        print("[demo] starting iotguard and smart_home: 2 switches, 10 devices, gateway, internet host")
        with running(topo) as (ctl, net):
            print(f"[demo] controller up (OpenFlow 127.0.0.1:{ctl.ofp_port}, API 127.0.0.1:{ctl.api_port})")
            loss = net.pingAll(timeout="1")
            print(f"[demo] pingall: {loss:.0f}% loss")
            procs = start_benign(net, args.seconds + 5)
            print(f"[demo] {len(procs)} devices generating benign traffic for {args.seconds}s")
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
