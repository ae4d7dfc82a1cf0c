"""
Tunnels: local TCP and UDP services shared with peers over C{/beam/tunnel/1.0.0}
streams.

The host runs a L{TunnelHost} with L{ServiceSpec}s (each with an
L{AccessPolicy}); the client runs a L{TunnelForward}, a local port that
leads to one of them.  The wire is in L{beam.tunnel.protocol}, the joining
of a TCP connection and a stream in L{beam.tunnel.splice}.
"""

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
