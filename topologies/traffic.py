"""Benign traffic: what each kind of device does on a normal day, compressed.

Each profile is a shell loop run inside a Mininet host under `timeout`, so it
ends by itself; `start_benign` records every process with the network, so
`stop_network` ends them by PID as well.  Profiles are chosen by a host's role
(its first tag); a role without a profile stays quiet.
"""

from __future__ import annotations

INET = "203.0.113.10"
HUB = "10.0.0.2"

UPLOAD = ("head -c {size} /dev/urandom | curl -s -m 3 -o /dev/null --data-binary @- "
          f"http://{INET}/upload")
GET = f"curl -s -m 3 -o /dev/null http://{INET}/"

PROFILES: dict[str, str] = {
    # a camera streams to its cloud recorder
    "camera": f"while :; do {UPLOAD.format(size=200000)}; sleep 0.5; done",
    # a doorbell: a few requests in a burst, then quiet
    "doorbell": f"while :; do for i in 1 2 3; do {GET}; done; sleep 4; done",
    # thermostats and sensors: small periodic reports
    "thermostat": f"while :; do {GET}; sleep 2; done",
    "sensor": f"while :; do {GET}; sleep 3; done",
    # bulbs keep in touch with the hub
    "bulb": f"ping -i 1 -q {HUB}",
    # the hub polls its bulbs
    "hub": "while :; do for b in 21 22 23; do ping -c 1 -W 1 -q 10.0.0.$b; done; sleep 1; done",
    # people browse and resolve names
    "laptop": f"while :; do {{dns}} cloud.example; {GET}; sleep 1; done",
    "workstation": f"while :; do {{dns}} update.example; {GET}; sleep 2; done",
    # media devices fetch content
    "tv": f"while :; do curl -s -m 3 -o /dev/null http://{INET}/firmware/latest.bin; sleep 1; done",
    "speaker": f"while :; do {GET}; sleep 3; done",
    "printer": f"while :; do {GET}; sleep 5; done",
    # a badge reader asks the file server (its access list) now and then
    "badge_reader": "while :; do curl -s -m 3 -o /dev/null http://10.0.0.51/; sleep 3; done",
    # servers: backups and updates from the cloud
    "fileserver": f"while :; do curl -s -m 3 -o /dev/null http://{INET}/firmware/latest.bin; sleep 5; done",
    "nvr": f"while :; do {UPLOAD.format(size=100000)}; sleep 2; done",
}


# Every device also checks in: a ping to the gateway and a request to the cloud now and
# then (real devices phone home).  It is also exactly what the tests' and the demo's
# reachability checks do, so those checks are part of what the baselines learn.
CHECKIN = f"while :; do sleep 5; ping -c 1 -W 1 -q {{gw}}; {GET}; done"


def start_benign(net, seconds: float, roles: dict[str, str] | None = None) -> list:
    """Start every host's profile (and its check-in) for `seconds`; returns the processes.
    `roles` overrides a host's role; a role with no profile (e.g. "off") keeps it silent."""
    from topologies.net import inventory
    procs = []
    for host in inventory(net):
        role = (roles or {}).get(host["name"]) or (host["tags"][0] if host["tags"] else "")
        procs += start_host(net, host["name"], seconds, role=role)
    return procs


def start_host(net, name: str, seconds: float, role: str | None = None, loop: str | None = None) -> list:
    """One host's profile (its role's, or `loop`) and its check-in for `seconds`; [] if it
    has neither."""
    from topologies.net import DNS_SERVER, inventory, start_process
    import sys

    if loop is None:
        if role is None:
            tags = next(h["tags"] for h in inventory(net) if h["name"] == name)
            role = tags[0] if tags else ""
        loop = PROFILES.get(role)
        if loop is None:
            return []
    dns = f"{sys.executable} {DNS_SERVER} --server {INET} --timeout 1 --query"
    cmd = ["timeout", str(int(seconds)), "sh", "-c", loop.replace("{dns}", dns) + " >/dev/null 2>&1"]
    checkin = CHECKIN.replace("{gw}", net.topo.GW_IP)
    return [start_process(net, name, cmd, name="benign"),
            start_process(net, name, ["timeout", str(int(seconds)), "sh", "-c", checkin + " >/dev/null 2>&1"],
                          name="checkin")]
