"""
The daemon's status: the node's, and each service's under its name.

L{DaemonStatus} is what C{GET /v1/status} answers and C{beam status}
shows; L{statusJSON} renders it (the node's fields at the top level, as
before services had their own, then C{"services"}, C{"resources"} (the
limits in force, what the node holds and what was refused), then one key
per service).
"""

from __future__ import annotations

from typing import Any, Optional

import attrs

from beam.controlapi import asJSON
from beam.p2p.host.status import NodeStatus

__all__ = ["DaemonStatus", "ServiceInfo", "networkJSON", "statusJSON"]


@attrs.frozen
class ServiceInfo:
    """
    One registered service.

    @ivar origin: C{"builtin"} or C{"plugin"}.
    @ivar state: C{"running"}, C{"stopped"}, C{"disabled"} (by the
        configuration) or C{"failed: <why>"}.
    """

    name: str
    origin: str
    state: str
    description: str = ""


@attrs.frozen
class DaemonStatus:
    """
    @ivar sections: C{(name, status)} of every service that reports one,
        in start order.
    @ivar resources: the resource manager's limits, usage and refusals
        (L{ResourceManager.status<beam.p2p.resources.ResourceManager.status>}),
        already JSON-shaped; L{None} when not known.
    """

    node: NodeStatus
    services: tuple[ServiceInfo, ...] = ()
    sections: tuple[tuple[str, Any], ...] = ()
    resources: Optional[dict[str, Any]] = None

    def section(self, name: str) -> Any:
        """
        The status of the service C{name}.

        @raise KeyError: no such service reports one.
        """
        for key, value in self.sections:
            if key == name:
                return value
        raise KeyError(name)


def statusJSON(status: DaemonStatus) -> dict[str, Any]:
    """
    C{status} as the JSON object C{GET /v1/status} answers.
    """
    out: dict[str, Any] = asJSON(status.node)
    out["services"] = asJSON(status.services)
    if status.resources is not None:
        out["resources"] = asJSON(status.resources)
    for name, value in status.sections:
        out[name] = asJSON(value)
    return out


def networkJSON(status: DaemonStatus) -> dict[str, Any]:
    """
    The node's view of the network, as C{GET /v1/network/status} answers:
    its addresses, its reachability (and, under C{"nat"}, what STUN
    found, its relay reservations and what it serves), Tor's state (under
    C{"tor"}), how many connections and by which path (C{"tor"} for those
    over Tor), our names and the DHT's figures.
    """
    node = status.node
    paths: dict[str, int] = {}
    for conn in node.connections:
        path = "tor" if conn.transport == "tor" else conn.path
        paths[path] = paths.get(path, 0) + 1
    out: dict[str, Any] = {
        "peer_id": node.peerID,
        "listen_addrs": list(node.listenAddrs),
        "addrs": list(node.addrs),
        "observed_addrs": list(node.observedAddrs),
        "reachability": node.reachability,
        "confirmed_addrs": list(node.confirmedAddrs),
        "candidate_addrs": list(node.candidateAddrs),
        "relay_addrs": list(node.relayAddrs),
        "connections": len(node.connections),
        "connection_paths": paths,
        "names": [],
    }
    for name, value in status.sections:
        if name == "names":
            out["names"] = asJSON(value)
        elif name in ("nat", "tor"):
            out[name] = asJSON(value)
        elif name == "kademlia":
            out.update(asJSON(value))
    return out
