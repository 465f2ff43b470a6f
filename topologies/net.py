"""Shared helpers for the iotguard Mininet topologies.

Addressing (the "gateway trick" from docs/notes): every topology is one L2 segment.
The LAN is 10.0.0.0/24 and the gateway host ``gw`` holds 10.0.0.1/24 plus 203.0.113.1/24
(TEST-NET-3) on its single interface, with ip_forward=1 and send_redirects=0. LAN hosts
route by default via 10.0.0.1; the "internet" host ``inet`` (203.0.113.10) routes via
203.0.113.1. So traffic to the outside goes to the gateway's MAC, as on a real LAN.

Public API:
    IoTTopo                   base Topo with add_switch/add_device/add_gateway/add_internet
    inventory(topo)           [{"name", "mac", "ip", "tags"}] for every host
    switch_dpids(topo)        {switch name: dpid (16 hex digits)}
    locations(topo)           {host: {"switch", "dpid", "port"}}
    start_network(topo, controller_port=None, controller_ip='127.0.0.1', ...) -> Mininet
    stop_network(net)         ends recorded processes by PID, net.stop(), removes leftovers
    start_process(net, host, args, name) / stop_process(popen)
    remove_leftovers(topo)    deletes this topology's bridges/veths (and recorded PIDs) by name
    dns_query_cmd(server, name)  shell command that resolves name from inside a host
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from mininet.link import Intf
from mininet.log import error, info, warn
from mininet.net import Mininet
from mininet.node import Host, OVSSwitch, RemoteController
from mininet.topo import Topo

HERE = os.path.dirname(os.path.abspath(__file__))
DNS_SERVER = os.path.join(HERE, 'dns_server.py')
HONEYPOT = os.path.join(HERE, 'honeypot.py')
HONEYPOT_PORTS = (22, 23, 2323)
HTTP_SERVER = os.path.join(HERE, 'http_server.py')
# PIDs of services we start are also written here, so a later run can end the
# leftovers of a killed run by PID (after checking their command line).
PID_DIR = '/run/iotguard-topologies'

_NO_IPV6 = ('sysctl -qw net.ipv6.conf.all.disable_ipv6=1 '
            'net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.lo.disable_ipv6=1')


# --------------------------------------------------------------------------- hosts

class IoTIntf(Intf):
    """An interface that, on the root-namespace side (switch ports), disables IPv6 before
    it comes up. Otherwise the kernel sends MLD reports and DAD neighbour solicitations
    out of every switch port, and those on switch-to-switch links enter the switches."""

    def config(self, **params):
        if self.node is not None and not self.node.inNamespace:
            try:
                with open('/proc/sys/net/ipv6/conf/%s/disable_ipv6' % self.name, 'w') as fh:
                    fh.write('1')
            except OSError:
                pass
        return super().config(**params)


class IoTHost(Host):
    """A Mininet host with tags and IPv6 off (fewer RS/ND/MLD packets to the controller).

    IPv6 is disabled in __init__, i.e. before Mininet moves the veth into the namespace,
    so the interface never sends a single IPv6 packet."""

    def __init__(self, name, **params):
        super().__init__(name, **params)
        self.tags = list(params.get('tags', ()))
        self.role = self.tags[0] if self.tags else None
        self.cmd(_NO_IPV6)

    def config(self, **params):
        self.cmd(_NO_IPV6)
        return super().config(**params)


class GatewayHost(IoTHost):
    """The LAN gateway: a second (public) address on the same interface, IPv4
    forwarding on and ICMP redirects off, so hosts keep sending through it."""

    def config(self, wan_ip=None, **params):
        result = super().config(**params)
        intf = self.defaultIntf()
        if wan_ip:
            self.cmd('ip addr replace %s dev %s' % (wan_ip, intf))
        self.cmd('sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 '
                 'net.ipv4.conf.default.send_redirects=0 '
                 'net.ipv4.conf.%s.send_redirects=0' % intf)
        return result


# --------------------------------------------------------------------------- topology

class IoTTopo(Topo):
    """Base class: one L2 LAN behind a gateway host plus an "internet" host."""

    NAME = None
    LAN_CIDR = '10.0.0.0/24'
    PREFIXLEN = 24
    GW_IP = '10.0.0.1'
    WAN_CIDR = '203.0.113.0/24'
    GW_WAN_IP = '203.0.113.1'
    INET_IP = '203.0.113.10'
    DROPZONE_IP = '203.0.113.20'    # a second address on the internet host, never visited
    C2_IP = '198.51.100.66'         # a "command and control" server, also on the internet host
    GW_MAC = '00:00:00:00:00:01'
    INET_MAC = '00:00:00:00:ff:10'

    gateway = None      # host names, set by add_gateway / add_internet / add_honeypot
    internet = None
    honeypot = None

    def add_switch(self, name, dpid, **opts):
        """An OVS switch on the userspace datapath with a fixed 16-hex-digit dpid.
        Standalone by default so plain `mn --custom` works; start_network sets the
        fail mode from whether a controller is given."""
        dpid = '%016x' % int(dpid, 16)
        params = dict(cls=OVSSwitch, dpid=dpid, datapath='user',
                      protocols='OpenFlow13', failMode='standalone')
        params.update(opts)
        return self.addSwitch(name, **params)

    def addLink(self, node1, node2, port1=None, port2=None, key=None, **opts):
        opts.setdefault('intf', IoTIntf)
        return super().addLink(node1, node2, port1, port2, key, **opts)

    def add_device(self, name, ip, mac, tags, switch, cls=IoTHost, default_via=None, **opts):
        """A LAN host. tags[0] is its role (camera, bulb, ...)."""
        if len(name) > 10:
            raise ValueError('host name %r longer than 10 characters' % name)
        via = self.GW_IP if default_via is None else default_via
        params = dict(cls=cls, ip='%s/%d' % (ip, self.PREFIXLEN), mac=mac, tags=tuple(tags))
        if via:
            params['defaultRoute'] = 'via %s' % via
        params.update(opts)
        self.addHost(name, **params)
        self.addLink(name, switch)
        return name

    def add_gateway(self, switch, name='gw', mac=None):
        self.gateway = name
        return self.add_device(name, self.GW_IP, mac or self.GW_MAC, ('gateway', 'infra'),
                               switch, cls=GatewayHost, default_via='',
                               wan_ip='%s/%d' % (self.GW_WAN_IP, self.PREFIXLEN))

    def add_honeypot(self, switch, ip, name='honeypot', mac=None):
        """A LAN host that answers on HONEYPOT_PORTS and records every connection."""
        self.honeypot = name
        mac = mac or '00:00:00:00:00:' + ip.split('.')[-1].zfill(2)    # 10.0.0.66 -> ...:66
        return self.add_device(name, ip, mac, ('honeypot', 'infra'), switch)

    def add_internet(self, switch, name='inet', mac=None):
        self.internet = name
        return self.add_device(name, self.INET_IP, mac or self.INET_MAC,
                               ('internet', 'external'), switch, default_via=self.GW_WAN_IP)

    def dns_zone(self):
        """Names the DNS service on the internet host answers (A records)."""
        return {'cloud.example': self.INET_IP,
                'update.example': self.INET_IP,
                'time.example': self.INET_IP}


def _topo_of(obj):
    return obj.topo if isinstance(obj, Mininet) else obj


def inventory(topo):
    """[{"name", "mac", "ip", "tags"}] for every host (tags[0] is the role), in build
    order; suitable for the iotguard config's ``devices:`` list. Accepts a Topo or a
    Mininet built from one."""
    topo = _topo_of(topo)
    out = []
    for name in topo.hosts(sort=False):
        opts = topo.nodeInfo(name)
        out.append({'name': name, 'mac': opts.get('mac'),
                    'ip': str(opts.get('ip', '')).split('/')[0],
                    'tags': list(opts.get('tags', ()))})
    return out


def switch_dpids(topo):
    topo = _topo_of(topo)
    return {s: topo.nodeInfo(s)['dpid'] for s in topo.switches(sort=False)}


def locations(topo):
    """{host: {"switch": name, "dpid": dpid, "port": OpenFlow port number}}."""
    topo = _topo_of(topo)
    dpids = switch_dpids(topo)
    out = {}
    for _a, _b, link in topo.links(sort=False, withInfo=True):
        for me, peer, peer_port in ((link['node1'], link['node2'], link['port2']),
                                    (link['node2'], link['node1'], link['port1'])):
            if not topo.isSwitch(me) and topo.isSwitch(peer):
                out[me] = {'switch': peer, 'dpid': dpids[peer], 'port': peer_port}
    return out


def _intf_names(topo):
    names = []
    for _a, _b, link in topo.links(sort=False, withInfo=True):
        names.append('%s-eth%s' % (link['node1'], link['port1']))
        names.append('%s-eth%s' % (link['node2'], link['port2']))
    return names


# --------------------------------------------------------------------------- processes

def _state(net):
    if not hasattr(net, '_iotguard'):
        net._iotguard = {'topo': net.topo, 'procs': [], 'tmpdir': None,
                         'stopped': False, 'timings': {}}
    return net._iotguard


def _pidfile(topo):
    return os.path.join(PID_DIR, '%s.json' % (topo.NAME or type(topo).__name__))


def _write_pidfile(net):
    st = _state(net)
    try:
        os.makedirs(PID_DIR, exist_ok=True)
        with open(_pidfile(st['topo']), 'w') as fh:
            json.dump([{'pid': p.pid, 'cmdline': p.iotguard_args} for p in st['procs']], fh)
    except OSError:
        pass


def _cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as fh:
            return [a.decode(errors='replace') for a in fh.read().split(b'\0') if a]
    except OSError:
        return None


def start_process(net, host, args, name=None):
    """Start args (a list) inside host, recorded so stop_network ends it by PID.

    Output goes to <tmpdir>/<host>-<name>.log. No start_new_session: mnexec -d already
    calls setsid, so os.killpg(popen.pid, ...) reaches the command and its children."""
    st = _state(net)
    if st['tmpdir'] is None:
        st['tmpdir'] = tempfile.mkdtemp(prefix='iotguard-net-')
    host = net.get(host) if isinstance(host, str) else host
    name = name or os.path.basename(args[0])
    log_path = os.path.join(st['tmpdir'], '%s-%s.log' % (host.name, name))
    with open(log_path, 'ab') as log:
        popen = host.popen([str(a) for a in args], stdin=subprocess.DEVNULL,
                           stdout=log, stderr=subprocess.STDOUT)
    popen.iotguard_args = [str(a) for a in args]
    popen.iotguard_log = log_path
    st['procs'].append(popen)
    _write_pidfile(net)
    return popen


def stop_process(popen, timeout=3.0):
    """SIGTERM the process group of popen, SIGKILL it after timeout. Returns the exit code."""
    if popen.poll() is None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                popen.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    return popen.returncode


def wait_listening(host, sockets, timeout=5.0):
    """Wait until host listens on every (proto, port) in sockets, e.g. [('tcp', 80)]."""
    deadline = time.monotonic() + timeout
    missing = list(sockets)
    while True:
        out = host.cmd('ss -Hlntu')
        listening = set()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 5:
                listening.add((parts[0], parts[4].rsplit(':', 1)[-1]))
        missing = [(p, port) for p, port in sockets if (p, str(port)) not in listening]
        if not missing or time.monotonic() > deadline:
            return not missing
        time.sleep(0.05)


def dns_query_cmd(server, name, timeout=2.0):
    """Shell command resolving name (A) against server from inside a host; prints the
    addresses, or NXDOMAIN/ERROR. Bounded by `timeout`."""
    return 'timeout %d %s %s --query %s --server %s --timeout %s' % (
        int(2 * timeout + 3), sys.executable, DNS_SERVER, name, server, timeout)


def start_services(net):
    """HTTP (port 80) and DNS (port 53) on the internet host."""
    st = _state(net)
    topo = st['topo']
    inet = net.get(topo.internet)
    www = os.path.join(st['tmpdir'], 'www')
    os.makedirs(os.path.join(www, 'firmware'), exist_ok=True)
    with open(os.path.join(www, 'index.html'), 'w') as fh:
        fh.write('<!doctype html>\n<html><head><title>iotguard test internet</title></head>\n'
                 '<body><h1>iotguard test internet</h1><p>topology: %s, host %s (%s)</p>'
                 '</body></html>\n' % (topo.NAME, inet.name, topo.INET_IP))
    with open(os.path.join(www, 'firmware', 'latest.bin'), 'wb') as fh:
        fh.write(bytes(range(256)) * 256)          # 64 KiB "firmware image"
    # The internet host also answers as a never-visited drop zone and as a C2 server
    # (the attack scenarios' destinations); the gateway routes the C2 prefix to it.
    inet.cmd('ip addr replace %s/%d dev %s' % (topo.DROPZONE_IP, topo.PREFIXLEN, inet.defaultIntf()))
    inet.cmd('ip addr replace %s/32 dev lo' % topo.C2_IP)
    net.get(topo.gateway).cmd('ip route replace %s/24 via %s' % (
        topo.C2_IP.rsplit('.', 1)[0] + '.0', topo.INET_IP))
    start_process(net, inet, [sys.executable, HTTP_SERVER, '--port', '80',
                              '--bind', '0.0.0.0', '--directory', www], 'http')
    records = []
    for name, addr in sorted(topo.dns_zone().items()):
        records += ['--record', '%s=%s' % (name, addr)]
    start_process(net, inet, [sys.executable, '-u', DNS_SERVER, '--bind', topo.INET_IP,
                              '--port', '53'] + records, 'dns')
    if not wait_listening(inet, [('tcp', 80), ('udp', 53)], timeout=10):
        raise RuntimeError('services on %s did not start; see logs in %s'
                           % (inet.name, st['tmpdir']))
    if topo.honeypot:
        hp = net.get(topo.honeypot)
        # Accept connections to any address ("AnyIP"): iotguard's redirect rewrites only
        # the destination MAC, so a scanner's packets arrive still addressed to their
        # victims; a local route for everything arriving on the LAN port hands them to
        # the listeners, and replies leave from the address the device asked for.
        # arp_ignore=1 keeps it from answering ARP for those addresses (the local
        # route would otherwise make it claim every IP on the LAN).
        intf = hp.defaultIntf().name
        for cmd in ('sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.%s.arp_ignore=1' % intf,
                    'ip route replace local 0.0.0.0/0 dev lo table 100',
                    'ip rule del iif %s lookup 100 2>/dev/null; ip rule add iif %s lookup 100 pref 100'
                    % (intf, intf)):
            hp.cmd(cmd)
        cmd = [sys.executable, '-u', HONEYPOT, '--log', honeypot_log(net)]
        for port in HONEYPOT_PORTS:
            cmd += ['--port', str(port)]
        start_process(net, hp, cmd, 'honeypot')
        if not wait_listening(hp, [('tcp', p) for p in HONEYPOT_PORTS], timeout=10):
            raise RuntimeError('the honeypot on %s did not start; see logs in %s'
                               % (hp.name, st['tmpdir']))


def honeypot_log(net):
    """The honeypot's connection log (JSON lines), in the network's temporary directory."""
    return os.path.join(_state(net)['tmpdir'], 'honeypot.jsonl')


# --------------------------------------------------------------------------- network

def remove_leftovers(topo):
    """Delete what a (possibly killed) run of this topology left behind, by name and PID:
    recorded service processes (if their command line still matches), the OVS bridges
    named in the topology, and veths named <node>-ethN in the root namespace.
    Never touches anything it cannot name. Returns a list of what it removed."""
    removed = []
    try:
        with open(_pidfile(topo)) as fh:
            recorded = json.load(fh)
    except (OSError, ValueError):
        recorded = []
    for entry in recorded:
        pid = entry.get('pid')
        if pid and _cmdline(pid) == entry.get('cmdline'):
            try:
                os.killpg(pid, signal.SIGKILL)
                removed.append('pid %d' % pid)
            except OSError:
                pass
    for path, rm in ((_pidfile(topo), os.unlink), (PID_DIR, os.rmdir)):
        try:
            rm(path)            # the directory only goes when empty
        except OSError:
            pass
    switches = list(topo.switches(sort=False))
    existing = subprocess.run(['ovs-vsctl', '--timeout=10', 'list-br'], capture_output=True,
                              text=True, check=False).stdout.split()
    doomed = [s for s in switches if s in existing]
    if doomed:
        cmd = ['ovs-vsctl', '--timeout=10']
        for s in doomed:
            cmd += ['--', '--if-exists', 'del-br', s]
        subprocess.run(cmd, capture_output=True, check=False)
        removed += ['bridge ' + s for s in doomed]
    out = subprocess.run(['ip', '-o', 'link', 'show'], capture_output=True, text=True,
                         check=False).stdout
    present = {line.split(':')[1].strip().split('@')[0] for line in out.splitlines()
               if line.count(':') >= 2}
    for name in _intf_names(topo) + switches:
        if name in present:
            subprocess.run(['ip', 'link', 'del', name], capture_output=True, check=False)
            removed.append('link ' + name)
    return removed


class QuietRemoteController(RemoteController):
    """Mininet's RemoteController without its telnet probe.

    RemoteController checks the controller with `echo A | telnet -e A ip port` and reads
    telnet's output as UTF-8: when the controller's OFPT_HELLO arrives first, its random
    xid bytes made Mininet raise UnicodeDecodeError and the network never started (seen
    in CI).  A plain TCP connect says the same without reading anything."""

    def checkListening(self):
        try:
            socket.create_connection((self.ip, self.port), timeout=2).close()
        except OSError as e:
            warn('Unable to contact the remote controller at %s:%d: %s\n' % (self.ip, self.port, e))


def start_network(topo, controller_port=None, controller_ip='127.0.0.1',
                  wait_connected=0.0, services=True):
    """Build and start topo (an IoTTopo or a topology name).

    controller_port: a RemoteController at controller_ip:port and switches in fail-mode
    "secure"; None: no controller, switches in "standalone" (a plain learning switch).
    wait_connected: seconds to wait for every switch to report its controller
    connection (OVS updates that only every ~5 s); 0 = do not wait.
    services: start HTTP and DNS on the internet host.
    On any failure everything already created is removed before the exception goes on.
    """
    if isinstance(topo, str):
        from topologies import build_topo
        topo = build_topo(topo)
    t0 = time.monotonic()
    remove_leftovers(topo)
    net = Mininet(topo=topo, switch=OVSSwitch, host=IoTHost, intf=IoTIntf, controller=None,
                  build=False,
                  autoSetMacs=False, autoStaticArp=False, waitConnected=False)
    st = _state(net)
    st['tmpdir'] = tempfile.mkdtemp(prefix='iotguard-%s-' % (topo.NAME or 'topo'))
    try:
        if controller_port:
            net.addController('c0', controller=QuietRemoteController, ip=controller_ip,
                              port=int(controller_port))
        net.build()
        for sw in net.switches:
            sw.failMode = 'secure' if controller_port else 'standalone'
        net.start()
        if controller_port and wait_connected:
            if not net.waitConnected(timeout=wait_connected):
                raise RuntimeError('switches did not connect to %s:%s within %ss'
                                   % (controller_ip, controller_port, wait_connected))
        if services:
            start_services(net)
    except BaseException:
        stop_network(net)
        raise
    st['timings']['start'] = time.monotonic() - t0
    return net


def stop_network(net, keep_logs=False):
    """End every recorded process by PID, net.stop(), then delete this topology's
    leftover bridges and veths by name. Safe on None, on a half-started network and
    when called twice. Returns a list of error strings (also logged), never raises."""
    if net is None:
        return []
    st = _state(net)
    if st['stopped']:
        return []
    st['stopped'] = True
    t0 = time.monotonic()
    errors = []

    def attempt(what, fn, *args):
        try:
            fn(*args)
        except Exception as exc:        # keep going: the rest must still be cleaned
            errors.append('%s: %r' % (what, exc))

    for popen in reversed(st['procs']):
        attempt('stop pid %s' % popen.pid, stop_process, popen)
    attempt('net.stop', net.stop)
    for ctl in net.controllers:                 # RemoteController.stop() leaves its shell
        attempt('terminate %s' % ctl, ctl.terminate)
    if st['topo'] is not None:
        attempt('remove leftovers', remove_leftovers, st['topo'])
    if st['tmpdir'] and not keep_logs:
        attempt('remove tmpdir', shutil.rmtree, st['tmpdir'], True)
    st['timings']['stop'] = time.monotonic() - t0
    for msg in errors:
        error('stop_network: %s\n' % msg)
    return errors


def main(topo_factory, argv=None):
    """`python3 topologies/<name>.py [--controller-port N]`: start, open the CLI, stop."""
    import argparse
    from mininet.cli import CLI
    from mininet.log import setLogLevel
    ap = argparse.ArgumentParser()
    ap.add_argument('--controller-port', type=int)
    ap.add_argument('--controller-ip', default='127.0.0.1')
    ap.add_argument('--inventory', action='store_true', help='print the inventory and exit')
    args = ap.parse_args(argv)
    topo = topo_factory()
    if args.inventory:
        print(json.dumps(inventory(topo), indent=1))
        return 0
    setLogLevel('info')
    net = None
    try:
        net = start_network(topo, args.controller_port, args.controller_ip)
        info('*** services: http://%s/ and DNS on %s:53\n' % (topo.INET_IP, topo.INET_IP))
        CLI(net)
    finally:
        stop_network(net)
    return 0
