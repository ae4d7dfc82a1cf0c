"""
Names: publishing our own, resolving others'.

L{NameService} is the daemon's C{"names"} child.  Registering a name signs
a L{beam.names.record.NameRecord} (our peer ID, our shareable addresses,
the services we expose) and PUTs it to the peers closest to its key; it is
republished every L{REPUBLISH_INTERVAL} (with a fresh sequence number and
current addresses) so it never expires while we run.  Every publication is
also pushed on the C{beam-names} gossip topic (when the node has gossip),
and the mDNS service answers LAN questions for our names with the same
signed bytes.  Withdrawing stops that and publishes a short-lived record
with no addresses, so resolvers see the name go away within a couple of
minutes rather than an hour.

Resolving tries, in order (each step's time and outcome are reported in
L{NameResolution.steps}):

  1. the pin: the key pinned for the name in C{known_names.json} (trust on
     first use, like SSH's known_hosts) filters every candidate below, so a
     record signed by another key is passed over (unless the caller accepts
     a new key) and the next step is tried;
  2. the cache (L{beam.names.cache.RecordCache}): our own names, and records
     we resolved in the last L{CACHE_MAX_AGE} seconds;
  3. the LAN: the mDNS service's C{resolveName}, waiting at most
     L{MDNS_TIMEOUT} (a LAN answers in milliseconds);
  4. gossip: the record the C{beam-names} topic last pushed for the name;
  5. the DHT (the holders' vote on the first claimant: the authority).

Every record, whatever its source, is opened with the DHT's rules
(signature, name, times) and kept in the cache only if it beats the one
held (a higher sequence number from the same owner); an mDNS or gossip
answer older than the cached record is ignored.  "No DHT peers" is reported
only when every step missed.
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
from beam.names.cache import MAX_ENTRIES, RecordCache
from beam.names.pins import NameKeyChanged, NamePins
from beam.names.status import NameResolution, NameStatus, ResolveStep
from beam.names.validator import NameValidator
from beam.names.record import (
    DEFAULT_TTL,
    REPUBLISH_INTERVAL,
    InvalidNameRecord,
    NameRecord,
    dhtKey,
    makeRecord,
    normalizeName,
    openRecord,
    signRecord,
)
from beam.identity.keys import PeerID

WITHDRAWN_TTL = 120.0

MDNS_TIMEOUT = 0.5
"""
Seconds the LAN step waits for an mDNS answer.  A peer on the LAN answers
in a few milliseconds, so this only bounds what a name that is not on the
LAN costs before the gossip and DHT steps: it keeps a DHT resolution (about
a second) under the 2 s target.
"""

MDNS_GRACE = 0.25
"""Seconds past L{MDNS_TIMEOUT} after which an mDNS question that never
fired counts as an error."""

CACHE_MAX_AGE = 15.0
"""
Seconds a record we resolved (from the DHT or the LAN) answers again from
the cache: long enough for the bursts that repeat a lookup (a DNS query then
a connect, a resolve then a connect), short enough that an owner that moved
is found again by the next lookup.  Our own records always answer; gossip
keeps its own, pushed, records (the gossip step).
"""


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
        self.signed: Optional[bytes] = None
        self.storedOn = 0
        self.lastError: Optional[str] = None
        self.timer: Any = None
        self.publishedAt: Optional[float] = None


class NameService(Service):
    """
    Publishes this node's names and resolves others'.

    @param dht: the DHT (L{beam.dht.service.KademliaService}): C{putValue},
        C{getValue}, C{routingTableSize}.
    @param addrs: returns our current addresses for records.
    @param services: returns the services our records list (the daemon
        passes the public ones: private services are not advertised).
    @param mdns: the LAN (L{beam.p2p.discovery.mdns.MdnsService}), or
        L{None}: C{resolveName(name, timeout)} fires with signed record
        bytes or L{None}; it is given our records with C{setNameRecords}.
    @param gossip: the C{beam-names} topic (L{beam.names.gossip.NameGossip}),
        or L{None}; may also be set later (L{attachGossip}).
    @param mdnsTimeout: how long the LAN step waits.
    @param cacheMaxAge: how long a resolved record answers from the cache.
    @param cacheSize: names the record cache holds.
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
        mdns: Any = None,
        gossip: Any = None,
        mdnsTimeout: float = MDNS_TIMEOUT,
        cacheMaxAge: float = CACHE_MAX_AGE,
        cacheSize: int = MAX_ENTRIES,
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
        self.cache = RecordCache(reactor, cacheSize)
        self.mdnsTimeout = mdnsTimeout
        self.cacheMaxAge = cacheMaxAge
        self.mdns = mdns
        if mdns is not None:
            mdns.setNameRecords(self.signedRecords)
        self.gossip: Any = None
        if gossip is not None:
            self.attachGossip(gossip)

    def attachGossip(self, gossip: Any) -> None:
        """
        Publish our records on C{gossip} (a L{NameGossip
        <beam.names.gossip.NameGossip>}, made with L{validateGossip} and
        L{gossipReceived}) from now on, and consult the records it brings.
        """
        self.gossip = gossip

    def signedRecords(self) -> dict[str, bytes]:
        """
        Our names and their current signed records, as published to the
        DHT: what the mDNS service answers on the LAN.
        """
        return {r.name: r.signed for r in self.registrations.values() if r.signed is not None}

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
        signed = signRecord(self.identity, record)
        reg.record = record
        reg.signed = None if withdrawn else signed
        self.cache.offer(record, signed, "self")
        self._gossip(reg.name, signed)
        try:
            # How many OTHER peers accepted it (the DHT never counts us).
            stored = yield self.dht.putValue(dhtKey(reg.name), signed)
            reg.storedOn = stored
            reg.lastError = None
        except BeamError as e:
            reg.storedOn = 0
            reg.lastError = str(e)
            self.log.warn("publishing name {name} failed: {why}", name=reg.name, why=e)
        reg.publishedAt = self.reactor.seconds()
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

    def _gossip(self, name: str, signed: bytes) -> None:
        """
        Push a record we just signed on the C{beam-names} topic, so
        connected peers have it in seconds; the DHT put follows anyway.
        """
        if self.gossip is None:
            return
        try:
            self.gossip.publish(signed)
        except Exception:
            # Gossip is a shortcut: failing it must not stop the DHT put.
            self.log.failure("could not gossip the name {name}", name=name)

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
            publishedAt=reg.publishedAt,
            nextRepublish=reg.timer.getTime() if reg.timer is not None and reg.timer.active() else None,
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

    def _pinnedFor(self, name: str) -> Optional[PeerID]:
        """
        The key pinned for C{name}, for gossip's validator: a damaged pin
        file counts as no pin there (a resolve says so loudly).
        """
        try:
            return self.pins.get(name)
        except BeamError:
            return None

    def validateGossip(self, data: bytes) -> Optional[NameRecord]:
        """
        Judge a record that arrived on the C{beam-names} topic with the
        DHT holders' rules: the verdict L{NameGossip
        <beam.names.gossip.NameGossip>} turns into C{"reject"} (L{None}:
        the relaying peer is penalised) or a forward.

        @return: the record; L{None} if it does not open (signature, name,
            times: L{openRecord}) or claims a name whose live claim we hold
            for another key from an authority (our own name, or the DHT's
            answer), which a DHT holder would refuse just the same.  A
            record that is valid but not news to us (older, or another key
            than the one pinned here: pins are our trust, not the network's
            rules) is returned: gossip's own cache ignores what it has seen,
            and L{gossipReceived} keeps only what beats our cache.
        """
        try:
            record = openRecord(data, self.reactor.seconds())
        except InvalidNameRecord:
            return None
        held = self.cache.get(record.name)
        if held is not None and held.source in ("self", "dht") and held.record.peer != record.peer:
            return None
        return record

    def gossipReceived(self, record: NameRecord, data: bytes) -> None:
        """
        Keep a record gossip accepted, for the gossip step, if it beats the
        one held (see L{RecordCache.offer}) and passes the pin.
        """
        pinned = self._pinnedFor(record.name)
        if pinned is not None and pinned != record.peer:
            return
        self.cache.offer(record, data, "gossip", preferred=pinned is not None)

    def _elapsed(self, since: float) -> float:
        return round((self.reactor.seconds() - since) * 1000, 3)

    @inlineCallbacks
    def resolve(self, name: str, acceptNewKey: bool = False, fresh: bool = False) -> Any:
        """
        Find who owns C{name} and where it is: pin, cache, LAN, gossip,
        DHT (see the module's description).

        @param fresh: skip the cache of records resolved a moment ago (our
            own names still answer from it): a forward whose host stopped
            answering asks again because the addresses it has are stale.

        @return: a L{Deferred} firing with a L{NameResolution}.
        @raise NameNotFound: no live record (with how many peers were asked).
        @raise beam.names.pins.NameKeyChanged: only records of another key
            than the pinned one were found.
        @raise NoDHTPeers: every step missed and the DHT knows no peers.
        """
        name = normalizeName(name)
        started = self.reactor.seconds()
        steps: list[ResolveStep] = []
        stats: dict[str, Any] = {"queried": 0, "rounds": 0}
        otherKey: Optional[NameRecord] = None
        pinned: Optional[PeerID] = None

        def step(which: str, since: float, outcome: str) -> None:
            steps.append(ResolveStep(step=which, ms=self._elapsed(since), outcome=outcome))

        def byPinned(record: NameRecord) -> bool:
            nonlocal otherKey
            if pinned is None or record.peer == pinned:
                return True
            otherKey = record
            return False

        # 1. The pin.
        t = self.reactor.seconds()
        if acceptNewKey:
            step("pin", t, "skipped")
        else:
            pinned = self.pins.get(name)
            step("pin", t, "miss" if pinned is None else "hit")

        found: Optional[NameRecord] = None
        source = ""

        # 2. The cache: our own names, records resolved a moment ago.
        t = self.reactor.seconds()
        reg = self.registrations.get(name)
        if reg is not None and reg.record is not None:
            found, source = reg.record, "cache"
        elif not fresh:
            entry = self.cache.get(name)
            if (entry is not None and entry.source != "gossip"
                    and (entry.source == "self" or entry.age(t) <= self.cacheMaxAge)
                    and byPinned(entry.record)):
                found, source = entry.record, "cache"
        step("cache", t, "hit" if found is not None else ("skipped" if fresh else "miss"))

        # 3. The LAN.
        if found is None:
            t = self.reactor.seconds()
            if (self.mdns is None or not getattr(self.mdns, "enabled", True)
                    or getattr(self.mdns, "idle", None)):
                step("mdns", t, "skipped")
            else:
                try:
                    # The service fires None at its timeout; ours (a little
                    # later) only guards against one that never fires.
                    data = yield self.mdns.resolveName(name, self.mdnsTimeout).addTimeout(
                        self.mdnsTimeout + MDNS_GRACE, self.reactor)
                except Exception as e:
                    step("mdns", t, f"error: {e}")
                else:
                    outcome = self._consider(name, data, "mdns", byPinned, preferred=pinned is not None)
                    if outcome == "hit":
                        entry = self.cache.get(name)
                        assert entry is not None
                        found, source = entry.record, "mdns"
                    step("mdns", t, outcome)

        # 4. Gossip.
        if found is None:
            t = self.reactor.seconds()
            if self.gossip is None:
                step("gossip", t, "skipped")
            else:
                entry = self.cache.get(name)
                if entry is not None and entry.source == "gossip" and byPinned(entry.record):
                    found, source = entry.record, "gossip"
                    step("gossip", t, "hit")
                else:
                    # NameGossip's own cache holds more names than ours.
                    held = getattr(self.gossip, "cached", lambda n: None)(name)
                    outcome = "miss" if held is None else self._consider(
                        name, held[1], "gossip", byPinned, preferred=pinned is not None)
                    if outcome == "hit":
                        entry = self.cache.get(name)
                        assert entry is not None
                        found, source = entry.record, "gossip"
                    step("gossip", t, outcome)

        # 5. The DHT.
        failure: Optional[BaseException] = None
        if found is None:
            t = self.reactor.seconds()
            try:
                yield self.dht.whenBootstrapped()
                value, stats = yield self.dht.getValue(dhtKey(name))
                if value is None:
                    raise NameNotFound(
                        f"no record for the name {name!r} was found (asked {stats.get('queried', 0)} peers)"
                    )
                record = openRecord(value, self.reactor.seconds(), expectedName=name)
            except BeamError as e:
                step("dht", t, "miss" if isinstance(e, NameNotFound) else f"error: {e}")
                failure = e
            else:
                # The holders' vote: it replaces whatever the cache held.
                self.cache.offer(record, value, "dht")
                if byPinned(record):
                    found, source = record, "dht"
                    step("dht", t, "hit")
                else:
                    step("dht", t, f"error: signed by {record.peer}, not the pinned key")

        if found is None:
            if otherKey is not None and pinned is not None:
                failure = NameKeyChanged(name, pinned, otherKey.peer)
            assert failure is not None
            failure.steps = tuple(steps)  # type: ignore[attr-defined]
            raise failure
        if not found.addrs and not found.services:
            raise NameNotFound(f"the name {name!r} was withdrawn by its owner")
        if acceptNewKey:
            self.pins.accept(name, found.peer)
            pin = "accepted"
        else:
            pin = self.pins.check(name, found.peer)
        return NameResolution(
            name=name,
            peerID=str(found.peer),
            addrs=tuple(str(a) for a in found.addrs),
            services=tuple(found.services),
            seq=found.seq,
            expires=found.expires,
            source=source,
            pin=pin,
            elapsedMs=self._elapsed(started),
            queried=stats.get("queried", 0),
            rounds=stats.get("rounds", 0),
            steps=tuple(steps),
        )

    def _consider(self, name: str, data: Optional[bytes], source: str,
                  byPinned: Callable[[NameRecord], bool], preferred: bool) -> str:
        """
        Open an answer to one of our questions (the LAN's, or gossip's
        cache) and keep it in the cache if it is the best record we know.

        @param byPinned: whether a record passes the pin (noting the ones
            that do not).
        @param preferred: a key is pinned (and the record, having passed,
            is signed by it): it replaces a live claim by another key.

        @return: the step's outcome: C{"hit"} (kept), C{"miss"} (no answer,
            or one no newer than the record held) or C{"error: ..."}.
        """
        if data is None:
            return "miss"
        try:
            record = openRecord(data, self.reactor.seconds(), expectedName=name)
        except InvalidNameRecord as e:
            return f"error: {e}"
        if not byPinned(record):
            return f"error: signed by {record.peer}, not the pinned key"
        refused = self.cache.offer(record, data, source, preferred=preferred)
        if refused is None:
            return "hit"
        held = self.cache.get(name)
        if held is not None and held.record.peer == record.peer:
            return "miss"  # older than what we hold: ignored
        return f"error: {refused}"


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
