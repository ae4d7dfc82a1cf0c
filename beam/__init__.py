"""
Beam: decentralized, peer-to-peer tunnels for local apps, speaking libp2p.

The public API, importable from here::

    from beam import Node, Identity, PeerID, Multiaddr, BeamError, IHost

and C{beam:} endpoint strings (L{beam.endpoints}) for any Twisted program.
Names are loaded on first use (PEP 562), so C{import beam} stays cheap and
C{beam connect} imports only what it uses.

The package is layered bottom-up (C{docs/architecture.md}): C{encoding},
C{identity}, C{storage}, C{p2p}, the services C{dht}, C{tunnel}, C{names},
then C{daemon}, and the entry points C{cli}, C{tap}, C{endpoints}.
"""

from __future__ import annotations

from beam._lazy import lazyExports

__version__ = "0.1.0"

_PUBLIC = {
    "Node": "beam.p2p.host.node",
    "Identity": "beam.identity.keys",
    "PeerID": "beam.identity.keys",
    "Multiaddr": "beam.identity.multiaddr",
    "BeamError": "beam.errors",
    "IHost": "beam.p2p.interfaces",
    "IPeerStore": "beam.p2p.interfaces",
    "ITransport": "beam.p2p.interfaces",
}

__all__ = ["__version__", "endpoints", *_PUBLIC]


__getattr__, __dir__ = lazyExports(__name__, {**_PUBLIC, "endpoints": "beam.endpoints"})
