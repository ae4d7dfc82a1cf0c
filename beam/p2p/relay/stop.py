"""
The target's side of a circuit: C{/libp2p/circuit/relay/0.2.0/stop}.

A relay we hold a reservation on opens a stop stream to us and sends
CONNECT naming the peer that wants us; we answer OK and the stream
becomes a new inbound raw connection, which the node upgrades (security
handshake, yamux) like an accepted TCP connection.  A stop from a relay we
hold no reservation on, or over a connection that is itself relayed, is
refused with PERMISSION_DENIED: nobody can push circuits at us through a
relay we did not choose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.errors import describe
from beam.identity.keys import PeerID
from beam.p2p.relay.messages import (
    FramedProtocol,
    Limit,
    RelayMessageError,
    Status,
    StopMessage,
    decodeStop,
    peerOf,
    stopStatus,
)
from beam.p2p.relay.transport import CircuitTransport, RelayAddress, RelayTransport, startCircuit

if TYPE_CHECKING:
    from beam.p2p.host.node import Node

#: Seconds a relay has, after opening a stop stream, to send its CONNECT.
STOP_TIMEOUT = 15.0


class StopHandler(FramedProtocol):
    """
    One inbound stop stream.

    @ivar acceptRelay: says whether we take circuits from a relay (we hold
        a reservation on it).
    """

    log = Logger()

    def __init__(self, node: Node, transport: RelayTransport, acceptRelay: Callable[[PeerID], bool],
                 timeout: float = STOP_TIMEOUT) -> None:
        super().__init__()
        self.node = node
        self.relayTransport = transport
        self.acceptRelay = acceptRelay
        self.timeout = timeout
        self._timer: Any = None

    def connectionMade(self) -> None:
        self._timer = self.node.reactor.callLater(
            self.timeout, lambda: self.reject(RelayMessageError("the relay sent no stop CONNECT in time"))
        )

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def messageReceived(self, data: bytes) -> None:
        self._cancelTimer()
        stream: Any = self.transport
        try:
            msg = decodeStop(data)
        except RelayMessageError as e:
            self.reject(e, stopStatus(Status.MALFORMED_MESSAGE))
            return
        if msg.type != StopMessage.CONNECT:
            self.reject(RelayMessageError("stop message other than CONNECT from the relay"),
                        stopStatus(Status.UNEXPECTED_MESSAGE))
            return
        try:
            initiator = peerOf(msg, "stop CONNECT")
        except RelayMessageError as e:
            self.reject(e, stopStatus(Status.MALFORMED_MESSAGE))
            return
        conn = stream.connection
        relay: PeerID = conn.remotePeer
        if conn.limited or not self.acceptRelay(relay) or initiator in (self.node.peerID, relay):
            self.log.debug("refused a circuit from {initiator} through {relay}", initiator=initiator, relay=relay)
            self.reject(RelayMessageError(f"refused a circuit through {relay}: no reservation there"),
                        stopStatus(Status.PERMISSION_DENIED))
            return
        limit: Optional[Limit] = Limit.fromProto(msg.limit, msg.HasField("limit"))
        stream.write(stopStatus(Status.OK))
        relayAddr = conn.remoteAddr.withoutPeerID() if conn.remoteAddr is not None else None
        wrapper = CircuitTransport(
            stream,
            host=RelayAddress(relay, self.node.peerID, relayAddr or None),
            peer=RelayAddress(relay, initiator, relayAddr or None),
            limit=limit,
        )
        upgrading = self.node.makeUpgrading(isInitiator=False, expectedPeer=None, transport=self.relayTransport)
        startCircuit(self, upgrading, wrapper)

    def failed(self, reason: Failure) -> None:
        self._cancelTimer()
        self.log.debug("stop stream ended: {why}", why=describe(reason))
