"""
The gossipsub v1.1 router (libp2p/specs pubsub/README.md,
pubsub/gossipsub/gossipsub-v1.0.md and gossipsub-v1.1.md), sans-IO.

L{Router} holds all of gossipsub's state (who subscribes to what, our
meshes and fanouts, the seen cache, the message cache and its IHAVE/IWANT
windows, backoffs, scores) and never touches a socket or a reactor: the
stream adapter (L{beam.p2p.pubsub.service}) hands it each RPC a peer sent
(L{Router.handleRPC}) and sends what it asks to send (the C{send}
callback, one encoded RPC at a time); the heartbeat runs when the owner
calls L{Router.heartbeat}, and time is read from the injected C{now}.
That keeps every rule testable with a list of sent RPCs and a number for
the clock.

Messages are signed (the spec's StrictSign): C{from} is the author's peer
ID, C{seqno} 8 bytes, C{signature} an ed25519 signature over
C{"libp2p-pubsub:" || Message{from, data, seqno, topic}} re-encoded, and
C{key} the author's public key when given (it must then match C{from});
anything else is rejected and costs the peer that relayed it (P4).  The
message ID is C{from || seqno}, the spec's default (go-libp2p's).
js-libp2p uses the protobuf public key instead of the peer ID
(L{keyMsgId}); IDs peers send in IHAVE and IWANT are mapped to ours
(L{canonicalMsgId}), and a peer that used the key form gets our IHAVEs in
that form.  Otherwise each side asks for messages it already has, and
since a duplicate keeps no promise, each counts a broken IWANT promise
against the other (found by C{beam/test/test_interop_gossipsub.py}).

Bounds, since strangers drive this: topics a peer may subscribe to
(C{maxTopicsPerPeer}), entries per RPC, IHAVEs per heartbeat and message
IDs asked per heartbeat, IWANT answers per heartbeat, retransmissions of
one message to one peer, the seen cache (time and size), the message
cache (windows of at most C{maxCachedPerWindow}), backoffs and promises;
and a token bucket per peer on new messages (a flood is dropped and
costs the peer behaviour penalty).
"""

from __future__ import annotations

import hashlib
import random as _random
from collections import OrderedDict, deque
from typing import Any, Callable, Iterable, Optional, Sequence

import attrs
from google.protobuf.message import DecodeError as _PBDecodeError

from beam.errors import BeamError, DecodeError
from beam.identity.keys import PeerID, PublicKey
from beam.p2p.pubsub.score import PeerScore, ScoreParams, ScoreThresholds
from beam.proto import pubsub_pb2

GOSSIPSUB_V11 = "/meshsub/1.1.0"
GOSSIPSUB_V10 = "/meshsub/1.0.0"
#: The protocols we speak, preferred first.
PROTOCOLS = (GOSSIPSUB_V11, GOSSIPSUB_V10)
SIGN_PREFIX = b"libp2p-pubsub:"

ACCEPT = "accept"
REJECT = "reject"
IGNORE = "ignore"

Validator = Callable[[PeerID, bytes], str]
Handler = Callable[[PeerID, bytes], None]


class InvalidRPC(DecodeError):
    """
    A peer sent a gossipsub RPC we cannot parse, or one over our limits.
    """


class InvalidMessage(BeamError):
    """
    A pubsub message fails StrictSign (missing or bad from, seqno, key or
    signature).
    """


@attrs.frozen
class GossipSubParams:
    """
    The router's parameters: the spec's (and js/go-libp2p's) defaults for
    the mesh and gossip, and Beam's bounds for what peers can make us hold.
    """

    D: int = 6
    Dlo: int = 4
    Dhi: int = 12
    Dscore: int = 4
    Dout: int = 2
    Dlazy: int = 6
    gossipFactor: float = 0.25
    historyLength: int = 5
    historyGossip: int = 3
    heartbeatInterval: float = 1.0
    heartbeatInitialDelay: float = 0.1
    fanoutTTL: float = 60.0
    seenTTL: float = 120.0
    pruneBackoff: float = 60.0
    unsubscribeBackoff: float = 10.0
    #: Longest backoff a peer may ask of us in a PRUNE (seconds).
    maxBackoff: float = 3600.0
    graftFloodThreshold: float = 10.0
    gossipRetransmission: int = 3
    iwantFollowupTime: float = 3.0
    floodPublish: bool = True
    #: Largest RPC read or written (bytes).
    maxRPCSize: int = 1 << 20
    maxTopicLength: int = 256
    maxTopicsPerPeer: int = 64
    maxSubscriptionsPerRPC: int = 128
    maxMessagesPerRPC: int = 512
    maxControlPerRPC: int = 1024
    maxIHaveLength: int = 5000
    maxIHaveMessages: int = 10
    #: Message IDs we answer per peer per heartbeat.
    maxIWantPerHeartbeat: int = 500
    maxSeen: int = 100_000
    maxCachedPerWindow: int = 5000
    maxBackoffs: int = 10_000
    maxPromises: int = 10_000
    #: New messages per second one peer may relay to us, and the burst.
    floodRate: float = 20.0
    floodBurst: float = 100.0
    #: Behaviour penalty per message dropped by the flood limit.
    floodPenalty: float = 0.25


def defaultMsgId(msg: Any) -> bytes:
    """
    The spec's default message ID: C{from || seqno}.
    """
    return bytes(getattr(msg, "from")) + bytes(msg.seqno)


def keyMsgId(msg: Any) -> bytes:
    """
    js-libp2p's message ID for C{msg}: the author's public key (protobuf)
    C{|| seqno}, or L{defaultMsgId} when the key is neither in the message
    nor inlined in its C{from}.
    """
    author = bytes(getattr(msg, "from"))
    if msg.HasField("key"):
        key = bytes(msg.key)
    elif len(author) > 2 and author[0] == 0x00 and author[1] == len(author) - 2:
        key = author[2:]  # an identity multihash: the key itself
    else:
        return defaultMsgId(msg)
    return key + bytes(msg.seqno)


def canonicalMsgId(msgId: bytes) -> bytes:
    """
    Our ID (L{defaultMsgId}) for a message ID a peer sent in IHAVE or
    IWANT, which js-libp2p gives as L{keyMsgId}.

    The two forms tell themselves apart by their first byte: a peer ID is
    a multihash (identity 0x00 or sha2-256 0x12), a protobuf public key
    starts with its field 1 tag, 0x08.  A key-form ID becomes the peer ID
    that key has (identity multihash up to 42 bytes, sha2-256 above,
    as peer IDs are made) followed by the seqno.
    """
    if len(msgId) <= 8 or msgId[0] != 0x08:
        return msgId
    key, seqno = msgId[:-8], msgId[-8:]
    if len(key) <= 42:
        return b"\x00" + bytes([len(key)]) + key + seqno
    return b"\x12\x20" + hashlib.sha256(key).digest() + seqno


def signedBytes(msg: Any) -> bytes:
    """
    What a message's signature covers: C{"libp2p-pubsub:"} and the message
    re-encoded with only C{from}, C{data}, C{seqno} and C{topic} (present
    fields only, in field order, as every implementation encodes them).
    """
    bare = pubsub_pb2.Message()
    for field in ("from", "data", "seqno", "topic"):
        if msg.HasField(field):
            setattr(bare, field, getattr(msg, field))
    return SIGN_PREFIX + bare.SerializeToString(deterministic=True)


def verifyMessage(msg: Any) -> PeerID:
    """
    Check a message against StrictSign.

    @return: its author.
    @raise InvalidMessage: it is unsigned, badly signed, or its key and
        author disagree.
    """
    if not msg.HasField("seqno") or len(msg.seqno) != 8:
        raise InvalidMessage("a signed message has an 8-byte seqno")
    if not msg.HasField("from") or not msg.HasField("signature"):
        raise InvalidMessage("a signed message has from and signature")
    try:
        author = PeerID(bytes(getattr(msg, "from")))
    except BeamError as e:
        raise InvalidMessage(f"bad from: {e}") from None
    key: Optional[PublicKey]
    if msg.HasField("key"):
        try:
            key = PublicKey.fromProtobuf(bytes(msg.key))
        except BeamError as e:
            raise InvalidMessage(f"bad key: {e}") from None
        if key.peerID() != author:
            raise InvalidMessage("the message's key is not its author's")
    else:
        key = author.publicKey()
        if key is None:
            raise InvalidMessage("no key, and none inlined in the author's peer ID")
    if not key.verify(bytes(msg.signature), signedBytes(msg)):
        raise InvalidMessage("the message signature does not verify")
    return author


def decodeRPC(data: bytes, params: GossipSubParams) -> Any:
    """
    Parse one RPC and check it against C{params}' per-RPC limits.

    @raise InvalidRPC: malformed or over a limit.
    """
    if len(data) > params.maxRPCSize:
        raise InvalidRPC(f"RPC of {len(data)} bytes exceeds {params.maxRPCSize}")
    rpc = pubsub_pb2.RPC()
    try:
        rpc.ParseFromString(bytes(data))
    except (_PBDecodeError, ValueError, RuntimeError) as e:
        raise InvalidRPC(f"malformed RPC: {e}") from None
    if len(rpc.subscriptions) > params.maxSubscriptionsPerRPC:
        raise InvalidRPC(f"more than {params.maxSubscriptionsPerRPC} subscriptions in one RPC")
    if len(rpc.publish) > params.maxMessagesPerRPC:
        raise InvalidRPC(f"more than {params.maxMessagesPerRPC} messages in one RPC")
    if rpc.HasField("control"):
        c = rpc.control
        if len(c.ihave) + len(c.iwant) + len(c.graft) + len(c.prune) > params.maxControlPerRPC:
            raise InvalidRPC(f"more than {params.maxControlPerRPC} control messages in one RPC")
        if sum(len(i.messageIDs) for i in c.iwant) > params.maxIHaveLength or sum(
            len(i.messageIDs) for i in c.ihave
        ) > params.maxIHaveLength:
            raise InvalidRPC(f"more than {params.maxIHaveLength} message IDs in one RPC")
        if any(len(p.peers) > 64 for p in c.prune):
            raise InvalidRPC("more than 64 peers in one PRUNE")
    return rpc


class MessageCache:
    """
    The last C{history} heartbeats' messages (for IWANT), the first
    C{gossip} windows of which are advertised in IHAVE.  Each window holds
    at most C{maxPerWindow} messages; more are still forwarded, just not
    kept for gossip.
    """

    def __init__(self, gossip: int, history: int, maxPerWindow: int) -> None:
        self.gossip = gossip
        self.windows: deque[list[tuple[bytes, str]]] = deque([[]])
        self.history = history
        self.maxPerWindow = maxPerWindow
        self.messages: dict[bytes, Any] = {}
        self.served: dict[bytes, dict[PeerID, int]] = {}

    def __len__(self) -> int:
        return len(self.messages)

    def put(self, msgId: bytes, msg: Any) -> None:
        if msgId in self.messages or len(self.windows[0]) >= self.maxPerWindow:
            return
        self.messages[msgId] = msg
        self.windows[0].append((msgId, msg.topic))

    def get(self, msgId: bytes) -> Any:
        return self.messages.get(msgId)

    def getForPeer(self, msgId: bytes, peer: PeerID) -> tuple[Any, int]:
        """
        The message and how many times C{peer} has now asked for it.
        """
        msg = self.messages.get(msgId)
        if msg is None:
            return None, 0
        counts = self.served.setdefault(msgId, {})
        counts[peer] = counts.get(peer, 0) + 1
        return msg, counts[peer]

    def gossipIds(self, topic: str) -> list[bytes]:
        ids: list[bytes] = []
        for window in list(self.windows)[: self.gossip]:
            ids.extend(i for i, t in window if t == topic)
        return ids

    def shift(self) -> None:
        self.windows.appendleft([])
        while len(self.windows) > self.history:
            for msgId, _ in self.windows.pop():
                self.messages.pop(msgId, None)
                self.served.pop(msgId, None)


class _Peer:
    __slots__ = ("peer", "protocol", "outbound", "topics", "ihaves", "asked", "served",
                 "tokens", "tokensAt", "keyIds")

    def __init__(self, peer: PeerID, protocol: str, outbound: bool, now: float, burst: float) -> None:
        self.peer = peer
        self.protocol = protocol
        self.outbound = outbound
        self.topics: set[str] = set()
        self.ihaves = 0
        self.asked = 0
        self.served = 0
        self.tokens = burst
        self.tokensAt = now
        #: The peer names messages by L{keyMsgId} (js-libp2p does): our
        #: IHAVEs to it use that form.
        self.keyIds = False


class _Outgoing:
    __slots__ = ("subs", "msgs", "ihave", "iwant", "graft", "prune")

    def __init__(self) -> None:
        self.subs: list[tuple[bool, str]] = []
        self.msgs: list[Any] = []
        self.ihave: dict[str, list[bytes]] = {}
        self.iwant: list[bytes] = []
        self.graft: list[str] = []
        self.prune: list[tuple[str, Optional[int]]] = []


class Router:
    """
    The gossipsub router of one node.

    @param localPeer: our peer ID (the C{from} of what we publish).
    @param sign: signs bytes with our key (StrictSign).
    @param publicKey: our public key in its protobuf encoding (the C{key}
        of what we publish).
    @param send: C{send(peer, rpcBytes)}: deliver one encoded RPC to a peer
        added with L{addPeer}.
    @param now: the current time in seconds.
    """

    def __init__(
        self,
        localPeer: PeerID,
        sign: Callable[[bytes], bytes],
        publicKey: bytes,
        send: Callable[[PeerID, bytes], None],
        now: Callable[[], float],
        *,
        params: Optional[GossipSubParams] = None,
        scoreParams: Optional[ScoreParams] = None,
        thresholds: Optional[ScoreThresholds] = None,
        random: Optional[_random.Random] = None,
        msgIdFn: Callable[[Any], bytes] = defaultMsgId,
    ) -> None:
        self.localPeer = localPeer
        self._sign = sign
        self._publicKey = publicKey
        self._send = send
        self.now = now
        self.params = params or GossipSubParams()
        self.thresholds = thresholds or ScoreThresholds()
        self.scores = PeerScore(scoreParams)
        self.random = random or _random.Random()
        self.msgIdFn = msgIdFn
        #: Understand js-libp2p's key-form IDs next to ours (see
        #: L{canonicalMsgId}); only when ours are the default ones.
        self.aliasIds = msgIdFn is defaultMsgId
        self.peers: dict[PeerID, _Peer] = {}
        self.topics: dict[str, set[PeerID]] = {}
        self.subscriptions: dict[str, list[Handler]] = {}
        self.validators: dict[str, Validator] = {}
        self.mesh: dict[str, set[PeerID]] = {}
        self.fanout: dict[str, set[PeerID]] = {}
        self.fanoutPublished: dict[str, float] = {}
        self.backoff: "OrderedDict[tuple[PeerID, str], float]" = OrderedDict()
        self.seen: "OrderedDict[bytes, float]" = OrderedDict()
        self.mcache = MessageCache(self.params.historyGossip, self.params.historyLength,
                                   self.params.maxCachedPerWindow)
        self.promises: "OrderedDict[bytes, tuple[PeerID, float]]" = OrderedDict()
        self._seqno = int(now() * 1e9)
        self._out: dict[PeerID, _Outgoing] = {}
        self.counters: dict[str, int] = {
            "published": 0, "delivered": 0, "duplicates": 0, "invalid": 0, "ignored": 0,
            "rejected": 0, "flooded": 0, "graylisted": 0, "malformed": 0,
        }

    # -- peers ---------------------------------------------------------------

    def addPeer(self, peer: PeerID, protocol: str = GOSSIPSUB_V11, outbound: bool = False) -> None:
        """
        C{peer} speaks gossipsub: tell it our subscriptions.
        """
        if peer in self.peers or peer == self.localPeer:
            return
        self.peers[peer] = _Peer(peer, protocol, outbound, self.now(), self.params.floodBurst)
        self.scores.addPeer(peer)
        out = self._outFor(peer)
        for topic in self.subscriptions:
            out.subs.append((True, topic))
        self._flush()

    def removePeer(self, peer: PeerID) -> None:
        """
        C{peer} is gone (disconnected, or dropped for not reading).
        """
        state = self.peers.pop(peer, None)
        if state is None:
            return
        for topic in state.topics:
            members = self.topics.get(topic)
            if members is not None:
                members.discard(peer)
                if not members:
                    del self.topics[topic]
        for topic, members in self.mesh.items():
            if peer in members:
                members.discard(peer)
                self.scores.prune(peer, topic)
        for members in self.fanout.values():
            members.discard(peer)
        self._out.pop(peer, None)
        self.scores.removePeer(peer, self.now())

    def penalize(self, peer: PeerID, count: float = 1.0) -> None:
        """
        Behaviour penalty (P7) from outside the router: a malformed RPC, a
        peer that does not read what we send.
        """
        self.scores.addPenalty(peer, count)

    def score(self, peer: PeerID) -> float:
        return self.scores.score(peer)

    # -- the local API ----------------------------------------------------------

    def subscribe(self, topic: str, handler: Handler) -> None:
        """
        Deliver C{topic}'s valid messages to C{handler}; the first
        subscription joins the topic (announce, build a mesh).
        """
        first = topic not in self.subscriptions
        self.subscriptions.setdefault(topic, []).append(handler)
        if not first:
            return
        for state in self.peers.values():
            self._outFor(state.peer).subs.append((True, topic))
        self._join(topic)
        self._flush()

    def unsubscribe(self, topic: str) -> None:
        """
        Leave C{topic}: announce it and PRUNE our mesh with the unsubscribe
        backoff.
        """
        if self.subscriptions.pop(topic, None) is None:
            return
        for state in self.peers.values():
            self._outFor(state.peer).subs.append((False, topic))
        for peer in self.mesh.pop(topic, set()):
            self.scores.prune(peer, topic)
            self._addBackoff(peer, topic, self.params.unsubscribeBackoff)
            self._outFor(peer).prune.append((topic, int(self.params.unsubscribeBackoff)))
        self._flush()

    def setValidator(self, topic: str, validator: Validator) -> None:
        self.validators[topic] = validator

    def publish(self, topic: str, data: bytes) -> bytes:
        """
        Sign and send C{data} on C{topic}; returns the message ID.  Our own
        messages are not delivered to our own handlers.
        """
        self._seqno = (self._seqno + 1) % (1 << 64)
        msg = pubsub_pb2.Message()
        setattr(msg, "from", self.localPeer.bytes)
        msg.data = bytes(data)
        msg.seqno = self._seqno.to_bytes(8, "big")
        msg.topic = topic
        msg.signature = self._sign(signedBytes(msg))
        msg.key = self._publicKey
        msgId = self.msgIdFn(msg)
        self._markSeen(msgId)
        self.mcache.put(msgId, msg)
        self.counters["published"] += 1
        pt = self.thresholds.publishThreshold
        if self.params.floodPublish:
            targets = {p for p in self.topics.get(topic, ()) if self.scores.score(p) >= pt}
        elif topic in self.mesh:
            targets = set(self.mesh[topic])
        else:
            fan = self.fanout.get(topic)
            if not fan:
                fan = self.fanout[topic] = set(self._pick(topic, self.params.D, lambda p: self.scores.score(p) >= pt))
            targets = set(fan)
        if topic not in self.mesh:
            self.fanoutPublished[topic] = self.now()
            self.fanout.setdefault(topic, set())
        for peer in targets:
            self._outFor(peer).msgs.append(msg)
        self._flush()
        return msgId

    # -- RPCs in ------------------------------------------------------------

    def handleRPC(self, peer: PeerID, data: bytes) -> None:
        """
        Process one RPC from C{peer}.

        @raise InvalidRPC: malformed or over a limit (the peer is
            penalised; the caller closes its stream).
        """
        state = self.peers.get(peer)
        if state is None:
            return
        if self.scores.score(peer) < self.thresholds.graylistThreshold:
            self.counters["graylisted"] += 1
            return
        try:
            rpc = decodeRPC(data, self.params)
        except InvalidRPC:
            self.counters["malformed"] += 1
            self.scores.addPenalty(peer)
            raise
        try:
            for sub in rpc.subscriptions:
                self._handleSubscription(state, sub)
            for msg in rpc.publish:
                self._handleMessage(state, msg)
            if rpc.HasField("control"):
                self._handleControl(state, rpc.control)
        except (UnicodeError, ValueError) as e:
            # Odd strings protobuf let through (proto2 does not check UTF-8).
            self.counters["malformed"] += 1
            self.scores.addPenalty(peer)
            raise InvalidRPC(f"malformed RPC: {e}") from None
        finally:
            self._flush()

    def _validTopic(self, topic: str) -> bool:
        return 0 < len(topic) <= self.params.maxTopicLength

    def _handleSubscription(self, state: _Peer, sub: Any) -> None:
        topic = sub.topicid
        if not self._validTopic(topic):
            return
        if sub.subscribe:
            if topic in state.topics or len(state.topics) >= self.params.maxTopicsPerPeer:
                return
            state.topics.add(topic)
            self.topics.setdefault(topic, set()).add(state.peer)
        else:
            if topic not in state.topics:
                return
            state.topics.discard(topic)
            members = self.topics.get(topic)
            if members is not None:
                members.discard(state.peer)
                if not members:
                    del self.topics[topic]
            if state.peer in self.mesh.get(topic, ()):
                self.mesh[topic].discard(state.peer)
                self.scores.prune(state.peer, topic)
            self.fanout.get(topic, set()).discard(state.peer)

    def _handleMessage(self, state: _Peer, msg: Any) -> None:
        peer = state.peer
        topic = msg.topic
        if topic not in self.subscriptions:
            self.counters["ignored"] += 1
            return
        if not msg.HasField("from") or not msg.HasField("seqno"):
            self._invalid(peer, topic)
            return
        msgId = self.msgIdFn(msg)
        first = self.seen.get(msgId)
        if first is not None:
            self.counters["duplicates"] += 1
            self.scores.duplicateDelivery(peer, topic, self.now() - first)
            self.promises.pop(msgId, None)
            return
        if not self._takeToken(state):
            self.counters["flooded"] += 1
            self.scores.addPenalty(peer, self.params.floodPenalty)
            return
        try:
            author = verifyMessage(msg)
        except InvalidMessage:
            self._invalid(peer, topic)
            return
        if author == self.localPeer:
            # Ours, from before a restart, or a replay: not news to anyone.
            self.counters["ignored"] += 1
            return
        self.promises.pop(msgId, None)
        validator = self.validators.get(topic)
        verdict = ACCEPT
        if validator is not None:
            try:
                verdict = validator(author, bytes(msg.data))
            except Exception:
                verdict = IGNORE
        if verdict == REJECT:
            self._markSeen(msgId)
            self._invalid(peer, topic)
            self.counters["rejected"] += 1
            return
        self._markSeen(msgId)
        if verdict != ACCEPT:
            self.counters["ignored"] += 1
            return
        self.scores.firstDelivery(peer, topic)
        self.mcache.put(msgId, msg)
        self.counters["delivered"] += 1
        for target in self.mesh.get(topic, ()):
            if target != peer and target != author:
                self._outFor(target).msgs.append(msg)
        for handler in list(self.subscriptions.get(topic, ())):
            handler(author, bytes(msg.data))

    def _invalid(self, peer: PeerID, topic: str) -> None:
        self.counters["invalid"] += 1
        self.scores.invalidMessage(peer, topic)

    def _takeToken(self, state: _Peer) -> bool:
        now = self.now()
        p = self.params
        state.tokens = min(p.floodBurst, state.tokens + (now - state.tokensAt) * p.floodRate)
        state.tokensAt = now
        if state.tokens < 1.0:
            return False
        state.tokens -= 1.0
        return True

    def _markSeen(self, msgId: bytes) -> None:
        self.seen[msgId] = self.now()
        self.seen.move_to_end(msgId)
        while len(self.seen) > self.params.maxSeen:
            self.seen.popitem(last=False)

    def _handleControl(self, state: _Peer, control: Any) -> None:
        peer = state.peer
        score = self.scores.score(peer)
        if score >= self.thresholds.gossipThreshold:
            self._handleIHave(state, control.ihave)
            self._handleIWant(state, control.iwant)
        for graft in control.graft:
            self._handleGraft(state, graft.topicID)
        for prune in control.prune:
            self._handlePrune(state, prune)

    def _handleIHave(self, state: _Peer, ihaves: Sequence[Any]) -> None:
        if not ihaves:
            return
        state.ihaves += 1
        if state.ihaves > self.params.maxIHaveMessages:
            return
        wanted: list[bytes] = []
        for ihave in ihaves:
            if ihave.topicID not in self.mesh:
                continue
            for msgId in ihave.messageIDs:
                if state.asked + len(wanted) >= self.params.maxIHaveLength:
                    break
                msgId = bytes(msgId)
                if self._ourId(state, msgId) not in self.seen and msgId not in wanted:
                    wanted.append(msgId)
        if not wanted:
            return
        self.random.shuffle(wanted)
        state.asked += len(wanted)
        # Asked for in the peer's own form (it looks them up by that), the
        # promise kept in ours (what a delivered message is known by).
        self._outFor(state.peer).iwant.extend(wanted)
        # Track one promise per IWANT, as go-libp2p does: a peer that
        # advertises what it never delivers pays P7.
        promised = self._ourId(state, self.random.choice(wanted))
        self.promises[promised] = (state.peer, self.now() + self.params.iwantFollowupTime)
        while len(self.promises) > self.params.maxPromises:
            self.promises.popitem(last=False)

    def _ourId(self, state: _Peer, msgId: bytes) -> bytes:
        """
        Our ID for a message ID C{state}'s peer sent; a peer seen using the
        key form (js-libp2p) is sent that form from then on (L{_gossip}).
        """
        if not self.aliasIds:
            return msgId
        ours = canonicalMsgId(msgId)
        if ours is not msgId:
            state.keyIds = True
        return ours

    def _handleIWant(self, state: _Peer, iwants: Sequence[Any]) -> None:
        out: Optional[_Outgoing] = None
        for iwant in iwants:
            for msgId in iwant.messageIDs:
                if state.served >= self.params.maxIWantPerHeartbeat:
                    return
                msg, count = self.mcache.getForPeer(self._ourId(state, bytes(msgId)), state.peer)
                if msg is None or count > self.params.gossipRetransmission:
                    continue
                state.served += 1
                if out is None:
                    out = self._outFor(state.peer)
                out.msgs.append(msg)

    def _handleGraft(self, state: _Peer, topic: str) -> None:
        peer = state.peer
        mesh = self.mesh.get(topic)
        if mesh is None:
            # Not a topic we are in: no state for it, and say no without a
            # backoff so the peer may ask again once we join.
            if self._validTopic(topic) and topic in state.topics:
                self._outFor(peer).prune.append((topic, None))
            return
        if peer in mesh:
            return
        now = self.now()
        until = self.backoff.get((peer, topic))
        if until is not None and until > now:
            self.scores.addPenalty(peer)
            if until - self.params.pruneBackoff + self.params.graftFloodThreshold > now:
                self.scores.addPenalty(peer)  # grafting right after a prune: a flood
            self._prunePeer(peer, topic, self.params.pruneBackoff)
            return
        if self.scores.score(peer) < 0 or (len(mesh) >= self.params.Dhi and not state.outbound):
            self._prunePeer(peer, topic, self.params.pruneBackoff)
            return
        if topic not in state.topics:
            # A GRAFT is a subscription in all but name; count it as one.
            if len(state.topics) >= self.params.maxTopicsPerPeer:
                self._prunePeer(peer, topic, self.params.pruneBackoff)
                return
            state.topics.add(topic)
            self.topics.setdefault(topic, set()).add(peer)
        mesh.add(peer)
        self.scores.graft(peer, topic, now)

    def _handlePrune(self, state: _Peer, prune: Any) -> None:
        topic = prune.topicID
        mesh = self.mesh.get(topic)
        if mesh is None or state.peer not in mesh:
            return
        mesh.discard(state.peer)
        self.scores.prune(state.peer, topic)
        backoff = float(prune.backoff) if prune.HasField("backoff") else self.params.pruneBackoff
        self._addBackoff(state.peer, topic, min(max(backoff, 0.0), self.params.maxBackoff))
        # Peer exchange (prune.peers) is not acted on: we do not dial peers
        # a stranger suggests (the spec makes PX optional).

    def _prunePeer(self, peer: PeerID, topic: str, backoff: float) -> None:
        self._addBackoff(peer, topic, backoff)
        state = self.peers.get(peer)
        v11 = state is not None and state.protocol != GOSSIPSUB_V10
        self._outFor(peer).prune.append((topic, int(backoff) if v11 else None))

    def _addBackoff(self, peer: PeerID, topic: str, seconds: float) -> None:
        key = (peer, topic)
        until = self.now() + seconds
        if self.backoff.get(key, 0.0) < until:
            self.backoff[key] = until
            self.backoff.move_to_end(key)
        while len(self.backoff) > self.params.maxBackoffs:
            self.backoff.popitem(last=False)

    def _inBackoff(self, peer: PeerID, topic: str) -> bool:
        until = self.backoff.get((peer, topic))
        return until is not None and until > self.now()

    # -- mesh ----------------------------------------------------------------

    def _pick(self, topic: str, count: int, accept: Callable[[PeerID], bool],
              exclude: Iterable[PeerID] = ()) -> list[PeerID]:
        skip = set(exclude)
        candidates = [p for p in self.topics.get(topic, ()) if p not in skip and accept(p)]
        candidates.sort(key=lambda p: p.bytes)
        self.random.shuffle(candidates)
        return candidates[:max(0, count)]

    def _join(self, topic: str) -> None:
        if topic in self.mesh:
            return
        mesh = set(p for p in self.fanout.pop(topic, set()) if self.scores.score(p) >= 0)
        self.fanoutPublished.pop(topic, None)
        more = self._pick(topic, self.params.D - len(mesh),
                          lambda p: not self._inBackoff(p, topic) and self.scores.score(p) >= 0, mesh)
        mesh.update(more)
        self.mesh[topic] = mesh
        now = self.now()
        for peer in mesh:
            self.scores.graft(peer, topic, now)
            self._outFor(peer).graft.append(topic)

    def heartbeat(self) -> None:
        """
        The periodic maintenance: scores, meshes, fanouts, gossip, caches.
        """
        now = self.now()
        p = self.params
        self.scores.refresh(now)
        for key in [k for k, u in self.backoff.items() if u <= now]:
            del self.backoff[key]
        for msgId, (peer, deadline) in list(self.promises.items()):
            if deadline <= now:
                del self.promises[msgId]
                self.scores.addPenalty(peer)
        for topic, mesh in self.mesh.items():
            for peer in [q for q in mesh if self.scores.score(q) < 0]:
                mesh.discard(peer)
                self.scores.prune(peer, topic)
                self._prunePeer(peer, topic, p.pruneBackoff)
            if len(mesh) < p.Dlo:
                more = self._pick(topic, p.D - len(mesh),
                                  lambda q: not self._inBackoff(q, topic) and self.scores.score(q) >= 0, mesh)
                for peer in more:
                    mesh.add(peer)
                    self.scores.graft(peer, topic, now)
                    self._outFor(peer).graft.append(topic)
            if len(mesh) > p.Dhi:
                self._shrink(topic, mesh)
            self._gossip(topic, mesh)
        for topic in [t for t, at in self.fanoutPublished.items() if at + p.fanoutTTL < now]:
            self.fanout.pop(topic, None)
            del self.fanoutPublished[topic]
        for topic, fan in self.fanout.items():
            members = self.topics.get(topic, set())
            for peer in [q for q in fan if q not in members or self.scores.score(q) < self.thresholds.publishThreshold]:
                fan.discard(peer)
            if len(fan) < p.D:
                fan.update(self._pick(topic, p.D - len(fan),
                                      lambda q: self.scores.score(q) >= self.thresholds.publishThreshold, fan))
            self._gossip(topic, fan)
        self.mcache.shift()
        while self.seen:
            msgId, at = next(iter(self.seen.items()))
            if at + p.seenTTL > now:
                break
            del self.seen[msgId]
        for state in self.peers.values():
            state.ihaves = state.asked = state.served = 0
        self._flush()

    def _shrink(self, topic: str, mesh: set[PeerID]) -> None:
        p = self.params
        ordered = sorted(mesh, key=lambda q: q.bytes)
        self.random.shuffle(ordered)
        ordered.sort(key=self.scores.score, reverse=True)
        keep = ordered[:p.Dscore]
        rest = ordered[p.Dscore:]
        self.random.shuffle(rest)
        keep += rest[:p.D - len(keep)]
        outbound = [q for q in keep if self.peers[q].outbound]
        if len(outbound) < p.Dout:
            extra = [q for q in ordered if q not in keep and self.peers[q].outbound][:p.Dout - len(outbound)]
            inboundKept = [q for q in keep[p.Dscore:] if not self.peers[q].outbound]
            for add in extra:
                if inboundKept:
                    keep.remove(inboundKept.pop())
                keep.append(add)
        for peer in set(mesh) - set(keep):
            mesh.discard(peer)
            self.scores.prune(peer, topic)
            self._prunePeer(peer, topic, p.pruneBackoff)

    def _gossip(self, topic: str, exclude: set[PeerID]) -> None:
        ids = self.mcache.gossipIds(topic)
        if not ids:
            return
        ids = ids[-self.params.maxIHaveLength:]
        gt = self.thresholds.gossipThreshold
        candidates = [q for q in self.topics.get(topic, ()) if q not in exclude and self.scores.score(q) >= gt]
        count = max(self.params.Dlazy, int(len(candidates) * self.params.gossipFactor))
        keyIds: Optional[list[bytes]] = None
        for peer in self._pick(topic, count, lambda q: q in candidates):
            if self.aliasIds and self.peers[peer].keyIds:
                # js-libp2p asks for (and counts a promise on) any ID it
                # does not know by its own name, and a message it then gets
                # is a duplicate to it that keeps no promise: we would pay
                # a broken promise at it for every message we advertise.
                if keyIds is None:
                    keyIds = [keyMsgId(self.mcache.get(i)) for i in ids]
                self._outFor(peer).ihave.setdefault(topic, []).extend(keyIds)
            else:
                self._outFor(peer).ihave.setdefault(topic, []).extend(ids)

    # -- RPCs out --------------------------------------------------------------

    def _outFor(self, peer: PeerID) -> _Outgoing:
        out = self._out.get(peer)
        if out is None:
            out = self._out[peer] = _Outgoing()
        return out

    def _flush(self) -> None:
        pending, self._out = self._out, {}
        for peer, out in pending.items():
            if peer not in self.peers:
                continue
            for rpc in self._encode(out):
                self._send(peer, rpc)

    def _encode(self, out: _Outgoing) -> list[bytes]:
        rpc = pubsub_pb2.RPC()
        for subscribe, topic in out.subs:
            rpc.subscriptions.add(subscribe=subscribe, topicid=topic)
        if out.ihave or out.iwant or out.graft or out.prune:
            c = rpc.control
            for topic, ids in out.ihave.items():
                c.ihave.add(topicID=topic, messageIDs=ids[: self.params.maxIHaveLength])
            if out.iwant:
                c.iwant.add(messageIDs=out.iwant[: self.params.maxIHaveLength])
            for topic in out.graft:
                c.graft.add(topicID=topic)
            for topic, backoff in out.prune:
                entry = c.prune.add(topicID=topic)
                if backoff is not None:
                    entry.backoff = backoff
        rpcs = []
        limit = self.params.maxRPCSize
        size = rpc.ByteSize()
        for msg in out.msgs:
            n = msg.ByteSize() + 8
            if n + 16 > limit:
                continue
            if size + n > limit:
                rpcs.append(rpc.SerializeToString())
                rpc = pubsub_pb2.RPC()
                size = 0
            rpc.publish.append(msg)
            size += n
        if size or rpc.ByteSize():
            rpcs.append(rpc.SerializeToString())
        return rpcs

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "peers": len(self.peers),
            "topics": sorted(self.subscriptions),
            "mesh": {t: len(m) for t, m in sorted(self.mesh.items())},
            "fanout": {t: len(m) for t, m in sorted(self.fanout.items())},
            "seen": len(self.seen),
            "cached": len(self.mcache),
            "counters": dict(self.counters),
        }

