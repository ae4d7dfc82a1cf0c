"""
The status of tunnels (what this node exposes) and forwards (local ports
leading to other nodes' tunnels), as frozen values.

L{TunnelHost.status<beam.tunnel.host.TunnelHost.status>} and
L{Forwards.status<beam.tunnel.forwards.Forwards.status>} build them; the
control socket renders them as JSON and the command line as text.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs

from beam.controlapi.values import jsonField

__all__ = ["ForwardStatus", "TrafficStatus", "TunnelStatus", "trafficStatus"]


@attrs.frozen
class TrafficStatus:
    """
    The counters of a tunnel or forward (see L{beam.tunnel.splice.TunnelStats}).
    """

    active: int = 0
    total: int = 0
    bytesIn: int = jsonField("bytesIn", default=0)
    bytesOut: int = jsonField("bytesOut", default=0)
    refused: int = 0
    failed: int = 0


def trafficStatus(stats: Any) -> TrafficStatus:
    """
    A snapshot of a L{beam.tunnel.splice.TunnelStats} (or of nothing yet).
    """
    if stats is None:
        return TrafficStatus()
    return TrafficStatus(
        active=stats.active, total=stats.total, bytesIn=stats.bytesIn, bytesOut=stats.bytesOut,
        refused=stats.refused, failed=stats.failed,
    )


@attrs.frozen
class TunnelStatus:
    """
    One exposed service.

    @ivar target: where the service is (C{host:port}, or C{in-process}).
    @ivar private: whether an allow list or a secret restricts it.
    @ivar allow: the admitted peer IDs, or L{None} for no list.
    @ivar share: its share address (with the secret, when it has one).
    @ivar connect: the command to run on the other side.
    """

    name: str
    port: int
    kind: str
    target: str
    compress: bool
    private: bool
    share: str
    connect: str
    allow: Optional[tuple[str, ...]] = None
    stats: TrafficStatus = TrafficStatus()


@attrs.frozen
class ForwardStatus:
    """
    One forward.

    @ivar name: its key: the local port, as text.
    @ivar listen: C{host:port} it listens on.
    @ivar peerID: the host peer.
    @ivar service: the service asked for (C{""}: the host's default).
    @ivar state: C{connecting}, C{connected}, C{unreachable: <why>}, ...
    """

    name: str
    listen: str
    kind: str
    peerID: str
    service: str
    state: str
    stats: TrafficStatus = TrafficStatus()
