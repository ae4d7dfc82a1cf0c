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

What a peer tells us about I{itself} (its identify listen addresses) is
filtered the same way in the other direction (L{reachableFrom}): we keep
only the addresses we could reach from where the peer's connection comes
from.

Onion addresses (C{/onion3/...}: a Tor onion service of ours, a listen
address of the C{"tor"} transport) are of scope C{"other"}: anyone with
Tor can reach them, wherever it is, so they are told to every peer and
shared with strangers, after the addresses that need no Tor (see
L{AddressBook.shareable}).  A connection over Tor says nothing about
where the peer is: for filtering it counts as one from the public
Internet (L{vantageOf}).

Everything a peer can feed is bounded: L{MAX_OBSERVED} observed
addresses with L{MAX_OBSERVERS} observers each, and L{MAX_VERDICTS}
confirmed and rejected addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Optional

from twisted.logger import Logger

from beam.identity.multiaddr import Multiaddr

__all__ = ["AddressBook", "Reachability", "Scope", "addrScope", "observerGroup", "reachableFrom", "vantageOf"]

Reachability = Literal["public", "private", "unknown"]

#: Most observed addresses remembered (least-seen ones are dropped).
MAX_OBSERVED = 64
#: Most observers remembered per observed address.
MAX_OBSERVERS = 16
#: Most confirmed, and most rejected, addresses remembered (oldest verdicts
#: are forgotten first).
MAX_VERDICTS = 32


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


#: How far each scope of a connection may see: a peer reached over
#: loopback may name loopback, private and public addresses; one over a
#: private network private and public ones; anyone else public ones.
_REACH = {"public": 0, "private": 1, "loopback": 2}


def _isDNS(addr: Multiaddr) -> bool:
    comps = addr.components()
    return bool(comps) and comps[0][0] in ("dns", "dns4", "dns6", "dnsaddr")


def reachableFrom(addrs: Iterable[Multiaddr], via: Optional[Multiaddr]) -> list[Multiaddr]:
    """
    The addresses of C{addrs} that we could reach, given that the peer
    naming them is connected to us from C{via} (its address as our socket
    sees it; L{None} or a non-IP address such as a relayed one: treated as
    public).  libp2p's address filtering:

      - public addresses always;
      - private ones only over a private or loopback connection;
      - loopback ones only over a loopback connection;
      - unspecified, multicast and reserved ones never;
      - DNS names (which may resolve to anything, a LAN host included)
        only from a peer that may give private addresses, as the DHT's
        filter does for third parties; other non-IP addresses
        (C{/memory}) always.

    A peer across the Internet that names C{192.168.1.1} or C{127.0.0.1}
    means a machine of its own network, never ours: storing it would make
    us dial a stranger's idea of our LAN.
    """
    viaScope = addrScope(via) if via is not None else "public"
    reach = _REACH.get(viaScope, 0)
    kept: list[Multiaddr] = []
    for addr in addrs:
        scope = addrScope(addr)
        if scope == "other":
            ok = not _isDNS(addr) or reach >= _REACH["private"]
        else:
            ok = scope in _REACH and _REACH[scope] <= reach
        if ok and addr not in kept:
            kept.append(addr)
    return kept


def vantageOf(conn: Any) -> Optional[Multiaddr]:
    """
    Where the peer of C{conn} (a L{PeerConnection
    <beam.p2p.connection.PeerConnection>}) connects from, for address
    filtering (L{reachableFrom}, L{AddressBook.advertisedFor}): its
    address as our socket sees it, or L{None} (a stranger on the public
    Internet) for a connection over Tor.  Such a connection's socket ends
    at a local Tor client (a SOCKS port or the onion service's local
    listener, often on loopback), which must not make the peer look like
    a neighbour that may be told, or tell us, loopback and private
    addresses.
    """
    if getattr(conn, "transport", None) == "tor":
        return None
    observed: Optional[Multiaddr] = getattr(conn, "observedRemote", None) or getattr(conn, "remoteAddr", None)
    return observed


def observerGroup(remote: Optional[Multiaddr], peer: Any) -> Any:
    """
    Who counts as one observer of our address: the peer's IP address (an
    IPv6 one by its /56, what one customer usually gets), so that one
    machine with many peer IDs is one observer, as libp2p's observed
    address manager groups them.  Peers without an IP address (in-memory,
    relayed) count by their peer ID.
    """
    if remote is not None:
        comps = remote.components()
        if comps and comps[0][0] == "ip4" and comps[0][1] is not None:
            return comps[0][1]
        if comps and comps[0][0] == "ip6" and comps[0][1] is not None:
            try:
                ip6 = ipaddress.IPv6Address(comps[0][1])
            except ValueError:
                return comps[0][1]
            if ip6.ipv4_mapped is not None:
                return str(ip6.ipv4_mapped)
            return str(ipaddress.IPv6Network((ip6, 56), strict=False))
    return peer


def _ipOf(addr: Multiaddr) -> Optional[str]:
    comps = addr.components()
    if comps and comps[0][0] in ("ip4", "ip6"):
        return comps[0][1]
    return None


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
            to real interface addresses, without C{/p2p}.  Called whenever
            they are needed, so it follows the node's listeners (and the
            machine's interfaces) as they change.
        """
        self._listenAddrs = listenAddrs
        self.observerThreshold = observerThreshold
        # Insertion order is the age of each entry: the oldest of the least
        # observed goes first, and the oldest verdicts are forgotten first.
        self._observed: dict[Multiaddr, set[Any]] = {}
        self._confirmed: dict[Multiaddr, None] = {}
        self._rejected: dict[Multiaddr, None] = {}
        self._relay: list[Multiaddr] = []
        self._relayKinds: dict[str, list[Multiaddr]] = {}
        # Addresses learned from outside identify: a gateway's port
        # mapping (UPnP, NAT-PMP), a TURN allocation.  Bounded.
        self._external: list[Multiaddr] = []
        self.reachability: Reachability = "unknown"
        self._observers: list[Callable[[], None]] = []

    # -- facts -----------------------------------------------------------

    def listenAddrs(self) -> list[Multiaddr]:
        """
        The node's listen addresses (expanded, without C{/p2p}), each once.
        """
        out: list[Multiaddr] = []
        for addr in self._listenAddrs():
            addr = addr.withoutPeerID()
            if addr not in out:
                out.append(addr)
        return out

    def listenAddrsChanged(self) -> None:
        """
        The node's listen addresses changed after start (the Tor service
        listens on the onion address once it is published): tell the
        observers (L{onChange}), so identify pushes it and name records
        are republished with it.
        """
        self._changed()

    def observe(self, observed: Multiaddr, observer: Any) -> None:
        """
        Peer C{observer} says it sees us at C{observed} (identify's
        observed address).  Bounded: at most L{MAX_OBSERVED} addresses and
        L{MAX_OBSERVERS} observers each; a new address pushes out the
        oldest of the least observed ones.  Unspecified, multicast and
        reserved addresses mean nothing and are ignored.

        @param observer: who observed it; observations by the same
            observer count once (see L{observerGroup} for what the node
            passes).
        """
        observed = observed.withoutPeerID()
        if addrScope(observed) == "invalid":
            return
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
        if self.reachability == "unknown" and not self._confirmed and self.looksSymmetric():
            self.log.info(
                "peers see this node at {ip} on a different port each: the NAT maps every connection anew "
                "(symmetric), so no address of ours can be dialled; treating the node as private",
                ip=_ipOf(observed),
            )
            self.setReachability("private")

    def looksSymmetric(self) -> bool:
        """
        Whether observations show an address-dependent (symmetric) NAT:
        for one public IP, at least C{observerThreshold} distinct
        observers each saw a port no other observer saw.  Such a node never
        gets a candidate (no address is seen twice), so AutoNAT never
        rules on it; without this it would stay C{"unknown"} and serve the
        DHT that nobody can reach it for.
        """
        byIP: dict[str, dict[str, set[Any]]] = {}
        for addr, peers in self._observed.items():
            if addrScope(addr) != "public":
                continue
            ip = _ipOf(addr)
            target = addr.tcpTarget()
            if ip is None or target is None:
                continue
            byIP.setdefault(ip, {})[str(target[1])] = peers
        for ports in byIP.values():
            if len(ports) < self.observerThreshold:
                continue
            if any(len(peers) >= self.observerThreshold for peers in ports.values()):
                continue
            observers = set().union(*ports.values())
            if len(observers) >= self.observerThreshold:
                return True
        return False

    def observed(self) -> dict[Multiaddr, int]:
        """
        Each observed address with how many distinct peers reported it.
        """
        return {a: len(p) for a, p in self._observed.items()}

    def candidates(self) -> list[Multiaddr]:
        """
        Addresses worth asking AutoNAT about: public listen addresses,
        external ones (L{addCandidate}: a port mapping, a TURN
        allocation) and observed public addresses seen by enough distinct
        peers, not yet confirmed or rejected.
        """
        out: list[Multiaddr] = []
        for addr in [*self.listenAddrs(), *self._external]:
            if addrScope(addr) == "public" and addr not in out:
                out.append(addr)
        for addr, peers in self._observed.items():
            if len(peers) >= self.observerThreshold and addrScope(addr) == "public" and addr not in out:
                out.append(addr)
        return [a for a in out if a not in self._confirmed and a not in self._rejected]

    def addCandidate(self, addr: Multiaddr) -> None:
        """
        An address we learned we may have from outside identify (a
        gateway's port mapping, a TURN allocation): a candidate for AutoNAT
        to confirm.  At most 8 are kept (the oldest is dropped).
        """
        addr = addr.withoutPeerID()
        if addr in self._external:
            return
        self._external.append(addr)
        del self._external[:-8]
        self._rejected.pop(addr, None)
        self._changed()

    def removeCandidate(self, addr: Multiaddr) -> None:
        """
        That address is gone (the mapping was removed or expired): it is
        no candidate any more, and no longer confirmed either.
        """
        addr = addr.withoutPeerID()
        changed = False
        if addr in self._external:
            self._external.remove(addr)
            changed = True
        if addr in self._confirmed:
            del self._confirmed[addr]
            changed = True
        if changed:
            self._changed()

    def confirm(self, addr: Multiaddr) -> None:
        """
        AutoNAT: a peer dialled C{addr} back.  The node is public.
        """
        addr = addr.withoutPeerID()
        self._rejected.pop(addr, None)
        changed = addr not in self._confirmed
        if changed:
            self._confirmed[addr] = None
            _trim(self._confirmed)
        if self.reachability != "public":
            self.reachability = "public"
            changed = True
        if changed:
            self._changed()

    def reject(self, addr: Multiaddr) -> None:
        """
        AutoNAT: C{addr} could not be dialled back.  With no confirmed
        address left, the node is private.
        """
        addr = addr.withoutPeerID()
        self._rejected.pop(addr, None)
        self._rejected[addr] = None
        _trim(self._rejected)
        changed = addr in self._confirmed
        self._confirmed.pop(addr, None)
        if not self._confirmed and self.reachability != "private":
            self.reachability = "private"
            changed = True
        if changed:
            self._changed()

    def confirmed(self) -> list[Multiaddr]:
        return list(self._confirmed)

    def rejected(self) -> list[Multiaddr]:
        return list(self._rejected)

    def setReachability(self, reachability: Reachability) -> None:
        if reachability != self.reachability:
            self.reachability = reachability
            self._changed()

    def setRelayAddrs(self, addrs: Iterable[Multiaddr], kind: str = "circuit") -> None:
        """
        The current addresses of one kind of relay, replacing the previous
        ones of that kind: the relay client's C{.../p2p/RELAY/p2p-circuit}
        addresses (C{"circuit"}), or a TURN allocation's relayed address
        (C{"turn"}: reachable through the TURN server, but no proof that
        the node itself is public, so it is no AutoNAT candidate and does
        not change the reachability).  Circuit addresses come first.
        """
        mine: list[Multiaddr] = []
        for a in addrs:
            if a not in mine:
                mine.append(a)
        if mine == self._relayKinds.get(kind, []):
            return
        self._relayKinds[kind] = mine
        new: list[Multiaddr] = []
        for k in sorted(self._relayKinds, key=lambda k: (k != "circuit", k)):
            new.extend(a for a in self._relayKinds[k] if a not in new)
        self._relay = new
        self._changed()

    def relayAddrs(self, kind: Optional[str] = None) -> list[Multiaddr]:
        """
        The relay addresses of every kind (circuit first), or only those
        of C{kind} (C{"circuit"}, C{"turn"}): a hole punch offers the TURN
        relayed address, which a peer can dial once the allocation
        permits its IP, but never a circuit address.
        """
        if kind is not None:
            return list(self._relayKinds.get(kind, ()))
        return list(self._relay)

    # -- what we tell ----------------------------------------------------

    def advertisedFor(self, peerAddr: Optional[Multiaddr]) -> list[Multiaddr]:
        """
        The addresses to tell a peer connected from C{peerAddr} (its
        address as our socket sees it; L{None} or a non-IP address: treated
        as public): confirmed addresses, then the listen addresses it can
        reach by libp2p's address filtering (L{reachableFrom}), then relay
        addresses, then onion ones (every peer gets those: anyone with Tor
        reaches them from anywhere).  A node whose only transport is Tor
        listens on its onion address alone, has no confirmed or relay
        address (the NAT service runs nothing that could find one), and
        so tells nobody anything else.
        """
        listen = self.listenAddrs()
        out = reachableFrom([*self._confirmed, *(a for a in listen if not a.isOnion())], peerAddr)
        out.extend(a for a in self._relay if a not in out)
        out.extend(a for a in listen if a.isOnion() and a not in out)
        return out

    def shareable(self) -> list[Multiaddr]:
        """
        The addresses for share addresses and name records: confirmed
        public ones and relay ones, then the rest of the listen addresses,
        public, then other (names, C{/memory}), then onion, then private,
        then loopback.

        Onion addresses come after everything a stranger could use without
        Tor, but before private and loopback ones (which serve only peers
        on our own network or machine): a stranger anywhere can use an
        onion address, and lists of addresses get cut short (a DHT peer
        record keeps 16, name records have their own bound), so the one
        address that reaches a host nothing else reaches must not be the
        one cut for a docker bridge or C{::1}.  The order does not make a
        dialler try Tor early: Beam's dialer dials onion addresses only
        after every other one failed, wherever they stand in the list.
        """
        rank = {"public": 0, "other": 1, "onion": 2, "private": 3, "loopback": 4}
        out = [*self._confirmed, *(a for a in self._relay if a not in self._confirmed)]
        rest = sorted(
            self.listenAddrs(), key=lambda a: rank["onion"] if a.isOnion() else rank.get(addrScope(a), 5)
        )
        out.extend(a for a in rest if a not in out and addrScope(a) != "invalid")
        return out

    def hasReachableAddress(self) -> bool:
        """
        Whether a stranger anywhere could dial us: a confirmed address, a
        relay address, or an onion address (for a stranger with Tor).
        """
        return bool(self._confirmed or self._relay) or any(a.isOnion() for a in self.listenAddrs())

    def hasPublicListenAddress(self) -> bool:
        """
        Whether one of the machine's own addresses is public (it may still
        be firewalled: only AutoNAT can tell).
        """
        return any(addrScope(a) == "public" for a in self.listenAddrs())

    # -- observers -------------------------------------------------------

    def onChange(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback()} after each change of what the node may tell
        others: a new candidate, a verdict, the reachability, the relay
        addresses.
        """
        self._observers.append(callback)

    def _changed(self) -> None:
        for callback in list(self._observers):
            try:
                callback()
            except Exception:
                self.log.failure("address book observer failed")


def _trim(table: dict[Multiaddr, None]) -> None:
    while len(table) > MAX_VERDICTS:
        del table[next(iter(table))]
