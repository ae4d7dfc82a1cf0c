# -*- test-case-name: beam.test.test_tunnel_forward -*-
"""
The lifecycle of a tunnel forward, as a typed Automat state machine.

A forward listens on a local port and keeps a connection to the host peer
for as long as it runs.  This module holds only the decisions: when to
listen, dial, wait, re-resolve and stop, and whether a new local
connection may try the host.  It does no I/O of its own; the
L{ForwardCore} it is given supplies the effects (listen, close, dial,
resolve, hold and release the host connection) and the clock, so tests
drive it with a L{twisted.internet.task.Clock}.  The model is Twisted's
C{ClientService} (C{twisted/application/_client_service.py}): every
(state, input) pair is declared in the table at the end of L{makeMachine},
ignored ones included, and the reconnect delay comes from a retry policy
(by default L{twisted.application.internet.backoffPolicy}).

States (C{status()} in brackets: the text C{beam status} shows)::

    stopped     nothing open                                  [stopped]
    listening   opening the local port                        [connecting]
    connecting  local port open, dialling the host            [connecting]
    connected   host connection up, not yet steady            [connected]
    steady      host connection up for steadyAfter seconds    [connected]
    waiting     backing off after a failure                   [unreachable: why]
    resolving   re-resolving the host's name after the wait   [unreachable: why]
    retrying    dialling the host after a failure             [connecting]
    stopping    closing the local port                        [stopped]
    restarting  closing, then listening again (start while stopping)
                                                              [connecting]

Inputs: C{start}, C{stop} (from the service), C{listened},
C{listenFailed}, C{listenerClosed} (the local port), C{dialled},
C{dialFailed} (our dial), C{retryDue}, C{steady} (timers), C{resolved},
C{hostConnected}, C{hostLost} (the node's connection events),
C{streamFailed} (a tunnel stream could not reach the host), and two
queries, C{status} and C{refusal}.

The transitions that do something::

    stopped    --start-------------> listening   listen
    listening  --listened----------> connecting  hold the host connection, dial
    listening  --listenFailed------> stopped     fail start()
    connecting --dialled-----------> connected   start the steady timer
    connecting --dialFailed--------> waiting     failures += 1, wait policy(failures)
    connected  --steady------------> steady      failures = 0
    connected  --hostLost----------> waiting     (a connection that did not last
                                                 counts as a failure: no hot loop)
    connected,
    steady     --streamFailed------> waiting
    steady     --hostLost----------> connecting  re-dial at once
    waiting    --retryDue----------> resolving   re-resolve the name (if any)
    resolving  --resolved----------> retrying    dial
    retrying   --dialled-----------> connected
    retrying   --dialFailed--------> waiting
    waiting,
    resolving  --hostConnected-----> connected   (the host is back: stop waiting)
    any running state --stop-------> stopping    cancel the dial/timer/resolve,
                                                 release, close the local port
    stopping   --listenerClosed----> stopped     fire stop()
    stopping   --start-------------> restarting
    restarting --listenerClosed----> listening

Fail fast: C{refusal()} is a L{HostUnreachable} in C{waiting},
C{resolving} and C{retrying} (the last attempt failed), so a local client
is closed at once instead of waiting for a dial that will likely fail.
After a steady connection is lost the forward re-dials at once and local
clients wait for that dial, since the host may well be there (its node
closes idle connections, for one).

docs/state-machines/tunnel-forward.md draws the machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from automat import TypeMachineBuilder
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from beam.errors import BeamError, DialError

__all__ = ["ForwardCore", "ForwardInputs", "ForwardMachine", "ForwardStopped", "HostUnreachable", "renderTable"]

#: The reason recorded when a connection that was not yet steady ends.
CONNECTION_LOST = "the connection to the host was lost"


class HostUnreachable(DialError):
    """
    The host peer cannot be reached at the moment.
    """


class ForwardStopped(BeamError):
    """
    The forward is stopped.
    """


class ForwardInputs(Protocol):
    """
    The inputs of a forward's machine.
    """

    def start(self) -> Deferred[None]:
        """
        Listen locally, then keep the host connected.

        @return: fires once listening, or fails with why not.
        """

    def stop(self) -> Deferred[None]:
        """
        Stop dialling and waiting, release the host connection and close
        the local port.

        @return: fires once the local port is closed.
        """

    def listened(self) -> None:
        """
        The local port is listening.
        """

    def listenFailed(self, failure: Failure) -> None:
        """
        The local port could not be opened.
        """

    def listenerClosed(self) -> None:
        """
        The local port is closed (after C{stop}).
        """

    def dialled(self) -> None:
        """
        Our dial to the host succeeded.
        """

    def dialFailed(self, reason: str) -> None:
        """
        Our dial to the host failed; C{reason} is worded for the user.
        """

    def retryDue(self) -> None:
        """
        The backoff delay is over.
        """

    def resolved(self) -> None:
        """
        Re-resolving the host's addresses is done (whatever the outcome).
        """

    def steady(self) -> None:
        """
        The host connection has been up for C{steadyAfter} seconds.
        """

    def hostConnected(self) -> None:
        """
        A usable connection to the host appeared (node event).
        """

    def hostLost(self) -> None:
        """
        The last usable connection to the host ended (node event).
        """

    def streamFailed(self, reason: str) -> None:
        """
        A tunnel stream could not be opened because the host could not be
        reached (the node's own dial failed).
        """

    def status(self) -> str:
        """
        The forward's state as C{beam status} shows it.
        """

    def refusal(self) -> Optional[BeamError]:
        """
        Why a new local connection must be closed at once, or L{None} to
        let it try the host.
        """


@dataclass
class ForwardCore:
    """
    What the machine acts on: effects, time, and the counters that outlive
    a state.

    @ivar listen: opens the local port; fires once listening, or fails
        with an error worded for the user.
    @ivar close: aborts the tunnelled connections and closes the local
        port; may return a Deferred.
    @ivar connect: dials the host (or finds its connection); fires once
        connected.  Cancelling it abandons the dial.
    @ivar resolve: re-resolves the host's addresses and updates the
        peerstore; fires when done.  Cancelling it abandons the lookup.
    @ivar hold: starts keeping the host connection alive and watching
        connection events.
    @ivar release: undoes L{hold}; harmless when not held.
    @ivar retryPolicy: seconds to wait before attempt N after N failures.
    @ivar steadyAfter: seconds a connection must last before the failure
        count is reset and its loss is answered by an immediate re-dial.
    @ivar failures: consecutive failures (dials, streams, connections
        that did not last).
    @ivar lastError: why the last attempt failed, while failing.
    """

    clock: IReactorTime
    listen: Callable[[], Deferred[Any]]
    close: Callable[[], Any]
    connect: Callable[[], Deferred[Any]]
    resolve: Callable[[], Deferred[Any]]
    hold: Callable[[], None]
    release: Callable[[], None]
    retryPolicy: Callable[[int], float]
    steadyAfter: float = 10.0
    label: str = ""
    log: Logger = field(default_factory=Logger)
    failures: int = 0
    lastError: Optional[str] = None
    listenWaiters: list[Deferred[None]] = field(default_factory=list)
    stopWaiters: list[Deferred[None]] = field(default_factory=list)

    def whenListening(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.listenWaiters.append(d)
        return d

    def fireListening(self, result: Optional[Failure]) -> None:
        waiting, self.listenWaiters = self.listenWaiters, []
        for d in waiting:
            d.callback(None) if result is None else d.errback(result)

    def waitForStop(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.stopWaiters.append(d)
        return d

    def finishStopping(self) -> None:
        waiting, self.stopWaiters = self.stopWaiters, []
        for d in waiting:
            d.callback(None)

    def beginStopping(self, machine: ForwardInputs) -> Deferred[None]:
        """
        Release the host connection and close the local port; the machine
        gets C{listenerClosed} once it is closed.
        """
        waited = self.waitForStop()
        self.release()

        def closeFailed(f: Failure) -> None:
            self.log.failure("tunnel to {label}: closing the local port failed", f, label=self.label)

        maybeDeferred(self.close).addErrback(closeFailed).addCallback(lambda _: machine.listenerClosed())
        return waited


def makeMachine() -> Callable[[ForwardCore], ForwardInputs]:
    """
    Build the machine (once, at import: L{ForwardMachine}).
    """
    machine = TypeMachineBuilder(ForwardInputs, ForwardCore)
    I = ForwardInputs  # noqa: E741 - short name for the table

    # -- what entering a state does (its data) ---------------------------

    def listen(c: ForwardInputs, s: ForwardCore) -> Deferred[None]:
        d = s.listen()

        def failed(f: Failure) -> None:
            if not f.check(CancelledError):
                c.listenFailed(f)

        d.addCallbacks(lambda _: c.listened(), failed)
        return d

    def dial(c: ForwardInputs, s: ForwardCore) -> Deferred[None]:
        d = s.connect()

        def failed(f: Failure) -> None:
            if not f.check(CancelledError):
                c.dialFailed(f.getErrorMessage())

        d.addCallbacks(lambda _: c.dialled(), failed)
        return d

    def connected(c: ForwardInputs, s: ForwardCore) -> IDelayedCall:
        s.lastError = None
        s.log.info("tunnel to {label}: connected", label=s.label)
        return s.clock.callLater(s.steadyAfter, c.steady)

    def waitForRetry(c: ForwardInputs, s: ForwardCore, reason: str = CONNECTION_LOST) -> IDelayedCall:
        s.failures += 1
        s.lastError = reason
        delay = s.retryPolicy(s.failures)
        s.log.info(
            "tunnel to {label}: host unreachable ({reason}); retrying in {delay:.1f} s",
            label=s.label, reason=reason, delay=delay,
        )
        return s.clock.callLater(delay, c.retryDue)

    def resolve(c: ForwardInputs, s: ForwardCore) -> Deferred[None]:
        d = s.resolve()

        def done(result: object) -> None:
            if isinstance(result, Failure):
                if result.check(CancelledError):
                    return
                s.log.info(
                    "tunnel to {label}: re-resolving failed: {why}", label=s.label, why=result.getErrorMessage()
                )
            c.resolved()

        d.addBoth(done)
        return d

    # -- states ----------------------------------------------------------

    Stopped = machine.state("stopped")
    Listening = machine.state("listening", listen)
    Connecting = machine.state("connecting", dial)
    Connected = machine.state("connected", connected)
    Steady = machine.state("steady")
    Waiting = machine.state("waiting", waitForRetry)
    Resolving = machine.state("resolving", resolve)
    Retrying = machine.state("retrying", dial)
    Stopping = machine.state("stopping")
    Restarting = machine.state("restarting")

    # -- start -----------------------------------------------------------

    @Stopped.upon(I.start).to(Listening)
    @Listening.upon(I.start, nodata=True).loop()
    @Stopping.upon(I.start).to(Restarting)
    @Restarting.upon(I.start).loop()
    def startListening(c: ForwardInputs, s: ForwardCore) -> Deferred[None]:
        return s.whenListening()

    @Connecting.upon(I.start, nodata=True).loop()
    @Connected.upon(I.start, nodata=True).loop()
    @Steady.upon(I.start).loop()
    @Waiting.upon(I.start, nodata=True).loop()
    @Resolving.upon(I.start, nodata=True).loop()
    @Retrying.upon(I.start, nodata=True).loop()
    def alreadyStarted(c: ForwardInputs, s: ForwardCore) -> Deferred[None]:
        return succeed(None)

    # -- the local port --------------------------------------------------

    @Listening.upon(I.listened, nodata=True).to(Connecting)
    def nowListening(c: ForwardInputs, s: ForwardCore) -> None:
        s.hold()
        s.fireListening(None)

    # (Automat passes a data state's data to a transition into a state
    # without data even with nodata=True: these take it and ignore it.)

    @Listening.upon(I.listenFailed).to(Stopped)
    def couldNotListen(c: ForwardInputs, s: ForwardCore, listening: Deferred[None], failure: Failure) -> None:
        s.fireListening(failure)

    @Stopping.upon(I.listenerClosed).to(Stopped)
    @Restarting.upon(I.listenerClosed).to(Listening)
    def closed(c: ForwardInputs, s: ForwardCore) -> None:
        s.finishStopping()

    # -- the host connection ---------------------------------------------
    # Entering the new state does the work (dial, wait, resolve: see the
    # state factories above); these only tidy up the state left.

    @Connecting.upon(I.dialled, nodata=True).to(Connected)
    @Retrying.upon(I.dialled, nodata=True).to(Connected)
    @Waiting.upon(I.retryDue, nodata=True).to(Resolving)
    @Resolving.upon(I.resolved, nodata=True).to(Retrying)
    def moveOn(c: ForwardInputs, s: ForwardCore) -> None:
        pass

    @Connecting.upon(I.dialFailed, nodata=True).to(Waiting)
    @Retrying.upon(I.dialFailed, nodata=True).to(Waiting)
    @Steady.upon(I.streamFailed).to(Waiting)
    def backOff(c: ForwardInputs, s: ForwardCore, reason: str) -> None:
        pass

    @Connected.upon(I.steady).to(Steady)
    def becameSteady(c: ForwardInputs, s: ForwardCore, timer: IDelayedCall) -> None:
        s.failures = 0

    @Steady.upon(I.hostLost).to(Connecting)
    def lostSteady(c: ForwardInputs, s: ForwardCore) -> None:
        s.log.info("tunnel to {label}: connection to the host lost; reconnecting", label=s.label)

    @Connected.upon(I.hostLost).to(Waiting)
    @Waiting.upon(I.hostConnected).to(Connected)
    def cancelTimer(c: ForwardInputs, s: ForwardCore, timer: IDelayedCall) -> None:
        timer.cancel()

    @Connected.upon(I.streamFailed).to(Waiting)
    def streamFailedWhenConnected(c: ForwardInputs, s: ForwardCore, timer: IDelayedCall, reason: str) -> None:
        timer.cancel()

    @Resolving.upon(I.hostConnected).to(Connected)
    def stopResolving(c: ForwardInputs, s: ForwardCore, resolving: Deferred[None]) -> None:
        resolving.cancel()

    # -- stop ------------------------------------------------------------

    @Stopped.upon(I.stop).loop()
    def alreadyStopped(c: ForwardInputs, s: ForwardCore) -> Deferred[None]:
        return succeed(None)

    @Listening.upon(I.stop).to(Stopping)
    def stopListening(c: ForwardInputs, s: ForwardCore, listening: Deferred[None]) -> Deferred[None]:
        listening.cancel()
        s.fireListening(Failure(CancelledError()))
        return s.beginStopping(c)

    @Connecting.upon(I.stop).to(Stopping)
    @Retrying.upon(I.stop).to(Stopping)
    @Resolving.upon(I.stop).to(Stopping)
    def stopPending(c: ForwardInputs, s: ForwardCore, pending: Deferred[None]) -> Deferred[None]:
        pending.cancel()
        return s.beginStopping(c)

    @Connected.upon(I.stop).to(Stopping)
    @Waiting.upon(I.stop).to(Stopping)
    def stopTimer(c: ForwardInputs, s: ForwardCore, timer: IDelayedCall) -> Deferred[None]:
        timer.cancel()
        return s.beginStopping(c)

    @Steady.upon(I.stop).to(Stopping)
    def stopSteady(c: ForwardInputs, s: ForwardCore) -> Deferred[None]:
        return s.beginStopping(c)

    @Stopping.upon(I.stop).loop()
    def alreadyStopping(c: ForwardInputs, s: ForwardCore) -> Deferred[None]:
        return s.waitForStop()

    @Restarting.upon(I.stop).to(Stopping)
    def stopRestarting(c: ForwardInputs, s: ForwardCore) -> Deferred[None]:
        s.fireListening(Failure(CancelledError()))
        return s.waitForStop()

    # -- queries ---------------------------------------------------------

    def unreachable(c: ForwardInputs, s: ForwardCore) -> str:
        return f"unreachable: {s.lastError}"

    def failFast(c: ForwardInputs, s: ForwardCore) -> Optional[BeamError]:
        return HostUnreachable(f"host unreachable ({s.lastError})")

    def stoppedRefusal(c: ForwardInputs, s: ForwardCore) -> Optional[BeamError]:
        return ForwardStopped("the forward is stopped")

    def upon(state: Any, input: Callable[..., Any]) -> Any:
        # Queries and ignored inputs never use a state's data.
        return state.upon(input, nodata=True) if hasattr(state, "factory") else state.upon(input)

    statusText: list[tuple[Any, str]] = [
        (Stopped, "stopped"), (Stopping, "stopped"), (Restarting, "connecting"),
        (Listening, "connecting"), (Connecting, "connecting"), (Retrying, "connecting"),
        (Connected, "connected"), (Steady, "connected"),
    ]
    for state, text in statusText:
        upon(state, I.status).loop().returns(text)
    for state in (Waiting, Resolving):
        upon(state, I.status).loop()(unreachable)
    for state in (Listening, Connecting, Connected, Steady):
        upon(state, I.refusal).loop().returns(None)
    for state in (Waiting, Resolving, Retrying):
        upon(state, I.refusal).loop()(failFast)
    for state in (Stopped, Stopping, Restarting):
        upon(state, I.refusal).loop()(stoppedRefusal)

    # -- ignored on purpose ----------------------------------------------
    # Stale results (a dial or lookup that lost a race with stop or with
    # the host connecting), events that change nothing (a second
    # connection while connected, a loss while already failing, our own
    # dial reported as a node event while we wait for it), and timers
    # already cancelled.

    ignored: dict[Any, list[Callable[..., Any]]] = {
        Stopped: [I.listened, I.listenFailed, I.listenerClosed, I.dialled, I.dialFailed, I.retryDue,
                  I.resolved, I.steady, I.hostConnected, I.hostLost, I.streamFailed],
        Listening: [I.listenerClosed, I.dialled, I.dialFailed, I.retryDue, I.resolved, I.steady,
                    I.hostConnected, I.hostLost, I.streamFailed],
        Connecting: [I.listened, I.listenFailed, I.listenerClosed, I.retryDue, I.resolved, I.steady,
                     I.hostConnected, I.hostLost, I.streamFailed],
        Connected: [I.listened, I.listenFailed, I.listenerClosed, I.dialled, I.dialFailed, I.retryDue,
                    I.resolved, I.hostConnected],
        Steady: [I.listened, I.listenFailed, I.listenerClosed, I.dialled, I.dialFailed, I.retryDue,
                 I.resolved, I.steady, I.hostConnected],
        Waiting: [I.listened, I.listenFailed, I.listenerClosed, I.dialled, I.dialFailed, I.resolved,
                  I.steady, I.hostLost, I.streamFailed],
        Resolving: [I.listened, I.listenFailed, I.listenerClosed, I.dialled, I.dialFailed, I.retryDue,
                    I.steady, I.hostLost, I.streamFailed],
        Retrying: [I.listened, I.listenFailed, I.listenerClosed, I.retryDue, I.resolved, I.steady,
                   I.hostConnected, I.hostLost, I.streamFailed],
        Stopping: [I.listened, I.listenFailed, I.dialled, I.dialFailed, I.retryDue, I.resolved, I.steady,
                   I.hostConnected, I.hostLost, I.streamFailed],
        Restarting: [I.listened, I.listenFailed, I.dialled, I.dialFailed, I.retryDue, I.resolved, I.steady,
                     I.hostConnected, I.hostLost, I.streamFailed],
    }
    for state, inputs in ignored.items():
        for input in inputs:
            upon(state, input).loop().returns(None)

    return machine.build()


#: Builds a forward's machine around its L{ForwardCore}.
ForwardMachine = makeMachine()

#: The states and the inputs that move them, in the order the docs list them.
STATES = ("stopped", "listening", "connecting", "connected", "steady", "waiting", "resolving", "retrying",
          "stopping", "restarting")
INPUTS = ("start", "stop", "listened", "listenFailed", "listenerClosed", "dialled", "dialFailed", "retryDue",
          "resolved", "steady", "hostConnected", "hostLost", "streamFailed")


def renderTable() -> str:
    """
    The transition table in Markdown, as docs/state-machines/tunnel-forward.md
    shows it: a row per state, a column per input (the queries C{status}
    and C{refusal} are left out); a state name moves there, C{·} is
    handled without moving, C{-} is ignored on purpose.
    """
    automaton = ForwardMachine.__automat_automaton__  # type: ignore[attr-defined]
    byName = {state.name: state for state in automaton.states()}
    lines = ["| forward | " + " | ".join(INPUTS) + " |", "|---|" + "---|" * len(INPUTS)]
    for name in STATES:
        state = byName[name]
        cells = []
        for input in INPUTS:
            new, outputs = automaton.outputForInput(state, input)
            if new is not state:
                cells.append(new.name)
            elif [o.name for o in outputs] == ["returns(None)"]:
                cells.append("-")
            else:
                cells.append("·")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
