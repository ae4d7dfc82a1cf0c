"""
The C{beam.} DNS zone, without any I/O: what the node's local DNS server
(L{beam.daemon.dns}) answers to one query.

A name C{NAME.beam} stands for the Beam name C{NAME}; C{SERVICE.NAME.beam}
for one service of it.  Each is answered with an A record holding a
loopback address of its own (from L{AddressAllocator}), on which the node
listens on the service's ports and forwards into the tunnel, so that
C{curl http://alice.beam:3000/} works with no C{beam connect}.

Since Beam names may hold dots themselves, C{web.alice.beam} is first the
name C{web.alice}; only when that has no record is it the service C{web}
of C{alice} (and only if alice's record lists that service).

The zone does no networking and keeps no clock: L{BeamZone} is given a
C{resolve(name)} callback (the daemon's, going through the name service)
and an C{allocate(name, service, resolution)} callback (the daemon's,
which also starts the listeners), both returning L{Deferred}s, so a test
drives it synchronously with L{succeed} and L{fail}.

Answers:

  - C{A} (and C{ANY}): the address, TTL L{ANSWER_TTL} (short: the node may
    stop, the name may move);
  - C{AAAA} and every other type of a name that exists: NODATA (NOERROR,
    no answer, the zone's SOA in the authority section);
  - a name with no record: NXDOMAIN (with the SOA, whose minimum makes
    the negative answer short-lived);
  - the name could not be looked up (no DHT peers, a timeout, too many
    lookups at once, no address left): SERVFAIL, never NXDOMAIN, so that
    a resolver does not remember a name as missing when it was not asked;
  - a name outside C{beam.}: REFUSED (this is not a recursive resolver);
  - a query that cannot be decoded, is larger than L{MAX_QUERY}, or has
    other than one question: FORMERR; another opcode: NOTIMP; something
    too short to carry a header, or a response: dropped.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.names import dns
from twisted.python.failure import Failure

from beam.errors import BeamError
from beam.names.record import InvalidName, normalizeName

__all__ = [
    "ANSWER_TTL",
    "MAX_QUERY",
    "NEGATIVE_TTL",
    "SERVFAIL_TTL",
    "WELL_KNOWN_PORTS",
    "ZONE",
    "AddressAllocator",
    "AddressesExhausted",
    "BeamZone",
    "LookupFailed",
    "NameMissing",
    "ZoneError",
    "servicePort",
]

#: The zone's apex.
ZONE = "beam"

#: Seconds an address answer may be cached.
ANSWER_TTL = 5

#: Seconds an NXDOMAIN or NODATA may be cached (the SOA's minimum).
NEGATIVE_TTL = 5

#: Seconds a SERVFAIL's SOA says (resolvers mostly use their own figure).
SERVFAIL_TTL = 1

#: The largest query accepted, in bytes: a question is at most 255 bytes
#: of name plus a header and an EDNS option; anything bigger is not a
#: query of ours.
MAX_QUERY = 512

#: The largest UDP answer sent (without EDNS, the classic limit).
MAX_UDP_ANSWER = 512

_HEADER = 12

#: Service names that stand for a port without saying it.  A service
#: named by its port (C{"3000"}, the default) is that port; these few
#: names are the usual ones for a web or shell service.  Any other named
#: service has no port the client could guess and gets no listener.
WELL_KNOWN_PORTS: Mapping[str, int] = {"web": 80, "http": 80, "www": 80, "https": 443, "ssh": 22}


def servicePort(service: str) -> Optional[int]:
    """
    The local port a service is reached on at its DNS address: a service
    named by a port number is that port, a few well-known names have
    their usual port (L{WELL_KNOWN_PORTS}), others none.
    """
    if service.isdigit() and service.isascii():
        port = int(service)
        return port if 0 < port < 65536 else None
    return WELL_KNOWN_PORTS.get(service)


class ZoneError(BeamError):
    """
    A name of the zone could not be answered with an address.
    """


class NameMissing(ZoneError):
    """
    The name has no record (NXDOMAIN).
    """


class LookupFailed(ZoneError):
    """
    The name could not be looked up now (SERVFAIL).
    """


class AddressesExhausted(LookupFailed):
    """
    Every address of the network is taken by a name in use.
    """


class AddressAllocator:
    """
    One loopback address per C{(name, service)}, from a network.

    An allocation is stable: the same key gets the same address for as
    long as the allocator lives, and across runs when the caller saves
    L{remembered} and passes it back.  It is bounded: at most
    C{maxAllocations} keys; when the network or that bound is full, the
    least recently used key not allocated in this run gives its address
    up; when every address is in use in this run, L{AddressesExhausted}.

    @ivar live: the keys allocated since this allocator was made.
    """

    def __init__(
        self,
        network: str,
        remembered: Optional[Mapping[str, Any]] = None,
        maxAllocations: int = 4096,
        exclude: Iterable[str] = (),
    ) -> None:
        """
        @param network: e.g. C{"127.77.0.0/16"}; its network and broadcast
            addresses are never handed out.
        @param remembered: key -> address from an earlier run (what
            L{remembered} returned); entries outside the network, of an
            excluded address or not valid are ignored.
        @param exclude: addresses never handed out (the DNS server's own).
        """
        self.network = ipaddress.IPv4Network(network)
        self._excluded = {ipaddress.IPv4Address(a) for a in exclude if _isIPv4(a)}
        self._excluded |= {self.network.network_address, self.network.broadcast_address}
        usable = self.network.num_addresses - len([a for a in self._excluded if a in self.network])
        self.capacity = max(0, min(maxAllocations, usable))
        #: key -> address, least recently used first
        self._byKey: OrderedDict[str, ipaddress.IPv4Address] = OrderedDict()
        self._byAddress: dict[ipaddress.IPv4Address, str] = {}
        self.live: set[str] = set()
        for key, text in (remembered or {}).items():
            if len(self._byKey) >= self.capacity:
                break
            if not isinstance(key, str) or not isinstance(text, str) or not _isIPv4(text):
                continue
            address = ipaddress.IPv4Address(text)
            if address not in self.network or address in self._excluded or address in self._byAddress:
                continue
            self._byKey[key] = address
            self._byAddress[address] = key
        self._next = 0

    @staticmethod
    def key(name: str, service: Optional[str] = None) -> str:
        """
        The key of C{(name, service)}: the DNS host without C{.beam}.
        """
        return f"{service}.{name}" if service else name

    def lookup(self, name: str, service: Optional[str] = None) -> Optional[str]:
        """
        The address allocated to C{(name, service)}, or L{None}.
        """
        address = self._byKey.get(self.key(name, service))
        return str(address) if address is not None else None

    def allocate(self, name: str, service: Optional[str] = None) -> str:
        """
        The address of C{(name, service)}, allocated now if it has none.

        @raise AddressesExhausted: none is free.
        """
        key = self.key(name, service)
        address = self._byKey.get(key)
        if address is None:
            address = self._free()
            self._byKey[key] = address
            self._byAddress[address] = key
        self._byKey.move_to_end(key)
        self.live.add(key)
        return str(address)

    def _free(self) -> ipaddress.IPv4Address:
        if len(self._byKey) < self.capacity:
            size = self.network.num_addresses
            base = int(self.network.network_address)
            # At most capacity + excluded steps: fewer than that many
            # addresses are taken.
            for _ in range(size):
                candidate = ipaddress.IPv4Address(base + self._next % size)
                self._next = (self._next + 1) % size
                if candidate not in self._excluded and candidate not in self._byAddress:
                    return candidate
        for key in self._byKey:
            if key not in self.live:
                address = self._byKey.pop(key)
                del self._byAddress[address]
                return address
        raise AddressesExhausted(
            f"every one of the {self.capacity} DNS addresses of {self.network} is in use: "
            f"restart the node or widen [dns] addresses"
        )

    def remembered(self) -> dict[str, str]:
        """
        Every allocation, key -> address, to pass back on the next run.
        """
        return {key: str(address) for key, address in self._byKey.items()}


def _isIPv4(text: Any) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except (ValueError, TypeError):
        return False
    return True


#: C{resolve(name)}: fires with the name's resolution (anything with a
#: C{services} sequence), or fails with L{NameMissing} or L{LookupFailed}.
Resolve = Callable[[str], "Deferred[Any]"]

#: C{allocate(name, service, resolution)}: fires with the IPv4 address to
#: answer (after the node listens on it), or fails with L{LookupFailed}.
Allocate = Callable[[str, Optional[str], Any], "Deferred[str]"]


def _soa(negativeTTL: int) -> dns.RRHeader:
    record = dns.Record_SOA(
        mname=b"ns." + ZONE.encode(), rname=b"nobody.invalid", serial=1, refresh=3600, retry=600,
        expire=86400, minimum=negativeTTL, ttl=negativeTTL,
    )
    return dns.RRHeader(ZONE.encode(), dns.SOA, dns.IN, negativeTTL, record, auth=True)


class BeamZone:
    """
    Answers queries for the C{beam.} zone (see the module docstring).
    """

    def __init__(self, resolve: Resolve, allocate: Allocate, ttl: int = ANSWER_TTL,
                 negativeTTL: int = NEGATIVE_TTL) -> None:
        self.resolve = resolve
        self.allocate = allocate
        self.ttl = ttl
        self.negativeTTL = negativeTTL

    # -- datagrams --------------------------------------------------------

    def answerBytes(self, data: bytes, maxSize: int = MAX_UDP_ANSWER) -> Deferred[Optional[bytes]]:
        """
        The encoded answer to the encoded query C{data}, or L{None} when it
        is dropped (see the module docstring).  Never fails.
        """
        if len(data) < _HEADER:
            return succeed(None)
        queryID = int.from_bytes(data[:2], "big")
        flags = data[2]
        if flags & 0x80:
            # A response: never answer one (no loops with another server).
            return succeed(None)
        if len(data) > MAX_QUERY:
            return succeed(self._encode(self._error(queryID, dns.EFORMAT, flags), maxSize))
        message = dns.Message()
        try:
            message.fromStr(data)
        except Exception:  # noqa: BLE001 - any decoding error is the sender's
            return succeed(self._encode(self._error(queryID, dns.EFORMAT, flags), maxSize))
        def failed(f: Failure) -> Optional[bytes]:
            # answer() never fails; should a bug make it, a SERVFAIL rather
            # than silence, and never a traceback for the sender to cause.
            return self._encode(self._error(queryID, dns.ESERVER, flags), maxSize)

        encoded: Deferred[Optional[bytes]] = self.answer(message).addCallback(lambda r: self._encode(r, maxSize))
        return encoded.addErrback(failed)

    def _error(self, queryID: int, rCode: int, flags: int) -> dns.Message:
        reply = dns.Message(id=queryID, answer=1, opCode=(flags >> 3) & 0xF, recDes=flags & 1, recAv=1)
        reply.rCode = rCode
        return reply

    def _encode(self, reply: dns.Message, maxSize: int) -> bytes:
        data = reply.toStr()
        if len(data) > maxSize:
            # Only a very long question with its SOA can get here: the
            # header and question, truncated, tell the client to use TCP.
            reply.answers, reply.authority, reply.additional = [], [], []
            reply.trunc = True
            data = reply.toStr()[:maxSize]
        return data

    # -- messages ---------------------------------------------------------

    def answer(self, query: dns.Message) -> Deferred[dns.Message]:
        """
        The answer to C{query}, a decoded request.  Never fails.
        """
        reply = dns.Message(id=query.id, answer=1, opCode=query.opCode, recDes=query.recDes, recAv=1)
        reply.queries = list(query.queries)
        if query.opCode != dns.OP_QUERY:
            reply.rCode = dns.ENOTIMP
            return succeed(reply)
        if len(query.queries) != 1:
            reply.rCode = dns.EFORMAT
            return succeed(reply)
        question = query.queries[0]
        if question.cls not in (dns.IN, dns.ANY):
            reply.rCode = dns.EREFUSED
            return succeed(reply)
        # Byte for byte: a label with other than ASCII in it is in the
        # zone, only not a Beam name (NXDOMAIN).
        host = question.name.name.lower().decode("latin-1").rstrip(".")
        labels = host.split(".") if host else []
        if not labels or labels[-1] != ZONE:
            reply.rCode = dns.EREFUSED
            return succeed(reply)
        reply.auth = True
        inside = labels[:-1]
        if not inside:
            # The apex: it exists, and holds nothing to ask for.
            return succeed(self._negative(reply, dns.OK))
        wantsAddress = question.type in (dns.A, dns.ALL_RECORDS)
        d = self._find(inside)

        def found(result: tuple[str, Optional[str], Any]) -> Any:
            if not wantsAddress:
                return self._negative(reply, dns.OK)
            name, service, resolution = result
            return maybeDeferred(self.allocate, name, service, resolution).addCallback(addressed)

        def addressed(address: str) -> dns.Message:
            record = dns.Record_A(address, ttl=self.ttl)
            reply.answers = [dns.RRHeader(question.name.name, dns.A, dns.IN, self.ttl, record, auth=True)]
            return reply

        def failed(f: Failure) -> dns.Message:
            reply.answers = []
            if f.check(NameMissing):
                return self._negative(reply, dns.ENAME)
            reply.rCode = dns.ESERVER
            reply.authority = [_soa(SERVFAIL_TTL)]
            return reply

        return d.addCallback(found).addErrback(failed)

    def _negative(self, reply: dns.Message, rCode: int) -> dns.Message:
        reply.rCode = rCode
        reply.authority = [_soa(self.negativeTTL)]
        return reply

    def _find(self, labels: list[str]) -> Deferred[tuple[str, Optional[str], Any]]:
        """
        The name (and service) C{labels} stand for, with its resolution:
        the whole as a name, else the first label as a service of the rest.

        @return: fails with L{NameMissing} when neither has a record.
        """
        whole = _name(".".join(labels))
        split = None
        if len(labels) > 1:
            rest = _name(".".join(labels[1:]))
            if rest is not None:
                split = (labels[0], rest)

        def asService(f: Failure) -> Any:
            f.trap(NameMissing)
            if split is None:
                return f
            service, rest = split

            def listed(resolution: Any) -> tuple[str, Optional[str], Any]:
                if service not in tuple(getattr(resolution, "services", ())):
                    raise NameMissing(f"{rest!r} has no service {service!r}")
                return rest, service, resolution

            return maybeDeferred(self.resolve, rest).addCallback(listed)

        if whole is None:
            d: Deferred[Any] = fail(NameMissing(f"{'.'.join(labels)!r} is not a Beam name"))
        else:
            d = maybeDeferred(self.resolve, whole).addCallback(lambda r: (whole, None, r))
        return d.addErrback(asService)


def _name(text: str) -> Optional[str]:
    """
    C{text} as a canonical Beam name, or L{None} if it cannot be one.
    """
    try:
        return normalizeName(text)
    except InvalidName:
        return None
