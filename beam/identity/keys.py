"""
Node identities and libp2p peer IDs.

A peer ID is a multihash of the protobuf-encoded public key (libp2p
C{peer-ids} spec): the identity multihash when the encoding is at most 42 bytes
(every ed25519 key), SHA2-256 otherwise.  Its text form is base58btc
(C{12D3KooW...} for ed25519); the CIDv1 form (multibase, codec
C{libp2p-key}) is accepted on input.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from beam.encoding.base58 import b58decode, b58encode
from beam.errors import DecodeError, InvalidKey, InvalidPeerID
from beam.proto import crypto_pb2
from beam.encoding.varint import decode_uvarint_exact, encode_uvarint

KEY_TYPE_ED25519: Final = crypto_pb2.Ed25519
_IDENTITY_MH: Final = 0x00
_SHA256_MH: Final = 0x12
_LIBP2P_KEY_CODEC: Final = 0x72
_MAX_INLINE_KEY: Final = 42
MAX_PUBLIC_KEY_BYTES: Final = 4096


class PublicKey:
    """
    A libp2p public key: a key type and its type-specific bytes.

    Only ed25519 keys can verify signatures; other types are carried so that
    their peer IDs can be computed and compared.
    """

    __slots__ = ("keyType", "data", "_ed")

    def __init__(self, keyType: int, data: bytes) -> None:
        self.keyType = keyType
        self.data = bytes(data)
        self._ed: Ed25519PublicKey | None = None
        if keyType == KEY_TYPE_ED25519:
            if len(data) != 32:
                raise InvalidKey("ed25519 public key must be 32 bytes")
            self._ed = Ed25519PublicKey.from_public_bytes(self.data)

    @classmethod
    def fromProtobuf(cls, encoded: bytes) -> "PublicKey":
        """
        Parse the protobuf C{PublicKey} encoding used on the wire.

        @raise InvalidKey: the bytes are not a well-formed public key.
        """
        if len(encoded) > MAX_PUBLIC_KEY_BYTES:
            raise InvalidKey("public key too large")
        msg = crypto_pb2.PublicKey()
        try:
            msg.ParseFromString(encoded)
        except Exception as e:  # protobuf raises its own DecodeError and others
            raise InvalidKey(f"malformed public key: {e}") from None
        if not msg.HasField("Type") or not msg.HasField("Data"):
            raise InvalidKey("public key lacks type or data")
        return cls(msg.Type, msg.Data)

    def toProtobuf(self) -> bytes:
        """
        The deterministic protobuf encoding (field order 1, 2) that peer IDs hash.
        """
        return (
            b"\x08" + encode_uvarint(self.keyType)
            + b"\x12" + encode_uvarint(len(self.data)) + self.data
        )

    def verify(self, signature: bytes, message: bytes) -> bool:
        """
        Check C{signature} over C{message}.  Unsupported key types never verify.
        """
        if self._ed is None:
            return False
        try:
            self._ed.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def peerID(self) -> "PeerID":
        """
        The peer ID this key hashes to.
        """
        return PeerID.fromPublicKey(self)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PublicKey)
            and other.keyType == self.keyType
            and other.data == self.data
        )

    def __hash__(self) -> int:
        return hash((self.keyType, self.data))


class PeerID:
    """
    A libp2p peer ID: the raw multihash bytes, compared by value.
    """

    __slots__ = ("bytes", "_text")

    def __init__(self, raw: bytes) -> None:
        _checkMultihash(raw)
        self.bytes = bytes(raw)
        self._text = b58encode(self.bytes)

    @classmethod
    def fromPublicKey(cls, key: PublicKey) -> "PeerID":
        encoded = key.toProtobuf()
        if len(encoded) <= _MAX_INLINE_KEY:
            return cls(bytes([_IDENTITY_MH, len(encoded)]) + encoded)
        return cls(bytes([_SHA256_MH, 32]) + hashlib.sha256(encoded).digest())

    @classmethod
    def fromString(cls, text: str) -> "PeerID":
        """
        Parse a base58btc peer ID or a CIDv1 (multibase) one.

        @raise InvalidPeerID: not a peer ID.
        """
        text = text.strip()
        if not text:
            raise InvalidPeerID("empty peer ID")
        try:
            if text.startswith(("1", "Qm")) or text.startswith("12D3"):
                return cls(b58decode(text))
            return cls(_decodeCID(text))
        except (DecodeError, ValueError) as e:
            raise InvalidPeerID(f"invalid peer ID {text!r}: {e}") from None

    def publicKey(self) -> PublicKey | None:
        """
        The public key inlined in an identity-multihash peer ID, if any.
        """
        if self.bytes[0] != _IDENTITY_MH:
            return None
        try:
            return PublicKey.fromProtobuf(self.bytes[2:])
        except InvalidKey:
            return None

    def toCID(self) -> str:
        """
        The CIDv1 text form (base32, C{libp2p-key} codec).
        """
        raw = b"\x01" + encode_uvarint(_LIBP2P_KEY_CODEC) + self.bytes
        return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"PeerID({self._text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerID) and other.bytes == self.bytes

    def __hash__(self) -> int:
        return hash(self.bytes)


def _checkMultihash(raw: bytes) -> None:
    if len(raw) < 2 or len(raw) > 128:
        raise InvalidPeerID("peer ID has an impossible length")
    code, off = decode_uvarint_exact(raw)
    length, off = decode_uvarint_exact(raw, off)
    if code not in (_IDENTITY_MH, _SHA256_MH):
        raise InvalidPeerID(f"unsupported multihash code 0x{code:x}")
    if len(raw) - off != length:
        raise InvalidPeerID("multihash length does not match")
    if code == _SHA256_MH and length != 32:
        raise InvalidPeerID("sha2-256 multihash must be 32 bytes")
    if code == _IDENTITY_MH:
        if length > _MAX_INLINE_KEY:
            raise InvalidPeerID("inlined public key too long")
        try:
            PublicKey.fromProtobuf(bytes(raw[off:]))
        except InvalidKey as e:
            raise InvalidPeerID(f"peer ID does not inline a valid public key: {e}") from None


def _decodeCID(text: str) -> bytes:
    prefix, body = text[0], text[1:]
    if prefix == "b":
        pad = "=" * (-len(body) % 8)
        raw = base64.b32decode(body.upper() + pad)
    elif prefix == "z":
        raw = b58decode(body)
    elif prefix == "f":
        raw = bytes.fromhex(body)
    else:
        raise DecodeError(f"unsupported multibase prefix {prefix!r}")
    version, off = decode_uvarint_exact(raw)
    if version != 1:
        raise DecodeError("only CIDv1 peer IDs are supported")
    codec, off = decode_uvarint_exact(raw, off)
    if codec != _LIBP2P_KEY_CODEC:
        raise DecodeError("CID codec is not libp2p-key")
    return raw[off:]


class Identity:
    """
    A node's ed25519 key pair.
    """

    __slots__ = ("privateKey", "publicKey", "peerID")

    def __init__(self, privateKey: Ed25519PrivateKey) -> None:
        self.privateKey = privateKey
        raw = privateKey.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.publicKey = PublicKey(KEY_TYPE_ED25519, raw)
        self.peerID = self.publicKey.peerID()

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def fromSeed(cls, seed: bytes) -> "Identity":
        """
        Deterministic identity from a 32-byte seed, for tests and fixtures.
        """
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, message: bytes) -> bytes:
        return self.privateKey.sign(message)

    def toProtobuf(self) -> bytes:
        """
        The libp2p C{PrivateKey} encoding: ed25519 data is seed then public key.
        """
        seed = self.privateKey.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        msg = crypto_pb2.PrivateKey(Type=KEY_TYPE_ED25519, Data=seed + self.publicKey.data)
        return msg.SerializeToString()

    @classmethod
    def fromProtobuf(cls, encoded: bytes) -> "Identity":
        """
        @raise InvalidKey: not an ed25519 libp2p private key.
        """
        msg = crypto_pb2.PrivateKey()
        try:
            msg.ParseFromString(encoded)
        except Exception as e:
            raise InvalidKey(f"malformed private key: {e}") from None
        if msg.Type != KEY_TYPE_ED25519 or len(msg.Data) not in (32, 64):
            raise InvalidKey("only ed25519 private keys are supported")
        ident = cls(Ed25519PrivateKey.from_private_bytes(msg.Data[:32]))
        if len(msg.Data) == 64 and msg.Data[32:] != ident.publicKey.data:
            raise InvalidKey("private key does not match its public half")
        return ident
