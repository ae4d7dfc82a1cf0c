"""
L{Forwards}: the daemon's C{"forwards"} service, every local port that
leads to another node's tunnel.

It turns what a user typed (a share address, a C{/p2p/} multiaddr, or a
name) into a running L{TunnelForward}: it resolves names through the
resolver it was given (the name service's), refuses this node's own
address, listens, and for C{beam connect} first asks the host whether it
would accept us, so a mistake fails at once with the host's reason.
Forwards are kept by their local port; stopping the service stops them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred, succeed
from twisted.logger import Logger

from beam.errors import BeamError, DialError, NotFound, describe
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

__all__ = ["Forwards"]

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
    ) -> Deferred[ForwardStatus]:
        """
        Listen on C{bind}:C{port} and forward to C{target}, after checking
        that the host is reachable and accepts us (C{beam connect}).
        """
        isName = not target.startswith(("beam://", "/"))
        d = self.resolveTarget(target, service, acceptNewKey)
        return d.addCallback(
            lambda share: self.start(
                share, port, bind, service, compress, "udp" if udp else "tcp", probe=True,
                name=target.partition("/")[0] if isName else None,
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
    ) -> Any:
        """
        Start a forward to C{share}.

        @param probe: first check that the host is reachable and would
            accept our tunnels, failing with a clear error if not (for
            C{beam connect}); forwards from the configuration file start
            regardless and keep retrying.
        @param name: the name C{share} was resolved from: when the host
            moves, the forward resolves it again.
        @return: a L{Deferred} firing with the forward's L{ForwardStatus}.
        """
        if service:
            share = ShareAddress(peer=share.peer, addrs=share.addrs, service=service, secret=share.secret)
        if share.peer == self.node.peerID:
            raise TunnelSpecError("that share address is this node's own: connect to the service directly")
        resolveAddrs = None
        if name is not None and self.resolver is not None:
            resolver = self.resolver

            def resolveAddrs() -> Deferred[Any]:
                return resolver(name, False).addCallback(lambda r: [Multiaddr.fromString(a) for a in r.addrs])

        from beam.tunnel.client import TunnelForward

        fwd = TunnelForward.fromShare(
            self.reactor, self.node, share, kind=kind, localPort=port or 0,
            bind=bind or "127.0.0.1", compress=compress, resolveAddrs=resolveAddrs,
        )
        try:
            yield fwd.startService()
        except Exception as e:
            yield maybeDeferred(fwd.stopService)
            if isinstance(e, BeamError):
                raise TunnelSpecError(str(e)) from None
            where = f"{bind or '127.0.0.1'}:{port or 0}"
            raise TunnelSpecError(f"cannot listen on {where}: {listenFailureReason(e)}") from None
        if probe:
            try:
                yield fwd.probe()
            except TunnelRefused as e:
                yield fwd.stopService()
                raise TunnelSpecError(f"the host refused the tunnel: {e}") from None
            except DialError as e:
                yield fwd.stopService()
                nat = unreachableReason(share.addrs, describe(e))
                if nat is None:
                    raise
                raise TunnelSpecError(nat) from None
            except BaseException:
                yield fwd.stopService()
                raise
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
            service=fwd.service,
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
