"""
Beam names: human-friendly names for peers, published in the DHT.

A name record (L{record}) is a signed claim "NAME is peer P at ADDRS",
stored under the DHT key C{/beam-name/NAME} and judged by L{NameValidator}
(first claimant keeps a live name).  Clients pin the peer a name led to
(L{NamePins}) and warn if it changes.  Nodes without a name pick one with
L{randomName}.
"""

from __future__ import annotations

from beam.names.pins import NameKeyChanged, NamePins, NamePinsUnreadable
from beam.names.record import (
    CLOCK_SKEW,
    DEFAULT_TTL,
    DOMAIN,
    KEY_PREFIX,
    MAX_ENVELOPE,
    MAX_TTL,
    PAYLOAD_TYPE,
    REPUBLISH_INTERVAL,
    InvalidName,
    InvalidNameRecord,
    NameRecord,
    checkTimes,
    decodeRecord,
    dhtKey,
    makeRecord,
    nameFromKey,
    normalizeName,
    openRecord,
    signRecord,
    validateName,
)
from beam.names.validator import NAMESPACE, NameValidator
from beam.names.words import randomName

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_TTL",
    "DOMAIN",
    "KEY_PREFIX",
    "MAX_ENVELOPE",
    "MAX_TTL",
    "NAMESPACE",
    "PAYLOAD_TYPE",
    "REPUBLISH_INTERVAL",
    "InvalidName",
    "InvalidNameRecord",
    "NameKeyChanged",
    "NamePins",
    "NamePinsUnreadable",
    "NameRecord",
    "NameValidator",
    "checkTimes",
    "decodeRecord",
    "dhtKey",
    "makeRecord",
    "nameFromKey",
    "normalizeName",
    "openRecord",
    "randomName",
    "signRecord",
    "validateName",
]
