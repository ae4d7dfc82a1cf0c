"""
A STUN binding server (RFC 8489) that public Beam nodes can run, so the
network needs no outside STUN server.

With one address it answers binding requests with XOR-MAPPED-ADDRESS (and
RESPONSE-ORIGIN when bound to a specific IP), and refuses CHANGE-REQUEST
with 420 (Unknown Attribute), as RFC 5780 section 6.1 asks of a server
without an alternate address.  Given a second IP it listens on the four
combinations of two IPs and two ports and supports RFC 5780 behaviour
discovery: each response names OTHER-ADDRESS (the combination differing
in both IP and port from where the request arrived) and is sent from the
IP and port that CHANGE-REQUEST asks for.

What anyone can send it is bounded: datagrams over 1,500 bytes or not
STUN are dropped (and logged at most once per interval), only requests
are answered (never responses, so two servers cannot be set on each
other), and a token bucket caps the responses per second, since a
response is larger than the smallest request and the source address of a
UDP datagram can be forged (reflection).
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from beam.p2p.nat.stun import (
    BINDING,
    CHANGE_REQUEST,
    ErrorCode,
    HostPort,
    InvalidStunMessage,
    Message,
    MessageClass,
    RateLimitedLog,
    decode,
    encode,
)

__all__ = ["StunServer"]

log = Logger()

#: Responses per second, and the burst, the server sends at most.
DEFAULT_RATE = 200.0
#: Attempts at finding two free ports on both IPs when asked for port 0.
_PORT_ATTEMPTS = 20


class _Socket(DatagramProtocol):
    """
    One of the server's UDP sockets: which IP (0 primary, 1 alternate)
    and which port (0 primary, 1 alternate) it is.
    """

    noisy = False

    def __init__(self, server: StunServer, ipIndex: int, portIndex: int) -> None:
        self.server = server
        self.index = (ipIndex, portIndex)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.server._received(self, datagram, (addr[0], addr[1]))


class StunServer(Service):
    """
    A STUN binding server, as a service: it listens when started and
    closes its sockets when stopped.

    @ivar malformed: counts and logs dropped malformed datagrams.
    @ivar limited: how many requests went unanswered for the rate limit.
    @ivar answered: how many responses were sent.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int = 3478,
        alternateHost: Optional[str] = None,
        alternatePort: Optional[int] = None,
        software: Optional[str] = None,
        rate: float = DEFAULT_RATE,
        logInterval: float = 60.0,
    ) -> None:
        """
        @param reactor: provides C{IReactorUDP} and C{IReactorTime}.
        @param host: the primary IP to listen on.  Unspecified (C{0.0.0.0}
            or C{::}) only without an alternate: RFC 5780 needs the real
            addresses to name them.
        @param port: the primary port (0: any free one).
        @param alternateHost: the second IP, of the same family, for RFC
            5780; L{None} for a plain binding server.
        @param alternatePort: the second port (default: C{port + 1}, or
            any free one when C{port} is 0).
        @param software: a SOFTWARE attribute for responses (none by
            default: it makes every answer larger).
        @param rate: responses per second at most (also the burst).
        @param logInterval: dropped datagrams are logged at most once per
            this many seconds.
        """
        primary = ipaddress.ip_address(host)
        if alternateHost is not None:
            alternate = ipaddress.ip_address(alternateHost)
            if alternate.version != primary.version or alternate == primary:
                raise ValueError("the alternate IP must be another address of the same family")
            if primary.is_unspecified or alternate.is_unspecified:
                raise ValueError("RFC 5780 needs specific addresses, not an unspecified one")
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.hosts = [str(primary)] + ([str(ipaddress.ip_address(alternateHost))] if alternateHost else [])
        self._ports = [port] + (
            [alternatePort if alternatePort is not None else (port + 1 if port else 0)] if alternateHost else []
        )
        self.software = software
        self.rate = rate
        self.malformed = RateLimitedLog(log, "malformed STUN requests", logInterval)
        self.limited = 0
        self.answered = 0
        self._tokens = rate
        self._lastRefill: Optional[float] = None
        self._sockets: dict[tuple[int, int], _Socket] = {}
        self._listening: list[IListeningPort] = []

    # -- addresses ------------------------------------------------------

    @property
    def rfc5780(self) -> bool:
        """
        Whether the server has an alternate address.
        """
        return len(self.hosts) == 2

    def address(self, ipIndex: int = 0, portIndex: int = 0) -> HostPort:
        """
        One of the server's addresses (after starting): C{(0, 0)} is the
        primary one, C{(1, 1)} the one OTHER-ADDRESS names from it.
        """
        return self.hosts[ipIndex], self._ports[portIndex]

    @property
    def primary(self) -> HostPort:
        """
        The address clients send their first request to.
        """
        return self.address(0, 0)

    @property
    def other(self) -> Optional[HostPort]:
        """
        The alternate address (other IP, other port), or L{None}.
        """
        return self.address(1, 1) if self.rfc5780 else None

    # -- service ----------------------------------------------------------

    def startService(self) -> None:
        """
        Listen on every address.

        @raise CannotListenError: when an address is taken.
        """
        if self.rfc5780 and 0 in self._ports:
            self._listenAnyPorts()
        else:
            self._listenAll()
        super().startService()

    def _listenAll(self) -> None:
        try:
            for i in range(len(self.hosts)):
                for j in range(len(self._ports)):
                    self._listen(i, j)
        except BaseException:
            self._close()
            raise

    def _listenAnyPorts(self) -> None:
        wanted = list(self._ports)
        for _ in range(_PORT_ATTEMPTS):
            try:
                self._ports = list(wanted)
                self._listen(0, 0)
                self._listen(0, 1)
                self._listen(1, 0)
                self._listen(1, 1)
                return
            except CannotListenError:
                self._close()
        raise CannotListenError(self.hosts[0], 0, OSError("no two ports free on both IPs"))

    def _listen(self, i: int, j: int) -> None:
        protocol = _Socket(self, i, j)
        listening = self.reactor.listenUDP(self._ports[j], protocol, interface=self.hosts[i])
        self._ports[j] = listening.getHost().port
        self._sockets[(i, j)] = protocol
        self._listening.append(listening)

    def _close(self) -> list[Any]:
        results = [p.stopListening() for p in self._listening]
        self._listening = []
        self._sockets = {}
        return results

    def stopService(self) -> Any:
        """
        Close every socket.
        """
        super().stopService()
        waiting = [d for d in self._close() if isinstance(d, Deferred)]
        return gatherResults(waiting) if waiting else None

    # -- requests -----------------------------------------------------------

    def _allow(self) -> bool:
        now = self.clock.seconds()
        if self._lastRefill is not None:
            self._tokens = min(self.rate, self._tokens + (now - self._lastRefill) * self.rate)
        self._lastRefill = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _received(self, socket: _Socket, datagram: bytes, source: HostPort) -> None:
        try:
            request = decode(datagram)
        except InvalidStunMessage as e:
            self.malformed.drop(self.clock.seconds(), source, e)
            return
        if request.messageClass != MessageClass.REQUEST:
            return
        if not self._allow():
            self.limited += 1
            return
        i, j = socket.index
        if request.method != BINDING:
            self._error(socket, request, source, ErrorCode(400, "Bad Request"))
            return
        unknown = list(request.unknownRequired)
        if request.changeRequest and not self.rfc5780:
            unknown.append(CHANGE_REQUEST)
        if unknown:
            self._error(socket, request, source, ErrorCode(420, "Unknown Attribute"), tuple(unknown))
            return
        ri = i ^ 1 if request.changeIP else i
        rj = j ^ 1 if request.changePort else j
        sender = self._sockets.get((ri, rj))
        if sender is None:  # stopped meanwhile
            return
        origin: Optional[HostPort] = self.address(ri, rj)
        if ipaddress.ip_address(self.hosts[ri]).is_unspecified:
            origin = None
        response = Message(
            MessageClass.SUCCESS,
            request.transactionID,
            xorMappedAddress=source,
            responseOrigin=origin,
            otherAddress=self.address(i ^ 1, j ^ 1) if self.rfc5780 else None,
            software=self.software,
        )
        self._send(sender, encode(response), source)

    def _error(
        self,
        socket: _Socket,
        request: Message,
        source: HostPort,
        error: ErrorCode,
        unknown: tuple[int, ...] = (),
    ) -> None:
        response = Message(
            MessageClass.ERROR,
            request.transactionID,
            method=request.method,
            errorCode=error,
            unknownAttributes=unknown[:32],
            software=self.software,
        )
        self._send(socket, encode(response), source)

    def _send(self, socket: _Socket, data: bytes, destination: HostPort) -> None:
        if socket.transport is None:
            return
        try:
            socket.transport.write(data, destination)
        except OSError as e:
            log.debug("STUN response to {dest} failed: {error}", dest=destination, error=e)
            return
        self.answered += 1


def main(argv: Optional[Sequence[str]] = None) -> None:
    """
    C{python -m beam.p2p.nat.stunserver HOST[:PORT] [--alternate
    HOST[:PORT]]}: run a STUN server until interrupted (the NAT lab's
    public side runs this).
    """
    import argparse

    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from beam.p2p.nat.stunclient import parseServer

    parser = argparse.ArgumentParser(prog="python -m beam.p2p.nat.stunserver", description="Run a STUN binding server.")
    parser.add_argument("listen", metavar="HOST[:PORT]")
    parser.add_argument("--alternate", metavar="HOST[:PORT]", help="second IP (and port) for RFC 5780")
    options = parser.parse_args(argv)
    try:
        host, port = parseServer(options.listen)
        alternate = parseServer(options.alternate, port + 1) if options.alternate else None
        server = StunServer(
            _reactor,
            host,
            port,
            alternate[0] if alternate else None,
            alternate[1] if alternate else None,
        )
    except ValueError as e:
        parser.error(str(e))
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    server.startService()
    print(f"STUN server on {server.primary}" + (f", other address {server.other}" if server.other else ""), flush=True)
    _reactor.run()


if __name__ == "__main__":  # pragma: no cover
    main()
