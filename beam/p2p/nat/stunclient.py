"""
A STUN client (RFC 8489) and NAT behaviour discovery (RFC 5780).

L{StunClientProtocol} sends binding requests over one UDP socket and
retransmits them the RFC's way: after RTO, then doubling (RTO, 2 RTO,
4 RTO, ...), C{rc} transmissions in all, then C{rm} RTO of waiting for a
last answer (with the defaults, 500 ms, 7 and 16: 39.5 s before a
transaction fails).  A response counts only when its transaction ID is one
we sent and it comes from an address the request may be answered from.

L{discover} classifies the NAT in front of us.  It sends the first
binding request to every server at once (a dead server then costs one
timeout, not one each) and prefers the first, in the order given, that
names an alternate address (OTHER-ADDRESS).  With such a server:

 1. I{filtering} first, before anything is sent to the alternate address
    (a packet sent there would open the very filter we measure): a request
    asking for the answer from the other IP and port, and one asking for
    it from the other port only.  An answer to the first means
    endpoint-independent filtering; to the second only, address-dependent;
    to neither, address-and-port-dependent.
 2. I{mapping}: when the server saw our own address there is no NAT;
    otherwise requests to (other IP, same port) and (other IP, other
    port) on the same socket: the same mapped address as in step 1 is
    endpoint-independent mapping; the same as each other but not as the
    first, address-dependent; all different, address-and-port-dependent.

Without RFC 5780 servers, filtering stays unknown and mapping is judged
by comparing what servers at different IPs saw: all the same is
endpoint-independent, any difference "dependent".

C{python -m beam.p2p.nat.stunclient HOST[:PORT] ... [--json]} runs
L{discover} once and prints the result: the NAT lab runs it inside
network namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from collections.abc import Sequence
from typing import Any, Optional, Union, cast

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.errors import BeamError
from beam.p2p.nat import Filtering, Mapping, NatBehaviour
from beam.p2p.nat.stun import (
    BINDING,
    HostPort,
    InvalidStunMessage,
    Message,
    MessageClass,
    RateLimitedLog,
    decode,
    encode,
    sameAddress,
)

__all__ = [
    "DEFAULT_PORT",
    "Response",
    "StunClientProtocol",
    "StunError",
    "StunErrorResponse",
    "StunTimeout",
    "discover",
    "discoverWith",
    "parseServer",
]

#: The STUN port (RFC 8489 section 18.2).
DEFAULT_PORT = 3478
#: RFC 8489 section 6.2.1's defaults.
DEFAULT_RTO = 0.5
DEFAULT_RC = 7
DEFAULT_RM = 16
#: At most this many servers are asked at once.
MAX_SERVERS = 8

log = Logger()


class StunError(BeamError):
    """
    The STUN server's answer could not be used.
    """


class StunTimeout(StunError):
    """
    The STUN server did not answer.
    """


class StunErrorResponse(StunError):
    """
    The STUN server answered with an error.

    @ivar code: the ERROR-CODE, e.g. 420.
    @ivar message: the whole error response.
    """

    def __init__(self, code: int, reason: str, message: Message) -> None:
        super().__init__(f"the STUN server answered {code} {reason}".rstrip())
        self.code = code
        self.message = message


@attrs.frozen
class Response:
    """
    A success response and the address it came from.
    """

    message: Message
    source: HostPort


@attrs.define
class _Transaction:
    deferred: Deferred[Response]
    data: bytes
    destination: HostPort
    sources: tuple[HostPort, ...]
    rto: float
    sent: int = 0
    timer: Optional[IDelayedCall] = None


class StunClientProtocol(DatagramProtocol):
    """
    Binding transactions over one UDP socket.

    @ivar malformed: counts and logs the datagrams dropped as malformed.
    """

    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        rto: float = DEFAULT_RTO,
        rc: int = DEFAULT_RC,
        rm: int = DEFAULT_RM,
        software: Optional[str] = None,
        logInterval: float = 60.0,
    ) -> None:
        """
        @param clock: schedules retransmissions and timeouts.
        @param rto: the first retransmission timeout, in seconds.
        @param rc: how many times a request is sent at most.
        @param rm: after the last send, wait C{rm} times the initial RTO.
        @param software: a SOFTWARE attribute for our requests, if any.
        @param logInterval: dropped datagrams are logged at most once per
            this many seconds.
        """
        if rto <= 0 or rc < 1 or rm < 1:
            raise ValueError("rto must be positive, rc and rm at least 1")
        self.clock = clock
        self.rto = rto
        self.rc = rc
        self.rm = rm
        self.software = software
        self._pending: dict[bytes, _Transaction] = {}
        self.malformed = RateLimitedLog(log, "malformed STUN datagrams", logInterval)

    def request(
        self,
        server: HostPort,
        changeIP: bool = False,
        changePort: bool = False,
        expectFrom: Sequence[HostPort] = (),
    ) -> Deferred[Response]:
        """
        Run one binding transaction.

        @param server: where to send the request.
        @param changeIP: ask (RFC 5780) for the answer from the server's
            other IP.
        @param changePort: ask for the answer from its other port.
        @param expectFrom: other addresses besides C{server} a response
            may come from (where a CHANGE-REQUEST asks it to come from).
        @return: fires with the success response, or fails with
            L{StunErrorResponse}, L{StunTimeout}, or L{StunError} when
            the response carries comprehension-required attributes we do
            not understand (RFC 8489 section 6.3.3).  Cancelling it ends
            the transaction.
        """
        message = Message(
            MessageClass.REQUEST,
            changeIP=changeIP,
            changePort=changePort,
            changeRequest=changeIP or changePort,
            software=self.software,
        )
        tid = message.transactionID

        def cancel(d: Deferred[Response]) -> None:
            self._finish(tid)

        transaction = _Transaction(Deferred(cancel), encode(message), server, (server, *expectFrom), self.rto)
        self._pending[tid] = transaction
        self._send(tid)
        return transaction.deferred

    def _send(self, tid: bytes) -> None:
        transaction = self._pending.get(tid)
        if transaction is None:
            return
        if transaction.sent >= self.rc:
            self._finish(tid)
            transaction.deferred.errback(StunTimeout(f"no answer from STUN server {_show(transaction.destination)}"))
            return
        transaction.sent += 1
        if self.transport is not None:
            try:
                self.transport.write(transaction.data, transaction.destination)
            except OSError as e:
                # An ICMP error reported on a later send, or no route:
                # the retransmissions go on (RFC 8489 wants the timeout to decide).
                log.debug("STUN send to {dest} failed: {error}", dest=transaction.destination, error=e)
        if transaction.sent >= self.rc:
            delay = self.rm * self.rto
        else:
            delay = transaction.rto
            transaction.rto *= 2
        transaction.timer = self.clock.callLater(delay, self._send, tid)

    def _finish(self, tid: bytes) -> Optional[_Transaction]:
        transaction = self._pending.pop(tid, None)
        if transaction is not None and transaction.timer is not None and transaction.timer.active():
            transaction.timer.cancel()
        return transaction

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """
        Match a response to its transaction; drop anything else.
        """
        source = (addr[0], addr[1])
        try:
            message = decode(datagram)
        except InvalidStunMessage as e:
            self.malformed.drop(self.clock.seconds(), source, e)
            return
        transaction = self._pending.get(message.transactionID)
        if (
            transaction is None
            or message.method != BINDING
            or message.messageClass not in (MessageClass.SUCCESS, MessageClass.ERROR)
            or not any(sameAddress(source, s) for s in transaction.sources)
        ):
            # Late, duplicate, or forged: not malformed, just not ours.
            return
        self._finish(message.transactionID)
        d = transaction.deferred
        if message.unknownRequired:
            d.errback(
                StunError(f"the STUN server sent attributes we do not understand: {_types(message.unknownRequired)}")
            )
        elif message.messageClass == MessageClass.ERROR:
            if message.errorCode is None:
                d.errback(StunError("the STUN server sent an error response without an error code"))
            else:
                d.errback(StunErrorResponse(message.errorCode.code, message.errorCode.reason, message))
        else:
            d.callback(Response(message, source))

    def stopProtocol(self) -> None:
        """
        Fail every pending transaction: nothing can answer them now.
        """
        for tid in list(self._pending):
            transaction = self._finish(tid)
            if transaction is not None:
                transaction.deferred.errback(StunError("the STUN client stopped"))


def _types(types: Sequence[int]) -> str:
    return ", ".join(f"0x{t:04x}" for t in types)


def _show(addr: HostPort) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- discovery ------------------------------------------------------------------


def _usableAlternate(server: HostPort, message: Message) -> Optional[HostPort]:
    """
    The alternate address RFC 5780 needs: a different IP and a different
    port, of the same family.
    """
    other = message.alternate
    if other is None:
        return None
    try:
        a, b = ipaddress.ip_address(server[0]), ipaddress.ip_address(other[0])
    except ValueError:
        return None
    if a.version != b.version or a == b or other[1] == server[1] or b.is_unspecified:
        return None
    return other


def _answer(result: tuple[bool, Any]) -> Optional[Response]:
    ok, value = result
    return value if ok else None


async def _gather(*ds: Deferred[Response]) -> list[Optional[Response]]:
    results = await DeferredList(list(ds), consumeErrors=True)
    return [_answer(r) for r in results]


async def _discover(
    client: StunClientProtocol,
    servers: Sequence[HostPort],
    localAddress: Optional[HostPort],
) -> NatBehaviour:
    if not servers:
        raise StunError("no STUN server to ask")
    firstResults = await DeferredList([client.request(s) for s in servers], consumeErrors=True)
    answered: list[tuple[HostPort, Response]] = []
    lastError: Optional[Failure] = None
    for server, (ok, value) in zip(servers, firstResults):
        if not ok:
            lastError = cast(Failure, value)
        elif value.message.reflexive is None:
            lastError = Failure(StunError(f"STUN server {_show(server)} did not say what address it saw"))
        else:
            answered.append((server, value))
    if not answered:
        assert lastError is not None
        if len(servers) > 1 and lastError.check(StunTimeout):
            raise StunTimeout("no STUN server answered")
        lastError.raiseException()
    capable = [(s, r, o) for s, r in answered if (o := _usableAlternate(s, r.message)) is not None]
    if capable:
        server, first, other = capable[0]
    else:
        server, first = answered[0]
        other = None
    mapped = first.message.reflexive
    assert mapped is not None
    noNat = localAddress is not None and sameAddress(mapped, localAddress)
    mapping: Mapping
    filtering: Filtering
    if other is None:
        filtering = "unknown"
        if noNat:
            mapping = "none"
        else:
            mapping = _compareServers(server, mapped, answered)
        return NatBehaviour(mapping, filtering, mapped, server)

    # Filtering: before anything goes to the alternate address.
    bothChanged, portChanged = await _gather(
        client.request(server, changeIP=True, changePort=True, expectFrom=[other]),
        client.request(server, changePort=True, expectFrom=[(server[0], other[1])]),
    )
    if bothChanged is not None and sameAddress(bothChanged.source, other):
        filtering = "endpoint-independent"
    elif portChanged is not None and sameAddress(portChanged.source, (server[0], other[1])):
        filtering = "address-dependent"
    elif bothChanged is None and portChanged is None:
        filtering = "address-and-port-dependent"
    else:
        # The server answered from the wrong address: it does not really
        # honour CHANGE-REQUEST, so the answer tells us nothing.
        filtering = "unknown"

    if noNat:
        mapping = "none"
    else:
        otherIP, otherBoth = await _gather(client.request((other[0], server[1])), client.request(other))
        seenOtherIP = otherIP.message.reflexive if otherIP is not None else None
        seenOtherBoth = otherBoth.message.reflexive if otherBoth is not None else None
        if seenOtherIP is None:
            mapping = "unknown"
        elif sameAddress(seenOtherIP, mapped):
            mapping = "endpoint-independent"
        elif seenOtherBoth is None:
            mapping = "dependent"
        elif sameAddress(seenOtherBoth, seenOtherIP):
            mapping = "address-dependent"
        else:
            mapping = "address-and-port-dependent"
    return NatBehaviour(mapping, filtering, mapped, server)


def _compareServers(server: HostPort, mapped: HostPort, answered: Sequence[tuple[HostPort, Response]]) -> Mapping:
    """
    Mapping from plain servers: what servers at other IPs saw.
    """
    verdict: Mapping = "unknown"
    for other, response in answered:
        if ipaddress.ip_address(other[0]) == ipaddress.ip_address(server[0]):
            continue
        seen = response.message.reflexive
        assert seen is not None
        if not sameAddress(seen, mapped):
            return "dependent"
        verdict = "endpoint-independent"
    return verdict


def discoverWith(
    client: StunClientProtocol,
    servers: Sequence[HostPort],
    localAddress: Optional[HostPort] = None,
) -> Deferred[NatBehaviour]:
    """
    Classify the NAT using a running client (see the module docstring).

    @param client: a L{StunClientProtocol} with a transport.
    @param servers: STUN servers as (IP, port), in order of preference,
        all of the client socket's address family.
    @param localAddress: the client socket's address as the machine knows
        it; a server that sees exactly this means there is no NAT.
        L{None}: we cannot tell, so "no NAT" is never concluded.
    @return: fires with the L{NatBehaviour}, or fails with L{StunError}
        (L{StunTimeout} when no server answered).
    """
    return Deferred.fromCoroutine(_discover(client, list(servers)[:MAX_SERVERS], localAddress))


def routedSource(destination: str) -> Optional[str]:
    """
    The local IP the kernel would send from to reach C{destination}: a
    connected UDP socket's own address, found without sending anything.
    """
    family = socket.AF_INET6 if ":" in destination else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((destination, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


def parseServer(text: str, defaultPort: int = DEFAULT_PORT) -> tuple[str, int]:
    """
    C{"HOST"}, C{"HOST:PORT"}, C{"[V6]:PORT"} or a bare IPv6 address as
    (host, port).

    @raise ValueError: when it is none of those.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not a STUN server address: {text!r}")
        port = rest[1:] if rest else str(defaultPort)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(defaultPort)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a STUN server address: {text!r}")
    return host, int(port)


def _isIP(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _discoverOn(
    reactor: Any,
    servers: Sequence[Union[HostPort, str]],
    interface: str,
    port: int,
    kwargs: dict[str, Any],
) -> NatBehaviour:
    resolved: list[HostPort] = []
    for server in servers:
        host, serverPort = parseServer(server) if isinstance(server, str) else server
        if not _isIP(host):
            try:
                host = await reactor.resolve(host)
            except Exception as e:  # noqa: BLE001 - one bad name must not stop the rest
                log.info("Cannot resolve STUN server {host}: {error}", host=host, error=e)
                continue
        resolved.append((str(ipaddress.ip_address(host)), serverPort))
    if not resolved:
        raise StunError("no STUN server address could be resolved")
    if interface:
        v6 = ipaddress.ip_address(interface).version == 6
    else:
        v6 = ipaddress.ip_address(resolved[0][0]).version == 6
        interface = "::" if v6 else ""
    usable = [s for s in resolved if (ipaddress.ip_address(s[0]).version == 6) == v6]
    client = StunClientProtocol(reactor, **kwargs)
    listening = reactor.listenUDP(port, client, interface=interface)
    try:
        bound = listening.getHost()
        localIP: Optional[str] = interface
        if not interface or ipaddress.ip_address(interface).is_unspecified:
            localIP = routedSource(usable[0][0])
        local = (localIP, bound.port) if localIP else None
        return await discoverWith(client, usable, local)
    finally:
        await Deferred.fromCoroutine(_stop(listening))


async def _stop(listening: Any) -> None:
    result = listening.stopListening()
    if isinstance(result, Deferred):
        await result


def discover(
    reactor: Any,
    servers: Sequence[Union[HostPort, str]],
    *,
    interface: str = "",
    port: int = 0,
    rto: float = DEFAULT_RTO,
    rc: int = DEFAULT_RC,
    rm: int = DEFAULT_RM,
    software: Optional[str] = None,
) -> Deferred[NatBehaviour]:
    """
    Classify the NAT in front of this machine, on a fresh UDP socket.

    @param reactor: provides C{IReactorUDP}, C{IReactorTime} and (for
        server names) C{IReactorPluggableNameResolver}'s C{resolve}.
    @param servers: STUN servers, as (host, port) or C{"host:port"}
        text, in order of preference.  Names are resolved (IPv4); only
        servers of the socket's address family are asked.
    @param interface: the local IP to bind (default: all IPv4, or all
        IPv6 when the first server is IPv6).
    @param port: the local port to bind (default: any).  Binding the
        node's listen port shows what mapping that port gets.
    @param rto: the initial retransmission timeout (RFC 8489: 500 ms).
    @param rc: transmissions per request (RFC 8489: 7).
    @param rm: final wait, in initial RTOs (RFC 8489: 16).
    @param software: a SOFTWARE attribute for the requests.
    @return: fires with a L{NatBehaviour}, or fails with L{StunError}.
    """
    kwargs = {"rto": rto, "rc": rc, "rm": rm, "software": software}
    return Deferred.fromCoroutine(_discoverOn(reactor, servers, interface, port, kwargs))


# -- command line ------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> None:
    """
    C{python -m beam.p2p.nat.stunclient SERVER... [--json]}: classify the
    NAT and print the result; exit status 1 with one line on stderr when
    no server answered.
    """
    import argparse

    from twisted.internet import task

    parser = argparse.ArgumentParser(
        prog="python -m beam.p2p.nat.stunclient",
        description="Classify the NAT in front of this machine with STUN (RFC 8489, RFC 5780).",
    )
    parser.add_argument("servers", nargs="+", metavar="HOST[:PORT]")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--interface", default="", help="local IP to bind")
    parser.add_argument("--port", type=int, default=0, help="local port to bind")
    parser.add_argument("--rto", type=float, default=DEFAULT_RTO, help="initial retransmission timeout (s)")
    parser.add_argument("--rc", type=int, default=DEFAULT_RC, help="transmissions per request")
    parser.add_argument("--rm", type=int, default=DEFAULT_RM, help="final wait, in initial RTOs")
    options = parser.parse_args(argv)
    try:
        servers = [parseServer(s) for s in options.servers]
    except ValueError as e:
        parser.error(str(e))

    async def run(reactor: Any) -> None:
        try:
            behaviour = await discover(
                reactor,
                servers,
                interface=options.interface,
                port=options.port,
                rto=options.rto,
                rc=options.rc,
                rm=options.rm,
            )
        except BeamError as e:
            print(f"stun: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        if options.json:
            print(json.dumps(behaviour.toJSON()))
        else:
            public = "unknown" if behaviour.publicAddr is None else _show(behaviour.publicAddr)
            print(f"public address: {public}")
            print(f"mapping:        {behaviour.mapping}")
            print(f"filtering:      {behaviour.filtering}")
            print(f"strategy:       {behaviour.strategy}")

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":  # pragma: no cover
    main()
