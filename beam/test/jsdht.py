"""
Drive the kad-dht of a js-libp2p interop peer (C{interop/dht.mjs}).

A L{JSPeer} started with C{extraArgs=["--dht"]} (server mode: it handles
C{/beam/kad/1.0.0}, so identify lists it) or C{["--dht-client"]} (queries
only) runs C{@libp2p/kad-dht} on Beam's DHT protocol with a validator and
selector for the C{beam-name} namespace.  L{JSDHT} wraps the JSON-lines
DHT commands with typed keys and values, and L{signEnvelope} builds libp2p
signed envelopes the way the js validator checks them, so a test can make
valid and invalid name records without Beam's own C{beam.names} code.

This is a helper module for tests, not a test module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet import defer

from beam.identity.keys import Identity
from beam.proto import envelope_pb2
from beam.test.jspeer import JSPeer
from beam.encoding.varint import encode_uvarint as encodeUvarint

#: Beam's DHT protocol, which the js peer speaks instead of /ipfs/kad/1.0.0.
DHT_PROTOCOL = "/beam/kad/1.0.0"

#: What the js validator requires of a C{/beam-name/...} record's envelope.
NAME_DOMAIN = b"beam-name-record"
NAME_PAYLOAD_TYPE = b"/beam/name-record/1"


def nameKey(name: str) -> bytes:
    """
    The DHT key of a Beam name.
    """
    return b"/beam-name/" + name.encode()


def signEnvelope(
    identity: Identity,
    payload: bytes,
    domain: bytes = NAME_DOMAIN,
    payloadType: bytes = NAME_PAYLOAD_TYPE,
) -> bytes:
    """
    A libp2p signed envelope (RFC 0002) of C{payload}, signed by
    C{identity} over C{domain}, the payload type and the payload, each
    uvarint-length-prefixed.
    """
    signed = b"".join(
        encodeUvarint(len(part)) + part for part in (domain, payloadType, payload)
    )
    return envelope_pb2.Envelope(
        public_key=identity.publicKey.toProtobuf(),
        payload_type=payloadType,
        payload=payload,
        signature=identity.sign(signed),
    ).SerializeToString()


def seqPayload(seq: int, name: str = "alice") -> bytes:
    """
    A stand-in record payload: protobuf field 1 is C{seq} (uvarint), field
    2 the name.  The js selector reads field 1 when started with
    C{--name-seq-field 1}.
    """
    encoded = name.encode()
    return b"\x08" + encodeUvarint(seq) + b"\x12" + encodeUvarint(len(encoded)) + encoded


def kadDistance(a: bytes, b: bytes) -> int:
    """
    The Kademlia distance of two keys: XOR of their SHA-256 digests.
    """
    return int.from_bytes(hashlib.sha256(a).digest(), "big") ^ int.from_bytes(
        hashlib.sha256(b).digest(), "big"
    )


def sortByDistance(key: bytes, peerIdBytes: Iterable[tuple[str, bytes]]) -> list[str]:
    """
    Order C{(name, peer ID multihash)} pairs by distance to C{key}; return
    the names.
    """
    return [name for name, raw in sorted(peerIdBytes, key=lambda p: kadDistance(key, p[1]))]


def nameInOrder(order: Sequence[bytes], prefix: str = "alice") -> str:
    """
    The first name C{prefix-N} whose key has the peers C{order} (peer ID
    multihashes) in exactly that order of distance, closest first.  Any
    order of two peers occurs; for more, see L{nameWithFarthest}.

    js-libp2p only follows a response's closer peers that are strictly
    closer to the key than the peer that answered, so a lookup seeded with
    one peer finds the others deterministically only if that seed is the
    farthest: tests pick their key with this.
    """
    for n in range(100000):
        name = f"{prefix}-{n}"
        key = nameKey(name)
        if sorted(order, key=lambda raw: kadDistance(key, raw)) == list(order):
            return name
    raise ValueError("no name found for that order")


def nameWithFarthest(farthest: bytes, others: Iterable[bytes], prefix: str = "alice") -> str:
    """
    The first name C{prefix-N} whose key is farther from C{farthest} (a
    peer ID multihash) than from any of C{others}.

    Unlike L{nameInOrder} this always exists (a key hashing near the
    complement of C{farthest}'s SHA-256 qualifies), whereas with XOR
    distance not every order of three or more peers can occur.
    """
    rest = list(others)
    for n in range(100000):
        name = f"{prefix}-{n}"
        key = nameKey(name)
        far = kadDistance(key, farthest)
        if all(kadDistance(key, raw) < far for raw in rest):
            return name
    raise ValueError("no name found with that peer farthest")


def _keyFields(key: bytes | str) -> dict[str, str]:
    if isinstance(key, str):
        return {"key": key}
    return {"keyHex": key.hex()}


class JSDHT:
    """
    The DHT commands of a running L{JSPeer}.

    Keys are L{bytes} (sent as hex) or L{str} (sent as UTF-8); values are
    L{bytes}.  Every method returns the peer's reply dict (see
    C{interop/peer.mjs}) and fails with L{JSPeerCommandFailed} when the js
    side throws.
    """

    def __init__(self, peer: JSPeer) -> None:
        self.peer = peer

    def bootstrap(
        self, addrs: Sequence[str], minPeers: int = 1, selfLookup: bool = False, **kw: Any
    ) -> defer.Deferred[dict[str, Any]]:
        """
        Dial C{addrs}, wait until the routing table holds C{minPeers}
        peers, optionally look up our own ID; reply: C{dialled}, C{size},
        C{peers}, C{found}.
        """
        return self.peer.request(
            {"cmd": "dhtBootstrap", "addrs": list(addrs), "minPeers": minPeers,
             "selfLookup": selfLookup},
            **kw,
        )

    def routingTable(self, **kw: Any) -> defer.Deferred[dict[str, Any]]:
        """
        Reply: C{mode} (C{"server"}/C{"client"}), C{size}, C{peers}.
        """
        return self.peer.request({"cmd": "dhtRoutingTable"}, **kw)

    def closest(self, key: bytes | str, **kw: Any) -> defer.Deferred[dict[str, Any]]:
        """
        Iterative FIND_NODE; reply: C{peers} (closest first), C{infos},
        C{queried} (peers that answered), C{errors}.
        """
        return self.peer.request(dict({"cmd": "dhtClosest"}, **_keyFields(key)), **kw)

    @defer.inlineCallbacks
    def get(self, key: bytes | str, **kw: Any) -> Any:
        """
        Iterative GET_VALUE; fires with C{(value, fromPeerId, errors)}.
        """
        reply = yield self.peer.request(dict({"cmd": "dhtGet"}, **_keyFields(key)), **kw)
        return bytes.fromhex(reply["value"]), reply["from"], reply["errors"]

    @defer.inlineCallbacks
    def getLocal(self, key: bytes | str, **kw: Any) -> Any:
        """
        The value in this js node's own datastore (validated); fails if
        there is none.
        """
        reply = yield self.peer.request(dict({"cmd": "dhtGetLocal"}, **_keyFields(key)), **kw)
        return bytes.fromhex(reply["value"])

    def put(self, key: bytes | str, value: bytes, **kw: Any) -> defer.Deferred[dict[str, Any]]:
        """
        Store locally, then PUT_VALUE to the closest peers; reply:
        C{storedOn} (peers that echoed our record), C{errors}.
        """
        return self.peer.request(
            dict({"cmd": "dhtPut", "value": value.hex()}, **_keyFields(key)), **kw
        )

    def findPeer(
        self, peerId: str, useCache: bool = False, **kw: Any
    ) -> defer.Deferred[dict[str, Any]]:
        """
        Find C{peerId}'s addresses through the DHT; reply: C{peerId},
        C{addrs}, C{from}.
        """
        return self.peer.request(
            {"cmd": "dhtFindPeer", "peerId": peerId, "useCache": useCache}, **kw
        )
