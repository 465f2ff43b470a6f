"""The network as the controller sees it: forwarding, the flow registry, topology, the device inventory."""
