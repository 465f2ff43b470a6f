"""Devices: what was learned from packet-ins, merged with the configured inventory."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.addresses import is_unicast_mac, normalise_mac
from controller.config import Config, Device


@dataclass(kw_only=True)
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

    MAX_DEVICES = 10000

    def __init__(self, config: Config, max_devices: int = MAX_DEVICES) -> None:
        self.config = config
        self.max_devices = max_devices
        self.devices: dict[str, DeviceRecord] = {}
        self.dropped = 0   # sightings refused because the table was full
        self.not_devices = 0   # frames from group (broadcast, multicast) or zero MACs: never devices

    def observe(self, mac: str, now: float, arp_ip: str | None = None) -> DeviceRecord | None:
        """Record a frame from `mac`; `arp_ip` is the sender address of an ARP frame.

        Only ARP binds an address to a MAC: an IPv4 source is not evidence,
        since a gateway forwards other hosts' packets under its own MAC.  A broadcast,
        multicast or all-zero source is nobody's: refused (None, counted in `not_devices`).
        """
        if not is_unicast_mac(mac):
            self.not_devices += 1
            return None
        rec = self.devices.get(mac)
        if rec is None:
            if len(self.devices) >= self.max_devices:
                self.dropped += 1
                return None
            rec = self.devices[mac] = DeviceRecord(mac=mac, name=self._default_name(mac), first_seen=now)
            self._apply_config(rec)
        rec.last_seen = now
        if arp_ip and arp_ip != "0.0.0.0" and arp_ip not in rec.ips \
                and len(rec.ips) < self.MAX_IPS_PER_DEVICE:
            rec.ips.append(arp_ip)
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

    # ------------------------------------------------------------ the device record
    def device(self, mac: str) -> Device | None:
        """What is known of `mac`: as seen on the network, else as configured; None if neither."""
        rec = self.devices.get(mac)
        if rec is not None:
            return Device(rec.name, mac, tuple(rec.ips), rec.tags)
        dev = self.config.device_by_mac(mac)
        if dev is not None:
            return Device(dev.name, mac, dev.ips, dev.tags)
        return None

    def find(self, ref: str) -> Device | None:
        """A device by name, MAC or IP: what was seen first, then the configured inventory."""
        mac = normalise_mac(ref)
        for rec in self.devices.values():
            if ref == rec.name or rec.mac == mac or ref in rec.ips:
                return self.device(rec.mac)
        for dev in self.config.devices:
            if ref == dev.name or (mac is not None and dev.mac == mac) or ref in dev.ips:
                return dev
        return None

    def who(self, mac: str) -> tuple[str, tuple[str, ...]]:
        """A device's name and tags, named after its MAC when nobody knows it."""
        rec = self.devices.get(mac)
        if rec is not None and type(rec.tags) is tuple:   # the detector asks for every device every window:
            return rec.name, rec.tags                      # what device() would say, without building it
        dev = self.device(mac)
        return (dev.name, dev.tags) if dev is not None else (self._default_name(mac), ())
