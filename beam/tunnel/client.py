"""
The client side of tunnels: a local port that leads to a peer's service.

L{TunnelForward} listens on a local port.  Each accepted connection is
paused at once; a tunnel stream is opened to the host peer, the request
written, and on the host's OK the two are spliced and the connection
resumed.  A refusal closes the local connection with one log line.

The forward also keeps the peer connection up: while the host is
reachable new connections cost one stream and one request/response; when
it goes away the forward re-dials with exponential backoff and jitter (the
C{retryPolicy}, on the injected reactor), and while the last attempt
failed new local connections are closed at once (fail fast) instead of
hanging until a dial times out.
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

from beam.errors import BeamError, DialError, ProtocolError
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
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


class HostUnreachable(DialError):
    """
    The host peer cannot be reached at the moment.
    """


class TunnelForward(Service):
    """
    A local port forwarded to a service of a peer.

    @ivar state: C{"stopped"}, C{"connecting"}, C{"connected"} or
        C{"unreachable: <reason>"}, for status output.
    @ivar stats: connection and byte counters.
    @ivar listeningPort: the local listening port, once started.
    @ivar localAddress: its address (C{.host}, C{.port}), once started.
    """

    log = Logger()

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
            L{backoffPolicy} (1 s growing 1.5x to 60 s, with jitter).
        @param responseTimeout: seconds to wait for the host's answer to a
            tunnel request.
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
        self._keptAlive = False
        self._keepTag = f"forward:{id(self)}"
        self.state = "stopped"
        self.stats = TunnelStats()
        self.listeningPort: Optional[IListeningPort] = None
        self.localAddress: Any = None
        self._splices: set[Splice] = set()
        self._failures = 0
        self._lastError: Optional[str] = None
        self._dialing: Optional[Deferred[Any]] = None
        self._retryCall: Any = None
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

    # -- lifecycle -------------------------------------------------------

    def startService(self) -> Deferred[None]:  # type: ignore[override]
        """
        Listen locally and dial the host.  Fires once listening; the dial
        goes on in the background (see L{state}).
        """
        super().startService()
        # Keep the host connection open while idle: re-dialling after the
        # node's idle timeout would only add latency to the next request.
        if not self._keptAlive:
            self._keptAlive = True
            self.node.protect(self.peer, self._keepTag)
        self._learnAddrs()
        self.node.addConnectionObserver(self._connectionEvent)
        self._dial()
        if self.kind == "udp":
            return self._startUDP()
        endpoint = _serverEndpoint(self.reactor, self.localPort, self.bind)
        d = endpoint.listen(_ForwardFactory(self))

        def listening(port: IListeningPort) -> None:
            self.listeningPort = port
            self.localAddress = port.getHost()

        def failed(f: Failure) -> Failure:
            self._stopDialling()
            return Failure(BeamError(f"cannot listen on {self.bind}:{self.localPort}: {f.getErrorMessage()}"))

        return d.addCallbacks(listening, failed)

    def _startUDP(self) -> Deferred[None]:
        """
        Listen on a local UDP port; each client address becomes a session
        with its own tunnel stream (L{beam.tunnel.udp}).
        """
        from beam.tunnel.udp import UDPClientForwarder

        self._udp = UDPClientForwarder(
            self.reactor, self._openUDPStream, bind=self.bind, port=self.localPort
        )
        try:
            port = self._udp.startListening()
        except Exception as e:  # noqa: BLE001 - reported to the caller
            self._stopDialling()
            self._udp = None
            return fail(BeamError(f"cannot listen on UDP {self.bind}:{self.localPort}: {e}"))
        self.listeningPort = port
        self.localAddress = port.getHost()
        self.udpStats = self._udp.stats
        return succeed(None)

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """
        Stop listening, stop re-dialling, abort the tunnelled connections.
        """
        super().stopService()
        self.state = "stopped"
        if self._keptAlive:
            self._keptAlive = False
            self.node.unprotect(self.peer, self._keepTag)
        self._stopDialling()
        self.node.removeConnectionObserver(self._connectionEvent)
        for splice in list(self._splices):
            splice.abort()
        port, self.listeningPort = self.listeningPort, None
        if self._udp is not None:
            udp, self._udp = self._udp, None
            return udp.stopListening()
        if port is not None:
            return maybeDeferred(port.stopListening)
        return succeed(None)

    def _stopDialling(self) -> None:
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None
        if self._dialing is not None:
            d, self._dialing = self._dialing, None
            d.cancel()

    # -- the peer connection ---------------------------------------------

    def _learnAddrs(self) -> None:
        self.node.peerStore.addAddrs(self.peer, self.addrs, "user")

    def _refreshAddrs(self, addrs: Sequence[Multiaddr]) -> None:
        """
        The host's current addresses (re-resolved from its name record)
        go first, so a host that moved is found at its new address.
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

    def _dial(self) -> None:
        """
        Dial the host unless already connected or dialling.
        """
        if not self.running or self._dialing is not None:
            return
        if self._connected():
            self._failures = 0
            self._lastError = None
            self.state = "connected"
            return
        self.state = "connecting"
        self._learnAddrs()
        d = self.node.connect(self.peer)
        self._dialing = d

        def ok(_: Any) -> None:
            self._dialing = None
            self._failures = 0
            self._lastError = None
            self.state = "connected"
            self.log.info("tunnel to {label}: connected", label=self.label)

        def bad(f: Failure) -> None:
            if self._dialing is not d:
                return  # cancelled by stopService
            self._dialing = None
            self._hostLost(f.getErrorMessage())

        d.addCallbacks(ok, bad)

    def _hostLost(self, reason: str) -> None:
        """
        A dial failed: report, and try again after a backoff.
        """
        self._failures += 1
        self._lastError = reason
        self.state = f"unreachable: {reason}"
        if not self.running:
            return
        if self._retryCall is None or not self._retryCall.active():
            delay = self.retryPolicy(self._failures)
            self.log.info(
                "tunnel to {label}: host unreachable ({reason}); retrying in {delay:.1f} s",
                label=self.label, reason=reason, delay=delay,
            )
            self._retryCall = self.reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retryCall = None
        if self.resolveAddrs is None:
            self._dial()
            return

        def failed(f: Failure) -> None:
            self.log.info("tunnel to {label}: re-resolving failed: {why}", label=self.label, why=f.getErrorMessage())

        d = maybeDeferred(self.resolveAddrs)
        d.addCallbacks(self._refreshAddrs, failed)
        d.addBoth(lambda _: self._dial() if self.running else None)

    def _connectionEvent(self, event: str, conn: Any) -> None:
        if event != "disconnected" or conn.remotePeer != self.peer or not self.running:
            return
        if self._connected():
            return
        if self._retryCall is not None and self._retryCall.active():
            return
        self.log.info("tunnel to {label}: connection to the host lost; reconnecting", label=self.label)
        self._dial()

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
        if self._lastError is not None:
            self.stats.failed += 1
            reason = f"host unreachable ({self._lastError})"
            self.log.info("tunnel to {label} failed: {reason}", label=self.label, reason=reason)
            return fail(HostUnreachable(reason))
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
            self.log.info("tunnel to {label} failed: {reason}", label=self.label, reason=f.getErrorMessage())
            if (f.check(DialError) or not self._connected()) and self._dialing is None:
                self._hostLost(f.getErrorMessage())
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
            if f.check(TunnelRefused):
                local.transport.loseConnection()
            else:
                local.transport.abortConnection()

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

    def buildProtocol(self, addr: Any) -> IProtocol:
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
            self._fail(BeamError(f"the tunnel stream ended before the host answered ({reason.getErrorMessage()})"))
