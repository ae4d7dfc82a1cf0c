"""
The name records this node has seen, from any source, kept for resolving.

Every record that reaches a L{RecordCache} has already been opened (its
signature, name and times checked, see L{beam.names.record.openRecord}) by
the L{NameService<beam.names.service.NameService>}: our own records as we
publish them, DHT and mDNS answers to our lookups, and records pushed to us
on the C{beam-names} gossip topic.  The cache keeps one record per name, the
best one it was offered, tagged with where it came from and when, so the
resolver can tell a record it asked for a moment ago (answered by its
C{"cache"} step) from one the gossip mesh pushed (its C{"gossip"} step).

Which record is best follows the DHT's own rules (L{NameValidator
<beam.names.validator.NameValidator>}): the owner of a live claim replaces
its record only with a higher sequence number, and another key takes the
name only once that claim has expired, unless the new record comes from an
authority: the DHT (whose answer is the holders' vote), the pinned key, or
ourselves.  Expired records are dropped when met; the cache holds at most
C{maxEntries} names, forgetting the least recently used first (never our
own), so gossip about names nobody here asks for cannot grow it without
bound.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final, Iterator, Literal, Optional

import attrs

from beam.names.record import NameRecord

__all__ = ["CachedRecord", "RecordCache", "Source", "MAX_ENTRIES"]

MAX_ENTRIES: Final = 1024
"""Names a cache holds by default: records are at most a few KiB each."""

#: Where a cached record came from.
Source = Literal["self", "dht", "mdns", "gossip"]

#: The sources whose word replaces a live claim by another key.
_AUTHORITIES: Final = frozenset({"self", "dht"})


@attrs.frozen
class CachedRecord:
    """
    One name's best known record.

    @ivar record: the opened record.
    @ivar signed: its signed bytes, as received (to hand on unchanged).
    @ivar source: where it came from.
    @ivar received: when it was stored or last confirmed (clock time).
    """

    record: NameRecord
    signed: bytes
    source: str
    received: float

    def age(self, now: float) -> float:
        """
        Seconds since the record was stored or last confirmed.
        """
        return now - self.received


class RecordCache:
    """
    Bounded, expiring, one-best-record-per-name store of validated records.

    @param clock: gives the time (C{seconds()}), for expiry and ages.
    @param maxEntries: names kept at most.
    """

    def __init__(self, clock: Any, maxEntries: int = MAX_ENTRIES) -> None:
        if maxEntries < 1:
            raise ValueError("a record cache holds at least one name")
        self.clock = clock
        self.maxEntries = maxEntries
        self._entries: OrderedDict[str, CachedRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[CachedRecord]:
        return iter(list(self._entries.values()))

    def get(self, name: str) -> Optional[CachedRecord]:
        """
        The live record held for C{name} (marking it recently used), or
        L{None}; an expired one is dropped.
        """
        entry = self._entries.get(name)
        if entry is None:
            return None
        if entry.record.isExpired(self.clock.seconds()):
            del self._entries[name]
            return None
        self._entries.move_to_end(name)
        return entry

    def judge(self, record: NameRecord, source: str, preferred: bool = False) -> Optional[str]:
        """
        Why C{record} would not be taken, or L{None} if it would.

        @param preferred: the record is signed by the key pinned for its
            name: like an authority's, it replaces a live claim by another
            key.
        """
        held = self.get(record.name)
        if held is None:
            return None
        if held.record.peer == record.peer:
            if record.seq > held.record.seq:
                return None
            if record.seq == held.record.seq and source != "gossip":
                # Asked for and confirmed: the same record, fresh again.
                # (Gossip repeating it confirms nothing we asked.)
                return None
            return f"older than the record held (seq {record.seq} <= {held.record.seq})"
        if source in _AUTHORITIES or preferred:
            return None
        return f"the name is held by another key ({held.record.peer}) until {held.record.expires:.0f}"

    def offer(self, record: NameRecord, signed: bytes, source: str, preferred: bool = False) -> Optional[str]:
        """
        Keep C{record} if it is better than the one held (see L{judge}).

        @return: L{None} if it was kept, else why not.
        """
        refused = self.judge(record, source, preferred)
        if refused is not None:
            return refused
        held = self._entries.get(record.name)
        if (held is not None and held.source == "self" and source != "self"
                and held.record.peer == record.peer and held.record.seq == record.seq):
            # Our own record, echoed back by the network: still ours.
            source = "self"
        self._entries[record.name] = CachedRecord(record, signed, source, self.clock.seconds())
        self._entries.move_to_end(record.name)
        self._trim()
        return None

    def discard(self, name: str) -> None:
        """
        Forget C{name}'s record.
        """
        self._entries.pop(name, None)

    def _trim(self) -> None:
        if len(self._entries) <= self.maxEntries:
            return
        now = self.clock.seconds()
        for name, entry in list(self._entries.items()):
            if entry.record.isExpired(now):
                del self._entries[name]
        for name, entry in list(self._entries.items()):
            if len(self._entries) <= self.maxEntries:
                break
            if entry.source != "self":
                del self._entries[name]

    def status(self) -> dict[str, int]:
        """
        How many names are held, by source.
        """
        counts: dict[str, int] = {"names": len(self._entries)}
        for entry in self._entries.values():
            counts[entry.source] = counts.get(entry.source, 0) + 1
        return counts
