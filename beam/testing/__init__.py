"""
Fakes for deterministic tests of Beam's protocols, shipped for our users'
tests too (as txtorcon ships C{testutil}).

L{MemoryTransport} is an in-memory L{ITransport} that records what is written;
L{Pump} moves bytes between two of them, so two protocol stacks talk to each
other with no sockets and no reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.p2p.interfaces import IAbortableTransport


@implementer(IAbortableTransport)
class MemoryTransport:
    """
    An in-memory transport.

    Written bytes collect in L{buffer} until a L{Pump} delivers them.  It
    honours C{registerProducer} so that flow-control code can be tested: a
    test sets L{paused} via L{pauseProducing}, and the producer registered on
    this transport is paused by L{Pump} when the unread buffer exceeds
    L{highWater}.
    """

    disconnecting = False

    def __init__(
        self,
        host: Any = None,
        peer: Any = None,
        highWater: int | None = None,
    ) -> None:
        self.buffer = bytearray()
        self.protocol: IProtocol | None = None
        self.host = host or IPv4Address("TCP", "127.0.0.1", 10001)
        self.peer = peer or IPv4Address("TCP", "127.0.0.1", 10002)
        self.producer: Any = None
        self.streaming = True
        self.producerPaused = False
        self.highWater = highWater
        self.disconnected = False
        self.aborted = False
        self.paused = False
        self.written = 0

    # ITransport
    def write(self, data: bytes) -> None:
        if self.disconnecting or self.disconnected:
            return
        self.buffer += data
        self.written += len(data)
        self._checkWater()

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.aborted = True

    def getPeer(self) -> Any:
        return self.peer

    def getHost(self) -> Any:
        return self.host

    # IConsumer
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.streaming = streaming

    def unregisterProducer(self) -> None:
        self.producer = None

    # IPushProducer (the reading side of this transport)
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.loseConnection()

    def take(self) -> bytes:
        """
        Remove and return everything written so far.
        """
        data = bytes(self.buffer)
        del self.buffer[:]
        self._checkWater()
        return data

    def _checkWater(self) -> None:
        if self.highWater is None or self.producer is None:
            return
        if len(self.buffer) > self.highWater and not self.producerPaused:
            self.producerPaused = True
            self.producer.pauseProducing()
        elif len(self.buffer) <= self.highWater and self.producerPaused:
            self.producerPaused = False
            self.producer.resumeProducing()


class Pump:
    """
    Connect two protocols through two L{MemoryTransport}s.

    Call L{flush} to deliver written bytes both ways until both are quiet.
    A side whose transport is L{MemoryTransport.paused} receives nothing,
    simulating a stalled reader.
    """

    def __init__(
        self,
        client: IProtocol,
        server: IProtocol,
        clientTransport: MemoryTransport | None = None,
        serverTransport: MemoryTransport | None = None,
    ) -> None:
        self.client = client
        self.server = server
        self.clientTransport = clientTransport or MemoryTransport(
            host=IPv4Address("TCP", "127.0.0.1", 20001),
            peer=IPv4Address("TCP", "127.0.0.1", 20002),
        )
        self.serverTransport = serverTransport or MemoryTransport(
            host=IPv4Address("TCP", "127.0.0.1", 20002),
            peer=IPv4Address("TCP", "127.0.0.1", 20001),
        )
        self.clientTransport.protocol = client
        self.serverTransport.protocol = server
        self._closed = False

    def connect(self) -> "Pump":
        """
        Call C{makeConnection} on both sides (server first) and flush.
        """
        self.server.makeConnection(self.serverTransport)
        self.client.makeConnection(self.clientTransport)
        self.flush()
        return self

    def flush(self, maxRounds: int = 10000, chunk: int | None = None) -> int:
        """
        Deliver bytes until neither side writes more (or C{maxRounds}).

        @param chunk: deliver at most this many bytes per call to
            C{dataReceived}, to exercise framers with split input.
        @return: the number of bytes delivered.
        """
        total = 0
        for _ in range(maxRounds):
            moved = self._move(self.clientTransport, self.server, self.serverTransport, chunk)
            moved += self._move(self.serverTransport, self.client, self.clientTransport, chunk)
            total += moved
            if self._checkClose():
                break
            if not moved:
                break
        return total

    def _move(
        self,
        source: MemoryTransport,
        dest: IProtocol,
        destTransport: MemoryTransport,
        chunk: int | None,
    ) -> int:
        if destTransport.paused or not source.buffer:
            return 0
        data = source.take()
        if chunk:
            for i in range(0, len(data), chunk):
                dest.dataReceived(data[i:i + chunk])
        else:
            dest.dataReceived(data)
        return len(data)

    def _checkClose(self) -> bool:
        if self._closed:
            return True
        for t in (self.clientTransport, self.serverTransport):
            if t.disconnecting and not t.buffer or t.aborted:
                self._closed = True
                reason = Failure(ConnectionLost() if t.aborted else ConnectionDone())
                for side, tr in ((self.client, self.clientTransport), (self.server, self.serverTransport)):
                    tr.disconnected = True
                    side.connectionLost(reason)
                return True
        return False
