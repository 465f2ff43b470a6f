"""The shipped IoT-23 conn logs through `iotguard replay --conn-log`: one row per scenario.

    .venv/bin/python -m bench.iot23_replay [--learn SECONDS] [--only NAME ...] [--jobs N]

For each scenario (tests/data/captures/SOURCES.md) the whole log is replayed through the
real Core and the emulated switch (controller/connreplay.py), with an inventory that names
the device of interest, tags it `iot` and tags the lab's router `gateway` (as
docs/detection.md asks of a deployment).  Printed per scenario: the device's windows, its
alerts after warm-up (and per device-day), the first malicious connection (IoT-23's label),
the first alert at or after it and the delay, and that alert's words.  The labels are only
read here, to measure: the replay never sees them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.datasets import CAPTURES, IOT23, read_conn_log  # noqa: E402

# The lab router of each scenario (the DNS server / SSH client in the logs).
ROUTERS = {"192.168.1.195": "192.168.1.1", "192.168.1.199": "192.168.1.1", "192.168.1.197": "192.168.1.1",
           "192.168.1.132": "192.168.1.1", "192.168.100.113": "192.168.100.1",
           "192.168.100.103": "192.168.100.1", "192.168.2.3": "192.168.2.1"}


def inventory(ip: str):
    from controller.config import Device
    return (Device("device", None, (ip,), ("iot",)), Device("router", None, (ROUTERS[ip],), ("gateway",)))


def path_of(name: str) -> str:
    return os.path.join(CAPTURES, "iot23", f"{name}.conn.csv.gz")


def first_malicious(name: str, ip: str) -> tuple[float, str] | None:
    """When the device's first connection labelled malicious starts, and its label."""
    rows = [r for r in read_conn_log(path_of(name)) if r["label"].strip().lower().startswith("malicious")
            and ip in (r["id.orig_h"], r["id.resp_h"])]
    if not rows:
        return None
    r = min(rows, key=lambda r: float(r["ts"]))
    return float(r["ts"]), r["detailed-label"]


def measure(name: str, ip: str, learn: float | None = None, records=None) -> dict:
    """Replay one scenario (or `records` of it) and measure the device of interest."""
    import dataclasses
    from controller.config import Config
    from controller.connreplay import mac_for, replay_conn_log
    config = dataclasses.replace(Config(), devices=inventory(ip))
    if learn is not None:
        config = dataclasses.replace(config, learn_seconds=float(learn))
    log = logging.getLogger("iotguard")
    level = log.level
    log.setLevel(logging.ERROR)          # no ALERT line per alert; put back for whoever called
    try:
        r = replay_conn_log(path_of(name), config, records=records).to_dict()
    finally:
        log.setLevel(level)
    mac = mac_for(ip, True)
    dev = next(d for d in r["devices"] if d["mac"] == mac)
    start = r["start"]
    learned = dev["learned_at"] if dev["learned_at"] is not None else start + config.learn_seconds
    mine = [a for a in r["alerts"] if a["mac"] == mac]
    after = [a for a in mine if a["time"] >= learned]
    days = max(r["end"] - learned, 1.0) / 86400
    mal = first_malicious(name, ip)
    out = {"scenario": name, "device": ip, "windows": dev["windows"], "hours": round((r["end"] - start) / 3600, 1),
           "learn_s": config.learn_seconds, "learned_at_s": round(learned - start),
           "alerts": len(mine), "alerts_after_warmup": len(after),
           "per_device_day": round(len(after) / days, 1), "kinds": dev["alert_kinds"],
           "first_malicious_s": None, "first_label": None, "first_alert_s": None, "delay_s": None, "words": None,
           "alerts_before_malicious": None,
           "alerts_list": [{"t": round(a["time"] - start, 1), "kind": a["kind"], "words": a["explanation"]}
                           for a in mine]}
    if mal is not None:
        t, label = mal
        hit = next((a for a in mine if a["time"] >= t), None)
        out.update(first_malicious_s=round(t - start), first_label=label,
                   alerts_before_malicious=sum(1 for a in after if a["time"] < t))
        if hit is not None:
            out.update(first_alert_s=round(hit["time"] - start), delay_s=round(hit["time"] - t, 1),
                       words=f"{hit['kind']}: {hit['explanation']}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learn", type=float, help="warm-up seconds (default: the config's, 300)")
    ap.add_argument("--only", nargs="*", help="scenario names")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--alerts", action="store_true", help="list every alert of each device instead")
    args = ap.parse_args(argv)
    todo = [(n, ip) for n, ip, _ in IOT23 if not args.only or n in args.only]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(measure, [n for n, _ in todo], [ip for _, ip in todo], [args.learn] * len(todo)))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if args.alerts:
        for r in rows:
            for a in r["alerts_list"]:
                print(f"{r['scenario']} +{a['t']:,.0f}s {a['kind']}: {a['words']}")
        return 0
    print("| scenario | device | hours | windows | alerts (after warm-up) | per device-day | first malicious "
          "| first alert | delay | words |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |")
    for r in rows:
        mal = "-" if r["first_malicious_s"] is None else f"+{r['first_malicious_s']:,} s ({r['first_label']})"
        first = "-" if r["first_alert_s"] is None else f"+{r['first_alert_s']:,} s"
        delay = "-" if r["delay_s"] is None else f"{r['delay_s']:g} s"
        print(f"| {r['scenario']} | {r['device']} | {r['hours']} | {r['windows']:,} | {r['alerts']} "
              f"({r['alerts_after_warmup']}) | {r['per_device_day']} | {mal} | {first} | {delay} | "
              f"{r['words'] or '-'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
