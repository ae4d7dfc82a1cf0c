"""
base58btc (the Bitcoin alphabet), the text form of libp2p peer IDs.

Peer IDs are at most a few dozen bytes, so the quadratic big-integer method is
fine and keeps this dependency-free.
"""

from __future__ import annotations

from beam.errors import DecodeError

ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
MAX_INPUT = 1024


def b58encode(data: bytes) -> str:
    """
    Encode bytes as base58btc text.
    """
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, rem = divmod(n, 58)
        out.append(ALPHABET[rem])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """
    Decode base58btc text.

    @raise DecodeError: a character outside the alphabet, or absurdly long input.
    """
    if len(text) > MAX_INPUT:
        raise DecodeError("base58 text too long")
    n = 0
    for ch in text:
        try:
            n = n * 58 + _INDEX[ch]
        except KeyError:
            raise DecodeError(f"invalid base58 character {ch!r}") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body
