"""
Publish/subscribe for Beam nodes: gossipsub v1.1 (C{/meshsub/1.1.0}, also
C{/meshsub/1.0.0}), interoperable with js-libp2p and go-libp2p.

  - L{gossipsub}: the sans-IO router (mesh, fanout, gossip, caches,
    backoff), the wire checks (StrictSign) and the RPC decoder;
  - L{score}: peer scoring (P1-P4, P7) and its thresholds;
  - L{service}: L{GossipSub}, the daemon's C{"pubsub"} service running the
    router over libp2p streams.
"""

from __future__ import annotations

from beam.p2p.pubsub.gossipsub import (
    ACCEPT,
    GOSSIPSUB_V10,
    GOSSIPSUB_V11,
    IGNORE,
    PROTOCOLS,
    REJECT,
    GossipSubParams,
    InvalidRPC,
    Router,
)
from beam.p2p.pubsub.score import ScoreParams, ScoreThresholds, TopicScoreParams
from beam.p2p.pubsub.service import GossipSub, makePubsub

__all__ = [
    "ACCEPT",
    "GOSSIPSUB_V10",
    "GOSSIPSUB_V11",
    "IGNORE",
    "PROTOCOLS",
    "REJECT",
    "GossipSub",
    "GossipSubParams",
    "InvalidRPC",
    "Router",
    "ScoreParams",
    "ScoreThresholds",
    "TopicScoreParams",
    "makePubsub",
]
