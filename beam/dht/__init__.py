"""
A Kademlia DHT speaking the libp2p kad-dht wire protocol as C{/beam/kad/1.0.0}.

The core is transport-agnostic:

  - L{beam.dht.messages}: the wire messages and their bounded codec;
  - L{beam.dht.routing}: k-buckets over SHA-256 XOR distance;
  - L{beam.dht.lookup}: the iterative (optionally disjoint-path) lookup;
  - L{beam.dht.store}: validated, expiring, quota-limited records;
  - L{beam.dht.kad}: L{KademliaNode}, tying them together over an
    L{IKadNetwork}.

Adapters give it a network: C{beam.dht.service} (libp2p streams) and
C{beam.testing.dhtsim} (a simulated network on a clock).
"""

from __future__ import annotations

from beam.dht.kad import IKadNetwork, KademliaNode
from beam.dht.lookup import Lookup, LookupResult
from beam.dht.messages import (
    PROTOCOL_ID,
    Message,
    MessageType,
    PeerInfo,
    Record,
    decodeMessage,
    encodeMessage,
)
from beam.dht.routing import RoutingTable, kadID, peerKadID, xorDistance
from beam.dht.store import IValidator, RecordStore

__all__ = [
    "PROTOCOL_ID",
    "IKadNetwork",
    "IValidator",
    "KademliaNode",
    "Lookup",
    "LookupResult",
    "Message",
    "MessageType",
    "PeerInfo",
    "Record",
    "RecordStore",
    "RoutingTable",
    "decodeMessage",
    "encodeMessage",
    "kadID",
    "peerKadID",
    "xorDistance",
]
