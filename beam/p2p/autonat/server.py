"""
The AutoNAT v2 server: dial a client back on one of the addresses it
asks about, so it learns which of its addresses the Internet can reach.

A public node offers this to its peers.  It is a service that makes us
dial somewhere on a stranger's word, so the rules are strict:

 - the server dials I{exactly one} address: the first in the client's
   list it is willing to dial (L{AutoNATServer.willDial}): an IP (or, in
   tests, C{/memory}) TCP address, never a relay address, a DNS name, an
   unspecified, multicast or reserved address, and a loopback or private
   address only for a client that itself came from that kind of network
   (a public client cannot point us at our LAN or our own machine: no
   SSRF);
 - an address whose IP is not the one the client connects from is dialled
   only after the client sent L{AutoNATServer.dialDataBytes} bytes of dial
   data (the spec's amplification protection: pointing us at a victim
   costs the attacker more bandwidth than the handshake costs the victim);
 - requests are rate limited globally and per peer, with at most
   C{maxConcurrent} dial backs at once and one per peer
   (L{RateLimiter}); refusals are C{E_REQUEST_REJECTED};
 - the dial back is a I{fresh} connection from a separate dialer
   (L{NodeDialBacker}: its own node with its own identity and
   transports), never the connection the request came on, and never from
   our listen port (the spec asks for this so that a dial back cannot
   become an accidental hole punch); it is timed out and closed once the
   nonce was delivered.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import Any, Optional, Protocol as TypingProtocol, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.errors import BeamError, InvalidMultiaddr
from beam.identity.keys import Identity, PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.autonat._stream import MessageStream
from beam.p2p.autonat.messages import (
    DIAL_BACK_PROTOCOL,
    DIAL_REQUEST_PROTOCOL,
    AutoNATProtocolError,
    DialDataRequest,
    DialDataResponse,
    DialRequest,
    DialResponse,
    DialStatus,
    ResponseStatus,
    decodeDialBackResponse,
    decodeMessage,
    encodeDialBack,
    encodeMessage,
)
from beam.p2p.host.addrs import addrScope

#: Bytes of dial data asked for before dialling an IP other than the
#: client's (the spec says 30 to 100 kB).
DIAL_DATA_BYTES = 30_000


class IDialBacker(TypingProtocol):
    """
    What the server dials back with.
    """

    def canDial(self, addr: Multiaddr) -> bool:
        """
        Whether there is a transport for C{addr}.
        """

    def dialBack(self, peer: PeerID, addr: Multiaddr, nonce: int) -> Deferred[DialStatus]:
        """
        Dial C{peer} at C{addr} on a new connection and deliver C{nonce}
        on C{/libp2p/autonat/2/dial-back}; fires (never fails) with the
        L{DialStatus}.
        """


class RateLimiter:
    """
    Sliding one-minute windows, globally and per peer, and a bound on the
    requests being served at once (one per peer).  Memory is bounded by
    the global rate: only admitted requests are remembered, for one
    window.
    """

    def __init__(
        self,
        clock: Any,
        globalPerMinute: int = 60,
        peerPerMinute: int = 12,
        maxConcurrent: int = 8,
        window: float = 60.0,
    ) -> None:
        self.clock = clock
        self.globalPerMinute = globalPerMinute
        self.peerPerMinute = peerPerMinute
        self.maxConcurrent = maxConcurrent
        self.window = window
        self._all: deque[float] = deque()
        self._perPeer: dict[Any, deque[float]] = {}
        self._active: set[Any] = set()

    def acquire(self, peer: Any) -> Optional[str]:
        """
        Admit one request from C{peer}: L{None}, or why not.  An admitted
        request holds its slot until L{release}.
        """
        now = self.clock.seconds()
        horizon = now - self.window
        while self._all and self._all[0] <= horizon:
            self._all.popleft()
        for key in list(self._perPeer):
            times = self._perPeer[key]
            while times and times[0] <= horizon:
                times.popleft()
            if not times:
                del self._perPeer[key]
        if peer in self._active:
            return "a request from this peer is already being served"
        if len(self._active) >= self.maxConcurrent:
            return f"{self.maxConcurrent} dial backs already under way"
        if len(self._all) >= self.globalPerMinute:
            return f"more than {self.globalPerMinute} requests in {self.window:g} s"
        mine = self._perPeer.get(peer)
        if mine is not None and len(mine) >= self.peerPerMinute:
            return f"more than {self.peerPerMinute} requests from this peer in {self.window:g} s"
        self._all.append(now)
        self._perPeer.setdefault(peer, deque()).append(now)
        self._active.add(peer)
        return None

    def release(self, peer: Any) -> None:
        self._active.discard(peer)

    @property
    def active(self) -> int:
        return len(self._active)


def _ip(addr: Multiaddr) -> Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    comps = addr.components()
    if not comps or comps[0][0] not in ("ip4", "ip6") or comps[0][1] is None:
        return None
    ip = ipaddress.ip_address(comps[0][1])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def sameHost(addr: Multiaddr, observed: Multiaddr) -> bool:
    """
    Whether dialling C{addr} reaches the host the client connects from:
    the same IP address (an IPv4-mapped IPv6 address is its IPv4 address),
    or, on the in-process memory transport, any C{/memory} address (there
    is no one else to amplify against).
    """
    a, b = _ip(addr), _ip(observed)
    if a is not None and b is not None:
        return a == b
    first = addr.protocols()[:1]
    return first == ["memory"] and observed.protocols()[:1] == ["memory"]


class _DialBackSender(MessageStream):
    """
    The server's side of C{/libp2p/autonat/2/dial-back}: write the nonce,
    read the client's C{DialBackResponse}.  L{result} fires with whether
    it came (and was OK).
    """

    what = "AutoNAT dial back"

    def __init__(self, nonce: int) -> None:
        super().__init__()
        self.nonce = nonce
        self.result: Deferred[bool] = Deferred()

    def connectionMade(self) -> None:
        self.send(encodeDialBack(self.nonce))

    def messageReceived(self, raw: bytes) -> None:
        ok = decodeDialBackResponse(raw) == 0
        self.finish()
        if not self.result.called:
            self.result.callback(ok)

    def fail(self, error: BeamError) -> None:
        super().fail(error)
        if not self.result.called:
            self.result.callback(False)

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        if not self.result.called:
            self.result.callback(False)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.result.called:
            self.result.callback(False)


class NodeDialBacker(Service):
    """
    Dial backs from a separate node: its own random identity, its own
    transports (a TCP dial from it never uses our listen port) and its own
    connection pool, so the client's existing connection to us is never
    reused and the dial back proves a fresh inbound connection.  It listens
    nowhere.

    @ivar node: the dialer node (started with this service).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        transports: Sequence[Any],
        *,
        timeout: float = 15.0,
        identity: Optional[Identity] = None,
    ) -> None:
        """
        @param transports: the dialer's transports (fresh ones: not
            sharing a listen port with the main node).
        @param timeout: seconds for the whole dial back (connecting, the
            handshake, delivering the nonce).
        """
        from beam.p2p.host.node import Node

        self.reactor = reactor
        self.timeout = timeout
        self.node = Node(
            reactor, identity or Identity.generate(), [],
            transports=list(transports), dialTimeout=timeout, handshakeTimeout=timeout,
            negotiationTimeout=timeout, idleTimeout=timeout * 2,
        )

    def startService(self) -> None:
        super().startService()
        self.node.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.node.stopService()

    def canDial(self, addr: Multiaddr) -> bool:
        return self.node.transportFor(addr) is not None

    def dialBack(self, peer: PeerID, addr: Multiaddr, nonce: int) -> Deferred[DialStatus]:
        result: Deferred[DialStatus] = Deferred()
        held: dict[str, Any] = {}

        def finish(status: DialStatus) -> None:
            if result.called:
                return
            if timer.active():
                timer.cancel()
            conn = held.get("conn")
            if conn is not None and not conn.closed:
                conn.close()
            result.callback(status)

        def timedOut() -> None:
            dial.cancel()
            opened = held.get("opened")
            if opened is not None:
                opened.cancel()
            sender = held.get("sender")
            if sender is not None and sender.transport is not None:
                sender.transport.abortConnection()
            finish(DialStatus.E_DIAL_BACK_ERROR if "conn" in held else DialStatus.E_DIAL_ERROR)

        timer: IDelayedCall = self.reactor.callLater(self.timeout, timedOut)
        # Without /p2p: a dial keyed by the address, never an existing
        # connection to the peer (the peer ID is checked below).
        dial = self.node.connect(addr.withoutPeerID())

        def connected(conn: Any) -> None:
            held["conn"] = conn
            if result.called:
                conn.close()
                return
            if conn.remotePeer != peer:
                self.log.debug("AutoNAT dial back to {addr}: {other} answered, not {peer}",
                               addr=addr, other=conn.remotePeer, peer=peer)
                finish(DialStatus.E_DIAL_ERROR)
                return
            sender = held["sender"] = _DialBackSender(nonce)
            opened = held["opened"] = self.node.openStreamOn(conn, [DIAL_BACK_PROTOCOL], lambda: sender)
            opened.addErrback(lambda f: finish(DialStatus.E_DIAL_BACK_ERROR))
            sender.result.addCallback(lambda ok: finish(DialStatus.OK if ok else DialStatus.E_DIAL_BACK_ERROR))

        def failed(f: Failure) -> None:
            self.log.debug("AutoNAT dial back to {addr} failed: {why}", addr=addr, why=f.getErrorMessage())
            finish(DialStatus.E_DIAL_ERROR)

        dial.addCallbacks(connected, failed)
        return result


def freshTransports(node: Any) -> list[Any]:
    """
    Transports for a dialer beside C{node}: a new TCP transport (no shared
    listen port), and the node's other transports as they are.
    """
    from beam.p2p.transport.tcp import TCPTransport

    out: list[Any] = []
    for transport in node.transports:
        if isinstance(transport, TCPTransport):
            fresh = TCPTransport(node.reactor)
            if hasattr(fresh, "reuseport"):
                # Never from a listen port (the dialer has none anyway).
                fresh.reuseport = False
            out.append(fresh)
        else:
            out.append(transport)
    return out


class AutoNATServer(MultiService):
    """
    Serves C{/libp2p/autonat/2/dial-request} on C{node} while running.
    Add it as a child of the node (C{server.setServiceParent(node)}).

    @ivar limiter: the L{RateLimiter}.
    @ivar dialer: the L{IDialBacker}.
    @ivar served: requests answered, by outcome (for status and tests).
    """

    log = Logger()
    name = "autonat-server"  # type: ignore[assignment]

    def __init__(
        self,
        node: Any,
        *,
        dialer: Optional[IDialBacker] = None,
        dialDataBytes: int = DIAL_DATA_BYTES,
        dialTimeout: float = 15.0,
        streamTimeout: float = 30.0,
        globalPerMinute: int = 60,
        peerPerMinute: int = 12,
        maxConcurrent: int = 8,
    ) -> None:
        """
        @param dialer: what dials back; by default a L{NodeDialBacker}
            with L{freshTransports} (started and stopped with us).
        @param streamTimeout: seconds a client has to send its request and
            any dial data.
        """
        super().__init__()
        self.node = node
        self.reactor = node.reactor
        if dialer is None:
            backer = NodeDialBacker(node.reactor, freshTransports(node), timeout=dialTimeout)
            backer.setServiceParent(self)
            dialer = backer
        self.dialer: IDialBacker = dialer
        self.dialDataBytes = dialDataBytes
        self.streamTimeout = streamTimeout
        self.limiter = RateLimiter(node.reactor, globalPerMinute, peerPerMinute, maxConcurrent)
        self.served: dict[str, int] = {}

    def startService(self) -> None:
        super().startService()
        self.node.setStreamHandler(DIAL_REQUEST_PROTOCOL, lambda: _DialRequestHandler(self))

    def stopService(self) -> Any:
        if self.node.hasStreamHandler(DIAL_REQUEST_PROTOCOL):
            self.node.removeStreamHandler(DIAL_REQUEST_PROTOCOL)
        return super().stopService()

    def willDial(self, addr: Multiaddr, observed: Multiaddr) -> bool:
        """
        Whether we would dial C{addr} for a client connected from
        C{observed} (see the module docstring).
        """
        addr = addr.withoutPeerID()
        protocols = addr.protocols()
        if not protocols or protocols[0] not in ("ip4", "ip6", "memory") or "p2p-circuit" in protocols:
            return False
        target = addr.tcpTarget()
        if target is not None and target[1] == 0:
            return False
        if not self.dialer.canDial(addr):
            return False
        scope = addrScope(addr)
        if scope == "invalid":
            return False
        if scope == "other":
            return protocols[0] == "memory" and observed.protocols()[:1] == ["memory"]
        if scope == "public":
            return True
        return scope == addrScope(observed)

    def choose(self, addrs: Sequence[bytes], observed: Multiaddr) -> tuple[int, Optional[Multiaddr]]:
        """
        The first address we are willing to dial, with its index.
        """
        for i, raw in enumerate(addrs):
            try:
                addr = Multiaddr.fromBytes(raw)
            except (InvalidMultiaddr, ValueError):
                continue
            if self.willDial(addr, observed):
                return i, addr.withoutPeerID()
        return 0, None

    def count(self, outcome: str) -> None:
        self.served[outcome] = self.served.get(outcome, 0) + 1


class _DialRequestHandler(MessageStream):
    """
    One C{/libp2p/autonat/2/dial-request} stream: request, maybe dial
    data, dial back, response.
    """

    what = "AutoNAT dial request"

    def __init__(self, server: AutoNATServer) -> None:
        super().__init__()
        self.server = server
        self.state = "request"
        self._timer: Optional[IDelayedCall] = None
        self._slot: Any = None
        self._needed = 0
        self._received = 0
        self._addrIdx = 0
        self._addr: Optional[Multiaddr] = None
        self._nonce = 0

    def connectionMade(self) -> None:
        self._timer = self.server.reactor.callLater(self.server.streamTimeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        self.fail(AutoNATProtocolError(f"no dial request (or dial data) within {self.server.streamTimeout:g} s"))

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def messageReceived(self, raw: bytes) -> None:
        message = decodeMessage(raw)
        if self.state == "request" and isinstance(message, DialRequest):
            self._request(message)
        elif self.state == "data" and isinstance(message, DialDataResponse):
            self._received += len(message.data)
            if self._received >= self._needed:
                self._dial()
        else:
            raise AutoNATProtocolError(f"unexpected {type(message).__name__} in state {self.state}")

    def _request(self, request: DialRequest) -> None:
        conn = self.connection()
        if conn is None:
            self.fail(AutoNATProtocolError("a dial request on a stream without a connection"))
            return
        peer = conn.remotePeer
        if getattr(conn, "limited", False):
            self._respond(ResponseStatus.E_REQUEST_REJECTED, why="the request came over a relayed connection")
            return
        refusal = self.server.limiter.acquire(peer)
        if refusal is not None:
            self._respond(ResponseStatus.E_REQUEST_REJECTED, why=refusal)
            return
        self._slot = peer
        observed: Multiaddr = getattr(conn, "observedRemote", conn.remoteAddr)
        idx, addr = self.server.choose(request.addrs, observed)
        if addr is None:
            self._respond(ResponseStatus.E_DIAL_REFUSED, why="no address we are willing to dial")
            return
        self._addrIdx, self._addr, self._nonce = idx, addr, request.nonce
        if sameHost(addr, observed):
            self._dial()
            return
        self.state = "data"
        self.server.count("dial data asked")
        self._needed = self.server.dialDataBytes
        self.send(encodeMessage(DialDataRequest(idx, self._needed)))

    def _dial(self) -> None:
        self.state = "dialing"
        self._cancelTimer()
        conn = self.connection()
        assert self._addr is not None and conn is not None
        d = maybeDeferred(self.server.dialer.dialBack, conn.remotePeer, self._addr, self._nonce)

        def done(status: DialStatus) -> None:
            self._release()
            self._respond(ResponseStatus.OK, self._addrIdx, status)

        def broken(f: Failure) -> None:
            self.log.failure("AutoNAT dial back failed unexpectedly", failure=f)
            self._release()
            self._respond(ResponseStatus.E_INTERNAL_ERROR, why="internal error")

        d.addCallbacks(done, broken)

    def _respond(self, status: ResponseStatus, addrIdx: int = 0, dialStatus: DialStatus = DialStatus.UNUSED,
                 why: str = "") -> None:
        self.state = "done"
        self._cancelTimer()
        outcome = status.name if status != ResponseStatus.OK else f"OK/{DialStatus(dialStatus).name}"
        self.server.count(outcome)
        if why:
            self.log.debug("AutoNAT request from {peer}: {status} ({why})", peer=self.remotePeer(),
                           status=status.name, why=why)
        if self.transport is None or self.failed is not None or self.finished:
            return
        self.send(encodeMessage(DialResponse(status, addrIdx, dialStatus)))
        self.finish()

    def _release(self) -> None:
        if self._slot is not None:
            self.server.limiter.release(self._slot)
            self._slot = None

    def fail(self, error: BeamError) -> None:
        super().fail(error)
        self._cancelTimer()
        if self.state != "dialing":
            self._release()
            self.state = "done"

    def readConnectionLost(self) -> None:
        if self.state in ("request", "data"):
            self.fail(AutoNATProtocolError("the client closed the stream before the dial"))
        # While dialling, the response still goes out on our side.

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelTimer()
        if self.state != "dialing":
            # A dial under way keeps its slot until it ends (the bound on
            # concurrent dial backs must hold whatever the client does).
            self._release()
        self.transport = None
        if self.state == "dialing":
            return
        self.state = "done"


__all__ = [
    "AutoNATServer",
    "DIAL_DATA_BYTES",
    "IDialBacker",
    "NodeDialBacker",
    "RateLimiter",
    "freshTransports",
    "sameHost",
]
