"""iotguard: an OpenFlow 1.3 controller app that guards IoT networks."""

__version__ = "0.1.0"
