"""
The in-memory transport: C{/memory/N} addresses inside one process.

Whole nodes (security handshake, yamux, identify, the DHT, tunnels) talk
to each other through it with no sockets, so node logic runs under a
L{twisted.internet.task.Clock} in tests and a grid of nodes runs in one
process.  The multiaddr is libp2p's C{/memory/<u64>} (code 777, as in
rust-libp2p's memory transport); port 0 asks for a free number.

Bytes are delivered in a later reactor turn (C{callLater(0)}), never from
inside C{write}: a real socket never calls the peer back synchronously,
and re-entrant delivery would test code paths no user meets.  Flow
control is real: a writer whose unread bytes at the peer pass
C{highWater} has its producer paused until the reader (which may itself
be paused with C{pauseProducing}) drains below C{lowWater}.  With a
L{Clock}, call L{flush} to run every pending delivery.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IAddress
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import DialError
from beam.identity.multiaddr import Multiaddr
from beam.p2p.interfaces import IAbortableTransport, IListener, ITransport


@implementer(IAddress)
@attrs.frozen
class MemoryAddress:
    """
    The address of one end of an in-memory connection.
    """

    port: int
    type: str = "MEMORY"


class MemoryNetwork:
    """
    The listeners of one "machine": a table from port numbers to
    factories.  Nodes that should reach each other share one network.
    """

    def __init__(self) -> None:
        self.listeners: dict[int, Any] = {}
        self._next = 1 << 16

    def allocate(self) -> int:
        while self._next in self.listeners:
            self._next += 1
        port = self._next
        self._next += 1
        return port


#: The process-wide network used when a transport is not given one.
DEFAULT_NETWORK = MemoryNetwork()


@implementer(IAbortableTransport)
class MemoryPipe:
    """
    One end of an in-memory byte stream, given to a protocol as its
    transport.
    """

    highWater = 256 * 1024
    lowWater = 64 * 1024

    def __init__(self, clock: Any, host: MemoryAddress, peer: MemoryAddress) -> None:
        self.clock = clock
        self.host = host
        self.peer = peer
        self.protocol: Any = None
        self.other: Optional[MemoryPipe] = None
        self.inbound = bytearray()
        self.readPaused = False
        self.disconnecting = False
        self.disconnected = False
        self.producer: Any = None
        self.producerPaused = False
        self._pending: Any = None
        self._closeReason: Optional[Failure] = None
        self._aborting = False

    # -- ITransport ------------------------------------------------------

    def write(self, data: bytes) -> None:
        other = self.other
        if self.disconnecting or self.disconnected or other is None or other.disconnected or not data:
            return
        other.inbound += data
        other._schedule()
        if len(other.inbound) > self.highWater and self.producer is not None and not self.producerPaused:
            self.producerPaused = True
            self.producer.pauseProducing()

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        """
        Close once the peer has read everything written.
        """
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        if self.other is not None:
            self.other._closeReason = Failure(ConnectionDone())
            self.other._schedule()
        else:
            self.clock.callLater(0, self._lost, Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        """
        End the connection both ways in the next turn, dropping unread
        bytes: as Twisted's TCP transport does (C{callLater(0,
        connectionLost)}), never from inside the call, which code that is
        correct on TCP does not expect (Twisted's TLS aborts from inside
        its own C{dataReceived}).
        """
        if self.disconnected or self._aborting:
            return
        self._aborting = True
        self.disconnecting = True
        self.inbound.clear()
        self.clock.callLater(0, self._abortNow)

    def _abortNow(self) -> None:
        other = self.other
        self._lost(Failure(ConnectionLost("aborted")))
        if other is not None and not other.disconnected:
            other.inbound.clear()
            other._lost(Failure(ConnectionLost("the peer aborted the connection")))

    def getPeer(self) -> MemoryAddress:
        return self.peer

    def getHost(self) -> MemoryAddress:
        return self.host

    # -- IConsumer (our writers) -----------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.producerPaused = False

    def unregisterProducer(self) -> None:
        self.producer = None

    # -- IPushProducer (our reading side) --------------------------------

    def pauseProducing(self) -> None:
        self.readPaused = True

    def resumeProducing(self) -> None:
        self.readPaused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- delivery --------------------------------------------------------

    def _schedule(self) -> None:
        if self._pending is None and not self.disconnected:
            self._pending = self.clock.callLater(0, self._deliver)

    def _deliver(self) -> None:
        self._pending = None
        if self.disconnected or self._aborting:
            return
        if self.inbound and not self.readPaused:
            data = bytes(self.inbound)
            self.inbound.clear()
            writer = self.other
            if writer is not None and writer.producerPaused and writer.producer is not None:
                writer.producerPaused = False
                writer.producer.resumeProducing()
            self.protocol.dataReceived(data)
        if not self.inbound and self._closeReason is not None and not self.disconnected:
            reason = self._closeReason
            other = self.other
            self._lost(reason)
            if other is not None and not other.disconnected:
                other._lost(reason)

    def _lost(self, reason: Failure) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                pass
        if self.protocol is not None:
            self.protocol.connectionLost(reason)


@implementer(IListener)
class MemoryListener:
    def __init__(self, network: MemoryNetwork, port: int) -> None:
        self.network = network
        self.port = port
        self.addr = Multiaddr.fromString(f"/memory/{port}")

    def stopListening(self) -> Deferred[None]:
        self.network.listeners.pop(self.port, None)
        return succeed(None)


@implementer(ITransport)
class MemoryTransport:
    """
    Dial and listen on C{/memory/N} within one L{MemoryNetwork}.
    """

    name = "memory"
    limited = False

    def __init__(self, reactor: Any, network: MemoryNetwork = DEFAULT_NETWORK) -> None:
        self.reactor = reactor
        self.network = network

    @staticmethod
    def _port(addr: Multiaddr) -> Optional[int]:
        parts = addr.withoutPeerID().components()
        if len(parts) != 1 or parts[0][0] != "memory":
            return None
        port = parts[0][1]
        assert port is not None  # /memory always has a value (the multiaddr parser requires one)
        return int(port)

    def canDial(self, addr: Multiaddr) -> bool:
        return self._port(addr) is not None

    canListen = canDial

    def listen(self, addr: Multiaddr, factory: Any) -> Deferred[IListener]:
        port = self._port(addr)
        if port is None:
            return fail(DialError(f"cannot listen on {addr}: not a /memory address"))
        if port == 0:
            port = self.network.allocate()
        if port in self.network.listeners:
            return fail(DialError(f"cannot listen on {addr}: the port is already in use"))
        self.network.listeners[port] = factory
        return succeed(MemoryListener(self.network, port))

    def dial(self, addr: Multiaddr, factory: Any, timeout: float) -> Deferred[Any]:
        port = self._port(addr)
        serverFactory = self.network.listeners.get(port) if port else None
        if not port or serverFactory is None:
            return fail(ConnectionRefusedError(f"nothing listens on {addr}"))
        local = MemoryAddress(self.network.allocate())
        remote = MemoryAddress(port)
        client = MemoryPipe(self.reactor, local, remote)
        server = MemoryPipe(self.reactor, remote, local)
        client.other, server.other = server, client
        serverProto = serverFactory.buildProtocol(local)
        clientProto = factory.buildProtocol(remote)
        if serverProto is None or clientProto is None:
            return fail(ConnectionRefusedError(f"{addr} refused the connection"))
        server.protocol, client.protocol = serverProto, clientProto
        serverProto.makeConnection(server)
        clientProto.makeConnection(client)
        return succeed(clientProto)

    def multiaddrOf(self, address: Any) -> Optional[Multiaddr]:
        if isinstance(address, MemoryAddress):
            return Multiaddr.fromString(f"/memory/{address.port}")
        return None


def flush(clock: Any, limit: int = 100_000) -> None:
    """
    Run every delivery (and anything else) due now on a L{Clock}, until
    nothing is left to run at the current time.
    """
    for _ in range(limit):
        now = clock.seconds()
        if not any(c.getTime() <= now for c in clock.getDelayedCalls()):
            return
        clock.advance(0)
    raise RuntimeError("memory transport did not settle")
