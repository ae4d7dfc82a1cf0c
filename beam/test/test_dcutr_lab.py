"""
DCUtR in the NAT lab (issue 9): real nodes in network namespaces behind
real Linux NATs (L{beam.testing.netlab}; root only, the lab refuses clearly
and never skips).

Three L{beam.testing.labnode} processes: a public relay and two homes.
Home B reserves on the relay, home A dials B through it, and the hole
puncher upgrades the relayed connection, or fails and stays relayed.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from beam.testing.netlab import Host, NatLab

#: How long one expected event may take to come (generous: the machine is
#: shared; the tests never assert durations).
_WAIT = 25.0


class _Proc:
    """
    One labnode process: JSON commands in, JSON events out (read by a
    thread into a queue, every event kept in L{events} for reports).
    """

    def __init__(self, host: Host, *args: str) -> None:
        self.name = host.name
        self.process = host.run(
            [sys.executable, "-m", "beam.testing.labnode", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "text": line.rstrip()}
            self._queue.put(event)

    def send(self, **cmd: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(cmd) + "\n")
        self.process.stdin.flush()

    def wait(self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float = _WAIT) -> dict[str, Any]:
        """
        The first event (already seen or coming) that C{match}es.
        """
        for event in self.events:
            if match(event):
                return event
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: no {what} within {timeout:g} s; saw {self.events}")
            try:
                event = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            self.events.append(event)
            if event.get("event") == "error":
                raise AssertionError(f"{self.name}: {event}; saw {self.events}")
            if match(event):
                return event

    def waitEvent(self, name: str, timeout: float = _WAIT, **fields: Any) -> dict[str, Any]:
        return self.wait(lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items()),
                         f"{name} {fields or ''}", timeout)

    def drain(self) -> list[dict[str, Any]]:
        while True:
            try:
                self.events.append(self._queue.get_nowait())
            except queue.Empty:
                return self.events


class DCUtRLabTests(SynchronousTestCase):
    """
    A relay, two homes, one hole punch per test.
    """

    def setUp(self) -> None:
        self.lab = NatLab()
        self.addCleanup(self.lab.close)

    def _start(self, natA: str, natB: str, dialTimeout: str = "3") -> tuple[_Proc, _Proc, _Proc, Host, Host]:
        relayHost = self.lab.addPublic("relay")
        homeA = self.lab.addHome("alice", natA)
        homeB = self.lab.addHome("bob", natB)
        relay = _Proc(relayHost, "--port", "4001", "--relay-service")
        relayPeer = relay.waitEvent("ready")["peer"]
        relayAddr = f"/ip4/{relayHost.addr}/tcp/4001/p2p/{relayPeer}"
        b = _Proc(homeB, "--port", "4001", "--reserve", relayAddr, "--dial-timeout", dialTimeout,
                  "--idle-timeout", "2")
        a = _Proc(homeA, "--port", "4001", "--dial-timeout", dialTimeout, "--idle-timeout", "2")
        self.addCleanup(self._report, relay, a, b)
        b.waitEvent("reserved")
        bPeer = b.waitEvent("ready")["peer"]
        a.waitEvent("ready")
        # A learns its observed address from the relay first (what it sends
        # in CONNECT), as a node that has been up for a while would have.
        a.send(cmd="identify", addr=relayAddr)
        a.waitEvent("identified")
        a.send(cmd="dial", addr=f"{relayAddr}/p2p-circuit/p2p/{bPeer}")
        dialled = a.waitEvent("dialled")
        self.assertTrue(dialled["limited"], dialled)
        return relay, a, b, homeA, homeB

    def _report(self, *procs: _Proc) -> None:
        # Shown by the test runner only when the test failed.
        for p in procs:
            print(f"--- {p.name}", json.dumps(p.drain()), file=sys.stderr)
        for p in procs:
            if p.process.poll() is None:
                try:
                    p.send(cmd="quit")
                except (BrokenPipeError, ValueError):
                    pass

    def test_portRestrictedPair(self) -> None:
        """
        Two port-restricted homes: B punches (CONNECT, SYNC, simultaneous
        open); a stream opened after that goes over a direct connection to
        B's router's public address and port, the connection is marked
        hole-punched on both sides, and the relayed connection closes once
        idle.
        """
        relay, a, b, homeA, homeB = self._start("portrestricted", "portrestricted")
        bPeer = b.waitEvent("ready")["peer"]
        punchedB = b.waitEvent("punched")
        punchedA = a.waitEvent("punched")
        self.assertEqual(punchedA["role"], "A")
        self.assertEqual(punchedB["role"], "B")
        a.send(cmd="echo", peer=bPeer, data="after the punch")
        echoed = a.waitEvent("echoed")
        self.assertTrue(echoed["ok"], echoed)
        self.assertFalse(echoed["limited"], echoed)
        self.assertEqual(echoed["path"], "hole-punched")
        self.assertEqual(echoed["remote"], f"/ip4/{homeB.reachableAddr}/tcp/4001")
        # The relayed connection is retired and closes once idle.
        a.wait(lambda e: e.get("event") == "disconnected" and bool(e.get("limited")) and e.get("peer") == bPeer,
               "the relayed connection to B closing")

    def test_fullConeAndPortRestricted(self) -> None:
        """
        A full-cone home dials a port-restricted one through the relay: the
        punch works too.
        """
        relay, a, b, homeA, homeB = self._start("fullcone", "portrestricted")
        bPeer = b.waitEvent("ready")["peer"]
        b.waitEvent("punched")
        a.send(cmd="echo", peer=bPeer, data="after the punch")
        echoed = a.waitEvent("echoed")
        self.assertTrue(echoed["ok"], echoed)
        self.assertFalse(echoed["limited"], echoed)
        self.assertEqual(echoed["remote"], f"/ip4/{homeB.reachableAddr}/tcp/4001")

    def test_symmetricAndPortRestricted(self) -> None:
        """
        A symmetric NAT facing a port-restricted one cannot be punched over
        TCP: B gives up after three attempts with one clear line, and the
        relayed connection keeps working.
        """
        relay, a, b, homeA, homeB = self._start("symmetric", "portrestricted", dialTimeout="2")
        bPeer = b.waitEvent("ready")["peer"]
        failed = b.waitEvent("failed", timeout=40)
        relayPeer = relay.waitEvent("ready")["peer"]
        self.assertEqual(failed["relay"], relayPeer)
        b.wait(lambda e: e.get("event") == "log"
               and f"hole punch failed, staying on relay via {relayPeer}" in e.get("text", ""),
               "the failure line")
        self.assertEqual(len([e for e in b.events if e.get("event") == "attempt"]), 3)
        a.send(cmd="echo", peer=bPeer, data="still relayed")
        echoed = a.waitEvent("echoed")
        self.assertTrue(echoed["ok"], echoed)
        self.assertTrue(echoed["limited"], echoed)
