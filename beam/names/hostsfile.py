"""
Beam names in the hosts file (C{/etc/hosts}): C{beam hosts add|remove|list}.

Every program on the machine reads the hosts file, so a line
C{127.77.0.5<TAB>alice.beam} there makes C{http://alice.beam:3000/} work
in any browser with no resolver set up.  The file is the user's, so Beam
keeps to one marked block and never changes a byte outside it::

    # BEGIN beam (managed by `beam hosts`; edits inside are overwritten)
    127.77.0.5<TAB>alice.beam
    # END beam

The editing functions (L{addEntry}, L{removeEntry}, L{listEntries}) are
pure: bytes in, bytes out, so that the promises can be checked on any
file.  They are:

  - adding an entry that is already there returns the very same bytes
    (and L{updateHostsFile} then writes nothing);
  - the block uses the file's own line ending (C{CRLF} if the file's
    first line ends so);
  - the file's ending is remembered in the block itself: appended to a
    file without a final newline, the block starts with the newline that
    ends the file's last line and C{# END beam} gets none, so removing the
    last entry takes exactly the bytes we added away and the file is
    byte-identical to before the first add;
  - a file with two blocks, or a C{BEGIN} without its C{END} (or the other
    way round), is refused with L{MalformedHostsFile}: guessing where our
    block ends could delete the user's lines.

Writes (L{writeHostsFile}) are atomic: the previous content goes to
C{PATH.beam-backup} first, then a temporary file beside C{PATH} (same mode
and owner) is written, fsynced and renamed over it, so a crash leaves the
old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Final, Iterator, Optional

import attrs

from beam.errors import BeamError
from beam.storage.fileutil import atomicWrite

DEFAULT_PATH: Final = "/etc/hosts"
"""The hosts file C{beam hosts} edits unless told another."""

BEGIN: Final = b"# BEGIN beam (managed by `beam hosts`; edits inside are overwritten)"
"""The line that opens Beam's block."""

END: Final = b"# END beam"
"""The line that closes Beam's block."""

SUFFIX: Final = ".beam"
"""The top-level domain of Beam names in the hosts file (as in the DNS zone)."""

BACKUP_SUFFIX: Final = ".beam-backup"
"""The previous content of C{PATH} is kept in C{PATH + BACKUP_SUFFIX}."""

MAX_HOST: Final = 253
"""The longest host name DNS allows, C{.beam} included."""


class HostsFileError(BeamError):
    """
    The hosts file could not be changed.
    """


class MalformedHostsFile(HostsFileError):
    """
    The hosts file's Beam block is damaged; fix it by hand (nothing was changed).
    """


class HostsFilePermission(HostsFileError):
    """
    Not allowed to change the hosts file; run with sudo or pass --hosts-file PATH.
    """


@attrs.frozen
class HostsEntry:
    """
    One line of Beam's block: C{host} (C{NAME.beam}) resolves to C{address}.
    """

    address: str
    host: str


@attrs.frozen
class _Block:
    """
    Where Beam's block lies in a hosts file.

    @ivar start: offset of the C{BEGIN} line.
    @ivar end: offset just past the C{END} line and its line ending (if
        it has one).
    @ivar eol: the line ending of the C{BEGIN} line, used for every line
        of the block.
    @ivar closed: whether the C{END} line has a line ending; not when the
        block was appended to a file without a final newline.
    @ivar body: the lines between C{BEGIN} and C{END}.
    """

    start: int
    end: int
    eol: bytes
    closed: bool
    body: bytes


def _lines(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """
    The lines of C{data}: (offset, content, line ending), where the ending
    is C{b"\\r\\n"}, C{b"\\n"} or C{b""} (the last line, unterminated).  A
    lone C{\\r} is content: only C{\\n} ends a line in a hosts file.
    """
    offset = 0
    while offset < len(data):
        newline = data.find(b"\n", offset)
        if newline < 0:
            yield offset, data[offset:], b""
            return
        if newline > offset and data[newline - 1:newline] == b"\r":
            yield offset, data[offset:newline - 1], b"\r\n"
        else:
            yield offset, data[offset:newline], b"\n"
        offset = newline + 1


def _isBegin(content: bytes) -> bool:
    text = content.strip()
    # The words in parentheses may change between versions; the first
    # three words are the marker.
    return text == b"# BEGIN beam" or text.startswith((b"# BEGIN beam ", b"# BEGIN beam\t", b"# BEGIN beam("))


def _isEnd(content: bytes) -> bool:
    return content.strip() == END


def _lineEnding(data: bytes) -> bytes:
    """
    The file's line ending: that of its first line, C{\\n} if it has none.
    """
    for _, _, eol in _lines(data):
        return eol or b"\n"
    return b"\n"


def _findBlock(data: bytes) -> Optional[_Block]:
    """
    Beam's block in C{data}, or L{None} if there is none.

    @raise MalformedHostsFile: two blocks, or a marker without its pair.
    """
    begins: list[tuple[int, int, bytes]] = []
    ends: list[tuple[int, int, bytes]] = []
    for offset, content, eol in _lines(data):
        if _isBegin(content):
            begins.append((offset, offset + len(content) + len(eol), eol))
        elif _isEnd(content):
            ends.append((offset, offset + len(content) + len(eol), eol))
    if not begins and not ends:
        return None
    if len(begins) > 1 or len(ends) > 1:
        raise MalformedHostsFile(
            "the hosts file has more than one Beam block (`# BEGIN beam` ... `# END beam`); "
            "remove all but one by hand (nothing was changed)")
    if not begins or not ends or ends[0][0] < begins[0][0] or not begins[0][2]:
        raise MalformedHostsFile(
            "the hosts file has a `# BEGIN beam` line without its `# END beam` after it (or the other way "
            "round); fix the Beam block by hand (nothing was changed)")
    (bStart, bEnd, bEol), (eStart, eEnd, eEol) = begins[0], ends[0]
    return _Block(start=bStart, end=eEnd, eol=bEol, closed=bool(eEol), body=data[bEnd:eStart])


def _parseBody(body: bytes) -> list[HostsEntry]:
    """
    The entries in a block's lines: C{ADDRESS NAME.beam}; anything else
    (comments, hand-written oddities) is not ours and is left out.
    """
    entries: list[HostsEntry] = []
    for _, content, _ in _lines(body):
        fields = content.split(b"#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = checkAddress(fields[0].decode("ascii"))
        except (UnicodeDecodeError, HostsFileError):
            continue
        for field in fields[1:]:
            try:
                host = field.decode("ascii").lower()
            except UnicodeDecodeError:
                continue
            if _isHost(host) and all(e.host != host for e in entries):
                entries.append(HostsEntry(address, host))
    return entries


def _isHost(text: str) -> bool:
    """
    Whether C{text} is a host name L{hostName} could have made.
    """
    try:
        return text.endswith(SUFFIX) and hostName(text) == text
    except BeamError:
        return False


def hostName(name: str) -> str:
    """
    The host name of a Beam name: C{alice} is C{alice.beam}, C{web.alice}
    is C{web.alice.beam}.  A name already ending in C{.beam} is taken as
    its host name, as a user who typed C{alice.beam} meant.

    @raise beam.names.record.InvalidName: not lower-case DNS labels (after
        ASCII letters are lower-cased), or too long with C{.beam}.
    """
    from beam.names.record import InvalidName, normalizeName

    text = name.strip()
    if text.isascii() and text.lower().endswith(SUFFIX) and text.lower() != SUFFIX:
        text = text[:-len(SUFFIX)]
    host = normalizeName(text) + SUFFIX
    if len(host) > MAX_HOST:
        raise InvalidName(f"invalid name {name[:300]!r}: with {SUFFIX} it is longer than {MAX_HOST} characters")
    return host


def checkAddress(text: str) -> str:
    """
    C{text} as an IP address (v4 or v6) in its canonical form.

    @raise HostsFileError: it is not one.
    """
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise HostsFileError(f"{text[:100]!r} is not an IP address") from None


def listEntries(data: bytes) -> list[HostsEntry]:
    """
    The entries of Beam's block in C{data}, in the file's order (none
    without a block).

    @raise MalformedHostsFile: see L{_findBlock}.
    """
    block = _findBlock(data)
    return [] if block is None else _parseBody(block.body)


def _render(data: bytes, block: Optional[_Block], entries: list[HostsEntry]) -> bytes:
    """
    C{data} with Beam's block holding C{entries} (the block gone when
    there are none), every byte outside the block as it was.
    """
    if block is None:
        if not entries:
            return data
        eol = _lineEnding(data)
        if data == b"" or data.endswith(b"\n"):
            lead, closed = b"", True
        else:
            # End the file's last line inside what we add, and leave END
            # unterminated: the file keeps having no final newline, and
            # removing the block knows to take the lead newline back.
            lead, closed = eol, False
        start = end = len(data)
    else:
        eol, closed, start, end = block.eol, block.closed, block.start, block.end
        lead = b""
        if not entries:
            if not closed and start > 0:
                # The newline before BEGIN was the one we added to end the
                # file's last line.
                start -= len(eol) if data[:start].endswith(eol) else 1
            return data[:start] + data[end:]
    lines = [BEGIN] + [f"{e.address}\t{e.host}".encode("ascii") for e in entries] + [END]
    text = eol.join(lines) + (eol if closed else b"")
    return data[:start] + lead + text + data[end:]


def addEntry(data: bytes, host: str, address: str) -> bytes:
    """
    C{data} with C{host} resolving to C{address} in Beam's block (created
    at the end of the file if missing).  Returns C{data} itself when the
    entry is already there; a different address for C{host} replaces
    its line, in place.

    @param host: a host name from L{hostName}.
    @param address: an IP address (L{checkAddress} is applied).
    @raise MalformedHostsFile: see L{_findBlock}.
    """
    address = checkAddress(address)
    block = _findBlock(data)
    entries = [] if block is None else _parseBody(block.body)
    wanted = HostsEntry(address, host)
    if wanted in entries:
        return data
    if any(e.host == host for e in entries):
        entries = [wanted if e.host == host else e for e in entries]
    else:
        entries.append(wanted)
    return _render(data, block, entries)


def removeEntry(data: bytes, host: str) -> bytes:
    """
    C{data} without C{host} in Beam's block; without the block at all when
    it was the last entry (then the file is as before the first
    L{addEntry}).  Returns C{data} itself when C{host} is not there.

    @raise MalformedHostsFile: see L{_findBlock}.
    """
    block = _findBlock(data)
    if block is None:
        return data
    entries = _parseBody(block.body)
    if all(e.host != host for e in entries):
        return data
    return _render(data, block, [e for e in entries if e.host != host])


def readHostsFile(path: Path | str) -> bytes:
    """
    The bytes of the hosts file, or C{b""} if it does not exist yet.

    @raise HostsFilePermission: not allowed to read it.
    """
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return b""
    except PermissionError:
        raise HostsFilePermission(_denied(path, "read")) from None


def _denied(path: Path | str, what: str) -> str:
    return (f"not allowed to {what} {path}: run the command with sudo, "
            f"or pass --hosts-file PATH to keep the entries in another file")


def _atomicReplace(path: Path, data: bytes, like: Optional[os.stat_result]) -> None:
    """
    Replace C{path} with C{data} atomically (L{atomicWrite}), with the mode
    and owner of C{like} (the file being replaced), or 0644 for a new one.
    """
    if like is None:
        atomicWrite(path, data, 0o644, suffix=".beam-tmp")
    else:
        atomicWrite(path, data, stat.S_IMODE(like.st_mode), owner=(like.st_uid, like.st_gid), suffix=".beam-tmp")


def writeHostsFile(path: Path | str, old: bytes, new: bytes) -> None:
    """
    Replace the hosts file's content C{old} with C{new}, atomically,
    after saving C{old} to C{PATH.beam-backup} (atomically too).  A
    symbolic link is followed: the file it points to is replaced, the link
    stays.

    @raise HostsFilePermission: not allowed (not root, for C{/etc/hosts}).
    @raise HostsFileError: another reason the OS gave, e.g. a hosts file
        that is a mount point (as in a container), which no rename can
        replace.
    """
    target = Path(os.path.realpath(path))
    try:
        try:
            like: Optional[os.stat_result] = os.stat(target)
        except FileNotFoundError:
            like = None
        if like is not None:
            _atomicReplace(target.with_name(target.name + BACKUP_SUFFIX), old, like)
        _atomicReplace(target, new, like)
    except PermissionError:
        raise HostsFilePermission(_denied(path, "change")) from None
    except OSError as e:
        if e.errno in (errno.EBUSY, errno.EXDEV):
            raise HostsFileError(
                f"cannot replace {path} ({e.strerror}): it is probably mounted on its own, as in a "
                f"container; pass --hosts-file PATH to write another file") from None
        raise HostsFileError(f"cannot change {path}: {e.strerror or e}") from None


def updateHostsFile(path: Path | str, change: Callable[[bytes], bytes]) -> bool:
    """
    Apply C{change} (L{addEntry} or L{removeEntry} with its arguments
    bound) to the hosts file and write the result with
    L{writeHostsFile}; nothing is written when nothing changed.

    @return: whether the file changed.
    """
    with _locked(path):
        old = readHostsFile(path)
        new = change(old)
        if new == old:
            return False
        writeHostsFile(path, old, new)
        return True


@contextmanager
def _locked(path: Path | str) -> Iterator[None]:
    """
    Hold an exclusive lock on the hosts file's directory while reading,
    changing and replacing the file, so that two C{beam hosts} commands
    at once cannot both start from the same content and lose one's change.
    The directory, not the file: the file's inode is replaced by every
    write, so a lock on it would not be seen by the next reader.  Best
    effort: a directory we cannot open (no permission) is not locked, and
    the write then fails with its own message.
    """
    directory = os.path.dirname(os.path.realpath(path)) or "."
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
