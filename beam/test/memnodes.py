"""
A grid of whole L{beam.p2p.host.node.Node}s in one process, on the
in-memory transport and under a L{Clock}: the full stack (multistream,
Noise or TLS, yamux, identify) with no sockets, no sleeps and no real time.

Nothing happens until the test lets it: L{MemoryGrid.settle} runs every
delivery and timer due I{now}; L{MemoryGrid.advance} moves time forward,
firing each timer at its own instant (so a 0.3 s timeout fires at 0.3 s,
and what it schedules runs before a timer due at 0.4 s).  A test reads a
Deferred's result with L{MemoryGrid.result} or L{MemoryGrid.failure}, which
settle first.

Usage, in a C{SynchronousTestCase}::

    grid = MemoryGrid(self)
    a, b = grid.node(), grid.node(idleTimeout=0.2)
    conn = grid.result(a.connect(grid.addr(b)))
    grid.advance(1.0)
    self.assertTrue(conn.closed)

Every node is stopped when the test ends; the cleanup then checks that the
stopped nodes left no timer behind on the clock, and that nothing was
scheduled on, or registered with, the global reactor (the whole stack must
use the node's injected reactor).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.node import Node
from beam.p2p.security.interfaces import ISecureTransport
from beam.p2p.security.noise import NoiseTransport
from beam.p2p.security.tls import TLSTransport
from beam.p2p.transport.memory import MemoryAddress, MemoryNetwork, MemoryPipe, MemoryTransport, flush
from beam.p2p.upgrade import YAMUX_PROTOCOL

#: Where the grid's clock starts: a fixed, realistic wall-clock time (TLS
#: certificates are dated by the clock), the same in every run.
EPOCH = 1_700_000_000.0


def securities(kind: str, identity: Identity, clock: Any) -> list[ISecureTransport]:
    """
    Only one security protocol, C{"noise"} or C{"tls"}, for C{identity}.
    """
    if kind == "noise":
        return [NoiseTransport(identity, muxers=[YAMUX_PROTOCOL])]
    if kind == "tls":
        return [TLSTransport(identity, muxers=[YAMUX_PROTOCOL], clock=clock)]
    raise ValueError(f"unknown security {kind!r}")


class SilentListener:
    """
    A C{/memory} address that accepts connections and never says a word.

    @ivar protocols: one L{Protocol} per connection accepted, to check
        whether it was dropped (C{protocol.transport.disconnected}).
    """

    def __init__(self, network: MemoryNetwork) -> None:
        self.protocols: list[Protocol] = []
        self.port = network.allocate()
        factory = Factory.forProtocol(Protocol)
        factory.noisy = False
        real = factory.buildProtocol

        def build(addr: Any) -> Protocol:
            proto = real(addr)
            self.protocols.append(proto)
            return proto

        factory.buildProtocol = build  # type: ignore[method-assign]
        network.listeners[self.port] = factory
        self.addr = Multiaddr.fromString(f"/memory/{self.port}")


class MemoryGrid:
    """
    Nodes sharing one L{MemoryNetwork} and one L{Clock}, torn down with the
    test.
    """

    def __init__(self, testCase: SynchronousTestCase, security: Optional[str] = None) -> None:
        """
        @param security: C{"noise"} or C{"tls"} to give every node only that
            security protocol; L{None} for the node's default (both, Noise
            preferred).
        """
        self.testCase = testCase
        self.security = security
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.network = MemoryNetwork()
        self.nodes: list[Node] = []
        self._globalBefore = _globalReactorState()
        testCase.addCleanup(self.stopAll)

    # -- nodes -----------------------------------------------------------

    def node(
        self,
        identity: Optional[Identity] = None,
        listen: Sequence[str] = ("/memory/0",),
        **kw: Any,
    ) -> Node:
        """
        A started node listening on a free C{/memory} port (echo, ping and
        identify are served by every node).
        """
        identity = identity or Identity.generate()
        if self.security is not None and "securities" not in kw:
            kw["securities"] = securities(self.security, identity, self.clock)
        node = Node(self.clock, identity, list(listen),
                    transports=[MemoryTransport(self.clock, self.network)], **kw)
        self.nodes.append(node)
        self.result(node.startService())
        return node

    def pair(self, **kw: Any) -> tuple[Node, Node]:
        """
        Two started nodes, ordered so that the first has the smaller peer ID.
        """
        x, y = self.node(**kw), self.node(**kw)
        return (x, y) if x.peerID.bytes < y.peerID.bytes else (y, x)

    @staticmethod
    def addr(node: Node, index: int = 0, withPeer: bool = True) -> Multiaddr:
        """
        C{node}'s listening address, ending in C{/p2p/<its peer ID>} unless
        C{withPeer} is false.
        """
        addr = node.listenAddrs[index]
        return addr.withPeerID(node.peerID) if withPeer else addr

    def rawConnect(self, node: Node, protocol: Protocol, source: Optional[int] = None) -> Protocol:
        """
        Connect C{protocol} to C{node}'s first listening address over the
        bare memory transport (no security, no muxer): a peer that does not
        speak libp2p, or speaks it badly.

        @param source: the port the connection comes from; connections
            given the same one come from one "IP" as far as the node's
            per-source limits are concerned (by default each has its own).
        """
        if source is None:
            factory = Factory.forProtocol(lambda: protocol)
            factory.noisy = False
            transport = MemoryTransport(self.clock, self.network)
            return self.result(transport.dial(self.addr(node, withPeer=False), factory, 10.0))
        port = node.listenAddrs[0].components()[0][1]
        assert port is not None
        server = self.network.listeners[int(port)]
        local, remote = MemoryAddress(source), MemoryAddress(int(port))
        client = MemoryPipe(self.clock, local, remote)
        serverPipe = MemoryPipe(self.clock, remote, local)
        client.other, serverPipe.other = serverPipe, client
        serverProto = server.buildProtocol(local)
        serverPipe.protocol, client.protocol = serverProto, protocol
        serverProto.makeConnection(serverPipe)
        protocol.makeConnection(client)
        self.settle()
        return protocol

    def silentListener(self) -> SilentListener:
        """
        A peer that accepts the connection but never speaks.
        """
        return SilentListener(self.network)

    # -- time --------------------------------------------------------------

    def settle(self) -> None:
        """
        Run every delivery and timer due now, until nothing is left to run
        at the current time.
        """
        flush(self.clock)

    def advance(self, seconds: float) -> None:
        """
        Move the clock C{seconds} forward, stopping at each timer on the way
        and settling there, so every timer fires at its own time.
        """
        target = self.clock.seconds() + seconds
        self.settle()
        while True:
            due = [c.getTime() for c in self.clock.getDelayedCalls()]
            nxt = min(due) if due else None
            if nxt is None or nxt > target:
                break
            self.clock.advance(max(0.0, nxt - self.clock.seconds()))
            self.settle()
        self.clock.advance(target - self.clock.seconds())
        self.settle()

    # -- results -----------------------------------------------------------

    def result(self, d: Deferred[Any]) -> Any:
        """
        Settle, then the result C{d} has fired with (failing the test if it
        has not fired, or failed).
        """
        self.settle()
        return self.testCase.successResultOf(d)

    def failure(self, d: Deferred[Any], *types: type[BaseException]) -> Failure:
        """
        Settle, then the failure C{d} has fired with, which must be one of
        C{types}.
        """
        self.settle()
        return self.testCase.failureResultOf(d, *types)

    # -- teardown ----------------------------------------------------------

    def stopAll(self) -> None:
        """
        Stop every node still running, let close timeouts pass, and check
        that no timer is left on the clock.
        """
        stops = [n.stopService() for n in self.nodes]
        longest = max((n.closeTimeout for n in self.nodes), default=0.0)
        self.advance(longest + 1)
        for d in stops:
            self.testCase.successResultOf(d)
        left = self.clock.getDelayedCalls()
        self.testCase.assertEqual(left, [], "timers left behind by stopped nodes")
        self.testCase.assertEqual(_globalReactorState(), self._globalBefore,
                                  "the global reactor was used by nodes on a Clock")


def _globalReactorState() -> tuple[set[Any], set[Any]]:
    """
    The global reactor's pending timers and its readers and writers.
    """
    from twisted.internet import reactor

    return (set(reactor.getDelayedCalls()),  # type: ignore[attr-defined]
            set(reactor.getReaders()) | set(reactor.getWriters()))  # type: ignore[attr-defined]
