"""
UPnP Internet Gateway Device port mapping through C{miniupnpc}.

UPnP-IGD is SSDP discovery, an HTTP fetch of the device description and
SOAP calls: far more surface than NAT-PMP, and gateways are famously
loose about all three.  C{miniupnpc} is the reference client, kept by the
author of miniupnpd (the daemon most home routers run), with binary wheels
on PyPI; its XML parser reads only the elements it needs, with no DTDs or
entities, and its reads are bounded, so a hostile LAN device cannot feed
us an entity bomb.  Its calls block (with its own timeouts of a few
seconds), so L{UpnpClient} runs each in the reactor's thread pool, one at
a time per client.

The library is imported only when a client first discovers, so nodes
that leave port mapping off never load it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Literal, Optional, TypeVar

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.threads import deferToThreadPool

from beam.errors import BeamError

__all__ = ["UpnpClient", "UpnpError"]

T = TypeVar("T")

#: The longest gateway error text we keep.
_MAX_ERROR = 200

Transport = Literal["tcp", "udp"]


class UpnpError(BeamError):
    """
    The UPnP gateway could not be found or refused a request.
    """


def _miniupnpc(discoverDelay: int) -> Any:
    try:
        module = importlib.import_module("miniupnpc")
    except ImportError as e:
        raise UpnpError("UPnP port mapping needs the miniupnpc package (pip install miniupnpc)") from e
    return module.UPnP(discoverdelay=discoverDelay)


def _text(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= _MAX_ERROR else text[:_MAX_ERROR] + "..."


class UpnpClient:
    """
    A UPnP IGD client: L{discover} once, then L{externalAddress},
    L{addMapping} and L{removeMapping}.

    @ivar lanAddress: our address on the gateway's LAN, known after
        L{discover} (what mappings point to).
    @ivar controlUrl: the IGD's control URL, after L{discover}.
    """

    def __init__(self, reactor: Any, *, discoverDelay: int = 2000,
                 runInThread: Optional[Callable[..., Deferred[Any]]] = None,
                 factory: Callable[[int], Any] = _miniupnpc) -> None:
        """
        @param discoverDelay: how long SSDP discovery waits, in ms.
        @param runInThread: C{f(callable, *args) -> Deferred}; by default
            the reactor's thread pool (tests run calls inline).
        @param factory: makes the C{miniupnpc.UPnP}-like object.
        """
        self.reactor = reactor
        self.discoverDelay = discoverDelay
        self._runInThread = runInThread or (lambda f, *a: deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
        self._factory = factory
        self._lock = DeferredLock()
        self._upnp: Any = None
        self.lanAddress: Optional[str] = None
        self.controlUrl: Optional[str] = None

    def _call(self, what: str, f: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Run C{f(*args)} in a thread, after any earlier call of this
        client: miniupnpc's object is not meant for two threads at once.
        """
        async def run() -> T:
            await self._lock.acquire()
            try:
                return await self._runInThread(f, *args)
            except UpnpError:
                raise
            except Exception as e:
                raise UpnpError(f"UPnP {what}: {_text(e)}") from None
            finally:
                self._lock.release()

        return Deferred.fromCoroutine(run())

    def discover(self) -> Deferred[str]:
        """
        Find an IGD on the LAN (SSDP) and read its description; fires with
        its control URL.
        """
        def work() -> tuple[str, str]:
            upnp = self._upnp if self._upnp is not None else self._factory(self.discoverDelay)
            self._upnp = upnp
            found = upnp.discover()
            if not found:
                raise UpnpError("no UPnP device answered on the LAN")
            url = upnp.selectigd()
            return str(url), str(upnp.lanaddr)

        async def run() -> str:
            url, lan = await self._call("discovery", work)
            self.controlUrl, self.lanAddress = url, lan
            return url

        return Deferred.fromCoroutine(run())

    def _igd(self) -> Any:
        if self._upnp is None or self.controlUrl is None:
            raise UpnpError("no UPnP gateway discovered yet")
        return self._upnp

    def externalAddress(self) -> Deferred[str]:
        """
        The gateway's external IPv4 address.
        """
        def work() -> str:
            address = self._igd().externalipaddress()
            if not address:
                raise UpnpError("the UPnP gateway has no external address")
            return str(address)

        return self._call("GetExternalIPAddress", work)

    def addMapping(self, transport: Transport, internalPort: int, externalPort: int, lifetime: int,
                   description: str = "beam") -> Deferred[int]:
        """
        Map C{externalPort} on the gateway to C{internalPort} on our LAN
        address, for C{lifetime} seconds; fires with the external port.

        When the port is taken (718 ConflictInMappingEntry) an IGDv2
        gateway is asked for any port (AddAnyPortMapping); a gateway that
        only knows permanent leases (725) gets lifetime 0, and the mapping
        is removed on stop as always.
        """
        proto = transport.upper()

        def work() -> int:
            upnp = self._igd()
            args = (externalPort, proto, self.lanAddress, internalPort, description, "")
            try:
                upnp.addportmapping(*args, lifetime)
                return externalPort
            except Exception as e:
                text = str(e)
                if "OnlyPermanentLeasesSupported" in text:
                    upnp.addportmapping(*args, 0)
                    return externalPort
                if "ConflictInMappingEntry" in text:
                    return int(upnp.addanyportmapping(*args))
                raise

        return self._call("AddPortMapping", work)

    def removeMapping(self, transport: Transport, externalPort: int) -> Deferred[None]:
        """
        Delete the mapping of C{externalPort}.
        """
        def work() -> None:
            self._igd().deleteportmapping(externalPort, transport.upper())

        return self._call("DeletePortMapping", work)
