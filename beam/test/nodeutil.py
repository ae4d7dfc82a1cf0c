"""
Helpers for tests that run real L{beam.p2p.host.node.Node}s on loopback
TCP, with the global reactor.

Tests of node I{logic} do not need sockets: they run on the in-memory
transport under a L{twisted.internet.task.Clock} with
L{beam.test.memnodes.MemoryGrid}.  Use these helpers only for what is
about TCP itself (socket options, IPv6, raw bytes on a TCP listener) and
for end-to-end tests of programs that need a real network.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.p2p.protocols.echo import ECHO_PROTOCOL, EchoProtocol
from beam.identity.keys import Identity
from beam.p2p.host.node import Node


@inlineCallbacks
def startNode(
    testCase: Any,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    identity: Identity | None = None,
    **kw: Any,
) -> Any:
    """
    Start a node with an echo handler; stop it when the test ends.
    """
    node = Node(reactor, identity or Identity.generate(), list(listen), **kw)
    node.setStreamHandler(ECHO_PROTOCOL, EchoProtocol)
    yield node.startService()
    testCase.addCleanup(node.stopService)
    return node


@implementer(IHalfCloseableProtocol)
class EchoClient(Protocol):
    """
    Send C{payload} (in chunks), half-close, collect the echo; L{done}
    fires with the received bytes when the stream closes.
    """

    def __init__(self, payload: bytes, chunk: int = 65536) -> None:
        self.payload = payload
        self.chunk = chunk
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        view = memoryview(self.payload)
        for i in range(0, len(view), self.chunk):
            self.transport.write(bytes(view[i:i + self.chunk]))
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.callback(bytes(self.received))


def randomPayload(size: int) -> tuple[bytes, str]:
    data = os.urandom(size)
    return data, hashlib.sha256(data).hexdigest()


def addrOf(node: Node, index: int = 0, withPeer: bool = True) -> Any:
    addr = node.listenAddrs[index]
    return addr.withPeerID(node.peerID) if withPeer else addr

