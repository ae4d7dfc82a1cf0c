"""
Tests for C{beam completion SHELL} and C{beam manpage} (issue 12): the
scripts and the manual page are generated from the CLI's parser, are
valid for their shell or for man, and real completion queries answer
the right words.  zsh, fish and man are installed through
L{beam.testing.sysdeps} when missing (they never skip).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from beam.cli import _parser
from beam.console.completion import completionScript, describeParser
from beam.console.manpage import manPage
from beam.test.test_e2e_tunnel import BIN
from beam.testing.sysdeps import ensureCommands


def beam(*args: str) -> subprocess.CompletedProcess[str]:
    """
    Run the real C{beam} CLI, piped.
    """
    return subprocess.run([str(BIN / "beam"), *args], capture_output=True, text=True, timeout=60, check=False)


def parserFlags() -> dict[str, set[str]]:
    """
    Every command's option strings, read from argparse directly (not
    through L{describeParser}), to hold the generated scripts against.
    """
    parser = _parser()
    flags = {"": {f for a in parser._actions for f in a.option_strings}}
    for name, sub in parser.commands.items():
        flags[name] = {f for a in sub._actions for f in a.option_strings if a.help != argparse.SUPPRESS}
    return flags


class ScriptTests(SynchronousTestCase):
    """
    The three scripts, from the real CLI.
    """

    def setUp(self) -> None:
        ensureCommands({"zsh": "zsh", "fish": "fish"})
        self.tmp = Path(tempfile.mkdtemp(prefix="beam-completion-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.scripts = {}
        for shell in ("bash", "zsh", "fish"):
            out = beam("completion", shell)
            self.assertEqual((out.returncode, out.stderr), (0, ""))
            self.assertEqual(out.stdout, completionScript(_parser(), shell))
            path = self.tmp / f"beam.{shell}"
            path.write_text(out.stdout)
            self.scripts[shell] = path

    def test_syntax(self) -> None:
        """
        C{bash -n}, C{zsh -n} and C{fish -n} accept their scripts.
        """
        for shell in ("bash", "zsh", "fish"):
            out = subprocess.run([shell, "-n", str(self.scripts[shell])], capture_output=True, text=True)
            self.assertEqual((out.returncode, out.stderr), (0, ""), shell)

    def test_everything(self) -> None:
        """
        Every command and every option of every command (as argparse has
        them) is in each script.
        """
        for shell, path in self.scripts.items():
            text = path.read_text()
            for command, flags in parserFlags().items():
                if command:
                    self.assertIn(command, text, (shell, command))
                for flag in flags:
                    # fish spells them `-l name` / `-s q`.
                    needle = flag if shell != "fish" else (
                        f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}")
                    self.assertIn(needle, text, (shell, command, flag))

    def bash(self, *words: str) -> list[str]:
        """
        What the bash completion function answers for C{words} (the last
        one being completed), as bash calls it.
        """
        script = (
            f"source {self.scripts['bash']}\n"
            'COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMPREPLY=()\n'
            "_beam; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
        )
        out = subprocess.run(["bash", "--norc", "-c", script, "bash", *words], capture_output=True, text=True,
                             check=True, cwd=self.tmp)
        return sorted(line for line in out.stdout.splitlines() if line)

    def test_bashQueries(self) -> None:
        """
        Real queries: commands, a command's options, choices of options
        and positionals (before and after the command, C{--opt=value},
        C{beam PORT}), and option values never taken for the command.
        """
        self.assertEqual(self.bash("beam", "co"), ["completion", "config", "connect"])
        self.assertEqual(self.bash("beam", "connect", "--t"), ["--tor", "--tor-control"])
        self.assertEqual(self.bash("beam", "3000", "--tor", ""), ["always", "fallback", "off"])
        self.assertEqual(self.bash("beam", "expose", "3000", "--tor", "f"), ["fallback"])
        self.assertEqual(self.bash("beam", "--log-format", ""), ["json", "text"])
        self.assertEqual(self.bash("beam", "status", "--log-format", "=", "j"), ["json"])
        self.assertEqual(self.bash("beam", "network", ""), ["bootstrap", "peers", "routes", "status"])
        self.assertEqual(self.bash("beam", "completion", ""), ["bash", "fish", "zsh"])
        self.assertEqual(self.bash("beam", "--home", "net", "st"), ["status", "stop"])
        self.assertIn("--qr", self.bash("beam", "3000", "--"))
        self.assertNotIn("--qr", self.bash("beam", "connect", "x", "--"))
        (self.tmp / "hosts.txt").write_text("")
        self.assertEqual(self.bash("beam", "hosts", "list", "--hosts-file", "host"), ["hosts.txt"])
        self.assertEqual(self.bash("beam", "--home", "beam."), [])  # --home: directories only

    def fish(self, line: str) -> list[str]:
        """
        C{complete -C LINE} in fish with the script loaded: the words.
        """
        out = subprocess.run(["fish", "--no-config", "-c", f"source {self.scripts['fish']}; complete -C {line!r}"],
                             capture_output=True, text=True, check=True, cwd=self.tmp)
        return sorted(line.split("\t")[0] for line in out.stdout.splitlines())

    def test_fishQueries(self) -> None:
        """
        The same questions in fish, with C{complete -C}.
        """
        self.assertEqual(self.fish("beam co"), ["completion", "config", "connect"])
        self.assertEqual(self.fish("beam connect --t"), ["--tor", "--tor-control"])
        self.assertEqual(self.fish("beam 3000 --tor "), ["always", "fallback", "off"])
        self.assertEqual(self.fish("beam network "), ["bootstrap", "peers", "routes", "status"])
        self.assertEqual(self.fish("beam --home /tmp st"), ["status", "stop"])

    def test_zshLoads(self) -> None:
        """
        zsh's completion system loads the script (after compinit) and
        binds it to beam, without an error.
        """
        script = (f"autoload -U compinit; compinit -u -D; source {self.scripts['zsh']}; "
                  "print -r -- $_comps[beam]")
        out = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True,
                             env={**os.environ, "HOME": str(self.tmp)})
        self.assertEqual((out.returncode, out.stdout.strip(), out.stderr), (0, "_beam", ""))

    def test_unknownShell(self) -> None:
        """
        An unknown shell is a usage error (exit 2) naming the choices.
        """
        out = beam("completion", "tcsh")
        self.assertEqual(out.returncode, 2)
        self.assertIn("bash", out.stderr)

    def test_terminal(self) -> None:
        """
        In a pseudo-terminal C{beam completion bash} prints the same
        script, without any escape sequence.
        """
        import pexpect  # type: ignore[import-untyped]

        text = pexpect.run(f"{BIN / 'beam'} completion bash", encoding="utf-8", timeout=60)
        self.assertEqual(text.replace("\r\n", "\n"), self.scripts["bash"].read_text())


class ManPageTests(SynchronousTestCase):
    """
    C{beam manpage}.
    """

    def test_renders(self) -> None:
        """
        man renders the page with no warning (groff's C{-ww}), and the
        text has every section and every command with its options.
        """
        ensureCommands({"man": "man-db", "groff": "groff"})
        page = beam("manpage")
        self.assertEqual((page.returncode, page.stderr), (0, ""))
        self.assertEqual(page.stdout, manPage(_parser(), __import__("beam").__version__))
        lint = subprocess.run(["groff", "-man", "-ww", "-z"], input=page.stdout, capture_output=True, text=True)
        self.assertEqual((lint.returncode, lint.stderr), (0, ""))
        rendered = subprocess.run(["man", "--warnings", "-l", "-"], input=page.stdout, capture_output=True,
                                  text=True, env={**os.environ, "MANWIDTH": "100", "MANPAGER": "cat",
                                                  "PAGER": "cat", "LC_ALL": "C.UTF-8"})
        self.assertEqual((rendered.returncode, rendered.stderr), (0, ""))
        text = rendered.stdout
        for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXAMPLES", "FILES",
                        "ENVIRONMENT", "EXIT STATUS"):
            self.assertRegex(text, rf"(?m)^{section}$")
        _top, commands = describeParser(_parser())
        flags = parserFlags()
        for command in commands:
            self.assertIn(f"beam {command.name}\n", text)
            for flag in flags[command.name]:
                self.assertIn(flag, text, (command.name, flag))
        for name in ("config.toml", "BEAM_HOME", "NO_COLOR", "beam 3000"):
            self.assertIn(name, text)
