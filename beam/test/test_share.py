"""
Tests for L{beam.tunnel.share}: share addresses.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.tunnel.share import InvalidShareAddress, ShareAddress, parseShareAddress


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
