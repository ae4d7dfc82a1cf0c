"""
The kad-dht wire messages, as plain values, and their protobuf codec.

The protobuf classes (L{beam.proto.dht_pb2}) accept anything that parses;
the rest of the DHT works on the frozen values defined here, which
L{decodeMessage} only builds from messages within our limits.  Decoding
never raises anything but L{InvalidDHTMessage} (a L{DecodeError}) or
L{MessageTooLarge}, so a hostile peer cannot make an adapter see a traceback.

Limits follow what honest peers send: a response names at most
L{MAX_CLOSER_PEERS} peers, each with at most L{MAX_ADDRS} addresses of at
most L{MAX_ADDR_BYTES}; keys are at most L{MAX_KEY_BYTES} and values at most
L{MAX_VALUE_BYTES}.  Exceeding a count or size refuses the whole message; a
single address we cannot parse (a multiaddr protocol newer than ours, say) is
dropped, because refusing the message would cut us off from peers that
simply know more protocols.  A peer entry with an invalid peer ID is dropped
for the same reason.

The protocol is C{/beam/kad/1.0.0}: each message travels uvarint-length
prefixed (L{beam.encoding.framing}), at most L{MAX_MESSAGE_SIZE} bytes.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

import attrs

from beam.errors import (
    InvalidDHTMessage,
    InvalidMultiaddr,
    InvalidPeerID,
    MessageTooLarge,
)
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.proto import dht_pb2

PROTOCOL_ID: Final = "/beam/kad/1.0.0"
MAX_MESSAGE_SIZE: Final = 64 * 1024
MAX_CLOSER_PEERS: Final = 40
MAX_ADDRS: Final = 16
MAX_ADDR_BYTES: Final = 256
MAX_KEY_BYTES: Final = 256
MAX_VALUE_BYTES: Final = 16 * 1024
_MAX_TIME_RECEIVED: Final = 64


class MessageType(IntEnum):
    """
    The kad-dht message types (values as on the wire).
    """

    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


@attrs.frozen
class PeerInfo:
    """
    A peer and the addresses it may be reached at (possibly none: the
    network adapter may know them from elsewhere).
    """

    peer: PeerID
    addrs: tuple[Multiaddr, ...] = ()


@attrs.frozen
class Record:
    """
    A DHT record: an opaque value under a key.  C{timeReceived} is the
    RFC 3339 text some implementations fill in; we carry it but never trust it.
    """

    key: bytes
    value: bytes
    timeReceived: str = ""


@attrs.frozen
class Message:
    """
    One kad-dht request or response.

    @ivar type: a L{MessageType}, or another int a peer sent (proto3 enums
        are open; L{beam.dht.kad.KademliaNode.handleRequest} refuses unknown
        types rather than the decoder).
    """

    type: int
    key: bytes = b""
    record: Record | None = None
    closerPeers: tuple[PeerInfo, ...] = ()
    clusterLevel: int = 0


def _peerToProto(info: PeerInfo, out: dht_pb2.Message.Peer) -> None:
    out.id = info.peer.bytes
    out.addrs.extend(a.toBytes() for a in info.addrs[:MAX_ADDRS])


def encodeMessage(message: Message) -> bytes:
    """
    The protobuf encoding of C{message}.

    @raise MessageTooLarge: it would exceed our own limits, which we hold
        ourselves to so that peers with the same limits accept what we send.
    """
    if len(message.closerPeers) > MAX_CLOSER_PEERS:
        raise MessageTooLarge(f"more than {MAX_CLOSER_PEERS} closer peers")
    if len(message.key) > MAX_KEY_BYTES:
        raise MessageTooLarge(f"key longer than {MAX_KEY_BYTES} bytes")
    pb = dht_pb2.Message()
    pb.type = int(message.type)
    if message.key:
        pb.key = message.key
    if message.clusterLevel:
        pb.clusterLevelRaw = message.clusterLevel
    rec = message.record
    if rec is not None:
        if len(rec.key) > MAX_KEY_BYTES or len(rec.value) > MAX_VALUE_BYTES:
            raise MessageTooLarge("record exceeds the key or value limit")
        pb.record.key = rec.key
        pb.record.value = rec.value
        if rec.timeReceived:
            pb.record.timeReceived = rec.timeReceived
    for info in message.closerPeers:
        _peerToProto(info, pb.closerPeers.add())
    data = pb.SerializeToString()
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return data


def _peerFromProto(pb: dht_pb2.Message.Peer) -> PeerInfo | None:
    if len(pb.addrs) > MAX_ADDRS:
        raise InvalidDHTMessage(f"a peer with more than {MAX_ADDRS} addresses")
    try:
        peer = PeerID(pb.id)
    except InvalidPeerID:
        return None
    addrs: list[Multiaddr] = []
    for raw in pb.addrs:
        if len(raw) > MAX_ADDR_BYTES:
            raise InvalidDHTMessage(f"an address longer than {MAX_ADDR_BYTES} bytes")
        try:
            addr = Multiaddr.fromBytes(raw)
        except InvalidMultiaddr:
            continue
        if addr not in addrs:
            addrs.append(addr)
    return PeerInfo(peer, tuple(addrs))


def decodeMessage(data: bytes) -> Message:
    """
    Parse one message (the payload of one length-prefixed frame).

    @raise MessageTooLarge: C{data} is longer than L{MAX_MESSAGE_SIZE}.
    @raise InvalidDHTMessage: it is not a protobuf C{Message} within our limits.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    pb = dht_pb2.Message()
    try:
        pb.ParseFromString(bytes(data))
    except Exception as e:  # protobuf's own DecodeError, and RuntimeWarnings/ValueErrors
        raise InvalidDHTMessage(f"malformed DHT message: {e}") from None
    if len(pb.key) > MAX_KEY_BYTES:
        raise InvalidDHTMessage(f"key longer than {MAX_KEY_BYTES} bytes")
    if len(pb.closerPeers) > MAX_CLOSER_PEERS:
        raise InvalidDHTMessage(f"more than {MAX_CLOSER_PEERS} closer peers")
    record: Record | None = None
    if pb.HasField("record"):
        r = pb.record
        if len(r.key) > MAX_KEY_BYTES:
            raise InvalidDHTMessage(f"record key longer than {MAX_KEY_BYTES} bytes")
        if len(r.value) > MAX_VALUE_BYTES:
            raise InvalidDHTMessage(f"record value longer than {MAX_VALUE_BYTES} bytes")
        if len(r.timeReceived) > _MAX_TIME_RECEIVED:
            raise InvalidDHTMessage("record timeReceived is too long")
        record = Record(bytes(r.key), bytes(r.value), r.timeReceived)
    peers: list[PeerInfo] = []
    for p in pb.closerPeers:
        info = _peerFromProto(p)
        if info is not None:
            peers.append(info)
    msgType: int = pb.type
    try:
        msgType = MessageType(msgType)
    except ValueError:
        pass
    return Message(
        type=msgType,
        key=bytes(pb.key),
        record=record,
        closerPeers=tuple(peers),
        clusterLevel=pb.clusterLevelRaw,
    )
