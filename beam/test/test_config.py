"""
Tests for L{beam.daemon.config}: reading, validating and merging config.toml.
"""

from __future__ import annotations

import os
from typing import Any
from pathlib import Path

import attr
from twisted.trial.unittest import SynchronousTestCase

from beam.daemon.config import (
    Config,
    ConfigError,
    ForwardConfig,
    TunnelConfig,
    checkConfig,
    loadConfig,
    mergeOptions,
)
from beam.errors import BeamError
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.resources import MiB, defaultLimits
from beam.tunnel.share import parseShareAddress

PEER = str(Identity.fromSeed(b"\x01" * 32).peerID)
OTHER = str(Identity.fromSeed(b"\x02" * 32).peerID)


class ConfigTestCase(SynchronousTestCase):
    def write(self, text: str, mode: int = 0o600) -> Path:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "config.toml"
        path.write_text(text)
        os.chmod(path, mode)
        return path

    def problems(self, text: str) -> list[str]:
        path = self.write(text)
        problems = checkConfig(path)
        e = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(e.problems, problems)
        return problems


class LoadTests(ConfigTestCase):
    """
    Valid files and the defaults.
    """

    def test_missingFileIsDefaults(self) -> None:
        """
        No file means the defaults, and no problems.
        """
        path = Path(self.mktemp()) / "config.toml"
        self.assertEqual(loadConfig(path), Config())
        self.assertEqual(checkConfig(path), [])
        self.assertEqual(Config().listen, (Multiaddr("/ip4/0.0.0.0/tcp/0"),))
        self.assertEqual((Config().logFormat, Config().tunnels, Config().forwards), ("text", (), ()))

    def test_fullExample(self) -> None:
        """
        Every documented key is read into typed values.
        """
        path = self.write(f"""
listen = ["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"]
bootstrap = ["/ip4/192.0.2.7/tcp/4001/p2p/{PEER}"]
log_format = "json"

[[tunnel]]
port = 3000
name = "web"
compress = true
allow = ["{PEER}", "{OTHER}"]
secret = true

[[tunnel]]
port = 53
udp = true
secret = "hunter2"

[[forward]]
target = "beam://{PEER}@192.0.2.7:4001"
port = 8080
bind = "::1"
service = "web"
""")
        config = loadConfig(path)
        self.assertEqual(config.listen, (Multiaddr("/ip4/0.0.0.0/tcp/4001"), Multiaddr("/ip6/::/tcp/4001")))
        self.assertEqual(config.bootstrap, (Multiaddr(f"/ip4/192.0.2.7/tcp/4001/p2p/{PEER}"),))
        self.assertEqual(config.logFormat, "json")
        self.assertEqual(config.tunnels, (
            TunnelConfig(port=3000, name="web", compress=True,
                         allow=(Identity.fromSeed(b"\x01" * 32).peerID, Identity.fromSeed(b"\x02" * 32).peerID),
                         secret=True),
            TunnelConfig(port=53, udp=True, secret="hunter2"),
        ))
        (forward,) = config.forwards
        self.assertEqual((forward.port, forward.bind, forward.service), (8080, "::1", "web"))
        self.assertEqual(forward.address.service, "web")
        self.assertEqual(str(forward.address.peer), PEER)

    def test_forwardMultiaddrTargetDefaults(self) -> None:
        """
        A forward to a /p2p multiaddr binds 127.0.0.1 and leaves the port to
        the node.
        """
        config = loadConfig(self.write(f'[[forward]]\ntarget = "/ip4/10.0.0.1/tcp/4001/p2p/{PEER}"\n'))
        self.assertEqual(config.forwards[0].bind, "127.0.0.1")
        self.assertIsNone(config.forwards[0].port)
        self.assertEqual(config.forwards[0].address.service, "")

    def test_configIsFrozen(self) -> None:
        """
        Config values are immutable.
        """
        config = Config()
        with self.assertRaises(attr.exceptions.FrozenInstanceError):
            config.logFormat = "json"  # type: ignore[misc]

    def test_configErrorIsBeamError(self) -> None:
        """
        L{ConfigError} prints one problem per line, for the CLI.
        """
        e = ConfigError(["config.toml:1: a", "config.toml:2: b"])
        self.assertIsInstance(e, BeamError)
        self.assertEqual(str(e), "config.toml:1: a\nconfig.toml:2: b")


class ProblemTests(ConfigTestCase):
    """
    Each problem is reported with the line it is on.
    """

    def test_syntaxError(self) -> None:
        """
        A TOML syntax error reports the parser's line.
        """
        (problem,) = self.problems('listen = ["/ip4/0.0.0.0/tcp/1"]\n\nport = = 3\n')
        self.assertTrue(problem.startswith("config.toml:3: "), problem)
        self.assertIn("column", problem)

    def test_notUTF8(self) -> None:
        """
        Bytes that are not UTF-8 are reported with their line.
        """
        path = self.write("")
        path.write_bytes(b'log_format = "text"\n# \xff\n')
        self.assertEqual(checkConfig(path), ["config.toml:2: not valid UTF-8"])

    def test_deepNestingRefused(self) -> None:
        """
        Arrays, inline tables or dotted keys nested thousands of levels deep
        are one clear problem naming the file, not a C{RecursionError}.
        """
        for text in [
            "x = " + "[" * 5000 + "]" * 5000 + "\n",
            "x = " + "{a=" * 5000 + "}" * 5000 + "\n",
            "[plugins]\nfoo = " + "[" * 40 + "]" * 40 + "\n",
            "a" + ".a" * 5000 + " = 1\n",
        ]:
            (problem,) = self.problems(text)
            self.assertTrue(problem.startswith("config.toml: "), problem)
            self.assertIn("more than 32 levels deep", problem)

    def test_modestNestingAccepted(self) -> None:
        """
        Nesting up to the limit is left to the ordinary checks.
        """
        (problem,) = self.problems("[plugins]\nfoo = " + "[" * 30 + "]" * 30 + "\n")
        self.assertNotIn("levels deep", problem)
        self.assertIn("foo", problem)

    def test_largeFileRefused(self) -> None:
        """
        A file over 1 MiB is refused without being parsed.
        """
        (problem,) = self.problems("# " + "x" * (1024 * 1024) + "\n")
        self.assertTrue(problem.startswith("config.toml: "), problem)
        self.assertIn("larger than 1 MiB", problem)

    def test_badPortLine(self) -> None:
        """
        A bad port in the second tunnel points at that tunnel's port line.
        """
        problems = self.problems("""# my tunnels
[[tunnel]]
port = 3000

[[tunnel]]
name = "api"
port = 70000
""")
        self.assertEqual(problems, ["config.toml:7: port must be a number from 1 to 65535, not 70000"])

    def test_portRequired(self) -> None:
        """
        A tunnel without a port points at its [[tunnel]] header.
        """
        self.assertEqual(self.problems('[[tunnel]]\nport = 1\n[[tunnel]]\nname = "x"\n'),
                         ["config.toml:3: port is required"])

    def test_portTypes(self) -> None:
        """
        Ports must be integers: not strings, not booleans, not zero.
        """
        for value in ['"80"', "true", "0", "1.5"]:
            (problem,) = self.problems(f"[[tunnel]]\nport = {value}\n")
            self.assertTrue(problem.startswith("config.toml:2: port must be a number"), problem)

    def test_namesDiscovery(self) -> None:
        """
        C{mdns}, C{gossip} and C{[dns]} (issue 11): defaults on, each
        setting read, C{dns = false} short for a disabled table, and each
        bad value reported at its line (a DNS server or its addresses off
        loopback are refused).
        """
        config = loadConfig(self.write(""))
        self.assertEqual((config.mdns, config.gossip, config.dns.enabled, config.dns.port, config.dns.bind,
                          config.dns.addresses), (True, True, True, 5380, "127.0.0.1", "127.77.0.0/16"))
        config = loadConfig(self.write('mdns = false\ngossip = false\n[dns]\nport = 5399\nbind = "127.0.0.2"\n'
                           'addresses = "127.88.0.0/24"\n'))
        self.assertEqual((config.mdns, config.gossip, config.dns.port, config.dns.bind, config.dns.addresses),
                         (False, False, 5399, "127.0.0.2", "127.88.0.0/24"))
        self.assertFalse(loadConfig(self.write("dns = false\n")).dns.enabled)
        problems = self.problems('mdns = 1\n[dns]\nbind = "192.0.2.1"\naddresses = "10.0.0.0/8"\nprot = 1\n')
        self.assertEqual([p.split(":")[1] for p in problems], ["1", "3", "4", "5"])
        self.assertIn("loopback", problems[1])

    def test_unknownKeys(self) -> None:
        """
        Typos are errors, at the top level, in tables, and as tables.
        """
        problems = self.problems("""listen_on = []
[[tunnel]]
port = 1
comprees = true
[[forward]]
target = "x"
prot = 3
[extra]
a = 1
""")
        self.assertEqual(problems[0], "config.toml:1: unknown key 'listen_on' in the top level "
                                      "(expected one of: bootstrap, dns, forward, gossip, inspect, limits, listen, log_format, "
                                      "mdns, plugins, port_mapping, relay, stun_server, stun_servers, tor, tunnel, "
                                      "turn_servers, web, web_allow_remote)")
        self.assertTrue(problems[1].startswith("config.toml:4: unknown key 'comprees' in [[tunnel]]"), problems)
        self.assertTrue(problems[2].startswith("config.toml:6: target: "), problems)
        self.assertTrue(problems[3].startswith("config.toml:7: unknown key 'prot' in [[forward]]"), problems)
        self.assertEqual(problems[4], "config.toml:8: unknown table [extra]")
        self.assertEqual(len(problems), 5)

    def test_singleBracketTunnel(self) -> None:
        """
        [tunnel] instead of [[tunnel]] is explained.
        """
        self.assertEqual(self.problems("\n[tunnel]\nport = 1\n"),
                         ["config.toml:2: [tunnel] must be written [[tunnel]] (there can be several)"])

    def test_dottedKeyTable(self) -> None:
        """
        A dotted key that makes a single table of C{tunnel} points at its
        line.
        """
        self.assertEqual(self.problems('log_format = "text"\ntunnel.port = 1\n'),
                         ["config.toml:2: [tunnel] must be written [[tunnel]] (there can be several)"])

    def test_listenMustBeTCP(self) -> None:
        """
        Listen addresses must parse and be /ip4 or /ip6 with /tcp; the
        problem points at the line of the bad entry in a multi-line list.
        """
        problems = self.problems("""listen = [
  "/ip4/0.0.0.0/tcp/4001",
  "/dns4/example.com/tcp/4001",
  "/ip4/0.0.0.0/udp/4001",
  "/ip4/999.0.0.1/tcp/1",
]
""")
        self.assertEqual([p.split(": ")[0] for p in problems], ["config.toml:3", "config.toml:4", "config.toml:5"])
        self.assertIn("cannot listen on /dns4/example.com/tcp/4001", problems[0])
        self.assertIn("listen: ", problems[2])

    def test_bootstrapNeedsPeerID(self) -> None:
        """
        Bootstrap addresses must end in /p2p/<peer ID>.
        """
        (problem,) = self.problems('log_format = "text"\nbootstrap = ["/ip4/1.2.3.4/tcp/1"]\n')
        self.assertTrue(problem.startswith("config.toml:2: bootstrap: "), problem)
        self.assertIn("/p2p/", problem)

    def test_listNotString(self) -> None:
        """
        listen must be a list of strings.
        """
        self.assertEqual(self.problems('listen = "/ip4/0.0.0.0/tcp/1"\n'),
                         ["config.toml:1: listen must be a list of multiaddr strings, not a string"])
        self.assertEqual(self.problems("listen = [1]\n"),
                         ["config.toml:1: listen entries must be strings, not an integer"])

    def test_logFormat(self) -> None:
        """
        log_format is text or json.
        """
        self.assertEqual(self.problems('\nlog_format = "xml"\n'),
                         ["config.toml:2: log_format must be \"text\" or \"json\", not 'xml'"])

    def test_badNames(self) -> None:
        """
        Names are DNS-label-like.
        """
        for name in ["", "-web", "web-", "we b", "a" * 64, "wéb", "web_app"]:
            (problem,) = self.problems(f'[[tunnel]]\nport = 1\nname = "{name}"\n')
            self.assertTrue(problem.startswith("config.toml:3: name must be 1-63 letters"), problem)
        self.assertEqual(loadConfig(self.write('[[tunnel]]\nport = 1\nname = "My-App2"\n')).tunnels[0].name,
                         "My-App2")

    def test_allow(self) -> None:
        """
        allow entries must be peer IDs (the bad entry's line is given); an
        empty allow list is refused because it would admit no one.
        """
        problems = self.problems(f"""[[tunnel]]
port = 1
allow = [
  "{PEER}",
  "12D3KooWnotapeer",
]
[[tunnel]]
port = 2
allow = []
""")
        self.assertEqual(len(problems), 2)
        self.assertTrue(problems[0].startswith("config.toml:5: invalid peer ID '12D3KooWnotapeer'"), problems)
        self.assertTrue(problems[1].startswith("config.toml:9: allow is empty"), problems)

    def test_plugins(self) -> None:
        """
        [plugins] switches plugins off, all (enabled = false) or by name
        (disable = [...]); by default all are on.
        """
        self.assertEqual((Config().plugins, Config().disabledPlugins), (True, ()))
        config = loadConfig(self.write('[plugins]\ndisable = ["hello", "gossip"]\n'))
        self.assertEqual((config.plugins, config.disabledPlugins), (True, ("hello", "gossip")))
        self.assertFalse(loadConfig(self.write("[plugins]\nenabled = false\n")).plugins)
        self.assertEqual(self.problems('[plugins]\nenabled = "no"\ndisable = "hello"\nload = 1\n'), [
            "config.toml:2: enabled must be true or false, not 'no'",
            "config.toml:3: disable must be a list of plugin service names",
            "config.toml:4: unknown key 'load' in [plugins] (expected one of: disable, enabled)",
        ])
        self.assertEqual(self.problems("plugins = false\n"),
                         ["config.toml:1: plugins must be a [plugins] table, not a boolean"])

    def test_secret(self) -> None:
        """
        secret is a boolean or a non-empty string.
        """
        for value in ['""', "3"]:
            self.assertEqual(self.problems(f"[[tunnel]]\nport = 1\nsecret = {value}\n"),
                             ["config.toml:3: secret must be true, false or a non-empty string"])

    def test_secretInReadableFile(self) -> None:
        """
        A file holding a secret must not be readable by others.
        """
        path = self.write('[[tunnel]]\nport = 1\nsecret = "s3cret"\n', mode=0o644)
        (problem,) = checkConfig(path)
        self.assertIn("readable by other users", problem)
        self.assertIn("chmod 600", problem)
        os.chmod(path, 0o600)
        self.assertEqual(checkConfig(path), [])

    def test_duplicates(self) -> None:
        """
        Two tunnels with one name, or on one TCP port, are refused at the
        second; TCP and UDP may share a port number.
        """
        problems = self.problems("""[[tunnel]]
port = 80
name = "web"
[[tunnel]]
port = 81
name = "web"
[[tunnel]]
port = 80
[[tunnel]]
port = 80
udp = true
""")
        self.assertEqual(problems, [
            "config.toml:6: tunnel name 'web' is already used by tunnel #1",
            "config.toml:8: TCP port 80 is already exposed by tunnel #1",
        ])

    def test_forwardProblems(self) -> None:
        """
        A forward needs a valid target; bind must be an IP; two forwards
        cannot share a local port.
        """
        problems = self.problems(f"""[[forward]]
port = 8080
[[forward]]
target = "beam://{PEER}@h:1/web"
bind = "localhost"
[[forward]]
target = "beam://{PEER}@h:1/web"
port = 9000
[[forward]]
target = "/ip4/1.1.1.1/tcp/1/p2p/{PEER}"
port = 9000
""")
        self.assertEqual(problems, [
            "config.toml:1: target is required",
            "config.toml:5: bind must be an IP address such as \"127.0.0.1\", not 'localhost'",
            "config.toml:11: local port 9000 is already used by forward #3",
        ])

    def test_commentsAndStringsDoNotConfuseLines(self) -> None:
        """
        Headers inside multi-line strings or comments are not mistaken for
        tables.
        """
        problems = self.problems('''# [[tunnel]]
log_format = """
[[tunnel]]
port = 1
"""
[[tunnel]]  # the real one
port = 0
''')
        self.assertTrue(problems[0].startswith("config.toml:2: log_format must be"), problems)
        self.assertTrue(problems[1].startswith("config.toml:7: port must be"), problems)


class LimitsTests(ConfigTestCase):
    """
    The C{[limits]} table: resource limits over the defaults derived from
    the system, and the handshake timeout.
    """

    def test_defaults(self) -> None:
        """
        Without a C{[limits]} table the limits are L{defaultLimits} and the
        handshake timeout is the node's own.
        """
        config = loadConfig(self.write('log_format = "text"\n'))
        self.assertEqual(config.limits, defaultLimits())
        self.assertIsNone(config.handshakeTimeout)
        self.assertEqual(Config().limits, defaultLimits())

    def test_limitsApplied(self) -> None:
        """
        Each scope's table overrides only the resources it names, sizes may
        have units, named services and protocols (quoted, with dots) get
        their own limits, and the handshake timeout is read as seconds.
        """
        config = loadConfig(self.write("""
[limits]
handshake_timeout = 5
[limits.system]
fd = 4096
memory = "512MiB"
[limits.peer]
streams_inbound = 7
[limits.transient]
per_source = 2
[limits.service.web]
fd = 256
[limits.protocol."/beam/kad/1.0.0"]
streams_inbound = 512
"""))
        base = defaultLimits()
        limits = config.limits
        self.assertEqual((limits.system.fd, limits.system.memory), (4096, 512 * MiB))
        self.assertEqual(limits.system.conns, base.system.conns)
        self.assertEqual(limits.peer.streamsInbound, 7)
        self.assertEqual(limits.peer.streamsOutbound, base.peer.streamsOutbound)
        self.assertEqual(limits.transientPerSource, 2)
        self.assertEqual(limits.service("web").fd, 256)
        self.assertEqual(limits.service("other"), base.serviceDefault)
        self.assertEqual(limits.protocol("/beam/kad/1.0.0").streamsInbound, 512)
        self.assertEqual(config.handshakeTimeout, 5.0)

    def test_inlineAndDottedKeys(self) -> None:
        """
        Limits written as dotted keys or inline tables are read the same.
        """
        config = loadConfig(self.write('[limits]\npeer.fd = 9\nstream = { memory = "1MiB" }\n'))
        self.assertEqual((config.limits.peer.fd, config.limits.stream.memory), (9, MiB))

    def test_problemsHaveLines(self) -> None:
        """
        Every problem in C{[limits]} is reported at its line, whether the
        key is in the scope's own table, a dotted key, or a quoted
        protocol's table; unknown keys name what is known.
        """
        problems = self.problems("""log_format = "text"

[limits]
handshake_timeout = 0
bogus = 1
connection.conns = -1

[limits.peer]
streams_inbound = 7
wat = 3

[limits.transient]
per_source = 0

[limits.service.web]
fd = "x"

[limits.protocol."/beam/kad/1.0.0"]
streams_inbound = true
[limits.system]
memory = "lots"
""")
        self.assertEqual(problems, [
            "config.toml:4: handshake_timeout must be a number of seconds above 0 and at most 300, not 0",
            "config.toml:5: limits: unknown key 'bogus' (expected one of: allowed_peer, connection, enabled, "
            "handshake_timeout, peer, protocol, service, stream, system, transient)",
            "config.toml:6: limits.connection.conns: must be a whole number, 0 or more",
            "config.toml:10: limits.peer: unknown key 'wat' (known: conns, conns_inbound, conns_outbound, "
            "streams, streams_inbound, streams_outbound, fd, memory)",
            "config.toml:13: limits.transient.per_source: must be a whole number, 1 or more",
            "config.toml:16: limits.service.web.fd: must be a whole number, 0 or more",
            "config.toml:19: limits.protocol./beam/kad/1.0.0.streams_inbound: must be a whole number, 0 or more",
            'config.toml:21: limits.system.memory: must be a number of bytes or a size such as "64MiB"',
        ])

    def test_handshakeTimeoutValues(self) -> None:
        """
        The handshake timeout must be a positive number of seconds, at most
        five minutes.
        """
        for value in ["-1", "301", "true", '"15"', "nan", "inf"]:
            (problem,) = self.problems(f"[limits]\nhandshake_timeout = {value}\n")
            self.assertTrue(problem.startswith("config.toml:2: handshake_timeout must be"), problem)
        self.assertEqual(loadConfig(self.write("[limits]\nhandshake_timeout = 2.5\n")).handshakeTimeout, 2.5)

    def test_limitsEnabled(self) -> None:
        """
        C{[limits] enabled} is a flag, true unless set; anything but a
        boolean is a problem at its line.
        """
        self.assertIs(loadConfig(self.write("")).limitsEnabled, True)
        self.assertIs(loadConfig(self.write("[limits]\nenabled = false\n")).limitsEnabled, False)
        (problem,) = self.problems("[limits]\nenabled = 0\n")
        self.assertTrue(problem.startswith("config.toml:2: enabled must be true or false"), problem)

    def test_nesting(self) -> None:
        """
        C{limits} must be one table, and each scope in it a table (a
        service's or protocol's too); a wrong shape is one clear problem.
        """
        self.assertEqual(self.problems("limits = 5\n"),
                         ["config.toml:1: limits must be one [limits] table, not an integer"])
        self.assertEqual(self.problems("[[limits]]\n"),
                         ["config.toml:1: limits must be one [limits] table, not a list"])
        self.assertEqual(self.problems("[limits]\npeer = 5\n"),
                         ["config.toml:2: limits.peer: must be a table"])
        self.assertEqual(self.problems("[limits]\nservice = 5\n"),
                         ["config.toml:2: limits.service: must be a table of tables"])
        self.assertEqual(self.problems("[limits.service]\nweb = [1]\n"),
                         ["config.toml:2: limits.service.web: must be a table"])


class NatConfigTests(ConfigTestCase):
    """
    C{relay}, C{[relay]}, C{stun_servers} and C{stun_server}.
    """

    def test_defaults(self) -> None:
        """
        By default a node relays with the spec's limits once public,
        asks no STUN server and answers STUN once public.
        """
        config = Config()
        self.assertEqual((config.relayMode, config.relayLimits, config.stunServers, config.stunServer),
                         ("default", {}, (), True))

    def test_modes(self) -> None:
        """
        C{relay = "off" | "default" | "open"}, or a C{[relay]} table with
        C{mode} and the operator's limits, mapped to L{RelayLimits} fields.
        """
        for mode in ("off", "default", "open"):
            self.assertEqual(loadConfig(self.write(f'relay = "{mode}"\n')).relayMode, mode)
        config = loadConfig(self.write("""[relay]
mode = "open"
max_reservations = 500
max_circuits = 64
max_circuits_per_peer = 8
reservation_ttl = 1800
"""))
        self.assertEqual(config.relayMode, "open")
        self.assertEqual(config.relayLimits, {"maxReservations": 500, "maxCircuits": 64, "maxCircuitsPerPeer": 8,
                                              "reservationTTL": 1800.0})
        from beam.p2p.relay.hop import RelayLimits

        limits = RelayLimits.open(**config.relayLimits)
        self.assertEqual((limits.maxReservations, limits.duration), (500, 0))

    def test_bandwidth(self) -> None:
        """
        C{bandwidth} and C{circuit_bandwidth} are bytes per second, written
        as sizes (optionally with C{/s}); 0 means no cap, as leaving them
        out does.
        """
        config = loadConfig(self.write('[relay]\nmode = "open"\nbandwidth = "10MiB"\n'
                                       'circuit_bandwidth = "512 KiB/s"\n'))
        self.assertEqual(config.relayLimits, {"bandwidth": 10 * 1024 * 1024, "circuitBandwidth": 512 * 1024})
        from beam.p2p.relay.hop import RelayLimits

        limits = RelayLimits.open(**config.relayLimits)
        self.assertEqual((limits.bandwidth, limits.circuitBandwidth), (10 * 1024 * 1024, 512 * 1024))
        self.assertEqual(loadConfig(self.write("[relay]\nbandwidth = 0\ncircuit_bandwidth = 65536\n")).relayLimits,
                         {"circuitBandwidth": 65536})
        self.assertEqual((RelayLimits().bandwidth, RelayLimits().circuitBandwidth), (None, None))
        self.assertEqual(self.problems('[relay]\nbandwidth = "fast"\ncircuit_bandwidth = 10\n'), [
            "config.toml:2: bandwidth must be bytes per second such as \"10MiB\" (0 for no cap, else at least "
            "1024), not 'fast'",
            "config.toml:3: circuit_bandwidth must be bytes per second such as \"10MiB\" (0 for no cap, else at "
            "least 1024), not 10",
        ])

    def test_stun(self) -> None:
        """
        C{stun_servers} lists C{HOST}, C{HOST:PORT} or C{[IPv6]:PORT};
        C{stun_server} is a flag.
        """
        config = loadConfig(self.write('stun_servers = ["192.0.2.1:3478", "stun.example.org", "[2001:db8::1]:3478"]\n'
                                       "stun_server = false\n"))
        self.assertEqual(config.stunServers, ("192.0.2.1:3478", "stun.example.org", "[2001:db8::1]:3478"))
        self.assertFalse(config.stunServer)

    def test_problems(self) -> None:
        """
        Bad modes, limits, servers and flags are reported at their lines.
        """
        problems = self.problems("""log_format = "text"
stun_servers = [
  "192.0.2.1:99999",
]
stun_server = "yes"
[relay]
mode = "closed"
max_circuits = 0
reservation_ttl = "long"
max_circus = 3
""")
        self.assertEqual(problems, [
            "config.toml:3: stun_servers: '192.0.2.1:99999' is not HOST, HOST:PORT or [IPv6]:PORT",
            "config.toml:5: stun_server must be true or false, not 'yes'",
            "config.toml:7: mode must be \"off\", \"default\" or \"open\", not 'closed'",
            "config.toml:8: max_circuits must be a whole number from 1 to 1000000, not 0",
            "config.toml:9: reservation_ttl must be a whole number from 60 to 86400, not 'long'",
            "config.toml:10: unknown key 'max_circus' in [relay] (expected one of: bandwidth, circuit_bandwidth, "
            "data, duration, max_circuits, max_circuits_per_peer, max_reservations, max_reservations_per_ip, mode, "
            "request_burst, requests_per_minute, reservation_ttl)",
        ])
        self.assertEqual(self.problems('relay = "closed"\n'),
                         ["config.toml:1: relay must be \"off\", \"default\" or \"open\", not 'closed'"])
        self.assertEqual(self.problems("relay = 3\n"),
                         ["config.toml:1: relay must be \"off\", \"default\", \"open\" or a [relay] table, "
                          "not an integer"])
        self.assertEqual(self.problems("stun_servers = \"192.0.2.1\"\n"),
                         ["config.toml:1: stun_servers must be a list of \"host:port\" strings, not a string"])

    def test_portMapping(self) -> None:
        """
        C{port_mapping} is off by default, a flag, reported at its line
        when it is not one.
        """
        self.assertFalse(Config().portMapping)
        self.assertTrue(loadConfig(self.write("port_mapping = true\n")).portMapping)
        self.assertEqual(self.problems('log_format = "text"\nport_mapping = "yes"\n'),
                         ["config.toml:2: port_mapping must be true or false, not 'yes'"])

    def test_turnServers(self) -> None:
        """
        C{turn_servers} entries, inline or as C{[[turn_servers]]} tables:
        C{turn:HOST}, C{turn:HOST:PORT}, C{turn:[V6]:PORT} with an optional
        C{?transport=tcp}; the password is kept but never shown by repr.
        """
        config = loadConfig(self.write(
            'turn_servers = [{url = "turn:192.0.2.9:3479", username = "u", password = "hunter2"},\n'
            '                {url = "turn:turn.example.org?transport=tcp", username = "v", password = "p"}]\n'))
        first, second = config.turnServers
        self.assertEqual((first.host, first.port, first.username, first.password), ("192.0.2.9", 3479, "u", "hunter2"))
        self.assertEqual((second.host, second.port), ("turn.example.org", 3478))
        self.assertNotIn("hunter2", repr(config))
        tables = loadConfig(self.write('[[turn_servers]]\nurl = "turn:[2001:db8::1]:3478"\n'
                                       'username = "u"\npassword = "p"\n'))
        self.assertEqual((tables.turnServers[0].host, tables.turnServers[0].port), ("2001:db8::1", 3478))
        self.assertEqual(Config().turnServers, ())

    def test_turnProblems(self) -> None:
        """
        Bad TURN entries are reported at their lines, naming the URL or
        the key but never the password.
        """
        problems = self.problems("""log_format = "text"
[[turn_servers]]
url = "turns:192.0.2.9"
username = "u"
password = "secret-1"
[[turn_servers]]
url = "turn:192.0.2.9:99999"
username = ""
password = 7
[[turn_servers]]
url = "turn:192.0.2.9?transport=udp"
user = "x"
""")
        self.assertEqual(problems, [
            "config.toml:3: turn_servers: 'turns:192.0.2.9': turns: (TURN over TLS) is not supported; use turn:",
            "config.toml:7: turn_servers: 'turn:192.0.2.9:99999' is not a turn:HOST:PORT URL",
            "config.toml:8: turn_servers: username must be a non-empty string of at most 512 characters",
            "config.toml:9: turn_servers: password must be a non-empty string of at most 512 characters",
            "config.toml:10: turn_servers entry #3: username is required",
            "config.toml:10: turn_servers entry #3: password is required",
            "config.toml:11: turn_servers: 'turn:192.0.2.9?transport=udp': only ?transport=tcp is supported "
            "(Beam allocates TCP relays)",
            "config.toml:12: unknown key 'user' in a turn_servers entry (expected one of: password, url, username)",
        ])
        self.assertFalse(any("secret-1" in p for p in problems))
        self.assertEqual(self.problems('turn_servers = "turn:x"\n'), [
            'config.toml:1: turn_servers must be a list of {url = "turn:HOST:PORT", username = "...", '
            'password = "..."} tables'])


class MergeTests(SynchronousTestCase):
    """
    Command-line flags over the file.
    """

    def setUp(self) -> None:
        self.config = Config(
            listen=(Multiaddr("/ip4/0.0.0.0/tcp/4001"),),
            tunnels=(TunnelConfig(port=3000, name="web"), TunnelConfig(port=22, name="ssh")),
            forwards=(ForwardConfig(target="t", address=parseShareAddress(f"beam://{PEER}@h:1/a"), port=8080),),
        )

    def test_unsetFlagsKeepConfig(self) -> None:
        """
        Flags that were not given (None, empty) change nothing.
        """
        self.assertEqual(mergeOptions(self.config, listen=None, bootstrap=[], logFormat=None,
                                      tunnels=None, forwards=()), self.config)

    def test_listenReplaces(self) -> None:
        """
        --listen replaces the file's addresses; strings are parsed.
        """
        merged = mergeOptions(self.config, listen=["/ip4/127.0.0.1/tcp/5000", Multiaddr("/ip6/::1/tcp/5000")])
        self.assertEqual(merged.listen, (Multiaddr("/ip4/127.0.0.1/tcp/5000"), Multiaddr("/ip6/::1/tcp/5000")))
        self.assertEqual(merged.tunnels, self.config.tunnels)

    def test_badFlags(self) -> None:
        """
        Invalid flag values raise L{ConfigError} naming the flag; unknown
        flag names are a programming error.
        """
        e = self.assertRaises(ConfigError, mergeOptions, self.config, listen=["/dns4/x/tcp/1"])
        self.assertTrue(str(e).startswith("--listen: "))
        e = self.assertRaises(ConfigError, mergeOptions, self.config, bootstrap=["/ip4/1.2.3.4/tcp/1"])
        self.assertTrue(str(e).startswith("--bootstrap: "))
        self.assertRaises(ConfigError, mergeOptions, self.config, logFormat="xml")
        self.assertRaises(TypeError, mergeOptions, self.config, listn=["/ip4/0.0.0.0/tcp/1"])

    def test_logFormat(self) -> None:
        """
        --log-format replaces the file's.
        """
        self.assertEqual(mergeOptions(self.config, logFormat="json").logFormat, "json")

    def test_tunnelsAddAndOverride(self) -> None:
        """
        A command-line tunnel on a file tunnel's port (or name) replaces it;
        others are added.
        """
        merged = mergeOptions(self.config, tunnels=[TunnelConfig(port=3000, compress=True),
                                                    TunnelConfig(port=9, name="ssh"),
                                                    TunnelConfig(port=5000)])
        self.assertEqual(merged.tunnels, (TunnelConfig(port=3000, compress=True), TunnelConfig(port=9, name="ssh"),
                                          TunnelConfig(port=5000)))
        udp = mergeOptions(self.config, tunnels=[TunnelConfig(port=3000, udp=True)])
        self.assertEqual(len(udp.tunnels), 3)

    def test_forwardsAddAndOverride(self) -> None:
        """
        A command-line forward on a file forward's local port replaces it.
        """
        address = parseShareAddress(f"beam://{PEER}@h:1/b")
        same = ForwardConfig(target="u", address=address, port=8080)
        other = ForwardConfig(target="v", address=address, port=8081)
        self.assertEqual(mergeOptions(self.config, forwards=[same]).forwards, (same,))
        self.assertEqual(mergeOptions(self.config, forwards=[other]).forwards, self.config.forwards + (other,))


class WebInspectConfigTests(SynchronousTestCase):
    """
    C{web}, C{web_allow_remote} and C{[inspect]} (issue 13).
    """

    def load(self, text: str) -> tuple[Any, list[str]]:
        path = Path(self.mktemp())
        path.write_text(text)
        return loadConfig(path) if not checkConfig(path) else None, checkConfig(path)

    def test_defaults(self) -> None:
        """
        With nothing said, the dashboard is on 127.0.0.1:4040 and the
        inspector keeps 500 requests, 16 MiB, 64 KiB per body.
        """
        config = Config()
        self.assertEqual((config.web.enabled, config.web.address), (True, "127.0.0.1:4040"))
        self.assertEqual((config.inspect.enabled, config.inspect.maxRequests, config.inspect.maxBytes,
                          config.inspect.bodyCap), (True, 500, 16 << 20, 64 << 10))

    def test_values(self) -> None:
        """
        An address, C{"off"}, sizes as text or numbers, C{inspect = false}.
        """
        config, problems = self.load('web = "127.0.0.2:4050"\n[inspect]\nmax_requests = 20\n'
                                     'max_bytes = "1MiB"\nbody_cap = 1024\n')
        self.assertEqual(problems, [])
        self.assertEqual((config.web.host, config.web.port), ("127.0.0.2", 4050))
        self.assertEqual((config.inspect.maxRequests, config.inspect.maxBytes, config.inspect.bodyCap),
                         (20, 1 << 20, 1024))
        config, _ = self.load('web = "off"\ninspect = false\n')
        self.assertEqual((config.web.enabled, config.inspect.enabled), (False, False))
        config, _ = self.load('web = "[::1]:4041"\n')
        self.assertEqual(config.web.address, "[::1]:4041")

    def test_remoteNeedsTheFlag(self) -> None:
        """
        A non-loopback address is refused without C{web_allow_remote}, and
        accepted with it (in the file or by the flag).
        """
        _, problems = self.load('web = "0.0.0.0:4040"\n')
        self.assertEqual(len(problems), 1)
        self.assertIn("not a loopback address", problems[0])
        self.assertIn("web_allow_remote", problems[0])
        config, problems = self.load('web = "0.0.0.0:4040"\nweb_allow_remote = true\n')
        self.assertEqual(problems, [])
        self.assertEqual((config.web.host, config.web.allowRemote), ("0.0.0.0", True))
        with self.assertRaises(ConfigError):
            mergeOptions(Config(), web="192.0.2.1:4040")
        merged = mergeOptions(Config(), web="192.0.2.1:4040", webAllowRemote=True)
        self.assertEqual((merged.web.host, merged.web.allowRemote), ("192.0.2.1", True))

    def test_flags(self) -> None:
        """
        C{--web PORT}, C{--web off} and C{--no-inspect} win over the file.
        """
        self.assertEqual(mergeOptions(Config(), web="4999").web.address, "127.0.0.1:4999")
        self.assertFalse(mergeOptions(Config(), web="off").web.enabled)
        self.assertFalse(mergeOptions(Config(), inspect=False).inspect.enabled)
        self.assertTrue(mergeOptions(Config(), inspect=None).inspect.enabled)

    def test_badValues(self) -> None:
        """
        Wrong types, bad ports and out-of-range sizes are problems, each
        naming its key.
        """
        _, problems = self.load('web = 3\ninspect = "x"\n')
        self.assertEqual(len(problems), 2, problems)
        _, problems = self.load('web = "127.0.0.1:99999"\n')
        self.assertIn("port", problems[0])
        _, problems = self.load('[inspect]\nmax_requests = 0\nbody_cap = "1TiB"\ncolour = 1\n')
        self.assertEqual(len(problems), 3, problems)
