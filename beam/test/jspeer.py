"""
Drive a real js-libp2p peer from Python tests.

Interop tests are the only proof that Beam speaks libp2p rather than a
dialect of its own, so the other side must be the reference implementation,
not our own code.  L{JSPeer} runs C{interop/peer.mjs} (js-libp2p 3.x, pinned by
C{interop/package-lock.json}) as a child process and talks to it with one JSON
object per line: commands go to its stdin, replies and events come back on its
stdout, and its stderr is kept for error messages.

Install the JavaScript side once with C{npm ci --prefix interop} from the
repository root.  Tests call L{requireInterop} first: without Node or the
installed modules they are skipped on a developer's machine but I{fail} when
the C{CI} environment variable is set, so a broken install can never turn the
interop suite into a silent no-op.

This is a helper module for tests, not a test module; the reactor is passed
in by the caller like everywhere else in Beam.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from unittest import SkipTest, TestCase

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

#: The directory holding package.json, package-lock.json and peer.mjs.
INTEROP_DIR = Path(__file__).resolve().parents[2] / "interop"

#: The protocol the JS peer echoes on.
ECHO_PROTOCOL = "/beam/echo/1.0.0"

#: The oldest Node major version the pinned js-libp2p runs on (with polyfill.mjs).
MIN_NODE_MAJOR = 20

_STDERR_KEEP = 64 * 1024
_MAX_LINE = 16 * 1024 * 1024


class JSPeerError(Exception):
    """
    The JavaScript interop peer misbehaved, failed to start, or exited.
    """


class JSPeerCommandFailed(JSPeerError):
    """
    The JavaScript peer answered a command with C{"ok": false}.

    @ivar reply: the whole reply object.
    """

    def __init__(self, message: str, reply: dict[str, Any]) -> None:
        super().__init__(message)
        self.reply = reply


class JSPeerTimeout(JSPeerError):
    """
    The JavaScript peer did not answer or emit an event in time.
    """


def interopAvailable(
    interopDir: Path = INTEROP_DIR,
    which: Callable[[str], str | None] = shutil.which,
) -> str | None:
    """
    Tell whether the JavaScript interop peer can run here.

    @return: L{None} if Node and C{interop/node_modules} are present, else a
        sentence saying what is missing and how to install it.
    """
    node = which("node")
    if node is None:
        return "node is not installed (the interop tests need Node >= 20)"
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot run {node} --version: {e}"
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        return f"node {version} is too old (the interop tests need Node >= {MIN_NODE_MAJOR})"
    if not (interopDir / "node_modules" / "libp2p").is_dir():
        return f"{interopDir}/node_modules is not installed: run `npm ci --prefix interop`"
    return None


def requireInterop(
    testcase: TestCase,
    available: Callable[[], str | None] = interopAvailable,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """
    Skip C{testcase} if the interop peer cannot run, except under CI.

    Under CI (the C{CI} environment variable is set and not empty) a missing
    install is a failure of the build, not a reason to skip, so this calls
    C{testcase.fail} instead.

    @raise SkipTest: when the peer is unavailable and C{CI} is unset.
    """
    reason = available()
    if reason is None:
        return
    if environ.get("CI"):
        testcase.fail(f"interop peer unavailable under CI: {reason}")
    raise SkipTest(reason)


def echoPayload(length: int, seed: int | str = 0) -> bytes:
    """
    The bytes the JS peer sends for an C{echo} command.

    It is the AES-256-CTR keystream under C{sha256("beam-echo:" + seed)} with
    an all-zero initial counter block; peer.mjs computes the same, so a test
    can check the JS side's C{sha256Sent} or serve/verify the payload itself.
    """
    key = hashlib.sha256(f"beam-echo:{seed}".encode()).digest()
    encryptor = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
    return encryptor.update(b"\0" * length) + encryptor.finalize()


class _JSPeerProtocol(ProcessProtocol):
    """
    Split the child's stdout into JSON lines for its L{JSPeer}.
    """

    def __init__(self, peer: JSPeer) -> None:
        self._peer = peer
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > _MAX_LINE:
            self._peer._garbage(b"(unterminated line over 16 MiB)")
            self._buffer = b""
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                self._peer._garbage(line)
                continue
            if not isinstance(obj, dict):
                self._peer._garbage(line)
                continue
            self._peer._received(obj)

    def errReceived(self, data: bytes) -> None:
        self._peer._stderr(data)

    def processEnded(self, reason: Failure) -> None:
        self._peer._ended(reason)


class JSPeer:
    """
    A running js-libp2p peer (C{interop/peer.mjs}).

    Create one with L{JSPeer.start}; always L{stop} it (trial reports a dirty
    reactor otherwise).

    @ivar peerId: the peer's ID, base58.
    @ivar addrs: its listen multiaddrs, each ending in C{/p2p/<peerId>}.
    @ivar events: every event object it printed (C{peer:connect},
        C{peer:disconnect}, C{identify}, C{ready}), oldest first.
    @ivar exitStatus: L{None} while running, then the process's exit code (or
        a negative signal number).
    """

    peerId: str
    addrs: list[str]

    def __init__(self, reactor: Any, startTimeout: float = 30) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._startTimeout = startTimeout
        self._nextId = 0
        self._pending: dict[int, defer.Deferred[dict[str, Any]]] = {}
        self._waiters: list[
            tuple[str, Callable[[dict[str, Any]], bool] | None, defer.Deferred[dict[str, Any]]]
        ] = []
        self._stderrBuffer = bytearray()
        self._ready: defer.Deferred[JSPeer] = defer.Deferred()
        self._exited: defer.Deferred[None] = defer.Deferred()
        self._transport: IProcessTransport | None = None
        self.peerId = ""
        self.addrs = []
        self.events: list[dict[str, Any]] = []
        self.exitStatus: int | None = None

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls,
        reactor: IReactorProcess,
        security: str = "noise",
        seed: str | bytes | None = None,
        extraArgs: Iterable[str] = (),
        startTimeout: float = 30,
        loopbackPublic: bool = False,
    ) -> defer.Deferred[JSPeer]:
        """
        Spawn a JS peer and wait for it to listen.

        @param reactor: provides L{IReactorProcess} and L{IReactorTime}.
        @param security: C{"noise"}, C{"tls"}, C{"both"} (noise first) or a
            comma list such as C{"tls,noise"}: the encrypters it offers, in
            order.
        @param seed: 32 bytes (or 64 hex digits) for a deterministic Ed25519
            identity; random when L{None}.
        @param extraArgs: more peer.mjs options, e.g. C{["--ipv6"]}.
        @param loopbackPublic: load C{interop/loopback-public.mjs}, so that
            @libp2p/autonat-v2 and @libp2p/dcutr take loopback addresses for
            public ones (they refuse private addresses, and loopback is all
            the tests may use); the peer's C{ready} event then says
            C{"loopbackPublic": true}.
        @return: fires with the L{JSPeer} once it printed its C{ready} event,
            or fails with L{JSPeerError} (with its stderr) if it exits or
            times out first.
        """
        node = shutil.which("node")
        if node is None:
            return defer.fail(JSPeerError("node is not installed"))
        if isinstance(seed, bytes):
            if len(seed) != 32:
                return defer.fail(ValueError("seed must be 32 bytes"))
            seed = seed.hex()
        args = [node, "--import", "./polyfill.mjs"]
        if loopbackPublic:
            args += ["--import", "./loopback-public.mjs"]
        args += ["peer.mjs", "--security", security]
        if seed is not None:
            args += ["--seed", seed]
        args += list(extraArgs)
        self = cls(reactor, startTimeout)
        env = dict(os.environ)
        self._transport = reactor.spawnProcess(
            _JSPeerProtocol(self), node, args, env=env, path=str(INTEROP_DIR)
        )
        ready = self._ready

        def startTimedOut(result: object, timeout: float) -> Failure:
            self.kill()
            return Failure(JSPeerTimeout(self._withStderr(f"not ready after {timeout} s")))

        ready.addTimeout(startTimeout, self._clock, onTimeoutCancel=startTimedOut)
        return ready

    def stop(self, timeout: float = 10) -> defer.Deferred[None]:
        """
        Ask the peer to stop and wait for its process to exit.

        The process is killed if it has not exited after C{timeout} seconds.
        Stopping an exited peer succeeds at once.
        """
        if self.exitStatus is not None:
            return defer.succeed(None)
        exited = defer.Deferred[None]()
        self._exited.addBoth(lambda r: (exited.callback(None), r)[1])
        try:
            self.request({"cmd": "stop"}, timeout=timeout).addErrback(lambda f: None)
        except JSPeerError:
            pass
        killer = self._clock.callLater(timeout, self.kill)
        exited.addBoth(lambda r: (killer.cancel() if killer.active() else None, r)[1])
        return exited

    def kill(self) -> None:
        """
        Kill the process at once (no clean libp2p shutdown).
        """
        if self._transport is not None and self.exitStatus is None:
            try:
                self._transport.signalProcess("KILL")
            except Exception:
                pass

    @property
    def stderr(self) -> str:
        """
        The last 64 KiB the peer wrote to stderr.
        """
        return self._stderrBuffer.decode("utf-8", "replace")

    @property
    def addr(self) -> str:
        """
        The first IPv4 listen address, with its C{/p2p/} suffix.
        """
        for a in self.addrs:
            if a.startswith("/ip4/"):
                return a
        return self.addrs[0]

    # ------------------------------------------------------------ requests

    def request(self, cmd: dict[str, Any], timeout: float = 30) -> defer.Deferred[dict[str, Any]]:
        """
        Send one command and wait for its reply.

        An C{"id"} is added; so is C{"timeoutMs"} (unless given) so that the
        JS side gives up on its own work at about the same time.

        @return: fires with the reply (C{"ok"} is C{True}); fails with
            L{JSPeerCommandFailed} on C{"ok": false}, L{JSPeerTimeout} after
            C{timeout} seconds, or L{JSPeerError} if the process exits.
        """
        if self.exitStatus is not None or self._transport is None:
            return defer.fail(JSPeerError(self._withStderr("the JS peer is not running")))
        self._nextId += 1
        requestId = self._nextId
        message = dict(cmd, id=requestId)
        message.setdefault("timeoutMs", max(1, int(timeout * 1000) - 500))
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._pending[requestId] = d

        def timedOut(result: object, t: float) -> Failure:
            self._pending.pop(requestId, None)
            return Failure(JSPeerTimeout(self._withStderr(f"no reply to {cmd!r} after {t} s")))

        d.addTimeout(timeout, self._clock, onTimeoutCancel=timedOut)
        self._transport.write(json.dumps(message).encode() + b"\n")
        return d

    def dial(self, addr: str, **kw: Any) -> defer.Deferred[dict[str, Any]]:
        """
        Connect to C{addr}; the reply has C{peerId}, C{remoteAddr},
        C{encryption} and C{multiplexer}.
        """
        return self.request({"cmd": "dial", "addr": addr}, **kw)

    def ping(self, addr: str, count: int = 1, **kw: Any) -> defer.Deferred[dict[str, Any]]:
        """
        Run C{/ipfs/ping/1.0.0} C{count} times; the reply has C{rtts}.
        """
        return self.request({"cmd": "ping", "addr": addr, "count": count}, **kw)

    def identify(self, addr: str, **kw: Any) -> defer.Deferred[dict[str, Any]]:
        """
        Dial C{addr} and run identify on the connection.
        """
        return self.request({"cmd": "identify", "addr": addr}, **kw)

    def echo(
        self,
        addr: str,
        nbytes: int,
        protocol: str = ECHO_PROTOCOL,
        seed: int | str = 0,
        **kw: Any,
    ) -> defer.Deferred[dict[str, Any]]:
        """
        Send L{echoPayload}C{(nbytes, seed)} on a new C{protocol} stream,
        half-close, and read until the remote half-closes.  The reply has
        C{sent}, C{received}, C{sha256Sent} and C{sha256Received}.
        """
        return self.request(
            {"cmd": "echo", "addr": addr, "bytes": nbytes, "protocol": protocol, "seed": seed},
            **kw,
        )

    def peers(self, **kw: Any) -> defer.Deferred[dict[str, Any]]:
        """
        List open connections (reply key C{peers}).
        """
        return self.request({"cmd": "peers"}, **kw)

    # ------------------------------------------------------------ NAT traversal

    def multiaddrs(self, **kw: Any) -> defer.Deferred[dict[str, Any]]:
        """
        The addresses the peer advertises now (reply key C{addrs}),
        relayed ones included.
        """
        return self.request({"cmd": "multiaddrs"}, **kw)

    def relayListen(self, relayAddr: str, **kw: Any) -> defer.Deferred[dict[str, Any]]:
        """
        Reserve on the circuit relay v2 relay at C{relayAddr} (ending in
        C{/p2p/RELAY}; the peer needs C{--relay-transport}).  The reply's
        C{addrs} are the peer's C{.../p2p/RELAY/p2p-circuit} addresses.
        """
        return self.request({"cmd": "relayListen", "addr": relayAddr}, **kw)

    def relayReservations(self, **kw: Any) -> defer.Deferred[dict[str, Any]]:
        """
        The reservations this peer's relay service holds (C{--relay-server});
        reply key C{reservations}: C{peerId}, C{addr}, C{expiry} (ms) and
        C{limit}.
        """
        return self.request({"cmd": "relayReservations"}, **kw)

    def autonatVerify(self, serverAddr: str, verify: str, **kw: Any) -> defer.Deferred[dict[str, Any]]:
        """
        Ask the AutoNAT v2 server at C{serverAddr} to dial this peer back on
        C{verify} (one of its own addresses), with @libp2p/autonat-v2's
        client (C{--autonat}).  The reply has C{result} (C{True} once the
        client confirmed the address, else L{None}) and the counts of
        C{success} and C{failure} answers it took from the server.
        """
        return self.request({"cmd": "autonatVerify", "addr": serverAddr, "verify": verify}, **kw)

    # ------------------------------------------------------------ events

    def waitForEvent(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 30,
    ) -> defer.Deferred[dict[str, Any]]:
        """
        Wait for an event called C{name} that satisfies C{predicate}.

        Events already received count, so there is no race between causing
        an event and waiting for it: the earliest matching one is returned.
        """
        for event in self.events:
            if event.get("event") == name and (predicate is None or predicate(event)):
                return defer.succeed(event)
        if self.exitStatus is not None:
            return defer.fail(JSPeerError(self._withStderr(f"exited before event {name!r}")))
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        entry = (name, predicate, d)
        self._waiters.append(entry)

        def timedOut(result: object, t: float) -> Failure:
            if entry in self._waiters:
                self._waiters.remove(entry)
            return Failure(JSPeerTimeout(self._withStderr(f"no {name!r} event after {t} s")))

        d.addTimeout(timeout, self._clock, onTimeoutCancel=timedOut)
        return d

    # ------------------------------------------------------------ from the protocol

    def _received(self, obj: dict[str, Any]) -> None:
        if "event" in obj:
            self.events.append(obj)
            if obj["event"] == "ready" and not self._ready.called:
                self.peerId = obj["peerId"]
                self.addrs = list(obj["addrs"])
                self._ready.callback(self)
            for entry in list(self._waiters):
                name, predicate, d = entry
                if obj["event"] == name and (predicate is None or predicate(obj)):
                    self._waiters.remove(entry)
                    d.callback(obj)
            return
        requestId = obj.get("id")
        d = self._pending.pop(requestId, None) if isinstance(requestId, int) else None
        if d is None:
            self._stderr(f"[jspeer] unmatched reply: {obj!r}\n".encode())
            return
        if obj.get("ok") is True:
            d.callback(obj)
        else:
            d.errback(JSPeerCommandFailed(str(obj.get("error", "command failed")), obj))

    def _garbage(self, line: bytes) -> None:
        self._stderr(b"[jspeer] non-JSON stdout line: " + line[:200] + b"\n")

    def _stderr(self, data: bytes) -> None:
        self._stderrBuffer += data
        if len(self._stderrBuffer) > _STDERR_KEEP:
            del self._stderrBuffer[: len(self._stderrBuffer) - _STDERR_KEEP]

    def _ended(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.exitStatus = 0
        elif reason.check(ProcessTerminated):
            value = reason.value
            self.exitStatus = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        else:
            self.exitStatus = -1
        why = self._withStderr(f"the JS peer exited with status {self.exitStatus}")
        if not self._ready.called:
            self._ready.errback(JSPeerError(why))
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(JSPeerError(why))
        waiters, self._waiters = self._waiters, []
        for _, _, d in waiters:
            d.errback(JSPeerError(why))
        self._exited.callback(None)

    def _withStderr(self, message: str) -> str:
        tail = self.stderr[-4000:].strip()
        return f"{message}; stderr:\n{tail}" if tail else message
