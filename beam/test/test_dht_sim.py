"""
Tests for L{beam.testing.dhtsim}: the heap clock, the simulated network (latency,
loss, dead peers, liars, the real codec), the converged routing tables, and
the DHT's resilience properties at 1,000 nodes.
"""

from __future__ import annotations

import random

from twisted.internet.defer import CancelledError
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IReactorTime
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from beam.dht.kad import IKadNetwork
from beam.dht.messages import Message, MessageType, PeerInfo, Record
from beam.dht.routing import kadID
from beam.testing.dhtsim import (
    ScenarioResult,
    SimClock,
    SimNetwork,
    SimStreamReset,
    SimTimeout,
    Simulation,
    makeIdentities,
    percentile,
    randomPeerID,
    runScenario,
)
from beam.errors import DecodeError, ProtocolError, RecordRefused
from beam.identity.multiaddr import Multiaddr


class SimClockTests(SynchronousTestCase):
    def test_interface(self) -> None:
        """
        L{SimClock} provides L{IReactorTime} and its calls L{IDelayedCall}.
        """
        clock = SimClock()
        verifyObject(IReactorTime, clock)
        call = clock.callLater(1, lambda: None)
        self.assertEqual(call.getTime(), 1.0)
        self.assertTrue(call.active())

    def test_timeOrder(self) -> None:
        """
        Calls run in time order, ties in scheduling order, each seeing
        L{SimClock.seconds} equal to its own scheduled time.
        """
        clock = SimClock(100.0)
        seen: list[tuple[str, float]] = []
        for name, delay in [("c", 3), ("a", 1), ("b", 2), ("a2", 1)]:
            clock.callLater(delay, lambda n=name: seen.append((n, clock.seconds())))
        clock.advance(2.5)
        self.assertEqual(seen, [("a", 101.0), ("a2", 101.0), ("b", 102.0)])
        self.assertEqual(clock.seconds(), 102.5)
        clock.advance(1)
        self.assertEqual(seen[-1], ("c", 103.0))

    def test_callsScheduledWhileRunning(self) -> None:
        """
        A call scheduled by a running call for a time within the same
        advance runs in that advance.
        """
        clock = SimClock()
        seen: list[float] = []
        clock.callLater(1, lambda: clock.callLater(0.5, lambda: seen.append(clock.seconds())))
        clock.advance(2)
        self.assertEqual(seen, [1.5])

    def test_cancel(self) -> None:
        """
        A cancelled call never runs; cancelling twice or after it ran
        raises as Twisted's own delayed calls do.
        """
        clock = SimClock()
        seen: list[int] = []
        call = clock.callLater(1, seen.append, 1)
        call.cancel()
        self.assertFalse(call.active())
        self.assertRaises(AlreadyCancelled, call.cancel)
        done = clock.callLater(1, seen.append, 2)
        clock.advance(2)
        self.assertEqual(seen, [2])
        self.assertRaises(AlreadyCalled, done.cancel)
        self.assertRaises(AlreadyCalled, done.reset, 1)

    def test_resetAndDelay(self) -> None:
        """
        C{reset} moves a call relative to now and C{delay} relative to its
        time; it then runs once, at the new time.
        """
        clock = SimClock()
        seen: list[float] = []
        a = clock.callLater(1, lambda: seen.append(clock.seconds()))
        b = clock.callLater(1, lambda: seen.append(-clock.seconds()))
        a.reset(5)
        b.delay(2)
        self.assertEqual(a.getTime(), 5.0)
        clock.advance(10)
        self.assertEqual(seen, [-3.0, 5.0])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_getDelayedCalls(self) -> None:
        """
        L{SimClock.getDelayedCalls} lists only live calls.
        """
        clock = SimClock()
        a = clock.callLater(1, lambda: None)
        b = clock.callLater(2, lambda: None)
        b.cancel()
        self.assertEqual(list(clock.getDelayedCalls()), [a])

    def test_cancelledCallsDoNotAccumulate(self) -> None:
        """
        Memory is bounded by the live calls: many calls scheduled and
        cancelled (as every answered request's timeout is) are dropped
        from the heap.
        """
        clock = SimClock()
        for _ in range(100_000):
            clock.callLater(10, lambda: None).cancel()
        self.assertLess(clock.pending(), 3000)
        self.assertIsNone(clock.nextTime())

    def test_runUntil(self) -> None:
        """
        L{SimClock.runUntil} runs one instant at a time until the condition
        holds, and stops at the limit or when nothing is pending.
        """
        clock = SimClock()
        seen: list[int] = []
        for i in range(10):
            clock.callLater(i + 1, seen.append, i)
        self.assertTrue(clock.runUntil(lambda: len(seen) >= 3))
        self.assertEqual((seen, clock.seconds()), ([0, 1, 2], 3.0))
        self.assertFalse(clock.runUntil(lambda: False, limit=6.5))
        self.assertEqual(seen[-1], 5)
        self.assertFalse(clock.runUntil(lambda: False))
        self.assertEqual(len(seen), 10)


def _info(i: int) -> PeerInfo:
    rng = random.Random(i)
    return PeerInfo(randomPeerID(rng), (Multiaddr(f"/ip4/10.0.0.{i}/tcp/4001"),))


class SimNetworkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = SimClock()
        self.net = SimNetwork(self.clock, latency=0.05, requestTimeout=10.0, random=random.Random(1))
        self.a, self.b = _info(1), _info(2)
        self.received: list[tuple[PeerInfo, Message]] = []

        def echo(sender: PeerInfo, msg: Message) -> Message:
            self.received.append((sender, msg))
            return Message(msg.type, msg.key, closerPeers=(sender,))

        self.net.register(self.a, echo)
        self.net.register(self.b, echo)
        self.endpoint = self.net.endpoint(self.a)

    def test_interface(self) -> None:
        """
        A node's endpoint provides C{IKadNetwork}.
        """
        verifyObject(IKadNetwork, self.endpoint)

    def test_roundTrip(self) -> None:
        """
        A request reaches the target's handler, decoded, one latency later;
        the answer reaches the requester one latency after that, decoded
        from the bytes the real codec made.
        """
        msg = Message(MessageType.PUT_VALUE, b"/k/1", Record(b"/k/1", b"value"))
        d = self.endpoint.request(self.b, msg)
        self.clock.advance(0.049)
        self.assertEqual(self.received, [])
        self.clock.advance(0.002)
        self.assertEqual(self.received, [(self.a, msg)])
        self.assertNoResult(d)
        self.clock.advance(0.05)
        answer = self.successResultOf(d)
        self.assertEqual(answer, Message(MessageType.PUT_VALUE, b"/k/1", closerPeers=(self.a,)))
        self.assertIsNot(answer, msg)
        self.assertEqual(self.net.stats.requests, 1)
        self.assertEqual(self.net.stats.answers, 1)
        self.assertEqual(self.net.stats.byType, {"PUT_VALUE": 1})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_jitterIsPerLink(self) -> None:
        """
        With jitter each link has its own latency in
        [latency, latency * (1 + jitter)), the same both ways and every time.
        """
        self.net.jitter = 1.0
        latencies = {self.net.linkLatency(_info(1).peer, _info(i).peer) for i in range(2, 40)}
        self.assertGreater(len(latencies), 30)
        self.assertTrue(all(0.05 <= x < 0.1 for x in latencies))
        self.assertEqual(self.net.linkLatency(self.a.peer, self.b.peer),
                         self.net.linkLatency(self.b.peer, self.a.peer))

    def test_deadPeerTimesOut(self) -> None:
        """
        A dead peer never answers: the request errbacks with L{SimTimeout}
        after the network's timeout.
        """
        self.net.kill(self.b.peer)
        d = self.endpoint.request(self.b, Message(MessageType.PING))
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, SimTimeout)
        self.assertEqual((self.net.stats.toDead, self.net.stats.timeouts), (1, 1))
        self.assertEqual(self.received, [])

    def test_unknownPeerTimesOut(self) -> None:
        """
        A peer nobody registered (a liar's invention) behaves as dead.
        """
        d = self.endpoint.request(_info(99), Message(MessageType.PING))
        self.clock.advance(11)
        self.failureResultOf(d, SimTimeout)

    def test_loss(self) -> None:
        """
        With loss 1 every message is dropped; with loss 0.5 about half the
        requests (a request or its answer lost) go unanswered.
        """
        self.net.loss = 1.0
        d = self.endpoint.request(self.b, Message(MessageType.PING))
        self.clock.advance(11)
        self.failureResultOf(d, SimTimeout)
        self.assertEqual(self.received, [])
        self.net.loss = 0.5
        results: list[object] = []
        for _ in range(400):
            self.endpoint.request(self.b, Message(MessageType.PING)).addBoth(results.append)
        self.clock.advance(11)
        answered = sum(isinstance(r, Message) for r in results)
        # A request survives both ways with probability 1/4; the rest time out.
        self.assertTrue(60 < answered < 140, answered)
        self.assertEqual(len(results), 400)

    def test_cancel(self) -> None:
        """
        Cancelling a request errbacks it at once and drops its timers'
        effect: the late answer is ignored.
        """
        d = self.endpoint.request(self.b, Message(MessageType.PING))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(20)
        self.assertEqual(self.net.stats.answers, 0)
        self.assertEqual(self.net.stats.timeouts, 0)

    def test_handlerError(self) -> None:
        """
        A handler that raises resets the stream (the requester's Deferred
        errbacks one latency later); a L{BeamError} counts as a refusal,
        anything else as a handler error.
        """
        c, e = _info(3), _info(4)
        self.net.register(c, lambda s, m: (_ for _ in ()).throw(RecordRefused("no")))
        self.net.register(e, lambda s, m: 1 // 0)
        d1 = self.endpoint.request(c, Message(MessageType.PING))
        d2 = self.endpoint.request(e, Message(MessageType.PING))
        self.clock.advance(0.11)
        self.failureResultOf(d1, SimStreamReset)
        self.failureResultOf(d2, SimStreamReset)
        self.assertEqual((self.net.stats.refused, self.net.stats.handlerErrors), (1, 1))
        self.flushLoggedErrors(ZeroDivisionError)

    def test_liarsAnswerGarbage(self) -> None:
        """
        A liar answers with garbage: bytes that do not decode (the request
        errbacks with a L{ProtocolError}), answers of the wrong type, or
        made-up peers that are not on the network (with a record that is
        not the owner's for GET_VALUE).  It never answers with a real peer.
        """
        self.net.makeLiar(self.b.peer)
        kinds = {"undecodable": 0, "wrongType": 0, "fakePeers": 0, "record": 0}
        for _ in range(300):
            d = self.endpoint.request(self.b, Message(MessageType.GET_VALUE, b"/k/x"))
            self.clock.advance(0.11)
            result: list[object] = []
            d.addBoth(result.append)
            answer = result[0]
            if not isinstance(answer, Message):
                self.assertTrue(answer.check(ProtocolError, DecodeError))  # type: ignore[attr-defined]
                kinds["undecodable"] += 1
            elif answer.type != MessageType.GET_VALUE:
                kinds["wrongType"] += 1
            else:
                kinds["fakePeers"] += 1
                self.assertEqual(len(answer.closerPeers), 20)
                for p in answer.closerPeers:
                    self.assertFalse(self.net.isAlive(p.peer))
                if answer.record is not None:
                    kinds["record"] += 1
        self.assertEqual(self.received, [])
        self.assertEqual(self.net.stats.lies, 300)
        self.assertTrue(all(kinds.values()), kinds)


class RoutingFillTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = Simulation(300, seed=3)
        self.sim.fillRoutingTables()

    def test_bucketsAsConverged(self) -> None:
        """
        Every bucket of every node holds min(k, peers in its range): all the
        peers of a sparse bucket (so a node knows its near neighbours), k of
        a crowded one.
        """
        sim = self.sim
        for peer in sim.peers[:50]:
            table = peer.node.routingTable
            counts: dict[int, int] = {}
            for other in sim.peers:
                if other is not peer:
                    i = min(255, 256 - (other.kid ^ peer.kid).bit_length())
                    counts[i] = counts.get(i, 0) + 1
            got = {b.index: len(b.entries) for b in table.buckets()}
            self.assertEqual(got, {i: min(20, c) for i, c in counts.items()})

    def test_lookupFindsTrueClosest(self) -> None:
        """
        With every node honest and up, a FIND_NODE lookup from any node
        returns exactly the 20 peers nearest to the key.
        """
        sim = self.sim
        rng = random.Random(5)
        for _ in range(10):
            key = rng.randbytes(32)
            asker = rng.choice(sim.peers)
            result = sim.runUntilFired(asker.node.closestPeers(key))
            truth = [p.info.peer for p in sim.trueClosest(kadID(key))]
            # The asker is never in its own answer.
            truth = [p for p in truth if p != asker.info.peer]
            self.assertEqual([i.peer for i in result.closest][: len(truth)], truth[:20])

    def test_bootstrapAgrees(self) -> None:
        """
        Fresh nodes joining by the real bootstrap find the same closest peers
        as the global list says: the filled tables are what the protocol
        converges to.
        """
        self.assertGreaterEqual(self.sim.checkBootstrap(3), 0.95)


class DeterminismTests(SynchronousTestCase):
    def test_sameSeedSameRun(self) -> None:
        """
        A scenario is a function of its seed: two runs give the same figures.
        """
        ids = makeIdentities(200, 9)
        a, _ = runScenario("x", 200, 20, kill=0.2, seed=9, identities=ids)
        b, _ = runScenario("x", 200, 20, kill=0.2, seed=9, identities=ids)
        self.assertEqual(a, b)

    def test_percentile(self) -> None:
        """
        L{percentile} is nearest-rank: an observed value.
        """
        self.assertEqual(percentile([3, 1, 2], 50), 2)
        self.assertEqual(percentile(list(range(1, 101)), 99), 99)
        self.assertEqual(percentile(list(range(1, 101)), 100), 100)
        self.assertEqual(percentile([5], 99), 5)


class ResilienceTests(SynchronousTestCase):
    """
    Properties of a correct DHT at 1,000 nodes with 50 ms links: counts,
    not wall times, so they are stable.  (bench/bench_dht.py runs the same
    at 10,000 nodes.)
    """

    nodes = 1000
    names = 100

    def assertHealthy(self, result: ScenarioResult, sim: Simulation) -> None:
        self.assertEqual(result.lookups, 2 * self.names)
        self.assertGreaterEqual(result.success, 0.99, result)
        self.assertLessEqual(result.roundsMedian, 4, result)
        self.assertLess(result.timeMedian, 2.0, result)
        self.assertEqual(sim.network.stats.handlerErrors, 0)

    def test_noFaults(self) -> None:
        """
        With every node up and honest, every name resolves, each record was
        stored on the k closest nodes, and lookups take at most 3 rounds.
        (C{published} counts the I{other} nodes that stored it: k - 1 when
        the publisher is itself among the k closest, else k.)
        """
        result, sim = runScenario("none", self.nodes, self.names, perName=2, seed=1)
        self.assertHealthy(result, sim)
        self.assertEqual(result.success, 1.0)
        self.assertGreaterEqual(result.published, 19.0)
        self.assertLessEqual(result.published, 20.0)
        self.assertLessEqual(result.roundsP99, 3)

    def test_thirtyPercentKilled(self) -> None:
        """
        With 30% of the nodes killed after publishing, at least 99% of the
        names still resolve, in at most 4 rounds (median).
        """
        result, sim = runScenario("kill30", self.nodes, self.names, perName=2, kill=0.3, seed=2)
        self.assertHealthy(result, sim)
        self.assertGreater(sim.network.stats.toDead, 0)

    def test_tenPercentLiars(self) -> None:
        """
        With 10% of the nodes answering garbage (made-up peers, records
        signed by themselves, undecodable bytes), at least 99% of the names
        resolve to their owner's record, in at most 4 rounds (median).
        """
        result, sim = runScenario("liars10", self.nodes, self.names, perName=2, liars=0.1, seed=3)
        self.assertHealthy(result, sim)
        self.assertGreater(sim.network.stats.lies, 0)
        # Liars store nothing, so records land on fewer than k nodes.
        self.assertLess(result.published, 20.0)
        self.assertGreater(result.published, 15.0)
