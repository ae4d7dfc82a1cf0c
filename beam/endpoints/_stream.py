"""
Connecting a user's protocol to a tunnel stream.

L{StreamTransport} sits between a yamux stream (or its compression
wrapper) and the protocol a user's factory built: to the stream it is the
protocol, to the user's protocol it is the transport.  It passes
everything through, reports L{BeamAddress}es from C{getPeer()} and
C{getHost()}, and keeps the service's counters.  Half-close is passed on
both ways: a half-closeable protocol gets C{readConnectionLost} when the
peer finishes sending and may call C{loseWriteConnection}; any other
protocol's stream is closed when the peer finishes, as a TCP transport
does.

L{TunnelOpener} is the client's protocol on a new tunnel stream until the
host answered: a L{beam.tunnel.client.TunnelRequester} (the request and
response exchange a forward uses too) that on an OK
connects the user's protocol (through a L{StreamTransport}) before any
later byte is delivered, so nothing the host sends first is lost.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.endpoints._address import BeamAddress
from beam.errors import BeamError
from beam.tunnel.client import TunnelRequester
from beam.tunnel.protocol import TunnelRefused, TunnelResponse

__all__ = ["StreamTransport", "TunnelOpener"]


@implementer(IProtocol, IHalfCloseableProtocol, ITransport, IConsumer, IPushProducer)
class StreamTransport:
    """
    The transport of a user's protocol on a Beam stream.

    @ivar protocol: the user's protocol.
    @ivar stream: the transport below (the stream), once connected.
    @ivar stats: the service's L{beam.tunnel.TunnelStats} (on the serving
        side), or L{None}.
    """

    connected = False

    def __init__(self, protocol: IProtocol, host: BeamAddress, peer: BeamAddress, stats: Any = None) -> None:
        self.protocol = protocol
        self.host = host
        self.peer = peer
        self.stats = stats
        self.stream: Any = None

    def __repr__(self) -> str:
        return f"<StreamTransport {self.host} <-> {self.peer}>"

    # -- the protocol side: called by the stream ---------------------------

    def makeConnection(self, transport: Any) -> None:
        self.stream = transport
        self.connected = True
        if self.stats is not None:
            self.stats.active += 1
        self.protocol.makeConnection(self)

    def connectionMade(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        if self.stats is not None:
            self.stats.bytesIn += len(data)
        self.protocol.dataReceived(data)

    def readConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.protocol):
            self.protocol.readConnectionLost()
        else:
            self.stream.loseConnection()

    def writeConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.protocol):
            self.protocol.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.connected:
            return
        self.connected = False
        if self.stats is not None:
            self.stats.active -= 1
        self.protocol.connectionLost(reason)

    # -- the transport side: called by the user's protocol -----------------

    @property
    def disconnecting(self) -> bool:
        return bool(self.stream is None or self.stream.disconnecting)

    def write(self, data: bytes) -> None:
        if self.stats is not None:
            self.stats.bytesOut += len(data)
        self.stream.write(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Finish sending (what is queued is sent first), then close; what the
        peer still sends is delivered until it finishes too.
        """
        self.stream.loseConnection()

    def loseWriteConnection(self) -> None:
        """
        Half-close: finish sending, keep receiving.
        """
        self.stream.loseWriteConnection()

    def abortConnection(self) -> None:
        """
        Reset the stream at once, dropping what is queued.
        """
        self.stream.abortConnection()

    def getPeer(self) -> BeamAddress:
        """
        The other node and the service.
        """
        return self.peer

    def getHost(self) -> BeamAddress:
        """
        This node and the service.
        """
        return self.host

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.stream.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.stream.unregisterProducer()

    def pauseProducing(self) -> None:
        self.stream.pauseProducing()

    def resumeProducing(self) -> None:
        self.stream.resumeProducing()

    def stopProducing(self) -> None:
        self.stream.stopProducing()


class TunnelOpener(TunnelRequester):
    """
    The client's protocol on a tunnel stream until the host answers.

    @ivar result: fires with what C{install} returned once the host said
        OK and the user's protocol is connected, or fails with the host's
        refusal (a L{beam.tunnel.TunnelRefused}), L{beam.tunnel.HostUnreachable} when
        the stream ends first, or whatever C{install} raised.  Cancelling
        it resets the stream.
    """

    def __init__(self, request: bytes, install: Callable[[Any, TunnelResponse, bytes], Any], label: str) -> None:
        """
        @param request: the encoded request.
        @param install: called as C{install(stream, response, leftover)} on
            an OK: connects the user's protocol to C{stream} (with bytes
            that came after the response) and returns it.
        @param label: who we are talking to, for messages.
        """
        super().__init__(request, label)
        self.install = install
        self.result: Deferred[Any] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[Any]) -> None:
        self.finished = True
        if self.transport is not None:
            self.transport.abortConnection()

    def answered(self, response: TunnelResponse) -> None:
        stream = self.transport
        try:
            protocol = self.install(stream, response, self.reader.leftover)
        except Exception:
            failure = Failure()
            stream.abortConnection()
            self.result.errback(failure)
            return
        self.result.callback(protocol)

    def refused(self, error: TunnelRefused) -> None:
        self.result.errback(error)

    def failed(self, error: BeamError) -> None:
        self.result.errback(error)


def connectUser(
    stream: Any,
    protocol: IProtocol,
    host: BeamAddress,
    peer: BeamAddress,
    compression: str,
    leftover: bytes = b"",
    stats: Optional[Any] = None,
) -> StreamTransport:
    """
    Connect C{protocol} to C{stream} through a L{StreamTransport} (and
    the chosen compression), then give it C{leftover}.
    """
    from beam.tunnel.host import wrapStream

    transport = StreamTransport(protocol, host, peer, stats)
    wrapped = wrapStream(transport, compression)
    stream.setProtocol(wrapped)
    if leftover:
        wrapped.dataReceived(leftover)
    return transport
