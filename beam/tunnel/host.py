"""
The host side of tunnels: expose local services to peers.

L{TunnelHost} serves C{/beam/tunnel/1.0.0} on a node.  For each inbound
stream it reads the L{TunnelRequest} (bounded in size and in time), finds
the service and checks its L{AccessPolicy} (a service the peer may not
open is refused exactly like one that does not exist: nothing else about
it is told), connects to the local service (with a timeout) while the
stream is paused, answers, and splices the two.  Any refusal is answered
with a status and a message the client shows, and logged here in one
line (with the real reason).

Each local connection (or UDP socket) a tunnel opens is a file descriptor
of ours that a peer asked for, so it is reserved before it is opened: in
the stream's resource scopes when the node's resource manager accounts
the stream (its peer, its service and the whole node, see
L{beam.p2p.resources}), and in any case against a per-peer count held
here, capped at the manager's per-peer C{fd} limit (peers in a service's
C{--allow} list get the allowed-peer limit).  A peer over its limit is
answered L{TunnelBusy}: one stranger cannot take the descriptors everyone
else needs.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any, Callable, Optional, cast

import attrs
from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError, TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from beam.errors import BeamError, Conflict, NotFound, ProtocolError
from beam.identity.keys import PeerID
from beam.p2p.interfaces import IStreamTransport
from beam.p2p.resources import UNLIMITED, ResourceLimitExceeded
from beam.tunnel.access import PUBLIC, AccessPolicy
from beam.tunnel.protocol import (
    TUNNEL_PROTOCOL,
    AccessDenied,
    BadTunnelRequest,
    RequestReader,
    ServiceNotFound,
    ServiceNotOpenable,
    ServiceUnavailable,
    TunnelBusy,
    TunnelRefused,
    TunnelRequest,
    TunnelResponse,
    chooseCompression,
    encodeResponse,
)
from beam.tunnel.splice import HALF_CLOSED_TIMEOUT, Splice, TunnelStats
from beam.tunnel.status import TunnelStatus, trafficStatus

if TYPE_CHECKING:
    from beam.p2p.muxer.yamux import YamuxStream
    from beam.tunnel.inspect.store import RequestStore

__all__ = ["ServiceSpec", "TunnelHost", "ServiceExists", "TunnelSpecError"]

#: Bytes of a generated tunnel secret.
SECRET_BYTES = 16

#: Compression methods this host can speak, best first.
COMPRESSIONS = ("lz4",)


class ServiceExists(BeamError):
    """
    A service of that name is already exposed.
    """


class TunnelSpecError(BeamError):
    """
    That tunnel cannot be set up.
    """


def _checkKind(instance: Any, attribute: Any, value: str) -> None:
    if value not in ("tcp", "udp"):
        raise ValueError(f"service kind must be 'tcp' or 'udp', not {value!r}")


def _checkPort(instance: Any, attribute: Any, value: int) -> None:
    if value == 0 and instance.serve is not None:
        return  # served in this process: no port
    if not 0 < value < 65536:
        raise ValueError(f"port must be between 1 and 65535, not {value!r}")


@attrs.frozen
class ServiceSpec:
    """
    One exposed service.

    @ivar name: what clients ask for (by default the port number).
    @ivar kind: C{"tcp"} or C{"udp"}.
    @ivar host: where the service listens, from the host's point of view.
    @ivar port: its port.
    @ivar policy: who may use it.
    @ivar compress: allow lz4 compression when a client offers it.
    @ivar serve: for a service served in this process rather than on a
        port (a Twisted factory exposed with C{beam:service=NAME}, see
        L{beam.endpoints}): called as C{serve(peer, stats)} for each
        admitted tunnel with the client's peer ID and the service's
        L{TunnelStats}, it returns the protocol to connect to the stream
        (which may count C{active} and bytes in C{stats}), or L{None} to
        refuse.  C{host} and C{port} are then unused.
    """

    name: str
    kind: str = attrs.field(default="tcp", validator=_checkKind)
    host: str = "127.0.0.1"
    port: int = attrs.field(default=0, validator=_checkPort)
    policy: AccessPolicy = PUBLIC
    compress: bool = False
    serve: Optional[Callable[[PeerID, TunnelStats], Optional[IProtocol]]] = None

    @classmethod
    def forPort(cls, port: int, name: Optional[str] = None, **kw: Any) -> "ServiceSpec":
        """
        A service on C{port}, named C{name} or else the port number
        (C{beam 3000} exposes service C{"3000"}).
        """
        return cls(name=name or str(port), port=port, **kw)

    @property
    def where(self) -> str:
        if self.serve is not None:
            return "in-process"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _compressionAvailable() -> bool:
    try:
        import beam.tunnel.compress  # noqa: F401
    except ImportError:
        return False
    return True


def wrapStream(proto: IProtocol, compression: str) -> IProtocol:
    """
    The protocol to connect to a stream on which C{proto} should speak,
    with the chosen compression (C{""} for none) in between.
    """
    if not compression:
        return proto
    from beam.tunnel.compress import DecompressingProtocol

    return DecompressingProtocol(proto)


class _Unknown(ServiceNotOpenable):
    """
    The refusal of a request for a service that does not exist or that the
    peer may not open: the peer sees only the message, our log the reason.

    @ivar reason: why, for our log ("no such service", "wrong secret", ...).
    @ivar service: the service refused, if it exists (its refusals are
        counted).
    """

    def __init__(self, message: str, reason: str, service: Optional[str] = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.service = service


def _exposedAgain(
    existing: ServiceSpec, spec: ServiceSpec, name: Optional[str], allow: Optional[list[PeerID]], secret: bool
) -> str:
    """
    Why exposing C{spec} is refused when C{existing} exposes its port, and
    what to run instead.  The change is never made in place: the tunnel
    belongs to whoever exposed it (a C{beam PORT} still showing its share
    address, which a change of compression or access would make wrong),
    so the user stops it and exposes it again, with the exact commands.
    """
    import shlex

    what = f"{spec.kind} port {spec.port} is already exposed as {existing.name!r}"
    if (existing.compress == spec.compress and name in (None, existing.name)
            and (existing.policy.secret is not None) == secret and existing.policy.allow == spec.policy.allow):
        return f"{what} with these settings: `beam status` shows its share address"
    command = " ".join(shlex.quote(word) for word in [
        "beam", str(spec.port),
        *(["--name", name] if name else []),
        *(["--host", spec.host] if spec.host != "127.0.0.1" else []),
        *(["--udp"] if spec.kind == "udp" else []),
        *(["--compress"] if spec.compress else []),
        *[w for peer in allow or () for w in ("--allow", str(peer))],
        *(["--secret"] if secret else []),
    ])
    return (f"{what} ({'with' if existing.compress else 'without'} compression); to change it, stop it and "
            f"expose it again: `beam stop {shlex.quote(existing.name)} && {command}`")


class TunnelHost(Service):
    """
    Exposes local services over C{/beam/tunnel/1.0.0} on C{node}.

    Started (as the daemon's C{"tunnels"} service, or by hand), it serves the protocol;
    stopped, it stops serving and aborts the tunnels it carries.  Services
    can be exposed and withdrawn at any time; withdrawing one leaves its
    open connections running.

    @ivar services: the exposed services by name, in the order exposed.
    @ivar stats: counters per service name (for a UDP service, C{total}
        counts sessions; datagrams are in L{udpStats}).
    """

    log = Logger()
    # Twisted's Service says name = None, which mypy reads as "always None".
    name = "tunnels"  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        node: Any,
        *,
        requestTimeout: float = 10.0,
        connectTimeout: float = 10.0,
        random: Callable[[int], bytes] = os.urandom,
        halfClosedTimeout: Optional[float] = HALF_CLOSED_TIMEOUT,
        idleTimeout: Optional[float] = None,
        refusalLogInterval: float = 10.0,
    ) -> None:
        """
        @param requestTimeout: seconds a new stream may take to send its
            request before it is reset.
        @param connectTimeout: seconds to wait for the local service to
            accept a connection.
        @param random: where generated secrets come from.
        @param halfClosedTimeout: seconds a half-closed tunnel may go
            without moving a byte before it is aborted (L{None}: never).
        @param idleTimeout: the same for any tunnel (L{None}: never).
        @param refusalLogInterval: tunnels refused for a resource limit
            are logged at most once per this many seconds, with a count.
        """
        self.reactor = reactor
        self.node = node
        self.random = random
        #: called with no arguments after a service is exposed or withdrawn
        #: (the name service republishes our records).
        self.changeObservers: list[Callable[[], None]] = []
        self.requestTimeout = requestTimeout
        self.connectTimeout = connectTimeout
        self.services: dict[str, ServiceSpec] = {}
        self.stats: dict[str, TunnelStats] = {}
        #: datagram counters per UDP service (L{beam.tunnel.udp.UDPStats}).
        self.udpStats: dict[str, Any] = {}
        self.halfClosedTimeout = halfClosedTimeout
        self.idleTimeout = idleTimeout
        self.refusalLogInterval = refusalLogInterval
        self._splices: set[Splice] = set()
        self._pending: set[_HostStream] = set()
        #: local connections (descriptors) open per peer, for the per-peer
        #: limit that holds whether or not the node accounts streams.
        self.peerFDs: dict[PeerID, int] = {}
        self._busyUnlogged = 0
        self._lastBusyLog: Optional[float] = None
        #: the HTTP inspector's store (L{beam.tunnel.inspect.store.RequestStore}):
        #: when set and enabled, every TCP tunnel connection gets an observer
        #: of its bytes; L{None} (or disabled): no byte is looked at.
        self.inspector: Optional["RequestStore"] = None

    def _resources(self) -> Any:
        """
        The node's resource manager, or L{None} (a node without one).
        """
        return getattr(self.node, "resources", None)

    def _allowTag(self, spec: ServiceSpec) -> str:
        return f"tunnel:{spec.name}"

    def _allowPeers(self, spec: ServiceSpec, allow: bool) -> None:
        """
        Peers in C{spec}'s allow list get the resource manager's
        allowed-peer limits while it is exposed.
        """
        resources = self._resources()
        if resources is None or spec.policy.allow is None:
            return
        for peer in spec.policy.allow:
            if allow:
                resources.allow(peer, self._allowTag(spec))
            else:
                resources.disallow(peer, self._allowTag(spec))

    def peerFDLimit(self, peer: PeerID) -> int:
        """
        The most local connections C{peer} may hold open through our
        tunnels: the resource manager's per-peer C{fd} limit (by default
        a sixteenth of three quarters of the process's descriptor limit),
        or its allowed-peer limit for a peer in an allow list.
        """
        resources = self._resources()
        if resources is None:
            return UNLIMITED
        limits = resources.limits
        return int(limits.allowedPeer.fd if resources.isAllowed(peer) else limits.peer.fd)
    # -- services --------------------------------------------------------

    def expose(self, spec: ServiceSpec) -> None:
        """
        Start accepting tunnels to C{spec}.

        @raise ServiceExists: a service of that name is exposed.
        """
        if spec.name in self.services:
            raise ServiceExists(f"a service named {spec.name!r} is already exposed")
        self.services[spec.name] = spec
        self.stats.setdefault(spec.name, TunnelStats())
        self._allowPeers(spec, True)
        self._changed()

    def unexpose(self, name: str) -> ServiceSpec:
        """
        Stop accepting new tunnels to C{name}.

        @raise ServiceNotFound: no service of that name is exposed.
        """
        try:
            spec = self.services.pop(name)
        except KeyError:
            raise ServiceNotFound(f"no service named {name!r} is exposed") from None
        self._allowPeers(spec, False)
        self._changed()
        return spec

    def _changed(self) -> None:
        for observer in list(self.changeObservers):
            try:
                observer()
            except Exception:
                self.log.failure("a tunnel change observer failed")

    def lookup(self, name: str) -> ServiceSpec:
        """
        The service a request names; C{""} means the first one exposed.

        @raise ServiceNotFound: none such.
        """
        if not name:
            for spec in self.services.values():
                return spec
            raise ServiceNotFound("this host exposes no services")
        found = self.services.get(name)
        if found is None:
            raise ServiceNotFound(f"no service named {name!r}")
        return found

    @property
    def publicServices(self) -> list[str]:
        """
        The names of the services anyone may open, in the order exposed:
        what our public name record lists.  Private services (an allow
        list or a secret) are learned from their share address.
        """
        return [name for name, spec in self.services.items() if spec.policy.isPublic]

    def _admit(self, request: TunnelRequest, peer: PeerID) -> ServiceSpec:
        """
        The service C{request} names, if C{peer} may open it; C{""} means
        the first one exposed that C{peer} may open.

        A service that does not exist and one C{peer} may not open are
        refused alike (same status, same message), so that a stranger
        learns nothing about private services; only the host's log says
        which it was.

        @raise ServiceNotFound: none such that C{peer} may open.
        """
        if request.service:
            what = f"no service {request.service!r} that you may open on {self.node.peerID}"
            spec = self.services.get(request.service)
            if spec is None:
                raise _Unknown(what, "no such service")
            try:
                spec.policy.check(peer, request.secret)
            except AccessDenied as e:
                raise _Unknown(what, str(e), spec.name) from None
            return spec
        what = f"no service that you may open on {self.node.peerID}"
        for spec in self.services.values():
            try:
                spec.policy.check(peer, request.secret)
            except AccessDenied:
                continue
            return spec
        raise _Unknown(what, "no default service it may open")

    @property
    def totals(self) -> TunnelStats:
        """
        The counters of all services added up.
        """
        total = TunnelStats()
        for stats in self.stats.values():
            for field in TunnelStats.__slots__:
                setattr(total, field, getattr(total, field) + getattr(stats, field))
        return total

    # -- status and the control API --------------------------------------

    def exposePort(
        self,
        port: int,
        name: Optional[str] = None,
        udp: bool = False,
        compress: bool = False,
        allow: Optional[list[PeerID]] = None,
        secret: bool | str = False,
        host: str = "127.0.0.1",
    ) -> TunnelStatus:
        """
        Expose C{port} on C{host} (by default this machine's loopback), as
        C{beam PORT} and C{POST /v1/tunnels} ask.

        @param allow: admit only these peers (L{None}: no allow list).
        @param secret: C{True} generates a secret, a string is the secret.
        @raise Conflict: the port, or the name, is already exposed.
        @raise TunnelSpecError: the port or name is not valid.
        """
        kind = "udp" if udp else "tcp"
        if isinstance(secret, str) and secret:
            secretBytes: Optional[bytes] = secret.encode("utf-8")
        elif secret is True:
            secretBytes = self.random(SECRET_BYTES)
        else:
            secretBytes = None
        policy = PUBLIC if allow is None and secretBytes is None else AccessPolicy(
            allow=frozenset(allow) if allow is not None else None, secret=secretBytes
        )
        try:
            spec = ServiceSpec.forPort(port, name, kind=kind, host=host, policy=policy, compress=compress)
        except ValueError as e:
            raise TunnelSpecError(str(e)) from None
        for existing in self.services.values():
            if existing.port == port and existing.kind == kind and existing.host == spec.host:
                raise Conflict(_exposedAgain(existing, spec, name, allow, secretBytes is not None))
        if spec.name in self.services:
            raise Conflict(f"a tunnel named {spec.name!r} already exists")
        self.expose(spec)
        status = self.tunnelStatus(spec)
        # The log (the journal, under systemd) never gets the secret: it is
        # for whoever holds the share address, which the CLI prints.
        connect = status.connect.split("#", 1)[0] + (" (with the secret)" if "#" in status.connect else "")
        if "@/" in connect:
            # No address yet (a Tor-only node before its onion is up): a
            # share address without one would lead nowhere.
            self.log.info(
                "exposing {kind} {where} as {name}; the node has no address yet: "
                "`beam status` shows the share address once it has one",
                kind=kind, where=spec.where, name=spec.name,
            )
            return status
        self.log.info(
            "exposing {kind} {where} as {name}; on the other side run: {connect}",
            kind=kind, where=spec.where, name=spec.name, connect=connect,
        )
        return status

    def find(self, key: str) -> ServiceSpec:
        """
        The service named C{key}, or else exposing port C{key}.

        @raise NotFound: none.
        """
        spec = self.services.get(key)
        if spec is not None:
            return spec
        for spec in self.services.values():
            if str(spec.port) == key:
                return spec
        raise NotFound(f"no tunnel named or on port {key}")

    def remove(self, key: str) -> TunnelStatus:
        """
        Stop exposing the service named C{key} (or on port C{key}).

        @return: its last status.
        @raise NotFound: none such.
        """
        spec = self.find(key)
        status = self.tunnelStatus(spec)
        self.unexpose(spec.name)
        self.log.info("stopped exposing {where} ({name})", where=spec.where, name=spec.name)
        return status

    def shareAddress(self, name: str) -> Any:
        """
        The L{ShareAddress<beam.tunnel.share.ShareAddress>} of the service
        C{name}: our addresses for strangers (the node's
        C{shareableAddrs}: confirmed public ones, relay ones, then the
        listen addresses, loopback last), the service, its secret.
        """
        from beam.tunnel.share import ShareAddress

        spec = self.services.get(name)
        shareable = getattr(self.node, "shareableAddrs", None)
        if callable(shareable):
            addrs = [a.withoutPeerID() for a in shareable()]
        else:
            addrs = sorted((a.withoutPeerID() for a in self.node.advertisedAddrs()), key=lambda a: a.isLoopback())
        return ShareAddress(
            peer=self.node.peerID, addrs=tuple(addrs), service=name,
            secret=spec.policy.secret if spec is not None else None,
        )

    def tunnelStatus(self, spec: ServiceSpec) -> TunnelStatus:
        """
        The status of one exposed service.
        """
        share = self.shareAddress(spec.name)
        allow = spec.policy.allow
        return TunnelStatus(
            name=spec.name,
            port=spec.port,
            kind=spec.kind,
            target=spec.where,
            compress=spec.compress,
            private=not spec.policy.isPublic,
            allow=tuple(sorted(str(p) for p in allow)) if allow is not None else None,
            share=str(share),
            connect=f"beam connect {share}" + (" --udp" if spec.kind == "udp" else ""),
            stats=trafficStatus(self.stats.get(spec.name)),
        )

    def status(self) -> tuple[TunnelStatus, ...]:
        """
        Every exposed service, in the order exposed.
        """
        return tuple(self.tunnelStatus(spec) for spec in self.services.values())

    def controlResource(self) -> Any:
        """
        C{/v1/tunnels}: list, expose, withdraw (L{beam.tunnel.resource}).
        """
        from beam.tunnel.resource import TunnelsResource

        return TunnelsResource(self)

    # -- service ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.node.setStreamHandler(TUNNEL_PROTOCOL, self._newStream)

    def stopService(self) -> None:
        """
        Stop serving, drop tunnels being set up and abort open ones.
        """
        super().stopService()
        self.node.removeStreamHandler(TUNNEL_PROTOCOL)
        for pending in list(self._pending):
            assert pending.transport is not None  # pending from connectionMade on
            pending.transport.abortConnection()
        for splice in list(self._splices):
            splice.abort()

    def _newStream(self) -> IProtocol:
        return _HostStream(self)

    # -- one request -----------------------------------------------------

    def _statsFor(self, name: str) -> TunnelStats:
        return self.stats.setdefault(name, TunnelStats())

    def _handle(self, proto: "_HostStream", request: TunnelRequest, peer: PeerID) -> None:
        label = request.service or "the default service"
        try:
            # Access first: nothing about a service (its kind, whether it
            # exists) is told to a peer that may not open it.
            spec = self._admit(request, peer)
            label = spec.name
            if request.kind != spec.kind:
                raise BadTunnelRequest(
                    f"service {spec.name!r} is {spec.kind.upper()}, not {request.kind.upper()}"
                )
        except _Unknown as e:
            if e.service is not None:
                self._statsFor(e.service).refused += 1
            self.log.info(
                "refused tunnel from {peer} for {service}: {reason}",
                peer=peer, service=label, reason=e.reason,
            )
            proto.refuse(e)
            return
        except TunnelRefused as e:
            if label in self.stats:
                self._statsFor(label).refused += 1
            self.log.info(
                "refused tunnel from {peer} for {service}: {reason}",
                peer=peer, service=label, reason=str(e),
            )
            proto.refuse(e)
            return
        allowed = COMPRESSIONS if spec.compress and _compressionAvailable() else ()
        compression = chooseCompression(request.compression, allowed)
        if request.probe:
            proto.answerProbe(TunnelResponse(compression=compression, service=spec.name))
            return
        if spec.serve is not None:
            self._serveInProcess(proto, spec, compression, peer)
            return
        if spec.kind == "udp":
            self._handleUDP(proto, spec, compression, peer)
            return
        self._connectTCP(proto, spec, compression, peer)

    # -- descriptors -----------------------------------------------------

    def _reserveFD(self, proto: "_HostStream", spec: ServiceSpec, peer: PeerID) -> Optional["_FDHold"]:
        """
        Reserve the descriptor of the local connection (or UDP socket) a
        tunnel stream is about to open: in the stream's resource scopes
        when the node accounts the stream, else against L{peerFDs}.

        @return: the reservation (release it once the local connection
            ended), or L{None} when a limit is reached: the stream was
            then answered L{TunnelBusy} and closed.
        """
        scope = getattr(proto.transport, "resourceScope", None)
        try:
            if scope is not None:
                if scope.service is None:
                    scope.setService(spec.name)
                scope.reserveFD()
            else:
                limit = self.peerFDLimit(peer)
                if self.peerFDs.get(peer, 0) >= limit:
                    raise ResourceLimitExceeded(f"peer {peer}", "fd", limit)
        except ResourceLimitExceeded as e:
            self._refuseBusy(proto, spec, peer, e)
            return None
        self.peerFDs[peer] = self.peerFDs.get(peer, 0) + 1
        return _FDHold(self, peer, scope)

    def _releasePeerFD(self, peer: PeerID) -> None:
        left = self.peerFDs.get(peer, 0) - 1
        if left > 0:
            self.peerFDs[peer] = left
        else:
            self.peerFDs.pop(peer, None)

    def _refuseBusy(self, proto: "_HostStream", spec: ServiceSpec, peer: PeerID, e: ResourceLimitExceeded) -> None:
        """
        Answer a tunnel over a resource limit with L{TunnelBusy} and a
        message saying which limit; count it, and log at most once per
        L{refusalLogInterval} (a flood must not flood the log too).
        """
        kind = e.scope.split(" ", 1)[0]
        if kind == "peer":
            why = f"too many tunnel connections from this peer (limit {e.limit})"
        elif kind == "service":
            why = f"too many tunnel connections to service {spec.name!r} (limit {e.limit})"
        else:
            why = f"the host is at its {e.resource} limit ({e.limit})"
        self._statsFor(spec.name).refused += 1
        self._busyUnlogged += 1
        now = self.reactor.seconds()
        if self._lastBusyLog is None or now - self._lastBusyLog >= self.refusalLogInterval:
            self.log.info(
                "refused {count} tunnel(s) over a resource limit since the last report; "
                "the last from {peer} for {service}: {reason}",
                count=self._busyUnlogged, peer=peer, service=spec.name, reason=why,
            )
            self._busyUnlogged = 0
            self._lastBusyLog = now
        proto.refuse(TunnelBusy(f"{why}; try again once some of yours have closed"))

    def _serveInProcess(self, proto: "_HostStream", spec: ServiceSpec, compression: str, peer: PeerID) -> None:
        """
        Hand the stream to the protocol C{spec.serve} builds, in this
        process: no local connection to make, so the answer is immediate.
        A C{serve} that raises or returns L{None} is a refusal.
        """
        stats = self._statsFor(spec.name)
        assert spec.serve is not None
        local: Optional[IProtocol]
        try:
            local = spec.serve(peer, stats)
        except Exception:  # noqa: BLE001 - user code; reported to the client
            self.log.failure("building the protocol for {service} failed", service=spec.name)
            local = None
        if local is None:
            stats.failed += 1
            self.log.info(
                "tunnel from {peer} for {service} failed: the service did not accept the connection",
                peer=peer, service=spec.name,
            )
            proto.refuse(ServiceUnavailable(f"service {spec.name!r} did not accept the connection"))
            return
        stats.total += 1
        self._pending.discard(proto)
        stream = proto.stream()
        stream.write(encodeResponse(TunnelResponse(compression=compression, service=spec.name)))
        wrapped = wrapStream(local, compression)
        stream.setProtocol(wrapped)
        if proto.leftover:
            wrapped.dataReceived(proto.leftover)
        stream.resumeProducing()

    def _handleUDP(self, proto: "_HostStream", spec: ServiceSpec, compression: str, peer: PeerID) -> None:
        """
        Open a connected UDP socket to the service and hand the stream to
        L{beam.tunnel.udp.UDPHostProtocol}.
        """
        from beam.tunnel.udp import UDPHostProtocol, UDPStats

        hold = self._reserveFD(proto, spec, peer)
        if hold is None:
            return
        stats = self.udpStats.setdefault(spec.name, UDPStats(traffic=self._statsFor(spec.name)))
        relay = UDPHostProtocol(self.reactor, spec.host, spec.port, stats=stats)
        try:
            relay.openSocket()
        except Exception as e:  # noqa: BLE001 - reported to the client
            hold.release()
            why = f"cannot open a UDP socket to {spec.where}: {e}"
            self._statsFor(spec.name).failed += 1
            self.log.info(
                "tunnel from {peer} for {service} failed: {reason}",
                peer=peer, service=spec.name, reason=why,
            )
            proto.refuse(ServiceUnavailable(why))
            return
        self._statsFor(spec.name).total += 1
        relay.whenClosed().addBoth(lambda _: hold.release())
        self._pending.discard(proto)
        stream = proto.stream()
        stream.write(encodeResponse(TunnelResponse(compression=compression, service=spec.name)))
        wrapped = wrapStream(relay, compression)
        stream.setProtocol(wrapped)
        if proto.leftover:
            wrapped.dataReceived(proto.leftover)
        stream.resumeProducing()

    def _connectTCP(self, proto: "_HostStream", spec: ServiceSpec, compression: str, peer: PeerID) -> None:
        hold = self._reserveFD(proto, spec, peer)
        if hold is None:
            return
        stats = self._statsFor(spec.name)

        def ended(splice: Splice) -> None:
            self._splices.discard(splice)
            hold.release()

        splice = Splice(
            stats, onEnd=ended, clock=self.reactor,
            halfClosedTimeout=self.halfClosedTimeout, idleTimeout=self.idleTimeout,
        )
        endpoint = _clientEndpoint(self.reactor, spec.host, spec.port, self.connectTimeout)
        d = endpoint.connect(_OneProtocol(splice.local))
        proto.connecting = d

        def connected(_: Any) -> None:
            proto.connecting = None
            if proto.gone:
                assert splice.local.transport is not None  # the endpoint connected it
                splice.local.transport.abortConnection()
                hold.release()
                return
            self._pending.discard(proto)
            stream = proto.stream()
            stream.write(encodeResponse(TunnelResponse(compression=compression, service=spec.name)))
            wrapped = wrapStream(splice.remote, compression)
            stream.setProtocol(wrapped)
            inspector = self.inspector
            if inspector is not None and inspector.enabled:
                # Before the leftover: those are the first request's bytes.
                inspector.observer(spec.name, str(peer)).attach(splice)
            if proto.leftover:
                wrapped.dataReceived(proto.leftover)
            self._splices.add(splice)
            splice.start()

        def failed(f: Failure) -> None:
            proto.connecting = None
            hold.release()
            if proto.gone or f.check(CancelledError):
                return
            stats.failed += 1
            if f.check(ConnectionRefusedError):
                why = f"nothing is listening on {spec.where}"
            elif f.check(ConnectTimeout):
                why = f"{spec.where} did not answer within {self.connectTimeout:g} s"
            else:
                why = f"cannot reach {spec.where}: {f.getErrorMessage()}"
            self.log.info(
                "tunnel from {peer} for {service} failed: {reason}",
                peer=peer, service=spec.name, reason=why,
            )
            proto.refuse(ServiceUnavailable(why))

        d.addCallbacks(connected, failed)


class _FDHold:
    """
    The descriptor reserved for one tunnel's local connection: released
    once, when that connection ended (or was never made).
    """

    __slots__ = ("host", "peer", "scope", "released")

    def __init__(self, host: TunnelHost, peer: PeerID, scope: Any) -> None:
        self.host = host
        self.peer = peer
        self.scope = scope
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.host._releasePeerFD(self.peer)
        scope = self.scope
        # The stream's scope releases what it holds when the stream ends
        # (done()), which may be first: never release it twice.
        if scope is not None and not scope.closed and scope.fd:
            scope.releaseFD()


class _OneProtocol(Factory):
    """
    Connects one given protocol, as C{endpoints.connectProtocol} does,
    without defining a class per call (those were 2.6 MiB per 1,000 open
    tunnelled connections).
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


def _clientEndpoint(reactor: Any, host: str, port: int, timeout: float) -> Any:
    try:
        isV6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    if isV6:
        return endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)


@implementer(IHalfCloseableProtocol)
class _HostStream(Protocol):
    """
    The protocol on an inbound tunnel stream until it is spliced: reads
    the request, then waits (stream paused) for the host to connect.

    @ivar gone: the stream ended before it was spliced.
    @ivar connecting: the pending connection to the service.
    @ivar leftover: bytes that followed the request.
    """

    transport: Optional[IStreamTransport]

    def __init__(self, host: TunnelHost) -> None:
        self.host = host
        self.reader = RequestReader()
        self.gone = False
        self.done = False
        self.connecting: Optional[Deferred[Any]] = None
        self.leftover = b""
        self._timer: Any = None

    def stream(self) -> "YamuxStream":
        """
        The stream, to connect another protocol to (C{setProtocol}): the
        node hands stream handlers yamux streams.
        """
        assert self.transport is not None  # the host answers only connected streams
        return cast("YamuxStream", self.transport)

    def _peer(self) -> Any:
        conn = getattr(self.transport, "connection", None)
        return conn.remotePeer if conn is not None else None

    def connectionMade(self) -> None:
        self.host._pending.add(self)
        self._timer = self.host.reactor.callLater(self.host.requestTimeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        self.host.log.info(
            "tunnel request from {peer} did not arrive within {t:g} s", peer=self._peer(),
            t=self.host.requestTimeout,
        )
        assert self.transport is not None  # the timer starts in connectionMade
        self.transport.abortConnection()

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def dataReceived(self, data: bytes) -> None:
        if self.done:
            return  # after a refusal: discard
        try:
            request = self.reader.feed(data)
        except ProtocolError as e:
            self._cancelTimer()
            self.host.log.info("bad tunnel request from {peer}: {reason}", peer=self._peer(), reason=str(e))
            self.refuse(BadTunnelRequest(f"bad tunnel request: {e}"))
            return
        if request is None:
            return
        self._cancelTimer()
        self.done = True
        self.leftover = self.reader.leftover
        assert self.transport is not None  # data arrives only once connected
        self.transport.pauseProducing()
        try:
            self.host._handle(self, request, self._peer())
        except Exception:  # noqa: BLE001 - never raise out of dataReceived
            self.host.log.failure("handling a tunnel request failed")
            self.refuse(BadTunnelRequest("the host failed to handle the request"))

    def answerProbe(self, response: TunnelResponse) -> None:
        """
        A probe passed every check: say so and close, as for a refusal.
        """
        self.done = True
        self.host._pending.discard(self)
        assert self.transport is not None  # answering a request it sent
        self.transport.write(encodeResponse(response))
        self.transport.loseConnection()
        self.transport.resumeProducing()

    def refuse(self, error: TunnelRefused) -> None:
        """
        Answer with C{error} and close our side; what the client still
        sends is read and dropped so the stream can end.
        """
        self.done = True
        self.host._pending.discard(self)
        assert self.transport is not None  # refusing a request it sent
        self.transport.write(encodeResponse(TunnelResponse.refusing(error)))
        self.transport.loseConnection()
        self.transport.resumeProducing()

    def readConnectionLost(self) -> None:
        if not self.done:
            self._cancelTimer()
            self.done = True
            self.host._pending.discard(self)
            assert self.transport is not None  # its input ended, so it was connected
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        self._cancelTimer()
        self.host._pending.discard(self)
        if self.connecting is not None:
            d, self.connecting = self.connecting, None
            d.cancel()
