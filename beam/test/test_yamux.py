"""
Tests for L{beam.p2p.muxer.yamux} and its frame codec.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IPullProducer,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from beam.errors import MuxerClosed, ProtocolError, StreamLimitExceeded, StreamReset
from beam.p2p.muxer._yamux_frames import (
    DEFAULT_WINDOW,
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_INTERNAL_ERROR,
    GO_AWAY_PROTOCOL_ERROR,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Frame,
    FrameParser,
    YamuxProtocolError,
    encodeFrame,
    encodeHeader,
)
from beam.p2p.interfaces import IMuxerSession
from beam.p2p.muxer._yamux_lifecycle import (
    IGNORE,
    ILLEGAL,
    TRANSITIONS,
    VIOLATION,
    IllegalTransition,
    Outcome,
    StreamInput,
    StreamState,
    renderTable,
    transition,
)
from beam.p2p.muxer.yamux import YamuxSession, YamuxStream
from beam.testing import MemoryTransport, Pump


class Recorder(Protocol):
    """
    A stream protocol that records what happens to it.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lost: list[Failure] = []
        self.made = 0

    def makeConnection(self, transport: Any) -> None:
        self.made += 1
        Protocol.makeConnection(self, transport)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


@implementer(IHalfCloseableProtocol)
class HalfRecorder(Recorder):
    """
    A recorder that supports half-close.
    """

    def __init__(self) -> None:
        super().__init__()
        self.readLost = 0

    def readConnectionLost(self) -> None:
        self.readLost += 1

    def writeConnectionLost(self) -> None:
        pass


@implementer(IPushProducer)
class PushProducer:
    """
    A streaming producer that writes C{chunk} each time L{produce} is called
    while it is not paused, and records pause/resume calls.
    """

    def __init__(self, stream: YamuxStream, chunk: int = 32 * 1024) -> None:
        self.stream = stream
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.stopped = False
        self.sent = bytearray()
        self.chunk = chunk
        self.counter = 0

    def produce(self, limit: int) -> None:
        while not self.paused and len(self.sent) < limit:
            data = bytes([self.counter % 251]) * self.chunk
            self.counter += 1
            self.sent += data
            self.stream.write(data)

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(IPullProducer)
class PullProducer:
    """
    A non-streaming producer that writes the next slice of C{data} per call.
    """

    def __init__(self, stream: YamuxStream, data: bytes, chunk: int) -> None:
        self.stream = stream
        self.data = data
        self.chunk = chunk
        self.offset = 0
        self.calls = 0

    def resumeProducing(self) -> None:
        self.calls += 1
        piece = self.data[self.offset : self.offset + self.chunk]
        self.offset += len(piece)
        if piece:
            self.stream.write(piece)
        if self.offset >= len(self.data):
            self.stream.unregisterProducer()

    def stopProducing(self) -> None:
        pass


class Pair:
    """
    Two connected sessions; inbound streams get a protocol from
    C{serverProtocol}/C{clientProtocol} (L{Recorder} by default) unless it
    is L{None}.
    """

    def __init__(
        self,
        clientKw: dict[str, Any] | None = None,
        serverKw: dict[str, Any] | None = None,
        protocolClass: Callable[[], Recorder] | None = Recorder,
        clientTransport: MemoryTransport | None = None,
    ) -> None:
        self.clock = Clock()
        self.serverStreams: list[YamuxStream] = []
        self.clientStreams: list[YamuxStream] = []
        self.protocolClass = protocolClass
        self.client = YamuxSession(
            True, self._accept(self.clientStreams), self.clock, **(clientKw or {})
        )
        self.server = YamuxSession(
            False, self._accept(self.serverStreams), self.clock, **(serverKw or {})
        )
        self.pump = Pump(self.client, self.server, clientTransport=clientTransport)
        if clientTransport is not None:
            clientTransport.protocol = self.client
        self.pump.connect()

    def _accept(self, into: list[YamuxStream]) -> Any:
        def onStream(stream: YamuxStream) -> None:
            into.append(stream)
            if self.protocolClass is not None:
                stream.setProtocol(self.protocolClass())

        return onStream

    def open(self, protocol: Recorder | None = None) -> tuple[YamuxStream, Recorder]:
        stream = self.client.openStream()
        proto = protocol if protocol is not None else Recorder()
        stream.setProtocol(proto)
        return stream, proto

    def flush(self, chunk: int | None = None) -> None:
        self.pump.flush(chunk=chunk)


def frames(data: bytes) -> list[Frame]:
    """
    Parse everything in C{data}.
    """
    return list(FrameParser().feed(data))


def lonelySession(
    isInitiator: bool = False, **kw: Any
) -> tuple[YamuxSession, MemoryTransport, list[YamuxStream]]:
    """
    A session connected to a bare memory transport, for feeding it bytes.
    """
    accepted: list[YamuxStream] = []
    session = YamuxSession(isInitiator, accepted.append, Clock(), **kw)
    transport = MemoryTransport()
    transport.protocol = session
    session.makeConnection(transport)
    return session, transport, accepted


class FrameCodecTests(SynchronousTestCase):
    """
    The sans-IO frame encoder and parser.
    """

    def test_headerLayout(self) -> None:
        """
        Headers are 12 big-endian bytes: version, type, flags, stream ID, length.
        """
        self.assertEqual(
            encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_FIN, 0x01020304, 0x0A0B0C0D),
            bytes([0, 1, 0, 5, 1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D]),
        )

    def test_roundTripSplit(self) -> None:
        """
        Frames split at every byte boundary parse back to the same frames.
        """
        sent = [
            Frame(TYPE_DATA, FLAG_SYN, 1, 5, b"hello"),
            Frame(TYPE_WINDOW_UPDATE, FLAG_ACK, 2, 1000),
            Frame(TYPE_PING, FLAG_SYN, 0, 77),
            Frame(TYPE_DATA, 0, 3, 0),
            Frame(TYPE_GO_AWAY, 0, 0, 2),
        ]
        wire = b"".join(encodeFrame(f) for f in sent)
        for size in (1, 5, 11, 13, len(wire)):
            parser = FrameParser()
            got: list[Frame] = []
            for i in range(0, len(wire), size):
                got.extend(parser.feed(wire[i : i + size]))
            self.assertEqual(got, sent)
            self.assertEqual(parser.buffered, 0)

    def test_badVersion(self) -> None:
        """
        A header with a version other than 0 is a protocol error.
        """
        wire = bytes([1]) + encodeHeader(TYPE_PING, FLAG_SYN, 0, 1)[1:]
        self.assertRaises(YamuxProtocolError, frames, wire)

    def test_unknownType(self) -> None:
        """
        A frame type above 3 is a protocol error.
        """
        wire = encodeHeader(4, 0, 0, 0)
        self.assertRaises(YamuxProtocolError, frames, wire)

    def test_protocolErrorIsBeamError(self) -> None:
        """
        Our protocol error derives from Beam's L{ProtocolError}.
        """
        self.assertTrue(issubclass(YamuxProtocolError, ProtocolError))

    def test_oversizeRefusedBeforeBuffering(self) -> None:
        """
        A data frame longer than the check allows is refused as soon as its
        header is complete, before any payload is held.
        """
        seen: list[tuple[int, int, int]] = []

        def check(streamID: int, flags: int, length: int) -> None:
            seen.append((streamID, flags, length))
            if length > 100:
                raise YamuxProtocolError("too long")

        parser = FrameParser(check)
        self.assertEqual(
            list(parser.feed(encodeHeader(TYPE_DATA, 0, 1, 100) + b"x" * 100)),
            [Frame(TYPE_DATA, 0, 1, 100, b"x" * 100)],
        )
        gen = parser.feed(encodeHeader(TYPE_DATA, 0, 1, 101) + b"x" * 50)
        self.assertRaises(YamuxProtocolError, list, gen)
        self.assertEqual(parser.buffered, 0)
        self.assertEqual(seen, [(1, 0, 100), (1, 0, 101)])

    def test_absoluteCap(self) -> None:
        """
        Without a check, C{maxDataLength} still caps data frames.
        """
        parser = FrameParser(maxDataLength=10)
        self.assertRaises(YamuxProtocolError, list, parser.feed(encodeHeader(TYPE_DATA, 0, 1, 11)))

    def test_linearInChunks(self) -> None:
        """
        A large frame fed in small pieces is reassembled exactly, and the
        partial buffer holds only that frame's bytes.
        """
        payload = os.urandom(100_000)
        wire = (
            encodeHeader(TYPE_DATA, 0, 1, len(payload))
            + payload
            + encodeHeader(TYPE_PING, FLAG_ACK, 0, 9)
        )
        parser = FrameParser()
        got: list[Frame] = []
        for i in range(0, len(wire), 997):
            got.extend(parser.feed(wire[i : i + 997]))
            self.assertLessEqual(parser.buffered, 12 + len(payload))
        self.assertEqual(
            got, [Frame(TYPE_DATA, 0, 1, len(payload), payload), Frame(TYPE_PING, FLAG_ACK, 0, 9)]
        )


class StreamTests(SynchronousTestCase):
    """
    Opening, using and closing streams between two sessions.
    """

    def test_interfaces(self) -> None:
        """
        Streams provide ITransport, IConsumer and IPushProducer; sessions are
        push producers.
        """
        pair = Pair()
        stream, _ = pair.open()
        verifyObject(ITransport, stream)
        verifyObject(IConsumer, stream)
        verifyObject(IPushProducer, stream)
        verifyObject(IPushProducer, pair.client)
        self.assertIsNone(stream.protocolId)
        self.assertIsNone(stream.connection)
        self.assertIs(pair.pump.clientTransport.producer, pair.client)

    def test_idParity(self) -> None:
        """
        The initiator opens odd stream IDs, the responder even ones, and the
        other side accepts them under the same IDs.
        """
        pair = Pair()
        a, b = pair.client.openStream(), pair.client.openStream()
        c, d = pair.server.openStream(), pair.server.openStream()
        pair.flush()
        self.assertEqual([a.streamID, b.streamID], [1, 3])
        self.assertEqual([c.streamID, d.streamID], [2, 4])
        self.assertEqual([s.streamID for s in pair.serverStreams], [1, 3])
        self.assertEqual([s.streamID for s in pair.clientStreams], [2, 4])
        self.assertEqual(sorted(pair.client.streams), [1, 2, 3, 4])
        self.assertEqual(sorted(pair.server.streams), [1, 2, 3, 4])

    def test_dataBothWays(self) -> None:
        """
        Bytes written on either end arrive at the other, in order.
        """
        pair = Pair()
        stream, proto = pair.open()
        stream.write(b"hello ")
        stream.writeSequence([b"wor", b"ld"])
        pair.flush()
        remote = pair.serverStreams[0]
        self.assertEqual(remote.protocol.data, b"hello world")
        remote.write(b"back")
        pair.flush()
        self.assertEqual(proto.data, b"back")

    def test_peerAndHost(self) -> None:
        """
        Streams report the addresses of the connection carrying them.
        """
        pair = Pair()
        stream, _ = pair.open()
        self.assertEqual(stream.getPeer(), pair.pump.clientTransport.getPeer())
        self.assertEqual(stream.getHost(), pair.pump.clientTransport.getHost())

    def test_bufferedUntilProtocolSet(self) -> None:
        """
        Data and FIN that arrive before the accepting side sets a protocol
        are delivered, in order, right after it is set.
        """
        pair = Pair(protocolClass=None)
        stream, proto = pair.open()
        stream.write(b"early")
        stream.loseConnection()
        pair.flush()
        remote = pair.serverStreams[0]
        late = HalfRecorder()
        remote.setProtocol(late)
        self.assertEqual((late.made, late.data, late.readLost), (1, b"early", 1))
        remote.write(b"reply")
        remote.loseConnection()
        pair.flush()
        self.assertEqual(proto.data, b"reply")
        self.assertEqual(len(late.lost), 1)
        late.lost[0].trap(ConnectionDone)
        proto.lost[0].trap(ConnectionDone)

    def test_halfCloseFromOpener(self) -> None:
        """
        After the opener half-closes, a half-closeable peer protocol gets
        readConnectionLost and can still write; when it closes too, both
        protocols get ConnectionDone exactly once and the streams are gone.
        """
        pair = Pair(protocolClass=HalfRecorder)
        stream, proto = pair.open(HalfRecorder())
        stream.write(b"request")
        stream.loseWriteConnection()
        pair.flush()
        remote = pair.serverStreams[0]
        self.assertEqual(remote.protocol.readLost, 1)
        self.assertEqual(remote.protocol.lost, [])
        remote.write(b"response")
        pair.flush()
        self.assertEqual(proto.data, b"response")
        self.assertEqual(proto.lost, [])
        remote.loseConnection()
        pair.flush()
        self.assertEqual(proto.readLost, 1)
        for p in (proto, remote.protocol):
            self.assertEqual(len(p.lost), 1)
            p.lost[0].trap(ConnectionDone)
        self.assertEqual(pair.client.streams, {})
        self.assertEqual(pair.server.streams, {})

    def test_halfCloseFromAcceptor(self) -> None:
        """
        The accepting side can half-close first; the opener keeps writing
        until it closes.
        """
        pair = Pair(protocolClass=HalfRecorder)
        stream, proto = pair.open(HalfRecorder())
        stream.write(b"x")
        pair.flush()
        remote = pair.serverStreams[0]
        remote.loseWriteConnection()
        pair.flush()
        self.assertEqual(proto.readLost, 1)
        stream.write(b"more")
        pair.flush()
        self.assertEqual(remote.protocol.data, b"xmore")
        stream.loseConnection()
        pair.flush()
        proto.lost[0].trap(ConnectionDone)
        remote.protocol.lost[0].trap(ConnectionDone)

    def test_remoteFinClosesPlainProtocol(self) -> None:
        """
        A protocol that is not half-closeable has its stream closed when the
        peer's FIN arrives: both ends get ConnectionDone.
        """
        pair = Pair()
        stream, proto = pair.open()
        stream.write(b"bye")
        stream.loseConnection()
        pair.flush()
        remote = pair.serverStreams[0]
        self.assertEqual(remote.protocol.data, b"bye")
        self.assertEqual(len(remote.protocol.lost), 1)
        remote.protocol.lost[0].trap(ConnectionDone)
        self.assertEqual(len(proto.lost), 1)
        proto.lost[0].trap(ConnectionDone)

    def test_loseConnectionAfterQueuedData(self) -> None:
        """
        loseConnection sends the FIN only after data queued beyond the window
        was sent; nothing is lost.
        """
        pair = Pair()
        stream, proto = pair.open()
        payload = os.urandom(3 * DEFAULT_WINDOW + 123)
        stream.write(payload)
        stream.loseConnection()
        stream.write(b"ignored after close")
        pair.flush()
        remote = pair.serverStreams[0]
        self.assertEqual(remote.protocol.data, payload)
        remote.protocol.lost[0].trap(ConnectionDone)
        proto.lost[0].trap(ConnectionDone)

    def test_resetByOpener(self) -> None:
        """
        abortConnection sends RST: our protocol gets ConnectionAborted, the
        peer's gets StreamReset, once each.
        """
        pair = Pair()
        stream, proto = pair.open()
        stream.write(b"x")
        pair.flush()
        stream.abortConnection()
        stream.abortConnection()
        pair.flush()
        remote = pair.serverStreams[0]
        self.assertEqual(len(proto.lost), 1)
        proto.lost[0].trap(ConnectionAborted)
        self.assertEqual(len(remote.protocol.lost), 1)
        remote.protocol.lost[0].trap(StreamReset)
        self.assertEqual(pair.client.streams, {})
        self.assertEqual(pair.server.streams, {})

    def test_resetByAcceptor(self) -> None:
        """
        The accepting side can reset too; writes after that are ignored.
        """
        pair = Pair()
        stream, proto = pair.open()
        stream.write(b"x")
        pair.flush()
        pair.serverStreams[0].abortConnection()
        pair.flush()
        proto.lost[0].trap(StreamReset)
        stream.write(b"late")
        pair.flush()
        self.assertEqual(len(proto.lost), 1)
        pair.serverStreams[0].protocol.lost[0].trap(ConnectionAborted)

    def test_lateDataForResetStreamDropped(self) -> None:
        """
        Data already in flight towards a stream we reset is dropped quietly;
        the session stays up.
        """
        pair = Pair()
        stream, proto = pair.open()
        pair.flush()
        remote = pair.serverStreams[0]
        remote.write(b"in flight")
        stream.abortConnection()
        pair.flush()
        self.assertEqual(proto.data, b"")
        self.assertFalse(pair.pump.clientTransport.disconnecting)
        self.assertFalse(pair.pump.serverTransport.disconnecting)

    def test_protocolExceptionResetsStream(self) -> None:
        """
        A stream protocol raising from dataReceived resets only its stream.
        """

        class Boom(Recorder):
            def dataReceived(self, data: bytes) -> None:
                raise ValueError("boom")

        classes = iter([Boom, Recorder])
        pair = Pair(protocolClass=lambda: next(classes)())
        stream, proto = pair.open()
        other, otherProto = pair.open()
        stream.write(b"x")
        pair.flush()
        proto.lost[0].trap(StreamReset)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        other.write(b"fine")
        pair.flush()
        self.assertEqual(otherProto.lost, [])
        self.assertEqual(pair.serverStreams[1].protocol.data, b"fine")
        self.assertIn(other.streamID, pair.server.streams)

    def test_chunkedDelivery(self) -> None:
        """
        Frames split into 5-byte pieces by the transport work the same.
        """
        pair = Pair()
        stream, proto = pair.open()
        payload = os.urandom(70_000)
        stream.write(payload)
        pair.flush(chunk=5)
        remote = pair.serverStreams[0]
        self.assertEqual(remote.protocol.data, payload)
        remote.write(b"ok")
        remote.loseConnection()
        pair.flush(chunk=5)
        self.assertEqual(proto.data, b"ok")
        proto.lost[0].trap(ConnectionDone)

    def test_manyConcurrentStreams(self) -> None:
        """
        100 streams interleaving writes in both directions each deliver
        exactly their own bytes.
        """
        pair = Pair(protocolClass=HalfRecorder)
        opened = [pair.open() for _ in range(100)]
        payloads = {s.streamID: os.urandom(5000 + 97 * i) for i, (s, _) in enumerate(opened)}
        for offset in range(0, 20000, 1000):
            for s, _ in opened:
                s.write(payloads[s.streamID][offset : offset + 1000])
            pair.flush(chunk=4096)
        for s, _ in opened:
            s.loseConnection()
        pair.flush()
        self.assertEqual(len(pair.serverStreams), 100)
        for remote in pair.serverStreams:
            self.assertEqual(remote.protocol.data, payloads[remote.streamID])
            self.assertEqual(remote.protocol.readLost, 1)
            remote.write(payloads[remote.streamID][::-1])
            remote.loseConnection()
        pair.flush()
        for s, proto in opened:
            self.assertEqual(proto.data, payloads[s.streamID][::-1])
            proto.lost[0].trap(ConnectionDone)
        self.assertEqual(pair.client.streams, {})
        self.assertEqual(pair.server.streams, {})


class SessionTests(SynchronousTestCase):
    """
    Session-wide behaviour: pings, go-away, limits, closing.
    """

    def test_pingRTT(self) -> None:
        """
        ping() fires with the round trip measured on the injected clock.
        """
        pair = Pair()
        d = pair.client.ping()
        self.assertNoResult(d)
        pair.clock.advance(0.25)
        pair.flush()
        self.assertEqual(self.successResultOf(d), 0.25)
        d2 = pair.server.ping()
        pair.flush()
        self.assertEqual(self.successResultOf(d2), 0.0)

    def test_pingAnswered(self) -> None:
        """
        A ping SYN is answered with a ping ACK echoing its opaque value.
        """
        session, transport, _ = lonelySession()
        session.dataReceived(encodeHeader(TYPE_PING, FLAG_SYN, 0, 12345))
        self.assertEqual(frames(transport.take()), [Frame(TYPE_PING, FLAG_ACK, 0, 12345)])

    def test_goAwayBlocksNewStreams(self) -> None:
        """
        After a go-away neither side opens new streams; existing streams
        keep working.
        """
        pair = Pair()
        stream, proto = pair.open()
        pair.flush()
        pair.server.goAway()
        pair.flush()
        self.assertRaises(MuxerClosed, pair.client.openStream)
        self.assertRaises(MuxerClosed, pair.server.openStream)
        stream.write(b"still here")
        pair.serverStreams[0].write(b"me too")
        pair.flush()
        self.assertEqual(pair.serverStreams[0].protocol.data, b"still here")
        self.assertEqual(proto.data, b"me too")

    def test_goAwayRefusesInbound(self) -> None:
        """
        A SYN arriving after we sent go-away is answered with RST.
        """
        session, transport, accepted = lonelySession()
        session.goAway()
        transport.take()
        session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
        self.assertEqual(accepted, [])
        self.assertEqual(frames(transport.take()), [Frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0)])

    def test_streamLimit(self) -> None:
        """
        Past maxStreams, openStream raises StreamLimitExceeded, and inbound
        streams are refused with RST (the opener sees StreamReset).
        """
        pair = Pair(clientKw={"maxStreams": 5}, serverKw={"maxStreams": 2})
        opened = [pair.open() for _ in range(3)]
        pair.flush()
        self.assertEqual(len(pair.serverStreams), 2)
        opened[2][1].lost[0].trap(StreamReset)
        self.assertEqual(opened[0][1].lost, [])
        self.assertRaises(StreamLimitExceeded, pair.server.openStream)
        pair.open()
        pair.open()
        pair.open()
        self.assertRaises(StreamLimitExceeded, pair.client.openStream)

    def test_closeSession(self) -> None:
        """
        close() sends a go-away and loses the transport; open streams get
        MuxerClosed, whenClosed fires on both sides, and pending pings fail.
        """
        pair = Pair()
        stream, proto = pair.open()
        stream.write(b"last words")
        pair.flush()
        before = pair.client.whenClosed()
        ping = pair.server.ping()
        pair.client.close()
        self.assertRaises(MuxerClosed, pair.client.openStream)
        self.assertIn(Frame(TYPE_GO_AWAY, 0, 0, 0), frames(bytes(pair.pump.clientTransport.buffer)))
        pair.flush()
        self.assertIsNone(self.successResultOf(before))
        self.assertIsNone(self.successResultOf(pair.server.whenClosed()))
        proto.lost[0].trap(MuxerClosed)
        pair.serverStreams[0].protocol.lost[0].trap(MuxerClosed)
        self.assertEqual(pair.serverStreams[0].protocol.data, b"last words")
        self.failureResultOf(ping, MuxerClosed)
        self.failureResultOf(pair.client.ping(), MuxerClosed)

    def test_sessionLossNotifiesStreams(self) -> None:
        """
        When the connection drops, every stream's protocol (including one not
        yet set) gets connectionLost with MuxerClosed exactly once.
        """
        pair = Pair(protocolClass=None)
        streams = [pair.open() for _ in range(3)]
        pair.flush()
        pair.pump.clientTransport.abortConnection()
        pair.flush()
        for _, proto in streams:
            self.assertEqual(len(proto.lost), 1)
            proto.lost[0].trap(MuxerClosed)
        late = Recorder()
        pair.serverStreams[0].setProtocol(late)
        self.assertEqual(len(late.lost), 1)
        late.lost[0].trap(MuxerClosed)
        self.assertEqual(pair.client.streams, {})
        self.successResultOf(pair.client.whenClosed())

    def test_largerInitialWindow(self) -> None:
        """
        A session configured with a larger window announces it in the SYN
        and ACK, so the peer can send that much before any update.
        """
        big = 1024 * 1024
        pair = Pair(
            protocolClass=None, clientKw={"initialWindow": big}, serverKw={"initialWindow": big}
        )
        stream, proto = pair.open()
        pair.flush()
        remote = pair.serverStreams[0]
        stream.write(b"a" * big)
        remote.write(b"b" * big)
        pair.flush()
        self.assertEqual(proto.data, b"b" * big)
        remote.setProtocol(Recorder())
        self.assertEqual(remote.protocol.data, b"a" * big)
        self.assertRaises(
            ValueError, YamuxSession, True, lambda s: None, Clock(), initialWindow=1000
        )
        self.assertRaises(
            ValueError, YamuxSession, True, lambda s: None, Clock(), maxStreamWindow=1000
        )


class SessionAPITests(SynchronousTestCase):
    """
    The public face an owner uses instead of the session's private flags:
    L{IMuxerSession}, C{acceptsStreams}, C{streamCount} and
    C{streamClosedObservers}.
    """

    def test_providesIMuxerSession(self) -> None:
        """
        A session provides L{IMuxerSession}.
        """
        session, _, _ = lonelySession()
        self.assertTrue(verifyObject(IMuxerSession, session))

    def test_acceptsStreamsWhileOpen(self) -> None:
        """
        A connected session accepts streams; one not yet connected does not.
        """
        self.assertFalse(YamuxSession(True, lambda s: None, Clock()).acceptsStreams)
        pair = Pair()
        self.assertTrue(pair.client.acceptsStreams)
        self.assertTrue(pair.server.acceptsStreams)

    def test_acceptsStreamsAfterLocalGoAway(self) -> None:
        """
        Sending a go-away stops accepting streams at once.
        """
        session, _, _ = lonelySession()
        session.goAway()
        self.assertFalse(session.acceptsStreams)
        self.assertRaises(MuxerClosed, session.openStream)

    def test_acceptsStreamsAfterRemoteGoAway(self) -> None:
        """
        Receiving a go-away stops accepting streams.
        """
        session, _, _ = lonelySession()
        session.dataReceived(encodeHeader(TYPE_GO_AWAY, 0, 0, 0))
        self.assertFalse(session.acceptsStreams)

    def test_acceptsStreamsWhenClosing(self) -> None:
        """
        A session being closed accepts no streams, before the transport is
        even gone.
        """
        pair = Pair()
        pair.client.close()
        self.assertFalse(pair.client.acceptsStreams)

    def test_acceptsStreamsAfterFailure(self) -> None:
        """
        A session that failed on a protocol violation accepts no streams.
        """
        session, _, _ = lonelySession()
        session.dataReceived(encodeHeader(9, 0, 0, 0))
        self.assertFalse(session.acceptsStreams)

    def test_acceptsStreamsAfterLoss(self) -> None:
        """
        A session whose connection dropped accepts no streams.
        """
        session, _, _ = lonelySession()
        session.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(session.acceptsStreams)

    def test_acceptsStreamsReadOnly(self) -> None:
        """
        acceptsStreams and streamCount cannot be assigned.
        """
        session, _, _ = lonelySession()
        with self.assertRaises(AttributeError):
            session.acceptsStreams = False  # type: ignore[misc]
        with self.assertRaises(AttributeError):
            session.streamCount = 3  # type: ignore[misc]

    def test_streamCount(self) -> None:
        """
        streamCount counts open streams in both directions, including
        half-closed ones, and drops a stream once it ended both ways.
        """
        pair = Pair()
        self.assertEqual(pair.client.streamCount, 0)
        a, _ = pair.open()
        b, _ = pair.open()
        pair.flush()
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (2, 2))
        a.loseConnection()
        pair.flush()
        # The server's plain Recorder closes its side on our FIN: a is gone.
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (1, 1))
        b.abortConnection()
        self.assertEqual(pair.client.streamCount, 0)
        pair.flush()
        self.assertEqual(pair.server.streamCount, 0)

    def test_streamClosedObserverAfterRemoval(self) -> None:
        """
        Each stream's end calls every observer once, after the stream left
        the session (streamCount already updated) and after its protocol's
        connectionLost.
        """
        pair = Pair(protocolClass=HalfRecorder)
        seen: list[tuple[int, int]] = []
        stream, proto = pair.open(HalfRecorder())
        other, _ = pair.open()
        pair.flush()
        pair.client.streamClosedObservers.append(
            lambda: seen.append((pair.client.streamCount, len(proto.lost)))
        )
        stream.loseConnection()
        pair.flush()
        self.assertEqual(seen, [])
        pair.serverStreams[0].loseConnection()
        pair.flush()
        self.assertEqual(seen, [(1, 1)])
        other.abortConnection()
        self.assertEqual(seen, [(1, 1), (0, 1)])

    def test_streamClosedObserverOnReset(self) -> None:
        """
        A stream reset by the peer calls the observers.
        """
        pair = Pair()
        calls: list[int] = []
        pair.server.streamClosedObservers.append(lambda: calls.append(pair.server.streamCount))
        stream, _ = pair.open()
        pair.flush()
        stream.abortConnection()
        pair.flush()
        self.assertEqual(calls, [0])

    def test_streamClosedObserverOnSessionLoss(self) -> None:
        """
        When the connection drops, the observers are called once per
        stream, the last time with no stream left.
        """
        pair = Pair()
        calls: list[int] = []
        pair.client.streamClosedObservers.append(lambda: calls.append(pair.client.streamCount))
        for _ in range(3):
            pair.open()
        pair.flush()
        pair.pump.clientTransport.abortConnection()
        pair.flush()
        self.assertEqual(len(calls), 3)
        self.assertEqual(calls[-1], 0)
        self.assertEqual(pair.client.streamCount, 0)

    def test_streamClosedObserverFailureContained(self) -> None:
        """
        An observer that raises is logged; the others still run and the
        stream still ends.
        """
        pair = Pair()
        calls: list[str] = []

        def boom() -> None:
            raise RuntimeError("observer bug")

        pair.client.streamClosedObservers.extend([boom, lambda: calls.append("ran")])
        stream, proto = pair.open()
        stream.abortConnection()
        self.assertEqual(calls, ["ran"])
        proto.lost[0].trap(ConnectionAborted)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_streamClosedObserverRemoved(self) -> None:
        """
        An observer removed from the list is no longer called.
        """
        pair = Pair()
        calls: list[None] = []

        def observer() -> None:
            calls.append(None)

        pair.client.streamClosedObservers.append(observer)
        pair.client.streamClosedObservers.remove(observer)
        stream, _ = pair.open()
        stream.abortConnection()
        self.assertEqual(calls, [])


class FlowControlTests(SynchronousTestCase):
    """
    Per-stream windows, back-pressure and producers.
    """

    def test_windowExhaustion(self) -> None:
        """
        A write beyond the window sends only one window's worth until the
        reader's window updates arrive, then the rest.
        """
        pair = Pair(serverKw={"maxStreamWindow": DEFAULT_WINDOW})
        stream, _ = pair.open()
        pair.flush()
        payload = os.urandom(DEFAULT_WINDOW * 2)
        stream.write(payload)
        sent = frames(pair.pump.clientTransport.take())
        self.assertEqual(sum(f.length for f in sent if f.type == TYPE_DATA), DEFAULT_WINDOW)
        self.assertEqual(stream._queued, DEFAULT_WINDOW)
        pair.pump.serverTransport.take()
        pair.server.dataReceived(b"".join(encodeFrame(f) for f in sent))
        updates = [
            f
            for f in frames(bytes(pair.pump.serverTransport.buffer))
            if f.type == TYPE_WINDOW_UPDATE
        ]
        self.assertEqual(updates, [Frame(TYPE_WINDOW_UPDATE, 0, stream.streamID, DEFAULT_WINDOW)])
        pair.flush()
        self.assertEqual(pair.serverStreams[0].protocol.data, payload)
        self.assertEqual(stream._queued, 0)

    def test_windowGrowsForWindowLimitedPeer(self) -> None:
        """
        When the peer used up the whole window and our reader kept up, the
        next update doubles the window (the extra credit rides on it), so the
        writer can then have twice as much in flight.
        """
        pair = Pair()
        stream, _ = pair.open()
        pair.flush()
        stream.write(os.urandom(DEFAULT_WINDOW * 2))
        sent = pair.pump.clientTransport.take()
        pair.pump.serverTransport.take()
        pair.server.dataReceived(sent)
        updates = [
            f
            for f in frames(bytes(pair.pump.serverTransport.buffer))
            if f.type == TYPE_WINDOW_UPDATE
        ]
        self.assertEqual(
            updates, [Frame(TYPE_WINDOW_UPDATE, 0, stream.streamID, 2 * DEFAULT_WINDOW)]
        )
        remote = pair.serverStreams[0]
        self.assertEqual(remote._recvMax, 2 * DEFAULT_WINDOW)
        self.assertEqual(pair.server._windowGrowth, DEFAULT_WINDOW)
        pair.flush()
        self.assertEqual(stream._sendWindow, 2 * DEFAULT_WINDOW)
        self.assertEqual(len(remote.protocol.data), 2 * DEFAULT_WINDOW)

    def test_windowKeptForUnhurriedPeer(self) -> None:
        """
        A writer that never runs out of window (its credit comes back before
        it needs it) leaves the window at its initial size.
        """
        pair = Pair()
        stream, _ = pair.open()
        pair.flush()
        for _ in range(40):
            stream.write(b"x" * 100_000)
            pair.flush()
        remote = pair.serverStreams[0]
        self.assertEqual(len(remote.protocol.data), 4_000_000)
        self.assertEqual(remote._recvMax, DEFAULT_WINDOW)

    def test_windowGrowthBounded(self) -> None:
        """
        A stream's window grows only up to maxStreamWindow, and all streams
        together only by windowBudget; a stream that ends gives its growth
        back to the session.
        """
        pair = Pair(serverKw={"maxStreamWindow": 4 * DEFAULT_WINDOW,
                              "windowBudget": 4 * DEFAULT_WINDOW})
        (a, _), (b, _) = pair.open(), pair.open()
        pair.flush()
        ra, rb = pair.serverStreams
        for _ in range(6):
            a.write(b"a" * (8 * DEFAULT_WINDOW))
            pair.flush()
        self.assertEqual(ra._recvMax, 4 * DEFAULT_WINDOW)
        for _ in range(6):
            b.write(b"b" * (8 * DEFAULT_WINDOW))
            pair.flush()
        self.assertEqual(rb._recvMax, 2 * DEFAULT_WINDOW)
        self.assertEqual(pair.server._windowGrowth, 4 * DEFAULT_WINDOW)
        self.assertEqual(len(ra.protocol.data), 48 * DEFAULT_WINDOW)
        self.assertEqual(len(rb.protocol.data), 48 * DEFAULT_WINDOW)
        ra.abortConnection()
        pair.flush()
        self.assertEqual(pair.server._windowGrowth, DEFAULT_WINDOW)

    def test_pausedReaderDoesNotGrowWindow(self) -> None:
        """
        A window used up while the reader is paused (data buffered) is not
        a reason to grow it: the window stays at its initial size.
        """
        pair = Pair()
        stream, _ = pair.open()
        pair.flush()
        remote = pair.serverStreams[0]
        remote.pauseProducing()
        payload = os.urandom(DEFAULT_WINDOW)
        stream.write(payload)
        pair.flush()
        self.assertEqual(remote._buffered, DEFAULT_WINDOW)
        pair.pump.serverTransport.take()
        remote.resumeProducing()
        self.assertEqual(
            frames(pair.pump.serverTransport.take()),
            [Frame(TYPE_WINDOW_UPDATE, 0, stream.streamID, DEFAULT_WINDOW)],
        )
        self.assertEqual(remote.protocol.data, payload)
        self.assertEqual(remote._recvMax, DEFAULT_WINDOW)
        self.assertEqual(pair.server._windowGrowth, 0)

    def test_updatesBatched(self) -> None:
        """
        No window update is sent until at least half the window was
        delivered.
        """
        session, transport, accepted = lonelySession()
        session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
        accepted[0].setProtocol(Recorder())
        transport.take()
        half = DEFAULT_WINDOW // 2
        session.dataReceived(encodeHeader(TYPE_DATA, 0, 1, half - 1) + b"x" * (half - 1))
        self.assertEqual(transport.take(), b"")
        session.dataReceived(encodeHeader(TYPE_DATA, 0, 1, 1) + b"x")
        self.assertEqual(frames(transport.take()), [Frame(TYPE_WINDOW_UPDATE, 0, 1, half)])

    def test_stalledReaderBoundsWriter(self) -> None:
        """
        A reader that pauses its stream stops the remote writer after one
        window: the writer's producer is paused, its queue stays under the
        high-water mark, the reader's buffer within the window; on resume
        everything arrives intact and the producer resumes.
        """
        pair = Pair()
        stream, _ = pair.open()
        pair.flush()
        remote = pair.serverStreams[0]
        remote.pauseProducing()
        producer = PushProducer(stream)
        stream.registerProducer(producer, True)
        total = 4 * 1024 * 1024
        for _ in range(50):
            producer.produce(total)
            pair.flush()
        self.assertTrue(producer.paused)
        self.assertLessEqual(stream._queued, pair.client.streamHighWater + producer.chunk)
        self.assertLessEqual(
            len(producer.sent), DEFAULT_WINDOW + pair.client.streamHighWater + producer.chunk
        )
        self.assertLessEqual(remote._buffered, DEFAULT_WINDOW)
        self.assertEqual(remote.protocol.data, b"")
        remote.resumeProducing()
        for _ in range(1000):
            pair.flush()
            producer.produce(total)
            if len(producer.sent) >= total and not stream._queued:
                break
        pair.flush()
        self.assertGreater(producer.resumes, 0)
        self.assertEqual(len(producer.sent), total)
        self.assertEqual(remote.protocol.data, bytes(producer.sent))

    def test_readerPausesMidStream(self) -> None:
        """
        A protocol that pauses its stream from dataReceived gets nothing more
        until it resumes; data then arrives in order, and FIN only after it.
        """

        class Pauser(HalfRecorder):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.pauseProducing()

        pair = Pair(protocolClass=Pauser)
        stream, _ = pair.open()
        stream.write(b"one")
        pair.flush()
        stream.write(b"two")
        stream.write(b"three")
        stream.loseConnection()
        pair.flush()
        remote = pair.serverStreams[0]
        self.assertEqual((remote.protocol.chunks, remote.protocol.readLost), ([b"one"], 0))
        remote.resumeProducing()
        self.assertEqual((remote.protocol.chunks, remote.protocol.readLost), ([b"one", b"two"], 0))
        remote.resumeProducing()
        self.assertEqual(remote.protocol.chunks, [b"one", b"two", b"three"])
        remote.resumeProducing()
        self.assertEqual(remote.protocol.readLost, 1)

    def test_sessionPausePausesStreams(self) -> None:
        """
        When the connection's transport pauses the session, stream writes
        queue and each stream's producer is paused by its next write (idle
        producers are left alone, as a TCP transport leaves them); when it
        drains they resume and all data arrives.
        """
        transport = MemoryTransport(highWater=100_000)
        pair = Pair(clientTransport=transport)
        streams = [pair.open() for _ in range(3)]
        pair.flush()
        producers = []
        for stream, _ in streams:
            producer = PushProducer(stream, chunk=8192)
            stream.registerProducer(producer, True)
            producers.append(producer)
        producers[0].produce(200_000)
        self.assertTrue(transport.producerPaused)
        self.assertTrue(producers[0].paused)
        self.assertEqual([p.pauses for p in producers[1:]], [0, 0])
        self.assertLessEqual(len(transport.buffer), 100_000 + 8192 + 12)
        held = len(transport.buffer)
        streams[1][0].write(b"z" * 1000)
        self.assertEqual(len(transport.buffer), held)
        self.assertEqual(streams[1][0]._queued, 1000)
        self.assertTrue(producers[1].paused)
        producers[1].sent += b"z" * 1000
        pair.flush()
        for _ in range(200):
            for p in producers:
                p.produce(200_000)
            pair.flush()
        self.assertTrue(all(p.resumes > 0 for p in producers))
        for remote in pair.serverStreams:
            self.assertEqual(remote.protocol.data, bytes(producers[remote.streamID // 2].sent))
            self.assertGreaterEqual(len(remote.protocol.data), 200_000)

    def test_resumeIsRoundRobin(self) -> None:
        """
        When a connection congested with many streams' queued data drains a
        little at a time, each resume serves the streams in the order they
        started waiting and sends a stream that still has data to the back:
        every stream gets a turn before any gets a third, none starves, and
        all data arrives intact.
        """
        transport = MemoryTransport(highWater=10_000)
        pair = Pair(clientKw={"maxFrameSize": 4096}, clientTransport=transport)
        streams = [pair.open()[0] for _ in range(20)]
        pair.flush()
        payloads = {s.streamID: os.urandom(40_000) for s in streams}
        for s in streams:
            s.write(payloads[s.streamID])
        self.assertTrue(transport.producerPaused)
        self.assertEqual(list(pair.client._waiting), streams)
        rounds: list[list[int]] = []
        while True:
            # take() drains the transport, which resumes the session; what
            # that resume sends is in the next take().
            data = transport.take()
            if not data:
                break
            rounds.append(
                sorted({f.streamID for f in frames(data) if f.type == TYPE_DATA})
            )
            pair.server.dataReceived(data)
        # Round 0 is the first stream's own write; each resume after it
        # serves one stream (three frames fill the transport).
        self.assertEqual(rounds[1:21], [[s.streamID] for s in streams])
        turns = [r[0] for r in rounds[1:]]
        for i in range(0, len(turns) - 20, 20):
            self.assertEqual(sorted(turns[i : i + 20]), sorted(payloads))
        pair.flush()
        for remote in pair.serverStreams:
            self.assertEqual(remote.protocol.data, payloads[remote.streamID])
        self.assertEqual(len(pair.client._waiting), 0)

    def test_manyProducersAllProgress(self) -> None:
        """
        Many streams with producers sharing a congested connection all
        make progress through repeated pause/resume cycles, every queue
        stays within the high-water mark plus one write, and everything
        arrives; afterwards no stream is left waiting.
        """
        transport = MemoryTransport(highWater=50_000)
        pair = Pair(clientTransport=transport)
        streams = [pair.open()[0] for _ in range(40)]
        pair.flush()
        producers = []
        for stream in streams:
            producer = PushProducer(stream, chunk=8192)
            stream.registerProducer(producer, True)
            producers.append(producer)
        total = 36 * 8192
        progress = []
        for _ in range(2000):
            for p in producers:
                p.produce(total)
            for s in streams:
                self.assertLessEqual(s._queued, pair.client.streamHighWater + 8192)
            pair.flush(chunk=40_000)
            progress.append([len(r.protocol.data) for r in pair.serverStreams])
            if all(len(r.protocol.data) == total for r in pair.serverStreams):
                break
        # Halfway through, every stream had moved something.
        self.assertTrue(all(n > 0 for n in progress[len(progress) // 2]))
        for remote in pair.serverStreams:
            self.assertEqual(remote.protocol.data, bytes(producers[remote.streamID // 2].sent))
            self.assertEqual(len(remote.protocol.data), total)
        self.assertEqual(len(pair.client._waiting), 0)

    def test_waitingBookkeeping(self) -> None:
        """
        The session tracks just the streams a resume has work for: a stream
        joins when its write is held back by the congested connection and
        leaves when its queue drains, when it is reset, or when the
        connection is lost; an idle stream's producer is never touched.
        """
        transport = MemoryTransport(highWater=10_000)
        pair = Pair(clientTransport=transport)
        streams = [pair.open()[0] for _ in range(4)]
        idle, _ = pair.open()
        idleProducer = PushProducer(idle)
        idle.registerProducer(idleProducer, True)
        pair.flush()
        streams[0].write(b"a" * 20_000)
        self.assertTrue(transport.producerPaused)
        self.assertEqual(list(pair.client._waiting), [])
        for s in streams[1:]:
            s.write(b"b" * 1000)
        self.assertEqual(list(pair.client._waiting), streams[1:])
        streams[2].abortConnection()
        self.assertEqual(list(pair.client._waiting), [streams[1], streams[3]])
        pair.flush()
        self.assertEqual(list(pair.client._waiting), [])
        self.assertEqual((idleProducer.pauses, idleProducer.resumes), (0, 0))
        # A paused producer whose queue is low waits for the resume, and
        # leaves once it was resumed.
        busy = PushProducer(streams[1], chunk=8192)
        streams[1].registerProducer(busy, True)
        streams[0].write(b"a" * 20_000)
        busy.produce(8192)
        self.assertTrue(busy.paused)
        self.assertIn(streams[1], pair.client._waiting)
        pair.flush()
        self.assertFalse(busy.paused)
        self.assertEqual(list(pair.client._waiting), [])
        streams[0].write(b"a" * 20_000)
        streams[3].write(b"c" * 1000)
        self.assertEqual(list(pair.client._waiting), [streams[3]])
        pair.client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(pair.client._waiting), 0)

    def test_pauseResumeCostIsPerBusyStream(self) -> None:
        """
        Pausing and resuming a session with hundreds of idle streams (each
        with a registered producer) visits only the streams that wrote
        while it was paused.
        """
        transport = MemoryTransport(highWater=10_000)
        pair = Pair(clientTransport=transport)
        streams = [pair.open()[0] for _ in range(300)]
        for s in streams:
            s.registerProducer(PushProducer(s), True)
        pair.flush()
        visits = []
        original = YamuxStream._updateProducer

        def counting(stream: YamuxStream) -> None:
            visits.append(stream)
            original(stream)

        self.patch(YamuxStream, "_updateProducer", counting)
        for _ in range(10):
            streams[0].write(b"a" * 20_000)
            self.assertTrue(transport.producerPaused)
            streams[1].write(b"b" * 1000)
            pair.flush()
            self.assertFalse(transport.producerPaused)
        # Stream 1 is visited for the window updates its data earns.
        self.assertLessEqual(len(visits), 10 * 4)
        self.assertEqual(set(visits), {streams[0], streams[1]})

    def test_pullProducer(self) -> None:
        """
        A non-streaming producer is asked for more whenever the queue is low,
        until it has written everything.
        """
        pair = Pair()
        stream, _ = pair.open()
        payload = os.urandom(1_000_000)
        producer = PullProducer(stream, payload, 10_000)
        stream.registerProducer(producer, False)
        self.assertGreater(producer.calls, 1)
        self.assertLessEqual(stream._queued, pair.client.streamLowWater + 10_000)
        for _ in range(100):
            pair.flush()
        self.assertEqual(pair.serverStreams[0].protocol.data, payload)

    def test_producerStoppedOnReset(self) -> None:
        """
        A registered producer is stopped when its stream is reset.
        """
        pair = Pair()
        stream, _ = pair.open()
        producer = PushProducer(stream)
        stream.registerProducer(producer, True)
        pair.flush()
        pair.serverStreams[0].abortConnection()
        pair.flush()
        self.assertTrue(producer.stopped)


class ControlBackpressureTests(SynchronousTestCase):
    """
    Control frames the peer makes us send (ping ACKs, SYN ACKs and RSTs)
    respect backpressure: while the transport has paused the session, ping
    ACKs are coalesced and the rest is bounded by C{maxControlBacklog},
    past which a peer that does not read gets an internal-error go-away and
    an aborted connection.
    """

    highWater = 64 * 1024

    def congested(self, **kw: Any) -> tuple[YamuxSession, MemoryTransport]:
        """
        A lonely session whose transport pauses it above L{highWater}
        unread bytes, as a TCP transport does when its peer stops reading.
        """
        session, transport, _ = lonelySession(**kw)
        transport.highWater = self.highWater
        transport.registerProducer(session, True)
        return session, transport

    def feed(self, session: YamuxSession, wire: bytes, perRead: int = 1000) -> None:
        """
        Deliver C{wire} in reads of C{perRead} frames, as a socket would.
        """
        step = perRead * 12
        for i in range(0, len(wire), step):
            session.dataReceived(wire[i : i + step])

    def assertAbortedWithGoAway(self, transport: MemoryTransport) -> None:
        """
        The session ended the connection with an internal-error go-away
        and an abort (a peer that does not read would never see a flush).
        """
        self.assertTrue(transport.aborted)
        self.assertIsNone(transport.producer)
        tail = frames(bytes(transport.buffer[-12:]))
        self.assertEqual(tail, [Frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_INTERNAL_ERROR)])

    def test_pingFloodWhilePaused(self) -> None:
        """
        A peer that sends 100,000 pings and never reads makes us hold at
        most one pending ping ACK beyond what filled the transport, and
        once the pings it made us owe pass C{maxControlBacklog} the session
        goes away and aborts; later pings are ignored.
        """
        session, transport = self.congested()
        self.feed(session, encodeHeader(TYPE_PING, FLAG_SYN, 0, 7) * 100_000)
        self.assertTrue(transport.producerPaused)
        self.assertAbortedWithGoAway(transport)
        self.assertLessEqual(len(transport.buffer), self.highWater + 2 * 12)
        held = len(transport.buffer)
        session.dataReceived(encodeHeader(TYPE_PING, FLAG_SYN, 0, 8))
        self.assertEqual(len(transport.buffer), held)

    def test_refusedSynFloodWhilePaused(self) -> None:
        """
        A peer that opens 100,000 streams we refuse (after our go-away) and
        never reads gets RSTs only until C{maxControlBacklog} bytes of them
        wait behind the paused transport; then the session goes away and
        aborts.
        """
        session, transport = self.congested(wastedStreamBurst=10**6)
        session.goAway()
        wire = b"".join(
            encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * i + 1, 0) for i in range(100_000)
        )
        self.feed(session, wire)
        self.assertAbortedWithGoAway(transport)
        self.assertLessEqual(
            len(transport.buffer), self.highWater + session.maxControlBacklog + 2 * 12
        )
        rsts = [f for f in frames(bytes(transport.buffer)) if f.flags & FLAG_RST]
        self.assertLess(len(rsts), 100_000)

    def test_acceptedSynResetFloodWhilePaused(self) -> None:
        """
        Streams the peer opens and resets at once, over and over, make us
        send a SYN ACK each; those count against the bound too.
        """
        session, transport = self.congested(maxControlBacklog=12 * 1000, wastedStreamBurst=10**6)
        wire = b"".join(
            encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * i + 1, 0)
            + encodeHeader(TYPE_WINDOW_UPDATE, FLAG_RST, 2 * i + 1, 0)
            for i in range(20_000)
        )
        self.feed(session, wire)
        self.assertAbortedWithGoAway(transport)
        self.assertLessEqual(len(transport.buffer), self.highWater + 12 * 1000 + 2 * 12)

    def test_rapidResetWhilePaused(self) -> None:
        """
        Streams opened and reset before any protocol was agreed are wasted
        streams: past C{wastedStreamBurst} of them the session sends a
        protocol-error go-away, and aborts, since the peer does not read.
        """
        session, transport = self.congested(wastedStreamBurst=50)
        transport.highWater = 20 * 12  # the SYN ACKs fill it: paused
        wire = b"".join(
            encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * i + 1, 0)
            + encodeHeader(TYPE_WINDOW_UPDATE, FLAG_RST, 2 * i + 1, 0)
            for i in range(1000)
        )
        self.feed(session, wire)
        self.assertTrue(transport.aborted)
        self.assertEqual(session.wastedStreams, 51)
        tail = frames(bytes(transport.buffer[-12:]))
        self.assertEqual(tail, [Frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR)])

    def test_newestPingAnsweredOnResume(self) -> None:
        """
        Pings that arrive while paused are coalesced: nothing is written
        until the transport drains, then one ACK answers the newest ping.
        """
        session, transport, _ = lonelySession()
        session.pauseProducing()
        session.dataReceived(
            encodeHeader(TYPE_PING, FLAG_SYN, 0, 1) + encodeHeader(TYPE_PING, FLAG_SYN, 0, 2)
        )
        self.assertEqual(transport.buffer, b"")
        session.resumeProducing()
        self.assertEqual(frames(transport.take()), [Frame(TYPE_PING, FLAG_ACK, 0, 2)])
        session.resumeProducing()
        self.assertEqual(transport.buffer, b"")
        session.dataReceived(encodeHeader(TYPE_PING, FLAG_SYN, 0, 3))
        self.assertEqual(frames(transport.take()), [Frame(TYPE_PING, FLAG_ACK, 0, 3)])
        self.assertFalse(transport.disconnecting)

    def test_wellBehavedPeerPingedThroughCongestion(self) -> None:
        """
        A peer that pings while our connection is congested gets its answer
        once it drains, and the session stays up.
        """
        pair = Pair()
        pair.server.pauseProducing()
        d = pair.client.ping()
        pair.clock.advance(0.5)
        pair.flush()
        self.assertNoResult(d)
        pair.server.resumeProducing()
        pair.flush()
        self.assertEqual(self.successResultOf(d), 0.5)
        self.assertTrue(pair.server.acceptsStreams)

    def test_backlogCountRestartsOnDrain(self) -> None:
        """
        The bound is on what is held while paused: a peer that reads, so
        the transport keeps draining, may make us answer without limit.
        """
        session, transport, _ = lonelySession(maxControlBacklog=12 * 100)
        session.goAway()
        transport.take()
        streamID = 1
        for _ in range(5):
            session.pauseProducing()
            for _ in range(80):
                session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, streamID, 0))
                streamID += 2
            session.resumeProducing()
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(frames(transport.take())), 400)
        session.pauseProducing()
        for _ in range(101):
            session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, streamID, 0))
            streamID += 2
        self.assertTrue(transport.aborted)

    def test_maxControlBacklogValidated(self) -> None:
        """
        A C{maxControlBacklog} smaller than one frame is refused.
        """
        self.assertRaises(
            ValueError, YamuxSession, True, lambda s: None, Clock(), maxControlBacklog=11
        )


class ViolationTests(SynchronousTestCase):
    """
    Malformed or hostile input ends the session with a protocol-error
    go-away and never raises out of dataReceived.
    """

    def assertGoneAway(
        self, transport: MemoryTransport, code: int = GO_AWAY_PROTOCOL_ERROR
    ) -> None:
        self.assertIn(Frame(TYPE_GO_AWAY, 0, 0, code), frames(bytes(transport.buffer)))
        self.assertTrue(transport.disconnecting)

    def feedAndCheck(self, wire: bytes, **kw: Any) -> YamuxSession:
        session, transport, _ = lonelySession(**kw)
        session.dataReceived(wire)
        self.assertGoneAway(transport)
        session.dataReceived(encodeHeader(TYPE_PING, FLAG_SYN, 0, 1))
        self.assertNotIn(Frame(TYPE_PING, FLAG_ACK, 0, 1), frames(bytes(transport.buffer)))
        return session

    def test_dataBeyondWindow(self) -> None:
        """
        A data frame longer than the stream's remaining window is refused
        from its header alone.
        """
        syn = encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
        session = self.feedAndCheck(syn + encodeHeader(TYPE_DATA, 0, 1, DEFAULT_WINDOW + 1))
        self.assertEqual(session._parser.buffered, 0)

    def test_windowOverrunAcrossFrames(self) -> None:
        """
        Several frames that together overrun the window are refused too.
        """
        half = DEFAULT_WINDOW // 2 + 1
        frame = encodeHeader(TYPE_DATA, 0, 1, half) + b"x" * half
        session, transport, accepted = lonelySession()
        session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0) + frame)
        accepted[0].pauseProducing()
        accepted[0].setProtocol(Recorder())
        session.dataReceived(frame)
        self.assertGoneAway(transport)

    def test_badVersion(self) -> None:
        """
        An unknown version ends the session.
        """
        self.feedAndCheck(bytes([1]) + encodeHeader(TYPE_PING, FLAG_SYN, 0, 0)[1:])

    def test_unknownType(self) -> None:
        """
        An unknown frame type ends the session.
        """
        self.feedAndCheck(encodeHeader(7, 0, 1, 0))

    def test_windowOverflow(self) -> None:
        """
        A window update pushing the send window past 2**32-1 ends the session.
        """
        self.feedAndCheck(
            encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
            + encodeHeader(TYPE_WINDOW_UPDATE, 0, 1, 2**32 - 1)
        )

    def test_wrongParity(self) -> None:
        """
        A peer opening a stream with our parity ends the session.
        """
        self.feedAndCheck(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0))

    def test_duplicateSyn(self) -> None:
        """
        Opening an already open stream ends the session.
        """
        syn = encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
        self.feedAndCheck(syn + syn)

    def test_streamZero(self) -> None:
        """
        Data on stream 0 ends the session.
        """
        self.feedAndCheck(encodeHeader(TYPE_DATA, 0, 0, 1) + b"x")

    def test_dataAfterFin(self) -> None:
        """
        Data after the peer's own FIN ends the session.
        """
        self.feedAndCheck(
            encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_FIN, 1, 0)
            + encodeHeader(TYPE_DATA, 0, 1, 1)
            + b"x"
        )

    def test_violationNotifiesStreams(self) -> None:
        """
        Between two sessions, a violation closes the connection and every
        stream learns of it.
        """
        pair = Pair()
        _, proto = pair.open()
        pair.flush()
        pair.client.dataReceived(encodeHeader(9, 0, 0, 0))
        pair.flush()
        proto.lost[0].trap(MuxerClosed)
        pair.serverStreams[0].protocol.lost[0].trap(MuxerClosed)
        self.assertTrue(pair.server._remoteGoAway)


def _validFrames() -> st.SearchStrategy[list[bytes]]:
    """
    Sequences of plausible frames a peer (initiator) could send.
    """
    ids = st.sampled_from([1, 3, 5])
    frame = st.one_of(
        st.builds(lambda i: encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, i, 0), ids),
        st.builds(
            lambda i, d: encodeHeader(TYPE_DATA, 0, i, len(d)) + d, ids, st.binary(max_size=300)
        ),
        st.builds(
            lambda i, n: encodeHeader(TYPE_WINDOW_UPDATE, 0, i, n), ids, st.integers(0, 2**20)
        ),
        st.builds(
            lambda i, f: encodeHeader(TYPE_WINDOW_UPDATE, f, i, 0),
            ids,
            st.sampled_from([FLAG_FIN, FLAG_RST, FLAG_ACK]),
        ),
        st.builds(lambda n: encodeHeader(TYPE_PING, FLAG_SYN, 0, n), st.integers(0, 2**32 - 1)),
        st.just(encodeHeader(TYPE_GO_AWAY, 0, 0, 0)),
    )
    return st.lists(frame, max_size=30)


def _checkBounded(session: YamuxSession) -> None:
    assert session._parser.buffered <= 12 + session.initialWindow
    assert 0 <= session._windowGrowth <= session.windowBudget
    for stream in session._waiting:
        assert session.streams.get(stream.streamID) is stream
    for stream in session.streams.values():
        assert stream._buffered <= stream._recvMax
        assert 0 <= stream._recvWindow <= stream._recvMax


class FuzzTests(SynchronousTestCase):
    """
    Arbitrary input never escapes dataReceived, and memory stays bounded.
    """

    @settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.binary(max_size=200), max_size=10))
    def test_randomBytes(self, chunks: list[bytes]) -> None:
        """
        Random bytes fed to a session never raise and never grow buffers
        beyond the window.
        """
        session, _, _ = lonelySession()
        for chunk in chunks:
            session.dataReceived(chunk)
            _checkBounded(session)

    @settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(
        _validFrames(),
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
        st.integers(1, 64),
        st.booleans(),
    )
    def test_mutatedFrames(
        self, wire: list[bytes], mutations: list[tuple[int, int]], chunk: int, pause: bool
    ) -> None:
        """
        Valid frame sequences with a few bytes changed, delivered in chunks,
        never raise out of dataReceived; buffers stay within the windows,
        and the session either keeps going or has sent a go-away and closed.
        """
        accepted: list[YamuxStream] = []

        def onStream(stream: YamuxStream) -> None:
            accepted.append(stream)
            if pause:
                stream.pauseProducing()
            stream.setProtocol(HalfRecorder())

        session = YamuxSession(False, onStream, Clock())
        transport = MemoryTransport()
        transport.protocol = session
        session.makeConnection(transport)
        data = bytearray(b"".join(wire))
        for position, value in mutations:
            if data:
                data[position % len(data)] = value
        for i in range(0, len(data), chunk):
            session.dataReceived(bytes(data[i : i + chunk]))
            _checkBounded(session)
        if transport.disconnecting:
            self.assertIn(TYPE_GO_AWAY, [f.type for f in frames(bytes(transport.buffer))])
        for stream in accepted:
            stream.resumeProducing()
        _checkBounded(session)


class ReentrancyTests(SynchronousTestCase):
    """
    Bytes fed to the session from inside a stream callback.
    """

    def test_reentrantDataReceived(self) -> None:
        """
        If a stream protocol feeds the session while it is dispatching, the
        new frames are handled after the ones at hand, in order.
        """
        session, transport, accepted = lonelySession()

        class Feeder(Recorder):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                if data == b"first":
                    session.dataReceived(encodeHeader(TYPE_PING, FLAG_SYN, 0, 2))

        session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
        accepted[0].setProtocol(Feeder())
        transport.take()
        session.dataReceived(
            encodeHeader(TYPE_DATA, 0, 1, 5) + b"first" + encodeHeader(TYPE_PING, FLAG_SYN, 0, 1)
        )
        self.assertEqual(
            frames(transport.take()),
            [Frame(TYPE_PING, FLAG_ACK, 0, 1), Frame(TYPE_PING, FLAG_ACK, 0, 2)],
        )


# The stream lifecycle (beam.p2p.muxer._yamux_lifecycle).

S = StreamState
I = StreamInput  # noqa: E741

#: Each stable state as (our direction, the peer's direction).
_GRID = {
    S.OPEN: ("open", "open"),
    S.LOCAL_CLOSING: ("closing", "open"),
    S.LOCAL_CLOSED: ("closed", "open"),
    S.REMOTE_CLOSING: ("open", "closing"),
    S.REMOTE_CLOSED: ("open", "closed"),
    S.BOTH_CLOSING: ("closing", "closing"),
    S.LOCAL_CLOSING_REMOTE_CLOSED: ("closing", "closed"),
    S.LOCAL_CLOSED_REMOTE_CLOSING: ("closed", "closing"),
}

_FIN = encodeHeader(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0)
_RST = encodeHeader(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0)
_DATA = encodeHeader(TYPE_DATA, 0, 1, 4) + b"data"
_CREDIT = encodeHeader(TYPE_WINDOW_UPDATE, 0, 1, 1)


class Lone:
    """
    One stream accepted by a session that is fed frames by hand, its
    protocol a L{HalfRecorder}, brought to a given state.
    """

    def __init__(self, state: StreamState) -> None:
        self.session, self.transport, accepted = lonelySession()
        self.session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
        self.stream = accepted[0]
        self.proto = HalfRecorder()
        self.stream.setProtocol(self.proto)
        if state is S.CLOSED:
            self.stream.abortConnection()
        else:
            local, remote = _GRID[state]
            if local == "closing":
                # One byte more than the send window: it waits, and the FIN
                # behind it.
                self.stream.write(b"q" * (DEFAULT_WINDOW + 1))
                self.stream.loseConnection()
            elif local == "closed":
                self.stream.loseConnection()
            if remote == "closing":
                # A paused reader holds the FIN back.
                self.stream.pauseProducing()
                self.session.dataReceived(_FIN)
            elif remote == "closed":
                self.session.dataReceived(_FIN)
        assert self.stream.state is state, (self.stream.state, state)
        self.transport.take()

    def sent(self) -> list[Frame]:
        return frames(self.transport.take())


#: How each input is given to a stream through its public API or the wire.
_ACTIONS: dict[str, Callable[[Lone], None]] = {
    "write": lambda h: h.stream.write(b"w"),
    "close": lambda h: h.stream.loseConnection(),
    "data": lambda h: h.session.dataReceived(_DATA),
    "fin": lambda h: h.session.dataReceived(_FIN),
    "credit": lambda h: h.session.dataReceived(_CREDIT),
    "resume": lambda h: h.stream.resumeProducing(),
    "rst": lambda h: h.session.dataReceived(_RST),
    "abort": lambda h: h.stream.abortConnection(),
    "lost": lambda h: h.session.connectionLost(Failure(ConnectionDone())),
}

_ENDINGS = {"rst": StreamReset, "abort": ConnectionAborted, "lost": MuxerClosed}

#: The state each action leads to from each state, written out by hand
#: (independently of TRANSITIONS; a chain such as CLOSE then FIN_DUE shows
#: as its end).  "violation": the session goes away with a protocol error.
_WALK: dict[StreamState, dict[str, StreamState | str]] = {
    S.OPEN: {
        "write": S.OPEN,
        "close": S.LOCAL_CLOSED,
        "data": S.OPEN,
        "fin": S.REMOTE_CLOSED,
        "credit": S.OPEN,
        "resume": S.OPEN,
    },
    S.LOCAL_CLOSING: {
        "write": S.LOCAL_CLOSING,
        "close": S.LOCAL_CLOSING,
        "data": S.LOCAL_CLOSING,
        "fin": S.LOCAL_CLOSING_REMOTE_CLOSED,
        "credit": S.LOCAL_CLOSED,
        "resume": S.LOCAL_CLOSING,
    },
    S.LOCAL_CLOSED: {
        "write": S.LOCAL_CLOSED,
        "close": S.LOCAL_CLOSED,
        "data": S.LOCAL_CLOSED,
        "fin": S.CLOSED,
        "credit": S.LOCAL_CLOSED,
        "resume": S.LOCAL_CLOSED,
    },
    S.REMOTE_CLOSING: {
        "write": S.REMOTE_CLOSING,
        "close": S.LOCAL_CLOSED_REMOTE_CLOSING,
        "data": "violation",
        "fin": S.REMOTE_CLOSING,
        "credit": S.REMOTE_CLOSING,
        "resume": S.REMOTE_CLOSED,
    },
    S.REMOTE_CLOSED: {
        "write": S.REMOTE_CLOSED,
        "close": S.CLOSED,
        "data": "violation",
        "fin": S.REMOTE_CLOSED,
        "credit": S.REMOTE_CLOSED,
        "resume": S.REMOTE_CLOSED,
    },
    S.BOTH_CLOSING: {
        "write": S.BOTH_CLOSING,
        "close": S.BOTH_CLOSING,
        "data": "violation",
        "fin": S.BOTH_CLOSING,
        "credit": S.LOCAL_CLOSED_REMOTE_CLOSING,
        "resume": S.LOCAL_CLOSING_REMOTE_CLOSED,
    },
    S.LOCAL_CLOSING_REMOTE_CLOSED: {
        "write": S.LOCAL_CLOSING_REMOTE_CLOSED,
        "close": S.LOCAL_CLOSING_REMOTE_CLOSED,
        "data": "violation",
        "fin": S.LOCAL_CLOSING_REMOTE_CLOSED,
        "credit": S.CLOSED,
        "resume": S.LOCAL_CLOSING_REMOTE_CLOSED,
    },
    S.LOCAL_CLOSED_REMOTE_CLOSING: {
        "write": S.LOCAL_CLOSED_REMOTE_CLOSING,
        "close": S.LOCAL_CLOSED_REMOTE_CLOSING,
        "data": "violation",
        "fin": S.LOCAL_CLOSED_REMOTE_CLOSING,
        "credit": S.LOCAL_CLOSED_REMOTE_CLOSING,
        "resume": S.CLOSED,
    },
    S.CLOSED: {
        "write": S.CLOSED,
        "close": S.CLOSED,
        "data": S.CLOSED,
        "fin": S.CLOSED,
        "credit": S.CLOSED,
        "resume": S.CLOSED,
    },
}
for _state, _row in _WALK.items():
    for _ending in _ENDINGS:
        _row[_ending] = S.CLOSED
# Except the connection's loss where the peer's FIN waits (behind a paused
# reader here): the stream keeps it for its reader (SessionLostTests).
for _state in (S.REMOTE_CLOSING, S.BOTH_CLOSING, S.LOCAL_CLOSED_REMOTE_CLOSING):
    del _WALK[_state]["lost"]


class LifecycleTableTests(SynchronousTestCase):
    """
    The transition table itself: total, consistent with the attributes the
    hot paths read, and the same as the one documented.
    """

    def test_total(self) -> None:
        """
        Every (state, input) pair has exactly one entry, a state or an
        outcome.
        """
        for state in StreamState:
            for event in StreamInput:
                outcome = TRANSITIONS[state, event]
                self.assertIsInstance(outcome, (StreamState, Outcome), (state, event))
        self.assertEqual(len(TRANSITIONS), len(StreamState) * len(StreamInput))

    def test_illegalRaises(self) -> None:
        """
        An input the table marks illegal raises IllegalTransition, so a bug
        in our own code is loud; the others return their outcome.
        """
        illegal = [key for key, outcome in TRANSITIONS.items() if outcome is ILLEGAL]
        self.assertIn((S.OPEN, I.FINISH), illegal)
        self.assertIn((S.CLOSED, I.FIN_DUE), illegal)
        for state, event in illegal:
            self.assertRaises(IllegalTransition, transition, state, event)
        self.assertIs(transition(S.OPEN, I.CLOSE), S.LOCAL_CLOSING)
        self.assertIs(transition(S.CLOSED, I.DATA), IGNORE)
        self.assertIs(transition(S.REMOTE_CLOSED, I.DATA), VIOLATION)

    def test_illegalInputOnStream(self) -> None:
        """
        Driving a real stream with an illegal input (sending a FIN that was
        never queued) raises instead of corrupting its state.
        """
        lone = Lone(S.OPEN)
        self.assertRaises(IllegalTransition, lone.stream._sendFin)
        self.assertIs(lone.stream.state, S.OPEN)
        self.assertEqual(lone.sent(), [])

    def test_derivedAttributes(self) -> None:
        """
        The attributes write and data frames read are what the table says:
        sending where WRITE stays, receiving where DATA stays, FIN queued and
        FIN pending where FIN_DUE and FIN_DELIVERED move; disconnecting is
        the opposite of sending.
        """
        self.assertEqual(
            {s for s in StreamState if s.sending}, {S.OPEN, S.REMOTE_CLOSING, S.REMOTE_CLOSED}
        )
        self.assertEqual(
            {s for s in StreamState if s.receiving}, {S.OPEN, S.LOCAL_CLOSING, S.LOCAL_CLOSED}
        )
        self.assertEqual(
            {s for s in StreamState if s.finQueued},
            {S.LOCAL_CLOSING, S.BOTH_CLOSING, S.LOCAL_CLOSING_REMOTE_CLOSED},
        )
        self.assertEqual(
            {s for s in StreamState if s.finPending},
            {S.REMOTE_CLOSING, S.BOTH_CLOSING, S.LOCAL_CLOSED_REMOTE_CLOSING},
        )
        for state in _GRID:
            self.assertEqual(Lone(state).stream.disconnecting, not state.sending)

    def test_everyStateReachableAndEnds(self) -> None:
        """
        Every state is reachable from OPEN, and CLOSED from every state.
        """
        reached = {S.OPEN}
        frontier = [S.OPEN]
        while frontier:
            state = frontier.pop()
            for event in StreamInput:
                nxt = TRANSITIONS[state, event]
                if isinstance(nxt, StreamState) and nxt not in reached:
                    reached.add(nxt)
                    frontier.append(nxt)
        self.assertEqual(reached, set(StreamState))
        for state in StreamState:
            if state is not S.CLOSED:
                self.assertIs(TRANSITIONS[state, I.RESET], S.CLOSED)
        self.assertIs(TRANSITIONS[S.CLOSED, I.RESET], IGNORE)

    def test_documented(self) -> None:
        """
        docs/state-machines/yamux-stream.md shows the table as it is.
        """
        doc = Path(__file__).resolve().parents[2] / "docs" / "state-machines" / "yamux-stream.md"
        if not doc.exists():
            raise SkipTest("not running from a checkout")
        self.assertIn(renderTable(), doc.read_text(encoding="utf-8"))


class SessionLostTests(SynchronousTestCase):
    """
    The connection of a session goes away while a stream's reader is
    paused: what the peer finished sending is not thrown away.
    """

    def test_finPendingKeptForTheReader(self) -> None:
        """
        A stream whose peer FIN waits behind a paused reader keeps its
        state when the connection is lost, out of the session's streams;
        resumed, its reader gets the end of input, then the stream ends:
        cleanly if our FIN had been sent, else with L{MuxerClosed}.
        """
        for state, ending in [
            (S.LOCAL_CLOSED_REMOTE_CLOSING, ConnectionDone),
            (S.REMOTE_CLOSING, MuxerClosed),
            (S.BOTH_CLOSING, MuxerClosed),
        ]:
            lone = Lone(state)
            lone.session.connectionLost(Failure(ConnectionDone()))
            self.assertIs(lone.stream.state, state, state.name)
            self.assertEqual(lone.session.streams, {}, state.name)
            self.assertEqual((lone.proto.readLost, lone.proto.lost), (0, []), state.name)
            lone.stream.resumeProducing()
            self.assertIs(lone.stream.state, S.CLOSED, state.name)
            self.assertEqual(lone.proto.readLost, 1, state.name)
            self.assertEqual(len(lone.proto.lost), 1, state.name)
            lone.proto.lost[0].trap(ending)

    def test_bufferedDataDelivered(self) -> None:
        """
        Data buffered for a paused reader, followed by the peer's FIN, is
        all delivered after the connection is lost, in order, then the end
        of input; writes meanwhile go nowhere and are not kept.
        """
        session, transport, accepted = lonelySession()
        session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
        stream = accepted[0]
        proto = HalfRecorder()
        stream.setProtocol(proto)
        stream.pauseProducing()
        session.dataReceived(_DATA + encodeHeader(TYPE_DATA, 0, 1, 4) + b"more" + _FIN)
        session.connectionLost(Failure(ConnectionDone()))
        stream.write(b"x" * 1000)
        self.assertEqual(stream._queued, 0)
        self.assertEqual(proto.data, b"")
        stream.resumeProducing()
        self.assertEqual(proto.data, b"datamore")
        self.assertEqual(proto.readLost, 1)
        proto.lost[0].trap(MuxerClosed)

    def test_othersEndAtOnce(self) -> None:
        """
        Streams whose peer has not finished sending end at once with
        L{MuxerClosed}, their buffered data dropped.
        """
        session, transport, accepted = lonelySession()
        session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
        stream = accepted[0]
        proto = HalfRecorder()
        stream.setProtocol(proto)
        stream.pauseProducing()
        session.dataReceived(_DATA)
        session.connectionLost(Failure(ConnectionDone()))
        self.assertIs(stream.state, S.CLOSED)
        proto.lost[0].trap(MuxerClosed)
        stream.resumeProducing()
        self.assertEqual(proto.data, b"")


class StreamLifecycleTests(SynchronousTestCase):
    """
    Every state of a real stream, given every input through its API or the
    wire, ends where the lifecycle says, with the right effects.
    """

    def test_walk(self) -> None:
        """
        From each state (all but the transient DONE), each input leads to
        the state written out in _WALK; a violation sends a protocol-error
        go-away and leaves the stream as it was until the session is lost.
        """
        for state, row in _WALK.items():
            for action, expected in row.items():
                lone = Lone(state)
                _ACTIONS[action](lone)
                where = f"{action} in {state.name}"
                if expected == "violation":
                    self.assertIn(
                        Frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR), lone.sent(), where
                    )
                    self.assertIs(lone.stream.state, state, where)
                else:
                    self.assertIs(lone.stream.state, expected, where)
                    self.assertFalse(lone.transport.disconnecting and action != "lost", where)
                self.assertLessEqual(len(lone.proto.lost), 1, where)
                if lone.stream.state is S.CLOSED:
                    self.assertNotIn(lone.stream.streamID, lone.session.streams, where)
                    if state is not S.CLOSED:
                        self.assertEqual(len(lone.proto.lost), 1, where)
                        lone.proto.lost[0].trap(_ENDINGS.get(action, ConnectionDone))
                else:
                    self.assertIn(lone.stream.streamID, lone.session.streams, where)
                    self.assertEqual(lone.proto.lost, [], where)

    def test_writeIgnoredOnceLocalClosed(self) -> None:
        """
        A write is sent while our direction is open (also after the peer's
        FIN) and dropped without a frame once we closed or the stream ended.
        """
        for state in _WALK:
            lone = Lone(state)
            queued = lone.stream._queued
            lone.stream.write(b"w")
            sent = [f for f in lone.sent() if f.type == TYPE_DATA]
            if state.sending:
                self.assertEqual(sent, [Frame(TYPE_DATA, 0, 1, 1, b"w")], state)
            else:
                self.assertEqual((sent, lone.stream._queued), ([], queued), state)

    def test_closeSendsOneFin(self) -> None:
        """
        loseConnection sends one FIN; calling it again, in any later state,
        sends nothing more.
        """
        lone = Lone(S.OPEN)
        lone.stream.loseConnection()
        self.assertEqual(lone.sent(), [Frame(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0)])
        lone.stream.loseConnection()
        lone.stream.loseWriteConnection()
        self.assertEqual(lone.sent(), [])

    def test_finWaitsForQueue(self) -> None:
        """
        A FIN requested behind queued data is sent right after the last
        byte, when credit lets it go (LOCAL_CLOSING -> LOCAL_CLOSED).
        """
        lone = Lone(S.LOCAL_CLOSING)
        lone.session.dataReceived(_CREDIT)
        self.assertEqual(
            lone.sent(),
            [Frame(TYPE_DATA, 0, 1, 1, b"q"), Frame(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0)],
        )
        self.assertIs(lone.stream.state, S.LOCAL_CLOSED)

    def test_dataAfterRemoteFin(self) -> None:
        """
        Data after the peer's FIN, delivered or not, is a protocol violation
        whatever our own direction is doing: the session goes away.
        """
        for state in (S.REMOTE_CLOSING, S.REMOTE_CLOSED, S.BOTH_CLOSING):
            lone = Lone(state)
            lone.session.dataReceived(_DATA)
            self.assertIn(Frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR), lone.sent())
            self.assertTrue(lone.transport.disconnecting)
            self.assertNotIn(b"data", lone.proto.data)

    def test_repeatedFinIgnored(self) -> None:
        """
        A second FIN from the peer is ignored: the protocol hears of the end
        of its input once.
        """
        lone = Lone(S.REMOTE_CLOSED)
        lone.session.dataReceived(_FIN)
        self.assertEqual(lone.proto.readLost, 1)
        self.assertEqual(lone.sent(), [])
        self.assertFalse(lone.transport.disconnecting)

    def test_resetDuringHalfClose(self) -> None:
        """
        An RST in any half-closed state ends the stream at once with
        StreamReset: queued data and a waiting FIN are dropped, nothing is
        sent back, and the protocol hears once.
        """
        for state in _GRID:
            if state is S.OPEN:
                continue
            lone = Lone(state)
            lone.session.dataReceived(_RST)
            self.assertIs(lone.stream.state, S.CLOSED, state)
            self.assertEqual(lone.sent(), [], state)
            self.assertEqual(lone.stream._queued, 0, state)
            self.assertEqual(len(lone.proto.lost), 1, state)
            lone.proto.lost[0].trap(StreamReset)

    def test_abortDuringHalfClose(self) -> None:
        """
        Aborting a half-closed stream sends RST and gives ConnectionAborted.
        """
        for state in (S.LOCAL_CLOSED, S.REMOTE_CLOSED, S.LOCAL_CLOSING_REMOTE_CLOSED):
            lone = Lone(state)
            lone.stream.abortConnection()
            self.assertEqual(lone.sent(), [Frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0)], state)
            lone.proto.lost[0].trap(ConnectionAborted)

    def test_inputsAfterClose(self) -> None:
        """
        Once ended, a stream ignores everything: writes, closes, aborts (no
        second RST), and late frames that reach it in the same dispatch,
        including a window update (nothing is flushed).
        """
        lone = Lone(S.CLOSED)
        stream = lone.stream
        stream.write(b"late")
        stream.loseConnection()
        stream.abortConnection()
        stream.resumeProducing()
        stream._windowUpdate(DEFAULT_WINDOW)
        stream._dataReceived(b"late")
        stream._remoteFinReceived()
        stream._finish(Failure(StreamReset()))
        self.assertEqual(lone.sent(), [])
        self.assertIs(stream.state, S.CLOSED)
        self.assertEqual(len(lone.proto.lost), 1)
        lone.proto.lost[0].trap(ConnectionAborted)
        self.assertEqual(lone.proto.data, b"")

    def test_windowUpdateAfterCloseOnTheWire(self) -> None:
        """
        A window update for a stream that ended is dropped by the session;
        the session stays up.
        """
        lone = Lone(S.CLOSED)
        lone.session.dataReceived(_CREDIT + _FIN + _DATA)
        self.assertEqual(lone.sent(), [])
        self.assertFalse(lone.transport.disconnecting)

    def test_framesForStreamEndedByOnStream(self) -> None:
        """
        A SYN that carries data and a FIN, for a stream the application
        resets from onStream, reaches the ended stream: the data and the FIN
        are ignored (no violation) and one RST goes back.
        """
        session, transport, _ = lonelySession()
        session._onStream = lambda stream: stream.abortConnection()
        session.dataReceived(encodeHeader(TYPE_DATA, FLAG_SYN | FLAG_FIN, 1, 4) + b"data")
        sent = frames(transport.take())
        self.assertEqual(sent[-1], Frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0))
        self.assertNotIn(TYPE_GO_AWAY, [f.type for f in sent])
        self.assertEqual(session.streams, {})

    def test_doneIsTransient(self) -> None:
        """
        When our FIN was sent first, the protocol's readConnectionLost runs
        in DONE: a write or close there is ignored, and the stream then
        finishes with ConnectionDone.
        """
        seen: list[StreamState] = []

        @implementer(IHalfCloseableProtocol)
        class Late(HalfRecorder):
            def readConnectionLost(self) -> None:
                seen.append(self.transport.state)
                self.transport.write(b"too late")
                self.transport.loseConnection()

        lone = Lone(S.LOCAL_CLOSED)
        late = Late()
        lone.stream.protocol = late
        late.makeConnection(lone.stream)
        lone.session.dataReceived(_FIN)
        self.assertEqual(seen, [S.DONE])
        self.assertIs(lone.stream.state, S.CLOSED)
        self.assertEqual(lone.sent(), [])
        late.lost[0].trap(ConnectionDone)

    def test_abortInDone(self) -> None:
        """
        A protocol may still abort from readConnectionLost in DONE: RST is
        sent and it gets ConnectionAborted, not ConnectionDone.
        """

        @implementer(IHalfCloseableProtocol)
        class Aborter(HalfRecorder):
            def readConnectionLost(self) -> None:
                self.transport.abortConnection()

        lone = Lone(S.LOCAL_CLOSED)
        aborter = Aborter()
        lone.stream.protocol = aborter
        aborter.makeConnection(lone.stream)
        lone.session.dataReceived(_FIN)
        self.assertEqual(lone.sent(), [Frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0)])
        self.assertEqual(len(aborter.lost), 1)
        aborter.lost[0].trap(ConnectionAborted)

    def test_finPendingUntilProtocolSet(self) -> None:
        """
        A FIN that arrives before a protocol is set waits in REMOTE_CLOSING
        and is delivered (REMOTE_CLOSED) by setProtocol.
        """
        session, _, accepted = lonelySession()
        session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_FIN, 1, 0))
        stream = accepted[0]
        self.assertIs(stream.state, S.REMOTE_CLOSING)
        proto = HalfRecorder()
        stream.setProtocol(proto)
        self.assertIs(stream.state, S.REMOTE_CLOSED)
        self.assertEqual(proto.readLost, 1)

    def test_plainProtocolClosesOnFin(self) -> None:
        """
        For a protocol that cannot half-close, FIN_DELIVERED is followed by
        CLOSE: with nothing queued the stream goes through DONE to CLOSED.
        """
        session, transport, accepted = lonelySession()
        session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
        stream = accepted[0]
        proto = Recorder()
        stream.setProtocol(proto)
        session.dataReceived(_FIN)
        self.assertIs(stream.state, S.CLOSED)
        self.assertIn(Frame(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0), frames(transport.take()))
        proto.lost[0].trap(ConnectionDone)


class WastedStreamTests(SynchronousTestCase):
    """
    The rapid-reset defence: streams the peer opens and resets before any
    protocol was agreed, and SYNs we refuse, come out of a budget that
    refills with time.
    """

    def openAndReset(self, session: YamuxSession, first: int, count: int) -> None:
        session.dataReceived(b"".join(
            encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * i + 1, 0)
            + encodeHeader(TYPE_WINDOW_UPDATE, FLAG_RST, 2 * i + 1, 0)
            for i in range(first, first + count)
        ))

    def test_slowResetsAreFine(self) -> None:
        """
        A peer that wastes streams no faster than the refill rate is never
        cut off, however many it wastes in all.
        """
        session, transport, _ = lonelySession(wastedStreamBurst=10, wastedStreamRate=5.0)
        clock = session._clock
        assert isinstance(clock, Clock)
        for n in range(100):
            self.openAndReset(session, 5 * n, 5)
            clock.advance(1.0)
        self.assertEqual(session.wastedStreams, 500)
        self.assertFalse(transport.disconnecting)
        self.assertTrue(session.acceptsStreams)

    def test_burstThenRefill(self) -> None:
        """
        The burst is spent at once; one more wasted stream goes over it
        and the session goes away with a protocol error (flushed, since
        the peer reads).
        """
        session, transport, _ = lonelySession(wastedStreamBurst=10, wastedStreamRate=1.0)
        self.openAndReset(session, 0, 10)
        self.assertFalse(transport.disconnecting)
        self.openAndReset(session, 10, 1)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        goAways = [f for f in frames(bytes(transport.buffer)) if f.type == TYPE_GO_AWAY]
        self.assertEqual(goAways, [Frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR)])

    def test_negotiatedStreamsAreNotWasted(self) -> None:
        """
        A stream reset after a protocol was agreed on it (the node sets
        C{protocolId}) is ordinary use, not waste.
        """
        session, transport, accepted = lonelySession(wastedStreamBurst=2)
        for i in range(20):
            sid = 2 * i + 1
            session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0))
            accepted[-1].protocolId = "/beam/tunnel/1.0.0"
            session.dataReceived(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
        self.assertEqual(session.wastedStreams, 0)
        self.assertFalse(transport.disconnecting)

    def test_refusedSynsAreNotWasted(self) -> None:
        """
        SYNs refused for a limit do not count: a client that opens more
        streams than we allow (a forward with 1,000 concurrent
        connections) gets RSTs for the excess and keeps the streams we
        accepted.
        """
        session, transport, accepted = lonelySession(maxStreams=1, wastedStreamBurst=5, wastedStreamRate=0.0)
        session.dataReceived(b"".join(
            encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * i + 1, 0) for i in range(50)
        ))
        self.assertEqual(session.wastedStreams, 0)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(accepted), 1)
        rsts = [f for f in frames(bytes(transport.buffer)) if f.flags & FLAG_RST]
        self.assertEqual(len(rsts), 49)
