"""
Gossipsub v1.1 peer scoring (libp2p/specs pubsub/gossipsub/gossipsub-v1.1.md,
"Peer Scoring"), sans-IO: the router tells L{PeerScore} what happened and
asks it for a peer's score; time comes from the caller (C{now}).

The score of a peer is::

    sum over topics of topicWeight * (P1 + P2 + P3 + P3b + P4)   (capped by topicScoreCap)
    + P7 (behaviour penalty)

with, per topic:
  - P1 time in mesh (positive, capped),
  - P2 first message deliveries (positive, decaying, capped),
  - P3 mesh message deliveries deficit (negative, squared; off unless its
    weight is set: a quiet topic like C{beam-names} would otherwise
    penalise every mesh peer), and P3b the sticky mesh failure penalty
    taken when a peer leaves the mesh with a deficit,
  - P4 invalid messages (negative, squared counter, decaying),

and P7 the behaviour penalty (negative, squared excess over a threshold):
GRAFTs during a backoff, broken IWANT promises, message floods.

P5 (application specific) and P6 (IP colocation) are not implemented: Beam
has no application score, and one machine may honestly run many nodes.

The score of a peer that disconnects is kept for C{retainScore} seconds, so
leaving and coming back does not wash away a bad one; at most
C{maxRetained} such peers are remembered (the oldest forgotten first),
since strangers decide how many peer IDs we see.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import attrs

from beam.identity.keys import PeerID


@attrs.frozen
class TopicScoreParams:
    """
    The weights and decays of one topic's score (spec names, camelCase).
    Decays are factors applied once per C{decayInterval}.
    """

    topicWeight: float = 1.0
    timeInMeshWeight: float = 0.01
    timeInMeshQuantum: float = 1.0
    timeInMeshCap: float = 3600.0
    firstMessageDeliveriesWeight: float = 1.0
    firstMessageDeliveriesDecay: float = 0.5
    firstMessageDeliveriesCap: float = 100.0
    #: P3 is off by default (weight 0): see the module docstring.
    meshMessageDeliveriesWeight: float = 0.0
    meshMessageDeliveriesDecay: float = 0.5
    meshMessageDeliveriesThreshold: float = 1.0
    meshMessageDeliveriesCap: float = 10.0
    meshMessageDeliveriesActivation: float = 5.0
    meshMessageDeliveriesWindow: float = 0.01
    meshFailurePenaltyWeight: float = 0.0
    meshFailurePenaltyDecay: float = 0.5
    #: P4: two invalid messages put a peer at the graylist threshold.
    invalidMessageDeliveriesWeight: float = -20.0
    invalidMessageDeliveriesDecay: float = 0.99


@attrs.frozen
class ScoreParams:
    """
    Router-wide scoring parameters.  Topics not in C{topics} are not
    scored (P1-P4), as in the spec.
    """

    topics: dict[str, TopicScoreParams] = attrs.field(factory=dict)
    topicScoreCap: float = 100.0
    behaviourPenaltyWeight: float = -10.0
    behaviourPenaltyThreshold: float = 0.0
    behaviourPenaltyDecay: float = 0.99
    decayInterval: float = 1.0
    decayToZero: float = 0.01
    retainScore: float = 3600.0
    maxRetained: int = 4096


@attrs.frozen
class ScoreThresholds:
    """
    What a score costs a peer (spec defaults of go-libp2p's examples):
    below C{gossipThreshold} no gossip to or from it, below
    C{publishThreshold} none of our own messages go to it, below
    C{graylistThreshold} its RPCs are dropped unread.
    """

    gossipThreshold: float = -10.0
    publishThreshold: float = -50.0
    graylistThreshold: float = -80.0
    acceptPXThreshold: float = 10.0
    opportunisticGraftThreshold: float = 5.0


class _TopicStats:
    __slots__ = ("inMesh", "graftTime", "meshTime", "firstDeliveries", "meshDeliveries",
                 "meshActive", "meshFailurePenalty", "invalidDeliveries")

    def __init__(self) -> None:
        self.inMesh = False
        self.graftTime = 0.0
        self.meshTime = 0.0
        self.firstDeliveries = 0.0
        self.meshDeliveries = 0.0
        self.meshActive = False
        self.meshFailurePenalty = 0.0
        self.invalidDeliveries = 0.0


class _PeerStats:
    __slots__ = ("connected", "expires", "topics", "behaviourPenalty")

    def __init__(self) -> None:
        self.connected = True
        self.expires = 0.0
        self.topics: dict[str, _TopicStats] = {}
        self.behaviourPenalty = 0.0


class PeerScore:
    """
    The scores of the peers a router knows (connected, or recently gone).

    The router calls L{addPeer}/L{removePeer}, L{graft}/L{prune}, the
    delivery events and L{refresh} (once per heartbeat: decays, mesh time,
    forgetting retained peers past C{retainScore}).
    """

    def __init__(self, params: Optional[ScoreParams] = None) -> None:
        self.params = params or ScoreParams()
        self._peers: "OrderedDict[PeerID, _PeerStats]" = OrderedDict()
        self._lastDecay: Optional[float] = None

    def __len__(self) -> int:
        return len(self._peers)

    def _topic(self, peer: PeerID, topic: str) -> Optional[_TopicStats]:
        stats = self._peers.get(peer)
        if stats is None or topic not in self.params.topics:
            return None
        t = stats.topics.get(topic)
        if t is None:
            t = stats.topics[topic] = _TopicStats()
        return t

    # -- membership ----------------------------------------------------

    def addPeer(self, peer: PeerID) -> None:
        """
        A peer connected: start (or resume a retained) score.
        """
        stats = self._peers.get(peer)
        if stats is None:
            stats = self._peers[peer] = _PeerStats()
        stats.connected = True
        self._peers.move_to_end(peer)

    def removePeer(self, peer: PeerID, now: float) -> None:
        """
        A peer went away: keep its score for C{retainScore} seconds if it
        is negative (a positive one is no reason to remember a stranger).
        """
        stats = self._peers.get(peer)
        if stats is None:
            return
        if self.score(peer) >= 0:
            del self._peers[peer]
            return
        stats.connected = False
        stats.expires = now + self.params.retainScore
        for name, t in stats.topics.items():
            # Leaving the mesh by disconnecting with a deficit still costs P3b.
            if t.inMesh:
                self._leaveMesh(t, self.params.topics.get(name))
        disconnected = [p for p, s in self._peers.items() if not s.connected]
        while len(disconnected) > self.params.maxRetained:
            del self._peers[disconnected.pop(0)]

    def graft(self, peer: PeerID, topic: str, now: float) -> None:
        """
        C{peer} joined our mesh for C{topic}.
        """
        t = self._topic(peer, topic)
        if t is None:
            return
        t.inMesh = True
        t.graftTime = now
        t.meshTime = 0.0
        t.meshActive = False

    def prune(self, peer: PeerID, topic: str) -> None:
        """
        C{peer} left our mesh for C{topic}: a delivery deficit becomes the
        sticky P3b penalty.
        """
        t = self._topic(peer, topic)
        if t is None:
            return
        self._leaveMesh(t, self.params.topics[topic])

    def _leaveMesh(self, t: _TopicStats, tp: Optional[TopicScoreParams]) -> None:
        if tp is not None and t.meshActive and t.meshDeliveries < tp.meshMessageDeliveriesThreshold:
            deficit = tp.meshMessageDeliveriesThreshold - t.meshDeliveries
            t.meshFailurePenalty += deficit * deficit
        t.inMesh = False

    # -- events ----------------------------------------------------------

    def firstDelivery(self, peer: PeerID, topic: str) -> None:
        """
        C{peer} was the first to bring us a valid message on C{topic}.
        """
        t = self._topic(peer, topic)
        if t is None:
            return
        tp = self.params.topics[topic]
        t.firstDeliveries = min(t.firstDeliveries + 1, tp.firstMessageDeliveriesCap)
        if t.inMesh:
            t.meshDeliveries = min(t.meshDeliveries + 1, tp.meshMessageDeliveriesCap)

    def duplicateDelivery(self, peer: PeerID, topic: str, sinceFirst: float) -> None:
        """
        C{peer} brought a message we had validated C{sinceFirst} seconds
        ago: a mesh peer still gets P3 credit inside the delivery window.
        """
        t = self._topic(peer, topic)
        if t is None or not t.inMesh:
            return
        tp = self.params.topics[topic]
        if sinceFirst <= tp.meshMessageDeliveriesWindow:
            t.meshDeliveries = min(t.meshDeliveries + 1, tp.meshMessageDeliveriesCap)

    def invalidMessage(self, peer: PeerID, topic: str) -> None:
        """
        C{peer} sent a message that failed signature checks or was rejected
        by the topic's validator (P4).
        """
        t = self._topic(peer, topic)
        if t is not None:
            t.invalidDeliveries += 1

    def addPenalty(self, peer: PeerID, count: float = 1.0) -> None:
        """
        Misbehaviour (P7): a GRAFT during a backoff, a broken IWANT
        promise, a message flood, a malformed RPC.
        """
        stats = self._peers.get(peer)
        if stats is not None:
            stats.behaviourPenalty += count

    # -- time ------------------------------------------------------------

    def refresh(self, now: float) -> None:
        """
        Once per heartbeat: mesh times, decays (once per elapsed
        C{decayInterval}), and forgetting retained scores past their time.
        """
        p = self.params
        if self._lastDecay is None:
            self._lastDecay = now
        steps = 0
        while now - self._lastDecay >= p.decayInterval and steps < 1000:
            self._lastDecay += p.decayInterval
            steps += 1
        if steps >= 1000:
            self._lastDecay = now
        for peer in [q for q, s in self._peers.items() if not s.connected and s.expires <= now]:
            del self._peers[peer]
        for stats in self._peers.values():
            for name, t in stats.topics.items():
                tp = p.topics.get(name)
                if tp is None:
                    continue
                if t.inMesh:
                    t.meshTime = now - t.graftTime
                    if t.meshTime > tp.meshMessageDeliveriesActivation:
                        t.meshActive = True
                for _ in range(steps):
                    t.firstDeliveries = _decay(t.firstDeliveries, tp.firstMessageDeliveriesDecay, p.decayToZero)
                    t.meshDeliveries = _decay(t.meshDeliveries, tp.meshMessageDeliveriesDecay, p.decayToZero)
                    t.meshFailurePenalty = _decay(t.meshFailurePenalty, tp.meshFailurePenaltyDecay, p.decayToZero)
                    t.invalidDeliveries = _decay(t.invalidDeliveries, tp.invalidMessageDeliveriesDecay, p.decayToZero)
            for _ in range(steps):
                stats.behaviourPenalty = _decay(stats.behaviourPenalty, p.behaviourPenaltyDecay, p.decayToZero)

    # -- the score -------------------------------------------------------

    def score(self, peer: PeerID) -> float:
        """
        C{peer}'s current score (0 for a peer we know nothing of).
        """
        stats = self._peers.get(peer)
        if stats is None:
            return 0.0
        p = self.params
        total = 0.0
        for name, t in stats.topics.items():
            tp = p.topics.get(name)
            if tp is None:
                continue
            topicScore = 0.0
            if t.inMesh:
                p1 = min(t.meshTime / tp.timeInMeshQuantum, tp.timeInMeshCap)
                topicScore += p1 * tp.timeInMeshWeight
            topicScore += t.firstDeliveries * tp.firstMessageDeliveriesWeight
            if t.inMesh and t.meshActive and t.meshDeliveries < tp.meshMessageDeliveriesThreshold:
                deficit = tp.meshMessageDeliveriesThreshold - t.meshDeliveries
                topicScore += deficit * deficit * tp.meshMessageDeliveriesWeight
            topicScore += t.meshFailurePenalty * tp.meshFailurePenaltyWeight
            topicScore += t.invalidDeliveries * t.invalidDeliveries * tp.invalidMessageDeliveriesWeight
            total += topicScore * tp.topicWeight
        if p.topicScoreCap > 0 and total > p.topicScoreCap:
            total = p.topicScoreCap
        excess = stats.behaviourPenalty - p.behaviourPenaltyThreshold
        if excess > 0:
            total += excess * excess * p.behaviourPenaltyWeight
        return total


def _decay(value: float, factor: float, toZero: float) -> float:
    value *= factor
    return 0.0 if abs(value) < toZero else value
