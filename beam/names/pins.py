"""
Trust on first use for names: remember which peer each name led to.

The DHT hands a name to its first live claimant, but once a claim lapses
anyone may take the name.  So the first time we reach a name we pin its
peer ID in C{<home>/known_names.json}, and if the name later resolves to a
different key we stop and say so, like ssh does for host keys, until the
user accepts the new key.

The file is re-read before every decision and rewritten atomically (mode
0600) after every change, so a daemon and a command line sharing a home see
each other's pins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final, Literal

from beam.errors import BeamError
from beam.storage.fileutil import atomicWrite
from beam.identity.keys import PeerID
from beam.names.record import normalizeName

FILENAME: Final = "known_names.json"
_VERSION: Final = 1


class NameKeyChanged(BeamError):
    """
    The key for this name changed since we last connected to it.
    """

    def __init__(self, name: str, old: PeerID, new: PeerID) -> None:
        super().__init__(
            f"the key for {name} changed from {old} to {new}: if you expect "
            f"this, run `beam connect {name} --accept-new-key`"
        )
        self.name = name
        self.old = old
        self.new = new


class NamePinsUnreadable(BeamError):
    """
    The list of known names could not be read.
    """


class NamePins:
    """
    The name -> peer ID pins kept in C{<home>/known_names.json}.
    """

    def __init__(self, home: Path | str) -> None:
        self.path = Path(home) / FILENAME
        self._load()  # fail early on a damaged file

    def _load(self) -> dict[str, PeerID]:
        """
        @raise NamePinsUnreadable: the file exists but is not a pin list; we
            refuse to carry on as if nothing were pinned, since that would
            silently trust whatever key a name resolves to next.
        """
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as e:
            raise NamePinsUnreadable(f"cannot read {self.path}: {e}") from None
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("version") != _VERSION:
                raise ValueError(f"expected a version {_VERSION} document")
            names = doc["names"]
            if not isinstance(names, dict):
                raise ValueError("'names' is not an object")
            return {normalizeName(n): PeerID.fromString(p) for n, p in names.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise NamePinsUnreadable(
                f"{self.path} is damaged ({e}); fix or remove it"
            ) from None

    def _save(self, pins: dict[str, PeerID]) -> None:
        doc = {"version": _VERSION, "names": {n: str(p) for n, p in sorted(pins.items())}}
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, mode=0o700)
        atomicWrite(self.path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), mode=0o600)

    def get(self, name: str) -> PeerID | None:
        """
        The peer pinned for C{name}, if any.
        """
        return self._load().get(normalizeName(name))

    def items(self) -> list[tuple[str, PeerID]]:
        """
        All pins, sorted by name.
        """
        return sorted(self._load().items())

    def check(self, name: str, peer: PeerID) -> Literal["new", "known"]:
        """
        Check that C{name} resolving to C{peer} matches what we saw before.

        @return: C{"new"} if the name was unknown (it is now pinned to
            C{peer}), C{"known"} if it was already pinned to C{peer}.
        @raise NameKeyChanged: C{name} is pinned to another peer.
        @raise InvalidName: C{name} is not a valid name.
        """
        name = normalizeName(name)
        pins = self._load()
        pinned = pins.get(name)
        if pinned is None:
            pins[name] = peer
            self._save(pins)
            return "new"
        if pinned != peer:
            raise NameKeyChanged(name, pinned, peer)
        return "known"

    def accept(self, name: str, peer: PeerID) -> None:
        """
        Pin C{name} to C{peer}, replacing any earlier pin (the user's answer
        to L{NameKeyChanged}).
        """
        name = normalizeName(name)
        pins = self._load()
        pins[name] = peer
        self._save(pins)

    def forget(self, name: str) -> bool:
        """
        Remove the pin for C{name}.

        @return: whether there was one.
        """
        name = normalizeName(name)
        pins = self._load()
        if pins.pop(name, None) is None:
            return False
        self._save(pins)
        return True

