"""
Tests for the share line and C{--qr} (issue 12): L{beam.console.share},
L{beam.console.qr} and C{beam PORT} run for real, piped and in a
pseudo-terminal, on loopback.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
from typing import Any

import segno
from twisted.trial.unittest import SynchronousTestCase

from beam.console.qr import QUIET_ZONE, qrMatrix, renderQR
from beam.console.share import connectFlags, shareLines
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.test.test_e2e_tunnel import BIN, LOOPBACK, Child, E2EMixin, echo
from beam.tunnel.share import ShareAddress, parseShareAddress

ONION = "vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BLOCKS = set("\u2580\u2584\u2588")


def _share(*addrs: str, service: str = "3000", secret: bytes | None = None) -> str:
    peer = Identity.generate().peerID
    return str(ShareAddress(peer=peer, addrs=tuple(Multiaddr.fromString(a) for a in addrs),
                            service=service, secret=secret))


def _tunnel(share: str, kind: str = "tcp", compress: bool = False, name: str = "3000") -> dict[str, Any]:
    return {"share": share, "kind": kind, "compress": compress, "name": name, "private": "#" in share,
            "target": "127.0.0.1:3000"}


def _parseBeam(line: str) -> Any:
    """
    What C{beam} makes of a pasted command line: split as a POSIX shell
    does, then parsed by the CLI's own parser.
    """
    from beam.cli import _parseArgs, _parser, _rewritePortShortcut

    argv = shlex.split(line)
    assert argv[0] == "beam", argv
    return _parseArgs(_parser(), _rewritePortShortcut(argv[1:]))


def readQR(text: str) -> list[list[bool]]:
    """
    The module matrix (C{True} = dark) of a QR code drawn by
    L{renderQR}, read back from its characters (ANSI codes ignored):
    the inverse of the drawing, to compare with segno's own encoding.
    """
    rows: list[list[bool]] = []
    for line in _ANSI.sub("", text).splitlines():
        if not line or not set(line) <= _BLOCKS | {" "}:
            continue
        top = [c in " \u2584" for c in line]
        bottom = [c in " \u2580" for c in line]
        rows += [top, bottom]
    return rows


def segnoMatrix(text: str) -> list[list[bool]]:
    """
    segno's own encoding of C{text} (a full QR code), with the standard
    quiet zone, as rows of booleans.
    """
    symbol = segno.make(text, micro=False, error="m")
    return [[bool(m) for m in row] for row in symbol.matrix_iter(border=QUIET_ZONE)]


class ShareLineTests(SynchronousTestCase):
    """
    L{shareLines}: the command for the other side carries every flag it
    needs and survives being pasted into a shell.
    """

    def test_plain(self) -> None:
        """
        A TCP tunnel without compression needs no flag: C{beam connect
        ADDRESS}, unquoted (nothing in it is special to a shell).
        """
        share = _share("/ip4/192.0.2.1/tcp/4001")
        lines = shareLines(_tunnel(share))
        self.assertEqual(lines.command, f"beam connect {share}")
        self.assertIsNone(lines.byName)
        self.assertIn(f"    beam connect {share}\n", lines.text)

    def test_flags(self) -> None:
        """
        C{--udp} for a UDP tunnel (the host refuses another kind),
        C{--compress} for one that allows compression (only the client
        offers it), both for both; the parser reads them back.
        """
        share = _share("/ip4/192.0.2.1/tcp/4001")
        for kind, compress, flags in [("udp", False, ["--udp"]), ("tcp", True, ["--compress"]),
                                      ("udp", True, ["--udp", "--compress"])]:
            line = shareLines(_tunnel(share, kind, compress)).command
            self.assertEqual(shlex.split(line)[3:], flags)
            args = _parseBeam(line)
            self.assertEqual((args.command, args.target, args.udp, args.compress),
                             ("connect", share, kind == "udp", compress))

    def test_torOnly(self) -> None:
        """
        A host whose every address is an onion service (Tor C{always}) is
        reached only by a node with Tor: C{--tor}; with an IP address
        beside the onion (C{fallback}), no C{--tor}.
        """
        onion = _share(f"/onion3/{ONION}:4001")
        self.assertEqual(connectFlags(_tunnel(onion)), ["--tor"])
        self.assertTrue(_parseBeam(shareLines(_tunnel(onion)).command).tor)
        mixed = _share("/ip4/192.0.2.1/tcp/4001", f"/onion3/{ONION}:4001")
        self.assertEqual(connectFlags(_tunnel(mixed)), [])

    def test_secretStaysInTheFragment(self) -> None:
        """
        A secret tunnel's command carries the secret only in the share
        address's fragment (no flag), quoted so that zsh's extendedglob
        never reads C{#}; the address parses back with the secret; it is
        never shared by name.
        """
        share = _share("/ip4/192.0.2.1/tcp/4001", secret=b"s" * 16)
        lines = shareLines(_tunnel(share), {"name": "alice", "stored_on": 3})
        self.assertIsNone(lines.byName)
        self.assertEqual(lines.command, f"beam connect '{share}'")
        args = _parseBeam(lines.command)
        self.assertEqual(parseShareAddress(args.target).secret, b"s" * 16)
        self.assertNotIn("--secret", lines.command)

    def test_byName(self) -> None:
        """
        A name stored on other peers gives C{beam connect NAME} with the
        same flags; with several tunnels the service too (a name alone
        reaches the first); the share address form stays as a fallback.
        A name stored nowhere else is not offered.
        """
        share = _share("/ip4/192.0.2.1/tcp/4001", service="web")
        registered = {"name": "alice", "stored_on": 2}
        one = shareLines(_tunnel(share, "udp", True, "web"), registered, 1)
        self.assertEqual(one.command, "beam connect alice --udp --compress")
        self.assertIn(f"(or, without the DHT: beam connect {share} --udp --compress)", one.text)
        two = shareLines(_tunnel(share, name="web"), registered, 2)
        self.assertEqual(two.command, "beam connect alice/web")
        self.assertEqual(_parseBeam(two.command).target, "alice/web")
        alone = shareLines(_tunnel(share), {"name": "alice", "stored_on": 0})
        self.assertIsNone(alone.byName)

    def test_pasteIntoShells(self) -> None:
        """
        Pasted into bash and zsh (with extendedglob, where C{#} is a glob
        operator and brackets are a character class that aborts the
        command when nothing matches), an IPv6 address with a secret
        reaches the program byte for byte.
        """
        share = _share("/ip6/::1/tcp/4001", "/ip4/192.0.2.1/tcp/4001", secret=b"k" * 16)
        self.assertIn("[::1]", share)
        line = shareLines(_tunnel(share, "udp")).command
        argvLine = line.replace("beam connect", "printf '%s\\n'", 1)
        shells = [["bash", "-c", argvLine]]
        if shutil.which("zsh"):
            shells.append(["zsh", "-f", "-c", "setopt extendedglob; " + argvLine])
        for argv in shells:
            out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd="/")
            self.assertEqual(out.stdout.splitlines(), [share, "--udp"], argv)


class QRTests(SynchronousTestCase):
    """
    L{renderQR}: the drawing reads back as segno's own encoding.
    """

    def test_matchesSegno(self) -> None:
        """
        Share addresses of several lengths (with a secret, IPv6, relay)
        drawn plain and in colour read back as exactly the matrix segno
        encodes for the same text, quiet zone included, so a scanner reads
        the address itself.
        """
        peer = Identity.generate().peerID
        texts = [
            _share("/ip4/127.0.0.1/tcp/4001"),
            _share("/ip4/192.0.2.1/tcp/4001", "/ip6/2001:db8::1/tcp/4001", secret=b"x" * 16),
            _share(f"/ip4/198.51.100.7/tcp/4001/p2p/{peer}/p2p-circuit", f"/onion3/{ONION}:4001"),
        ]
        for text in texts:
            expected = segnoMatrix(text)
            self.assertEqual(qrMatrix(text), expected)
            for colour in (False, True):
                drawn = readQR(renderQR(text, colour))
                # An odd row count is drawn with one more light row.
                if len(drawn) == len(expected) + 1:
                    self.assertFalse(any(drawn[-1]))
                    drawn = drawn[:-1]
                self.assertEqual(drawn, expected, (text, colour))

    def test_fullQRNeverMicro(self) -> None:
        """
        Even a short text is a full QR code (version >= 1, 21+ modules),
        never a Micro QR code, which phone cameras do not read; segno
        alone would make a Micro one.
        """
        self.assertTrue(segno.make("beam://a").is_micro)
        matrix = qrMatrix("beam://a")
        self.assertEqual(len(matrix), 21 + 2 * QUIET_ZONE)

    def test_colour(self) -> None:
        """
        In colour every line is painted bright white on black and reset;
        plain, there is no escape sequence at all.
        """
        text = _share("/ip4/127.0.0.1/tcp/4001")
        for line in renderQR(text, True).splitlines():
            self.assertTrue(line.startswith("\x1b[97;40m") and line.endswith("\x1b[0m"), line)
        self.assertNotIn("\x1b", renderQR(text, False))

    def test_printTunnel(self) -> None:
        """
        The CLI's share output has a QR code only with C{qr}; with
        C{--json} the code goes to stderr and stdout stays one JSON line.
        """
        from beam import cli

        share = _share("/ip4/127.0.0.1/tcp/4001")
        plain = io.StringIO()
        cli._printTunnel(cli._Out(plain, False), _tunnel(share), "peer", [])
        self.assertFalse(_BLOCKS & set(plain.getvalue()))
        withQR = io.StringIO()
        cli._printTunnel(cli._Out(withQR, False), _tunnel(share), "peer", [], qr=True)
        self.assertEqual(readQR(withQR.getvalue())[:len(segnoMatrix(share))], segnoMatrix(share))
        self.assertTrue(withQR.getvalue().rstrip().endswith("Press Ctrl-C to stop."))
        asJSON, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", err)
        cli._printTunnel(cli._Out(asJSON, True), _tunnel(share), "peer", [], qr=True)
        self.assertEqual(json.loads(asJSON.getvalue())["connect"], f"beam connect {share}")
        self.assertTrue(_BLOCKS & set(err.getvalue()))


class ExposeTests(E2EMixin, SynchronousTestCase):
    """
    The real C{beam PORT}: its printed command, run as printed, works.
    """

    def runPrinted(self, command: str, home: str) -> tuple[Child, int]:
        """
        Run the printed C{beam connect ...} exactly (plus this test's
        home, loopback listening and JSON); the forward's local port.
        """
        argv = shlex.split(command)
        self.assertEqual(argv[:2], ["beam", "connect"])
        child = Child(self, [str(BIN / "beam"), *argv[1:], "--home", home, "--json", "--listen", LOOPBACK],
                      "client")
        ready = child.readJSON()
        self.assertEqual(ready["event"], "ready")
        return child, int(ready["listen"].rsplit(":", 1)[1])

    def test_compressedTCP(self) -> None:
        """
        C{beam PORT --compress}: the printed command has C{--compress},
        and run as printed it reaches the service through a compressed
        tunnel (the host's status says the tunnel compresses).
        """
        _svc, svcPort = self.service()
        _host, ready, hostHome = self.expose(svcPort, "--compress", "--no-register")
        self.assertEqual(ready["connect"], f"beam connect {ready['share']} --compress")
        _client, local = self.runPrinted(ready["connect"], self.newHome())
        self.assertEqual(echo(local, b"squeeze " * 1000), b"squeeze " * 1000)
        self.assertTrue(self.status(hostHome)["tunnels"][0]["compress"])

    def test_udp(self) -> None:
        """
        C{beam PORT --udp}: the printed command has C{--udp}, and run as
        printed a datagram comes back through it.
        """
        _svc, svcPort = self.service("udp")
        _host, ready, _ = self.expose(svcPort, "--udp", "--no-register")
        self.assertEqual(shlex.split(ready["connect"])[3:], ["--udp"])
        _client, local = self.runPrinted(ready["connect"], self.newHome())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1)
            for _ in range(20):
                s.sendto(b"hello udp", ("127.0.0.1", local))
                try:
                    self.assertEqual(s.recvfrom(100)[0], b"hello udp")
                    break
                except socket.timeout:
                    continue
            else:
                self.fail("no datagram came back")

    def startText(self, *flags: str) -> tuple[Child, str]:
        """
        C{beam PORT} with text output, piped; its output up to the
        C{Press Ctrl-C} line.
        """
        _svc, svcPort = self.service()
        child = Child(self, [str(BIN / "beam"), "--home", self.newHome(), str(svcPort), "--no-register",
                             "--listen", LOOPBACK, *flags], "host")
        lines: list[str] = []
        while not lines or "Press Ctrl-C" not in lines[-1]:
            lines.append(child.readLine(timeout=60))
        return child, "\n".join(line.rstrip("\n") for line in lines)

    def test_pipedText(self) -> None:
        """
        Piped, the text output is plain: the command line, no QR code and
        no escape sequence; with C{--qr} the QR code (still without
        escapes) reads back as segno's encoding of the printed address.
        """
        _child, text = self.startText()
        self.assertIn("On the other side run:", text)
        self.assertFalse(_BLOCKS & set(text))
        self.assertNotIn("\x1b", text)
        _child, text = self.startText("--qr")
        self.assertNotIn("\x1b", text)
        command = next(line.strip() for line in text.splitlines() if line.strip().startswith("beam connect"))
        share = shlex.split(command)[2]
        expected = segnoMatrix(share)
        self.assertEqual(readQR(text)[:len(expected)], expected)

    def test_terminal(self) -> None:
        """
        In a pseudo-terminal C{beam PORT --qr} paints the QR code (white
        on black) and it reads back as the printed address.
        """
        import pexpect  # type: ignore[import-untyped]

        _svc, svcPort = self.service()
        child = pexpect.spawn(str(BIN / "beam"), ["--home", self.newHome(), str(svcPort), "--no-register",
                                                  "--listen", LOOPBACK, "--qr"],
                              encoding="utf-8", timeout=60, dimensions=(60, 200))
        self.addCleanup(child.terminate, True)
        child.expect("Press Ctrl-C")
        text = child.before.replace("\r\n", "\n")
        self.assertIn("\x1b[97;40m", text)
        command = next(line.strip() for line in _ANSI.sub("", text).splitlines()
                       if line.strip().startswith("beam connect"))
        expected = segnoMatrix(shlex.split(command)[2])
        self.assertEqual(readQR(text)[:len(expected)], expected)
