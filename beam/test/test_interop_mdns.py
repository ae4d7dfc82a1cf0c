"""
mDNS interoperability with js-libp2p's C{@libp2p/mdns} (issue 11's proof:
"js-libp2p's mDNS discovers a Beam node and Beam discovers js").

An isolated LAN (L{beam.testing.lan.FlatLan}: one bridge, multicast on, no
router, 198.51.100.0/24; root only, never skipped) with a real C{beam
daemon} (mDNS on, no bootstrap, listening on its LAN address) in one host
and C{interop/peer.mjs --mdns} (js-libp2p 3.x with @libp2p/mdns 12.0.32,
listening on TCP on its LAN address) in the other.  Both orders are
covered: js starting after Beam (js's first query is answered by Beam) and
Beam starting after js (Beam's start-up announcement and query reach js,
js's answer reaches Beam).  Beam then dials js over TCP, as it dials every
peer it finds by mDNS.

Times are printed as one JSON line; the asserted bound is the waits'
deadline, generous for a loaded machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from twisted.trial.unittest import SynchronousTestCase

from beam.test.jspeer import requireInterop
from beam.test.test_interop_dcutr_lab import _JSProc
from beam.testing.labbeam import BeamProcess, LabBeam, waitFor
from beam.testing.lan import FlatLan
from beam.testing.netlab import Host

_INTEROP = Path(__file__).resolve().parents[2] / "interop"

#: How long discovery may take before the test fails (the measured times,
#: well under a second, are printed).
DISCOVERY_WAIT = 10.0
#: Beam's and js's TCP port on their LAN addresses.
PORT = 4001


class _MdnsJS(_JSProc):
    """
    C{interop/peer.mjs --mdns} in a lab host (C{BEAM_INTEROP_LAB=1}, which
    lets it listen on and dial the LAN's addresses and run mDNS at all),
    with @libp2p/mdns's debug log on stderr.
    """

    def __init__(self, host: Host, *args: str) -> None:
        super().__init__(host, "--mdns", "--listen", f"/ip4/{host.addr}/tcp/{PORT}", *args,
                         imports=(), debug="libp2p:mdns*")

    def stop(self) -> None:
        """
        Ask the peer to stop, then kill it (by PID) if it lingers.
        """
        if self.process.poll() is None:
            try:
                self.send(cmd="stop", id=0)
                self.process.wait(timeout=10)
            except (BrokenPipeError, ValueError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=10)


class MdnsInteropTests(SynchronousTestCase):
    """
    A Beam daemon and a js-libp2p node with @libp2p/mdns on one LAN.
    """

    lab: ClassVar[FlatLan]
    beams: ClassVar[LabBeam]
    beamHost: ClassVar[Host]
    jsHost: ClassVar[Host]
    timings: ClassVar[dict[str, Any]]
    started: ClassVar[float]

    @classmethod
    def setUpClass(cls) -> None:
        cls.started = time.monotonic()
        cls.timings = {}
        cls.lab = FlatLan()
        try:
            cls.beams = LabBeam(cls.lab)
            cls.beamHost = cls.lab.addLanHost("beam")
            cls.jsHost = cls.lab.addLanHost("js")
        except BaseException:
            cls.lab.close()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        print(json.dumps({"mdns_interop_timings": cls.timings, "module_s": round(time.monotonic() - cls.started, 1)}))
        try:
            cls.beams.close()
        finally:
            cls.lab.close()

    def setUp(self) -> None:
        requireInterop(self)

    # -- helpers ---------------------------------------------------------

    def startBeam(self, label: str) -> tuple[str, BeamProcess, str, float]:
        """
        C{beam daemon} (mDNS on by default, no bootstrap) on the Beam
        host's LAN address; its home, process, peer ID and when it said it
        was ready.
        """
        home = self.beams.newHome(label)
        p = self.beams.beam(self.beamHost, home, "daemon", "--listen", f"/ip4/{self.beamHost.addr}/tcp/{PORT}",
                            "--json", label=label)
        self.addCleanup(p.kill)
        ready = p.readJSON(timeout=60)
        if ready.get("event") != "ready":
            raise AssertionError(f"{label}: {ready}; log:\n{p.tail()}")
        return home, p, str(ready["peer_id"]), time.monotonic()

    def startJS(self) -> tuple[_MdnsJS, str]:
        """
        The js node with @libp2p/mdns on the js host's LAN address; it and
        its peer ID.
        """
        js = _MdnsJS(self.jsHost)
        self.addCleanup(self.report, js)
        self.addCleanup(js.stop)
        ready = js.waitEvent("ready", timeout=60)
        self.assertEqual(ready["addrs"], [f"/ip4/{self.jsHost.addr}/tcp/{PORT}/p2p/{ready['peerId']}"])
        return js, str(ready["peerId"])

    def report(self, js: _MdnsJS) -> None:
        # Shown by the test runner only when the test failed.
        print(f"--- js events {json.dumps(js.drain())}\n--- js stderr\n" + "\n".join(js.stderr[-80:]),
              file=sys.stderr)

    def jsDiscovers(self, js: _MdnsJS, beamPeer: str, since: float) -> float:
        """
        Wait for js's C{peer:discovery} of C{beamPeer}; check it carries
        Beam's LAN address; the seconds since C{since}.
        """
        found = js.waitEvent("peer:discovery", timeout=DISCOVERY_WAIT, peer=beamPeer)
        elapsed = time.monotonic() - since
        self.assertIn(f"/ip4/{self.beamHost.addr}/tcp/{PORT}", found["addrs"])
        for addr in found["addrs"]:
            self.assertTrue(addr.startswith("/ip4/198.51.100."), found)
        return round(elapsed, 3)

    def beamDiscovers(self, home: str, jsPeer: str, since: float) -> dict[str, Any]:
        """
        Wait until the Beam node's mDNS status lists C{jsPeer} at js's LAN
        address and the node is connected to it; the seconds since
        C{since} for each, the same for the first on the node's own clock
        (from the start of its mDNS service: L{since} also counts the
        status polling), and the connection.
        """
        def found() -> Any:
            status = self.beams.json(self.beamHost, home, "status")["mdns"]
            entry = next((f for f in status["found"] if f["peer"] == jsPeer), None)
            return entry and dict(entry, started_at=status["started_at"])

        status = self.beams.json(self.beamHost, home, "status")["mdns"]
        self.assertTrue(status["enabled"] and status["listening"], status)
        entry = waitFor(found, DISCOVERY_WAIT, "Beam finding js by mDNS", step=0.1)
        foundAfter = time.monotonic() - since
        self.assertEqual(entry["addrs"], [f"/ip4/{self.jsHost.addr}/tcp/{PORT}"])

        def connected() -> Any:
            peers = self.beams.json(self.beamHost, home, "network", "peers")["peers"]
            return next((p for p in peers if p["peer_id"] == jsPeer), None)

        conn = waitFor(connected, DISCOVERY_WAIT, "Beam connected to js", step=0.1)
        return {"found_s": round(foundAfter, 3), "connected_s": round(time.monotonic() - since, 3),
                "node_clock_found_s": round(entry["first_seen"] - entry["started_at"], 3), "conn": conn}

    def assertBeamDialledJS(self, js: _MdnsJS, beamPeer: str, conn: dict[str, Any]) -> None:
        """
        The connection Beam lists goes out to js's LAN address, and js has
        it too, from Beam's LAN address.
        """
        self.assertEqual(conn["remote_addr"], f"/ip4/{self.jsHost.addr}/tcp/{PORT}")
        self.assertEqual(conn["direction"], "outbound")
        peers = js.call("peers")["peers"]
        ours = [p for p in peers if p["peerId"] == beamPeer]
        self.assertTrue(ours, peers)
        self.assertTrue(ours[0]["remoteAddr"].startswith(f"/ip4/{self.beamHost.addr}/tcp/"), ours)

    # -- tests -----------------------------------------------------------

    def test_jsAfterBeam(self) -> None:
        """
        Beam runs first; js starts (times from its ready event): js's
        first @libp2p/mdns query is
        answered by Beam, so js discovers Beam's peer ID and LAN address;
        Beam finds js by mDNS (source mdns: its mDNS status lists js at
        js's LAN address) and connects to it.
        """
        home, _, beamPeer, _ = self.startBeam("beam-first")
        js, jsPeer = self.startJS()
        t0 = time.monotonic()
        jsFound = self.jsDiscovers(js, beamPeer, t0)
        beamFound = self.beamDiscovers(home, jsPeer, t0)
        self.assertBeamDialledJS(js, beamPeer, beamFound.pop("conn"))
        self.timings["js_after_beam"] = {"js_found_beam_s": jsFound, **beamFound}

    def test_beamAfterJS(self) -> None:
        """
        js runs first (its start-up query found nothing, its next one is
        up to 10 s away); a Beam node starts (times from its ready event):
        js discovers it from Beam's
        start-up announcement, and Beam finds js from js's answer to
        Beam's first query, then connects to it.
        """
        js, jsPeer = self.startJS()
        home, _, beamPeer, t0 = self.startBeam("js-first")
        jsFound = self.jsDiscovers(js, beamPeer, t0)
        beamFound = self.beamDiscovers(home, jsPeer, t0)
        self.assertBeamDialledJS(js, beamPeer, beamFound.pop("conn"))
        self.timings["beam_after_js"] = {"js_found_beam_s": jsFound, **beamFound}
