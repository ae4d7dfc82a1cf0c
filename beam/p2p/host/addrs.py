"""
The node's own addresses: what it listens on, what peers see, what others
confirmed they can dial, and what it may tell whom.

A node behind a NAT does not know its public address; peers tell it (the
observed address in identify), and only a dial-back (AutoNAT) proves that
an address is reachable.  L{AddressBook} keeps those facts apart:

 - I{listen} addresses: the machine's interfaces (unspecified listen
   addresses expanded), given by the node;
 - I{observed} addresses: what peers reported, grouped by distinct
   observers; one seen by C{observerThreshold} distinct peers is a
   I{candidate};
 - I{confirmed} and I{rejected} addresses: the verdicts of AutoNAT for
   candidates (and for public listen addresses), which also set the node's
   I{reachability} (C{"public"}, C{"private"} or C{"unknown"});
 - I{relay} addresses (C{.../p2p-circuit}): set by the relay client while
   it holds reservations.

What the node may tell a peer (L{advertisedFor}) follows libp2p's
address filtering: loopback addresses only to a peer on loopback, private
ones only to a peer on a private or loopback network, public ones to
everyone.  What goes into share addresses and name records
(L{shareable}) is what a stranger anywhere could use.

The module is sans-IO: AutoNAT, identify and the relay client feed it;
observers learn of changes through L{onChange}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Optional

from twisted.logger import Logger

from beam.identity.multiaddr import Multiaddr

__all__ = ["AddressBook", "Reachability", "Scope", "addrScope"]

Reachability = Literal["public", "private", "unknown"]

#: Most observed addresses remembered (least-seen ones are dropped).
MAX_OBSERVED = 64
#: Most observers remembered per observed address.
MAX_OBSERVERS = 16


Scope = Literal["public", "private", "loopback", "invalid", "other"]

#: Documentation ranges that stand for the public Internet: TEST-NET-1
#: and TEST-NET-3 (RFC 5737).  No real network routes them, so the only
#: places they appear are examples and test labs, where they play the
#: Internet (the NAT lab's "internet" is 203.0.113.0/24).  TEST-NET-2,
#: 198.51.100.0/24, stays private: the lab's home LANs use it.
_LAB_INTERNET = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("203.0.113.0/24"))


def addrScope(addr: Multiaddr) -> Scope:
    """
    Which kind of network C{addr} is on: C{"public"}, C{"private"},
    C{"loopback"}, C{"invalid"} (unspecified, multicast, reserved) or
    C{"other"} (not an IP address: C{/memory}, a DNS name that is not
    C{localhost}).
    """
    if addr.isLoopback():
        return "loopback"
    comps = addr.components()
    if comps and comps[0][0] == "ip6zone":
        comps = comps[1:]
    if not comps or comps[0][0] not in ("ip4", "ip6") or comps[0][1] is None:
        return "other"
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(comps[0][1])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "invalid"
    if ip.is_loopback:
        return "loopback"
    if ip.is_global or any(ip in net for net in _LAB_INTERNET):
        return "public"
    return "private"


class AddressBook:
    """
    See the module docstring.

    @ivar observerThreshold: distinct observers after which an observed
        address becomes a candidate.
    @ivar reachability: what AutoNAT concluded about the node.
    """

    log = Logger()

    def __init__(self, listenAddrs: Callable[[], Sequence[Multiaddr]], observerThreshold: int = 2) -> None:
        """
        @param listenAddrs: returns the node's listen addresses, expanded
            to real interface addresses, without C{/p2p}.
        """
        self._listenAddrs = listenAddrs
        self.observerThreshold = observerThreshold
        self._observed: dict[Multiaddr, set[Any]] = {}
        self._confirmed: list[Multiaddr] = []
        self._rejected: set[Multiaddr] = set()
        self._relay: list[Multiaddr] = []
        self.reachability: Reachability = "unknown"
        self._observers: list[Callable[[], None]] = []

    # -- facts -----------------------------------------------------------

    def listenAddrs(self) -> list[Multiaddr]:
        return list(self._listenAddrs())

    def observe(self, observed: Multiaddr, observer: Any) -> None:
        """
        Peer C{observer} says it sees us at C{observed} (identify's
        observed address).  Bounded: at most L{MAX_OBSERVED} addresses and
        L{MAX_OBSERVERS} observers each.
        """
        observed = observed.withoutPeerID()
        peers = self._observed.get(observed)
        if peers is None:
            if len(self._observed) >= MAX_OBSERVED:
                least = min(self._observed, key=lambda a: len(self._observed[a]))
                del self._observed[least]
            peers = self._observed[observed] = set()
        before = len(peers) >= self.observerThreshold
        if len(peers) < MAX_OBSERVERS:
            peers.add(observer)
        if not before and len(peers) >= self.observerThreshold:
            self._changed()

    def observed(self) -> dict[Multiaddr, int]:
        """
        Each observed address with how many distinct peers reported it.
        """
        return {a: len(p) for a, p in self._observed.items()}

    def candidates(self) -> list[Multiaddr]:
        """
        Addresses worth asking AutoNAT about: public listen addresses and
        observed public addresses seen by enough distinct peers, not yet
        confirmed or rejected.
        """
        out: list[Multiaddr] = []
        for addr in self.listenAddrs():
            if addrScope(addr) == "public":
                out.append(addr)
        for addr, peers in self._observed.items():
            if len(peers) >= self.observerThreshold and addrScope(addr) == "public" and addr not in out:
                out.append(addr)
        return [a for a in out if a not in self._confirmed and a not in self._rejected]

    def confirm(self, addr: Multiaddr) -> None:
        """
        AutoNAT: a peer dialled C{addr} back.  The node is public.
        """
        addr = addr.withoutPeerID()
        self._rejected.discard(addr)
        if addr not in self._confirmed:
            self._confirmed.append(addr)
        self.setReachability("public")
        self._changed()

    def reject(self, addr: Multiaddr) -> None:
        """
        AutoNAT: C{addr} could not be dialled back.
        """
        addr = addr.withoutPeerID()
        self._rejected.add(addr)
        if addr in self._confirmed:
            self._confirmed.remove(addr)
            self._changed()
        if not self._confirmed:
            self.setReachability("private")

    def confirmed(self) -> list[Multiaddr]:
        return list(self._confirmed)

    def setReachability(self, reachability: Reachability) -> None:
        if reachability != self.reachability:
            self.reachability = reachability
            self._changed()

    def setRelayAddrs(self, addrs: Iterable[Multiaddr]) -> None:
        """
        The relay client's current C{.../p2p/RELAY/p2p-circuit} addresses
        (replacing the previous ones).
        """
        new = [a for a in addrs]
        if new != self._relay:
            self._relay = new
            self._changed()

    def relayAddrs(self) -> list[Multiaddr]:
        return list(self._relay)

    # -- what we tell ----------------------------------------------------

    def advertisedFor(self, peerAddr: Optional[Multiaddr]) -> list[Multiaddr]:
        """
        The addresses to tell a peer connected from C{peerAddr} (L{None}:
        unknown, treated as public): listen addresses it can reach by
        libp2p's address filtering, confirmed public addresses, relay
        addresses.
        """
        peerScope = addrScope(peerAddr) if peerAddr is not None else "public"
        allowed = {"public"}
        if peerScope in ("private", "loopback"):
            allowed.add("private")
        if peerScope == "loopback":
            allowed.add("loopback")
        out: list[Multiaddr] = []
        for addr in [*self._confirmed, *self.listenAddrs()]:
            scope = addrScope(addr)
            if (scope in allowed or scope == "other") and addr not in out:
                out.append(addr)
        for addr in self._relay:
            if addr not in out:
                out.append(addr)
        return out

    def shareable(self) -> list[Multiaddr]:
        """
        The addresses for share addresses and name records: confirmed
        public ones and relay ones, then the rest of the listen addresses
        (for peers on the same network), public before private before
        loopback.
        """
        rank = {"public": 0, "other": 1, "private": 2, "loopback": 3}
        out = [*self._confirmed, *self._relay]
        rest = sorted(self.listenAddrs(), key=lambda a: rank.get(addrScope(a), 4))
        out.extend(a for a in rest if a not in out and addrScope(a) != "invalid")
        return out

    def hasReachableAddress(self) -> bool:
        """
        Whether a stranger anywhere could dial us: a confirmed address or a
        relay address.
        """
        return bool(self._confirmed or self._relay)

    # -- observers -------------------------------------------------------

    def onChange(self, callback: Callable[[], None]) -> None:
        self._observers.append(callback)

    def _changed(self) -> None:
        for callback in list(self._observers):
            try:
                callback()
            except Exception:
                self.log.failure("address book observer failed")
