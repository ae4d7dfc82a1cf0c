"""
libp2p signed envelopes (libp2p/specs RFC 0002), for any record a peer
signs: the relay's reservation vouchers today.

An envelope carries a payload, its type (a multicodec, as raw bytes) and
the signer's public key; the signature covers C{uvarint(len(domain)) ||
domain || uvarint(len(type)) || type || uvarint(len(payload)) || payload},
so an envelope signed for one domain can never be replayed as another.

It lives in L{beam.p2p} (not next to name records in L{beam.names}, which
sign their envelopes the same way) because the peer-to-peer layer must
not import the layers above it.
"""

from __future__ import annotations

from beam.encoding.varint import encode_uvarint
from beam.errors import BeamError, InvalidRecord
from beam.identity.keys import Identity, PublicKey
from beam.proto import envelope_pb2

__all__ = ["InvalidEnvelope", "openEnvelope", "sealEnvelope", "signedBytes"]


class InvalidEnvelope(InvalidRecord):
    """
    An envelope that is oversized, malformed, of another type, or badly
    signed.
    """


def signedBytes(domain: str, payloadType: bytes, payload: bytes) -> bytes:
    """
    What an envelope's signature covers.
    """
    d = domain.encode("utf-8")
    return b"".join((
        encode_uvarint(len(d)), d,
        encode_uvarint(len(payloadType)), payloadType,
        encode_uvarint(len(payload)), payload,
    ))


def sealEnvelope(identity: Identity, domain: str, payloadType: bytes, payload: bytes) -> bytes:
    """
    Sign C{payload} with C{identity}: the envelope's bytes (deterministic
    protobuf).
    """
    envelope = envelope_pb2.Envelope(
        public_key=identity.publicKey.toProtobuf(),
        payload_type=payloadType,
        payload=payload,
        signature=identity.sign(signedBytes(domain, payloadType, payload)),
    )
    return envelope.SerializeToString(deterministic=True)


def openEnvelope(data: bytes, domain: str, payloadType: bytes, maxSize: int) -> tuple[PublicKey, bytes]:
    """
    Check an envelope from a peer: no larger than C{maxSize} (checked
    before parsing), of C{payloadType}, signed for C{domain} by the key it
    carries.

    @return: the signer's key and the payload.
    @raise InvalidEnvelope: any of that is not so.
    """
    if len(data) > maxSize:
        raise InvalidEnvelope(f"signed envelope of {len(data)} bytes is larger than {maxSize}")
    envelope = envelope_pb2.Envelope()
    try:
        envelope.ParseFromString(bytes(data))
    except Exception as e:  # protobuf's DecodeError and others on odd input
        raise InvalidEnvelope(f"malformed signed envelope: {e}") from None
    if envelope.payload_type != payloadType:
        raise InvalidEnvelope(f"signed envelope has payload type {envelope.payload_type.hex()}, "
                              f"not {payloadType.hex()}")
    try:
        key = PublicKey.fromProtobuf(envelope.public_key)
    except BeamError as e:
        raise InvalidEnvelope(f"signed envelope has a bad public key: {e}") from None
    if not key.verify(envelope.signature, signedBytes(domain, envelope.payload_type, envelope.payload)):
        raise InvalidEnvelope("signed envelope's signature does not verify")
    return key, envelope.payload
