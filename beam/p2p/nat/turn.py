"""
A TURN client (RFC 8656) for TCP allocations (RFC 6062), sans I/O: bytes
in, bytes out, timers on an injected reactor.

Why TURN with TCP allocations: a libp2p connection is a TCP byte stream,
and RFC 6062 relays exactly that.  A node behind any NAT keeps one TCP
I{control connection} to a TURN server it has credentials for and an
allocation there: a TCP port on the server's public address (the
I{relayed address}).  A peer dials that address with ordinary TCP, the
server announces the attempt on the control connection (a
CONNECTION-ATTEMPT indication with a connection ID), and the node opens a
second TCP connection to the server, the I{data connection}, and binds it
to that ID (CONNECTION-BIND).  From the success response on, the data
connection carries the peer's bytes unchanged; the node upgrades it like
any inbound TCP connection (Noise, yamux), so the server only ever sees
ciphertext.  Outbound works the same way with CONNECT instead of the
indication.

Two rules of RFC 6062 shape the API:

 - The server accepts a peer's connection only if the allocation has a
   I{permission} for the peer's IP (CREATE-PERMISSION, valid 300 s).  A
   node cannot know in advance who will dial it, so L{TurnClient.permit}
   keeps a bounded set of IPs permitted (refreshed every
   L{PERMISSION_REFRESH} seconds) and the caller feeds it the IPs of
   peers expected to dial (see L{beam.p2p.nat.turntransport}).
 - Every request after the first is authenticated with the long-term
   credential (RFC 8489 section 9.2): the server's 401 names a REALM and
   NONCE, and the key is MD5(username ":" realm ":" password), used for
   HMAC-SHA1 in MESSAGE-INTEGRITY.  A 438 (Stale Nonce) brings a fresh
   nonce; the request is retried with it.

The codec here (L{TurnMessage}, L{encode}, L{decode}, L{StreamDecoder})
extends L{beam.p2p.nat.stun}'s: the same header, address and text rules,
plus the TURN attributes, MESSAGE-INTEGRITY(-SHA256), and framing on a
TCP stream.  Parsing is as strict as the STUN codec's: bounded size,
exact lengths, integrity checked against the key we hold.

Not done: SASLprep of passwords (RFC 8489 asks for OpaqueString; ASCII
passwords, which every coturn deployment uses, are unaffected), UDP
allocations, channels, and the PASSWORD-ALGORITHMS negotiation (we always
use MD5/SHA1, which every TURN server accepts).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib
from collections.abc import Callable, Iterable
from typing import Any, Optional

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.errors import BeamError
from beam.p2p.nat.stun import (
    _COOKIE_BYTES,
    _FINGERPRINT_XOR,
    FINGERPRINT,
    HEADER_SIZE,
    MAGIC_COOKIE,
    ErrorCode,
    HostPort,
    InvalidStunMessage,
    MessageClass,
    _attribute,
    _decodeAddress,
    _encodeAddress,
    _encodeText,
    _messageType,
    _splitType,
    _text,
    decodeErrorCode,
    decodeUnknownAttributes,
    newTransactionID,
    walkAttributes,
)

__all__ = [
    "ALLOCATE",
    "CONNECT",
    "CONNECTION_ATTEMPT",
    "CONNECTION_BIND",
    "CREATE_PERMISSION",
    "REFRESH",
    "TCP",
    "Allocation",
    "StreamDecoder",
    "TurnAllocationLost",
    "TurnAuthError",
    "TurnClient",
    "TurnError",
    "TurnErrorResponse",
    "TurnMessage",
    "TurnTimeout",
    "decode",
    "encode",
    "longTermKey",
]

log = Logger()

# Methods (RFC 8656 section 17, RFC 6062 section 6.1).
ALLOCATE = 0x003
REFRESH = 0x004
CREATE_PERMISSION = 0x008
CONNECT = 0x00A
CONNECTION_BIND = 0x00B
CONNECTION_ATTEMPT = 0x00C

# Attributes (RFC 8489 section 18.3, RFC 8656 section 18, RFC 6062 section 6.2).
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_TRANSPORT = 0x0019
MESSAGE_INTEGRITY_SHA256 = 0x001C
XOR_MAPPED_ADDRESS = 0x0020
CONNECTION_ID = 0x002A
SOFTWARE = 0x8022

#: REQUESTED-TRANSPORT's protocol number for TCP (RFC 6062).
TCP = 6

#: The largest message accepted on a TCP connection.  TURN messages on a
#: control connection are small (a few hundred bytes); this only bounds
#: what a broken or hostile server can make us buffer.
MAX_MESSAGE = 2048
#: USERNAME is less than 513 bytes (RFC 8489 section 14.3).
_MAX_USERNAME_BYTES = 512
#: NONCE and REALM are less than 128 characters, at most 763 bytes.
_MAX_NONCE_BYTES = 763
#: How many peer IPs L{TurnClient.permit} keeps permitted.
MAX_PERMISSIONS = 64
#: At most this many XOR-PEER-ADDRESS in one CREATE-PERMISSION.
_PERMISSIONS_PER_REQUEST = 16
#: Permissions last 300 s on the server (RFC 8656 section 9); refreshed
#: a minute early.
PERMISSION_REFRESH = 240.0
#: How often a request is retried after a 401 or 438 before giving up.
_AUTH_RETRIES = 3

#: The attributes this codec understands.
UNDERSTOOD = frozenset(
    {
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        LIFETIME,
        XOR_PEER_ADDRESS,
        REALM,
        NONCE,
        XOR_RELAYED_ADDRESS,
        REQUESTED_TRANSPORT,
        MESSAGE_INTEGRITY_SHA256,
        XOR_MAPPED_ADDRESS,
        CONNECTION_ID,
        SOFTWARE,
        FINGERPRINT,
    }
)


class TurnError(BeamError):
    """
    The TURN server could not be used.
    """


class TurnTimeout(TurnError):
    """
    The TURN server did not answer a request in time.
    """


class TurnErrorResponse(TurnError):
    """
    The TURN server answered a request with an error.

    @ivar code: the ERROR-CODE, e.g. 437.
    @ivar reason: its reason phrase.
    """

    def __init__(self, what: str, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"the TURN server refused {what}: {code} {reason}".rstrip() + _HINTS.get(code, ""))


class TurnAuthError(TurnErrorResponse):
    """
    The TURN server refused our credentials (401 after we answered its
    challenge, or 441).
    """


class TurnAllocationLost(TurnError):
    """
    The allocation is gone: it expired without a successful refresh, the
    server forgot it (437), or the control connection closed.
    """


_HINTS = {
    401: " (wrong username or password for this realm)",
    437: " (allocation mismatch: an allocation already exists on this connection, or the server forgot it)",
    441: " (wrong credentials)",
    442: " (the server does not relay TCP: coturn's no-tcp-relay is set)",
    446: " (a connection to that peer already exists)",
    447: " (the server could not connect to the peer)",
    486: " (allocation quota reached for this user)",
    508: " (the server is out of capacity)",
}

_METHOD_NAMES = {
    ALLOCATE: "ALLOCATE",
    REFRESH: "REFRESH",
    CREATE_PERMISSION: "CREATE-PERMISSION",
    CONNECT: "CONNECT",
    CONNECTION_BIND: "CONNECTION-BIND",
}


def longTermKey(username: str, realm: str, password: str) -> bytes:
    """
    The long-term credential key of RFC 8489 section 9.2.2 for MD5:
    MD5(username ":" realm ":" password).  (Passwords are used as given;
    RFC 8489's OpaqueString preparation leaves ASCII passwords alone.)
    """
    return hashlib.md5(f"{username}:{realm}:{password}".encode("utf-8")).digest()


@attrs.frozen
class TurnMessage:
    """
    One STUN message with the attributes TURN over TCP uses.

    When encoding, MESSAGE-INTEGRITY is added if L{encode} is given a key,
    and C{fingerprint} says whether to append FINGERPRINT.  When decoding,
    C{integrity} and C{integritySha256} hold the HMACs found (check them
    with L{verify} / L{verifySha256}), C{fingerprint} whether a correct
    FINGERPRINT was there, and C{unknownRequired} the comprehension-required
    attribute types not understood.
    """

    messageClass: MessageClass = MessageClass.REQUEST
    method: int = ALLOCATE
    transactionID: bytes = attrs.field(factory=newTransactionID)
    requestedTransport: Optional[int] = None
    lifetime: Optional[int] = None
    xorRelayedAddress: Optional[HostPort] = None
    xorMappedAddress: Optional[HostPort] = None
    xorPeerAddresses: tuple[HostPort, ...] = ()
    connectionID: Optional[int] = None
    username: Optional[str] = None
    realm: Optional[str] = None
    nonce: Optional[bytes] = None
    software: Optional[str] = None
    errorCode: Optional[ErrorCode] = None
    unknownAttributes: tuple[int, ...] = ()
    unknownRequired: tuple[int, ...] = ()
    fingerprint: bool = True
    integrity: Optional[bytes] = None
    integritySha256: Optional[bytes] = None
    #: What each HMAC covers (decoding only): the header with its length
    #: adjusted, and the attributes before the integrity attribute.
    signed: bytes = attrs.field(default=b"", eq=False, repr=False)
    signedSha256: bytes = attrs.field(default=b"", eq=False, repr=False)

    @transactionID.validator
    def _checkID(self, attribute: object, value: bytes) -> None:
        if len(value) != 12:
            raise ValueError("a STUN transaction ID is 96 bits")

    def verify(self, key: bytes) -> bool:
        """
        Whether the message carries a MESSAGE-INTEGRITY that C{key} made.
        """
        if self.integrity is None:
            return False
        return hmac.compare_digest(hmac.new(key, self.signed, hashlib.sha1).digest(), self.integrity)

    def verifySha256(self, key: bytes) -> bool:
        """
        Whether the message carries a MESSAGE-INTEGRITY-SHA256 that C{key}
        made (possibly truncated, as RFC 8489 section 14.6 allows).
        """
        if self.integritySha256 is None:
            return False
        full = hmac.new(key, self.signedSha256, hashlib.sha256).digest()
        return hmac.compare_digest(full[: len(self.integritySha256)], self.integritySha256)


# -- encoding -----------------------------------------------------------------------------


def _xorKey(addr: HostPort, tid: bytes) -> bytes:
    return _COOKIE_BYTES if ipaddress.ip_address(addr[0]).version == 4 else _COOKIE_BYTES + tid


def encode(message: TurnMessage, key: Optional[bytes] = None) -> bytes:
    """
    The wire form of C{message}, with MESSAGE-INTEGRITY (HMAC-SHA1 with
    C{key}) when a key is given, then FINGERPRINT if asked for.

    @raise ValueError: when a field cannot be encoded.
    """
    if not 0 <= message.method <= 0xFFF:
        raise ValueError(f"STUN methods are 12 bits, not {message.method!r}")
    tid = message.transactionID
    body: list[bytes] = []
    if message.username is not None:
        raw = message.username.encode("utf-8")
        if len(raw) > _MAX_USERNAME_BYTES:
            raise ValueError("USERNAME longer than 512 bytes")
        body.append(_attribute(USERNAME, raw))
    if message.realm is not None:
        body.append(_attribute(REALM, _encodeText(message.realm, "REALM")))
    if message.nonce is not None:
        if len(message.nonce) > _MAX_NONCE_BYTES:
            raise ValueError("NONCE longer than 763 bytes")
        body.append(_attribute(NONCE, message.nonce))
    if message.requestedTransport is not None:
        body.append(_attribute(REQUESTED_TRANSPORT, struct.pack("!B3x", message.requestedTransport)))
    if message.lifetime is not None:
        body.append(_attribute(LIFETIME, struct.pack("!I", message.lifetime)))
    if message.connectionID is not None:
        body.append(_attribute(CONNECTION_ID, struct.pack("!I", message.connectionID)))
    for peer in message.xorPeerAddresses:
        body.append(_attribute(XOR_PEER_ADDRESS, _encodeAddress(peer, _xorKey(peer, tid))))
    if message.xorRelayedAddress is not None:
        addr = message.xorRelayedAddress
        body.append(_attribute(XOR_RELAYED_ADDRESS, _encodeAddress(addr, _xorKey(addr, tid))))
    if message.xorMappedAddress is not None:
        addr = message.xorMappedAddress
        body.append(_attribute(XOR_MAPPED_ADDRESS, _encodeAddress(addr, _xorKey(addr, tid))))
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
    if key is not None:
        # The HMAC covers the header with a length that already counts
        # MESSAGE-INTEGRITY (24 bytes) but not a FINGERPRINT after it.
        header = struct.pack("!HHI", kind, len(attributes) + 24, MAGIC_COOKIE) + tid
        mac = hmac.new(key, header + attributes, hashlib.sha1).digest()
        attributes += _attribute(MESSAGE_INTEGRITY, mac)
    if message.fingerprint:
        header = struct.pack("!HHI", kind, len(attributes) + 8, MAGIC_COOKIE) + tid
        crc = zlib.crc32(header + attributes) ^ _FINGERPRINT_XOR
        attributes += _attribute(FINGERPRINT, struct.pack("!I", crc))
    data = struct.pack("!HHI", kind, len(attributes), MAGIC_COOKIE) + tid + attributes
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"a TURN message of {len(data)} bytes is too large")
    return data


# -- decoding -----------------------------------------------------------------------------


def _checkHeader(data: bytes) -> int:
    """
    Check a STUN header's fixed bits; the length it announces.
    """
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    if kind & 0xC000:
        raise InvalidStunMessage("the first two bits of a STUN message are zero")
    if cookie != MAGIC_COOKIE:
        raise InvalidStunMessage("no magic cookie")
    if length % 4:
        raise InvalidStunMessage(f"length field {length} is not a multiple of 4")
    if HEADER_SIZE + length > MAX_MESSAGE:
        raise InvalidStunMessage(f"a TURN message of {HEADER_SIZE + length} bytes is too large")
    return int(length)


def decode(data: bytes) -> TurnMessage:
    """
    Parse one STUN/TURN message (exactly C{data}).

    Only the first of repeated attributes counts, except XOR-PEER-ADDRESS,
    which may repeat; attributes after MESSAGE-INTEGRITY other than
    MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are ignored (RFC 8489
    section 14.5).

    @raise InvalidStunMessage: when C{data} is not a well-formed message.
    """
    if len(data) < HEADER_SIZE:
        raise InvalidStunMessage("shorter than a STUN header")
    length = _checkHeader(data)
    if length != len(data) - HEADER_SIZE:
        raise InvalidStunMessage(f"length field {length} for {len(data) - HEADER_SIZE} bytes of attributes")
    kind = struct.unpack("!H", data[:2])[0]
    method, cls = _splitType(kind)
    tid = data[8:20]
    xorKey6 = _COOKIE_BYTES + tid
    fields: dict[str, Any] = {}
    peers: list[HostPort] = []
    seen: set[int] = set()
    unknown: list[int] = []
    fingerprint = False
    protected = False
    for attrType, value, start, padded in walkAttributes(data):
        attrLength = len(value)
        if attrType == FINGERPRINT:
            fingerprint = True
            continue
        if attrType in (MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256):
            if attrType in seen:
                continue
            seen.add(attrType)
            # What the HMAC covers: the header, its length counting up to
            # the end of this attribute, and everything before it.
            signed = struct.pack("!H", kind) + struct.pack("!H", padded - HEADER_SIZE) + data[4 : start - 4]
            if attrType == MESSAGE_INTEGRITY:
                if attrLength != 20:
                    raise InvalidStunMessage("MESSAGE-INTEGRITY is 20 bytes")
                fields["integrity"], fields["signed"] = value, signed
            else:
                if not 16 <= attrLength <= 32 or attrLength % 4:
                    raise InvalidStunMessage(f"MESSAGE-INTEGRITY-SHA256 of {attrLength} bytes")
                fields["integritySha256"], fields["signedSha256"] = value, signed
            protected = True
            continue
        if protected:
            continue
        if attrType == XOR_PEER_ADDRESS:
            if len(peers) >= _PERMISSIONS_PER_REQUEST:
                raise InvalidStunMessage("too many XOR-PEER-ADDRESS attributes")
            peers.append(_decodeAddress(value, _COOKIE_BYTES if len(value) == 8 else xorKey6))
            continue
        if attrType in seen:
            continue
        seen.add(attrType)
        if attrType not in UNDERSTOOD:
            if attrType < 0x8000:
                unknown.append(attrType)
            continue
        _decodeAttribute(attrType, value, xorKey6, fields)
    return TurnMessage(
        messageClass=cls,
        method=method,
        transactionID=tid,
        xorPeerAddresses=tuple(peers),
        unknownRequired=tuple(unknown),
        fingerprint=fingerprint,
        **fields,
    )


def _uint32(value: bytes, what: str) -> int:
    if len(value) != 4:
        raise InvalidStunMessage(f"{what} is 4 bytes")
    return int(struct.unpack("!I", value)[0])


def _decodeAttribute(attrType: int, value: bytes, xorKey6: bytes, fields: dict[str, Any]) -> None:
    if attrType in (XOR_RELAYED_ADDRESS, XOR_MAPPED_ADDRESS):
        name = "xorRelayedAddress" if attrType == XOR_RELAYED_ADDRESS else "xorMappedAddress"
        fields[name] = _decodeAddress(value, _COOKIE_BYTES if len(value) == 8 else xorKey6)
    elif attrType == LIFETIME:
        fields["lifetime"] = _uint32(value, "LIFETIME")
    elif attrType == CONNECTION_ID:
        fields["connectionID"] = _uint32(value, "CONNECTION-ID")
    elif attrType == REQUESTED_TRANSPORT:
        if len(value) != 4:
            raise InvalidStunMessage("REQUESTED-TRANSPORT is 4 bytes")
        fields["requestedTransport"] = value[0]
    elif attrType == USERNAME:
        if len(value) > _MAX_USERNAME_BYTES:
            raise InvalidStunMessage(f"USERNAME of {len(value)} bytes")
        try:
            fields["username"] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidStunMessage("USERNAME is not UTF-8") from None
    elif attrType == REALM:
        fields["realm"] = _text(value, "REALM")
    elif attrType == NONCE:
        if len(value) > _MAX_NONCE_BYTES:
            raise InvalidStunMessage(f"NONCE of {len(value)} bytes")
        fields["nonce"] = value
    elif attrType == ERROR_CODE:
        fields["errorCode"] = decodeErrorCode(value)
    elif attrType == UNKNOWN_ATTRIBUTES:
        fields["unknownAttributes"] = decodeUnknownAttributes(value)
    elif attrType == SOFTWARE:
        fields["software"] = _text(value, "SOFTWARE")
    else:  # pragma: no cover - UNDERSTOOD and this function go together
        raise AssertionError(attrType)


class StreamDecoder:
    """
    Cut STUN messages out of a TCP byte stream (RFC 8489 section 6.2.2:
    over TCP, messages follow each other, each framed by its header's
    length).  At most one message is buffered (L{MAX_MESSAGE} bytes).
    """

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> None:
        """
        Add received bytes.
        """
        self.buffer += data

    def next(self) -> Optional[TurnMessage]:
        """
        The next complete message, or L{None} when more bytes are needed.

        @raise InvalidStunMessage: the stream holds something that is not
            a STUN message; the connection cannot be used any more.
        """
        if len(self.buffer) < HEADER_SIZE:
            if len(self.buffer) >= 8:
                _checkHeader(self.buffer[:8])
            return None
        size = HEADER_SIZE + _checkHeader(self.buffer)
        if len(self.buffer) < size:
            return None
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return decode(data)


# -- the client -----------------------------------------------------------------------------


@attrs.frozen
class Allocation:
    """
    A TCP allocation on a TURN server.

    @ivar relayed: the relayed transport address peers dial.
    @ivar mapped: our address as the server saw it (server-reflexive).
    @ivar lifetime: seconds granted by the last ALLOCATE or REFRESH.
    @ivar expires: the reactor time at which it runs out.
    """

    relayed: HostPort
    mapped: Optional[HostPort]
    lifetime: int
    expires: float


@attrs.define
class _Pending:
    what: str
    method: int
    fields: dict[str, Any]
    result: Deferred[TurnMessage]
    timer: Optional[IDelayedCall] = None
    tries: int = 0
    authenticated: bool = False


def refreshDelay(lifetime: int) -> float:
    """
    When to refresh an allocation granted for C{lifetime} seconds: a
    minute before it runs out, or halfway for short lifetimes, so that a
    lost or slow refresh still has time for a retry.
    """
    return float(max(lifetime - 60, lifetime / 2))


class TurnClient:
    """
    The client side of one TCP connection to a TURN server: a control
    connection (L{allocate}, L{refresh}, L{permit}, L{connect},
    CONNECTION-ATTEMPT indications) or a data connection
    (L{connectionBind}).

    Feed it what the connection receives (L{dataReceived},
    L{connectionLost}); it writes through C{send}.  Timers run on
    C{reactor}.

    @ivar allocation: the current L{Allocation}, or L{None}.
    @ivar onConnectionAttempt: called with C{(connectionID, peer)} when a
        peer connects to the relayed address.
    @ivar onAllocationLost: called with a L{TurnAllocationLost} when the
        allocation is gone for good.
    @ivar handedOver: the data connection is bound: the stream now
        carries the peer's bytes, and this client reads no more.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        send: Callable[[bytes], None],
        username: str,
        password: str,
        *,
        timeout: float = 10.0,
        software: Optional[str] = "beam",
    ) -> None:
        self.reactor = reactor
        self.send = send
        self.username = username
        self.password = password
        self.timeout = timeout
        self.software = software
        self.realm: Optional[str] = None
        self.nonce: Optional[bytes] = None
        self.key: Optional[bytes] = None
        self.allocation: Optional[Allocation] = None
        self.onConnectionAttempt: Optional[Callable[[int, HostPort], None]] = None
        self.onAllocationLost: Optional[Callable[[TurnAllocationLost], None]] = None
        self.handedOver = False
        self.closed = False
        self._decoder = StreamDecoder()
        self._pending: dict[bytes, _Pending] = {}
        self._refreshTimer: Optional[IDelayedCall] = None
        self._expiryTimer: Optional[IDelayedCall] = None
        self._permitTimer: Optional[IDelayedCall] = None
        self._permitted: dict[str, None] = {}

    # -- credentials --------------------------------------------------------

    def shareCredentials(self, other: TurnClient) -> None:
        """
        Start with C{other}'s realm and nonce (a data connection reusing
        the control connection's), saving the 401 round trip.
        """
        self.realm, self.nonce, self.key = other.realm, other.nonce, other.key

    def _learn(self, message: TurnMessage) -> bool:
        if message.realm is None or message.nonce is None:
            return False
        self.realm = message.realm
        self.nonce = message.nonce
        self.key = longTermKey(self.username, message.realm, self.password)
        return True

    # -- input --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the server.  Anything that is not STUN closes the
        client (L{connectionLost} semantics: pending requests fail).
        """
        if self.handedOver or self.closed:
            return
        self._decoder.feed(data)
        while not self.handedOver and not self.closed:
            try:
                message = self._decoder.next()
            except InvalidStunMessage as e:
                self.connectionLost(TurnError(f"the TURN server sent something that is not STUN: {e}"))
                return
            if message is None:
                return
            self._dispatch(message)

    def leftover(self) -> bytes:
        """
        The bytes received after the CONNECTION-BIND success response: the
        start of the peer's stream.
        """
        data, self._decoder.buffer = self._decoder.buffer, b""
        return data

    def connectionLost(self, reason: BaseException) -> None:
        """
        The connection closed: every pending request fails, timers stop,
        and an allocation is lost (it lives only as long as its control
        connection, RFC 6062 section 5.1).
        """
        if self.closed:
            return
        self.closed = True
        error = reason if isinstance(reason, TurnError) else TurnError(f"the TURN connection closed: {reason}")
        for tid, pending in list(self._pending.items()):
            self._finish(tid, pending)
            pending.result.errback(error)
        self._stopTimers()
        if self.allocation is not None and not self.handedOver:
            self._lose(TurnAllocationLost(f"the control connection to the TURN server closed ({error})"))

    def _dispatch(self, message: TurnMessage) -> None:
        if message.messageClass == MessageClass.INDICATION:
            if message.method == CONNECTION_ATTEMPT:
                self._connectionAttempt(message)
            return
        if message.messageClass == MessageClass.REQUEST:
            return  # servers do not send us requests
        pending = self._pending.get(message.transactionID)
        if pending is None or message.method != pending.method:
            return
        code = message.errorCode.code if message.errorCode is not None else None
        if code in (401, 438):
            # The challenge and stale nonce come without integrity.
            self._finish(message.transactionID, pending)
            self._challenged(pending, message, code)
            return
        if pending.authenticated:
            # RFC 8489 section 9.2.5: a response to an authenticated
            # request counts only with our integrity on it; anything else
            # may be forged and is dropped (the request then times out).
            assert self.key is not None
            if not message.verify(self.key):
                log.debug("dropped a TURN response without valid MESSAGE-INTEGRITY")
                return
        self._finish(message.transactionID, pending)
        if message.messageClass == MessageClass.SUCCESS:
            pending.result.callback(message)
            return
        ec = message.errorCode or ErrorCode(500, "no ERROR-CODE")
        errorType = TurnAuthError if ec.code == 441 else TurnErrorResponse
        pending.result.errback(errorType(pending.what, ec.code, ec.reason))

    def _challenged(self, pending: _Pending, message: TurnMessage, code: int) -> None:
        ec = message.errorCode
        assert ec is not None
        if pending.tries >= _AUTH_RETRIES:
            pending.result.errback(TurnAuthError(pending.what, ec.code, ec.reason))
            return
        if code == 401 and pending.authenticated and (message.realm, message.nonce) == (self.realm, self.nonce):
            # We answered this very challenge and were refused: the
            # credentials are wrong.  (A new nonce, e.g. on a data
            # connection that borrowed the control connection's, is
            # answered again.)
            pending.result.errback(TurnAuthError(pending.what, ec.code, ec.reason))
            return
        if not self._learn(message):
            pending.result.errback(TurnErrorResponse(pending.what, ec.code, ec.reason + " (without REALM and NONCE)"))
            return
        self._send(pending)

    def _connectionAttempt(self, message: TurnMessage) -> None:
        if message.connectionID is None or not message.xorPeerAddresses:
            log.debug("ignored a CONNECTION-ATTEMPT without CONNECTION-ID or XOR-PEER-ADDRESS")
            return
        if self.onConnectionAttempt is not None:
            self.onConnectionAttempt(message.connectionID, message.xorPeerAddresses[0])

    # -- requests -----------------------------------------------------------

    def _request(self, what: str, method: int, **fields: Any) -> Deferred[TurnMessage]:
        if self.closed:
            return _failed(TurnError(f"cannot send {what}: the TURN connection is closed"))
        pending = _Pending(what, method, fields, Deferred())
        self._send(pending)
        return pending.result

    def _send(self, pending: _Pending) -> None:
        pending.tries += 1
        auth: dict[str, Any] = {}
        if self.key is not None:
            auth = {"username": self.username, "realm": self.realm, "nonce": self.nonce}
            pending.authenticated = True
        message = TurnMessage(
            MessageClass.REQUEST, pending.method, software=self.software, **auth, **pending.fields
        )
        tid = message.transactionID
        self._pending[tid] = pending
        pending.timer = self.reactor.callLater(self.timeout, self._timedOut, tid)
        self.send(encode(message, self.key))

    def _finish(self, tid: bytes, pending: _Pending) -> None:
        self._pending.pop(tid, None)
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.timer = None

    def _timedOut(self, tid: bytes) -> None:
        pending = self._pending.pop(tid, None)
        if pending is not None:
            pending.timer = None
            pending.result.errback(
                TurnTimeout(f"the TURN server did not answer {pending.what} within {self.timeout:g} s")
            )

    # -- allocation ---------------------------------------------------------

    def allocate(self, lifetime: Optional[int] = None) -> Deferred[Allocation]:
        """
        Allocate a TCP relay (REQUESTED-TRANSPORT = TCP), answering the
        server's credential challenge, and keep it refreshed until
        L{release} or L{connectionLost}.
        """
        if self.allocation is not None:
            return _failed(TurnError("this connection already has an allocation"))
        d = self._request("ALLOCATE", ALLOCATE, requestedTransport=TCP, lifetime=lifetime)

        def allocated(message: TurnMessage) -> Allocation:
            if message.xorRelayedAddress is None:
                raise TurnError("the TURN server's ALLOCATE response has no XOR-RELAYED-ADDRESS")
            granted = message.lifetime if message.lifetime is not None else 600
            self.allocation = Allocation(
                message.xorRelayedAddress, message.xorMappedAddress, granted, self.reactor.seconds() + granted
            )
            self._scheduleRefresh(granted)
            return self.allocation

        return d.addCallback(allocated)

    def refresh(self, lifetime: Optional[int] = None) -> Deferred[int]:
        """
        Refresh the allocation now; fires with the lifetime granted.  A
        437 means the server forgot the allocation: it is lost.
        """
        if self.allocation is None:
            return _failed(TurnError("no allocation to refresh"))
        d = self._request("REFRESH", REFRESH, lifetime=lifetime)

        def refreshed(message: TurnMessage) -> int:
            granted = message.lifetime if message.lifetime is not None else 600
            if self.allocation is not None:
                self.allocation = attrs.evolve(
                    self.allocation, lifetime=granted, expires=self.reactor.seconds() + granted
                )
                self._scheduleRefresh(granted)
            return granted

        def failed(f: Failure) -> Failure:
            if f.check(TurnErrorResponse) and f.value.code == 437 and self.allocation is not None:
                self._lose(TurnAllocationLost(str(f.value)))
            return f

        return d.addCallbacks(refreshed, failed)

    def release(self) -> Deferred[None]:
        """
        Delete the allocation (REFRESH with LIFETIME 0) and stop
        refreshing.  Fires once the server answered (errors ignored).
        """
        self._stopTimers()
        if self.allocation is None or self.closed:
            self.allocation = None
            return Deferred.fromCoroutine(_nothing())
        self.allocation = None
        d = self._request("REFRESH", REFRESH, lifetime=0)
        return d.addCallbacks(lambda _: None, lambda _: None)

    def _scheduleRefresh(self, lifetime: int) -> None:
        for timer in (self._refreshTimer, self._expiryTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._refreshTimer = self.reactor.callLater(refreshDelay(lifetime), self._autoRefresh)
        self._expiryTimer = self.reactor.callLater(lifetime, self._expired)

    def _autoRefresh(self) -> None:
        self._refreshTimer = None
        allocation = self.allocation
        if allocation is None:
            return

        def retry(f: Failure) -> None:
            if self.allocation is None or self.closed:
                return
            left = self.allocation.expires - self.reactor.seconds()
            log.info("TURN refresh failed, retrying: {why}", why=str(f.value))
            if left > 2:
                self._refreshTimer = self.reactor.callLater(min(30.0, left / 3), self._autoRefresh)

        self.refresh().addErrback(retry)

    def _expired(self) -> None:
        self._expiryTimer = None
        if self.allocation is not None:
            self._lose(TurnAllocationLost("the TURN allocation expired: no refresh succeeded in time"))

    def _lose(self, error: TurnAllocationLost) -> None:
        self.allocation = None
        self._stopTimers()
        if self.onAllocationLost is not None:
            self.onAllocationLost(error)

    def _stopTimers(self) -> None:
        for timer in (self._refreshTimer, self._expiryTimer, self._permitTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._refreshTimer = self._expiryTimer = self._permitTimer = None

    # -- permissions --------------------------------------------------------

    def createPermission(self, ips: Iterable[str]) -> Deferred[None]:
        """
        One CREATE-PERMISSION for C{ips} (at most 16): peers from those
        IPs may connect to the relayed address for 300 s.
        """
        peers = tuple((str(ipaddress.ip_address(ip)), 0) for ip in ips)
        if not 0 < len(peers) <= _PERMISSIONS_PER_REQUEST:
            return _failed(ValueError(f"one CREATE-PERMISSION names 1 to {_PERMISSIONS_PER_REQUEST} IPs"))
        d = self._request("CREATE-PERMISSION", CREATE_PERMISSION, xorPeerAddresses=peers)
        return d.addCallback(lambda _: None)

    @property
    def permitted(self) -> list[str]:
        """
        The IPs L{permit} keeps permitted, oldest first.
        """
        return list(self._permitted)

    def permit(self, ips: Iterable[str]) -> Deferred[None]:
        """
        Keep C{ips} permitted from now on (refreshed every
        L{PERMISSION_REFRESH} s).  At most L{MAX_PERMISSIONS} IPs are
        kept; the oldest are dropped first (their permission then lapses
        on the server within 300 s).  Fires when the new ones are
        installed.
        """
        new = []
        for ip in ips:
            ip = str(ipaddress.ip_address(ip))
            if ip in self._permitted:
                continue
            self._permitted[ip] = None
            new.append(ip)
        while len(self._permitted) > MAX_PERMISSIONS:
            del self._permitted[next(iter(self._permitted))]
        new = [ip for ip in new if ip in self._permitted]
        if self._permitTimer is None or not self._permitTimer.active():
            self._permitTimer = self.reactor.callLater(PERMISSION_REFRESH, self._refreshPermissions)
        if not new:
            return Deferred.fromCoroutine(_nothing())
        return self._installAll(new)

    def _installAll(self, ips: list[str]) -> Deferred[None]:
        ds = [
            self.createPermission(ips[i : i + _PERMISSIONS_PER_REQUEST])
            for i in range(0, len(ips), _PERMISSIONS_PER_REQUEST)
        ]

        async def all() -> None:
            for d in ds:
                await d

        return Deferred.fromCoroutine(all())

    def _refreshPermissions(self) -> None:
        self._permitTimer = None
        if self.closed or not self._permitted:
            return
        self._permitTimer = self.reactor.callLater(PERMISSION_REFRESH, self._refreshPermissions)
        self._installAll(list(self._permitted)).addErrback(
            lambda f: log.info("TURN permission refresh failed: {why}", why=str(f.value))
        )

    # -- RFC 6062 connections ---------------------------------------------

    def connect(self, peer: HostPort) -> Deferred[int]:
        """
        Ask the server to open a TCP connection from the relayed address
        to C{peer}; fires with the CONNECTION-ID to bind a data
        connection to (L{connectionBind}).
        """
        d = self._request("CONNECT", CONNECT, xorPeerAddresses=(peer,))

        def connected(message: TurnMessage) -> int:
            if message.connectionID is None:
                raise TurnError("the TURN server's CONNECT response has no CONNECTION-ID")
            return message.connectionID

        return d.addCallback(connected)

    def connectionBind(self, connectionID: int) -> Deferred[bytes]:
        """
        Bind this (data) connection to C{connectionID}.  Fires with the
        bytes already received after the success response: from then on
        the connection carries the peer's stream and this client reads no
        more of it.
        """
        d = self._request("CONNECTION-BIND", CONNECTION_BIND, connectionID=connectionID)

        def bound(_: TurnMessage) -> bytes:
            self.handedOver = True
            self._stopTimers()
            return self.leftover()

        return d.addCallback(bound)


async def _nothing() -> None:
    return None


def _failed(error: BaseException) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(Failure(error))
    return d
