"""
The TCP transport: C{/ip4|ip6|dns|dns4|dns6/.../tcp/PORT} addresses.

A thin L{ITransport} over Twisted's TCP endpoints.  The dial timeout is a
constructor argument of the endpoint (no private attribute is patched),
and host names go through L{HostnameEndpoint}, which races the resolved
addresses as RFC 8305 asks.

Port reuse (C{reuseport}, on by default on Linux): a home router with
endpoint-independent mapping (most of them) maps one inside address and
port to one outside port, whoever it talks to.  If every connection we
dial leaves from our I{listen} port, every peer sees us at the same
outside address, and that address is the one that leads back to our
listener once the router lets it through (a port mapping, a hole punch).
Dialled from random ports, each peer sees a different, useless address.
So, as libp2p's TCP transports do:

  - listeners set C{SO_REUSEPORT} (and C{SO_REUSEADDR}), which lets
    outgoing sockets bind the port they listen on.  C{SO_REUSEPORT} would
    also let a second process of the same user listen on the port and
    take half the connections, so before listening on a given port the
    transport checks, with a plain bind, that nobody listens there yet:
    "port already in use" stays an error;
  - an outgoing dial to an IP address binds, with both options, to the
    listen port of the same family whose address the kernel would send
    from (a specific listen address) or to the wildcard address (a
    wildcard listener), unless that would connect the socket to itself;
  - if binding or connecting fails because the address is taken (an
    existing connection from the listen port to the same destination has
    the same four-tuple, or one still in C{TIME_WAIT}), the dial is made
    again from a random port, at once.

Dials to DNS names leave from a random port (the address family is not
known before resolving).  Reactors that are not POSIX socket reactors (a
test's C{MemoryReactor}) get the plain endpoints.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from typing import Any, Callable, Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    TCP6ServerEndpoint,
)
from twisted.internet import tcp
from twisted.internet.defer import execute
from twisted.internet.error import CannotListenError, ConnectBindError, ConnectError
from twisted.internet.interfaces import IConnector, IListeningPort
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import BeamError, DialError
from beam.identity.multiaddr import Multiaddr
from beam.p2p.interfaces import IListener, ITransport


#: Whether dials reuse the listen port unless told otherwise: Linux has the
#: semantics relied on (C{SO_REUSEPORT} binds beside a listener of the same
#: user); other systems differ (BSD's is looser, Windows has none).
REUSEPORT_DEFAULT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")

#: Errors of a dial from the listen port that say only that this source is
#: taken (or unusable) for that destination: the dial is tried again from
#: a random port.
_COLLISIONS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EINVAL)


@implementer(IListener)
class TCPListener:
    """
    One listening TCP port.
    """

    def __init__(self, port: IListeningPort, onStop: Optional[Callable[[], None]] = None) -> None:
        self.port = port
        host = port.getHost()
        assert isinstance(host, (IPv4Address, IPv6Address))  # a TCP port's address
        self.addr = Multiaddr.fromTwistedAddress(host)
        self._onStop = onStop

    def stopListening(self) -> Any:
        if self._onStop is not None:
            onStop, self._onStop = self._onStop, None
            onStop()
        return self.port.stopListening()


class _ReusingClient(tcp.Client):
    """
    A TCP client socket that may bind beside our listener: C{SO_REUSEADDR}
    and C{SO_REUSEPORT} are set before Twisted binds it.
    """

    def createInternetSocket(self) -> socket.socket:
        skt: socket.socket = super().createInternetSocket()
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return skt


class _ReusingConnector(tcp.Connector):
    def _makeTransport(self) -> tcp.Client:
        return _ReusingClient(self.host, self.port, self.bindAddress, self, self.reactor)


class _ReusingConnect:
    """
    What a Twisted client endpoint needs of a reactor (C{connectTCP}),
    connecting with L{_ReusingConnector}s of the real C{reactor}; the
    endpoint keeps doing the rest (its factory wrapping, cancellation).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def connectTCP(
        self, host: str, port: int, factory: Any, timeout: float = 30.0, bindAddress: Any = None
    ) -> IConnector:
        connector = _ReusingConnector(host, port, factory, timeout, bindAddress, self._reactor)
        connector.connect()
        return connector


def _family(name: str) -> socket.AddressFamily:
    return socket.AF_INET if name == "ip4" else socket.AF_INET6


def _sockaddr(host: str, port: int, family: socket.AddressFamily) -> Any:
    """
    The socket address for a numeric C{host} (an IPv6 scope included).
    """
    return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[0][4]


def _sameIP(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return False


def sourceAddress(host: str, port: int, family: socket.AddressFamily) -> Optional[str]:
    """
    The local address the kernel would send from to C{host}: the address
    of a UDP socket "connected" there (which sends nothing, only consults
    the routing table).  L{None} if there is no route.
    """
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(_sockaddr(host, port, family))
            return str(probe.getsockname()[0])
    except OSError:
        return None


def listenReusing(reactor: Any, host: str, port: int, family: socket.AddressFamily, factory: Any) -> IListeningPort:
    """
    Listen on C{host:port} with C{SO_REUSEADDR} and C{SO_REUSEPORT}, after
    checking that nobody listens there already (see the module docstring).

    @raise CannotListenError: the port is taken, or the address is not ours.
    """
    sockaddr = _sockaddr(host, port, family)
    if port != 0:
        # A plain bind (SO_REUSEADDR only, as Twisted's own listeners)
        # conflicts with any listener on the port, with or without
        # SO_REUSEPORT; connections and TIME_WAIT sockets do not count.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as e:
                raise CannotListenError(host, port, e) from e
    with socket.socket(family, socket.SOCK_STREAM) as skt:
        try:
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            skt.bind(sockaddr)
            skt.listen(50)
            skt.setblocking(False)
        except OSError as e:
            raise CannotListenError(host, port, e) from e
        # The reactor takes its own copy of the descriptor.
        listening: IListeningPort = reactor.adoptStreamPort(skt.fileno(), family, factory)
    return listening


def isAddressCollision(error: BaseException) -> bool:
    """
    Whether a dial from the listen port failed only because of that source
    port (see L{_COLLISIONS}), so a dial from a random port may work.
    """
    if isinstance(error, ConnectBindError):
        return True
    return type(error) is ConnectError and error.osError in _COLLISIONS


@implementer(ITransport)
class TCPTransport:
    """
    Dial and listen on TCP.

    @ivar reuseport: whether listeners allow, and dials use, the listen
        port as source (see the module docstring).
    @ivar reuseFallbacks: dials from the listen port that had to be made
        again from a random port.
    """

    name = "tcp"
    limited = False

    def __init__(self, reactor: Any, reuseport: Optional[bool] = None) -> None:
        """
        @param reuseport: reuse the listen port for dials; L{None}: the
            platform's default (L{REUSEPORT_DEFAULT}, on for Linux).
        """
        self.reactor = reactor
        self.reuseport = REUSEPORT_DEFAULT if reuseport is None else reuseport
        self.reuseFallbacks = 0
        # (host, port, family) of each live listener made with SO_REUSEPORT.
        self._reusable: list[tuple[str, int, str]] = []

    def _reuseWorks(self) -> bool:
        if not self.reuseport or not hasattr(socket, "SO_REUSEPORT"):
            return False
        from twisted.internet.posixbase import PosixReactorBase

        return isinstance(self.reactor, PosixReactorBase)

    def bindAddressFor(self, host: str, port: int, family: str) -> Optional[tuple[str, int]]:
        """
        Where a dial to the IP address C{host:port} should leave from: the
        listener of the same family on the address the kernel would send
        from, else a wildcard listener's port on the wildcard address;
        L{None} (a random port) if there is none, or if that would connect
        the socket to itself.
        """
        candidates = [(h, p) for h, p, f in self._reusable if f == family]
        if not candidates:
            return None
        source = sourceAddress(host, port, _family(family))
        if source is None:
            return None
        wildcard = "0.0.0.0" if family == "ip4" else "::"
        bind = next(((h, p) for h, p in candidates if _sameIP(h, source)), None)
        if bind is None:
            bind = next(((wildcard, p) for h, p in candidates if h == wildcard), None)
        if bind is None or (bind[1] == port and _sameIP(source, host)):
            return None
        return bind

    def canDial(self, addr: Multiaddr) -> bool:
        return addr.withoutPeerID().tcpTarget() is not None

    def canListen(self, addr: Multiaddr) -> bool:
        target = addr.withoutPeerID().tcpTarget()
        return target is not None and target[2] in ("ip4", "ip6")

    def dial(self, addr: Multiaddr, factory: Any, timeout: float) -> Deferred[Any]:
        target = addr.withoutPeerID().tcpTarget()
        if target is None:
            return fail(DialError(f"cannot dial {addr}: not a TCP address"))
        host, port, family = target
        endpoint: Any
        if family == "ip4":
            endpoint = TCP4ClientEndpoint(self.reactor, host, port, timeout=timeout)
        elif family == "ip6":
            endpoint = TCP6ClientEndpoint(self.reactor, host, port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, host.encode("idna"), port, timeout=timeout)
        bind = self.bindAddressFor(host, port, family) if family in ("ip4", "ip6") and self._reusable else None
        if bind is None:
            return endpoint.connect(factory)
        reusing = (TCP4ClientEndpoint if family == "ip4" else TCP6ClientEndpoint)(
            _ReusingConnect(self.reactor), host, port, timeout=timeout, bindAddress=bind
        )

        def collided(f: Failure) -> Any:
            if not isAddressCollision(f.value):
                return f
            self.reuseFallbacks += 1
            return endpoint.connect(factory)

        return reusing.connect(factory).addErrback(collided)

    def listen(self, addr: Multiaddr, factory: Any) -> Deferred[IListener]:
        target = addr.withoutPeerID().tcpTarget()
        if target is None or target[2] not in ("ip4", "ip6"):
            return fail(DialError(f"cannot listen on {addr}: need /ip4 or /ip6 with /tcp"))
        host, port, family = target

        def failed(f: Failure) -> Failure:
            return Failure(DialError(f"cannot listen on {addr}: {listenFailureReason(f.value)}"))

        if not self._reuseWorks():
            endpoint: Any = (TCP4ServerEndpoint if family == "ip4" else TCP6ServerEndpoint)(
                self.reactor, port, interface=host
            )
            return endpoint.listen(factory).addCallbacks(TCPListener, failed)

        def listening(port: IListeningPort) -> TCPListener:
            bound = port.getHost()
            assert isinstance(bound, (IPv4Address, IPv6Address))
            entry = (host, bound.port, family)
            self._reusable.append(entry)
            return TCPListener(port, onStop=lambda: self._reusable.remove(entry))

        d: Deferred[IListeningPort] = execute(listenReusing, self.reactor, host, port, _family(family), factory)
        return d.addCallbacks(listening, failed)

    def multiaddrOf(self, address: Any) -> Optional[Multiaddr]:
        if isinstance(address, (IPv4Address, IPv6Address)):
            try:
                return Multiaddr.fromTwistedAddress(address)
            except BeamError:
                return None
        return None


def listenFailureReason(error: BaseException) -> str:
    """
    Why listening failed, in the words the CLI prints: the common socket
    errors by their errno, anything else as Twisted put it.
    """
    code = getattr(getattr(error, "socketError", None), "errno", None)
    if code == errno.EADDRINUSE:
        return "the port is already in use"
    if code == errno.EADDRNOTAVAIL:
        return "that address is not on this machine"
    return str(error)
