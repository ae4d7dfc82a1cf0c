"""
Tests for L{beam.errors.describe} and L{beam.errors.rootCause}: any error
becomes one plain line for a user.
"""

from __future__ import annotations

import errno

from twisted.internet import defer
from twisted.internet import error as netError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
from twisted.web.http import _DataLoss

from beam.errors import BeamError, DialError, NodeStopped, describe, rootCause


def failed() -> Failure:
    """
    A Failure with a real traceback (frames), as an errback would get.
    """
    try:
        1 / 0
    except ZeroDivisionError:
        return Failure()
    raise AssertionError("unreachable")


class RootCauseTests(SynchronousTestCase):
    """
    L{rootCause} finds the exception inside its wrappers.
    """

    def test_unwraps(self) -> None:
        """
        A Failure, a Failure around a Failure, a C{FirstError} and a
        C{ResponseFailed} each give the exception they carry; an exception
        is its own root cause.
        """
        done = netError.ConnectionDone()
        self.assertIs(rootCause(done), done)
        self.assertIs(rootCause(Failure(done)), done)
        self.assertIs(rootCause(Failure(Failure(Failure(done)))), done)
        self.assertIs(rootCause(defer.FirstError(Failure(done), 0)), done)
        self.assertIs(rootCause(Failure(defer.FirstError(Failure(Failure(done)), 3))), done)
        self.assertIs(rootCause(ResponseNeverReceived([Failure(done)])), done)
        self.assertIs(rootCause(Failure(ResponseFailed([Failure(done), Failure(ValueError())]))), done)

    def test_emptyReasons(self) -> None:
        """
        A C{ResponseFailed} with no reasons is the root cause itself.
        """
        empty = ResponseFailed([])
        self.assertIs(rootCause(empty), empty)


class DescribeTests(SynchronousTestCase):
    """
    L{describe} says what went wrong in one plain line.
    """

    def assertPlain(self, text: str) -> None:
        self.assertNotIn("\n", text)
        for word in ("Failure", "Traceback", "<class", "twisted.", "FirstError"):
            self.assertNotIn(word, text)

    def test_beamErrors(self) -> None:
        """
        A L{BeamError} says its message, or its docstring's first line
        without one; a message over several lines becomes one.
        """
        self.assertEqual(describe(DialError("could not connect to x")), "could not connect to x")
        self.assertEqual(describe(NodeStopped()), "The node stopped before the operation finished.")
        self.assertEqual(describe(BeamError("first\n  second\n")), "first; second")
        self.assertEqual(describe(Failure(Failure(DialError("no route")))), "no route")

    def test_connectionErrors(self) -> None:
        """
        Twisted's and Python's connection errors, timeouts and
        cancellations become plain words, however wrapped.
        """
        cases = {
            netError.ConnectionDone(): "the connection was closed",
            netError.ConnectionLost(): "the connection was lost",
            netError.ConnectionAborted(): "the connection was aborted",
            netError.ConnectionRefusedError(111, "Connection refused"): "the connection was refused",
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"): "the connection was refused",
            ConnectionResetError(errno.ECONNRESET, "reset"): "the connection was reset",
            netError.TCPTimedOutError(): "the connection timed out",
            netError.TimeoutError(): "the connection timed out",
            netError.NoRouteError(): "no route to the host",
            defer.TimeoutError(): "timed out",
            TimeoutError(): "timed out",
            defer.CancelledError(): "cancelled",
            netError.ConnectingCancelledError(None): "connecting was cancelled",
        }
        for error, words in cases.items():
            for wrapped in (error, Failure(error), Failure(Failure(error)),
                            defer.FirstError(Failure(error), 0)):
                self.assertEqual(describe(wrapped), words, repr(wrapped))

    def test_dns(self) -> None:
        """
        A DNS failure says so, with the name that was looked up.
        """
        text = describe(Failure(netError.DNSLookupError("no results for hostname lookup: nowhere.invalid")))
        self.assertEqual(
            text, "the host name could not be resolved (no results for hostname lookup: nowhere.invalid)"
        )
        self.assertEqual(describe(netError.DNSLookupError()), "the host name could not be resolved")

    def test_listenAndConnect(self) -> None:
        """
        C{CannotListenError} names the address and the OS's reason; another
        C{ConnectError} says it could not connect, and why.
        """
        e = netError.CannotListenError("127.0.0.1", 80, OSError(errno.EADDRINUSE, "Address already in use"))
        self.assertEqual(describe(e), "cannot listen on 127.0.0.1:80: Address already in use")
        e = netError.CannotListenError("", 80, OSError(errno.EACCES, "Permission denied"))
        self.assertEqual(describe(e), "cannot listen on *:80: Permission denied")
        self.assertEqual(describe(netError.ConnectError(None, "Host is down")), "could not connect: Host is down")
        self.assertEqual(describe(netError.ConnectError(errno.EHOSTUNREACH)),
                         "could not connect: No route to host")
        self.assertEqual(describe(netError.ConnectError()), "could not connect")

    def test_osErrors(self) -> None:
        """
        An L{OSError} says its C{strerror}, with the file name if any.
        """
        self.assertEqual(describe(PermissionError(errno.EACCES, "Permission denied", "/etc/x")),
                         "Permission denied: /etc/x")
        self.assertEqual(describe(OSError(errno.ENOSPC, "No space left on device")), "No space left on device")

    def test_embeddedReprsScrubbed(self) -> None:
        """
        A message that already embeds a Failure (its str, its repr in a
        list, or a C{FirstError} around one) reads as plain words.
        """
        done = Failure(netError.ConnectionDone())
        lost = Failure(netError.ConnectionLost())
        cases = {
            f"the tunnel stream ended ({done})": "the tunnel stream ended (the connection was closed)",
            f"cut off: {ResponseFailed([done])}": "cut off: the connection was closed",
            f"cut off: {ResponseFailed([done, lost])}":
                "cut off: the connection was closed, the connection was lost",
            f"DHT bootstrap: {defer.FirstError(lost, 0)}": "DHT bootstrap: the connection was lost",
            f"cut off: {ResponseFailed([done, Failure(_DataLoss())])}": "cut off: the connection was closed",
            f"odd: {failed()}": "odd: division by zero",
            f"odd: {Failure(ValueError('bad value.'))}": "odd: bad value",
        }
        for message, words in cases.items():
            text = describe(BeamError(message))
            self.assertEqual(text, words, message)
            self.assertPlain(text)
        self.assertEqual(describe(BeamError("a list [1, 2] stays")), "a list [1, 2] stays")

    def test_anythingElse(self) -> None:
        """
        Any other exception says its message on one line without a final
        full stop, or its docstring's first line, or its name.
        """
        self.assertEqual(describe(ValueError("bad\nthing.")), "bad; thing")
        self.assertEqual(describe(failed()), "division by zero")

        class Quiet(Exception):
            """
            Something quiet happened.
            """

        class Nameless(Exception):
            pass

        Nameless.__doc__ = None
        self.assertEqual(describe(Quiet()), "Something quiet happened")
        self.assertEqual(describe(Nameless()), "Nameless")

    def test_alwaysOneLine(self) -> None:
        """
        Whatever goes in, what comes out is one line with no Twisted repr.
        """
        for error in (
            Failure(Failure(netError.ConnectionDone())), failed(), ResponseNeverReceived([failed()]),
            BeamError(str(failed())), defer.FirstError(failed(), 1), Failure(KeyError("k")),
        ):
            self.assertPlain(describe(error))
