"""
Reservation vouchers: the relay's signed statement "I will relay for PEER
until EXPIRATION" (libp2p/specs relay/circuit-v2.md, "Reservation
Vouchers"), a signed envelope with the domain C{libp2p-relay-rsvp} and the
payload type C{0x0302} (the multicodec's two bytes, as go-libp2p and
js-libp2p write them).

Vouchers are advisory in the spec (nobody requires them to dial yet); the
client checks the one it gets, so a relay that signs nonsense is noticed.
"""

from __future__ import annotations

from typing import Final

import attrs

from beam.errors import BeamError
from beam.identity.keys import Identity, PeerID
from beam.p2p.envelope import InvalidEnvelope, openEnvelope, sealEnvelope
from beam.proto import circuitv2_pb2 as pb

DOMAIN: Final = "libp2p-relay-rsvp"
PAYLOAD_TYPE: Final = b"\x03\x02"
#: The largest voucher we accept (an Ed25519 or RSA key and two peer IDs).
MAX_VOUCHER: Final = 2048


class InvalidVoucher(InvalidEnvelope):
    """
    A voucher that does not verify, or does not say what it should.
    """


@attrs.frozen
class Voucher:
    """
    What a voucher says: C{relay} relays for C{peer} until C{expiration}
    (UNIX seconds).
    """

    relay: PeerID
    peer: PeerID
    expiration: int


def signVoucher(identity: Identity, peer: PeerID, expiration: int) -> bytes:
    """
    The relay C{identity}'s voucher for C{peer}, as envelope bytes.
    """
    payload = pb.Voucher(relay=identity.peerID.bytes, peer=peer.bytes, expiration=int(expiration))
    return sealEnvelope(identity, DOMAIN, PAYLOAD_TYPE, payload.SerializeToString(deterministic=True))


def openVoucher(data: bytes) -> Voucher:
    """
    Check a voucher's envelope and that its signer is the relay it names.

    @raise InvalidVoucher: it is not so.
    """
    try:
        key, payload = openEnvelope(data, DOMAIN, PAYLOAD_TYPE, MAX_VOUCHER)
    except InvalidEnvelope as e:
        raise InvalidVoucher(f"bad reservation voucher: {e}") from None
    msg = pb.Voucher()
    try:
        msg.ParseFromString(payload)
        relay, peer = PeerID(msg.relay), PeerID(msg.peer)
    except BeamError as e:
        raise InvalidVoucher(f"bad reservation voucher: {e}") from None
    except Exception as e:  # protobuf's DecodeError
        raise InvalidVoucher(f"malformed reservation voucher: {e}") from None
    if not msg.HasField("expiration"):
        raise InvalidVoucher("reservation voucher without an expiration")
    if key.peerID() != relay:
        raise InvalidVoucher(f"reservation voucher for relay {relay} is signed by {key.peerID()}")
    return Voucher(relay=relay, peer=peer, expiration=int(msg.expiration))
