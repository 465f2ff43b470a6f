"""Record the smart_home trace used by the replay tests (root, real OVS and Mininet).

    sudo .venv/bin/python -m topologies.record_trace tests/data/smart_home_scan.jsonl

Benign traffic through a 30 s warm-up and 20 s more, then `nmap -sS` from the
camera for 4 s, then 3 quiet seconds.  The recording holds only per-window
device features and new-flow events, nothing from the hosts themselves.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from topologies.lab import running

LEARN = 30


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = os.path.abspath(argv[0])
    if os.path.exists(out):
        os.unlink(out)
    from topologies.smart_home import SmartHomeTopo
    from topologies.traffic import start_benign
    with running(SmartHomeTopo(), record=out, detection={"learn_seconds": LEARN}) as (ctl, net):
        start_benign(net, LEARN + 60)
        time.sleep(LEARN + 20)
        scan = net.get("camera").popen(["timeout", "4", "nmap", "-sS", "-Pn", "-n", "-p", "1-1000", "10.0.0.3"])
        try:
            scan.wait(10)
        finally:
            if scan.poll() is None:
                os.killpg(scan.pid, signal.SIGKILL)
        time.sleep(3)
        for a in reversed(ctl.alerts()):
            print(f"{a['kind']:15} {a['device']:10} {a['explanation']}")
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
