"""
Tests for L{beam.names}: signed name records, the DHT validator's ownership
rules, name pinning and random names.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from beam.dht.store import IValidator, RecordStore

from beam.errors import BeamError, InvalidRecord, ProtocolError, RecordRefused
from beam.identity.keys import Identity, PublicKey
from beam.identity.multiaddr import Multiaddr
from beam.names import (
    NAMESPACE,
    CLOCK_SKEW,
    DEFAULT_TTL,
    DOMAIN,
    MAX_ENVELOPE,
    MAX_TTL,
    PAYLOAD_TYPE,
    REPUBLISH_INTERVAL,
    InvalidName,
    InvalidNameRecord,
    NameKeyChanged,
    NamePins,
    NamePinsUnreadable,
    NameRecord,
    NameValidator,
    decodeRecord,
    dhtKey,
    makeRecord,
    nameFromKey,
    normalizeName,
    openRecord,
    randomName,
    signRecord,
    validateName,
)
from beam.names import record as recordModule
from beam.names.words import ADJECTIVES, ANIMALS
from beam.proto import envelope_pb2, names_pb2
from beam.encoding.varint import encode_uvarint

NOW = 1_700_000_000.0
ALICE = Identity.fromSeed(b"\x01" * 32)
BOB = Identity.fromSeed(b"\x02" * 32)
ADDR = Multiaddr("/ip4/192.0.2.7/tcp/4001")


def _sealRaw(
    identity: Identity,
    payload: bytes,
    domain: str = DOMAIN,
    payloadType: bytes = PAYLOAD_TYPE,
    publicKey: bytes | None = None,
) -> bytes:
    """
    Build a signed envelope exactly as libp2p RFC 0002 describes it, written
    independently of the code under test so the two cross-check.
    """
    d = domain.encode()
    signed = (
        encode_uvarint(len(d)) + d
        + encode_uvarint(len(payloadType)) + payloadType
        + encode_uvarint(len(payload)) + payload
    )
    env = envelope_pb2.Envelope(
        public_key=identity.publicKey.toProtobuf() if publicKey is None else publicKey,
        payload_type=payloadType,
        payload=payload,
        signature=identity.sign(signed),
    )
    return env.SerializeToString()


def _payload(identity: Identity = ALICE, **overrides: Any) -> bytes:
    """
    A name record payload for C{identity}, valid at L{NOW} unless overridden.
    """
    fields: dict[str, Any] = dict(
        name="brave-otter-4821",
        peer_id=identity.peerID.bytes,
        addrs=[ADDR.toBytes()],
        services=["ssh"],
        seq=1,
        created=int(NOW * 1000),
        expires=int((NOW + DEFAULT_TTL) * 1000),
    )
    fields.update(overrides)
    return names_pb2.NameRecord(**fields).SerializeToString()


def _signed(
    identity: Identity = ALICE,
    name: str = "brave-otter-4821",
    now: float = NOW,
    seq: int | None = None,
    ttl: float = DEFAULT_TTL,
) -> bytes:
    return signRecord(identity, makeRecord(identity, name, [ADDR], ["ssh"], now=now, seq=seq, ttl=ttl))


class NameSyntaxTests(SynchronousTestCase):
    """
    What a name may look like.
    """

    def test_validNames(self) -> None:
        """
        Lower-case DNS-style names are accepted unchanged.
        """
        for name in ["a", "brave-otter-4821", "my.home.box", "x" * 63, "0-0", ".".join(["a" * 63] * 3) + ".b" * 30]:
            self.assertEqual(validateName(name), name, name)

    def test_invalidNames(self) -> None:
        """
        Empty names and labels, '-' at either end of a label, other
        characters, upper case, labels over 63 characters and names over 253
        characters are refused.
        """
        bad = [
            "", ".", "a.", ".a", "a..b", "-a", "a-", "a.-b", "a_b", "a b", "Abc",
            "x" * 64, ".".join(["a" * 63] * 4), "é", "a/b", "a\x00",
        ]
        for name in bad:
            self.assertRaises(InvalidName, validateName, name)
        # 254 characters of otherwise fine labels
        self.assertRaises(InvalidName, validateName, ".".join(["a" * 63] * 3) + "." + "b" * 62)
        validateName(".".join(["a" * 63] * 3) + "." + "b" * 61)

    def test_normalizeLowercases(self) -> None:
        """
        User input is stripped and lower-cased before validation.
        """
        self.assertEqual(normalizeName("  Brave-OTTER-4821\n"), "brave-otter-4821")

    def test_normalizeMessage(self) -> None:
        """
        The error quotes what the user typed and says what names may contain;
        it is a BeamError and a ValueError.
        """
        e = self.assertRaises(InvalidName, normalizeName, "Foo_bar")
        self.assertIn("'Foo_bar'", str(e))
        self.assertIn("names are lower-case letters, digits and '-'", str(e))
        self.assertIsInstance(e, BeamError)
        self.assertIsInstance(e, ValueError)

    def test_normalizeNoUnicodeFolding(self) -> None:
        """
        Non-ASCII letters that lower-case to ASCII (the Kelvin sign) are
        refused rather than folded into another name.
        """
        self.assertEqual("\u212a".lower(), "k")
        self.assertRaises(InvalidName, normalizeName, "\u212aite")

    def test_dhtKey(self) -> None:
        """
        A name's DHT key is /beam-name/ plus the name, and maps back.
        """
        self.assertEqual(dhtKey("my.box"), b"/beam-name/my.box")
        self.assertEqual(nameFromKey(b"/beam-name/my.box"), "my.box")
        for key in [b"/other/my.box", b"/beam-name/My", b"/beam-name/\xff", b"/beam-name/"]:
            self.assertRaises(InvalidNameRecord, nameFromKey, key)
        self.assertRaises(InvalidName, dhtKey, "Bad")


class RecordTests(SynchronousTestCase):
    """
    Making, signing and opening name records.
    """

    def test_roundTrip(self) -> None:
        """
        A signed record opens to the same record.
        """
        record = makeRecord(
            ALICE, "Brave-Otter-4821",
            [ADDR, Multiaddr("/ip6/::1/udp/4001/quic-v1")], ["ssh", "web"],
            now=NOW + 0.25,
        )
        self.assertEqual(record.name, "brave-otter-4821")
        self.assertEqual(record.peer, ALICE.peerID)
        self.assertEqual(record.seq, int((NOW + 0.25) * 1000))
        self.assertEqual(record.expires - record.created, DEFAULT_TTL)
        opened = openRecord(signRecord(ALICE, record), NOW + 1, expectedName="brave-otter-4821")
        self.assertEqual(opened, record)
        self.assertIsInstance(opened, NameRecord)
        self.assertEqual(opened.key, b"/beam-name/brave-otter-4821")

    def test_constants(self) -> None:
        """
        The timing constants are those of the design: a one-hour TTL,
        republished every half hour, at most a day, five minutes of skew.
        """
        self.assertEqual((DEFAULT_TTL, REPUBLISH_INTERVAL, MAX_TTL, CLOCK_SKEW), (3600, 1800, 86400, 300))
        self.assertEqual((DOMAIN, PAYLOAD_TYPE), ("beam-name-record", b"/beam/name-record/1"))

    def test_signatureFollowsRFC0002(self) -> None:
        """
        The signature verifies with the envelope key over uvarint-prefixed
        domain, payload type and payload, and the envelope carries the
        protobuf public key and payload type.
        """
        data = _signed()
        env = envelope_pb2.Envelope()
        env.ParseFromString(data)
        self.assertEqual(env.public_key, ALICE.publicKey.toProtobuf())
        self.assertEqual(env.payload_type, b"/beam/name-record/1")
        signed = b"\x10beam-name-record" + b"\x13/beam/name-record/1" + encode_uvarint(len(env.payload)) + env.payload
        self.assertTrue(ALICE.publicKey.verify(env.signature, signed))
        # And a hand-sealed envelope opens.
        self.assertEqual(openRecord(_sealRaw(ALICE, _payload()), NOW).seq, 1)

    def test_seqDefaultsToMilliseconds(self) -> None:
        """
        Without an explicit seq a later record has a higher one, so a
        restarted owner still supersedes its old record; an explicit seq is
        kept.
        """
        a = makeRecord(ALICE, "n", [], now=NOW)
        b = makeRecord(ALICE, "n", [], now=NOW + 0.001)
        self.assertGreater(b.seq, a.seq)
        self.assertEqual(makeRecord(ALICE, "n", [], now=NOW, seq=7).seq, 7)

    def test_makeRecordLimits(self) -> None:
        """
        TTLs outside (0, MAX_TTL], invalid names, negative seqs and too many
        addresses are refused when building a record.
        """
        makeRecord(ALICE, "n", [], now=NOW, ttl=MAX_TTL)
        self.assertRaises(ValueError, makeRecord, ALICE, "n", [], now=NOW, ttl=MAX_TTL + 1)
        self.assertRaises(ValueError, makeRecord, ALICE, "n", [], now=NOW, ttl=0)
        self.assertRaises(InvalidName, makeRecord, ALICE, "bad_name", [], now=NOW)
        self.assertRaises(ValueError, makeRecord, ALICE, "n", [], now=NOW, seq=-1)
        self.assertRaises(ValueError, makeRecord, ALICE, "n", [ADDR] * 33, now=NOW)
        self.assertRaises(ValueError, makeRecord, ALICE, "n", [], ["a\nb"], now=NOW)

    def test_signOnlyOwnRecords(self) -> None:
        """
        A record naming one peer cannot be signed with another's key.
        """
        record = makeRecord(ALICE, "n", [], now=NOW)
        self.assertRaises(ValueError, signRecord, BOB, record)

    def test_signTooLarge(self) -> None:
        """
        A record that would sign to more than MAX_ENVELOPE bytes is refused
        with advice.
        """
        record = makeRecord(ALICE, "n", [], ["s" * 200] * 50, now=NOW)
        e = self.assertRaises(ValueError, signRecord, ALICE, record)
        self.assertIn("fewer addresses or services", str(e))

    def assertRejected(self, data: bytes, now: float = NOW, expectedName: str | None = None, why: str = "") -> None:
        e = self.assertRaises(InvalidNameRecord, openRecord, data, now, expectedName)
        self.assertIsInstance(e, ProtocolError)
        self.assertIsInstance(e, InvalidRecord)
        self.assertIn(why, str(e))

    def test_badSignature(self) -> None:
        """
        A record whose signature was altered is refused.
        """
        env = envelope_pb2.Envelope()
        env.ParseFromString(_signed())
        env.signature = bytes([env.signature[0] ^ 1]) + env.signature[1:]
        self.assertRejected(env.SerializeToString(), why="signature")

    def test_tamperedPayload(self) -> None:
        """
        Changing any field of a signed record (here the address) breaks it.
        """
        env = envelope_pb2.Envelope()
        env.ParseFromString(_signed())
        msg = names_pb2.NameRecord()
        msg.ParseFromString(env.payload)
        msg.addrs[0] = Multiaddr("/ip4/203.0.113.66/tcp/4001").toBytes()
        env.payload = msg.SerializeToString()
        self.assertRejected(env.SerializeToString(), why="signature")

    def test_keyNotPeer(self) -> None:
        """
        A record claiming Alice's peer ID but signed (validly) by Bob is
        refused.
        """
        self.assertRejected(_sealRaw(BOB, _payload(ALICE)), why="different key")

    def test_keySwapped(self) -> None:
        """
        Replacing the envelope's key with the peer's own key while keeping
        another signer's signature fails verification.
        """
        self.assertRejected(_sealRaw(BOB, _payload(ALICE), publicKey=ALICE.publicKey.toProtobuf()), why="signature")

    def test_unsupportedKey(self) -> None:
        """
        An envelope key that is not ed25519 (here a junk RSA key) never
        verifies.
        """
        rsa = PublicKey(0, b"\x30" * 40).toProtobuf()
        self.assertRejected(_sealRaw(ALICE, _payload(), publicKey=rsa))
        self.assertRejected(_sealRaw(ALICE, _payload(), publicKey=b"\xff\xff"), why="public key")

    def test_wrongDomain(self) -> None:
        """
        A payload signed under another envelope domain (a libp2p peer
        record's) is refused.
        """
        self.assertRejected(_sealRaw(ALICE, _payload(), domain="libp2p-peer-record"), why="signature")

    def test_wrongPayloadType(self) -> None:
        """
        A validly signed envelope of another payload type is refused.
        """
        self.assertRejected(_sealRaw(ALICE, _payload(), payloadType=b"\x03\x01"), why="not a name record")

    def test_expired(self) -> None:
        """
        A record is refused from the moment it expires.
        """
        data = _signed()
        openRecord(data, NOW + DEFAULT_TTL - 0.001)
        self.assertRejected(data, now=NOW + DEFAULT_TTL, why="expired")

    def test_tooLongLived(self) -> None:
        """
        A record expiring more than MAX_TTL after its creation (so too far in
        the future) is refused; exactly MAX_TTL is fine.
        """
        ok = _sealRaw(ALICE, _payload(expires=int((NOW + MAX_TTL) * 1000)))
        openRecord(ok, NOW)
        far = _sealRaw(ALICE, _payload(expires=int((NOW + 2 * MAX_TTL) * 1000)))
        self.assertRejected(far, why="longer than")
        justOver = _sealRaw(ALICE, _payload(expires=int((NOW + MAX_TTL) * 1000) + 1))
        self.assertRejected(justOver, why="longer than")

    def test_createdInFuture(self) -> None:
        """
        A record created more than CLOCK_SKEW ahead of our clock is refused;
        within the skew it is accepted.
        """
        soon = _sealRaw(ALICE, _payload(created=int((NOW + CLOCK_SKEW) * 1000)))
        openRecord(soon, NOW)
        later = _sealRaw(ALICE, _payload(created=int((NOW + CLOCK_SKEW) * 1000) + 1))
        self.assertRejected(later, why="future")

    def test_expiresBeforeCreated(self) -> None:
        """
        A record that expires before it was created is refused.
        """
        data = _sealRaw(ALICE, _payload(created=int((NOW + 100) * 1000), expires=int((NOW + 50) * 1000)))
        self.assertRejected(data, why="expire after")

    def test_badName(self) -> None:
        """
        A record whose name is not canonical (upper case, underscore, empty)
        is refused even though it is validly signed.
        """
        for name in ["Brave", "a_b", "", "-x"]:
            self.assertRejected(_sealRaw(ALICE, _payload(name=name)), why="invalid name")

    def test_expectedName(self) -> None:
        """
        A valid record for another name is refused when a name is expected.
        """
        self.assertRejected(_signed(name="other"), expectedName="brave-otter-4821", why="not 'brave-otter-4821'")

    def test_oversizeRefusedBeforeParsing(self) -> None:
        """
        More than MAX_ENVELOPE bytes are refused without being parsed;
        exactly MAX_ENVELOPE bytes are parsed.
        """
        parsed: list[bytes] = []

        class Spy:
            def ParseFromString(self, data: bytes) -> None:
                parsed.append(data)
                raise ValueError("spy")

        self.patch(recordModule.envelope_pb2, "Envelope", Spy)
        self.assertRejected(b"\x00" * (MAX_ENVELOPE + 1), why="larger than")
        self.assertEqual(parsed, [])
        self.assertRejected(b"\x00" * MAX_ENVELOPE, why="malformed")
        self.assertEqual(len(parsed), 1)

    def test_garbageAddrs(self) -> None:
        """
        One unparseable address makes the whole signed record invalid.
        """
        data = _sealRaw(ALICE, _payload(addrs=[ADDR.toBytes(), b"\xff\xff\xff"]))
        self.assertRejected(data, why="invalid address")

    def test_tooManyAddrs(self) -> None:
        """
        More than 32 addresses are refused.
        """
        self.assertRejected(_sealRaw(ALICE, _payload(addrs=[ADDR.toBytes()] * 33)), why="addresses")

    def test_badPeerID(self) -> None:
        """
        A record whose peer ID is not a multihash is refused.
        """
        self.assertRejected(_sealRaw(ALICE, _payload(peer_id=b"\x99\x01x")), why="peer ID")

    def test_badService(self) -> None:
        """
        Empty service names or ones with control characters are refused.
        """
        self.assertRejected(_sealRaw(ALICE, _payload(services=[""])), why="service")
        self.assertRejected(_sealRaw(ALICE, _payload(services=["a\x1b[31m"])), why="control")

    def test_garbagePayload(self) -> None:
        """
        A validly signed payload that is not a protobuf is refused.
        """
        self.assertRejected(_sealRaw(ALICE, b"\xff\xff\xff"), why="malformed")

    def test_decodeIgnoresTime(self) -> None:
        """
        decodeRecord checks the signature but not the times, for records
        whose expiry the caller judges itself.
        """
        record = decodeRecord(_signed(now=NOW - 10 * DEFAULT_TTL))
        self.assertTrue(record.isExpired(NOW))
        self.assertRaises(InvalidNameRecord, decodeRecord, _sealRaw(BOB, _payload(ALICE)))


class RelayAddressRecordTests(SynchronousTestCase):
    """
    Name records of nodes behind NATs list relay addresses.
    """

    def test_circuitAddress(self) -> None:
        """
        A C{.../p2p/RELAY/p2p-circuit} address survives signing and
        opening, in the order given (relay first: what the daemon
        publishes for a private node).
        """
        relay = Identity.generate().peerID
        circuit = Multiaddr(f"/ip4/192.0.2.7/tcp/4001/p2p/{relay}/p2p-circuit")
        record = makeRecord(ALICE, "behind-nat", [circuit, ADDR], ["web"], now=NOW)
        opened = openRecord(signRecord(ALICE, record), NOW + 1, expectedName="behind-nat")
        self.assertEqual(opened.addrs, (circuit, ADDR))


class FuzzTests(SynchronousTestCase):
    """
    Arbitrary input raises only InvalidNameRecord.
    """

    def _open(self, data: bytes) -> None:
        try:
            openRecord(data, NOW)
        except InvalidNameRecord:
            pass

    @settings(deadline=None, max_examples=300)
    @given(st.binary(max_size=600))
    def test_randomBytes(self, data: bytes) -> None:
        """
        Random bytes never escape as anything but InvalidNameRecord.
        """
        self._open(data)

    @settings(deadline=None, max_examples=300)
    @given(st.data())
    def test_mutatedEnvelope(self, data: st.DataObject) -> None:
        """
        Flipping, deleting or inserting bytes in a valid envelope yields
        InvalidNameRecord or (if the change was meaningless) a record that
        still says what Alice signed.
        """
        original = bytearray(_signed())
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(original) - 1))
            op = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
            if op == "flip":
                original[pos] ^= data.draw(st.integers(1, 255))
            elif op == "delete":
                del original[pos]
            elif op == "insert":
                original[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
            else:
                del original[pos:]
            if not original:
                original = bytearray(b"\x00")
        try:
            record = openRecord(bytes(original), NOW)
        except InvalidNameRecord:
            return
        self.assertEqual(record, decodeRecord(_signed()))

    @settings(deadline=None, max_examples=300)
    @given(st.data())
    def test_signedGarbagePayload(self, data: st.DataObject) -> None:
        """
        Properly signed payloads built from random or mutated protobuf
        fields get past the signature check and are then refused cleanly
        (or accepted if they happen to be valid).
        """
        if data.draw(st.booleans()):
            payload = data.draw(st.binary(max_size=300))
        else:
            payload = _payload(
                name=data.draw(st.text(max_size=20)),
                peer_id=data.draw(st.sampled_from([ALICE.peerID.bytes, b"", b"\x00\x01"])) + data.draw(st.binary(max_size=2)),
                addrs=data.draw(st.lists(st.binary(max_size=20), max_size=3)),
                services=data.draw(st.lists(st.text(max_size=10), max_size=3)),
                seq=data.draw(st.integers(0, 2**64 - 1)),
                created=data.draw(st.integers(0, 2**64 - 1)),
                expires=data.draw(st.integers(0, 2**64 - 1)),
            )
        self._open(_sealRaw(ALICE, payload))


class ValidatorTests(SynchronousTestCase):
    """
    The DHT validator: validity, choice among answers, and ownership.
    """

    key = b"/beam-name/brave-otter-4821"

    def setUp(self) -> None:
        self.v = NameValidator()

    def test_interface(self) -> None:
        """
        NameValidator provides IValidator.
        """
        self.assertTrue(verifyObject(IValidator, self.v))

    def test_validate(self) -> None:
        """
        A live record under its own name's key is valid; under another
        name's key, expired, or under a malformed key it is not.
        """
        data = _signed()
        self.v.validate(self.key, data, NOW)
        self.assertRaises(InvalidNameRecord, self.v.validate, b"/beam-name/other", data, NOW)
        self.assertRaises(InvalidNameRecord, self.v.validate, b"/beam-name/Brave", data, NOW)
        self.assertRaises(InvalidNameRecord, self.v.validate, b"/pk/brave-otter-4821", data, NOW)
        self.assertRaises(InvalidNameRecord, self.v.validate, self.key, data, NOW + DEFAULT_TTL)
        self.assertRaises(InvalidNameRecord, self.v.validate, self.key, b"junk", NOW)

    def test_expires(self) -> None:
        """
        expires() reports the record's expiry; junk counts as long expired.
        """
        self.assertEqual(self.v.expires(_signed()), NOW + DEFAULT_TTL)
        self.assertEqual(self.v.expires(b"junk"), 0.0)

    def test_selectFirstClaimant(self) -> None:
        """
        With one answer each, the owner whose claim was made first wins,
        whatever the order of the answers.
        """
        alice = _signed(ALICE, now=NOW)
        bob = _signed(BOB, now=NOW + 60)
        self.assertEqual(self.v.select(self.key, [alice, bob]), 0)
        self.assertEqual(self.v.select(self.key, [bob, alice]), 1)

    def test_selectHighestSeqOfOwner(self) -> None:
        """
        Among the winning owner's records the highest seq wins.
        """
        old = _signed(ALICE, now=NOW, seq=5)
        new = _signed(ALICE, now=NOW + 1, seq=9)
        mid = _signed(ALICE, now=NOW + 2, seq=7)
        self.assertEqual(self.v.select(self.key, [old, new, mid]), 1)

    def test_selectMajorityBeatsBackdating(self) -> None:
        """
        An owner named by more holders wins over a single answer whose
        owner backdated its creation time.
        """
        alice = _signed(ALICE, now=NOW)
        bob = _signed(BOB, now=NOW - 3600, ttl=2 * DEFAULT_TTL)
        self.assertEqual(self.v.select(self.key, [bob, alice, alice]), 1)

    def test_selectSkipsInvalid(self) -> None:
        """
        Junk, records for other names and (given now) expired records are
        skipped; if nothing is valid, select raises.
        """
        alice = _signed(ALICE, now=NOW + 60)
        stale = _signed(BOB, now=NOW - 2 * DEFAULT_TTL)
        other = _signed(BOB, name="other", now=NOW - 60)
        self.assertEqual(self.v.select(self.key, [b"junk", other, alice]), 2)
        self.assertEqual(self.v.select(self.key, [stale, alice]), 0)
        self.assertEqual(self.v.select(self.key, [stale, alice], now=NOW + 61), 1)
        self.assertRaises(InvalidNameRecord, self.v.select, self.key, [b"junk", other])
        self.assertRaises(InvalidNameRecord, self.v.select, self.key, [])

    def test_ownerUpdates(self) -> None:
        """
        The owner may replace its record with one of a higher seq.
        """
        old = _signed(ALICE, now=NOW, seq=1)
        new = _signed(ALICE, now=NOW + 1, seq=2)
        self.assertTrue(self.v.mayReplace(self.key, old, new, NOW + 1))

    def test_replayRefused(self) -> None:
        """
        A replay of the owner's older or equal-seq record does not replace a
        newer one.
        """
        old = _signed(ALICE, now=NOW, seq=1)
        new = _signed(ALICE, now=NOW + 1, seq=2)
        self.assertFalse(self.v.mayReplace(self.key, new, old, NOW + 1))
        self.assertFalse(self.v.mayReplace(self.key, new, new, NOW + 1))

    def test_firstClaimantKeepsLiveName(self) -> None:
        """
        Another peer cannot take a name while its claim is live, even with a
        higher seq.
        """
        alice = _signed(ALICE, now=NOW, seq=1)
        bob = _signed(BOB, now=NOW + 60, seq=10**15)
        self.assertFalse(self.v.mayReplace(self.key, alice, bob, NOW + 60))

    def test_takeoverAfterExpiry(self) -> None:
        """
        Once the held claim has expired another peer may take the name.
        """
        alice = _signed(ALICE, now=NOW)
        bob = _signed(BOB, now=NOW + DEFAULT_TTL)
        self.assertTrue(self.v.mayReplace(self.key, alice, bob, NOW + DEFAULT_TTL))

    def test_mayReplaceWithoutNow(self) -> None:
        """
        Called as the DHT store does, without a time, the held record is
        taken as live: only its owner with a higher seq may replace it.
        """
        alice1 = _signed(ALICE, now=NOW, seq=1)
        alice2 = _signed(ALICE, now=NOW + 1, seq=2)
        bob = _signed(BOB, now=NOW + 1)
        self.assertTrue(self.v.mayReplace(self.key, alice1, alice2))
        self.assertFalse(self.v.mayReplace(self.key, alice2, alice1))
        self.assertFalse(self.v.mayReplace(self.key, alice1, bob))

    def test_invalidNewNeverReplaces(self) -> None:
        """
        An invalid or expired new value never replaces anything; a held
        value that does not decode is replaced by a valid one.
        """
        alice = _signed(ALICE, now=NOW)
        self.assertFalse(self.v.mayReplace(self.key, alice, b"junk", NOW))
        self.assertFalse(self.v.mayReplace(self.key, b"junk", _signed(BOB, now=NOW - 2 * DEFAULT_TTL), NOW))
        self.assertTrue(self.v.mayReplace(self.key, b"junk", alice, NOW))


class RecordStoreTests(SynchronousTestCase):
    """
    NameValidator plugged into the DHT's RecordStore.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = RecordStore(self.clock, {NAMESPACE: NameValidator()})
        self.key = dhtKey("brave-otter-4821")

    def test_ownershipThroughStore(self) -> None:
        """
        The store keeps the first claimant against a rival, takes the
        owner's newer record, refuses its replay and an invalid record, and
        lets the rival in once the claim expired.
        """
        alice1 = _signed(ALICE, now=NOW, seq=1)
        alice2 = _signed(ALICE, now=NOW + 1, seq=2)
        self.assertTrue(self.store.put(self.key, alice1))
        self.assertEqual(self.store.record(self.key).expires, NOW + DEFAULT_TTL)
        self.assertRaises(RecordRefused, self.store.put, self.key, _signed(BOB, now=NOW))
        self.clock.advance(1)
        self.assertTrue(self.store.put(self.key, alice2))
        self.assertRaises(RecordRefused, self.store.put, self.key, alice1)
        self.assertRaises(InvalidRecord, self.store.put, self.key, _signed(BOB, name="other"))
        self.assertEqual(self.store.get(self.key), alice2)
        self.clock.advance(DEFAULT_TTL)
        bob = _signed(BOB, now=self.clock.seconds())
        self.assertTrue(self.store.put(self.key, bob))
        self.assertEqual(self.store.get(self.key), bob)


class PinsTests(SynchronousTestCase):
    """
    Trust-on-first-use pins of name -> peer.
    """

    def setUp(self) -> None:
        self.home = Path(self.mktemp())
        self.home.mkdir()
        self.pins = NamePins(self.home)

    def test_newThenKnown(self) -> None:
        """
        The first check pins the peer ("new"); the same peer is then "known".
        """
        self.assertEqual(self.pins.check("Box", ALICE.peerID), "new")
        self.assertEqual(self.pins.check("box", ALICE.peerID), "known")
        self.assertEqual(self.pins.get("box"), ALICE.peerID)

    def test_changedKey(self) -> None:
        """
        Another peer for a pinned name raises NameKeyChanged with the
        warning text, and the pin is kept.
        """
        self.pins.check("box", ALICE.peerID)
        e = self.assertRaises(NameKeyChanged, self.pins.check, "box", BOB.peerID)
        self.assertEqual(
            str(e),
            f"the key for box changed from {ALICE.peerID} to {BOB.peerID}: if you "
            f"expect this, run `beam connect box --accept-new-key`",
        )
        self.assertEqual((e.name, e.old, e.new), ("box", ALICE.peerID, BOB.peerID))
        self.assertEqual(self.pins.get("box"), ALICE.peerID)

    def test_accept(self) -> None:
        """
        Accepting the new key re-pins the name.
        """
        self.pins.check("box", ALICE.peerID)
        self.pins.accept("box", BOB.peerID)
        self.assertEqual(self.pins.check("box", BOB.peerID), "known")
        self.assertRaises(NameKeyChanged, self.pins.check, "box", ALICE.peerID)

    def test_forget(self) -> None:
        """
        A forgotten name is new again.
        """
        self.pins.check("box", ALICE.peerID)
        self.assertTrue(self.pins.forget("box"))
        self.assertFalse(self.pins.forget("box"))
        self.assertEqual(self.pins.check("box", BOB.peerID), "new")

    def test_fileModeAndReload(self) -> None:
        """
        Pins live in known_names.json, mode 0600, and survive a reload.
        """
        self.pins.check("box", ALICE.peerID)
        self.pins.check("nas.home", BOB.peerID)
        path = self.home / "known_names.json"
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        doc = json.loads(path.read_text())
        self.assertEqual(doc["names"]["box"], str(ALICE.peerID))
        again = NamePins(self.home)
        self.assertEqual(again.items(), [("box", ALICE.peerID), ("nas.home", BOB.peerID)])
        self.assertRaises(NameKeyChanged, again.check, "box", BOB.peerID)

    def test_sharedBetweenInstances(self) -> None:
        """
        Two NamePins on one home see each other's changes.
        """
        other = NamePins(self.home)
        self.pins.check("box", ALICE.peerID)
        self.assertRaises(NameKeyChanged, other.check, "box", BOB.peerID)

    def test_damagedFile(self) -> None:
        """
        A damaged pins file is an error, not an empty list that would trust
        any key.
        """
        (self.home / "known_names.json").write_text('{"version": 1, "names": {"box": "nope"}}')
        self.assertRaises(NamePinsUnreadable, NamePins, self.home)
        (self.home / "known_names.json").write_text("[")
        self.assertRaises(NamePinsUnreadable, self.pins.check, "box", ALICE.peerID)

    def test_invalidName(self) -> None:
        """
        Invalid names cannot be pinned.
        """
        self.assertRaises(InvalidName, self.pins.check, "a_b", ALICE.peerID)


class WordsTests(SynchronousTestCase):
    """
    Random memorable names.
    """

    def test_wordLists(self) -> None:
        """
        There are 64 distinct adjectives and 64 distinct animals, each a
        plain lower-case word.
        """
        for words in (ADJECTIVES, ANIMALS):
            self.assertEqual(len(set(words)), 64)
            for word in words:
                self.assertRegex(word, r"^[a-z]+$")

    def test_deterministic(self) -> None:
        """
        The name is drawn from the given random source.
        """
        self.assertEqual(randomName(lambda n: bytes(n)), "able-badger-0000")
        self.assertEqual(randomName(lambda n: b"\x03\x26" + (4821).to_bytes(4, "big")), "brave-otter-4821")

    def test_wrongLength(self) -> None:
        """
        A random source returning too few bytes is an error.
        """
        self.assertRaises(ValueError, randomName, lambda n: b"\x00")

    @settings(deadline=None, max_examples=200)
    @given(st.binary(min_size=6, max_size=6))
    def test_alwaysValid(self, raw: bytes) -> None:
        """
        Every random name is a valid, canonical name of the form
        adjective-animal-NNNN.
        """
        name = randomName(lambda n: raw)
        self.assertEqual(validateName(name), name)
        adjective, animal, number = name.split("-")
        self.assertIn(adjective, ADJECTIVES)
        self.assertIn(animal, ANIMALS)
        self.assertRegex(number, r"^[0-9]{4}$")

    def test_default(self) -> None:
        """
        By default names come from os.urandom and vary.
        """
        names = {randomName() for _ in range(20)}
        self.assertGreater(len(names), 1)


class _KadDHT:
    """
    What L{NameService} needs of the DHT, over one in-memory
    L{beam.dht.kad.KademliaNode}.
    """

    def __init__(self, node: Any) -> None:
        self.node = node

    def addValidator(self, namespace: str, validator: Any) -> None:
        self.node.store.validators[namespace] = validator

    def putValue(self, key: bytes, value: bytes) -> Any:
        return self.node.putValue(key, value)

    def getValue(self, key: bytes) -> Any:
        return self.node.getValue(key).addCallbacks(lambda r: (r[0], {}), lambda f: (None, {"queried": 0}))

    def whenBootstrapped(self) -> Any:
        from twisted.internet.defer import succeed

        return succeed(None)


class RegisterCountTests(SynchronousTestCase):
    """
    C{register} reports how many I{other} peers stored the name, and
    C{beam register} warns when none did.
    """

    def setUp(self) -> None:
        from beam.test.dhtutil import FakeNetwork

        self.clock = Clock()
        self.clock.advance(NOW)
        self.net = FakeNetwork(self.clock)

    def register(self, nodes: int) -> Any:
        from beam.names.service import NameService
        from beam.test.dhtutil import fillTables

        kad = [self.net.addNode(i) for i in range(nodes)]
        for n in kad:
            n.store.validators[NAMESPACE] = NameValidator()
        fillTables(self.net)
        service = NameService(self.clock, ALICE, _KadDHT(kad[0]), Path(self.mktemp()),
                              lambda: [ADDR], lambda: ["web"])
        d = service.register("brave-otter-4821")
        self.clock.pump([0.05] * 200)
        status = self.successResultOf(d)
        return status, kad

    def test_countExcludesSelf(self) -> None:
        """
        Among three DHT nodes, the record is on all three but the result
        says two: ourselves never count.
        """
        status, kad = self.register(3)
        self.assertIsNone(status.error)
        self.assertEqual(sum(1 for n in kad if n.store.get(dhtKey("brave-otter-4821")) is not None), 3)
        self.assertEqual(status.storedOn, 2)

    def test_noPeers(self) -> None:
        """
        With no DHT peers the name is kept here only and the count is 0
        (not "stored on 1 peer").
        """
        status, kad = self.register(1)
        self.assertEqual(status.storedOn, 0)
        self.assertIsNotNone(kad[0].store.get(dhtKey("brave-otter-4821")))

    def test_printRegistered(self) -> None:
        """
        C{beam register} says how many other peers stored the name, and
        warns (in text and in the JSON event) when none did.
        """
        import io

        from beam.cli import _Out, _printRegistered

        def printed(storedOn: int, asJSON: bool) -> str:
            stream = io.StringIO()
            _printRegistered(_Out(stream, asJSON), {"name": "alice", "peer_id": "12D3", "stored_on": storedOn,
                                                    "error": None})
            return stream.getvalue()

        text = printed(3, False)
        self.assertIn("stored on 3 other peer(s)", text)
        self.assertNotIn("warning", text)
        self.assertNotIn("warning", json.loads(printed(3, True)))
        text = printed(0, False)
        self.assertIn("stored on 0 other peer(s)", text)
        self.assertIn("warning: no other peer stored the name alice; it is only on this node", text)
        event = json.loads(printed(0, True))
        self.assertEqual(event["event"], "registered")
        self.assertIn("only on this node", event["warning"])
