"""
Multiaddrs: self-describing network addresses (multiformats/multiaddr).

A multiaddr is a sequence of components, each a protocol and perhaps a value:
C{/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...}.  Its binary form, the one that
travels in identify and DHT messages, is for each component the protocol code
as an unsigned varint, then the value: fixed-size for addresses and ports,
varint-length-prefixed for names.  Codes and sizes come from the multiformats
C{protocols.csv} table; the value codecs follow go-multiaddr, the reference
implementation, so our text and bytes agree with every other libp2p.

Two addresses are equal when their binary forms are equal, so
C{/ipfs/Qm...} equals C{/p2p/Qm...} and a peer ID written as a CID equals
the same ID written in base58.

Every malformed input, text or bytes, raises L{InvalidMultiaddr}; inputs
larger than L{MAX_BYTES} (binary) or L{MAX_TEXT} (characters) are refused
before any parsing, because multiaddrs arrive from untrusted peers.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Final, Optional, Union

from twisted.internet.address import IPv4Address, IPv6Address

from beam.encoding.base58 import b58decode
from beam.errors import DecodeError, InvalidMultiaddr
from beam.identity.keys import PeerID
from beam.encoding.varint import decode_uvarint_exact, encode_uvarint

MAX_BYTES: Final = 1024
"""The largest binary multiaddr we accept or build."""

MAX_TEXT: Final = 2048
"""The longest text multiaddr we parse (text is up to ~1.6x the binary size)."""

_MAX_DNS: Final = 253
_LIBP2P_KEY_CODEC: Final = 0x72

_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_DEC_RE: Final = re.compile(r"[0-9]{1,20}")


# --- value codecs --------------------------------------------------------
#
# Each protocol with a value has a pair of functions: text -> bytes and
# bytes -> text.  Both validate; they raise ValueError (or DecodeError), which
# the parser turns into InvalidMultiaddr naming the component.


def _ip4FromText(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def _ip4ToText(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _ip6FromText(text: str) -> bytes:
    if "%" in text:
        raise ValueError("an IPv6 zone goes in a separate /ip6zone component")
    return ipaddress.IPv6Address(text).packed


def _ip6ToText(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    mapped = addr.ipv4_mapped
    if mapped is not None:
        # go-multiaddr's form, and the one people recognise.
        return f"::ffff:{mapped}"
    return str(addr)


def _portFromText(text: str) -> bytes:
    if not _PORT_RE.fullmatch(text) or int(text) > 0xFFFF:
        raise ValueError("port must be a number from 0 to 65535")
    return int(text).to_bytes(2, "big")


def _portToText(raw: bytes) -> str:
    return str(int.from_bytes(raw, "big"))


def _nameToText(raw: bytes) -> str:
    """
    DNS names, SNI and IPv6 zones: non-empty UTF-8 without a slash (a slash
    would split the text form), at most 253 bytes.
    """
    if not raw:
        raise ValueError("empty name")
    if len(raw) > _MAX_DNS:
        raise ValueError(f"name longer than {_MAX_DNS} bytes")
    text = raw.decode("utf-8")
    if "/" in text:
        raise ValueError("name contains '/'")
    return text


def _nameFromText(text: str) -> bytes:
    raw = text.encode("utf-8")
    _nameToText(raw)
    return raw


def _unixToText(raw: bytes) -> str:
    if len(raw) < 2 or raw[:1] != b"/":
        raise ValueError("unix path must start with '/' and name something")
    if raw.endswith(b"/"):
        raise ValueError("unix path must not end in '/'")
    return raw.decode("utf-8")


def _unixFromText(text: str) -> bytes:
    raw = text.encode("utf-8")
    _unixToText(raw)
    return raw


def _base36Decode(body: str, upper: bool) -> bytes:
    pattern = r"[0-9A-Z]*" if upper else r"[0-9a-z]*"
    if not re.fullmatch(pattern, body):
        raise ValueError("invalid base36 character")
    zeros = len(body) - len(body.lstrip("0"))
    rest = body[zeros:]
    n = int(rest, 36) if rest else 0
    return b"\0" * zeros + (n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b"")


def _padded(body: str, block: int) -> str:
    return body + "=" * (-len(body) % block)


def _multibaseDecode(text: str) -> bytes:
    """
    Decode multibase text (the encodings libp2p uses: base32, base36,
    base58btc, base64, base64url, hex).
    """
    if not text:
        raise ValueError("empty multibase text")
    prefix, body = text[0], text[1:]
    if prefix in "bB":
        alphabet = r"[a-z2-7]*" if prefix == "b" else r"[A-Z2-7]*"
        if not re.fullmatch(alphabet, body):
            raise ValueError("invalid base32 character")
        return base64.b32decode(_padded(body.upper(), 8))
    if prefix in "kK":
        return _base36Decode(body, prefix == "K")
    if prefix == "z":
        return b58decode(body)
    if prefix in "fF":
        if not re.fullmatch(r"(?:[0-9a-f]{2})*" if prefix == "f" else r"(?:[0-9A-F]{2})*", body):
            raise ValueError("invalid hex")
        return bytes.fromhex(body)
    if prefix in "uU":
        pattern = r"[A-Za-z0-9_-]*" if prefix == "u" else r"[A-Za-z0-9_-]*={0,2}"
        if not re.fullmatch(pattern, body):
            raise ValueError("invalid base64url character")
        return base64.b64decode(_padded(body, 4) if prefix == "u" else body, altchars=b"-_", validate=True)
    if prefix in "mM":
        pattern = r"[A-Za-z0-9+]*" if prefix == "m" else r"[A-Za-z0-9+]*={0,2}"
        if not re.fullmatch(pattern, body):
            raise ValueError("invalid base64 character")
        return base64.b64decode(_padded(body, 4) if prefix == "m" else body, validate=True)
    raise ValueError(f"unsupported multibase prefix {prefix!r}")


def _checkMultihash(raw: bytes) -> None:
    _code, off = decode_uvarint_exact(raw)
    length, off = decode_uvarint_exact(raw, off)
    if len(raw) - off != length:
        raise ValueError("multihash digest length does not match")


def _p2pToText(raw: bytes) -> str:
    return str(PeerID(raw))


def _p2pFromText(text: str) -> bytes:
    """
    A peer ID as base58btc multihash (C{Qm...}, C{12D3KooW...}) or as a CIDv1
    with the C{libp2p-key} codec in any multibase (C{bafz...}, C{k51...}).
    """
    if text.startswith(("Qm", "1")):
        return PeerID(b58decode(text)).bytes
    raw = _multibaseDecode(text)
    version, off = decode_uvarint_exact(raw)
    if version != 1:
        raise ValueError("a CID peer ID must be CIDv1")
    codec, off = decode_uvarint_exact(raw, off)
    if codec != _LIBP2P_KEY_CODEC:
        raise ValueError(f"CID codec 0x{codec:x} is not libp2p-key")
    return PeerID(raw[off:]).bytes


def _certhashToText(raw: bytes) -> str:
    _checkMultihash(raw)
    return "u" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _certhashFromText(text: str) -> bytes:
    raw = _multibaseDecode(text)
    _checkMultihash(raw)
    return raw


def _onionCodec(hostChars: int, hostBytes: int) -> tuple[Callable[[str], bytes], Callable[[bytes], str]]:
    def fromText(text: str) -> bytes:
        host, sep, port = text.partition(":")
        if not sep or len(host) != hostChars or not re.fullmatch(r"[a-zA-Z2-7]*", host):
            raise ValueError(f"expected {hostChars} base32 characters, ':' and a port")
        hostRaw = base64.b32decode(_padded(host.upper(), 8))[:hostBytes]
        portRaw = _portFromText(port)
        if portRaw == b"\0\0":
            raise ValueError("onion port must not be 0")
        return hostRaw + portRaw

    def toText(raw: bytes) -> str:
        port = int.from_bytes(raw[hostBytes:], "big")
        if port == 0:
            raise ValueError("onion port must not be 0")
        host = base64.b32encode(raw[:hostBytes]).decode("ascii").lower().rstrip("=")
        return f"{host}:{port}"

    return fromText, toText


_garlic64Re: Final = re.compile(r"[A-Za-z0-9~-]+={0,2}")


def _garlic64ToText(raw: bytes) -> str:
    if len(raw) < 386:
        raise ValueError("not an i2p base64 address (too short)")
    return base64.b64encode(raw, altchars=b"-~").decode("ascii")


def _garlic64FromText(text: str) -> bytes:
    if not _garlic64Re.fullmatch(text):
        raise ValueError("invalid i2p base64 character")
    raw = base64.b64decode(text, altchars=b"-~", validate=True)
    _garlic64ToText(raw)
    return raw


def _garlic32ToText(raw: bytes) -> str:
    if len(raw) < 35 and len(raw) != 32:
        raise ValueError("not an i2p base32 address")
    return base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def _garlic32FromText(text: str) -> bytes:
    if not re.fullmatch(r"[a-z2-7]+", text):
        raise ValueError("invalid i2p base32 character")
    raw = base64.b32decode(_padded(text.upper(), 8))
    _garlic32ToText(raw)
    return raw


def _memoryFromText(text: str) -> bytes:
    if not _DEC_RE.fullmatch(text) or int(text) >= 1 << 64:
        raise ValueError("memory address must be a 64-bit unsigned number")
    return int(text).to_bytes(8, "big")


def _memoryToText(raw: bytes) -> str:
    if len(raw) != 8:
        raise ValueError("memory address must be 8 bytes")
    return str(int.from_bytes(raw, "big"))


def _cidrFromText(text: str) -> bytes:
    if not re.fullmatch(r"[0-9]{1,3}", text) or int(text) > 255:
        raise ValueError("CIDR mask must be a number from 0 to 255")
    return bytes([int(text)])


def _cidrToText(raw: bytes) -> str:
    return str(raw[0])


def _httpPathToText(raw: bytes) -> str:
    if not raw:
        raise ValueError("empty HTTP path")
    return urllib.parse.quote_plus(raw, safe="")


def _httpPathFromText(text: str) -> bytes:
    if not re.fullmatch(r"(?:[^%]|%[0-9A-Fa-f]{2})+", text):
        raise ValueError("invalid percent-encoding")
    return urllib.parse.unquote_to_bytes(text.replace("+", " "))


# --- the protocol table ---------------------------------------------------

_VARIABLE: Final = -1


@dataclass(frozen=True)
class Protocol:
    """
    One row of the multiaddr protocol table.

    @ivar size: value size in bytes; 0 for no value, L{_VARIABLE} (-1) for a
        varint-length-prefixed value.
    @ivar path: the value is a path that swallows the rest of the text form,
        so this protocol must come last.
    """

    code: int
    name: str
    size: int
    fromText: Optional[Callable[[str], bytes]] = None
    toText: Optional[Callable[[bytes], str]] = None
    path: bool = False


_onion2 = _onionCodec(16, 10)
_onion3 = _onionCodec(56, 35)

PROTOCOLS: Final[tuple[Protocol, ...]] = (
    Protocol(4, "ip4", 4, _ip4FromText, _ip4ToText),
    Protocol(6, "tcp", 2, _portFromText, _portToText),
    Protocol(273, "udp", 2, _portFromText, _portToText),
    Protocol(33, "dccp", 2, _portFromText, _portToText),
    Protocol(41, "ip6", 16, _ip6FromText, _ip6ToText),
    Protocol(42, "ip6zone", _VARIABLE, _nameFromText, _nameToText),
    Protocol(43, "ipcidr", 1, _cidrFromText, _cidrToText),
    Protocol(53, "dns", _VARIABLE, _nameFromText, _nameToText),
    Protocol(54, "dns4", _VARIABLE, _nameFromText, _nameToText),
    Protocol(55, "dns6", _VARIABLE, _nameFromText, _nameToText),
    Protocol(56, "dnsaddr", _VARIABLE, _nameFromText, _nameToText),
    Protocol(132, "sctp", 2, _portFromText, _portToText),
    Protocol(301, "udt", 0),
    Protocol(302, "utp", 0),
    Protocol(400, "unix", _VARIABLE, _unixFromText, _unixToText, path=True),
    Protocol(421, "p2p", _VARIABLE, _p2pFromText, _p2pToText),
    Protocol(444, "onion", 12, *_onion2),
    Protocol(445, "onion3", 37, *_onion3),
    Protocol(446, "garlic64", _VARIABLE, _garlic64FromText, _garlic64ToText),
    Protocol(447, "garlic32", _VARIABLE, _garlic32FromText, _garlic32ToText),
    Protocol(448, "tls", 0),
    Protocol(449, "sni", _VARIABLE, _nameFromText, _nameToText),
    Protocol(454, "noise", 0),
    Protocol(460, "quic", 0),
    Protocol(461, "quic-v1", 0),
    Protocol(465, "webtransport", 0),
    Protocol(466, "certhash", _VARIABLE, _certhashFromText, _certhashToText),
    Protocol(480, "http", 0),
    Protocol(481, "http-path", _VARIABLE, _httpPathFromText, _httpPathToText),
    Protocol(443, "https", 0),
    Protocol(477, "ws", 0),
    Protocol(478, "wss", 0),
    Protocol(479, "p2p-websocket-star", 0),
    Protocol(277, "p2p-stardust", 0),
    Protocol(275, "p2p-webrtc-star", 0),
    Protocol(276, "p2p-webrtc-direct", 0),
    Protocol(280, "webrtc-direct", 0),
    Protocol(281, "webrtc", 0),
    Protocol(290, "p2p-circuit", 0),
    Protocol(777, "memory", _VARIABLE, _memoryFromText, _memoryToText),
)

_BY_CODE: Final = {p.code: p for p in PROTOCOLS}
_BY_NAME: Final = {p.name: p for p in PROTOCOLS}
_BY_NAME["ipfs"] = _BY_CODE[421]  # the old name of /p2p, accepted on input

_Part = tuple[Protocol, bytes]


def _protocolNamed(name: str) -> Protocol:
    proto = _BY_NAME.get(name)
    if proto is None:
        raise InvalidMultiaddr(f"unknown multiaddr protocol {name!r}")
    return proto


def _valueToText(proto: Protocol, raw: bytes) -> Optional[str]:
    if proto.toText is None:
        return None
    try:
        return proto.toText(raw)
    except (ValueError, DecodeError) as e:
        raise InvalidMultiaddr(f"invalid value for /{proto.name}: {e}") from None


def _encodePart(proto: Protocol, raw: bytes) -> bytes:
    head = encode_uvarint(proto.code)
    if proto.size == _VARIABLE:
        head += encode_uvarint(len(raw))
    return head + raw


_TWISTED_FAMILIES: Final = ("ip4", "ip6", "dns", "dns4", "dns6")


class Multiaddr:
    """
    An immutable, hashable multiaddr, equal to another when their binary
    forms are equal.

    Build one with L{fromString}, L{fromBytes}, or C{Multiaddr(textOrBytes)}.
    The empty multiaddr exists only as the result of L{decapsulate} or
    L{withoutPeerID} removing everything; it is falsy and cannot be parsed.
    """

    __slots__ = ("_parts", "_bytes")

    _parts: tuple[_Part, ...]
    _bytes: bytes

    def __init__(self, addr: Union[str, bytes, bytearray, memoryview, "Multiaddr"]) -> None:
        if isinstance(addr, Multiaddr):
            parts = addr._parts
        elif isinstance(addr, str):
            parts = _parseText(addr)
        elif isinstance(addr, (bytes, bytearray, memoryview)):
            parts = _parseBytes(bytes(addr))
        else:
            raise InvalidMultiaddr(f"cannot make a multiaddr from {type(addr).__name__}")
        self._init(parts)

    def _init(self, parts: tuple[_Part, ...]) -> None:
        raw = b"".join(_encodePart(p, v) for p, v in parts)
        if len(raw) > MAX_BYTES:
            raise InvalidMultiaddr(f"multiaddr longer than {MAX_BYTES} bytes")
        object.__setattr__(self, "_parts", parts)
        object.__setattr__(self, "_bytes", raw)

    @classmethod
    def _fromParts(cls, parts: tuple[_Part, ...]) -> "Multiaddr":
        self = cls.__new__(cls)
        self._init(parts)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Multiaddr is immutable")

    def __reduce__(self) -> tuple[object, ...]:
        # Immutable slots defeat the default pickle/copy protocol.  A
        # module-level function, not a bound classmethod: importing
        # twisted.persisted.styles replaces how bound methods pickle.
        return (_fromBytes, (self._bytes,)) if self._parts else (_empty, ())

    @classmethod
    def fromString(cls, text: str) -> "Multiaddr":
        """
        Parse the text form, e.g. C{/ip4/127.0.0.1/tcp/4001}.

        @raise InvalidMultiaddr: not a valid multiaddr.
        """
        if not isinstance(text, str):
            raise InvalidMultiaddr("a text multiaddr must be a str")
        return cls._fromParts(_parseText(text))

    @classmethod
    def fromBytes(cls, raw: bytes) -> "Multiaddr":
        """
        Parse the binary form, as carried in identify and DHT messages.

        @raise InvalidMultiaddr: not a valid multiaddr.
        """
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise InvalidMultiaddr("a binary multiaddr must be bytes")
        return cls._fromParts(_parseBytes(bytes(raw)))

    @classmethod
    def fromTwistedAddress(cls, addr: Union[IPv4Address, IPv6Address]) -> "Multiaddr":
        """
        The multiaddr of a Twisted TCP (or UDP) address, as returned by
        C{transport.getPeer()}.  An IPv4-mapped IPv6 address (a dual-stack
        socket's view of an IPv4 peer) becomes C{/ip4}, so that observed
        addresses compare equal however the socket was bound.

        @raise InvalidMultiaddr: not an IP address of TCP or UDP.
        """
        if not isinstance(addr, (IPv4Address, IPv6Address)):
            raise InvalidMultiaddr(f"not an IP address: {addr!r}")
        transport = {"TCP": "tcp", "UDP": "udp"}.get(addr.type)
        if transport is None:
            raise InvalidMultiaddr(f"unsupported address type {addr.type!r}")
        host = addr.host
        parts: list[_Part] = []
        if isinstance(addr, IPv6Address):
            host, _, zone = host.partition("%")
            try:
                ip6 = ipaddress.IPv6Address(host)
            except ValueError as e:
                raise InvalidMultiaddr(f"invalid IPv6 address {addr.host!r}: {e}") from None
            if ip6.ipv4_mapped is not None:
                parts.append((_BY_NAME["ip4"], ip6.ipv4_mapped.packed))
            else:
                if zone:
                    parts.append((_BY_NAME["ip6zone"], _convert(_BY_NAME["ip6zone"], zone)))
                parts.append((_BY_NAME["ip6"], ip6.packed))
        else:
            parts.append((_BY_NAME["ip4"], _convert(_BY_NAME["ip4"], host)))
        parts.append((_BY_NAME[transport], _convert(_BY_NAME[transport], str(addr.port))))
        return cls._fromParts(tuple(parts))

    # --- forms ------------------------------------------------------------

    def toBytes(self) -> bytes:
        """
        The binary form.
        """
        return self._bytes

    def __bytes__(self) -> bytes:
        return self._bytes

    def __str__(self) -> str:
        out = []
        for proto, raw in self._parts:
            out.append("/" + proto.name)
            text = _valueToText(proto, raw)
            if text is not None:
                # A path value already starts with '/'.
                out.append(text if proto.path else "/" + text)
        return "".join(out)

    def __repr__(self) -> str:
        return f"Multiaddr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Multiaddr):
            return NotImplemented
        return self._bytes == other._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __bool__(self) -> bool:
        return bool(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def components(self) -> list[tuple[str, Optional[str]]]:
        """
        The components as C{(protocolName, valueText)}; the value is L{None}
        for protocols without one.
        """
        return [(p.name, _valueToText(p, raw)) for p, raw in self._parts]

    def protocols(self) -> list[str]:
        """
        The protocol names in order.
        """
        return [p.name for p, _ in self._parts]

    def valueFor(self, name: str) -> Optional[str]:
        """
        The text value of the first component of protocol C{name}: C{""} for
        a protocol without a value, L{None} when the protocol is absent.

        @raise InvalidMultiaddr: C{name} is not a known protocol.
        """
        proto = _protocolNamed(name)
        for p, raw in self._parts:
            if p is proto:
                text = _valueToText(p, raw)
                return "" if text is None else text
        return None

    # --- composition ------------------------------------------------------

    def encapsulate(self, other: Union["Multiaddr", str]) -> "Multiaddr":
        """
        This address followed by C{other}, e.g. C{/ip4/1.2.3.4/tcp/80}
        encapsulating C{/p2p/Qm...}.

        @raise InvalidMultiaddr: the result would be invalid (something after
            a C{/unix} path, or too long).
        """
        if isinstance(other, str):
            other = Multiaddr.fromString(other)
        if not isinstance(other, Multiaddr):
            raise InvalidMultiaddr(f"cannot encapsulate {type(other).__name__}")
        if other._parts and self._parts and self._parts[-1][0].path:
            raise InvalidMultiaddr(f"nothing may follow /{self._parts[-1][0].name}")
        return Multiaddr._fromParts(self._parts + other._parts)

    def decapsulate(self, protocolName: str) -> "Multiaddr":
        """
        Remove the last component of protocol C{protocolName} and everything
        after it; the address is returned unchanged if it has none.

        @raise InvalidMultiaddr: C{protocolName} is not a known protocol.
        """
        proto = _protocolNamed(protocolName)
        for i in range(len(self._parts) - 1, -1, -1):
            if self._parts[i][0] is proto:
                return Multiaddr._fromParts(self._parts[:i])
        return self

    def peerID(self) -> Optional[PeerID]:
        """
        The peer this address reaches: the value of a trailing C{/p2p}
        component (one that no C{/p2p-circuit} follows), else L{None}.
        In C{.../p2p/RELAY/p2p-circuit} the relay is not the destination.
        """
        for proto, raw in reversed(self._parts):
            if proto.name == "p2p":
                return PeerID(raw)
            if proto.name == "p2p-circuit":
                return None
        return None

    def withoutPeerID(self) -> "Multiaddr":
        """
        This address without its final C{/p2p} component, if it ends in one.
        """
        if self._parts and self._parts[-1][0].name == "p2p":
            return Multiaddr._fromParts(self._parts[:-1])
        return self

    def withPeerID(self, peer: Union[PeerID, str]) -> "Multiaddr":
        """
        This address ending in C{/p2p/peer}, replacing any final C{/p2p}.

        @raise InvalidMultiaddr: C{peer} is not a valid peer ID.
        """
        if isinstance(peer, PeerID):
            raw = peer.bytes
        else:
            raw = _convert(_BY_NAME["p2p"], str(peer))
        return self.withoutPeerID().encapsulate(Multiaddr._fromParts(((_BY_NAME["p2p"], raw),)))

    # --- networking -------------------------------------------------------

    def isLoopback(self) -> bool:
        """
        Whether the address names this host: a loopback IP (C{127.0.0.0/8},
        C{::1}, IPv4-mapped loopback) or the name C{localhost}.
        """
        parts = self._parts
        if parts and parts[0][0].name == "ip6zone":
            parts = parts[1:]
        if not parts:
            return False
        proto, raw = parts[0]
        if proto.name == "ip4":
            return ipaddress.IPv4Address(raw).is_loopback
        if proto.name == "ip6":
            ip6 = ipaddress.IPv6Address(raw)
            mapped = ip6.ipv4_mapped
            return ip6.is_loopback or (mapped is not None and mapped.is_loopback)
        if proto.name in ("dns", "dns4", "dns6"):
            name = raw.decode("utf-8").lower().rstrip(".")
            return name == "localhost" or name.endswith(".localhost")
        return False

    def isOnion(self) -> bool:
        """
        Whether only Tor reaches this address: it starts with an onion
        service (C{/onion3/...}, or the retired v2 C{/onion/...}).  The one
        test the node uses to keep such addresses apart (dialled last, over
        the C{"tor"} transport only; see L{beam.p2p.host.dialer}).
        """
        return bool(self._parts) and self._parts[0][0].name in ("onion3", "onion")

    def tcpTarget(self) -> Optional[tuple[str, int, str]]:
        """
        Where to open a plain TCP connection for this address:
        C{(host, port, family)} with family one of C{ip4}, C{ip6}, C{dns},
        C{dns4}, C{dns6}.  An IPv6 zone is appended to the host as
        C{%zone}.

        Only addresses of the form C{[/ip6zone/Z]/<ip-or-dns>/H/tcp/N}, with
        at most a trailing C{/p2p/ID}, qualify: anything else after C{/tcp}
        (C{/ws}, C{/tls}, C{/p2p-circuit}) is a different transport, and
        C{/dnsaddr} needs a TXT lookup first.

        @return: the target, or L{None} if this is not such an address.
        """
        parts = list(self._parts)
        zone = ""
        if parts and parts[0][0].name == "ip6zone":
            zone = "%" + parts[0][1].decode("utf-8")
            parts = parts[1:]
            if not parts or parts[0][0].name != "ip6":
                return None
        if parts and parts[-1][0].name == "p2p":
            parts = parts[:-1]
        if len(parts) != 2:
            return None
        (hostProto, hostRaw), (portProto, portRaw) = parts
        if hostProto.name not in _TWISTED_FAMILIES or portProto.name != "tcp":
            return None
        host = _valueToText(hostProto, hostRaw)
        assert host is not None
        if hostProto.name == "ip6":
            host += zone
        return host, int.from_bytes(portRaw, "big"), hostProto.name


def _empty() -> Multiaddr:
    return Multiaddr._fromParts(())


def _convert(proto: Protocol, text: str) -> bytes:
    """
    Text value to bytes for C{proto}, checked both ways so that every value
    we accept also prints, and prints back to the same bytes.
    """
    assert proto.fromText is not None
    try:
        raw = proto.fromText(text)
        if proto.size > 0 and len(raw) != proto.size:
            raise ValueError(f"must encode to {proto.size} bytes")
    except (ValueError, DecodeError) as e:
        raise InvalidMultiaddr(f"invalid value {text[:80]!r} for /{proto.name}: {e}") from None
    _valueToText(proto, raw)
    return raw


def _parseText(text: str) -> tuple[_Part, ...]:
    if len(text) > MAX_TEXT:
        raise InvalidMultiaddr(f"multiaddr text longer than {MAX_TEXT} characters")
    # Trailing slashes are tolerated, as go-multiaddr does.
    body = text.rstrip("/")
    if not body:
        raise InvalidMultiaddr("empty multiaddr")
    if not body.startswith("/"):
        raise InvalidMultiaddr(f"multiaddr must begin with '/': {text[:80]!r}")
    fields = body.split("/")[1:]
    parts: list[_Part] = []
    i = 0
    while i < len(fields):
        proto = _protocolNamed(fields[i])
        i += 1
        if proto.size == 0:
            parts.append((proto, b""))
            continue
        if i >= len(fields):
            raise InvalidMultiaddr(f"/{proto.name} needs a value")
        if proto.path:
            value = "/" + "/".join(fields[i:])
            i = len(fields)
        else:
            value = fields[i]
            i += 1
        parts.append((proto, _convert(proto, value)))
    return tuple(parts)


def _parseBytes(raw: bytes) -> tuple[_Part, ...]:
    if len(raw) > MAX_BYTES:
        raise InvalidMultiaddr(f"multiaddr longer than {MAX_BYTES} bytes")
    if not raw:
        raise InvalidMultiaddr("empty multiaddr")
    parts: list[_Part] = []
    off = 0
    try:
        while off < len(raw):
            if parts and parts[-1][0].path:
                raise InvalidMultiaddr(f"nothing may follow /{parts[-1][0].name}")
            code, off = decode_uvarint_exact(raw, off)
            proto = _BY_CODE.get(code)
            if proto is None:
                raise InvalidMultiaddr(f"unknown multiaddr protocol code {code}")
            if proto.size == _VARIABLE:
                size, off = decode_uvarint_exact(raw, off)
            else:
                size = proto.size
            if off + size > len(raw):
                raise InvalidMultiaddr(f"/{proto.name} value runs past the end")
            value = raw[off:off + size]
            off += size
            _valueToText(proto, value)
            parts.append((proto, value))
    except DecodeError as e:
        raise InvalidMultiaddr(f"malformed binary multiaddr: {e}") from None
    return tuple(parts)


__all__ = ["Multiaddr", "Protocol", "PROTOCOLS", "MAX_BYTES", "MAX_TEXT"]


def _fromBytes(raw: bytes) -> Multiaddr:
    """
    Unpickle a L{Multiaddr}.
    """
    return Multiaddr.fromBytes(raw)
