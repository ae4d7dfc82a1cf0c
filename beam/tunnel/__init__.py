"""
Tunnels: local TCP and UDP services shared with peers over C{/beam/tunnel/1.0.0}
streams.

The host runs a L{TunnelHost} with L{ServiceSpec}s (each with an
L{AccessPolicy}); the client runs a L{TunnelForward}, a local port that
leads to one of them.  The wire is in L{beam.tunnel.protocol}, the joining
of a TCP connection and a stream in L{beam.tunnel.splice}.
"""

from typing import TYPE_CHECKING

from beam._lazy import lazyExports

if TYPE_CHECKING:
    from beam.tunnel.access import PUBLIC, AccessPolicy
    from beam.tunnel.client import HostUnreachable, TunnelForward
    from beam.tunnel.host import ServiceExists, ServiceSpec, TunnelHost
    from beam.tunnel.protocol import (
        TUNNEL_PROTOCOL,
        AccessDenied,
        BadTunnelRequest,
        ServiceNotFound,
        ServiceUnavailable,
        TunnelRefused,
    )
    from beam.tunnel.splice import Splice, TunnelStats

#: Where each public name lives.  They are imported on first use (PEP 562),
#: so that importing one submodule (C{beam.tunnel.share}, which the daemon's
#: configuration needs) does not load them all: a node that only exposes
#: services never loads the forward's machinery (Automat, ~1 MiB).
_WHERE = {
    "PUBLIC": "access",
    "AccessPolicy": "access",
    "HostUnreachable": "client",
    "TunnelForward": "client",
    "ServiceExists": "host",
    "ServiceSpec": "host",
    "TunnelHost": "host",
    "TUNNEL_PROTOCOL": "protocol",
    "AccessDenied": "protocol",
    "BadTunnelRequest": "protocol",
    "ServiceNotFound": "protocol",
    "ServiceUnavailable": "protocol",
    "TunnelRefused": "protocol",
    "Splice": "splice",
    "TunnelStats": "splice",
}


__getattr__, __dir__ = lazyExports(__name__, {name: "." + module for name, module in _WHERE.items()})


__all__ = [
    "PUBLIC",
    "TUNNEL_PROTOCOL",
    "AccessDenied",
    "AccessPolicy",
    "BadTunnelRequest",
    "HostUnreachable",
    "ServiceExists",
    "ServiceNotFound",
    "ServiceSpec",
    "ServiceUnavailable",
    "Splice",
    "TunnelForward",
    "TunnelHost",
    "TunnelRefused",
    "TunnelStats",
]
