"""
Tests for Tor's configuration (issue 10): C{[tor]} in config.toml and the
C{--tor}/C{--tor-control} flags (L{beam.daemon.config}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from beam.test.test_config import ConfigTestCase
from beam.daemon.config import (
    Config,
    ConfigError,
    TorConfig,
    loadConfig,
    mergeOptions,
    normaliseControl,
)


class TorConfigTestCase(ConfigTestCase):
    def load(self, text: str) -> Config:
        return loadConfig(self.write(text))


class TorTableTests(TorConfigTestCase):
    """
    Valid C{[tor]} tables and their defaults.
    """

    def test_defaults(self) -> None:
        """
        Without C{[tor]} Tor is off; the defaults are the contract's.
        """
        self.assertEqual(self.load("").tor, TorConfig())
        self.assertEqual(Config().tor, TorConfig(mode="off", control=None, binary=None, dataDir=None, port=4001,
                                                 options=(), bootstrapTimeout=300.0))

    def test_everyKey(self) -> None:
        """
        Every key of C{[tor]} and C{[tor.options]} is read into typed
        values: numbers and booleans in options become torrc text, a list
        repeats the option.
        """
        config = self.load("""
[tor]
mode = "fallback"
binary = "/usr/sbin/tor"
data_dir = "/var/lib/beam/tor"
port = 4242
bootstrap_timeout = 90

[tor.options]
TestingTorNetwork = 1
AssumeReachable = true
UseMicrodescriptors = false
Rate = 1.5
DirAuthority = ["auth0 orport=5000 127.0.0.1:7000 AAAA", "auth1 orport=5001 127.0.0.1:7001 BBBB"]
Nickname = "beam"
""")
        self.assertEqual(config.tor, TorConfig(
            mode="fallback", binary="/usr/sbin/tor", dataDir="/var/lib/beam/tor", port=4242, bootstrapTimeout=90.0,
            options=(("TestingTorNetwork", ("1",)), ("AssumeReachable", ("1",)), ("UseMicrodescriptors", ("0",)),
                     ("Rate", ("1.5",)),
                     ("DirAuthority", ("auth0 orport=5000 127.0.0.1:7000 AAAA",
                                       "auth1 orport=5001 127.0.0.1:7001 BBBB")),
                     ("Nickname", ("beam",))),
        ))

    def test_inlineOptions(self) -> None:
        """
        The options may be an inline table.
        """
        config = self.load('[tor]\nmode = "always"\noptions = {TestingTorNetwork = 1, SocksPort = "auto"}\n')
        self.assertEqual(config.tor.options, (("TestingTorNetwork", ("1",)), ("SocksPort", ("auto",))))

    def test_modeShorthand(self) -> None:
        """
        C{tor = "MODE"} is a C{[tor]} with only a mode; a table without a
        mode leaves Tor off (it says how to reach tor; C{--tor} says when).
        """
        for mode in ("off", "fallback", "always"):
            self.assertEqual(self.load(f'tor = "{mode}"\n').tor, TorConfig(mode=mode))
        self.assertEqual(self.load('[tor]\ncontrol = "9051"\n').tor,
                         TorConfig(mode="off", control="tcp:host=127.0.0.1:port=9051"))

    def test_controlShortForms(self) -> None:
        """
        Control endpoints are normalised to Twisted endpoint strings.
        """
        for given, expected in [
            ("unix:/run/tor/control", "unix:path=/run/tor/control"),
            ("/run/tor/control", "unix:path=/run/tor/control"),
            ("unix:path=/run/tor/control", "unix:path=/run/tor/control"),
            ("127.0.0.1:9051", "tcp:host=127.0.0.1:port=9051"),
            ("9051", "tcp:host=127.0.0.1:port=9051"),
            ("localhost:9151", "tcp:host=localhost:port=9151"),
            ("[::1]:9051", "tcp:host=\\:\\:1:port=9051"),
            ("tcp:host=127.0.0.1:port=9051", "tcp:host=127.0.0.1:port=9051"),
        ]:
            self.assertEqual(normaliseControl(given), expected, given)
            self.assertEqual(self.load(f'[tor]\nmode = "always"\ncontrol = \'{given}\'\n').tor.control, expected)
        for bad in ("", "tor", "0", "65536", "unix:", "tls:host=a:port=1", "host:port"):
            self.assertRaises(ValueError, normaliseControl, bad)


class TorProblemTests(TorConfigTestCase):
    """
    Each mistake in C{[tor]} is reported at its line.
    """

    def test_mode(self) -> None:
        """
        A mode that is not one of the three, as a table key or shorthand.
        """
        self.assertEqual(self.problems('\n[tor]\nmode = "sometimes"\n'),
                         ['config.toml:3: mode must be "off", "fallback", "always", not \'sometimes\''])
        self.assertEqual(self.problems('tor = "yes"\n'),
                         ['config.toml:1: tor must be "off", "fallback", "always", not \'yes\''])
        self.assertEqual(self.problems("tor = true\n"),
                         ['config.toml:1: tor must be "off", "fallback", "always" or a [tor] table, '
                          "not a boolean"])

    def test_unknownKey(self) -> None:
        """
        A typo in C{[tor]} is reported with the keys it could have been.
        """
        self.assertEqual(self.problems('[tor]\nmode = "always"\ncontol = "9051"\n'), [
            "config.toml:3: unknown key 'contol' in [tor] (expected one of: binary, bootstrap_timeout, "
            "control, data_dir, mode, options, port)"])

    def test_valueProblems(self) -> None:
        """
        Port, timeout, control, paths: each bad value at its own line, all
        reported at once.
        """
        self.assertEqual(self.problems("""[tor]
mode = "always"
port = 0
bootstrap_timeout = -1
binary = ""
data_dir = 3
"""), [
            "config.toml:3: port must be a number from 1 to 65535, not 0",
            "config.toml:4: bootstrap_timeout must be a number of seconds above 0 and at most 3600, not -1",
            "config.toml:5: binary must be a path, not ''",
            "config.toml:6: data_dir must be a path, not 3",
        ])
        for port in ("65536", '"4001"', "true"):
            (problem,) = self.problems(f"[tor]\nport = {port}\n")
            self.assertTrue(problem.startswith("config.toml:2: port must be a number from 1 to 65535"), problem)
        (problem,) = self.problems('[tor]\nmode = "always"\ncontrol = "tor.example:x"\n')
        self.assertTrue(problem.startswith("config.toml:3: control must be a control socket"), problem)
        self.assertEqual(self.problems("[tor]\ncontrol = 9051\n"),
                         ["config.toml:2: control must be a string, not an integer"])

    def test_launchOnlyKeysWithControl(self) -> None:
        """
        Options, binary and data directory mean nothing to a tor we attach
        to: saying both is reported rather than silently ignored.
        """
        problems = self.problems('[tor]\ncontrol = "9051"\nbinary = "/usr/sbin/tor"\n[tor.options]\nA = 1\n')
        self.assertEqual(problems, [
            "config.toml:3: binary applies only to a tor that Beam launches, not to one it attaches to with control",
            "config.toml:4: options applies only to a tor that Beam launches, not to one it attaches to "
            "with control",
        ])

    def test_optionProblems(self) -> None:
        """
        Option names must look like torrc's; values are strings (one
        line), numbers, booleans or lists of strings; options Beam sets
        itself are refused with where to set them.
        """
        problems = self.problems("""[tor]
mode = "always"
[tor.options]
Good = 1
"Bad Name" = 1
Nested = [1, 2]
Empty = []
Injected = "1\\nControlPort 9999"
Table = {a = 1}
DataDirectory = "/tmp/x"
""")
        self.assertEqual(problems, [
            "config.toml:5: tor option names are letters, digits and '_', not 'Bad Name'",
            "config.toml:6: tor option Nested must be a string, a number, true/false or a list of strings, "
            "each on one line, not 1",
            "config.toml:7: tor option Empty has no value",
            "config.toml:8: tor option Injected must be a string, a number, true/false or a list of strings, "
            "each on one line, not '1\\nControlPort 9999'",
            "config.toml:9: tor option Table must be a string, a number, true/false or a list of strings, "
            "each on one line, not {'a': 1}",
            "config.toml:10: tor option DataDirectory is set by Beam (use [tor] data_dir)",
        ])
        self.assertEqual(self.problems('[tor]\noptions = "TestingTorNetwork 1"\n'),
                         ["config.toml:2: options must be a [tor.options] table, not a string"])


class TorFlagTests(SynchronousTestCase):
    """
    C{--tor} and C{--tor-control} over the file.
    """

    def test_flagsOverride(self) -> None:
        """
        C{--tor MODE} and C{--tor-control} replace the file's mode and
        control, keeping its other settings; flags not given change
        nothing.
        """
        config = Config(tor=TorConfig(mode="fallback", port=4242, options=(("A", ("1",)),)))
        self.assertEqual(mergeOptions(config, torMode=None, torControl=None), config)
        merged = mergeOptions(config, torMode="always", torControl="unix:/run/tor/control")
        self.assertEqual(merged.tor, TorConfig(mode="always", control="unix:path=/run/tor/control", port=4242,
                                               options=(("A", ("1",)),)))
        self.assertEqual(mergeOptions(config, torMode="off").tor.mode, "off")

    def test_badFlags(self) -> None:
        """
        A bad mode or control endpoint names the flag.
        """
        e = self.assertRaises(ConfigError, mergeOptions, Config(), torMode="sometimes")
        self.assertEqual(str(e), "--tor must be off, fallback, always, not 'sometimes'")
        e = self.assertRaises(ConfigError, mergeOptions, Config(), torControl="nowhere")
        self.assertTrue(str(e).startswith("--tor-control must be a control socket"), str(e))
