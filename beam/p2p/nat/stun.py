"""
STUN messages (RFC 8489) with the NAT behaviour discovery attributes of
RFC 5780, as a sans-IO codec: bytes in, L{Message} out, and back.

Only what a binding client and server need is understood: MAPPED-ADDRESS,
XOR-MAPPED-ADDRESS, CHANGE-REQUEST, RESPONSE-ORIGIN, OTHER-ADDRESS,
ERROR-CODE, UNKNOWN-ATTRIBUTES, SOFTWARE and FINGERPRINT (plus RFC 3489's
SOURCE-ADDRESS and CHANGED-ADDRESS, read but never written, so that an old
server's answer is not thrown away for carrying them).  Any other
attribute is kept out of the message; the comprehension-required ones
(type below 0x8000) are listed in L{Message.unknownRequired}, because RFC
8489 makes the receiver act on them: a server answers 420 (Unknown
Attribute), a client treats the transaction as failed.

Parsing is strict, since anyone can send a datagram to a STUN port: a
message is at most L{MAX_MESSAGE} bytes, its length field must match the
datagram exactly, every attribute must fit and have the size its type
requires, a FINGERPRINT must be last and correct.  Whatever breaks a rule
raises L{InvalidStunMessage}; the protocols drop such datagrams and log
them through L{RateLimitedLog}, so a flood does not flood the log.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Optional

import attrs
from twisted.logger import Logger

from beam.errors import DecodeError

__all__ = [
    "BINDING",
    "MAGIC_COOKIE",
    "MAX_MESSAGE",
    "ErrorCode",
    "HostPort",
    "InvalidStunMessage",
    "Message",
    "MessageClass",
    "RateLimitedLog",
    "decode",
    "decodeErrorCode",
    "decodeUnknownAttributes",
    "encode",
    "looksLikeStun",
    "newTransactionID",
    "sameAddress",
    "walkAttributes",
]

#: A transport address as Twisted's UDP API spells it: (IP text, port).
HostPort = tuple[str, int]

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
HEADER_SIZE = 20
#: Larger datagrams are refused outright: STUN over UDP must fit a path MTU
#: (RFC 8489 recommends staying under 548 bytes when the MTU is unknown),
#: and nothing a binding exchange needs comes near it.
MAX_MESSAGE = 1500

#: The only method this codec's users speak.
BINDING = 0x001

# Attribute types (RFC 8489 section 18.3, RFC 5780 section 7).
MAPPED_ADDRESS = 0x0001
SOURCE_ADDRESS = 0x0004  # RFC 3489, read only
CHANGE_REQUEST = 0x0003
CHANGED_ADDRESS = 0x0005  # RFC 3489, read only
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
FINGERPRINT = 0x8028
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C

#: CHANGE-REQUEST flags (RFC 5780 section 7.2).
CHANGE_IP = 0x04
CHANGE_PORT = 0x02

_FINGERPRINT_XOR = 0x5354554E
_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02
#: SOFTWARE and an ERROR-CODE reason are at most 763 bytes (128 characters).
_MAX_TEXT_BYTES = 763
_MAX_TEXT_CHARS = 128

#: The attributes this codec understands; every other comprehension-required
#: one makes the message "unknown" to us in RFC 8489's sense.
UNDERSTOOD = frozenset(
    {
        MAPPED_ADDRESS,
        SOURCE_ADDRESS,
        CHANGE_REQUEST,
        CHANGED_ADDRESS,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        XOR_MAPPED_ADDRESS,
        SOFTWARE,
        FINGERPRINT,
        RESPONSE_ORIGIN,
        OTHER_ADDRESS,
    }
)


class InvalidStunMessage(DecodeError):
    """
    A datagram was not a well-formed STUN message.
    """


class MessageClass(enum.IntEnum):
    """
    The four STUN message classes (RFC 8489 section 5).
    """

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


@attrs.frozen
class ErrorCode:
    """
    An ERROR-CODE attribute: a code from 300 to 699 and a reason phrase.
    """

    code: int
    reason: str = ""


def newTransactionID() -> bytes:
    """
    A fresh random 96-bit transaction ID, from the operating system's
    cryptographic source: an off-path attacker must not guess it and
    forge a response (RFC 8489 section 5).
    """
    return os.urandom(12)


@attrs.frozen
class Message:
    """
    One STUN message, with the attributes this module understands.

    Address attributes are L{HostPort} tuples with the IP in its canonical
    text form.  When encoding, C{fingerprint} says whether to append a
    FINGERPRINT; when decoding, whether one was there (it was then
    checked).  C{unknownRequired} is filled by L{decode} only: the
    comprehension-required attribute types that were present but not
    understood, in order, each once.
    """

    messageClass: MessageClass = MessageClass.REQUEST
    transactionID: bytes = attrs.field(factory=newTransactionID)
    method: int = BINDING
    mappedAddress: Optional[HostPort] = None
    xorMappedAddress: Optional[HostPort] = None
    changeIP: bool = False
    changePort: bool = False
    changeRequest: bool = False
    responseOrigin: Optional[HostPort] = None
    otherAddress: Optional[HostPort] = None
    sourceAddress: Optional[HostPort] = None
    changedAddress: Optional[HostPort] = None
    software: Optional[str] = None
    errorCode: Optional[ErrorCode] = None
    unknownAttributes: tuple[int, ...] = ()
    unknownRequired: tuple[int, ...] = ()
    fingerprint: bool = True

    @transactionID.validator
    def _checkID(self, attribute: object, value: bytes) -> None:
        if len(value) != 12:
            raise ValueError("a STUN transaction ID is 96 bits")

    @property
    def reflexive(self) -> Optional[HostPort]:
        """
        The address the server saw us at: XOR-MAPPED-ADDRESS, or
        MAPPED-ADDRESS from a server that only sends that.
        """
        return self.xorMappedAddress or self.mappedAddress

    @property
    def alternate(self) -> Optional[HostPort]:
        """
        The server's address that differs in IP and port: OTHER-ADDRESS,
        or RFC 3489's CHANGED-ADDRESS from an older server.
        """
        return self.otherAddress or self.changedAddress


# -- message type ---------------------------------------------------------


def _messageType(method: int, cls: MessageClass) -> int:
    # The class bits C1 C0 sit at bits 8 and 4, between the method bits.
    return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | ((cls & 1) << 4) | ((cls & 2) << 7)


def _splitType(value: int) -> tuple[int, MessageClass]:
    method = (value & 0x000F) | ((value & 0x00E0) >> 1) | ((value & 0x3E00) >> 2)
    cls = ((value >> 4) & 1) | ((value >> 7) & 2)
    return method, MessageClass(cls)


def looksLikeStun(data: bytes) -> bool:
    """
    Whether C{data} could be a STUN message (two zero bits, the magic
    cookie, a length that is a multiple of 4): the cheap test RFC 8489
    section 7 gives to tell STUN from other traffic on a shared port.
    """
    return len(data) >= HEADER_SIZE and data[0] & 0xC0 == 0 and data[4:8] == _COOKIE_BYTES and data[3] & 0x03 == 0


# -- addresses -------------------------------------------------------------


def _xorBytes(data: bytes, key: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, key))


def _encodeAddress(addr: HostPort, xorKey: Optional[bytes]) -> bytes:
    host, port = addr
    ip = ipaddress.ip_address(host)
    packed = ip.packed
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"not a port: {port!r}")
    family = _FAMILY_IPV4 if ip.version == 4 else _FAMILY_IPV6
    if xorKey is not None:
        port ^= MAGIC_COOKIE >> 16
        packed = _xorBytes(packed, xorKey)
    return struct.pack("!BBH", 0, family, port) + packed


def _decodeAddress(value: bytes, xorKey: Optional[bytes]) -> HostPort:
    if len(value) not in (8, 20):
        raise InvalidStunMessage(f"address attribute of {len(value)} bytes")
    _, family, port = struct.unpack("!BBH", value[:4])
    packed = value[4:]
    if family == _FAMILY_IPV4 and len(packed) == 4:
        pass
    elif family == _FAMILY_IPV6 and len(packed) == 16:
        pass
    else:
        raise InvalidStunMessage(f"address family {family} with {len(packed)} address bytes")
    if xorKey is not None:
        port ^= MAGIC_COOKIE >> 16
        packed = _xorBytes(packed, xorKey)
    return str(ipaddress.ip_address(packed)), port


def _text(value: bytes, what: str) -> str:
    if len(value) > _MAX_TEXT_BYTES:
        raise InvalidStunMessage(f"{what} of {len(value)} bytes")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidStunMessage(f"{what} is not UTF-8") from None
    if len(text) > _MAX_TEXT_CHARS:
        raise InvalidStunMessage(f"{what} of {len(text)} characters")
    return text


def _encodeText(text: str, what: str) -> bytes:
    if len(text) > _MAX_TEXT_CHARS:
        raise ValueError(f"{what} longer than {_MAX_TEXT_CHARS} characters")
    return text.encode("utf-8")


# -- encoding ---------------------------------------------------------------


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\x00" * (-len(value) % 4)


def encode(message: Message) -> bytes:
    """
    The wire form of C{message}.

    @raise ValueError: when a field cannot be encoded (an IP that is not
        an IP, text too long, an error code out of range, more than
        L{MAX_MESSAGE} bytes).
    """
    if not 0 <= message.method <= 0xFFF:
        raise ValueError(f"STUN methods are 12 bits, not {message.method!r}")
    tid = message.transactionID
    xorKey4 = _COOKIE_BYTES
    xorKey6 = _COOKIE_BYTES + tid
    body = []

    def xorKey(addr: HostPort) -> bytes:
        return xorKey4 if ipaddress.ip_address(addr[0]).version == 4 else xorKey6

    if message.xorMappedAddress is not None:
        body.append(
            _attribute(XOR_MAPPED_ADDRESS, _encodeAddress(message.xorMappedAddress, xorKey(message.xorMappedAddress)))
        )
    if message.mappedAddress is not None:
        body.append(_attribute(MAPPED_ADDRESS, _encodeAddress(message.mappedAddress, None)))
    if message.changeRequest or message.changeIP or message.changePort:
        flags = (CHANGE_IP if message.changeIP else 0) | (CHANGE_PORT if message.changePort else 0)
        body.append(_attribute(CHANGE_REQUEST, struct.pack("!I", flags)))
    if message.responseOrigin is not None:
        body.append(_attribute(RESPONSE_ORIGIN, _encodeAddress(message.responseOrigin, None)))
    if message.otherAddress is not None:
        body.append(_attribute(OTHER_ADDRESS, _encodeAddress(message.otherAddress, None)))
    if message.errorCode is not None:
        code = message.errorCode.code
        if not 300 <= code <= 699:
            raise ValueError(f"STUN error codes run from 300 to 699, not {code}")
        reason = _encodeText(message.errorCode.reason, "reason phrase")
        body.append(_attribute(ERROR_CODE, struct.pack("!HBB", 0, code // 100, code % 100) + reason))
    if message.unknownAttributes:
        body.append(_attribute(UNKNOWN_ATTRIBUTES, b"".join(struct.pack("!H", t) for t in message.unknownAttributes)))
    if message.software is not None:
        body.append(_attribute(SOFTWARE, _encodeText(message.software, "SOFTWARE")))
    attributes = b"".join(body)
    kind = _messageType(message.method, message.messageClass)
    if message.fingerprint:
        header = struct.pack("!HHI", kind, len(attributes) + 8, MAGIC_COOKIE) + tid
        crc = zlib.crc32(header + attributes) ^ _FINGERPRINT_XOR
        attributes += _attribute(FINGERPRINT, struct.pack("!I", crc))
    data = struct.pack("!HHI", kind, len(attributes), MAGIC_COOKIE) + tid + attributes
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"a STUN message of {len(data)} bytes is too large")
    return data


# -- decoding ---------------------------------------------------------------


def walkAttributes(data: bytes) -> Iterator[tuple[int, bytes, int, int]]:
    """
    The attributes of the STUN (or TURN) message C{data}, whose header was
    checked: C{(type, value, start, end)} for each, C{start} being where
    its value begins and C{end} where its padding ends.  The framing rules
    are checked here, once for both decoders: no attribute may run past
    the message or follow FINGERPRINT, and a FINGERPRINT must be 4 bytes
    and match (it is yielded too, once verified).

    @raise InvalidStunMessage: when they are broken.
    """
    fingerprint = False
    offset = HEADER_SIZE
    while offset < len(data):
        if fingerprint:
            raise InvalidStunMessage("an attribute after FINGERPRINT")
        if len(data) - offset < 4:
            raise InvalidStunMessage("truncated attribute header")
        attrType, attrLength = struct.unpack("!HH", data[offset : offset + 4])
        start = offset + 4
        end = start + attrLength
        padded = end + (-attrLength % 4)
        if padded > len(data):
            raise InvalidStunMessage(f"attribute 0x{attrType:04x} runs past the message")
        value = data[start:end]
        offset = padded
        if attrType == FINGERPRINT:
            if attrLength != 4:
                raise InvalidStunMessage("FINGERPRINT is 4 bytes")
            # The CRC covers the header (with its length field as sent,
            # which includes the FINGERPRINT) and every attribute before it.
            expected = zlib.crc32(data[: start - 4]) ^ _FINGERPRINT_XOR
            if struct.unpack("!I", value)[0] != expected:
                raise InvalidStunMessage("wrong FINGERPRINT")
            fingerprint = True
        yield attrType, value, start, padded


def decodeErrorCode(value: bytes) -> ErrorCode:
    """
    The value of an ERROR-CODE attribute.

    @raise InvalidStunMessage: when it is malformed.
    """
    if len(value) < 4:
        raise InvalidStunMessage("ERROR-CODE shorter than 4 bytes")
    reserved, klass, number = struct.unpack("!HBB", value[:4])
    if reserved or klass & 0xF8:
        raise InvalidStunMessage("ERROR-CODE reserved bits set")
    if not 3 <= klass <= 6 or number > 99:
        raise InvalidStunMessage(f"ERROR-CODE class {klass} number {number}")
    return ErrorCode(klass * 100 + number, _text(value[4:], "reason phrase"))


def decodeUnknownAttributes(value: bytes) -> tuple[int, ...]:
    """
    The value of an UNKNOWN-ATTRIBUTES attribute.

    @raise InvalidStunMessage: when it is of odd length.
    """
    if len(value) % 2:
        raise InvalidStunMessage("UNKNOWN-ATTRIBUTES of odd length")
    return tuple(t for (t,) in struct.iter_unpack("!H", value))


def decode(data: bytes) -> Message:
    """
    Parse one STUN message.

    Of attributes that appear more than once only the first counts (RFC
    8489 section 14).  Comprehension-optional attributes we do not know
    are skipped; comprehension-required ones are listed in
    L{Message.unknownRequired} for the caller to act on.

    @raise InvalidStunMessage: when C{data} is not a well-formed STUN
        message (see the module docstring for the rules).
    """
    if len(data) > MAX_MESSAGE:
        raise InvalidStunMessage(f"a datagram of {len(data)} bytes is too large for STUN")
    if len(data) < HEADER_SIZE:
        raise InvalidStunMessage("shorter than a STUN header")
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    if kind & 0xC000:
        raise InvalidStunMessage("the first two bits of a STUN message are zero")
    if cookie != MAGIC_COOKIE:
        raise InvalidStunMessage("no magic cookie (RFC 3489 messages are not accepted)")
    if length % 4 or length != len(data) - HEADER_SIZE:
        raise InvalidStunMessage(f"length field {length} for {len(data) - HEADER_SIZE} bytes of attributes")
    method, cls = _splitType(kind)
    tid = data[8:20]
    xorKey6 = _COOKIE_BYTES + tid
    fields: dict[str, object] = {}
    seen: set[int] = set()
    unknown: list[int] = []
    fingerprint = False
    for attrType, value, _, _ in walkAttributes(data):
        if attrType == FINGERPRINT:
            fingerprint = True
            continue
        if attrType in seen:
            continue
        seen.add(attrType)
        if attrType not in UNDERSTOOD:
            if attrType < 0x8000:
                unknown.append(attrType)
            continue
        _decodeAttribute(attrType, value, xorKey6, fields)
    return Message(
        messageClass=cls,
        transactionID=tid,
        method=method,
        unknownRequired=tuple(unknown),
        fingerprint=fingerprint,
        **fields,  # type: ignore[arg-type]
    )


_ADDRESS_FIELDS = {
    MAPPED_ADDRESS: "mappedAddress",
    SOURCE_ADDRESS: "sourceAddress",
    CHANGED_ADDRESS: "changedAddress",
    RESPONSE_ORIGIN: "responseOrigin",
    OTHER_ADDRESS: "otherAddress",
}


def _decodeAttribute(attrType: int, value: bytes, xorKey6: bytes, fields: dict[str, object]) -> None:
    if attrType in _ADDRESS_FIELDS:
        fields[_ADDRESS_FIELDS[attrType]] = _decodeAddress(value, None)
    elif attrType == XOR_MAPPED_ADDRESS:
        key = _COOKIE_BYTES if len(value) == 8 else xorKey6
        fields["xorMappedAddress"] = _decodeAddress(value, key)
    elif attrType == CHANGE_REQUEST:
        if len(value) != 4:
            raise InvalidStunMessage("CHANGE-REQUEST is 4 bytes")
        (flags,) = struct.unpack("!I", value)
        fields["changeRequest"] = True
        fields["changeIP"] = bool(flags & CHANGE_IP)
        fields["changePort"] = bool(flags & CHANGE_PORT)
    elif attrType == ERROR_CODE:
        fields["errorCode"] = decodeErrorCode(value)
    elif attrType == UNKNOWN_ATTRIBUTES:
        fields["unknownAttributes"] = decodeUnknownAttributes(value)
    elif attrType == SOFTWARE:
        fields["software"] = _text(value, "SOFTWARE")
    else:  # pragma: no cover - UNDERSTOOD and this function go together
        raise AssertionError(attrType)


def sameAddress(a: HostPort, b: HostPort) -> bool:
    """
    Whether two transport addresses are the same, however their IPs are
    spelled (C{"::1"} and C{"0::1"} are one address).
    """
    try:
        return a[1] == b[1] and ipaddress.ip_address(a[0]) == ipaddress.ip_address(b[0])
    except ValueError:
        return a == b


# -- logging bad input -------------------------------------------------------


class RateLimitedLog:
    """
    Log dropped datagrams at most once per interval, with the count of
    those dropped since the last line: a peer that floods a STUN port with
    junk must not also flood the log.

    @ivar dropped: every datagram dropped so far.
    """

    def __init__(self, log: Logger, what: str, interval: float = 60.0) -> None:
        self._log = log
        self._what = what
        self.interval = interval
        self.dropped = 0
        self._unlogged = 0
        self._last: Optional[float] = None

    def drop(self, now: float, source: object, reason: object) -> None:
        """
        Count one dropped datagram from C{source}, and log it if the
        interval since the last line has passed.
        """
        self.dropped += 1
        self._unlogged += 1
        if self._last is None or now - self._last >= self.interval:
            self._log.info(
                "Dropped {count} {what} (latest from {source}: {reason})",
                count=self._unlogged,
                what=self._what,
                source=source,
                reason=str(reason),
            )
            self._last = now
            self._unlogged = 0
