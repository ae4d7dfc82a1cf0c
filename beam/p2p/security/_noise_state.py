"""
The Noise Protocol Framework state objects (revision 34), for the one
protocol libp2p uses: C{Noise_XX_25519_ChaChaPoly_SHA256}.

This module is pure: no I/O, no framing, no libp2p payloads.  It follows the
names of the Noise specification (sections 5.1 to 5.3) so that a reader can
check it line by line against U{https://noiseprotocol.org/noise.html}, and it
is tested against the cacophony test vectors.

Only the C{cryptography} package's primitives are used: X25519,
ChaCha20-Poly1305, SHA-256 and HKDF (whose RFC 5869 form with an empty
C{info} is exactly Noise's C{HKDF(chaining_key, input_key_material, 2)}).
"""

from __future__ import annotations

import struct
from typing import Final, Optional, Tuple, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from beam.errors import DecryptionFailed, HandshakeFailed, SecurityError

PROTOCOL_NAME: Final = b"Noise_XX_25519_ChaChaPoly_SHA256"
HASHLEN: Final = 32
DHLEN: Final = 32
TAGLEN: Final = 16
#: Noise reserves the nonce 2**64-1; reaching it means the key is used up.
MAX_NONCE: Final = 2**64 - 1

_NONCE: Final = struct.Struct("<4xQ")  # 32 zero bits, 64-bit little-endian counter


def sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def hkdf2(chainingKey: bytes, inputKeyMaterial: bytes) -> Tuple[bytes, bytes]:
    """
    Noise's C{HKDF(chaining_key, input_key_material, 2)}: two 32-byte outputs.

    Noise defines C{temp_key = HMAC(chaining_key, ikm)},
    C{output1 = HMAC(temp_key, 0x01)}, C{output2 = HMAC(temp_key, output1 ||
    0x02)}; that is RFC 5869 with C{salt=chaining_key}, empty C{info} and 64
    bytes of output.
    """
    out = HKDF(
        algorithm=hashes.SHA256(), length=2 * HASHLEN, salt=chainingKey, info=b""
    ).derive(inputKeyMaterial)
    return out[:HASHLEN], out[HASHLEN:]


def nonceBytes(n: int) -> bytes:
    """
    The 96-bit ChaChaPoly nonce for counter C{n}: 4 zero bytes, then C{n}
    little-endian.
    """
    return _NONCE.pack(n)


def publicBytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # cryptography refuses low-order points (an all-zero shared secret);
        # Noise allows that, and an honest peer never sends one.
        raise HandshakeFailed("peer sent an invalid X25519 public key") from None


class CipherState:
    """
    A key and a nonce counter: Noise's C{CipherState}.

    The AEAD object is built once per key, because constructing it costs more
    than sealing a small message.
    """

    __slots__ = ("n", "_aead", "_key")

    def __init__(self, key: Optional[bytes] = None) -> None:
        self.n = 0
        self._key = key
        self._aead = ChaCha20Poly1305(key) if key is not None else None

    def hasKey(self) -> bool:
        return self._aead is not None

    def _nextNonce(self) -> bytes:
        n = self.n
        if n >= MAX_NONCE:
            raise SecurityError("the Noise nonce is exhausted; the connection must close")
        self.n = n + 1
        return _NONCE.pack(n)

    def encryptWithAd(self, ad: Optional[bytes], plaintext: Union[bytes, memoryview]) -> bytes:
        """
        Seal C{plaintext} (returned as is while there is no key).

        @raise SecurityError: the nonce space is used up.
        """
        if self._aead is None:
            return bytes(plaintext)
        return self._aead.encrypt(self._nextNonce(), plaintext, ad)

    def decryptWithAd(self, ad: Optional[bytes], ciphertext: Union[bytes, memoryview]) -> bytes:
        """
        Open C{ciphertext}.  On failure the nonce is not advanced, as Noise
        requires, though callers here always close the session anyway.

        @raise DecryptionFailed: the tag did not verify.
        @raise SecurityError: the nonce space is used up.
        """
        if self._aead is None:
            return bytes(ciphertext)
        n = self.n
        if n >= MAX_NONCE:
            raise SecurityError("the Noise nonce is exhausted; the connection must close")
        try:
            plaintext = self._aead.decrypt(_NONCE.pack(n), ciphertext, ad)
        except InvalidTag:
            raise DecryptionFailed("a Noise message failed authentication") from None
        self.n = n + 1
        return plaintext


class SymmetricState:
    """
    Noise's C{SymmetricState}: the chaining key, the handshake hash and the
    current handshake cipher.
    """

    def __init__(self, protocolName: bytes = PROTOCOL_NAME) -> None:
        if len(protocolName) <= HASHLEN:
            self.h = protocolName.ljust(HASHLEN, b"\x00")
        else:
            self.h = sha256(protocolName)
        self.ck = self.h
        self.cipher = CipherState()

    def mixKey(self, inputKeyMaterial: bytes) -> None:
        self.ck, tempK = hkdf2(self.ck, inputKeyMaterial)
        self.cipher = CipherState(tempK)

    def mixHash(self, data: bytes) -> None:
        self.h = sha256(self.h + data)

    def encryptAndHash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encryptWithAd(self.h, plaintext)
        self.mixHash(ciphertext)
        return ciphertext

    def decryptAndHash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decryptWithAd(self.h, ciphertext)
        self.mixHash(ciphertext)
        return plaintext

    def split(self) -> Tuple[CipherState, CipherState]:
        """
        The initiator-to-responder and responder-to-initiator ciphers.
        """
        k1, k2 = hkdf2(self.ck, b"")
        return CipherState(k1), CipherState(k2)


class HandshakeXX:
    """
    Noise's C{HandshakeState} for the XX pattern::

        -> e
        <- e, ee, s, es
        -> s, se

    Call L{writeMessage} and L{readMessage} alternately in pattern order; after
    the third message L{complete} is true and L{split} gives the transport
    ciphers.  Any failure raises L{HandshakeFailed} (or L{DecryptionFailed},
    also a L{SecurityError}) and leaves the object unusable.

    @ivar remoteStatic: the peer's static public key, once received.
    """

    def __init__(
        self,
        initiator: bool,
        staticKey: X25519PrivateKey,
        prologue: bytes = b"",
        ephemeralKey: Optional[X25519PrivateKey] = None,
    ) -> None:
        """
        @param ephemeralKey: only for known-answer tests; a fresh key is
            generated otherwise, and must be, for security.
        """
        self.initiator = initiator
        self._s = staticKey
        self._sPub = publicBytes(staticKey)
        self._e = ephemeralKey
        self._re: Optional[bytes] = None
        self.remoteStatic: Optional[bytes] = None
        self._sym = SymmetricState(PROTOCOL_NAME)
        # The prologue is always hashed, even when empty (Noise section 5.3).
        self._sym.mixHash(prologue)
        self._step = 0

    @property
    def complete(self) -> bool:
        return self._step == 3

    @property
    def step(self) -> int:
        """
        How many handshake messages have been written or read (0 to 3).
        """
        return self._step

    @property
    def handshakeHash(self) -> bytes:
        return self._sym.h

    @property
    def localStaticPublic(self) -> bytes:
        return self._sPub

    def isOurTurn(self) -> bool:
        return self._step < 3 and (self._step % 2 == 0) == self.initiator

    def writeMessage(self, payload: bytes = b"") -> bytes:
        """
        Produce the next handshake message, carrying C{payload}.
        """
        if not self.isOurTurn():
            raise HandshakeFailed("not our turn to send a Noise handshake message")
        sym = self._sym
        out = []
        if self._step == 0:
            out.append(self._writeE())
        elif self._step == 1:
            out.append(self._writeE())
            sym.mixKey(_dh(self._ephemeral(), self._remoteE()))  # ee
            out.append(sym.encryptAndHash(self._sPub))  # s
            sym.mixKey(_dh(self._s, self._remoteE()))  # es (responder side)
        else:
            out.append(sym.encryptAndHash(self._sPub))  # s
            sym.mixKey(_dh(self._s, self._remoteE()))  # se (initiator side)
        out.append(sym.encryptAndHash(payload))
        self._step += 1
        return b"".join(out)

    def readMessage(self, message: bytes) -> bytes:
        """
        Consume the peer's next handshake message and return its payload.

        @raise HandshakeFailed: the message is malformed or a ciphertext in
            it did not authenticate.
        """
        if self._step >= 3 or self.isOurTurn():
            raise HandshakeFailed("unexpected Noise handshake message")
        try:
            return self._readMessage(bytes(message))
        except DecryptionFailed:
            raise HandshakeFailed("a Noise handshake message failed authentication") from None

    def _readMessage(self, message: bytes) -> bytes:
        sym = self._sym
        if self._step == 0:
            rest = self._readE(message)
        elif self._step == 1:
            rest = self._readE(message)
            sym.mixKey(_dh(self._ephemeral(), self._remoteE()))  # ee
            rest = self._readS(rest)
            sym.mixKey(_dh(self._ephemeral(), self._rs()))  # es (initiator side)
        else:
            rest = self._readS(message)
            sym.mixKey(_dh(self._ephemeral(), self._rs()))  # se (responder side)
        if sym.cipher.hasKey() and len(rest) < TAGLEN:
            raise HandshakeFailed("Noise handshake message too short")
        payload = sym.decryptAndHash(rest)
        self._step += 1
        return payload

    def split(self) -> Tuple[CipherState, CipherState]:
        """
        The (send, receive) transport ciphers for our role.
        """
        if not self.complete:
            raise HandshakeFailed("Noise handshake is not complete")
        c1, c2 = self._sym.split()
        return (c1, c2) if self.initiator else (c2, c1)

    def _writeE(self) -> bytes:
        if self._e is None:
            self._e = X25519PrivateKey.generate()
        pub = publicBytes(self._e)
        self._sym.mixHash(pub)
        return pub

    def _readE(self, message: bytes) -> bytes:
        if len(message) < DHLEN:
            raise HandshakeFailed("Noise handshake message too short")
        self._re = message[:DHLEN]
        self._sym.mixHash(self._re)
        return message[DHLEN:]

    def _readS(self, message: bytes) -> bytes:
        size = DHLEN + TAGLEN
        if len(message) < size:
            raise HandshakeFailed("Noise handshake message too short")
        self.remoteStatic = self._sym.decryptAndHash(message[:size])
        return message[size:]

    def _ephemeral(self) -> X25519PrivateKey:
        assert self._e is not None
        return self._e

    def _remoteE(self) -> bytes:
        assert self._re is not None
        return self._re

    def _rs(self) -> bytes:
        assert self.remoteStatic is not None
        return self.remoteStatic
