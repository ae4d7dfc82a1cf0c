"""
Tests for L{beam.identity.keys}: peer IDs and identities as libp2p defines them.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from beam.errors import InvalidKey, InvalidPeerID
from beam.identity.keys import Identity, PeerID, PublicKey

# From libp2p/specs peer-ids/peer-ids.md "Test vectors" (ed25519 keys).
SPEC_ED25519_PUBLIC = bytes.fromhex(
    "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SPEC_ED25519_PRIVATE = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
    "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)


class PeerIDTests(SynchronousTestCase):
    """
    Peer ID derivation, text forms and parsing.
    """

    def test_identityMultihashForEd25519(self) -> None:
        """
        An ed25519 key's peer ID is the identity multihash of its protobuf
        encoding, and its text starts with 12D3KooW.
        """
        key = PublicKey.fromProtobuf(SPEC_ED25519_PUBLIC)
        pid = key.peerID()
        self.assertEqual(pid.bytes, b"\x00\x24" + SPEC_ED25519_PUBLIC)
        self.assertTrue(str(pid).startswith("12D3KooW"))
        self.assertEqual(pid.publicKey(), key)

    def test_specPrivateKeyVector(self) -> None:
        """
        The spec's private key vector parses and yields the spec's public key.
        """
        ident = Identity.fromProtobuf(SPEC_ED25519_PRIVATE)
        self.assertEqual(ident.publicKey.toProtobuf(), SPEC_ED25519_PUBLIC)
        self.assertEqual(ident.toProtobuf(), SPEC_ED25519_PRIVATE)

    def test_legacyAndCIDForms(self) -> None:
        """
        A base58 sha256 peer ID and its CIDv1 form (the spec's example) are
        the same peer.
        """
        a = PeerID.fromString("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
        b = PeerID.fromString("bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe")
        self.assertEqual(a, b)
        self.assertEqual(a.toCID(), "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe")

    def test_roundTrip(self) -> None:
        """
        Text and CID forms of a fresh ed25519 peer ID parse back to it.
        """
        pid = Identity.generate().peerID
        self.assertEqual(PeerID.fromString(str(pid)), pid)
        self.assertEqual(PeerID.fromString(pid.toCID()), pid)

    def test_invalid(self) -> None:
        """
        Garbage, bad characters and wrong multihash lengths are refused with
        L{InvalidPeerID}.
        """
        for bad in ["", "12D3KooW0OIl", "Qm", "bafyfoo", "x123", "12D3KooWAAAA"]:
            self.assertRaises(InvalidPeerID, PeerID.fromString, bad)

    def test_signVerify(self) -> None:
        """
        A signature verifies under the signer's key and not under another.
        """
        a, b = Identity.generate(), Identity.generate()
        sig = a.sign(b"message")
        self.assertTrue(a.publicKey.verify(sig, b"message"))
        self.assertFalse(a.publicKey.verify(sig, b"messagf"))
        self.assertFalse(b.publicKey.verify(sig, b"message"))

    def test_badPublicKeys(self) -> None:
        """
        Malformed public key encodings raise L{InvalidKey}.
        """
        for bad in [b"", b"\x08\x01", b"\x08\x01\x12\x03abc", b"\xff" * 10]:
            self.assertRaises(InvalidKey, PublicKey.fromProtobuf, bad)

    @settings(deadline=None, max_examples=300)
    @given(st.text(max_size=80))
    def test_fuzzText(self, text: str) -> None:
        """
        Random text either parses as a peer ID or raises L{InvalidPeerID}.
        """
        try:
            PeerID.fromString(text)
        except InvalidPeerID:
            pass

    @settings(deadline=None, max_examples=300)
    @given(st.binary(max_size=80))
    def test_fuzzKeyBytes(self, data: bytes) -> None:
        """
        Random bytes either parse as a public key or raise L{InvalidKey}.
        """
        try:
            PublicKey.fromProtobuf(data)
        except InvalidKey:
            pass
