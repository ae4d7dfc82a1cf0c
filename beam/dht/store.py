"""
The records a DHT node holds for others (and its own, for republishing).

Keys are namespaced, C{b"/<namespace>/<rest>"}, and only namespaces with a
validator are accepted: a node stores nothing it cannot check, so the DHT
cannot be used as free storage.  The validator (L{IValidator}) decides
whether a value is well-formed and unexpired, which of several values is
best, whether a new value may replace the held one (ownership), and when a
value expires.

Memory is bounded four ways: at most C{maxRecords} records, values of at
most L{MAX_VALUE_BYTES}, per sending peer at most C{maxPerPeer} accepted new
records in any C{quotaWindow} seconds, and per sending network (the /24 of
an IPv4 address, the /48 of an IPv6 one, see L{networkOf}) at most
C{maxPerNetwork} new records per window and C{maxHeldPerNetwork} held at
once, so neither one peer nor many throwaway keys on one network can fill
the store and refuse everyone else's records.  The owner's update of a
record the store already holds (the validator's C{mayReplace}, e.g. same
owner and newer) is always accepted, quota or full store notwithstanding:
a flood cannot keep an owner from refreshing its name.  Our own records (C{origin} is the local peer,
see L{RecordStore.put}) are exempt from quota and size-of-store limits: the
owner must keep them to republish them (L{RecordStore.republishable}).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

import ipaddress

import attrs
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface

from beam.dht.messages import MAX_KEY_BYTES, MAX_VALUE_BYTES
from beam.errors import InvalidRecord, RecordRefused
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr

DEFAULT_MAX_RECORDS: Final = 2048
DEFAULT_MAX_PER_PEER: Final = 32
DEFAULT_QUOTA_WINDOW: Final = 3600.0
#: New records one network (/24, /48) may store per quota window.
DEFAULT_MAX_PER_NETWORK: Final = 128
#: Records attributed to one network the store holds at once.
DEFAULT_MAX_HELD_PER_NETWORK: Final = 256


def networkOf(addr: Multiaddr | None) -> str | None:
    """
    The network a connection's remote address counts against for store
    quotas: C{"ip4:a.b.c.0/24"} for IPv4 (IPv4-mapped IPv6 included),
    C{"ip6:xxxx:xxxx:xxxx::/48"} for IPv6.  The machine's own C{127.0.0.1}
    and C{::1} count against no network (every local process connects from
    them, as L{beam.p2p.host.node.sourceKey} exempts them from its
    per-source caps); any other loopback address is a network of its own
    (C{"loopback:127.0.0.2"}), so a local stranger bound to one cannot use
    up the quota of the rest.  An address with no IP (an in-memory or
    relayed connection with no IP of its own) is C{"other:<first
    protocol>"}, one network per kind.

    @return: L{None} when there is no address or it is 127.0.0.1 or ::1
        (only per-peer limits apply).
    """
    if addr is None:
        return None
    comps = addr.components()
    if comps and comps[0][0] == "ip6zone":
        comps = comps[1:]
    if not comps:
        return "other:"
    name, text = comps[0]
    try:
        if addr.isLoopback():
            host = _loopbackHost(name, text)
            if host in (None, "127.0.0.1", "::1"):
                return None
            return f"loopback:{host}"
        if name == "ip4" and text is not None:
            net4 = ipaddress.IPv4Network((text, 24), strict=False)
            return f"ip4:{net4}"
        if name == "ip6" and text is not None:
            ip6 = ipaddress.IPv6Address(text.split("%")[0])
            if ip6.ipv4_mapped is not None:
                return f"ip4:{ipaddress.IPv4Network((ip6.ipv4_mapped, 24), strict=False)}"
            return f"ip6:{ipaddress.IPv6Network((ip6, 48), strict=False)}"
    except ValueError:
        pass
    return f"other:{name}"


def _loopbackHost(name: str, text: str | None) -> str | None:
    """
    The loopback IP address of an address's first component, normalised
    (an IPv4-mapped one as IPv4); L{None} for a name (C{localhost}).
    """
    if name not in ("ip4", "ip6") or text is None:
        return None
    ip = ipaddress.ip_address(text.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class IValidator(Interface):
    """
    The rules of one key namespace.
    """

    def validate(key: bytes, value: bytes, now: float) -> None:
        """
        Check that C{value} is a well-formed, unexpired value for C{key}.

        @raise InvalidRecord: it is not.
        """

    def select(key: bytes, values: Sequence[bytes]) -> int:
        """
        The index of the best of several valid C{values} for C{key}.
        """

    def mayReplace(key: bytes, old: bytes, new: bytes) -> bool:
        """
        Whether the valid C{new} may replace the held, unexpired C{old}
        (e.g. same owner and newer).
        """

    def expires(value: bytes) -> float:
        """
        When (unix seconds) the valid C{value} stops being valid.
        """


@attrs.define
class StoredRecord:
    """
    A record held by the store.

    @ivar origin: who asked us to store it (C{None}: unknown).
    @ivar network: the network (L{networkOf}) it came from, if known.
    """

    key: bytes
    value: bytes
    expires: float
    received: float
    origin: PeerID | None
    network: str | None = None


def namespaceOf(key: bytes) -> str:
    """
    The namespace of C{b"/ns/rest"}.

    @raise InvalidRecord: the key is not of that form.
    """
    if not key.startswith(b"/"):
        raise InvalidRecord("record key does not start with '/'")
    ns, sep, rest = key[1:].partition(b"/")
    if not sep or not ns or not rest:
        raise InvalidRecord("record key is not /namespace/name")
    try:
        return ns.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRecord("record namespace is not ASCII") from None


class RecordStore:
    """
    Validated, expiring records with per-peer quotas.

    @param localPeer: records whose origin is this peer are ours (never
        refused for quota or space; listed by L{republishable}).
    """

    def __init__(
        self,
        clock: IReactorTime,
        validators: Mapping[str, IValidator],
        maxRecords: int = DEFAULT_MAX_RECORDS,
        maxPerPeer: int = DEFAULT_MAX_PER_PEER,
        quotaWindow: float = DEFAULT_QUOTA_WINDOW,
        localPeer: PeerID | None = None,
        maxPerNetwork: int = DEFAULT_MAX_PER_NETWORK,
        maxHeldPerNetwork: int = DEFAULT_MAX_HELD_PER_NETWORK,
    ) -> None:
        self._clock = clock
        self.validators = dict(validators)
        self.maxRecords = maxRecords
        self.maxPerPeer = maxPerPeer
        self.quotaWindow = quotaWindow
        self.localPeer = localPeer
        self.maxPerNetwork = maxPerNetwork
        self.maxHeldPerNetwork = maxHeldPerNetwork
        self._records: dict[bytes, StoredRecord] = {}
        self._puts: dict[PeerID, deque[float]] = {}
        self._netPuts: dict[str, deque[float]] = {}
        self._held: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._records)

    # --- validation ------------------------------------------------------

    def validator(self, key: bytes) -> IValidator:
        """
        @raise InvalidRecord: no validator for C{key}'s namespace.
        """
        if len(key) > MAX_KEY_BYTES:
            raise InvalidRecord(f"record key longer than {MAX_KEY_BYTES} bytes")
        ns = namespaceOf(key)
        v = self.validators.get(ns)
        if v is None:
            raise InvalidRecord(f"no validator for namespace {ns!r}")
        return v

    def validate(self, key: bytes, value: bytes) -> None:
        """
        Check C{value} for C{key} now (e.g. one found by a lookup).

        @raise InvalidRecord: it is invalid, expired, oversize or in an
            unknown namespace.
        """
        if len(value) > MAX_VALUE_BYTES:
            raise InvalidRecord(f"record value longer than {MAX_VALUE_BYTES} bytes")
        self.validator(key).validate(key, value, self._clock.seconds())

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """
        The index of the best of several valid values.
        """
        i = self.validator(key).select(key, values)
        if not 0 <= i < len(values):
            raise InvalidRecord("validator selected no value")
        return i

    # --- storage ---------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """
        The unexpired value held for C{key}, if any.
        """
        rec = self._records.get(key)
        if rec is None:
            return None
        if rec.expires <= self._clock.seconds():
            self._drop(key)
            return None
        return rec.value

    def record(self, key: bytes) -> StoredRecord | None:
        """
        The unexpired held record with its metadata, if any.
        """
        return self._records.get(key) if self.get(key) is not None else None

    def put(
        self, key: bytes, value: bytes, origin: PeerID | None = None, network: str | None = None
    ) -> bool:
        """
        Validate and store C{value} under C{key} on behalf of C{origin},
        whose connection is on C{network} (L{networkOf}; C{None}: unknown,
        only the per-peer quota applies).

        A valid C{value} that may replace the one held for C{key} (the
        owner's update) is stored whatever the quotas and the store's size:
        it takes no new room.

        @return: C{True} if stored, C{False} if the same value was already
            held (its expiry and origin untouched, no quota spent).
        @raise InvalidRecord: the record is invalid.
        @raise RecordRefused: a better record is held or may not be
            replaced, the store is full, or C{origin} or its network is
            over its quota.
        """
        validator = self.validator(key)
        self.validate(key, value)
        now = self._clock.seconds()
        old = self.get(key)
        if old == value:
            return False
        if old is not None:
            if not validator.mayReplace(key, old, value):
                raise RecordRefused("a record held for this key may not be replaced by this one")
            if validator.select(key, [old, value]) == 0:
                raise RecordRefused("a better record is held for this key")
        ours = origin is not None and origin == self.localPeer
        if not ours and old is None:
            # A new record takes room: charge it.  (An update of a held one
            # is accepted above by the validator's ownership rule.)
            if len(self._records) >= self.maxRecords:
                self.expire()
                if len(self._records) >= self.maxRecords:
                    raise RecordRefused("the record store is full")
            peerPuts = None if origin is None else self._window(self._puts, origin, now)
            netPuts = None if network is None else self._window(self._netPuts, network, now)
            if peerPuts is not None and len(peerPuts) >= self.maxPerPeer:
                raise RecordRefused(f"peer {origin} stored too many records recently")
            if network is not None and netPuts is not None:
                if self._held.get(network, 0) >= self.maxHeldPerNetwork:
                    raise RecordRefused(f"network {network} holds too many records here")
                if len(netPuts) >= self.maxPerNetwork:
                    raise RecordRefused(f"network {network} stored too many records recently")
                netPuts.append(now)
            if peerPuts is not None:
                peerPuts.append(now)
        expires = float(validator.expires(value))
        prior = self._records.get(key)
        if prior is not None and prior.origin == self.localPeer and not ours:
            # Someone else published a newer version of our record (e.g. the
            # same identity on another machine): keep republishing the newest.
            origin = self.localPeer
        if prior is not None:
            if old is not None:
                # An update keeps the network the record is counted against.
                network = prior.network
            self._drop(key)
        if ours:
            network = None
        self._records[key] = StoredRecord(key, value, expires, now, origin, network)
        if network is not None:
            self._held[network] = self._held.get(network, 0) + 1
        return True

    def _window(self, table: dict[Any, deque[float]], who: Any, now: float) -> deque[float]:
        puts = table.get(who)
        if puts is None:
            puts = table[who] = deque()
        while puts and puts[0] <= now - self.quotaWindow:
            puts.popleft()
        return puts

    def _drop(self, key: bytes) -> bool:
        rec = self._records.pop(key, None)
        if rec is None:
            return False
        if rec.network is not None:
            n = self._held.get(rec.network, 0) - 1
            if n > 0:
                self._held[rec.network] = n
            else:
                self._held.pop(rec.network, None)
        return True

    def heldFrom(self, network: str) -> int:
        """
        How many held records count against C{network}.
        """
        return self._held.get(network, 0)

    def remove(self, key: bytes) -> bool:
        return self._drop(key)

    def expire(self) -> int:
        """
        Drop expired records and stale quota counters.

        @return: how many records were dropped.
        """
        now = self._clock.seconds()
        dead = [k for k, r in self._records.items() if r.expires <= now]
        for k in dead:
            self._drop(k)
        stale = now - self.quotaWindow
        for peer in [p for p, q in self._puts.items() if not q or q[-1] <= stale]:
            del self._puts[peer]
        for net in [n for n, q in self._netPuts.items() if not q or q[-1] <= stale]:
            del self._netPuts[net]
        return len(dead)

    def republishable(self, owner: PeerID | None = None) -> list[tuple[bytes, bytes]]:
        """
        The unexpired C{(key, value)} pairs stored on behalf of C{owner}
        (default: the local peer), which that owner should put again
        before the DHT forgets them.
        """
        owner = self.localPeer if owner is None else owner
        now = self._clock.seconds()
        return [
            (r.key, r.value)
            for r in list(self._records.values())
            if r.origin is not None and r.origin == owner and r.expires > now
        ]

    def items(self) -> list[StoredRecord]:
        """
        Every unexpired record (for status displays and tests).
        """
        now = self._clock.seconds()
        return [r for r in self._records.values() if r.expires > now]
