"""
Multicast DNS discovery (the libp2p mDNS spec) and Beam names on the LAN.

Peers on one network segment find each other with no bootstrap node and no
Internet: each node asks the link's multicast group (C{224.0.0.251:5353})
for the DNS-SD service C{_p2p._udp.local} (a C{PTR} question); each node
that hears the question answers with a C{PTR} record naming itself
C{<peer-name>._p2p._udp.local} (a random label of 32 to 63 letters and
digits, new each run, so the answer does not identify the machine) and, as
additional records, C{TXT} records whose strings are
C{dnsaddr=<multiaddr>/p2p/<peer id>}.  That is what C{@libp2p/mdns} (js),
go-libp2p and rust-libp2p send and read.  A discovered peer's addresses go
to the peerstore with source C{"mdns"} and the peer is dialled (a few dials
at a time, never while connected, never again soon after a failure), so
the DHT and gossip meshes form on an isolated LAN.

Beam names ride on the same socket, in a zone of our own: the question
C{<name>._beam-name._udp.local TXT} asks the LAN for the name record of
C{<name>}; a node that owns the name answers with one C{TXT} record of the
same name whose first string is C{beam-record=1} and whose next strings,
concatenated, are the signed record bytes exactly as published to the DHT
(TXT strings are binary-safe and at most 255 bytes each, so the record is
cut in 255-byte pieces).  The asker validates the record (signature, owner,
expiry) as it validates a DHT answer; we only carry bytes.

The module has two halves:

  - a sans-IO codec (L{decodePacket}, L{encodeQuery},
    L{encodePeerResponse}, L{peersInResponse}, L{encodeNameResponse},
    L{nameRecordsInResponse}, ...), pure functions over bytes and
    L{twisted.names.dns.Message}: Twisted's own DNS codec, already a
    dependency, maintained, with name-compression loop and jump limits;
    the mDNS libraries on PyPI (zeroconf, ...) bring their own threads or
    asyncio loops, which do not fit a Twisted reactor;
  - L{MdnsService}, the Twisted service: one UDP socket bound to port 5353
    with C{SO_REUSEADDR}/C{SO_REUSEPORT} (so several nodes, and the system's
    own responder, share it) that joins the group on every IPv4 interface
    address (L{beam.p2p.transport._netif}: the kernel's list, never the
    host name's) and sends on each interface in turn.

Everything a stranger on the LAN can send is bounded: datagrams larger
than L{MAX_PACKET} and messages with more than L{MAX_RECORDS} records are
dropped before decoding; at most L{MAX_PACKETS_PER_SECOND} datagrams are
looked at per second; at most L{MAX_PEERS} discovered peers are remembered
(least recently seen forgotten first) with L{MAX_ADDRS_PER_PEER} addresses
each; answers are sent at most once a second per record and interface
(RFC 6762 section 6; a question inside that second gets one held answer
when it is over) and at most L{MAX_ANSWERS_PER_SECOND} in all; at most
L{MAX_PENDING_NAMES} name questions of ours wait at a time.

IPv6 (C{ff02::fb}) is not used: every IPv4 LAN already carries the IPv4
group, and libp2p's mDNS peers answer on both.
"""

from __future__ import annotations

import os
import socket
import struct
from collections import OrderedDict
from functools import partial
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.names import dns

from beam.errors import BeamError, DecodeError
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.addrs import addrScope, reachableFrom

__all__ = [
    "MDNS_GROUP",
    "MDNS_PORT",
    "NAME_SERVICE",
    "SERVICE",
    "MalformedPacket",
    "MdnsService",
    "Announcement",
    "decodePacket",
    "encodeNameQuery",
    "encodeNameResponse",
    "encodePeerResponse",
    "encodeQuery",
    "isPeerQuery",
    "makeMdns",
    "nameQuestions",
    "nameRecordsInResponse",
    "peersInResponse",
    "randomPeerName",
]

log = Logger()

#: The mDNS IPv4 group and port (RFC 6762).
MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353
#: The DNS-SD service every libp2p node answers for.
SERVICE = b"_p2p._udp.local"
#: Our own zone for Beam names: C{<name>._beam-name._udp.local}.
NAME_SERVICE = b"_beam-name._udp.local"
#: The first TXT string of a name answer; the rest is the record.
NAME_MARKER = b"beam-record=1"
#: The TTL of our answers (seconds), as the spec and js use.
TTL = 120

#: Largest datagram looked at (RFC 6762 section 17: 9000 bytes).
MAX_PACKET = 9000
#: Most questions + records in one message.
MAX_RECORDS = 64
#: Most datagrams handled per second (the rest are dropped unread).
MAX_PACKETS_PER_SECOND = 200
#: Most answers we send per second, all questions together.
MAX_ANSWERS_PER_SECOND = 20
#: Discovered peers remembered.
MAX_PEERS = 256
#: Addresses kept per discovered peer.
MAX_ADDRS_PER_PEER = 16
#: Our name questions waiting for an answer at a time.
MAX_PENDING_NAMES = 64
#: Largest name record carried (the DHT's records are far smaller).
MAX_NAME_RECORD = 4096
#: Peers dialled at a time.
MAX_DIALS = 4
#: A peer is not dialled again within this many seconds of the last try.
REDIAL_AFTER = 30.0
#: Longest pause between two queries (seconds); they start 1 s apart and
#: double up to this.
QUERY_INTERVAL = 60.0
#: A record is multicast at most once per this many seconds per interface.
RECORD_INTERVAL = 1.0
#: How long an mDNS address stays in the peerstore.
ADDR_TTL = float(TTL)

_TXT_CHUNK = 255
_PEER_NAME_CHARS = b"abcdefghijklmnopqrstuvwxyz0123456789"
_HEADER = struct.Struct("!6H")


class MalformedPacket(DecodeError):
    """
    An mDNS datagram that is too large, has too many records or does not
    decode as DNS.
    """


class MdnsError(BeamError):
    """
    The mDNS service cannot do what was asked.
    """


# -- the sans-IO codec ---------------------------------------------------------


def randomPeerName(random: Callable[[int], bytes] = os.urandom) -> str:
    """
    A fresh peer name: 32 to 63 lower-case letters and digits, as the spec
    asks (random, so the answer carries nothing that identifies the
    machine across runs).
    """
    raw = random(64)
    length = 32 + raw[0] % 32
    return bytes(_PEER_NAME_CHARS[b % len(_PEER_NAME_CHARS)] for b in raw[1:1 + length]).decode()


def decodePacket(data: bytes) -> dns.Message:
    """
    Decode one datagram, refusing what could make us work hard.

    @raise MalformedPacket: too large (L{MAX_PACKET}), too many records
        (L{MAX_RECORDS}, checked in the header before decoding), or not a
        DNS message.
    """
    if len(data) > MAX_PACKET:
        raise MalformedPacket(f"mDNS packet of {len(data)} bytes (limit {MAX_PACKET})")
    if len(data) < _HEADER.size:
        raise MalformedPacket("mDNS packet shorter than a DNS header")
    _, _, qd, an, ns, ar = _HEADER.unpack_from(data)
    if qd + an + ns + ar > MAX_RECORDS:
        raise MalformedPacket(f"mDNS packet with {qd + an + ns + ar} records (limit {MAX_RECORDS})")
    message = dns.Message()
    try:
        message.fromStr(data)
    except Exception as e:  # noqa: BLE001 - the codec raises many types on junk
        raise MalformedPacket(f"undecodable mDNS packet: {type(e).__name__}: {e}") from None
    got = (len(message.queries), len(message.answers), len(message.authority), len(message.additional))
    if got != (qd, an, ns, ar):
        # Twisted's decoder stops quietly at a truncated record; a message
        # cut short is not one to act on.
        raise MalformedPacket(f"truncated mDNS packet: {sum(got)} of {qd + an + ns + ar} records")
    return message


def _lower(name: Any) -> bytes:
    return bytes(name.name if isinstance(name, dns.Name) else name).lower()


def encodeQuery(questions: Sequence[tuple[bytes, int]]) -> bytes:
    """
    A multicast query (id 0, QM questions) for C{(name, type)} pairs.
    """
    m = dns.Message(id=0, maxSize=MAX_PACKET)
    m.queries = [dns.Query(name, qtype, dns.IN) for name, qtype in questions]
    return m.toStr()


def encodePeerQuery() -> bytes:
    """
    The spec's query: C{_p2p._udp.local PTR}.
    """
    return encodeQuery([(SERVICE, dns.PTR)])


def encodeNameQuery(name: str) -> bytes:
    """
    The question for Beam name C{name}: C{<name>._beam-name._udp.local TXT}.
    """
    return encodeQuery([(nameDomain(name), dns.TXT)])


def nameDomain(name: str) -> bytes:
    """
    C{<name>._beam-name._udp.local}; C{name} must be one DNS label.
    """
    raw = name.encode("ascii")
    if not raw or len(raw) > 63 or b"." in raw:
        raise MdnsError(f"not a name mDNS can carry: {name!r}")
    return raw + b"." + NAME_SERVICE


def _response(answers: list[dns.RRHeader], additional: list[dns.RRHeader], id: int = 0,
              queries: Sequence[dns.Query] = ()) -> bytes:
    m = dns.Message(id=id, answer=1, auth=True, maxSize=MAX_PACKET)
    m.queries = list(queries)
    m.answers = answers
    m.additional = additional
    return m.toStr()


def encodePeerResponse(peerName: str, addrs: Iterable[Multiaddr], *, ttl: int = TTL, id: int = 0,
                       queries: Sequence[dns.Query] = ()) -> bytes:
    """
    Our answer: C{_p2p._udp.local PTR <peerName>._p2p._udp.local}, with one
    additional C{TXT} record per address (C{dnsaddr=<addr>}, each address
    ending in C{/p2p/<id>}); addresses whose string would not fit a TXT
    string (255 bytes) are left out, as js does.
    """
    target = peerName.encode("ascii") + b"." + SERVICE
    answers = [dns.RRHeader(SERVICE, dns.PTR, dns.IN, ttl, dns.Record_PTR(target, ttl))]
    txts = []
    for addr in addrs:
        data = b"dnsaddr=" + str(addr).encode()
        if len(data) > _TXT_CHUNK:
            continue
        txts.append(dns.RRHeader(target, dns.TXT, dns.IN, ttl, dns.Record_TXT(data, ttl=ttl)))
    return _response(answers, txts, id=id, queries=queries)


def encodeNameResponse(name: str, record: bytes, *, ttl: int = TTL, id: int = 0,
                       queries: Sequence[dns.Query] = ()) -> bytes:
    """
    The answer for Beam name C{name}: one TXT record, L{NAME_MARKER} then
    C{record} in 255-byte pieces.
    """
    if len(record) > MAX_NAME_RECORD:
        raise MdnsError(f"a name record of {len(record)} bytes (limit {MAX_NAME_RECORD})")
    pieces = [record[i:i + _TXT_CHUNK] for i in range(0, len(record), _TXT_CHUNK)]
    rr = dns.RRHeader(nameDomain(name), dns.TXT, dns.IN, ttl, dns.Record_TXT(NAME_MARKER, *pieces, ttl=ttl))
    return _response([rr], [], id=id, queries=queries)


def _isQuery(message: dns.Message) -> bool:
    return not message.answer and message.opCode == dns.OP_QUERY


def isPeerQuery(message: dns.Message) -> bool:
    """
    Whether C{message} asks for C{_p2p._udp.local} (C{PTR} or C{ANY}).
    """
    if not _isQuery(message):
        return False
    return any(_lower(q.name) == SERVICE and q.type in (dns.PTR, dns.ALL_RECORDS) for q in message.queries)


def nameQuestions(message: dns.Message) -> list[str]:
    """
    The Beam names C{message} asks for (C{TXT} or C{ANY} questions in
    L{NAME_SERVICE}), each once.
    """
    if not _isQuery(message):
        return []
    out: list[str] = []
    suffix = b"." + NAME_SERVICE
    for q in message.queries:
        name = _lower(q.name)
        if q.type in (dns.TXT, dns.ALL_RECORDS) and name.endswith(suffix):
            label = name[:-len(suffix)]
            if label and b"." not in label:
                text = label.decode("ascii", "replace")
                if text not in out:
                    out.append(text)
    return out


@dataclass(frozen=True)
class Announcement:
    """
    One peer found in a response.

    @ivar peerName: the label it answered under (C{<peerName>._p2p._udp.local}).
    @ivar peer: its peer ID (from the C{/p2p/} of its addresses).
    @ivar addrs: its addresses, without C{/p2p/}, at most
        L{MAX_ADDRS_PER_PEER}.
    """

    peerName: str
    peer: PeerID
    addrs: tuple[Multiaddr, ...]


def peersInResponse(message: dns.Message) -> list[Announcement]:
    """
    The peers a response announces: each C{PTR} answer for
    L{SERVICE} names a peer; its C{TXT} records (in the answers, where js
    and go put them, or the additional records, where the spec does)
    carry its C{dnsaddr=} strings.  Addresses without C{/p2p/}, or naming
    another peer than the first one, are ignored; a peer with no usable
    address is left out.
    """
    if not message.answer:
        return []
    records = list(message.answers) + list(message.additional)
    targets: list[bytes] = []
    for rr in message.answers:
        if rr.type == dns.PTR and _lower(rr.name) == SERVICE and isinstance(rr.payload, dns.Record_PTR):
            target = _lower(rr.payload.name)
            if target.endswith(b"." + SERVICE) and target not in targets:
                targets.append(target)
    found: list[Announcement] = []
    for target in targets:
        label = target[:-len(SERVICE) - 1]
        peer: Optional[PeerID] = None
        addrs: list[Multiaddr] = []
        for rr in records:
            if rr.type != dns.TXT or _lower(rr.name) != target or not isinstance(rr.payload, dns.Record_TXT):
                continue
            for data in rr.payload.data:
                if not data.startswith(b"dnsaddr=") or len(addrs) >= MAX_ADDRS_PER_PEER:
                    continue
                try:
                    addr = Multiaddr.fromString(data[len(b"dnsaddr="):].decode("ascii"))
                    who = addr.peerID()
                except Exception:  # noqa: BLE001 - a stranger's junk, any error
                    continue
                if who is None:
                    continue
                if peer is None:
                    peer = who
                if who != peer:
                    continue
                bare = addr.withoutPeerID()
                if bare not in addrs:
                    addrs.append(bare)
        if peer is not None and addrs:
            found.append(Announcement(label.decode("ascii", "replace"), peer, tuple(addrs)))
    return found


def nameRecordsInResponse(message: dns.Message) -> list[tuple[str, bytes]]:
    """
    The C{(name, record bytes)} pairs a response carries (TXT records in
    L{NAME_SERVICE} whose first string is L{NAME_MARKER}); records over
    L{MAX_NAME_RECORD} bytes are ignored.
    """
    if not message.answer:
        return []
    out: list[tuple[str, bytes]] = []
    suffix = b"." + NAME_SERVICE
    for rr in list(message.answers) + list(message.additional):
        if rr.type != dns.TXT or not isinstance(rr.payload, dns.Record_TXT):
            continue
        name = _lower(rr.name)
        strings = rr.payload.data
        if not name.endswith(suffix) or not strings or strings[0] != NAME_MARKER:
            continue
        label = name[:-len(suffix)]
        record = b"".join(strings[1:])
        if not label or b"." in label or not record or len(record) > MAX_NAME_RECORD:
            continue
        out.append((label.decode("ascii", "replace"), record))
    return out


# -- limits --------------------------------------------------------------------


class TokenBucket:
    """
    C{rate} events per second, bursts of up to C{burst}, on an injected
    clock.
    """

    def __init__(self, clock: Any, rate: float, burst: float) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = clock.seconds()

    def take(self) -> bool:
        now = self.clock.seconds()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


# -- the service ---------------------------------------------------------------


class _MdnsProtocol(DatagramProtocol):
    noisy = False

    def __init__(self, service: MdnsService) -> None:
        self.service = service

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.service.datagramReceived(datagram, addr)


def _defaultInterfaces() -> list[str]:
    from beam.p2p.transport._netif import interfaceAddresses

    return [a for a in interfaceAddresses(socket.AF_INET) if not a.startswith("127.")]


@dataclass
class _Found:
    peerName: str
    addrs: tuple[Multiaddr, ...]
    seen: float
    firstSeen: float


class MdnsService(Service):
    """
    libp2p mDNS discovery and Beam names on the LAN; see the module
    docstring.

    @ivar peerName: our random label (C{<peerName>._p2p._udp.local}).
    @ivar found: discovered peers, least recently seen first (bounded).
    @ivar counters: what happened, for L{status}.
    """

    def __init__(
        self,
        reactor: Any,
        host: Any,
        *,
        enabled: bool = True,
        disabledReason: Optional[str] = None,
        interfaces: Optional[Sequence[str]] = None,
        queryInterval: float = QUERY_INTERVAL,
        firstQueryInterval: float = 1.0,
        port: int = MDNS_PORT,
        group: str = MDNS_GROUP,
        random: Callable[[int], bytes] = os.urandom,
        listen: Optional[Callable[[DatagramProtocol], Any]] = None,
        interfaceSource: Callable[[], list[str]] = _defaultInterfaces,
        maxPeers: int = MAX_PEERS,
        maxDials: int = MAX_DIALS,
    ) -> None:
        """
        @param interfaces: the IPv4 interface addresses to use; L{None}:
            every non-loopback one, asked of the kernel at each query
            round (so a new interface is picked up).  Loopback only when
            listed here (with multicast switched on for C{lo}).
        @param listen: a test seam: C{listen(protocol)} returns the
            multicast port; by default C{reactor.listenMulticast}.
        """
        self.reactor = reactor
        self.host = host
        self.enabled = enabled
        self.disabledReason = disabledReason
        self._fixedInterfaces = list(interfaces) if interfaces is not None else None
        self._interfaceSource = interfaceSource
        self.queryInterval = queryInterval
        self.firstQueryInterval = firstQueryInterval
        self.mdnsPort = port
        self.group = group
        self.random = random
        self._listen = listen
        self.maxPeers = maxPeers
        self.maxDials = maxDials
        self.peerName = randomPeerName(random)
        self.found: OrderedDict[PeerID, _Found] = OrderedDict()
        self.counters: dict[str, int] = {
            "queries_sent": 0, "answers_sent": 0, "packets_received": 0, "malformed": 0,
            "rate_limited": 0, "answers_suppressed": 0, "dials": 0, "dial_failures": 0,
            "names_answered": 0, "names_resolved": 0, "answers_held": 0,
        }
        self._port: Any = None
        self._joined: set[str] = set()
        self._queryCall: Any = None
        self._nextInterval = firstQueryInterval
        self._packets = TokenBucket(reactor, MAX_PACKETS_PER_SECOND, MAX_PACKETS_PER_SECOND)
        self._answers = TokenBucket(reactor, MAX_ANSWERS_PER_SECOND, MAX_ANSWERS_PER_SECOND)
        self._lastSent: dict[tuple[bytes, str], float] = {}
        self._held: dict[tuple[bytes, str], Any] = {}
        self._dialing: set[PeerID] = set()
        self._lastDial: OrderedDict[PeerID, float] = OrderedDict()
        self._nameProvider: Optional[Callable[[], dict[str, bytes]]] = None
        self._pendingNames: dict[str, list[tuple[Deferred[Optional[bytes]], Any]]] = {}
        self.startedAt: Optional[float] = None
        self.firstFound: Optional[float] = None
        self.error: Optional[str] = None
        self.idle: Optional[str] = None

    # -- lifecycle -------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if not self.enabled:
            return
        if self._fixedInterfaces is None and self._loopbackOnly():
            # A node bound to loopback alone chose to be local: telling
            # the LAN about it, or listening to the LAN, would undo that
            # (and test daemons stay off the machine's real networks).
            self.idle = "the node listens on loopback only"
            return
        protocol = _MdnsProtocol(self)
        try:
            if self._listen is not None:
                self._port = self._listen(protocol)
            else:
                self._port = self.reactor.listenMulticast(self.mdnsPort, protocol, maxPacketSize=MAX_PACKET + 1,
                                                          listenMultiple=True)
        except Exception as e:  # noqa: BLE001 - no multicast here: run without, say why
            self.error = f"cannot listen on UDP port {self.mdnsPort}: {e}"
            log.warn("mDNS off: {error}", error=self.error)
            return
        self.startedAt = self.reactor.seconds()
        self._joinInterfaces()
        self._query()
        self._announce()

    def stopService(self) -> Any:
        super().stopService()
        if self._queryCall is not None and self._queryCall.active():
            self._queryCall.cancel()
        self._queryCall = None
        for waiters in self._pendingNames.values():
            for d, call in waiters:
                if call.active():
                    call.cancel()
                d.callback(None)
        self._pendingNames.clear()
        for call in self._held.values():
            if call.active():
                call.cancel()
        self._held.clear()
        port, self._port = self._port, None
        self._joined.clear()
        if port is not None:
            return port.stopListening()
        return None

    def _loopbackOnly(self) -> bool:
        configured = getattr(self.host, "configuredListenAddrs", None) or self.host.listenAddrs
        listen = [Multiaddr(a) if isinstance(a, str) else a for a in configured]
        return bool(listen) and all(addrScope(a) == "loopback" for a in listen)

    def interfaces(self) -> list[str]:
        """
        The IPv4 interface addresses we send and listen on now.
        """
        if self._fixedInterfaces is not None:
            return list(self._fixedInterfaces)
        try:
            return self._interfaceSource()
        except Exception:  # noqa: BLE001 - never let enumeration stop discovery
            return []

    def _joinInterfaces(self) -> list[str]:
        interfaces = self.interfaces()
        for iface in interfaces:
            if iface in self._joined or self._port is None:
                continue
            self._joined.add(iface)
            try:
                d = self._port.joinGroup(self.group, iface)
            except Exception as e:  # noqa: BLE001
                log.debug("mDNS: cannot join {group} on {iface}: {e}", group=self.group, iface=iface, e=e)
                continue
            if isinstance(d, Deferred):
                d.addErrback(_joinFailed, iface)
        return interfaces

    # -- sending ---------------------------------------------------------

    def _send(self, data: bytes, interfaces: Optional[Sequence[str]] = None, to: Optional[tuple[str, int]] = None) -> None:
        if self._port is None:
            return
        dest = to or (self.group, self.mdnsPort)
        for iface in interfaces if interfaces is not None else self.interfaces():
            try:
                self._port.setOutgoingInterface(iface)
                self._port.write(data, dest)
            except Exception as e:  # noqa: BLE001 - one bad interface must not stop the others
                log.debug("mDNS: cannot send on {iface}: {e}", iface=iface, e=e)

    def _query(self) -> None:
        """
        Ask the LAN for peers now, then again after a pause that starts at
        C{firstQueryInterval} and doubles up to C{queryInterval}.
        """
        self._queryCall = None
        if self._port is None:
            return
        interfaces = self._joinInterfaces()
        self._send(encodePeerQuery(), interfaces)
        self.counters["queries_sent"] += 1
        delay = self._nextInterval
        self._nextInterval = min(self.queryInterval, self._nextInterval * 2)
        self._queryCall = self.reactor.callLater(delay, self._query)

    def _announce(self) -> None:
        """
        Tell the LAN we are here without being asked (RFC 6762 section 8.3),
        so peers already running find us at once.
        """
        for iface in self.interfaces():
            self._answerPeers(iface, None)

    def _addrsFor(self, source: Optional[str]) -> list[Multiaddr]:
        """
        Our addresses for a LAN asker at C{source}: direct IP addresses
        (no relay, no onion), loopback only to an asker on loopback.
        """
        out: list[Multiaddr] = []
        for addr in self.host.advertisedAddrs():
            bare = addr.withoutPeerID()
            comps = bare.components()
            if not comps or comps[0][0] not in ("ip4", "ip6") or "p2p-circuit" in bare.protocols():
                continue
            scope = addrScope(bare)
            if scope == "loopback" and not (source is not None and source.startswith("127.")):
                continue
            if scope in ("invalid", "other"):
                continue
            full = bare.withPeerID(self.host.peerID)
            if full not in out:
                out.append(full)
        return out

    def _mayAnswer(self, key: bytes, iface: str, later: Optional[Callable[[], None]] = None) -> bool:
        """
        RFC 6762 section 6: a record is multicast at most once a second
        per interface; and never more than L{MAX_ANSWERS_PER_SECOND}
        answers in all.

        A question that comes within that second is answered when it is
        over (C{later()} is called then; one held answer per record and
        interface), not dropped: the rule assumes the asker heard our last
        answer, but a node that has just started has not, and
        C{@libp2p/mdns} asks again only every 10 s.
        """
        now = self.reactor.seconds()
        last = self._lastSent.get((key, iface))
        if last is not None and now - last < RECORD_INTERVAL:
            self.counters["answers_suppressed"] += 1
            if later is not None and (key, iface) not in self._held:
                # a millisecond past the second, so that float rounding
                # never finds it still inside
                self._held[key, iface] = self.reactor.callLater(
                    last + RECORD_INTERVAL - now + 0.001, self._answerHeld, key, iface, later)
            return False
        if not self._answers.take():
            self.counters["rate_limited"] += 1
            return False
        if len(self._lastSent) > 1024:
            self._lastSent = {k: t for k, t in self._lastSent.items() if now - t < RECORD_INTERVAL}
        self._lastSent[key, iface] = now
        return True

    def _answerHeld(self, key: bytes, iface: str, answer: Callable[[], None]) -> None:
        self._held.pop((key, iface), None)
        if self._port is not None:
            self.counters["answers_held"] += 1
            answer()

    def _answerPeers(self, iface: str, source: Optional[str]) -> None:
        addrs = self._addrsFor(source)
        if not addrs or not self._mayAnswer(SERVICE, iface, lambda: self._answerPeers(iface, source)):
            return
        self._send(encodePeerResponse(self.peerName, addrs), [iface])
        self.counters["answers_sent"] += 1

    # -- receiving -------------------------------------------------------

    def _arrivalInterface(self, source: str) -> Optional[str]:
        """
        The interface a datagram from C{source} most likely came in on:
        the one sharing the longest address prefix with it.  Without
        C{IP_PKTINFO} the socket does not say; on a LAN the sender's
        address is in our interface's subnet.
        """
        interfaces = [i for i in self.interfaces() if i in self._joined] or self.interfaces()
        if not interfaces:
            return None
        try:
            src = struct.unpack("!I", socket.inet_aton(source))[0]
        except OSError:
            return interfaces[0]

        def common(iface: str) -> int:
            x = src ^ struct.unpack("!I", socket.inet_aton(iface))[0]
            return 32 - x.bit_length()

        return max(interfaces, key=common)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self._port is None:
            return
        if not self._packets.take():
            self.counters["rate_limited"] += 1
            return
        self.counters["packets_received"] += 1
        try:
            message = decodePacket(data)
        except MalformedPacket as e:
            self.counters["malformed"] += 1
            log.debug("mDNS: dropped a packet from {addr}: {e}", addr=addr, e=e)
            return
        source = str(addr[0]) if addr else "0.0.0.0"
        sourcePort = int(addr[1]) if addr and len(addr) > 1 else self.mdnsPort
        if message.answer:
            self._response(message, source)
        else:
            self._question(message, source, sourcePort)

    def _question(self, message: dns.Message, source: str, sourcePort: int) -> None:
        iface = self._arrivalInterface(source)
        if iface is None:
            return
        legacy = sourcePort != self.mdnsPort
        if isPeerQuery(message):
            if legacy:
                addrs = self._addrsFor(source)
                if addrs and self._answers.take():
                    self._send(encodePeerResponse(self.peerName, addrs, id=message.id, queries=message.queries),
                               [iface], to=(source, sourcePort))
                    self.counters["answers_sent"] += 1
            else:
                self._answerPeers(iface, source)
        names = nameQuestions(message)
        if names and self._nameProvider is not None:
            try:
                ours = self._nameProvider()
            except Exception:  # noqa: BLE001 - the provider's bug must not stop mDNS
                log.failure("mDNS: the name records provider failed")
                return
            for name in names[:8]:
                record = ours.get(name)
                if record is None or len(record) > MAX_NAME_RECORD:
                    continue
                key = b"name:" + name.encode()
                if legacy:
                    if not self._answers.take():
                        continue
                    self._send(encodeNameResponse(name, record, id=message.id, queries=message.queries),
                               [iface], to=(source, sourcePort))
                elif not self._mayAnswer(key, iface, partial(self._answerName, name, iface)):
                    continue
                else:
                    self._send(encodeNameResponse(name, record), [iface])
                self.counters["names_answered"] += 1

    def _answerName(self, name: str, iface: str) -> None:
        """
        Multicast the answer for our name C{name} held back by the
        once-a-second rule, with the record the provider gives now.
        """
        if self._nameProvider is None:
            return
        try:
            record = self._nameProvider().get(name)
        except Exception:  # noqa: BLE001 - the provider's bug must not stop mDNS
            log.failure("mDNS: the name records provider failed")
            return
        if record is None or len(record) > MAX_NAME_RECORD:
            return
        if self._mayAnswer(b"name:" + name.encode(), iface, lambda: self._answerName(name, iface)):
            self._send(encodeNameResponse(name, record), [iface])
            self.counters["names_answered"] += 1

    def _response(self, message: dns.Message, source: str) -> None:
        for name, record in nameRecordsInResponse(message):
            waiters = self._pendingNames.pop(name, None)
            if not waiters:
                continue
            self.counters["names_resolved"] += 1
            for d, call in waiters:
                if call.active():
                    call.cancel()
                d.callback(record)
        via = Multiaddr.fromString(f"/ip4/{source}/udp/{self.mdnsPort}") if _isIPv4(source) else None
        for ann in peersInResponse(message):
            if ann.peerName == self.peerName or ann.peer == self.host.peerID:
                continue
            addrs = reachableFrom(ann.addrs, via)
            if not addrs:
                continue
            self._remember(ann, tuple(addrs))

    def _remember(self, ann: Announcement, addrs: tuple[Multiaddr, ...]) -> None:
        now = self.reactor.seconds()
        old = self.found.pop(ann.peer, None)
        self.found[ann.peer] = _Found(ann.peerName, addrs, now, old.firstSeen if old else now)
        while len(self.found) > self.maxPeers:
            self.found.popitem(last=False)
        if old is None and self.firstFound is None:
            self.firstFound = now
        try:
            self.host.peerStore.addAddrs(ann.peer, addrs, "mdns", ADDR_TTL)
        except Exception:  # noqa: BLE001
            log.failure("mDNS: peerstore refused {peer}", peer=ann.peer)
            return
        self._maybeDial(ann.peer)

    def _maybeDial(self, peer: PeerID) -> None:
        if peer in self._dialing or len(self._dialing) >= self.maxDials:
            return
        if self.host.connectionTo(peer) is not None:
            return
        now = self.reactor.seconds()
        last = self._lastDial.get(peer)
        if last is not None and now - last < REDIAL_AFTER:
            return
        self._lastDial.pop(peer, None)
        self._lastDial[peer] = now
        while len(self._lastDial) > self.maxPeers:
            self._lastDial.popitem(last=False)
        self._dialing.add(peer)
        self.counters["dials"] += 1
        d = self.host.connect(peer)

        def done(result: Any) -> None:
            self._dialing.discard(peer)
            if hasattr(result, "getErrorMessage"):
                self.counters["dial_failures"] += 1
                log.debug("mDNS: dialling {peer} failed: {e}", peer=peer, e=result.getErrorMessage())

        d.addBoth(done)

    # -- names -----------------------------------------------------------

    def setNameRecords(self, provider: Callable[[], dict[str, bytes]]) -> None:
        """
        Answer the LAN's questions for our names: C{provider()} returns our
        names and their signed record bytes, exactly as published to the
        DHT; asked at each question, so it is always current.
        """
        self._nameProvider = provider

    def resolveName(self, name: str, timeout: float = 1.0) -> Deferred[Optional[bytes]]:
        """
        Ask the LAN for C{name}'s record.

        @return: a Deferred firing with the first record bytes any node
            answered (unvalidated: the caller checks signature, owner and
            expiry), or L{None} after C{timeout} seconds, when mDNS is
            off, or when too many questions are already waiting.
        """
        d: Deferred[Optional[bytes]] = Deferred()
        if self._port is None:
            d.callback(None)
            return d
        try:
            question = encodeNameQuery(name)
        except MdnsError:
            d.callback(None)
            return d
        waiting = sum(len(w) for w in self._pendingNames.values())
        if waiting >= MAX_PENDING_NAMES:
            d.callback(None)
            return d

        def expire() -> None:
            waiters = self._pendingNames.get(name, [])
            waiters[:] = [(w, c) for w, c in waiters if w is not d]
            if not waiters:
                self._pendingNames.pop(name, None)
            d.callback(None)

        call = self.reactor.callLater(timeout, expire)
        self._pendingNames.setdefault(name, []).append((d, call))
        self._send(question)
        self.counters["queries_sent"] += 1
        return d

    # -- status ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """
        What C{beam status} shows: whether mDNS runs, where, and what it
        found.
        """
        if not self.enabled:
            out: dict[str, Any] = {"enabled": False}
            if self.disabledReason:
                out["reason"] = self.disabledReason
            return out
        now = self.reactor.seconds()
        return {
            "enabled": True,
            "listening": self._port is not None,
            "error": self.error,
            "idle": self.idle,
            "group": f"{self.group}:{self.mdnsPort}",
            "interfaces": sorted(self._joined),
            "peer_name": self.peerName,
            "peers": len(self.found),
            "found": [
                {"peer": str(peer), "addrs": [str(a) for a in f.addrs], "seen_ago": round(now - f.seen, 3),
                 "first_seen": f.firstSeen}
                for peer, f in list(self.found.items())[-16:]
            ],
            "started_at": self.startedAt,
            "first_found_after": (round(self.firstFound - self.startedAt, 3)
                                  if self.firstFound is not None and self.startedAt is not None else None),
            "names_answered_for": self._nameProvider is not None,
            **self.counters,
        }


def _joinFailed(failure: Failure, iface: str) -> None:
    log.debug("mDNS: cannot join the group on {iface}: {e}", iface=iface, e=failure.getErrorMessage())


def _isIPv4(text: str) -> bool:
    try:
        socket.inet_aton(text)
    except OSError:
        return False
    return text.count(".") == 3


def makeMdns(context: Any) -> MdnsService:
    """
    The daemon's C{"mdns"} service: on unless C{mdns = false}, and always
    off in Tor mode C{"always"} (an mDNS answer tells the LAN our IP
    addresses, which that mode promises never to reveal).
    """
    config = context.config
    enabled = bool(getattr(config, "mdns", True))
    reason = None if enabled else "mdns = false"
    tor = getattr(config, "tor", None)
    if enabled and getattr(tor, "mode", "off") == "always":
        enabled, reason = False, "tor mode always"
    return MdnsService(context.reactor, context.host, enabled=enabled, disabledReason=reason,
                       random=context.random, **context.optionsFor("mdns"))

