"""
Tests for L{beam.storage.home} and L{beam.storage.fileutil}: the identity file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

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
