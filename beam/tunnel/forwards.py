"""
L{Forwards}: the daemon's C{"forwards"} service, every local port that
leads to another node's tunnel.

It turns what a user typed (a share address, a C{/p2p/} multiaddr, or a
name) into a running L{TunnelForward}: it resolves names through the
resolver it was given (the name service's), refuses this node's own
address, for C{beam connect} first asks the host whether it would accept
us (so a mistake fails with the host's reason, and no app connects to a
port that leads nowhere), and only then listens.
Forwards are kept by their local port; stopping the service stops them all.

A forward started with C{tor=True} (C{beam connect NAME --tor}, C{"tor":
true} in C{POST /v1/forwards}) dials the host only at its onion
addresses (C{/onion3}), through the node's C{"tor"} transport; see
L{_OverTor} for what that does and does not promise.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, inlineCallbacks, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.errors import BeamError, DialError, MuxerClosed, NotFound, describe
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.transport.tcp import listenFailureReason
from beam.tunnel.host import TunnelSpecError
from beam.tunnel.protocol import TunnelRefused
from beam.tunnel.share import ShareAddress, parseShareAddress, unreachableReason
from beam.tunnel.status import ForwardStatus, trafficStatus

if TYPE_CHECKING:
    # Imported where a forward is made: a node that only exposes services
    # never loads the forward's machinery.
    from beam.tunnel.client import TunnelForward

__all__ = ["Forwards", "NO_TOR"]

#: Why a forward over Tor cannot start on a node without the C{"tor"}
#: transport.
NO_TOR = "this node runs without Tor: start it with --tor"

#: Resolves a name: C{resolve(name, acceptNewKey)} fires with something
#: that has C{peerID} and C{addrs} (text), like the name service's answer.
Resolver = Callable[[str, bool], "Deferred[Any]"]


class Forwards(Service):
    """
    The forwards of one node.

    @ivar byKey: the running forwards by local port (as text).
    """

    log = Logger()

    def __init__(self, reactor: Any, node: Any, resolver: Optional[Resolver] = None) -> None:
        """
        @param node: the L{IHost} the forwards open streams on.
        @param resolver: resolves names; without one only share addresses
            and multiaddrs are accepted.
        """
        self.setName("forwards")
        self.reactor = reactor
        self.node = node
        self.resolver = resolver
        self.byKey: dict[str, TunnelForward] = {}

    # -- targets ---------------------------------------------------------

    @inlineCallbacks
    def resolveTarget(self, target: str, service: Optional[str] = None, acceptNewKey: bool = False) -> Any:
        """
        A share address, a C{/p2p/} multiaddr, or a name (C{NAME} or
        C{NAME/SERVICE}) as a L{ShareAddress}.
        """
        if target.startswith(("beam://", "/")):
            return parseShareAddress(target, service)
        if self.resolver is None:
            raise TunnelSpecError(f"{target!r} is not a share address, and this node resolves no names")
        name, _, svc = target.partition("/")
        resolved = yield self.resolver(name, acceptNewKey)
        return ShareAddress(
            peer=PeerID.fromString(resolved.peerID),
            addrs=tuple(Multiaddr.fromString(a) for a in resolved.addrs),
            service=service or svc or "",
        )

    # -- the control API -------------------------------------------------

    def add(
        self,
        target: str,
        port: Optional[int] = None,
        bind: Optional[str] = None,
        service: Optional[str] = None,
        compress: bool = False,
        udp: bool = False,
        acceptNewKey: bool = False,
        tor: bool = False,
    ) -> Deferred[ForwardStatus]:
        """
        Listen on C{bind}:C{port} and forward to C{target}, after checking
        that the host is reachable and accepts us (C{beam connect}).

        @param tor: dial the host only at its onion addresses (see
            L{start}).
        """
        if tor and not _hasTor(self.node):
            # Before resolving: a name lookup would only delay the answer.
            return fail(TunnelSpecError(NO_TOR))
        isName = not target.startswith(("beam://", "/"))
        d = self.resolveTarget(target, service, acceptNewKey)
        return d.addCallback(
            lambda share: self.start(
                share, port, bind, service, compress, "udp" if udp else "tcp", probe=True,
                name=target.partition("/")[0] if isName else None, tor=tor,
            )
        )

    @inlineCallbacks
    def start(
        self,
        share: ShareAddress,
        port: Optional[int] = None,
        bind: Optional[str] = None,
        service: Optional[str] = None,
        compress: bool = False,
        kind: str = "tcp",
        probe: bool = False,
        name: Optional[str] = None,
        tor: bool = False,
    ) -> Any:
        """
        Start a forward to C{share}.

        @param probe: first check that the host is reachable and would
            accept our tunnels, failing with a clear error if not, and
            listen only then (for C{beam connect}); forwards from the
            configuration file listen at once and keep retrying.
        @param name: the name C{share} was resolved from: when the host
            moves, the forward resolves it again.
        @param tor: dial the host only at its onion addresses (C{/onion3},
            from the share address or the name record, again after each
            re-resolve), over the node's C{"tor"} transport (L{_OverTor}).
            Fails with L{TunnelSpecError} if the node has no such
            transport (L{NO_TOR}) or the host lists no onion address.
        @return: a L{Deferred} firing with the forward's L{ForwardStatus}.
        """
        if service:
            share = ShareAddress(peer=share.peer, addrs=share.addrs, service=service, secret=share.secret)
        if share.peer == self.node.peerID:
            raise TunnelSpecError("that share address is this node's own: connect to the service directly")
        node: Any = self.node
        overTor: Optional[_OverTor] = None
        if tor:
            if not _hasTor(self.node):
                raise TunnelSpecError(NO_TOR)
            if not any(a.isOnion() for a in share.addrs):
                raise TunnelSpecError(f"{name or share.peer} has no onion address")
            node = overTor = _OverTor(self.node, share.peer, name or str(share.peer))
        resolveAddrs = None
        if name is not None and self.resolver is not None:
            resolver = self.resolver

            def resolveAddrs() -> Deferred[Any]:
                # Asked again because the addresses we have stopped
                # answering: past the cache of a moment ago, if the
                # resolver has one.
                try:
                    d = resolver(name, False, fresh=True)  # type: ignore[call-arg]
                except TypeError:
                    d = resolver(name, False)
                return d.addCallback(lambda r: [Multiaddr.fromString(a) for a in r.addrs])

        from beam.tunnel.client import TunnelForward

        fwd = TunnelForward.fromShare(
            self.reactor, node, share, kind=kind, localPort=port or 0,
            bind=bind or "127.0.0.1", compress=compress, resolveAddrs=resolveAddrs,
        )
        if overTor is not None:
            # The forward's addresses follow its re-resolves.
            overTor.addrs = lambda: fwd.addrs
        if probe and port:
            # A local port that is taken is the user's to fix whatever the
            # host says: report it before spending a dial on the host.
            _checkLocalPort(bind or "127.0.0.1", port, kind)
        if probe:
            # Before listening: until the host answered, an app that
            # connects to the local port would only wait, then be closed
            # (docs/tunnels.md).  The forward's machine never starts for
            # a host that does not answer, so it never says it retries.
            try:
                yield fwd.probe()
            except TunnelRefused as e:
                raise TunnelSpecError(f"the host refused the tunnel: {e}") from None
            except DialError as e:
                nat = unreachableReason(share.addrs, describe(e))
                if nat is None:
                    raise
                raise TunnelSpecError(nat) from None
        try:
            yield fwd.startService()
        except Exception as e:
            yield maybeDeferred(fwd.stopService)
            if isinstance(e, BeamError):
                raise TunnelSpecError(str(e)) from None
            where = f"{bind or '127.0.0.1'}:{port or 0}"
            raise TunnelSpecError(f"cannot listen on {where}: {listenFailureReason(e)}") from None
        key = str(fwd.localAddress.port)
        self.byKey[key] = fwd
        self.log.info("forwarding {bind}:{port} to {label}", bind=fwd.bind, port=key, label=fwd.label)
        return self.forwardStatus(key, fwd)

    def remove(self, key: str) -> Deferred[ForwardStatus]:
        """
        Stop the forward on local port C{key}.

        @return: a L{Deferred} firing with its last status once stopped.
        @raise NotFound: no forward there.
        """
        fwd = self.byKey.get(key)
        if fwd is None:
            raise NotFound(f"no forward on local port {key}")
        status = self.forwardStatus(key, fwd)
        del self.byKey[key]
        self.log.info("stopped forwarding port {port}", port=key)
        return maybeDeferred(fwd.stopService).addCallback(lambda _: status)

    # -- status ----------------------------------------------------------

    def forwardStatus(self, key: str, fwd: TunnelForward) -> ForwardStatus:
        """
        The status of one forward.
        """
        return ForwardStatus(
            name=key,
            listen=f"{fwd.localAddress.host}:{fwd.localAddress.port}",
            kind=fwd.kind,
            peerID=str(fwd.peer),
            service=fwd.service or fwd.servedService,
            state=fwd.state,
            stats=trafficStatus(fwd.stats),
        )

    def status(self) -> tuple[ForwardStatus, ...]:
        """
        Every forward, oldest first.
        """
        return tuple(self.forwardStatus(k, f) for k, f in self.byKey.items())

    def controlResource(self) -> Any:
        """
        C{/v1/forwards}: list, add, remove (L{beam.tunnel.resource}).
        """
        from beam.tunnel.resource import ForwardsResource

        return ForwardsResource(self)

    # -- lifecycle -------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """
        Stop every forward.
        """
        super().stopService()
        forwards, self.byKey = list(self.byKey.values()), {}
        if not forwards:
            return succeed(None)
        stopping = [maybeDeferred(f.stopService) for f in forwards]
        return DeferredList(stopping, consumeErrors=True).addCallback(lambda _: None)


def _hasTor(node: Any) -> bool:
    """
    Whether C{node} has the C{"tor"} transport (tor mode C{"fallback"} or
    C{"always"}).
    """
    return any(getattr(t, "name", None) == "tor" for t in getattr(node, "transports", ()))


class _OverTor:
    """
    The node as a forward over Tor sees it: every dial of the host goes to
    the host's onion addresses only, one after another; everything else
    is the node's.

    What this promises: the forward never dials the host at an IP
    address, so a host reachable only through Tor is reached, and in tor
    mode C{"always"} the forward does not dial IP addresses through a Tor
    exit either.  What it does not: the node keeps one connection per
    peer, so a connection to the host that already exists (the DHT may
    have dialled it directly in tor mode C{"fallback"}) carries the
    tunnel as it is (logged); only tor mode C{"always"} guarantees that
    no connection of the node bypasses Tor.

    @ivar addrs: returns the host's current addresses (the forward's).
    """

    log = Logger()

    def __init__(self, node: Any, peer: PeerID, label: str) -> None:
        self._node = node
        self._peer = peer
        self._label = label
        self.addrs: Callable[[], Sequence[Multiaddr]] = lambda: ()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)

    def connect(self, target: Any) -> Deferred[Any]:
        """
        A connection to C{target}; for the host: the existing one, or a
        dial of its onion addresses.
        """
        if target != self._peer:
            return self._node.connect(target)
        existing = self._node.connectionTo(self._peer)
        if existing is not None:
            if getattr(existing, "transport", None) != "tor":
                self.log.info(
                    "forward over Tor to {label}: reusing the node's existing {transport} connection to it",
                    label=self._label, transport=getattr(existing, "transport", "?"),
                )
            return succeed(existing)
        onion = [a.withoutPeerID() for a in self.addrs() if a.isOnion()]
        if not onion:
            return fail(DialError(f"{self._label} has no onion address"))
        errors: list[str] = []
        result: Deferred[Any] = Deferred(lambda _: current[0].cancel() if current else None)
        current: list[Deferred[Any]] = []

        def attempt(i: int) -> None:
            if i >= len(onion):
                result.errback(DialError(f"could not reach {self._label} over Tor: " + "; ".join(errors)))
                return
            d = self._node.connect(onion[i].withPeerID(self._peer))
            current[:] = [d]

            def bad(f: Failure) -> None:
                if result.called:
                    return
                if not f.check(DialError) or len(onion) == 1:
                    result.errback(f)
                    return
                errors.append(f"{onion[i]}: {describe(f)}")
                attempt(i + 1)

            d.addCallbacks(lambda conn: None if result.called else result.callback(conn), bad)

        attempt(0)
        return result

    def openStream(self, target: Any, protocols: Any, factory: Callable[[], Any]) -> Deferred[Any]:
        """
        As L{Node.openStream<beam.p2p.host.node.Node.openStream>}, with the
        connection made by L{connect}.
        """
        if target != self._peer:
            return self._node.openStream(target, protocols, factory)
        if isinstance(protocols, str):
            protocols = [protocols]

        def onConn(conn: Any) -> Deferred[Any]:
            d: Deferred[Any] = self._node.openStreamOn(conn, protocols, factory)

            def retry(f: Failure) -> Any:
                f.trap(MuxerClosed)
                return self.connect(target).addCallback(lambda c: self._node.openStreamOn(c, protocols, factory))

            return d.addErrback(retry)

        return self.connect(target).addCallback(onConn)


def _checkLocalPort(bind: str, port: int, kind: str) -> None:
    """
    Whether C{bind:port} could be listened on now (a plain bind, closed at
    once, as the forward's listener will bind it).

    @raise TunnelSpecError: it could not, with the reason the CLI prints.
    """
    import socket

    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except OSError as e:
            reason = "the port is already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise TunnelSpecError(f"cannot listen on {bind}:{port}: {reason}") from None
