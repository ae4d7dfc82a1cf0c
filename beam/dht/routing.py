"""
The Kademlia routing table: k-buckets keyed by common-prefix length.

Every key in the DHT lives in one 256-bit space: the Kademlia ID of a key is
its SHA-256 (L{kadID}), that of a peer the SHA-256 of its peer ID's
multihash bytes (L{peerKadID}), and the distance between two IDs is their
XOR read as an integer.  Bucket I{i} holds peers whose ID shares exactly
I{i} leading bits with ours; each holds at most C{k}.

A full bucket does not take newcomers blindly: old peers that still answer
are the most valuable (they tend to stay), so L{RoutingTable.add} parks the
newcomer in the bucket's replacement cache and returns the least recently
seen member for the caller to ping (ping-before-evict).  If that ping fails
the caller calls L{RoutingTable.remove} (or L{RoutingTable.markFailed}
repeatedly), and the freshest replacement takes the free place.

The table is pure state: the caller passes the time in, and decides which
peers are servers (client-mode peers must never be added).

Persistence: L{RoutingTable.toJSON} / L{RoutingTable.fromJSON} keep the
peers, their addresses and when they were last seen, so a restarted node can
bootstrap from its old table.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, Final

import attrs

from beam.dht.messages import PeerInfo
from beam.errors import DecodeError, InvalidMultiaddr, InvalidPeerID
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr

ID_BITS: Final = 256
JSON_VERSION: Final = 1


def kadID(key: bytes) -> bytes:
    """
    The Kademlia ID (a point in the XOR space) of a DHT key.
    """
    return hashlib.sha256(key).digest()


def peerKadID(peer: PeerID) -> bytes:
    """
    The Kademlia ID of a peer: the SHA-256 of its multihash bytes, which is
    also the ID of the key a FIND_NODE for that peer carries.
    """
    return hashlib.sha256(peer.bytes).digest()


def xorDistance(a: bytes, b: bytes) -> int:
    """
    The XOR distance between two Kademlia IDs.
    """
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def commonPrefixLength(a: bytes, b: bytes) -> int:
    """
    How many leading bits two Kademlia IDs share (256 when equal).
    """
    d = xorDistance(a, b)
    return ID_BITS - d.bit_length()


@attrs.define
class Entry:
    """
    A peer in the table: how to reach it, when it last answered us, and how
    many times in a row it has failed to.
    """

    info: PeerInfo
    kid: bytes
    lastSeen: float
    failures: int = 0


@attrs.frozen
class AddOutcome:
    """
    What L{RoutingTable.add} did.

    @ivar result: C{"added"}, C{"updated"} (already present: refreshed),
        C{"full"} (bucket full: parked in the replacement cache) or C{"self"}
        (our own ID, ignored).
    @ivar candidate: when C{"full"}, the least recently seen member, which
        the caller should ping and remove if it does not answer.
    """

    result: str
    candidate: PeerInfo | None = None


@attrs.frozen
class BucketView:
    """
    A snapshot of one bucket for C{beam network routes}.
    """

    index: int
    entries: tuple[Entry, ...]
    replacements: tuple[PeerInfo, ...]
    lastRefreshed: float


class _Bucket:
    def __init__(self) -> None:
        # Least recently seen first.
        self.entries: OrderedDict[PeerID, Entry] = OrderedDict()
        self.replacements: OrderedDict[PeerID, PeerInfo] = OrderedDict()
        self.lastRefreshed = 0.0


class RoutingTable:
    """
    k-buckets around C{localPeer}.

    @param maxFailures: a peer is removed after this many consecutive
        failures (timeouts, garbage answers) reported by L{markFailed}.
    @param maxReplacements: size of each bucket's replacement cache.
    """

    def __init__(
        self,
        localPeer: PeerID,
        k: int = 20,
        maxFailures: int = 2,
        maxReplacements: int | None = None,
    ) -> None:
        self.localPeer = localPeer
        self.localID = peerKadID(localPeer)
        self.k = k
        self.maxFailures = maxFailures
        self.maxReplacements = k if maxReplacements is None else maxReplacements
        self._buckets = [_Bucket() for _ in range(ID_BITS)]
        self._index: dict[PeerID, int] = {}

    # --- queries ---------------------------------------------------------

    def bucketIndex(self, kid: bytes) -> int:
        """
        The bucket a Kademlia ID belongs in (its common-prefix length with
        us), capped at the last bucket.
        """
        return min(commonPrefixLength(self.localID, kid), ID_BITS - 1)

    @property
    def size(self) -> int:
        """
        How many peers the table holds (replacements not counted).
        """
        return len(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, peer: object) -> bool:
        return peer in self._index

    def get(self, peer: PeerID) -> Entry | None:
        i = self._index.get(peer)
        return None if i is None else self._buckets[i].entries[peer]

    def peers(self) -> Iterator[PeerInfo]:
        for b in self._buckets:
            for e in b.entries.values():
                yield e.info

    def closest(
        self, target: bytes, n: int | None = None, exclude: Iterable[PeerID] = ()
    ) -> list[PeerInfo]:
        """
        The C{n} (default C{k}) peers nearest to C{target}, nearest first.

        @param target: a 32-byte Kademlia ID (L{kadID} of a key), not a key.
        @param exclude: peers to leave out (the requester).
        """
        n = self.k if n is None else n
        skip = set(exclude)
        t = int.from_bytes(target, "big")
        candidates = (
            (int.from_bytes(e.kid, "big") ^ t, e.info)
            for b in self._buckets
            for e in b.entries.values()
            if e.info.peer not in skip
        )
        return [info for _, info in heapq.nsmallest(n, candidates, key=lambda c: c[0])]

    def buckets(self) -> list[BucketView]:
        """
        The non-empty buckets, lowest index (farthest) first.
        """
        return [
            BucketView(i, tuple(b.entries.values()), tuple(b.replacements.values()), b.lastRefreshed)
            for i, b in enumerate(self._buckets)
            if b.entries or b.replacements
        ]

    # --- changes ---------------------------------------------------------

    def add(self, info: PeerInfo, now: float) -> AddOutcome:
        """
        Record that C{info.peer} answered us (or is otherwise known to be a
        live server) at C{now}.

        Present peers move to the most-recently-seen end, their failure count
        reset and their addresses updated if C{info} carries any.
        """
        peer = info.peer
        if peer == self.localPeer:
            return AddOutcome("self")
        i = self._index.get(peer)
        if i is not None:
            bucket = self._buckets[i]
            entry = bucket.entries.pop(peer)
            entry.lastSeen = now
            entry.failures = 0
            if info.addrs:
                entry.info = info
            bucket.entries[peer] = entry
            return AddOutcome("updated")
        kid = peerKadID(peer)
        i = self.bucketIndex(kid)
        bucket = self._buckets[i]
        if len(bucket.entries) < self.k:
            bucket.entries[peer] = Entry(info, kid, now)
            bucket.replacements.pop(peer, None)
            self._index[peer] = i
            return AddOutcome("added")
        bucket.replacements.pop(peer, None)
        bucket.replacements[peer] = info
        while len(bucket.replacements) > self.maxReplacements:
            bucket.replacements.popitem(last=False)
        oldest = next(iter(bucket.entries.values()))
        return AddOutcome("full", oldest.info)

    def remove(self, peer: PeerID) -> bool:
        """
        Drop C{peer} (from the replacement cache too); the freshest
        replacement takes its place.

        @return: whether it was in the table proper.
        """
        i = self._index.pop(peer, None)
        if i is None:
            self._buckets[self.bucketIndex(peerKadID(peer))].replacements.pop(peer, None)
            return False
        bucket = self._buckets[i]
        entry = bucket.entries.pop(peer)
        if bucket.replacements:
            _, info = bucket.replacements.popitem(last=True)
            # Parked peers were seen once; put them at the stale end so that
            # they are the first pinged when the bucket fills again.
            bucket.entries[info.peer] = Entry(info, peerKadID(info.peer), entry.lastSeen)
            bucket.entries.move_to_end(info.peer, last=False)
            self._index[info.peer] = i
        return True

    def markFailed(self, peer: PeerID) -> bool:
        """
        C{peer} failed to answer (or answered garbage).  After C{maxFailures}
        consecutive failures it is removed.

        @return: whether it was removed.
        """
        entry = self.get(peer)
        if entry is None:
            self._buckets[self.bucketIndex(peerKadID(peer))].replacements.pop(peer, None)
            return False
        entry.failures += 1
        if entry.failures >= self.maxFailures:
            return self.remove(peer)
        return False

    # --- refresh ---------------------------------------------------------

    def markRefreshed(self, target: bytes, now: float) -> None:
        """
        A lookup for C{target} (a Kademlia ID) finished: its bucket need not
        be refreshed for a while.
        """
        self._buckets[self.bucketIndex(target)].lastRefreshed = now

    def staleBuckets(self, now: float, refreshInterval: float, maxIndex: int = 15) -> list[int]:
        """
        Indices of the buckets whose last lookup is older than
        C{refreshInterval}, up to one past the deepest non-empty bucket
        (deeper buckets are empty in any network of plausible size) and at
        most C{maxIndex}, because finding a key for bucket I{i} costs
        about 2**(I{i}+1) hashes (L{randomKeyForBucket}).
        """
        deepest = max((i for i in set(self._index.values())), default=-1)
        top = min(deepest + 1, maxIndex)
        return [
            i for i in range(top + 1)
            if now - self._buckets[i].lastRefreshed >= refreshInterval
        ]

    def randomKeyForBucket(self, index: int, randbytes: Any) -> bytes:
        """
        A random 32-byte key whose Kademlia ID falls in bucket C{index}:
        searching for it refreshes that bucket.

        @param randbytes: C{random.Random.randbytes}, injected for determinism.
        """
        while True:
            key: bytes = randbytes(32)
            if self.bucketIndex(kadID(key)) == index:
                return key

    # --- persistence -----------------------------------------------------

    def toJSON(self) -> str:
        """
        The table as JSON text, for C{<home>/routing.json}.
        """
        peers = [
            {
                "id": str(e.info.peer),
                "addrs": [str(a) for a in e.info.addrs],
                "lastSeen": e.lastSeen,
            }
            for b in self._buckets
            for e in b.entries.values()
        ]
        return json.dumps({"version": JSON_VERSION, "peers": peers}, indent=1)

    @classmethod
    def fromJSON(
        cls, localPeer: PeerID, text: str | bytes, k: int = 20, maxFailures: int = 2
    ) -> RoutingTable:
        """
        Rebuild a table saved by L{toJSON}.  Entries that do not parse are
        skipped, so one bad line does not lose the whole table.

        @raise DecodeError: the text is not a saved routing table at all.
        """
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise DecodeError(f"routing table is not JSON: {e}") from None
        if not isinstance(data, dict) or data.get("version") != JSON_VERSION:
            raise DecodeError("not a version 1 routing table")
        peers = data.get("peers")
        if not isinstance(peers, list):
            raise DecodeError("routing table has no peer list")
        table = cls(localPeer, k=k, maxFailures=maxFailures)
        rows: list[tuple[float, PeerInfo]] = []
        for row in peers:
            try:
                peer = PeerID.fromString(row["id"])
                addrs = tuple(Multiaddr.fromString(a) for a in row.get("addrs", []))
                lastSeen = float(row.get("lastSeen", 0.0))
            except (InvalidPeerID, InvalidMultiaddr, KeyError, TypeError, ValueError, AttributeError):
                continue
            rows.append((lastSeen, PeerInfo(peer, addrs)))
        rows.sort(key=lambda r: r[0])
        for lastSeen, info in rows:
            table.add(info, lastSeen)
        return table
