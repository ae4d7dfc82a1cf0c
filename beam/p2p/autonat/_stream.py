"""
The part every AutoNAT stream protocol shares: read bounded,
length-prefixed messages, and reset the stream (with one log line that
names the reason) on the first malformed one.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from beam.encoding.framing import LengthPrefixedReader, encodeLengthPrefixed
from beam.errors import BeamError
from beam.p2p.autonat.messages import MAX_MESSAGE


@implementer(IHalfCloseableProtocol)
class MessageStream(Protocol):
    """
    Subclasses implement L{messageReceived}, and may override
    L{readConnectionLost} (the peer closed its side) and
    L{connectionLost}.

    @ivar failed: why the stream was reset by us, if it was.
    """

    log = Logger()
    what = "AutoNAT stream"

    def __init__(self) -> None:
        self._reader = LengthPrefixedReader(MAX_MESSAGE)
        self.failed: Optional[BeamError] = None
        self.finished = False

    def dataReceived(self, data: bytes) -> None:
        if self.failed is not None or self.finished:
            return
        try:
            for raw in self._reader.feed(data):
                if self.failed is not None or self.finished:
                    return
                self.messageReceived(raw)
        except BeamError as e:
            self.fail(e)

    def messageReceived(self, raw: bytes) -> None:
        raise NotImplementedError

    def send(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(encodeLengthPrefixed(payload))

    def finish(self) -> None:
        """
        Done: close our side cleanly.
        """
        self.finished = True
        if self.transport is not None:
            self.transport.loseConnection()

    def fail(self, error: BeamError) -> None:
        """
        Reset the stream because of C{error} (logged once, at debug level:
        a misbehaving peer must not be able to fill our log).
        """
        if self.failed is not None:
            return
        self.failed = error
        self.log.debug("{what} with {peer} reset: {error}", what=self.what, peer=self.remotePeer(), error=error)
        transport: Any = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", transport.loseConnection)
            abort()

    def remotePeer(self) -> Any:
        return getattr(self.connection(), "remotePeer", None)

    def connection(self) -> Any:
        return getattr(self.transport, "connection", None)

    def readConnectionLost(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass
