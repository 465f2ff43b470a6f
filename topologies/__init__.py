"""Mininet topologies for iotguard (need Debian's mininet; see topologies/net.py).

Importing this package does not import mininet; build_topo() does.
"""

TOPOLOGIES = {
    'smart_home': ('topologies.smart_home', 'SmartHomeTopo'),
    'enterprise': ('topologies.enterprise', 'EnterpriseTopo'),
}


def build_topo(name):
    """Return a new instance of the topology called name ('smart_home', 'enterprise')."""
    import importlib
    try:
        module, cls = TOPOLOGIES[name]
    except KeyError:
        raise ValueError('unknown topology %r; known: %s' % (name, ', '.join(TOPOLOGIES)))
    return getattr(importlib.import_module(module), cls)()
