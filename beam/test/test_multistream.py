"""
Tests for L{beam.p2p.multistream}.

The wire vectors come from the multistream-select README (C{na} is
C{0x036e610a}, C{ls} is C{0x036c730a}, the header is C{/multistream/1.0.0})
and from what go-multistream writes for a pipelined C{/noise} selection.
"""

from __future__ import annotations

from typing import Any, Optional

from hypothesis import given, settings, strategies as st
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from beam.errors import (
    DecodeError,
    MessageTooLarge,
    NegotiationFailed,
    ProtocolError,
    TooManyProposals,
    UnexpectedMessage,
)
from beam.p2p.multistream import (
    MAX_FAILED_PROPOSALS,
    PROTOCOL_ID,
    MultistreamDialer,
    MultistreamListener,
    MultistreamProtocol,
    Negotiator,
    decodeProtocolList,
    encodeMessage,
    encodeProtocolList,
)
from beam.testing import MemoryTransport, Pump

HEADER = b"\x13/multistream/1.0.0\n"
NOISE = b"\x07/noise\n"
NA = b"\x03na\n"


class EncodingTests(SynchronousTestCase):
    """
    Message framing.
    """

    def test_vectors(self) -> None:
        """
        Messages are a varint length counting the newline, the text, a newline.
        """
        self.assertEqual(encodeMessage(PROTOCOL_ID), HEADER)
        self.assertEqual(encodeMessage("/noise"), NOISE)
        self.assertEqual(encodeMessage("na"), bytes.fromhex("036e610a"))
        self.assertEqual(encodeMessage("ls"), bytes.fromhex("036c730a"))

    def test_longMessageVarint(self) -> None:
        """
        A message of 200 bytes has a two-byte varint length.
        """
        text = "/" + "x" * 198
        self.assertEqual(encodeMessage(text)[:2], b"\xc8\x01")

    def test_tooLongToSend(self) -> None:
        """
        We refuse to frame a message no peer would accept.
        """
        self.assertRaises(ValueError, encodeMessage, "x" * 1024)
        encodeMessage("x" * 1023)

    def test_protocolList(self) -> None:
        """
        The C{ls} answer is one message holding embedded messages and a final
        newline; it parses back.
        """
        encoded = encodeProtocolList(["/a", "/bc"])
        self.assertEqual(encoded, b"\x0a\x03/a\n\x04/bc\n\n")
        self.assertEqual(decodeProtocolList(b"\x03/a\n\x04/bc\n"), ["/a", "/bc"])
        self.assertEqual(encodeProtocolList([]), b"\x01\n")

    def test_protocolListBounded(self) -> None:
        """
        An C{ls} answer never exceeds the message limit; protocols that do not
        fit are left out.
        """
        encoded = encodeProtocolList(["/" + "p" * 100 + str(i) for i in range(50)])
        self.assertLessEqual(len(encoded), 1024 + 2)
        self.assertEqual(len(decodeProtocolList(encoded[2:-1])), 9)

    def test_protocolListMalformed(self) -> None:
        """
        A malformed list raises L{DecodeError}.
        """
        for bad in [b"\x05/a\n", b"\x03/ab", b"\x00", b"\x80"]:
            self.assertRaises(DecodeError, decodeProtocolList, bad)


class DialerTests(SynchronousTestCase):
    """
    The sans-IO dialer.
    """

    def test_realNegotiation(self) -> None:
        """
        The dialer pipelines header and proposal, and the exact bytes of the
        listener's pipelined answer complete the negotiation.
        """
        d = MultistreamDialer(["/noise"])
        self.assertEqual(d.start(), HEADER + NOISE)
        self.assertEqual(d.feed(HEADER + NOISE), [])
        self.assertTrue(d.done)
        self.assertEqual(d.result, "/noise")
        self.assertEqual(d.leftover, b"")

    def test_fallback(self) -> None:
        """
        After C{na} the dialer proposes its next protocol.
        """
        d = MultistreamDialer(["/tls/1.0.0", "/noise"])
        d.start()
        self.assertEqual(d.feed(HEADER + NA), [NOISE])
        self.assertFalse(d.done)
        self.assertIsNone(d.result)
        d.feed(NOISE + b"app")
        self.assertEqual((d.result, d.leftover), ("/noise", b"app"))

    def test_allRefused(self) -> None:
        """
        When every proposal gets C{na}, L{NegotiationFailed} names them all,
        and the dialer stays failed.
        """
        d = MultistreamDialer(["/a", "/b"])
        d.start()
        d.feed(HEADER + NA)
        with self.assertRaises(NegotiationFailed) as cm:
            d.feed(NA)
        self.assertIn("/a, /b", str(cm.exception))
        self.assertRaises(NegotiationFailed, d.feed, b"")
        self.assertIsNone(d.result)

    def test_leftoverAfterDone(self) -> None:
        """
        Bytes in the same chunk as the acceptance, and bytes fed afterwards,
        are leftover for the chosen protocol.
        """
        d = MultistreamDialer(["/noise"])
        d.start()
        d.feed(HEADER + NOISE + b"\x00\x20hello")
        self.assertEqual(d.leftover, b"\x00\x20hello")
        d.feed(b"more")
        self.assertEqual(d.leftover, b"\x00\x20hellomore")

    def test_byteByByte(self) -> None:
        """
        Input split into single bytes negotiates the same.
        """
        d = MultistreamDialer(["/x", "/noise"])
        d.start()
        sent = []
        for b in HEADER + NA + NOISE + b"!":
            sent += d.feed(bytes([b]))
        self.assertEqual(sent, [NOISE])
        self.assertEqual((d.result, d.leftover), ("/noise", b"!"))

    def test_wrongHeader(self) -> None:
        """
        A peer speaking another version is refused.
        """
        d = MultistreamDialer(["/noise"])
        d.start()
        self.assertRaises(UnexpectedMessage, d.feed, b"\x13/multistream/2.0.0\n")

    def test_unexpectedAnswer(self) -> None:
        """
        An answer that is neither our proposal nor C{na} is refused.
        """
        d = MultistreamDialer(["/noise"])
        d.start()
        self.assertRaises(UnexpectedMessage, d.feed, HEADER + b"\x05/tls\n")

    def test_missingNewline(self) -> None:
        """
        A message not ending in a newline is refused.
        """
        d = MultistreamDialer(["/noise"])
        d.start()
        self.assertRaises(DecodeError, d.feed, b"\x03abc")

    def test_emptyMessage(self) -> None:
        """
        A zero-length message (no room for the newline) is refused.
        """
        d = MultistreamDialer(["/noise"])
        d.start()
        self.assertRaises(DecodeError, d.feed, b"\x00")

    def test_notUTF8(self) -> None:
        """
        A message that is not UTF-8 is refused.
        """
        d = MultistreamDialer(["/noise"])
        d.start()
        self.assertRaises(DecodeError, d.feed, b"\x03\xff\xfe\n")

    def test_oversizeRefusedEarly(self) -> None:
        """
        A length over 1024 is refused as soon as the varint is read, before
        any of the body arrives.
        """
        d = MultistreamDialer(["/noise"])
        d.start()
        self.assertRaises(MessageTooLarge, d.feed, b"\x81\x08")  # 1025

    def test_endlessVarint(self) -> None:
        """
        A varint that never ends is refused.
        """
        d = MultistreamDialer(["/noise"])
        d.start()
        self.assertRaises(DecodeError, d.feed, b"\x80" * 10)

    def test_lazy(self) -> None:
        """
        A lazy dialer knows its protocol once started and still strips the
        listener's header and acceptance.
        """
        d = MultistreamDialer(["/noise"], lazy=True)
        self.assertEqual(d.start(), HEADER + NOISE)
        self.assertEqual(d.result, "/noise")
        self.assertFalse(d.done)
        d.feed(HEADER + NOISE + b"data")
        self.assertTrue(d.done)
        self.assertEqual(d.leftover, b"data")

    def test_lazyRefused(self) -> None:
        """
        A lazy dialer whose protocol is refused fails and forgets the result.
        """
        d = MultistreamDialer(["/noise"], lazy=True)
        d.start()
        self.assertRaises(NegotiationFailed, d.feed, HEADER + NA)
        self.assertIsNone(d.result)

    def test_badArguments(self) -> None:
        """
        No protocols, lazy with several, or an unsendable protocol are
        programming errors.
        """
        self.assertRaises(ValueError, MultistreamDialer, [])
        self.assertRaises(ValueError, MultistreamDialer, ["/a", "/b"], lazy=True)
        self.assertRaises(ValueError, MultistreamDialer, ["/" + "x" * 2000])
        self.assertRaises(RuntimeError, MultistreamDialer(["/a"]).feed, b"")


class ListenerTests(SynchronousTestCase):
    """
    The sans-IO listener.
    """

    def test_realNegotiation(self) -> None:
        """
        The listener answers a pipelined header and proposal with its header
        and the echo.
        """
        lst = MultistreamListener(["/noise", "/tls/1.0.0"])
        self.assertEqual(lst.start(), b"")
        self.assertEqual(lst.feed(HEADER + NOISE), [HEADER, NOISE])
        self.assertEqual((lst.done, lst.result, lst.leftover), (True, "/noise", b""))

    def test_na(self) -> None:
        """
        Unsupported proposals get C{na}; a later supported one is accepted
        with the bytes after it as leftover.
        """
        lst = MultistreamListener(["/noise"])
        self.assertEqual(lst.feed(HEADER + encodeMessage("/tls")), [HEADER, NA])
        self.assertEqual(lst.feed(NOISE + b"early"), [NOISE])
        self.assertEqual((lst.result, lst.leftover), ("/noise", b"early"))

    def test_ls(self) -> None:
        """
        C{ls} is answered with the supported protocols, in order.
        """
        lst = MultistreamListener(["/noise", "/tls/1.0.0"])
        replies = lst.feed(HEADER + b"\x03ls\n")
        self.assertEqual(replies[0], HEADER)
        self.assertEqual(replies[1], b"\x15\x07/noise\n\x0b/tls/1.0.0\n\n")
        self.assertFalse(lst.done)

    def test_predicate(self) -> None:
        """
        A predicate decides support, and C{listProtocols} answers C{ls}.
        """
        lst = MultistreamListener(
            lambda p: p.startswith("/ipfs/ping/"), listProtocols=lambda: ["/ipfs/ping/1.0.0"]
        )
        replies = lst.feed(HEADER + b"\x03ls\n")
        self.assertEqual(decodeProtocolList(replies[1][1:-1]), ["/ipfs/ping/1.0.0"])
        lst.feed(encodeMessage("/ipfs/ping/1.0.0"))
        self.assertEqual(lst.result, "/ipfs/ping/1.0.0")

    def test_lsIsNotAProtocol(self) -> None:
        """
        C{ls} is a command even when a predicate would accept anything.
        """
        lst = MultistreamListener(lambda p: True)
        self.assertEqual(lst.feed(HEADER + b"\x03ls\n"), [HEADER, b"\x01\n"])
        self.assertFalse(lst.done)

    def test_wrongHeader(self) -> None:
        """
        A first message other than the header is refused.
        """
        lst = MultistreamListener(["/noise"])
        self.assertRaises(UnexpectedMessage, lst.feed, NOISE)

    def test_flood(self) -> None:
        """
        After L{MAX_FAILED_PROPOSALS} refusals the listener gives up.
        """
        lst = MultistreamListener(["/noise"])
        lst.feed(HEADER)
        for i in range(MAX_FAILED_PROPOSALS):
            self.assertEqual(lst.feed(encodeMessage(f"/nope/{i}")), [NA])
        self.assertRaises(TooManyProposals, lst.feed, encodeMessage("/nope/last"))
        self.assertRaises(TooManyProposals, lst.feed, NOISE)

    def test_floodInOneChunk(self) -> None:
        """
        A single chunk of thousands of proposals ends at the limit.
        """
        lst = MultistreamListener(["/noise"])
        chunk = HEADER + encodeMessage("/nope") * 5000
        self.assertRaises(TooManyProposals, lst.feed, chunk)
        self.assertEqual(lst.failures, MAX_FAILED_PROPOSALS + 1)

    def test_lsCountsTowardsFlood(self) -> None:
        """
        Repeated C{ls} requests count towards the limit too.
        """
        lst = MultistreamListener(["/noise"], maxFailures=2)
        lst.feed(HEADER + b"\x03ls\n" * 2)
        self.assertRaises(TooManyProposals, lst.feed, b"\x03ls\n")

    def test_oversize(self) -> None:
        """
        An oversized proposal is refused from its length alone.
        """
        lst = MultistreamListener(["/noise"])
        self.assertRaises(MessageTooLarge, lst.feed, HEADER + b"\xff\xff\x03")


# --- the Twisted adapter ----------------------------------------------------


class App(Protocol):
    """
    The protocol installed after negotiation; it records what it receives
    and may greet its peer at once.
    """

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.received = b""
        self.lost: Optional[Failure] = None

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = reason


class Side:
    """
    One end: a L{MultistreamProtocol} whose callbacks record and, on
    success, install an L{App} on the transport and in the pump.
    """

    def __init__(self, negotiator: Negotiator, greeting: bytes = b"") -> None:
        self.app = App(greeting)
        self.selected: list[tuple[str, bytes]] = []
        self.failed: list[Failure] = []
        self.pump: Optional[Pump] = None
        self.proto = MultistreamProtocol(negotiator, self.onSelected, self.failed.append)

    def onSelected(self, protocol: str, leftover: bytes) -> None:
        self.selected.append((protocol, leftover))
        transport: Any = self.proto.transport
        transport.protocol = self.app
        assert self.pump is not None
        if self.pump.client is self.proto:
            self.pump.client = self.app
        else:
            self.pump.server = self.app
        self.app.makeConnection(transport)
        if leftover:
            self.app.dataReceived(leftover)


def connect(client: Side, server: Side, chunk: Optional[int] = None) -> Pump:
    pump = Pump(client.proto, server.proto)
    client.pump = server.pump = pump
    server.proto.makeConnection(pump.serverTransport)
    client.proto.makeConnection(pump.clientTransport)
    pump.flush(chunk=chunk)
    return pump


class AdapterTests(SynchronousTestCase):
    """
    L{MultistreamProtocol} between two in-memory peers.
    """

    def test_select(self) -> None:
        """
        Both sides agree, each callback runs once, and the application
        protocols then talk directly.
        """
        client = Side(MultistreamDialer(["/noise"]))
        server = Side(MultistreamListener(["/noise"]))
        pump = connect(client, server)
        self.assertEqual(client.selected, [("/noise", b"")])
        self.assertEqual(server.selected, [("/noise", b"")])
        client.app.transport.write(b"ping")
        pump.flush()
        self.assertEqual(server.app.received, b"ping")
        self.assertEqual(client.failed + server.failed, [])

    def test_wireBytes(self) -> None:
        """
        The bytes on the wire are exactly the pipelined messages.
        """
        client = Side(MultistreamDialer(["/noise"]))
        server = Side(MultistreamListener(["/noise"]))
        pump = Pump(client.proto, server.proto)
        client.pump = server.pump = pump
        server.proto.makeConnection(pump.serverTransport)
        client.proto.makeConnection(pump.clientTransport)
        self.assertEqual(bytes(pump.clientTransport.buffer), HEADER + NOISE)
        pump.flush(maxRounds=1)
        self.assertEqual(server.selected, [("/noise", b"")])

    def test_fallback(self) -> None:
        """
        After C{na} the second protocol is chosen on both sides.
        """
        client = Side(MultistreamDialer(["/tls/1.0.0", "/noise"]))
        server = Side(MultistreamListener(["/noise"]))
        connect(client, server)
        self.assertEqual(client.selected, [("/noise", b"")])
        self.assertEqual(server.selected, [("/noise", b"")])

    def test_greetingIsLeftover(self) -> None:
        """
        The listener's acceptance and its application's first bytes arrive
        in one chunk; the dialer passes those bytes on as leftover.
        """
        client = Side(MultistreamDialer(["/noise"]))
        server = Side(MultistreamListener(["/noise"]), greeting=b"hello")
        connect(client, server)
        self.assertEqual(client.selected, [("/noise", b"hello")])
        self.assertEqual(client.app.received, b"hello")

    def test_byteByByte(self) -> None:
        """
        Delivering one byte at a time negotiates the same, and bytes after
        the acceptance still reach the application.
        """
        client = Side(MultistreamDialer(["/x", "/noise"]))
        server = Side(MultistreamListener(["/noise"]), greeting=b"hello")
        connect(client, server, chunk=1)
        self.assertEqual(client.selected[0][0], "/noise")
        self.assertEqual(server.selected, [("/noise", b"")])
        self.assertEqual(client.app.received, b"hello")

    def test_allRefused(self) -> None:
        """
        When nothing is supported the dialer fails once with
        L{NegotiationFailed} and aborts; the listener sees the connection
        lost, once.
        """
        client = Side(MultistreamDialer(["/a", "/b"]))
        server = Side(MultistreamListener(["/noise"]))
        pump = connect(client, server)
        self.assertEqual(len(client.failed), 1)
        client.failed[0].trap(NegotiationFailed)
        self.assertTrue(pump.clientTransport.aborted)
        self.assertEqual(len(server.failed), 1)
        server.failed[0].trap(ConnectionLost)
        self.assertEqual(client.selected + server.selected, [])

    def test_malformedInput(self) -> None:
        """
        Garbage from the peer is not raised from C{dataReceived}: the
        transport is aborted and C{onFailed} gets the L{ProtocolError}.
        """
        side = Side(MultistreamListener(["/noise"]))
        transport = MemoryTransport()
        side.proto.makeConnection(transport)
        side.proto.dataReceived(b"\x05hello")
        side.proto.dataReceived(b"more garbage")
        self.assertTrue(transport.aborted)
        self.assertEqual(len(side.failed), 1)
        side.failed[0].trap(DecodeError)
        side.proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(side.failed), 1)

    def test_loseConnectionFallback(self) -> None:
        """
        A transport without C{abortConnection} is closed with
        C{loseConnection}.
        """

        class Minimal:
            closed = False

            def write(self, data: bytes) -> None:
                pass

            def loseConnection(self) -> None:
                self.closed = True

            def getPeer(self) -> None:
                return None

        side = Side(MultistreamListener(["/noise"]))
        transport = Minimal()
        side.proto.makeConnection(transport)  # type: ignore[arg-type]
        side.proto.dataReceived(b"\x81\x08")
        self.assertTrue(transport.closed)
        side.failed[0].trap(MessageTooLarge)

    def test_flood(self) -> None:
        """
        A peer that keeps proposing unsupported protocols is cut off.
        """
        side = Side(MultistreamListener(["/noise"]))
        transport = MemoryTransport()
        side.proto.makeConnection(transport)
        side.proto.dataReceived(HEADER + encodeMessage("/nope") * 100)
        self.assertTrue(transport.aborted)
        side.failed[0].trap(TooManyProposals)

    def test_lsOverAdapter(self) -> None:
        """
        The adapter writes the header and C{ls} answer in one write.
        """
        side = Side(MultistreamListener(["/noise"]))
        transport = MemoryTransport()
        side.proto.makeConnection(transport)
        side.proto.dataReceived(HEADER + b"\x03ls\n")
        self.assertEqual(transport.take(), HEADER + b"\x09\x07/noise\n\n")

    def test_connectionLostBeforeDone(self) -> None:
        """
        Losing the connection mid-negotiation calls C{onFailed} once with
        the reason.
        """
        side = Side(MultistreamDialer(["/noise"]))
        side.proto.makeConnection(MemoryTransport())
        side.proto.dataReceived(HEADER)
        side.proto.connectionLost(Failure(ConnectionDone()))
        side.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(side.failed), 1)
        side.failed[0].trap(ConnectionDone)
        self.assertEqual(side.selected, [])

    def test_onSelectedRaises(self) -> None:
        """
        If installing the chosen protocol fails, the error is logged, the
        transport aborted, and nothing escapes C{dataReceived}.
        """

        def boom(protocol: str, leftover: bytes) -> None:
            raise RuntimeError("boom")

        failed: list[Failure] = []
        proto = MultistreamProtocol(MultistreamListener(["/noise"]), boom, failed.append)
        transport = MemoryTransport()
        proto.makeConnection(transport)
        proto.dataReceived(HEADER + NOISE)
        self.assertTrue(transport.aborted)
        self.assertEqual(failed, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


# --- properties -------------------------------------------------------------

_valid = HEADER + NA + NOISE


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """
    A valid listener answer with bytes flipped, dropped or inserted.
    """
    data = bytearray(_valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "drop", "insert"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert" or not data:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3))
        elif op == "drop":
            del data[min(pos, len(data) - 1)]
        else:
            data[min(pos, len(data) - 1)] ^= draw(st.integers(1, 255))
    return bytes(data)


_chunks = st.lists(st.one_of(st.binary(max_size=40), _mutated()), min_size=1, max_size=5)


class PropertyTests(SynchronousTestCase):
    """
    Hostile bytes raise only our errors from the sans-IO classes and nothing
    from the adapter.
    """

    @settings(deadline=None, max_examples=200)
    @given(_chunks)
    def test_dialerOnlyOurErrors(self, chunks: list[bytes]) -> None:
        """
        The dialer either progresses or raises a L{ProtocolError}.
        """
        d = MultistreamDialer(["/tls/1.0.0", "/noise"])
        d.start()
        try:
            for chunk in chunks:
                for reply in d.feed(chunk):
                    self.assertEqual(reply, NOISE)
        except ProtocolError:
            self.assertFalse(d.done)

    @settings(deadline=None, max_examples=200)
    @given(st.lists(st.one_of(st.binary(max_size=40), _mutated(),
                              st.just(HEADER + b"\x03ls\n")), min_size=1, max_size=5))
    def test_listenerOnlyOurErrors(self, chunks: list[bytes]) -> None:
        """
        The listener either progresses or raises a L{ProtocolError}.
        """
        lst = MultistreamListener(["/noise"])
        try:
            for chunk in chunks:
                lst.feed(chunk)
        except ProtocolError:
            self.assertFalse(lst.done)

    @settings(deadline=None, max_examples=200)
    @given(_chunks, st.booleans())
    def test_adapterNeverRaises(self, chunks: list[bytes], dialer: bool) -> None:
        """
        The adapter never raises from C{dataReceived}, calls at most one
        callback at most once, and aborts on failure.
        """
        negotiator: Negotiator = (
            MultistreamDialer(["/tls/1.0.0", "/noise"]) if dialer else MultistreamListener(["/noise"])
        )
        selected: list[tuple[str, bytes]] = []
        failed: list[Failure] = []
        proto = MultistreamProtocol(
            negotiator, lambda p, rest: selected.append((p, rest)), failed.append
        )
        transport = MemoryTransport()
        proto.makeConnection(transport)
        for chunk in chunks:
            proto.dataReceived(chunk)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertLessEqual(len(selected) + len(failed), 1)
        self.assertEqual(len(selected) + len(failed), 1)
        if failed and not failed[0].check(ConnectionDone):
            failed[0].trap(ProtocolError)
            self.assertTrue(transport.aborted)
