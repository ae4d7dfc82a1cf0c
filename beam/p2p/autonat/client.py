"""
The AutoNAT v2 client: ask peers to dial us back on our candidate
addresses, and feed their verdicts to the node's
L{AddressBook<beam.p2p.host.addrs.AddressBook>}.

What counts:

 - a confirmation needs I{proof}: the server said it dialled the address
   (C{OK}), I{and} our nonce came back on a C{/libp2p/autonat/2/dial-back}
   stream over a connection of that address's transport.  A server's word
   alone is ignored (the spec: a response without the nonce is
   discarded).  One proof is enough: nobody can deliver our nonce on a
   fresh inbound connection unless the address is reachable;
 - a rejection needs C{rejectAfter} distinct servers reporting
   C{E_DIAL_ERROR} for the address (one lying or badly connected server
   must not make us private);
 - everything else (refusals, rate limiting, dial-back errors, streams
   that break) is no verdict.

When it asks: when the address book reports a change and has candidates
(a new observed address, a new listen address), when a peer that serves
AutoNAT is identified while candidates wait, and every C{interval}
seconds, when confirmed addresses are checked again too (a NAT mapping
that went away is noticed).  Each round asks at most C{serversPerRound}
connected servers, each about one address first (the rest of the
candidates follow as lower priority, as the spec suggests), and never a
server about an address it already answered for, until the next periodic
round starts afresh.

Dial data (the server's price for dialling an IP other than the one we
connect from) is paid only for an address in our own request and only up
to C{maxDialData} bytes; a larger demand resets the stream, which is how
the spec says to decline.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import attr
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.errors import BeamError
from beam.identity.keys import PeerID
from beam.identity.multiaddr import Multiaddr
from beam.p2p.autonat._stream import MessageStream
from beam.p2p.autonat.messages import (
    DIAL_BACK_PROTOCOL,
    DIAL_DATA_CHUNK,
    DIAL_REQUEST_PROTOCOL,
    MAX_ADDRS,
    AutoNATProtocolError,
    DialDataRequest,
    DialDataResponse,
    DialRequest,
    DialResponse,
    DialStatus,
    ResponseStatus,
    decodeDialBack,
    decodeMessage,
    encodeDialBackResponse,
    encodeMessage,
)

#: Most dial data we pay for one request (the spec's servers ask 30-100 kB).
MAX_DIAL_DATA = 100_000
#: Most addresses we keep verdicts for between periodic rounds.
MAX_TRACKED = 64


class AutoNATRequestFailed(BeamError):
    """
    An AutoNAT request got no usable answer.
    """


def _kind(addr: Multiaddr) -> str:
    """
    The transport an address is reached over, to check a dial back came
    over the transport of the address it claims to prove.
    """
    protocols = addr.protocols()
    if "p2p-circuit" in protocols:
        return "relay"
    if "tcp" in protocols:
        return "tcp"
    return protocols[0] if protocols else ""


@attr.s(auto_attribs=True)
class _Attempt:
    """
    One request in flight: what we asked whom, and where the dial back
    (if any) arrived.
    """

    server: PeerID
    addrs: tuple[Multiaddr, ...]
    nonce: int
    dialedBackOn: Optional[Multiaddr] = None


class AutoNATClient(Service):
    """
    Verify the node's candidate addresses.  Add it as a child of the node
    (C{client.setServiceParent(node)}).

    @ivar asked: requests sent since start (for status and tests).
    """

    log = Logger()
    name = "autonat-client"  # type: ignore[assignment]

    def __init__(
        self,
        node: Any,
        *,
        addresses: Any = None,
        interval: float = 900.0,
        serversPerRound: int = 3,
        requestTimeout: float = 60.0,
        dialBackTimeout: float = 15.0,
        maxDialData: int = MAX_DIAL_DATA,
        rejectAfter: int = 2,
        maxAddrsPerRequest: int = 8,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """
        @param addresses: the L{AddressBook} to verify and feed (default:
            C{node.addresses}).
        @param interval: seconds between periodic rounds, which also check
            confirmed addresses again.
        @param requestTimeout: seconds for one request, dial data and the
            server's dial back included.
        @param dialBackTimeout: seconds a dial-back stream may take to send
            its nonce.
        @param rejectAfter: distinct servers that must fail to dial an
            address before it is rejected.
        """
        self.node = node
        self.reactor = node.reactor
        self.addresses = addresses if addresses is not None else node.addresses
        self.interval = interval
        self.serversPerRound = serversPerRound
        self.requestTimeout = requestTimeout
        self.dialBackTimeout = dialBackTimeout
        self.maxDialData = maxDialData
        self.rejectAfter = rejectAfter
        self.maxAddrsPerRequest = min(maxAddrsPerRequest, MAX_ADDRS)
        self._random = random
        self._pending: dict[int, _Attempt] = {}
        self._inflight: dict[int, _DialRequestClient] = {}
        self._verdicts: dict[Multiaddr, dict[PeerID, Optional[bool]]] = {}
        self._round: Optional[Deferred[None]] = None
        self._again = False
        self._scheduled: Optional[IDelayedCall] = None
        self._loop: Optional[LoopingCall] = None
        self._rotation = 0
        self._subscribed = False
        self.asked = 0

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.node.setStreamHandler(DIAL_BACK_PROTOCOL, lambda: _DialBackReceiver(self))
        if not self._subscribed:
            # The address book has no way to unsubscribe: the callback
            # checks whether we run.
            self.addresses.onChange(self._addressesChanged)
            self._subscribed = True
        self.node.addConnectionObserver(self._connectionEvent)
        self._loop = LoopingCall(self._periodic)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)
        self._schedule()

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        self.node.removeConnectionObserver(self._connectionEvent)
        if self.node.hasStreamHandler(DIAL_BACK_PROTOCOL):
            self.node.removeStreamHandler(DIAL_BACK_PROTOCOL)
        for proto in list(self._inflight.values()):
            proto.cancel()
        return None

    # -- triggers ----------------------------------------------------------

    def _addressesChanged(self) -> None:
        if self.running and self.addresses.candidates():
            self._schedule()

    def _connectionEvent(self, event: str, conn: Any) -> None:
        if event not in ("identified", "updated") or conn.identify is None:
            return
        if DIAL_REQUEST_PROTOCOL in conn.identify.protocols and self.addresses.candidates():
            self._schedule()

    def _schedule(self) -> None:
        """
        Check soon (once, however many triggers come in this turn).
        """
        if not self.running or (self._scheduled is not None and self._scheduled.active()):
            return
        self._scheduled = self.reactor.callLater(0, self._scheduledCheck)

    def _scheduledCheck(self) -> None:
        self._scheduled = None
        self.check()

    def _periodic(self) -> None:
        self._verdicts.clear()
        self.check(recheck=True)

    # -- rounds ------------------------------------------------------------

    def servers(self) -> list[Any]:
        """
        Connections to peers that serve AutoNAT v2 (direct ones only: over
        a relay, the server would see the relay's address, not ours).
        """
        out = []
        for conn in self.node.liveConnections():
            if getattr(conn, "limited", False) or not conn.acceptsStreams:
                continue
            if conn.identify is not None:
                protocols = conn.identify.protocols
            else:
                protocols = self.node.peerStore.protocols(conn.remotePeer)
            if DIAL_REQUEST_PROTOCOL in protocols:
                out.append(conn)
        out.sort(key=lambda c: c.remotePeer.bytes)
        return out

    def check(self, recheck: bool = False) -> Deferred[None]:
        """
        Ask servers about our candidate addresses (and, if C{recheck}, the
        confirmed ones too); fires when the round's answers are in.  A
        check asked for during a round runs after it.
        """
        if not self.running:
            return succeed(None)
        if self._round is not None:
            self._again = True
            waiter: Deferred[None] = Deferred()

            def fire(result: object) -> object:
                waiter.callback(None)
                return result

            self._round.addBoth(fire)
            return waiter
        targets = list(self.addresses.candidates())
        if recheck:
            targets += [a for a in self.addresses.confirmed() if a not in targets]
        targets = targets[: self.maxAddrsPerRequest]
        if not targets:
            return succeed(None)
        servers = self.servers()
        if servers:
            self._rotation = (self._rotation + 1) % len(servers)
            servers = servers[self._rotation:] + servers[:self._rotation]
        asks: list[Deferred[None]] = []
        used: set[PeerID] = set()
        for i in range(len(targets) * max(1, len(servers))):
            if len(asks) >= self.serversPerRound:
                break
            target = targets[i % len(targets)]
            answered = self._verdicts.get(target, {})
            conn = next((c for c in servers if c.remotePeer not in used and c.remotePeer not in answered), None)
            if conn is None:
                continue
            used.add(conn.remotePeer)
            order = [target] + [a for a in targets if a != target]
            asks.append(self._ask(conn, tuple(order)))
        if not asks:
            return succeed(None)
        round_: Deferred[None] = DeferredList(asks, consumeErrors=True).addCallback(lambda _: None)
        self._round = round_

        def over(_: None) -> None:
            self._round = None
            if self._again:
                self._again = False
                self._schedule()

        round_.addCallback(over)
        return round_

    def _ask(self, conn: Any, addrs: tuple[Multiaddr, ...]) -> Deferred[None]:
        """
        One request to the server on C{conn}; fires (never fails) once it
        was evaluated.
        """
        nonce = int.from_bytes(self._random(8), "big")
        while nonce in self._pending:
            nonce = int.from_bytes(self._random(8), "big")
        attempt = _Attempt(conn.remotePeer, addrs, nonce)
        self._pending[nonce] = attempt
        proto = _DialRequestClient(self, attempt)
        self._inflight[nonce] = proto
        self.asked += 1
        timer = self.reactor.callLater(
            self.requestTimeout, proto.abandon,
            AutoNATRequestFailed(f"no answer within {self.requestTimeout:g} s"),
        )
        opened = self.node.openStreamOn(conn, [DIAL_REQUEST_PROTOCOL], lambda: proto)
        opened.addErrback(proto.abandon)

        def done(result: Any) -> None:
            if timer.active():
                timer.cancel()
            self._pending.pop(nonce, None)
            self._inflight.pop(nonce, None)
            if isinstance(result, Failure):
                self.log.debug("AutoNAT request to {server}: {why}", server=attempt.server,
                               why=result.getErrorMessage())
                return
            self._evaluate(attempt, result)

        return proto.result.addBoth(done)

    def _evaluate(self, attempt: _Attempt, response: DialResponse) -> None:
        server = attempt.server
        if response.status != ResponseStatus.OK:
            if response.status in (ResponseStatus.E_DIAL_REFUSED, ResponseStatus.E_REQUEST_REJECTED):
                # No verdict, but do not ask this server about it again
                # before the next periodic round.
                self._record(attempt.addrs[0], server, None)
            return
        if not 0 <= response.addrIdx < len(attempt.addrs):
            self.log.debug("AutoNAT server {server} answered for address #{i} we did not send",
                           server=server, i=response.addrIdx)
            return
        addr = attempt.addrs[response.addrIdx]
        if response.dialStatus == DialStatus.OK:
            back = attempt.dialedBackOn
            if back is None or _kind(back) != _kind(addr):
                self.log.debug("AutoNAT server {server} says it dialled {addr}, but our nonce did not "
                               "come back over that transport: discarded", server=server, addr=addr)
                self._record(addr, server, None)
                return
            self._verdicts.pop(addr, None)
            self.log.info("AutoNAT: {addr} is reachable (dialled back by {server})", addr=addr, server=server)
            self.addresses.confirm(addr)
        elif response.dialStatus == DialStatus.E_DIAL_ERROR:
            self._record(addr, server, False)
            failures = sum(1 for v in self._verdicts.get(addr, {}).values() if v is False)
            if failures >= self.rejectAfter:
                self._verdicts.pop(addr, None)
                self.log.info("AutoNAT: {addr} is not reachable ({n} servers could not dial it)",
                              addr=addr, n=failures)
                self.addresses.reject(addr)
        else:
            self._record(addr, server, None)

    def _record(self, addr: Multiaddr, server: PeerID, verdict: Optional[bool]) -> None:
        if addr not in self._verdicts and len(self._verdicts) >= MAX_TRACKED:
            del self._verdicts[next(iter(self._verdicts))]
        self._verdicts.setdefault(addr, {})[server] = verdict

    def dialedBack(self, nonce: int, conn: Any) -> bool:
        """
        A dial back delivered C{nonce} over C{conn}: note it for the
        request it belongs to.  Whether the nonce was ours.
        """
        attempt = self._pending.get(nonce)
        if attempt is None:
            return False
        local = getattr(conn, "localAddr", None)
        if local is not None:
            attempt.dialedBackOn = local
        return True


class _DialRequestClient(MessageStream):
    """
    Our side of one C{/libp2p/autonat/2/dial-request} stream.  L{result}
    fires with the server's L{DialResponse}, or fails.
    """

    what = "AutoNAT request"

    def __init__(self, client: AutoNATClient, attempt: _Attempt) -> None:
        super().__init__()
        self.client = client
        self.attempt = attempt
        self.result: Deferred[DialResponse] = Deferred()
        self._paid = False

    def connectionMade(self) -> None:
        if self.result.called:
            # Abandoned (timed out) before the stream was open.
            self.fail(AutoNATRequestFailed("the request was abandoned"))
            return
        request = DialRequest(tuple(a.toBytes() for a in self.attempt.addrs), self.attempt.nonce)
        self.send(encodeMessage(request))

    def messageReceived(self, raw: bytes) -> None:
        message = decodeMessage(raw)
        if isinstance(message, DialDataRequest):
            self._payDialData(message)
        elif isinstance(message, DialResponse):
            self.finish()
            if not self.result.called:
                self.result.callback(message)
        else:
            raise AutoNATProtocolError(f"unexpected {type(message).__name__} from the server")

    def _payDialData(self, request: DialDataRequest) -> None:
        if self._paid:
            raise AutoNATProtocolError("the server asked for dial data twice")
        if not 0 <= request.addrIdx < len(self.attempt.addrs):
            raise AutoNATProtocolError(f"dial data asked for address #{request.addrIdx}, which we did not send")
        if request.numBytes > self.client.maxDialData:
            raise AutoNATProtocolError(
                f"the server wants {request.numBytes} bytes of dial data; we pay at most {self.client.maxDialData}"
            )
        self._paid = True
        chunk = encodeMessage(DialDataResponse(bytes(DIAL_DATA_CHUNK)))
        full, rest = divmod(request.numBytes, DIAL_DATA_CHUNK)
        for _ in range(full):
            self.send(chunk)
        if rest:
            self.send(encodeMessage(DialDataResponse(bytes(rest))))

    def fail(self, error: BeamError) -> None:
        super().fail(error)
        if not self.result.called:
            self.result.errback(Failure(error))

    def abandon(self, why: Any) -> None:
        """
        Give up (timeout, the stream could not be opened): reset the
        stream if there is one.
        """
        error = why.value if isinstance(why, Failure) else why
        if self.transport is not None:
            self.fail(error if isinstance(error, BeamError) else AutoNATRequestFailed(str(error)))
        elif not self.result.called:
            self.result.errback(Failure(error if isinstance(error, BeamError) else AutoNATRequestFailed(str(error))))

    def cancel(self) -> None:
        self.abandon(AutoNATRequestFailed("the AutoNAT client stopped"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.transport = None
        if not self.result.called:
            self.result.errback(Failure(AutoNATRequestFailed("the server closed the stream without answering")))


class _DialBackReceiver(MessageStream):
    """
    C{/libp2p/autonat/2/dial-back}: a server delivers a nonce; we note it
    and answer OK (the spec's acknowledgement, whoever sent it).
    """

    what = "AutoNAT dial back"

    def __init__(self, client: AutoNATClient) -> None:
        super().__init__()
        self.client = client
        self._timer: Optional[IDelayedCall] = None

    def connectionMade(self) -> None:
        self._timer = self.client.reactor.callLater(
            self.client.dialBackTimeout, self.fail,
            AutoNATProtocolError(f"no nonce within {self.client.dialBackTimeout:g} s"),
        )

    def messageReceived(self, raw: bytes) -> None:
        nonce = decodeDialBack(raw)
        self._cancel()
        self.client.dialedBack(nonce, self.connection())
        self.send(encodeDialBackResponse())
        self.finish()

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel()


__all__ = ["AutoNATClient", "AutoNATRequestFailed", "MAX_DIAL_DATA"]
