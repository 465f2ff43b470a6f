#!/usr/bin/env bash
# Provision a Debian 12 machine (or the Vagrant VM) for iotguard: Debian packages,
# Open vSwitch with the userspace datapath, and the project venv.
# Idempotent: every step checks before it acts. Run as root.
#   REPO=/path/to/checkout vagrant/provision.sh
set -euo pipefail

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VENV=${VENV:-$REPO/.venv}
PKGS=(openvswitch-switch openvswitch-testcontroller mininet iputils-ping ethtool
      iperf3 hping3 nmap tcpdump netcat-openbsd curl iproute2 procps
      python3 python3-venv python3-pip python3-dev chromium)

log() { printf '[provision] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "provision.sh must run as root (it installs packages and starts Open vSwitch)" >&2
    exit 1
fi

# 1. Debian packages.
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "Debian packages present"
fi
for tool in ovs-vsctl mn mnexec ping iperf3 hping3 nmap nc curl tcpdump chromium; do
    command -v "$tool" >/dev/null || { echo "provision: $tool missing after install" >&2; exit 1; }
done

# 2. Open vSwitch, userspace datapath, TSO on (TCP over veths times out without it).
S=/usr/share/openvswitch/scripts/ovs-ctl
if ! ovs-vsctl --timeout=2 show >/dev/null 2>&1; then
    log "starting ovsdb-server"
    $S --no-ovs-vswitchd start --system-id=random
fi
if [ "$(ovs-vsctl --timeout=5 get Open_vSwitch . other_config:userspace-tso-enable 2>/dev/null)" != '"true"' ]; then
    ovs-vsctl --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true
    if [ -e /var/run/openvswitch/ovs-vswitchd.pid ] && kill -0 "$(cat /var/run/openvswitch/ovs-vswitchd.pid)" 2>/dev/null; then
        log "restarting ovs-vswitchd so TSO takes effect"
        $S --no-ovsdb-server stop
    fi
fi
if ! { [ -e /var/run/openvswitch/ovs-vswitchd.pid ] && kill -0 "$(cat /var/run/openvswitch/ovs-vswitchd.pid)" 2>/dev/null; }; then
    log "starting ovs-vswitchd"
    $S --no-ovsdb-server start
fi
ovs-vsctl --timeout=5 show >/dev/null

# 3. The venv: Debian's python so Debian's mininet imports.
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -c 'import mininet.net' || { echo "provision: Debian mininet not importable from $VENV" >&2; exit 1; }
stamp="$VENV/.iotguard-installed"
if [ ! -e "$stamp" ] || [ "$REPO/setup.cfg" -nt "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ] \
   || ! "$VENV/bin/python" -c 'import os_ken, sklearn, matplotlib, prometheus_client, controller' 2>/dev/null; then
    log "installing iotguard[test] into $VENV"
    "$VENV/bin/pip" install -q --upgrade 'pip>=23'
    "$VENV/bin/pip" install -q -e "$REPO[test]"
    touch "$stamp"
else
    log "venv up to date"
fi
log "done"
