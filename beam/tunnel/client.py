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
(fail fast) instead of hanging until a dial times out.  That lifecycle is
the state machine in L{beam.tunnel._forward_machine} (drawn in
docs/state-machines/tunnel-forward.md); this module supplies its effects
and feeds it the node's connection events.
"""

from __future__ import annotations

import ipaddress
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

from beam.errors import BeamError, DialError, ProtocolError, describe
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.tunnel._forward_machine import ForwardCore, ForwardMachine, HostUnreachable
from beam.tunnel.host import COMPRESSIONS, _compressionAvailable, wrapStream
from beam.tunnel.protocol import (
    TUNNEL_PROTOCOL,
    InvalidTunnelMessage,
    ResponseReader,
    TunnelRefused,
    TunnelRequest,
    TunnelResponse,
    encodeRequest,
    refusalFor,
)
from beam.tunnel.splice import Splice, TunnelStats

__all__ = ["TunnelForward", "HostUnreachable"]

#: The accept queue of a forward's local port.
LISTEN_BACKLOG = 1024


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
        """
        if kind not in ("tcp", "udp"):
            raise ValueError(f"tunnel kind must be 'tcp' or 'udp', not {kind!r}")
        self.reactor = reactor
        self.node = node
        self.peer = peer
        self.addrs = tuple(addrs)
        self.service = service
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
        self._splices: set[Splice] = set()
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
        return f"{self.peer}/{self.service or 'default'}"

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

        udp = UDPClientForwarder(self.reactor, self._openUDPStream, bind=self.bind, port=self.localPort)
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
            return opened.addCallback(lambda _: negotiator.result).addCallback(
                lambda answer: answer[0].transport.loseConnection()
            )

        self._learnAddrs()
        return self.node.connect(self.peer).addCallback(ask)

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
        splice, or close the app's connection.
        """
        local = splice.local

        def accepted(answer: tuple[_ClientStream, TunnelResponse]) -> None:
            negotiator, response = answer
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

        def failed(f: Failure) -> None:
            if local.lost:
                return
            transport: Any = local.transport  # a TCP transport: it can abort
            if f.check(TunnelRefused):
                transport.loseConnection()
            else:
                transport.abortConnection()

        self._ask().addCallbacks(accepted, failed)

    def _openUDPStream(self, proto: IProtocol) -> Deferred[IProtocol]:
        """
        For the UDP forwarder: a tunnel stream connected to C{proto}.
        """
        def accepted(answer: tuple[_ClientStream, TunnelResponse]) -> IProtocol:
            negotiator, response = answer
            wrapped = wrapStream(proto, response.compression)
            negotiator.transport.setProtocol(wrapped)
            if negotiator.reader.leftover:
                wrapped.dataReceived(negotiator.reader.leftover)
            return proto

        return self._ask().addCallback(accepted)

    def _spliceEnded(self, splice: Splice) -> None:
        self._splices.discard(splice)


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
        )
        return splice.local


@implementer(IHalfCloseableProtocol)
class _ClientStream(Protocol):
    """
    The protocol on an outbound tunnel stream until the host answered:
    writes the request and reads the response.

    @ivar result: fires with C{(self, response)} on OK, or fails with the
        refusal or whatever ended the stream first.
    """

    #: a yamux stream (it can abort and hand over to another protocol)
    transport: Any

    def __init__(self, forward: TunnelForward, requestBytes: Optional[bytes] = None) -> None:
        self.forward = forward
        self.requestBytes = forward._requestBytes if requestBytes is None else requestBytes
        self.reader = ResponseReader()
        self.opening: Optional[Deferred[Any]] = None
        self.finished = False
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
        self.transport.write(self.requestBytes)
        self._timer = self.forward.reactor.callLater(self.forward.responseTimeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        self._fail(BeamError(f"the host did not answer within {self.forward.responseTimeout:g} s"))
        self.transport.abortConnection()

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        try:
            response = self.reader.feed(data)
        except ProtocolError as e:
            self._fail(InvalidTunnelMessage(f"bad answer from the host: {e}"))
            self.transport.abortConnection()
            return
        if response is None:
            return
        self.finished = True
        self._cancelTimer()
        forward = self.forward
        if response.ok:
            self.result.callback((self, response))
            return
        error = refusalFor(response)
        forward.stats.refused += 1
        forward.log.warn("tunnel to {label} refused: {reason}", label=forward.label, reason=str(error))
        self.transport.loseConnection()
        self.result.errback(error)

    def _fail(self, error: BeamError) -> None:
        self._cancelTimer()
        if self.finished:
            return
        self.finished = True
        forward = self.forward
        forward.stats.failed += 1
        forward.log.warn("tunnel to {label} failed: {reason}", label=forward.label, reason=str(error))
        self.result.errback(error)

    def readConnectionLost(self) -> None:
        if not self.finished:
            self._fail(InvalidTunnelMessage("the host closed the stream without answering"))
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.finished:
            self._fail(BeamError(f"the tunnel stream ended before the host answered ({describe(reason)})"))
