"""
The iterative Kademlia lookup, independent of any transport.

A L{Lookup} walks towards a target Kademlia ID.  It knows nothing about
messages beyond the closer peers of a response: the caller gives it a
C{query(peer) -> Deferred[Message]} function (a FIND_NODE or GET_VALUE to
that peer) and, for record lookups, an C{onResponse} hook that inspects each
answer and may end the lookup early.

The algorithm, per path::

    candidates = seeds (nearest first); each peer is queried at most once
    loop:
        K = the k nearest candidates that have not failed
        if every peer in K answered: done
        while fewer than alpha queries are in flight (not counting slow
              ones): query the nearest not-yet-queried peer in K, or
              beyond K by as many peers as K has awaiting an answer
        each answer adds its closer peers as candidates (one hop deeper)
        a query unanswered after slowTimeout stops counting as in flight,
              so a slow peer cannot stall the walk; one unanswered after
              timeout is cancelled and that peer has failed
        an errback or an answer that is not a Message is a failure too

With C{paths > 1} this is the disjoint-path lookup of S/Kademlia: the seeds
are dealt out among I{d} independent walks, and a peer queried by one walk
is never used by another, so one liar can mislead at most one walk.  The
result merges them: the k nearest peers that answered on any path.

Lying peers are contained by construction: a peer is only ever I{queried}
because of what it told us, never trusted; addresses of peers that do not
exist just time out, and far-away peers never enter the k nearest.  Garbage
(a failed decode, a wrong message type) is reported by the C{query} function
as an errback and counts as a failure of the peer that sent it.

Time comes from the injected clock; nothing here touches a reactor.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.dht.messages import Message, PeerInfo
from beam.dht.routing import peerKadID
from beam.identity.keys import PeerID

DEFAULT_TIMEOUT: Final = 5.0
DEFAULT_SLOW_TIMEOUT: Final = 1.0

_HEARD: Final = 0
_WAITING: Final = 1
_SUCCEEDED: Final = 2
_FAILED: Final = 3


@attrs.frozen
class LookupResult:
    """
    What a lookup found and what it cost.

    @ivar closest: the (up to) k nearest peers that answered, nearest first.
    @ivar queries: requests sent.
    @ivar failures: requests that timed out, errbacked or were answered with
        garbage.
    @ivar rounds: the deepest hop that answered (seeds are hop 1), i.e. how
        many sequential round trips the lookup needed.
    @ivar elapsed: clock seconds from start to finish.
    @ivar responders: every peer that answered, in answer order.
    @ivar stoppedEarly: the C{onResponse} hook ended the lookup (e.g. a
        record quorum was reached) before it converged.
    """

    target: bytes
    closest: tuple[PeerInfo, ...]
    queries: int
    failures: int
    rounds: int
    elapsed: float
    responders: tuple[PeerID, ...]
    stoppedEarly: bool = False


@attrs.define(eq=False)
class _Candidate:
    info: PeerInfo
    distance: int
    depth: int
    state: int = _HEARD
    owner: _Path | None = None
    slow: bool = False
    deferred: Deferred[Any] | None = None
    timers: list[IDelayedCall] = attrs.field(factory=list)


class _Path:
    def __init__(self, index: int) -> None:
        self.index = index
        # Candidates this path knows, nearest first: (distance, seq, candidate).
        self.order: list[tuple[int, int, _Candidate]] = []
        self.known: set[PeerID] = set()
        self.active = 0
        self.done = False


class Lookup:
    """
    One iterative lookup.  Call L{start} once; its Deferred fires with a
    L{LookupResult} (never errbacks, except with C{CancelledError} when the
    caller cancels it).

    @param target: the 32-byte Kademlia ID sought.
    @param seeds: where to start (usually the routing table's nearest).
    @param query: sends the request to a peer; its Deferred fires with the
        decoded response or errbacks.  It may be cancelled (on timeout, or
        when the lookup ends).
    @param onResponse: C{(peer, message) -> bool}, called for every answer
        before its closer peers are used; C{True} ends the lookup.  If it
        raises, the answer counts as garbage.
    @param onSuccess: C{(peer)}: the peer answered (routing-table upkeep).
    @param onFailure: C{(peer)}: the peer timed out or answered garbage.
    @param paths: number of disjoint paths (S/Kademlia I{d}).
    @param localPeer: never queried, whatever peers say.
    """

    log = Logger()

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[PeerInfo],
        query: Callable[[PeerInfo], Deferred[Message]],
        clock: IReactorTime,
        *,
        k: int = 20,
        alpha: int = 3,
        paths: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
        slowTimeout: float = DEFAULT_SLOW_TIMEOUT,
        localPeer: PeerID | None = None,
        onResponse: Callable[[PeerInfo, Message], bool] | None = None,
        onSuccess: Callable[[PeerInfo], None] | None = None,
        onFailure: Callable[[PeerInfo], None] | None = None,
    ) -> None:
        if k < 1 or alpha < 1 or paths < 1:
            raise ValueError("k, alpha and paths must be positive")
        self.target = target
        self._t = int.from_bytes(target, "big")
        self._query = query
        self._clock = clock
        self.k = k
        self.alpha = alpha
        self.timeout = timeout
        self.slowTimeout = min(slowTimeout, timeout)
        self._local = localPeer
        self._onResponse = onResponse
        self._onSuccess = onSuccess
        self._onFailure = onFailure
        self._paths = [_Path(i) for i in range(paths)]
        self._peers: dict[PeerID, _Candidate] = {}
        self._seq = 0
        self._queries = 0
        self._failures = 0
        self._responders: list[PeerID] = []
        self._started: float | None = None
        self._finished = False
        self._stoppedEarly = False
        self._pumping = False
        self._again = False
        self._result: Deferred[LookupResult] = Deferred(self._cancel)
        seedList = [s for s in seeds if s.peer != localPeer]
        seedList.sort(key=lambda s: self._distance(s.peer))
        seen: set[PeerID] = set()
        n = 0
        for info in seedList:
            if info.peer in seen:
                continue
            seen.add(info.peer)
            self._learn(self._paths[n % paths], info, 1)
            n += 1

    # --- public ----------------------------------------------------------

    def start(self) -> Deferred[LookupResult]:
        """
        Begin querying.  The lookup finishes at once if there are no seeds.
        """
        if self._started is not None:
            raise RuntimeError("a Lookup runs once")
        self._started = self._clock.seconds()
        self._pump()
        return self._result

    def stop(self) -> None:
        """
        End the lookup now with what it has (as if C{onResponse} had said so).
        """
        if not self._finished:
            self._stoppedEarly = True
            self._finish()

    # --- candidates ------------------------------------------------------

    def _distance(self, peer: PeerID) -> int:
        return int.from_bytes(peerKadID(peer), "big") ^ self._t

    def _learn(self, path: _Path, info: PeerInfo, depth: int) -> None:
        peer = info.peer
        if peer == self._local or peer in path.known:
            return
        cand = self._peers.get(peer)
        if cand is None:
            cand = _Candidate(info, self._distance(peer), depth)
            self._peers[peer] = cand
        elif cand.state == _HEARD:
            cand.depth = min(cand.depth, depth)
            if not cand.info.addrs and info.addrs:
                cand.info = info
        path.known.add(peer)
        self._seq += 1
        bisect.insort(path.order, (cand.distance, self._seq, cand), key=lambda e: (e[0], e[1]))

    def _window(self, path: _Path) -> list[_Candidate]:
        """
        The path's usable candidates (not failed, not taken by another
        path), nearest first, until k of them are not awaiting an answer.

        Its first k entries are the k nearest, which decide termination.
        Queries go to unqueried peers anywhere in it: each peer in flight
        might be dead, so we look that much further ahead rather than
        discover the next candidate only when a timeout removes one.
        """
        out: list[_Candidate] = []
        settled = 0
        for _, _, cand in path.order:
            if cand.state == _FAILED or (cand.owner is not None and cand.owner is not path):
                continue
            out.append(cand)
            if cand.state != _WAITING:
                settled += 1
                if settled >= self.k:
                    break
        return out

    # --- the walk --------------------------------------------------------

    def _pump(self) -> None:
        # Answers may arrive synchronously from inside query(); loop rather
        # than recurse.
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            self._again = True
            while self._again and not self._finished:
                self._again = False
                self._step()
        finally:
            self._pumping = False

    def _step(self) -> None:
        for path in self._paths:
            if path.done:
                continue
            window = self._window(path)
            if all(c.state == _SUCCEEDED for c in window[: self.k]):
                path.done = True
                continue
            for cand in window:
                if path.active >= self.alpha:
                    break
                if cand.state == _HEARD:
                    self._send(path, cand)
                    if self._finished:
                        return
        if all(p.done for p in self._paths):
            self._finish()

    def _send(self, path: _Path, cand: _Candidate) -> None:
        cand.state = _WAITING
        cand.owner = path
        path.active += 1
        self._queries += 1
        cand.timers = [
            self._clock.callLater(self.slowTimeout, self._slow, path, cand),
            self._clock.callLater(self.timeout, self._timedOut, path, cand),
        ]
        d = maybeDeferred(self._query, cand.info)
        cand.deferred = d
        d.addCallbacks(self._answered, self._errored, callbackArgs=(path, cand), errbackArgs=(path, cand))

    def _settle(self, path: _Path, cand: _Candidate, state: int) -> None:
        cand.state = state
        cand.deferred = None
        for t in cand.timers:
            if t.active():
                t.cancel()
        cand.timers = []
        if not cand.slow:
            path.active -= 1

    def _slow(self, path: _Path, cand: _Candidate) -> None:
        if cand.state == _WAITING and not cand.slow:
            cand.slow = True
            path.active -= 1
            self._pump()

    def _timedOut(self, path: _Path, cand: _Candidate) -> None:
        if cand.state != _WAITING:
            return
        d = cand.deferred
        self._fail(path, cand)
        if d is not None:
            d.cancel()

    def _fail(self, path: _Path, cand: _Candidate) -> None:
        self._settle(path, cand, _FAILED)
        self._failures += 1
        if self._onFailure is not None:
            self._onFailure(cand.info)
        self._pump()

    def _errored(self, reason: Failure, path: _Path, cand: _Candidate) -> None:
        if self._finished or cand.state != _WAITING:
            return
        if not reason.check(CancelledError):
            self.log.debug("DHT query to {peer} failed: {why}", peer=cand.info.peer, why=reason.value)
        self._fail(path, cand)
        return

    def _answered(self, response: object, path: _Path, cand: _Candidate) -> None:
        if self._finished or cand.state != _WAITING:
            return
        if not isinstance(response, Message):
            self.log.debug("DHT peer {peer} answered with {r!r}", peer=cand.info.peer, r=response)
            self._fail(path, cand)
            return
        stop = False
        if self._onResponse is not None:
            try:
                stop = bool(self._onResponse(cand.info, response))
            except Exception as e:  # noqa: BLE001 - whatever the hook rejects is garbage
                self.log.debug("DHT peer {peer} answered garbage: {e}", peer=cand.info.peer, e=e)
                self._fail(path, cand)
                return
        self._settle(path, cand, _SUCCEEDED)
        self._responders.append(cand.info.peer)
        if self._onSuccess is not None:
            self._onSuccess(cand.info)
        if stop:
            self._stoppedEarly = True
            self._finish()
            return
        # Only the k nearest of what one peer says can matter; more is noise.
        told = sorted(response.closerPeers, key=lambda p: self._distance(p.peer))[: self.k]
        for info in told:
            if info.peer != cand.info.peer:
                self._learn(path, info, cand.depth + 1)
        self._pump()
        return

    # --- the end ---------------------------------------------------------

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        pending: list[Deferred[Any]] = []
        for cand in self._peers.values():
            for t in cand.timers:
                if t.active():
                    t.cancel()
            cand.timers = []
            if cand.deferred is not None:
                pending.append(cand.deferred)
                cand.deferred = None
        answered = [c for c in self._peers.values() if c.state == _SUCCEEDED]
        answered.sort(key=lambda c: c.distance)
        assert self._started is not None
        result = LookupResult(
            target=self.target,
            closest=tuple(c.info for c in answered[: self.k]),
            queries=self._queries,
            failures=self._failures,
            rounds=max((c.depth for c in answered), default=0),
            elapsed=self._clock.seconds() - self._started,
            responders=tuple(self._responders),
            stoppedEarly=self._stoppedEarly,
        )
        for d in pending:
            d.cancel()
        if not self._result.called:
            self._result.callback(result)

    def _cancel(self, d: Deferred[LookupResult]) -> None:
        # The caller gave up: the Deferred errbacks with CancelledError once
        # this returns; stop the queries in flight.
        if not self._finished:
            self._finished = True
            for cand in self._peers.values():
                for t in cand.timers:
                    if t.active():
                        t.cancel()
                if cand.deferred is not None:
                    dd, cand.deferred = cand.deferred, None
                    dd.cancel()
