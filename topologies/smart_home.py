"""Smart home: two OVS switches, ten IoT/user devices, a gateway and an "internet" host.

    mn --custom topologies/smart_home.py --topo smart_home --controller remote,port=6653
    python3 topologies/smart_home.py [--controller-port 6653]    # with gateway, HTTP, DNS

(Plain `mn` builds the topology and routes, but only start_network() starts the
internet host's HTTP and DNS services.)

    hs1 (dpid 0000000000000101, "router cupboard")      hs2 (dpid 0000000000000102, "house")
      1 gw       10.0.0.1 + 203.0.113.1                   1 uplink to hs1 port 7
      2 inet     203.0.113.10 (HTTP, DNS)                 2 camera     10.0.0.11
      3 hub      10.0.0.2                                 3 doorbell   10.0.0.12
      4 laptop   10.0.0.3                                 4 thermostat 10.0.0.13
      5 tv       10.0.0.4                                 5 bulb1      10.0.0.21
      6 speaker  10.0.0.5                                 6 bulb2      10.0.0.22
      7 uplink to hs2 port 1                              7 bulb3      10.0.0.23
      8 honeypot 10.0.0.66 (TCP 22, 23, 2323)
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


class SmartHomeTopo(IoTTopo):
    NAME = 'smart_home'

    def build(self):
        hs1 = self.add_switch('hs1', dpid='0000000000000101')
        hs2 = self.add_switch('hs2', dpid='0000000000000102')
        self.add_gateway(hs1)
        self.add_internet(hs1)
        self.add_device('hub', '10.0.0.2', '00:00:00:00:00:02', ('hub', 'iot'), hs1)
        self.add_device('laptop', '10.0.0.3', '00:00:00:00:00:03', ('laptop', 'user'), hs1)
        self.add_device('tv', '10.0.0.4', '00:00:00:00:00:04', ('tv', 'iot'), hs1)
        self.add_device('speaker', '10.0.0.5', '00:00:00:00:00:05', ('speaker', 'iot'), hs1)
        self.addLink(hs1, hs2)
        self.add_honeypot(hs1, '10.0.0.66')
        self.add_device('camera', '10.0.0.11', '00:00:00:00:00:11', ('camera', 'iot'), hs2)
        self.add_device('doorbell', '10.0.0.12', '00:00:00:00:00:12', ('doorbell', 'iot'), hs2)
        self.add_device('thermostat', '10.0.0.13', '00:00:00:00:00:13',
                        ('thermostat', 'iot'), hs2)
        for i in (1, 2, 3):
            self.add_device('bulb%d' % i, '10.0.0.2%d' % i, '00:00:00:00:00:2%d' % i,
                            ('bulb', 'iot'), hs2)

    def dns_zone(self):
        zone = super().dns_zone()
        zone['nvr.example'] = self.INET_IP           # the camera's cloud recorder
        return zone


topos = {'smart_home': (lambda: SmartHomeTopo())}

if globals().get('__name__') == '__main__':
    from topologies.net import main as _main
    _sys.exit(_main(SmartHomeTopo))
