"""
The node's status: who it is, where it listens, whom it is connected to.

Frozen values built from the host's public API (L{nodeStatus}); the
control socket renders them as JSON (L{beam.controlapi.asJSON}) and the
command line as text.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs

__all__ = ["ConnectionStatus", "NodeStatus", "connectionPath", "connectionStatus", "nodeStatus"]


@attrs.frozen
class ConnectionStatus:
    """
    One live peer connection.

    @ivar transport: the name of the transport it runs over (C{"tcp"}, ...).
    @ivar limited: whether it is a limited (relayed) connection.
    @ivar streams: streams open on it now.
    @ivar agent: the agent version the peer announced in identify.
    @ivar path: how the connection got there: C{"direct"},
        C{"relayed"} (through C{relay}), C{"hole-punched"} (DCUtR), or
        what the connection says of itself (its C{path} attribute).
    @ivar relay: the relay's peer ID, for a relayed connection.
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
    path: str = "direct"
    relay: Optional[str] = None


@attrs.frozen
class NodeStatus:
    """
    The node itself.

    @ivar addrs: all its addresses (with C{/p2p/}): confirmed, listen
        (expanded), relay.
    @ivar listenAddrs: the addresses it listens on, as bound.
    @ivar observedAddrs: our addresses as peers saw them.
    @ivar protocols: the protocol IDs it serves.
    @ivar reachability: whether strangers can dial it, as AutoNAT found:
        C{"public"}, C{"private"} or C{"unknown"}.
    @ivar confirmedAddrs: addresses AutoNAT confirmed others can dial.
    @ivar candidateAddrs: public addresses not yet checked by AutoNAT
        (public listen addresses, addresses enough peers observed).
    @ivar relayAddrs: C{/p2p-circuit} addresses through the relays the
        node holds reservations on.
    """

    peerID: str
    addrs: tuple[str, ...] = ()
    listenAddrs: tuple[str, ...] = ()
    observedAddrs: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()
    connections: tuple[ConnectionStatus, ...] = ()
    reachability: str = "unknown"
    confirmedAddrs: tuple[str, ...] = ()
    candidateAddrs: tuple[str, ...] = ()
    relayAddrs: tuple[str, ...] = ()


def connectionStatus(conn: Any) -> ConnectionStatus:
    """
    The status of one L{beam.p2p.connection.PeerConnection}.
    """
    identify = conn.identify
    path, relay = connectionPath(conn)
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
        path=path,
        relay=relay,
    )


def connectionPath(conn: Any) -> tuple[str, Optional[str]]:
    """
    How C{conn} got there, and through which relay: C{("relayed", RELAY)}
    for a limited connection through a relay (its remote address is
    C{.../p2p/RELAY/p2p-circuit...}), else the connection's own C{path}
    if it has one (C{"hole-punched"}, set by DCUtR), else C{"direct"}.
    """
    relay: Optional[str] = None
    text = str(conn.remoteAddr)
    at = text.rfind("/p2p-circuit")
    if at >= 0:
        before = text[:at]
        mark = before.rfind("/p2p/")
        relay = before[mark + len("/p2p/"):] if mark >= 0 else None
    own = getattr(conn, "path", None)
    if isinstance(own, str) and own:
        return own, relay
    if getattr(conn, "transport", None) == "turn":
        # Through a TURN server's TCP relay (RFC 6062): not limited, but
        # not direct either.
        return "turn", None
    if conn.limited or relay is not None:
        return "relayed", relay
    return "direct", None


def nodeStatus(node: Any) -> NodeStatus:
    """
    The status of a L{beam.p2p.host.node.Node} (any L{IHost}; the
    address facts come from its C{addresses} book if it has one).
    """
    book = getattr(node, "addresses", None)
    return NodeStatus(
        peerID=str(node.peerID),
        addrs=tuple(str(a) for a in node.advertisedAddrs()),
        listenAddrs=tuple(str(a) for a in node.listenAddrs),
        observedAddrs=tuple(str(a) for a in getattr(node, "observedAddrs", ())),
        protocols=tuple(node.protocols),
        connections=tuple(connectionStatus(c) for c in node.liveConnections()),
        reachability=book.reachability if book is not None else "unknown",
        confirmedAddrs=tuple(str(a) for a in book.confirmed()) if book is not None else (),
        candidateAddrs=tuple(str(a) for a in book.candidates()) if book is not None else (),
        relayAddrs=tuple(str(a) for a in book.relayAddrs()) if book is not None else (),
    )
