"""
Tests for L{beam.p2p.security.tls} and L{beam.p2p.security._tlscert}.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from beam.errors import (
    DecodeError,
    HandshakeFailed,
    InvalidCertificate,
    MessageTooLarge,
    PeerIDMismatch,
    ProtocolError,
    SecurityError,
)
from beam.identity.keys import Identity, PeerID
from beam.p2p.security import _tlscert
from beam.p2p.security._tlscert import (
    LIBP2P_EXTENSION_OID,
    MAX_SIGNED_KEY_BYTES,
    SIGNATURE_PREFIX,
    CertifiedKey,
    decodeSignedKey,
    encodeSignedKey,
    makeCertificate,
    rawSubjectPublicKeyInfo,
    verifyCertificate,
)
from beam.p2p.security.interfaces import ISecureChannel, ISecureTransport, SecureInfo
from beam.p2p.security.tls import PROTOCOL_ID, TLSChannel, TLSTransport
from beam.testing import MemoryTransport, Pump

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
ALICE = Identity.fromSeed(b"\x01" * 32)
BOB = Identity.fromSeed(b"\x02" * 32)
CAROL = Identity.fromSeed(b"\x03" * 32)

# libp2p/specs tls/tls.md, test vectors 1 (ed25519, valid) and 4 (invalid).
SPEC_VECTOR_ED25519 = bytes.fromhex(
    "308201ae30820156a0030201020204499602d2300a06082a8648ce3d040302302031123010"
    "060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130"
    "313133303030305a180f34303936303130313133303030305a302031123010060355040a13"
    "096c69627032702e696f310a300806035504051301313059301306072a8648ce3d02010608"
    "2a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380"
    "b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381"
    "569ea37c307a3078060a2b0601040183a25a0101046a3068042408011220a77f1d92fedb59"
    "dddaea5a1c4abd1ac2fbde7d7b879ed364501809923d7c11b90440d90d2769db992d5e6195"
    "dbb08e706b6651e024fda6cfb8846694a435519941cac215a8207792e42849cccc6cd8136c"
    "6e4bde92a58c5e08cfd4206eb5fe0bf909300a06082a8648ce3d0403020346003043021f50"
    "f6b6c52711a881778718238f650c9fb48943ae6ee6d28427dc6071ae55e702203625f116a7"
    "a454db9c56986c82a25682f7248ea1cb764d322ea983ed36a31b77"
)
SPEC_VECTOR_ED25519_PEER = "12D3KooWM6CgA9iBFZmcYAHA6A2qvbAxqfkmrYiRQuz3XEsk4Ksv"
SPEC_VECTOR_INVALID = bytes.fromhex(
    "308201f73082019da0030201020204499602d2300a06082a8648ce3d040302302031123010"
    "060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130"
    "313133303030305a180f34303936303130313133303030305a302031123010060355040a13"
    "096c69627032702e696f310a300806035504051301313059301306072a8648ce3d02010608"
    "2a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380"
    "b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381"
    "569ea381c23081bf3081bc060a2b0601040183a25a01010481ad3081aa045f0803125b3059"
    "301306072a8648ce3d020106082a8648ce3d03010703420004bf30511f909414ebdd324217"
    "8fd290f093a551cf75c973155de0bb5a96fedf6cb5d52da7563e794b512f66e60c7f55ba8a"
    "3acf3dd72a801980d205e8a1ad29f204473045022100bb6e03577b7cc7a3cd1558df0da2b1"
    "17dfdcc0399bc2504ebe7de6f65cade72802206de96e2a5be9b6202adba24ee0362e490641"
    "ac45c240db71fe955f2c5cf8df6e300a06082a8648ce3d0403020348003045022100e847f2"
    "67f43717358f850355bdcabbefb2cfbf8a3c043b203a14788a092fe8db022027c1d04a2d41"
    "fd6b57a7e8b3989e470325de4406e52e084e34a3fd56eef0d0df"
)


def spkiOf(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def buildCert(
    identity: Identity = ALICE,
    *,
    keyIdentity: Identity | None = None,
    signer: Identity | None = None,
    notBefore: datetime = NOW - timedelta(hours=1),
    notAfter: datetime = NOW + timedelta(days=30),
    extension: bytes | None = None,
    withExtension: bool = True,
    critical: bool = True,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    certSigner: ec.EllipticCurvePrivateKey | None = None,
) -> CertifiedKey:
    """
    A certificate like L{makeCertificate}'s, with every knob a test needs to
    break one rule at a time.

    @param keyIdentity: whose public key the extension claims (default
        C{identity}).
    @param signer: who signs the certificate key in the extension (default
        C{identity}).
    @param extension: a raw extension value replacing the SignedKey.
    @param certSigner: the key that self-signs the certificate (default: the
        certificate's own key).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    claimed = keyIdentity or identity
    value = extension
    if value is None:
        value = encodeSignedKey(
            claimed.publicKey.toProtobuf(),
            (signer or identity).sign(SIGNATURE_PREFIX + spkiOf(key)),
        )
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "1")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
    )
    if withExtension:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(LIBP2P_EXTENSION_OID, value), critical=critical
        )
    for ext, crit in extra:
        builder = builder.add_extension(ext, critical=crit)
    cert = builder.sign(certSigner or key, hashes.SHA256())
    return CertifiedKey(cert, key)


class SignedKeyDERTests(SynchronousTestCase):
    """
    The hand-written DER codec for the C{SignedKey} structure.
    """

    def test_roundTrip(self) -> None:
        """
        Encoding then decoding returns both fields, for short and long-form
        lengths.
        """
        for key, sig in [(b"k", b"s"), (b"k" * 200, b"s" * 64), (b"", b""), (b"k" * 4000, b"s")]:
            self.assertEqual(decodeSignedKey(encodeSignedKey(key, sig)), (key, sig))

    def test_knownEncoding(self) -> None:
        """
        The encoding is plain DER: a SEQUENCE of two OCTET STRINGs, with the
        long length form from 128 bytes on.
        """
        self.assertEqual(encodeSignedKey(b"ab", b"c"), bytes.fromhex("300704026162040163"))
        long = encodeSignedKey(b"\x00" * 200, b"")
        self.assertEqual(long[:7], bytes.fromhex("3081cd0481c800"))

    def test_malformed(self) -> None:
        """
        Truncation, trailing bytes, indefinite or non-minimal lengths, wrong
        tags and extra fields are all L{DecodeError}s.
        """
        good = encodeSignedKey(b"key", b"sig")
        cases = {
            "empty": b"",
            "truncated": good[:-1],
            "trailing": good + b"\x00",
            "indefinite": b"\x30\x80" + good[2:] + b"\x00\x00",
            "non-minimal": b"\x30\x81" + good[1:],
            "leading zero length": b"\x30\x82\x00" + good[1:],
            "not a sequence": b"\x31" + good[1:],
            "bit string": bytes.fromhex("300a") + b"\x03\x03key" + b"\x04\x03sig",
            "one field": bytes.fromhex("3005") + b"\x04\x03key",
            "three fields": bytes.fromhex("3010") + b"\x04\x03key\x04\x03sig\x04\x03xyz",
            "length overruns": bytes.fromhex("300a") + b"\x04\x09key\x04\x03sig",
            "huge length": b"\x30\x84\x7f\xff\xff\xff" + good[2:],
            "too many length octets": b"\x30\x85\x00\x00\x00\x00\x0a" + good[2:],
            "multibyte tag": b"\x3f\x01\x0a" + good[2:],
        }
        for name, data in cases.items():
            with self.subTest(name):
                self.assertRaises(DecodeError, decodeSignedKey, data)

    def test_oversizeRefusedFirst(self) -> None:
        """
        Input above L{MAX_SIGNED_KEY_BYTES} is refused as too large, even if
        it is well-formed.
        """
        data = encodeSignedKey(b"k" * MAX_SIGNED_KEY_BYTES, b"")
        self.assertRaises(MessageTooLarge, decodeSignedKey, data)

    @given(st.binary(max_size=300))
    @settings(deadline=None, max_examples=300)
    def test_randomBytes(self, data: bytes) -> None:
        """
        Random bytes either parse or raise a L{ProtocolError}, nothing else.
        """
        try:
            key, sig = decodeSignedKey(data)
        except ProtocolError:
            return
        self.assertEqual(encodeSignedKey(key, sig), data)

    @given(st.binary(max_size=200), st.binary(max_size=200), st.data())
    @settings(deadline=None, max_examples=300)
    def test_mutatedEncodings(self, key: bytes, sig: bytes, data: st.DataObject) -> None:
        """
        A valid encoding with a byte changed, removed or inserted either
        still decodes to something DER (re-encoding gives the same bytes) or
        raises a L{ProtocolError}.
        """
        enc = bytearray(encodeSignedKey(key, sig))
        pos = data.draw(st.integers(0, len(enc) - 1))
        op = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        byte = data.draw(st.integers(0, 255))
        if op == "flip":
            enc[pos] ^= byte or 1
        elif op == "drop":
            del enc[pos]
        else:
            enc.insert(pos, byte)
        try:
            k, s = decodeSignedKey(bytes(enc))
        except ProtocolError:
            return
        self.assertEqual(encodeSignedKey(k, s), bytes(enc))


class CertificateTests(SynchronousTestCase):
    """
    Generating and verifying libp2p certificates.
    """

    def test_roundTrip(self) -> None:
        """
        A certificate from L{makeCertificate} verifies (as an object and as
        DER) to the identity's public key; the libp2p extension is its only,
        critical, extension.
        """
        ck = makeCertificate(ALICE, NOW)
        self.assertEqual(verifyCertificate(ck.certificate, NOW), ALICE.publicKey)
        der = ck.certificate.public_bytes(serialization.Encoding.DER)
        self.assertEqual(verifyCertificate(der, NOW).peerID(), ALICE.peerID)
        exts = list(ck.certificate.extensions)
        self.assertEqual([(e.oid, e.critical) for e in exts], [(LIBP2P_EXTENSION_OID, True)])
        self.assertEqual(ck.certificate.issuer, ck.certificate.subject)
        self.assertIsInstance(ck.privateKey.curve, ec.SECP256R1)

    def test_validityWindow(self) -> None:
        """
        The certificate is valid from an hour before C{now} (clock skew)
        and for a long time after; it is rejected outside that window.
        """
        ck = makeCertificate(ALICE, NOW)
        verifyCertificate(ck.certificate, NOW - timedelta(minutes=59))
        verifyCertificate(ck.certificate, NOW + timedelta(days=3650))
        self.assertRaises(
            InvalidCertificate, verifyCertificate, ck.certificate, NOW - timedelta(hours=2)
        )

    def test_freshKeyEachTime(self) -> None:
        """
        Each certificate has its own key: the certificate key is not derived
        from the identity.
        """
        a, b = makeCertificate(ALICE, NOW), makeCertificate(ALICE, NOW)
        self.assertNotEqual(spkiOf(a.privateKey), spkiOf(b.privateKey))

    def test_specVectorEd25519(self) -> None:
        """
        The spec's ed25519 test vector verifies to the spec's peer ID.
        """
        key = verifyCertificate(SPEC_VECTOR_ED25519, NOW)
        self.assertEqual(str(PeerID.fromPublicKey(key)), SPEC_VECTOR_ED25519_PEER)

    def test_specVectorInvalid(self) -> None:
        """
        The spec's invalid test vector is rejected.
        """
        self.assertRaises(InvalidCertificate, verifyCertificate, SPEC_VECTOR_INVALID, NOW)

    def test_forgedSignature(self) -> None:
        """
        A certificate claiming Alice's key but signed by Bob's is rejected.
        """
        ck = buildCert(ALICE, signer=BOB)
        e = self.assertRaises(InvalidCertificate, verifyCertificate, ck.certificate, NOW)
        self.assertIn("signature", str(e))

    def test_wrongKeyInExtension(self) -> None:
        """
        A certificate whose extension carries Bob's key over Alice's
        signature is rejected.
        """
        ck = buildCert(ALICE, keyIdentity=BOB)
        self.assertRaises(InvalidCertificate, verifyCertificate, ck.certificate, NOW)

    def test_signatureOverAnotherCertificateKey(self) -> None:
        """
        A genuine SignedKey lifted from one certificate into another (with a
        different certificate key) is rejected.
        """
        stolen = list(makeCertificate(ALICE, NOW).certificate.extensions)[0].value.value
        ck = buildCert(ALICE, extension=stolen)
        self.assertRaises(InvalidCertificate, verifyCertificate, ck.certificate, NOW)

    def test_expired(self) -> None:
        """
        A certificate past its NotAfter is rejected, at the injected time.
        """
        ck = buildCert(notBefore=NOW - timedelta(days=2), notAfter=NOW - timedelta(days=1))
        verifyCertificate(ck.certificate, NOW - timedelta(days=1, seconds=1))
        e = self.assertRaises(InvalidCertificate, verifyCertificate, ck.certificate, NOW)
        self.assertIn("expired", str(e))

    def test_notYetValid(self) -> None:
        """
        A certificate before its NotBefore is rejected.
        """
        ck = buildCert(notBefore=NOW + timedelta(days=1), notAfter=NOW + timedelta(days=2))
        e = self.assertRaises(InvalidCertificate, verifyCertificate, ck.certificate, NOW)
        self.assertIn("not yet valid", str(e))

    def test_missingExtension(self) -> None:
        """
        A certificate without the libp2p extension is rejected.
        """
        ck = buildCert(withExtension=False)
        e = self.assertRaises(InvalidCertificate, verifyCertificate, ck.certificate, NOW)
        self.assertIn("lacks", str(e))

    def test_nonCriticalExtensionAccepted(self) -> None:
        """
        The libp2p extension may be non-critical, and unknown non-critical
        extensions are ignored.
        """
        unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), b"\x05\x00")
        ck = buildCert(critical=False, extra=((unknown, False),))
        self.assertEqual(verifyCertificate(ck.certificate, NOW), ALICE.publicKey)

    def test_unknownCriticalExtension(self) -> None:
        """
        A critical extension we do not understand is rejected.
        """
        unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4.5"), b"\x05\x00")
        ck = buildCert(extra=((unknown, True),))
        e = self.assertRaises(InvalidCertificate, verifyCertificate, ck.certificate, NOW)
        self.assertIn("1.2.3.4.5", str(e))

    def test_understoodCriticalExtensions(self) -> None:
        """
        Critical basic constraints are understood; a critical key usage that
        forbids signatures is not acceptable.
        """
        bc = x509.BasicConstraints(ca=False, path_length=None)
        verifyCertificate(buildCert(extra=((bc, True),)).certificate, NOW)
        ku = x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=True,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False,
        )
        self.assertRaises(
            InvalidCertificate, verifyCertificate, buildCert(extra=((ku, True),)).certificate, NOW
        )

    def test_badSelfSignature(self) -> None:
        """
        A certificate not signed by its own key is rejected.
        """
        ck = buildCert(certSigner=ec.generate_private_key(ec.SECP256R1()))
        e = self.assertRaises(InvalidCertificate, verifyCertificate, ck.certificate, NOW)
        self.assertIn("self-signature", str(e))

    def test_malformedExtension(self) -> None:
        """
        A libp2p extension that is not a SignedKey, or whose key is not a
        libp2p key, is rejected.
        """
        for value in [b"\x04\x00", encodeSignedKey(b"\xff\xff", b"sig")]:
            ck = buildCert(extension=value)
            self.assertRaises(InvalidCertificate, verifyCertificate, ck.certificate, NOW)

    def test_garbageDER(self) -> None:
        """
        Bytes that are not a certificate, or too many of them, are rejected.
        """
        self.assertRaises(InvalidCertificate, verifyCertificate, b"\x30\x03\x02\x01\x01", NOW)
        self.assertRaises(
            InvalidCertificate, verifyCertificate, b"\x30" * (_tlscert.MAX_CERTIFICATE_BYTES + 1), NOW
        )

    def test_uniqueIdentifiersRefused(self) -> None:
        """
        The SPKI is cut out of the TBSCertificate verbatim, and a
        TBSCertificate carrying a subjectUniqueID is refused.
        """
        ck = makeCertificate(ALICE, NOW)
        tbs = ck.certificate.tbs_certificate_bytes
        self.assertEqual(rawSubjectPublicKeyInfo(tbs), spkiOf(ck.privateKey))
        _, start, end = _tlscert._readTLV(tbs, 0, len(tbs))
        body = tbs[start:end]
        # Insert subjectUniqueID [2] right after the SPKI, before extensions.
        spki = spkiOf(ck.privateKey)
        cut = body.index(spki) + len(spki)
        withUid = _tlscert._encodeTLV(0x30, body[:cut] + b"\x82\x02\x00\x01" + body[cut:])
        self.assertRaises(DecodeError, rawSubjectPublicKeyInfo, withUid)

    @given(st.binary(min_size=0, max_size=200), st.booleans())
    @settings(deadline=None, max_examples=150)
    def test_randomExtensionValue(self, value: bytes, critical: bool) -> None:
        """
        Any extension value other than a correct SignedKey raises
        L{InvalidCertificate} and nothing else.
        """
        ck = buildCert(extension=value, critical=critical)
        self.assertRaises(InvalidCertificate, verifyCertificate, ck.certificate, NOW)

    @given(st.data())
    @settings(deadline=None, max_examples=200)
    def test_mutatedCertificate(self, data: st.DataObject) -> None:
        """
        A valid certificate's DER with bytes flipped either still verifies
        to the same key (the change was immaterial) or raises only
        L{InvalidCertificate}.
        """
        der = bytearray(_VALID_DER)
        for _ in range(data.draw(st.integers(1, 3))):
            pos = data.draw(st.integers(0, len(der) - 1))
            der[pos] ^= data.draw(st.integers(1, 255))
        try:
            key = verifyCertificate(bytes(der), NOW)
        except InvalidCertificate:
            return
        self.assertEqual(key, ALICE.publicKey)

    @given(st.binary(max_size=600))
    @settings(deadline=None, max_examples=200)
    def test_randomCertificateBytes(self, data: bytes) -> None:
        """
        Random bytes given as a certificate raise only L{InvalidCertificate}.
        """
        self.assertRaises(InvalidCertificate, verifyCertificate, data, NOW)


_VALID_DER = makeCertificate(ALICE, NOW).certificate.public_bytes(serialization.Encoding.DER)


# --- the channel -------------------------------------------------------------

def nowClock() -> Clock:
    clock = Clock()
    clock.advance(NOW.timestamp())
    return clock


class Upper(Protocol):
    """
    Records what the secure channel delivers.
    """

    def __init__(self, info: SecureInfo, greeting: bytes = b"") -> None:
        self.info = info
        self.greeting = greeting
        self.received = bytearray()
        self.lost: Failure | None = None
        self.chunks = 0

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.chunks += 1

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = reason


class Pair:
    """
    A client and a server channel connected by a L{Pump}.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        client: TLSTransport,
        server: TLSTransport,
        expectedPeer: PeerID | None = None,
        clientGreeting: bytes = b"",
        serverGreeting: bytes = b"",
        chunk: int | None = None,
    ) -> None:
        self.uppers: dict[str, Upper] = {}

        def factory(side: str, greeting: bytes) -> Any:
            def make(info: SecureInfo) -> Upper:
                self.uppers[side] = Upper(info, greeting)
                return self.uppers[side]
            return make

        self.client = client.wrap(True, expectedPeer, factory("client", clientGreeting))
        self.server = server.wrap(False, None, factory("server", serverGreeting))
        self.clientResult: list[Any] = []
        self.serverResult: list[Any] = []
        self.client.handshakeDone.addBoth(self.clientResult.append)
        self.server.handshakeDone.addBoth(self.serverResult.append)
        self.pump = Pump(self.client, self.server)
        self.server.makeConnection(self.pump.serverTransport)
        self.client.makeConnection(self.pump.clientTransport)
        self.pump.flush(chunk=chunk)


def transports(
    clientMuxers: tuple[str, ...] = (), serverMuxers: tuple[str, ...] = ()
) -> tuple[TLSTransport, TLSTransport]:
    return (
        TLSTransport(ALICE, clientMuxers, nowClock()),
        TLSTransport(BOB, serverMuxers, nowClock()),
    )


class ChannelTests(SynchronousTestCase):
    """
    L{TLSChannel} fulfils L{ISecureChannel} over an in-memory connection.
    """

    def test_interfaces(self) -> None:
        """
        L{TLSTransport} provides L{ISecureTransport} under C{/tls/1.0.0} and
        its channels provide L{ISecureChannel}.
        """
        t = TLSTransport(ALICE, clock=nowClock())
        self.assertTrue(ISecureTransport.providedBy(t))
        self.assertEqual(t.protocolId, "/tls/1.0.0")
        channel = t.wrap(True, None, Upper)
        self.assertIsInstance(channel, TLSChannel)
        self.assertTrue(ISecureChannel.providedBy(channel))

    def test_handshakeBothRoles(self) -> None:
        """
        Both sides learn the other's verified peer ID and key; the upper
        protocols get transports carrying them.
        """
        p = Pair(self, *transports(), expectedPeer=BOB.peerID)
        [cinfo], [sinfo] = p.clientResult, p.serverResult
        self.assertEqual(cinfo, SecureInfo(BOB.peerID, BOB.publicKey, PROTOCOL_ID, None))
        self.assertEqual(sinfo, SecureInfo(ALICE.peerID, ALICE.publicKey, PROTOCOL_ID, None))
        self.assertEqual(p.uppers["client"].info, cinfo)
        self.assertEqual(p.uppers["client"].transport.remotePeer, BOB.peerID)
        self.assertEqual(p.uppers["server"].transport.remotePublicKey, ALICE.publicKey)
        self.assertEqual(p.uppers["server"].transport.getPeer(), p.pump.serverTransport.getPeer())
        self.assertEqual(p.uppers["client"].transport.negotiatedProtocol, b"libp2p")

    def test_tls13Only(self) -> None:
        """
        The connection runs TLS 1.3, and a client limited to TLS 1.2 is
        refused.
        """
        p = Pair(self, *transports())
        self.assertEqual(p.client._tls.getHandle().get_protocol_version_name(), "TLSv1.3")

        class OldClient(TLSTransport):
            def _makeContext(self, isClient: bool) -> SSL.Context:
                ctx = super()._makeContext(isClient)
                ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
                ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
                return ctx

        p = Pair(self, OldClient(ALICE, clock=nowClock()), transports()[1])
        self.assertIsInstance(p.serverResult[0].value, HandshakeFailed)
        self.assertIsInstance(p.clientResult[0].value, HandshakeFailed)
        self.assertEqual(p.uppers, {})

    def test_dataBothWays(self) -> None:
        """
        Large writes in both directions arrive intact.
        """
        p = Pair(self, *transports())
        up = b"".join(bytes([i % 251]) * 1000 for i in range(3000))
        down = bytes(range(256)) * 5000 + b"tail"
        p.uppers["client"].transport.write(up)
        p.uppers["server"].transport.writeSequence([down[:7], down[7:]])
        p.pump.flush()
        self.assertEqual(bytes(p.uppers["server"].received), up)
        self.assertEqual(bytes(p.uppers["client"].received), down)

    def test_recordsOfOneReadDeliveredTogether(self) -> None:
        """
        The plaintext of all the TLS records that one read from the lower
        transport completes reaches the upper protocol in one
        C{dataReceived}, in order; records completed by later reads come in
        later calls.
        """
        p = Pair(self, *transports())
        data = bytes(range(256)) * 400  # 102400 bytes: seven 16 KiB records
        p.uppers["client"].transport.write(data)
        wire = p.pump.clientTransport.take()
        server = p.uppers["server"]
        before = server.chunks
        p.server.dataReceived(wire)
        self.assertEqual((server.chunks - before, bytes(server.received)), (1, data))
        p.uppers["client"].transport.write(data)
        wire = p.pump.clientTransport.take()
        p.server.dataReceived(wire[:50000])
        p.server.dataReceived(wire[50000:])
        self.assertEqual((server.chunks - before, bytes(server.received)), (3, data * 2))

    def test_chunkedDelivery(self) -> None:
        """
        The handshake and the data survive delivery a few bytes at a time,
        and many small writes arrive in order.
        """
        p = Pair(self, *transports(), chunk=7)
        self.assertEqual(len(p.clientResult), 1)
        self.assertEqual(len(p.serverResult), 1)
        for i in range(200):
            p.uppers["client"].transport.write(b"%d," % i)
        p.uppers["server"].transport.write(b"z" * 100000)
        p.pump.flush(chunk=13)
        self.assertEqual(bytes(p.uppers["server"].received), b"".join(b"%d," % i for i in range(200)))
        self.assertEqual(bytes(p.uppers["client"].received), b"z" * 100000)

    def test_earlyBytesDelivered(self) -> None:
        """
        Data the client sends as soon as its handshake completes, which
        reaches the server together with the client's Finished, is delivered
        to the server's upper protocol; likewise the server's first words.
        """
        p = Pair(self, *transports(), clientGreeting=b"hello", serverGreeting=b"welcome")
        self.assertEqual(bytes(p.uppers["server"].received), b"hello")
        self.assertEqual(bytes(p.uppers["client"].received), b"welcome")

    def test_peerIDMismatch(self) -> None:
        """
        Dialling Carol but reaching Bob fails the client with
        L{PeerIDMismatch}, aborts the connection and builds no upper
        protocol on the client.
        """
        p = Pair(self, *transports(), expectedPeer=CAROL.peerID)
        self.assertIsInstance(p.clientResult[0].value, PeerIDMismatch)
        self.assertIn(str(BOB.peerID), str(p.clientResult[0].value))
        self.assertNotIn("client", p.uppers)
        self.assertTrue(p.pump.clientTransport.aborted)

    def test_garbageHandshake(self) -> None:
        """
        A server fed non-TLS bytes fails with L{HandshakeFailed}, aborts,
        never builds the upper protocol and raises nothing.
        """
        server = transports()[1].wrap(False, None, Upper)
        results: list[Any] = []
        server.handshakeDone.addBoth(results.append)
        t = MemoryTransport()
        server.makeConnection(t)
        server.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIsInstance(results[0].value, HandshakeFailed)
        self.assertTrue(t.aborted)
        server.dataReceived(b"more garbage after the abort")
        server.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(results), 1)

    def test_lostDuringHandshake(self) -> None:
        """
        Losing the connection mid-handshake fails C{handshakeDone}.
        """
        client = transports()[0].wrap(True, None, Upper)
        results: list[Any] = []
        client.handshakeDone.addBoth(results.append)
        t = MemoryTransport()
        client.makeConnection(t)
        self.assertTrue(t.buffer.startswith(b"\x16\x03"), "ClientHello written at once")
        self.assertEqual(results, [])
        client.connectionLost(Failure(ConnectionLost()))
        self.assertIsInstance(results[0].value, HandshakeFailed)

    def test_connectionLossPropagates(self) -> None:
        """
        Losing the lower connection after the handshake calls the upper
        protocol's C{connectionLost}.
        """
        p = Pair(self, *transports())
        p.pump.serverTransport.abortConnection()
        p.pump.flush()
        self.assertIsInstance(p.uppers["client"].lost, Failure)
        self.assertIsInstance(p.uppers["server"].lost, Failure)

    def test_corruptRecordAfterHandshake(self) -> None:
        """
        A tampered record after the handshake is not delivered; the
        connection is aborted and the upper protocol told why.
        """
        p = Pair(self, *transports())
        p.uppers["client"].transport.write(b"genuine")
        record = bytearray(p.pump.clientTransport.take())
        record[-1] ^= 1
        p.server.dataReceived(bytes(record))
        self.assertEqual(p.uppers["server"].received, b"")
        self.assertTrue(p.pump.serverTransport.aborted)
        p.pump.flush()
        self.assertIsInstance(p.uppers["server"].lost, Failure)
        self.assertIsInstance(p.uppers["client"].lost, Failure)

    def test_cleanClose(self) -> None:
        """
        C{loseConnection} on the upper transport sends close_notify; both
        upper protocols see a clean close after pending data.
        """
        p = Pair(self, *transports())
        p.uppers["client"].transport.write(b"last words")
        p.uppers["client"].transport.loseConnection()
        p.pump.flush()
        self.assertEqual(bytes(p.uppers["server"].received), b"last words")
        p.uppers["client"].lost.trap(ConnectionDone)
        p.uppers["server"].lost.trap(ConnectionDone)

    def test_closeDoesNotWaitForPeer(self) -> None:
        """
        C{loseConnection} writes the last data and close_notify and closes
        the lower transport at once, without waiting for the peer's
        close_notify (js-libp2p never sends one back).  The peer reads the
        data and a clean end; the closing side's upper protocol sees a
        clean close, not the unanswered close_notify as a lost connection.
        """
        p = Pair(self, *transports())
        client = p.uppers["client"]
        client.transport.write(b"last words")
        client.transport.loseConnection()
        self.assertTrue(p.pump.clientTransport.disconnecting)
        self.assertFalse(p.pump.clientTransport.aborted)
        # Only the client's bytes travel; nothing comes back.
        p.server.dataReceived(p.pump.clientTransport.take())
        self.assertEqual(bytes(p.uppers["server"].received), b"last words")
        self.assertTrue(p.pump.serverTransport.disconnecting, "the server closes on close_notify")
        p.client.connectionLost(Failure(ConnectionDone()))
        p.server.connectionLost(Failure(ConnectionDone()))
        client.lost.trap(ConnectionDone)
        p.uppers["server"].lost.trap(ConnectionDone)

    def test_closeWaitsForProducer(self) -> None:
        """
        While a producer is registered, Twisted postpones the close_notify
        and so the lower close; unregistering the producer sends it and
        closes the lower transport at once.
        """
        p = Pair(self, *transports())

        class Producer:
            def pauseProducing(self) -> None:
                pass

            def resumeProducing(self) -> None:
                pass

            def stopProducing(self) -> None:
                pass

        st_ = p.uppers["client"].transport
        st_.registerProducer(Producer(), True)
        st_.loseConnection()
        self.assertFalse(p.pump.clientTransport.disconnecting)
        st_.unregisterProducer()
        self.assertTrue(p.pump.clientTransport.disconnecting)
        p.pump.flush()
        p.uppers["client"].lost.trap(ConnectionDone)
        p.uppers["server"].lost.trap(ConnectionDone)

    def test_peerCloseAnswered(self) -> None:
        """
        A close_notify from the peer is answered with ours and the lower
        transport closed, so a peer that does wait for the answer is not
        kept waiting.
        """
        p = Pair(self, *transports())
        p.uppers["server"].transport.loseConnection()
        p.client.dataReceived(p.pump.serverTransport.take())
        self.assertTrue(p.pump.clientTransport.disconnecting)
        self.assertFalse(p.pump.clientTransport.aborted)
        self.assertNotEqual(p.pump.clientTransport.buffer, b"", "close_notify answered")

    def test_flowControl(self) -> None:
        """
        A producer registered on the secure transport is paused by the lower
        transport's back-pressure, and pausing the secure transport pauses
        reading from the lower one.
        """
        p = Pair(self, *transports())
        p.pump.clientTransport.highWater = 1000
        events: list[str] = []

        class Producer:
            def pauseProducing(self) -> None:
                events.append("pause")

            def resumeProducing(self) -> None:
                events.append("resume")

            def stopProducing(self) -> None:
                events.append("stop")

        st_ = p.uppers["client"].transport
        st_.registerProducer(Producer(), True)
        st_.write(b"x" * 5000)
        self.assertEqual(events, ["pause"])
        p.pump.flush()
        self.assertEqual(events, ["pause", "resume"])
        st_.unregisterProducer()
        st_.pauseProducing()
        self.assertTrue(p.pump.clientTransport.paused)
        st_.resumeProducing()
        self.assertFalse(p.pump.clientTransport.paused)

    def test_upperProtocolErrorContained(self) -> None:
        """
        An exception from the upper protocol's C{dataReceived} does not
        escape the channel; the connection is aborted and the error logged.
        """
        p = Pair(self, *transports())

        def boom(data: bytes) -> None:
            raise RuntimeError("upper bug")

        p.uppers["server"].dataReceived = boom  # type: ignore[method-assign]
        p.server._plain.dataReceived = boom  # type: ignore[method-assign]
        p.uppers["client"].transport.write(b"trigger")
        p.pump.flush()
        self.assertTrue(p.pump.serverTransport.aborted)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class EarlyMuxerTests(SynchronousTestCase):
    """
    Muxer selection through ALPN (inlined muxer negotiation).
    """

    def test_clientPreferenceWins(self) -> None:
        """
        The server picks the first muxer in the client's list that it
        supports, and both sides report it.
        """
        p = Pair(self, *transports(("/yamux/1.0.0", "/mplex/6.7.0"), ("/mplex/6.7.0", "/yamux/1.0.0")))
        self.assertEqual(p.clientResult[0].earlyMuxer, "/yamux/1.0.0")
        self.assertEqual(p.serverResult[0].earlyMuxer, "/yamux/1.0.0")

    def test_fallBackToLibp2p(self) -> None:
        """
        Without a common muxer ALPN settles on C{libp2p} and no early muxer.
        """
        p = Pair(self, *transports(("/yamux/1.0.0",), ("/mplex/6.7.0",)))
        self.assertIsNone(p.clientResult[0].earlyMuxer)
        self.assertIsNone(p.serverResult[0].earlyMuxer)
        self.assertEqual(p.uppers["server"].transport.negotiatedProtocol, b"libp2p")

    def test_clientOfferOrder(self) -> None:
        """
        The client offers its muxers in order, then C{libp2p} last.
        """
        t = TLSTransport(ALICE, ("/yamux/1.0.0", "/mplex/6.7.0"), nowClock())
        self.assertEqual(t._alpn, [b"/yamux/1.0.0", b"/mplex/6.7.0", b"libp2p"])
        self.assertRaises(ValueError, TLSTransport, ALICE, ("libp2p",), nowClock())

    def test_noCommonProtocol(self) -> None:
        """
        A client offering nothing the server speaks is refused during the
        handshake.
        """

        class Foreign(TLSTransport):
            def _makeContext(self, isClient: bool) -> SSL.Context:
                ctx = super()._makeContext(isClient)
                ctx.set_alpn_protos([b"h2"])
                return ctx

        p = Pair(self, Foreign(ALICE, clock=nowClock()), transports()[1])
        self.assertIsInstance(p.serverResult[0].value, HandshakeFailed)
        self.assertIsInstance(p.clientResult[0].value, HandshakeFailed)
        self.assertEqual(p.uppers, {})


class BadPeerTests(SynchronousTestCase):
    """
    Peers whose certificates break the rules are refused during the
    handshake, by both roles.
    """

    def test_clientRejectsExpiredServerCertificate(self) -> None:
        """
        A client whose clock is past the server certificate's validity
        refuses the server.
        """
        server = TLSTransport(
            BOB, clock=nowClock(),
            _certifiedKey=buildCert(BOB, notAfter=NOW + timedelta(days=1)),
        )
        late = Clock()
        late.advance((NOW + timedelta(days=2)).timestamp())
        client = TLSTransport(ALICE, clock=late)
        p = Pair(self, client, server)
        e = p.clientResult[0].value
        self.assertIsInstance(e, InvalidCertificate)
        self.assertIn("expired", str(e))
        self.assertNotIn("client", p.uppers)

    def test_serverRejectsClientWithoutExtension(self) -> None:
        """
        A server refuses a client certificate lacking the libp2p extension;
        data the client sent after its handshake never reaches the server's
        upper layer, and the client's upper layer sees the connection close.
        """
        client = TLSTransport(ALICE, clock=nowClock(), _certifiedKey=buildCert(withExtension=False))
        p = Pair(self, client, transports()[1], clientGreeting=b"secret")
        self.assertIsInstance(p.serverResult[0].value, InvalidCertificate)
        self.assertNotIn("server", p.uppers)
        self.assertTrue(p.pump.serverTransport.aborted)
        self.assertIsNotNone(p.uppers["client"].lost)

    def test_serverRejectsForgedClient(self) -> None:
        """
        A client claiming Carol's key without her signature is refused.
        """
        client = TLSTransport(
            ALICE, clock=nowClock(), _certifiedKey=buildCert(CAROL, signer=ALICE)
        )
        p = Pair(self, client, transports()[1])
        self.assertIsInstance(p.serverResult[0].value, InvalidCertificate)

    def test_moreThanOneCertificate(self) -> None:
        """
        A peer sending a chain of two certificates is refused, in either
        role.
        """

        class Chained(TLSTransport):
            def _makeContext(self, isClient: bool) -> SSL.Context:
                ctx = super()._makeContext(isClient)
                ctx.add_extra_chain_cert(makeCertificate(CAROL, NOW).certificate)
                return ctx

        p = Pair(self, Chained(ALICE, clock=nowClock()), transports()[1])
        self.assertIn("more than one", str(p.serverResult[0].value))
        p = Pair(self, transports()[0], Chained(BOB, clock=nowClock()))
        self.assertIn("more than one", str(p.clientResult[0].value))
        self.assertNotIn("client", p.uppers)


_SERVER = TLSTransport(BOB, clock=nowClock())
_CLIENT_HELLO: bytes = b""


def _clientHello() -> bytes:
    global _CLIENT_HELLO
    if not _CLIENT_HELLO:
        t = MemoryTransport()
        TLSTransport(ALICE, clock=nowClock()).wrap(True, None, Upper).makeConnection(t)
        _CLIENT_HELLO = t.take()
    return _CLIENT_HELLO


class FuzzChannelTests(SynchronousTestCase):
    """
    Hostile bytes at a TLS server channel.
    """

    def _feed(self, chunks: list[bytes]) -> None:
        upperMade: list[SecureInfo] = []
        server = _SERVER.wrap(False, None, lambda info: upperMade.append(info) or Protocol())
        results: list[Any] = []
        server.handshakeDone.addBoth(results.append)
        t = MemoryTransport()
        server.makeConnection(t)
        for chunk in chunks:
            server.dataReceived(chunk)
        server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(results), 1)
        self.assertIsInstance(results[0], Failure)
        self.assertIsInstance(results[0].value, SecurityError)
        self.assertEqual(upperMade, [])

    @given(st.lists(st.binary(max_size=400), max_size=5))
    @settings(deadline=None, max_examples=200)
    def test_randomBytes(self, chunks: list[bytes]) -> None:
        """
        Random bytes never raise out of C{dataReceived}, never produce an
        upper protocol, and C{handshakeDone} fails with a L{SecurityError}.
        """
        self._feed(chunks)

    @given(st.data())
    @settings(deadline=None, max_examples=200)
    def test_mutatedClientHello(self, data: st.DataObject) -> None:
        """
        A real ClientHello with bytes flipped or cut (then the connection
        lost) behaves the same way.
        """
        hello = bytearray(_clientHello())
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(hello) - 1))
            hello[pos] ^= data.draw(st.integers(1, 255))
        cut = data.draw(st.integers(0, len(hello)))
        self._feed([bytes(hello[:cut]), bytes(hello[cut:])])

