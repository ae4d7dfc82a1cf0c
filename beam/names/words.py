"""
Memorable random names such as C{brave-otter-4821}.

A node without a configured name gets one of these: easy to read aloud and
type, and with 64 x 64 x 10000 (about 2**25) possibilities unlikely to be
taken already.  Should it be, the first claimant keeps it and the newcomer
can pick again.
"""

from __future__ import annotations

import os
from typing import Callable, Final

ADJECTIVES: Final = (
    "able", "amber", "bold", "brave", "bright", "brisk", "calm", "clever",
    "cosy", "crisp", "curly", "daring", "deft", "eager", "early", "fair",
    "fancy", "fast", "fierce", "fleet", "fond", "free", "fresh", "gentle",
    "giddy", "glad", "golden", "grand", "happy", "hardy", "honest", "jolly",
    "keen", "kind", "lively", "loyal", "lucky", "merry", "mighty", "mellow",
    "neat", "nimble", "noble", "plucky", "polite", "proud", "quick", "quiet",
    "rapid", "ready", "rosy", "shiny", "silver", "sleek", "smart", "snowy",
    "steady", "sunny", "swift", "tidy", "vivid", "warm", "witty", "zesty",
)
"""64 adjectives (6 bits)."""

ANIMALS: Final = (
    "badger", "bear", "beaver", "bison", "camel", "cat", "crane", "crow",
    "deer", "dingo", "dolphin", "dove", "eagle", "eel", "falcon", "ferret",
    "finch", "fox", "frog", "gecko", "goat", "goose", "hare", "hawk",
    "hedgehog", "heron", "ibis", "jackal", "koala", "lark", "lemur", "lion",
    "llama", "lynx", "marten", "mole", "moose", "newt", "otter", "owl",
    "panda", "parrot", "pelican", "puffin", "quail", "rabbit", "raven", "robin",
    "salmon", "seal", "shrew", "sparrow", "stork", "swan", "tapir", "tiger",
    "toad", "trout", "turtle", "viper", "walrus", "whale", "wolf", "yak",
)
"""64 animals (6 bits)."""


def randomName(random: Callable[[int], bytes] = os.urandom) -> str:
    """
    A fresh C{adjective-animal-NNNN} name (always a valid Beam name).

    @param random: returns that many random bytes; injected for tests.
    @raise ValueError: C{random} returned the wrong number of bytes.
    """
    raw = random(6)
    if len(raw) != 6:
        raise ValueError("the random source returned the wrong number of bytes")
    adjective = ADJECTIVES[raw[0] % len(ADJECTIVES)]
    animal = ANIMALS[raw[1] % len(ANIMALS)]
    # 32 bits reduced mod 10000: a bias below one part in 400000.
    number = int.from_bytes(raw[2:], "big") % 10000
    return f"{adjective}-{animal}-{number:04d}"
