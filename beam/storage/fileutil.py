"""
Writing files so that a crash never leaves them half-written.
"""

from __future__ import annotations

import os
from pathlib import Path


def atomicWrite(path: Path | str, data: bytes, mode: int = 0o600) -> None:
    """
    Replace C{path} with C{data}: write a temporary file beside it with
    C{mode} from the first byte, fsync it, rename it over C{path}, then fsync
    the directory so the rename itself survives a crash.
    """
    path = Path(path)
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
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


def ensurePrivateDirectory(path: Path | str) -> Path:
    """
    Create C{path} (and parents) if needed, readable by its owner only.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path
