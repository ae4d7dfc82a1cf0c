"""
identify (C{/ipfs/id/1.0.0}) and identify push (C{/ipfs/id/push/1.0.0}).

On every new connection each side asks the other who it is: its public
key, the protocols it speaks, the addresses it listens on, and the address
it sees us connecting from (the observed address, our first hint about NAT).
The answer is one uvarint-length-prefixed C{Identify} protobuf, after which
the responder closes the stream.  A push is the same message sent
unprompted when our protocols or addresses change.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import attr
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.errors import BeamError, DecodeError, InvalidKey, InvalidMultiaddr, ProtocolError
from beam.encoding.framing import LengthPrefixedReader, encodeLengthPrefixed
from beam.identity.keys import PeerID, PublicKey
from beam.identity.multiaddr import Multiaddr
from beam.proto import identify_pb2

IDENTIFY_PROTOCOL = "/ipfs/id/1.0.0"
IDENTIFY_PUSH_PROTOCOL = "/ipfs/id/push/1.0.0"
PROTOCOL_VERSION = "ipfs/0.1.0"
MAX_IDENTIFY_SIZE = 64 * 1024
MAX_LIST_ITEMS = 256


class IdentifyError(ProtocolError):
    """
    The peer's identify message was malformed.
    """


@attr.s(frozen=True, auto_attribs=True)
class IdentifyInfo:
    """
    What a peer told us about itself.
    """

    protocols: tuple[str, ...] = ()
    listenAddrs: tuple[Multiaddr, ...] = ()
    observedAddr: Optional[Multiaddr] = None
    publicKey: Optional[PublicKey] = None
    agentVersion: str = ""
    protocolVersion: str = ""

    def toBytes(self) -> bytes:
        """
        Encode as the C{Identify} protobuf.
        """
        msg = identify_pb2.Identify(
            protocolVersion=self.protocolVersion,
            agentVersion=self.agentVersion,
            listenAddrs=[a.toBytes() for a in self.listenAddrs],
            protocols=list(self.protocols),
        )
        if self.publicKey is not None:
            msg.publicKey = self.publicKey.toProtobuf()
        if self.observedAddr is not None:
            msg.observedAddr = self.observedAddr.toBytes()
        return msg.SerializeToString()

    @classmethod
    def fromBytes(cls, data: bytes, remotePeer: PeerID | None = None) -> "IdentifyInfo":
        """
        Parse an C{Identify} protobuf.  Addresses we cannot parse are
        skipped (peers may speak transports we do not), but a public key
        that does not match the authenticated peer is an error.

        @raise IdentifyError: malformed message or mismatched key.
        """
        msg = identify_pb2.Identify()
        try:
            msg.ParseFromString(data)
        except Exception as e:
            raise IdentifyError(f"malformed identify message: {e}") from None
        if len(msg.protocols) > MAX_LIST_ITEMS or len(msg.listenAddrs) > MAX_LIST_ITEMS:
            raise IdentifyError("identify message lists too many items")
        key = None
        if msg.HasField("publicKey"):
            try:
                key = PublicKey.fromProtobuf(msg.publicKey)
            except InvalidKey as e:
                raise IdentifyError(f"identify carries a bad public key: {e}") from None
            if remotePeer is not None and key.peerID() != remotePeer:
                raise IdentifyError("identify public key does not match the peer ID")
        addrs = []
        for raw in msg.listenAddrs:
            try:
                addrs.append(Multiaddr.fromBytes(raw))
            except InvalidMultiaddr:
                continue
        observed = None
        if msg.HasField("observedAddr"):
            try:
                observed = Multiaddr.fromBytes(msg.observedAddr)
            except InvalidMultiaddr:
                observed = None
        return cls(
            protocols=tuple(msg.protocols),
            listenAddrs=tuple(addrs),
            observedAddr=observed,
            publicKey=key,
            agentVersion=msg.agentVersion,
            protocolVersion=msg.protocolVersion,
        )


class IdentifySender(Protocol):
    """
    Writes one identify message and closes the stream: the responder side
    of C{/ipfs/id/1.0.0} and the initiator side of a push.
    """

    def __init__(self, makeInfo: Callable[[object], IdentifyInfo]) -> None:
        self._makeInfo = makeInfo

    def connectionMade(self) -> None:
        info = self._makeInfo(self.transport)
        assert self.transport is not None  # set by makeConnection
        self.transport.write(encodeLengthPrefixed(info.toBytes()))
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        # The other side has nothing to say on this stream.
        pass


class IdentifyReceiver(Protocol):
    """
    Reads one identify message: the initiator side of C{/ipfs/id/1.0.0}
    and the handler of a push.  L{result} fires with the L{IdentifyInfo},
    or fails with L{IdentifyError} (the stream is then aborted).
    """

    log = Logger()

    def __init__(self, remotePeer: PeerID | None = None) -> None:
        self.result: Deferred[IdentifyInfo] = Deferred()
        self._reader = LengthPrefixedReader(MAX_IDENTIFY_SIZE)
        self._remotePeer = remotePeer
        self._done = False

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        try:
            messages = self._reader.feed(data)
            if not messages:
                return
            info = IdentifyInfo.fromBytes(messages[0], self._remotePeer)
        except BeamError as e:
            self._fail(e)
            return
        self._done = True
        assert self.transport is not None  # data arrives only while connected
        self.transport.loseConnection()
        self.result.callback(info)

    def _fail(self, error: BeamError) -> None:
        self._done = True
        self.log.info("identify from {peer} refused: {error}", peer=self._remotePeer, error=error)
        assert self.transport is not None  # called from dataReceived
        abort = getattr(self.transport, "abortConnection", self.transport.loseConnection)
        abort()
        self.result.errback(Failure(error if isinstance(error, IdentifyError) else IdentifyError(str(error))))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._done:
            self._done = True
            self.result.errback(Failure(IdentifyError("stream closed before an identify message arrived")))


def sortedProtocols(protocols: Sequence[str]) -> tuple[str, ...]:
    """
    Protocols in a stable order for identify messages.
    """
    return tuple(sorted(set(protocols)))


__all__ = [
    "IDENTIFY_PROTOCOL",
    "IDENTIFY_PUSH_PROTOCOL",
    "IdentifyError",
    "IdentifyInfo",
    "IdentifyReceiver",
    "IdentifySender",
    "DecodeError",
]
