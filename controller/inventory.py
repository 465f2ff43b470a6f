"""Devices: what was learned from packet-ins, merged with the configured inventory."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from controller.config import Config


@dataclass
class DeviceRecord:
    mac: str
    name: str
    tags: tuple[str, ...] = ()
    ips: list[str] = field(default_factory=list)
    first_seen: float = 0.0
    last_seen: float = 0.0
    configured: bool = False


class Inventory:
    """Learned devices, bounded so a MAC-spoofing flood cannot exhaust memory."""

    MAX_IPS_PER_DEVICE = 8

    def __init__(self, config: Config, max_devices: int = 10000) -> None:
        self.config = config
        self.max_devices = max_devices
        self._nets = [ipaddress.ip_network(n) for n in config.internal_subnets]
        self.devices: dict[str, DeviceRecord] = {}
        self.dropped = 0   # sightings refused because the table was full

    def _internal(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in n for n in self._nets)

    def observe(self, mac: str, now: float, ip: str | None = None,
                ip_is_own: bool = False) -> DeviceRecord | None:
        """Record a frame from `mac`; `ip` is its sender address.

        ARP sender addresses are the device's own (`ip_is_own`); an IPv4 source
        is only taken inside the internal subnets, since a gateway forwards
        packets carrying other hosts' addresses.
        """
        rec = self.devices.get(mac)
        if rec is None:
            if len(self.devices) >= self.max_devices:
                self.dropped += 1
                return None
            rec = self.devices[mac] = DeviceRecord(mac, self._default_name(mac), first_seen=now)
            self._apply_config(rec)
        rec.last_seen = now
        if ip and ip != "0.0.0.0" and ip not in rec.ips and (ip_is_own or self._internal(ip)):
            if len(rec.ips) < self.MAX_IPS_PER_DEVICE:
                rec.ips.append(ip)
                if not rec.configured:
                    self._apply_config(rec)
        return rec

    @staticmethod
    def _default_name(mac: str) -> str:
        return "dev-" + mac.replace(":", "")[-6:]

    def _apply_config(self, rec: DeviceRecord) -> None:
        dev = self.config.device_by_mac(rec.mac)
        if dev is None:
            for ip in rec.ips:
                dev = self.config.device_by_ip(ip)
                if dev is not None and dev.mac in (None, rec.mac):
                    break
                dev = None
        if dev is not None:
            rec.name, rec.tags, rec.configured = dev.name, tuple(dev.tags), True

    def get(self, mac: str) -> DeviceRecord | None:
        return self.devices.get(mac)
