"""
The node's dialer: turning "a connection to this peer" into transport dials
and upgrades, one address after another.

Split from L{beam.p2p.host.node} so the pool logic there stays short.  The rules it
keeps:

  - Concurrent requests for one peer (or one peer-less address) share one
    dial; each caller gets its own Deferred, and cancelling it withdraws
    only that caller.  The dial itself is cancelled when nobody waits.
  - Every caller's Deferred fires exactly once, also when the dial fails
    before any I/O (connection limit, an address we cannot dial), and the
    bookkeeping (L{Dialer.pending}, L{Dialer.dials}) is empty again after.
  - A dial that loses to a simultaneous one from the peer (see
    L{beam.p2p.host.node.Node._pickSurvivor}) hands out the connection that is kept.
  - Errors about the peer (wrong peer ID, handshake failures) are reported
    as they are; errors about an address are collected and the next
    address is tried.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from beam.p2p.connection import PeerConnection
from beam.p2p.host.addrs import addrScope
from beam.errors import (
    BeamError, ConnectionLimitExceeded, DialError, NodeStopped, PeerIDMismatch, ProtocolError, SecurityError,
    describe,
)
from beam.p2p.resources import OUTBOUND, ResourceLimitExceeded
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.stats import Counts

if TYPE_CHECKING:
    from beam.p2p.host.node import Node


class Dialer:
    """
    Outbound connections for one L{Node}.

    @ivar pending: the callers waiting for each dial, by key (the peer ID,
        or the address for a dial that accepts any peer).
    @ivar dials: the dial under way for each key.
    """

    #: Seconds the direct addresses are dialled alone before the relayed
    #: ones join in (see L{_dialAll}).
    relayDelay = 0.5

    #: Seconds the direct and relayed addresses have before Tor joins in
    #: (see L{_dialAll}): more than a dial over a slow path needs, less
    #: than the two silent addresses' timeouts a NAT'd peer costs.
    torDelay = 10.0

    def __init__(self, node: "Node") -> None:
        self.node = node
        self.pending: dict[Any, list[Deferred[PeerConnection]]] = {}
        self.dials: dict[Any, Deferred[PeerConnection]] = {}
        self.stats = DialStats()

    def dial(self, peer: Optional[PeerID], addrs: list[Multiaddr]) -> Deferred[PeerConnection]:
        """
        A new connection to C{peer} (any peer if L{None}) at one of
        C{addrs}, shared with a dial already under way for the same key.
        """
        key: Any = peer if peer is not None else addrs[0]
        mine: Deferred[PeerConnection] = Deferred(lambda d: self._withdraw(key, d))
        waiters = self.pending.get(key)
        if waiters is not None:
            waiters.append(mine)
            return mine
        waiters = self.pending[key] = [mine]
        if not addrs:
            # Nothing to try: one attempt, failed for want of an address.
            self.stats.attempts += 1
            self.stats.failures.increment("no_address")
        dial = self._dialAll(peer, addrs)
        if self.pending.get(key) is waiters and not dial.called:
            self.dials[key] = dial
        # The dial may already have failed (no usable address, connection
        # limit): the fan-out then runs at once, and still reaches us.
        dial.addBoth(self._dialDone, key, waiters)
        return mine

    def cancelAll(self) -> None:
        """
        Cancel every dial under way (its callers get L{NodeStopped} when the
        node is stopping).
        """
        for d in list(self.dials.values()):
            d.cancel()

    def _withdraw(self, key: Any, waiter: Deferred[PeerConnection]) -> None:
        """
        A caller cancelled: forget it, and cancel the dial if nobody else
        waits for it.  (L{Deferred.cancel} then fails the caller's Deferred
        with L{CancelledError}.)
        """
        waiters = self.pending.get(key)
        if waiters is None or waiter not in waiters:
            return
        waiters.remove(waiter)
        if not waiters:
            dial = self.dials.get(key)
            if dial is not None:
                dial.cancel()

    def _dialDone(self, result: Any, key: Any, waiters: list[Deferred[PeerConnection]]) -> None:
        if self.pending.get(key) is waiters:
            del self.pending[key]
            self.dials.pop(key, None)
        if isinstance(result, PeerConnection) and not result.acceptsStreams:
            # Our dial lost to a simultaneous one from the peer: hand out
            # the connection that is kept.
            result = self.node.connectionTo(result.remotePeer) or result
        for w in list(waiters):
            if w.called:
                continue
            if isinstance(result, Failure):
                w.errback(result)
            else:
                w.callback(result)

    def _dialAll(self, peer: Optional[PeerID], addrs: list[Multiaddr]) -> Deferred[PeerConnection]:
        """
        Dial C{addrs} for C{peer} in up to three stages: the direct and
        relayed addresses race (L{_race}); only once every one of them
        failed (or the race ended in another error about the peer, such
        as a handshake that timed out) are the onion ones (C{/onion3},
        L{Multiaddr.isOnion}) dialled, one after another; at once when
        they are all there is.  A dial that fails names every address
        tried.

        Why Tor comes last: a connection over Tor crosses three relays on
        each side of a rendezvous, so it is slower (seconds to set up,
        hundreds of milliseconds a round trip) and thinner than any direct
        or relayed path; it is the fallback for a host nothing else
        reaches.  A node that wants Tor for everything runs with the
        C{"tor"} transport alone, and then has nothing but onion (and
        exit-dialled) addresses to try anyway.

        Two refinements:

          - a path that has not connected within L{torDelay} seconds counts
            as failing: Tor then starts alongside it (the first connection
            wins), so a peer listing addresses that never answer (a SYN
            into a home router is dropped, each costing a whole dial
            timeout) is not reached only after half a minute;
          - a Tor-only node (L{torOnly}) dials the onion addresses I{first}
            and IP addresses (through a Tor exit) after them: an onion
            connection stays inside Tor end to end, needs no exit, and
            an exit that sees where we connect is one more party.
        """
        onion = [a for a in addrs if a.isOnion()]
        others = [a for a in addrs if not a.isOnion()]
        errors: list[str] = []
        mismatches: list[Failure] = []
        several = len(addrs) > 1
        if onion and torOnly(self.node):
            chain = self._dialSequence(peer, onion + others, errors, mismatches, lastMismatchFatal=True,
                                       several=several)
            return chain.addErrback(self._exhausted, peer, addrs, errors, mismatches)
        if not onion:
            first = self._race(peer, others, errors, mismatches, several, last=True)
            return first.addErrback(self._exhausted, peer, addrs, errors, mismatches)
        if not others:
            chain = self._dialSequence(peer, onion, errors, mismatches, lastMismatchFatal=True, several=several)
            return chain.addErrback(self._exhausted, peer, addrs, errors, mismatches)
        stage: list[Deferred[PeerConnection]] = []
        timer: list[Any] = []
        # How many stages are still running, and whether the first one failed.
        running = [0]

        def cancelTimer() -> None:
            for t in timer:
                if t.active():
                    t.cancel()
            timer[:] = []

        def cancel(_: Deferred[PeerConnection]) -> None:
            cancelTimer()
            for c in list(stage):
                if not c.called:
                    c.cancel()

        result: Deferred[PeerConnection] = Deferred(cancel)

        def finish(outcome: Any) -> None:
            cancelTimer()
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
            for c in list(stage):
                if not c.called:
                    c.cancel()

        def startTor() -> None:
            cancelTimer()
            if result.called or len(stage) > 1:
                return
            running[0] += 1
            tor = self._dialSequence(peer, onion, errors, mismatches, lastMismatchFatal=False, several=True)
            stage.append(tor)
            tor.addBoth(torDone)

        def torDone(outcome: Any) -> None:
            running[0] -= 1
            if result.called:
                return
            if isinstance(outcome, Failure) and running[0] > 0:
                return  # the first stage may still connect
            finish(outcome)

        def firstDone(outcome: Any) -> None:
            running[0] -= 1
            if result.called:
                return
            if isinstance(outcome, Failure) and not outcome.check(
                NodeStopped, CancelledError, ConnectionLimitExceeded
            ):
                # Tor is the last resort: whatever else went wrong (every
                # address failed, or one failed its handshake, which ends
                # a race at once), it is tried.
                if not outcome.check(_Exhausted):
                    errors.append(describe(outcome))
                if len(stage) == 1:
                    startTor()
                elif running[0] == 0:
                    finish(Failure(_Exhausted()))
                return
            finish(outcome)

        running[0] += 1
        first = self._race(peer, others, errors, mismatches, several, last=False)
        stage.append(first)
        first.addBoth(firstDone)
        if not result.called and len(stage) == 1:
            timer.append(self.node.reactor.callLater(self.torDelay, startTor))
        return result.addErrback(self._exhausted, peer, addrs, errors, mismatches)

    def _race(
        self, peer: Optional[PeerID], addrs: list[Multiaddr], errors: list[str], mismatches: list[Failure],
        several: bool, last: bool,
    ) -> Deferred[PeerConnection]:
        """
        Dial C{addrs} (no onion ones): direct addresses one after another,
        and relayed (C{/p2p-circuit}) ones one after another alongside
        them, started L{relayDelay} seconds later (at once when no direct
        address is on a network we can reach, or when every direct one
        failed).  The first connection wins and the other dials are
        cancelled; when all failed, the result fails with L{_Exhausted}
        (their reasons are in C{errors} and C{mismatches}).

        Why the head start: a direct connection is faster and unlimited,
        so it should win when it can; but a host behind a NAT lists
        addresses that never answer (a SYN into a home router is dropped),
        and waiting for each to time out before trying its relay would
        cost a user seconds.  Once a relayed connection exists, DCUtR
        (L{beam.p2p.holepunch}) tries to replace it with a direct one.

        @param last: no other stage follows, so a peer ID mismatch at the
            only sequence's last address is reported as it is.
        """
        direct = [a for a in addrs if not _isCircuit(a)]
        relayed = [a for a in addrs if _isCircuit(a)]
        if not direct or not relayed:
            return self._dialSequence(peer, addrs, errors, mismatches, lastMismatchFatal=last, several=several)
        chains: list[Deferred[PeerConnection]] = []
        timer: list[Any] = []

        def cancelTimer() -> None:
            for t in timer:
                if t.active():
                    t.cancel()
            timer[:] = []

        def cancel(_: Deferred[PeerConnection]) -> None:
            cancelTimer()
            for c in list(chains):
                c.cancel()

        result: Deferred[PeerConnection] = Deferred(cancel)
        running = [0]
        relayStarted = [False]

        def finish(outcome: Any) -> None:
            cancelTimer()
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
            for c in list(chains):
                if not c.called:
                    c.cancel()

        def settled(outcome: Any) -> None:
            running[0] -= 1
            if result.called:
                return
            if isinstance(outcome, Failure) and outcome.check(_Exhausted):
                if not relayStarted[0]:
                    startRelayed()
                elif running[0] == 0:
                    finish(outcome)
                return
            finish(outcome)

        def start(some: list[Multiaddr]) -> None:
            running[0] += 1
            chain = self._dialSequence(peer, some, errors, mismatches, lastMismatchFatal=False, several=True)
            chains.append(chain)
            chain.addBoth(settled)

        def startRelayed() -> None:
            cancelTimer()
            if relayStarted[0] or result.called:
                return
            relayStarted[0] = True
            start(relayed)

        start(direct)
        delay = self.relayDelay if self._worthWaitingFor(direct) else 0.0
        if not result.called:
            if delay <= 0:
                startRelayed()
            else:
                timer.append(self.node.reactor.callLater(delay, startRelayed))
        return result

    def _worthWaitingFor(self, direct: list[Multiaddr]) -> bool:
        """
        Whether one of the C{direct} addresses is on a network we can
        reach: a public one (or a name, or a non-IP address), or one in a
        scope we listen in ourselves (loopback, a private LAN).  A peer
        listing only private addresses of a network we are not on gets no
        head start over its relays.
        """
        ours = {addrScope(a) for a in self.node.listenAddrs}
        for addr in direct:
            scope = addrScope(addr)
            if scope in ("public", "other") or scope in ours:
                return True
        return False

    def _exhausted(
        self, f: Failure, peer: Optional[PeerID], addrs: list[Multiaddr], errors: list[str],
        mismatches: list[Failure],
    ) -> Failure:
        """
        Every address failed: one L{DialError} naming each address's
        reason (or the peer ID mismatch when that is all there was).
        """
        if not f.check(_Exhausted):
            return f
        if mismatches and not errors:
            return mismatches[0]
        where = "; ".join(errors + [describe(m) for m in mismatches]) or "no addresses"
        if len(addrs) == 1:
            who = f"{peer} at {addrs[0]}" if peer is not None else str(addrs[0])
        else:
            who = str(peer or addrs[0])
        return Failure(DialError(f"could not connect to {who}: {where}"))

    def _dialSequence(
        self, peer: Optional[PeerID], addrs: list[Multiaddr], errors: list[str], mismatches: list[Failure],
        lastMismatchFatal: bool, several: bool,
    ) -> Deferred[PeerConnection]:
        """
        Dial C{addrs} one after another until one connects.  Each
        address's failure is appended to C{errors} (or C{mismatches});
        once none is left the result fails with L{_Exhausted}.

        @param lastMismatchFatal: a peer ID mismatch at the last address
            fails the sequence with it (when no other sequence runs).
        @param several: the dial has several addresses, so each error
            names its address.
        """
        current: list[Deferred[Any]] = []

        def cancel(d: Deferred[Any]) -> None:
            for c in current:
                c.cancel()

        result: Deferred[PeerConnection] = Deferred(cancel)

        def attempt(i: int) -> None:
            if result.called:
                return
            if i >= len(addrs):
                result.errback(_Exhausted())
                return
            d = self._dialOne(peer, addrs[i])
            current[:] = [d]

            def ok(conn: PeerConnection) -> None:
                if not result.called:
                    result.callback(conn)

            def bad(f: Failure) -> None:
                if f.check(CancelledError) and result.called:
                    return
                if f.check(NodeStopped, CancelledError):
                    if not result.called:
                        stopped = f.check(NodeStopped) or self.node.isStopping
                        result.errback(NodeStopped() if stopped else f)
                    return
                if f.check(PeerIDMismatch) and (i + 1 < len(addrs) or not lastMismatchFatal):
                    # Someone else answers at that address (a stale or
                    # loopback address of another node): try the others,
                    # and report the mismatch only if none of them works.
                    mismatches.append(f)
                    attempt(i + 1)
                    return
                if f.check(BeamError) and not f.check(DialError):
                    # Security errors (wrong peer ID, ...) and the connection
                    # limit are not about the address: report them as they are.
                    if not result.called:
                        result.errback(f)
                    return
                reason = describe(f)
                errors.append(reason if not several else f"{addrs[i]}: {reason}")
                attempt(i + 1)

            d.addCallbacks(ok, bad)

        attempt(0)
        return result

    def _dialOne(self, peer: Optional[PeerID], addr: Multiaddr) -> Deferred[PeerConnection]:
        node = self.node
        stats = self.stats
        stats.attempts += 1
        transport = node.transportFor(addr)
        if transport is None:
            stats.failures.increment("no_address")
            return fail(DialError(f"cannot dial {addr}: no transport for that address"))
        # The connection is reserved before any I/O, and released by the
        # upgrade once it ran (see Node.makeUpgrading), or here when the
        # transport never connected.
        try:
            scope = node.resources.openConnection(OUTBOUND, useFD=usesFD(transport))
        except ResourceLimitExceeded as e:
            stats.failures.increment("other")
            return fail(ConnectionLimitExceeded(f"cannot dial {addr}: the node is at a connection limit ({e})"))
        upgrading = node.makeUpgrading(
            isInitiator=True, expectedPeer=peer, dialledAddr=addr, transport=transport, scope=scope
        )
        # A relayed address names its target only by its final /p2p; the
        # transport needs it to ask the relay for that peer.
        target = addr.withPeerID(peer) if peer is not None and _isCircuit(addr) else addr
        try:
            connecting = transport.dial(target, _OneProtocolFactory(upgrading), node.dialTimeout)
        except (ValueError, BeamError) as e:
            scope.done()
            stats.failures.increment("no_address")
            return fail(DialError(f"cannot dial {addr}: {e}"))

        def cancel(_: Any) -> None:
            if not connecting.called:
                connecting.cancel()
            else:
                upgrading._fail(Failure(CancelledError()))

        result: Deferred[PeerConnection] = Deferred(cancel)

        def connected(_: Any) -> None:
            def relay(r: Any) -> None:
                if isinstance(r, Failure):
                    stats.failures.increment(dialFailureCause(r, upgrading=True))
                if result.called:
                    return
                if isinstance(r, Failure):
                    result.errback(r)
                else:
                    result.callback(r)

            upgrading.done.addBoth(relay)

        def failed(f: Failure) -> None:
            if upgrading.transport is None:
                # Never connected: the upgrade never ran to release it.
                scope.done()
            stats.failures.increment("cancelled" if node.isStopping else dialFailureCause(f))
            if result.called:
                return
            if node.isStopping:
                result.errback(NodeStopped())
            elif f.check(CancelledError, ConnectingCancelledError):
                result.errback(CancelledError())
            else:
                result.errback(DialError(describe(f)))

        connecting.addCallbacks(connected, failed)
        return result


#: The causes L{DialStats.failures} counts, each attempt's failure under
#: one of them (see L{dialFailureCause}).
DIAL_FAILURE_CAUSES = (
    "timeout", "refused", "unreachable", "handshake", "peer_id_mismatch", "no_address", "cancelled", "other",
)

_UNREACHABLE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENETUNREACH", "EHOSTUNREACH", "EHOSTDOWN", "ENETDOWN", "EADDRNOTAVAIL")
    if hasattr(errno, name)
)


class DialStats:
    """
    What the dialer tried and why it failed, for the daemon's metrics
    (C{beam_dial_attempts_total}, C{beam_dial_failures_total}).

    One attempt is one address dialled (a transport dial plus its upgrade),
    or a dial that had no address at all; each failed attempt is counted
    once, under the cause L{dialFailureCause} gives it.  Plain integer
    additions: the dialer pays nothing more for them.

    @ivar attempts: addresses dialled since the node started.
    @ivar failures: failed attempts by cause (L{DIAL_FAILURE_CAUSES}).
    """

    __slots__ = ("attempts", "failures")

    def __init__(self) -> None:
        self.attempts = 0
        self.failures = Counts(DIAL_FAILURE_CAUSES, fallback="other")

    def asDict(self) -> dict[str, Any]:
        """
        The counters, for status output.
        """
        return {"attempts": self.attempts, "failures": self.failures.asDict()}


def dialFailureCause(f: Failure, upgrading: bool = False) -> str:
    """
    The cause (one of L{DIAL_FAILURE_CAUSES}) of a failed dial attempt.

    @param upgrading: the transport connected and the failure came from the
        upgrade (security and muxer negotiation), where a connection that
        just drops means the peer broke off the handshake.
    """
    if f.check(CancelledError, ConnectingCancelledError, NodeStopped):
        return "cancelled"
    if f.check(PeerIDMismatch):
        return "peer_id_mismatch"
    if f.check(SecurityError, ProtocolError):
        return "handshake"
    if f.check(netError.TimeoutError, TimeoutError):
        return "timeout"
    if f.check(netError.ConnectionRefusedError, ConnectionRefusedError):
        return "refused"
    if f.check(netError.NoRouteError, netError.DNSLookupError, netError.UnknownHostError):
        return "unreachable"
    if f.check(netError.ConnectError, OSError):
        code = getattr(f.value, "osError", None) or getattr(f.value, "errno", None)
        if code in _UNREACHABLE_ERRNOS:
            return "unreachable"
        if code == errno.ECONNREFUSED:
            return "refused"
        if code == errno.ETIMEDOUT:
            return "timeout"
    if upgrading and f.check(netError.ConnectionDone, netError.ConnectionLost):
        return "handshake"
    return "other"


def usesFD(transport: object) -> bool:
    """
    Whether the connections of an L{ITransport<beam.p2p.interfaces.ITransport>}
    hold a file descriptor of ours (TCP's sockets do; the in-memory
    transport and relayed circuits do not), for the resource manager's
    C{fd} count.  A transport may say so with a C{usesFD} attribute.
    """
    return bool(getattr(transport, "usesFD", getattr(transport, "name", None) == "tcp"))


def dialsOnion(node: object) -> bool:
    """
    Whether C{node} (a L{Node}, or anything with C{transports}) has a
    transport that dials C{/onion3} addresses: the C{"tor"} transport.
    Without one, a peer reachable only at an onion address is undialable
    here (the DHT keeps such peers out of its routing table).
    """
    return any(getattr(t, "name", None) == "tor" for t in getattr(node, "transports", ()))


def torOnly(node: object) -> bool:
    """
    Whether every transport of C{node} is the C{"tor"} one (tor mode
    C{"always"}): it has no IP address of its own to tell anyone, dials
    everything through Tor, and so must not serve the DHT, relay, or run
    anything that would make it look for an address.
    """
    transports = list(getattr(node, "transports", ()))
    return bool(transports) and all(getattr(t, "name", None) == "tor" for t in transports)


class _Exhausted(Exception):
    """
    Every address of one sequence of dials failed (their reasons are in
    the dial's error list); never leaves the dialer.
    """


class _OneProtocolFactory(Factory):
    """
    Hands out one prepared protocol, quietly (C{connectProtocol}'s factory
    logs a line per dial).
    """

    noisy = False

    def __init__(self, protocol: Any) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self.protocol_


def _isCircuit(addr: Multiaddr) -> bool:
    return any(name == "p2p-circuit" for name, _ in addr.components())
