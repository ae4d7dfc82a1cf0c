"""
The lifecycle of one yamux stream, as an explicit state machine: an enum of
states, an enum of inputs, and one total transition table.

A yamux stream is two half-duplex directions that close independently with a
FIN, plus an abrupt end (RST, our abort, or the session's loss).  Each
direction takes two steps to close, because a FIN can wait behind data:

  - I{local} (what we send): C{open} -> C{closing} (L{loseConnection} was
    called; our FIN waits behind queued data) -> C{closed} (FIN sent);
  - I{remote} (what we receive): C{open} -> C{closing} (the peer's FIN
    arrived; it waits behind buffered data, a paused reader, or a protocol
    not yet set) -> C{closed} (FIN delivered: the protocol got
    C{readConnectionLost}, or its stream was closed for it).

The states are the nine pairs, the last of which is transient, plus the
terminal one::

    local \\ remote   open           closing                      closed
    open             OPEN           REMOTE_CLOSING               REMOTE_CLOSED
    closing          LOCAL_CLOSING  BOTH_CLOSING                 LOCAL_CLOSING_REMOTE_CLOSED
    closed           LOCAL_CLOSED   LOCAL_CLOSED_REMOTE_CLOSING  DONE  --FINISH-->  CLOSED

    every state but CLOSED  --RESET-->  CLOSED

The inputs:

  - C{WRITE}: the application writes.  Accepted while our direction is open,
    ignored after (as Twisted transports ignore writes after
    C{loseConnection}).
  - C{CLOSE}: C{loseConnection}/C{loseWriteConnection}/C{stopProducing}, or
    the peer's FIN reaching a protocol that cannot half-close.
  - C{FIN_DUE}: our queue emptied while our FIN waited: the FIN is sent.
  - C{DATA}: a data frame arrived.  After the peer's FIN it is a protocol
    violation (the session goes away with a protocol error); after the
    stream ended it is dropped (within the window we had granted).
  - C{REMOTE_FIN}: a frame with the FIN flag.  A repeated FIN is ignored.
  - C{FIN_DELIVERED}: everything before the peer's FIN reached the
    protocol, and now the FIN did.
  - C{WINDOW}: a window update (more send credit).  Ignored once ended.
  - C{RESET}: RST received, L{abortConnection}, or the session lost.
  - C{FINISH}: both FINs are through; only in C{DONE}.

Every (state, input) pair has an entry in L{TRANSITIONS}, on purpose: a next
state (the same state when the input is simply handled), L{IGNORE},
L{VIOLATION} (the peer broke the protocol), or L{ILLEGAL} (our own code
never does this; it raises L{IllegalTransition}, so a bug is loud in
tests).  The full table, rendered by L{renderTable}, is in
C{docs/state-machines/yamux-stream.md}; a test keeps the two equal.

What is deliberately I{not} a state: flow control.  Whether the reader
paused us, whether a producer is registered, streaming, or paused by us,
whether the peer used up its window, and the re-entrancy guards change per
write or per pause, independently of the lifecycle; multiplying them into
the states would square the table and put a transition on every write.  The
hot paths instead read one precomputed attribute of the current state
(L{StreamState.sending}, L{StreamState.receiving}), derived from the table
at import, so a write costs what the two booleans it replaces did.  Neither
is the SYN/ACK handshake a state: yamux lets data flow before the ACK, and a
refused SYN comes back as an RST, which is C{RESET}.
"""

from __future__ import annotations

from enum import Enum


class StreamState(Enum):
    """
    Where a stream is in its life; see the module docstring for the grid.

    Attributes derived from L{TRANSITIONS} at import, for the hot paths:

    @ivar sending: C{WRITE} is accepted (our direction is open).
    @ivar receiving: C{DATA} is accepted (the peer's direction is open).
    @ivar finQueued: our FIN waits for the queue to empty (C{FIN_DUE} moves).
    @ivar finPending: the peer's FIN waits to be delivered
        (C{FIN_DELIVERED} moves).
    """

    #: Both directions open.
    OPEN = "open"
    #: We closed; our FIN waits behind queued data.  The peer may send.
    LOCAL_CLOSING = "local closing"
    #: Our FIN was sent (half-closed, local).  The peer may send.
    LOCAL_CLOSED = "local closed"
    #: The peer's FIN arrived but waits behind data not yet delivered.
    REMOTE_CLOSING = "remote closing"
    #: The peer's FIN was delivered (half-closed, remote).  We may send.
    REMOTE_CLOSED = "remote closed"
    #: Our FIN is queued and the peer's waits to be delivered.
    BOTH_CLOSING = "both closing"
    #: Our FIN is queued; the peer's was delivered.
    LOCAL_CLOSING_REMOTE_CLOSED = "local closing, remote closed"
    #: Our FIN was sent; the peer's waits to be delivered.
    LOCAL_CLOSED_REMOTE_CLOSING = "local closed, remote closing"
    #: Both FINs are through; transient: the stream finishes at once.
    DONE = "done"
    #: Ended: forgotten by the session, buffers dropped, the protocol told
    #: (or the reason kept for a protocol not yet set).  Terminal.
    CLOSED = "closed"

    sending: bool
    receiving: bool
    finQueued: bool
    finPending: bool


class StreamInput(Enum):
    """
    The lifecycle events of a stream; see the module docstring.
    """

    WRITE = "write"
    CLOSE = "close"
    FIN_DUE = "FIN due"
    DATA = "data frame"
    REMOTE_FIN = "FIN frame"
    FIN_DELIVERED = "FIN delivered"
    WINDOW = "window update"
    RESET = "reset"
    FINISH = "finish"


class Outcome(Enum):
    """
    What an input does when it moves to no state.
    """

    #: Drop the input: nothing happens.
    IGNORE = "ignore"
    #: The peer broke the protocol: the session goes away.
    VIOLATION = "violation"
    #: Our own code never sends this input here; it is a bug.
    ILLEGAL = "illegal"


IGNORE = Outcome.IGNORE
VIOLATION = Outcome.VIOLATION
ILLEGAL = Outcome.ILLEGAL


class IllegalTransition(RuntimeError):
    """
    An input our own code should never give a stream in its state.
    """


def transition(state: StreamState, event: StreamInput) -> StreamState | Outcome:
    """
    The outcome of C{event} in C{state}: the next state, L{IGNORE} or
    L{VIOLATION}.

    @raise IllegalTransition: the table says L{ILLEGAL}.
    """
    outcome = TRANSITIONS[state, event]
    if outcome is ILLEGAL:
        raise IllegalTransition(f"yamux stream input {event.name} is illegal in state {state.name}")
    return outcome


def renderTable() -> str:
    """
    L{TRANSITIONS} as a Markdown table: a row per state, a column per
    input; C{·} stays in the same state, C{-} ignores the input, C{!} is a
    protocol violation, C{x} is illegal (a bug).
    """
    marks = {IGNORE: "-", VIOLATION: "!", ILLEGAL: "x"}
    inputs = list(StreamInput)
    lines = [
        "| state | " + " | ".join(i.name for i in inputs) + " |",
        "|---|" + "---|" * len(inputs),
    ]
    for state in StreamState:
        cells = []
        for event in inputs:
            outcome = TRANSITIONS[state, event]
            if outcome is state:
                cells.append("·")
            elif isinstance(outcome, StreamState):
                cells.append(outcome.name)
            else:
                cells.append(marks[outcome])
        lines.append(f"| {state.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_S = StreamState
_I = StreamInput

#: The whole lifecycle: every (state, input) pair, on purpose.  Grouped by
#: state; within a state, in the order of L{StreamInput}.
TRANSITIONS: dict[tuple[StreamState, StreamInput], StreamState | Outcome] = {
    # Both directions open.
    (_S.OPEN, _I.WRITE): _S.OPEN,
    (_S.OPEN, _I.CLOSE): _S.LOCAL_CLOSING,
    (_S.OPEN, _I.FIN_DUE): ILLEGAL,
    (_S.OPEN, _I.DATA): _S.OPEN,
    (_S.OPEN, _I.REMOTE_FIN): _S.REMOTE_CLOSING,
    (_S.OPEN, _I.FIN_DELIVERED): ILLEGAL,
    (_S.OPEN, _I.WINDOW): _S.OPEN,
    (_S.OPEN, _I.RESET): _S.CLOSED,
    (_S.OPEN, _I.FINISH): ILLEGAL,
    # Our FIN waits behind queued data.
    (_S.LOCAL_CLOSING, _I.WRITE): IGNORE,
    (_S.LOCAL_CLOSING, _I.CLOSE): IGNORE,
    (_S.LOCAL_CLOSING, _I.FIN_DUE): _S.LOCAL_CLOSED,
    (_S.LOCAL_CLOSING, _I.DATA): _S.LOCAL_CLOSING,
    (_S.LOCAL_CLOSING, _I.REMOTE_FIN): _S.BOTH_CLOSING,
    (_S.LOCAL_CLOSING, _I.FIN_DELIVERED): ILLEGAL,
    (_S.LOCAL_CLOSING, _I.WINDOW): _S.LOCAL_CLOSING,
    (_S.LOCAL_CLOSING, _I.RESET): _S.CLOSED,
    (_S.LOCAL_CLOSING, _I.FINISH): ILLEGAL,
    # Our FIN was sent; the peer may still send.
    (_S.LOCAL_CLOSED, _I.WRITE): IGNORE,
    (_S.LOCAL_CLOSED, _I.CLOSE): IGNORE,
    (_S.LOCAL_CLOSED, _I.FIN_DUE): ILLEGAL,
    (_S.LOCAL_CLOSED, _I.DATA): _S.LOCAL_CLOSED,
    (_S.LOCAL_CLOSED, _I.REMOTE_FIN): _S.LOCAL_CLOSED_REMOTE_CLOSING,
    (_S.LOCAL_CLOSED, _I.FIN_DELIVERED): ILLEGAL,
    (_S.LOCAL_CLOSED, _I.WINDOW): _S.LOCAL_CLOSED,
    (_S.LOCAL_CLOSED, _I.RESET): _S.CLOSED,
    (_S.LOCAL_CLOSED, _I.FINISH): ILLEGAL,
    # The peer's FIN waits behind undelivered data.
    (_S.REMOTE_CLOSING, _I.WRITE): _S.REMOTE_CLOSING,
    (_S.REMOTE_CLOSING, _I.CLOSE): _S.BOTH_CLOSING,
    (_S.REMOTE_CLOSING, _I.FIN_DUE): ILLEGAL,
    (_S.REMOTE_CLOSING, _I.DATA): VIOLATION,
    (_S.REMOTE_CLOSING, _I.REMOTE_FIN): IGNORE,
    (_S.REMOTE_CLOSING, _I.FIN_DELIVERED): _S.REMOTE_CLOSED,
    (_S.REMOTE_CLOSING, _I.WINDOW): _S.REMOTE_CLOSING,
    (_S.REMOTE_CLOSING, _I.RESET): _S.CLOSED,
    (_S.REMOTE_CLOSING, _I.FINISH): ILLEGAL,
    # The peer's FIN was delivered; we may still send.
    (_S.REMOTE_CLOSED, _I.WRITE): _S.REMOTE_CLOSED,
    (_S.REMOTE_CLOSED, _I.CLOSE): _S.LOCAL_CLOSING_REMOTE_CLOSED,
    (_S.REMOTE_CLOSED, _I.FIN_DUE): ILLEGAL,
    (_S.REMOTE_CLOSED, _I.DATA): VIOLATION,
    (_S.REMOTE_CLOSED, _I.REMOTE_FIN): IGNORE,
    (_S.REMOTE_CLOSED, _I.FIN_DELIVERED): ILLEGAL,
    (_S.REMOTE_CLOSED, _I.WINDOW): _S.REMOTE_CLOSED,
    (_S.REMOTE_CLOSED, _I.RESET): _S.CLOSED,
    (_S.REMOTE_CLOSED, _I.FINISH): ILLEGAL,
    # Both FINs wait.
    (_S.BOTH_CLOSING, _I.WRITE): IGNORE,
    (_S.BOTH_CLOSING, _I.CLOSE): IGNORE,
    (_S.BOTH_CLOSING, _I.FIN_DUE): _S.LOCAL_CLOSED_REMOTE_CLOSING,
    (_S.BOTH_CLOSING, _I.DATA): VIOLATION,
    (_S.BOTH_CLOSING, _I.REMOTE_FIN): IGNORE,
    (_S.BOTH_CLOSING, _I.FIN_DELIVERED): _S.LOCAL_CLOSING_REMOTE_CLOSED,
    (_S.BOTH_CLOSING, _I.WINDOW): _S.BOTH_CLOSING,
    (_S.BOTH_CLOSING, _I.RESET): _S.CLOSED,
    (_S.BOTH_CLOSING, _I.FINISH): ILLEGAL,
    # Our FIN waits; the peer's was delivered.
    (_S.LOCAL_CLOSING_REMOTE_CLOSED, _I.WRITE): IGNORE,
    (_S.LOCAL_CLOSING_REMOTE_CLOSED, _I.CLOSE): IGNORE,
    (_S.LOCAL_CLOSING_REMOTE_CLOSED, _I.FIN_DUE): _S.DONE,
    (_S.LOCAL_CLOSING_REMOTE_CLOSED, _I.DATA): VIOLATION,
    (_S.LOCAL_CLOSING_REMOTE_CLOSED, _I.REMOTE_FIN): IGNORE,
    (_S.LOCAL_CLOSING_REMOTE_CLOSED, _I.FIN_DELIVERED): ILLEGAL,
    (_S.LOCAL_CLOSING_REMOTE_CLOSED, _I.WINDOW): _S.LOCAL_CLOSING_REMOTE_CLOSED,
    (_S.LOCAL_CLOSING_REMOTE_CLOSED, _I.RESET): _S.CLOSED,
    (_S.LOCAL_CLOSING_REMOTE_CLOSED, _I.FINISH): ILLEGAL,
    # Our FIN was sent; the peer's waits.
    (_S.LOCAL_CLOSED_REMOTE_CLOSING, _I.WRITE): IGNORE,
    (_S.LOCAL_CLOSED_REMOTE_CLOSING, _I.CLOSE): IGNORE,
    (_S.LOCAL_CLOSED_REMOTE_CLOSING, _I.FIN_DUE): ILLEGAL,
    (_S.LOCAL_CLOSED_REMOTE_CLOSING, _I.DATA): VIOLATION,
    (_S.LOCAL_CLOSED_REMOTE_CLOSING, _I.REMOTE_FIN): IGNORE,
    (_S.LOCAL_CLOSED_REMOTE_CLOSING, _I.FIN_DELIVERED): _S.DONE,
    (_S.LOCAL_CLOSED_REMOTE_CLOSING, _I.WINDOW): _S.LOCAL_CLOSED_REMOTE_CLOSING,
    (_S.LOCAL_CLOSED_REMOTE_CLOSING, _I.RESET): _S.CLOSED,
    (_S.LOCAL_CLOSED_REMOTE_CLOSING, _I.FINISH): ILLEGAL,
    # Both FINs through; the stream finishes at once (the protocol may
    # still abort from readConnectionLost before it does).
    (_S.DONE, _I.WRITE): IGNORE,
    (_S.DONE, _I.CLOSE): IGNORE,
    (_S.DONE, _I.FIN_DUE): ILLEGAL,
    (_S.DONE, _I.DATA): VIOLATION,
    (_S.DONE, _I.REMOTE_FIN): IGNORE,
    (_S.DONE, _I.FIN_DELIVERED): ILLEGAL,
    (_S.DONE, _I.WINDOW): _S.DONE,
    (_S.DONE, _I.RESET): _S.CLOSED,
    (_S.DONE, _I.FINISH): _S.CLOSED,
    # Ended.  Late frames (within the window we granted), writes, closes and
    # aborts are dropped; nothing in our code finishes or sends a FIN here.
    (_S.CLOSED, _I.WRITE): IGNORE,
    (_S.CLOSED, _I.CLOSE): IGNORE,
    (_S.CLOSED, _I.FIN_DUE): ILLEGAL,
    (_S.CLOSED, _I.DATA): IGNORE,
    (_S.CLOSED, _I.REMOTE_FIN): IGNORE,
    (_S.CLOSED, _I.FIN_DELIVERED): ILLEGAL,
    (_S.CLOSED, _I.WINDOW): IGNORE,
    (_S.CLOSED, _I.RESET): IGNORE,
    (_S.CLOSED, _I.FINISH): ILLEGAL,
}


def _derive() -> None:
    """
    Check that L{TRANSITIONS} is total and that the inputs the hot paths
    test through an attribute have only the outcomes those paths handle;
    then set each state's attributes from the table.
    """
    for state in StreamState:
        for event in StreamInput:
            if (state, event) not in TRANSITIONS:
                raise AssertionError(f"no transition for {event.name} in {state.name}")
        write = TRANSITIONS[state, StreamInput.WRITE]
        data = TRANSITIONS[state, StreamInput.DATA]
        if write not in (state, IGNORE) or data not in (state, IGNORE, VIOLATION):
            raise AssertionError(f"{state.name}: WRITE and DATA may only stay or be refused")
        state.sending = write is state
        state.receiving = data is state
        state.finQueued = isinstance(TRANSITIONS[state, StreamInput.FIN_DUE], StreamState)
        state.finPending = isinstance(TRANSITIONS[state, StreamInput.FIN_DELIVERED], StreamState)
    if len(TRANSITIONS) != len(StreamState) * len(StreamInput):
        raise AssertionError("TRANSITIONS has entries for unknown states or inputs")


_derive()
