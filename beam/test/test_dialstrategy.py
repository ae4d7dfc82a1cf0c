"""
The dialer's strategy (L{beam.p2p.host.dialer}): direct addresses first,
relayed ones L{Dialer.relayDelay} seconds later, the first connection
wins and the other dials are cancelled.  Whole nodes on the memory grid
under a L{Clock} (L{beam.test.memnodes}), a relay from
L{beam.test.test_relay.RelayWorld}.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from beam.errors import DialError
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.dialer import Dialer
from beam.test.test_relay import RelayWorld


class DialStrategyTests(SynchronousTestCase):
    """
    B dials A, which holds a reservation on relay R, given a direct and a
    relayed address for A.
    """

    def _world(self) -> RelayWorld:
        w = RelayWorld(self)
        self.circuit = w.grid.addr(w.r).encapsulate("/p2p-circuit")
        return w

    def _learn(self, w: RelayWorld, *addrs: Multiaddr) -> None:
        w.b.peerStore.addAddrs(w.a.peerID, list(addrs), "user")

    def test_directWins(self) -> None:
        """
        A direct address that works connects within the head start: the
        relay is never asked for a circuit, and no timer is left behind.
        """
        w = self._world()
        self._learn(w, w.grid.addr(w.a, withPeer=False), self.circuit)
        conn = w.grid.result(w.b.connect(w.a.peerID))
        self.assertFalse(conn.limited)
        w.grid.advance(1.0)
        self.assertEqual(len(w.service.circuits), 0)
        self.assertEqual(w.b.connectionTo(w.a.peerID), conn)

    def test_relayAfterHeadStart(self) -> None:
        """
        A direct address that never answers (a SYN into a home router):
        the relayed dial starts after the head start and wins, and the
        direct dial is then cancelled (its connection closed), long
        before the handshake would have timed out.
        """
        w = self._world()
        silent = w.grid.silentListener()
        self._learn(w, silent.addr, self.circuit)
        d = w.b.connect(w.a.peerID)
        w.grid.advance(Dialer.relayDelay * 0.8)
        self.assertNoResult(d)
        self.assertEqual(len(w.service.circuits), 0, "the relay waits for the head start")
        w.grid.advance(Dialer.relayDelay * 0.4)
        conn = self.successResultOf(d)
        self.assertTrue(conn.limited)
        self.assertEqual(len(silent.protocols), 1)
        transport = silent.protocols[0].transport
        assert transport is not None
        self.assertTrue(transport.disconnected, "the losing direct dial is cancelled")  # type: ignore[attr-defined]

    def test_directFailsFast(self) -> None:
        """
        When every direct address fails before the head start is over,
        the relayed dial starts at once.
        """
        w = self._world()
        nobody = Multiaddr.fromString(f"/memory/{w.grid.network.allocate()}")
        self._learn(w, nobody, self.circuit)
        conn = w.grid.result(w.b.connect(w.a.peerID))
        self.assertTrue(conn.limited)

    def test_bothFail(self) -> None:
        """
        When every address fails, the one error names each address's
        reason.
        """
        w = self._world()
        nobody = Multiaddr.fromString(f"/memory/{w.grid.network.allocate()}")
        elsewhere = w.grid.node()
        # A relay address through a relay that does not relay.
        circuit = w.grid.addr(elsewhere).encapsulate("/p2p-circuit")
        self._learn(w, nobody, circuit)
        f = w.grid.failure(w.b.connect(w.a.peerID), DialError)
        w.grid.advance(1.0)
        text = str(f.value)
        self.assertIn(str(nobody), text)
        self.assertIn("p2p-circuit", text)

    def test_cancelStopsBoth(self) -> None:
        """
        Cancelling the dial during the race cancels the direct and the
        relayed dial; the grid's cleanup checks that no timer is left.
        """
        w = self._world()
        silent = w.grid.silentListener()
        self._learn(w, silent.addr, self.circuit)
        d = w.b.connect(w.a.peerID)
        w.grid.advance(Dialer.relayDelay * 0.5)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        w.grid.advance(1.0)
        self.assertEqual(len(w.service.circuits), 0)
        self.assertIsNone(w.b.connectionTo(w.a.peerID))

    def test_noHeadStartForForeignLANs(self) -> None:
        """
        Direct addresses only on private networks we are not on get no
        head start; a public one (or a non-IP one) does.
        """
        w = self._world()
        dialer = Dialer(w.b)
        lan = Multiaddr.fromString("/ip4/192.168.7.7/tcp/4001")
        public = Multiaddr.fromString("/ip4/203.0.113.7/tcp/4001")
        self.assertFalse(dialer._worthWaitingFor([lan]))
        self.assertTrue(dialer._worthWaitingFor([lan, public]))
        self.assertTrue(dialer._worthWaitingFor([w.grid.addr(w.a, withPeer=False)]))
