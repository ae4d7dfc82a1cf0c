"""
Deterministic tests of a L{TunnelForward}'s lifecycle (the machine in
L{beam.tunnel._forward_machine}): a fake host (L{FakeHost}) whose dials the
test fires or fails, a L{MemoryReactorClock} for the local port and time,
and Twisted's L{backoffPolicy} with the jitter pinned to zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, cast

from automat import NoTransition
from twisted.application.internet import backoffPolicy
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from beam.errors import BeamError, DialError
from beam.identity.keys import Identity, PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.node import Node
from beam.p2p.transport.memory import MemoryNetwork, MemoryTransport, flush
from beam.tunnel import HostUnreachable, TunnelForward
from beam.tunnel._forward_machine import INPUTS, STATES, ForwardMachine, renderTable

HOST_ADDR = Multiaddr.fromString("/ip4/192.0.2.1/tcp/4001")
MOVED_ADDR = Multiaddr.fromString("/ip4/198.51.100.7/tcp/4001")

#: Twisted's policy as ClientService uses it, without the random jitter.
POLICY = backoffPolicy(jitter=lambda: 0.0)


class FakeConnection:
    """
    A connection to a peer, as far as a forward looks at it.
    """

    def __init__(self, peer: PeerID) -> None:
        self.remotePeer = peer
        self.closed = False
        self.acceptsStreams = True


class FakePeerStore:
    """
    Records addresses per peer, with their source.
    """

    def __init__(self) -> None:
        self.known: dict[PeerID, list[tuple[Multiaddr, str]]] = {}
        self.removed: list[PeerID] = []

    def addAddrs(self, peer: PeerID, addrs: Any, source: str, ttl: Optional[float] = None) -> None:
        known = self.known.setdefault(peer, [])
        for addr in addrs:
            if all(a != addr for a, _ in known):
                known.append((addr, source))

    def addrs(self, peer: PeerID) -> list[Multiaddr]:
        return [a for a, _ in self.known.get(peer, [])]

    def removeAddrs(self, peer: PeerID) -> None:
        self.removed.append(peer)
        self.known.pop(peer, None)


class FakeHost:
    """
    The part of L{beam.p2p.interfaces.IHost} a forward uses.  Dials and
    stream opens wait until the test settles them; connection events are
    sent by L{up} and L{down}, in the node's order ("connected" before the
    dial's Deferred fires).
    """

    def __init__(self) -> None:
        self.peerStore = FakePeerStore()
        self.tags: dict[PeerID, set[str]] = {}
        self.observers: list[Callable[[str, Any], None]] = []
        self.conns: dict[PeerID, FakeConnection] = {}
        self.dials: list[Deferred[Any]] = []
        self.cancelledDials = 0
        self.streams: list[Deferred[Any]] = []

    def protect(self, peer: PeerID, tag: str) -> None:
        self.tags.setdefault(peer, set()).add(tag)

    def unprotect(self, peer: PeerID, tag: str) -> None:
        self.tags.get(peer, set()).discard(tag)
        if not self.tags.get(peer):
            self.tags.pop(peer, None)

    def addConnectionObserver(self, observer: Callable[[str, Any], None]) -> None:
        self.observers.append(observer)

    def removeConnectionObserver(self, observer: Callable[[str, Any], None]) -> None:
        if observer in self.observers:
            self.observers.remove(observer)

    def connectionTo(self, peer: PeerID) -> Optional[FakeConnection]:
        return self.conns.get(peer)

    def connect(self, peer: PeerID) -> Deferred[Any]:
        if peer in self.conns:
            return succeed(self.conns[peer])

        def cancel(d: Deferred[Any]) -> None:
            self.cancelledDials += 1
            self.dials.remove(d)

        d: Deferred[Any] = Deferred(cancel)
        self.dials.append(d)
        return d

    def openStream(self, peer: PeerID, protocols: list[str], factory: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.streams.append(d)
        return d

    # -- what the test does --------------------------------------------

    def _notify(self, event: str, conn: FakeConnection) -> None:
        for observer in list(self.observers):
            observer(event, conn)

    def up(self, peer: PeerID) -> FakeConnection:
        conn = self.conns[peer] = FakeConnection(peer)
        self._notify("connected", conn)
        return conn

    def down(self, peer: PeerID) -> None:
        conn = self.conns.pop(peer)
        conn.closed = True
        self._notify("disconnected", conn)

    def dialSucceeds(self, peer: PeerID) -> None:
        conn = self.up(peer)
        self.dials.pop(0).callback(conn)

    def dialFails(self, reason: str = "connection refused") -> None:
        self.dials.pop(0).errback(DialError(reason))


class RefusingReactor(MemoryReactorClock):
    """
    A reactor on which every port is taken.
    """

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class SlowPort:
    """
    A listening port whose closing the test finishes.
    """

    def __init__(self) -> None:
        self.closing: Optional[Deferred[None]] = None

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 4242)

    def stopListening(self) -> Deferred[None]:
        self.closing = Deferred()
        return self.closing


class SlowClosingReactor(MemoryReactorClock):
    """
    A reactor whose ports close only when the test says so.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[SlowPort] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        self.tcpServers.append((port, factory, backlog, interface))
        self.ports.append(SlowPort())
        return self.ports[-1]


class ForwardTestsMixin:
    """
    Builds a forward on a fake host and a memory reactor.
    """

    def makeForward(self, reactor: Optional[MemoryReactorClock] = None, **kw: Any) -> TunnelForward:
        self.reactor = reactor if reactor is not None else MemoryReactorClock()
        self.host = FakeHost()
        self.peer = Identity.generate().peerID
        kw.setdefault("retryPolicy", POLICY)
        forward = TunnelForward(self.reactor, self.host, self.peer, [HOST_ADDR], "web", **kw)
        self.forward = forward
        return forward

    def started(self, **kw: Any) -> TunnelForward:
        forward = self.makeForward(**kw)
        self.successResultOf(forward.startService())  # type: ignore[attr-defined]
        return forward

    def connected(self, **kw: Any) -> TunnelForward:
        forward = self.started(**kw)
        self.host.dialSucceeds(self.peer)
        return forward

    def steady(self, **kw: Any) -> TunnelForward:
        forward = self.connected(**kw)
        self.reactor.advance(TunnelForward.steadyAfter)
        return forward

    def pendingDelays(self) -> list[float]:
        now = self.reactor.seconds()
        return sorted(call.getTime() - now for call in self.reactor.getDelayedCalls() if call.active())

    def localConnection(self) -> StringTransport:
        """
        An app connects to the forward's local port.
        """
        factory = self.reactor.tcpServers[-1][1]
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        assert proto is not None
        transport = StringTransport()
        proto.makeConnection(transport)
        return transport

    def captureLogs(self) -> list[str]:
        lines: list[str] = []

        def observer(event: LogEvent) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(cast(ILogObserver, observer))
        self.addCleanup(globalLogPublisher.removeObserver, observer)  # type: ignore[attr-defined]
        return lines


class StartTests(ForwardTestsMixin, SynchronousTestCase):
    def test_listensThenDials(self) -> None:
        """
        Starting listens on the local port (the returned Deferred fires
        once it listens), then dials the host with the given address
        learnt as a user address, keeps the host connection alive and
        watches connection events; the state is C{connecting}.
        """
        forward = self.makeForward()
        self.assertEqual(forward.state, "stopped")
        self.successResultOf(forward.startService())
        [(port, _, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface, backlog), (0, "127.0.0.1", 1024))
        self.assertIsNotNone(forward.localAddress)
        self.assertEqual(len(self.host.dials), 1)
        self.assertEqual(self.host.peerStore.known[self.peer], [(HOST_ADDR, "user")])
        self.assertIn(self.peer, self.host.tags)
        self.assertEqual(len(self.host.observers), 1)
        self.assertEqual(forward.state, "connecting")

    def test_connect(self) -> None:
        """
        When the dial succeeds the state is C{connected}, with one line
        logged; nothing else is dialled.
        """
        logs = self.captureLogs()
        forward = self.started()
        self.host.dialSucceeds(self.peer)
        self.assertEqual(forward.state, "connected")
        self.assertEqual(self.host.dials, [])
        self.assertEqual([line for line in logs if "connected" in line], [f"tunnel to {self.peer}/web: connected"])

    def test_alreadyConnected(self) -> None:
        """
        A node already connected to the host answers the dial at once: the
        forward is connected as soon as it listens.
        """
        forward = self.makeForward()
        self.host.up(self.peer)
        self.successResultOf(forward.startService())
        self.assertEqual(forward.state, "connected")

    def test_listenFailure(self) -> None:
        """
        A local port that cannot be opened fails start with one line naming
        the address; the host is neither dialled nor held, and stopping
        afterwards (as the daemon does) is harmless.
        """
        forward = self.makeForward(RefusingReactor(), localPort=8080)
        f = self.failureResultOf(forward.startService(), BeamError)
        self.assertIn("cannot listen on 127.0.0.1:8080", str(f.value))
        self.assertEqual((self.host.dials, self.host.tags, self.host.observers), ([], {}, []))
        self.assertEqual(forward.state, "stopped")
        self.successResultOf(forward.stopService())
        self.assertEqual(self.pendingDelays(), [])

    def test_startTwice(self) -> None:
        """
        Starting a started forward changes nothing: one port, one dial.
        """
        forward = self.started()
        self.successResultOf(forward._machine.start())
        self.assertEqual((len(self.reactor.tcpServers), len(self.host.dials)), (1, 1))

    def test_dialFailsButHostConnectedMeanwhile(self) -> None:
        """
        A dial that fails while the host connected to us meanwhile (its
        "connected" event arrived during our dial, and was left to the
        dial to settle) counts as connected, not as a failure.
        """
        forward = self.started()
        self.host.up(self.peer)
        self.assertEqual(forward.state, "connecting")
        self.host.dialFails("timed out")
        self.assertEqual(forward.state, "connected")
        self.assertEqual(self.pendingDelays(), [TunnelForward.steadyAfter])


class ReconnectTests(ForwardTestsMixin, SynchronousTestCase):
    def test_lostSteadyConnectionRedialsAtOnce(self) -> None:
        """
        When a connection that has been up for a while ends (the host's
        node reaped it, the network blinked), the forward re-dials at once
        and new local connections wait for that dial instead of being
        refused.
        """
        forward = self.steady()
        self.host.down(self.peer)
        self.assertEqual(len(self.host.dials), 1)
        self.assertEqual(forward.state, "connecting")
        self.localConnection()
        self.assertEqual(len(self.host.streams), 1)
        self.host.dialSucceeds(self.peer)
        self.assertEqual(forward.state, "connected")

    def test_connectionLostBackoffReconnect(self) -> None:
        """
        The host goes away: the immediate re-dial fails, the forward waits
        the policy's first delay (state C{unreachable: <reason>}), dials
        again, and is connected when the host is back.
        """
        forward = self.steady()
        self.host.down(self.peer)
        self.host.dialFails("connection refused")
        self.assertEqual(forward.state, "unreachable: connection refused")
        self.assertEqual(self.host.dials, [])
        self.assertEqual(self.pendingDelays(), [POLICY(1)])
        self.reactor.advance(POLICY(1))
        self.assertEqual(len(self.host.dials), 1)
        self.assertEqual(forward.state, "connecting")
        self.host.dialSucceeds(self.peer)
        self.assertEqual(forward.state, "connected")

    def test_shortConnectionCountsAsFailure(self) -> None:
        """
        A connection that ends before it was steady is not re-dialled at
        once but after a growing backoff, so a host that accepts and
        drops us at once is not dialled in a tight loop.
        """
        forward = self.connected()
        delays = []
        for _ in range(3):
            self.host.down(self.peer)
            self.assertEqual(forward.state, "unreachable: the connection to the host was lost")
            self.assertEqual(self.host.dials, [])
            [delay] = self.pendingDelays()
            delays.append(delay)
            self.reactor.advance(delay)
            self.host.dialSucceeds(self.peer)
        self.assertEqual(delays, [POLICY(1), POLICY(2), POLICY(3)])

    def test_backoffGrowsToTheMaximum(self) -> None:
        """
        Each failed dial waits longer, by Twisted's backoff policy (1.5x
        from 1.5 s), up to its 60 s maximum; one dial at a time.
        """
        forward = self.started()
        delays = []
        for _ in range(14):
            self.host.dialFails()
            [delay] = self.pendingDelays()
            delays.append(delay)
            self.reactor.advance(delay)
            self.assertEqual(len(self.host.dials), 1)
        self.assertEqual(delays, [POLICY(n) for n in range(1, 15)])
        self.assertEqual(delays[0], 1.5)
        self.assertEqual(delays[-3:], [60.0, 60.0, 60.0])
        self.assertTrue(all(a <= b for a, b in zip(delays, delays[1:])))
        self.assertEqual(forward.state, "connecting")

    def test_defaultPolicyIsTwistedBackoffWithJitter(self) -> None:
        """
        Without a retry policy the first wait is Twisted's default
        C{backoffPolicy()}: 1.5 s plus up to 1 s of jitter.
        """
        forward = self.makeForward(retryPolicy=None)
        self.successResultOf(forward.startService())
        self.host.dialFails()
        [delay] = self.pendingDelays()
        self.assertTrue(1.5 <= delay < 2.5, delay)

    def test_failuresResetOnceSteady(self) -> None:
        """
        After a connection has been steady, the next failure waits the
        first delay again.
        """
        self.started()
        for _ in range(4):
            self.host.dialFails()
            self.reactor.advance(self.pendingDelays()[0])
        self.host.dialSucceeds(self.peer)
        self.reactor.advance(TunnelForward.steadyAfter)
        self.host.down(self.peer)
        self.host.dialFails()
        self.assertEqual(self.pendingDelays(), [POLICY(1)])

    def test_hostConnectsWhileWaiting(self) -> None:
        """
        A connection to the host that appears while the forward waits (the
        host dialled us, another service connected) ends the wait at once:
        connected, no retry left scheduled.
        """
        forward = self.started()
        self.host.dialFails()
        self.host.up(self.peer)
        self.assertEqual(forward.state, "connected")
        self.assertEqual(self.pendingDelays(), [TunnelForward.steadyAfter])
        self.reactor.advance(100)
        self.assertEqual(self.host.dials, [])

    def test_otherPeersIgnored(self) -> None:
        """
        Connection events about other peers change nothing.
        """
        forward = self.steady()
        other = Identity.generate().peerID
        self.host.up(other)
        self.host.down(other)
        self.assertEqual(forward.state, "connected")
        self.assertEqual(self.host.dials, [])

    def test_streamFailureStartsBackoff(self) -> None:
        """
        When the node cannot reach the host to open a tunnel stream (its
        own dial failed), the forward counts a failure and backs off.
        """
        forward = self.steady()
        del self.host.conns[self.peer]
        self.localConnection()
        self.host.streams.pop().errback(DialError("no route to host"))
        self.assertEqual(forward.state, "unreachable: no route to host")
        self.assertEqual(self.pendingDelays(), [POLICY(1)])
        self.assertEqual(forward.stats.failed, 1)


class ResolveTests(ForwardTestsMixin, SynchronousTestCase):
    def test_reresolveAfterFailure(self) -> None:
        """
        With a resolver, each retry first re-resolves the host's name; its
        addresses replace what the node knew, and only then is the host
        dialled (at its new address).
        """
        lookups: list[Deferred[Any]] = []

        def resolveAddrs() -> Deferred[Any]:
            lookups.append(Deferred())
            return lookups[-1]

        forward = self.started(resolveAddrs=resolveAddrs)
        self.assertEqual(lookups, [])
        self.host.dialFails()
        self.reactor.advance(POLICY(1))
        self.assertEqual(len(lookups), 1)
        self.assertEqual(self.host.dials, [])
        self.assertEqual(forward.state, "unreachable: connection refused")
        lookups[0].callback([MOVED_ADDR])
        self.assertEqual(self.host.peerStore.removed, [self.peer])
        self.assertEqual(self.host.peerStore.addrs(self.peer), [MOVED_ADDR])
        self.assertEqual(len(self.host.dials), 1)
        self.host.dialFails()
        self.reactor.advance(POLICY(2))
        self.assertEqual(len(lookups), 2)

    def test_resolveFailureStillRedials(self) -> None:
        """
        A failed re-resolution is logged and the host is dialled at the
        addresses already known.
        """
        logs = self.captureLogs()
        self.started(resolveAddrs=lambda: fail(BeamError("name not found")))
        self.host.dialFails()
        self.reactor.advance(POLICY(1))
        self.assertEqual(len(self.host.dials), 1)
        self.assertEqual(self.host.peerStore.addrs(self.peer), [HOST_ADDR])
        self.assertIn(f"tunnel to {self.peer}/web: re-resolving failed: name not found", logs)

    def test_hostConnectsWhileResolving(self) -> None:
        """
        A connection to the host appearing during the lookup ends it: the
        lookup is cancelled and nothing is dialled.
        """
        cancelled: list[Deferred[Any]] = []
        lookup: Deferred[Any] = Deferred(cancelled.append)
        forward = self.started(resolveAddrs=lambda: lookup)
        self.host.dialFails()
        self.reactor.advance(POLICY(1))
        self.host.up(self.peer)
        self.assertEqual(forward.state, "connected")
        self.assertEqual(cancelled, [lookup])
        self.assertEqual(self.host.dials, [])


class FailFastTests(ForwardTestsMixin, SynchronousTestCase):
    def test_failFastWhileUnreachable(self) -> None:
        """
        While the last attempt failed, a new local connection is closed at
        once with one log line saying why, without trying the host.
        """
        logs = self.captureLogs()
        forward = self.started()
        self.host.dialFails("connection refused")
        transport = self.localConnection()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.host.streams, [])
        self.assertEqual(forward.stats.failed, 1)
        self.assertIn(f"tunnel to {self.peer}/web failed: host unreachable (connection refused)", logs)

    def test_failFastWhileRetrying(self) -> None:
        """
        Also while re-dialling after a failure (a dial to a host that is
        down may take until its timeout), local connections fail fast; the
        refusal is a L{HostUnreachable}.
        """
        self.started()
        self.host.dialFails("connection refused")
        self.reactor.advance(POLICY(1))
        self.assertEqual(len(self.host.dials), 1)
        self.assertIsInstance(self.forward._machine.refusal(), HostUnreachable)
        self.assertTrue(self.localConnection().disconnecting)
        self.assertEqual(self.host.streams, [])

    def test_firstDialNotFailFast(self) -> None:
        """
        During the first dial, local connections wait for it (their stream
        open shares it) instead of being refused.
        """
        self.started()
        transport = self.localConnection()
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(self.host.streams), 1)


class StopTests(ForwardTestsMixin, SynchronousTestCase):
    def assertNothingLeft(self) -> None:
        self.assertEqual(self.host.dials, [])
        self.assertEqual(self.pendingDelays(), [])
        self.assertEqual((self.host.tags, self.host.observers), ({}, []))
        self.assertIsNone(self.forward.listeningPort)
        self.assertEqual(self.forward.state, "stopped")

    def test_stopWhileConnecting(self) -> None:
        """
        Stopping while dialling cancels the dial, releases the host and
        closes the port; nothing happens later.
        """
        forward = self.started()
        self.successResultOf(forward.stopService())
        self.assertEqual(self.host.cancelledDials, 1)
        self.assertNothingLeft()
        self.reactor.advance(1000)
        self.assertNothingLeft()

    def test_stopWhileWaiting(self) -> None:
        """
        Stopping during the backoff cancels the retry: no timer and no
        dial is left behind.
        """
        forward = self.started()
        self.host.dialFails()
        self.successResultOf(forward.stopService())
        self.assertNothingLeft()
        self.reactor.advance(1000)
        self.assertNothingLeft()

    def test_stopWhileResolving(self) -> None:
        """
        Stopping during a re-resolution cancels it, and its late answer
        dials nothing.
        """
        cancelled: list[Deferred[Any]] = []
        lookup: Deferred[Any] = Deferred(cancelled.append)
        forward = self.started(resolveAddrs=lambda: lookup)
        self.host.dialFails()
        self.reactor.advance(POLICY(1))
        self.successResultOf(forward.stopService())
        self.assertEqual(cancelled, [lookup])
        self.assertNothingLeft()

    def test_stopWhileConnected(self) -> None:
        """
        Stopping while connected cancels the steady timer and releases the
        host connection (the node may reap it again); losing it afterwards
        dials nothing.
        """
        forward = self.connected()
        self.successResultOf(forward.stopService())
        self.assertNothingLeft()
        self.host.down(self.peer)
        self.assertNothingLeft()

    def test_stopTwice(self) -> None:
        """
        Stopping twice, or before starting, is harmless.
        """
        forward = self.makeForward()
        self.successResultOf(forward.stopService())
        self.successResultOf(forward.startService())
        self.successResultOf(forward.stopService())
        self.successResultOf(forward.stopService())
        self.assertNothingLeft()

    def test_stopWaitsForThePort(self) -> None:
        """
        Stop fires once the local port is closed; a second stop meanwhile
        waits for the same; local connections are refused meanwhile.
        """
        reactor = SlowClosingReactor()
        forward = self.makeForward(reactor)
        self.successResultOf(forward.startService())
        first, second = forward.stopService(), forward.stopService()
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(forward.state, "stopped")
        self.assertIsNotNone(forward._machine.refusal())
        closing = reactor.ports[0].closing
        assert closing is not None
        closing.callback(None)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertNothingLeft()

    def test_restart(self) -> None:
        """
        A stopped forward starts again: a new port and a new dial.  Started
        while its port is still closing, it listens again once closed.
        """
        reactor = SlowClosingReactor()
        forward = self.makeForward(reactor)
        self.successResultOf(forward.startService())
        stopping = forward.stopService()
        restarted = forward.startService()
        self.assertNoResult(restarted)
        self.assertEqual(len(reactor.tcpServers), 1)
        closing = reactor.ports[0].closing
        assert closing is not None
        closing.callback(None)
        self.successResultOf(stopping)
        self.successResultOf(restarted)
        self.assertEqual(len(reactor.tcpServers), 2)
        self.assertEqual(len(self.host.dials), 1)
        self.assertEqual(forward.state, "connecting")

    def test_stopAbortsTunnels(self) -> None:
        """
        Stopping aborts the tunnelled connections.
        """
        forward = self.connected()
        aborted = []

        class FakeSplice:
            def abort(self) -> None:
                aborted.append(self)

        forward._splices.add(FakeSplice())  # type: ignore[arg-type]
        self.successResultOf(forward.stopService())
        self.assertEqual(len(aborted), 1)


class MachineTests(ForwardTestsMixin, SynchronousTestCase):
    def test_everyPairHandled(self) -> None:
        """
        The machine's table declares a transition for every state and
        every input (the ignored ones on purpose), so no input can raise
        L{NoTransition} at run time.
        """
        automaton = ForwardMachine.__automat_automaton__  # type: ignore[attr-defined]
        missing = []
        for state in automaton.states():
            for input in automaton.inputAlphabet():
                try:
                    automaton.outputForInput(state, input)
                except NoTransition:
                    missing.append((state.name, input))
        self.assertEqual(missing, [])
        self.assertEqual(len(automaton.states()), 10)

    def test_docsShowTheTable(self) -> None:
        """
        docs/state-machines/tunnel-forward.md shows the table in the code,
        with every state and every input but the two queries.
        """
        automaton = ForwardMachine.__automat_automaton__  # type: ignore[attr-defined]
        self.assertEqual(sorted(STATES), sorted(s.name for s in automaton.states()))
        self.assertEqual(sorted(INPUTS + ("refusal", "status")), sorted(automaton.inputAlphabet()))
        doc = (Path(__file__).resolve().parents[2] / "docs" / "state-machines" / "tunnel-forward.md").read_text()
        self.assertIn(renderTable(), doc)

    def test_statusNames(self) -> None:
        """
        The status strings are the ones C{beam status} has always shown.
        """
        forward = self.makeForward()
        seen = {forward.state}
        self.successResultOf(forward.startService())
        seen.add(forward.state)
        self.host.dialFails("refused")
        seen.add(forward.state)
        self.host.up(self.peer)
        seen.add(forward.state)
        self.assertEqual(seen, {"stopped", "connecting", "unreachable: refused", "connected"})


class RealNodeTests(ForwardTestsMixin, SynchronousTestCase):
    """
    The same lifecycle between two real L{Node}s (Noise, yamux, identify)
    on the in-memory transport, all on one L{MemoryReactorClock}: the
    node's connection events arrive in the order the machine expects.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_700_000_000.0)
        self.network = MemoryNetwork()

    def node(self, identity: Optional[Identity] = None, listen: str = "/memory/0", **kw: Any) -> Node:
        node = Node(self.reactor, identity or Identity.generate(), [listen],
                    transports=[MemoryTransport(self.reactor, self.network)], **kw)
        d = node.startService()
        self.settle()
        self.successResultOf(d)

        def stop() -> None:
            stopped = node.stopService()
            self.advance(node.closeTimeout + 1)
            self.successResultOf(stopped)

        self.addCleanup(stop)
        return node

    def settle(self) -> None:
        flush(self.reactor)

    def advance(self, seconds: float) -> None:
        """
        Move time forward, firing each timer at its own time.
        """
        target = self.reactor.seconds() + seconds
        self.settle()
        while True:
            due = [c.getTime() for c in self.reactor.getDelayedCalls()]
            if not due or min(due) > target:
                break
            self.reactor.advance(max(0.0, min(due) - self.reactor.seconds()))
            self.settle()
        self.reactor.advance(target - self.reactor.seconds())
        self.settle()

    def forwardTo(self, hostNode: Node) -> TunnelForward:
        client = self.node()
        forward = TunnelForward(self.reactor, client, hostNode.peerID, [hostNode.listenAddrs[0]], "web",
                                retryPolicy=POLICY)
        self.successResultOf(forward.startService())
        self.addCleanup(forward.stopService)
        self.settle()
        return forward

    def test_hostRestarts(self) -> None:
        """
        The host node stops: the forward keeps its local port, reports the
        host unreachable and refuses local connections at once; the host
        comes back on the same address with the same identity, and after
        the backoff the forward is connected again.
        """
        identity = Identity.generate()
        host = self.node(identity)
        forward = self.forwardTo(host)
        self.assertEqual(forward.state, "connected")
        self.advance(TunnelForward.steadyAfter)
        address = str(host.listenAddrs[0])
        host.stopService()
        self.advance(host.closeTimeout + 1)
        self.assertTrue(forward.state.startswith("unreachable: "), forward.state)
        self.assertIsNotNone(forward.listeningPort)
        self.assertTrue(self.localConnection().disconnecting)
        self.node(identity, address)
        self.advance(POLICY(2))
        self.assertEqual(forward.state, "connected")

    def test_hostReapsIdleConnection(self) -> None:
        """
        The host's node closes our idle connection (only our side protects
        it): the forward re-dials at once and never reports the host
        unreachable or refuses a local connection.
        """
        logs = self.captureLogs()
        host = self.node(idleTimeout=30.0)
        forward = self.forwardTo(host)
        client = forward.node
        first = client.connectionTo(host.peerID)
        self.advance(60.0)
        self.assertTrue(first.closed)
        self.assertEqual(forward.state, "connected")
        second = client.connectionTo(host.peerID)
        self.assertIsNotNone(second)
        self.assertIsNot(second, first)
        self.assertTrue([line for line in logs if "connection to the host lost; reconnecting" in line])
        self.assertEqual([line for line in logs if "unreachable" in line], [])
