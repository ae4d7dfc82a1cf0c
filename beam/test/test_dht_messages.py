"""
Tests for L{beam.dht.messages}: the kad-dht codec and its limits.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from beam.dht.messages import (
    MAX_ADDRS,
    MAX_CLOSER_PEERS,
    MAX_KEY_BYTES,
    MAX_MESSAGE_SIZE,
    MAX_VALUE_BYTES,
    Message,
    MessageType,
    PeerInfo,
    Record,
    decodeMessage,
    encodeMessage,
)
from beam.errors import InvalidDHTMessage, MessageTooLarge
from beam.identity.multiaddr import Multiaddr
from beam.proto import dht_pb2
from beam.test.dhtutil import fakeInfo, fakePeer


def _raw(**fields: object) -> dht_pb2.Message:
    return dht_pb2.Message(**fields)  # type: ignore[arg-type]


class CodecTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        A message with a record and closer peers decodes to an equal value.
        """
        m = Message(
            MessageType.GET_VALUE, b"/toy/a", Record(b"/toy/a", b"v", "2024-01-01T00:00:00Z"),
            (fakeInfo(1), PeerInfo(fakePeer(2))), clusterLevel=3,
        )
        self.assertEqual(decodeMessage(encodeMessage(m)), m)

    def test_wireCompatible(self) -> None:
        """
        The encoding is the spec's protobuf: the generated class reads it.
        """
        m = Message(MessageType.FIND_NODE, b"key", closerPeers=(fakeInfo(1),))
        pb = dht_pb2.Message()
        pb.ParseFromString(encodeMessage(m))
        self.assertEqual(pb.type, dht_pb2.Message.FIND_NODE)
        self.assertEqual(pb.key, b"key")
        self.assertEqual(pb.closerPeers[0].id, fakePeer(1).bytes)
        self.assertEqual(pb.closerPeers[0].addrs[0], fakeInfo(1).addrs[0].toBytes())

    def test_unknownTypeKept(self) -> None:
        """
        An unknown message type decodes to its number, for the node to refuse.
        """
        m = decodeMessage(_raw(type=42).SerializeToString())
        self.assertEqual(m.type, 42)
        self.assertEqual(decodeMessage(b"").type, MessageType.PUT_VALUE)

    def test_tooManyCloserPeers(self) -> None:
        """
        More than MAX_CLOSER_PEERS peers refuses the message, both ways.
        """
        peers = tuple(fakeInfo(i) for i in range(MAX_CLOSER_PEERS + 1))
        with self.assertRaises(MessageTooLarge):
            encodeMessage(Message(MessageType.FIND_NODE, b"k", closerPeers=peers))
        pb = _raw(type=4)
        for p in peers:
            pb.closerPeers.add(id=p.peer.bytes)
        with self.assertRaises(InvalidDHTMessage):
            decodeMessage(pb.SerializeToString())
        del pb.closerPeers[-1]
        self.assertEqual(len(decodeMessage(pb.SerializeToString()).closerPeers), MAX_CLOSER_PEERS)

    def test_addressLimits(self) -> None:
        """
        A peer with too many addresses, or an address over 256 bytes,
        refuses the message.
        """
        addr = fakeInfo(1).addrs[0].toBytes()
        pb = _raw(type=4)
        pb.closerPeers.add(id=fakePeer(1).bytes, addrs=[addr] * (MAX_ADDRS + 1))
        with self.assertRaises(InvalidDHTMessage):
            decodeMessage(pb.SerializeToString())
        pb = _raw(type=4)
        pb.closerPeers.add(id=fakePeer(1).bytes, addrs=[b"\x04" + b"\x00" * 300])
        with self.assertRaises(InvalidDHTMessage):
            decodeMessage(pb.SerializeToString())

    def test_badEntriesDropped(self) -> None:
        """
        An invalid peer ID drops that peer; an unparseable or duplicate
        address drops that address; the rest of the message stands.
        """
        good = fakeInfo(1).addrs[0].toBytes()
        pb = _raw(type=4)
        pb.closerPeers.add(id=b"\x12\x05nope!", addrs=[good])
        pb.closerPeers.add(id=fakePeer(2).bytes, addrs=[b"\xff\xff\x03junk", good, good])
        m = decodeMessage(pb.SerializeToString())
        self.assertEqual(m.closerPeers, (PeerInfo(fakePeer(2), (Multiaddr(good),)),))

    def test_keyAndValueLimits(self) -> None:
        """
        Keys over 256 bytes and values over 16 KiB are refused, both ways.
        """
        big = b"k" * (MAX_KEY_BYTES + 1)
        for pb in (
            _raw(type=1, key=big),
            _raw(type=0, record=dht_pb2.Record(key=big)),
            _raw(type=0, record=dht_pb2.Record(key=b"k", value=b"v" * (MAX_VALUE_BYTES + 1))),
            _raw(type=0, record=dht_pb2.Record(key=b"k", timeReceived="x" * 100)),
        ):
            with self.assertRaises(InvalidDHTMessage):
                decodeMessage(pb.SerializeToString())
        with self.assertRaises(MessageTooLarge):
            encodeMessage(Message(MessageType.GET_VALUE, big))
        with self.assertRaises(MessageTooLarge):
            encodeMessage(Message(MessageType.PUT_VALUE, b"k", Record(b"k", b"v" * (MAX_VALUE_BYTES + 1))))
        ok = Message(MessageType.PUT_VALUE, b"k" * MAX_KEY_BYTES, Record(b"k", b"v" * MAX_VALUE_BYTES))
        self.assertEqual(decodeMessage(encodeMessage(ok)), ok)

    def test_oversizeRefusedBeforeParsing(self) -> None:
        """
        Data longer than the frame limit is refused without parsing.
        """
        with self.assertRaises(MessageTooLarge):
            decodeMessage(b"\x00" * (MAX_MESSAGE_SIZE + 1))

    def test_notProtobuf(self) -> None:
        """
        Bytes that are not a protobuf raise InvalidDHTMessage.
        """
        for data in (b"\xff", b"\x0a\x05ab", b"\x1a\x02\xff\xff"):
            with self.assertRaises(InvalidDHTMessage):
                decodeMessage(data)


_peers = st.builds(
    lambda n, k: PeerInfo(fakePeer(n), tuple(fakeInfo(n + i).addrs[0] for i in range(k))),
    st.integers(0, 10**6), st.integers(0, 3),
)
_messages = st.builds(
    Message,
    st.sampled_from(list(MessageType)),
    st.binary(max_size=64),
    st.none() | st.builds(Record, st.binary(max_size=64), st.binary(max_size=256)),
    st.lists(_peers, max_size=5).map(tuple),
    st.integers(0, 10),
)


@settings(deadline=None, max_examples=150)
@given(_messages)
def test_roundTripProperty(m: Message) -> None:
    """
    Every message within limits survives encode then decode.
    """
    assert decodeMessage(encodeMessage(m)) == m


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=600))
def test_randomBytesOnlyOurErrors(data: bytes) -> None:
    """
    Random bytes decode or raise InvalidDHTMessage, nothing else.
    """
    try:
        decodeMessage(data)
    except InvalidDHTMessage:
        pass


@settings(deadline=None, max_examples=300)
@given(_messages, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 10**6), st.binary(max_size=8))
def test_mutatedMessagesOnlyOurErrors(m: Message, flips: list[tuple[int, int]], cut: int, junk: bytes) -> None:
    """
    Valid encodings with flipped bytes, truncated and extended, decode or
    raise InvalidDHTMessage, and what decodes re-encodes.
    """
    data = bytearray(encodeMessage(m))
    for pos, val in flips:
        if data:
            data[pos % len(data)] = val
    data = data[: cut % (len(data) + 1)] + junk
    try:
        out = decodeMessage(bytes(data))
    except InvalidDHTMessage:
        return
    assert isinstance(out, Message)
    if out.type in set(MessageType):
        decodeMessage(encodeMessage(out))
