"""
The node's status: who it is, where it listens, whom it is connected to.

Frozen values built from the host's public API (L{nodeStatus}); the
control socket renders them as JSON (L{beam.controlapi.asJSON}) and the
command line as text.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs

__all__ = ["ConnectionStatus", "NodeStatus", "connectionStatus", "nodeStatus"]


@attrs.frozen
class ConnectionStatus:
    """
    One live peer connection.

    @ivar transport: the name of the transport it runs over (C{"tcp"}, ...).
    @ivar limited: whether it is a limited (relayed) connection.
    @ivar streams: streams open on it now.
    @ivar agent: the agent version the peer announced in identify.
    """

    peerID: str
    direction: str
    transport: str
    limited: bool
    remoteAddr: str
    localAddr: str
    security: str
    muxer: str
    streams: int
    agent: Optional[str] = None


@attrs.frozen
class NodeStatus:
    """
    The node itself.

    @ivar addrs: the addresses peers can reach it at (with C{/p2p/}).
    @ivar listenAddrs: the addresses it listens on, as bound.
    @ivar observedAddrs: our addresses as peers saw them.
    @ivar protocols: the protocol IDs it serves.
    """

    peerID: str
    addrs: tuple[str, ...] = ()
    listenAddrs: tuple[str, ...] = ()
    observedAddrs: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()
    connections: tuple[ConnectionStatus, ...] = ()


def connectionStatus(conn: Any) -> ConnectionStatus:
    """
    The status of one L{beam.p2p.connection.PeerConnection}.
    """
    identify = conn.identify
    return ConnectionStatus(
        peerID=str(conn.remotePeer),
        direction=conn.direction,
        transport=conn.transport,
        limited=bool(conn.limited),
        remoteAddr=str(conn.remoteAddr),
        localAddr=str(conn.localAddr),
        security=conn.security,
        muxer=conn.muxer,
        streams=conn.streamCount,
        agent=identify.agentVersion if identify is not None else None,
    )


def nodeStatus(node: Any) -> NodeStatus:
    """
    The status of a L{beam.p2p.host.node.Node} (any L{IHost} with
    C{observedAddrs}).
    """
    return NodeStatus(
        peerID=str(node.peerID),
        addrs=tuple(str(a) for a in node.advertisedAddrs()),
        listenAddrs=tuple(str(a) for a in node.listenAddrs),
        observedAddrs=tuple(str(a) for a in getattr(node, "observedAddrs", ())),
        protocols=tuple(node.protocols),
        connections=tuple(connectionStatus(c) for c in node.liveConnections()),
    )
