"""
The C{beam} command line.

Only this module (and L{beam.tap}) touches the global reactor.  Every
failure a user can cause prints one line, C{beam: <what went wrong>}, on
stderr and exits non-zero; tracebacks are for bugs.  With C{--json} that
line is instead one JSON object on stdout, after any events already
printed there: C{{"event": "error", "error": "<what went wrong>"}} (a bug
adds a C{"traceback"} field); the exit status is the same (2 for a
command line that does not parse, else 1), and stderr carries only log
lines.

The global options (C{--home}, C{--json}, C{--bootstrap}, C{--log-format},
C{--quiet}, C{--verbose}) may come before or after the command: C{beam --bootstrap X
daemon} and C{beam daemon --bootstrap X} are the same, and so is
C{beam --listen X daemon} for the commands that run a node.

C{beam PORT} and C{beam connect TARGET} run a node in the foreground, or,
when a node already runs for the home directory, ask it over the control
socket to add the tunnel or forward (and remove it again on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Coroutine, Sequence, TextIO
from urllib.parse import quote

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from beam import __version__
from beam.errors import BeamError, describe, rootCause

DEFAULT_LISTEN = ["/ip4/0.0.0.0/tcp/0"]


class UsageError(BeamError):
    """
    The command line is not valid.
    """


class _UsageFailed(Exception):
    """
    argparse refused the command line (see L{_Parser.error}).

    @ivar parser: the parser (the top one or a command's) that refused it.
    """

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """
    An argument parser that raises instead of printing and exiting, so
    that L{main} reports the error as text or as JSON.
    """

    #: The top-level parser's command parsers, by name.
    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> Any:
        raise _UsageFailed(f"{message} (see `{self.prog} --help`)", self)


#: Options that mean the same wherever they appear: before the command
#: (on the top-level parser) or after it (on each command's parser, under
#: the dest C{_sub_<dest>}; L{_mergeGlobals} folds them together).
_GLOBAL_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--home",), dict(dest="home", default=None,
                       help="the node's home directory (default: $BEAM_HOME or ~/.local/share/beam)")),
    (("--json",), dict(dest="json", action="store_true", default=False,
                       help="print JSON: one object per event or answer, errors included")),
    (("--log-format",), dict(dest="log_format", choices=["text", "json"], default=None,
                             help="log lines on stderr as text (default) or JSON")),
    (("--quiet", "-q"), dict(dest="quiet", action="store_true", default=False,
                             help="show only errors on the terminal (the log file keeps everything)")),
    (("--verbose", "-v"), dict(dest="verbose", action="count", default=0,
                               help="show Beam's info lines too (-vv: everything, with timestamps; "
                                    "`beam logs` shows the node's log file)")),
    (("--bootstrap",), dict(dest="bootstrap", action="append", metavar="MULTIADDR", default=None,
                            help="a DHT peer to join through, /.../p2p/PEER_ID "
                                 "(repeatable; also in config.toml)")),
]

#: What C{--tor MODE} may say (L{beam.daemon.config.TOR_MODES}, not
#: imported: the command line starts without the configuration's module).
_TOR_MODES = ("always", "fallback", "off")

_TOR_HELP = ("use Tor (default MODE: always): always = listen and dial only through Tor, no IP address "
             "advertised or dialled; fallback = also publish an onion address, dialled only when direct "
             "and relayed paths fail; off = no Tor (overrides config.toml)")
_TOR_CONTROL_HELP = ("attach to a running tor's control socket or port (unix:/run/tor/control, "
                     "127.0.0.1:9051, 9051) instead of launching one")


def _addTorOptions(parser: argparse.ArgumentParser) -> None:
    """
    C{--tor [MODE]} and C{--tor-control} for a command that runs a node.
    """
    parser.add_argument("--tor", nargs="?", const="always", choices=_TOR_MODES, default=None, metavar="MODE",
                        help=_TOR_HELP)
    parser.add_argument("--tor-control", metavar="ENDPOINT", help=_TOR_CONTROL_HELP)


_WEB_HELP = ("the dashboard's address (default 127.0.0.1:4040, the next free port if taken; "
             "PORT, HOST:PORT, or off)")


def _addWebOptions(parser: argparse.ArgumentParser) -> None:
    """
    C{--web}, C{--web-allow-remote} and C{--no-inspect} for a command that
    runs a node (the dashboard and the HTTP inspector, issue 13).
    """
    parser.add_argument("--web", metavar="ADDR|PORT|off", default=None, help=_WEB_HELP)
    parser.add_argument("--web-allow-remote", action="store_true",
                        help="allow --web on a non-loopback address (anyone with the token can replay requests)")
    parser.add_argument("--no-inspect", action="store_true",
                        help="do not capture the HTTP requests that go through exposed tunnels")


#: The commands that run a node, and so take C{--listen}.
_LISTENING_COMMANDS = ("expose", "connect", "register", "daemon", "relay")



def _localPort(text: str) -> int:
    """
    A local port number, checked before anything starts.
    """
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 to 65535)")
    return port


def _bindAddress(text: str) -> str:
    """
    A local IP address to listen on, checked before anything starts.
    """
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None

def _addGlobalOptions(parser: argparse.ArgumentParser, top: bool) -> None:
    group = parser.add_argument_group("global options (before or after the command)")
    for flags, options in _GLOBAL_OPTIONS:
        options = dict(options)
        if not top:
            options["dest"] = "_sub_" + options["dest"]
            options["default"] = argparse.SUPPRESS
        group.add_argument(*flags, **options)
    if top:
        group.add_argument("--listen", dest="_top_listen", action="append", metavar="MULTIADDR",
                           help="for " + ", ".join(_LISTENING_COMMANDS) + ": address to listen on "
                                "(repeatable)")


def _mergeGlobals(args: argparse.Namespace) -> argparse.Namespace:
    """
    Fold the global options given after the command into those given
    before it: a later flag wins, repeatable ones (C{--bootstrap},
    C{--listen}) accumulate.

    @raise UsageError: C{--listen} before a command that runs no node.
    """
    for flags, options in _GLOBAL_OPTIONS:
        dest = options["dest"]
        if not hasattr(args, "_sub_" + dest):
            continue
        later = getattr(args, "_sub_" + dest)
        delattr(args, "_sub_" + dest)
        if options.get("action") == "append":
            setattr(args, dest, (getattr(args, dest) or []) + later)
        elif options.get("action") == "store_true":
            setattr(args, dest, getattr(args, dest) or later)
        elif options.get("action") == "count":
            setattr(args, dest, (getattr(args, dest) or 0) + later)
        else:
            setattr(args, dest, later)
    earlier = args._top_listen
    del args._top_listen
    if earlier:
        if args.command not in _LISTENING_COMMANDS:
            raise UsageError(f"--listen does not apply to `beam {args.command}`")
        args.listen = earlier + (args.listen or [])
    return args


#: The examples at the end of C{beam --help}, one per line.
_EPILOG = """\
examples:
  beam 3000                       expose local port 3000 and print its share address
  beam connect <share address>    reach it from another machine (prints the local port)
  beam status                     what the running node is doing
  beam logs --follow              watch the node's log (beam.log in its home)"""


def _parser() -> _Parser:
    p = _Parser(
        prog="beam",
        description="Decentralized peer-to-peer tunnels for local apps.",
        epilog=_EPILOG,
        # The epilog's examples keep their lines (the description is one line anyway).
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"beam {__version__}")
    _addGlobalOptions(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p.commands = {}

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        s = sub.add_parser(name, **kw)
        _addGlobalOptions(s, top=False)
        p.commands[name] = s
        return s

    s = command("expose", help="expose a local port (what `beam PORT` runs)")
    s.add_argument("port", type=int, help="the local port to expose")
    s.add_argument("--name", help="service name (default: the port number)")
    s.add_argument("--host", default="127.0.0.1", help="where the service listens (default 127.0.0.1)")
    s.add_argument("--udp", action="store_true", help="expose a UDP service")
    s.add_argument("--compress", action="store_true", help="allow lz4 compression")
    s.add_argument("--allow", action="append", metavar="PEER_ID", help="admit only this peer (repeatable)")
    s.add_argument("--secret", action="store_true", help="require the secret carried in the share address")
    s.add_argument("--listen", action="append", metavar="MULTIADDR", help="address to listen on (repeatable)")
    s.add_argument("--no-register", action="store_true",
                   help="do not publish the node's name in the DHT (share the beam:// address only)")
    s.add_argument("--qr", action="store_true", help="also print the share address as a QR code")
    _addTorOptions(s)
    _addWebOptions(s)

    s = command("connect", help="forward a local port to a peer's exposed service")
    s.add_argument("target", help="a name (NAME or NAME/SERVICE), a share address (beam://...) "
                                  "or a multiaddr ending in /p2p/PEER_ID")
    s.add_argument("--accept-new-key", action="store_true",
                   help="accept that the name now belongs to a different key than last time")
    s.add_argument("--port", "-p", type=_localPort, default=0, help="local port (default: any free port)")
    s.add_argument("--bind", type=_bindAddress, default="127.0.0.1",
                   help="local address to listen on (default 127.0.0.1)")
    s.add_argument("--service", help="the service to reach (default: the one in the share address)")
    s.add_argument("--udp", action="store_true", help="forward UDP datagrams")
    s.add_argument("--compress", action="store_true", help="offer lz4 compression")
    s.add_argument("--listen", action="append", metavar="MULTIADDR", help="address for this node to listen on")
    s.add_argument("--tor", action="store_true",
                   help="reach the target only over Tor, at its onion address (a node started here runs "
                        "with Tor: always, or fallback if config.toml says so)")
    s.add_argument("--tor-control", metavar="ENDPOINT", help=_TOR_CONTROL_HELP)
    _addWebOptions(s)

    s = command("register", help="publish a name for this node in the DHT")
    s.add_argument("name", help="lower-case DNS-style name, e.g. alice or alice.home")
    s.add_argument("--service", action="append", metavar="SERVICE",
                   help="service the name offers (repeatable; default: every exposed service)")
    s.add_argument("--listen", action="append", metavar="MULTIADDR", help="address to listen on (repeatable)")
    _addTorOptions(s)
    _addWebOptions(s)

    s = command("resolve", help="look a name up: cache, LAN (mDNS), gossip, then the DHT")
    s.add_argument("name")
    s.add_argument("--accept-new-key", action="store_true",
                   help="accept that the name now belongs to a different key than last time")

    s = command("network", help="the node's view of the network")
    s.add_argument("action", choices=["status", "peers", "routes", "bootstrap"])
    s.add_argument("addrs", nargs="*", metavar="MULTIADDR", help="for bootstrap: peers to join through")

    command("status", help="tunnels, forwards and connections of the running node")

    s = command("requests", help="the HTTP requests the inspector captured on the running node's tunnels",
                description="list (the default): one line per captured exchange, newest last; "
                            "show ID: headers and bodies; replay ID: send it again to the tunnel's "
                            "local service (as is, or edited with --method, --path, -H, --data); "
                            "curl ID: the same request as a curl command; clear: forget them all.")
    s.add_argument("action", nargs="?", default="list", choices=["list", "show", "replay", "curl", "clear"])
    s.add_argument("id", nargs="?", type=int, metavar="ID", help="for show, replay and curl: the request's number")
    s.add_argument("--follow", "-f", action="store_true",
                   help="keep printing requests as they complete (Ctrl-C stops)")
    s.add_argument("--method", help="list: only this method; replay: send with this method")
    s.add_argument("--status", help="list: only this status (200, 4xx, pending)")
    s.add_argument("--path", help="list: only targets containing this; replay: send to this target")
    s.add_argument("--tunnel", help="list: only this tunnel")
    s.add_argument("-n", "--limit", type=int, default=None, metavar="N", help="list: only the last N requests")
    s.add_argument("-H", "--header", action="append", metavar="HEADER",
                   help="replay: set a header, as 'NAME: VALUE' (repeatable; 'NAME:' removes it)")
    s.add_argument("--data", metavar="TEXT|@FILE", help="replay: send this body instead (@FILE: a file's bytes)")

    s = command("stop", help="remove a tunnel or forward from the running node")
    s.add_argument("key", metavar="NAME|PORT", help="tunnel name or port, or forward's local port")

    command("id", help="print this node's peer ID")

    s = command("dashboard", help="print the running node's dashboard URL (with its login token)")
    s.add_argument("--open", action="store_true", help="open it in the web browser")

    s = command("daemon", help="run a node in the foreground (tunnels from config.toml)")
    s.add_argument("--listen", action="append", metavar="MULTIADDR",
                   help="address to listen on (repeatable; default from config.toml, else /ip4/0.0.0.0/tcp/0)")
    _addTorOptions(s)
    _addWebOptions(s)

    s = command("relay", help="run a relay for nodes behind NATs in the foreground (relay = \"open\")")
    s.add_argument("--listen", action="append", metavar="MULTIADDR",
                   help="address to listen on (repeatable; default from config.toml, else /ip4/0.0.0.0/tcp/0)")

    s = command("ping", help="ping any libp2p peer")
    s.add_argument("target", metavar="MULTIADDR",
                   help="the peer's multiaddr, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...")
    s.add_argument("--count", "-c", type=int, default=4, help="number of pings (default 4)")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer")

    s = command("logs", help="print the node's log file (<home>/logs/beam.log)")
    s.add_argument("--follow", "-f", action="store_true",
                   help="keep printing lines as they are written, like tail -f (Ctrl-C stops)")
    s.add_argument("-n", "--lines", type=int, default=None, metavar="N",
                   help="only the last N lines (default: the whole current file)")

    s = command("config", help="check the configuration file")
    s.add_argument("action", choices=["check"], help="check: validate config.toml")

    s = command("hosts", help="keep NAME.beam lines in the hosts file (one marked block in /etc/hosts)",
                description="add NAME: write NAME.beam with the address the running node's DNS service "
                            "gives it (or --address IP); remove NAME; list: the Beam block's entries. "
                            "Nothing outside the block is ever changed; the previous file is kept in "
                            "PATH.beam-backup.")
    s.add_argument("action", choices=["add", "remove", "list"])
    s.add_argument("name", nargs="?", metavar="NAME", help="for add and remove: a Beam name (alice, web.alice)")
    s.add_argument("--address", type=_bindAddress, metavar="IP",
                   help="for add: the address NAME.beam stands for, instead of asking the running node")
    s.add_argument("--service", metavar="SERVICE",
                   help="for add and remove: the name's service, as SERVICE.NAME.beam")
    s.add_argument("--hosts-file", default=None, metavar="PATH", help="the hosts file (default /etc/hosts)")

    s = command("completion", help="print a shell completion script",
                description="e.g. beam completion bash > ~/.local/share/bash-completion/completions/beam")
    s.add_argument("shell", choices=["bash", "zsh", "fish"])

    command("manpage", help="print the manual page (roff), e.g. beam manpage | man -l -")
    return p


def _parseArgs(parser: _Parser, argv: list[str]) -> argparse.Namespace:
    """
    Parse a command line (after L{_rewritePortShortcut}) into the
    namespace the command runs with; unknown arguments are reported with
    the command's usage, not the top level's.

    @raise _UsageFailed: argparse refused it.
    @raise UsageError: see L{_mergeGlobals}.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        owner = parser.commands.get(args.command, parser)
        owner.error("unrecognized arguments: " + " ".join(extra))
    return _mergeGlobals(args)


def _takesValue(flag: str) -> bool:
    """
    Whether global option C{flag} (as typed, without C{=value}) is followed
    by its value as the next argument.
    """
    if flag == "--listen":
        return True
    for flags, options in _GLOBAL_OPTIONS:
        if flag in flags:
            return options.get("action") not in ("store_true", "store_false", "count")
    return False


def _rewritePortShortcut(argv: list[str]) -> list[str]:
    """
    C{beam 3000 ...} means C{beam expose 3000 ...}, with global options
    before or after the port.
    """
    out = list(argv)
    i = 0
    while i < len(out):
        arg = out[i]
        if arg == "--":
            break
        if arg.startswith("-"):
            i += 2 if "=" not in arg and _takesValue(arg) else 1
            continue
        if arg.isdigit():
            out.insert(i, "expose")
        break
    return out


def _wantsJSON(argv: Sequence[str]) -> bool:
    """
    Whether C{--json} is on the command line (before any C{--}), known
    before parsing so that even a command line that does not parse is
    reported as JSON.
    """
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


class _Out:
    def __init__(self, stream: TextIO, asJSON: bool) -> None:
        self.stream = stream
        self.asJSON = asJSON

    def event(self, obj: dict[str, Any], text: str | None) -> None:
        if self.asJSON:
            self.stream.write(json.dumps(obj) + "\n")
        elif text is not None:
            self.stream.write(text + "\n")
        self.stream.flush()
        _releaseLog()  # the banner came first; the log may follow


def _home(args: argparse.Namespace) -> Path:
    from beam.storage.home import resolveHome

    return resolveHome(args.home)


def _loadConfig(args: argparse.Namespace) -> Any:
    """
    config.toml with the command line's flags over it.  C{beam connect
    --tor} runs its own node with Tor C{always}, or C{fallback} when the
    file says so.
    """
    from beam.daemon.config import loadConfig, mergeOptions

    config = loadConfig(_home(args) / "config.toml")
    torMode = getattr(args, "tor", None)
    if args.command == "connect":
        torMode = ("fallback" if config.tor.mode == "fallback" else "always") if torMode else None
    if torMode is None and config.tor.mode == "off" and _wasTorOnly(_home(args)):
        # This identity has only ever been shown over Tor: a command that
        # starts a node without Tor would dial from this machine's
        # address with the same peer ID and tie the two together for good.
        torMode = "always"
    return mergeOptions(config, listen=getattr(args, "listen", None), logFormat=args.log_format,
                        bootstrap=args.bootstrap, torMode=torMode, torControl=getattr(args, "tor_control", None),
                        web=getattr(args, "web", None), webAllowRemote=bool(getattr(args, "web_allow_remote", False)),
                        inspect=False if getattr(args, "no_inspect", False) else None)


#: The key of state.json that says a node of this home ran in Tor mode
#: C{always} (see L{_loadConfig}).
TOR_ONLY_STATE = "tor_only"


def _configTorMode(home: Path) -> str:
    from beam.daemon.config import loadConfig

    try:
        return str(loadConfig(home / "config.toml").tor.mode)
    except Exception:
        return "off"


def _wasTorOnly(home: Path) -> bool:
    from beam.storage.home import readState

    return bool(readState(home).get(TOR_ONLY_STATE))


def _rememberTorMode(home: Path, mode: str, explicit: bool) -> None:
    """
    Remember that this home runs Tor-only (mode C{always}), so that its
    other commands stay on Tor; forget it only when told to run otherwise
    (C{--tor off}, C{--tor fallback}, or a mode in config.toml).
    """
    from beam.storage.home import updateState

    try:
        if mode == "always":
            if not _wasTorOnly(home):
                updateState(home, **{TOR_ONLY_STATE: True})
        elif explicit and _wasTorOnly(home):
            updateState(home, **{TOR_ONLY_STATE: False})
    except OSError:
        pass


def _startLogging(args: argparse.Namespace, config: Any = None) -> None:
    """
    The log of a command that runs a node: Beam's warnings and errors on
    the terminal (more with C{-v}, fewer with C{-q}), everything in
    C{<home>/logs/beam.log} (see L{beam.daemon.logs}).
    """
    from beam.console.style import linePrinter
    from beam.daemon.logs import HeldObserver, RotatingLogFile, logFilePath, startLogging

    fmt = args.log_format or (config.logFormat if config is not None else "text")
    verbosity = -1 if args.quiet else getattr(args, "verbose", 0)
    logFile = None
    try:
        logFile = RotatingLogFile(logFilePath(_home(args)))
    except OSError as e:
        linePrinter(sys.stderr)("warning", f"cannot write the log file ({e.strerror or e}: {e.filename}); "
                                           "the log goes to the terminal only")
    terminal = startLogging(sys.stderr, fmt, LogLevel.warn if args.quiet else LogLevel.info,
                            verbosity=verbosity, logFile=logFile, printLine=linePrinter(sys.stderr), hold=True)
    if isinstance(terminal, HeldObserver):
        # Held until the command's first output (its banner), or 5 s if
        # that takes longer (a slow start should say why), or its end.
        from twisted.internet import reactor

        _heldLog.append(terminal)
        reactor.callLater(5, _releaseLog)


#: The terminal's log while a command starts (L{_startLogging}).
_heldLog: list[Any] = []


def _releaseLog() -> None:
    """
    Let the terminal's log through: the command printed its banner.
    """
    while _heldLog:
        _heldLog.pop().release()


async def _runDaemon(
    reactor: Any, args: argparse.Namespace, config: Any, control: bool = True, rememberPort: bool = True,
    out: _Out | None = None,
) -> Any:
    """
    Start a node for this command; with C{out} (as text) and Tor on, show
    Tor's progress while the node waits for it (L{TorProgress}).
    """
    from beam.daemon.service import BeamDaemon
    from beam.storage.home import loadOrCreateIdentity

    home = _home(args)
    identity = loadOrCreateIdentity(home)
    explicit = getattr(args, "tor", None) is not None or _configTorMode(home) != "off"
    if config.tor.mode == "always" and not explicit:
        sys.stderr.write("note: this home ran with Tor only (--tor), so this node does too; "
                         "pass --tor off (or set [tor] mode in config.toml) to run it without Tor\n")
    _rememberTorMode(home, config.tor.mode, explicit)
    daemon = BeamDaemon(reactor, home, identity, config, control=control, rememberPort=rememberPort)
    watch = None
    if out is not None and not out.asJSON and config.tor.mode != "off":
        try:
            tor = daemon.service("tor")
        except KeyError:
            tor = None
        if tor is not None:
            watch = _watchTor(reactor, tor.status)
    try:
        await daemon.start()
    except BaseException:
        if watch is not None:
            watch()
        await daemon.stopService()
        raise
    if watch is not None:
        watch()
    reactor.addSystemEventTrigger("before", "shutdown", daemon.stopService)
    return daemon


#: How often Tor's progress is looked at while a node waits for it.
TOR_POLL_INTERVAL = 0.5

#: Tor's states while a node waits for it (L{beam.daemon.tor}).
TOR_WAITING = ("starting", "bootstrapping", "publishing")


def torStatusText(tor: Any) -> str | None:
    """
    One line about Tor from the C{"tor"} section of the daemon's status
    (L{beam.daemon.tor.TorService.status}), or L{None} when Tor is off
    or the section is missing: what C{beam status} shows and what the
    progress line while a node starts says.
    """
    if not isinstance(tor, dict) or tor.get("mode") in (None, "off"):
        return None
    state = tor.get("state")
    summary = tor.get("summary")
    if state == "ready":
        count = int(tor.get("connections") or 0)
        parts = [str(tor["mode"]), "ready"]
        if tor.get("onion"):
            parts.append(str(tor["onion"]))
        parts.append(f"{count} connection{'' if count == 1 else 's'} over Tor")
        return "tor: " + " · ".join(parts)
    if state == "failed":
        return (f"tor: failed: {tor.get('error') or summary or 'unknown error'}"
                + (" (running without Tor)" if tor.get("mode") == "fallback" else ""))
    if state == "bootstrapping":
        return f"tor: bootstrapping {int(tor.get('progress') or 0)} %" + (f" ({summary})" if summary else "")
    if state == "publishing":
        return "tor: publishing the onion service" + (f" ({summary})" if summary else "")
    return f"tor: {state}" + (f" ({summary})" if summary else "")


def _torDetails(tor: dict[str, Any]) -> list[str]:
    """
    Which tor a node uses, under the L{torStatusText} line.
    """
    if tor.get("state") in ("off", "stopped", "failed"):
        return []
    where = "launched by Beam" if tor.get("launched") else (
        f"attached at {tor['control']}" if tor.get("control") else None)
    socks = f"SOCKS {tor['socks']}" if tor.get("socks") else None
    details = ", ".join(p for p in (where, socks) if p)
    return [f"  {details}"] if details else []


class TorProgress:
    """
    Tor's progress while a node starts, on a terminal as one line
    rewritten in place, else (a pipe, a log file) as a new line only when
    the state changes or the percentage moved by L{STEP} or more.

    @ivar stream: where the lines go (stderr: stdout keeps the share line
        alone).
    """

    #: Percentage points between two lines when not on a terminal.
    STEP = 10

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self._shown: tuple[Any, int] | None = None
        self._line = ""

    def update(self, tor: Any) -> None:
        """
        Show C{tor} (the status's C{"tor"} section) if it says something
        new enough.
        """
        text = torStatusText(tor)
        if text is None:
            return
        state, progress = tor.get("state"), int(tor.get("progress") or 0)
        if self.tty:
            if text != self._line:
                self.stream.write("\r" + text.ljust(len(self._line)))
                self.stream.flush()
                self._line = text
            return
        shown = self._shown
        if shown is None or shown[0] != state or abs(progress - shown[1]) >= self.STEP:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._shown = (state, progress)

    def finish(self) -> None:
        """
        End the rewritten line, so what follows starts on its own.
        """
        if self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()
            self._line = ""


def _isTTY(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _watchTor(reactor: Any, status: Callable[[], Any], stream: TextIO | None = None) -> Callable[[], None]:
    """
    Show Tor's progress from C{status} (the tor service's
    L{status<beam.daemon.tor.TorService.status>}) every
    L{TOR_POLL_INTERVAL} seconds, until the returned function is called
    (which shows the last state).
    """
    from twisted.internet.task import LoopingCall

    stream = stream or sys.stderr
    progress = TorProgress(stream, _isTTY(stream))
    loop = LoopingCall(lambda: progress.update(status()))
    loop.clock = reactor
    loop.start(TOR_POLL_INTERVAL, now=True)

    def stop() -> None:
        if loop.running:
            loop.stop()
        progress.update(status())
        progress.finish()

    return stop


async def _waitForTor(reactor: Any, client: Any, out: _Out) -> dict[str, Any]:
    """
    The running node's status, once its Tor (if on) is no longer starting,
    with its progress shown meanwhile: a tunnel added before the onion
    service is published would be shared without its onion address.
    """
    from twisted.internet.task import deferLater

    status = await client.request("GET", "/v1/status")
    tor = status.get("tor")
    if not isinstance(tor, dict) or tor.get("mode") in (None, "off") or tor.get("state") not in TOR_WAITING:
        return status
    progress = TorProgress(sys.stderr, _isTTY(sys.stderr)) if not out.asJSON else None
    while isinstance(tor, dict) and tor.get("state") in TOR_WAITING:
        if progress is not None:
            progress.update(tor)
        await deferLater(reactor, TOR_POLL_INTERVAL, lambda: None)
        status = await client.request("GET", "/v1/status")
        tor = status.get("tor")
    if progress is not None:
        progress.update(tor)
        progress.finish()
    return status


def _forever() -> Deferred[None]:
    """
    A Deferred that never fires: the command runs until the reactor stops
    (Ctrl-C, SIGTERM, or C{POST /v1/shutdown}).
    """
    return Deferred()


def _progress(reactor: Any, out: _Out) -> Any:
    """
    What a wait longer than a second shows on stderr (L{beam.console.progress});
    L{None} with C{--json}.
    """
    if out.asJSON:
        return None
    from beam.console.progress import Progress

    return Progress(reactor, sys.stderr)


async def _watchLive(
    reactor: Any, out: _Out, source: Any, kind: str, key: str, label: str, home: Path | None = None,
) -> int:
    """
    Run until the tunnel or forward C{key} or the node goes away, with the
    live line on a terminal (L{beam.console.live}); the exit status says
    which went away.  C{home}: the running node this command asked.
    """
    from beam.console.live import LiveStatus

    def notify(event: dict[str, Any], text: str) -> None:
        if out.asJSON:
            out.event(event, None)
        else:
            sys.stderr.write(f"beam: {text}\n")
            sys.stderr.flush()

    def stillRunning() -> bool:
        from beam.daemon.control.socket import nodeRunning

        return home is None or nodeRunning(home)

    live = LiveStatus(reactor, source, kind, key, label, out.stream, _isTTY(out.stream) and not out.asJSON,
                      notify, stillRunning)
    reactor.addSystemEventTrigger("before", "shutdown", live.stop)
    return await live.start()


def _serviceListening(host: str, port: int, udp: bool) -> bool:
    if udp:
        return True
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _printTunnel(
    out: _Out,
    tunnel: dict[str, Any],
    peerID: str,
    addrs: list[str],
    registered: dict[str, Any] | None = None,
    tunnels: int = 1,
    qr: bool = False,
    dashboard: str | None = None,
    dashboardLogin: str | None = None,
) -> None:
    """
    The share line (L{beam.console.share}: by name when the name is
    published on other peers, with every flag the other side needs), and
    with C{qr} the share address as a QR code (L{beam.console.qr}; on
    stderr with C{--json}, which keeps stdout to JSON lines).
    """
    from beam.console.share import shareLines

    lines = shareLines(tunnel, registered, tunnels)
    text = lines.text
    if qr:
        from beam.console.qr import colourAllowed, renderQR

        stream = sys.stderr if out.asJSON else out.stream
        code = renderQR(tunnel["share"], colourAllowed(stream))
        if out.asJSON:
            stream.write(code)
            stream.flush()
        else:
            text += "\n" + code + "\n"
    if dashboard:
        # The terminal is the owner's: like Jupyter, it shows the URL that
        # logs a browser in (the cookie then keeps it logged in); JSON
        # events keep the plain URL, for scripts that log.
        text += f"Dashboard: {dashboardLogin or dashboard}\n"
    text += "Press Ctrl-C to stop."
    out.event(
        {"event": "ready", "peer_id": peerID, "addrs": addrs, "name": tunnel["name"],
         "share": tunnel["share"], "connect": lines.command, "connect_share": lines.byShare,
         "registered": registered, "dashboard": dashboard},
        text,
    )


async def cmdExpose(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    from beam.daemon.control.socket import nodeRunning
    from beam.identity.keys import PeerID

    if not 0 < args.port < 65536:
        raise UsageError(f"port must be between 1 and 65535, not {args.port}")
    allow = [str(PeerID.fromString(a)) for a in args.allow] if args.allow else None
    if not _serviceListening(args.host, args.port, args.udp):
        sys.stderr.write(
            f"beam: warning: nothing is listening on {args.host}:{args.port} yet; "
            f"connections will be refused until it is\n"
        )
    home = _home(args)
    if nodeRunning(home):
        from beam.daemon.control.client import ControlClient

        client = ControlClient(reactor, home)
        _warnTorFlags(args, await _waitForTor(reactor, client, out))
        body: dict[str, Any] = {"port": args.port, "udp": args.udp, "compress": args.compress,
                                "secret": bool(args.secret)}
        if args.name:
            body["name"] = args.name
        if allow is not None:
            body["allow"] = allow
        tunnel = await client.request("POST", "/v1/tunnels", body)
        status = await client.request("GET", "/v1/status")
        registered = None
        if not args.no_register:
            from beam.console.progress import waitingFor
            from beam.names.service import memorableName

            registered = await waitingFor(_progress(reactor, out), "publishing this node's name",
                                          client.request("POST", "/v1/names", {"name": memorableName(home)}))
        _warnUnreachable(natWarning(status))
        _printTunnel(out, tunnel, status["peer_id"], status["addrs"], registered, len(status["tunnels"]), args.qr,
                     _statusDashboard(status), await _dashboardLogin(client, status))

        def remove() -> Deferred[Any]:
            return client.request("DELETE", "/v1/tunnels/" + quote(tunnel["name"], safe="")).addErrback(
                lambda f: None
            )

        reactor.addSystemEventTrigger("before", "shutdown", remove)
        from beam.console.live import controlSource

        return await _watchLive(reactor, out, controlSource(client), "tunnel", tunnel["name"],
                                f"the tunnel {tunnel['name']!r}", home)
    config = _loadConfig(args)
    _startLogging(args, config)
    daemon = await _runDaemon(reactor, args, config, out=out)

    from beam.controlapi import asJSON

    tunnel = asJSON(daemon.tunnels.exposePort(
        args.port, args.name, args.udp, args.compress,
        [PeerID.fromString(a) for a in allow] if allow else None, bool(args.secret), host=args.host,
    ))
    registered = None
    if not args.no_register:
        from beam.names.service import memorableName

        from beam.console.progress import waitingFor

        progress = _progress(reactor, out)
        await waitingFor(progress, "joining the DHT", daemon.kademlia.whenBootstrapped())
        registered = asJSON(await waitingFor(progress, "publishing this node's name",
                                             daemon.names.register(memorableName(daemon.home))))
    node = daemon.node
    _warnUnreachable(natWarning({
        "reachability": node.addresses.reachability,
        "confirmed_addrs": [str(a) for a in node.addresses.confirmed()],
        "relay_addrs": [str(a) for a in node.addresses.relayAddrs()],
        "addrs": [str(a) for a in node.advertisedAddrs()],
    }))
    try:
        dashboardLogin: str | None = daemon.web.loginURL()
    except BeamError:
        dashboardLogin = None
    _printTunnel(out, tunnel, str(node.peerID), [str(a) for a in node.shareableAddrs()],
                 registered, len(daemon.tunnels.services), args.qr, daemon.web.url, dashboardLogin)
    from beam.console.live import daemonSource

    return await _watchLive(reactor, out, daemonSource(daemon), "tunnel", tunnel["name"],
                            f"the tunnel {tunnel['name']!r}")


def _shortTarget(target: str) -> str:
    """
    A share address as the progress line names it: its peer ID, shortened.
    """
    peer = target.removeprefix("beam://").split("@", 1)[0].rsplit("/p2p/", 1)[-1].split("/", 1)[0]
    return peer if len(peer) <= 16 else peer[:8] + "…" + peer[-4:]


def _warnTorFlags(args: argparse.Namespace, status: dict[str, Any]) -> None:
    """
    C{--tor MODE} and C{--tor-control} configure a node this command
    starts; say so when one already runs with another Tor mode.  (C{beam
    connect --tor} is about the forward: the node refuses it when it runs
    without Tor, saying how to start it.)
    """
    tor = status.get("tor")
    mode = tor.get("mode") if isinstance(tor, dict) else "off"
    wanted = getattr(args, "tor", None)
    if (isinstance(wanted, str) and wanted != mode) or getattr(args, "tor_control", None):
        sys.stderr.write(f"beam: warning: a node already runs for this home (Tor: {mode}); --tor MODE and "
                         "--tor-control apply to a node this command starts: stop it to change them\n")
        sys.stderr.flush()


def _warnUnreachable(warning: str | None) -> None:
    if warning is not None:
        sys.stderr.write(f"beam: warning: {warning}\n")
        sys.stderr.flush()


async def cmdConnect(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    from beam.daemon.control.socket import nodeRunning
    from beam.tunnel.share import parseShareAddress

    isName = not args.target.startswith(("beam://", "/"))
    if not isName:
        parseShareAddress(args.target, args.service)  # fail fast on a malformed address
    home = _home(args)
    from beam.console.progress import waitingFor

    reaching = f"looking up {args.target} and reaching it" if isName else f"reaching {_shortTarget(args.target)}"
    attached: Path | None  # the running node this command asked, if any
    if nodeRunning(home):
        from beam.console.live import controlSource
        from beam.daemon.control.client import ControlClient

        client = ControlClient(reactor, home)
        _warnTorFlags(args, await _waitForTor(reactor, client, out))
        source, attached = controlSource(client), home
        body: dict[str, Any] = {"target": args.target, "bind": args.bind, "compress": args.compress,
                                "udp": args.udp}
        if args.tor:
            body["tor"] = True
        if args.port:
            body["port"] = args.port
        if args.service:
            body["service"] = args.service
        if isName and args.accept_new_key:
            await waitingFor(_progress(reactor, out), f"looking up {args.target}", client.request(
                "GET", "/v1/resolve/" + quote(args.target.partition("/")[0], safe="") + "?accept_new_key=1"))
        fwd = await waitingFor(_progress(reactor, out), reaching, client.request("POST", "/v1/forwards", body))

        def remove() -> Deferred[Any]:
            return client.request("DELETE", "/v1/forwards/" + quote(fwd["name"], safe="")).addErrback(
                lambda f: None
            )

        reactor.addSystemEventTrigger("before", "shutdown", remove)
        connectStatus = await client.request("GET", "/v1/status")
        dashboard = _statusDashboard(connectStatus)
        dashboardLogin = await _dashboardLogin(client, connectStatus)
    else:
        config = _loadConfig(args)
        _startLogging(args, config)
        daemon = await _runDaemon(reactor, args, config, out=out)
        from beam.console.live import daemonSource
        from beam.controlapi import asJSON

        source, attached = daemonSource(daemon), None
        # tor= only when asked, so the call stays what it was without --tor.
        torOption: dict[str, Any] = {"tor": True} if args.tor else {}
        fwd = asJSON(await waitingFor(_progress(reactor, out), reaching, daemon.forwards.add(
            args.target, args.port, args.bind, args.service, args.compress, args.udp,
            acceptNewKey=args.accept_new_key, **torOption)))
        web = getattr(daemon, "web", None)
        dashboard = web.url if web is not None else None
        try:
            dashboardLogin = web.loginURL() if web is not None else None
        except BeamError:
            dashboardLogin = dashboard
    out.event(
        {"event": "ready", "listen": fwd["listen"], "peer_id": fwd["peer_id"], "service": fwd["service"],
         "dashboard": dashboard},
        f"listening on {fwd['listen']} -> {fwd['peer_id']}/{fwd['service'] or 'default'}"
        + (f"\nDashboard: {dashboardLogin}" if dashboard else ""),
    )
    return await _watchLive(reactor, out, source, "forward", fwd["name"], f"the forward on {fwd['listen']}",
                            attached)


async def _dashboardLogin(client: Any, status: dict[str, Any]) -> str | None:
    """
    The URL that logs a browser into the dashboard of the node behind
    C{client} (L{None}: off, or a node from before the dashboard).
    """
    if _statusDashboard(status) is None:
        return None
    try:
        answer = await client.request("GET", "/v1/web/login")
    except BeamError:
        return None
    url = answer.get("url") if isinstance(answer, dict) else None
    return url if isinstance(url, str) else None


def _statusDashboard(status: dict[str, Any]) -> str | None:
    """
    The dashboard's URL from a running node's status (L{None}: off, not
    listening, or a node from before the dashboard).
    """
    web = status.get("web")
    url = web.get("url") if isinstance(web, dict) else None
    return url if isinstance(url, str) else None


async def cmdDashboard(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    """
    C{beam dashboard [--open]}: the running node's dashboard URL with the
    token that logs a browser in (asked over the owner-only control
    socket).
    """
    from beam.daemon.control import ControlClient

    answer = await ControlClient(reactor, _home(args)).request("GET", "/v1/web/login")
    url = str(answer["url"])
    opened = None
    if args.open:
        import webbrowser

        opened = bool(webbrowser.open(url))
    out.event({"event": "dashboard", "url": url, "dashboard": answer.get("dashboard"), "opened": opened},
              url if opened is not False else f"{url}\n(could not open a web browser; open the URL yourself)")
    return 0


async def cmdStatus(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    from beam.daemon.control import ControlClient

    status = await ControlClient(reactor, _home(args)).request("GET", "/v1/status")
    out.event(status, None if out.asJSON else statusText(status))
    return 0


def _traffic(stats: Any) -> str:
    return (f"active {stats.active} total {stats.total} "
            f"in {_size(stats.bytesIn)} out {_size(stats.bytesOut)}")


def statusText(status: dict[str, Any], now: float | None = None) -> str:
    """
    C{beam status} as text, from what C{GET /v1/status} answered: the
    node, then each service's section (the built-in ones laid out, a
    plugin's shown key by key).

    @param now: the clock time the names' expiry is counted from (the
        current time by default; given by tests).
    """
    from beam.controlapi import fromJSON
    from beam.daemon.status import ServiceInfo
    from beam.dht.status import DHTStatus
    from beam.names.status import NameStatus
    from beam.p2p.host.status import NodeStatus
    from beam.tunnel.status import ForwardStatus, TunnelStatus

    node = fromJSON(NodeStatus, status)
    lines = [f"peer {node.peerID}"]
    lines += [f"  {a}" for a in node.addrs]
    tunnels = [fromJSON(TunnelStatus, t) for t in status.get("tunnels", [])]
    lines.append("tunnels:" if tunnels else "tunnels: none")
    for t in tunnels:
        lines.append(f"  {t.name:<12} {t.kind} {t.target:<21} {'private' if t.private else 'public':<8} "
                     + _traffic(t.stats))
        lines.append(f"    {t.share}")
    forwards = [fromJSON(ForwardStatus, f) for f in status.get("forwards", [])]
    lines.append("forwards:" if forwards else "forwards: none")
    for f in forwards:
        lines.append(f"  {f.listen:<21} -> {f.peerID}/{f.service or 'default'} [{f.state}] " + _traffic(f.stats))
    lines += _natLines(node.reachability, list(node.confirmedAddrs), status.get("nat"))
    tor = torStatusText(status.get("tor"))
    if tor is not None:
        lines.append(tor)
        lines += _torDetails(status["tor"])
    lines.append(f"connections: {len(node.connections)}")
    for c in node.connections:
        lines.append(f"  {c.peerID} {c.direction} {_pathText(c)} {c.remoteAddr} {c.security} streams {c.streams}")
    if isinstance(status.get("resources"), dict):
        lines.append(_resourcesText(status["resources"]))
    if "names" in status:
        names = [fromJSON(NameStatus, n) for n in status["names"]]
        lines.append("names:" if names else "names: none")
        if now is None:
            import time

            now = time.time()
        lines += [f"  {n.name:<12} {_nameText(n, now)}" for n in names]
    if "kademlia" in status:
        dht = fromJSON(DHTStatus, status["kademlia"])
        lookups = ""
        if dht.lookups:
            found = 100.0 * (dht.lookups - dht.lookupFailures) / dht.lookups
            times = "".join(f", {label} {value:.0f} ms" for label, value in
                            (("p50", dht.lookupP50Ms), ("p95", dht.lookupP95Ms)) if value is not None)
            lookups = f", {dht.lookups} lookups ({found:.0f} % answered{times})"
        lines.append(f"DHT: {dht.mode}, {dht.routingTableSize} peers in the routing table, "
                     f"{dht.recordsHeld} records held{lookups}")
    services = [fromJSON(ServiceInfo, s) for s in status.get("services", [])]
    plugins = [s for s in services if s.origin == "plugin"]
    if plugins:
        lines.append("plugins:")
        lines += [f"  {s.name:<12} {s.state}" + (f"  ({s.description})" if s.description else "") for s in plugins]
    lines += _discoveryLines(status)
    inspector = status.get("requests")
    if isinstance(inspector, dict):
        lines.append(
            "Inspector: off" if not inspector.get("enabled") else
            f"Inspector: {inspector.get('kept', 0)} requests kept ({_size(inspector.get('bytes', 0))}), "
            f"{inspector.get('evicted', 0)} evicted"
        )
    web = status.get("web")
    if isinstance(web, dict):
        if not web.get("enabled"):
            lines.append("Dashboard: off")
        elif web.get("url"):
            clients = web.get("clients") or 0
            lines.append(f"Dashboard: {web['url']} (" + (f"{clients} watching; " if clients else "")
                         + "beam dashboard prints the login link)")
        else:
            lines.append(f"Dashboard: not listening: {web.get('error') or 'not started'}")
    laidOut = ("tunnels", "forwards", "names", "kademlia", "nat", "tor", "mdns", "pubsub", "dns", "requests", "web")
    for service in services:
        if service.name not in laidOut and service.name in status:
            lines += _genericText(service.name, status[service.name])
    return "\n".join(lines)


def _discoveryLines(status: dict[str, Any]) -> list[str]:
    """
    One line each for the LAN (mDNS), gossip and the local DNS server, as
    a person wants them from C{beam status}; their counters are in
    C{--json}.
    """
    lines: list[str] = []
    mdns = status.get("mdns")
    if isinstance(mdns, dict):
        if not mdns.get("enabled"):
            lines.append("LAN (mDNS): off" + (f" ({mdns['reason']})" if mdns.get("reason") else ""))
        elif mdns.get("idle"):
            lines.append("LAN (mDNS): idle (the node listens on loopback only)")
        elif mdns.get("error"):
            lines.append(f"LAN (mDNS): not running: {mdns['error']}")
        else:
            where = ", ".join(mdns.get("interfaces") or []) or "no interface"
            lines.append(f"LAN (mDNS): {mdns.get('peers', 0)} peers found on {where}")
    pubsub = status.get("pubsub")
    if isinstance(pubsub, dict):
        if not pubsub.get("enabled"):
            lines.append("gossip: off")
        else:
            mesh = (pubsub.get("mesh") or {}).get("beam-names", 0)
            lines.append(f"gossip: {pubsub.get('peers', 0)} peers, {mesh} in the beam-names mesh")
    dns = status.get("dns")
    if isinstance(dns, dict):
        if not dns.get("enabled"):
            lines.append("DNS: off")
        elif dns.get("listening"):
            allocations = dns.get("allocations") or []
            lines.append(f"DNS: NAME.beam answered on {dns['listening']}"
                         + (f", {len(allocations)} names:" if allocations else ""))
            for a in allocations[:10]:
                ports = ", ".join(str(p) for p in a.get("ports") or []) or "no port"
                lines.append(f"  {a.get('host')} -> {a.get('address')} ({ports})")
            if len(allocations) > 10:
                lines.append(f"  ... and {len(allocations) - 10} more (beam status --json)")
        else:
            lines.append(f"DNS: not running: {dns.get('error') or 'not started'}")
    return lines


def _nameText(name: Any, now: float) -> str:
    """
    One of our names in C{beam status}: its record (sequence number,
    expiry) and how its last publication went, as C{--json} has them.
    """
    if name.seq is None:
        return "not published yet" + (f": {name.error}" if name.error else "")
    parts = [f"seq {name.seq}"]
    if name.expires is not None:
        left = int(name.expires - now)
        parts.append(f"expires in {_duration(left)}" if left > 0 else "expired")
    parts.append(f"not stored: {name.error}" if name.error else f"stored on {name.storedOn} peers")
    nextRepublish = getattr(name, "nextRepublish", None)
    if nextRepublish is not None:
        parts.append(f"republished in {_duration(max(0, int(nextRepublish - now)))}")
    return ", ".join(parts)


def _pathText(conn: Any) -> str:
    """
    How a connection got there: C{direct}, C{hole-punched}, C{relayed via
    PEER}, C{over Tor}.
    """
    if getattr(conn, "transport", None) == "tor":
        return "over Tor"
    if conn.path == "relayed":
        return f"relayed via {conn.relay}" if conn.relay else "relayed"
    return str(conn.path)


def _natLines(reachability: str, confirmed: list[str], nat: Any) -> list[str]:
    """
    The node's reachability, what STUN found, its relay reservations and
    its relay service, as status lines.
    """
    lines = [f"reachability: {reachability}"
             + (f" (confirmed: {', '.join(confirmed)})" if confirmed else "")]
    if not isinstance(nat, dict):
        return lines
    behaviour = nat.get("nat")
    if isinstance(behaviour, dict):
        public = behaviour.get("publicAddr")
        lines.append(f"NAT: {behaviour.get('mapping')} mapping, {behaviour.get('filtering')} filtering"
                     f" -> {behaviour.get('strategy')}"
                     + (f" (public {public[0]}:{public[1]})" if isinstance(public, list) and len(public) == 2 else ""))
    elif nat.get("stun_error"):
        lines.append(f"NAT: unknown (STUN: {nat['stun_error']})")
    reservations = nat.get("reservations") or []
    if reservations:
        lines.append("relay reservations:")
        for r in reservations:
            lines.append(f"  {r.get('relay')} expires in {_duration(int(r.get('expires_in') or 0))}")
            lines += [f"    {a}" for a in r.get("addrs") or []]
    elif nat.get("reserving"):
        lines.append("relay reservations: none yet (asking " + ", ".join(nat["reserving"]) + ")")
    service = nat.get("relay_service")
    if isinstance(service, dict):
        kind = "open (whole tunnels)" if service.get("open") else "default limits (short circuits)"
        lines.append(f"relay service: {kind}, {len(service.get('reservations') or [])} reservations, "
                     f"{len(service.get('circuits') or [])} circuits, "
                     f"{_size(int(service.get('relayedBytes') or 0))} relayed")
    elif nat.get("relay_mode") == "off":
        lines.append("relay service: off")
    if nat.get("stun_server"):
        lines.append("STUN server: " + ", ".join(nat["stun_server"]))

    def lease(label: str, info: object, addrKey: str, where: str, byKey: str, idle: str) -> None:
        # A port mapping or a TURN allocation: its address and expiry, or
        # its state and last error.
        if not isinstance(info, dict):
            return
        if info.get(addrKey):
            expires = info.get("expires_in")
            lines.append(f"{label}: {info.get(addrKey)} {where} {info.get(byKey)}"
                         + (f", expires in {_duration(int(expires))}" if isinstance(expires, (int, float)) else ""))
        else:
            lines.append(f"{label}: {info.get('state') or idle}"
                         + (f" ({info['last_error']})" if info.get("last_error") else ""))

    lease("port mapping", nat.get("port_mapping"), "external_addr", "via", "protocol", "none")
    lease("TURN", nat.get("turn"), "relayed_addr", "on", "server", "idle")
    punching = nat.get("hole_punching")
    if isinstance(punching, dict) and (punching.get("punched") or punching.get("failed") or punching.get("active")):
        lines.append(f"hole punching: {punching.get('punched', 0)} punched, {punching.get('failed', 0)} failed, "
                     f"{punching.get('active', 0)} under way")
        if punching.get("last_failure"):
            lines.append(f"  last: {punching['last_failure']}")
    return lines


def _duration(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


#: What C{beam PORT} warns when strangers cannot reach the node yet.
NAT_WARNING = ("this node is behind a NAT and has no relay yet: "
               "peers outside your network cannot reach it yet")


def natWarning(status: dict[str, Any]) -> str | None:
    """
    L{NAT_WARNING} when the node's status (C{GET /v1/status}) shows no
    address a stranger could reach: none confirmed, no relay address, and
    either AutoNAT found it private or its only non-loopback addresses
    are private ones (a home LAN).  A node on loopback only (a test, a
    machine-local setup) or with a public address AutoNAT has not judged
    yet is not warned about.
    """
    from beam.identity.multiaddr import Multiaddr
    from beam.p2p.host.addrs import addrScope

    if status.get("confirmed_addrs") or status.get("relay_addrs"):
        return None
    if status.get("reachability") == "private":
        return NAT_WARNING
    scopes = set()
    for text in status.get("addrs") or []:
        try:
            scopes.add(addrScope(Multiaddr.fromString(text)))
        except BeamError:
            continue
    if "private" in scopes and "public" not in scopes:
        return NAT_WARNING
    return None


def _resourcesText(resources: dict[str, Any]) -> str:
    """
    One line of what the node holds and how often a limit refused
    something (the limits themselves are in C{beam status --json}).
    """
    used = resources.get("system") or {}

    def count(*keys: str) -> int:
        return sum(int(used.get(k) or 0) for k in keys)

    refusals = sum(int(n) for n in (resources.get("refusals") or {}).values())
    return (f"resources: {count('conns_inbound', 'conns_outbound')} conns, "
            f"{count('streams_inbound', 'streams_outbound')} streams, {count('fd')} fds, "
            f"{_size(count('memory'))}; {refusals} refusals")


def _genericText(name: str, value: Any, indent: str = "") -> list[str]:
    """
    A plugin's status section, key by key.
    """
    if isinstance(value, dict):
        lines = [f"{indent}{name}:"]
        for key, item in value.items():
            lines += _genericText(key, item, indent + "  ")
        return lines
    if isinstance(value, list):
        if all(not isinstance(item, (dict, list)) for item in value):
            return [f"{indent}{name}: " + (", ".join(str(item) for item in value) or "none")]
        lines = [f"{indent}{name}: {len(value)}"]
        for i, item in enumerate(value):
            lines += _genericText(f"- {i + 1}", item, indent + "  ")
        return lines
    return [f"{indent}{name}: {'none' if value is None else value}"]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


async def cmdStop(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    from beam.daemon.control import ControlClient, ControlError

    client = ControlClient(reactor, _home(args))
    key = quote(args.key, safe="")
    # A tunnel (by name or port), else a forward (by local port), else a
    # registered name: the first that exists is removed.
    for what, route in (("tunnel", "tunnels"), ("forward", "forwards"), ("name", "names")):
        try:
            removed = await client.request("DELETE", f"/v1/{route}/{key}")
            break
        except ControlError as e:
            if e.status not in (400, 404) or (e.status == 400 and route != "names"):
                raise
    else:
        raise BeamError(f"no tunnel, forward or name {args.key!r} on this node")
    out.event({"event": "stopped", "kind": what, **removed}, f"stopped {what} {removed['name']}")
    return 0


async def cmdRegister(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    from beam.daemon.control import ControlClient, nodeRunning

    home = _home(args)
    if nodeRunning(home):
        result = await ControlClient(reactor, home).request(
            "POST", "/v1/names", {"name": args.name, "services": args.service or []})
        _printRegistered(out, result)
        return 0
    config = _loadConfig(args)
    _startLogging(args, config)
    daemon = await _runDaemon(reactor, args, config, out=out)
    from beam.controlapi import asJSON

    await daemon.kademlia.whenBootstrapped()
    result = asJSON(await daemon.names.register(args.name, args.service or []))
    _printRegistered(out, result)
    out.event({"event": "running"}, "Keeping the name published; press Ctrl-C to stop.")
    await _forever()
    return 0


def _printRegistered(out: _Out, result: dict[str, Any]) -> None:
    stored = result.get("stored_on") or 0
    where = f"stored on {stored} other peer(s)"
    if result.get("error"):
        where += f" (publishing failed: {result['error']})"
    event = {"event": "registered", **result}
    text = f"registered {result['name']} -> {result['peer_id']} ({where})"
    if not stored:
        event["warning"] = NAME_ONLY_HERE.format(name=result["name"])
        text += f"\nwarning: {event['warning']}"
    out.event(event, text)


NAME_ONLY_HERE = ("no other peer stored the name {name}; it is only on this node, "
                  "so others cannot resolve it until a DHT peer stores it")


async def cmdResolve(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    from beam.daemon.control import ControlClient, nodeRunning

    home = _home(args)
    if nodeRunning(home):
        path = "/v1/resolve/" + quote(args.name, safe="") + ("?accept_new_key=1" if args.accept_new_key else "")
        result = await ControlClient(reactor, home).request("GET", path)
    else:
        import attr

        config = attr.evolve(_loadConfig(args), listen=())
        daemon = await _runDaemon(reactor, args, config, control=False, rememberPort=False)
        from beam.controlapi import asJSON

        try:
            result = asJSON(await daemon.names.resolve(args.name, args.accept_new_key))
        finally:
            await daemon.stopService()
    out.event(result, _resolvedText(result))
    return 0


def _resolvedText(result: dict[str, Any]) -> str:
    """
    C{beam resolve}'s text: the owner, its addresses and services, then one
    line saying which step answered and what each lookup step cost, e.g.
    C{found via mdns in 12.3 ms (cache miss 0.0 ms, mdns hit 12.1 ms); key
    new}.  (The pin step shows as the key's state.)
    """
    lines = [f"{result['name']} -> {result['peer_id']}"]
    lines += [f"  {a}" for a in result["addrs"]]
    if result["services"]:
        lines.append(f"  services: {', '.join(result['services'])}")
    found = f"  found via {result['source']} in {result['elapsed_ms']:.1f} ms"
    steps = [s for s in result.get("steps") or [] if s.get("step") != "pin"]
    if steps:
        found += " (" + ", ".join(f"{s['step']} {s['outcome']} {s['ms']:.1f} ms" for s in steps) + ")"
    if any(s.get("step") == "dht" for s in steps) or not steps:
        found += f", asked {result['queried']} peers ({result['rounds']} rounds)"
    lines.append(f"{found}; key {result['pin']}")
    return "\n".join(lines)


async def cmdHosts(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    """
    C{beam hosts add|remove|list}: Beam's block in the hosts file
    (L{beam.names.hostsfile}).  Only C{add} without C{--address} needs the
    running node (its DNS service hands out the address).
    """
    from beam.names import hostsfile

    path = args.hosts_file or hostsfile.DEFAULT_PATH
    if args.action == "list":
        if args.name or args.address or args.service:
            raise UsageError("beam hosts list takes no NAME, --address or --service")
        entries = hostsfile.listEntries(hostsfile.readHostsFile(path))
        out.event({"path": path, "entries": [{"host": e.host, "address": e.address} for e in entries]},
                  "\n".join(f"{e.address}\t{e.host}" for e in entries) or f"no Beam entries in {path}")
        return 0
    if not args.name:
        raise UsageError(f"beam hosts {args.action} needs a NAME")
    if args.address and args.action != "add":
        raise UsageError("--address is for beam hosts add")
    name = f"{args.service}.{args.name}" if args.service else args.name
    host = hostsfile.hostName(name)
    if args.action == "remove":
        changed = hostsfile.updateHostsFile(path, lambda data: hostsfile.removeEntry(data, host))
        out.event({"event": "removed", "host": host, "path": path, "changed": changed},
                  f"removed {host} from {path}" if changed else f"{host} was not in {path}")
        return 0
    ports: list[int] | None = None
    if args.address:
        address = args.address
    else:
        from beam.daemon.control import ControlClient, ControlError

        # The name as the node knows it: lower-cased, without ".beam".
        body: dict[str, Any] = {"name": hostsfile.hostName(args.name)[:-len(hostsfile.SUFFIX)]}
        if args.service:
            body["service"] = args.service
        try:
            result = await ControlClient(reactor, _home(args)).request("POST", "/v1/dns/address", body)
        except ControlError as e:
            if e.status == 404 and str(e).startswith("no such endpoint"):
                raise ControlError(f"the running node has no DNS service (is [dns] enabled in config.toml?); "
                                   f"pass --address IP to write an address of your own", e.status) from None
            raise
        address = hostsfile.checkAddress(str(result["address"]))
        ports = [int(p) for p in result.get("ports") or []]
    changed = hostsfile.updateHostsFile(path, lambda data: hostsfile.addEntry(data, host, address))
    event: dict[str, Any] = {"event": "added", "host": host, "address": address, "path": path, "changed": changed}
    text = f"{host} -> {address} in {path}" + ("" if changed else " (already there)")
    if ports is not None:
        event["ports"] = ports
        if ports:
            text += "\n  " + "  ".join(f"http://{host}:{p}/" for p in ports)
    out.event(event, text)
    return 0


async def cmdNetwork(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    from beam.daemon.control import ControlClient

    client = ControlClient(reactor, _home(args))
    if args.action == "bootstrap":
        r = await client.request("POST", "/v1/network/bootstrap", {"addrs": args.addrs})
    else:
        r = await client.request("GET", f"/v1/network/{args.action}")
    out.event(r, None if out.asJSON else networkText(args.action, r))
    return 0


def networkText(action: str, r: dict[str, Any]) -> str:
    """
    C{beam network ACTION} as text, from what the control socket answered.
    """
    from beam.controlapi import fromJSON

    if action == "status":
        from beam.dht.status import DHTStatus

        dht = fromJSON(DHTStatus, r) if "dht_mode" in r else None
        paths = r.get("connection_paths") or {}
        return "\n".join([
            f"peer {r['peer_id']}",
            "listen: " + (", ".join(r["listen_addrs"]) or "none"),
            "observed: " + (", ".join(r["observed_addrs"]) or "none"),
            *_natLines(r.get("reachability", "unknown"), list(r.get("confirmed_addrs") or []), r.get("nat")),
            *[line for line in [torStatusText(r.get("tor"))] if line is not None],
            f"connections: {r.get('connections', 0)}"
            + (" (" + ", ".join(f"{n} {p}" for p, n in sorted(paths.items())) + ")" if paths else ""),
            f"DHT: {dht.mode}, {dht.routingTableSize} peers in the routing table, {dht.recordsHeld} records held"
            if dht is not None else "DHT: not running",
            "names: " + (", ".join(n["name"] for n in r["names"]) or "none"),
        ])
    if action == "peers":
        from beam.p2p.host.status import ConnectionStatus

        peers = [fromJSON(ConnectionStatus, p) for p in r["peers"]]
        return "\n".join(
            f"{p.peerID} {p.direction} {_pathText(p)} {p.remoteAddr} {p.security} streams {p.streams}"
            + (f" {p.agent}" if p.agent else "")
            for p in peers
        ) or "no peers connected"
    if action == "routes":
        from beam.dht.status import RoutesStatus

        routes = fromJSON(RoutesStatus, r)
        lines = [f"{routes.size} peers (k = {routes.k})"]
        for b in routes.buckets:
            lines.append(f"bucket {b.index}: {len(b.peers)} peers, {b.replacements} replacements")
            lines += [f"  {p.peerID} {' '.join(p.addrs[:2])}" for p in b.peers]
        return "\n".join(lines)
    return f"bootstrapped: {r['routing_table_size']} peers in the routing table"


async def cmdRequests(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    """
    C{beam requests [list|show|replay|curl|clear] [ID]}: the inspector's
    captures over the control socket (L{beam.tunnel.inspect.resource}).
    """
    from urllib.parse import urlencode

    from beam.console.requests import RequestPrinter, detailText
    from beam.daemon.control import ControlClient, ControlError

    client = ControlClient(reactor, _home(args), timeout=45.0)
    printer = RequestPrinter(out.stream, out.asJSON)

    async def call(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            return await client.request(method, path, body)
        except ControlError as e:
            if e.status == 404 and str(e).startswith("no such endpoint"):
                raise ControlError("the running node does not inspect requests (inspect = false in "
                                   "config.toml, or started with --no-inspect)", e.status) from None
            raise

    action = args.action
    if action in ("show", "replay", "curl") and args.id is None:
        raise UsageError(f"beam requests {action} needs the request's ID")
    if action in ("list", "clear") and args.id is not None:
        raise UsageError(f"beam requests {action} takes no ID")
    if action == "clear":
        r = await call("DELETE", "/v1/requests")
        out.event(r, f"cleared {r['cleared']} captured request(s)")
        return 0
    if action == "curl":
        r = await call("GET", f"/v1/requests/{args.id}/curl")
        out.event(r, r["curl"])
        return 0
    if action == "show":
        r = await call("GET", f"/v1/requests/{args.id}")
        out.event(r, None if out.asJSON else detailText(r))
        return 0
    if action == "replay":
        original = await call("GET", f"/v1/requests/{args.id}")
        r = await call("POST", f"/v1/requests/{args.id}/replay", _replayEdits(args, original))
        out.event(r, None if out.asJSON else detailText(r))
        return 0
    query = {k: v for k, v in [("method", args.method), ("status", args.status), ("path", args.path),
                               ("tunnel", args.tunnel), ("limit", args.limit)] if v is not None}
    r = await call("GET", "/v1/requests?" + urlencode(query))
    if not args.follow:
        for summary in r["requests"]:
            printer.summary(summary)
        if not r["requests"]:
            printer.text("no captured requests" + (" match" if query.keys() - {"limit"} else ""))
        return 0
    # --follow: print each exchange once, when it is no longer open; ask
    # again (a long poll) for what comes after the oldest still open.
    from twisted.internet.task import deferLater

    printed: set[int] = set()
    summaries = r["requests"]
    while True:
        progress = False
        for summary in summaries:
            if summary["state"] != "open" and summary["id"] not in printed:
                printer.summary(summary)
                printed.add(summary["id"])
                progress = True
        opened = [s["id"] for s in summaries if s["state"] == "open"]
        after = min(opened) - 1 if opened else max((s["id"] for s in summaries), default=query.get("after", 0))
        printed = {i for i in printed if i > after}
        if opened and not progress:
            # Only exchanges still open came back: wait a little rather
            # than ask again at once.
            await deferLater(reactor, 0.5, lambda: None)
        query["after"] = after
        r = await call("GET", "/v1/requests?" + urlencode({**query, "wait": 30}))
        summaries = r["requests"]


def _replayEdits(args: argparse.Namespace, original: dict[str, Any]) -> dict[str, Any]:
    """
    The body of C{POST /v1/requests/ID/replay} from C{beam requests replay}'s
    options: C{-H} sets (or with an empty value removes) a header of the
    captured request, C{--data} replaces the body.
    """
    import base64

    edits: dict[str, Any] = {}
    if args.method:
        edits["method"] = args.method
    if args.path:
        edits["path"] = args.path
    if args.header:
        headers = [list(h) for h in original["request"]["headers"]]
        for spec in args.header:
            name, sep, value = spec.partition(":")
            name, value = name.strip(), value.strip()
            if not sep or not name:
                raise UsageError(f"-H wants 'NAME: VALUE', not {spec!r}")
            kept = [h for h in headers if h[0].lower() != name.lower()]
            headers = kept + ([[name, value]] if value else [])
        edits["headers"] = headers
    if args.data is not None:
        if args.data.startswith("@"):
            edits["body_base64"] = base64.b64encode(Path(args.data[1:]).expanduser().read_bytes()).decode("ascii")
        else:
            edits["body"] = args.data
    return edits


def cmdID(args: argparse.Namespace, out: _Out) -> int:
    from beam.storage.home import loadOrCreateIdentity

    ident = loadOrCreateIdentity(_home(args))
    out.event({"peer_id": str(ident.peerID)}, str(ident.peerID))
    return 0


def cmdDocs(parser: _Parser, args: argparse.Namespace, out: _Out) -> int:
    """
    C{beam completion SHELL} and C{beam manpage}: generated from C{parser}
    itself (L{beam.console.completion}, L{beam.console.manpage}), so they
    never disagree with it.
    """
    if args.command == "completion":
        from beam.console.completion import completionScript

        text = completionScript(parser, args.shell)
    else:
        from beam.console.manpage import manPage

        text = manPage(parser, __version__)
    out.stream.write(text)
    out.stream.flush()
    return 0


def cmdLogs(args: argparse.Namespace, out: _Out) -> int:
    """
    C{beam logs}: the node's log file, or its last C{-n} lines; with
    C{--follow} then what is written to it (across rotations) until
    Ctrl-C, which exits 130.  Works while the node runs: it only reads.
    """
    from beam.daemon.logs import follow, logFilePath, tailLines

    path = logFilePath(_home(args))

    def show(line: str) -> None:
        out.event({"event": "log", "line": line.rstrip("\n")}, line.rstrip("\n"))

    try:
        try:
            lines, end = tailLines(path, args.lines)
        except FileNotFoundError:
            if not args.follow:
                raise BeamError(f"no log yet at {path} (a node writes it once it runs with this home)") from None
            lines, end = [], 0
        for line in lines:
            show(line)
        if args.follow:
            for line in follow(path, end):
                if line:
                    show(line)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `beam logs | head`: the reader had enough; nothing more to flush.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


def cmdConfig(args: argparse.Namespace, out: _Out) -> int:
    from beam.daemon.config import checkConfig

    path = _home(args) / "config.toml"
    problems = checkConfig(path)
    exists = path.exists()
    # No file is valid (the defaults apply), but "OK" would suggest one was read.
    text = ("\n".join(problems) if problems else f"{path}: OK" if exists
            else f"no config.toml at {path}: the defaults apply")
    out.event({"path": str(path), "ok": not problems, "exists": exists, "problems": problems}, text)
    return 1 if problems else 0


async def cmdDaemon(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    config = _loadConfig(args)
    _startLogging(args, config)
    daemon = await _runDaemon(reactor, args, config, out=out)
    node = daemon.node

    def observe(event: str, conn: Any) -> None:
        if out.asJSON:
            out.event({"event": event, "peer_id": str(conn.remotePeer),
                       "addr": str(conn.remoteAddr), "direction": conn.direction}, None)

    node.addConnectionObserver(observe)
    addrs = [str(a) for a in node.advertisedAddrs()]
    out.event(
        {"event": "ready", "peer_id": str(node.peerID), "addrs": addrs,
         "tunnels": [t.share for t in daemon.tunnels.status()]},
        f"Beam node {node.peerID} listening on:\n" + "\n".join(f"  {a}" for a in addrs),
    )
    await _forever()
    return 0


async def cmdRelay(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    """
    C{beam relay}: a daemon in the foreground that relays whole tunnels
    (C{relay = "open"}, with the limits of the configuration's C{[relay]}
    table) for nodes behind NATs, public or not: the operator says this
    machine is reachable.
    """
    import attr

    config = attr.evolve(_loadConfig(args), relayMode="open")
    if config.tor.mode == "always":
        # A relay is reached at its IP address by definition; tor mode
        # always promises that no IP address of ours is told or dialled.
        raise UsageError("beam relay cannot run with [tor] mode = \"always\" (a relay must be reachable at its "
                         "IP address); use mode \"fallback\" or \"off\" for this home")
    _startLogging(args, config)
    daemon = await _runDaemon(reactor, args, config)
    node = daemon.node
    service = daemon.service("nat").relayService
    limits = service.limits if service is not None else None
    addrs = [str(a) for a in node.shareableAddrs()]
    text = (f"Beam relay {node.peerID} relaying whole tunnels"
            + (f" (at most {limits.maxReservations} reservations, {limits.maxCircuits} circuits, "
               f"{limits.maxCircuitsPerPeer} per peer)" if limits is not None else "")
            + ".\nRelay address (give it to nodes behind NATs as --bootstrap):\n"
            + "\n".join(f"  {a}" for a in addrs))
    out.event({"event": "ready", "peer_id": str(node.peerID), "addrs": addrs, "relay": "open",
               "limits": attr.asdict(limits) if limits is not None else None}, text)
    await _forever()
    return 0


async def cmdPing(reactor: Any, args: argparse.Namespace, out: _Out) -> int:
    from beam.storage.home import loadOrCreateIdentity
    from beam.identity.multiaddr import Multiaddr
    from beam.p2p.host.node import Node

    target = Multiaddr.fromString(args.target)
    if args.count < 1:
        raise UsageError("--count must be at least 1")
    if _loadConfig(args).tor.mode == "always":
        # This command's own node dials over TCP from this machine: with
        # the home's peer ID, that would tie the identity to our address.
        raise UsageError("beam ping dials directly, and this home's [tor] mode is \"always\": "
                         "ping would reveal this machine's address; use `beam status` on the running node instead")
    ident = loadOrCreateIdentity(_home(args))
    node = Node(reactor, ident, [])
    await node.startService()
    try:
        conn = await node.connect(target)
        out.event(
            {"event": "connected", "peer_id": str(conn.remotePeer), "addr": str(conn.remoteAddr),
             "security": conn.security, "muxer": conn.muxer},
            f"PING {conn.remotePeer} via {conn.remoteAddr} ({conn.security}, {conn.muxer})",
        )
        rtts: list[float] = []
        for seq in range(1, args.count + 1):
            (rtt,) = await node.ping(conn.remotePeer, count=1, timeout=args.timeout)
            rtts.append(rtt)
            out.event({"event": "pong", "seq": seq, "rtt_ms": round(rtt * 1000, 3)},
                      f"seq={seq} time={rtt * 1000:.3f} ms")
        out.event(
            {"event": "summary", "count": len(rtts), "min_ms": round(min(rtts) * 1000, 3),
             "avg_ms": round(sum(rtts) / len(rtts) * 1000, 3), "max_ms": round(max(rtts) * 1000, 3)},
            f"{len(rtts)} pings: min/avg/max = "
            f"{min(rtts)*1000:.3f}/{sum(rtts)/len(rtts)*1000:.3f}/{max(rtts)*1000:.3f} ms",
        )
    finally:
        await node.stopService()
    return 0


ASYNC_COMMANDS: dict[str, Callable[[Any, argparse.Namespace, _Out], Coroutine[Any, Any, int]]] = {
    "expose": cmdExpose,
    "connect": cmdConnect,
    "status": cmdStatus,
    "dashboard": cmdDashboard,
    "stop": cmdStop,
    "daemon": cmdDaemon,
    "relay": cmdRelay,
    "ping": cmdPing,
    "register": cmdRegister,
    "resolve": cmdResolve,
    "network": cmdNetwork,
    "hosts": cmdHosts,
    "requests": cmdRequests,
}


def _isUserError(cause: BaseException) -> bool:
    """
    Whether an error is one a user can cause (a bad argument, a peer that
    is down, a port in use) rather than a bug in Beam.
    """
    from twisted.internet import defer, error as netError

    return isinstance(cause, (
        BeamError, OSError, netError.ConnectError, netError.ConnectionClosed,
        netError.CannotListenError, netError.ConnectingCancelledError,
        defer.TimeoutError, defer.CancelledError,
    ))


def _reportError(
    error: BaseException | Failure, asJSON: bool, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> None:
    """
    Tell the user what went wrong: C{beam: <one line>} on stderr, or with
    C{--json} one C{{"event": "error", ...}} object on stdout.  A bug
    (see L{_isUserError}) also gets its traceback.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    message = describe(error)
    traceback = None
    if not _isUserError(rootCause(error)):
        message = f"unexpected error: {message}"
        if isinstance(error, Failure):
            traceback = error.getTraceback()
        else:
            import traceback as tb

            traceback = "".join(tb.format_exception(error))
    if asJSON:
        obj: dict[str, Any] = {"event": "error", "error": message}
        if traceback is not None:
            obj["traceback"] = traceback
        stdout.write(json.dumps(obj) + "\n")
        stdout.flush()
    else:
        stderr.write(f"beam: {message}\n" + (traceback or ""))
        stderr.flush()


def main(argv: Sequence[str] | None = None) -> None:
    """
    Entry point of the C{beam} console script.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    asJSON = _wantsJSON(argv)
    parser = _parser()
    try:
        args = _parseArgs(parser, _rewritePortShortcut(argv))
    except (_UsageFailed, UsageError) as e:
        if not asJSON:
            (e.parser if isinstance(e, _UsageFailed) else parser).print_usage(sys.stderr)
        _reportError(UsageError(str(e)), asJSON)
        raise SystemExit(2)
    if args.command is None:
        if asJSON:
            _reportError(UsageError("no command given (see `beam --help`)"), asJSON)
        else:
            parser.print_help()
        raise SystemExit(2)
    out = _Out(sys.stdout, args.json)
    if args.command in ("completion", "manpage"):
        raise SystemExit(cmdDocs(parser, args, out))
    if args.command in ("id", "config", "logs"):
        try:
            code = {"id": cmdID, "config": cmdConfig, "logs": cmdLogs}[args.command](args, out)
        except Exception as e:
            _reportError(e, out.asJSON)
            raise SystemExit(1)
        raise SystemExit(code)

    from twisted.internet.task import react

    command = ASYNC_COMMANDS[args.command]
    exitCode = [0]
    # Whether Ctrl-C (SIGINT) stopped the command before it finished: it
    # then exits EXIT_INTERRUPTED, as shells expect, not 0 (TERM-CONTRACT).
    interrupted: list[bool] = []
    finished: list[bool] = []

    def run(reactor: Any) -> Deferred[None]:
        # react() calls us before reactor.run(), i.e. before Twisted
        # installs its SIGTERM/SIGINT handlers: start the command once the
        # reactor runs, so that a SIGTERM that follows our "ready" line
        # (systemd, kill, a test) stops us cleanly instead of killing us.
        d: Deferred[Any] = Deferred()
        reactor.callWhenRunning(d.callback, None)
        reactor.addSystemEventTrigger("after", "startup", _noteInterrupt, interrupted, finished)
        d.addCallback(lambda _: ensureDeferred(command(reactor, args, out)))

        def done(code: int) -> None:
            finished.append(True)
            exitCode[0] = code

        def failed(f: Failure) -> None:
            finished.append(True)
            _releaseLog()
            if interrupted:
                # Cut short by the Ctrl-C (a dial abandoned as the node
                # stops): the person knows why; no error to report.
                return
            _reportError(f, out.asJSON)
            exitCode[0] = 1

        return d.addCallbacks(done, failed)

    try:
        react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        _releaseLog()
    raise SystemExit(EXIT_INTERRUPTED if interrupted else exitCode[0])


#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


def _noteInterrupt(interrupted: list[bool], finished: list[bool]) -> None:
    """
    Wrap the reactor's SIGINT handler (installed by now) so that a Ctrl-C
    that comes while the command still runs is noted in C{interrupted}
    before the reactor stops as usual.
    """
    import signal

    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):
        return

    def onInterrupt(number: int, frame: Any) -> None:
        if not finished:
            interrupted.append(True)
        previous(number, frame)

    signal.signal(signal.SIGINT, onInterrupt)
