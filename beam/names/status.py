"""
Names as frozen values: the ones this node publishes (L{NameStatus}) and
the answer to a lookup (L{NameResolution}).
"""

from __future__ import annotations

from typing import Optional

import attrs

__all__ = ["NameResolution", "NameStatus"]


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
    """

    name: str
    peerID: str
    services: tuple[str, ...] = ()
    addrs: tuple[str, ...] = ()
    seq: Optional[int] = None
    expires: Optional[float] = None
    storedOn: int = 0
    error: Optional[str] = None


@attrs.frozen
class NameResolution:
    """
    Who owns a name, where it is, and how that was found out.

    @ivar source: C{"self"} (our own name) or C{"dht"}.
    @ivar pin: C{"new"} (first seen: now pinned), C{"known"} (matches the
        pin) or C{"accepted"} (a changed key, accepted on request).
    @ivar queried: peers asked; C{rounds}: lookup rounds.
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
