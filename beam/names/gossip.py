"""
Name records on gossip: L{NameGossip} publishes our signed records on the
gossipsub topic C{beam-names} and judges the ones peers send.

Each message is one signed record, exactly the bytes published to the
DHT.  The pubsub service calls our validator for every new message; the
verdict is:

  - C{"reject"} when C{validate} (the same rules as the DHT: signature,
    owner, name, expiry) refuses it: the peer that relayed it is
    penalised by gossipsub's scoring (P4);
  - C{"ignore"} when it is valid but not news: a seq older than or equal to
    the best we hold for that name and owner, a live name held by another
    owner (first claimant), or an author over its rate (L{RATE} records
    per L{RATE_WINDOW} seconds: nobody republishes that often);
  - C{"accept"} otherwise: it is forwarded, kept in our bounded cache
    (L{cached}) and handed to C{onRecord(record, data)}.

The cache holds at most L{MAX_CACHED} names (least recently updated go
first) and forgets expired records when asked.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Optional

from beam.identity.keys import PeerID
from beam.names.record import InvalidNameRecord, NameRecord, openRecord

TOPIC = "beam-names"
#: Records one author may publish per RATE_WINDOW seconds.
RATE = 10
RATE_WINDOW = 60.0
#: Names remembered (best record each).
MAX_CACHED = 4096
#: Authors whose rate we track.
MAX_AUTHORS = 4096


def validateNameRecord(data: bytes, now: float) -> Optional[NameRecord]:
    """
    The record in C{data} if it opens at C{now} (signature, key, name,
    addresses, times: L{openRecord}), else L{None}.  First-claimant rules
    need the holder's state and are left to the caller.
    """
    try:
        return openRecord(data, now)
    except InvalidNameRecord:
        return None


class NameGossip:
    """
    Beam names on the C{beam-names} topic of a pubsub service.

    @param pubsub: a L{beam.p2p.pubsub.GossipSub} (C{subscribe},
        C{publish}, C{setValidator}).
    @param validate: opens a record, or L{None} if it is not acceptable.
    @param onRecord: called with each accepted record and its bytes.
    @param clock: time for rate limits and expiry (default: the pubsub's
        reactor, else the wall clock).
    """

    def __init__(
        self,
        pubsub: Any,
        validate: Callable[[bytes], Optional[NameRecord]],
        onRecord: Callable[[NameRecord, bytes], None],
        *,
        clock: Optional[Callable[[], float]] = None,
        rate: int = RATE,
        rateWindow: float = RATE_WINDOW,
        maxCached: int = MAX_CACHED,
    ) -> None:
        self.pubsub = pubsub
        self.validate = validate
        self.onRecord = onRecord
        reactor = getattr(pubsub, "reactor", None)
        self.now: Callable[[], float] = clock or (reactor.seconds if reactor is not None else time.time)
        self.rate = rate
        self.rateWindow = rateWindow
        self.maxCached = maxCached
        self.best: "OrderedDict[str, tuple[NameRecord, bytes]]" = OrderedDict()
        self._authors: "OrderedDict[PeerID, list[float]]" = OrderedDict()
        self.counters = {"accepted": 0, "rejected": 0, "ignored": 0, "published": 0}
        pubsub.setValidator(TOPIC, self._validate)
        pubsub.subscribe(TOPIC, self._received)

    def publish(self, recordBytes: bytes) -> None:
        """
        Send one of our signed records to the topic (and remember it, so an
        older one coming back is not news).
        """
        record = self.validate(recordBytes)
        if record is not None and self._isNews(record):
            self._remember(record, recordBytes)
        self.counters["published"] += 1
        self.pubsub.publish(TOPIC, recordBytes)

    def cached(self, name: str) -> Optional[tuple[NameRecord, bytes]]:
        """
        The best unexpired record gossip brought for C{name}, with its bytes.
        """
        entry = self.best.get(name)
        if entry is None:
            return None
        if entry[0].isExpired(self.now()):
            del self.best[name]
            return None
        return entry

    def _overRate(self, author: PeerID) -> bool:
        now = self.now()
        times = self._authors.get(author)
        if times is None:
            times = self._authors[author] = []
            while len(self._authors) > MAX_AUTHORS:
                self._authors.popitem(last=False)
        self._authors.move_to_end(author)
        times[:] = [t for t in times if t > now - self.rateWindow]
        if len(times) >= self.rate:
            return True
        times.append(now)
        return False

    def _validate(self, author: PeerID, data: bytes) -> str:
        record = self.validate(data)
        if record is None:
            self.counters["rejected"] += 1
            return "reject"
        if not self._isNews(record):
            self.counters["ignored"] += 1
            return "ignore"
        if self._overRate(author):
            self.counters["ignored"] += 1
            return "ignore"
        return "accept"

    def _received(self, author: PeerID, data: bytes) -> None:
        record = self.validate(data)
        if record is None:
            return
        if not self._isNews(record):
            return
        self._remember(record, data)
        self.counters["accepted"] += 1
        self.onRecord(record, data)

    def _isNews(self, record: NameRecord) -> bool:
        """
        Whether C{record} beats what we hold for its name: no live record,
        or the same owner with a higher seq.
        """
        held = self.cached(record.name)
        return held is None or (held[0].peer == record.peer and record.seq > held[0].seq)

    def _remember(self, record: NameRecord, data: bytes) -> None:
        self.best[record.name] = (record, data)
        self.best.move_to_end(record.name)
        while len(self.best) > self.maxCached:
            self.best.popitem(last=False)

    def status(self) -> dict[str, Any]:
        return {"topic": TOPIC, "cached": len(self.best), **self.counters}
