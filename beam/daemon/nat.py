"""
NAT traversal for a daemon's node: the C{"nat"} built-in service.

The pieces live in L{beam.p2p} (the address book, AutoNAT v2, circuit
relay v2, STUN); this service decides when each of them runs, from what
the node has learned about itself (C{node.addresses.reachability}):

 - always: the relay transport (so C{/p2p-circuit} addresses can be
   dialled), the relay client (whose stop handler takes circuits from
   relays we hold a reservation on) and the AutoNAT client (which sets the
   reachability);
 - while the node is I{public}, or has a public listen address that
   AutoNAT has not judged yet: the AutoNAT server.  A server that is not
   reachable itself would still dial others back correctly, but a node
   behind a home NAT could dial a neighbour's public address through its
   own router (a hairpin) and confirm an address strangers cannot reach;
   and public listen addresses must be served before any verdict, or the
   first public nodes of a network could never confirm each other;
 - while the node is I{public} (C{relay = "default"}): a relay with the
   spec's default limits (2 minutes, 128 KiB per circuit: enough to
   coordinate a hole punch, not to carry a tunnel).  C{relay = "open"}
   relays whole tunnels, from start, public or not (the operator chose
   it); C{relay = "off"} relays for no one;
 - while the node is I{public} and C{stun_server} is true: a STUN binding
   server on UDP at each TCP listen address (same IP, same port number),
   so the network needs no outside STUN server.  A private node's answers
   would be useless to anyone outside its LAN, so it does not answer;
 - while the node is I{private} (or still I{unknown} after
   L{NatService.unknownGrace} seconds without a public listen address):
   reservations on up to L{NatService.maxRelays} relays among the
   connected peers whose identify lists the hop protocol, bootstrap peers
   first.  A relay that refuses is skipped for a while and the next one
   tried; a lost reservation is replaced by another relay when one is
   available (the relay client keeps retrying the lost one otherwise).
   The relay addresses go into the address book, and from there into
   identify, share addresses and name records.  Once public, the
   reservations are released;
 - while relays are wanted and too few connected peers relay: relays
   found through the DHT (L{NatService._discoverRelays}).  Every DHT
   server is dialable by construction (a routing table admits a server
   only with addresses we could dial, see L{beam.dht.service}), so the
   routing table's peers, and when it has too few new ones the peers
   closest to a random key, are candidates: we connect to a few of them
   (at most L{NatService.maxDialsPerMinute} dials a minute, bootstrap
   peers first; a peer dialled is not dialled again for
   L{NatService.probeAgainAfter} seconds), and identify tells which ones
   relay; those join the connected candidates above;
 - once at start, when C{stun_servers} is set: STUN behaviour discovery
   (RFC 5780), kept as L{NatService.behaviour} for status;
 - always: DCUtR (L{HolePuncher}): a relayed connection we receive is
   upgraded to a direct one by TCP simultaneous open where the NATs allow
   it (the connection's C{path} becomes C{"hole-punched"}); a failure is
   logged in one line ("hole punch failed, staying on relay via PEER")
   and the relayed connection stays;
 - with C{port_mapping = true}: a L{PortMapper} keeps the TCP listen port
   mapped on the home gateway (NAT-PMP, then UPnP-IGD); the external
   address is an AutoNAT candidate while the mapping lasts, and inbound
   connections from a public address to our private listen address while
   a mapping exists are shown as C{"port-mapped"};
 - while relays are wanted (as for reservations) and C{turn_servers} is
   set: a TCP allocation on the first TURN server that works
   (L{TurnTransport}).  Only then, since a TURN server's bandwidth costs
   its operator.  Its relayed address is a relay address (identify, share
   addresses, name records) but no AutoNAT candidate: it says nothing
   about whether the node itself is reachable.  RFC 6062 lets only
   permitted IPs in: the IPs of peers we are directly connected to are
   permitted on it, and so are a peer's public IPs as soon as a hole
   punch's DCUtR exchange (over a circuit relay, the stranger's first
   contact) tells them, since our CONNECT offers the relayed address
   for the peer to dial.

With tor mode C{"always"} (C{torMode}) none of the above runs: no AutoNAT
client or server, no relay transport, reservations or relay service, no
DCUtR, no STUN client or server, no TURN and no port mapping.  Each of
them either tells peers or servers our IP address (AutoNAT asks peers
to dial us back at it; a reservation's relay and a TURN server see where
we connect from; STUN and port mapping exist to learn and publish it), or
makes us dial and accept outside Tor.  The service stays (its status says
C{"disabled": "tor always"}), and L{watchAddrs} still works: the name
service republishes when the onion address appears.  In C{"fallback"}
and C{"off"} everything runs as described; a connection over Tor is not
relayed (C{limited}), so DCUtR never tries to punch one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.errors import BeamError, describe
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.autonat import AutoNATClient, AutoNATServer
from beam.p2p.relay.client import RelayClient, Reservation
from beam.p2p.relay.hop import RelayLimits, RelayService
from beam.p2p.relay.messages import HOP_PROTOCOL
from beam.p2p.relay.transport import RelayTransport

if TYPE_CHECKING:
    from beam.p2p.holepunch.dcutr import HolePuncher
    from beam.p2p.nat import NatBehaviour
    from beam.p2p.nat.portmap import PortMapper
    from beam.p2p.nat.stunserver import StunServer
    from beam.p2p.nat.turntransport import TurnTransport

__all__ = ["NatService"]

#: The most peers a DHT lookup for relays leaves us remembering.
_MAX_FOUND = 64


class NatService(MultiService):
    """
    See the module docstring.

    @ivar transport: the node's L{RelayTransport}.
    @ivar relayClient: the L{RelayClient} (while running).
    @ivar autonatClient: the L{AutoNATClient}.
    @ivar autonatServer: the L{AutoNATServer} while it serves, else L{None}.
    @ivar relayService: the L{RelayService} while it relays, else L{None}.
    @ivar stunServers: the L{StunServer}s answering now.
    @ivar behaviour: what STUN found out about our NAT, once known.
    @ivar stunError: why STUN discovery failed, if it did.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        node: Any,
        *,
        relayMode: str = "default",
        relayLimits: Optional[dict[str, Any]] = None,
        bootstrap: Sequence[Multiaddr] = (),
        stunServers: Sequence[str] = (),
        stunServer: bool = True,
        maxRelays: int = 2,
        unknownGrace: float = 30.0,
        checkInterval: float = 30.0,
        refusedFor: float = 600.0,
        autonat: Optional[dict[str, Any]] = None,
        discover: Optional[Callable[..., Deferred[Any]]] = None,
        makeStunServer: Optional[Callable[[Any, str, int], Any]] = None,
        settleDelay: float = 2.0,
        holePunch: bool = True,
        portMapping: bool = False,
        makePortMapper: Optional[Callable[..., Any]] = None,
        turnServers: Sequence[Any] = (),
        makeTurn: Optional[Callable[..., Any]] = None,
        turnRetry: float = 60.0,
        dht: Any = None,
        maxDialsPerMinute: int = 8,
        probeAgainAfter: float = 600.0,
        lookupInterval: float = 60.0,
        torMode: str = "off",
    ) -> None:
        """
        @param relayMode: C{"off"}, C{"default"} or C{"open"} (see the
            module docstring).
        @param relayLimits: changes to L{RelayLimits} (the configuration's
            C{[relay]} table), for either mode.
        @param bootstrap: the bootstrap peers, preferred as relays.
        @param stunServers: C{"host:port"} STUN servers to classify our
            NAT with at start (none: no discovery).
        @param stunServer: answer STUN while public.
        @param maxRelays: reservations to hold while private.
        @param unknownGrace: seconds of unknown reachability (with no
            public listen address) after which we reserve anyway.
        @param checkInterval: seconds between periodic checks of the
            reservations (the event-driven checks do most of the work).
        @param refusedFor: seconds a relay that refused or failed us is
            not asked again.
        @param autonat: keyword arguments for the L{AutoNATClient}.
        @param discover: the STUN discovery function (tests pass a fake).
        @param makeStunServer: makes a STUN server (tests pass a fake).
        @param settleDelay: seconds the node's addresses must stay unchanged
            before L{watchAddrs} callbacks run.
        @param holePunch: run DCUtR (L{HolePuncher}).
        @param portMapping: keep the TCP listen port mapped on the gateway.
        @param makePortMapper: makes the L{PortMapper} (tests pass a fake):
            C{makePortMapper(reactor, port, onAddress=...)}.
        @param turnServers: TURN servers (C{host}, C{port}, C{username},
            C{password}, C{url}), tried in order.
        @param makeTurn: makes the L{TurnTransport} (tests pass a fake):
            C{makeTurn(node, (host, port), username, password)}.
        @param turnRetry: seconds before the next TURN server is tried
            after one failed.
        @param dht: the DHT to find relays through (its routing table,
            C{kad.routingTable.peers()}, and C{closestPeers(key)}); by
            default our sibling service C{"kademlia"}, if there is one.
        @param maxDialsPerMinute: dials to DHT peers, looking for relays,
            in any minute.
        @param probeAgainAfter: seconds before a DHT peer we dialled is
            dialled again.
        @param lookupInterval: seconds between DHT lookups for more peers.
        @param torMode: the node's tor mode (C{config.tor.mode}: C{"off"},
            C{"fallback"} or C{"always"}); C{"always"} disables the whole
            service (see the module docstring).
        """
        super().__init__()
        self.reactor = reactor
        self.node = node
        self.torMode = torMode
        #: Why the service runs nothing, or L{None} when it works.
        self.disabled: Optional[str] = "tor always" if torMode == "always" else None
        self.relayMode = relayMode
        self.relayLimits = dict(relayLimits or {})
        self.bootstrapPeers = [p for p in (a.peerID() for a in bootstrap) if p is not None]
        self.stunServerAddrs = list(stunServers)
        self.stunServerWanted = stunServer
        self.maxRelays = maxRelays
        self.unknownGrace = unknownGrace
        self.checkInterval = checkInterval
        self.refusedFor = refusedFor
        self._discover = discover
        self._makeStunServer = makeStunServer
        found = [t for t in node.transports if isinstance(t, RelayTransport)]
        if found:
            self.transport = found[0]
        else:
            self.transport = RelayTransport(node)
            if self.disabled is None:
                # A Tor-only node dials nothing but through Tor: it gets
                # no transport that would open other connections.
                node.transports.append(self.transport)
        self.relayClient: Optional[RelayClient] = None
        self.autonatClient = AutoNATClient(node, **(autonat or {}))
        if self.disabled is None:
            self.autonatClient.setServiceParent(self)
        self.autonatServer: Optional[AutoNATServer] = None
        self.relayService: Optional[RelayService] = None
        self.stunServers: list[StunServer] = []
        self.stunServerError: Optional[str] = None
        self.behaviour: Optional[NatBehaviour] = None
        self.stunError: Optional[str] = None
        self._relays: list[PeerID] = []
        self._refused: dict[PeerID, float] = {}
        self._unknownSince: Optional[float] = None
        self._scheduled: Any = None
        self._loop: Optional[LoopingCall] = None
        self._subscribed = False
        self._discovery: Optional[Deferred[Any]] = None
        self.settleDelay = settleDelay
        self._watchers: list[_AddrWatcher] = []
        self.holePunch = holePunch
        self.holePuncher: Optional[HolePuncher] = None
        self.lastPunchFailure: Optional[str] = None
        self.portMapping = portMapping
        self._makePortMapper = makePortMapper
        self.portMapper: Optional[PortMapper] = None
        self.portMapError: Optional[str] = None
        self._mappedAddr: Optional[Multiaddr] = None
        self.turnServers = list(turnServers)
        self._makeTurn = makeTurn
        self.turnRetry = turnRetry
        self.turn: Optional[TurnTransport] = None
        self.turnServer: Any = None
        self.turnError: Optional[str] = None
        self._turnIndex = 0
        self._turnNotBefore = 0.0
        self._turnStarting: Optional[Deferred[Any]] = None
        self._stopping = False
        self._dht = dht
        self.maxDialsPerMinute = maxDialsPerMinute
        self.probeAgainAfter = probeAgainAfter
        self.lookupInterval = lookupInterval
        #: DHT peers dialled lately, and when they may be dialled again.
        self._probed: dict[PeerID, float] = {}
        self._dials: list[float] = []
        self._probing: dict[PeerID, Deferred[Any]] = {}
        self._lookup: Optional[Deferred[Any]] = None
        self._lastLookup: Optional[float] = None
        #: Peers a lookup found, with their addresses (at most L{_MAX_FOUND}).
        self._found: dict[PeerID, tuple[Multiaddr, ...]] = {}

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        self._stopping = False
        if self.disabled is not None:
            super().startService()
            if not self._subscribed:
                self.node.addresses.onChange(self._addressesChanged)
                self._subscribed = True
            self.log.info(
                "tor mode always: AutoNAT, relays, hole punching, STUN, TURN and port mapping are off"
            )
            return
        self.relayClient = RelayClient(self.node, self.transport)
        self.relayClient.addObserver(self._reservationEvent)
        self._relays = []
        self._unknownSince = self.reactor.seconds()
        super().startService()
        if not self._subscribed:
            # The address book cannot unsubscribe: the callback checks
            # whether we run.
            self.node.addresses.onChange(self._addressesChanged)
            self._subscribed = True
        self.node.addConnectionObserver(self._connectionEvent)
        self._loop = LoopingCall(self._evaluate)
        self._loop.clock = self.reactor
        self._loop.start(self.checkInterval, now=False)
        if self.relayMode == "open":
            self._startRelayService()
        if self.holePunch:
            self._startHolePuncher()
        if self.portMapping:
            self._startPortMapper()
        self._schedule()
        if self.stunServerAddrs:
            self._startDiscovery()

    def stopService(self) -> Any:
        if not self.running:
            return None
        if self.disabled is not None:
            self._stopping = True
            for watcher in self._watchers:
                watcher.cancel()
            return super().stopService()
        # What stopping undoes (the TURN and mapped addresses) changes the
        # address book: schedule nothing more.
        self._stopping = True
        stoppingTurn = self._stopTurn()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        if self._discovery is not None:
            self._discovery.cancel()
        for pending in [self._lookup, *self._probing.values()]:
            if pending is not None and not pending.called:
                pending.cancel()
        self._lookup = None
        self._probing = {}
        self.node.removeConnectionObserver(self._connectionEvent)
        if self.relayClient is not None:
            self.relayClient.stop()
        self._relays = []
        for watcher in self._watchers:
            watcher.cancel()
        self._stopStunServers()
        if self.holePuncher is not None:
            self.holePuncher.stop()
            self.holePuncher = None
        # The servers come and go with the reachability: leave none
        # behind as children, so a restart starts from a clean slate.
        stopping = [stoppingTurn]
        for child in (self.autonatServer, self.relayService, self.portMapper):
            if child is not None:
                stopping.append(maybeDeferred(child.disownServiceParent))
        self.autonatServer = None
        self.relayService = None
        self.portMapper = None
        stopping.append(maybeDeferred(super().stopService))
        return gatherResults(stopping, consumeErrors=True).addCallback(lambda _: None)

    # -- triggers ----------------------------------------------------------

    def _addressesChanged(self) -> None:
        if self.running and not self._stopping:
            self._schedule()
            for watcher in self._watchers:
                watcher.changed()

    def watchAddrs(self, current: Callable[[], Any], act: Callable[[], Any]) -> None:
        """
        Call C{act()} whenever what C{current()} returns (the addresses a
        name record lists) has changed and then stayed the same for
        L{settleDelay} seconds (changes come in bursts: a reservation,
        then identify pushes), while we run.  The name service republishes
        its records this way.
        """
        self._watchers.append(_AddrWatcher(self.reactor, current, act, self.settleDelay))

    def _connectionEvent(self, event: str, conn: Any) -> None:
        if event == "connected":
            self._notePortMapped(conn)
        if event in ("identified", "updated", "disconnected"):
            self._schedule()

    def _reservationEvent(self, event: str, reservation: Reservation) -> None:
        if event in ("lost", "expired"):
            self.log.info("relay reservation on {relay} {event}", relay=reservation.relay, event=event)
            self._schedule()
        elif event == "reserved":
            self.log.info("reserved a slot on relay {relay}; reachable through it", relay=reservation.relay)

    def _schedule(self) -> None:
        if not self.running or self._stopping or self.disabled is not None:
            return
        if self._scheduled is not None and self._scheduled.active():
            return
        self._scheduled = self.reactor.callLater(0, self._evaluate)

    # -- deciding ----------------------------------------------------------

    @property
    def reachability(self) -> str:
        return str(self.node.addresses.reachability)

    def wantsRelays(self) -> bool:
        """
        Whether we should hold reservations: AutoNAT found us private, or
        could not tell for L{unknownGrace} seconds while no listen address
        of ours is public.
        """
        book = self.node.addresses
        if book.reachability == "private":
            return True
        if book.reachability == "public" or book.hasPublicListenAddress():
            return False
        since = self._unknownSince if self._unknownSince is not None else self.reactor.seconds()
        return self.reactor.seconds() - since >= self.unknownGrace

    def _evaluate(self) -> None:
        """
        Start or stop the services the reachability calls for, and top up
        or release the reservations.
        """
        self._scheduled = None
        if not self.running or self.disabled is not None:
            return
        book = self.node.addresses
        if book.reachability != "unknown":
            self._unknownSince = None
        elif self._unknownSince is None:
            self._unknownSince = self.reactor.seconds()
        public = book.reachability == "public"
        self._setAutoNATServer(public or (book.reachability == "unknown" and book.hasPublicListenAddress()))
        if self.relayMode == "default":
            if public:
                self._startRelayService()
            else:
                self._stopRelayService()
        self._setStunServers(public and self.stunServerWanted)
        if self.wantsRelays():
            self._topUpRelays()
            self._startTurn()
        elif public:
            self._releaseRelays()
            if self.turn is not None or self._turnStarting is not None:
                self.log.info("reachable directly: releasing the TURN allocation")
                self._stopTurn()

    def _setAutoNATServer(self, wanted: bool) -> None:
        if wanted and self.autonatServer is None:
            self.autonatServer = AutoNATServer(self.node)
            self.autonatServer.setServiceParent(self)
            self.log.info("serving AutoNAT (dial-backs for peers checking their addresses)")
        elif not wanted and self.autonatServer is not None:
            server, self.autonatServer = self.autonatServer, None
            maybeDeferred(server.disownServiceParent).addErrback(
                lambda f: self.log.failure("stopping the AutoNAT server failed", f))

    def _startRelayService(self) -> None:
        if self.relayService is not None:
            return
        if self.relayMode == "open":
            limits = RelayLimits.open(**self.relayLimits)
        else:
            limits = RelayLimits(**self.relayLimits)
        self.relayService = RelayService(self.node, limits)
        self.relayService.setServiceParent(self)
        self.log.info("relaying for peers behind NATs ({how})",
                      how="open: whole tunnels" if self.relayMode == "open" else "short circuits, the spec's limits")

    def _stopRelayService(self) -> None:
        if self.relayService is not None:
            service, self.relayService = self.relayService, None
            service.disownServiceParent()

    # -- reservations --------------------------------------------------------

    def candidates(self) -> list[PeerID]:
        """
        Connected peers that relay (their identify lists the hop
        protocol), over direct connections, bootstrap peers first; not
        those we use already or that refused us lately.
        """
        now = self.reactor.seconds()
        for peer, until in list(self._refused.items()):
            if until <= now:
                del self._refused[peer]
        found: list[PeerID] = []
        for conn in self.node.liveConnections():
            peer = conn.remotePeer
            if getattr(conn, "limited", False) or peer in found or peer == self.node.peerID:
                continue
            identify = getattr(conn, "identify", None)
            if identify is None or HOP_PROTOCOL not in identify.protocols:
                continue
            if peer in self._relays or peer in self._refused:
                continue
            found.append(peer)
        rank = {p: i for i, p in enumerate(self.bootstrapPeers)}
        found.sort(key=lambda p: rank.get(p, len(rank)))
        return found

    def _topUpRelays(self) -> None:
        client = self.relayClient
        assert client is not None
        # A relay whose reservation is lost and that is no longer
        # connected is replaced when another one is at hand.
        spare = self.candidates()
        for peer in list(self._relays):
            if peer not in client.reservations and self.node.connectionTo(peer) is None and spare:
                self._drop(peer)
        while len(self._relays) < self.maxRelays and spare:
            peer = spare.pop(0)
            self._relays.append(peer)
            client.reserve(peer, keep=True).addErrback(self._reserveFailed, peer)
        if len(self._relays) < self.maxRelays:
            self._discoverRelays(self.maxRelays - len(self._relays))

    # -- finding relays through the DHT ------------------------------------------

    def _dhtService(self) -> Any:
        """
        The DHT to look for relays in: the one we were given, else our
        sibling service C{"kademlia"} (made after us, so looked up late).
        """
        if self._dht is not None:
            return self._dht
        parent = self.parent
        if parent is None:
            return None
        try:
            return parent.getServiceNamed("kademlia")
        except (KeyError, AttributeError):
            return None

    def _dialsLeft(self) -> int:
        now = self.reactor.seconds()
        self._dials = [t for t in self._dials if t > now - 60.0]
        return max(0, self.maxDialsPerMinute - len(self._dials))

    def _discoverRelays(self, wanted: int) -> None:
        """
        Connect to a few DHT peers we are not connected to, so identify
        tells whether they relay (then L{candidates} has them): bootstrap
        peers first, then the routing table's and those a lookup found.
        With too few such peers, look up the peers closest to a random key
        (at most once per L{lookupInterval}).
        """
        dht = self._dhtService()
        if dht is None or not getattr(dht, "running", True):
            return
        now = self.reactor.seconds()
        for peer, until in list(self._probed.items()):
            if until <= now:
                del self._probed[peer]
        known: dict[PeerID, tuple[Multiaddr, ...]] = {}
        try:
            for info in dht.kad.routingTable.peers():
                known[info.peer] = tuple(info.addrs)
        except AttributeError:
            pass
        for peer, addrs in self._found.items():
            known.setdefault(peer, addrs)
        fresh = [
            p for p, addrs in known.items()
            if addrs and p != self.node.peerID and p not in self._probed and p not in self._refused
            and p not in self._relays and self.node.connectionTo(p) is None
        ]
        rank = {p: i for i, p in enumerate(self.bootstrapPeers)}
        fresh.sort(key=lambda p: rank.get(p, len(rank)))
        # A few at a time: each one dialled is one more connection; a
        # couple per relay wanted, as most DHT peers may not relay.
        room = min(self._dialsLeft(), 2 * wanted + 2 - len(self._probing))
        for peer in fresh[:max(0, room)]:
            self._probe(peer, known[peer])
        if len(fresh) <= room:
            self._lookMore(dht)

    def _probe(self, peer: PeerID, addrs: Sequence[Multiaddr]) -> None:
        now = self.reactor.seconds()
        self._probed[peer] = now + self.probeAgainAfter
        self._dials.append(now)
        self.node.peerStore.addAddrs(peer, [a for a in addrs if a.tcpTarget() is not None][:8], "dht")
        self.log.debug("asking DHT peer {peer} whether it relays", peer=peer)
        d = self._probing[peer] = self.node.connect(peer)

        def done(result: Any) -> None:
            self._probing.pop(peer, None)
            if isinstance(result, Failure):
                self.log.debug("could not reach DHT peer {peer}: {why}", peer=peer, why=describe(result))
            # Identify, once it arrives, triggers the next evaluation;
            # a failure frees a dial slot.
            self._schedule()

        d.addBoth(done)

    def _lookMore(self, dht: Any) -> None:
        now = self.reactor.seconds()
        if self._lookup is not None:
            return
        if self._lastLookup is not None and now - self._lastLookup < self.lookupInterval:
            return
        closest = getattr(dht, "closestPeers", None)
        if closest is None:
            return
        self._lastLookup = now
        d = self._lookup = closest(os.urandom(32))

        def found(peers: Any) -> None:
            self._lookup = None
            for info in peers:
                if info.peer != self.node.peerID and info.addrs:
                    self._found.pop(info.peer, None)
                    self._found[info.peer] = tuple(info.addrs)
            while len(self._found) > _MAX_FOUND:
                del self._found[next(iter(self._found))]
            self._schedule()

        def failed(f: Failure) -> None:
            self._lookup = None
            self.log.debug("DHT lookup for relays failed: {why}", why=describe(f))

        d.addCallbacks(found, failed)

    def _reserveFailed(self, f: Failure, peer: PeerID) -> None:
        if not self.running:
            return
        self.log.info("could not reserve on relay {relay}: {why}", relay=peer, why=describe(f))
        if self.relayClient is not None and peer in self.relayClient.reservations:
            return  # a renewal failed; the client retries until expiry
        self._refused[peer] = self.reactor.seconds() + self.refusedFor
        self._drop(peer)
        self._schedule()

    def _drop(self, peer: PeerID) -> None:
        if peer in self._relays:
            self._relays.remove(peer)
        if self.relayClient is not None:
            self.relayClient.release(peer)

    def _releaseRelays(self) -> None:
        if self._relays:
            self.log.info("reachable directly: releasing {n} relay reservation(s)", n=len(self._relays))
        for peer in list(self._relays):
            self._drop(peer)

    # -- STUN ----------------------------------------------------------------

    def _startDiscovery(self) -> None:
        discover = self._discover
        if discover is None:
            from beam.p2p.nat.stunclient import discover as stunDiscover

            discover = stunDiscover
        d = discover(self.reactor, self.stunServerAddrs, rc=3)
        self._discovery = d

        def found(behaviour: NatBehaviour) -> None:
            self._discovery = None
            self.behaviour = behaviour
            self.stunError = None
            self.log.info("STUN: {mapping} mapping, {filtering} filtering: strategy {strategy}",
                          mapping=behaviour.mapping, filtering=behaviour.filtering, strategy=behaviour.strategy)
            # The classification chooses the strategy: a NAT that filters
            # unsolicited traffic (or maps anew per destination) makes the
            # node private now, so relays (and TURN) are sought at once
            # instead of after unknownGrace.  AutoNAT still has the last
            # word: a confirmed address makes the node public again.
            book = self.node.addresses
            if behaviour.strategy in ("punch", "relay") and book.reachability == "unknown":
                book.setReachability("private")

        def failed(f: Failure) -> None:
            self._discovery = None
            if not self.running:
                return
            self.stunError = describe(f)
            self.log.warn("STUN discovery failed: {why}", why=self.stunError)

        d.addCallbacks(found, failed)

    def _setStunServers(self, wanted: bool) -> None:
        if not wanted:
            self._stopStunServers()
            return
        if self.stunServers or self.stunServerError is not None:
            return
        make = self._makeStunServer
        if make is None:
            from beam.p2p.nat.stunserver import StunServer

            make = StunServer
        for addr in self.node.listenAddrs:
            target = addr.tcpTarget()
            if target is None or target[2] not in ("ip4", "ip6"):
                continue
            host, port, _ = target
            try:
                server = make(self.reactor, host, port)
                server.startService()
            except Exception as e:
                self.stunServerError = f"cannot answer STUN on UDP {host}:{port}: {describe(e)}"
                self.log.warn("{why}", why=self.stunServerError)
                continue
            self.stunServers.append(server)
        if self.stunServers:
            self.log.info("answering STUN on UDP {where}",
                          where=", ".join(f"{s.primary[0]}:{s.primary[1]}" for s in self.stunServers))

    def _stopStunServers(self) -> None:
        servers, self.stunServers = self.stunServers, []
        self.stunServerError = None
        for server in servers:
            try:
                server.stopService()
            except Exception:
                self.log.failure("stopping the STUN server failed")

    # -- hole punching -------------------------------------------------------

    def _startHolePuncher(self) -> None:
        from beam.p2p.holepunch.dcutr import HolePuncher

        self.holePuncher = HolePuncher(self.node)
        self.holePuncher.addObserver(self._punchEvent)

    def _punchEvent(self, event: str, peer: PeerID, details: dict[str, Any]) -> None:
        # The puncher logs the failure itself, in the one line the user
        # reads ("hole punch failed, staying on relay via PEER"); status
        # keeps the last one.
        if event == "failed":
            self.lastPunchFailure = f"hole punch failed, staying on relay via {details.get('relay')}"
        elif event == "synced":
            self._permitPunched(peer, details.get("addrs") or ())

    def _permitPunched(self, peer: PeerID, addrs: Sequence[str]) -> None:
        """
        Permit on our TURN allocation the public IPs a hole punch's
        exchange just told us for C{peer}: our CONNECT offered the relayed
        address, so the peer's simultaneous dial includes it, and RFC 6062
        lets it in only with a permission for its IP.  The permission goes
        straight to the TURN server while the peer learns of the punch
        through the circuit relay, so it is normally there first; if not,
        the punch's next attempt finds it.
        """
        turn = self.turn
        if turn is None:
            return
        ips: list[str] = []
        for text in addrs:
            try:
                target = Multiaddr.fromString(text).tcpTarget()
            except BeamError:
                continue
            if target is not None and target[2] in ("ip4", "ip6") and target[0] not in ips:
                ips.append(target[0])
        if not ips:
            return
        self.log.info("permitting {peer} ({ips}) on the TURN relay", peer=peer, ips=", ".join(ips))
        turn.permit(ips).addErrback(
            lambda f: self.log.info("TURN permission for {peer} failed: {why}", peer=peer, why=describe(f))
        )

    # -- port mapping ----------------------------------------------------------

    def _startPortMapper(self) -> None:
        port = None
        for addr in self.node.listenAddrs:
            target = addr.tcpTarget()
            if target is not None and target[2] == "ip4":
                port = target[1]
                break
        if port is None or not 0 < port < 65536:
            self.portMapError = "no IPv4 TCP listen address to map"
            self.log.warn("port mapping: {why}", why=self.portMapError)
            return
        make = self._makePortMapper
        if make is None:
            from beam.p2p.nat.portmap import PortMapper

            make = PortMapper
        self.portMapError = None
        self.portMapper = make(self.reactor, port, onAddress=self._mappedAddress)
        self.portMapper.setServiceParent(self)

    def _mappedAddress(self, addr: Optional[Multiaddr]) -> None:
        """
        The gateway mapped our port at C{addr} (AutoNAT is to confirm it),
        or the mapping is gone (L{None}).
        """
        old, self._mappedAddr = self._mappedAddr, addr
        book = self.node.addresses
        if old is not None and old != addr:
            book.removeCandidate(old)
        if addr is not None:
            self.log.info("port mapping: reachable at {addr} once AutoNAT confirms it", addr=addr)
            book.addCandidate(addr)

    def _notePortMapped(self, conn: Any) -> None:
        """
        Mark an inbound connection C{"port-mapped"} when it most likely
        came through our mapping: a mapping exists, the peer's address is
        public and the address it reached is a private one of ours on the
        mapped port.  (A full-cone NAT lets such connections in without a
        mapping too; then this is a guess, and status says which way it
        would have worked.)
        """
        mapper = self.portMapper
        if mapper is None or self._mappedAddr is None or conn.direction != "inbound" or conn.limited:
            return
        if getattr(conn, "path", None):
            return
        from beam.p2p.host.addrs import addrScope

        local, remote = conn.localAddr, conn.remoteAddr
        if local is None or remote is None:
            return
        target = local.tcpTarget()
        if target is None or target[1] != mapper.internalPort:
            return
        if addrScope(remote) == "public" and addrScope(local) == "private":
            setattr(conn, "path", "port-mapped")

    # -- TURN ------------------------------------------------------------------

    def _startTurn(self) -> None:
        """
        Allocate on the next TURN server, unless we have an allocation,
        one is under way, or the last failure is too recent.
        """
        if not self.turnServers or self.turn is not None or self._turnStarting is not None:
            return
        if self.reactor.seconds() < self._turnNotBefore:
            return
        server = self.turnServers[self._turnIndex % len(self.turnServers)]
        make = self._makeTurn
        if make is None:
            from beam.p2p.nat.turntransport import TurnTransport

            make = TurnTransport
        turn: Any = make(self.node, (server.host, server.port), server.username, server.password)
        self.turn, self.turnServer = turn, server
        turn.addAddressObserver(self._turnAddress)
        release: Callable[[], Any] = turn.stop
        self.log.info("allocating a relay on TURN server {url}", url=server.url)
        d = self._turnStarting = turn.start()

        def started(_: Any) -> None:
            self._turnStarting = None
            self.turnError = None

        def failed(f: Failure) -> None:
            self._turnStarting = None
            if self.turn is not turn:
                return  # stopped meanwhile
            # describe() words the error; the password is never part of it.
            self.turnError = f"{server.url}: {describe(f)}"
            self.log.warn("TURN allocation failed: {why}", why=self.turnError)
            self._turnIndex += 1
            self._turnNotBefore = self.reactor.seconds() + self.turnRetry
            self.turn = self.turnServer = None
            maybeDeferred(release).addErrback(lambda _: None)
            self.node.addresses.setRelayAddrs([], kind="turn")

        d.addCallbacks(started, failed)

    def _turnAddress(self, old: Optional[Multiaddr], new: Optional[Multiaddr]) -> None:
        if new is not None:
            self.log.info("reachable through TURN at {addr}", addr=new)
        elif old is not None:
            self.log.info("lost the TURN allocation at {addr}", addr=old)
        self.node.addresses.setRelayAddrs([new] if new is not None else [], kind="turn")

    def _stopTurn(self) -> Deferred[None]:
        turn, self.turn, self.turnServer = self.turn, None, None
        starting, self._turnStarting = self._turnStarting, None
        self.node.addresses.setRelayAddrs([], kind="turn")
        if turn is None:
            return succeed(None)
        if starting is not None and not starting.called:
            starting.addErrback(lambda _: None)
        return maybeDeferred(turn.stop).addErrback(
            lambda f: self.log.info("releasing the TURN allocation failed: {why}", why=describe(f)))

    # -- status --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """
        The C{"nat"} section of C{beam status --json}: reachability, what
        STUN found, our reservations, and what we serve.
        """
        book = self.node.addresses
        client = self.relayClient
        now = self.reactor.seconds()
        reservations = []
        if client is not None:
            for r in client.reservations.values():
                reservations.append({
                    "relay": str(r.relay),
                    "expires": r.expire,
                    "expires_in": max(0, round(r.expire - now)),
                    "addrs": [str(a) for a in r.circuitAddrs()],
                })
        pending = [str(p) for p in self._relays if client is None or p not in client.reservations]
        return {
            "disabled": self.disabled,
            "tor_mode": self.torMode,
            "reachability": book.reachability,
            "confirmed_addrs": [str(a) for a in book.confirmed()],
            "relay_addrs": [str(a) for a in book.relayAddrs()],
            "nat": self.behaviour.toJSON() if self.behaviour is not None else None,
            "stun_error": self.stunError,
            "reservations": reservations,
            "reserving": pending,
            "relay_search": {
                "dialling": sorted(str(p) for p in self._probing),
                "dials_last_minute": self.maxDialsPerMinute - self._dialsLeft(),
                "looking_up": self._lookup is not None,
            },
            "relay_mode": self.relayMode,
            "relay_service": self.relayService.status() if self.relayService is not None else None,
            "autonat_server": self.autonatServer is not None,
            "stun_server": [f"{s.primary[0]}:{s.primary[1]}" for s in self.stunServers],
            "stun_server_error": self.stunServerError,
            "hole_punching": self._punchStatus(),
            "port_mapping": self._portMapStatus(),
            "turn": self._turnStatus(),
        }

    def _punchStatus(self) -> Optional[dict[str, Any]]:
        puncher = self.holePuncher
        if puncher is None:
            return None
        return {"active": puncher.active, "punched": puncher.punched, "failed": puncher.failed,
                "last_failure": self.lastPunchFailure}

    def _portMapStatus(self) -> Optional[dict[str, Any]]:
        """
        The mapping: protocol, external address, seconds to expiry, last
        error (L{None} when port mapping is off).
        """
        if not self.portMapping:
            return None
        if self.portMapper is None:
            return {"state": "off", "protocol": None, "external_addr": None, "expires_in": None,
                    "last_error": self.portMapError}
        st = self.portMapper.status()
        return {"state": st.get("state"), "protocol": st.get("protocol"), "internal_port": st.get("internalPort"),
                "external_addr": st.get("externalAddr"), "expires_in": st.get("expiresIn"),
                "last_error": st.get("lastError")}

    def _turnStatus(self) -> Optional[dict[str, Any]]:
        """
        The TURN allocation: server (its URL, never the credentials),
        relayed address, seconds to expiry, last error (L{None} with no
        TURN server configured).
        """
        if not self.turnServers:
            return None
        turn, server = self.turn, self.turnServer
        relayed = turn.relayedAddr() if turn is not None else None
        allocation = getattr(turn, "allocation", None)
        expires = getattr(allocation, "expires", None)
        return {
            "server": server.url if server is not None else None,
            "state": "allocated" if relayed is not None else ("allocating" if turn is not None else "idle"),
            "relayed_addr": str(relayed) if relayed is not None else None,
            "expires_in": max(0, round(expires - self.reactor.seconds())) if isinstance(expires, (int, float)) else None,
            "last_error": self.turnError,
        }


class _AddrWatcher:
    """
    See L{NatService.watchAddrs}.
    """

    def __init__(self, reactor: Any, current: Callable[[], Any], act: Callable[[], Any], delay: float) -> None:
        self.reactor = reactor
        self.current = current
        self.act = act
        self.delay = delay
        self._last: Any = current()
        self._timer: Any = None

    def changed(self) -> None:
        self.cancel()
        self._timer = self.reactor.callLater(self.delay, self._settled)

    def cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _settled(self) -> None:
        self._timer = None
        now = self.current()
        if now != self._last:
            self._last = now
            self.act()
