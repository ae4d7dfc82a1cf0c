"""
The client side of tunnels: a local port that leads to a peer's service.

L{TunnelForward} listens on a local port.  Each accepted connection is
paused at once; a tunnel stream is opened to the host peer, the request
written, and on the host's OK the two are spliced and the connection
resumed.  A refusal closes the local connection with one log line.

The forward also keeps the peer connection up: while the host is
reachable new connections cost one stream and one request/response; when
it goes away the forward re-dials with Twisted's C{backoffPolicy} (on the
injected reactor), re-resolving the host's name before each retry, and
while the last attempt failed new local connections are closed at once
(fail fast) instead of hanging until a dial times out.

A forward never fails a connection for want of a stream: when no stream
can be opened because a stream limit is reached (ours: the muxer's
C{maxStreams} or our resource manager; the host's: it resets the new
stream, or answers L{TunnelBusy}), the local connection waits, still
paused, in a bounded queue, and is retried as soon as one of the
forward's tunnels ends (and on a timer, in case the streams are someone
else's); it is closed only if the queue is full or it waited
C{queueTimeout} seconds.  Thousands of quick connect/disconnect cycles
thus all succeed, merely waiting for the streams that are still closing.  That lifecycle is
the state machine in L{beam.tunnel._forward_machine} (drawn in
docs/state-machines/tunnel-forward.md); this module supplies its effects
and feeds it the node's connection events.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import Any, Callable, Optional, Sequence

import attrs
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort, IProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import BeamError, DialError, ProtocolError, StreamLimitExceeded, StreamReset, describe
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.resources import ResourceLimitExceeded
from beam.tunnel._forward_machine import ForwardCore, ForwardMachine, HostUnreachable
from beam.tunnel.host import COMPRESSIONS, _compressionAvailable, wrapStream
from beam.tunnel.protocol import (
    TUNNEL_PROTOCOL,
    InvalidTunnelMessage,
    ResponseReader,
    TunnelBusy,
    TunnelRefused,
    TunnelRequest,
    TunnelResponse,
    encodeRequest,
    refusalFor,
)
from beam.tunnel.splice import HALF_CLOSED_TIMEOUT, Splice, TunnelStats

__all__ = ["TunnelForward", "HostUnreachable", "NoStreamFree", "TunnelRequester"]

#: The accept queue of a forward's local port.
LISTEN_BACKLOG = 1024


class NoStreamFree(BeamError):
    """
    No tunnel stream could be opened for want of a free stream: ours
    (the muxer's or the resource manager's limit) or the host's (it reset
    the new stream).  A forward queues the connection and retries.
    """


#: What a forward queues a local connection for, rather than failing it.
_WAIT_FOR_STREAM = (NoStreamFree, TunnelBusy)

#: Local failures to open a stream that mean "no stream free".
_STREAM_LIMITS = (StreamLimitExceeded, ResourceLimitExceeded, StreamReset)


class TunnelForward(Service):
    """
    A local port forwarded to a service of a peer.

    Its lifecycle (listen, dial, back off, re-resolve, stop) is the state
    machine of L{beam.tunnel._forward_machine}; this class supplies its
    effects (the local port, the node) and turns node connection events
    and tunnel stream failures into its inputs.

    @ivar state: C{"stopped"}, C{"connecting"}, C{"connected"} or
        C{"unreachable: <reason>"}, for status output.
    @ivar stats: connection and byte counters.
    @ivar listeningPort: the local listening port, once started.
    @ivar localAddress: its address (C{.host}, C{.port}), once started.
    @cvar steadyAfter: seconds the host connection must stay up before
        its loss is answered by an immediate re-dial (a shorter-lived one
        counts as a failure and is retried after a backoff).
    """

    log = Logger()
    steadyAfter = 10.0

    def __init__(
        self,
        reactor: Any,
        node: Any,
        peer: PeerID,
        addrs: Sequence[Multiaddr] = (),
        service: str = "",
        *,
        kind: str = "tcp",
        localPort: int = 0,
        bind: str = "127.0.0.1",
        secret: Optional[bytes] = None,
        compress: bool = False,
        retryPolicy: Optional[Callable[[int], float]] = None,
        responseTimeout: float = 30.0,
        resolveAddrs: Optional[Callable[[], Deferred[Sequence[Multiaddr]]]] = None,
        maxQueued: int = 1024,
        queueTimeout: float = 30.0,
        halfClosedTimeout: Optional[float] = HALF_CLOSED_TIMEOUT,
        idleTimeout: Optional[float] = None,
        refusalLogInterval: float = 10.0,
    ) -> None:
        """
        @param reactor: time and I/O (an C{IReactorTime} and
            C{IReactorTCP}/C{IReactorUDP}).
        @param node: the L{beam.p2p.interfaces.IHost} to reach the host
            through.
        @param peer: the host's peer ID.
        @param addrs: addresses to reach it at (added to what the node
            knows of it).
        @param service: the service name; C{""} is the host's default.
        @param kind: C{"tcp"} or C{"udp"}.
        @param localPort: the local port (0 picks one).
        @param bind: the local interface to listen on.
        @param secret: the access secret from the share address.
        @param compress: offer lz4 compression (the host decides).
        @param retryPolicy: seconds to wait before re-dial attempt N
            (counted from 1 after a failure); by default Twisted's
            L{backoffPolicy} (1.5 s growing 1.5x to 60 s, plus up to 1 s
            of jitter), as C{ClientService} uses.
        @param responseTimeout: seconds to wait for the host's answer to a
            tunnel request.
        @param resolveAddrs: re-resolves the host's current addresses
            (from its name record) before each re-dial after a failure, so
            a host that moved is found.
        @param maxQueued: the most local connections waiting for a free
            stream (beyond it they are closed).
        @param queueTimeout: seconds a local connection may wait for a
            free stream before it is closed.
        @param halfClosedTimeout: seconds a half-closed tunnel may go
            without moving a byte before it is aborted (L{None}: never).
        @param idleTimeout: the same for any tunnel (L{None}: never).
        @param refusalLogInterval: waiting for streams is logged at most
            once per this many seconds.
        """
        if kind not in ("tcp", "udp"):
            raise ValueError(f"tunnel kind must be 'tcp' or 'udp', not {kind!r}")
        self.reactor = reactor
        self.node = node
        self.peer = peer
        self.addrs = tuple(addrs)
        self.service = service
        #: The service the host said it opened (the default's real name
        #: when C{service} is empty), once it answered.
        self.servedService = ""
        self.kind = kind
        self.localPort = localPort
        self.bind = bind
        self.secret = secret
        self.compress = compress
        self.retryPolicy = retryPolicy or backoffPolicy()
        self.responseTimeout = responseTimeout
        self.resolveAddrs = resolveAddrs
        self._keepTag = f"forward:{id(self)}"
        self.stats = TunnelStats()
        self.listeningPort: Optional[IListeningPort] = None
        self.localAddress: Any = None
        self.maxQueued = maxQueued
        self.queueTimeout = queueTimeout
        self.halfClosedTimeout = halfClosedTimeout
        self.idleTimeout = idleTimeout
        self.refusalLogInterval = refusalLogInterval
        self._splices: set[Splice] = set()
        #: local connections waiting for a free stream: (splice, since,
        #: why), oldest first.
        self._queue: deque[tuple[Splice, float, str]] = deque()
        #: connections that had to wait for a stream, since start
        self.waited = 0
        self._queueTimer: Any = None
        self._queueDelay = _QUEUE_RETRY_MIN
        self._waitUnlogged = 0
        self._lastWaitLog: Optional[float] = None
        self._udp: Any = None
        #: the UDP forwarder's counters (a L{beam.tunnel.udp.UDPStats}),
        #: for a UDP forward once started.
        self.udpStats: Any = None
        offered = ("lz4",) if compress and _compressionAvailable() else ()
        self.request = TunnelRequest(
            service=service, kind=kind, compression=tuple(c for c in offered if c in COMPRESSIONS),
            secret=secret or b"",
        )
        self._requestBytes = encodeRequest(self.request)
        self._machine = ForwardMachine(
            ForwardCore(
                clock=reactor,
                listen=self._listen,
                close=self._close,
                connect=self._connectHost,
                resolve=self._resolveHost,
                hold=self._hold,
                release=self._release,
                retryPolicy=self.retryPolicy,
                steadyAfter=self.steadyAfter,
                label=self.label,
                log=self.log,
            )
        )

    @classmethod
    def fromShare(cls, reactor: Any, node: Any, share: Any, **kw: Any) -> "TunnelForward":
        """
        A forward to what a L{beam.tunnel.share.ShareAddress} names.
        """
        return cls(
            reactor, node, share.peer, share.addrs, share.service, secret=share.secret, **kw
        )

    @property
    def label(self) -> str:
        """
        C{<peer>/<service>}, for log lines.
        """
        return f"{self.peer}/{self.service or self.servedService or 'default'}"

    @property
    def state(self) -> str:
        """
        C{"stopped"}, C{"connecting"}, C{"connected"} or C{"unreachable:
        <reason>"}, for status output.
        """
        return self._machine.status()

    # -- lifecycle -------------------------------------------------------

    def startService(self) -> Deferred[None]:
        """
        Listen locally, then dial the host.  Fires once listening (or
        fails with why not, worded for the user); the dial goes on in the
        background (see L{state}).
        """
        super().startService()
        return self._machine.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop dialling or waiting, release the host connection, abort the
        tunnelled connections and close the local port.  Stopping twice is
        harmless.
        """
        super().stopService()
        return self._machine.stop()

    # -- the machine's effects -------------------------------------------

    def _listen(self) -> Deferred[None]:
        if self.kind == "udp":
            return self._listenUDP()
        endpoint = _serverEndpoint(self.reactor, self.localPort, self.bind)
        d = endpoint.listen(_ForwardFactory(self))

        def listening(port: IListeningPort) -> None:
            self.listeningPort = port
            self.localAddress = port.getHost()

        def failed(f: Failure) -> Failure:
            if f.check(CancelledError):
                return f
            # describe() already says "cannot listen on HOST:PORT: why".
            return Failure(BeamError(describe(f)))

        return d.addCallbacks(listening, failed)

    def _listenUDP(self) -> Deferred[None]:
        """
        Listen on a local UDP port; each client address becomes a session
        with its own tunnel stream (L{beam.tunnel.udp}).
        """
        from beam.tunnel.udp import UDPClientForwarder

        udp = UDPClientForwarder(self.reactor, self._openUDPStream, bind=self.bind, port=self.localPort,
                                 traffic=self.stats)
        try:
            port = udp.startListening()
        except Exception as e:  # noqa: BLE001 - reported to the caller
            return fail(BeamError(f"cannot listen on UDP {self.bind}:{self.localPort}: {e}"))
        self._udp = udp
        self.listeningPort = port
        self.localAddress = port.getHost()
        self.udpStats = udp.stats
        return succeed(None)

    def _close(self) -> Deferred[Any]:
        for splice in list(self._splices):
            splice.abort()
        self._stopQueueTimer()
        queued, self._queue = self._queue, deque()
        for splice, _, _ in queued:
            _closeLocal(splice, abort=True)
        port, self.listeningPort = self.listeningPort, None
        if self._udp is not None:
            udp, self._udp = self._udp, None
            return udp.stopListening()
        if port is not None:
            return maybeDeferred(port.stopListening)
        return succeed(None)

    def _hold(self) -> None:
        # Keep the host connection open while idle: re-dialling after the
        # node's idle timeout would only add latency to the next request.
        self.node.protect(self.peer, self._keepTag)
        self.node.addConnectionObserver(self._connectionEvent)

    def _release(self) -> None:
        self.node.unprotect(self.peer, self._keepTag)
        self.node.removeConnectionObserver(self._connectionEvent)

    def _connectHost(self) -> Deferred[Any]:
        """
        Dial the host (the node reuses a connection it has).  A dial that
        failed while the host connected to us meanwhile is a success.
        """
        self._learnAddrs()

        def failed(f: Failure) -> Any:
            if not f.check(CancelledError) and self._connected():
                return None
            return f

        return self.node.connect(self.peer).addErrback(failed)

    def _resolveHost(self) -> Deferred[None]:
        if self.resolveAddrs is None:
            return succeed(None)
        return maybeDeferred(self.resolveAddrs).addCallback(self._refreshAddrs)

    # -- the peer connection ---------------------------------------------

    def _learnAddrs(self) -> None:
        self.node.peerStore.addAddrs(self.peer, self.addrs, "user")

    def _refreshAddrs(self, addrs: Sequence[Multiaddr]) -> None:
        """
        The host's current addresses (re-resolved from its name record)
        replace what the node knew, so a host that moved is found at its
        new address.
        """
        fresh = [a.withoutPeerID() for a in addrs]
        if not fresh:
            return
        self.addrs = tuple(fresh)
        # The record is the owner's word on where it is now: addresses it
        # no longer lists are dropped, not tried first.
        self.node.peerStore.removeAddrs(self.peer)
        self.node.peerStore.addAddrs(self.peer, fresh, "user")

    def _connected(self) -> bool:
        conn = self.node.connectionTo(self.peer)
        return conn is not None and not conn.closed

    def _connectionEvent(self, event: str, conn: Any) -> None:
        """
        Node connection events, as machine inputs: a usable connection to
        the host appeared, or the last one ended.
        """
        if conn.remotePeer != self.peer:
            return
        if event == "connected" and self._connected():
            self._machine.hostConnected()
        elif event == "disconnected" and not self._connected():
            self._machine.hostLost()

    # -- one local connection --------------------------------------------

    def probe(self) -> Deferred[None]:
        """
        Check, without opening a tunnel, that the host is reachable and would
        accept ours (service exists, right kind, access granted).

        @return: fires with L{None}, or fails with the dial error or the
            refusal (L{TunnelRefused}), worded for the user.
        """
        request = attrs.evolve(self.request, probe=True)

        def ask(_: Any) -> Deferred[Any]:
            negotiator = _ClientStream(self, encodeRequest(request))
            opened = self.node.openStream(self.peer, [TUNNEL_PROTOCOL], lambda: negotiator)
            def answered(answer: tuple[Any, TunnelResponse]) -> None:
                self._noteServed(answer[1])
                answer[0].transport.loseConnection()

            return opened.addCallback(lambda _: negotiator.result).addCallback(answered)

        self._learnAddrs()
        return self.node.connect(self.peer).addCallback(ask)

    def _noteServed(self, response: TunnelResponse) -> None:
        """
        Remember which service the host opened, for status and the CLI
        (a request for the default service learns its real name here).
        """
        if response.service:
            self.servedService = response.service

    def _ask(self) -> Deferred[tuple["_ClientStream", TunnelResponse]]:
        """
        Open a tunnel stream and send our request.

        @return: fires with the negotiating protocol (still connected to
            the stream; the caller installs the tunnel's protocol) and the
            host's OK, or fails with the refusal (L{TunnelRefused}) or why
            the stream could not be opened.  Every failure is logged here
            in one line and counted.  Cancelling it resets the stream.
        """
        refusal = self._machine.refusal()
        if refusal is not None:
            self.stats.failed += 1
            self.log.info("tunnel to {label} failed: {reason}", label=self.label, reason=str(refusal))
            return fail(refusal)
        negotiator = _ClientStream(self)
        result = negotiator.result
        d = self.node.openStream(self.peer, [TUNNEL_PROTOCOL], lambda: negotiator)
        negotiator.opening = d

        def openFailed(f: Failure) -> None:
            negotiator.opening = None
            if negotiator.finished:
                return
            negotiator.finished = True
            if f.check(CancelledError):
                return
            if f.check(*_STREAM_LIMITS) and self._connected():
                result.errback(NoStreamFree(describe(f)))
                return
            self.stats.failed += 1
            self.log.info("tunnel to {label} failed: {reason}", label=self.label, reason=describe(f))
            if f.check(DialError) or not self._connected():
                # The node's own dial failed, or the connection is gone:
                # the machine decides whether that starts a backoff.
                self._machine.streamFailed(describe(f))
            result.errback(f)

        def opened(_: Any) -> None:
            negotiator.opening = None

        d.addCallbacks(opened, openFailed)
        return result

    def _localConnected(self, splice: Splice) -> None:
        """
        An app connected (its reading is paused): ask the host, then
        splice, or close the app's connection (or queue it when no stream
        is free).
        """
        self._attempt(splice, None)

    def _attempt(self, splice: Splice, since: Optional[float]) -> None:
        """
        Ask the host for a tunnel for C{splice}'s app connection, waiting
        (queued) since C{since}, or new (L{None}).
        """
        local = splice.local

        def accepted(answer: tuple[_ClientStream, TunnelResponse]) -> None:
            negotiator, response = answer
            self._noteServed(response)
            stream = negotiator.transport
            if local.lost:
                stream.abortConnection()
                return
            wrapped = wrapStream(splice.remote, response.compression)
            stream.setProtocol(wrapped)
            if negotiator.reader.leftover:
                wrapped.dataReceived(negotiator.reader.leftover)
            self._splices.add(splice)
            splice.start()
            if since is not None:
                # There was room for this one: maybe for the next too.
                self._queueDelay = _QUEUE_RETRY_MIN
                self._drainOne()

        def failed(f: Failure) -> None:
            if local.lost:
                return
            if f.check(*_WAIT_FOR_STREAM):
                self._wait(splice, since, f.getErrorMessage())
                return
            _closeLocal(splice, abort=not f.check(TunnelRefused))

        self._ask().addCallbacks(accepted, failed)

    # -- waiting for a free stream -----------------------------------------

    def _wait(self, splice: Splice, since: Optional[float], why: str) -> None:
        """
        No stream is free for C{splice}: queue it (a retried one goes back
        to the front, keeping its place), or close it when the queue is
        full or it waited too long.
        """
        now = self.reactor.seconds()
        if since is None:
            if len(self._queue) >= self.maxQueued:
                self._giveUp(splice, f"{self.maxQueued} connections are already waiting for a stream ({why})")
                return
            self._queue.append((splice, now, why))
            self.waited += 1
        elif now - since >= self.queueTimeout:
            self._giveUp(splice, f"no stream was free within {self.queueTimeout:g} s ({why})")
            return
        else:
            self._queue.appendleft((splice, since, why))
        self._waitUnlogged += 1
        if self._lastWaitLog is None or now - self._lastWaitLog >= self.refusalLogInterval:
            self.log.info(
                "tunnel to {label}: no stream free ({reason}); {n} connection(s) waiting, "
                "{count} wait(s) since the last report",
                label=self.label, reason=why, n=len(self._queue), count=self._waitUnlogged,
            )
            self._waitUnlogged = 0
            self._lastWaitLog = now
        if self._queueTimer is None:
            self._queueTimer = self.reactor.callLater(self._queueDelay, self._queueTick)

    def _giveUp(self, splice: Splice, why: str) -> None:
        self.stats.failed += 1
        self.log.warn("tunnel to {label} failed: {reason}", label=self.label, reason=why)
        _closeLocal(splice, abort=True)

    def _queueTick(self) -> None:
        """
        The retry timer: drop what waited too long, retry the oldest (in
        case no tunnel of ours ends to make room), and back off while the
        queue stays full.
        """
        self._queueTimer = None
        now = self.reactor.seconds()
        kept: deque[tuple[Splice, float, str]] = deque()
        for splice, since, why in self._queue:
            if splice.local.lost:
                continue
            if now - since >= self.queueTimeout:
                self._giveUp(splice, f"no stream was free within {self.queueTimeout:g} s ({why})")
            else:
                kept.append((splice, since, why))
        self._queue = kept
        if not kept:
            self._queueDelay = _QUEUE_RETRY_MIN
            return
        self._drainOne()
        self._queueDelay = min(_QUEUE_RETRY_MAX, self._queueDelay * 2)
        if self._queueTimer is None and self._queue:
            self._queueTimer = self.reactor.callLater(self._queueDelay, self._queueTick)

    def _drainOne(self) -> None:
        """
        Retry the oldest waiting connection (its app may have gone).
        """
        while self._queue:
            splice, since, _ = self._queue.popleft()
            if not splice.local.lost:
                self._attempt(splice, since)
                return
        self._stopQueueTimer()

    def _stopQueueTimer(self) -> None:
        if self._queueTimer is not None and self._queueTimer.active():
            self._queueTimer.cancel()
        self._queueTimer = None

    def _openUDPStream(self, proto: IProtocol) -> Deferred[IProtocol]:
        """
        For the UDP forwarder: a tunnel stream connected to C{proto}.
        """
        def accepted(answer: tuple[_ClientStream, TunnelResponse]) -> IProtocol:
            negotiator, response = answer
            self._noteServed(response)
            wrapped = wrapStream(proto, response.compression)
            negotiator.transport.setProtocol(wrapped)
            if negotiator.reader.leftover:
                wrapped.dataReceived(negotiator.reader.leftover)
            return proto

        def failed(f: Failure) -> Failure:
            if f.check(*_WAIT_FOR_STREAM):
                # A datagram session is not queued: its datagrams are
                # dropped meanwhile, and the next one tries again.
                self.stats.failed += 1
                self.log.info("tunnel to {label} failed: {reason}", label=self.label, reason=f.getErrorMessage())
            return f

        return self._ask().addCallbacks(accepted, failed)

    def _spliceEnded(self, splice: Splice) -> None:
        self._splices.discard(splice)
        if self._queue:
            # One of our streams is closing: make room for a waiting one.
            # (Not from inside the teardown: the stream is freed after it.)
            self.reactor.callLater(0, self._drainOne)


#: Seconds between retries of a waiting connection when none of the
#: forward's own tunnels ends to make room (doubling up to the maximum).
_QUEUE_RETRY_MIN = 0.05
_QUEUE_RETRY_MAX = 1.0


def _closeLocal(splice: Splice, abort: bool) -> None:
    """
    Close (or abort) an app connection that got no tunnel.
    """
    local = splice.local
    if local.lost or local.transport is None:
        return
    transport: Any = local.transport  # a TCP transport: it can abort
    if abort:
        transport.abortConnection()
    else:
        transport.loseConnection()


def _serverEndpoint(reactor: Any, port: int, bind: str) -> Any:
    try:
        isV6 = ipaddress.ip_address(bind).version == 6
    except ValueError:
        isV6 = False
    # A deep accept queue: an app opening hundreds of connections at once
    # (a browser, a load test) must not overflow it while the reactor is
    # busy, or the kernel resets some of them.
    if isV6:
        return endpoints.TCP6ServerEndpoint(reactor, port, backlog=LISTEN_BACKLOG, interface=bind)
    return endpoints.TCP4ServerEndpoint(reactor, port, backlog=LISTEN_BACKLOG, interface=bind)


class _ForwardFactory(Factory):
    """
    Each accepted local connection gets a new L{Splice}'s local side.
    """

    noisy = False

    def __init__(self, forward: TunnelForward) -> None:
        self.forward = forward

    def buildProtocol(self, addr: Any) -> Protocol:
        forward = self.forward
        splice = Splice(
            forward.stats,
            onEnd=forward._spliceEnded,
            onLocalConnected=forward._localConnected,
            clock=forward.reactor,
            halfClosedTimeout=forward.halfClosedTimeout,
            idleTimeout=forward.idleTimeout,
        )
        return splice.local


@implementer(IHalfCloseableProtocol)
class TunnelRequester(Protocol):
    """
    A client's protocol on a new tunnel stream until the host answered:
    writes the request and reads the response, then calls one of
    L{answered} (an OK), L{refused} (the host's refusal, our side already
    closed) or L{failed} (anything else that ended the exchange), exactly
    once.  Forwards (L{TunnelForward}) and in-process clients
    (L{beam.endpoints}) build on it.

    @ivar reader: the response reader (its C{leftover} is what followed
        the response: the tunnel's first bytes).
    @ivar finished: one of the three was called (or the exchange was
        abandoned).
    """

    #: a yamux stream (it can abort and hand over to another protocol)
    transport: Any = None

    def __init__(self, request: bytes, label: str) -> None:
        """
        @param request: the encoded request.
        @param label: who we are talking to, for messages.
        """
        self.request = request
        self.label = label
        self.reader = ResponseReader()
        self.finished = False

    def answered(self, response: TunnelResponse) -> None:
        """
        The host said OK.
        """

    def refused(self, error: TunnelRefused) -> None:
        """
        The host refused with C{error}.
        """

    def failed(self, error: BeamError) -> None:
        """
        The exchange failed: a bad answer, or the stream ended first.
        """

    def lostBeforeAnswer(self, reason: Optional[Failure]) -> BeamError:
        """
        The error for a stream that ended (C{reason}) or was finished by
        the host (L{None}) before it answered.
        """
        if reason is None:
            return HostUnreachable(f"{self.label} closed the tunnel stream without answering")
        return HostUnreachable(
            f"the tunnel stream to {self.label} ended before it answered ({reason.getErrorMessage()})"
        )

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        try:
            response = self.reader.feed(data)
        except ProtocolError as e:
            self._fail(InvalidTunnelMessage(f"bad answer from {self.label}: {e}"))
            self.transport.abortConnection()
            return
        if response is None:
            return
        self.finished = True
        if response.ok:
            self.answered(response)
            return
        self.transport.loseConnection()
        self.refused(refusalFor(response))

    def _fail(self, error: BeamError) -> None:
        if not self.finished:
            self.finished = True
            self.failed(error)

    def readConnectionLost(self) -> None:
        if not self.finished:
            self._fail(self.lostBeforeAnswer(None))
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.finished:
            self._fail(self.lostBeforeAnswer(reason))


class _ClientStream(TunnelRequester):
    """
    A forward's L{TunnelRequester}, with a response timeout.

    @ivar result: fires with C{(self, response)} on OK, or fails with the
        refusal or whatever ended the stream first.  A failure for want
        of a stream (L{NoStreamFree}, L{TunnelBusy}) is neither counted
        nor logged here: the forward queues the connection.
    """

    def __init__(self, forward: TunnelForward, requestBytes: Optional[bytes] = None) -> None:
        super().__init__(forward._requestBytes if requestBytes is None else requestBytes, "the host")
        self.forward = forward
        self.opening: Optional[Deferred[Any]] = None
        self._timer: Any = None
        self.result: Deferred[tuple[_ClientStream, TunnelResponse]] = Deferred(self._cancel)

    def _cancel(self, d: Any) -> None:
        self.finished = True
        self._cancelTimer()
        if self.opening is not None:
            self.opening.cancel()
        elif self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self) -> None:
        super().connectionMade()
        self._timer = self.forward.reactor.callLater(self.forward.responseTimeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        self._fail(BeamError(f"the host did not answer within {self.forward.responseTimeout:g} s"))
        self.transport.abortConnection()

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def lostBeforeAnswer(self, reason: Optional[Failure]) -> BeamError:
        if reason is None:
            return InvalidTunnelMessage("the host closed the stream without answering")
        if reason.check(StreamReset):
            # A host over its stream limit resets new streams.
            return NoStreamFree("the host reset the tunnel stream before answering")
        return BeamError(f"the tunnel stream ended before the host answered ({describe(reason)})")

    def answered(self, response: TunnelResponse) -> None:
        self._cancelTimer()
        self.result.callback((self, response))

    def refused(self, error: TunnelRefused) -> None:
        self._cancelTimer()
        if not isinstance(error, TunnelBusy):
            forward = self.forward
            forward.stats.refused += 1
            forward.log.warn("tunnel to {label} refused: {reason}", label=forward.label, reason=str(error))
        self.result.errback(error)

    def failed(self, error: BeamError) -> None:
        self._cancelTimer()
        if not isinstance(error, NoStreamFree):
            forward = self.forward
            forward.stats.failed += 1
            forward.log.warn("tunnel to {label} failed: {reason}", label=forward.label, reason=str(error))
        self.result.errback(error)

    def _fail(self, error: BeamError) -> None:
        self._cancelTimer()
        super()._fail(error)
