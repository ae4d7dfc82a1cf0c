"""
Bad input to a DHT node: random and mutated requests and name records
never crash it, and never make it store a record its validator would
refuse.
"""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beam.dht.kad import KademliaNode
from beam.dht.messages import Message, MessageType, PeerInfo, Record, decodeMessage, encodeMessage
from beam.dht.store import RecordStore
from beam.errors import BeamError
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.names.record import dhtKey, makeRecord, openRecord, signRecord
from beam.names.validator import NameValidator
from beam.test.dhtutil import fakeInfo

NOW = time.time()
OWNER = Identity.fromSeed(b"\x01" * 32)
GOOD = signRecord(OWNER, makeRecord(
    OWNER, "alice", [Multiaddr.fromString("/ip4/192.0.2.1/tcp/4001")], ["web"], now=NOW,
))


class _NoNetwork:
    def request(self, peer, message):
        raise AssertionError("handleRequest must not send requests")


def _node() -> tuple[KademliaNode, Clock]:
    clock = Clock()
    clock.advance(NOW)
    store = RecordStore(clock, {"beam-name": NameValidator()})
    node = KademliaNode(clock, fakeInfo("self"), _NoNetwork(), store, mode="server")
    for i in range(30):
        node.routingTable.add(fakeInfo(i), NOW)
    return node, clock


def _assertStoreValid(test: SynchronousTestCase, node: KademliaNode, now: float) -> None:
    for stored in node.store.items():
        name = stored.key[len(b"/beam-name/"):].decode()
        openRecord(stored.value, now, expectedName=name)  # raises if invalid


class DHTFuzzTests(SynchronousTestCase):
    """
    Hypothesis drives a real node's request handler with the real name
    validator.
    """

    @settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=600))
    def test_randomRequestBytes(self, data: bytes) -> None:
        """
        Random bytes either fail to decode with our error, or decode to a
        request the node answers or refuses with our error.
        """
        node, clock = _node()
        try:
            request = decodeMessage(data)
            response = node.handleRequest(fakeInfo("sender"), request)
            encodeMessage(response)
        except BeamError:
            pass
        _assertStoreValid(self, node, clock.seconds())

    @settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=4),
        st.sampled_from([b"/beam-name/alice", b"/beam-name/bob", b"/other/alice", b""]),
    )
    def test_mutatedNameRecords(self, flips: list[tuple[int, int]], key: bytes) -> None:
        """
        PUT_VALUE of a mutated name record under various keys never stores
        anything that does not validate; the untouched record under its
        own key is stored.
        """
        node, clock = _node()
        value = bytearray(GOOD)
        for pos, byte in flips:
            value[pos] = byte
        request = Message(MessageType.PUT_VALUE, key, Record(key, bytes(value)))
        try:
            node.handleRequest(fakeInfo("sender"), request)
        except BeamError:
            pass
        _assertStoreValid(self, node, clock.seconds())
        if not flips and key == dhtKey("alice"):
            self.assertEqual(node.store.get(key), GOOD)

    def test_forgedAndReplayed(self) -> None:
        """
        A record for a held name signed by another key, and an older
        record of the owner, are both refused; the held record stays.
        """
        node, clock = _node()
        key = dhtKey("alice")
        node.handleRequest(fakeInfo("owner"), Message(MessageType.PUT_VALUE, key, Record(key, GOOD)))
        thief = Identity.fromSeed(b"\x02" * 32)
        forged = signRecord(thief, makeRecord(thief, "alice", [], ["web"], now=NOW + 1))
        older = signRecord(OWNER, makeRecord(OWNER, "alice", [], ["web"], now=NOW - 10))
        for bad in (forged, older):
            self.assertRaises(
                BeamError, node.handleRequest, fakeInfo("x"),
                Message(MessageType.PUT_VALUE, key, Record(key, bad)),
            )
            self.assertEqual(node.store.get(key), GOOD)
        newer = signRecord(OWNER, makeRecord(OWNER, "alice", [], ["web"], now=NOW + 5))
        node.handleRequest(fakeInfo("owner"), Message(MessageType.PUT_VALUE, key, Record(key, newer)))
        self.assertEqual(node.store.get(key), newer)


__all__ = ["PeerInfo"]
