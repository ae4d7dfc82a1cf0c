"""
The peerstore: what a node knows about other peers.

Addresses come from several places that deserve different trust and
lifetimes: the address we dialled and got the right peer on
(C{'connected'}), one the user typed (C{'user'}), the peer's own identify
(C{'identify'}), a multicast DNS answer on the LAN (C{'mdns'}), a DHT answer about a third party (C{'dht'}), a signed name
record (C{'record'}).  Each address keeps its best source and its latest
expiry; L{PeerStore.addrs} lists the unexpired ones best first, so the
dialer tries the address that worked before the one a stranger told us.

An address nobody can dial (unspecified, multicast, reserved: C{0.0.0.0},
C{224.0.0.1}) is never stored, whatever its source.  What a peer says about
itself is filtered before it gets here, by where the peer is
(L{beam.p2p.host.addrs.reachableFrom}, applied by identify).

Everything is bounded, since peers feed it: at most C{maxAddrsPerPeer}
addresses per peer (the worst source and oldest go first) and
C{maxPeers} peers (the least recently updated peer without a
connection goes first).  Time comes from the injected clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Iterable, Optional

import attrs
from zope.interface import implementer

from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.addrs import addrScope
from beam.p2p.interfaces import IPeerStore

#: Sources by trust, best first; the default lifetime of each (seconds).
SOURCES: dict[str, float] = {
    "connected": 3600.0,
    "user": math.inf,
    "record": 3600.0,
    "identify": 3600.0,
    "mdns": 120.0,
    "dht": 600.0,
}
_RANK = {name: i for i, name in enumerate(SOURCES)}


@attrs.define
class _Addr:
    addr: Multiaddr
    source: str
    expires: float
    added: float


@attrs.define
class _Peer:
    addrs: dict[Multiaddr, _Addr] = attrs.field(factory=dict)
    protocols: tuple[str, ...] = ()
    agent: Optional[str] = None
    latency: Optional[float] = None


@implementer(IPeerStore)
class PeerStore:
    """
    A bounded, expiring store of peer addresses and metadata.

    @param clock: the reactor (or a L{Clock}) whose C{seconds()} is now.
    """

    def __init__(self, clock: Any, *, maxPeers: int = 10_000, maxAddrsPerPeer: int = 32) -> None:
        self.clock = clock
        self.maxPeers = maxPeers
        self.maxAddrsPerPeer = maxAddrsPerPeer
        self._peers: OrderedDict[PeerID, _Peer] = OrderedDict()

    def _peer(self, peer: PeerID) -> _Peer:
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._peers[peer] = _Peer()
            while len(self._peers) > self.maxPeers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return entry

    # -- addresses -------------------------------------------------------

    def addAddrs(self, peer: PeerID, addrs: Iterable[Multiaddr], source: str, ttl: Optional[float] = None) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown address source {source!r}")
        now = self.clock.seconds()
        expires = now + (SOURCES[source] if ttl is None else ttl)
        entry = self._peer(peer)
        for addr in addrs:
            addr = addr.withoutPeerID()
            if addrScope(addr) == "invalid":
                continue
            old = entry.addrs.get(addr)
            if old is None:
                entry.addrs[addr] = _Addr(addr, source, expires, now)
                continue
            if _RANK[source] < _RANK[old.source]:
                old.source = source
            old.expires = max(old.expires, expires)
            old.added = now
        if len(entry.addrs) > self.maxAddrsPerPeer:
            keep = sorted(entry.addrs.values(), key=lambda a: (_RANK[a.source], -a.added))
            entry.addrs = {a.addr: a for a in keep[: self.maxAddrsPerPeer]}

    def addrs(self, peer: PeerID) -> list[Multiaddr]:
        entry = self._peers.get(peer)
        if entry is None:
            return []
        now = self.clock.seconds()
        expired = [a for a, info in entry.addrs.items() if info.expires <= now]
        for a in expired:
            del entry.addrs[a]
        live = sorted(entry.addrs.values(), key=lambda a: (_RANK[a.source], -a.added))
        return [a.addr for a in live]

    def addrSources(self, peer: PeerID) -> dict[Multiaddr, str]:
        """
        Each unexpired address of C{peer} with its best source (for
        status output and tests).
        """
        entry = self._peers.get(peer)
        return {a: entry.addrs[a].source for a in self.addrs(peer)} if entry else {}

    def removeAddrs(self, peer: PeerID) -> None:
        entry = self._peers.get(peer)
        if entry is not None:
            entry.addrs.clear()

    def peers(self) -> list[PeerID]:
        return [p for p in list(self._peers) if self.addrs(p)]

    # -- metadata --------------------------------------------------------

    def setProtocols(self, peer: PeerID, protocols: Iterable[str]) -> None:
        self._peer(peer).protocols = tuple(sorted(set(protocols)))[:256]

    def protocols(self, peer: PeerID) -> list[str]:
        entry = self._peers.get(peer)
        return list(entry.protocols) if entry else []

    def setAgent(self, peer: PeerID, agent: str) -> None:
        self._peer(peer).agent = agent[:256]

    def agent(self, peer: PeerID) -> Optional[str]:
        entry = self._peers.get(peer)
        return entry.agent if entry else None

    def recordLatency(self, peer: PeerID, rtt: float) -> None:
        """
        An exponentially weighted moving average (weight 1/8 for the new
        sample, as TCP's SRTT), so one slow answer does not swing it.
        """
        entry = self._peer(peer)
        entry.latency = rtt if entry.latency is None else entry.latency + (rtt - entry.latency) / 8

    def latency(self, peer: PeerID) -> Optional[float]:
        entry = self._peers.get(peer)
        return entry.latency if entry else None
