"""
Port mapping: ask the home gateway to forward the node's listen port
(NAT-PMP, then UPnP-IGD), keep the mapping alive, and remove it on stop.

A mapping is only a I{candidate}: the gateway may itself sit behind a
carrier NAT, or a firewall may still filter.  L{PortMapper} therefore
reports the external address through a callback and the node hands it to
AutoNAT, which confirms (or rejects) it like any other candidate.

Off by default (C{port_mapping = true} turns it on): it changes the
user's router, which nobody should get unasked.

The order is NAT-PMP first (one datagram to the default gateway, an
answer in milliseconds when it speaks the protocol), then UPnP (seconds of
SSDP discovery and SOAP).  Mappings are TCP, to the same external port
when the gateway allows it, for L{DEFAULT_LIFETIME} seconds and renewed
at half-life (RFC 6886 section 3.3's advice, used for UPnP leases too).
A failed renewal is retried until the mapping expires; then the address
is withdrawn (the callback gets L{None}) and mapping starts over.

C{python -m beam.p2p.nat.portmap PORT} maps a port by hand and prints the
status as JSON lines until its standard input closes (the NAT lab drives
it that way).
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal, Optional, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from beam.errors import BeamError
from beam.identity.multiaddr import Multiaddr

__all__ = [
    "DEFAULT_LIFETIME",
    "Backend",
    "Mapped",
    "NatPmpBackend",
    "PortMapError",
    "PortMapper",
    "UpnpBackend",
    "isBehindAnotherNat",
]

log = Logger()

#: How long a mapping is asked for, in seconds (RFC 6886 recommends two
#: hours).
DEFAULT_LIFETIME = 7200
#: How long one protocol may take to map, or to remove a mapping on stop.
MAP_TIMEOUT = 20.0
REMOVE_TIMEOUT = 5.0
#: After every protocol failed, try again after this long, doubling up to
#: L{MAX_RETRY}.
FIRST_RETRY = 60.0
MAX_RETRY = 1800.0
#: A failed renewal is retried after this long (or sooner, before expiry).
RENEW_RETRY = 30.0

ProtocolName = Literal["natpmp", "upnp"]
PROTOCOLS: tuple[ProtocolName, ...] = ("natpmp", "upnp")

#: Addresses a gateway may report that no stranger can reach: RFC 1918,
#: carrier-grade NAT (RFC 6598), loopback, link-local, unspecified.
_NOT_REACHABLE = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16",
)]


class PortMapError(BeamError):
    """
    The gateway could not map the port.
    """


def isBehindAnotherNat(externalIp: str) -> bool:
    """
    Whether a gateway reporting C{externalIp} is itself behind another
    NAT (a carrier NAT or a second home router), so a mapping on it makes
    us reachable from nowhere new.  Documentation ranges count as public:
    they play the Internet in the NAT lab.
    """
    try:
        ip = ipaddress.ip_address(externalIp)
    except ValueError:
        return True
    return ip.is_multicast or any(ip in net for net in _NOT_REACHABLE)


@attrs.frozen
class Mapped:
    """
    A mapping the gateway granted.

    @ivar lifetime: seconds until it expires; 0 for a permanent one.
    """

    protocol: ProtocolName
    externalIp: str
    externalPort: int
    lifetime: int


class Backend(Protocol):
    """
    One port mapping protocol.
    """

    name: ProtocolName

    def map(self, internalPort: int, externalPort: int, lifetime: int) -> Deferred[Mapped]:
        """
        Create or renew a TCP mapping of C{internalPort}, preferring
        C{externalPort}.
        """

    def unmap(self, internalPort: int, externalPort: int) -> Deferred[None]:
        """
        Remove the mapping.
        """

    def close(self) -> Any:
        """
        Release sockets.
        """


class NatPmpBackend:
    """
    NAT-PMP to C{gateway} (by default the machine's IPv4 default gateway).
    """

    name: ProtocolName = "natpmp"

    def __init__(self, reactor: Any, gateway: Optional[str] = None, port: Optional[int] = None,
                 initialTimeout: Optional[float] = None, attempts: Optional[int] = None) -> None:
        from beam.p2p.nat import natpmp

        self._natpmp = natpmp
        self.reactor = reactor
        self.gateway = gateway
        self.port = port if port is not None else natpmp.PORT
        self._kwargs = {k: v for k, v in (("initialTimeout", initialTimeout), ("attempts", attempts)) if v is not None}
        self._client: Any = None

    def _connect(self) -> Any:
        if self._client is None:
            gateway = self.gateway or self._natpmp.readDefaultGateway()
            if gateway is None:
                raise PortMapError("no IPv4 default gateway to ask for NAT-PMP")
            self.gateway = gateway
            self._client = self._natpmp.NatPmpClient.connect(self.reactor, gateway, self.port, **self._kwargs)
        return self._client

    def map(self, internalPort: int, externalPort: int, lifetime: int) -> Deferred[Mapped]:
        async def run() -> Mapped:
            client = self._connect()
            external = await client.externalAddress()
            granted = await client.addMapping("tcp", internalPort, externalPort, lifetime)
            if not 0 < granted.externalPort <= 0xFFFF or granted.lifetime <= 0:
                raise PortMapError(f"the gateway granted an unusable mapping (port {granted.externalPort}, "
                                   f"lifetime {granted.lifetime})")
            return Mapped("natpmp", external.address, granted.externalPort, granted.lifetime)

        return Deferred.fromCoroutine(run())

    def unmap(self, internalPort: int, externalPort: int) -> Deferred[None]:
        async def run() -> None:
            await self._connect().removeMapping("tcp", internalPort)

        return Deferred.fromCoroutine(run())

    def close(self) -> Any:
        client, self._client = self._client, None
        if client is not None:
            return client.close()
        return None


class UpnpBackend:
    """
    UPnP-IGD through L{beam.p2p.nat.upnp.UpnpClient}.
    """

    name: ProtocolName = "upnp"

    def __init__(self, reactor: Any, client: Any = None, description: str = "beam") -> None:
        from beam.p2p.nat.upnp import UpnpClient

        self.client = client if client is not None else UpnpClient(reactor)
        self.description = description

    def map(self, internalPort: int, externalPort: int, lifetime: int) -> Deferred[Mapped]:
        async def run() -> Mapped:
            if self.client.controlUrl is None:
                await self.client.discover()
            external = await self.client.externalAddress()
            port = await self.client.addMapping("tcp", internalPort, externalPort, lifetime, self.description)
            return Mapped("upnp", external, port, lifetime)

        return Deferred.fromCoroutine(run())

    def unmap(self, internalPort: int, externalPort: int) -> Deferred[None]:
        return self.client.removeMapping("tcp", externalPort)

    def close(self) -> Any:
        return None


def _defaultBackends(reactor: Any, protocols: Sequence[ProtocolName]) -> list[Backend]:
    made: list[Backend] = []
    for name in protocols:
        made.append(NatPmpBackend(reactor) if name == "natpmp" else UpnpBackend(reactor))
    return made


State = Literal["idle", "mapping", "mapped", "failed", "stopped"]


class PortMapper(Service):
    """
    Keeps a TCP port mapped on the home gateway while running.

    @ivar mapped: the current mapping, or L{None}.
    @ivar lastError: the last failure, one line, or L{None}.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        internalPort: int,
        *,
        onAddress: Optional[Callable[[Optional[Multiaddr]], object]] = None,
        protocols: Sequence[ProtocolName] = PROTOCOLS,
        backends: Optional[Sequence[Backend]] = None,
        lifetime: int = DEFAULT_LIFETIME,
        externalPort: Optional[int] = None,
    ) -> None:
        """
        @param onAddress: called with C{/ip4/EXT/tcp/PORT} whenever the
            mapped address appears or changes, and with L{None} when it is
            lost or removed: the node feeds it to AutoNAT as a candidate.
        @param protocols: which protocols to try, in order.
        @param backends: the protocol implementations (tests inject
            fakes); by default made from C{protocols}.
        @param externalPort: the external port to ask for (default: the
            internal one).
        """
        if not 1 <= internalPort <= 0xFFFF:
            raise ValueError("internalPort must be 1-65535")
        for name in protocols:
            if name not in PROTOCOLS:
                raise ValueError(f"unknown port mapping protocol {name!r}; one of {', '.join(PROTOCOLS)}")
        self.reactor = reactor
        self.internalPort = internalPort
        self.wantedPort = externalPort or internalPort
        self.onAddress = onAddress
        self.lifetime = lifetime
        self._backends = list(backends) if backends is not None else None
        self._protocols = tuple(protocols)
        self.state: State = "idle"
        self.mapped: Optional[Mapped] = None
        self.backend: Optional[Backend] = None
        self.expires: Optional[float] = None
        self.lastError: Optional[str] = None
        self._timer: Optional[IDelayedCall] = None
        self._working: Optional[Deferred[Any]] = None
        self._retry = FIRST_RETRY
        self._reported: Optional[Multiaddr] = None

    # -- the service --------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._backends is None:
            self._backends = _defaultBackends(self.reactor, self._protocols)
        self._later(0, self._attempt)

    def stopService(self) -> Deferred[None]:
        """
        Stop renewing and remove the mapping from the gateway (bounded by
        L{REMOVE_TIMEOUT}; a gateway that does not answer keeps it until
        it expires).
        """
        super().stopService()
        self.state = "stopped"
        self._cancelTimer()
        working, self._working = self._working, None
        if working is not None:
            working.cancel()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        mapped, backend = self.mapped, self.backend
        self.mapped = self.expires = None
        if mapped is not None and backend is not None:
            try:
                d = backend.unmap(self.internalPort, mapped.externalPort)
                d.addTimeout(REMOVE_TIMEOUT, self.reactor)
                await d
                log.info("removed the {protocol} port mapping of port {port}", protocol=mapped.protocol,
                         port=self.internalPort)
            except Exception as e:
                self.lastError = f"removing the mapping: {_describe(e)}"
                log.warn("could not remove the {protocol} port mapping: {error}", protocol=mapped.protocol,
                         error=self.lastError)
        self._report(None)
        for b in self._backends or []:
            try:
                await maybeDeferred(b.close)
            except Exception:
                pass

    def status(self) -> dict[str, Any]:
        """
        What C{beam network status} shows: the protocol used, the external
        address, seconds until expiry, the state and the last error.
        """
        mapped = self.mapped
        return {
            "state": self.state,
            "protocol": mapped.protocol if mapped else None,
            "internalPort": self.internalPort,
            "externalAddr": str(self._address(mapped)) if mapped else None,
            "expiresIn": None if self.expires is None else max(0.0, round(self.expires - self.reactor.seconds(), 1)),
            "lastError": self.lastError,
        }

    # -- mapping ------------------------------------------------------------

    def _later(self, delay: float, f: Callable[[], object]) -> None:
        self._cancelTimer()
        self._timer = self.reactor.callLater(delay, f)

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _address(self, mapped: Mapped) -> Multiaddr:
        return Multiaddr.fromString(f"/ip4/{mapped.externalIp}/tcp/{mapped.externalPort}")

    def _report(self, addr: Optional[Multiaddr]) -> None:
        if addr == self._reported:
            return
        self._reported = addr
        if self.onAddress is not None:
            try:
                self.onAddress(addr)
            except Exception:
                log.failure("the port mapping address callback failed")

    def _track(self, d: Deferred[Any]) -> Deferred[Any]:
        d.addTimeout(MAP_TIMEOUT, self.reactor)
        self._working = d
        return d

    def _attempt(self) -> None:
        self._timer = None
        if not self.running:
            return
        self.state = "mapping"
        Deferred.fromCoroutine(self._mapAny())

    async def _mapAny(self) -> None:
        errors = []
        for backend in self._backends or []:
            try:
                mapped = await self._track(backend.map(self.internalPort, self.wantedPort, self.lifetime))
            except Exception as e:
                if not self.running:
                    return
                errors.append(f"{backend.name}: {_describe(e)}")
                continue
            finally:
                self._working = None
            if not self.running:
                # Stopped while the gateway answered: undo it.
                await _quietly(backend.unmap(self.internalPort, mapped.externalPort))
                return
            self._retry = FIRST_RETRY
            self._granted(backend, mapped)
            return
        if not self.running:
            return
        self.state = "failed"
        self.lastError = "; ".join(errors) or "no port mapping protocol enabled"
        log.info("port mapping failed: {error}; trying again in {delay:.0f} s", error=self.lastError, delay=self._retry)
        self._later(self._retry, self._attempt)
        self._retry = min(self._retry * 2, MAX_RETRY)

    def _granted(self, backend: Backend, mapped: Mapped) -> None:
        previous = self.mapped
        self.backend, self.mapped, self.state = backend, mapped, "mapped"
        now = self.reactor.seconds()
        self.expires = None if mapped.lifetime == 0 else now + mapped.lifetime
        if previous is None or previous != attrs.evolve(mapped, lifetime=previous.lifetime):
            log.info("port {port} mapped by {protocol}: {addr}", port=self.internalPort, protocol=mapped.protocol,
                     addr=self._address(mapped))
        renewIn = (mapped.lifetime or self.lifetime) / 2
        self._later(renewIn, self._renew)
        # Report last: the callback may stop us.
        if isBehindAnotherNat(mapped.externalIp):
            # The mapping is real but useless: keep it (the gateway's
            # upstream might be ours too one day) but do not advertise it.
            self.lastError = (f"the gateway's external address {mapped.externalIp} is not public "
                              "(another NAT in front of it): the mapping cannot make this node reachable")
            self._report(None)
        else:
            self.lastError = None
            self._report(self._address(mapped))

    def _renew(self) -> None:
        self._timer = None
        if not self.running or self.backend is None or self.mapped is None:
            return
        Deferred.fromCoroutine(self._renewWith(self.backend, self.mapped))

    async def _renewWith(self, backend: Backend, mapped: Mapped) -> None:
        try:
            renewed = await self._track(backend.map(self.internalPort, mapped.externalPort, self.lifetime))
        except Exception as e:
            if not self.running:
                return
            self.lastError = f"renewing: {_describe(e)}"
            now = self.reactor.seconds()
            if self.expires is not None and now >= self.expires - 1:
                log.info("the port mapping expired ({error}); mapping again", error=self.lastError)
                self.mapped = self.backend = self.expires = None
                self._report(None)
                self._later(0, self._attempt)
            else:
                remaining = RENEW_RETRY if self.expires is None else max(1.0, (self.expires - now) / 2)
                self._later(min(RENEW_RETRY, remaining), self._renew)
            return
        finally:
            self._working = None
        if not self.running:
            await _quietly(backend.unmap(self.internalPort, renewed.externalPort))
            return
        self._granted(backend, renewed)


def _describe(e: BaseException) -> str:
    from twisted.internet.defer import CancelledError, TimeoutError

    if isinstance(e, (TimeoutError, CancelledError)):
        return "the gateway did not answer in time"
    return str(e) or type(e).__name__


async def _quietly(d: Deferred[Any]) -> None:
    try:
        await d
    except Exception:
        pass


def main(argv: Optional[Sequence[str]] = None) -> None:
    """
    C{python -m beam.p2p.nat.portmap PORT [--protocol natpmp|upnp]...}:
    map PORT, print the status as one JSON line whenever the mapped
    address changes (and once when mapping failed), remove the mapping
    when standard input closes (or on SIGTERM), print the final status
    and exit.
    """
    import argparse

    from twisted.internet import reactor as _reactor
    from twisted.internet import stdio
    from twisted.internet.protocol import Protocol as _Protocol

    parser = argparse.ArgumentParser(prog="python -m beam.p2p.nat.portmap",
                                     description="Map a TCP port on the home gateway (NAT-PMP, UPnP-IGD).")
    parser.add_argument("port", type=int)
    parser.add_argument("--protocol", action="append", choices=PROTOCOLS, help="protocols to try, in order")
    parser.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME)
    parser.add_argument("--external-port", type=int, default=None)
    options = parser.parse_args(argv)
    reactor: Any = _reactor

    def show(note: str) -> None:
        print(json.dumps({"event": note, **mapper.status()}), flush=True)

    mapper = PortMapper(reactor, options.port, protocols=options.protocol or PROTOCOLS, lifetime=options.lifetime,
                        externalPort=options.external_port,
                        onAddress=lambda addr: show("address" if addr is not None else "withdrawn"))

    async def finish() -> None:
        if mapper.running:
            await mapper.stopService()
        show("stopped")
        if reactor.running:
            reactor.stop()

    class StdinClosed(_Protocol):
        def connectionLost(self, reason: object = None) -> None:
            Deferred.fromCoroutine(finish())

    def watchFailures() -> None:
        if mapper.state == "failed":
            show("failed")
        elif mapper.running:
            reactor.callLater(0.2, watchFailures)

    stdio.StandardIO(StdinClosed())
    reactor.addSystemEventTrigger("before", "shutdown", lambda: mapper.stopService() if mapper.running else None)
    mapper.startService()
    reactor.callLater(0.2, watchFailures)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
