"""
Shell completion for C{beam} (C{beam completion bash|zsh|fish}, issue 12),
generated from the CLI's own argument parser, so that a new command, flag
or choice completes the moment it exists and a removed one stops
completing.

L{describeParser} walks the parser once into plain data (L{Command},
L{Option}, L{Positional}); the manual page (L{beam.console.manpage})
reads the same data.  Each shell then gets a self-contained script of its
own kind (no bash-completion or zsh C{bashcompinit} needed):

  - bash: a C{complete -F} function over C{COMP_WORDS};
  - zsh: a C{#compdef} function with C{_arguments} (help shown beside
    each flag);
  - fish: C{complete -c beam} lines with a helper that finds the command.

All three know what argparse knows: the commands, each command's options
(global options included, before or after the command), which options
take a value (so a value is never mistaken for the command), the choices
of an option or positional (C{--tor} modes, C{--log-format}, C{network}
actions), and that C{beam 3000} means C{beam expose 3000}.  Directories
complete for C{--home}, files for C{--hosts-file} (L{PATH_OPTIONS}).
"""

from __future__ import annotations

import argparse
import shlex
from typing import Optional, Sequence

import attr

__all__ = ["Option", "Positional", "Command", "describeParser", "SHELLS", "completionScript", "PATH_OPTIONS"]

#: Options whose value is a path: C{"dir"} or C{"file"}.
PATH_OPTIONS = {"--home": "dir", "--hosts-file": "file"}


@attr.s(frozen=True, auto_attribs=True)
class Option:
    """
    One option as the user types it.

    @ivar flags: every spelling, e.g. C{("-q", "--quiet")}.
    @ivar value: C{""} for a flag, C{"required"} or C{"optional"}
        (C{nargs="?"}, like C{--tor [MODE]}).
    @ivar path: C{"dir"}, C{"file"} or C{""} (see L{PATH_OPTIONS}).
    """

    flags: tuple[str, ...]
    help: str
    value: str = ""
    metavar: str = ""
    choices: tuple[str, ...] = ()
    repeatable: bool = False
    path: str = ""


@attr.s(frozen=True, auto_attribs=True)
class Positional:
    """
    One positional argument; C{nargs} as argparse has it (C{None}, C{"?"},
    C{"*"}, C{"+"}).
    """

    name: str
    help: str
    choices: tuple[str, ...] = ()
    nargs: Optional[str] = None


@attr.s(frozen=True, auto_attribs=True)
class Command:
    """
    A command (or, with C{name ""}, the top level): its help, options and
    positionals, and a short usage line (C{beam expose [OPTIONS] port}).
    """

    name: str
    help: str
    description: str
    usage: str
    options: tuple[Option, ...]
    positionals: tuple[Positional, ...]


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {"default": action.default, "prog": "beam", "dest": action.dest}
    return " ".join(text.split())


def _bareDest(dest: str) -> str:
    """
    An option's C{dest} without the prefixes L{beam.cli} gives global
    options (C{_sub_home}, C{_top_listen}).
    """
    for prefix in ("_sub_", "_top_"):
        if dest.startswith(prefix):
            return dest[len(prefix):]
    return dest


def _describeOne(name: str, parser: argparse.ArgumentParser, help: str) -> Command:
    options = []
    positionals = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        choices = tuple(str(c) for c in action.choices) if action.choices else ()
        if action.option_strings:
            if action.nargs == 0:
                value = ""
            elif action.nargs == "?":
                value = "optional"
            else:
                value = "required"
            path = next((PATH_OPTIONS[f] for f in action.option_strings if f in PATH_OPTIONS), "")
            metavar = action.metavar if isinstance(action.metavar, str) else _bareDest(action.dest).upper()
            options.append(Option(
                flags=tuple(action.option_strings), help=_help(action), value=value,
                metavar=metavar if value else "", choices=choices,
                repeatable=isinstance(action, argparse._AppendAction), path=path,
            ))
        else:
            metavar = action.metavar if isinstance(action.metavar, str) else action.dest
            positionals.append(Positional(
                name=metavar, help=_help(action), choices=choices,
                nargs=action.nargs if isinstance(action.nargs, str) else None,
            ))
    words = [parser.prog]
    if options:
        words.append("[OPTIONS]")
    for positional in positionals:
        if positional.nargs == "?":
            words.append(f"[{positional.name}]")
        elif positional.nargs == "*":
            words.append(f"[{positional.name} ...]")
        elif positional.nargs == "+":
            words.append(f"{positional.name} [{positional.name} ...]")
        else:
            words.append(positional.name)
    usage = " ".join(words)
    return Command(
        name=name, help=help, description=" ".join((parser.description or "").split()), usage=usage,
        options=tuple(options), positionals=tuple(positionals),
    )


def describeParser(parser: argparse.ArgumentParser) -> tuple[Command, list[Command]]:
    """
    The top level and every command of C{parser}, in the order defined.
    """
    commands = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                commands.append(_describeOne(name, sub, " ".join(helps.get(name, "").split())))
    return _describeOne("", parser, " ".join((parser.description or "").split())), commands


def _valueOptions(command: Command) -> tuple[list[str], list[Option]]:
    required = [f for o in command.options if o.value == "required" for f in o.flags]
    optional = [o for o in command.options if o.value == "optional"]
    return required, optional


# -- bash ---------------------------------------------------------------------


def _bashWords(words: Sequence[str]) -> str:
    return shlex.quote(" ".join(words))


def _bashValueCases(command: Command) -> list[str]:
    """
    C{case "$opt" in} arms filling C{COMPREPLY} with the values of
    C{command}'s options that take one.
    """
    arms = []
    for option in command.options:
        if not option.value:
            continue
        pattern = "|".join(option.flags)
        if option.choices:
            action = f'COMPREPLY=($(compgen -W {_bashWords(option.choices)} -- "$val"))'
        elif option.path == "dir":
            action = 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$val"))'
        elif option.path == "file":
            action = 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$val"))'
        else:
            action = "COMPREPLY=()"
        arms.append(f"            {pattern}) {action}; return 0 ;;")
    return arms


def _bashScript(top: Command, commands: list[Command]) -> str:
    everything = [top, *commands]
    kinds = []
    values = []
    positionals = []
    for command in everything:
        required, optional = _valueOptions(command)
        arms = []
        if required:
            arms.append(f"                {'|'.join(required)}) echo required ;;")
        for option in optional:
            arms.append(f"                {'|'.join(option.flags)}) echo {shlex.quote(' '.join(option.choices))} ;;")
        if arms:
            kinds.append(f"        {shlex.quote(command.name)})\n            case \"$2\" in\n"
                         + "\n".join(arms) + "\n            esac ;;")
        arms = _bashValueCases(command)
        if arms:
            values.append(f"        {shlex.quote(command.name)})\n          case \"$2\" in\n"
                          + "\n".join(arms) + "\n          esac ;;")
        choiceArms = []
        for i, positional in enumerate(command.positionals):
            if positional.choices:
                choiceArms.append(f"                {i}) COMPREPLY=($(compgen -W {_bashWords(positional.choices)}"
                                  f' -- "$cur")) ;;')
        if choiceArms and command.name:
            positionals.append(f"        {shlex.quote(command.name)})\n            case \"$npos\" in\n"
                               + "\n".join(choiceArms) + "\n            esac ;;")
    optionWords = []
    for command in everything:
        flags = [f for o in command.options for f in o.flags]
        optionWords.append(f"        {shlex.quote(command.name)}) words={_bashWords(flags)} ;;")
    names = [c.name for c in commands]
    nl = "\n"
    return f"""\
# bash completion for beam, generated from its argument parser by `beam completion bash`.
# Install: beam completion bash > ~/.local/share/bash-completion/completions/beam
# (or source it from ~/.bashrc).

# How option $2 of command $1 ("" before the command) takes a value:
# "required", the choices of an optional value, or nothing.
_beam_option_value() {{
    case "$1" in
{nl.join(kinds)}
    esac
}}

# Complete the value "$val" of option $2 of command $1; false when it takes none.
_beam_complete_value() {{
    local val="$3"
    case "$1" in
{nl.join(values)}
    esac
    return 1
}}

_beam() {{
    local cur prev cmd="" npos=0 i w kind pending="" words
    COMPREPLY=()
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev=""
    (( COMP_CWORD > 0 )) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    # Find the command and count positionals, skipping options' values
    # ("--opt=value" arrives as three words, "=" splitting them).
    for (( i=1; i < COMP_CWORD; i++ )); do
        w="${{COMP_WORDS[i]}}"
        if [[ $w == "=" ]]; then
            (( i++ )); pending=""; continue
        fi
        if [[ $pending == required ]]; then
            pending=""; continue
        fi
        if [[ -n $pending ]]; then
            kind="$pending"; pending=""
            [[ " $kind " == *" $w "* ]] && continue
        fi
        case "$w" in
            -*) pending="$(_beam_option_value "$cmd" "$w")" ;;
            *)
                if [[ -z $cmd ]]; then
                    if [[ $w =~ ^[0-9]+$ ]]; then cmd=expose; npos=1; else cmd="$w"; fi
                else
                    (( npos++ ))
                fi ;;
        esac
    done
    # The value of an option: "--opt VALUE", "--opt=VALUE".
    if [[ $cur == "=" ]]; then
        _beam_complete_value "$cmd" "$prev" "" && return 0
    elif [[ $prev == "=" ]] && (( COMP_CWORD > 1 )); then
        _beam_complete_value "$cmd" "${{COMP_WORDS[COMP_CWORD-2]}}" "$cur" && return 0
    elif [[ $prev == -* ]]; then
        kind="$(_beam_option_value "$cmd" "$prev")"
        if [[ $kind == required ]] || [[ -n $kind && $cur != -* ]]; then
            _beam_complete_value "$cmd" "$prev" "$cur" && return 0
        fi
    fi
    if [[ $cur == -* ]]; then
        case "$cmd" in
{nl.join(optionWords)}
            *) words="" ;;
        esac
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
        return 0
    fi
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W {_bashWords(names)} -- "$cur"))
        return 0
    fi
    case "$cmd" in
{nl.join(positionals)}
    esac
    return 0
}}

complete -F _beam beam
"""


# -- zsh ----------------------------------------------------------------------


def _zshQuote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zshHelp(text: str) -> str:
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def _zshMessage(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


def _zshAction(option: Option) -> str:
    if option.choices:
        return "(" + " ".join(option.choices) + ")"
    if option.path == "dir":
        return "_files -/"
    if option.path == "file":
        return "_files"
    return " "


def _zshSpecs(command: Command) -> list[str]:
    specs = []
    for option in command.options:
        exclude = "" if option.repeatable or len(option.flags) == 1 else "(" + " ".join(option.flags) + ")"
        if option.flags == ("--version",) or "--help" in option.flags:
            exclude = "(- *)"
        for flag in option.flags:
            spec = ("*" if option.repeatable else "") + exclude + flag + f"[{_zshHelp(option.help)}]"
            if option.value:
                spec += ("::" if option.value == "optional" else ":") + _zshMessage(option.metavar) + ":" \
                    + _zshAction(option)
            specs.append(_zshQuote(spec))
    for i, positional in enumerate(command.positionals, 1):
        action = "(" + " ".join(positional.choices) + ")" if positional.choices else " "
        message = _zshMessage(positional.name)
        if positional.nargs in ("*", "+"):
            spec = f"*:{message}:{action}"
        elif positional.nargs == "?":
            spec = f"{i}::{message}:{action}"
        else:
            spec = f"{i}:{message}:{action}"
        specs.append(_zshQuote(spec))
    return specs


def _zshScript(top: Command, commands: list[Command]) -> str:
    described = "\n".join(
        "    " + _zshQuote(c.name.replace(":", "\\:") + ":" + c.help) for c in commands
    )
    joiner = " \\\n            "
    cases = []
    for command in commands:
        pattern = command.name + ("|<->" if command.name == "expose" else "")
        shift = ""
        if command.name == "expose":
            # `beam 3000` is `beam expose 3000`: the port is then words[1].
            shift = '          [[ $words[1] == <-> ]] && { words=(expose "${words[@]}"); (( CURRENT++ )) }\n'
        specs = joiner.join(_zshSpecs(command))
        cases.append(f"        {pattern})\n{shift}          _arguments -s -S \\\n            {specs} && ret=0 ;;")
    nl = "\n"
    return f"""\
#compdef beam
# zsh completion for beam, generated from its argument parser by `beam completion zsh`.
# Install: beam completion zsh > "${{fpath[1]}}/_beam" (a directory in $fpath), then restart zsh;
# or source it from ~/.zshrc after compinit.

_beam() {{
  local curcontext="$curcontext" state state_descr line ret=1
  typeset -A opt_args
  local -a commands
  commands=(
{described}
  )
  _arguments -C -s -S \\
    {joiner.join(_zshSpecs(top))} \\
    '1: :->command' \\
    '*:: :->args' && ret=0
  case $state in
    command)
      _describe -t commands 'beam command' commands && ret=0 ;;
    args)
      curcontext="${{curcontext%:*:*}}:beam-$words[1]:"
      case $words[1] in
{nl.join(cases)}
      esac ;;
  esac
  return ret
}}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _beam "$@"
else
  compdef _beam beam
fi
"""


# -- fish ---------------------------------------------------------------------


def _fishQuote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fishLine(condition: str, option: Option) -> str:
    parts = ["complete -c beam -n", _fishQuote(condition)]
    for flag in option.flags:
        if flag.startswith("--"):
            parts += ["-l", flag[2:]]
        else:
            parts += ["-s", flag[1:]]
    if option.value:
        if option.choices:
            parts += ["-x", "-a", _fishQuote(" ".join(option.choices))]
        elif option.path == "dir":
            parts += ["-x", "-a", _fishQuote("(__fish_complete_directories)")]
        elif option.path == "file":
            parts += ["-r", "-F"]
        else:
            parts += ["-x"]
    if option.help:
        parts += ["-d", _fishQuote(option.help)]
    return " ".join(parts)


def _fishScript(top: Command, commands: list[Command]) -> str:
    required, optional = _valueOptions(top)
    skips = " ".join(required)
    optionalArms = "\n".join(
        f"            case {' '.join(o.flags)}\n                set choices {' '.join(o.choices)}" for o in optional
    )
    lines = [
        "# fish completion for beam, generated from its argument parser by `beam completion fish`.",
        "# Install: beam completion fish > ~/.config/fish/completions/beam.fish",
        "",
        "# The command being completed: the first word that is neither an option",
        "# nor an option's value; `beam 3000` is `beam expose 3000`.",
        "function __beam_command",
        "    set -l tokens (commandline -opc)",
        "    set -e tokens[1]",
        "    set -l skip 0",
        "    set -l choices",
        "    for t in $tokens",
        "        if test $skip = 1",
        "            set skip 0",
        "            continue",
        "        end",
        "        if set -q choices[1]",
        "            set -l was $choices",
        "            set choices",
        "            contains -- $t $was; and continue",
        "        end",
        "        switch $t",
        "            case '--*=*'",
    ]
    if skips:
        lines += [f"            case {skips}", "                set skip 1"]
    if optionalArms:
        lines.append(optionalArms)
    lines += [
        "            case '-*'",
        "            case '*'",
        "                if string match -qr '^[0-9]+$' -- $t",
        "                    echo expose",
        "                else",
        "                    echo $t",
        "                end",
        "                return",
        "        end",
        "    end",
        "end",
        "",
        "function __beam_is",
        "    set -l command (__beam_command)",
        '    test "$command" = "$argv[1]"',
        "end",
        "",
        "complete -c beam -f",
    ]
    for command in commands:
        lines.append(f"complete -c beam -n '__beam_is \"\"' -a {_fishQuote(command.name)} -d {_fishQuote(command.help)}")
    for option in top.options:
        lines.append(_fishLine('__beam_is ""', option))
    for command in commands:
        condition = f"__beam_is {command.name}"
        for option in command.options:
            lines.append(_fishLine(condition, option))
        for positional in command.positionals:
            if positional.choices:
                lines.append(f"complete -c beam -n {_fishQuote(condition)} -a "
                             f"{_fishQuote(' '.join(positional.choices))} -d {_fishQuote(positional.help or positional.name)}")
    return "\n".join(lines) + "\n"


SHELLS = {"bash": _bashScript, "zsh": _zshScript, "fish": _fishScript}


def completionScript(parser: argparse.ArgumentParser, shell: str) -> str:
    """
    The completion script for C{shell} (a key of L{SHELLS}).
    """
    top, commands = describeParser(parser)
    return SHELLS[shell](top, commands)

