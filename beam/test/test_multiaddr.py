"""
Tests for L{beam.identity.multiaddr}.

Vectors marked "go-multiaddr" are from multiformats/go-multiaddr
C{multiaddr_test.go} (TestStringToBytes, TestBytesToString, TestZone,
TestConstructSucceeds, TestConstructFails, TestRoundTrip, TestDecapsulate,
TestInvalidP2PAddrBytes); protocol codes are from multiformats/multiaddr
C{protocols.csv}.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase

from beam.errors import InvalidMultiaddr
from beam.identity.keys import Identity, PeerID
from beam.identity.multiaddr import MAX_BYTES, PROTOCOLS, Multiaddr
from beam.encoding.varint import encode_uvarint

# go-multiaddr TestStringToBytes / TestBytesToString / TestZone, plus vectors
# derived by hand from protocols.csv (dns4, ip6, p2p, certhash).
VECTORS = [
    ("/ip4/127.0.0.1/udp/1234", "047f000001910204d2"),
    ("/ip4/127.0.0.1/tcp/4321", "047f0000010610e1"),
    ("/ip4/127.0.0.1/udp/1234/ip4/127.0.0.1/tcp/4321", "047f000001910204d2047f0000010610e1"),
    ("/onion/aaimaq4ygg2iegci:80", "bc030010c0439831b48218480050"),
    (
        "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:1234",
        "bd03adadec040be047f9658668b11a504f3155001f231a37f54c4476c07fb4cc139ed7e30304d2",
    ),
    (
        "/garlic32/566niximlxdzpanmn4qouucvua3k7neniwss47li5r6ugoertzuq",
        "bf0320efbcd45d0c5dc79781ac6f20ea5055a036afb48d45a52e7d68ec7d4338919e69",
    ),
    ("/ip6zone/eth0/ip6/::1", "2a04657468302900000000000000000000000000000001"),
    # 0x36 dns4, length 11, "example.com", 0x06 tcp, 443
    ("/dns4/example.com/tcp/443", "360b6578616d706c652e636f6d0601bb"),
    ("/ip6/::1/tcp/4001", "2900000000000000000000000000000001060fa1"),
    # 421 = a5 03, then the varint-length-prefixed sha2-256 multihash
    (
        "/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC",
        "a503221220d52ebb89d85b02a284948203a62ff28389c57c9f42beec4ec20db76a68911c0b",
    ),
    # 466 = d2 03; quic-v1 461 = cd 03; webtransport 465 = d1 03
    (
        "/ip4/127.0.0.1/udp/1234/quic-v1/webtransport/certhash/uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g",
        "047f000001910204d2cd03d103d203221220c3ab8ff13720e8ad9047dd39466b3c8974e592c2fa383d4a3960714caef0c4f2",
    ),
    ("/unix/a/b", "900304" + b"/a/b".hex()),
    ("/ip4/1.2.3.4/tcp/80/p2p-circuit", "0401020304060050a202"),
    ("/memory/4", "890608" + "0000000000000004"),
]

# go-multiaddr TestConstructSucceeds (garlic64 omitted for length) and
# TestRoundTrip.
GOOD = [
    "/ip4/1.2.3.4",
    "/ip4/0.0.0.0",
    "/ip4/192.0.2.0/ipcidr/24",
    "/ip6/::1",
    "/ip6/2601:9:4f81:9700:803e:ca65:66e8:c21",
    "/ip6/2601:9:4f81:9700:803e:ca65:66e8:c21/udp/1234/quic",
    "/ip6/2601:9:4f81:9700:803e:ca65:66e8:c21/udp/1234/quic-v1",
    "/ip6/2001:db8::/ipcidr/32",
    "/ip6zone/x/ip6/fe80::1",
    "/ip6zone/x%y/ip6/fe80::1",
    "/ip6zone/x%y/ip6/::",
    "/ip6zone/x/ip6/fe80::1/udp/1234/quic-v1",
    "/onion/timaq4ygg2iegci7:1234",
    "/onion/timaq4ygg2iegci7:80/http",
    "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:80/http",
    "/garlic32/566niximlxdzpanmn4qouucvua3k7neniwss47li5r6ugoertzuq/tcp/8080",
    "/udp/0",
    "/tcp/0",
    "/sctp/0",
    "/udp/65535",
    "/tcp/65535",
    "/ipfs/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC",
    "/ipfs/k2k4r8oqamigqdo6o7hsbfwd45y70oyynp98usk7zmyfrzpqxh1pohl7",
    "/p2p/bafzbeigvf25ytwc3akrijfecaotc74udrhcxzh2cx3we5qqnw5vgrei4bm",
    "/p2p/12D3KooWCryG7Mon9orvQxcS1rYZjotPgpwoJNHHKcLLfE4Hf5mV",
    "/p2p/k51qzi5uqu5dhb6l8spkdx7yxafegfkee5by8h7lmjh2ehc2sgg34z7c15vzqs",
    "/udp/1234/sctp/1234",
    "/udp/1234/udt",
    "/udp/1234/utp",
    "/tcp/1234/http",
    "/tcp/1234/tls/http",
    "/tcp/1234/https",
    "/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC/tcp/1234",
    "/ip4/127.0.0.1/tcp/1234/",
    "/ip4/127.0.0.1/udp/1234/quic-v1/webtransport/certhash/b2uaraocy6yrdblb4sfptaddgimjmmpy",
    "/ip4/127.0.0.1/udp/1234/quic-v1/webtransport/certhash/b2uaraocy6yrdblb4sfptaddgimjmmpy"
    "/certhash/zQmbWTwYGcmdyK9CYfNBcfs9nhZs17a6FQ4Y8oea278xx41",
    "/unix/stdio",
    "/ip4/1.2.3.4/tcp/80/unix/a/b/c/d/e/f",
    "/ip4/127.0.0.1/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC/tcp/1234/unix/stdio",
    "/ip4/127.0.0.1/tcp/9090/http/p2p-webrtc-direct",
    "/ip4/127.0.0.1/tcp/127/tls/ws",
    "/ip4/127.0.0.1/tcp/127/noise",
    "/ip4/127.0.0.1/tcp/127/wss",
    "/ip4/127.0.0.1/tcp/127/webrtc-direct",
    "/ip4/127.0.0.1/tcp/127/webrtc",
    "/ip4/127.0.0.1/tcp/443/tls/sni/example.com/http/http-path/foo",
    "/memory/4",
]

# go-multiaddr TestRoundTrip: text that must print back unchanged.
EXACT_ROUND_TRIP = [
    "/unix/a/b/c/d",
    "/ip6/::ffff:127.0.0.1/tcp/111",
    "/ip4/127.0.0.1/tcp/123/tls",
    "/ip4/127.0.0.1/udp/123/ip6/::",
    "/ip4/127.0.0.1/udp/1234/quic-v1/webtransport/certhash/uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g",
    "/p2p/QmbHVEEepCi7rn7VL7Exxpd2Ci9NNB6ifvqwhsrbRMgQFP",
    "/p2p/QmbHVEEepCi7rn7VL7Exxpd2Ci9NNB6ifvqwhsrbRMgQFP/unix/a/b/c",
    "/http-path/tmp%2Fbar",
    "/dns/example.com/tcp/443/wss",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
]

# go-multiaddr TestConstructFails (a selection), then our own.
BAD = [
    "/ip4",
    "/ip4/::1",
    "/ip4/fdpsofodsajfdoisa",
    "/ip4/::/ipcidr/256",
    "/ip6",
    "/ip6zone",
    "/ip6zone/",
    "/ip6zone//ip6/fe80::1",
    "/udp",
    "/tcp",
    "/udp/65536",
    "/tcp/65536",
    "/quic/65536",
    "/onion/9imaq4ygg2iegci7:80",
    "/onion/aaimaq4ygg2iegci7:80",
    "/onion/timaq4ygg2iegci7:0",
    "/onion/timaq4ygg2iegci7:-1",
    "/onion/timaq4ygg2iegci7",
    "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:0",
    "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyy@:666",
    "/garlic32/566niximlxdzpanmn4qouucvua3k7neniwss47li5r6ugoertzu",
    "/garlic32/566niximlxdzpanmn4qouucvua3k7neniwss47li5r6ugoertzu77",
    "/udp/1234/sctp",
    "/ip4/127.0.0.1/tcp/jfodsajfidosajfoidsa",
    "/ip4/127.0.0.1/quic/1234",
    "/ip4/127.0.0.1/udp/1234/quic-v1/webtransport/certhash",
    "/ip4/127.0.0.1/udp/1234/quic-v1/webtransport/certhash/b2uaraocy6yrdblb4sfptaddgimjmmp",
    "/ip4/127.0.0.1/ipfs",
    "/ip4/127.0.0.1/p2p/tcp",
    "/unix",
    "/ip4/1.2.3.4/tcp/80/unix",
    "/ip4/1.2.3.4/tcp/-1",
    "/ip4/127.0.0.1/tcp/9090/http/p2p-webcrt-direct",
    "/memory/184467440737095516161",
    "/",
    "",
    "/p2p/QmxoHT6iViN5xAjoz1VZ553cL31U9F94ht3QvWR1FrEbZY",
    "/p2p/k2k4r8oqamigqdo6o7hsbfwd45y70oyynp98usk7zmyfrzpqxh1pohl-",
    "/p2p/?unknownmultibase",
    "/p2p/k2jmtxwoe2phm1hbqp0e7nufqf6umvuu2e9qd7ana7h411a0haqj6i2z",
    # ours
    "ip4/1.2.3.4",
    "//ip4/1.2.3.4",
    "/ip4/1.2.3.4//tcp/80",
    "/ip4/01.2.3.4",
    "/ip4/1.2.3.4/tcp/+80",
    "/ip4/1.2.3.4/tcp/ 80",
    "/ip4/1.2.3.4/tcp/1_0",
    "/ip4/1.2.3.4/tcp/\u0661\u0662",
    "/ip6/fe80::1%eth0",
    "/dns4/" + "a" * 254,
    "/dns4/\ud800",
    "/certhash/f12",
    "/foo/bar",
    "/dns/" + "a" * 3000,
]

PEER_TEXT = "12D3KooWCryG7Mon9orvQxcS1rYZjotPgpwoJNHHKcLLfE4Hf5mV"
PEER_CIDS = [
    "k51qzi5uqu5dhb6l8spkdx7yxafegfkee5by8h7lmjh2ehc2sgg34z7c15vzqs",
    "bafzaajaiaejcalj543iwv2d7pkjt7ykvefrkfu7qjfi6sduakhso4lay6abn2d5u",
]


class VectorTests(SynchronousTestCase):
    """
    Text and binary forms agree with the reference implementation.
    """

    def test_textToBytes(self) -> None:
        """
        Each vector's text encodes to exactly its bytes.
        """
        for text, hexBytes in VECTORS:
            self.assertEqual(Multiaddr.fromString(text).toBytes().hex(), hexBytes, text)

    def test_bytesToText(self) -> None:
        """
        Each vector's bytes decode and print as exactly its text.
        """
        for text, hexBytes in VECTORS:
            self.assertEqual(str(Multiaddr.fromBytes(bytes.fromhex(hexBytes))), text)

    def test_zoneBytes(self) -> None:
        """
        The go-multiaddr TestZone byte list: code 42, length, zone, then ip6.
        """
        expected = bytes([0x2A, 4]) + b"eth0" + bytes([0x29]) + bytes(15) + b"\x01"
        self.assertEqual(Multiaddr("/ip6zone/eth0/ip6/::1").toBytes(), expected)

    def test_good(self) -> None:
        """
        Valid addresses parse, and their text and bytes parse back to equal
        addresses.
        """
        for text in GOOD:
            addr = Multiaddr.fromString(text)
            self.assertEqual(Multiaddr.fromString(str(addr)), addr, text)
            self.assertEqual(Multiaddr.fromBytes(addr.toBytes()), addr, text)

    def test_exactRoundTrip(self) -> None:
        """
        Canonical text prints back unchanged.
        """
        for text in EXACT_ROUND_TRIP:
            self.assertEqual(str(Multiaddr(text)), text)

    def test_bad(self) -> None:
        """
        Malformed text raises L{InvalidMultiaddr}, which is a L{ValueError}.
        """
        for text in BAD:
            with self.assertRaises(InvalidMultiaddr, msg=repr(text[:80])):
                Multiaddr.fromString(text)
        self.assertTrue(issubclass(InvalidMultiaddr, ValueError))

    def test_badBytes(self) -> None:
        """
        Malformed binary forms raise L{InvalidMultiaddr}.
        """
        cases = [
            b"",
            bytes.fromhex("047f00"),  # truncated ip4
            bytes.fromhex("07"),  # unknown code
            bytes.fromhex("84007f000001"),  # non-minimal varint code
            # go-multiaddr TestInvalidP2PAddrBytes: multihash length lies
            bytes.fromhex("a503221221c05877cbae039d70a5e600ea02c6f9f2942439285c9e344e26f8d280c850fad6"),
            bytes.fromhex("900304") + b"/a/b" + bytes.fromhex("060050"),  # after unix
            bytes.fromhex("3503") + b"a/b",  # slash in a dns name
            bytes.fromhex("3502") + b"\xff\xfe",  # not UTF-8
            bytes.fromhex("2a00"),  # empty zone
            bytes.fromhex("35ffffffff0f") + b"x",  # length runs past the end
            bytes.fromhex("bc03") + bytes(12),  # onion port 0
            b"\x04" * (MAX_BYTES + 1),
        ]
        for raw in cases:
            with self.assertRaises(InvalidMultiaddr, msg=raw.hex()[:60]):
                Multiaddr.fromBytes(raw)

    def test_ipfsAlias(self) -> None:
        """
        C{/ipfs} is read as C{/p2p} and printed as C{/p2p}.
        """
        a = Multiaddr("/ipfs/QmbHVEEepCi7rn7VL7Exxpd2Ci9NNB6ifvqwhsrbRMgQFP")
        self.assertEqual(str(a), "/p2p/QmbHVEEepCi7rn7VL7Exxpd2Ci9NNB6ifvqwhsrbRMgQFP")

    def test_ip6Canonical(self) -> None:
        """
        IPv6 text prints lowercase and compressed.
        """
        self.assertEqual(str(Multiaddr("/ip6/2001:DB8:0:0:0:0:0:1")), "/ip6/2001:db8::1")

    def test_protocolTable(self) -> None:
        """
        The codes asked for by the spec table are the ones we use.
        """
        codes = {p.name: p.code for p in PROTOCOLS}
        expected = {
            "ip4": 4, "tcp": 6, "udp": 273, "dccp": 33, "ip6": 41, "ip6zone": 42,
            "dns": 53, "dns4": 54, "dns6": 55, "dnsaddr": 56, "sctp": 132,
            "unix": 400, "p2p": 421, "onion3": 445, "garlic64": 446, "garlic32": 447,
            "tls": 448, "sni": 449, "noise": 454, "quic": 460, "quic-v1": 461,
            "webtransport": 465, "certhash": 466, "ws": 477, "wss": 478,
            "p2p-circuit": 290, "http": 480, "webrtc-direct": 280, "webrtc": 281,
            "p2p-webrtc-direct": 276, "memory": 777,
        }
        for name, code in expected.items():
            self.assertEqual(codes[name], code, name)


class ValueTests(SynchronousTestCase):
    """
    Equality, hashing, components and peer IDs.
    """

    def test_equalityByBytes(self) -> None:
        """
        Addresses with the same binary form are equal and hash alike, and a
        trailing slash does not matter.
        """
        a = Multiaddr("/ip4/127.0.0.1/tcp/1234")
        b = Multiaddr(b"\x04\x7f\x00\x00\x01\x06\x04\xd2")
        c = Multiaddr("/ip4/127.0.0.1/tcp/1234/")
        self.assertEqual(a, b)
        self.assertEqual(a, c)
        self.assertEqual(len({a, b, c}), 1)
        self.assertNotEqual(a, Multiaddr("/ip4/127.0.0.1/udp/1234"))
        self.assertNotEqual(a, "/ip4/127.0.0.1/tcp/1234")

    def test_immutable(self) -> None:
        """
        Attributes cannot be set.
        """
        a = Multiaddr("/ip4/1.2.3.4")
        self.assertRaises(AttributeError, setattr, a, "_bytes", b"")

    def test_components(self) -> None:
        """
        Components are (name, value) with L{None} for valueless protocols,
        and a unix path keeps its slashes.
        """
        a = Multiaddr("/ip4/1.2.3.4/tcp/80/tls/unix/var/run/x.sock")
        self.assertEqual(
            a.components(),
            [("ip4", "1.2.3.4"), ("tcp", "80"), ("tls", None), ("unix", "/var/run/x.sock")],
        )
        self.assertEqual(a.protocols(), ["ip4", "tcp", "tls", "unix"])

    def test_valueFor(self) -> None:
        """
        L{Multiaddr.valueFor} gives the first value, C{""} for a valueless
        protocol, L{None} when absent; unknown names are an error.
        """
        a = Multiaddr("/ip4/1.2.3.4/tcp/80/ip4/5.6.7.8/tcp/90/ws")
        self.assertEqual(a.valueFor("ip4"), "1.2.3.4")
        self.assertEqual(a.valueFor("tcp"), "80")
        self.assertEqual(a.valueFor("ws"), "")
        self.assertIsNone(a.valueFor("udp"))
        self.assertRaises(InvalidMultiaddr, a.valueFor, "nope")

    def test_peerIDBothForms(self) -> None:
        """
        A peer ID written in base58 or as a CID (base36 or base32) is the
        same address and the same L{PeerID}, printed in base58.
        """
        base = Multiaddr("/ip4/1.2.3.4/tcp/4001/p2p/" + PEER_TEXT)
        for cid in PEER_CIDS:
            other = Multiaddr("/ip4/1.2.3.4/tcp/4001/p2p/" + cid)
            self.assertEqual(other, base)
            self.assertEqual(str(other), str(base))
        self.assertEqual(base.peerID(), PeerID.fromString(PEER_TEXT))

    def test_peerIDOfIdentity(self) -> None:
        """
        Our own identity's peer ID, in either text form, round-trips.
        """
        peer = Identity.fromSeed(b"\x07" * 32).peerID
        a = Multiaddr("/ip4/10.0.0.1/tcp/1/p2p/" + peer.toCID())
        self.assertEqual(a.peerID(), peer)
        self.assertEqual(str(a), f"/ip4/10.0.0.1/tcp/1/p2p/{peer}")

    def test_withAndWithoutPeerID(self) -> None:
        """
        L{Multiaddr.withPeerID} appends or replaces the trailing peer ID;
        L{Multiaddr.withoutPeerID} removes it.
        """
        peer = PeerID.fromString(PEER_TEXT)
        other = Identity.fromSeed(b"\x01" * 32).peerID
        bare = Multiaddr("/ip4/1.2.3.4/tcp/4001")
        full = bare.withPeerID(peer)
        self.assertEqual(str(full), "/ip4/1.2.3.4/tcp/4001/p2p/" + PEER_TEXT)
        self.assertEqual(full.withoutPeerID(), bare)
        self.assertEqual(bare.withoutPeerID(), bare)
        self.assertEqual(full.withPeerID(other).peerID(), other)
        self.assertEqual(bare.withPeerID(PEER_CIDS[0]), full)
        self.assertIsNone(bare.peerID())
        self.assertRaises(InvalidMultiaddr, bare.withPeerID, "notapeer")

    def test_circuitPeerID(self) -> None:
        """
        Through a relay the destination is the peer after C{/p2p-circuit};
        without one there is no known destination.
        """
        relay = "/ip4/1.2.3.4/tcp/4001/p2p/QmbHVEEepCi7rn7VL7Exxpd2Ci9NNB6ifvqwhsrbRMgQFP/p2p-circuit"
        self.assertIsNone(Multiaddr(relay).peerID())
        self.assertEqual(
            Multiaddr(relay + "/p2p/" + PEER_TEXT).peerID(), PeerID.fromString(PEER_TEXT)
        )


class CompositionTests(SynchronousTestCase):
    """
    Encapsulation and decapsulation.
    """

    def test_encapsulate(self) -> None:
        """
        Encapsulating appends; text is accepted too (go-multiaddr TestEncapsulate).
        """
        a = Multiaddr("/ip4/127.0.0.1/udp/1234")
        self.assertEqual(str(a.encapsulate(Multiaddr("/udp/5678"))), "/ip4/127.0.0.1/udp/1234/udp/5678")
        self.assertEqual(str(a.encapsulate("/quic-v1")), "/ip4/127.0.0.1/udp/1234/quic-v1")

    def test_encapsulateAfterPath(self) -> None:
        """
        Nothing may follow a unix path.
        """
        self.assertRaises(InvalidMultiaddr, Multiaddr("/unix/a").encapsulate, "/tcp/1")

    def test_encapsulateTooLong(self) -> None:
        """
        The result of encapsulation is bounded like a parsed address.
        """
        a = Multiaddr("/dns/" + "a" * 250)
        out = a
        with self.assertRaises(InvalidMultiaddr):
            for _ in range(10):
                out = out.encapsulate(a)

    def test_decapsulate(self) -> None:
        """
        Decapsulating removes the last component of that protocol and what
        follows, or nothing if the protocol is absent (go-multiaddr
        TestDecapsulate, by protocol name).
        """
        cases = [
            ("/ip4/1.2.3.5/udp/1234/quic-v1", "udp", "/ip4/1.2.3.5"),
            ("/ip4/1.2.3.6/udp/1234/quic-v1", "quic-v1", "/ip4/1.2.3.6/udp/1234"),
            ("/ip4/1.2.3.7/tcp/1234", "ws", "/ip4/1.2.3.7/tcp/1234"),
            ("/dnsaddr/wss.com/tcp/4001/ws", "wss", "/dnsaddr/wss.com/tcp/4001/ws"),
            ("/dnsaddr/wss.com/tcp/4001/wss", "wss", "/dnsaddr/wss.com/tcp/4001"),
            ("/ip4/1.2.3.4/tcp/1/ip4/2.3.4.5/tcp/2", "ip4", "/ip4/1.2.3.4/tcp/1"),
            ("/ip4/1.2.3.4/tcp/1/p2p/" + PEER_TEXT, "ipfs", "/ip4/1.2.3.4/tcp/1"),
        ]
        for left, name, expected in cases:
            self.assertEqual(str(Multiaddr(left).decapsulate(name)), expected)

    def test_decapsulateEverything(self) -> None:
        """
        Removing the first component leaves the empty, falsy address.
        """
        empty = Multiaddr("/ip4/1.2.3.4/tcp/1234").decapsulate("ip4")
        self.assertFalse(empty)
        self.assertEqual(empty.toBytes(), b"")
        self.assertEqual(str(empty.encapsulate("/ip4/1.2.3.4")), "/ip4/1.2.3.4")

    def test_decapsulateUnknown(self) -> None:
        """
        An unknown protocol name is an error, not a silent no-op.
        """
        self.assertRaises(InvalidMultiaddr, Multiaddr("/ip4/1.2.3.4").decapsulate, "ipv4")


class NetworkTests(SynchronousTestCase):
    """
    Conversions to and from Twisted addresses and endpoint strings.
    """

    def test_tcpTarget(self) -> None:
        """
        Plain TCP addresses, with an optional trailing peer ID, give a
        target; other transports and dnsaddr do not.
        """
        cases = {
            "/ip4/1.2.3.4/tcp/80": ("1.2.3.4", 80, "ip4"),
            "/ip6/::1/tcp/4001/p2p/" + PEER_TEXT: ("::1", 4001, "ip6"),
            "/dns/example.com/tcp/443": ("example.com", 443, "dns"),
            "/dns4/example.com/tcp/1": ("example.com", 1, "dns4"),
            "/dns6/example.com/tcp/2": ("example.com", 2, "dns6"),
            "/ip6zone/eth0/ip6/fe80::1/tcp/5": ("fe80::1%eth0", 5, "ip6"),
        }
        for text, target in cases.items():
            self.assertEqual(Multiaddr(text).tcpTarget(), target, text)
        for text in [
            "/ip4/1.2.3.4/udp/80",
            "/ip4/1.2.3.4/tcp/80/ws",
            "/ip4/1.2.3.4",
            "/dnsaddr/example.com/tcp/80",
            "/tcp/80",
            "/ip4/1.2.3.4/tcp/80/p2p/" + PEER_TEXT + "/p2p-circuit",
        ]:
            self.assertIsNone(Multiaddr(text).tcpTarget(), text)

    def test_fromTwistedAddress(self) -> None:
        """
        Twisted TCP addresses become ip4/ip6 multiaddrs; an IPv4-mapped
        IPv6 peer becomes ip4 and a scoped IPv6 address keeps its zone.
        """
        self.assertEqual(
            str(Multiaddr.fromTwistedAddress(IPv4Address("TCP", "10.1.2.3", 4001))),
            "/ip4/10.1.2.3/tcp/4001",
        )
        self.assertEqual(
            str(Multiaddr.fromTwistedAddress(IPv6Address("TCP", "::1", 4001))),
            "/ip6/::1/tcp/4001",
        )
        self.assertEqual(
            str(Multiaddr.fromTwistedAddress(IPv6Address("TCP", "::ffff:10.0.0.1", 7))),
            "/ip4/10.0.0.1/tcp/7",
        )
        self.assertEqual(
            str(Multiaddr.fromTwistedAddress(IPv6Address("TCP", "fe80::1%eth0", 7))),
            "/ip6zone/eth0/ip6/fe80::1/tcp/7",
        )
        self.assertRaises(
            InvalidMultiaddr, Multiaddr.fromTwistedAddress, IPv4Address("TCP", "nonsense", 1)
        )

    def test_isLoopback(self) -> None:
        """
        Loopback IPs and localhost are loopback; other addresses are not.
        """
        for text in ["/ip4/127.0.0.1/tcp/1", "/ip4/127.9.9.9", "/ip6/::1/tcp/1",
                     "/ip6/::ffff:127.0.0.1", "/dns/localhost/tcp/1"]:
            self.assertTrue(Multiaddr(text).isLoopback(), text)
        for text in ["/ip4/10.0.0.1/tcp/1", "/ip6/::2", "/dns/example.com", "/tcp/1",
                     "/unix/tmp/x"]:
            self.assertFalse(Multiaddr(text).isLoopback(), text)


# --- properties -----------------------------------------------------------

_NAMES = sorted({p.name for p in PROTOCOLS} | {"ipfs"})
_codes = st.sampled_from([p.code for p in PROTOCOLS])


@st.composite
def _looseBytes(draw: st.DrawFn) -> bytes:
    """
    Bytes that often start with real protocol codes, to get past the first
    check and exercise the value decoders.
    """
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        out += encode_uvarint(draw(_codes))
        if draw(st.booleans()):
            out += encode_uvarint(draw(st.integers(0, 40)))
        out += draw(st.binary(max_size=40))
    return out


@st.composite
def _looseText(draw: st.DrawFn) -> str:
    """
    Text made of real protocol names and arbitrary values.
    """
    fields = []
    for _ in range(draw(st.integers(1, 4))):
        fields.append(draw(st.sampled_from(_NAMES)))
        if draw(st.booleans()):
            fields.append(draw(st.text(max_size=30)))
    return "/" + "/".join(fields)


_port = st.integers(0, 65535).map(str)
_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_dnsName = st.lists(_label, min_size=1, max_size=4).map(".".join)
_peer = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda d: PeerID(b"\x12\x20" + d)),
    st.binary(min_size=32, max_size=32).map(lambda s: Identity.fromSeed(s).peerID),
)
_component = st.one_of(
    st.ip_addresses(v=4).map(lambda a: f"/ip4/{a}"),
    st.ip_addresses(v=6).map(lambda a: f"/ip6/{a}"),
    st.tuples(st.sampled_from(["tcp", "udp", "sctp", "dccp"]), _port).map(lambda t: f"/{t[0]}/{t[1]}"),
    st.tuples(st.sampled_from(["dns", "dns4", "dns6", "dnsaddr", "sni"]), _dnsName).map(
        lambda t: f"/{t[0]}/{t[1]}"
    ),
    st.sampled_from(["/tls", "/noise", "/quic-v1", "/ws", "/wss", "/p2p-circuit",
                     "/webtransport", "/http", "/webrtc-direct", "/webrtc"]),
    _peer.map(lambda p: f"/p2p/{p}"),
    _peer.map(lambda p: f"/p2p/{p.toCID()}"),
    st.integers(0, 2**64 - 1).map(lambda n: f"/memory/{n}"),
    st.binary(min_size=1, max_size=40).map(
        lambda d: "/certhash/u" + __import__("base64").urlsafe_b64encode(b"\x12" + bytes([len(d)]) + d).decode().rstrip("=")
    ),
)
_validAddr = st.tuples(
    st.lists(_component, min_size=1, max_size=6),
    st.one_of(st.none(), st.lists(_label, min_size=1, max_size=3).map(lambda p: "/unix/" + "/".join(p))),
).map(lambda t: "".join(t[0]) + (t[1] or ""))


class PropertyTests(SynchronousTestCase):
    """
    Hostile input only ever raises L{InvalidMultiaddr}; valid addresses
    round-trip.
    """

    def _checkRoundTrip(self, addr: Multiaddr) -> None:
        self.assertEqual(Multiaddr.fromBytes(addr.toBytes()), addr)
        self.assertEqual(Multiaddr.fromString(str(addr)), addr)
        self.assertEqual(Multiaddr.fromString(str(addr)).toBytes(), addr.toBytes())
        addr.components()
        addr.tcpTarget()
        addr.isLoopback()
        addr.peerID()

    @settings(deadline=None, max_examples=300)
    @given(st.one_of(st.binary(max_size=80), _looseBytes()))
    def test_randomBytes(self, raw: bytes) -> None:
        """
        Arbitrary bytes either parse (and then round-trip through text and
        bytes) or raise L{InvalidMultiaddr}.
        """
        try:
            addr = Multiaddr.fromBytes(raw)
        except InvalidMultiaddr:
            return
        self.assertEqual(addr.toBytes(), raw)
        self._checkRoundTrip(addr)

    @settings(deadline=None, max_examples=300)
    @given(st.one_of(st.text(max_size=80), _looseText()))
    def test_randomText(self, text: str) -> None:
        """
        Arbitrary text either parses (and then round-trips) or raises
        L{InvalidMultiaddr}.
        """
        try:
            addr = Multiaddr.fromString(text)
        except InvalidMultiaddr:
            return
        self._checkRoundTrip(addr)

    @settings(deadline=None, max_examples=200)
    @given(_validAddr)
    def test_validRoundTrip(self, text: str) -> None:
        """
        Generated valid addresses parse and round-trip through bytes and text.
        """
        self._checkRoundTrip(Multiaddr.fromString(text))


class CopyTests(SynchronousTestCase):
    """
    Immutable addresses still copy and pickle.
    """

    def test_pickleAndCopy(self) -> None:
        """
        Pickling and copying give equal addresses, the empty one included.
        """
        import copy
        import pickle

        a = Multiaddr("/ip4/1.2.3.4/tcp/80/p2p/" + PEER_TEXT)
        self.assertEqual(pickle.loads(pickle.dumps(a)), a)
        self.assertEqual(copy.deepcopy(a), a)
        empty = a.decapsulate("ip4")
        self.assertEqual(copy.copy(empty), empty)
