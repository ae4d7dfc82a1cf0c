"""
The TCP transport: C{/ip4|ip6|dns|dns4|dns6/.../tcp/PORT} addresses.

A thin L{ITransport} over Twisted's TCP endpoints.  The dial timeout is a
constructor argument of the endpoint (no private attribute is patched),
and host names go through L{HostnameEndpoint}, which races the resolved
addresses as RFC 8305 asks.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    TCP6ServerEndpoint,
)
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import BeamError, DialError
from beam.identity.multiaddr import Multiaddr
from beam.p2p.interfaces import IListener, ITransport


@implementer(IListener)
class TCPListener:
    """
    One listening TCP port.
    """

    def __init__(self, port: IListeningPort) -> None:
        self.port = port
        host = port.getHost()
        assert isinstance(host, (IPv4Address, IPv6Address))  # a TCP port's address
        self.addr = Multiaddr.fromTwistedAddress(host)

    def stopListening(self) -> Any:
        return self.port.stopListening()


@implementer(ITransport)
class TCPTransport:
    """
    Dial and listen on TCP.
    """

    name = "tcp"
    limited = False

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

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
        return endpoint.connect(factory)

    def listen(self, addr: Multiaddr, factory: Any) -> Deferred[IListener]:
        target = addr.withoutPeerID().tcpTarget()
        if target is None or target[2] not in ("ip4", "ip6"):
            return fail(DialError(f"cannot listen on {addr}: need /ip4 or /ip6 with /tcp"))
        host, port, family = target
        endpoint: Any = (TCP4ServerEndpoint if family == "ip4" else TCP6ServerEndpoint)(
            self.reactor, port, interface=host
        )

        def failed(f: Failure) -> Failure:
            return Failure(DialError(f"cannot listen on {addr}: {listenFailureReason(f.value)}"))

        return endpoint.listen(factory).addCallbacks(TCPListener, failed)

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
    import errno

    code = getattr(getattr(error, "socketError", None), "errno", None)
    if code == errno.EADDRINUSE:
        return "the port is already in use"
    if code == errno.EADDRNOTAVAIL:
        return "that address is not on this machine"
    return str(error)
