"""
L{BeamAddress}: what C{getPeer()} and C{getHost()} return on a Beam stream.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IAddress
from zope.interface import implementer

from beam.identity.keys import PeerID

__all__ = ["BeamAddress"]


@implementer(IAddress)
@attrs.frozen
class BeamAddress:
    """
    One end of a Beam stream: a node and a service of the node that serves
    it.

    On a connection made through a C{beam:} endpoint, C{getPeer()} is the
    other node with the service, C{getHost()} is this node with the same
    service.  On the serving side that is the service being served; on the
    connecting side it is the service asked for (C{""} when the client
    asked for the host's default service).

    @ivar peerID: the node, authenticated by the secure channel.
    @ivar service: the service name.
    """

    peerID: PeerID
    service: str

    def __str__(self) -> str:
        return f"{self.peerID}/{self.service}"
