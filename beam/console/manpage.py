"""
The manual page, beam(1), generated from the CLI's argument parser
(C{beam manpage}, issue 12), so the manual lists exactly the commands,
options and choices the program accepts.

It reads the parser through L{beam.console.completion.describeParser},
the same walk the shell completions use, and writes man(7) roff: NAME,
SYNOPSIS, DESCRIPTION, OPTIONS (the global ones), COMMANDS (each with its
usage, help and options), EXAMPLES (the parser's epilog), FILES,
ENVIRONMENT, EXIT STATUS.  The output is deterministic (no date), so a
copy kept in the source tree can be checked against it.
"""

from __future__ import annotations

import argparse
import re
from typing import Sequence

from beam.console.completion import Command, Option, describeParser

__all__ = ["manPage", "EXIT_STATUS", "FILES", "ENVIRONMENT"]

#: (path, what it is), C{HOME} being the node's home directory.
FILES: list[tuple[str, str]] = [
    ("~/.local/share/beam", "The default home directory: $BEAM_HOME if set, else $XDG_DATA_HOME/beam, "
                            "else ~/.local/share/beam; --home overrides all three. Created with mode 0700."),
    ("HOME/config.toml", "The configuration file (beam config check validates it); optional, defaults apply "
                         "without it."),
    ("HOME/identity.key", "The node's ed25519 key, which is its peer ID (mode 0600)."),
    ("HOME/state.json", "What the node remembers between runs, such as its name."),
    ("HOME/control.sock", "The control socket of the running node, which beam status, beam stop and the "
                          "other commands ask (HTTP and JSON, owner only)."),
    ("HOME/logs/beam.log", "The node's log file (rotated, size-capped)."),
]

#: (variable, meaning).
ENVIRONMENT: list[tuple[str, str]] = [
    ("BEAM_HOME", "The home directory, unless --home is given."),
    ("XDG_DATA_HOME", "Where the default home directory lives (XDG_DATA_HOME/beam) when BEAM_HOME is unset."),
    ("NO_COLOR", "When set (to anything), no colour, even on a terminal (https://no-color.org)."),
    ("TERM", "dumb: no colour."),
]

#: (status, meaning).
EXIT_STATUS: list[tuple[str, str]] = [
    ("0", "Success."),
    ("1", "An error, reported on stderr as beam: MESSAGE (or, with --json, as an error object on stdout)."),
    ("2", "The command line is not valid."),
]


def _escape(text: str) -> str:
    """
    Text for a roff line: backslashes kept, no line read as a request.
    """
    text = text.replace("\\", "\\e")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _literal(text: str) -> str:
    """
    Command-line text: hyphens as minus signs (so that they can be copied
    and searched for as typed).
    """
    return _escape(text).replace("-", "\\-")


def _optionLines(option: Option) -> list[str]:
    flags = ", ".join(f"\\fB{_literal(f)}\\fR" for f in option.flags)
    if option.value:
        value = f"\\fI{_literal(option.metavar)}\\fR"
        if option.choices:
            value = "{" + ",".join(_literal(c) for c in option.choices) + "}"
        flags += f" [{value}]" if option.value == "optional" else f" {value}"
    help = option.help
    if option.repeatable and "repeatable" not in help:
        help += " (repeatable)"
    return [".TP", flags, _escape(help)]


def _isGlobal(option: Option, top: Command) -> bool:
    return any(option.flags == g.flags and option.help == g.help for g in top.options)


def _examples(epilog: str) -> list[str]:
    """
    The epilog's examples as tagged paragraphs, command first.  Both forms
    argparse epilogs take here are understood: lines of C{COMMAND
    <two or more spaces> WHAT} (under an C{examples:} heading, which the
    section title replaces), and C{WHAT: COMMAND} items separated by wide
    gaps; anything else is kept as a paragraph.
    """
    lines = []
    for line in epilog.splitlines():
        line = line.strip()
        if not line or line.lower() == "examples:":
            continue
        first, *rest = re.split(r"\s{2,}", line, maxsplit=1)
        if first.startswith("beam") and rest:
            lines += [".TP", f"\\fB{_literal(first)}\\fR", _escape(rest[0])]
            continue
        for item in re.split(r"\s{3,}", line):
            what, sep, command = item.partition(": ")
            if sep and command.startswith("beam"):
                lines += [".TP", f"\\fB{_literal(command)}\\fR", _escape(what[:1].upper() + what[1:] + ".")]
            else:
                lines += [".PP", _escape(item)]
    return lines


def manPage(parser: argparse.ArgumentParser, version: str,
            exitStatus: Sequence[tuple[str, str]] = EXIT_STATUS) -> str:
    """
    beam(1) in roff, for C{version}.
    """
    top, commands = describeParser(parser)
    out = [
        f'.TH BEAM 1 "" "beam {_escape(version)}" "User Commands"',
        ".SH NAME",
        "beam \\- " + _escape(top.description.rstrip(".")[:1].lower() + top.description.rstrip(".")[1:]),
        ".SH SYNOPSIS",
        ".B beam",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGUMENTS\\fR]",
        ".br",
        ".B beam",
        "\\fIPORT\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _escape(top.description),
        "Beam exposes a local TCP or UDP port to other machines, and forwards a local port to a port another "
        "machine exposed, over libp2p connections (direct, through a relay, or over Tor), without accounts "
        "or servers of its own.",
        ".PP",
        "\\fBbeam \\fIPORT\\fR is short for \\fBbeam expose \\fIPORT\\fR.",
        "Global options may come before or after the command.",
        "Each command that needs a node uses the one running for the home directory (see \\fBFILES\\fR), "
        "or starts one for as long as it runs.",
        ".SH OPTIONS",
        "These apply to every command.",
    ]
    for option in top.options:
        out += _optionLines(option)
    out += [".SH COMMANDS"]
    for command in commands:
        out += [f'.SS "beam {_literal(command.name)}"', _escape(command.help[:1].upper() + command.help[1:]) + "."]
        if command.description and command.description != command.help:
            out += [".PP", _escape(command.description)]
        out += [".PP", ".nf", _literal(command.usage), ".fi"]
        for positional in command.positionals:
            if positional.help or positional.choices:
                text = positional.help
                if positional.choices:
                    text = (text + "; " if text else "") + "one of: " + ", ".join(positional.choices)
                out += [".TP", f"\\fI{_literal(positional.name)}\\fR", _escape(text)]
        for option in command.options:
            if not _isGlobal(option, top) and "--help" not in option.flags:
                out += _optionLines(option)
    if parser.epilog:
        out += [".SH EXAMPLES"] + _examples(parser.epilog)
    out += [".SH FILES"]
    for path, what in FILES:
        out += [".TP", f"\\fI{_literal(path)}\\fR", _escape(what)]
    out += [".SH ENVIRONMENT"]
    for name, what in ENVIRONMENT:
        out += [".TP", f"\\fB{name}\\fR", _escape(what)]
    out += [".SH EXIT STATUS"]
    for code, what in exitStatus:
        out += [".TP", f"\\fB{code}\\fR", _escape(what)]
    out += [
        ".SH SEE ALSO",
        "The documentation in the docs/ directory of Beam's source: tunnels.md, names.md, tor.md, "
        "nat-traversal.md, dns.md, security.md.",
    ]
    return "\n".join(out) + "\n"
