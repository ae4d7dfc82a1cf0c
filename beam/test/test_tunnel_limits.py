"""
Tunnels under limits (issue 8): the host's per-peer limit on the local
connections a peer makes it open, forwards that wait for a free stream
instead of failing, and the idle timeout of half-closed tunnels.
"""

from __future__ import annotations

from typing import Any

import attr
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beam.errors import StreamLimitExceeded, StreamReset
from beam.identity.keys import Identity
from beam.p2p.resources import INBOUND, ResourceManager, defaultLimits
from beam.test.nodeutil import EchoClient, addrOf, startNode
from beam.test.test_tunnel import EchoServer, TunnelTestsMixin, serviceFactory, waitFor
from beam.test.test_tunnel_forward import ForwardTestsMixin
from beam.test.test_tunnel_protocol import FakeConnection, FakeNode, FakeTransport
from beam.tunnel import AccessPolicy, ServiceSpec, TunnelHost
from beam.tunnel.client import TunnelRequester
from beam.tunnel.protocol import (
    BUSY,
    TUNNEL_PROTOCOL,
    ResponseReader,
    TunnelBusy,
    TunnelRequest,
    TunnelResponse,
    encodeRequest,
    encodeResponse,
    refusalFor,
)
from beam.tunnel.splice import Splice


def limitedManager(peerFD: int, allowedFD: int = 64) -> ResourceManager:
    """
    A resource manager whose peers may hold C{peerFD} descriptors
    (C{allowedFD} for allowed peers).
    """
    limits = defaultLimits(fdLimit=4096)
    limits = attr.evolve(
        limits,
        peer=attr.evolve(limits.peer, fd=peerFD),
        allowedPeer=attr.evolve(limits.allowedPeer, fd=allowedFD),
    )
    return ResourceManager(limits, clock=reactor)


class _Asker(TunnelRequester):
    """
    Asks for a tunnel and records the answer; the stream stays open after
    an OK (the host holds a local connection for it).
    """

    def __init__(self, service: str) -> None:
        super().__init__(encodeRequest(TunnelRequest(service=service)), "the host")
        self.answer: Deferred[Any] = Deferred()

    def answered(self, response: TunnelResponse) -> None:
        self.answer.callback(response)

    def refused(self, error: Any) -> None:
        self.answer.errback(error)

    def failed(self, error: Any) -> None:
        self.answer.errback(error)


# -- the host's per-peer limit, unit level ---------------------------------


class HostFDLimitTests(SynchronousTestCase):
    """
    L{TunnelHost} reserves a descriptor per tunnel before connecting to the
    local service, in the stream's resource scope when it has one, else in
    its own per-peer count.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.node = FakeNode()
        self.node.resources = limitedManager(2)  # type: ignore[attr-defined]
        self.host = TunnelHost(self.clock, self.node)
        self.host.startService()
        self.peer = Identity.fromSeed(b"p" * 32).peerID
        self.host.expose(ServiceSpec.forPort(3000, name="web"))
        self.connects: list[Any] = []
        import beam.tunnel.host as hostModule

        test = self

        class _Endpoint:
            def connect(self, factory: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                test.connects.append(d)
                return d

        self.patch(hostModule, "_clientEndpoint", lambda *a: _Endpoint())

    def openStream(self, scope: Any = None) -> tuple[Any, FakeTransport]:
        proto = self.node.handlers[TUNNEL_PROTOCOL]()
        stream = FakeTransport("stream")
        stream.connection = FakeConnection(self.peer)  # type: ignore[attr-defined]
        stream.setProtocol = stream.connect  # type: ignore[attr-defined]
        stream.resourceScope = scope  # type: ignore[attr-defined]
        stream.connect(proto)
        proto.dataReceived(encodeRequest(TunnelRequest(service="web")))
        return proto, stream

    def response(self, stream: FakeTransport) -> Any:
        return ResponseReader().feed(bytes(stream.written))

    def test_busyWithoutScope(self):
        """
        Without a resource scope on the stream, the per-peer count holds
        the peer to the manager's per-peer C{fd} limit: the third tunnel
        of a peer limited to two is answered BUSY with a clear message,
        and the count returns to zero once the connections failed.
        """
        self.openStream()
        self.openStream()
        self.assertEqual(len(self.connects), 2)
        _, third = self.openStream()
        response = self.response(third)
        self.assertEqual(response.status, BUSY)
        self.assertIn("too many tunnel connections from this peer (limit 2)", response.message)
        self.assertIsInstance(refusalFor(response), TunnelBusy)
        self.assertTrue(third.closed)
        self.assertEqual(len(self.connects), 2)
        self.assertEqual(self.host.peerFDs, {self.peer: 2})
        self.assertEqual(self.host.stats["web"].refused, 1)
        for d in self.connects:
            d.errback(Failure(ConnectionError("refused")))
        self.assertEqual(self.host.peerFDs, {})

    def test_scopeReservesAndReleases(self):
        """
        With a stream scope, the descriptor is reserved in it (and the
        stream is counted in its service); a refusal from the manager is
        answered BUSY; releasing after the stream scope ended does not
        release twice.
        """
        manager = self.node.resources
        conn = manager.openConnection(INBOUND, useFD=False)
        conn.setPeer(self.peer)
        scopes = [conn.openStream(INBOUND) for _ in range(3)]
        self.openStream(scopes[0])
        self.openStream(scopes[1])
        self.assertEqual(manager.peerScope(self.peer).usage.fd, 2)
        self.assertEqual(manager.serviceScope("web").usage.streamsInbound, 2)
        _, third = self.openStream(scopes[2])
        self.assertEqual(self.response(third).status, BUSY)
        # The first stream ends before its connection attempt does.
        scopes[0].done()
        self.connects[0].errback(Failure(ConnectionError("refused")))
        self.connects[1].errback(Failure(ConnectionError("refused")))
        self.assertEqual(manager.peerScope(self.peer).usage.fd, 0)
        for scope in scopes:
            scope.done()
        conn.done()
        self.assertTrue(manager.system.usage.isEmpty())
        self.assertEqual(self.host.peerFDs, {})

    def test_allowListGetsAllowedLimits(self):
        """
        Peers in a service's allow list are held to the allowed-peer
        limits while it is exposed.
        """
        manager = self.node.resources
        self.assertEqual(self.host.peerFDLimit(self.peer), 2)
        self.host.expose(ServiceSpec.forPort(3001, name="private", policy=AccessPolicy(allow=[self.peer])))
        self.assertTrue(manager.isAllowed(self.peer))
        self.assertEqual(self.host.peerFDLimit(self.peer), 64)
        self.host.unexpose("private")
        self.assertFalse(manager.isAllowed(self.peer))
        self.assertEqual(self.host.peerFDLimit(self.peer), 2)


# -- real sockets ------------------------------------------------------------


def _peerFDs(manager: ResourceManager, peer: Any) -> int:
    for entry in manager.status(top=1000)["peers"]["busiest"]:
        if entry["peer"] == str(peer):
            return int(entry["fd"])
    return 0


class TunnelLimitTests(TunnelTestsMixin, TestCase):
    timeout = 60

    @inlineCallbacks
    def test_perPeerFDLimit(self):
        """
        One peer opening 10 tunnel streams to a host whose peers may hold
        4 descriptors gets 4 tunnels (less the descriptors its connection
        itself holds, where the node accounts them) and the rest refused
        BUSY with a clear message, while a second peer still opens
        tunnels; all accounting returns to zero once they are closed.
        """
        service = serviceFactory(EchoServer)
        port = yield self.listenService(service)
        hostNode = yield startNode(self, resources=limitedManager(4))
        _, host = yield self.makeHost(hostNode)
        host.expose(ServiceSpec.forPort(port, name="echo"))
        greedy = yield startNode(self)
        other = yield startNode(self)
        yield greedy.connect(addrOf(hostNode))
        yield waitFor(lambda: hostNode.connectionTo(greedy.peerID) is not None)
        # Where the node accounts connections, the connection's own
        # socket counts against the peer's descriptors too.
        baseline = _peerFDs(hostNode.resources, greedy.peerID)

        askers = [_Asker("echo") for _ in range(10)]
        for asker in askers:
            yield greedy.openStream(hostNode.peerID, [TUNNEL_PROTOCOL], lambda a=asker: a)
        results = yield DeferredList([a.answer for a in askers], consumeErrors=True)
        ok = [r for success, r in results if success]
        refused = [r for success, r in results if not success]
        self.assertEqual(len(ok), 4 - baseline)
        self.assertEqual(len(refused), 6 + baseline)
        for f in refused:
            self.assertTrue(f.check(TunnelBusy), f)
            self.assertIn("too many tunnel connections from this peer (limit 4)", f.getErrorMessage())

        friend = _Asker("echo")
        yield other.connect(addrOf(hostNode))
        yield other.openStream(hostNode.peerID, [TUNNEL_PROTOCOL], lambda: friend)
        response = yield friend.answer
        self.assertTrue(response.ok)

        for asker in [*askers, friend]:
            asker.transport.abortConnection()
        yield waitFor(lambda: not host.peerFDs and not host._splices)
        yield waitFor(lambda: _peerFDs(hostNode.resources, greedy.peerID) == baseline)
        self.assertEqual(hostNode.resources.status()["services"].get("echo", {}).get("fd", 0), 0)

    @inlineCallbacks
    def test_forwardWaitsForStreams(self):
        """
        2,000 quick connect/send/close cycles (20 at a time) through a
        forward whose connection may carry only 4 streams all succeed:
        connections that find no free stream wait for one instead of
        failing.
        """
        service = serviceFactory(EchoServer)
        port = yield self.listenService(service)
        hostNode, host = yield self.makeHost()
        host.expose(ServiceSpec.forPort(port, name="echo"))
        clientNode = yield startNode(self, maxStreamsPerConnection=4)
        forward = yield self.makeForward(hostNode, "echo", node=clientNode)
        local = forward.localAddress.port
        failures: list[str] = []

        @inlineCallbacks
        def worker(n: int) -> Any:
            for i in range(100):
                payload = b"%d-%d " % (n, i) * 8
                client = EchoClient(payload)
                yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", local), client)
                received = yield client.done
                if received != payload:
                    failures.append(f"worker {n} cycle {i}: got {received[:40]!r}")

        yield DeferredList([worker(n) for n in range(20)], fireOnOneErrback=True, consumeErrors=True)
        self.assertEqual(failures, [])
        self.assertEqual(forward.stats.failed, 0)
        self.assertEqual(forward.stats.total, 2000)
        self.assertEqual(len(forward._queue), 0)
        self.assertGreater(forward.waited, 0)

    @inlineCallbacks
    def test_forwardWaitsForHostLimit(self):
        """
        600 connections at once through a forward to a host that accepts
        only 16 inbound streams from its peer all succeed: the host
        refuses the excess SYNs (RSTs), the streams it did accept carry on
        (no go-away for the refused ones), and the forward's connections
        wait for a free stream.
        """
        service = serviceFactory(EchoServer)
        port = yield self.listenService(service)
        limits = defaultLimits()
        limits = attr.evolve(limits, peer=attr.evolve(limits.peer, streamsInbound=16))
        hostNode = yield startNode(self, resources=ResourceManager(limits, clock=reactor))
        _, host = yield self.makeHost(hostNode)
        host.expose(ServiceSpec.forPort(port, name="echo"))
        forward = yield self.makeForward(hostNode, "echo")
        local = forward.localAddress.port
        payload = b"x" * 16384

        @inlineCallbacks
        def one(n: int) -> Any:
            client = EchoClient(payload)
            yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", local), client)
            received = yield client.done
            return received == payload

        results = yield DeferredList([one(n) for n in range(600)], consumeErrors=True)
        self.assertEqual([ok and value for ok, value in results].count(True), 600)
        self.assertEqual(forward.stats.failed, 0)
        self.assertGreater(hostNode.resources.refusals["peer streams_inbound"], 0)


# -- idle timeouts -----------------------------------------------------------


class SpliceIdleTests(SynchronousTestCase):
    """
    A half-closed tunnel in which nothing moves is aborted after
    C{halfClosedTimeout}; an optional C{idleTimeout} applies to any tunnel.
    """

    def makeSplice(self, **kw: Any) -> tuple[Clock, Splice, FakeTransport, FakeTransport]:
        clock = Clock()
        splice = Splice(clock=clock, **kw)
        tcp, stream = FakeTransport("tcp"), FakeTransport("stream")
        tcp.connect(splice.local)
        stream.connect(splice.remote)
        splice.start()
        return clock, splice, tcp, stream

    def test_halfClosedTimeout(self):
        """
        After the app half-closes, bytes still moving keep the tunnel
        open; once none moved for the timeout, both sides are aborted.
        """
        clock, splice, tcp, stream = self.makeSplice(halfClosedTimeout=300.0)
        clock.advance(1000)
        self.assertFalse(tcp.aborted or stream.aborted)
        splice.local.readConnectionLost()
        clock.advance(200)
        splice.remote.dataReceived(b"still talking")
        clock.advance(200)
        self.assertFalse(tcp.aborted or stream.aborted)
        clock.advance(99)
        self.assertFalse(tcp.aborted or stream.aborted)
        clock.advance(1)
        self.assertTrue(tcp.aborted and stream.aborted)
        self.assertTrue(splice.timedOut)

    def test_noTimeoutWithoutHalfClose(self):
        """
        By default an open, idle tunnel (an interactive session) is left
        alone.
        """
        clock, splice, tcp, stream = self.makeSplice()
        clock.advance(10_000)
        self.assertFalse(tcp.aborted or stream.aborted)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idleTimeout(self):
        """
        With C{idleTimeout} set, a tunnel in which nothing moved for that
        long is aborted, half-closed or not.
        """
        clock, splice, tcp, stream = self.makeSplice(idleTimeout=60.0)
        clock.advance(30)
        splice.local.dataReceived(b"x")
        clock.advance(59)
        self.assertFalse(tcp.aborted)
        clock.advance(1)
        self.assertTrue(tcp.aborted and stream.aborted)

    def test_timerEndsWithTunnel(self):
        """
        A tunnel that ends leaves no timer behind.
        """
        clock, splice, tcp, stream = self.makeSplice(halfClosedTimeout=300.0)
        splice.local.readConnectionLost()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        splice.local.connectionLost(Failure(ConnectionError()))
        splice.remote.connectionLost(Failure(ConnectionError()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_halfClosedBeforeStart(self):
        """
        A side that ended before the splice started arms the timer at
        start.
        """
        clock = Clock()
        splice = Splice(clock=clock, halfClosedTimeout=5.0)
        tcp, stream = FakeTransport("tcp"), FakeTransport("stream")
        tcp.connect(splice.local)
        stream.connect(splice.remote)
        splice.remote.readConnectionLost()
        splice.start()
        clock.advance(5)
        self.assertTrue(tcp.aborted and stream.aborted)


# -- the forward's queue, deterministic -------------------------------------


class ForwardQueueTests(ForwardTestsMixin, SynchronousTestCase):
    """
    A forward's local connection that finds no free stream waits, paused,
    in a bounded queue, and is retried; it is closed only when the queue
    is full or it waited too long.
    """

    def test_waitsAndRetries(self) -> None:
        """
        A stream limit does not fail the connection: it stays open and
        paused, and the retry timer opens a new stream for it.
        """
        forward = self.steady()
        app = self.localConnection()
        self.host.streams.pop().errback(StreamLimitExceeded())
        self.assertFalse(app.disconnecting)
        self.assertEqual(app.producerState, "paused")
        self.assertEqual((len(forward._queue), forward.waited, forward.stats.failed), (1, 1, 0))
        self.reactor.advance(1)
        self.assertEqual(len(self.host.streams), 1)
        self.assertEqual(len(forward._queue), 0)

    def test_hostBusyWaits(self) -> None:
        """
        A host's BUSY answer and a host reset before the answer make the
        connection wait too.
        """
        forward = self.steady()
        self.localConnection()
        self.host.streams.pop().errback(StreamReset())
        factories = []
        opened = self.host.openStream

        def openStream(peer: Any, protocols: Any, factory: Any) -> Any:
            factories.append(factory)
            return opened(peer, protocols, factory)

        self.host.openStream = openStream  # type: ignore[method-assign]
        self.localConnection()
        negotiator = factories[0]()
        stream = StringTransport()
        negotiator.makeConnection(stream)
        busy = TunnelBusy("too many tunnel connections from this peer (limit 4)")
        negotiator.dataReceived(encodeResponse(TunnelResponse.refusing(busy)))
        self.assertEqual((len(forward._queue), forward.stats.failed, forward.stats.refused), (2, 0, 0))

    def test_queueTimeout(self) -> None:
        """
        A connection that finds no stream within C{queueTimeout} is
        closed and counted as failed, with a clear log line.
        """
        logs = self.captureLogs()
        forward = self.steady(queueTimeout=5.0)
        app = self.localConnection()
        self.host.streams.pop().errback(StreamLimitExceeded())
        for _ in range(20):
            self.reactor.advance(0.5)
            while self.host.streams:
                self.host.streams.pop().errback(StreamLimitExceeded())
        self.assertTrue(app.disconnected)
        self.assertEqual(forward.stats.failed, 1)
        self.assertEqual(len(forward._queue), 0)
        self.assertTrue([line for line in logs if "no stream was free within 5 s" in line], logs)
        self.assertIsNone(forward._queueTimer)

    def test_queueFull(self) -> None:
        """
        Beyond C{maxQueued} waiting connections, a new one is closed.
        """
        forward = self.steady(maxQueued=2)
        apps = [self.localConnection() for _ in range(3)]
        for d in list(self.host.streams):
            d.errback(StreamLimitExceeded())
        self.assertEqual([a.disconnected for a in apps], [False, False, True])
        self.assertEqual(forward.stats.failed, 1)

    def test_stopAbortsWaiting(self) -> None:
        """
        Stopping the forward aborts the waiting connections.
        """
        forward = self.steady()
        app = self.localConnection()
        self.host.streams.pop().errback(StreamLimitExceeded())
        forward.stopService()
        self.assertTrue(app.disconnected)
        self.assertEqual(len(forward._queue), 0)
