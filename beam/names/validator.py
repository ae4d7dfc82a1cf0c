"""
The DHT validator for name records (keys C{/beam-name/<name>}).

Names are first come, first served: a holder keeps the first live claim it
saw and only lets that owner update it (with a higher sequence number) until
the claim lapses.  A name nobody republishes expires after its TTL and is
free for anyone again.

Choosing among answers from different holders (L{NameValidator.select})
follows the holders, not the records' own timestamps: C{created} is written
by the publisher, so a latecomer could backdate it, and a single node on the
lookup path could then win a name just by answering with its own record.
Instead the owner that the most answers name wins (the first claimant, held
by every honest holder near the key), ties going to the earliest claim; among
that owner's records the highest sequence number wins.
"""

from __future__ import annotations

from typing import Sequence

from zope.interface import implementer

from beam.dht.store import IValidator
from beam.names.record import (
    InvalidNameRecord,
    NameRecord,
    checkTimes,
    decodeRecord,
    nameFromKey,
)

NAMESPACE = "beam-name"
"""The DHT key namespace this validator serves: keys are C{/beam-name/...}."""


@implementer(IValidator)
class NameValidator:
    """
    Validation, selection and ownership rules for name records.
    """

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        """
        Accept C{value} only if it opens (see L{beam.names.record.openRecord})
        at C{now} and names the name in C{key}.

        @raise InvalidNameRecord: it does not.
        """
        record = decodeRecord(value, expectedName=nameFromKey(key))
        checkTimes(record, now)

    def select(self, key: bytes, values: Sequence[bytes], now: float | None = None) -> int:
        """
        Pick the record to believe among answers from several holders.

        Invalid values (and, when C{now} is given, expired ones) are
        skipped.  The owner named by the most remaining values wins, ties
        going to the owner with the earliest C{created}; among the winner's
        records the highest C{seq} wins, then the latest expiry, then the
        first given.

        @param values: one value per answering holder, duplicates included:
            the count is the vote.
        @raise InvalidNameRecord: no value is valid.
        """
        name = nameFromKey(key)
        records: list[tuple[int, NameRecord]] = []
        for index, value in enumerate(values):
            try:
                record = decodeRecord(value, expectedName=name)
                if now is not None:
                    checkTimes(record, now)
            except InvalidNameRecord:
                continue
            records.append((index, record))
        if not records:
            raise InvalidNameRecord(f"no valid record for the name {name!r}")

        votes: dict[bytes, int] = {}
        earliest: dict[bytes, float] = {}
        firstSeen: dict[bytes, int] = {}
        for index, record in records:
            owner = record.peer.bytes
            votes[owner] = votes.get(owner, 0) + 1
            earliest[owner] = min(earliest.get(owner, record.created), record.created)
            firstSeen.setdefault(owner, index)
        winner = min(votes, key=lambda o: (-votes[o], earliest[o], firstSeen[o]))
        best = min(
            (r for r in records if r[1].peer.bytes == winner),
            key=lambda r: (-r[1].seq, -r[1].expires, r[0]),
        )
        return best[0]

    def mayReplace(
        self, key: bytes, old: bytes, new: bytes, now: float | None = None
    ) -> bool:
        """
        Whether a holder of C{old} should take C{new} instead.

        The owner of a live claim may update it with a higher sequence
        number; a replay of an older or equal one is refused.  Another peer
        may take the name only once the held claim has expired.  A held value
        that no longer decodes is always replaced by a valid one; an invalid
        C{new} never replaces anything.

        @param now: the current time.  The DHT record store leaves it out:
            it only asks about unexpired held values, and has already
            validated C{new} at the current time, so without C{now} C{old} is
            taken to be live and C{new}'s times are not checked again.
        """
        name = nameFromKey(key)
        try:
            incoming = decodeRecord(new, expectedName=name)
            if now is not None:
                checkTimes(incoming, now)
        except InvalidNameRecord:
            return False
        try:
            held = decodeRecord(old, expectedName=name)
        except InvalidNameRecord:
            return True
        if held.peer == incoming.peer:
            return incoming.seq > held.seq
        return now is not None and held.isExpired(now)

    def expires(self, value: bytes) -> float:
        """
        When C{value} expires; an undecodable value counts as long expired,
        so a store holding one drops it.
        """
        try:
            return decodeRecord(value).expires
        except InvalidNameRecord:
            return 0.0
