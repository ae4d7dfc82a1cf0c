"""
The node behind a process's C{beam:} endpoints: launched once per home
directory, shared by every endpoint of the process that names that home
(txtorcon's "launch or reuse"), and stopped with the reactor.

A L{BeamNode} is a L{beam.daemon.service.BeamDaemon} (the same node
C{beam daemon} runs: tunnel host, DHT, names, and the control socket, so
C{beam status --home HOME} shows what a program serves) without the
tunnels and forwards of the home's C{config.toml}, which are the command
line's business; C{listen} and C{bootstrap} from that file are used when
the endpoint does not give them.

This module is the only place where the endpoints touch the daemon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import NoProtocol
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.endpoints._address import BeamAddress
from beam.endpoints._errors import HomeInUse, HostUnreachable, NodeOptionsConflict, OwnService
from beam.endpoints._options import AddrsArg, NodeOptions, Target
from beam.endpoints._stream import StreamTransport, TunnelOpener, connectUser
from beam.errors import BeamError, DialError, MuxerClosed, NodeStopped, StreamReset
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.tunnel.access import AccessPolicy
from beam.tunnel.protocol import TUNNEL_PROTOCOL, TunnelRequest, encodeRequest

__all__ = ["BeamNode", "launchNode"]

_log = Logger()

#: The running nodes of this process, by absolute home directory.
_nodes: dict[Path, "BeamNode"] = {}
#: Nodes being launched, by home.
_launching: dict[Path, "_Launch"] = {}


def _compressionAvailable() -> bool:
    try:
        import beam.tunnel.compress  # noqa: F401
    except ImportError:
        return False
    return True


class BeamNode:
    """
    One running node serving this process's endpoints for one home.

    Get one with L{launchNode} (or let an endpoint launch it).  It runs
    until L{stop} or until the reactor shuts down; stopping an endpoint's
    port only withdraws its service, so names stay published and the next
    endpoint starts at once.

    @ivar reactor: the reactor it runs on.
    @ivar home: its home directory.
    @ivar config: the L{beam.daemon.config.Config} it runs with.
    """

    log = Logger()

    def __init__(self, reactor: Any, home: Path, daemon: Any, config: Any) -> None:
        self.reactor = reactor
        self.home = home
        self.config = config
        self._daemon = daemon
        self._trigger: Any = None
        self._stopped: Optional[Deferred[None]] = None
        self._names: set[str] = set()

    def __repr__(self) -> str:
        return f"<BeamNode {self.peerID} home={self.home}>"

    @property
    def peerID(self) -> PeerID:
        """
        The node's peer ID.
        """
        peer: PeerID = self._daemon.node.peerID
        return peer

    @property
    def running(self) -> bool:
        """
        Started and not stopped.
        """
        return self._stopped is None

    @property
    def daemon(self) -> Any:
        """
        The L{beam.daemon.service.BeamDaemon} underneath, for what the
        endpoints do not cover (status, forwards, the DHT).
        """
        return self._daemon

    def addrs(self) -> list[Multiaddr]:
        """
        The addresses others can reach this node at, each ending in
        C{/p2p/<peer ID>}.
        """
        return list(self._daemon.node.advertisedAddrs())

    def shareAddress(self, service: str) -> Any:
        """
        The L{beam.tunnel.share.ShareAddress} of C{service} (with its
        secret, if it has one): C{str()} of it is what C{beam connect}
        takes.
        """
        return self._daemon.tunnels.shareAddress(service)

    # -- lifecycle -------------------------------------------------------

    async def _start(self) -> None:
        from beam.daemon.control import NodeAlreadyRunning

        try:
            await self._daemon.start()
        except NodeAlreadyRunning:
            await self._daemon.stopService()
            raise HomeInUse(
                f"a Beam node is already running for {self.home} (a `beam daemon`, or another program's "
                f"beam: endpoints); stop it, or give these endpoints a home of their own with home=DIR"
            ) from None
        except BaseException:
            await self._daemon.stopService()
            raise
        self._trigger = self.reactor.addSystemEventTrigger("before", "shutdown", self._reactorShutdown)

    def _reactorShutdown(self) -> Deferred[None]:
        self._trigger = None
        return self.stop()

    def stop(self) -> Deferred[None]:
        """
        Stop the node: its services are withdrawn, its connections closed
        (streams open through it end), and the next endpoint for its home
        launches a new one.  Stopping twice is harmless.
        """
        if _nodes.get(self.home) is self:
            del _nodes[self.home]
        if self._trigger is not None:
            trigger, self._trigger = self._trigger, None
            self.reactor.removeSystemEventTrigger(trigger)
        if self._stopped is None:
            self._stopped = Deferred()
            stopped = self._stopped

            def done(result: Any) -> None:
                stopped.callback(None)
                if isinstance(result, Failure):
                    self.log.failure("stopping the Beam node for {home} failed", result, home=self.home)

            d = Deferred.fromCoroutine(self._stopDaemon())
            d.addBoth(done)
        waiter: Deferred[None] = Deferred()

        def tell(result: Any) -> Any:
            waiter.callback(None)
            return result

        self._stopped.addBoth(tell)
        return waiter

    async def _stopDaemon(self) -> None:
        await self._daemon.stopService()

    def _check(self, reactor: Any, options: NodeOptions) -> None:
        """
        Whether an endpoint with C{options} may use this node.

        @raise NodeOptionsConflict: it may not, and why.
        """
        if reactor is not self.reactor:
            raise NodeOptionsConflict(f"the Beam node for {self.home} runs on another reactor")
        for option, wanted, actual in (
            ("listen", options.listen, self.config.listen),
            ("bootstrap", options.bootstrap, self.config.bootstrap),
        ):
            if wanted is not None and tuple(wanted) != tuple(actual):
                raise NodeOptionsConflict(
                    f"this process already runs the Beam node for {self.home} with "
                    f"{option}={','.join(str(a) for a in actual) or '(none)'}; give the same {option}= "
                    f"or leave it out (or use another home=)"
                )

    # -- serving ---------------------------------------------------------

    def serve(
        self, service: str, factory: IProtocolFactory, policy: AccessPolicy, compress: bool = False
    ) -> Any:
        """
        Expose C{factory} as C{service}: each admitted tunnel gets a
        protocol from C{factory.buildProtocol(BeamAddress(peer, service))}.

        @return: the L{beam.tunnel.ServiceSpec} exposed (for L{unserve}).
        @raise beam.tunnel.ServiceExists: a service of that name is exposed.
        @raise NodeStopped: the node was stopped.
        """
        from beam.tunnel.host import ServiceSpec

        if not self.running:
            raise NodeStopped(f"the Beam node for {self.home} was stopped")
        here = BeamAddress(self.peerID, service)

        def build(peer: PeerID, stats: Any) -> Optional[IProtocol]:
            there = BeamAddress(peer, service)
            protocol = factory.buildProtocol(there)
            if protocol is None:
                return None
            return StreamTransport(protocol, here, there, stats)

        spec = ServiceSpec(name=service, policy=policy, compress=compress, serve=build)
        # The name service republishes our records when the tunnels change.
        self._daemon.tunnels.expose(spec)
        self.log.info("serving {factory} as {service} on {peer}", factory=factory, service=service,
                      peer=self.peerID)
        return spec

    def unserve(self, spec: Any) -> None:
        """
        Withdraw the service L{serve} exposed (unless it was already
        removed, e.g. with C{beam stop}); its open streams go on.
        """
        tunnels = self._daemon.tunnels
        if not self.running or tunnels.services.get(spec.name) is not spec:
            return
        tunnels.remove(spec.name)

    async def registerName(self, name: str) -> Any:
        """
        Register C{name} for this node (once bootstrapped into the DHT) and
        keep it published while the node runs.  Publishing to no peer yet
        is not an error (it is retried); a name held by another key is.

        @return: the registration's L{beam.names.status.NameStatus}.
        @raise beam.names.service.NameOwnedByAnother: the name is taken.
        """
        daemon = self._daemon
        await daemon.kademlia.whenBootstrapped()
        result = await daemon.names.register(name)
        if result.error:
            self.log.warn("registered the name {name}, but publishing it failed for now: {why}",
                          name=name, why=result.error)
        self._names.add(name)
        return result

    def hasName(self, name: str) -> bool:
        """
        Whether an endpoint registered C{name} on this node.
        """
        return name in self._names

    # -- connecting ------------------------------------------------------

    def connect(
        self,
        target: Target,
        factory: IProtocolFactory,
        *,
        secret: Optional[bytes] = None,
        compress: bool = False,
        timeout: float = 30.0,
    ) -> Deferred[IProtocol]:
        """
        Open a tunnel to C{target} and connect a protocol from C{factory}
        to it.

        @param secret: the access secret (else the share address's).
        @param timeout: seconds for everything: resolving a name, dialling,
            the host's answer.
        @return: fires with the protocol once the host accepted, or fails
            with a L{beam.tunnel.TunnelRefused} subclass
            (L{beam.tunnel.ServiceNotFound}, L{beam.tunnel.AccessDenied},
            ...), L{HostUnreachable}, L{OwnService}, a name resolution
            error, or L{NoProtocol} when C{factory} built none.
            Cancelling it abandons the attempt (and resets the stream).
        """
        phase = [f"resolving {target.text}"]
        d = Deferred.fromCoroutine(self._connect(target, factory, secret, compress, phase))
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self.reactor.callLater(timeout, expire)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if expired and isinstance(result, Failure) and result.check(CancelledError):
                return Failure(HostUnreachable(f"gave up after {timeout:g} s {phase[0]}"))
            return result

        return d.addBoth(done)

    async def _connect(
        self, target: Target, factory: IProtocolFactory, secret: Optional[bytes], compress: bool,
        phase: list[str],
    ) -> IProtocol:
        if not self.running:
            raise NodeStopped(f"the Beam node for {self.home} was stopped")
        daemon = self._daemon
        if target.share is not None:
            share: Any = target.share
        else:
            phase[0] = f"resolving the name {target.name}"
            share = await daemon.forwards.resolveTarget(target.name, target.service or None)
        if share.peer == self.peerID:
            raise OwnService(
                f"{target.text} is served by this process's own Beam node ({self.home}); "
                f"connect to it directly, or give the client endpoint another home="
            )
        node = daemon.node
        if share.addrs:
            node.peerStore.addAddrs(share.peer, [a.withoutPeerID() for a in share.addrs], "user")
        service = share.service
        here = BeamAddress(self.peerID, service)
        there = BeamAddress(share.peer, service)
        request = TunnelRequest(
            service=service,
            compression=("lz4",) if compress and _compressionAvailable() else (),
            secret=(secret if secret is not None else share.secret) or b"",
        )

        def install(stream: Any, response: Any, leftover: bytes) -> IProtocol:
            protocol = factory.buildProtocol(there)
            if protocol is None:
                raise NoProtocol()
            connectUser(stream, protocol, here, there, response.compression, leftover)
            return protocol

        opener = TunnelOpener(encodeRequest(request), install, label=str(share.peer))
        phase[0] = f"dialling {share.peer}"
        try:
            await node.openStream(share.peer, [TUNNEL_PROTOCOL], lambda: opener)
        except (DialError, MuxerClosed, StreamReset) as e:
            raise HostUnreachable(f"cannot reach {share.peer}: {e}") from None
        phase[0] = f"waiting for {share.peer} to answer"
        protocol: IProtocol = await opener.result
        return protocol


class _Launch:
    """
    A node being launched, and the endpoints waiting for it.
    """

    def __init__(self, reactor: Any, options: NodeOptions, home: Path) -> None:
        self.reactor = reactor
        self.options = options
        self.home = home
        self.waiters: list[tuple[Deferred[BeamNode], Any, NodeOptions]] = []

    def start(self) -> None:
        Deferred.fromCoroutine(_start(self.reactor, self.options, self.home)).addBoth(self._done)

    def wait(self, reactor: Any, options: NodeOptions) -> Deferred[BeamNode]:
        d: Deferred[BeamNode] = Deferred()
        self.waiters.append((d, reactor, options))
        return d

    def _done(self, result: Any) -> None:
        if _launching.get(self.home) is self:
            del _launching[self.home]
        if not isinstance(result, Failure):
            _nodes[self.home] = result
        waiters, self.waiters = self.waiters, []
        for d, reactor, options in waiters:
            if d.called:
                continue  # cancelled
            if isinstance(result, Failure):
                d.errback(result)
                continue
            try:
                result._check(reactor, options)
            except BeamError as e:
                d.errback(e)
            else:
                d.callback(result)
        if isinstance(result, Failure) and not waiters:
            _log.failure("launching the Beam node for {home} failed", result, home=self.home)


async def _start(reactor: Any, options: NodeOptions, home: Path) -> BeamNode:
    from beam.daemon.config import loadConfig
    from beam.daemon.service import BeamDaemon
    from beam.storage.home import loadOrCreateIdentity

    identity = loadOrCreateIdentity(home)
    config = loadConfig(home / "config.toml")
    config = attrs.evolve(
        config,
        tunnels=(),
        forwards=(),
        listen=options.listen if options.listen is not None else config.listen,
        bootstrap=options.bootstrap if options.bootstrap is not None else config.bootstrap,
    )
    holder: list[BeamNode] = []

    def shutdownRequested() -> None:
        # POST /v1/shutdown on the control socket stops this node, not the
        # program's reactor.
        if holder:
            holder[0].stop()

    daemon = BeamDaemon(reactor, home, identity, config, onShutdown=shutdownRequested)
    node = BeamNode(reactor, home, daemon, config)
    holder.append(node)
    await node._start()
    return node


def launchOrReuse(reactor: Any, options: NodeOptions) -> Deferred[BeamNode]:
    """
    The running node for C{options.home}, launching it if this process
    runs none.

    @return: fails with L{NodeOptionsConflict} when the node runs with
        other explicit C{listen}/C{bootstrap}, with L{HomeInUse} when
        another process runs a node for that home, and with the reason
        it could not start otherwise (a port in use, a bad
        C{config.toml}, ...).
    """
    home = options.homePath()
    node = _nodes.get(home)
    if node is not None:
        try:
            node._check(reactor, options)
        except BeamError as e:
            return fail(e)
        return succeed(node)
    launch = _launching.get(home)
    if launch is None:
        launch = _launching[home] = _Launch(reactor, options, home)
        d = launch.wait(reactor, options)
        launch.start()
        return d
    return launch.wait(reactor, options)


def launchNode(
    reactor: Any,
    home: Optional[str | Path] = None,
    listen: AddrsArg = None,
    bootstrap: AddrsArg = None,
) -> Deferred[BeamNode]:
    """
    The L{BeamNode} this process runs for C{home}, launched if need be:
    what every C{beam:} endpoint naming that home uses.

    @param home: the node's home directory (identity, state, control
        socket); by default L{beam.endpoints.defaultHome}, which is not the
        command line's home, so a C{beam daemon} can run beside.
    @param listen: multiaddrs to listen on (a list, or comma-separated
        text); by default the home's C{config.toml}, else
        C{/ip4/0.0.0.0/tcp/0} (the port is remembered across runs).
    @param bootstrap: DHT peers (C{/.../p2p/ID}) to join through; by
        default the home's C{config.toml}.
    @raise ValueError: an argument is not valid (before anything starts).
    @return: see L{launchOrReuse}.
    """
    return launchOrReuse(reactor, NodeOptions.fromArgs(home, listen, bootstrap))
