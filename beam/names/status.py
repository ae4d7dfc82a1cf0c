"""
Names as frozen values: the ones this node publishes (L{NameStatus}) and
the answer to a lookup (L{NameResolution}, with one L{ResolveStep} per step
of the resolution order).
"""

from __future__ import annotations

from typing import Optional

import attrs

__all__ = ["NameResolution", "NameStatus", "ResolveStep"]


@attrs.frozen
class NameStatus:
    """
    A name this node registered.

    @ivar services: the services its record offers.
    @ivar addrs: the addresses in its current record.
    @ivar seq: the record's sequence number (L{None} before the first).
    @ivar expires: when the current record expires (clock time).
    @ivar storedOn: how many peers took the last PUT.
    @ivar error: why the last publication failed, if it did.
    @ivar publishedAt: when the current record was last published (clock
        time, like C{expires}; L{None} before the first publication ends).
    @ivar nextRepublish: when it is due to be published again (clock
        time; L{None} while a publication is under way or once the service
        stopped).
    """

    name: str
    peerID: str
    services: tuple[str, ...] = ()
    addrs: tuple[str, ...] = ()
    seq: Optional[int] = None
    expires: Optional[float] = None
    storedOn: int = 0
    error: Optional[str] = None
    publishedAt: Optional[float] = None
    nextRepublish: Optional[float] = None


@attrs.frozen
class ResolveStep:
    """
    One step of a resolution, in the order they were tried.

    @ivar step: C{"pin"} (reading the key pinned for the name: C{"hit"}
        when one filters the answers, C{"miss"} on first use, C{"skipped"}
        when accepting a new key), C{"cache"} (our own names and records
        recently resolved), C{"mdns"} (asking the LAN), C{"gossip"}
        (records pushed on the C{beam-names} topic) or C{"dht"}.
    @ivar ms: how long it took, in milliseconds.
    @ivar outcome: C{"hit"}, C{"miss"}, C{"skipped"} (not available or
        switched off) or C{"error: "} and why (a record that failed
        validation, another key than the pinned one, no DHT peers...).
    """

    step: str
    ms: float
    outcome: str


@attrs.frozen
class NameResolution:
    """
    Who owns a name, where it is, and how that was found out.

    @ivar source: the step that answered: C{"cache"} (also our own
        names), C{"mdns"}, C{"gossip"} or C{"dht"}.
    @ivar pin: C{"new"} (first seen: now pinned), C{"known"} (matches the
        pin) or C{"accepted"} (a changed key, accepted on request).
    @ivar queried: DHT peers asked; C{rounds}: lookup rounds (both 0 when
        the DHT was not asked).
    @ivar steps: every step tried, in order, with its time and outcome.
    """

    name: str
    peerID: str
    addrs: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    seq: int = 0
    expires: float = 0.0
    source: str = "dht"
    pin: str = "new"
    elapsedMs: float = 0.0
    queried: int = 0
    rounds: int = 0
    steps: tuple[ResolveStep, ...] = ()
