"""
L{JSONResource}: a C{twisted.web} resource that speaks JSON, and the
request-checking helpers its subclasses use.

A subclass answers a method by defining C{json_<METHOD>(request)}, which
returns the answer (a status value, a C{dict}, or a L{Deferred} firing
with one) or raises.  The base class does the rest, the same way for every
route of the control socket:

  - the answer is rendered with L{asJSON} and must be a JSON object;
  - L{NotFound} answers 404, L{Conflict} 409, L{TooLarge} 413, any other
    L{BeamError} 400, each as C{{"error": "<its text>"}}; anything else is
    a bug: 500 with a generic text, the traceback logged and never sent;
  - a path below the resource that it does not know answers 404, a method
    it does not define 405 (naming the ones it does), and a resource with
    no methods at all (an inner node of the URL tree) 404;
  - a trailing slash is ignored.

A handler that creates something sets its own code
(C{request.setResponseCode(201)}); otherwise success is 200.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource

if TYPE_CHECKING:
    # Only annotations: twisted.web.server is the control socket's to
    # import, when it first serves (beam.daemon.control.socket).
    from twisted.web.server import Request

from beam.controlapi.values import asJSON
from beam.errors import BeamError, Conflict, NotFound

#: C{twisted.web.server.NOT_DONE_YET} (C{1}), without importing the server.
NOT_DONE_YET = 1

__all__ = [
    "MAX_BODY",
    "Alias",
    "BadRequest",
    "JSONResource",
    "TooLarge",
    "checkUnknown",
    "childKey",
    "field",
    "portField",
    "queryFlag",
    "readBody",
]

#: The largest request body accepted.
MAX_BODY = 64 * 1024

_INTERNAL = {"error": "internal error; see the node's log"}


class BadRequest(BeamError):
    """
    The request is malformed.
    """


class TooLarge(BeamError):
    """
    The request body is too large.
    """


def _encode(body: Any) -> bytes:
    return (json.dumps(body, allow_nan=False) + "\n").encode("utf-8")


def _write(request: Request, code: int, body: Any) -> None:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.write(_encode(body))
    request.finish()


class JSONResource(Resource):
    """
    A resource whose methods answer JSON; see the module docstring.
    """

    log = Logger()

    def jsonMethods(self) -> list[str]:
        """
        The methods this resource answers (its C{json_*} methods), sorted.
        """
        return sorted(name[5:] for name in dir(self) if name.startswith("json_") and callable(getattr(self, name)))

    def getChild(self, path: bytes, request: Request) -> IResource:
        """
        An empty segment (a trailing slash) is this resource; anything
        else not put here with C{putChild} is not found.
        """
        if path == b"":
            return self
        return _NOT_FOUND

    def render(self, request: Request) -> Any:
        methods = self.jsonMethods()
        if not methods:
            where = request.path.decode("latin-1")
            _write(request, 404, {"error": f"no such endpoint: {where}"})
            return NOT_DONE_YET
        method = request.method.decode("latin-1")
        handler = getattr(self, f"json_{method}", None) if method in methods else None
        if handler is None:
            request.setHeader(b"allow", ", ".join(methods).encode("ascii"))
            _write(request, 405, {"error": f"{method} is not allowed here; use {', '.join(methods)}"})
            return NOT_DONE_YET
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def answer(result: Any) -> None:
            if finished[0]:
                return
            if isinstance(result, Failure):
                code, body = self._failureBody(request, result)
                _write(request, code, body)
                return
            try:
                body = asJSON(result)
                if not isinstance(body, dict):
                    raise TypeError(f"a control answer must be a JSON object, not {type(body).__name__}")
                encoded = _encode(body)
            except (TypeError, ValueError):
                self.log.failure("control answer to {method} {path} is not a JSON object",
                                 method=method, path=request.path.decode("latin-1"))
                _write(request, 500, _INTERNAL)
                return
            request.setHeader(b"content-type", b"application/json")
            request.write(encoded)
            request.finish()

        maybeDeferred(handler, request).addBoth(answer).addErrback(
            lambda f: self.log.failure("answering a control request failed", f)
        )
        return NOT_DONE_YET

    def _failureBody(self, request: Request, failure: Failure) -> tuple[int, dict[str, Any]]:
        err = failure.value
        if isinstance(err, TooLarge):
            return 413, {"error": str(err)}
        if isinstance(err, NotFound):
            return 404, {"error": str(err)}
        if isinstance(err, Conflict):
            return 409, {"error": str(err)}
        if isinstance(err, BeamError):
            return 400, {"error": str(err)}
        self.log.failure(
            "control request {method} {path} failed", failure,
            method=request.method.decode("latin-1"), path=request.path.decode("latin-1"),
        )
        return 500, dict(_INTERNAL)


_NOT_FOUND = JSONResource()


class Alias(Resource):
    """
    Serves what another path of the same tree serves: an old URL kept
    working after its resource moved (C{/v1/network/routes} is
    C{/v1/kademlia/routes}).  The target is looked up on each request, so
    it may be mounted after the alias; paths below the alias are aliases
    of the paths below the target.

    @ivar methods: the methods the alias passes on (L{None}: all); others
        answer 405, so an alias for lookups cannot delete.
    """

    def __init__(self, root: IResource, path: Sequence[bytes], methods: Sequence[str] | None = None) -> None:
        super().__init__()
        self.root = root
        self.path = list(path)
        self.methods = sorted(methods) if methods is not None else None

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        return Alias(self.root, self.path + [path], self.methods)

    def render(self, request: Request) -> Any:
        method = request.method.decode("latin-1")
        if self.methods is not None and method not in self.methods:
            request.setHeader(b"allow", ", ".join(self.methods).encode("ascii"))
            _write(request, 405, {"error": f"{method} is not allowed here; use {', '.join(self.methods)}"})
            return NOT_DONE_YET
        resource = self.root
        for segment in self.path:
            resource = resource.getChildWithDefault(segment, request)
        return resource.render(request)


# -- checking requests ----------------------------------------------------------


def childKey(path: bytes) -> str | None:
    """
    A path segment (already percent-decoded by C{twisted.web}) as text, or
    L{None} when it is not UTF-8.
    """
    try:
        return path.decode("utf-8")
    except UnicodeDecodeError:
        return None


def readBody(request: Request) -> dict[str, Any]:
    """
    The request's JSON object body; an empty body is C{{}}.

    @raise TooLarge: over L{MAX_BODY} bytes.
    @raise BadRequest: not JSON, or not an object.
    """
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise TooLarge(f"request body larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


_MISSING = object()
_KIND_NAMES = {"str": "a string", "int": "an integer", "bool": "a boolean", "list": "a list"}


def field(body: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any = _MISSING) -> Any:
    """
    The field C{name} of C{body}, checked to be one of C{kinds}; absent or
    C{null} means C{default} (when one is given).

    @raise BadRequest: missing (without a default) or of the wrong kind.
    """
    value = body.get(name, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise BadRequest(f"missing field {name!r}")
        return default
    # bool is an int subclass: a port of `true` is a mistake, not port 1.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(_KIND_NAMES.get(k.__name__, k.__name__) for k in kinds)
        raise BadRequest(f"field {name!r} must be {names}")
    return value


def checkUnknown(body: dict[str, Any], known: set[str]) -> None:
    """
    @raise BadRequest: C{body} has fields outside C{known}.
    """
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")


def portField(body: dict[str, Any], name: str, required: bool) -> int | None:
    """
    A port number field (1-65535); L{None} when optional and absent.
    """
    value = field(body, name, (int,)) if required else field(body, name, (int,), None)
    if value is not None and not 1 <= value <= 65535:
        raise BadRequest(f"field {name!r} must be a port number between 1 and 65535")
    return value


def queryFlag(request: Request, name: bytes) -> bool:
    """
    Whether the query string sets C{name} to C{1}, C{true} or C{yes}.
    """
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name, [])
    return bool(values) and values[-1] in (b"1", b"true", b"yes")
