"""
DCUtR between Beam and js-libp2p (@libp2p/dcutr) in the NAT lab (issue 9;
root only, L{beam.testing.netlab} refuses clearly and never skips).

A public host runs a Beam relay (L{beam.testing.labnode}); home A runs
C{interop/peer.mjs} with C{--relay-transport --dcutr}, loaded with
C{interop/loopback-public.mjs} and C{BEAM_INTEROP_LAB=1} so that
@libp2p/dcutr takes the lab's internet (203.0.113.0/24, TEST-NET-3) for
public as Beam does, and announcing its router's mapping of its listen port
(js-libp2p announces an observed address only once AutoNAT confirmed it);
home B runs a Beam labnode with its L{HolePuncher}.

@libp2p/tcp dials from an ephemeral port (no port reuse), so a punch in
which the js peer's SYN must cross a port-restricted NAT on the Beam side
cannot work: in the punching tests Beam's home is full cone (it forwards to
any port Beam has sent from; Beam dials from its listen port), js's home
port-restricted; L{DCUtRInteropLabTests.test_twoPortRestrictedHomes} shows
the exchange complete and the punch fail cleanly with both port-restricted.
"""

from __future__ import annotations

import json
import queue
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from beam.test.test_dcutr_lab import _Proc
from beam.testing.netlab import Host, NatLab

_INTEROP = Path(__file__).resolve().parents[2] / "interop"


class _JSProc(_Proc):
    """
    C{interop/peer.mjs} inside a lab host: the same JSON-lines driving as
    a labnode (replies to commands are events named C{"reply"}), its
    stderr (the C{libp2p:dcutr} debug log) kept in L{stderr}.
    """

    def __init__(self, host: Host, *args: str, imports: tuple[str, ...] = ("./loopback-public.mjs",),
                 debug: str = "libp2p:dcutr*") -> None:
        self.name = host.name
        env = dict(os.environ, BEAM_INTEROP_LAB="1", DEBUG=debug)
        preload = [arg for module in ("./polyfill.mjs", *imports) for arg in ("--import", module)]
        self.process = host.run(
            ["node", *preload, "peer.mjs", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            cwd=str(_INTEROP), env=env,
        )
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[str] = []
        self._nextId = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=self._readErr, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "text": line.rstrip()}
            if "event" not in event:
                event = dict(event, event="reply")
            self._queue.put(event)

    def _readErr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line.rstrip())

    def call(self, cmd: str, timeout: float = 25, **fields: Any) -> dict[str, Any]:
        """
        Send a command and wait for its reply; fail on C{"ok": false}.
        """
        self._nextId += 1
        requestId = self._nextId
        self.send(cmd=cmd, id=requestId, timeoutMs=int(timeout * 1000) - 500, **fields)
        reply = self.waitEvent("reply", timeout=timeout, id=requestId)
        if reply.get("ok") is not True:
            raise AssertionError(f"js {cmd}: {reply}; stderr:\n" + "\n".join(self.stderr[-60:]))
        return reply


class DCUtRInteropLabTests(SynchronousTestCase):
    """
    A Beam relay, a js-libp2p home and a Beam home.
    """

    def setUp(self) -> None:
        self.lab = NatLab()
        self.addCleanup(self.lab.close)

    def _start(self, natJS: str, natBeam: str) -> tuple[_Proc, _JSProc, _Proc, str, Host, Host]:
        relayHost = self.lab.addPublic("relay")
        homeA = self.lab.addHome("alice", natJS)
        homeB = self.lab.addHome("bob", natBeam)
        relay = _Proc(relayHost, "--port", "4001", "--relay-service")
        relayPeer = relay.waitEvent("ready")["peer"]
        relayAddr = f"/ip4/{relayHost.addr}/tcp/4001/p2p/{relayPeer}"
        beam = _Proc(homeB, "--port", "4001", "--reserve", relayAddr, "--dial-timeout", "3",
                     "--idle-timeout", "30")
        js = _JSProc(homeA, "--listen", f"/ip4/{homeA.addr}/tcp/4001",
                     "--append-announce", f"/ip4/{homeA.reachableAddr}/tcp/4001",
                     "--relay-transport", "--dcutr", "--no-connection-monitor")
        self.addCleanup(self._report, relay, js, beam)
        ready = js.waitEvent("ready")
        self.assertTrue(ready["loopbackPublic"], ready)
        beam.waitEvent("reserved")
        return relay, js, beam, relayAddr, homeA, homeB

    def _report(self, relay: _Proc, js: _JSProc, beam: _Proc) -> None:
        # Shown by the test runner only when the test failed.
        for p in (relay, beam, js):
            print(f"--- {p.name}", json.dumps(p.drain()), file=sys.stderr)
        print("--- js stderr\n" + "\n".join(js.stderr), file=sys.stderr)
        for p in (relay, beam):
            if p.process.poll() is None:
                try:
                    p.send(cmd="quit")
                except (BrokenPipeError, ValueError):
                    pass
        if js.process.poll() is None:
            try:
                js.send(cmd="stop", id=0)
            except (BrokenPipeError, ValueError):
                pass

    def test_jsDialsBeamThroughRelay(self) -> None:
        """
        js dials Beam through the Beam relay; Beam received the relayed
        connection, so Beam (role B) sends CONNECT, @libp2p/dcutr answers
        CONNECT with its announced public address, Beam sends SYNC, and a
        direct, non-limited connection results: on Beam's side from js's
        router's WAN address, on js's side to Beam's router's WAN address and
        listen port.
        """
        relay, js, beam, relayAddr, homeA, homeB = self._start("portrestricted", "fullcone")
        beamPeer = beam.waitEvent("ready")["peer"]
        jsPeer = js.waitEvent("ready")["peerId"]
        dialled = js.call("dial", addr=f"{relayAddr}/p2p-circuit/p2p/{beamPeer}")
        self.assertIn("/p2p-circuit", dialled["remoteAddr"])
        synced = beam.waitEvent("synced", role="B")
        self.assertEqual(synced["peer"], jsPeer)
        self.assertEqual(synced["addrs"], [f"/ip4/{homeA.reachableAddr}/tcp/4001"])
        punched = beam.waitEvent("punched")
        self.assertEqual(punched["role"], "B")
        beam.send(cmd="echo", peer=jsPeer, data="after the punch")
        echoed = beam.waitEvent("echoed")
        self.assertTrue(echoed["ok"], echoed)
        self.assertFalse(echoed["limited"], echoed)
        self.assertEqual(echoed["path"], "hole-punched")
        self.assertTrue(echoed["remote"].startswith(f"/ip4/{homeA.reachableAddr}/tcp/"), echoed)
        peers = js.call("peers")["peers"]
        direct = [p for p in peers if p["peerId"] == beamPeer and "/p2p-circuit" not in p["remoteAddr"]]
        self.assertTrue(direct, peers)
        self.assertEqual(direct[0]["remoteAddr"], f"/ip4/{homeB.reachableAddr}/tcp/4001/p2p/{beamPeer}")

    def test_beamDialsJSThroughRelay(self) -> None:
        """
        The other way round: js reserves on the Beam relay and Beam dials it
        through the relay; js received the relayed connection, so
        @libp2p/dcutr (role B) sends CONNECT, Beam answers as A with its
        router's mapping and dials at SYNC, js dials after half the RTT as
        the upgrade's responder, and Beam ends with a hole-punched, direct
        connection from js's router's WAN address (js's own dial, which came
        in through Beam's full-cone router).
        """
        relay, js, beam, relayAddr, homeA, homeB = self._start("portrestricted", "fullcone")
        beamPeer = beam.waitEvent("ready")["peer"]
        jsPeer = js.waitEvent("ready")["peerId"]
        js.call("relayListen", addr=relayAddr)
        # Beam learns its observed address (what it sends in CONNECT).
        beam.send(cmd="identify", addr=relayAddr)
        beam.waitEvent("identified")
        beam.send(cmd="dial", addr=f"{relayAddr}/p2p-circuit/p2p/{jsPeer}")
        self.assertTrue(beam.waitEvent("dialled")["limited"])
        synced = beam.waitEvent("synced", role="A")
        self.assertEqual(synced["peer"], jsPeer)
        self.assertEqual(synced["addrs"], [f"/ip4/{homeA.reachableAddr}/tcp/4001"])
        beam.waitEvent("punched", role="A")
        beam.send(cmd="echo", peer=jsPeer, data="after the punch")
        echoed = beam.waitEvent("echoed")
        self.assertTrue(echoed["ok"], echoed)
        self.assertFalse(echoed["limited"], echoed)
        self.assertEqual(echoed["path"], "hole-punched")
        self.assertTrue(echoed["remote"].startswith(f"/ip4/{homeA.reachableAddr}/tcp/"), echoed)
        peers = js.call("peers")["peers"]
        direct = [p for p in peers if p["peerId"] == beamPeer and "/p2p-circuit" not in p["remoteAddr"]]
        self.assertEqual([p["remoteAddr"] for p in direct], [f"/ip4/{homeB.reachableAddr}/tcp/4001/p2p/{beamPeer}"])

    def test_twoPortRestrictedHomes(self) -> None:
        """
        Both homes port-restricted: the exchange still completes (js answers
        CONNECT, takes SYNC and dials Beam's router), but @libp2p/tcp dials
        from an ephemeral port, not its listen port, so neither router lets
        the other's SYN in; Beam gives up with its one clear line and the
        relayed connection keeps working.
        """
        relay, js, beam, relayAddr, homeA, homeB = self._start("portrestricted", "portrestricted")
        beamPeer = beam.waitEvent("ready")["peer"]
        js.call("dial", addr=f"{relayAddr}/p2p-circuit/p2p/{beamPeer}")
        synced = beam.waitEvent("synced", role="B")
        self.assertEqual(synced["addrs"], [f"/ip4/{homeA.reachableAddr}/tcp/4001"])
        beam.waitEvent("failed", timeout=60)
        self.assertTrue(any(f"A dialing [ Multiaddr(/ip4/{homeB.reachableAddr}/tcp/4001) ]" in line
                            for line in js.stderr), js.stderr)
        beam.send(cmd="echo", peer=js.waitEvent("ready")["peerId"], data="still relayed")
        echoed = beam.waitEvent("echoed")
        self.assertTrue(echoed["ok"], echoed)
        self.assertTrue(echoed["limited"], echoed)
