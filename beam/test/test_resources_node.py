"""
Tests of the resource manager (L{beam.p2p.resources}) wired into the node
and the yamux session: what a peer is refused when it passes a limit, that
everyone else is unaffected, and that every reservation is released on
every path.

All in memory under a L{Clock} (L{beam.test.memnodes.MemoryGrid}), with
limits built from fixed numbers, not from this machine's memory and
descriptor limit.
"""

from __future__ import annotations

import random
from typing import Any

import attr
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from beam.errors import BeamError, ConnectionLimitExceeded, StreamLimitExceeded, StreamReset
from beam.identity.keys import Identity
from beam.p2p.muxer._yamux_frames import DEFAULT_WINDOW
from beam.p2p.muxer.yamux import StreamResourceLimitExceeded
from beam.p2p.protocols.echo import ECHO_PROTOCOL
from beam.p2p.resources import (
    GiB,
    KiB,
    MiB,
    BaseLimit,
    Limits,
    ResourceLimitExceeded,
    ResourceManager,
    defaultLimits,
)
from beam.test.memnodes import MemoryGrid

SINK = "/beam-test/sink/1.0.0"


def limits(**changes: Any) -> Limits:
    """
    The default limits of a process with 4,096 descriptors on an 8 GiB
    machine, with C{changes}: each a L{Limits} attribute, given either
    whole or, for a L{BaseLimit}, as a dict of the fields to change.
    """
    base = defaultLimits(fdLimit=4096, memory=8 * GiB)
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if isinstance(value, dict) and isinstance(getattr(base, name), BaseLimit):
            value = attr.evolve(getattr(base, name), **value)
        out[name] = value
    return attr.evolve(base, **out)


class Recorder(Protocol):
    """
    A stream protocol that records what arrives and how the stream ended.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason


class Sink(Protocol):
    """
    Reads everything and answers nothing.
    """

    def __init__(self) -> None:
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)


def assertNothingHeld(test: SynchronousTestCase, manager: ResourceManager) -> None:
    """
    Every usage in C{manager}'s status is zero, and no peer, protocol or
    service scope is left.
    """
    status = manager.status()
    for scope in ("system", "transient"):
        test.assertEqual(set(status[scope].values()), {0}, f"{scope}: {status[scope]}")
    test.assertEqual(status["peers"]["count"], 0)
    test.assertEqual(status["protocols"], {})
    test.assertEqual(status["services"], {})
    test.assertEqual(manager.openConnections, set())


def assertStreamsAccounted(test: SynchronousTestCase, node: Any) -> None:
    """
    Each open connection's scope holds exactly its session's streams, each
    with its receive window's memory.
    """
    for conn in node._allConnections:
        if conn.closed:
            continue
        streams = list(conn.session.streams.values())
        test.assertEqual(conn.resourceScope.streams, {s.resourceScope for s in streams})
        for s in streams:
            test.assertEqual(s.resourceScope.memory, s._recvMax)


class StreamLimitTests(SynchronousTestCase):
    """
    Streams are reserved by the yamux session in the connection's scopes.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)

    def test_perPeerInboundStreams(self) -> None:
        """
        A peer over its inbound stream limit gets an RST for each stream
        beyond it, nothing of them is kept, its connection stays up, and
        another peer can still open streams.
        """
        grid = self.grid
        manager = ResourceManager(limits(peer={"streamsInbound": 5}), clock=grid.clock)
        b = grid.node(resources=manager)
        a, c = grid.node(), grid.node()
        conn = grid.result(a.connect(grid.addr(b)))
        grid.result(conn.identified)
        raws = []
        for _ in range(8):
            r = Recorder()
            conn.openStream().setProtocol(r)
            raws.append(r)
        grid.settle()
        reset = [r for r in raws if r.reason is not None]
        self.assertEqual(len(reset), 3)
        self.assertTrue(all(r.reason is not None and r.reason.check(StreamReset) for r in reset))
        self.assertEqual(manager.refusals["peer streams_inbound"], 3)
        held = manager.status()["peers"]["busiest"][0]
        self.assertEqual(held["streams_inbound"], 5)
        self.assertEqual(held["memory"], 5 * DEFAULT_WINDOW)
        self.assertEqual(b.connections[a.peerID].streamCount, 5)
        # Another peer is served, and the refused one once it has room.
        self.assertEqual(len(grid.result(c.ping(grid.addr(b), count=2))), 2)
        self.assertFalse(conn.closed)
        grid.advance(b.negotiationTimeout + 1)
        self.assertEqual(len(grid.result(a.ping(grid.addr(b)))), 1)

    def test_outboundRefusal(self) -> None:
        """
        Opening a stream our own limits have no room for raises
        L{StreamResourceLimitExceeded}, which is both the
        L{StreamLimitExceeded} callers handle and a L{ResourceLimitExceeded}
        naming the full scope; the stream is not opened on the wire.
        """
        grid = self.grid
        manager = ResourceManager(limits(peer={"streamsOutbound": 2}), clock=grid.clock)
        a = grid.node(resources=manager)
        b = grid.node()
        conn = grid.result(a.connect(grid.addr(b)))
        grid.result(conn.identified)
        conn.openStream()
        conn.openStream()
        e = self.assertRaises(StreamResourceLimitExceeded, conn.openStream)
        self.assertIsInstance(e, StreamLimitExceeded)
        self.assertIsInstance(e, ResourceLimitExceeded)
        self.assertEqual((e.resource, e.limit), ("streams_outbound", 2))
        self.assertIn("streams_outbound limit (2)", str(e))
        grid.settle()
        self.assertEqual(b.connections[a.peerID].streamCount, 2)
        f = grid.failure(a.openStream(grid.addr(b), ECHO_PROTOCOL, Recorder), StreamLimitExceeded)
        self.assertIsInstance(f.value, BeamError)

    def test_windowGrowthStopsAtPeerMemory(self) -> None:
        """
        A stream's receive window grows only by what its scopes' memory
        allows: with room for a window of 512 KiB, a fast sender's stream
        grows from 256 KiB to 512 KiB and no further (where a node with
        room grows it to 4 MiB), the transfer completes, and growth that
        does not fit is not counted as a refusal.
        """
        grid = self.grid
        tight = ResourceManager(limits(peer={"memory": 768 * KiB}, connection={"memory": 768 * KiB}),
                                clock=grid.clock)
        roomy = ResourceManager(limits(), clock=grid.clock)
        windows = []
        for manager in (tight, roomy):
            b = grid.node(resources=manager)
            sinks: list[Sink] = []
            b.setStreamHandler(SINK, lambda: sinks.append(Sink()) or sinks[-1])
            a = grid.node()
            conn = grid.result(a.connect(grid.addr(b)))
            grid.result(conn.identified)
            sender = grid.result(a.openStream(grid.addr(b), SINK, Protocol))
            sender.transport.write(b"z" * (16 * MiB))
            grid.settle()
            self.assertEqual(sinks[0].count, 16 * MiB)
            [stream] = b.connections[a.peerID].session.streams.values()
            self.assertEqual(stream.resourceScope.memory, stream._recvMax)
            windows.append(stream._recvMax)
            self.assertEqual(dict(manager.refusals), {})
        self.assertEqual(windows, [512 * KiB, 4 * MiB])
        self.assertEqual(tight.status()["peers"]["busiest"][0]["memory"], 512 * KiB)

    def test_protocolInboundLimit(self) -> None:
        """
        A protocol with a C{streams_inbound} limit refuses (resets) the
        streams beyond it, counted as the protocol's refusal; other
        protocols still work, and the protocol has room again once a
        stream ends.
        """
        grid = self.grid
        manager = ResourceManager(limits(protocols={SINK: BaseLimit(streamsInbound=2)}), clock=grid.clock)
        b = grid.node(resources=manager)
        b.setStreamHandler(SINK, Sink)
        a = grid.node()
        protos = [grid.result(a.openStream(grid.addr(b), SINK, Recorder)) for _ in range(3)]
        grid.settle()
        self.assertEqual([p.reason is not None for p in protos], [False, False, True])
        assert protos[2].reason is not None
        self.assertTrue(protos[2].reason.check(StreamReset))
        self.assertEqual(manager.refusals["protocol streams_inbound"], 1)
        self.assertEqual(manager.status()["protocols"][SINK]["streams_inbound"], 2)
        self.assertEqual(len(grid.result(a.ping(grid.addr(b)))), 1)
        protos[0].transport.loseConnection()
        grid.settle()
        self.assertIsNotNone(protos[0].reason)
        again = grid.result(a.openStream(grid.addr(b), SINK, Recorder))
        grid.settle()
        self.assertIsNone(again.reason)

    def test_protocolOutboundLimit(self) -> None:
        """
        Our own protocol limit fails the opener's Deferred with the
        L{ResourceLimitExceeded} and resets the stream.
        """
        grid = self.grid
        manager = ResourceManager(limits(protocols={ECHO_PROTOCOL: BaseLimit(streamsOutbound=1)}),
                                  clock=grid.clock)
        a = grid.node(resources=manager)
        b = grid.node()
        grid.result(a.openStream(grid.addr(b), ECHO_PROTOCOL, Recorder))
        f = grid.failure(a.openStream(grid.addr(b), ECHO_PROTOCOL, Recorder), ResourceLimitExceeded)
        self.assertEqual(f.value.resource, "streams_outbound")
        grid.settle()
        self.assertEqual(manager.status()["protocols"][ECHO_PROTOCOL]["streams_outbound"], 1)
        self.assertEqual(b.connections[a.peerID].streamCount, 1)


class ConnectionLimitTests(SynchronousTestCase):
    """
    Connections are reserved by the node: in the transient scope until the
    handshake, in the peer's after.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)

    def test_perPeerConnections(self) -> None:
        """
        A connection that takes its peer past its connection limit is
        closed once the handshake says who it is (counted as a refused
        handshake); the peer's first connection and other peers work.
        """
        grid = self.grid
        manager = ResourceManager(limits(peer={"conns": 1}), clock=grid.clock)
        b = grid.node(resources=manager)
        identity = Identity.generate()
        a1, a2, c = grid.node(identity=identity), grid.node(identity=identity), grid.node()
        first = grid.result(a1.connect(grid.addr(b)))
        outcome: list[Any] = []
        a2.connect(grid.addr(b)).addBoth(outcome.append)
        grid.advance(1)
        [second] = outcome
        self.assertTrue(isinstance(second, Failure) or second.closed)
        self.assertEqual(manager.refusals["peer conns"], 1)
        self.assertEqual(b.refusedHandshakes, 1)
        self.assertEqual(len(b._allConnections), 1)
        self.assertEqual(manager.status()["transient"]["conns_inbound"], 0)
        self.assertFalse(first.closed)
        self.assertEqual(len(grid.result(a1.ping(grid.addr(b)))), 1)
        self.assertEqual(len(grid.result(c.ping(grid.addr(b)))), 1)

    def test_outboundRefusedByOwnLimit(self) -> None:
        """
        A dial our own connection limit has no room for fails at once with
        L{ConnectionLimitExceeded} saying so, and holds nothing.
        """
        grid = self.grid
        manager = ResourceManager(limits(system={"conns": 1}), clock=grid.clock)
        a = grid.node(resources=manager)
        b, c = grid.node(), grid.node()
        grid.result(a.connect(grid.addr(b)))
        f = self.failureResultOf(a.connect(grid.addr(c)), ConnectionLimitExceeded)
        self.assertIn("conns limit (1)", str(f.value))
        self.assertEqual(manager.status()["system"]["conns_outbound"], 1)
        self.assertEqual(manager.status()["transient"]["conns_outbound"], 0)

    def test_transientPerSource(self) -> None:
        """
        Eight connections from one source wait in the handshake; the ninth
        from it is refused, one from another source is not.
        """
        grid = self.grid
        manager = ResourceManager(limits(), clock=grid.clock)
        b = grid.node(resources=manager, handshakeTimeout=100.0)
        raws = [grid.rawConnect(b, Recorder(), source=7) for _ in range(9)]
        other = grid.rawConnect(b, Recorder(), source=8)
        grid.settle()
        self.assertEqual([r.reason is not None for r in raws], [False] * 8 + [True])
        self.assertIsNone(other.reason)
        self.assertEqual(b.pendingHandshakeCount, 9)
        self.assertEqual(manager.status()["transient"]["conns_inbound"], 9)
        self.assertEqual(manager.refusals["transient per_source"], 1)
        self.assertEqual(b.refusedHandshakes, 1)
        grid.advance(100.1)
        self.assertEqual(b.pendingHandshakeCount, 0)
        assertNothingHeld(self, manager)

    def test_overridesAreTheManagersLimits(self) -> None:
        """
        The node's C{max*} arguments change the manager's limits, which
        the node's attributes read back.
        """
        manager = ResourceManager(limits(), clock=self.grid.clock)
        b = self.grid.node(resources=manager, maxConnections=20, maxPendingHandshakes=5,
                           maxPendingHandshakesPerSource=2, maxStreamsPerConnection=30)
        self.assertEqual(manager.limits.system.conns, 20)
        self.assertEqual(manager.limits.transient.connsInbound, 5)
        self.assertEqual(manager.limits.transientPerSource, 2)
        self.assertEqual(manager.limits.connection.streams, 30)
        self.assertEqual((b.maxConnections, b.maxPendingHandshakes, b.maxPendingHandshakesPerSource,
                          b.maxStreamsPerConnection), (20, 5, 2, 30))


class NoLeakTests(SynchronousTestCase):
    """
    Whatever happens to streams and connections, everything reserved is
    released.
    """

    def setUp(self) -> None:
        self.grid = MemoryGrid(self)

    def test_manyCycles(self) -> None:
        """
        Streams opened, echoed, half-closed, reset from either side or
        never negotiated, connections closed and aborted from either side,
        handshakes that time out or are refused, over many seeded random
        rounds: afterwards no usage is left anywhere and no peer, protocol
        or service scope remains, on either node.
        """
        grid = self.grid
        rng = random.Random(8)
        bm = ResourceManager(limits(peer={"streamsInbound": 6}, transientPerSource=2), clock=grid.clock)
        am = ResourceManager(limits(), clock=grid.clock)
        b = grid.node(resources=bm, negotiationTimeout=2.0, handshakeTimeout=3.0)
        b.setStreamHandler(SINK, Sink)
        a = grid.node(resources=am)
        c = grid.node()
        protos: list[Recorder] = []

        def opened(p: Recorder) -> Recorder:
            protos.append(p)
            return p

        for _ in range(300):
            action = rng.randrange(9)
            conns = [x for x in (a.connectionTo(b.peerID), b.connectionTo(a.peerID)) if x is not None]
            if action <= 2:
                d = a.openStream(grid.addr(b), rng.choice([ECHO_PROTOCOL, SINK]), Recorder)
                d.addCallbacks(opened, lambda f: None)
            elif action == 3 and protos:
                p = protos.pop(rng.randrange(len(protos)))
                if p.transport is not None:
                    p.transport.write(b"data" * rng.randrange(1, 2000))
                    p.transport.loseConnection()
            elif action == 4 and protos:
                p = protos.pop(rng.randrange(len(protos)))
                if p.transport is not None:
                    p.transport.abortConnection()
            elif action == 5 and conns:
                raw = rng.choice(conns).openStream()
                raw.setProtocol(Recorder())
            elif action == 6 and conns:
                conn = rng.choice(conns)
                if rng.random() < 0.5:
                    conn.close()
                else:
                    conn.abort()
            elif action == 7:
                grid.rawConnect(b, Recorder(), source=rng.choice([1, 2, 3]))
            elif action == 8:
                for stream in list(b.connectionTo(a.peerID).session.streams.values()
                                   if b.connectionTo(a.peerID) is not None else []):
                    if rng.random() < 0.3:
                        stream.abortConnection()
            c.ping(grid.addr(b)).addErrback(lambda f: None)
            grid.advance(rng.choice([0, 0, 0.5, 1.0]))
            for node in (a, b):
                assertStreamsAccounted(self, node)
        self.assertGreater(sum(bm.refusals.values()), 0)
        for node in (a, b, c):
            for conn in list(node._allConnections):
                conn.close()
        grid.advance(b.handshakeTimeout + b.closeTimeout + 1)
        assertNothingHeld(self, bm)
        assertNothingHeld(self, am)

    def test_nodeStop(self) -> None:
        """
        Stopping the node with streams open, handshakes pending and dials
        under way releases everything.
        """
        grid = self.grid
        bm = ResourceManager(limits(), clock=grid.clock)
        am = ResourceManager(limits(), clock=grid.clock)
        b = grid.node(resources=bm)
        b.setStreamHandler(SINK, Sink)
        a = grid.node(resources=am)
        for _ in range(3):
            grid.result(a.openStream(grid.addr(b), SINK, Recorder))
        grid.rawConnect(b, Recorder(), source=5)
        silent = grid.silentListener()
        dialling: Deferred[Any] = a.connect(silent.addr)
        grid.settle()
        self.assertGreater(am.status()["transient"]["conns_outbound"], 0)
        self.assertEqual(bm.status()["transient"]["conns_inbound"], 1)
        dialling.addErrback(lambda f: None)
        stopped = [a.stopService(), b.stopService()]
        grid.advance(10)
        for d in stopped:
            self.successResultOf(d)
        assertNothingHeld(self, am)
        assertNothingHeld(self, bm)
