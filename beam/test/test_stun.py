"""
Tests for L{beam.p2p.nat}: the STUN codec, the client's transactions and
NAT behaviour discovery (on a simulated network with simulated NATs, with
a L{Clock}), the server, and real loopback runs against our own server
and against coturn.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _realReactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from beam.p2p.nat import NatBehaviour
from beam.p2p.nat.stun import (
    CHANGE_REQUEST,
    MAX_MESSAGE,
    ErrorCode,
    HostPort,
    InvalidStunMessage,
    Message,
    MessageClass,
    RateLimitedLog,
    decode,
    encode,
    looksLikeStun,
    sameAddress,
)
from beam.p2p.nat.stunclient import (
    StunClientProtocol,
    StunError,
    StunErrorResponse,
    StunTimeout,
    discover,
    parseServer,
)
from beam.p2p.nat.stunserver import StunServer

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")


def attribute(kind: int, value: bytes) -> bytes:
    """
    One raw attribute, padded.
    """
    return struct.pack("!HH", kind, len(value)) + value + b"\x00" * (-len(value) % 4)


def raw(kind: int, attributes: bytes, tid: bytes = TID) -> bytes:
    """
    A raw message of type C{kind} around C{attributes}.
    """
    return struct.pack("!HHI", kind, len(attributes), 0x2112A442) + tid + attributes


# -- codec ------------------------------------------------------------------------


class CodecTests(SynchronousTestCase):
    """
    L{encode} and L{decode}.
    """

    def test_xorMappedAddressVectors(self) -> None:
        """
        XOR-MAPPED-ADDRESS obfuscates as RFC 5769's test vectors show:
        192.0.2.1:32853 and 2001:db8:1234:5678:11:2233:4455:6677 with
        transaction ID b7e7a701bc34d686fa87dfae.
        """
        data = encode(Message(MessageClass.SUCCESS, TID, xorMappedAddress=("192.0.2.1", 32853), fingerprint=False))
        self.assertEqual(data[20:], attribute(0x0020, bytes.fromhex("0001a147e112a643")))
        v6 = "2001:db8:1234:5678:11:2233:4455:6677"
        data = encode(Message(MessageClass.SUCCESS, TID, xorMappedAddress=(v6, 32853), fingerprint=False))
        self.assertEqual(data[20:], attribute(0x0020, bytes.fromhex("0002a1470113a9faa5d3f179bc25f4b5bed2b9d9")))
        self.assertEqual(decode(data).reflexive, (v6, 32853))

    def test_header(self) -> None:
        """
        A binding request's type is 0x0001, a success response 0x0101, an
        error response 0x0111; the cookie follows the length.
        """
        for cls, kind in [(MessageClass.REQUEST, 1), (MessageClass.SUCCESS, 0x101), (MessageClass.ERROR, 0x111)]:
            data = encode(Message(cls, TID, fingerprint=False))
            self.assertEqual(data, struct.pack("!HHI", kind, 0, 0x2112A442) + TID)
            self.assertEqual(decode(data).messageClass, cls)

    def test_roundTrip(self) -> None:
        """
        Every understood attribute survives encoding and decoding.
        """
        message = Message(
            MessageClass.SUCCESS,
            TID,
            mappedAddress=("10.0.0.1", 1),
            xorMappedAddress=("203.0.113.5", 40000),
            responseOrigin=("192.0.2.1", 3478),
            otherAddress=("192.0.2.2", 3479),
            software="beam",
            errorCode=ErrorCode(420, "Unknown Attribute"),
            unknownAttributes=(0x7777, 3),
            changeIP=True,
            changeRequest=True,
        )
        self.assertEqual(decode(encode(message)), message)

    def test_fingerprint(self) -> None:
        """
        FINGERPRINT is the CRC-32 of what precedes it XOR 0x5354554e, and
        a message whose fingerprint does not match is refused.
        """
        import zlib

        data = encode(Message(MessageClass.REQUEST, TID))
        self.assertEqual(data[-8:-4], b"\x80\x28\x00\x04")
        (crc,) = struct.unpack("!I", data[-4:])
        self.assertEqual(crc, zlib.crc32(data[:-8]) ^ 0x5354554E)
        self.assertTrue(decode(data).fingerprint)
        broken = data[:-1] + bytes([data[-1] ^ 1])
        self.assertRaises(InvalidStunMessage, decode, broken)

    def test_fingerprintLast(self) -> None:
        """
        An attribute after FINGERPRINT makes the message invalid.
        """
        data = encode(Message(MessageClass.REQUEST, TID))
        extra = attribute(0x8022, b"x")
        kind, length = struct.unpack("!HH", data[:4])
        bad = struct.pack("!HH", kind, length + len(extra)) + data[4:] + extra
        self.assertRaises(InvalidStunMessage, decode, bad)

    def test_strictHeader(self) -> None:
        """
        No cookie, top bits set, a length field that does not match, a
        length that is not a multiple of 4, or too short: all refused.
        """
        good = encode(Message(MessageClass.REQUEST, TID, fingerprint=False))
        cases = [
            good[:4] + b"\x00\x00\x00\x00" + good[8:],
            b"\x40" + good[1:],
            good + b"\x00\x00\x00\x00",
            good[:19],
            raw(1, b"\x80\x22\x00\x01x\x00\x00")[:-1],
        ]
        for data in cases:
            self.assertRaises(InvalidStunMessage, decode, data)

    def test_tooLarge(self) -> None:
        """
        Datagrams over 1,500 bytes are refused whatever they hold.
        """
        body = attribute(0x8777, b"\x00" * (MAX_MESSAGE - 20))
        self.assertRaises(InvalidStunMessage, decode, raw(1, body))

    def test_badAttributes(self) -> None:
        """
        Attributes that overrun the message, have the wrong size for their
        type, or hold invalid values are refused.
        """
        cases = [
            attribute(0x0020, b"\x00\x01\x00\x01\x00\x00\x00"),
            attribute(0x0001, b"\x00\x03\x00\x01" + b"\x00" * 4),
            attribute(0x0001, b"\x00\x02\x00\x01" + b"\x00" * 4),
            attribute(0x0003, b"\x00\x00"),
            attribute(0x0009, b"\x00\x00\x07\x00"),
            attribute(0x0009, b"\x00\x00\x04\x64"),
            attribute(0x000A, b"\x00\x01\x00"),
            attribute(0x8022, b"\xff\xfe"),
            attribute(0x8022, b"a" * 129),
            struct.pack("!HH", 0x8022, 8) + b"abcd",
        ]
        for attrs in cases:
            self.assertRaises(InvalidStunMessage, decode, raw(0x101, attrs))

    def test_unknownAttributes(self) -> None:
        """
        Unknown comprehension-required attributes are listed once each;
        unknown comprehension-optional ones are ignored; of duplicated
        attributes the first counts.
        """
        body = (
            attribute(0x0777, b"abc")
            + attribute(0x8777, b"")
            + attribute(0x8022, b"first")
            + attribute(0x8022, b"second")
            + attribute(0x0777, b"")
            + attribute(0x0008, b"\x00" * 20)
        )
        message = decode(raw(0x101, body))
        self.assertEqual(message.unknownRequired, (0x0777, 0x0008))
        self.assertEqual(message.software, "first")

    def test_rfc3489Attributes(self) -> None:
        """
        CHANGED-ADDRESS stands in for OTHER-ADDRESS and MAPPED-ADDRESS for
        XOR-MAPPED-ADDRESS, so older servers' answers are usable.
        """
        body = attribute(0x0001, b"\x00\x01\x0d\x96\xc0\x00\x02\x01") + attribute(
            0x0005, b"\x00\x01\x0d\x97\xc0\x00\x02\x02"
        )
        message = decode(raw(0x101, body))
        self.assertEqual(message.reflexive, ("192.0.2.1", 3478))
        self.assertEqual(message.alternate, ("192.0.2.2", 3479))
        self.assertEqual(message.unknownRequired, ())

    def test_encodeLimits(self) -> None:
        """
        Values that cannot be encoded raise L{ValueError}.
        """
        self.assertRaises(ValueError, encode, Message(errorCode=ErrorCode(200)))
        self.assertRaises(ValueError, encode, Message(software="x" * 129))
        self.assertRaises(ValueError, encode, Message(mappedAddress=("nope", 1)))
        self.assertRaises(ValueError, encode, Message(method=0x1000))
        self.assertRaises(ValueError, Message, transactionID=b"short")

    def test_transactionIDs(self) -> None:
        """
        Every message gets its own random 96-bit transaction ID.
        """
        ids = {Message().transactionID for _ in range(100)}
        self.assertEqual(len(ids), 100)
        self.assertEqual({len(i) for i in ids}, {12})

    def test_looksLikeStun(self) -> None:
        """
        L{looksLikeStun} tells STUN from other traffic by the cookie.
        """
        self.assertTrue(looksLikeStun(encode(Message())))
        self.assertFalse(looksLikeStun(b"GET / HTTP/1.1\r\n\r\n12345"))

    def test_sameAddress(self) -> None:
        """
        Addresses compare by value, however the IP is spelled.
        """
        self.assertTrue(sameAddress(("::1", 5), ("0::1", 5)))
        self.assertFalse(sameAddress(("::1", 5), ("::1", 6)))


messages = st.builds(
    Message,
    messageClass=st.sampled_from(list(MessageClass)),
    transactionID=st.binary(min_size=12, max_size=12),
    mappedAddress=st.none() | st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)),
    xorMappedAddress=st.none() | st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)),
    otherAddress=st.none() | st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
    software=st.none() | st.text(max_size=20),
    errorCode=st.none() | st.builds(ErrorCode, st.integers(300, 699), st.text(max_size=30)),
    unknownAttributes=st.lists(st.integers(0, 0xFFFF), max_size=5).map(tuple),
    fingerprint=st.booleans(),
)


class FuzzTests(SynchronousTestCase):
    """
    The decoder on arbitrary and mutated input.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=1600))
    def test_arbitrary(self, data: bytes) -> None:
        """
        Any bytes either decode or raise L{InvalidStunMessage}.
        """
        try:
            decode(data)
        except InvalidStunMessage:
            pass

    @settings(max_examples=300, deadline=None)
    @given(messages, st.data())
    def test_mutated(self, message: Message, data: Any) -> None:
        """
        A valid message with bytes flipped, cut or appended either decodes
        or raises L{InvalidStunMessage}.
        """
        wire = bytearray(encode(message))
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(wire) - 1))
            wire[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(wire)))
        mutated = bytes(wire[:cut]) + data.draw(st.binary(max_size=8))
        try:
            decode(mutated)
        except InvalidStunMessage:
            pass

    @settings(max_examples=200, deadline=None)
    @given(messages)
    def test_roundTrip(self, message: Message) -> None:
        """
        What L{encode} writes, L{decode} reads back the same.
        """
        self.assertEqual(decode(encode(message)), message)


# -- a simulated network ---------------------------------------------------------------


class FakeNat:
    """
    A NAT with one external IP and the given mapping and filtering
    behaviour: C{"EI"}, C{"AD"} or C{"APD"}.
    """

    def __init__(self, external: str, mapping: str, filtering: str) -> None:
        self.external = external
        self.mapping = mapping
        self.filtering = filtering
        self._mappings: dict[tuple[Any, ...], int] = {}
        self._internal: dict[int, HostPort] = {}
        self._sent: set[tuple[int, HostPort]] = set()
        self._nextPort = 20000

    def outbound(self, source: HostPort, destination: HostPort) -> HostPort:
        """
        Translate an outgoing datagram's source; remember where it went.
        """
        key: tuple[Any, ...] = {
            "EI": (source,),
            "AD": (source, destination[0]),
            "APD": (source, destination),
        }[self.mapping]
        if key not in self._mappings:
            self._nextPort += 7
            self._mappings[key] = self._nextPort
            self._internal[self._nextPort] = source
        port = self._mappings[key]
        self._sent.add((port, destination))
        return self.external, port

    def inbound(self, source: HostPort, port: int) -> Optional[HostPort]:
        """
        The inside address an incoming datagram goes to, or L{None} when
        the filter drops it.
        """
        internal = self._internal.get(port)
        if internal is None:
            return None
        if self.filtering == "AD" and not any(p == port and d[0] == source[0] for p, d in self._sent):
            return None
        if self.filtering == "APD" and (port, source) not in self._sent:
            return None
        return internal


class FakeNet:
    """
    Datagrams between fake sockets, through NATs, with a small latency on
    a L{Clock}.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.endpoints: dict[HostPort, DatagramProtocol] = {}
        self.natFor: dict[str, FakeNat] = {}
        self.natAt: dict[str, FakeNat] = {}
        self.log: list[tuple[HostPort, HostPort]] = []

    def addNat(self, inside: str, nat: FakeNat) -> None:
        """
        Put C{nat} in front of the host at C{inside}.
        """
        self.natFor[inside] = nat
        self.natAt[nat.external] = nat

    def send(self, source: HostPort, data: bytes, destination: HostPort) -> None:
        """
        Send one datagram.
        """
        nat = self.natFor.get(source[0])
        if nat is not None:
            source = nat.outbound(source, destination)
        self.log.append((source, destination))
        self.clock.callLater(0.01, self._deliver, source, data, destination)

    def _deliver(self, source: HostPort, data: bytes, destination: HostPort) -> None:
        nat = self.natAt.get(destination[0])
        if nat is not None:
            inside = nat.inbound(source, destination[1])
            if inside is None:
                return
            destination = inside
        protocol = self.endpoints.get(destination)
        if protocol is not None:
            protocol.datagramReceived(data, source)


class FakeUDPPort:
    """
    A fake bound UDP socket: transport and listening port in one.
    """

    def __init__(self, net: FakeNet, address: HostPort, protocol: DatagramProtocol) -> None:
        self.net = net
        self.address = address
        self.protocol = protocol

    def write(self, data: bytes, addr: HostPort) -> None:
        """
        Send C{data} to C{addr}.
        """
        self.net.send(self.address, data, addr)

    def getHost(self) -> IPv4Address:
        """
        The bound address.
        """
        return IPv4Address("UDP", *self.address)

    def stopListening(self) -> None:
        """
        Unbind.
        """
        del self.net.endpoints[self.address]
        self.protocol.doStop()


class FakeUDPReactor(Clock):
    """
    A L{Clock} whose C{listenUDP} binds on a L{FakeNet}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = FakeNet(self)
        self._nextPort = 40000

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUDPPort:
        """
        Bind C{protocol} on the fake network.
        """
        if port == 0:
            self._nextPort += 1
            port = self._nextPort
        address = (interface, port)
        assert address not in self.net.endpoints
        listening = FakeUDPPort(self.net, address, protocol)
        self.net.endpoints[address] = protocol
        protocol.makeConnection(listening)  # type: ignore[arg-type]
        return listening


CLIENT = "198.51.100.2"
SERVER1 = "203.0.113.10"
SERVER2 = "203.0.113.11"
OTHER_SERVER = "203.0.113.20"


class DiscoveryTests(SynchronousTestCase):
    """
    L{discover} on a simulated network, behind each kind of NAT.
    """

    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.server = StunServer(self.reactor, SERVER1, 3478, SERVER2, 3479)
        self.server.startService()

    def classify(
        self, nat: Optional[tuple[str, str]], servers: Optional[list[HostPort]] = None, **kw: Any
    ) -> NatBehaviour:
        """
        Run discovery from C{CLIENT}, behind a NAT of (mapping, filtering)
        kinds or none, to completion on the clock.
        """
        if nat is not None:
            self.reactor.net.addNat(CLIENT, FakeNat("203.0.113.99", *nat))
        d = discover(self.reactor, servers or [self.server.primary], interface=CLIENT, rto=0.5, rc=3, rm=4, **kw)
        self.reactor.pump([0.01] * 2000)
        return self.successResultOf(d)

    def test_noNat(self) -> None:
        """
        Without a NAT the server sees our own address: no mapping, and
        the open filter makes the strategy direct.
        """
        result = self.classify(None)
        self.assertEqual(
            (result.mapping, result.filtering, result.strategy), ("none", "endpoint-independent", "direct")
        )
        self.assertEqual(result.publicAddr, (CLIENT, 40001))
        self.assertEqual(result.server, (SERVER1, 3478))

    def test_fullCone(self) -> None:
        """
        Endpoint-independent mapping and filtering: direct.
        """
        result = self.classify(("EI", "EI"))
        self.assertEqual(
            (result.mapping, result.filtering, result.strategy),
            ("endpoint-independent", "endpoint-independent", "direct"),
        )
        self.assertEqual(result.publicAddr, ("203.0.113.99", 20007))

    def test_restrictedCone(self) -> None:
        """
        Endpoint-independent mapping, address-dependent filtering: punch.
        """
        result = self.classify(("EI", "AD"))
        self.assertEqual(
            (result.mapping, result.filtering, result.strategy), ("endpoint-independent", "address-dependent", "punch")
        )

    def test_portRestricted(self) -> None:
        """
        Endpoint-independent mapping, address-and-port-dependent
        filtering (Linux MASQUERADE): punch.
        """
        result = self.classify(("EI", "APD"))
        self.assertEqual(
            (result.mapping, result.filtering, result.strategy),
            ("endpoint-independent", "address-and-port-dependent", "punch"),
        )

    def test_addressDependentMapping(self) -> None:
        """
        A mapping per destination IP: relay.
        """
        result = self.classify(("AD", "APD"))
        self.assertEqual((result.mapping, result.strategy), ("address-dependent", "relay"))

    def test_symmetric(self) -> None:
        """
        A mapping per destination IP and port (symmetric NAT): relay.
        """
        result = self.classify(("APD", "APD"))
        self.assertEqual(
            (result.mapping, result.filtering, result.strategy),
            ("address-and-port-dependent", "address-and-port-dependent", "relay"),
        )

    def test_filteringBeforeMapping(self) -> None:
        """
        Nothing is sent to the alternate address before both filtering
        requests are over: a packet sent there first would open the filter
        being measured.
        """
        self.classify(("EI", "APD"))
        destinations = [d for s, d in self.reactor.net.log if s[0] == "203.0.113.99"]
        firstToOther = next(i for i, d in enumerate(destinations) if d[0] == SERVER2)
        # The filtering requests were retransmitted rc = 3 times each.
        self.assertEqual(destinations[:firstToOther].count((SERVER1, 3478)), 7)

    def test_plainServers(self) -> None:
        """
        Without RFC 5780 servers, two servers at different IPs tell an
        endpoint-independent mapping from a dependent one; filtering stays
        unknown.
        """
        plain1 = StunServer(self.reactor, "203.0.113.30", 3478)
        plain2 = StunServer(self.reactor, "203.0.113.31", 3478)
        plain1.startService()
        plain2.startService()
        result = self.classify(("EI", "APD"), [plain1.primary, plain2.primary])
        self.assertEqual(
            (result.mapping, result.filtering, result.strategy), ("endpoint-independent", "unknown", "punch")
        )

    def test_plainServersSymmetric(self) -> None:
        """
        Two plain servers that see different mappings mean a dependent
        mapping: relay.
        """
        plain1 = StunServer(self.reactor, "203.0.113.30", 3478)
        plain2 = StunServer(self.reactor, "203.0.113.31", 3478)
        plain1.startService()
        plain2.startService()
        result = self.classify(("APD", "APD"), [plain1.primary, plain2.primary])
        self.assertEqual((result.mapping, result.strategy), ("dependent", "relay"))

    def test_prefersRfc5780Server(self) -> None:
        """
        A plain server first in the list is passed over for the RFC 5780
        one after it.
        """
        plain = StunServer(self.reactor, "203.0.113.30", 3478)
        plain.startService()
        result = self.classify(("EI", "EI"), [plain.primary, self.server.primary])
        self.assertEqual(result.server, self.server.primary)
        self.assertEqual(result.filtering, "endpoint-independent")

    def test_deadServerSkipped(self) -> None:
        """
        A server that never answers does not stop discovery with others.
        """
        result = self.classify(("EI", "EI"), [("203.0.113.77", 3478), self.server.primary])
        self.assertEqual(result.mapping, "endpoint-independent")

    def test_nobodyAnswers(self) -> None:
        """
        When no server answers, discovery fails with L{StunTimeout} after
        the retransmissions, and the socket is closed.
        """
        d = discover(self.reactor, [("203.0.113.77", 3478), ("203.0.113.78", 3478)], interface=CLIENT, rc=2, rm=2)
        self.reactor.pump([0.1] * 100)
        self.assertEqual(str(self.failureResultOf(d, StunTimeout).value), "no STUN server answered")
        self.assertNotIn((CLIENT, 40001), self.reactor.net.endpoints)


class StrategyTests(SynchronousTestCase):
    """
    L{NatBehaviour.strategy}.
    """

    def test_table(self) -> None:
        """
        Direct needs a stable mapping and an open filter; punch a stable
        mapping; anything else relays.
        """
        cases = [
            ("none", "endpoint-independent", "direct"),
            ("endpoint-independent", "endpoint-independent", "direct"),
            ("none", "address-and-port-dependent", "punch"),
            ("endpoint-independent", "unknown", "punch"),
            ("address-dependent", "endpoint-independent", "relay"),
            ("address-and-port-dependent", "address-and-port-dependent", "relay"),
            ("dependent", "unknown", "relay"),
            ("unknown", "unknown", "relay"),
        ]
        for mapping, filtering, strategy in cases:
            self.assertEqual(NatBehaviour(mapping, filtering, None).strategy, strategy)  # type: ignore[arg-type]

    def test_json(self) -> None:
        """
        C{toJSON} gives plain values.
        """
        self.assertEqual(
            NatBehaviour("none", "unknown", ("192.0.2.1", 5), ("192.0.2.9", 3478)).toJSON(),
            {
                "mapping": "none",
                "filtering": "unknown",
                "publicAddr": ["192.0.2.1", 5],
                "server": ["192.0.2.9", 3478],
                "strategy": "punch",
            },
        )


# -- the client's transactions ---------------------------------------------------------


class RecordingTransport:
    """
    A datagram transport that records what is written, with the time.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.written: list[tuple[float, bytes, HostPort]] = []

    def write(self, data: bytes, addr: HostPort) -> None:
        """
        Record one datagram.
        """
        self.written.append((self.clock.seconds(), data, addr))


SERVER = ("192.0.2.1", 3478)


class ClientTests(SynchronousTestCase):
    """
    L{StunClientProtocol}: retransmission, matching, failures.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = StunClientProtocol(self.clock)
        self.transport = RecordingTransport(self.clock)
        self.client.makeConnection(self.transport)  # type: ignore[arg-type]

    def respond(self, source: HostPort = SERVER, **fields: Any) -> None:
        """
        Answer the last request from C{source}.
        """
        request = decode(self.transport.written[-1][1])
        fields.setdefault("messageClass", MessageClass.SUCCESS)
        fields.setdefault("xorMappedAddress", ("203.0.113.5", 1234))
        self.client.datagramReceived(encode(Message(transactionID=request.transactionID, **fields)), source)

    def test_retransmissionSchedule(self) -> None:
        """
        With RFC 8489's defaults the request goes out at 0, 0.5, 1.5, 3.5,
        7.5, 15.5 and 31.5 s and the transaction fails at 39.5 s.
        """
        d = self.client.request(SERVER)
        self.clock.pump([0.25] * 157)
        self.assertNoResult(d)
        self.clock.advance(0.25)
        self.failureResultOf(d, StunTimeout)
        self.assertEqual([t for t, _, _ in self.transport.written], [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        self.assertEqual(len({data for _, data, _ in self.transport.written}), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_configurableSchedule(self) -> None:
        """
        RTO, Rc and Rm are parameters.
        """
        client = StunClientProtocol(self.clock, rto=0.125, rc=3, rm=2)
        transport = RecordingTransport(self.clock)
        client.makeConnection(transport)  # type: ignore[arg-type]
        d = client.request(SERVER)
        self.clock.pump([0.125] * 4)
        self.assertNoResult(d)
        self.clock.advance(0.125)
        self.failureResultOf(d, StunTimeout)
        self.assertEqual([t for t, _, _ in transport.written], [0, 0.125, 0.375])

    def test_response(self) -> None:
        """
        A success response from the server fires the Deferred and stops
        the retransmissions.
        """
        d = self.client.request(SERVER)
        self.respond()
        response = self.successResultOf(d)
        self.assertEqual(response.message.reflexive, ("203.0.113.5", 1234))
        self.assertEqual(response.source, SERVER)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wrongSource(self) -> None:
        """
        A response with the right transaction ID from another address is
        ignored, unless the request said it may come from there.
        """
        d = self.client.request(SERVER)
        self.respond(("192.0.2.66", 3478))
        self.assertNoResult(d)
        d2 = self.client.request(SERVER, changeIP=True, changePort=True, expectFrom=[("192.0.2.2", 3479)])
        self.assertTrue(decode(self.transport.written[-1][1]).changeIP)
        self.respond(("192.0.2.2", 3479))
        self.assertEqual(self.successResultOf(d2).source, ("192.0.2.2", 3479))

    def test_unknownTransaction(self) -> None:
        """
        Responses to transactions we do not have, and requests, are
        ignored (and not counted as malformed).
        """
        d = self.client.request(SERVER)
        self.client.datagramReceived(encode(Message(MessageClass.SUCCESS)), SERVER)
        self.respond(messageClass=MessageClass.REQUEST)
        self.assertNoResult(d)
        self.assertEqual(self.client.malformed.dropped, 0)

    def test_errorResponse(self) -> None:
        """
        An error response fails the transaction with its code.
        """
        d = self.client.request(SERVER)
        self.respond(
            messageClass=MessageClass.ERROR, errorCode=ErrorCode(420, "Unknown Attribute"), xorMappedAddress=None
        )
        error = self.failureResultOf(d, StunErrorResponse).value
        self.assertEqual(error.code, 420)
        self.assertEqual(str(error), "the STUN server answered 420 Unknown Attribute")

    def test_errorWithoutCode(self) -> None:
        """
        An error response without ERROR-CODE fails the transaction.
        """
        d = self.client.request(SERVER)
        self.respond(messageClass=MessageClass.ERROR)
        self.failureResultOf(d, StunError)

    def test_unknownRequiredInResponse(self) -> None:
        """
        A success response with an unknown comprehension-required
        attribute fails the transaction (RFC 8489 section 6.3.3).
        """
        d = self.client.request(SERVER)
        tid = decode(self.transport.written[-1][1]).transactionID
        self.client.datagramReceived(raw(0x101, attribute(0x0777, b""), tid), SERVER)
        self.assertIn("0x0777", str(self.failureResultOf(d, StunError).value))

    def test_malformedLoggedRarely(self) -> None:
        """
        Malformed datagrams are dropped, counted, and logged at most once
        per interval; they never fail a transaction.
        """
        events: list[dict[str, Any]] = []
        client = StunClientProtocol(self.clock, logInterval=10)
        client.malformed = RateLimitedLog(Logger(observer=events.append), "junk", 10)  # type: ignore[arg-type]
        client.makeConnection(RecordingTransport(self.clock))  # type: ignore[arg-type]
        d = client.request(SERVER)
        for _ in range(50):
            client.datagramReceived(b"\x00" * 30, SERVER)
        self.clock.advance(5)
        client.datagramReceived(b"junk", SERVER)
        self.clock.advance(5)
        client.datagramReceived(b"junk", SERVER)
        self.assertEqual(client.malformed.dropped, 52)
        self.assertEqual(len(events), 2)
        self.assertEqual(events[1]["count"], 51)
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d)

    def test_cancel(self) -> None:
        """
        Cancelling a request stops its retransmissions.
        """
        d = self.client.request(SERVER)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self) -> None:
        """
        Stopping the protocol fails pending transactions.
        """
        d = self.client.request(SERVER)
        self.client.doStop()
        self.failureResultOf(d, StunError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_parseServer(self) -> None:
        """
        Server addresses are host, host:port or [v6]:port.
        """
        self.assertEqual(parseServer("stun.example.org"), ("stun.example.org", 3478))
        self.assertEqual(parseServer("192.0.2.1:19302"), ("192.0.2.1", 19302))
        self.assertEqual(parseServer("[2001:db8::1]:5"), ("2001:db8::1", 5))
        self.assertEqual(parseServer("2001:db8::1"), ("2001:db8::1", 3478))
        for bad in ["", "host:", "host:x", "[::1", "host:70000"]:
            self.assertRaises(ValueError, parseServer, bad)


# -- the server ---------------------------------------------------------------------------


class ServerTests(SynchronousTestCase):
    """
    L{StunServer} on the simulated network.
    """

    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.replies: list[tuple[Message, HostPort]] = []
        outer = self

        class Catcher(DatagramProtocol):
            def datagramReceived(self, datagram: bytes, addr: Any) -> None:
                outer.replies.append((decode(datagram), addr))

        self.reactor.listenUDP(5000, Catcher(), interface=CLIENT)

    def ask(self, server: StunServer, data: bytes, to: Optional[HostPort] = None) -> list[tuple[Message, HostPort]]:
        """
        Send C{data} to C{server} from the client and collect the replies.
        """
        self.replies.clear()
        self.reactor.net.send((CLIENT, 5000), data, to or server.primary)
        self.reactor.pump([0.01] * 3)
        return list(self.replies)

    def test_plainBinding(self) -> None:
        """
        A one-address server answers with XOR-MAPPED-ADDRESS and
        RESPONSE-ORIGIN, and no OTHER-ADDRESS.
        """
        server = StunServer(self.reactor, SERVER1, 3478)
        server.startService()
        request = Message()
        [(reply, source)] = self.ask(server, encode(request))
        self.assertEqual(reply.transactionID, request.transactionID)
        self.assertEqual(reply.messageClass, MessageClass.SUCCESS)
        self.assertEqual(reply.xorMappedAddress, (CLIENT, 5000))
        self.assertEqual(reply.responseOrigin, (SERVER1, 3478))
        self.assertIsNone(reply.otherAddress)
        self.assertTrue(reply.fingerprint)
        self.assertEqual(source, (SERVER1, 3478))

    def test_plainRefusesChange(self) -> None:
        """
        A one-address server refuses CHANGE-REQUEST with 420 naming it.
        """
        server = StunServer(self.reactor, SERVER1, 3478)
        server.startService()
        [(reply, _)] = self.ask(server, encode(Message(changePort=True, changeRequest=True)))
        self.assertEqual(reply.errorCode, ErrorCode(420, "Unknown Attribute"))
        self.assertEqual(reply.unknownAttributes, (CHANGE_REQUEST,))

    def test_unknownRequired(self) -> None:
        """
        A request with unknown comprehension-required attributes gets 420
        listing them; unknown optional ones are ignored.
        """
        server = StunServer(self.reactor, SERVER1, 3478)
        server.startService()
        [(reply, _)] = self.ask(server, raw(1, attribute(0x0777, b"x") + attribute(0x8777, b"")))
        self.assertEqual(reply.errorCode, ErrorCode(420, "Unknown Attribute"))
        self.assertEqual(reply.unknownAttributes, (0x0777,))
        [(reply, _)] = self.ask(server, raw(1, attribute(0x8777, b"")))
        self.assertEqual(reply.messageClass, MessageClass.SUCCESS)

    def test_unknownMethod(self) -> None:
        """
        A request for a method other than Binding gets 400.
        """
        server = StunServer(self.reactor, SERVER1, 3478)
        server.startService()
        [(reply, _)] = self.ask(server, raw(0x0003, b""))
        self.assertEqual(reply.errorCode, ErrorCode(400, "Bad Request"))
        self.assertEqual(reply.method, 3)

    def test_onlyRequestsAnswered(self) -> None:
        """
        Responses, indications and junk get no answer.
        """
        server = StunServer(self.reactor, SERVER1, 3478)
        server.startService()
        for cls in (MessageClass.SUCCESS, MessageClass.ERROR, MessageClass.INDICATION):
            self.assertEqual(self.ask(server, encode(Message(cls))), [])
        self.assertEqual(self.ask(server, b"\xff" * 40), [])
        self.assertEqual(server.malformed.dropped, 1)

    def test_changeRequest(self) -> None:
        """
        A two-address server answers from the IP and port CHANGE-REQUEST
        asks for, names that address in RESPONSE-ORIGIN, and names the
        address differing in both IP and port from where the request
        arrived in OTHER-ADDRESS.
        """
        server = StunServer(self.reactor, SERVER1, 3478, SERVER2, 3479)
        server.startService()
        for ip, port, origin in [
            (False, False, (SERVER1, 3478)),
            (True, False, (SERVER2, 3478)),
            (False, True, (SERVER1, 3479)),
            (True, True, (SERVER2, 3479)),
        ]:
            [(reply, source)] = self.ask(server, encode(Message(changeIP=ip, changePort=port, changeRequest=True)))
            self.assertEqual(source, origin)
            self.assertEqual(reply.responseOrigin, origin)
            self.assertEqual(reply.otherAddress, (SERVER2, 3479))
        [(reply, source)] = self.ask(server, encode(Message()), to=(SERVER2, 3478))
        self.assertEqual(source, (SERVER2, 3478))
        self.assertEqual(reply.otherAddress, (SERVER1, 3479))

    def test_rateLimit(self) -> None:
        """
        Beyond C{rate} responses per second, requests go unanswered; the
        bucket refills with time.
        """
        server = StunServer(self.reactor, SERVER1, 3478, rate=5)
        server.startService()
        for _ in range(8):
            self.reactor.net.send((CLIENT, 5000), encode(Message()), server.primary)
        self.reactor.advance(0.01)
        self.assertEqual((server.answered, server.limited), (5, 3))
        self.reactor.advance(1)
        self.ask(server, encode(Message()))
        self.assertEqual(server.answered, 6)

    def test_badArguments(self) -> None:
        """
        An alternate of another family, the same IP, or unspecified
        addresses with an alternate are refused.
        """
        self.assertRaises(ValueError, StunServer, self.reactor, "127.0.0.1", 0, "::1")
        self.assertRaises(ValueError, StunServer, self.reactor, "127.0.0.1", 0, "127.0.0.1")
        self.assertRaises(ValueError, StunServer, self.reactor, "0.0.0.0", 0, "127.0.0.2")

    def test_stop(self) -> None:
        """
        Stopping the service closes every socket.
        """
        server = StunServer(self.reactor, SERVER1, 3478, SERVER2, 3479)
        server.startService()
        self.assertEqual(len(self.reactor.net.endpoints), 5)
        server.stopService()
        self.assertEqual(len(self.reactor.net.endpoints), 1)


# -- real sockets on loopback ------------------------------------------------------------------


def freePortPair() -> int:
    """
    A port P such that P and P + 1 are free for UDP on 127.0.0.1 and
    127.0.0.2 right now.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        sockets = []
        try:
            for host in ("127.0.0.1", "127.0.0.2"):
                for p in (port, port + 1):
                    t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sockets.append(t)
                    t.bind((host, p))
            return port
        except OSError:
            continue
        finally:
            for t in sockets:
                t.close()
    raise RuntimeError("no free port pair")


def deferredTest(f: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[Any], Deferred[None]]:
    """
    Run an C{async} test method as a Deferred, which trial waits for.
    """

    @functools.wraps(f)
    def wrapper(self: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(f(self))

    return wrapper


FAST: dict[str, Any] = {"rto": 0.1, "rc": 4, "rm": 4}


class LoopbackTests(TestCase):
    """
    Our client against our server on real loopback sockets.
    """

    @deferredTest
    async def test_rfc5780(self) -> None:
        """
        With 127.0.0.1 and 127.0.0.2, discovery finds no NAT and an open
        filter: direct.
        """
        server = StunServer(_realReactor, "127.0.0.1", 0, "127.0.0.2")
        server.startService()
        self.addCleanup(server.stopService)
        result = await discover(_realReactor, [server.primary], interface="127.0.0.1", **FAST)
        self.assertEqual(
            (result.mapping, result.filtering, result.strategy), ("none", "endpoint-independent", "direct")
        )
        assert result.publicAddr is not None
        self.assertEqual(result.publicAddr[0], "127.0.0.1")
        self.assertEqual(server.answered, 3)

    @deferredTest
    async def test_plain(self) -> None:
        """
        Against a one-address server the address is learned, no NAT is
        seen, and filtering stays unknown (the unspecified bind finds the
        local address from the route).
        """
        server = StunServer(_realReactor, "127.0.0.1", 0)
        server.startService()
        self.addCleanup(server.stopService)
        result = await discover(_realReactor, [f"127.0.0.1:{server.primary[1]}"], **FAST)
        self.assertEqual((result.mapping, result.filtering), ("none", "unknown"))

    @deferredTest
    async def test_commandLine(self) -> None:
        """
        C{python -m beam.p2p.nat.stunclient HOST:PORT --json} prints the
        behaviour as JSON (in a subprocess, against a server in this
        process).
        """
        import json

        from twisted.internet.utils import getProcessOutputAndValue

        server = StunServer(_realReactor, "127.0.0.1", 0, "127.0.0.2")
        server.startService()
        self.addCleanup(server.stopService)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "beam.p2p.nat.stunclient", "%s:%d" % server.primary, "--json", "--rto", "0.1", "--rc", "4"],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["strategy"], "direct")


class CoturnTests(TestCase):
    """
    Our client against coturn (Debian's C{coturn}), STUN only, on
    loopback with RFC 5780's alternate IP and port.
    """

    timeout = 60

    def startCoturn(self) -> int:
        """
        Run turnserver on 127.0.0.1 and 127.0.0.2; kill it by PID at
        cleanup.  The port is returned.
        """
        from beam.testing.sysdeps import ensureCommands

        ensureCommands({"turnserver": "coturn"})
        port = freePortPair()
        work = tempfile.mkdtemp(prefix="beam-coturn-")
        config = os.path.join(work, "turnserver.conf")
        with open(config, "w") as f:
            f.write(
                "\n".join(
                    [
                        "listening-ip=127.0.0.1",
                        "listening-ip=127.0.0.2",
                        f"listening-port={port}",
                        f"alt-listening-port={port + 1}",
                        "stun-only",
                        "no-auth",
                        "no-tls",
                        "no-dtls",
                        "no-cli",
                        "simple-log",
                        f"log-file={work}/turn.log",
                        f"pidfile={work}/turn.pid",
                        f"userdb={work}/turndb",
                        "",
                    ]
                )
            )
        process = subprocess.Popen(
            ["turnserver", "-c", config, "--no-stdout-log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=work,
        )

        def stop() -> None:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
            import shutil

            shutil.rmtree(work, ignore_errors=True)

        self.addCleanup(stop)
        return port

    async def waitReady(self, port: int) -> NatBehaviour:
        """
        Run discovery until coturn answers (it needs a moment to start).
        """
        for _ in range(50):
            try:
                return await discover(_realReactor, [("127.0.0.1", port)], interface="127.0.0.1", **FAST)
            except StunTimeout:
                await deferLater(_realReactor, 0.1, lambda: None)
        raise AssertionError("coturn never answered")

    @deferredTest
    async def test_discovery(self) -> None:
        """
        coturn names its OTHER-ADDRESS and honours CHANGE-REQUEST, so our
        discovery classifies loopback as no NAT with an open filter.
        """
        port = self.startCoturn()
        result = await self.waitReady(port)
        self.assertEqual(
            (result.mapping, result.filtering, result.strategy), ("none", "endpoint-independent", "direct")
        )
        self.assertEqual(result.server, ("127.0.0.1", port))

    @deferredTest
    async def test_binding(self) -> None:
        """
        A plain binding transaction with coturn: its response carries our
        address, RFC 5780's attributes and a FINGERPRINT we verified.
        """
        port = self.startCoturn()
        await self.waitReady(port)
        client = StunClientProtocol(_realReactor, **FAST)
        listening = _realReactor.listenUDP(0, client, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(listening.stopListening)
        response = await client.request(("127.0.0.1", port))
        message = response.message
        self.assertEqual(message.reflexive, ("127.0.0.1", listening.getHost().port))
        self.assertEqual(message.otherAddress, ("127.0.0.2", port + 1))
        self.assertEqual(message.responseOrigin, ("127.0.0.1", port))
        self.assertTrue(message.fingerprint)
