"""
Beam name records: "the name NAME belongs to peer P, reachable at ADDRS".

A record is a protobuf L{beam.proto.names_pb2.NameRecord} carried as the
payload of a libp2p signed envelope (libp2p/specs RFC 0002) with the domain
L{DOMAIN} and payload type L{PAYLOAD_TYPE}, signed by the owner's key.  The
signature covers C{uvarint(len(domain)) || domain || uvarint(len(type)) ||
type || uvarint(len(payload)) || payload}, so a name record can never be
replayed as any other kind of signed envelope, nor the other way round.

Records travel through the DHT from strangers, so L{openRecord} trusts
nothing: it refuses envelopes over L{MAX_ENVELOPE} bytes before parsing,
checks the signature, that the signing key is the peer the record names,
the name's syntax, every address (garbage from a key holder means a broken
or hostile publisher, so the whole record goes) and the times: not expired,
not living longer than L{MAX_TTL}, not created in the future beyond
L{CLOCK_SKEW}.

Times on the wire are unix milliseconds (integers, so a record's bytes do
not depend on float formatting); L{NameRecord} holds them as float seconds
like the rest of Beam.
"""

from __future__ import annotations

import re
from typing import Final, Iterable

import attrs

from beam.errors import BeamError, InvalidRecord, ProtocolError
from beam.identity.keys import Identity, PeerID, PublicKey
from beam.identity.multiaddr import Multiaddr
from beam.proto import envelope_pb2, names_pb2
from beam.encoding.varint import encode_uvarint

DOMAIN: Final = "beam-name-record"
"""The signed-envelope domain separating name records from other signatures."""

PAYLOAD_TYPE: Final = b"/beam/name-record/1"
"""The envelope payload type of a name record."""

KEY_PREFIX: Final = b"/beam-name/"
"""DHT keys of name records are this prefix followed by the name."""

MAX_ENVELOPE: Final = 8 * 1024
"""The largest signed record we parse or produce, in bytes."""

MAX_ADDRS: Final = 32
MAX_SERVICES: Final = 64
MAX_SERVICE_BYTES: Final = 255
MAX_NAME: Final = 253

DEFAULT_TTL: Final = 3600.0
"""How long a record lives unless its owner says otherwise (seconds)."""

REPUBLISH_INTERVAL: Final = 1800.0
"""How often an owner publishes a fresh record, well within L{DEFAULT_TTL}."""

MAX_TTL: Final = 24 * 3600.0
"""No record may claim to live longer than this (seconds)."""

CLOCK_SKEW: Final = 300.0
"""How far ahead of ours a publisher's clock may be (seconds)."""

_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_U64: Final = 2**64


class InvalidName(BeamError, ValueError):
    """
    That is not a valid Beam name: names are lower-case letters, digits and '-'.
    """


class InvalidNameRecord(InvalidRecord, ProtocolError):
    """
    A name record is malformed, badly signed or out of date.

    It is an L{InvalidRecord} so the DHT record store treats it like any
    other invalid value, and a L{ProtocolError} because it came off the wire.
    """


def validateName(name: str) -> str:
    """
    Check that C{name} is a canonical Beam name: lower-case DNS labels of 1
    to 63 characters from C{[a-z0-9-]}, none starting or ending with '-',
    joined by dots, at most 253 characters in all.

    @return: C{name}, unchanged.
    @raise InvalidName: it is not.
    """
    if not isinstance(name, str):
        raise InvalidName(f"invalid name {name!r}: a name is text")
    if not name or len(name) > MAX_NAME or not all(
        _LABEL.fullmatch(label) for label in name.split(".")
    ):
        raise InvalidName(
            f"invalid name {name[:300]!r}: names are lower-case letters, digits "
            f"and '-' (not at the start or end of a part), with '.' between "
            f"parts of at most 63 characters, {MAX_NAME} characters in all"
        )
    return name


def normalizeName(text: str) -> str:
    """
    Turn a name a user typed into its canonical form: surrounding spaces
    removed and ASCII letters lower-cased.

    Only ASCII is lower-cased, on purpose: C{str.lower} maps some non-ASCII
    letters (the Kelvin sign, for one) onto ASCII ones, which would let two
    different-looking inputs reach the same name.

    @raise InvalidName: the result is not a valid name.
    """
    if not isinstance(text, str):
        raise InvalidName(f"invalid name {text!r}: a name is text")
    stripped = text.strip()
    if stripped.isascii():
        stripped = stripped.lower()
    try:
        return validateName(stripped)
    except InvalidName:
        # Show what the user typed, not our half-normalised version.
        raise InvalidName(
            f"invalid name {text[:300]!r}: names are lower-case letters, digits "
            f"and '-' (not at the start or end of a part), with '.' between "
            f"parts of at most 63 characters, {MAX_NAME} characters in all"
        ) from None


def dhtKey(name: str) -> bytes:
    """
    The DHT key under which C{name}'s record is stored.
    """
    return KEY_PREFIX + validateName(name).encode("ascii")


def nameFromKey(key: bytes) -> str:
    """
    The name a DHT key refers to.

    @raise InvalidNameRecord: the key is not a valid name key.
    """
    if not key.startswith(KEY_PREFIX):
        raise InvalidNameRecord("not a name record key")
    try:
        return validateName(key[len(KEY_PREFIX):].decode("ascii"))
    except (UnicodeDecodeError, InvalidName):
        raise InvalidNameRecord("name record key holds an invalid name") from None


def _toMillis(seconds: float) -> int:
    return int(round(seconds * 1000))


@attrs.frozen
class NameRecord:
    """
    One owner's claim to a name, as signed by that owner.

    @ivar name: the canonical name.
    @ivar peer: the owner's peer ID.
    @ivar addrs: where the owner can be dialled.
    @ivar services: the tunnel services the owner offers.
    @ivar seq: orders the owner's records: a higher one replaces a lower one.
    @ivar created: when the record was made, unix seconds (millisecond precision).
    @ivar expires: when the record stops being valid, unix seconds.
    """

    name: str
    peer: PeerID
    addrs: tuple[Multiaddr, ...]
    services: tuple[str, ...]
    seq: int
    created: float
    expires: float

    @property
    def key(self) -> bytes:
        """
        The DHT key this record is stored under.
        """
        return dhtKey(self.name)

    def isExpired(self, now: float) -> bool:
        """
        Whether the record is no longer valid at C{now}.
        """
        return self.expires <= now


def makeRecord(
    identity: Identity,
    name: str,
    addrs: Iterable[Multiaddr],
    services: Iterable[str] = (),
    *,
    now: float,
    seq: int | None = None,
    ttl: float = DEFAULT_TTL,
) -> NameRecord:
    """
    Build a record claiming C{name} for C{identity}.

    @param seq: defaults to C{now} in milliseconds, so an owner that restarted
        and forgot its last sequence number still publishes a newer record.
    @raise InvalidName: C{name} is not a valid name (it is normalised first).
    @raise ValueError: C{ttl} is not in (0, L{MAX_TTL}], or there are too many
        addresses or services.
    """
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"a name record's TTL must be more than 0 and at most {MAX_TTL:.0f} s")
    createdMs = _toMillis(now)
    expiresMs = createdMs + _toMillis(ttl)
    record = NameRecord(
        name=normalizeName(name),
        peer=identity.peerID,
        addrs=tuple(addrs),
        services=tuple(services),
        seq=createdMs if seq is None else seq,
        created=createdMs / 1000,
        expires=expiresMs / 1000,
    )
    _checkContents(record, ValueError)
    return record


def _checkContents(record: NameRecord, error: type[Exception]) -> None:
    """
    The limits every record obeys, whether we build it or receive it.
    """
    if len(record.addrs) > MAX_ADDRS:
        raise error(f"a name record holds at most {MAX_ADDRS} addresses")
    if len(record.services) > MAX_SERVICES:
        raise error(f"a name record holds at most {MAX_SERVICES} services")
    for service in record.services:
        if not service or len(service.encode("utf-8")) > MAX_SERVICE_BYTES:
            raise error(f"a service name is 1 to {MAX_SERVICE_BYTES} bytes")
        if _CONTROL.search(service):
            raise error("a service name contains control characters")
    if not 0 <= record.seq < _U64:
        raise error("a name record's sequence number is a 64-bit unsigned integer")
    if not 0 <= _toMillis(record.created) < _toMillis(record.expires) < _U64:
        raise error("a name record must expire after it is created")


def _signedBytes(payloadType: bytes, payload: bytes) -> bytes:
    domain = DOMAIN.encode("utf-8")
    return b"".join(
        (
            encode_uvarint(len(domain)), domain,
            encode_uvarint(len(payloadType)), payloadType,
            encode_uvarint(len(payload)), payload,
        )
    )


def _encodePayload(record: NameRecord) -> bytes:
    msg = names_pb2.NameRecord(
        name=record.name,
        peer_id=record.peer.bytes,
        addrs=[a.toBytes() for a in record.addrs],
        services=list(record.services),
        seq=record.seq,
        created=_toMillis(record.created),
        expires=_toMillis(record.expires),
    )
    return msg.SerializeToString(deterministic=True)


def signRecord(identity: Identity, record: NameRecord) -> bytes:
    """
    Sign C{record} with C{identity}, giving the envelope bytes to publish.

    @raise ValueError: C{record} belongs to another peer, breaks a limit, or
        signs to more than L{MAX_ENVELOPE} bytes (too many addresses or
        services).
    """
    if record.peer != identity.peerID:
        raise ValueError("a name record can only be signed by the peer it names")
    validateName(record.name)
    _checkContents(record, ValueError)
    payload = _encodePayload(record)
    envelope = envelope_pb2.Envelope(
        public_key=identity.publicKey.toProtobuf(),
        payload_type=PAYLOAD_TYPE,
        payload=payload,
        signature=identity.sign(_signedBytes(PAYLOAD_TYPE, payload)),
    )
    data = envelope.SerializeToString(deterministic=True)
    if len(data) > MAX_ENVELOPE:
        raise ValueError(
            f"the signed name record is {len(data)} bytes, more than {MAX_ENVELOPE}: "
            f"publish fewer addresses or services"
        )
    return data


def decodeRecord(data: bytes, expectedName: str | None = None) -> NameRecord:
    """
    Check everything about a signed record except its times.

    This is for records already held, whose expiry the caller judges itself
    (a DHT store deciding whether an old claim has lapsed); anything arriving
    from the network goes through L{openRecord}.

    @raise InvalidNameRecord: the record is oversized, malformed, badly
        signed, signed by a key other than its peer's, carries an invalid name
        or address, or names something other than C{expectedName}.
    """
    if len(data) > MAX_ENVELOPE:
        raise InvalidNameRecord(
            f"name record of {len(data)} bytes is larger than {MAX_ENVELOPE}"
        )
    envelope = envelope_pb2.Envelope()
    try:
        envelope.ParseFromString(bytes(data))
    except Exception as e:  # protobuf's own DecodeError, and others on odd input
        raise InvalidNameRecord(f"malformed name record envelope: {e}") from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise InvalidNameRecord("signed envelope is not a name record")
    try:
        key = PublicKey.fromProtobuf(envelope.public_key)
    except BeamError as e:
        raise InvalidNameRecord(f"name record has a bad public key: {e}") from None
    if not key.verify(envelope.signature, _signedBytes(envelope.payload_type, envelope.payload)):
        raise InvalidNameRecord("name record signature does not verify")

    msg = names_pb2.NameRecord()
    try:
        msg.ParseFromString(envelope.payload)
    except Exception as e:
        raise InvalidNameRecord(f"malformed name record: {e}") from None
    try:
        peer = PeerID(msg.peer_id)
    except BeamError as e:
        raise InvalidNameRecord(f"name record has a bad peer ID: {e}") from None
    if peer != key.peerID():
        raise InvalidNameRecord(
            f"name record for peer {peer} is signed by a different key ({key.peerID()})"
        )
    try:
        name = validateName(msg.name)
    except InvalidName as e:
        raise InvalidNameRecord(str(e)) from None
    if expectedName is not None and name != expectedName:
        raise InvalidNameRecord(f"record is for the name {name!r}, not {expectedName!r}")
    if len(msg.addrs) > MAX_ADDRS:
        raise InvalidNameRecord(f"name record holds more than {MAX_ADDRS} addresses")
    addrs = []
    for raw in msg.addrs:
        try:
            addrs.append(Multiaddr.fromBytes(raw))
        except BeamError as e:
            raise InvalidNameRecord(f"name record holds an invalid address: {e}") from None
    record = NameRecord(
        name=name,
        peer=peer,
        addrs=tuple(addrs),
        services=tuple(msg.services),
        seq=msg.seq,
        created=msg.created / 1000,
        expires=msg.expires / 1000,
    )
    _checkContents(record, InvalidNameRecord)
    return record


def checkTimes(record: NameRecord, now: float) -> None:
    """
    Check that C{record} is live at C{now} and its times are believable.

    @raise InvalidNameRecord: it has expired, was created further in the
        future than L{CLOCK_SKEW} explains, or lives longer than L{MAX_TTL}
        (so nothing expires later than C{now + CLOCK_SKEW + MAX_TTL}).
    """
    if record.expires <= now:
        raise InvalidNameRecord(f"name record for {record.name!r} has expired")
    if record.created > now + CLOCK_SKEW:
        raise InvalidNameRecord(f"name record for {record.name!r} was created in the future")
    if _toMillis(record.expires) - _toMillis(record.created) > _toMillis(MAX_TTL):
        # With the check above this also bounds expiry to now + skew + MAX_TTL.
        raise InvalidNameRecord(
            f"name record for {record.name!r} claims to live longer than {MAX_TTL:.0f} s"
        )


def openRecord(data: bytes, now: float, expectedName: str | None = None) -> NameRecord:
    """
    Verify a signed record from the network and return what it says.

    @param now: the current unix time, in seconds.
    @param expectedName: if given, the record must be for this name.
    @raise InvalidNameRecord: for any reason not to believe it (see
        L{decodeRecord} and L{checkTimes}).
    """
    record = decodeRecord(data, expectedName)
    checkTimes(record, now)
    return record
