"""
Tests for the HTTP inspector's batched mode (L{RequestStore.batchDelay}):
tunnel observers only queue what they see and the store parses the queue
later, which must give exactly what parsing at once gives.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beam.test.test_inspect_http1 import CHUNKED_REPLY, GET, OK5, POST_CHUNKED, _exchanges
from beam.tunnel.inspect.http1 import HTTPObserver
from beam.tunnel.inspect.store import BATCH_BYTES, BATCH_ENTRIES, RequestStore


class _FakeSplice:
    """
    Just the attribute the observer clears when it detaches.
    """

    observer: Any = None


def _make(batchDelay: Any = 0.01) -> tuple[RequestStore, HTTPObserver, _FakeSplice, Clock]:
    clock = Clock()
    store = RequestStore(clock, wallClock=lambda: 1000.0 + clock.seconds(), batchDelay=batchDelay)
    observer = store.observer("web", "peer1")
    splice = _FakeSplice()
    observer.attach(splice)
    return store, observer, splice, clock


def _run(steps: list[tuple[str, bytes, float]], batchDelay: Any) -> Any:
    """
    Feed C{steps} (direction, bytes, seconds to wait after) through a
    splice-like caller, then let every queued read be parsed.

    @return: everything observable: each exchange's detail JSON, the
        counters, whether the observer stopped.
    """
    store, observer, splice, clock = _make(batchDelay)
    for direction, data, wait in steps:
        if splice.observer is not None:
            if direction == "close":
                obs, splice.observer = splice.observer, None
                obs.closed()
            elif direction == "remote":
                splice.observer.fromRemote(data)
            else:
                splice.observer.fromLocal(data)
        clock.advance(wait)
    clock.advance(1)
    store.flush()
    return [e.detailJSON() for e in store.list()], store.status(), observer.stopped


class BatchTests(SynchronousTestCase):
    """
    A batching store parses later what it queued, with the times it was
    queued, in order, and bounded.
    """

    def test_queuedUntilTheDelay(self) -> None:
        """
        Reads are only queued; the delay after the first one, they are
        parsed, with the durations and start times they had when they were
        read.
        """
        store, observer, splice, clock = _make(0.05)
        clock.advance(2)
        observer.fromRemote(GET)
        clock.advance(0.01)
        observer.fromLocal(OK5)
        self.assertEqual(len(store), 0)
        clock.advance(0.04)
        (ex,) = store.list()
        assert ex.response is not None
        self.assertEqual((ex.state, ex.status, ex.response.body), ("complete", 200, b"hello"))
        self.assertAlmostEqual(ex.duration, 0.01)
        self.assertEqual(ex.started, 1002.0)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(store.replayTime)

    def test_sameAsUnbatched(self) -> None:
        """
        Pipelined, chunked and split exchanges, the connection closing in
        the middle of one: the same JSON and counters batched or not.
        """
        steps = [
            ("remote", GET + POST_CHUNKED[:30], 0.001), ("remote", POST_CHUNKED[30:], 0.002),
            ("local", OK5, 0.003), ("local", CHUNKED_REPLY[:20], 0.004), ("local", CHUNKED_REPLY[20:], 0.0),
            ("remote", GET, 0.2), ("local", OK5[:10], 0.0), ("close", b"", 0.0),
        ]
        self.assertEqual(_run(steps, 0.01), _run(steps, None))

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(_exchanges(), st.sampled_from([0.0, 0.003, 0.02])), min_size=1, max_size=6),
           st.booleans())
    def test_randomSameAsUnbatched(self, exchanges: list[tuple[tuple[bytes, bytes], float]], close: bool) -> None:
        """
        Random exchanges with random waits (within and across flushes), and
        maybe a close: batched and unbatched agree on everything.
        """
        steps: list[tuple[str, bytes, float]] = []
        for (request, response), wait in exchanges:
            steps += [("remote", request, wait), ("local", response, wait)]
        if close:
            steps.append(("close", b"", 0.0))
        self.assertEqual(_run(steps, 0.01), _run(steps, None))

    def test_orderAcrossDirections(self) -> None:
        """
        An answer queued after its request is parsed after it (one queue
        for both directions), so it completes the exchange.
        """
        store, observer, _, clock = _make()
        for _ in range(3):
            observer.fromRemote(GET)
            observer.fromLocal(OK5)
        clock.advance(0.01)
        self.assertEqual([e.state for e in store.list()], ["complete"] * 3)

    def test_closedInOrder(self) -> None:
        """
        closed() is queued too: what was queued before it is parsed first,
        then what is pending is aborted, and the observer stops.
        """
        store, observer, splice, clock = _make()
        observer.fromRemote(GET)
        observer.fromLocal(OK5)
        observer.fromRemote(GET)
        observer.closed()
        self.assertFalse(observer.stopped)
        clock.advance(0.01)
        self.assertEqual([e.state for e in store.list()], ["complete", "aborted"])
        self.assertTrue(observer.stopped)
        self.assertIsNone(splice.observer)

    def test_boundedByEntries(self) -> None:
        """
        The queue is parsed at once when it holds BATCH_ENTRIES reads,
        without waiting for the delay.
        """
        store, observer, _, clock = _make(10.0)
        for _ in range(BATCH_ENTRIES // 2):
            observer.fromRemote(GET)
            observer.fromLocal(OK5)
        self.assertEqual(len(store), BATCH_ENTRIES // 2)
        self.assertEqual(store._queue, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_boundedByBytes(self) -> None:
        """
        The queue is parsed at once when it holds BATCH_BYTES bytes: a
        big body's reads never pile up.
        """
        store, observer, _, clock = _make(10.0)
        read = b"x" * (64 << 10)
        observer.fromRemote(b"POST /up HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
        for _ in range(BATCH_BYTES // len(read) - 1):
            observer.fromRemote(read)
        self.assertEqual(len(store), 0)
        observer.fromRemote(read)
        (ex,) = store.list()
        self.assertEqual(ex.request.size, BATCH_BYTES)
        self.assertEqual(store._queue, [])
        self.assertEqual(store._queuedBytes, 0)

    def test_detachedDropsQueued(self) -> None:
        """
        Once the observer detached, what it still had queued is dropped.
        """
        store, observer, splice, clock = _make()
        observer.fromRemote(GET)
        observer.detach()
        self.assertIsNone(splice.observer)
        clock.advance(0.01)
        self.assertEqual((len(store), store.captured), (0, 0))

    def test_givingUpDropsTheRest(self) -> None:
        """
        An observer that gives up while its queue is parsed detaches from
        the splice; the reads queued after the bad one are ignored.
        """
        store, observer, splice, clock = _make()
        observer.fromRemote(b"SSH-2.0-OpenSSH\r\n")
        observer.fromRemote(GET)
        clock.advance(0.01)
        self.assertIsNone(splice.observer)
        self.assertEqual((store.notHTTP, store.captured), (1, 0))

    def test_replayNotBatched(self) -> None:
        """
        A replay's observer parses at once (the replay reads its exchange
        right after feeding it), even in a batching store.
        """
        store, _, _, _ = _make()
        observer = store.observer("web", "local", source="replay", replayOf=1)
        self.assertFalse(observer.batched)
        observer.fromRemote(GET)
        observer.fromLocal(OK5)
        self.assertEqual([e.state for e in store.list()], ["complete"])

    def test_flushWithoutQueue(self) -> None:
        """
        Flushing an empty queue does nothing (the service flushes when it
        stops, whatever is queued).
        """
        store, _, _, clock = _make()
        store.flush()
        self.assertEqual((len(store), clock.getDelayedCalls()), (0, []))
