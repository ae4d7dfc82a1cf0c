"""
What a DHT peer may tell us about others: address filtering and a dial
rate limit, so that no peer can make us connect where it likes (SSRF).

A peer's answer lists other peers (closer peers) at addresses of its
choosing.  Taken as they are, a stranger on the Internet could make us
dial C{127.0.0.1} or a machine on our LAN.  As libp2p does, addresses of
third parties are kept only if they are on a network the answering peer
can itself speak for (L{filterAddrs}):

  - public addresses always;
  - private ones (RFC 1918, CGNAT, unique local, link-local) only if the
    answer came over a private or loopback connection;
  - loopback ones only if it came over loopback;
  - unspecified, multicast and reserved ones never.

DNS names (C{/dns}, C{/dns4}, C{/dns6}, C{/dnsaddr}) may resolve to
anything, a private or loopback address included, and are resolved only
when dialled; so a third party's DNS address is kept only from a peer that
may give private addresses (one reached over a private or loopback
connection), never on a public stranger's word.  Other addresses that are
not IP (C{/memory}) are kept, and so are onion addresses (C{/onion3}),
which anyone with Tor reaches from anywhere, unless we cannot dial them
(no C{"tor"} transport).  L{DialLimiter} then bounds how often the
DHT dials any one target, whoever told us about it.
"""

from __future__ import annotations

from typing import Iterable, Optional

import attrs

from beam.dht.messages import Message, PeerInfo
from beam.identity.multiaddr import Multiaddr
from beam.p2p.host.addrs import addrScope, reachableFrom

__all__ = ["DialLimiter", "addrScope", "filterAddrs", "filterMessage"]


def filterAddrs(addrs: Iterable[Multiaddr], via: Optional[Multiaddr], onion: bool = True) -> tuple[Multiaddr, ...]:
    """
    The addresses of C{addrs} we may dial on the word of a peer reached at
    C{via} (the remote address of its connection; L{None}: unknown, or a
    connection over Tor, treated as public): libp2p's address filtering,
    the same rule the peer store applies to what a peer says of itself
    (L{reachableFrom}).

    @param onion: keep onion addresses (we can dial them).
    """
    return tuple(a for a in reachableFrom(addrs, via) if onion or not a.isOnion())


def filterMessage(message: Message, via: Optional[Multiaddr], onion: bool = True) -> Message:
    """
    C{message} with the addresses of its closer peers filtered
    (L{filterAddrs}); peers left with no address stay (they may be
    reachable through the peer store or a later answer).
    """
    if not message.closerPeers:
        return message
    closer = tuple(PeerInfo(p.peer, filterAddrs(p.addrs, via, onion)) for p in message.closerPeers)
    if closer == message.closerPeers:
        return message
    return attrs.evolve(message, closerPeers=closer)


class DialLimiter:
    """
    A token bucket per dial target (C{host:port}, or the whole address if
    it is not TCP): at most C{burst} dials at once, then one every
    C{1/rate} seconds.

    @ivar refused: how many dials were refused so far.
    """

    def __init__(self, clock: object, burst: int = 4, rate: float = 0.2, maxTargets: int = 4096) -> None:
        self.clock = clock
        self.burst = burst
        self.rate = rate
        self.maxTargets = maxTargets
        self._buckets: dict[str, tuple[float, float]] = {}
        self.refused = 0

    @staticmethod
    def key(addr: Multiaddr) -> str:
        """
        The target C{addr} dials.
        """
        target = addr.tcpTarget()
        if target is not None:
            return f"{target[0]}:{target[1]}"
        return str(addr.withoutPeerID())

    def allow(self, addr: Multiaddr) -> bool:
        """
        Take a token for dialling C{addr}; False if its bucket is empty.
        """
        now: float = self.clock.seconds()  # type: ignore[attr-defined]  # an IReactorTime
        key = self.key(addr)
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            self.refused += 1
            return False
        if key not in self._buckets and len(self._buckets) >= self.maxTargets:
            self._prune(now)
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def _prune(self, now: float) -> None:
        """
        Forget buckets that are full again (they behave as new ones); if
        none is, forget the oldest half.
        """
        full = [k for k, (t, last) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.maxTargets:
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k][1])
            for k in oldest[: len(oldest) // 2]:
                del self._buckets[k]
