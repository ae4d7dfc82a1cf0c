"""
NAT-PMP (RFC 6886): ask the home gateway for a port mapping.

NAT-PMP is a dozen bytes over UDP to the default gateway's port 5351, so
it is implemented here rather than borrowed: the only Python clients on
PyPI (C{py-natpmp}, C{nat-pmp}) are unmaintained, block on their own
sockets and parse the routing table by running C{netstat}.  PCP gateways
(RFC 6887, e.g. miniupnpd) answer NAT-PMP version 0 requests on the same
port, so this client reaches them too.

 - the sans-IO codec: L{encodeExternalAddressRequest},
   L{encodeMapRequest}, L{decodeResponse} (strict and bounded: anything
   else raises L{NatPmpError});
 - L{NatPmpClient}: one request at a time over a connected UDP socket,
   retransmitted on RFC 6886's schedule (250 ms, doubling) on an injected
   clock, but for fewer attempts than the RFC's nine: a gateway that says
   nothing for a few seconds does not speak NAT-PMP, and UPnP is next;
 - L{defaultGateway}: the IPv4 default gateway from C{/proc/net/route}.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Literal, Optional, Union

import attrs
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from beam.errors import BeamError

__all__ = [
    "PORT",
    "ExternalAddressResponse",
    "MapResponse",
    "NatPmpClient",
    "NatPmpError",
    "NatPmpRefused",
    "NatPmpTimeout",
    "decodeResponse",
    "defaultGateway",
    "encodeExternalAddressRequest",
    "encodeMapRequest",
    "readDefaultGateway",
]

log = Logger()

#: The gateway's NAT-PMP port (RFC 6886 section 3.1).
PORT = 5351
#: The only NAT-PMP version.
VERSION = 0
#: Opcodes (section 3.2, 3.3); a response's opcode is the request's + 128.
OP_EXTERNAL_ADDRESS = 0
OP_MAP_UDP = 1
OP_MAP_TCP = 2
#: The largest datagram we look at: PCP's maximum message size (RFC 6887
#: section 7); a NAT-PMP answer is 12 or 16 bytes.
MAX_DATAGRAM = 1100
#: The first retransmission timeout (section 3.1) and how many times a
#: request is sent by default.
INITIAL_TIMEOUT = 0.25
DEFAULT_ATTEMPTS = 4

#: Result codes (section 3.5).
RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized or refused (port mapping may be disabled on the gateway)",
    3: "network failure (the gateway has no external address yet)",
    4: "out of resources (no more mappings)",
    5: "unsupported opcode",
}

Transport = Literal["tcp", "udp"]


class NatPmpError(BeamError):
    """
    The gateway's NAT-PMP answer could not be used.
    """


class NatPmpTimeout(NatPmpError):
    """
    The gateway did not answer NAT-PMP requests: it probably does not
    speak NAT-PMP (or it is switched off).
    """


class NatPmpRefused(NatPmpError):
    """
    The gateway answered with a non-zero result code.

    @ivar code: the result code.
    """

    def __init__(self, code: int) -> None:
        super().__init__(f"the gateway refused (NAT-PMP result {code}: {RESULTS.get(code, 'unknown result code')})")
        self.code = code


@attrs.frozen
class ExternalAddressResponse:
    """
    The answer to an external address request.

    @ivar epoch: seconds since the gateway's mapping table was reset.
    @ivar address: the gateway's external IPv4 address.
    """

    result: int
    epoch: int
    address: str


@attrs.frozen
class MapResponse:
    """
    The answer to a mapping request.

    @ivar externalPort: the port the gateway mapped (maybe not the one we
        suggested); 0 after a deletion.
    @ivar lifetime: seconds the mapping lives; 0 after a deletion.
    """

    transport: Transport
    result: int
    epoch: int
    internalPort: int
    externalPort: int
    lifetime: int


Response = Union[ExternalAddressResponse, MapResponse]


def encodeExternalAddressRequest() -> bytes:
    """
    The external address request (section 3.2).
    """
    return struct.pack("!BB", VERSION, OP_EXTERNAL_ADDRESS)


def encodeMapRequest(transport: Transport, internalPort: int, externalPort: int, lifetime: int) -> bytes:
    """
    A mapping request (section 3.3); C{lifetime} 0 with C{externalPort} 0
    deletes the mapping of C{internalPort} (section 3.4).

    @raise ValueError: a port or lifetime out of range.
    """
    if not 1 <= internalPort <= 0xFFFF or not 0 <= externalPort <= 0xFFFF:
        raise ValueError("ports must be 1-65535 (external 0 for any)")
    if not 0 <= lifetime <= 0xFFFFFFFF:
        raise ValueError("lifetime out of range")
    op = OP_MAP_TCP if transport == "tcp" else OP_MAP_UDP
    return struct.pack("!BBHHHI", VERSION, op, 0, internalPort, externalPort, lifetime)


def decodeResponse(data: bytes) -> Response:
    """
    Parse a gateway's answer.  Only version 0 responses of the three
    known opcodes are accepted; the fields a response needs must all be
    there (a non-zero result may come without them: section 3.5 leaves
    them undefined, so they read as zero).

    @raise NatPmpError: anything else, with the reason.
    """
    if len(data) > MAX_DATAGRAM:
        raise NatPmpError(f"NAT-PMP answer of {len(data)} bytes is too long")
    if len(data) < 4:
        raise NatPmpError("NAT-PMP answer too short")
    version, op, result = struct.unpack_from("!BBH", data)
    if version != VERSION:
        raise NatPmpError(f"the gateway answered with protocol version {version}, not NAT-PMP (0)")
    if op < 128:
        raise NatPmpError(f"NAT-PMP answer with request opcode {op}")
    op -= 128
    if op == OP_EXTERNAL_ADDRESS:
        if len(data) < 12:
            if result == 0 or len(data) < 8:
                raise NatPmpError("NAT-PMP external address answer too short")
            (epoch,) = struct.unpack_from("!I", data, 4)
            return ExternalAddressResponse(result=result, epoch=epoch, address="0.0.0.0")
        epoch, raw = struct.unpack_from("!I4s", data, 4)
        return ExternalAddressResponse(result=result, epoch=epoch, address=str(ipaddress.IPv4Address(raw)))
    if op in (OP_MAP_UDP, OP_MAP_TCP):
        transport: Transport = "tcp" if op == OP_MAP_TCP else "udp"
        if len(data) < 16:
            if result == 0 or len(data) < 8:
                raise NatPmpError("NAT-PMP mapping answer too short")
            (epoch,) = struct.unpack_from("!I", data, 4)
            return MapResponse(transport, result, epoch, 0, 0, 0)
        epoch, internal, external, lifetime = struct.unpack_from("!IHHI", data, 4)
        return MapResponse(transport, result, epoch, internal, external, lifetime)
    raise NatPmpError(f"NAT-PMP answer with unknown opcode {op}")


def defaultGateway(routeTable: str) -> Optional[str]:
    """
    The IPv4 default gateway in the text of C{/proc/net/route}: the
    first up route (flag RTF_UP) to 0.0.0.0/0 with a gateway
    (RTF_GATEWAY), or L{None}.  Malformed lines are skipped.
    """
    for line in routeTable.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags, mask = (int(fields[i], 16) for i in (1, 2, 3, 7))
        except ValueError:
            continue
        if destination != 0 or mask != 0 or flags & 0x3 != 0x3 or not 0 < gateway <= 0xFFFFFFFF:
            continue
        # The kernel prints the address in host byte order (little-endian).
        return str(ipaddress.IPv4Address(gateway.to_bytes(4, "little")))
    return None


def readDefaultGateway(path: str = "/proc/net/route") -> Optional[str]:
    """
    L{defaultGateway} of this machine (Linux), or L{None} when there is
    none or the table cannot be read.
    """
    try:
        with open(path) as f:
            return defaultGateway(f.read(1 << 20))
    except OSError:
        return None


@attrs.define
class _Pending:
    deferred: Deferred[Response]
    data: bytes
    op: int
    timeout: float
    sent: int = 0
    timer: Optional[IDelayedCall] = None


class NatPmpClient(DatagramProtocol):
    """
    NAT-PMP requests to one gateway, one at a time (section 3.1: a client
    must not have several requests outstanding), over a UDP socket
    connected to it so the kernel drops datagrams from anyone else.

    Use L{connect} to make one on a reactor, L{close} to let it go.

    @ivar epoch: the gateway's last epoch, or L{None}.
    """

    noisy = False

    def __init__(self, clock: IReactorTime, *, initialTimeout: float = INITIAL_TIMEOUT,
                 attempts: int = DEFAULT_ATTEMPTS) -> None:
        self.clock = clock
        self.initialTimeout = initialTimeout
        self.attempts = max(1, attempts)
        self.epoch: Optional[int] = None
        self._lock = DeferredLock()
        self._pending: Optional[_Pending] = None
        self._closed = False
        self._port: Optional[object] = None

    @classmethod
    def connect(cls, reactor: IReactorUDP, gateway: str, port: int = PORT, **kwargs: float) -> NatPmpClient:
        """
        A client on a new UDP socket connected to C{gateway}:C{port};
        C{reactor} must also provide L{IReactorTime}.
        """
        client = cls(reactor, **kwargs)  # type: ignore[arg-type]
        listening = reactor.listenUDP(0, client, "", 2 * MAX_DATAGRAM)
        listening.connect(gateway, port)  # type: ignore[attr-defined]
        client._port = listening
        return client

    def close(self) -> Deferred[None]:
        """
        Fail the pending request and close the socket.
        """
        self._closed = True
        self._fail(NatPmpError("the NAT-PMP client was closed"))
        port, self._port = self._port, None
        if port is not None:
            result = port.stopListening()  # type: ignore[attr-defined]
            if isinstance(result, Deferred):
                return result
        return Deferred.fromCoroutine(_nothing())

    # -- requests ----------------------------------------------------------

    def externalAddress(self) -> Deferred[ExternalAddressResponse]:
        """
        Ask for the gateway's external address.
        """
        return self._request(encodeExternalAddressRequest(), OP_EXTERNAL_ADDRESS)  # type: ignore[return-value]

    def addMapping(
        self, transport: Transport, internalPort: int, externalPort: int, lifetime: int
    ) -> Deferred[MapResponse]:
        """
        Ask for (or renew) a mapping of C{internalPort}, suggesting
        C{externalPort}; fires with the gateway's answer, or fails with
        L{NatPmpRefused} or L{NatPmpTimeout}.
        """
        op = OP_MAP_TCP if transport == "tcp" else OP_MAP_UDP
        data = encodeMapRequest(transport, internalPort, externalPort, lifetime)
        return self._request(data, op)  # type: ignore[return-value]

    def removeMapping(self, transport: Transport, internalPort: int) -> Deferred[MapResponse]:
        """
        Delete our mapping of C{internalPort} (section 3.4).
        """
        return self.addMapping(transport, internalPort, 0, 0)

    def _request(self, data: bytes, op: int) -> Deferred[Response]:
        async def run() -> Response:
            await self._lock.acquire()
            try:
                if self._closed:
                    raise NatPmpError("the NAT-PMP client was closed")
                pending = _Pending(Deferred(), data, op, self.initialTimeout)
                self._pending = pending
                self._send(pending)
                response = await pending.deferred
            finally:
                self._lock.release()
            if response.result != 0:
                raise NatPmpRefused(response.result)
            return response

        return Deferred.fromCoroutine(run())

    def _send(self, pending: _Pending) -> None:
        if pending.sent >= self.attempts:
            self._fail(NatPmpTimeout(f"the gateway did not answer NAT-PMP ({pending.sent} requests)"))
            return
        pending.sent += 1
        if self.transport is not None:
            try:
                self.transport.write(pending.data, None)
            except OSError as e:
                # A connected UDP socket reports ICMP unreachable here.
                self._fail(NatPmpError(f"NAT-PMP request could not be sent: {e.strerror or e}"))
                return
        delay = pending.timeout * (2 ** (pending.sent - 1))
        pending.timer = self.clock.callLater(delay, self._send, pending)

    def _fail(self, error: Exception) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.deferred.errback(error)

    # -- the socket --------------------------------------------------------

    def datagramReceived(self, datagram: bytes, addr: object) -> None:
        """
        Match an answer to the pending request; anything malformed or
        unexpected is logged and dropped (the retransmission goes on).
        """
        try:
            response = decodeResponse(datagram)
        except NatPmpError as e:
            log.debug("dropping a NAT-PMP datagram from {addr}: {error}", addr=addr, error=e)
            return
        pending = self._pending
        responseOp = OP_EXTERNAL_ADDRESS if isinstance(response, ExternalAddressResponse) else (
            OP_MAP_TCP if response.transport == "tcp" else OP_MAP_UDP)
        if pending is None or responseOp != pending.op:
            return
        self._pending = None
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        self.epoch = response.epoch
        pending.deferred.callback(response)

    def connectionRefused(self) -> None:
        """
        ICMP port unreachable: nothing listens on the gateway's NAT-PMP
        port, so there is no point in retransmitting.
        """
        self._fail(NatPmpError("the gateway refused NAT-PMP (port 5351 closed)"))

    def stopProtocol(self) -> None:
        self._fail(NatPmpError("the NAT-PMP socket was closed"))


async def _nothing() -> None:
    return None


