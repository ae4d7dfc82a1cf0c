"""
Writing files so that a crash never leaves them half-written.
"""

from __future__ import annotations

import os
import tempfile
import stat
from pathlib import Path

from beam.errors import BeamError


class UnsafePath(BeamError):
    """
    A file or directory Beam would trust is owned by another user or can be
    changed by other users.
    """


def atomicWrite(path: Path | str, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None,
                suffix: str = ".tmp") -> None:
    """
    Replace C{path} with C{data}: write a temporary file beside it (so the
    rename cannot cross file systems) with C{mode} from the first byte,
    fsync it, rename it over C{path}, then fsync the directory so the
    rename itself survives a crash.  On any failure the temporary file is
    removed and C{path} is untouched.

    @param owner: C{(uid, gid)} to give the new file (the hosts file keeps
        root's); only root may give a file away, so for anyone else it
        keeps its creator's.
    @param suffix: the temporary file's suffix (it is named
        C{.<name>.<random><suffix>}), so a crash's leftover says whose it is.
    """
    path = Path(path)
    directory = path.parent
    fd, tmpName = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=directory)
    tmp = Path(tmpName)
    try:
        try:
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fd, *owner)
                except PermissionError:
                    pass
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def checkOwned(path: Path | str, st: os.stat_result, what: str, private: bool = False) -> None:
    """
    Refuse C{path} (whose status is C{st}) unless it belongs to the user
    running Beam and other users cannot change it (nor, if C{private}, read
    it).

    @param what: what C{path} is, for the message (C{"home directory"}).
    @raise UnsafePath: saying what is wrong and how to fix it.
    """
    uid = os.geteuid()
    if st.st_uid != uid:
        raise UnsafePath(
            f"the {what} {path} belongs to user id {st.st_uid}, not to you (user id {uid}); "
            "Beam only uses files you own: choose another --home, or have its owner run: "
            f"chown {uid} {path}"
        )
    mode = stat.S_IMODE(st.st_mode)
    loose = mode & (0o077 if private else 0o022)
    if loose:
        fix = "600" if private else "go-w"
        kind = "readable or writable" if private else "writable"
        raise UnsafePath(
            f"the {what} {path} is {kind} by other users (mode {mode:o}); run: chmod {fix} {path}"
        )


def ensurePrivateDirectory(path: Path | str, what: str = "directory") -> Path:
    """
    Create C{path} (and its parents) if needed, mode 0700; an existing
    C{path} is used only if it is a directory of the user running Beam that
    other users cannot write to.  The mode of a directory Beam did not
    create is never changed.

    @raise UnsafePath: C{path} exists but is not such a directory.
    @raise OSError: C{path} cannot be created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    else:
        # Ours: make sure of the mode whatever the umask.
        os.chmod(path, 0o700)
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"the {what} {path} is not a directory")
    checkOwned(path, st, what)
    return path
