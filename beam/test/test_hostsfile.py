"""
Tests for L{beam.names.hostsfile} and C{beam hosts}: Beam's block in the
hosts file never changes a byte outside it, round-trips byte-exact, and
is written so that a crash leaves the old file or the new one.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from beam import cli
from beam.names import hostsfile
from beam.names.hostsfile import (
    BEGIN,
    END,
    HostsEntry,
    HostsFileError,
    HostsFilePermission,
    MalformedHostsFile,
    addEntry,
    hostName,
    listEntries,
    removeEntry,
)
from beam.names.record import InvalidName
from beam.test.test_cli import parse

ROOT = Path(__file__).resolve().parents[2]


class NameTests(SynchronousTestCase):
    """
    L{hostName} and L{hostsfile.checkAddress} check what goes into the
    file.
    """

    def test_hostName(self) -> None:
        """
        A Beam name gets C{.beam}; letters are lower-cased; a name typed
        with its C{.beam} is taken as the host name.
        """
        self.assertEqual(hostName("alice"), "alice.beam")
        self.assertEqual(hostName("web.alice"), "web.alice.beam")
        self.assertEqual(hostName(" Alice "), "alice.beam")
        self.assertEqual(hostName("alice.beam"), "alice.beam")
        self.assertEqual(hostName("ALICE.BEAM"), "alice.beam")

    def test_badNames(self) -> None:
        """
        Anything but DNS labels is refused, and so is a name too long
        with C{.beam}.
        """
        for bad in ["", ".beam", "a b", "-alice", "alice-", "al_ice", "alice..x", "ålice", "a\tb",
                    "x" * 64, ".".join(["a" * 62] * 4), ".".join(["a" * 63] * 3) + "." + "a" * 57]:
            self.assertRaises(InvalidName, hostName, bad)
        self.assertEqual(len(hostName(".".join(["a" * 63] * 3) + "." + "a" * 56)), 253)

    def test_checkAddress(self) -> None:
        """
        IPv4 and IPv6 addresses, in canonical form; anything else is a
        L{HostsFileError}.
        """
        self.assertEqual(hostsfile.checkAddress("127.77.0.5"), "127.77.0.5")
        self.assertEqual(hostsfile.checkAddress("FE80:0::1"), "fe80::1")
        for bad in ["", "alice", "127.0.0.256", "1.2.3", "::g"]:
            self.assertRaises(HostsFileError, hostsfile.checkAddress, bad)


HOSTS = (b"127.0.0.1\tlocalhost\n"
         b"::1\tlocalhost ip6-localhost # v6\n"
         b"\n"
         b"# a comment \xc3\xa9\n"
         b"10.0.0.1 alice.beam.example xalice.beam\n")


class EditTests(SynchronousTestCase):
    """
    L{addEntry}, L{removeEntry} and L{listEntries} on known files.
    """

    def test_addAppendsBlock(self) -> None:
        """
        The first entry appends the block after the file's last line;
        C{ADDRESS<TAB>NAME.beam}.
        """
        data = addEntry(HOSTS, "alice.beam", "127.77.0.5")
        self.assertEqual(data, HOSTS + BEGIN + b"\n127.77.0.5\talice.beam\n" + END + b"\n")
        self.assertEqual(listEntries(data), [HostsEntry("127.77.0.5", "alice.beam")])
        self.assertEqual(listEntries(HOSTS), [])

    def test_idempotent(self) -> None:
        """
        Adding the same entry again returns the same bytes; another
        address for the name replaces its line in place.
        """
        one = addEntry(HOSTS, "alice.beam", "127.77.0.5")
        two = addEntry(one, "bob.beam", "127.77.0.6")
        self.assertIs(addEntry(two, "alice.beam", "127.77.0.5"), two)
        moved = addEntry(two, "alice.beam", "::1")
        self.assertEqual(listEntries(moved), [HostsEntry("::1", "alice.beam"), HostsEntry("127.77.0.6", "bob.beam")])
        self.assertEqual(removeEntry(removeEntry(moved, "bob.beam"), "alice.beam"), HOSTS)

    def test_removeMissing(self) -> None:
        """
        Removing a name that is not in the block returns the same bytes.
        """
        self.assertIs(removeEntry(HOSTS, "alice.beam"), HOSTS)
        one = addEntry(HOSTS, "alice.beam", "127.77.0.5")
        self.assertIs(removeEntry(one, "bob.beam"), one)

    def test_noFinalNewline(self) -> None:
        """
        A file without a final newline gets one only inside what is
        added (C{END} has none), and loses it again with the block.
        """
        data = HOSTS.rstrip(b"\n")
        one = addEntry(data, "alice.beam", "127.77.0.5")
        self.assertEqual(one, data + b"\n" + BEGIN + b"\n127.77.0.5\talice.beam\n" + END)
        two = addEntry(one, "bob.beam", "127.77.0.6")
        self.assertTrue(two.endswith(b"bob.beam\n" + END))
        self.assertEqual(removeEntry(removeEntry(two, "alice.beam"), "bob.beam"), data)

    def test_crlf(self) -> None:
        """
        In a file whose lines end with CRLF, so do the block's.
        """
        data = HOSTS.replace(b"\n", b"\r\n")
        one = addEntry(data, "alice.beam", "127.77.0.5")
        self.assertEqual(one, data + BEGIN + b"\r\n127.77.0.5\talice.beam\r\n" + END + b"\r\n")
        self.assertEqual(removeEntry(one, "alice.beam"), data)
        bare = data.rstrip(b"\r\n")
        one = addEntry(bare, "alice.beam", "127.77.0.5")
        self.assertEqual(one, bare + b"\r\n" + BEGIN + b"\r\n127.77.0.5\talice.beam\r\n" + END)
        self.assertEqual(removeEntry(one, "alice.beam"), bare)

    def test_emptyFile(self) -> None:
        """
        An empty (or missing) file becomes the block alone, and empty
        again.
        """
        one = addEntry(b"", "alice.beam", "127.77.0.5")
        self.assertEqual(one, BEGIN + b"\n127.77.0.5\talice.beam\n" + END + b"\n")
        self.assertEqual(removeEntry(one, "alice.beam"), b"")

    def test_blockInTheMiddle(self) -> None:
        """
        A block the user moved between other lines is edited where it
        is, with the lines around it untouched, and removed alone.
        """
        before, after = b"1.2.3.4 a\n", b"5.6.7.8 b\n"
        data = before + BEGIN + b"\n127.77.0.5 alice.beam\n" + END + b"\n" + after
        two = addEntry(data, "bob.beam", "127.77.0.6")
        self.assertTrue(two.startswith(before + BEGIN) and two.endswith(END + b"\n" + after))
        self.assertEqual(removeEntry(removeEntry(two, "bob.beam"), "alice.beam"), before + after)

    def test_handEditsInsideTheBlock(self) -> None:
        """
        Lines inside the block that are not entries are not listed and
        are dropped by the next change ("edits inside are overwritten");
        a line with several names gives each of them.
        """
        data = (b"x\n" + BEGIN + b"\n# mine\n127.77.0.5  alice.beam bob.beam  # c\nnonsense\n"
                b"1.2.3.4 notbeam.example\n" + END + b"\n")
        self.assertEqual(listEntries(data), [HostsEntry("127.77.0.5", "alice.beam"),
                                             HostsEntry("127.77.0.5", "bob.beam")])
        self.assertEqual(addEntry(data, "carol.beam", "::1"),
                         b"x\n" + BEGIN + b"\n127.77.0.5\talice.beam\n127.77.0.5\tbob.beam\n::1\tcarol.beam\n"
                         + END + b"\n")

    def test_olderMarker(self) -> None:
        """
        A C{BEGIN} line whose words in parentheses differ (another
        version's) is still Beam's block, and is rewritten with today's.
        """
        data = b"x\n# BEGIN beam (managed by beam hosts; do not edit)\n1.2.3.4\talice.beam\n# END beam\n"
        self.assertEqual(listEntries(data), [HostsEntry("1.2.3.4", "alice.beam")])
        self.assertIn(BEGIN, addEntry(data, "bob.beam", "1.2.3.5"))
        self.assertEqual(removeEntry(data, "alice.beam"), b"x\n")

    def test_malformed(self) -> None:
        """
        Two blocks, a C{BEGIN} without C{END}, an C{END} without
        C{BEGIN} or before it: every function refuses with
        L{MalformedHostsFile}.
        """
        block = BEGIN + b"\n1.2.3.4\talice.beam\n" + END + b"\n"
        for data in [block + block, HOSTS + BEGIN + b"\n", HOSTS + BEGIN, END + b"\n" + HOSTS,
                     END + b"\n" + BEGIN + b"\n", HOSTS + block + BEGIN + b"\n" + END]:
            self.assertRaises(MalformedHostsFile, listEntries, data)
            self.assertRaises(MalformedHostsFile, addEntry, data, "bob.beam", "1.2.3.5")
            e = self.assertRaises(MalformedHostsFile, removeEntry, data, "alice.beam")
            self.assertIn("nothing was changed", str(e))


# Random hosts files: lines a real one has, and some it should not.
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_ourNames = st.lists(_label, min_size=1, max_size=2).map(".".join)
_similar = st.one_of(
    _ourNames.map(lambda n: n + ".beam.example"),
    _ourNames.map(lambda n: "x" + n + ".beam"),
    _ourNames.map(lambda n: n + ".beam"),
    _ourNames.map(lambda n: n.upper() + ".BEAM"),
    _ourNames,
    st.sampled_from(["localhost", "ip6-localhost", "beam", "END", "BEGIN"]),
)
_space = st.sampled_from([" ", "\t", "  ", " \t", "\t\t"])
_entryLine = st.builds(
    lambda lead, addr, sep, names, tail: lead + addr + sep + " ".join(names) + tail,
    st.sampled_from(["", " ", "\t"]), st.one_of(_ipv4, _ipv6), _space, st.lists(_similar, min_size=1, max_size=3),
    st.sampled_from(["", " ", "\t", " # note", "#x", " \r"]),
)
_commentLine = st.builds(lambda t: "#" + t,
                         st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=30))
_line = st.one_of(_entryLine, _commentLine, st.sampled_from(["", " ", "\t", "\r", "# END", "# BEGIN", "#BEGIN beam",
                                                             "# beam", "# END beam-ish", "# BEGIN beamish"]))


def _isMarker(line: bytes) -> bool:
    return hostsfile._isBegin(line) or hostsfile._isEnd(line)


@st.composite
def hostsFiles(draw: Any) -> bytes:
    """
    A hosts file: random lines, LF, CRLF or mixed endings, with or without
    a final newline, never containing Beam's markers.
    """
    lines = [line.encode("utf-8") for line in draw(st.lists(_line, max_size=12))]
    lines = [line for line in lines if not _isMarker(line)]
    style = draw(st.sampled_from(["lf", "crlf", "mixed"]))
    out = b""
    for i, line in enumerate(lines):
        eol = {"lf": b"\n", "crlf": b"\r\n"}.get(style) or draw(st.sampled_from([b"\n", b"\r\n"]))
        last = i == len(lines) - 1
        out += line + (b"" if last and draw(st.booleans()) else eol)
    return out


_operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), _ourNames, st.one_of(_ipv4, _ipv6)),
        st.tuples(st.just("remove"), _ourNames, st.just("")),
    ),
    max_size=12,
)


def _apply(test: SynchronousTestCase, data: bytes, operations: list[tuple[str, str, str]]) -> tuple[bytes, dict[str, str]]:
    """
    Run C{operations} on C{data}, checking the idempotence of each and
    that the block lists what a plain dict of the operations holds.
    """
    model: dict[str, str] = {}
    for op, name, address in operations:
        host = hostName(name)
        if op == "add":
            data = addEntry(data, host, address)
            test.assertIs(addEntry(data, host, address), data)
            model[host] = address
        else:
            data = removeEntry(data, host)
            test.assertIs(removeEntry(data, host), data)
            model.pop(host, None)
        test.assertEqual({e.host: e.address for e in listEntries(data)}, model)
        test.assertEqual(len(listEntries(data)), len(model))
    return data, model


class PropertyTests(SynchronousTestCase):
    """
    Over random hosts files and random sequences of adds and removes:
    byte-exact round trips, idempotent adds, nothing outside the block
    changed, and the block lists what was added.
    """

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(hostsFiles(), _operations)
    def test_roundTrip(self, original: bytes, operations: list[tuple[str, str, str]]) -> None:
        """
        After any sequence, the bytes outside the block are the original
        (plus, for a file without a final newline, the one newline inside
        what we added); removing every entry gives back the original,
        byte for byte.
        """
        data, model = _apply(self, original, operations)
        block = hostsfile._findBlock(data)
        if not model:
            self.assertEqual(data, original)
            self.assertIsNone(block)
        else:
            assert block is not None
            self.assertEqual(data[block.end:], b"")
            outside = data[:block.start]
            if original == b"" or original.endswith(b"\n"):
                self.assertEqual(outside, original)
            else:
                self.assertEqual(outside, original + block.eol)
                self.assertFalse(data.endswith(b"\n"))
            self.assertEqual(block.eol, b"\r\n" if original.split(b"\n", 1)[0].endswith(b"\r")
                             and b"\n" in original else b"\n")
        for host in list(model):
            data = removeEntry(data, host)
        self.assertEqual(data, original)

    @settings(max_examples=150, deadline=None)
    @given(hostsFiles(), hostsFiles(), _operations)
    def test_blockInTheMiddle(self, before: bytes, after: bytes, operations: list[tuple[str, str, str]]) -> None:
        """
        With a block between two parts of a file, no operation changes a
        byte of either part; removing the last entry leaves them alone,
        joined.
        """
        if before and not before.endswith(b"\n"):
            before += b"\n"
        data = before + BEGIN + b"\n" + END + b"\n" + after
        self.assertEqual(listEntries(data), [])
        data, model = _apply(self, data, operations)
        if model:
            self.assertTrue(data.startswith(before + BEGIN))
            self.assertTrue(data.endswith(END + b"\n" + after))
            for host in list(model):
                data = removeEntry(data, host)
        self.assertIn(data, (before + BEGIN + b"\n" + END + b"\n" + after, before + after))


class WriteTests(SynchronousTestCase):
    """
    L{hostsfile.writeHostsFile} and L{hostsfile.updateHostsFile}: atomic,
    with a backup, mode and owner kept.
    """

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)
        self.path = self.dir / "hosts"
        self.path.write_bytes(HOSTS)
        os.chmod(self.path, 0o644)
        self.backup = self.dir / "hosts.beam-backup"

    def add(self, host: str = "alice.beam", address: str = "127.77.0.5") -> bool:
        return hostsfile.updateHostsFile(self.path, lambda data: addEntry(data, host, address))

    def test_backupAndMode(self) -> None:
        """
        The previous content is in C{PATH.beam-backup}; both files keep
        the original's mode; no temporary file stays behind.
        """
        os.chmod(self.path, 0o640)
        self.assertTrue(self.add())
        self.assertEqual(listEntries(self.path.read_bytes()), [HostsEntry("127.77.0.5", "alice.beam")])
        self.assertEqual(self.backup.read_bytes(), HOSTS)
        self.assertEqual(os.stat(self.path).st_mode & 0o7777, 0o640)
        self.assertEqual(os.stat(self.backup).st_mode & 0o7777, 0o640)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["hosts", "hosts.beam-backup"])

    def test_nothingToDo(self) -> None:
        """
        An add that changes nothing writes nothing (not even the backup).
        """
        self.add()
        self.backup.unlink()
        before = os.stat(self.path)
        self.assertFalse(self.add())
        self.assertFalse(self.backup.exists())
        self.assertEqual(os.stat(self.path).st_ino, before.st_ino)

    def test_owner(self) -> None:
        """
        As root, the new file and the backup belong to the original's
        owner and group.
        """
        if os.geteuid() != 0:
            raise self.skipTest("only root can give files away")
        os.chown(self.path, 4242, 4343)
        self.add()
        for p in (self.path, self.backup):
            st = os.stat(p)
            self.assertEqual((st.st_uid, st.st_gid), (4242, 4343))

    def test_symlink(self) -> None:
        """
        A hosts file that is a symbolic link: the file it points to is
        replaced, the link stays a link.
        """
        link = self.dir / "link"
        link.symlink_to("hosts")
        hostsfile.updateHostsFile(link, lambda data: addEntry(data, "alice.beam", "127.77.0.5"))
        self.assertTrue(link.is_symlink())
        self.assertEqual(len(listEntries(self.path.read_bytes())), 1)

    def test_missingFile(self) -> None:
        """
        A hosts file that does not exist is created (0644, no backup);
        listing it lists nothing.
        """
        path = self.dir / "new"
        self.assertEqual(listEntries(hostsfile.readHostsFile(path)), [])
        hostsfile.updateHostsFile(path, lambda data: addEntry(data, "alice.beam", "127.77.0.5"))
        self.assertEqual(os.stat(path).st_mode & 0o7777, 0o644)
        self.assertFalse((self.dir / "new.beam-backup").exists())

    def failIn(self, name: str, after: int) -> None:
        """
        Make C{os.NAME} of the module raise on its C{after}+1-th call;
        an C{os.write} call that fails first writes half of what it was
        given, as a crash mid-write would.
        """
        real = getattr(os, name)
        calls = [0]

        def broken(*args: Any) -> Any:
            calls[0] += 1
            if calls[0] > after:
                if name == "write":
                    fd, data = args
                    real(fd, bytes(data[:len(data) // 2]))
                raise OSError(errno.EIO, "injected failure")
            return real(*args)

        self.patch(hostsfile.os, name, broken)

    def test_crashMidWrite(self) -> None:
        """
        A failure in any step of a write (the backup's or the file's
        write, fsync, rename) leaves the hosts file with its old bytes,
        and no temporary file behind.
        """
        self.add()
        old = self.path.read_bytes()
        for name, after in [("write", 0), ("write", 1), ("fsync", 0), ("fsync", 1), ("replace", 0),
                            ("replace", 1), ("fchmod", 1)]:
            real = getattr(os, name)
            self.failIn(name, after)
            e = self.assertRaises(HostsFileError, self.add, "bob.beam", "127.77.0.6")
            self.assertIn("injected failure", str(e))
            self.assertEqual(self.path.read_bytes(), old, (name, after))
            self.assertIn(self.backup.read_bytes(), (old, HOSTS))
            self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["hosts", "hosts.beam-backup"])
            self.patch(hostsfile.os, name, real)
        self.assertTrue(self.add("bob.beam", "127.77.0.6"))

    def test_concurrentAdds(self) -> None:
        """
        Eight processes adding a name each at the same moment: every name
        is in the file afterwards (the directory lock serialises the
        read-change-write; without it one add could overwrite another).
        """
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"127.0.0.1\tlocalhost\n")
        script = (
            "import sys\n"
            "from beam.names.hostsfile import addEntry, updateHostsFile\n"
            "name = sys.argv[2]\n"
            "for i in range(5):\n"
            "    updateHostsFile(sys.argv[1], lambda d, i=i: addEntry(d, f'{name}{i}.beam', '127.77.0.1'))\n"
        )
        procs = [subprocess.Popen([sys.executable, "-c", script, str(path), f"n{k}x"]) for k in range(8)]
        for p in procs:
            self.assertEqual(p.wait(timeout=60), 0)
        hosts = {e.host for e in listEntries(path.read_bytes())}
        self.assertEqual(hosts, {f"n{k}x{i}.beam" for k in range(8) for i in range(5)})

    def test_permission(self) -> None:
        """
        Not allowed to write (no root for /etc/hosts): the error says to
        use sudo or --hosts-file, and names the file.
        """
        def denied(*args: Any, **kw: Any) -> Any:
            raise PermissionError(errno.EACCES, "Permission denied")

        self.patch(tempfile, "mkstemp", denied)
        e = self.assertRaises(HostsFilePermission, self.add)
        self.assertIn("sudo", str(e))
        self.assertIn("--hosts-file", str(e))
        self.assertIn(str(self.path), str(e))
        self.assertEqual(self.path.read_bytes(), HOSTS)

    def test_busy(self) -> None:
        """
        A hosts file that cannot be renamed over (a bind mount, as in a
        container) gets an error saying so.
        """
        def busy(*args: Any) -> Any:
            raise OSError(errno.EBUSY, "Device or resource busy")

        self.patch(hostsfile.os, "replace", busy)
        e = self.assertRaises(HostsFileError, self.add)
        self.assertIn("container", str(e))
        self.assertEqual(self.path.read_bytes(), HOSTS)

    def test_malformedWritesNothing(self) -> None:
        """
        A file with a damaged block is refused and not written.
        """
        self.path.write_bytes(HOSTS + BEGIN + b"\n")
        self.assertRaises(MalformedHostsFile, self.add)
        self.assertEqual(self.path.read_bytes(), HOSTS + BEGIN + b"\n")
        self.assertFalse(self.backup.exists())


_WRITER = """
import sys
import tempfile
from beam.names.hostsfile import writeHostsFile
path, a, b = sys.argv[1], open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
i = 0
while True:
    old, new = (a, b) if i % 2 == 0 else (b, a)
    writeHostsFile(path, old, new)
    print(i, flush=True)
    i += 1
"""


class KillTests(SynchronousTestCase):
    """
    A process killed (SIGKILL) while it writes leaves the hosts file and
    its backup each whole: the old content or the new.
    """

    def crashAt(self, path: Path, old: bytes, new: bytes, name: str, nth: int) -> bool:
        """
        In a forked child, run L{hostsfile.writeHostsFile} and SIGKILL
        the child at the C{nth} call of C{os.NAME} (an C{os.write} first
        writes half its bytes).

        @return: whether the child was killed (else the write finished
            before the C{nth} call).
        """
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            try:
                real = getattr(os, name)
                calls = [0]

                def hook(*args: Any) -> Any:
                    calls[0] += 1
                    if calls[0] == nth:
                        if name == "write":
                            real(args[0], bytes(args[1][:len(args[1]) // 2]))
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(*args)

                setattr(os, name, hook)
                hostsfile.writeHostsFile(path, old, new)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        return os.WIFSIGNALED(status)

    def test_crashAtEveryStep(self) -> None:
        """
        Killed before any call of C{os.write} (after half the bytes),
        C{os.fsync}, C{os.replace}, C{os.close} or C{os.fchmod} in a write:
        the hosts file is the old content or the new, whole, and the
        backup is the one before or the old content.
        """
        d = Path(self.mktemp())
        d.mkdir(parents=True)
        path = d / "hosts"
        old, new = HOSTS, addEntry(HOSTS, "alice.beam", "127.77.0.5")
        killed = 0
        for name in ["write", "fsync", "replace", "close", "fchmod"]:
            nth = 1
            while True:
                path.write_bytes(old)
                (d / "hosts.beam-backup").write_bytes(b"before")
                if not self.crashAt(path, old, new, name, nth):
                    break
                killed += 1
                self.assertIn(path.read_bytes(), (old, new), (name, nth))
                self.assertIn((d / "hosts.beam-backup").read_bytes(), (b"before", old), (name, nth))
                nth += 1
            self.assertEqual(path.read_bytes(), new)
        # Two files (backup, hosts): at least write, fsync (x3 with the
        # directory's), replace (x2), close and fchmod each, per file.
        self.assertGreaterEqual(killed, 14)

    def test_killMidWrite(self) -> None:
        """
        Kill a process rewriting a 2 MiB hosts file in a loop, after a
        varying number of writes; every time, both files hold one of the
        two contents, whole.
        """
        d = Path(self.mktemp())
        d.mkdir(parents=True)
        a = HOSTS + b"# a\n" * (512 * 1024)
        b = HOSTS + b"# b\n" * (512 * 1024)
        (d / "a").write_bytes(a)
        (d / "b").write_bytes(b)
        path = d / "hosts"
        path.write_bytes(a)
        for writes in [1, 2, 3, 4, 7]:
            proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(d / "a"), str(d / "b")],
                                    stdout=subprocess.PIPE, cwd=ROOT)
            assert proc.stdout is not None
            try:
                for _ in range(writes):
                    self.assertTrue(proc.stdout.readline(), "the writer stopped")
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                proc.stdout.close()
            self.assertIn(path.read_bytes(), (a, b))
            self.assertIn((d / "hosts.beam-backup").read_bytes(), (a, b))
            path.write_bytes(a)


class FakeControlClient:
    """
    The running node's control socket, answering C{POST /v1/dns/address}
    with an address per name (or the failure in C{error}).
    """

    requests: list[tuple[str, str, Any]] = []
    error: Exception | None = None

    def __init__(self, reactor: Any, home: Any) -> None:
        pass

    def request(self, method: str, path: str, body: Any = None) -> Deferred[dict[str, Any]]:
        FakeControlClient.requests.append((method, path, body))
        if FakeControlClient.error is not None:
            return fail(FakeControlClient.error)
        assert (method, path) == ("POST", "/v1/dns/address"), (method, path)
        host = (body["service"] + "." if "service" in body else "") + body["name"] + ".beam"
        return succeed({"host": host, "address": "127.77.0.9", "ports": [3000, 8080]})


class CommandTests(SynchronousTestCase):
    """
    C{beam hosts add|remove|list} on a temporary hosts file, with a fake
    running node.
    """

    def setUp(self) -> None:
        import beam.daemon.control as control
        from beam.daemon.control import client

        FakeControlClient.requests = []
        FakeControlClient.error = None
        # Both: the package's lazy export is cached once any test used it.
        self.patch(client, "ControlClient", FakeControlClient)
        self.patch(control, "ControlClient", FakeControlClient)
        d = Path(self.mktemp())
        d.mkdir(parents=True)
        self.path = d / "hosts"
        self.path.write_bytes(HOSTS)
        self.home = str(d / "home")

    def hosts(self, *argv: str, asJSON: bool = False) -> str:
        out = io.StringIO()
        args = parse("--home", self.home, "hosts", *argv, "--hosts-file", str(self.path))
        code = self.successResultOf(ensureDeferred(cli.cmdHosts(Clock(), args, cli._Out(out, asJSON))))
        self.assertEqual(code, 0)
        return out.getvalue()

    def runFails(self, *argv: str) -> BaseException:
        args = parse("--home", self.home, "hosts", *argv, "--hosts-file", str(self.path))
        d = ensureDeferred(cli.cmdHosts(Clock(), args, cli._Out(io.StringIO(), False)))
        return self.failureResultOf(d).value

    def test_addAsksTheNode(self) -> None:
        """
        Without C{--address}, C{add} asks the node's DNS service for the
        name's address and writes it; the text shows the URLs.
        """
        text = self.hosts("add", "Alice")
        self.assertEqual(FakeControlClient.requests, [("POST", "/v1/dns/address", {"name": "alice"})])
        self.assertEqual(listEntries(self.path.read_bytes()), [HostsEntry("127.77.0.9", "alice.beam")])
        self.assertIn(f"alice.beam -> 127.77.0.9 in {self.path}", text)
        self.assertIn("http://alice.beam:3000/", text)
        self.assertIn("(already there)", self.hosts("add", "alice"))

    def test_addService(self) -> None:
        """
        C{--service web} asks for the service and writes
        C{web.alice.beam}.
        """
        self.hosts("add", "alice", "--service", "web")
        self.assertEqual(FakeControlClient.requests[0][2], {"name": "alice", "service": "web"})
        self.assertEqual(listEntries(self.path.read_bytes()), [HostsEntry("127.77.0.9", "web.alice.beam")])

    def test_addAddress(self) -> None:
        """
        With C{--address}, no node is asked.
        """
        self.hosts("add", "web.alice", "--address", "::1")
        self.assertEqual(FakeControlClient.requests, [])
        self.assertEqual(listEntries(self.path.read_bytes()), [HostsEntry("::1", "web.alice.beam")])

    def test_jsonShapes(self) -> None:
        """
        C{--json}: C{add} and C{remove} print one event each, C{list} one
        object with the file's path and its entries.
        """
        added = json.loads(self.hosts("add", "alice", "--json", asJSON=True))
        self.assertEqual(added, {"event": "added", "host": "alice.beam", "address": "127.77.0.9",
                                 "path": str(self.path), "changed": True, "ports": [3000, 8080]})
        added = json.loads(self.hosts("add", "bob", "--address", "10.1.2.3", asJSON=True))
        self.assertEqual(added, {"event": "added", "host": "bob.beam", "address": "10.1.2.3",
                                 "path": str(self.path), "changed": True})
        listed = json.loads(self.hosts("list", asJSON=True))
        self.assertEqual(listed, {"path": str(self.path), "entries": [
            {"host": "alice.beam", "address": "127.77.0.9"}, {"host": "bob.beam", "address": "10.1.2.3"}]})
        removed = json.loads(self.hosts("remove", "alice", asJSON=True))
        self.assertEqual(removed, {"event": "removed", "host": "alice.beam", "path": str(self.path),
                                   "changed": True})
        removed = json.loads(self.hosts("remove", "alice", asJSON=True))
        self.assertFalse(removed["changed"])
        self.hosts("remove", "bob")
        self.assertEqual(self.path.read_bytes(), HOSTS)

    def test_listText(self) -> None:
        """
        C{list} as text: one C{ADDRESS<TAB>HOST} line per entry, or a
        sentence when there is none.
        """
        self.assertEqual(self.hosts("list"), f"no Beam entries in {self.path}\n")
        self.hosts("add", "alice", "--address", "10.1.2.3")
        self.assertEqual(self.hosts("list"), "10.1.2.3\talice.beam\n")

    def test_usage(self) -> None:
        """
        A missing NAME, a NAME for list, C{--address} for remove, a bad
        name: usage errors, the file untouched.
        """
        for argv in [("add",), ("remove",), ("list", "alice"), ("remove", "alice", "--address", "1.2.3.4")]:
            self.assertIsInstance(self.runFails(*argv), cli.UsageError)
        self.assertIsInstance(self.runFails("add", "al ice", "--address", "1.2.3.4"), InvalidName)
        self.assertEqual(self.path.read_bytes(), HOSTS)
        self.assertRaises(cli._UsageFailed, parse, "hosts", "add", "alice", "--address", "nope")

    def test_noNode(self) -> None:
        """
        Without C{--address} and with no node running, the node's error
        says to start one; a node without the DNS service (404) gets an
        error suggesting C{--address}.
        """
        from beam.daemon.control import ControlError, NoNodeRunning

        FakeControlClient.error = NoNodeRunning("no Beam node is running")
        self.assertIsInstance(self.runFails("add", "alice"), NoNodeRunning)
        FakeControlClient.error = ControlError("no such endpoint: /v1/dns/address", 404)
        e = self.runFails("add", "alice")
        self.assertIn("--address", str(e))
        self.assertEqual(self.path.read_bytes(), HOSTS)

    def test_defaultPath(self) -> None:
        """
        Without C{--hosts-file}, the file is /etc/hosts.
        """
        self.assertIsNone(parse("hosts", "list").hosts_file)
        self.assertEqual(hostsfile.DEFAULT_PATH, "/etc/hosts")


class MainTests(SynchronousTestCase):
    """
    C{beam hosts} through the real entry point, in a process of its own.
    """

    def test_roundTrip(self) -> None:
        """
        C{beam hosts add --address}, C{list --json} and C{remove} leave
        the file as it was; a damaged block is a one-line error, exit 1.
        """
        d = Path(self.mktemp())
        d.mkdir(parents=True)
        path = d / "hosts"
        path.write_bytes(HOSTS.replace(b"\n", b"\r\n"))

        def beam(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-c", "from beam.cli import main; main()", "hosts", *argv, "--hosts-file", str(path),
                                   "--home", str(d / "home")], capture_output=True, text=True, cwd=ROOT,
                                  timeout=60)

        r = beam("add", "alice", "--address", "127.77.0.5")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = beam("list", "--json")
        self.assertEqual(json.loads(r.stdout)["entries"], [{"host": "alice.beam", "address": "127.77.0.5"}])
        r = beam("remove", "alice")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(path.read_bytes(), HOSTS.replace(b"\n", b"\r\n"))
        path.write_bytes(HOSTS + BEGIN + b"\n")
        r = beam("add", "alice", "--address", "127.77.0.5")
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stderr.startswith("beam: the hosts file has a `# BEGIN beam` line"), r.stderr)
        self.assertEqual(r.stderr.count("\n"), 1)
