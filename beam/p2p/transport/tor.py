"""
The Tor transport: C{/onion3/<56 base32 chars>:<port>} addresses, and in
mode C{"always"} every TCP address too, reached through Tor.

Everything Tor-related is txtorcon's: a dial is C{tor.stream_via(host,
port)}, txtorcon's SOCKS client endpoint, and the libp2p upgrade (Noise or
TLS, yamux) then runs over that stream unchanged, so the peer ID is
verified end to end as over TCP.  This module imports no txtorcon: the
L{TorService<beam.daemon.tor.TorService>} hands it the C{Tor} object
(L{TorTransport.setTor}) once tor runs.

How listening fits together (the onion service belongs to the service,
the sockets to the transport):

  1. the service asks the transport for a local I{target} listener
     (L{TorTransport.openTarget}): a UNIX socket in the node's home when
     we launched tor ourselves, else C{127.0.0.1:<random port>} (a system
     tor runs as another user and could not open our socket);
  2. the service creates the v3 onion service pointing at that target and
     tells the transport its address (L{TorTransport.setOnion});
  3. the service makes the node listen on that C{/onion3} address: the
     node calls L{TorTransport.listen} with its factory, and from then on
     connections tor makes to the target are the node's inbound
     connections of the C{"tor"} transport.  Until then the target refuses
     them.

An onion service never learns its client's address: both ends of an
inbound connection are named by our own onion address
(L{TorTransport.multiaddrOf}).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import BeamError, DialError, describe
from beam.identity.multiaddr import Multiaddr
from beam.p2p.interfaces import IListener, ITransport

__all__ = ["OnionListener", "TorTransport", "onionTarget"]

#: The modes in which a node has a Tor transport at all.
MODES = ("fallback", "always")


def onionTarget(addr: Multiaddr) -> Optional[tuple[str, int]]:
    """
    C{("<56 chars>.onion", port)} for C{/onion3/<56 chars>:<port>} (with at
    most a trailing C{/p2p}), else L{None}.  The retired v2 C{/onion}
    addresses are not dialable: tor no longer supports them.
    """
    comps = addr.withoutPeerID().components()
    if len(comps) != 1 or comps[0][0] != "onion3" or comps[0][1] is None:
        return None
    host, _, port = comps[0][1].partition(":")
    return f"{host}.onion", int(port)


def parseSocks(text: str) -> tuple[str, Any]:
    """
    A SOCKS listener as tor names it (C{GETINFO net/listeners/socks}, or
    the configuration): C{("unix", path)} for C{unix:/path}, else
    C{(host, port)} for C{127.0.0.1:9050} or C{[::1]:9050}.

    @raise ValueError: neither.
    """
    text = text.strip().strip('"')
    if text.startswith("unix:"):
        return "unix", text[len("unix:"):]
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not a SOCKS listener: {text!r}")
    return host.strip("[]"), int(port)


@implementer(IListener)
class OnionListener:
    """
    The node's listener on our onion address: stopping it closes the local
    target the onion service points at.
    """

    def __init__(self, transport: "TorTransport", addr: Multiaddr) -> None:
        self.addr = addr
        self._transport = transport

    def stopListening(self) -> Deferred[None]:
        return self._transport._stopListener(self)


class _TargetFactory(Factory):
    """
    The target listener's factory: hands each connection tor makes to the
    node's factory, once the node listens on the onion; refuses it before.
    """

    noisy = False

    def __init__(self, transport: "TorTransport") -> None:
        self.transport = transport

    def buildProtocol(self, addr: Any) -> Any:
        factory = self.transport._factory
        if factory is None:
            return None
        return factory.buildProtocol(addr)


@implementer(IStreamClientEndpoint)
class _TrackingEndpoint:
    """
    Tor's SOCKS port, remembering the SOCKS connection it made: a dial that
    times out or is cancelled while tor is still building its circuit
    (txtorcon's endpoint then waits on the SOCKS reply, which no
    cancellation reaches) is aborted through it instead of holding a
    descriptor until tor gives up.
    """

    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint
        self.protocol: Any = None

    def connect(self, factory: Any) -> Deferred[Any]:
        def made(protocol: Any) -> Any:
            self.protocol = protocol
            return protocol

        d: Deferred[Any] = self._endpoint.connect(factory)
        return d.addCallback(made)

    def abort(self) -> None:
        transport = getattr(self.protocol, "transport", None)
        if transport is not None:
            transport.abortConnection()


@implementer(ITransport)
class TorTransport:
    """
    Dial through Tor, and accept the connections of our onion service.

    @ivar mode: C{"fallback"} (only C{/onion3} addresses) or C{"always"}
        (TCP addresses too, through an exit: never a direct connection).
    @ivar socks: tor's SOCKS listener (C{"127.0.0.1:9050"} or
        C{"unix:/path"}), or L{None} for txtorcon's default.
    @ivar onion: our C{/onion3/<ours>:<port>}, once published.
    @ivar minDialTimeout: the shortest timeout a dial gets, whatever the
        node asks: a Tor circuit to an onion service takes seconds to tens
        of seconds to build (the node's timeout is meant for TCP).
    """

    name = "tor"
    limited = False
    usesFD = True
    log = Logger()

    def __init__(self, reactor: Any, mode: str, socks: Optional[str] = None, *,
                 minDialTimeout: float = 60.0) -> None:
        if mode not in MODES:
            raise ValueError(f"the Tor transport runs in mode 'fallback' or 'always', not {mode!r}")
        self.reactor = reactor
        self.mode = mode
        self.socks = socks
        self.minDialTimeout = minDialTimeout
        self.tor: Any = None
        self.onion: Optional[Multiaddr] = None
        self._notReady = "Tor is not running"
        self._failed = False
        self._waiting: list[Deferred[Any]] = []
        self._target: Optional[IListeningPort] = None
        self._targetAddr: Any = None
        self._factory: Any = None
        self._listener: Optional[OnionListener] = None

    # -- what the Tor service tells us -------------------------------------

    def setStarting(self, why: str) -> None:
        """
        Tor is on its way (C{why}, e.g. C{"Tor is still starting (45 %)"}):
        dials wait for it, within their timeout, and fail with C{why} if it
        does not come in time.
        """
        self._notReady = why
        self._failed = False

    def setTor(self, tor: Any, socks: Optional[str] = None) -> None:
        """
        Tor runs: C{tor} is txtorcon's C{Tor}; C{socks} its SOCKS listener
        (if known).  Dials waiting for it go ahead.
        """
        self.tor = tor
        if socks is not None:
            self.socks = socks
        self._failed = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(tor)

    def setFailed(self, why: str) -> None:
        """
        Tor is not running (it failed, or the service stopped): every dial
        fails at once with C{why}, those waiting too.
        """
        self.tor = None
        self._notReady = why
        self._failed = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(DialError(why))

    def setOnion(self, addr: Optional[Multiaddr]) -> None:
        """
        Our onion service's address (C{/onion3/<ours>:<port>}), or L{None}
        once it is removed.
        """
        self.onion = addr.withoutPeerID() if addr is not None else None

    # -- ITransport --------------------------------------------------------

    def _dialTarget(self, addr: Multiaddr) -> Optional[tuple[str, int]]:
        target = onionTarget(addr)
        if target is not None:
            return target
        if self.mode == "always":
            tcp = addr.withoutPeerID().tcpTarget()
            # Not IPv6 literals: txtorcon (26.6) packs an IPv6 address
            # into the 4 bytes of an IPv4 one in its SOCKS request, which
            # no exit could follow.  Names and IPv4 addresses go through.
            if tcp is not None and tcp[2] != "ip6":
                return tcp[0], tcp[1]
        return None

    def canDial(self, addr: Multiaddr) -> bool:
        return self._dialTarget(addr) is not None

    def canListen(self, addr: Multiaddr) -> bool:
        return self.onion is not None and addr.withoutPeerID() == self.onion

    def dial(self, addr: Multiaddr, factory: Any, timeout: float) -> Deferred[Any]:
        target = self._dialTarget(addr)
        if target is None:
            return fail(DialError(f"cannot dial {addr} over Tor: not an onion address"))
        return _TorDial(self, addr, target, factory).start(max(timeout, self.minDialTimeout))

    def listen(self, addr: Multiaddr, factory: Any) -> Deferred[IListener]:
        if not self.canListen(addr):
            return fail(DialError(f"cannot listen on {addr}: it is not this node's onion address"))
        if self._target is None:
            return fail(DialError(f"cannot listen on {addr}: the onion service's local listener is closed"))
        assert self.onion is not None
        self._factory = factory
        self._listener = OnionListener(self, self.onion)
        return succeed(self._listener)

    def multiaddrOf(self, address: Any) -> Optional[Multiaddr]:
        """
        Inbound connections come from tor to our target: both their ends
        are our onion address.  An outbound one's far end is tor's SOCKS
        port, which names nobody (L{None}: the node uses the address it
        dialled); its near end is our onion address too, or before we have
        one the socket it left from (loopback TCP, or C{/unix/<tor's SOCKS
        socket>}).
        """
        if isinstance(address, UNIXAddress):
            name = address.name.decode() if isinstance(address.name, bytes) else (address.name or "")
            socks = self._socksPath()
            if socks is not None and name == socks:
                return None
            if self.onion is not None:
                return self.onion
            # An outbound connection through a UNIX SOCKS socket, before we
            # have an onion: it left through that socket.
            where = name or socks
            return Multiaddr.fromString(f"/unix/{where.lstrip('/')}") if where else None
        if isinstance(address, (IPv4Address, IPv6Address)):
            if self._isSocks(address):
                return None
            if self.onion is not None:
                return self.onion
            try:
                return Multiaddr.fromTwistedAddress(address)
            except BeamError:
                return None
        return None

    def _socksPath(self) -> Optional[str]:
        if self.socks is None:
            return None
        try:
            host, path = parseSocks(self.socks)
        except ValueError:
            return None
        return str(path) if host == "unix" else None

    def _isSocks(self, address: Any) -> bool:
        if self.socks is None:
            return False
        try:
            host, port = parseSocks(self.socks)
        except ValueError:
            return False
        return host != "unix" and (address.host, address.port) == (host, port)

    # -- the onion service's local target -----------------------------------

    def openTarget(self, path: Optional[str] = None) -> Deferred[str]:
        """
        Listen where the onion service will send its connections: on the
        UNIX socket C{path} (made 0600; its directory must be ours, 0700),
        or with C{path=None} on C{127.0.0.1} at a random port.  Fires with
        the target as tor's C{ADD_ONION} wants it (C{"unix:/path"} or
        C{"127.0.0.1:PORT"}).  A target already open is reused.
        """
        if self._target is not None:
            return succeed(self._targetText())
        factory = _TargetFactory(self)
        try:
            if path is not None:
                import os

                try:
                    os.unlink(path)  # a socket left by a killed run
                except FileNotFoundError:
                    pass
                port: IListeningPort = self.reactor.listenUNIX(path, factory, mode=0o600)
            else:
                port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        except Exception as e:
            return fail(DialError(f"cannot open the onion service's local listener: {describe(e)}"))
        self._target = port
        self._targetAddr = port.getHost()
        return succeed(self._targetText())

    def _targetText(self) -> str:
        addr = self._targetAddr
        if isinstance(addr, UNIXAddress):
            name = addr.name.decode() if isinstance(addr.name, bytes) else str(addr.name)
            return f"unix:{name}"
        return f"{addr.host}:{addr.port}"

    def closeTarget(self) -> Deferred[None]:
        """
        Stop accepting the onion service's connections (those accepted go
        on); fires once the target is closed.  Safe to call twice.
        """
        self._factory = None
        self._listener = None
        port, self._target = self._target, None
        if port is None:
            return succeed(None)
        addr = self._targetAddr

        def removeSocket(_: Any) -> None:
            if isinstance(addr, UNIXAddress) and addr.name:
                import os

                try:
                    os.unlink(addr.name)
                except OSError:
                    pass

        return maybeDeferred(port.stopListening).addCallback(removeSocket)

    def _stopListener(self, listener: OnionListener) -> Deferred[None]:
        if listener is not self._listener:
            return succeed(None)
        return self.closeTarget()

    # -- dialling ------------------------------------------------------------

    def _whenTor(self) -> Deferred[Any]:
        if self.tor is not None:
            return succeed(self.tor)
        if self._failed:
            return fail(DialError(self._notReady))

        def cancel(d: Deferred[Any]) -> None:
            if d in self._waiting:
                self._waiting.remove(d)

        d: Deferred[Any] = Deferred(cancel)
        self._waiting.append(d)
        return d

    def _socksEndpoint(self) -> Optional[_TrackingEndpoint]:
        if self.socks is None:
            return None
        host, port = parseSocks(self.socks)
        if host == "unix":
            return _TrackingEndpoint(UNIXClientEndpoint(self.reactor, port))
        cls = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        return _TrackingEndpoint(cls(self.reactor, host, port))


#: Pauses before each new attempt at an onion address tor could not
#: reach (see L{_TorDial._failedAttempt}).
RETRY_PAUSES = (1.0, 2.0, 4.0, 8.0)


def _transientSocksError(f: Failure) -> bool:
    """
    Whether tor's SOCKS answer may change soon for an onion address: host
    unreachable (no descriptor, or no introduction point answered), TTL
    expired (the rendezvous timed out), or a general failure.  Not
    "connection refused": the service is up and answered that.
    """
    from txtorcon.socks import GeneralServerFailureError, HostUnreachableError, TtlExpiredError

    return bool(f.check(HostUnreachableError, TtlExpiredError, GeneralServerFailureError))


class _TorDial:
    """
    One dial: wait for tor (if it is still starting), then connect through
    its SOCKS port; all within one timeout, and cancellable throughout.
    """

    def __init__(self, transport: TorTransport, addr: Multiaddr, target: tuple[str, int], factory: Any) -> None:
        self.transport = transport
        self.addr = addr
        self.host, self.port = target
        self.factory = factory
        self.result: Deferred[Any] = Deferred(self._cancel)
        self._finished = False
        self._waiting: Optional[Deferred[Any]] = None
        self._connecting: Optional[Deferred[Any]] = None
        self._socks: Optional[_TrackingEndpoint] = None
        self._timer: Optional[IDelayedCall] = None
        self._retry: Optional[IDelayedCall] = None
        self._timeout = 0.0
        self._started = 0.0
        self._attempts = 0
        self._lastError: Optional[str] = None

    def start(self, timeout: float) -> Deferred[Any]:
        self._timeout = timeout
        self._started = self.transport.reactor.seconds()
        self._timer = self.transport.reactor.callLater(timeout, self._timedOut)
        self._waiting = self.transport._whenTor()
        self._waiting.addCallbacks(self._connect, self._fail)
        return self.result

    def _connect(self, tor: Any) -> None:
        self._waiting = None
        if self._finished:
            return
        try:
            self._socks = self.transport._socksEndpoint()
            if self._socks is not None:
                endpoint = tor.stream_via(self.host, self.port, socks_endpoint=self._socks)
            else:
                endpoint = tor.stream_via(self.host, self.port)
        except ValueError as e:
            self._fail(Failure(DialError(f"cannot dial {self.addr} over Tor: {e}")))
            return
        self._connecting = endpoint.connect(self.factory)
        self._connecting.addCallbacks(self._connected, self._failedAttempt, errbackArgs=(tor,))

    def _failedAttempt(self, f: Failure, tor: Any) -> None:
        """
        Tor could not open the stream.  For an onion address that may be
        only for now: right after a service (re)publishes, the HSDir our
        tor asks may not hold its descriptor yet, and tor answers "host
        unreachable" at once.  Such a dial is tried again after
        L{RETRY_PAUSES} (each attempt asks tor afresh) while the timeout
        leaves room; anything else, or no time left, fails the dial.
        """
        self._connecting = None
        if self._finished:
            return
        pause = RETRY_PAUSES[min(self._attempts, len(RETRY_PAUSES) - 1)]
        elapsed = self.transport.reactor.seconds() - self._started
        if onionTarget(self.addr) is None or not _transientSocksError(f):
            self._fail(f)
            return
        if elapsed + pause >= self._timeout:
            self._fail(Failure(DialError(
                f"cannot dial {self.addr} over Tor: {describe(f)} ({self._attempts + 1} attempts in {elapsed:.0f} s)"
            )))
            return
        self._attempts += 1
        self._lastError = describe(f)
        self._retry = self.transport.reactor.callLater(pause, self._again, tor)

    def _again(self, tor: Any) -> None:
        self._retry = None
        if not self._finished:
            self._connect(tor)

    def _connected(self, protocol: Any) -> None:
        if self._finished:
            # Timed out or cancelled just as the stream came up.
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()
            return
        self._finish()
        self.result.callback(protocol)

    def _fail(self, f: Failure) -> None:
        if self._finished:
            return
        self._finish()
        if f.check(DialError):
            self.result.errback(f)
        else:
            self.result.errback(DialError(f"cannot dial {self.addr} over Tor: {describe(f)}"))

    def _finish(self) -> None:
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _abandon(self) -> None:
        """
        Stop whatever is under way (the result is settled by the caller).
        """
        retry, self._retry = self._retry, None
        if retry is not None and retry.active():
            retry.cancel()
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:
            waiting.cancel()
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.called:
            connecting.addErrback(lambda f: None)
            connecting.cancel()
        if self._socks is not None:
            self._socks.abort()

    def _timedOut(self) -> None:
        self._timer = None
        if self._finished:
            return
        waitingForTor = self._waiting is not None
        self._finished = True
        self._abandon()
        if waitingForTor:
            why = f"cannot dial {self.addr}: {self.transport._notReady}"
        else:
            why = f"cannot dial {self.addr} over Tor: no connection within {self._timeout:g} s"
            if self._lastError is not None:
                why += f" ({self._attempts + 1} attempts; last: {self._lastError})"
        self.result.errback(DialError(why))

    def _cancel(self, d: Deferred[Any]) -> None:
        if self._finished:
            return
        self._finish()
        self._abandon()
        d.errback(CancelledError())
