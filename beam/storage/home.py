"""
The node's home directory: where its identity (and later its config,
routing table and control socket) live.

Resolution order: an explicit C{--home}, then C{$BEAM_HOME}, then
C{$XDG_DATA_HOME/beam}, then C{~/.local/share/beam}.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from beam.errors import BeamError, InvalidKey
from beam.storage.fileutil import UnsafePath, atomicWrite, checkOwned, ensurePrivateDirectory
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


MAX_KEY_BYTES = 64 * 1024
"""
More than any identity file holds (an ed25519 key is under 100 bytes).
"""


def loadOrCreateIdentity(home: Path) -> Identity:
    """
    Read the node's ed25519 identity, creating it (mode 0600, written
    atomically) on first start.  A new home directory is created with mode
    0700; an existing one must belong to the user running Beam and not be
    writable by others, and the key must belong to that user and be
    neither readable nor writable by others: Beam refuses rather than trust
    (or change the mode of) files another user may have planted.

    @raise HomeError: the home directory or key file cannot be used, or the
        key cannot be read or parsed.
    """
    try:
        ensurePrivateDirectory(home, "home directory")
    except UnsafePath as e:
        raise HomeError(str(e)) from None
    except OSError as e:
        raise HomeError(f"cannot create home directory {home}: {e.strerror}") from None
    path = home / IDENTITY_FILE
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        ident = Identity.generate()
        atomicWrite(path, ident.toProtobuf(), 0o600)
        return ident
    except OSError as e:
        raise HomeError(f"cannot read {path}: {e.strerror}") from None
    with f:
        # Checked on the open file, so it cannot be swapped in between.
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise HomeError(f"{path} is not a regular file")
        try:
            checkOwned(path, st, "identity key", private=True)
        except UnsafePath as e:
            raise HomeError(str(e)) from None
        try:
            data = f.read(MAX_KEY_BYTES + 1)
        except OSError as e:
            raise HomeError(f"cannot read {path}: {e.strerror}") from None
    try:
        return Identity.fromProtobuf(data)
    except InvalidKey as e:
        raise HomeError(f"{path} is not a valid Beam identity: {e}") from None


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
