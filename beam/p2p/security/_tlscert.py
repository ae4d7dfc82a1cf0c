"""
The certificate half of libp2p's TLS handshake (libp2p specs, C{tls/tls.md}).

A libp2p node cannot sign X.509 certificates with its identity key (ed25519
is not a TLS signature scheme everywhere, secp256k1 nowhere), so it makes a
throw-away certificate key, self-signs a certificate with it, and proves
ownership of that key inside the certificate: the libp2p Public Key Extension
(OID C{1.3.6.1.4.1.53594.1.1}) carries the DER structure::

    SignedKey ::= SEQUENCE {
      publicKey OCTET STRING,   -- protobuf libp2p PublicKey
      signature OCTET STRING    -- identity.sign("libp2p-tls-handshake:" + SPKI)
    }

where SPKI is the DER C{SubjectPublicKeyInfo} of the certificate key.

Everything here is pure: no sockets, no TLS connection, and time is a
parameter, so the verification rules can be tested one by one.  The tiny DER
reader is ours rather than a general ASN.1 library so that its limits (one
length octet count, no indefinite lengths, no trailing bytes, a size cap) are
visible in twenty lines.
"""

from __future__ import annotations

import secrets
import warnings
from datetime import datetime, timedelta
from typing import Final

import attr
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from beam.errors import DecodeError, InvalidCertificate, InvalidKey, MessageTooLarge
from beam.identity.keys import MAX_PUBLIC_KEY_BYTES, Identity, PublicKey

LIBP2P_EXTENSION_OID: Final = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
SIGNATURE_PREFIX: Final = b"libp2p-tls-handshake:"

#: A SignedKey holds a protobuf key (at most L{MAX_PUBLIC_KEY_BYTES}) and a
#: signature (512 bytes for RSA-4096); anything bigger is hostile.
MAX_SIGNED_KEY_BYTES: Final = MAX_PUBLIC_KEY_BYTES + 2048

#: OpenSSL refuses certificate lists above 100 KiB by default; a single
#: libp2p certificate is about 450 bytes.
MAX_CERTIFICATE_BYTES: Final = 64 * 1024

#: Same window as go-libp2p and js-libp2p: an hour back for clock skew, and
#: effectively no expiry because the certificate key lives only in memory
#: for the life of the process.
VALID_BEFORE_NOW: Final = timedelta(hours=1)
VALID_AFTER_NOW: Final = timedelta(days=100 * 365)

_SEQUENCE: Final = 0x30
_OCTET_STRING: Final = 0x04
_TBS_VERSION: Final = 0xA0
# issuerUniqueID [1] and subjectUniqueID [2] are IMPLICIT BIT STRINGs
# (primitive); accept the constructed spellings as the same field.
_TBS_UNIQUE_IDS: Final = frozenset({0x81, 0x82, 0xA1, 0xA2})

#: Critical extensions whose meaning we know and which cannot forbid the use
#: a libp2p certificate is put to (key usage is checked separately).
_UNDERSTOOD_CRITICAL: Final = frozenset({
    LIBP2P_EXTENSION_OID,
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
})


# --- DER -------------------------------------------------------------------

def _readTLV(data: bytes, offset: int, end: int) -> tuple[int, int, int]:
    """
    Read one DER element that must lie within C{data[offset:end]}.

    @return: C{(tag, valueStart, valueEnd)}.
    @raise DecodeError: truncated, indefinite, non-minimal or overlong.
    """
    if end - offset < 2:
        raise DecodeError("truncated DER element")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DecodeError("multi-byte DER tags are not supported")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DecodeError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > 4:
            raise DecodeError("DER length field too long")
        if end - pos < count:
            raise DecodeError("truncated DER length")
        if data[pos] == 0:
            raise DecodeError("DER length not minimally encoded")
        length = int.from_bytes(data[pos:pos + count], "big")
        if length < 0x80:
            raise DecodeError("DER length not minimally encoded")
        pos += count
    if length > end - pos:
        raise DecodeError("DER element overruns its container")
    return tag, pos, pos + length


def _encodeTLV(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw + value


def encodeSignedKey(publicKey: bytes, signature: bytes) -> bytes:
    """
    DER-encode a C{SignedKey}.

    @param publicKey: the protobuf-encoded libp2p public key.
    @param signature: the identity signature over the certificate key.
    """
    return _encodeTLV(
        _SEQUENCE,
        _encodeTLV(_OCTET_STRING, publicKey) + _encodeTLV(_OCTET_STRING, signature),
    )


def decodeSignedKey(data: bytes) -> tuple[bytes, bytes]:
    """
    Parse a DER C{SignedKey}: exactly one SEQUENCE of exactly two OCTET
    STRINGs, nothing before or after.

    @return: C{(publicKey, signature)}.
    @raise MessageTooLarge: more than L{MAX_SIGNED_KEY_BYTES} (checked first).
    @raise DecodeError: anything else that is not a DER C{SignedKey}.
    """
    if len(data) > MAX_SIGNED_KEY_BYTES:
        raise MessageTooLarge("SignedKey extension too large")
    data = bytes(data)
    end = len(data)
    tag, start, stop = _readTLV(data, 0, end)
    if tag != _SEQUENCE:
        raise DecodeError("SignedKey is not a SEQUENCE")
    if stop != end:
        raise DecodeError("trailing bytes after SignedKey")
    tag, keyStart, keyEnd = _readTLV(data, start, stop)
    if tag != _OCTET_STRING:
        raise DecodeError("SignedKey.publicKey is not an OCTET STRING")
    tag, sigStart, sigEnd = _readTLV(data, keyEnd, stop)
    if tag != _OCTET_STRING:
        raise DecodeError("SignedKey.signature is not an OCTET STRING")
    if sigEnd != stop:
        raise DecodeError("unexpected fields in SignedKey")
    return data[keyStart:keyEnd], data[sigStart:sigEnd]


def rawSubjectPublicKeyInfo(tbs: bytes) -> bytes:
    """
    The C{SubjectPublicKeyInfo} exactly as it appears in a DER
    C{TBSCertificate}.

    The libp2p signature covers these bytes; re-encoding the parsed key could
    differ from what the peer signed (a compressed EC point, say), which is
    why we cut them out of the certificate instead.

    @raise DecodeError: not a TBSCertificate, or it carries the deprecated
        issuer/subject unique identifiers the spec forbids.
    """
    end = len(tbs)
    tag, pos, stop = _readTLV(tbs, 0, end)
    if tag != _SEQUENCE or stop != end:
        raise DecodeError("TBSCertificate is not a single SEQUENCE")
    tag, _, after = _readTLV(tbs, pos, stop)
    if tag == _TBS_VERSION:
        pos = after
    # serialNumber, signature, issuer, validity, subject
    for _ in range(5):
        _, _, pos = _readTLV(tbs, pos, stop)
    tag, _, spkiEnd = _readTLV(tbs, pos, stop)
    if tag != _SEQUENCE:
        raise DecodeError("subjectPublicKeyInfo is not a SEQUENCE")
    spki = tbs[pos:spkiEnd]
    pos = spkiEnd
    while pos < stop:
        tag, _, pos = _readTLV(tbs, pos, stop)
        if tag in _TBS_UNIQUE_IDS:
            raise DecodeError("certificate carries a deprecated unique identifier")
    return spki


# --- generation ------------------------------------------------------------

@attr.s(frozen=True, auto_attribs=True)
class CertifiedKey:
    """
    Our certificate and the private key it certifies.
    """

    certificate: x509.Certificate
    privateKey: ec.EllipticCurvePrivateKey


def makeCertificate(identity: Identity, now: datetime) -> CertifiedKey:
    """
    A fresh self-signed certificate binding a new ECDSA P-256 key to
    C{identity}.

    P-256 with SHA-256 is what go-libp2p and js-libp2p use, so every peer can
    check its signature.  The libp2p extension is the only extension and is
    marked critical, as js-libp2p and rust-libp2p do (js-libp2p reads the
    I{first} extension, so it must not move).

    @param now: an aware UTC datetime; the validity window is built around it.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signedKey = encodeSignedKey(
        identity.publicKey.toProtobuf(), identity.sign(SIGNATURE_PREFIX + spki)
    )
    # RFC 5280 wants a non-empty issuer; go-libp2p uses a random serialNumber.
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, str(secrets.randbits(62)))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - VALID_BEFORE_NOW)
        .not_valid_after(now + VALID_AFTER_NOW)
        .add_extension(
            x509.UnrecognizedExtension(LIBP2P_EXTENSION_OID, signedKey), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(cert, key)


# --- verification ----------------------------------------------------------

def verifyCertificate(certificate: x509.Certificate | bytes, now: datetime) -> PublicKey:
    """
    Check a peer's certificate by the rules of the libp2p TLS spec and return
    the libp2p public key it proves.

    The rules: valid at C{now}; a valid self-signature (issuer equals subject);
    no unique identifiers; no critical extension we do not understand; the
    libp2p extension present, well-formed, and its signature over the
    certificate's SubjectPublicKeyInfo valid under the key it carries.

    Chain length is the caller's business (the TLS layer sees the chain).

    @param now: an aware UTC datetime.
    @raise InvalidCertificate: any rule is broken; the message says which.
    """
    if isinstance(certificate, (bytes, bytearray, memoryview)):
        if len(certificate) > MAX_CERTIFICATE_BYTES:
            raise InvalidCertificate("certificate too large")
        try:
            # cryptography warns about what it will refuse (such as negative
            # serial numbers, which Go refuses already); refuse it now.
            with warnings.catch_warnings():
                warnings.simplefilter("error", CryptographyDeprecationWarning)
                certificate = x509.load_der_x509_certificate(bytes(certificate))
        except Exception as e:  # ValueError, InvalidVersion, the warning above
            raise InvalidCertificate(f"malformed certificate: {e}") from None
    cert = certificate

    try:
        notBefore, notAfter = cert.not_valid_before_utc, cert.not_valid_after_utc
    except ValueError as e:
        raise InvalidCertificate(f"malformed certificate validity: {e}") from None
    if now < notBefore:
        raise InvalidCertificate("certificate is not yet valid")
    if now > notAfter:
        raise InvalidCertificate("certificate has expired")

    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidCertificate("certificate self-signature is invalid") from None

    try:
        spki = rawSubjectPublicKeyInfo(cert.tbs_certificate_bytes)
    except DecodeError as e:
        raise InvalidCertificate(f"malformed certificate: {e}") from None

    signedKey = _libp2pExtension(cert)

    try:
        keyBytes, signature = decodeSignedKey(signedKey)
        publicKey = PublicKey.fromProtobuf(keyBytes)
    except (DecodeError, InvalidKey, ValueError) as e:
        raise InvalidCertificate(f"malformed libp2p extension: {e}") from None
    if not publicKey.verify(signature, SIGNATURE_PREFIX + spki):
        raise InvalidCertificate(
            "libp2p extension signature is invalid (or its key type is unsupported)"
        )
    return publicKey


def _libp2pExtension(cert: x509.Certificate) -> bytes:
    """
    The raw value of the libp2p extension, after refusing critical
    extensions we do not understand.
    """
    try:
        extensions = list(cert.extensions)
    except Exception as e:  # DuplicateExtension, ValueError, ... from parsing
        raise InvalidCertificate(f"malformed certificate extensions: {e}") from None
    found: bytes | None = None
    for ext in extensions:
        if ext.oid == LIBP2P_EXTENSION_OID:
            value = ext.value
            if not isinstance(value, x509.UnrecognizedExtension):
                raise InvalidCertificate("libp2p extension has an unexpected form")
            found = value.value
        elif ext.critical:
            if ext.oid not in _UNDERSTOOD_CRITICAL:
                raise InvalidCertificate(
                    f"certificate has an unknown critical extension {ext.oid.dotted_string}"
                )
            if (
                isinstance(ext.value, x509.KeyUsage)
                and not ext.value.digital_signature
            ):
                raise InvalidCertificate("certificate key may not sign the TLS handshake")
    if found is None:
        raise InvalidCertificate("certificate lacks the libp2p public key extension")
    return found
