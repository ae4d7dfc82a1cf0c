"""
Names on top of the DHT: publishing our own, resolving others'.

L{NameService} is the daemon's C{"names"} child.  Registering a name signs
a L{beam.names.record.NameRecord} (our peer ID, our shareable addresses,
the services we expose) and PUTs it to the peers closest to its key; it is
republished every L{REPUBLISH_INTERVAL} (with a fresh sequence number and
current addresses) so it never expires while we run.  Withdrawing stops
that and publishes a short-lived record with no addresses, so resolvers
see the name go away within a couple of minutes rather than an hour.

Resolving GETs the key from the DHT (the lookup validates and selects
with the same rules the holders apply), checks the owner against the
pins in C{known_names.json} (trust on first use, like SSH's known_hosts),
and reports how the answer was found and how long it took.  Our own names
resolve locally.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.dht.service import NoDHTPeers
from beam.errors import BeamError, NodeStopped, NotFound
from beam.storage.home import readState, updateState
from beam.names.pins import NamePins
from beam.names.status import NameResolution, NameStatus
from beam.names.validator import NameValidator
from beam.names.record import (
    DEFAULT_TTL,
    REPUBLISH_INTERVAL,
    NameRecord,
    dhtKey,
    makeRecord,
    normalizeName,
    openRecord,
    signRecord,
)

WITHDRAWN_TTL = 120.0


class NameNotFound(NotFound):
    """
    No record for that name was found.
    """


class NameOwnedByAnother(BeamError):
    """
    That name is held by another key.
    """


class _Registration:
    def __init__(self, name: str, services: tuple[str, ...]) -> None:
        self.name = name
        self.services = services
        self.record: Optional[NameRecord] = None
        self.storedOn = 0
        self.lastError: Optional[str] = None
        self.timer: Any = None


class NameService(Service):
    """
    Publishes this node's names and resolves others'.

    @param dht: the DHT (L{beam.dht.service.KademliaService}): C{putValue},
        C{getValue}, C{routingTableSize}.
    @param addrs: returns our current addresses for records.
    @param services: returns the services our records list (the daemon
        passes the public ones: private services are not advertised).
    """

    log = Logger()
    # Twisted's Service says name = None, which mypy reads as "always None".
    name = "names"  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        identity: Any,
        dht: Any,
        home: Path,
        addrs: Callable[[], Sequence[Any]],
        services: Callable[[], Sequence[str]],
        *,
        republishInterval: float = REPUBLISH_INTERVAL,
        ttl: float = DEFAULT_TTL,
    ) -> None:
        self.reactor = reactor
        self.identity = identity
        self.dht = dht
        dht.addValidator("beam-name", NameValidator())
        self.pins = NamePins(Path(home))
        self._addrs = addrs
        self._services = services
        self.republishInterval = republishInterval
        self.ttl = ttl
        self.home = Path(home)
        self.registrations: dict[str, _Registration] = {}

    def startService(self) -> None:
        """
        Publish again the names this node had registered before it
        stopped, once the DHT bootstrap is done, so a restarted owner
        (perhaps at a new address) keeps its names without being asked.
        """
        super().startService()
        saved = readState(self.home).get("names", [])
        if not isinstance(saved, list):
            return
        for entry in saved:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            services = [s for s in entry.get("services", []) if isinstance(s, str)]
            d = self.dht.whenBootstrapped()
            d.addCallback(lambda _, n=entry["name"], s=services: self.register(n, s) if self.running else None)
            d.addErrback(lambda f, n=entry["name"]: self.log.warn(
                "could not republish name {name}: {why}", name=n, why=f.getErrorMessage()))

    def _saveNames(self) -> None:
        names = [{"name": r.name, "services": list(r.services)} for r in self.registrations.values()]
        try:
            updateState(self.home, names=names)
        except OSError as e:
            self.log.warn("could not save registered names: {why}", why=e)

    def stopService(self) -> None:
        super().stopService()
        for reg in self.registrations.values():
            if reg.timer is not None and reg.timer.active():
                reg.timer.cancel()
            reg.timer = None

    # -- publishing ------------------------------------------------------

    def register(self, name: str, services: Sequence[str] = ()) -> Deferred[NameStatus]:
        """
        Claim C{name} for this node and keep it published.

        @raise beam.names.record.InvalidName: not a valid name.
        @raise NameOwnedByAnother: a live record of another key holds it.
        """
        name = normalizeName(name)
        reg = self.registrations.get(name) or _Registration(name, tuple(services))
        if services:
            reg.services = tuple(services)
        self.registrations[name] = reg
        d = self._publish(reg, checkOwner=True)

        def published(result: Any) -> Any:
            self._saveNames()
            return result

        def failed(f: Any) -> Any:
            if self.registrations.get(name) is reg and reg.record is None:
                del self.registrations[name]
            return f

        return d.addCallbacks(published, failed)

    @inlineCallbacks
    def _publish(self, reg: _Registration, checkOwner: bool = False, ttl: Optional[float] = None) -> Any:
        if reg.timer is not None and reg.timer.active():
            reg.timer.cancel()
        reg.timer = None
        now = self.reactor.seconds()
        if checkOwner:
            try:
                held = yield self._lookup(reg.name)
            except (NameNotFound, NoDHTPeers):
                held = None
            if held is not None and held.peer != self.identity.peerID and not held.isExpired(now):
                raise NameOwnedByAnother(
                    f"the name {reg.name!r} is owned by another key ({held.peer}) until it expires"
                )
        withdrawn = ttl is not None
        record = makeRecord(
            self.identity, reg.name,
            () if withdrawn else tuple(a.withoutPeerID() for a in self._addrs())[:16],
            () if withdrawn else (reg.services or tuple(self._services())),
            now=now, ttl=ttl or self.ttl,
        )
        reg.record = record
        try:
            # How many OTHER peers accepted it (the DHT never counts us).
            stored = yield self.dht.putValue(dhtKey(reg.name), signRecord(self.identity, record))
            reg.storedOn = stored
            reg.lastError = None
        except BeamError as e:
            reg.storedOn = 0
            reg.lastError = str(e)
            self.log.warn("publishing name {name} failed: {why}", name=reg.name, why=e)
        if not withdrawn and self.running:
            # Publishes of one name may overlap (a registration and an
            # address change): the last one to finish keeps the only timer.
            if reg.timer is not None and reg.timer.active():
                reg.timer.cancel()
            reg.timer = self.reactor.callLater(self.republishInterval, self._republish, reg)
        if reg.storedOn:
            self.log.info("published name {name} on {n} other peer(s)", name=reg.name, n=reg.storedOn)
        elif reg.lastError is None:
            self.log.warn("no other peer stored the name {name}; it is only on this node", name=reg.name)
        return self.describe(reg)

    def _republish(self, reg: _Registration) -> None:
        reg.timer = None
        if self.registrations.get(reg.name) is reg:
            self._publish(reg).addErrback(self._republishFailed)

    def _republishFailed(self, f: Failure) -> None:
        """
        A republish cut short by the service stopping (its DHT requests
        cancelled) is not a failure; anything else is logged.
        """
        if not self.running and f.check(CancelledError, NodeStopped):
            return
        self.log.failure("republishing failed", f)

    def republishAll(self) -> None:
        """
        Publish every name again now (our addresses or services changed).
        """
        for reg in list(self.registrations.values()):
            self._publish(reg).addErrback(self._republishFailed)

    def withdraw(self, name: str) -> Deferred[NameStatus]:
        """
        Stop publishing C{name}; publish a short-lived record without
        addresses so resolvers stop finding us soon.
        """
        name = normalizeName(name)
        reg = self.registrations.pop(name, None)
        if reg is None:
            raise NotFound(f"this node has not registered the name {name!r}")
        self._saveNames()
        return self._publish(reg, ttl=WITHDRAWN_TTL)

    def describe(self, reg: _Registration) -> NameStatus:
        """
        The status of one of our names.
        """
        rec = reg.record
        return NameStatus(
            name=reg.name,
            peerID=str(self.identity.peerID),
            services=tuple(rec.services) if rec else tuple(reg.services),
            addrs=tuple(str(a) for a in rec.addrs) if rec else (),
            seq=rec.seq if rec else None,
            expires=rec.expires if rec else None,
            storedOn=reg.storedOn,
            error=reg.lastError,
        )

    def status(self) -> tuple[NameStatus, ...]:
        """
        The names this node publishes.
        """
        return tuple(self.describe(r) for r in self.registrations.values())

    def controlResource(self) -> Any:
        """
        C{/v1/names}: register, resolve, withdraw (L{beam.names.resource}).
        """
        from beam.names.resource import NamesResource

        return NamesResource(self)

    # -- resolving -------------------------------------------------------

    @inlineCallbacks
    def _lookup(self, name: str) -> Any:
        key = dhtKey(name)
        result = yield self.dht.getValue(key)
        value, stats = result
        if value is None:
            raise NameNotFound(
                f"no record for the name {name!r} was found (asked {stats.get('queried', 0)} peers)"
            )
        return openRecord(value, self.reactor.seconds(), expectedName=name)

    @inlineCallbacks
    def resolve(self, name: str, acceptNewKey: bool = False) -> Any:
        """
        Find who owns C{name} and where it is.

        @return: a L{Deferred} firing with a L{NameResolution}.
        @raise NameNotFound: no live record (with how many peers were asked).
        @raise beam.names.pins.NameKeyChanged: the owner is not the pinned key.
        """
        name = normalizeName(name)
        started = self.reactor.seconds()
        reg = self.registrations.get(name)
        if reg is not None and reg.record is not None:
            rec, source, stats = reg.record, "self", {"queried": 0, "rounds": 0}
        else:
            yield self.dht.whenBootstrapped()
            value, stats = yield self.dht.getValue(dhtKey(name))
            if value is None:
                raise NameNotFound(
                    f"no record for the name {name!r} was found (asked {stats.get('queried', 0)} peers)"
                )
            rec = openRecord(value, self.reactor.seconds(), expectedName=name)
            source = "dht"
        if not rec.addrs and not rec.services:
            raise NameNotFound(f"the name {name!r} was withdrawn by its owner")
        if acceptNewKey:
            self.pins.accept(name, rec.peer)
            pin = "accepted"
        else:
            pin = self.pins.check(name, rec.peer)
        return NameResolution(
            name=name,
            peerID=str(rec.peer),
            addrs=tuple(str(a) for a in rec.addrs),
            services=tuple(rec.services),
            seq=rec.seq,
            expires=rec.expires,
            source=source,
            pin=pin,
            elapsedMs=round((self.reactor.seconds() - started) * 1000, 3),
            queried=stats.get("queried", 0),
            rounds=stats.get("rounds", 0),
        )


def memorableName(home: Path, random: Callable[[int], bytes] = os.urandom) -> str:
    """
    This node's default name: picked at random once, then kept in the
    home's state so the share line survives restarts.
    """
    from beam.names.words import randomName

    name = readState(home).get("name")
    if isinstance(name, str):
        try:
            return normalizeName(name)
        except BeamError:
            pass
    name = randomName(random)
    updateState(home, name=name)
    return name
