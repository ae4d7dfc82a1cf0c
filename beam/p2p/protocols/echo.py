"""
C{/beam/echo/1.0.0}: echo every byte back, for diagnostics and for the
interoperability tests.

The stream is registered as its own producer: when the echo cannot be sent
as fast as the peer sends (the peer does not read), the stream stops
reading, its receive window closes and the peer's writer is paused.  Memory
stays bounded by the windows.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.p2p.interfaces import IStreamTransport

ECHO_PROTOCOL = "/beam/echo/1.0.0"


@implementer(IHalfCloseableProtocol)
class EchoProtocol(Protocol):
    """
    Echo, and close our side once the peer has closed theirs.
    """

    transport: Optional[IStreamTransport]

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pass
