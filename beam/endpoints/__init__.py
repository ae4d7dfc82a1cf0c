"""
Beam as a Twisted library: C{beam:} endpoints.

Any Twisted program can expose a factory as a Beam service, reachable
with C{beam connect PEER_OR_NAME/SERVICE} or a client endpoint, and
connect to Beam services, through Twisted's endpoint strings::

    from twisted.internet.endpoints import clientFromString, serverFromString

    port = await serverFromString(reactor, "beam:service=web").listen(site)
    print(port.shareAddress)          # beam://12D3KooW...@192.0.2.7:4001/web

    endpoint = clientFromString(reactor, "beam:alice/web")
    protocol = await endpoint.connect(factory)

or with the classes: L{BeamServerEndpoint}, L{BeamClientEndpoint}.  The
transport of every protocol on such a connection reports
L{BeamAddress}C{(peerID, service)} from C{getPeer()} and C{getHost()}.

The endpoints of a process share one L{BeamNode} per home directory,
launched by the first endpoint that needs it and stopped with the
reactor; L{launchNode} returns it.  The default home, L{defaultHome}, is
not the command line's, so a C{beam daemon} runs beside; a home already
used by another process fails with L{HomeInUse}.

See C{docs/endpoints.md} for the syntax, the options and an example.
"""

from beam.endpoints._address import BeamAddress
from beam.endpoints._endpoints import BeamClientEndpoint, BeamListeningPort, BeamServerEndpoint
from beam.endpoints._errors import (
    AccessDenied,
    HomeInUse,
    HostUnreachable,
    NodeOptionsConflict,
    OwnService,
    ServiceExists,
    ServiceNotFound,
    ServiceUnavailable,
    TunnelRefused,
)
from beam.endpoints._node import BeamNode, launchNode
from beam.endpoints._options import NodeOptions, defaultHome
from beam.endpoints._parser import BeamClientParser, BeamServerParser

__all__ = [
    "AccessDenied",
    "BeamAddress",
    "BeamClientEndpoint",
    "BeamClientParser",
    "BeamListeningPort",
    "BeamNode",
    "BeamServerEndpoint",
    "BeamServerParser",
    "HomeInUse",
    "HostUnreachable",
    "NodeOptions",
    "NodeOptionsConflict",
    "OwnService",
    "ServiceExists",
    "ServiceNotFound",
    "ServiceUnavailable",
    "TunnelRefused",
    "defaultHome",
    "launchNode",
]
