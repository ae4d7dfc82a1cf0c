"""
The DHT's status and its routing table, as frozen values
(L{KademliaService.status<beam.dht.service.KademliaService.status>},
L{routes<beam.dht.service.KademliaService.routes>}).
"""

from __future__ import annotations

from typing import Optional

import attrs

from beam.controlapi.values import jsonField

__all__ = ["BucketStatus", "DHTStatus", "RouteStatus", "RoutesStatus"]


@attrs.frozen
class DHTStatus:
    """
    @ivar mode: C{"server"} (answers DHT requests) or C{"client"}.
    @ivar routingTableSize: peers in the routing table.
    @ivar recordsHeld: records stored here for others.
    @ivar lookups: lookups this node made (getting, finding the closest
        peers, putting) since it started.
    @ivar lookupFailures: those of them no peer answered (or, for a put,
        no peer took).
    @ivar lookupP50Ms: their median duration in milliseconds, estimated
        from a fixed-bucket histogram; L{None} before the first lookup.
    @ivar lookupP95Ms: their 95th percentile duration, likewise.
    """

    mode: str = jsonField("dht_mode")
    routingTableSize: int = 0
    recordsHeld: int = 0
    lookups: int = 0
    lookupFailures: int = 0
    lookupP50Ms: Optional[float] = None
    lookupP95Ms: Optional[float] = None


@attrs.frozen
class RouteStatus:
    """
    One peer of the routing table.

    @ivar lastSeen: clock time it last answered or asked us.
    @ivar failures: requests to it that failed in a row.
    """

    peerID: str
    addrs: tuple[str, ...] = ()
    lastSeen: float = 0.0
    failures: int = 0


@attrs.frozen
class BucketStatus:
    """
    One non-empty k-bucket.

    @ivar replacements: peers waiting for a place in it.
    """

    index: int
    peers: tuple[RouteStatus, ...] = ()
    replacements: int = 0


@attrs.frozen
class RoutesStatus:
    """
    The routing table, by bucket (empty buckets left out).
    """

    k: int
    size: int
    buckets: tuple[BucketStatus, ...] = ()
