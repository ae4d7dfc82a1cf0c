"""
Tests for L{beam.tunnel.share}: share addresses.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.tunnel.share import (
    BEHIND_NAT,
    NO_RESERVATION,
    InvalidShareAddress,
    ShareAddress,
    parseShareAddress,
    unreachableReason,
)


class ShareAddressTests(SynchronousTestCase):
    """
    Formatting and parsing share addresses.
    """

    def setUp(self) -> None:
        self.peer = Identity.generate().peerID

    def test_roundTrip(self) -> None:
        """
        IPv4, IPv6 and DNS addresses, a service and a secret survive
        formatting and parsing.
        """
        share = ShareAddress(
            peer=self.peer,
            addrs=(
                Multiaddr.fromString("/ip4/192.0.2.1/tcp/4001"),
                Multiaddr.fromString("/ip6/::1/tcp/4002"),
                Multiaddr.fromString("/dns/example.org/tcp/4003"),
            ),
            service="web",
            secret=b"\x01" * 16,
        )
        text = str(share)
        self.assertTrue(text.startswith(f"beam://{self.peer}@192.0.2.1:4001,[::1]:4002,example.org:4003/web#"))
        self.assertEqual(parseShareAddress(text), share)

    def test_onion(self) -> None:
        """
        An onion service address is written as C{<host>.onion:<port>}, read
        back as C{/onion3}, never as a DNS name; a malformed one is refused.
        """
        host = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd"
        onion = Multiaddr.fromString(f"/onion3/{host}:4001")
        share = ShareAddress(peer=self.peer, addrs=(onion, Multiaddr.fromString("/ip4/192.0.2.1/tcp/4001")),
                             service="web")
        text = str(share)
        self.assertEqual(text, f"beam://{self.peer}@{host}.onion:4001,192.0.2.1:4001/web")
        self.assertEqual(parseShareAddress(text), share)
        self.assertEqual(parseShareAddress(f"beam://{self.peer}@{host.upper()}.ONION:4001/").addrs, (onion,))
        with self.assertRaises(InvalidShareAddress):
            parseShareAddress(f"beam://{self.peer}@tooshort.onion:4001/")

    def test_multiaddr(self) -> None:
        """
        A /p2p/ multiaddr is accepted, with the service given separately.
        """
        share = parseShareAddress(f"/ip4/127.0.0.1/tcp/9/p2p/{self.peer}", service="db")
        self.assertEqual(share.peer, self.peer)
        self.assertEqual(share.service, "db")
        self.assertEqual([str(a) for a in share.dialAddrs()], [f"/ip4/127.0.0.1/tcp/9/p2p/{self.peer}"])

    def test_invalid(self) -> None:
        """
        Malformed share addresses raise L{InvalidShareAddress} with a reason.
        """
        bad = [
            "", "http://x", "beam://nope@1.2.3.4:5/", f"beam://{self.peer}",
            f"beam://{self.peer}@1.2.3.4/", f"beam://{self.peer}@1.2.3.4:99999/",
            f"beam://{self.peer}@[::1/", f"beam://{self.peer}@1.2.3.4:5/bad name",
            f"beam://{self.peer}@1.2.3.4:5/x#!!!", "/ip4/127.0.0.1/tcp/1",
        ]
        for text in bad:
            self.assertRaises(InvalidShareAddress, parseShareAddress, text)

    @settings(deadline=None, max_examples=300)
    @given(st.text(max_size=120))
    def test_fuzz(self, text: str) -> None:
        """
        Random text parses or raises L{InvalidShareAddress}.
        """
        try:
            parseShareAddress("beam://" + text)
            parseShareAddress(text)
        except InvalidShareAddress:
            pass


class RelayShareTests(SynchronousTestCase):
    """
    Share addresses of hosts behind NATs: C{relay:RELAY@HOST:PORT}, and
    the errors that name the NAT.
    """

    def setUp(self) -> None:
        self.peer = Identity.generate().peerID
        self.relay = Identity.generate().peerID

    def test_roundTrip(self) -> None:
        """
        A relay address is written C{relay:RELAY@HOST:PORT} and read back
        as C{.../p2p/RELAY/p2p-circuit}; dialling it names the target.
        """
        circuit = Multiaddr.fromString(f"/ip4/192.0.2.7/tcp/4001/p2p/{self.relay}/p2p-circuit")
        circuit6 = Multiaddr.fromString(f"/ip6/2001:db8::7/tcp/4001/p2p/{self.relay}/p2p-circuit")
        share = ShareAddress(peer=self.peer, addrs=(circuit, circuit6, Multiaddr.fromString("/ip4/192.168.1.5/tcp/9")),
                             service="web")
        text = str(share)
        self.assertEqual(text, f"beam://{self.peer}@relay:{self.relay}@192.0.2.7:4001,"
                               f"relay:{self.relay}@[2001:db8::7]:4001,192.168.1.5:9/web")
        self.assertEqual(parseShareAddress(text), share)
        self.assertEqual(str(share.dialAddrs()[0]), f"{circuit}/p2p/{self.peer}")

    def test_invalid(self) -> None:
        """
        A relay entry needs a valid relay peer ID and a HOST:PORT, and no
        relay behind a relay.
        """
        for bad in (f"relay:{self.relay}192.0.2.7:1", "relay:nope@192.0.2.7:1",
                    f"relay:{self.relay}@relay:{self.relay}@192.0.2.7:1", f"relay:{self.relay}@192.0.2.7"):
            self.assertRaises(InvalidShareAddress, parseShareAddress, f"beam://{self.peer}@{bad}/web")

    def test_unreachableReason(self) -> None:
        """
        A failed dial is explained by the NAT only when the addresses say
        so: private (LAN) or relay addresses only gives L{BEHIND_NAT}; a
        relay's C{NO_RESERVATION} gives L{NO_RESERVATION}; a public or
        loopback-only host keeps the dial error.
        """
        lan = Multiaddr.fromString("/ip4/192.168.1.5/tcp/4001")
        public = Multiaddr.fromString("/ip4/8.8.8.8/tcp/4001")
        loop = Multiaddr.fromString("/ip4/127.0.0.1/tcp/4001")
        circuit = Multiaddr.fromString(f"/ip4/8.8.4.4/tcp/4001/p2p/{self.relay}/p2p-circuit")
        why = "could not connect to X: connection refused"
        self.assertEqual(unreachableReason([lan, loop], why),
                         f"{BEHIND_NAT} (it lists only private addresses: 192.168.1.5:4001, 127.0.0.1:4001)")
        self.assertEqual(unreachableReason([circuit, lan], why), f"{BEHIND_NAT} (relay {self.relay} did not connect us)")
        self.assertTrue(unreachableReason(
            [circuit, loop], "the peer holds no reservation on the relay (NO_RESERVATION)").startswith(NO_RESERVATION))
        self.assertIsNone(unreachableReason([public, lan], why))
        self.assertIsNone(unreachableReason([loop], why))
