"""
The daemon's C{"dns"} service: a local DNS server for the C{beam.} zone,
so that C{curl http://alice.beam:3000/} and a browser reach alice's
service with no C{beam connect} (docs/dns.md).

It listens on C{[dns] bind}:C{port} (UDP and TCP, loopback only) and
answers with L{BeamZone<beam.names.dnszone.BeamZone>}: C{NAME.beam} and
C{SERVICE.NAME.beam} get an address of their own from C{[dns] addresses}
(L{AddressAllocator<beam.names.dnszone.AddressAllocator>}, remembered in
C{state.json} so a name keeps its address across restarts), and before
the answer goes out the node listens on that address, on the port of
each service the name's record lists (a service named by a port is that
port; see L{servicePort<beam.names.dnszone.servicePort>}), each a
L{TunnelForward<beam.tunnel.client.TunnelForward>} into the owner's
tunnel.  Linux routes all of 127.0.0.0/8 to the loopback interface, so
no setup is needed there.

Why twisted.names: it is part of Twisted, which Beam runs on, so the
message codec needs no new dependency, and answering from a L{Deferred}
fits the name service's asynchronous lookups; its own server classes are
not used because this zone's answers are not a static zone or a cache,
and the bounds on sizes, lookups and connections below are ours.

A port that is taken does not stop the node: a warning, the status says
why, and the server tries again every L{RETRY_INTERVAL} seconds.

Any local process may ask, so everything a query can make us do is
bounded: queries being answered (L{MAX_PENDING}), lookups at once
(L{MAX_LOOKUPS}, identical ones shared) and per second (a token bucket),
the lookup cache, TCP connections, their buffers and idle time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredLock, fail, maybeDeferred, succeed
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.controlapi import BadRequest, JSONResource, checkUnknown, field, readBody
from beam.daemon.config import DnsConfig
from beam.errors import BeamError, NotFound, describe
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.names.dnszone import (
    ANSWER_TTL,
    MAX_QUERY,
    NEGATIVE_TTL,
    SERVFAIL_TTL,
    ZONE,
    AddressAllocator,
    BeamZone,
    LookupFailed,
    NameMissing,
    servicePort,
)
from beam.names.record import InvalidName, normalizeName
from beam.storage.home import readState, updateState

__all__ = ["DnsAllocation", "DnsResource", "DnsService", "DnsStatus", "makeDns"]

#: Seconds between attempts to listen when the port was taken.
RETRY_INTERVAL = 60.0

#: Queries being answered at once (UDP and TCP); more are dropped.
MAX_PENDING = 256

#: Different names being looked up at once; more get SERVFAIL.
MAX_LOOKUPS = 16

#: Lookups started per second on average, and in a burst.
LOOKUP_RATE = 20.0
LOOKUP_BURST = 40

#: Seconds a lookup may take before its queries get SERVFAIL.
LOOKUP_TIMEOUT = 10.0

#: Names whose lookup result is remembered (briefly: see L{_Lookups}).
CACHE_SIZE = 1024

#: TCP connections at once, queries in flight on one, and idle seconds.
MAX_TCP = 32
MAX_TCP_PENDING = 4
TCP_IDLE = 10.0

#: The state.json key of the remembered allocations.
STATE_KEY = "dns_addresses"


@attrs.frozen
class DnsAllocation:
    """
    One address handed out.

    @ivar host: C{NAME.beam} or C{SERVICE.NAME.beam}.
    @ivar listening: C{ADDRESS:PORT} of each running forward.
    @ivar errors: why a service's port could not be listened on.
    """

    host: str
    address: str
    peerID: Optional[str] = None
    ports: tuple[int, ...] = ()
    listening: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


@attrs.frozen
class DnsStatus:
    """
    The DNS server.

    @ivar listening: C{ADDRESS:PORT} it answers on (UDP and TCP), or
        L{None} (then C{error} says why).
    @ivar allocations: the addresses handed out in this run.
    """

    enabled: bool
    zone: str = ZONE
    listening: Optional[str] = None
    error: Optional[str] = None
    addresses: str = ""
    queries: int = 0
    dropped: int = 0
    allocations: tuple[DnsAllocation, ...] = ()


class _Allocation:
    """
    The forwards behind one address.
    """

    def __init__(self, name: str, service: Optional[str], address: str) -> None:
        self.name = name
        self.service = service
        self.address = address
        self.peerID: Optional[str] = None
        self.forwards: dict[int, Any] = {}
        self.errors: dict[int, tuple[str, float]] = {}
        self.lock = DeferredLock()

    @property
    def host(self) -> str:
        return f"{AddressAllocator.key(self.name, self.service)}.{ZONE}"


class _Lookups:
    """
    Name lookups through the name service, shared, cached and bounded.

    A result is kept for the answer TTL (an address answer), the negative
    TTL (no record) or L{SERVFAIL_TTL} (a failure), so a flood of queries
    for one name costs one lookup every few seconds.
    """

    def __init__(self, reactor: Any, resolve: Any) -> None:
        self.reactor = reactor
        self.resolveName = resolve
        self._cache: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._inflight: dict[str, list[Deferred[Any]]] = {}
        self._tokens = float(LOOKUP_BURST)
        self._refilled = reactor.seconds()

    def resolve(self, name: str) -> Deferred[Any]:
        now = self.reactor.seconds()
        cached = self._cache.get(name)
        if cached is not None:
            if cached[0] > now:
                result = cached[1]
                return fail(result) if isinstance(result, Failure) else succeed(result)
            del self._cache[name]
        waiting = self._inflight.get(name)
        if waiting is None:
            if len(self._inflight) >= MAX_LOOKUPS:
                return fail(LookupFailed("too many names being looked up at once"))
            if not self._take(now):
                return fail(LookupFailed("too many lookups: rate limited"))
            d: Deferred[Any] = Deferred()
            self._inflight[name] = [d]
            # Last: a lookup may fire at once.
            self._start(name)
            return d
        d = Deferred()
        waiting.append(d)
        return d

    def _take(self, now: float) -> bool:
        self._tokens = min(float(LOOKUP_BURST), self._tokens + (now - self._refilled) * LOOKUP_RATE)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _start(self, name: str) -> None:
        if self.resolveName is None:
            d: Deferred[Any] = fail(LookupFailed("this node resolves no names"))
        else:
            d = maybeDeferred(self.resolveName, name, False)
            d.addTimeout(LOOKUP_TIMEOUT, self.reactor)

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                result = _zoneFailure(result)
                ttl = NEGATIVE_TTL if result.check(NameMissing) else SERVFAIL_TTL
            else:
                ttl = ANSWER_TTL
            self._cache[name] = (self.reactor.seconds() + ttl, result)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            for waiter in self._inflight.pop(name, []):
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        d.addBoth(done)


def _zoneFailure(f: Failure) -> Failure:
    """
    A lookup's failure as the zone sees it: no record (or no such name)
    is L{NameMissing}, anything else L{LookupFailed}.
    """
    if f.check(NameMissing, LookupFailed):
        return f
    if f.check(NotFound, InvalidName):
        return Failure(NameMissing(describe(f.value)))
    return Failure(LookupFailed(describe(f.value)))


class _UDPServer(DatagramProtocol):
    def __init__(self, service: DnsService) -> None:
        self.service = service

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        d = self.service.answerBytes(data)
        if d is None:
            return

        def send(reply: Optional[bytes]) -> None:
            if reply is not None and self.transport is not None:
                self.transport.write(reply, addr)

        d.addCallback(send).addErrback(lambda f: self.service.log.failure("answering a DNS datagram", f))


class _TCPServer(Protocol):
    """
    DNS over TCP (RFC 1035 4.2.2, RFC 7766): two-byte length prefixes;
    a length over L{MAX_QUERY} or a connection idle for L{TCP_IDLE}
    seconds is closed.
    """

    def __init__(self, service: DnsService) -> None:
        self.service = service
        self._buffer = b""
        self._pending = 0
        self._idle: Any = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.service._tcpConnections += 1
        if self.service._tcpConnections > MAX_TCP:
            transport.abortConnection()
            return
        self._idle = self.service.reactor.callLater(TCP_IDLE, transport.abortConnection)

    def connectionLost(self, reason: Any = None) -> None:
        self.service._tcpConnections -= 1
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        self._buffer += data
        if self._idle is not None and self._idle.active():
            self._idle.reset(TCP_IDLE)
        while len(self._buffer) >= 2:
            size = int.from_bytes(self._buffer[:2], "big")
            if size > MAX_QUERY or self._pending >= MAX_TCP_PENDING:
                transport.loseConnection()
                self._buffer = b""
                return
            if len(self._buffer) < 2 + size:
                return
            query, self._buffer = self._buffer[2:2 + size], self._buffer[2 + size:]
            d = self.service.answerBytes(query, maxSize=65535)
            if d is None:
                continue
            self._pending += 1

            def send(reply: Optional[bytes]) -> None:
                self._pending -= 1
                if reply is not None and transport.connected:
                    transport.write(len(reply).to_bytes(2, "big") + reply)

            d.addCallback(send).addErrback(lambda f: self.service.log.failure("answering a DNS query", f))


class DnsService(Service):
    """
    The local DNS server (see the module docstring).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: Any,
        names: Any,
        home: Any,
        *,
        enabled: bool = True,
        bind: str = "127.0.0.1",
        port: int = 5380,
        addresses: str = "127.77.0.0/16",
        maxAllocations: int = 4096,
    ) -> None:
        """
        @param host: the node (forwards open their streams on it).
        @param names: the name service (C{resolve(name, acceptNewKey)}),
            or L{None}: every name then gets SERVFAIL.
        @param home: where C{state.json} remembers the allocations.
        """
        self.setName("dns")
        self.reactor = reactor
        self.host = host
        self.names = names
        self.home = home
        self.enabled = enabled
        self.bind = bind
        self.port = port
        self.addresses = addresses
        remembered = readState(home).get(STATE_KEY) if home is not None else None
        self.allocator = AddressAllocator(
            addresses, remembered if isinstance(remembered, dict) else None,
            maxAllocations=maxAllocations, exclude=(bind,),
        )
        self.lookups = _Lookups(reactor, names.resolve if names is not None else None)
        self.zone = BeamZone(self.lookups.resolve, self._allocate)
        self.allocations: dict[str, _Allocation] = {}
        self.listening: Optional[str] = None
        self.error: Optional[str] = None if enabled else "disabled in the configuration ([dns] enabled = false)"
        self.queries = 0
        self.dropped = 0
        self._pending = 0
        self._tcpConnections = 0
        self._ports: list[Any] = []
        self._retry: Any = None
        self._warned = False

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.enabled:
            self._listen()

    def _listen(self) -> None:
        self._retry = None
        ports: list[Any] = []
        try:
            udp = self.reactor.listenUDP(self.port, _UDPServer(self), interface=self.bind)
            ports.append(udp)
            port = udp.getHost().port
            ports.append(self.reactor.listenTCP(port, Factory.forProtocol(lambda: _TCPServer(self)),
                                                interface=self.bind))
        except Exception as e:  # noqa: BLE001 - reported, the node runs on
            for p in ports:
                p.stopListening()
            from beam.p2p.transport.tcp import listenFailureReason

            self.error = f"cannot listen on {self.bind}:{self.port}: {listenFailureReason(e)}"
            if not self._warned:
                # On the default port the usual cause is another Beam node
                # on this machine already answering for .beam (a `beam
                # connect` beside a daemon): worth a line in the log and in
                # `beam status`, not a warning on every command's terminal.
                # A port the user chose is theirs to hear about.
                inUse = "already in use" in self.error and self.port == DnsConfig().port
                (self.log.info if inUse else self.log.warn)(
                    "DNS server: {why}; running without it (retrying every {s:g} s)",
                    why=self.error, s=RETRY_INTERVAL)
                self._warned = True
            if self.running:
                self._retry = self.reactor.callLater(RETRY_INTERVAL, self._listen)
            return
        self._ports = ports
        self.listening = f"{self.bind}:{port}"
        self.error = None
        self.log.info("DNS server for .{zone} on {where} (UDP and TCP)", zone=ZONE, where=self.listening)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        stopping = [maybeDeferred(p.stopListening) for p in self._ports]
        self._ports = []
        self.listening = None
        for alloc in self.allocations.values():
            stopping += [maybeDeferred(f.stopService) for f in alloc.forwards.values()]
            alloc.forwards = {}
        return DeferredList(stopping, consumeErrors=True).addCallback(lambda _: None)

    # -- queries -------------------------------------------------------------

    def answerBytes(self, data: bytes, maxSize: int = 512) -> Optional[Deferred[Optional[bytes]]]:
        """
        The answer to one query, or L{None} when it is dropped because too
        many are being answered.
        """
        self.queries += 1
        if self._pending >= MAX_PENDING:
            self.dropped += 1
            return None
        self._pending += 1

        def done(result: Any) -> Any:
            self._pending -= 1
            return result

        return self.zone.answerBytes(data, maxSize).addBoth(done)

    # -- addresses -------------------------------------------------------------

    def _allocate(self, name: str, service: Optional[str], resolution: Any) -> Deferred[str]:
        """
        The zone's allocator: the address of C{(name, service)}, once the
        node listens on it for each of the service ports.
        """
        if str(resolution.peerID) == str(self.host.peerID):
            # Our own name: the services are on this machine.
            return succeed("127.0.0.1")
        key = self.allocator.key(name, service)
        alloc = self.allocations.get(key)
        if alloc is None:
            known = self.allocator.lookup(name, service)
            address = self.allocator.allocate(name, service)
            alloc = self.allocations[key] = _Allocation(name, service, address)
            if known != address:
                self._remember()
        return alloc.lock.run(self._listenFor, alloc, resolution).addCallback(lambda _: alloc.address)

    def _remember(self) -> None:
        if self.home is None:
            return
        try:
            updateState(self.home, **{STATE_KEY: self.allocator.remembered()})
        except OSError as e:
            self.log.warn("could not save the DNS addresses: {why}", why=e)

    def _wantedPorts(self, alloc: _Allocation, resolution: Any) -> dict[int, str]:
        services = [alloc.service] if alloc.service else list(resolution.services)
        wanted: dict[int, str] = {}
        for service in services:
            port = servicePort(service)
            if port is not None and port not in wanted:
                wanted[port] = service
        return wanted

    def _listenFor(self, alloc: _Allocation, resolution: Any) -> Deferred[None]:
        """
        Make sure a forward to the name's owner listens on each port of
        C{alloc}'s address; a port that cannot be listened on is noted
        (and tried again after L{RETRY_INTERVAL}), the rest go on.
        """
        if not self.running:
            return fail(LookupFailed("the DNS service is stopping"))
        peer = PeerID.fromString(str(resolution.peerID))
        addrs = tuple(Multiaddr.fromString(a) for a in resolution.addrs)
        alloc.peerID = str(peer)
        now = self.reactor.seconds()
        starting = []
        for port, service in self._wantedPorts(alloc, resolution).items():
            fwd = alloc.forwards.get(port)
            if fwd is not None and fwd.peer == peer and fwd.service == service:
                continue
            failed = alloc.errors.get(port)
            if fwd is None and failed is not None and failed[1] > now:
                continue
            starting.append(self._startForward(alloc, port, service, peer, addrs, old=fwd))
        return DeferredList(starting, consumeErrors=True).addCallback(lambda _: None)

    def _startForward(self, alloc: _Allocation, port: int, service: str, peer: PeerID,
                      addrs: tuple[Multiaddr, ...], old: Any = None) -> Deferred[None]:
        from beam.tunnel.client import TunnelForward

        names = self.names
        name = alloc.name

        def resolveAddrs() -> Deferred[Any]:
            return names.resolve(name, False).addCallback(lambda r: [Multiaddr.fromString(a) for a in r.addrs])

        stopped: Deferred[Any] = maybeDeferred(old.stopService) if old is not None else succeed(None)
        alloc.forwards.pop(port, None)
        fwd = TunnelForward(
            self.reactor, self.host, peer, addrs, service, kind="tcp", localPort=port, bind=alloc.address,
            resolveAddrs=resolveAddrs if names is not None else None,
        )

        def started(_: Any) -> None:
            alloc.forwards[port] = fwd
            alloc.errors.pop(port, None)
            self.log.info("{host}: forwarding {address}:{port} to {label}",
                          host=alloc.host, address=alloc.address, port=port, label=fwd.label)

        def failed(f: Failure) -> None:
            from beam.p2p.transport.tcp import listenFailureReason

            why = f"{alloc.address}:{port}: {listenFailureReason(f.value)}"
            alloc.errors[port] = (why, self.reactor.seconds() + RETRY_INTERVAL)
            self.log.warn("{host}: cannot listen on {why}", host=alloc.host, why=why)
            maybeDeferred(fwd.stopService).addErrback(lambda _: None)

        return stopped.addBoth(lambda _: fwd.startService()).addCallbacks(started, failed)

    def address(self, name: str, service: Optional[str] = None) -> Deferred[dict[str, Any]]:
        """
        C{POST /v1/dns/address}: what a DNS query for the name (and
        service) would answer, with the same effects (allocation,
        listeners).

        @return: fires with C{{"host", "address", "ports"}}.
        @raise NotFound: the name has no record (or no such service).
        """
        text = name.strip().lower().removesuffix(".").removesuffix(f".{ZONE}")
        try:
            canonical = normalizeName(text)
        except InvalidName as e:
            return fail(BadRequest(str(e)))
        if service is not None and not service:
            service = None

        def allocate(resolution: Any) -> Deferred[dict[str, Any]]:
            if service is not None and service not in tuple(resolution.services):
                raise NameMissing(f"{canonical!r} lists no service {service!r}")
            d = maybeDeferred(self._allocate, canonical, service, resolution)
            return d.addCallback(lambda address: self._describe(canonical, service, address, resolution))

        def missing(f: Failure) -> Any:
            if f.check(NameMissing):
                raise NotFound(str(f.value))
            return f

        return self.lookups.resolve(canonical).addCallback(allocate).addErrback(missing)

    def _describe(self, name: str, service: Optional[str], address: str, resolution: Any) -> dict[str, Any]:
        key = self.allocator.key(name, service)
        alloc = self.allocations.get(key)
        if alloc is not None and alloc.address == address:
            ports = sorted(alloc.forwards)
        else:
            # Our own name: the services listen where they are.
            ports = sorted(self._wantedPorts(_Allocation(name, service, address), resolution))
        return {"host": f"{key}.{ZONE}", "address": address, "ports": ports}

    # -- status -------------------------------------------------------------

    def status(self) -> DnsStatus:
        return DnsStatus(
            enabled=self.enabled,
            listening=self.listening,
            error=self.error,
            addresses=self.addresses,
            queries=self.queries,
            dropped=self.dropped,
            allocations=tuple(
                DnsAllocation(
                    host=a.host, address=a.address, peerID=a.peerID, ports=tuple(sorted(a.forwards)),
                    listening=tuple(f"{a.address}:{p}" for p in sorted(a.forwards)),
                    errors=tuple(why for why, _ in a.errors.values()),
                )
                for a in self.allocations.values()
            ),
        )

    def controlResource(self) -> Any:
        return DnsResource(self)


class _Address(JSONResource):
    def __init__(self, dns: DnsService) -> None:
        super().__init__()
        self.dns = dns

    def json_POST(self, request: Any) -> Any:
        body = readBody(request)
        checkUnknown(body, {"name", "service"})
        name = field(body, "name", (str,))
        service = field(body, "service", (str,), None)
        return self.dns.address(name, service)


class DnsResource(JSONResource):
    """
    C{/v1/dns}::

        GET  /v1/dns          -> DnsStatus
        POST /v1/dns/address  -> {"host", "address", "ports"}   {name, service?}
    """

    def __init__(self, dns: DnsService) -> None:
        super().__init__()
        self.dns = dns
        self.putChild(b"address", _Address(dns))

    def json_GET(self, request: Any) -> Any:
        return self.dns.status()


def makeDns(context: Any) -> DnsService:
    """
    The C{"dns"} service of a daemon, from C{[dns]} of its configuration.
    """
    config = context.config.dns
    kw: dict[str, Any] = {
        "enabled": config.enabled, "bind": config.bind, "port": config.port, "addresses": config.addresses,
    }
    kw.update(context.optionsFor("dns"))
    return DnsService(context.reactor, context.host, context.services.get("names"), context.home, **kw)
