"""
The one small pattern Beam uses for lifecycles that are not hot paths: an
enum of states, an enum of inputs, and one I{total} transition table.

Why not flags: a node with C{_stopping} and C{_stopped} and C{running}
has eight combinations of which four mean something, and nothing says
which input is legal where.  Why not Automat everywhere: Automat hides the
state inside the machine, and the objects here (a node, a peer connection)
are read by status output and by other objects that need to ask "which
state?" cheaply; a table is also trivially rendered into the docs.  (The
tunnel forward does use Automat, as Twisted's C{ClientService} does: it is
a reconnecting client with outputs on every transition; the yamux stream
uses the same table idea with precomputed per-state attributes for its
hot path, in C{beam.p2p.muxer._yamux_lifecycle}.)

Each (state, input) pair must have an entry: a next state, L{IGNORE}, or
L{ILLEGAL} (our own code never does this: raises L{IllegalTransition}, so
a bug is loud in tests).  L{StateMachine} checks completeness when it is
built, at import time.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Generic, Mapping, TypeVar, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure


class Outcome(Enum):
    """
    What an input does when it moves to no state.
    """

    IGNORE = "ignore"
    ILLEGAL = "illegal"


IGNORE = Outcome.IGNORE
ILLEGAL = Outcome.ILLEGAL

S = TypeVar("S", bound=Enum)
I = TypeVar("I", bound=Enum)  # noqa: E741


class IllegalTransition(RuntimeError):
    """
    An input our own code should never give in the current state.
    """


class StateMachine(Generic[S, I]):
    """
    A checked, total transition table.

    @param name: used in errors and the rendered table.
    """

    def __init__(self, name: str, states: type[S], inputs: type[I],
                 table: Mapping[tuple[S, I], Union[S, Outcome]]) -> None:
        missing = [(s.name, i.name) for s in states for i in inputs if (s, i) not in table]
        if missing:
            raise ValueError(f"{name}: transitions missing for {missing}")
        self.name = name
        self.states = states
        self.inputs = inputs
        self.table = dict(table)

    def next(self, state: S, event: I) -> Union[S, Outcome]:
        """
        The outcome of C{event} in C{state}: the next state or L{IGNORE}.

        @raise IllegalTransition: the table says L{ILLEGAL}.
        """
        outcome = self.table[state, event]
        if outcome is ILLEGAL:
            raise IllegalTransition(f"{self.name}: {event.name} is illegal in state {state.name}")
        return outcome

    def render(self) -> str:
        """
        The table in Markdown: a row per state, a column per input; C{·}
        stays, C{-} ignores, C{x} is illegal.
        """
        inputs = list(self.inputs)
        lines = [f"| {self.name} | " + " | ".join(i.name for i in inputs) + " |",
                 "|---|" + "---|" * len(inputs)]
        for state in self.states:
            cells = []
            for event in inputs:
                out = self.table[state, event]
                cells.append("·" if out is state else "-" if out is IGNORE else "x" if out is ILLEGAL
                             else out.name)
            lines.append(f"| {state.name} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


_PENDING = object()
_OK = object()


class Readiness:
    """
    The outcome of an asynchronous start (a node's listeners, the control
    socket, a daemon's whole start), for whoever asks, reported once.

    Twisted's L{MultiService.startService} ignores what its children's
    C{startService} return, so a failure to listen would end up as an
    "Unhandled error in Deferred" at garbage collection, or nowhere.  A
    service records its start with L{begin} (and still returns the
    Deferred, for callers that wait on it); anyone may then ask L{when}.
    Once someone has asked, the failure is theirs to report, and the
    original Deferred stops carrying it (no unhandled-error noise).
    """

    def __init__(self) -> None:
        self._result: Any = None
        self._origin: Any = None
        self._waiters: list[Any] = []

    def begin(self, started: Any) -> Any:
        """
        Record C{started} (a Deferred) as the start under way; returns it.
        """
        self._result = _PENDING
        self._origin = started
        started.addBoth(self._settle)
        return started

    def reset(self) -> None:
        """
        Forget the outcome (the service stopped).
        """
        self._result = None
        self._origin = None

    def _settle(self, result: Any) -> Any:
        self._result = result if isinstance(result, Failure) else _OK
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.errback(result) if isinstance(result, Failure) else w.callback(None)
        return result

    @property
    def started(self) -> bool:
        return self._result is not None

    def when(self) -> Any:
        """
        A new Deferred: fires once the start succeeded, fails with why it
        did not, or fails with L{NotStarted} when nothing was started.
        """
        if self._result is None:
            return fail(NotStarted("not started"))
        origin, self._origin = self._origin, None
        if origin is not None:
            origin.addErrback(lambda f: None)
        if self._result is _PENDING:
            d: Deferred[None] = Deferred()
            self._waiters.append(d)
            return d
        return fail(self._result) if isinstance(self._result, Failure) else succeed(None)


class NotStarted(RuntimeError):
    """
    Asked for the outcome of a start that did not happen.
    """
