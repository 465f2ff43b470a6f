"""Enterprise: a core/distribution/access tree of five OVS switches with IoT, IT and
server segments, a gateway and an "internet" host. One L2 LAN, 10.0.0.0/24.

    mn --custom topologies/enterprise.py --topo enterprise --controller remote,port=6653
    python3 topologies/enterprise.py [--controller-port 6653]    # with gateway, HTTP, DNS

                    es1 core (0000000000000201)
        1 gw 10.0.0.1 + 203.0.113.1   2 inet 203.0.113.10   3 -> es2   4 -> es5
                 |                                                  |
    es2 distribution (0000000000000202)              es5 server access (0000000000000205)
       1 -> es1   2 -> es3   3 -> es4                  1 -> es1  2 filesrv .51  3 nvr .52
                                                       4 honeypot .66 (TCP 22, 23, 2323)
         |                      |
    es3 IoT access (..0203)    es4 IT access (..0204)
      1 -> es2                   1 -> es2
      2 cam1 .11  3 cam2 .12     2 ws1 .41
      4 sensor1 .21             3 ws2 .42
      5 sensor2 .22             4 ws3 .43
      6 printer .31
      7 badge .32
MACs read like the last octet: 10.0.0.11 -> 00:00:00:00:00:11; inet is 00:00:00:00:ff:10.
"""

import inspect as _inspect
import os as _os
import sys as _sys

if not globals().get('__package__'):
    # Run as a script or exec'd by `mn --custom` (no __file__, package not on sys.path).
    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(
        _inspect.currentframe().f_code.co_filename)))
    if _root not in _sys.path:
        _sys.path.insert(0, _root)

from topologies.net import IoTTopo  # noqa: E402


class EnterpriseTopo(IoTTopo):
    NAME = 'enterprise'

    def build(self):
        es1 = self.add_switch('es1', dpid='0000000000000201')      # core
        es2 = self.add_switch('es2', dpid='0000000000000202')      # distribution
        es3 = self.add_switch('es3', dpid='0000000000000203')      # IoT access
        es4 = self.add_switch('es4', dpid='0000000000000204')      # IT access
        es5 = self.add_switch('es5', dpid='0000000000000205')      # server access
        self.add_gateway(es1)
        self.add_internet(es1)
        self.addLink(es1, es2)
        self.addLink(es1, es5)
        self.addLink(es2, es3)
        self.addLink(es2, es4)
        dev = self.add_device
        dev('cam1', '10.0.0.11', '00:00:00:00:00:11', ('camera', 'iot'), es3)
        dev('cam2', '10.0.0.12', '00:00:00:00:00:12', ('camera', 'iot'), es3)
        dev('sensor1', '10.0.0.21', '00:00:00:00:00:21', ('sensor', 'iot'), es3)
        dev('sensor2', '10.0.0.22', '00:00:00:00:00:22', ('sensor', 'iot'), es3)
        dev('printer', '10.0.0.31', '00:00:00:00:00:31', ('printer', 'iot'), es3)
        dev('badge', '10.0.0.32', '00:00:00:00:00:32', ('badge_reader', 'iot'), es3)
        dev('ws1', '10.0.0.41', '00:00:00:00:00:41', ('workstation', 'user'), es4)
        dev('ws2', '10.0.0.42', '00:00:00:00:00:42', ('workstation', 'user'), es4)
        dev('ws3', '10.0.0.43', '00:00:00:00:00:43', ('workstation', 'user'), es4)
        dev('filesrv', '10.0.0.51', '00:00:00:00:00:51', ('fileserver', 'server'), es5)
        dev('nvr', '10.0.0.52', '00:00:00:00:00:52', ('nvr', 'server'), es5)
        self.add_honeypot(es5, '10.0.0.66')

    def dns_zone(self):
        zone = super().dns_zone()
        zone['nvr.example'] = '10.0.0.52'
        zone['files.example'] = '10.0.0.51'
        return zone


topos = {'enterprise': (lambda: EnterpriseTopo())}

if globals().get('__name__') == '__main__':
    from topologies.net import main as _main
    _sys.exit(_main(EnterpriseTopo))
