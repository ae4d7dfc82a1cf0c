"""
The attack suite of issue 8: a real C{beam daemon} (its own process,
loopback only) carrying a public tunnel with a checksummed download loop
is attacked as a stranger would, one attack per test.

For every attack the suite checks that:
 - the victim's RSS (sampled every 100 ms) grows by less than
   L{RSS_BOUND} over its level after warm-up;
 - every download of the legitimate loop (one peer, 1 MiB each, SHA-256
   checked) succeeds, and some happen during the attack;
 - a new legitimate peer (fresh key) can connect, open the tunnel and
   download during the attack;
 - the victim is still alive and C{beam status --json} answers afterwards.

Attackers connect from 127.0.0.2 (the node exempts only its own machine's
loopback peers from per-source caps), legitimate peers from 127.0.0.1.
Every attack is bounded in count and in time (L{HOLD}, L{ATTACK_DEADLINE}).
Each test prints one line with what it measured (run with C{pytest -s}).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Coroutine, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, ensureDeferred
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from beam.dht.messages import Message, MessageType
from beam.dht.service import KAD_PROTOCOL
from beam.identity.keys import Identity
from beam.identity.multiaddr import Multiaddr
from beam.p2p.muxer._yamux_frames import (
    FLAG_RST,
    FLAG_SYN,
    TYPE_DATA,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
)
from beam.test.attackutil import (
    ATTACKER_HOST,
    LEGIT_HOST,
    SERVICE,
    Counter,
    DownloadFailed,
    DownloadLoop,
    DownloadService,
    FakePeersKad,
    KadCall,
    MiB,
    RSSSampler,
    Victim,
    closeAll,
    download,
    everySoOften,
    frame,
    kadRequest,
    makeNode,
    nameRecord,
    negotiation,
    newPeerDownload,
    pauseReading,
    putRecord,
    rawSocket,
    rawStream,
    sendFrames,
    startedNode,
    stopNodes,
    withTimeout,
)
from beam.tunnel.protocol import TUNNEL_PROTOCOL, TunnelRequest, encodeRequest

#: How much the victim's RSS may grow under any attack.
RSS_BOUND = 64 * MiB
#: How long each attack is held at full pressure (at least).
HOLD = 3.0
#: No attack runs longer than this.
ATTACK_DEADLINE = 30.0


def _counterFactory() -> ServerFactory:
    factory = ServerFactory()
    factory.protocol = Counter
    return factory


def stopQuietly(d: Deferred[Any]) -> None:
    """
    Cancel a background attack loop; its cancellation is not an error.
    """
    d.addErrback(lambda f: None)
    d.cancel()


class AttackTests(TestCase):
    """
    One attack per test against a fresh victim; see the module docstring
    for what every test asserts.
    """

    timeout = 150

    def setUp(self) -> None:
        self.started = time.monotonic()
        self.service = DownloadService()
        port = self.service.start()
        self.addCleanup(self.service.port.stopListening)
        self.victim = Victim(port)
        self.addCleanup(self.victim.stop)
        self.attackers: list[Any] = []
        self.addCleanup(lambda: stopNodes(self.attackers))
        self.notes: dict[str, Any] = {}
        Counter.accepts = {}
        FakePeersKad.answered = 0

    async def attacker(self, listen: tuple[str, ...] = ()) -> Any:
        """
        A started node dialling from L{ATTACKER_HOST} with a throwaway key,
        stopped when the test ends.
        """
        node = await startedNode(ATTACKER_HOST, listen)
        self.attackers.append(node)
        return node

    def deadline(self, seconds: float = HOLD) -> float:
        return time.monotonic() + seconds

    async def duringAttack(self) -> None:
        """
        With the attack at full pressure: a new legitimate peer downloads
        once, and the pressure is held for L{HOLD} seconds and until the
        loop made two more downloads (at most L{ATTACK_DEADLINE}).
        """
        okBefore = self.loop.ok
        holdUntil = self.deadline()
        try:
            await newPeerDownload(self.victim)
            self.newPeer = "ok"
        except DownloadFailed as e:
            self.newPeer = str(e)
        giveUp = self.deadline(ATTACK_DEADLINE)
        while time.monotonic() < giveUp and (time.monotonic() < holdUntil or self.loop.ok < okBefore + 2):
            await deferLater(reactor, 0.1, lambda: None)
        self.duringOK = self.loop.ok - okBefore

    async def underAttack(self, attack: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """
        Warm the victim up, run C{attack} (which must call
        L{duringAttack} while its pressure is on) with the download loop
        and the RSS sampler running, then assert what every attack must
        leave true.
        """
        legit = await startedNode(LEGIT_HOST)
        self.addCleanup(legit.stopService)
        for _ in range(3):
            await download(legit, self.victim)
        baseline = self.victim.rss()
        sampler = RSSSampler(self.victim)
        self.addCleanup(sampler.stop)
        self.loop = DownloadLoop(legit, self.victim)
        self.newPeer = "not tried"
        self.duringOK = 0
        attackError = None
        try:
            await withTimeout(ensureDeferred(attack()), ATTACK_DEADLINE + 30)
        except Exception as e:  # noqa: BLE001 - reported with the measurements
            attackError = f"{type(e).__name__}: {e}"
        await withTimeout(self.loop.stop(), 60)
        sampler.stop()
        status = await self.victim.beam("status", "--json")
        growth = sampler.peak - baseline
        summary = {
            "test": self.id().rsplit(".", 1)[-1],
            "rss_baseline_mib": round(baseline / MiB, 1),
            "rss_growth_mib": round(growth / MiB, 1),
            "peak_fds": sampler.peakFDs,
            "downloads_ok": self.loop.ok,
            "downloads_during_attack": self.duringOK,
            "downloads_failed": len(self.loop.failures),
            "first_failures": self.loop.failures[:3],
            "new_peer": self.newPeer,
            "alive": self.victim.alive(),
            "status_rc": status.returncode,
            "service_peak_open": self.service.peakOpen,
            "limits_configured": self.victim.limitsConfigured,
            "attack_error": attackError,
            "seconds": round(time.monotonic() - self.started, 1),
            **self.notes,
        }
        print("\nATTACK " + json.dumps(summary))
        report = json.dumps(summary, indent=1) + "\nvictim log tail:\n" + self.victim.tail(1500)
        self.assertIsNone(attackError, report)
        self.assertTrue(self.victim.alive(), report)
        self.assertEqual(status.returncode, 0, report + status.stderr)
        self.assertEqual(json.loads(status.stdout).get("peer_id"), self.victim.peerID, report)
        self.assertLess(growth, RSS_BOUND, report)
        self.assertEqual(self.loop.failures, [], report)
        self.assertGreaterEqual(self.duringOK, 1, report)
        self.assertEqual(self.newPeer, "ok", report)

    # -- 1. DHT answers without flow control ---------------------------------

    def test_dhtGetFlood(self) -> Deferred[None]:
        """
        A stranger stores one large record of its own, stops reading its
        socket and sends GET_VALUE requests for it (up to 100 streams of
        1,000 requests): the victim must pause, then drop it, instead of
        buffering the answers.
        """

        async def attack() -> None:
            node = await self.attacker()
            record = nameRecord(node.identity, "flooder", services=[f"s{i:03d}" + "x" * 236 for i in range(25)])
            self.notes["record_bytes"] = len(record.value)
            self.assertTrue(await putRecord(node, self.victim, record), "the attacker's own record was refused")
            conn = await node.connect(self.victim.addr)
            pauseReading(conn)
            gets = kadRequest(Message(MessageType.GET_VALUE, key=record.key)) * 1000
            sent = [0]

            def step() -> Any:
                if conn.closed or sent[0] >= 100:
                    return False
                rawStream(conn, negotiation(KAD_PROTOCOL) + gets)
                sent[0] += 1
                return None

            flood = everySoOften(0.05, self.deadline(ATTACK_DEADLINE), step, most=100)
            await self.duringAttack()
            self.notes["get_streams"] = sent[0]
            stopQuietly(flood)

        return ensureDeferred(self.underAttack(attack))

    # -- 2. yamux control frames bypassing backpressure ----------------------

    def controlFlood(self, frames: Callable[[int], bytes], batch: int) -> Callable[[], Coroutine[Any, Any, None]]:
        """
        An attack that writes C{frames(i)} in batches of C{batch} every
        50 ms without ever reading, reconnecting (a bounded number of
        times, with a new key) when the victim drops it.
        """

        async def attack() -> None:
            state: dict[str, Any] = {"conn": None, "sent": 0, "conns": 0, "i": 0}

            async def step() -> Any:
                conn = state["conn"]
                if conn is None or conn.closed or conn.rawTransport.disconnected:
                    if state["conns"] >= 20:
                        return False
                    node = await self.attacker()
                    try:
                        conn = state["conn"] = await withTimeout(node.connect(self.victim.addr), 10)
                    except Exception:  # noqa: BLE001 - refused: try again next step
                        state["conn"] = None
                        return None
                    state["conns"] += 1
                    pauseReading(conn)
                data = b"".join(frames(state["i"] + k) for k in range(batch))
                state["i"] += batch
                sendFrames(conn, data)
                state["sent"] += len(data)
                return None

            flood = everySoOften(0.05, self.deadline(ATTACK_DEADLINE), step, most=2000)
            await self.duringAttack()
            stopQuietly(flood)
            self.notes.update(bytes_sent=state["sent"], connections=state["conns"])

        return attack

    def test_yamuxPingFlood(self) -> Deferred[None]:
        """
        A stranger floods yamux pings (5,000 per 50 ms) and never reads:
        the victim must not queue the answers without bound (it coalesces
        them and drops the peer).
        """
        ping = frame(TYPE_PING, FLAG_SYN, 0, 7)
        return ensureDeferred(self.underAttack(self.controlFlood(lambda i: ping, 5000)))

    def test_windowUpdateFlood(self) -> Deferred[None]:
        """
        A stranger opens and resets streams with window-update frames
        (SYN then RST, 2,500 per 50 ms, each making the victim answer) and
        never reads: the answers must not queue without bound.
        """

        def synRst(i: int) -> bytes:
            sid = 1_000_001 + 2 * i
            return frame(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0) + frame(TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0)

        return ensureDeferred(self.underAttack(self.controlFlood(synRst, 2500)))

    # -- 3. no per-peer limit on tunnel streams -------------------------------

    def test_tunnelStreamHog(self) -> Deferred[None]:
        """
        One stranger opens 1,000 streams to the public tunnel (each asking
        the victim to connect to the local service) and holds them without
        reading, with the victim at 1,024 file descriptors: its limits
        must keep descriptors for everyone else.
        """

        async def attack() -> None:
            node = await self.attacker()
            conn = await node.connect(self.victim.addr)
            pauseReading(conn)
            opening = negotiation(TUNNEL_PROTOCOL) + encodeRequest(TunnelRequest(service=SERVICE))
            opened = [0]

            def step() -> Any:
                if opened[0] >= 1000:
                    return False
                for _ in range(100):
                    try:
                        rawStream(conn, opening)
                    except Exception as e:  # noqa: BLE001 - our own session refuses more
                        self.notes["stopped_by"] = f"{type(e).__name__}: {e}"
                        return False
                    opened[0] += 1
                return None

            await everySoOften(0.02, self.deadline(10), step, most=10)
            await self.duringAttack()
            self.notes.update(streams_opened=opened[0], victim_fds=self.victim.fdCount())

        return ensureDeferred(self.underAttack(attack))

    # -- 4. handshake slots ------------------------------------------------------

    def test_idleTCPConnections(self) -> Deferred[None]:
        """
        520 TCP connections from one stranger's address that never start
        the handshake (opened 100 per 50 ms and held): the handshake
        budget and per-source cap must leave room for new peers.
        """

        async def attack() -> None:
            socks: list[Any] = []
            self.addCleanup(closeAll, socks)

            def step() -> Any:
                for _ in range(100):
                    if len(socks) >= 520:
                        return False
                    try:
                        socks.append(rawSocket(self.victim))
                    except OSError:
                        self.notes["connect_errors"] = self.notes.get("connect_errors", 0) + 1
                return None

            await everySoOften(0.05, self.deadline(10), step, most=10)
            self.notes["idle_sockets"] = len(socks)
            await self.duringAttack()
            closeAll(socks)

        return ensureDeferred(self.underAttack(attack))

    def test_idleLogins(self) -> Deferred[None]:
        """
        520 logins with throwaway keys that complete the handshake and
        then idle (4 at a time, so as to stay under the per-source
        handshake cap): they must not take every connection slot.
        """

        async def attack() -> None:
            done = {"ok": 0, "refused": 0}
            sem = DeferredSemaphore(4)
            deadline = self.deadline(20)

            async def login() -> None:
                # Never complete synchronously: a long chain of those
                # overflows the semaphore's callback recursion.
                await deferLater(reactor, 0, lambda: None)
                if time.monotonic() > deadline:
                    return
                node = makeNode(ATTACKER_HOST)
                self.attackers.append(node)
                await node.startService()
                try:
                    await withTimeout(node.connect(self.victim.addr), 5)
                    done["ok"] += 1
                except Exception:  # noqa: BLE001 - refusals are the defence working
                    done["refused"] += 1

            await DeferredList([sem.run(login) for _ in range(520)])
            self.notes.update(logins=done["ok"], logins_refused=done["refused"])
            await self.duringAttack()

        return ensureDeferred(self.underAttack(attack))

    # -- 5. DHT store filled by Sybil keys ---------------------------------------

    def test_dhtStoreSybil(self) -> Deferred[None]:
        """
        80 throwaway keys each store up to 16 name records (8 keys at a
        time, a key stops after its first refusal); afterwards a
        legitimate peer from another address can still store its name.
        """

        async def attack() -> None:
            stored = {"ok": 0, "refused": 0}
            sem = DeferredSemaphore(8)
            deadline = self.deadline(20)

            async def sybil(k: int) -> None:
                await deferLater(reactor, 0, lambda: None)
                node = makeNode(ATTACKER_HOST)
                self.attackers.append(node)
                await node.startService()
                for i in range(16):
                    if time.monotonic() > deadline:
                        return
                    if await putRecord(node, self.victim, nameRecord(node.identity, f"sybil-{k}-{i}")):
                        stored["ok"] += 1
                    else:
                        stored["refused"] += 1
                        return
                await node.stopService()

            flood = DeferredList([sem.run(sybil, k) for k in range(80)])
            await self.duringAttack()
            await flood
            legit = await startedNode(LEGIT_HOST)
            self.addCleanup(legit.stopService)
            ok = await putRecord(legit, self.victim, nameRecord(legit.identity, "alice-legit"))
            self.notes.update(sybil_stored=stored["ok"], sybil_refused=stored["refused"], legit_stored=ok)
            self.assertTrue(ok, f"a legitimate name was refused after the Sybil flood: {stored}")

        return ensureDeferred(self.underAttack(attack))

    # -- 6. SSRF through the DHT --------------------------------------------------

    def test_ssrfThroughDHT(self) -> Deferred[None]:
        """
        A malicious DHT peer (at 127.0.0.2) answers every request with
        fake peers at ports of its choosing while the victim looks names
        up.  Loopback addresses from a peer that is itself on loopback are
        what libp2p's address filter allows (the issue: "no loopback or
        private addresses unless the peer itself is on that network"), so
        on those the per-target dial limit must hold: at most its burst
        (4) plus one per 5 s elapsed, per port.  The same ports given as
        C{0.0.0.0} (which Linux would connect to 127.0.0.1) are never
        dialled, from anyone.
        """

        async def attack() -> None:
            loop = [reactor.listenTCP(0, _counterFactory(), interface=LEGIT_HOST) for _ in range(4)]
            unspecified = [reactor.listenTCP(0, _counterFactory(), interface=LEGIT_HOST) for _ in range(2)]
            for p in loop + unspecified:
                self.addCleanup(p.stopListening)
            loopPorts = [cast(Any, p.getHost()).port for p in loop]
            unspecifiedPorts = [cast(Any, p.getHost()).port for p in unspecified]
            FakePeersKad.addrs = [
                *(Multiaddr.fromString(f"/ip4/127.0.0.1/tcp/{port}") for port in loopPorts),
                *(Multiaddr.fromString(f"/ip4/0.0.0.0/tcp/{port}") for port in unspecifiedPorts),
            ]
            started = time.monotonic()
            node = await self.attacker(listen=(f"/ip4/{ATTACKER_HOST}/tcp/0",))
            node.setStreamHandler(KAD_PROTOCOL, FakePeersKad)
            await node.connect(self.victim.addr)

            async def lookups() -> None:
                for i in range(4):
                    await self.victim.beam("resolve", f"nobody-{os.getpid()}-{i}", "--json")

            resolving = ensureDeferred(lookups())
            await self.duringAttack()
            await resolving
            elapsed = time.monotonic() - started
            accepts = dict(Counter.accepts)
            self.notes.update(fake_answers=FakePeersKad.answered, ssrf_accepts=accepts, elapsed=round(elapsed, 1))
            self.assertGreater(FakePeersKad.answered, 0, "the victim never asked the malicious peer")
            for port in unspecifiedPorts:
                self.assertNotIn(port, accepts, "the victim dialled an unspecified address a stranger gave")
            most = 4 + int(elapsed / 5) + 1
            for port in loopPorts:
                self.assertLessEqual(accepts.get(port, 0), most, f"port {port}: the per-target dial limit did not hold")

        return ensureDeferred(self.underAttack(attack))

    # -- 7. what the node survived before ------------------------------------------

    def test_garbageHandshakes(self) -> Deferred[None]:
        """
        300 connections (50 per 50 ms) that send 2 KiB of random bytes
        instead of a handshake, then close.
        """

        async def attack() -> None:
            count = [0]

            def step() -> Any:
                socks = []
                for _ in range(50):
                    try:
                        s = rawSocket(self.victim)
                        s.send(os.urandom(2048))
                        socks.append(s)
                    except OSError:
                        pass
                count[0] += len(socks)
                closeAll(socks)
                return None

            flood = everySoOften(0.05, self.deadline(ATTACK_DEADLINE), step, most=6)
            await self.duringAttack()
            await flood
            self.notes["garbage_connections"] = count[0]

        return ensureDeferred(self.underAttack(attack))

    def test_yamuxSynFlood(self) -> Deferred[None]:
        """
        10,000 yamux SYNs (new streams, never closed) on one connection,
        read normally: the victim refuses what it will not hold.
        """

        async def attack() -> None:
            node = await self.attacker()
            conn = await node.connect(self.victim.addr)
            syns = b"".join(frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1_000_001 + 2 * i, 0) for i in range(10_000))
            sendFrames(conn, syns)
            await self.duringAttack()

        return ensureDeferred(self.underAttack(attack))

    def test_windowOverflow(self) -> Deferred[None]:
        """
        Ten connections each send a data frame of 512 KiB on a new stream,
        past the 256 KiB window: each is a protocol error that closes only
        that connection.
        """

        async def attack() -> None:
            for i in range(10):
                node = await self.attacker()
                conn = await node.connect(self.victim.addr)
                sid = 1_000_001
                sendFrames(conn, frame(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0)
                           + frame(TYPE_DATA, 0, sid, 512 * 1024, os.urandom(512 * 1024)))
            await self.duringAttack()

        return ensureDeferred(self.underAttack(attack))

    def test_hugeFrameLength(self) -> Deferred[None]:
        """
        Ten connections each announce a 4 GiB data frame and send 1 MiB of
        it: nothing is buffered for the announced length.
        """

        async def attack() -> None:
            for i in range(10):
                node = await self.attacker()
                conn = await node.connect(self.victim.addr)
                sendFrames(conn, frame(TYPE_DATA, FLAG_SYN, 1_000_001, 0xFFFFFFFF, os.urandom(MiB)))
            await self.duringAttack()

        return ensureDeferred(self.underAttack(attack))

    def test_forgedAndReplayedRecords(self) -> Deferred[None]:
        """
        A legitimate owner stores a name record (seq 1, then 2); strangers
        replay seq 1 and store forged records (a tampered signature, and
        the owner's name signed by another key) 200 times each: the owner's
        newest record is what the victim serves afterwards.
        """

        async def attack() -> None:
            owner = await startedNode(LEGIT_HOST)
            self.addCleanup(owner.stopService)
            now = time.time()
            old = nameRecord(owner.identity, "owner-name", seq=1, now=now)
            new = nameRecord(owner.identity, "owner-name", seq=2, now=now)
            self.assertTrue(await putRecord(owner, self.victim, old))
            self.assertTrue(await putRecord(owner, self.victim, new))
            node = await self.attacker()
            thief = nameRecord(Identity.generate(), "owner-name", seq=3, now=now)
            tampered = type(new)(new.key, new.value[:-1] + bytes([new.value[-1] ^ 1]))
            accepted = [0]

            async def step() -> Any:
                for record in (old, thief, tampered):
                    if await putRecord(node, self.victim, record):
                        accepted[0] += 1
                return None

            flood = everySoOften(0.0, self.deadline(ATTACK_DEADLINE), step, most=200)
            await self.duringAttack()
            stopQuietly(flood)
            proto = cast(KadCall, await owner.openStream(self.victim.addr, KAD_PROTOCOL, KadCall))
            answer = await withTimeout(proto.call(Message(MessageType.GET_VALUE, key=new.key)), 15)
            self.notes["bad_records_accepted"] = accepted[0]
            self.assertEqual(accepted[0], 0)
            self.assertIsNotNone(answer.record)
            self.assertEqual(answer.record.value, new.value)

        return ensureDeferred(self.underAttack(attack))
