"""
Tests for L{beam.storage.home} and L{beam.storage.fileutil}: the identity file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from beam.storage.fileutil import atomicWrite
from beam.storage.home import HomeError, loadOrCreateIdentity, resolveHome


class HomeTests(SynchronousTestCase):
    """
    Creating, reloading and protecting the node identity.
    """

    def test_createdOnceWithMode600(self) -> None:
        """
        The first start creates the key with mode 0600 in a 0700 directory;
        the second start loads the same identity.
        """
        home = Path(self.mktemp())
        first = loadOrCreateIdentity(home)
        path = home / "identity.key"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(home.stat().st_mode), 0o700)
        self.assertEqual(loadOrCreateIdentity(home).peerID, first.peerID)

    def test_refusesGroupReadableKey(self) -> None:
        """
        A key file others can read is refused with advice to chmod it.
        """
        home = Path(self.mktemp())
        loadOrCreateIdentity(home)
        os.chmod(home / "identity.key", 0o644)
        e = self.assertRaises(HomeError, loadOrCreateIdentity, home)
        self.assertIn("chmod 600", str(e))

    def test_corruptKey(self) -> None:
        """
        A corrupt key file is a clear L{HomeError}, not a traceback.
        """
        home = Path(self.mktemp())
        home.mkdir(mode=0o700)
        atomicWrite(home / "identity.key", b"\x08\x05garbage")
        self.assertRaises(HomeError, loadOrCreateIdentity, home)

    def test_atomicWriteLeavesNoTemporary(self) -> None:
        """
        L{atomicWrite} replaces the file and leaves no temporary behind.
        """
        d = Path(self.mktemp())
        d.mkdir()
        atomicWrite(d / "f", b"one")
        atomicWrite(d / "f", b"two", 0o644)
        self.assertEqual((d / "f").read_bytes(), b"two")
        self.assertEqual(sorted(p.name for p in d.iterdir()), ["f"])
        self.assertEqual(stat.S_IMODE((d / "f").stat().st_mode), 0o644)

    def test_resolveOrder(self) -> None:
        """
        An explicit home wins over $BEAM_HOME, which wins over XDG.
        """
        old = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(old)))
        os.environ["BEAM_HOME"] = "/tmp/a"
        os.environ["XDG_DATA_HOME"] = "/tmp/x"
        self.assertEqual(resolveHome("/tmp/b"), Path("/tmp/b"))
        self.assertEqual(resolveHome(), Path("/tmp/a"))
        del os.environ["BEAM_HOME"]
        self.assertEqual(resolveHome(), Path("/tmp/x/beam"))


_OTHER_UID = 65534
"""
A user other than the one running the tests (C{nobody}), for files that
root can hand to someone else.
"""


class HomeOwnershipTests(SynchronousTestCase):
    """
    A home directory or key that another user owns or can change is
    refused with a message saying how to fix it, and Beam never changes the
    mode of a directory it did not create.
    """

    def asRoot(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("giving a file to another user needs root")

    def test_newHomeAndParentsCreated0700(self) -> None:
        """
        A home that does not exist is created, with its parents, mode 0700.
        """
        home = Path(self.mktemp()) / "a" / "beam"
        loadOrCreateIdentity(home)
        self.assertEqual(stat.S_IMODE(home.stat().st_mode), 0o700)

    def test_existingHomeModeKept(self) -> None:
        """
        An existing home of ours that others may read but not write is used
        as it is: its mode is not changed.
        """
        home = Path(self.mktemp())
        home.mkdir()
        os.chmod(home, 0o755)
        loadOrCreateIdentity(home)
        self.assertEqual(stat.S_IMODE(home.stat().st_mode), 0o755)

    def test_writableByOthersRefused(self) -> None:
        """
        A home that group or others can write to (a shared directory) is
        refused, not chmodded, and no key is written into it.
        """
        for mode in (0o777, 0o1777, 0o770):
            home = Path(self.mktemp())
            home.mkdir()
            os.chmod(home, mode)
            e = self.assertRaises(HomeError, loadOrCreateIdentity, home)
            self.assertIn(f"is writable by other users (mode {mode:o}); run: chmod go-w {home}", str(e))
            self.assertEqual(stat.S_IMODE(home.stat().st_mode), mode)
            self.assertEqual(list(home.iterdir()), [])

    def test_notADirectoryRefused(self) -> None:
        """
        A home that is a file is refused clearly.
        """
        home = Path(self.mktemp())
        home.write_bytes(b"")
        e = self.assertRaises(HomeError, loadOrCreateIdentity, home)
        self.assertIn("is not a directory", str(e))

    def test_homeOfAnotherUserRefused(self) -> None:
        """
        A home that another user owns is refused, even with mode 0700, and
        the message names both users and the fix.
        """
        self.asRoot()
        home = Path(self.mktemp())
        home.mkdir(mode=0o700)
        os.chown(home, _OTHER_UID, _OTHER_UID)
        e = self.assertRaises(HomeError, loadOrCreateIdentity, home)
        self.assertIn(f"belongs to user id {_OTHER_UID}, not to you (user id 0)", str(e))
        self.assertIn("--home", str(e))
        self.assertEqual(list(home.iterdir()), [])

    def test_plantedKeyRefused(self) -> None:
        """
        A key file another user owns is refused, even with mode 0600.
        """
        self.asRoot()
        home = Path(self.mktemp())
        loadOrCreateIdentity(home)
        os.chown(home / "identity.key", _OTHER_UID, _OTHER_UID)
        e = self.assertRaises(HomeError, loadOrCreateIdentity, home)
        self.assertIn("identity key", str(e))
        self.assertIn(f"belongs to user id {_OTHER_UID}", str(e))

    def test_groupWritableKeyRefused(self) -> None:
        """
        A key file group members can write (but not read) is refused.
        """
        home = Path(self.mktemp())
        loadOrCreateIdentity(home)
        os.chmod(home / "identity.key", 0o620)
        e = self.assertRaises(HomeError, loadOrCreateIdentity, home)
        self.assertIn("chmod 600", str(e))

    def test_keyNotARegularFile(self) -> None:
        """
        A directory in place of the key is a clear L{HomeError}.
        """
        home = Path(self.mktemp())
        (home / "identity.key").mkdir(parents=True)
        os.chmod(home, 0o700)
        e = self.assertRaises(HomeError, loadOrCreateIdentity, home)
        self.assertIn(f"cannot read {home / 'identity.key'}", str(e))

    def test_controlSocketRefusesSharedHome(self) -> None:
        """
        The control socket, which also creates the home, refuses a shared
        one with L{ControlSocketError} and leaves its mode alone.
        """
        from twisted.internet.testing import MemoryReactor
        from twisted.web.resource import Resource

        from beam.daemon.control.socket import ControlService, ControlSocketError

        home = Path(self.mktemp())
        home.mkdir()
        os.chmod(home, 0o777)
        service = ControlService(MemoryReactor(), home, Resource())
        self.failureResultOf(service.startService(), ControlSocketError)
        self.assertEqual(stat.S_IMODE(home.stat().st_mode), 0o777)
        self.assertIn("writable by other users", str(service.startFailure()))

    def test_controlSocketCreatesHome0700(self) -> None:
        """
        The control socket creates a missing home with mode 0700.
        """
        from beam.daemon.control.socket import ControlService

        home = Path(self.mktemp()) / "h"
        service = ControlService(None, home, None)  # type: ignore[arg-type]
        service._prepare()
        self.assertEqual(stat.S_IMODE(home.stat().st_mode), 0o700)
