"""
TURN as a relay kind for people who already run a TURN server: a node
keeps a TCP allocation (RFC 6062) on it, and peers reach the node by
dialling the allocation's relayed address with ordinary TCP.

L{TurnTransport} is an L{ITransport}.  C{start()} (or C{listen()}) opens
the control connection, allocates, keeps the allocation refreshed and
re-allocates after a loss; every peer connection the server announces is
bound on a new data connection and handed to the node as an inbound raw
connection (C{node.inboundUpgrading}, which answers as responder unless
a hole punch expects that source as initiator): Noise and yamux
run end to end through the server, which sees only ciphertext.  The
connection's remote address is the peer's address as the server saw it,
its local address the relayed one, both plain C{/ip4|ip6/.../tcp/...}.

The relayed address is reachable by construction, but RFC 6062 lets a
peer in only if the allocation has a permission for the peer's IP.  So:

 - L{TurnTransport.permit} adds IPs (kept and refreshed, at most
   L{beam.p2p.nat.turn.MAX_PERMISSIONS}, oldest dropped first);
 - with C{autoPermit} (the default) the IP of every peer the node is
   directly connected to is permitted, so a peer that knows us can later
   reach us through the relay;
 - whoever hands out the relayed address (a share address, a name record)
   cannot know the dialler's IP in advance: a stranger's first contact
   goes through a circuit relay, whose DCUtR exchange tells each side
   the other's observed addresses; the NAT service (L{beam.daemon.nat})
   then permits the peer's IPs here, and the relayed address, offered
   in our DCUtR CONNECT, is among those the peer dials for the punch.
   Since coturn reports the peer's public address as the source, and
   that is the address DCUtR observed (for a peer whose NAT maps
   endpoint-independently), the role the punch gave us holds on this
   path too.  A deployment without circuit relays needs a TURN server
   configured to not enforce permissions for TCP.

Dialling out through TURN (CONNECT) is available as L{TurnTransport.dial},
but C{canDial} is false: a plain TCP dial is always at least as good, so
the node never picks this transport by itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Optional, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import BeamError, DialError, describe
from beam.identity.multiaddr import Multiaddr
from beam.p2p.interfaces import IListener, IStreamTransport, ITransport
from beam.p2p.nat.stun import HostPort
from beam.p2p.nat.turn import Allocation, TurnAllocationLost, TurnClient, TurnError

if TYPE_CHECKING:
    from beam.p2p.host.node import Node

__all__ = ["TurnConnection", "TurnListener", "TurnTransport", "hostPortAddr"]

log = Logger()

#: Delays between attempts to get an allocation back after losing it.
RETRY_DELAYS = (2.0, 5.0, 15.0, 30.0, 60.0)


def hostPortAddr(addr: HostPort) -> Multiaddr:
    """
    C{/ip4/IP/tcp/PORT} or C{/ip6/IP/tcp/PORT}.
    """
    ip = ipaddress.ip_address(addr[0])
    return Multiaddr.fromString(f"/ip{ip.version}/{ip}/tcp/{addr[1]}")


def _twistedAddress(addr: HostPort) -> Union[IPv4Address, IPv6Address]:
    if ipaddress.ip_address(addr[0]).version == 4:
        return IPv4Address("TCP", addr[0], addr[1])
    return IPv6Address("TCP", addr[0], addr[1])


@implementer(IStreamTransport)
class TurnConnection:
    """
    The raw transport of one relayed TCP connection: the data connection
    to the TURN server, with the addresses of the relayed path (the peer
    as the server saw it, and our relayed address) instead of the
    server's.  Anything else (C{setTcpNoDelay}, C{getHandle}) is the TCP
    transport's.
    """

    def __init__(self, tcp: Any, host: HostPort, peer: HostPort) -> None:
        self.tcp = tcp
        self.host = _twistedAddress(host)
        self.peer = _twistedAddress(peer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tcp, name)

    @property
    def disconnecting(self) -> bool:
        return bool(self.tcp.disconnecting)

    def write(self, data: bytes) -> None:
        self.tcp.write(data)

    def writeSequence(self, data: Any) -> None:
        self.tcp.writeSequence(data)

    def loseConnection(self) -> None:
        self.tcp.loseConnection()

    def loseWriteConnection(self) -> None:
        self.tcp.loseWriteConnection()

    def abortConnection(self) -> None:
        self.tcp.abortConnection()

    def getPeer(self) -> Union[IPv4Address, IPv6Address]:
        return self.peer

    def getHost(self) -> Union[IPv4Address, IPv6Address]:
        return self.host

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.tcp.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.tcp.unregisterProducer()

    def pauseProducing(self) -> None:
        self.tcp.pauseProducing()

    def resumeProducing(self) -> None:
        self.tcp.resumeProducing()

    def stopProducing(self) -> None:
        self.tcp.stopProducing()


class _ControlProtocol(Protocol):
    """
    The control connection: feeds a L{TurnClient}.
    """

    def __init__(self, client: Callable[[Any], TurnClient]) -> None:
        self._makeClient = client
        self.client: Optional[TurnClient] = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.client = self._makeClient(self.transport.write)

    def dataReceived(self, data: bytes) -> None:
        if self.client is not None:
            self.client.dataReceived(data)
            if self.client.closed and self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.client is not None:
            self.client.connectionLost(TurnError(f"the connection to the TURN server closed: {describe(reason)}"))


class _DataProtocol(Protocol):
    """
    A data connection: CONNECTION-BIND, then the peer's bytes to and from
    the upper protocol.
    """

    def __init__(self, transport: TurnTransport, connectionID: int, peer: HostPort, factory: Any) -> None:
        self.owner = transport
        self.connectionID = connectionID
        self.peerAddr = peer
        self.factory = factory
        self.client: Optional[TurnClient] = None
        self.upper: Optional[Any] = None
        self.ready: Deferred[Any] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        owner = self.owner
        client = self.client = owner._newClient(self.transport.write)
        if owner._control is not None:
            client.shareCredentials(owner._control)
        client.connectionBind(self.connectionID).addCallbacks(self._bound, self._failed)

    def _bound(self, leftover: bytes) -> None:
        assert self.transport is not None
        relayed = self.owner.allocation.relayed if self.owner.allocation is not None else ("0.0.0.0", 0)
        wrapper = TurnConnection(self.transport, relayed, self.peerAddr)
        upper = self.factory.buildProtocol(wrapper.peer)
        if upper is None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
            self.ready.errback(DialError("the connection was refused locally"))
            return
        self.upper = upper
        upper.makeConnection(wrapper)
        self.ready.callback(upper)
        if leftover and not self.transport.disconnecting:  # type: ignore[attr-defined]
            upper.dataReceived(leftover)

    def _failed(self, f: Failure) -> None:
        log.info("TURN data connection {cid} failed: {why}", cid=self.connectionID, why=describe(f))
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        if not self.ready.called:
            self.ready.errback(f)

    def dataReceived(self, data: bytes) -> None:
        if self.upper is not None:
            self.upper.dataReceived(data)
        elif self.client is not None:
            self.client.dataReceived(data)
            if self.client.closed and self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.owner._binding.discard(self)
        if self.upper is not None:
            self.upper.connectionLost(reason)
        elif self.client is not None:
            self.client.connectionLost(TurnError(f"the data connection closed before it was bound: {describe(reason)}"))


@implementer(IListener)
class TurnListener:
    """
    "Listening" on a TURN allocation: C{addr} is the relayed address (as
    first allocated; L{TurnTransport.relayedAddr} follows re-allocations).
    """

    def __init__(self, transport: TurnTransport, addr: Multiaddr) -> None:
        self.transport = transport
        self.addr = addr

    def stopListening(self) -> Deferred[None]:
        return self.transport.stop()


@implementer(ITransport)
class TurnTransport:
    """
    Be reachable through a TURN server's TCP relay.

    C{TurnTransport(node, ("turn.example.org", 3478), "user", "password")},
    then C{start()}: a Deferred that fires with a L{TurnListener} once
    allocated (its C{addr} is the relayed address), or fails with
    L{DialError} saying why.  C{stop()} releases the allocation.

    @ivar allocation: the current L{Allocation}, or L{None}.
    @ivar maxBinding: at most this many data connections being bound at
        once; further connection attempts are left to time out on the
        server (a flood of dials costs us a bounded number of sockets).
    """

    name = "turn"
    limited = False
    usesFD = True

    def __init__(
        self,
        node: Node,
        server: HostPort,
        username: str,
        password: str,
        *,
        lifetime: Optional[int] = None,
        timeout: float = 10.0,
        autoPermit: bool = True,
        maxBinding: int = 16,
    ) -> None:
        self.node = node
        self.reactor: Any = node.reactor
        self.server = server
        self.username = username
        self.password = password
        self.lifetime = lifetime
        self.timeout = timeout
        self.autoPermit = autoPermit
        self.maxBinding = maxBinding
        self.allocation: Optional[Allocation] = None
        self._control: Optional[TurnClient] = None
        self._controlProto: Optional[_ControlProtocol] = None
        self._factory: Optional[Any] = None
        self._binding: set[_DataProtocol] = set()
        self._observers: list[Callable[[Optional[Multiaddr], Optional[Multiaddr]], None]] = []
        self._permitted: dict[str, None] = {}
        self._running = False
        self._retry: Any = None
        self._failures = 0

    # -- ITransport -----------------------------------------------------------

    def canDial(self, addr: Multiaddr) -> bool:
        return False

    def canListen(self, addr: Multiaddr) -> bool:
        return False

    def multiaddrOf(self, address: Any) -> Optional[Multiaddr]:
        if isinstance(address, (IPv4Address, IPv6Address)):
            try:
                return Multiaddr.fromTwistedAddress(address)
            except BeamError:
                return None
        return None

    def listen(self, addr: Multiaddr, factory: Any) -> Deferred[IListener]:
        """
        Allocate on the TURN server at C{addr} (which must be this
        transport's server, C{/ip4|ip6|dns/HOST/tcp/PORT}) and hand every
        peer connection to C{factory}.
        """
        target = addr.tcpTarget()
        if target is None or (target[0], target[1]) != tuple(self.server):
            return fail(DialError(f"cannot listen on {addr}: this transport uses the TURN server {self.server}"))
        return self._start(factory)

    def start(self) -> Deferred[TurnListener]:
        """
        Allocate and hand peer connections to the node as inbound raw
        connections.
        """
        node = self.node

        def build(addr: Any) -> Any:
            return node.inboundUpgrading(addr, self)

        factory = Factory()
        factory.buildProtocol = build  # type: ignore[method-assign]
        factory.noisy = False
        return self._start(factory)

    def _start(self, factory: Any) -> Deferred[Any]:
        if self._running:
            return fail(DialError("the TURN transport is already started"))
        self._running = True
        self._factory = factory
        if self.autoPermit:
            self.node.addConnectionObserver(self._connectionEvent)
        return self._allocate().addCallback(lambda addr: TurnListener(self, addr))

    def stop(self) -> Deferred[None]:
        """
        Release the allocation and close the control connection.  Relayed
        connections already established stay open.
        """
        self._running = False
        if self.autoPermit:
            self.node.removeConnectionObserver(self._connectionEvent)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        for binding in list(self._binding):
            if binding.transport is not None:
                binding.transport.abortConnection()  # type: ignore[attr-defined]
        control, proto = self._control, self._controlProto
        self._control = self._controlProto = None
        self._setAllocation(None)
        if control is None or control.closed:
            return succeed(None)

        def close(_: Any) -> None:
            if proto is not None and proto.transport is not None:
                proto.transport.loseConnection()

        return control.release().addBoth(close)

    # -- the allocation ---------------------------------------------------------

    def relayedAddr(self) -> Optional[Multiaddr]:
        """
        The relayed address peers dial (C{/ip4/IP/tcp/PORT}), or L{None}
        while there is no allocation.
        """
        return hostPortAddr(self.allocation.relayed) if self.allocation is not None else None

    def addAddressObserver(self, observer: Callable[[Optional[Multiaddr], Optional[Multiaddr]], None]) -> None:
        """
        Call C{observer(old, new)} whenever the relayed address changes:
        allocated (C{old} is L{None}), lost (C{new} is L{None}), or
        re-allocated elsewhere.
        """
        self._observers.append(observer)

    def _setAllocation(self, allocation: Optional[Allocation]) -> None:
        old = self.relayedAddr()
        self.allocation = allocation
        new = self.relayedAddr()
        if old != new:
            for observer in list(self._observers):
                try:
                    observer(old, new)
                except Exception:
                    log.failure("TURN address observer failed")

    def _newClient(self, send: Callable[[bytes], None]) -> TurnClient:
        return TurnClient(self.reactor, send, self.username, self.password, timeout=self.timeout)

    def _allocate(self) -> Deferred[Multiaddr]:
        host, port = self.server
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
        proto = _ControlProtocol(self._newClient)
        connecting = connectProtocol(endpoint, proto)

        def connected(_: Any) -> Deferred[Allocation]:
            client = proto.client
            assert client is not None
            if not self._running:
                proto.transport.loseConnection()  # type: ignore[union-attr]
                raise DialError("the TURN transport was stopped")
            self._control, self._controlProto = client, proto
            client.onConnectionAttempt = self._connectionAttempt
            client.onAllocationLost = self._lost
            return client.allocate(self.lifetime)

        def allocated(allocation: Allocation) -> Deferred[Multiaddr]:
            self._failures = 0
            self._setAllocation(allocation)
            addr = hostPortAddr(allocation.relayed)
            log.info("TURN relay at {addr} (via {host}:{port})", addr=str(addr), host=host, port=port)
            if self._permitted and self._control is not None:
                return self._control.permit(self._permitted).addCallback(lambda _: addr)
            return succeed(addr)

        def failed(f: Failure) -> Failure:
            if proto.transport is not None:
                proto.transport.loseConnection()
            if f.check(BeamError) and not f.check(TurnError):
                return f
            return Failure(DialError(f"TURN server {host}:{port}: {describe(f)}"))

        return connecting.addCallback(connected).addCallback(allocated).addErrback(failed)

    def _lost(self, error: TurnAllocationLost) -> None:
        log.warn("TURN allocation lost: {why}", why=str(error))
        self._setAllocation(None)
        control = self._controlProto
        self._control = self._controlProto = None
        if control is not None and control.transport is not None:
            control.transport.loseConnection()
        self._scheduleRetry()

    def _scheduleRetry(self) -> None:
        if not self._running:
            return
        delay = RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS) - 1)]
        self._failures += 1
        self._retry = self.reactor.callLater(delay, self._reallocate)

    def _reallocate(self) -> None:
        self._retry = None
        if not self._running:
            return

        def failed(f: Failure) -> None:
            log.info("TURN re-allocation failed: {why}", why=describe(f))
            self._scheduleRetry()

        self._allocate().addErrback(failed)

    # -- permissions -----------------------------------------------------------

    def permit(self, ips: Iterable[str]) -> Deferred[None]:
        """
        Let peers from C{ips} connect to the relayed address (RFC 6062
        requires a permission per peer IP).  Kept across re-allocations.
        """
        from beam.p2p.nat.turn import MAX_PERMISSIONS

        ips = [str(ipaddress.ip_address(ip)) for ip in ips]
        for ip in ips:
            self._permitted.pop(ip, None)
            self._permitted[ip] = None
        while len(self._permitted) > MAX_PERMISSIONS:
            del self._permitted[next(iter(self._permitted))]
        if self._control is None or self.allocation is None:
            return succeed(None)
        return self._control.permit(ips)

    def _connectionEvent(self, event: str, conn: Any) -> None:
        if event != "connected" or conn.limited or conn.transport == self.name:
            return
        addr = conn.remoteAddr
        target = addr.tcpTarget() if addr is not None else None
        if target is None or target[2] not in ("ip4", "ip6"):
            return
        self.permit([target[0].split("%")[0]]).addErrback(
            lambda f: log.info("TURN permission for {ip} failed: {why}", ip=target[0], why=describe(f))
        )

    # -- connections -----------------------------------------------------------

    def _connectionAttempt(self, connectionID: int, peer: HostPort) -> None:
        if not self._running or self._factory is None:
            return
        if len(self._binding) >= self.maxBinding:
            log.info("TURN: ignored a connection from {peer}: {n} already being bound", peer=peer, n=len(self._binding))
            return
        self._openData(connectionID, peer, self._factory).addErrback(lambda _: None)

    def _openData(self, connectionID: int, peer: HostPort, factory: Any) -> Deferred[Any]:
        host, port = self.server
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
        proto = _DataProtocol(self, connectionID, peer, factory)
        self._binding.add(proto)

        def bound(upper: Any) -> Any:
            self._binding.discard(proto)
            return upper

        def failed(f: Failure) -> Failure:
            self._binding.discard(proto)
            return f

        connectProtocol(endpoint, proto).addErrback(proto._failed)
        return proto.ready.addCallbacks(bound, failed)

    def dial(self, addr: Multiaddr, factory: Any, timeout: float) -> Deferred[Any]:
        """
        Connect to C{addr} (C{/ip4|ip6/IP/tcp/PORT}) from the relayed
        address (CONNECT, then a data connection): for a peer that only
        accepts connections from the TURN server's address.
        """
        target = addr.tcpTarget()
        if target is None or target[2] not in ("ip4", "ip6"):
            return fail(DialError(f"cannot dial {addr} through TURN: only /ip4 and /ip6 TCP addresses"))
        if self._control is None or self.allocation is None:
            return fail(DialError(f"cannot dial {addr} through TURN: no allocation"))
        peer = (target[0], target[1])
        control = self._control
        result: Deferred[Any] = Deferred()
        timer = self.reactor.callLater(
            timeout, lambda: result.errback(DialError(f"no TURN connection to {addr} within {timeout:g} s"))
        )

        def connected(connectionID: int) -> Deferred[Any]:
            return self._openData(connectionID, peer, factory)

        def done(r: Any) -> None:
            if timer.active():
                timer.cancel()
            if result.called:
                return
            if isinstance(r, Failure) and not r.check(DialError):
                r = Failure(DialError(f"through TURN to {addr}: {describe(r)}"))
            result.callback(r) if not isinstance(r, Failure) else result.errback(r)

        control.permit([peer[0]]).addCallback(lambda _: control.connect(peer)).addCallback(connected).addBoth(done)
        return result
