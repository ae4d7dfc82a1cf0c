"""
The node's home directory: where its identity (and later its config,
routing table and control socket) live.

Resolution order: an explicit C{--home}, then C{$BEAM_HOME}, then
C{$XDG_DATA_HOME/beam}, then C{~/.local/share/beam}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from beam.errors import BeamError, InvalidKey
from beam.storage.fileutil import atomicWrite, ensurePrivateDirectory
from beam.identity.keys import Identity

IDENTITY_FILE = "identity.key"
STATE_FILE = "state.json"


class HomeError(BeamError):
    """
    The node's home directory cannot be used.
    """


def resolveHome(explicit: str | os.PathLike[str] | None = None) -> Path:
    """
    Pick the home directory without creating it.
    """
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("BEAM_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "beam"


def loadOrCreateIdentity(home: Path) -> Identity:
    """
    Read the node's ed25519 identity, creating it (mode 0600, written
    atomically) on first start.

    @raise HomeError: the key file exists but cannot be read or parsed, or
        is readable by others.
    """
    try:
        ensurePrivateDirectory(home)
    except OSError as e:
        raise HomeError(f"cannot create home directory {home}: {e.strerror}") from None
    path = home / IDENTITY_FILE
    try:
        st = path.stat()
    except FileNotFoundError:
        ident = Identity.generate()
        atomicWrite(path, ident.toProtobuf(), 0o600)
        return ident
    if st.st_mode & 0o077:
        raise HomeError(
            f"{path} is readable by other users (mode {st.st_mode & 0o777:o}); "
            f"run: chmod 600 {path}"
        )
    try:
        return Identity.fromProtobuf(path.read_bytes())
    except InvalidKey as e:
        raise HomeError(f"{path} is not a valid Beam identity: {e}") from None
    except OSError as e:
        raise HomeError(f"cannot read {path}: {e.strerror}") from None


def readState(home: Path) -> dict[str, Any]:
    """
    What the node remembers between runs (C{state.json}: its listen port,
    its memorable name, the names it registered); C{{}} when the file is
    missing or unreadable, since all of it can be rebuilt.
    """
    try:
        state = json.loads((Path(home) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def updateState(home: Path, **changes: Any) -> None:
    """
    Set keys of C{state.json}, keeping the others; written atomically,
    mode 0600.

    @raise OSError: the file cannot be written.
    """
    state = readState(home)
    state.update(changes)
    atomicWrite(Path(home) / STATE_FILE, json.dumps(state).encode(), 0o600)
