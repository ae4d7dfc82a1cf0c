"""
Deterministic tests of the tunnel core: the request/response codec (with
hypothesis), the access policy, the splice joining two transports, and the
host's request handling, all on in-memory transports and a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from beam.errors import DecodeError, MessageTooLarge, MuxerClosed, ProtocolError, StreamReset
from beam.identity.keys import Identity
from beam.proto import tunnel_pb2
from beam.tunnel.access import PUBLIC, AccessPolicy
from beam.tunnel.host import ServiceExists, ServiceSpec, TunnelHost
from beam.tunnel.protocol import (
    MAX_MESSAGE_SIZE,
    TUNNEL_PROTOCOL,
    AccessDenied,
    BadTunnelRequest,
    InvalidTunnelMessage,
    RequestReader,
    ResponseReader,
    ServiceNotFound,
    ServiceNotOpenable,
    ServiceUnavailable,
    TunnelRefused,
    TunnelRequest,
    TunnelResponse,
    chooseCompression,
    decodeRequest,
    decodeResponse,
    encodeRequest,
    encodeResponse,
    refusalFor,
)
from beam.tunnel.splice import Splice, TunnelStats
from beam.encoding.varint import encode_uvarint

SETTINGS = settings(deadline=None, max_examples=200)

requests = st.builds(
    TunnelRequest,
    service=st.text(max_size=40),
    kind=st.sampled_from(["tcp", "udp"]),
    compression=st.lists(st.sampled_from(["lz4", "zstd", "x"]), max_size=4).map(tuple),
    secret=st.binary(max_size=64),
)
responses = st.builds(
    TunnelResponse,
    status=st.sampled_from([0, 1, 2, 3, 4]),
    message=st.text(max_size=100),
    compression=st.sampled_from(["", "lz4"]),
    service=st.sampled_from(["", "web", "3000"]),
)


def splitAt(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


# -- codec ---------------------------------------------------------------


class CodecTests(SynchronousTestCase):
    @SETTINGS
    @given(requests, st.lists(st.integers(min_value=0), max_size=6), st.binary(max_size=50))
    def test_requestRoundTrip(self, request, cuts, tail):
        """
        A request fed in any split is parsed back exactly once, and the
        bytes after it are kept as leftover.
        """
        reader = RequestReader()
        got = []
        for piece in splitAt(encodeRequest(request) + tail, cuts):
            result = reader.feed(piece)
            if result is not None:
                got.append(result)
        self.assertEqual(got, [request])
        self.assertEqual(reader.leftover, tail)

    @SETTINGS
    @given(responses, st.lists(st.integers(min_value=0), max_size=6), st.binary(max_size=50))
    def test_responseRoundTrip(self, response, cuts, tail):
        """
        A response fed in any split is parsed back, leftover kept (bytes
        the service sent right after the host's answer).
        """
        reader = ResponseReader()
        got = []
        for piece in splitAt(encodeResponse(response) + tail, cuts):
            result = reader.feed(piece)
            if result is not None:
                got.append(result)
        self.assertEqual(got, [response])
        self.assertEqual(reader.leftover, tail)

    @SETTINGS
    @given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=4))
    def test_fuzzRequestReader(self, data, cuts):
        """
        Arbitrary bytes either parse, wait for more, or raise a
        L{ProtocolError}, which then sticks; never another exception.
        """
        reader = RequestReader()
        error = None
        for piece in splitAt(data, cuts):
            try:
                reader.feed(piece)
            except ProtocolError as e:
                error = e
                break
        if error is not None:
            self.assertRaises(type(error), reader.feed, b"more")

    @SETTINGS
    @given(requests, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
    def test_fuzzMutatedRequest(self, request, position, value):
        """
        A valid request with one byte changed parses to some valid request
        or raises a L{ProtocolError}.
        """
        data = bytearray(encodeRequest(request))
        data[position % len(data)] = value
        reader = RequestReader()
        try:
            result = reader.feed(bytes(data))
        except ProtocolError:
            return
        if result is not None:
            self.assertIn(result.kind, ("tcp", "udp"))

    @SETTINGS
    @given(st.binary(max_size=300))
    def test_fuzzResponseReader(self, data):
        """
        Arbitrary bytes fed to the response reader never raise anything
        but a L{ProtocolError}.
        """
        try:
            ResponseReader().feed(data)
        except ProtocolError:
            pass

    def test_oversizeRefusedBeforeBuffering(self):
        """
        A length beyond the limit is refused as soon as the length prefix
        is complete, before any of the body arrives.
        """
        reader = RequestReader()
        self.assertRaises(MessageTooLarge, reader.feed, encode_uvarint(MAX_MESSAGE_SIZE + 1))
        self.assertRaises(MessageTooLarge, reader.feed, b"x")

    def test_limitIsInclusive(self):
        """
        A message of exactly the limit is accepted (then judged by its
        content).
        """
        reader = RequestReader()
        body = tunnel_pb2.TunnelRequest(service="s", secret=b"k" * 1000).SerializeToString()
        body += b"\x12\x00" * ((MAX_MESSAGE_SIZE - len(body)) // 2)
        body = body[:MAX_MESSAGE_SIZE]
        self.assertEqual(reader.feed(encode_uvarint(len(body)) + body[:-1]), None)

    def test_unknownKind(self):
        """
        A request with a kind we do not know is invalid.
        """
        body = tunnel_pb2.TunnelRequest(service="s", kind=7).SerializeToString()
        self.assertRaises(InvalidTunnelMessage, decodeRequest, body)

    def test_badUTF8(self):
        """
        A service name that is not UTF-8 is invalid, not a crash.
        """
        body = b"\x0a\x02\xff\xfe"
        self.assertRaises(InvalidTunnelMessage, decodeRequest, body)

    def test_overlongFieldsRefused(self):
        """
        Field limits apply on both ends: encoding refuses them (a
        programming error), decoding reports the peer.
        """
        self.assertRaises(ValueError, encodeRequest, TunnelRequest(service="s" * 256))
        self.assertRaises(ValueError, encodeRequest, TunnelRequest(kind="sctp"))
        body = tunnel_pb2.TunnelRequest(service="s" * 256).SerializeToString()
        self.assertRaises(InvalidTunnelMessage, decodeRequest, body)
        body = tunnel_pb2.TunnelRequest(compression=["lz4"] * 9).SerializeToString()
        self.assertRaises(InvalidTunnelMessage, decodeRequest, body)

    def test_responseService(self):
        """
        The host names the service it opened; a peer naming one longer
        than a service name may be is refused.
        """
        response = ResponseReader().feed(encodeResponse(TunnelResponse(service="web")))
        self.assertEqual(response.service, "web")
        body = tunnel_pb2.TunnelResponse(service="x" * 1000).SerializeToString()
        self.assertRaises(InvalidTunnelMessage, decodeResponse, body)

    def test_longResponseMessageShortened(self):
        """
        An over-long refusal message is cut so the response always fits
        the limit the client enforces.
        """
        data = encodeResponse(TunnelResponse(status=3, message="é" * 10000))
        response = ResponseReader().feed(data)
        self.assertEqual(response.status, 3)
        self.assertLessEqual(len(data), MAX_MESSAGE_SIZE)

    def test_truncatedStream(self):
        """
        A stream that ends inside the message is reported by C{finish}.
        """
        reader = RequestReader()
        reader.feed(encodeRequest(TunnelRequest(service="web"))[:3])
        self.assertRaises(DecodeError, reader.finish)

    def test_refusals(self):
        """
        Each refusal status maps to its error class with the host's
        message; an unknown status is a plain L{TunnelRefused}; and a
        refusal travels as its status.  C{NOT_FOUND} (no such service, or
        one you may not open) raises L{ServiceNotOpenable}, which is both
        a L{ServiceNotFound} and an L{AccessDenied}.
        """
        notFound = refusalFor(ResponseReader().feed(encodeResponse(TunnelResponse.refusing(ServiceNotFound("x")))))
        self.assertIs(type(notFound), ServiceNotOpenable)
        self.assertIsInstance(notFound, ServiceNotFound)
        self.assertIsInstance(notFound, AccessDenied)
        for cls in (ServiceNotOpenable, AccessDenied, ServiceUnavailable, BadTunnelRequest):
            response = TunnelResponse.refusing(cls("why"))
            self.assertFalse(response.ok)
            error = refusalFor(ResponseReader().feed(encodeResponse(response)))
            self.assertIs(type(error), cls)
            self.assertEqual(str(error), "why")
        error = refusalFor(TunnelResponse(status=99))
        self.assertIs(type(error), TunnelRefused)
        self.assertEqual(str(refusalFor(TunnelResponse(status=tunnel_pb2.FORBIDDEN))),
                         "The host does not let you use this service.")

    def test_chooseCompression(self):
        """
        The first offered method we allow wins; none allowed means none.
        """
        self.assertEqual(chooseCompression(["zstd", "lz4"], ["lz4"]), "lz4")
        self.assertEqual(chooseCompression(["lz4"], []), "")
        self.assertEqual(chooseCompression([], ["lz4"]), "")


# -- access --------------------------------------------------------------


class AccessPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.friend = Identity.fromSeed(b"f" * 32).peerID
        self.stranger = Identity.fromSeed(b"s" * 32).peerID

    def test_public(self):
        """
        No allow list and no secret admits anyone, with or without a
        secret.
        """
        self.assertTrue(PUBLIC.isPublic)
        PUBLIC.check(self.stranger, b"")
        PUBLIC.check(self.stranger, b"whatever")

    def test_allowList(self):
        """
        An allow list admits its peers and refuses others, saying why.
        """
        policy = AccessPolicy(allow=frozenset({self.friend}))
        self.assertFalse(policy.isPublic)
        policy.check(self.friend)
        e = self.assertRaises(AccessDenied, policy.check, self.stranger, b"guess")
        self.assertEqual(str(e), "not on the allow list")

    def test_secret(self):
        """
        A secret admits its holder; a wrong or missing one is refused.
        """
        policy = AccessPolicy(secret=b"k1")
        policy.check(self.stranger, b"k1")
        self.assertEqual(str(self.assertRaises(AccessDenied, policy.check, self.stranger, b"k2")), "wrong secret")
        self.assertEqual(str(self.assertRaises(AccessDenied, policy.check, self.stranger, b"")),
                         "a secret is required")

    def test_either(self):
        """
        With both an allow list and a secret, either admits.
        """
        policy = AccessPolicy(allow=[self.friend], secret=b"k")
        policy.check(self.friend, b"")
        policy.check(self.stranger, b"k")
        self.assertRaises(AccessDenied, policy.check, self.stranger, b"")


# -- splice --------------------------------------------------------------


class FakeTransport:
    """
    A transport recording what the splice does to it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.written = bytearray()
        self.writeClosed = False
        self.closed = False
        self.aborted = False
        self.paused = False
        self.producer: Any = None
        self.protocol: Any = None
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        assert not self.writeClosed and not self.aborted, f"{self.name}: write after close"
        self.written += data

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def loseConnection(self) -> None:
        self.closed = True

    def abortConnection(self) -> None:
        self.aborted = True

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert self.producer is None
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def connect(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    def lose(self, reason: Failure) -> None:
        self.protocol.connectionLost(reason)


class SpliceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ended: list[Splice] = []
        self.stats = TunnelStats()
        self.splice = Splice(self.stats, onEnd=self.ended.append)
        self.tcp = FakeTransport("tcp")
        self.stream = FakeTransport("stream")
        self.tcp.connect(self.splice.local)
        self.stream.connect(self.splice.remote)

    def test_halfCloseable(self):
        """
        Both sides are half-closeable protocols, so TCP end-of-file and
        stream FIN arrive as C{readConnectionLost}.
        """
        self.assertTrue(IHalfCloseableProtocol.providedBy(self.splice.local))
        self.assertTrue(IHalfCloseableProtocol.providedBy(self.splice.remote))

    def test_localPausedUntilStart(self):
        """
        The TCP side pauses its socket when connected; L{Splice.start}
        registers each transport as the other's producer and resumes it.
        """
        self.assertTrue(self.tcp.paused)
        self.stream.paused = True
        self.splice.start()
        self.assertFalse(self.tcp.paused)
        self.assertFalse(self.stream.paused)
        self.assertIsNotNone(self.tcp.producer)
        self.assertIsNotNone(self.stream.producer)
        self.assertEqual((self.stats.active, self.stats.total), (1, 1))

    def test_bytesBothWays(self):
        """
        Bytes cross in both directions and are counted.
        """
        self.splice.start()
        self.splice.local.dataReceived(b"up")
        self.splice.remote.dataReceived(b"down!")
        self.assertEqual(bytes(self.stream.written), b"up")
        self.assertEqual(bytes(self.tcp.written), b"down!")
        self.assertEqual((self.stats.bytesOut, self.stats.bytesIn), (2, 5))

    def test_backpressure(self):
        """
        Each side's registered producer pauses the other side's reading,
        lazily: the side stops reading only when data arrives while it is
        paused (that chunk is still passed on), and resumes once resumed.
        Stopping the producer is left to the splice.
        """
        self.splice.start()
        self.tcp.producer.pauseProducing()
        self.assertFalse(self.stream.paused)
        self.splice.remote.dataReceived(b"one more")
        self.assertEqual(bytes(self.tcp.written), b"one more")
        self.assertTrue(self.stream.paused)
        self.tcp.producer.resumeProducing()
        self.assertFalse(self.stream.paused)
        self.stream.producer.pauseProducing()
        self.splice.local.dataReceived(b"x")
        self.assertTrue(self.tcp.paused)
        self.stream.producer.stopProducing()
        self.assertFalse(self.tcp.closed or self.tcp.aborted)

    def test_resumeWithoutStopIsFree(self):
        """
        A pause and resume with no data in between never touch the
        transport (no system calls for idle sockets).
        """
        self.splice.start()
        calls = []
        self.tcp.pauseProducing = lambda: calls.append("pause")  # type: ignore[method-assign]
        self.tcp.resumeProducing = lambda: calls.append("resume")  # type: ignore[method-assign]
        self.stream.producer.pauseProducing()
        self.stream.producer.resumeProducing()
        self.assertEqual(calls, [])

    def test_noResumeAfterEOF(self):
        """
        A TCP socket whose input ended is not resumed again (Twisted
        would report end-of-file twice).
        """
        self.splice.start()
        self.stream.producer.pauseProducing()
        self.splice.local.dataReceived(b"x")
        self.assertTrue(self.tcp.paused)
        self.splice.local.readConnectionLost()
        self.stream.producer.resumeProducing()
        self.assertTrue(self.tcp.paused)

    def test_halfCloseFromTCP(self):
        """
        TCP end-of-file half-closes the stream; data still flows the other
        way; the stream's FIN then shuts TCP's write side, and with both
        directions done the TCP connection is closed.
        """
        self.splice.start()
        self.splice.local.readConnectionLost()
        self.assertTrue(self.stream.writeClosed)
        self.splice.remote.dataReceived(b"reply")
        self.assertEqual(bytes(self.tcp.written), b"reply")
        self.assertFalse(self.tcp.closed)
        self.splice.remote.readConnectionLost()
        self.assertTrue(self.tcp.writeClosed)
        self.splice.local.writeConnectionLost()
        self.assertTrue(self.tcp.closed)
        self.tcp.lose(Failure(ConnectionDone()))
        self.stream.lose(Failure(ConnectionDone()))
        self.assertEqual(self.ended, [self.splice])
        self.assertFalse(self.stream.aborted or self.tcp.aborted)
        self.assertEqual(self.stats.active, 0)

    def test_halfCloseFromStream(self):
        """
        A stream FIN shuts TCP's write side while TCP input still flows.
        """
        self.splice.start()
        self.splice.remote.readConnectionLost()
        self.assertTrue(self.tcp.writeClosed)
        self.assertFalse(self.stream.writeClosed)
        self.splice.local.dataReceived(b"more")
        self.assertEqual(bytes(self.stream.written), b"more")

    def test_tcpAbortResetsStream(self):
        """
        A TCP connection lost uncleanly resets the stream; teardown
        happens once both are gone, exactly once.
        """
        self.splice.start()
        self.tcp.lose(Failure(ConnectionLost()))
        self.assertTrue(self.stream.aborted)
        self.assertEqual(self.ended, [])
        self.stream.lose(Failure(ConnectionAborted()))
        self.stream.lose(Failure(ConnectionAborted()))
        self.assertEqual(self.ended, [self.splice])
        self.assertEqual(self.stats.active, 0)

    def test_streamResetAbortsTCP(self):
        """
        A stream reset aborts the TCP connection (not a graceful close).
        """
        self.splice.start()
        self.stream.lose(Failure(StreamReset()))
        self.assertTrue(self.tcp.aborted)
        self.assertFalse(self.tcp.closed)

    def test_streamCleanEndClosesTCP(self):
        """
        A stream that ended cleanly closes TCP gracefully (flushing).
        """
        self.splice.start()
        self.stream.lose(Failure(ConnectionDone()))
        self.assertTrue(self.tcp.closed)
        self.assertFalse(self.tcp.aborted)

    def test_streamErrorAfterFinClosesTCP(self):
        """
        A stream that ends with an error after its FIN was passed on (its
        connection went away, or a reset after the FIN) closes TCP
        gracefully: what TCP still buffers reaches the app.
        """
        self.splice.start()
        self.splice.remote.readConnectionLost()
        self.assertTrue(self.tcp.writeClosed)
        for reason in (MuxerClosed(), StreamReset()):
            self.setUp()
            self.splice.start()
            self.splice.remote.readConnectionLost()
            self.stream.lose(Failure(reason))
            self.assertTrue(self.tcp.closed)
            self.assertFalse(self.tcp.aborted)

    def test_tcpGoneWhileStreamOpenResets(self):
        """
        TCP gone (even cleanly) while the stream may still bring data
        resets the stream, as TCP itself answers data for a closed socket.
        """
        self.splice.start()
        self.tcp.lose(Failure(ConnectionDone()))
        self.assertTrue(self.stream.aborted)

    def test_lostBeforeStart(self):
        """
        A side lost before L{Splice.start} is propagated by it.
        """
        self.tcp.lose(Failure(ConnectionLost()))
        self.assertFalse(self.stream.aborted)
        self.splice.start()
        self.assertTrue(self.stream.aborted)

    def test_finBeforeStart(self):
        """
        A stream FIN that arrived before start is passed on at start.
        """
        self.splice.remote.readConnectionLost()
        self.assertFalse(self.tcp.writeClosed)
        self.splice.start()
        self.assertTrue(self.tcp.writeClosed)

    def test_abort(self):
        """
        L{Splice.abort} aborts both sides.
        """
        self.splice.start()
        self.splice.abort()
        self.assertTrue(self.tcp.aborted and self.stream.aborted)


# -- the host's request handling ----------------------------------------


class FakeNode:
    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}
        self.peerID = Identity.fromSeed(b"h" * 32).peerID

    def setStreamHandler(self, proto: str, handler: Any) -> None:
        self.handlers[proto] = handler

    def removeStreamHandler(self, proto: str) -> None:
        self.handlers.pop(proto, None)


class FakeConnection:
    def __init__(self, peer: Any) -> None:
        self.remotePeer = peer


class HostRequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.node = FakeNode()
        self.host = TunnelHost(self.clock, self.node, requestTimeout=10.0)
        self.host.startService()
        self.peer = Identity.fromSeed(b"p" * 32).peerID

    def openStream(self) -> tuple[Any, FakeTransport]:
        proto = self.node.handlers[TUNNEL_PROTOCOL]()
        stream = FakeTransport("stream")
        stream.connection = FakeConnection(self.peer)  # type: ignore[attr-defined]
        stream.setProtocol = stream.connect  # type: ignore[attr-defined]
        stream.connect(proto)
        return proto, stream

    def response(self, stream: FakeTransport) -> TunnelResponse:
        return ResponseReader().feed(bytes(stream.written))

    def test_registersHandler(self):
        """
        Starting registers the tunnel protocol; stopping removes it.
        """
        self.assertIn(TUNNEL_PROTOCOL, self.node.handlers)
        self.host.stopService()
        self.assertNotIn(TUNNEL_PROTOCOL, self.node.handlers)

    def test_notFound(self):
        """
        A request for an unknown service is answered NOT_FOUND, saying no
        such service may be opened on this host, and the stream closed.
        """
        proto, stream = self.openStream()
        proto.dataReceived(encodeRequest(TunnelRequest(service="nope")))
        response = self.response(stream)
        self.assertEqual(response.status, tunnel_pb2.NOT_FOUND)
        self.assertEqual(response.message, f"no service 'nope' that you may open on {self.node.peerID}")
        self.assertTrue(stream.closed)
        self.assertFalse(stream.paused)

    def test_noServicesAtAll(self):
        """
        A request for the default service of a host exposing nothing is
        answered NOT_FOUND.
        """
        proto, stream = self.openStream()
        proto.dataReceived(encodeRequest(TunnelRequest()))
        response = self.response(stream)
        self.assertEqual((response.status, response.message),
                         (tunnel_pb2.NOT_FOUND, f"no service that you may open on {self.node.peerID}"))

    def refusalOf(self, request: TunnelRequest) -> tuple[int, str]:
        proto, stream = self.openStream()
        proto.dataReceived(encodeRequest(request))
        response = self.response(stream)
        self.assertTrue(stream.closed)
        return response.status, response.message

    def test_forbiddenLooksNotFound(self):
        """
        A request refused by the policy (wrong secret, no secret, not on the
        allow list) is answered exactly like one for a service that does
        not exist; the refusal is counted and the peer's bytes after it are
        discarded.
        """
        self.host.expose(ServiceSpec.forPort(3000, policy=AccessPolicy(secret=b"k")))
        self.host.expose(ServiceSpec.forPort(3001, policy=AccessPolicy(allow=[self.node.peerID])))
        proto, stream = self.openStream()
        proto.dataReceived(encodeRequest(TunnelRequest(service="3000", secret=b"bad")) + b"junk")
        proto.dataReceived(b"more junk")
        first = self.response(stream)
        unknown = self.refusalOf(TunnelRequest(service="nope"))
        self.assertEqual((first.status, first.message), (tunnel_pb2.NOT_FOUND, unknown[1].replace("'nope'", "'3000'")))
        self.assertTrue(stream.closed)
        forbidden = [
            self.refusalOf(TunnelRequest(service="3000", secret=b"bad")),
            self.refusalOf(TunnelRequest(service="3000")),
            self.refusalOf(TunnelRequest(service="3001")),
            self.refusalOf(TunnelRequest(service="3001", secret=b"k")),
        ]
        for name, answer in zip(["3000", "3000", "3001", "3001"], forbidden):
            self.assertEqual(answer, (tunnel_pb2.NOT_FOUND, unknown[1].replace("'nope'", repr(name))))
        self.assertEqual(self.host.stats["3000"].refused, 3)  # with the first
        self.assertEqual(self.host.stats["3001"].refused, 2)
        self.assertNotIn("nope", self.host.stats)

    def test_refusalLogsTheReason(self):
        """
        The host's log, unlike the answer, says why a private service was
        refused.
        """
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.host.expose(ServiceSpec.forPort(3000, policy=AccessPolicy(secret=b"k")))
        self.refusalOf(TunnelRequest(service="3000", secret=b"bad"))
        self.refusalOf(TunnelRequest(service="nope"))
        reasons = [(e.get("service"), e.get("reason")) for e in events if "reason" in e]
        self.assertEqual(reasons, [("3000", "wrong secret"), ("nope", "no such service")])

    def test_wrongKind(self):
        """
        A UDP request for a TCP service the peer may open is a bad request.
        """
        self.host.expose(ServiceSpec.forPort(3000))
        response = self.refusalOf(TunnelRequest(kind="udp"))
        self.assertEqual(response, (tunnel_pb2.BAD_REQUEST, "service '3000' is TCP, not UDP"))

    def test_accessBeforeKind(self):
        """
        A request of the wrong kind for a private service the peer may not
        open is refused as not found: the kind is not revealed.  With the
        secret, the mismatch is reported.
        """
        self.host.expose(ServiceSpec.forPort(3000, policy=AccessPolicy(secret=b"k")))
        self.assertEqual(
            self.refusalOf(TunnelRequest(service="3000", kind="udp")),
            (tunnel_pb2.NOT_FOUND, f"no service '3000' that you may open on {self.node.peerID}"),
        )
        self.assertEqual(
            self.refusalOf(TunnelRequest(service="3000", kind="udp", secret=b"k")),
            (tunnel_pb2.BAD_REQUEST, "service '3000' is TCP, not UDP"),
        )

    def test_admittedToPrivate(self):
        """
        A peer on the allow list, or holding the secret, passes (a probe
        answers OK).
        """
        self.host.expose(ServiceSpec.forPort(3000, policy=AccessPolicy(secret=b"k")))
        self.host.expose(ServiceSpec.forPort(3001, policy=AccessPolicy(allow=[self.peer])))
        for request in (TunnelRequest(service="3000", secret=b"k", probe=True),
                        TunnelRequest(service="3001", probe=True)):
            self.assertEqual(self.refusalOf(request)[0], tunnel_pb2.OK)

    def test_defaultIsFirstAdmitted(self):
        """
        The default service (C{""}) is the first one exposed that the peer
        may open: a stranger skips private services.
        """
        self.host.expose(ServiceSpec.forPort(3000, policy=AccessPolicy(secret=b"k")))
        self.host.expose(ServiceSpec.forPort(3001, kind="udp"))
        self.assertEqual(self.refusalOf(TunnelRequest(probe=True)),
                         (tunnel_pb2.BAD_REQUEST, "service '3001' is UDP, not TCP"))
        self.assertEqual(self.refusalOf(TunnelRequest(probe=True, secret=b"k"))[0], tunnel_pb2.OK)

    def test_publicServices(self):
        """
        L{TunnelHost.publicServices} lists only the services anyone may
        open, in the order exposed.
        """
        self.host.expose(ServiceSpec.forPort(3000))
        self.host.expose(ServiceSpec.forPort(3001, policy=AccessPolicy(secret=b"k")))
        self.host.expose(ServiceSpec.forPort(3002, policy=AccessPolicy(allow=[self.peer])))
        self.host.expose(ServiceSpec.forPort(3003))
        self.assertEqual(self.host.publicServices, ["3000", "3003"])

    def test_garbage(self):
        """
        Bytes that are not a request get BAD_REQUEST, no traceback.
        """
        proto, stream = self.openStream()
        proto.dataReceived(encode_uvarint(MAX_MESSAGE_SIZE * 2))
        response = self.response(stream)
        self.assertEqual(response.status, tunnel_pb2.BAD_REQUEST)
        self.assertTrue(stream.closed)

    def test_requestTimeout(self):
        """
        A stream that does not send its request within the timeout is
        reset; one that does is not.
        """
        proto, stream = self.openStream()
        self.clock.advance(9.9)
        self.assertFalse(stream.aborted)
        self.clock.advance(0.2)
        self.assertTrue(stream.aborted)
        proto2, stream2 = self.openStream()
        proto2.dataReceived(encodeRequest(TunnelRequest(service="x")))
        self.clock.advance(20)
        self.assertFalse(stream2.aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_finBeforeRequest(self):
        """
        A stream that ends before its request is closed and forgotten.
        """
        proto, stream = self.openStream()
        proto.readConnectionLost()
        self.assertTrue(stream.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_exposeTwice(self):
        """
        Exposing two services of one name is an error; unexposing returns
        the spec and forgets it.
        """
        spec = ServiceSpec.forPort(5432, name="db")
        self.host.expose(spec)
        self.assertRaises(ServiceExists, self.host.expose, ServiceSpec.forPort(5433, name="db"))
        self.assertIs(self.host.unexpose("db"), spec)
        self.assertRaises(ServiceNotFound, self.host.unexpose, "db")

    def test_defaultIsFirstExposed(self):
        """
        The service C{""} is the first one exposed.
        """
        first = ServiceSpec.forPort(3000)
        self.host.expose(first)
        self.host.expose(ServiceSpec.forPort(5432, name="db"))
        self.assertIs(self.host.lookup(""), first)

    def test_specValidation(self):
        """
        A spec with a bad port or kind is refused when made.
        """
        self.assertRaises(ValueError, ServiceSpec, "x", "tcp", "127.0.0.1", 0)
        self.assertRaises(ValueError, ServiceSpec, "x", "sctp", "127.0.0.1", 80)
        self.assertEqual(ServiceSpec.forPort(8080).name, "8080")
